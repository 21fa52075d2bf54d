"""Bounded work: tiled merging grows about linearly with detections; a prompt change costs the same at
25 and at 800 points. Ratios within one run (the machine is shared and noisy), not absolute times."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_segsuite.core.instance_tiling import (
    detections_from_arrays,
    merge_tiled,
    tile_grid,
)


def _scene(grid: int, per_tile: int = 60, seed: int = 0):
    """``grid`` x ``grid`` tiles of 160 px (overlap 32) with ``per_tile`` box-shaped detections each."""
    rng = np.random.default_rng(seed)
    size = 128 * grid + 32
    tiles = tile_grid((size, size), 160, 32)
    dets = []
    for t, tile in enumerate(tiles):
        h, w = tile.r1 - tile.r0, tile.c1 - tile.c0
        r0, c0 = rng.integers(0, h - 8, per_tile), rng.integers(0, w - 8, per_tile)
        sz = rng.integers(6, 40, per_tile)
        boxes = np.stack([r0, c0, np.minimum(r0 + sz, h), np.minimum(c0 + sz, w)], 1).astype(float)
        masks = np.zeros((per_tile, h, w), bool)
        for i, b in enumerate(boxes.astype(int)):
            masks[i, b[0]:b[2], b[1]:b[3]] = True
        dets += detections_from_arrays(boxes, rng.random(per_tile), rng.integers(0, 2, per_tile), masks,
                                       offset=(tile.r0, tile.c0), tile=t)
    return dets, tiles


def _reference_groups(dets, tiles, min_agreement=0.5):
    """Every pair compared over the whole shared rectangle (the definition of a merge)."""
    n = len(dets)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            a, b = dets[i], dets[j]
            if a.tile == b.tile or a.class_id != b.class_id:
                continue
            shared = tiles[a.tile].intersect(tiles[b.tile])
            if shared is None or a.crop.intersect(b.crop) is None:
                continue
            ra, rb = a.region(shared), b.region(shared)
            sa, sb = int(ra.sum()), int(rb.sum())
            if sa and sb and (ra & rb).sum() >= min_agreement * min(sa, sb):
                parent[find(i)] = find(j)
    return sorted(sorted(int(d.score * 1e9) for d, k in zip(dets, range(n), strict=True) if find(k) == root)
                  for root in {find(k) for k in range(n)})


def test_merge_equals_the_pairwise_definition():
    dets, tiles = _scene(3, per_tile=40, seed=1)
    merged = merge_tiled(dets, tiles)
    expected = _reference_groups(dets, tiles)
    assert len(merged) == len(expected)
    best = sorted(int(d.score * 1e9) for d in merged)
    assert best == sorted(max(g) for g in expected)  # each group kept once, with its best score


def _best_time(func, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return min(times)


def test_merge_time_grows_about_linearly():
    small, big = _scene(3), _scene(6)  # 4x the tiles and detections, same density
    assert len(big[0]) == 4 * len(small[0])
    t_small = _best_time(lambda: merge_tiled(*small))
    t_big = _best_time(lambda: merge_tiled(*big))
    assert t_big / t_small < 8.0, (t_small, t_big)  # linear: ~4x; all pairs: ~16x


@pytest.mark.widget
def test_prompt_change_costs_the_same_at_25_and_800_points(make_napari_viewer, qtbot):
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget

    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(np.zeros((3, 300, 300), np.uint8), name="img", scale=(2.0, 0.5, 0.5),
                             translate=(1.0, 3.0, -2.0))
    widget = SamPromptWidget(viewer)
    widget.image.value = image
    viewer.dims.set_point(0, 1.0)  # world z of plane 0
    points, _ = widget.ensure_prompt_layers()
    rng = np.random.default_rng(0)

    def per_change(n):
        points.data = np.column_stack([np.zeros(n), rng.uniform(5, 290, (n, 2))])
        widget._timer.stop()

        def once():
            widget.prompts._color_points()
            widget.gather_prompts()

        return _best_time(once, repeats=5)

    t_few, t_many = per_change(25), per_change(800)
    _, _, _, objects = widget.gather_prompts()
    assert len(objects[0]["points"]) == 800
    assert t_many / t_few < 4.0, (t_few, t_many)  # per-point Python calls made this ~30x
