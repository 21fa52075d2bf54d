"""segment_instances / detect_then_segment give what the libraries give, with napari's conventions."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.errors import CheckpointError, InputError
from napari_segsuite.core.labels import masks_to_labels
from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_torchvision,
    build_tiny_yolo,
)

MRCNN_SIZE = 192  # Mask R-CNN is full size even when random: keep its input small


@pytest.fixture(scope="module")
def image():
    """An RGB image whose colour order matters (a red-to-blue ramp with bright blobs)."""
    from napari_segsuite.testing.instance_doubles import ramp_with_blobs

    return ramp_with_blobs()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instance_models")
    return {
        "yolo_seg": sharpen_yolo(build_tiny_yolo(folder / "tiny-seg.pt", "segment", nc=3)),
        "yolo_det": build_tiny_yolo(folder / "tiny-det.pt", "detect", nc=3),
        "mrcnn": build_tiny_torchvision(folder / "maskrcnn.pth", "maskrcnn_resnet50_fpn"),
        "m2f": build_tiny_mask2former(folder / "m2f-instance", "instance"),
        "m2f_semantic": build_tiny_mask2former(folder / "m2f-semantic", "semantic"),
        "folder": folder,
    }


@pytest.fixture(scope="module")
def mrcnn(models):
    runner = api.load_model(models["mrcnn"], "cpu")
    runner.model.transform.min_size = (MRCNN_SIZE,)
    runner.model.transform.max_size = MRCNN_SIZE
    return runner


@pytest.fixture(scope="module")
def yolo(models):
    return api.load_model(models["yolo_seg"], "cpu")


def _rows(result):
    t = result.table
    return (
        t[["bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"]].to_numpy(),
        t["score"].to_numpy(),
        t["class_id"].to_numpy(),
    )


def test_yolo_seg_equals_ultralytics_on_the_bgr_image(models, yolo, image):
    from ultralytics import YOLO

    kw = {"conf": 0.002, "iou": 0.5, "max_det": 12}
    assert len(set(yolo.predict_instances(image, **kw).scores.tolist())) > 5  # distinct scores: the order is tested
    ours = api.segment_instances(image, yolo, **kw)
    ref = YOLO(str(models["yolo_seg"])).predict(image[..., ::-1].copy(), verbose=False, retina_masks=True, **kw)[0]
    boxes, scores, classes = _rows(ours)
    assert len(scores) == len(ref.boxes) > 0
    np.testing.assert_allclose(boxes, ref.boxes.xyxy.numpy()[:, [1, 0, 3, 2]], atol=1e-4)
    np.testing.assert_allclose(scores, ref.boxes.conf.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(classes, ref.boxes.cls.numpy().astype(int))
    expected, _ = masks_to_labels(ref.masks.data.numpy() > 0.5, ref.boxes.conf.numpy())
    np.testing.assert_array_equal(ours.labels, expected)
    assert list(ours.table.label) == list(range(1, len(scores) + 1))
    assert (np.diff(scores) <= 0).all()  # ids ordered by score
    # the colour order matters on this image: RGB fed as-is gives another answer
    wrong = YOLO(str(models["yolo_seg"])).predict(image, verbose=False, retina_masks=True, **kw)[0]
    assert wrong.boxes.conf.numpy().tolist() != scores.tolist()


def test_mask_rcnn_equals_torchvision(models, mrcnn, image):
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    ref.load_state_dict(torch.load(models["mrcnn"], weights_only=True))
    ref.eval()
    ref.transform.min_size, ref.transform.max_size = (MRCNN_SIZE,), MRCNN_SIZE
    ref.roi_heads.score_thresh, ref.roi_heads.nms_thresh, ref.roi_heads.detections_per_img = 0.3, 0.4, 15
    with torch.inference_mode():
        out = ref([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    ours = api.segment_instances(image, mrcnn, conf=0.3, iou=0.4, mask_threshold=0.6, max_det=15)
    boxes, scores, classes = _rows(ours)
    assert len(scores) == len(out["scores"]) > 0
    np.testing.assert_allclose(boxes, out["boxes"].numpy()[:, [1, 0, 3, 2]], atol=1e-3)
    np.testing.assert_allclose(scores, out["scores"].numpy(), rtol=1e-5)
    np.testing.assert_array_equal(classes, out["labels"].numpy())
    expected, _ = masks_to_labels(out["masks"][:, 0].numpy() > 0.6, out["scores"].numpy())
    np.testing.assert_array_equal(ours.labels, expected)
    names = set(ours.table.class_name)
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    assert names <= set(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])  # COCO names for 91 classes


def test_mask_rcnn_classes_are_filtered_before_max_det(mrcnn, image):
    everything = api.segment_instances(image, mrcnn, conf=0.3, iou=0.4, max_det=40)
    wanted = int(everything.table.class_id.iloc[-1])
    name = mrcnn.class_names[wanted]
    some = api.segment_instances(image, mrcnn, conf=0.3, iou=0.4, max_det=3, classes=[name, wanted])
    expect = everything.table[everything.table.class_id == wanted].head(3)
    assert len(some.table) == len(expect) > 0
    np.testing.assert_allclose(some.table.score, expect.score, rtol=1e-5)
    assert set(some.table.class_name) == {name}


def test_mask2former_instance_equals_the_processor(models, image):
    import torch

    runner = api.load_model(models["m2f"], "cpu")
    inputs = runner.processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        outputs = runner.model(**inputs)
    ref = runner.processor.post_process_instance_segmentation(
        outputs, threshold=0.1, target_sizes=[image.shape[:2]], return_binary_maps=True
    )[0]
    ours = api.segment_instances(image, runner, conf=0.1)
    ref_scores = np.array([s["score"] for s in ref["segments_info"]], np.float32)
    order = np.argsort(-ref_scores, kind="stable")
    assert len(ours.table) == len(ref_scores) > 0
    np.testing.assert_allclose(ours.table.score, ref_scores[order], rtol=1e-6)
    np.testing.assert_array_equal(ours.table.class_id, [ref["segments_info"][i]["label_id"] for i in order])
    expected, _ = masks_to_labels(ref["segmentation"].numpy()[order] > 0.5, ref_scores[order])
    np.testing.assert_array_equal(ours.labels, expected)
    # a higher mask threshold gives smaller masks
    strict = runner.predict_instances(image, conf=0.0, mask_threshold=0.9)
    loose = runner.predict_instances(image, conf=0.0, mask_threshold=0.1)
    assert strict.masks.sum() < loose.masks.sum()


def test_detector_then_sam_carries_class_and_score(models, tiny_sam_path, image):
    import torch
    from segment_anything import SamPredictor

    det = api.load_model(models["yolo_det"], "cpu")
    session = api.SamSession(str(tiny_sam_path), device="cpu")
    result = api.detect_then_segment(image, det, sam=session, conf=0.002, max_det=6)
    boxes, scores, classes = _rows(result)
    pred = det.predict_instances(image, conf=0.002, max_det=6)
    assert pred.masks is None and len(scores) == len(pred) == 6
    np.testing.assert_allclose(scores, pred.scores)
    np.testing.assert_array_equal(classes, pred.class_ids)
    np.testing.assert_allclose(boxes, pred.boxes)
    # the masks are SAM's for those boxes, as one batch through SamPredictor.predict_torch
    ref = SamPredictor(api.load_model(tiny_sam_path, "cpu").model)
    ref.set_image(image)
    xyxy = np.clip(pred.boxes[:, [1, 0, 3, 2]], 0, [223, 159, 223, 159])
    with torch.inference_mode():
        masks, _, _ = ref.predict_torch(
            None, None, boxes=ref.transform.apply_boxes_torch(torch.as_tensor(xyxy, dtype=torch.float), image.shape[:2]),
            multimask_output=False,
        )
    expected, _ = masks_to_labels(masks[:, 0].numpy(), pred.scores)
    np.testing.assert_array_equal(result.labels, expected)
    # the embedding cache: a second run does not encode the image again
    api.detect_then_segment(image, det, sam=session, conf=0.002, max_det=6)
    assert session.encoder_runs == 1


def test_predict_boxes_matches_one_box_at_a_time(tiny_sam_path, image):
    from segment_anything import SamPredictor

    session = api.SamSession(str(tiny_sam_path), device="cpu")
    session.set_image(image)
    boxes = np.array([[20, 30, 70, 90], [80, 120, 150, 210]])
    masks, scores = session.predict_boxes(boxes)
    ref = SamPredictor(session.runner.model)
    ref.set_image(image)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        m, s, _ = ref.predict(box=np.array([c0, r0, c1, r1]), multimask_output=False)
        assert (m[0] != masks[k]).mean() < 1e-3
        np.testing.assert_allclose(scores[k], s[0], rtol=1e-4)


def test_boxes_as_detector(tiny_sam_path, image):
    result = api.detect_then_segment(image, np.array([[20, 30, 70, 90]]), sam=str(tiny_sam_path), device="cpu")
    assert list(result.table.class_name) == ["object"] and result.table.score[0] == 1.0
    assert result.table.area[0] == (result.labels == 1).sum() > 0


def test_stack_gives_one_result_per_plane_with_continuing_ids(yolo, image):
    single = api.segment_instances(image, yolo, conf=0.002, max_det=4)
    stack = api.segment_instances(np.stack([image, image[::-1].copy(), image]), yolo, conf=0.002, max_det=4)
    assert stack.labels.shape == (3, *image.shape[:2])
    assert list(stack.table.plane.unique()) == [0, 1, 2]
    assert stack.table.label.is_unique
    np.testing.assert_array_equal(stack.labels[0], single.labels)
    np.testing.assert_array_equal(stack.labels[2][stack.labels[2] > 0] - 8, single.labels[single.labels > 0])


def test_no_detections_is_an_empty_result_with_a_message(yolo, image):
    result = api.segment_instances(image, yolo, conf=1.0)
    assert result.empty and len(result.table) == 0 and not result.labels.any()
    assert list(result.table.columns) == [
        "label", "class_id", "class_name", "score", "bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1", "area",
    ]
    assert "No instances" in result.message


def test_bad_inputs_are_clear_errors(models, yolo, image, tmp_path):
    with pytest.raises(InputError, match=r"no class 'dog'.*0=cell"):
        api.segment_instances(image, yolo, classes="dog")
    with pytest.raises(InputError, match="no class 7"):
        api.segment_instances(image, yolo, classes=[7])
    with pytest.raises(InputError, match="detection model"):
        api.segment_instances(image, models["yolo_det"], device="cpu")
    with pytest.raises(InputError, match="not instance segmentation"):
        api.segment_instances(image, models["m2f_semantic"], device="cpu")
    with pytest.raises(InputError, match="conf"):
        api.segment_instances(image, yolo, conf=2)
    corrupt = tmp_path / "corrupt-seg.pt"
    corrupt.write_bytes(models["yolo_seg"].read_bytes()[:5000])
    before = corrupt.read_bytes()
    with pytest.raises(CheckpointError):
        api.segment_instances(image, corrupt, device="cpu")
    assert corrupt.read_bytes() == before  # nothing damaged


def test_api_imports_no_qt():
    import subprocess
    import sys

    code = "import sys, napari_segsuite.api as a; a.segment_instances; print(any(m.startswith(('qtpy', 'PyQt', 'napari.')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_yolo_classes_filter_equals_ultralytics(models, yolo, image):
    from ultralytics import YOLO

    ours = api.segment_instances(image, yolo, conf=0.002, max_det=6, classes="nucleus")
    ref = YOLO(str(models["yolo_seg"])).predict(
        image[..., ::-1].copy(), conf=0.002, max_det=6, classes=[2], verbose=False, retina_masks=True
    )[0]
    assert len(ours.table) > 0 and set(ours.table.class_name) == {"nucleus"}
    np.testing.assert_allclose(ours.table.score, ref.boxes.conf.numpy(), rtol=1e-6)


def test_mask_rcnn_with_other_class_counts_gets_generic_names(tmp_path, image):
    path = build_tiny_torchvision(tmp_path / "mrcnn3.pth", "maskrcnn_resnet50_fpn", num_classes=3)
    runner = api.load_model(path, "cpu")
    assert runner.class_names == {0: "class_0", 1: "class_1", 2: "class_2"}
    res = api.segment_instances(image, runner, conf=0.0, max_det=5, imgsz=128)
    assert set(res.table.class_name) <= {"class_1", "class_2"}
    with pytest.raises(InputError, match="no class 'person'"):
        api.segment_instances(image, runner, classes=["person"])


def test_mask_rcnn_defaults_are_torchvisions(mrcnn, image, models):
    """Without thresholds the API runs Mask R-CNN with torchvision's own NMS IoU and detection cap."""
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    defaults = (ref.roi_heads.nms_thresh, ref.roi_heads.detections_per_img)
    assert defaults == (0.5, 100)  # torchvision's model
    ref.load_state_dict(torch.load(models["mrcnn"], weights_only=True))
    ref.eval()
    ref.transform.min_size, ref.transform.max_size = (MRCNN_SIZE,), MRCNN_SIZE
    ref.roi_heads.score_thresh = 0.01
    with torch.inference_mode():
        out = ref([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    ours = api.segment_instances(image, mrcnn, conf=0.01)
    assert (mrcnn.model.roi_heads.nms_thresh, mrcnn.model.roi_heads.detections_per_img) == defaults
    assert len(ours.table) == len(out["scores"]) > 0
    np.testing.assert_allclose(_rows(ours)[1], out["scores"].numpy(), rtol=1e-5)
    assert ours.provenance["task"] == "instance" and ours.provenance["parameters"]["iou"] is None
