"""Models trained in napari-segsuite, kept in the model folder next to downloaded ones.

A trained model is a folder ``<model folder>/trained/<name>/`` holding the
weights in the family's own format (an ultralytics ``.pt``, a torchvision
state dict ``.pth``, a Segment Anything state dict ``.pth``) and a
``segsuite_model.json`` card: family, tasks, class names, the weights' file
name and SHA-256, and the training record (history, data, options).

Every model picker lists these folders, and :func:`napari_segsuite.models.base.load_model`
loads them by name (``"trained/<name>"`` or ``"<name>"``) or by path (the folder
or the weights file); the class names on the card replace the generic
``class_<i>`` names of the weights. Folders are written under a temporary
name and renamed, so a half-written model is never listed.

Ultralytics ``.pt`` files are Python pickles: a trained YOLO folder is loaded
only when the file's SHA-256 matches its card (the file napari-segsuite wrote).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from napari_segsuite.core.errors import CheckpointError, InputError
from napari_segsuite.core.vocabulary import Family

CARD = "segsuite_model.json"
TRAINED_DIR = "trained"
FORMAT_VERSION = 1
_NAME_RX = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class TrainedCard:
    """What ``segsuite_model.json`` says about a trained model.

    Attributes
    ----------
    name : str
        The folder name (the model's name in pickers).
    family : str
        Runner family: ``yolo``, ``torchvision`` or ``sam``.
    tasks : tuple of str
        What it does (``instance``; ``prompt``, ``automatic`` for SAM).
    weights : str
        File name of the weights inside the folder.
    sha256 : str
        SHA-256 of the weights file.
    class_names : dict of int to str
        Class id (as the model predicts it) -> name.
    info : dict
        Architecture, input size, training record.
    """

    name: str
    family: str
    tasks: tuple[str, ...]
    weights: str
    sha256: str
    class_names: dict[int, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """Plain data for the card file."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "family": self.family,
            "tasks": list(self.tasks),
            "weights": self.weights,
            "sha256": self.sha256,
            "class_names": {str(k): v for k, v in self.class_names.items()},
            "info": self.info,
        }

    @classmethod
    def read(cls, folder: Path) -> TrainedCard:
        """Read the card of ``folder``.

        Raises
        ------
        CheckpointError
            When the card is missing, not JSON, or lacks a field.
        """
        path = Path(folder) / CARD
        try:
            data = json.loads(path.read_text())
            return cls(
                name=str(data.get("name") or Path(folder).name),
                family=str(data["family"]),
                tasks=tuple(data["tasks"]),
                weights=str(data["weights"]),
                sha256=str(data["sha256"]),
                class_names={int(k): str(v) for k, v in (data.get("class_names") or {}).items()},
                info=dict(data.get("info") or {}),
            )
        except FileNotFoundError:
            raise CheckpointError(f"{folder} is not a trained model folder: it has no {CARD}.") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path} is damaged ({type(exc).__name__}: {exc}).") from exc


def trained_root(cache_dir: str | os.PathLike) -> Path:
    """The folder holding trained models inside a model folder."""
    return Path(cache_dir).expanduser() / TRAINED_DIR


def is_trained_folder(path: Path) -> bool:
    """Whether ``path`` is a trained-model folder (it has a card)."""
    return Path(path).is_dir() and (Path(path) / CARD).is_file()


def safe_name(name: str) -> str:
    """A folder name made of letters, digits, ``.``, ``_`` and ``-``."""
    cleaned = _NAME_RX.sub("_", str(name).strip()).strip("._")
    if not cleaned:
        raise InputError(f"{name!r} cannot be used as a model name; use letters, digits, '-' or '_'.")
    return cleaned


def list_trained(cache_dir: str | os.PathLike, task: str | None = None) -> list[TrainedCard]:
    """Trained models in a model folder (newest first), optionally only those doing ``task``."""
    root = trained_root(cache_dir)
    if not root.is_dir():
        return []
    cards = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not is_trained_folder(folder):
            continue
        try:
            card = TrainedCard.read(folder)
        except CheckpointError:
            continue
        if task is None or task in card.tasks:
            cards.append((folder.stat().st_mtime, card))
    return [c for _, c in sorted(cards, key=lambda t: (-t[0], t[1].name))]


def unique_name(cache_dir: str | os.PathLike, stem: str) -> str:
    """``stem`` or ``stem-2``, ``stem-3``, ... whichever is free in the trained folder."""
    root = trained_root(cache_dir)
    stem = safe_name(stem)
    name, k = stem, 2
    while (root / name).exists():
        name, k = f"{stem}-{k}", k + 1
    return name


def check_output_folder(folder: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty output folder unless ``overwrite`` (before any work starts)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is a file; choose a folder for the trained model.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise InputError(
            f"The output folder {folder} exists and is not empty. Choose a new folder, or pass "
            "overwrite=True to replace it."
        )
    return folder


def save_trained(
    folder: str | os.PathLike,
    weights_file: str | os.PathLike,
    *,
    family: str,
    tasks: tuple[str, ...],
    class_names: dict[int, str],
    info: dict,
    overwrite: bool = False,
    move: bool = False,
) -> TrainedCard:
    """Write a trained-model folder: the weights and the card, atomically.

    Parameters
    ----------
    folder : path
        The model folder to create (``<model folder>/trained/<name>`` to be listed).
    weights_file : path
        The weights to copy (or move) into it; the file name is kept.
    family, tasks, class_names, info
        The card's fields.
    overwrite : bool
        Replace an existing non-empty folder.
    move : bool
        Move the weights instead of copying them.

    Returns
    -------
    TrainedCard
    """
    from napari_segsuite.models.store import sha256_file

    folder = check_output_folder(folder, overwrite)
    weights_file = Path(weights_file)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        target = tmp / weights_file.name
        if move:
            shutil.move(str(weights_file), target)
        else:
            shutil.copyfile(weights_file, target)
        card = TrainedCard(
            name=folder.name, family=family, tasks=tuple(tasks), weights=target.name,
            sha256=sha256_file(target), class_names={int(k): str(v) for k, v in class_names.items()},
            info={**info, "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        )
        (tmp / CARD).write_text(json.dumps(card.to_json(), indent=1, default=_json_default))
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return card


def _json_default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def resolve_trained(path: Path):
    """The :class:`~napari_segsuite.models.store.ModelSource` of a trained folder (or its weights file).

    Returns None when ``path`` is not part of a trained-model folder.
    """
    from napari_segsuite.models.store import ModelSource, sha256_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not is_trained_folder(folder):
        return None
    card = TrainedCard.read(folder)
    weights = folder / card.weights
    if path.is_file() and path.resolve() != weights.resolve():
        return None
    if not weights.is_file():
        raise CheckpointError(f"The trained model {folder} has lost its weights file {card.weights}.")
    digest = sha256_file(weights)
    trusted = digest == card.sha256
    if not trusted and card.family == Family.YOLO:
        raise CheckpointError(
            f"The weights of the trained model {folder.name} were changed after training (their SHA-256 no "
            "longer matches segsuite_model.json). Ultralytics files run code when loaded, so it was not "
            "loaded; pick the .pt file itself as a local file if you trust it."
        )
    return ModelSource(
        path=weights, family=card.family, name=card.name, sha256=digest, trusted=True,
        class_names=dict(card.class_names), card=card.to_json(),
    )
