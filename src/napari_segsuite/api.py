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
    "resolve_device",
    "run_batch",
    "run_sync",
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


# -- batch segmentation (issue 9) ----------------------------------------------------------


def run_batch(task: str, model, inputs, out, *, progress=None, **options):
    """Segment many images (files, folders, globs, zarr) with one task and model.

    The engine behind ``napari-segsuite run``: per image a label image (TIFF, or zarr for
    large ones), a table, and a ``.done.json`` sidecar for resume; for the run ``objects.csv``
    and ``manifest.json`` (model checksum, parameters, versions). Large images are segmented
    in overlapping chunks with border objects merged.

    Parameters
    ----------
    task : str
        A registered batch task: ``"semantic"``, ``"panoptic"``, ``"threshold"`` (see
        :mod:`napari_segsuite.batch.tasks`; :func:`~napari_segsuite.batch.tasks.register_task`
        adds more).
    model : str, path, Runner or None
        Registry name, local checkpoint, or a loaded runner (reused in this process).
    inputs : str, path or list
        Files (tif, png, jpg), folders, glob patterns, zarr / OME-Zarr stores.
    out : str or path
        Output folder (created; must be writable).
    progress : callable, optional
        Called with a :class:`Progress` per finished image (``partial``: its record).
    **options
        ``device`` ("cpu"), ``params`` (task parameters, dict), ``workers`` (1),
        ``processes`` (False: threads), ``scheduler`` (a ``dask.distributed`` address),
        ``chunk_size`` (2048), ``overlap`` (64), ``fmt`` ("auto", "tif", "zarr"), ``table``
        ("csv", "parquet"), ``resume`` (True), ``merge_threshold`` (0.5),
        ``connect_timeout`` (5 s), ``family``, ``torch_threads`` (per worker).

    Returns
    -------
    napari_segsuite.batch.engine.BatchSummary
        ``.done``, ``.skipped``, ``.failed`` (input, reason), ``.records``, ``.manifest``,
        ``.exit_code``.

    Raises
    ------
    napari_segsuite.batch.engine.BatchSetupError
        Before any work, for an unknown task or model, an output folder that is not writable,
        or a scheduler that cannot be reached.
    """
    from napari_segsuite.batch.engine import run_batch as _run_batch

    return _run_batch(task, model, inputs, out, progress=progress, **options)
