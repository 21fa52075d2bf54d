"""Loading transformers folders: SAM 2.1, SegFormer and Mask2Former.

Every test builds a tiny randomly initialised model of the real architecture
with :mod:`napari_segsuite.testing.tiny_models`, saves it with
``save_pretrained`` and loads it the way a user's folder is loaded
(``load_model(path)``), offline. No mocks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_segsuite.core.errors import CheckpointError
from napari_segsuite.models.base import load_model
from napari_segsuite.models.registry import REGISTRY
from napari_segsuite.models.store import ModelSource
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_sam2,
    build_tiny_segformer,
    make_tiny_mask2former,
    make_tiny_sam2,
    make_tiny_segformer,
)

torch = pytest.importorskip("torch")

CLASS_NAMES = {0: "background", 1: "cell", 2: "coin"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One tiny folder of each kind, built once for the module (tests copy before changing)."""
    root = tmp_path_factory.mktemp("tiny_hf")
    return {
        "sam2_video": build_tiny_sam2(root / "sam2_video"),
        "sam2": build_tiny_sam2(root / "sam2_image", video=False),
        "segformer": build_tiny_segformer(root / "segformer"),
        "mask2former": build_tiny_mask2former(root / "mask2former", task="semantic"),
    }


def _copy(folder: Path, tmp_path: Path, name: str | None = None) -> Path:
    target = tmp_path / (name or folder.name)
    shutil.copytree(folder, target)
    return target


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _image(height=64, width=64, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_same_weights(loaded, reference) -> None:
    """Every tensor of ``loaded`` equals the tensor of the same name in ``reference``."""
    ref = reference.state_dict()
    state = loaded.state_dict()
    assert state, "the loaded model has no weights"
    for key, value in state.items():
        assert key in ref, key
        assert torch.equal(value.cpu(), ref[key]), f"{key} differs from the saved model"


def _first_weight(model, fragment: str):
    return next(v for k, v in model.state_dict().items() if fragment in k and v.dtype.is_floating_point)


# -- offline ------------------------------------------------------------------


def test_import_transformers_is_offline_only_while_importing(monkeypatch):
    from napari_segsuite.models.offline import import_transformers, offline

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with offline():  # what the import runs under
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    transformers = import_transformers()
    # the process-wide switches are the user's again afterwards
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    assert hasattr(transformers, "Sam2Model")


# -- SAM 2.1 ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sam2_video", "sam2"])
def test_sam2_loads(folders, kind):
    from napari_segsuite.models.sam2 import Sam2Runner

    runner = load_model(folders[kind], device="cpu")
    assert type(runner) is Sam2Runner
    assert runner.family == "sam2"
    assert runner.tasks == ("prompt", "automatic", "video")
    assert runner.class_names == {}
    assert runner.device == "cpu"
    assert not runner.model.training
    assert next(runner.model.parameters()).device.type == "cpu"
    assert type(runner.model).__name__ == "Sam2Model"
    assert type(runner.processor).__name__ == "Sam2Processor"
    info = runner.info
    assert info["model_type"] == kind
    assert info["memory_weights"] is (kind == "sam2_video")
    assert info["image_size"] == 64
    assert info["hiera_embed_dim_per_stage"] == [8, 16, 32, 64]
    assert info["fpn_hidden_size"] == 32
    assert info["num_multimask_outputs"] == 3
    assert info["processor"] == "Sam2Processor from the folder"
    provenance = runner.provenance()
    assert provenance["family"] == "sam2"
    assert provenance["image_size"] == 64
    json.dumps(provenance)  # plain data for layer.metadata


@pytest.mark.parametrize("kind", ["sam2_video", "sam2"])
def test_sam2_weights_equal_saved(folders, kind):
    runner = load_model(folders[kind], device="cpu")
    reference, _ = make_tiny_sam2(video=kind == "sam2_video")
    _assert_same_weights(runner.model, reference)
    other, _ = make_tiny_sam2(video=kind == "sam2_video", seed=1)
    fragment = "patch_embed.projection.weight"
    assert not torch.equal(_first_weight(runner.model, fragment), _first_weight(other, fragment))


def test_sam2_forward_with_processor(folders):
    runner = load_model(folders["sam2_video"], device="cpu")
    image = _image(48, 80)
    inputs = runner.processor(
        images=image, input_points=[[[[30, 20]]]], input_labels=[[[1]]], return_tensors="pt"
    )
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 64, 64)
    with torch.no_grad():
        outputs = runner.model(**inputs)
    assert tuple(outputs.pred_masks.shape) == (1, 1, 3, 16, 16)
    assert tuple(outputs.iou_scores.shape) == (1, 1, 3)
    masks = runner.processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])
    assert tuple(masks[0].shape) == (1, 3, 48, 80)


