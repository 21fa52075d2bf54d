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
from napari_segsuite.tasks.unet_training import TrainedUnet, TrainingOptions, TrainingState

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
    "TrainedUnet",
    "TrainingOptions",
    "TrainingState",
    "download_model",
    "get_entry",
    "list_models",
    "load_model",
    "load_unet",
    "percentile_normalize",
    "prepare_rgb_float",
    "prepare_rgb_uint8",
    "resolve_device",
    "run_sync",
    "train_unet",
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


def train_unet(image, labels, *, class_names=None, init_model=None, on_progress=None, **options) -> TrainedUnet:
    """Train a U-Net from sparse strokes and return it (``.predict(image)``, ``.save(path)``).

    Parameters
    ----------
    image : ndarray or list of ndarray
        (H, W) greyscale, (H, W, C) with channels last, a stack (Z, H, W) with
        strokes (Z, H, W), or a list of such images.
    labels : ndarray or list of ndarray
        Strokes of the image's spatial shape: 0 = not labelled, 1..K = classes.
    class_names : dict or list, optional
        ``{1: "background", 2: "coin"}`` or ``["background", "coin"]``.
    init_model : TrainedUnet, optional
        Continue training this model (e.g. after adding strokes).
    on_progress : callable, optional
        Called with every :class:`Progress` (``partial`` holds the curve point).
    **options
        :class:`TrainingOptions` fields: ``steps``, ``patch_size``, ``batch_size``,
        ``learning_rate``, ``val_fraction``, ``device``, ``seed``, ...

    Returns
    -------
    TrainedUnet
        The weights with the lowest validation loss; ``.predict(plane)`` gives
        labels 1..K, ``.save(folder)`` writes a model folder that
        :func:`load_unet` and :func:`load_model` read.

    Examples
    --------
    >>> from skimage import data
    >>> from napari_segsuite.testing.coins import coins_strokes
    >>> model = train_unet(data.coins(), coins_strokes(), class_names=["background", "coin"],
    ...                    steps=200)  # doctest: +SKIP
    >>> labels = model.predict(data.coins())  # doctest: +SKIP
    >>> model.save("coins-unet")  # doctest: +SKIP
    """
    from napari_segsuite.tasks import unet_training

    return unet_training.train_unet(image, labels, class_names=class_names, init_model=init_model,
                                    on_progress=on_progress, **options)


def load_unet(path, device: str = "cpu") -> TrainedUnet:
    """Load a U-Net folder (``model.safetensors`` + ``unet_config.json``) as a :class:`TrainedUnet`."""
    from napari_segsuite.tasks.unet_training import load_trained_unet

    return load_trained_unet(path, device)
