"""Tiny randomly initialised models of the real architectures, saved in their real format.

Each ``build_tiny_*`` function writes a checkpoint in its library's real
on-disk format (for transformers: the folder ``save_pretrained`` writes, with
configuration, weights and processor configuration), so loading it goes
through the same code as a real checkpoint. The models are the real
architectures with small dimensions; building and loading one takes well under
a second once the library is imported. The builders are seeded, so building
twice gives the same weights; for the transformers models the matching
``make_tiny_*`` function returns the same model in memory.

Libraries are imported inside the functions (transformers through
:func:`napari_segsuite.models.offline.import_transformers`); nothing is
downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_segsuite.models.offline import guard_llvm_clash

#: Readable class names for tiny checkpoints; further classes are "class_<i>".
TINY_CLASS_NAMES = ("background", "cell", "coin", "nucleus", "bead")


def tiny_id2label(num_labels: int) -> dict[int, str]:
    """Class id -> name for a tiny checkpoint with ``num_labels`` classes."""
    return {i: TINY_CLASS_NAMES[i] if i < len(TINY_CLASS_NAMES) else f"class_{i}" for i in range(num_labels)}


def _label_maps(num_labels: int) -> dict:
    id2label = tiny_id2label(num_labels)
    return {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def save_folder(folder: str | os.PathLike, model, processor) -> Path:
    """Write ``model`` and ``processor`` with ``save_pretrained`` into ``folder`` (created); returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def tiny_transformers():
    """transformers, imported offline after the LLVM-clash guard (every builder's first step)."""
    guard_llvm_clash()
    from napari_segsuite.models.offline import import_transformers

    return import_transformers()


def seeded(model_class, config, seed: int):
    """``model_class(config)`` in eval mode, its weights drawn right after ``torch.manual_seed(seed)``."""
    import torch

    torch.manual_seed(seed)
    return model_class(config).eval()


# -- SAM 2.1 -------------------------------------------------------------------


def tiny_sam2_config(*, video: bool = True, image_size: int = 64, hidden_size: int = 32):
    """Configuration of a tiny SAM 2.1 (Hiera backbone, FPN neck, prompt encoder, mask decoder).

    Parameters
    ----------
    video : bool
        Return a ``Sam2VideoConfig`` (the layout of the released
        ``facebook/sam2.1-hiera-*`` folders, with memory modules) instead of a
        ``Sam2Config`` (image model only).
    image_size : int
        Square input size; a multiple of 64.
    hidden_size : int
        Width of the neck, prompt encoder, mask decoder and memory modules. Video
        tracking (``propagate_in_video_iterator``) needs 128 (or another multiple
        of 64 above 64): transformers reads 64-channel memories and only splits
        object pointers into 64-channel tokens when the width is larger than that.

    Returns
    -------
    transformers.Sam2Config or transformers.Sam2VideoConfig
    """
    t = tiny_transformers()
    if image_size % 64:
        raise ValueError(f"image_size must be a multiple of 64, not {image_size}")
    s = image_size
    hiera = t.Sam2HieraDetConfig(
        hidden_size=8,
        num_attention_heads=1,
        image_size=[s, s],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 2, 2],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4],
    )
    vision = t.Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        fpn_hidden_size=hidden_size,
    )
    prompt = {"hidden_size": hidden_size, "image_size": s, "patch_size": 16, "mask_input_channels": 4}
    decoder = {
        "hidden_size": hidden_size, "mlp_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    }
    if not video:
        return t.Sam2Config(
            vision_config=vision,
            prompt_encoder_config=t.Sam2PromptEncoderConfig(**prompt),
            mask_decoder_config=t.Sam2MaskDecoderConfig(**decoder),
        )
    return t.Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=prompt,
        mask_decoder_config=decoder,
        image_size=s,
        num_maskmem=2,
        memory_attention_hidden_size=hidden_size,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=hidden_size,
        # transformers' memory cross-attention reads 64-channel memories (kv_in_dim=64 is
        # hard-coded in Sam2VideoMemoryAttentionLayer), so video tracking needs 64 here.
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden_size,
        memory_fuser_embed_dim=hidden_size,
        memory_fuser_intermediate_dim=64,
    )


