"""Fine-tuning Segment Anything's mask decoder (and prompt encoder) on the user's objects.

The image encoder stays frozen: each image is encoded once (the steps of
``SamPredictor.set_image``: the longest side resized to the encoder's input
size, normalised and padded) and its embedding is cached for the whole run.
Every step draws a few objects from one image and, for each, a prompt the way
SAM was trained:

- a **point** inside the object (drawn uniformly from its pixels) or its
  **box** (each side moved by up to 10 % of the box's size, at most 20 pixels);
- then, with probability ``corrective_p``, one or two **corrective points**: the
  model predicts, a point is drawn from the error region (positive where the
  object was missed, negative where the mask spilled over), and the model
  predicts again from all points and its previous low-resolution mask.

Single-point prompts use SAM's three outputs and train the best one (lowest
loss), other prompts its single output. The mask loss is Dice on the
low-resolution mask (the object's mask in the same padded frame, the padding
ignored), as micro-sam trains, plus ``focal_weight`` x SAM's focal loss (SAM
used 20; with small objects and weak image features that term alone is
minimised by predicting nothing, so it is off by default), plus the mean
squared error of the IoU prediction.
AdamW trains the mask decoder and the prompt encoder.

Objects are split into training and held-out objects; every ``val_every`` steps
the mean IoU of single-point prompts (the most interior pixel of each held-out
object, the candidate with the highest predicted IoU, as the SAM dock picks it)
decides which weights are kept, so Cancel (``state.stop``) keeps the best so
far. The result is an ordinary SAM state dict (Meta's key layout) saved as a
trained model (or at ``out``), which loads wherever a SAM checkpoint does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.core.vocabulary import Family, Task


@dataclass
class SamFinetuneOptions:
    """Settings of a SAM fine-tuning run.

    Parameters
    ----------
    steps : int
        Optimiser steps.
    objects_per_step : int
        Objects (each with its own prompt) per step, all from one image.
    learning_rate : float
        AdamW learning rate (warm-up, then cosine decay).
    corrective_p : float
        Probability of corrective-point iterations for a step's prompts.
    val_fraction : float
        Share of the objects held out for validation (0: validate on training objects).
    val_every : int
        Validate every this many steps (and after the last).
    train_prompt_encoder : bool
        Train the prompt encoder along with the mask decoder.
    focal_weight : float
        Weight of SAM's focal loss next to Dice (SAM: 20).
    keep_best : bool
        Keep the weights with the best held-out IoU (the starting weights when no
        step improved on them); False keeps the last weights.
    device : str
        "cpu", "cuda", "mps" or "auto".
    seed : int
    name : str, optional
        Folder name in the model folder's ``trained/``.
    overwrite : bool
        Replace an existing ``out``.
    """

    steps: int = 200
    objects_per_step: int = 8
    learning_rate: float = 1e-4
    corrective_p: float = 0.5
    val_fraction: float = 0.2
    val_every: int = 25
    train_prompt_encoder: bool = True
    focal_weight: float = 0.0
    keep_best: bool = True
    device: str = "cpu"
    seed: int = 0
    name: str | None = None
    overwrite: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.steps < 1:
            raise InputError(f"Fine-tune for at least 1 step, not {self.steps}.")
        if self.objects_per_step < 1:
            raise InputError(f"Use at least 1 object per step, not {self.objects_per_step}.")
        if not self.learning_rate > 0:
            raise InputError(f"The learning rate must be positive, not {self.learning_rate}.")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"The validation fraction must be in [0, 1), not {self.val_fraction}.")
        if self.val_every < 1:
            raise InputError(f"Validate every 1 step or more, not {self.val_every}.")
        if not 0 <= self.corrective_p <= 1:
            raise InputError(f"corrective_p must be in [0, 1], not {self.corrective_p}.")


@dataclass
class SamFinetuneState:
    """What a fine-tuning run has reached (held by the caller; ``stop`` ends it early, keeping the best)."""

    stop: Any = None
    history: list[dict] = field(default_factory=list)
    best_iou: float = -math.inf
    best_step: int | None = None
    initial_iou: float = math.nan
    step: int = 0
    seconds_per_step: float = math.nan
    stopped_early: bool = False
    saved: Path | None = None

    def __post_init__(self):
        import threading

        if self.stop is None:
            self.stop = threading.Event()


@dataclass
class _Object:
    image: int
    label: int
    mask: np.ndarray  # (H, W) bool at image resolution
    low: np.ndarray  # (S, S) float32 target in the low-resolution padded frame
    box: np.ndarray  # x0, y0, x1, y1 (pixels, max inclusive)


class _Frames:
    """SAM's coordinate frames of one model: image -> resized input -> padded square -> low-res masks."""

    def __init__(self, model):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.size = int(model.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.size)
        self.low = 4 * int(model.prompt_encoder.image_embedding_size[0])

    def input_size(self, shape) -> tuple[int, int]:
        return self.transform.get_preprocess_shape(shape[0], shape[1], self.size)

    def low_target(self, mask: np.ndarray) -> np.ndarray:
        """The object's mask in the low-resolution frame (soft values at its border)."""
        import torch
        import torch.nn.functional as F

        h, w = self.input_size(mask.shape)
        t = torch.from_numpy(mask.astype(np.float32))[None, None]
        t = F.interpolate(t, (h, w), mode="bilinear", align_corners=False)
        t = F.pad(t, (0, self.size - w, 0, self.size - h))
        return F.adaptive_avg_pool2d(t, self.low)[0, 0].numpy()

    def valid(self, shape) -> np.ndarray:
        h, w = self.input_size(shape)
        v = np.zeros((self.low, self.low), np.float32)
        f = self.low / self.size
        v[: max(1, math.ceil(h * f)), : max(1, math.ceil(w * f))] = 1.0
        return v


