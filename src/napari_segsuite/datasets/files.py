"""Image and label files for ``napari-segsuite export``: pairing them and reading class tables."""

from __future__ import annotations

from pathlib import Path

from napari_segsuite.core.errors import InputError

#: endings of a label file's stem that the image's stem does not have
LABEL_SUFFIXES = ("_labels", "_label", "-labels", ".labels", "_masks", "_mask", "_seg", "_instances")
TABLE_SUFFIXES = (".csv", ".parquet")


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def label_key(path: Path) -> str:
    """The image stem a label file belongs to (``cell_labels.tif`` -> ``cell``)."""
    stem = _stem(path)
    for suffix in LABEL_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def expand(specs, what: str) -> list[Path]:
    """Files of ``specs`` (files, folders, glob patterns) in order; InputError for none."""
    from napari_segsuite.batch.inputs import expand_inputs

    found = expand_inputs(specs)
    if found.problems:
        spec, reason = found.problems[0]
        raise InputError(f"{what} {spec}: {reason}")
    return [Path(item.path) for item in found.items]


def pair_files(images: list[Path], labels: list[Path]) -> list[tuple[Path, Path]]:
    """Each image with its label file, matched by name (``x.png`` with ``x.tif``,
    ``x_labels.tif``, ``x_mask.png`` ...); in the same order when no name matches at all."""
    by_key: dict[str, Path] = {}
    for lab in labels:
        for key in {label_key(lab), _stem(lab)}:
            if key in by_key and by_key[key] != lab:
                raise InputError(f"Two label files belong to image {key!r}: {by_key[key].name}, {lab.name}.")
            by_key[key] = lab
    pairs, missing = [], []
    for img in images:
        lab = by_key.get(_stem(img))
        if lab is None or lab == img:
            missing.append(img)
        else:
            pairs.append((img, lab))
    if not pairs and len(images) == len(labels):
        return list(zip(images, labels, strict=True))
    if missing:
        names = ", ".join(p.name for p in missing[:5])
        raise InputError(
            f"No label file for {len(missing)} image(s): {names}. Name label files like the images "
            f"(or with one of {', '.join(LABEL_SUFFIXES[:3])} ...)."
        )
    unused = set(labels) - {lab for _, lab in pairs}
    if unused:
        raise InputError(f"Label file(s) without an image: {', '.join(sorted(p.name for p in unused)[:5])}.")
    return pairs


def read_table(path: Path):
    """A CSV or Parquet table as a DataFrame; InputError when it cannot be read."""
    import pandas as pd

    try:
        return pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except Exception as exc:
        raise InputError(f"cannot read the table {path}: {type(exc).__name__}: {exc}") from exc


def sidecar_table(label_file: Path):
    """The table next to a label file (``NAME.csv`` / ``NAME.parquet``, as ``napari-segsuite run``
    writes them), or None."""
    for suffix in TABLE_SUFFIXES:
        for stem in {_stem(label_file), label_key(label_file)}:
            candidate = label_file.with_name(stem + suffix)
            if candidate.is_file():
                return read_table(candidate)
    return None


def classes_from_tables(tables: list, image_names: list[str]):
    """``(label_classes per image, class names or None)`` from tables with ``label`` and
    ``class_id`` (and optionally ``class_name``, ``image``) columns.

    ``tables`` holds one table for all images (rows with an ``image`` column are matched to
    image names) or one table (or None) per image.
    """
    import pandas as pd

    names: dict[int, str] = {}
    per_image = []
    for table, image in zip(tables, image_names, strict=True):
        if table is None:
            per_image.append(None)
            continue
        for col in ("label", "class_id"):
            if col not in table.columns:
                raise InputError(f"The class table for {image} has no {col!r} column ({list(table.columns)}).")
        rows = table[table["image"].astype(str) == image] if "image" in table.columns else table
        rows = rows.dropna(subset=["label", "class_id"])
        per_image.append(dict(zip(rows["label"].astype(int), rows["class_id"].astype(int), strict=True)))
        if "class_name" in rows.columns:
            for cid, name in zip(rows["class_id"].astype(int), rows["class_name"], strict=True):
                if pd.notna(name):
                    names.setdefault(int(cid), str(name))
    return per_image, (names or None)
