"""Comparing a predicted label image with a ground-truth label image (pure numpy).

Three families of scores, all computed from one sparse overlap table between
the segments of the two images (a joint histogram of the segment ids, so the
cost is one pass over the pixels whatever the number of segments):

- **semantic**: per-class IoU and Dice of the class maps;
- **instance**: precision, recall and F1 at IoU 0.5 with the lists of matched,
  missed (false negative) and spurious (false positive) objects, and COCO's
  average precision AP@0.5 and AP@[0.5:0.95];
- **panoptic**: panoptic quality PQ = SQ x RQ per class and overall
  (Kirillov et al., "Panoptic Segmentation", CVPR 2019).

Conventions
-----------
- Label 0 is background (unlabelled) in both images; every other id is one
  segment. Ids may be any non-negative integers, int64 and uint64 included
  (ids beyond int32 are fine: they are renumbered internally).
- Classes: each image may come with ``{segment id: class id}``; segments
  without a class, or images without a mapping, are class-agnostic (class 0).
  Predictions only ever match ground truth of the same class.
- Matching for precision/recall/F1 and PQ: a predicted and a true segment
  match iff their IoU is strictly greater than 0.5 (the PQ definition). Within
  one label image segments do not overlap, so such a match is unique and no
  assignment algorithm (greedy or Hungarian) is needed: both give the same pairs.
- AP follows pycocotools' ``COCOeval`` (``iouType="segm"``, area range "all")
  exactly: per class, detections sorted by decreasing score (stable), each
  matched greedily to the unmatched ground truth with the highest IoU >= t, for
  t = 0.50, 0.55, ..., 0.95; precision made monotone and read at 101 recall
  points; classes without ground truth are left out of the mean. ``max_dets``
  caps the detections per class like COCO's ``maxDets`` (None: no cap; COCO's
  default is 100). When predictions have no scores, they are ranked by
  decreasing area, then increasing id.
- PQ: void and crowd regions are not handled (label 0 of the ground truth is
  background, so a prediction there is a false positive); the overall PQ, SQ
  and RQ are the means over classes that occur in the prediction or the ground
  truth, like panopticapi's ``pq_average``.
- Empty inputs give numbers, not NaN: when both images are empty every score is
  1.0 (nothing to find, nothing found); when only one is empty precision,
  recall, F1, AP, PQ, SQ and RQ are 0.0. A class present in only one image has
  IoU and Dice 0.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from napari_segsuite.core.errors import InputError

#: The IoU thresholds of COCO's AP@[0.5:0.95] (the same float values as pycocotools).
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
#: The 101 recall points of COCO's interpolated precision.
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
#: Match threshold of precision/recall/F1 and PQ (IoU strictly above it).
MATCH_IOU = 0.5


def check_label_image(labels, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an integer ndarray, or raise a user-facing error.

    Booleans become 0/1; floats are accepted when they hold whole numbers.
    Negative ids are refused.
    """
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"The {name} hold non-integer values; a label image holds whole ids.")
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"The {name} have dtype {arr.dtype}; a label image holds integer ids.")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise InputError(f"The {name} hold negative ids (e.g. {int(arr.min())}); ids must be >= 0 (0 is background).")
    return arr


def check_same_shape(pred: np.ndarray, gt: np.ndarray) -> None:
    """Raise a user-facing error when the prediction and the ground truth differ in shape."""
    if pred.shape != gt.shape:
        raise InputError(
            f"The prediction has shape {pred.shape} but the ground truth has shape {gt.shape}; "
            "compare label images of the same size (the same plane of the same image)."
        )


