"""SegFormer and Mask2Former from transformers ``save_pretrained`` folders.

A transformers checkpoint is a folder holding ``config.json``, the weights
(``model.safetensors`` or ``pytorch_model.bin``) and, usually, the image
processor's configuration. :func:`load_hf_folder` loads such a folder offline,
checks that it holds the expected kind of model and that the weights fit the
configuration, and turns every way it can fail into a :class:`CheckpointError`
that tells the user what to pick instead. The SAM 2.1 runner
(:mod:`napari_segsuite.models.sam2`) uses the same helper.

A Mask2Former checkpoint is trained for one of semantic, instance or panoptic
segmentation, but its folder does not say which. The runner looks, in order, at
the ``segsuite_task`` entry of the processor configuration (or of
``config.json``), the registry entry, and the folder or repository name
(``facebook/mask2former-swin-tiny-coco-instance``); when none of them tells,
it allows all three.

transformers is imported inside functions, through
:func:`napari_segsuite.models.offline.import_transformers`, so that importing
this module stays cheap and nothing reaches the network.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_segsuite.core.errors import CheckpointError, SegSuiteError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.base import Runner
from napari_segsuite.models.detect import MODEL_TYPE_NAMES
from napari_segsuite.models.offline import import_transformers
from napari_segsuite.models.store import WEIGHT_FILES, ModelSource

#: Key in a processor configuration (or ``config.json``) naming the task(s) of a checkpoint.
TASK_KEY = "segsuite_task"
#: Files in which ``save_pretrained`` writes a processor's configuration.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
#: The tasks a Mask2Former checkpoint can be trained for.
SEGMENTATION_TASKS = (Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC)



@dataclass
class HFFolder:
    """A loaded transformers folder.

    Attributes
    ----------
    model : torch.nn.Module
        The model, in eval mode on the requested device.
    processor : object
        Its image processor (or processor).
    config : transformers.PreTrainedConfig
        The model's configuration.
    raw_config : dict
        ``config.json`` as read from disk.
    processor_note : str
        Where the processor came from, for ``info``.
    processor_from_folder : bool
        False when the folder had no processor configuration and a default one
        was built.
    notes : list of str
        Other things worth recording in ``info``.
    """

    model: Any
    processor: Any
    config: Any
    raw_config: dict
    processor_note: str
    processor_from_folder: bool
    notes: list[str] = field(default_factory=list)
    model_class: str = ""

    def info(self, *, note: str = "", **details) -> dict:
        """Provenance of the loaded folder: the model class, ``model_type``, ``details``,
        then the input size, parameter count, dtype and where the processor came from
        (``note`` appended)."""
        return {
            "architecture": self.model_class,
            "model_type": self.raw_config.get("model_type"),
            **details,
            "input_size": processor_input_size(self.processor),
            "num_parameters": count_parameters(self.model),
            "dtype": "float32",
            "processor": self.processor_note + (f"; {note}" if note else ""),
        }

    def runner(self, cls, source, device: str, tasks, info: dict, class_names: dict | None = None):
        """``cls`` (a :class:`~napari_segsuite.models.base.Runner`) around this model and processor."""
        return cls(self.model, source, device, tasks, class_names=class_names or {}, processor=self.processor,
                   info=info)


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings and progress bars inside the block.

    Loading a folder prints a weight-loading progress bar and, for SAM 2.1
    video checkpoints loaded as image models, an expected warning; neither
    means anything to the person at the viewer.
    """
    transformers = import_transformers()
    tlog = transformers.utils.logging
    verbosity = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        if bars:
            tlog.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _describe_type(model_type: str) -> str:
    title = MODEL_TYPE_NAMES.get(model_type, ("", ""))[1]
    if title:
        return f"a {title} model (model_type {model_type!r})"
    return f"a transformers model of type {model_type!r}"


