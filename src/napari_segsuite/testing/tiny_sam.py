"""The tiny SAM (built by :mod:`napari_segsuite.demo.tiny_sam`) and the reference of segment everything."""

from __future__ import annotations

from napari_segsuite.demo.tiny_sam import TINY_SAM_CONFIG, build_tiny_sam

__all__ = ["TINY_SAM_CONFIG", "build_tiny_sam", "generator_labels"]


def generator_labels(records: list[dict], shape: tuple[int, int]):
    """The overlap rule applied to ``SamAutomaticMaskGenerator``'s own output (the reference).

    Masks are painted from the largest to the smallest (ties: later in output
    order on top), ids renumbered 1..N in output order after dropping masks
    left without pixels.

    Returns
    -------
    (ndarray, list of dict)
        int32 labels of ``shape`` and the records that kept pixels, in id order.
    """
    import numpy as np

    labels = np.zeros(shape, np.int32)
    order = sorted(range(len(records)), key=lambda k: (-int(records[k]["segmentation"].sum()), k))
    for k in order:
        labels[records[k]["segmentation"]] = k + 1
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(len(records) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels], [records[i - 1] for i in ids]
