"""COCO instance segmentation: writing a dataset with RLE masks, and reading one back.

Layout written::

    out/train/<name>.png                 images of the training split
    out/val/<name>.png                   images of the validation split
    out/annotations/instances_train.json
    out/annotations/instances_val.json

Each JSON is a COCO instance-segmentation file: ``images`` (``file_name`` relative to the
split's image folder, ``height``, ``width``), ``categories`` (``id`` = class id + 1, since
COCO keeps 0 for the background, ``name``) and ``annotations`` with one compressed RLE mask
per object (``pycocotools`` format, ``iscrowd`` 0, ``area`` and ``bbox`` as
``pycocotools.mask.area`` / ``toBbox`` give them). Each annotation also keeps the object's
label id as ``segsuite_label``, so reading the file back gives the same label image.

Reading accepts any COCO instance-segmentation JSON: RLE (compressed or not) and polygon
masks; crowd annotations (``iscrowd`` 1) are skipped; where masks of a foreign file overlap,
smaller objects are drawn on top.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import DatasetError
from napari_segsuite.datasets.common import (
    Plane,
    image_for_file,
    read_array,
    write_image,
)

SPLITS = ("train", "val")


def strip_counts(strip: np.ndarray, col0: int, height: int, width: int) -> list[int]:
    """Uncompressed COCO run lengths (column-major, starting with a background run) of an
    object whose pixels all lie in ``strip``: the full-height columns ``col0 ...`` of the image."""
    flat = strip.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    if flat[0]:
        runs.insert(0, 0)
    runs[0] += col0 * height
    tail = (width - col0 - strip.shape[1]) * height
    if len(runs) % 2 == 1:  # ends on background
        runs[-1] += tail
    elif tail:
        runs.append(tail)
    return runs


def encode_object(labels: np.ndarray, label_id: int, box: tuple[slice, slice]) -> tuple[dict, int, list[int]]:
    """Compressed RLE (through ``pycocotools``), area and ``[x, y, w, h]`` box of one label."""
    from pycocotools import mask as mask_utils

    height, width = labels.shape
    rows, cols = box
    strip = labels[:, cols] == label_id
    counts = strip_counts(strip, cols.start, height, width)
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    area = int(np.count_nonzero(strip[rows]))
    bbox = [cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start]
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}, area, bbox


class CocoWriter:
    """Collects images and annotations, then splits them and writes the JSON files."""

    format = "coco"

    def __init__(self, root: Path, image_format: str = "png"):
        self.root = root
        self.image_format = image_format
        self.staging = root / "_staging"
        self.staging.mkdir()
        self.images: list[dict] = []
        self.annotations: list[list[dict]] = []

    def add(self, plane: Plane, ids: np.ndarray, boxes: list, classes: list[int]) -> int:
        pixels, suffix = image_for_file(plane.image, self.image_format)
        file_name = plane.name + suffix
        write_image(self.staging / file_name, pixels)
        height, width = plane.labels.shape
        anns = []
        for label_id, box, cid in zip(ids, boxes, classes, strict=True):
            rle, area, bbox = encode_object(plane.labels, int(label_id), box)
            anns.append({
                "category_id": cid + 1, "segmentation": rle, "area": area, "bbox": bbox,
                "iscrowd": 0, "segsuite_label": int(label_id),
            })
        self.images.append({"file_name": file_name, "height": int(height), "width": int(width)})
        self.annotations.append(anns)
        return len(anns)

    def finish(self, is_val: np.ndarray, class_names: dict[int, str], info: dict) -> dict[str, Path]:
        categories = [{"id": cid + 1, "name": name, "supercategory": ""} for cid, name in class_names.items()]
        ann_dir = self.root / "annotations"
        ann_dir.mkdir()
        files = {}
        ann_id = 0
        for split in SPLITS:
            chosen = [k for k in range(len(self.images)) if bool(is_val[k]) == (split == "val")]
            if not chosen and split == "val":
                continue
            (self.root / split).mkdir()
            images, annotations = [], []
            for k in chosen:
                record = {"id": k + 1, **self.images[k]}
                (self.staging / record["file_name"]).rename(self.root / split / record["file_name"])
                images.append(record)
                for ann in self.annotations[k]:
                    ann_id += 1
                    annotations.append({"id": ann_id, "image_id": k + 1, **ann})
            doc = {"info": {**info, "split": split}, "licenses": [], "images": images,
                   "annotations": annotations, "categories": categories}
            path = ann_dir / f"instances_{split}.json"
            path.write_text(json.dumps(doc, separators=(",", ":")))  # the C encoder: dump() is slower
            files[split] = path
        self.staging.rmdir()
        return files


# -- reading ---------------------------------------------------------------------------


def looks_like_coco(doc) -> bool:
    """Whether a parsed JSON document has COCO's ``images``, ``annotations``, ``categories``."""
    return (isinstance(doc, dict) and isinstance(doc.get("images"), list)
            and isinstance(doc.get("annotations"), list) and isinstance(doc.get("categories"), list))


