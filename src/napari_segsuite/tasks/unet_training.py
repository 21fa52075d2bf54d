"""Training a U-Net from sparse painted strokes, and tiled prediction with it.

The user paints a few strokes in a Labels layer: ``0`` is "not labelled",
``1..K`` are classes. :func:`train_unet_job` trains a
``segmentation_models_pytorch.Unet`` (``encoder_weights=None``: nothing is
downloaded) on the labelled pixels only:

- **Inputs**: one or several image planes ((H, W) or (H, W, C)) with a
  strokes plane each, normalised as the model config says (robust
  percentiles by default).
- **Validation**: a part of the strokes is held out by a spatial block split
  (32-pixel blocks, each class keeps pixels on both sides); it is never
  trained on and decides which weights are kept (lowest validation loss).
- **Sampling**: patches around labelled pixels, with the class of the centre
  pixel drawn uniformly, so rare classes are seen as often as common ones.
- **Loss**: cross-entropy with inverse-frequency class weights plus soft Dice,
  both on labelled pixels only.
- **Augmentation**: flips, 90° rotations, gamma, gain and offset.
- **Cancel**: the job keeps its best weights in a :class:`TrainingState` the
  caller holds, so stopping the worker at any yield leaves the best model
  so far in the caller's hands.

The model has ``K + 1`` output channels: channel ``k`` is stroke class ``k``
and channel 0 stands for "unlabelled"; it is never a training target, so its
logit is pushed down everywhere, and prediction takes the best of channels
``1..K`` (config key ``"unlabeled_channel": true``). A saved model is an
ordinary napari-segsuite U-Net folder (``models/unet.py``), so it loads
through :func:`napari_segsuite.models.base.load_model` like any other model.

Everything is seeded (``TrainingOptions.seed``): the same inputs and options
give the same model on the same machine.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress, json_row, run_sync
from napari_segsuite.models.unet import logits_job

UNLABELED_NAME = "unlabeled"
VALIDATION_BLOCK = 32


@dataclass
class TrainingOptions:
    """Settings of a training run (all have working defaults for a CPU).

    Parameters
    ----------
    steps : int
        Optimiser steps (batches) of this run.
    patch_size : int
        Side of the square training patches (a multiple of ``2 ** encoder_depth``).
    batch_size : int
        Patches per step.
    learning_rate : float
        Peak learning rate of AdamW (warm-up, then cosine decay to 5 %).
    weight_decay : float
        AdamW weight decay.
    val_fraction : float
        Share of the labelled pixels held out for validation (0 disables validation:
        the last weights are kept).
    val_every : int
        Validate every this many steps (and at the end).
    dice_weight : float
        Weight of the soft Dice term next to cross-entropy.
    class_weighting : bool
        Weight cross-entropy by inverse class frequency of the labelled pixels.
    augment : bool
        Flips, 90° rotations and intensity changes of the patches.
    encoder_name, encoder_depth, decoder_channels
        The ``smp.Unet`` architecture of a new model (ignored when continuing). The
        default, timm's MobileNetV3-small (0.5 width) cut to 4 stages with a narrow
        decoder (0.37 M parameters), trains in minutes on a CPU; any smp encoder
        works (weights are never downloaded: training starts from scratch).
    normalization : dict, optional
        Input normalisation of a new model (see ``models/unet.py``); robust
        percentiles by default.
    device : str
        "cpu", "cuda", "mps" or "auto".
    seed : int
        Seed of the split, the sampling, the augmentation and the initial weights.
    """

    steps: int = 250
    patch_size: int = 96
    batch_size: int = 4
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    val_every: int = 25
    dice_weight: float = 1.0
    class_weighting: bool = True
    augment: bool = True
    encoder_name: str = "tu-mobilenetv3_small_050"
    encoder_depth: int = 4
    decoder_channels: tuple[int, ...] = (64, 32, 16, 8)
    normalization: dict | None = None
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainingOptions:
        """Options from keyword arguments, with a clear error for unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise InputError(f"Unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        opts = cls(**kwargs)
        opts.check()
        return opts

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.steps < 1:
            raise InputError(f"Train for at least 1 step, not {self.steps}.")
        if self.batch_size < 1:
            raise InputError(f"The batch size must be at least 1, not {self.batch_size}.")
        m = 2 ** int(self.encoder_depth)
        if self.patch_size < m or self.patch_size % m:
            raise InputError(f"The patch size must be a positive multiple of {m}, not {self.patch_size}.")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"The validation fraction must be in [0, 1), not {self.val_fraction}.")
        if not self.learning_rate > 0:
            raise InputError(f"The learning rate must be positive, not {self.learning_rate}.")
        if self.val_every < 1:
            raise InputError(f"Validate every 1 step or more, not {self.val_every}.")


