"""The SAM dock on a large multiscale zarr slide, with real clicks on the canvas.

A click is decoded in the window around it at full resolution: the preview and the
commit land where the user clicked (scaled, translated layer), equal to segment_anything's
``SamPredictor`` run on the window's crop; a second click in the window reuses its
embedding; only windows are read from level 0; bad input gives a clear message.
"""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamPredictor

from napari_segsuite.models.base import load_model
from napari_segsuite.testing.canvas import click, key, wait_until
from napari_segsuite.testing.large_images import counting_dask, open_slide, write_synthetic_slide
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget

pytestmark = pytest.mark.widget

SIZE = 3000
SCALE = np.array([0.5, 0.5])
TRANSLATE = np.array([10.0, -20.0])


@pytest.fixture
def slide_viewer(make_napari_viewer, tiny_sam_path, tmp_path):
    write_synthetic_slide(tmp_path / "slide.zarr", (SIZE, SIZE), chunk=512, min_side=512)
    levels = open_slide(tmp_path / "slide.zarr")
    level0, counter = counting_dask(levels[0])
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    image = viewer.add_image([level0, *levels[1:]], multiscale=True, name="slide", scale=SCALE, translate=TRANSLATE)
    dock = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(dock, name="SAM")
    dock.models.model.value = LOCAL
    dock.models.local.value = str(tiny_sam_path)
    dock.device.value = "cpu"
    dock.autosave_dir.value = str(tmp_path / "autosave")
    wait_until(lambda: viewer.window._qt_viewer.canvas.native.isVisible(), 10, "the canvas")
    return viewer, image, dock, levels, counter


def _look_at(viewer, image, rc, zoom=2.0):
    """Centre the camera on data pixel ``rc`` of ``image`` at ``zoom`` screen pixels per world unit."""
    import time

    from qtpy.QtWidgets import QApplication

    world = image.data_to_world(np.asarray(rc, dtype=float))
    viewer.scene.camera.center = tuple(world)
    viewer.scene.camera.zoom = zoom
    end = time.monotonic() + 2.0  # let napari load and draw the tiles it shows
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _preview_ready(dock):
    return bool(dock.preview.objects) and not dock.preview_busy


