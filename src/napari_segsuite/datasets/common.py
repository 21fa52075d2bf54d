"""What the COCO and YOLO writers share: reading the inputs plane by plane, class maps,
the train/validation split, image files, and the output folder written atomically.

Inputs
------
``images`` and ``labels`` are each one item or an iterable of items (read lazily, one at a
time, so a generator of 1,000 images never holds more than one in memory). An item is an
array (NumPy, dask, zarr: anything with ``shape`` that slices to NumPy) or a path to an image
file (TIFF, PNG, JPEG, ``.npy``). A label item is ``(H, W)`` or a stack ``(..., H, W)``; its
image has the same shape, optionally with a last channel axis of 1 to 4 channels. Every plane
of a stack becomes one dataset image.

Classes
-------
``label_classes`` says which class each object is: a mapping ``{label id: class id}`` used for
every item, or a sequence with one mapping (or ``None``) per item, shared by all planes of a
stack. A ``pandas.DataFrame`` with columns ``label`` and ``class_id`` (a Labels layer's
``features``) counts as a mapping. ``class_names`` names the classes: a sequence (class id =
position) or a mapping ``{class id: name}``. Without ``label_classes`` every object has one
class (the only entry of ``class_names``, else ``0: "object"``).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_segsuite.core.errors import DatasetError, InputError

SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
_NAME_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


# -- inputs ----------------------------------------------------------------------------


def _is_item(obj) -> bool:
    return hasattr(obj, "shape") or isinstance(obj, str | os.PathLike)


def _items(obj) -> Iterator:
    if _is_item(obj):
        yield obj
        return
    if obj is None:
        return
    if not isinstance(obj, Iterable):
        raise InputError(f"Expected an array, a file path or a list of them, got {type(obj).__name__}.")
    yield from obj


def read_array(path) -> np.ndarray:
    """Pixels of an image file (TIFF, PNG, JPEG, BMP, ``.npy``) as an array."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if suffix == ".npy":
            return np.load(path, mmap_mode="r")
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            return np.asarray(im)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file.") from exc
    except Exception as exc:
        raise InputError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def _name_of(obj, index: int) -> str:
    if isinstance(obj, str | os.PathLike):
        return Path(obj).stem
    return f"image{index:05d}"


def safe_name(name: str) -> str:
    """``name`` with characters other than letters, digits, ``.``, ``_``, ``-`` replaced."""
    return _NAME_SAFE.sub("_", str(name)).strip("._") or "image"


