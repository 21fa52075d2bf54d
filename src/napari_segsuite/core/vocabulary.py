"""The fixed sets of names the package uses: tasks, model families, scopes and outcomes.

Each is a string enum: a member *is* its string (``Task.SEMANTIC == "semantic"``,
``f"{Task.SEMANTIC}"`` is ``"semantic"`` and its ``repr`` is ``'semantic'``), so
tables, metadata, messages, the command line and JSON keep plain strings, while
code names the set it means and a typo is an ``AttributeError`` instead of a
silent mismatch.

The label id column of every table and ``layer.features`` is :data:`LABEL`
(``"label"``); ``layer.features`` also carries napari's own key column
``index`` (the same id), which napari needs to show a label's row.
"""

from __future__ import annotations

from enum import Enum

#: The label id column of every table and ``layer.features``.
LABEL = "label"


class _Names(str, Enum):
    """A string enum (``enum.StrEnum`` from Python 3.11, written to run on 3.10 too)."""

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:  # messages and containers read as before: 'sam2', not <Family.SAM2: 'sam2'>
        return repr(self.value)

    __format__ = str.__format__
    __hash__ = str.__hash__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The plain strings, in definition order."""
        return tuple(m.value for m in cls)


class Task(_Names):
    """What a model (or a run) does."""

    SEMANTIC = "semantic"
    INSTANCE = "instance"
    PANOPTIC = "panoptic"
    DETECTION = "detection"
    CONCEPTS = "concepts"
    PROMPT = "prompt"
    AUTOMATIC = "automatic"
    VIDEO = "video"


class Family(_Names):
    """A model family: one runner module under ``models/`` each."""

    SAM = "sam"
    SAM2 = "sam2"
    SAM3 = "sam3"
    SAM3_TRACKER = "sam3_tracker"
    EDGETAM = "edgetam"
    YOLO = "yolo"
    TORCHVISION = "torchvision"
    SEGFORMER = "segformer"
    MASK2FORMER = "mask2former"
    UNET = "unet"
    GROUNDING_DINO = "grounding_dino"
    OWLV2 = "owlv2"


class LayerTask(_Names):
    """What wrote an output layer: its ``metadata["segsuite"]["task"]`` and the ``[...]`` of its name.

    The model tasks keep their :class:`Task` names; the others name the run.
    """

    SEMANTIC = "semantic"
    INSTANCE = "instance"
    PANOPTIC = "panoptic"
    PROMPT = "prompt"
    UNET = "unet"
    SAM_AUTO = "sam auto"
    SAM_PREVIEW = "sam preview"
    PROPAGATION = "propagation"
    TRACK_CONCEPTS = "track_concepts"
    EVALUATION = "evaluation"
    DATASET = "dataset"


class Scope(_Names):
    """Which planes or images a dock runs on (:data:`RUN_SCOPES`) or trains on."""

    CURRENT_PLANE = "current plane"
    ALL_PLANES = "all planes"
    ALL_IMAGES = "all open images"
    STROKED_PLANES = "all planes with strokes"


class Region(_Names):
    """Which part of a (large) plane a dock runs on."""

    WHOLE_PLANE = "whole plane"
    FIELD_OF_VIEW = "field of view"
    RECTANGLE = "rectangle"


#: The scopes a dock's "Run on" offers, in order.
RUN_SCOPES: tuple[Scope, ...] = (Scope.CURRENT_PLANE, Scope.ALL_PLANES, Scope.ALL_IMAGES)


class Outcome(_Names):
    """How a job ended."""

    RETURNED = "returned"
    ABORTED = "aborted"
    ERRORED = "errored"
