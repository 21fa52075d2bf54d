"""What runners return: the result types of the task methods declared on
:class:`~napari_segsuite.models.base.Runner`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InstancePrediction:
    """What a model finds on one image.

    Parameters
    ----------
    boxes : ndarray (N, 4) float
        (row0, col0, row1, col1) in pixels (max exclusive, like ``xyxy``).
    scores : ndarray (N,) float32
    class_ids : ndarray (N,) int64
    masks : ndarray (N, H, W) bool, or None for box-only (detection) models.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, shape: tuple[int, int] | None = None) -> InstancePrediction:
        """No detections (masks of ``shape`` when given)."""
        masks = None if shape is None else np.zeros((0, *shape), dtype=bool)
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), masks)

    def select(self, keep) -> InstancePrediction:
        """The detections at ``keep`` (indices or a boolean array)."""
        keep = np.asarray(keep)
        return InstancePrediction(
            self.boxes[keep], self.scores[keep], self.class_ids[keep],
            None if self.masks is None else self.masks[keep],
        )

    @staticmethod
    def xyxy_to_rc(xyxy) -> np.ndarray:
        """(x0, y0, x1, y1) boxes -> (row0, col0, row1, col1)."""
        return np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]]
