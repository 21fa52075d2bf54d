"""A large plane in overlapping chunks: unique ids across chunks, border objects merged.

The plane is cut into a grid of *cores* of ``chunk`` x ``chunk`` pixels; each core is
segmented with a *halo* of ``overlap`` pixels on every side (cut at the image border), so the
model sees context, and only the core is kept. For instance-like tasks:

1. each chunk's ids are offset by the number of ids handed out so far, so they are unique;
2. a chunk's halo lies over the cores of its neighbours. Where a neighbour's core is already
   written, the ids of the chunk's prediction in the halo are compared pixel by pixel with the
   neighbour's ids there: a pair ``(a, b)`` overlapping on at least ``merge_threshold`` of the
   smaller of the two (within that strip) is the same object, and is joined with union-find.
   Every pair of neighbouring chunks is compared once (the later chunk's halo over the earlier
   chunk's core), diagonal neighbours included;
3. the merged ids are renumbered ``1..N`` in a second pass over the output.

With a task table that has a ``class_id`` column only objects of the same class are merged.
Semantic tasks (class ids) are stitched without renumbering. Chunks are processed one after
another in the calling worker (memory: one chunk's prediction plus the output array, which may
be a zarr array on disk); different images run on different workers. After each chunk the
freed memory is handed back to the system (:func:`napari_segsuite.core.threads.release_freed_memory`),
so the resident memory does not grow with the number of chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.labels import LABEL_DTYPE
from napari_segsuite.core.threads import release_freed_memory
from napari_segsuite.core.tiling import Tile, halo_grid
from napari_segsuite.core.vocabulary import Task

DEFAULT_CHUNK = 2048
DEFAULT_OVERLAP = 64


def tile_grid(shape: tuple[int, int], chunk: int, overlap: int) -> list[Tile]:
    """The chunks of a plane of ``shape`` (H, W), in raster order: cores of ``chunk`` pixels,
    windows with ``overlap`` pixels of halo (:func:`napari_segsuite.core.tiling.halo_grid`)."""
    if chunk < 16:
        raise InputError(f"The chunk size must be at least 16 pixels, got {chunk}.")
    return halo_grid(shape, chunk, overlap)


class UnionFind:
    """Disjoint sets of integer ids (path halving, union by smaller root)."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def uint8_normalizer(plane, percentiles=(1.0, 99.8), max_samples: int = 4_000_000) -> Callable | None:
    """One intensity mapping to uint8 for all chunks of a non-uint8 plane (None for uint8).

    Percentiles are taken on a strided subsample of the whole plane, so every chunk is
    scaled alike (per-chunk normalisation would leave seams).
    """
    if np.dtype(plane.dtype) == np.uint8:
        return None
    h, w = plane.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / max_samples))))
    sample = np.asarray(plane[::step, ::step]).astype(np.float32)
    axis = (0, 1) if sample.ndim == 3 else None
    finite = np.where(np.isfinite(sample), sample, np.nan)
    lo = np.nanpercentile(finite, percentiles[0], axis=axis)
    hi = np.nanpercentile(finite, percentiles[1], axis=axis)
    scale = np.where(hi > lo, 255.0 / np.where(hi > lo, hi - lo, 1.0), 0.0)

    def to_uint8(chunk):
        x = np.nan_to_num(np.asarray(chunk, dtype=np.float32), nan=0.0)
        return np.clip(np.round((x - lo) * scale), 0, 255).astype(np.uint8)

    return to_uint8


def _pair_counts(a: np.ndarray, b: np.ndarray):
    """Counts of each id in ``a``, in ``b``, and of each nonzero (a, b) pair, pixel by pixel."""
    both = (a != 0) & (b != 0)
    na = dict(zip(*np.unique(a[a != 0], return_counts=True), strict=True))
    nb = dict(zip(*np.unique(b[b != 0], return_counts=True), strict=True))
    if not both.any():
        return na, nb, {}
    pairs = np.stack([a[both].astype(np.int64), b[both].astype(np.int64)], axis=1)
    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
    return na, nb, {(int(x), int(y)): int(c) for (x, y), c in zip(uniq, counts, strict=True)}


