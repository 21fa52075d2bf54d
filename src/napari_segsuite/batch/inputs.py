"""Inputs of a batch run: files, folders, globs and zarr / OME-Zarr, read lazily.

An :class:`Item` is one image to segment: a 2D plane ``(H, W)``, a plane with channels
``(H, W, C)`` (C <= 4, channels last), or a stack of planes ``(Z, H, W[, C])`` segmented plane
by plane. Nothing is read when items are listed; :func:`open_item` returns a lazy array
(numpy memmap, zarr array) where the format allows, so a large image is read chunk by chunk.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import InputError

#: File suffixes read as images (lower case).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
#: The most channels a plane may have on its last axis.
MAX_CHANNELS = 4


@dataclass(frozen=True)
class Item:
    """One input image.

    Attributes
    ----------
    path : str
        The file, or the zarr store folder.
    component : str
        The array inside a zarr store ("" for files and for a store that is one array).
    name : str
        The output base name (unique within a run).
    """

    path: str
    component: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        """A readable name of the input: ``path`` or ``path/component``."""
        return f"{self.path}/{self.component}" if self.component else self.path

    def fingerprint(self) -> dict:
        """Size and modification time of the input, to tell whether it changed since a run."""
        p = Path(self.path)
        if p.is_dir():
            files = [f for f in p.rglob("*") if f.is_file()]
            return {
                "size": sum(f.stat().st_size for f in files),
                "mtime_ns": max((f.stat().st_mtime_ns for f in files), default=0),
            }
        st = p.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class Expansion:
    """What :func:`expand_inputs` found: the items, and the inputs that matched nothing."""

    items: list[Item] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr store folder (v2 or v3, array or group)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ".zarr" or any(
        (p / marker).exists() for marker in ("zarr.json", ".zgroup", ".zarray")
    )


def _zarr_components(path: str) -> list[str]:
    """The arrays to segment in a zarr store: itself, OME-Zarr's full resolution, or its arrays."""
    import zarr

    node = zarr.open(path, mode="r")
    if isinstance(node, zarr.Array):
        return [""]
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return [multiscales[0]["datasets"][0]["path"]]
    return sorted(name for name, _ in node.arrays())


def _expand_one(spec: str) -> tuple[list[tuple[str, str]], str | None]:
    """(path, component) pairs of one input spec, or a reason why it gives none."""
    p = Path(spec)
    if is_zarr(p):
        try:
            comps = _zarr_components(str(p))
        except Exception as exc:
            return [], f"cannot open zarr store: {type(exc).__name__}: {exc}"
        return ([(str(p), c) for c in comps], None) if comps else ([], "zarr store holds no array")
    if p.is_dir():
        found = []
        for child in sorted(p.iterdir()):
            if child.name.startswith("."):
                continue
            if is_zarr(child) or (child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES):
                sub, _ = _expand_one(str(child))
                found.extend(sub)
        return (found, None) if found else ([], "folder holds no image (tif, png, jpg, bmp, zarr)")
    if p.is_file():
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            return [], f"not an image file (expected {', '.join(IMAGE_SUFFIXES)} or zarr)"
        return [(str(p), "")], None
    if glob.has_magic(spec):
        found = []
        for match in sorted(glob.glob(spec, recursive=True)):
            if is_zarr(match) or (Path(match).is_file() and Path(match).suffix.lower() in IMAGE_SUFFIXES):
                sub, _ = _expand_one(match)
                found.extend(sub)
        return (found, None) if found else ([], "pattern matches no image")
    return [], "no such file or folder"


