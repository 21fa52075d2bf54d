"""SamSession gives what segment_anything's SamPredictor gives, with napari's conventions."""

import numpy as np
import pytest
from segment_anything import SamPredictor

from napari_segsuite.api import SamSession
from napari_segsuite.core.errors import InputError
from napari_segsuite.models.base import load_model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return {
        "rgb": rng.integers(0, 255, (120, 160, 3), dtype=np.uint8),
        "gray": rng.integers(0, 255, (90, 70), dtype=np.uint8),
        # the tiny model's input size: no resize back to the image's size
        "square": rng.integers(0, 255, (256, 256, 3), dtype=np.uint8),
    }


@pytest.fixture
def pair(tiny_sam_path):
    session = SamSession(str(tiny_sam_path), device="cpu")
    reference = SamPredictor(load_model(tiny_sam_path, "cpu").model)
    return session, reference


def _ref_rgb(image):
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)


@pytest.mark.parametrize("name", ["rgb", "gray"])
def test_points_boxes_and_both_match_sampredictor(pair, images, name):
    session, ref = pair
    image = images[name]
    session.set_image(image)
    ref.set_image(_ref_rgb(image))
    h, w = image.shape[:2]
    pts = np.array([[h // 3, w // 4], [h // 2, w // 2]])
    labels = np.array([1, 0])
    box = np.array([h // 5, w // 6, h // 2, w // 2])
    cases = [
        ({"points": pts, "point_labels": labels}, {"point_coords": pts[:, ::-1], "point_labels": labels}),
        ({"box": box}, {"box": np.array([box[1], box[0], box[3], box[2]])}),
        ({"points": pts[:1], "box": box, "multimask": False},
         {"point_coords": pts[:1, ::-1], "point_labels": np.array([1]),
          "box": np.array([box[1], box[0], box[3], box[2]]), "multimask_output": False}),
    ]
    for ours_kw, ref_kw in cases:
        masks, scores = session.predict(**ours_kw)
        rmasks, rscores, _ = ref.predict(**ref_kw)
        assert masks.shape == rmasks.shape and masks.shape[1:] == (h, w)
        np.testing.assert_array_equal(masks, rmasks)
        np.testing.assert_allclose(scores, rscores, rtol=1e-6)


def test_switching_images_uses_the_cache_and_stays_exact(pair, images):
    session, ref = pair
    pts = np.array([[20, 30]])
    for name in ("rgb", "gray", "rgb", "gray"):
        session.set_image(images[name])
        ref.set_image(_ref_rgb(images[name]))
        masks, scores = session.predict(points=pts)
        rmasks, rscores, _ = ref.predict(point_coords=pts[:, ::-1], point_labels=np.array([1]))
        np.testing.assert_array_equal(masks, rmasks)
        np.testing.assert_allclose(scores, rscores, rtol=1e-6)
    assert session.encoder_runs == 2
    assert session.is_cached(images["rgb"])


def test_cache_is_bounded_least_recently_used(tiny_sam_path):
    session = SamSession(str(tiny_sam_path), device="cpu", cache_size=2)
    imgs = [np.full((32, 32), v, np.uint8) for v in (10, 20, 30)]
    for img in imgs:
        session.set_image(img)
    assert not session.is_cached(imgs[0]) and session.is_cached(imgs[1]) and session.is_cached(imgs[2])


def test_mask_prompt_refines(pair, images):
    session, _ = pair
    session.set_image(images["gray"])
    prior = np.zeros(images["gray"].shape, bool)
    prior[20:50, 10:40] = True
    masks, scores = session.predict(points=np.array([[30, 20]]), mask=prior, multimask=False)
    assert masks.shape == (1, 90, 70) and scores.shape == (1,)
    logits = session.mask_prompt(prior)
    low = tuple(session.runner.model.prompt_encoder.mask_input_size)  # 256 for 1024-pixel models
    assert logits.shape == (1, *low) and logits.max() > 0 > logits.min()


def test_bad_prompts_are_clear_errors(pair, images):
    session, _ = pair
    with pytest.raises(InputError, match="Set an image"):
        session.predict(points=np.array([[1, 1]]))
    session.set_image(images["gray"])
    with pytest.raises(InputError, match="no prompt"):
        session.predict()
    with pytest.raises(InputError, match="outside"):
        session.predict(points=np.array([[500, 5]]))
    with pytest.raises(InputError, match="no area"):
        session.predict(box=np.array([10, 10, 10, 40]))
    with pytest.raises(InputError, match="point_labels"):
        session.predict(points=np.array([[5, 5]]), point_labels=np.array([2]))
    with pytest.raises(InputError, match="mask prompt"):
        session.predict(mask=np.zeros((3, 3), bool))


def test_non_sam_model_is_refused(tmp_path):
    from napari_segsuite.testing.tiny_models import build_tiny_segformer

    folder = build_tiny_segformer(tmp_path / "seg")
    with pytest.raises(InputError, match="Segment Anything"):
        SamSession(str(folder), device="cpu")


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory):
    from napari_segsuite.testing.tiny_models import build_tiny_sam2

    return build_tiny_sam2(tmp_path_factory.mktemp("sam2") / "tiny_sam2")


def test_sam2_matches_transformers_directly(tiny_sam2, images):
    import torch
    from transformers import Sam2Model, Sam2Processor

    session = SamSession(str(tiny_sam2), device="cpu")
    model = Sam2Model.from_pretrained(tiny_sam2).eval()
    processor = Sam2Processor.from_pretrained(tiny_sam2)
    image = images["rgb"]
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
        ref_masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0][0].numpy()
        assert masks.shape == (3, 120, 160)
        np.testing.assert_array_equal(masks, ref_masks)
        np.testing.assert_allclose(scores, out.iou_scores[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="Mask prompts need a SAM"):
        session.predict(points=pts[:1], mask=np.zeros((120, 160), bool))


def test_disk_cache_reuses_embeddings_across_sessions(tiny_sam_path, tmp_path, images):
    first = SamSession(str(tiny_sam_path), device="cpu", disk_cache=tmp_path / "emb")
    first.set_image(images["gray"])
    masks_a, scores_a = first.predict(points=np.array([[10, 10]]))
    assert first.encoder_runs == 1 and len(list((tmp_path / "emb").glob("*.pt"))) == 1
    second = SamSession(str(tiny_sam_path), device="cpu", disk_cache=tmp_path / "emb")
    second.set_image(images["gray"])
    assert second.encoder_runs == 0
    masks_b, scores_b = second.predict(points=np.array([[10, 10]]))
    np.testing.assert_array_equal(masks_a, masks_b)
    np.testing.assert_allclose(scores_a, scores_b)
    changed = images["gray"].copy()
    changed[0, 0] ^= 1
    second.set_image(changed)
    assert second.encoder_runs == 1  # a changed image is encoded again


@pytest.mark.parametrize("name", ["rgb", "square"])
@pytest.mark.parametrize("multimask", [True, False])
def test_lazy_masks_equal_sampredictor_and_upsample_only_what_is_read(pair, images, multimask, name):
    from napari_segsuite.tasks.sam_session import LazyMasks

    session, reference = pair
    image = images[name]
    session.set_image(image)
    reference.set_image(image)
    assert session.current.decoder_cache is None
    prompts = [
        {"points": np.array([[30.0, 50.0], [80.0, 100.0]]), "point_labels": np.array([1, 0])},
        {"box": np.array([20.0, 30.0, 90.0, 140.0])},
    ]
    for prompt in prompts:
        masks, scores = session.predict(**prompt, multimask=multimask, lazy=True)
        assert isinstance(masks, LazyMasks) and masks.computed == []
        best = int(np.argmax(scores))
        first = masks[best]
        assert masks.computed == [best] and first.dtype == bool and first.shape == image.shape[:2]
        kwargs = {"multimask_output": multimask}
        if "points" in prompt:
            kwargs |= {"point_coords": prompt["points"][:, ::-1], "point_labels": prompt["point_labels"]}
        else:
            kwargs["box"] = prompt["box"][[1, 0, 3, 2]]
        ref_masks, ref_scores, _ = reference.predict(**kwargs)
        np.testing.assert_array_equal(np.asarray(masks), ref_masks)
        np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
        assert masks.shape == ref_masks.shape and len(masks) == len(ref_scores)
        # the decoder's prompt-independent part is kept with the plane after the first prompt
        assert session.current.decoder_cache is not None


def test_plane_tokens_find_cached_embeddings_without_the_pixels(tiny_sam_path, images):
    session = SamSession(str(tiny_sam_path), device="cpu", cache_size=2)
    session.set_image(images["gray"])
    key = session.image_key
    assert session.key_for_token("plane-a") is None
    from napari_segsuite.core.progress import run_sync

    assert run_sync(session.set_image_job(images["gray"], token="plane-a")) == key
    assert session.key_for_token("plane-a") == key and session.encoder_runs == 1
    # a known token is used as is: the pixels given with it are not read again
    session.set_image(images["rgb"])
    assert run_sync(session.set_image_job(None, token="plane-a")) == key and session.image_key == key
    assert session.encoder_runs == 2
    # once the embedding left the (size 2) cache, the token no longer answers
    session.set_image(images["rgb"])
    session.set_image(images["rgb"][::-1].copy())
    assert session.key_for_token("plane-a") is None


def test_a_stopped_background_encoding_caches_nothing(tiny_sam_path, images):
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.tasks.sam_session import EncodingStopped

    session = SamSession(str(tiny_sam_path), device="cpu")
    with pytest.raises(EncodingStopped):
        run_sync(session.encode_job(images["gray"], background=True, stop=lambda: True))
    assert not session.is_cached(images["gray"]) and session.encoder_runs == 0


def test_background_encoding_pauses_inside_blocks_and_stays_exact(tiny_sam_path, images):
    from napari_segsuite.core.progress import run_sync

    session = SamSession(str(tiny_sam_path), device="cpu")
    reference = SamSession(str(tiny_sam_path), device="cpu")
    calls = []
    session._yield_to_prompts = lambda stop=None: calls.append(1)
    key = run_sync(session.encode_job(images["rgb"], background=True))
    depth = len(session.runner.model.image_encoder.blocks)
    assert len(calls) == 2 * depth  # before each block's attention half and its MLP half
    assert not any(b.attn._forward_pre_hooks or b.mlp._forward_pre_hooks
                   for b in session.runner.model.image_encoder.blocks)  # hooks removed afterwards
    reference.set_image(images["rgb"])
    import torch

    assert torch.equal(session._cache[key].features, reference.current.features)
