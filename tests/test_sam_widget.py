"""The SAM prompt widget in a real viewer: prompts in, preview, candidates, commit, undo, planes."""

import numpy as np
import pytest
from app_model.types import KeyBinding

from napari_segsuite.api import SamSession
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import POSITIVE, SamPromptWidget

pytestmark = pytest.mark.widget


@pytest.fixture
def stack():
    rng = np.random.default_rng(5)
    return rng.integers(0, 255, (4, 60, 80), dtype=np.uint8)


@pytest.fixture
def setup(make_napari_viewer, tiny_sam_path, stack, tmp_path):
    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(stack, name="cells", scale=(3.0, 0.5, 0.5), translate=(2.0, 10.0, -4.0))
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(tiny_sam_path)
    widget.device.value = "cpu"
    widget.autosave_dir.value = str(tmp_path / "autosave")
    viewer.dims.set_point(0, 2.0)  # plane z=0
    return viewer, image, widget


def _idle(qtbot, widget, timeout=30000):
    qtbot.waitUntil(lambda: not widget.preview_busy, timeout=timeout)


def _world(image, z, r, c):
    """Data coordinates of the prompt layers, which share the image's transform."""
    assert np.allclose(image.scale, (3.0, 0.5, 0.5))
    return np.array([z, r, c], dtype=float)


def _press(viewer, key):
    viewer.keymap[KeyBinding.from_str(key)](viewer)


def test_point_prompt_preview_equals_the_session_on_the_right_plane(setup, qtbot, tiny_sam_path, stack):
    viewer, image, widget = setup
    viewer.dims.set_point(0, 2.0 + 3.0 * 2)  # plane z=2
    points, _ = widget.ensure_prompt_layers()
    points.add(_world(image, 2, 20, 30))
    _idle(qtbot, widget)
    assert len(widget._objects) == 1, (widget.message.value, widget.jobs.last_error)
    ref = SamSession(str(tiny_sam_path), device="cpu")
    ref.set_image(stack[2])
    masks, scores = ref.predict(points=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    np.testing.assert_array_equal(widget._objects[0]["masks"], masks)
    np.testing.assert_allclose(widget._objects[0]["scores"], scores, rtol=1e-6)
    best = int(np.argmax(scores))
    preview = widget.preview_layer.data
    np.testing.assert_array_equal(preview[2] > 0, masks[best])
    assert not preview[[0, 1, 3]].any()
    assert widget.candidate_buttons[best].text.startswith(f"{best + 1}: ")
    # Alt-2 shows the second candidate
    _press(viewer, "Alt-2")
    np.testing.assert_array_equal(widget.preview_layer.data[2] > 0, masks[1])
    # commit: label 1 in plane 2 only, aligned with the image, one undo step
    _press(viewer, "Shift-C")
    target = viewer.layers["cells [sam]"]
    np.testing.assert_allclose(target.scale, image.scale)
    np.testing.assert_allclose(target.translate, image.translate)
    np.testing.assert_array_equal(target.data[2] == 1, masks[1])
    assert not target.data[[0, 1, 3]].any()
    assert len(points.data) == 0 and not widget.preview_layer.data.any()
    assert list(target.features["index"]) == [1]
    assert target.features["score"][0] == pytest.approx(float(scores[1]))
    target.undo()
    assert not target.data.any()
    target.redo()
    assert (target.data[2] == 1).sum() == masks[1].sum()


def test_negative_points_and_existing_labels_are_kept(setup, qtbot, tiny_sam_path, stack):
    viewer, image, widget = setup
    viewer.dims.set_point(0, 2.0)  # z=0
    points, _ = widget.ensure_prompt_layers()
    target = viewer.add_labels(np.zeros(stack.shape, np.int32), name="mine", scale=image.scale, translate=image.translate)
    target.data[0, :30, :] = 7
    widget.target.reset_choices()
    widget.target.value = target
    widget.multimask.value = False
    points.add(_world(image, 0, 40, 40))
    _press(viewer, "Shift-N")
    points.add(_world(image, 0, 10, 10))
    assert list(points.features[POSITIVE]) == [True, False]
    _idle(qtbot, widget)
    ref = SamSession(str(tiny_sam_path), device="cpu")
    ref.set_image(stack[0])
    masks, _ = ref.predict(points=np.array([[40.0, 40.0], [10.0, 10.0]]), point_labels=np.array([1, 0]), multimask=False)
    np.testing.assert_array_equal(widget._objects[0]["masks"], masks)
    widget.commit()
    assert (target.data[0, :30] == 7).all()  # never overwritten
    np.testing.assert_array_equal(target.data[0, 30:] == 8, masks[0][30:])


def test_boxes_are_objects_of_one_batch_and_plane_switching_uses_the_cache(setup, qtbot):
    viewer, image, widget = setup
    viewer.dims.set_point(0, 2.0 + 3.0)  # z=1
    _, boxes = widget.ensure_prompt_layers()

    def rect(z, r0, c0, r1, c1):
        return np.array([_world(image, z, r, c) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))])

    boxes.add_rectangles(rect(1, 5, 5, 25, 30))
    boxes.add_rectangles(rect(1, 30, 40, 55, 75))
    _idle(qtbot, widget)
    assert len(widget._objects) == 2 and all(o["masks"].shape[0] == 1 for o in widget._objects)
    widget.commit()
    target = viewer.layers["cells [sam]"]
    assert set(np.unique(target.data[1])) <= {0, 1, 2}
    runs = widget.session.encoder_runs
    viewer.dims.set_point(0, 2.0 + 3.0 * 3)  # z=3
    widget.points_layer.add(_world(image, 3, 30, 40))
    _idle(qtbot, widget)
    widget.commit()
    assert widget.session.encoder_runs == runs + 1
    assert target.data[3].max() == target.data.max() and target.data[1].max() <= 2
    viewer.dims.set_point(0, 2.0 + 3.0)  # back to z=1: cached
    widget.points_layer.add(_world(image, 1, 40, 10))
    _idle(qtbot, widget)
    assert widget.session.encoder_runs == runs + 1


