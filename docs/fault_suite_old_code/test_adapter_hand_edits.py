"""Adapter of test_fault_edits.py for the code before the hand-edit guard (5cd3ecd's parent).

main's tests read the dock's question (``widget.edit_question``), which the old code does not
have. These keep each scenario of main's tests and only its observable requirement, in API both
versions share: after a hand edit, Run again must not replace the edit before the user answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)
from napari_segsuite.widgets.base import LOCAL

pytestmark = pytest.mark.widget


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from napari_segsuite.testing.instance_doubles import sharpen_yolo

    root = tmp_path_factory.mktemp("edit_models")
    return {
        "segformer": build_tiny_segformer(root / "seg", num_labels=4),
        "panoptic": build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2),
        "yolo": sharpen_yolo(build_tiny_yolo(root / "yseg.pt", "segment", nc=3)),
    }


def _setup(widget, path):
    widget.models.model.value = LOCAL
    widget.models.local.value = str(path)
    widget.device.value = "cpu"
    return widget


def _run(qtbot, widget, start=None, timeout=120000):
    (start or widget.run)()
    qtbot.waitUntil(lambda: not widget.jobs.busy and widget.run_button.enabled, timeout=timeout)
    assert widget.jobs.last_error is None, widget.jobs.last_error


def _image(rng, shape=(64, 80)):
    image = np.zeros(shape, np.uint8)
    image[:, shape[1] // 2:] = 200
    return image + rng.integers(0, 40, shape, dtype=np.uint8)


def test_semantic_rerun_keeps_the_edit(make_napari_viewer, qtbot, models, rng):
    from napari_segsuite.widgets.semantic import SemanticWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image(_image(rng), name="img")
    widget = _setup(SemanticWidget(viewer), models["segformer"])
    _run(qtbot, widget)
    layer = viewer.layers["img [semantic]"]
    layer.paint((10, 10), 99, refresh=True)
    edited = np.array(layer.data, copy=True)
    _run(qtbot, widget)
    np.testing.assert_array_equal(layer.data, edited)


def test_instance_all_planes_rerun_keeps_the_edit(make_napari_viewer, qtbot, models, rng):
    from napari_segsuite.widgets.instance import InstanceWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image((rng.random((2, 96, 96, 3)) * 255).astype(np.uint8), name="stack", rgb=True)
    widget = _setup(InstanceWidget(viewer), models["yolo"])
    widget.conf.value, widget.max_det.value = 0.0, 5
    widget.scope.value = "all planes"
    _run(qtbot, widget)
    layer = viewer.layers["stack [instance]"]
    layer.paint((1, 3, 3), 77, refresh=True)
    edited = np.array(layer.data, copy=True)
    _run(qtbot, widget)
    np.testing.assert_array_equal(layer.data, edited)


def test_panoptic_rerun_keeps_the_edit(make_napari_viewer, qtbot, models, rng):
    from napari_segsuite.widgets.panoptic import PanopticWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image(_image(rng), name="img")
    widget = _setup(PanopticWidget(viewer), models["panoptic"])
    widget.threshold.value, widget.mask_threshold.value, widget.overlap.value = 0.0, 0.05, 0.0
    _run(qtbot, widget)
    layer = next(lyr for lyr in viewer.layers if lyr.name.startswith("img [panoptic"))
    layer.paint((5, 5), 55, refresh=True)
    edited = np.array(layer.data, copy=True)
    _run(qtbot, widget)
    np.testing.assert_array_equal(layer.data, edited)


def test_segment_everything_rerun_keeps_the_edit(make_napari_viewer, qtbot, tiny_sam_path, rng):
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget

    viewer = make_napari_viewer(show=False)
    viewer.add_image(_image(rng), name="img")
    widget = _setup(SamPromptWidget(viewer), tiny_sam_path)
    for key, v in {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}.items():
        widget.auto_params[key].value = v
    _run(qtbot, widget, widget.segment_everything)
    layer = viewer.layers["img [sam auto]"]
    layer.paint((5, 5), 55, refresh=True)
    edited = np.array(layer.data, copy=True)
    _run(qtbot, widget, widget.segment_everything)
    np.testing.assert_array_equal(layer.data, edited)
