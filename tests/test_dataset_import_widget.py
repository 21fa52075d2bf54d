"""The Import dataset dock, opened from the Instance dock, in a real viewer: a worker with progress and Cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_segsuite import api
from napari_segsuite.widgets.dataset_import import DOCK_NAME
from napari_segsuite.widgets.instance import InstanceWidget

pytestmark = pytest.mark.widget


def _click(button):
    QTest.mouseClick(button.native, Qt.MouseButton.LeftButton)


def _type_path(panel, path):
    """Type the path into the dock's path field as a user does."""
    edit = panel.path.line_edit.native
    edit.clear()
    QTest.keyClicks(edit, str(path))
    QTest.keyClick(edit, Qt.Key.Key_Return)


def _labels(n=3, size=(48, 64)):
    lab = np.zeros((n, *size), np.int32)
    for k in range(n):
        lab[k, 4:20, 4:30] = 1
        lab[k, 8:12, 10:15] = 0  # a hole
        lab[k, 20:30, 4:30] = 2  # touching
        lab[k, size[0] - 8:, size[1] - 9:] = 3  # cut by the border
    lab[n - 1] = 0  # an empty image
    return lab


def _open(viewer):
    instance = InstanceWidget(viewer)
    viewer.window.add_dock_widget(instance, name="Instance Segmentation")
    _click(instance.import_dataset_button)
    panel = instance.import_panel
    assert panel is not None and DOCK_NAME in viewer.window.dock_widgets
    _click(instance.import_dataset_button)  # a second click shows the same panel
    assert instance.import_panel is panel
    return panel


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_import_from_instance_dock(make_napari_viewer, qtbot, tmp_path, fmt):
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(1)
    lab = _labels()
    img = rng.integers(0, 255, lab.shape, dtype=np.uint8)
    classes = [{1: 0, 2: 1, 3: 0}, {1: 0, 2: 1, 3: 0}, {}]
    api.export_dataset(img, lab, tmp_path / "ds", format=fmt, label_classes=classes,
                       class_names=["cell", "nucleus"], val_fraction=0, names=["s"])
    panel = _open(viewer)
    progress_seen = []
    panel.jobs.on_progress = lambda p: (panel.panel.on_progress(p), progress_seen.append(p.fraction))
    _type_path(panel, tmp_path / "ds")
    _click(panel.import_button)
    assert not panel.import_button.enabled and panel.cancel_button.enabled  # running in a worker
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=60000)
    assert panel.progress.value == 100, panel.message.value
    assert progress_seen[-1] == 1.0 and len(progress_seen) >= 3
    assert f"{fmt.upper()}: 3 image(s), 6 objects, 2 class(es) (cell, nucleus)" in panel.message.value
    labels = viewer.layers["ds [labels]"]
    image = viewer.layers["ds [images]"]
    assert labels.data.shape == lab.shape and np.array_equal(image.data, img)
    table = labels.features.set_index("label")
    for k in range(2):
        for old in (1, 2, 3):
            new = [i for i in np.unique(labels.data[k][lab[k] == old]) if i]
            assert len(new) == 1
            a, b = labels.data[k] == new[0], lab[k] == old
            iou = (a & b).sum() / (a | b).sum()
            assert iou == 1.0 if fmt == "coco" else iou >= 0.95
            assert table.class_name[new[0]] == ("nucleus" if old == 2 else "cell")
    assert not labels.data[2].any()
    assert labels.metadata["segsuite"]["format"] == fmt


def test_cancel_adds_no_layer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=False)
    lab = np.zeros((300, 64, 64), np.int32)
    lab[:, 10:30, 10:30] = 1
    api.export_dataset(np.zeros(lab.shape, np.uint8), lab, tmp_path / "big", format="coco", val_fraction=0)
    panel = _open(viewer)
    _type_path(panel, tmp_path / "big")
    _click(panel.import_button)
    _click(panel.cancel_button)  # at once: the job stops at its next image
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=60000)
    assert panel.message.value == "Cancelled; no layer was added."
    assert len(viewer.layers) == 0
    assert panel.import_button.enabled and not panel.cancel_button.enabled


def test_bad_dataset_is_a_message(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer(show=False)
    panel = _open(viewer)
    foreign = tmp_path / "package.json"
    foreign.write_text(json.dumps({"name": "x", "version": "1"}))
    _type_path(panel, foreign)
    _click(panel.import_button)
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=30000)
    assert "COCO" in panel.message.value and any("COCO" in n for n in notes)
    corrupt = tmp_path / "broken.json"
    corrupt.write_text('{"images": [')
    _type_path(panel, corrupt)
    _click(panel.import_button)
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=30000)
    assert "broken.json" in panel.message.value
    _type_path(panel, tmp_path / "nothing-here")
    _click(panel.import_button)
    assert "no such file or folder" in panel.message.value
    assert len(viewer.layers) == 0
