"""The one interface of promptable models (SAM, SAM 2.1, and any family added later).

A promptable family implements :class:`PromptModel` in its own module under
``models/`` and returns it from its runner's ``prompt_model()``. The tasks
that use prompts (:class:`~napari_segsuite.tasks.sam_session.SamSession`,
segment everything in :mod:`~napari_segsuite.tasks.sam_automatic`,
propagation in :mod:`~napari_segsuite.tasks.propagation`) talk to this
interface only: they never ask which family they hold. Adding a promptable
family therefore means one module under ``models/`` (runner + prompt model)
and its lines in :data:`~napari_segsuite.models.base.FAMILIES` and the
registry.

What a prompt model does
------------------------
1. **Encode a plane** (:meth:`PromptModel.encode`): an (H, W, 3) ``uint8`` RGB
   array (the session has already turned any image into one) becomes an
   :class:`Embedding`. ``Embedding.features`` is whatever the decoder needs
   (a tensor, a list of tensors); the session caches it in memory (least
   recently used) and, when asked, on disk with ``torch.save``, so it must be
   made of tensors, lists, tuples and dicts. ``between_blocks`` (optional)
   is a callable the encoder calls between its expensive steps: a background
   prefetch waits there while prompts are answered on another plane, and it
   raises to stop the encoding. Call it at least once; call it between
   transformer blocks when the library lets you.
2. **Decode prompts** (:meth:`PromptModel.predict`): on one embedding, points
   (``(N, 2)`` float, **(x, y)** image pixels, with ``(N,)`` labels 1 positive /
   0 negative), a box (``(4,)`` float **(x0, y0, x1, y1)**, inside the image),
   and an optional low-resolution mask prompt (what :meth:`mask_prompt`
   returned); ``multimask`` asks for several candidates (SAM: three) or one.
   The session has checked the prompts (inside the image, a box with area,
   labels 0/1) and converted napari's (row, col) to these conventions.
   Returns ``(masks, scores)``: ``(K, H, W)`` bool at the plane's size and
   ``(K,)`` float32 predicted IoU. With ``lazy=True`` a family may return
   :class:`LazyMasks` (each candidate upsampled when first read, the same
   pixels); families that cannot do that ignore ``lazy``.
3. **Boxes in batch** (:meth:`PromptModel.predict_boxes`): one mask per box,
   used by detector + SAM pipelines. The default loops over :meth:`predict`;
   a family with a batched decoder overrides it.
4. **Mask prompts** (optional): set :attr:`PromptModel.takes_mask_prompt` and
   implement :meth:`PromptModel.mask_prompt` (an image-sized bool mask to the
   decoder's mask input). Families without them keep the default, which
   raises a clear :class:`~napari_segsuite.core.errors.InputError`.
   Propagation by projection uses the mask prompt when there is one, else a
   positive point at the mask's most interior pixel, with the box in both cases.
5. **Automatic masks** (optional, "segment everything"):
   :meth:`PromptModel.mask_source` returns a :class:`MaskSource`: ``encode``
   (as above, for crops and tiles), ``decode(embedding, points_xy)`` (a grid of
   single positive points, all multimask, returned as a :class:`DecodedPoints`:
   predicted IoU ``(N, K)`` at once and low-resolution logits on request),
   ``upscale(embedding, low)`` (logits ``(M, h, w)`` to the plane's size) and
   ``mask_threshold`` (logit threshold). The generator's filters, NMS and
   tiling are the task's; the source only runs the model.
6. **Video / propagation** (optional): :attr:`PromptModel.supports_video`
   says (cheaply, before loading anything) whether the model tracks an object
   through frames with memory; :meth:`PromptModel.video_tracker` then returns a
   :class:`VideoTracker` (loaded once per prompt model). Without it
   propagation projects masks plane by plane through 1-4.

Everything is imported lazily (torch and the family's library inside the
methods), and nothing here touches Qt or napari.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from napari_segsuite.core.errors import InputError


@dataclass
class Embedding:
    """An encoded plane: the encoder's output and the sizes needed to decode prompts.

    Attributes
    ----------
    features : object
        The encoder's output, as the family's decoder takes it.
    original_size : (int, int)
        The plane's (H, W).
    input_size : (int, int)
        The (h, w) the plane was resized to before encoding (without padding).
    decoder_cache : object, optional
        Prompt-independent decoder work the family keeps with the plane (SAM:
        the first decoder block's image side); never saved to disk.
    """

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    decoder_cache: Any = field(default=None, repr=False, compare=False)


class LazyMasks:
    """(N, H, W) bool candidate masks, each upsampled from logits when first read.

    Integer indexing computes one candidate (kept afterwards); anything else
    (``np.asarray``, slicing) computes them all. Used for previews: the chosen
    candidate is shown at once, the others cost nothing until they are picked.

    Parameters
    ----------
    n : int
        Number of candidates.
    size : (int, int)
        (H, W) of each mask.
    upsample : callable
        ``upsample(i)`` returns candidate ``i`` as an (H, W) bool array.
    """

    dtype = np.dtype(bool)
    ndim = 3

    def __init__(self, n: int, size: tuple[int, int], upsample: Callable[[int], np.ndarray]):
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


class DecodedPoints(Protocol):
    """A batch of single-point decodes: predicted IoU now, logits on request.

    ``iou`` is a ``(N, K)`` tensor (N prompts, K candidates each);
    ``low_res_masks(prompt_index)`` gives ``(len(prompt_index), K, h, w)``
    logits of the listed prompts and ``all_low_res_masks()`` those of all.
    """

    iou: Any

    def low_res_masks(self, prompt_index) -> Any: ...

    def all_low_res_masks(self) -> Any: ...


class Decoded:
    """:class:`DecodedPoints` over logits already computed for every prompt.

    Parameters
    ----------
    low : tensor, (N, K, h, w)
        Low-resolution logits.
    iou : tensor, (N, K)
        Predicted IoU.
    """

    def __init__(self, low, iou):
        self._low = low
        self.iou = iou

    def low_res_masks(self, prompt_index):
        return self._low[np.asarray(prompt_index, dtype=np.int64)]

    def all_low_res_masks(self):
        return self._low


class MaskSource(Protocol):
    """What segment everything needs from a model (see the module docstring, point 5)."""

    mask_threshold: float

    def encode(self, rgb: np.ndarray) -> Any: ...

    def decode(self, emb: Any, points_xy: np.ndarray) -> DecodedPoints: ...

    def upscale(self, emb: Any, low: Any) -> Any: ...


class VideoClip(Protocol):
    """An object prompted on one frame of a clip, ready to be tracked."""

    def propagate(self, *, reverse: bool, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """Track forwards (or in reverse) from the prompted frame.

        Yields ``(frame index in the clip, (H, W) bool mask)`` frame by frame,
        the prompted frame included when the library returns it. Each step
        runs under ``torch.no_grad``; the caller may stop iterating at any
        time (the object was lost, Cancel).
        """
        ...


class VideoTracker(Protocol):
    """A model that tracks an object through frames with memory (SAM 2.1 video)."""

    def start(self, frames: np.ndarray, frame: int, mask: np.ndarray) -> VideoClip:
        """Open ``frames`` ((T, H, W, 3) uint8) and prompt ``mask`` ((H, W) bool) on ``frame``.

        Both directions of a propagation use the same clip, so the memory of
        the frames seen forwards is there when tracking in reverse.
        """
        ...


class PromptModel(ABC):
    """A promptable model behind the one interface the prompt tasks use.

    Subclasses implement :meth:`encode` and :meth:`predict`, and override the
    optional parts they support (module docstring, points 3-6).

    Parameters
    ----------
    runner : Runner
        The loaded model (its ``model``, ``processor``, ``device``, ``source``
        and ``info``).
    """

    #: whether :meth:`predict` takes a mask prompt (and :meth:`mask_prompt` makes one)
    takes_mask_prompt: ClassVar[bool] = False
    #: what the family is called in messages ("SAM", "SAM 2.1", ...)
    title: ClassVar[str] = "this model"

    def __init__(self, runner):
        self.runner = runner
        self.model = runner.model
        self.device = runner.device

    @property
    def input_size(self) -> int:
        """The side of the square the encoder takes (larger images are resized to fit it).

        Windowed prompting on large planes (:mod:`napari_segsuite.tasks.sam_windows`)
        uses windows of this side, so that a window is encoded at full resolution.
        """
        info = getattr(self.runner, "info", None) or {}
        return int(info.get("image_size") or 1024)

    # -- 1. encode --------------------------------------------------------------------
    @abstractmethod
    def encode(self, rgb: np.ndarray, between_blocks: Callable[[], None] | None = None) -> Embedding:
        """Encode an (H, W, 3) uint8 RGB plane; call ``between_blocks()`` between steps."""
        raise NotImplementedError

    # -- 2. prompts -------------------------------------------------------------------
    @abstractmethod
    def predict(
        self,
        emb: Embedding,
        coords_xy: np.ndarray | None,
        labels: np.ndarray | None,
        box_xyxy: np.ndarray | None,
        mask_input: np.ndarray | None,
        multimask: bool,
        lazy: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``(K, H, W)`` bool and predicted IoU ``(K,)`` float32 for checked prompts."""
        raise NotImplementedError

    # -- 3. boxes in batch ------------------------------------------------------------
    def predict_boxes(self, emb: Embedding, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One single-mask prediction per box ``(N, 4)`` (x0, y0, x1, y1); ``(N, H, W)``, ``(N,)``."""
        results = [self.predict(emb, None, None, b, None, False) for b in boxes_xyxy]
        return np.stack([m[0] for m, _ in results]), np.array([s[0] for _, s in results], np.float32)

    # -- 4. mask prompts --------------------------------------------------------------
    def mask_prompt(self, emb: Embedding, mask: np.ndarray) -> np.ndarray:
        """An image-sized bool mask as the decoder's mask input."""
        raise InputError(
            f"Mask prompts need a SAM (segment-anything) model; {self.title} takes points and boxes."
        )

    # -- 5. automatic masks -----------------------------------------------------------
    def mask_source(self) -> MaskSource:
        """The model as segment everything uses it."""
        raise InputError(f"Automatic masks need a model that segments everything; {self.title} does not.")

    # -- 6. video -----------------------------------------------------------------------
    @property
    def supports_video(self) -> bool:
        """Whether :meth:`video_tracker` gives a tracker (checked without loading anything)."""
        return False

    def video_tracker(self) -> VideoTracker:
        """The video tracker (loaded at the first call, kept afterwards)."""
        raise InputError(
            "Video propagation needs a SAM 2.1 folder with the video memory weights (like the released "
            "facebook/sam2.1-hiera-* folders); this model propagates by projecting masks (method 'project')."
        )