def _encode(model, rgb: np.ndarray, frames: _Frames):
    import torch

    resized = frames.transform.apply_image(rgb)
    tensor = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
    with torch.no_grad():
        return model.image_encoder(model.preprocess(tensor))


def _decode(model, emb, points, labels, boxes, mask_input, multimask: bool):
    """Low-res logits (N, M, S, S) and predicted IoU (N, M) for N prompt sets on one embedding."""
    sparse, dense = model.prompt_encoder(
        points=None if points is None else (points, labels), boxes=boxes, masks=mask_input,
    )
    return model.mask_decoder(
        image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
    )


def _mask_losses(logits, target, valid):
    """Per-mask focal and Dice losses (logits (N, M, S, S), target (N, 1, S, S), valid (1, 1, S, S))."""
    import torch
    import torch.nn.functional as F

    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    alpha = 0.25 * target + 0.75 * (1 - target)
    focal = (alpha * (1 - pt) ** 2 * ce * valid).sum((-2, -1)) / valid.sum().clamp(min=1)
    inter = (p * target * valid).sum((-2, -1))
    union = (p * valid).sum((-2, -1)) + (target * valid).sum((-2, -1))
    dice = 1 - (2 * inter + 1) / (union + 1)
    return focal, dice


def _iou_of(logits, target, valid):
    import torch

    pred = (logits > 0).float() * valid
    t = (target > 0.5).float() * valid
    inter = (pred * t).sum((-2, -1))
    union = torch.clamp(pred + t, max=1).sum((-2, -1))
    return inter / union.clamp(min=1)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The pixel (row, col) of ``mask`` farthest from its border."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(r), int(c)


def single_point_iou(model, embeddings, originals, objects, frames) -> float:
    """Mean IoU (at image resolution) of the single-point prompt of each object.

    The point is the object's most interior pixel; of SAM's three masks the one
    with the highest predicted IoU is scored, upsampled like ``SamPredictor``.
    """
    import torch

    if not objects:
        return math.nan
    ious = []
    with torch.no_grad():
        for obj in objects:
            r, c = interior_point(obj.mask)
            shape = originals[obj.image]
            pt = frames.transform.apply_coords(np.array([[c, r]], np.float32), shape)
            pts = torch.as_tensor(pt, dtype=torch.float32, device=model.device)[None]
            lab = torch.ones((1, 1), dtype=torch.int64, device=model.device)
            low, iou_pred = _decode(model, embeddings[obj.image], pts, lab, None, None, True)
            best = int(torch.argmax(iou_pred[0]))
            up = model.postprocess_masks(low[:, best:best + 1], frames.input_size(shape), shape)[0, 0] > 0
            pred = up.cpu().numpy()
            union = np.count_nonzero(pred | obj.mask)
            ious.append(np.count_nonzero(pred & obj.mask) / union if union else 1.0)
    return float(np.mean(ious))