def test_sam2_without_processor_config_builds_default(folders, tmp_path):
    folder = _copy(folders["sam2"], tmp_path)
    (folder / "processor_config.json").unlink()
    runner = load_model(folder, device="cpu")
    assert runner.info["processor"].startswith("default Sam2Processor built offline")
    assert runner.processor.image_processor.size["height"] == 64
    inputs = runner.processor(images=_image(), input_points=[[[[10, 10]]]], return_tensors="pt")
    with torch.no_grad():
        outputs = runner.model(**inputs)
    assert tuple(outputs.pred_masks.shape) == (1, 1, 3, 16, 16)


# -- SegFormer ----------------------------------------------------------------


def test_segformer_loads_and_predicts(folders):
    from napari_segsuite.models.hf_segmentation import SegformerRunner

    runner = load_model(folders["segformer"], device="cpu")
    assert type(runner) is SegformerRunner
    assert runner.family == "segformer"
    assert runner.tasks == ("semantic",)
    assert runner.class_names == CLASS_NAMES
    assert not runner.model.training
    assert runner.info["hidden_sizes"] == [8, 16, 32, 64]
    assert runner.info["num_labels"] == 3
    assert runner.info["input_size"] == {"height": 64, "width": 64}
    _assert_same_weights(runner.model, make_tiny_segformer()[0])

    inputs = runner.processor(images=_image(48, 80), return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 64, 64)
    with torch.no_grad():
        outputs = runner.model(**inputs)
    assert tuple(outputs.logits.shape) == (1, 3, 16, 16)
    seg = runner.processor.post_process_semantic_segmentation(outputs, target_sizes=[(48, 80)])[0]
    assert tuple(seg.shape) == (48, 80)
    assert set(np.unique(seg.numpy())) <= set(CLASS_NAMES)


def test_segformer_num_labels(tmp_path):
    runner = load_model(build_tiny_segformer(tmp_path / "seg7", num_labels=7), device="cpu")
    assert runner.class_names[6] == "class_6"
    assert len(runner.class_names) == 7


# -- Mask2Former --------------------------------------------------------------


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_mask2former_loads_and_predicts(tmp_path, task):
    from napari_segsuite.models.hf_segmentation import Mask2FormerRunner

    folder = build_tiny_mask2former(tmp_path / "m2f", task=task)
    runner = load_model(folder, device="cpu")
    assert type(runner) is Mask2FormerRunner
    assert runner.family == "mask2former"
    assert runner.tasks == (task,)
    assert "processor configuration" in runner.info["task_source"]
    assert runner.class_names == CLASS_NAMES
    assert runner.info["backbone"] == "swin"
    assert runner.info["num_queries"] == 5
    _assert_same_weights(runner.model, make_tiny_mask2former(task)[0])

    inputs = runner.processor(images=_image(), return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 64, 64)
    with torch.no_grad():
        outputs = runner.model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    assert tuple(outputs.class_queries_logits.shape) == (1, 5, 3 + 1)
    assert tuple(outputs.masks_queries_logits.shape) == (1, 5, 16, 16)
    post = getattr(runner.processor, f"post_process_{task}_segmentation")
    result = post(outputs, target_sizes=[(64, 64)])[0]
    seg = result if task == "semantic" else result["segmentation"]
    assert tuple(seg.shape) == (64, 64)


def test_mask2former_task_from_name_registry_or_unknown(tmp_path):
    plain = build_tiny_mask2former(tmp_path / "tiny-m2f", task=None)
    runner = load_model(plain, device="cpu")
    assert runner.tasks == ("semantic", "instance", "panoptic")
    assert runner.info["task_source"].startswith("unknown")

    named = _copy(plain, tmp_path, "mask2former-swin-tiny-coco-panoptic")
    runner = load_model(named, device="cpu")
    assert runner.tasks == ("panoptic",)
    assert "name" in runner.info["task_source"]

    entry = REGISTRY["mask2former_swin_tiny_coco_instance"]
    source = ModelSource(path=plain, family="mask2former", name=entry.name, entry=entry)
    runner = load_model(source, device="cpu")
    assert runner.tasks == ("instance",)
    assert entry.name in runner.info["task_source"]

    hinted = _copy(plain, tmp_path, "hinted-semantic")
    _edit_config(hinted, segsuite_task="instance")  # an explicit key beats the name
    assert load_model(hinted, device="cpu").tasks == ("instance",)


