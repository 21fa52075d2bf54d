"""Images larger than memory for tests and benchmarks: a synthetic slide and read counting.

- :func:`blobs` draws any window of an endless synthetic slide from its global pixel
  coordinates: a dim, noisy background with textured round blobs of two sizes (small ones
  about 16-48 pixels wide on a 64-pixel grid, large ones about 120-220 pixels wide on a
  512-pixel grid), so any window is drawn alone and neighbouring windows join seamlessly.
  The grids are offset from the origin, so objects cross the borders of power-of-two chunks.
  :func:`blob_truth` gives the objects' ids at the same coordinates.
- :func:`write_synthetic_slide` writes that slide as a multiscale uint8 OME-Zarr (zarr v3,
  OME-NGFF 0.5 layout: levels ``0``, ``1``, ... each half the size of the one before,
  ``ome.multiscales`` in the root's attributes), chunk by chunk, in bounded memory (a
  40,000 x 40,000 slide never exists in RAM). :func:`open_slide` gives its levels as zarr
  arrays, the list a multiscale napari layer takes.
- :func:`synthetic_volume`: a lazy dask ``(Z, H, W)`` volume of the same blobs, computed
  chunk by chunk when read (any size, nothing on disk).
- :class:`ReadCounter` / :func:`counting_dask`: a dask array whose every chunk read is
  recorded, to prove that code reads only the regions it needs.

From the command line: ``python -m napari_segsuite.testing.large_images slide.zarr --size 40000``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Spacing of the small-blob grid, and its offset from the origin.
SMALL_CELL, SMALL_OFFSET = 64, 37
#: Spacing of the large-blob grid, and its offset from the origin.
LARGE_CELL, LARGE_OFFSET = 512, 201
#: Small blob radii (pixels) and the share of grid cells that hold one.
SMALL_RADIUS, SMALL_FILL = (8.0, 24.0), 0.55
#: Large blob radii and the share of cells that hold one.
LARGE_RADIUS, LARGE_FILL = (60.0, 110.0), 0.35

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: well-spread 64-bit values from integer keys (uint64, wraps)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform(cy: np.ndarray, cx: np.ndarray, seed: int, k: int) -> np.ndarray:
    """A uniform [0, 1) value per (cy, cx) grid cell, the ``k``-th of the cell (float64)."""
    with np.errstate(over="ignore"):
        key = (cy.astype(np.int64).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
               + cx.astype(np.int64).astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
               + np.uint64(seed * 1000003 + k * 7919 + 1))
    return (_mix(key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class _Cells:
    """The blob of every grid cell a window touches: presence, centre, radius, texture phase."""

    cy: np.ndarray  # cell row of each window row
    cx: np.ndarray  # cell column of each window column
    present: np.ndarray
    centre_y: np.ndarray
    centre_x: np.ndarray
    radius: np.ndarray
    phase: np.ndarray


def _cells(rows: np.ndarray, cols: np.ndarray, cell: int, offset: int, radius: tuple[float, float],
           fill: float, seed: int) -> _Cells:
    cy = np.floor_divide(rows + offset, cell)
    cx = np.floor_divide(cols + offset, cell)
    uy, ux = np.unique(cy), np.unique(cx)
    gy, gx = np.meshgrid(uy, ux, indexing="ij")
    r = (radius[0] + _uniform(gy, gx, seed, 1) * (radius[1] - radius[0])).astype(np.float32)
    slack = cell / 2 - r - 1  # the blob stays inside its cell
    centre_y = gy * cell - offset + cell / 2 + (_uniform(gy, gx, seed, 2) - 0.5) * 2 * slack
    centre_x = gx * cell - offset + cell / 2 + (_uniform(gy, gx, seed, 3) - 0.5) * 2 * slack
    return _Cells(
        cy=np.searchsorted(uy, cy), cx=np.searchsorted(ux, cx), present=_uniform(gy, gx, seed, 0) < fill,
        centre_y=centre_y.astype(np.float32), centre_x=centre_x.astype(np.float32), radius=r,
        phase=(_uniform(gy, gx, seed, 4) * 2 * np.pi).astype(np.float32),
    )


def _inside(rows: np.ndarray, cols: np.ndarray, c: _Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(soft coverage 0..1, cos and sin of the texture phase) of the cells' blobs at the pixels.

    Cell by cell on contiguous blocks of the window when it holds few cells (a full-resolution
    chunk), else one gather per pixel (a coarse level's chunk spans many cells).
    """
    ny, nx = c.present.shape
    cosp, sinp = np.cos(c.phase), np.sin(c.phase)
    if ny * nx > 2048:
        iy, ix = c.cy[:, None], c.cx[None, :]
        dy = rows[:, None] - c.centre_y[iy, ix]
        dx = cols[None, :] - c.centre_x[iy, ix]
        d = np.sqrt(dy * dy + dx * dx)
        cover = np.clip((c.radius[iy, ix] - d) / 1.5 + 0.5, 0.0, 1.0) * c.present[iy, ix]
        return cover.astype(np.float32), cosp[iy, ix], sinp[iy, ix]
    cover = np.zeros((len(rows), len(cols)), np.float32)
    cos_out = np.zeros_like(cover)
    sin_out = np.zeros_like(cover)
    ry = np.flatnonzero(np.diff(c.cy, prepend=-1, append=-1))  # block edges along rows
    rx = np.flatnonzero(np.diff(c.cx, prepend=-1, append=-1))
    for a0, a1 in itertools.pairwise(ry):
        i = c.cy[a0]
        for b0, b1 in itertools.pairwise(rx):
            j = c.cx[b0]
            cos_out[a0:a1, b0:b1] = cosp[i, j]
            sin_out[a0:a1, b0:b1] = sinp[i, j]
            if not c.present[i, j]:
                continue
            dy = rows[a0:a1] - c.centre_y[i, j]
            dx = cols[b0:b1] - c.centre_x[i, j]
            d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
            cover[a0:a1, b0:b1] = np.clip((c.radius[i, j] - d) / 1.5 + 0.5, 0.0, 1.0)
    return cover, cos_out, sin_out


