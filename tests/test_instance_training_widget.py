"""The training sections of the Instance dock in a real viewer: train, see the curve, pick the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_segsuite.testing.synthetic_blobs import CLASS_NAMES, blob_dataset
from napari_segsuite.widgets.instance import InstanceWidget
from napari_segsuite.widgets.instance_training import FAMILY_CHOICES, gather_annotations

pytestmark = [pytest.mark.widget, pytest.mark.slow]


@pytest.fixture
def scene(make_napari_viewer):
    """Two annotated blob images with classes in the Labels layers' features (a 2-plane stack and a plane)."""
    viewer = make_napari_viewer(show=False)
    images, labels, classes = blob_dataset(3, size=64, seed=3, n_range=(3, 5), radius_range=(6.0, 10.0))
    viewer.add_image(np.stack(images[:2]), name="cells", scale=(1, 0.5, 0.5))
    viewer.add_image(images[2], name="more")
    for name, lab, cls in (("cells [labels]", np.stack(labels[:2]), {**classes[0]}), ("more [labels]", labels[2],
                                                                                      classes[2])):
        layer = viewer.add_labels(lab, name=name)
        ids = sorted(int(i) for i in np.unique(lab) if i)
        if name.startswith("cells"):  # class per label id across both planes
            cls = {**classes[0], **classes[1]}
        layer.features = pd.DataFrame({"label": ids, "class_name": [CLASS_NAMES[cls[i]] for i in ids]})
    return viewer


def _click(button) -> None:
    QTest.mouseClick(button.native, Qt.LeftButton)


def _click_header(group) -> None:
    """Open a collapsed group the way a user does: a click on its header."""
    if not group.expanded:
        QTest.mouseClick(group.toggle_button, Qt.LeftButton)


def test_annotations_come_from_every_plane_with_their_images_and_classes(scene):
    layers = [scene.layers["cells [labels]"], scene.layers["more [labels]"]]
    images, labels, classes, summary = gather_annotations(scene, layers)
    assert len(images) == 3 and all(img.shape == lab.shape for img, lab in zip(images, labels, strict=True))
    assert np.array_equal(images[1], scene.layers["cells"].data[1])
    assert set().union(*[set(c.values()) for c in classes]) <= set(CLASS_NAMES.values())
    assert "cells [labels]: 2 plane(s)" in summary[0]


def test_train_in_the_dock_then_pick_the_model_and_segment(scene, qtbot, tmp_path):
    widget = InstanceWidget(scene)
    widget.models.cache.value = str(tmp_path)  # the dock's model folder
    panel = widget.training
    _click_header(widget.training_group)
    assert widget.training_group.expanded
    assert panel.store is widget.store  # the panel saves into the dock's model folder
    panel.labels_layers.value = [scene.layers["cells [labels]"], scene.layers["more [labels]"]]
    panel.family.value = {v: v for _, v in FAMILY_CHOICES}["yolo"]
    panel.epochs.value, panel.imgsz.value, panel.name.value = 2, 64, "my-cells"
    panel.extra_options = {"batch": 2}
    _click(panel.start_button)
    assert panel.cancel_button.enabled
    qtbot.waitUntil(lambda: not panel.busy, timeout=600_000)
    assert "saved 'my-cells' in the model folder's trained/" in panel.message.value, panel.message.value
    assert (tmp_path / "trained" / "my-cells").is_dir()
    assert panel.curve.loss and len(panel.curve.score) == 2  # live loss and AP50 per epoch
    # every model picker lists it with its class names; the instance run uses it
    choices = {value: text for text, value in widget.models._choices()}
    assert "trained/my-cells" in choices and "speckled" in choices["trained/my-cells"]
    widget.models.model.value = "trained/my-cells"
    widget.device.value = "cpu"
    widget.conf.value = 0.0
    scene.layers.selection.active = scene.layers["more"]
    widget.image.value = scene.layers["more"]
    widget.run()
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=120_000)
    out = scene.layers["more [instance]"]
    assert set(out.features["class_name"]) <= set(CLASS_NAMES.values())
    # Continue training from it: the curve goes on
    assert panel.continue_button.enabled
    panel.epochs.value = 1
    _click(panel.continue_button)
    qtbot.waitUntil(lambda: not panel.busy, timeout=600_000)
    assert len(panel.curve.score) == 3
    assert panel.model.training["init_model"]["name"] == "my-cells"
    assert panel.model.name == "my-cells-2"  # a second model next to the first, never over it
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    widget.native.grab().save(str(tmp_path / "training.png"))


