"""SAM 3 concepts and open-vocabulary detectors + SAM give what transformers' own post-processing gives."""

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.errors import CheckpointError, InputError
from napari_segsuite.core.labels import masks_to_labels
from napari_segsuite.testing.tiny_open_vocab import (
    build_tiny_grounding_dino,
    build_tiny_owlv2,
    build_tiny_sam3,
)


@pytest.fixture(scope="module")
def image():
    from napari_segsuite.testing.instance_doubles import ramp_with_blobs

    return ramp_with_blobs()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_vocab")
    return {
        "sam3": build_tiny_sam3(root / "sam3"),
        "gdino": build_tiny_grounding_dino(root / "gdino"),
        "owlv2": build_tiny_owlv2(root / "owlv2"),
    }


@pytest.fixture(scope="module")
def sam3(folders):
    return api.load_model(folders["sam3"], "cpu")


def _library_sam3(folder):
    """The folder loaded by transformers itself, not through napari-segsuite."""
    from transformers import Sam3Model, Sam3Processor

    return Sam3Model.from_pretrained(folder, local_files_only=True).eval(), Sam3Processor.from_pretrained(folder)


def _sam3_reference(model, proc, image, text, conf, mask_threshold, boxes=None, labels=None):
    import torch

    kwargs = {"images": image, "text": text, "return_tensors": "pt"}
    if boxes is not None:
        kwargs.update(input_boxes=[boxes], input_boxes_labels=[labels])
    inputs = proc(**kwargs)
    with torch.inference_mode():
        out = model(**inputs)
    return proc.post_process_instance_segmentation(
        out, threshold=conf, mask_threshold=mask_threshold, target_sizes=inputs["original_sizes"].tolist()
    )[0]


def _rows(result):
    t = result.table
    return t[["bbox_row0", "bbox_col0", "bbox_row1", "bbox_col1"]].to_numpy(), t["score"].to_numpy()


def _check_against(result, refs, concepts):
    """``refs[k]``: the processor's result for concept k; the pooled instances, higher score on top."""
    scores = np.concatenate([r["scores"].numpy() for r in refs])
    boxes = np.concatenate([r["boxes"].numpy().reshape(-1, 4) for r in refs])
    masks = np.concatenate([r["masks"].numpy().astype(bool) for r in refs])
    classes = np.concatenate([np.full(len(r["scores"]), k) for k, r in enumerate(refs)])
    order = np.argsort(-scores, kind="stable")
    got_boxes, got_scores = _rows(result)
    assert len(got_scores) == len(scores) > 0
    np.testing.assert_allclose(got_scores, scores[order], rtol=1e-5)
    np.testing.assert_allclose(got_boxes, boxes[order][:, [1, 0, 3, 2]], atol=1e-3)
    assert list(result.table.class_name) == [concepts[k] for k in classes[order]]
    expected, _ = masks_to_labels(masks[order], scores[order])
    np.testing.assert_array_equal(result.labels, expected)


def test_sam3_concepts_equal_the_processor(folders, sam3, image):
    model, proc = _library_sam3(folders["sam3"])
    everything = [_sam3_reference(model, proc, image, c, 0.0, 0.5)["scores"].numpy() for c in ("cell", "nucleus")]
    conf = float(np.median(np.concatenate(everything)))  # some instances pass, some do not
    refs = [_sam3_reference(model, proc, image, c, conf, 0.6) for c in ("cell", "nucleus")]
    assert 0 < sum(len(r["scores"]) for r in refs) < sum(len(s) for s in everything)
    result = api.segment_instances(image, sam3, classes="cell, nucleus", conf=conf, mask_threshold=0.6)
    _check_against(result, refs, ["cell", "nucleus"])
    assert set(result.table.class_id) <= {0, 1}
    # the mask threshold is the processor's: a higher one gives smaller masks
    strict = sam3.predict_instances(image, conf=0.0, mask_threshold=0.9, concepts=["cell"])
    loose = sam3.predict_instances(image, conf=0.0, mask_threshold=0.1, concepts=["cell"])
    assert strict.masks.sum() < loose.masks.sum()


