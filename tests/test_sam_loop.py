"""The SAM click loop in a real, shown viewer with real mouse and key events on the canvas."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite.testing.canvas import (
    _process,
    annotate_objects,
    click,
    coin_centres,
    key,
    wait_until,
)
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget

pytestmark = pytest.mark.widget


def _dock(viewer, tiny_sam_path, tmp_path):
    dock = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(dock, name="SAM")
    dock.models.model.value = LOCAL
    dock.models.local.value = str(tiny_sam_path)
    dock.device.value = "cpu"
    dock.autosave_dir.value = str(tmp_path / "autosave")
    return dock


@pytest.fixture
def coins_viewer(make_napari_viewer, tiny_sam_path, tmp_path):
    from skimage import data

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    image = viewer.add_image(data.coins(), name="coins")
    dock = _dock(viewer, tiny_sam_path, tmp_path)
    wait_until(lambda: viewer.window._qt_viewer.canvas.native.isVisible(), 10, "the canvas")
    _process(0.3)  # the dock is shown and laid out: the canvas has its final size
    viewer.reset_view()
    _process(0.1)
    return viewer, image, dock


def test_ten_objects_by_clicks_and_one_key_each_lose_nothing(coins_viewer):
    viewer, image, dock = coins_viewer
    # the dock opened with the image's prompt layers, the points layer active in add mode
    assert dock.points_layer.name == "coins [sam points]"
    assert viewer.layers.selection.active is dock.points_layer and dock.points_layer.mode == "add"
    log = annotate_objects(viewer, dock, image, coin_centres(10))
    assert log.problems == []
    assert log.objects == 10 and log.lost == 0
    assert log.points_added == log.clicks == 15 and log.labels_added == 10
    assert max(log.actions) <= 3 and sum(log.actions) == 25
    target = viewer.layers["coins [sam]"]
    assert len(np.unique(target.data)) == 11
    assert dock.commits.next_id.value == f"Next id: {int(target.data.max()) + 1}"
    assert len(dock.commits.objects.choices) == 10


def test_polarity_resets_and_focus_returns_after_a_commit(coins_viewer):
    viewer, image, dock = coins_viewer
    (r, c), = coin_centres(1)
    key(viewer, "N", ("shift",))  # new points negative
    assert dock.prompts.negative.value
    click(viewer, image, (r, c - 18))
    assert not dock.points_layer.features["positive"].iloc[-1]
    key(viewer, "N", ("shift",))  # back to positive for the object itself
    click(viewer, image, (r, c))
    key(viewer, "N", ("shift",))  # and negative again before committing
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
    key(viewer, "C", ("shift",))
    assert "coins [sam]" in viewer.layers
    # the new Labels layer did not steal the focus: the next click adds a positive point
    assert viewer.layers.selection.active is dock.points_layer and dock.points_layer.mode == "add"
    assert not dock.prompts.negative.value
    click(viewer, image, (r + 5, c + 5))
    assert len(dock.points_layer.data) == 1 and bool(dock.points_layer.features["positive"].iloc[-1])
    # Ctrl-click is a negative point too
    click(viewer, image, (r + 30, c + 30), modifiers=("ctrl",))
    assert list(dock.points_layer.features["positive"]) == [True, False]


def test_candidates_show_the_selected_one(coins_viewer):
    viewer, image, dock = coins_viewer
    click(viewer, image, coin_centres(1)[0])
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
    buttons = dock.candidate_buttons
    choice = dock.preview.choice
    assert [b.native.isChecked() for b in buttons] == [i == choice for i in range(3)]
    other = (choice + 1) % 3
    key(viewer, str(other + 1), ("alt",))
    assert dock.preview.choice == other
    assert [b.native.isChecked() for b in buttons] == [i == other for i in range(3)]
    np.testing.assert_array_equal(dock.preview_layer.data > 0, np.asarray(dock.preview.objects[0]["masks"][other]))


def test_prompts_follow_the_image(coins_viewer):
    viewer, image, dock = coins_viewer
    (r, c), = coin_centres(1)
    click(viewer, image, (r, c))
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
    other = viewer.add_image(np.ascontiguousarray(image.data[::-1]), name="flipped")
    # making the other image's layer active moves the prompts and preview to it
    viewer.layers.selection.active = other
    wait_until(lambda: dock.image.value is other, 5, "the Image box to follow")
    assert dock.points_layer.name == "flipped [sam points]" and dock.preview.objects == []
    assert not viewer.layers["coins [sam preview]"].data.any()
    # a click on the canvas prompts the new image; the preview is computed for it
    dock.prompts.focus_points()
    click(viewer, other, (image.data.shape[0] - 1 - r, c))
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
    assert dock.preview.source.image_name == "flipped"
    key(viewer, "C", ("shift",))
    assert "flipped [sam]" in viewer.layers and "coins [sam]" not in viewer.layers
    # choosing the image in the Image box moves them back, and activating a prompt layer keeps the image
    dock.image.value = image
    assert dock.points_layer.name == "coins [sam points]"
    viewer.layers.selection.active = viewer.layers["flipped [sam points]"]
    wait_until(lambda: dock.image.value is other, 5, "the Image box to follow")
    assert dock.points_layer.name == "flipped [sam points]"


def test_a_commit_after_the_plane_changed_is_refused(make_napari_viewer, tiny_sam_path, tmp_path, notes):
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(3)
    viewer.add_image(rng.integers(0, 255, (3, 40, 50), dtype=np.uint8), name="stack")
    dock = _dock(viewer, tiny_sam_path, tmp_path)
    viewer.dims.set_point(0, 0)
    dock.points_layer.add([0, 20, 25])
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
    assert dock.preview.source.plane == (0, None, None)
    dock.prompts._timer.blockSignals(True)  # the user moves the slider and commits before a new preview
    viewer.dims.set_point(0, 1)
    dock.commit()
    assert any("computed for plane 0" in n for n in notes)
    assert "stack [sam]" not in viewer.layers


def test_undo_only_takes_steps_that_changed_labels(make_napari_viewer, tiny_sam_path, tmp_path):
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(4)
    viewer.add_image(rng.integers(0, 255, (3, 40, 50), dtype=np.uint8), name="stack")
    dock = _dock(viewer, tiny_sam_path, tmp_path)
    viewer.dims.set_point(0, 1)
    dock.overwrite.value = True
    dock.points_layer.add([1, 20, 25])
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
    dock.commit()
    target = viewer.layers["stack [sam]"]
    label = int(target.data[1].max())
    assert label == 1 and dock.undo_button.enabled and "commit of label 1" in dock.undo_button.tooltip
    # a propagation that changes no pixel (its masks are what the layer holds) takes no undo step
    same = {1: np.asarray(target.data[1]) == label}
    _, sel = __import__("napari_segsuite.layers", fromlist=["current_plane"]).current_plane(viewer, viewer.layers["stack"])
    written, changed = dock.propagation.write_propagation(target, sel, 0, label, same)
    assert written == [1] and changed == 0 and len(dock.commits.undo_steps) == 1
    dock.undo_button.changed.emit()  # Undo: the commit goes
    assert not target.data.any() and "Undid the commit of label 1" in dock.message.value
    assert not dock.undo_button.enabled and dock.redo_button.enabled
    dock.redo_button.changed.emit()
    assert (target.data[1] == label).any()


def test_committed_objects_can_be_deleted_and_reprompted(make_napari_viewer, tiny_sam_path, tmp_path):
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(5)
    viewer.add_image(rng.integers(0, 255, (40, 50), dtype=np.uint8), name="img")
    dock = _dock(viewer, tiny_sam_path, tmp_path)
    dock.overwrite.value = True
    for where in ([10, 10], [30, 40]):
        dock.points_layer.add(where)
        wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
        dock.commit()
    target = viewer.layers["img [sam]"]
    committed = dock.commits.committed
    assert [c.label for c in committed] == [1, 2] and all(c.plane_key == "2d" for c in committed)
    shown = [c for c in committed if c.area > 0]
    dock.commits.objects.value = f"{shown[-1].label}@2d"
    assert target.selected_label == shown[-1].label and target.show_selected_label
    dock.commits.reprompt_selected()
    assert dock.prompts.refine_id.value == shown[-1].label
    assert viewer.layers.selection.active is dock.points_layer
    dock.commits.objects.value = f"{shown[-1].label}@2d"
    dock.commits.delete_selected()
    assert not (target.data == shown[-1].label).any()
    assert dock.commits.undo_steps[-1].text == f"delete of label {shown[-1].label}"


def test_the_first_click_on_a_new_plane_encodes_after_its_frame_and_below_the_gui_priority(coins_viewer):
    import os

    from qtpy.QtCore import QEvent, QObject

    from napari_segsuite.widgets.sam_prompt import DEBOUNCE_MS, job_nice

    viewer, image, dock = coins_viewer
    canvas = viewer.window._qt_viewer.canvas
    # the highlight markers of the prompt points were drawn (their program linked) before any point
    markers = canvas.layer_to_visual[dock.points_layer].node.selection_markers
    assert not markers._program._need_build
    paints = []

    class Paints(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Paint:
                paints.append({"points": len(dock.points_layer.data), "job": dock.jobs.busy,
                               "debounce": dock.prompts._timer.isActive(), "waits": dock.prompts._paint_watch.armed})
            return False

    watch = Paints()
    canvas.native.installEventFilter(watch)
    (r, c), = coin_centres(1)
    click(viewer, image, (r, c))
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
    canvas.native.removeEventFilter(watch)
    # the canvas drew the click before the encoder started, and no debounce delayed the encoding
    first = next(p for p in paints if p["points"] == 1)
    assert first == {"points": 1, "job": False, "debounce": False, "waits": True}
    assert not markers._program._need_build  # nothing was linked again at the click
    job_thread = dock.jobs._job_thread.thread
    gui = os.getpriority(os.PRIO_PROCESS, 0)  # the GUI thread keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, job_thread.native_id) == min(19, gui + job_nice())
    assert job_nice() == 0 or gui < os.getpriority(os.PRIO_PROCESS, job_thread.native_id)
    click(viewer, image, (r + 5, c))
    # the plane is encoded now: prompt changes are debounced again
    assert dock.prompts._timer.interval() == DEBOUNCE_MS and not dock.prompts._paint_watch.armed
    wait_until(lambda: len(dock.points_layer.data) == 2 and not dock.preview_busy, 60, "the second preview")
    assert dock.session.encoder_runs == 1


def test_a_hidden_canvas_does_not_hold_the_encoding(make_napari_viewer, tiny_sam_path, tmp_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.random.default_rng(6).integers(0, 255, (40, 50), dtype=np.uint8), name="img")
    dock = _dock(viewer, tiny_sam_path, tmp_path)
    dock.points_layer.add([20, 25])
    # no frame will come: the encoding starts from the event loop at once, not after FIRST_PAINT_MAX_MS
    assert dock.prompts._paint_watch.armed and dock.prompts._paint_watch._timer.interval() == 0
    wait_until(lambda: dock.jobs.busy or bool(dock.preview.objects), 5, "the encoding to start")
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 60, "the preview")
