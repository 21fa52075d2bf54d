"""Training data for instance models: planes, label images, classes, split and evaluation.

The user's annotations are label images (0 background, one id per object) with
an optional class per label (``label_classes``: ``{label id: class}``, a class
being an id or a name) and class names. :func:`prepare_instance_data` checks
them and turns them into what every trainer needs: RGB uint8 planes (the same
:func:`~napari_segsuite.core.image.prepare_rgb_uint8` the instance task uses at
prediction time), int32 label images, and contiguous model classes
``0..K-1`` with their names.

:func:`dataset_scores` is the validation of every trainer: mask AP50 and
AP@[.5:.95] over a set of images with the project's own evaluation
(:mod:`napari_segsuite.core.metrics`, pycocotools' definition). The images are
laid side by side into one mosaic, which pools the detections of all images
per class exactly like COCO's dataset-level evaluation (segments of different
images never overlap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError


@dataclass
class InstanceData:
    """Checked training data.

    Attributes
    ----------
    planes : list of ndarray
        (H, W, 3) uint8 RGB planes.
    labels : list of ndarray
        (H, W) int32 label images.
    classes : list of dict
        Per plane, ``{label id: model class 0..K-1}``.
    class_names : dict of int to str
        Model class -> name.
    """

    planes: list[np.ndarray]
    labels: list[np.ndarray]
    classes: list[dict[int, int]]
    class_names: dict[int, str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.planes)

    @property
    def n_objects(self) -> int:
        """Objects in all planes."""
        return int(sum(len(c) for c in self.classes))

    def subset(self, indices: Sequence[int]) -> InstanceData:
        """The planes at ``indices``."""
        return InstanceData(
            [self.planes[i] for i in indices], [self.labels[i] for i in indices],
            [self.classes[i] for i in indices], dict(self.class_names),
        )


def _as_pairs(images: Any, labels: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(plane, label plane) pairs from arrays, stacks or lists."""
    if isinstance(images, (list, tuple)) or isinstance(labels, (list, tuple)):
        if not isinstance(images, (list, tuple)) or not isinstance(labels, (list, tuple)):
            raise InputError("Give images and labels both as lists (one label image per image) or both as arrays.")
        if len(images) != len(labels):
            raise InputError(f"There are {len(images)} images but {len(labels)} label images; give one per image.")
        out = []
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            try:
                out.extend(_as_pairs(img, lab))
            except InputError as exc:
                raise InputError(f"Image {i + 1}: {exc}") from None
        return out
    img, lab = np.asarray(images), np.asarray(labels)
    if lab.ndim < 2:
        raise InputError(f"A label image must be at least 2D, got shape {lab.shape}.")
    if img.shape == lab.shape:
        channels = False
    elif img.ndim == lab.ndim + 1 and img.shape[:-1] == lab.shape and img.shape[-1] in (1, 2, 3, 4):
        channels = True
    else:
        raise InputError(
            f"The labels (shape {lab.shape}) do not match the image (shape {img.shape}); a label image needs "
            "the image's shape without its channel axis."
        )
    if lab.ndim == 2:
        return [(img, lab)]
    flat_lab = lab.reshape(-1, *lab.shape[-2:])
    flat_img = img.reshape(-1, *img.shape[-3 if channels else -2:])
    return [(flat_img[i], flat_lab[i]) for i in range(len(flat_lab))]


def _label_plane(lab: np.ndarray) -> np.ndarray:
    if lab.dtype == bool:
        return lab.astype(np.int32)
    if not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.mod(lab, 1) == 0):
            lab = lab.astype(np.int64)
        else:
            raise InputError(f"Label images must hold integer ids, not {lab.dtype}.")
    if lab.size and lab.min() < 0:
        raise InputError("Label ids must be 0 (background) or positive.")
    if lab.size and lab.max() > np.iinfo(np.int32).max:
        raise InputError("Label ids above 2**31 - 1 are not supported; relabel the layer.")
    return lab.astype(np.int32, copy=False)


def _names_dict(class_names) -> dict[Any, str]:
    if class_names is None:
        return {}
    if isinstance(class_names, Mapping):
        return {k: str(v) for k, v in class_names.items()}
    return {i: str(n) for i, n in enumerate(class_names)}


