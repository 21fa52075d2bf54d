"""The SAM dock's Find section: a concept in words (or exemplar boxes) previewed by SAM 3, committed like any object."""

import numpy as np
import pytest

from napari_segsuite.core.image import prepare_rgb_uint8
from napari_segsuite.testing.tiny_trackers import build_tiny_sam3_video
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget

pytestmark = pytest.mark.widget


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return build_tiny_sam3_video(tmp_path_factory.mktemp("sam3_find") / "sam3")


def _wait(qtbot, widget, timeout=180000):
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)


def test_find_a_concept_then_commit_with_shift_c(make_napari_viewer, qtbot, sam3_folder, tmp_path):
    from qtpy.QtCore import Qt

    from napari_segsuite.testing.instance_doubles import ramp_with_blobs

    rgb = ramp_with_blobs()[:96, :128].copy()
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(rgb, name="blobs", scale=(0.5, 2.0), translate=(4, -6))
    widget = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.models.model.value = LOCAL
    widget.models.local.value = str(sam3_folder)
    widget.device.value = "cpu"
    widget.autosave_dir.value = str(tmp_path / "autosave")
    widget.find_conf.value = 0.24
    field = widget.find_text.native
    field.setFocus()
    qtbot.keyClicks(field, "cell")
    qtbot.keyClick(field, Qt.Key_Return)  # Return in the Find field runs Find
    _wait(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    runner = widget.session.runner
    assert runner.family == "sam3" and widget.session.prompt_model.title == "SAM 3 tracker"
    ref = runner.predict_instances(prepare_rgb_uint8(rgb), conf=0.24, concepts=["cell"])
    assert len(ref) > 0 and len(widget._objects) == len(ref)
    order = np.argsort(-ref.scores, kind="stable")
    for obj, i in zip(widget._objects, order, strict=True):
        np.testing.assert_array_equal(obj["masks"][0], ref.masks[i])
        assert obj["class_name"] == "cell"
    assert widget.preview_layer.data.any()
    assert "Found" in widget.message.value
    # review done: Shift-C on the canvas commits every found instance under new ids
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key_C, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: "blobs [sam]" in viewer.layers, timeout=10000)
    target = viewer.layers["blobs [sam]"]
    np.testing.assert_allclose(target.scale, image.scale)
    expected = np.zeros(rgb.shape[:2], np.int32)
    for k, i in enumerate(order):
        expected[ref.masks[i] & (expected == 0)] = k + 1
    present = sorted(int(v) for v in np.unique(expected) if v)
    written = sorted(int(v) for v in np.unique(target.data) if v)
    assert len(written) == len(present) > 0
    assert set(target.features.set_index(target.features.columns[0]).loc[written, "class_name"]) == {"cell"}
    assert not widget._objects  # the preview is cleared after the commit


