"""ultralytics YOLO segmentation datasets: one polygon per object, written and read back.

Layout written (ultralytics' own)::

    out/data.yaml                  train/val image folders (relative), nc, names
    out/images/train/<name>.png    out/labels/train/<name>.txt
    out/images/val/<name>.png      out/labels/val/<name>.txt

A label file has one line per object: ``class x1 y1 x2 y2 ...`` with the class index
(0 ... nc-1) and the polygon's vertices normalised by the image width and height. An image
without objects gets an empty label file (a background image for ultralytics).

Polygons
--------
A vertex is a pixel index (``x = column / width``), the convention of ultralytics' own mask
tools: an object's outline runs through its boundary pixels (``cv2.findContours``, collinear
vertices dropped), and ``cv2.fillPoly``, which fills the outline's pixels too, gives back the
object's pixels exactly for a simply connected object.

An object with holes or of several parts is still one polygon (one line): every further
outline (a hole's inner boundary, another part's outer boundary) is spliced into the first
through a zero-width cut between nearby boundary pixels of two outlines (a tree of shortest
links), written ``v v r ... r r v``: the doubled vertices mark where a cut leaves and comes
back. Reading splits the polygon at the marks into its outlines again and fills them together
with the even-odd rule, outlines included: holes stay empty and cuts add nothing, so the
object's pixels come back (the writer checks every object and records the smallest IoU,
``min_polygon_iou``, and the objects below 0.95). ultralytics draws the whole polygon as one
ring: a hole is still empty there (its cut runs over the object's own pixels), but a cut
between two parts adds the line of pixels across the gap (``min_fillpoly_iou`` records the
smallest IoU of that drawing). A foreign polygon without marks is one outline.

Class indices must be 0 ... nc-1 in ultralytics: class ids ``0 ... n-1`` are written as they
are; other ids are numbered in increasing order and the original ids kept in ``data.yaml``
as ``segsuite_class_ids`` (ultralytics ignores that key; reading uses it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import DatasetError
from napari_segsuite.datasets.common import (
    IMAGE_SUFFIXES,
    Plane,
    image_for_file,
    read_array,
    write_image,
)

IOU_FLOOR = 0.95
SPLITS = ("train", "val")


# -- polygons --------------------------------------------------------------------------


def _drop_collinear(poly: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight run between their neighbours."""
    if len(poly) < 4:
        return poly
    prev, nxt = np.roll(poly, 1, axis=0), np.roll(poly, -1, axis=0)
    d1, d2 = poly - prev, nxt - poly
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    dot = (d1 * d2).sum(axis=1)
    keep = (cross != 0) | (dot <= 0)
    return poly[keep] if keep.sum() >= 3 else poly


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def mask_rings(mask: np.ndarray) -> list[np.ndarray]:
    """The outlines of a mask (``(N, 2)`` int x, y pixel indices through its boundary pixels):
    outer outlines with a non-negative signed area, hole outlines with a negative one."""
    import cv2

    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    rings = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0] if len(contours) else [], strict=True):
        ring = _drop_collinear(contour.reshape(-1, 2).astype(np.int64))
        area = _signed_area(ring)
        if (parent >= 0 and area > 0) or (parent < 0 and area < 0):
            ring = ring[::-1]
        rings.append(ring)
    if not rings:
        raise ValueError("empty mask")
    return rings


