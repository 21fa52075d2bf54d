"""Benchmarks of panoptic evaluation (core.metrics) and of a tiny Mask2Former panoptic run."""

from __future__ import annotations

from run import benchmark, median_of

METRICS_CODE = """
import time
import numpy as np
from napari_segsuite.core.metrics import evaluate
rng = np.random.default_rng(0)
size, n = {size}, {n}
gt = np.zeros((size, size), np.int64)
step = size // int(np.ceil(np.sqrt(n)))
k = 0
for r in range(0, size - step + 1, step):
    for c in range(0, size - step + 1, step):
        k += 1
        if k > n:
            break
        gt[r + 1:r + step - 1, c + 1:c + step - 1] = k
pred = np.roll(gt, 2, axis=1)
classes = {{i: i % 3 for i in range(1, n + 1)}}
scores = {{i: float(rng.random()) for i in range(1, n + 1)}}
t = time.perf_counter()
res = evaluate(pred, gt, pred_classes=classes, gt_classes=classes, pred_scores=scores)
result = {{"seconds": time.perf_counter() - t}}
"""

PANOPTIC_CODE = """
import tempfile, time
import numpy as np
from napari_segsuite import api
from napari_segsuite.testing.tiny_models import build_tiny_mask2former
folder = build_tiny_mask2former(tempfile.mkdtemp() + "/m", task="panoptic", num_labels=4, seed=2)
runner = api.load_model(str(folder), "cpu")
from skimage import data
image = data.coins()
api.segment_panoptic(image, runner, threshold=0.0, mask_threshold=0.05, overlap_mask_area_threshold=0.0)
t = time.perf_counter()
api.segment_panoptic(image, runner, threshold=0.0, mask_threshold=0.05, overlap_mask_area_threshold=0.0)
result = {"seconds": time.perf_counter() - t}
"""


@benchmark("panoptic")
def panoptic(repeats: int) -> list[dict]:
    """evaluate() on label images of growing size and object count; one tiny panoptic run."""
    rows = []
    for size, n in ((512, 100), (2048, 1000), (4096, 4000)):
        rows.append({"case": f"evaluate {size}x{size}, {n} objects, 3 classes",
                     **median_of(METRICS_CODE.format(size=size, n=n), repeats)})
    rows.append({"case": "segment_panoptic, tiny Mask2Former, coins 303x384 (warm)",
                 **median_of(PANOPTIC_CODE, repeats)})
    return rows
