"""The batch engine: one job per input image, on threads, local processes or a dask cluster.

:func:`batch_job` is a generator (like every long job in napari-segsuite): it yields a
:class:`~napari_segsuite.core.progress.Progress` per finished image (``partial`` holds the
image's record) and returns a :class:`BatchSummary`. :func:`run_batch` drains it.

Where the work runs
-------------------
- ``workers=1`` (default): in the calling thread, no pool (lowest overhead);
- ``workers=N``: a pool of N threads in this process (models release the GIL in torch);
- ``processes=True``: a local ``dask.distributed`` cluster of N single-threaded worker
  processes on 127.0.0.1;
- ``scheduler="tcp://host:8786"``: an existing ``dask.distributed`` scheduler. Its workers must
  have napari-segsuite installed and see the inputs, the model and the output folder at the
  same paths (a shared file system).

Each worker process loads the model once (a per-process cache keyed by model path, family and
device); the model is never pickled and sent from the client.

Outputs and resume
------------------
Per image ``<name>.tif`` (or ``<name>.zarr`` for large images / ``fmt="zarr"``), the table
``<name>.csv`` (or ``.parquet``), and ``<name>.done.json`` written last, holding the
checksums and sizes of both outputs, the input's size and modification time, and the run's
signature (task, model checksum, parameters, chunking). Outputs are written to a temporary name
and renamed. A re-run skips an image whose sidecar matches its outputs, its input and the
signature, and redoes it otherwise. At the end ``objects.csv`` holds all tables (column
``image``) and ``manifest.json`` the provenance of the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_segsuite.batch.inputs import Item, expand_inputs, layout, open_item
from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.labels import LABEL_DTYPE
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.core.vocabulary import Task

SIDECAR = ".done.json"
MANIFEST = "manifest.json"
COMBINED_TABLE = "objects"


class BatchSetupError(SegSuiteError):
    """The run cannot start: bad output folder, unreachable scheduler, unknown task or model."""


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to process one image (plain data, pickled to workers)."""

    task: str
    model_path: str | None
    model_family: str | None
    device: str
    params: dict
    out: str
    chunk_size: int
    overlap: int
    fmt: str
    table: str
    merge_threshold: float
    torch_threads: int | None
    signature: dict


