"""Training on the user's annotations: YOLO-seg and Mask R-CNN from scratch, SAM decoder fine-tuning.

The data set is generated (:mod:`napari_segsuite.testing.synthetic_blobs`): two
classes of textured, touching, irregular blobs on a noisy background, 64
training images (seed 1) and 32 held-out images (seed 2) of 256x256. The
trainers see only the 64 training images (they hold 20 % of them out for their
own validation, which picks the kept model); the scores are mask AP50 and
AP@[.5:.95] of the kept model on the 32 held-out images with the project's own
evaluation (:func:`napari_segsuite.tasks.instance_data.dataset_scores`, COCO's
definition).

Each trainer runs once, in a fresh process, until it has used
``TRAIN_BENCH_CPU_S`` seconds of process CPU time (default 900 s = 15 CPU
minutes; all threads counted) or its epochs are done; the CPU budget is
checked at every progress report and stops training through the job's stop
event (the best model so far is kept). The machine is shared: wall time is
longer than CPU time and says little.

The trainers run on one thread (``TRAIN_BENCH_THREADS``; ultralytics picks one on a
2-core machine by itself): on a shared machine, threads that wait for a busy core spin and
bill CPU time without work, which made a Mask R-CNN step cost 2-3 times as much CPU.

Environment: ``TRAIN_BENCH_CPU_S`` (CPU budget), ``TRAIN_BENCH_EPOCHS``,
``TRAIN_BENCH_WALL_S`` (a wall-clock limit as well, for a deadline),
``TRAIN_BENCH_LOG`` (a file that gets every progress message),
``TRAIN_BENCH_QUICK=1`` (8 + 4 images of 128x128, 2 epochs: a smoke run),
``SAM_BENCH_STEPS``, ``SAM_BENCH_IMAGES`` (training,held-out images of the tiny SAM;
of vit_b: default ``16,8;8,4``), ``SAM_BENCH_KINDS`` (``tiny,vit_b``: which to run).

SAM fine-tuning: mean IoU of single-point prompts (the most interior pixel of
each object, the candidate with the highest predicted IoU) on the objects of
held-out images before and after fine-tuning on the objects of training images
(16 / 8 images for the tiny SAM, 8 / 4 for vit_b, whose encoder is slow on a CPU),
for the tiny SAM (:mod:`napari_segsuite.testing.tiny_sam`) and a
random-weight vit_b stand-in (real weights cannot be downloaded here); and the
time per step.
"""

from __future__ import annotations

import os

from run import benchmark, run_python

COMMON = """
import os, time, tempfile
import numpy as np
import torch
from napari_segsuite.core.image import prepare_rgb_uint8
from napari_segsuite.core.progress import run_sync
from napari_segsuite.models.store import ModelStore
from napari_segsuite.testing.synthetic_blobs import CLASS_NAMES, blob_dataset

quick = os.environ.get("TRAIN_BENCH_QUICK") == "1"
budget = float(os.environ.get("TRAIN_BENCH_CPU_S", "900"))
wall_budget = float(os.environ.get("TRAIN_BENCH_WALL_S", "inf"))
log_path = os.environ.get("TRAIN_BENCH_LOG")
log = open(log_path, "a", buffering=1) if log_path else None
size = 128 if quick else 256
n_train, n_test = (8, 4) if quick else (64, 32)
"""

