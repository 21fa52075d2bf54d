"""The API and the batch engine read multiscale and lazy inputs window by window (read-counting arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite import api
from napari_segsuite.batch.chunking import segment_chunked
from napari_segsuite.batch.engine import array_job
from napari_segsuite.batch.tasks import get_task
from napari_segsuite.core.progress import run_sync
from napari_segsuite.models.base import load_model
from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.large_images import (
    ReadCounter,
    open_slide,
    synthetic_volume,
    write_synthetic_slide,
)
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("api_slide") / "slide.zarr"
    write_synthetic_slide(path, (2600, 2300), chunk=256, min_side=600, workers=1)
    return open_slide(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_large_models")
    return {
        "semantic": build_tiny_segformer(root / "seg", num_labels=3),
        "instance": sharpen_yolo(build_tiny_yolo(root / "yolo.pt", "segment", nc=3)),
        "panoptic": build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2),
    }


def test_semantic_reads_level0_tile_by_tile(slide, models):
    counter = ReadCounter(slide[0])
    result = api.segment_semantic([counter, *slide[1:]], models["semantic"], device="cpu", tile_size=512, overlap=32)
    assert counter.largest <= 512 * 512 and counter.pixels < 2 * counter.size  # never a whole level
    reference = api.segment_semantic(np.asarray(slide[0]), models["semantic"], device="cpu", tile_size=512, overlap=32)
    assert np.array_equal(result.labels, reference.labels)


def test_instances_of_a_lazy_plane_go_in_chunks(slide, models):
    counter = ReadCounter(slide[0])
    result = api.segment_instances([counter, *slide[1:]], models["instance"], device="cpu", conf=0.0,
                                   max_det=40, chunk_size=1024)
    assert counter.largest <= (1024 + 2 * 64) ** 2 and counter.pixels < 2 * counter.size
    ids = np.unique(result.labels[result.labels > 0])
    assert len(ids) and np.array_equal(ids, np.arange(1, len(ids) + 1))
    assert set(result.table["label"]) == set(ids) and {"bbox_row0", "score", "class_name"} <= set(result.table)
    # the same as the batch chunking of the same plane with the instance task
    spec, runner = get_task("instance"), load_model(str(models["instance"]), "cpu")
    out = np.zeros(slide[0].shape, np.int32)
    segment_chunked(np.asarray(slide[0]), lambda w: spec.func(w, runner, conf=0.0, max_det=40), out,
                    chunk=1024, overlap=64)
    assert np.array_equal(result.labels, out)


def test_panoptic_of_a_lazy_plane_goes_in_chunks(slide, models):
    counter = ReadCounter(slide[1])  # level 1 (1300 x 1150) as the full-resolution image
    result = api.segment_panoptic([counter, *slide[2:]], models["panoptic"], device="cpu", threshold=0.0,
                                  mask_threshold=0.05, overlap_mask_area_threshold=0.0, chunk_size=768)
    assert counter.largest <= (768 + 2 * 64) ** 2 and counter.pixels < 2 * counter.size
    assert result.labels.shape == slide[1].shape and result.labels.any()
    assert set(result.table["label"]) == set(np.unique(result.labels[result.labels > 0]))
    with pytest.raises(Exception, match="label_divisor"):
        api.segment_panoptic(counter, models["panoptic"], device="cpu", label_divisor=1000, chunk_size=768)


def test_array_job_reads_a_lazy_stack_plane_by_plane(models):
    volume = ReadCounter(synthetic_volume((3, 300, 280), chunks=(1, 128, 128)))
    runner = load_model(str(models["semantic"]), "cpu")
    labels, table = run_sync(array_job("semantic", runner, volume, params={"background_zero": False, "tile_size": 0}))
    assert labels.shape == (3, 300, 280) and labels.min() >= 1
    assert volume.largest == 300 * 280 and len(volume.reads) == 3  # one plane per read, never the stack
    assert sorted(set(table["plane"])) == [0, 1, 2]