# -- broken folders -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["sam2_video", "segformer", "mask2former"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_weights_raise_checkpoint_error(folders, tmp_path, kind, damage):
    folder = _copy(folders[kind], tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    damaged = {"garbage": b"this is not a weights file" * 40, "truncated": data[: len(data) // 2], "empty": b""}
    weights.write_bytes(damaged[damage])
    with pytest.raises(CheckpointError, match="could not be read") as err:
        load_model(folder, device="cpu")
    message = str(err.value)
    assert str(folder) in message
    assert "damaged" in message and "again" in message


def test_config_without_weights(folders, tmp_path):
    folder = _copy(folders["segformer"], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file") as err:
        load_model(folder, device="cpu")
    assert "model.safetensors" in str(err.value)


def test_missing_config(folders, tmp_path):
    folder = _copy(folders["mask2former"], tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=re.escape("config.json")):
        load_model(folder, device="cpu")  # detection needs config.json
    with pytest.raises(CheckpointError, match=re.escape("no config.json")) as err:
        load_model(folder, device="cpu", family="mask2former")  # the runner checks too
    assert "Mask2Former" in str(err.value)


def test_unreadable_config(folders, tmp_path):
    folder = _copy(folders["segformer"], tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_model(folder, device="cpu", family="segformer")


def test_wrong_model_type(folders, tmp_path):
    folder = _copy(folders["segformer"], tmp_path)
    _edit_config(folder, model_type="bert")
    with pytest.raises(CheckpointError, match="'bert'"):
        load_model(folder, device="cpu")
    with pytest.raises(CheckpointError, match="'bert', not a SegFormer model"):
        load_model(folder, device="cpu", family="segformer")


@pytest.mark.parametrize(
    ("kind", "family", "expected"),
    [
        ("segformer", "mask2former", "holds a SegFormer model (model_type 'segformer'), not a Mask2Former model"),
        ("mask2former", "segformer", "holds a Mask2Former model (model_type 'mask2former'), not a SegFormer model"),
        ("sam2_video", "mask2former", "holds a SAM 2.1 model (model_type 'sam2_video')"),
        ("segformer", "sam2", "Load it as a SegFormer model (family 'segformer')"),
    ],
)
def test_folder_of_another_family(folders, kind, family, expected):
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_model(folders[kind], device="cpu", family=family)


def test_weights_that_do_not_fit_config(folders, tmp_path):
    folder = _copy(folders["segformer"], tmp_path)
    _edit_config(
        folder,
        id2label={str(i): f"c{i}" for i in range(5)},
        label2id={f"c{i}": i for i in range(5)},
    )
    with pytest.raises(CheckpointError, match="do not fit") as err:
        load_model(folder, device="cpu")
    assert "decode_head.classifier" in str(err.value)
    assert "checkpoint [3" in str(err.value)


def test_segformer_backbone_without_head(tmp_path):
    from napari_segsuite.models.offline import import_transformers

    t = import_transformers()
    config = t.SegformerConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2])
    t.SegformerModel(config).save_pretrained(tmp_path / "mit")
    with pytest.raises(CheckpointError, match="no segmentation head") as err:
        load_model(tmp_path / "mit", device="cpu")
    assert "decode_head" in str(err.value)


def test_unreadable_processor_config(folders, tmp_path):
    folder = _copy(folders["segformer"], tmp_path)
    (folder / "preprocessor_config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="processor configuration"):
        load_model(folder, device="cpu")


def test_file_instead_of_folder(folders):
    source = ModelSource(path=folders["segformer"] / "model.safetensors", family="segformer", name="x")
    with pytest.raises(CheckpointError, match="pick the folder"):
        load_model(source, device="cpu")


# -- processor configurations in older Hub layouts ----------------------------

_NORMALIZE = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def test_legacy_segformer_feature_extractor_config(folders, tmp_path):
    folder = _copy(folders["segformer"], tmp_path)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "SegformerFeatureExtractor",
        "reduce_labels": True, "resample": 2, "size": 64, **_NORMALIZE,
    }))
    runner = load_model(folder, device="cpu")
    assert runner.info["input_size"] == {"height": 64, "width": 64}
    pixels = runner.processor(images=_image(40, 50), return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 64, 64)


def test_legacy_mask2former_int_size(tmp_path):
    folder = build_tiny_mask2former(tmp_path / "mask2former-swin-tiny-coco-instance", task=None)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "ignore_index": 255, "num_labels": 3,
        "reduce_labels": False, "resample": 2, "size": 64, "size_divisibility": 32, **_NORMALIZE,
    }))
    runner = load_model(folder, device="cpu")
    assert runner.tasks == ("instance",)
    assert runner.info["input_size"] == {"shortest_edge": 64, "longest_edge": 107}
    assert "longest_edge=107 added" in runner.info["processor"]
    inputs = runner.processor(images=_image(40, 50), return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 64, 96)  # 64 x 80, padded to multiples of 32
    with torch.no_grad():
        outputs = runner.model(pixel_values=inputs["pixel_values"])
    assert tuple(outputs.masks_queries_logits.shape) == (1, 5, 16, 24)


def test_sam2_preprocessor_config_only(folders, tmp_path):
    folder = _copy(folders["sam2_video"], tmp_path)
    (folder / "processor_config.json").unlink()
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_processor_type": "Sam2ImageProcessorFast", "processor_class": "Sam2VideoProcessor",
        "mask_size": {"height": 16, "width": 16}, "resample": 2, "rescale_factor": 1 / 255,
        "size": {"height": 64, "width": 64}, **_NORMALIZE,
    }))
    runner = load_model(folder, device="cpu")
    assert runner.info["processor"] == "Sam2Processor from the folder"
    assert runner.info["input_size"] == {"height": 64, "width": 64}
