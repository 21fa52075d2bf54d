"""api.segment_semantic against the libraries themselves, with tiny real-architecture checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segsuite import api
from napari_segsuite.core.errors import CheckpointError, InputError
from napari_segsuite.models.base import load_model
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_torchvision,
    tiny_id2label,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantic_models")
    return {
        "segformer": build_tiny_segformer(root / "tiny-segformer", num_labels=4),
        "mask2former": build_tiny_mask2former(root / "tiny-mask2former-semantic", "semantic", num_labels=3),
        "mask2former_instance": build_tiny_mask2former(root / "tiny-m2f-inst", "instance"),
        "lraspp": build_tiny_torchvision(root / "lraspp.pth", "lraspp_mobilenet_v3_large", num_classes=5),
    }


def _transformers_map(folder, image):
    """What transformers itself says: processor -> model -> post_process_semantic_segmentation."""
    runner = load_model(folder, "cpu")
    inputs = runner.processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        outputs = runner.model(**inputs)
    maps = runner.processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])
    return maps[0].numpy()


@pytest.mark.parametrize("family", ["segformer", "mask2former"])
@pytest.mark.parametrize("shape", [(97, 130, 3), (64, 64, 3), (150, 90, 3)])
def test_labels_split_pixels_exactly_like_transformers(folders, family, shape, rng):
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image[: shape[0] // 2] //= 3  # some structure, so that several classes win somewhere
    result = api.segment_semantic(image, str(folders[family]), device="cpu", tile_size=None)
    expected = _transformers_map(str(folders[family]), image)
    assert result.labels.shape == shape[:2]
    assert np.array_equal(result.class_map(), expected)
    assert np.array_equal(result.labels, expected + 1)  # label id = class id + 1
    n = 4 if family == "segformer" else 3
    assert result.class_names == {i + 1: name for i, name in tiny_id2label(n).items()}
    assert result.pixel_counts == {int(k) + 1: int(v) for k, v in zip(*np.unique(expected, return_counts=True), strict=True)}


def test_lraspp_matches_torchvision_with_imagenet_normalisation(folders, rng):
    image = rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)
    result = api.segment_semantic(image, str(folders["lraspp"]), device="cpu", confidence=True)
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    model = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5)
    model.load_state_dict(torch.load(folders["lraspp"], weights_only=True))
    model.eval()
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = model((x - mean) / std)["out"][0]
    assert np.array_equal(result.class_map(), logits.argmax(0).numpy())
    probs = logits.softmax(0).max(0).values.numpy()
    np.testing.assert_allclose(result.confidence, probs, atol=1e-5)
    assert result.class_names[1] == "class_0" and len(result.class_names) == 5


def test_greyscale_uint16_and_float_images_run(folders, rng):
    runner = load_model(str(folders["segformer"]), "cpu")
    grey16 = rng.integers(0, 60000, (70, 90), dtype=np.uint16)
    as_float = grey16.astype(np.float64)
    a = api.segment_semantic(grey16, runner)
    b = api.segment_semantic(as_float, runner)
    assert np.array_equal(a.labels, b.labels)  # same intensity scaling whatever the dtype
    assert a.labels.min() >= 1 and sum(a.pixel_counts.values()) == 70 * 90


def test_tiled_run_of_a_large_image_is_consistent(folders, rng):
    image = np.zeros((700, 900), np.uint16)
    image[:, 450:] = 40000
    image += rng.integers(0, 500, image.shape, dtype=np.uint16)
    steps = []
    result = api.segment_semantic(
        image, str(folders["segformer"]), device="cpu", tile_size=256, overlap=32,
        confidence=True, progress=steps.append,
    )
    assert result.params["n_tiles"] == 12 and steps[-1].step == steps[-1].total == 12
    assert result.labels.shape == (700, 900) and result.confidence.shape == (700, 900)
    assert 0.25 <= result.confidence.min() and result.confidence.max() <= 1.0  # 4 classes
    # tiles are blended, not pasted: no label edge runs along a whole tile boundary
    for x in (224, 448, 672):
        assert (result.labels[:, x - 1] != result.labels[:, x]).mean() < 0.9


def test_images_smaller_than_the_model_input_are_upscaled_with_a_note(folders, rng):
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    result = api.segment_semantic(image, str(folders["segformer"]), device="cpu")
    assert result.labels.shape == (20, 30)
    assert any("smaller than the model's input" in n for n in result.notes)


def test_a_folder_that_is_not_a_segmentation_checkpoint_is_refused(folders, tmp_path):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    image = np.zeros((32, 32), np.uint8)
    with pytest.raises((CheckpointError, InputError)):
        api.segment_semantic(image, str(empty), device="cpu")
    with pytest.raises(InputError, match="not semantic"):
        api.segment_semantic(image, str(folders["mask2former_instance"]), device="cpu")


def test_bad_images_are_refused_before_the_model_runs(folders):
    runner = load_model(str(folders["segformer"]), "cpu")
    with pytest.raises(InputError, match="5 channels"):
        api.segment_semantic(np.zeros((64, 64, 5), np.uint8), runner)
    with pytest.raises(InputError, match="at least 16x16"):
        api.segment_semantic(np.zeros((1, 1), np.uint8), runner)
    with pytest.raises(InputError, match="NaN"):
        api.segment_semantic(np.full((40, 40), np.nan), runner)
