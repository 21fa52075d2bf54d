"""Segment Anything (``segment_anything``) behind :class:`~napari_segsuite.models.prompt.PromptModel`.

Prompts go to ``SamPredictor`` unchanged, so for the same plane and prompts
the masks and scores equal the library's. What is added: encoding block by
block (a background prefetch pauses between blocks), lazy upsampling of
preview candidates, the decoder's first-block image side kept with the plane
(:class:`~napari_segsuite.models.sam_decoder.ChunkedMaskDecoder`, the same
numbers bit for bit), batched box prompts through ``predict_torch``, and the
mask source of segment everything.
"""

from __future__ import annotations

import threading

import numpy as np

from napari_segsuite.models.prompt import Embedding, LazyMasks, PromptModel


class SamPromptModel(PromptModel):
    """segment_anything: encoder and decoder through ``SamPredictor``."""

    takes_mask_prompt = True
    title = "SAM"

    def __init__(self, runner):
        super().__init__(runner)
        from segment_anything import SamPredictor

        self._make = lambda: SamPredictor(self.model)
        self.transform = self._make().transform
        self._last = None

    @property
    def input_size(self) -> int:
        """The image encoder's input side (1024 for Meta's checkpoints)."""
        return int(self.model.image_encoder.img_size)

    def encode(self, rgb: np.ndarray, between_blocks=None) -> Embedding:
        """The steps of ``SamPredictor.set_image`` and ``ImageEncoderViT.forward``, block by block.

        No shared predictor is touched, so a background prefetch and foreground
        prompts never interfere; ``between_blocks()`` is called before each
        transformer block's attention and MLP halves (a prefetch waits there while
        prompts are answered). segment_anything's own blocks run through
        :func:`~napari_segsuite.models.sam_encoder.run_blocks` (two reused attention
        buffers, the same features bit for bit); other blocks as the library runs them.
        """
        import torch

        from napari_segsuite.models.sam_encoder import plain_blocks, run_blocks

        model = self.model
        image = rgb if model.image_format == "RGB" else rgb[..., ::-1]
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
        enc = model.image_encoder
        with torch.no_grad():
            x = enc.patch_embed(model.preprocess(tensor))
            if enc.pos_embed is not None:
                x = x + enc.pos_embed
            if plain_blocks(enc):
                x = run_blocks(enc, x, between_blocks)
            else:
                x = self._library_blocks(enc, x, between_blocks)
            features = enc.neck(x.permute(0, 3, 1, 2))
        return Embedding(features, tuple(image.shape[:2]), tuple(tensor.shape[-2:]))

    @staticmethod
    def _library_blocks(enc, x, between_blocks=None):
        """The encoder's blocks as the library runs them, ``between_blocks()`` before each block and each half."""
        hooks = []
        if between_blocks is not None:
            me = threading.get_ident()

            def pause(_module, _args):
                if threading.get_ident() == me:  # another thread's encode of the same model runs on
                    between_blocks()

            for block in enc.blocks:
                for part in (getattr(block, "attn", None), getattr(block, "mlp", None)):
                    if part is not None:
                        hooks.append(part.register_forward_pre_hook(pause))
        try:
            for block in enc.blocks:
                if between_blocks is not None:
                    between_blocks()
                x = block(x)
        finally:
            for hook in hooks:
                hook.remove()
        return x

    def predictor_for(self, emb: Embedding):
        """A ``SamPredictor`` holding ``emb`` (reused while the same embedding is prompted)."""
        cached = self._last
        if cached is not None and cached[0] is emb:
            return cached[1]
        p = self._make()
        p.features = emb.features
        p.original_size = emb.original_size
        p.input_size = emb.input_size
        p.is_image_set = True
        self._last = (emb, p)
        return p

    def predict(self, emb, coords_xy, labels, box_xyxy, mask_input, multimask, lazy=False):
        if not lazy:
            masks, scores, _ = self.predictor_for(emb).predict(
                point_coords=coords_xy, point_labels=labels, box=box_xyxy, mask_input=mask_input,
                multimask_output=multimask,
            )
            return masks.astype(bool), scores.astype(np.float32)
        return self._predict_lazy(emb, coords_xy, labels, box_xyxy, mask_input, multimask)

    def _predict_lazy(self, emb, coords_xy, labels, box_xyxy, mask_input, multimask):
        """``SamPredictor.predict`` up to the low-resolution logits; masks upsampled on demand.

        The prompt transforms, encoder and decoder calls are ``SamPredictor``'s
        own; ``postprocess_masks`` and the threshold run per candidate, which
        gives the same pixels as running them on all candidates at once.
        """
        import torch

        from napari_segsuite.models.sam_decoder import ChunkedMaskDecoder, postprocess_masks

        p = self.predictor_for(emb)
        model = self.model
        coords_t = labels_t = box_t = mask_t = None
        if coords_xy is not None:
            coords_t = torch.as_tensor(p.transform.apply_coords(coords_xy, p.original_size), dtype=torch.float,
                                       device=p.device)[None, :, :]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=p.device)[None, :]
        if box_xyxy is not None:
            box_t = torch.as_tensor(p.transform.apply_boxes(box_xyxy, p.original_size), dtype=torch.float,
                                    device=p.device)[None, :]
        if mask_input is not None:
            mask_t = torch.as_tensor(mask_input, dtype=torch.float, device=p.device)[None, :, :, :]
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(
                points=(coords_t, labels_t) if coords_t is not None else None, boxes=box_t, masks=mask_t,
            )
            if mask_t is None:
                # The decoder's first-block image side depends on the plane alone: computed at
                # the first prompt, kept with the embedding (the same numbers, bit for bit).
                decoder = ChunkedMaskDecoder(model)
                if emb.decoder_cache is None:
                    emb.decoder_cache = decoder.shared(p.features, dense)
                decoded = decoder(p.features, sparse, dense, multimask, shared=emb.decoder_cache)
                low_res, iou = decoded.all_low_res_masks(), decoded.iou
            else:
                low_res, iou = model.mask_decoder(
                    image_embeddings=p.features, image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
                )
        input_size, original_size = tuple(p.input_size), tuple(p.original_size)

        def upsample(i: int) -> np.ndarray:
            with torch.no_grad():
                up = postprocess_masks(model, low_res[:, i: i + 1], input_size, original_size)
                return (up > model.mask_threshold)[0, 0].detach().cpu().numpy()

        scores = iou[0].detach().cpu().numpy().astype(np.float32)
        return LazyMasks(int(low_res.shape[1]), tuple(original_size), upsample), scores

    def predict_boxes(self, emb, boxes_xyxy):
        """All boxes in one decoder pass: ``SamPredictor.predict_torch`` with boxes transformed
        by the predictor's own ``transform.apply_boxes_torch`` (single-mask output), as
        segment_anything's batched-prompt example does."""
        import torch

        p = self.predictor_for(emb)
        t = torch.as_tensor(boxes_xyxy, dtype=torch.float, device=p.device)
        t = p.transform.apply_boxes_torch(t, tuple(emb.original_size))
        with torch.inference_mode():
            masks, scores, _ = p.predict_torch(
                point_coords=None, point_labels=None, boxes=t, multimask_output=False,
            )
        return masks[:, 0].cpu().numpy().astype(bool), scores[:, 0].cpu().numpy().astype(np.float32)

    def mask_prompt(self, emb: Embedding, mask: np.ndarray) -> np.ndarray:
        """The mask resized like the image, padded, and scaled to SAM's low-resolution logits."""
        import torch
        import torch.nn.functional as F

        resized = self.transform.apply_image((mask.astype(np.uint8) * 255)[..., None].repeat(3, -1))[..., 0]
        size = self.model.image_encoder.img_size
        padded = np.zeros((size, size), np.float32)
        padded[: resized.shape[0], : resized.shape[1]] = resized > 127
        low = self.model.prompt_encoder.mask_input_size
        t = F.interpolate(torch.from_numpy(padded)[None, None], size=low, mode="bilinear", align_corners=False)
        return ((t[0].numpy() - 0.5) * 20.0).astype(np.float32)

    def mask_source(self) -> SamMaskSource:
        return SamMaskSource(self)