def read_hf_config(path: Path, *, model_types: Iterable[str], title: str) -> dict:
    """Read and check ``config.json`` of a transformers folder without importing transformers.

    Parameters
    ----------
    path : Path
        The folder.
    model_types : iterable of str
        The ``model_type`` values the caller loads.
    title : str
        Human-readable name of the expected model ("SegFormer").

    Returns
    -------
    dict
        The parsed ``config.json``.

    Raises
    ------
    CheckpointError
        When ``path`` is not a folder, has no readable ``config.json``, holds
        another kind of model or has no weights file.
    """
    path = Path(path)
    model_types = tuple(model_types)
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is not a folder. {title} checkpoints are folders saved with transformers' "
            f"save_pretrained (config.json plus model.safetensors): pick the folder, not a file in it."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"The folder {path} has no config.json, so it is not a complete {title} checkpoint. "
            f"Pick the folder written by save_pretrained (or downloaded from the Hugging Face Hub) "
            f"that holds config.json and the weights."
        )
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{config_file} is not readable JSON ({_first_line(exc)}): the file is damaged. "
            f"Download or copy the {title} folder again."
        ) from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_file} does not hold a model configuration (a JSON object).")
    model_type = raw.get("model_type", "")
    if model_type not in model_types:
        family, other = MODEL_TYPE_NAMES.get(model_type, ("", ""))
        if family:
            what = f"Load it as a {other} model (family {family!r}), or pick a {title} folder instead."
        elif not model_type:
            what = f"config.json names no model_type; pick a {title} folder saved with save_pretrained."
        else:
            what = f"napari-segsuite cannot load it as {title}; pick a {title} folder instead."
        raise CheckpointError(f"The folder {path} holds {_describe_type(model_type)}, not a {title} model. {what}")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(
            f"The folder {path} has a {title} config.json but no weights file "
            f"({' or '.join(WEIGHT_FILES[:2])}): the download or copy is incomplete. "
            f"Copy the weights file into it, or download the model again."
        )
    return raw


def _describe_mismatch(item) -> str:
    """``name (checkpoint [a, b], model [c, d])`` for one mismatched key of a loading report."""
    if isinstance(item, tuple | list) and len(item) == 3:
        name, found, expected = item
        return f"{name} (checkpoint {list(found)}, model {list(expected)})"
    return str(item)


def _has_processor_config(path: Path) -> bool:
    return any((path / name).is_file() for name in PROCESSOR_FILES)


