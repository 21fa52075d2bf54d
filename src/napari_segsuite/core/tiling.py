"""Tiles: the one place that cuts an image into windows and blends what they give.

- :class:`Tile`: a window of the image as slices (``image[tile.slices]``),
  and the part of the image it owns (its *core*, ``core_slices``), for tasks
  that keep each pixel from one tile only;
- :func:`axis_starts`: the one rule for where tiles start along an axis
  (advance by ``tile - overlap``, the last tile flush with the image end);
- :func:`tile_grid`: overlapping tiles of one size covering an image, row by
  row (instance tiling, segment everything, U-Net prediction), with cores that
  partition the image (each from the middle of its overlap with the previous
  tile to the middle of its overlap with the next);
  :func:`halo_grid`: non-overlapping cores with a halo of context around each
  (batch chunking); :func:`make_grid` / :class:`TileGrid`: the same starts as
  a product of row and column starts, for blending cell by cell;
- :func:`axis_window` (built on :func:`ramp`): the one blending window, a
  raised cosine with a floor over the overlap on every side that touches
  another tile, 1 elsewhere and along the image border.

Tiled semantic inference (:func:`blend_tiles`) runs in bounded memory: each
tile's per-class scores are weighted by the window, summed, divided by the
summed weights and reduced to a class per pixel (argmax).

- the input is read one tile at a time (``image[y0:y1, x0:x1]``), so numpy
  memmaps, dask and zarr arrays are never loaded whole;
- the tile boundaries cut the image into *cells* (rectangles covered by the
  same set of tiles). A cell's score accumulator lives only from the first to
  the last tile that covers it; then the cell is finalised (argmax, optional
  confidence) and written into the output, which may itself be a memmap or a
  zarr array. With tiles processed row by row, the live accumulators are the
  bottom overlap strip of one tile row and the current tile: about
  ``classes x (overlap x width + tile²)`` float32 values.

The grid is the product of a row grid and a column grid, so the summed weight
at a pixel is the product of two 1D sums (:func:`axis_weight_sum`).

With one tile covering the whole image the weights are all exactly 1, so the
result equals running the model on the whole image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np

from napari_segsuite.core.errors import InputError

#: Smallest weight of the blending window (at the outermost overlap pixel).
WINDOW_FLOOR = 0.02


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis.

    Tiles advance by ``tile - overlap``; the last one is aligned with the end
    of the axis, so every tile is full size when ``length >= tile``. An axis no
    longer than a tile has one tile.

    Parameters
    ----------
    length : int
        Length of the axis in pixels.
    tile : int
        Tile length.
    overlap : int
        Minimum overlap of neighbouring tiles, ``0 <= overlap < tile``.

    Returns
    -------
    list of int
    """
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise InputError(f"The overlap ({overlap}) must be at least 0 and smaller than the tile ({tile}).")
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    starts = [min(i * stride, length - tile) for i in range(n)]
    return sorted(set(starts))