@dataclass
class Overlap:
    """Sparse overlap between the segments of a prediction and a ground truth.

    Attributes
    ----------
    pred_ids, gt_ids : ndarray
        The non-zero ids of each image, sorted (dtype of the input).
    pred_area, gt_area : ndarray of int64
        Pixels of each segment.
    pairs : ndarray (K, 2) of intp
        Indices into ``pred_ids`` and ``gt_ids`` of every pair that shares pixels.
    inter : ndarray (K,) of int64
        The shared pixels of each pair.
    """

    pred_ids: np.ndarray
    gt_ids: np.ndarray
    pred_area: np.ndarray
    gt_area: np.ndarray
    pairs: np.ndarray
    inter: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """IoU of every pair in :attr:`pairs` (float64)."""
        union = self.pred_area[self.pairs[:, 0]] + self.gt_area[self.pairs[:, 1]] - self.inter
        return self.inter / np.maximum(union, 1)

    def iou_matrix(self) -> np.ndarray:
        """Dense IoU matrix (n_pred, n_gt); zero where segments do not touch."""
        out = np.zeros((len(self.pred_ids), len(self.gt_ids)))
        out[self.pairs[:, 0], self.pairs[:, 1]] = self.iou
        return out


#: Largest id for which ids are renumbered with a lookup table (else with a sort).
DENSE_ID_LIMIT = 1 << 24


