"""The run manifest: what was run, with which model (and its checksum), parameters and versions."""

from __future__ import annotations

import hashlib
import platform
import sys
from importlib import metadata
from pathlib import Path

#: Distributions whose versions go into every manifest.
VERSIONED = ("napari-segsuite", "numpy", "torch", "torchvision", "transformers", "dask", "distributed", "zarr", "tifffile", "pandas")


def versions() -> dict[str, str | None]:
    """Versions of Python and of the packages that shape the results (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out["napari-segsuite"] is None:
        from napari_segsuite import __version__

        out["napari-segsuite"] = __version__
    return out


def sha256_path(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder (its files' relative paths and contents, sorted)."""
    from napari_segsuite.models.store import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _stat(path: Path) -> dict:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return {"size": sum(f.stat().st_size for f in files), "mtime_ns": max((f.stat().st_mtime_ns for f in files), default=0)}


def model_record(source, previous: dict | None = None) -> dict:
    """Provenance of a resolved :class:`~napari_segsuite.models.store.ModelSource`, checksum included.

    ``previous`` is the model record of an earlier manifest: its checksum is reused when the
    path, size and modification time are the same (hashing a large checkpoint takes seconds).
    """
    if source is None:
        return {"name": None, "path": None, "sha256": None}
    record = dict(source.provenance())
    path = Path(source.path).resolve()
    record["path"] = str(path)
    record.update(_stat(path))
    if not record.get("sha256"):
        same = previous and all(previous.get(k) == record[k] for k in ("path", "size", "mtime_ns"))
        record["sha256"] = previous["sha256"] if same and previous.get("sha256") else sha256_path(path)
    return record


def platform_record() -> dict:
    """The machine the run was started from."""
    return {"python_executable": sys.executable, "platform": platform.platform(), "argv": sys.argv}