def segment_chunked(
    plane,
    func: Callable[[np.ndarray], tuple[np.ndarray, object]],
    out,
    *,
    kind: Task | str = Task.INSTANCE,
    chunk: int = DEFAULT_CHUNK,
    overlap: int = DEFAULT_OVERLAP,
    merge_threshold: float = 0.5,
    normalize: bool = True,
    progress: Callable[[int, int], None] | None = None,
    id_offset: int = 0,
):
    """Segment ``plane`` chunk by chunk into ``out``; return the table of the whole plane.

    The same as draining :func:`segment_chunked_job`, with ``progress`` called per chunk.
    """
    job = segment_chunked_job(plane, func, out, kind=kind, chunk=chunk, overlap=overlap,
                              merge_threshold=merge_threshold, normalize=normalize, id_offset=id_offset)
    while True:
        try:
            done, total = next(job)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)


def segment_chunked_job(
    plane,
    func: Callable[[np.ndarray], tuple[np.ndarray, object]],
    out,
    *,
    kind: Task | str = Task.INSTANCE,
    chunk: int = DEFAULT_CHUNK,
    overlap: int = DEFAULT_OVERLAP,
    merge_threshold: float = 0.5,
    normalize: bool = True,
    id_offset: int = 0,
):
    """Segment ``plane`` chunk by chunk into ``out`` (a generator); return the plane's table.

    Parameters
    ----------
    plane : array-like
        ``(H, W)`` or ``(H, W, C)``; numpy, memmap or zarr (read one window at a time).
    func : callable
        ``func(window) -> (labels, table)`` on one padded chunk (a task bound to its runner).
    out : array-like
        ``(H, W)`` integer array to write the labels into (numpy or zarr), all zeros.
    kind : str
        ``"instance"`` (unique ids, border objects merged) or ``"semantic"`` (stitched).
    chunk, overlap : int
        Core size and halo width in pixels.
    merge_threshold : float
        Fraction of the smaller object's pixels in the halo that must overlap to merge.
    normalize : bool
        Map non-uint8 planes to uint8 with one global percentile scaling first.
    id_offset : int
        Instance ids start after this (ids ``id_offset + 1 ..``), to add objects to labels that
        hold ids up to ``id_offset`` outside ``out``.

    Yields
    ------
    (int, int)
        ``(chunks_done, chunks_total)`` after each chunk (a stop between chunks is a Cancel).

    Returns
    -------
    pandas.DataFrame
        One row per label of the stitched plane (``label``, ``area``, bounding box, and the
        task's own columns taken from the object's largest part).
    """
    import pandas as pd

    shape = tuple(plane.shape[:2])
    tiles = tile_grid(shape, chunk, overlap)
    to_uint8 = uint8_normalizer(plane) if normalize else None
    uf = UnionFind()
    part_class: dict[int, object] = {}
    parts: list[pd.DataFrame] = []
    next_id = int(id_offset)
    done: set[int] = set()
    for tile in tiles:
        w0, w1, v0, v1 = tile.window
        window = np.asarray(plane[w0:w1, v0:v1])
        if to_uint8 is not None:
            window = to_uint8(window)
        labels, table = func(window)
        labels = np.asarray(labels)
        if labels.shape != window.shape[:2]:
            raise InputError(f"The task returned labels of shape {labels.shape} for a chunk of shape {window.shape[:2]}.")
        labels = labels.astype(np.int64)
        table = table if table is not None else pd.DataFrame({"label": []})
        extras = table.set_index("label") if "label" in table and len(table) else None
        if kind == Task.INSTANCE:
            n = int(labels.max(initial=0))
            nz = labels != 0
            labels[nz] += next_id
            if extras is not None:
                extras = extras.copy()
                extras.index = extras.index.astype(np.int64) + next_id
                if "class_id" in extras:
                    part_class.update(extras["class_id"].to_dict())
            next_id += n
            if next_id >= np.iinfo(LABEL_DTYPE).max:
                raise InputError("More objects than int32 label ids can hold; use larger chunks.")
            # Compare the halo with the cores of neighbours written before this chunk.
            for other in tiles:
                if other.index not in done:
                    continue
                o0, o1, p0, p1 = other.core
                i0, i1, j0, j1 = max(o0, w0), min(o1, w1), max(p0, v0), min(p1, v1)
                if i0 >= i1 or j0 >= j1:
                    continue
                mine = labels[i0 - w0:i1 - w0, j0 - v0:j1 - v0]
                theirs = np.asarray(out[i0:i1, j0:j1]).astype(np.int64)
                na, nb, pairs = _pair_counts(mine, theirs)
                for (a, b), count in pairs.items():
                    if count >= merge_threshold * min(na[a], nb[b]) and part_class.get(a) == part_class.get(b):
                        uf.union(b, a)
        rs, cs = tile.core_in_window()
        core = labels[rs, cs]
        r0, r1, c0, c1 = tile.core
        out[r0:r1, c0:c1] = core.astype(LABEL_DTYPE)
        parts.append(_core_rows(core, r0, c0, extras, kind))
        done.add(tile.index)
        del window, labels, core
        release_freed_memory()  # the chunk's arrays: back to the system, so memory stays flat
        yield len(done), len(tiles)
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"label": []})
    if kind == Task.SEMANTIC:
        return _aggregate(table, table["label"].to_numpy())
    # Final ids: merged parts share one id; ids renumbered 1..N in order of first part.
    roots = np.array([uf.find(int(i)) for i in table["label"]], dtype=np.int64)
    uniq_roots = np.unique(roots)
    final_of_root = {int(r): int(id_offset) + k + 1 for k, r in enumerate(uniq_roots)}
    lut = np.zeros(next_id + 1, dtype=LABEL_DTYPE)
    for part, root in zip(table["label"].to_numpy(), roots, strict=True):
        lut[int(part)] = final_of_root[int(root)]
    for tile in tiles:
        r0, r1, c0, c1 = tile.core
        out[r0:r1, c0:c1] = lut[np.asarray(out[r0:r1, c0:c1])]
    return _aggregate(table, np.array([final_of_root[int(r)] for r in roots], dtype=np.int64))


