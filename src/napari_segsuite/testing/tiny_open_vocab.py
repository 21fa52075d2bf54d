"""Tiny randomly initialised open-vocabulary models, saved with ``save_pretrained``.

SAM 3 (``Sam3Model`` + ``Sam3Processor``), Grounding DINO
(``GroundingDinoForObjectDetection`` + ``GroundingDinoProcessor``) and OWLv2
(``Owlv2ForObjectDetection`` + ``Owlv2Processor``) need tokenizers; these are
written from small local vocabulary files (a byte-level BPE vocabulary for the
CLIP-style text encoders, a WordPiece vocabulary for Grounding DINO's BERT),
so nothing comes from the hub. Each ``build_tiny_*`` writes model, processor
and tokenizer into one folder, the layout of the released checkpoints; the
matching ``make_tiny_*`` returns the same model (same seed) in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from napari_segsuite.demo.tiny_models import save_folder, seeded, tiny_transformers

#: Words the tiny tokenizers know as whole tokens (others are spelt letter by letter).
TINY_WORDS = ("cell", "nucleus", "coin", "object", "visual", "dark", "bright", "blob", "disk")


# -- tokenizers -------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (the base alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_clip_vocab(folder: str | os.PathLike, words=TINY_WORDS) -> Path:
    """Write a CLIP-style byte-level BPE vocabulary (``vocab.json`` + ``merges.txt``).

    The vocabulary holds the 256 byte symbols, the same with the end-of-word
    mark ``</w>``, the merges that spell ``words`` as single tokens, then
    ``<|startoftext|>`` and ``<|endoftext|>``.

    Returns
    -------
    Path
        ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
    for s in symbols:
        vocab.setdefault(s + "</w>", len(vocab))
    merges: list[str] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        current = parts[0]
        for nxt in parts[1:]:
            merged = current + nxt
            merge = f"{current} {nxt}"
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(merged, len(vocab))
            current = merged
    vocab.setdefault("<|startoftext|>", len(vocab))
    vocab.setdefault("<|endoftext|>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def make_clip_tokenizer(words=TINY_WORDS, *, max_length: int = 32):
    """A ``CLIPTokenizer`` over the vocabulary of :func:`write_clip_vocab` (written to a temp folder)."""
    import tempfile

    from napari_segsuite.models.offline import import_transformers

    t = import_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        write_clip_vocab(tmp, words)
        tok = t.CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length)
    return tok