def test_sam3_shares_one_vision_pass_and_caches_it(folders, image):
    runner = api.load_model(folders["sam3"], "cpu")
    api.segment_instances(image, runner, classes=["cell", "nucleus"], conf=0.0)
    assert (runner.vision_runs, runner.text_runs) == (1, 2)
    api.segment_instances(image, runner, classes=["coin"], conf=0.0)  # a new concept: text only
    assert (runner.vision_runs, runner.text_runs) == (1, 3)
    api.segment_instances(image[::-1].copy(), runner, classes=["coin"], conf=0.0)  # a new plane
    assert (runner.vision_runs, runner.text_runs) == (2, 3)


def test_sam3_exemplars_with_and_without_words_equal_the_processor(folders, sam3, image):
    model, proc = _library_sam3(folders["sam3"])
    rc = np.array([[20, 30, 70, 90], [100, 120, 150, 200]], float)
    xyxy = rc[:, [1, 0, 3, 2]].tolist()
    for text in ("cell", None):
        ref = _sam3_reference(model, proc, image, text, 0.2, 0.5, boxes=xyxy, labels=[1, 0])
        result = api.segment_instances(
            image, sam3, classes=None if text is None else [text], exemplars=rc, exemplar_labels=[1, 0], conf=0.2,
        )
        _check_against(result, [ref], [text or "exemplar"])
    # the exemplars change the answer
    plain = api.segment_instances(image, sam3, classes=["cell"], conf=0.2)
    with_boxes = api.segment_instances(image, sam3, classes=["cell"], exemplars=rc, conf=0.2)
    assert plain.table.score.tolist() != with_boxes.table.score.tolist()


def test_sam3_on_a_stack_and_in_tiles(sam3, image):
    stack = api.segment_instances(np.stack([image, image]), sam3, classes=["cell"], conf=0.24)
    single = api.segment_instances(image, sam3, classes=["cell"], conf=0.24)
    assert stack.labels.shape == (2, *image.shape[:2]) and list(stack.table.plane.unique()) == [0, 1]
    np.testing.assert_array_equal(stack.labels[0], single.labels)
    tiled = api.segment_instances(image, sam3, classes=["cell"], conf=0.24, tile_size=128, overlap=32)
    assert tiled.labels.shape == image.shape[:2] and tiled.table.label_id.is_unique
    with pytest.raises(InputError, match="tile"):
        api.segment_instances(image, sam3, exemplars=[[10, 10, 50, 50]], tile_size=128)


