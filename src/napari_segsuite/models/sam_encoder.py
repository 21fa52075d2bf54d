"""The blocks of segment_anything's ViT image encoder, run with two reused attention buffers.

``Attention.forward`` of ``segment_anything.modeling.image_encoder`` makes four tensors
of the full attention map in every block (scores, scores plus the height and the width
relative positions, softmax). At 1024x1024 a global-attention block's map is 12 heads
times 4096x4096 float32, 805 MB each. Those sizes are above glibc's mmap threshold, so
each one is a fresh mapping that the kernel zero-fills page by page: encoding one plane
with vit_b on the 2-core development machine faulted 3.9 million pages and spent 9.3 s of its
20 s of CPU in the kernel (10.4 s wall); with the buffers below, 0.9 million pages, 1.4 s in
the kernel and 6.4 s wall.

:func:`run_blocks` runs the same operations in the same order, writing the scores and the
softmax into two buffers that live for one encoding (``matmul(out=)``, in-place additions
of the relative positions, ``_softmax.out``); each is made at most twice (at a windowed
block's size, then at a global block's) and every block reuses them. Each element is
the same sum of the same two terms, and the kernels are the ones the library calls, so the
features equal ``SamPredictor.set_image``'s bit for bit (``tests/test_sam_encoder.py``
checks ``torch.equal``). A block of another class (a subclass, another encoder) runs as
the library wrote it.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class AttentionScratch:
    """Two flat buffers that hold an attention map and its softmax, grown on demand."""

    def __init__(self):
        self._buffers = [None, None]

    def take(self, which: int, shape: tuple[int, ...], like):
        """A tensor of ``shape`` (``like``'s dtype and device) over buffer ``which``."""
        import torch

        n = math.prod(int(side) for side in shape)
        buf = self._buffers[which]
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            self._buffers[which] = None  # free the old one before the larger one is made
            buf = self._buffers[which] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def _attention(attn, x, scratch: AttentionScratch):
    """``Attention.forward`` of segment_anything with the map in ``scratch``."""
    import torch
    from segment_anything.modeling.image_encoder import get_rel_pos

    B, H, W, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(B, H * W, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * heads, H * W, -1).unbind(0)
    scores = scratch.take(0, (B * heads, H * W, H * W), q)
    torch.matmul(q * attn.scale, k.transpose(-2, -1), out=scores)
    if attn.use_rel_pos:
        rel_pos_h = get_rel_pos(H, H, attn.rel_pos_h)
        rel_pos_w = get_rel_pos(W, W, attn.rel_pos_w)
        r_q = q.reshape(B * heads, H, W, q.shape[-1])
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_pos_h)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_pos_w)
        grid = scores.view(B * heads, H, W, H, W)
        grid.add_(rel_h[:, :, :, :, None])  # (scores + rel_h) + rel_w, as the library sums them
        grid.add_(rel_w[:, :, :, None, :])
    probs = scratch.take(1, tuple(scores.shape), q)
    torch.ops.aten._softmax.out(scores, -1, False, out=probs)
    out = (probs @ v).view(B, heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return attn.proj(out)


def _block(block, x, scratch: AttentionScratch, between: Callable[[], None] | None):
    """``Block.forward`` of segment_anything with :func:`_attention`; ``between()`` before each half."""
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    if between is not None:
        between()
    shortcut = x
    x = block.norm1(x)
    if block.window_size > 0:
        H, W = x.shape[1], x.shape[2]
        x, pad_hw = window_partition(x, block.window_size)
    x = _attention(block.attn, x, scratch)
    if block.window_size > 0:
        x = window_unpartition(x, block.window_size, pad_hw, (H, W))
    x = shortcut + x
    if between is not None:
        between()
    return x + block.mlp(block.norm2(x))


def plain_blocks(encoder) -> bool:
    """Whether every block of ``encoder`` is segment_anything's own ``Block`` with its ``Attention``.

    A block or attention module with forward hooks does not count: :func:`run_blocks` does not
    call them through ``Module.__call__``, so hooked blocks run as the library runs them.
    """
    try:
        from segment_anything.modeling.image_encoder import Attention, Block
    except ImportError:
        return False
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        return False
    for b in blocks:
        attn = getattr(b, "attn", None)
        if type(b) is not Block or type(attn) is not Attention:
            return False
        if any(m._forward_hooks or m._forward_pre_hooks for m in (b, attn)):
            return False
    return True


def run_blocks(encoder, x, between: Callable[[], None] | None = None):
    """``x`` through the transformer blocks of ``encoder`` (segment_anything's ``ImageEncoderViT``).

    Parameters
    ----------
    encoder : ImageEncoderViT
        Its ``blocks`` must pass :func:`plain_blocks`.
    x : torch.Tensor
        The patch embedding plus position embedding, (B, H, W, C).
    between : callable, optional
        Called before each block's attention half and before its MLP half.

    Returns
    -------
    torch.Tensor
        The output of the last block, equal to the library's.
    """
    scratch = AttentionScratch()
    for block in encoder.blocks:
        x = _block(block, x, scratch, between)
    return x
