"""Carry one object through a z-stack or a time series, plane by plane, as a job.

The session's :class:`~napari_segsuite.models.prompt.PromptModel` decides
what is possible; two methods:

- ``"project"`` (every prompt model): the mask on plane ``k`` becomes the
  prompt on plane ``k ± 1``: its box, plus the mask itself as the decoder's
  mask prompt when the model takes one (SAM), else a positive point at the
  mask's most interior pixel (SAM 2.1). Each plane's embedding goes through
  the session's cache, so planes encoded before (e.g. by prefetch) cost nothing.
- ``"video"`` (models with a video tracker, such as SAM 2.1 folders with the
  video memory weights, like the released ``facebook/sam2.1-hiera-*``): the
  planes are frames of one clip; the mask is the prompt on the start frame
  and the tracker runs forwards and in reverse, with its memory of the frames
  seen.

Both stop in a direction when the object disappears (fewer than
``min_area`` pixels), when a plane's mask overlaps the previous plane's by
less than ``iou_floor`` (intersection over union; the object jumped
elsewhere), after ``max_planes`` planes, or at the end of the stack. The job
yields progress once per plane (Cancel acts there) and returns
``{plane index: mask}`` without the start plane.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import prepare_rgb_uint8
from napari_segsuite.core.progress import Progress

DIRECTIONS = ("both", "forward", "backward")
METHODS = ("auto", "video", "project")


@dataclass
class PropagationResult(Mapping):
    """The planes an object was carried to: a mapping plane index -> (H, W) bool mask.

    Attributes
    ----------
    masks : dict of int to ndarray
        Plane index -> mask, without the start plane.
    shape : (int, int, int)
        (planes, H, W) of the stack.
    start_index : int
    start_mask : ndarray of bool
    provenance : dict
        Task, model, method and parameters.
    """

    masks: dict[int, np.ndarray]
    shape: tuple[int, int, int]
    start_index: int
    start_mask: np.ndarray
    provenance: dict = field(default_factory=dict)

    def __getitem__(self, plane: int) -> np.ndarray:
        return self.masks[plane]

    def __iter__(self) -> Iterator[int]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def labels(self) -> np.ndarray:
        """(planes, H, W) int32: 1 where the object is (start plane included), 0 elsewhere."""
        out = np.zeros(self.shape, dtype=np.int32)
        out[self.start_index][self.start_mask] = 1
        for z, m in self.masks.items():
            out[z][m] = 1
        return out

    @property
    def table(self) -> Any:
        """One row per plane holding the object (pandas): ``label`` (1), ``plane``, ``area``."""
        import pandas as pd

        planes = sorted({self.start_index, *self.masks})
        areas = [int((self.start_mask if z == self.start_index else self.masks[z]).sum()) for z in planes]
        return pd.DataFrame({"label": [1] * len(planes), "plane": planes, "area": areas})


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _steps(direction: str) -> list[int]:
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}.")
    return {"both": [1, -1], "forward": [1], "backward": [-1]}[direction]


def choose_method(session, method: str = "auto") -> str:
    """The method ``propagate_job`` uses for this session's model."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    model = session.prompt_model
    if method == "video" and not model.supports_video:
        model.video_tracker()  # raises the model's message
    if method == "auto":
        return "video" if model.supports_video else "project"
    return method


