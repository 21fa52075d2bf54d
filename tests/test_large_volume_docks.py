"""Every dock on a lazy dask volume larger than this machine's memory, in a real viewer.

The volume (:func:`napari_segsuite.testing.large_images.volume_beyond_memory`, the conftest
fixture ``volume_beyond_memory``) has more bytes than RAM + swap (or the cgroup's limit): any
code that loads it whole, or a stack of its planes, fails. Its chunks are drawn when read, so
nothing is stored. The docks run on it as a user drives them (field of view, a rectangle drawn
with the mouse, a whole plane in chunks), the results go to labels on disk, and the process's
peak resident memory over the runs is bounded (:class:`~napari_segsuite.testing.large_images.PeakMemory`).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite.core.metrics import evaluate
from napari_segsuite.core.progress import run_sync
from napari_segsuite.core.regions import Region
from napari_segsuite.layers import label_store_of
from napari_segsuite.models.base import load_model
from napari_segsuite.tasks.semantic import segment_semantic_job
from napari_segsuite.testing.canvas import _process, drag, wait_until
from napari_segsuite.testing.docks import local_model_dock, run_dock
from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.large_images import PeakMemory, memory_limit, synthetic_truth_volume
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)
from napari_segsuite.widgets.base import FIELD_OF_VIEW, LOCAL, RECTANGLE, WHOLE_PLANE
from napari_segsuite.widgets.evaluation import CURRENT_PLANE, EvaluationWidget
from napari_segsuite.widgets.instance import InstanceWidget
from napari_segsuite.widgets.panoptic import PanopticWidget
from napari_segsuite.widgets.semantic import SemanticWidget

pytestmark = pytest.mark.widget

#: The most the process's resident memory may rise over all the runs (the volume is > 20 GB).
RISE_LIMIT = 1_000_000_000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume_models")
    return {
        "semantic": build_tiny_segformer(root / "seg", num_labels=3),
        "instance": sharpen_yolo(build_tiny_yolo(root / "yolo.pt", "segment", nc=3)),
        "panoptic": build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2),
    }


@pytest.fixture
def viewer_on_volume(make_napari_viewer, volume_beyond_memory):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    layer = viewer.add_image(volume_beyond_memory, name="volume")
    wait_until(lambda: viewer.window._qt_viewer.canvas.native.isVisible(), 10, "the canvas")
    z = volume_beyond_memory.shape[0] // 2
    viewer.dims.set_point(0, z)
    _process(0.5)
    return viewer, layer, z


_dock = local_model_dock


def _run(qtbot, dock, timeout=300_000):
    run_dock(qtbot, dock, timeout)


def _warm(qtbot, dock, viewer, z):
    """Load the dock's model with a run on a small rectangle of plane ``z + 1`` (the figures of
    the measured runs are then the runs', not the model's and its library's import)."""
    from napari_segsuite.layers import region_layer_name

    choice = dock.region.value
    dock.region.value = RECTANGLE
    viewer.layers[region_layer_name(dock.image.value)].data = [
        np.array([[z + 1, 0, 0], [z + 1, 0, 300], [z + 1, 300, 300], [z + 1, 300, 0]], float)]
    viewer.dims.set_point(0, z + 1)
    _run(qtbot, dock)
    viewer.dims.set_point(0, z)
    dock.region.value = choice
    _process(0.2)


def _measured_run(qtbot, dock, rises: dict, name: str) -> None:
    with PeakMemory() as peak:
        _run(qtbot, dock)
    rises[name] = peak.rise


