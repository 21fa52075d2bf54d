"""'Segment everything' and propagation in the SAM widget, with a real viewer and the tiny SAM."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.api import SamSession
from napari_segsuite.testing.stacks import moving_disk_stack
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget

pytestmark = pytest.mark.widget

PERMISSIVE = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_offset": 0.01,
              "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


@pytest.fixture
def setup(make_napari_viewer, tiny_sam_path):
    viewer = make_napari_viewer(show=False)
    stack, truth = moving_disk_stack()
    image = viewer.add_image(stack, name="cells", scale=(2.0, 0.5, 0.5), translate=(1.0, 3.0, -2.0))
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(tiny_sam_path)
    widget.device.value = "cpu"
    viewer.dims.set_point(0, 1.0 + 2.0 * 3)  # plane z=3
    return viewer, image, widget, stack, truth


def _wait(qtbot, widget, timeout=60000):
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=timeout)


def test_segment_everything_writes_the_api_labels_into_the_current_plane(setup, qtbot, tiny_sam_path):
    viewer, image, widget, stack, _ = setup
    for key, value in PERMISSIVE.items():
        widget.auto_params[key].value = value
    widget.auto_button.clicked()
    _wait(qtbot, widget)
    layer = viewer.layers["cells [sam auto]"]
    assert widget.jobs.last_error is None, widget.jobs.last_error
    expected = api.sam_automatic(stack[3], SamSession(str(tiny_sam_path), device="cpu"), **PERMISSIVE)
    assert expected.labels.max() > 0
    np.testing.assert_array_equal(layer.data[3], expected.labels)
    assert not layer.data[[0, 1, 2, 4, 5, 6, 7]].any()
    np.testing.assert_allclose(layer.scale, image.scale)
    rows = layer.features.set_index("index")
    np.testing.assert_allclose(rows.loc[expected.table["label"], "predicted_iou"].astype(float),
                               expected.table["predicted_iou"], rtol=1e-6)
    assert "stability_score" in rows.columns


def test_propagation_writes_the_object_into_its_planes_in_one_undo_step(setup, qtbot, tiny_sam_path):
    viewer, image, widget, stack, truth = setup
    before = np.zeros(stack.shape, np.int32)
    before[3][truth[3]] = 1  # the committed object
    before[:, 50:60, 2:12] = 5  # another object on every plane
    target = viewer.add_labels(before.copy(), name="cells [sam]", scale=image.scale, translate=image.translate)
    widget.prop_label.value = 1
    widget.prop_max.value = 2
    widget.prop_floor.value = 0.0
    widget.prop_button.clicked()
    _wait(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    expected = api.propagate(stack, SamSession(str(tiny_sam_path), device="cpu"), start_index=3, mask=truth[3],
                             max_planes=2, iou_floor=0.0)
    assert sorted(expected) == [1, 2, 4, 5]
    data = np.asarray(target.data)
    for z in range(8):
        if z in expected:
            np.testing.assert_array_equal(data[z] == 1, expected[z] & (before[z] != 5))
        else:
            np.testing.assert_array_equal(data[z], before[z])
    assert (data[:, 50:60, 2:12] == 5).all()  # the other object is untouched
    assert 1 in set(target.features["index"])
    target.undo()  # one step undoes every plane
    np.testing.assert_array_equal(target.data, before)


def test_cancelled_propagation_leaves_the_volume_as_it_was(setup, qtbot):
    viewer, image, widget, stack, truth = setup
    before = np.zeros(stack.shape, np.int32)
    before[3][truth[3]] = 1
    target = viewer.add_labels(before.copy(), name="cells [sam]", scale=image.scale, translate=image.translate)
    widget.prop_label.value = 0  # the last committed id: none recorded -> must be picked
    widget.propagate()
    assert not widget.jobs.busy and "Label 0" in widget.message.value
    widget.prop_label.value = 1
    widget.propagate()
    widget.cancel_button.clicked()
    _wait(qtbot, widget)
    assert "Cancelled" in widget.message.value
    np.testing.assert_array_equal(target.data, before)


def test_cancelled_segment_everything_creates_no_layer(setup, qtbot):
    viewer, _, widget, _, _ = setup
    for key, value in PERMISSIVE.items():
        widget.auto_params[key].value = value
    widget.segment_everything()
    widget.cancel_button.clicked()
    _wait(qtbot, widget)
    assert "Cancelled" in widget.message.value
    assert "cells [sam auto]" not in viewer.layers
