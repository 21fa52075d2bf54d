"""Benchmarks of batch segmentation (``napari-segsuite run`` / ``api.run_batch``).

- throughput with 1 and 2 worker processes (a dask.distributed cluster on 127.0.0.1), tiny
  LRASPP MobileNetV3 (random weights), N small images, twice: with the engine's default torch
  threads per worker (``max(1, cores // workers)``: 2 threads for 1 worker, 1 each for 2
  workers on 2 cores) and with 1 torch thread per worker; the cluster is warmed up (model
  loaded in each worker) before the timed batch, and the end-to-end time of ``--processes``
  (cluster start and model loading included) is shown too;
- overhead per image of ``run_batch`` (workers=1, a loaded runner) against the same task
  called in a plain Python loop that reads each file and writes the label TIFF and the CSV;
- a 20,000 x 20,000 uint8 image (zarr) in 2048-pixel chunks with the ``threshold`` task
  (connected components, no model: the tiny models are too slow for 400 Mpixel on this shared
  CPU), with the worker's peak memory.

Measured 2026-11-28 on the 2-core dev VM, load average 1.0-1.6 (the benchmark alone),
``benchmarks/run.py batch --repeats 5``: 2 workers / 1 worker, warm: 2.30x with the default
threads (1 worker x 2 torch threads 16.8 img/s, 2 workers x 1 thread 38.6 img/s) and 1.82x with
1 torch thread per worker (20.6 vs 37.6 img/s); end to end with cluster start and model load
(5-6 s of the 6.6-8 s on these 48 tiny images) 1.17x / 1.14x. Overhead of ``run_batch`` against
the plain loop on 96 images of 128x128 (12 ms each): 1.095x (median of 5 paired rounds; 1.066x
in a separate 5-round run). 20,000 x 20,000 threshold task: 33.3 s, worker peak 473 MB.

``SEGSUITE_BENCH_SMOKE=1`` shrinks every case (a few tiny images, a 2,500-pixel image, one
overhead round) to check that the benchmark runs; its figures mean nothing.
"""

from __future__ import annotations

from run import benchmark, run_python

SETUP = """
import os, tempfile, time
import numpy as np, imageio.v3 as iio
from napari_segsuite import api
from napari_segsuite.testing.tiny_models import build_tiny_torchvision
tmp = tempfile.mkdtemp()
model = str(build_tiny_torchvision(tmp + "/lraspp.pth", num_classes=3))
rng = np.random.default_rng(0)
os.mkdir(tmp + "/in")
for i in range({n}):
    iio.imwrite(f"{{tmp}}/in/img{{i:03d}}.png", rng.integers(0, 255, ({size}, {size}, 3), dtype=np.uint8))
"""

THROUGHPUT = SETUP + """
import torch
torch.set_num_threads(1)
from distributed import Client, LocalCluster
from napari_segsuite.batch.engine import default_torch_threads
threads = {threads}  # None: the engine's default for {w} local worker process(es)
t = time.perf_counter()
summary = api.run_batch("semantic", model, tmp + "/in", tmp + "/e2e", workers={w}, processes=True,
                        torch_threads=threads)
e2e = time.perf_counter() - t
assert not summary.failed, summary.failed
# On a given scheduler the engine leaves torch's threads alone: pass what --processes would use.
per_worker = threads or default_torch_threads({w}, True, None)
with LocalCluster(n_workers={w}, threads_per_worker=1, processes=True, host="127.0.0.1",
                  dashboard_address=None, silence_logs=40) as cluster:
    api.run_batch("semantic", model, tmp + "/in", tmp + "/warm", scheduler=cluster.scheduler_address,
                  torch_threads=per_worker)
    t = time.perf_counter()
    summary = api.run_batch("semantic", model, tmp + "/in", tmp + "/timed", scheduler=cluster.scheduler_address,
                            torch_threads=per_worker)
    seconds = time.perf_counter() - t
assert not summary.failed, summary.failed
assert {{r["torch_threads"] for r in summary.records}} == {{per_worker}}, summary.records[0]
peak = max(r["worker_peak_mb"] for r in summary.records)
per_image = sum(r["seconds"] for r in summary.records) / len(summary.records)
result = {{"seconds": seconds, "e2e": e2e, "worker_peak": peak, "per_image": per_image, "load": os.getloadavg()[0],
           "threads": per_worker}}
"""

OVERHEAD = SETUP + """
import pandas as pd, tifffile
from napari_segsuite.batch.tasks import semantic_task
runner = api.load_model(model, "cpu")
files = sorted(os.listdir(tmp + "/in"))
semantic_task(iio.imread(tmp + "/in/" + files[0]), runner)  # warm
import statistics
plain, batch = [], []
for k in range({rounds}):  # interleaved rounds; the paired ratio of each round, median: the machine is shared
    os.mkdir(f"{{tmp}}/plain{{k}}")
    t = time.perf_counter()
    for f in files:
        labels, table = semantic_task(iio.imread(tmp + "/in/" + f), runner)
        tifffile.imwrite(f"{{tmp}}/plain{{k}}/{{f}}.tif", labels, compression="zlib")
        table.to_csv(f"{{tmp}}/plain{{k}}/{{f}}.csv", index=False)
    plain.append(time.perf_counter() - t)
    t = time.perf_counter()
    summary = api.run_batch("semantic", runner, tmp + "/in", f"{{tmp}}/batch{{k}}")
    batch.append(time.perf_counter() - t)
    assert len(summary.done) == len(files)
ratio = statistics.median(b / p for b, p in zip(batch, plain))
plain, batch = statistics.median(plain), statistics.median(batch)
result = {{"seconds": batch, "plain": plain, "ratio": ratio, "load": os.getloadavg()[0]}}
"""