@dataclass
class Plane:
    """One dataset image: a 2D (or 2D + channels) image and its 2D label image."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    item: int
    classes: dict[int, int] | None


def _plane_index_name(index: tuple[int, ...]) -> str:
    return "_".join(f"{i:04d}" for i in index)


def _check_pair(image, labels, what: str) -> bool:
    """Whether ``image`` has channels (last axis); InputError when shapes do not fit."""
    lshape, ishape = tuple(labels.shape), tuple(image.shape)
    if len(lshape) < 2:
        raise InputError(f"{what}: labels must be 2D or a stack of 2D planes, got shape {lshape}.")
    if ishape == lshape:
        return False
    if len(ishape) == len(lshape) + 1 and ishape[:-1] == lshape and 1 <= ishape[-1] <= 4:
        return True
    raise InputError(
        f"{what}: the image (shape {ishape}) and its labels (shape {lshape}) do not match; the image "
        f"must have the labels' shape, optionally with a last axis of 1-4 channels."
    )


def _label_plane(arr, what: str) -> np.ndarray:
    lab = np.asarray(arr)
    if lab.dtype == bool:
        return lab.astype(np.int32)
    if not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"{what}: labels must be integers, got dtype {lab.dtype}.")
    if lab.size and lab.min() < 0:
        raise InputError(f"{what}: labels must not be negative (found {int(lab.min())}).")
    return lab


def iter_planes(images, labels, *, names=None, label_classes=None) -> Iterator[Plane]:
    """Yield the dataset images of ``images``/``labels`` one plane at a time (see module doc)."""
    per_item_classes = None
    if label_classes is not None and not is_class_map(label_classes):
        per_item_classes = iter(label_classes)
    global_classes = as_class_map(label_classes) if is_class_map(label_classes) else None
    name_iter = iter(names) if names is not None else None
    image_iter, label_iter = _items(images), _items(labels)
    used: set[str] = set()
    sentinel = object()
    k = 0
    while True:
        img, lab = next(image_iter, sentinel), next(label_iter, sentinel)
        if img is sentinel and lab is sentinel:
            return
        if img is sentinel or lab is sentinel:
            raise InputError(
                f"There are {'more' if img is sentinel else 'fewer'} label items than images "
                f"(they differ after {k}); give one label image (or stack) per image."
            )
        given = next(name_iter, None) if name_iter is not None else None
        base = safe_name(given if given is not None else _name_of(img, k))
        if per_item_classes is not None:
            entry = next(per_item_classes, sentinel)
            if entry is sentinel:
                raise InputError(f"label_classes has fewer entries than there are images ({k} < {k + 1}).")
            classes = as_class_map(entry) if entry is not None else None
        else:
            classes = global_classes
        if isinstance(img, str | os.PathLike):
            img = read_array(img)
        if isinstance(lab, str | os.PathLike):
            lab = read_array(lab)
        what = f"image {k} ({base})"
        channels = _check_pair(img, lab, what)
        lead = tuple(lab.shape[:-2])
        for index in np.ndindex(*lead) if lead else [()]:
            name = f"{base}_{_plane_index_name(index)}" if lead else base
            unique, n = name, 1
            while unique.lower() in used:
                n += 1
                unique = f"{name}-{n}"
            used.add(unique.lower())
            plane = np.asarray(img[index]) if index else np.asarray(img)
            if channels and plane.shape[-1] == 1:
                plane = plane[..., 0]
            lab_plane = _label_plane(lab[index] if index else lab, what)
            yield Plane(unique, plane, lab_plane, k, classes)
        k += 1


def count_planes(images, labels) -> int | None:
    """Number of dataset images when it can be known without reading pixels, else None."""
    items = labels if _is_item(labels) else None
    if items is not None:
        return int(np.prod(items.shape[:-2])) if hasattr(items, "shape") else None
    if not hasattr(labels, "__len__"):
        return None
    total = 0
    for lab in labels:
        if not hasattr(lab, "shape"):
            return None
        total += int(np.prod(lab.shape[:-2]))
    return total


# -- classes ---------------------------------------------------------------------------


def is_class_map(obj) -> bool:
    """Whether ``obj`` is one ``{label: class}`` mapping (rather than one per item)."""
    return isinstance(obj, Mapping) or _is_frame(obj)


def _is_frame(obj) -> bool:
    return hasattr(obj, "columns") and hasattr(obj, "to_dict")


def as_class_map(obj) -> dict[int, int]:
    """``{label id: class id}`` from a mapping or a table with ``label`` and ``class_id``."""
    if _is_frame(obj):
        if "label" not in obj.columns or "class_id" not in obj.columns:
            raise InputError(
                "A label_classes table needs the columns 'label' and 'class_id', "
                f"it has {list(obj.columns)}."
            )
        obj = dict(zip(obj["label"].tolist(), obj["class_id"].tolist(), strict=True))
    if not isinstance(obj, Mapping):
        raise InputError(f"label_classes entries must be mappings {{label: class}}, got {type(obj).__name__}.")
    out = {}
    for label, cls in obj.items():
        try:
            label_i, cls_i = int(label), int(cls)
        except (TypeError, ValueError) as exc:
            raise InputError(f"label_classes: {label!r} -> {cls!r} is not an integer pair.") from exc
        if label_i <= 0 or cls_i < 0:
            raise InputError(
                f"label_classes: label ids must be positive and class ids non-negative ({label_i} -> {cls_i})."
            )
        out[label_i] = cls_i
    return out


def as_class_names(class_names) -> dict[int, str] | None:
    """``{class id: name}`` from a sequence (id = position) or a mapping; None stays None."""
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise InputError("class_names must be a list or a mapping of names, not one string.")
    items = class_names.items() if isinstance(class_names, Mapping) else enumerate(class_names)
    out = {}
    for cid, name in items:
        try:
            cid = int(cid)
        except (TypeError, ValueError) as exc:
            raise InputError(f"class_names: class id {cid!r} is not an integer.") from exc
        if cid < 0:
            raise InputError(f"class_names: class ids must be non-negative, got {cid}.")
        out[cid] = str(name)
    if not out:
        raise InputError("class_names is empty; give at least one name or leave it None.")
    if len(set(out.values())) != len(out):
        raise InputError(f"class_names has repeated names: {sorted(out.values())}.")
    return dict(sorted(out.items()))


@dataclass
class ClassBook:
    """Resolves each object's class and checks the class maps against the labels.

    Every class named in ``class_names`` becomes a category, whether or not an object has it
    (class ids stay stable between exports). A label id without a class, a class id without a
    name, and a ``label_classes`` entry for a label id found in no image are errors.
    """

    names: dict[int, str] | None
    has_label_classes: bool
    used_classes: set[int] = field(default_factory=set)
    #: per class-map object id: (its labels, the labels seen in its images)
    _maps: dict[int, tuple[dict[int, int], set[int]]] = field(default_factory=dict)

    @classmethod
    def from_args(cls, class_names, label_classes) -> ClassBook:
        names = as_class_names(class_names)
        if label_classes is None and names is not None and len(names) > 1:
            raise InputError(
                f"class_names names {len(names)} classes but label_classes is not given: "
                "say which class each label is (label_classes={label: class id})."
            )
        return cls(names, label_classes is not None)

    def classes_of(self, plane: Plane, ids: np.ndarray) -> list[int]:
        """The class id of each label id in ``ids`` (present in ``plane``)."""
        if plane.classes is None:
            if self.has_label_classes and self.names is not None and len(self.names) > 1:
                raise InputError(
                    f"{plane.name}: no label_classes entry for this image and class_names has "
                    f"{len(self.names)} classes; say which class each label is."
                )
            cid = next(iter(self.names)) if self.names else 0
            self.used_classes.add(cid)
            return [cid] * len(ids)
        mapping = plane.classes
        entry = self._maps.setdefault(id(mapping), (mapping, set()))
        entry[1].update(int(i) for i in ids)
        out = []
        missing = [int(i) for i in ids if int(i) not in mapping]
        if missing:
            raise InputError(
                f"{plane.name}: label(s) {_short(missing)} have no class in label_classes; "
                "give every label a class id (or remove those objects)."
            )
        for i in ids:
            cid = mapping[int(i)]
            if self.names is not None and cid not in self.names:
                raise InputError(
                    f"{plane.name}: label {int(i)} has class id {cid}, which class_names does not name "
                    f"(it names {sorted(self.names)})."
                )
            out.append(cid)
        self.used_classes.update(out)
        return out

    def finish(self) -> dict[int, str]:
        """Check the maps against the labels seen; the final ``{class id: name}``."""
        for mapping, seen in self._maps.values():
            absent = sorted(set(mapping) - seen)
            if absent:
                raise InputError(
                    f"label_classes names label(s) {_short(absent)} that are not in the labels; "
                    "remove them from the class map (or paint those objects)."
                )
        if self.names is not None:
            return dict(self.names)
        return {c: ("object" if not self.has_label_classes else f"class_{c}") for c in sorted(self.used_classes)}


def _short(values: list[int], n: int = 10) -> str:
    text = ", ".join(str(v) for v in values[:n])
    return text + (f" and {len(values) - n} more" if len(values) > n else "")


def objects_of(labels: np.ndarray) -> tuple[np.ndarray, list[tuple[slice, slice]]]:
    """Label ids present (sorted) and each one's bounding box as a pair of slices."""
    from scipy import ndimage

    if not labels.any():
        return np.zeros(0, dtype=np.int64), []
    max_id = int(labels.max())
    if max_id <= 4 * labels.size:
        boxes = ndimage.find_objects(labels, max_label=max_id)
        ids = np.asarray([i + 1 for i, b in enumerate(boxes) if b is not None], dtype=np.int64)
        return ids, [boxes[i - 1] for i in ids]
    ids = np.unique(labels)
    ids = ids[ids != 0]
    compact = np.searchsorted(ids, labels) + 1
    compact[labels == 0] = 0
    return ids.astype(np.int64), list(ndimage.find_objects(compact, max_label=len(ids)))