class SamMaskSource:
    """segment_anything for segment everything: the decoder calls ``SamPredictor.predict_torch``
    makes, split in two (IoU first, logits on request)."""

    def __init__(self, prompt_model: SamPromptModel):
        from segment_anything.utils.transforms import ResizeLongestSide

        self.prompt_model = prompt_model
        self.model = prompt_model.model
        self.device = prompt_model.device
        self.mask_threshold = float(self.model.mask_threshold)
        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)

    def encode(self, rgb: np.ndarray) -> Embedding:
        return self.prompt_model.encode(rgb)

    def decode(self, emb, points_xy: np.ndarray):
        """Single positive points decoded: predicted IoU (N, 3) now, low-resolution logits on request.

        The decoder is :class:`~napari_segsuite.models.sam_decoder.ChunkedMaskDecoder`:
        the numbers of ``SamPredictor.predict_torch``, bit for bit, with the
        output upscaling only for the prompts whose masks are asked for.
        """
        import torch

        from napari_segsuite.models.sam_decoder import ChunkedMaskDecoder

        pts = self.transform.apply_coords(points_xy, emb.original_size)
        in_points = torch.as_tensor(pts, device=self.device)
        in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=self.device)
        sparse, dense = self.model.prompt_encoder(points=(in_points[:, None, :], in_labels[:, None]),
                                                  boxes=None, masks=None)
        return ChunkedMaskDecoder(self.model)(emb.features, sparse, dense, multimask_output=True)

    def upscale(self, emb, low):
        """Logits (M, H, W) at the crop's size from low-resolution logits (M, h, w)."""
        from napari_segsuite.models.sam_decoder import postprocess_masks

        return postprocess_masks(self.model, low[:, None], emb.input_size, emb.original_size)[:, 0]
