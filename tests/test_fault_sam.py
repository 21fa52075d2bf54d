"""Faults in the SAM dock's commit loop: nothing committed is lost, nothing lands in the wrong labels."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget

pytestmark = pytest.mark.widget


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (60, 80), dtype=np.uint8), rng.integers(0, 255, (60, 80), dtype=np.uint8)


@pytest.fixture
def setup(make_napari_viewer, tiny_sam_path, images, tmp_path):
    viewer = make_napari_viewer(show=False)
    a = viewer.add_image(images[0], name="A")
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(tiny_sam_path)
    widget.device.value = "cpu"
    widget.autosave_dir.value = str(tmp_path / "autosave")
    widget.image.value = a
    return viewer, a, widget


def _idle(qtbot, widget, timeout=60000):
    qtbot.waitUntil(lambda: not widget.preview_busy, timeout=timeout)


def _click_commit(qtbot, widget, r, c, z=None):
    points, _ = widget.ensure_prompt_layers()
    points.add([r, c] if z is None else [z, r, c])
    _idle(qtbot, widget)
    assert widget._objects, widget.message.value
    widget.commit()


def _ids(layer):
    return sorted(int(i) for i in np.unique(np.asarray(layer.data)) if i)


def _journal(folder, image, name):
    from napari_segsuite.core.fingerprint import ImageIdentity
    from napari_segsuite.core.journal import AutosaveJournal

    return AutosaveJournal(folder, ImageIdentity.of(image.data, name), f"{name} [sam]", image.data.shape)


def _leftovers(folder):
    return [p for p in folder.rglob("*") if p.suffix in (".tmp", ".part")]


def test_deleting_the_target_loses_nothing(setup, qtbot, tmp_path):
    viewer, a, widget = setup
    _click_commit(qtbot, widget, 15, 20)
    _click_commit(qtbot, widget, 45, 60)
    target = viewer.layers["A [sam]"]
    two = np.array(target.data, copy=True)
    assert _ids(target) == [1, 2]
    viewer.layers.remove(target)
    widget.overwrite.value = True  # the random tiny SAM's third mask may cover the first two
    _click_commit(qtbot, widget, 30, 40)
    target = viewer.layers["A [sam]"]
    data = np.asarray(target.data)
    assert "rebuilt from the autosave journal (2 object(s)" in widget.message.value, widget.message.value
    assert 3 in _ids(target) and 1 not in np.unique(data[data == 3])  # the new object took id 3, not 1
    np.testing.assert_array_equal(data[data != 3], two[data != 3])  # the first two objects are back
    journal = _journal(tmp_path / "autosave", a, "A")
    np.testing.assert_array_equal(journal.replay(), target.data)


def test_commit_after_switching_image_is_refused(setup, qtbot, images):
    viewer, a, widget = setup
    b = viewer.add_image(images[1], name="B")
    widget.image.value = a
    points, _ = widget.ensure_prompt_layers()
    points.add([30, 30])
    _idle(qtbot, widget)
    assert widget._objects
    widget.image.value = b  # the preview still shows A's mask
    widget.commit()
    assert "B [sam]" not in viewer.layers and "A [sam]" not in viewer.layers
    assert ("computed for image 'A'" in widget.message.value  # refused, or the preview was dropped on the switch
            or "Nothing to commit" in widget.message.value), widget.message.value


def test_commit_after_switching_plane_or_model_is_refused(make_napari_viewer, qtbot, tiny_sam_path, tmp_path):
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    viewer = make_napari_viewer(show=False)
    stack = np.random.default_rng(1).integers(0, 255, (3, 40, 50), dtype=np.uint8)
    image = viewer.add_image(stack, name="S")
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(tiny_sam_path)
    widget.device.value = "cpu"
    widget.autosave_dir.value = str(tmp_path / "auto")
    widget.image.value = image
    viewer.dims.set_point(0, 0)
    points, _ = widget.ensure_prompt_layers()
    points.add([0, 20, 20])
    _idle(qtbot, widget)
    viewer.dims.set_point(0, 1)
    widget._timer.stop()  # commit before the debounced re-preview of the new plane
    widget.commit()
    assert "S [sam]" not in viewer.layers
    assert "computed for plane" in widget.message.value or "Nothing to commit" in widget.message.value
    viewer.dims.set_point(0, 0)
    _idle(qtbot, widget)
    other = build_tiny_sam(tmp_path / "other_sam.pth", seed=7)
    widget.models.local.value = str(other)
    widget._timer.stop()
    widget.commit()
    assert "S [sam]" not in viewer.layers
    assert "another model" in widget.message.value or "Nothing to commit" in widget.message.value


def test_restore_never_loads_another_images_labels(setup, qtbot, images, make_napari_viewer, tiny_sam_path,
                                                   tmp_path):
    viewer, _, widget = setup
    _click_commit(qtbot, widget, 30, 30)
    assert _ids(viewer.layers["A [sam]"]) == [1]
    other = make_napari_viewer(show=False)
    imposter = other.add_image(images[1], name="A")  # same name and shape, other pixels
    w2 = SamPromptWidget(other)
    w2.autosave_dir.value = str(tmp_path / "autosave")
    w2.image.value = imposter
    w2.restore_autosave()
    assert "belongs to another image" in w2.message.value
    assert not np.asarray(other.layers["A [sam]"].data).any()
    # the same pixels under the same name restore
    twin = make_napari_viewer(show=False)
    same = twin.add_image(images[0].copy(), name="A")
    w3 = SamPromptWidget(twin)
    w3.autosave_dir.value = str(tmp_path / "autosave")
    w3.image.value = same
    w3.restore_autosave()
    np.testing.assert_array_equal(twin.layers["A [sam]"].data, viewer.layers["A [sam]"].data)


def test_unwritable_autosave_folder_is_shown_and_commit_still_works(setup, qtbot, tmp_path, notes):
    viewer, _, widget = setup
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the autosave folder should be")
    widget.autosave_dir.value = str(blocker / "autosave")
    _click_commit(qtbot, widget, 30, 30)
    assert _ids(viewer.layers["A [sam]"]) == [1]
    assert "AUTOSAVE FAILED" in widget.message.value
    assert any("Autosave failed" in n for n in notes)
    assert not _leftovers(tmp_path)
    widget.autosave_dir.value = str(tmp_path / "good")  # a writable folder again: the next commit is saved
    _click_commit(qtbot, widget, 10, 10)
    assert "AUTOSAVE FAILED" not in widget.message.value


def test_undo_and_redo_are_journaled(setup, qtbot, tmp_path):
    viewer, a, widget = setup
    _click_commit(qtbot, widget, 15, 20)
    _click_commit(qtbot, widget, 45, 60)
    widget.undo_button.native.click()
    target = viewer.layers["A [sam]"]
    journal = _journal(tmp_path / "autosave", a, "A")
    np.testing.assert_array_equal(journal.replay(), target.data)
    assert [e.kind for e in journal.entries()] == ["commit", "commit", "undo"]


SUBPROCESS = textwrap.dedent("""
    import os, sys, time, resource, signal
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication
    from napari_segsuite.widgets.base import LOCAL
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget
    mode, sam, folder, image_path, out = sys.argv[1:6]
    viewer = napari.Viewer(show=False)
    a = viewer.add_image(np.load(image_path), name="A")
    w = SamPromptWidget(viewer)
    w.models.model.value = LOCAL; w.models.local.value = sam; w.device.value = "cpu"
    w.autosave_dir.value = folder; w.image.value = a
    def wait(cond, t=120):
        end = time.monotonic() + t
        while not cond() and time.monotonic() < end:
            QApplication.processEvents(); time.sleep(0.005)
    def click_commit(r, c):
        pts, _ = w.ensure_prompt_layers(); pts.add([r, c]); wait(lambda: not w.preview_busy and w._objects)
        w.commit()
    click_commit(15, 20)
    if mode == "full":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # the disk is full from now on
    click_commit(45, 60)
    np.save(out, np.asarray(viewer.layers["A [sam]"].data)) if mode == "crash" else None
    print("MESSAGE", w.message.value, flush=True)
    if mode == "crash":
        os._exit(3)  # a crash right after the commit: no cleanup at all
