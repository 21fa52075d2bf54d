"""Batch tasks: plain functions ``(image2d, runner, **params) -> (labels2d, table)``.

A task segments one 2D plane (``(H, W)`` or ``(H, W, C)``, any numeric dtype) with a loaded
runner (None for tasks that need no model) and returns an ``int32`` label image of the same
height and width and a pandas DataFrame with one row per label (column ``label`` holds the id).

The :class:`TaskSpec` says how the engine treats the labels when it stitches chunks:

- ``kind="semantic"``: labels are class ids; chunks are stitched, nothing is renumbered.
- ``kind="instance"``: labels are object ids; each chunk's ids are offset so they are unique
  and objects seen in two chunks are merged (only objects of the same ``class_id`` when the
  table has that column).

Register a task with :func:`register_task` (a task registered under an existing name
replaces it). Every task's ``--param`` names are the fields of its parameter dataclasses
(:class:`SemanticBatchParams`, ``PanopticParams``, ``InstanceParams`` with
:class:`ModelTiling` and :class:`InstanceBatchExtras`, ``AutoParams``,
:class:`ThresholdParams`) and are checked against them (:func:`param_names`,
:func:`check_params`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.labels import LABEL_DTYPE
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.tasks.instance import InstanceParams


@dataclass(frozen=True)
class TaskSpec:
    """A registered batch task.

    Attributes
    ----------
    name : str
        The task's name on the command line (``semantic``, ``panoptic`` ...).
    func : callable
        ``func(image2d, runner, **params) -> (labels2d int32, DataFrame)``.
    kind : str
        ``"semantic"`` (class ids) or ``"instance"`` (object ids), see the module docstring.
    needs_model : bool
        Whether ``--model`` is required (the runner must do ``model_task``).
    model_task : str
        The runner task checked with ``Runner.require`` (empty: the task checks its model itself).
    help : str
        One line for ``--help``.
    normalize : bool
        Whether a chunked non-uint8 plane is mapped to uint8 with one global percentile
        scaling first (models that normalise each input would otherwise scale chunks
        differently); False for tasks whose parameters are in the image's units.
    """

    name: str
    func: Callable
    kind: Task = Task.INSTANCE
    needs_model: bool = True
    model_task: str = ""
    help: str = ""
    normalize: bool = True


TASKS: dict[str, TaskSpec] = {}


def register_task(
    name: str, func: Callable, *, kind: Task = Task.INSTANCE, needs_model: bool = True,
    model_task: str | None = None, help: str = "", normalize: bool = True,
) -> TaskSpec:
    """Register (or replace) the batch task ``name``; returns its :class:`TaskSpec`."""
    if kind not in (Task.SEMANTIC, Task.INSTANCE):
        raise ValueError(f"kind must be 'semantic' or 'instance', not {kind!r}")
    spec = TaskSpec(name, func, kind, needs_model, name if model_task is None else model_task, help, normalize)
    TASKS[name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; an :class:`InputError` listing the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"Unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}.") from None


def param_names(params_class, *, exclude=()) -> tuple[str, ...]:
    """The ``--param`` names of a task: the fields of its parameter dataclass."""
    return tuple(f.name for f in fields(params_class) if f.name not in exclude)


def check_params(task: str, params: dict, known) -> None:
    """Raise a user-facing error naming the parameters ``task`` does not take."""
    unknown = set(params) - set(known)
    if unknown:
        raise InputError(f"{task}: unknown parameters {sorted(unknown)}; known: {', '.join(sorted(known))}.")


@dataclass(frozen=True)
class ModelTiling:
    """Tiled inference inside one plane or chunk (``--param tile_size=... overlap=...``).

    Attributes
    ----------
    tile_size : int, optional
        Side of the model's tiles in pixels; absent or 0: the model sees the plane (or chunk) whole.
    overlap : int, optional
        Pixels shared by neighbouring tiles; absent: the task's default.
    """

    tile_size: int | None = None
    overlap: int | None = None


@dataclass(frozen=True)
class SemanticBatchParams(ModelTiling):
    """The ``semantic`` task's parameters.

    Attributes
    ----------
    background_zero : bool
        True: label = class id (class 0 is background); False: label = class id + 1, every
        pixel labelled, as in the widget.
    """

    background_zero: bool = True


@dataclass(frozen=True)
class InstanceBatchExtras(ModelTiling):
    """What the ``instance`` task takes besides ``InstanceParams``' plain fields.

    Attributes
    ----------
    sam : str, optional
        A prompt model (registry name or path) whose masks replace the model's for its boxes.
    """

    sam: str | None = None


@dataclass(frozen=True)
class ThresholdParams:
    """The ``threshold`` task's parameters.

    Attributes
    ----------
    level : float, optional
        Threshold in the image's units; absent: Otsu's threshold of the plane.
    min_size : int
        Components smaller than this many pixels are dropped.
    """

    level: float | None = None
    min_size: int = 0


def _opt(value, kind):
    """``kind(value)``, or None for an absent or empty value (the model's default then applies)."""
    return None if value is None or (isinstance(value, str) and not value.strip()) else kind(value)


def _table(rows: dict) -> pd.DataFrame:  # noqa: F821 - pandas is imported lazily
    import pandas as pd

    return pd.DataFrame(rows)


# -- semantic (argmax of the runner's blended logits) ----------------------------------------


def semantic_task(image, runner, **params):
    """Semantic segmentation: argmax of ``runner.predict_semantic``; one row per class present.

    Parameters (``--param``): ``background_zero`` (default true: label = class id, so class 0
    is background; false: label = class id + 1, every pixel labelled, as in the widget);
    ``tile_size`` and ``overlap``: when ``tile_size`` is given, the plane goes through
    :func:`napari_segsuite.tasks.semantic.segment_semantic_job` (tiles of that side blended
    over ``overlap`` pixels; 0: one tile; the widget's path), else the model sees the whole
    plane (or chunk) at once.
    """
    from napari_segsuite.core.image import prepare_rgb_uint8

    check_params(Task.SEMANTIC, params, param_names(SemanticBatchParams))
    background_zero = _as_bool(params.get("background_zero", SemanticBatchParams.background_zero))
    runner.require(Task.SEMANTIC)
    plane = np.asarray(image)
    if "tile_size" in params:
        from napari_segsuite.core.progress import run_sync
        from napari_segsuite.tasks.semantic import DEFAULT_OVERLAP, segment_semantic_job

        result = run_sync(segment_semantic_job(
            plane, runner, tile_size=int(params["tile_size"] or 0),
            overlap=int(params.get("overlap", DEFAULT_OVERLAP)),
        ))
        plus_one = np.asarray(result.labels).astype(LABEL_DTYPE)  # class id + 1
        labels = plus_one - 1 if background_zero else plus_one
        return labels, semantic_table(labels, runner.class_names, background_zero=background_zero)
    if runner.family != Family.UNET:  # U-Nets normalise with their own config
        plane = prepare_rgb_uint8(plane)
    logits = runner.predict_semantic(plane)
    classes = np.argmax(logits, axis=0).astype(LABEL_DTYPE)
    labels = classes if background_zero else classes + 1
    return labels, semantic_table(labels, runner.class_names, background_zero=background_zero)


def semantic_table(labels: np.ndarray, class_names: dict, *, background_zero: bool = True):
    """One row per class present: label, class_id, class_name, area."""
    counts = np.bincount(np.asarray(labels).ravel().astype(np.int64))
    ids = [int(i) for i in np.nonzero(counts)[0] if i != 0]
    class_ids = [i if background_zero else i - 1 for i in ids]
    return _table({
        "label": np.asarray(ids, dtype=np.int64),
        "class_id": np.asarray(class_ids, dtype=np.int64),
        "class_name": [class_names.get(c, f"class_{c}") for c in class_ids],
        "area": np.asarray([int(counts[i]) for i in ids], dtype=np.int64),
    })


# -- panoptic --------------------------------------------------


def panoptic_task(image, runner, **params):
    """Panoptic segmentation with :func:`napari_segsuite.tasks.panoptic.panoptic_job`."""
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.tasks.panoptic import PanopticParams, panoptic_job

    allowed = set(param_names(PanopticParams))
    check_params(Task.PANOPTIC, params, allowed)
    kwargs = {k: float(v) for k, v in params.items() if k in allowed - {"label_ids_to_fuse", "label_divisor"}}
    if "label_ids_to_fuse" in params:
        value = params["label_ids_to_fuse"]
        kwargs["label_ids_to_fuse"] = [int(v) for v in (value.split(",") if isinstance(value, str) else value) if str(v) != ""]
    if "label_divisor" in params:
        kwargs["label_divisor"] = int(params["label_divisor"])
    if "label_ids_to_fuse" in kwargs:
        kwargs["label_ids_to_fuse"] = tuple(kwargs["label_ids_to_fuse"])
    result = run_sync(panoptic_job(runner, image, PanopticParams(**kwargs)))
    table = result.table
    return result.labels.astype(LABEL_DTYPE), table


# -- instance (YOLO-seg, Mask R-CNN, Mask2Former, concept models) ----------------------------------

#: what ``--param`` may set for ``instance``: the fields of ``InstanceParams`` that take plain
#: values (concepts go through ``classes``), plus tiling and the SAM refinement
INSTANCE_PARAMS = (
    *param_names(InstanceParams, exclude=("concepts", "exemplars", "exemplar_labels")),
    *param_names(InstanceBatchExtras),
)
_PROMPT_RUNNERS: dict = {}
_PROMPT_RUNNERS_LOCK = __import__("threading").Lock()


def _prompt_session(spec, device: str):
    """A fresh session on a prompt model loaded once per process (sessions hold the current image)."""
    from napari_segsuite.models.base import load_model
    from napari_segsuite.tasks.sam_session import SamSession

    key = (str(spec), device)
    with _PROMPT_RUNNERS_LOCK:
        runner = _PROMPT_RUNNERS.get(key)
        if runner is None:
            runner = _PROMPT_RUNNERS[key] = load_model(spec, device)
    return SamSession(runner, device=device)


def instance_task(image, runner, **params):
    """Instance segmentation with :func:`napari_segsuite.tasks.instance.segment_plane_job`.

    Parameters (``--param``): ``conf``, ``iou``, ``mask_threshold``, ``classes`` (ids and/or
    names, comma-separated; for SAM 3, Grounding DINO and OWLv2 the concepts to find, in
    words), ``max_det``, ``imgsz`` (see :class:`~napari_segsuite.tasks.instance.InstanceParams`),
    ``tile_size`` and ``overlap`` (the model's own tiled inference inside one plane or chunk),
    ``sam`` (a prompt model, registry name or path: the masks of the model's boxes come from
    it, as in ``api.detect_then_segment``; needed for box-only detectors) and
    ``text_threshold`` (Grounding DINO).

    Returns
    -------
    (ndarray, pandas.DataFrame)
        Labels ordered by score (1 = best) and one row per instance: ``label``, ``class_id``,
        ``class_name``, ``score``, the detector's box (``bbox_row0`` ... in the plane's pixels,
        max exclusive) and ``area``.
    """
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.tasks.instance import (
        InstanceParams,
        concept_params,
        segment_plane_job,
        takes_concepts,
    )

    check_params(Task.INSTANCE, params, INSTANCE_PARAMS)
    p = InstanceParams(
        conf=_opt(params.get("conf"), float), iou=_opt(params.get("iou"), float),
        mask_threshold=float(params.get("mask_threshold", 0.5)),
        max_det=_opt(params.get("max_det"), int), imgsz=_opt(params.get("imgsz"), int) or None,  # 0: the model's
        text_threshold=float(params.get("text_threshold", 0.25)),
    )
    classes = params.get("classes")
    names = concept_params(runner, p, classes if takes_concepts(runner) else _as_list(classes))
    p.check()
    tile = int(params.get("tile_size") or 0) or None
    sam = _prompt_session(params["sam"], getattr(runner, "device", "cpu")) if params.get("sam") else None
    result = run_sync(segment_plane_job(
        np.asarray(image), runner, p, sam=sam, class_names=names, tile_size=tile,
        overlap=int(params.get("overlap", 64)),
    ))
    table = result.table
    return result.labels.astype(LABEL_DTYPE), table


# -- sam-auto (SAM / SAM 2.1 "segment everything") ---------------------------------


def sam_auto_task(image, runner, **params):
    """Class-agnostic masks of a whole plane with SAM or SAM 2.1 (segment everything).

    Parameters (``--param``) are those of :class:`~napari_segsuite.tasks.sam_automatic.AutoParams`
    (``segment_anything.SamAutomaticMaskGenerator``'s names: ``points_per_side``,
    ``pred_iou_thresh``, ``stability_score_thresh``, ``box_nms_thresh``, ``crop_n_layers``,
    ``min_mask_region_area`` ..., plus ``tile_size`` / ``tile_overlap``); ``point_grids`` cannot
    be given here.

    Returns
    -------
    (ndarray, pandas.DataFrame)
        Labels without overlaps (smaller masks on top) and one row per label: ``label``,
        ``area``, bounding box, ``predicted_iou``, ``stability_score``, ``mask_area`` ...
        Coordinates in the table (``mask_bbox_*``, ``point_*``, ``crop_box_xyxy``) are those of
        the plane, or of the chunk's window for chunked images; ``area`` and ``bbox_*`` are
        always recomputed for the whole plane.
    """
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.tasks.sam_automatic import AutoParams, automatic_job
    from napari_segsuite.tasks.sam_session import SamSession

    check_params("sam-auto", params, param_names(AutoParams, exclude=("point_grids",)))
    auto = AutoParams(**params)
    # A session per call: it holds the current image's embedding, so threads sharing the
    # runner must not share it; the model itself is loaded once per worker.
    session = SamSession(runner, device=runner.device)
    result = run_sync(automatic_job(session, np.asarray(image), auto))
    table = result.table
    return result.labels.astype(LABEL_DTYPE), table


def _as_list(value):
    """``"a, 3"`` / ``3`` / a list -> what :func:`resolve_classes` takes (None when empty)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [int(value)]
    return value


# -- threshold (no model: Otsu or a fixed level, then connected components) -----------------


def threshold_task(image, runner=None, **params):
    """Objects = connected components above a threshold (no model; cheap, for huge images).

    Parameters (``--param``) are those of :class:`ThresholdParams`: ``level`` (a number in
    the image's units; default: Otsu's threshold of the plane), ``min_size`` (pixels; smaller
    components are dropped).
    """
    from scipy import ndimage

    check_params("threshold", params, param_names(ThresholdParams))
    plane = np.asarray(image)
    if plane.ndim == 3:
        plane = plane.mean(axis=-1)
    if "level" in params:
        level = float(params["level"])
    else:
        from skimage.filters import threshold_otsu

        level = float(threshold_otsu(plane)) if plane.min() != plane.max() else np.inf
    labels, n = ndimage.label(plane > level)
    labels = labels.astype(LABEL_DTYPE)
    min_size = int(params.get("min_size", ThresholdParams.min_size))
    if min_size > 1 and n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    return labels, instance_table(labels)


def instance_table(labels: np.ndarray):
    """One row per object: label, area, bounding box (``bbox_0_min`` ...)."""
    from napari_segsuite.core.labels import label_table

    cols = label_table(labels)
    return _table({"label": cols.pop("label"), **cols})


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


register_task(
    Task.SEMANTIC, semantic_task, kind=Task.SEMANTIC,
    help="a class per pixel (argmax of a semantic model: torchvision DeepLabV3/LRASPP/FCN, U-Net)",
)
register_task(
    Task.PANOPTIC, panoptic_task, kind=Task.INSTANCE,
    help="things and stuff segments (Mask2Former panoptic); --param threshold=0.5 ...",
)
register_task(
    # no model_task: the task checks its model itself (a box-only detector is fine with sam=...)
    Task.INSTANCE, instance_task, kind=Task.INSTANCE, model_task="",
    help="one id per object (YOLO-seg, Mask R-CNN, Mask2Former instance, SAM 3 concepts, Grounding DINO / "
         "OWLv2 + --param sam=MODEL); --param conf=0.25 classes=cell,nucleus ...",
)
register_task(
    "sam-auto", sam_auto_task, kind=Task.INSTANCE, model_task=Task.AUTOMATIC,
    help="SAM / SAM 2.1 segment everything; --param points_per_side=32 pred_iou_thresh=0.88 ...",
)
register_task(
    "threshold", threshold_task, kind=Task.INSTANCE, needs_model=False, normalize=False,
    help="connected components above a threshold (no model); --param level=N min_size=N",
)
