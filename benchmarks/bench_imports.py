"""Import time of the package and of each dock's module, in fresh interpreters.

``napari_segsuite`` is timed from a bare interpreter. A dock's module is timed
the way napari meets it: in a process where napari and its Qt binding are
already imported (they are, when a user opens a dock), so the figure is the
plugin's own share. ``python benchmarks/bench_imports.py [SRC]`` prints the
table for the package under ``SRC`` (default: the installed one); the
``imports`` benchmark of ``benchmarks/run.py`` runs the same cases.
"""

from __future__ import annotations

import os
import sys

from run import benchmark, median_of

WIDGETS = ("semantic", "instance", "panoptic", "sam_prompt", "evaluation")

PACKAGE = """
import time
t = time.perf_counter()
import napari_segsuite
result = {"seconds": time.perf_counter() - t}
"""

WIDGET = """
import time
import napari, napari.qt, qtpy.QtWidgets, magicgui
t = time.perf_counter()
import importlib
importlib.import_module("napari_segsuite.widgets.%s")
result = {"seconds": time.perf_counter() - t}
"""


def cases() -> list[tuple[str, str]]:
    out = [("napari_segsuite", PACKAGE)]
    out += [(f"widgets.{name}", WIDGET % name) for name in WIDGETS]
    return out


def rows(repeats: int, env: dict | None = None) -> list[dict]:
    result = []
    for name, code in cases():
        try:
            stats = median_of(code, repeats, env=env)
        except RuntimeError as exc:  # a module the tree does not have
            lines = str(exc).strip().splitlines()
            result.append({"case": f"import {name}", "error": lines[-1][:60] if lines else "failed"})
            continue
        result.append({"case": f"import {name}", **stats})
    return result


@benchmark("imports")
def bench_imports(repeats: int) -> list[dict]:
    return rows(max(repeats, 5))


if __name__ == "__main__":
    env = {"QT_QPA_PLATFORM": "offscreen"}
    if len(sys.argv) > 1:
        env["PYTHONPATH"] = os.path.abspath(sys.argv[1])
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    for row in rows(repeats, env):
        if "error" in row:
            print(f"{row['case']:<40} {row['error']}")
        else:
            print(f"{row['case']:<40} median {row['median_s']:.3f} s  min {row['min_s']:.3f} s  ({row['runs']} runs)")