# -- split -----------------------------------------------------------------------------


def split_of(n: int, val_fraction: float, seed: int = SEED) -> np.ndarray:
    """Boolean ``is validation`` for ``n`` images: ``round(n * val_fraction)`` of them
    (at least one and at most ``n - 1`` when ``val_fraction > 0`` and ``n >= 2``), chosen by a
    permutation with a fixed seed, so the same inputs always give the same split."""
    is_val = np.zeros(n, dtype=bool)
    if val_fraction <= 0 or n < 2:
        return is_val
    k = min(n - 1, max(1, round(n * val_fraction)))
    order = np.random.default_rng(seed).permutation(n)
    is_val[order[:k]] = True
    return is_val


def check_val_fraction(val_fraction: float) -> float:
    """``val_fraction`` as a float in [0, 1); InputError otherwise."""
    try:
        value = float(val_fraction)
    except (TypeError, ValueError) as exc:
        raise InputError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}.") from exc
    if not 0.0 <= value < 1.0:
        raise InputError(f"val_fraction must be in [0, 1), got {value}.")
    return value


# -- image files -----------------------------------------------------------------------


def image_for_file(plane: np.ndarray, image_format: str) -> tuple[np.ndarray, str]:
    """The pixels to write and the file suffix.

    ``"png"`` writes 8-bit PNG: uint8 as is, other dtypes percentile-normalised to 0-255
    (:func:`~napari_segsuite.core.image.percentile_normalize`); 1, 3 or 4 channels.
    ``"tif"`` writes the pixels unchanged (any dtype, any channel count) as TIFF.
    """
    if image_format == "tif":
        return plane, ".tif"
    if image_format != "png":
        raise InputError(f"image_format must be 'png' or 'tif', got {image_format!r}.")
    if plane.ndim == 3 and plane.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"PNG holds 1, 3 or 4 channels, this image has {plane.shape[-1]}; use image_format='tif'."
        )
    if plane.dtype == bool:
        plane = plane.astype(np.uint8) * 255
    if plane.dtype != np.uint8:
        from napari_segsuite.core.image import percentile_normalize

        if not (np.issubdtype(plane.dtype, np.integer) or np.issubdtype(plane.dtype, np.floating)):
            raise InputError(f"Images of dtype {plane.dtype} cannot be written; use integers or floats.")
        plane = (percentile_normalize(plane) * 255.0 + 0.5).astype(np.uint8)
    return plane, ".png"


