"""Mask R-CNN training with torchvision: a plain training loop over the user's label images.

The model is torchvision's ``maskrcnn_resnet50_fpn`` (or ``_v2``), built with
``weights=None, weights_backbone=None`` (nothing is downloaded; every layer,
batch norm included, is trained) or loaded from the user's checkpoint; when
the checkpoint has other classes than the annotations, its box and mask
predictors are replaced by new ones for the annotations' classes (the rest
of the network is kept). Images are fed at their own size (torchvision's
``min_size``/``max_size`` set to the training input size, which the saved
model keeps for prediction).

Per step: a batch of training images with random flips and 90° rotations,
targets from the label images (one box, class and mask per object), the sum
of Mask R-CNN's five losses, AdamW with a short warm-up and cosine decay,
gradient norm clipped at 10. After every ``val_every`` epochs the model
predicts the held-out images and is scored with
:func:`napari_segsuite.tasks.instance_data.dataset_scores`; the best weights
(highest mask AP50) are kept on the CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress, subjob
from napari_segsuite.core.vocabulary import Family, Task

DEFAULT_EPOCHS = 30
DEFAULT_LR = 3e-4
ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")


def targets_of(labels: np.ndarray, classes: dict[int, int]):
    """torchvision targets of one label image: boxes (x0, y0, x1, y1), labels (class + 1), masks."""
    import torch

    ids = [i for i in sorted(classes) if i]
    boxes, cls, masks = [], [], []
    for i in ids:
        m = labels == i
        rows, cols = np.nonzero(np.any(m, axis=1))[0], np.nonzero(np.any(m, axis=0))[0]
        if not len(rows):
            continue
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        cls.append(classes[i] + 1)
        masks.append(m)
    h, w = labels.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(cls, dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros((0, h, w), torch.uint8),
    }


def augment(plane: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random flip and 90° rotation of a plane and its labels."""
    k = int(rng.integers(4))
    if k:
        plane, labels = np.rot90(plane, k, axes=(0, 1)), np.rot90(labels, k, axes=(0, 1))
    if rng.random() < 0.5:
        plane, labels = plane[:, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(plane), np.ascontiguousarray(labels)


def default_imgsz(planes, minimum: int = 256) -> int:
    """The larger side of the largest plane rounded up to a multiple of 32 (at least ``minimum``)."""
    side = max(max(p.shape[:2]) for p in planes)
    return max(minimum, int(math.ceil(side / 32) * 32))


def _lr(step: int, total: int, base: float) -> float:
    warm = max(1, min(50, total // 10))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _build(init_runner, n_classes: int, arch: str | None, class_names: dict[int, str]):
    """The model to train: a copy of the checkpoint's (heads fitted to the classes) or a new one."""
    import copy

    from napari_segsuite.models.torchvision_models import build_torchvision_model

    if init_runner is None:
        arch = arch or ARCHS[0]
        if arch not in ARCHS:
            raise InputError(f"Unknown Mask R-CNN architecture {arch!r}; choose {' or '.join(ARCHS)}.")
        return build_torchvision_model(arch, n_classes + 1), arch
    model = copy.deepcopy(init_runner.model).cpu()
    arch = init_runner.info.get("arch", ARCHS[0])
    old = {v: k for k, v in (init_runner.class_names or {}).items()}
    current = int(model.roi_heads.box_predictor.cls_score.out_features)
    same = current == n_classes + 1 and all(old.get(n) == k + 1 for k, n in class_names.items())
    if not same:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
        from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

        box_in = model.roi_heads.box_predictor.cls_score.in_features
        mask_in = model.roi_heads.mask_predictor.conv5_mask.in_channels
        hidden = model.roi_heads.mask_predictor.conv5_mask.out_channels
        model.roi_heads.box_predictor = FastRCNNPredictor(box_in, n_classes + 1)
        model.roi_heads.mask_predictor = MaskRCNNPredictor(mask_in, hidden, n_classes + 1)
    return model, arch


def _cpu_state(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _predict_val(model, data, val_idx, device, arch, class_names):
    """Predictions of the in-training model on the held-out planes (through the instance task)."""
    from napari_segsuite.models.store import ModelSource
    from napari_segsuite.models.torchvision_models import TorchvisionRunner
    from napari_segsuite.tasks.instance_data import predict_for_scores

    source = ModelSource(path=Path("<training>"), family=Family.TORCHVISION, name="training")
    runner = TorchvisionRunner(model, source, device, tasks=(Task.INSTANCE,), class_names=class_names,
                               info={"arch": arch})
    return (yield from predict_for_scores(runner, [data.planes[i] for i in val_idx]))


def train_maskrcnn_job(data, train_idx, val_idx, opts, init_runner, state, work: Path
                       ) -> Generator[Progress, None, tuple[str, Path, dict, dict]]:
    """Train Mask R-CNN (see the module docstring).

    Returns
    -------
    (str, Path, dict, dict)
        Runner family, weights file, card info, class names as the model predicts them.
    """
    import torch

    from napari_segsuite.core.device import resolve_device
    from napari_segsuite.models.offline import guard_llvm_clash
    from napari_segsuite.tasks.instance_data import dataset_scores, truths_of

    guard_llvm_clash()
    device = resolve_device(opts.device)
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    k = len(data.class_names)
    # torchvision's names: class id + 1 (0 is background)
    names_tv = {c + 1: n for c, n in data.class_names.items()}
    model, arch = _build(init_runner, k, opts.arch, data.class_names)
    imgsz = int(opts.imgsz or default_imgsz(data.planes))
    model.transform.min_size, model.transform.max_size = (imgsz,), imgsz
    # Annotated images hold tens of objects, not COCO's hundreds: fewer proposals and sampled
    # regions per image make a step about twice as cheap (training-time settings, not saved).
    model.rpn._pre_nms_top_n["training"], model.rpn._post_nms_top_n["training"] = 1000, 500
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 128
    model.to(device)
    epochs = int(opts.epochs or DEFAULT_EPOCHS)
    batch = max(1, min(int(opts.batch), len(train_idx)))
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch))
    total = epochs * steps_per_epoch
    base_lr = float(opts.learning_rate or DEFAULT_LR)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=1e-4)
    truths = [(lab, {i: c + 1 for i, c in cls.items()}) for lab, cls in truths_of(data, val_idx)]
    best_state = None
    step = 0
    history0 = list(getattr(init_runner, "training", {}).get("history", []) if init_runner else [])
    epoch0 = max([int(r.get("epoch", 0)) for r in history0] or [0])
    state.history[:] = history0
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = [train_idx[i] for i in rng.permutation(len(train_idx))]
        model.train()
        losses = []
        for b in range(steps_per_epoch):
            if state.stop.is_set():
                break
            chunk = order[b * batch:(b + 1) * batch]
            xs, ts = [], []
            for i in chunk:
                plane, lab = augment(data.planes[i], data.labels[i], rng)
                xs.append(torch.from_numpy(plane).permute(2, 0, 1).float().div_(255.0).to(device))
                ts.append({key: v.to(device) for key, v in targets_of(lab, data.classes[i]).items()})
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, total, base_lr)
            with torch.enable_grad():
                parts = model(xs, ts)
                loss = sum(parts.values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            optimizer.step()
            value = float(loss.detach().cpu())
            if not math.isfinite(value):
                raise InputError("Training diverged (the loss is not a number); lower the learning rate.")
            step += 1
            losses.append(value)
            row = {"epoch": epoch0 + epoch, "step": step, "train_loss": value,
                   **{f"loss_{n.removeprefix('loss_')}": float(v.detach()) for n, v in parts.items()}}
            state.history.append(row)
            yield Progress(step, total, f"Epoch {epoch}/{epochs}, step {b + 1}/{steps_per_epoch}: loss {value:.3f}",
                           partial=row)
        stopped = state.stop.is_set()
        state.epoch = epoch0 + epoch
        if losses and (epoch % opts.val_every == 0 or epoch == epochs or stopped) and truths:
            model.eval()
            preds = yield from subjob(_predict_val(model, data, val_idx, device, arch, names_tv), step, total,
                                      f"Epoch {epoch}: ")
            scores = dataset_scores(preds, truths)
            row = {"epoch": epoch0 + epoch, "step": step, "val_ap50": scores["ap50"], "val_ap": scores["ap"],
                   "val_precision": scores["precision"], "val_recall": scores["recall"],
                   "train_loss_mean": float(np.mean(losses))}
            if state.improved(scores["ap50"], scores["ap"], epoch0 + epoch):
                best_state = _cpu_state(model)
            state.history.append(row)
            yield Progress(step, total, f"Epoch {epoch}/{epochs}: held-out mask AP50 {scores['ap50']:.3f}, "
                           f"AP {scores['ap']:.3f} (best {state.best_ap50:.3f})", partial=row)
        elif losses and not truths:
            best_state, state.best_epoch = _cpu_state(model), epoch0 + epoch
        if stopped:
            state.stopped_early = True
            break
    state.seconds = time.perf_counter() - t_start
    if best_state is None:
        if step == 0:
            raise InputError("Training was stopped before its first step; there is no model to keep.")
        best_state = _cpu_state(model)
    weights = work / "model.pth"
    torch.save(best_state, weights)
    info = {"arch": arch, "num_classes": k + 1, "min_size": imgsz, "max_size": imgsz}
    return Family.TORCHVISION, weights, info, names_tv