def load_hf_folder(
    source: ModelSource,
    device: str,
    *,
    model_class: str,
    config_class: str,
    processor_class: str,
    model_types: Iterable[str],
    title: str,
    default_processor: Callable[[Any], Any],
    architectures_hint: str = "",
) -> HFFolder:
    """Load a transformers ``save_pretrained`` folder and its processor, offline.

    Parameters
    ----------
    source : ModelSource
        The folder.
    device : str
        A resolved torch device string.
    model_class, config_class, processor_class : str
        Names of the transformers classes, e.g. ``"SegformerForSemanticSegmentation"``,
        ``"SegformerConfig"``, ``"SegformerImageProcessor"``.
    model_types : iterable of str
        Accepted ``model_type`` values of ``config.json``.
    title : str
        Human-readable model name for messages.
    default_processor : callable
        ``default_processor(config)`` builds the processor when the folder has
        no processor configuration.
    architectures_hint : str, optional
        Added to the message when the weights lack the task head (e.g. which
        checkpoints to pick instead).

    Returns
    -------
    HFFolder

    Raises
    ------
    CheckpointError
        For every folder that cannot be loaded as ``title``: see
        :func:`read_hf_config`, plus unreadable configurations, damaged weights
        and weights that do not fit the configuration.
    """
    path = Path(source.path)
    raw = read_hf_config(path, model_types=model_types, title=title)
    transformers = import_transformers()
    import torch

    cfg_cls = getattr(transformers, config_class)
    model_cls = getattr(transformers, model_class)
    proc_cls = getattr(transformers, processor_class)
    with quiet_transformers():
        try:
            config = cfg_cls.from_pretrained(path, local_files_only=True)
        except SegSuiteError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"The config.json in {path} is not a valid {title} configuration "
                f"({_first_line(exc)}). Download or copy the folder again."
            ) from exc
        try:
            model, loading = model_cls.from_pretrained(
                path, config=config, local_files_only=True, dtype=torch.float32,
                output_loading_info=True, ignore_mismatched_sizes=True,
            )
        except SegSuiteError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"The weights in {path} could not be read ({_first_line(exc)}): the file is damaged, "
                f"truncated or not a {title} checkpoint. Download or copy the folder again, "
                f"or pick another {title} folder."
            ) from exc
    # BatchNorm's step counter only matters for training; older conversions leave it out.
    missing = sorted(k for k in loading.get("missing_keys") or () if not k.endswith("num_batches_tracked"))
    mismatched = sorted(loading.get("mismatched_keys") or (), key=str)
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing, e.g. {', '.join(missing[:3])}")
        if mismatched:
            parts.append(f"{len(mismatched)} with another shape, e.g. {_describe_mismatch(mismatched[0])}")
        architectures = ", ".join(raw.get("architectures") or []) or "unknown"
        raise CheckpointError(
            f"The weights in {path} do not fit a {title} model built from its config.json "
            f"({'; '.join(parts)}; the folder says it holds: {architectures}). "
            f"The weights file belongs to another model or another variant, or config.json was "
            f"edited.{architectures_hint if missing else ''}"
        )
    model.to(device)
    model.eval()

    if _has_processor_config(path):
        try:
            with quiet_transformers():
                processor = proc_cls.from_pretrained(path, local_files_only=True)
        except SegSuiteError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"The processor configuration in {path} could not be read ({_first_line(exc)}). "
                f"Delete {' / '.join(PROCESSOR_FILES)} to use {title}'s default preprocessing, "
                f"or download the folder again."
            ) from exc
        note = f"{type(processor).__name__} from the folder"
        from_folder = True
    else:
        processor = default_processor(config)
        note = (
            f"default {type(processor).__name__} built offline: the folder has no processor "
            f"configuration ({' or '.join(PROCESSOR_FILES)})"
        )
        from_folder = False
    return HFFolder(
        model=model, processor=processor, config=config, raw_config=raw,
        processor_note=note, processor_from_folder=from_folder, model_class=model_class,
    )


class HfFolderRunner(Runner):
    """A runner of a transformers ``save_pretrained`` folder, described by its class attributes.

    :meth:`load_folder` loads the folder with :func:`load_hf_folder`: a family
    names its transformers classes (:attr:`MODEL_CLASS`, :attr:`CONFIG_CLASS`,
    :attr:`PROCESSOR_CLASS`), the ``model_type`` values it accepts, a title for
    messages, a hint for folders without its head, and how to build a processor
    when the folder has none (:attr:`default_processor`); a family whose
    processor holds a tokenizer sets :attr:`NEEDS_PROCESSOR_FILES` instead.
    """

    MODEL_CLASS = ""
    CONFIG_CLASS = ""
    PROCESSOR_CLASS = ""
    MODEL_TYPES: tuple[str, ...] = ()
    TITLE = ""
    HINT = ""
    NEEDS_PROCESSOR_FILES = False
    #: ``default_processor(config)``, for folders without a processor configuration.
    default_processor: Callable[[Any], Any] | None = None

    @classmethod
    def load_folder(cls, source: ModelSource, device: str, **classes) -> HFFolder:
        """Load ``source`` as this family (``classes`` override ``model_class`` ... for variants)."""
        if cls.NEEDS_PROCESSOR_FILES:
            from napari_segsuite.models.open_vocab_common import check_processor_files

            check_processor_files(source.path, cls.TITLE)

        def no_default(config):  # the folder check above makes this unreachable
            raise CheckpointError(f"{cls.TITLE} needs the processor and tokenizer files of its folder.")

        spec = {"model_class": cls.MODEL_CLASS, "config_class": cls.CONFIG_CLASS,
                "processor_class": cls.PROCESSOR_CLASS, "model_types": cls.MODEL_TYPES, **classes}
        return load_hf_folder(source, device, title=cls.TITLE, architectures_hint=cls.HINT,
                              default_processor=cls.default_processor or no_default, **spec)