@dataclass
class TrainingState:
    """What a training job has reached, held by the caller (so Cancel keeps it).

    The job updates it in place: ``history`` gets one row per step
    (``{"step", "train_loss"}``, plus ``"val_loss"`` and ``"val_accuracy"``
    on validation steps), and ``best_state`` the weights with the lowest
    validation loss so far (copies on the CPU).
    """

    config: dict | None = None
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_val: float = math.inf
    best_step: int | None = None
    step: int = 0
    labeled_pixels: int = 0
    seconds: float = 0.0
    finished: bool = False

    def best_model(self, device: str = "cpu") -> TrainedUnet | None:
        """The best model so far (None before the first validation)."""
        if self.best_state is None or self.config is None:
            return None
        from napari_segsuite.models.unet import build_unet

        model = build_unet(self.config)
        model.load_state_dict(self.best_state)
        return TrainedUnet(model.eval().to(device), _with_training_info(self), history=list(self.history),
                           best_val=self.best_val, device=device)


def _with_training_info(state: TrainingState) -> dict:
    cfg = dict(state.config or {})
    previous = dict(cfg.get("training") or {})
    cfg["training"] = {
        **previous,
        "steps": int(state.step),
        "best_step": state.best_step,
        "best_val_loss": None if not math.isfinite(state.best_val) else float(state.best_val),
        "labeled_pixels": int(state.labeled_pixels),
        "seconds": round(float(state.seconds), 2),
        "history": [json_row(r) for r in state.history],
    }
    return cfg


