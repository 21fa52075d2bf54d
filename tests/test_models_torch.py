"""torchvision, YOLO and U-Net runners: tiny real-format checkpoints loaded offline."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from napari_segsuite.core.errors import CheckpointError, ModelNotAvailableError
from napari_segsuite.models.base import load_model
from napari_segsuite.models.registry import REGISTRY, entries_for
from napari_segsuite.models.store import ModelSource
from napari_segsuite.testing.tiny_models import (
    build_tiny_torchvision,
    build_tiny_unet,
    build_tiny_yolo,
)


def _truncate(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _assert_same_weights(model, saved: dict):
    state = model.state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key].cpu(), value.to(state[key].dtype)), key


# -- fixtures: each checkpoint is built once per module ---------------------------


@pytest.fixture(scope="module")
def tv_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("torchvision")


@pytest.fixture(scope="module")
def lraspp_path(tv_dir):
    return build_tiny_torchvision(tv_dir / "lraspp.pth", "lraspp_mobilenet_v3_large")


@pytest.fixture(scope="module")
def deeplab_r50_path(tv_dir):
    return build_tiny_torchvision(tv_dir / "deeplabv3_r50.pth", "deeplabv3_resnet50")


@pytest.fixture(scope="module")
def maskrcnn_path(tv_dir):
    return build_tiny_torchvision(tv_dir / "maskrcnn.pth", "maskrcnn_resnet50_fpn")


@pytest.fixture(scope="module")
def yolo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("yolo")


@pytest.fixture(scope="module")
def yolo_seg_path(yolo_dir):
    return build_tiny_yolo(yolo_dir / "tiny-seg.pt", task="segment", nc=3)


@pytest.fixture(scope="module")
def yolo_det_path(yolo_dir):
    return build_tiny_yolo(yolo_dir / "tiny-det.pt", task="detect", nc=2)


@pytest.fixture(scope="module")
def unet_path(tmp_path_factory):
    return build_tiny_unet(tmp_path_factory.mktemp("unet") / "tiny_unet", in_channels=1, classes=3)


# -- torchvision -------------------------------------------------------------------


def test_lraspp_loads_with_voc_classes(lraspp_path):
    runner = load_model(lraspp_path, device="cpu")
    assert runner.family == "torchvision"
    assert runner.tasks == ("semantic",)
    assert runner.info["arch"] == "lraspp_mobilenet_v3_large"
    assert runner.info["num_classes"] == 21
    assert runner.info["aux_classifier"] is False
    assert len(runner.class_names) == 21
    assert runner.class_names[0] == "__background__"
    assert runner.class_names[15] == "person"
    _assert_same_weights(runner.model, torch.load(lraspp_path, weights_only=True))
    assert not runner.model.training
    logits = runner.predict_semantic(np.zeros((48, 72, 3), np.uint8))
    assert logits.shape == (21, 48, 72)
    assert logits.dtype == np.float32
    with torch.inference_mode():
        out = runner.model(torch.zeros(1, 3, 64, 64))
    assert out["out"].shape == (1, 21, 64, 64)
    assert runner.provenance()["arch"] == "lraspp_mobilenet_v3_large"


def test_deeplabv3_resnet50_with_aux(deeplab_r50_path):
    runner = load_model(deeplab_r50_path, device="cpu")
    assert runner.info == {"arch": "deeplabv3_resnet50", "num_classes": 21, "aux_classifier": True}
    assert runner.tasks == ("semantic",)
    assert runner.class_names[20] == "tvmonitor"
    _assert_same_weights(runner.model, torch.load(deeplab_r50_path, weights_only=True))
    with torch.inference_mode():
        out = runner.model(torch.zeros(1, 3, 40, 40))
    assert out["out"].shape == (1, 21, 40, 40)
    assert out["aux"].shape == (1, 21, 40, 40)


def test_deeplabv3_mobilenet_custom_classes_no_aux(tmp_path):
    path = build_tiny_torchvision(
        tmp_path / "dl_mobile.pth", "deeplabv3_mobilenet_v3_large", num_classes=4, aux_loss=False
    )
    runner = load_model(path, device="cpu")
    assert runner.info == {"arch": "deeplabv3_mobilenet_v3_large", "num_classes": 4, "aux_classifier": False}
    assert runner.class_names == {i: f"class_{i}" for i in range(4)}
    assert runner.predict_semantic(np.zeros((33, 31, 3), np.uint8)).shape == (4, 33, 31)


def test_maskrcnn_loads_with_coco_classes(maskrcnn_path):
    runner = load_model(maskrcnn_path, device="cpu")
    assert runner.tasks == ("instance",)
    assert runner.info["arch"] == "maskrcnn_resnet50_fpn"
    assert runner.info["num_classes"] == 91
    assert len(runner.class_names) == 91
    assert runner.class_names[1] == "person"
    _assert_same_weights(runner.model, torch.load(maskrcnn_path, weights_only=True))
    model = runner.model
    model.transform.min_size, model.transform.max_size = (96,), 96  # keep the CPU forward pass short
    with torch.inference_mode():
        (out,) = model([torch.zeros(3, 64, 80)])
    assert set(out) >= {"boxes", "labels", "scores", "masks"}
    n = out["boxes"].shape[0]
    assert out["boxes"].shape == (n, 4)
    assert out["masks"].shape == (n, 1, 64, 80)


def test_arch_inference_from_keys():
    """v1/v2 Mask R-CNN, ResNet-50/101 and FCN are told apart without saving files."""
    from torchvision.models import detection, segmentation

    from napari_segsuite.models.torchvision_models import infer_arch, infer_num_classes

    v2 = detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=3).state_dict()
    assert infer_arch(v2) == "maskrcnn_resnet50_fpn_v2"
    assert infer_num_classes(v2, "maskrcnn_resnet50_fpn_v2") == 3
    r101 = segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=5).state_dict()
    assert infer_arch(r101) == "deeplabv3_resnet101"
    assert infer_num_classes(r101, "deeplabv3_resnet101") == 5
    fcn = segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=2).state_dict()
    assert infer_arch(fcn) == "fcn_resnet50"
    faster = detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).state_dict()
    with pytest.raises(CheckpointError, match="without a mask head"):
        infer_arch(faster)


def test_maskrcnn_v2_loads(tmp_path):
    path = build_tiny_torchvision(tmp_path / "mrcnn_v2.pth", "maskrcnn_resnet50_fpn_v2", num_classes=3)
    runner = load_model(path, device="cpu")
    assert runner.info["arch"] == "maskrcnn_resnet50_fpn_v2"
    assert runner.class_names == {0: "class_0", 1: "class_1", 2: "class_2"}
    _assert_same_weights(runner.model, torch.load(path, weights_only=True))


def test_registry_entry_arch_is_used_and_checked(lraspp_path):
    entry = REGISTRY["lraspp_mobilenet_v3_large_voc"]
    source = ModelSource(path=lraspp_path, family="torchvision", name=entry.name, entry=entry)
    runner = load_model(source, device="cpu")
    assert runner.info["arch"] == entry.arch
    assert runner.name == entry.name
    wrong = REGISTRY["deeplabv3_resnet50_voc"]
    source = ModelSource(path=lraspp_path, family="torchvision", name=wrong.name, entry=wrong)
    with pytest.raises(CheckpointError, match="lraspp_mobilenet_v3_large"):
        load_model(source, device="cpu")


def test_other_state_dict_is_refused(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError):
        load_model(path, device="cpu")  # not detected as any family
    with pytest.raises(CheckpointError, match="not a supported torchvision"):
        load_model(path, device="cpu", family="torchvision")


def _damaged_files(good, folder, suffix):
    """A truncated copy of ``good``, an empty file and files that are no checkpoint at all."""
    folder.mkdir(exist_ok=True)
    files = {"truncated": _truncate(good, folder / f"truncated{suffix}")}
    contents = {
        "empty": b"",
        "random": np.random.default_rng(0).bytes(4096),
        "png": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "text": b"these are not weights\n",
    }
    for name, data in contents.items():
        files[name] = folder / f"{name}{suffix}"
        files[name].write_bytes(data)
    zipped = folder / f"zip{suffix}"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("readme.txt", "no tensors here")
    files["zip"] = zipped
    return files


def test_damaged_torchvision_files(lraspp_path, tmp_path):
    files = _damaged_files(lraspp_path, tmp_path, ".pth")
    for path in files.values():
        source = ModelSource(path=path, family="torchvision", name=path.name, trusted=True)
        with pytest.raises(CheckpointError):
            load_model(source, device="cpu")
    for path in files.values():
        with pytest.raises(CheckpointError):
            load_model(path, device="cpu")


def test_registry_urls_are_torchvisions():
    from torchvision.models import detection, segmentation

    expected = {
        "deeplabv3_resnet50": segmentation.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
        "deeplabv3_resnet101": segmentation.DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
        "deeplabv3_mobilenet_v3_large": segmentation.DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
        "lraspp_mobilenet_v3_large": segmentation.LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
        "maskrcnn_resnet50_fpn": detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
        "maskrcnn_resnet50_fpn_v2": detection.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
    }
    from napari_segsuite.models.torchvision_models import ARCHITECTURES

    entries = entries_for(family="torchvision")
    assert {e.arch for e in entries} == set(expected)
    for entry in entries:
        weights = expected[entry.arch]
        assert entry.url == weights.url, entry.name
        # torchvision file names end in a prefix of the file's SHA-256
        assert weights.url.rsplit("-", 1)[-1].startswith(entry.sha256_prefix), entry.name
        assert entry.tasks == (ARCHITECTURES[entry.arch][2],), entry.name


# -- YOLO ----------------------------------------------------------------------------


def test_yolo_segment_loads(yolo_seg_path):
    runner = load_model(yolo_seg_path, device="cpu")
    assert runner.family == "yolo"
    assert runner.tasks == ("instance",)
    assert runner.class_names == {0: "cell", 1: "coin", 2: "nucleus"}
    assert runner.info["yolo_task"] == "segment"
    assert runner.info["num_classes"] == 3
    saved = torch.load(yolo_seg_path, map_location="cpu", weights_only=False)  # our own file
    _assert_same_weights(runner.model.model, saved["model"].float().state_dict())
    results = runner.model.predict(np.zeros((64, 64, 3), np.uint8), verbose=False)
    assert len(results) == 1
    assert results[0].orig_shape == (64, 64)


def test_yolo_detect_loads(yolo_det_path):
    runner = load_model(yolo_det_path, device="cpu")
    assert runner.tasks == ("detection",)
    assert runner.class_names == {0: "cell", 1: "coin"}
    results = runner.model.predict(np.zeros((64, 64, 3), np.uint8), verbose=False)
    assert results[0].masks is None


def test_yolo_refuses_untrusted(yolo_seg_path):
    source = ModelSource(path=yolo_seg_path, family="yolo", name="someone's.pt", trusted=False)
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(source, device="cpu")


def test_yolo_missing_file_is_not_downloaded(tmp_path):
    path = tmp_path / "yolo11n-seg.pt"  # an official name: ultralytics would download it
    source = ModelSource(path=path, family="yolo", name=path.name, trusted=True)
    with pytest.raises(ModelNotAvailableError):
        load_model(source, device="cpu")
    assert not path.exists()


def test_damaged_yolo_files(yolo_seg_path, tmp_path):
    files = _damaged_files(yolo_seg_path, tmp_path, ".pt")
    for path in files.values():
        source = ModelSource(path=path, family="yolo", name=path.name, trusted=True)
        with pytest.raises(CheckpointError):
            load_model(source, device="cpu")
    for path in files.values():
        with pytest.raises(CheckpointError):
            load_model(path, device="cpu")  # detection refuses it before ultralytics sees it


def test_yolo_wrong_suffix(yolo_seg_path, tmp_path):
    other = shutil.copy(yolo_seg_path, tmp_path / "tiny-seg.pth")
    with pytest.raises(CheckpointError, match=r"\.pt"):
        load_model(other, device="cpu")


# -- U-Net ----------------------------------------------------------------------------


def test_unet_loads(unet_path):
    from safetensors.torch import load_file

    runner = load_model(unet_path, device="cpu")
    assert runner.family == "unet"
    assert runner.tasks == ("semantic",)
    assert runner.class_names == {0: "background", 1: "cell", 2: "coin"}
    assert runner.info["in_channels"] == 1
    assert runner.info["num_classes"] == 3
    assert runner.info["encoder_depth"] == 3
    _assert_same_weights(runner.model, load_file(unet_path / "model.safetensors"))
    with torch.inference_mode():
        out = runner.model(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    logits = runner.predict_semantic(np.random.default_rng(0).random((50, 70)).astype(np.float32))
    assert logits.shape == (3, 50, 70)
    assert logits.dtype == np.float32
    # the weights file itself is accepted too
    assert load_model(unet_path / "model.safetensors", device="cpu").info == runner.info


def test_unet_round_trip(tmp_path):
    from napari_segsuite.models.unet import build_unet, load_unet, make_unet_config, save_unet

    config = make_unet_config(
        encoder_name="tu-resnet10t", encoder_depth=3, decoder_channels=(16, 16, 8),
        in_channels=3, classes=2, class_names=["bg", "cell"],
    )
    torch.manual_seed(1)
    model = build_unet(config)
    save_unet(model, config, tmp_path / "u")
    loaded, cfg = load_unet(tmp_path / "u")
    assert cfg["class_names"] == {"0": "bg", "1": "cell"}
    _assert_same_weights(loaded, model.state_dict())
    with pytest.raises(ValueError, match="does not match its config"):
        save_unet(model, {**config, "classes": 3}, tmp_path / "bad")


def test_damaged_unet_folders(unet_path, tmp_path):
    # truncated weights
    folder = shutil.copytree(unet_path, tmp_path / "truncated")
    _truncate(unet_path / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(folder, device="cpu")
    # empty weights
    folder = shutil.copytree(unet_path, tmp_path / "empty")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_model(folder, device="cpu")
    # a config key missing
    folder = shutil.copytree(unet_path, tmp_path / "nokey")
    cfg = json.loads((folder / "unet_config.json").read_text())
    del cfg["encoder_name"]
    (folder / "unet_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="encoder_name"):
        load_model(folder, device="cpu")
    # a config that does not describe the weights
    folder = shutil.copytree(unet_path, tmp_path / "mismatch")
    cfg = json.loads((folder / "unet_config.json").read_text())
    cfg["classes"] = 5
    (folder / "unet_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(folder, device="cpu")
    # weights missing
    folder = shutil.copytree(unet_path, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_model(folder, device="cpu")
    # broken JSON
    folder = shutil.copytree(unet_path, tmp_path / "badjson")
    (folder / "unet_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_model(folder, device="cpu")
