"""The "SAM Prompt Segmentation" dock widget."""

from __future__ import annotations

from napari_segsuite.widgets.base import SegmentationWidget


class SamPromptWidget(SegmentationWidget):
    """Segment Anything from point and box prompts."""

    task = "prompt"
    model_tasks = ('prompt',)
