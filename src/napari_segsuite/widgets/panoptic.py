"""The "Panoptic Segmentation" dock widget."""

from __future__ import annotations

from napari_segsuite.widgets.base import SegmentationWidget


class PanopticWidget(SegmentationWidget):
    """Things get instance ids, stuff gets class regions (Mask2Former)."""

    task = "panoptic"
    model_tasks = ('panoptic',)
