"""SAM 2.1 (Segment Anything 2.1) through transformers, from ``save_pretrained`` folders.

The Hugging Face SAM 2.1 folders (``facebook/sam2.1-hiera-*``) are saved from
the video model (``model_type`` ``sam2_video``); their image part loads into
``Sam2Model`` and the memory weights, which only video tracking uses, are left
out. Folders saved from ``Sam2Model`` itself (``model_type`` ``sam2``) load the
same way. ``info["memory_weights"]`` records whether the folder holds the
video memory weights.

Prompts, automatic masks and video tracking live in
:mod:`napari_segsuite.models.sam2_prompt` (:meth:`Sam2Runner.prompt_model`).
"""

from __future__ import annotations

from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.hf_segmentation import (
    HfFolderRunner,
)
from napari_segsuite.models.offline import import_transformers
from napari_segsuite.models.store import ModelSource

#: ``model_type`` values of SAM 2.1 folders.
SAM2_MODEL_TYPES = ("sam2", "sam2_video")


def sam2_image_size(config) -> int:
    """The square input size (pixels) of a SAM 2.1 model, from its configuration."""
    size = config.prompt_encoder_config.image_size
    if isinstance(size, list | tuple):
        size = size[0]
    return int(size)


def default_sam2_processor(config):
    """Build SAM 2.1's processor offline, sized for ``config``.

    The official processor resizes to the model's input size (1024 pixels for
    the released checkpoints), normalises with the ImageNet mean and standard
    deviation, and resizes masks to a quarter of the input size.

    Parameters
    ----------
    config : transformers.Sam2Config
        The model's configuration.

    Returns
    -------
    transformers.Sam2Processor
    """
    transformers = import_transformers()
    size = sam2_image_size(config)
    image_processor = transformers.Sam2ImageProcessor(
        size={"height": size, "width": size},
        mask_size={"height": size // 4, "width": size // 4},
    )
    return transformers.Sam2Processor(image_processor=image_processor)


def _plain(value):
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class Sam2Runner(HfFolderRunner):
    """A SAM 2.1 model (``transformers.Sam2Model``) and its ``Sam2Processor``."""

    family = Family.SAM2
    TASKS = (Task.PROMPT, Task.AUTOMATIC, Task.VIDEO)
    MODEL_CLASS = "Sam2Model"
    CONFIG_CLASS = "Sam2Config"
    PROCESSOR_CLASS = "Sam2Processor"
    MODEL_TYPES = SAM2_MODEL_TYPES
    TITLE = "SAM 2.1"
    HINT = " Pick a SAM 2.1 folder (facebook/sam2.1-hiera-tiny and similar)."
    default_processor = staticmethod(default_sam2_processor)

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> Sam2Runner:
        loaded = cls.load_folder(source, device)
        config = loaded.config
        vision = config.vision_config
        hiera = vision.backbone_config
        decoder = config.mask_decoder_config
        model_type = loaded.raw_config.get("model_type")
        info = loaded.info(
            memory_weights=model_type == "sam2_video",
            image_size=sam2_image_size(config),
            backbone=getattr(hiera, "model_type", None),
            hiera_embed_dim_per_stage=_plain(hiera.embed_dim_per_stage),
            hiera_blocks_per_stage=_plain(hiera.blocks_per_stage),
            hiera_heads_per_stage=_plain(hiera.num_attention_heads_per_stage),
            hiera_window_size_per_stage=_plain(hiera.window_size_per_stage),
            hiera_global_attention_blocks=_plain(hiera.global_attention_blocks),
            fpn_hidden_size=int(vision.fpn_hidden_size),
            backbone_feature_sizes=_plain(vision.backbone_feature_sizes),
            num_feature_levels=int(vision.num_feature_levels),
            prompt_encoder_hidden_size=int(config.prompt_encoder_config.hidden_size),
            mask_decoder_hidden_size=int(decoder.hidden_size),
            mask_decoder_layers=int(decoder.num_hidden_layers),
            num_multimask_outputs=int(decoder.num_multimask_outputs),
        )
        return loaded.runner(cls, source, device, cls.TASKS, info)

    def prompt_model(self):
        """SAM 2.1 behind the prompt-model interface (:class:`~napari_segsuite.models.sam2_prompt.Sam2PromptModel`)."""
        from napari_segsuite.models.sam2_prompt import Sam2PromptModel

        return Sam2PromptModel(self)
