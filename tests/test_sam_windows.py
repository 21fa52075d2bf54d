"""Windowed SAM on large planes: the window around the prompts, at full resolution, read lazily.

The reference is segment_anything's own ``SamPredictor`` run on the crop of the window
(same pixels): the masks must be equal and land at the window's place in the plane.
"""

import numpy as np
import pytest
from segment_anything import SamPredictor

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.tiling import Tile
from napari_segsuite.models.base import load_model
from napari_segsuite.tasks.sam_session import SamSession, embedding_nbytes
from napari_segsuite.tasks.sam_windows import (
    PlaneView,
    WindowedPrompts,
    needs_windows,
    paste_objects,
)


class CountingArray:
    """An array-like that counts the pixels read through ``__getitem__`` (the lazy-read check)."""

    def __init__(self, data):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = np.asarray(self.data[key])
        self.reads.append(int(out.size))
        return out


def _slide(shape=(1500, 1800), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, shape, dtype=np.uint8)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    for r, c, rad in [(300, 400, 60), (900, 1200, 80), (1400, 1700, 50), (700, 150, 40)]:
        img[(rr - r) ** 2 + (cc - c) ** 2 < rad**2] = 220
    return img


@pytest.fixture(scope="module")
def session(tiny_sam_path):
    return SamSession(str(tiny_sam_path), device="cpu", cache_size=64)


@pytest.fixture(scope="module")
def reference(tiny_sam_path):
    return SamPredictor(load_model(tiny_sam_path, "cpu").model)


def test_large_planes_are_windowed_and_small_ones_are_not():
    assert needs_windows((1500, 1800), 1024) and needs_windows((1500, 300), 1024)
    assert not needs_windows((1280, 1280), 1024) and not needs_windows((256, 320), 256)


def test_window_choice_grid_centred_and_spanning(session):
    w = WindowedPrompts(session, _slide(), token="t")
    assert w.size == 256 and w.overlap == 64  # the tiny model's input: 256 pixels
    # a point: the grid window that contains it with the most room around it
    t = w.window_for(np.array([300.0]), np.array([400.0]))
    assert t in w.grid and t.r0 <= 300 < t.r1 and t.c0 <= 400 < t.c1
    margins = [min(300 - g.r0, g.r1 - 300, 400 - g.c0, g.c1 - 400) for g in w.grid
               if g.r0 <= 300 < g.r1 and g.c0 <= 400 < g.c1]
    assert min(300 - t.r0, t.r1 - 300, 400 - t.c0, t.c1 - 400) == max(margins)
    # a box that no grid window holds but that fits in one window: a window centred on it
    t = w.window_for(np.array([150.0, 390.0]), np.array([150.0, 390.0]))
    assert (t.r1 - t.r0, t.c1 - t.c0) == (256, 256) and t not in w.grid
    assert t.r0 <= 150 and 390 < t.r1
    # prompts spanning more than a window: their box plus a margin, still full size in the plane
    t = w.window_for(np.array([100.0, 900.0]), np.array([100.0, 700.0]))
    assert t.r0 <= 100 and t.r1 > 900 and t.c0 <= 100 and t.c1 > 700
    # too large for the limit: a clear message
    small = WindowedPrompts(session, _slide(), token="t", max_window_pixels=300 * 300)
    with pytest.raises(InputError, match="over the limit"):
        small.plan([{"points": np.array([[10.0, 10.0], [1400.0, 1700.0]]), "labels": np.array([1, 1]), "box": None}])