@dataclass
class BatchSummary:
    """What a batch run did.

    Attributes
    ----------
    done, skipped : list of str
        Inputs segmented now, and inputs whose outputs were complete already.
    failed : list of (str, str)
        Inputs that failed, with the reason.
    records : list of dict
        One record per input (status, outputs, shape, dtype, seconds, worker memory ...).
    out : str
        The output folder; ``manifest`` the manifest's path.
    """

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    out: str = ""
    manifest: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 otherwise."""
        return 1 if self.failed else 0

    def __str__(self) -> str:
        text = (f"{len(self.done)} done, {len(self.skipped)} skipped (already complete), "
                f"{len(self.failed)} failed in {self.seconds:.1f} s; outputs in {self.out}")
        lines = [text, *(f"note: {n}" for n in self.notes)]
        lines += [f"FAILED {label}: {reason}" for label, reason in self.failed]
        return "\n".join(lines)


# -- worker side ------------------------------------------------------------------------------

_RUNNERS: dict[tuple, object] = {}
_RUNNER_LOCK = threading.Lock()


def get_runner(spec: JobSpec):
    """The model of ``spec``, loaded once per process (thread-safe)."""
    if spec.model_path is None:
        return None
    key = (spec.model_path, spec.model_family, spec.device)
    with _RUNNER_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            from napari_segsuite.models.base import load_model
            from napari_segsuite.models.store import ModelStore

            set_torch_threads(spec.torch_threads)
            source = ModelStore().resolve(spec.model_path, family=spec.model_family)
            runner = load_model(source, spec.device)
            _RUNNERS[key] = runner
    set_torch_threads(spec.torch_threads)  # also when a long-lived worker kept the model
    return runner


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_torch_threads(workers: int, processes: bool, scheduler: str | None) -> int | None:
    """torch threads per worker when ``--torch-threads`` is not given.

    With several local workers (threads or processes) each gets ``max(1, cores // workers)``
    so that N workers on N cores do not oversubscribe the CPU (torch would start one thread
    per core in every worker). One in-process worker keeps torch's own default; on an
    existing scheduler the cluster's workers keep theirs (their cores are unknown here).
    """
    if scheduler or not (workers > 1 or processes):
        return None
    return max(1, available_cores() // workers)


def set_torch_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when ``n`` is given and differs from the current setting."""
    if not n:
        return
    import torch

    if torch.get_num_threads() != int(n):
        torch.set_num_threads(int(n))


class _PlaneOf:
    """Plane ``z`` of a 3D output array, indexable like a 2D array (numpy or zarr)."""

    def __init__(self, arr, z: int):
        self.arr, self.z = arr, z
        self.shape = tuple(arr.shape[1:])

    def __getitem__(self, key):
        return self.arr[(self.z, *key)]

    def __setitem__(self, key, value):
        self.arr[(self.z, *key)] = value


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sha256(path: Path) -> str:
    from napari_segsuite.models.store import sha256_file

    return sha256_file(path)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def _replace(tmp: Path, final: Path) -> None:
    if final.is_dir():
        shutil.rmtree(final)
    os.replace(tmp, final)


def output_paths(item: Item, spec: JobSpec, big: bool) -> dict[str, Path]:
    """Where the outputs of ``item`` go."""
    out = Path(spec.out)
    fmt = spec.fmt if spec.fmt != "auto" else ("zarr" if big else "tif")
    return {
        "labels": out / f"{item.name}.{fmt}",
        "table": out / f"{item.name}.{spec.table}",
        "sidecar": out / f"{item.name}{SIDECAR}",
    }


def process_item(item: Item, spec: JobSpec) -> dict:
    """Segment one image and write its outputs; never raises (failures become records)."""
    t0 = time.perf_counter()
    record = {"input": item.label, "name": item.name, "status": "failed", "t_start": time.time()}
    try:
        record.update(_process(item, spec))
        record["status"] = "done"
    except SegSuiteError as exc:
        record["reason"] = str(exc)
    except MemoryError:
        record["reason"] = "out of memory (use a smaller --chunk-size)"
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        record["reason"] = f"{type(exc).__name__}: {exc}{where}"
    record["seconds"] = round(time.perf_counter() - t0, 4)
    record["t_end"] = time.time()
    record["worker_peak_mb"] = round(_peak_mb(), 1)
    record["worker_pid"] = os.getpid()
    torch = sys.modules.get("torch")
    if torch is not None and spec.model_path:
        record["torch_threads"] = int(torch.get_num_threads())
    return record


def _process(item: Item, spec: JobSpec) -> dict:
    import pandas as pd

    from napari_segsuite.batch.chunking import segment_chunked
    from napari_segsuite.batch.tasks import get_task

    task = get_task(spec.task)
    arr = open_item(item)
    shape = tuple(int(s) for s in arr.shape)
    nplanes, channels_last = layout(shape)
    stack = (len(shape) == 4) or (len(shape) == 3 and not channels_last)
    h, w = (shape[1], shape[2]) if stack else (shape[0], shape[1])
    big = h > spec.chunk_size or w > spec.chunk_size
    paths = output_paths(item, spec, big)
    runner = get_runner(spec) if task.needs_model else None
    if runner is not None and task.model_task:
        runner.require(task.model_task)

    def func(plane):
        return task.func(plane, runner, **spec.params)

    out_shape = (nplanes, h, w) if stack else (h, w)
    labels_path = paths["labels"]
    tmp_labels = _tmp(labels_path)
    if labels_path.suffix == ".zarr":
        import zarr

        chunk = min(spec.chunk_size, 4096)
        out = zarr.open_array(
            str(tmp_labels), mode="w", shape=out_shape, dtype=LABEL_DTYPE, fill_value=0,
            chunks=((1,) if stack else ()) + (min(chunk, h), min(chunk, w)),
        )
    else:
        out = np.zeros(out_shape, dtype=LABEL_DTYPE)
    tables = []
    try:
        for z in range(nplanes):
            plane = arr[z] if stack else arr
            target = _PlaneOf(out, z) if stack else out
            if big:
                table = segment_chunked(
                    plane, func, target, kind=task.kind, chunk=spec.chunk_size,
                    overlap=spec.overlap, merge_threshold=spec.merge_threshold, normalize=task.normalize,
                )
            else:
                labels, table = func(np.asarray(plane))
                labels = np.asarray(labels)
                if labels.shape != (h, w):
                    raise InputError(f"The task returned labels of shape {labels.shape} for an image of {(h, w)}.")
                target[:, :] = labels.astype(LABEL_DTYPE)
            table = table.copy() if table is not None else pd.DataFrame({"label": []})
            if stack:
                table.insert(0, "plane", z)
            tables.append(table)
        table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
        if labels_path.suffix != ".zarr":
            import tifffile

            tifffile.imwrite(tmp_labels, out, compression="zlib", photometric="minisblack")
        tmp_table = _tmp(paths["table"])
        if spec.table == "parquet":
            table.to_parquet(tmp_table, index=False)
        else:
            table.to_csv(tmp_table, index=False)
    except BaseException:
        for p in (tmp_labels, _tmp(paths["table"])):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
        raise
    _replace(tmp_labels, labels_path)
    _replace(tmp_table, paths["table"])
    sidecar = {
        "input": item.label,
        "input_fingerprint": item.fingerprint(),
        "signature": spec.signature,
        "labels": _file_record(labels_path),
        "table": _file_record(paths["table"]),
        "shape": list(out_shape),
        "input_shape": list(shape),
        "input_dtype": str(np.dtype(arr.dtype)),
        "n_labels": len(table),
        "chunked": big,
    }
    tmp_side = _tmp(paths["sidecar"])
    tmp_side.write_text(json.dumps(sidecar))  # compact: json's C encoder (indent uses the Python one)
    _replace(tmp_side, paths["sidecar"])
    return {
        "_table": table,  # for objects.csv without reading the file back; not in the manifest
        "labels": str(labels_path), "table": str(paths["table"]), "shape": list(out_shape),
        "input_shape": list(shape), "input_dtype": sidecar["input_dtype"], "n_labels": len(table),
        "chunked": big,
    }


def array_job(
    task: str,
    runner,
    data,
    *,
    params: dict | None = None,
    channels_last: bool | None = None,
    chunk_size: int = 2048,
    overlap: int = 64,
    merge_threshold: float = 0.5,
    unique_ids: bool | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> Generator[Progress, None, tuple]:
    """One in-memory image or stack through a batch task, plane by plane (for the widgets'
    "run on all planes / all open images"); a generator yielding a :class:`Progress` per plane.

    Parameters
    ----------
    task : str
        A registered batch task.
    runner : Runner or None
        A loaded model (None for tasks without one).
    data : array-like
        ``(H, W)``, ``(H, W, C)``, ``(Z, H, W)`` or ``(Z, H, W, C)`` (see
        :func:`~napari_segsuite.batch.inputs.layout`), or ``(..., H, W[, C])`` with
        ``channels_last`` given: every leading index is a plane.
    params, chunk_size, overlap, merge_threshold
        As for :func:`run_batch`; planes larger than ``chunk_size`` are chunked.
    unique_ids : bool, optional
        Continue the ids of each plane after those of the planes before it, so an object id
        means one object in the whole stack (default: True for instance-like tasks).
    progress_offset, progress_total : int
        Where this job's planes sit in an outer job's progress (several images in a row).

    Returns
    -------
    (ndarray, pandas.DataFrame)
        int32 labels of the spatial shape of ``data`` and the table (a ``plane`` column, the
        plane's index into the leading axes flattened, for stacks).
    """
    import pandas as pd

    from napari_segsuite.batch.chunking import segment_chunked
    from napari_segsuite.batch.tasks import get_task

    spec = get_task(task)
    shape = tuple(int(s) for s in data.shape)
    if channels_last is None:
        _, channels_last = layout(shape)
    spatial = shape[:-1] if channels_last else shape
    lead, (h, w) = spatial[:-2], spatial[-2:]
    n = int(np.prod(lead)) if lead else 1
    out = np.zeros((n, h, w), dtype=LABEL_DTYPE)
    if isinstance(data, np.ndarray):
        flat = np.reshape(data, (n, *shape[len(lead):])) if lead else data[None]
    else:  # lazy (dask, zarr): each plane is read only where its chunks are read
        from napari_segsuite.core.regions import LazyView

        rest = (slice(None),) * (len(shape) - len(lead))
        flat = [LazyView(data, tuple(int(i) for i in np.unravel_index(z, lead)) + rest) for z in range(n)]
    if unique_ids is None:
        unique_ids = spec.kind == Task.INSTANCE
    total = progress_total if progress_total is not None else n
    tables = []
    next_id = 0
    for z in range(n):
        plane = flat[z]
        if h > chunk_size or w > chunk_size:
            table = segment_chunked(
                plane, lambda p: spec.func(p, runner, **(params or {})), out[z], kind=spec.kind,
                chunk=chunk_size, overlap=overlap, merge_threshold=merge_threshold, normalize=spec.normalize,
            )
        else:
            labels, table = spec.func(np.asarray(plane), runner, **(params or {}))
            labels = np.asarray(labels)
            if labels.shape != (h, w):
                raise InputError(f"The task returned labels of shape {labels.shape} for a plane of {(h, w)}.")
            out[z] = labels
        table = table.copy() if table is not None else pd.DataFrame({"label": np.zeros(0, np.int64)})
        if unique_ids and next_id:
            nz = out[z] != 0
            out[z][nz] += next_id
            if "label" in table:
                table["label"] = table["label"].astype(np.int64) + next_id
        if unique_ids:  # past every id of this plane, in the labels and in the table
            listed = int(table["label"].max()) if "label" in table and len(table) else 0
            next_id = max(next_id, int(out[z].max(initial=0)), listed)
        if lead:
            table.insert(0, "plane", z)
        tables.append(table)
        yield Progress(progress_offset + z + 1, total, f"plane {z + 1}/{n}" if n > 1 else "segmented")
    return out.reshape(spatial), pd.concat(tables, ignore_index=True)


def _file_record(path: Path) -> dict:
    """Size and checksum of an output file; for a zarr folder its shape and file count."""
    if path.is_dir():
        import zarr

        arr = zarr.open_array(str(path), mode="r")
        return {"path": path.name, "shape": list(arr.shape), "files": sum(1 for f in path.rglob("*") if f.is_file())}
    return {"path": path.name, "size": path.stat().st_size, "sha256": _sha256(path)}


def check_complete(item: Item, spec: JobSpec) -> dict | None:
    """The sidecar of ``item`` when its outputs are complete and valid for ``spec``, else None."""
    side = Path(spec.out) / f"{item.name}{SIDECAR}"
    if not side.is_file():
        return None
    try:
        record = json.loads(side.read_text())
        if record.get("signature") != spec.signature or record.get("input") != item.label:
            return None
        if record.get("input_fingerprint") != item.fingerprint():
            return None
        for key in ("labels", "table"):
            path = Path(spec.out) / record[key]["path"]
            if not path.exists() or _file_record(path) != record[key]:
                return None
    except Exception:
        return None
    return record


# -- client side ------------------------------------------------------------------------------


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder and check it is writable; :class:`BatchSetupError` otherwise."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".segsuite-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BatchSetupError(f"The output folder {path} is not writable: {exc.strerror or exc}.") from exc
    return path


def connect(address: str, timeout: float = 5.0):
    """A ``distributed.Client`` of the scheduler at ``address``; :class:`BatchSetupError` within
    about ``timeout`` seconds when it cannot be reached."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise BatchSetupError("--scheduler needs the 'distributed' package: pip install distributed") from exc
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise BatchSetupError(
            f"Cannot reach the dask scheduler at {address} within {timeout:g} s ({type(exc).__name__}). "
            "Check the address and that the scheduler is running."
        ) from exc
    except ValueError as exc:
        raise BatchSetupError(f"Bad scheduler address {address!r}: {exc}") from exc


class _Inline:
    """Runs each job when its result is asked for (workers=1: no pool, no copies)."""

    def submit(self, fn, *args):
        return (fn, args)

    def results(self, futures):
        for fn, args in futures:
            yield fn(*args)

    def close(self):
        pass


class _Pool:
    """A ``concurrent.futures`` thread pool."""

    def __init__(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segsuite-batch")

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def results(self, futures):
        from concurrent.futures import as_completed

        for fut in as_completed(futures):
            yield fut.result()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Dask:
    """A ``distributed.Client`` (of a local cluster we started, or of a given scheduler)."""

    def __init__(self, client, cluster=None):
        self.client, self.cluster = client, cluster
        self.items: list = []

    def submit(self, fn, *args):
        item = args[0]
        return self.client.submit(fn, *args, pure=False, key=f"segsuite-{item.name}-{time.time_ns()}")

    def results(self, futures):
        from distributed import as_completed

        for fut in as_completed(futures, loop=self.client.loop):
            try:
                yield fut.result()
            except Exception as exc:  # the worker died, or the task could not be run
                item = next(i for f, i in self.items if f is fut)
                yield {"input": item.label, "name": item.name, "status": "failed",
                       "reason": f"worker error: {type(exc).__name__}: {exc}"}

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _local_cluster(workers: int):
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise BatchSetupError("--processes needs the 'distributed' package: pip install distributed") from exc
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, silence_logs=40,
    )
    return _Dask(Client(cluster, set_as_default=False), cluster)


def _parse_value(value):
    """``--param`` values: numbers and booleans become numbers and booleans, the rest stays text."""
    if not isinstance(value, str):
        return value
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


@dataclass
class BatchOptions:
    """How a batch run works: the one description of its options (API, CLI and dock).

    Parameters
    ----------
    device : str
        "cpu", "cuda", "mps" or "auto" (ignored for a loaded runner, which keeps its own).
    params : dict
        The task's parameters (``--param name=value``), checked by the task against the
        fields of its parameter dataclass.
    workers : int
        Images processed at the same time.
    processes : bool
        Workers are processes (True) or threads in this process (False).
    scheduler : str, optional
        A ``dask.distributed`` scheduler address; the workers are the cluster's.
    chunk_size : int
        Images larger than this (pixels a side) are segmented in chunks of this size.
    overlap : int
        Halo of context around each chunk, in pixels.
    fmt : {"auto", "tif", "zarr"}
        Label image format ("auto": zarr for large images).
    table : {"csv", "parquet"}
        Per-image table format.
    resume : bool
        Skip images whose outputs are complete for the same task, model and options.
    merge_threshold : float
        Overlap (fraction of the smaller part) at which objects of neighbouring chunks merge.
    connect_timeout : float
        Seconds to wait for the scheduler.
    family : str, optional
        Model family of a local checkpoint that cannot be detected.
    torch_threads : int, optional
        torch threads per worker (None: :func:`default_torch_threads`, ``max(1, cores //
        workers)`` with several local workers or with processes, torch's own default for
        one in-process worker and on a scheduler).
    """

    device: str = "cpu"
    params: dict | None = None
    workers: int = 1
    processes: bool = False
    scheduler: str | None = None
    chunk_size: int = 2048
    overlap: int = 64
    fmt: str = "auto"
    table: str = "csv"
    resume: bool = True
    merge_threshold: float = 0.5
    connect_timeout: float = 5.0
    family: str | None = None
    torch_threads: int | None = None

    @classmethod
    def make(cls, options: BatchOptions | None = None, **changes) -> BatchOptions:
        """``options`` (or the defaults) with ``changes``; unknown names are a :class:`BatchSetupError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(changes) - known
        if unknown:
            raise BatchSetupError(
                f"Unknown batch options {sorted(unknown)}; known: {', '.join(sorted(known))}."
            )
        return dataclasses.replace(options or cls(), **changes)


def batch_job(
    task: str,
    model,
    inputs,
    out,
    *,
    options: BatchOptions | None = None,
    argv: list[str] | None = None,
    **changes,
) -> Generator[Progress, None, BatchSummary]:
    """Segment many images; a generator yielding one :class:`Progress` per finished image.

    ``options`` (:class:`BatchOptions`) and keyword ``changes`` to it say how; see
    :func:`run_batch` for the other parameters. Raises :class:`BatchSetupError` (before any
    work) when the task, model, options, output folder or scheduler cannot be used.
    """
    opts = BatchOptions.make(options, **changes)
    device, params, workers, processes, scheduler = (
        opts.device, opts.params, opts.workers, opts.processes, opts.scheduler)
    chunk_size, overlap, fmt, table, resume = opts.chunk_size, opts.overlap, opts.fmt, opts.table, opts.resume
    merge_threshold, connect_timeout, family, torch_threads = (
        opts.merge_threshold, opts.connect_timeout, opts.family, opts.torch_threads)
    from napari_segsuite.batch import manifest as mf
    from napari_segsuite.batch.tasks import get_task

    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        spec_task = get_task(task)
    except InputError as exc:
        raise BatchSetupError(str(exc)) from exc
    if fmt not in ("auto", "tif", "zarr"):
        raise BatchSetupError(f"Unknown output format {fmt!r}: use tif, zarr or auto.")
    if table not in ("csv", "parquet"):
        raise BatchSetupError(f"Unknown table format {table!r}: use csv or parquet.")
    if table == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise BatchSetupError("--table parquet needs pyarrow (pip install pyarrow); or use csv.") from exc
    if workers < 1:
        raise BatchSetupError(f"--workers must be at least 1, got {workers}.")
    source = None
    if spec_task.needs_model:
        if model is None:
            raise BatchSetupError(f"The {task} task needs a model (--model NAME or PATH).")
        from napari_segsuite.models.store import default_store

        try:
            source = model.source if hasattr(model, "source") else default_store().resolve(model, family=family)
        except SegSuiteError as exc:
            raise BatchSetupError(str(exc)) from exc
        if hasattr(model, "source"):  # a loaded runner: reuse it in this process
            device = model.device
            with _RUNNER_LOCK:
                _RUNNERS[(str(Path(source.path).resolve()), source.family, device)] = model
    out_path = check_out_dir(out)
    params = {k: _parse_value(v) for k, v in (params or {}).items()}
    previous = None
    try:
        previous = json.loads((out_path / MANIFEST).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        pass
    model_info = mf.model_record(source, previous)
    signature = {
        "task": task, "model_sha256": model_info["sha256"], "params": params,
        "chunk_size": chunk_size, "overlap": overlap, "merge_threshold": merge_threshold,
        "format": fmt, "table": table,
    }
    spec = JobSpec(
        task=task, model_path=str(Path(source.path).resolve()) if source else None,
        model_family=source.family if source else None, device=device, params=params,
        out=str(out_path.resolve()), chunk_size=int(chunk_size), overlap=int(overlap), fmt=fmt,
        table=table, merge_threshold=float(merge_threshold),
        torch_threads=torch_threads or default_torch_threads(workers, processes, scheduler),
        signature=signature,
    )
    expansion = expand_inputs(inputs)
    summary = BatchSummary(out=str(out_path))
    for spec_in, reason in expansion.problems:
        summary.failed.append((spec_in, reason))
        summary.records.append({"input": spec_in, "status": "failed", "reason": reason})
    todo = []
    for item in expansion.items:
        side = check_complete(item, spec) if resume else None
        if side is not None:
            summary.skipped.append(item.label)
            summary.records.append({
                "input": item.label, "name": item.name, "status": "skipped",
                "labels": str(out_path / side["labels"]["path"]), "table": str(out_path / side["table"]["path"]),
                "shape": side["shape"], "input_shape": side.get("input_shape"),
                "input_dtype": side.get("input_dtype"), "n_labels": side.get("n_labels"),
            })
        else:
            todo.append(item)
    total = len(expansion.items)
    step = len(summary.skipped)
    yield Progress(step, total, f"{len(todo)} to segment, {step} already complete")
    if scheduler:
        backend = _Dask(connect(scheduler, connect_timeout))
    elif processes and todo:
        backend = _local_cluster(workers)
    elif workers > 1 and len(todo) > 1:
        backend = _Pool(workers)
    else:
        backend = _Inline()
    restore_threads = None
    if spec.torch_threads and isinstance(backend, _Inline | _Pool) and spec.model_path:
        import torch

        restore_threads = torch.get_num_threads()  # this process's setting is given back at the end
        set_torch_threads(spec.torch_threads)
    try:
        futures = [backend.submit(process_item, item, spec) for item in todo]
        if isinstance(backend, _Dask):
            backend.items = list(zip(futures, todo, strict=True))
        for record in backend.results(futures):
            step += 1
            summary.records.append(record)
            if record["status"] == "done":
                summary.done.append(record["input"])
            else:
                summary.failed.append((record["input"], record.get("reason", "unknown error")))
            yield Progress(step, total, f"{record['status']}: {record['input']}", partial=record)
    finally:
        backend.close()
        if restore_threads is not None:
            import torch

            torch.set_num_threads(restore_threads)
    _finish(summary, spec, model_info, started, t0, scheduler, workers, processes, argv)
    return summary


def _finish(summary, spec, model_info, started, t0, scheduler, workers, processes, argv) -> None:
    """Combined table, notes on mixed inputs, and the manifest."""
    import pandas as pd

    from napari_segsuite.batch import manifest as mf

    out = Path(spec.out)
    frames, names = [], []
    for rec in summary.records:
        df = rec.pop("_table", None)
        if df is None and rec["status"] in ("done", "skipped") and rec.get("table"):
            path = Path(rec["table"])
            df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
        if df is not None:
            frames.append(df)
            names.append(rec["name"])
    if frames:
        # one concatenation, then the image column for all rows at once
        combined = pd.concat(frames, ignore_index=True)
        combined.insert(0, "image", np.repeat(np.array(names, dtype=object), [len(f) for f in frames]))
        final = out / f"{COMBINED_TABLE}.{spec.table}"
        tmp = _tmp(final)
        combined.to_parquet(tmp, index=False) if spec.table == "parquet" else combined.to_csv(tmp, index=False)
        _replace(tmp, final)
    dtypes = sorted({r["input_dtype"] for r in summary.records if r.get("input_dtype")})
    channels = sorted({_channels(r["input_shape"]) for r in summary.records if r.get("input_shape")})
    if len(dtypes) > 1:
        summary.notes.append(f"mixed pixel types ({', '.join(dtypes)}): each image was normalised on its own")
    if len(channels) > 1:
        summary.notes.append(f"mixed channel counts ({', '.join(map(str, channels))}): each image was converted to RGB on its own")
    summary.seconds = time.perf_counter() - t0
    manifest = {
        "napari_segsuite_batch": 1,
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(summary.seconds, 3),
        "task": spec.task,
        "model": model_info,
        "device": spec.device,
        "parameters": spec.params,
        "options": {
            "chunk_size": spec.chunk_size, "overlap": spec.overlap, "merge_threshold": spec.merge_threshold,
            "format": spec.fmt, "table": spec.table, "workers": workers, "processes": processes,
            "scheduler": scheduler,
        },
        "versions": mf.versions(),
        "client": mf.platform_record() | ({"argv": argv} if argv else {}),
        "summary": {"done": len(summary.done), "skipped": len(summary.skipped), "failed": len(summary.failed),
                    "notes": summary.notes},
        "images": summary.records,
    }
    path = out / MANIFEST
    tmp = _tmp(path)
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    _replace(tmp, path)
    summary.manifest = str(path)


def _channels(shape) -> int:
    _, channels_last = layout(tuple(shape))
    return int(shape[-1]) if channels_last else 1


def run_batch(task: str, model, inputs, out, *, options: BatchOptions | None = None, progress=None,
              **changes) -> BatchSummary:
    """Segment many images with one task and model.

    Parameters
    ----------
    task : str
        A registered task (``semantic``, ``panoptic``, ``threshold`` ...).
    model : str, path, Runner or None
        Registry name or local checkpoint (None for tasks without a model).
    inputs : str or list
        Files, folders, glob patterns, zarr / OME-Zarr stores.
    out : str or path
        Output folder (created).
    options : BatchOptions, optional
        How the run works (device, task parameters, workers, chunking, formats, resume ...).
    progress : callable, optional
        Called with each :class:`Progress` (``partial`` is the finished image's record).
    **changes
        :class:`BatchOptions` fields to change (``params=...``, ``workers=2`` ...).

    Returns
    -------
    BatchSummary
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    return run_sync(batch_job(task, model, inputs, out, options=options, **changes), progress)


