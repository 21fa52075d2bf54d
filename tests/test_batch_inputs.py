"""Batch inputs: files, folders, globs, zarr / OME-Zarr expanded into items, read lazily."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from napari_segsuite.batch.inputs import Item, check_layout, expand_inputs, layout, open_item
from napari_segsuite.core.errors import InputError


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", np.zeros((20, 30), np.uint16))
    iio.imwrite(d / "a.png", np.zeros((20, 30, 3), np.uint8))
    iio.imwrite(d / "b.png", np.zeros((10, 12), np.uint8))
    (d / "notes.txt").write_text("not an image")
    zarr.open_array(str(d / "c.zarr"), mode="w", shape=(16, 18), dtype="f4", chunks=(8, 8))[:] = 1.0
    return d


def test_folder_expands_to_images_and_zarr_with_unique_names(folder):
    exp = expand_inputs([folder])
    assert not exp.problems
    names = sorted(i.name for i in exp.items)
    assert names == ["a_png", "a_tif", "b", "c"]  # a.tif and a.png share a stem


def test_files_globs_and_duplicates(folder):
    exp = expand_inputs([folder / "b.png", str(folder / "*.png"), folder / "b.png"])
    assert [i.name for i in exp.items] == ["b", "a"]  # each input once, in the given order


def test_missing_inputs_are_reported(tmp_path, folder):
    exp = expand_inputs([tmp_path / "nope.tif", str(tmp_path / "*.jpg"), folder / "notes.txt", tmp_path / "in" / "b.png"])
    reasons = dict(exp.problems)
    assert reasons[str(tmp_path / "nope.tif")] == "no such file or folder"
    assert reasons[str(tmp_path / "*.jpg")] == "pattern matches no image"
    assert "not an image file" in reasons[str(folder / "notes.txt")]
    assert [i.name for i in exp.items] == ["b"]


def test_open_reads_lazily(folder):
    (a_tif,) = expand_inputs([folder / "a.tif"]).items
    arr = open_item(a_tif)
    assert isinstance(arr, np.memmap) and arr.shape == (20, 30)
    (c,) = expand_inputs([folder / "c.zarr"]).items
    z = open_item(c)
    assert isinstance(z, zarr.Array) and z.shape == (16, 18)


def test_ome_zarr_full_resolution_with_channels_moved_last(tmp_path):
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    data = np.arange(2 * 3 * 8 * 9, dtype=np.uint16).reshape(2, 3, 8, 9)  # t, c, y, x
    root.create_array("0", shape=data.shape, dtype=data.dtype)[:] = data
    root.create_array("1", shape=(2, 3, 4, 5), dtype=data.dtype)
    axes = [{"name": "t"}, {"name": "c"}, {"name": "y"}, {"name": "x"}]
    root.attrs["multiscales"] = [{"axes": axes, "datasets": [{"path": "0"}, {"path": "1"}]}]
    (item,) = expand_inputs([tmp_path / "img.ome.zarr"]).items
    assert item.component == "0" and item.name == "img_0"
    arr = open_item(item)
    assert arr.shape == (8, 9, 3)
    np.testing.assert_array_equal(np.asarray(arr), np.moveaxis(data[0], 0, -1))
    np.testing.assert_array_equal(arr[2:4, 1:3], np.moveaxis(data[0], 0, -1)[2:4, 1:3])


def test_unreadable_and_bad_layouts(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="cannot read"):
        open_item(Item(str(bad), name="bad"))
    with pytest.raises(InputError, match="expected a 2D image"):
        check_layout(np.zeros((2, 2, 2, 2, 2)))
    with pytest.raises(InputError, match="dtype"):
        check_layout(np.zeros((4, 4), complex))
    assert layout((5, 6)) == (1, False)
    assert layout((5, 6, 3)) == (1, True)
    assert layout((7, 5, 6)) == (7, False)
    assert layout((7, 5, 6, 2)) == (7, True)
