"""The scripting surface of napari-segsuite (no Qt, no napari).

Examples
--------
>>> from napari_segsuite import api
>>> [e.name for e in api.list_models("prompt")][:2]
['sam_vit_b', 'sam_vit_l']
>>> runner = api.load_model("/path/to/sam_vit_b_01ec64.pth", device="cpu")  # doctest: +SKIP
>>> result = api.segment_semantic(image, "segformer_b0_ade", tile_size=512)  # doctest: +SKIP
>>> result.labels, result.class_names  # doctest: +SKIP
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
    "segment_semantic",
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


def segment_semantic(
    image,
    model,
    device: str = "auto",
    tile_size: int | None = None,
    overlap: int = 64,
    *,
    confidence: bool = False,
    out=None,
    confidence_out=None,
    store: ModelStore | None = None,
    progress=None,
):
    """Semantic segmentation of one 2D image: a class for every pixel.

    Parameters
    ----------
    image : array-like
        (H, W) or (H, W, C) with 1, 3 or 4 channels, any numeric dtype; a
        numpy, memmap, dask or zarr array (read one tile at a time).
    model : str, path or Runner
        Registry name (``"segformer_b0_ade"``), a local checkpoint (transformers
        ``save_pretrained`` folder of SegFormer or a semantic Mask2Former,
        torchvision DeepLabV3/LRASPP/FCN state dict, napari-segsuite U-Net
        folder), or a loaded runner.
    device : str
        "auto", "cpu", "cuda" or "mps" (ignored for a loaded runner).
    tile_size : int or None
        None: one tile for images up to 1024 pixels a side, else 512-pixel
        tiles; 0: never tile; an int: that tile side.
    overlap : int
        Overlap of neighbouring tiles; their scores are blended smoothly.
    confidence : bool
        Also compute the winning class's probability per pixel.
    out, confidence_out : array-like (H, W), optional
        Arrays to write into (memmap or zarr for huge images).
    store : ModelStore, optional
        Where registry models are found.
    progress : callable, optional
        Called with every :class:`Progress`.

    Returns
    -------
    napari_segsuite.tasks.semantic.SemanticResult
        ``.labels`` (model class id + 1 per pixel), ``.class_names`` (label id
        -> name), ``.class_ids``, ``.pixel_counts``, ``.confidence``.
    """
    from napari_segsuite.tasks.semantic import segment_semantic_job

    runner = load_model(model, device, store=store)
    runner.require("semantic")
    job = segment_semantic_job(
        image, runner, tile_size=tile_size, overlap=overlap, confidence=confidence,
        out=out, confidence_out=confidence_out,
    )
    return run_sync(job, progress)
