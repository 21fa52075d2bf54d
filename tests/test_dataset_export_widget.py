"""The Export dataset dock, opened from the Instance dock, in a real viewer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_segsuite import api
from napari_segsuite.widgets.dataset_export import DOCK_NAME, classes_from_features, merge_classes
from napari_segsuite.widgets.instance import InstanceWidget

pytestmark = pytest.mark.widget


def _click(button):
    QTest.mouseClick(button.native, Qt.MouseButton.LeftButton)


def _stack(n=2, size=(64, 80)):
    lab = np.zeros((n, *size), np.int32)
    for k in range(n):
        lab[k, 5:20, 5:30] = 3 * k + 1
        lab[k, 8:12, 10:15] = 0  # a hole
        lab[k, 20:30, 5:30] = 3 * k + 2  # touching
        lab[k, size[0] - 10:, size[1] - 10:] = 3 * k + 3  # cut by the border
    return lab


def _open_panel(viewer, qtbot):
    instance = InstanceWidget(viewer)
    viewer.window.add_dock_widget(instance, name="Instance Segmentation")
    _click(instance.export_dataset_button)
    panel = instance.export_panel
    assert panel is not None and DOCK_NAME in viewer.window.dock_widgets
    _click(instance.export_dataset_button)  # a second click shows the same panel
    assert instance.export_panel is panel
    return panel


def test_export_from_instance_dock(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=False)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (2, 64, 80), dtype=np.uint8)
    lab = _stack()
    viewer.add_image(img, name="cells", scale=(1, 0.5, 0.5), translate=(0, 4, 2))
    features = pd.DataFrame({
        "label": [1, 2, 3, 4, 5, 6, 99],  # 99 was painted over: its row is ignored
        "class_id": [0, 1, 0, 0, 1, 0, 1],
        "class_name": ["cell", "nucleus", "cell", "cell", "nucleus", "cell", "nucleus"],
    })
    viewer.add_labels(lab, name="cells [instance]", features=features, scale=(1, 0.5, 0.5))
    panel = _open_panel(viewer, qtbot)
    assert panel.labels_layer.value.name == "cells [instance]"
    assert panel.image_layer.value.name == "cells"
    panel.out.value = tmp_path / "ds"
    panel.format.value = "yolo"
    panel.val_fraction.value = 0.5
    _click(panel.export_button)
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=60000)
    assert panel.progress.value == 100, panel.message.value
    assert "YOLO: 2 images (1 train, 1 val), 6 objects, 2 classes" in panel.message.value
    back = api.import_dataset(tmp_path / "ds")
    assert back.class_names == {0: "cell", 1: "nucleus"}
    for name, labels, classes in zip(back.names, back.labels, back.label_classes, strict=True):
        k = int(name[-1])
        truth = lab[k]
        ids = [i for i in np.unique(truth) if i]
        for new, old in enumerate(ids, 1):
            a, b = labels == new, truth == old
            assert (a & b).sum() / (a | b).sum() >= 0.95
            assert classes[new] == features.set_index("label").class_id[old]
    viewer.screenshot(str(tmp_path / "dock.png"), canvas_only=False, flash=False)


def test_cancel_leaves_no_folder(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=False)
    lab = _stack(400, (96, 96))
    viewer.add_image(np.zeros(lab.shape, np.uint8), name="big")
    viewer.add_labels(lab, name="big [instance]")
    panel = _open_panel(viewer, qtbot)
    panel.out.value = tmp_path / "ds"
    _click(panel.export_button)
    _click(panel.cancel_button)
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=60000)
    qtbot.waitUntil(lambda: panel.export_button.enabled, timeout=60000)
    assert panel.message.value == "Cancelled; no dataset was written."
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_a_message(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.zeros((30, 30), np.uint8), name="empty")
    viewer.add_labels(np.zeros((30, 30), np.int32), name="empty [instance]")
    panel = _open_panel(viewer, qtbot)
    panel.out.value = tmp_path / "ds"
    _click(panel.export_button)
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=30000)
    assert "no objects" in panel.message.value
    assert any("no objects" in n for n in notes)
    assert list(tmp_path.iterdir()) == []
    panel.out.line_edit.value = ""
    _click(panel.export_button)
    assert panel.message.value == "Choose the dataset folder."


def test_all_labels_layers_with_clashing_class_ids(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer(show=False)
    a, b = np.zeros((40, 40), np.int32), np.zeros((30, 50), np.int32)
    a[2:10, 2:10], b[5:15, 5:15] = 1, 1
    viewer.add_image(np.zeros(a.shape, np.uint8), name="a")
    viewer.add_image(np.zeros(b.shape, np.uint8), name="b")
    viewer.add_labels(a, name="a [sam]", features=pd.DataFrame({"index": [1], "class_id": [0],
                                                                "class_name": ["cell"]}))
    viewer.add_labels(b, name="b [sam]", features=pd.DataFrame({"index": [1], "class_id": [0],
                                                                "class_name": ["nucleus"]}))
    panel = _open_panel(viewer, qtbot)
    panel.scope.value = "all Labels layers"
    panel.out.value = tmp_path / "ds"
    _click(panel.export_button)
    qtbot.waitUntil(lambda: not panel.jobs.busy, timeout=30000)
    back = api.import_dataset(tmp_path / "ds")
    assert back.class_names == {0: "cell", 1: "nucleus"}
    assert dict(zip(back.names, back.label_classes, strict=True)) == {"a": {1: 0}, "b": {1: 1}}


def test_classes_from_features_forms():
    assert classes_from_features(pd.DataFrame({"index": [1, 2], "class_name": ["b", "a"]})) == (
        {1: 1, 2: 0}, {0: "a", 1: "b"})
    assert classes_from_features(pd.DataFrame({"label": [3], "score": [0.5]})) == (None, None)
    lcs, names = merge_classes([({1: 0}, {0: "x"}), ({1: 1}, {1: "y"})])
    assert lcs == [{1: 0}, {1: 1}] and names == {0: "x", 1: "y"}