def test_stale_results_are_dropped(setup, qtbot):
    _, image, widget = setup
    points, _ = widget.ensure_prompt_layers()
    points.add(_world(image, 0, 20, 20))
    widget.request_preview()  # starts now, with one point
    points.add(_world(image, 0, 40, 60))  # newer prompts before it returns
    _idle(qtbot, widget)
    # what is shown belongs to the two-point prompt set
    ref = widget.session
    masks, _ = ref.predict(points=np.array([[20.0, 20.0], [40.0, 60.0]]), point_labels=np.array([1, 1]))
    np.testing.assert_array_equal(widget._objects[0]["masks"], masks)


def test_cancel_an_encoding_changes_no_layer(setup, qtbot):
    viewer, _, widget = setup
    before = list(viewer.layers)
    widget.run()
    widget.jobs.cancel()
    _idle(qtbot, widget)
    assert list(viewer.layers) == before
    assert "Cancelled" in widget.message.value


def test_autosave_and_restore(setup, qtbot, tmp_path):
    viewer, image, widget = setup
    points, _ = widget.ensure_prompt_layers()
    points.add(_world(image, 0, 30, 30))
    _idle(qtbot, widget)
    widget.commit()
    target = viewer.layers["cells [sam]"]
    entry = widget.autosaver.last_entry
    assert entry is not None and entry.parent.parent == tmp_path / "autosave"
    saved = np.array(target.data, copy=True)
    target.data_setitem(np.nonzero(target.data), 0)
    widget.restore_autosave()
    np.testing.assert_array_equal(target.data, saved)


def test_bad_inputs_notify_and_change_no_label(setup, qtbot, notes, tmp_path):
    viewer, image, widget = setup
    wrong = viewer.add_labels(np.full((5, 5), 3, np.int32), name="wrong")
    widget.target.reset_choices()
    widget.target.value = wrong
    points, _ = widget.ensure_prompt_layers()
    points.add(_world(image, 0, 30, 30))
    _idle(qtbot, widget)
    widget.commit()
    assert any("has shape" in n for n in notes) and (wrong.data == 3).all()
    # a point outside the image on the current plane
    widget.target.value = None
    widget.clear()
    points.add(_world(image, 0, 30, 500))
    _idle(qtbot, widget)
    assert any("outside" in n for n in notes)
    assert "cells [sam]" not in viewer.layers
    # a checkpoint that is not SAM
    from napari_segsuite.testing.tiny_models import build_tiny_segformer

    widget.models.local.value = str(build_tiny_segformer(tmp_path / "seg"))
    widget.clear()
    points.add(_world(image, 0, 30, 30))
    _idle(qtbot, widget)
    assert any("Segment Anything" in n for n in notes)


def test_prefetch_encodes_the_neighbouring_planes(setup, qtbot, stack):
    viewer, image, widget = setup
    widget.prefetch.value = True
    viewer.dims.set_point(0, 2.0 + 3.0)  # z=1
    points, _ = widget.ensure_prompt_layers()
    points.add(_world(image, 1, 20, 20))
    _idle(qtbot, widget)
    qtbot.waitUntil(lambda: not widget.prefetch_thread.busy and len(widget.prefetched) == 2, timeout=30000)
    assert widget.session.is_cached(stack[0]) and widget.session.is_cached(stack[2])
    runs = widget.session.encoder_runs
    viewer.dims.set_point(0, 2.0 + 3.0 * 2)  # z=2 was prefetched
    points.add(_world(image, 2, 30, 30))
    _idle(qtbot, widget)
    assert widget.session.encoder_runs == runs and len(widget._objects) == 1
    qtbot.waitUntil(lambda: not widget.prefetch_thread.busy, timeout=30000)


