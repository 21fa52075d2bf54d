"""Faults: a run into a Labels layer edited by hand asks first (overwrite / new layer / cancel).

Semantic (current plane and all planes), instance (all planes of a stack), panoptic (two output
layers) and SAM's segment everything, in a real viewer. The question sits in the dock (not a
modal dialog), so the tests answer it by clicking its buttons.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)
from napari_segsuite.widgets.base import LOCAL

pytestmark = pytest.mark.widget


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from napari_segsuite.testing.instance_doubles import sharpen_yolo

    root = tmp_path_factory.mktemp("edit_models")
    return {
        "segformer": build_tiny_segformer(root / "seg", num_labels=4),
        "panoptic": build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2),
        "yolo": sharpen_yolo(build_tiny_yolo(root / "yseg.pt", "segment", nc=3)),
    }


def _setup(widget, path):
    widget.models.model.value = LOCAL
    widget.models.local.value = str(path)
    widget.device.value = "cpu"
    return widget


def _run(qtbot, widget, start=None, timeout=60000):
    (start or widget.run)()
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)
    assert widget.jobs.last_error is None, widget.jobs.last_error


def _paint(layer, index, value=99):
    """A hand edit: napari's own paint call (what the brush does), one undo step."""
    layer.paint(index, value, refresh=True)


def edited_since_written(layer):
    from napari_segsuite.layers import edited_since_written as edited

    return edited(layer)


