"""napari reader for COCO JSONs and ultralytics ``data.yaml`` files (no napari import).

Dropping a COCO instance-segmentation JSON or a YOLO ``data.yaml`` on the viewer opens an
Image layer and a Labels layer. When all images have the same shape and type they are
stacked (one plane per image, label ids made unique across planes when they repeat);
otherwise each image gets its own pair of layers. The Labels layer's ``features`` has one row
per object: ``label`` (the id; ``index`` repeats it for napari's status bar), ``class_id``,
``class_name``, ``image`` and ``split``; ``metadata["segsuite"]`` records the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import DatasetError
from napari_segsuite.core.vocabulary import LayerTask

SUFFIXES = (".json", ".yaml", ".yml")


def get_reader(path):
    """npe2 ``get_reader``: :func:`read_dataset` for a COCO JSON or a YOLO data.yaml, else None."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(str(path))
    if path.suffix.lower() not in SUFFIXES or not path.is_file():
        return None
    try:
        if path.suffix.lower() == ".json":
            from napari_segsuite.datasets.coco import load_coco

            load_coco(path)
        else:
            from napari_segsuite.datasets.yolo import load_data_yaml

            load_data_yaml(path)
    except DatasetError:
        return None
    return read_dataset


def _stackable(records: list[dict]) -> bool:
    first = records[0]["image"]
    return all(r["image"].shape == first.shape and r["image"].dtype == first.dtype for r in records)


def _features(rows: list[tuple]):
    import pandas as pd

    table = pd.DataFrame(rows, columns=["label", "class_id", "class_name", "image", "split"])
    table.insert(0, "index", table["label"])
    return table


def dataset_layers(path) -> list[tuple]:
    """Layer data tuples (image, labels per group) of the dataset at ``path``."""
    from napari_segsuite.datasets.io import open_dataset

    fmt, class_names, images = open_dataset(path)
    return records_layers(list(images), path, fmt, class_names)


def imported_layers(dataset) -> list[tuple]:
    """Layer data tuples of a dataset already read (:class:`~napari_segsuite.datasets.io.ImportedDataset`)."""
    records = [
        {"name": name, "split": split, "image": image, "labels": labels, "classes": classes}
        for name, split, image, labels, classes in zip(
            dataset.names, dataset.splits, dataset.images, dataset.labels, dataset.label_classes, strict=True)
    ]
    prov = dataset.provenance
    return records_layers(records, prov["path"], prov["format"], dataset.class_names)


def _title(path: Path) -> str:
    if path.is_dir():
        return path.name
    if path.suffix.lower() != ".json":
        return path.parent.name
    if path.parent.name == "annotations":
        return f"{path.parent.parent.name} {path.stem.removeprefix('instances_')}"
    return path.stem


def records_layers(records: list[dict], path, fmt: str, class_names: dict[int, str]) -> list[tuple]:
    """Layer data tuples of dataset images (``{name, split, image, labels, classes}`` each)."""
    if not records:
        raise DatasetError(f"{path}: the dataset lists no images.")
    path = Path(path)
    title = _title(path)
    meta = {"task": LayerTask.DATASET, "format": fmt, "path": str(path), "class_names": class_names}
    if _stackable(records):
        groups = [(title, records)]
    else:
        groups = [(f"{title} {r['name']}", [r]) for r in records]
    layers = []
    for name, group in groups:
        labels = np.stack([r["labels"] for r in group])
        offset, rows = 0, []
        ids_seen: set[int] = set()
        repeat = False
        for r in group:
            repeat |= bool(ids_seen & set(r["classes"]))
            ids_seen |= set(r["classes"])
        for k, r in enumerate(group):
            plane = labels[k]
            if repeat and r["classes"]:
                plane[plane > 0] += offset
            for label, cid in sorted(r["classes"].items()):
                new = label + offset if repeat else label
                rows.append((new, cid, class_names.get(cid, ""), r["name"], r["split"]))
            if repeat and r["classes"]:
                offset = int(plane.max())
        image = np.stack([r["image"] for r in group])
        if len(group) == 1:
            image, labels = image[0], labels[0]
        info = {**meta, "images": [r["name"] for r in group], "splits": [r["split"] for r in group]}
        layers.append((image, {"name": f"{name} [images]", "metadata": {"segsuite": info}}, "image"))
        layers.append((labels, {"name": f"{name} [labels]", "features": _features(rows),
                                "metadata": {"segsuite": info}}, "labels"))
    return layers


def read_dataset(path) -> list[tuple]:
    """npe2 reader function: the layers of one dataset file."""
    if isinstance(path, list | tuple):
        path = path[0]
    return dataset_layers(path)
