"""SAM's mask decoder for many single-prompt batches, rearranged for a CPU.

``segment_anything``'s ``MaskDecoder`` copies the image embedding once per
prompt and runs its two-way transformer on the whole batch at once: for 64
prompts every image-side tensor is 64 x 4096 x 256 floats (268 MB), so the
decoder spends most of its time streaming memory (copies, additions, layer
norms) rather than multiplying. "Segment everything" runs it for every point
of a grid, which makes it the bulk of the work.

:class:`ChunkedMaskDecoder` computes the same numbers with the same
operations, arranged differently:

- the transformer runs on a few prompts at a time, so its image-side tensors
  stay in the CPU caches;
- in the first block the image side is the same for every prompt (the image
  embedding plus the "no mask" embedding) until the image attends to the
  tokens, so its projections are computed once and shared;
- the small heads (IoU head and hypernetworks) run on the whole batch exactly
  as the library runs them;
- the output upscaling (two transposed convolutions) runs only for the
  prompts whose masks are asked for, typically the few whose predicted IoU
  passes the generator's first filter.

Every operation is the library's own module or the same tensor operation on
the same values; the equality with ``MaskDecoder`` is checked bit for bit in
the tests (the operations used here give the same result for a row whatever
the batch around it, which the tests also pin down).
"""

from __future__ import annotations

import math

import numpy as np

#: Prompts per transformer chunk (4 x 4096 x 256 floats = 16 MB per tensor).
TRANSFORMER_CHUNK = 4


def _heads(x, n: int):
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _recombine(x):
    b, n, t, c = x.shape
    return x.transpose(1, 2).reshape(b, t, n * c)


def _context(qh, kh, vh):
    """``Attention.forward`` between the projections: heads in, recombined heads out."""
    import torch

    scores = qh @ kh.permute(0, 1, 3, 2)
    scores = scores / math.sqrt(qh.shape[-1])
    scores = torch.softmax(scores, dim=-1)
    return _recombine(scores @ vh)


def postprocess_masks(sam, low, input_size, original_size):
    """``Sam.postprocess_masks``: logits (B, K, h, w) to the image's size, the same numbers.

    Its second resize (from the padded input's crop back to the image) is
    skipped when it would keep the size: a bilinear resize to the same size
    returns its input unchanged, so only the time differs (a 1024 x 1024 image
    is one such case for every SAM).
    """
    import torch.nn.functional as F

    side = sam.image_encoder.img_size
    up = F.interpolate(low, (side, side), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    if tuple(input_size) != tuple(original_size):
        up = F.interpolate(up, tuple(original_size), mode="bilinear", align_corners=False)
    return up


def _chunks(n: int, size: int) -> list[slice]:
    """Slices of ``range(n)`` of about ``size`` prompts, none of one prompt unless ``n == 1``.

    A batch of one takes other matrix-product kernels than a larger batch on
    some CPUs (other rounding), so a lone prompt is decoded with a neighbour:
    a trailing single prompt joins the chunk before it, and chunks hold at
    least two prompts.
    """
    size = max(2, size)
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(s, e) for s, e in zip(starts, [*starts[1:], n], strict=True)]


class DecodedBatch:
    """One batch of single-prompt decodes: IoU predictions now, masks on request.

    Attributes
    ----------
    iou : Tensor (B, K)
        Predicted IoU of the K returned candidates of each prompt (K = 3 with
        multimask output, like ``MaskDecoder.forward``).
    """

    def __init__(self, decoder, keys, hyper_in, iou, mask_slice, size):
        self._decoder = decoder
        self._keys = keys  # chunks of the transformer's image-side output, (b, HW, C) each
        self._n = sum(k.shape[0] for k in keys)
        self._starts = np.cumsum([0] + [k.shape[0] for k in keys])
        self._hyper_in = hyper_in  # (B, T, c)
        self._slice = mask_slice
        self._size = size
        self.iou = iou

    def low_res_masks(self, prompt_index):
        """Low-resolution mask logits (M, K, 4h, 4w) of the prompts ``prompt_index``."""
        import torch

        idx = np.asarray(prompt_index, dtype=np.int64).reshape(-1)
        if len(idx) == 1 and self._n > 1:
            # A batch of one takes another convolution path than a larger batch (other
            # rounding): decode it twice, as part of a batch, like the library would.
            return self.low_res_masks(np.repeat(idx, 2))[:1]
        chunk = np.searchsorted(self._starts, idx, side="right") - 1
        keys = torch.stack([self._keys[c][i - self._starts[c]] for c, i in zip(chunk, idx, strict=True)])
        idx = torch.as_tensor(idx)
        h, w = self._size
        b, _, c = keys.shape
        src = keys.transpose(1, 2).view(b, c, h, w)
        up = self._decoder.output_upscaling(src)
        b, c, uh, uw = up.shape
        masks = (self._hyper_in[idx] @ up.view(b, c, uh * uw)).view(b, -1, uh, uw)
        return masks[:, self._slice]

    def all_low_res_masks(self):
        """Every prompt's low-resolution logits (what ``MaskDecoder.forward`` returns)."""
        return self.low_res_masks(np.arange(self._n))