def _gdino_reference(folder, image, concepts, conf, text_threshold):
    import torch
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    model = GroundingDinoForObjectDetection.from_pretrained(folder, local_files_only=True).eval()
    proc = AutoProcessor.from_pretrained(folder)
    inputs = proc(images=image, text=[concepts], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    ref = proc.post_process_grounded_object_detection(
        out, inputs.input_ids, threshold=conf, text_threshold=text_threshold, target_sizes=[image.shape[:2]],
    )[0]
    # a box's concept: the one whose caption tokens hold its highest logit ("cell . nucleus .")
    tokens = proc.tokenizer.convert_ids_to_tokens(inputs.input_ids[0])
    spans, current = [], []
    for pos, tok in enumerate(tokens):
        if tok in (".", "[SEP]"):
            if current:
                spans.append(current)
            current = []
        elif tok != "[CLS]":
            current.append(pos)
    probs = out.logits[0].sigmoid()
    kept = probs.max(-1).values > conf
    per_concept = torch.stack([probs[kept][:, s].max(-1).values for s in spans], -1)
    phrase = np.array([bool(t.strip()) for t in ref["text_labels"]])
    return ref["scores"].numpy()[phrase], ref["boxes"].numpy()[phrase], per_concept.argmax(-1).numpy()[phrase]


def _sam_masks(tiny_sam_path, image, xyxy):
    import torch
    from segment_anything import SamPredictor

    ref = SamPredictor(api.load_model(tiny_sam_path, "cpu").model)
    ref.set_image(image)
    h, w = image.shape[:2]
    xyxy = np.clip(xyxy, 0, [w - 1, h - 1, w - 1, h - 1])
    with torch.inference_mode():
        masks, _, _ = ref.predict_torch(
            None, None, boxes=ref.transform.apply_boxes_torch(torch.as_tensor(xyxy, dtype=torch.float), (h, w)),
            multimask_output=False,
        )
    return masks[:, 0].numpy()


def test_grounding_dino_then_sam_equals_the_libraries(folders, tiny_sam_path, image):
    concepts = ["cell", "nucleus"]
    scores, xyxy, classes = _gdino_reference(folders["gdino"], image, concepts, 0.5, 0.3)
    assert 0 < len(scores) and len(set(classes.tolist())) == 2
    result = api.detect_then_segment(
        image, folders["gdino"], str(tiny_sam_path), device="cpu", classes=concepts, conf=0.5, text_threshold=0.3,
    )
    order = np.argsort(-scores, kind="stable")
    got_boxes, got_scores = _rows(result)
    np.testing.assert_allclose(got_scores, scores[order], rtol=1e-5)
    np.testing.assert_allclose(got_boxes, np.clip(xyxy, 0, [image.shape[1], image.shape[0]] * 2)[order][:, [1, 0, 3, 2]],
                               atol=1e-3)
    assert list(result.table.class_name) == [concepts[k] for k in classes[order]]
    expected, _ = masks_to_labels(_sam_masks(tiny_sam_path, image, got_boxes[:, [1, 0, 3, 2]]), got_scores)
    np.testing.assert_array_equal(result.labels, expected)
    # the text threshold is the library's: a stricter one keeps fewer boxes
    strict, _, _ = _gdino_reference(folders["gdino"], image, concepts, 0.5, 0.9)
    fewer = api.detect_then_segment(image, folders["gdino"], str(tiny_sam_path), device="cpu", classes=concepts,
                                    conf=0.5, text_threshold=0.9)
    assert len(fewer.table) == len(strict) < len(scores)


def test_owlv2_then_sam_equals_the_libraries(folders, tiny_sam_path, image):
    import torch
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    concepts = ["cell", "nucleus"]
    model = Owlv2ForObjectDetection.from_pretrained(folders["owlv2"], local_files_only=True).eval()
    proc = AutoProcessor.from_pretrained(folders["owlv2"])
    inputs = proc(images=image, text=[concepts], return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    side = max(image.shape[:2])
    ref = proc.post_process_grounded_object_detection(out, threshold=0.3, target_sizes=[(side, side)])[0]
    h, w = image.shape[:2]
    xyxy = np.clip(ref["boxes"].numpy(), 0, [w, h, w, h])
    scores, classes = ref["scores"].numpy(), ref["labels"].numpy()
    assert len(scores) > 0
    result = api.detect_then_segment(image, folders["owlv2"], str(tiny_sam_path), device="cpu", classes=concepts,
                                     conf=0.3)
    order = np.argsort(-scores, kind="stable")
    got_boxes, got_scores = _rows(result)
    np.testing.assert_allclose(got_scores, scores[order], rtol=1e-5)
    np.testing.assert_allclose(got_boxes, xyxy[order][:, [1, 0, 3, 2]], atol=1e-3)
    assert list(result.table.class_name) == [concepts[k] for k in classes[order]]
    expected, _ = masks_to_labels(_sam_masks(tiny_sam_path, image, xyxy[order]), scores[order])
    np.testing.assert_array_equal(result.labels, expected)


def test_bad_input_is_a_clear_error(folders, sam3, tiny_sam_path, image, tmp_path):
    with pytest.raises(InputError, match="concepts is empty"):
        api.segment_instances(image, sam3, classes="cell,,nucleus")
    with pytest.raises(InputError, match="concepts is empty"):
        api.segment_instances(image, sam3, classes=["  "])
    with pytest.raises(InputError, match="finds what you name"):
        api.segment_instances(image, sam3)
    with pytest.raises(InputError, match="outside the 160x224 image"):
        api.segment_instances(image, sam3, classes="cell", exemplars=[[200, 300, 260, 400]])
    with pytest.raises(InputError, match=r"one 1 .* or 0"):
        api.segment_instances(image, sam3, exemplars=[[10, 10, 50, 50]], exemplar_labels=[2])
    with pytest.raises(InputError, match="not exemplar boxes"):
        api.segment_instances(image, api.load_model(folders["gdino"], "cpu"), classes="cell",
                              exemplars=[[10, 10, 50, 50]])
    with pytest.raises(InputError, match="finds what you name"):
        api.detect_then_segment(image, folders["owlv2"], str(tiny_sam_path), device="cpu")
    with pytest.raises(InputError, match="detection model"):
        api.segment_instances(image, folders["gdino"], classes="cell", device="cpu")
    # words given to a model with a fixed class list
    from napari_segsuite.testing.tiny_models import build_tiny_mask2former

    m2f = build_tiny_mask2former(tmp_path / "m2f", "instance")
    with pytest.raises(InputError, match=r"no class 'a dog'.*open-vocabulary"):
        api.segment_instances(image, m2f, classes="a dog", device="cpu")
    with pytest.raises(InputError, match="takes no exemplar"):
        api.segment_instances(image, m2f, exemplars=[[10, 10, 50, 50]], device="cpu")
    # a detector folder copied without its processor and tokenizer files
    import shutil

    for name, title in (("gdino", "Grounding DINO"), ("owlv2", "OWLv2"), ("sam3", "SAM 3")):
        partial = tmp_path / f"{name}-partial"
        shutil.copytree(folders[name], partial)
        (partial / "tokenizer.json").unlink()
        with pytest.raises(CheckpointError, match=f"{title} folder .* not the tokenizer"):
            api.load_model(partial, "cpu")
        (partial / "processor_config.json").unlink()
        with pytest.raises(CheckpointError, match=r"processor_config\.json or preprocessor_config\.json and the tok"):
            api.load_model(partial, "cpu")


def test_batch_cli_runs_sam3_and_detector_with_sam(folders, sam3, tiny_sam_path, image, tmp_path):
    import pandas as pd
    import tifffile

    from napari_segsuite.cli import main

    tifffile.imwrite(tmp_path / "in.tif", image)
    code = main(["run", "instance", "--model", str(folders["sam3"]), str(tmp_path / "in.tif"), "--out",
                 str(tmp_path / "o1"), "--param", "classes=cell,nucleus", "--param", "conf=0.24"])
    assert code == 0
    expected = api.segment_instances(image, sam3, classes="cell,nucleus", conf=0.24)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o1" / "in.tif"), expected.labels)
    table = pd.read_csv(tmp_path / "o1" / "in.csv")
    assert list(table.class_name) == list(expected.table.class_name) and len(table) > 0
    code = main(["run", "instance", "--model", str(folders["gdino"]), str(tmp_path / "in.tif"), "--out",
                 str(tmp_path / "o2"), "--param", "classes=cell,nucleus", "--param", "conf=0.5",
                 "--param", f"sam={tiny_sam_path}"])
    assert code == 0
    expected = api.detect_then_segment(image, folders["gdino"], str(tiny_sam_path), device="cpu",
                                       classes="cell,nucleus", conf=0.5)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "o2" / "in.tif"), expected.labels)
    # bad input: an empty concept fails the image with the reason, and nothing is written
    code = main(["run", "instance", "--model", str(folders["sam3"]), str(tmp_path / "in.tif"), "--out",
                 str(tmp_path / "o3"), "--param", "classes=cell,,nucleus"])
    assert code == 1
    assert not list((tmp_path / "o3").glob("in.*"))
    manifest = (tmp_path / "o3" / "manifest.json").read_text()
    assert "concepts is empty" in manifest
    # a box-only detector without sam=: the reason says what to add
    code = main(["run", "instance", "--model", str(folders["owlv2"]), str(tmp_path / "in.tif"), "--out",
                 str(tmp_path / "o4"), "--param", "classes=cell"])
    assert code == 1 and "detection model" in (tmp_path / "o4" / "manifest.json").read_text()


def test_registry_knows_the_hub_folders():
    from napari_segsuite.models.registry import get_entry
    from napari_segsuite.models.store import ModelStore

    for name, repo, family in (
        ("sam3", "facebook/sam3", "sam3"),
        ("grounding_dino_tiny", "IDEA-Research/grounding-dino-tiny", "grounding_dino"),
        ("mm_grounding_dino_tiny", "openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det", "grounding_dino"),
        ("owlv2_base_ensemble", "google/owlv2-base-patch16-ensemble", "owlv2"),
    ):
        entry = get_entry(name)
        assert entry.hf_repo == repo and entry.family == family and entry.size_mb > 0
        store = ModelStore()
        assert not store.is_available(entry)
        with pytest.raises(api.ModelNotAvailableError, match=repo):
            api.load_model(name)
