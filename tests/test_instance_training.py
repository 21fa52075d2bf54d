"""Training YOLO-seg and Mask R-CNN on label images: real libraries, tiny images, a few steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.core.errors import InputError
from napari_segsuite.models.store import ModelStore
from napari_segsuite.models.trained import CARD, list_trained
from napari_segsuite.tasks.instance_training import InstanceTrainingState
from napari_segsuite.testing.synthetic_blobs import CLASS_NAMES, blob_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def blobs():
    return blob_dataset(4, size=64, seed=3, n_range=(3, 5), radius_range=(6.0, 10.0))


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "models")


@pytest.fixture(scope="module")
def maskrcnn(blobs, tmp_path_factory):
    """Mask R-CNN from scratch: 2 epochs of 2 steps on 3 images, 1 held out."""
    images, labels, classes = blobs
    store = ModelStore(tmp_path_factory.mktemp("mr-models"))
    rows = []
    runner = api.train_instances(
        images, labels, label_classes=classes, class_names=CLASS_NAMES, family="maskrcnn", epochs=2,
        imgsz=64, batch=2, store=store, progress=lambda p: rows.append(p), val_fraction=0.25,
    )
    return runner, store, rows


@pytest.fixture(scope="module")
def yolo(blobs, tmp_path_factory):
    """YOLO-seg from yolo11n-seg.yaml through ultralytics' trainer: 2 epochs."""
    images, labels, classes = blobs
    store = ModelStore(tmp_path_factory.mktemp("yolo-models"))
    rows = []
    runner = api.train_instances(
        images, labels, label_classes=classes, class_names=CLASS_NAMES, family="yolo", epochs=2,
        imgsz=64, batch=2, store=store, progress=lambda p: rows.append(p), val_fraction=0.25,
        yolo_args={"flipud": 0.5, "hsv_s": 0.0},
    )
    return runner, store, rows


def _check_trained(runner, store, rows, family, image):
    # the model is a trained folder in the model folder, listed with its class names
    cards = list_trained(store.cache_dir, "instance")
    assert [c.name for c in cards] == [runner.name]
    assert sorted(cards[0].class_names.values()) == ["speckled", "striped"]
    assert runner.family == family
    assert sorted(runner.class_names.values()) == ["speckled", "striped"]
    # the history: a training loss per step, held-out AP50 per epoch, as progress partials
    history = runner.training["history"]
    assert [r["epoch"] for r in history if "val_ap50" in r] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in history if "train_loss" in r)
    partials = [p.partial for p in rows if isinstance(p.partial, dict)]
    assert any("val_ap50" in r for r in partials) and any("train_loss" in r for r in partials)
    best = max(r["val_ap50"] for r in history if "val_ap50" in r)
    assert runner.training["best_val_ap50"] == pytest.approx(best, abs=1e-5)
    # loads by name through the user's path and segments through the instance task
    again = api.load_model(runner.name, "cpu", store=store)
    assert again.class_names == runner.class_names and again.family == family
    by_path = api.load_model(store.cache_dir / "trained" / runner.name, "cpu")
    assert by_path.class_names == runner.class_names
    result = api.segment_instances(image, again, conf=0.0, max_det=20)
    assert result.labels.shape == image.shape
    assert set(result.table["class_name"]) <= {"speckled", "striped"}


def test_maskrcnn_from_scratch_trains_saves_and_segments(maskrcnn, blobs):
    runner, store, rows = maskrcnn
    _check_trained(runner, store, rows, "torchvision", blobs[0][0])
    assert runner.info["arch"] == "maskrcnn_resnet50_fpn"
    assert runner.model.transform.min_size == (64,)  # the training size comes back from the card
    assert set(runner.class_names) == {1, 2}  # torchvision: 0 is background


def test_yolo_from_yaml_trains_saves_and_segments(yolo, blobs):
    runner, store, rows = yolo
    _check_trained(runner, store, rows, "yolo", blobs[0][0])
    args = runner.model.ckpt["train_args"]
    assert args["imgsz"] == 64
    assert args["nbs"] == 2  # an optimiser step per batch of 2, not one per 64 images
    assert (args["flipud"], args["hsv_s"]) == (0.5, 0.0)  # yolo_args reach ultralytics' trainer
    assert runner.info["arch"] == "yolo11n-seg"
    assert set(runner.class_names) == {0, 1}


def test_validation_ap_is_the_project_evaluation_of_the_saved_model(maskrcnn, blobs):
    """Re-scoring the held-out image with the saved model gives the recorded best AP50."""
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.tasks.instance_data import (
        dataset_scores,
        predict_for_scores,
        prepare_instance_data,
    )

    runner, _, _ = maskrcnn
    images, labels, classes = blobs
    data = prepare_instance_data(images, labels, label_classes=classes, class_names=CLASS_NAMES)
    from napari_segsuite.tasks.instance_data import split_indices

    _, val, _ = split_indices(data, 0.25, 0)
    preds = run_sync(predict_for_scores(runner, [data.planes[i] for i in val]))
    truths = [(data.labels[i], {k: c + 1 for k, c in data.classes[i].items()}) for i in val]
    scores = dataset_scores(preds, truths)
    assert scores["ap50"] == pytest.approx(runner.training["best_val_ap50"], abs=1e-5)


