"""The Panoptic widget in a real viewer with a tiny real Mask2Former: run, outputs, evaluation."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from napari_segsuite import api
from napari_segsuite.testing.tiny_models import build_tiny_mask2former
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.evaluation import EvaluationWidget
from napari_segsuite.widgets.panoptic import PanopticWidget, parse_class_list

pytestmark = pytest.mark.widget
LOW = {"threshold": 0.0, "mask_threshold": 0.05, "overlap_mask_area_threshold": 0.0}


@pytest.fixture(scope="module")
def tiny_panoptic(tmp_path_factory):
    return build_tiny_mask2former(tmp_path_factory.mktemp("m2f") / "tiny_panoptic", task="panoptic", num_labels=4, seed=2)


@pytest.fixture(scope="module")
def image():
    from skimage import data

    return data.coins()[::4, ::4]


def _widget(viewer, folder, output="one"):
    widget = PanopticWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(folder)
    widget.device.value = "cpu"
    widget.threshold.value, widget.mask_threshold.value, widget.overlap.value = 0.0, 0.05, 0.0
    widget.fuse.value = "background"  # class 0 is stuff
    widget.output.value = output
    return widget


def _run(qtbot, widget):
    widget.run()
    qtbot.waitUntil(lambda: widget.jobs.worker is None, timeout=60000)


def test_run_writes_one_layer_with_features(make_napari_viewer, qtbot, tiny_panoptic, image):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="coins", scale=(2.0, 2.0), translate=(5.0, 0.0))
    widget = _widget(viewer, tiny_panoptic)
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["coins [panoptic]"]
    expected = api.segment_panoptic(image, str(tiny_panoptic), device="cpu", label_ids_to_fuse=[0], **LOW)
    np.testing.assert_array_equal(layer.data, expected.labels)
    assert tuple(layer.scale) == (2.0, 2.0) and tuple(layer.translate) == (5.0, 0.0)
    feats = layer.features.set_index("index")
    for row in expected.segments:
        f = feats.loc[row["label"]]
        assert f["label"] == row["label"] and f["class_id"] == row["class_id"]
        assert f["class_name"] == row["class_name"] and bool(f["is_thing"]) == row["is_thing"]
        assert f["score"] == pytest.approx(row["score"]) and f["area"] == row["area"]
    assert len(feats) == len(expected.table) == 2
    meta = layer.metadata["segsuite"]
    assert meta["task"] == "panoptic" and meta["parameters"]["label_ids_to_fuse"] == [0]
    assert "segments" in widget.message.value
    # the dock's "Evaluate" button opens the Evaluate Segmentation dock on this result
    evaluation = widget.open_evaluation()
    assert evaluation.pred_layer.value is layer
    assert evaluation.resolved_mode() == "panoptic"


def test_split_and_divisor_outputs(make_napari_viewer, qtbot, tiny_panoptic, image):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="coins")
    widget = _widget(viewer, tiny_panoptic, output="split")
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    expected = api.segment_panoptic(image, str(tiny_panoptic), device="cpu", label_ids_to_fuse=[0], **LOW)
    sem = viewer.layers["coins [panoptic semantic]"]
    inst = viewer.layers["coins [panoptic instance]"]
    np.testing.assert_array_equal(sem.data, expected.semantic_labels())
    assert set(sem.features["class_id"]) == set(expected.table["class_id"])
    things = expected.table[expected.table["is_thing"]]
    assert len(inst.features) == len(things) and set(inst.features["class_id"]) == set(things["class_id"])
    assert "coins [panoptic]" not in viewer.layers

    widget.output.value = "divisor"
    widget.divisor.value = 100
    _run(qtbot, widget)
    layer = viewer.layers["coins [panoptic]"]
    ids = np.unique(layer.data[layer.data > 0])
    feats = layer.features.set_index("index")
    for i in ids:
        assert feats.loc[i, "class_id"] == i // 100
    assert layer.metadata["segsuite"]["label_divisor"] == 100


def test_evaluation_table_error_layers_and_csv(make_napari_viewer, qtbot, tiny_panoptic, image, tmp_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="coins")
    widget = _widget(viewer, tiny_panoptic)
    _run(qtbot, widget)
    pred_layer = viewer.layers["coins [panoptic]"]
    # ground truth: the prediction's objects, one of them dropped, plus an object it missed
    gt = np.asarray(pred_layer.data).astype(np.int64).copy()
    dropped = int(pred_layer.features["index"].iloc[-1])
    gt[gt == dropped] = 0
    gt[:10, :10] = 2**40  # an id beyond int32
    gt_layer = viewer.add_labels(gt, name="truth")
    widget = widget.open_evaluation()  # the Evaluate Segmentation dock, opened from the Panoptic dock
    assert isinstance(widget, EvaluationWidget) and widget.pred_layer.value is pred_layer
    widget.pred_layer.value = pred_layer
    widget.gt_layer.value = gt_layer
    widget.evaluate()
    qtbot.waitUntil(lambda: widget.jobs.worker is None, timeout=30000)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    result = widget.last_evaluation
    reference = api.evaluate(np.asarray(pred_layer.data), gt,
                             pred_scores=dict(zip(pred_layer.features["index"], pred_layer.features["score"], strict=True)))
    assert result.summary == pytest.approx(reference.summary)
    assert result.matching.spurious == [dropped] and result.matching.missed == [2**40]
    shown = widget.eval_table.to_dataframe()
    assert shown["class_name"].iloc[-1] == "all" and "pq" in shown.columns
    assert "PQ" in widget.eval_summary.value
    fp = viewer.layers["coins [panoptic] [false positives]"]
    miss = viewer.layers["truth [misses]"]
    assert set(np.unique(fp.data)) == {0, dropped}
    assert set(np.unique(miss.data)) == {0, 2**40}

    widget.csv_path.value = str(tmp_path / "scores.csv")
    path = widget.export_csv()
    table = pd.read_csv(path)
    assert table["pq"].iloc[-1] == pytest.approx(result.summary["pq"])
    objects = pd.read_csv(tmp_path / "scores_objects.csv")
    assert set(objects["status"]) == {"matched", "spurious", "missed"}

    # with classes on both sides, then class-agnostic on request
    gt_layer.features = pd.DataFrame({"index": [1, 2**40], "class_id": [0, 3]})
    widget.evaluate()
    qtbot.waitUntil(lambda: widget.jobs.worker is None, timeout=30000)
    assert {r["class_id"] for r in widget.last_evaluation.per_class} >= {0, 3}
    widget.ignore_classes.value = True
    widget.evaluate()
    qtbot.waitUntil(lambda: widget.jobs.worker is None, timeout=30000)
    assert [r["class_id"] for r in widget.last_evaluation.per_class] == [0]


def test_bad_inputs_are_notifications_and_write_no_layer(make_napari_viewer, qtbot, tiny_panoptic, image, notes, tmp_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(image, name="coins")
    viewer.add_labels(np.zeros(image.shape, int), name="pred")
    viewer.add_labels(np.zeros((5, 5), int), name="small truth")
    widget = _widget(viewer, tiny_panoptic)
    widget.image.value = viewer.layers["coins"]
    n_layers = len(viewer.layers)

    evaluation = EvaluationWidget(viewer)
    evaluation.pred_layer.value = viewer.layers["pred"]
    evaluation.gt_layer.value = viewer.layers["small truth"]
    evaluation.evaluate()
    assert any("shape (76, 96)" in n and "shape (5, 5)" in n for n in notes)
    assert len(viewer.layers) == n_layers and not evaluation.jobs.busy

    widget.fuse.value = "sky"
    _run(qtbot, widget)
    assert any("no class named 'sky'" in n for n in notes)
    assert len(viewer.layers) == n_layers

    semantic = build_tiny_mask2former(tmp_path / "semantic", task="semantic", num_labels=3)
    widget.fuse.value = "auto"
    widget.models.local.value = str(semantic)
    _run(qtbot, widget)
    assert any("not panoptic" in n for n in notes)
    assert len(viewer.layers) == n_layers and widget.run_button.enabled


def test_empty_layers_evaluate_to_defined_numbers(make_napari_viewer, qtbot, tiny_panoptic):
    viewer = make_napari_viewer(show=False)
    widget = EvaluationWidget(viewer)
    pred = viewer.add_labels(np.zeros((8, 8), int), name="pred")
    gt = viewer.add_labels(np.zeros((8, 8), int), name="gt")
    widget.pred_layer.value, widget.gt_layer.value = pred, gt
    widget.mode.value = "panoptic"
    widget.error_layers.value = False
    widget.evaluate()
    qtbot.waitUntil(lambda: widget.jobs.worker is None, timeout=30000)
    assert widget.last_evaluation.summary["pq"] == 1.0
    assert len(viewer.layers) == 2


def test_parse_class_list():
    names = {0: "background", 1: "cell"}
    assert parse_class_list("auto", names) is None
    assert parse_class_list("", names) == ()
    assert parse_class_list("0, Cell", names) == (0, 1)


def test_smoke_runs_a_panoptic_model_on_the_sample(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    viewer.open_sample("napari-segsuite", "coins")
    widget = PanopticWidget(viewer)
    widget.smoke()
    layer = viewer.layers["coins [panoptic]"]
    assert layer.data.shape == viewer.layers["coins"].data.shape and len(layer.features) >= 1


def test_writes_the_current_plane_of_a_stack(make_napari_viewer, qtbot, tiny_panoptic, image):
    viewer = make_napari_viewer(show=False)
    stack = np.stack([np.roll(image, 3 * k, axis=1) for k in range(4)])
    viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0))
    viewer.dims.set_point(0, 6.0)  # plane 2
    widget = _widget(viewer, tiny_panoptic)
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["stack [panoptic]"]
    assert layer.data.shape == stack.shape
    expected = api.segment_panoptic(stack[2], str(tiny_panoptic), device="cpu", label_ids_to_fuse=[0], **LOW)
    np.testing.assert_array_equal(layer.data[2], expected.labels)
    assert not layer.data[[0, 1, 3]].any()
    assert "0:2" in layer.metadata["segsuite"]["planes"]



def test_picking_a_model_shows_its_library_defaults(make_napari_viewer):
    from napari_segsuite.models.hf_segmentation import Mask2FormerRunner

    viewer = make_napari_viewer(show=False)
    widget = PanopticWidget(viewer)
    widget.threshold.value, widget.mask_threshold.value, widget.overlap.value = 0.3, 0.2, 0.1
    widget.models.model.value = "mask2former_swin_large_coco_panoptic"
    declared = inspect.signature(Mask2FormerRunner.predict_panoptic).parameters
    shown = {"threshold": widget.threshold.value, "mask_threshold": widget.mask_threshold.value,
             "overlap_mask_area_threshold": widget.overlap.value}
    assert shown == {name: declared[name].default for name in shown} == {
        "threshold": 0.5, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.8}