def _compact(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids without 0, flat index image with 0 for background and 1.. for ids, areas).

    Ids up to :data:`DENSE_ID_LIMIT` go through a bincount and a lookup table
    (one pass); larger ids (int64, uint64) through ``np.unique`` (a sort).
    """
    flat = arr.ravel()
    top = int(flat.max(initial=0))
    if top <= DENSE_ID_LIMIT:
        counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids != 0]
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        return ids.astype(arr.dtype), lut[flat], counts[ids].astype(np.int64)
    ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if len(ids) and ids[0] == 0:
        return ids[1:], inverse, counts[1:].astype(np.int64)
    return ids, inverse + 1, counts.astype(np.int64)


def overlap(pred, gt) -> Overlap:
    """The sparse overlap table of two label images of the same shape.

    One joint histogram of the (renumbered) id pairs over all pixels.
    """
    pred = check_label_image(pred, "predicted labels")
    gt = check_label_image(gt, "ground-truth labels")
    check_same_shape(pred, gt)
    pred_ids, p, pred_area = _compact(pred)
    gt_ids, g, gt_area = _compact(gt)
    n_gt = max(len(gt_ids), 1)
    both = (p > 0) & (g > 0)
    key = (p[both] - 1) * n_gt + (g[both] - 1)
    if len(pred_ids) * n_gt <= max(DENSE_ID_LIMIT, key.size):
        counts = np.bincount(key, minlength=len(pred_ids) * n_gt)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(key, return_counts=True)
    pairs = np.stack([keys // n_gt, keys % n_gt], axis=1).astype(np.intp).reshape(-1, 2)
    return Overlap(pred_ids, gt_ids, pred_area, gt_area, pairs, inter.astype(np.int64))


def _class_array(ids: np.ndarray, classes: Mapping | None) -> np.ndarray:
    if not classes:
        return np.zeros(len(ids), dtype=np.int64)
    return np.array([int(classes.get(int(i), 0)) for i in ids], dtype=np.int64)


def _safe(num: float, den: float, both_empty: bool) -> float:
    if den > 0:
        return float(num) / float(den)
    return 1.0 if both_empty else 0.0


# -- semantic -------------------------------------------------------------------


def semantic_scores(
    pred_classes_image,
    gt_classes_image,
    *,
    class_names: Mapping[int, str] | None = None,
) -> list[dict]:
    """Per-class IoU and Dice of two class maps (one class id per pixel).

    Parameters
    ----------
    pred_classes_image, gt_classes_image : ndarray
        Class maps of the same shape.
    class_names : mapping, optional
        Class id -> name for the ``class_name`` column.

    Class 0 is background (unlabelled) and is not scored.

    Returns
    -------
    list of dict
        One row per class present in either map: ``class_id``, ``class_name``,
        ``iou``, ``dice``, ``pred_pixels``, ``gt_pixels``, ``intersection``.
    """
    ov = overlap(pred_classes_image, gt_classes_image)
    names = class_names or {}
    p_area = dict(zip(ov.pred_ids.tolist(), ov.pred_area.tolist(), strict=True))
    g_area = dict(zip(ov.gt_ids.tolist(), ov.gt_area.tolist(), strict=True))
    inter: dict[int, int] = {}
    for (i, j), n in zip(ov.pairs.tolist(), ov.inter.tolist(), strict=True):
        if ov.pred_ids[i] == ov.gt_ids[j]:
            inter[int(ov.pred_ids[i])] = int(n)
    classes = sorted(set(p_area) | set(g_area))
    rows = []
    for c in classes:
        a, b, i = p_area.get(c, 0), g_area.get(c, 0), inter.get(c, 0)
        rows.append({
            "class_id": int(c),
            "class_name": str(names.get(c, c)),
            "iou": i / (a + b - i) if a + b - i else 1.0,
            "dice": 2 * i / (a + b) if a + b else 1.0,
            "pred_pixels": int(a),
            "gt_pixels": int(b),
            "intersection": int(i),
        })
    return rows


def class_map(labels, classes: Mapping[int, int] | None, offset: int = 1) -> np.ndarray:
    """Turn a segment image into a class image: ``class id + offset`` per pixel, 0 for background.

    Segments missing from ``classes`` (or all, when it is None) get class 0.
    """
    arr = check_label_image(labels)
    ids, inverse = np.unique(arr.ravel(), return_inverse=True)
    values = np.array(
        [0 if i == 0 else int((classes or {}).get(int(i), 0)) + offset for i in ids], dtype=np.int64
    )
    return values[inverse.reshape(-1)].reshape(arr.shape)


def _semantic_from_overlap(ov: Overlap, p_cls: np.ndarray, g_cls: np.ndarray) -> dict[int, dict]:
    """Per-class IoU and Dice of the class maps, summed from the segment overlap (no second pass)."""
    out = {}
    same = p_cls[ov.pairs[:, 0]] == g_cls[ov.pairs[:, 1]] if len(ov.pairs) else np.zeros(0, bool)
    for c in sorted(set(p_cls.tolist()) | set(g_cls.tolist())):
        a = int(ov.pred_area[p_cls == c].sum())
        b = int(ov.gt_area[g_cls == c].sum())
        i = int(ov.inter[same & (p_cls[ov.pairs[:, 0]] == c)].sum()) if len(ov.pairs) else 0
        out[c] = {"iou": i / (a + b - i) if a + b - i else 1.0, "dice": 2 * i / (a + b) if a + b else 1.0}
    return out


# -- instance matching ------------------------------------------------------------


@dataclass
class Matching:
    """Pairs of predicted and true segments with IoU > threshold (same class).

    Attributes
    ----------
    matched : list of (pred id, gt id, iou)
    spurious : list of int
        Predicted ids with no match (false positives).
    missed : list of int
        Ground-truth ids with no match (false negatives).
    """

    matched: list[tuple[int, int, float]] = field(default_factory=list)
    spurious: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)

    @property
    def tp(self) -> int:
        return len(self.matched)

    @property
    def fp(self) -> int:
        return len(self.spurious)

    @property
    def fn(self) -> int:
        return len(self.missed)


def match_segments(ov: Overlap, pred_cls: np.ndarray, gt_cls: np.ndarray, threshold: float = MATCH_IOU) -> Matching:
    """Match segments whose IoU is strictly above ``threshold`` (>= 0.5 makes them unique).

    For thresholds below 0.5 a segment could match several; the pairs are then
    taken greedily by decreasing IoU.
    """
    iou = ov.iou
    ok = iou > threshold
    if len(ov.pairs):
        ok &= pred_cls[ov.pairs[:, 0]] == gt_cls[ov.pairs[:, 1]]
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-iou[idx], kind="stable")]
    used_p, used_g, matched = set(), set(), []
    for k in idx:
        i, j = (int(v) for v in ov.pairs[k])
        if i in used_p or j in used_g:
            continue
        used_p.add(i)
        used_g.add(j)
        matched.append((int(ov.pred_ids[i]), int(ov.gt_ids[j]), float(iou[k])))
    matched.sort(key=lambda m: m[1])
    spurious = [int(ov.pred_ids[i]) for i in range(len(ov.pred_ids)) if i not in used_p]
    missed = [int(ov.gt_ids[j]) for j in range(len(ov.gt_ids)) if j not in used_g]
    return Matching(matched, spurious, missed)


# -- COCO average precision -------------------------------------------------------


def _rank(ids: np.ndarray, areas: np.ndarray, scores: Mapping[int, float] | None) -> np.ndarray:
    """Scores used for ranking: the given ones, else a decreasing-area ranking."""
    if scores:
        return np.array([float(scores.get(int(i), 0.0)) for i in ids], dtype=np.float64)
    order = np.lexsort((ids, -areas))  # by area descending, then id ascending
    rank = np.empty(len(ids), dtype=np.float64)
    rank[order] = np.arange(len(ids), 0, -1, dtype=np.float64)
    return rank


def _coco_class_ap(
    det_scores: np.ndarray,
    n_gt: int,
    cand: list[list[tuple[int, float]]],
    thresholds: np.ndarray,
) -> np.ndarray:
    """COCO's interpolated AP of one class at each threshold (``-1`` when ``n_gt == 0``).

    ``cand[d]`` lists ``(gt index, iou)`` of detection ``d`` in gt order;
    detections are already sorted by decreasing score.
    """
    out = np.full(len(thresholds), -1.0)
    if n_gt == 0:
        return out
    nd = len(det_scores)
    for ti, t in enumerate(thresholds):
        gt_used = np.zeros(n_gt, dtype=bool)
        tp = np.zeros(nd, dtype=bool)
        for d in range(nd):
            best, m = min(t, 1 - 1e-10), -1
            for g, v in cand[d]:
                if gt_used[g] or v < best:
                    continue
                best, m = v, g
            if m >= 0:
                gt_used[m] = True
                tp[d] = True
        tps = np.cumsum(tp).astype(float)
        fps = np.cumsum(~tp).astype(float)
        q = np.zeros(len(COCO_RECALL_POINTS))
        if nd:
            rc = tps / n_gt
            pr = (tps / (fps + tps + np.spacing(1))).tolist()
            for i in range(nd - 1, 0, -1):
                if pr[i] > pr[i - 1]:
                    pr[i - 1] = pr[i]
            inds = np.searchsorted(rc, COCO_RECALL_POINTS, side="left")
            for ri, pi in enumerate(inds):
                if pi < nd:
                    q[ri] = pr[pi]
        out[ti] = q.mean()
    return out


def coco_average_precision(
    ov: Overlap,
    pred_cls: np.ndarray,
    gt_cls: np.ndarray,
    scores: np.ndarray,
    *,
    max_dets: int | None = None,
    thresholds: np.ndarray = COCO_IOU_THRESHOLDS,
) -> dict[int, np.ndarray]:
    """Per-class AP at each IoU threshold, the way pycocotools' COCOeval computes it.

    Returns
    -------
    dict
        class id -> AP per threshold (``-1`` for classes without ground truth,
        which COCO leaves out of the mean).
    """
    iou = ov.iou
    by_pred: dict[int, list[tuple[int, float]]] = {}
    for (i, j), v in zip(ov.pairs.tolist(), iou.tolist(), strict=True):
        if pred_cls[i] == gt_cls[j]:
            by_pred.setdefault(i, []).append((j, v))
    out = {}
    for c in sorted(set(pred_cls.tolist()) | set(gt_cls.tolist())):
        dets = np.flatnonzero(pred_cls == c)
        dets = dets[np.argsort(-scores[dets], kind="mergesort")]
        if max_dets is not None:
            dets = dets[:max_dets]
        gts = np.flatnonzero(gt_cls == c)
        gpos = {int(g): k for k, g in enumerate(gts)}
        cand = [sorted((gpos[j], v) for j, v in by_pred.get(int(d), [])) for d in dets]
        out[int(c)] = _coco_class_ap(scores[dets], len(gts), cand, thresholds)
    return out


# -- the report ---------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` computes.

    Attributes
    ----------
    summary : dict
        Overall scores: ``precision``, ``recall``, ``f1`` (IoU > 0.5),
        ``ap50``, ``ap`` (AP@[0.5:0.95]), ``pq``, ``sq``, ``rq``, ``miou``,
        ``mdice`` and the counts ``tp``, ``fp``, ``fn``, ``n_pred``, ``n_gt``.
    per_class : list of dict
        One row per class with the same scores for that class.
    matching : Matching
        Matched, spurious (false positive) and missed (false negative) segments.
    """

    summary: dict
    per_class: list[dict]
    matching: Matching

    def table(self):
        """A pandas DataFrame: one row per class and a last row ``"all"``."""
        import pandas as pd

        rows = [*self.per_class, {"class_id": -1, "class_name": "all", **self.summary}]
        return pd.DataFrame(rows)

    def objects_table(self):
        """A pandas DataFrame listing every matched, spurious and missed segment."""
        import pandas as pd

        rows = [{"status": "matched", "pred_id": p, "gt_id": g, "iou": v} for p, g, v in self.matching.matched]
        rows += [{"status": "spurious", "pred_id": p, "gt_id": 0, "iou": 0.0} for p in self.matching.spurious]
        rows += [{"status": "missed", "pred_id": 0, "gt_id": g, "iou": 0.0} for g in self.matching.missed]
        return pd.DataFrame(rows, columns=["status", "pred_id", "gt_id", "iou"])

    def to_csv(self, path) -> None:
        """Write :meth:`table` to ``path`` as CSV."""
        self.table().to_csv(path, index=False)


