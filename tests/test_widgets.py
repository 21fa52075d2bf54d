"""The shared widget scaffolding in a real napari viewer: pickers, workers, cancel, errors."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress
from napari_segsuite.widgets.base import LOCAL, SegmentationWidget
from napari_segsuite.widgets.instance import InstanceWidget
from napari_segsuite.widgets.panoptic import PanopticWidget
from napari_segsuite.widgets.sam_prompt import SamPromptWidget
from napari_segsuite.widgets.semantic import SemanticWidget

pytestmark = pytest.mark.widget
WIDGET_NAMES = ["Semantic Segmentation", "Instance Segmentation", "Panoptic Segmentation", "SAM Prompt Segmentation"]


def _wait_idle(qtbot, widget, timeout=20000):
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)


@pytest.mark.parametrize("name", WIDGET_NAMES)
def test_widgets_dock_through_the_manifest(make_napari_viewer, name):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.zeros((10, 10)), name="img")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-segsuite", name)
    assert widget.image.value is viewer.layers["img"]
    assert widget.device.choices == ("auto", "cpu", "cuda", "mps")
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_image_picker_follows_the_layer_list(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    widget = SemanticWidget(viewer)
    assert widget.image.value is None
    viewer.add_image(np.zeros((5, 5)), name="a")
    viewer.add_labels(np.zeros((5, 5), int), name="not an image")
    viewer.add_image(np.zeros((5, 5)), name="b")
    assert [c for c in widget.image.choices if c is not None] == [viewer.layers["a"], viewer.layers["b"]]
    del viewer.layers["a"]
    assert [c for c in widget.image.choices if c is not None] == [viewer.layers["b"]]


@pytest.mark.parametrize("dock_first", [True, False])
def test_the_image_box_follows_the_active_layer_and_the_unet_panel_agrees(make_napari_viewer, dock_first):
    from napari.layers import Labels

    viewer = make_napari_viewer(show=False)
    other = viewer.add_image(np.zeros((30, 40)), name="other")  # an image of another shape, listed first
    widget = SemanticWidget(viewer) if dock_first else None
    viewer.open_sample("napari-segsuite", "coins_strokes")
    widget = widget or SemanticWidget(viewer)
    coins = viewer.layers["coins"]
    # the strokes layer is active: the Image box shows the image it belongs to (its name stem), and the
    # U-Net panel inside the dock works on the same image
    assert isinstance(viewer.layers.selection.active, Labels) and viewer.layers.selection.active.name == "coins strokes"
    assert widget.image.value is coins and widget.selected_image() is coins
    assert widget.unet.image is widget.image and widget.unet.job_panel.selected_image() is coins
    viewer.layers.selection.active = other
    assert widget.image.value is other and widget.unet.job_panel.selected_image() is other
    # a layer named otherwise belongs to the only image of its shape
    viewer.add_labels(np.zeros(coins.data.shape, int), name="mask")
    assert widget.image.value is coins
    # a layer that belongs to no image keeps the choice; the box is never empty while an image is open
    viewer.add_labels(np.zeros((7, 7), int), name="unrelated")
    assert widget.image.value is coins
    del viewer.layers["coins"]
    assert widget.image.value is other and widget.unet.job_panel.selected_image() is other


def test_model_picker_lists_registry_models_for_the_task(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    names = {
        cls: [c[1] for c in cls(viewer).models._choices()]
        for cls in (SemanticWidget, InstanceWidget, PanopticWidget, SamPromptWidget)
    }
    assert "segformer_b0_ade" in names[SemanticWidget] and "lraspp_mobilenet_v3_large_voc" in names[SemanticWidget]
    assert "yolo11n_seg" in names[InstanceWidget] and "maskrcnn_resnet50_fpn_coco" in names[InstanceWidget]
    assert names[PanopticWidget][0].startswith("mask2former") and "sam_vit_b" not in names[PanopticWidget]
    assert names[SamPromptWidget][:3] == ["sam_vit_b", "sam_vit_l", "sam_vit_h"]
    assert all(n[-1] == LOCAL for n in names.values())


def test_cache_folder_setting_changes_availability(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=False)
    widget = SemanticWidget(viewer)
    widget.models.model.value = "segformer_b0_ade"
    assert not widget.models.download.native.isHidden()
    folder = tmp_path / "models" / "segformer" / "nvidia--segformer-b0-finetuned-ade-512-512"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    widget.models.cache.value = str(tmp_path / "models")
    assert widget.store.cache_dir == tmp_path / "models"
    assert widget.models.download.native.isHidden()
    assert "not downloaded" not in {v: k for k, v in widget.models._choices()}["segformer_b0_ade"]


class _LoadOnlyWidget(SegmentationWidget):
    """The shared scaffolding with its default job (load the model, check the task)."""

    task = "prompt"
    model_tasks = ("prompt",)


def test_run_loads_a_local_checkpoint_in_a_worker(make_napari_viewer, qtbot, tiny_sam_path):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.zeros((20, 20)), name="img")
    widget = _LoadOnlyWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(tiny_sam_path)
    widget.device.value = "cpu"
    widget.run()
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    _wait_idle(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    assert "is loaded on cpu" in widget.message.value
    assert widget._runner.family == "sam"


def test_missing_model_is_a_notification_and_the_widget_stays_usable(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer(show=False)
    viewer.add_image(np.zeros((20, 20)), name="img")
    widget = SamPromptWidget(viewer)
    # the dock adds the image's prompt layers when it opens; the failed run changes none
    assert [layer.name for layer in viewer.layers] == ["img", "img [sam points]", "img [sam boxes]",
                                                       "img [sam preview]"]
    before = [(layer, np.array(layer.data, copy=True)) for layer in viewer.layers if layer.name != "img [sam boxes]"]
    widget.models.model.value = "sam_vit_b"
    widget.run()
    _wait_idle(qtbot, widget)
    assert any("sam_vit_b_01ec64.pth" in n and "not on this machine" in n for n in notes)
    assert "not on this machine" in widget.message.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert len(viewer.layers) == 4
    for layer, data in before:
        np.testing.assert_array_equal(layer.data, data)


def test_no_image_is_a_clear_message(make_napari_viewer, notes):
    viewer = make_napari_viewer(show=False)
    widget = SemanticWidget(viewer)
    widget.run()
    assert any("Open an image" in n for n in notes)
    assert not widget.jobs.busy


def test_cancel_stops_at_the_next_yield_and_changes_no_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=False)
    image = viewer.add_image(np.zeros((8, 8)), name="img")
    widget = SemanticWidget(viewer)
    steps, results = [], []

    def slow_job():
        for i in range(200):
            steps.append(i)
            time.sleep(0.02)
            yield Progress(i, 200, f"step {i}")
        return np.ones((8, 8), int)

    widget._start(slow_job, lambda r: results.append(viewer.add_labels(r)), "slow")
    qtbot.waitUntil(lambda: widget.progress.value > 0, timeout=5000)
    widget.cancel_button.changed.emit(True)
    _wait_idle(qtbot, widget)
    assert results == [] and len(steps) < 200
    assert list(viewer.layers) == [image]
    assert "Cancelled" in widget.message.value


def test_errors_in_the_job_become_notifications(make_napari_viewer, qtbot, notes):
    viewer = make_napari_viewer(show=False)
    widget = SemanticWidget(viewer)

    def failing():
        yield Progress(1, 2, "half")
        raise InputError("The image has 5 channels; this model takes 3. Pick a channel axis.")

    widget._start(failing, lambda r: None, "failing")
    _wait_idle(qtbot, widget)
    assert any("5 channels" in n for n in notes)
    assert "5 channels" in widget.message.value


def test_progress_reaches_the_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=False)
    widget = SemanticWidget(viewer)
    seen = []
    widget.jobs.on_progress = lambda p: (seen.append(p.step), widget._on_progress(p))

    def job():
        for i in range(1, 5):
            yield Progress(i, 4, f"{i}/4")
        return "done"

    got = []
    widget._start(job, got.append, "job")
    _wait_idle(qtbot, widget)
    assert seen == [1, 2, 3, 4] and got == ["done"] and widget.progress.value == 100


def test_smoke_mode_writes_a_screenshot(tmp_path):
    png = tmp_path / "shot.png"
    exe = Path(sys.executable).parent / "napari-segsuite"
    result = subprocess.run([str(exe), "view", "--smoke", str(png)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 widgets docked, 0 failed" in result.stdout
    from skimage.io import imread

    shot = imread(png)
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000
    assert shot[..., :3].std() > 10  # not a blank window


def test_status_spans_the_dock_and_fields_line_up(make_napari_viewer, qtbot):
    from napari_segsuite.widgets.evaluation import EvaluationWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    viewer.add_image(np.zeros((32, 32), np.uint8), name="img")
    sam = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(sam, name="SAM")
    sam.models.model.value = "sam_vit_b"  # a registry model that is not downloaded: a long status
    evaluation = EvaluationWidget(viewer)
    viewer.window.add_dock_widget(evaluation, name="Evaluate")
    qtbot.wait(300)
    status, model_row = sam.models.status.native, sam.models.fields.native
    text = status.text()
    assert text.startswith("Not downloaded")
    # the status line starts at the dock's left edge (not in the value column) and spans its width
    left = model_row.mapTo(sam.native, model_row.rect().topLeft()).x()
    assert status.mapTo(sam.native, status.rect().topLeft()).x() == left
    assert status.width() >= 0.9 * model_row.width()
    # its lines all fit: the height it has is the height its wrapped text needs
    assert status.height() >= status.heightForWidth(status.width())
    # every labelled field of the Evaluate dock (its groups opened) starts at the same x
    for group in evaluation.groups.values():
        group.expand()
    qtbot.wait(200)
    from napari_segsuite.widgets.scaffold import _labeled_rows

    xs = {w.native.mapTo(evaluation.native, w.native.rect().topLeft()).x()
          for w, _ in _labeled_rows(evaluation.body) if w.native.isVisible()}
    assert len(xs) == 1, xs


def test_a_job_announced_late_changes_no_widget_when_it_is_short(make_napari_viewer, qtbot):
    """``announce_after_ms``: a job that ends before the delay leaves the status line, Cancel and the
    actions as they were (no repaint of the window while it runs); a longer one is announced."""
    from napari_segsuite.widgets.scaffold import JobPanel

    viewer = make_napari_viewer(show=False)
    panel = JobPanel(viewer, pick_image=False)
    run_button = panel.add_action("Run")
    panel.message.value = "ready"
    results = []

    def quick():
        yield Progress(0, 1, "working")
        return 1

    panel.start(quick, results.append, "Quick job", announce_after_ms=2000)
    assert panel.message.value == "ready" and not panel.cancel_button.enabled and run_button.enabled
    qtbot.waitUntil(lambda: not panel.busy, timeout=60_000)
    qtbot.wait(50)
    assert results == [1] and run_button.enabled and not panel.cancel_button.enabled

    def slow():
        yield Progress(0, 1)  # no message: the announcement stays in the status line
        time.sleep(1.5)
        return 2

    panel.start(slow, results.append, "Slow job", announce_after_ms=200)
    qtbot.waitUntil(lambda: panel.cancel_button.enabled, timeout=5_000)
    assert panel.message.value == "Slow job…" and not run_button.enabled
    qtbot.waitUntil(lambda: not panel.busy, timeout=60_000)
    assert results == [1, 2] and run_button.enabled and not panel.cancel_button.enabled