def test_a_click_on_a_large_slide_gives_a_full_resolution_mask_where_clicked(slide_viewer, tiny_sam_path):
    viewer, image, dock, levels, counter = slide_viewer
    where = (1830.0, 2210.0)
    _look_at(viewer, image, where)
    counter.reset()
    click(viewer, image, where)
    wait_until(lambda: _preview_ready(dock), 120, "the preview")
    (obj,) = dock.preview.objects
    window = obj["window"]
    assert (window.r1 - window.r0, window.c1 - window.c0) == (256, 256)  # the tiny model's input, 1:1
    assert window.r0 <= where[0] < window.r1 and window.c0 <= where[1] < window.c1
    # the same pixels as segment_anything on the window's crop of level 0
    crop = np.asarray(levels[0][window.slices])
    ref = SamPredictor(load_model(tiny_sam_path, "cpu").model)
    ref.set_image(np.repeat(crop[..., None], 3, axis=-1))
    point = np.asarray(dock.points_layer.data[-1][-2:]) - [window.r0, window.c0]
    rmasks, rscores, _ = ref.predict(point_coords=point[None, ::-1], point_labels=np.array([1]))
    np.testing.assert_array_equal(np.asarray(obj["masks"]), rmasks)
    np.testing.assert_allclose(obj["scores"], rscores, rtol=1e-6)
    # the preview layer holds the window only, placed at the window through the image's transform
    preview = dock.preview_layer
    assert preview.data.shape == (256, 256)
    np.testing.assert_allclose(preview.translate, TRANSLATE + SCALE * [window.r0, window.c0])
    np.testing.assert_array_equal(preview.data > 0, rmasks[obj["choice"]])
    # only the window's chunks were read from level 0 (at most 2 x 2 chunks of 512 pixels)
    assert 256 * 256 <= counter.pixels <= 4 * 512 * 512, counter.reads

    runs = dock.session.encoder_runs
    key(viewer, "C", ("shift",))
    # a zarr slide: the labels live on disk, in a pyramid like the image's, aligned with it
    target = viewer.layers["slide [sam]"]
    assert target.multiscale and len(target.data) == len(levels)
    np.testing.assert_allclose(target.scale, SCALE)
    np.testing.assert_allclose(target.translate, TRANSLATE)
    full = np.zeros((SIZE, SIZE), bool)
    full[window.slices] = rmasks[obj["choice"]]
    assert np.array_equal(np.asarray(target.data[0]) == 1, full)
    assert np.array_equal(np.asarray(target.data[1]) == 1, full[::2, ::2])
    assert int(target.features.set_index("label").loc[1, "area"]) == int(full.sum())
    assert dock.commits.next_id.value == "Next id: 2"
    # Undo takes the region back (the store keeps the last write's region)
    dock.commits.undo()
    assert not np.asarray(target.data[0]).any()
    dock.commits.undo(redo=True)
    assert np.array_equal(np.asarray(target.data[0]) == 1, full)

    # a second click in the same window: its embedding from the cache, no encoder run
    near = (where[0] + 20, where[1] - 15)
    click(viewer, image, near)
    wait_until(lambda: _preview_ready(dock), 60, "the second preview")
    assert dock.session.encoder_runs == runs
    assert dock.preview.objects[0]["window"] == window

    # prefetch: the windows nearest to the preview's are encoded in the background
    dock.prefetch.value = True
    dock.prompts.start_prefetch()
    from napari_segsuite.layers import plane_selection

    windows = dock.windowed_prompts(image, plane_selection(viewer, image))
    wait_until(lambda: len(dock.prompts.prefetched) >= 8 and not dock.prefetch_thread.busy, 120, "the prefetch")
    assert all(windows.cached_key(t) is not None for t in windows.neighbours(window, 8))
    # a click in a prefetched window is decoded at once, no encoder run
    dock.prefetch.value = False  # (no new prefetch around it, so every encoder run would be the click's)
    dock.prompts.clear()  # a new object: the earlier points would make one object with it
    runs = dock.session.encoder_runs
    neighbour = windows.neighbours(window, 1)[0]
    click(viewer, image, ((neighbour.r0 + neighbour.r1) / 2, (neighbour.c0 + neighbour.c1) / 2))
    wait_until(lambda: _preview_ready(dock) and dock.preview.objects[0]["window"] != window, 60, "the preview")
    got = dock.preview.objects[0]["window"]
    assert got == neighbour, (got, neighbour, dock.points_layer.data[-1])
    assert dock.session.encoder_runs == runs, (got, [windows.cached_key(t) is not None for t in windows.grid])


def test_bad_input_on_a_large_slide_gives_clear_messages(slide_viewer):
    viewer, image, dock, _levels, _counter = slide_viewer
    _look_at(viewer, image, (40.0, 40.0), zoom=1.0)
    # a point off the image
    click(viewer, image, (-30.0, 40.0))
    wait_until(lambda: "outside" in dock.message.value, 120, "the message")
    assert "outside the 3,000x3,000 image" in dock.message.value
    dock.prompts.clear()
    # prompts of one object spanning more than the largest window
    dock.points_layer.data = np.array([[100.0, 100.0], [2900.0, 2900.0]])
    wait_until(lambda: "over the limit" in dock.message.value, 120, "the message")
    assert not dock.preview.objects
    assert "slide [sam]" not in viewer.layers


