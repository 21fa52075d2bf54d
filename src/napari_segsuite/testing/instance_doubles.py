"""Helpers for instance-segmentation tests: a YOLO with image-dependent scores, a thresholding detector.

:func:`sharpen_yolo` rescales a tiny random YOLO's weights so that its scores
differ from box to box (a freshly initialised YOLO gives every box the score of
its class bias), which makes orders and colour-order effects testable.
:class:`ThresholdDetector` is a deterministic stand-in *for the tiling logic
only*: one instance per bright connected component, so objects placed on tile
borders have a known answer. Model-equality tests use the real tiny models.
"""

from __future__ import annotations

import numpy as np


def sharpen_yolo(path, factor: float = 2.7):
    """Scale the conv/linear weights of the ultralytics checkpoint at ``path`` in place; returns ``path``."""
    import torch

    from napari_segsuite.models.offline import import_ultralytics

    model = import_ultralytics().YOLO(str(path))
    with torch.no_grad():
        for p in model.model.parameters():
            if p.ndim > 1:
                p.mul_(factor)
    model.save(path)
    return path


class ThresholdDetector:
    """One instance per connected component of ``red > 100`` (a runner-shaped test double).

    Class 1 ("blob") where green is bright, else 2 ("bar"); the score is the
    component's mean red value / 255, so every object has its own score.
    """

    name = "threshold"
    family = "test"
    tasks = ("instance",)
    class_names = {1: "blob", 2: "bar"}
    device = "cpu"

    def __init__(self):
        self.calls = 0

    def provenance(self) -> dict:
        return {"name": self.name}

    def predict_instances(self, rgb, conf=0.0, **_):
        from scipy import ndimage

        from napari_segsuite.models.prediction import InstancePrediction

        self.calls += 1
        red = rgb[..., 0]
        comps, n = ndimage.label(red > 100)
        if not n:
            return InstancePrediction.empty(red.shape)
        masks, boxes, scores, classes = [], [], [], []
        for k, sl in enumerate(ndimage.find_objects(comps), start=1):
            m = comps == k
            masks.append(m)
            boxes.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
            scores.append(red[m].mean() / 255)
            classes.append(1 if rgb[..., 1][m].mean() > 100 else 2)
        keep = np.asarray(scores) >= conf
        pred = InstancePrediction(np.array(boxes), np.array(scores), np.array(classes), np.array(masks))
        return pred.select(keep)


#: The tiling the objects of :func:`tile_border_scene` are placed on.
SCENE_TILE, SCENE_OVERLAP = 64, 24


def tile_border_scene():
    """A 150x170 RGB image with objects on the borders of 64-pixel tiles overlapping by 24; (image, count).

    Discs sit on tile edges, inside overlaps and at tile corners; two bars are
    longer than the overlap and cross two and three tiles.
    """
    img = np.zeros((150, 170, 3), np.uint8)
    yy, xx = np.mgrid[:150, :170]
    discs = [(64, 40, 9), (40, 64, 9), (64, 64, 8), (40, 104, 7), (104, 104, 10), (20, 150, 6), (130, 20, 9)]
    for k, (r, c, rad) in enumerate(discs):
        img[(yy - r) ** 2 + (xx - c) ** 2 <= rad ** 2] = (120 + 15 * k, 200, 0)
    img[90:140, 50:58] = (250, 0, 0)  # a bar longer than the overlap, across two tile borders
    img[10:16, 20:130] = (230, 0, 0)  # a wide bar across three tiles
    return img, len(discs) + 2


def ramp_with_blobs() -> np.ndarray:
    """A (160, 224, 3) uint8 RGB image whose colour order matters: a red-to-blue ramp, three
    bright yellow blobs of radius 18 and a little noise (what the tiny detectors react to)."""
    rng = np.random.default_rng(7)
    img = np.zeros((160, 224, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, 224)[None, :]
    img[..., 2] = np.linspace(255, 0, 160)[:, None]
    yy, xx = np.mgrid[:160, :224]
    for r, c in ((40, 50), (100, 160), (120, 60)):
        img[(yy - r) ** 2 + (xx - c) ** 2 < 18 ** 2] = (255, 255, 40)
    return np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
