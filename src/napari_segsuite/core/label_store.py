"""Labels that live on disk: a label pyramid in a zarr v3 group, written region by region.

A :class:`LabelStore` is an OME-Zarr *labels* image (``labels/<name>/`` of an OME-Zarr
image, or a folder of its own): arrays ``0``, ``1``, ... of int32 labels, level 0 the
image's full resolution and level ``k`` matching the image's level ``k`` (same shape), with
``ome.multiscales`` and ``ome.image-label`` in the group's attributes (OME-NGFF 0.5) and
the provenance of what wrote it under ``segsuite``.

- :meth:`LabelStore.write` writes a block of level-0 labels into a region of one plane
  and the same region of every coarser level (level ``k`` pixel ``(i, j)`` takes level-0
  pixel ``(i * f, j * f)``, ``f`` the level's downsampling factor), so a viewer shows the
  result at every zoom. zarr writes each chunk as a whole file through a temporary file and
  a rename, so a chunk on disk is either its old or its new content, never a mix: a failed
  write (read-only store, full disk) leaves every chunk readable and the store re-openable,
  and raises only once none of its chunks is still being written
  (:func:`napari_segsuite.core.zarr_writes.settle_zarr_writes`).
- :meth:`LabelStore.writer` gives an array-like over one region of one plane that reads and
  writes level 0 (and writes the coarser levels): the output of chunked segmentation
  (:func:`napari_segsuite.batch.chunking.segment_chunked`).
- Undo: :meth:`LabelStore.record` keeps the last write's old and new pixels when the
  region has at most :data:`UNDO_PIXELS` pixels; :meth:`LabelStore.undo` /
  :meth:`LabelStore.redo` put them back. A larger write (a whole large plane in chunks) has
  no undo step: its pixels are on disk only.
- :meth:`LabelStore.region_counts` counts the labels of a region chunk by chunk (for the
  features of a region that a write replaces).
"""

from __future__ import annotations

import errno
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.labels import LABEL_DTYPE
from napari_segsuite.core.regions import Region
from napari_segsuite.core.zarr_writes import settle_zarr_writes

#: The largest region (pixels) whose last write can be undone (old and new pixels are kept
#: in memory: 2 x 4 bytes a pixel, 128 MiB at this limit).
UNDO_PIXELS = 4096 * 4096
#: Chunk side of the label arrays (rows and columns; one plane per chunk along other axes).
CHUNK = 1024


class LabelStoreError(SegSuiteError):
    """The labels store cannot be written (read-only, full disk, gone)."""


def _write_error(exc: BaseException, path: Path) -> LabelStoreError:
    """The message for a failed write of the store at ``path``, given once the write's other
    chunk writes have ended."""
    settle_zarr_writes()
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return LabelStoreError(
            f"The disk holding the labels store {path} is full; the chunks written before this one are "
            "intact (each chunk is written whole or not at all). Free space and run again, or re-open the "
            "store."
        )
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or isinstance(exc, PermissionError) or "read-only" in str(exc) \
            or "read_only" in str(exc):
        return LabelStoreError(
            f"The labels store {path} is read-only; the labels cannot be written there. Make the folder "
            "writable, or set another labels folder."
        )
    return LabelStoreError(f"Writing the labels store {path} failed: {type(exc).__name__}: {exc}")


def level_factors(shapes: list[tuple[int, ...]]) -> list[tuple[int, int]]:
    """Integer downsampling factors (rows, columns) of each level's last two axes from level 0."""
    h, w = shapes[0][-2:]
    return [(max(1, round(h / s[-2])), max(1, round(w / s[-1]))) for s in shapes]


def pyramid_shapes(shape: tuple[int, ...], min_side: int = 1024) -> list[tuple[int, ...]]:
    """Level shapes of a 2x pyramid over the last two axes, down to ``min_side``."""
    shapes = [tuple(int(s) for s in shape)]
    while max(shapes[-1][-2:]) > min_side:
        last = shapes[-1]
        shapes.append((*last[:-2], math.ceil(last[-2] / 2), math.ceil(last[-1] / 2)))
    return shapes


@dataclass
class UndoStep:
    """A write that can be undone: the plane, the region, its pixels before and after."""

    lead: tuple[int, ...]
    region: Region
    before: np.ndarray
    after: np.ndarray


