"""Checks of prompt arrays (points, point labels, boxes, masks) with a sentence for each fault.

Every function takes what a user or script may pass (lists, tuples, arrays of
any dtype) and returns a clean float/int/bool array, or raises
:class:`~napari_segsuite.core.errors.InputError` saying what is wrong with it:
wrong shape or length, not numbers (strings, objects, complex), or not finite.
"""

from __future__ import annotations

import numpy as np

from napari_segsuite.core.errors import InputError


def _numbers(value, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise InputError(f"The {what} must be a rectangular array of numbers ({exc}).") from None
    if arr.dtype == bool:
        return arr
    if np.iscomplexobj(arr):
        raise InputError(f"The {what} must be real numbers, not complex.")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"The {what} must be numbers, not {arr.dtype} values.")
    return arr


def as_points(points, what: str = "points") -> np.ndarray:
    """``points`` as an (N, 2) float array of (row, col); one (2,) point is accepted."""
    arr = _numbers(points, what).astype(float)
    if arr.ndim == 1 and arr.shape == (2,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"The {what} must be an (N, 2) array of (row, col); got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise InputError(f"The {what} hold NaN or infinite coordinates.")
    return arr


def as_point_labels(labels, n: int) -> np.ndarray:
    """``labels`` as an (n,) int array of 0 (negative) and 1 (positive)."""
    if labels is None:
        return np.ones(n, dtype=int)
    arr = _numbers(labels, "point labels")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"The point labels (point_labels) must hold one value per point ({n}); got shape {arr.shape}.")
    if arr.dtype != bool and (not np.isfinite(arr).all() or not np.isin(arr, (0, 1)).all()):
        raise InputError("The point labels (point_labels) must be 0 (negative) or 1 (positive).")
    return arr.astype(int)


def as_box(box) -> np.ndarray:
    """One box as a (4,) float array (row0, col0, row1, col1); a (1, 4) array is accepted."""
    arr = as_boxes(box, what="box")
    if len(arr) != 1:
        raise InputError(f"One box is 4 numbers (row0, col0, row1, col1); got {len(arr)} boxes.")
    return arr[0]


def as_boxes(boxes, what: str = "boxes") -> np.ndarray:
    """Boxes as an (N, 4) float array of (row0, col0, row1, col1); one (4,) box is accepted."""
    arr = _numbers(boxes, what).astype(float)
    if arr.ndim == 1 and arr.shape == (4,):
        arr = arr[None]
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(
            f"The {what} must be (N, 4) arrays of (row0, col0, row1, col1); got shape {arr.shape}."
        )
    if not np.isfinite(arr).all():
        raise InputError(f"The {what} hold NaN or infinite coordinates.")
    return arr


def as_mask(mask, shape: tuple[int, int], what: str = "mask prompt") -> np.ndarray:
    """A 2D mask of ``shape`` as a bool array (non-zero is inside)."""
    arr = _numbers(mask, what)
    if arr.ndim != 2:
        raise InputError(f"The {what} must be a 2D array; got {arr.ndim} dimension(s).")
    if tuple(arr.shape) != tuple(shape):
        raise InputError(f"The {what} has shape {arr.shape}, the image {tuple(shape)}.")
    if arr.dtype != bool and not np.isfinite(arr).all():
        raise InputError(f"The {what} holds NaN or infinite values.")
    return arr.astype(bool)
