"""Instance segmentation: seconds per 512x512 image for each model family, on this machine.

Each case builds its model in a temporary folder (tiny random YOLO11-seg,
Mask R-CNN ResNet-50 FPN at its real size and default 800-pixel input, tiny
Mask2Former, tiny YOLO11 detector + tiny SAM), loads it through napari-segsuite,
runs one warm-up image and reports the median time of three more images through
``api.segment_instances`` / ``api.detect_then_segment`` (end to end: preparation,
model, masks, labels and table). Random weights give output counts unlike
trained models'; the thresholds are set so that every case produces masks.
"""

from __future__ import annotations

from run import benchmark, median_of

CASE = """
import statistics, tempfile, time
from pathlib import Path
import numpy as np
from napari_segsuite import api
from napari_segsuite.testing import tiny_models
from napari_segsuite.testing.tiny_sam import build_tiny_sam
folder = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
images = [rng.integers(0, 255, (512, 512, 3), dtype=np.uint8) for _ in range(4)]
{setup}
times = []
for img in images:
    t = time.perf_counter()
    res = {call}
    times.append(time.perf_counter() - t)
result = {{"seconds": statistics.median(times[1:]), "instances": int(len(res.table))}}
"""

CASES = {
    "YOLO11-seg tiny (random), imgsz 640": (
        "model = api.load_model(tiny_models.build_tiny_yolo(folder / 'tiny-seg.pt', 'segment', 3), 'cpu')",
        "api.segment_instances(img, model, conf=0.0, max_det=50)",
    ),
    "Mask R-CNN R50-FPN (random, real size), min_size 800": (
        "model = api.load_model(tiny_models.build_tiny_torchvision(folder / 'mrcnn.pth', 'maskrcnn_resnet50_fpn'), 'cpu')",
        "api.segment_instances(img, model, conf=0.5, iou=0.5, max_det=50)",
    ),
    "Mask2Former Swin tiny (random), 64 px": (
        "model = api.load_model(tiny_models.build_tiny_mask2former(folder / 'm2f', 'instance'), 'cpu')",
        "api.segment_instances(img, model, conf=0.0)",
    ),
    "YOLO11 detect tiny + SAM tiny (256 px), 20 boxes": (
        "det = api.load_model(tiny_models.build_tiny_yolo(folder / 'tiny-det.pt', 'detect', 3), 'cpu')\n"
        "sam = api.SamSession(str(build_tiny_sam(folder / 'sam.pth')), device='cpu')",
        "api.detect_then_segment(img, det, sam, conf=0.0, max_det=20)",
    ),
}


@benchmark("instance_per_image")
def instance_per_image(repeats: int) -> list[dict]:
    """Median seconds per 512x512 RGB image, per model family (CPU)."""
    env = {"CUDA_VISIBLE_DEVICES": ""}
    rows = []
    for case, (setup, call) in CASES.items():
        stats = median_of(CASE.format(setup=setup, call=call), repeats, env=env)
        rows.append({"case": case, **stats})
    return rows