def write_image(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` to ``path`` (PNG through Pillow, TIFF through tifffile)."""
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, pixels)
        return
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(pixels)).save(path, compress_level=1)


# -- the output folder -----------------------------------------------------------------


def is_dataset_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a YOLO (``data.yaml``) or COCO (``annotations/*.json``) dataset."""
    return (folder / "data.yaml").is_file() or any((folder / "annotations").glob("*.json"))


class StagedFolder:
    """Write a dataset into a hidden folder beside ``out`` and rename it to ``out`` at the end.

    ``out`` must not exist or be an empty folder, unless ``overwrite`` and ``out`` holds a
    dataset (``data.yaml`` or ``annotations/*.json``): then the old folder is replaced only
    once the new one is complete. A non-empty folder without a dataset is never replaced. On any error, or when the job is
    cancelled, the hidden folder is removed and ``out`` is left as it was.
    """

    def __init__(self, out, overwrite: bool = False):
        self.out = Path(out).expanduser().absolute()
        if self.out.exists() and not self.out.is_dir():
            raise DatasetError(f"{self.out} exists and is a file; choose a folder for the dataset.")
        if self.out.is_dir() and any(self.out.iterdir()):
            if not overwrite:
                raise DatasetError(
                    f"{self.out} exists and is not empty; choose another folder or allow overwriting "
                    "(overwrite=True, --overwrite)."
                )
            if not is_dataset_folder(self.out):
                raise DatasetError(
                    f"{self.out} holds files but no dataset (no data.yaml, no annotations/*.json); "
                    "only a dataset folder is replaced. Choose an empty or new folder."
                )
        parent = self.out.parent
        if not parent.is_dir():
            try:
                parent.mkdir(parents=True)
            except OSError as exc:
                raise DatasetError(f"cannot create {parent}: {exc}") from exc
        tag = uuid.uuid4().hex[:8]
        self.tmp = parent / f".{self.out.name}.segsuite-tmp-{tag}"
        self._old = parent / f".{self.out.name}.segsuite-old-{tag}"
        try:
            self.tmp.mkdir()
        except OSError as exc:
            raise DatasetError(f"cannot write in {parent}: {exc}") from exc

    def commit(self) -> Path:
        """Move the finished dataset to ``out`` (replacing what was there)."""
        if self.out.exists():
            self.out.rename(self._old)
        self.tmp.rename(self.out)
        shutil.rmtree(self._old, ignore_errors=True)
        return self.out

    def discard(self) -> None:
        """Remove the unfinished dataset."""
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class ExportResult:
    """What :func:`~napari_segsuite.api.export_dataset` wrote.

    Attributes
    ----------
    path : Path
        The dataset folder.
    format : str
        ``"coco"`` or ``"yolo"``.
    class_names : dict
        ``{class id: name}`` of the dataset's categories.
    files : dict
        The main files: ``{"train": ..., "val": ...}`` (COCO JSONs) or ``{"data": data.yaml}``.
    table : pandas.DataFrame
        One row per image: ``image`` (file name), ``split``, ``objects``.
    provenance : dict
        Format, split seed and fraction, image format, counts; for YOLO the polygon strategy
        and the smallest polygon-vs-mask IoU of any object (``min_polygon_iou``).
    """

    path: Path
    format: str
    class_names: dict[int, str]
    files: dict[str, Path]
    table: Any
    provenance: dict

    @property
    def n_images(self) -> int:
        return len(self.table)

    @property
    def n_objects(self) -> int:
        return int(self.table["objects"].sum()) if len(self.table) else 0