def _sample_prompt(obj: _Object, rng, frames: _Frames, shape, point: bool) -> np.ndarray:
    """A point inside the object (2,) or its jittered box (4,), in the input frame."""
    if point:
        rows, cols = np.nonzero(obj.mask)
        k = int(rng.integers(len(rows)))
        return frames.transform.apply_coords(np.array([[cols[k], rows[k]]], np.float32), shape)[0]
    x0, y0, x1, y1 = obj.box.astype(np.float32)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    jitter = np.array([w, h, w, h], np.float32) * 0.1
    jitter = np.minimum(jitter, 20.0)
    box = np.array([x0, y0, x1, y1], np.float32) + rng.normal(0, 1, 4).astype(np.float32) * jitter
    box = np.clip(box, 0, [shape[1] - 1, shape[0] - 1, shape[1] - 1, shape[0] - 1])
    box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
    return frames.transform.apply_boxes(box[None], shape)[0]


def _corrective_point(low_logit: np.ndarray, target: np.ndarray, valid: np.ndarray, rng, frames: _Frames):
    """A point in the error region of a low-res prediction (input frame) and its label, or None."""
    pred = low_logit > 0
    gt = target > 0.5
    missed = gt & ~pred & (valid > 0)
    spilled = pred & ~gt & (valid > 0)
    n_m, n_s = int(missed.sum()), int(spilled.sum())
    if n_m + n_s == 0:
        return None
    positive = rng.random() < n_m / (n_m + n_s)
    rows, cols = np.nonzero(missed if positive else spilled)
    k = int(rng.integers(len(rows)))
    scale = frames.size / frames.low
    return np.array([(cols[k] + 0.5) * scale, (rows[k] + 0.5) * scale], np.float32), int(positive)