def _ring_links(rings: list[np.ndarray]) -> list[tuple[float, int, int, int, int]]:
    """Links ``(distance, ring a, vertex i, ring b, vertex j)`` of a tree joining all rings,
    each link between nearby vertices of two rings (never of length 0), shortest first
    (Kruskal over each vertex's nearest vertices of other rings)."""
    from scipy.spatial import cKDTree

    points = np.concatenate(rings)
    owner = np.concatenate([np.full(len(r), k) for k, r in enumerate(rings)])
    index = np.concatenate([np.arange(len(r)) for r in rings])
    tree = cKDTree(points)
    k = min(len(points), 12)
    dist, idx = tree.query(points, k=k)
    src = np.repeat(np.arange(len(points)), k)
    dist, idx = dist.ravel(), idx.ravel()
    ok = (owner[src] != owner[idx]) & (dist > 0) & np.isfinite(dist)
    dist, src, idx = dist[ok], src[ok], idx[ok]
    # the shortest candidate of each pair of rings, shortest first
    pair = np.minimum(owner[src], owner[idx]) * len(rings) + np.maximum(owner[src], owner[idx])
    order = np.lexsort((dist, pair))
    first = order[np.r_[True, pair[order][1:] != pair[order][:-1]]] if len(order) else order
    first = first[np.argsort(dist[first], kind="stable")]
    cand = list(zip(dist[first].tolist(), src[first].tolist(), idx[first].tolist(), strict=True))
    parent = list(range(len(rings)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    links = []

    def join(d, a, b):
        ra, rb = find(owner[a]), find(owner[b])
        if ra != rb:
            parent[ra] = rb
            links.append((d, int(owner[a]), int(index[a]), int(owner[b]), int(index[b])))

    for d, a, b in cand:
        join(d, a, b)
    while len(links) < len(rings) - 1:  # rings too far apart for the neighbour lists
        root = find(0)
        inside = np.asarray([find(int(o)) == root for o in owner])
        out_tree = cKDTree(points[~inside])
        d, j = out_tree.query(points[inside])
        d = np.where(d == 0, np.inf, d)
        a = int(np.argmin(d)) if np.isfinite(d).any() else 0
        join(float(d[a]), int(np.flatnonzero(inside)[a]), int(np.flatnonzero(~inside)[j[a]]))
    return links


def splice_rings(rings: list[np.ndarray]) -> np.ndarray:
    """One vertex sequence holding all ``rings``: the rings are joined by a tree of short
    links (:func:`_ring_links`), each further ring hanging from a vertex ``v`` of the ring
    before it through a cut written ``v v r ... r r v`` (the doubled vertices mark the cut;
    drawing the sequence as one polygon still gives the same area).
    :func:`split_rings` undoes it."""
    root = max(range(len(rings)), key=lambda k: len(rings[k]))
    adjacency: dict[int, list[tuple[int, int, int]]] = {}
    for _, a, i, b, j in _ring_links(rings) if len(rings) > 1 else []:
        adjacency.setdefault(a, []).append((i, b, j))
        adjacency.setdefault(b, []).append((j, a, i))
    children: dict[tuple[int, int], list[tuple[int, int]]] = {}
    seen, todo = {root}, [root]
    while todo:
        k = todo.pop()
        for i, other, j in adjacency.get(k, []):
            if other not in seen:
                seen.add(other)
                children.setdefault((k, i), []).append((other, j))
                todo.append(other)

    out: list[np.ndarray] = []
    todo_walk: list[tuple] = [("ring", root, 0)]
    while todo_walk:
        item = todo_walk.pop()
        if item[0] == "emit":
            out.append(item[1])
            continue
        _, k, start = item
        ring = rings[k]
        order = np.roll(ring, -start, axis=0)
        hooks = sorted(((i - start) % len(ring), i) for (owner, i) in children if owner == k)
        actions, done = [], 0
        for pos, i in hooks:
            actions.append(("emit", order[done: pos + 1]))
            for child, j in children[(k, i)]:
                actions += [("emit", ring[i: i + 1]), ("ring", child, j),
                            ("emit", np.stack([rings[child][j], rings[child][j], ring[i]]))]
            done = pos + 1
        actions.append(("emit", order[done:]))
        todo_walk.extend(reversed(actions))
    seq = np.concatenate(out) if len(rings) > 1 else rings[0]
    if len(seq) < 3:
        seq = np.concatenate([seq, np.repeat(seq[-1:], 3 - len(seq), axis=0)])
    return seq


def split_rings(seq: np.ndarray) -> list[np.ndarray]:
    """The rings of a sequence written by :func:`splice_rings` (any other polygon is one ring)."""
    pts = [tuple(v) for v in np.asarray(seq).tolist()]
    n = len(pts)
    rings: list[list] = []
    stack: list[tuple[list, tuple | None, tuple | None]] = [([], None, None)]
    pos = 0
    while pos < n:
        v = pts[pos]
        ring, start, anchor = stack[-1]
        if pos + 2 < n and pts[pos + 1] == v:
            w = pts[pos + 2]
            if len(stack) > 1 and v == start and w == anchor:
                rings.append(ring)
                stack.pop()
                pos += 2
                continue
            if w != v:
                if not ring or ring[-1] != v:
                    ring.append(v)
                stack.append(([], w, v))
                pos += 2
                continue
        if not ring or ring[-1] != v:
            ring.append(v)
        pos += 1
    if len(stack) > 1:  # a doubled vertex that is no mark of ours: the polygon is one outline
        keep = [k for k in range(n) if k == 0 or pts[k] != pts[k - 1]]
        return [np.asarray([pts[k] for k in keep], dtype=np.int64)]
    if stack[0][0]:
        rings.append(stack[0][0])
    return [np.asarray(r, dtype=np.int64) for r in rings if r]


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon (``(N, 2)`` int x, y pixel indices, N >= 3) for a mask: its outline, with
    holes and further parts spliced in through marked cuts (module doc)."""
    return splice_rings(mask_rings(mask))


def fill_polygon(shape: tuple[int, int], xy: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixels of a polygon (pixel indices) as a box (row, column slices of an image of
    ``shape``) and a boolean mask of that box.

    The polygon is split into its rings (:func:`split_rings`), which are filled together
    with the even-odd rule, outlines included (``cv2.fillPoly`` + ``cv2.polylines``): holes
    stay empty and cuts between parts add no pixels.
    """
    import cv2

    xy = np.asarray(xy, dtype=np.int64)
    h, w = shape
    x0, y0 = max(int(xy[:, 0].min()), 0), max(int(xy[:, 1].min()), 0)
    x1, y1 = min(int(xy[:, 0].max()) + 1, w), min(int(xy[:, 1].max()) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), dtype=bool)
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    rings = [(r - (x0, y0)).astype(np.int32) for r in split_rings(xy)]
    cv2.fillPoly(canvas, rings, 1)
    cv2.polylines(canvas, rings, True, 1)
    return (slice(y0, y1), slice(x0, x1)), canvas.astype(bool)


def fill_plain(shape: tuple[int, int], xy: np.ndarray) -> tuple[tuple[slice, slice], np.ndarray]:
    """The pixels ``cv2.fillPoly`` gives the polygon as one ring (what ultralytics draws)."""
    import cv2

    xy = np.asarray(xy, dtype=np.int64)
    h, w = shape
    x0, y0 = max(int(xy[:, 0].min()), 0), max(int(xy[:, 1].min()), 0)
    x1, y1 = min(int(xy[:, 0].max()) + 1, w), min(int(xy[:, 1].max()) + 1, h)
    canvas = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=np.uint8)
    if canvas.size:
        cv2.fillPoly(canvas, [(xy - (x0, y0)).astype(np.int32)], 1)
    return (slice(y0, y1), slice(x0, x1)), canvas.astype(bool)


