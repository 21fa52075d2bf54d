"""api.segment_panoptic with a tiny real Mask2Former, checked against transformers itself."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.errors import InputError
from napari_segsuite.tasks.panoptic import default_stuff_ids, encode_label_divisor
from napari_segsuite.testing.tiny_models import build_tiny_mask2former

torch = pytest.importorskip("torch")

#: A seed whose random tiny model gives two segments on IMAGE at the LOW parameters.
SEED = 2
LOW = {"threshold": 0.0, "mask_threshold": 0.05, "overlap_mask_area_threshold": 0.0}


@pytest.fixture(scope="module")
def image():
    from skimage import data

    return data.coins()[::4, ::4]  # 76 x 96 uint8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_mask2former(tmp_path_factory.mktemp("m2f") / "tiny_panoptic", task="panoptic", num_labels=4, seed=SEED)


@pytest.fixture(scope="module")
def runner(folder):
    return api.load_model(str(folder), "cpu")


def _transformers_reference(folder, rgb, fuse, **params):
    """transformers on its own: from_pretrained, processor, model, post_process_panoptic_segmentation."""
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder).eval()
    processor = Mask2FormerImageProcessor.from_pretrained(folder)
    with torch.inference_mode():
        outputs = model(**processor(images=rgb, return_tensors="pt"))
    out = processor.post_process_panoptic_segmentation(
        outputs, label_ids_to_fuse=set(fuse), target_sizes=[rgb.shape[:2]], **params
    )[0]
    return out["segmentation"].numpy(), out["segments_info"]


@pytest.mark.parametrize("fuse", [(0,), (0, 1, 2, 3), ()])
def test_same_segments_as_transformers(folder, runner, image, fuse):
    rgb = np.repeat(image[..., None], 3, axis=-1)
    ref_seg, ref_info = _transformers_reference(folder, rgb, fuse, **LOW)
    result = api.segment_panoptic(image, runner, device="cpu", label_ids_to_fuse=fuse, **LOW)
    assert result.labels.dtype == np.int32 and result.labels.shape == image.shape
    np.testing.assert_array_equal(result.labels, np.where(ref_seg < 0, 0, ref_seg))
    ref = {}
    for s in ref_info:  # a fused class repeats its segment; keep its best score
        if s["id"] not in ref or s["score"] > ref[s["id"]]["score"]:
            ref[s["id"]] = s
    table = result.table.set_index("label")
    assert sorted(table.index) == sorted(ref)
    assert len(ref) >= 1
    for sid, s in ref.items():
        row = table.loc[sid]
        assert row["class_id"] == s["label_id"]
        assert row["score"] == pytest.approx(s["score"])
        assert bool(row["is_thing"]) == (s["label_id"] not in fuse)
        assert row["area"] == int((ref_seg == sid).sum())
        assert row["class_name"] == runner.class_names[s["label_id"]]


def test_two_segments_and_the_table_columns(runner, image):
    result = api.segment_panoptic(image, runner, label_ids_to_fuse=[0], **LOW)
    assert list(result.table.columns) == ["label", "class_id", "class_name", "is_thing", "score", "area"]
    assert len(result.table) == 2
    assert result.table["area"].sum() == (result.labels > 0).sum()
    assert result.parameters["threshold"] == 0.0 and result.parameters["label_ids_to_fuse"] == [0]


def test_default_thresholds_may_give_no_segment_but_a_defined_result(runner, image):
    result = api.segment_panoptic(image, runner, threshold=0.8)  # random weights: nothing scores 0.8
    assert result.labels.shape == image.shape and not result.labels.any()
    assert len(result.table) == 0 and "label" in result.table.columns


def test_label_divisor_encoding(runner, image):
    plain = api.segment_panoptic(image, runner, label_ids_to_fuse=[0], **LOW)
    coded = api.segment_panoptic(image, runner, label_ids_to_fuse=[0], label_divisor=1000, **LOW)
    for _, row in coded.table.iterrows():
        assert row["label"] // 1000 == row["class_id"]
        assert row["label"] % 1000 >= 1
    # the same partition of the image, only renumbered
    pairs = set(zip(plain.labels.ravel().tolist(), coded.labels.ravel().tolist(), strict=True))
    assert len(pairs) == len(np.unique(plain.labels)) == len(np.unique(coded.labels))
    # the semantic view agrees with id // divisor
    np.testing.assert_array_equal(coded.semantic_labels(), np.where(coded.labels > 0, coded.labels // 1000 + 1, 0))


def test_label_divisor_errors():
    seg = np.array([[1, 2], [3, 0]])
    rows = [{"id": 1, "label_id": 5}, {"id": 2, "label_id": 5}, {"id": 3, "label_id": 1}]
    labels, mapping = encode_label_divisor(seg, rows, 10)
    assert mapping == {1: 51, 2: 52, 3: 11}
    np.testing.assert_array_equal(labels, [[51, 52], [11, 0]])
    with pytest.raises(InputError, match="larger label_divisor"):
        encode_label_divisor(seg, rows, 2)
    with pytest.raises(InputError, match="beyond int32"):
        encode_label_divisor(seg, rows, 2**30)


def test_bad_parameters_are_clear_errors(runner, image):
    with pytest.raises(InputError, match="threshold must be between 0 and 1"):
        api.segment_panoptic(image, runner, threshold=1.5)
    with pytest.raises(InputError, match="label_divisor"):
        api.segment_panoptic(image, runner, label_divisor=1)


def test_semantic_model_is_refused(tmp_path, image):
    sem = build_tiny_mask2former(tmp_path / "semantic", task="semantic", num_labels=3)
    with pytest.raises(InputError, match="not panoptic"):
        api.segment_panoptic(image, str(sem), device="cpu")


def test_split_views_and_evaluation_against_itself(runner, image):
    result = api.segment_panoptic(image, runner, label_ids_to_fuse=[0], **LOW)
    instances, feats = result.instance_labels()
    things = result.table[result.table["is_thing"]]
    assert len(np.unique(instances[instances > 0])) == len(things) == len(feats)
    sem = result.semantic_labels()
    assert set(np.unique(sem[sem > 0]) - 1) == set(result.table["class_id"])
    report = api.evaluate(result, result.labels, gt_classes=dict(zip(result.table["label"], result.table["class_id"], strict=True)))
    assert report.summary["pq"] == 1.0 and report.summary["iou"] == 1.0
    assert report.summary["ap"] == pytest.approx(1.0)
    # a ground truth without classes: class-agnostic comparison
    assert api.evaluate(result, result.labels.astype(np.int64)).summary["pq"] == 1.0


def test_evaluate_with_label_divisor():
    gt = np.zeros((8, 8), np.int64)
    gt[:4, :4] = 1 * 1000 + 1
    gt[4:, :] = 2 * 1000 + 1
    pred = gt.copy()
    pred[4:, :] = 1 * 1000 + 2  # right region, wrong class
    report = api.evaluate(pred, gt, label_divisor=1000)
    rows = {r["class_id"]: r for r in report.per_class}
    assert rows[1]["tp"] == 1 and rows[1]["fp"] == 1 and rows[2]["fn"] == 1


def test_default_stuff_ids():
    assert default_stuff_ids(133) == tuple(range(80, 133))
    assert default_stuff_ids(19) == tuple(range(11))
    assert default_stuff_ids(4) == ()


# -- the second way: semantic + instance fusion ----------------------------------------


def test_fuse_semantic_and_instances_by_hand():
    from napari_segsuite.tasks.panoptic import fuse_semantic_instance

    semantic = np.zeros((10, 10), int)
    semantic[:, 5:] = 2  # "sky" on the right; class 0 on the left
    masks = np.zeros((4, 10, 10), bool)
    masks[0, 0:4, 0:4] = True          # score 0.9, class 1
    masks[1, 2:6, 2:6] = True          # score 0.8: 4 of its 16 pixels taken, kept on the free ones
    masks[2, 0:3, 0:3] = True          # score 0.7: fully covered -> dropped
    masks[3, 8:10, 8:10] = True        # score 0.3: under the threshold -> dropped
    result = fuse_semantic_instance(
        semantic, masks, [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.3], stuff_classes=[2], min_stuff_area=5,
        class_names={1: "cell", 2: "sky"},
    )
    t = result.table
    assert t["class_name"].tolist() == ["cell", "cell", "sky"]
    assert t["is_thing"].tolist() == [True, True, False]
    assert t["area"].tolist() == [16, 12, 50 - 4]  # sky loses the 4 pixels of instance 2 (rows 2-5, col 5)
    assert np.isnan(t["score"].iloc[2])
    assert (result.labels[0:4, 0:4] == 1).all() and result.labels[5, 5] == 2
    assert result.labels[9, 0] == 0  # class 0 is not in stuff_classes
    # the label image form gives the same answer
    labels = np.zeros((10, 10), int)
    for k in (1, 0):  # paint the lower score first so the higher one wins the overlap
        labels[masks[k] & (labels == 0) if k == 1 else masks[k]] = k + 1
    same = fuse_semantic_instance(semantic, labels, {1: 1, 2: 1}, {1: 0.9, 2: 0.8}, stuff_classes=[2], min_stuff_area=5)
    np.testing.assert_array_equal(same.labels, result.labels)
    coded = fuse_semantic_instance(semantic, masks, [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.3], stuff_classes=[2],
                                   min_stuff_area=5, label_divisor=100)
    assert sorted(coded.table["label"]) == [101, 102, 201]


def test_fuse_checks_its_input():
    from napari_segsuite.tasks.panoptic import fuse_semantic_instance

    assert api.fuse_semantic_instance(np.zeros((2, 2), int), np.ones((1, 2, 2), bool), [1]).table["area"].tolist() == [4]
    with pytest.raises(InputError, match="same image"):
        fuse_semantic_instance(np.zeros((4, 4), int), np.zeros((1, 5, 5), bool), [1])
    result = fuse_semantic_instance(np.zeros((4, 4), int), np.zeros((0, 4, 4), bool), [], stuff_classes=[])
    assert not result.labels.any() and len(result.table) == 0


def test_default_thresholds_are_those_of_transformers():
    import inspect

    from transformers import Mask2FormerImageProcessor

    library = inspect.signature(Mask2FormerImageProcessor.post_process_panoptic_segmentation).parameters
    ours = inspect.signature(api.segment_panoptic).parameters
    names = ("threshold", "mask_threshold", "overlap_mask_area_threshold")
    assert {n: ours[n].default for n in names} == {n: library[n].default for n in names}
