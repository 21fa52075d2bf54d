"""Benchmarks of large images in the docks: a 40,000 x 40,000 multiscale OME-Zarr slide.

Every case runs in a fresh process with a real napari viewer (a 1920 x 1080 window; run the
benchmarks under Xvfb when there is no display) on the synthetic slide of
:mod:`napari_segsuite.testing.large_images` (uint8, 8 levels, 1024-pixel chunks), written once
to ``$SEGSUITE_LARGE_SLIDE`` (default ``/tmp/segsuite-large/slide40k.zarr``; about 10 minutes
and 720 MB on the 2-core VM). Models: the tiny SegFormer (3 classes) and the tiny YOLO11-seg
(random weights, ``conf=0``), so the figures measure the plugin's reading, chunking, merging and
writing, not a real model.

- ``fov`` and ``4k region``: the Semantic and Instance docks on the field of view (zoom 1 at
  the slide's centre: the canvas's pixels) and on a 4,000 x 4,000 rectangle, into labels on
  disk. ``seconds`` is from Run to the written layer (model load excluded: a first run on a
  small rectangle loads it), ``peak_mb`` the process's peak RSS, ``rise_mb`` the peak's rise
  during the run.
- ``whole plane``: the Semantic dock on whole planes of growing size (8k and 16k slides of the
  same generator, ``tile_size=0``: one model call per 2048-pixel chunk) in chunks: the peak's
  rise against the processed size (flat is the goal).
- ``api``: the same 4,000 x 4,000 region through ``api.segment_semantic`` (tiles of 512) and
  ``api.segment_instances`` (chunks of 2048, as the docks) in a process without a viewer:
  seconds per megapixel against the dock's.

Measured 2026-12-01 on the 2-core dev VM under heavy load from other sessions (load average
22-26), ``benchmarks/run.py large_images --repeats 1`` (one run each: compare rows, not runs):

| case | seconds | Mpx | s/Mpx | peak MB | rise MB |
|---|---|---|---|---|---|
| dock semantic, field of view | 3.2 | 1.58 | 2.0 | 1630 | 109 |
| dock semantic, 4000 x 4000 region | 27.5 | 16.0 | 1.7 | 1904 | 390 |
| api semantic, same region | 141.9 | 16.0 | 8.9 | 930 | - |
| dock instance, field of view | 21.2 | 1.58 | 13.4 | 1998 | 373 |
| dock instance, 4000 x 4000 region | 332.1 | 16.0 | 20.7 | 3267 | 1646 |
| api instance, same region | 461.3 | 16.0 | 28.8 | 2340 | - |
| dock semantic, whole 8000 x 8000 plane | 79.2 | 64 | 1.24 | 1890 | 480 |
| dock semantic, whole 16000 x 16000 plane | 232.7 | 256 | 0.91 | 2455 | 1034 |

The API's semantic row is not slower than the dock on the same pixels: run in one process
(no viewer) on a 2000 x 2000 region of the slide, the dock's path (``segment_region_job``, tiles
of 512) took 21.9 s and ``api.segment_semantic`` (tiles of 512) 13.8 s (second repeat, load
about 7); the 8.9 vs 1.7 s/Mpx above are separate processes at different times under load
22-26 (compare rows within one quiet run).

Whole plane in chunks, after chunked segmentation hands freed memory back after every chunk
(``core.threads.release_freed_memory``), 2026-12-02, load average about 7,
``SEGSUITE_BENCH_LARGE_CASES=whole benchmarks/run.py large_images --repeats 1`` under Xvfb (the
32k row: ``SEGSUITE_BENCH_LARGE_SIDES=32000``, its slide written first):

| case | seconds | Mpx | s/Mpx | peak MB | rise MB |
|---|---|---|---|---|---|
| dock semantic, whole 8000 x 8000 plane | 53.1 | 64 | 0.83 | 1720 | 304 |
| dock semantic, whole 16000 x 16000 plane | 129.8 | 256 | 0.51 | 1730 | 312 |
| dock semantic, whole 32000 x 32000 plane | 225.3 | 1024 | 0.22 | 1777 | 311 |

The rise is flat: it was 480 and 1034 MB above, because glibc's dynamic mmap threshold moved
each chunk's large freed blocks into heaps that were kept (the same runs without a viewer:
452 and 821 MB before, 322 and 323 MB after; with ``MALLOC_MMAP_THRESHOLD_=131072`` and no
change, 253 and 254 MB).

``SEGSUITE_BENCH_SMOKE=1`` uses a 6,000-pixel slide and 2,000-pixel regions to check that the
benchmark runs; its figures mean nothing.
"""

