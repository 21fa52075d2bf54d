"""Promptable Segment Anything sessions with a cache of image embeddings.

:class:`SamSession` serves SAM (``segment_anything``; prompts go to
``SamPredictor`` unchanged, so for the same image and prompts the masks and
scores equal the library's) and SAM 2.1 (``transformers``' ``Sam2Model`` and
``Sam2Processor``, used the way their documentation shows). What it adds is napari's conventions (points as
``(row, col)``, boxes as ``(row0, col0, row1, col1)``), checks that turn bad
prompts into clear errors, and an embedding cache (bounded, least recently
used) keyed by the image's content and the model, so prompts on an image seen
before never run the encoder again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import image_signature, prepare_rgb_uint8
from napari_segsuite.core.progress import Progress, run_sync


@dataclass
class Embedding:
    """An encoded image: the encoder's output and the sizes needed to decode prompts."""

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class _SamBackend:
    """segment_anything: encoder and decoder through ``SamPredictor``."""

    def __init__(self, runner):
        from segment_anything import SamPredictor

        self.runner = runner
        self.model = runner.model
        self._make = lambda: SamPredictor(self.model)
        self.transform = self._make().transform

    def encode(self, rgb: np.ndarray, between_blocks=None) -> Embedding:
        """The steps of ``SamPredictor.set_image`` and ``ImageEncoderViT.forward``, block by block.

        No shared predictor is touched, so a background prefetch and foreground
        prompts never interfere; ``between_blocks()`` is called before each
        transformer block (a prefetch waits there while prompts are answered).
        """
        import torch

        model = self.model
        image = rgb if model.image_format == "RGB" else rgb[..., ::-1]
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
        with torch.no_grad():
            enc = model.image_encoder
            x = enc.patch_embed(model.preprocess(tensor))
            if enc.pos_embed is not None:
                x = x + enc.pos_embed
            for block in enc.blocks:
                if between_blocks is not None:
                    between_blocks()
                x = block(x)
            features = enc.neck(x.permute(0, 3, 1, 2))
        return Embedding(features, tuple(image.shape[:2]), tuple(tensor.shape[-2:]))

    def predictor_for(self, emb: Embedding):
        """A predictor holding ``emb`` (reused while the same embedding is prompted)."""
        cached = getattr(self, "_last", None)
        if cached is not None and cached[0] is emb:
            return cached[1]
        p = self._make()
        p.features = emb.features
        p.original_size = emb.original_size
        p.input_size = emb.input_size
        p.is_image_set = True
        self._last = (emb, p)
        return p

    def predict(self, emb, coords_xy, labels, box_xyxy, mask_input, multimask):
        masks, scores, _ = self.predictor_for(emb).predict(
            point_coords=coords_xy, point_labels=labels, box=box_xyxy, mask_input=mask_input,
            multimask_output=multimask,
        )
        return masks.astype(bool), scores.astype(np.float32)

    def mask_prompt(self, emb: Embedding, mask: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        resized = self.transform.apply_image((mask.astype(np.uint8) * 255)[..., None].repeat(3, -1))[..., 0]
        size = self.model.image_encoder.img_size
        padded = np.zeros((size, size), np.float32)
        padded[: resized.shape[0], : resized.shape[1]] = resized > 127
        low = self.model.prompt_encoder.mask_input_size
        t = F.interpolate(torch.from_numpy(padded)[None, None], size=low, mode="bilinear", align_corners=False)
        return ((t[0].numpy() - 0.5) * 20.0).astype(np.float32)


class _Sam2Backend:
    """SAM 2.1 through transformers: ``get_image_embeddings`` once, then prompt decoding."""

    def __init__(self, runner):
        self.runner = runner
        self.model = runner.model
        self.processor = runner.processor

    def encode(self, rgb: np.ndarray, between_blocks=None) -> Embedding:
        import torch

        if between_blocks is not None:
            between_blocks()
        inputs = self.processor(images=rgb, return_tensors="pt")
        with torch.no_grad():
            feats = self.model.get_image_embeddings(inputs["pixel_values"].to(self.runner.device))
        size = tuple(int(v) for v in inputs["pixel_values"].shape[-2:])
        return Embedding(feats, tuple(rgb.shape[:2]), size)

    def predict(self, emb, coords_xy, labels, box_xyxy, mask_input, multimask):
        import torch

        if mask_input is not None:
            raise InputError("Mask prompts need a SAM (segment-anything) model; SAM 2.1 takes points and boxes.")
        kwargs: dict = {"original_sizes": [list(emb.original_size)], "return_tensors": "pt"}
        if coords_xy is not None:
            kwargs["input_points"] = [[coords_xy.tolist()]]
            kwargs["input_labels"] = [[labels.tolist()]]
        if box_xyxy is not None:
            kwargs["input_boxes"] = [[box_xyxy.tolist()]]
        inputs = self.processor(**kwargs)
        model_inputs = {k: inputs[k].to(self.runner.device) for k in ("input_points", "input_labels", "input_boxes") if k in inputs}
        with torch.no_grad():
            out = self.model(image_embeddings=emb.features, multimask_output=multimask, **model_inputs)
        masks = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"])[0][0]
        scores = out.iou_scores[0, 0].float().cpu().numpy()
        return masks.numpy().astype(bool), scores.astype(np.float32)

    def mask_prompt(self, emb, mask):
        raise InputError("Mask prompts need a SAM (segment-anything) model; SAM 2.1 takes points and boxes.")


class SamSession:
    """Encode an image once, then predict masks from prompts.

    Parameters
    ----------
    model : str, path or Runner
        A SAM or SAM 2.1 registry name, a checkpoint file or folder, or a loaded runner.
    device : str
        "auto", "cpu", "cuda" or "mps".
    cache_size : int
        How many image embeddings to keep in memory (least recently used go first).
    disk_cache : path, optional
        A folder where embeddings are also saved; a file is used again only when
        the image content and the model checkpoint are the same.
    """

    def __init__(self, model, device: str = "auto", cache_size: int = 8, store=None, disk_cache=None):
        from napari_segsuite.models.base import load_model

        self.runner = load_model(model, device, store=store)
        if self.runner.family == "sam":
            self.backend = _SamBackend(self.runner)
        elif self.runner.family == "sam2":
            self.backend = _Sam2Backend(self.runner)
        else:
            raise InputError(
                f"SamSession needs a Segment Anything model (SAM or SAM 2.1); '{self.runner.name}' is "
                f"{self.runner.family}."
            )
        self.cache_size = cache_size
        self.disk_cache = Path(disk_cache) if disk_cache else None
        self._prompt_lock = threading.Condition()
        self._prompting = 0
        self._last_prompt = 0.0
        self._cache: OrderedDict[str, Embedding] = OrderedDict()
        self.current: Embedding | None = None
        self.image_key: str | None = None
        self.image_shape: tuple[int, int] | None = None
        self.encoder_runs = 0

    # -- images ---------------------------------------------------------------------
    def _model_id(self) -> str:
        src = self.runner.source
        return f"{src.family}:{src.path}:{src.sha256 or ''}"

    def key_for(self, image2d: np.ndarray) -> str:
        """The cache key of ``image2d`` for this model."""
        import hashlib

        rgb = prepare_rgb_uint8(image2d)
        model = hashlib.blake2b(self._model_id().encode(), digest_size=8).hexdigest()
        return f"{model}-{image_signature(rgb)}"

    #: a background encode stays paused this long after the last prompt
    PROMPT_QUIET_S = 0.3

    @contextlib.contextmanager
    def prompting(self):
        """Mark prompt decoding: background encodes pause between encoder blocks meanwhile."""
        with self._prompt_lock:
            self._prompting += 1
        try:
            yield
        finally:
            with self._prompt_lock:
                self._prompting -= 1
                self._last_prompt = time.monotonic()
                self._prompt_lock.notify_all()

    def _yield_to_prompts(self) -> None:
        with self._prompt_lock:
            while True:
                quiet = time.monotonic() - self._last_prompt
                if self._prompting == 0 and quiet >= self.PROMPT_QUIET_S:
                    return
                self._prompt_lock.wait(timeout=max(0.01, self.PROMPT_QUIET_S - quiet))

    def encode_job(self, image2d: np.ndarray, *, background: bool = False) -> Generator[Progress, None, str]:
        """Encode ``image2d`` into the cache (no prompt state changes); returns the key.

        Safe to run in a background thread while prompts are answered on
        another image. With ``background=True`` (prefetch of the next planes)
        the encoder pauses between its blocks while prompts are being decoded,
        so prompts keep their speed.
        """
        rgb = prepare_rgb_uint8(image2d)
        key = self.key_for(rgb)
        if key in self._cache:
            self._cache.move_to_end(key)
            yield Progress(1, 1, "Embedding from cache")
            return key
        emb = self._load_disk(key)
        if emb is None:
            yield Progress(0, 1, "Encoding image")
            emb = self.backend.encode(rgb, self._yield_to_prompts if background else None)
            self.encoder_runs += 1
            self._save_disk(key, emb)
        self._cache[key] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        yield Progress(1, 1, "Image encoded")
        return key

    def set_image_job(self, image2d: np.ndarray) -> Generator[Progress, None, str]:
        """Make ``image2d`` the image prompts refer to (encoding it if needed), as a job."""
        key = yield from self.encode_job(image2d)
        self.current = self._cache[key]
        self.image_key = key
        self.image_shape = tuple(np.asarray(image2d).shape[:2])
        return key

    def set_image(self, image2d: np.ndarray) -> None:
        """Encode ``image2d`` (H, W) or (H, W, C) of any dtype, using the cache when possible."""
        run_sync(self.set_image_job(image2d))

    def is_cached(self, image2d: np.ndarray) -> bool:
        """Whether ``image2d``'s embedding is in the memory cache."""
        return self.key_for(image2d) in self._cache

    def _disk_path(self, key: str) -> Path | None:
        return self.disk_cache / f"{key}.pt" if self.disk_cache else None

    def _load_disk(self, key: str) -> Embedding | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        import torch

        try:
            data = torch.load(path, map_location=self.runner.device, weights_only=True)
            return Embedding(data["features"], tuple(data["original_size"]), tuple(data["input_size"]))
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None

    def _save_disk(self, key: str, emb: Embedding) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        import os
        import tempfile

        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
        os.close(fd)
        torch.save({"features": emb.features, "original_size": list(emb.original_size),
                    "input_size": list(emb.input_size)}, tmp)
        os.replace(tmp, path)

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
            An existing mask to refine (SAM's low-resolution mask prompt; SAM only).
        multimask : bool
            Three candidates (True) or one.

        Returns
        -------
        masks : (N, H, W) bool
        scores : (N,) float32, the predicted IoU of each mask
        """
        if self.current is None or self.image_shape is None:
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
        with self.prompting():
            return self.backend.predict(self.current, coords, labels, sam_box, mask_input, multimask)

    def mask_prompt(self, mask: np.ndarray) -> np.ndarray:
        """An image-sized mask as SAM's low-resolution logits prompt ((1, 256, 256) for 1024-pixel models)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.image_shape:
            raise InputError(f"The mask prompt has shape {mask.shape}, the image {self.image_shape}.")
        return self.backend.mask_prompt(self.current, mask)

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

        if self.current is None or self.image_shape is None:
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
        if not isinstance(self.backend, _SamBackend):  # SAM 2.1: one decoder pass per box
            with self.prompting():
                results = [self.backend.predict(self.current, None, None, b, None, False) for b in xyxy]
            return (np.stack([m[0] for m, _ in results]), np.array([sc[0] for _, sc in results], np.float32))
        p = self.backend.predictor_for(self.current)
        t = torch.as_tensor(xyxy, dtype=torch.float, device=p.device)
        t = p.transform.apply_boxes_torch(t, self.image_shape)
        with self.prompting(), torch.inference_mode():
            masks, scores, _ = p.predict_torch(
                point_coords=None, point_labels=None, boxes=t, multimask_output=False,
            )
        return masks[:, 0].cpu().numpy().astype(bool), scores[:, 0].cpu().numpy().astype(np.float32)
