"""U-Net training from sparse strokes (tasks/unet_training.py and the api): real training, kept short."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import run_sync
from napari_segsuite.tasks import unet_training as ut
from napari_segsuite.testing.coins import COINS_CLASS_NAMES, coins_reference_mask, coins_strokes

#: Short but real: enough for the coin class to be far above chance on the coins image.
FAST = {"steps": 60, "val_every": 20, "seed": 0}
SMALL = {
    "encoder_name": "tu-mobilenetv3_small_050", "encoder_depth": 3, "decoder_channels": (16, 8, 8),
    "patch_size": 32, "batch_size": 2, "val_every": 2,
}


@pytest.fixture(scope="module")
def coins():
    from skimage import data

    return data.coins()


@pytest.fixture(scope="module")
def trained(coins):
    """A U-Net trained briefly on coins with the shipped strokes (the suite's one real training)."""
    strokes = coins_strokes()
    before = strokes.copy()
    seen = []
    model = api.train_unet(coins, strokes, class_names=list(COINS_CLASS_NAMES.values()),
                           progress=seen.append, **FAST)
    assert np.array_equal(strokes, before)
    return model, seen


def iou(pred: np.ndarray, ref: np.ndarray) -> float:
    return float((pred & ref).sum() / (pred | ref).sum())


def test_shipped_strokes_are_sparse_and_match_the_reference():
    strokes, ref = coins_strokes(), coins_reference_mask()
    assert strokes.shape == ref.shape == (303, 384)
    assert set(np.unique(strokes)) == {0, 1, 2}
    assert 0.01 < np.count_nonzero(strokes) / strokes.size < 0.05
    assert ref[strokes == 2].all() and not ref[strokes == 1].any()
    assert 0.25 < ref.mean() < 0.45  # about a third of the image is coin


def test_training_on_coins_finds_the_coins(coins, trained):
    model, seen = trained
    labels = model.predict(coins)
    assert labels.shape == coins.shape and set(np.unique(labels)) <= {1, 2}
    score = iou(labels == 2, coins_reference_mask())
    print(f"IoU of the coin class after {FAST['steps']} steps: {score:.3f}")
    assert score > 0.75, score  # chance (all coin) is 0.33; the benchmark's 250 steps reach >= 0.85
    assert model.class_names == {1: "background", 2: "coin"}
    # One progress report per step, carrying the curve.
    rows = [p.partial for p in seen if p.partial]
    assert [r["step"] for r in rows] == list(range(1, FAST["steps"] + 1))
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in val] == [20, 40, 60]
    assert model.best_val == min(r["val_loss"] for r in val)
    assert model.config["training"]["labeled_pixels"] == np.count_nonzero(coins_strokes())


def test_probabilities_sum_to_one_and_agree_with_the_labels(coins, trained):
    model, _ = trained
    probs = model.predict_proba(coins)
    assert probs.shape == (2, *coins.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(probs, 0) + 1, model.predict(coins))


def test_save_load_roundtrip_gives_identical_predictions(coins, trained, tmp_path):
    model, _ = trained
    folder = model.save(tmp_path / "coins-unet")
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "unet_config.json"}
    loaded = api.load_unet(folder)
    np.testing.assert_array_equal(loaded.predict(coins), model.predict(coins))
    assert loaded.class_names == model.class_names
    assert loaded.config["normalization"]["mode"] == "percentile"
    assert [r["step"] for r in loaded.history] == [r["step"] for r in model.history]
    # A saved model is a model-store entry like any other: load_model gives a semantic runner.
    runner = api.load_model(str(folder), device="cpu")
    assert runner.family == "unet" and runner.tasks == ("semantic",)
    logits = runner.predict_semantic(coins)
    np.testing.assert_array_equal(np.argmax(logits[1:], 0) + 1, model.predict(coins))
    assert runner.class_names[2] == "coin"


def test_tiled_prediction_matches_the_whole_image(coins, trained):
    model, _ = trained
    whole = model.predict(coins)
    tiled = model.predict(coins, tile_size=160, overlap=48)
    assert (tiled == whole).mean() > 0.95  # tiles see less context at their edges


def test_tile_blending_is_exact_for_a_pointwise_model():
    import torch

    conv = torch.nn.Conv2d(2, 3, 1)
    x = np.random.default_rng(0).random((2, 150, 230)).astype(np.float32)
    whole = run_sync(ut.logits_job(conv, x, 8, "cpu", tile_size=4096))
    progress = []
    tiled = run_sync(ut.logits_job(conv, x, 8, "cpu", tile_size=64, overlap=16), progress.append)
    assert tiled.shape == (3, 150, 230)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-5)
    assert progress[-1].step == progress[-1].total == 3 * 5  # 64-pixel tiles every 48 pixels, last at the edge