MAKE_BIG = """
import numpy as np, zarr
z = zarr.open_array({path!r}, mode="w", shape=({n}, {n}), dtype="u1", chunks=(2048, 2048), fill_value=0)
x = np.arange({n}, dtype=np.float32)
for r in range(0, {n}, 2048):
    y = np.arange(r, min(r + 2048, {n}), dtype=np.float32)[:, None]
    z[r:r + len(y)] = ((np.sin(y / 37.0) + np.sin(x / 53.0)) > 1.2) * np.uint8(200)
result = {{"seconds": 0.0}}
"""

BIG = """
import time
from napari_segsuite import api
t = time.perf_counter()
summary = api.run_batch("threshold", None, {path!r}, {out!r}, params={{"level": 100}}, chunk_size=2048, overlap=64)
seconds = time.perf_counter() - t
assert summary.done, summary.failed
rec = summary.records[0]
import os
result = {{"seconds": seconds, "worker_peak": rec["worker_peak_mb"], "objects": rec["n_labels"], "load": os.getloadavg()[0]}}
"""


@benchmark("batch")
def batch(repeats: int) -> list[dict]:
    """Throughput 1 vs 2 workers, per-image overhead against a plain loop, a 20k x 20k image."""
    import os
    import tempfile

    smoke = os.environ.get("SEGSUITE_BENCH_SMOKE", "") not in ("", "0")
    rows = []
    n, size = (4, 64) if smoke else (48, 192)
    n_over, rounds, big_side = (8, 1, 2500) if smoke else (96, max(1, repeats), 20000)
    # The client process uses one thread; the workers' torch threads are what is measured.
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for threads, what in ((None, "default torch threads (cores // workers)"), (1, "1 torch thread per worker")):
        through = {}
        for w in (1, 2):
            r = run_python(THROUGHPUT.format(n=n, size=size, w=w, threads=threads), env)
            through[w] = r
            rows.append({
                "case": f"semantic LRASPP, {n} images {size}x{size}, {w} worker process(es) x "
                        f"{r['threads']} torch thread(s), warm",
                "seconds": r["seconds"], "images_per_s": n / r["seconds"], "s_per_image_in_worker": r["per_image"],
                "ratio": "", "peak_mb": r["worker_peak"], "load_avg": r["load"],
            })
            rows.append({
                "case": f"  same, --processes end to end (cluster start + model load), {w} worker(s)",
                "seconds": r["e2e"], "images_per_s": n / r["e2e"], "s_per_image_in_worker": "",
                "ratio": "", "peak_mb": r["worker_peak"], "load_avg": "",
            })
        rows.append({"case": f"throughput 2 workers / 1 worker, {what} (warm; end to end)",
                     "seconds": "", "images_per_s": "", "s_per_image_in_worker": "",
                     "ratio": f"{through[1]['seconds'] / through[2]['seconds']:.2f}; "
                              f"{through[1]['e2e'] / through[2]['e2e']:.2f}",
                     "peak_mb": "", "load_avg": ""})
    r = run_python(OVERHEAD.format(n=n_over, size=128, rounds=rounds), env)
    rows.append({"case": f"plain loop: semantic task + tif + csv, {n_over} images 128x128 (median of {rounds})",
                 "seconds": r["plain"], "images_per_s": n_over / r["plain"], "s_per_image_in_worker": r["plain"] / n_over,
                 "ratio": "", "peak_mb": r["peak_mb"], "load_avg": r["load"]})
    rows.append({"case": f"run_batch, workers=1, same images (median of {rounds}, interleaved)",
                 "seconds": r["seconds"], "images_per_s": n_over / r["seconds"], "s_per_image_in_worker": r["seconds"] / n_over,
                 "ratio": f"{r['ratio']:.3f} (median paired batch/plain)",
                 "peak_mb": r["peak_mb"], "load_avg": ""})
    tmp = tempfile.mkdtemp()
    path, out = f"{tmp}/big.zarr", f"{tmp}/out"
    run_python(MAKE_BIG.format(path=path, n=big_side))
    r = run_python(BIG.format(path=path, out=out))
    rows.append({"case": f"{big_side}x{big_side} uint8 zarr, threshold task, 2048 chunks + 64 halo, {r['objects']} objects",
                 "seconds": r["seconds"], "images_per_s": "", "s_per_image_in_worker": r["seconds"], "ratio": "",
                 "peak_mb": r["worker_peak"], "load_avg": r["load"]})
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return rows
