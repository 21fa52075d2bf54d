"""The Evaluate Segmentation dock in a real viewer: semantic, instance and panoptic modes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_segsuite.core.metrics import evaluate, semantic_evaluation
from napari_segsuite.layers import current_plane, write_plane
from napari_segsuite.testing.coins import COINS_CLASS_NAMES, coins_reference_mask
from napari_segsuite.widgets.evaluation import EvaluationWidget, guess_mode

pytestmark = pytest.mark.widget


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.jobs.worker is None, timeout=30000)
    assert widget.jobs.last_error is None, widget.jobs.last_error


@pytest.fixture
def coins_case(make_napari_viewer):
    """The U-Net coins case: prediction 1 = background, 2 = coin (as the U-Net panel writes it), truth 0/1."""
    from skimage import data

    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(data.coins(), name="coins")
    truth = coins_reference_mask().astype(np.int32)
    # a prediction that misses a band of coin pixels and adds a blob of false coin
    pred = np.where(truth > 0, 2, 1).astype(np.int32)
    pred[:, 200:215][truth[:, 200:215] > 0] = 1
    pred[300:330, 10:40] = 2
    _, sel = current_plane(viewer, image)
    layer = write_plane(viewer, image, sel, pred, task="unet",
                        provenance={"model": "unet (trained from strokes)"},
                        extra_features={k: {"class_name": v} for k, v in COINS_CLASS_NAMES.items()})
    gt_layer = viewer.add_labels(truth, name="coins truth")
    return viewer, layer, gt_layer, pred, truth


def test_semantic_mode_reports_the_coin_iou(coins_case, qtbot):
    viewer, pred_layer, gt_layer, pred, truth = coins_case
    widget = EvaluationWidget(viewer)
    widget.pred_layer.value, widget.gt_layer.value = pred_layer, gt_layer
    # picked automatically from the prediction's provenance; backgrounds from the features
    assert guess_mode(pred_layer) == "semantic" and widget.resolved_mode() == "semantic"
    assert widget.pred_background.value == 1 and widget.gt_background.value == 0
    assert widget.semantic_group.expanded
    widget.evaluate()
    _wait(qtbot, widget)
    coin_p, coin_g = pred == 2, truth == 1
    coin_iou = (coin_p & coin_g).sum() / (coin_p | coin_g).sum()
    report = widget.last_evaluation
    assert [r["class_name"] for r in report.rows] == ["coin"]
    assert report.rows[0]["iou"] == pytest.approx(coin_iou)
    assert report.summary["miou"] == pytest.approx(coin_iou)
    assert f"{coin_iou:.3f}" in widget.eval_summary.value
    # the segment-wise comparison the Panoptic dock used to make scores the labels as ids: far lower
    naive = evaluate(pred, truth)
    assert naive.summary["iou"] < coin_iou - 0.2
    table = widget.eval_table.to_dataframe()
    assert table["class_name"].tolist() == ["coin", "all"]
    assert not any(layer.name.endswith("[false positives]") for layer in viewer.layers)


def test_ignore_label_and_override(coins_case, qtbot, tmp_path):
    viewer, pred_layer, gt_layer, pred, truth = coins_case
    truth_ignored = truth.copy()
    truth_ignored[300:330, 10:40] = 9  # "don't care" where the prediction's false blob is
    gt_layer.data = truth_ignored
    widget = EvaluationWidget(viewer)
    widget.pred_layer.value, widget.gt_layer.value = pred_layer, gt_layer
    widget.gt_ignore.value = 9
    widget.evaluate()
    _wait(qtbot, widget)
    expected = semantic_evaluation(pred, truth_ignored, pred_background=1, gt_background=0, gt_ignore=9,
                                   pred_names=COINS_CLASS_NAMES)
    assert widget.last_evaluation.rows[0]["iou"] == pytest.approx(expected.rows[0]["iou"])
    keep = truth_ignored != 9
    coin_p, coin_g = (pred == 2) & keep, (truth_ignored == 1) & keep
    assert expected.rows[0]["iou"] == pytest.approx((coin_p & coin_g).sum() / (coin_p | coin_g).sum())
    widget.csv_path.value = str(tmp_path / "semantic.csv")
    path = widget.export_csv()
    assert pd.read_csv(path)["iou"].iloc[0] == pytest.approx(expected.rows[0]["iou"])
    # override: instance mode compares segments (every id an object)
    widget.mode.value = "instance"
    widget.error_layers.value = False
    widget.evaluate()
    _wait(qtbot, widget)
    assert widget.last_mode == "instance" and "F1@0.5" in widget.eval_summary.value


def test_instance_mode_is_picked_for_scored_objects(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=False)
    gt = np.zeros((40, 40), np.int32)
    gt[2:12, 2:12], gt[20:30, 20:30] = 1, 2
    pred = np.zeros_like(gt)
    pred[3:12, 2:12], pred[30:38, 0:8] = 5, 6
    pred_layer = viewer.add_labels(pred, name="pred", features=pd.DataFrame(
        {"index": [5, 6], "score": [0.9, 0.4]}))
    gt_layer = viewer.add_labels(gt, name="gt")
    widget = EvaluationWidget(viewer)
    widget.pred_layer.value, widget.gt_layer.value = pred_layer, gt_layer
    assert widget.resolved_mode() == "instance" and not widget.semantic_group.expanded
    widget.evaluate()
    _wait(qtbot, widget)
    result = widget.last_evaluation
    assert result.matching.matched[0][:2] == (5, 1)
    assert result.matching.spurious == [6] and result.matching.missed == [2]
    assert viewer.layers["pred [false positives]"].data.max() == 6
    assert viewer.layers["gt [misses]"].data.max() == 2