def _unique_names(pairs: list[tuple[str, str]]) -> list[str]:
    """Output base names: the file stem, disambiguated where two inputs share one."""

    def base(path: str, comp: str) -> str:
        stem = Path(path).name
        for suffix in (*IMAGE_SUFFIXES, ".ome.zarr", ".zarr"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem.lower().endswith(".ome"):
            stem = stem[:-4]
        if comp:
            stem = f"{stem}_{comp.replace('/', '_')}"
        return stem or "image"

    names = [base(p, c) for p, c in pairs]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    out, used = [], set()
    for (path, _), n in zip(pairs, names, strict=True):
        name = n
        if counts[n] > 1:
            name = f"{n}_{Path(path).suffix.lstrip('.').lower() or 'zarr'}"
        k = 1
        candidate = name
        while candidate in used:
            k += 1
            candidate = f"{name}_{k}"
        used.add(candidate)
        out.append(candidate)
    return out


def expand_inputs(specs) -> Expansion:
    """Expand files, folders (not recursive), glob patterns and zarr stores into items.

    Parameters
    ----------
    specs : iterable of str or path
        What the user named.

    Returns
    -------
    Expansion
        ``.items`` (each input once, in the given order, with unique output names) and
        ``.problems``: ``(spec, reason)`` for inputs that gave no image.
    """
    pairs: list[tuple[str, str]] = []
    seen = set()
    problems = []
    for spec in specs:
        found, reason = _expand_one(str(spec))
        if reason:
            problems.append((str(spec), reason))
        for pair in found:
            key = (os.path.abspath(pair[0]), pair[1])
            if key not in seen:
                seen.add(key)
                pairs.append(pair)
    names = _unique_names(pairs)
    # Absolute paths: workers of a cluster may run in another folder.
    items = [Item(path=os.path.abspath(p), component=c, name=n) for (p, c), n in zip(pairs, names, strict=True)]
    return Expansion(items=items, problems=problems)


def _ome_axes(path: str, component: str) -> list[str] | None:
    import zarr

    try:
        group = zarr.open_group(path, mode="r")
    except Exception:
        return None
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales or "axes" not in multiscales[0]:
        return None
    return [a["name"] if isinstance(a, dict) else str(a) for a in multiscales[0]["axes"]]


def open_item(item: Item):
    """The item's pixels as a lazy array where possible, in layout ``(H, W)``, ``(H, W, C)``,
    ``(Z, H, W)`` or ``(Z, H, W, C)``.

    TIFF files are memory-mapped (uncompressed) or opened as zarr (compressed, tiled);
    PNG/JPEG are read whole; zarr arrays stay lazy. OME-Zarr axes are honoured (time points
    beyond the first are not read; ``c`` is moved last).

    Raises
    ------
    InputError
        When the file cannot be read or has a layout that is not an image.
    """
    path, suffix = item.path, Path(item.path).suffix.lower()
    try:
        if is_zarr(path):
            import zarr

            node = zarr.open(path, mode="r")
            arr = node[item.component] if item.component else node
            axes = _ome_axes(path, item.component) if item.component else None
            if axes and len(axes) == arr.ndim:
                arr = _apply_ome_axes(arr, axes)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            try:
                arr = tifffile.memmap(path, mode="r")
            except Exception:
                import zarr

                arr = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        else:
            import imageio.v3 as iio

            arr = iio.imread(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {item.label}: {type(exc).__name__}: {exc}") from exc
    return check_layout(arr, item.label)


class _Lazy:
    """A view of a zarr array with leading axes fixed and axes reordered, read on slicing."""

    def __init__(self, arr, fixed: tuple, order: tuple[int, ...]):
        self.arr, self.fixed, self.order = arr, fixed, order
        kept = [i for i, f in enumerate(fixed) if f is None]
        self.shape = tuple(arr.shape[kept[o]] for o in order)
        self.dtype = arr.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        # Output axis ``pos`` is kept axis ``order[pos]`` of the source (source order).
        source_key = [None] * self.ndim
        for pos, k in enumerate(self.order):
            source_key[k] = key[pos]
        it = iter(source_key)
        full = tuple(next(it) if f is None else f for f in self.fixed)
        data = np.asarray(self.arr[full])
        # The axes left in ``data`` (source order) and where each goes in the output.
        positions = [self.order.index(k) for k in range(self.ndim)
                     if not isinstance(source_key[k], int | np.integer)]
        return np.transpose(data, np.argsort(positions)) if data.ndim > 1 else data

    def __array__(self, dtype=None, copy=None):
        data = self[(slice(None),) * self.ndim]
        return data.astype(dtype) if dtype is not None else data


def _apply_ome_axes(arr, axes: list[str]):
    axes = [a.lower() for a in axes]
    fixed = tuple(0 if a == "t" else None for a in axes)
    kept = [a for a in axes if a != "t"]
    order = [kept.index(a) for a in ("z", "y", "x", "c") if a in kept]
    if len(order) != len(kept):
        return arr
    if fixed == (None,) * len(axes) and order == sorted(order):
        return arr
    return _Lazy(arr, fixed, tuple(order))


def check_layout(arr, label: str = "image"):
    """Check that ``arr`` is ``(H, W)``, ``(H, W, C)``, ``(Z, H, W)`` or ``(Z, H, W, C)``.

    Returns the array unchanged; raises :class:`InputError` with the reason otherwise.
    """
    shape = tuple(int(s) for s in arr.shape)
    dtype = np.dtype(arr.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.kind == "b"):
        raise InputError(f"{label}: pixels of dtype {dtype} are not supported (integers or floats).")
    if len(shape) < 2 or len(shape) > 4:
        raise InputError(f"{label}: expected a 2D image or a stack of planes, got shape {shape}.")
    if min(shape) < 1:
        raise InputError(f"{label}: the image is empty (shape {shape}).")
    if len(shape) == 4 and shape[-1] > MAX_CHANNELS:
        raise InputError(f"{label}: shape {shape} has more than {MAX_CHANNELS} channels on the last axis.")
    return arr


def layout(shape: tuple[int, ...]) -> tuple[int, bool]:
    """(number of planes, channels_last) of an image of ``shape`` (see :func:`check_layout`).

    A 3D array whose last axis has at most 4 entries is one plane with channels; otherwise it
    is a stack of planes.
    """
    if len(shape) == 2:
        return 1, False
    if len(shape) == 3:
        if shape[-1] <= MAX_CHANNELS:
            return 1, True
        return shape[0], False
    return shape[0], True


def plane_view(arr, index: int | None):
    """The ``index``-th plane of a stack (lazily where the array allows), or ``arr`` for a plane."""
    return arr if index is None else arr[index]
