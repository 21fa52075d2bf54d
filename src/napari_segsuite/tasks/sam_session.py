"""Promptable Segment Anything sessions with a cache of image embeddings.

:class:`SamSession` wraps ``segment_anything.SamPredictor``: prompts go to the
predictor unchanged, so for the same image and prompts the masks and scores
equal the library's. What it adds is napari's conventions (points as
``(row, col)``, boxes as ``(row0, col0, row1, col1)``), checks that turn bad
prompts into clear errors, and an embedding cache (bounded, least recently
used) keyed by the image's content and the model, so prompts on an image seen
before never run the encoder again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import image_signature, prepare_rgb_uint8
from napari_segsuite.core.progress import Progress, run_sync


@dataclass
class Embedding:
    """What SAM's predictor keeps after encoding one image."""

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamSession:
    """Encode an image once, then predict masks from prompts.

    Parameters
    ----------
    model : str, path or Runner
        A SAM registry name, a SAM-format checkpoint, or a loaded ``SamRunner``.
    device : str
        "auto", "cpu", "cuda" or "mps".
    cache_size : int
        How many image embeddings to keep in memory.
    """

    def __init__(self, model, device: str = "auto", cache_size: int = 8, store=None):
        from segment_anything import SamPredictor

        from napari_segsuite.models.base import load_model

        self.runner = load_model(model, device, store=store)
        if self.runner.family != "sam":
            raise InputError(
                f"SamSession needs a Segment Anything model; '{self.runner.name}' is {self.runner.family}."
            )
        self.predictor = SamPredictor(self.runner.model)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Embedding] = OrderedDict()
        self.image_key: str | None = None
        self.image_shape: tuple[int, int] | None = None
        self.encoder_runs = 0

    # -- images ---------------------------------------------------------------------
    def _key(self, rgb: np.ndarray) -> str:
        return f"{self.runner.source.path}:{self.runner.source.sha256}:{image_signature(rgb)}"

    def set_image_job(self, image2d: np.ndarray) -> Generator[Progress, None, str]:
        """Encode ``image2d`` (or take its embedding from the cache) as a job; returns the cache key."""
        rgb = prepare_rgb_uint8(image2d)
        key = self._key(rgb)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._restore(cached)
            yield Progress(1, 1, "Embedding from cache")
        else:
            yield Progress(0, 1, "Encoding image")
            self.predictor.set_image(rgb)
            self.encoder_runs += 1
            p = self.predictor
            self._cache[key] = Embedding(p.features, tuple(p.original_size), tuple(p.input_size))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            yield Progress(1, 1, "Image encoded")
        self.image_key = key
        self.image_shape = tuple(rgb.shape[:2])
        return key

    def set_image(self, image2d: np.ndarray) -> None:
        """Encode ``image2d`` (H, W) or (H, W, C) of any dtype, using the cache when possible."""
        run_sync(self.set_image_job(image2d))

    def _restore(self, emb: Embedding) -> None:
        p = self.predictor
        p.reset_image()
        p.features = emb.features
        p.original_size = emb.original_size
        p.input_size = emb.input_size
        p.is_image_set = True

    def is_cached(self, image2d: np.ndarray) -> bool:
        """Whether ``image2d``'s embedding is in the cache."""
        return self._key(prepare_rgb_uint8(image2d)) in self._cache

    # -- prompts --------------------------------------------------------------------
    def predict(
        self,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        multimask: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks for the prompts on the current image.

        Parameters
        ----------
        points : (N, 2) array, optional
            (row, col) in image pixels.
        point_labels : (N,) array, optional
            1 positive, 0 negative (default: all positive).
        box : (4,) array, optional
            (row0, col0, row1, col1).
        mask : (H, W) bool array, optional
            An existing mask to refine (turned into SAM's low-resolution mask prompt).
        multimask : bool
            Three candidates (True) or one.

        Returns
        -------
        masks : (N, H, W) bool
        scores : (N,) float32, the predicted IoU of each mask
        """
        if self.image_shape is None:
            raise InputError("Set an image before prompting.")
        h, w = self.image_shape
        coords = labels = None
        if points is not None and len(points):
            pts = np.asarray(points, dtype=float).reshape(-1, 2)
            outside = (pts[:, 0] < 0) | (pts[:, 0] > h - 1) | (pts[:, 1] < 0) | (pts[:, 1] > w - 1)
            if outside.any():
                raise InputError(
                    f"{int(outside.sum())} point(s) lie outside the {h}x{w} image; move them onto the image."
                )
            coords = pts[:, ::-1].copy()
            labels = np.ones(len(pts), dtype=int) if point_labels is None else np.asarray(point_labels, dtype=int)
            if labels.shape != (len(pts),) or not np.isin(labels, (0, 1)).all():
                raise InputError("point_labels must hold one 0 (negative) or 1 (positive) per point.")
        sam_box = None
        if box is not None:
            r0, c0, r1, c1 = (float(v) for v in np.asarray(box, dtype=float).ravel()[:4])
            r0, r1 = sorted((max(0.0, r0), min(h - 1.0, r1)))
            c0, c1 = sorted((max(0.0, c0), min(w - 1.0, c1)))
            if r1 - r0 < 1 or c1 - c0 < 1:
                raise InputError("The box has no area inside the image; draw a larger box.")
            sam_box = np.array([c0, r0, c1, r1])
        mask_input = None if mask is None else self.mask_prompt(mask)
        if coords is None and sam_box is None and mask_input is None:
            raise InputError("There is no prompt: add a point or a box first.")
        masks, scores, _ = self.predictor.predict(
            point_coords=coords, point_labels=labels, box=sam_box, mask_input=mask_input,
            multimask_output=multimask,
        )
        return masks.astype(bool), scores.astype(np.float32)

    def mask_prompt(self, mask: np.ndarray) -> np.ndarray:
        """An image-sized mask as SAM's low-resolution logits prompt ((1, 256, 256) for 1024-pixel models)."""
        import torch
        import torch.nn.functional as F

        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.image_shape:
            raise InputError(f"The mask prompt has shape {mask.shape}, the image {self.image_shape}.")
        p = self.predictor
        resized = p.transform.apply_image((mask.astype(np.uint8) * 255)[..., None].repeat(3, -1))[..., 0]
        size = p.model.image_encoder.img_size
        padded = np.zeros((size, size), np.float32)
        padded[: resized.shape[0], : resized.shape[1]] = resized > 127
        low = p.model.prompt_encoder.mask_input_size
        t = F.interpolate(torch.from_numpy(padded)[None, None], size=low, mode="bilinear", align_corners=False)
        return ((t[0].numpy() - 0.5) * 20.0).astype(np.float32)

    # -- batches of boxes (issue 7: detector + SAM) ----------------------------------
    def predict_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One mask per box, for a batch of boxes, in one pass of the mask decoder.

        Uses ``SamPredictor.predict_torch`` with the boxes transformed by the
        predictor's own ``transform.apply_boxes_torch`` (single-mask output), as
        segment_anything's batched-prompt example does.

        Parameters
        ----------
        boxes : (N, 4) array
            (row0, col0, row1, col1) in image pixels; clipped to the image.

        Returns
        -------
        masks : (N, H, W) bool
        scores : (N,) float32, SAM's predicted IoU of each mask
        """
        import torch

        if self.image_shape is None:
            raise InputError("Set an image before prompting.")
        h, w = self.image_shape
        rc = np.asarray(boxes, dtype=float).reshape(-1, 4)
        if len(rc) == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        r0 = np.clip(np.minimum(rc[:, 0], rc[:, 2]), 0, h - 1)
        r1 = np.clip(np.maximum(rc[:, 0], rc[:, 2]), 0, h - 1)
        c0 = np.clip(np.minimum(rc[:, 1], rc[:, 3]), 0, w - 1)
        c1 = np.clip(np.maximum(rc[:, 1], rc[:, 3]), 0, w - 1)
        xyxy = np.stack([c0, r0, c1, r1], axis=1)
        p = self.predictor
        t = torch.as_tensor(xyxy, dtype=torch.float, device=p.device)
        t = p.transform.apply_boxes_torch(t, self.image_shape)
        with torch.inference_mode():
            masks, scores, _ = p.predict_torch(
                point_coords=None, point_labels=None, boxes=t, multimask_output=False,
            )
        return masks[:, 0].cpu().numpy().astype(bool), scores[:, 0].cpu().numpy().astype(np.float32)
