"""Labels on disk (core.label_store), regions and lazy views (core.regions), chunked region runs."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.label_store import LabelStore, LabelStoreError, pyramid_shapes
from napari_segsuite.core.regions import LazyView, Region, check_fits_memory, clip_region
from napari_segsuite.testing.large_images import counting_dask, open_slide, write_synthetic_slide


def test_region_outside_the_image_is_refused():
    assert clip_region(-10, 50, 90, 300, (100, 200)) == Region(0, 50, 90, 200)
    with pytest.raises(InputError, match="outside the image"):
        clip_region(150, 300, 0, 50, (100, 200), what="The rectangle")
    with pytest.raises(InputError, match="at least 16"):
        clip_region(0, 8, 0, 100, (100, 200), min_side=16)


def test_window_larger_than_memory_is_refused():
    check_fits_memory(1000, 4, "A small window", available=10**9)
    with pytest.raises(InputError, match=r"needs about 5\.6 GiB .* only 1\.0 GiB .* whole plane"):
        check_fits_memory(40_000 * 37_500, 4, "The field of view", available=2**30)


def test_lazy_view_reads_only_what_is_sliced(tmp_path):
    write_synthetic_slide(tmp_path / "s.zarr", (3000, 2000), chunk=250, workers=1)
    level0 = open_slide(tmp_path / "s.zarr")[0]
    lazy, counter = counting_dask(level0)
    view = LazyView(lazy[None], (0, slice(None), slice(None)), Region(500, 1500, 250, 1250))
    assert view.shape == (1000, 1000) and counter.pixels == 0
    window = view[10:20, -5:]
    assert np.array_equal(window, level0[510:520, 1245:1250])
    assert counter.pixels == 250 * 250  # one chunk
    assert np.array_equal(np.asarray(view.sub(Region(0, 10, 0, 10))), level0[500:510, 250:260])


def test_pyramid_writes_every_level_and_undo(tmp_path):
    shapes = pyramid_shapes((2, 3000, 2100), min_side=500)
    assert shapes == [(2, 3000, 2100), (2, 1500, 1050), (2, 750, 525), (2, 375, 263)]
    store = LabelStore.create(tmp_path / "labels" / "x", shapes, chunk=256, source="img")
    block = np.arange(700 * 900, dtype=np.int32).reshape(700, 900) % 7
    region = Region(1001, 1701, 333, 1233)
    store.write((1,), region, block)
    full = np.zeros((3000, 2100), np.int32)
    full[region.slices] = block
    assert np.array_equal(store.read((1,), Region.whole((3000, 2100))), full)
    for level, (fy, fx) in zip(store.levels[1:], store.factors[1:], strict=True):
        assert np.array_equal(np.asarray(level[1]), full[::fy, ::fx][: level.shape[1], : level.shape[2]])
    assert not np.asarray(store.levels[0][0]).any()  # the other plane is untouched
    # undo: the last write of a bounded region
    before = store.read((1,), Region(0, 100, 0, 100))
    store.write((1,), Region(0, 100, 0, 100), np.full((100, 100), 9, np.int32))
    assert store.record((1,), Region(0, 100, 0, 100), before)
    assert store.undo() is not None and not store.read((1,), Region(0, 100, 0, 100)).any()
    assert not np.asarray(store.levels[1][1, :50, :50]).any()
    assert store.redo() is not None and (store.read((1,), Region(0, 100, 0, 100)) == 9).all()
    assert not store.record((1,), Region.whole((5000, 5000)), None) and not store.can_undo
    counts = store.region_counts((1,), Region.whole((3000, 2100)))
    assert counts[9] == 100 * 100 and counts.sum() == 3000 * 2100
    # OME-Zarr labels metadata, and the store re-opens
    meta = json.loads((tmp_path / "labels" / "x" / "zarr.json").read_text())["attributes"]["ome"]
    assert meta["image-label"]["source"]["image"] == "img"
    assert [d["coordinateTransformations"][0]["scale"] for d in meta["multiscales"][0]["datasets"]][1] == [1, 2, 2]
    again = LabelStore.open(tmp_path / "labels" / "x")
    assert np.array_equal(again.read((1,), region), block)


_DISK_SCRIPT = textwrap.dedent("""
    import json, shutil, subprocess, sys
    import numpy as np
    from pathlib import Path
    from napari_segsuite.core.label_store import LabelStore, LabelStoreError
    from napari_segsuite.core.regions import Region
    root = Path(sys.argv[1])
    out = {}
    store = LabelStore.create(root / "full", [(2048, 2048)], chunk=256)
    rng = np.random.default_rng(0)
    first = rng.integers(0, 2**31 - 1, (256, 256), dtype=np.int32)
    store.write((), Region(0, 256, 0, 256), first)
    new = rng.integers(0, 2**31 - 1, (2048, 2048), dtype=np.int32)
    try:
        store.write((), Region(0, 2048, 0, 2048), new)
    except LabelStoreError as exc:
        out["full"] = str(exc)
    again = LabelStore.open(root / "full")
    whole = again.read((), Region(0, 2048, 0, 2048))  # every chunk readable
    old = np.zeros((2048, 2048), np.int32)
    old[:256, :256] = first
    states = []  # each chunk holds its old or its new content, never a mix
    for r in range(0, 2048, 256):
        for c in range(0, 2048, 256):
            w = (slice(r, r + 256), slice(c, c + 256))
            states.append("old" if np.array_equal(whole[w], old[w]) else
                          "new" if np.array_equal(whole[w], new[w]) else "mixed")
    out["chunk_states"] = sorted(set(states))
    # zarr writes a chunk to "<key>.<hex>.partial" and renames it
    out["leftover_temp_files"] = [p.name for p in (root / "full").rglob("*")
                                  if p.is_file() and not (p.name == "zarr.json" or p.name.isdigit())]
    shutil.rmtree(root / "full")  # free the space, as the message says
    small = LabelStore.create(root / "ro", [(512, 512)], chunk=256)
    small.write((), Region(0, 256, 0, 256), np.full((256, 256), 5, np.int32))
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    try:
        LabelStore.open(root / "ro").write((), Region(0, 512, 0, 512), np.ones((512, 512), np.int32))
    except LabelStoreError as exc:
        out["read_only"] = str(exc)
    out["ro_intact"] = bool((LabelStore.open(root / "ro", mode="r").read((), Region(0, 256, 0, 256)) == 5).all())
    print(json.dumps(out))
