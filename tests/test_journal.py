"""The autosave journal (pure): append-only, atomic, tied to its image, failures raised."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_segsuite.core.errors import AutosaveError
from napari_segsuite.core.fingerprint import ImageIdentity, fingerprint
from napari_segsuite.core.journal import AutosaveJournal


@pytest.fixture
def image(rng):
    return (rng.random((3, 40, 50)) * 255).astype(np.uint8)


def _journal(folder, image, name="cells"):
    return AutosaveJournal(folder, ImageIdentity.of(image, name), f"{name} [sam]", image.shape)


def _leftovers(folder):
    return [p for p in folder.rglob("*") if p.suffix in (".tmp", ".part")]


def test_replay_restores_every_commit_in_order(tmp_path, image):
    journal = _journal(tmp_path, image)
    labels = np.zeros(image.shape, dtype=np.int32)
    history = []
    for k in range(1, 6):
        old = labels.copy()
        labels[k % 3, 5 * k: 5 * k + 8, 3 * k: 3 * k + 9] = k  # later objects cover parts of earlier ones
        journal.append_difference(old, labels)
        history.append(labels.copy())
    old = labels.copy()
    labels[labels == 5] = 0  # an undo is recorded as a change too
    journal.append_difference(old, labels, kind="undo")
    assert [e.kind for e in journal.entries()] == ["commit"] * 5 + ["undo"]
    np.testing.assert_array_equal(journal.replay(), labels)
    assert journal.append_difference(labels, labels) is None  # nothing changed: nothing written
    assert not _leftovers(tmp_path)


def test_another_image_never_sees_the_journal(tmp_path, image):
    journal = _journal(tmp_path, image)
    labels = np.zeros(image.shape, dtype=np.int32)
    labels[0, :5, :5] = 1
    journal.append_difference(np.zeros_like(labels), labels)
    other = image.copy()
    other[1, 10, 10] ^= 1  # one pixel differs: same name, shape and dtype
    assert fingerprint(other) != fingerprint(image)
    theirs = _journal(tmp_path, other)
    assert not theirs.exists()
    assert theirs.others() == [journal.path]
    # a journal folder copied over another image's name still refuses to restore
    theirs.path.parent.mkdir(exist_ok=True)
    journal.path.rename(theirs.path)
    with pytest.raises(AutosaveError, match="other pixels"):
        theirs.replay()


def test_unwritable_folder_raises_and_leaves_nothing(tmp_path, image):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the autosave folder should be")
    journal = _journal(blocker / "autosave", image)
    with pytest.raises(AutosaveError, match="Autosave failed"):
        journal.append((np.array([0]), np.array([0]), np.array([0])), np.array([1]))
    assert not _leftovers(tmp_path)


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from napari_segsuite.core.errors import AutosaveError
    from napari_segsuite.core.fingerprint import ImageIdentity
    from napari_segsuite.core.journal import AutosaveJournal
    image = np.arange(200 * 300, dtype=np.uint16).reshape(200, 300)
    journal = AutosaveJournal(sys.argv[1], ImageIdentity.of(image, "big"), "big [sam]", image.shape)
    small = np.zeros(image.shape, dtype=np.int32); small[:4, :4] = 1
    journal.append_difference(np.zeros_like(small), small)      # fits
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)               # a full disk: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    big = small.copy(); big[10:, :] = 2                         # ~470 kB entry: does not fit
    try:
        journal.append_difference(small, big)
    except AutosaveError as exc:
        print("RAISED", exc)
    print("REPLAY", int((journal.replay() == 1).sum()), int((journal.replay() == 2).sum()))
""")


def test_full_disk_raises_keeps_earlier_entries_and_no_partial_file(tmp_path):
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RAISED Autosave failed" in out.stdout
    assert "REPLAY 16 0" in out.stdout  # the first commit is intact, the failed one absent
    assert not _leftovers(tmp_path)


CRASH = textwrap.dedent("""
    import os, sys
    import numpy as np
    from napari_segsuite.core.fingerprint import ImageIdentity
    from napari_segsuite.core.journal import AutosaveJournal
    image = np.load(sys.argv[2])
    journal = AutosaveJournal(sys.argv[1], ImageIdentity.of(image, "cells"), "cells [sam]", image.shape)
    labels = np.zeros(image.shape, dtype=np.int32)
    for k in range(1, 4):
        old = labels.copy(); labels[:, 5 * k:5 * k + 4, :] = k
        journal.append_difference(old, labels)
    np.save(sys.argv[3], labels)
    os._exit(9)  # no cleanup, no atexit: a crash right after the third commit
""")