def test_segmentation_docks_on_a_volume_beyond_memory(viewer_on_volume, qtbot, models):
    viewer, layer, z = viewer_on_volume
    volume = layer.data
    assert volume.nbytes > memory_limit()
    shape = tuple(volume.shape[1:])
    rises = {}
    if True:
        # Semantic on the field of view (zoomed in around a point of plane z)
        semantic = _dock(SemanticWidget, viewer, layer, models["semantic"], region=FIELD_OF_VIEW)
        _warm(qtbot, semantic, viewer, z)
        viewer.scene.camera.center = (1500, 2200)
        viewer.scene.camera.zoom = 2.0
        _process(0.3)
        assert semantic.uses_region()
        _measured_run(qtbot, semantic, rises, "semantic, field of view")
        labels = viewer.layers["volume [semantic]"]
        region = Region(*labels.metadata["segsuite"]["last"]["region"])
        canvas = viewer.window._qt_viewer.canvas.native
        assert abs((region.r0 + region.r1) / 2 - 1500) <= 2 and abs((region.c0 + region.c1) / 2 - 2200) <= 2
        assert abs(region.shape[0] / (canvas.height() / 2) - 1) < 0.06, (region, canvas.height())
        assert abs(region.shape[1] / (canvas.width() / 2) - 1) < 0.06, (region, canvas.width())
        store = label_store_of(labels)
        assert store.shapes[0] == tuple(volume.shape)
        runner = load_model(str(models["semantic"]), "cpu")
        pixels = np.asarray(volume[z][region.slices])
        expected = run_sync(segment_semantic_job(pixels, runner, tile_size=512, overlap=64))
        assert np.array_equal(store.read((z,), region), expected.labels)
        assert not store.read((z - 1,), region).any()  # only the shown plane

        # Instance on a rectangle drawn with the mouse
        viewer.scene.camera.center = (2048, 2048)
        viewer.scene.camera.zoom = 0.25
        _process(0.3)
        instance = _dock(InstanceWidget, viewer, layer, models["instance"], conf=0.0, max_det=30)
        instance.region.value = RECTANGLE
        _warm(qtbot, instance, viewer, z)
        viewer.layers.selection.active = viewer.layers["volume [region]"]
        viewer.layers["volume [region]"].mode = "add_rectangle"
        drag(viewer, layer, (z, 600, 900), (z, 1500, 2300))
        _measured_run(qtbot, instance, rises, "instance, rectangle")
        inst = viewer.layers["volume [instance]"]
        box = Region(*inst.metadata["segsuite"]["last"]["region"])
        assert abs(box.r0 - 600) <= 8 and abs(box.c1 - 2300) <= 8
        plane = label_store_of(inst).read((z,), Region.whole(shape))
        ids = np.unique(plane[box.slices])
        ids = ids[ids > 0]
        assert len(ids) and set(ids) <= set(inst.features["label"])  # (the features also hold plane z + 1's)
        outside = plane.copy()
        outside[box.slices] = 0
        assert not outside.any()

        # Evaluate Segmentation: the instance labels (on disk) against the lazy truth, plane z, window by window
        truth = viewer.add_labels(synthetic_truth_volume(volume.shape, volume.chunksize), name="truth")
        evaluation = EvaluationWidget(viewer)
        evaluation.pred_layer.value, evaluation.gt_layer.value = inst, truth
        evaluation.mode.value, evaluation.compare.value = "instance", CURRENT_PLANE
        with PeakMemory() as peak:
            evaluation.evaluate()
            qtbot.waitUntil(lambda: not evaluation.jobs.busy, timeout=300_000)
        rises["evaluate, instance, one plane"] = peak.rise
        assert evaluation.jobs.last_error is None, evaluation.jobs.last_error
        assert "window by window" in evaluation.message.value
        assert not any("[false positives]" in lay.name or "[misses]" in lay.name for lay in viewer.layers)
        expected = evaluate(plane, np.asarray(truth.data[z]))
        assert evaluation.last_evaluation.summary == expected.summary and expected.summary["n_gt"] > 100

        # Panoptic on the whole plane, in chunks
        panoptic = _dock(PanopticWidget, viewer, layer, models["panoptic"], region=WHOLE_PLANE)
        panoptic.threshold.value, panoptic.mask_threshold.value, panoptic.overlap.value = 0.0, 0.05, 0.0
        _warm(qtbot, panoptic, viewer, z)
        _measured_run(qtbot, panoptic, rises, "panoptic, whole plane in chunks")
        pan = viewer.layers["volume [panoptic]"]
        assert Region(*pan.metadata["segsuite"]["last"]["region"]) == Region.whole(shape)
        whole = label_store_of(pan).read((z,), Region.whole(shape))
        assert whole.any() and set(np.unique(whole[whole > 0])) <= set(pan.features["label"])
        # Semantic on a rectangle of every plane: streams plane by plane; Cancel after a few planes
        semantic.region.value = RECTANGLE
        semantic.scope.value = "all planes"
        viewer.layers["volume [region]"].data = [np.array([[z, 2000, 100], [z, 2000, 400], [z, 2200, 400],
                                                           [z, 2200, 100]], float)]
        with PeakMemory() as peak:
            semantic.run()
            qtbot.waitUntil(lambda: "Plane 4/" in semantic.message.value, timeout=300_000)
            semantic.cancel_button.native.click()
            qtbot.waitUntil(lambda: not semantic.jobs.busy and semantic.run_button.enabled, timeout=300_000)
        rises["semantic, rectangle of all planes (cancelled)"] = peak.rise
        assert "Cancelled. The chunks written before the stop stay" in semantic.message.value
        rect = Region(2000, 2201, 100, 401)
        written = [bool(store.read((k,), rect).all()) for k in range(4)]
        assert written[:3] == [True, True, True]
        assert not store.read((volume.shape[0] - 1,), rect).any()  # the run stopped: the last plane is untouched

    print({k: f"{v / 1e6:.0f} MB" for k, v in rises.items()}, f"volume {volume.nbytes / 1e9:.1f} GB, "
          f"memory {memory_limit() / 1e9:.1f} GB")
    assert max(rises.values()) < RISE_LIMIT, rises


