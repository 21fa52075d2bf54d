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