def _iou(labels, label_id, crop_area, filled) -> float:
    (fr, fc), m = filled
    inter = np.count_nonzero(m & (labels[fr, fc] == label_id))
    union = np.count_nonzero(m) + crop_area - inter
    return inter / union if union else 1.0


def object_polygon(labels: np.ndarray, label_id: int, box: tuple[slice, slice]) -> tuple[np.ndarray, float, float]:
    """The polygon of one label (image pixel indices), the IoU of the pixels reading it back
    gives (:func:`fill_polygon`) and of the pixels ``cv2.fillPoly`` gives (ultralytics)."""
    rows, cols = box
    crop = labels[rows, cols] == label_id
    poly = np.add(mask_polygon(crop), (cols.start, rows.start))
    area = int(np.count_nonzero(crop))
    return (poly, _iou(labels, label_id, area, fill_polygon(labels.shape, poly)),
            _iou(labels, label_id, area, fill_plain(labels.shape, poly)))


def polygon_line(class_index: int, poly: np.ndarray, shape: tuple[int, int]) -> str:
    """``class x1 y1 ...`` with the vertices (pixel indices) normalised, six decimals."""
    h, w = shape
    coords = np.empty(poly.shape, dtype=np.float64)
    # half a unit of the last digit up: the written value is never below column / width, so
    # ultralytics' int32 truncation and this reader's rounding both give the pixel back
    coords[:, 0] = poly[:, 0] / w + 5e-7
    coords[:, 1] = poly[:, 1] / h + 5e-7
    flat = coords.ravel().tolist()
    return f"{class_index} " + " ".join(["%.6f"] * len(flat)) % tuple(flat)


