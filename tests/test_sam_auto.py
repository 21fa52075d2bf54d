"""Automatic "segment everything": the same masks as SamAutomaticMaskGenerator, labels, tiles."""

import numpy as np
import pytest
from segment_anything import SamAutomaticMaskGenerator

from napari_segsuite import api
from napari_segsuite.api import SamSession
from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import run_sync
from napari_segsuite.tasks.sam_automatic import (
    AutoMask,
    AutoParams,
    Decoded,
    automatic_masks_job,
    masks_to_result,
    tile_boxes,
)
from napari_segsuite.testing.tiny_sam import generator_labels

# The random tiny SAM's logits are small (|x| < 0.3) and its predicted IoU is
# around 0; these thresholds let masks through while every filter still bites.
# Random masks spread over the whole image, so their boxes are all alike:
# box NMS at 1.0 keeps them apart (NMS itself is exercised by the tile test).
PERMISSIVE = {
    "points_per_side": 6, "pred_iou_thresh": 0.03, "stability_score_offset": 0.01,
    "stability_score_thresh": 0.2, "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0,
}


@pytest.fixture(scope="module")
def sam_path(tmp_path_factory):
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    # seed 1: predicted IoU spread on both sides of 0, so the IoU filter keeps about half
    return build_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam_seed1.pth", seed=1)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize("extra", [{}, {"min_mask_region_area": 30}], ids=["plain", "small-regions"])
def test_masks_equal_sam_automatic_mask_generator(sam_path, image, extra):
    session = SamSession(str(sam_path), device="cpu")
    params = AutoParams(**PERMISSIVE, **extra)
    reference = SamAutomaticMaskGenerator(session.runner.model, **params.generator_kwargs()).generate(image)
    ours = run_sync(automatic_masks_job(session, image, params))
    assert len(reference) > 10 and len(ours) == len(reference)
    for ref, m in zip(reference, ours, strict=True):
        np.testing.assert_array_equal(m.full(image.shape[:2]), ref["segmentation"])  # identical booleans
        assert m.predicted_iou == pytest.approx(ref["predicted_iou"], abs=1e-6)
        assert m.stability_score == pytest.approx(ref["stability_score"], abs=1e-6)
        assert m.area == ref["area"]
        assert [m.box[0], m.box[1], m.box[2] - m.box[0], m.box[3] - m.box[1]] == ref["bbox"]
        np.testing.assert_allclose(m.point, ref["point_coords"][0])
    if extra:
        return
    # some candidates fail the IoU filter: the filter before upsampling is exercised
    unfiltered = SamAutomaticMaskGenerator(
        session.runner.model, **{**params.generator_kwargs(), "pred_iou_thresh": 0.0}).generate(image)
    assert len(unfiltered) > len(reference)


def test_api_labels_are_the_generator_masks_with_smaller_on_top(sam_path, image):
    session = SamSession(str(sam_path), device="cpu")
    result = api.sam_automatic(image, session, **PERMISSIVE)
    reference = SamAutomaticMaskGenerator(session.runner.model, **AutoParams(**PERMISSIVE).generator_kwargs()
                                          ).generate(image)
    expected, kept = generator_labels(reference, image.shape[:2])
    np.testing.assert_array_equal(result.labels, expected)
    assert result.labels.dtype == np.int32
    table = result.table
    assert list(table["label"]) == list(range(1, len(kept) + 1))
    np.testing.assert_allclose(table["predicted_iou"], [r["predicted_iou"] for r in kept], atol=1e-6)
    np.testing.assert_allclose(table["stability_score"], [r["stability_score"] for r in kept], atol=1e-6)
    assert list(table["mask_area"]) == [r["area"] for r in kept]
    for _, row in table.iterrows():
        region = result.labels == row["label"]
        assert row["area"] == region.sum()
        rows, cols = np.nonzero(region)
        assert (row["bbox_0_min"], row["bbox_1_min"]) == (rows.min(), cols.min())
    # the whole-image embedding came from the session's cache: a second run does not encode again
    runs = session.encoder_runs
    api.sam_automatic(image, session, **PERMISSIVE)
    assert session.encoder_runs == runs == 1


def test_overlap_rule_smaller_masks_on_top():
    big = np.zeros((20, 20), bool)
    big[2:18, 2:18] = True
    small = np.zeros((20, 20), bool)
    small[5:9, 5:9] = True
    hidden = np.zeros((20, 20), bool)
    hidden[6:8, 6:8] = True  # inside `small`, and smaller still: on top of it

    def auto(mask, iou):
        rows, cols = np.nonzero(mask)
        box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
        return AutoMask(box=box, crop_mask=mask[box[1]:box[3] + 1, box[0]:box[2] + 1], predicted_iou=iou,
                        stability_score=1.0, point=np.zeros(2), crop_box=np.array([0, 0, 20, 20]),
                        area=int(mask.sum()))

    result = masks_to_result([auto(small, 0.9), auto(big, 0.8), auto(hidden, 0.7)], (20, 20))
    assert (result.labels[6:8, 6:8] == 3).all()
    assert ((result.labels == 1) == (small & ~hidden)).all()
    assert ((result.labels == 2) == (big & ~small)).all()
    assert list(result.table["mask_area"]) == [16, 256, 4]
    assert list(result.table["area"]) == [12, 256 - 16, 4]


