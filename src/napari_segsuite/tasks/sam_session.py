"""Promptable sessions with a cache of image embeddings.

:class:`SamSession` serves any promptable model through the one interface of
:class:`~napari_segsuite.models.prompt.PromptModel` (SAM, whose prompts go to
``SamPredictor`` unchanged, so for the same image and prompts the masks and
scores equal the library's; SAM 2.1 through transformers). What it adds is
napari's conventions (points as ``(row, col)``, boxes as ``(row0, col0, row1,
col1)``), checks that turn bad prompts into clear errors, and an embedding
cache (bounded, least recently used) keyed by the image's content and the
model, so prompts on an image seen before never run the encoder again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import image_signature, prepare_rgb_uint8
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.core.prompts import as_box, as_boxes, as_mask, as_point_labels, as_points
from napari_segsuite.core.threads import release_freed_memory
from napari_segsuite.models.prompt import Embedding, LazyMasks

__all__ = ["Embedding", "EncodingStopped", "LazyMasks", "SamSession"]


def embedding_nbytes(emb: Embedding) -> int:
    """Bytes of the tensors and arrays in ``emb.features`` and ``emb.decoder_cache``."""

    def size(obj) -> int:
        if obj is None:
            return 0
        if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
            return int(obj.element_size()) * int(obj.nelement())
        if isinstance(obj, np.ndarray):
            return int(obj.nbytes)
        if isinstance(obj, dict):
            return sum(size(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(size(v) for v in obj)
        if hasattr(obj, "__dict__"):
            return sum(size(v) for v in vars(obj).values())
        return 0

    return size(emb.features) + size(emb.decoder_cache)


class EncodingStopped(Exception):
    """A background encoding ended early because its owner closed."""


class SamSession:
    """Encode an image once, then predict masks from prompts.

    Parameters
    ----------
    model : str, path or Runner
        A promptable model (SAM, SAM 2.1): registry name, checkpoint file or
        folder, or a loaded runner.
    device : str
        "auto", "cpu", "cuda" or "mps".
    cache_size : int
        How many image embeddings to keep in memory (least recently used go first).
    cache_bytes : int, optional
        A bound on the memory of the cached embeddings (their tensors, the
        decoder's kept image side included), on top of ``cache_size``; the least
        recently used go first, the newest one always stays.
    disk_cache : path, optional
        A folder where embeddings are also saved; a file is used again only when
        the image content and the model checkpoint are the same.
    """

    def __init__(self, model, device: str = "auto", cache_size: int = 8, store=None, disk_cache=None,
                 cache_bytes: int | None = None):
        from napari_segsuite.core.threads import keep_thread_heaps_warm
        from napari_segsuite.models.base import load_model

        keep_thread_heaps_warm()  # encoders and decoders run in worker threads: as fast as on the main one
        self.runner = load_model(model, device, store=store)
        #: the model behind the prompt-model interface: the only thing prompts, segment
        #: everything and propagation talk to
        self.prompt_model = self.runner.prompt_model()
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
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
            emb = self.prompt_model.encode(rgb, pause)
            self.encoder_runs += 1
            # the encoder's activations (GBs for vit_b's global attention) are freed by now; glibc
            # would keep them in this thread's heap, so the process grew with every new window
            release_freed_memory()
            self._save_disk(key, emb)
        with self.lock:
            self._cache[key] = emb
            self._evict()
        yield Progress(1, 1, "Image encoded")
        return key

    def _evict(self) -> None:
        """Drop least recently used embeddings beyond ``cache_size`` and ``cache_bytes`` (lock held)."""
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if self.cache_bytes is not None:
            while len(self._cache) > 1 and self.cached_bytes() > self.cache_bytes:
                self._cache.popitem(last=False)

    def touch(self, key: str) -> None:
        """Mark the cached embedding ``key`` as just used (it is evicted last)."""
        with self.lock:
            if key in self._cache:
                self._cache.move_to_end(key)

    def cached_bytes(self) -> int:
        """Memory held by the cached embeddings (tensors of the features and the decoder's kept side)."""
        return sum(embedding_nbytes(e) for e in list(self._cache.values()))

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
    def use(self, key: str, *, keep: bool = False):
        """Hold the session on the cached image ``key`` (prompts from several threads stay apart).

        The image current before is made current again afterwards, unless ``keep``
        (windows of a large plane: the last window used stays current and nothing
        else is marked as recently used).
        """
        with self.lock:
            before = self.image_key
            self._make_current(key)
            try:
                yield self
            finally:
                if not keep and before is not None and before != key and before in self._cache:
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
            An existing mask to refine (the decoder's mask prompt, for models
            with ``prompt_model.takes_mask_prompt``: SAM).
        multimask : bool
            Three candidates (True) or one.
        lazy : bool
            Let the model return :class:`LazyMasks` (SAM does): each candidate
            is upsampled to the image size when first read (same pixels).

        Returns
        -------
        masks : (N, H, W) bool
        scores : (N,) float32, the predicted IoU of each mask
        """
        current, shape = self._prompted_image()
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
            return self.prompt_model.predict(current, coords, labels, sam_box, mask_input, multimask, lazy)

    def _prompted_image(self) -> tuple[Embedding, tuple[int, int]]:
        """The current embedding and its plane's (H, W); a clear error when there is none."""
        with self.lock:
            current, shape = self.current, self.image_shape
        if current is None or shape is None:
            raise InputError("Set an image before prompting.")
        return current, shape

    def mask_prompt(self, mask: np.ndarray) -> np.ndarray:
        """An image-sized mask as SAM's low-resolution logits prompt ((1, 256, 256) for 1024-pixel models)."""
        with self.lock:
            return self._mask_prompt(self.current, self.image_shape, mask)

    def _mask_prompt(self, current: Embedding, shape, mask: np.ndarray) -> np.ndarray:
        mask = as_mask(mask, shape)
        return self.prompt_model.mask_prompt(current, mask)

    # -- batches of boxes ---------------------------------------------------------------
    def predict_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One mask per box (single-mask output), for a batch of boxes.

        The model decodes them as it does best (SAM: one pass of
        ``SamPredictor.predict_torch``, as segment_anything's batched-prompt
        example does; see :meth:`PromptModel.predict_boxes`).

        Parameters
        ----------
        boxes : (N, 4) array
            (row0, col0, row1, col1) in image pixels; clipped to the image.

        Returns
        -------
        masks : (N, H, W) bool
        scores : (N,) float32, the predicted IoU of each mask
        """
        current, shape = self._prompted_image()
        h, w = shape
        rc = as_boxes(boxes)
        if len(rc) == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        r0 = np.clip(np.minimum(rc[:, 0], rc[:, 2]), 0, h - 1)
        r1 = np.clip(np.maximum(rc[:, 0], rc[:, 2]), 0, h - 1)
        c0 = np.clip(np.minimum(rc[:, 1], rc[:, 3]), 0, w - 1)
        c1 = np.clip(np.maximum(rc[:, 1], rc[:, 3]), 0, w - 1)
        xyxy = np.stack([c0, r0, c1, r1], axis=1)
        with self.prompting():
            return self.prompt_model.predict_boxes(current, xyxy)