def test_crash_after_commit_then_replay(tmp_path, image):
    np.save(tmp_path / "image.npy", image)
    out = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path / "auto"), str(tmp_path / "image.npy"),
                          str(tmp_path / "expected.npy")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 9, out.stderr
    journal = _journal(tmp_path / "auto", image)
    np.testing.assert_array_equal(journal.replay(), np.load(tmp_path / "expected.npy"))


def test_large_arrays_are_fingerprinted_from_sampled_planes(monkeypatch):
    import napari_segsuite.core.fingerprint as fp

    monkeypatch.setattr(fp, "FULL_HASH_BYTES", 1000)
    stack = np.zeros((40, 20, 20), dtype=np.uint8)
    base = fingerprint(stack)
    sampled = stack.copy()
    sampled[0, 3, 3] = 1  # plane 0 is always sampled
    assert fingerprint(sampled) != base
    assert fingerprint(stack, extra="x") != base


def test_replay_into_labels_elsewhere_equals_replay(tmp_path, image, rng):
    """Region by region into an array held elsewhere: the same labels as replay() where the journal wrote."""
    journal = _journal(tmp_path, image)
    labels = np.zeros(image.shape, np.int32)
    for k in range(1, 6):
        z, r, c = rng.integers(0, 3), rng.integers(0, 30), rng.integers(0, 40)
        old = labels.copy()
        labels[z, r: r + 10, c: c + 12] = k
        journal.append_difference(old, labels)
    elsewhere = np.zeros(image.shape, np.int32)
    boxes = []

    def read(lead, box):
        boxes.append(box)
        r0, r1, c0, c1 = box
        return elsewhere[lead][r0:r1, c0:c1]

    def write(lead, box, block):
        r0, r1, c0, c1 = box
        elsewhere[lead][r0:r1, c0:c1] = block

    n = journal.replay_into(read, write, max_pixels=64)  # blocks of 8 x 8 at most
    np.testing.assert_array_equal(elsewhere, journal.replay())
    assert n >= int((labels > 0).sum()) and all((b[1] - b[0]) * (b[3] - b[2]) <= 64 for b in boxes)


def test_replay_into_a_volume_larger_than_memory_reads_only_the_written_regions(tmp_path):
    """A journal of a (4, 40,000, 40,000) int32 volume (25.6 GB, more than this machine holds) replays
    into a labels store on disk: only the regions of its entries are read and written, and the
    process's memory rises by far less than one plane."""
    from napari_segsuite.core.label_store import LabelStore, pyramid_shapes
    from napari_segsuite.core.regions import Region
    from napari_segsuite.testing.large_images import PeakMemory

    shape = (4, 40_000, 40_000)
    identity = ImageIdentity.of(np.zeros((8, 8), np.uint8), "slide")
    journal = AutosaveJournal(tmp_path / "autosave", identity, "slide [sam]", shape)
    windows = [(1, 100, 200), (1, 30_000, 31_000), (3, 39_700, 39_600), (1, 100, 300)]
    for k, (z, r, c) in enumerate(windows, start=1):
        rr, cc = np.mgrid[r: r + 256, c: c + 256]
        keep = (rr < shape[1]) & (cc < shape[2])
        journal.append((np.full(int(keep.sum()), z), rr[keep], cc[keep]), np.full(int(keep.sum()), k))
    store = LabelStore.create(tmp_path / "labels.zarr", pyramid_shapes(shape))
    reads: list[int] = []

    def read(lead, box):
        block = store.read(lead, Region(*box))
        reads.append(block.size)
        return block

    with PeakMemory() as peak:
        n = journal.replay_into(read, lambda lead, box, block: store.write(lead, Region(*box), block))
    assert n == 4 * 256 * 256  # every pixel of every entry changed (entry 4 over part of entry 1)
    assert sum(reads) <= len(windows) * 256 * 256 and max(reads) <= 256 * 256
    assert peak.rise < 200 * 2**20, peak.rise  # one plane alone is 6.4 GB
    # the labels are where the journal put them; the last write wins where windows overlap
    got = store.read((1,), Region(100, 356, 200, 556))
    assert (got[:, :100] == 1).all() and (got[:, 100:] == 4).all()
    assert (store.read((1,), Region(30_000, 30_256, 31_000, 31_256)) == 2).all()
    assert (store.read((3,), Region(39_700, 39_956, 39_600, 39_856)) == 3).all()
    assert not store.read((0,), Region(0, 512, 0, 512)).any()