def load_coco(path: Path) -> dict:
    """Parse and check a COCO JSON; DatasetError with the reason when it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such file.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); is the file complete?") from exc
    if not looks_like_coco(doc):
        keys = sorted(doc)[:8] if isinstance(doc, dict) else type(doc).__name__
        raise DatasetError(
            f"{path} is not a COCO instance-segmentation file: it needs the lists 'images', "
            f"'annotations' and 'categories' (found {keys})."
        )
    for key, need in (("images", ("id", "file_name", "height", "width")),
                      ("annotations", ("image_id", "category_id", "segmentation")),
                      ("categories", ("id", "name"))):
        for entry in doc[key]:
            if not isinstance(entry, dict) or any(k not in entry for k in need):
                raise DatasetError(f"{path}: an entry of '{key}' lacks one of {need}: {str(entry)[:120]}")
    return doc


def split_name(json_path: Path) -> str:
    """``instances_train.json`` -> ``train``; ``instances_val2017.json`` -> ``val2017``."""
    stem = json_path.stem
    return stem.split("_", 1)[1] if stem.startswith("instances_") else stem


def image_folders(json_path: Path) -> list[Path]:
    """Where a COCO JSON's ``file_name`` may be relative to, most likely first."""
    split = split_name(json_path)
    here, up = json_path.parent, json_path.parent.parent
    return [up / split, up / "images" / split, here / split, up / "images", up, here, here / "images"]


def find_image(json_path: Path, file_name: str) -> Path:
    """The image file of ``file_name``; DatasetError naming the folders searched."""
    rel = Path(file_name)
    folders = image_folders(json_path)
    for folder in folders:
        if (folder / rel).is_file():
            return folder / rel
    raise DatasetError(
        f"{json_path.name}: image {file_name!r} not found in {', '.join(str(f) for f in folders[:4])} ..."
    )


def category_class_ids(categories: list[dict]) -> dict[int, int]:
    """COCO category id -> class id: id - 1 when all ids are >= 1 (this plugin's convention),
    the id itself otherwise."""
    ids = [int(c["id"]) for c in categories]
    shift = 1 if ids and min(ids) >= 1 else 0
    return {i: i - shift for i in ids}


def string_counts(text: bytes) -> np.ndarray:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in numpy)."""
    c = np.frombuffer(text, dtype=np.uint8).astype(np.int64) - 48
    if not len(c):
        return np.zeros(0, dtype=np.int64)
    ends = (c & 0x20) == 0
    if not ends[-1] or c.min() < 0 or c.max() > 63:
        raise DatasetError("a compressed RLE string that pycocotools did not write")
    starts = np.flatnonzero(np.concatenate(([True], ends[:-1])))
    group = np.cumsum(np.concatenate(([0], ends[:-1].astype(np.int64))))
    k = np.arange(len(c)) - starts[group]
    values = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    last = np.flatnonzero(ends)
    negative = (c[last] & 0x10) != 0
    values = np.where(negative, values - (np.int64(1) << (5 * (last - starts + 1))), values)
    counts = values.copy()
    counts[2::2] = np.cumsum(values[2::2])  # from the third on, each is a difference to m - 2
    if len(values) > 3:
        counts[3::2] = values[1] + np.cumsum(values[3::2])
    return counts


def rle_counts(segmentation, height: int, width: int) -> np.ndarray:
    """The column-major run lengths of a COCO ``segmentation`` (RLE, compressed or not, or
    polygons through pycocotools)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
        counts = string_counts(rle["counts"])
    elif isinstance(segmentation, dict) and "size" in segmentation and "counts" in segmentation:
        if tuple(segmentation["size"]) != (height, width):
            raise DatasetError(
                f"a mask of size {tuple(segmentation['size'])} in an image of size {(height, width)}"
            )
        raw = segmentation["counts"]
        if isinstance(raw, list):
            counts = np.asarray(raw, dtype=np.int64)
        elif isinstance(raw, str | bytes):
            counts = string_counts(raw.encode("ascii") if isinstance(raw, str) else raw)
        else:
            raise DatasetError(f"RLE counts of type {type(raw).__name__}")
    else:
        raise DatasetError(f"unknown COCO segmentation of type {type(segmentation).__name__}")
    if counts.size and (counts.min() < 0 or counts.sum() != height * width):
        raise DatasetError(f"RLE runs that do not cover the {height}x{width} image")
    return counts


