"""Windowed SAM on a 40,000 x 40,000 multiscale zarr slide, in a real viewer with the SAM dock.

For tiny SAM and a random-weight vit_b (segment_anything's own ``sam_model_registry["vit_b"]``
architecture, 1,024-pixel windows; the timings depend on the architecture, not the weights):

- click in a new window -> preview: from the dock's debounce timer firing (``request_preview``)
  to the preview layer's ``set_data`` (the window read from level 0, encoded, decoded, drawn);
- the same click on a cached window (decoded on the prompt thread);
- against a bare ``SamPredictor`` on the same window's pixels (``set_image`` + ``predict``, and
  the same with the window's read from level 0; ``predict`` alone for the cached click);
- the mask of an object about 200 pixels wide, against ``SamPredictor`` on the window's crop
  (the same pixels: equal?) and on a window-sized crop centred on the object (IoU);
- the viewer process's resident memory during a session of commits spread over the slide
  (a click in a random window, the preview, Shift-C's commit), with the embedding cache's
  size and bound (:data:`~napari_segsuite.tasks.sam_windows.CACHE_EMBEDDINGS` windows,
  :data:`~napari_segsuite.tasks.sam_windows.CACHE_BYTES` bytes).

The slide's levels are opened with zarr and wrapped in dask (lazy); the labels go to an
on-disk pyramid in a temporary folder. The slide is ``$SEGSUITE_BENCH_SLIDE`` or
``/tmp/segsuite-large/slide40k.zarr`` (written by ``python -m napari_segsuite.testing.large_images
PATH --size 40000`` when missing: about ten minutes). Needs a display (``xvfb-run``, or
``./dev bench sam_windows``).

Usage (each part can be left out)::

    python benchmarks/bench_sam_windows.py                      # timings of tiny SAM and vit_b, 200 tiny commits
    python benchmarks/bench_sam_windows.py --timing vit_b --commits 0    # the vit_b click timings only
    # the commit session with vit_b (clicks drawn from 60 windows, above the cache's 48):
    SEGSUITE_BENCH_MEMORY_MODEL=vit_b python benchmarks/bench_sam_windows.py --timing none --commits 200 --windows 60

``--windows K`` draws the session's clicks from K random grid windows (0: a new random place
each time); with K above the cache's window bound the cache stays full and keeps evicting.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import benchmark

SLIDE = Path(os.environ.get("SEGSUITE_BENCH_SLIDE", "/tmp/segsuite-large/slide40k.zarr"))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _napari_dask_cache_mb() -> tuple[float, float]:
    """(MB held, MB allowed) by napari's opportunistic dask cache of the layers' chunks (zeros when off)."""
    try:
        from napari.utils._dask_utils import _DASK_CACHE

        cache = _DASK_CACHE.cache
        return cache.total_bytes / 2**20, cache.available_bytes / 2**20
    except (ImportError, AttributeError):
        return 0.0, 0.0


def _slide_levels():
    from napari_segsuite.testing.large_images import open_slide, write_synthetic_slide

    if not (SLIDE / "zarr.json").exists():
        write_synthetic_slide(SLIDE, (40_000, 40_000))
    return open_slide(SLIDE)


def _process(seconds: float = 0.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while True:
        QApplication.processEvents()
        if time.monotonic() >= end:
            return
        time.sleep(0.002)


def _wait(condition, timeout: float = 900.0) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the preview did not come")
        _process(0.002)


def _vit_b(folder: Path) -> Path:
    from napari_segsuite.models.offline import guard_llvm_clash

    guard_llvm_clash()  # built in the viewer's process: no triton beside Mesa's LLVM
    import torch
    from segment_anything import sam_model_registry

    path = folder / "sam_vit_b_random.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


def _object_near(levels, r: int, c: int, want: float = 200.0):
    """Centre and mask (in a 1,024 crop around (r, c)) of the large blob whose width is nearest ``want``."""
    from scipy import ndimage

    from napari_segsuite.testing.large_images import blob_truth

    r0, c0 = max(0, r - 1024), max(0, c - 1024)
    truth = blob_truth(np.arange(r0, r0 + 2048), np.arange(c0, c0 + 2048))
    _, truth = np.unique(truth, return_inverse=True)  # ids 0..N (0: background)
    truth = truth.reshape(2048, 2048)
    best = None
    for label, box in enumerate(ndimage.find_objects(truth), start=1):
        if box is None:
            continue
        rs, cs = box
        width = max(rs.stop - rs.start, cs.stop - cs.start)
        inner = rs.start > 300 and cs.start > 300 and rs.stop < 1748 and cs.stop < 1748
        if inner and (best is None or abs(width - want) < abs(best[0] - want)):
            rr, cc = np.nonzero(truth[box] == label)
            best = (width, (float(r0 + rs.start + rr.mean()), float(c0 + cs.start + cc.mean())))
    return best


class Clicker:
    """Drives the dock's prompts and times the timer -> preview ``set_data`` span."""

    def __init__(self, dock):
        self.dock = dock
        self.fired: list[float] = []
        self.shown: list[float] = []
        dock.prompts._timer.timeout.disconnect()
        dock.prompts._timer.timeout.connect(self._on_timer)

    def _on_timer(self) -> None:
        self.fired.append(time.perf_counter())
        self.dock.prompts.request_preview()

    def _on_set_data(self, event=None) -> None:
        self.shown.append(time.perf_counter())

    def click(self, rc) -> float:
        """Set one positive point at data ``rc``; seconds from the timer to the preview drawn."""
        dock = self.dock
        layer = dock.preview_layer
        layer.events.set_data.connect(self._on_set_data, position="last")
        self.fired.clear()
        self.shown.clear()
        dock.points_layer.data = np.array([rc], dtype=float)
        _wait(lambda: bool(self.shown) and bool(dock.preview.objects) and not dock.preview_busy)
        layer.events.set_data.disconnect(self._on_set_data)
        if not dock.preview.objects:
            raise RuntimeError(f"no preview: {dock.message.value}")
        return self.shown[-1] - self.fired[0]