def test_cancel_in_the_dock_keeps_the_best_model(scene, qtbot, tmp_path):
    widget = InstanceWidget(scene)
    widget.models.cache.value = str(tmp_path)
    panel = widget.training
    _click_header(widget.training_group)
    panel.labels_layers.value = [scene.layers["cells [labels]"], scene.layers["more [labels]"]]
    panel.epochs.value, panel.imgsz.value = 20, 64
    panel.extra_options = {"batch": 2}
    _click(panel.start_button)
    qtbot.waitUntil(lambda: len(panel.curve.score) >= 1, timeout=600_000)
    _click(panel.cancel_button)
    qtbot.waitUntil(lambda: not panel.busy, timeout=600_000)
    assert "Stopped early" in panel.message.value, panel.message.value
    assert panel.model is not None and panel.model.training["epochs_done"] < 20
    assert panel.model.name in [c.name for c in widget.store.trained_models("instance")]


def test_bad_layers_are_reported_without_starting(scene, qtbot, notes):
    widget = InstanceWidget(scene)
    panel = widget.training
    _click_header(widget.training_group)
    panel.labels_layers.value = []
    _click(panel.start_button)
    assert not panel.busy and "Choose one or more Labels layers" in panel.message.value
    empty = scene.add_labels(np.zeros((64, 64), np.int32), name="more [empty]")
    panel.labels_layers.value = [empty]
    _click(panel.start_button)
    assert not panel.busy and "hold no object" in panel.message.value
    odd = scene.add_labels(np.zeros((32, 32), np.int32), name="odd")
    odd.data[3:9, 3:9] = 1
    panel.labels_layers.value = [odd]
    panel.image.value = scene.layers["more"]
    _click(panel.start_button)
    assert not panel.busy and "No image fits" in panel.message.value


def test_finetune_sam_in_the_dock_and_pick_it_in_the_sam_dock(scene, qtbot, tmp_path, tiny_sam_path):
    from napari_segsuite.widgets.base import LOCAL
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget

    widget = InstanceWidget(scene)
    widget.models.cache.value = str(tmp_path)
    sam_dock = SamPromptWidget(scene)
    sam_dock.models.cache.value = str(tmp_path)
    panel = widget.sam_finetune
    _click_header(widget.sam_finetune_group)
    assert widget.sam_finetune_group.expanded
    panel.labels_layers.value = [scene.layers["more [labels]"]]
    panel.sam.model.value = LOCAL
    panel.sam.local.value = str(tiny_sam_path)
    panel.steps.value, panel.name.value = 3, "sam-cells"
    panel.extra_options = {"val_every": 1, "objects_per_step": 2}
    _click(panel.start_button)
    qtbot.waitUntil(lambda: not panel.busy, timeout=600_000)
    assert "Saved 'sam-cells'" in panel.message.value, panel.message.value
    assert len(panel.curve.score) == 4  # before, and after each step
    assert "trained/sam-cells" in [v for _, v in sam_dock.models._choices()]
    assert "trained/sam-cells" not in [v for _, v in widget.models._choices()]  # not an instance model


def test_cancel_sam_finetuning_in_the_dock_keeps_the_best_weights(scene, qtbot, tmp_path, tiny_sam_path):
    from napari_segsuite.widgets.base import LOCAL

    widget = InstanceWidget(scene)
    widget.models.cache.value = str(tmp_path)
    panel = widget.sam_finetune
    _click_header(widget.sam_finetune_group)
    panel.labels_layers.value = [scene.layers["more [labels]"]]
    panel.sam.model.value = LOCAL
    panel.sam.local.value = str(tiny_sam_path)
    panel.steps.value = 5000
    panel.extra_options = {"val_every": 1, "objects_per_step": 2}
    _click(panel.start_button)
    assert panel.cancel_button.enabled and not panel.start_button.enabled
    qtbot.waitUntil(lambda: len(panel.curve.score) >= 3, timeout=600_000)  # before, and two steps
    _click(panel.cancel_button)
    qtbot.waitUntil(lambda: not panel.busy, timeout=600_000)
    assert panel.message.value.startswith("Stopped early. Saved"), panel.message.value
    assert panel.model is not None and panel.model.training["steps"] < 5000 and panel.model.training["stopped_early"]
    assert panel.model.name in [c.name for c in widget.store.trained_models("prompt")]
    assert panel.start_button.enabled and not panel.cancel_button.enabled