def test_unet_panel_on_a_volume_beyond_memory(viewer_on_volume, qtbot, tmp_path):
    """Strokes painted with the mouse into a zarr Labels layer of the volume's shape; training on
    the shown plane; Predict refuses with the way that works, and that way (the saved U-Net as the
    Semantic dock's model, run on the field of view) writes labels on disk."""
    import zarr

    viewer, layer, z = viewer_on_volume
    volume = layer.data
    strokes_store = zarr.open_array(str(tmp_path / "strokes.zarr"), mode="w", shape=volume.shape,
                                    chunks=(1, 1024, 1024), dtype="int32", fill_value=0)
    strokes = viewer.add_labels(strokes_store, name="strokes")
    viewer.scene.camera.center = (2048, 2048)
    viewer.scene.camera.zoom = 0.25
    _process(0.3)
    strokes.mode, strokes.brush_size = "paint", 40
    viewer.layers.selection.active = strokes
    for label, row in ((1, 1000), (2, 3000)):
        strokes.selected_label = label
        drag(viewer, strokes, (z, row, 800), (z, row, 3200))
    painted = np.asarray(strokes_store[z])
    assert {1, 2} <= set(np.unique(painted)) and not np.asarray(strokes_store[z + 1]).any()

    dock = SemanticWidget(viewer)
    dock.image.value = layer
    panel = dock.unet
    panel.strokes.value = strokes
    panel.steps.value, panel.patch_size.value = 4, 64
    rises = {}
    with PeakMemory() as peak:
        panel.train_button.changed.emit(True)
        qtbot.waitUntil(lambda: not panel.busy, timeout=300_000)
    rises["unet train, one plane"] = peak.rise
    assert panel.jobs.last_error is None and panel.model is not None, panel.message.value

    panel.predict_button.changed.emit(True)
    assert "large image" in panel.message.value and "Region" in panel.message.value
    assert "volume [unet]" not in viewer.layers

    panel.folder.value = str(tmp_path / "unet")
    panel.save_button.changed.emit(True)
    saved = next((tmp_path / "unet").rglob("unet_config.json")).parent
    dock.models.model.value = LOCAL
    dock.models.local.mode = "d"
    dock.models.local.value = str(saved)
    dock.device.value, dock.region.value = "cpu", FIELD_OF_VIEW
    viewer.scene.camera.center = (2100, 1900)
    viewer.scene.camera.zoom = 1.0
    _process(0.3)
    with PeakMemory() as peak:
        _run(qtbot, dock)
    rises["unet via the semantic dock, field of view"] = peak.rise
    labels = viewer.layers["volume [semantic]"]
    region = Region(*labels.metadata["segsuite"]["last"]["region"])
    block = label_store_of(labels).read((z,), region)
    assert block.min() >= 1 and set(np.unique(block)) <= {1, 2, 3}
    runner = load_model(str(saved), "cpu")
    expected = run_sync(segment_semantic_job(np.asarray(volume[z][region.slices]), runner, tile_size=512,
                                             overlap=64))
    assert np.array_equal(block, expected.labels)
    print({k: f"{v / 1e6:.0f} MB" for k, v in rises.items()})
    # training holds the shown plane's working arrays (float copies, validation logits of a
    # 4096 x 4096 plane) and imports segmentation_models_pytorch: bounded by one plane, not the volume
    assert rises["unet train, one plane"] < 2.5e9, rises
    assert rises["unet via the semantic dock, field of view"] < RISE_LIMIT, rises