def make_tiny_sam2(*, video: bool = True, image_size: int = 64, seed: int = 0, hidden_size: int = 32):
    """A tiny randomly initialised SAM 2.1 model and its processor, in memory.

    Parameters
    ----------
    video : bool
        Build ``Sam2VideoModel`` (like the released folders) rather than ``Sam2Model``.
    image_size : int
        Square input size; a multiple of 64.
    seed : int
        ``torch.manual_seed`` before the weights are initialised.
    hidden_size : int
        See :func:`tiny_sam2_config` (128 for video tracking).

    Returns
    -------
    model : transformers.Sam2VideoModel or transformers.Sam2Model
    processor : transformers.Sam2VideoProcessor or transformers.Sam2Processor
    """
    t = tiny_transformers()
    config = tiny_sam2_config(video=video, image_size=image_size, hidden_size=hidden_size)
    size = {"height": image_size, "width": image_size}
    image_processor = t.Sam2ImageProcessor(
        size=size, mask_size={"height": image_size // 4, "width": image_size // 4}
    )
    model = seeded(t.Sam2VideoModel if video else t.Sam2Model, config, seed)
    if video:
        processor = t.Sam2VideoProcessor(
            image_processor=image_processor, video_processor=t.Sam2VideoVideoProcessor(size=size)
        )
    else:
        processor = t.Sam2Processor(image_processor=image_processor)
    return model, processor


def build_tiny_sam2(
    folder: str | os.PathLike, *, video: bool = True, image_size: int = 64, seed: int = 0, hidden_size: int = 32
) -> Path:
    """Write a tiny SAM 2.1 folder (``save_pretrained`` of model and processor).

    Parameters
    ----------
    folder : path-like
        Created if missing.
    video, image_size, seed, hidden_size
        See :func:`make_tiny_sam2`.

    Returns
    -------
    Path
        ``folder``.
    """
    model, processor = make_tiny_sam2(video=video, image_size=image_size, seed=seed, hidden_size=hidden_size)
    return save_folder(folder, model, processor)


# -- SegFormer -----------------------------------------------------------------


def make_tiny_segformer(num_labels: int = 3, *, image_size: int = 64, seed: int = 0):
    """A tiny randomly initialised SegFormer (MiT encoder + all-MLP head) and its processor.

    Parameters
    ----------
    num_labels : int
        Number of classes (names from :func:`tiny_id2label`).
    image_size : int
        The processor's resize target (square).
    seed : int
        ``torch.manual_seed`` before the weights are initialised.

    Returns
    -------
    model : transformers.SegformerForSemanticSegmentation
    processor : transformers.SegformerImageProcessor
    """
    t = tiny_transformers()
    config = t.SegformerConfig(
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 2],
        decoder_hidden_size=32,
        drop_path_rate=0.0,
        **_label_maps(num_labels),
    )
    model = seeded(t.SegformerForSemanticSegmentation, config, seed)
    processor = t.SegformerImageProcessor(size={"height": image_size, "width": image_size})
    return model, processor


def build_tiny_segformer(
    folder: str | os.PathLike, num_labels: int = 3, *, image_size: int = 64, seed: int = 0
) -> Path:
    """Write a tiny SegFormer folder (``save_pretrained`` of model and image processor).

    Parameters
    ----------
    folder : path-like
        Created if missing.
    num_labels, image_size, seed
        See :func:`make_tiny_segformer`.

    Returns
    -------
    Path
        ``folder``.
    """
    model, processor = make_tiny_segformer(num_labels, image_size=image_size, seed=seed)
    return save_folder(folder, model, processor)


# -- Mask2Former ---------------------------------------------------------------


