"""Instance segmentation as jobs: models, tiles, SAM refinement, labels and a table.

Every instance model family returns an
:class:`~napari_segsuite.models.prediction.InstancePrediction` from its
``predict_instances`` method (YOLO, Mask R-CNN, Mask2Former; box-only for
detection models). The jobs here add what is common to all of them:

- :func:`predict_plane_job` runs a model on one plane, in overlapping tiles
  when a tile size is given, and keeps every object once
  (:mod:`napari_segsuite.core.instance_tiling`);
- :func:`refine_with_sam_job` feeds the boxes of the detections as one batch
  to Segment Anything (:meth:`SamSession.predict_boxes`), keeping each
  detection's class and score;
- :func:`segment_plane_job` / :func:`segment_planes_job` put these together
  and return :class:`InstanceResult` objects: a label image (higher score
  wins where instances overlap, ids ordered by score) and a pandas table with
  one row per instance.

Jobs are generators yielding :class:`~napari_segsuite.core.progress.Progress`
(each yield is where Cancel takes effect); :func:`~napari_segsuite.core.progress.run_sync`
drains them in scripts. Nothing here imports Qt or napari.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import prepare_rgb_uint8
from napari_segsuite.core.instance_tiling import (
    Detection,
    detections_from_arrays,
    merge_tiled,
    paint_labels,
    tile_grid,
)
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Task

#: Columns of :attr:`InstanceResult.table`, in order.
TABLE_COLUMNS = (
    "label", "class_id", "class_name", "score",
    "bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1", "area",
)
DEFAULT_OVERLAP = 64
SAM_BATCH = 16


@dataclass
class InstanceParams:
    """Parameters of an instance run (each family uses those it has).

    Parameters
    ----------
    conf : float, optional
        Score threshold; None: the model's library default.
    iou : float, optional
        NMS IoU threshold (YOLO, Mask R-CNN; Mask2Former has no NMS); None:
        the library default (YOLO 0.7, torchvision's Mask R-CNN 0.5).
    mask_threshold : float
        Mask probability threshold (Mask R-CNN, Mask2Former; YOLO masks are
        binarised by ultralytics at 0.5).
    classes : list of int, optional
        Class ids to keep.
    max_det : int, optional
        Most detections per image (per tile when tiled); None: the library
        default (YOLO 300, torchvision's Mask R-CNN 100).
    imgsz : int, optional
        Model input size where the model has one (YOLO's ``imgsz``, Mask
        R-CNN's shorter side, Mask2Former's resize); the model's default when None.
    concepts : tuple of str, optional
        Concept prompts of an open-vocabulary model (SAM 3, Grounding DINO,
        OWLv2): class id k is the k-th concept.
    exemplars : (N, 4) array, optional
        SAM 3 exemplar boxes (row0, col0, row1, col1) in the plane's pixels.
    exemplar_labels : (N,) array, optional
        1 "more like this", 0 "not like this" per exemplar (default all 1).
    text_threshold : float
        Grounding DINO's text threshold (a box is kept when a caption token
        passes it).
    """

    conf: float | None = None
    iou: float | None = None
    mask_threshold: float = 0.5
    classes: list[int] | None = None
    max_det: int | None = None
    imgsz: int | None = None
    concepts: tuple[str, ...] | None = None
    exemplars: np.ndarray | None = None
    exemplar_labels: np.ndarray | None = None
    text_threshold: float = 0.25

    @property
    def prompted(self) -> bool:
        """Whether the run is driven by concepts or exemplars (an open-vocabulary model)."""
        return self.concepts is not None or self.exemplars is not None

    def as_kwargs(self) -> dict:
        """Keyword arguments of ``Runner.predict_instances`` (None values left out: the
        family's own defaults, which are its library's, apply)."""
        kwargs = {
            "mask_threshold": float(self.mask_threshold),
            "classes": None if self.classes is None else list(self.classes),
            "imgsz": None if self.imgsz is None else int(self.imgsz),
        }
        for name, kind in (("conf", float), ("iou", float), ("max_det", int)):
            if getattr(self, name) is not None:
                kwargs[name] = kind(getattr(self, name))
        if self.prompted:
            kwargs.update(
                concepts=list(self.concepts or ()), exemplars=self.exemplars,
                exemplar_labels=self.exemplar_labels, text_threshold=float(self.text_threshold),
            )
        return kwargs

    def check(self) -> None:
        """Raise :class:`InputError` for values out of range."""
        for name in ("conf", "iou", "mask_threshold", "text_threshold"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name} must lie between 0 and 1, not {v}.")
        if self.max_det is not None and int(self.max_det) < 1:
            raise InputError(f"max_det must be at least 1, not {self.max_det}.")
        if self.imgsz is not None and int(self.imgsz) < 32:
            raise InputError(f"The input size must be at least 32 pixels, not {self.imgsz}.")


def takes_concepts(runner) -> bool:
    """Whether ``runner`` is an open-vocabulary model whose classes are concepts in words."""
    return bool(getattr(runner, "takes_concepts", False))


def concept_params(runner, params: InstanceParams, classes, exemplars=None, exemplar_labels=None):
    """Fill ``params`` for ``runner``'s kind of classes; return the class names of the run.

    For an open-vocabulary runner (SAM 3, Grounding DINO, OWLv2) each entry of
    ``classes`` becomes a concept prompt (class id k = the k-th concept) and
    exemplar boxes are passed on where the model takes them; for any other
    runner ``classes`` selects among the model's own classes
    (:func:`resolve_classes`) and exemplars are refused.

    Returns
    -------
    dict of int to str
        Class id -> name for the table.

    Raises
    ------
    InputError
        Empty concepts, exemplars for a model that takes none, an
        open-vocabulary model with nothing to look for.
    """
    from napari_segsuite.models.open_vocab_common import check_concepts

    has_exemplars = exemplars is not None and np.asarray(exemplars, dtype=float).size > 0
    if not takes_concepts(runner):
        if has_exemplars:
            raise InputError(
                f"'{_runner_name(runner)}' takes no exemplar boxes; exemplars describe a concept for SAM 3."
            )
        names = dict(getattr(runner, "class_names", {}) or {})
        params.classes = resolve_classes(classes, names)
        return names
    concepts = check_concepts(classes)
    if has_exemplars and not getattr(runner, "takes_exemplars", False):
        raise InputError(
            f"'{_runner_name(runner)}' takes concepts in words, not exemplar boxes; use SAM 3 for exemplars."
        )
    if not concepts and not has_exemplars:
        what = "type concepts in words or draw exemplar boxes" if getattr(runner, "takes_exemplars", False) \
            else "type the objects to find in words"
        raise InputError(
            f"'{_runner_name(runner)}' finds what you name: {what} (classes, e.g. 'cell, nucleus')."
        )
    params.classes = None
    params.concepts = tuple(concepts)
    if has_exemplars:
        params.exemplars = np.asarray(exemplars, dtype=float).reshape(-1, 4)
        params.exemplar_labels = None if exemplar_labels is None else np.asarray(exemplar_labels).reshape(-1)
    names = dict(enumerate(concepts)) if concepts else {0: "exemplar"}
    return names


def resolve_classes(classes, class_names: Mapping[int, str]) -> list[int] | None:
    """Turn class ids and/or names into ids of the model.

    Parameters
    ----------
    classes : None, int, str or iterable of int / str
        ``"cell, 3"``, ``["cell", 3]``, ``2`` ... Names match case-insensitively.
    class_names : mapping
        The model's id -> name.

    Returns
    -------
    list of int or None
        None when ``classes`` is None or empty (keep all classes).

    Raises
    ------
    InputError
        Naming the classes the model does not have.
    """
    if classes is None:
        return None
    if isinstance(classes, str):
        items: Iterable = [c.strip() for c in classes.split(",")]
    elif isinstance(classes, int | np.integer):
        items = [int(classes)]
    else:
        items = list(classes)
    by_name = {}
    for k, v in class_names.items():
        by_name.setdefault(str(v).lower(), int(k))
    ids, unknown = [], []
    for item in items:
        if isinstance(item, str):
            if not item:
                continue
            if item.lstrip("-").isdigit():
                item = int(item)
            elif item.lower() in by_name:
                ids.append(by_name[item.lower()])
                continue
            else:
                unknown.append(repr(item))
                continue
        item = int(item)
        if class_names and item not in class_names:
            unknown.append(str(item))
        else:
            ids.append(item)
    if unknown:
        sample = ", ".join(f"{k}={v}" for k, v in list(class_names.items())[:12])
        more = ", ..." if len(class_names) > 12 else ""
        hint = ""
        if any(u.startswith("'") for u in unknown):
            hint = (" This model knows a fixed list of classes; to find objects named in any words use "
                    "SAM 3, or an open-vocabulary detector (Grounding DINO, OWLv2) with SAM.")
        raise InputError(
            f"The model has no class {', '.join(unknown)}. Its classes are: {sample}{more}.{hint}"
        )
    return sorted(set(ids)) or None


@dataclass
class InstanceResult:
    """Instances of one plane: a label image and one table row per instance.

    Attributes
    ----------
    labels : ndarray (H, W) int32
        0 background; ids from ``start`` ordered by descending score.
    table : pandas.DataFrame
        Columns :data:`TABLE_COLUMNS` (bbox: the detector's box, max exclusive;
        area: the instance's pixels in ``labels``).
    detections : list of Detection
        ``detections[k]`` has id ``table.label[k]``.
    message : str
        A note for the user (e.g. that nothing was found).
    provenance : dict
        What made the result (task, model, parameters); filled by the API.
    """

    labels: np.ndarray
    table: Any
    detections: list[Detection] = field(default_factory=list)
    message: str = ""
    provenance: dict = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether nothing was found."""
        return len(self.table) == 0

    def features(self) -> dict[int, dict]:
        """``{label: {column: value}}`` for ``layers.write_plane(extra_features=...)``."""
        rows = self.table.drop(columns=["area"]).to_dict("records")
        return {int(r["label"]): r for r in rows}

    def with_offset(self, offset: int) -> InstanceResult:
        """The same result with every id increased by ``offset`` (for stacks and nD layers)."""
        if offset == 0:
            return self
        labels = self.labels.copy()
        labels[labels != 0] += offset
        table = self.table.copy()
        table["label"] = table["label"] + offset
        return InstanceResult(labels, table, self.detections, self.message, self.provenance)


def instance_table(labels: np.ndarray, kept: Sequence[Detection], class_names: Mapping[int, str], start: int = 1):
    """The pandas table of painted detections (``kept[k]`` has id ``start + k``)."""
    import pandas as pd

    counts = np.bincount(labels.ravel(), minlength=start + len(kept)) if labels.size else np.zeros(start + len(kept))
    rows = []
    for k, d in enumerate(kept):
        rows.append({
            "label": start + k,
            "class_id": int(d.class_id),
            "class_name": str(class_names.get(int(d.class_id), f"class_{d.class_id}")),
            "score": float(d.score),
            "bbox_row0": float(d.box[0]), "bbox_col0": float(d.box[1]),
            "bbox_row1": float(d.box[2]), "bbox_col1": float(d.box[3]),
            "area": int(counts[start + k]),
        })
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return table.astype({"label": "int64", "class_id": "int64", "score": "float64", "area": "int64"})


def build_result(
    detections: list[Detection], shape: tuple[int, int], class_names: Mapping[int, str], start: int = 1
) -> InstanceResult:
    """Labels and table from detections in image coordinates."""
    labels, kept = paint_labels(detections, shape, start)
    result = InstanceResult(labels, instance_table(labels, kept, class_names, start), kept)
    if not kept:
        result.message = "No instances found. Lower the score threshold or check the classes."
    return result


# -- jobs ---------------------------------------------------------------------


def _runner_name(runner) -> str:
    return getattr(runner, "name", type(runner).__name__)


def check_instance_model(runner, *, allow_boxes: bool) -> None:
    """Raise a user-facing error when ``runner`` can give neither masks nor (allowed) boxes."""
    tasks = tuple(getattr(runner, "tasks", ()))
    if Task.INSTANCE in tasks:
        return
    if allow_boxes and Task.DETECTION in tasks:
        return
    if Task.DETECTION in tasks:
        raise InputError(
            f"'{_runner_name(runner)}' is a detection model: it gives boxes, not masks. "
            "Refine its boxes with SAM (detect_then_segment, or 'refine masks with SAM' in the widget)."
        )
    raise InputError(
        f"'{_runner_name(runner)}' does {', '.join(tasks) or 'no'} segmentation, not instance segmentation. "
        "Choose a YOLO-seg, Mask R-CNN or Mask2Former instance checkpoint."
    )


def predict_plane_job(
    runner,
    rgb: np.ndarray,
    params: InstanceParams,
    *,
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    progress: tuple[int, int] = (0, 1),
) -> Generator[Progress, None, list[Detection]]:
    """Run ``runner.predict_instances`` on a (H, W, 3) uint8 plane, tiled when ``tile_size`` is set.

    Parameters
    ----------
    progress : (int, int)
        (steps done before, total steps) of an outer job, for the progress bar.

    Returns
    -------
    list of Detection
        In image coordinates, each object once.
    """
    shape = rgb.shape[:2]
    tiles = tile_grid(shape, tile_size, min(overlap, (tile_size or 1) - 1) if tile_size else 0)
    if len(tiles) > 1 and params.exemplars is not None:
        raise InputError(
            "Exemplar boxes describe a concept on the whole plane, so they cannot be used with tiles: "
            "set the tile size to 0, or give the concept in words."
        )
    done, total = progress
    found: list[Detection] = []
    for t, tile in enumerate(tiles):
        yield Progress(done, total, f"Tile {t + 1}/{len(tiles)}" if len(tiles) > 1 else "Predicting")
        crop = np.ascontiguousarray(rgb[tile.slices])
        pred = runner.predict_instances(crop, **params.as_kwargs())
        found.extend(detections_from_arrays(
            pred.boxes, pred.scores, pred.class_ids, pred.masks,
            offset=(tile.r0, tile.c0), tile=t, image_shape=shape,
        ))
    return merge_tiled(found, tiles)


def refine_with_sam_job(session, rgb: np.ndarray, detections: list[Detection], batch: int = SAM_BATCH):
    """Masks from SAM for the detections' boxes (one batch per ``batch`` boxes).

    Each new detection keeps the detector's box, class and score.

    Parameters
    ----------
    session : SamSession
        Its embedding cache is used for images seen before.
    rgb : (H, W, 3) uint8
    detections : list of Detection

    Returns
    -------
    list of Detection
    """
    from napari_segsuite.core.progress import subjob

    yield from subjob(session.set_image_job(rgb), prefix="SAM: ")
    out: list[Detection] = []
    for i in range(0, len(detections), batch):
        chunk = detections[i: i + batch]
        yield Progress(i, len(detections), f"SAM: masks {i + 1}-{i + len(chunk)} of {len(detections)}")
        boxes = np.array([d.box for d in chunk], dtype=np.float64)
        masks, _ = session.predict_boxes(boxes)
        out.extend(detections_from_arrays(
            boxes, [d.score for d in chunk], [d.class_id for d in chunk], masks, image_shape=rgb.shape[:2],
        ))
    return out


def detections_from_boxes(boxes, scores=None, class_ids=None, shape=None) -> list[Detection]:
    """Box-only detections from (N, 4) (row0, col0, row1, col1) boxes (e.g. a Shapes layer)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    scores = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float64)
    class_ids = np.zeros(n, dtype=np.int64) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
    return detections_from_arrays(boxes, scores, class_ids, None, image_shape=shape)


def segment_plane_job(
    image2d: np.ndarray,
    runner=None,
    params: InstanceParams | None = None,
    *,
    sam=None,
    boxes: list[Detection] | None = None,
    class_names: Mapping[int, str] | None = None,
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    start: int = 1,
    progress: tuple[int, int] = (0, 1),
) -> Generator[Progress, None, InstanceResult]:
    """Instances of one 2D plane.

    Parameters
    ----------
    image2d : ndarray
        (H, W) or (H, W, C) of any dtype (see :func:`prepare_rgb_uint8`).
    runner : Runner, optional
        An instance model (or a detection model when ``sam`` is given).
    params : InstanceParams
    sam : SamSession, optional
        Refine the detections' masks (or make masks for boxes) with SAM.
    boxes : list of Detection, optional
        Boxes given instead of a model (they need ``sam``).
    class_names : mapping, optional
        Defaults to the runner's.
    tile_size, overlap
        Tiled inference (see :func:`predict_plane_job`).
    start : int
        The first label id.
    """
    params = params or InstanceParams()
    rgb = prepare_rgb_uint8(image2d)
    if boxes is None and runner is None:
        raise InputError("Give a model, or boxes to segment with SAM.")
    if boxes is not None:
        if sam is None:
            raise InputError("Boxes alone give no masks: segment them with a SAM model.")
        detections = list(boxes)
    else:
        check_instance_model(runner, allow_boxes=sam is not None)
        detections = yield from predict_plane_job(
            runner, rgb, params, tile_size=tile_size, overlap=overlap, progress=progress,
        )
    if sam is not None and detections:
        detections = yield from refine_with_sam_job(sam, rgb, detections)
    names = dict(class_names if class_names is not None else getattr(runner, "class_names", {}) or {})
    return build_result(detections, rgb.shape[:2], names, start)


def segment_planes_job(planes: Sequence[np.ndarray] | Iterable[np.ndarray], n_planes: int, **kwargs):
    """:func:`segment_plane_job` for each plane of a stack; ids continue from plane to plane.

    Returns
    -------
    list of InstanceResult
        One per plane; plane ``k``'s ids start after plane ``k - 1``'s.
    """
    results = []
    start = int(kwargs.pop("start", 1))
    for k, plane in enumerate(planes):
        yield Progress(k, n_planes, f"Plane {k + 1}/{n_planes}")
        res = yield from segment_plane_job(plane, start=start, progress=(k, n_planes), **kwargs)
        results.append(res)
        start += len(res.table)
    yield Progress(n_planes, n_planes, "Done")
    return results


def combine_planes(results: Sequence[InstanceResult]) -> InstanceResult:
    """One result for a stack: labels (Z, H, W) and one table with a ``plane`` column."""
    import pandas as pd

    tables = []
    for k, res in enumerate(results):
        t = res.table.copy()
        t.insert(0, "plane", k)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["plane", *TABLE_COLUMNS])
    labels = np.stack([r.labels for r in results]) if results else np.zeros((0, 0, 0), dtype=np.int32)
    detections = [d for r in results for d in r.detections]
    message = "" if len(table) else "No instances found in any plane. Lower the score threshold or check the classes."
    return InstanceResult(labels, table, detections, message)


def split_planes(image: np.ndarray, stack: bool | None = None) -> tuple[list[np.ndarray], bool]:
    """The 2D planes of ``image``: (H, W), (H, W, 3|4) or a stack (Z, H, W) / (Z, H, W, C).

    Parameters
    ----------
    stack : bool, optional
        Whether the first axis is a stack axis; guessed when None (3D arrays
        whose last axis is not 3 or 4 long, and 4D arrays, are stacks).
    """
    arr = np.asarray(image)
    if stack is None:
        stack = arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] not in (3, 4))
    if stack:
        if arr.ndim not in (3, 4):
            raise InputError(f"A stack must be (Z, H, W) or (Z, H, W, C), not {arr.shape}.")
        return [arr[k] for k in range(arr.shape[0])], True
    if arr.ndim not in (2, 3):
        raise InputError(f"Expected an image (H, W) or (H, W, C), or a stack; got shape {arr.shape}.")
    return [arr], False