def _image(rng, shape=(64, 80)):
    image = np.zeros(shape, np.uint8)
    image[:, shape[1] // 2:] = 200
    return image + rng.integers(0, 40, shape, dtype=np.uint8)


def test_semantic_rerun_asks_then_new_layer_cancel_overwrite(make_napari_viewer, qtbot, models, rng):
    from napari_segsuite.widgets.semantic import SemanticWidget

    viewer = make_napari_viewer(show=False)
    data = _image(rng)
    viewer.add_image(data, name="img")
    widget = _setup(SemanticWidget(viewer), models["segformer"])
    _run(qtbot, widget)
    layer = viewer.layers["img [semantic]"]
    expected = api.segment_semantic(data, str(models["segformer"]), device="cpu").labels
    np.testing.assert_array_equal(layer.data, expected)
    assert not edited_since_written(layer) and widget.edit_question.native.isHidden()

    _run(qtbot, widget)  # no edit: no question, same pixels
    assert not widget.edit_question.open

    _paint(layer, (10, 10), 99)
    edited = np.array(layer.data, copy=True)
    assert edited_since_written(layer)
    _run(qtbot, widget)
    assert widget.edit_question.open and not widget.edit_question.native.isHidden()
    assert "edited by hand" in widget.message.value
    np.testing.assert_array_equal(layer.data, edited)  # nothing written before the answer

    widget.edit_question.new_button.native.click()
    assert not widget.edit_question.open
    np.testing.assert_array_equal(layer.data, edited)
    np.testing.assert_array_equal(viewer.layers["img [semantic] (new)"].data, expected)

    _run(qtbot, widget)
    widget.edit_question.cancel_button.native.click()
    np.testing.assert_array_equal(layer.data, edited)
    assert "Not written" in widget.message.value

    _run(qtbot, widget)
    widget.edit_question.overwrite_button.native.click()
    np.testing.assert_array_equal(layer.data, expected)
    assert not edited_since_written(layer)
    layer.undo()  # the overwrite is one undo step: the hand edit comes back
    np.testing.assert_array_equal(layer.data, edited)


def test_user_layer_with_the_output_name_is_protected(make_napari_viewer, qtbot, models, rng):
    from napari_segsuite.widgets.semantic import SemanticWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image(_image(rng), name="img")
    mine = np.zeros((64, 80), np.int32)
    mine[5:9, 5:9] = 7
    viewer.add_labels(mine, name="img [semantic]")  # the user's own layer, never written by SegSuite
    widget = _setup(SemanticWidget(viewer), models["segformer"])
    widget.image.value = viewer.layers["img"]
    _run(qtbot, widget)
    assert widget.edit_question.open
    widget.edit_question.cancel_button.native.click()
    np.testing.assert_array_equal(viewer.layers["img [semantic]"].data, mine)


def test_instance_all_planes_batch_scope_asks(make_napari_viewer, qtbot, models, rng):
    from napari_segsuite.widgets.instance import InstanceWidget

    viewer = make_napari_viewer(show=False)
    stack = (rng.random((2, 96, 96, 3)) * 255).astype(np.uint8)
    viewer.add_image(stack, name="stack", rgb=True)
    widget = _setup(InstanceWidget(viewer), models["yolo"])
    widget.conf.value, widget.max_det.value = 0.0, 5
    widget.scope.value = "all planes"
    _run(qtbot, widget)
    layer = viewer.layers["stack [instance]"]
    first = np.array(layer.data, copy=True)
    assert first.any()
    _paint(layer, (1, 3, 3), 77)
    edited = np.array(layer.data, copy=True)
    _run(qtbot, widget)
    assert widget.edit_question.open
    np.testing.assert_array_equal(layer.data, edited)
    widget.edit_question.new_button.native.click()
    np.testing.assert_array_equal(viewer.layers["stack [instance] (new)"].data, first)
    np.testing.assert_array_equal(layer.data, edited)


def test_panoptic_two_layers_nothing_written_before_the_answer(make_napari_viewer, qtbot, models, rng):
    from napari_segsuite.widgets.panoptic import PanopticWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image(_image(rng), name="img")
    widget = _setup(PanopticWidget(viewer), models["panoptic"])
    widget.threshold.value, widget.mask_threshold.value, widget.overlap.value = 0.0, 0.05, 0.0
    widget.output.value = "split"
    _run(qtbot, widget)
    sem, ins = viewer.layers["img [panoptic semantic]"], viewer.layers["img [panoptic instance]"]
    before_sem = np.array(sem.data, copy=True)
    _paint(ins, (2, 2), 55)
    sem.data_setitem((np.array([0]), np.array([0])), np.array([0]))  # keep the semantic layer comparable
    sem_now, ins_now = np.array(sem.data, copy=True), np.array(ins.data, copy=True)
    _run(qtbot, widget)
    assert widget.edit_question.open and "img [panoptic instance]" in widget.edit_question.text.value
    np.testing.assert_array_equal(sem.data, sem_now)
    np.testing.assert_array_equal(ins.data, ins_now)
    widget.edit_question.overwrite_button.native.click()
    np.testing.assert_array_equal(sem.data, before_sem)


def test_segment_everything_rerun_asks(make_napari_viewer, qtbot, tiny_sam_path, rng):
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image(rng.random((64, 64)).astype(np.float32), name="img")
    widget = _setup(SamPromptWidget(viewer), tiny_sam_path)
    for key, value in {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}.items():
        widget.auto_params[key].value = value
    _run(qtbot, widget, widget.segment_everything, timeout=120000)
    layer = viewer.layers["img [sam auto]"]
    first = np.array(layer.data, copy=True)
    assert first.any()
    _paint(layer, (1, 1), 500)
    edited = np.array(layer.data, copy=True)
    _run(qtbot, widget, widget.segment_everything, timeout=120000)
    assert widget.edit_question.open
    np.testing.assert_array_equal(layer.data, edited)
    widget.edit_question.new_button.native.click()
    np.testing.assert_array_equal(viewer.layers["img [sam auto] (new)"].data, first)


def test_semantic_all_open_images_scope_asks_and_writes_nothing_before_the_answer(make_napari_viewer, qtbot,
                                                                                   models, rng):
    from napari_segsuite.widgets.semantic import SemanticWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image(_image(rng), name="one")
    viewer.add_image(_image(rng)[::-1].copy(), name="two")
    widget = _setup(SemanticWidget(viewer), models["segformer"])
    widget.scope.value = "all open images"
    _run(qtbot, widget)
    one, two = viewer.layers["one [semantic]"], viewer.layers["two [semantic]"]
    first_one, first_two = np.array(one.data, copy=True), np.array(two.data, copy=True)
    _paint(two, (4, 4), 99)
    edited_two = np.array(two.data, copy=True)
    widget.run()
    qtbot.waitUntil(lambda: widget.edit_question.open, timeout=60000)
    assert "two [semantic]" in widget.edit_question.text.value
    assert "one [semantic]" not in widget.edit_question.text.value  # not edited: not asked about
    np.testing.assert_array_equal(two.data, edited_two)  # nothing written before the answer
    widget.edit_question.cancel_button.native.click()
    np.testing.assert_array_equal(two.data, edited_two)
    assert "Not written" in widget.message.value
    _run(qtbot, widget)
    widget.edit_question.overwrite_button.native.click()
    np.testing.assert_array_equal(two.data, first_two)
    np.testing.assert_array_equal(one.data, first_one)
