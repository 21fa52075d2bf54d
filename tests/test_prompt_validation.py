"""Every malformed prompt array raises InputError with a sentence: core checks, SamSession, API."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.errors import InputError

try:  # the session and API tests below run (and failed) without this module too
    from napari_segsuite.core.prompts import as_box, as_boxes, as_mask, as_point_labels, as_points
except ImportError:
    as_box = as_boxes = as_mask = as_point_labels = as_points = None

BAD_POINTS = [
    np.zeros((3, 3)), np.zeros(3), np.zeros((2, 2, 2)), [[1, 2], [3]], [["a", "b"]],
    np.array([[1 + 2j, 3]]), [[np.nan, 1.0]], [[np.inf, 1.0]], np.array([object(), object()], dtype=object),
]
BAD_LABELS = [np.ones(3), np.ones((2, 1)), [2, 1], [0.5, 1], ["x", "y"], [np.nan, 1]]
BAD_BOXES = [np.zeros(3), np.zeros(5), np.zeros((2, 3)), np.zeros((1, 2, 4)), [[np.nan, 0, 4, 4]], "0,0,4,4",
             [[1, 2, 3], [1, 2, 3, 4]], np.array([1j, 0, 4, 4])]
BAD_MASKS = [np.zeros((9, 9), bool), np.zeros((16, 16, 1), bool), np.zeros(16, bool), np.full((16, 16), np.nan),
             np.full((16, 16), "x")]


@pytest.mark.parametrize("points", BAD_POINTS, ids=range(len(BAD_POINTS)))
def test_bad_points(points):
    with pytest.raises(InputError, match=r"\w+ \w+.*\."):
        as_points(points)


@pytest.mark.parametrize("labels", BAD_LABELS, ids=range(len(BAD_LABELS)))
def test_bad_point_labels(labels):
    with pytest.raises(InputError, match="point labels"):
        as_point_labels(labels, 2)


@pytest.mark.parametrize("boxes", BAD_BOXES, ids=range(len(BAD_BOXES)))
def test_bad_boxes(boxes):
    with pytest.raises(InputError, match="box"):
        as_boxes(boxes)


@pytest.mark.parametrize("mask", BAD_MASKS, ids=range(len(BAD_MASKS)))
def test_bad_masks(mask):
    with pytest.raises(InputError, match="mask"):
        as_mask(mask, (16, 16))


def test_good_prompts_pass_through():
    np.testing.assert_array_equal(as_points([3, 4]), [[3.0, 4.0]])
    np.testing.assert_array_equal(as_point_labels([True, False], 2), [1, 0])
    np.testing.assert_array_equal(as_box([[1, 2, 3, 4]]), [1, 2, 3, 4])
    assert as_boxes([]).shape == (0, 4)
    with pytest.raises(InputError, match="One box"):
        as_box(np.zeros((2, 4)))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    path = build_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")
    s = api.SamSession(str(path), "cpu")
    s.set_image(np.random.default_rng(0).random((16, 16)).astype(np.float32))
    return s, path


CASES = [
    ({"points": np.zeros((3, 3))}, "points"),
    ({"points": np.zeros(3)}, "points"),
    ({"points": [[1, 2]], "point_labels": [1, 1]}, "point labels"),
    ({"points": [[1, 2]], "point_labels": [[1]]}, "point labels"),
    ({"points": [[1, 2]], "point_labels": [3]}, "point labels"),
    ({"point_labels": [1]}, "without points"),
    ({"box": [0, 0, 8]}, "box"),
    ({"box": np.zeros((2, 4))}, "box"),
    ({"box": [0, 0, 8, np.nan]}, "box"),
    ({"box": [0, 0, 8, 8], "mask": np.zeros((8, 8), bool)}, "mask"),
    ({"box": [0, 0, 8, 8], "mask": np.zeros((16, 16, 2), bool)}, "mask"),
]


@pytest.mark.parametrize(("kwargs", "word"), CASES, ids=range(len(CASES)))
def test_session_predict_raises_input_error(session, kwargs, word):
    s, _ = session
    with pytest.raises(InputError, match=word):
        s.predict(**kwargs)


@pytest.mark.parametrize("boxes", [np.zeros(3), np.zeros((2, 5)), [[0, 0, np.inf, 4]]])
def test_session_predict_boxes_and_api_raise_input_error(session, boxes):
    s, _ = session
    with pytest.raises(InputError, match="box"):
        s.predict_boxes(boxes)
    with pytest.raises(InputError, match="box"):
        api.detect_then_segment(np.zeros((16, 16), np.float32), boxes, sam=s, device="cpu")


def test_propagation_start_mask_of_wrong_shape(session):
    s, _ = session
    with pytest.raises(InputError, match="start mask"):
        api.propagate(np.zeros((3, 16, 16), np.float32), s, start_index=1, mask=np.ones((8, 8), bool))