def test_cancel_keeps_the_best_model_so_far(blobs, store):
    images, labels, classes = blobs
    state = InstanceTrainingState()

    def stop_after_first_validation(p):
        if isinstance(p.partial, dict) and "val_ap50" in p.partial:
            state.stop.set()

    runner = api.train_instances(
        images, labels, label_classes=classes, class_names=CLASS_NAMES, family="yolo", epochs=5, imgsz=64,
        batch=2, store=store, state=state, progress=stop_after_first_validation,
    )
    assert state.stopped_early and state.epoch < 5
    history = runner.training["history"]
    vals = [(r["val_ap50"], r["epoch"]) for r in history if "val_ap50" in r]
    assert runner.training["best_epoch"] == max(vals)[1]
    assert runner.training["stopped_early"] is True
    assert (store.cache_dir / "trained" / runner.name / CARD).is_file()


def test_continue_training_from_the_last_model(yolo, blobs):
    runner, store, _ = yolo
    images, labels, classes = blobs
    more = api.train_instances(
        images, labels, label_classes=classes, class_names=CLASS_NAMES, family="yolo", epochs=1, imgsz=64,
        batch=2, store=store, init_model=runner.name,
    )
    assert more.name != runner.name and more.class_names == runner.class_names
    epochs = [r["epoch"] for r in more.training["history"] if "val_ap50" in r]
    assert epochs == [1, 2, 3]  # the curve goes on from the first model's two epochs
    assert more.training["init_model"]["name"] == runner.name
    assert len(list_trained(store.cache_dir)) == 2


@pytest.mark.parametrize("case, match", [
    ("empty", "hold no object"),
    ("missing_label", "names label"),
    ("unnamed_object", "have no class"),
    ("class_without_objects", "no object has that class"),
    ("shape", "do not match"),
    ("count", "one per image"),
])
def test_bad_annotations_are_clear_errors_and_write_nothing(case, match, blobs, store):
    images, labels, classes = blobs
    images, labels, classes = list(images[:2]), list(labels[:2]), list(classes[:2])
    kwargs = {"label_classes": classes, "class_names": CLASS_NAMES}
    if case == "empty":
        labels = [np.zeros_like(lab) for lab in labels]
        kwargs = {}
    elif case == "missing_label":
        kwargs = {"label_classes": {**classes[0], 999: 0}}
        labels = [labels[0]]
        images = [images[0]]
    elif case == "unnamed_object":
        kwargs = {"label_classes": [dict(list(c.items())[1:]) for c in classes]}
    elif case == "class_without_objects":
        kwargs = {"label_classes": [dict.fromkeys(c, 0) for c in classes], "class_names": CLASS_NAMES}
    elif case == "shape":
        images = [images[0][:-3], images[1]]
    elif case == "count":
        labels = labels[:1]
    with pytest.raises(InputError, match=match):
        api.train_instances(images, labels, family="maskrcnn", epochs=1, store=store, **kwargs)
    assert not (store.cache_dir / "trained").exists() or not any((store.cache_dir / "trained").iterdir())


def test_an_existing_output_folder_is_refused_unless_overwrite(blobs, store, tmp_path):
    images, labels, classes = blobs
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        api.train_instances(images, labels, label_classes=classes, family="yolo", epochs=1, out=out, store=store)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    runner = api.train_instances(images, labels, label_classes=classes, class_names=CLASS_NAMES, family="yolo",
                                 epochs=1, imgsz=64, out=out, store=store, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([CARD, "model.pt"])
    assert json.loads((out / CARD).read_text())["family"] == "yolo"
    assert api.load_model(out, "cpu").class_names == runner.class_names


def test_unknown_family_and_options_are_clear_errors(blobs, store):
    images, labels, _ = blobs
    with pytest.raises(InputError, match="Unknown training family"):
        api.train_instances(images, labels, family="unet", store=store)
    with pytest.raises(InputError, match="Unknown training option"):
        api.train_instances(images, labels, family="yolo", store=store, steps=3)
    with pytest.raises(InputError, match="yolo_args cannot set epochs"):
        api.train_instances(images, labels, family="yolo", store=store, yolo_args={"epochs": 3})
    with pytest.raises(InputError, match=r"no training argument.*flip_upside"):
        api.train_instances(images, labels, family="yolo", store=store, yolo_args={"flip_upside": 0.5})
    with pytest.raises(InputError, match="must be a dict"):
        api.train_instances(images, labels, family="yolo", store=store, yolo_args=["mosaic"])
    assert list_trained(store.cache_dir) == []  # nothing was written


def test_a_changed_yolo_file_is_not_unpickled(yolo, tmp_path):
    import shutil

    runner, store, _ = yolo
    copy = tmp_path / "copy"
    shutil.copytree(store.cache_dir / "trained" / runner.name, copy)
    with open(copy / "model.pt", "ab") as f:
        f.write(b"\0")
    from napari_segsuite.core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="changed after training"):
        api.load_model(copy, "cpu")
