"""The "Semantic Segmentation" dock widget."""

from __future__ import annotations

from napari_segsuite.widgets.base import SegmentationWidget


class SemanticWidget(SegmentationWidget):
    """A class for every pixel: SegFormer, Mask2Former, DeepLabV3, LRASPP and the U-Net."""

    task = "semantic"
    model_tasks = ('semantic',)
