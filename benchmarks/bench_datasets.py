"""Benchmarks of dataset export and import (``api.export_dataset`` / ``api.import_dataset``).

1,000 images of 512 x 512 with 100 objects each (ellipses on a 10 x 10 grid, sizes such that
many touch or overlap, a tenth with a hole, some cut by the image border, later ones drawn over
earlier ones so that some objects come in several parts), two classes. The images come from a
generator, one at a time, so nothing holds the 1,000 label images at once; the time to
generate them alone is its own row; export rows include it and ``only_s`` subtracts the time
the export process spent in the generator.
Each row runs in a fresh process: ``peak_mb`` is that process's peak resident memory.

Rows: generation only; COCO and YOLO export; for each format, import streamed one image at a
time (:func:`napari_segsuite.datasets.io.open_dataset`, what the reader and a training loader
need) and ``api.import_dataset`` (every image and label image in memory at the end).

``cpu_s`` is the CPU time of the measured part (user + system): on a shared machine it moves
far less with the load than the wall time.

Measured figures are in ``docs/datasets_and_training.md``.

``SEGSUITE_BENCH_SMOKE=1`` uses 20 images (to check that the benchmark runs).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from run import benchmark, run_python

GENERATOR = """
import numpy as np
from skimage.draw import ellipse

def scenes(n, size=512, per_side=10, seed=0):
    rng = np.random.default_rng(seed)
    cell = size / per_side
    for k in range(n):
        lab = np.zeros((size, size), np.int32)
        classes = {}
        label = 0
        for gy in range(per_side):
            for gx in range(per_side):
                label += 1
                cy, cx = (gy + 0.5 + rng.uniform(-0.3, 0.3)) * cell, (gx + 0.5 + rng.uniform(-0.3, 0.3)) * cell
                ry, rx = rng.uniform(0.3, 0.65, 2) * cell
                rr, cc = ellipse(cy, cx, ry, rx, shape=lab.shape, rotation=rng.uniform(0, np.pi))
                lab[rr, cc] = label
                if rng.random() < 0.1:
                    rr, cc = ellipse(cy, cx, ry / 3, rx / 3, shape=lab.shape)
                    lab[rr, cc] = 0
                classes[label] = int(ry > rx)
        present = set(np.unique(lab).tolist()) - {0}
        img = (rng.integers(0, 60, (size, size)) + 120 * (lab > 0)).astype(np.uint8)
        yield img, lab, {i: c for i, c in classes.items() if i in present}
"""

GENERATE = """
import resource, time
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
t = time.perf_counter()
objects = 0
for img, lab, classes in scenes({n}):
    objects += len(classes)
result = {{"seconds": time.perf_counter() - t, "cpu_s": cpu() - c0, "objects": objects}}
"""

EXPORT = """
import itertools, time
from napari_segsuite import api
spent = [0.0]
def timed(items):  # time spent making the scenes, inside the export
    items = iter(items)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        finally:
            spent[0] += time.perf_counter() - t0
        yield item
a, b, c = itertools.tee(timed(scenes({n})), 3)  # one generator; the export reads the three in step
import resource
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
t = time.perf_counter()
res = api.export_dataset((x[0] for x in a), (x[1] for x in b), {out!r}, format={fmt!r},
                         label_classes=(x[2] for x in c), class_names=["round", "long"])
seconds = time.perf_counter() - t
result = {{"seconds": seconds, "cpu_s": cpu() - c0, "generation": spent[0], "objects": res.n_objects,
          "min_iou": res.provenance.get("min_polygon_iou", 1.0),
          "below_0_95": res.provenance.get("objects_below_iou_0_95", 0)}}
"""

IMPORT_STREAM = """
import resource, time
from napari_segsuite.datasets.io import open_dataset
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
t = time.perf_counter()
fmt, names, records = open_dataset({path!r})
objects = 0
for r in records:
    objects += len(r["classes"])
result = {{"seconds": time.perf_counter() - t, "cpu_s": cpu() - c0, "objects": objects}}
"""

IMPORT_ALL = """
import resource, time
from napari_segsuite import api
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
t = time.perf_counter()
ds = api.import_dataset({path!r})
result = {{"seconds": time.perf_counter() - t, "cpu_s": cpu() - c0, "objects": len(ds.table)}}
"""


def _du_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 2**20


@benchmark("datasets")
def datasets(repeats: int) -> list[dict]:
    """Export and import of 1,000 images of 512x512 with 100 objects each (COCO and YOLO)."""
    n = 20 if os.environ.get("SEGSUITE_BENCH_SMOKE") == "1" else 1000
    tmp = tempfile.mkdtemp(prefix="segsuite-bench-datasets-")
    rows = []
    try:
        gen = run_python(GENERATOR + GENERATE.format(n=n))
        rows.append({"case": f"generate {n} scenes (no export)", "seconds": gen["seconds"], "cpu_s": gen["cpu_s"],
                     "only_s": "",
                     "objects": gen["objects"], "peak_mb": gen["peak_mb"], "disk_mb": "", "note": ""})
        for fmt in ("coco", "yolo"):
            out = os.path.join(tmp, fmt)
            exp = run_python(GENERATOR + EXPORT.format(n=n, out=out, fmt=fmt))
            note = f"min polygon IoU {exp['min_iou']:.4f}, {exp['below_0_95']} below 0.95" if fmt == "yolo" else ""
            rows.append({"case": f"export {fmt}", "seconds": exp["seconds"], "cpu_s": exp["cpu_s"],
                         "only_s": exp["seconds"] - exp["generation"], "objects": exp["objects"],
                         "peak_mb": exp["peak_mb"], "disk_mb": _du_mb(out), "note": note})
            path = os.path.join(out, "data.yaml") if fmt == "yolo" else out
            for case, code in (("streamed", IMPORT_STREAM), ("api.import_dataset", IMPORT_ALL)):
                imp = run_python(code.format(path=path))
                rows.append({"case": f"import {fmt} ({case})", "seconds": imp["seconds"], "cpu_s": imp["cpu_s"],
                             "only_s": "",
                             "objects": imp["objects"], "peak_mb": imp["peak_mb"], "disk_mb": "", "note": ""})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows
