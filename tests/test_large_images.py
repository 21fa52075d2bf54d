"""The synthetic slide generator and the read-counting dask array the large-image tests use."""

from __future__ import annotations

import tracemalloc

import numpy as np

from napari_segsuite.testing.large_images import (
    blob_truth,
    blobs,
    counting_dask,
    open_slide,
    slide_metadata,
    synthetic_volume,
    write_synthetic_slide,
)


def test_any_window_is_the_same_slide():
    whole = blobs(np.arange(0, 900), np.arange(0, 1100))
    part = blobs(np.arange(300, 900), np.arange(517, 1100))
    assert np.array_equal(part, whole[300:, 517:])
    assert whole.dtype == np.uint8 and 20 < whole.mean() < 120 and whole.max() > 180  # blobs on a dim background
    assert not np.array_equal(blobs(np.arange(64), np.arange(64), seed=1), whole[:64, :64])


def test_objects_cross_power_of_two_chunk_borders():
    truth = blob_truth(np.arange(0, 2048), np.arange(0, 2048))
    left, right = truth[:, 1023], truth[:, 1024]
    crossing = set(left[left > 0]) & set(right[right > 0])
    assert len(crossing) >= 3  # objects straddle the chunk border at 1024
    image = blobs(np.arange(0, 2048), np.arange(0, 2048))
    assert image[truth > 0].mean() > image[truth == 0].mean() + 60


def test_multiscale_ome_zarr_written_chunk_by_chunk(tmp_path):
    tracemalloc.start()
    info = write_synthetic_slide(tmp_path / "slide.zarr", (4100, 3000), chunk=256, min_side=600, workers=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.shapes == [(4100, 3000), (2050, 1500), (1025, 750), (513, 375)]
    assert peak < 4100 * 3000 / 2, peak  # a few chunks in memory (float32 work arrays), never a level
    levels = open_slide(tmp_path / "slide.zarr")
    assert [tuple(a.shape) for a in levels] == info.shapes and levels[0].chunks == (256, 256)
    for k, level in enumerate(levels):
        f = 2**k
        r = np.arange(1000 // f, 1000 // f + 50)
        c = np.arange(700 // f, 700 // f + 60)
        assert np.array_equal(level[r[0]:r[-1] + 1, c[0]:c[-1] + 1], blobs(r * f, c * f))
    meta = slide_metadata(tmp_path / "slide.zarr")["ome"]
    assert meta["version"] == "0.5"
    datasets = meta["multiscales"][0]["datasets"]
    assert [d["path"] for d in datasets] == ["0", "1", "2", "3"]
    assert datasets[2]["coordinateTransformations"][0]["scale"] == [4.0, 4.0]


def test_counting_dask_records_every_chunk_read(tmp_path):
    write_synthetic_slide(tmp_path / "s.zarr", (2000, 2000), chunk=500, workers=1)
    level0 = open_slide(tmp_path / "s.zarr")[0]
    lazy, counter = counting_dask(level0)
    assert counter.pixels == 0 and lazy.chunksize == (500, 500)
    window = np.asarray(lazy[450:560, 10:20])  # two chunks
    assert np.array_equal(window, level0[450:560, 10:20])
    assert counter.pixels == 2 * 500 * 500 and counter.largest == 500 * 500
    counter.reset()
    np.asarray(lazy)
    assert counter.pixels == counter.size == 2000 * 2000


def test_synthetic_volume_is_lazy():
    vol = synthetic_volume((3, 50_000, 50_000), chunks=(1, 1000, 1000))
    assert vol.shape == (3, 50_000, 50_000) and vol.nbytes == 3 * 50_000**2
    plane = np.asarray(vol[2, 1500:1600, 40_000:40_100])
    assert np.array_equal(plane, blobs(np.arange(1500, 1600), np.arange(40_000, 40_100), seed=2))