class TrainedUnet:
    """A U-Net with its config: predict labels, save as a model folder.

    Parameters
    ----------
    model : torch.nn.Module
        The ``smp.Unet``.
    config : dict
        Its U-Net config (``models/unet.py``), with class names and normalisation.
    history : list of dict, optional
        The training curve.
    best_val : float, optional
        The validation loss of these weights.
    device : str
        Where the model lives.
    """

    def __init__(self, model, config: dict, history: Sequence[dict] = (), best_val: float | None = None,
                 device: str = "cpu"):
        self.model = model
        self.config = config
        self.history = list(history)
        self.best_val = best_val
        self.device = device

    @property
    def unlabeled_channel(self) -> bool:
        """Whether output channel 0 is the unused "unlabelled" channel of a stroke-trained model."""
        return bool(self.config.get("unlabeled_channel", False))

    @property
    def class_names(self) -> dict[int, str]:
        """Label value -> class name of the predicted labels."""
        names = {int(k): v for k, v in self.config.get("class_names", {}).items()}
        first = 1 if self.unlabeled_channel else 0
        return {i: names.get(i, f"class_{i}") for i in range(first, self.config["classes"])}

    @property
    def in_channels(self) -> int:
        """Channels the model takes."""
        return int(self.config["in_channels"])

    def predict_proba(self, image: np.ndarray, *, tile_size: int = 512, overlap: int = 64) -> np.ndarray:
        """Class probabilities of one plane, (K, H, W) float32 (class ``k`` in row ``k - 1``)."""
        return run_sync(predict_plane_job(self, image, tile_size=tile_size, overlap=overlap))[1]

    def predict(self, image: np.ndarray, *, tile_size: int = 512, overlap: int = 64) -> np.ndarray:
        """Labels of one plane (H, W) or (H, W, C): values ``1..K`` for a stroke-trained model."""
        return run_sync(predict_plane_job(self, image, tile_size=tile_size, overlap=overlap))[0]

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``model.safetensors`` and ``unet_config.json`` into the folder ``path``."""
        from napari_segsuite.models.unet import save_unet

        return save_unet(self.model, self.config, path)

    def to(self, device: str) -> TrainedUnet:
        """Move the model to ``device`` (in place); returns self."""
        self.model.to(device)
        self.device = device
        return self

    def __repr__(self) -> str:
        names = ", ".join(f"{k}={v}" for k, v in self.class_names.items())
        return f"<TrainedUnet {self.config['encoder_name']} classes({names}) on {self.device}>"


def load_trained_unet(path: str | os.PathLike, device: str = "cpu") -> TrainedUnet:
    """Load a U-Net folder as a :class:`TrainedUnet`."""
    from napari_segsuite.core.device import resolve_device
    from napari_segsuite.models.offline import guard_llvm_clash
    from napari_segsuite.models.unet import load_unet

    guard_llvm_clash()
    device = resolve_device(device)
    model, config = load_unet(path, device)
    history = list((config.get("training") or {}).get("history", []))
    return TrainedUnet(model, config, history=history, device=device)


# -- inputs ----------------------------------------------------------------------------


def pairs_from_arrays(image: Any, labels: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(plane, strokes) pairs from the API's ``image`` and ``labels`` arguments.

    ``labels`` decides the layout: ``image.shape == labels.shape`` is greyscale
    (one plane, or a stack of planes along the first axes);
    ``image.shape[:-1] == labels.shape`` has channels last. Lists of images and
    labels give one pair per element. Stacks keep only planes with strokes.
    """
    if isinstance(image, (list, tuple)) or isinstance(labels, (list, tuple)):
        if not isinstance(image, (list, tuple)) or not isinstance(labels, (list, tuple)) or len(image) != len(labels):
            raise InputError("Give as many label images as images (two lists of the same length).")
        out = []
        for img, lab in zip(image, labels, strict=True):
            out.extend(pairs_from_arrays(img, lab))
        return out
    img, lab = np.asarray(image), np.asarray(labels)
    if lab.ndim < 2:
        raise InputError(f"The labels must be at least 2D, got shape {lab.shape}.")
    if img.shape == lab.shape:
        channels = False
    elif img.ndim == lab.ndim + 1 and img.shape[:-1] == lab.shape:
        channels = True
    else:
        raise InputError(
            f"The labels (shape {lab.shape}) do not match the image (shape {img.shape}); "
            "they need the image's shape (without its channel axis)."
        )
    if lab.ndim == 2:
        return [(img, lab)]
    flat_lab = lab.reshape(-1, *lab.shape[-2:])
    flat_img = img.reshape(-1, *img.shape[-3 if channels else -2:])
    keep = [i for i in range(len(flat_lab)) if np.any(flat_lab[i])]
    if not keep:
        keep = [0]
    return [(flat_img[i], flat_lab[i]) for i in keep]