def blobs(rows: np.ndarray, cols: np.ndarray, seed: int = 0) -> np.ndarray:
    """The synthetic slide's uint8 pixels at global coordinates ``rows`` x ``cols``.

    Parameters
    ----------
    rows, cols : ndarray of int
        Global row and column coordinates (any, e.g. a window ``arange(r0, r1)`` or every
        second pixel for a coarser level).
    seed : int
        Which slide.

    Returns
    -------
    ndarray (len(rows), len(cols)) uint8
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    ry, cx = rows.astype(np.float32), cols.astype(np.float32)
    small, scos, ssin = _inside(ry, cx, _cells(rows, cols, SMALL_CELL, SMALL_OFFSET, SMALL_RADIUS, SMALL_FILL,
                                               seed))
    large, lcos, lsin = _inside(ry, cx, _cells(rows, cols, LARGE_CELL, LARGE_OFFSET, LARGE_RADIUS, LARGE_FILL,
                                               seed + 17))
    small *= 1.0 - large  # small blobs give way to large ones
    # sin(a + phase) = sin a cos phase + cos a sin phase: the trigonometry stays 1D
    a = ry * np.float32(0.31)
    texture = (np.sin(a)[:, None] * scos + np.cos(a)[:, None] * ssin) * np.sin(cx * np.float32(0.27))[None, :]
    # stripes sin(0.15 (r + c) + phase), expanded the same way
    u, v = ry * np.float32(0.15), cx * np.float32(0.15)
    su, cu, sv, cv = np.sin(u)[:, None], np.cos(u)[:, None], np.sin(v)[None, :], np.cos(v)[None, :]
    stripes = (su * cv + cu * sv) * lcos + (cu * cv - su * sv) * lsin
    # pixel noise from a fixed table indexed by the global coordinates (same pixel, same value)
    noise = _noise_table(seed)[np.ix_(rows % _NOISE_SHAPE[0], cols % _NOISE_SHAPE[1])]
    out = 40.0 + 24.0 * noise
    out += small * (110.0 + 30.0 * texture)
    out += large * (150.0 + 25.0 * stripes)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


_NOISE_SHAPE = (509, 521)  # coprime sides: the table's repeat is not visible as a grid


@functools.lru_cache(maxsize=8)
def _noise_table(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed + 99).random(_NOISE_SHAPE, dtype=np.float32) - 0.5)


def blob_truth(rows: np.ndarray, cols: np.ndarray, seed: int = 0) -> np.ndarray:
    """Object ids of :func:`blobs` at the same coordinates (int64, 0 = background).

    Small blobs have ids from their grid cell, large ones ids above ``2**40``; a pixel
    is an object's when at least half covered by it.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    ry, cx = rows.astype(np.float64), cols.astype(np.float64)
    cs = _cells(rows, cols, SMALL_CELL, SMALL_OFFSET, SMALL_RADIUS, SMALL_FILL, seed)
    cl = _cells(rows, cols, LARGE_CELL, LARGE_OFFSET, LARGE_RADIUS, LARGE_FILL, seed + 17)
    small = _inside(ry, cx, cs)[0]
    large = _inside(ry, cx, cl)[0]
    sy = np.floor_divide(rows + SMALL_OFFSET, SMALL_CELL)[:, None]
    sx = np.floor_divide(cols + SMALL_OFFSET, SMALL_CELL)[None, :]
    ly = np.floor_divide(rows + LARGE_OFFSET, LARGE_CELL)[:, None]
    lx = np.floor_divide(cols + LARGE_OFFSET, LARGE_CELL)[None, :]
    out = np.where(small >= 0.5, (sy + 1) * 1_000_003 + sx + 1, 0)
    return np.where(large >= 0.5, (1 << 40) + (ly + 1) * 1_000_003 + lx + 1, out).astype(np.int64)


