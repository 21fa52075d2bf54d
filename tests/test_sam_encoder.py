"""The SAM image encoder run with reused attention buffers equals segment_anything's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _randomised(window_size: int, seed: int = 0):
    """A tiny segment_anything SAM whose every parameter is random (relative positions included)."""
    from napari_segsuite.demo.tiny_sam import TINY_SAM_CONFIG
    from napari_segsuite.models.sam import build_sam

    torch.manual_seed(seed)
    model = build_sam({**TINY_SAM_CONFIG, "encoder_window_size": window_size}).eval()
    with torch.no_grad():
        for p in model.image_encoder.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


@pytest.mark.parametrize("window_size", [4, 3])  # 16x16 tokens: windows that tile, and padded ones
@pytest.mark.parametrize("shape", [(256, 256), (190, 256), (256, 101)])
def test_encoder_features_equal_set_image(window_size, shape):
    from segment_anything import SamPredictor

    from napari_segsuite.models.sam_encoder import plain_blocks
    from napari_segsuite.models.sam_prompt import SamPromptModel

    model = _randomised(window_size)
    assert model.image_encoder.blocks[0].attn.rel_pos_h.abs().sum() > 0
    assert plain_blocks(model.image_encoder)
    rgb = np.random.default_rng(1).integers(0, 255, (*shape, 3), dtype=np.uint8)
    predictor = SamPredictor(model)
    predictor.set_image(rgb)

    runner = type("Runner", (), {"model": model, "device": "cpu"})()
    emb = SamPromptModel(runner).encode(rgb)
    assert torch.equal(emb.features, predictor.features)
    assert tuple(emb.original_size) == tuple(predictor.original_size)
    assert tuple(emb.input_size) == tuple(predictor.input_size)


def test_checkpoint_loaded_by_the_plugin_encodes_like_the_library(tiny_sam_path):
    """The user's path: a checkpoint file loaded by the plugin, against SamPredictor on the same file."""
    from segment_anything import SamPredictor

    from napari_segsuite.demo.tiny_sam import TINY_SAM_CONFIG
    from napari_segsuite.models.base import load_model
    from napari_segsuite.models.sam import build_sam

    rgb = np.random.default_rng(2).integers(0, 255, (200, 240, 3), dtype=np.uint8)
    prompt_model = load_model(str(tiny_sam_path), "cpu").prompt_model()
    emb = prompt_model.encode(rgb)

    reference = build_sam(TINY_SAM_CONFIG).eval()
    reference.load_state_dict(torch.load(tiny_sam_path, map_location="cpu", weights_only=True))
    predictor = SamPredictor(reference)
    predictor.set_image(rgb)
    assert torch.equal(emb.features, predictor.features)


def test_between_blocks_is_called_before_each_half():
    from napari_segsuite.models.sam_encoder import run_blocks

    model = _randomised(4)
    enc = model.image_encoder
    x = torch.randn(1, 16, 16, enc.patch_embed.proj.out_channels)
    calls = []
    with torch.no_grad():
        out = run_blocks(enc, x, lambda: calls.append(1))
        reference = x
        for block in enc.blocks:
            reference = block(reference)
    assert len(calls) == 2 * len(enc.blocks)
    assert torch.equal(out, reference)


def test_other_blocks_run_as_the_library_wrote_them():
    """A subclass of Block (another model's encoder) is not replaced: plain_blocks says no."""
    from segment_anything.modeling.image_encoder import Block

    from napari_segsuite.models.sam_encoder import plain_blocks
    from napari_segsuite.models.sam_prompt import SamPromptModel

    model = _randomised(4)

    class Traced(Block):
        seen = 0

        def forward(self, x):
            Traced.seen += 1
            return super().forward(x)

    for block in model.image_encoder.blocks:
        block.__class__ = Traced
    assert not plain_blocks(model.image_encoder)
    rgb = np.random.default_rng(3).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    runner = type("Runner", (), {"model": model, "device": "cpu"})()
    pauses = []
    emb = SamPromptModel(runner).encode(rgb, lambda: pauses.append(1))
    assert Traced.seen == len(model.image_encoder.blocks)
    assert len(pauses) == 3 * len(model.image_encoder.blocks)  # before each block and each half
    from segment_anything import SamPredictor

    predictor = SamPredictor(model)
    predictor.set_image(rgb)
    assert torch.equal(emb.features, predictor.features)


def test_scratch_reuses_its_buffers():
    from napari_segsuite.models.sam_encoder import AttentionScratch

    like = torch.zeros(1)
    scratch = AttentionScratch()
    small = scratch.take(0, (2, 3, 3), like)
    big = scratch.take(0, (4, 8, 8), like)
    again = scratch.take(0, (2, 3, 3), like)
    assert small.shape == (2, 3, 3) and big.shape == (4, 8, 8)
    assert again.data_ptr() == big.data_ptr()  # the smaller map reuses the larger buffer
    assert scratch.take(1, (4, 8, 8), like).data_ptr() != big.data_ptr()  # the softmax has its own
    half = scratch.take(0, (2, 3, 3), torch.zeros(1, dtype=torch.float64))
    assert half.dtype == torch.float64


def test_hooked_blocks_run_through_module_call():
    """Hooks a user put on a block or its attention still fire: such blocks run as the library's."""
    from napari_segsuite.models.sam_encoder import plain_blocks
    from napari_segsuite.models.sam_prompt import SamPromptModel

    model = _randomised(4)
    seen = []
    handle = model.image_encoder.blocks[1].attn.register_forward_hook(lambda *_: seen.append(1))
    try:
        assert not plain_blocks(model.image_encoder)
        rgb = np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        runner = type("Runner", (), {"model": model, "device": "cpu"})()
        SamPromptModel(runner).encode(rgb)
    finally:
        handle.remove()
    assert seen == [1]
    assert plain_blocks(model.image_encoder)