class _Rows(list):
    """Rows that are also printed as they come (a long run shows its progress)."""

    def append(self, row):
        print(" | ".join(str(v) for v in row.values()), flush=True)
        super().append(row)

    def __iadd__(self, rows):
        for row in rows:
            self.append(row)
        return self


def _dock_for(viewer, image, name: str, path: Path):
    from napari_segsuite.widgets.base import LOCAL
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget

    dock = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(dock, name=f"SAM {name}")
    dock.models.model.value = LOCAL
    dock.models.local.value = str(path)
    dock.device.value = "cpu"
    dock.autosave_dir.value = tempfile.mkdtemp(prefix="segsuite-autosave-")
    dock.image.value = image
    dock.prompts.ensure_prompt_layers()
    clicker = Clicker(dock)
    clicker.click((20_000.0, 20_000.0))  # loads the model (not timed)
    return dock, clicker


def _timing_rows(viewer, image, levels, name: str, path: Path, *, new_clicks: int, cached_clicks: int,
                 rng) -> list[dict]:
    from segment_anything import SamPredictor

    from napari_segsuite.models.base import load_model

    rows = _Rows()
    dock, clicker = _dock_for(viewer, image, name, path)
    session = dock.session
    size = session.prompt_model.input_size

    # -- a click in a new window, the same click on a cached window, bare SamPredictor ----------
    bare = SamPredictor(load_model(path, "cpu").model)
    new, cached, bare_new, bare_read, bare_cached = [], [], [], [], []
    for k in range(new_clicks):
        rc = (float(rng.integers(2_000, 38_000)), float(rng.integers(2_000, 38_000)))
        runs = session.encoder_runs
        new.append(clicker.click(rc))
        assert session.encoder_runs == runs + 1, "the click did not encode a new window"
        window = dock.preview.objects[0]["window"]
        local = np.array([[rc[1] - window.c0, rc[0] - window.r0]])
        t = time.perf_counter()
        crop = np.repeat(np.asarray(levels[0][window.slices])[..., None], 3, axis=-1)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        bare.set_image(crop)
        bare.predict(point_coords=local, point_labels=np.array([1]))
        bare_new.append(time.perf_counter() - t)
        bare_read.append(bare_new[-1] + t_read)
        for j in range(cached_clicks if k == 0 else 0):
            near = (rc[0] + 3 + j, rc[1] - 2)
            cached.append(clicker.click(near))
            t = time.perf_counter()
            bare.predict(point_coords=np.array([[near[1] - window.c0, near[0] - window.r0]]),
                         point_labels=np.array([1]))
            bare_cached.append(time.perf_counter() - t)
        assert session.encoder_runs == runs + 1, "a click on the cached window ran the encoder"
        dock.prompts.clear()
    med = statistics.median
    rows += [
        {"model": name, "measure": f"click in a new {size}x{size} window -> preview", "value": 1000 * med(new),
         "unit": "ms"},
        {"model": name, "measure": "  bare SamPredictor set_image + predict, same window", "value": 1000 * med(bare_new),
         "unit": "ms"},
        {"model": name, "measure": "  ratio dock / bare", "value": med(new) / med(bare_new), "unit": "x"},
        {"model": name, "measure": "  bare, with the window's read from level 0", "value": 1000 * med(bare_read),
         "unit": "ms"},
        {"model": name, "measure": "  ratio dock / bare with the read", "value": med(new) / med(bare_read), "unit": "x"},
        {"model": name, "measure": "same click, cached window -> preview", "value": 1000 * med(cached), "unit": "ms"},
        {"model": name, "measure": "  bare SamPredictor.predict, same prompt", "value": 1000 * med(bare_cached),
         "unit": "ms"},
        {"model": name, "measure": "  ratio dock / bare", "value": med(cached) / med(bare_cached), "unit": "x"},
    ]

    # -- the mask of a ~200 px object against SAM on the crop -----------------------------------
    width, centre = _object_near(levels, 12_345, 23_456)
    clicker.click(centre)
    obj = dock.preview.objects[0]
    window = obj["window"]
    ours = np.asarray(obj["masks"][obj["choice"]])
    crop = np.repeat(np.asarray(levels[0][window.slices])[..., None], 3, axis=-1)
    bare.set_image(crop)
    ref, _, _ = bare.predict(point_coords=np.array([[centre[1] - window.c0, centre[0] - window.r0]]),
                             point_labels=np.array([1]))
    same = bool(np.array_equal(ours, ref[obj["choice"]]))
    # a window-sized crop centred on the object (other context around it)
    r0 = int(min(max(0, round(centre[0] - size / 2)), 40_000 - size))
    c0 = int(min(max(0, round(centre[1] - size / 2)), 40_000 - size))
    bare.set_image(np.repeat(np.asarray(levels[0][r0: r0 + size, c0: c0 + size])[..., None], 3, axis=-1))
    ref2, _, _ = bare.predict(point_coords=np.array([[centre[1] - c0, centre[0] - r0]]), point_labels=np.array([1]))
    R0, C0 = min(window.r0, r0), min(window.c0, c0)
    R1, C1 = max(window.r1, r0 + size), max(window.c1, c0 + size)
    m1 = np.zeros((R1 - R0, C1 - C0), bool)
    m2 = np.zeros_like(m1)
    m1[window.r0 - R0: window.r1 - R0, window.c0 - C0: window.c1 - C0] = ours
    m2[r0 - R0: r0 - R0 + size, c0 - C0: c0 - C0 + size] = ref2[obj["choice"]]
    iou = (m1 & m2).sum() / max(1, (m1 | m2).sum())
    rows += [
        {"model": name, "measure": f"object {width} px wide: mask == SamPredictor on the window's crop",
         "value": str(same), "unit": ""},
        {"model": name, "measure": "  IoU with SamPredictor on a crop centred on the object", "value": float(iou),
         "unit": ""},
    ]
    dock.prompts.clear()
    dock.shutdown()
    return rows


