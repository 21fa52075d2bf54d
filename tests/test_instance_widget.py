"""The Instance Segmentation widget in a real viewer, with tiny real-architecture models."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.instance_tiling import tile_grid
from napari_segsuite.core.labels import masks_to_labels
from napari_segsuite.testing.instance_doubles import (
    SCENE_OVERLAP,
    SCENE_TILE,
    ThresholdDetector,
    sharpen_yolo,
    tile_border_scene,
)
from napari_segsuite.testing.tiny_models import build_tiny_yolo
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.instance import ALL, CURRENT, InstanceWidget

pytestmark = pytest.mark.widget


@pytest.fixture(scope="module")
def yolo_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instance_widget")
    return {
        "seg": sharpen_yolo(build_tiny_yolo(folder / "tiny-seg.pt", "segment", nc=3)),
        "det": build_tiny_yolo(folder / "tiny-det.pt", "detect", nc=3),
        "folder": folder,
    }


@pytest.fixture
def rgb():
    img, _ = tile_border_scene()
    return img


def _widget(viewer, model_path=None, **options):
    widget = InstanceWidget(viewer)
    if model_path is not None:
        widget.models.model.value = LOCAL
        widget.models.local.value = str(model_path)
    widget.device.value = "cpu"
    for key, value in options.items():
        getattr(widget, key).value = value
    return widget


def _run(qtbot, widget, timeout=60000):
    widget.run()
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)


def test_run_writes_labels_features_and_boxes(make_napari_viewer, qtbot, yolo_paths, rgb):
    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(rgb, name="img", scale=(2.0, 0.5), translate=(10, -3))
    widget = _widget(viewer, yolo_paths["seg"], conf=0.0, max_det=8, boxes_output=True)
    assert "runs code" in widget.models.status.value  # the ultralytics warning for picked .pt files
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["img [instance]"]
    np.testing.assert_array_equal(layer.scale, image.scale)
    np.testing.assert_array_equal(layer.translate, image.translate)
    ref = api.segment_instances(rgb, yolo_paths["seg"], device="cpu", conf=0.0, max_det=8)
    np.testing.assert_array_equal(layer.data, ref.labels)  # overlap rule and ids as the API's
    present = sorted(int(i) for i in np.unique(layer.data) if i)
    feats = layer.features.set_index("label")
    assert sorted(feats.index) == present
    for col in ("class_id", "class_name", "score", "bbox_row0", "bbox_col1", "area"):
        assert col in layer.features
    ref_rows = ref.table.set_index("label").loc[present]
    np.testing.assert_allclose(feats.loc[present, "score"].astype(float), ref_rows.score)
    assert list(feats.loc[present, "class_name"]) == list(ref_rows.class_name)
    assert (feats.loc[present, "area"].to_numpy() == [(layer.data == i).sum() for i in present]).all()
    assert layer.metadata["segsuite"]["params"]["max_det"] == 8
    boxes = viewer.layers["img [instance boxes]"]
    assert len(boxes.data) == len(ref.table) == 8
    np.testing.assert_array_equal(boxes.scale, image.scale)
    assert boxes.text.values[0].startswith(ref.table.class_name[0] + " ")
    np.testing.assert_allclose(boxes.data[0].min(axis=0), ref.table.loc[0, ["bbox_row0", "bbox_col0"]].astype(float))
    # a second run updates the same layers instead of adding new ones
    _run(qtbot, widget)
    assert len(viewer.layers) == 3


def test_stack_all_planes_then_current_plane(make_napari_viewer, qtbot, yolo_paths, rgb):
    viewer = make_napari_viewer(show=False)
    gray = rgb[..., 0]
    stack = np.stack([gray, gray[::-1], np.zeros_like(gray)])
    viewer.add_image(stack, name="stack")
    widget = _widget(viewer, yolo_paths["seg"], conf=0.0, max_det=3, planes=ALL, boxes_output=True)
    seen = []
    widget.jobs.on_progress = lambda p: (seen.append(p.message), widget._on_progress(p))
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["stack [instance]"]
    assert layer.data.shape == stack.shape
    assert any("Plane 3/3" in m for m in seen)
    ids = [set(np.unique(layer.data[z])) - {0} for z in range(3)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # ids do not repeat across planes
    assert set(layer.metadata["segsuite"]["planes"]) == {"0:0", "0:1", "0:2"}
    assert set(viewer.layers["stack [instance boxes]"].features.plane) >= {"0:0", "0:1"}
    before = np.asarray(layer.data).copy()
    viewer.dims.set_point(0, 1)
    widget.planes.value = CURRENT
    _run(qtbot, widget)
    np.testing.assert_array_equal(layer.data[0], before[0])  # other planes untouched
    assert not set(np.unique(layer.data[1])) - {0} & ids[0]  # new ids do not clash with plane 0's
    assert layer.data[1].any()


def test_tiling_in_the_widget_keeps_border_objects_once(make_napari_viewer, qtbot, tmp_path):
    img, n_objects = tile_border_scene()
    viewer = make_napari_viewer(show=False)
    viewer.add_image(img, name="scene")
    stand_in = tmp_path / "threshold.pt"
    stand_in.write_bytes(b"x")
    widget = _widget(viewer, stand_in, conf=0.0, tile_size=SCENE_TILE, overlap=SCENE_OVERLAP)
    widget._runner, widget._runner_key = ThresholdDetector(), widget.model_key()  # a test double for tiling
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["scene [instance]"]
    assert len(np.unique(layer.data)) - 1 == n_objects == len(layer.features)
    assert widget._runner.calls == len(tile_grid(img.shape[:2], SCENE_TILE, SCENE_OVERLAP))


def test_detector_boxes_refined_with_sam(make_napari_viewer, qtbot, yolo_paths, rgb, tiny_sam_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(rgb, name="img")
    widget = _widget(viewer, yolo_paths["det"], conf=0.0, max_det=5, refine=True)
    assert not widget.sam_model.native.isHidden()
    widget.sam_model.value = str(tiny_sam_path)
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    ref = api.detect_then_segment(rgb, yolo_paths["det"], sam=str(tiny_sam_path), device="cpu", conf=0.0, max_det=5)
    layer = viewer.layers["img [instance]"]
    np.testing.assert_array_equal(layer.data, ref.labels)
    assert set(layer.features.class_name) <= {"cell", "coin", "nucleus"}
    assert layer.metadata["segsuite"]["sam"]["family"] == "sam"
    # a detection model without SAM is refused with a clear message
    widget.refine.value = False
    _run(qtbot, widget)
    assert "detection model" in widget.message.value


def test_boxes_from_a_shapes_layer(make_napari_viewer, qtbot, rgb, tiny_sam_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(rgb, name="img")
    shapes = viewer.add_shapes(
        [np.array([[30, 30], [50, 50]]), np.array([[90, 40], [140, 70]])], shape_type="rectangle", name="boxes"
    )
    widget = _widget(viewer)
    widget.image.value = viewer.layers["img"]
    widget.box_source.value = shapes
    assert not widget.sam_model.native.isHidden()
    widget.sam_model.value = str(tiny_sam_path)
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["img [instance]"]
    assert list(layer.features.class_name) == ["object"] * len(layer.features) and len(layer.features) >= 1
    session = api.SamSession(str(tiny_sam_path), device="cpu")
    session.set_image(rgb)
    masks, _ = session.predict_boxes(np.array([[30, 30, 50, 50], [90, 40, 140, 70]]))
    np.testing.assert_array_equal(layer.data, masks_to_labels(masks, np.ones(2))[0])


def test_cancel_leaves_layers_untouched(make_napari_viewer, qtbot, yolo_paths):
    viewer = make_napari_viewer(show=False)
    big = np.random.default_rng(0).integers(0, 255, (640, 640), dtype=np.uint8)
    viewer.add_image(big, name="big")
    widget = _widget(viewer, yolo_paths["seg"], conf=0.0, tile_size=64, overlap=16)
    widget.run()
    qtbot.waitUntil(lambda: "Tile 2/" in widget.message.value, timeout=60000)
    widget.cancel_button.changed.emit(True)
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=60000)
    assert "Cancelled" in widget.message.value
    assert [layer.name for layer in viewer.layers] == ["big"]


def test_no_detections_is_a_message_and_no_layer(make_napari_viewer, qtbot, yolo_paths, rgb, notes):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(rgb, name="img")
    widget = _widget(viewer, yolo_paths["seg"], conf=1.0)
    _run(qtbot, widget)
    assert widget.jobs.last_error is None
    assert "No instances" in widget.message.value and any("No instances" in n for n in notes)
    assert [layer.name for layer in viewer.layers] == ["img"]


def test_bad_models_and_classes_are_notifications(make_napari_viewer, qtbot, yolo_paths, rgb, notes, tmp_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(rgb, name="img")
    corrupt = tmp_path / "corrupt-seg.pt"
    corrupt.write_bytes(yolo_paths["seg"].read_bytes()[:4000])
    widget = _widget(viewer, corrupt)
    _run(qtbot, widget)
    assert any("corrupt-seg.pt" in n for n in notes)
    widget.models.local.value = str(yolo_paths["seg"])
    widget.classes.value = "cell, giraffe"
    _run(qtbot, widget)
    assert any("no class 'giraffe'" in n for n in notes)
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert corrupt.stat().st_size == 4000


def test_smoke_runs_an_instance_model(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    viewer.open_sample("napari-segsuite", "coins")
    widget = InstanceWidget(viewer)
    widget.smoke()
    name = f"{widget.selected_image().name} [instance]"
    assert name in viewer.layers and len(viewer.layers[name].features)


@pytest.fixture(scope="module")
def other_families(tmp_path_factory):
    from napari_segsuite.testing.tiny_models import build_tiny_mask2former, build_tiny_torchvision

    folder = tmp_path_factory.mktemp("instance_families")
    return {
        "mask2former": build_tiny_mask2former(folder / "m2f-instance", "instance"),
        "maskrcnn": build_tiny_torchvision(folder / "maskrcnn.pth", "maskrcnn_resnet50_fpn"),
    }


@pytest.mark.parametrize(("family", "options"), [
    ("mask2former", {"conf": 0.0, "mask_threshold": 0.4}),
    ("maskrcnn", {"conf": 0.5, "iou": 0.4, "max_det": 10, "imgsz": 128}),  # a small input keeps it quick
])
def test_other_families_in_the_widget(make_napari_viewer, qtbot, rgb, other_families, family, options):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(rgb, name="img")
    widget = _widget(viewer, other_families[family], **options)
    _run(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    layer = viewer.layers["img [instance]"]
    kw = {k: (v or None) if k == "imgsz" else v for k, v in options.items()}
    ref = api.segment_instances(rgb, widget._runner, **kw)
    assert len(ref.table) > 0
    np.testing.assert_array_equal(layer.data, ref.labels)
    assert layer.metadata["segsuite"]["model"]["family"] == family.replace("maskrcnn", "torchvision")


def test_picking_a_model_shows_its_library_defaults(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    widget = InstanceWidget(viewer)
    widget.models.model.value = "maskrcnn_resnet50_fpn_coco"
    assert (widget.conf.value, widget.iou.value, widget.max_det.value) == (0.5, 0.5, 100)  # torchvision's
    widget.models.model.value = "yolo11n_seg"
    assert (widget.conf.value, widget.iou.value, widget.max_det.value) == (0.25, 0.7, 300)  # ultralytics'