def make_tiny_mask2former(
    task: str = "semantic", num_labels: int = 3, *, image_size: int = 64, seed: int = 0
):
    """A tiny randomly initialised Mask2Former (Swin backbone) and its image processor.

    The processor carries ``segsuite_task`` (see
    :data:`napari_segsuite.models.hf_segmentation.TASK_KEY`) so the runner
    knows what the checkpoint was trained for.

    Parameters
    ----------
    task : {"semantic", "instance", "panoptic"}, optional
        Written into the processor configuration; None writes no task.
    num_labels : int
        Number of classes (names from :func:`tiny_id2label`).
    image_size : int
        The processor's resize target; a multiple of 32.
    seed : int
        ``torch.manual_seed`` before the weights are initialised.

    Returns
    -------
    model : transformers.Mask2FormerForUniversalSegmentation
    processor : transformers.Mask2FormerImageProcessor
    """
    from napari_segsuite.models.hf_segmentation import SEGMENTATION_TASKS, TASK_KEY

    if task is not None and task not in SEGMENTATION_TASKS:
        raise ValueError(f"task must be one of {', '.join(SEGMENTATION_TASKS)} or None, not {task!r}")
    t = tiny_transformers()
    # transformers 5 builds the backbone from this config object; nothing is downloaded.
    swin = t.SwinConfig(
        image_size=image_size,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        drop_path_rate=0.0,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = t.Mask2FormerConfig(
        backbone_config=swin,
        # the pixel decoder's GroupNorm uses 32 groups: sizes must be multiples of 32
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=64,
        num_queries=5,
        **_label_maps(num_labels),
    )
    model = seeded(t.Mask2FormerForUniversalSegmentation, config, seed)
    extra = {TASK_KEY: task} if task is not None else {}
    processor = t.Mask2FormerImageProcessor(
        size={"shortest_edge": image_size, "longest_edge": image_size},
        num_labels=num_labels,
        **extra,
    )
    return model, processor


def build_tiny_mask2former(
    folder: str | os.PathLike,
    task: str = "semantic",
    num_labels: int = 3,
    *,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a tiny Mask2Former folder (``save_pretrained`` of model and image processor).

    Parameters
    ----------
    folder : path-like
        Created if missing.
    task, num_labels, image_size, seed
        See :func:`make_tiny_mask2former`.

    Returns
    -------
    Path
        ``folder``.
    """
    model, processor = make_tiny_mask2former(task, num_labels, image_size=image_size, seed=seed)
    return save_folder(folder, model, processor)


# -- torchvision, YOLO, U-Net (plain state dicts, ultralytics .pt, safetensors) --

#: Class names of tiny YOLO checkpoints (YOLO has no background class).
TINY_YOLO_NAMES = ("cell", "coin", "nucleus", "bead")


def build_tiny_torchvision(
    path: str | os.PathLike,
    arch: str = "lraspp_mobilenet_v3_large",
    num_classes: int | None = None,
    *,
    aux_loss: bool | None = None,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised torchvision model as ``torch.save(model.state_dict())``.

    torchvision's architectures have fixed sizes, so the model is full size
    (LRASPP MobileNetV3 is the small one: about 13 MB); only the weights are
    random. The file has the layout of torchvision's released checkpoints.

    Parameters
    ----------
    path : path-like
        The ``.pth`` file to write (parent folders are created).
    arch : str
        A key of :data:`napari_segsuite.models.torchvision_models.ARCHITECTURES`,
        e.g. ``"lraspp_mobilenet_v3_large"``, ``"deeplabv3_resnet50"``,
        ``"maskrcnn_resnet50_fpn"``, ``"maskrcnn_resnet50_fpn_v2"``.
    num_classes : int, optional
        Classes, background included; 21 (VOC) for semantic and 91 (COCO) for
        Mask R-CNN by default, like the released checkpoints.
    aux_loss : bool, optional
        Include the auxiliary classifier (DeepLabV3, FCN); defaults to True
        there, as in the released checkpoints.
    seed : int
        Seed of the random initialisation (the global RNG is left untouched).

    Returns
    -------
    Path
        ``path``.
    """
    guard_llvm_clash()
    import torch

    from napari_segsuite.models.torchvision_models import ARCHITECTURES, build_torchvision_model

    _, _, task, has_aux = ARCHITECTURES[arch]
    if num_classes is None:
        num_classes = 91 if task == "instance" else 21
    if aux_loss is None:
        aux_loss = has_aux
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_torchvision_model(arch, num_classes, aux_loss=aux_loss)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def build_tiny_yolo(
    path: str | os.PathLike,
    task: str = "segment",
    nc: int = 3,
    *,
    names: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny randomly initialised YOLO11 checkpoint in ultralytics' own ``.pt`` format.

    The model is built from ultralytics' ``yolo11-seg.yaml`` / ``yolo11.yaml``
    with a smaller width (1/16 of the "x" channels, about 0.2 M parameters) and
    ``nc`` classes, and saved with ``YOLO.save``, so the file is exactly what
    ultralytics writes for a trained model. Nothing is downloaded.

    Parameters
    ----------
    path : path-like
        The ``.pt`` file to write.
    task : {"segment", "detect"}
        Instance segmentation or detection head.
    nc : int
        Number of classes.
    names : sequence of str, optional
        Class names; ``cell, coin, nucleus, bead, class_4, ...`` by default.
    seed : int
        Seed of the random initialisation (the global RNG is left untouched).

    Returns
    -------
    Path
        ``path``.
    """
    import tempfile

    guard_llvm_clash()
    import torch
    import yaml

    from napari_segsuite.models.offline import import_ultralytics

    configs = {"segment": "yolo11-seg.yaml", "detect": "yolo11.yaml"}
    if task not in configs:
        raise ValueError(f"task must be one of {', '.join(configs)}, not {task!r}")
    ultralytics = import_ultralytics()
    from ultralytics.utils import ROOT

    cfg = yaml.safe_load((ROOT / "cfg" / "models" / "11" / configs[task]).read_text())
    cfg["nc"] = int(nc)
    cfg["scales"] = {"n": [0.25, 0.0625, 256]}  # depth, width, max channels
    if names is None:
        names = [TINY_YOLO_NAMES[i] if i < len(TINY_YOLO_NAMES) else f"class_{i}" for i in range(nc)]
    if len(names) != nc:
        raise ValueError(f"{len(names)} names given for {nc} classes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the "n" in the file name selects the scale defined above
        yaml_path = Path(tmp) / configs[task].replace("yolo11", "yolo11n")
        yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        model = ultralytics.YOLO(str(yaml_path), task=task)
        model.model.names = dict(enumerate(str(n) for n in names))
        model.save(path)
    return path


def build_tiny_unet(
    folder: str | os.PathLike,
    in_channels: int = 3,
    classes: int = 3,
    *,
    encoder_name: str = "tu-resnet10t",
    encoder_depth: int = 3,
    decoder_channels: tuple[int, ...] = (32, 16, 8),
    normalization: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny randomly initialised U-Net folder (``model.safetensors`` + ``unet_config.json``).

    The model is ``segmentation_models_pytorch.Unet`` with a small encoder
    (timm's ResNet-10-T cut to 3 stages: about 0.4 M parameters) and a narrow
    decoder, saved with :func:`napari_segsuite.models.unet.save_unet`.

    Parameters
    ----------
    folder : path-like
        Folder to write (created if needed).
    in_channels : int
        Input channels.
    classes : int
        Output classes, background included (names ``background, cell, coin, ...``).
    encoder_name, encoder_depth, decoder_channels
        Architecture (``decoder_channels`` needs ``encoder_depth`` entries).
    normalization : dict, optional
        Input normalisation of the config (percentile by default).
    seed : int
        Seed of the random initialisation (the global RNG is left untouched).

    Returns
    -------
    Path
        ``folder``.
    """
    guard_llvm_clash()
    import torch

    from napari_segsuite.models.unet import build_unet, make_unet_config, save_unet

    base = ("background", *TINY_YOLO_NAMES)
    names = {i: base[i] if i < len(base) else f"class_{i}" for i in range(classes)}
    config = make_unet_config(
        encoder_name=encoder_name, encoder_depth=encoder_depth, decoder_channels=decoder_channels,
        in_channels=in_channels, classes=classes, class_names=names, normalization=normalization,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_unet(config)
    return save_unet(model, config, folder)
