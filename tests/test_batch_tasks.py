"""The ``instance`` and ``sam-auto`` batch tasks and Parquet tables, on tiny real-architecture models."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_segsuite import api
from napari_segsuite.cli import main
from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.tiny_models import build_tiny_mask2former, build_tiny_yolo

# Random tiny models give nothing at the default thresholds: these let objects through.
SAM_PERMISSIVE = {
    "points_per_side": 6, "pred_iou_thresh": 0.03, "stability_score_offset": 0.01,
    "stability_score_thresh": 0.2, "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0,
}
YOLO_LOW = {"conf": 0.002, "max_det": 4}


@pytest.fixture(scope="module")
def yolo_path(tmp_path_factory):
    return sharpen_yolo(build_tiny_yolo(tmp_path_factory.mktemp("yolo") / "tiny-seg.pt", "segment", nc=3))


@pytest.fixture(scope="module")
def sam_path(tmp_path_factory):
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam_seed1.pth", seed=1)


@pytest.fixture(scope="module")
def rgb():
    """An RGB image with bright blobs on a colour ramp (what the tiny YOLO reacts to)."""
    from napari_segsuite.testing.instance_doubles import ramp_with_blobs

    return ramp_with_blobs()


def test_instance_cli_with_a_tiny_yolo_gives_the_api_labels(yolo_path, rgb, tmp_path, capsys):
    iio.imwrite(tmp_path / "a.png", rgb)
    iio.imwrite(tmp_path / "b.png", rgb[::-1].copy())
    out = tmp_path / "out"
    code = main(["run", "instance", "--model", str(yolo_path), str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--out", str(out), "-p", "conf=0.002", "-p", "max_det=4"])
    assert code == 0, capsys.readouterr().err
    runner = api.load_model(str(yolo_path), "cpu")
    for name, img in (("a", rgb), ("b", rgb[::-1].copy())):
        expected = api.segment_instances(img, runner, **YOLO_LOW)
        assert len(expected.table) > 0
        labels = tifffile.imread(out / f"{name}.tif")
        np.testing.assert_array_equal(labels, expected.labels)
        table = pd.read_csv(out / f"{name}.csv")
        assert list(table["label"]) == list(expected.table["label"])
        assert {"class_id", "class_name", "score", "area"} <= set(table.columns)
        np.testing.assert_allclose(table["score"], expected.table["score"], rtol=1e-5)
    combined = pd.read_csv(out / "objects.csv")
    assert set(combined["image"]) == {"a", "b"}
    # Unknown parameters and classes fail each image with the reason.
    assert main(["run", "instance", "-m", str(yolo_path), str(tmp_path / "a.png"), "--out", str(tmp_path / "o2"),
                 "-p", "confidence=0.1"]) == 1
    assert "unknown parameters ['confidence']" in capsys.readouterr().err


def test_instance_chunks_have_unique_ids_and_merged_border_objects(yolo_path, rgb, tmp_path):
    """A chunked image: ids 1..N without gaps, one table row per id, area = pixels.

    The random tiny YOLO's best mask covers its whole input, so each of the 8 chunks finds one
    object filling its window: unmerged, that would be 8 ids; merged across chunk borders
    (class by class) there are fewer, and together they cover the image.
    """
    big = np.concatenate([rgb, rgb[:, ::-1]], axis=1)  # 160 x 448
    tifffile.imwrite(tmp_path / "big.tif", big)
    summary = api.run_batch("instance", str(yolo_path), tmp_path / "big.tif", tmp_path / "o",
                            params={"conf": 0.002, "max_det": 20}, chunk_size=128, overlap=32, fmt="tif")
    assert summary.done, summary.failed
    assert summary.records[-1]["chunked"]
    labels = tifffile.imread(tmp_path / "o" / "big.tif")
    table = pd.read_csv(tmp_path / "o" / "big.csv")
    ids = np.unique(labels[labels != 0])
    assert (labels != 0).all() and 1 <= len(ids) < 8
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert sorted(table["label"]) == list(ids) and table["label"].is_unique
    counts = np.bincount(labels.ravel())
    assert all(counts[row.label] == row.area for row in table.itertuples())
    assert {"class_id", "score"} <= set(table.columns)


def test_instance_batch_with_a_tiny_mask2former(rgb, tmp_path):
    folder = build_tiny_mask2former(tmp_path / "m2f", "instance")
    iio.imwrite(tmp_path / "x.png", rgb[:96, :128])
    params = {"conf": 0.0, "mask_threshold": 0.05, "max_det": 5}
    summary = api.run_batch("instance", str(folder), tmp_path / "x.png", tmp_path / "o", params=params)
    assert summary.done, summary.failed
    expected = api.segment_instances(rgb[:96, :128], str(folder), device="cpu", **params)
    assert len(expected.table) > 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o" / "x.tif"), expected.labels)


def test_sam_auto_cli_matches_the_api_and_parquet_equals_csv(sam_path, tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    images = {f"s{i}": rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(2)}
    for name, img in images.items():
        iio.imwrite(src / f"{name}.png", img)
    params = [a for k, v in SAM_PERMISSIVE.items() for a in ("-p", f"{k}={v}")]
    for fmt in ("csv", "parquet"):
        code = main(["run", "sam-auto", "--model", str(sam_path), str(src), "--out", str(tmp_path / fmt),
                     "--table", fmt, *params])
        assert code == 0, capsys.readouterr().err
    session = api.SamSession(str(sam_path), device="cpu")
    for name, img in images.items():
        expected = api.sam_automatic(img, session, **SAM_PERMISSIVE)
        assert expected.labels.max() > 1
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "csv" / f"{name}.tif"), expected.labels)
        csv = pd.read_csv(tmp_path / "csv" / f"{name}.csv")
        assert list(csv["label"]) == list(expected.table["label"])
        np.testing.assert_allclose(csv["predicted_iou"], expected.table["predicted_iou"], rtol=1e-6)
        # The Parquet table reads back equal to the CSV one (same rows, columns and values).
        parquet = pd.read_parquet(tmp_path / "parquet" / f"{name}.parquet")
        pd.testing.assert_frame_equal(parquet, csv, check_dtype=False)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "parquet" / f"{name}.tif"), expected.labels)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "parquet" / "objects.parquet"),
                                  pd.read_csv(tmp_path / "csv" / "objects.csv"), check_dtype=False)
    # Resume works from Parquet tables too.
    assert main(["run", "sam-auto", "--model", str(sam_path), str(src), "--out", str(tmp_path / "parquet"),
                 "--table", "parquet", *params]) == 0
    assert "0 done, 2 skipped" in capsys.readouterr().err


def test_sam_auto_chunked_and_bad_parameters(sam_path, tmp_path):
    img = np.random.default_rng(3).integers(0, 255, (100, 120), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img)
    summary = api.run_batch("sam-auto", str(sam_path), tmp_path / "big.tif", tmp_path / "o",
                            params=SAM_PERMISSIVE, chunk_size=64, overlap=16, fmt="tif")
    assert summary.done, summary.failed
    labels = tifffile.imread(tmp_path / "o" / "big.tif")
    table = pd.read_csv(tmp_path / "o" / "big.csv")
    ids = np.unique(labels[labels != 0])
    assert len(ids) > 1
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    assert sorted(table["label"]) == list(ids)
    bad = api.run_batch("sam-auto", str(sam_path), tmp_path / "big.tif", tmp_path / "o2",
                        params={"points_per_sid": 4})
    ((_, reason),) = bad.failed
    assert "unknown parameters ['points_per_sid']" in reason
    # A model that cannot do the task fails the run's images with a clear reason.
    from napari_segsuite.testing.tiny_models import build_tiny_torchvision

    lraspp = build_tiny_torchvision(tmp_path / "lraspp.pth", num_classes=3)
    wrong = api.run_batch("sam-auto", str(lraspp), tmp_path / "big.tif", tmp_path / "o3")
    ((_, reason),) = wrong.failed
    assert "automatic" in reason


def test_every_batch_task_checks_its_parameters_against_its_dataclass_fields():
    from dataclasses import fields

    from napari_segsuite.batch.tasks import (
        INSTANCE_PARAMS,
        TASKS,
        InstanceBatchExtras,
        SemanticBatchParams,
        ThresholdParams,
    )
    from napari_segsuite.core.errors import InputError
    from napari_segsuite.tasks.instance import InstanceParams
    from napari_segsuite.tasks.panoptic import PanopticParams
    from napari_segsuite.tasks.sam_automatic import AutoParams

    names = lambda cls, skip=(): {f.name for f in fields(cls)} - set(skip)  # noqa: E731
    expected = {
        "semantic": names(SemanticBatchParams),
        "panoptic": names(PanopticParams),
        "instance": names(InstanceParams, ("concepts", "exemplars", "exemplar_labels")) | names(InstanceBatchExtras),
        "sam-auto": names(AutoParams, ("point_grids",)),
        "threshold": names(ThresholdParams),
    }
    assert set(INSTANCE_PARAMS) == expected["instance"]
    assert set(TASKS) == set(expected)
    image = np.zeros((8, 8), np.uint8)
    for task, known in expected.items():
        with pytest.raises(InputError, match=r"unknown parameters \['nonsense'\]") as info:
            TASKS[task].func(image, None, nonsense=1)
        listed = str(info.value).split("known: ", 1)[1].rstrip(".").split(", ")
        assert set(listed) == known, task
