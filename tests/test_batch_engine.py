"""The batch engine and ``napari-segsuite run`` locally: a tiny LRASPP on small files."""

from __future__ import annotations

import json
import time

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_segsuite import api
from napari_segsuite.batch.engine import BatchSetupError
from napari_segsuite.cli import main


@pytest.fixture(scope="module")
def lraspp(tmp_path_factory):
    from napari_segsuite.testing.tiny_models import build_tiny_torchvision

    return build_tiny_torchvision(tmp_path_factory.mktemp("tv") / "tiny_lraspp.pth", num_classes=3)


@pytest.fixture
def images(tmp_path):
    """Small images of mixed types and channel counts, and one corrupt file."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "gray.png", rng.integers(0, 255, (40, 48), dtype=np.uint8))
    iio.imwrite(d / "rgb.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    tifffile.imwrite(d / "u16.tif", rng.integers(0, 4000, (36, 44), dtype=np.uint16))
    tifffile.imwrite(d / "float.tif", rng.random((32, 40)).astype(np.float32))
    tifffile.imwrite(d / "stack.tif", rng.integers(0, 255, (2, 32, 40), dtype=np.uint8))
    (d / "corrupt.tif").write_bytes(b"II*\x00 this is not a tiff")
    return d


def test_semantic_batch_mixed_inputs_corrupt_file_and_resume(lraspp, images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    every = {"background_zero": False}  # labels = class + 1: every pixel labelled
    summary = api.run_batch("semantic", str(lraspp), images, out, params=every)
    assert sorted(summary.done) == sorted(str(images / n) for n in ("float.tif", "gray.png", "rgb.png", "stack.tif", "u16.tif"))
    (failed, reason), = summary.failed
    assert failed.endswith("corrupt.tif") and "cannot read" in reason
    assert summary.exit_code == 1
    assert any("mixed pixel types" in n for n in summary.notes)
    assert any("mixed channel counts" in n for n in summary.notes)
    # Outputs: label image of the input's size, a table, a sidecar; combined table, manifest.
    labels = tifffile.imread(out / "u16.tif")
    assert labels.shape == (36, 44) and labels.dtype == np.int32 and 1 <= labels.min() <= labels.max() <= 3
    assert tifffile.imread(out / "stack.tif").shape == (2, 32, 40)
    table = pd.read_csv(out / "rgb.csv")
    assert set(table.columns) >= {"label", "class_id", "class_name", "area"}
    assert table["area"].sum() == 40 * 48
    assert (table["label"] == table["class_id"] + 1).all()
    assert set(pd.read_csv(out / "objects.csv")["image"]) == {"float", "gray", "rgb", "stack", "u16"}
    manifest = json.loads((out / "manifest.json").read_text())
    from napari_segsuite.models.store import sha256_file

    assert manifest["model"]["sha256"] == sha256_file(lraspp)
    assert manifest["task"] == "semantic" and manifest["summary"]["failed"] == 1
    assert {"torch", "transformers", "numpy", "dask", "python", "napari-segsuite"} <= set(manifest["versions"])
    assert {r["status"] for r in manifest["images"]} == {"done", "failed"}

    # Resume: everything complete is skipped; a damaged output is redone. The model's
    # checksum is taken from the previous manifest (same path, size and time).
    import napari_segsuite.batch.manifest as mf

    monkeypatch.setattr(mf, "sha256_path", lambda p: pytest.fail("hashed the model again"))
    again = api.run_batch("semantic", str(lraspp), images, out, params=every)
    monkeypatch.undo()
    assert len(again.skipped) == 5 and not again.done and len(again.failed) == 1
    tifffile.imwrite(out / "gray.tif", np.zeros((2, 2), np.int32))
    third = api.run_batch("semantic", str(lraspp), images, out, params=every)
    assert third.done == [str(images / "gray.png")] and len(third.skipped) == 4
    assert tifffile.imread(out / "gray.tif").shape == (40, 48)
    # Other parameters: nothing is skipped.
    fourth = api.run_batch("semantic", str(lraspp), [images / "gray.png"], out)
    assert len(fourth.done) == 1


def test_threads_give_the_same_labels_as_a_plain_loop(lraspp, images, tmp_path):
    runner = api.load_model(str(lraspp), "cpu")
    files = [images / "gray.png", images / "rgb.png", images / "u16.tif"]
    summary = api.run_batch("semantic", runner, files, tmp_path / "o", workers=2)
    assert len(summary.done) == 3
    for f in files:
        logits = runner.predict_semantic(api.prepare_rgb_uint8(iio.imread(f)))
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "o" / f"{f.stem}.tif"), logits.argmax(0))


def test_torch_threads_default_per_worker_and_restored_afterwards(lraspp, images, tmp_path):
    import torch

    from napari_segsuite.batch.engine import available_cores, default_torch_threads

    cores = available_cores()
    assert default_torch_threads(2, False, None) == max(1, cores // 2)
    assert default_torch_threads(1, True, None) == cores
    assert default_torch_threads(1, False, None) is None  # one in-process worker: torch's default
    assert default_torch_threads(4, True, "tcp://127.0.0.1:8786") is None  # the cluster's workers decide
    before = torch.get_num_threads()
    files = [images / "gray.png", images / "rgb.png"]
    summary = api.run_batch("semantic", str(lraspp), files, tmp_path / "o", workers=2)
    assert {r["torch_threads"] for r in summary.records} == {max(1, cores // 2)}
    assert torch.get_num_threads() == before  # this process's setting is given back
    summary = api.run_batch("semantic", str(lraspp), files, tmp_path / "o1", workers=2, torch_threads=1)
    assert {r["torch_threads"] for r in summary.records} == {1}
    assert torch.get_num_threads() == before


def test_large_image_in_chunks_goes_to_zarr(lraspp, tmp_path):
    import zarr

    img = np.random.default_rng(1).integers(0, 255, (150, 170), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img)
    summary = api.run_batch("semantic", str(lraspp), tmp_path / "big.tif", tmp_path / "o", chunk_size=64, overlap=16)
    assert summary.done, summary.failed
    z = zarr.open_array(str(tmp_path / "o" / "big.zarr"), mode="r")
    assert z.shape == (150, 170) and z.dtype == np.int32
    again = api.run_batch("semantic", str(lraspp), tmp_path / "big.tif", tmp_path / "o", chunk_size=64, overlap=16)
    assert again.skipped and not again.done


def test_cli_exit_codes_and_messages(lraspp, images, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    t = time.perf_counter()
    assert main(["run", "semantic", "--model", str(lraspp), str(images), "--out", str(blocker / "out")]) == 2
    assert "not writable" in capsys.readouterr().err and time.perf_counter() - t < 10
    assert main(["run", "nosuchtask", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "Unknown task" in capsys.readouterr().err
    assert main(["run", "semantic", "--model", str(tmp_path / "missing.pth"), str(images), "--out", str(tmp_path / "o")]) == 2
    capsys.readouterr()
    assert main(["run", "semantic", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "needs a model" in capsys.readouterr().err
    code = main(["run", "semantic", "-m", str(lraspp), str(images / "gray.png"), str(images / "corrupt.tif"),
                 "--out", str(tmp_path / "o"), "--format", "tif"])
    err = capsys.readouterr().err
    assert code == 1 and "FAILED" in err and "corrupt.tif" in err and "1 done" in err
    code = main(["run", "threshold", str(images / "gray.png"), "--out", str(tmp_path / "t"), "-p", "level=100",
                 "-p", "min_size=2"])
    assert code == 0
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["parameters"] == {"level": 100, "min_size": 2}


def test_bad_parameters_fail_each_image_with_the_reason(images, tmp_path):
    summary = api.run_batch("threshold", None, [images / "gray.png"], tmp_path / "o", params={"levle": 3})
    ((_, reason),) = summary.failed
    assert "unknown parameters ['levle']" in reason
    with pytest.raises(BatchSetupError, match="Unknown task"):
        api.run_batch("no-such-task", None, [images], tmp_path / "o")


def test_panoptic_batch_with_a_tiny_mask2former(tmp_path):
    from napari_segsuite.testing.tiny_models import build_tiny_mask2former

    folder = build_tiny_mask2former(tmp_path / "m2f", task="panoptic", num_labels=4, seed=2)
    iio.imwrite(tmp_path / "x.png", np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    params = {"threshold": 0.0, "mask_threshold": 0.05, "overlap_mask_area_threshold": 0.0}
    summary = api.run_batch("panoptic", str(folder), tmp_path / "x.png", tmp_path / "o", params=params)
    assert summary.done, summary.failed
    labels = tifffile.imread(tmp_path / "o" / "x.tif")
    expected = api.segment_panoptic(iio.imread(tmp_path / "x.png"), api.load_model(str(folder), "cpu"), **params)
    np.testing.assert_array_equal(labels, expected.labels)
    table = pd.read_csv(tmp_path / "o" / "x.csv")
    assert {"label", "class_id", "score", "area"} <= set(table.columns)


def test_array_job_runs_every_plane_of_an_in_memory_stack():
    from napari_segsuite.batch.engine import array_job
    from napari_segsuite.core.progress import run_sync

    stack = np.zeros((2, 3, 40, 50), np.uint16)  # (t, z, y, x): six planes
    stack[1, 2, 5:10, 5:10] = 1000
    stack[0, 0, 20:30, 5:45] = 1000
    seen = []
    labels, table = run_sync(array_job("threshold", None, stack, params={"level": 500}, channels_last=False,
                                       chunk_size=32, overlap=4), seen.append)
    assert labels.shape == (2, 3, 40, 50) and len(seen) == 6
    # instance-like task: ids continue over the planes (one id, one object in the stack)
    assert labels[1, 2, 7, 7] == 2 and labels[0, 0, 25, 6] == labels[0, 0, 25, 44] == 1
    assert list(table["plane"]) == [0, 5] and list(table["area"]) == [400, 25]
    assert list(table["label"]) == [1, 2]
    restart, table = run_sync(array_job("threshold", None, stack, params={"level": 500}, channels_last=False,
                                        unique_ids=False))
    assert restart[1, 2, 7, 7] == 1 and list(table["label"]) == [1, 1]
