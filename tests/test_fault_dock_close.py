"""Closing a dock while its job runs (real viewer, real workers, tiny models of the real architectures).

napari's ``remove_dock_widget`` (what the dock's close button calls) takes the dock's widget
out of its ``QDockWidget`` and deletes only the ``QDockWidget``: the widget lives on while
Python holds it. Every dock that runs jobs (Semantic, Instance, Panoptic, SAM, Evaluate, the
U-Net and instance training panels inside the Semantic and Instance docks, the Export and
Import dataset docks) must then end its job promptly, write nothing into any layer (or, for
the export, leave no folder), show no traceback, and leave the viewer usable. Hiding a dock
with its title bar's hide button cancels nothing: the job finishes and its result is shown.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pandas as pd
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)
from napari_segsuite.widgets.base import LOCAL

pytestmark = pytest.mark.widget

KINDS = ("semantic", "instance", "panoptic", "sam", "sam_everything", "evaluate", "unet", "instance_training", "export", "import")
#: a cancelled job's worker ends within this (the job thread may take longer to reach its next yield)
PROMPT_S = 20.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from napari_segsuite.testing.instance_doubles import sharpen_yolo
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    root = tmp_path_factory.mktemp("dock_close_models")
    return {
        "semantic": build_tiny_segformer(root / "seg", num_labels=4),
        "panoptic": build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2),
        "instance": sharpen_yolo(build_tiny_yolo(root / "y.pt", "segment", nc=3)),
        "sam": build_tiny_sam(root / "tiny_sam.pth"),
    }


def _click(button) -> None:
    QTest.mouseClick(getattr(button, "native", button), Qt.MouseButton.LeftButton)


def _segmentation_dock(viewer, kind, model):
    from napari_segsuite.widgets.instance import InstanceWidget
    from napari_segsuite.widgets.panoptic import PanopticWidget
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget
    from napari_segsuite.widgets.semantic import SemanticWidget

    cls = {"semantic": SemanticWidget, "instance": InstanceWidget, "panoptic": PanopticWidget,
           "sam": SamPromptWidget}[kind]
    widget = cls(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(model)
    widget.device.value = "cpu"
    if kind == "panoptic":
        widget.threshold.value, widget.mask_threshold.value, widget.overlap.value = 0.0, 0.05, 0.0
    if kind == "instance":
        widget.conf.value, widget.max_det.value = 0.0, 5
    return widget


class Case:
    """One dock with a job ready to start: ``dock`` goes into the window, ``runner`` runs the job."""

    def __init__(self, dock, name, runner, start, written=lambda: False):
        self.dock, self.name, self.runner, self.start, self.written = dock, name, runner, start, written


def _case(kind, viewer, models, tmp_path, qtbot) -> Case:
    rng = np.random.default_rng(0)
    if kind in ("semantic", "instance", "panoptic"):
        image = viewer.add_image((rng.random((64, 64)) * 255).astype(np.uint8), name="A")
        widget = _segmentation_dock(viewer, kind, models[kind])
        widget.image.value = image
        return Case(widget, kind, widget.jobs, lambda: _click(widget.run_button))
    if kind in ("sam", "sam_everything"):
        image = viewer.add_image((rng.random((64, 64)) * 255).astype(np.uint8), name="A")
        widget = _segmentation_dock(viewer, "sam", models["sam"])
        widget.image.value = image
        widget.autosave_dir.value = str(tmp_path / "autosave")
        if kind == "sam":  # the first click on a plane: a job encodes it, then the preview shows the mask

            def click():
                points, _ = widget.ensure_prompt_layers()
                points.add([30, 30])
                qtbot.waitUntil(lambda: widget.jobs.busy, timeout=5000)

            return Case(widget, "sam", widget.jobs, click, written=lambda: bool(widget._objects))
        params = widget.everything.auto_params
        params["points_per_side"].value, params["pred_iou_thresh"].value = 4, -1.0
        params["stability_score_thresh"].value = 0.0
        return Case(widget, "sam", widget.jobs, lambda: _click(widget.everything.auto_button))
    if kind == "evaluate":
        from napari_segsuite.widgets.evaluation import EvaluationWidget

        gt = np.zeros((40, 40), np.int32)
        gt[2:12, 2:12], gt[20:30, 20:30] = 1, 2
        pred = np.zeros_like(gt)
        pred[3:12, 2:12], pred[30:38, 0:8] = 5, 6
        pred_layer = viewer.add_labels(pred, name="pred",
                                       features=pd.DataFrame({"index": [5, 6], "score": [0.9, 0.4]}))
        gt_layer = viewer.add_labels(gt, name="gt")
        widget = EvaluationWidget(viewer)
        widget.pred_layer.value, widget.gt_layer.value = pred_layer, gt_layer
        return Case(widget, "evaluate", widget.jobs, lambda: _click(widget.evaluate_button),
                    written=lambda: widget.last_evaluation is not None)
    if kind == "unet":
        from skimage import data

        from napari_segsuite.testing.coins import coins_strokes
        from napari_segsuite.widgets.semantic import SemanticWidget

        viewer.add_image(data.coins()[:96, :192], name="coins")
        viewer.add_labels(coins_strokes()[:96, :192], name="strokes")
        widget = SemanticWidget(viewer)
        panel = widget.unet
        panel.extra_options = {"encoder_name": "tu-mobilenetv3_small_050", "encoder_depth": 3,
                               "decoder_channels": (16, 8, 8), "batch_size": 2, "val_every": 2}
        panel.steps.value, panel.patch_size.value = 6, 64
        return Case(widget, "semantic", panel.jobs, lambda: _click(panel.train_button),
                    written=lambda: panel.model is not None)
    if kind == "instance_training":
        from napari_segsuite.testing.synthetic_blobs import CLASS_NAMES, blob_dataset
        from napari_segsuite.widgets.instance import InstanceWidget
        from napari_segsuite.widgets.instance_training import FAMILY_CHOICES

        images, labels, classes = blob_dataset(2, size=64, seed=3, n_range=(3, 5), radius_range=(6.0, 10.0))
        viewer.add_image(images[0], name="cells")
        layer = viewer.add_labels(labels[0], name="cells [labels]")
        ids = sorted(int(i) for i in np.unique(labels[0]) if i)
        layer.features = pd.DataFrame({"label": ids, "class_name": [CLASS_NAMES[classes[0][i]] for i in ids]})
        widget = InstanceWidget(viewer)
        widget.models.cache.value = str(tmp_path / "models")
        panel = widget.training
        panel.labels_layers.value = [layer]
        panel.family.value = {v: v for _, v in FAMILY_CHOICES}["yolo"]
        panel.epochs.value, panel.imgsz.value, panel.name.value = 1, 64, "closed"
        panel.extra_options = {"batch": 2}
        return Case(widget, "instance", panel.jobs, lambda: _click(panel.start_button),
                    written=lambda: (tmp_path / "models" / "trained" / "closed").exists())
    if kind == "export":
        from napari_segsuite.widgets.dataset_export import DatasetExportWidget

        lab = np.zeros((40, 96, 96), np.int32)
        lab[:, 5:20, 5:30], lab[:, 20:30, 5:30] = 1, 2
        viewer.add_image(np.zeros(lab.shape, np.uint8), name="big")
        viewer.add_labels(lab, name="big [instance]")
        widget = DatasetExportWidget(viewer)
        widget.out.value = tmp_path / "ds"
        return Case(widget, "Export dataset", widget.jobs, lambda: _click(widget.export_button),
                    written=lambda: (tmp_path / "ds").exists())
    if kind == "import":
        from napari_segsuite import api
        from napari_segsuite.widgets.dataset_import import DatasetImportWidget

        lab = np.zeros((3, 48, 64), np.int32)
        lab[:, 4:20, 4:30], lab[:, 20:30, 4:30] = 1, 2
        api.export_dataset(rng.integers(0, 255, lab.shape, dtype=np.uint8), lab, tmp_path / "in", format="coco",
                           class_names=["cell"], val_fraction=0)
        widget = DatasetImportWidget(viewer)
        edit = widget.path.line_edit.native
        edit.clear()
        QTest.keyClicks(edit, str(tmp_path / "in"))
        QTest.keyClick(edit, Qt.Key.Key_Return)
        return Case(widget, "Import dataset", widget.jobs, lambda: _click(widget.import_button))
    raise AssertionError(kind)


def _layers(viewer) -> dict:
    return {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}


def _same_layers(viewer, before: dict) -> bool:
    now = _layers(viewer)
    return list(now) == list(before) and all(np.array_equal(now[k], before[k]) for k in before)


def _settle(qtbot, runner, seconds: float = 1.0) -> None:
    """Wait for the job thread to leave the job, then let late signals arrive."""
    qtbot.waitUntil(runner.job_ended.is_set, timeout=600_000)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _errors(caplog, notes) -> list[str]:
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    return logged + [n for n in notes if "Traceback" in n or "Error" in n]


def _viewer_still_works(qtbot, viewer, models) -> None:
    """The viewer takes a new image and a new Semantic dock, which runs and writes its result."""
    image = viewer.add_image(np.full((32, 32), 7, np.uint8), name="after")
    widget = _segmentation_dock(viewer, "semantic", models["semantic"])
    viewer.window.add_dock_widget(widget, name="semantic again")
    widget.image.value = image
    _click(widget.run_button)
    qtbot.waitUntil(lambda: not widget.jobs.busy, timeout=180_000)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    assert viewer.layers["after [semantic]"].data.shape == (32, 32)


@pytest.mark.parametrize("kind", KINDS)
def test_removing_a_dock_mid_run_ends_its_job_and_writes_nothing(make_napari_viewer, qtbot, models, tmp_path,
                                                                 kind, notes, caplog):
    viewer = make_napari_viewer(show=False)
    case = _case(kind, viewer, models, tmp_path, qtbot)
    qt_dock = viewer.window.add_dock_widget(case.dock, name=case.name)
    case.start()
    assert case.runner.busy  # what follows happens while the job runs
    before = _layers(viewer)  # its result is written only on the GUI thread, after this
    t0 = time.monotonic()
    viewer.window.remove_dock_widget(qt_dock)
    qtbot.waitUntil(lambda: not case.runner.busy, timeout=int(PROMPT_S * 1000))
    ended = time.monotonic() - t0
    _settle(qtbot, case.runner)
    assert ended < PROMPT_S
    assert _same_layers(viewer, before), sorted(_layers(viewer))
    assert not case.written()
    assert not case.runner.busy and not case.runner.closed  # the panel could be docked again
    assert any(n.startswith("The dock was closed:") for n in notes), notes
    assert _errors(caplog, notes) == []
    _viewer_still_works(qtbot, viewer, models)


@pytest.mark.parametrize("kind", ["semantic", "sam"])
def test_the_close_button_ends_the_job(make_napari_viewer, qtbot, models, tmp_path, kind, notes, caplog):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    case = _case(kind, viewer, models, tmp_path, qtbot)
    qt_dock = viewer.window.add_dock_widget(case.dock, name=case.name)
    qtbot.waitUntil(qt_dock.isVisible, timeout=5000)
    case.start()
    assert case.runner.busy
    before = _layers(viewer)
    _click(qt_dock.title.close_button)  # the dock's own title-bar X
    assert case.name not in viewer.window.dock_widgets
    qtbot.waitUntil(lambda: not case.runner.busy, timeout=int(PROMPT_S * 1000))
    _settle(qtbot, case.runner)
    assert _same_layers(viewer, before), sorted(_layers(viewer))
    assert not case.written()
    assert _errors(caplog, notes) == []
    if kind == "sam":  # the closed dock gave its keys back and shows no preview later
        from napari.utils.key_bindings import coerce_keybinding

        assert coerce_keybinding("Shift-C") not in viewer.keymap
    _viewer_still_works(qtbot, viewer, models)


@pytest.mark.parametrize("kind", ["semantic", "evaluate"])
def test_hiding_the_dock_lets_its_job_finish(make_napari_viewer, qtbot, models, tmp_path, kind, caplog, notes):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    case = _case(kind, viewer, models, tmp_path, qtbot)
    qt_dock = viewer.window.add_dock_widget(case.dock, name=case.name)
    qtbot.waitUntil(qt_dock.isVisible, timeout=5000)
    case.start()
    assert case.runner.busy
    _click(qt_dock.title.hide_button)  # the title bar's hide button: the dock stays in the window's menu
    assert not qt_dock.isVisible() and case.name in viewer.window.dock_widgets
    qtbot.waitUntil(lambda: not case.runner.busy, timeout=180_000)
    assert case.runner.last_error is None, case.runner.last_error
    if kind == "semantic":
        assert viewer.layers["A [semantic]"].data.shape == (64, 64)
    else:
        assert case.written()
    qt_dock.setVisible(True)  # what the dock's Plugins menu entry does to a hidden dock: the outcome is there
    assert qt_dock.isVisible()
    assert case.dock.progress.value == 100
    assert _errors(caplog, notes) == []


def test_removing_the_sam_dock_drops_a_preview_being_decoded(make_napari_viewer, qtbot, models, tmp_path, notes,
                                                            caplog):
    viewer = make_napari_viewer(show=False)
    case = _case("sam", viewer, models, tmp_path, qtbot)
    widget = case.dock
    qt_dock = viewer.window.add_dock_widget(widget, name="sam")
    case.start()  # the first click encodes the plane
    qtbot.waitUntil(lambda: not widget.preview_busy, timeout=60_000)
    first = widget.preview.objects
    assert first, widget.message.value
    points = viewer.layers["A [sam points]"]
    # the prompt thread is held, so the next point's decode is surely still pending when the dock
    # goes (a tiny SAM decodes in milliseconds: polling for it in flight could miss it)
    running, release = threading.Event(), threading.Event()
    widget.prompts.prompt_thread.submit(lambda: (running.set(), release.wait(30)))
    assert running.wait(10)
    points.add([10, 50])  # the plane is encoded: the prompt thread decodes this one
    qtbot.waitUntil(lambda: widget.prompts._in_flight > 0, timeout=5000)
    before = _layers(viewer)
    release.set()  # the decode runs from now on; the dock is removed before its result can be shown
    viewer.window.remove_dock_widget(qt_dock)
    qtbot.waitUntil(lambda: widget.prompts._in_flight == 0, timeout=30_000)
    QApplication.processEvents()
    assert widget.preview.objects is first  # the second click's objects were never shown
    assert _same_layers(viewer, before)
    assert _errors(caplog, notes) == []