def prepare_instance_data(
    images: Any,
    labels: Any,
    *,
    label_classes: Mapping | Sequence[Mapping] | None = None,
    class_names: Mapping | Sequence[str] | None = None,
    known_names: Mapping[int, str] | None = None,
) -> InstanceData:
    """Check the user's annotations and turn them into training data.

    Parameters
    ----------
    images : ndarray or list of ndarray
        Planes (H, W) / (H, W, C), stacks of them, or a list of such.
    labels : ndarray or list of ndarray
        Label images of the images' spatial shapes (0 background).
    label_classes : mapping or list of mappings, optional
        ``{label id: class}`` (one mapping for all images, or one per image
        given as a list); a class is an id or a name. None: one class.
    class_names : mapping or list, optional
        Class id -> name (a list names ids 0, 1, ...). Every named class must
        have objects.
    known_names : mapping, optional
        The class names of a model being trained further: its classes keep
        their ids, new classes come after them.

    Returns
    -------
    InstanceData

    Raises
    ------
    InputError
        Shapes that do not match, non-integer labels, no object at all, a class
        map naming labels or classes that have no object, objects without a class.
    """
    from napari_segsuite.core.image import prepare_rgb_uint8

    pairs = _as_pairs(images, labels)
    if not pairs:
        raise InputError("There is no image to train on.")
    per_image = isinstance(label_classes, (list, tuple))
    if per_image and len(label_classes) != len(pairs):
        raise InputError(
            f"label_classes has {len(label_classes)} mappings for {len(pairs)} planes; give one per plane "
            "or one for all."
        )
    names_in = _names_dict(class_names)
    planes, label_planes, raw_classes = [], [], []
    unused_labels: set[int] = set()
    for i, (img, lab) in enumerate(pairs):
        lab = _label_plane(np.asarray(lab))
        if lab.ndim != 2:
            raise InputError(f"Plane {i + 1}: a label plane must be 2D, got shape {lab.shape}.")
        img = np.asarray(img)
        if img.shape[:2] != lab.shape:
            raise InputError(f"Plane {i + 1}: the image {img.shape} and its labels {lab.shape} differ in shape.")
        planes.append(prepare_rgb_uint8(img))
        label_planes.append(lab)
        ids = [int(v) for v in np.unique(lab) if v]
        mapping = label_classes[i] if per_image else label_classes
        if mapping is None:
            raw_classes.append(dict.fromkeys(ids, 0))
            continue
        mapping = {int(k): v for k, v in dict(mapping).items()}
        missing = [j for j in ids if j not in mapping]
        if missing:
            raise InputError(
                f"Plane {i + 1}: label(s) {', '.join(map(str, missing[:5]))} have no class in label_classes; "
                "give every object a class (or no label_classes for one class)."
            )
        raw_classes.append({j: mapping[j] for j in ids})
        if not per_image:
            unused_labels |= set(mapping)
        else:
            extra = sorted(set(mapping) - set(ids))
            if extra:
                raise InputError(
                    f"Plane {i + 1}: label_classes names label(s) {', '.join(map(str, extra[:5]))}, which are not "
                    "in its label image."
                )
    if not per_image and label_classes is not None:
        present = {j for c in raw_classes for j in c}
        extra = sorted(unused_labels - present)
        if extra:
            raise InputError(
                f"label_classes names label(s) {', '.join(map(str, extra[:5]))}, which are in none of the label "
                "images. Check that the class map belongs to these labels."
            )
    if not any(raw_classes):
        raise InputError(
            "The label images hold no object (every pixel is 0). Annotate some objects first."
        )

    # Classes given as ids or names -> names -> model ids 0..K-1.
    def name_of(c) -> str:
        if isinstance(c, str):
            return c
        c = int(c)
        if c in names_in:
            return names_in[c]
        if label_classes is None and not names_in:
            return "object"
        return names_in.get(str(c), f"class_{c}")

    if label_classes is None and names_in:
        if len(names_in) != 1:
            raise InputError(
                f"{len(names_in)} class names were given but no label_classes to say which object is which "
                "class; give label_classes (label id -> class)."
            )
        only = next(iter(names_in.values()))
        used_names = [only]
        raw_classes = [dict.fromkeys(c, only) for c in raw_classes]
    else:
        used_names = []
        for c in raw_classes:
            for v in c.values():
                n = name_of(v)
                if n not in used_names:
                    used_names.append(n)
        raw_classes = [{j: name_of(v) for j, v in c.items()} for c in raw_classes]
    named_without_objects = [n for n in names_in.values() if n not in used_names]
    if named_without_objects:
        raise InputError(
            f"The class names name {', '.join(repr(n) for n in named_without_objects)}, but no object has that "
            "class. Remove the name or annotate objects of that class."
        )
    order: list[str] = [str(n) for _, n in sorted((known_names or {}).items())]
    for n in sorted(used_names, key=lambda n: _sort_key(n, names_in)):
        if n not in order:
            order.append(n)
    index = {n: k for k, n in enumerate(order)}
    classes = [{j: index[n] for j, n in c.items()} for c in raw_classes]
    return InstanceData(planes, label_planes, classes, dict(enumerate(order)))


def _sort_key(name: str, names_in: Mapping) -> tuple:
    for k, v in names_in.items():
        if v == name:
            try:
                return (0, int(k), name)
            except (TypeError, ValueError):
                return (0, 0, name)
    return (1, 0, name)


