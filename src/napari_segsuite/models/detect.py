"""Telling which model family a local file or folder belongs to.

Folders are read through their ``config.json``; single files are opened with
``torch.load(weights_only=True)``, which never runs pickle code, and told
apart by their state-dict keys. A file that needs full unpickling (an
ultralytics ``.pt``) is recognised by its archive contents without loading it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from napari_segsuite.core.errors import CheckpointError
from napari_segsuite.core.vocabulary import Family

UNET_CONFIG = "unet_config.json"
#: transformers ``model_type`` -> (napari-segsuite family, human-readable name).
MODEL_TYPE_NAMES: dict[str, tuple[str, str]] = {
    "segformer": (Family.SEGFORMER, "SegFormer"),
    "mask2former": (Family.MASK2FORMER, "Mask2Former"),
    "sam2": (Family.SAM2, "SAM 2.1"),
    "sam2_video": (Family.SAM2, "SAM 2.1"),
    "sam3": (Family.SAM3, "SAM 3"),
    "sam3_video": (Family.SAM3, "SAM 3"),
    "sam3_tracker": (Family.SAM3_TRACKER, "SAM 3 tracker"),
    "sam3_tracker_video": (Family.SAM3_TRACKER, "SAM 3 tracker"),
    "edgetam": (Family.EDGETAM, "EdgeTAM"),
    "edgetam_video": (Family.EDGETAM, "EdgeTAM"),
    "grounding-dino": (Family.GROUNDING_DINO, "Grounding DINO"),
    "mm-grounding-dino": (Family.GROUNDING_DINO, "MM-Grounding-DINO"),
    "owlv2": (Family.OWLV2, "OWLv2"),
    "maskformer": ("", "MaskFormer"),
    "oneformer": ("", "OneFormer"),
    "sam": ("", "SAM (transformers)"),
    "upernet": ("", "UperNet"),
    "dpt": ("", "DPT"),
}
#: transformers ``model_type`` -> the family that loads it.
HF_MODEL_TYPES = {model_type: family for model_type, (family, _) in MODEL_TYPE_NAMES.items() if family}


def detect_family(path: Path) -> str:
    """Return the family name of the checkpoint at ``path``.

    Raises
    ------
    CheckpointError
        If the file or folder is not a checkpoint of any supported family.
    """
    path = Path(path)
    if path.is_dir():
        return _detect_folder(path)
    if path.suffix == ".safetensors" and (path.parent / UNET_CONFIG).is_file():
        return Family.UNET
    if path.suffix in {".yaml", ".yml", ".json"}:
        raise CheckpointError(
            f"{path.name} is a configuration file, not a checkpoint. Pick the weights file or the model folder."
        )
    return _detect_file(path)


def _detect_folder(path: Path) -> str:
    if (path / UNET_CONFIG).is_file():
        return Family.UNET
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(
            f"The folder {path} is not a model folder: it has no config.json (transformers "
            f"save_pretrained) and no {UNET_CONFIG} (a napari-segsuite U-Net)."
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type", "")
    except ValueError as exc:
        raise CheckpointError(f"{config} is not valid JSON: {exc}") from exc
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"The folder {path} holds a transformers model of type {model_type!r}; napari-segsuite "
            f"loads {', '.join(sorted(set(HF_MODEL_TYPES)))} folders."
        )
    return HF_MODEL_TYPES[model_type]


def _looks_like_ultralytics(path: Path) -> bool:
    """An ultralytics checkpoint pickles classes from the ``ultralytics`` package."""
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
            if pkl is None:
                return False
            return b"ultralytics" in zf.read(pkl)
    except (zipfile.BadZipFile, OSError):
        return False


def read_state_dict(path: Path, *, mapped: bool = False) -> dict:
    """Load a plain state dict with ``torch.load(weights_only=True)``.

    Checkpoints that wrap the state dict (``{"model": ...}`` or
    ``{"state_dict": ...}``) are unwrapped. With ``mapped=True`` the tensors of a
    zip-format checkpoint (``torch.save``'s default) are memory-mapped instead of
    read, so telling a file's family from its keys costs a fraction of a load;
    older formats are read in full.

    Raises
    ------
    CheckpointError
        For truncated files, files that are not PyTorch checkpoints, and files
        that need full unpickling.
    """
    import pickle

    import torch

    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish.")
    try:
        obj = None
        if mapped and zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if obj is None:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path.name} contains Python objects besides weights, so it was not loaded "
            f"(torch.load with weights_only=True refused it: {(str(exc).splitlines() or [type(exc).__name__])[0]})."
        ) from exc
    except Exception as exc:  # torch raises many types for non-checkpoint bytes (KeyError, EOFError ...)
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint (truncated or another format): "
            f"{(str(exc).splitlines() or [type(exc).__name__])[0]}"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "model_state"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path.name} holds no state dict (found {type(obj).__name__}).")
    return obj


def family_from_state_dict(keys) -> str | None:
    """Guess the family from state-dict keys (None when unknown)."""
    keys = list(keys)
    def has(part: str) -> bool:  # SAM fine-tunes often prefix keys with "sam." or "module."
        return any(k.startswith(part) or f".{part}" in k for k in keys)

    if has("image_encoder.") and has("mask_decoder."):
        return Family.SAM
    if any(k.startswith("roi_heads.") for k in keys) or any(k.startswith("backbone.body.") for k in keys):
        return Family.TORCHVISION
    if any(k.startswith("backbone.") for k in keys) and any(k.startswith("classifier.") for k in keys):
        return Family.TORCHVISION
    return None


def _detect_file(path: Path) -> str:
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file.")
    if _looks_like_ultralytics(path):
        return Family.YOLO
    state = read_state_dict(path, mapped=True)  # the keys are enough: no tensor is read
    family = family_from_state_dict(state.keys())
    if family is None:
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"{path.name} is a PyTorch state dict of no supported model (first keys: {sample}). "
            "napari-segsuite loads SAM, torchvision DeepLabV3/LRASPP/Mask R-CNN state dicts, "
            "ultralytics .pt files and transformers folders."
        )
    return family
