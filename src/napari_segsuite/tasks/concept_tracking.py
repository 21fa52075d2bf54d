"""Concepts tracked through a z-stack or a time series with SAM 3 video, as a job.

transformers' ``Sam3VideoModel`` and ``Sam3VideoProcessor`` (the
``facebook/sam3`` folder) treat the planes as frames: the concepts are text
prompts of the session (``add_text_prompt``), ``propagate_in_video_iterator``
detects their instances and tracks each one through the frames, and
``postprocess_outputs`` gives every frame's object ids, scores and masks. The
job runs forwards from ``start_index`` to the last plane and, when
``start_index`` is above 0, in reverse down to plane 0 on the same session.

Each tracked object becomes one label, the same id on every plane (ids in the
order objects first appear); where two objects overlap on a plane the higher
score wins (the processor already keeps objects of one concept apart). The
table has one row per object that has pixels: ``label``, ``class_name`` (its
concept), ``score`` (its highest score over the planes it is on),
``first_plane`` and ``last_plane`` (the first and last plane it has pixels on).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import prepare_rgb_uint8
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Family, LayerTask

TABLE_COLUMNS = ("label", "class_name", "score", "first_plane", "last_plane")


@dataclass
class ConceptTrackResult:
    """Objects of the concepts through the planes.

    Attributes
    ----------
    labels : ndarray (Z, H, W) int32
        One id per tracked object on every plane it is on (0 background).
    table : pandas.DataFrame
        Columns :data:`TABLE_COLUMNS`.
    provenance : dict
        Model, concepts and parameters.
    message : str
        A note for the user (e.g. nothing was found).
    """

    labels: np.ndarray
    table: Any
    provenance: dict = field(default_factory=dict)
    message: str = ""


def video_model_for(runner) -> tuple[Any, Any]:
    """``Sam3VideoModel`` and ``Sam3VideoProcessor`` of a SAM 3 runner's folder (loaded once per runner)."""
    cached = getattr(runner, "_video", None)
    if cached is not None:
        return cached
    if getattr(runner, "family", "") != Family.SAM3:
        raise InputError(
            f"Tracking concepts needs SAM 3 (the facebook/sam3 folder); '{getattr(runner, 'name', runner)}' "
            f"is a {getattr(runner, 'family', 'different')} model, which takes no concepts."
        )
    if runner.info.get("model_type") != "sam3_video":
        raise InputError(
            f"'{runner.name}' holds SAM 3's image model only; tracking concepts through planes needs the "
            "folder with the video weights too (facebook/sam3, model_type 'sam3_video')."
        )
    from napari_segsuite.models.hf_segmentation import quiet_transformers
    from napari_segsuite.models.offline import import_transformers

    t = import_transformers()
    with quiet_transformers():
        model = t.Sam3VideoModel.from_pretrained(runner.source.path).to(runner.device).eval()
        processor = t.Sam3VideoProcessor.from_pretrained(runner.source.path)
    runner._video = (model, processor)
    return runner._video


def _frame_objects(processor, state, output) -> list[tuple[int, str, float, np.ndarray]]:
    res = processor.postprocess_outputs(state, output)
    by_obj = {int(o): text for text, ids in (res.get("prompt_to_obj_ids") or {}).items() for o in ids}
    ids = res["object_ids"].tolist()
    scores = res["scores"].float().cpu().numpy()
    masks = res["masks"].cpu().numpy().astype(bool)
    return [(int(o), by_obj.get(int(o), ""), float(s), m) for o, s, m in zip(ids, scores, masks, strict=True)]


def track_concepts_job(
    runner, volume, concepts: list[str], *, start_index: int = 0, conf: float | None = None,
) -> Generator[Progress, None, ConceptTrackResult]:
    """Track every instance of ``concepts`` through the planes of ``volume``.

    Parameters
    ----------
    runner : Sam3Runner
        Loaded from a ``facebook/sam3``-style folder (with the video weights).
    volume : array-like
        (Z, H, W) or (Z, H, W, C) planes.
    concepts : list of str
        Concept prompts (checked and non-empty).
    start_index : int
        The plane where detection and tracking start.
    conf : float, optional
        Detection score threshold of new objects (the model's
        ``score_threshold_detection`` and ``new_det_thresh``); the model's own when None.

    Returns
    -------
    ConceptTrackResult
    """
    import pandas as pd
    import torch

    arr = np.asarray(volume)
    if arr.ndim not in (3, 4):
        raise InputError(f"Tracking needs a stack (Z, H, W) or (Z, H, W, C), not shape {arr.shape}.")
    n = int(arr.shape[0])
    if not 0 <= int(start_index) < n:
        raise InputError(f"The start plane {start_index} is outside the stack of {n} planes.")
    if not concepts:
        raise InputError("Name at least one concept to track (e.g. 'cell').")
    if conf is not None and not 0.0 <= float(conf) <= 1.0:
        raise InputError(f"conf must lie between 0 and 1, not {conf}.")
    yield Progress(0, n + 1, "Loading SAM 3 video model")
    model, processor = video_model_for(runner)
    frames = np.stack([prepare_rgb_uint8(arr[i]) for i in range(n)])
    h, w = frames.shape[1:3]
    saved = (model.score_threshold_detection, model.new_det_thresh)
    if conf is not None:
        model.score_threshold_detection = model.new_det_thresh = float(conf)
    try:
        state = processor.init_video_session(video=frames, inference_device=runner.device)
        processor.add_text_prompt(state, list(concepts))
        per_plane: dict[int, list] = {}
        passes = [False] + ([True] if start_index > 0 else [])
        done = 0
        for reverse in passes:
            iterator = model.propagate_in_video_iterator(state, start_frame_idx=int(start_index), reverse=reverse)
            while True:
                with torch.inference_mode():
                    try:
                        output = next(iterator)
                    except StopIteration:
                        break
                    z = int(output.frame_idx)
                    objects = _frame_objects(processor, state, output)
                if z not in per_plane:
                    per_plane[z] = objects
                    done += 1
                    yield Progress(done, n + 1, f"Tracking concepts: plane {z + 1}/{n}")
    finally:
        model.score_threshold_detection, model.new_det_thresh = saved
    labels = np.zeros((n, h, w), dtype=np.int32)
    ids: dict[int, int] = {}
    names: dict[int, str] = {}
    scores: dict[int, dict[int, float]] = {}
    for z in sorted(per_plane):
        for obj, text, score, mask in sorted(per_plane[z], key=lambda o: -o[2]):
            if not mask.any():
                continue
            if obj not in ids:
                ids[obj] = len(ids) + 1
            label = ids[obj]
            names[label] = text
            plane = labels[z]
            put = mask & (plane == 0)
            if put.any():  # an object covered by better ones on this plane is not on it
                plane[put] = label
                scores.setdefault(label, {})[z] = score
    rows = [
        {"label": label, "class_name": names[label], "score": max(by_z.values()),
         "first_plane": min(by_z), "last_plane": max(by_z)}
        for label, by_z in sorted(scores.items())
    ]
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS)).astype(
        {"label": "int64", "score": "float64", "first_plane": "int64", "last_plane": "int64"}
    )
    provenance = {
        "task": LayerTask.TRACK_CONCEPTS, "model": runner.provenance(), "concepts": list(concepts),
        "start_index": int(start_index), "conf": conf,
    }
    message = "" if len(table) else "No objects of these concepts were found. Lower conf or rephrase the concepts."
    yield Progress(n + 1, n + 1, f"Tracked {len(table)} object(s)")
    return ConceptTrackResult(labels, table, provenance, message)