def test_point_mask_equals_sam_on_the_crop_at_full_resolution(session, reference):
    image = _slide()
    counting = CountingArray(image)
    w = WindowedPrompts(session, PlaneView(counting), token=("slide", 0))
    point = np.array([[905.0, 1190.0]])
    runs = session.encoder_runs
    (obj,) = w.predict([{"points": point, "labels": np.array([1]), "box": None}])
    window = obj["window"]
    assert session.encoder_runs == runs + 1
    # only the window's pixels were read
    assert counting.reads == [256 * 256]
    assert obj["origin"] == (window.r0, window.c0) and np.asarray(obj["masks"]).shape == (3, 256, 256)
    crop = image[window.slices]
    reference.set_image(np.repeat(crop[..., None], 3, axis=-1))
    rmasks, rscores, _ = reference.predict(point_coords=(point - [window.r0, window.c0])[:, ::-1],
                                           point_labels=np.array([1]))
    np.testing.assert_array_equal(np.asarray(obj["masks"]), rmasks)
    np.testing.assert_allclose(obj["scores"], rscores, rtol=1e-6)
    # the mask lands in the plane at the window's place
    region = Tile(slice(0, image.shape[0]), slice(0, image.shape[1]))
    (placed,) = paste_objects([obj], region)
    expected = np.zeros(image.shape, bool)
    expected[window.slices] = rmasks[obj["choice"]]
    np.testing.assert_array_equal(placed, expected)

    # the same click again: the cached window, no encoder, no pixels read
    (again,) = w.predict([{"points": point + 3, "labels": np.array([1]), "box": None}])
    assert session.encoder_runs == runs + 1 and counting.reads == [256 * 256]
    assert again["window"] == window


def test_boxes_in_one_window_are_one_batch_equal_to_sam(session, reference):
    image = _slide(seed=1)
    w = WindowedPrompts(session, image, token=("slide", 1))
    boxes = [np.array([250.0, 350.0, 350.0, 450.0]), np.array([280.0, 300.0, 330.0, 340.0])]
    objs = w.predict([{"points": np.zeros((0, 2)), "labels": np.zeros(0, int), "box": b} for b in boxes])
    assert objs[0]["window"] == objs[1]["window"]
    window = objs[0]["window"]
    reference.set_image(np.repeat(image[window.slices][..., None], 3, axis=-1))
    for obj, b in zip(objs, boxes, strict=True):
        local = b - [window.r0, window.c0, window.r0, window.c0]
        rmasks, _, _ = reference.predict(box=local[[1, 0, 3, 2]], multimask_output=False)
        # batched decoding (predict_torch) and one-by-one decoding agree up to float rounding
        agree = (np.asarray(obj["masks"])[0] == rmasks[0]).mean()
        assert agree > 0.999


def test_objects_in_different_windows_each_get_their_window(session):
    image = _slide(seed=2)
    w = WindowedPrompts(session, image, token=("slide", 2))
    objs = w.predict([
        {"points": np.array([[300.0, 400.0]]), "labels": np.array([1]), "box": None},
        {"points": np.array([[1400.0, 1700.0]]), "labels": np.array([1]), "box": None},
    ], multimask=False)
    a, b = objs[0]["window"], objs[1]["window"]
    assert a != b and a.r0 <= 300 < a.r1 and b.r0 <= 1400 < b.r1 and b.c0 <= 1700 < b.c1


def test_bad_prompts_give_clear_messages(session):
    w = WindowedPrompts(session, _slide(), token="bad")
    with pytest.raises(InputError, match="outside the 1,500x1,800 image"):
        w.predict([{"points": np.array([[1600.0, 10.0]]), "labels": np.array([1]), "box": None}])
    with pytest.raises(InputError, match="no area inside the image"):
        w.predict([{"points": np.zeros((0, 2)), "labels": np.zeros(0, int),
                    "box": np.array([1600.0, 10.0, 1700.0, 50.0])}])