# -- writing ---------------------------------------------------------------------------


class YoloWriter:
    """Writes images and label files as they come, then splits them and writes data.yaml."""

    format = "yolo"

    def __init__(self, root: Path, image_format: str = "png"):
        self.root = root
        self.image_format = image_format
        self.stage_images = root / "images" / "_staging"
        self.stage_labels = root / "labels" / "_staging"
        self.stage_images.mkdir(parents=True)
        self.stage_labels.mkdir(parents=True)
        self.files: list[tuple[str, str]] = []
        self.min_iou = 1.0
        self.min_plain_iou = 1.0
        self.below_floor = 0

    def add(self, plane: Plane, ids: np.ndarray, boxes: list, classes: list[int]) -> int:
        pixels, suffix = image_for_file(plane.image, self.image_format)
        write_image(self.stage_images / (plane.name + suffix), pixels)
        lines = []
        for label_id, box, cid in zip(ids, boxes, classes, strict=True):
            poly, iou, plain = object_polygon(plane.labels, int(label_id), box)
            self.min_iou = min(self.min_iou, iou)
            self.min_plain_iou = min(self.min_plain_iou, plain)
            self.below_floor += iou < IOU_FLOOR
            lines.append(polygon_line(cid, poly, plane.labels.shape))
        (self.stage_labels / (plane.name + ".txt")).write_text("\n".join(lines) + ("\n" if lines else ""))
        self.files.append((plane.name, plane.name + suffix))
        return len(lines)

    def finish(self, is_val: np.ndarray, class_names: dict[int, str], info: dict) -> dict[str, Path]:
        import yaml

        ids = sorted(class_names)
        identity = ids == list(range(len(ids)))
        index = {cid: k for k, cid in enumerate(ids)}
        for split in SPLITS:
            if split == "val" and not is_val.any():
                continue
            (self.root / "images" / split).mkdir()
            (self.root / "labels" / split).mkdir()
        for (stem, file_name), val in zip(self.files, is_val, strict=True):
            split = "val" if val else "train"
            (self.stage_images / file_name).rename(self.root / "images" / split / file_name)
            label_file = self.stage_labels / (stem + ".txt")
            if not identity:
                lines = label_file.read_text().splitlines()
                fixed = [f"{index[int(ln.split(' ', 1)[0])]} {ln.split(' ', 1)[1]}" for ln in lines]
                label_file.write_text("".join(f"{ln}\n" for ln in fixed))
            label_file.rename(self.root / "labels" / split / (stem + ".txt"))
        self.stage_images.rmdir()
        self.stage_labels.rmdir()
        data = {
            "train": "images/train",
            "val": "images/val" if is_val.any() else "images/train",
            "nc": len(ids),
            "names": {index[cid]: class_names[cid] for cid in ids},
        }
        if not identity:
            data["segsuite_class_ids"] = ids
        data["segsuite"] = info
        path = self.root / "data.yaml"
        with open(path, "w") as fh:
            fh.write("# ultralytics YOLO segmentation dataset written by napari-segsuite\n")
            yaml.safe_dump(data, fh, sort_keys=False)
        return {"data": path}


# -- reading ---------------------------------------------------------------------------


