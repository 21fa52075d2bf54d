"""The U-Net training panel in a real viewer: train, live curve, cancel, predict, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite.testing.coins import coins_strokes
from napari_segsuite.widgets.unet_training import ALL, PREDICT_ALL, UnetTrainingPanel

pytestmark = pytest.mark.widget
#: A small, quick network for the widget tests (the defaults are for real use).
QUICK = {
    "encoder_name": "tu-mobilenetv3_small_050", "encoder_depth": 3, "decoder_channels": (16, 8, 8),
    "batch_size": 2, "val_every": 2,
}


@pytest.fixture
def panel(make_napari_viewer):
    """A panel on a crop of coins with the shipped strokes (a few coins, both classes)."""
    from skimage import data

    viewer = make_napari_viewer(show=False)
    viewer.add_image(data.coins()[:96, :192], name="coins")
    viewer.add_labels(coins_strokes()[:96, :192], name="strokes")
    widget = UnetTrainingPanel(viewer)
    widget.extra_options = dict(QUICK)
    widget.steps.value, widget.patch_size.value = 6, 64
    return widget


def _wait(qtbot, widget, timeout=60000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _snapshot(viewer):
    return {layer.name: np.array(layer.data) for layer in viewer.layers}


def test_train_draws_the_curve_then_predict_writes_labels_with_class_names(panel, qtbot):
    viewer = panel.viewer
    assert panel.image.value is viewer.layers["coins"] and panel.strokes.value is viewer.layers["strokes"]
    before = _snapshot(viewer)
    panel.train_button.changed.emit(True)
    assert panel.cancel_button.enabled and not panel.train_button.enabled
    _wait(qtbot, panel)
    assert panel.jobs.last_error is None, panel.jobs.last_error
    assert panel.model is not None and "Trained 6 steps" in panel.message.value
    assert len(panel.curve.train) == 6 and len(panel.curve.val) == 3
    assert panel.curve.axes.lines  # drawn
    assert all(np.array_equal(np.asarray(viewer.layers[n].data), a) for n, a in before.items())

    panel.probability.value = True
    panel.predict_button.changed.emit(True)
    _wait(qtbot, panel)
    out = viewer.layers["coins [unet]"]
    assert out.data.shape == (96, 192) and set(np.unique(out.data)) <= {1, 2}
    names = dict(zip(out.features["index"], out.features["class_name"], strict=True))
    assert names.get(1) == "background" and set(names.values()) <= {"background", "coin"}
    assert out.metadata["segsuite"]["task"] == "unet"
    prob = viewer.layers["coins [unet p(coin)]"]
    assert prob.data.shape == (96, 192) and 0 <= prob.data.min() and prob.data.max() <= 1

    # Continue training extends the same curve.
    panel.steps.value = 2
    panel.continue_button.changed.emit(True)
    _wait(qtbot, panel)
    assert [s for s, _ in panel.curve.train][-2:] == [7, 8]


def test_cancel_keeps_the_best_model_and_changes_no_layer(panel, qtbot):
    viewer = panel.viewer
    before = _snapshot(viewer)
    panel.steps.value = 2000
    panel.train()
    qtbot.waitUntil(lambda: len(panel.curve.val) >= 1, timeout=60000)
    panel.cancel_button.changed.emit(True)
    _wait(qtbot, panel)
    assert panel.model is not None and "kept the best model so far" in panel.message.value
    assert panel.state.step < 2000
    assert _snapshot(viewer).keys() == before.keys()
    assert all(np.array_equal(np.asarray(viewer.layers[n].data), a) for n, a in before.items())
    assert panel.predict_button.enabled and panel.continue_button.enabled


def test_cancel_at_once_is_a_clear_message(panel, qtbot):
    panel.steps.value = 2000
    panel.train()
    panel.cancel_button.changed.emit(True)
    _wait(qtbot, panel)
    assert panel.model is None or panel.state.best_step is not None
    if panel.model is None:
        assert "Cancelled before the first validation" in panel.message.value
    assert [layer.name for layer in panel.viewer.layers] == ["coins", "strokes"]


def test_strokes_of_another_shape_are_refused(panel, qtbot, notes):
    viewer = panel.viewer
    viewer.add_labels(np.zeros((50, 50), np.int32), name="wrong")
    panel.strokes.value = viewer.layers["wrong"]
    panel.train()
    assert not panel.busy
    assert any("has shape (50, 50)" in n for n in notes)
    assert "has shape (50, 50)" in panel.message.value
    assert [layer.name for layer in viewer.layers] == ["coins", "strokes", "wrong"]


def test_no_strokes_and_single_class_are_refused(panel, notes):
    strokes = panel.viewer.layers["strokes"]
    strokes.data = np.zeros_like(strokes.data)
    panel.train()
    assert any("no labelled pixels" in n for n in notes)
    strokes.data = (np.arange(96 * 192).reshape(96, 192) % 7 == 0).astype(np.int32)
    panel.train()
    assert any("only class 1" in n for n in notes)
    assert not panel.busy and panel.model is None


def test_save_load_and_channel_mismatch(panel, qtbot, tmp_path, notes):
    viewer = panel.viewer
    panel.train()
    _wait(qtbot, panel)
    panel.folder.value = str(tmp_path / "unet")
    panel.save_button.changed.emit(True)
    assert (tmp_path / "unet" / "model.safetensors").is_file()
    other = UnetTrainingPanel(viewer)
    other.folder.value = str(tmp_path / "unet")
    other.load_button.changed.emit(True)
    assert other.model is not None and other.predict_button.enabled
    assert other.class_names.value == panel.class_names.value
    assert len(other.curve.train) == len(panel.curve.train)
    image = viewer.layers["coins"].data
    np.testing.assert_array_equal(other.model.predict(image), panel.model.predict(image))
    # An RGB image cannot go through a greyscale model.
    viewer.add_image(np.stack([image] * 3, -1), name="rgb", rgb=True)
    other.image.value = viewer.layers["rgb"]
    other.predict()
    assert any("1 channel(s), but this image has 3" in n for n in notes)
    assert "rgb [unet]" not in viewer.layers


def test_stack_trains_on_planes_with_strokes_and_predicts_all_planes(make_napari_viewer, qtbot):
    from skimage import data

    viewer = make_napari_viewer(show=False)
    stack = np.stack([data.coins()[:64, :128]] * 3)
    strokes = np.zeros(stack.shape, np.int32)
    strokes[1] = coins_strokes()[:64, :128]
    viewer.add_image(stack, name="stack")
    viewer.add_labels(strokes, name="strokes")
    viewer.dims.set_point(0, 0)  # the current plane has no strokes
    panel = UnetTrainingPanel(viewer)
    panel.extra_options = dict(QUICK)
    panel.steps.value, panel.patch_size.value = 2, 32
    panel.train_on.value = ALL
    panel.train()
    _wait(qtbot, panel)
    assert panel.jobs.last_error is None, panel.jobs.last_error
    assert panel.state.labeled_pixels == np.count_nonzero(strokes)
    panel.predict_on.value = PREDICT_ALL
    panel.predict()
    panel.cancel_button.changed.emit(True)  # cancelled prediction: nothing written
    _wait(qtbot, panel)
    assert "stack [unet]" not in viewer.layers and "cancelled" in panel.message.value.lower()
    panel.predict()
    _wait(qtbot, panel)
    out = viewer.layers["stack [unet]"]
    assert out.data.shape == stack.shape and (np.asarray(out.data) > 0).all()


def test_sample_with_strokes_and_smoke(make_napari_viewer):
    viewer = make_napari_viewer(show=False)
    viewer.open_sample("napari-segsuite", "coins_strokes")
    assert [layer.name for layer in viewer.layers] == ["coins", "coins strokes"]
    strokes = viewer.layers["coins strokes"]
    assert strokes.data.shape == viewer.layers["coins"].data.shape
    panel = UnetTrainingPanel(viewer)
    panel.strokes.value = strokes
    assert panel.names() == ["background", "coin"]  # from the layer's features
    panel.extra_options = dict(QUICK)
    panel.smoke(steps=4)
    out = viewer.layers["coins [unet]"]
    assert out.data.shape == (303, 384) and np.asarray(out.data).min() >= 1
    assert len(panel.curve.train) == 4
