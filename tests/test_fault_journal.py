"""Every write of the SAM dock into its target goes to the autosave journal.

Propagation through planes and SAM 3 concept tracking write many planes at once; a
deleted target layer or a crash right afterwards must lose none of it (restored pixel
for pixel), and a target deleted while the job runs is rebuilt before the result lands.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_segsuite.testing.stacks import moving_disk_stack
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget

pytestmark = pytest.mark.widget

SCALE, TRANSLATE = (2.0, 0.5, 0.5), (1.0, 3.0, -2.0)


def _dock(viewer, model, folder):
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(model)
    widget.device.value = "cpu"
    widget.autosave_dir.value = str(folder)
    return widget


@pytest.fixture
def stack_dock(make_napari_viewer, tiny_sam_path, tmp_path):
    viewer = make_napari_viewer(show=False)
    stack, truth = moving_disk_stack()
    image = viewer.add_image(stack, name="cells", scale=SCALE, translate=TRANSLATE)
    widget = _dock(viewer, tiny_sam_path, tmp_path / "autosave")
    widget.image.value = image
    viewer.dims.set_point(0, TRANSLATE[0] + SCALE[0] * 3)  # plane z=3
    return viewer, image, widget, stack, truth


def _commit_on_plane_3(qtbot, widget, truth):
    r, c = np.argwhere(truth[3]).mean(axis=0)
    points, _ = widget.ensure_prompt_layers()
    points.add([3, r, c])
    qtbot.waitUntil(lambda: not widget.preview_busy and bool(widget._objects), timeout=60000)
    widget.commit()
    assert "Committed label(s) 1" in widget.message.value, widget.message.value


def _propagate(qtbot, widget):
    widget.overwrite.value = True
    widget.prop_label.value = 1
    widget.prop_max.value = 2
    widget.prop_floor.value = 0.0
    widget.propagate()


def _wait(qtbot, widget, timeout=120000):
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=timeout)
    assert widget.jobs.last_error is None, widget.jobs.last_error


def _planes_with(data, label=1):
    return sorted(int(z) for z in np.nonzero((np.asarray(data) == label).reshape(len(data), -1).any(axis=1))[0])


def test_propagation_is_journaled_and_a_deleted_target_comes_back(stack_dock, qtbot):
    viewer, image, widget, _stack, truth = stack_dock
    _commit_on_plane_3(qtbot, widget, truth)
    _propagate(qtbot, widget)
    _wait(qtbot, widget)
    target = viewer.layers["cells [sam]"]
    after = np.array(target.data, copy=True)
    assert len(_planes_with(after)) > 1, widget.message.value  # the object is on more planes than plane 3
    journal = widget.journal_for(image, target)
    assert [e.kind for e in journal.entries()] == ["commit", "propagation"]
    np.testing.assert_array_equal(journal.replay(), after)
    viewer.layers.remove(target)  # napari cannot undo this
    widget.restore_autosave()
    restored = viewer.layers["cells [sam]"]
    np.testing.assert_array_equal(restored.data, after)
    np.testing.assert_allclose(restored.scale, SCALE)
    np.testing.assert_allclose(restored.translate, TRANSLATE)
    # Undo (of the restore) is journaled too: a replay always gives the layer as it is
    widget.undo_button.changed.emit()
    assert "Undid the restore of the autosave" in widget.message.value, widget.message.value
    np.testing.assert_array_equal(journal.replay(), restored.data)
    widget.redo_button.changed.emit()
    np.testing.assert_array_equal(restored.data, after)
    np.testing.assert_array_equal(journal.replay(), after)


def test_target_deleted_while_propagating_is_rebuilt_before_the_result_lands(stack_dock, qtbot):
    viewer, image, widget, _stack, truth = stack_dock
    _commit_on_plane_3(qtbot, widget, truth)
    committed = np.array(viewer.layers["cells [sam]"].data, copy=True)
    _propagate(qtbot, widget)
    assert widget.jobs.busy
    viewer.layers.remove("cells [sam]")  # while the job runs
    _wait(qtbot, widget)
    target = viewer.layers["cells [sam]"]
    data = np.asarray(target.data)
    assert "rebuilt from the autosave journal" in widget.message.value, widget.message.value
    assert "Propagated label 1" in widget.message.value
    np.testing.assert_array_equal(data[3], committed[3])  # the committed plane is back
    assert len(_planes_with(data)) > 1  # and the propagation landed in the rebuilt layer
    np.testing.assert_array_equal(widget.journal_for(image, target).replay(), data)


CRASH = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication
    from napari_segsuite.testing.stacks import moving_disk_stack
    from napari_segsuite.widgets.base import LOCAL
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget
    sam, folder, out = sys.argv[1:4]
    stack, truth = moving_disk_stack()
    viewer = napari.Viewer(show=False)
    image = viewer.add_image(stack, name="cells", scale=(2.0, 0.5, 0.5), translate=(1.0, 3.0, -2.0))
    w = SamPromptWidget(viewer)
    w.models.model.value = LOCAL; w.models.local.value = sam; w.device.value = "cpu"
    w.autosave_dir.value = folder; w.image.value = image
    viewer.dims.set_point(0, 1.0 + 2.0 * 3)
    def wait(cond, t=180):
        end = time.monotonic() + t
        while not cond() and time.monotonic() < end:
            QApplication.processEvents(); time.sleep(0.005)
    r, c = np.argwhere(truth[3]).mean(axis=0)
    pts, _ = w.ensure_prompt_layers(); pts.add([3, r, c])
    wait(lambda: not w.preview_busy and bool(w._objects))
    w.commit()
    w.overwrite.value = True; w.prop_label.value = 1; w.prop_max.value = 2; w.prop_floor.value = 0.0
    w.propagate()
    wait(lambda: not w.jobs.busy)
    np.save(out, np.asarray(viewer.layers["cells [sam]"].data))
    print("MESSAGE", w.message.value, flush=True)
    os._exit(3)  # a crash right after the propagation: no cleanup at all
""")


