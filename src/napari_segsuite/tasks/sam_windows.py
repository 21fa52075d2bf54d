"""Promptable models at full resolution on planes larger than the encoder's input.

A SAM-type encoder takes a square of :attr:`~napari_segsuite.models.prompt.PromptModel.input_size`
pixels (1,024 for SAM and SAM 2.1); a whole 40,000-pixel plane resized to it gives masks at
1/40 of the image's resolution. :class:`WindowedPrompts` instead decodes the prompts of
each object against the embedding of a **window** of the plane around them, read from the
full-resolution data and encoded at 1:1.

Windows
-------
- **Which planes**: a plane is windowed when its longer side is more than
  :data:`WINDOW_FACTOR` (1.25) times the encoder's input (:func:`needs_windows`). Smaller
  planes are encoded whole as before (resized by at most 1.25). The rule depends on the
  size only: a small dask or zarr plane is small enough to read whole.
- **The grid**: the windows are the tiles of :func:`napari_segsuite.core.tiling.tile_grid`
  (the project's one tiling rule) of the input's side with a quarter of it as overlap
  (256 pixels for SAM). A tile grid rather than the field of view because a grid window
  keeps its identity whatever the user pans or zooms, so its embedding is computed once and
  answers every later prompt inside it, its neighbours are known (prefetch), and it is
  always encoded at full resolution (a zoomed-out field of view would be resized).
- **The window of an object**: the bounding box of its prompts (points and box) is taken.
  Among the grid windows that contain it, the one whose centre is nearest to the box's
  centre is used (the most context on every side; with a quarter-window overlap any prompt
  box up to 256 pixels fits in a grid window and lies at least 128 pixels from that window's
  inner edges). A box that fits in no grid window but is no larger than a window gets a
  window of the same size centred on it (clamped into the plane, cached under its position).
  Prompts that span more than one window get the box plus a margin of an eighth of its size
  on every side, encoded resized to the input (its masks are at that window's resolution,
  upsampled to full resolution); a window over :attr:`WindowedPrompts.max_window_pixels` is
  refused with a clear :class:`~napari_segsuite.core.errors.InputError`. Several objects
  are decoded per window (boxes of one window in one batch).
- **Reads are lazy**: only the window's pixels are read from the full-resolution data
  (:class:`PlaneView` indexes the nD layer data without reading a whole plane), scaled to
  uint8 RGB by :class:`~napari_segsuite.core.tiling.TileReader` (one intensity scaling for
  the whole plane, uint8 as it is).
- **The cache**: window embeddings live in the
  :class:`~napari_segsuite.tasks.sam_session.SamSession` cache (keyed by content and model,
  bounded by its ``cache_size`` windows and ``cache_bytes``); a window is found again by its
  token ``(plane token, window)`` without reading pixels.

Each predicted object carries ``origin`` (the window's first row and column in the plane)
and ``window`` (the :class:`~napari_segsuite.core.tiling.Tile`); its masks are window-sized,
so the mask lands at full resolution at ``origin``.

Nothing here imports Qt or napari.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Hashable
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.core.tiling import Tile, TileReader, axis_starts, tile_grid

#: a plane whose longer side exceeds this many encoder inputs is prompted in windows
WINDOW_FACTOR = 1.25
#: a window spanning prompts may hold at most this many encoder inputs' worth of pixels
MAX_WINDOW_INPUTS = 16
#: working memory of a window per pixel: its RGB, the float copy of the resize, the masks
WINDOW_BYTES_PER_PIXEL = 24
#: the viewer's embedding cache: at most this many embeddings (windows or whole planes) ...
CACHE_EMBEDDINGS = 48
#: ... holding at most this many bytes (a SAM ViT window: 4 MiB of features plus the decoder's
#: kept image side once prompted)
CACHE_BYTES = 768 << 20
#: a commit of windowed objects writes at most this many pixels at once
MAX_COMMIT_PIXELS = 64 * 1024 * 1024


def needs_windows(shape: tuple[int, ...], input_size: int) -> bool:
    """Whether a plane of ``shape`` (rows, cols, ...) is prompted in windows (see the module docstring)."""
    return max(int(shape[0]), int(shape[1])) > WINDOW_FACTOR * int(input_size)


class PlaneView:
    """A 2D plane of an nD array-like, indexed lazily: only what is sliced is read.

    Parameters
    ----------
    data : array-like
        numpy, dask, zarr or any array with ``shape``, ``dtype`` and ``__getitem__``.
    index : tuple
        One entry per leading axis of ``data``: an int (a sliced axis) or
        ``slice(None)`` (the plane's rows, its columns, a trailing RGB axis).
        Axes of ``data`` beyond ``index`` are kept whole.
    """

    def __init__(self, data, index: tuple = ()):
        self.data = data
        self.index = tuple(index) if index else tuple(slice(None) for _ in data.shape)
        self.kept = [a for a, i in enumerate(self.index) if isinstance(i, slice)]
        self.kept += list(range(len(self.index), len(data.shape)))
        self.shape = tuple(int(data.shape[a]) for a in self.kept)
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        full = list(self.index) + [slice(None)] * (len(self.data.shape) - len(self.index))
        for axis, k in zip(self.kept, key, strict=False):
            full[axis] = k
        out = self.data[tuple(full)]
        if type(out).__module__.startswith("dask"):
            # a window is a few chunks: read on this thread (no hand-offs to dask's thread pool)
            out = out.compute(scheduler="synchronous")
        return np.asarray(out)

    def __array__(self, dtype=None, copy=None):
        out = self[tuple(slice(None) for _ in self.shape)]
        return out if dtype is None else out.astype(dtype)


@dataclasses.dataclass
class WindowedObject:
    """An object's prompts shifted into its window (what :func:`predict_objects` takes)."""

    index: int
    window: Tile
    prompts: dict


class WindowedPrompts:
    """Prompts on a large plane decoded against the embeddings of windows around them.

    Parameters
    ----------
    session : SamSession
        The session whose model, cache and prompt checks are used.
    plane : array-like
        The plane, (H, W) or (H, W, C), read lazily (a :class:`PlaneView`, numpy, dask, zarr).
    token : hashable
        The caller's name for this plane's content (e.g. layer id, data version, plane
        index); windows are remembered under ``(token, window)``.
    overlap : int, optional
        Overlap of the grid windows (default: a quarter of the window).
    window : int, optional
        The window side (default: the encoder's input side).
    max_window_pixels : int, optional
        The largest window (prompts spanning windows), default
        :data:`MAX_WINDOW_INPUTS` encoder inputs.
    """

    def __init__(self, session, plane, token: Hashable, *, overlap: int | None = None, window: int | None = None,
                 max_window_pixels: int | None = None, reader: TileReader | None = None):
        self.session = session
        self.plane = plane
        self.token = token
        self.size = int(window or session.prompt_model.input_size)
        self.overlap = int(self.size // 4 if overlap is None else overlap)
        self.shape = (int(plane.shape[0]), int(plane.shape[1]))
        self.max_window_pixels = int(max_window_pixels or MAX_WINDOW_INPUTS * self.size * self.size)
        #: the grid's window starts along the rows and the columns (the grid is their product)
        self.row_starts = np.asarray(axis_starts(self.shape[0], self.size, self.overlap), dtype=np.int64)
        self.col_starts = np.asarray(axis_starts(self.shape[1], self.size, self.overlap), dtype=np.int64)
        self._grid: list[Tile] | None = None
        self._reader = reader

    @property
    def grid(self) -> list[Tile]:
        """Every grid window, row by row (built on first use: a 40,000-pixel plane has 43,000)."""
        if self._grid is None:
            self._grid = tile_grid(self.shape, self.size, self.overlap)
        return self._grid

    def _grid_tile(self, i: int, j: int) -> Tile:
        """The grid window at row start ``row_starts[i]`` and column start ``col_starts[j]``."""
        y, x = int(self.row_starts[i]), int(self.col_starts[j])
        return Tile(slice(y, min(y + self.size, self.shape[0])), slice(x, min(x + self.size, self.shape[1])),
                    index=i * len(self.col_starts) + j)

    @property
    def reader(self) -> TileReader:
        """The window reader (its intensity range for non-uint8 data is estimated at the first read)."""
        if self._reader is None:
            self._reader = TileReader(self.plane, min_side=1)
        return self._reader

    # -- windows ------------------------------------------------------------------------------
    def window_for(self, rows: np.ndarray, cols: np.ndarray) -> Tile:
        """The window for prompts at ``rows``/``cols`` (plane pixels; see the module docstring)."""
        h, w = self.shape
        rows = np.asarray(rows, dtype=float)
        cols = np.asarray(cols, dtype=float)
        r0, r1 = math.floor(rows.min()), math.floor(rows.max()) + 1
        c0, c1 = math.floor(cols.min()), math.floor(cols.max()) + 1
        cr, cc = (r0 + r1) / 2, (c0 + c1) / 2
        # the grid windows holding the box along each axis; the grid is their product, so the
        # window nearest to the box's centre is the nearest along each axis
        rows_in = _holding(self.row_starts, r0, r1, self.size, h)
        cols_in = _holding(self.col_starts, c0, c1, self.size, w)
        if len(rows_in) and len(cols_in):
            i = rows_in[np.argmin(np.abs(_centres(self.row_starts[rows_in], self.size, h) - cr))]
            j = cols_in[np.argmin(np.abs(_centres(self.col_starts[cols_in], self.size, w) - cc))]
            return self._grid_tile(int(i), int(j))
        side_r, side_c = min(self.size, h), min(self.size, w)
        if r1 - r0 <= side_r and c1 - c0 <= side_c:
            return _centred(cr, cc, side_r, side_c, h, w)
        margin_r, margin_c = max(16, (r1 - r0) // 8), max(16, (c1 - c0) // 8)
        tile = Tile(slice(max(0, r0 - margin_r), min(h, r1 + margin_r)), slice(max(0, c0 - margin_c), min(w, c1 + margin_c)))
        pixels = (tile.r1 - tile.r0) * (tile.c1 - tile.c0)
        from napari_segsuite.core.regions import MEMORY_SHARE, available_memory

        need = pixels * WINDOW_BYTES_PER_PIXEL
        if need > MEMORY_SHARE * available_memory():
            raise InputError(
                f"The prompts of one object span {tile.r1 - tile.r0:,} x {tile.c1 - tile.c0:,} pixels; a window that "
                f"large needs about {need / 2**30:.1f} GiB, more than the memory available "
                f"({available_memory() / 2**30:.1f} GiB). Prompt a smaller object, or draw a box around a part of it."
            )
        if pixels > self.max_window_pixels:
            side = int(math.sqrt(self.max_window_pixels))
            raise InputError(
                f"The prompts of one object span {tile.r1 - tile.r0:,} x {tile.c1 - tile.c0:,} pixels; a window "
                f"that large ({pixels * 3 / 2**20:,.0f} MB of RGB) is over the limit of about {side:,} x {side:,} "
                "pixels. Prompt a smaller object, or draw a box around a part of it."
            )
        return tile

    def neighbours(self, window: Tile, n: int = 8) -> list[Tile]:
        """Up to ``n`` grid windows nearest to ``window`` (its neighbours first), itself excluded."""
        cr, cc = (window.r0 + window.r1) / 2, (window.c0 + window.c1) / 2
        # the nearest n lie within a few grid steps of the window: only those are ranked
        reach = math.isqrt(max(0, n)) + 2
        i = int(np.searchsorted(self.row_starts, window.r0))
        j = int(np.searchsorted(self.col_starts, window.c0))
        rows = range(max(0, i - reach), min(len(self.row_starts), i + reach + 1))
        cols = range(max(0, j - reach), min(len(self.col_starts), j + reach + 1))
        others = [t for t in (self._grid_tile(a, b) for a in rows for b in cols) if t != window]
        others.sort(key=lambda t: (((t.r0 + t.r1) / 2 - cr) ** 2 + ((t.c0 + t.c1) / 2 - cc) ** 2, t.index))
        return others[:n]

    def window_token(self, window: Tile) -> tuple:
        """The name the session remembers ``window``'s embedding under."""
        return (self.token, window.window)

    def cached_key(self, window: Tile) -> str | None:
        """The cache key of ``window`` when its embedding is in memory (no pixels read)."""
        return self.session.key_for_token(self.window_token(window))

    def read(self, window: Tile) -> np.ndarray:
        """The window's pixels as (h, w, 3) uint8 (only this window is read)."""
        return self.reader.read(window.window)

    def encode_job(self, window: Tile, *, background: bool = False, stop=None) -> Generator[Progress, None, str]:
        """Encode ``window`` into the session's cache (unless it is there); returns its key."""
        key = self.cached_key(window)
        if key is not None:
            self.session.touch(key)
            return key
        yield Progress(0, 1, f"Encoding the window at row {window.r0:,}, column {window.c0:,}")
        key = yield from self.session.encode_job(self.read(window), background=background, stop=stop)
        self.session.remember_token(self.window_token(window), key)
        return key

    # -- prompts ------------------------------------------------------------------------------
    def check(self, objects: list[dict]) -> None:
        """Raise :class:`InputError` for prompts outside the plane or boxes without area in it."""
        h, w = self.shape
        for obj in objects:
            pts = np.asarray(obj.get("points", np.zeros((0, 2))), dtype=float).reshape(-1, 2)
            if len(pts):
                outside = (pts[:, 0] < 0) | (pts[:, 0] > h - 1) | (pts[:, 1] < 0) | (pts[:, 1] > w - 1)
                if outside.any():
                    raise InputError(f"{int(outside.sum())} point(s) lie outside the {h:,}x{w:,} image; "
                                     "move them onto the image.")
            if obj.get("box") is not None:
                r0, c0, r1, c1 = (float(v) for v in obj["box"])
                lo_r, hi_r = max(0.0, min(r0, r1)), min(h - 1.0, max(r0, r1))
                lo_c, hi_c = max(0.0, min(c0, c1)), min(w - 1.0, max(c0, c1))
                if hi_r - lo_r < 1 or hi_c - lo_c < 1:
                    raise InputError("The box has no area inside the image; draw a larger box.")

    def plan(self, objects: list[dict], *, masks: bool = True) -> list[WindowedObject]:
        """Each object's window and its prompts shifted into it (checked first).

        When the prompts of all objects fit in one window together they share it (boxes
        are then decoded in one batch); otherwise each object gets its own window. With
        ``masks=False`` the mask prompts are left out (nothing is drawn or read for them).
        """
        self.check(objects)
        h, w = self.shape
        extents = []
        for obj in objects:
            pts = np.asarray(obj.get("points", np.zeros((0, 2))), dtype=float).reshape(-1, 2)
            rows, cols = list(pts[:, 0]), list(pts[:, 1])
            box = obj.get("box")
            if box is not None:
                b = np.asarray(box, dtype=float)
                rows += [np.clip(min(b[0], b[2]), 0, h - 1), np.clip(max(b[0], b[2]), 0, h - 1)]
                cols += [np.clip(min(b[1], b[3]), 0, w - 1), np.clip(max(b[1], b[3]), 0, w - 1)]
            if not rows:
                raise InputError("There is no prompt: add a point or a box first.")
            extents.append((pts, np.array(rows), np.array(cols)))
        all_rows = np.concatenate([e[1] for e in extents])
        all_cols = np.concatenate([e[2] for e in extents])
        shared = None
        if np.ptp(all_rows) < min(self.size, h) and np.ptp(all_cols) < min(self.size, w):
            shared = self.window_for(all_rows, all_cols)
        planned = []
        for k, (obj, (pts, rows, cols)) in enumerate(zip(objects, extents, strict=True)):
            window = shared if shared is not None else self.window_for(rows, cols)
            box = obj.get("box")
            origin = np.array([window.r0, window.c0], dtype=float)
            shifted: dict[str, Any] = {"points": pts - origin, "labels": obj.get("labels", np.ones(len(pts), int)),
                                       "box": None if box is None else np.asarray(box, dtype=float) - np.tile(origin, 2)}
            size = (window.r1 - window.r0, window.c1 - window.c0)
            if not masks:
                pass
            elif obj.get("shape") is not None:  # an ellipse or polygon: its mask, drawn in the window only
                shape = obj["shape"]
                shifted["mask"] = dataclasses.replace(shape, vertices=np.asarray(shape.vertices) - origin).mask(size)
            elif obj.get("mask_at") is not None:  # ((row, col), mask): a mask placed in the plane
                shifted["mask"] = paste_mask(obj["mask_at"], window)
            elif obj.get("mask_from") is not None:  # a function of the window: e.g. a label read there only
                shifted["mask"] = np.asarray(obj["mask_from"](window), dtype=bool)
            elif obj.get("mask") is not None:
                shifted["mask"] = np.asarray(obj["mask"])[window.slices]
            planned.append(WindowedObject(k, window, shifted))
        return planned

    def windows_of(self, objects: list[dict]) -> list[Tile]:
        """The distinct windows the objects need, in first-use order."""
        seen: list[Tile] = []
        for p in self.plan(objects, masks=False):
            if p.window not in seen:
                seen.append(p.window)
        return seen

    def all_cached(self, objects: list[dict]) -> bool:
        """Whether every window the objects need is in memory (decoding needs no encoder)."""
        return all(self.cached_key(t) is not None for t in self.windows_of(objects))

    def predict_job(self, objects: list[dict], multimask: bool) -> Generator[Progress, None, list[dict]]:
        """Predict the objects window by window (encoding windows not cached); as a job.

        Returns
        -------
        list of dict
            In the objects' order: ``masks`` (K, h, w) window-sized, ``scores``, ``choice``,
            ``origin`` (row, col of the window in the plane) and ``window``.
        """
        from napari_segsuite.tasks.sam_preview import predict_objects

        planned = self.plan(objects)
        groups: dict[Tile, list[WindowedObject]] = {}
        for p in planned:
            groups.setdefault(p.window, []).append(p)
        results: list[dict | None] = [None] * len(planned)
        # the prompts' own windows come first: a background prefetch pauses at its next
        # encoder block while they are encoded and decoded (SamSession.prompting)
        with self.session.prompting():
            for window, members in groups.items():
                key = yield from self.encode_job(window)
                with self.session.use(key, keep=True):
                    decoded = predict_objects(self.session, [m.prompts for m in members], multimask)
                for m, res in zip(members, decoded, strict=True):
                    res["origin"] = (window.r0, window.c0)
                    res["window"] = window
                    results[m.index] = res
        return [r for r in results if r is not None]

    def predict(self, objects: list[dict], multimask: bool = True) -> list[dict]:
        """:meth:`predict_job` run to the end."""
        return run_sync(self.predict_job(objects, multimask))

    def prefetch_job(self, around: Tile, n: int = 8, *, stop=None) -> Generator[Progress, None, list[str]]:
        """Encode up to ``n`` windows nearest to ``around`` in the background (paused while prompts decode).

        ``stop()`` is asked between windows and between encoder blocks; when true the
        prefetch ends (:class:`~napari_segsuite.tasks.sam_session.EncodingStopped` inside a block).
        """
        done = []
        for window in self.neighbours(around, n):
            if stop is not None and stop():
                break
            if self.cached_key(window) is not None:
                continue
            key = yield from self.encode_job(window, background=True, stop=stop)
            done.append(key)
        return done


def _holding(starts: np.ndarray, lo: int, hi: int, size: int, length: int) -> np.ndarray:
    """Indices of the grid windows along one axis (at ``starts``, ``size`` long) that hold ``[lo, hi)``."""
    ends = np.minimum(starts + size, length)
    return np.flatnonzero((starts <= lo) & (ends >= hi))


def _centres(starts: np.ndarray, size: int, length: int) -> np.ndarray:
    return (starts + np.minimum(starts + size, length)) / 2


def _centred(cr: float, cc: float, side_r: int, side_c: int, h: int, w: int) -> Tile:
    r0 = int(min(max(0, round(cr - side_r / 2)), h - side_r))
    c0 = int(min(max(0, round(cc - side_c / 2)), w - side_c))
    return Tile(slice(r0, r0 + side_r), slice(c0, c0 + side_c))


def paste_mask(placed: tuple, region: Tile) -> np.ndarray:
    """A mask placed at ``(row, col)`` in the plane (``placed = ((row, col), mask)``), cut to ``region``."""
    (r, c), mask = placed
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros((region.r1 - region.r0, region.c1 - region.c0), dtype=bool)
    r0, c0 = max(r, region.r0), max(c, region.c0)
    r1, c1 = min(r + mask.shape[0], region.r1), min(c + mask.shape[1], region.c1)
    if r1 > r0 and c1 > c0:
        out[r0 - region.r0: r1 - region.r0, c0 - region.c0: c1 - region.c0] = mask[r0 - r: r1 - r, c0 - c: c1 - c]
    return out


def placed_iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two placed masks ``((row, col), mask)``."""
    union = Tile.bounding([Tile(slice(r, r + m.shape[0]), slice(c, c + m.shape[1])) for (r, c), m in (a, b)])
    ma, mb = paste_mask(a, union), paste_mask(b, union)
    return float((ma & mb).sum() / max(1, (ma | mb).sum()))


def propagate_windowed_job(
    session,
    plane_at,
    n_planes: int,
    token: Hashable,
    start_index: int,
    placed: tuple,
    *,
    direction: str = "both",
    max_planes: int | None = None,
    iou_floor: float = 0.2,
    min_area: int = 1,
) -> Generator[Progress, None, dict[int, tuple]]:
    """Carry a placed mask ``((row, col), mask)`` through the planes of a large volume, in windows.

    The projection method of :mod:`napari_segsuite.tasks.propagation` on windows: on plane
    ``k ± 1`` the previous mask's box (plus the mask as the decoder's mask prompt when the
    model takes one, else a positive point at its most interior pixel) is decoded in the
    window around it (:class:`WindowedPrompts`; only that window is read from
    ``plane_at(k)``, a lazy plane). The same stop rules (the object vanished, IoU with the
    previous plane under ``iou_floor``, ``max_planes``, the end of the stack).

    Returns
    -------
    dict of int to ((int, int), ndarray)
        Plane index -> the mask placed at its window's (row, col), without the start plane.
    """
    from napari_segsuite.tasks.propagation import _interior_point, _planned, _steps

    (r0, c0), mask = placed
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("The object has no pixels on the start plane; commit or pick a label there first.")
    if not 0 <= start_index < n_planes:
        raise InputError(f"The start plane {start_index} is outside the stack of {n_planes} planes.")
    steps = _steps(direction)
    limit = n_planes if max_planes is None else max(0, int(max_planes))
    total = _planned(n_planes, start_index, steps, limit)
    takes_mask = session.prompt_model.takes_mask_prompt
    done = 0
    out: dict[int, tuple] = {}
    for step in steps:
        prev = ((int(r0), int(c0)), mask)
        z = start_index
        for _ in range(limit):
            z += step
            if not 0 <= z < n_planes:
                break
            yield Progress(done, total, f"Propagating: plane {z}")
            (pr, pc), pm = prev
            rows, cols = np.nonzero(pm)
            box = np.array([rows.min() + pr, cols.min() + pc, rows.max() + pr + 1, cols.max() + pc + 1], dtype=float)
            obj: dict[str, Any] = {"box": box, "points": np.zeros((0, 2)), "labels": np.zeros(0, int)}
            if takes_mask:
                obj["mask_at"] = prev
            else:
                obj["points"] = (_interior_point(pm) + np.array([pr, pc]))[None]
                obj["labels"] = np.ones(1, int)
            windows = WindowedPrompts(session, plane_at(z), (token, z))
            (res,) = yield from windows.predict_job([obj], multimask=False)
            new = (tuple(int(v) for v in res["origin"]), np.asarray(res["masks"][0], dtype=bool))
            done += 1
            if new[1].sum() < min_area or placed_iou(new, prev) < iou_floor:
                break
            out[z] = new
            prev = new
    yield Progress(total, total, f"Propagated to {len(out)} plane(s)")
    return out


def paste_objects(objects: list[dict], region: Tile) -> list[np.ndarray]:
    """The shown mask of every object as a bool array of ``region`` (masks placed at their origin)."""
    out = []
    for obj in objects:
        mask = np.asarray(obj["masks"][obj["choice"]], dtype=bool)
        r, c = obj.get("origin", (0, 0))
        full = np.zeros((region.r1 - region.r0, region.c1 - region.c0), dtype=bool)
        rr0, cc0 = r - region.r0, c - region.c0
        full[rr0: rr0 + mask.shape[0], cc0: cc0 + mask.shape[1]] = mask
        out.append(full)
    return out


def objects_region(objects: list[dict], limit: int | None = None) -> Tile:
    """The smallest rectangle holding every object's window; InputError when over ``limit`` pixels."""
    wins = [o["window"] for o in objects]
    region = Tile.bounding(wins)
    pixels = (region.r1 - region.r0) * (region.c1 - region.c0)
    if limit is not None and pixels > limit:
        raise InputError(
            f"The objects lie {region.r1 - region.r0:,} x {region.c1 - region.c0:,} pixels apart; commit them one "
            "at a time (prompt and commit each object separately)."
        )
    return region