INSTANCE = COMMON + """
torch.set_num_threads(int(os.environ.get("TRAIN_BENCH_THREADS", "1")))
from napari_segsuite.tasks.instance_data import dataset_scores, predict_for_scores
from napari_segsuite.tasks.instance_training import InstanceTrainingState, train_instances

images, labels, classes = blob_dataset(n_train, size, seed=1)
test_images, test_labels, test_classes = blob_dataset(n_test, size, seed=2)
epochs = 2 if quick else int(os.environ.get("TRAIN_BENCH_EPOCHS", "{epochs}"))
state = InstanceTrainingState()
c0, t0 = time.process_time(), time.perf_counter()

def progress(p):
    if log is not None and p.message:
        log.write(f"{{time.perf_counter() - t0:8.1f}} s wall {{time.process_time() - c0:8.1f}} s cpu  {{p.message}}\\n")
    if time.process_time() - c0 > budget or time.perf_counter() - t0 > wall_budget:
        state.stop.set()

with tempfile.TemporaryDirectory() as folder:
    runner = train_instances(
        images, labels, label_classes=classes, class_names=CLASS_NAMES, family="{family}", epochs=epochs,
        imgsz={imgsz}, batch={batch}, store=ModelStore(folder), state=state, progress=progress, {extra}
    )
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - t0
    by_name = {{v: k for k, v in runner.class_names.items()}}
    truths = [(lab, {{i: by_name[CLASS_NAMES[c]] for i, c in cls.items()}}) for lab, cls in zip(test_labels, test_classes)]
    t1 = time.perf_counter()
    preds = run_sync(predict_for_scores(runner, [prepare_rgb_uint8(i) for i in test_images], conf=0.01))
    predict_s = (time.perf_counter() - t1) / len(test_images)
    scores = dataset_scores(preds, truths)
result = {{
    "heldout_ap50": scores["ap50"], "heldout_ap": scores["ap"], "precision@0.5": scores["precision"],
    "recall@0.5": scores["recall"], "epochs_done": state.epoch, "epochs_planned": epochs,
    "best_epoch": state.best_epoch, "val_ap50_best": state.best_ap50, "stopped_early": state.stopped_early,
    "train_cpu_s": train_cpu, "train_wall_s": train_wall, "predict_s_per_image": predict_s,
    "torch_threads": torch.get_num_threads(), "load1": os.getloadavg()[0],
}}
if log is not None:
    log.write(repr(result) + "\\n")
"""

SAM = COMMON + """
from napari_segsuite.models.base import load_model
from napari_segsuite.tasks.sam_finetune import _encode, _Frames, _Object, single_point_iou, finetune_sam
from napari_segsuite.testing.tiny_sam import build_tiny_sam

kind = "{kind}"
steps = 4 if quick else {steps}
n_img, n_test = (4, 2) if quick else ({n_img}, {n_test})
images, labels, _ = blob_dataset(n_img, size, seed=1)
test_images, test_labels, _ = blob_dataset(n_test, size, seed=2)
folder = tempfile.mkdtemp()
if kind == "tiny":
    ckpt = build_tiny_sam(os.path.join(folder, "tiny_sam.pth"))
else:
    from segment_anything import sam_model_registry
    torch.manual_seed(0)
    ckpt = os.path.join(folder, "vit_b_random.pth")
    torch.save(sam_model_registry["vit_b"]().state_dict(), ckpt)

def heldout_iou(runner):
    sam = runner.model
    frames = _Frames(sam)
    embs, shapes, objs = [], [], []
    for k, (img, lab) in enumerate(zip(test_images, test_labels)):
        rgb = prepare_rgb_uint8(img)
        embs.append(_encode(sam, rgb, frames))
        shapes.append(rgb.shape[:2])
        for j in np.unique(lab)[1:]:
            objs.append(_Object(k, int(j), lab == j, None, None))
    return single_point_iou(sam, embs, shapes, objs, frames), len(objs)

before, n_obj = heldout_iou(load_model(ckpt, "cpu"))
t0, c0 = time.perf_counter(), time.process_time()

def progress(p):
    if log is not None and p.message:
        log.write(f"{{time.perf_counter() - t0:8.1f}} s  {{p.message}}\\n")

tuned = finetune_sam(images, labels, ckpt, steps=steps, val_every=max(1, steps // 8), learning_rate={lr},
                     store=ModelStore(folder), progress=progress)
finetune_cpu, finetune_wall = time.process_time() - c0, time.perf_counter() - t0
after, _ = heldout_iou(tuned)
result = {{
    "iou_before": before, "iou_after": after, "heldout_objects": n_obj, "steps": steps,
    "s_per_step": tuned.training["seconds_per_step"], "best_step": tuned.training["best_step"],
    "finetune_cpu_s": finetune_cpu, "finetune_wall_s": finetune_wall, "torch_threads": torch.get_num_threads(),
    "load1": os.getloadavg()[0],
}}
if log is not None:
    log.write(repr(result) + "\\n")
"""


