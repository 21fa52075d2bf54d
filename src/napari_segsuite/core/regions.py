"""Regions of large planes: a rectangle of a plane, a lazy view of it, and a memory check.

- :class:`Region`: rows ``r0:r1`` and columns ``c0:c1`` of a plane (level-0 pixels);
  :func:`clip_region` keeps the part inside the plane and refuses a region outside it.
- :class:`LazyView`: a plane (ints on the leading axes) and a region of an array, indexed
  like a 2D (or 2D + channels) array without reading anything: slicing it reads only the
  window asked for from the underlying numpy, dask or zarr array, so tiled code that reads
  ``view[y0:y1, x0:x1]`` reads only those pixels of a 40,000-pixel plane.
- :func:`check_fits_memory`: refuses a window whose working arrays would not fit in the
  memory available now, with a message that names the way out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_segsuite.core.errors import InputError


@dataclass(frozen=True)
class Region:
    """Rows ``r0:r1`` and columns ``c0:c1`` of a plane (stop exclusive)."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return self.r1 - self.r0, self.c1 - self.c0

    @property
    def size(self) -> int:
        """Pixels."""
        return max(0, self.r1 - self.r0) * max(0, self.c1 - self.c0)

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(slice(r0, r1), slice(c0, c1))``."""
        return slice(self.r0, self.r1), slice(self.c0, self.c1)

    def as_list(self) -> list[int]:
        """``[r0, r1, c0, c1]`` (plain data for metadata)."""
        return [self.r0, self.r1, self.c0, self.c1]

    @classmethod
    def whole(cls, shape: tuple[int, int]) -> Region:
        """The whole plane of ``shape``."""
        return cls(0, int(shape[0]), 0, int(shape[1]))


def clip_region(r0: float, r1: float, c0: float, c1: float, shape: tuple[int, int], *,
                what: str = "The region", min_side: int = 1) -> Region:
    """The part of the rectangle ``[r0, r1) x [c0, c1)`` inside a plane of ``shape``.

    Corners are rounded outwards to whole pixels; corners may come in any order.

    Raises
    ------
    InputError
        When the rectangle does not overlap the plane, or the overlap is thinner than ``min_side``.
    """
    h, w = int(shape[0]), int(shape[1])
    a0, a1 = sorted((float(r0), float(r1)))
    b0, b1 = sorted((float(c0), float(c1)))
    region = Region(max(0, int(np.floor(a0))), min(h, int(np.ceil(a1))),
                    max(0, int(np.floor(b0))), min(w, int(np.ceil(b1))))
    if region.r1 <= region.r0 or region.c1 <= region.c0:
        raise InputError(
            f"{what} (rows {a0:.0f}-{a1:.0f}, columns {b0:.0f}-{b1:.0f}) lies outside the image "
            f"({h} x {w} pixels); move it onto the image."
        )
    if min(region.shape) < min_side:
        raise InputError(
            f"{what} is {region.shape[0]} x {region.shape[1]} pixels inside the image; it needs at least "
            f"{min_side} x {min_side}."
        )
    return region


class LazyView:
    """A plane and region of an array, read only where it is sliced.

    Parameters
    ----------
    array : array-like
        numpy, memmap, dask or zarr; anything with ``shape``, ``dtype`` and ``__getitem__``.
    index : tuple
        Ints on the leading (non-plane) axes and ``slice(None)`` on the plane's two axes (and
        a trailing channel axis), as :attr:`napari_segsuite.layers.PlaneSelection.index`.
    region : Region, optional
        The rectangle of the plane the view shows (the whole plane when None).

    The view has ``shape`` ``(rows, cols)`` or ``(rows, cols, channels)``. Indexing with
    slices (and ints) reads exactly that window; ``numpy.asarray(view)`` reads the region.
    """

    def __init__(self, array, index: tuple, region: Region | None = None):
        self.array = array
        self.index = tuple(index)
        free = [a for a, i in enumerate(self.index) if isinstance(i, slice)]
        if len(free) < 2:
            raise InputError(f"A plane needs two free axes, the index {self.index} fixes all but {len(free)}.")
        self.plane_axes = (free[0], free[1])
        self.extra_axes = tuple(free[2:])
        full = tuple(int(array.shape[a]) for a in self.plane_axes)
        self.region = region or Region.whole(full)
        self.shape = (*self.region.shape, *(int(array.shape[a]) for a in self.extra_axes))
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    @property
    def size(self) -> int:
        """Elements of the view."""
        return int(np.prod(self.shape, dtype=np.int64))

    def _axis(self, key, length: int, offset: int):
        if isinstance(key, int | np.integer):
            k = int(key) + (length if key < 0 else 0)
            if not 0 <= k < length:
                raise IndexError(f"index {key} out of range for length {length}")
            return offset + k
        if not isinstance(key, slice):
            raise TypeError("A LazyView takes ints and slices.")
        start, stop, step = key.indices(length)
        return slice(offset + start, offset + max(start, stop), step)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        full = list(self.index)
        offsets = (self.region.r0, self.region.c0) + (0,) * len(self.extra_axes)
        for pos, axis in enumerate((*self.plane_axes, *self.extra_axes)):
            full[axis] = self._axis(key[pos], self.shape[pos], offsets[pos])
        return np.asarray(self.array[tuple(full)])

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),) * self.ndim]
        return out.astype(dtype) if dtype is not None else out

    def sub(self, region: Region) -> LazyView:
        """A view of ``region`` (coordinates of this view) of this view."""
        return LazyView(self.array, self.index, Region(
            self.region.r0 + region.r0, self.region.r0 + region.r1,
            self.region.c0 + region.c0, self.region.c0 + region.c1,
        ))


#: Part of the available memory one window's working arrays may take.
MEMORY_SHARE = 0.5


def _read_int(*paths: str) -> int | None:
    from pathlib import Path

    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


def available_memory() -> int:
    """Bytes of memory available now (psutil; the cgroup's limit minus its use where smaller)."""
    import psutil

    avail = int(psutil.virtual_memory().available)
    limit = _read_int("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    if limit is not None:
        used = _read_int("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes") or 0
        avail = min(avail, max(0, limit - used))
    return avail


def check_fits_memory(pixels: int, bytes_per_pixel: int, what: str, *, available: int | None = None) -> None:
    """Refuse a window whose working arrays (``pixels x bytes_per_pixel``) exceed the memory share.

    Raises
    ------
    InputError
        Naming the window's need, the memory available, and the ways out (a smaller region or
        the whole plane in chunks).
    """
    need = int(pixels) * int(bytes_per_pixel)
    avail = available_memory() if available is None else int(available)
    if need > MEMORY_SHARE * avail:
        raise InputError(
            f"{what} needs about {need / 2**30:.1f} GiB of memory at once, but only "
            f"{avail / 2**30:.1f} GiB is available. Zoom in or draw a smaller rectangle, or run on the "
            "whole plane, which goes in chunks."
        )