def test_segment_everything_on_the_field_of_view_of_a_slide(slide_viewer):
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.tasks.sam_automatic import automatic_job
    from napari_segsuite.tasks.sam_session import SamSession
    from napari_segsuite.widgets.base import FIELD_OF_VIEW

    viewer, image, dock, levels, counter = slide_viewer
    _look_at(viewer, image, (1500.0, 1500.0), zoom=8.0)  # about 480 x 270 pixels of level 0 in view
    dock.region.value = FIELD_OF_VIEW
    permissive = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    for name, value in permissive.items():
        dock.everything.auto_params[name].value = value
    counter.reset()
    dock.everything.segment_everything()
    dock.jobs.wait(600, "segment everything")
    target = dock.everything.last_auto_layer
    assert target is not None and target.name == "slide [sam auto]" and target.multiscale
    region = target.metadata["segsuite"]["last"]["region"]
    r0, r1, c0, c1 = region
    assert (r1 - r0) * (c1 - c0) < 0.05 * SIZE * SIZE  # the field of view, not the plane
    labels = np.asarray(target.data[0])
    assert labels[r0:r1, c0:c1].any() and not labels[:r0].any() and not labels[r1:].any()
    assert not labels[:, :c0].any() and not labels[:, c1:].any()
    # only the region's chunks were read from level 0 (and what napari draws at zoom 8)
    assert counter.pixels < 0.25 * SIZE * SIZE
    # the same partition as segment everything on the region's crop, tiled at the model's input size
    session = SamSession(dock.session.runner, device="cpu")
    params = dock.everything.automatic_params()
    params.tile_size, params.tile_overlap = 256, 64
    crop = np.asarray(levels[0][r0:r1, c0:c1])
    expected = run_sync(automatic_job(session, crop, params)).labels
    ours = labels[r0:r1, c0:c1]
    pairs = np.unique(np.stack([ours.ravel(), expected.ravel()]), axis=1)
    assert len(pairs[0]) == len(np.unique(ours)) == len(np.unique(expected))  # a one-to-one relabelling


def test_propagation_through_a_large_dask_volume_in_windows(make_napari_viewer, tiny_sam_path, tmp_path):
    from napari_segsuite.testing.large_images import counting_dask, synthetic_volume

    volume = synthetic_volume((3, 1600, 1600), chunks=(1, 512, 512))
    data, counter = counting_dask(volume, chunks=(1, 512, 512))
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    image = viewer.add_image(data, name="vol", scale=(2.0, 0.5, 0.5), translate=(0.0, 5.0, -5.0))
    dock = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(dock, name="SAM")
    dock.models.model.value = LOCAL
    dock.models.local.value = str(tiny_sam_path)
    dock.device.value = "cpu"
    dock.autosave_dir.value = str(tmp_path / "autosave")
    viewer.dims.set_point(0, 2.0)  # plane 1
    _look_at(viewer, image, (1.0, 800.0, 800.0))
    click(viewer, image, (1.0, 800.0, 800.0))
    wait_until(lambda: _preview_ready(dock), 120, "the preview")
    key(viewer, "C", ("shift",))
    target = viewer.layers["vol [sam]"]
    assert "on_disk" in target.metadata["segsuite"]  # a dask image: labels on disk
    counter.reset()
    dock.propagation.prop_floor.value = 0.0
    dock.propagation.propagate()
    dock.jobs.wait(300, "propagation")
    assert "Propagated label 1 to 2 plane(s) in windows" in dock.message.value, dock.message.value
    level0 = target.data[0] if target.multiscale else target.data
    for z in (0, 2):
        assert (np.asarray(level0[z]) == 1).any()
    # only windows of planes 0 and 2 were read (chunks of 512 x 512 around them), never a whole plane
    assert counter.pixels <= 2 * 9 * 512 * 512 and counter.largest <= 512 * 512


