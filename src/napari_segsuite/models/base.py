"""The one runner interface every model family implements.

A :class:`Runner` wraps a loaded model: it knows its family, the tasks it can
do, its device, its class names and its provenance. Widgets and tasks only talk
to runners; adding a model family means adding one module under ``models/``
and one line in :data:`FAMILIES`.

The task methods are declared on :class:`Runner`, so every family implements
the same signatures:

- :meth:`Runner.predict_semantic` ``(image_rgb_uint8) -> scores (C, H, W) float32``
- :meth:`Runner.predict_instances` ``(image_rgb_uint8, **params) ->``
  :class:`~napari_segsuite.models.prediction.InstancePrediction`
- :meth:`Runner.predict_panoptic` ``(image_rgb_uint8, **params) -> (segments (H, W), rows)``
- :meth:`Runner.prompt_model` ``() ->`` :class:`~napari_segsuite.models.prompt.PromptModel`
  for promptable families (SAM, SAM 2.1)

A family overrides the methods of the tasks it does (listed in its
``tasks``); the others keep :class:`Runner`'s, which raise
:class:`~napari_segsuite.core.errors.InputError` naming the task.
:meth:`Runner.require` says the same before any work starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

from napari_segsuite.core.device import resolve_device
from napari_segsuite.core.errors import InputError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.offline import guard_llvm_clash, model_import_lock, offline
from napari_segsuite.models.store import ModelSource, ModelStore, default_store

if TYPE_CHECKING:
    import numpy as np

    from napari_segsuite.models.prediction import InstancePrediction
    from napari_segsuite.models.prompt import PromptModel

#: family name -> "module:RunnerClass", imported only when a model is loaded.
FAMILIES: dict[Family, str] = {
    Family.SAM: "napari_segsuite.models.sam:SamRunner",
    Family.SAM2: "napari_segsuite.models.sam2:Sam2Runner",
    Family.YOLO: "napari_segsuite.models.yolo:YoloRunner",
    Family.TORCHVISION: "napari_segsuite.models.torchvision_models:TorchvisionRunner",
    Family.SEGFORMER: "napari_segsuite.models.hf_segmentation:SegformerRunner",
    Family.MASK2FORMER: "napari_segsuite.models.hf_segmentation:Mask2FormerRunner",
    Family.UNET: "napari_segsuite.models.unet:UnetRunner",
    Family.SAM3: "napari_segsuite.models.sam3:Sam3Runner",
    Family.SAM3_TRACKER: "napari_segsuite.models.sam2_family:Sam3TrackerRunner",
    Family.EDGETAM: "napari_segsuite.models.sam2_family:EdgeTamRunner",
    Family.GROUNDING_DINO: "napari_segsuite.models.open_vocab_detectors:GroundingDinoRunner",
    Family.OWLV2: "napari_segsuite.models.open_vocab_detectors:Owlv2Runner",
}


class Runner:
    """A loaded model with its device, classes and provenance.

    Subclasses set :attr:`family` and implement :meth:`_load` (and the task
    methods they support).

    Parameters
    ----------
    model : object
        The library's model object (a ``torch.nn.Module`` or a wrapper).
    source : ModelSource
        Where it came from.
    device : str
        The torch device it lives on.
    tasks : tuple of str
        What this particular checkpoint can do.
    class_names : dict of int to str, optional
        Class id -> name.
    processor : object, optional
        The library's pre/post-processor (transformers).
    info : dict, optional
        Architecture details for provenance.
    """

    family: ClassVar[Family | str] = ""

    def __init__(
        self,
        model: Any,
        source: ModelSource,
        device: str,
        tasks: tuple[str, ...],
        class_names: dict[int, str] | None = None,
        processor: Any = None,
        info: dict | None = None,
    ):
        self.model = model
        self.source = source
        self.device = device
        self.tasks = tasks
        self.class_names = class_names or {}
        self.processor = processor
        self.info = dict(info or {})
        #: The training record of a model trained in napari-segsuite (history, data, options).
        self.training: dict = {}

    # -- loading ------------------------------------------------------------
    @classmethod
    def load(cls, source: ModelSource, device: str = "auto") -> Runner:
        """Load ``source`` on ``device`` ("auto", "cpu", "cuda", "mps"), with the libraries offline."""
        with offline(), model_import_lock():  # lazy library imports are not thread-safe (see model_import_lock)
            runner = cls._load(source, resolve_device(device))
        if source.class_names:
            runner.class_names = {int(k): str(v) for k, v in source.class_names.items()}
        if source.card:
            runner.info["trained"] = {k: source.card.get(k) for k in ("name", "sha256")}
            runner.info.update({k: v for k, v in (source.card.get("info") or {}).items() if k != "training"})
            runner.training = dict((source.card.get("info") or {}).get("training") or {})
            runner.apply_card(source.card)
        return runner

    def apply_card(self, card: dict) -> None:
        """Settings a trained model's card asks for (e.g. its input size); nothing by default."""

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> Runner:
        raise NotImplementedError

    # -- task methods (a family overrides those of its tasks) ---------------------
    def predict_semantic(self, image_rgb_uint8: np.ndarray) -> np.ndarray:
        """Per-class scores ``(C, H, W)`` float32 of one (H, W, 3) uint8 RGB image at its size."""
        self.require(Task.SEMANTIC)
        raise NotImplementedError(f"{type(self).__name__} lists semantic but does not implement it.")

    def predict_instances(self, image_rgb_uint8: np.ndarray, **params) -> InstancePrediction:
        """Instances (or boxes, for detection models) of one (H, W, 3) uint8 RGB image.

        ``params`` are those of :class:`~napari_segsuite.tasks.instance.InstanceParams`
        (``conf``, ``iou``, ``mask_threshold``, ``classes``, ``max_det``, ``imgsz``,
        and ``concepts`` for concept models); each family's defaults are its
        library's.
        """
        self.require(Task.INSTANCE)
        raise NotImplementedError(f"{type(self).__name__} lists instance but does not implement it.")

    def predict_panoptic(self, image_rgb_uint8: np.ndarray, **params) -> tuple[np.ndarray, list[dict]]:
        """Segments ``(H, W)`` int32 (0: none) and one row per segment (``id``, ``label_id``,
        ``was_fused``, ``score``) of one (H, W, 3) uint8 RGB image."""
        self.require(Task.PANOPTIC)
        raise NotImplementedError(f"{type(self).__name__} lists panoptic but does not implement it.")

    # -- common -------------------------------------------------------------
    @property
    def name(self) -> str:
        """The model's registry name or file name."""
        return self.source.name

    def require(self, task: Task | str) -> None:
        """Raise a user-facing error if this model cannot do ``task``."""
        if task not in self.tasks:
            raise InputError(
                f"Model '{self.name}' ({self.family}) does {', '.join(self.tasks) or 'nothing'} "
                f"segmentation, not {task}. Choose a {task} model."
            )

    def prompt_model(self) -> PromptModel:
        """This model behind :class:`~napari_segsuite.models.prompt.PromptModel` (promptable families).

        Returns a new prompt model on each call (it holds per-session state
        such as the last predictor); families that take no prompts raise
        :class:`~napari_segsuite.core.errors.InputError`.
        """
        raise InputError(
            f"Prompts need a promptable model (SAM, SAM 2.1, SAM 3 tracker or EdgeTAM); '{self.name}' is a "
            f"{self.family} model "
            "(Segment Anything models take prompts)."
        )

    def provenance(self) -> dict:
        """Plain data for ``layer.metadata``: source, device, architecture."""
        return {**self.source.provenance(), "device": self.device, "tasks": [str(t) for t in self.tasks], **self.info}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}, tasks={tuple(map(str, self.tasks))}>"


