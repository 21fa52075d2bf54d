"""Label bookkeeping: free ids, pasting masks, per-label tables, merging tables.

All functions work on plain numpy arrays. Label 0 is background everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError

LABEL_DTYPE = np.int32


def next_free_id(labels: np.ndarray) -> int:
    """Return one more than the largest label in ``labels`` (1 for an empty array)."""
    arr = np.asarray(labels)
    if arr.size == 0:
        return 1
    return int(arr.max(initial=0)) + 1


def paste_mask(
    labels: np.ndarray,
    mask: np.ndarray,
    label_id: int,
    *,
    overwrite: bool = False,
) -> np.ndarray:
    """Write ``label_id`` where ``mask`` is true, in place.

    Parameters
    ----------
    labels : ndarray
        Integer label image, modified in place.
    mask : ndarray of bool
        Same shape as ``labels``.
    label_id : int
        The id to write (> 0).
    overwrite : bool
        If False, pixels that already carry another label keep it.

    Returns
    -------
    ndarray of bool
        The pixels that were changed.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != labels.shape:
        raise InputError(f"Mask shape {mask.shape} does not match labels shape {labels.shape}.")
    if label_id <= 0:
        raise InputError(f"Label ids must be positive, got {label_id}.")
    target = mask if overwrite else mask & (labels == 0)
    changed = target & (labels != label_id)
    labels[changed] = label_id
    return changed


def label_table(
    labels: np.ndarray,
    extra: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """One row per label present: id, area and bounding box, plus extra columns.

    Parameters
    ----------
    labels : ndarray
        2D (or nD) integer label image.
    extra : mapping, optional
        ``{label_id: {column: value}}`` merged into the rows (class name, score ...).

    Returns
    -------
    dict of str to ndarray
        Columns ``label`` (the label id),
        ``area`` and ``bbox_<axis>_min`` / ``bbox_<axis>_max`` (max exclusive),
        and any extra columns. Feed it to ``pandas.DataFrame``.
    """
    arr = np.asarray(labels)
    ids = np.unique(arr)
    ids = ids[ids != 0]
    columns: dict[str, list] = {"label": [int(i) for i in ids]}
    if arr.size and len(ids):
        from scipy import ndimage

        flat = arr.ravel()
        counts = np.bincount(np.searchsorted(ids, flat[flat != 0]), minlength=len(ids))
        columns["area"] = [int(c) for c in counts]
        # find_objects wants labels 1..N; remap to that range first.
        compact = np.zeros(arr.shape, dtype=np.int32)
        nz = arr != 0
        compact[nz] = np.searchsorted(ids, arr[nz]) + 1
        slices = ndimage.find_objects(compact, max_label=len(ids))
        for axis in range(arr.ndim):
            columns[f"bbox_{axis}_min"] = [s[axis].start for s in slices]
            columns[f"bbox_{axis}_max"] = [s[axis].stop for s in slices]
    else:
        columns["area"] = []
        for axis in range(arr.ndim):
            columns[f"bbox_{axis}_min"] = []
            columns[f"bbox_{axis}_max"] = []
    if extra:
        names = sorted({k for row in extra.values() for k in row})
        for name in names:
            columns[name] = [extra.get(i, {}).get(name) for i in columns["label"]]
    return {k: np.asarray(v) if k != "label" else np.asarray(v, dtype=np.int64) for k, v in columns.items()}


def relabel_sequential(labels: np.ndarray, start: int = 1) -> tuple[np.ndarray, dict[int, int]]:
    """Renumber the labels to ``start, start+1, ...`` in increasing order of old id.

    Returns
    -------
    (ndarray, dict)
        The new label image and the map from old to new ids.
    """
    arr = np.asarray(labels)
    ids = np.unique(arr)
    ids = ids[ids != 0]
    mapping = {int(old): start + i for i, old in enumerate(ids)}
    out = np.zeros(arr.shape, dtype=LABEL_DTYPE)
    if len(ids):
        nz = arr != 0
        out[nz] = (np.searchsorted(ids, arr[nz]) + start).astype(LABEL_DTYPE)
    return out, mapping


def masks_to_labels(
    masks: np.ndarray,
    scores: np.ndarray | None = None,
    *,
    start: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack of boolean masks -> one label image; where masks overlap, the higher score wins.

    Parameters
    ----------
    masks : ndarray of bool, (N, H, W)
    scores : ndarray, (N,), optional
        Defaults to decreasing order of the input.
    start : int
        The id given to the best-scoring mask.

    Returns
    -------
    labels : ndarray (H, W) int32
        Ids ``start ...`` ordered by descending score.
    order : ndarray (N,)
        ``order[k]`` is the index into ``masks`` of the mask labelled ``start + k``.
        A mask fully covered by better ones gets its id but no pixels.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise InputError(f"Expected masks of shape (N, H, W), got {masks.shape}.")
    n = masks.shape[0]
    if scores is None:
        scores = np.arange(n, 0, -1, dtype=np.float32)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    labels = np.zeros(masks.shape[1:], dtype=LABEL_DTYPE)
    for k, i in enumerate(order[::-1]):
        labels[masks[i]] = start + (n - 1 - k)
    return labels, order
