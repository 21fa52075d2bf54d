"""A synthetic instance dataset: two classes of textured, touching, irregular blobs on noise.

Class 0 ("speckled") blobs are bright, rounder and covered in fine speckle;
class 1 ("striped") blobs are darker, more irregular and striped at a random
angle. Blobs are placed so that many touch: where two overlap, each pixel
goes to the blob it lies deeper inside (relative to that blob's radius in that
direction), so touching objects share a boundary. The background is a smooth
gradient with Gaussian noise. Everything is drawn from ``seed``.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = {0: "speckled", 1: "striped"}


def blob_image(size: int = 256, rng: np.random.Generator | None = None, n_range: tuple[int, int] = (8, 16),
               radius_range: tuple[float, float] = (12.0, 26.0)):
    """One image, its label image and ``{label: class}``.

    Returns
    -------
    (ndarray, ndarray, dict)
        (size, size) uint8 image, (size, size) int32 labels (1..N), label -> class (0 or 1).
    """
    rng = rng or np.random.default_rng()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    centres: list[tuple[float, float, float]] = []
    tries = 0
    while len(centres) < n and tries < 500:
        tries += 1
        r = float(rng.uniform(*radius_range))
        cy, cx = rng.uniform(r * 0.6, size - r * 0.6, 2)
        # touching is welcome, swallowing is not: centres at least 0.75 of the radii apart
        if all(np.hypot(cy - y, cx - x) > 0.75 * (r + q) for y, x, q in centres):
            centres.append((float(cy), float(cx), r))
    depth = np.full((size, size), np.inf, np.float32)
    labels = np.zeros((size, size), np.int32)
    classes: dict[int, int] = {}
    image = 60.0 + 25.0 * (xx / size) + 15.0 * (yy / size)
    textures = []
    for k, (cy, cx, r) in enumerate(centres, start=1):
        cls = int(rng.integers(2))
        theta = np.arctan2(yy - cy, xx - cx)
        amp = (0.08, 0.05) if cls == 0 else (0.22, 0.12)
        rad = np.full_like(theta, r)
        for h, a in zip((2, 3, 5), (amp[0], amp[1], amp[1] * 0.6), strict=True):
            rad *= 1.0 + float(rng.uniform(0.3, 1.0)) * a * np.cos(h * theta + float(rng.uniform(0, 2 * np.pi)))
        rel = np.hypot(yy - cy, xx - cx) / rad
        inside = (rel < 1.0) & (rel < depth)
        depth[inside] = rel[inside]
        labels[inside] = k
        classes[k] = cls
        if cls == 0:
            tex = 175.0 + 35.0 * (rng.random((size, size)) > 0.75)
        else:
            angle = float(rng.uniform(0, np.pi))
            tex = 120.0 + 35.0 * np.sin(0.9 * (xx * np.cos(angle) + yy * np.sin(angle)))
        textures.append(tex)
    for k, tex in enumerate(textures, start=1):
        m = labels == k
        image[m] = tex[m] * (1.0 - 0.25 * depth[m] ** 2)
    image = image + rng.normal(0.0, 12.0, image.shape)
    present = {int(i) for i in np.unique(labels) if i}
    classes = {k: c for k, c in classes.items() if k in present}
    return np.clip(image, 0, 255).astype(np.uint8), labels, classes


def blob_dataset(n: int, size: int = 256, seed: int = 0, **kwargs):
    """``n`` images: (images, labels, label_classes) as three lists."""
    rng = np.random.default_rng(seed)
    images, labels, classes = [], [], []
    for _ in range(n):
        img, lab, cls = blob_image(size, rng, **kwargs)
        images.append(img)
        labels.append(lab)
        classes.append(cls)
    return images, labels, classes
