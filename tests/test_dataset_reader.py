"""Dropping a COCO JSON or a YOLO data.yaml on a real viewer opens Image + Labels layers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.datasets.reader import get_reader

pytestmark = pytest.mark.widget


def _dataset(tmp_path, fmt):
    rng = np.random.default_rng(0)
    lab = np.zeros((2, 40, 50), np.int32)
    lab[0, 5:15, 5:20] = 1
    lab[0, 15:25, 5:20] = 2
    lab[1, 20:40, 30:50] = 1  # id 1 again, on another plane
    img = rng.integers(0, 255, (2, 40, 50), dtype=np.uint8)
    res = api.export_dataset(img, lab, tmp_path / fmt, format=fmt, label_classes=[{1: 0, 2: 1}],
                             class_names=["cell", "nucleus"], val_fraction=0, names=["s"])
    return res, img, lab


def _drop(viewer, qtbot, path):
    """A real drop event with the file's URL on the viewer's canvas widget."""
    from qtpy.QtCore import QMimeData, QPointF, Qt, QUrl
    from qtpy.QtGui import QDropEvent

    qt_viewer = viewer.window._qt_viewer
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    qt_viewer.dropEvent(event)
    qtbot.waitUntil(lambda: len(viewer.layers) >= 2, timeout=20000)


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_drop_dataset_opens_image_and_labels(make_napari_viewer, qtbot, tmp_path, fmt):
    res, img, lab = _dataset(tmp_path, fmt)
    target = res.files["train"] if fmt == "coco" else res.files["data"]
    viewer = make_napari_viewer(show=False)
    _drop(viewer, qtbot, target)
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    image, labels = viewer.layers
    order = [int(n[-1]) for n in labels.metadata["segsuite"]["images"]]
    np.testing.assert_array_equal(image.data, img[order])
    # plane 1 reuses id 1, so its ids are offset to stay unique in the stacked layer
    table = labels.features
    assert list(table.columns[:4]) == ["index", "label", "class_id", "class_name"]
    assert len(table) == 3 and table["label"].is_unique
    for row in table.itertuples():
        plane = labels.data[order.index(int(row.image[-1]))]
        truth = lab[int(row.image[-1])]
        mask = plane == row.label
        assert mask.any()
        original = np.unique(truth[mask])
        assert len(original) == 1
        assert row.class_name == ("nucleus" if original[0] == 2 else "cell")
    assert labels.metadata["segsuite"]["format"] == fmt


def test_get_reader_declines_foreign_files(tmp_path):
    foreign = tmp_path / "settings.json"
    foreign.write_text(json.dumps({"theme": "dark"}))
    broken = tmp_path / "half.json"
    broken.write_text('{"images": [')
    other = tmp_path / "env.yaml"
    other.write_text("name: base\ndependencies: [numpy]\n")
    assert get_reader(str(foreign)) is None
    assert get_reader(str(broken)) is None
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "image.png")) is None


def test_images_of_different_sizes_get_a_pair_each(make_napari_viewer, tmp_path):
    labels = [np.zeros((30, 40), np.int32), np.zeros((20, 25), np.int32)]
    labels[0][2:8, 2:8] = 1
    labels[1][5:9, 5:9] = 3
    images = [np.full(lab.shape, 9, np.uint8) for lab in labels]
    api.export_dataset(images, labels, tmp_path / "ds", format="yolo", names=["a", "b"], val_fraction=0.5)
    viewer = make_napari_viewer(show=False)
    viewer.open(str(tmp_path / "ds" / "data.yaml"), plugin="napari-segsuite")
    names = sorted(layer.name for layer in viewer.layers)
    assert names == ["ds a [images]", "ds a [labels]", "ds b [images]", "ds b [labels]"]
    assert viewer.layers["ds b [labels]"].features["class_name"].tolist() == ["object"]