def load_data_yaml(path: Path) -> dict:
    """Parse and check a ``data.yaml``; DatasetError when it is not a YOLO dataset file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: no such file.") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid YAML ({exc}).") from exc
    if not looks_like_yolo(data):
        keys = sorted(map(str, data))[:8] if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            f"{path} is not an ultralytics dataset file: it needs 'train' and 'names' (or 'nc') "
            f"(found {keys})."
        )
    return data


def looks_like_yolo(data) -> bool:
    """Whether a parsed YAML document is an ultralytics dataset description."""
    return isinstance(data, dict) and "train" in data and ("names" in data or "nc" in data)


def yolo_class_names(data: dict) -> dict[int, str]:
    """``{class id: name}`` (restoring ``segsuite_class_ids`` when present)."""
    names = data.get("names")
    if names is None:
        try:
            names = [f"class_{i}" for i in range(int(data["nc"]))]
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"'nc: {data.get('nc')}' is not a number of classes.") from exc
    try:
        by_index = dict(enumerate(names)) if isinstance(names, list) else {int(k): v for k, v in names.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise DatasetError("'names' must be a list or a mapping {index: name}.") from exc
    ids = data.get("segsuite_class_ids")
    if isinstance(ids, list) and len(ids) == len(by_index):
        order = sorted(by_index)
        return {int(ids[k]): str(by_index[i]) for k, i in enumerate(order)}
    return {i: str(n) for i, n in sorted(by_index.items())}


def _root(yaml_path: Path, data: dict) -> Path:
    base = data.get("path")
    if not base:
        return yaml_path.parent
    base = Path(str(base))
    if base.is_absolute():
        return base
    return (yaml_path.parent / base).resolve()


def split_images(yaml_path: Path, data: dict) -> list[tuple[str, list[Path]]]:
    """``[(split, image files)]`` for train, val and test; a split that repeats an earlier one
    (``val: images/train`` when there is no validation split) is left out."""
    root = _root(yaml_path, data)
    out, seen = [], set()
    for split in ("train", "val", "test"):
        value = data.get(split)
        if not value:
            continue
        files = []
        for entry in value if isinstance(value, list) else [value]:
            path = root / str(entry)
            if path.is_dir():
                files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            elif path.is_file() and path.suffix == ".txt":
                for line in path.read_text().splitlines():
                    if line.strip():
                        p = Path(line.strip())
                        files.append(p if p.is_absolute() else (root / p))
            elif path.is_file():
                files.append(path)
            else:
                raise DatasetError(f"{yaml_path.name}: the {split} images {path} do not exist.")
        key = tuple(sorted(str(f.resolve()) for f in files))
        if key in seen:
            continue
        seen.add(key)
        out.append((split, files))
    return out


def label_path(image_path: Path) -> Path:
    """ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, ``.txt``."""
    parts = list(image_path.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_file(path: Path, shape: tuple[int, int], n_classes: int) -> list[tuple[int, np.ndarray]]:
    """``[(class index, polygon pixel indices)]`` of a label file (boxes become rectangles)."""
    if not path.is_file():
        return []
    h, w = shape
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            cls = int(float(tokens[0]))
            values = np.asarray([float(t) for t in tokens[1:]])
        except ValueError as exc:
            raise DatasetError(f"{path}:{number}: not a YOLO label line: {line[:80]!r}") from exc
        if not 0 <= cls < n_classes:
            raise DatasetError(f"{path}:{number}: class {cls} is outside 0-{n_classes - 1} of data.yaml.")
        if len(values) == 4:
            xc, yc, bw, bh = values
            values = np.asarray([xc - bw / 2, yc - bh / 2, xc + bw / 2, yc - bh / 2,
                                 xc + bw / 2, yc + bh / 2, xc - bw / 2, yc + bh / 2])
        elif len(values) < 6 or len(values) % 2:
            raise DatasetError(
                f"{path}:{number}: a polygon needs at least 3 x y pairs, got {len(values)} numbers."
            )
        xy = values.reshape(-1, 2) * (w, h)
        out.append((cls, np.rint(xy).astype(np.int64)))
    return out


def iter_yolo(yaml_path: Path, data: dict | None = None) -> Iterator[dict]:
    """Yield each image of a YOLO dataset as ``{name, split, image, labels, classes, file}``."""
    data = load_data_yaml(yaml_path) if data is None else data
    names = yolo_class_names(data)
    class_of_index = dict(enumerate(sorted(names)))
    for split, files in split_images(yaml_path, data):
        for path in files:
            image = read_array(path)
            shape = tuple(image.shape[:2])
            labels = np.zeros(shape, dtype=np.int32)
            classes = {}
            for k, (cls, xy) in enumerate(parse_label_file(label_path(path), shape, len(names)), 1):
                box, mask = fill_polygon(shape, xy)
                labels[box][mask] = k
                classes[k] = class_of_index[cls]
            present = set(np.unique(labels).tolist()) - {0}
            classes = {k: c for k, c in classes.items() if k in present}
            yield {"name": path.stem, "split": split, "image": image, "labels": labels,
                   "classes": classes, "file": path}