def class_names_from_config(config) -> dict[int, str]:
    """``config.id2label`` with integer keys and string names."""
    id2label = getattr(config, "id2label", None) or {}
    return {int(k): str(v) for k, v in id2label.items()}


def count_parameters(model) -> int:
    """Number of parameters of a torch module."""
    return int(sum(p.numel() for p in model.parameters()))


def processor_input_size(processor) -> dict | None:
    """The processor's resize target as plain data (None when it has none)."""
    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None)
    if size is None:
        return None
    try:
        return {k: int(v) for k, v in dict(size).items() if v is not None}
    except (TypeError, ValueError):
        return None


def _as_list(value) -> list | None:
    return list(value) if isinstance(value, list | tuple) else value


def hf_semantic_scores(runner: Runner, image_rgb_uint8) -> Any:
    """Per-class scores of one image at its own size, through the checkpoint's processor.

    The processor prepares the image as its configuration says (resize,
    rescale, normalisation); the scores are the ``segmentation_scores`` of
    the processor's own ``post_process_semantic_segmentation`` at the image
    size (for SegFormer the same bilinear resize of the logits, computed
    without the post-processing's argmax), so their argmax is exactly
    transformers' semantic map.

    Returns
    -------
    ndarray
        (C, H, W) float32.
    """
    import numpy as np
    import torch

    from napari_segsuite.core.image import prepare_rgb_uint8

    rgb = prepare_rgb_uint8(image_rgb_uint8)
    h, w = rgb.shape[:2]
    inputs = runner.processor(images=rgb, return_tensors="pt")
    inputs = {k: v.to(runner.device) for k, v in inputs.items() if k in ("pixel_values", "pixel_mask")}
    with torch.inference_mode():
        outputs = runner.model(**inputs)
        if runner.family == Family.SEGFORMER:
            # The very operation of SegformerImageProcessor.post_process_semantic_segmentation,
            # without its argmax (tests check the equality).
            scores = torch.nn.functional.interpolate(
                outputs.logits, size=(h, w), mode="bilinear", align_corners=False
            )[0]
        else:
            scores = runner.processor.post_process_semantic_segmentation(
                outputs, target_sizes=[(h, w)], return_segmentation_scores=True
            )[0].segmentation_scores
    return np.ascontiguousarray(scores.float().cpu().numpy())


# -- SegFormer ----------------------------------------------------------------


def _default_segformer_processor(config):
    return import_transformers().SegformerImageProcessor()


class SegformerRunner(HfFolderRunner):
    """SegFormer semantic segmentation (``SegformerForSemanticSegmentation``)."""

    family = Family.SEGFORMER
    MODEL_CLASS = "SegformerForSemanticSegmentation"
    CONFIG_CLASS = "SegformerConfig"
    PROCESSOR_CLASS = "SegformerImageProcessor"
    MODEL_TYPES = ("segformer",)
    TITLE = "SegFormer"
    HINT = (
        " A SegFormer backbone or image classifier (nvidia/mit-b0 and similar) has no "
        "segmentation head: pick a checkpoint fine-tuned for segmentation "
        "(nvidia/segformer-b0-finetuned-ade-512-512 and similar)."
    )
    default_processor = staticmethod(_default_segformer_processor)

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> SegformerRunner:
        loaded = cls.load_folder(source, device)
        config = loaded.config
        info = loaded.info(
            hidden_sizes=_as_list(config.hidden_sizes),
            depths=_as_list(config.depths),
            num_attention_heads=_as_list(config.num_attention_heads),
            sr_ratios=_as_list(config.sr_ratios),
            decoder_hidden_size=int(config.decoder_hidden_size),
            num_labels=int(config.num_labels),
        )
        return loaded.runner(cls, source, device, (Task.SEMANTIC,), info, class_names_from_config(config))

    def predict_semantic(self, image_rgb_uint8) -> Any:
        """Per-class logits (C, H, W) float32 of one image at its own size.

        SegFormer's logits resized to the image (bilinear), as its processor's
        ``post_process_semantic_segmentation`` does (see :func:`hf_semantic_scores`).
        """
        return hf_semantic_scores(self, image_rgb_uint8)

