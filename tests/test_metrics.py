"""Metrics against hand-computed values, pycocotools' COCOeval and the PQ definition."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.metrics import (
    COCO_IOU_THRESHOLDS,
    evaluate,
    overlap,
    semantic_scores,
)


def _boxes(shape, boxes):
    out = np.zeros(shape, dtype=np.int64)
    for i, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        out[r0:r1, c0:c1] = i
    return out


# -- overlap and IoU -------------------------------------------------------------


def test_iou_matrix_matches_a_direct_computation(rng):
    pred = rng.integers(0, 6, (40, 50))
    gt = rng.integers(0, 4, (40, 50))
    ov = overlap(pred, gt)
    m = ov.iou_matrix()
    for i, p in enumerate(ov.pred_ids):
        for j, g in enumerate(ov.gt_ids):
            a, b = pred == p, gt == g
            assert m[i, j] == pytest.approx((a & b).sum() / (a | b).sum())


def test_hand_computed_instance_scores():
    gt = _boxes((20, 20), [(0, 10, 0, 10), (12, 20, 12, 20), (0, 4, 14, 18)])
    pred = np.zeros_like(gt)
    pred[0:10, 0:8] = 7     # IoU 80/100 = 0.8 with gt 1
    pred[12:20, 12:16] = 9  # IoU 32/64 = 0.5 with gt 2: not a match (needs > 0.5)
    pred[15:19, 0:4] = 3    # on background: spurious
    res = evaluate(pred, gt)
    assert res.matching.matched == [(7, 1, pytest.approx(0.8))]
    assert sorted(res.matching.spurious) == [3, 9]
    assert sorted(res.matching.missed) == [2, 3]
    s = res.summary
    assert (s["tp"], s["fp"], s["fn"]) == (1, 2, 2)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 / 6)
    # PQ = sum IoU / (TP + FP/2 + FN/2) = 0.8 / 3
    assert s["sq"] == pytest.approx(0.8) and s["rq"] == pytest.approx(1 / 3)
    assert s["pq"] == pytest.approx(0.8 / 3)


def test_hand_computed_semantic_scores():
    gt = np.zeros((4, 4), int)
    gt[:, :2] = 1
    gt[:, 2:] = 2
    pred = np.zeros((4, 4), int)
    pred[:, :3] = 1
    rows = {r["class_id"]: r for r in semantic_scores(pred, gt, class_names={1: "a", 2: "b"})}
    assert rows[1]["iou"] == pytest.approx(8 / 12) and rows[1]["dice"] == pytest.approx(16 / 20)
    assert rows[2]["iou"] == 0.0 and rows[2]["dice"] == 0.0
    assert rows[1]["class_name"] == "a"


def test_panoptic_quality_per_class_and_overall():
    # class 1 ("thing"): two instances; class 2 ("stuff"): one region
    gt = np.zeros((10, 10), int)
    gt[0:5, 0:5] = 1
    gt[0:5, 5:10] = 2
    gt[5:10, :] = 3
    pred = np.zeros_like(gt)
    pred[0:5, 0:4] = 11          # IoU 20/25 = 0.8 with gt 1
    pred[5:10, 0:8] = 13         # IoU 40/50 = 0.8 with gt 3
    pred[0:5, 5:10] = 14         # class 2 but gt 2 is class 1: no match
    res = evaluate(pred, gt, pred_classes={11: 1, 13: 2, 14: 2}, gt_classes={1: 1, 2: 1, 3: 2})
    rows = {r["class_id"]: r for r in res.per_class}
    # class 1: TP 1 (0.8), FN 1 (gt 2) -> PQ = 0.8 / 1.5
    assert (rows[1]["tp"], rows[1]["fp"], rows[1]["fn"]) == (1, 0, 1)
    assert rows[1]["pq"] == pytest.approx(0.8 / 1.5)
    assert rows[1]["sq"] == pytest.approx(0.8) and rows[1]["rq"] == pytest.approx(1 / 1.5)
    # class 2: TP 1 (0.8), FP 1 (pred 14) -> PQ = 0.8 / 1.5
    assert (rows[2]["tp"], rows[2]["fp"], rows[2]["fn"]) == (1, 1, 0)
    assert rows[2]["pq"] == pytest.approx(0.8 / 1.5)
    assert res.summary["pq"] == pytest.approx(0.8 / 1.5)
    assert res.summary["pq"] == pytest.approx(res.summary["sq"] * res.summary["rq"])
    assert set(res.table()["class_name"]) == {"1", "2", "all"}


def _reference_pq(pred, gt, pred_cls, gt_cls):
    """PQ straight from Kirillov et al.'s definition, pixel masks, no shortcuts."""
    classes = set(pred_cls.values()) | set(gt_cls.values())
    pqs = {}
    for c in classes:
        ps = [p for p, k in pred_cls.items() if k == c]
        gs = [g for g, k in gt_cls.items() if k == c]
        ious, used_p, used_g = [], set(), set()
        for p in ps:
            for g in gs:
                a, b = pred == p, gt == g
                iou = (a & b).sum() / (a | b).sum()
                if iou > 0.5:
                    ious.append(iou)
                    used_p.add(p)
                    used_g.add(g)
        tp, fp, fn = len(ious), len(ps) - len(used_p), len(gs) - len(used_g)
        pqs[c] = sum(ious) / (tp + fp / 2 + fn / 2)
    return pqs


