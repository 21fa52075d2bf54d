"""The chunked SAM mask decoder gives MaskDecoder's numbers bit for bit."""

import pytest
import torch

from napari_segsuite.models.sam_decoder import ChunkedMaskDecoder


@pytest.fixture(scope="module")
def sam_parts():
    """A SAM prompt encoder and mask decoder at the real models' size (the same for vit_b/l/h)."""
    from types import SimpleNamespace

    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    torch.manual_seed(3)
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
        depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
        iou_head_hidden_dim=256)
    return SimpleNamespace(prompt_encoder=prompt.eval(), mask_decoder=decoder.eval())


def _prompts(sam, n, seed):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 1, 2, generator=g) * 1024
    return sam.prompt_encoder(points=(points, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)


@pytest.mark.parametrize("n, chunk", [(13, 4), (9, 1), (6, 3), (1, 4)])
@pytest.mark.parametrize("multimask", [True, False])
@torch.no_grad()
def test_chunked_decoder_equals_mask_decoder(sam_parts, n, chunk, multimask):
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(n))
    sparse, dense = _prompts(sam_parts, n, seed=chunk)
    low, iou = sam_parts.mask_decoder(image_embeddings=emb, image_pe=sam_parts.prompt_encoder.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=multimask)
    decoded = ChunkedMaskDecoder(sam_parts, chunk=chunk)(emb, sparse, dense, multimask_output=multimask)
    assert torch.equal(decoded.iou, iou)
    assert torch.equal(decoded.all_low_res_masks(), low)
    # masks of a few prompts only (the upscaling runs for those alone): the same numbers
    for subset in ([n - 1], sorted({0, n - 1}), list(range(0, n, 2))):
        assert torch.equal(decoded.low_res_masks(subset), low[subset]), subset


@pytest.mark.parametrize("n, size", [(1, 4), (2, 1), (9, 1), (13, 4), (12, 4), (5, 4)])
def test_chunks_cover_the_batch_without_lone_prompts(n, size):
    from napari_segsuite.models.sam_decoder import _chunks

    chunks = _chunks(n, size)
    assert [i for sl in chunks for i in range(sl.start, sl.stop)] == list(range(n))
    assert all(sl.stop - sl.start >= 2 for sl in chunks) or n == 1


@torch.no_grad()
def test_chunked_decoder_refuses_mask_prompts(sam_parts):
    emb = torch.randn(1, 256, 64, 64)
    sparse, dense = _prompts(sam_parts, 2, seed=0)
    dense = dense.clone()
    dense[1] += 1.0  # a mask prompt on the second prompt: the image side is no longer shared
    with pytest.raises(ValueError, match="same dense embedding"):
        ChunkedMaskDecoder(sam_parts)(emb, sparse, dense)


@torch.no_grad()
@pytest.mark.parametrize("original", [(256, 256), (120, 160), (300, 200)])
def test_postprocess_masks_equals_sam_postprocess_masks(tiny_sam_path, original):
    from napari_segsuite.api import SamSession
    from napari_segsuite.models.sam_decoder import postprocess_masks

    sam = SamSession(str(tiny_sam_path), device="cpu").runner.model
    side = sam.image_encoder.img_size
    scale = side / max(original)
    input_size = (int(original[0] * scale + 0.5), int(original[1] * scale + 0.5))
    low = torch.randn(2, 3, side // 4, side // 4, generator=torch.Generator().manual_seed(1))
    ours = postprocess_masks(sam, low, input_size, original)
    assert ours.shape[-2:] == original
    assert torch.equal(ours, sam.postprocess_masks(low, input_size, original))
