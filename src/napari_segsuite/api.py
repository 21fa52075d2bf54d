"""The scripting surface of napari-segsuite (no Qt, no napari).

Examples
--------
>>> from napari_segsuite import api
>>> [e.name for e in api.list_models("prompt")][:2]
['sam_vit_b', 'sam_vit_l']
>>> runner = api.load_model("/path/to/sam_vit_b_01ec64.pth", device="cpu")  # doctest: +SKIP
"""

from __future__ import annotations

from napari_segsuite.core.device import resolve_device
from napari_segsuite.core.errors import (
    CheckpointError,
    DeviceError,
    DownloadError,
    InputError,
    ModelNotAvailableError,
    SegSuiteError,
)
from napari_segsuite.core.image import percentile_normalize, prepare_rgb_float, prepare_rgb_uint8
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.models.base import Runner, load_model
from napari_segsuite.models.registry import ModelEntry, entries_for, get_entry
from napari_segsuite.models.store import ModelSource, ModelStore, default_store
from napari_segsuite.tasks.sam_session import SamSession

__all__ = [
    "CheckpointError",
    "DeviceError",
    "DownloadError",
    "InputError",
    "ModelEntry",
    "ModelNotAvailableError",
    "ModelSource",
    "ModelStore",
    "Progress",
    "Runner",
    "SamSession",
    "SegSuiteError",
    "download_model",
    "get_entry",
    "list_models",
    "load_model",
    "percentile_normalize",
    "prepare_rgb_float",
    "prepare_rgb_uint8",
    "resolve_device",
    "run_sync",
]


def list_models(task: str | None = None, family: str | None = None) -> list[ModelEntry]:
    """Registry models for a task ("prompt", "semantic", "instance", "panoptic", ...)."""
    return entries_for(task, family)


def download_model(name: str, store: ModelStore | None = None, *, verbose: bool = True):
    """Download a registry model into the cache (deliberately online), returning its path."""

    def show(p: Progress) -> None:
        if verbose and p.message:
            print(f"\r{p.message}", end="", flush=True)

    path = run_sync((store or default_store()).download(name), show)
    if verbose:
        print()
    return path