def _core_rows(core: np.ndarray, r0: int, c0: int, extras, kind: str):
    """Area and bounding box (plane coordinates) of each id in a core, plus the task's columns."""
    import pandas as pd

    from napari_segsuite.core.labels import label_table

    cols = label_table(core)
    rows = pd.DataFrame({
        "label": cols["label"], "area": cols["area"],
        "bbox_0_min": cols["bbox_0_min"] + r0, "bbox_0_max": cols["bbox_0_max"] + r0,
        "bbox_1_min": cols["bbox_1_min"] + c0, "bbox_1_max": cols["bbox_1_max"] + c0,
    })
    if extras is not None and len(rows):
        drop = [c for c in extras.columns if c in rows.columns or c.startswith("bbox_")]
        rows = rows.join(extras.drop(columns=drop), on="label")
    return rows


def _aggregate(parts, final_ids: np.ndarray):
    """Rows of the parts grouped by final id: areas summed, boxes joined, other columns from
    the largest part."""
    import pandas as pd

    if not len(parts):
        return pd.DataFrame({"label": np.zeros(0, np.int64), "area": np.zeros(0, np.int64)})
    parts = parts.assign(label=final_ids)
    largest = parts.sort_values("area", ascending=False, kind="stable").drop_duplicates("label").set_index("label")
    grouped = parts.groupby("label")
    out = pd.DataFrame({"area": grouped["area"].sum()})
    for col in ("bbox_0_min", "bbox_1_min"):
        out[col] = grouped[col].min()
    for col in ("bbox_0_max", "bbox_1_max"):
        out[col] = grouped[col].max()
    out = out.astype(np.int64)
    for col in largest.columns:
        if col not in out.columns:
            out[col] = largest[col]
    return out.reset_index()
