"""Benchmarks of napari-segsuite, printed as a table.

Run ``./dev bench`` (or ``python benchmarks/run.py [NAME ...]``). Each
benchmark runs its case several times in fresh subprocesses and reports the
median wall time and the peak resident memory of the process. This machine is
shared and noisy: compare rows of one run, not runs of different days.

Features add benchmarks in ``benchmarks/bench_<name>.py`` modules, which
register functions with :func:`benchmark`; they are imported automatically.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS: dict[str, Callable[[int], list[dict]]] = {}


def benchmark(name: str):
    """Register ``func(repeats) -> rows`` under ``name``."""

    def wrap(func):
        BENCHMARKS[name] = func
        return func

    return wrap


def run_python(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON line last.

    ``peak_mb`` (the child's peak RSS) is added to what the code reports.
    """
    import os

    wrapper = (
        "import json, resource, time\n"
        "_t0 = time.perf_counter()\n"
        f"{code}\n"
        "_out = dict(result)\n"
        "_out['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(_out))\n"
    )
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env=full_env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(code: str, repeats: int, key: str = "seconds", env: dict | None = None) -> dict:
    """Median of ``key`` and the largest peak memory over ``repeats`` fresh runs."""
    runs = [run_python(code, env) for _ in range(repeats)]
    return {
        "median_s": statistics.median(r[key] for r in runs),
        "min_s": min(r[key] for r in runs),
        "peak_mb": max(r["peak_mb"] for r in runs),
        "runs": repeats,
    }


IMPORT_CODE = """
import time
t = time.perf_counter()
import napari_segsuite
import napari_segsuite.api
result = {"seconds": time.perf_counter() - t}
"""

NAPARI_START = """
import time
t = time.perf_counter()
import napari
from npe2 import PluginManager
pm = PluginManager.instance()
pm.discover()
if {disable}:
    pm.disable("napari-segsuite")
viewer = napari.Viewer(show=False)
from qtpy.QtWidgets import QApplication
QApplication.processEvents()
seconds = time.perf_counter() - t
viewer.close()
import sys
heavy = [m for m in ("torch", "transformers", "ultralytics", "segment_anything") if m in sys.modules]
result = {{"seconds": seconds, "heavy": len(heavy)}}
"""


@benchmark("startup")
def startup(repeats: int) -> list[dict]:
    """Import time of the package, and napari's start-up with and without the plugin."""
    return [
        {"case": "import napari_segsuite (+ .api)", **median_of(IMPORT_CODE, repeats)},
        {"case": "napari start-up, plugin disabled", **median_of(NAPARI_START.format(disable=True), repeats)},
        {"case": "napari start-up, plugin enabled", **median_of(NAPARI_START.format(disable=False), repeats)},
    ]


def print_table(title: str, rows: list[dict]) -> None:
    """Print rows as a fixed-width table."""
    if not rows:
        return
    cols = list(rows[0])
    fmt = {c: (lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)) for c in cols}
    cells = [[fmt[c](r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")


def load_feature_benchmarks() -> None:
    """Import every ``bench_*.py`` next to this file (they register with :func:`benchmark`)."""
    import importlib

    sys.path.insert(0, str(HERE))
    sys.modules.setdefault("run", sys.modules[__name__])
    for path in sorted(HERE.glob("bench_*.py")):
        importlib.import_module(path.stem)


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all by default) and print their tables."""
    load_feature_benchmarks()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    for name in args.names or list(BENCHMARKS):
        print_table(f"{name} (repeats={args.repeats})", BENCHMARKS[name](args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
