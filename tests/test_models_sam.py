"""SAM checkpoints of any size: the architecture is read from the state dict."""

import numpy as np
import pytest
import torch

from napari_segsuite.core.errors import CheckpointError
from napari_segsuite.models.base import load_model
from napari_segsuite.models.sam import SamRunner, infer_sam_config


def test_infer_official_vit_b_architecture_from_segment_anythings_builder():
    from segment_anything import sam_model_registry

    cfg = infer_sam_config(sam_model_registry["vit_b"]().state_dict())
    assert cfg["arch"] == "vit_b"
    assert cfg["encoder_embed_dim"] == 768 and cfg["encoder_depth"] == 12
    assert cfg["encoder_num_heads"] == 12 and cfg["encoder_global_attn_indexes"] == [2, 5, 8, 11]
    assert cfg["encoder_window_size"] == 14 and cfg["image_size"] == 1024
    assert cfg["prompt_embed_dim"] == 256 and cfg["mask_in_chans"] == 16
    assert cfg["decoder_mlp_dim"] == 2048 and cfg["iou_head_hidden_dim"] == 256


def test_tiny_sam_loads_through_the_user_path_with_equal_weights(tiny_sam_path):
    runner = load_model(str(tiny_sam_path), device="cpu")
    assert isinstance(runner, SamRunner) and runner.tasks == ("prompt", "automatic")
    saved = torch.load(tiny_sam_path, weights_only=True)
    for key in ("image_encoder.patch_embed.proj.weight", "mask_decoder.iou_token.weight"):
        torch.testing.assert_close(runner.model.state_dict()[key], saved[key])
    assert runner.info["architecture"]["encoder_global_attn_indexes"] == [1]
    assert runner.provenance()["family"] == "sam"


def test_wrapped_and_prefixed_checkpoints_load(tiny_sam_path, tmp_path):
    state = torch.load(tiny_sam_path, weights_only=True)
    wrapped = tmp_path / "finetune.pt"
    torch.save({"model_state": {"sam." + k: v for k, v in state.items()}, "epoch": 3}, wrapped)
    runner = load_model(wrapped, device="cpu")
    from segment_anything import SamPredictor

    a, b = SamPredictor(runner.model), SamPredictor(load_model(tiny_sam_path, "cpu").model)
    img = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for p in (a, b):
        p.set_image(img)
    ma, sa, _ = a.predict(np.array([[10, 20]]), np.array([1]))
    mb, sb, _ = b.predict(np.array([[10, 20]]), np.array([1]))
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_allclose(sa, sb)


@pytest.mark.parametrize("kind", ["empty", "truncated", "not_sam", "text"])
def test_bad_files_raise_clear_errors(kind, tiny_sam_path, tmp_path):
    path = tmp_path / "bad.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = tiny_sam_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_sam":
        torch.save({"layer.weight": torch.zeros(3)}, path)
    else:
        path.write_text("hello")
    with pytest.raises(CheckpointError) as err:
        load_model(path, device="cpu")
    assert path.name in str(err.value) or "state dict" in str(err.value)


def test_sam_runner_rejects_non_sam_state_dict_named_as_sam(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"image_encoder.foo": torch.zeros(1), "mask_decoder.bar": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not a Segment Anything model"):
        load_model(path, device="cpu")


def test_family_detection_maps_the_tensors_and_reads_legacy_files(tiny_sam_path, tmp_path, monkeypatch):
    from napari_segsuite.models import detect

    seen = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        seen.append(bool(kwargs.get("mmap")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert detect.detect_family(tiny_sam_path) == "sam"
    assert seen == [True]  # a zip checkpoint: the keys only, its tensors memory-mapped, not read
    legacy = tmp_path / "legacy.pth"
    torch.save(real_load(tiny_sam_path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    seen.clear()
    assert detect.detect_family(legacy) == "sam"
    assert seen == [False]  # the old format cannot be mapped: read in full
    runner = load_model(str(legacy), "cpu")
    assert isinstance(runner, SamRunner)


def test_a_half_precision_checkpoint_loads_as_float32_with_its_weights(tiny_sam_path, tmp_path):
    state = torch.load(tiny_sam_path, weights_only=True)
    half = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in state.items()}, half)
    runner = load_model(str(half), "cpu")
    loaded = runner.model.state_dict()
    for name, value in state.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], value.half().float()), name
    assert runner.model.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert not any(p.is_meta for p in runner.model.parameters())
