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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import image_signature, prepare_rgb_uint8
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.core.prompts import as_box, as_boxes, as_mask, as_point_labels, as_points


class EncodingStopped(Exception):
    """A background encoding ended early because its owner closed."""


@dataclass
class Embedding:
    """An encoded image: the encoder's output and the sizes needed to decode prompts."""

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    #: Prompt-independent decoder work kept with the plane (SAM: the first block's image side).
    decoder_cache: Any = field(default=None, repr=False, compare=False)


class LazyMasks:
    """(N, H, W) bool candidate masks, each upsampled from SAM's logits when first read.

    Integer indexing computes one candidate (kept afterwards); anything else
    (``np.asarray``, slicing) computes them all. Used for previews: the chosen
    candidate is shown at once, the others cost nothing until they are picked.
    """

    dtype = np.dtype(bool)
    ndim = 3

    def __init__(self, n: int, size: tuple[int, int], upsample):
        self.shape = (n, *size)
        self._upsample = upsample
        self._lock = threading.Lock()
        self._done: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.shape[0] if index < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(index)
            with self._lock:
                if i not in self._done:
                    self._done[i] = self._upsample(i)
                return self._done[i]
        return np.asarray(self)[index]

    def __array__(self, dtype=None, copy=None):
        out = np.stack([self[i] for i in range(self.shape[0])])
        return out if dtype is None else out.astype(dtype)

    @property
    def computed(self) -> list[int]:
        """The candidates upsampled so far."""
        return sorted(self._done)


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
        transformer block and before its attention and MLP halves (a prefetch
        waits there while prompts are answered; only calls from this thread pause).
        """
        import torch

        model = self.model
        image = rgb if model.image_format == "RGB" else rgb[..., ::-1]
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
        enc = model.image_encoder
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
            with torch.no_grad():
                x = enc.patch_embed(model.preprocess(tensor))
                if enc.pos_embed is not None:
                    x = x + enc.pos_embed
                for block in enc.blocks:
                    if between_blocks is not None:
                        between_blocks()
                    x = block(x)
                features = enc.neck(x.permute(0, 3, 1, 2))
        finally:
            for hook in hooks:
                hook.remove()
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
                from napari_segsuite.models.sam_decoder import ChunkedMaskDecoder

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
            from napari_segsuite.models.sam_decoder import postprocess_masks

            with torch.no_grad():
                up = postprocess_masks(model, low_res[:, i: i + 1], input_size, original_size)
                return (up > model.mask_threshold)[0, 0].detach().cpu().numpy()

        return LazyMasks(int(low_res.shape[1]), tuple(original_size), upsample), iou[0].detach().cpu().numpy().astype(
            np.float32)

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

    def predict(self, emb, coords_xy, labels, box_xyxy, mask_input, multimask, lazy=False):
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
        from napari_segsuite.core.threads import keep_thread_heaps_warm
        from napari_segsuite.models.base import load_model

        keep_thread_heaps_warm()  # encoders and decoders run in worker threads: as fast as on the main one
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
        #: caller-chosen plane tokens -> cache keys: O(1) lookups, no hashing of the pixels
        self._token_keys: OrderedDict[Any, str] = OrderedDict()
        #: held while the current image is switched or prompted (prompts from several threads)
        self.lock = threading.RLock()
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

    def _yield_to_prompts(self, stop=None) -> None:
        if stop is not None and stop():
            raise EncodingStopped("The background encoding was stopped.")
        with self._prompt_lock:
            while True:
                quiet = time.monotonic() - self._last_prompt
                if self._prompting == 0 and quiet >= self.PROMPT_QUIET_S:
                    return
                self._prompt_lock.wait(timeout=max(0.01, self.PROMPT_QUIET_S - quiet))

    def encode_job(
        self, image2d: np.ndarray, *, background: bool = False, stop=None,
    ) -> Generator[Progress, None, str]:
        """Encode ``image2d`` into the cache (no prompt state changes); returns the key.

        Safe to run in a background thread while prompts are answered on
        another image. With ``background=True`` (prefetch of the next planes)
        the encoder pauses between its blocks while prompts are being decoded,
        so prompts keep their speed; ``stop()`` (optional) is asked at the same
        points and ends the encoding with :class:`EncodingStopped` when true.
        """
        rgb = prepare_rgb_uint8(image2d)
        key = self.key_for(rgb)
        with self.lock:
            cached = key in self._cache
            if cached:
                self._cache.move_to_end(key)
        if cached:
            yield Progress(1, 1, "Embedding from cache")
            return key
        emb = self._load_disk(key)
        if emb is None:
            yield Progress(0, 1, "Encoding image")
            pause = (lambda: self._yield_to_prompts(stop)) if background else None
            emb = self.backend.encode(rgb, pause)
            self.encoder_runs += 1
            self._save_disk(key, emb)
        with self.lock:
            self._cache[key] = emb
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        yield Progress(1, 1, "Image encoded")
        return key

    def set_image_job(self, image2d: np.ndarray, token=None) -> Generator[Progress, None, str]:
        """Make ``image2d`` the image prompts refer to (encoding it if needed), as a job.

        ``token`` (optional, hashable) names this plane for the caller, e.g.
        (layer, data version, plane index): later :meth:`key_for_token` and
        :meth:`use` find its embedding without reading the pixels again.
        """
        key = self.key_for_token(token)
        if key is None:
            key = yield from self.encode_job(image2d)
        if token is not None:
            self.remember_token(token, key)
        with self.lock:
            self._make_current(key)
        return key

    def remember_token(self, token, key: str) -> None:
        """Let ``token`` stand for the plane whose cache key is ``key``."""
        self._token_keys[token] = key
        self._token_keys.move_to_end(token)
        while len(self._token_keys) > 8 * max(1, self.cache_size):
            self._token_keys.popitem(last=False)

    def key_for_token(self, token) -> str | None:
        """The cache key of the plane named ``token``, when its embedding is in memory (O(1))."""
        if token is None:
            return None
        key = self._token_keys.get(token)
        return key if key is not None and key in self._cache else None

    def _make_current(self, key: str) -> None:
        emb = self._cache[key]
        self._cache.move_to_end(key)
        self.current = emb
        self.image_key = key
        self.image_shape = tuple(emb.original_size)

    @contextlib.contextmanager
    def use(self, key: str):
        """Hold the session on the cached image ``key`` (prompts from several threads stay apart)."""
        with self.lock:
            before = self.image_key
            self._make_current(key)
            try:
                yield self
            finally:
                if before is not None and before != key and before in self._cache:
                    self._make_current(before)

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
        lazy: bool = False,
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
        lazy : bool
            With SAM, return the masks as :class:`LazyMasks`: each candidate is
            upsampled to the image size when first read (same pixels).

        Returns
        -------
        masks : (N, H, W) bool
        scores : (N,) float32, the predicted IoU of each mask
        """
        with self.lock:
            current, shape = self.current, self.image_shape
        if current is None or shape is None:
            raise InputError("Set an image before prompting.")
        h, w = shape
        coords = labels = None
        pts = None if points is None else as_points(points)
        if pts is None and point_labels is not None and np.size(point_labels):
            raise InputError("point_labels were given without points.")
        if pts is not None and len(pts):
            outside = (pts[:, 0] < 0) | (pts[:, 0] > h - 1) | (pts[:, 1] < 0) | (pts[:, 1] > w - 1)
            if outside.any():
                raise InputError(
                    f"{int(outside.sum())} point(s) lie outside the {h}x{w} image; move them onto the image."
                )
            coords = pts[:, ::-1].copy()
            labels = as_point_labels(point_labels, len(pts))
        sam_box = None
        if box is not None:
            r0, c0, r1, c1 = (float(v) for v in as_box(box))
            r0, r1 = sorted((max(0.0, r0), min(h - 1.0, r1)))
            c0, c1 = sorted((max(0.0, c0), min(w - 1.0, c1)))
            if r1 - r0 < 1 or c1 - c0 < 1:
                raise InputError("The box has no area inside the image; draw a larger box.")
            sam_box = np.array([c0, r0, c1, r1])
        mask_input = None if mask is None else self._mask_prompt(current, shape, mask)
        if coords is None and sam_box is None and mask_input is None:
            raise InputError("There is no prompt: add a point or a box first.")
        with self.prompting():
            return self.backend.predict(current, coords, labels, sam_box, mask_input, multimask, lazy)

    def mask_prompt(self, mask: np.ndarray) -> np.ndarray:
        """An image-sized mask as SAM's low-resolution logits prompt ((1, 256, 256) for 1024-pixel models)."""
        with self.lock:
            return self._mask_prompt(self.current, self.image_shape, mask)

    def _mask_prompt(self, current: Embedding, shape, mask: np.ndarray) -> np.ndarray:
        mask = as_mask(mask, shape)
        return self.backend.mask_prompt(current, mask)

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

        with self.lock:
            current, shape = self.current, self.image_shape
        if current is None or shape is None:
            raise InputError("Set an image before prompting.")
        h, w = shape
        rc = as_boxes(boxes)
        if len(rc) == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        r0 = np.clip(np.minimum(rc[:, 0], rc[:, 2]), 0, h - 1)
        r1 = np.clip(np.maximum(rc[:, 0], rc[:, 2]), 0, h - 1)
        c0 = np.clip(np.minimum(rc[:, 1], rc[:, 3]), 0, w - 1)
        c1 = np.clip(np.maximum(rc[:, 1], rc[:, 3]), 0, w - 1)
        xyxy = np.stack([c0, r0, c1, r1], axis=1)
        if not isinstance(self.backend, _SamBackend):  # SAM 2.1: one decoder pass per box
            with self.prompting():
                results = [self.backend.predict(current, None, None, b, None, False) for b in xyxy]
            return (np.stack([m[0] for m, _ in results]), np.array([sc[0] for _, sc in results], np.float32))
        p = self.backend.predictor_for(current)
        t = torch.as_tensor(xyxy, dtype=torch.float, device=p.device)
        t = p.transform.apply_boxes_torch(t, shape)
        with self.prompting(), torch.inference_mode():
            masks, scores, _ = p.predict_torch(
                point_coords=None, point_labels=None, boxes=t, multimask_output=False,
            )
        return masks[:, 0].cpu().numpy().astype(bool), scores[:, 0].cpu().numpy().astype(np.float32)