def test_channel_count_must_match_the_model(coins, trained):
    model, _ = trained
    rgb = np.stack([coins] * 3, axis=-1)
    with pytest.raises(InputError, match=r"1 channel.*this image has 3"):
        model.predict(rgb)
    with pytest.raises(InputError, match="one plane at a time"):
        model.predict(np.stack([coins] * 5))
    with pytest.raises(InputError, match="takes 1 channel"):
        api.train_unet(rgb, coins_strokes(), init_model=model, steps=1)


def test_only_stroke_trained_models_continue(tmp_path, coins):
    from napari_segsuite.testing.tiny_models import build_tiny_unet

    other = api.load_unet(build_tiny_unet(tmp_path / "tiny", in_channels=1, classes=3))
    assert other.class_names == {0: "background", 1: "cell", 2: "coin"}  # labels 0..2
    assert set(np.unique(other.predict(coins[:64, :64]))) <= {0, 1, 2}
    with pytest.raises(InputError, match="not trained from strokes"):
        api.train_unet(coins, coins_strokes(), init_model=other, steps=1)


def test_continue_training_extends_the_curve_and_keeps_the_original(coins, trained):
    model, _ = trained
    strokes = coins_strokes().copy()
    strokes[150:153, 40:120] = np.where(coins_reference_mask()[150:153, 40:120], 2, 1)  # "more strokes"
    weights = {k: v.clone() for k, v in model.model.state_dict().items()}
    more = api.train_unet(coins, strokes, init_model=model, steps=4, val_every=2, patch_size=64, batch_size=2)
    assert [r["step"] for r in more.history][-4:] == [61, 62, 63, 64]
    assert more.class_names == model.class_names and more.model is not model.model
    assert all((model.model.state_dict()[k] == v).all() for k, v in weights.items())
    with pytest.raises(InputError, match="class 3 but the model knows 2"):
        api.train_unet(coins, np.where(strokes == 2, 3, strokes), init_model=model, steps=1)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((40, 40), np.uint8), "no labelled pixels"),
        (np.pad(np.ones((5, 5), np.uint8), ((10, 25), (10, 25))), "only class 1"),
        (np.zeros((30, 40), np.uint8), "do not match the image"),
        (np.full((40, 40), -1), "positive class number"),
    ],
)
def test_bad_strokes_are_clear_errors_and_change_nothing(labels, match):
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    image0, labels0 = image.copy(), labels.copy()
    with pytest.raises(InputError, match=match):
        api.train_unet(image, labels, steps=1)
    assert np.array_equal(image, image0) and np.array_equal(labels, labels0)


def test_unknown_options_are_named():
    with pytest.raises(InputError, match="epochz"):
        api.train_unet(np.zeros((8, 8)), np.zeros((8, 8), int), epochz=3)


def test_cancel_at_once_keeps_no_model_and_changes_nothing():
    rng = np.random.default_rng(1)
    image = rng.random((48, 48)).astype(np.float32)
    strokes = np.zeros((48, 48), np.uint8)
    strokes[5:8, 5:40], strokes[30:33, 5:40] = 1, 2
    image0, strokes0 = image.copy(), strokes.copy()
    state = ut.TrainingState()
    job = ut.train_unet_job(image, strokes, ut.TrainingOptions(steps=50, **SMALL), state=state)
    next(job)  # "Preparing": the worker is stopped here
    job.close()
    assert state.best_model() is None and state.history == []
    assert np.array_equal(image, image0) and np.array_equal(strokes, strokes0)


def test_cancel_midway_keeps_the_best_model_so_far():
    rng = np.random.default_rng(2)
    image = rng.random((48, 48)).astype(np.float32)
    image[24:] += 1.0
    strokes = np.zeros((48, 48), np.uint8)
    strokes[5:8, 5:40], strokes[30:33, 5:40] = 1, 2
    state = ut.TrainingState()
    job = ut.train_unet_job(image, strokes, ut.TrainingOptions(steps=50, **SMALL), state=state)
    for progress in job:
        if progress.step == 5:
            break
    job.close()
    assert state.step == 5 and len(state.history) == 5
    best = state.best_model()
    assert best is not None and best.best_val == state.best_val
    assert best.config["training"]["steps"] == 5
    assert best.predict(image).shape == image.shape


