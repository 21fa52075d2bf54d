"""A region of a large plane through a batch task, chunk by chunk, into any label array.

:func:`segment_region_job` is what the docks run on a field of view, a drawn rectangle or a
whole large plane: the region (a :class:`~napari_segsuite.core.regions.LazyView`, read one
chunk window at a time) goes through :func:`napari_segsuite.batch.chunking.segment_chunked_job`
with the dock's batch task (:mod:`napari_segsuite.batch.tasks`: semantic, instance,
panoptic), so objects crossing chunk borders are merged and ids are unique, and the labels go
straight into ``out`` (a numpy array, or a :class:`~napari_segsuite.core.label_store.RegionWriter`
on disk). Memory: one chunk window and its prediction, whatever the region's size.
"""

from __future__ import annotations

from collections.abc import Generator

from napari_segsuite.core.progress import Progress

#: Core side of the chunks a region is cut into.
REGION_CHUNK = 2048
#: Halo of context around each chunk.
REGION_OVERLAP = 64


def segment_region_job(
    task: str,
    runner,
    view,
    out,
    *,
    params: dict | None = None,
    chunk: int = REGION_CHUNK,
    overlap: int = REGION_OVERLAP,
    merge_threshold: float = 0.5,
    id_offset: int = 0,
    progress_offset: int = 0,
    progress_total: int | None = None,
    prefix: str = "",
) -> Generator[Progress, None, object]:
    """Segment the region ``view`` with batch task ``task`` into ``out`` (a generator).

    Parameters
    ----------
    task : str
        A registered batch task (``semantic``, ``instance``, ``panoptic`` ...).
    runner : Runner
        The loaded model.
    view : array-like
        ``(H, W)`` or ``(H, W, C)``, read window by window (a LazyView of a zarr/dask plane).
    out : array-like
        ``(H, W)``, zero-filled where the region is written, indexed with slices.
    params : dict
        The task's parameters (the dock's ``batch_params``).
    chunk, overlap, merge_threshold
        As for :func:`~napari_segsuite.batch.chunking.segment_chunked`.
    id_offset : int
        Instance ids start after this (the layer's largest id).
    progress_offset, progress_total : int
        Where this region's chunks sit in an outer job's progress (in chunks).

    Yields
    ------
    Progress
        One per chunk (a Cancel stops between chunks; chunks written stay in ``out``).

    Returns
    -------
    pandas.DataFrame
        One row per label written (``label``, ``area``, bounding box in region pixels, the
        task's columns).
    """
    from napari_segsuite.batch.chunking import segment_chunked_job
    from napari_segsuite.batch.tasks import get_task

    spec = get_task(task)
    if runner is not None and spec.model_task:
        runner.require(spec.model_task)
    kw = dict(params or {})

    def func(window):
        return spec.func(window, runner, **kw)

    h, w = view.shape[:2]
    yield Progress(progress_offset, progress_total, f"{prefix}Segmenting {h} x {w} pixels")
    job = segment_chunked_job(view, func, out, kind=spec.kind, chunk=chunk, overlap=overlap,
                              merge_threshold=merge_threshold, normalize=spec.normalize, id_offset=id_offset)
    while True:
        try:
            done, total = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(progress_offset + done, progress_total if progress_total is not None else total,
                       f"{prefix}chunk {done}/{total}")


def n_chunks(shape: tuple[int, int], chunk: int = REGION_CHUNK) -> int:
    """How many chunks :func:`segment_region_job` cuts a region of ``shape`` into."""
    return -(-int(shape[0]) // chunk) * -(-int(shape[1]) // chunk)
