"""Fine-tuning SAM's mask decoder on label images: the tiny real segment_anything model, a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segsuite import api
from napari_segsuite.core.errors import InputError
from napari_segsuite.models.detect import detect_family, read_state_dict
from napari_segsuite.models.store import ModelStore
from napari_segsuite.tasks.sam_finetune import SamFinetuneState
from napari_segsuite.testing.synthetic_blobs import blob_dataset


@pytest.fixture(scope="module")
def blobs():
    return blob_dataset(2, size=64, seed=5, n_range=(3, 4), radius_range=(8.0, 12.0))


@pytest.fixture(scope="module")
def tuned(blobs, tiny_sam_path, tmp_path_factory):
    images, labels, _ = blobs
    store = ModelStore(tmp_path_factory.mktemp("sam-models"))
    rows = []
    # keep_best=False: the last weights (a few steps of a random tiny SAM need not beat the start)
    runner = api.finetune_sam(images, labels, str(tiny_sam_path), steps=6, val_every=3, learning_rate=1e-3,
                              objects_per_step=3, store=store, progress=rows.append, keep_best=False)
    return runner, store, rows


def _prefix(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def test_finetuned_checkpoint_is_a_sam_state_dict_with_only_decoder_and_prompts_changed(tuned, tiny_sam_path):
    runner, _store, rows = tuned
    path = runner.source.path
    assert path.name == "sam_finetuned.pth" and detect_family(path) == "sam"
    new, old = read_state_dict(path), read_state_dict(tiny_sam_path)
    assert set(new) == set(old)
    for key in _prefix(old, "image_encoder."):
        assert torch.equal(new[key], old[key]), key  # the encoder stays frozen
    assert any(not torch.equal(new[k], old[k]) for k in _prefix(old, "mask_decoder."))
    assert any(not torch.equal(new[k], old[k]) for k in _prefix(old, "prompt_encoder."))
    history = runner.training["history"]
    assert [r["step"] for r in history if "val_iou" in r] == [0, 3, 6]
    assert any(isinstance(p.partial, dict) and "train_loss" in p.partial for p in rows)
    assert runner.training["seconds_per_step"] > 0


def test_finetuned_sam_loads_in_sessions_and_gives_its_own_masks(tuned, tiny_sam_path, blobs):
    runner, store, _ = tuned
    image = blobs[0][0]
    point = np.argwhere(blobs[1][0] == 1).mean(axis=0).round()[None]
    base = api.SamSession(str(tiny_sam_path), "cpu")
    for model in (runner.name, runner.source.path.parent, runner):
        session = api.SamSession(api.load_model(model, "cpu", store=store) if isinstance(model, str) else model, "cpu")
        session.set_image(image)
        masks, scores = session.predict(points=point)
        assert masks.shape == (3, *image.shape)
    base.set_image(image)
    _base_masks, base_scores = base.predict(points=point)
    assert not np.allclose(scores, base_scores)  # the trained decoder answers differently
    auto = api.sam_automatic(image, runner, device="cpu", points_per_side=4, pred_iou_thresh=0.0,
                             stability_score_thresh=0.0)
    assert auto.labels.shape == image.shape


def test_finetuned_sam_is_listed_in_the_sam_model_pickers(tuned):
    runner, store, _ = tuned
    names = [c.name for c in store.trained_models("prompt")]
    assert names == [runner.name]
    assert store.trained_models("instance") == []


def test_cancel_keeps_the_best_weights_so_far(blobs, tiny_sam_path, tmp_path):
    images, labels, _ = blobs
    state = SamFinetuneState()

    def stop_at_once(p):
        state.stop.set()  # before the first step: the best model is the one we started from

    out = tmp_path / "tuned.pth"
    runner = api.finetune_sam(images, labels, str(tiny_sam_path), steps=50, out=out, state=state,
                              progress=stop_at_once, store=ModelStore(tmp_path / "m"))
    assert state.stopped_early and state.step == 0 and runner.source.path == out
    new, old = read_state_dict(out), read_state_dict(tiny_sam_path)
    assert all(torch.equal(new[k], old[k]) for k in old)
    with pytest.raises(InputError, match="exists"):
        api.finetune_sam(images, labels, str(tiny_sam_path), steps=1, out=out, store=ModelStore(tmp_path / "m"))


def test_bad_input_is_a_clear_error(blobs, tiny_sam_path, tmp_path):
    images, labels, _ = blobs
    store = ModelStore(tmp_path / "m")
    with pytest.raises(InputError, match="hold no object"):
        api.finetune_sam(images, [np.zeros_like(lab) for lab in labels], str(tiny_sam_path), steps=1, store=store)
    with pytest.raises(InputError, match="do not match"):
        api.finetune_sam([images[0][:10]], [labels[0]], str(tiny_sam_path), steps=1, store=store)
    with pytest.raises(InputError, match="at least 1 step"):
        api.finetune_sam(images, labels, str(tiny_sam_path), steps=0, store=store)
    assert not (store.cache_dir / "trained").exists()