@dataclass(frozen=True)
class Tile:
    """A window of an image, as slices, and the part of the image it owns.

    Parameters
    ----------
    rows, cols : slice
        The window: ``image[tile.slices]`` is ``image[rows, cols]`` (steps of 1,
        ends exclusive).
    owned : (slice, slice), optional
        The part of the image this tile owns (its *core*), for tasks that keep
        each pixel from one tile only; the whole window when not given.
    index : int
        Position in its grid (raster order).

    Two tiles are equal when their windows are. :attr:`r0`, :attr:`r1`,
    :attr:`c0`, :attr:`c1` and :attr:`window` / :attr:`core` (``(r0, r1, c0,
    c1)``, the order of the slices) give the same bounds as numbers.
    """

    rows: slice
    cols: slice
    owned: tuple[slice, slice] | None = field(default=None, compare=False)
    index: int = field(default=0, compare=False)

    def __post_init__(self):
        if not (isinstance(self.rows, slice) and isinstance(self.cols, slice)):
            raise TypeError(f"Tile takes slices: Tile(slice(r0, r1), slice(c0, c1)), not {self.rows!r}, {self.cols!r}")

    def __hash__(self) -> int:
        return hash(self.window)

    def __repr__(self) -> str:
        return f"Tile[{self.r0}:{self.r1}, {self.c0}:{self.c1}]"

    @property
    def slices(self) -> tuple[slice, slice]:
        """The window as an index of a (H, W, ...) array."""
        return self.rows, self.cols

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """The owned part as an index of the image."""
        return self.owned if self.owned is not None else self.slices

    #: The window's first row, end row (exclusive), first column and end column.
    r0 = property(lambda self: self.rows.start)
    r1 = property(lambda self: self.rows.stop)
    c0 = property(lambda self: self.cols.start)
    c1 = property(lambda self: self.cols.stop)

    @property
    def shape(self) -> tuple[int, int]:
        """Rows and columns of the window."""
        return self.r1 - self.r0, self.c1 - self.c0

    @property
    def window(self) -> tuple[int, int, int, int]:
        """The window's bounds ``(r0, r1, c0, c1)``, the order of :attr:`slices`."""
        return self.r0, self.r1, self.c0, self.c1

    @property
    def core(self) -> tuple[int, int, int, int]:
        """The owned part's bounds ``(r0, r1, c0, c1)``."""
        rows, cols = self.core_slices
        return rows.start, rows.stop, cols.start, cols.stop

    def core_in_window(self) -> tuple[slice, slice]:
        """The owned part as an index of the window's own array."""
        rows, cols = self.core_slices
        return slice(rows.start - self.r0, rows.stop - self.r0), slice(cols.start - self.c0, cols.stop - self.c0)

    @staticmethod
    def bounding(tiles) -> Tile:
        """The smallest window holding every one of ``tiles``."""
        tiles = list(tiles)
        return Tile(slice(min(t.r0 for t in tiles), max(t.r1 for t in tiles)),
                    slice(min(t.c0 for t in tiles), max(t.c1 for t in tiles)))

    def intersect(self, other: Tile) -> Tile | None:
        """The window both tiles cover, or None."""
        r0, c0 = max(self.r0, other.r0), max(self.c0, other.c0)
        r1, c1 = min(self.r1, other.r1), min(self.c1, other.c1)
        return Tile(slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None


def axis_cores(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """Where each tile's share of an axis begins and ends: from the middle of its
    overlap with the previous tile to the middle of its overlap with the next
    (half-integers where an overlap is odd); the shares partition ``[0, length)``."""
    ends = [min(s + tile, length) for s in starts]
    out = []
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        lo = 0.0 if i == 0 else (s + ends[i - 1]) / 2
        hi = float(length) if i == len(starts) - 1 else (starts[i + 1] + e) / 2
        out.append((lo, hi))
    return out


def tile_grid(shape: tuple[int, int], tile_size: int | None, overlap: int = 64) -> list[Tile]:
    """Overlapping tiles covering an image of ``shape`` (rows, cols), row by row.

    Parameters
    ----------
    shape : (int, int)
        Image size.
    tile_size : int or None
        Tile edge in pixels; None or 0 (or a tile at least as large as the
        image) gives a single tile.
    overlap : int
        Pixels shared by neighbouring tiles, ``0 <= overlap < tile_size``.

    Returns
    -------
    list of Tile
        Each with its core (:func:`axis_cores`, rounded up to whole pixels),
        so the cores partition the image.
    """
    h, w = int(shape[0]), int(shape[1])
    if tile_size is None or tile_size <= 0:
        return [Tile(slice(0, h), slice(0, w))]
    tile_size, overlap = int(tile_size), int(overlap)
    if not 0 <= overlap < tile_size:
        raise InputError(f"The tile overlap ({overlap}) must be at least 0 and smaller than the tile ({tile_size}).")
    ys, xs = axis_starts(h, tile_size, overlap), axis_starts(w, tile_size, overlap)
    ycores, xcores = axis_cores(ys, tile_size, h), axis_cores(xs, tile_size, w)
    tiles = []
    for y, (cy0, cy1) in zip(ys, ycores, strict=True):
        for x, (cx0, cx1) in zip(xs, xcores, strict=True):
            core = slice(math.ceil(cy0), math.ceil(cy1)), slice(math.ceil(cx0), math.ceil(cx1))
            tiles.append(Tile(slice(y, min(y + tile_size, h)), slice(x, min(x + tile_size, w)), core, len(tiles)))
    return tiles


def halo_grid(shape: tuple[int, int], core: int, halo: int) -> list[Tile]:
    """Cores of ``core`` x ``core`` pixels from the top-left corner, each in a window with
    ``halo`` pixels of context on every side (cut at the image border), row by row."""
    if halo < 0 or halo >= core:
        raise InputError(f"The overlap must be between 0 and the chunk size, got {halo}.")
    h, w = int(shape[0]), int(shape[1])
    tiles = []
    for r0 in range(0, h, core):
        for c0 in range(0, w, core):
            r1, c1 = min(r0 + core, h), min(c0 + core, w)
            window = slice(max(r0 - halo, 0), min(r1 + halo, h)), slice(max(c0 - halo, 0), min(c1 + halo, w))
            tiles.append(Tile(*window, (slice(r0, r1), slice(c0, c1)), len(tiles)))
    return tiles


def ramp(n: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """A raised-cosine ramp of ``n`` values rising from about ``floor`` towards 1."""
    if n <= 0:
        return np.zeros(0, dtype=np.float64)
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return floor + (1.0 - floor) * 0.5 * (1.0 - np.cos(np.pi * t))


def axis_window(start: int, stop: int, length: int, overlap: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """Blending weights (float64) of one tile ``[start, stop)`` along an axis of ``length``.

    The weight is 1 except over ``overlap`` pixels at each end that lies inside
    the image (an end on the image border keeps weight 1).
    """
    n = stop - start
    w = np.ones(n, dtype=np.float64)
    k = min(overlap, n // 2)
    if k > 0:
        r = ramp(k, floor)
        if start > 0:
            w[:k] = np.minimum(w[:k], r)
        if stop < length:
            w[n - k:] = np.minimum(w[n - k:], r[::-1])
    return w


def tile_window(tile: Tile, shape: tuple[int, int], overlap: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """The 2D blending window (float32) of ``tile`` in an image of ``shape``: the outer
    product of its row and column :func:`axis_window`."""
    wy = axis_window(tile.r0, tile.r1, int(shape[0]), overlap, floor)
    wx = axis_window(tile.c0, tile.c1, int(shape[1]), overlap, floor)
    return np.outer(wy, wx).astype(np.float32)


def axis_weight_sum(starts: list[int], tile: int, length: int, overlap: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """Sum of the windows of all tiles along an axis (float64, all values > 0)."""
    total = np.zeros(length, dtype=np.float64)
    for s in starts:
        e = min(s + tile, length)
        total[s:e] += axis_window(s, e, length, overlap, floor)
    return total


@dataclass(frozen=True)
class TileGrid:
    """Tiles of an image of ``shape``: a product of row and column tiles.

    Attributes
    ----------
    shape : (int, int)
        Image (rows, cols).
    tile : (int, int)
        Tile (rows, cols), at most the image size.
    overlap : int
        Minimum overlap of neighbours in pixels.
    ys, xs : tuple of int
        Tile starts along rows and columns.
    """

    shape: tuple[int, int]
    tile: tuple[int, int]
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return len(self.ys) * len(self.xs)

    def tiles(self):
        """``(row, col, (y0, y1, x0, x1))`` of every tile, row by row."""
        th, tw = self.tile
        for r, y in enumerate(self.ys):
            for c, x in enumerate(self.xs):
                yield r, c, (y, min(y + th, self.shape[0]), x, min(x + tw, self.shape[1]))


def make_grid(shape: tuple[int, int], tile_size: int | None, overlap: int = 64) -> TileGrid:
    """The tile grid of an image.

    Parameters
    ----------
    shape : (int, int)
        Image rows and columns.
    tile_size : int or None
        Square tile side; None means one tile covering the whole image.
    overlap : int
        Overlap of neighbouring tiles; reduced to less than half a tile.

    Returns
    -------
    TileGrid
    """
    h, w = (int(s) for s in shape)
    if tile_size is None:
        th, tw = h, w
        overlap = 0
    else:
        tile_size = int(tile_size)
        if tile_size < 1:
            raise InputError(f"The tile size must be positive, got {tile_size}.")
        if overlap < 0:
            raise InputError(f"The overlap must not be negative, got {overlap}.")
        overlap = min(int(overlap), (tile_size - 1) // 2)
        th, tw = min(tile_size, h), min(tile_size, w)
    return TileGrid(
        shape=(h, w), tile=(th, tw), overlap=overlap,
        ys=tuple(axis_starts(h, th, overlap)), xs=tuple(axis_starts(w, tw, overlap)),
    )


def _cells(starts: tuple[int, ...], tile: int, length: int):
    """Cut an axis at every tile start and end.

    Returns
    -------
    bounds : list of (int, int)
        The cells ``[a, b)``.
    first, last : list of int
        For each cell, the first and last tile (index into ``starts``) covering it.
    """
    cuts = sorted({0, length, *starts, *(min(s + tile, length) for s in starts)})
    bounds = list(itertools.pairwise(cuts))
    first, last = [], []
    for a, b in bounds:
        covering = [i for i, s in enumerate(starts) if s <= a and min(s + tile, length) >= b]
        first.append(covering[0])
        last.append(covering[-1])
    return bounds, first, last


def scores_to_confidence(scores: np.ndarray, kind: str) -> np.ndarray:
    """Confidence of the winning class per pixel from (C, H, W) scores.

    ``kind="logits"``: the largest softmax probability. ``kind="scores"``
    (non-negative class scores, e.g. Mask2Former's): the winner's share of the
    summed scores.
    """
    if kind == "logits":
        top = scores.max(axis=0)
        denom = np.exp(scores - top[None]).sum(axis=0)
        return (1.0 / denom).astype(np.float32)
    top = scores.max(axis=0)
    total = np.clip(scores, 0, None).sum(axis=0)
    out = np.divide(top, total, out=np.zeros_like(top), where=total > 0)
    return out.astype(np.float32)


def blend_tiles(
    grid: TileGrid,
    predict: Callable[[tuple[int, int, int, int]], np.ndarray],
    labels_out,
    *,
    confidence_out=None,
    kind: str = "logits",
    label_offset: int = 1,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Run ``predict`` on every tile, blend, and write class labels cell by cell.

    Parameters
    ----------
    grid : TileGrid
    predict : callable
        ``predict((y0, y1, x0, x1))`` returns (C, y1 - y0, x1 - x0) scores of
        that window; it reads the image itself.
    labels_out : array-like (H, W)
        Receives ``argmax + label_offset`` (numpy, memmap, zarr: anything with
        slice assignment).
    confidence_out : array-like (H, W), optional
        Receives the confidence (see :func:`scores_to_confidence`).
    kind : {"logits", "scores"}
        What ``predict`` returns, for the confidence.
    label_offset : int
        Added to the class index.

    Yields
    ------
    (int, int)
        (tiles done, total tiles) after each tile: the place to cancel.

    Returns
    -------
    ndarray of int64
        Pixel count per class index (length C).
    """
    (h, w), (th, tw), overlap = grid.shape, grid.tile, grid.overlap
    ybounds, _yfirst, ylast = _cells(grid.ys, th, h)
    xbounds, _xfirst, xlast = _cells(grid.xs, tw, w)
    wy_sum = axis_weight_sum(list(grid.ys), th, h, overlap)
    wx_sum = axis_weight_sum(list(grid.xs), tw, w, overlap)
    acc: dict[tuple[int, int], np.ndarray] = {}
    counts: np.ndarray | None = None
    n_classes: int | None = None
    done = 0
    for r, c, (y0, y1, x0, x1) in grid.tiles():
        scores = np.asarray(predict((y0, y1, x0, x1)))
        if scores.ndim != 3 or scores.shape[1:] != (y1 - y0, x1 - x0):
            raise RuntimeError(
                f"The model returned scores of shape {scores.shape} for a {y1 - y0}x{x1 - x0} tile."
            )
        if n_classes is None:
            n_classes = scores.shape[0]
            counts = np.zeros(n_classes, dtype=np.int64)
        elif scores.shape[0] != n_classes:
            raise RuntimeError(f"The model returned {scores.shape[0]} classes, then {n_classes}.")
        if grid.n_tiles > 1:
            scores = scores.astype(np.float32, copy=True)
            scores *= axis_window(y0, y1, h, overlap).astype(np.float32)[None, :, None]
            scores *= axis_window(x0, x1, w, overlap).astype(np.float32)[None, None, :]
        for i, (a, b) in enumerate(ybounds):
            if a < y0 or b > y1:
                continue
            for j, (p, q) in enumerate(xbounds):
                if p < x0 or q > x1:
                    continue
                part = scores[:, a - y0:b - y0, p - x0:q - x0]
                key = (i, j)
                if key in acc:
                    acc[key] += part
                else:
                    acc[key] = np.array(part, dtype=np.float32, copy=True)
                if ylast[i] == r and xlast[j] == c:
                    cell = acc.pop(key)
                    if grid.n_tiles > 1:
                        cell /= (wy_sum[a:b, None] * wx_sum[None, p:q]).astype(np.float32)[None]
                    idx = cell.argmax(axis=0)
                    counts += np.bincount(idx.ravel(), minlength=n_classes)[:n_classes]
                    labels_out[a:b, p:q] = idx + label_offset
                    if confidence_out is not None:
                        confidence_out[a:b, p:q] = scores_to_confidence(cell, kind)
        done += 1
        yield done, grid.n_tiles
    if acc:  # every cell has a last tile; this would be a bug in _cells
        raise RuntimeError(f"{len(acc)} cells were not finalised.")
    return counts if counts is not None else np.zeros(0, dtype=np.int64)


# -- reading tiles ---------------------------------------------------------------

#: Channel counts a semantic model's RGB input can be made from.
ACCEPTED_CHANNELS = (1, 3, 4)
#: Pixels read to estimate the intensity range of a large image.
STATS_PIXELS = 2_000_000


def check_image(image, *, min_side: int = 16) -> tuple[int, int, int]:
    """Validate a 2D image (H, W) or (H, W, C) without reading its pixels.

    Parameters
    ----------
    image : array-like
        numpy, memmap, dask or zarr array.
    min_side : int
        The smallest accepted height and width.

    Returns
    -------
    (int, int, int)
        Height, width and channels (1 for (H, W)).

    Raises
    ------
    InputError
        For other numbers of axes, channels other than 1, 3 or 4, images
        smaller than ``min_side``, and non-numeric dtypes.
    """
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        image = np.asarray(image)
    # never np.asarray a lazy array here: that would read all of it
    shape = tuple(int(s) for s in image.shape)
    dtype = np.dtype(image.dtype)
    if len(shape) not in (2, 3):
        raise InputError(
            f"Expected a 2D image (H, W) or (H, W, channels), got an array of shape {shape}. "
            "Segment a stack plane by plane (the widget's 'all planes' does this)."
        )
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    if c not in ACCEPTED_CHANNELS:
        raise InputError(
            f"The image has {c} channels, but semantic models take a greyscale (1 channel), "
            f"RGB (3) or RGBA (4) image. Pick one or three channels (e.g. image[..., :3]), "
            f"or put the channels on another axis and segment each channel."
        )
    if dtype.kind not in "biuf":
        raise InputError(f"Images of dtype {dtype} are not supported; use integers or floats.")
    if h < min_side or w < min_side:
        raise InputError(
            f"The image is {h}x{w} pixels; semantic segmentation needs at least {min_side}x{min_side}. "
            "Use a larger image or region."
        )
    return h, w, c


def _finite_or_raise(arr: np.ndarray, where: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = "NaN" if np.isnan(arr).any() else "infinite"
        raise InputError(
            f"The image contains {bad} values ({where}). Replace them first, "
            "e.g. with numpy.nan_to_num, or crop them away."
        )


class TileReader:
    """Reads windows of a large image as (h, w, 3) uint8 with one intensity scaling.

    uint8 images are used as they are. Any other dtype is scaled per channel
    from its low and high percentiles, estimated once from the whole image (a
    regular subsample of at most :data:`STATS_PIXELS` pixels for big images),
    so that every tile is scaled the same way. Greyscale is repeated into three
    channels and RGBA loses its alpha, as :func:`~napari_segsuite.core.image.prepare_rgb_uint8`
    does.

    Parameters
    ----------
    image : array-like
        (H, W) or (H, W, C) numpy, memmap, dask or zarr array; read lazily.
    percentiles : (float, float)
        Low and high percentile for non-uint8 data.
    min_side : int
        Smallest accepted side (see :func:`check_image`).

    Raises
    ------
    InputError
        See :func:`check_image`; NaN or infinite values in a float image.
    """

    def __init__(self, image, percentiles: tuple[float, float] = (1.0, 99.8), *, min_side: int = 16):
        if not (hasattr(image, "shape") and hasattr(image, "dtype")):
            image = np.asarray(image)
        self.image = image
        self.height, self.width, self.channels = check_image(image, min_side=min_side)
        self.dtype = np.dtype(image.dtype)
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        if self.dtype != np.uint8:
            self._estimate_range(percentiles)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    def _estimate_range(self, percentiles: tuple[float, float]) -> None:
        n = self.height * self.width
        step = max(1, math.ceil(math.sqrt(n / STATS_PIXELS)))
        view = self.image[::step, ::step]
        sample = np.asarray(view)
        if sample.dtype == bool:
            sample = sample.astype(np.uint8)
        sample = sample.reshape(sample.shape[0] * sample.shape[1], -1)
        _finite_or_raise(sample, "found while estimating its intensity range")
        lo = np.percentile(sample, percentiles[0], axis=0)
        hi = np.percentile(sample, percentiles[1], axis=0)
        flat = hi <= lo
        if flat.any():
            lo = np.where(flat, sample.min(axis=0), lo)
            hi = np.where(flat, sample.max(axis=0), hi)
        self.lo, self.hi = lo.astype(np.float64), hi.astype(np.float64)

    def read(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """The window ``(y0, y1, x0, x1)`` as (h, w, 3) uint8."""
        y0, y1, x0, x1 = window
        arr = np.asarray(self.image[y0:y1, x0:x1])
        if arr.ndim == 2:
            arr = arr[..., None]
        if self.dtype == np.uint8:
            out = arr
        else:
            if arr.dtype == bool:
                arr = arr.astype(np.uint8)
            _finite_or_raise(arr, f"in rows {y0}-{y1}, columns {x0}-{x1}")
            span = self.hi - self.lo
            scaled = np.zeros(arr.shape, dtype=np.float32)
            ok = span > 0
            if ok.any():
                scaled[..., ok] = (arr[..., ok].astype(np.float64) - self.lo[ok]) / span[ok]
            np.clip(scaled, 0.0, 1.0, out=scaled)
            out = np.round(scaled * 255.0).astype(np.uint8)
        c = out.shape[-1]
        if c == 1:
            out = np.repeat(out, 3, axis=-1)
        elif c == 4:
            out = out[..., :3]
        return np.ascontiguousarray(out)
