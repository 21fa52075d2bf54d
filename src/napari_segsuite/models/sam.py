"""Segment Anything (``segment-anything``) checkpoints of any size.

The architecture is read from the state dict (embedding width, depth, heads,
windowed and global-attention blocks, image size, decoder sizes), so Meta's
vit_b / vit_l / vit_h, fine-tuned checkpoints (e.g. microscopy fine-tunes of
vit_b) and custom sizes load without the user naming a type. Checkpoints are
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from typing import Any

from napari_segsuite.core.errors import CheckpointError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.base import Runner
from napari_segsuite.models.detect import read_state_dict
from napari_segsuite.models.store import ModelSource

#: Meta's three published encoders, for naming an inferred architecture.
KNOWN_ENCODERS = {
    (768, 12): "vit_b",
    (1024, 24): "vit_l",
    (1280, 32): "vit_h",
}
_PREFIXES = ("module.", "sam.", "model.")


#: SAM's input normalisation (segment_anything's ``build_sam``), not stored in checkpoints
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize_sam_state_dict(state: dict) -> dict:
    """Strip wrapper prefixes (``module.``, ``sam.``, ``model.``) so keys start with ``image_encoder.``."""
    changed = True
    while changed and not any(k.startswith("image_encoder.") for k in state):
        changed = False
        for prefix in _PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
                changed = True
    return state


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def infer_sam_config(state: dict) -> dict[str, Any]:
    """Read the SAM architecture from a state dict.

    Parameters
    ----------
    state : dict
        A SAM state dict (keys ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).

    Returns
    -------
    dict
        Keyword arguments for :func:`build_sam`.

    Raises
    ------
    CheckpointError
        If the state dict is not a SAM model.
    """
    need = ("image_encoder.patch_embed.proj.weight", "image_encoder.neck.0.weight", "mask_decoder.mask_tokens.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(
            "This checkpoint is not a Segment Anything model: it lacks "
            f"{', '.join(missing)}. Pick a SAM checkpoint (e.g. sam_vit_b_01ec64.pth) or a fine-tune of one."
        )
    patch = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, in_chans, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    if "image_encoder.pos_embed" in state:
        grid = int(state["image_encoder.pos_embed"].shape[1])
    else:
        grid = 1024 // patch_size
    img_size = grid * patch_size
    use_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h" in state
    global_idx, window = [], 14
    if use_rel_pos:
        head_dim = int(state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        num_heads = embed_dim // head_dim
        sizes = [int(state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]) for i in range(depth)]
        global_size = 2 * grid - 1
        global_idx = [i for i, s in enumerate(sizes) if s == global_size]
        windowed = [s for s in sizes if s != global_size]
        if windowed:
            window = (windowed[0] + 1) // 2
        else:
            window = 0
    else:
        num_heads = max(1, embed_dim // 64)
    mlp_dim = int(state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]) if depth else 4 * embed_dim
    out_chans = int(state["image_encoder.neck.0.weight"].shape[0])
    mask_in = int(state.get("prompt_encoder.mask_downscaling.3.weight", patch.new_zeros(16)).shape[0])
    dec_depth = _count(state, r"mask_decoder\.transformer\.layers\.(\d+)\.")
    dec_mlp = int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]) if dec_depth else 2048
    iou_hidden = int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
    iou_depth = _count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")
    num_mask_tokens = int(state["mask_decoder.mask_tokens.weight"].shape[0])
    cfg = {
        "encoder_embed_dim": embed_dim,
        "encoder_depth": depth,
        "encoder_num_heads": num_heads,
        "encoder_global_attn_indexes": global_idx,
        "encoder_window_size": window,
        "encoder_mlp_ratio": mlp_dim / embed_dim,
        "encoder_qkv_bias": "image_encoder.blocks.0.attn.qkv.bias" in state,
        "encoder_use_rel_pos": use_rel_pos,
        "in_chans": in_chans,
        "patch_size": patch_size,
        "image_size": img_size,
        "prompt_embed_dim": out_chans,
        "mask_in_chans": mask_in,
        "decoder_depth": dec_depth,
        "decoder_mlp_dim": dec_mlp,
        "decoder_num_heads": 8,
        "iou_head_depth": iou_depth,
        "iou_head_hidden_dim": iou_hidden,
        "num_multimask_outputs": num_mask_tokens - 1,
    }
    cfg["arch"] = KNOWN_ENCODERS.get((embed_dim, depth), f"vit_custom_{embed_dim}x{depth}")
    return cfg


def build_sam(cfg: dict[str, Any]):
    """Build a randomly initialised ``segment_anything.modeling.Sam`` from a config dict."""
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = cfg["image_size"] // cfg["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg["image_size"],
            patch_size=cfg["patch_size"],
            in_chans=cfg.get("in_chans", 3),
            embed_dim=cfg["encoder_embed_dim"],
            depth=cfg["encoder_depth"],
            num_heads=cfg["encoder_num_heads"],
            mlp_ratio=cfg.get("encoder_mlp_ratio", 4.0),
            out_chans=cfg["prompt_embed_dim"],
            qkv_bias=cfg.get("encoder_qkv_bias", True),
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=cfg.get("encoder_use_rel_pos", True),
            window_size=cfg.get("encoder_window_size", 14),
            global_attn_indexes=tuple(cfg["encoder_global_attn_indexes"]),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(cfg["image_size"], cfg["image_size"]),
            mask_in_chans=cfg.get("mask_in_chans", 16),
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=cfg.get("num_multimask_outputs", 3),
            transformer=TwoWayTransformer(
                depth=cfg.get("decoder_depth", 2),
                embedding_dim=cfg["prompt_embed_dim"],
                mlp_dim=cfg.get("decoder_mlp_dim", 2048),
                num_heads=cfg.get("decoder_num_heads", 8),
            ),
            transformer_dim=cfg["prompt_embed_dim"],
            iou_head_depth=cfg.get("iou_head_depth", 3),
            iou_head_hidden_dim=cfg.get("iou_head_hidden_dim", 256),
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def load_sam_model(path, device: str = "cpu"):
    """Load any SAM-format checkpoint file into a ``Sam`` module (eval mode).

    Returns
    -------
    (Sam, dict)
        The model and the inferred configuration.
    """
    from pathlib import Path

    import torch

    state = normalize_sam_state_dict(read_state_dict(Path(path)))
    # float32 like the built model's parameters (half-precision fine-tunes are widened, as copying would)
    state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float32 else v
             for k, v in state.items()}
    cfg = infer_sam_config(state)
    # Built without memory or random initialisation (every weight comes from the file): the
    # checkpoint's tensors become the parameters. Only the normalisation constants, which
    # checkpoints do not hold, are made afresh.
    with torch.device("meta"):
        model = build_sam(cfg)
    result = model.load_state_dict(state, strict=False, assign=True)
    unexpected = [k for k in result.unexpected_keys if not k.startswith(("pixel_mean", "pixel_std"))]
    if result.missing_keys or unexpected:
        raise CheckpointError(
            f"{Path(path).name} looks like SAM but does not fit the inferred architecture "
            f"({cfg['arch']}): missing {result.missing_keys[:3]}, unexpected {unexpected[:3]}."
        )
    model.pixel_mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
    model.pixel_std = torch.tensor(PIXEL_STD).view(-1, 1, 1)
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise CheckpointError(f"{Path(path).name} does not hold {', '.join(on_meta[:3])}.")
    model.eval().to(device)
    return model, cfg


class SamRunner(Runner):
    """Segment Anything: promptable, class-agnostic masks."""

    family = Family.SAM

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> SamRunner:
        if source.path.is_dir():
            raise CheckpointError(
                f"{source.path} is a folder; a SAM checkpoint is a single .pth file. For SAM 2.1 "
                "folders choose the SAM 2.1 family."
            )
        model, cfg = load_sam_model(source.path, device)
        return cls(model, source, device, tasks=(Task.PROMPT, Task.AUTOMATIC), info={"architecture": cfg})

    def prompt_model(self):
        """SAM behind the prompt-model interface (:class:`~napari_segsuite.models.sam_prompt.SamPromptModel`)."""
        from napari_segsuite.models.sam_prompt import SamPromptModel

        return SamPromptModel(self)