def propagate_job(
    session,
    volume,
    start_index: int,
    mask: np.ndarray,
    *,
    direction: str = "both",
    max_planes: int | None = None,
    iou_floor: float = 0.2,
    min_area: int = 1,
    method: str = "auto",
) -> Generator[Progress, None, dict[int, np.ndarray]]:
    """Propagate ``mask`` from plane ``start_index`` to the neighbouring planes.

    Parameters
    ----------
    session : SamSession
        Any prompt model (SAM, SAM 2.1, ...).
    volume : array-like
        ``len(volume)`` planes; ``volume[i]`` is a (H, W) or (H, W, C) plane
        (read one at a time for the projection method).
    start_index : int
        The plane of ``mask``.
    mask : ndarray of bool, (H, W)
    direction : {"both", "forward", "backward"}
        Forward is increasing plane index.
    max_planes : int, optional
        At most this many planes in each direction (None: to the end).
    iou_floor : float
        Stop when a mask's IoU with the previous plane's mask is below this.
    min_area : int
        Stop when a mask has fewer pixels (the object disappeared).
    method : {"auto", "video", "project"}
        "auto": video when the model has a video tracker (SAM 2.1 folders
        with memory weights), else project.

    Returns
    -------
    dict of int to ndarray
        Plane index -> boolean mask.
    """
    from napari_segsuite.core.prompts import as_mask

    n = len(volume)
    if not 0 <= start_index < n:
        raise InputError(f"The start plane {start_index} is outside the stack of {n} planes.")
    mask = as_mask(mask, np.shape(volume[start_index])[:2], what="start mask")
    if not mask.any():
        raise InputError("The object has no pixels on the start plane; commit or pick a label there first.")
    steps = _steps(direction)
    limit = n if max_planes is None else max(0, int(max_planes))
    chosen = choose_method(session, method)
    if chosen == "video":
        return (yield from _video(session, volume, start_index, mask, steps, limit, iou_floor, min_area))
    return (yield from _project(session, volume, start_index, mask, steps, limit, iou_floor, min_area))


def _planned(n: int, start: int, steps: list[int], limit: int) -> int:
    total = 0
    for step in steps:
        total += min(limit, n - 1 - start if step > 0 else start)
    return max(total, 1)


def _project(session, volume, start, mask, steps, limit, iou_floor, min_area):
    n = len(volume)
    total = _planned(n, start, steps, limit)
    done = 0
    out: dict[int, np.ndarray] = {}
    mask_prompt = session.prompt_model.takes_mask_prompt
    for step in steps:
        prev = mask
        z = start
        for _ in range(limit):
            z += step
            if not 0 <= z < n:
                break
            yield Progress(done, total, f"Propagating: plane {z}")
            yield from session.set_image_job(np.asarray(volume[z]))
            rows, cols = np.nonzero(prev)
            box = np.array([rows.min(), cols.min(), rows.max(), cols.max()], dtype=float)
            if box[2] - box[0] < 1:
                box[2] += 1
            if box[3] - box[1] < 1:
                box[3] += 1
            if mask_prompt:
                masks, _ = session.predict(box=box, mask=prev, multimask=False)
            else:
                masks, _ = session.predict(points=_interior_point(prev)[None], box=box, multimask=False)
            new = np.asarray(masks[0], dtype=bool)
            done += 1
            if _object_lost(new, prev, min_area, iou_floor):
                break
            out[z] = new
            prev = new
    yield Progress(total, total, f"Propagated to {len(out)} plane(s)")
    return out


def _object_lost(new: np.ndarray, prev: np.ndarray, min_area: int, iou_floor: float) -> bool:
    """The stop rule of both methods: the object vanished (too small) or jumped (IoU with
    the previous plane under the floor)."""
    return bool(new.sum() < min_area or mask_iou(new, prev) < iou_floor)


def _interior_point(mask: np.ndarray) -> np.ndarray:
    """The (row, col) of the mask pixel farthest from its border."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([float(r), float(c)])


def _video(session, volume, start, mask, steps, limit, iou_floor, min_area):
    n = len(volume)
    lo = start - min(limit, start) if -1 in steps else start
    hi = start + min(limit, n - 1 - start) if 1 in steps else start
    total = _planned(n, start, steps, limit) + 1
    title = session.prompt_model.title
    yield Progress(0, total, f"Loading {title} video model")
    tracker = session.prompt_model.video_tracker()
    frames = np.stack([prepare_rgb_uint8(np.asarray(volume[i])) for i in range(lo, hi + 1)])
    clip = tracker.start(frames, start - lo, mask)
    out: dict[int, np.ndarray] = {}
    done = 1
    for step in steps:
        prev = mask
        span = (hi - start) if step > 0 else (start - lo)
        if span <= 0:
            continue
        for frame, new in clip.propagate(reverse=step < 0, max_frames=span):
            z = lo + frame
            if z == start:
                continue
            yield Progress(done, total, f"Propagating ({title} video): plane {z}")
            done += 1
            if _object_lost(new, prev, min_area, iou_floor):
                break
            out[z] = new
            prev = new
    yield Progress(total, total, f"Propagated to {len(out)} plane(s)")
    return out
