"""The scripting surface of napari-segsuite (no Qt, no napari).

Examples
--------
>>> from napari_segsuite import api
>>> [e.name for e in api.list_models("prompt")][:2]
['sam_vit_b', 'sam_vit_l']
>>> runner = api.load_model("/path/to/sam_vit_b_01ec64.pth", device="cpu")  # doctest: +SKIP
>>> result = api.segment_semantic(image, "segformer_b0_ade", tile_size=512)  # doctest: +SKIP
>>> result.labels, result.class_names  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_segsuite.core.device import resolve_device
from napari_segsuite.core.errors import (
    CheckpointError,
    DatasetError,
    DeviceError,
    DownloadError,
    InputError,
    ModelNotAvailableError,
    SegSuiteError,
)
from napari_segsuite.core.image import percentile_normalize, prepare_rgb_float, prepare_rgb_uint8
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.core.vocabulary import LayerTask, Task
from napari_segsuite.models.base import Runner, load_model
from napari_segsuite.models.registry import ModelEntry, entries_for, get_entry
from napari_segsuite.models.store import ModelSource, ModelStore, default_store
from napari_segsuite.tasks.sam_session import SamSession
from napari_segsuite.tasks.unet_training import TrainedUnet, TrainingOptions, TrainingState

if TYPE_CHECKING:
    from napari_segsuite.batch.engine import BatchOptions

__all__ = [
    "BatchOptions",
    "CheckpointError",
    "DatasetError",
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
    "TrainedUnet",
    "TrainingOptions",
    "TrainingState",
    "detect_then_segment",
    "download_model",
    "evaluate",
    "export_dataset",
    "finetune_sam",
    "fuse_semantic_instance",
    "get_entry",
    "import_dataset",
    "list_models",
    "load_model",
    "load_unet",
    "percentile_normalize",
    "prepare_rgb_float",
    "prepare_rgb_uint8",
    "propagate",
    "resolve_device",
    "run_batch",
    "run_sync",
    "sam_automatic",
    "segment_instances",
    "segment_panoptic",
    "segment_semantic",
    "track_concepts",
    "train_instances",
    "train_unet",
]


def __getattr__(name: str):
    if name == "BatchOptions":  # imported on first use: the batch engine is not needed otherwise
        from napari_segsuite.batch.engine import BatchOptions

        return BatchOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# -- large images: multiscale inputs, lazy planes in chunks ----------------------------

#: Lazy planes (dask, zarr ...) with a side above this go in chunks of this side (instances, panoptic).
CHUNK_SIZE = 2048


def _full_resolution(image):
    """Level 0 of a multiscale image (a list or tuple of arrays, finest first), else ``image``.

    Nothing is read: the levels stay lazy.
    """
    if isinstance(image, list | tuple) and image and all(
            hasattr(a, "shape") and hasattr(a, "dtype") and len(a.shape) >= 2 for a in image):
        return image[0]
    return image


def _lazy_plane(image, chunk_size: int) -> bool:
    """Whether ``image`` is a lazy (not numpy) 2D plane larger than one chunk."""
    import numpy as np

    if isinstance(image, np.ndarray) or not hasattr(image, "shape"):
        return False
    shape = tuple(int(s) for s in image.shape)
    plane = len(shape) == 2 or (len(shape) == 3 and shape[-1] <= 4)
    return plane and max(shape[:2]) > int(chunk_size)


def _chunked(task: str, image, runner, params: dict, out, chunk_size: int, progress):
    """A lazy plane through batch task ``task`` in chunks into ``out`` (allocated when None)."""
    import numpy as np

    from napari_segsuite.batch.regions import segment_region_job
    from napari_segsuite.core.labels import LABEL_DTYPE

    h, w = (int(s) for s in image.shape[:2])
    if out is None:
        out = np.zeros((h, w), LABEL_DTYPE)
    elif tuple(out.shape) != (h, w):
        raise InputError(f"The output array has shape {tuple(out.shape)}, not the image's {(h, w)}.")
    table = run_sync(segment_region_job(task, runner, image, out, params=params, chunk=int(chunk_size)), progress)
    return out, table


# -- panoptic segmentation and evaluation ------------------------------------


def segment_panoptic(
    image,
    model,
    *,
    device: str = "auto",
    progress=None,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse=None,
    label_divisor: int | None = None,
    channels_last: bool | None = None,
    out=None,
    chunk_size: int = CHUNK_SIZE,
):
    """Panoptic segmentation of a 2D image with a Mask2Former panoptic checkpoint.

    Parameters
    ----------
    image : array-like
        (H, W) or (H, W, C) of any numeric dtype (normalised like the widget does); a
        multiscale image (a list of levels, finest first) gives its level 0. A lazy plane
        (dask, zarr) larger than ``chunk_size`` is read and segmented chunk by chunk (segments
        crossing chunk borders merged, ids ``1..N``) into ``out``.
    model : str, path or Runner
        A registry name (``"mask2former_swin_tiny_coco_panoptic"``), a local
        ``save_pretrained`` folder, or a runner from :func:`load_model`.
    device : str
        "auto", "cpu", "cuda" or "mps".
    progress : callable, optional
        Called with every :class:`Progress`.
    threshold, mask_threshold, overlap_mask_area_threshold : float
        transformers' ``post_process_panoptic_segmentation`` parameters.
    label_ids_to_fuse : iterable of int, optional
        Stuff classes (one region per class). None: the known layouts' stuff
        classes (COCO, Cityscapes), else none.
    label_divisor : int, optional
        Encode ids as ``class_id * label_divisor + k`` (k = 1, 2, ... per class); not for
        chunked planes.
    channels_last : bool, optional
        Whether the last axis holds channels (guessed from ``ndim``).
    out : array-like (H, W), optional
        Where a chunked plane's labels go (e.g. a zarr array); allocated when not given.
    chunk_size : int
        Chunk side for lazy planes.

    Returns
    -------
    napari_segsuite.tasks.panoptic.PanopticResult
        ``.labels`` (H, W) int32 and ``.table`` (pandas DataFrame: label,
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
    image = _full_resolution(image)
    if _lazy_plane(image, chunk_size):
        from napari_segsuite.tasks.panoptic import PanopticResult

        if label_divisor:
            raise InputError("label_divisor is not kept across chunks; leave it out for a large lazy plane.")
        params.check()
        runner = model if isinstance(model, Runner) else load_model(model, device)
        kwargs = {"threshold": threshold, "mask_threshold": mask_threshold,
                  "overlap_mask_area_threshold": overlap_mask_area_threshold}
        if label_ids_to_fuse is not None:
            kwargs["label_ids_to_fuse"] = [int(i) for i in label_ids_to_fuse]
        labels, table = _chunked(Task.PANOPTIC, image, runner, kwargs, out, chunk_size, progress)
        return PanopticResult(labels, table, dict(runner.class_names), None,
                              {**kwargs, "model": runner.name, "chunk_size": int(chunk_size)})
    return run_sync(panoptic_job(model, image, params, device=device, channels_last=channels_last), progress)


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
        pred_classes = pred_classes or dict(zip(table["label"].astype(int), table["class_id"].astype(int), strict=True))
        pred_scores = pred_scores or dict(zip(table["label"].astype(int), table["score"].astype(float), strict=True))
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
def segment_semantic(
    image,
    model,
    *,
    device: str = "auto",
    tile_size: int | None = None,
    overlap: int = 64,
    confidence: bool = False,
    out=None,
    confidence_out=None,
    store: ModelStore | None = None,
    progress=None,
):
    """Semantic segmentation of one 2D image: a class for every pixel.

    Parameters
    ----------
    image : array-like
        (H, W) or (H, W, C) with 1, 3 or 4 channels, any numeric dtype; a
        numpy, memmap, dask or zarr array (read one tile at a time), or a multiscale
        image (a list of levels, finest first: level 0 is segmented).
    model : str, path or Runner
        Registry name (``"segformer_b0_ade"``), a local checkpoint (transformers
        ``save_pretrained`` folder of SegFormer or a semantic Mask2Former,
        torchvision DeepLabV3/LRASPP/FCN state dict, napari-segsuite U-Net
        folder), or a loaded runner.
    device : str
        "auto", "cpu", "cuda" or "mps" (ignored for a loaded runner).
    tile_size : int or None
        None: one tile for images up to 1024 pixels a side, else 512-pixel
        tiles; 0: never tile; an int: that tile side.
    overlap : int
        Overlap of neighbouring tiles; their scores are blended smoothly.
    confidence : bool
        Also compute the winning class's probability per pixel.
    out, confidence_out : array-like (H, W), optional
        Arrays to write into (memmap or zarr for huge images).
    store : ModelStore, optional
        Where registry models are found.
    progress : callable, optional
        Called with every :class:`Progress`.

    Returns
    -------
    napari_segsuite.tasks.semantic.SemanticResult
        ``.labels`` (model class id + 1 per pixel), ``.class_names`` (label id
        -> name), ``.class_ids``, ``.pixel_counts``, ``.confidence``.
    """
    from napari_segsuite.tasks.semantic import segment_semantic_job

    image = _full_resolution(image)
    runner = load_model(model, device, store=store)
    runner.require(Task.SEMANTIC)
    job = segment_semantic_job(
        image, runner, tile_size=tile_size, overlap=overlap, confidence=confidence,
        out=out, confidence_out=confidence_out,
    )
    return run_sync(job, progress)


# -- instance segmentation ------------------------------------------


def _instance_run(image, runner, sam, boxes, *, conf, iou, mask_threshold, classes, max_det, imgsz,
                  tile_size, overlap, stack, class_names=None, exemplars=None, exemplar_labels=None,
                  text_threshold=0.25, progress=None):
    from dataclasses import asdict

    import numpy as np

    from napari_segsuite.tasks.instance import (
        InstanceParams,
        combine_planes,
        concept_params,
        segment_planes_job,
        split_planes,
    )

    params = InstanceParams(
        conf=conf, iou=iou, mask_threshold=mask_threshold, max_det=max_det, imgsz=imgsz,
        text_threshold=text_threshold,
    )
    if runner is not None:
        names = concept_params(runner, params, classes, exemplars, exemplar_labels)
    else:
        names = class_names or {}
    if class_names is not None:
        names = class_names
    params.check()
    planes, is_stack = split_planes(image, stack)
    results = run_sync(segment_planes_job(
        planes, len(planes), runner=runner, params=params, sam=sam, boxes=boxes, class_names=names,
        tile_size=tile_size, overlap=overlap,
    ), progress)
    result = combine_planes(results) if is_stack else results[0]
    result.provenance = {
        "task": Task.INSTANCE,
        "model": runner.provenance() if runner is not None else "boxes",
        "sam": sam.runner.provenance() if sam is not None else None,
        "parameters": {k: v for k, v in asdict(params).items() if not isinstance(v, np.ndarray)},
        "tile_size": tile_size, "overlap": overlap,
    }
    return result


def segment_instances(
    image,
    model,
    *,
    device: str = "auto",
    conf: float | None = None,
    iou: float | None = None,
    mask_threshold: float = 0.5,
    classes=None,
    max_det: int | None = None,
    imgsz: int | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    stack: bool | None = None,
    store: ModelStore | None = None,
    exemplars=None,
    exemplar_labels=None,
    progress=None,
    out=None,
    chunk_size: int = CHUNK_SIZE,
):
    """Instance segmentation of an image or a stack: YOLO-seg, Mask R-CNN, Mask2Former or SAM 3 concepts.

    Parameters
    ----------
    image : array-like
        (H, W), (H, W, C) or a stack (Z, H, W) / (Z, H, W, C); any dtype. A multiscale image
        (a list of levels, finest first) gives its level 0. A lazy plane (dask, zarr) larger
        than ``chunk_size`` is read and segmented chunk by chunk (``tile_size`` tiles inside
        each chunk; objects crossing chunk borders merged, ids ``1..N`` in order of first
        appearance) into ``out``.
    model : str, path or Runner
        Registry name, local checkpoint, or a loaded runner.
    device : str
        "auto", "cpu", "cuda" or "mps".
    conf, iou : float, optional
        Score threshold and NMS IoU (YOLO, Mask R-CNN). None: the model's own
        library default (YOLO 0.25 / 0.7, Mask R-CNN 0.5 / 0.5 as torchvision's
        model, Mask2Former 0.5, SAM 3 0.5).
    mask_threshold : float
        Mask probability threshold (Mask R-CNN, Mask2Former, SAM 3: its
        processor's ``threshold`` and ``mask_threshold``).
    classes : ids and/or names, optional
        Classes to keep (``["cell", 2]`` or ``"cell, 2"``). For SAM 3 the
        concepts to find, in words: every instance of each becomes one label
        with ``class_name`` = the concept (all concepts share one vision pass).
    max_det : int, optional
        Most detections per image (per tile when tiled); None: the library's
        default (YOLO 300, torchvision's Mask R-CNN 100, Mask2Former 100).
    imgsz : int, optional
        Model input size (the model's default when None).
    tile_size, overlap : int
        Tiled inference for large images; objects crossing tiles come out once.
    progress : callable, optional
        Called with every :class:`Progress`.
    stack : bool, optional
        Whether the first axis of a 3D array is a stack (guessed when None).
    exemplars : (N, 4) array, optional
        SAM 3 only: exemplar boxes (row0, col0, row1, col1) in image pixels
        (each plane's, for a stack), alone or with ``classes``; not with tiles.
    exemplar_labels : (N,) array, optional
        1 "more like this", 0 "not like this" per exemplar (default all 1).
    out : array-like (H, W), optional
        Where a chunked plane's labels go (e.g. a zarr array); allocated when not given.
    chunk_size : int
        Chunk side for lazy planes.

    Returns
    -------
    InstanceResult
        ``.labels`` (ids ordered by score; the higher score wins where instances
        overlap) and ``.table`` (pandas: label, class_id, class_name, score,
        bbox_row0/col0/row1/col1, area; with a ``plane`` column for stacks).
        With no detections both are empty and ``.message`` says so.
    """
    image = _full_resolution(image)
    runner = load_model(model, device, store=store)
    if _lazy_plane(image, chunk_size) and exemplars is None:
        from napari_segsuite.tasks.instance import InstanceResult

        params = {"conf": conf, "iou": iou, "mask_threshold": mask_threshold, "max_det": max_det,
                  "imgsz": imgsz, "tile_size": tile_size, "overlap": overlap,
                  "classes": None if classes is None else (classes if isinstance(classes, str) else
                                                           ",".join(str(c) for c in classes))}
        params = {k: v for k, v in params.items() if v is not None}
        labels, table = _chunked(Task.INSTANCE, image, runner, params, out, chunk_size, progress)
        table = table.rename(columns={"bbox_0_min": "bbox_row0", "bbox_1_min": "bbox_col0",
                                      "bbox_0_max": "bbox_row1", "bbox_1_max": "bbox_col1"})
        result = InstanceResult(labels, table, [], "" if len(table) else "No instances found.")
        result.provenance = {"task": Task.INSTANCE, "model": runner.provenance(), "parameters": params,
                             "chunk_size": int(chunk_size)}
        return result
    return _instance_run(
        image, runner, None, None, conf=conf, iou=iou, mask_threshold=mask_threshold, classes=classes,
        max_det=max_det, imgsz=imgsz, tile_size=tile_size, overlap=overlap, stack=stack,
        exemplars=exemplars, exemplar_labels=exemplar_labels, progress=progress,
    )


def detect_then_segment(
    image,
    detector,
    *,
    sam,
    device: str = "auto",
    conf: float | None = None,
    iou: float | None = None,
    mask_threshold: float = 0.5,
    classes=None,
    max_det: int | None = None,
    imgsz: int | None = None,
    tile_size: int | None = None,
    overlap: int = 64,
    stack: bool | None = None,
    store: ModelStore | None = None,
    text_threshold: float = 0.25,
    progress=None,
):
    """Boxes from a detector (or given boxes), masks from Segment Anything.

    Parameters
    ----------
    image : ndarray
        As for :func:`segment_instances`.
    detector : str, path, Runner or (N, 4) array
        Any instance model, a detection-only YOLO, an open-vocabulary detector
        (Grounding DINO, MM-Grounding-DINO, OWLv2: ``classes`` are then the
        objects to find, in words, and ``conf`` their box threshold), or boxes
        (row0, col0, row1, col1) in pixels (class 0, score 1).
    sam : str, path, Runner or SamSession
        A Segment Anything model; a :class:`SamSession` keeps its embedding cache.
    text_threshold : float
        Grounding DINO's text threshold: a box is kept when one of its
        caption's tokens passes it.
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
        from napari_segsuite.core.prompts import as_boxes
        from napari_segsuite.tasks.instance import detections_from_boxes

        boxes = as_boxes(detector)
        if np.asarray(image).ndim not in (2, 3):
            raise InputError("Boxes can be given for a single plane only.")
        dets = detections_from_boxes(boxes, shape=np.asarray(image).shape[:2])
        return _instance_run(
            image, None, session, dets, conf=conf, iou=iou, mask_threshold=mask_threshold, classes=None,
            max_det=max_det, imgsz=imgsz, tile_size=None, overlap=overlap, stack=False,
            class_names={0: "object"}, progress=progress,
        )
    runner = load_model(detector, device, store=store)
    return _instance_run(
        image, runner, session, None, conf=conf, iou=iou, mask_threshold=mask_threshold, classes=classes,
        max_det=max_det, imgsz=imgsz, tile_size=tile_size, overlap=overlap, stack=stack,
        text_threshold=text_threshold, progress=progress,
    )


# -- U-Net trained from strokes -----------------------------------

def train_unet(image, labels, *, class_names=None, init_model=None, progress=None, **options) -> TrainedUnet:
    """Train a U-Net from sparse strokes and return it (``.predict(image)``, ``.save(path)``).

    Parameters
    ----------
    image : ndarray or list of ndarray
        (H, W) greyscale, (H, W, C) with channels last, a stack (Z, H, W) with
        strokes (Z, H, W), or a list of such images.
    labels : ndarray or list of ndarray
        Strokes of the image's spatial shape: 0 = not labelled, 1..K = classes.
    class_names : dict or list, optional
        ``{1: "background", 2: "coin"}`` or ``["background", "coin"]``.
    init_model : TrainedUnet, optional
        Continue training this model (e.g. after adding strokes).
    progress : callable, optional
        Called with every :class:`Progress` (``partial`` holds the curve point).
    **options
        :class:`TrainingOptions` fields: ``steps``, ``patch_size``, ``batch_size``,
        ``learning_rate``, ``val_fraction``, ``device``, ``seed``, ...

    Returns
    -------
    TrainedUnet
        The weights with the lowest validation loss; ``.predict(plane)`` gives
        labels 1..K, ``.save(folder)`` writes a model folder that
        :func:`load_unet` and :func:`load_model` read.

    Examples
    --------
    >>> from skimage import data
    >>> from napari_segsuite.demo.coins import coins_strokes
    >>> model = train_unet(data.coins(), coins_strokes(), class_names=["background", "coin"],
    ...                    steps=200)  # doctest: +SKIP
    >>> labels = model.predict(data.coins())  # doctest: +SKIP
    >>> model.save("coins-unet")  # doctest: +SKIP
    """
    from napari_segsuite.tasks import unet_training

    return unet_training.train_unet(image, labels, class_names=class_names, init_model=init_model,
                                    on_progress=progress, **options)


def load_unet(path, device: str = "cpu") -> TrainedUnet:
    """Load a U-Net folder (``model.safetensors`` + ``unet_config.json``) as a :class:`TrainedUnet`."""
    from napari_segsuite.tasks.unet_training import load_trained_unet

    return load_trained_unet(path, device)


# -- batch segmentation ----------------------------------------------------------


def run_batch(task: str, model, inputs, out, *, options=None, progress=None, **changes):
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
    options : napari_segsuite.batch.engine.BatchOptions, optional
        How the run works: device, task parameters, workers, chunking, formats,
        resume ... (each described there).
    progress : callable, optional
        Called with a :class:`Progress` per finished image (``partial``: its record).
    **changes
        ``BatchOptions`` fields to change, e.g. ``params={...}``, ``workers=2``.

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

    return _run_batch(task, model, inputs, out, options=options, progress=progress, **changes)


# -- SAM automatic masks and propagation -------------------------------------


def _sam_session(model, device: str):
    return model if isinstance(model, SamSession) else SamSession(model, device)


def sam_automatic(image, model, *, device: str = "auto", progress=None, **params):
    """Class-agnostic masks for a whole 2D image ("segment everything"), SAM or SAM 2.1.

    Parameters
    ----------
    image : ndarray
        (H, W) or (H, W, C), any dtype.
    model : str, path, Runner or SamSession
        A SAM / SAM 2.1 registry name, checkpoint, loaded runner, or a session
        (whose embedding cache is then used for the whole image).
    device : str
        "auto", "cpu", "cuda" or "mps".
    progress : callable, optional
        Called with every :class:`Progress`.
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
        stability_score, ...), ``.masks`` (the generator's masks) and
        ``.provenance``.
    """
    from napari_segsuite.tasks.sam_automatic import AutoParams, automatic_job

    try:
        p = AutoParams(**params)
    except TypeError as exc:
        raise InputError(f"Unknown automatic-mask parameter: {exc}") from None
    return run_sync(automatic_job(_sam_session(model, device), image, p), progress)


def propagate(image, model, *, start_index: int, mask, device: str = "auto", progress=None, **options):
    """Carry one object's mask from plane ``start_index`` of a stack to its neighbours.

    Parameters
    ----------
    image : ndarray
        (N, H, W) or (N, H, W, C): z planes or time points along the first axis.
    model : str, path, Runner or SamSession
        SAM (the previous mask is projected onto the next plane as a box and
        mask prompt) or SAM 2.1 (video propagation, when the folder holds the
        video memory weights).
    start_index : int
        The plane holding ``mask``.
    mask : ndarray of bool, (H, W)
        The object on that plane.
    device : str
        "auto", "cpu", "cuda" or "mps".
    progress : callable, optional
        Called with every :class:`Progress` (one per plane).
    **options
        ``direction`` ("both", "forward", "backward"), ``max_planes``,
        ``iou_floor``, ``method`` ("auto", "video", "project"); see
        :func:`napari_segsuite.tasks.propagation.propagate_job`.

    Returns
    -------
    napari_segsuite.tasks.propagation.PropagationResult
        A mapping plane index -> boolean mask for the planes the object was
        carried to (not including ``start_index``), with ``.labels`` (the
        stack, 1 on the object), ``.table`` (plane, area) and ``.provenance``.
    """
    import numpy as np

    from napari_segsuite.tasks.propagation import PropagationResult, propagate_job

    session = _sam_session(model, device)
    masks = run_sync(propagate_job(session, image, start_index, mask, **options), progress)
    start = np.asarray(mask, dtype=bool)
    return PropagationResult(
        masks, (len(image), *start.shape), int(start_index), start,
        provenance={"task": LayerTask.PROPAGATION, "model": session.runner.provenance(), "parameters": dict(options)},
    )


# -- training datasets out and in ---------------------------------------------------------


def export_dataset(
    images,
    labels,
    out,
    *,
    format: str = "coco",
    class_names=None,
    label_classes=None,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    progress=None,
    names=None,
    image_format: str = "png",
):
    """Write images and their labels as a COCO or ultralytics YOLO segmentation dataset.

    Every object (non-zero label id) of every plane becomes one instance. COCO: images in
    ``out/train`` and ``out/val``, ``out/annotations/instances_{train,val}.json`` with one
    RLE mask per object (:mod:`napari_segsuite.datasets.coco`). YOLO: ultralytics' layout
    (``images/``, ``labels/``, ``data.yaml``) with one polygon per object
    (:mod:`napari_segsuite.datasets.yolo` describes how holes and parts are handled).

    Parameters
    ----------
    images : array, path, or iterable of them
        One image (2D, 2D with 1-4 channels last, or a stack of planes), or several; read
        one at a time, so a generator or a list of file paths streams.
    labels : array, path, or iterable of them
        The label images, one per image, of the image's shape without its channel axis.
        Each plane of a stack is one dataset image (named ``<name>_<plane>``).
    out : str or Path
        The dataset folder; it must not exist or be empty unless ``overwrite``.
    format : {"coco", "yolo"}
    class_names : sequence or mapping, optional
        Class id -> name (a list: class id = position). Every named class is a category,
        also when no object has it. None: ``class_<id>`` for the ids used, or ``object``
        when there is one class.
    label_classes : mapping, table or sequence of them, optional
        Label id -> class id: one mapping for every image, or one per item of ``images``
        (a stack's planes share it). A table with columns ``label`` and ``class_id`` (a
        Labels layer's ``features``) works too. None: every object has the one class.
    val_fraction : float
        Share of images in the validation split, in [0, 1): ``round(n * val_fraction)``
        images (at least one with two or more images) chosen with a fixed seed.
    overwrite : bool
        Replace an existing dataset in ``out`` (once the new one is complete). A non-empty
        folder that holds no dataset (no ``data.yaml``, no ``annotations/*.json``) is never
        replaced.
    progress : callable, optional
        Called with a :class:`Progress` per image written.
    names : iterable of str, optional
        Names of the items of ``images`` (default: file stems, or ``image00000`` ...).
    image_format : {"png", "tif"}
        ``png``: 8-bit PNG (other dtypes percentile-scaled to 0-255); ``tif``: the pixels
        unchanged.

    Returns
    -------
    napari_segsuite.datasets.common.ExportResult
        ``.path``, ``.class_names``, ``.files``, ``.table`` (image, split, objects),
        ``.provenance``.

    Raises
    ------
    InputError
        Labels without any object, images and labels of different shapes, a label without a
        class, a class id without a name, a ``label_classes`` entry for a label id found in
        no image, a bad ``val_fraction``.
    DatasetError
        ``out`` exists and is not empty (and not ``overwrite``, or holds no dataset), or
        cannot be written.
        Nothing is left behind on any error: the dataset is written to a hidden folder beside
        ``out`` and renamed at the end.
    """
    from napari_segsuite.datasets.io import export_job

    return run_sync(export_job(
        images, labels, out, format=format, class_names=class_names, label_classes=label_classes,
        val_fraction=val_fraction, overwrite=overwrite, names=names, image_format=image_format,
    ), progress)


def import_dataset(path, *, progress=None):
    """Read a COCO or YOLO segmentation dataset into images, label images and class maps.

    Parameters
    ----------
    path : str or Path
        A COCO JSON (that split), a ``data.yaml`` (all its splits), or a dataset folder
        (its ``data.yaml``, else all ``annotations/*.json``).
    progress : callable, optional
        Called with a :class:`Progress` per image read.

    Returns
    -------
    napari_segsuite.datasets.io.ImportedDataset
        ``.images``, ``.labels`` (int32), ``.label_classes`` ({label: class id} per image),
        ``.class_names`` ({class id: name}), ``.names``, ``.splits``, ``.table`` (one row per
        object, label id column ``label``), ``.provenance``.

    Raises
    ------
    DatasetError
        The file is not valid JSON/YAML, not a COCO / ultralytics dataset, or names images
        or masks that cannot be read.
    """
    from napari_segsuite.datasets.io import import_job

    return run_sync(import_job(path), progress)


# -- SAM 3 concepts through planes -------------------------------------------------------------


def track_concepts(volume, model, *, classes, start_index: int = 0, conf: float | None = None,
                   device: str = "auto", store: ModelStore | None = None, progress=None):
    """Every instance of concepts in words, tracked through a z-stack or time series with SAM 3 video.

    Parameters
    ----------
    volume : ndarray
        (Z, H, W) or (Z, H, W, C): planes along the first axis.
    model : str, path or Runner
        ``"sam3"`` or a ``facebook/sam3``-style folder (with the video weights).
    classes : str or list of str
        The concepts (``"cell, nucleus"`` or ``["cell", "nucleus"]``).
    start_index : int
        The plane where tracking starts (planes before it are tracked in reverse).
    conf : float, optional
        Detection threshold of new objects; the model's own when None.
    device : str
        "auto", "cpu", "cuda" or "mps".
    progress : callable, optional
        Called with every :class:`Progress`.

    Returns
    -------
    napari_segsuite.tasks.concept_tracking.ConceptTrackResult
        ``.labels`` (Z, H, W) int32 with one id per tracked object,
        ``.table`` (label, class_name, score, first_plane, last_plane),
        ``.provenance``.
    """
    from napari_segsuite.models.open_vocab_common import check_concepts
    from napari_segsuite.tasks.concept_tracking import track_concepts_job

    concepts = check_concepts(classes)
    runner = load_model(model, device, store=store)
    return run_sync(track_concepts_job(runner, volume, concepts, start_index=start_index, conf=conf), progress)


# -- training instance models and fine-tuning SAM on the user's annotations ---------------


def train_instances(
    images,
    labels,
    *,
    label_classes=None,
    class_names=None,
    family: str = "yolo",
    init_model=None,
    epochs: int | None = None,
    out=None,
    progress=None,
    store: ModelStore | None = None,
    state=None,
    **options,
) -> Runner:
    """Train a YOLO-seg or Mask R-CNN model on label images and save it in the model folder.

    Parameters
    ----------
    images : ndarray or list of ndarray
        Planes (H, W) / (H, W, C), stacks of planes, or a list of them.
    labels : ndarray or list of ndarray
        Label images (0 background, one id per object) of the images' spatial shapes.
    label_classes : mapping or list of mappings, optional
        ``{label id: class}`` (class id or name), for all images or one per plane.
        None: one class (``class_names`` may name it).
    class_names : mapping or list, optional
        Class id -> name; every named class needs objects.
    family : {"yolo", "maskrcnn"}
        YOLO-seg through ultralytics' trainer (from ``yolo11n-seg.yaml``, nothing
        downloaded) or Mask R-CNN ResNet-50 FPN through torchvision (from scratch:
        ``weights=None, weights_backbone=None``).
    init_model : str, path or Runner, optional
        Continue from this model (a trained model's name, a checkpoint, a runner).
    epochs : int, optional
        Passes over the training images (100 for YOLO, 30 for Mask R-CNN by default).
    out : path, optional
        Folder for the trained model (default ``<model folder>/trained/<name>``;
        an existing non-empty folder is refused unless ``overwrite=True``).
    progress : callable, optional
        Called with every :class:`Progress`; ``partial`` holds the history row
        (``train_loss`` per step, ``val_ap50`` / ``val_ap`` per validation).
    store : ModelStore, optional
        The model folder.
    state : InstanceTrainingState, optional
        Its ``stop`` event ends training early, keeping the best model so far.
    **options
        :class:`~napari_segsuite.tasks.instance_training.InstanceTrainingOptions`:
        ``imgsz``, ``batch``, ``learning_rate``, ``val_fraction``, ``val_every``,
        ``arch``, ``device``, ``seed``, ``name``, ``overwrite``, ``workers``.

    Returns
    -------
    Runner
        The saved model with the best held-out mask AP50 (what :func:`segment_instances`
        takes); ``.class_names`` from the annotations, ``.training`` the record.
    """
    from napari_segsuite.tasks.instance_training import train_instances as _train

    return _train(images, labels, label_classes=label_classes, class_names=class_names, family=family,
                  init_model=init_model, out=out, store=store, state=state, progress=progress,
                  epochs=epochs, **options)


def finetune_sam(
    images,
    labels,
    model,
    *,
    steps: int = 200,
    out=None,
    progress=None,
    store: ModelStore | None = None,
    state=None,
    **options,
) -> Runner:
    """Fine-tune a SAM model's mask decoder and prompt encoder on the objects of label images.

    Parameters
    ----------
    images, labels
        As for :func:`train_instances` (classes are not used).
    model : str, path or Runner
        A Segment Anything checkpoint (registry name, file, trained name, runner).
    steps : int
        Optimiser steps (a few objects of one image each).
    out : path, optional
        A ``.pth`` file, or a folder; default ``<model folder>/trained/<name>``.
    progress : callable, optional
        Called with every :class:`Progress` (``partial``: ``train_loss``, ``val_iou``).
    store : ModelStore, optional
    state : SamFinetuneState, optional
        Its ``stop`` event ends fine-tuning early, keeping the best weights so far.
    **options
        :class:`~napari_segsuite.tasks.sam_finetune.SamFinetuneOptions`: ``objects_per_step``,
        ``learning_rate``, ``corrective_p``, ``val_fraction``, ``val_every``,
        ``train_prompt_encoder``, ``device``, ``seed``, ``name``, ``overwrite``.

    Returns
    -------
    Runner
        The fine-tuned SAM, loaded from its SAM-format checkpoint (usable by
        :class:`SamSession`, :func:`sam_automatic` and the SAM dock).
    """
    from napari_segsuite.tasks.sam_finetune import finetune_sam as _finetune

    return _finetune(images, labels, model, out=out, store=store, state=state, progress=progress, steps=steps,
                     **options)