def evaluate(
    pred,
    gt,
    *,
    pred_classes: Mapping[int, int] | None = None,
    gt_classes: Mapping[int, int] | None = None,
    pred_scores: Mapping[int, float] | None = None,
    class_names: Mapping[int, str] | None = None,
    max_dets: int | None = None,
) -> EvaluationResult:
    """Compare a predicted segment image with a ground-truth one.

    Parameters
    ----------
    pred, gt : ndarray
        Label images of the same shape; 0 is background, each other id a segment
        (an instance or a stuff region).
    pred_classes, gt_classes : mapping, optional
        ``{segment id: class id}``. Without them every segment is of class 0
        (class-agnostic scores). When only one of the two is given it is
        ignored too: classes can only be compared when both images have them.
    pred_scores : mapping, optional
        ``{segment id: confidence}`` for AP; without it predictions are ranked
        by decreasing area.
    class_names : mapping, optional
        Class id -> name for the table.
    max_dets : int, optional
        COCO's ``maxDets`` per class (None: no cap).

    Returns
    -------
    EvaluationResult
        See the module documentation for the conventions.
    """
    ov = overlap(pred, gt)
    names = dict(class_names or {})
    if bool(pred_classes) != bool(gt_classes):  # one side only: class-agnostic, names don't apply
        pred_classes = gt_classes = None
        names = {}
    p_cls = _class_array(ov.pred_ids, pred_classes)
    g_cls = _class_array(ov.gt_ids, gt_classes)
    scores = _rank(ov.pred_ids, ov.pred_area, pred_scores)
    matching = match_segments(ov, p_cls, g_cls, MATCH_IOU)
    aps = coco_average_precision(ov, p_cls, g_cls, scores, max_dets=max_dets)

    sem = _semantic_from_overlap(ov, p_cls, g_cls)

    pred_index = {int(v): k for k, v in enumerate(ov.pred_ids)}
    gt_index = {int(v): k for k, v in enumerate(ov.gt_ids)}
    both_empty = len(ov.pred_ids) == 0 and len(ov.gt_ids) == 0
    per_class = []
    for c in sorted(set(p_cls.tolist()) | set(g_cls.tolist())):
        m = [x for x in matching.matched if p_cls[pred_index[x[0]]] == c]
        tp = len(m)
        fp = sum(1 for p in matching.spurious if p_cls[pred_index[p]] == c)
        fn = sum(1 for g in matching.missed if g_cls[gt_index[g]] == c)
        iou_sum = sum(x[2] for x in m)
        ap = aps[c]
        s = sem.get(c, {})
        per_class.append({
            "class_id": int(c),
            "class_name": str(names.get(c, c)),
            "n_pred": int((p_cls == c).sum()),
            "n_gt": int((g_cls == c).sum()),
            "tp": tp, "fp": fp, "fn": fn,
            "precision": _safe(tp, tp + fp, False),
            "recall": _safe(tp, tp + fn, False),
            "f1": _safe(2 * tp, 2 * tp + fp + fn, False),
            "ap50": float(ap[0]) if ap[0] >= 0 else 0.0,
            "ap": float(ap.mean()) if ap[0] >= 0 else 0.0,
            "pq": _safe(iou_sum, tp + fp / 2 + fn / 2, False),
            "sq": _safe(iou_sum, tp, False),
            "rq": _safe(tp, tp + fp / 2 + fn / 2, False),
            "iou": float(s.get("iou", 0.0)),
            "dice": float(s.get("dice", 0.0)),
        })
    tp, fp, fn = matching.tp, matching.fp, matching.fn
    with_gt = [aps[r["class_id"]] for r in per_class if r["n_gt"] > 0]
    if with_gt:
        ap50, ap = float(np.mean([a[0] for a in with_gt])), float(np.mean([a.mean() for a in with_gt]))
    else:
        ap50 = ap = 1.0 if both_empty else 0.0

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in per_class])) if per_class else 1.0

    summary = {
        "n_pred": len(ov.pred_ids), "n_gt": len(ov.gt_ids), "tp": tp, "fp": fp, "fn": fn,
        "precision": _safe(tp, tp + fp, both_empty),
        "recall": _safe(tp, tp + fn, both_empty),
        "f1": _safe(2 * tp, 2 * tp + fp + fn, both_empty),
        "ap50": ap50, "ap": ap,
        "pq": mean("pq"), "sq": mean("sq"), "rq": mean("rq"),
        "iou": mean("iou"), "dice": mean("dice"),
    }
    return EvaluationResult(summary, per_class, matching)


