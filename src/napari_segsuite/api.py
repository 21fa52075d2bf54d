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
    "detect_then_segment",
    "download_model",
    "get_entry",
    "list_models",
    "load_model",
    "percentile_normalize",
    "prepare_rgb_float",
    "prepare_rgb_uint8",
    "resolve_device",
    "run_sync",
    "segment_instances",
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


# -- instance segmentation (issue 7) ------------------------------------------


def _instance_run(image, runner, sam, boxes, *, conf, iou, mask_threshold, classes, max_det, imgsz,
                  tile_size, overlap, stack, class_names=None):
    from napari_segsuite.tasks.instance import (
        InstanceParams,
        combine_planes,
        resolve_classes,
        segment_planes_job,
        split_planes,
    )

    names = class_names if class_names is not None else (runner.class_names if runner is not None else {})
    params = InstanceParams(
        conf=conf, iou=iou, mask_threshold=mask_threshold, classes=resolve_classes(classes, names),
        max_det=max_det, imgsz=imgsz,
    )
    params.check()
    planes, is_stack = split_planes(image, stack)
    results = run_sync(segment_planes_job(
        planes, len(planes), runner=runner, params=params, sam=sam, boxes=boxes, class_names=names,
        tile_size=tile_size, overlap=overlap,
    ))
    return combine_planes(results) if is_stack else results[0]


def segment_instances(
    image,
    model,
    device: str = "auto",
    conf: float = 0.25,
    iou: float = 0.7,
    mask_threshold: float = 0.5,
    classes=None,
    max_det: int = 300,
    imgsz: int | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    stack: bool | None = None,
    store: ModelStore | None = None,
):
    """Instance segmentation of an image or a stack with YOLO-seg, Mask R-CNN or Mask2Former.

    Parameters
    ----------
    image : ndarray
        (H, W), (H, W, C) or a stack (Z, H, W) / (Z, H, W, C); any dtype.
    model : str, path or Runner
        Registry name, local checkpoint, or a loaded runner.
    device : str
        "auto", "cpu", "cuda" or "mps".
    conf, iou, mask_threshold : float
        Score threshold, NMS IoU (YOLO, Mask R-CNN), mask probability threshold
        (Mask R-CNN, Mask2Former).
    classes : ids and/or names, optional
        Classes to keep (``["cell", 2]`` or ``"cell, 2"``).
    max_det : int
        Most detections per image (per tile when tiled).
    imgsz : int, optional
        Model input size (the model's default when None).
    tile_size, overlap : int
        Tiled inference for large images; objects crossing tiles come out once.
    stack : bool, optional
        Whether the first axis of a 3D array is a stack (guessed when None).

    Returns
    -------
    InstanceResult
        ``.labels`` (ids ordered by score; the higher score wins where instances
        overlap) and ``.table`` (pandas: label_id, class_id, class_name, score,
        bbox_row0/col0/row1/col1, area; with a ``plane`` column for stacks).
        With no detections both are empty and ``.message`` says so.
    """
    runner = load_model(model, device, store=store)
    return _instance_run(
        image, runner, None, None, conf=conf, iou=iou, mask_threshold=mask_threshold, classes=classes,
        max_det=max_det, imgsz=imgsz, tile_size=tile_size, overlap=overlap, stack=stack,
    )


def detect_then_segment(
    image,
    detector,
    sam,
    device: str = "auto",
    conf: float = 0.25,
    iou: float = 0.7,
    mask_threshold: float = 0.5,
    classes=None,
    max_det: int = 300,
    imgsz: int | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    stack: bool | None = None,
    store: ModelStore | None = None,
):
    """Boxes from a detector (or given boxes), masks from Segment Anything.

    Parameters
    ----------
    image : ndarray
        As for :func:`segment_instances`.
    detector : str, path, Runner or (N, 4) array
        Any instance model, a detection-only YOLO, or boxes
        (row0, col0, row1, col1) in pixels (class 0, score 1).
    sam : str, path, Runner or SamSession
        A Segment Anything model; a :class:`SamSession` keeps its embedding cache.
    Other parameters
        As for :func:`segment_instances` (they apply to the detector).

    Returns
    -------
    InstanceResult
        Masks from SAM with the detector's class and score.
    """
    import numpy as np

    session = sam if isinstance(sam, SamSession) else SamSession(sam, device=device, store=store)
    if isinstance(detector, np.ndarray | list | tuple):
        from napari_segsuite.tasks.instance import detections_from_boxes

        boxes = np.asarray(detector, dtype=float).reshape(-1, 4)
        if np.asarray(image).ndim not in (2, 3):
            raise InputError("Boxes can be given for a single plane only.")
        dets = detections_from_boxes(boxes, shape=np.asarray(image).shape[:2])
        return _instance_run(
            image, None, session, dets, conf=conf, iou=iou, mask_threshold=mask_threshold, classes=None,
            max_det=max_det, imgsz=imgsz, tile_size=None, overlap=overlap, stack=False,
            class_names={0: "object"},
        )
    runner = load_model(detector, device, store=store)
    return _instance_run(
        image, runner, session, None, conf=conf, iou=iou, mask_threshold=mask_threshold, classes=classes,
        max_det=max_det, imgsz=imgsz, tile_size=tile_size, overlap=overlap, stack=stack,
    )
