"""The scripting surface of napari-segsuite (no Qt, no napari).

Examples
--------
>>> from napari_segsuite import api
>>> [e.name for e in api.list_models("prompt")][:2]
['sam_vit_b', 'sam_vit_l']
>>> runner = api.load_model("/path/to/sam_vit_b_01ec64.pth", device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

from napari_segsuite.core.device import resolve_device
from napari_segsuite.core.errors import (
    CheckpointError,
    DeviceError,
    DownloadError,
    InputError,
    ModelNotAvailableError,
    SegSuiteError,
)
from napari_segsuite.core.image import percentile_normalize, prepare_rgb_float, prepare_rgb_uint8
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.models.base import Runner, load_model
from napari_segsuite.models.registry import ModelEntry, entries_for, get_entry
from napari_segsuite.models.store import ModelSource, ModelStore, default_store
from napari_segsuite.tasks.sam_session import SamSession

__all__ = [
    "CheckpointError",
    "DeviceError",
    "DownloadError",
    "InputError",
    "ModelEntry",
    "ModelNotAvailableError",
    "ModelSource",
    "ModelStore",
    "Progress",
    "Runner",
    "SamSession",
    "SegSuiteError",
    "download_model",
    "evaluate",
    "fuse_semantic_instance",
    "get_entry",
    "list_models",
    "load_model",
    "percentile_normalize",
    "prepare_rgb_float",
    "prepare_rgb_uint8",
    "propagate",
    "resolve_device",
    "run_sync",
    "sam_automatic",
    "segment_panoptic",
]


def list_models(task: str | None = None, family: str | None = None) -> list[ModelEntry]:
    """Registry models for a task ("prompt", "semantic", "instance", "panoptic", ...)."""
    return entries_for(task, family)


def download_model(name: str, store: ModelStore | None = None, *, verbose: bool = True):
    """Download a registry model into the cache (deliberately online), returning its path."""

    def show(p: Progress) -> None:
        if verbose and p.message:
            print(f"\r{p.message}", end="", flush=True)

    path = run_sync((store or default_store()).download(name), show)
    if verbose:
        print()
    return path


# -- panoptic segmentation and evaluation (issue 8) ------------------------------------


def segment_panoptic(
    image,
    model,
    device: str = "auto",
    *,
    threshold: float = 0.8,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse=None,
    label_divisor: int | None = None,
    channels_last: bool | None = None,
):
    """Panoptic segmentation of a 2D image with a Mask2Former panoptic checkpoint.

    Parameters
    ----------
    image : ndarray
        (H, W) or (H, W, C) of any numeric dtype (normalised like the widget does).
    model : str, path or Runner
        A registry name (``"mask2former_swin_tiny_coco_panoptic"``), a local
        ``save_pretrained`` folder, or a runner from :func:`load_model`.
    device : str
        "auto", "cpu", "cuda" or "mps".
    threshold, mask_threshold, overlap_mask_area_threshold : float
        transformers' ``post_process_panoptic_segmentation`` parameters.
    label_ids_to_fuse : iterable of int, optional
        Stuff classes (one region per class). None: the known layouts' stuff
        classes (COCO, Cityscapes), else none.
    label_divisor : int, optional
        Encode ids as ``class_id * label_divisor + k`` (k = 1, 2, ... per class).
    channels_last : bool, optional
        Whether the last axis holds channels (guessed from ``ndim``).

    Returns
    -------
    napari_segsuite.tasks.panoptic.PanopticResult
        ``.labels`` (H, W) int32 and ``.table`` (pandas DataFrame: segment_id,
        class_id, class_name, is_thing, score, area).
    """
    from napari_segsuite.tasks.panoptic import PanopticParams, panoptic_job

    params = PanopticParams(
        threshold=threshold,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap_mask_area_threshold,
        label_ids_to_fuse=None if label_ids_to_fuse is None else tuple(int(i) for i in label_ids_to_fuse),
        label_divisor=label_divisor,
    )
    return run_sync(panoptic_job(model, image, params, device=device, channels_last=channels_last))


def evaluate(
    prediction,
    ground_truth,
    *,
    pred_classes=None,
    gt_classes=None,
    pred_scores=None,
    class_names=None,
    label_divisor: int | None = None,
    max_dets: int | None = None,
):
    """Compare a predicted label image with a ground-truth one: semantic, instance and panoptic scores.

    Parameters
    ----------
    prediction : ndarray or PanopticResult
        A label image (0: background). A :class:`PanopticResult` brings its
        classes, scores and class names.
    ground_truth : ndarray
        A label image of the same shape.
    pred_classes, gt_classes : mapping, optional
        ``{segment id: class id}``; without them (and without ``label_divisor``)
        the scores are class-agnostic.
    pred_scores : mapping, optional
        ``{segment id: confidence}`` for AP (default: rank by decreasing area).
    class_names : mapping, optional
        Class id -> name.
    label_divisor : int, optional
        Read classes as ``id // label_divisor`` in both images where no mapping
        is given.
    max_dets : int, optional
        COCO's ``maxDets`` per class (None: no cap).

    Returns
    -------
    napari_segsuite.core.metrics.EvaluationResult
        ``.summary`` (overall precision, recall, f1, ap50, ap, pq, sq, rq, iou,
        dice, counts), ``.per_class``, ``.matching`` (matched, missed,
        spurious), ``.table()``, ``.objects_table()`` and ``.to_csv(path)``.
        See :mod:`napari_segsuite.core.metrics` for the conventions.
    """
    import numpy as np

    from napari_segsuite.core.metrics import check_label_image
    from napari_segsuite.core.metrics import evaluate as _evaluate

    labels = getattr(prediction, "labels", prediction)
    table = getattr(prediction, "table", None)
    if table is not None:
        pred_classes = pred_classes or dict(zip(table["segment_id"].astype(int), table["class_id"].astype(int), strict=True))
        pred_scores = pred_scores or dict(zip(table["segment_id"].astype(int), table["score"].astype(float), strict=True))
        class_names = class_names or getattr(prediction, "class_names", None)
    labels = check_label_image(labels, "predicted labels")
    gt = check_label_image(ground_truth, "ground-truth labels")
    if label_divisor:
        if pred_classes is None:
            pred_classes = {int(i): int(i) // int(label_divisor) for i in np.unique(labels) if i}
        if gt_classes is None:
            gt_classes = {int(i): int(i) // int(label_divisor) for i in np.unique(gt) if i}
    return _evaluate(
        labels, gt, pred_classes=pred_classes, gt_classes=gt_classes, pred_scores=pred_scores,
        class_names=class_names, max_dets=max_dets,
    )


def fuse_semantic_instance(semantic, instances, instance_classes, instance_scores=None, **options):
    """Panoptic segmentation from a semantic class map and instance masks (Panoptic FPN heuristic).

    See :func:`napari_segsuite.tasks.panoptic.fuse_semantic_instance` for the
    parameters (``stuff_classes``, ``score_threshold``, ``overlap_threshold``,
    ``min_stuff_area``, ``class_names``, ``label_divisor``).

    Returns
    -------
    napari_segsuite.tasks.panoptic.PanopticResult
    """
    from napari_segsuite.tasks.panoptic import fuse_semantic_instance as fuse

    return fuse(semantic, instances, instance_classes, instance_scores, **options)


# -- SAM automatic masks and propagation (issue 4) -------------------------------------


def _sam_session(model, device: str):
    return model if isinstance(model, SamSession) else SamSession(model, device)


def sam_automatic(image2d, model, device: str = "auto", **params):
    """Class-agnostic masks for a whole 2D image ("segment everything"), SAM or SAM 2.1.

    Parameters
    ----------
    image2d : ndarray
        (H, W) or (H, W, C), any dtype.
    model : str, path, Runner or SamSession
        A SAM / SAM 2.1 registry name, checkpoint, loaded runner, or a session
        (whose embedding cache is then used for the whole image).
    device : str
        "auto", "cpu", "cuda" or "mps".
    **params
        ``segment_anything.SamAutomaticMaskGenerator``'s parameters under the
        same names (``points_per_side``, ``points_per_batch``,
        ``pred_iou_thresh``, ``stability_score_thresh``,
        ``stability_score_offset``, ``box_nms_thresh``, ``crop_n_layers``,
        ``crop_nms_thresh``, ``crop_overlap_ratio``,
        ``crop_n_points_downscale_factor``, ``point_grids``,
        ``min_mask_region_area``), plus ``tile_size`` and ``tile_overlap``
        for large images (see :mod:`napari_segsuite.tasks.sam_automatic`).

    Returns
    -------
    napari_segsuite.tasks.sam_automatic.AutoResult
        ``.labels`` (H, W) int32 without overlaps (smaller masks on top),
        ``.table`` (one row per label: area, bbox, predicted_iou,
        stability_score, ...) and ``.masks`` (the generator's masks).
    """
    from napari_segsuite.tasks.sam_automatic import AutoParams, automatic_job

    try:
        p = AutoParams(**params)
    except TypeError as exc:
        raise InputError(f"Unknown automatic-mask parameter: {exc}") from None
    return run_sync(automatic_job(_sam_session(model, device), image2d, p))


def propagate(volume, start_index: int, mask, model, device: str = "auto", **options):
    """Carry one object's mask from plane ``start_index`` of a stack to its neighbours.

    Parameters
    ----------
    volume : ndarray
        (N, H, W) or (N, H, W, C): z planes or time points along the first axis.
    start_index : int
        The plane holding ``mask``.
    mask : ndarray of bool, (H, W)
        The object on that plane.
    model : str, path, Runner or SamSession
        SAM (the previous mask is projected onto the next plane as a box and
        mask prompt) or SAM 2.1 (video propagation, when the folder holds the
        video memory weights).
    **options
        ``direction`` ("both", "forward", "backward"), ``max_planes``,
        ``iou_floor``, ``method`` ("auto", "video", "project"); see
        :func:`napari_segsuite.tasks.propagation.propagate_job`.

    Returns
    -------
    dict of int to ndarray
        Plane index -> boolean mask, for the planes the object was carried to
        (not including ``start_index``).
    """
    from napari_segsuite.tasks.propagation import propagate_job

    return run_sync(propagate_job(_sam_session(model, device), volume, start_index, mask, **options))