def _cached_plane(qtbot, viewer, image, widget, z=0):
    """Encode plane ``z`` through a first click, clear, and return the points layer."""
    viewer.dims.set_point(0, 2.0 + 3.0 * z)
    points, _ = widget.ensure_prompt_layers()
    points.add(_world(image, z, 30, 30))
    _idle(qtbot, widget)
    assert widget._objects, (widget.message.value, widget.jobs.last_error)
    widget.clear()
    _idle(qtbot, widget)
    return points


def test_prompts_on_a_cached_plane_reuse_one_prompt_thread(setup, qtbot, stack):
    viewer, image, widget = setup
    points = _cached_plane(qtbot, viewer, image, widget)
    runs, calls = widget.session.encoder_runs, widget.prompt_thread.calls_run
    ref = SamSession(widget.session.runner)
    ref.set_image(stack[0])
    threads = set()
    for k, (r, c) in enumerate([(20, 30), (40, 50), (10, 60)]):
        points.add(_world(image, 0, r, c))
        _idle(qtbot, widget)
        threads.add(widget.prompt_thread.thread)
        assert widget.prompt_thread.calls_run == calls + k + 1
        masks, scores = ref.predict(points=points.data[:, 1:], point_labels=np.ones(k + 1, int))
        np.testing.assert_array_equal(np.asarray(widget._objects[0]["masks"]), masks)
        np.testing.assert_array_equal(widget._objects[0]["scores"], scores)
        # the preview shows the best candidate; only that one was upsampled so far
        best = int(np.argmax(scores))
        np.testing.assert_array_equal(widget.preview_layer.data[0] > 0, masks[best])
    assert len(threads) == 1 and next(iter(threads)).is_alive()
    assert widget.session.encoder_runs == runs  # no encoder run, no job: the prompt thread answered
    widget.shutdown()
    assert not widget.prompt_thread.thread.is_alive()


def test_only_the_newest_prompts_are_decoded_and_shown(setup, qtbot, stack):
    import threading

    viewer, image, widget = setup
    points = _cached_plane(qtbot, viewer, image, widget)
    release = threading.Event()
    widget.prompt_thread.submit(lambda: release.wait(10))  # keep the prompt thread busy meanwhile
    calls = widget.prompt_thread.calls_run
    for r, c in [(20, 30), (40, 50), (10, 60)]:
        points.add(_world(image, 0, r, c))
        widget._timer.stop()
        widget.request_preview()  # no debounce: every change is a request
    assert widget.prompt_thread.pending == 1
    release.set()
    _idle(qtbot, widget)
    assert widget.prompt_thread.calls_run == calls + 2  # the blocker and the newest request
    ref = SamSession(widget.session.runner)
    ref.set_image(stack[0])
    masks, _ = ref.predict(points=points.data[:, 1:], point_labels=np.ones(3, int))
    np.testing.assert_array_equal(np.asarray(widget._objects[0]["masks"]), masks)


def test_a_failing_decode_notifies_once_and_keeps_the_labels(setup, qtbot, notes):
    viewer, image, widget = setup
    points = _cached_plane(qtbot, viewer, image, widget)
    calls = widget.prompt_thread.calls_run
    points.add(_world(image, 0, 30, 500))  # outside the 60x80 image
    _idle(qtbot, widget)
    assert widget.prompt_thread.calls_run == calls + 1
    assert sum("outside" in n for n in notes) == 1
    assert "outside" in widget.message.value and not widget.preview_layer.data.any()
    # the thread survives the error: the next prompts are answered
    points.data = np.array([_world(image, 0, 30, 30)])
    _idle(qtbot, widget)
    assert widget._objects and widget.prompt_thread.thread.is_alive()


def test_changing_the_image_data_is_never_answered_from_a_stale_embedding(setup, qtbot, stack):
    viewer, image, widget = setup
    points = _cached_plane(qtbot, viewer, image, widget)
    runs = widget.session.encoder_runs
    image.data = stack[:, ::-1].copy()  # same shape, other pixels
    points.add(_world(image, 0, 20, 20))
    _idle(qtbot, widget)
    assert widget.session.encoder_runs == runs + 1
    ref = SamSession(widget.session.runner)
    ref.set_image(stack[0, ::-1])
    masks, _ = ref.predict(points=np.array([[20.0, 20.0]]))
    np.testing.assert_array_equal(np.asarray(widget._objects[0]["masks"]), masks)


def test_closing_the_viewer_ends_the_threads(make_napari_viewer, qtbot, tiny_sam_path, stack):
    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(stack, name="cells", scale=(3.0, 0.5, 0.5), translate=(2.0, 10.0, -4.0))
    widget = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(tiny_sam_path)
    widget.device.value = "cpu"
    widget.prefetch.value = True
    points = _cached_plane(qtbot, viewer, image, widget)
    points.add(_world(image, 0, 20, 20))
    _idle(qtbot, widget)
    threads = [widget.prompt_thread.thread, widget.prefetch_thread.thread]
    assert all(t is not None for t in threads)
    viewer.close()
    qtbot.waitUntil(lambda: widget._closed, timeout=10000)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
