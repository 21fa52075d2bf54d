"""Panoptic segmentation as a job: one plane in, segments with classes out.

Every pixel gets one segment: a thing instance (one segment per object) or a
stuff region (one segment per class, when the class is fused). The job runs a
Mask2Former panoptic checkpoint through transformers'
``post_process_panoptic_segmentation`` and returns a :class:`PanopticResult`.

Things and stuff
----------------
transformers' Mask2Former folders do not say which classes are "stuff". Here,
the classes in ``label_ids_to_fuse`` are the stuff classes (their segments are
merged into one region per class, which is what a stuff class is) and every
other class is a thing. When ``label_ids_to_fuse`` is None, the stuff classes
of the known layouts are used: COCO panoptic (133 classes: 80 things, then 53
stuff) and Cityscapes (19 classes: 11 stuff, then 8 things); other checkpoints
get none (every class a thing).

Label encodings
---------------
By default the segments are numbered 1, 2, ... in transformers' order. With a
``label_divisor`` the id of a segment is ``class_id * label_divisor + k``, where
``k = 1, 2, ...`` numbers the segments of that class (stuff regions too, so
that no segment gets id 0, the background): ``class_id = id // label_divisor``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import prepare_rgb_uint8
from napari_segsuite.core.labels import LABEL_DTYPE
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Task

TASK = Task.PANOPTIC
#: Columns of :attr:`PanopticResult.table`.
TABLE_COLUMNS = ("label", "class_id", "class_name", "is_thing", "score", "area")


@dataclass
class PanopticParams:
    """The parameters of transformers' ``post_process_panoptic_segmentation``, plus the encoding.

    The defaults are that function's own in transformers 5 (threshold 0.5, mask
    threshold 0.5, overlap 0.8).
    """

    threshold: float = 0.5
    mask_threshold: float = 0.5
    overlap_mask_area_threshold: float = 0.8
    label_ids_to_fuse: tuple[int, ...] | None = None
    label_divisor: int | None = None

    def check(self) -> None:
        """Raise a user-facing error for values out of range."""
        for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise InputError(f"{name} must be between 0 and 1, got {value}.")
        if self.label_divisor is not None and int(self.label_divisor) < 2:
            raise InputError(f"label_divisor must be at least 2, got {self.label_divisor}.")


@dataclass
class PanopticResult:
    """A panoptic segmentation of one plane.

    Attributes
    ----------
    labels : ndarray (H, W) int32
        Segment ids (0: no segment), plain or ``label_divisor``-encoded.
    table : pandas.DataFrame
        One row per segment: ``label``, ``class_id``, ``class_name``,
        ``is_thing``, ``score``, ``area``.
    class_names : dict
        Class id -> name of the model.
    label_divisor : int or None
        The encoding of ``labels`` (None: plain ids).
    parameters : dict
        The parameters used (provenance).
    """

    labels: np.ndarray
    table: Any
    class_names: dict[int, str] = field(default_factory=dict)
    label_divisor: int | None = None
    parameters: dict = field(default_factory=dict)

    @property
    def provenance(self) -> dict:
        """What made the result: task, model and parameters (plain data for ``layer.metadata``)."""
        return {"task": TASK, "model": self.parameters.get("model"), "parameters": dict(self.parameters)}

    @property
    def segments(self) -> list[dict]:
        """The table as a list of dicts."""
        return self.table.to_dict("records")

    def features(self) -> dict[int, dict]:
        """``{segment id: row}`` for ``layers.write_plane(extra_features=...)``."""
        return {
            int(r["label"]): {k: r[k] for k in TABLE_COLUMNS if k not in ("area",)}
            for r in self.segments
        }

    def semantic_labels(self) -> np.ndarray:
        """Class map: ``class_id + 1`` per pixel (so class 0 stays visible), 0 where no segment."""
        lut = {int(r["label"]): int(r["class_id"]) + 1 for r in self.segments}
        return _apply_lut(self.labels, lut)

    def semantic_features(self) -> dict[int, dict]:
        """``{class_id + 1: {"class_id", "class_name"}}`` for the semantic layer's features."""
        out = {}
        for r in self.segments:
            out[int(r["class_id"]) + 1] = {"class_id": int(r["class_id"]), "class_name": r["class_name"]}
        return out

    def instance_labels(self) -> tuple[np.ndarray, dict[int, dict]]:
        """Things only, numbered 1.. in segment order, and their feature rows."""
        things = [r for r in self.segments if r["is_thing"]]
        lut = {int(r["label"]): k for k, r in enumerate(things, start=1)}
        feats = {
            k: {"label": int(r["label"]), "class_id": int(r["class_id"]),
                "class_name": r["class_name"], "score": float(r["score"])}
            for k, r in zip(lut.values(), things, strict=True)
        }
        return _apply_lut(self.labels, lut), feats