def write_bert_vocab(folder: str | os.PathLike, words=TINY_WORDS) -> Path:
    """Write a BERT WordPiece ``vocab.txt``: special tokens, punctuation, letters, pieces and ``words``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", "_", "'", "(", ")", "/"]
    tokens += [str(d) for d in range(10)] + letters + ["##" + c for c in letters] + ["##" + str(d) for d in range(10)]
    tokens += [w for w in words if w not in tokens]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder


def make_bert_tokenizer(words=TINY_WORDS):
    """A ``BertTokenizer`` over the vocabulary of :func:`write_bert_vocab`."""
    import tempfile

    from napari_segsuite.models.offline import import_transformers

    t = import_transformers()
    with tempfile.TemporaryDirectory() as tmp:
        write_bert_vocab(tmp, words)
        tok = t.BertTokenizer.from_pretrained(tmp)
    return tok


def _clip_text(tok, *, hidden: int = 32, max_positions: int = 32, projection: int | None = None) -> dict:
    cfg = {
        "vocab_size": len(tok), "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": max_positions,
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
    }
    if projection is not None:
        cfg["projection_dim"] = projection
    return cfg


# -- SAM 3 ------------------------------------------------------------------------


def tiny_sam3_vit(t, *, image_size: int = 112, patch: int = 14):
    """The tiny SAM 3 ViT backbone shared by the image, tracker and video models."""
    return t.Sam3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch, pretrain_image_size=image_size, window_size=4,
        global_attn_indexes=[1],
    )


def tiny_sam3_config(tok, *, image_size: int = 112):
    """Configuration of a tiny ``Sam3Model`` whose text encoder matches the tokenizer ``tok``."""
    from napari_segsuite.models.offline import import_transformers

    t = import_transformers()
    grid = image_size // 14
    vision = t.Sam3VisionConfig(
        backbone_config=tiny_sam3_vit(t, image_size=image_size), fpn_hidden_size=32,
        scale_factors=[2.0, 1.0, 0.5], backbone_feature_sizes=[[2 * grid] * 2, [grid] * 2, [grid // 2] * 2],
    )
    layer = {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
    return t.Sam3Config(
        vision_config=vision,
        text_config=_clip_text(tok, hidden=32, projection=32),
        geometry_encoder_config={**layer, "num_layers": 1},
        detr_encoder_config={**layer, "num_layers": 1},
        detr_decoder_config={**layer, "num_layers": 1, "num_queries": 10},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2, "num_upsampling_stages": 2},
    )


def make_tiny_sam3(*, image_size: int = 112, seed: int = 0, words=TINY_WORDS):
    """A tiny randomly initialised ``Sam3Model`` and its ``Sam3Processor`` (with tokenizer), in memory.

    Returns
    -------
    model : transformers.Sam3Model
    processor : transformers.Sam3Processor
    """
    t = tiny_transformers()
    tok = make_clip_tokenizer(words)
    config = tiny_sam3_config(tok, image_size=image_size)
    image_processor = t.Sam3ImageProcessor(size={"height": image_size, "width": image_size})
    processor = t.Sam3Processor(image_processor=image_processor, tokenizer=tok)
    return seeded(t.Sam3Model, config, seed), processor


def build_tiny_sam3(folder: str | os.PathLike, **kwargs) -> Path:
    """Write a tiny SAM 3 folder (model, processor and tokenizer files); see :func:`make_tiny_sam3`."""
    return save_folder(folder, *make_tiny_sam3(**kwargs))


# -- Grounding DINO ---------------------------------------------------------------------


def make_tiny_grounding_dino(*, image_size: int = 128, seed: int = 0, words=TINY_WORDS):
    """A tiny ``GroundingDinoForObjectDetection`` (Swin backbone, BERT text encoder) and its processor.

    Returns
    -------
    model : transformers.GroundingDinoForObjectDetection
    processor : transformers.GroundingDinoProcessor
    """
    t = tiny_transformers()
    tok = make_bert_tokenizer(words)
    backbone = t.SwinConfig(
        embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7, image_size=image_size,
        out_indices=[2, 3, 4],
    )
    text = {
        "model_type": "bert", "vocab_size": len(tok), "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64,
        "pad_token_id": tok.pad_token_id,
    }
    config = t.GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_n_points=2, decoder_n_points=2, num_queries=20, max_text_len=32, disable_custom_kernels=True,
        num_feature_levels=4,
    )
    image_processor = t.GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    processor = t.GroundingDinoProcessor(image_processor=image_processor, tokenizer=tok)
    return seeded(t.GroundingDinoForObjectDetection, config, seed), processor


def build_tiny_grounding_dino(folder: str | os.PathLike, **kwargs) -> Path:
    """Write a tiny Grounding DINO folder; see :func:`make_tiny_grounding_dino`."""
    return save_folder(folder, *make_tiny_grounding_dino(**kwargs))


# -- OWLv2 ----------------------------------------------------------------------------------


def make_tiny_owlv2(*, image_size: int = 64, seed: int = 0, words=TINY_WORDS):
    """A tiny ``Owlv2ForObjectDetection`` (CLIP-style text and vision towers) and its processor.

    Returns
    -------
    model : transformers.Owlv2ForObjectDetection
    processor : transformers.Owlv2Processor
    """
    t = tiny_transformers()
    tok = make_clip_tokenizer(words, max_length=16)
    text = _clip_text(tok, hidden=32, max_positions=16)
    vision = {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "image_size": image_size, "patch_size": 16,
    }
    config = t.Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    image_processor = t.Owlv2ImageProcessor(size={"height": image_size, "width": image_size})
    processor = t.Owlv2Processor(image_processor=image_processor, tokenizer=tok)
    return seeded(t.Owlv2ForObjectDetection, config, seed), processor


def build_tiny_owlv2(folder: str | os.PathLike, **kwargs) -> Path:
    """Write a tiny OWLv2 folder; see :func:`make_tiny_owlv2`."""
    return save_folder(folder, *make_tiny_owlv2(**kwargs))
