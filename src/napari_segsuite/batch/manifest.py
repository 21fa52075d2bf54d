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


def model_record(source) -> dict:
    """Provenance of a resolved :class:`~napari_segsuite.models.store.ModelSource`, checksum included."""
    if source is None:
        return {"name": None, "path": None, "sha256": None}
    record = dict(source.provenance())
    record["path"] = str(source.path)
    if not record.get("sha256"):
        record["sha256"] = sha256_path(source.path)
    return record


def platform_record() -> dict:
    """The machine the run was started from."""
    return {"python_executable": sys.executable, "platform": platform.platform(), "argv": sys.argv}