def _apply_lut(labels: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    values = np.array([lut.get(int(i), 0) for i in ids], dtype=LABEL_DTYPE)
    return values[inverse.reshape(-1)].reshape(labels.shape)


def default_stuff_ids(num_labels: int) -> tuple[int, ...]:
    """The stuff classes of the known Mask2Former layouts (see the module documentation)."""
    if num_labels == 133:  # COCO panoptic: 80 things, 53 stuff
        return tuple(range(80, 133))
    if num_labels == 19:  # Cityscapes: road ... sky are stuff, person ... bicycle things
        return tuple(range(11))
    return ()


def encode_label_divisor(
    segments: np.ndarray, rows: list[dict], label_divisor: int
) -> tuple[np.ndarray, dict[int, int]]:
    """Renumber segments as ``class_id * label_divisor + k`` (k = 1, 2, ... per class).

    Returns
    -------
    labels : ndarray int32
    mapping : dict
        Old segment id -> new id.

    Raises
    ------
    InputError
        When a class has ``label_divisor`` segments or more, or an id would not
        fit in int32 (napari Labels layers hold int32 here).
    """
    divisor = int(label_divisor)
    counts: dict[int, int] = {}
    mapping = {}
    for r in rows:
        c = int(r["label_id"])
        counts[c] = counts.get(c, 0) + 1
        if counts[c] >= divisor:
            raise InputError(
                f"Class {c} has {counts[c]} segments or more, which does not fit label_divisor={divisor}; "
                "use a larger label_divisor."
            )
        mapping[int(r["id"])] = c * divisor + counts[c]
    if mapping and max(mapping.values()) > np.iinfo(LABEL_DTYPE).max:
        raise InputError(
            f"label_divisor={divisor} gives label ids up to {max(mapping.values())}, beyond int32 "
            f"({np.iinfo(LABEL_DTYPE).max}); use a smaller label_divisor."
        )
    return _apply_lut(segments, mapping), mapping


def build_result(
    segments: np.ndarray,
    rows: list[dict],
    class_names: dict[int, str],
    params: PanopticParams,
    stuff_ids: Iterable[int],
) -> PanopticResult:
    """Turn transformers' segmentation and ``segments_info`` into a :class:`PanopticResult`."""
    import pandas as pd

    stuff = {int(i) for i in stuff_ids}
    labels = np.asarray(segments).astype(LABEL_DTYPE, copy=False)
    mapping = {int(r["id"]): int(r["id"]) for r in rows}
    if params.label_divisor:
        labels, mapping = encode_label_divisor(labels, rows, params.label_divisor)
    ids, counts = np.unique(labels, return_counts=True)
    area = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    table = pd.DataFrame(
        [
            {
                "label": mapping[int(r["id"])],
                "class_id": int(r["label_id"]),
                "class_name": class_names.get(int(r["label_id"]), str(r["label_id"])),
                "is_thing": int(r["label_id"]) not in stuff,
                "score": float(r["score"]),
                "area": int(area.get(mapping[int(r["id"])], 0)),
            }
            for r in rows
        ],
        columns=list(TABLE_COLUMNS),
    )
    parameters = {
        "threshold": float(params.threshold),
        "mask_threshold": float(params.mask_threshold),
        "overlap_mask_area_threshold": float(params.overlap_mask_area_threshold),
        "label_ids_to_fuse": sorted(stuff),
        "label_divisor": params.label_divisor,
    }
    return PanopticResult(labels, table, dict(class_names), params.label_divisor, parameters)


def panoptic_job(
    model,
    plane: np.ndarray,
    params: PanopticParams | None = None,
    *,
    device: str = "auto",
    channels_last: bool | None = None,
    store=None,
) -> Generator[Progress, None, PanopticResult]:
    """Panoptic segmentation of one 2D plane, as a job generator.

    Parameters
    ----------
    model : str, path or Runner
        A registry name, a local Mask2Former folder or a loaded runner.
    plane : ndarray
        (H, W) or (H, W, C) of any numeric dtype.
    params : PanopticParams, optional
    device : str
        Used when ``model`` is not loaded yet.
    channels_last : bool, optional
        Whether the last axis of ``plane`` holds channels (guessed from ndim).

    Returns
    -------
    PanopticResult
    """
    from napari_segsuite.models.base import Runner, load_model

    params = params or PanopticParams()
    params.check()
    rgb = prepare_rgb_uint8(plane, channels_last=channels_last)
    if isinstance(model, Runner):
        runner = model
    else:
        yield Progress(0, 3, "Loading the model")
        runner = load_model(model, device, store=store)
    runner.require(TASK)
    fuse = params.label_ids_to_fuse
    if fuse is None:
        fuse = default_stuff_ids(len(runner.class_names))
    yield Progress(1, 3, f"Segmenting with {runner.name}")
    segments, rows = runner.predict_panoptic(
        rgb,
        threshold=params.threshold,
        mask_threshold=params.mask_threshold,
        overlap_mask_area_threshold=params.overlap_mask_area_threshold,
        label_ids_to_fuse=fuse,
    )
    yield Progress(2, 3, f"{len(rows)} segments")
    result = build_result(segments, rows, runner.class_names, params, fuse)
    result.parameters["model"] = runner.name
    return result


# -- the second way: fusing a semantic and an instance prediction ----------------------


def fuse_semantic_instance(
    semantic: np.ndarray,
    instances: np.ndarray,
    instance_classes,
    instance_scores=None,
    *,
    stuff_classes: Iterable[int] | None = None,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    min_stuff_area: int = 64,
    class_names: dict[int, str] | None = None,
    label_divisor: int | None = None,
) -> PanopticResult:
    """Combine a semantic class map and instance masks into one panoptic segmentation.

    The Panoptic FPN heuristic (Kirillov et al., 2019; detectron2's
    ``combine_semantic_and_instance_outputs``): instances are pasted in
    decreasing score order, skipping those under ``score_threshold`` and those
    whose mask is covered by earlier instances for more than
    ``overlap_threshold`` of its area (the rest of them fills only free pixels);
    then each stuff class of the semantic map fills the pixels still free, as
    one region, when that leaves at least ``min_stuff_area`` pixels.

    Parameters
    ----------
    semantic : ndarray (H, W) int
        Class id per pixel.
    instances : ndarray
        A label image (H, W) (0: background, ids with ``instance_classes`` and
        ``instance_scores`` as mappings id -> value) or boolean masks (N, H, W)
        (with sequences of length N).
    instance_classes : mapping or sequence
        Class of each instance.
    instance_scores : mapping or sequence, optional
        Confidence of each instance (default 1.0: all kept, in the given order).
    stuff_classes : iterable of int, optional
        Classes of the semantic map that are stuff; default: every class that
        no instance has (class 0 included: pass the list to leave a
        background class out).
    score_threshold, overlap_threshold : float
    min_stuff_area : int
    class_names : dict, optional
    label_divisor : int, optional
        As in :func:`encode_label_divisor`.

    Returns
    -------
    PanopticResult
        Stuff regions have no score (NaN in the table).
    """
    import pandas as pd

    semantic = np.asarray(semantic)
    inst = np.asarray(instances)
    if inst.ndim == 3:
        masks = inst.astype(bool)
        ids = list(range(1, len(masks) + 1))
        classes = {i: int(c) for i, c in zip(ids, instance_classes, strict=True)}
        scores = ({i: float(s) for i, s in zip(ids, instance_scores, strict=True)}
                  if instance_scores is not None else dict.fromkeys(ids, 1.0))
        get_mask = masks.__getitem__
        index = {i: i - 1 for i in ids}
    elif inst.ndim == 2:
        ids = [int(i) for i in np.unique(inst) if i]
        classes = {i: int(instance_classes[i]) for i in ids}
        scores = ({i: float(instance_scores[i]) for i in ids} if instance_scores is not None
                  else dict.fromkeys(ids, 1.0))
        index = {i: i for i in ids}

        def get_mask(i):
            return inst == i
    else:
        raise InputError(f"Instances must be a label image (H, W) or masks (N, H, W), got shape {inst.shape}.")
    if inst.shape[-2:] != semantic.shape:
        raise InputError(
            f"The semantic map has shape {semantic.shape} but the instances have {inst.shape[-2:]}; "
            "both must come from the same image."
        )
    for name, value in (("score_threshold", score_threshold), ("overlap_threshold", overlap_threshold)):
        if not 0.0 <= float(value) <= 1.0:
            raise InputError(f"{name} must be between 0 and 1, got {value}.")
    if stuff_classes is None:
        stuff = {int(c) for c in np.unique(semantic)} - set(classes.values())
    else:
        stuff = {int(c) for c in stuff_classes}

    panoptic = np.zeros(semantic.shape, dtype=LABEL_DTYPE)
    rows: list[dict] = []
    order = sorted(ids, key=lambda i: -scores[i])  # stable: ties keep the given order
    for i in order:
        if scores[i] < score_threshold:
            continue
        mask = get_mask(index[i])
        area = int(mask.sum())
        if area == 0:
            continue
        taken = mask & (panoptic > 0)
        if taken.sum() / area > overlap_threshold:
            continue
        mask = mask & (panoptic == 0)
        sid = len(rows) + 1
        panoptic[mask] = sid
        rows.append({"id": sid, "label_id": classes[i], "score": scores[i]})
    for c in sorted(stuff):
        mask = (semantic == c) & (panoptic == 0)
        if int(mask.sum()) < min_stuff_area:
            continue
        sid = len(rows) + 1
        panoptic[mask] = sid
        rows.append({"id": sid, "label_id": c, "score": float("nan")})
    params = PanopticParams(threshold=score_threshold, label_divisor=label_divisor)
    params.check()
    result = build_result(panoptic, rows, dict(class_names or {}), params, stuff)
    result.parameters = {
        "method": "semantic + instance fusion (Panoptic FPN heuristic)",
        "score_threshold": float(score_threshold), "overlap_threshold": float(overlap_threshold),
        "min_stuff_area": int(min_stuff_area), "stuff_classes": sorted(stuff),
        "label_divisor": label_divisor,
    }
    if not len(result.table):
        result.table = pd.DataFrame(columns=list(TABLE_COLUMNS))
    return result