def finetune_sam_job(
    images: Any,
    labels: Any,
    model,
    *,
    options: SamFinetuneOptions | None = None,
    out=None,
    store=None,
    state: SamFinetuneState | None = None,
) -> Generator[Progress, None, Any]:
    """Fine-tune a SAM model on label images (a job; see the module docstring).

    Parameters
    ----------
    images, labels
        Planes and their label images (as for instance training).
    model : str, path or Runner
        A SAM (segment_anything) model: registry name, checkpoint, trained name, runner.
    options : SamFinetuneOptions, optional
    out : path, optional
        A ``.pth`` file to write, or a folder for a trained-model folder; default
        ``<model folder>/trained/<name>/``.
    store : ModelStore, optional
    state : SamFinetuneState, optional

    Returns
    -------
    Runner
        The fine-tuned model, loaded from its saved checkpoint.
    """
    import copy
    import tempfile

    import torch

    from napari_segsuite.models.base import load_model
    from napari_segsuite.models.store import default_store
    from napari_segsuite.models.trained import (
        check_output_folder,
        safe_name,
        trained_root,
        unique_name,
    )
    from napari_segsuite.tasks.instance_data import prepare_instance_data

    opts = options or SamFinetuneOptions()
    opts.check()
    store = store or default_store()
    state = state if state is not None else SamFinetuneState()
    out_file = None
    if out is not None and str(out).endswith((".pth", ".pt")):
        out_file = Path(out).expanduser()
        if out_file.exists() and not opts.overwrite:
            raise InputError(f"{out_file} exists; choose another file name or pass overwrite=True.")
        if not out_file.parent.is_dir():
            raise InputError(f"The folder {out_file.parent} does not exist.")
        folder = None
    elif out is not None:
        folder = check_output_folder(out, opts.overwrite)
    else:
        root = trained_root(store.cache_dir)
        folder = (check_output_folder(root / safe_name(opts.name), opts.overwrite) if opts.name
                  else root / unique_name(store.cache_dir, f"sam-finetuned-{time.strftime('%Y%m%d-%H%M%S')}"))
    yield Progress(0, opts.steps, "Checking the annotations")
    data = prepare_instance_data(images, labels)
    runner = load_model(model, opts.device, store=store)
    if runner.family != Family.SAM:
        raise InputError(
            f"Fine-tuning works on Segment Anything (segment_anything) checkpoints; '{runner.name}' is "
            f"{runner.family}."
        )
    device = runner.device
    sam = copy.deepcopy(runner.model).to(device)
    sam.eval()
    for p in sam.image_encoder.parameters():
        p.requires_grad_(False)
    trainable = list(sam.mask_decoder.parameters())
    if opts.train_prompt_encoder:
        trainable += list(sam.prompt_encoder.parameters())
    else:
        for p in sam.prompt_encoder.parameters():
            p.requires_grad_(False)
    frames = _Frames(sam)
    rng = np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)

    # Embeddings: once per image.
    embeddings, originals, objects = [], [], []
    n = len(data)
    for i, (plane, lab) in enumerate(zip(data.planes, data.labels, strict=True)):
        yield Progress(0, opts.steps, f"Encoding image {i + 1}/{n}")
        embeddings.append(_encode(sam, plane, frames))
        originals.append(plane.shape[:2])
        for j in sorted(data.classes[i]):
            m = lab == j
            rows, cols = np.nonzero(np.any(m, 1))[0], np.nonzero(np.any(m, 0))[0]
            objects.append(_Object(i, j, m, frames.low_target(m),
                                   np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)))
    order = rng.permutation(len(objects))
    n_val = round(len(objects) * opts.val_fraction) if len(objects) > 1 else 0
    n_val = min(n_val, len(objects) - 1)
    val_objs = [objects[k] for k in order[:n_val]] if n_val else list(objects)
    train_objs = [objects[k] for k in order[n_val:]]
    by_image: dict[int, list[_Object]] = {}
    for o in train_objs:
        by_image.setdefault(o.image, []).append(o)
    image_ids = sorted(by_image)
    weights = np.array([len(by_image[i]) for i in image_ids], float)
    weights /= weights.sum()
    valid = {i: torch.from_numpy(frames.valid(originals[i])).to(device)[None, None] for i in image_ids}

    state.initial_iou = single_point_iou(sam, embeddings, originals, val_objs, frames)
    state.best_iou, state.best_step = state.initial_iou, 0
    best = {k: v.detach().cpu().clone() for k, v in sam.state_dict().items()}
    state.history.append({"step": 0, "val_iou": state.initial_iou})
    yield Progress(0, opts.steps, f"Held-out single-point IoU before fine-tuning: {state.initial_iou:.3f}",
                   partial=state.history[-1])
    optimizer = torch.optim.AdamW(trainable, lr=opts.learning_rate, weight_decay=1e-4)
    warm = max(1, min(20, opts.steps // 10))
    t0 = time.perf_counter()
    for step in range(1, opts.steps + 1):
        if state.stop.is_set():
            state.stopped_early = True
            break
        lr = opts.learning_rate * (step / warm if step <= warm else
                                   0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, opts.steps - warm))))
        for g in optimizer.param_groups:
            g["lr"] = lr
        img = image_ids[int(rng.choice(len(image_ids), p=weights))]
        pool = by_image[img]
        picks = [pool[k] for k in rng.choice(len(pool), size=min(opts.objects_per_step, len(pool)), replace=False)]
        shape = originals[img]
        emb = embeddings[img]
        target = torch.from_numpy(np.stack([o.low for o in picks])).to(device)[:, None]
        v = valid[img]
        use_points = bool(rng.random() < 0.5)  # one prompt kind per step: points or boxes
        prompts = np.stack([_sample_prompt(o, rng, frames, shape, use_points) for o in picks])
        if use_points:
            point_t = torch.as_tensor(prompts[:, None], dtype=torch.float32, device=device)
            label_t = torch.ones(point_t.shape[:2], dtype=torch.int64, device=device)
            box_t = None
        else:
            point_t = label_t = None
            box_t = torch.as_tensor(prompts, dtype=torch.float32, device=device)
        rounds = 1 + (int(rng.integers(1, 3)) if rng.random() < opts.corrective_p else 0)
        mask_in = None
        total = torch.zeros((), device=device)
        with torch.enable_grad():
            for r in range(rounds):
                multimask = use_points and r == 0
                low, iou_pred = _decode(sam, emb, point_t, label_t, box_t, mask_in, multimask)
                focal, dice = _mask_losses(low, target, v)
                per = opts.focal_weight * focal + dice
                pick = torch.argmin(per.detach(), dim=1)
                idx = torch.arange(len(picks), device=device)
                true_iou = _iou_of(low.detach(), target, v)
                loss = per[idx, pick].mean() + ((iou_pred - true_iou) ** 2).mean()
                total = total + loss
                if r + 1 < rounds:
                    chosen = low[idx, pick].detach()
                    new_pts, new_lab = [], []
                    for k in range(len(picks)):
                        cp = _corrective_point(chosen[k].cpu().numpy(), picks[k].low, frames.valid(shape), rng, frames)
                        if cp is None:  # no error left: repeat a point inside the object
                            rr, cc = interior_point(picks[k].mask)
                            cp = (frames.transform.apply_coords(np.array([[cc, rr]], np.float32), shape)[0], 1)
                        new_pts.append(cp[0])
                        new_lab.append(cp[1])
                    add_p = torch.as_tensor(np.stack(new_pts)[:, None], dtype=torch.float32, device=device)
                    add_l = torch.as_tensor(np.array(new_lab)[:, None], dtype=torch.int64, device=device)
                    if point_t is None:
                        point_t, label_t = add_p, add_l
                    else:
                        point_t, label_t = torch.cat([point_t, add_p], 1), torch.cat([label_t, add_l], 1)
                    mask_in = chosen[:, None]
            optimizer.zero_grad(set_to_none=True)
            (total / rounds).backward()
        optimizer.step()
        value = float(total.detach()) / rounds
        if not math.isfinite(value):
            raise InputError("Fine-tuning diverged (the loss is not a number); lower the learning rate.")
        state.step = step
        state.seconds_per_step = (time.perf_counter() - t0) / step
        row: dict[str, Any] = {"step": step, "train_loss": value}
        if step % opts.val_every == 0 or step == opts.steps:
            iou = single_point_iou(sam, embeddings, originals, val_objs, frames)
            row["val_iou"] = iou
            if iou >= state.best_iou or not opts.keep_best:
                state.best_iou, state.best_step = iou, step
                best = {k: v.detach().cpu().clone() for k, v in sam.state_dict().items()}
        state.history.append(row)
        msg = f"Step {step}/{opts.steps}: loss {value:.3f}"
        if "val_iou" in row:
            msg += f", held-out single-point IoU {row['val_iou']:.3f} (before {state.initial_iou:.3f})"
        yield Progress(step, opts.steps, msg, partial=row)

    yield Progress(state.step, opts.steps, "Saving the fine-tuned SAM")
    info = {
        "architecture": runner.info.get("architecture", {}).get("arch"),
        "training": {
            "base_model": runner.source.provenance(),
            "steps": state.step, "best_step": state.best_step,
            "val_iou_before": round(state.initial_iou, 5) if math.isfinite(state.initial_iou) else None,
            "val_iou_best": round(state.best_iou, 5) if math.isfinite(state.best_iou) else None,
            "held_out_objects": n_val, "training_objects": len(train_objs),
            "seconds_per_step": round(state.seconds_per_step, 4) if math.isfinite(state.seconds_per_step) else None,
            "stopped_early": state.stopped_early,
            "options": {k: v for k, v in vars(opts).items() if k != "overwrite"},
            "history": [{k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v) for k, v in r.items()}
                        for r in state.history],
        },
    }
    if out_file is not None:
        import os

        fd, tmp = tempfile.mkstemp(prefix=out_file.name + ".", suffix=".part", dir=out_file.parent)
        os.close(fd)
        try:
            torch.save(best, tmp)
            os.replace(tmp, out_file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        state.saved = out_file
        target_path = out_file
    else:
        from napari_segsuite.models.trained import save_trained

        with tempfile.TemporaryDirectory(prefix="segsuite-sam-") as work:
            weights = Path(work) / "sam_finetuned.pth"
            torch.save(best, weights)
            save_trained(folder, weights, family=Family.SAM, tasks=(Task.PROMPT, Task.AUTOMATIC), class_names={},
                         info=info, overwrite=opts.overwrite, move=True)
        state.saved = folder
        target_path = folder
    result = load_model(target_path, opts.device, store=store)
    result.training = info["training"]
    yield Progress(state.step, opts.steps, f"Saved {target_path.name}: held-out single-point IoU "
                   f"{state.initial_iou:.3f} -> {state.best_iou:.3f}")
    return result


def finetune_sam(images, labels, model, *, out=None, store=None, state=None,
                 progress: Callable[[Progress], None] | None = None, **options) -> Any:
    """Synchronous :func:`finetune_sam_job` with options as keywords."""
    from dataclasses import fields

    known = {f.name for f in fields(SamFinetuneOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"Unknown fine-tuning option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    return run_sync(finetune_sam_job(images, labels, model, options=SamFinetuneOptions(**options), out=out,
                                     store=store, state=state), progress)
