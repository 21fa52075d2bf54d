"""The one prompt-model interface: every promptable family implements it, the tasks ask nothing else."""

import inspect
import re

import numpy as np
import pytest

from napari_segsuite.core.errors import InputError
from napari_segsuite.models.prompt import Embedding, PromptModel
from napari_segsuite.tasks import propagation, sam_automatic, sam_session


def test_prompt_tasks_never_ask_which_family_they_hold():
    for module in (sam_session, sam_automatic, propagation):
        code = inspect.getsource(module)
        assert not re.search(r"family\s*(==|!=|in\s)|[\"']sam2?[\"']|isinstance\([^)]*Sam", code), module.__name__
        # the generator's helpers (segment_anything.utils.amg) are plain algorithms; no model library
        assert not re.search(r"^\s*(from|import) (segment_anything(?!\.utils\.amg)|transformers)", code, re.M)


def test_sam_and_sam21_implement_the_interface(tiny_sam_path, tmp_path):
    from napari_segsuite.models.base import load_model
    from napari_segsuite.testing.tiny_models import build_tiny_sam2

    sam = load_model(str(tiny_sam_path), "cpu").prompt_model()
    sam2 = load_model(str(build_tiny_sam2(tmp_path / "sam2", video=False)), "cpu").prompt_model()
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    for model in (sam, sam2):
        assert isinstance(model, PromptModel)
        emb = model.encode(rgb)
        assert isinstance(emb, Embedding) and emb.original_size == (40, 56)
        masks, scores = model.predict(emb, np.array([[20.0, 10.0]]), np.array([1]), None, None, True)
        assert masks.dtype == bool and masks.shape[1:] == (40, 56) and scores.shape == (len(masks),)
        boxes = np.array([[5.0, 5.0, 30.0, 20.0], [0.0, 0.0, 55.0, 39.0]])
        bm, bs = model.predict_boxes(emb, boxes)
        assert bm.shape == (2, 40, 56) and bs.shape == (2,)
        source = model.mask_source()
        decoded = source.decode(emb, np.array([[10.0, 10.0], [30.0, 20.0]]))
        assert decoded.iou.shape[0] == 2
        up = source.upscale(emb, decoded.low_res_masks([1])[:, 0])
        assert tuple(up.shape[-2:]) == (40, 56)
        assert not model.supports_video
    assert sam.takes_mask_prompt and not sam2.takes_mask_prompt
    with pytest.raises(InputError, match="Mask prompts need a SAM"):
        sam2.mask_prompt(None, np.zeros((40, 56), bool))
    with pytest.raises(InputError, match="video"):
        sam.video_tracker()


def test_models_without_prompts_say_so(tmp_path):
    from napari_segsuite.models.base import load_model
    from napari_segsuite.testing.tiny_models import build_tiny_segformer

    runner = load_model(str(build_tiny_segformer(tmp_path / "seg")), "cpu")
    with pytest.raises(InputError, match="promptable"):
        runner.prompt_model()