def _instance(family: str, epochs: int, batch: int, imgsz: str = "size", extra: str = "") -> dict:
    return run_python(INSTANCE.format(family=family, epochs=epochs, batch=batch, imgsz=imgsz, extra=extra))


#: ultralytics arguments of the YOLO benchmark: augmentation that fits grey blobs on noise (no hue or
#: saturation, little brightness change: brightness tells the classes apart; both flips; mild scaling),
#: mosaic off for the last 10 epochs.
YOLO_ARGS = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.2, "flipud": 0.5, "fliplr": 0.5, "scale": 0.25,
             "mosaic": 1.0, "close_mosaic": 10}


@benchmark("train_yolo")
def train_yolo(repeats: int) -> list[dict]:
    """YOLO-seg (yolo11n-seg.yaml at 256 px, batch 4, an optimiser step per batch) from scratch; held-out mask AP.

    ``TRAIN_BENCH_IMGSZ``, ``TRAIN_BENCH_BATCH`` and ``TRAIN_BENCH_YOLO_ARGS`` (a JSON dict merged
    into :data:`YOLO_ARGS`) change the settings.
    """
    import json

    epochs = int(os.environ.get("TRAIN_BENCH_EPOCHS", 30))
    imgsz = int(os.environ.get("TRAIN_BENCH_IMGSZ", "256"))
    batch = int(os.environ.get("TRAIN_BENCH_BATCH", "4"))
    args = {**YOLO_ARGS, **json.loads(os.environ.get("TRAIN_BENCH_YOLO_ARGS", "{}"))}
    row = _instance("yolo", epochs, batch, imgsz=f"None if quick else {imgsz}",
                    extra=f"val_every=3, yolo_args={args!r},")
    return [{"case": f"YOLO11n-seg from the yaml, {imgsz} px, batch {batch}", **row}]


@benchmark("train_maskrcnn")
def train_maskrcnn(repeats: int) -> list[dict]:
    """Mask R-CNN (ResNet-50 FPN, weights=None) from scratch within the CPU budget; held-out mask AP."""
    epochs = int(os.environ.get("TRAIN_BENCH_EPOCHS", 20))
    return [{"case": "Mask R-CNN R50-FPN from scratch, 256 px", **_instance("maskrcnn", epochs, 2)}]


@benchmark("finetune_sam")
def finetune_sam(repeats: int) -> list[dict]:
    """SAM decoder fine-tuning: held-out single-point IoU before/after, seconds per step."""
    steps = int(os.environ.get("SAM_BENCH_STEPS", 200))
    rows = []
    sizes = [tuple(int(v) for v in part.split(",")) for part in os.environ.get("SAM_BENCH_IMAGES", "16,8;8,4").split(";")]
    kinds = os.environ.get("SAM_BENCH_KINDS", "tiny,vit_b").split(",")
    for (kind, lr), (n_img, n_test) in zip((("tiny", 1e-3), ("vit_b", 1e-4)), sizes, strict=True):
        if kind not in kinds:
            continue
        row = run_python(SAM.format(kind=kind, steps=steps, lr=lr, n_img=n_img, n_test=n_test))
        name = "tiny SAM" if kind == "tiny" else "random-weight vit_b"
        rows.append({"case": f"{name}, {n_img} train / {n_test} held-out images, lr {lr:g}", **row})
    return rows
