"""``napari-segsuite run`` on a real dask.distributed scheduler and worker on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import time

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_segsuite import api
from napari_segsuite.cli import main

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """A scheduler and one single-threaded worker process, on loopback only."""
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=40,
    ) as c:
        yield c


@pytest.fixture(scope="module")
def lraspp(tmp_path_factory):
    from napari_segsuite.testing.tiny_models import build_tiny_torchvision

    return build_tiny_torchvision(tmp_path_factory.mktemp("tv") / "tiny_lraspp.pth", num_classes=3)


def test_cli_runs_on_the_scheduler_and_the_worker_loads_the_model(cluster, lraspp, tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        iio.imwrite(src / f"img{i}.png", rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    args = ["run", "semantic", "--model", str(lraspp), str(src), "--out", str(out),
            "--scheduler", cluster.scheduler_address, "-p", "background_zero=false"]
    assert main(args) == 1  # the broken file fails, the rest is done
    err = capsys.readouterr().err
    assert "3 done" in err and "broken.png" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["scheduler"] == cluster.scheduler_address
    done = [r for r in manifest["images"] if r["status"] == "done"]
    assert len(done) == 3 and all(r["worker_pid"] != os.getpid() for r in done)
    # Same labels as running the model here.
    runner = api.load_model(str(lraspp), "cpu")
    logits = runner.predict_semantic(iio.imread(src / "img1.png"))
    np.testing.assert_array_equal(tifffile.imread(out / "img1.tif"), logits.argmax(0) + 1)
    # Resume through the cluster: complete outputs are skipped.
    assert main(args) == 1
    assert "0 done, 3 skipped" in capsys.readouterr().err


def test_api_on_the_scheduler_with_chunks(cluster, tmp_path):
    from scipy import ndimage

    img = np.zeros((200, 210), np.uint8)
    img[20:180, 100:110] = 200  # crosses chunk borders
    img[5:15, 5:15] = 200
    tifffile.imwrite(tmp_path / "big.tif", img)
    summary = api.run_batch("threshold", None, tmp_path / "big.tif", tmp_path / "o", params={"level": 100},
                            scheduler=cluster.scheduler_address, chunk_size=64, overlap=8, fmt="tif")
    assert summary.done, summary.failed
    labels = tifffile.imread(tmp_path / "o" / "big.tif")
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert ndimage.label(img > 100)[1] == 2


def test_unreachable_scheduler_is_a_clear_error_within_seconds(tmp_path, capsys):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    t = time.perf_counter()
    code = main(["run", "threshold", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--scheduler", f"tcp://127.0.0.1:{port}", "--connect-timeout", "2"])
    elapsed = time.perf_counter() - t
    err = capsys.readouterr().err
    assert code == 2 and "Cannot reach the dask scheduler" in err and elapsed < 10, (elapsed, err)
    # A malformed address is refused at once, before any image is read.
    t = time.perf_counter()
    code = main(["run", "threshold", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--scheduler", "tcp://127.0.0.1:notaport"])
    err = capsys.readouterr().err
    assert code == 2 and "Bad scheduler address" in err and time.perf_counter() - t < 5, err
    assert not (tmp_path / "o" / "a.tif").exists()


def test_local_processes_cluster(lraspp, tmp_path, monkeypatch, capsys):
    """``--processes -j 2``: a local cluster of two worker processes, relative paths; each
    worker runs torch on cores // 2 threads by default (no oversubscription)."""
    from napari_segsuite.batch.engine import available_cores

    monkeypatch.chdir(tmp_path)
    for i in range(4):
        img = np.zeros((32, 32), np.uint8)
        img[5:10 + i, 5:20] = 200
        iio.imwrite(tmp_path / f"p{i}.png", img)
    code = main(["run", "threshold", "p*.png", "--out", "o", "--processes", "-j", "2", "-p", "level=100"])
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["options"]["processes"] and manifest["summary"]["done"] == 4
    assert all(r["worker_pid"] != os.getpid() for r in manifest["images"])
    assert tifffile.imread(tmp_path / "o" / "p3.tif").max() == 1
    # With a model: the default torch threads per worker process.
    code = main(["run", "semantic", "-m", str(lraspp), "p*.png", "--out", "s", "--processes", "-j", "2"])
    assert code == 0, capsys.readouterr().err
    images = json.loads((tmp_path / "s" / "manifest.json").read_text())["images"]
    assert len(images) == 4 and all(r["worker_pid"] != os.getpid() for r in images)
    assert {r["torch_threads"] for r in images} == {max(1, available_cores() // 2)}