class LabelStore:
    """A label pyramid in a zarr v3 group (see the module docstring).

    Use :meth:`create` or :meth:`open`.
    """

    def __init__(self, path: Path, group, levels: list):
        self.path = Path(path)
        self.group = group
        self.levels = levels
        self.shapes = [tuple(int(s) for s in a.shape) for a in levels]
        self.factors = level_factors(self.shapes)
        self._undo: UndoStep | None = None
        self._redo: UndoStep | None = None

    # -- making and opening ---------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, shapes: list[tuple[int, ...]], *, axes: tuple[str, ...] | None = None,
               source: str = "", chunk: int = CHUNK) -> LabelStore:
        """A new, all-zero store at ``path`` with one int32 array per level of ``shapes``.

        Raises
        ------
        LabelStoreError
            When ``path`` cannot be written (read-only folder, full disk) or holds something else.
        """
        import zarr

        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise LabelStoreError(f"{path} exists and is not empty; pick another name or folder.")
        ndim = len(shapes[0])
        if axes is None:
            axes = (*"tczyx"[5 - ndim:-2], "y", "x") if ndim <= 5 else tuple(f"d{i}" for i in range(ndim))
        factors = level_factors(shapes)
        try:
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
            levels = [group.create_array(
                str(k), shape=s, dtype=LABEL_DTYPE, fill_value=0,
                chunks=(*(1,) * (ndim - 2), min(chunk, s[-2]), min(chunk, s[-1])),
            ) for k, s in enumerate(shapes)]
            group.attrs["ome"] = {
                "version": "0.5",
                "multiscales": [{
                    "name": path.name,
                    "axes": [{"name": a, "type": "space" if a in "zyx" else ("time" if a == "t" else "channel")}
                             for a in axes],
                    "datasets": [{"path": str(k), "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0] * (ndim - 2) + [float(fy), float(fx)]}]}
                        for k, (fy, fx) in enumerate(factors)],
                    "type": "stride",
                }],
                "image-label": {"version": "0.5", "source": {"image": source or "../../"}},
            }
        except (OSError, PermissionError, ValueError) as exc:
            raise _write_error(exc, path) from exc
        return cls(path, group, levels)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r+") -> LabelStore:
        """An existing store (``mode="r"``: read-only)."""
        import zarr

        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode=mode)
        except (OSError, ValueError, FileNotFoundError) as exc:
            raise LabelStoreError(f"Cannot open the labels store {path}: {type(exc).__name__}: {exc}") from exc
        ms = dict(group.attrs).get("ome", {}).get("multiscales") or dict(group.attrs).get("multiscales")
        if not ms:
            raise LabelStoreError(f"{path} is not an OME-Zarr labels store (no multiscales metadata).")
        return cls(path, group, [group[d["path"]] for d in ms[0]["datasets"]])

    # -- attributes -----------------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        """The group's ``segsuite`` attributes (provenance, max label, written planes)."""
        return dict(dict(self.group.attrs).get("segsuite", {}))

    def update_attrs(self, **values) -> None:
        """Merge ``values`` into the ``segsuite`` attributes (written to ``zarr.json``)."""
        try:
            self.group.attrs["segsuite"] = {**self.attrs, **values}
        except (OSError, PermissionError, ValueError) as exc:
            raise _write_error(exc, self.path) from exc

    # -- reading and writing ------------------------------------------------------------------
    @property
    def plane_shape(self) -> tuple[int, int]:
        """Level-0 (rows, columns)."""
        return self.shapes[0][-2], self.shapes[0][-1]

    def read(self, lead: tuple[int, ...], region: Region, level: int = 0) -> np.ndarray:
        """Level-0 labels of ``region`` of plane ``lead`` (or of ``level``, region in its pixels)."""
        return np.asarray(self.levels[level][(*lead, *region.slices)])

    def write(self, lead: tuple[int, ...], region: Region, block: np.ndarray) -> None:
        """Write level-0 ``block`` into ``region`` of plane ``lead`` and into every coarser level.

        Raises
        ------
        LabelStoreError
            Read-only store, full disk (chunks already written stay intact).
        """
        block = np.asarray(block)
        if block.shape != region.shape:
            raise InputError(f"A block of shape {block.shape} does not fit the region {region.shape}.")
        try:
            self.levels[0][(*lead, *region.slices)] = block.astype(LABEL_DTYPE, copy=False)
            for level, (fy, fx) in zip(self.levels[1:], self.factors[1:], strict=True):
                i0, i1 = -(-region.r0 // fy), min(-(-region.r1 // fy), level.shape[-2])
                j0, j1 = -(-region.c0 // fx), min(-(-region.c1 // fx), level.shape[-1])
                if i1 <= i0 or j1 <= j0:
                    continue
                rows = np.arange(i0, i1) * fy - region.r0
                cols = np.arange(j0, j1) * fx - region.c0
                level[(*lead, slice(i0, i1), slice(j0, j1))] = block[np.ix_(rows, cols)].astype(LABEL_DTYPE)
        except (OSError, PermissionError, ValueError) as exc:
            raise _write_error(exc, self.path) from exc

    def writer(self, lead: tuple[int, ...], region: Region) -> RegionWriter:
        """An array-like over ``region`` of plane ``lead`` (reads level 0, writes every level)."""
        return RegionWriter(self, tuple(lead), region)

    def region_counts(self, lead: tuple[int, ...], region: Region) -> np.ndarray:
        """``bincount`` of the labels in ``region`` of plane ``lead``, read chunk by chunk."""
        counts = np.zeros(1, np.int64)
        ch = self.levels[0].chunks[-2:]
        for r in range(region.r0, region.r1, ch[0] * 2):
            for c in range(region.c0, region.c1, ch[1] * 2):
                part = self.read(lead, Region(r, min(region.r1, r + ch[0] * 2), c, min(region.c1, c + ch[1] * 2)))
                b = np.bincount(part.ravel().astype(np.int64))
                if len(b) > len(counts):
                    b[: len(counts)] += counts
                    counts = b
                else:
                    counts[: len(b)] += b
        return counts

    # -- undo -------------------------------------------------------------------------------
    def record(self, lead: tuple[int, ...], region: Region, before: np.ndarray | None) -> bool:
        """Make the write of ``region`` (whose old pixels are ``before``) the step :meth:`undo` undoes.

        Returns False (and forgets the previous step) when ``before`` is None or the region
        is larger than :data:`UNDO_PIXELS`.
        """
        self._redo = None
        if before is None or region.size > UNDO_PIXELS:
            self._undo = None
            return False
        self._undo = UndoStep(tuple(lead), region, before, self.read(lead, region))
        return True

    @property
    def can_undo(self) -> bool:
        """Whether there is a write to undo."""
        return self._undo is not None

    @property
    def can_redo(self) -> bool:
        """Whether there is an undone write to redo."""
        return self._redo is not None

    def undo(self) -> UndoStep | None:
        """Put back the pixels from before the last recorded write; returns the step (or None)."""
        step, self._undo = self._undo, None
        if step is None:
            return None
        self.write(step.lead, step.region, step.before)
        self._redo = step
        return step

    def redo(self) -> UndoStep | None:
        """Write the undone step's pixels again; returns it (or None)."""
        step, self._redo = self._redo, None
        if step is None:
            return None
        self.write(step.lead, step.region, step.after)
        self._undo = step
        return step


class RegionWriter:
    """``region`` of one plane of a :class:`LabelStore`, indexed like a 2D array from (0, 0)."""

    def __init__(self, store: LabelStore, lead: tuple[int, ...], region: Region):
        self.store, self.lead, self.region = store, lead, region
        self.shape = region.shape
        self.dtype = np.dtype(LABEL_DTYPE)
        self.ndim = 2

    def _region(self, key) -> Region:
        if not isinstance(key, tuple) or len(key) != 2 or not all(isinstance(k, slice) for k in key):
            raise TypeError("A RegionWriter takes two slices.")
        (a0, a1, _), (b0, b1, _) = key[0].indices(self.shape[0]), key[1].indices(self.shape[1])
        r, c = self.region.r0, self.region.c0
        return Region(r + a0, r + max(a0, a1), c + b0, c + max(b0, b1))

    def __getitem__(self, key) -> np.ndarray:
        return self.store.read(self.lead, self._region(key))

    def __setitem__(self, key, value) -> None:
        region = self._region(key)
        value = np.broadcast_to(np.asarray(value), region.shape)
        self.store.write(self.lead, region, value)
