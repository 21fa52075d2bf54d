"""SAM 3 tracker and EdgeTAM as prompt models: sessions, segment everything, propagation, detector + masks."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.api import SamSession
from napari_segsuite.tasks.propagation import choose_method, mask_iou
from napari_segsuite.testing.stacks import moving_disk_stack
from napari_segsuite.testing.tiny_trackers import (
    build_tiny_edgetam,
    build_tiny_sam3_tracker,
    build_tiny_sam3_video,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers")
    return {
        "sam3_video": build_tiny_sam3_video(root / "sam3"),
        "sam3_tracker": build_tiny_sam3_tracker(root / "sam3_tracker"),
        "edgetam_video": build_tiny_edgetam(root / "edgetam"),
        "edgetam_image": build_tiny_edgetam(root / "edgetam_image", video=False),
    }


@pytest.fixture(scope="module")
def image():
    from napari_segsuite.testing.instance_doubles import ramp_with_blobs

    return ramp_with_blobs()[:120, :150].copy()


LIBRARY = {
    "sam3_video": ("Sam3TrackerModel", "Sam3TrackerProcessor", "SAM 3 tracker"),
    "sam3_tracker": ("Sam3TrackerModel", "Sam3TrackerProcessor", "SAM 3 tracker"),
    "edgetam_video": ("EdgeTamModel", "Sam2Processor", "EdgeTAM"),
    "edgetam_image": ("EdgeTamModel", "Sam2Processor", "EdgeTAM"),
}


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_session_equals_the_library(folders, image, name):
    import torch
    import transformers

    model_cls, proc_cls, title = LIBRARY[name]
    session = SamSession(str(folders[name]), device="cpu")
    assert session.prompt_model.title == title  # the facebook/sam3 layout is prompted through its tracker
    model = getattr(transformers, model_cls).from_pretrained(folders[name]).eval()
    processor = getattr(transformers, proc_cls).from_pretrained(folders[name])
    session.set_image(image)
    pts = np.array([[30, 40], [60, 100]])
    for kw, ref_kw in [
        ({"points": pts, "point_labels": np.array([1, 0])},
         {"input_points": [[[[40, 30], [100, 60]]]], "input_labels": [[[1, 0]]]}),
        ({"box": np.array([10, 20, 80, 120])}, {"input_boxes": [[[20, 10, 120, 80]]]}),
    ]:
        masks, scores = session.predict(**kw)
        inputs = processor(images=image, return_tensors="pt", **ref_kw)
        with torch.no_grad():
            out = model(**inputs, multimask_output=True)
        ref = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0].numpy()
        assert masks.shape == (3, *image.shape[:2])
        np.testing.assert_array_equal(masks, ref)
        np.testing.assert_allclose(scores, out.iou_scores[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert session.encoder_runs == 1


def test_segment_everything_runs_on_edgetam_and_the_sam3_tracker(folders, image):
    for name in ("edgetam_video", "sam3_video"):
        auto = api.sam_automatic(image, str(folders[name]), device="cpu", points_per_side=4,
                                 pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
        assert auto.labels.shape == image.shape[:2]
        assert len(auto.table) > 0 and set(np.unique(auto.labels)) - {0} <= set(auto.table["label"])


@pytest.mark.parametrize("name", ["edgetam_video", "sam3_video"])
def test_video_propagation_with_the_trackers(folders, name):
    stack, truth = moving_disk_stack()
    session = SamSession(str(folders[name]), device="cpu")
    assert choose_method(session) == "video"
    # random weights lose the object at once: min_area=0 keeps going, so the planes visited show
    masks = api.propagate(stack, session, start_index=3, mask=truth[3], iou_floor=0.0, max_planes=2, min_area=0)
    assert sorted(masks) == [1, 2, 4, 5]
    assert all(m.shape == (64, 64) and m.dtype == bool for m in masks.values())
    print(name, "video IoU with the truth:", {z: round(mask_iou(m, truth[z]), 3) for z, m in masks.items()})


def test_image_only_edgetam_propagates_by_projection(folders):
    session = SamSession(str(folders["edgetam_image"]), device="cpu")
    assert choose_method(session) == "project"


def test_boxes_to_masks_with_edgetam(folders, image):
    session = SamSession(str(folders["edgetam_video"]), device="cpu")
    boxes = np.array([[10, 20, 80, 120], [30, 30, 100, 140]])
    result = api.detect_then_segment(image, boxes, sam=session)
    session.set_image(image)
    expected = np.zeros(image.shape[:2], np.int32)
    for k, box in enumerate(boxes):
        masks, _ = session.predict(box=box, multimask=False)
        expected[masks[0] & (expected == 0)] = k + 1
    np.testing.assert_array_equal(result.labels, expected)
    assert expected.max() == 2


def test_registry_entries_and_the_shared_sam3_folder(tmp_path):
    from napari_segsuite.models.registry import get_entry
    from napari_segsuite.models.store import ModelStore

    store = ModelStore(tmp_path)
    assert store.path_for(get_entry("sam3_tracker")) == store.path_for(get_entry("sam3"))
    assert get_entry("edgetam").hf_repo == "yonigozlan/EdgeTAM-hf" and get_entry("edgetam").size_mb > 0
    assert "CPU" in get_entry("edgetam").title
    with pytest.raises(api.ModelNotAvailableError, match="yonigozlan/EdgeTAM-hf"):
        SamSession("edgetam", device="cpu", store=store)


def _library_tracks(folder, frames, concepts, threshold):
    """Sam3VideoModel run by hand: per frame, the processor's object ids, scores and masks."""
    import torch
    import transformers

    model = transformers.Sam3VideoModel.from_pretrained(folder).eval()
    processor = transformers.Sam3VideoProcessor.from_pretrained(folder)
    model.score_threshold_detection = model.new_det_thresh = threshold
    state = processor.init_video_session(video=frames, inference_device="cpu")
    processor.add_text_prompt(state, concepts)
    out = {}
    with torch.inference_mode():
        for output in model.propagate_in_video_iterator(state, start_frame_idx=0):
            out[int(output.frame_idx)] = processor.postprocess_outputs(state, output)
    return out


