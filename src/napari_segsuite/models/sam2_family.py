"""The SAM 2-style prompt models of transformers besides SAM 2.1: SAM 3 tracker and EdgeTAM.

Both take points and boxes like SAM 2.1 and share its calling convention
(``get_image_embeddings`` once per image, then the model on those embeddings
with prompts prepared by the processor, masks through the processor's
``post_process_masks``), so both sit behind the prompt-model interface as
:class:`~napari_segsuite.models.sam2_prompt.Sam2PromptModel` with their own
title and video classes.

- SAM 3 tracker (``Sam3TrackerModel`` + ``Sam3TrackerProcessor``): SAM 3's
  ViT backbone with SAM 2's prompt encoder and mask decoder. It loads from the
  ``facebook/sam3`` folder (``model_type`` ``sam3_video``; the tracker's
  weights and the shared backbone are picked out by transformers) or from a
  ``sam3_tracker`` / ``sam3_tracker_video`` folder. Video tracking uses
  ``Sam3TrackerVideoModel``.
- EdgeTAM (``EdgeTamModel`` + ``Sam2Processor``): an on-device SAM 2 with a
  RepViT backbone (built by timm, no download). The ``yonigozlan/EdgeTAM-hf``
  folder is saved from ``EdgeTamVideoModel``; video tracking uses it.

``info["video_model"]`` / ``info["video_processor"]`` name the transformers
classes for propagation through planes and ``info["memory_weights"]`` whether
the folder holds the video memory weights.
"""

from __future__ import annotations

from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.hf_segmentation import (
    HfFolderRunner,
)
from napari_segsuite.models.offline import import_transformers
from napari_segsuite.models.store import ModelSource

SAM3_TRACKER_TYPES = ("sam3_tracker", "sam3_tracker_video", "sam3_video")
EDGETAM_TYPES = ("edgetam", "edgetam_video")


def _image_size(config) -> int:
    size = config.prompt_encoder_config.image_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def _tracker_config(config):
    """The tracker part of a configuration (a ``sam3_video`` configuration holds it as ``tracker_config``)."""
    inner = getattr(config, "tracker_config", None)
    if isinstance(inner, dict):
        inner = import_transformers().Sam3TrackerConfig(**inner)
    return inner or config


def default_sam3_tracker_processor(config):
    """SAM 3 tracker's processor built offline: resize to the model's input, masks at 4x the patch grid."""
    t = import_transformers()
    config = _tracker_config(config)
    size = _image_size(config)
    patch = int(config.prompt_encoder_config.patch_size)
    low = 4 * (size // patch)
    image_processor = t.Sam2ImageProcessor(size={"height": size, "width": size}, mask_size={"height": low, "width": low})
    return t.Sam3TrackerProcessor(image_processor=image_processor)


def default_edgetam_processor(config):
    """EdgeTAM's processor built offline (SAM 2's, sized for the model)."""
    from napari_segsuite.models.sam2 import default_sam2_processor

    return default_sam2_processor(config)


class _Sam2LikeRunner(HfFolderRunner):
    TASKS = (Task.PROMPT, Task.AUTOMATIC, Task.VIDEO)
    VIDEO_MODEL = ""
    VIDEO_PROCESSOR = ""
    VIDEO_TYPES: tuple[str, ...] = ()

    def prompt_model(self):
        """This model behind the prompt-model interface (SAM 2.1's calling convention)."""
        from napari_segsuite.models.sam2_prompt import Sam2PromptModel

        model = Sam2PromptModel(self)
        model.title = self.TITLE
        return model

    @classmethod
    def _load(cls, source: ModelSource, device: str):
        loaded = cls.load_folder(source, device)
        model_type = loaded.raw_config.get("model_type")
        config = loaded.model.config  # the tracker's own part of a sam3_video configuration
        info = loaded.info(
            memory_weights=model_type in cls.VIDEO_TYPES,
            video_model=cls.VIDEO_MODEL,
            video_processor=cls.VIDEO_PROCESSOR,
            image_size=_image_size(config),
            prompt_encoder_hidden_size=int(config.prompt_encoder_config.hidden_size),
            mask_decoder_hidden_size=int(config.mask_decoder_config.hidden_size),
        )
        return loaded.runner(cls, source, device, cls.TASKS, info)


class Sam3TrackerRunner(_Sam2LikeRunner):
    """SAM 3 tracker: SAM 2-style points and boxes on SAM 3's backbone."""

    family = Family.SAM3_TRACKER
    MODEL_CLASS = "Sam3TrackerModel"
    CONFIG_CLASS = "Sam3TrackerConfig"
    PROCESSOR_CLASS = "Sam3TrackerProcessor"
    VIDEO_MODEL = "Sam3TrackerVideoModel"
    VIDEO_PROCESSOR = "Sam3TrackerVideoProcessor"
    MODEL_TYPES = SAM3_TRACKER_TYPES
    VIDEO_TYPES = ("sam3_tracker_video", "sam3_video")
    TITLE = "SAM 3 tracker"
    HINT = " Pick the facebook/sam3 folder or a save_pretrained folder of Sam3TrackerModel."
    default_processor = staticmethod(default_sam3_tracker_processor)

    def concept_runner(self):
        """SAM 3's concept model from the same ``facebook/sam3`` folder (loaded once), or None."""
        if self.info.get("model_type") != "sam3_video":
            return None
        if getattr(self, "_concepts", None) is None:
            from napari_segsuite.models.base import load_model

            self._concepts = load_model(self.source.path, self.device, family=Family.SAM3)
        return self._concepts


class EdgeTamRunner(_Sam2LikeRunner):
    """EdgeTAM: an on-device SAM 2 (RepViT backbone), the fastest prompt model on a CPU."""

    family = Family.EDGETAM
    MODEL_CLASS = "EdgeTamModel"
    CONFIG_CLASS = "EdgeTamConfig"
    PROCESSOR_CLASS = "Sam2Processor"
    VIDEO_MODEL = "EdgeTamVideoModel"
    VIDEO_PROCESSOR = "Sam2VideoProcessor"
    MODEL_TYPES = EDGETAM_TYPES
    VIDEO_TYPES = ("edgetam_video",)
    TITLE = "EdgeTAM"
    HINT = " Pick an EdgeTAM folder (yonigozlan/EdgeTAM-hf, or a save_pretrained folder of EdgeTamModel)."
    default_processor = staticmethod(default_edgetam_processor)
