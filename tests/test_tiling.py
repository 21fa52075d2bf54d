"""One tiling module: one Tile, one start rule, one blending window, used by every tiler."""

import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.tiling import (
    Tile,
    axis_starts,
    axis_window,
    halo_grid,
    make_grid,
    tile_grid,
    tile_window,
)


@pytest.mark.parametrize("shape, tile, overlap", [((150, 170), 64, 16), ((320, 300), 160, 96), ((40, 500), 64, 0)])
def test_tile_grid_cores_partition_the_image_and_windows_cover_it(shape, tile, overlap):
    tiles = tile_grid(shape, tile, overlap)
    cover, core = np.zeros(shape, int), np.zeros(shape, int)
    for i, t in enumerate(tiles):
        assert t.index == i
        cover[t.slices] += 1
        core[t.core_slices] += 1
        window = np.arange(np.prod(shape)).reshape(shape)[t.slices]
        np.testing.assert_array_equal(window[t.core_in_window()],
                                      np.arange(np.prod(shape)).reshape(shape)[t.core_slices])
    assert (cover >= 1).all() and (core == 1).all()
    # the semantic grid (which keeps its overlap under half a tile) starts its tiles by the same rule
    grid = make_grid(shape, tile, overlap)
    same = tile_grid(shape, tile, grid.overlap)
    assert sorted({t.r0 for t in same}) == list(grid.ys) == axis_starts(shape[0], min(tile, shape[0]), grid.overlap)
    assert sorted({t.c0 for t in same}) == list(grid.xs)


def test_halo_grid_cores_partition_and_windows_add_the_halo():
    tiles = halo_grid((250, 100), 100, 10)
    core = np.zeros((250, 100), int)
    for t in tiles:
        core[t.core_slices] += 1
        r0, r1, c0, c1 = t.core
        assert t.window == (max(r0 - 10, 0), min(r1 + 10, 250), max(c0 - 10, 0), min(c1 + 10, 100))
    assert (core == 1).all()
    with pytest.raises(InputError, match="overlap"):
        halo_grid((10, 10), 32, 32)


def test_one_blending_window_ramps_only_where_tiles_meet():
    t = Tile(slice(0, 64), slice(48, 112))  # first row of tiles, an inner column
    win = tile_window(t, (150, 230), 16)
    assert win.shape == (64, 64) and win.dtype == np.float32
    np.testing.assert_allclose(win[:, 32], axis_window(0, 64, 150, 16)[:, None][:, 0])
    assert win[0, 32] == 1.0  # top edge lies on the image border: weight 1
    assert win[32, 0] < 0.1 and win[32, -1] < 0.1  # left and right edges meet other tiles
    assert tile_grid((50, 40), None) == [Tile(slice(0, 50), slice(0, 40))]
