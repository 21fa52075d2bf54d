"""A tiny randomly initialised Segment Anything model, saved like Meta's checkpoints."""

from __future__ import annotations

from pathlib import Path

TINY_SAM_CONFIG = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "encoder_window_size": 4,
    "encoder_mlp_ratio": 2.0,
    "in_chans": 3,
    "patch_size": 16,
    "image_size": 256,
    "prompt_embed_dim": 32,
    "mask_in_chans": 8,
    "decoder_depth": 2,
    "decoder_mlp_dim": 64,
    "decoder_num_heads": 8,
    "iou_head_depth": 3,
    "iou_head_hidden_dim": 32,
    "num_multimask_outputs": 3,
}


def build_tiny_sam(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny SAM state dict (``torch.save(model.state_dict())``) to ``path``.

    The model is segment_anything's own ``Sam`` (ViT image encoder, prompt
    encoder, two-way-transformer mask decoder) with small dimensions; the file
    has the same layout as ``sam_vit_b_01ec64.pth``.
    """
    from napari_segsuite.models.offline import guard_llvm_clash

    guard_llvm_clash()
    import torch

    from napari_segsuite.models.sam import build_sam

    cfg = {**TINY_SAM_CONFIG, **overrides}
    torch.manual_seed(seed)
    model = build_sam(cfg)
    # Random init leaves the IoU head near zero; make the outputs non-degenerate.
    with torch.no_grad():
        for p in model.mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path