def check_training_data(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    init_model: TrainedUnet | None = None,
) -> tuple[int, int]:
    """Check (plane, strokes) pairs; return (number of classes K, image channels).

    Raises
    ------
    InputError
        Mismatching shapes, non-integer or negative strokes, no labelled pixels,
        a single class, channel counts that differ between images or from
        ``init_model``, or more classes than ``init_model`` has.
    """
    if not pairs:
        raise InputError("There is no image to train on.")
    channels = set()
    present: set[int] = set()
    for plane, strokes in pairs:
        plane, strokes = np.asarray(plane), np.asarray(strokes)
        if plane.ndim not in (2, 3) or plane.shape[:2] != strokes.shape:
            raise InputError(
                f"The strokes (shape {strokes.shape}) do not match the image plane (shape {plane.shape[:2]}); "
                "use a Labels layer of the image's shape."
            )
        if not np.issubdtype(strokes.dtype, np.integer):
            if strokes.dtype == bool:
                strokes = strokes.astype(np.uint8)
            elif np.issubdtype(strokes.dtype, np.floating) and np.all(np.mod(strokes, 1) == 0):
                strokes = strokes.astype(np.int64)
            else:
                raise InputError(f"Strokes must be integer class labels, not {strokes.dtype}.")
        if strokes.size and strokes.min() < 0:
            raise InputError("Strokes must be 0 (not labelled) or a positive class number.")
        present.update(int(v) for v in np.unique(strokes) if v > 0)
        channels.add(1 if plane.ndim == 2 else plane.shape[-1])
    if len(channels) > 1:
        raise InputError(f"The images have different channel counts ({sorted(channels)}); train on one kind.")
    n_channels = channels.pop()
    if not present:
        raise InputError(
            "The strokes layer has no labelled pixels. Paint strokes of at least two classes "
            "(label 1, 2, ...) first; 0 means 'not labelled'."
        )
    if len(present) < 2:
        (only,) = present
        raise InputError(
            f"The strokes have only class {only}. Paint strokes of at least two classes "
            "(e.g. 1 = background, 2 = object) so the model can tell them apart."
        )
    k = max(present)
    if init_model is not None:
        if not init_model.unlabeled_channel:
            raise InputError(
                "This U-Net was not trained from strokes in napari-segsuite, so it cannot continue "
                "training on strokes; train a new model."
            )
        model_k = init_model.config["classes"] - 1
        if k > model_k:
            raise InputError(
                f"The strokes use class {k} but the model knows {model_k} classes; train a new model "
                "to add classes."
            )
        k = model_k
        if init_model.in_channels != n_channels:
            raise InputError(
                f"The model takes {init_model.in_channels} channel(s) but the image has {n_channels}; "
                "continue training on images like the ones it was trained on."
            )
    return k, n_channels


def split_strokes(strokes: Sequence[np.ndarray], fraction: float, rng: np.random.Generator,
                  block: int = VALIDATION_BLOCK) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Hold out ``fraction`` of the labelled pixels for validation, by spatial blocks.

    Blocks of ``block`` pixels go to validation at random; each class keeps
    labelled pixels on both sides (a class found in one block only is split
    pixel by pixel). Returns (train, validation) stroke planes (0 = not used).
    """
    train = [np.asarray(s).astype(np.int64) for s in strokes]
    if fraction <= 0:
        return train, [np.zeros_like(s) for s in train]
    val_masks = []
    for s in train:
        h, w = s.shape
        nb = (-(-h // block), -(-w // block))
        grid = rng.random(nb) < fraction
        val_masks.append(np.kron(grid, np.ones((block, block), bool))[:h, :w])
    classes = sorted({int(v) for s in train for v in np.unique(s) if v > 0})
    for k in classes:
        in_val = sum(int(np.count_nonzero((s == k) & m)) for s, m in zip(train, val_masks, strict=True))
        total = sum(int(np.count_nonzero(s == k)) for s in train)
        if 0 < in_val < total:
            continue
        # Re-split this class pixel by pixel (its blocks are all on one side).
        for s, m in zip(train, val_masks, strict=True):
            sel = s == k
            m[sel] = rng.random(int(sel.sum())) < max(fraction, 1.0 / max(total, 2))
        in_val = sum(int(np.count_nonzero((s == k) & m)) for s, m in zip(train, val_masks, strict=True))
        if in_val in (0, total) and total >= 2:
            for s, m in zip(train, val_masks, strict=True):
                idx = np.flatnonzero(s == k)
                if idx.size:
                    m.flat[idx] = False
                    m.flat[idx[0]] = True
                    break
    val = [np.where(m, s, 0) for s, m in zip(train, val_masks, strict=True)]
    train = [np.where(m, 0, s) for s, m in zip(train, val_masks, strict=True)]
    return train, val


def class_weights(strokes: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Inverse-frequency weights of classes ``0..k`` (0 for class 0 and absent classes), mean 1."""
    counts = np.zeros(k + 1, np.float64)
    for s in strokes:
        counts += np.bincount(np.asarray(s).ravel(), minlength=k + 1)[: k + 1]
    w = np.zeros(k + 1, np.float64)
    present = counts[1:] > 0
    w[1:][present] = 1.0 / counts[1:][present]
    w[1:][present] /= w[1:][present].mean()
    return np.clip(w, 0.0, 10.0).astype(np.float32)