def paint_runs(flat_columns: np.ndarray, counts: np.ndarray, value: int) -> None:
    """Set the pixels of an RLE's foreground runs to ``value`` in the column-major flat view
    of a label image."""
    bounds = np.concatenate(([0], np.cumsum(counts)))
    ones = np.arange(1, len(counts), 2)
    starts, lengths = bounds[ones], counts[ones]
    total = int(lengths.sum())
    if total:
        shift = starts - np.concatenate(([0], np.cumsum(lengths)[:-1]))
        flat_columns[np.repeat(shift, lengths) + np.arange(total)] = value


def iter_coco(json_path: Path, doc: dict | None = None) -> Iterator[dict]:
    """Yield each image of a COCO JSON as ``{name, split, image, labels, classes, file}``
    (``classes``: {label id: class id}); the categories are in :func:`coco_class_names`.
    ``doc`` is the parsed file when the caller has it already."""
    doc = load_coco(json_path) if doc is None else doc
    to_class = category_class_ids(doc["categories"])
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    split = split_name(json_path)
    for record in doc["images"]:
        height, width = int(record["height"]), int(record["width"])
        path = find_image(json_path, record["file_name"])
        image = read_array(path)
        if tuple(image.shape[:2]) != (height, width):
            raise DatasetError(
                f"{path.name} is {image.shape[:2]} but {json_path.name} says {(height, width)}."
            )
        anns = by_image.get(record["id"], [])
        own = [a.get("segsuite_label") for a in anns]
        keep_ids = all(isinstance(i, int) and i > 0 for i in own) and len(set(own)) == len(own)
        ids = own if keep_ids else list(range(1, len(anns) + 1))
        columns = np.zeros((width, height), dtype=np.int32)  # column-major, as RLE runs go
        flat = columns.reshape(-1)
        classes = {}
        order = sorted(range(len(anns)), key=lambda k: -float(anns[k].get("area", 0)))
        for k in order:
            ann = anns[k]
            if ann["category_id"] not in to_class:
                raise DatasetError(
                    f"{json_path.name}: annotation {ann.get('id')} has category {ann['category_id']}, "
                    "which is not in 'categories'."
                )
            try:
                counts = rle_counts(ann["segmentation"], height, width)
            except DatasetError as exc:
                raise DatasetError(f"{json_path.name}: annotation {ann.get('id')}: {exc}") from exc
            except Exception as exc:
                raise DatasetError(
                    f"{json_path.name}: annotation {ann.get('id')} has a mask pycocotools cannot read "
                    f"({type(exc).__name__}: {exc})."
                ) from exc
            paint_runs(flat, counts, ids[k])
            classes[ids[k]] = to_class[ann["category_id"]]
        labels = np.ascontiguousarray(columns.T)
        yield {"name": Path(record["file_name"]).stem, "split": split, "image": image,
               "labels": labels, "classes": classes, "file": path}


def coco_class_names(doc: dict) -> dict[int, str]:
    """``{class id: name}`` of a parsed COCO JSON's categories."""
    to_class = category_class_ids(doc["categories"])
    return {to_class[int(c["id"])]: str(c["name"]) for c in sorted(doc["categories"], key=lambda c: c["id"])}


def coco_jsons(folder: Path) -> list[Path]:
    """The COCO JSONs of a dataset folder (``annotations/*.json``, train before val)."""
    found = sorted((folder / "annotations").glob("*.json")) or sorted(folder.glob("*.json"))
    order = {"train": 0, "val": 1}
    return sorted(found, key=lambda p: (order.get(split_name(p), 2), p.name))

