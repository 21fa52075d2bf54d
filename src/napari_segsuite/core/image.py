"""Preparing image planes for models: channels, dtypes and intensity normalisation.

Microscopy images arrive as uint8, uint16, int or float, with one, two, three,
four or many channels. Models want float RGB (or uint8 RGB). These functions
turn any 2D plane into those, with robust percentile normalisation for
anything that is not already 8-bit.
"""

from __future__ import annotations

import numpy as np

from napari_segsuite.core.errors import InputError

DEFAULT_PERCENTILES = (1.0, 99.8)


def check_plane(plane: np.ndarray, *, channels_last: bool) -> np.ndarray:
    """Validate a 2D plane (H, W) or (H, W, C) and return it as an ndarray.

    Parameters
    ----------
    plane : array-like
        The image plane.
    channels_last : bool
        Whether a third axis holds channels.

    Raises
    ------
    InputError
        For the wrong number of axes, an empty plane, or a non-numeric dtype.
    """
    arr = np.asarray(plane)
    want = 3 if channels_last else 2
    if arr.ndim != want:
        raise InputError(
            f"Expected a 2D image plane{' with channels' if channels_last else ''} "
            f"({'H, W, C' if channels_last else 'H, W'}), got an array of shape {arr.shape}."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"The image plane is empty (shape {arr.shape}).")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"Images of dtype {arr.dtype} are not supported; use integers or floats.")
    return arr


def percentile_normalize(
    plane: np.ndarray,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    *,
    per_channel: bool = True,
) -> np.ndarray:
    """Scale intensities robustly to float32 in [0, 1].

    The low and high percentiles of the finite values map to 0 and 1; values
    outside are clipped. NaN becomes 0, +inf 1 and -inf 0. A constant image
    becomes all zeros.

    Parameters
    ----------
    plane : ndarray
        (H, W) or (H, W, C).
    percentiles : (float, float)
        Lower and upper percentile.
    per_channel : bool
        Normalise each channel of an (H, W, C) plane on its own.

    Returns
    -------
    ndarray
        float32 array of the same shape, values in [0, 1].
    """
    arr = np.asarray(plane)
    low_p, high_p = percentiles
    if not 0 <= low_p < high_p <= 100:
        raise InputError(f"Percentiles must satisfy 0 <= low < high <= 100, got {percentiles}.")
    if arr.ndim == 3 and per_channel:
        return np.stack(
            [percentile_normalize(arr[..., c], percentiles, per_channel=False) for c in range(arr.shape[-1])],
            axis=-1,
        )
    data = arr.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    out = np.zeros(data.shape, dtype=np.float32)
    if not finite.any():
        return out
    values = data[finite] if not finite.all() else data.ravel()
    # Percentiles on a subsample keep this fast on very large planes.
    if values.size > 4_000_000:
        values = values[:: values.size // 2_000_000]
    lo, hi = np.percentile(values, [low_p, high_p])
    if hi <= lo:
        hi = float(values.max())
        lo = float(values.min())
    if hi > lo:
        np.subtract(data, lo, out=out, where=finite)
        out /= hi - lo
        np.clip(out, 0.0, 1.0, out=out)
    out[~finite] = 0.0
    out[np.isposinf(data)] = 1.0
    return out


def to_float01(plane: np.ndarray, percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES) -> np.ndarray:
    """Convert a plane to float32 in [0, 1].

    uint8 is divided by 255 (it is already display-ready); every other dtype is
    percentile-normalised (``percentiles=None`` scales by the dtype's range for
    integers and clips floats to [0, 1] instead).
    """
    arr = np.asarray(plane)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if percentiles is not None:
        return percentile_normalize(arr, percentiles)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return ((arr.astype(np.float32) - info.min) / float(info.max - info.min)).astype(np.float32)
    out = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0)


def to_rgb(plane01: np.ndarray) -> np.ndarray:
    """Make a (H, W, 3) array from (H, W), (H, W, 1), (H, W, 2), (H, W, 3) or (H, W, >=4).

    Grayscale is repeated in the three channels; two channels become (c0, c1, 0);
    RGBA drops alpha; more than four channels keep the first three.
    """
    arr = np.asarray(plane01)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3:
        raise InputError(f"Cannot make an RGB image from an array of shape {arr.shape}.")
    c = arr.shape[-1]
    if c == 1:
        return np.repeat(arr, 3, axis=-1)
    if c == 2:
        return np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=-1)
    return arr[..., :3]


def prepare_rgb_uint8(
    plane: np.ndarray,
    *,
    channels_last: bool | None = None,
    percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Turn any 2D plane into (H, W, 3) uint8, the input most pretrained models expect.

    Parameters
    ----------
    plane : ndarray
        (H, W) or (H, W, C) of any numeric dtype.
    channels_last : bool, optional
        Whether the last axis holds channels; guessed from ``ndim`` when None.
    percentiles : (float, float) or None
        Percentile normalisation for non-uint8 data (see :func:`to_float01`).
    """
    arr = np.asarray(plane)
    if channels_last is None:
        channels_last = arr.ndim == 3
    arr = check_plane(arr, channels_last=channels_last)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(to_rgb(arr))
    rgb = to_rgb(to_float01(arr, percentiles))
    return np.ascontiguousarray(np.round(rgb * 255.0).astype(np.uint8))


def prepare_rgb_float(
    plane: np.ndarray,
    *,
    channels_last: bool | None = None,
    percentiles: tuple[float, float] | None = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Like :func:`prepare_rgb_uint8` but returns float32 (H, W, 3) in [0, 1]."""
    arr = np.asarray(plane)
    if channels_last is None:
        channels_last = arr.ndim == 3
    arr = check_plane(arr, channels_last=channels_last)
    return np.ascontiguousarray(to_rgb(to_float01(arr, percentiles)), dtype=np.float32)


def image_signature(plane: np.ndarray) -> str:
    """A content hash of an array (shape, dtype and bytes), for caches keyed by image."""
    import hashlib

    arr = np.ascontiguousarray(plane)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(arr.shape).encode())
    h.update(str(arr.dtype).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()
