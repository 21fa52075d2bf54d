"""Dataset export and import: COCO (RLE through pycocotools) and ultralytics YOLO-seg.

Round trips are checked against the inputs (COCO exactly, YOLO per object), the written files
against pycocotools and ultralytics' own readers, and bad input against clear errors with
nothing left on disk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_segsuite import api
from napari_segsuite.core.errors import DatasetError, InputError
from napari_segsuite.datasets.common import split_of


def shapes_plane(h=64, w=80) -> np.ndarray:
    """Objects with a hole, touching objects, an object cut by the border, a two-part object,
    an object with an island inside its hole, a one-pixel object and a thin line."""
    lab = np.zeros((h, w), np.int32)
    lab[5:20, 5:30] = 1
    lab[8:12, 10:15] = 0  # hole
    lab[20:30, 5:30] = 2  # touches 1
    lab[50:h, 70:w] = 3  # cut by the border
    lab[40:45, 40:45] = 4
    lab[40:45, 55:60] = 4  # a second part, 10 px away
    lab[0:12, 40:60] = 5
    lab[3:9, 45:55] = 0
    lab[5:7, 48:51] = 5  # an island of 5 in its own hole
    lab[33, 70] = 6  # one pixel
    lab[30:38, 60] = 7  # a thin line
    return lab


@pytest.fixture
def stack():
    rng = np.random.default_rng(3)
    lab = np.zeros((3, 64, 80), np.int32)
    lab[0] = shapes_plane()
    lab[2, 10:12, 10:11] = 9  # plane 1 is empty
    lab[2, 30:40, 30:50] = 10
    img = rng.integers(0, 255, (3, 64, 80), dtype=np.uint8)
    classes = {1: 0, 2: 1, 3: 1, 4: 0, 5: 2, 6: 0, 7: 1, 9: 2, 10: 0}
    return img, lab, classes


def test_coco_round_trip_is_exact_for_a_stack(tmp_path, stack):
    img, lab, classes = stack
    res = api.export_dataset(img, lab, tmp_path / "ds", format="coco", label_classes=classes,
                             class_names=["cell", "nucleus", "debris"], names=["stack"])
    assert res.path == tmp_path / "ds"
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["annotations", "train", "val"]
    assert res.n_images == 3 and res.n_objects == 9
    back = api.import_dataset(res.path)
    assert sorted(back.names) == ["stack_0000", "stack_0001", "stack_0002"]
    assert back.class_names == {0: "cell", 1: "nucleus", 2: "debris"}
    for name, image, labels, cls in zip(back.names, back.images, back.labels, back.label_classes, strict=True):
        k = int(name[-1])
        np.testing.assert_array_equal(labels, lab[k])
        np.testing.assert_array_equal(image, img[k])
        assert cls == {i: classes[i] for i in np.unique(lab[k]) if i}
    assert set(back.table.columns) >= {"image", "split", "label", "class_id", "class_name", "area"}
    row = back.table[(back.table.image == "stack_0000") & (back.table.label == 1)].iloc[0]
    assert (row.class_name, row.area) == ("cell", int((lab[0] == 1).sum()))
    # the JSON on its own: the split's file holds just that split's images
    val = api.import_dataset(res.files["val"])
    assert set(val.splits) == {"val"} and len(val.names) == 1


def test_coco_files_read_by_pycocotools(tmp_path, stack):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    img, lab, classes = stack
    res = api.export_dataset(img, lab, tmp_path / "ds", label_classes=classes, class_names=["a", "b", "c"],
                             val_fraction=0.0, names=["s"])
    assert set(res.files) == {"train"}
    coco = COCO(str(res.files["train"]))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["a", "b", "c"]
    assert coco.getCatIds() == [1, 2, 3]  # class id + 1
    n = 0
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        k = int(info["file_name"].split("_")[1][:4])
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            label = ann["segsuite_label"]
            truth = lab[k] == label
            np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), truth)
            rle = mask_utils.encode(np.asfortranarray(truth.astype(np.uint8)))
            assert ann["area"] == mask_utils.area(rle)
            np.testing.assert_array_equal(ann["bbox"], mask_utils.toBbox(rle))
            assert ann["category_id"] == classes[label] + 1
            n += 1
    assert n == 9


def iou_per_object(truth: np.ndarray, got: np.ndarray) -> list[float]:
    """IoU of every object of ``truth`` with the object of ``got`` covering most of it."""
    out = []
    for i in np.unique(truth):
        if i == 0:
            continue
        mask = truth == i
        ids, counts = np.unique(got[mask], return_counts=True)
        best = ids[np.argmax(counts)]
        other = got == best
        out.append((mask & other).sum() / (mask | other).sum() if best else 0.0)
    return out


def test_yolo_round_trip_per_object_iou(tmp_path, stack):
    img, lab, classes = stack
    res = api.export_dataset(img, lab, tmp_path / "ds", format="yolo", label_classes=classes,
                             class_names=["cell", "nucleus", "debris"], names=["stack"])
    assert (tmp_path / "ds" / "data.yaml").is_file()
    assert res.provenance["min_polygon_iou"] >= 0.95
    # the two-part object's cut covers gap pixels when drawn as one plain polygon
    assert res.provenance["min_fillpoly_iou"] < res.provenance["min_polygon_iou"]
    back = api.import_dataset(tmp_path / "ds" / "data.yaml")
    assert back.class_names == {0: "cell", 1: "nucleus", 2: "debris"}
    seen = 0
    for name, labels, cls in zip(back.names, back.labels, back.label_classes, strict=True):
        truth = lab[int(name[-1])]
        ious = iou_per_object(truth, labels)
        assert all(v >= 0.95 for v in ious), (name, ious)
        assert len(np.unique(labels)) == len(np.unique(truth))
        # ids are renumbered 1..n in label-id order; classes follow them
        order = [i for i in np.unique(truth) if i]
        assert cls == {k + 1: classes[i] for k, i in enumerate(order)}
        seen += len(ious)
    assert seen == 9
    # a label file line per object, polygons of at least 3 vertices
    lines = [ln for f in (tmp_path / "ds" / "labels").rglob("*.txt") for ln in f.read_text().splitlines()]
    assert len(lines) == 9 and all(len(ln.split()) >= 7 for ln in lines)


def test_yolo_random_blobs_iou(tmp_path):
    """Irregular touching objects with holes and many parts (noise thresholds)."""
    rng = np.random.default_rng(5)
    labels = []
    for k in range(12):
        noise = ndimage.gaussian_filter(rng.random((72, 90)), 1.5 + k % 3)
        t = np.quantile(noise, [0.3, 0.5, 0.7, 0.85])
        lab = np.digitize(noise, t).astype(np.int32)
        lab[lab == 1] = 0
        labels.append(lab)
    images = [rng.integers(0, 255, (*lab.shape, 3), dtype=np.uint8) for lab in labels]
    res = api.export_dataset(images, labels, tmp_path / "ds", format="yolo")
    back = api.import_dataset(tmp_path / "ds")
    assert back.class_names == {0: "object"}
    from napari_segsuite.core.labels import relabel_sequential

    for name, got, image in zip(back.names, back.labels, back.images, strict=True):
        k = int(name[-5:])
        assert min(iou_per_object(labels[k], got)) >= 0.95
        # in fact exact: ids renumbered 1..n in label order, the same pixels
        np.testing.assert_array_equal(got, relabel_sequential(labels[k])[0])
        np.testing.assert_array_equal(image, images[k])
    assert res.provenance["objects_below_iou_0_95"] == 0
    assert res.provenance["min_polygon_iou"] == 1.0
    assert res.provenance["min_fillpoly_iou"] < 0.9  # what one-ring drawing makes of the parts


def test_yolo_dataset_accepted_by_ultralytics(tmp_path, stack):
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset, polygon2mask

    img, lab, classes = stack
    api.export_dataset(img, lab, tmp_path / "ds", format="yolo", label_classes=classes,
                       class_names=["cell", "nucleus", "debris"], val_fraction=0.34, names=["s"])
    data = check_det_dataset(str(tmp_path / "ds" / "data.yaml"))
    assert data["nc"] == 3 and data["names"] == {0: "cell", 1: "nucleus", 2: "debris"}
    total = 0
    for split in ("train", "val"):
        ds = YOLODataset(img_path=data[split], data=data, task="segment", imgsz=96, augment=False,
                         cache=False, rect=False, batch_size=1, stride=32, pad=0.0, single_cls=False,
                         classes=None, fraction=1.0)
        for item in ds.labels:
            k = int(item["im_file"].split("_")[-1][:4])
            present = sorted(i for i in np.unique(lab[k]) if i)
            assert sorted(item["cls"].ravel().astype(int).tolist()) == sorted(classes[i] for i in present)
            assert len(item["segments"]) == len(present)
            total += len(present)
            # ultralytics' own drawing of its own reading of the files: one-piece objects
            # (holes included) come out exact; objects in two parts (4, and 5 with its island)
            # gain their cut
            h, w = item["shape"]
            for seg, cls in zip(item["segments"], item["cls"].ravel(), strict=True):
                drawn = polygon2mask((h, w), [seg * (w, h)]).astype(bool)
                ids, counts = np.unique(lab[k][drawn], return_counts=True)
                obj = lab[k] == ids[np.argmax(counts)]
                iou = (drawn & obj).sum() / (drawn | obj).sum()
                assert iou == 1.0 or (ids[np.argmax(counts)] in (4, 5) and iou > 0.8), (k, cls, iou)
    assert total == 9


def test_sparse_class_ids_survive_yolo(tmp_path):
    lab = shapes_plane()
    classes = {i: (5 if i % 2 else 1) for i in range(1, 8)}
    img = np.zeros(lab.shape, np.uint8)
    api.export_dataset(img, lab, tmp_path / "ds", format="yolo", label_classes=classes,
                       class_names={1: "odd", 5: "even"}, val_fraction=0)
    text = (tmp_path / "ds" / "data.yaml").read_text()
    assert "segsuite_class_ids" in text
    back = api.import_dataset(tmp_path / "ds")
    assert back.class_names == {1: "odd", 5: "even"}
    assert set(back.label_classes[0].values()) == {1, 5}


def test_multiple_images_from_files_stream(tmp_path):
    """Images and labels given as files, read one at a time; differing sizes, RGB and gray."""
    import tifffile

    rng = np.random.default_rng(1)
    img_files, lab_files, truth = [], [], {}
    for k, shape in enumerate([(40, 50), (64, 80), (33, 47)]):
        lab = np.zeros(shape, np.uint16)
        lab[3:10, 4:20] = 1
        lab[20:, 30:] = 2 + k
        image = rng.integers(0, 4000, shape + ((3,) if k == 1 else ()), dtype=np.uint16)
        tifffile.imwrite(tmp_path / f"img{k}.tif", image)
        tifffile.imwrite(tmp_path / f"img{k}_labels.tif", lab)
        img_files.append(tmp_path / f"img{k}.tif")
        lab_files.append(tmp_path / f"img{k}_labels.tif")
        truth[f"img{k}"] = (image, lab)
    res = api.export_dataset(iter(img_files), (f for f in lab_files), tmp_path / "ds", val_fraction=0.34)
    assert res.provenance["n_val"] == 1
    back = api.import_dataset(tmp_path / "ds")
    for name, image, labels in zip(back.names, back.images, back.labels, strict=True):
        src, lab = truth[name]
        np.testing.assert_array_equal(labels, lab)
        assert image.dtype == np.uint8 and image.shape == src.shape  # PNG: 8-bit, scaled
    # lossless TIFF keeps the pixels
    api.export_dataset(img_files, lab_files, tmp_path / "tif", image_format="tif")
    back = api.import_dataset(tmp_path / "tif")
    for name, image in zip(back.names, back.images, strict=True):
        np.testing.assert_array_equal(image, truth[name][0])


def test_split_fraction_and_seed_fixed():
    a, b = split_of(100, 0.2), split_of(100, 0.2)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 20
    assert split_of(3, 0.1).sum() == 1 and split_of(1, 0.5).sum() == 0 and split_of(5, 0).sum() == 0
    assert split_of(2, 0.9).sum() == 1


def test_layer_features_table_as_label_classes(tmp_path):
    import pandas as pd

    lab = shapes_plane()
    features = pd.DataFrame({"label": [1, 2, 3, 4, 5, 6, 7], "class_id": [0, 1, 1, 0, 0, 1, 0]})
    res = api.export_dataset(np.zeros(lab.shape, np.uint8), lab, tmp_path / "ds",
                             label_classes=features, class_names=["x", "y"])
    back = api.import_dataset(res.path)
    assert back.label_classes[0] == dict(zip(features.label, features.class_id, strict=True))


# -- bad input -------------------------------------------------------------------------


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_labels_without_objects(tmp_path):
    with pytest.raises(InputError, match="no objects"):
        api.export_dataset(np.zeros((2, 20, 20)), np.zeros((2, 20, 20), np.int32), tmp_path / "ds")
    assert _leftovers(tmp_path) == []


def test_class_map_naming_labels_not_in_the_labels(tmp_path):
    lab = shapes_plane()
    with pytest.raises(InputError, match=r"label_classes names label\(s\) 42"):
        api.export_dataset(np.zeros(lab.shape), lab, tmp_path / "ds",
                           label_classes={**dict.fromkeys(range(1, 8), 0), 42: 1})
    assert _leftovers(tmp_path) == []


def test_class_map_gaps(tmp_path):
    lab = shapes_plane()
    with pytest.raises(InputError, match=r"label\(s\) 7 have no class"):
        api.export_dataset(np.zeros(lab.shape), lab, tmp_path / "a", label_classes=dict.fromkeys(range(1, 7), 0))
    with pytest.raises(InputError, match="class id 3, which class_names does not name"):
        api.export_dataset(np.zeros(lab.shape), lab, tmp_path / "b",
                           label_classes={i: 3 if i == 2 else 0 for i in range(1, 8)}, class_names=["a", "b"])
    with pytest.raises(InputError, match="label_classes is not given"):
        api.export_dataset(np.zeros(lab.shape), lab, tmp_path / "c", class_names=["a", "b"])
    assert _leftovers(tmp_path) == []


def test_shape_mismatch(tmp_path):
    with pytest.raises(InputError, match=r"image \(shape \(20, 21\)\) and its labels \(shape \(20, 20\)\)"):
        api.export_dataset(np.zeros((20, 21)), np.ones((20, 20), np.int32), tmp_path / "ds")
    with pytest.raises(InputError, match="more label items than images"):
        api.export_dataset([np.zeros((20, 20))], [np.ones((20, 20), np.int32)] * 2, tmp_path / "ds")
    assert _leftovers(tmp_path) == []


def test_existing_folder_refused_unless_overwrite(tmp_path, stack):
    img, lab, _ = stack
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="exists and is not empty"):
        api.export_dataset(img, lab, out)
    assert _leftovers(out) == ["mine.txt"]
    # a folder with other files is never replaced, even when asked
    with pytest.raises(DatasetError, match="only a dataset folder is replaced"):
        api.export_dataset(img, lab, out, overwrite=True)
    assert _leftovers(out) == ["mine.txt"]
    (out / "mine.txt").unlink()
    api.export_dataset(img, lab, out, format="coco")
    with pytest.raises(DatasetError, match="exists and is not empty"):
        api.export_dataset(img, lab, out, format="yolo")
    api.export_dataset(img, lab, out, overwrite=True, format="yolo")  # a dataset is replaced
    assert _leftovers(out) == ["data.yaml", "images", "labels"]
    assert _leftovers(tmp_path) == ["ds"]
    empty = tmp_path / "empty"
    empty.mkdir()
    api.export_dataset(img, lab, empty)  # an empty folder is fine
    assert (empty / "annotations").is_dir()


def test_cancel_leaves_nothing(tmp_path, stack):
    from napari_segsuite.datasets.io import export_job

    img, lab, _ = stack
    job = export_job(img, lab, tmp_path / "ds")
    next(job), next(job)
    assert len(_leftovers(tmp_path)) == 1  # the hidden staging folder
    job.close()  # what Cancel does to the worker's generator
    assert _leftovers(tmp_path) == []


def test_import_corrupt_or_foreign_files(tmp_path, stack):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match="not valid JSON"):
        api.import_dataset(bad)
    foreign = tmp_path / "package.json"
    foreign.write_text(json.dumps({"name": "x", "version": "1"}))
    with pytest.raises(DatasetError, match="not a COCO instance-segmentation file"):
        api.import_dataset(foreign)
    yml = tmp_path / "config.yaml"
    yml.write_text("lr: 0.1\nepochs: 3\n")
    with pytest.raises(DatasetError, match="not an ultralytics dataset file"):
        api.import_dataset(yml)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(DatasetError, match="not valid YAML"):
        api.import_dataset(broken)
    # a COCO file whose annotation lacks its mask, and one whose images are missing
    img, lab, _ = stack
    res = api.export_dataset(img, lab, tmp_path / "ds", val_fraction=0)
    doc = json.loads(res.files["train"].read_text())
    doc["annotations"][0].pop("segmentation")
    (tmp_path / "ds" / "annotations" / "cut.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="lacks one of"):
        api.import_dataset(tmp_path / "ds" / "annotations" / "cut.json")
    for f in (tmp_path / "ds" / "train").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="not found"):
        api.import_dataset(res.files["train"])
    # a YOLO label line that is not one
    api.export_dataset(img, lab, tmp_path / "y", format="yolo", val_fraction=0)
    label = next((tmp_path / "y" / "labels" / "train").glob("*.txt"))
    label.write_text("0 0.1 0.2\n")
    with pytest.raises(DatasetError, match="at least 3 x y pairs"):
        api.import_dataset(tmp_path / "y")


def test_import_foreign_coco_with_polygons(tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((30, 40), 7, np.uint8)).save(tmp_path / "images" / "a.png")
    doc = {
        "images": [{"id": 3, "file_name": "a.png", "height": 30, "width": 40}],
        "categories": [{"id": 1, "name": "big"}, {"id": 2, "name": "small"}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 1, "iscrowd": 0, "area": 400,
             "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]]},
            {"id": 2, "image_id": 3, "category_id": 2, "iscrowd": 0, "area": 25,
             "segmentation": [[10, 10, 15, 10, 15, 15, 10, 15]]},
            {"id": 3, "image_id": 3, "category_id": 2, "iscrowd": 1, "area": 1,
             "segmentation": {"size": [30, 40], "counts": [0, 1200]}},
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(doc))
    back = api.import_dataset(tmp_path / "coco.json")
    assert back.class_names == {0: "big", 1: "small"}
    labels = back.labels[0]
    assert back.label_classes[0] == {1: 0, 2: 1}
    assert labels[12, 12] == 2 and labels[7, 7] == 1 and labels[0, 0] == 0  # small on top, crowd skipped


def test_foreign_polygon_with_a_doubled_vertex_is_one_outline():
    from napari_segsuite.datasets.yolo import fill_polygon, split_rings

    square = np.array([[2, 2], [2, 2], [12, 2], [12, 12], [2, 12]])
    assert len(split_rings(square)) == 1
    _, mask = fill_polygon((20, 20), square)
    assert mask.sum() == 11 * 11


def test_rle_strings_decoded_like_pycocotools():
    from pycocotools import mask as mask_utils

    from napari_segsuite.datasets.coco import paint_runs, rle_counts

    rng = np.random.default_rng(2)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        if t % 4 == 0:
            mask[:] = 0
            mask[h // 3: h // 2 + 1, w // 4:] = 1
        rle = mask_utils.encode(np.asfortranarray(mask))
        columns = np.zeros((w, h), np.int32)
        paint_runs(columns.reshape(-1), rle_counts({"size": [h, w], "counts": rle["counts"].decode()}, h, w), 5)
        np.testing.assert_array_equal(columns.T == 5, mask_utils.decode(rle).astype(bool))
    with pytest.raises(DatasetError, match="do not cover"):
        rle_counts({"size": [4, 4], "counts": [3, 2]}, 4, 4)


def test_progress_hook_and_default_names(tmp_path, stack):
    img, lab, classes = stack
    seen = []
    res = api.export_dataset([img[0], img[2]], [lab[0], lab[2]], tmp_path / "ds", label_classes=classes,
                             progress=seen.append, names=["only-one"])
    assert [(p.step, p.total) for p in seen] == [(0, 2), (1, 2), (2, 2)]
    assert sorted(res.table["image"]) == ["image00001", "only-one"]  # names may run out
    steps = []
    api.import_dataset(res.path, progress=steps.append)
    assert [(p.step, p.total) for p in steps] == [(0, 2), (1, 2), (2, 2)]
