import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.labels import (
    label_table,
    masks_to_labels,
    next_free_id,
    paste_mask,
    relabel_sequential,
)
from napari_segsuite.core.progress import Progress, run_sync, subjob


def test_next_free_id():
    assert next_free_id(np.zeros((3, 3), int)) == 1
    assert next_free_id(np.array([[0, 5], [2, 0]])) == 6


def test_paste_mask_keeps_existing_labels_unless_overwrite():
    labels = np.zeros((4, 4), np.int32)
    labels[0, :] = 3
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    changed = paste_mask(labels, mask, 7)
    assert changed.sum() == 2
    assert (labels[0, :2] == 3).all() and (labels[1, :2] == 7).all()
    paste_mask(labels, mask, 7, overwrite=True)
    assert (labels[:2, :2] == 7).all()
    with pytest.raises(InputError):
        paste_mask(labels, mask[:3], 1)
    with pytest.raises(InputError):
        paste_mask(labels, mask, 0)


def test_label_table_area_and_bbox():
    labels = np.zeros((5, 6), np.int32)
    labels[1:3, 2:5] = 4
    labels[4, 0] = 9
    t = label_table(labels, extra={4: {"class_name": "coin"}})
    assert list(t["label"]) == [4, 9]
    assert list(t["area"]) == [6, 1]
    assert list(t["bbox_0_min"]) == [1, 4] and list(t["bbox_0_max"]) == [3, 5]
    assert list(t["bbox_1_min"]) == [2, 0] and list(t["bbox_1_max"]) == [5, 1]
    assert list(t["class_name"]) == ["coin", None]
    empty = label_table(np.zeros((3, 3), int))
    assert len(empty["label"]) == 0 and len(empty["area"]) == 0


def test_relabel_sequential():
    out, mapping = relabel_sequential(np.array([[0, 10], [30, 10]]))
    np.testing.assert_array_equal(out, [[0, 1], [2, 1]])
    assert mapping == {10: 1, 30: 2}


def test_masks_to_labels_higher_score_wins():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :3, :3] = True
    masks[1, 1:, 1:] = True
    labels, order = masks_to_labels(masks, np.array([0.2, 0.9]))
    assert list(order) == [1, 0]
    assert labels[2, 2] == 1  # overlap goes to the 0.9 mask, which gets id 1
    assert labels[0, 0] == 2


def test_run_sync_and_subjob_progress():
    def inner():
        yield Progress(1, 2, "a")
        yield Progress(2, 2, "b")
        return "inner-done"

    def outer():
        r = yield from subjob(inner(), offset=10, total=20, prefix="x: ")
        yield Progress(20, 20, "end")
        return r

    seen = []
    assert run_sync(outer(), seen.append) == "inner-done"
    assert [(p.step, p.total, p.message) for p in seen] == [(11, 20, "x: a"), (12, 20, "x: b"), (20, 20, "end")]
    assert seen[0].fraction == pytest.approx(0.55)
