"""The Semantic Segmentation widget in a real viewer, with tiny real-architecture checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.models.base import load_model
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_torchvision,
)
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.semantic import ALL_PLANES, CURRENT_PLANE, SemanticWidget

pytestmark = pytest.mark.widget


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic_widget_models")
    return {
        "segformer": build_tiny_segformer(root / "tiny-segformer", num_labels=4),
        "mask2former": build_tiny_mask2former(root / "tiny-m2f-semantic", "semantic"),
        "lraspp": build_tiny_torchvision(root / "lraspp.pth", "lraspp_mobilenet_v3_large", num_classes=3),
        }


def _widget(viewer, path, layer):
    widget = SemanticWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(path)
    widget.device.value = "cpu"
    widget.image.value = layer
    return widget


def _run(qtbot, widget, timeout=30000):
    widget.run()
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)


def _image(rng, shape=(90, 120)):
    image = np.zeros(shape, np.uint8)
    image[:, shape[1] // 2:] = 200
    return image + rng.integers(0, 40, shape, dtype=np.uint8)


@pytest.mark.parametrize("family", ["segformer", "mask2former", "lraspp"])
def test_2d_image_gives_labels_features_and_legend(make_napari_viewer, qtbot, models, rng, family):
    viewer = make_napari_viewer(show=False)
    data = _image(rng)
    layer = viewer.add_image(data, name="img")
    widget = _widget(viewer, models[family], layer)
    widget.with_confidence.value = True
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    labels = viewer.layers["img [semantic]"]
    expected = api.segment_semantic(data, load_model(str(models[family]), "cpu"), confidence=True)
    assert np.array_equal(labels.data, expected.labels)
    features = labels.features
    assert {"class_id", "class_name", "pixel_count"} <= set(features.columns)
    assert sorted(features["index"]) == expected.present
    for _, row in features.iterrows():
        assert row["class_id"] == row["index"] - 1
        assert row["class_name"] == expected.class_names[row["index"]]
        assert row["pixel_count"] == (labels.data == row["index"]).sum()
    meta = labels.metadata["segsuite"]
    assert meta["task"] == "semantic" and meta["class_names"] == expected.class_names
    assert meta["model"]["family"] == load_model(str(models[family]), "cpu").family
    confidence = viewer.layers["img [semantic confidence]"]
    np.testing.assert_allclose(confidence.data, expected.confidence, atol=1e-6)
    assert list(widget.legend.rows) == expected.present


def test_legend_hides_and_shows_a_class(make_napari_viewer, qtbot, models, rng):
    viewer = make_napari_viewer(show=False)
    data = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    data[:50] //= 4
    layer = viewer.add_image(data, name="rgb", rgb=True)
    widget = _widget(viewer, models["segformer"], layer)
    _run(qtbot, widget)
    labels = viewer.layers["rgb [semantic]"]
    ids = list(widget.legend.rows)
    assert ids, "no class in the legend"
    before = labels.colormap.map(np.asarray(ids))
    widget.legend.set_visible(ids[0], False)
    after = labels.colormap.map(np.asarray(ids))
    assert after[0, 3] == 0.0
    np.testing.assert_allclose(after[1:], before[1:])  # other classes keep their colours
    np.testing.assert_allclose(after[0, :3], before[0, :3])
    widget.legend.set_visible(ids[0], True)
    np.testing.assert_allclose(labels.colormap.map(np.asarray(ids)), before)


def test_scaled_translated_layer_stays_aligned(make_napari_viewer, qtbot, models, rng):
    viewer = make_napari_viewer(show=False)
    layer = viewer.add_image(_image(rng), name="img", scale=(0.5, 2.0), translate=(10.0, -7.0))
    widget = _widget(viewer, models["lraspp"], layer)
    _run(qtbot, widget)
    labels = viewer.layers["img [semantic]"]
    np.testing.assert_allclose(labels.scale, layer.scale)
    np.testing.assert_allclose(labels.translate, layer.translate)
    world = layer.data_to_world((30, 40))
    assert np.allclose(labels.world_to_data(world), (30, 40))


def test_stack_all_planes_and_current_plane(make_napari_viewer, qtbot, models, rng):
    viewer = make_napari_viewer(show=False)
    stack = np.stack([np.roll(_image(rng, (64, 80)), 20 * k, axis=1) for k in range(3)])
    stack[1] //= 3
    layer = viewer.add_image(stack, name="stack", scale=(3.0, 1.0, 1.0))
    widget = _widget(viewer, models["segformer"], layer)
    widget.planes.value = ALL_PLANES
    widget.tile_size.value = 64  # tiled, with the default overlap clipped to the tile
    seen = []
    widget.jobs.on_progress = lambda p: (seen.append((p.step, p.total)), widget._on_progress(p))
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    labels = viewer.layers["stack [semantic]"]
    assert labels.data.shape == stack.shape
    np.testing.assert_allclose(labels.scale, layer.scale)
    runner = load_model(str(models["segformer"]), "cpu")
    for z in range(3):
        expected = api.segment_semantic(stack[z], runner, tile_size=64)
        assert np.array_equal(labels.data[z], expected.labels), z
    assert seen[-1][0] == seen[-1][1] and seen[-1][1] % 3 == 0  # one progress range over the planes
    assert set(labels.metadata["segsuite"]["planes"]) == {"0:0", "0:1", "0:2"}

    # current plane: only that plane changes
    labels.data[...] = 0
    widget.planes.value = CURRENT_PLANE
    viewer.dims.set_point(0, 3.0 * 2)  # world z of plane 2
    _run(qtbot, widget)
    assert widget.edit_question.open  # zeroing the layer was a hand edit: the run asks first
    widget.edit_question.overwrite_button.native.click()
    assert labels.data[0].max() == 0 and labels.data[1].max() == 0 and labels.data[2].min() >= 1


def test_cancel_leaves_layers_untouched(make_napari_viewer, qtbot, models, rng):
    viewer = make_napari_viewer(show=False)
    layer = viewer.add_image(rng.integers(0, 255, (1500, 1500), dtype=np.uint8), name="big")
    widget = _widget(viewer, models["segformer"], layer)
    widget.tile_size.value = 64
    widget.overlap.value = 16
    widget.with_confidence.value = True
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=30000)
    widget.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=30000)
    assert list(viewer.layers) == [layer]
    assert "Cancelled" in widget.message.value


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (np.zeros((1, 1), np.uint8), "at least 16x16"),
        (np.full((40, 40), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_images_give_a_notification_and_no_layer(make_napari_viewer, qtbot, models, notes, data, expected):
    viewer = make_napari_viewer(show=False)
    layer = viewer.add_image(data, name="bad")
    widget = _widget(viewer, models["lraspp"], layer)
    _run(qtbot, widget)
    assert any(expected in n for n in notes), notes
    assert expected in widget.message.value
    assert list(viewer.layers) == [layer]


def test_a_folder_that_is_not_a_semantic_checkpoint_gives_a_notification(make_napari_viewer, qtbot, tmp_path, notes, rng):
    viewer = make_napari_viewer(show=False)
    layer = viewer.add_image(_image(rng), name="img")
    folder = tmp_path / "instance-m2f"
    build_tiny_mask2former(folder, "instance")
    widget = _widget(viewer, folder, layer)
    _run(qtbot, widget)
    assert any("not semantic" in n for n in notes), notes
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text('{"model_type": "bert"}')
    widget.models.local.value = str(junk)
    _run(qtbot, widget)
    assert "type 'bert'" in notes[-1], notes[-1]
    assert list(viewer.layers) == [layer]


def test_smoke_runs_a_semantic_model_on_the_sample(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    viewer.open_sample("napari-segsuite", "coins")
    widget = SemanticWidget(viewer)
    widget.smoke()
    labels = viewer.layers["coins [semantic]"]
    assert labels.data.shape == viewer.layers["coins"].data.shape and labels.data.min() >= 1


def test_dask_backed_layer_is_segmented_tile_by_tile(make_napari_viewer, qtbot, models, rng):
    import dask.array as da

    viewer = make_napari_viewer(show=False)
    base = np.stack([_image(rng, (150, 170)) for _ in range(2)]).astype(np.uint16) * 200
    layer = viewer.add_image(da.from_array(base, chunks=(1, 64, 64)), name="lazy")
    viewer.dims.set_point(0, 0)
    widget = _widget(viewer, models["lraspp"], layer)
    widget.tile_size.value = 128
    widget.overlap.value = 16
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    labels = viewer.layers["lazy [semantic]"]
    expected = api.segment_semantic(base[0], load_model(str(models["lraspp"]), "cpu"), tile_size=128, overlap=16)
    assert np.array_equal(labels.data[0], expected.labels) and labels.data[1].max() == 0