class ChunkedMaskDecoder:
    """``MaskDecoder.forward`` for prompts without a mask prompt, in chunks.

    Parameters
    ----------
    sam : segment_anything.modeling.Sam
    chunk : int
        Prompts per transformer chunk (at least 2; see :func:`_chunks`).
    """

    def __init__(self, sam, chunk: int = TRANSFORMER_CHUNK):
        self.sam = sam
        self.decoder = sam.mask_decoder
        self.chunk = max(1, int(chunk))

    def shared(self, image_embeddings, dense) -> dict:
        """The first block's image side, the same for every prompt without a mask prompt.

        It depends on the image embedding alone (plus the "no mask" embedding),
        so a caller decoding many prompts on one image may keep it and pass it
        to each call.
        """
        tf = self.decoder.transformer
        src = image_embeddings + dense[:1]
        keys0 = src.flatten(2).permute(0, 2, 1)
        key_pe = self.sam.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)
        first = tf.layers[0]
        k_in = keys0 + key_pe
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        return {
            "keys0": keys0,
            "key_pe": key_pe,
            "t2i_k": _heads(t2i.k_proj(k_in), t2i.num_heads),
            "t2i_v": _heads(t2i.v_proj(keys0), t2i.num_heads),
            "i2t_q": _heads(i2t.q_proj(k_in), i2t.num_heads),
        }

    def __call__(self, image_embeddings, sparse, dense, multimask_output: bool = True,
                 shared: dict | None = None) -> DecodedBatch:
        """Decode a batch; arguments as for ``MaskDecoder.forward`` with one image.

        ``dense`` must be the same for every prompt (no mask prompts), which is
        what lets the first block share its image side; ``shared`` is that
        image side from :meth:`shared` (computed here when not given).
        """
        import torch

        dec = self.decoder
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        out_tokens = out_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
        tokens = torch.cat((out_tokens, sparse), dim=1)
        h, w = image_embeddings.shape[-2:]
        # Without mask prompts the prompt encoder gives one embedding expanded over the batch
        # (stride 0): cheap to recognise; anything else is compared in full.
        if dense.shape[0] > 1 and dense.stride(0) != 0 and not bool((dense == dense[:1]).all()):
            raise ValueError("ChunkedMaskDecoder needs the same dense embedding for every prompt.")
        if shared is None:
            shared = self.shared(image_embeddings, dense)
        keys0, key_pe = shared["keys0"], shared["key_pe"]
        hs, keys = self._transformer(tokens, keys0, key_pe, shared)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + dec.num_mask_tokens), :]
        hyper_in = torch.stack(
            [dec.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in range(dec.num_mask_tokens)],
            dim=1,
        )
        iou = dec.iou_prediction_head(iou_token_out)
        mask_slice = slice(1, None) if multimask_output else slice(0, 1)
        return DecodedBatch(dec, keys, hyper_in, iou[:, mask_slice], mask_slice, (h, w))

    def _transformer(self, point_embedding, keys0, key_pe, shared):
        """``TwoWayTransformer.forward``: token side on the whole batch, image side in chunks.

        The token-side operations (every projection of the few prompt tokens,
        the MLPs, the norms) see the whole batch, as in the library; only the
        image side (projections of the 4096 image tokens, the attention
        products, ``norm4``) runs chunk by chunk, and the first block's image
        side is computed once. Each chunk carries its image tokens from the
        image-to-token attention of one block straight into the token-to-image
        attention of the next, while they are in the cache.
        """
        import torch

        tf = self.decoder.transformer
        n = point_embedding.shape[0]
        chunks = _chunks(n, self.chunk)
        keys = [None] * len(chunks)  # None: still the shared first-block keys
        queries = point_embedding
        pending = None  # the previous block's image-to-token attention, waiting for the image side
        layers = list(tf.layers)
        for layer in [*layers, None]:
            if layer is not None:
                if layer.skip_first_layer_pe:
                    queries = layer.self_attn(q=queries, k=queries, v=queries)
                else:
                    q = queries + point_embedding
                    queries = queries + layer.self_attn(q=q, k=q, v=queries)
                queries = layer.norm1(queries)
                t2i = layer.cross_attn_token_to_image
            else:
                t2i = tf.final_attn_token_to_image
            q_tokens = _heads(t2i.q_proj(queries + point_embedding), t2i.num_heads)
            ctx = []
            for c, sl in enumerate(chunks):
                if pending is not None:
                    keys[c] = self._image_to_token(pending, sl, keys[c], keys0, key_pe, shared)
                b = sl.stop - sl.start
                if keys[c] is None:
                    kh = shared["t2i_k"].expand(b, -1, -1, -1)
                    vh = shared["t2i_v"].expand(b, -1, -1, -1)
                else:
                    kh = _heads(t2i.k_proj(keys[c] + key_pe), t2i.num_heads)
                    vh = _heads(t2i.v_proj(keys[c]), t2i.num_heads)
                ctx.append(_context(q_tokens[sl], kh, vh))
            out = t2i.out_proj(torch.cat(ctx))
            if layer is None:
                queries = tf.norm_final_attn(queries + out)
                break
            queries = layer.norm2(queries + out)
            queries = layer.norm3(queries + layer.mlp(queries))
            i2t = layer.cross_attn_image_to_token
            q = queries + point_embedding
            pending = (layer, _heads(i2t.k_proj(q), i2t.num_heads), _heads(i2t.v_proj(queries), i2t.num_heads))
        return queries, keys

    @staticmethod
    def _image_to_token(pending, sl, keys, keys0, key_pe, shared):
        """One chunk's image tokens attending to its prompts' tokens, then ``norm4``."""
        layer, kh_all, vh_all = pending
        i2t = layer.cross_attn_image_to_token
        b = sl.stop - sl.start
        if keys is None:
            qh = shared["i2t_q"].expand(b, -1, -1, -1)
            base = keys0
        else:
            qh = _heads(i2t.q_proj(keys + key_pe), i2t.num_heads)
            base = keys
        return layer.norm4(base + i2t.out_proj(_context(qh, kh_all[sl], vh_all[sl])))