class DiskSource:
    """A deterministic stand-in for the model: a point's mask is the disk under it (merge logic only)."""

    mask_threshold = 0.0

    def __init__(self):
        self.encoded = []

    def encode(self, rgb):
        from scipy import ndimage

        labels, _ = ndimage.label(rgb[..., 0] > 100)
        self.encoded.append(rgb.shape[:2])
        return labels

    def decode(self, labels, points_xy):
        import torch

        out = np.full((len(points_xy), 3, *labels.shape), -5.0, np.float32)
        for i, (x, y) in enumerate(points_xy):
            lab = labels[int(y), int(x)]
            if lab:
                out[i, :, labels == lab] = 5.0
        iou = torch.tensor([[0.3, 0.95, 0.2]] * len(points_xy))  # one candidate per point passes
        return Decoded(torch.from_numpy(out), iou)

    def upscale(self, labels, low):
        return low


def _disk_image():
    shape = (320, 320)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    # tile 160, overlap 96: tiles start at 0, 64, 128, 160 -> core borders at 112, 176, 224
    centres = [(112, 112, 18), (40, 176, 14), (176, 40, 20), (224, 224, 16), (176, 176, 12), (290, 100, 15)]
    truth = np.zeros(shape, np.int32)
    for k, (r, c, rad) in enumerate(centres, start=1):
        truth[(yy - r) ** 2 + (xx - c) ** 2 <= rad * rad] = k
    rgb = np.where(truth[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, -1)
    return rgb, truth


def test_tile_grid_covers_the_image_and_cores_partition_it():
    boxes, cores = tile_boxes((320, 300), 160, 96)
    assert [b[0] for b in boxes[:4]] == [0, 64, 128, 140]
    cover = np.zeros((320, 300), int)
    core = np.zeros((320, 300), int)
    for (x0, y0, x1, y1), (cx0, cy0, cx1, cy1) in zip(boxes, cores, strict=True):
        assert x1 - x0 == 160 and y1 - y0 == 160
        cover[y0:y1, x0:x1] += 1
        core[int(np.ceil(cy0)):int(np.ceil(cy1)), int(np.ceil(cx0)):int(np.ceil(cx1))] += 1
    assert (cover >= 1).all() and (core == 1).all()
    with pytest.raises(InputError):
        tile_boxes((320, 320), 100, 100)


def test_tiles_merge_objects_on_tile_borders_once_and_whole():
    rgb, truth = _disk_image()
    # grid spacing 16 px: every disk (radius >= 12) holds a grid point of every tile that contains it
    params = AutoParams(points_per_side=10, pred_iou_thresh=0.5, stability_score_thresh=0.5, box_nms_thresh=0.7,
                        tile_size=160, tile_overlap=96)
    source = DiskSource()
    masks = run_sync(automatic_masks_job(None, rgb, params, source=source))
    assert source.encoded == [(160, 160)] * 16  # 4 x 4 tiles at full resolution
    result = masks_to_result(masks, truth.shape, params)
    assert len(masks) == truth.max()  # every disk once, none duplicated
    for k in range(1, truth.max() + 1):
        found = [m for m in masks if np.array_equal(m.full(truth.shape), truth == k)]
        assert len(found) == 1, f"disk {k}"
    assert set(np.unique(result.labels)) == set(range(truth.max() + 1))


def test_sam2_automatic_filters_before_upsampling_without_changing_masks(tmp_path):
    from napari_segsuite.testing.tiny_models import build_tiny_sam2

    folder = build_tiny_sam2(tmp_path / "sam2", video=True)
    session = SamSession(str(folder), device="cpu")
    image = np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    # the tiny SAM 2.1's logits are ~1e-4 and its IoU ~0.5
    params = AutoParams(points_per_side=6, pred_iou_thresh=0.49995, stability_score_offset=2e-5,
                        stability_score_thresh=0.05, box_nms_thresh=1.0)
    lazy = run_sync(automatic_masks_job(session, image, params))
    eager = run_sync(automatic_masks_job(session, image, params, lazy=False))
    assert len(lazy) == len(eager) > 0
    for a, b in zip(lazy, eager, strict=True):
        np.testing.assert_array_equal(a.full(image.shape[:2]), b.full(image.shape[:2]))
        assert a.predicted_iou == b.predicted_iou
    result = api.sam_automatic(image, session, **params.__dict__)
    assert result.labels.shape == image.shape[:2] and result.labels.max() == len(result.table) > 0


def test_unknown_parameter_is_a_clear_error(sam_path, image):
    with pytest.raises(InputError, match="points_per_sid"):
        api.sam_automatic(image, str(sam_path), device="cpu", points_per_sid=4)
