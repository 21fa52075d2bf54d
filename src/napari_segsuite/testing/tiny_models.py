"""The tiny models of :mod:`napari_segsuite.demo.tiny_models`, under their test-support name."""

from napari_segsuite.demo.tiny_models import (
    TINY_CLASS_NAMES,
    TINY_YOLO_NAMES,
    build_tiny_mask2former,
    build_tiny_sam2,
    build_tiny_segformer,
    build_tiny_torchvision,
    build_tiny_unet,
    build_tiny_yolo,
    make_tiny_mask2former,
    make_tiny_sam2,
    make_tiny_segformer,
    tiny_id2label,
    tiny_sam2_config,
)

__all__ = [
    "TINY_CLASS_NAMES", "TINY_YOLO_NAMES", "build_tiny_mask2former", "build_tiny_sam2", "build_tiny_segformer",
    "build_tiny_torchvision", "build_tiny_unet", "build_tiny_yolo", "make_tiny_mask2former", "make_tiny_sam2",
    "make_tiny_segformer", "tiny_id2label", "tiny_sam2_config",
]