# -- semantic evaluation of class maps ----------------------------------------------------

#: Class names taken for "background" when a layer's features name its classes.
BACKGROUND_NAMES = ("background", "_background_", "bg", "__background__", "unlabeled", "unlabelled")


def background_label(names: Mapping[int, str] | None, default: int = 0) -> int:
    """The label whose class name says background (``BACKGROUND_NAMES``), else ``default``."""
    for label, name in (names or {}).items():
        if str(name).strip().lower() in BACKGROUND_NAMES:
            return int(label)
    return int(default)


@dataclass
class SemanticReport:
    """Per-class IoU and Dice of a class map against a ground-truth class map.

    Attributes
    ----------
    rows : list of dict
        One row per compared class: ``class_name``, ``gt_label``, ``pred_label`` (0: the
        prediction has no such class), ``iou``, ``dice``, ``gt_pixels``, ``pred_pixels``,
        ``intersection``.
    summary : dict
        ``miou`` and ``mdice`` (means over the rows), ``accuracy`` (share of scored pixels
        whose class agrees, background included) and ``scored_pixels``.
    pairs : dict
        ``{pred label: gt label}`` used to compare the two maps.
    """

    rows: list[dict]
    summary: dict
    pairs: dict[int, int]

    def table(self):
        """A pandas DataFrame: one row per class and a last row ``"all"``."""
        import pandas as pd

        last = {"class_name": "all", "gt_label": -1, "pred_label": -1, "iou": self.summary["miou"],
                "dice": self.summary["mdice"]}
        return pd.DataFrame([*self.rows, last])

    def to_csv(self, path) -> None:
        """Write :meth:`table` to ``path`` as CSV."""
        self.table().to_csv(path, index=False)


