"""Tiled semantic inference: the grid, the blending, bounded reading, bad inputs (no viewer)."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import run_sync
from napari_segsuite.core.tiling import (
    TileReader,
    axis_starts,
    axis_weight_sum,
    axis_window,
    blend_tiles,
    make_grid,
    scores_to_confidence,
)
from napari_segsuite.tasks.semantic import LABEL_OFFSET, segment_semantic_job


class PixelRunner:
    """A semantic 'model' whose scores depend on each pixel alone (a 1x1 convolution).

    Tiling cannot change its result, so tiled and untiled runs must agree exactly
    up to float rounding of the blend.
    """

    family = "test"
    name = "pixel"
    tasks = ("semantic",)
    info: dict = {}

    def __init__(self, n_classes=4):
        self.class_names = {i: f"c{i}" for i in range(n_classes)}
        self.weights = np.random.default_rng(3).normal(size=(n_classes, 3)).astype(np.float32)
        self.windows = []

    def require(self, task):
        if task not in self.tasks:
            raise InputError("not semantic")

    def predict_semantic(self, rgb):
        self.windows.append(rgb.shape)
        x = rgb.astype(np.float32) / 255.0
        return np.einsum("kc,hwc->khw", self.weights, x)


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 100, 10), (101, 100, 10), (1000, 256, 32), (50, 256, 32), (513, 512, 64)])
def test_tiles_cover_the_axis_with_the_overlap(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    covered = np.zeros(length, int)
    for s in starts:
        covered[s:min(s + tile, length)] += 1
    assert covered.min() >= 1
    assert starts[0] == 0 and min(starts[-1] + tile, length) == length
    for a, b in itertools.pairwise(starts):
        assert a + tile - b >= overlap  # neighbours overlap at least `overlap`


def test_grid_of_a_small_image_is_one_tile():
    grid = make_grid((40, 70), 512, 64)
    assert grid.n_tiles == 1 and grid.tile == (40, 70)
    assert make_grid((40, 70), None).n_tiles == 1


def test_window_ramps_only_inside_the_image_and_has_a_floor():
    w = axis_window(0, 100, 300, 20)
    assert w[0] == 1.0 and w[50] == 1.0  # image border: no ramp
    assert 0 < w[-1] < 0.05 and np.all(np.diff(w[-20:]) < 0)
    inner = axis_window(100, 200, 300, 20)
    assert inner[0] == pytest.approx(inner[-1]) and inner.min() > 0.01
    total = axis_weight_sum(axis_starts(300, 100, 20), 100, 300, 20)
    assert total.min() > 0.5  # every pixel is well covered, no division blow-up


def test_tiled_equals_untiled_for_a_pixelwise_model(rng):
    image = rng.integers(0, 255, (301, 457, 3), dtype=np.uint8)
    runner = PixelRunner()
    whole = run_sync(segment_semantic_job(image, runner, tile_size=0))
    tiled = run_sync(segment_semantic_job(image, runner, tile_size=128, overlap=24, confidence=True))
    assert tiled.params["n_tiles"] > 6 and len(runner.windows) == 1 + tiled.params["n_tiles"]
    scores = runner.predict_semantic(image)
    assert np.array_equal(whole.class_map(), scores.argmax(0))
    assert (tiled.labels == whole.labels).mean() > 0.9999
    np.testing.assert_allclose(tiled.confidence, scores_to_confidence(scores, "logits"), atol=1e-5)
    assert sum(tiled.pixel_counts.values()) == image.shape[0] * image.shape[1]
    assert tiled.labels.min() >= LABEL_OFFSET


def test_blending_averages_overlapping_tiles():
    """Tiles that disagree blend smoothly: the result switches inside the overlap, not at a tile edge."""
    grid = make_grid((64, 200), 120, 40)
    assert grid.xs == (0, 80)

    def predict(window):
        y0, y1, x0, x1 = window
        s = np.zeros((2, y1 - y0, x1 - x0), np.float32)
        s[0 if x0 == 0 else 1] = 1.0  # left tile says class 0, right tile class 1
        return s

    out = np.zeros((64, 200), np.uint8)
    counts = run_sync(blend_tiles(grid, predict, out, label_offset=0))
    row = out[0]
    switch = int(np.argmax(row == 1))
    assert 80 < switch < 120 and np.all(row[:switch] == 0) and np.all(row[switch:] == 1)
    assert counts.sum() == 64 * 200


def test_dask_input_is_read_tile_by_tile(rng):
    base = rng.integers(0, 4000, (600, 700), dtype=np.uint16)
    lazy = da.from_array(base, chunks=(100, 100))
    read = []

    class Spy:
        shape, dtype, ndim = lazy.shape, lazy.dtype, lazy.ndim

        def __getitem__(self, key):
            read.append(key)
            return lazy[key]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the whole image was read")

    runner = PixelRunner()
    result = run_sync(segment_semantic_job(Spy(), runner, tile_size=256, overlap=32))
    reference = run_sync(segment_semantic_job(base, PixelRunner(), tile_size=256, overlap=32))
    assert np.array_equal(result.labels, reference.labels)
    windows = [k for k in read if all(s.step is None for s in k)]
    assert windows and all((k[0].stop - k[0].start) <= 256 and (k[1].stop - k[1].start) <= 256 for k in windows)


def test_output_can_be_a_memmap(tmp_path, rng):
    image = rng.integers(0, 255, (200, 300), dtype=np.uint8)
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint8, shape=(200, 300))
    result = run_sync(segment_semantic_job(image, PixelRunner(), tile_size=128, overlap=16, out=out))
    assert result.labels is out
    out.flush()
    assert np.load(tmp_path / "labels.npy").min() >= 1


def test_one_intensity_scaling_for_all_tiles(rng):
    image = (rng.random((300, 300)) * 1000).astype(np.float32)
    image[:150] += 5000  # top half much brighter: per-tile scaling would hide it
    reader = TileReader(image)
    top, bottom = reader.read((0, 100, 0, 100)), reader.read((200, 300, 0, 100))
    assert top.shape == (100, 100, 3) and top.dtype == np.uint8
    assert top.mean() > 200 and bottom.mean() < 50


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((1, 1), np.uint8), "at least 16x16"),
        (np.zeros((10, 200, 3), np.uint8), "at least 16x16"),
        (np.zeros((64, 64, 2), np.uint8), "2 channels"),
        (np.zeros((64, 64, 5), np.float32), "5 channels"),
        (np.zeros((3, 64, 64, 3), np.uint8), "shape (3, 64, 64, 3)"),
        (np.array([[np.nan] * 32] * 32, np.float32), "NaN"),
        (np.full((32, 32), np.inf, np.float32), "infinite"),
        (np.zeros((32, 32), "U1"), "dtype"),
    ],
)
def test_bad_images_give_a_clear_message(image, message):
    runner = PixelRunner()
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_sync(segment_semantic_job(image, runner))
    assert runner.windows == []  # nothing ran


def test_nan_inside_a_later_tile_stops_before_any_result(rng, monkeypatch):
    import napari_segsuite.core.tiling as tiling

    monkeypatch.setattr(tiling, "STATS_PIXELS", 1000)  # the range estimate skips most pixels
    image = rng.random((600, 600)).astype(np.float32)
    image[591, 593] = np.nan
    runner = PixelRunner()
    with pytest.raises(InputError, match=r"NaN values \(in rows"):
        run_sync(segment_semantic_job(image, runner, tile_size=128, overlap=16))
    assert len(runner.windows) > 1  # found while reading a later tile


def test_tile_size_below_the_minimum_is_refused():
    with pytest.raises(InputError, match="tile size"):
        run_sync(segment_semantic_job(np.zeros((100, 100), np.uint8), PixelRunner(), tile_size=8))