def test_window_cache_is_bounded_in_bytes(tiny_sam_path):
    image = _slide(seed=3)
    one = None
    s = SamSession(str(tiny_sam_path), device="cpu", cache_size=1000)
    w = WindowedPrompts(s, image, token="bounded")
    w.predict([{"points": np.array([[100.0, 100.0]]), "labels": np.array([1]), "box": None}])
    one = max(embedding_nbytes(e) for e in s._cache.values())
    s.cache_bytes = 3 * one
    for r, c in [(100, 700), (100, 1300), (700, 100), (700, 700), (1300, 1300)]:
        w.predict([{"points": np.array([[float(r), float(c)]]), "labels": np.array([1]), "box": None}])
        assert s.cached_bytes() <= 3 * one and len(s._cache) <= 3
    # the newest window is still cached, the oldest is gone
    assert w.cached_key(w.window_for(np.array([1300.0]), np.array([1300.0]))) is not None
    assert w.cached_key(w.window_for(np.array([100.0]), np.array([100.0]))) is None


def test_plane_view_reads_only_the_slice():
    data = CountingArray(np.arange(2 * 3 * 40 * 50).reshape(2, 3, 40, 50))
    view = PlaneView(data, (1, slice(None), 7, slice(None)))
    assert view.shape == (3, 50)
    np.testing.assert_array_equal(view[1:3, 10:20], data.data[1, 1:3, 7, 10:20])
    assert data.reads == [20]


def test_prefetch_encodes_the_neighbours_and_stops(session):
    image = _slide(seed=4)
    w = WindowedPrompts(session, image, token="prefetch")
    around = w.grid[0]
    from napari_segsuite.core.progress import run_sync

    keys = run_sync(w.prefetch_job(around, n=2))
    assert len(keys) == 2 and all(w.cached_key(t) is not None for t in w.neighbours(around, 2))
    assert run_sync(w.prefetch_job(around, n=4, stop=lambda: True)) == []


def test_propagation_through_a_large_volume_in_windows(session, reference):
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.tasks.sam_windows import propagate_windowed_job

    volume = CountingArray(np.stack([_slide(seed=5)] * 4))  # the same plane 4 times: the object stays put
    start = WindowedPrompts(session, PlaneView(volume, (1, slice(None), slice(None))), token=("vol", 1))
    (obj,) = start.predict([{"points": np.array([[905.0, 1190.0]]), "labels": np.array([1]), "box": None}],
                           multimask=False)
    placed = (obj["origin"], np.asarray(obj["masks"][0]))
    volume.reads.clear()
    out = run_sync(propagate_windowed_job(
        session, lambda z: PlaneView(volume, (z, slice(None), slice(None))), 4, "vol", 1, placed, iou_floor=0.0))
    assert sorted(out) == [0, 2, 3]
    # each plane's window around the previous mask, read alone (a window, or the previous mask's box with a
    # margin when the random model's mask fills its window), never the whole plane
    assert len(volume.reads) == 3 and all(n < 0.1 * 1500 * 1800 for n in volume.reads), volume.reads
    for z, prev in ((0, placed), (2, placed), (3, out[2])):
        (r, c), m = out[z]
        (pr, pc), pm = prev
        rows, cols = np.nonzero(pm)
        assert m.shape[0] >= 256 and m.shape[1] >= 256
        h, w = m.shape
        assert r <= rows.min() + pr and rows.max() + pr < r + h and c <= cols.min() + pc and cols.max() + pc < c + w


def test_a_window_larger_than_the_memory_available_is_refused(session, monkeypatch):
    import napari_segsuite.core.regions as regions

    monkeypatch.setattr(regions, "available_memory", lambda: 2 * 2**20)  # 2 MiB "free"
    w = WindowedPrompts(session, _slide(), token="memory")
    with pytest.raises(InputError, match="more than the memory available"):
        w.plan([{"points": np.array([[10.0, 10.0], [900.0, 900.0]]), "labels": np.array([1, 1]), "box": None}])