def test_track_concepts_equals_sam3_video(folders):
    stack, _ = moving_disk_stack(n=4)
    frames = np.repeat(((stack > 0) * 200 + 20).astype(np.uint8)[..., None], 3, axis=-1)
    result = api.track_concepts(frames, str(folders["sam3_video"]), classes=["cell", "coin"], conf=0.2, device="cpu")
    ref = _library_tracks(folders["sam3_video"], frames, ["cell", "coin"], 0.2)
    assert result.labels.shape == (4, 64, 64) and result.labels.dtype == np.int32
    assert list(result.table.columns) == ["label", "class_name", "score", "first_plane", "last_plane"]
    assert len(result.table) > 0 and set(result.table.class_name) <= {"cell", "coin"}
    ids = {}
    for z in sorted(ref):
        r = ref[z]
        order = np.argsort(-r["scores"].numpy(), kind="stable")
        expected = np.zeros((64, 64), np.int32)
        for i in order:
            obj, mask = int(r["object_ids"][i]), r["masks"][i].numpy()
            if not mask.any():
                continue
            ids.setdefault(obj, len(ids) + 1)
            expected[mask & (expected == 0)] = ids[obj]
        np.testing.assert_array_equal(result.labels[z], expected)
    # one id per object across planes: an object seen on several planes keeps its label
    for row in result.table.itertuples():
        present = [z for z in range(4) if (result.labels[z] == row.label).any()]
        assert present and present[0] == row.first_plane and present[-1] == row.last_plane


def test_track_concepts_bad_input(folders, tmp_path):
    stack = np.zeros((3, 64, 64), np.uint8)
    with pytest.raises(api.InputError, match="concepts is empty"):
        api.track_concepts(stack, str(folders["sam3_video"]), classes="cell,,coin", device="cpu")
    with pytest.raises(api.InputError, match="takes no concepts"):
        api.track_concepts(stack, str(folders["edgetam_video"]), classes="cell", device="cpu")
    with pytest.raises(api.InputError, match="outside the stack"):
        api.track_concepts(stack, str(folders["sam3_video"]), classes="cell", start_index=5, device="cpu")
    from napari_segsuite.testing.tiny_open_vocab import build_tiny_sam3

    image_only = build_tiny_sam3(tmp_path / "sam3_image")
    with pytest.raises(api.InputError, match="video weights"):
        api.track_concepts(stack, str(image_only), classes="cell", device="cpu")


def test_the_sam3_tracker_entry_reaches_the_concept_model_of_its_folder(folders):
    tracker = api.load_model(folders["sam3_video"], "cpu", family="sam3_tracker")
    concepts = tracker.concept_runner()
    assert concepts.family == "sam3" and concepts.takes_exemplars and tracker.concept_runner() is concepts
    assert api.load_model(folders["sam3_tracker"], "cpu").concept_runner() is None  # a tracker-only folder
