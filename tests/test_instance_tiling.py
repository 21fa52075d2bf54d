"""Tiled instance inference: every object once and whole, also where it crosses tile borders."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.instance_tiling import (
    Detection,
    Tile,
    detections_from_arrays,
    merge_tiled,
    paint_labels,
    tile_grid,
)
from napari_segsuite.core.labels import masks_to_labels
from napari_segsuite.core.progress import run_sync
from napari_segsuite.tasks.instance import InstanceParams, segment_plane_job
from napari_segsuite.testing.instance_doubles import (
    SCENE_OVERLAP,
    SCENE_TILE,
    ThresholdDetector,
    tile_border_scene,
)

TILE, OVERLAP = SCENE_TILE, SCENE_OVERLAP


def _as_sets(labels):
    return sorted(tuple(np.flatnonzero(labels.ravel() == i)) for i in np.unique(labels) if i)


def test_tile_grid_covers_the_image_with_the_overlap():
    tiles = tile_grid((150, 170), TILE, OVERLAP)
    cover = np.zeros((150, 170), int)
    for t in tiles:
        cover[t.slices] += 1
        assert t.r1 - t.r0 == TILE and t.c1 - t.c0 == TILE
    assert cover.min() >= 1
    assert tile_grid((50, 40), TILE, OVERLAP) == [Tile(slice(0, 50), slice(0, 40))]
    assert tile_grid((50, 40), None) == [Tile(slice(0, 50), slice(0, 40))]
    with pytest.raises(api.InputError, match="overlap"):
        tile_grid((100, 100), 32, 32)


def test_objects_on_tile_borders_come_out_once_and_whole():
    img, n_objects = tile_border_scene()
    det = ThresholdDetector()
    whole = run_sync(segment_plane_job(img, det, InstanceParams()))
    tiled = run_sync(segment_plane_job(img, det, InstanceParams(), tile_size=TILE, overlap=OVERLAP))
    assert det.calls == 1 + len(tile_grid(img.shape[:2], TILE, OVERLAP))
    assert len(whole.table) == len(tiled.table) == n_objects
    assert _as_sets(tiled.labels) == _as_sets(whole.labels)  # same pixels for every object
    np.testing.assert_array_equal(tiled.labels, whole.labels)  # same scores, so the same ids
    assert sorted(tiled.table.class_name) == sorted(whole.table.class_name)
    np.testing.assert_allclose(tiled.table.area, whole.table.area)
    np.testing.assert_allclose(
        tiled.table[["bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"]], whole.table[["bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"]]
    )


def test_objects_of_different_classes_are_not_merged():
    a = np.zeros((1, 40, 40), bool)
    a[0, 10:20, 10:30] = True
    tiles = [Tile(slice(0, 40), slice(0, 30)), Tile(slice(0, 40), slice(10, 40))]
    d0 = detections_from_arrays(np.array([[10, 10, 20, 30]]), [0.9], [1], a[:, :, :30], tile=0)
    d1 = detections_from_arrays(np.array([[10, 0, 20, 20]]), [0.8], [2], a[:, :, 10:], offset=(0, 10), tile=1)
    assert len(merge_tiled(d0 + d1, tiles)) == 2
    d1 = detections_from_arrays(np.array([[10, 0, 20, 20]]), [0.8], [1], a[:, :, 10:], offset=(0, 10), tile=1)
    (merged,) = merge_tiled(d0 + d1, tiles)
    assert merged.score == pytest.approx(0.9)
    np.testing.assert_array_equal(merged.full_mask((40, 40)), a[0])


def test_paint_labels_follows_masks_to_labels(rng):
    masks = rng.random((6, 30, 40)) > 0.6
    scores = rng.random(6)
    dets = detections_from_arrays(np.tile([0, 0, 30, 40], (6, 1)), scores, np.zeros(6), masks)
    labels, ordered = paint_labels(dets, (30, 40))
    expected, order = masks_to_labels(masks, scores)
    np.testing.assert_array_equal(labels, expected)
    assert [d.score for d in ordered] == pytest.approx(list(scores[order]))


def test_box_only_detections_paint_their_boxes():
    dets = [Detection(np.array([2.0, 3.0, 6.0, 9.0]), 0.5, 0, None, (2, 3, 6, 9))]
    labels, _ = paint_labels(dets, (10, 10))
    assert labels.sum() == 4 * 6 and labels[2:6, 3:9].all()


def test_tiled_yolo_runs_and_keeps_shapes(tmp_path):
    from napari_segsuite.testing.tiny_models import build_tiny_yolo

    path = build_tiny_yolo(tmp_path / "tiny-seg.pt", "segment", nc=2)
    img = np.random.default_rng(1).integers(0, 255, (300, 200), dtype=np.uint8)
    res = api.segment_instances(img, path, device="cpu", conf=0.002, max_det=5, tile_size=160, overlap=32)
    # a random YOLO's masks cover whole tiles, so pieces merge across tiles: fewer rows than 4 tiles x 5
    assert res.labels.shape == (300, 200) and 1 <= len(res.table) < 20
    assert res.table.label.tolist() == list(range(1, len(res.table) + 1))
    assert (np.diff(res.table.score) <= 0).all()
