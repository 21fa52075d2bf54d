"""``napari-segsuite export``: files paired by name, class tables, errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from napari_segsuite import api
from napari_segsuite.cli import main


def _files(tmp_path, n=3):
    raw, seg = tmp_path / "raw", tmp_path / "seg"
    raw.mkdir()
    seg.mkdir()
    truth = {}
    rng = np.random.default_rng(0)
    for k in range(n):
        img = rng.integers(0, 255, (30, 40), dtype=np.uint8)
        lab = np.zeros((30, 40), np.int32)
        lab[2:10, 3:12] = 4
        lab[15:, 20:] = 7
        Image.fromarray(img).save(raw / f"cell{k}.png")
        tifffile.imwrite(seg / f"cell{k}_labels.tif", lab)
        # a table like `napari-segsuite run` writes next to its label images
        pd.DataFrame({"label": [4, 7], "class_id": [0, 1], "class_name": ["round", "long"]}).to_csv(
            seg / f"cell{k}_labels.csv", index=False)
        truth[f"cell{k}"] = (img, lab)
    return raw, seg, truth


def test_export_pairs_by_name_with_sidecar_classes(tmp_path, capsys):
    raw, seg, truth = _files(tmp_path)
    code = main(["export", "--images", str(raw), "--labels", str(seg / "*.tif"), "--out", str(tmp_path / "ds"),
                 "--format", "yolo", "--classes", "sidecar", "--val-fraction", "0.34"])
    assert code == 0
    assert "yolo dataset: 3 images (2 train, 1 val), 6 objects, 2 classes" in capsys.readouterr().err
    back = api.import_dataset(tmp_path / "ds")
    assert back.class_names == {0: "round", 1: "long"}
    for name, image, labels, classes in zip(back.names, back.images, back.labels, back.label_classes,
                                            strict=True):
        img, lab = truth[name]
        np.testing.assert_array_equal(image, img)
        assert classes == {1: 0, 2: 1}  # YOLO numbers objects 1..n in label order
        assert (labels == 1).sum() == (lab == 4).sum() and (labels == 2).sum() == (lab == 7).sum()


def test_export_class_table_and_names(tmp_path):
    raw, seg, truth = _files(tmp_path)
    table = tmp_path / "classes.csv"
    pd.DataFrame({"label": [4, 7], "class_id": [1, 0]}).to_csv(table, index=False)
    assert main(["export", "-i", str(raw), "-l", str(seg), "-o", str(tmp_path / "ds"), "-q",
                 "--classes", str(table), "--class-names", "big,small"]) == 0
    back = api.import_dataset(tmp_path / "ds")
    assert back.class_names == {0: "big", 1: "small"}
    for name, labels, classes in zip(back.names, back.labels, back.label_classes, strict=True):
        np.testing.assert_array_equal(labels, truth[name][1])
        assert classes == {4: 1, 7: 0}


def test_export_errors_exit_2(tmp_path, capsys):
    raw, seg, _ = _files(tmp_path)
    (seg / "cell1_labels.tif").unlink()
    assert main(["export", "-i", str(raw), "-l", str(seg), "-o", str(tmp_path / "ds")]) == 2
    assert "No label file for 1 image(s): cell1.png" in capsys.readouterr().err
    out = tmp_path / "full"
    out.mkdir()
    (out / "x").write_text("x")
    assert main(["export", "-i", str(raw / "cell0.png"), "-l", str(seg / "cell0_labels.tif"), "-o", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "raw", "seg"]


def test_console_script_help():
    exe = [sys.executable, "-m", "napari_segsuite", "export", "--help"]
    proc = subprocess.run(exe, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "--val-fraction" in proc.stdout and "sidecar" in proc.stdout
