"""Tiny randomly initialised SAM 3 video/tracker and EdgeTAM models, saved like the hub folders.

- :func:`build_tiny_sam3_video` writes the layout of ``facebook/sam3``: one
  ``sam3_video`` folder holding the concept detector (``Sam3Model``), the
  tracker (``Sam3TrackerModel`` / ``Sam3TrackerVideoModel``) and the video
  model (``Sam3VideoModel``), with a ``Sam3VideoProcessor`` and a local
  CLIP-style tokenizer. transformers 5 saves the video model's tracker weights
  under a doubled ``tracker_model.tracker_model.`` prefix (its loading-time
  renaming applied in reverse); the builder writes them under the hub's single
  prefix, which every one of those classes loads without missing weights.
- :func:`build_tiny_sam3_tracker` writes a plain ``Sam3TrackerModel`` folder.
- :func:`build_tiny_edgetam` writes an ``EdgeTamVideoModel`` folder (the layout
  of ``yonigozlan/EdgeTAM-hf``) or an image-only ``EdgeTamModel`` folder, with a
  SAM 2 processor. The RepViT backbone comes from timm, built without
  pretrained weights.

Tracking needs the trackers' width to be a multiple of 64 above 64 (128 here)
and 64-channel memories, as for SAM 2.1.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_segsuite.demo.tiny_models import save_folder, seeded, tiny_transformers
from napari_segsuite.testing.tiny_open_vocab import TINY_WORDS, make_clip_tokenizer, tiny_sam3_vit

TRACKER_HIDDEN = 128


def _sam3_vision(t, image_size: int, hidden: int):
    g = image_size // 14
    return t.Sam3VisionConfig(
        backbone_config=tiny_sam3_vit(t, image_size=image_size), fpn_hidden_size=hidden,
        scale_factors=[4.0, 2.0, 1.0, 0.5], backbone_feature_sizes=[[4 * g] * 2, [2 * g] * 2, [g] * 2],
    )


def _tracker_parts(image_size: int, patch: int, hidden: int) -> tuple[dict, dict]:
    prompt = {"hidden_size": hidden, "image_size": image_size, "patch_size": patch, "mask_input_channels": 4}
    decoder = {
        "hidden_size": hidden, "mlp_dim": 2 * hidden, "num_hidden_layers": 2, "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    }
    return prompt, decoder


def _memory(hidden: int, rope: int) -> dict:
    return {
        "num_maskmem": 2, "memory_attention_hidden_size": hidden, "memory_attention_num_layers": 1,
        "memory_attention_rope_feat_sizes": [rope, rope], "memory_encoder_hidden_size": hidden,
        "memory_encoder_output_channels": 64, "mask_downsampler_embed_dim": hidden,
        "memory_fuser_embed_dim": hidden, "memory_fuser_intermediate_dim": 2 * hidden,
    }


# -- SAM 3 video (facebook/sam3 layout) -------------------------------------------------


def make_tiny_sam3_video(*, image_size: int = 112, seed: int = 0, words=TINY_WORDS, detection_threshold: float = 0.2):
    """A tiny ``Sam3VideoModel`` (detector + tracker) and its ``Sam3VideoProcessor``.

    Parameters
    ----------
    detection_threshold : float
        The video model's ``score_threshold_detection`` and ``new_det_thresh``
        (random weights score about 0.25, so the defaults would find nothing);
        ``hotstart_delay`` is 0 so objects are reported from the first frame.
    """
    t = tiny_transformers()
    hidden = TRACKER_HIDDEN
    tok = make_clip_tokenizer(words)
    layer = {"hidden_size": hidden, "num_attention_heads": 2, "intermediate_size": 2 * hidden}
    text = {
        "vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "projection_dim": 32,
    }
    detector = t.Sam3Config(
        vision_config=_sam3_vision(t, image_size, hidden), text_config=text,
        geometry_encoder_config={**layer, "num_layers": 1}, detr_encoder_config={**layer, "num_layers": 1},
        detr_decoder_config={**layer, "num_layers": 1, "num_queries": 10},
        mask_decoder_config={"hidden_size": hidden, "num_attention_heads": 2, "num_upsampling_stages": 2},
    )
    prompt, decoder = _tracker_parts(image_size, 14, hidden)
    memory = _memory(hidden, image_size // 14)
    tracker = t.Sam3TrackerVideoConfig(
        vision_config=_sam3_vision(t, image_size, hidden), prompt_encoder_config=prompt,
        mask_decoder_config=decoder, image_size=image_size,
        memory_attention_feed_forward_hidden_size=2 * hidden, **memory,
    )
    config = t.Sam3VideoConfig(
        detector_config=detector, tracker_config=tracker, score_threshold_detection=detection_threshold,
        new_det_thresh=detection_threshold, hotstart_delay=0,
    )
    size = {"height": image_size, "width": image_size}
    processor = t.Sam3VideoProcessor(
        image_processor=t.Sam3ImageProcessor(size=size), video_processor=t.Sam2VideoVideoProcessor(size=size),
        tokenizer=tok,
    )
    return seeded(t.Sam3VideoModel, config, seed), processor


def build_tiny_sam3_video(folder: str | os.PathLike, **kwargs) -> Path:
    """Write a tiny SAM 3 folder in the layout of ``facebook/sam3``; see :func:`make_tiny_sam3_video`."""
    from safetensors.torch import load_file, save_file

    folder = save_folder(folder, *make_tiny_sam3_video(**kwargs))
    weights = folder / "model.safetensors"
    state = load_file(weights)
    state = {k.replace("tracker_model.tracker_model.", "tracker_model.", 1): v for k, v in state.items()}
    save_file(state, weights, metadata={"format": "pt"})
    return folder


# -- SAM 3 tracker (image) ----------------------------------------------------------------


def make_tiny_sam3_tracker(*, image_size: int = 112, seed: int = 0):
    """A tiny ``Sam3TrackerModel`` (SAM 3's ViT, SAM 2-style prompts) and its ``Sam3TrackerProcessor``."""
    t = tiny_transformers()
    prompt, decoder = _tracker_parts(image_size, 14, TRACKER_HIDDEN)
    config = t.Sam3TrackerConfig(
        vision_config=_sam3_vision(t, image_size, TRACKER_HIDDEN), prompt_encoder_config=prompt,
        mask_decoder_config=decoder,
    )
    size = {"height": image_size, "width": image_size}
    processor = t.Sam3TrackerProcessor(image_processor=t.Sam2ImageProcessor(
        size=size, mask_size={"height": 4 * (image_size // 14), "width": 4 * (image_size // 14)},
    ))
    return seeded(t.Sam3TrackerModel, config, seed), processor


def build_tiny_sam3_tracker(folder: str | os.PathLike, **kwargs) -> Path:
    """Write a tiny ``Sam3TrackerModel`` folder; see :func:`make_tiny_sam3_tracker`."""
    return save_folder(folder, *make_tiny_sam3_tracker(**kwargs))


# -- EdgeTAM --------------------------------------------------------------------------------


def tiny_edgetam_vision(t, image_size: int = 64, hidden: int = TRACKER_HIDDEN):
    """A tiny EdgeTAM vision config: a RepViT-M1 from timm with small widths (no pretrained weights)."""
    backbone = t.TimmWrapperConfig(
        architecture="repvit_m1",
        model_args={
            "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3],
            "embed_dim": [12, 24, 48, 96], "depth": [1, 1, 1, 1],
        },
    )
    s = image_size
    return t.EdgeTamVisionConfig(
        backbone_config=backbone, backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[s // 4] * 2, [s // 8] * 2, [s // 16] * 2], fpn_hidden_size=hidden,
    )


def make_tiny_edgetam(*, video: bool = True, image_size: int = 64, seed: int = 0):
    """A tiny EdgeTAM (``EdgeTamVideoModel`` or ``EdgeTamModel``) and its SAM 2 processor."""
    t = tiny_transformers()
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, not {image_size}")
    s, hidden = image_size, TRACKER_HIDDEN
    prompt, decoder = _tracker_parts(s, 16, hidden)
    size = {"height": s, "width": s}
    image_processor = t.Sam2ImageProcessor(size=size, mask_size={"height": s // 4, "width": s // 4})
    if not video:
        config = t.EdgeTamConfig(
            vision_config=tiny_edgetam_vision(t, s, hidden), prompt_encoder_config=prompt, mask_decoder_config=decoder,
        )
        return seeded(t.EdgeTamModel, config, seed), t.Sam2Processor(image_processor=image_processor)
    config = t.EdgeTamVideoConfig(
        vision_config=tiny_edgetam_vision(t, s, hidden), prompt_encoder_config=prompt, mask_decoder_config=decoder,
        image_size=s, memory_attention_mlp_hidden_size=2 * hidden, memory_attention_rope_k_sizes=[s // 32, s // 32],
        perceiver_resampler_num_latents=4, perceiver_resampler_num_latents_2d=4, perceiver_resampler_num_layers=1,
        **_memory(hidden, s // 16),
    )
    processor = t.Sam2VideoProcessor(image_processor=image_processor, video_processor=t.Sam2VideoVideoProcessor(size=size))
    return seeded(t.EdgeTamVideoModel, config, seed), processor


def build_tiny_edgetam(folder: str | os.PathLike, **kwargs) -> Path:
    """Write a tiny EdgeTAM folder; see :func:`make_tiny_edgetam`."""
    return save_folder(folder, *make_tiny_edgetam(**kwargs))
