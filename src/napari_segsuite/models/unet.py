"""U-Nets (segmentation_models_pytorch ``smp.Unet``) saved as safetensors plus a JSON config.

On-disk format: a folder holding

- ``model.safetensors``: the state dict (no pickle), and
- ``unet_config.json``: everything needed to rebuild the model and prepare
  its input::

      {
        "format": "napari-segsuite-unet",
        "format_version": 1,
        "architecture": "Unet",
        "encoder_name": "resnet18",
        "encoder_depth": 3,
        "decoder_channels": [64, 32, 16],
        "decoder_use_norm": "batchnorm",
        "decoder_attention_type": null,
        "decoder_interpolation": "nearest",
        "in_channels": 1,
        "classes": 3,
        "class_names": {"0": "background", "1": "cell", "2": "border"},
        "normalization": {"mode": "percentile", "percentiles": [1.0, 99.8], "per_channel": true}
      }

``classes`` counts the output channels, background included; the model
outputs logits. ``normalization.mode`` is ``"percentile"`` (robust percentile
scaling to [0, 1]), ``"imagenet"`` (scaling to [0, 1], then ImageNet mean/std)
or ``"none"`` (float values as they are).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_segsuite.core.errors import CheckpointError, InputError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.base import Runner
from napari_segsuite.models.store import ModelSource

CONFIG_NAME = "unet_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "napari-segsuite-unet"
FORMAT_VERSION = 1
NORMALIZATION_MODES = ("percentile", "imagenet", "none")
DEFAULT_NORMALIZATION = {"mode": "percentile", "percentiles": [1.0, 99.8], "per_channel": True}
REQUIRED_KEYS = ("encoder_name", "encoder_depth", "decoder_channels", "in_channels", "classes")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def make_unet_config(
    *,
    encoder_name: str = "resnet18",
    encoder_depth: int = 5,
    decoder_channels: tuple[int, ...] | list[int] | None = None,
    in_channels: int = 3,
    classes: int = 2,
    class_names: dict[int, str] | list[str] | None = None,
    normalization: dict | None = None,
    **extra: Any,
) -> dict:
    """A complete, validated U-Net config with defaults filled in.

    Parameters
    ----------
    encoder_name : str
        Any ``segmentation_models_pytorch`` encoder name.
    encoder_depth : int
        Number of encoder stages (3 to 5).
    decoder_channels : sequence of int, optional
        One entry per stage; defaults to smp's ``(256, 128, 64, 32, 16)`` cut to the depth.
    in_channels : int
        Input channels.
    classes : int
        Output classes, background included.
    class_names : dict or list, optional
        Class id -> name; defaults to ``background`` then ``class_<i>``.
    normalization : dict, optional
        Input normalisation (see module docstring); percentile by default.
    **extra
        Further ``smp.Unet`` keyword arguments (``decoder_use_norm``,
        ``decoder_attention_type``, ``decoder_interpolation``) or free metadata.

    Returns
    -------
    dict
    """
    if decoder_channels is None:
        decoder_channels = (256, 128, 64, 32, 16)[: int(encoder_depth)]
    if class_names is None:
        class_names = {0: "background", **{i: f"class_{i}" for i in range(1, int(classes))}}
    elif not isinstance(class_names, dict):
        class_names = dict(enumerate(class_names))
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": "Unet",
        "encoder_name": encoder_name,
        "encoder_depth": int(encoder_depth),
        "decoder_channels": [int(c) for c in decoder_channels],
        "decoder_use_norm": "batchnorm",
        "decoder_attention_type": None,
        "decoder_interpolation": "nearest",
        "in_channels": int(in_channels),
        "classes": int(classes),
        "class_names": {str(int(k)): str(v) for k, v in class_names.items()},
        "normalization": dict(normalization or DEFAULT_NORMALIZATION),
        **extra,
    }
    return validate_unet_config(config)


def validate_unet_config(config: dict, where: str = "The U-Net config") -> dict:
    """Check a U-Net config and return a normalised copy.

    Raises
    ------
    CheckpointError
        For missing keys, wrong types or values, or an unknown format version.
    """
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} is not a JSON object.")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{where} lacks the key(s) {', '.join(missing)}.")
    cfg = dict(config)
    if cfg.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise CheckpointError(f"{where} has format {cfg.get('format')!r}, not {FORMAT_NAME!r}.")
    version = cfg.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where} has format version {version!r}; this napari-segsuite reads version "
            f"{FORMAT_VERSION} and older. Update napari-segsuite."
        )
    if cfg.get("architecture", "Unet") != "Unet":
        raise CheckpointError(f"{where} describes a {cfg.get('architecture')!r}; only 'Unet' is supported.")
    try:
        cfg["encoder_depth"] = int(cfg["encoder_depth"])
        cfg["in_channels"] = int(cfg["in_channels"])
        cfg["classes"] = int(cfg["classes"])
        cfg["decoder_channels"] = [int(c) for c in cfg["decoder_channels"]]
        names = cfg.get("class_names") or {}
        if isinstance(names, list):
            names = dict(enumerate(names))
        cfg["class_names"] = {str(int(k)): str(v) for k, v in names.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where} has a value of the wrong type: {exc}") from exc
    if not isinstance(cfg["encoder_name"], str) or not cfg["encoder_name"]:
        raise CheckpointError(f"{where}: encoder_name must be a non-empty string.")
    if not 1 <= cfg["encoder_depth"] <= 5:
        raise CheckpointError(f"{where}: encoder_depth must be 1 to 5, not {cfg['encoder_depth']}.")
    if len(cfg["decoder_channels"]) != cfg["encoder_depth"]:
        raise CheckpointError(
            f"{where}: decoder_channels has {len(cfg['decoder_channels'])} entries but encoder_depth "
            f"is {cfg['encoder_depth']}; they must match."
        )
    if cfg["in_channels"] < 1 or cfg["classes"] < 1:
        raise CheckpointError(f"{where}: in_channels and classes must be at least 1.")
    norm = cfg.get("normalization") or DEFAULT_NORMALIZATION
    if not isinstance(norm, dict) or norm.get("mode", "percentile") not in NORMALIZATION_MODES:
        raise CheckpointError(
            f"{where}: normalization must be an object whose mode is one of {', '.join(NORMALIZATION_MODES)}."
        )
    norm = {"mode": "percentile", **norm}
    if norm["mode"] == "percentile":
        pct = norm.get("percentiles", DEFAULT_NORMALIZATION["percentiles"])
        try:
            low, high = (float(p) for p in pct)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: normalization.percentiles must be two numbers.") from exc
        if not 0 <= low < high <= 100:
            raise CheckpointError(f"{where}: normalization.percentiles must satisfy 0 <= low < high <= 100.")
        norm["percentiles"] = [low, high]
        norm["per_channel"] = bool(norm.get("per_channel", True))
    cfg["normalization"] = norm
    cfg.setdefault("format", FORMAT_NAME)
    cfg["format_version"] = version
    return cfg


def build_unet(config: dict):
    """Build an untrained ``smp.Unet`` from a config (never downloads: ``encoder_weights=None``).

    Parameters
    ----------
    config : dict
        A U-Net config (see module docstring).

    Returns
    -------
    torch.nn.Module
    """
    cfg = validate_unet_config(config)
    import segmentation_models_pytorch as smp

    kwargs: dict[str, Any] = {
        "encoder_name": cfg["encoder_name"],
        "encoder_depth": cfg["encoder_depth"],
        "encoder_weights": None,
        "decoder_channels": tuple(cfg["decoder_channels"]),
        "in_channels": cfg["in_channels"],
        "classes": cfg["classes"],
        "activation": None,
    }
    for key in ("decoder_use_norm", "decoder_attention_type", "decoder_interpolation"):
        if key in cfg:
            kwargs[key] = cfg[key]
    try:
        return smp.Unet(**kwargs)
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"Cannot build the U-Net described by its config: {exc}") from exc


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_unet(model, config: dict, folder: str | os.PathLike) -> Path:
    """Save a U-Net as ``model.safetensors`` + ``unet_config.json`` in ``folder``.

    Parameters
    ----------
    model : torch.nn.Module
        The ``smp.Unet`` (any device).
    config : dict
        Its config; ``in_channels`` and ``classes`` are checked against the model.
    folder : path-like
        Created if needed.

    Returns
    -------
    Path
        The folder.
    """
    from safetensors.torch import save_file

    cfg = validate_unet_config(config)
    cfg.setdefault("class_names", {})
    cfg["format"], cfg["format_version"] = FORMAT_NAME, FORMAT_VERSION
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in build_unet(cfg).state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        differ = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
        raise InputError(
            f"The model does not match its config ({len(differ)} weights differ, e.g. "
            f"{', '.join(differ[:3])}); the config must describe the model being saved."
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
    text = json.dumps(cfg, indent=2)
    _atomic_write(folder / CONFIG_NAME, lambda p: Path(p).write_text(text))
    return folder


def read_unet_config(folder: Path) -> dict:
    """Read and validate ``unet_config.json`` in ``folder``."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}, so it is not a napari-segsuite U-Net folder.")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    return validate_unet_config(config, where=str(path))