def runner_class(family: str) -> type[Runner]:
    """Import and return the runner class of ``family``."""
    try:
        target = FAMILIES[family]
    except KeyError:
        raise InputError(
            f"Unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}."
        ) from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def library_defaults(family: str, task: Task | str) -> dict:
    """The defaults of ``family``'s method for ``task``: its library's defaults, without loading a model.

    Returns ``{parameter: default}`` for the keyword parameters with a default
    other than None (``conf``, ``iou``, ``max_det`` ... for instance models);
    ``{}`` for an unknown family or a task it does not declare.
    """
    import inspect

    method_name = {Task.SEMANTIC: "predict_semantic", Task.INSTANCE: "predict_instances",
                   Task.PANOPTIC: "predict_panoptic"}.get(task)
    try:
        cls = runner_class(family)
    except (InputError, ImportError):
        return {}
    method = getattr(cls, method_name, None) if method_name else None
    if method is None or method is getattr(Runner, method_name):
        return {}
    return {
        name: p.default for name, p in inspect.signature(method).parameters.items()
        if p.default is not inspect.Parameter.empty and p.default is not None
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def load_model(
    spec,
    device: str = "auto",
    *,
    family: str | None = None,
    store: ModelStore | None = None,
) -> Runner:
    """Load a model by registry name or local path, offline.

    Parameters
    ----------
    spec : str, path, ModelEntry or ModelSource
        Registry name (``"sam_vit_b"``), a local checkpoint file or folder, or
        an already resolved source.
    device : str
        "auto", "cpu", "cuda" or "mps".
    family : str, optional
        Family of a local checkpoint when it cannot be detected.
    store : ModelStore, optional
        Defaults to :func:`default_store`.

    Returns
    -------
    Runner
    """
    if isinstance(spec, Runner):
        return spec
    guard_llvm_clash()
    source = spec if isinstance(spec, ModelSource) else (store or default_store()).resolve(spec, family=family)
    with model_import_lock():
        cls = runner_class(source.family)
    return cls.load(source, device)