def test_panoptic_quality_agrees_with_the_definition_on_random_cases(rng):
    for _ in range(5):
        gt = np.kron(rng.integers(0, 6, (4, 4)), np.ones((5, 5), int))
        pred = gt.copy()
        noise = rng.random(gt.shape) < 0.15
        pred[noise] = rng.integers(0, 8, noise.sum())
        gt_cls = {int(i): int(i % 2) for i in np.unique(gt) if i}
        pred_cls = {int(i): int(i % 2) for i in np.unique(pred) if i}
        res = evaluate(pred, gt, pred_classes=pred_cls, gt_classes=gt_cls)
        ref = _reference_pq(pred, gt, pred_cls, gt_cls)
        got = {r["class_id"]: r["pq"] for r in res.per_class}
        assert got == pytest.approx(ref)
        assert res.summary["pq"] == pytest.approx(np.mean(list(ref.values())))


# -- AP against pycocotools --------------------------------------------------------


def _coco_ap(pred, gt, pred_cls, gt_cls, scores, max_dets=1000):
    """AP and AP50 from pycocotools' COCOeval on in-memory gt/dt built from the label images."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        r["counts"] = r["counts"].decode("ascii")
        return r

    cats = sorted(set(gt_cls.values()) | set(pred_cls.values()))
    h, w = gt.shape
    anns = []
    for k, g in enumerate(sorted(gt_cls), start=1):
        m = gt == g
        anns.append({"id": k, "image_id": 1, "category_id": gt_cls[g] + 1, "segmentation": rle(m),
                     "area": float(m.sum()), "iscrowd": 0, "bbox": list(mask_utils.toBbox(rle(m)))})
    coco_gt = COCO()
    coco_gt.dataset = {"images": [{"id": 1, "height": h, "width": w}], "annotations": anns,
                       "categories": [{"id": c + 1, "name": str(c)} for c in cats]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        dts = [{"image_id": 1, "category_id": pred_cls[p] + 1, "segmentation": rle(pred == p),
                "score": float(scores[p])} for p in sorted(pred_cls)]
        coco_dt = coco_gt.loadRes(dts) if dts else COCO()
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.maxDets = [max_dets]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, 0]  # T, R, K
    ap = prec[prec > -1].mean()
    p50 = prec[0]
    ap50 = p50[p50 > -1].mean()
    return ap, ap50


def _random_case(rng, n_gt, n_pred, n_classes, size=48):
    gt = np.zeros((size, size), np.int64)
    for i in range(1, n_gt + 1):
        r, c = rng.integers(0, size - 8, 2)
        gt[r:r + rng.integers(4, 12), c:c + rng.integers(4, 12)] = i
    pred = np.zeros_like(gt)
    ids = [i for i in np.unique(gt) if i]
    gt_cls = {int(i): int(rng.integers(n_classes)) for i in ids}
    copied = {}
    for k in range(1, n_pred + 1):
        if ids and rng.random() < 0.7:  # a jittered copy of a true object, mostly of its class
            g = ids[rng.integers(len(ids))]
            m = np.roll(gt == g, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
            if rng.random() < 0.8:
                copied[100 + k] = gt_cls[int(g)]
        else:
            r, c = rng.integers(0, size - 8, 2)
            m = np.zeros_like(gt, bool)
            m[r:r + rng.integers(3, 10), c:c + rng.integers(3, 10)] = True
        pred[m] = 100 + k
    pred_cls = {int(i): copied.get(int(i), int(rng.integers(n_classes))) for i in np.unique(pred) if i}
    scores = {p: float(rng.random()) for p in pred_cls}
    return pred, gt, pred_cls, gt_cls, scores


@pytest.mark.parametrize("n_classes", [1, 3])
def test_ap_agrees_with_pycocotools(rng, n_classes):
    for _ in range(12):
        pred, gt, pred_cls, gt_cls, scores = _random_case(rng, int(rng.integers(1, 9)), int(rng.integers(0, 12)), n_classes)
        if not gt_cls:
            continue
        res = evaluate(pred, gt, pred_classes=pred_cls, gt_classes=gt_cls, pred_scores=scores)
        ap, ap50 = _coco_ap(pred, gt, pred_cls, gt_cls, scores)
        assert res.summary["ap"] == pytest.approx(ap, abs=1e-6)
        assert res.summary["ap50"] == pytest.approx(ap50, abs=1e-6)


def test_ap_max_dets_agrees_with_pycocotools(rng):
    pred, gt, pred_cls, gt_cls, scores = _random_case(rng, 8, 12, 1)
    res = evaluate(pred, gt, pred_classes=pred_cls, gt_classes=gt_cls, pred_scores=scores, max_dets=3)
    ap, ap50 = _coco_ap(pred, gt, pred_cls, gt_cls, scores, max_dets=3)
    assert res.summary["ap"] == pytest.approx(ap, abs=1e-6)
    assert res.summary["ap50"] == pytest.approx(ap50, abs=1e-6)


def test_ap_without_scores_ranks_by_area(rng):
    pred, gt, pred_cls, gt_cls, _ = _random_case(rng, 6, 8, 1)
    areas = {p: int((pred == p).sum()) for p in pred_cls}
    order = sorted(pred_cls, key=lambda p: (-areas[p], p))
    scores = {p: float(len(order) - k) for k, p in enumerate(order)}
    ap, _ = _coco_ap(pred, gt, pred_cls, gt_cls, scores)
    assert evaluate(pred, gt).summary["ap"] == pytest.approx(ap, abs=1e-6)


def test_perfect_prediction_scores_one():
    gt = _boxes((30, 30), [(0, 5, 0, 5), (10, 20, 10, 20)])
    s = evaluate(gt * 3, gt).summary
    for key in ("precision", "recall", "f1", "ap50", "ap", "pq", "sq", "rq", "iou", "dice"):
        assert s[key] == pytest.approx(1.0), key
    assert len(COCO_IOU_THRESHOLDS) == 10


# -- bad and edge input -----------------------------------------------------------


def test_empty_prediction_and_empty_ground_truth_give_numbers():
    gt = _boxes((10, 10), [(0, 5, 0, 5)])
    empty = np.zeros_like(gt)
    for pred, truth, expected in ((empty, gt, 0.0), (gt, empty, 0.0), (empty, empty, 1.0)):
        res = evaluate(pred, truth)
        for key, value in res.summary.items():
            assert np.isfinite(value), key
        for key in ("precision", "recall", "f1", "ap", "ap50", "pq", "sq", "rq"):
            assert res.summary[key] == expected, (key, pred.any(), truth.any())
        assert np.isfinite(res.table().select_dtypes("number").to_numpy()).all()
    assert evaluate(empty, gt).matching.missed == [1]
    assert evaluate(gt, empty).matching.spurious == [1]


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(InputError, match=r"shape \(4, 5\).*shape \(5, 4\)"):
        evaluate(np.zeros((4, 5), int), np.zeros((5, 4), int))


def test_bad_dtypes_and_negative_ids_are_refused():
    with pytest.raises(InputError, match="negative"):
        evaluate(-np.ones((3, 3), int), np.zeros((3, 3), int))
    with pytest.raises(InputError, match="non-integer"):
        evaluate(np.full((3, 3), 0.5), np.zeros((3, 3), int))


def test_ids_beyond_int32_are_handled():
    gt = _boxes((10, 10), [(0, 5, 0, 5), (5, 10, 5, 10)])
    big = np.where(gt > 0, gt.astype(np.int64) + 2**40, 0)
    res = evaluate(big, gt, pred_scores={2**40 + 1: 0.9, 2**40 + 2: 0.8})
    assert res.summary["pq"] == 1.0 and res.summary["ap"] == 1.0
    assert res.matching.matched == [(2**40 + 1, 1, 1.0), (2**40 + 2, 2, 1.0)]
    res = evaluate(big.astype(np.uint64) + np.uint64(2**63) * (big > 0), gt)
    assert res.summary["tp"] == 2


def test_csv_export(tmp_path):
    gt = _boxes((10, 10), [(0, 5, 0, 5)])
    res = evaluate(gt, gt, class_names={0: "cell"})
    res.to_csv(tmp_path / "scores.csv")
    import pandas as pd

    table = pd.read_csv(tmp_path / "scores.csv")
    assert list(table["class_name"]) == ["cell", "all"]
    assert table["pq"].tolist() == [1.0, 1.0]
    assert res.objects_table()["status"].tolist() == ["matched"]


def test_dense_and_sorted_id_paths_agree(rng):
    from napari_segsuite.core.metrics import DENSE_ID_LIMIT

    pred = rng.integers(0, 30, (60, 60))
    gt = rng.integers(0, 20, (60, 60))
    shift = DENSE_ID_LIMIT + 7
    dense, sparse = overlap(pred, gt), overlap(np.where(pred > 0, pred + shift, 0), np.where(gt > 0, gt + shift, 0))
    np.testing.assert_array_equal(dense.iou_matrix(), sparse.iou_matrix())
    np.testing.assert_array_equal(dense.pred_ids + shift, sparse.pred_ids)
    a = evaluate(pred, gt, pred_classes={i: i % 3 for i in range(30)}, gt_classes={i: i % 3 for i in range(20)})
    b = evaluate(np.where(pred > 0, pred + shift, 0), np.where(gt > 0, gt + shift, 0),
                 pred_classes={i + shift: i % 3 for i in range(30)}, gt_classes={i + shift: i % 3 for i in range(20)})
    assert a.summary == b.summary


def test_classes_on_one_side_only_give_class_agnostic_scores():
    gt = _boxes((10, 10), [(0, 5, 0, 5), (5, 10, 5, 10)])
    res = evaluate(gt, gt, pred_classes={1: 4, 2: 7}, class_names={4: "a"})
    assert res.summary["pq"] == 1.0 and [r["class_id"] for r in res.per_class] == [0]
