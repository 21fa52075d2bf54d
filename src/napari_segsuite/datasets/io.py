"""Export Labels with their images as a COCO or YOLO dataset, and import either back.

:func:`export_job` and :func:`iter_dataset` are generators (progress for the worker, one
image at a time); :func:`import_dataset` collects everything into an
:class:`ImportedDataset`.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_segsuite.core.errors import DatasetError, InputError
from napari_segsuite.core.progress import Job, Progress
from napari_segsuite.datasets.common import (
    SEED,
    ClassBook,
    ExportResult,
    StagedFolder,
    check_val_fraction,
    count_planes,
    iter_planes,
    objects_of,
    split_of,
)

DatasetFormat = Literal["coco", "yolo"]
FORMATS = ("coco", "yolo")


def export_job(
    images,
    labels,
    out,
    *,
    format: DatasetFormat = "coco",
    class_names=None,
    label_classes=None,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    names=None,
    image_format: str = "png",
) -> Job[ExportResult]:
    """Write a dataset (see :func:`napari_segsuite.api.export_dataset`), yielding progress.

    The dataset is written to a hidden folder beside ``out`` and renamed to ``out`` once
    complete; an error or closing the generator (Cancel) removes it and leaves ``out`` alone.
    """
    from napari_segsuite import __version__
    from napari_segsuite.datasets.coco import CocoWriter
    from napari_segsuite.datasets.yolo import YoloWriter

    if format not in FORMATS:
        raise InputError(f"format must be one of {FORMATS}, got {format!r}.")
    val_fraction = check_val_fraction(val_fraction)
    if image_format not in ("png", "tif"):
        raise InputError(f"image_format must be 'png' or 'tif', got {image_format!r}.")
    book = ClassBook.from_args(class_names, label_classes)
    total = count_planes(images, labels)
    staged = StagedFolder(out, overwrite=overwrite)
    try:
        writer = (CocoWriter if format == "coco" else YoloWriter)(staged.tmp, image_format)
        rows = []
        yield Progress(0, total, f"Exporting {format.upper()} dataset")
        for k, plane in enumerate(iter_planes(images, labels, names=names, label_classes=label_classes)):
            ids, boxes = objects_of(plane.labels)
            classes = book.classes_of(plane, ids)
            n = writer.add(plane, ids, boxes, classes)
            rows.append((plane.name, n))
            yield Progress(k + 1, total, f"{plane.name}: {n} objects")
        if not rows:
            raise InputError("No images to export.")
        if sum(n for _, n in rows) == 0:
            raise InputError(
                f"The labels have no objects in any of the {len(rows)} image(s); nothing to train on. "
                "Paint or segment some objects first."
            )
        class_names_final = book.finish()
        is_val = split_of(len(rows), val_fraction, SEED)
        info = {
            "description": "napari-segsuite dataset export",
            "version": __version__,
            "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "val_fraction": val_fraction,
            "split_seed": SEED,
            "image_format": image_format,
        }
        files = writer.finish(is_val, class_names_final, info)
        path = staged.commit()
    except BaseException:
        staged.discard()
        raise
    import pandas as pd

    table = pd.DataFrame({
        "image": [name for name, _ in rows],
        "split": np.where(is_val, "val", "train"),
        "objects": [n for _, n in rows],
    })
    provenance = {"format": format, **info, "n_train": int((~is_val).sum()), "n_val": int(is_val.sum())}
    if format == "yolo":
        provenance.update(
            min_polygon_iou=float(writer.min_iou), objects_below_iou_0_95=int(writer.below_floor),
            min_fillpoly_iou=float(writer.min_plain_iou),
            polygon_strategy="one polygon per object; holes and parts spliced in by marked zero-width cuts",
        )
    return ExportResult(path, format, class_names_final, {k: path / v.relative_to(staged.tmp)
                                                          for k, v in files.items()}, table, provenance)


# -- import ----------------------------------------------------------------------------


@dataclass
class ImportedDataset:
    """A dataset read back into arrays.

    Attributes
    ----------
    images : list of ndarray
        One image per dataset image, as stored (PNG: uint8, gray or RGB/RGBA).
    labels : list of ndarray
        int32 label images, one per image.
    label_classes : list of dict
        ``{label id: class id}`` per image.
    class_names : dict
        ``{class id: name}``.
    names : list of str
        Image names (file stems).
    splits : list of str
        The split of each image (``train``, ``val``, ...).
    table : pandas.DataFrame
        One row per object: ``image``, ``split``, ``label``, ``class_id``, ``class_name``, ``area``.
    provenance : dict
        ``format`` and ``path``.
    """

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    label_classes: list[dict[int, int]] = field(default_factory=list)
    class_names: dict[int, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    table: Any = None
    provenance: dict = field(default_factory=dict)


def detect(path) -> tuple[DatasetFormat, list[Path]]:
    """The format of a dataset path and its description files (COCO JSONs or one data.yaml).

    A COCO JSON or a ``data.yaml`` opens that file; a folder opens its ``data.yaml``, else
    its ``annotations/*.json``.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("data.yaml", "data.yml"):
            if (path / name).is_file():
                return "yolo", [path / name]
        from napari_segsuite.datasets.coco import coco_jsons

        jsons = coco_jsons(path)
        if jsons:
            return "coco", jsons
        raise DatasetError(f"{path} holds no data.yaml and no COCO annotations/*.json.")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder.")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "coco", [path]
    if suffix in (".yaml", ".yml"):
        return "yolo", [path]
    raise DatasetError(f"{path} is not a dataset: open a COCO .json, a data.yaml or a dataset folder.")


def open_dataset(path) -> tuple[DatasetFormat, dict[int, str], Iterator[dict]]:
    """Format, class names and an iterator of images (``{name, split, image, labels,
    classes, file}``) of a dataset; the description files are parsed and checked first."""
    fmt, class_names, images, _ = _open_counted(path)
    return fmt, class_names, images


def _open_counted(path) -> tuple[DatasetFormat, dict[int, str], Iterator[dict], int]:
    """:func:`open_dataset` and the number of images the iterator will yield."""
    fmt, files = detect(path)
    if fmt == "coco":
        from napari_segsuite.datasets.coco import coco_class_names, iter_coco, load_coco

        docs = [(f, load_coco(f)) for f in files]
        class_names: dict[int, str] = {}
        for _, doc in docs:
            class_names.update(coco_class_names(doc))

        def images():
            for f, doc in docs:
                yield from iter_coco(f, doc)

        return fmt, dict(sorted(class_names.items())), images(), sum(len(doc["images"]) for _, doc in docs)
    from napari_segsuite.datasets.yolo import (
        iter_yolo,
        load_data_yaml,
        split_images,
        yolo_class_names,
    )

    data = load_data_yaml(files[0])
    total = sum(len(split_files) for _, split_files in split_images(files[0], data))
    return fmt, yolo_class_names(data), iter_yolo(files[0], data), total


def import_job(path) -> Job[ImportedDataset]:
    """Read a whole dataset (see :func:`napari_segsuite.api.import_dataset`), yielding progress."""
    import pandas as pd

    fmt, class_names, images, total = _open_counted(path)
    yield Progress(0, total, f"Reading {total} image(s) of a {fmt.upper()} dataset")
    result = ImportedDataset(class_names=class_names, provenance={"format": fmt, "path": str(Path(path))})
    rows = []
    for k, record in enumerate(images):
        result.images.append(record["image"])
        result.labels.append(record["labels"])
        result.label_classes.append(record["classes"])
        result.names.append(record["name"])
        result.splits.append(record["split"])
        if record["classes"]:
            ids = np.fromiter(record["classes"], dtype=np.int64)
            areas = np.bincount(record["labels"].ravel(), minlength=int(ids.max()) + 1)[ids]
            for label, area in zip(ids.tolist(), areas.tolist(), strict=True):
                cid = record["classes"][label]
                rows.append((record["name"], record["split"], label, cid, class_names.get(cid, ""), area))
        yield Progress(k + 1, total, f"{record['name']} ({k + 1}/{total})")
    if not result.images:
        raise DatasetError(f"{path}: the dataset lists no images.")
    result.table = pd.DataFrame(rows, columns=["image", "split", "label", "class_id", "class_name", "area"])
    return result
