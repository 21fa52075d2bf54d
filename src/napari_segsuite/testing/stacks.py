"""Synthetic stacks with known objects, for propagation tests and benchmarks."""

from __future__ import annotations

import numpy as np


def moving_disk_stack(n: int = 8, size: int = 64, gone_from: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A bright disk moving 3 px per plane along the diagonal and growing by 1 px per plane.

    Parameters
    ----------
    n : int
        Number of planes.
    size : int
        Plane side in pixels.
    gone_from : int
        The disk is absent from this plane on (it "disappears").

    Returns
    -------
    stack : ndarray (n, size, size) uint8
        200 on the disk, 30 elsewhere.
    truth : ndarray (n, size, size) bool
        The disk on every plane.
    """
    yy, xx = np.mgrid[:size, :size]
    truth = np.zeros((n, size, size), bool)
    scale = size / 64
    for z in range(min(n, gone_from)):
        r, c, rad = (18 + 3 * z) * scale, (16 + 3 * z) * scale, (7 + z) * scale
        truth[z] = (yy - r) ** 2 + (xx - c) ** 2 <= rad**2
    stack = np.where(truth, 200, 30).astype(np.uint8)
    return stack, truth