# -- loss -----------------------------------------------------------------------------


def masked_loss(logits, target, weights, dice_weight: float = 1.0):
    """Weighted cross-entropy + soft Dice on labelled pixels (``target > 0``) only.

    Parameters
    ----------
    logits : Tensor (B, K + 1, H, W)
    target : LongTensor (B, H, W)
        0 = not labelled, 1..K classes.
    weights : Tensor (K + 1,)
        Class weights (entry 0 unused).
    """
    import torch
    import torch.nn.functional as F

    labeled = target > 0
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, target, weight=weights, ignore_index=0)
    if dice_weight <= 0:
        return ce
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    m = labeled.unsqueeze(1).to(probs.dtype)
    inter = (probs * onehot * m).sum(dim=(0, 2, 3))[1:]
    denom = ((probs + onehot) * m).sum(dim=(0, 2, 3))[1:]
    present = onehot[:, 1:].sum(dim=(0, 2, 3)) > 0
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * dice[present].mean()


# -- sampling and augmentation -------------------------------------------------------------


class _PatchSampler:
    """Patches centred near labelled training pixels, the centre's class drawn uniformly."""

    def __init__(self, images: list[np.ndarray], targets: list[np.ndarray], patch: int, rng: np.random.Generator):
        self.patch = patch
        self.rng = rng
        self.images, self.targets = [], []
        for x, t in zip(images, targets, strict=True):
            _, h, w = x.shape
            ph, pw = max(0, patch - h), max(0, patch - w)
            if ph or pw:
                mode = "reflect" if min(h, w) > 1 and ph < h and pw < w else "edge"
                x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
                t = np.pad(t, ((0, ph), (0, pw)))
            self.images.append(np.ascontiguousarray(x, np.float32))
            self.targets.append(np.ascontiguousarray(t, np.int64))
        self.by_class: dict[int, np.ndarray] = {}
        for k in sorted({int(v) for t in self.targets for v in np.unique(t) if v > 0}):
            coords = [np.column_stack([np.full(len(r), i), r, c])
                      for i, t in enumerate(self.targets) for r, c in [np.nonzero(t == k)]]
            self.by_class[k] = np.concatenate(coords)
        self.classes = list(self.by_class)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        p, rng = self.patch, self.rng
        xs, ts = [], []
        for _ in range(n):
            k = self.classes[rng.integers(len(self.classes))]
            i, r, c = self.by_class[k][rng.integers(len(self.by_class[k]))]
            x, t = self.images[i], self.targets[i]
            h, w = t.shape
            jitter = rng.integers(-p // 4, p // 4 + 1, size=2)
            r0 = int(np.clip(r - p // 2 + jitter[0], 0, h - p))
            c0 = int(np.clip(c - p // 2 + jitter[1], 0, w - p))
            xs.append(x[:, r0:r0 + p, c0:c0 + p])
            ts.append(t[r0:r0 + p, c0:c0 + p])
        return np.stack(xs), np.stack(ts)


def augment_batch(x: np.ndarray, t: np.ndarray, rng: np.random.Generator, intensity: bool = True):
    """Random flips, 90° rotations (pixels and labels alike) and gamma/gain/offset (pixels)."""
    x, t = x.copy(), t.copy()
    for b in range(len(x)):
        k = int(rng.integers(4))
        xb, tb = np.rot90(x[b], k, axes=(1, 2)), np.rot90(t[b], k)
        if rng.random() < 0.5:
            xb, tb = xb[:, :, ::-1], tb[:, ::-1]
        if intensity:
            gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
            gain, offset = float(rng.uniform(0.8, 1.2)), float(rng.uniform(-0.1, 0.1))
            xb = np.sign(xb) * np.abs(xb) ** gamma * gain + offset
        x[b], t[b] = xb, tb
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(t)


# -- prediction --------------------------------------------------------------------------


def check_channels(image: np.ndarray, in_channels: int) -> None:
    """Raise a clear :class:`InputError` when a plane's channel count is not the model's."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise InputError(f"Expected a 2D image plane (H, W) or (H, W, C), got shape {arr.shape}.")
    c = 1 if arr.ndim == 2 else arr.shape[-1]
    if c != in_channels and arr.ndim == 3 and c > 4:
        raise InputError(
            f"Expected one image plane (H, W) or (H, W, C) for a {in_channels}-channel U-Net, got shape "
            f"{arr.shape}; predict a stack one plane at a time."
        )
    if c != in_channels:
        raise InputError(
            f"The U-Net was trained on images with {in_channels} channel(s), but this image has {c}; "
            "use an image like the ones it was trained on."
        )


def predict_plane_job(trained: TrainedUnet, image: np.ndarray, *, tile_size: int = 512,
                      overlap: int = 64) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Labels (H, W) int32 and probabilities (K, H, W) float32 of one plane.

    Labels are ``1..K`` for a stroke-trained model (channel 0 "unlabelled" is
    left out), ``0..classes-1`` for other U-Nets.
    """
    import torch

    from napari_segsuite.models.unet import prepare_unet_input

    check_channels(image, trained.in_channels)
    x = prepare_unet_input(np.asarray(image), trained.config)
    logits = yield from logits_job(trained.model, x, 2 ** trained.config["encoder_depth"], trained.device,
                                   tile_size=tile_size, overlap=overlap)
    first = 1 if trained.unlabeled_channel else 0
    probs = torch.softmax(torch.from_numpy(logits[first:]), dim=0).numpy()
    labels = (np.argmax(probs, axis=0) + first).astype(np.int32)
    return labels, probs.astype(np.float32)


def predict_planes_job(trained: TrainedUnet, planes: Sequence[np.ndarray], *, tile_size: int = 512,
                       overlap: int = 64, keep_proba: bool = False) -> Generator[Progress, None, list]:
    """Predict several planes; returns a list of (labels, probabilities or None)."""
    for plane in planes:
        check_channels(plane, trained.in_channels)
    out = []
    n = len(planes)
    for i, plane in enumerate(planes):
        yield Progress(i, n, f"Predicting plane {i + 1}/{n}")
        labels, probs = yield from predict_plane_job(trained, plane, tile_size=tile_size, overlap=overlap)
        out.append((labels, probs if keep_proba else None))
    yield Progress(n, n, f"Predicted {n} plane(s)")
    return out


# -- training ----------------------------------------------------------------------------


def _seed_all(seed: int) -> None:
    import random

    import torch

    random.seed(seed)  # numpy draws come from a seeded Generator of their own
    torch.manual_seed(seed)


def _lr_at(step: int, total: int, base: float) -> float:
    warm = max(1, min(20, total // 10))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


def _validate(model, xs, vals, weights_t, dice_weight, multiple, device) -> tuple[float, float]:
    """Validation loss and accuracy on held-out stroke pixels (full planes, eval mode)."""
    import torch

    losses, correct, count = [], 0, 0
    for x, v in zip(xs, vals, strict=True):
        if not v.any():
            continue
        # Only the part of the plane around the held-out strokes (plus context) is run.
        rows, cols = np.nonzero(np.any(v > 0, axis=1))[0], np.nonzero(np.any(v > 0, axis=0))[0]
        margin = 2 * multiple
        r0, r1 = max(0, rows[0] - margin), min(v.shape[0], rows[-1] + 1 + margin)
        c0, c1 = max(0, cols[0] - margin), min(v.shape[1], cols[-1] + 1 + margin)
        x, v = x[:, r0:r1, c0:c1], v[r0:r1, c0:c1]
        logits = run_sync(logits_job(model, x, multiple, device))
        lt = torch.from_numpy(logits).unsqueeze(0)
        vt = torch.from_numpy(v.astype(np.int64)).unsqueeze(0)
        n = int(np.count_nonzero(v))
        losses.append((float(masked_loss(lt, vt, weights_t, dice_weight)), n))
        pred = np.argmax(logits[1:], axis=0) + 1
        correct += int(np.count_nonzero((pred == v) & (v > 0)))
        count += n
    if not count:
        return math.nan, math.nan
    loss = sum(value * n for value, n in losses) / count
    return loss, correct / count


def train_unet_job(
    images: Sequence[np.ndarray] | np.ndarray,
    strokes: Sequence[np.ndarray] | np.ndarray,
    options: TrainingOptions | None = None,
    *,
    class_names: dict[int, str] | Sequence[str] | None = None,
    init_model: TrainedUnet | None = None,
    state: TrainingState | None = None,
) -> Generator[Progress, None, TrainedUnet]:
    """Train a U-Net on sparse strokes (a job: yields Progress, returns a TrainedUnet).

    Parameters
    ----------
    images : ndarray or list of ndarray
        One plane (H, W) / (H, W, C) or a list of planes.
    strokes : ndarray or list of ndarray
        The strokes of each plane (H, W): 0 not labelled, 1..K classes.
    options : TrainingOptions, optional
    class_names : dict or list, optional
        Class value -> name (a list names classes 1, 2, ...); defaults to
        ``class_<k>`` or the names of ``init_model``.
    init_model : TrainedUnet, optional
        Continue training this model (its architecture, classes and
        normalisation; a copy is trained, the given model is not changed).
    state : TrainingState, optional
        Updated in place as training goes (history, best weights); pass one to
        keep the best model when the job is stopped early.

    Yields
    ------
    Progress
        One per step; ``partial`` is the step's history row (``step``,
        ``train_loss`` and, on validation steps, ``val_loss`` and ``val_accuracy``).

    Returns
    -------
    TrainedUnet
        The weights with the lowest validation loss (the last ones without validation).
    """
    import torch

    from napari_segsuite.core.device import resolve_device
    from napari_segsuite.models.offline import guard_llvm_clash
    from napari_segsuite.models.unet import build_unet, make_unet_config, prepare_unet_input

    opts = options or TrainingOptions()
    opts.check()
    state = state if state is not None else TrainingState()
    if isinstance(images, np.ndarray) or isinstance(strokes, np.ndarray):
        pairs = pairs_from_arrays(images, strokes)
    else:
        pairs = pairs_from_arrays(list(images), list(strokes))
    k, n_channels = check_training_data(pairs, init_model)
    guard_llvm_clash()
    device = resolve_device(opts.device)
    yield Progress(0, opts.steps, "Preparing the training data")
    t_start = time.perf_counter()
    _seed_all(opts.seed)
    rng = np.random.default_rng(opts.seed)

    # Model and config.
    if init_model is not None:
        config = copy.deepcopy(init_model.config)
        model = build_unet(config)
        model.load_state_dict({n: p.detach().cpu() for n, p in init_model.model.state_dict().items()})
        if class_names is not None:
            config["class_names"] = _names(class_names, k)
        history = list(init_model.history)
        step0 = int(history[-1]["step"]) if history else 0
    else:
        config = make_unet_config(
            encoder_name=opts.encoder_name, encoder_depth=opts.encoder_depth,
            decoder_channels=tuple(opts.decoder_channels), in_channels=n_channels, classes=k + 1,
            class_names=_names(class_names, k), normalization=opts.normalization,
            unlabeled_channel=True,
        )
        model = build_unet(config)
        history, step0 = [], 0
    model.to(device).train()
    multiple = 2 ** config["encoder_depth"]
    if opts.patch_size % multiple:
        raise InputError(f"The patch size must be a multiple of {multiple} for this model, not {opts.patch_size}.")

    xs = [prepare_unet_input(plane, config) for plane, _ in pairs]
    train_t, val_t = split_strokes([s for _, s in pairs], opts.val_fraction, rng)
    has_val = any(v.any() for v in val_t)
    weights = class_weights(train_t, k) if opts.class_weighting else np.r_[0.0, np.ones(k)].astype(np.float32)
    weights_t = torch.from_numpy(weights).to(device)
    sampler = _PatchSampler(xs, train_t, opts.patch_size, rng)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.learning_rate, weight_decay=opts.weight_decay)
    intensity = config["normalization"]["mode"] == "percentile"

    state.config = config
    state.history = history
    state.labeled_pixels = int(sum(np.count_nonzero(s) for _, s in pairs))
    state.best_state, state.best_val, state.best_step, state.finished = None, math.inf, None, False
    if init_model is not None and not has_val:
        state.best_state = _cpu_state(model)

    recent: list[float] = []
    for i in range(opts.steps):
        lr = _lr_at(i, opts.steps, opts.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr
        xb, tb = sampler.batch(opts.batch_size)
        if opts.augment:
            xb, tb = augment_batch(xb, tb, rng, intensity=intensity)
        x_t, t_t = torch.from_numpy(xb).to(device), torch.from_numpy(tb).to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():  # whatever the calling thread's grad mode is
            loss = masked_loss(model(x_t), t_t, weights_t, opts.dice_weight)
            loss.backward()
        optimizer.step()
        value = float(loss.detach().cpu())
        if not math.isfinite(value):
            raise InputError("Training diverged (the loss is not a number); lower the learning rate.")
        recent.append(value)
        step = step0 + i + 1
        row: dict[str, Any] = {"step": step, "train_loss": value}
        last = i == opts.steps - 1
        if has_val and ((i + 1) % opts.val_every == 0 or last):
            val_loss, val_acc = _validate(model, xs, val_t, weights_t, opts.dice_weight, multiple, device)
            model.train()
            row.update(val_loss=val_loss, val_accuracy=val_acc, train_loss_mean=float(np.mean(recent)))
            recent = []
            if val_loss < state.best_val:
                state.best_val, state.best_step = val_loss, step
                state.best_state = _cpu_state(model)
        elif not has_val and ((i + 1) % opts.val_every == 0 or last):
            state.best_state, state.best_step = _cpu_state(model), step
        state.history.append(row)
        state.step = step
        state.seconds = time.perf_counter() - t_start
        msg = f"Step {i + 1}/{opts.steps}: loss {value:.3f}"
        if "val_loss" in row:
            msg += f", validation {row['val_loss']:.3f} (accuracy {row['val_accuracy']:.1%})"
        yield Progress(i + 1, opts.steps, msg, partial=row)
    state.finished = True
    best = state.best_model(device)
    assert best is not None
    return best


def _cpu_state(model) -> dict:
    return {n: t.detach().to("cpu", copy=True) for n, t in model.state_dict().items()}


def _names(class_names, k: int) -> dict[int, str]:
    given: dict[int, str] = {}
    if isinstance(class_names, dict):
        given = {int(a): str(b) for a, b in class_names.items()}
    elif class_names is not None:
        given = {i + 1: str(n) for i, n in enumerate(class_names)}
    return {0: UNLABELED_NAME, **{i: given.get(i, f"class_{i}") for i in range(1, k + 1)}}


def train_unet(
    image: Any,
    labels: Any,
    *,
    class_names: dict[int, str] | Sequence[str] | None = None,
    init_model: TrainedUnet | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    **options: Any,
) -> TrainedUnet:
    """Train a U-Net on an image and sparse strokes, synchronously (see :func:`train_unet_job`)."""
    opts = TrainingOptions.from_kwargs(**options)
    return run_sync(train_unet_job(image, labels, opts, class_names=class_names, init_model=init_model),
                    on_progress)