def test_find_bad_input(make_napari_viewer, qtbot, sam3_folder, tiny_sam_path, tmp_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(tiny_sam_path)
    widget.device.value = "cpu"
    widget.find_text.value = ""
    widget.find()
    assert "Type a concept" in widget.message.value
    widget.find_text.value = "cell,,dark"
    widget.find()
    assert "concepts is empty" in widget.message.value
    widget.find_text.value = "cell"
    widget.find()  # a SAM checkpoint takes no concepts
    _wait(qtbot, widget)
    assert "Find needs SAM 3" in str(widget.jobs.last_error or widget.message.value)
    assert "img [sam]" not in viewer.layers


def test_track_the_concept_through_planes(make_napari_viewer, qtbot, sam3_folder, tmp_path):
    from qtpy.QtCore import Qt

    from napari_segsuite import api
    from napari_segsuite.testing.stacks import moving_disk_stack

    stack, _ = moving_disk_stack(n=4)
    frames = ((stack > 0) * 200 + 20).astype(np.uint8)
    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(frames, name="movie", scale=(3.0, 0.5, 0.5))
    viewer.add_labels(np.zeros(frames.shape, np.int32), name="movie [sam]", scale=image.scale)
    viewer.layers["movie [sam]"].data[0, 0, 0] = 7  # an existing object keeps its id; new ids come after
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(sam3_folder)
    widget.device.value = "cpu"
    widget.autosave_dir.value = str(tmp_path / "autosave")
    widget.find_text.value = "cell"
    widget.find_conf.value = 0.2
    widget.image.value = image
    qtbot.mouseClick(widget.track_button.native, Qt.LeftButton)
    _wait(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    start = int(viewer.dims.current_step[0])  # tracking starts on the plane shown
    ref = api.track_concepts(frames, widget.session.runner, classes=["cell"], conf=0.2, start_index=start)
    assert len(ref.table) > 0
    target = viewer.layers["movie [sam]"]
    got = np.asarray(target.data)
    assert got[0, 0, 0] == 7  # not overwritten ('overwrite' is off)
    found = ref.labels > 0
    found[0, 0, 0] = False
    np.testing.assert_array_equal(got[found], ref.labels[found] + 7)
    assert not got[~found & (np.arange(got.size).reshape(got.shape) > 0)].any()
    rows = target.features.set_index(target.features.columns[0])
    assert set(rows.loc[[int(v) + 7 for v in ref.table.label], "class_name"]) == {"cell"}


def _find_dock(viewer, sam3_folder, tmp_path):
    widget = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.models.model.value = LOCAL
    widget.models.local.value = str(sam3_folder)
    widget.device.value = "cpu"
    widget.autosave_dir.value = str(tmp_path / "autosave")
    return widget


def test_find_with_positive_and_negative_exemplar_boxes(make_napari_viewer, qtbot, sam3_folder, tmp_path):
    from qtpy.QtCore import Qt

    from napari_segsuite import api
    from napari_segsuite.testing.canvas import drag
    from napari_segsuite.testing.instance_doubles import ramp_with_blobs

    rgb = ramp_with_blobs()[:144, :208].copy()
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    image = viewer.add_image(rgb, name="blobs", scale=(0.5, 2.0), translate=(4, -6))
    widget = _find_dock(viewer, sam3_folder, tmp_path)
    widget.find_conf.value = 0.2
    widget.find_exemplars.value = True
    viewer.reset_view()
    boxes = widget.prompts.boxes_layer
    assert boxes is not None and "Ctrl-drag" in widget.find_hint.value
    viewer.layers.selection.active = boxes
    boxes.mode = "add_rectangle"
    qtbot.wait(50)
    positive, negative = ((22, 32), (58, 68)), ((100, 140), (140, 180))
    drag(viewer, boxes, *positive)  # around a yellow blob: more like this
    drag(viewer, boxes, *negative, modifiers=("ctrl",))  # a piece of ramp: not like this
    assert len(boxes.data) == 2
    np.testing.assert_array_equal(np.asarray(boxes.features["exemplar"]), [1, 0])
    drawn = np.array([[*np.min(b, axis=0), *np.max(b, axis=0)] for b in boxes.data])
    np.testing.assert_allclose(drawn, [[*positive[0], *positive[1]], [*negative[0], *negative[1]]], atol=1.5)
    edge = np.asarray(boxes.edge_color)
    assert edge[0, 0] > 0.9 and edge[0, 1] > 0.9 and edge[1, 1] < 0.1  # yellow, red
    _wait(qtbot, widget)
    qtbot.mouseClick(widget.find_button.native, Qt.LeftButton)
    _wait(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    assert "Found" in widget.message.value, widget.message.value
    ref = api.segment_instances(rgb, sam3_folder, device="cpu", conf=0.2, exemplars=drawn, exemplar_labels=[1, 0])
    assert len(ref.table) > 0 and len(widget._objects) == len(ref.table)
    preview = np.zeros(rgb.shape[:2], np.int32)
    for k, obj in enumerate(widget._objects):
        assert obj["class_name"] == "exemplar"
        preview[obj["masks"][0] & (preview == 0)] = k + 1
    np.testing.assert_array_equal(preview, ref.labels)
    np.testing.assert_allclose(sorted(float(o["scores"][0]) for o in widget._objects), sorted(ref.table.score),
                               rtol=1e-5)
    # the "not like this" box is part of the call: all-positive boxes give another answer
    runner = widget.session.runner
    from napari_segsuite.widgets.sam_find import concept_model

    both = concept_model(runner).predict_instances(prepare_rgb_uint8(rgb), conf=0.0, exemplars=drawn,
                                                   exemplar_labels=[1, 1])
    mixed = concept_model(runner).predict_instances(prepare_rgb_uint8(rgb), conf=0.0, exemplars=drawn,
                                                    exemplar_labels=[1, 0])
    assert not np.allclose(np.sort(both.scores), np.sort(mixed.scores))
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key_C, Qt.ShiftModifier)
    qtbot.waitUntil(lambda: "blobs [sam]" in viewer.layers, timeout=10000)
    target = viewer.layers["blobs [sam]"]
    np.testing.assert_allclose(target.scale, image.scale)
    np.testing.assert_array_equal(np.asarray(target.data) > 0, ref.labels > 0)
    written = sorted(int(v) for v in np.unique(target.data) if v)
    assert len(written) == len(np.unique(ref.labels[ref.labels > 0]))
    rows = target.features.set_index("label") if "label" in target.features else \
        target.features.set_index(target.features.columns[0])
    assert set(rows.loc[written, "class_name"]) == {"exemplar"}


def test_exemplar_box_outside_the_image(make_napari_viewer, qtbot, sam3_folder, tmp_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="img")
    widget = _find_dock(viewer, sam3_folder, tmp_path)
    widget.find_exemplars.value = True
    boxes = widget.prompts.boxes_layer
    boxes.add_rectangles(np.array([[100, 100], [100, 140], [130, 140], [130, 100]], float))
    widget.find()
    assert "outside the 64x64 image" in widget.message.value, widget.message.value
    assert not widget.jobs.busy  # refused before any model load or job
    assert "img [sam]" not in viewer.layers and not widget._objects
    # only "not like this" boxes and no concept: told what is missing
    boxes.data = []
    boxes.add_rectangles(np.array([[10, 10], [10, 30], [30, 30], [30, 10]], float))
    boxes.features = {"exemplar": [0]}
    widget.find()
    assert "not like this" in widget.message.value, widget.message.value
    assert "img [sam]" not in viewer.layers and not widget._objects