@pytest.mark.parametrize("shape", [(1500, 1800), (40_000, 40_000), (300, 5000)])
def test_window_lookup_agrees_with_a_scan_of_the_whole_grid(session, shape):
    """The window of a box and a window's neighbours come from the grid's axes (no scan of its
    43,000 windows on a 40,000-pixel plane): the same answers as ranking every grid window."""
    from napari_segsuite.core.tiling import tile_grid

    class Shape:  # a plane of that size; no pixel is read
        dtype = np.dtype(np.uint8)

        def __init__(self, shape):
            self.shape = shape

    w = WindowedPrompts(session, Shape(shape), token="lookup")
    grid = tile_grid(shape, 256, 64)
    assert w._grid is None  # not built until asked
    rng = np.random.default_rng(0)
    for _ in range(200 if len(grid) < 1000 else 20):
        r0, c0 = rng.integers(0, shape[0] - 1), rng.integers(0, shape[1] - 1)
        r1 = min(shape[0] - 1, r0 + rng.integers(0, 260))
        c1 = min(shape[1] - 1, c0 + rng.integers(0, 260))
        rows, cols = np.array([float(r0), float(r1)]), np.array([float(c0), float(c1)])
        inside = [t for t in grid if t.r0 <= r0 and r1 + 1 <= t.r1 and t.c0 <= c0 and c1 + 1 <= t.c1]
        got = w.window_for(rows, cols)
        if inside:
            cr, cc = (r0 + r1 + 1) / 2, (c0 + c1 + 1) / 2
            assert got == min(inside, key=lambda t: ((t.r0 + t.r1) / 2 - cr) ** 2 + ((t.c0 + t.c1) / 2 - cc) ** 2)
            ranked = sorted((t for t in grid if t != got),
                            key=lambda t: ((t.r0 + t.r1) / 2 - (got.r0 + got.r1) / 2) ** 2
                            + ((t.c0 + t.c1) / 2 - (got.c0 + got.c1) / 2) ** 2)
            assert w.neighbours(got, 8) == ranked[:8]
        else:
            assert got not in grid
    assert w._grid is None


def test_the_prompts_window_is_encoded_while_a_prefetch_waits(tiny_sam_path):
    """A background prefetch pauses at its next encoder step while the prompts' own window is
    encoded and decoded: no prefetch encoder block starts during that time (at most the one it
    was entering when the prompts came)."""
    import threading
    import time

    from napari_segsuite.core.progress import run_sync

    s = SamSession(str(tiny_sam_path), device="cpu", cache_size=64)
    w = WindowedPrompts(s, _slide(seed=6), token="priority")
    starts: list[tuple[int, float]] = []  # (thread, time) of every encoder block that starts
    me = threading.get_ident()

    def block_starts(_module, _args) -> None:
        starts.append((threading.get_ident(), time.monotonic()))
        if threading.get_ident() == me:
            time.sleep(0.1)  # the prompts' window takes long enough for a free-running prefetch to go on

    blocks = s.prompt_model.model.image_encoder.blocks
    hooks = [b.norm1.register_forward_pre_hook(block_starts) for b in blocks]  # a block's first step
    try:
        prefetch = threading.Thread(target=lambda: run_sync(w.prefetch_job(w.grid[0], n=30)))
        prefetch.start()
        deadline = time.monotonic() + 60
        while len(starts) < 4 and time.monotonic() < deadline:  # the prefetch is under way
            time.sleep(0.001)
        runs = s.encoder_runs
        t0 = time.monotonic()
        (obj,) = w.predict([{"points": np.array([[1400.0, 1700.0]]), "labels": np.array([1]), "box": None}])
        t1 = time.monotonic()
        prefetch.join(120)
    finally:
        for h in hooks:
            h.remove()
    assert obj["window"].r0 <= 1400 < obj["window"].r1 and s.encoder_runs > runs
    assert sum(1 for t, _ in starts if t == me) == len(blocks)  # the prompts' window: one encode
    during = [when for t, when in starts if t != me and t0 <= when <= t1]
    assert len(during) <= 1, (len(during), t1 - t0)
    assert any(t != me and when > t1 for t, when in starts)  # the prefetch went on afterwards