# -- Mask2Former --------------------------------------------------------------


def _default_mask2former_processor(config):
    return import_transformers().Mask2FormerImageProcessor(num_labels=int(config.num_labels))


def _complete_mask2former_size(processor) -> str | None:
    """Give a processor sized by its shortest edge only a longest edge too.

    Older Hub folders store ``"size": 384``, which transformers 5 reads as
    ``{"shortest_edge": 384}`` and then refuses to resize with; transformers 4
    resized such images by their shortest edge. The longest edge is capped the
    way transformers' default (800, 1333) is.

    Returns
    -------
    str or None
        A note for ``info`` when the size was completed.
    """
    size = getattr(processor, "size", None)
    shortest = getattr(size, "shortest_edge", None)
    if shortest is None or getattr(size, "longest_edge", None) is not None:
        return None
    if getattr(size, "height", None) is not None:
        return None
    longest = max(int(shortest), round(int(shortest) * 1333 / 800))
    processor.size = type(size)(shortest_edge=int(shortest), longest_edge=longest)
    return f"processor size had only shortest_edge={shortest}; longest_edge={longest} added"


def _parse_tasks(value) -> tuple[str, ...] | None:
    """Turn a task hint ("instance", ["semantic", "panoptic"]) into known tasks."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return None
    tasks = tuple(t for t in SEGMENTATION_TASKS if t in {str(v).lower() for v in value})
    return tasks or None


_TASK_IN_NAME = re.compile(r"(?<![a-z])(semantic|instance|panoptic)(?![a-z])", re.IGNORECASE)


def mask2former_tasks(
    source: ModelSource, raw_config: dict, processor: Any
) -> tuple[tuple[str, ...], str]:
    """Tell which tasks a Mask2Former checkpoint was trained for.

    Parameters
    ----------
    source : ModelSource
        The checkpoint (its registry entry and path name are hints).
    raw_config : dict
        ``config.json`` as read from disk.
    processor : object
        The loaded image processor (its ``segsuite_task`` attribute is the hint
        written by napari-segsuite and by users).

    Returns
    -------
    tasks : tuple of str
        One task, or all three when nothing tells.
    how : str
        Where the answer came from, for ``info``.
    """
    for where, value in (
        ("processor configuration", getattr(processor, TASK_KEY, None)),
        ("config.json", raw_config.get(TASK_KEY)),
    ):
        tasks = _parse_tasks(value)
        if tasks:
            return tasks, f"{TASK_KEY} in the {where}"
    entry = source.entry
    if entry is not None:
        tasks = tuple(t for t in SEGMENTATION_TASKS if t in entry.tasks)
        if tasks:
            return tasks, f"registry entry {entry.name}"
    for text in (Path(source.path).name, source.name, raw_config.get("_name_or_path") or ""):
        found = {m.lower() for m in _TASK_IN_NAME.findall(str(text))}
        if len(found) == 1:
            return tuple(found), f"the name {text!r}"
    return SEGMENTATION_TASKS, "unknown (nothing in the folder names the task)"


class Mask2FormerRunner(HfFolderRunner):
    """Mask2Former universal segmentation (``Mask2FormerForUniversalSegmentation``).

    The tasks come from the checkpoint (see :func:`mask2former_tasks`).
    """

    family = Family.MASK2FORMER
    MODEL_CLASS = "Mask2FormerForUniversalSegmentation"
    CONFIG_CLASS = "Mask2FormerConfig"
    PROCESSOR_CLASS = "Mask2FormerImageProcessor"
    MODEL_TYPES = ("mask2former",)
    TITLE = "Mask2Former"
    HINT = (
        " Pick a Mask2Former checkpoint with its segmentation heads "
        "(facebook/mask2former-swin-tiny-coco-instance and similar)."
    )
    default_processor = staticmethod(_default_mask2former_processor)
    #: What :meth:`predict_semantic` returns: non-negative class scores, not logits.
    semantic_output = "scores"

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> Mask2FormerRunner:
        loaded = cls.load_folder(source, device)
        config = loaded.config
        size_note = _complete_mask2former_size(loaded.processor)
        tasks, how = mask2former_tasks(source, loaded.raw_config, loaded.processor)
        backbone = config.backbone_config
        info = loaded.info(
            note=size_note,
            task_source=how,
            backbone=getattr(backbone, "model_type", None),
            backbone_embed_dim=getattr(backbone, "embed_dim", None),
            backbone_depths=_as_list(getattr(backbone, "depths", None)),
            backbone_num_heads=_as_list(getattr(backbone, "num_heads", None)),
            hidden_dim=int(config.hidden_dim),
            mask_feature_size=int(config.mask_feature_size),
            num_queries=int(config.num_queries),
            encoder_layers=int(config.encoder_layers),
            decoder_layers=int(config.decoder_layers),
            num_labels=int(config.num_labels),
        )
        return loaded.runner(cls, source, device, tasks, info, class_names_from_config(config))

    # -- panoptic ---------------------------------------------------------

    def predict_panoptic(
        self,
        image_rgb_uint8,
        *,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse=None,
    ):
        """Panoptic segmentation of one RGB image with transformers' post-processing.

        Parameters
        ----------
        image_rgb_uint8 : ndarray (H, W, 3) uint8
        threshold, mask_threshold, overlap_mask_area_threshold : float
            Passed to ``post_process_panoptic_segmentation``: the class score a
            query needs, the mask probability threshold, and the share of a
            query's mask that must survive the overlap resolution.
        label_ids_to_fuse : iterable of int, optional
            Classes whose segments are merged into one (stuff classes).

        Returns
        -------
        segments : ndarray (H, W) int32
            Segment ids 1.. as transformers numbers them; 0 where no segment.
        rows : list of dict
            One per segment: ``id``, ``label_id``, ``was_fused``, ``score``
            (transformers' ``segments_info``; a fused segment appears once, with
            the best score of its parts).
        """
        import numpy as np
        import torch

        self.require(Task.PANOPTIC)
        image = np.ascontiguousarray(image_rgb_uint8)
        height, width = image.shape[:2]
        inputs = self.processor(images=image, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.inference_mode():
            outputs = self.model(**inputs)
        with quiet_transformers():
            result = self.processor.post_process_panoptic_segmentation(
                outputs,
                threshold=float(threshold),
                mask_threshold=float(mask_threshold),
                overlap_mask_area_threshold=float(overlap_mask_area_threshold),
                label_ids_to_fuse={int(i) for i in (label_ids_to_fuse or ())},
                target_sizes=[(height, width)],
            )[0]
        segments = result["segmentation"].cpu().numpy()
        segments = np.where(segments < 0, 0, segments).astype(np.int32)  # -1 means "no segment"
        rows: dict[int, dict] = {}
        for info in result["segments_info"]:
            sid = int(info["id"])
            row = {
                "id": sid,
                "label_id": int(info["label_id"]),
                "was_fused": bool(info["was_fused"]),
                "score": float(info["score"]),
            }
            if sid not in rows or row["score"] > rows[sid]["score"]:
                rows[sid] = row
        return segments, [rows[k] for k in sorted(rows)]

    # -- semantic ---------------------------------------------------------

    def predict_semantic(self, image_rgb_uint8) -> Any:
        """Per-class scores (C, H, W) float32 of one image at its own size.

        The score of class c is transformers' semantic score: the softmax over
        classes without the null class, times the sigmoid of each query's mask,
        summed over queries (non-negative, not logits; ``semantic_output`` says
        so). See :func:`hf_semantic_scores`.
        """
        if Task.SEMANTIC not in self.tasks:
            raise NotImplementedError(
                f"{self.name} is a Mask2Former {'/'.join(self.tasks)} checkpoint, not a semantic one."
            )
        return hf_semantic_scores(self, image_rgb_uint8)

    # -- instance segmentation ----------------------------------------------
    # (kept in its own block: predict_semantic / predict_panoptic live above)
    def predict_instances(
        self,
        image_rgb_uint8,
        conf: float = 0.5,
        iou: float | None = None,
        mask_threshold: float = 0.5,
        classes: list[int] | None = None,
        max_det: int = 100,
        imgsz: int | None = None,
    ):
        """Mask2Former instances of one RGB image, through the processor's own post-processing.

        ``post_process_instance_segmentation(threshold=conf)`` gives the
        instances (score = class probability x mean mask probability).
        transformers binarises the mask logits at 0; for another
        ``mask_threshold`` the logits are shifted by ``logit(mask_threshold)``
        first. Mask2Former has no NMS (``iou`` is not used); ``classes`` and
        ``max_det`` (best scores) are applied afterwards. ``imgsz`` overrides
        the processor's resize (shortest and longest edge).

        Returns
        -------
        InstancePrediction
        """
        import math

        import numpy as np
        import torch

        from napari_segsuite.core.errors import InputError
        from napari_segsuite.core.image import prepare_rgb_uint8
        from napari_segsuite.models.prediction import InstancePrediction

        if Task.INSTANCE not in self.tasks:
            raise NotImplementedError(
                f"'{self.name}' is a Mask2Former {'/'.join(self.tasks)} checkpoint, not an instance one."
            )
        rgb = prepare_rgb_uint8(image_rgb_uint8)
        h, w = rgb.shape[:2]
        kwargs = {}
        if imgsz is not None:
            kwargs["size"] = {"shortest_edge": int(imgsz), "longest_edge": int(imgsz)}
        inputs = self.processor(images=rgb, return_tensors="pt", **kwargs).to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        t = float(mask_threshold)
        if not 0.0 < t < 1.0:
            raise InputError(f"The mask threshold of Mask2Former must lie strictly between 0 and 1, not {t}.")
        if abs(t - 0.5) > 1e-9:
            outputs.masks_queries_logits = outputs.masks_queries_logits - math.log(t / (1.0 - t))
        result = self.processor.post_process_instance_segmentation(
            outputs, threshold=float(conf), target_sizes=[(h, w)], return_binary_maps=True,
        )[0]
        info = result["segments_info"]
        if not info:
            return InstancePrediction.empty((h, w))
        masks = result["segmentation"].cpu().numpy() > 0.5
        scores = np.array([s["score"] for s in info], dtype=np.float32)
        labels = np.array([s["label_id"] for s in info], dtype=np.int64)
        keep = np.argsort(-scores, kind="stable")
        if classes is not None:
            keep = keep[np.isin(labels[keep], np.asarray(list(classes), dtype=np.int64))]
        keep = keep[: int(max_det)]
        boxes = np.zeros((len(masks), 4))
        for i, m in enumerate(masks):
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
        return InstancePrediction(boxes[keep], scores[keep], labels[keep], masks[keep])
