""""Run on all planes / all open images" in the widgets: the batch engine in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_torchvision,
    build_tiny_yolo,
)
from napari_segsuite.widgets.base import ALL_IMAGES, ALL_PLANES, LOCAL
from napari_segsuite.widgets.instance import InstanceWidget
from napari_segsuite.widgets.panoptic import PanopticWidget
from napari_segsuite.widgets.semantic import SemanticWidget

pytestmark = pytest.mark.widget

PANOPTIC_LOW = {"threshold": 0.0, "mask_threshold": 0.05, "overlap_mask_area_threshold": 0.0}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_widget_models")
    return {
        "lraspp": build_tiny_torchvision(root / "lraspp.pth", "lraspp_mobilenet_v3_large", num_classes=3),
        "yolo": sharpen_yolo(build_tiny_yolo(root / "tiny-seg.pt", "segment", nc=3)),
        "panoptic": build_tiny_mask2former(root / "tiny_panoptic", task="panoptic", num_labels=4, seed=2),
    }


def _setup(widget, path, layer=None):
    widget.models.model.value = LOCAL
    widget.models.local.value = str(path)
    widget.device.value = "cpu"
    if layer is not None:
        widget.image.value = layer
    return widget


def _run(qtbot, widget, timeout=60000):
    widget.run()
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)
    assert widget.jobs.last_error is None, widget.jobs.last_error


def _stack(rng, n=3, shape=(64, 80)):
    planes = []
    for k in range(n):
        img = np.zeros(shape, np.uint8)
        img[:, (10 + 15 * k):] = 200
        planes.append(img + rng.integers(0, 40, shape, dtype=np.uint8))
    return np.stack(planes)


def _blobs(rng, shape=(96, 128)):
    """RGB with bright disks on a colour ramp (what the tiny YOLO reacts to)."""
    img = np.zeros((*shape, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, shape[1])[None, :]
    img[..., 2] = np.linspace(255, 0, shape[0])[:, None]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for r, c in ((30, 40), (60, 90)):
        img[(yy - r) ** 2 + (xx - c) ** 2 < 12 ** 2] = (255, 255, 40)
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def test_semantic_all_planes_of_a_scaled_translated_stack(make_napari_viewer, qtbot, models, rng):
    viewer = make_napari_viewer(show=False)
    stack = _stack(rng)
    image = viewer.add_image(stack, name="stack", scale=(3.0, 0.5, 2.0), translate=(4.0, -10.0, 7.0))
    widget = _setup(SemanticWidget(viewer), models["lraspp"], image)
    widget.scope.value = ALL_PLANES
    assert widget.uses_batch()
    seen = []
    widget.jobs.on_progress = lambda p: (seen.append((p.step, p.total)), widget._on_progress(p))
    _run(qtbot, widget)
    layer = viewer.layers["stack [semantic]"]
    assert layer.data.shape == stack.shape and layer.data.dtype == np.int32
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    world = image.data_to_world((2, 30, 40))
    np.testing.assert_allclose(layer.world_to_data(world), (2, 30, 40))
    runner = api.load_model(str(models["lraspp"]), "cpu")
    for z in range(3):  # the widget's own tiling (512: one tile here) and its class id + 1 labels
        expected = api.segment_semantic(stack[z], runner, tile_size=512).labels
        np.testing.assert_array_equal(layer.data[z], expected)
    assert (3, 3) in seen
    meta = layer.metadata["segsuite"]
    assert meta["scope"] == ALL_PLANES and meta["batch_task"] == "semantic" and meta["source_image"] == "stack"
    assert set(meta["planes"]) == {"0:0", "0:1", "0:2"}
    assert meta["model"]["device"] == "cpu" and meta["parameters"]["background_zero"] is False
    features = layer.features.set_index("index")
    present = sorted(int(i) for i in np.unique(layer.data))
    assert sorted(features.index) == present
    for label in present:
        assert features.loc[label, "pixel_count"] == (layer.data == label).sum()
        assert features.loc[label, "class_name"] == runner.class_names[label - 1]
    assert set(widget.legend.rows) == set(present)


def test_instance_on_all_open_images(make_napari_viewer, qtbot, models, rng):
    """Two open images (RGB, and a gray stack scaled): one Labels layer per image, aligned."""
    viewer = make_napari_viewer(show=False)
    rgb = _blobs(rng)
    gray = np.stack([rgb[..., 0], rgb[::-1, :, 1]])
    a = viewer.add_image(rgb, name="a", rgb=True, translate=(5.0, 6.0))
    b = viewer.add_image(gray, name="b", scale=(2.0, 0.5, 0.5))
    widget = _setup(InstanceWidget(viewer), models["yolo"], a)
    widget.conf.value, widget.max_det.value = 0.002, 4
    widget.scope.value = ALL_IMAGES
    _run(qtbot, widget)
    runner = api.load_model(str(models["yolo"]), "cpu")
    la, lb = viewer.layers["a [instance]"], viewer.layers["b [instance]"]
    assert la.data.shape == rgb.shape[:2] and lb.data.shape == gray.shape
    np.testing.assert_allclose(la.translate, a.translate)
    np.testing.assert_allclose(lb.scale, b.scale)
    expected_a = api.segment_instances(rgb, runner, conf=0.002, max_det=4)
    assert len(expected_a.table)
    np.testing.assert_array_equal(la.data, expected_a.labels)
    # ids continue over the planes of the stack, exactly as in the API's stack result
    expected_b = api.segment_instances(gray, runner, conf=0.002, max_det=4, stack=True)
    np.testing.assert_array_equal(lb.data, expected_b.labels)
    assert not (set(np.unique(lb.data[0])) - {0}) & set(np.unique(lb.data[1]))
    for layer, expected in ((la, expected_a), (lb, expected_b)):
        rows = layer.features.set_index("index")
        assert {"class_name", "score", "area"} <= set(rows.columns)
        assert sorted(rows.index) == sorted(int(i) for i in np.unique(layer.data) if i)
        table = expected.table.set_index("label")
        for label in rows.index:  # each object's own class and score, also on plane 1
            assert rows.loc[label, "score"] == pytest.approx(table.loc[label, "score"], rel=1e-5)
            assert rows.loc[label, "class_name"] == table.loc[label, "class_name"]
            assert rows.loc[label, "area"] == (layer.data == label).sum()
    assert la.metadata["segsuite"]["scope"] == ALL_IMAGES and "planes" in lb.metadata["segsuite"]
    # a widget-only option is refused for all open images with a clear message, and changes nothing
    widget.boxes_output.value = True
    before = np.asarray(la.data).copy()
    widget.run()
    assert "all open images" in widget.message.value and not widget.jobs.busy
    np.testing.assert_array_equal(la.data, before)


def test_panoptic_all_planes_has_ids_unique_over_planes(make_napari_viewer, qtbot, models):
    from skimage import data

    viewer = make_napari_viewer(show=False)
    img = data.coins()[::4, ::4]
    stack = np.stack([img, np.roll(img, 9, axis=1)])
    image = viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0), translate=(0.0, 2.0, 2.0))
    widget = _setup(PanopticWidget(viewer), models["panoptic"], image)
    widget.threshold.value, widget.mask_threshold.value, widget.overlap.value = 0.0, 0.05, 0.0
    widget.fuse.value = "0"
    widget.scope.value = ALL_PLANES
    _run(qtbot, widget)
    layer = viewer.layers["stack [panoptic]"]
    assert layer.data.shape == stack.shape
    np.testing.assert_allclose(layer.translate, image.translate)
    runner = api.load_model(str(models["panoptic"]), "cpu")
    offset = 0
    for z in range(2):
        expected = api.segment_panoptic(stack[z], runner, label_ids_to_fuse=[0], **PANOPTIC_LOW)
        assert expected.labels.max() > 0
        shifted = np.where(expected.labels > 0, expected.labels + offset, 0)
        np.testing.assert_array_equal(layer.data[z], shifted)
        offset += int(expected.labels.max())
    rows = layer.features.set_index("index")
    assert {"class_id", "class_name", "is_thing", "score"} <= set(rows.columns)
    assert sorted(rows.index) == sorted(int(i) for i in np.unique(layer.data) if i)
    assert layer.metadata["segsuite"]["parameters"]["label_ids_to_fuse"] == [0]


def test_cancel_leaves_existing_layers_untouched(make_napari_viewer, qtbot, models, rng):
    viewer = make_napari_viewer(show=False)
    small = viewer.add_image(_stack(rng, n=1)[0], name="small")
    viewer.add_image(np.stack([_stack(rng, n=1, shape=(384, 384))[0]] * 40), name="long")
    earlier = np.zeros(small.data.shape, np.int32)
    earlier[5:20, 5:30] = 7
    existing = viewer.add_labels(earlier.copy(), name="small [semantic]")
    names = [layer.name for layer in viewer.layers]
    widget = _setup(SemanticWidget(viewer), models["lraspp"], small)
    widget.scope.value = ALL_IMAGES
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value > 3, timeout=60000)  # "small" and a plane of "long" done
    widget.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=60000)
    assert widget.jobs.last_error is None
    assert "Cancelled" in widget.message.value
    assert [layer.name for layer in viewer.layers] == names
    np.testing.assert_array_equal(existing.data, earlier)
    assert "segsuite" not in existing.metadata
