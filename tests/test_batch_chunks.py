"""Chunked segmentation: ids unique across chunks, objects on chunk borders merged exactly once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
from scipy import ndimage

from napari_segsuite.batch.chunking import UnionFind, segment_chunked, tile_grid
from napari_segsuite.batch.tasks import instance_table, semantic_table


def components(window):
    """A stand-in instance model: connected components of the foreground."""
    labels, _ = ndimage.label(np.asarray(window) > 0)
    return labels.astype(np.int32), instance_table(labels)


def scene(shape=(300, 340), seed=0):
    """Disks and rectangles, many crossing chunk borders (and one crossing three chunks)."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(40):
        r = rng.integers(4, 14)
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 255
    img[60:70, 10:330] = 255  # a bar across every column of chunks
    img[95:105, 95:105] = 255  # a square on a chunk corner (chunk 100)
    return img


def same_partition(a, b):
    """Whether two label images split the pixels into the same objects."""
    fg = a != 0
    if not np.array_equal(fg, b != 0):
        return False
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("chunk,overlap", [(100, 16), (64, 8), (128, 1)])
def test_chunked_instances_match_the_whole_image(chunk, overlap):
    img = scene()
    expected, n = ndimage.label(img > 0)
    out = np.zeros(img.shape, np.int32)
    table = segment_chunked(img, components, out, chunk=chunk, overlap=overlap)
    assert same_partition(out, expected)
    ids = np.unique(out[out != 0])
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))  # unique, renumbered 1..N
    assert len(table) == n and sorted(table["label"]) == list(range(1, n + 1))
    # Areas and boxes of merged objects are those of the whole object.
    for row in table.itertuples():
        mask = out == row.label
        rows, cols = np.nonzero(mask)
        assert row.area == mask.sum()
        assert (row.bbox_0_min, row.bbox_0_max, row.bbox_1_min, row.bbox_1_max) == (
            rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
    bar = out[65, 10]
    assert (out[65, 10:330] == bar).all()  # across every chunk: one id


def test_objects_of_different_classes_are_not_merged():
    img = np.zeros((100, 100), np.uint8)
    img[40:60, 10:90] = 100  # a bar over the four chunks
    img[0:10, 0:10] = 255  # a block seen only by the top-left chunk

    def classed(window):
        # A (fake) model that calls everything class 2 where it sees the block, else class 1.
        labels, table = components(window)
        table["class_id"] = 2 if (np.asarray(window) == 255).any() else 1
        return labels, table

    out = np.zeros(img.shape, np.int32)
    table = segment_chunked(img, classed, out, chunk=50, overlap=8)
    # block; bar part of the top-left chunk (class 2); the rest of the bar merged (class 1)
    assert len(table) == 3 and len(np.unique(out[out != 0])) == 3
    assert sorted(table["class_id"]) == [1, 2, 2]
    assert out[45, 20] != out[45, 60] and out[45, 60] == out[55, 20] == out[55, 60]
    unclassed = np.zeros(img.shape, np.int32)
    segment_chunked(img, components, unclassed, chunk=50, overlap=8)
    assert len(np.unique(unclassed[unclassed != 0])) == 2


def test_semantic_chunks_are_stitched_without_renumbering():
    img = scene()
    classes = (img > 0).astype(np.int32) * 2

    def semantic(window):
        lab = (np.asarray(window) > 0).astype(np.int32) * 2
        return lab, semantic_table(lab, {2: "coin"})

    out = np.zeros(img.shape, np.int32)
    table = segment_chunked(img, semantic, out, kind="semantic", chunk=64, overlap=8)
    np.testing.assert_array_equal(out, classes)
    assert list(table["label"]) == [2] and table["area"][0] == (classes == 2).sum()
    assert table["class_name"][0] == "coin"


def test_zarr_output_and_global_normalisation(tmp_path):
    img = scene().astype(np.uint16) * 40  # not uint8: one global scaling, no seams
    expected, n = ndimage.label(img > 0)
    out = zarr.open_array(str(tmp_path / "o.zarr"), mode="w", shape=img.shape, dtype="i4", chunks=(100, 100), fill_value=0)
    table = segment_chunked(img, components, out, chunk=100, overlap=12)
    assert same_partition(out[:], expected) and len(table) == n


def test_grid_and_union_find():
    tiles = tile_grid((250, 100), 100, 10)
    assert [t.core for t in tiles] == [(0, 100, 0, 100), (100, 200, 0, 100), (200, 250, 0, 100)]
    assert tiles[1].window == (90, 210, 0, 100)
    uf = UnionFind()
    uf.union(5, 3)
    uf.union(3, 9)
    assert uf.find(9) == uf.find(5) == 3
    with pytest.raises(ValueError, match="overlap"):
        tile_grid((10, 10), 32, 32)
    assert isinstance(pd.DataFrame(), pd.DataFrame)