from __future__ import annotations

import os

from run import benchmark, run_python

SMOKE = os.environ.get("SEGSUITE_BENCH_SMOKE") == "1"
SLIDE = os.environ.get("SEGSUITE_LARGE_SLIDE", "/tmp/segsuite-large/slide40k.zarr")
SIDE = 6000 if SMOKE else 40_000
REGION = 2000 if SMOKE else 4000

MODELS = """
import os, tempfile
from pathlib import Path
from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.tiny_models import build_tiny_segformer, build_tiny_yolo
root = Path(tempfile.mkdtemp())
SEG = str(build_tiny_segformer(root / "seg", num_labels=3))
YOLO = str(sharpen_yolo(build_tiny_yolo(root / "yolo.pt", "segment", nc=3)))
os.environ["NAPARI_SEGSUITE_LABELS_DIR"] = str(root / "labels")
"""

VIEWER = MODELS + """
import resource, time
import numpy as np
import napari
from napari_segsuite.testing.canvas import _process, wait_until
from napari_segsuite.testing.large_images import open_slide
from napari_segsuite.widgets.base import FIELD_OF_VIEW, LOCAL, RECTANGLE, WHOLE_PLANE
from napari_segsuite.widgets.instance import InstanceWidget
from napari_segsuite.widgets.semantic import SemanticWidget
import shutil
shutil.rmtree({slide!r} + "/labels", ignore_errors=True)  # labels of earlier runs: start empty
levels = open_slide({slide!r})
viewer = napari.Viewer(show=True)
viewer.window._qt_window.resize(1920, 1080)
layer = viewer.add_image(levels, name="slide", multiscale=True)
wait_until(lambda: viewer.window._qt_viewer.canvas.native.isVisible(), 10, "the canvas")
h, w = levels[0].shape
viewer.scene.camera.center = (h / 2, w / 2)
viewer.scene.camera.zoom = 1.0
_process(0.5)
cls = {{"semantic": SemanticWidget, "instance": InstanceWidget}}[{task!r}]
dock = cls(viewer)
dock.models.model.value = LOCAL
if {task!r} == "semantic":
    dock.models.local.mode = "d"
    dock.tile_size.value = {tile}
else:
    dock.conf.value, dock.max_det.value = 0.0, 100
dock.models.local.value = SEG if {task!r} == "semantic" else YOLO
dock.device.value = "cpu"
dock.image.value = layer

def run():
    dock.run()
    wait_until(lambda: not dock.jobs.busy and dock.run_button.enabled, 3600, "the run")
    assert dock.jobs.last_error is None, dock.jobs.last_error

def rectangle(r0, c0, side):
    dock.region.value = RECTANGLE
    viewer.layers["slide [region]"].data = [np.array([[r0, c0], [r0, c0 + side], [r0 + side, c0 + side],
                                                      [r0 + side, c0]], float)]

rectangle(0, 0, 256)
run()  # loads the model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if {case!r} == "fov":
    dock.region.value = FIELD_OF_VIEW
elif {case!r} == "region":
    rectangle(h / 2 - {region} / 2, w / 2 - {region} / 2, {region})
else:
    dock.region.value = WHOLE_PLANE
t = time.perf_counter()
run()
seconds = time.perf_counter() - t
labels = viewer.layers["slide [" + {task!r} + "]"]
r0, r1, c0, c1 = labels.metadata["segsuite"]["last"]["region"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = {{"seconds": seconds, "mpx": (r1 - r0) * (c1 - c0) / 1e6, "rise_mb": peak - before}}
viewer.close()
"""

