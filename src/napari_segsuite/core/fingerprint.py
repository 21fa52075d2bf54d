"""Content fingerprints of arrays: which image a journal belongs to, whether a layer was edited.

A fingerprint is a BLAKE2b digest of an array's shape, dtype and pixels. Arrays
up to :data:`FULL_HASH_BYTES` are hashed whole. Larger ones (big stacks, lazy
dask/zarr data) are hashed from up to :data:`SAMPLED_PLANES` evenly spaced
planes along the leading axes plus the shape, so the cost stays bounded; two
such arrays that differ only in unsampled planes get the same fingerprint. A
larger single plane (a whole-slide image) is hashed from a grid of
:data:`SAMPLED_TILES` x :data:`SAMPLED_TILES` tiles of :data:`TILE` pixels a
side, evenly spaced over it (the same bound, the same caveat).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

#: arrays up to this many bytes are hashed whole
FULL_HASH_BYTES = 512 << 20
#: how many planes of a larger array are hashed
SAMPLED_PLANES = 16
#: a larger 2D array: this many tiles along each axis ...
SAMPLED_TILES = 8
#: ... of this side are hashed
TILE = 256


def _update(h, arr) -> None:
    arr = np.ascontiguousarray(np.asarray(arr))
    h.update(memoryview(arr).cast("B") if arr.size else b"")


def fingerprint(data, *, extra: str = "") -> str:
    """A hex digest of ``data``'s shape, dtype and content (see the module docstring).

    Parameters
    ----------
    data : array-like
        NumPy or any array with ``shape``, ``dtype`` and ``__getitem__`` (dask, zarr).
    extra : str
        Mixed into the digest (a name, a kind).

    Returns
    -------
    str
        32 hex characters.
    """
    h = hashlib.blake2b(digest_size=16)
    shape = tuple(int(s) for s in data.shape)
    dtype = np.dtype(data.dtype)
    h.update(f"{shape}|{dtype.str}|{extra}".encode())
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes <= FULL_HASH_BYTES or len(shape) < 2:
        _update(h, data)
    elif len(shape) == 2:
        rows = np.unique(np.linspace(0, max(0, shape[0] - TILE), SAMPLED_TILES).astype(np.int64))
        cols = np.unique(np.linspace(0, max(0, shape[1] - TILE), SAMPLED_TILES).astype(np.int64))
        for r in rows:
            for c in cols:
                _update(h, data[int(r): int(r) + TILE, int(c): int(c) + TILE])
    else:
        lead = int(np.prod(shape[:-2], dtype=np.int64))
        for flat in np.unique(np.linspace(0, lead - 1, SAMPLED_PLANES).astype(np.int64)):
            _update(h, data[np.unravel_index(int(flat), shape[:-2])])
    return h.hexdigest()


@dataclass(frozen=True)
class ImageIdentity:
    """What an autosave records about its image: name, shape, dtype and a content digest."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    digest: str

    @classmethod
    def of(cls, data, name: str) -> ImageIdentity:
        """The identity of image ``data`` called ``name`` (the digest covers the pixels only)."""
        return cls(str(name), tuple(int(s) for s in data.shape), np.dtype(data.dtype).str, fingerprint(data))

    def to_dict(self) -> dict:
        """Plain data for JSON."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "digest": self.digest}

    @classmethod
    def from_dict(cls, d: dict) -> ImageIdentity:
        """The inverse of :meth:`to_dict`."""
        return cls(str(d["name"]), tuple(int(s) for s in d["shape"]), str(d["dtype"]), str(d["digest"]))

    def same_pixels(self, other: ImageIdentity) -> bool:
        """Whether both describe the same pixels (the name may differ: a renamed layer)."""
        return (self.shape, self.dtype, self.digest) == (other.shape, other.dtype, other.digest)