def load_unet(folder: str | os.PathLike, device: str = "cpu"):
    """Rebuild a saved U-Net and load its weights (eval mode).

    Parameters
    ----------
    folder : path-like
        The U-Net folder, or its ``model.safetensors``.
    device : str
        Torch device.

    Returns
    -------
    (torch.nn.Module, dict)
        The model and its validated config.

    Raises
    ------
    CheckpointError
        Missing or invalid config, unreadable weights, or weights that do not fit the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    config = read_unet_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder} has {CONFIG_NAME} but no {WEIGHTS_NAME}.")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file (truncated or corrupt): {exc}") from exc
    model = build_unet(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        problems = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        detail = "; ".join(p if len(p) <= 200 else p[:200] + "…" for p in problems[:2])
        raise CheckpointError(
            f"The weights in {weights} do not fit the U-Net of {CONFIG_NAME}: {detail or exc}"
        ) from exc
    return model.eval().to(device), config


def prepare_unet_input(plane: np.ndarray, config: dict) -> np.ndarray:
    """Normalise a (H, W) or (H, W, C) plane into (in_channels, H, W) float32 as the config says."""
    from napari_segsuite.core.image import check_plane, percentile_normalize, to_float01

    arr = np.asarray(plane)
    arr = check_plane(arr, channels_last=arr.ndim == 3)
    if arr.ndim == 2:
        arr = arr[..., None]
    n_in = config["in_channels"]
    c = arr.shape[-1]
    if c != n_in:
        if n_in == 1:
            arr = arr.astype(np.float32).mean(axis=-1, keepdims=True)
        elif c == 1:
            arr = np.repeat(arr, n_in, axis=-1)
        elif n_in == 3 and c == 4:
            arr = arr[..., :3]
        else:
            raise InputError(f"The U-Net takes {n_in} channel(s), but the image has {c}.")
    norm = config["normalization"]
    mode = norm["mode"]
    if mode == "percentile":
        out = percentile_normalize(arr, tuple(norm["percentiles"]), per_channel=norm["per_channel"])
    elif mode == "imagenet":
        out = to_float01(arr)
        if n_in == 3:
            out = (out - np.asarray(_IMAGENET_MEAN, np.float32)) / np.asarray(_IMAGENET_STD, np.float32)
    else:
        out = np.nan_to_num(arr.astype(np.float32))
    return np.ascontiguousarray(np.moveaxis(out.astype(np.float32), -1, 0))


def logits_job(model, x: np.ndarray, multiple: int, device: str, *, tile_size: int | None = 512,
               overlap: int = 64):
    """Logits (classes, H, W) of a prepared (C, H, W) U-Net input, as a job: the one U-Net prediction path.

    The input is edge-padded to a multiple of ``multiple`` (the padding is cut
    off again) and run in tiles of ``tile_size`` (rounded down to that
    multiple; None: one tile) from :func:`napari_segsuite.core.tiling.tile_grid`,
    blended with :func:`napari_segsuite.core.tiling.tile_window` so there are
    no seams. An input that fits one tile is run whole, exactly as the model
    runs it. Yields one :class:`~napari_segsuite.core.progress.Progress` per
    tile when there are several; the model's train/eval mode is restored after.
    """
    import torch

    from napari_segsuite.core.progress import Progress
    from napari_segsuite.core.tiling import tile_grid, tile_window

    h, w = x.shape[1:]
    if tile_size is None:
        tile = max(h + (-h) % multiple, w + (-w) % multiple)
    else:
        tile = max(multiple, (int(tile_size) // multiple) * multiple)
    overlap = int(np.clip(overlap, 0, tile // 2))
    if h <= tile and w <= tile:
        th, tw = h + (-h) % multiple, w + (-w) % multiple
    else:
        th, tw = min(tile, h + (-h) % multiple), min(tile, w + (-w) % multiple)
    ph, pw = max(0, th - h), max(0, tw - w)
    xp = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else x
    shape = xp.shape[1:]
    tiles = tile_grid(shape, tile, overlap)
    out = None
    weight = np.zeros(shape, np.float32) if len(tiles) > 1 else None
    was_training = model.training
    model.eval()
    try:
        for done, t in enumerate(tiles, start=1):
            patch = torch.from_numpy(np.ascontiguousarray(xp[(slice(None), *t.slices)])).unsqueeze(0)
            with torch.inference_mode():
                logits = model(patch.to(device))[0].float().cpu().numpy()
            if weight is None:
                out = logits
                break
            if out is None:
                out = np.zeros((logits.shape[0], *shape), np.float32)
            win = tile_window(t, shape, overlap)
            out[(slice(None), *t.slices)] += logits * win
            weight[t.slices] += win
            yield Progress(done, len(tiles), f"Tile {done}/{len(tiles)}")
    finally:
        model.train(was_training)
    if weight is not None:
        out /= weight
    return out[:, :h, :w]


class UnetRunner(Runner):
    """A napari-segsuite U-Net folder (``smp.Unet``): semantic segmentation."""

    family = Family.UNET

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> UnetRunner:
        model, config = load_unet(source.path, device)
        n = config["classes"]
        given = {int(k): v for k, v in config["class_names"].items()}
        names = {i: given.get(i, "background" if i == 0 else f"class_{i}") for i in range(n)}
        info = {
            "arch": f"unet_{config['encoder_name']}",
            "encoder_name": config["encoder_name"],
            "encoder_depth": config["encoder_depth"],
            "in_channels": config["in_channels"],
            "num_classes": n,
            "normalization": config["normalization"],
        }
        runner = cls(model, source, device, tasks=(Task.SEMANTIC,), class_names=names, info=info)
        runner.config = config
        return runner

    def predict_semantic(self, image: np.ndarray) -> np.ndarray:
        """Per-class logits of one image at its own resolution.

        The image is normalised as the config says and padded (edge values) to
        a multiple of ``2 ** encoder_depth``; the padding is cut off again.

        Parameters
        ----------
        image : ndarray
            (H, W) or (H, W, C), any numeric dtype.

        Returns
        -------
        ndarray
            (classes, H, W) float32 logits.
        """
        from napari_segsuite.core.progress import run_sync

        x = prepare_unet_input(image, self.config)
        return run_sync(logits_job(self.model, x, 2 ** self.config["encoder_depth"], self.device, tile_size=None))