""")


def test_crash_right_after_commit_restores_pixel_for_pixel(tiny_sam_path, images, tmp_path, make_napari_viewer):
    np.save(tmp_path / "a.npy", images[0])
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, "crash", str(tiny_sam_path), str(tmp_path / "auto"),
                           str(tmp_path / "a.npy"), str(tmp_path / "labels.npy")],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 3, proc.stderr[-3000:]
    viewer = make_napari_viewer(show=False)
    a = viewer.add_image(images[0], name="A")
    widget = SamPromptWidget(viewer)
    widget.autosave_dir.value = str(tmp_path / "auto")
    widget.image.value = a
    widget.restore_autosave()
    expected = np.load(tmp_path / "labels.npy")
    assert sorted(np.unique(expected))[1:] == [1, 2]
    np.testing.assert_array_equal(viewer.layers["A [sam]"].data, expected)


def test_full_disk_is_shown_and_leaves_no_partial_file(tiny_sam_path, images, tmp_path):
    np.save(tmp_path / "a.npy", images[0])
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, "full", str(tiny_sam_path), str(tmp_path / "auto"),
                           str(tmp_path / "a.npy"), str(tmp_path / "labels.npy")],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = [line for line in proc.stdout.splitlines() if line.startswith("MESSAGE")][-1]
    assert "Committed label(s) 2" in message and "AUTOSAVE FAILED" in message, message
    assert not _leftovers(tmp_path)
    journal_dirs = list((tmp_path / "auto").glob("*.segsuite-journal"))
    assert len(journal_dirs) == 1 and len(list(journal_dirs[0].glob("*.npz"))) == 1  # the first commit


@pytest.mark.parametrize("which", ["sam points", "sam preview"])
def test_prompt_layer_deleted_while_the_preview_runs(setup, qtbot, which, notes):
    viewer, _a, widget = setup
    points, _ = widget.ensure_prompt_layers()
    points.add([30, 30])
    qtbot.waitUntil(lambda: widget.preview_busy, timeout=10000)  # the plane encodes, then the prompt decodes
    viewer.layers.remove(f"A [{which}]")
    _idle(qtbot, widget)
    assert not any("Traceback" in n or "Error:" in n for n in notes), notes
    assert "A [sam]" not in viewer.layers  # nothing was committed by the deletion
    # the loop goes on: the prompt layers come back and the next object commits
    _click_commit(qtbot, widget, 15, 20)
    assert _ids(viewer.layers["A [sam]"]) == [1]
    assert f"A [{which}]" in viewer.layers