def split_indices(data: InstanceData, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int], str]:
    """Training and held-out plane indices, and a note for the user.

    Planes with objects are split at random (seeded); at least one plane is
    held out when there are two or more with objects. With a single annotated
    plane, validation uses the training plane (the note says so). Planes
    without objects are trained on (as negatives) and never held out.
    """
    if not 0 <= val_fraction < 1:
        raise InputError(f"The validation fraction must be in [0, 1), not {val_fraction}.")
    with_objects = [i for i, c in enumerate(data.classes) if c]
    empty = [i for i, c in enumerate(data.classes) if not c]
    if val_fraction == 0 or len(with_objects) < 2:
        note = (
            "Validation runs on the training images (no held-out images)"
            if val_fraction == 0 else "Only one annotated image: validation runs on it (no held-out image)"
        )
        return list(range(len(data))), list(with_objects), note
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(with_objects))
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    val = sorted(int(i) for i in order[:n_val])
    train = sorted([int(i) for i in order[n_val:]] + empty)
    return train, val, f"{len(train)} training and {len(val)} held-out image(s)"


# -- evaluation --------------------------------------------------------------------------


def dataset_scores(
    predictions: Sequence[tuple[np.ndarray, Mapping[int, int], Mapping[int, float]]],
    truths: Sequence[tuple[np.ndarray, Mapping[int, int]]],
) -> dict[str, float]:
    """Mask AP50 and AP@[.5:.95] over several images (COCO's dataset-level pooling).

    Parameters
    ----------
    predictions : list of (labels, {id: class}, {id: score})
    truths : list of (labels, {id: class})

    Returns
    -------
    dict
        ``ap50``, ``ap``, ``precision``, ``recall``, ``n_pred``, ``n_gt``.
    """
    from napari_segsuite.core.metrics import evaluate

    if len(predictions) != len(truths) or not truths:
        raise InputError("Give one prediction per ground-truth image (and at least one image).")
    height = max(t[0].shape[0] for t in truths)
    pred_parts, gt_parts = [], []
    p_cls, g_cls, p_score = {}, {}, {}
    p_off = g_off = 0
    for (pl, pc, ps), (gl, gc) in zip(predictions, truths, strict=True):
        if pl.shape != gl.shape:
            raise InputError(f"A prediction {pl.shape} and its ground truth {gl.shape} differ in shape.")
        pad = ((0, height - gl.shape[0]), (0, 1))  # one background column keeps images apart
        pl64, gl64 = pl.astype(np.int64), gl.astype(np.int64)
        pred_parts.append(np.pad(np.where(pl64 > 0, pl64 + p_off, 0), pad))
        gt_parts.append(np.pad(np.where(gl64 > 0, gl64 + g_off, 0), pad))
        p_cls.update({int(k) + p_off: int(v) for k, v in pc.items()})
        p_score.update({int(k) + p_off: float(v) for k, v in ps.items()})
        g_cls.update({int(k) + g_off: int(v) for k, v in gc.items()})
        p_off += int(pl64.max(initial=0))
        g_off += int(gl64.max(initial=0))
    pred, gt = np.concatenate(pred_parts, axis=1), np.concatenate(gt_parts, axis=1)
    # Class 0 is a real class here: shift by one so no id lacks a class on either side.
    result = evaluate(
        pred, gt,
        pred_classes={k: v + 1 for k, v in p_cls.items()} or None,
        gt_classes={k: v + 1 for k, v in g_cls.items()} or None,
        pred_scores=p_score or None,
    )
    s = result.summary
    if not p_cls and g_cls:  # nothing predicted: the class-agnostic fallback would still give 0
        s = {**s, "ap50": 0.0, "ap": 0.0}
    return {k: float(s[k]) for k in ("ap50", "ap", "precision", "recall", "n_pred", "n_gt")}


def predict_for_scores(runner, planes: Sequence[np.ndarray], *, conf: float = 0.05, max_det: int = 100):
    """Predictions of ``runner`` on RGB planes in the form :func:`dataset_scores` takes (a job)."""
    from napari_segsuite.core.progress import Progress
    from napari_segsuite.tasks.instance import InstanceParams, segment_plane_job

    params = InstanceParams(conf=conf, iou=0.6, max_det=max_det)
    out = []
    for k, plane in enumerate(planes):
        yield Progress(k, len(planes), f"Validating {k + 1}/{len(planes)}")
        result = yield from segment_plane_job(plane, runner, params)
        table = result.table
        ids_col = "label" if "label" in table.columns else "label_id"
        ids = table[ids_col].astype(int).tolist()
        out.append((
            result.labels,
            dict(zip(ids, table["class_id"].astype(int).tolist(), strict=True)),
            dict(zip(ids, table["score"].astype(float).tolist(), strict=True)),
        ))
    return out


def truths_of(data: InstanceData, indices: Sequence[int]):
    """Ground truth of the planes at ``indices`` in the form :func:`dataset_scores` takes."""
    return [(data.labels[i], data.classes[i]) for i in indices]