def semantic_evaluation(
    pred,
    gt,
    *,
    pred_background: int = 0,
    gt_background: int = 0,
    gt_ignore: int | None = None,
    pred_names: Mapping[int, str] | None = None,
    gt_names: Mapping[int, str] | None = None,
) -> SemanticReport:
    """Compare two class maps (one class label per pixel) class by class.

    Parameters
    ----------
    pred, gt : ndarray
        Class maps of the same shape (e.g. a semantic prediction whose labels are
        ``class id + 1``, and a ground truth whose labels are 0 and 1).
    pred_background, gt_background : int
        The label that means background in each map; background is not a scored class
        (it counts in ``accuracy``).
    gt_ignore : int, optional
        A ground-truth label whose pixels are left out of every score.
    pred_names, gt_names : mapping, optional
        ``{label: class name}`` of each map.

    Returns
    -------
    SemanticReport

    Notes
    -----
    The foreground labels of the two maps are paired: by class name when both maps name
    their classes (case-insensitive); else, when each map has exactly one foreground
    label, those two; else equal labels. Every ground-truth class gets a row (IoU 0 when
    the prediction has no partner for it); prediction classes without a partner get a
    row with IoU 0 too (they are false positives).
    """
    p = check_label_image(pred, "prediction")
    g = check_label_image(gt, "ground truth")
    check_same_shape(p, g)
    keep = np.ones(g.shape, dtype=bool) if gt_ignore is None else g != gt_ignore
    p, g = p[keep], g[keep]
    p_labels = [int(v) for v in np.unique(p) if v != pred_background]
    g_labels = [int(v) for v in np.unique(g) if v != gt_background]
    for label in gt_names or {}:  # a named true class absent from this image still gets a row
        if int(label) not in (gt_background, gt_ignore) and int(label) not in g_labels:
            g_labels.append(int(label))
    pn = {int(k): str(v).strip().lower() for k, v in (pred_names or {}).items()}
    gn = {int(k): str(v).strip().lower() for k, v in (gt_names or {}).items()}
    pairs: dict[int, int] = {}
    if pn and gn:
        by_name = {gn[gl]: gl for gl in g_labels if gl in gn}
        pairs = {pl: by_name[pn[pl]] for pl in p_labels if pn.get(pl) in by_name}
    elif len(p_labels) == 1 and len(g_labels) == 1:
        pairs = {p_labels[0]: g_labels[0]}
    else:
        pairs = {pl: pl for pl in p_labels if pl in g_labels}
    p_bg, g_bg = p == pred_background, g == gt_background
    rows = []
    shown_names = {**{int(k): str(v) for k, v in (gt_names or {}).items()}}
    for gl in sorted(g_labels):
        partner = [pl for pl, x in pairs.items() if x == gl]
        pm = np.isin(p, partner) if partner else np.zeros(p.shape, dtype=bool)
        gm = g == gl
        name = shown_names.get(gl) or next(((pred_names or {}).get(pl) for pl in partner), None) or str(gl)
        rows.append(_class_row(str(name), gl, partner[0] if partner else 0, pm, gm))
    for pl in sorted(set(p_labels) - set(pairs)):
        name = str((pred_names or {}).get(pl, pl))
        rows.append(_class_row(name, 0, pl, p == pl, np.zeros(p.shape, dtype=bool)))
    mapped = np.full(p.shape, -1, dtype=np.int64)
    for pl, gl in pairs.items():
        mapped[p == pl] = gl
    agree = (mapped == g) | (p_bg & g_bg)
    summary = {
        "miou": float(np.mean([r["iou"] for r in rows])) if rows else 1.0,
        "mdice": float(np.mean([r["dice"] for r in rows])) if rows else 1.0,
        "accuracy": float(agree.mean()) if agree.size else 1.0,
        "scored_pixels": int(agree.size),
    }
    return SemanticReport(rows, summary, pairs)


def _class_row(name: str, gt_label: int, pred_label: int, pm: np.ndarray, gm: np.ndarray) -> dict:
    a, b = int(pm.sum()), int(gm.sum())
    i = int((pm & gm).sum())
    return {
        "class_name": name, "gt_label": int(gt_label), "pred_label": int(pred_label),
        "iou": i / (a + b - i) if a + b - i else 1.0, "dice": 2 * i / (a + b) if a + b else 1.0,
        "gt_pixels": b, "pred_pixels": a, "intersection": i,
    }
