"""The Semantic, Instance and Panoptic docks on large images in a real viewer: a multiscale
OME-Zarr slide read through a read-counting dask array, the field of view, a rectangle drawn
with the mouse, the whole plane in chunks, labels on disk, undo with a key, Cancel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite.batch.chunking import segment_chunked
from napari_segsuite.batch.tasks import get_task
from napari_segsuite.core.label_store import LabelStore
from napari_segsuite.core.progress import run_sync
from napari_segsuite.core.regions import Region
from napari_segsuite.layers import label_store_of
from napari_segsuite.models.base import load_model
from napari_segsuite.tasks.semantic import segment_semantic_job
from napari_segsuite.testing.canvas import drag, key, wait_until
from napari_segsuite.testing.docks import local_model_dock, run_dock
from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.large_images import counting_dask, open_slide, write_synthetic_slide
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)
from napari_segsuite.widgets.base import FIELD_OF_VIEW, RECTANGLE, WHOLE_PLANE
from napari_segsuite.widgets.instance import InstanceWidget
from napari_segsuite.widgets.panoptic import PanopticWidget
from napari_segsuite.widgets.semantic import SemanticWidget

pytestmark = pytest.mark.widget

SHAPE = (9000, 7000)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.zarr"
    write_synthetic_slide(path, SHAPE, chunk=512, min_side=600)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("large_models")
    return {
        "semantic": build_tiny_segformer(root / "seg", num_labels=3),
        "instance": sharpen_yolo(build_tiny_yolo(root / "yolo.pt", "segment", nc=3)),
        "panoptic": build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2),
    }


@pytest.fixture
def viewer_on_slide(make_napari_viewer, slide):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    levels = open_slide(slide)
    lazy0, counter = counting_dask(levels[0])
    layer = viewer.add_image([lazy0, *levels[1:]], name="slide", multiscale=True)
    wait_until(lambda: viewer.window._qt_viewer.canvas.native.isVisible(), 10, "the canvas")
    return viewer, layer, counter, levels


_dock = local_model_dock


def _run(qtbot, dock, timeout=240_000):
    run_dock(qtbot, dock, timeout)


def _look_at(viewer, center, zoom):
    from napari_segsuite.testing.canvas import _process

    viewer.scene.camera.center = center
    viewer.scene.camera.zoom = zoom
    _process(0.3)


def test_semantic_field_of_view_reads_only_the_view_and_undo_is_a_key(viewer_on_slide, qtbot, models):
    viewer, layer, counter, levels = viewer_on_slide
    _look_at(viewer, (4100, 3300), 1.5)
    counter.reset()
    dock = _dock(SemanticWidget, viewer, layer, models["semantic"], region=FIELD_OF_VIEW)
    _run(qtbot, dock)
    labels = viewer.layers["slide [semantic]"]
    region = Region(*labels.metadata["segsuite"]["last"]["region"])
    canvas = viewer.window._qt_viewer.canvas.native
    # the region is what the canvas shows, at full resolution
    assert abs(region.shape[0] - canvas.height() / 1.5) <= 3 and abs(region.shape[1] - canvas.width() / 1.5) <= 3
    assert abs((region.r0 + region.r1) / 2 - 4100) <= 2 and abs((region.c0 + region.c1) / 2 - 3300) <= 2
    # level 0 was read only around the view: 512-pixel chunks covering it, not the level
    covered = (-(-region.r1 // 512) - region.r0 // 512) * (-(-region.c1 // 512) - region.c0 // 512) * 512**2
    assert 0 < counter.pixels <= covered + 4 * 1920 * 1080, (counter.pixels, covered)
    assert counter.pixels < levels[0].size / 20
    # labels on disk, a pyramid matching the image's, in the store the layer names
    assert labels.multiscale and [tuple(a.shape) for a in labels.data] == [tuple(a.shape) for a in levels]
    store = label_store_of(labels)
    level0 = store.read((), Region.whole(SHAPE))
    # the same labels as the semantic task on the same pixels (one chunk: the region itself)
    runner = load_model(str(models["semantic"]), "cpu")
    expected = run_sync(segment_semantic_job(levels[0][region.slices], runner, tile_size=512, overlap=64))
    assert np.array_equal(level0[region.slices], expected.labels)
    outside = level0.copy()
    outside[region.slices] = 0
    assert not outside.any()
    assert np.array_equal(np.asarray(labels.data[2]), level0[::4, ::4])  # the coarser levels follow
    assert int(labels.features["area"].sum()) == region.size and "class_name" in labels.features
    assert labels.metadata["segsuite"]["last"]["model"]["name"]
    assert store.attrs["last"]["region"] == region.as_list()
    # Ctrl-Z on the layer puts the region back; Ctrl-Shift-Z writes it again
    viewer.layers.selection.active = labels
    key(viewer, "Z", ("ctrl",))
    assert not store.read((), region).any() and len(labels.features) == 0
    key(viewer, "Z", ("ctrl", "shift"))
    assert np.array_equal(store.read((), region), expected.labels)
    assert int(labels.features["area"].sum()) == region.size


def test_instance_rectangle_drawn_with_the_mouse(viewer_on_slide, qtbot, models):
    viewer, layer, counter, levels = viewer_on_slide
    _look_at(viewer, (2000, 2000), 0.5)
    dock = _dock(InstanceWidget, viewer, layer, models["instance"], conf=0.0, max_det=30)
    dock.region.value = RECTANGLE
    shapes = viewer.layers["slide [region]"]
    assert viewer.layers.selection.active is shapes and shapes.mode == "add_rectangle"
    drag(viewer, layer, (1400, 1200), (2500, 2700))
    assert len(shapes.data) == 1
    counter.reset()
    _run(qtbot, dock)
    labels = viewer.layers["slide [instance]"]
    region = Region(*labels.metadata["segsuite"]["last"]["region"])
    assert abs(region.r0 - 1400) <= 8 and abs(region.r1 - 2500) <= 8 and abs(region.c1 - 2700) <= 8
    assert counter.pixels < 4 * region.size
    store = label_store_of(labels)
    plane = store.read((), Region.whole(SHAPE))
    inside = plane[region.slices]
    ids = np.unique(inside[inside > 0])
    assert len(ids) > 0 and not plane[: region.r0].any() and not plane[:, region.c1:].any()
    table = labels.features
    assert set(ids) == set(table["label"]) and {"class_name", "score", "area"} <= set(table.columns)
    assert (table["bbox_0_min"] >= region.r0).all() and (table["bbox_1_max"] <= region.c1).all()
    # the same ids as the instance task run chunked on the same region (one chunk here)
    spec = get_task("instance")
    runner = load_model(str(models["instance"]), "cpu")
    params = dock.batch_params()
    out = np.zeros(region.shape, np.int32)
    segment_chunked(levels[0][region.slices], lambda w: spec.func(w, runner, **params), out, kind="instance",
                    chunk=2048, overlap=64)
    assert np.array_equal(inside, out)
    # a second rectangle adds objects after the first ones' ids
    shapes.data = [np.array([[3000, 3000], [3000, 3600], [3500, 3600], [3500, 3000]], float)]
    _run(qtbot, dock)
    second = store.read((), Region(3000, 3500, 3000, 3600))
    assert second.max() == 0 or second[second > 0].min() > ids.max()
    assert np.array_equal(store.read((), region), inside)  # the first rectangle kept


def test_panoptic_field_of_view_on_the_slide(viewer_on_slide, qtbot, models):
    viewer, layer, counter, levels = viewer_on_slide
    _look_at(viewer, (6000, 5000), 2.0)
    dock = _dock(PanopticWidget, viewer, layer, models["panoptic"], region=FIELD_OF_VIEW)
    dock.threshold.value, dock.mask_threshold.value, dock.overlap.value = 0.0, 0.05, 0.0
    counter.reset()
    _run(qtbot, dock)
    labels = viewer.layers["slide [panoptic]"]
    region = Region(*labels.metadata["segsuite"]["last"]["region"])
    assert counter.pixels < levels[0].size / 20
    store = label_store_of(labels)
    block = store.read((), region)
    assert block.any() and set(np.unique(block[block > 0])) == set(labels.features["label"])
    assert {"class_name", "is_thing"} <= set(labels.features.columns)


def test_whole_plane_in_chunks_cancel_keeps_written_chunks(make_napari_viewer, qtbot, models, tmp_path):
    shape = (4500, 4200)
    write_synthetic_slide(tmp_path / "small.zarr", shape, chunk=512, min_side=600, seed=3)
    viewer = make_napari_viewer(show=True)
    levels = open_slide(tmp_path / "small.zarr")
    lazy0, counter = counting_dask(levels[0])
    layer = viewer.add_image([lazy0, *levels[1:]], name="small", multiscale=True)
    dock = _dock(SemanticWidget, viewer, layer, models["semantic"], region=WHOLE_PLANE, tile_size=0)
    assert dock.uses_region()  # a multiscale image: labels on disk, the plane in chunks
    notes = []
    dock.run()
    qtbot.waitUntil(lambda: "chunk 2/9" in dock.message.value, timeout=240_000)
    notes.append(dock.message.value)
    dock.cancel_button.native.click()
    qtbot.waitUntil(lambda: not dock.jobs.busy and dock.run_button.enabled, timeout=240_000)
    labels = viewer.layers["small [semantic]"]
    assert "Cancelled. The chunks written before the stop stay" in dock.message.value
    assert "cannot be undone" in dock.message.value  # 19 Mpx: more than the undo limit
    reopened = LabelStore.open(label_store_of(labels).path, mode="r")
    plane = reopened.read((), Region.whole(shape))
    done = np.count_nonzero(plane)
    assert 2 * 2048 * 2048 <= done < plane.size  # whole chunks written, the rest untouched
    assert counter.pixels < levels[0].size  # stopped early: not everything was read
    # run again to the end: every pixel labelled, the features cover the plane
    _run(qtbot, dock)
    plane = label_store_of(labels).read((), Region.whole(shape))
    assert plane.min() >= 1 and int(labels.features["area"].sum()) == plane.size
    assert "chunk 2/9" in notes[0] and "whole plane" in dock.message.value


def test_labels_go_to_the_ome_zarr_labels_group(make_napari_viewer, qtbot, models, tmp_path):
    write_synthetic_slide(tmp_path / "img.zarr", (2500, 2000), chunk=512, min_side=600, seed=5)
    viewer = make_napari_viewer(show=False)
    layer = viewer.add_image(open_slide(tmp_path / "img.zarr"), name="img", multiscale=True)
    dock = _dock(SemanticWidget, viewer, layer, models["semantic"], region=RECTANGLE, tile_size=0)
    viewer.layers["img [region]"].data = [np.array([[100, 200], [100, 700], [600, 700], [600, 200]], float)]
    _run(qtbot, dock)
    labels = viewer.layers["img [semantic]"]
    store = label_store_of(labels)
    assert store.path == tmp_path / "img.zarr" / "labels" / "img_semantic"
    import json

    group = json.loads((tmp_path / "img.zarr" / "labels" / "zarr.json").read_text())
    assert group["attributes"]["ome"]["labels"] == ["img_semantic"]
    attrs = json.loads((store.path / "zarr.json").read_text())["attributes"]
    # corners on pixel centres 100 and 600: pixels 100..600 inclusive (napari's pixel i spans i +- 0.5)
    assert attrs["segsuite"]["last"]["region"] == [100, 601, 200, 701]
    assert attrs["segsuite"]["last"]["model"]["name"] and attrs["ome"]["image-label"]
    # a new viewer re-opens the same labels from the store
    viewer.layers.remove(labels)
    _run(qtbot, dock)
    again = viewer.layers["img [semantic]"]
    assert "Re-opened" in dock.message.value and label_store_of(again).path == store.path