def test_refine_a_committed_label_on_a_large_slide(slide_viewer, tiny_sam_path):
    """Re-prompt (the button) makes a committed label the mask prompt of the next click, read in the
    click's window only; Shift-C replaces the label there: the same masks as segment_anything with
    the same point and mask prompt, no pixel of the old label left anywhere, the next id unchanged."""
    viewer, image, dock, levels, counter = slide_viewer
    where = (1830.0, 2210.0)
    _look_at(viewer, image, where)
    click(viewer, image, where)
    wait_until(lambda: _preview_ready(dock), 120, "the preview")
    key(viewer, "C", ("shift",))
    target = viewer.layers["slide [sam]"]
    first = np.asarray(target.data[0]) == 1
    assert first.any() and dock.commits.next_id.value == "Next id: 2"

    # pick label 1 in the list and press Re-prompt, as a user does
    dock.commits.objects.value = "1@2d"
    dock.commits.reprompt_button.native.click()
    assert dock.prompts.refine_id.value == 1
    counter.reset()
    near = (where[0] + 12.0, where[1] + 9.0)
    click(viewer, image, near)
    wait_until(lambda: _preview_ready(dock), 120, "the refined preview")
    (obj,) = dock.preview.objects
    window = obj["window"]
    # the reference: SamPredictor on the window's crop with the point and label 1 (in the window) as mask prompt
    model = load_model(tiny_sam_path, "cpu").model
    ref = SamPredictor(model)
    ref.set_image(np.repeat(np.asarray(levels[0][window.slices])[..., None], 3, axis=-1))
    prior = first[window.slices]
    logits = dock.session.prompt_model.mask_prompt(None, prior)
    point = np.asarray(dock.points_layer.data[-1][-2:]) - [window.r0, window.c0]
    rmasks, rscores, _ = ref.predict(point_coords=point[None, ::-1], point_labels=np.array([1]), mask_input=logits)
    np.testing.assert_array_equal(np.asarray(obj["masks"]), rmasks)
    np.testing.assert_allclose(obj["scores"], rscores, rtol=1e-5)
    # only the window was read from level 0 (chunks of 512 around it), never the plane
    assert counter.pixels <= 4 * 512 * 512, counter.reads

    key(viewer, "C", ("shift",))
    labels = np.asarray(target.data[0])
    new = np.zeros(labels.shape, bool)
    new[window.slices] = rmasks[obj["choice"]]
    np.testing.assert_array_equal(labels == 1, new)  # replaced: nothing of the old label is left
    assert labels.max() == 1 and dock.commits.next_id.value == "Next id: 2"
    assert dock.prompts.refine_id.value == 0
    # the refinement is one undo step: Undo gives the first mask back
    dock.commits.undo()
    np.testing.assert_array_equal(np.asarray(target.data[0]) == 1, first)

    # a click away from the label while refining it: a clear message, no preview, nothing written
    dock.commits.objects.value = "1@2d"
    dock.commits.reprompt_button.native.click()
    _look_at(viewer, image, (300.0, 300.0))
    click(viewer, image, (300.0, 300.0))
    wait_until(lambda: "is not in the window" in dock.message.value, 120, "the message")
    assert "Label 1 is not in the window around the prompts" in dock.message.value
    assert not dock.preview.objects
    np.testing.assert_array_equal(np.asarray(target.data[0]) == 1, first)


def test_restore_autosave_on_a_large_slide_writes_region_by_region(slide_viewer, monkeypatch):
    """The labels on disk are lost (layer and store gone); *Restore autosave* (the button) replays the
    journal into a new store on disk, one region at a time: the same labels, no whole-plane read."""
    import shutil

    from napari_segsuite.core.label_store import LabelStore
    from napari_segsuite.layers import label_store_of

    viewer, image, dock, _levels, _counter = slide_viewer
    for where in ((1830.0, 2210.0), (600.0, 500.0)):
        dock.prompts.clear()
        _look_at(viewer, image, where)
        click(viewer, image, where)
        wait_until(lambda: _preview_ready(dock), 120, "the preview")
        key(viewer, "C", ("shift",))
    target = viewer.layers["slide [sam]"]
    saved = np.asarray(target.data[0]).copy()
    assert set(np.unique(saved)) == {0, 1, 2}
    store_path = label_store_of(target).path
    viewer.layers.remove(target)
    shutil.rmtree(store_path)

    reads: list[int] = []
    original = LabelStore.read

    def counting_read(self, lead, region, level=0):
        block = original(self, lead, region, level)
        reads.append(int(block.size))
        return block

    monkeypatch.setattr(LabelStore, "read", counting_read)
    dock.commits.restore_button.native.click()
    assert "Restored" in dock.message.value and "region by region" in dock.message.value, dock.message.value
    restored = viewer.layers["slide [sam]"]
    assert label_store_of(restored) is not None and restored.multiscale
    np.testing.assert_array_equal(np.asarray(restored.data[0]), saved)
    # every read of the store was a region of one commit (a window), never the plane
    assert reads and max(reads) <= 256 * 256 < SIZE * SIZE
    assert set(restored.features["label"]) >= {1, 2}
