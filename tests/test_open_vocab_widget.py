"""The Instance dock with SAM 3 concepts and with Grounding DINO + SAM, in a real viewer, driven by clicks and keys."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.testing.tiny_open_vocab import build_tiny_grounding_dino, build_tiny_sam3
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.instance import InstanceWidget

pytestmark = pytest.mark.widget


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_vocab_widget")
    return {"sam3": build_tiny_sam3(root / "sam3"), "gdino": build_tiny_grounding_dino(root / "gdino")}


@pytest.fixture
def image():
    from napari_segsuite.testing.instance_doubles import ramp_with_blobs

    return ramp_with_blobs()


def _dock(viewer, qtbot, model):
    widget = InstanceWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.models.model.value = LOCAL
    widget.models.local.value = str(model)
    widget.device.value = "cpu"
    return widget


def _type(qtbot, line_edit, text):
    from qtpy.QtCore import Qt

    native = line_edit.native
    native.setFocus()
    native.selectAll()
    qtbot.keyClick(native, Qt.Key_Delete)
    qtbot.keyClicks(native, text)
    qtbot.keyClick(native, Qt.Key_Return)


def _click_run(qtbot, widget, timeout=120000):
    from qtpy.QtCore import Qt

    qtbot.mouseClick(widget.run_button.native, Qt.LeftButton)
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)


def test_concept_search_with_sam3_in_the_instance_dock(make_napari_viewer, qtbot, folders, image, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    layer_in = viewer.add_image(image, name="blobs", scale=(2.0, 0.5), translate=(10, -3))
    widget = _dock(viewer, qtbot, folders["sam3"])
    widget.conf.value = 0.24
    _type(qtbot, widget.classes, "cell, nucleus")
    assert widget.classes.value == "cell, nucleus"
    _click_run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["blobs [instance]"]
    np.testing.assert_array_equal(layer.scale, layer_in.scale)
    np.testing.assert_array_equal(layer.translate, layer_in.translate)
    ref = api.segment_instances(image, folders["sam3"], device="cpu", classes="cell, nucleus", conf=0.24)
    assert len(ref.table) > 0
    np.testing.assert_array_equal(layer.data, ref.labels)
    present = sorted(int(i) for i in np.unique(layer.data) if i)
    id_col = "label" if "label" in layer.features else "label_id"
    feats = layer.features.set_index(id_col)
    assert set(feats.loc[present, "class_name"]) <= {"cell", "nucleus"}
    assert layer.metadata["segsuite"]["params"]["concepts"] == ["cell", "nucleus"]
    import os
    from pathlib import Path

    shot_path = Path(os.environ.get("SEGSUITE_SCREENSHOTS", tmp_path)) / "instance_dock_sam3_concepts.png"
    shot = viewer.screenshot(str(shot_path), canvas_only=False)
    assert shot.shape[0] > 500
    # an empty concept: a clear message, and the layer is not touched
    before = np.asarray(layer.data).copy()
    _type(qtbot, widget.classes, "cell,,nucleus")
    _click_run(qtbot, widget)
    assert "concepts is empty" in str(widget.jobs.last_error or widget.message.value)
    np.testing.assert_array_equal(layer.data, before)


def test_grounding_dino_then_sam_in_the_instance_dock(make_napari_viewer, qtbot, folders, image, tiny_sam_path):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    viewer.add_image(image, name="blobs")
    widget = _dock(viewer, qtbot, folders["gdino"])
    widget.conf.value = 0.5
    _type(qtbot, widget.classes, "cell, nucleus")
    # without masks from SAM the detector's boxes are refused, nothing is written
    _click_run(qtbot, widget)
    assert "detection model" in str(widget.jobs.last_error or widget.message.value)
    assert "blobs [instance]" not in viewer.layers
    from qtpy.QtCore import QPoint

    header = widget.sam_group.toggle_button  # the option sits in the collapsed "SAM masks and boxes" group
    qtbot.mouseClick(header, Qt.LeftButton)
    box = widget.refine.native
    assert box.isVisible()
    qtbot.mouseClick(box, Qt.LeftButton, pos=QPoint(8, box.height() // 2))  # on the tick box
    assert widget.refine.value and widget.sam_model.visible
    widget.sam_model.value = str(tiny_sam_path)
    _click_run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["blobs [instance]"]
    ref = api.detect_then_segment(image, folders["gdino"], str(tiny_sam_path), device="cpu",
                                  classes="cell, nucleus", conf=0.5)
    assert len(ref.table) > 0
    np.testing.assert_array_equal(layer.data, ref.labels)
    assert layer.metadata["segsuite"]["sam"]["family"] == "sam"