# -- the multiscale OME-Zarr slide ---------------------------------------------------------


@dataclass
class SlideInfo:
    """What :func:`write_synthetic_slide` wrote."""

    path: Path
    shapes: list[tuple[int, int]]
    chunk: int
    seconds: float = 0.0
    bytes_on_disk: int = 0
    levels: list = field(default_factory=list, repr=False)


def level_shapes(shape: tuple[int, int], min_side: int = 512) -> list[tuple[int, int]]:
    """Shapes of a 2x pyramid: halve (rounding up) until the longer side is at most ``min_side``."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1]) > min_side:
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes


def ome_multiscales(n_levels: int, axes: tuple[str, ...] = ("y", "x"), name: str = "image") -> list[dict]:
    """OME-NGFF ``multiscales`` metadata of a 2x pyramid of ``n_levels`` levels."""
    def scale(k):
        return [1.0] * (len(axes) - 2) + [float(2**k)] * 2

    return [{
        "name": name,
        "axes": [{"name": a, "type": "space"} for a in axes],
        "datasets": [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale(k)}]}
                     for k in range(n_levels)],
        "type": "stride",  # level k pixel (i, j) is level 0 pixel (i * 2**k, j * 2**k)
    }]


def write_synthetic_slide(
    path: str | Path,
    shape: tuple[int, int] = (40_000, 40_000),
    *,
    chunk: int = 1024,
    seed: int = 0,
    min_side: int = 512,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> SlideInfo:
    """Write the synthetic slide as a multiscale uint8 OME-Zarr, one chunk at a time.

    Every level is drawn from :func:`blobs` at its own coordinates (level ``k`` pixel
    ``(i, j)`` is level-0 pixel ``(i * 2**k, j * 2**k)``), so no level is read to make the
    next and memory stays at a few chunks per worker, whatever the size.

    Parameters
    ----------
    path : path
        The store folder to create (replaced if it exists).
    shape : (int, int)
        Level-0 size (rows, columns).
    chunk : int
        Chunk side of every level.
    seed : int
        Which slide (see :func:`blobs`).
    min_side : int
        Levels are added until the longer side is at most this.
    workers : int
        Threads drawing and compressing chunks.
    progress : callable, optional
        ``progress(chunks_done, chunks_total)``.

    Returns
    -------
    SlideInfo
    """
    import shutil
    import time

    import zarr

    t0 = time.perf_counter()
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    shapes = level_shapes(shape, min_side)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["ome"] = {"version": "0.5", "multiscales": ome_multiscales(len(shapes), name=path.stem)}
    arrays = [root.create_array(str(k), shape=s, chunks=(min(chunk, s[0]), min(chunk, s[1])), dtype="uint8",
                                fill_value=0)
              for k, s in enumerate(shapes)]
    jobs = [(k, r0, c0) for k, s in enumerate(shapes)
            for r0 in range(0, s[0], chunk) for c0 in range(0, s[1], chunk)]
    lock, done = threading.Lock(), [0]

    def one(job):
        k, r0, c0 = job
        h, w = shapes[k]
        f = 2**k
        r1, c1 = min(r0 + chunk, h), min(c0 + chunk, w)
        arrays[k][r0:r1, c0:c1] = blobs(np.arange(r0, r1) * f, np.arange(c0, c1) * f, seed)
        if progress is not None:
            with lock:
                done[0] += 1
                progress(done[0], len(jobs))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(one, jobs):
            pass
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return SlideInfo(path=path, shapes=shapes, chunk=chunk, seconds=time.perf_counter() - t0,
                     bytes_on_disk=size, levels=arrays)


def open_slide(path: str | Path, mode: str = "r") -> list:
    """The levels of an OME-Zarr multiscale image (finest first) as zarr arrays, nothing read."""
    import zarr

    root = zarr.open_group(str(path), mode=mode)
    attrs = dict(root.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ValueError(f"{path} has no OME-Zarr multiscales metadata")
    return [root[d["path"]] for d in multiscales[0]["datasets"]]


def slide_metadata(path: str | Path) -> dict:
    """The root attributes of an OME-Zarr store (for tests)."""
    return json.loads((Path(path) / "zarr.json").read_text())["attributes"]


# -- a lazy volume -----------------------------------------------------------------------


def synthetic_volume(shape: tuple[int, int, int], chunks: tuple[int, int, int] = (1, 1024, 1024), seed: int = 0):
    """A lazy dask ``(Z, H, W)`` uint8 volume of :func:`blobs` (plane ``z`` uses seed ``seed + z``).

    Nothing is computed until a region is read; reading a chunk draws it.
    """
    import dask.array as da

    def block(block_info=None):
        info = block_info[None]
        (z0, z1), (r0, r1), (c0, c1) = info["array-location"]
        return np.stack([blobs(np.arange(r0, r1), np.arange(c0, c1), seed + z) for z in range(z0, z1)])

    return da.map_blocks(block, dtype=np.uint8, chunks=tuple(
        tuple(min(c, s - i) for i in range(0, s, c)) for s, c in zip(shape, chunks, strict=True)))


# -- counting reads ------------------------------------------------------------------------


class ReadCounter:
    """Wraps an array (zarr, numpy, ...) and records every region read from it.

    Used directly as an image (it has ``shape``, ``dtype``, ``__getitem__``), it records each
    window code asks for, so ``largest`` tells whether some code read a whole level at once.

    ``dask.array.from_array(counter, chunks=...)`` makes a dask array that reads through it
    (see :func:`counting_dask`), so each chunk dask computes is one recorded read.

    Attributes
    ----------
    reads : list of tuple
        The keys read, in order.
    pixels : int
        The number of elements read in all.
    largest : int
        The most elements one read returned.
    """

    def __init__(self, array):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.reads: list[tuple] = []
        self.pixels = 0
        self.largest = 0
        self._lock = threading.Lock()

    def __getitem__(self, key):
        out = np.asarray(self.array[key])
        with self._lock:
            self.reads.append(key)
            self.pixels += int(out.size)
            self.largest = max(self.largest, int(out.size))
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),) * self.ndim]  # the whole array: recorded as one read of every element
        return out.astype(dtype) if dtype is not None else out

    def reset(self) -> None:
        """Forget the reads so far."""
        with self._lock:
            self.reads, self.pixels, self.largest = [], 0, 0

    @property
    def size(self) -> int:
        """Elements of the whole array."""
        return int(np.prod(self.shape, dtype=np.int64))


def counting_dask(array, chunks=None):
    """``(dask array, ReadCounter)``: a dask array over ``array`` whose chunk reads are counted.

    ``chunks`` defaults to the array's own chunks (zarr) or 1024 a side.
    """
    import dask.array as da

    counter = ReadCounter(array)
    if chunks is None:
        chunks = getattr(array, "chunks", None) or tuple(min(1024, s) for s in counter.shape)
    return da.from_array(counter, chunks=chunks, asarray=False, fancy=False, lock=False), counter


def main(argv: list[str] | None = None) -> None:
    """Write a synthetic slide from the command line (``--size``, ``--chunk``, ``--seed``)."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a synthetic multiscale OME-Zarr slide.")
    parser.add_argument("path")
    parser.add_argument("--size", type=int, nargs="+", default=[40_000], help="side, or rows and columns")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    shape = (args.size[0], args.size[-1])
    info = write_synthetic_slide(args.path, shape, chunk=args.chunk, seed=args.seed, workers=args.workers)
    print(f"{info.path}: levels {info.shapes}, {info.bytes_on_disk / 1e6:.0f} MB, {info.seconds:.0f} s")


if __name__ == "__main__":
    main()
