"""Faults users cause while a Semantic, Instance or Panoptic job runs (real viewer, real workers).

While the job runs (the model loading or predicting in its worker) the user deletes the
input image, deletes the output layer, picks another image, moves the slider to another
plane, or picks another model. Each ends with a clear message or the right result: the
result of the image, plane and model the job was started on, in that image's layer and
plane, and never a damaged or wrong Labels layer.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)
from napari_segsuite.widgets.base import LOCAL

pytestmark = pytest.mark.widget

KINDS = ("semantic", "instance", "panoptic")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from napari_segsuite.testing.instance_doubles import sharpen_yolo

    root = tmp_path_factory.mktemp("midrun_models")
    return {
        "semantic": (build_tiny_segformer(root / "seg", num_labels=4),
                     build_tiny_segformer(root / "seg2", num_labels=4, seed=5)),
        "panoptic": (build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2),
                     build_tiny_mask2former(root / "m2f2", task="panoptic", num_labels=4, seed=9)),
        "instance": (sharpen_yolo(build_tiny_yolo(root / "y.pt", "segment", nc=3)),
                     sharpen_yolo(build_tiny_yolo(root / "y2.pt", "segment", nc=3, seed=4))),
    }


def _dock(viewer, kind, model):
    from napari_segsuite.widgets.instance import InstanceWidget
    from napari_segsuite.widgets.panoptic import PanopticWidget
    from napari_segsuite.widgets.semantic import SemanticWidget

    widget = {"semantic": SemanticWidget, "instance": InstanceWidget, "panoptic": PanopticWidget}[kind](viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(model)
    widget.device.value = "cpu"
    if kind == "panoptic":
        widget.threshold.value, widget.mask_threshold.value, widget.overlap.value = 0.0, 0.05, 0.0
    if kind == "instance":
        widget.conf.value, widget.max_det.value = 0.0, 5
    return widget


def _reference(kind, image2d, model):
    if kind == "semantic":
        return api.segment_semantic(image2d, model, device="cpu").labels
    if kind == "panoptic":
        return api.segment_panoptic(image2d, model, device="cpu", threshold=0.0, mask_threshold=0.05,
                                    overlap_mask_area_threshold=0.0).labels
    return api.segment_instances(image2d, model, device="cpu", conf=0.0, max_det=5).labels


def _images(shape=(64, 64)):
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 255).astype(np.uint8), (rng.random(shape) * 255).astype(np.uint8)


def _start(widget):
    widget.run()
    assert widget.jobs.busy, widget.message.value  # what follows happens while the job runs


def _finish(qtbot, widget, timeout=180000):
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)


def _labels_layers(viewer):
    from napari.layers import Labels

    return sorted(layer.name for layer in viewer.layers if isinstance(layer, Labels))


@pytest.mark.parametrize("kind", KINDS)
def test_input_deleted_mid_run_drops_the_result_with_a_message(make_napari_viewer, qtbot, models, kind, notes):
    viewer = make_napari_viewer(show=False)
    a, _ = _images()
    image = viewer.add_image(a, name="A")
    widget = _dock(viewer, kind, models[kind][0])
    widget.image.value = image
    _start(widget)
    viewer.layers.remove(image)
    _finish(qtbot, widget)
    assert "Image 'A' was removed" in widget.message.value, widget.message.value
    assert any("Image 'A' was removed" in n for n in notes)
    assert _labels_layers(viewer) == []  # no output for an image that is gone
    assert "Traceback" not in widget.message.value


@pytest.mark.parametrize("kind", KINDS)
def test_input_replaced_mid_run_drops_the_result(make_napari_viewer, qtbot, models, kind):
    viewer = make_napari_viewer(show=False)
    a, b = _images()
    image = viewer.add_image(a, name="A")
    widget = _dock(viewer, kind, models[kind][0])
    widget.image.value = image
    _start(widget)
    image.data = b  # other pixels, same name and shape
    _finish(qtbot, widget)
    assert "got other pixels" in widget.message.value, widget.message.value
    assert _labels_layers(viewer) == []


@pytest.mark.parametrize("kind", KINDS)
def test_output_deleted_mid_run_is_written_anew(make_napari_viewer, qtbot, models, kind):
    viewer = make_napari_viewer(show=False)
    a, _ = _images()
    image = viewer.add_image(a, name="A", scale=(0.5, 2.0), translate=(3.0, -1.0))
    widget = _dock(viewer, kind, models[kind][0])
    widget.image.value = image
    _start(widget)
    _finish(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    name = f"A [{kind}]"
    _start(widget)
    viewer.layers.remove(name)
    _finish(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    out = viewer.layers[name]
    np.testing.assert_array_equal(out.data, _reference(kind, a, models[kind][0]))
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)


@pytest.mark.parametrize("kind", KINDS)
def test_image_switched_mid_run_writes_to_the_image_it_ran_on(make_napari_viewer, qtbot, models, kind):
    viewer = make_napari_viewer(show=False)
    a, b = _images()
    image_a = viewer.add_image(a, name="A")
    image_b = viewer.add_image(b, name="B")
    widget = _dock(viewer, kind, models[kind][0])
    widget.image.value = image_a
    _start(widget)
    widget.image.value = image_b
    viewer.layers.selection.active = image_b
    _finish(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    assert _labels_layers(viewer) == [f"A [{kind}]"]
    np.testing.assert_array_equal(viewer.layers[f"A [{kind}]"].data, _reference(kind, a, models[kind][0]))


@pytest.mark.parametrize("kind", KINDS)
def test_plane_switched_mid_run_writes_the_plane_it_ran_on(make_napari_viewer, qtbot, models, kind):
    viewer = make_napari_viewer(show=False)
    stack = (np.random.default_rng(1).random((3, 64, 64)) * 255).astype(np.uint8)
    image = viewer.add_image(stack, name="S", scale=(2.0, 1.0, 1.0))
    widget = _dock(viewer, kind, models[kind][0])
    widget.image.value = image
    viewer.dims.set_point(0, 2.0)  # plane 1
    _start(widget)
    viewer.dims.set_point(0, 4.0)  # plane 2
    _finish(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    out = np.asarray(viewer.layers[f"S [{kind}]"].data)
    assert out.shape == stack.shape
    np.testing.assert_array_equal(out[1], _reference(kind, stack[1], models[kind][0]))
    assert not out[[0, 2]].any()


@pytest.mark.parametrize("kind", KINDS)
def test_model_switched_mid_run_writes_the_first_models_result(make_napari_viewer, qtbot, models, kind):
    viewer = make_napari_viewer(show=False)
    a, _ = _images()
    image = viewer.add_image(a, name="A")
    first, second = models[kind]
    widget = _dock(viewer, kind, first)
    widget.image.value = image
    _start(widget)
    widget.models.local.value = str(second)
    _finish(qtbot, widget)
    assert widget.jobs.last_error is None, widget.jobs.last_error
    out = viewer.layers[f"A [{kind}]"]
    expected = _reference(kind, a, first)
    np.testing.assert_array_equal(out.data, expected)
    assert str(first) in str(out.metadata["segsuite"]["model"]), out.metadata["segsuite"]["model"]
    # the next run uses the model now chosen
    widget.run()
    _finish(qtbot, widget)
    assert str(second) in str(viewer.layers[f"A [{kind}]"].metadata["segsuite"]["model"])

