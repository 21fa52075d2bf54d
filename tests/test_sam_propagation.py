"""Propagation through z / time: the task with SAM, SAM 2.1 video and an oracle; the widget."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.api import SamSession
from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress, run_sync
from napari_segsuite.tasks.propagation import choose_method, mask_iou, propagate_job
from napari_segsuite.testing.stacks import moving_disk_stack

START = 3


class _PromptModel:
    """What propagation asks of a session's prompt model: mask prompts yes, video no."""

    takes_mask_prompt = True
    supports_video = False


class OracleSession:
    """A session whose 'model' returns the bright blob the prompt box overlaps most (method check only)."""

    prompt_model = _PromptModel()

    def set_image_job(self, plane):
        from scipy import ndimage

        self.blobs, _ = ndimage.label(np.asarray(plane) > 100)
        yield Progress(1, 1, "oracle")

    def predict(self, box=None, mask=None, multimask=True, **_):
        r0, c0, r1, c1 = (int(v) for v in box)
        window = self.blobs[r0:r1 + 1, c0:c1 + 1]
        ids, counts = np.unique(window[window > 0], return_counts=True)
        out = np.zeros(self.blobs.shape, bool) if not len(ids) else self.blobs == ids[np.argmax(counts)]
        return out[None], np.ones(1, np.float32)


def test_projection_follows_a_moving_growing_object_and_stops_when_it_disappears():
    stack, truth = moving_disk_stack()
    masks = run_sync(propagate_job(OracleSession(), stack, START, truth[START]))
    assert sorted(masks) == [0, 1, 2, 4, 5, 6]  # plane 7 has no object: propagation stops there
    ious = {z: mask_iou(m, truth[z]) for z, m in masks.items()}
    print("oracle projection IoU per plane:", ious)
    assert min(ious.values()) == 1.0
    forward = run_sync(propagate_job(OracleSession(), stack, START, truth[START], direction="forward", max_planes=2))
    assert sorted(forward) == [4, 5]


@pytest.fixture(scope="module")
def sam2_video(tmp_path_factory):
    from napari_segsuite.testing.tiny_models import build_tiny_sam2

    return build_tiny_sam2(tmp_path_factory.mktemp("sam2v") / "sam2_video", video=True, hidden_size=128)


def test_sam_projection_with_the_tiny_model_returns_masks_in_the_right_planes(tiny_sam_path):
    stack, truth = moving_disk_stack()
    session = SamSession(str(tiny_sam_path), device="cpu")
    assert choose_method(session) == "project"
    masks = api.propagate(stack, START, truth[START], session, max_planes=2, iou_floor=0.0)
    assert sorted(masks) == [1, 2, 4, 5]
    assert all(m.shape == (64, 64) and m.dtype == bool for m in masks.values())
    print("tiny SAM projection IoU with the truth:", {z: round(mask_iou(m, truth[z]), 3) for z, m in masks.items()})
    assert session.encoder_runs == 4
    with pytest.raises(InputError, match="video"):
        choose_method(session, "video")


def test_sam21_video_propagation_returns_masks_in_the_right_planes(sam2_video):
    stack, truth = moving_disk_stack()
    session = SamSession(str(sam2_video), device="cpu")
    assert choose_method(session) == "video"
    masks = api.propagate(stack, START, truth[START], session, iou_floor=0.0, max_planes=2)
    assert sorted(masks) == [1, 2, 4, 5]
    assert all(m.shape == (64, 64) and m.dtype == bool for m in masks.values())
    print("tiny SAM 2.1 video IoU with the truth:", {z: round(mask_iou(m, truth[z]), 3) for z, m in masks.items()})
    back = api.propagate(stack, START, truth[START], session, iou_floor=0.0, direction="backward")
    assert sorted(back) == [0, 1, 2]


def test_bad_inputs_are_clear_errors(tiny_sam_path):
    stack, truth = moving_disk_stack()
    session = OracleSession()
    with pytest.raises(InputError, match="no pixels"):
        run_sync(propagate_job(session, stack, START, np.zeros((64, 64), bool)))
    with pytest.raises(InputError, match="outside"):
        run_sync(propagate_job(session, stack, 9, truth[3]))
    with pytest.raises(InputError, match="direction"):
        run_sync(propagate_job(session, stack, START, truth[3], direction="up"))