""")


def test_full_disk_and_read_only_store_give_clear_messages(tmp_path):
    """A 1 MiB tmpfs (in a user and mount namespace): a write that fills it, then the same
    filesystem remounted read-only."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a small tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "disk.py"
    script.write_text(_DISK_SCRIPT)
    cmd = ["unshare", "-rm", "sh", "-c",
           f'mount -t tmpfs -o size=1m tmpfs "{mnt}" && exec "{sys.executable}" "{script}" "{mnt}"']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 and "mount" in proc.stderr and "permission" in proc.stderr.lower():
        pytest.skip(f"no user namespaces here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "is full" in out["full"] and "intact" in out["full"], out
    assert out["chunk_states"] == ["new", "old"] and out["leftover_temp_files"] == []
    assert "read-only" in out["read_only"], out
    assert out["ro_intact"]


def test_a_failed_write_raises_after_its_other_chunks_have_landed(tmp_path, monkeypatch):
    """zarr raises the first failed chunk of an assignment while the others are still being
    written; the store's error must come only once they have ended, so that a retry or a
    clean-up right after it is not overtaken by a stale chunk."""
    import zarr.storage._local as local

    store = LabelStore.create(tmp_path / "s", [(1024, 1024)], chunk=256)
    real_put = local._put

    def slow_put(path, value, exclusive=False):  # the disk: one chunk fails at once, the rest are slow
        if path.parts[-3:] == ("c", "0", "0"):
            raise OSError(errno.ENOSPC, "No space left on device")
        time.sleep(0.3)
        return real_put(path, value, exclusive=exclusive)

    monkeypatch.setattr(local, "_put", slow_put)
    with pytest.raises(LabelStoreError, match="is full"):
        store.write((), Region(0, 1024, 0, 1024), np.full((1024, 1024), 7, np.int32))
    def on_disk():
        return sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "s" / "0" / "c").rglob("*") if p.is_file())

    chunks = on_disk()
    time.sleep(0.6)
    assert on_disk() == chunks
    assert len(chunks) == 15 and not any(".partial" in c for c in chunks)
    monkeypatch.setattr(local, "_put", real_put)
    view = LabelStore.open(tmp_path / "s").read((), Region(0, 1024, 0, 1024))
    assert (view[:256, :256] == 0).all() and (view[256:, :] == 7).all() and (view[:, 256:] == 7).all()


def test_store_in_a_non_empty_folder_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "something.txt").write_text("mine")
    with pytest.raises(LabelStoreError, match="not empty"):
        LabelStore.create(tmp_path / "x", [(100, 100)])
    assert (tmp_path / "x" / "something.txt").read_text() == "mine"