def test_crash_right_after_propagation_restores_pixel_for_pixel(tiny_sam_path, tmp_path, make_napari_viewer):
    proc = subprocess.run([sys.executable, "-c", CRASH, str(tiny_sam_path), str(tmp_path / "auto"),
                           str(tmp_path / "labels.npy")],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Propagated label 1" in proc.stdout, proc.stdout[-2000:]
    expected = np.load(tmp_path / "labels.npy")
    assert len(_planes_with(expected)) > 1
    viewer = make_napari_viewer(show=False)
    stack, _ = moving_disk_stack()
    image = viewer.add_image(stack, name="cells", scale=SCALE, translate=TRANSLATE)
    widget = _dock(viewer, tiny_sam_path, tmp_path / "auto")
    widget.image.value = image
    widget.restore_autosave()
    np.testing.assert_array_equal(viewer.layers["cells [sam]"].data, expected)


def test_concept_tracking_is_journaled_and_restored(make_napari_viewer, qtbot, tmp_path):
    from napari_segsuite.testing.tiny_trackers import build_tiny_sam3_video

    sam3 = build_tiny_sam3_video(tmp_path / "sam3")
    stack, _ = moving_disk_stack(n=4)
    frames = ((stack > 0) * 200 + 20).astype(np.uint8)
    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(frames, name="movie", scale=(3.0, 0.5, 0.5))
    widget = _dock(viewer, sam3, tmp_path / "autosave")
    widget.find_text.value = "cell"
    widget.find_conf.value = 0.2
    widget.image.value = image
    widget.track_concept()
    _wait(qtbot, widget, 300000)
    target = viewer.layers["movie [sam]"]
    after = np.array(target.data, copy=True)
    assert after.any(), widget.message.value
    journal = widget.journal_for(image, target)
    assert [e.kind for e in journal.entries()] == ["tracking"]
    viewer.layers.remove(target)
    widget.restore_autosave()
    np.testing.assert_array_equal(viewer.layers["movie [sam]"].data, after)