def _memory_rows(viewer, image, name: str, path: Path, *, commits: int, windows: int, rng) -> list[dict]:
    """RSS over a session of ``commits`` click + commit rounds (see the module docstring)."""
    from napari_segsuite.layers import next_label

    rows = _Rows()
    dock, clicker = _dock_for(viewer, image, name, path)
    session = dock.session
    size = session.prompt_model.input_size
    places = None
    if windows:  # K random grid windows; each click falls in one of them
        step = size - size // 4
        places = [(int(rng.integers(0, (40_000 - size) // step)) * step, int(rng.integers(0, (40_000 - size) // step))
                   * step) for _ in range(windows)]
    rss = {0: _rss_mb()}
    napari_cache = {0: _napari_dask_cache_mb()[0]}
    runs0 = session.encoder_runs
    start = time.monotonic()
    target = None
    marks = {10, commits // 4, commits // 2, commits}
    for k in range(1, commits + 1):
        if places is None:
            rc = (float(rng.integers(500, 39_500)), float(rng.integers(500, 39_500)))
        else:
            r0, c0 = places[int(rng.integers(0, len(places)))]
            rc = (float(r0 + size // 2 + rng.integers(-size // 8, size // 8)),
                  float(c0 + size // 2 + rng.integers(-size // 8, size // 8)))
        clicker.click(rc)
        dock.commits.commit()
        target = dock.commits.find_target(image, dock.prompts._sel, create=False)
        if k in marks:
            rss[k] = _rss_mb()
            napari_cache[k] = _napari_dask_cache_mb()[0]
            print(f"  ... {k} commits, {time.monotonic() - start:.0f} s, RSS {rss[k]:.0f} MB, "
                  f"cache {len(session._cache)} windows, napari's dask cache {napari_cache[k]:.0f} MB", flush=True)
    for k, mb in sorted(rss.items()):
        rows.append({"model": name, "measure": f"viewer RSS after {k} commits", "value": mb, "unit": "MB"})
        rows.append({"model": name, "measure": "  of which napari's dask cache of slide and labels chunks",
                     "value": napari_cache[k], "unit": "MB"})
    rows += [
        {"model": name, "measure": "  clicks drawn from", "value": f"{windows} windows" if windows else "anywhere",
         "unit": ""},
        {"model": name, "measure": "  windows encoded / session minutes",
         "value": f"{session.encoder_runs - runs0} / {(time.monotonic() - start) / 60:.1f}", "unit": ""},
        {"model": name, "measure": "  labels committed", "value": next_label(target) - 1 if target is not None else 0,
         "unit": ""},
        {"model": name, "measure": "  embedding cache: windows / MB held",
         "value": f"{len(session._cache)} / {session.cached_bytes() / 2**20:.0f}", "unit": ""},
        {"model": name, "measure": "  cache bound: windows / MB",
         "value": f"{session.cache_size} / {session.cache_bytes / 2**20:.0f}", "unit": ""},
        {"model": name, "measure": "  napari's dask cache bound (a quarter of the machine's memory)",
         "value": _napari_dask_cache_mb()[1], "unit": "MB"},
    ]
    dock.shutdown()
    return rows


MODELS = ("tiny", "vit_b")


def measure(commits: int = 200, *, timing: tuple[str, ...] = MODELS, memory_model: str | None = None,
            windows: int = 0, new_clicks: int = 3, cached_clicks: int = 10) -> list[dict]:
    """The rows, in one viewer process: click timings of the ``timing`` models, then the commit
    session of ``memory_model`` (``$SEGSUITE_BENCH_MEMORY_MODEL``, default tiny; none with 0 commits)."""
    import dask.array as da
    import napari

    from napari_segsuite.demo.tiny_sam import build_tiny_sam

    folder = Path(tempfile.mkdtemp(prefix="segsuite-bench-sam-windows-"))
    # the committed labels go to an on-disk store in this run's own folder (never into the slide)
    os.environ["NAPARI_SEGSUITE_CACHE"] = str(folder / "cache")
    levels = [da.from_array(level, chunks=level.chunks) for level in _slide_levels()]
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    image = viewer.add_image(levels, multiscale=True, name="slide")
    _process(1.0)
    rng = np.random.default_rng(0)
    paths = {"tiny": lambda: build_tiny_sam(folder / "tiny.pth"), "vit_b": lambda: _vit_b(folder)}
    names = {"tiny": "tiny SAM", "vit_b": "vit_b (random)"}
    rows = [{"model": "-", "measure": "viewer RSS with the slide open", "value": _rss_mb(), "unit": "MB"},
            {"model": "-", "measure": "load average (1 min) at the start", "value": os.getloadavg()[0], "unit": ""}]
    for model in timing:
        rows += _timing_rows(viewer, image, levels, names[model], paths[model](),
                             new_clicks=max(new_clicks, 5) if model == "tiny" else new_clicks,
                             cached_clicks=cached_clicks, rng=rng)
    memory_model = memory_model or os.environ.get("SEGSUITE_BENCH_MEMORY_MODEL", "tiny")
    if commits:
        rows += _memory_rows(viewer, image, names[memory_model], paths[memory_model](), commits=commits,
                             windows=windows, rng=rng)
    rows.append({"model": "-", "measure": "load average (1 min) at the end", "value": os.getloadavg()[0], "unit": ""})
    viewer.close()
    return rows


@benchmark("sam_windows")
def sam_windows(repeats: int) -> list[dict]:
    """Windowed SAM on the 40k slide (one run; ``repeats`` clicks of each kind at least)."""
    return measure(new_clicks=max(3, repeats), cached_clicks=max(10, repeats))


def main() -> None:
    import argparse

    from run import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timing", default="tiny,vit_b",
                        help="models whose click timings are measured: tiny, vit_b, both (comma) or none")
    parser.add_argument("--commits", type=int, default=200, help="commits of the memory session (0: none)")
    parser.add_argument("--memory-model", choices=MODELS, default=None,
                        help="model of the memory session (default: $SEGSUITE_BENCH_MEMORY_MODEL, else tiny)")
    parser.add_argument("--windows", type=int, default=0,
                        help="draw the session's clicks from this many random windows (0: anywhere)")
    parser.add_argument("--new-clicks", type=int, default=3)
    parser.add_argument("--cached-clicks", type=int, default=10)
    args = parser.parse_args()
    timing = tuple(m for m in args.timing.split(",") if m and m != "none")
    unknown = set(timing) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {MODELS}")
    print_table("sam_windows", measure(args.commits, timing=timing, memory_model=args.memory_model,
                                       windows=args.windows, new_clicks=args.new_clicks,
                                       cached_clicks=args.cached_clicks))


if __name__ == "__main__":
    main()
