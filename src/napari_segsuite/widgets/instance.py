"""The "Instance Segmentation" dock widget."""

from __future__ import annotations

from napari_segsuite.widgets.base import SegmentationWidget


class InstanceWidget(SegmentationWidget):
    """One id per object: YOLO-seg, Mask R-CNN, Mask2Former instance."""

    task = "instance"
    model_tasks = ('instance',)