API = MODELS + """
import time
from napari_segsuite import api
from napari_segsuite.core.regions import LazyView, Region
from napari_segsuite.testing.large_images import open_slide
levels = open_slide({slide!r})
h, w = levels[0].shape
r0, c0 = int(h / 2 - {region} / 2), int(w / 2 - {region} / 2)
view = LazyView(levels[0], (slice(None), slice(None)), Region(r0, r0 + {region}, c0, c0 + {region}))
if {task!r} == "semantic":
    api.segment_semantic(view.sub(Region(0, 256, 0, 256)), SEG, device="cpu")  # warm-up
    t = time.perf_counter()
    api.segment_semantic(view, SEG, device="cpu", tile_size=512, overlap=64)
else:
    api.segment_instances(view.sub(Region(0, 256, 0, 256)), YOLO, device="cpu", conf=0.0)
    t = time.perf_counter()
    api.segment_instances(view, YOLO, device="cpu", conf=0.0, max_det=100, chunk_size=2048)
result = {{"seconds": time.perf_counter() - t, "mpx": {region} ** 2 / 1e6}}
"""


def _slide(path: str, side: int) -> str:
    from pathlib import Path

    if not (Path(path) / "zarr.json").exists():
        from napari_segsuite.testing.large_images import write_synthetic_slide

        write_synthetic_slide(path, (side, side))
    return path


def _row(case: str, out: dict) -> dict:
    row = {"case": case, "seconds": out["seconds"], "Mpx": out["mpx"],
           "s_per_Mpx": out["seconds"] / max(out["mpx"], 1e-9), "peak_mb": out["peak_mb"],
           "rise_mb": out.get("rise_mb", float("nan"))}
    print(f"  {row}", flush=True)  # each row as it comes (the whole table prints at the end)
    return row


#: ``SEGSUITE_BENCH_LARGE_CASES=whole`` runs only the whole-plane rows (``docks,whole`` by default: all).
CASES = os.environ.get("SEGSUITE_BENCH_LARGE_CASES", "docks,whole").split(",")
#: Sides of the whole-plane rows (``SEGSUITE_BENCH_LARGE_SIDES=8000,16000,32000`` adds a 32k slide).
SIDES = [int(s) for s in os.environ.get("SEGSUITE_BENCH_LARGE_SIDES", "8000,16000").split(",")]


@benchmark("large_images")
def large_images(repeats: int) -> list[dict]:
    """Docks on the 40k slide (field of view, 4k region), whole planes in chunks, the API."""
    rows = []
    for side in ((2500, 4000) if SMOKE else SIDES) if "whole" in CASES else ():
        path = _slide(f"/tmp/segsuite-large/slide{side // 1000}k.zarr", side)
        out = run_python(VIEWER.format(slide=path, task="semantic", case="whole", region=0, tile=0))
        rows.append(_row(f"dock semantic, whole {side} x {side} plane in chunks", out))
    if "docks" not in CASES:
        return rows
    slide = _slide(SLIDE if not SMOKE else "/tmp/segsuite-large/slide6k.zarr", SIDE)
    for task in ("semantic", "instance"):
        for case in ("fov", "region"):
            out = run_python(VIEWER.format(slide=slide, task=task, case=case, region=REGION, tile=512))
            rows.append(_row(f"dock {task}, {case if case == 'fov' else f'{REGION} x {REGION} region'}", out))
        out = run_python(API.format(slide=slide, task=task, region=REGION))
        rows.append(_row(f"api {task}, {REGION} x {REGION} region", out))
    return rows