def _three_steps():
    """A random 40x40 image, two stroke classes and options for a 3-step run without validation."""
    rng = np.random.default_rng(3)
    image = rng.random((40, 40)).astype(np.float32)
    strokes = np.zeros((40, 40), np.uint8)
    strokes[2:5, 2:30], strokes[20:23, 2:30] = 1, 2
    return image, strokes, {**SMALL, "steps": 3, "val_fraction": 0.0}


def _same_weights(a, b) -> None:
    for (name, ta), tb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert (ta == tb).all(), name


def test_same_seed_same_model():
    image, strokes, opts = _three_steps()
    _same_weights(api.train_unet(image, strokes, **opts), api.train_unet(image, strokes, **opts))


def test_training_works_where_the_caller_turned_gradients_off():
    import torch

    image, strokes, opts = _three_steps()
    reference = api.train_unet(image, strokes, **opts)
    with torch.no_grad():  # e.g. a script or another plugin that turned autograd off in this thread
        result = api.train_unet(image, strokes, **opts)
    _same_weights(reference, result)
    assert len(result.history) == 3 and all(np.isfinite(r["train_loss"]) for r in result.history)


def test_several_planes_and_rgb_images_train():
    rng = np.random.default_rng(4)
    stack = rng.random((3, 32, 32)).astype(np.float32)
    strokes = np.zeros((3, 32, 32), np.uint8)
    strokes[1, 2:5, 2:30], strokes[1, 20:23, 2:30] = 1, 2
    strokes[2, 10:12, 2:30] = 2
    pairs = ut.pairs_from_arrays(stack, strokes)
    assert len(pairs) == 2  # planes without strokes are left out
    rgb = rng.random((32, 32, 3)).astype(np.float32)
    model = api.train_unet([rgb, rgb], [strokes[1], strokes[2]], **{**SMALL, "steps": 2})
    assert model.in_channels == 3 and model.predict(rgb).shape == (32, 32)


def test_validation_split_keeps_every_class_on_both_sides():
    rng = np.random.default_rng(0)
    strokes = coins_strokes()
    train, val = ut.split_strokes([strokes], 0.2, rng)
    for k in (1, 2):
        assert (train[0] == k).any() and (val[0] == k).any()
    assert not ((train[0] > 0) & (val[0] > 0)).any()
    assert np.array_equal(np.where(val[0] > 0, val[0], train[0]), strokes)
    share = np.count_nonzero(val[0]) / np.count_nonzero(strokes)
    assert 0.05 < share < 0.5
    # A class in one tiny spot is split pixel by pixel.
    tiny = np.zeros((64, 64), np.uint8)
    tiny[1:3, 1:3], tiny[40:60, 40:60] = 2, 1
    train, val = ut.split_strokes([tiny], 0.2, np.random.default_rng(0))
    assert (train[0] == 2).any() and (val[0] == 2).any()


def test_loss_ignores_unlabelled_pixels_and_weights_rare_classes():
    import torch

    logits = torch.randn(2, 3, 16, 16)
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 2:4, :] = 1
    target[:, 10, :3] = 2
    w = torch.from_numpy(ut.class_weights([target.numpy()], 2))
    assert w[0] == 0 and w[2] > w[1]
    loss = ut.masked_loss(logits, target, w)
    changed = logits.clone()
    changed[:, :, 12:, :] = 100.0  # unlabelled rows
    assert torch.allclose(ut.masked_loss(changed, target, w), loss)
    assert ut.masked_loss(logits, torch.zeros_like(target), w) == 0


def test_augmentation_moves_pixels_and_labels_together():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 3, (6, 16, 16))
    x = t[:, None].astype(np.float32)
    xa, ta = ut.augment_batch(x, t, rng, intensity=False)
    np.testing.assert_array_equal(xa[:, 0], ta)
    assert not np.array_equal(ta, t)
    xi, _ = ut.augment_batch(x / 2, t, np.random.default_rng(1), intensity=True)
    assert not np.allclose(xi, x / 2)


def test_api_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, napari_segsuite.api as a; a.train_unet; a.load_unet; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_sync_drives_the_prediction_job(coins, trained):
    model, _ = trained
    out = run_sync(ut.predict_planes_job(model, [coins, coins[:100, :100]], keep_proba=True))
    assert [o[0].shape for o in out] == [coins.shape, (100, 100)]
    assert out[1][1].shape == (2, 100, 100)
