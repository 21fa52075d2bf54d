"""SAM 3 concept segmentation through transformers (``Sam3Model`` + ``Sam3Processor``).

A concept is a short noun phrase ("coin", "nucleus"): SAM 3 finds every
instance of it in an image and gives each a mask, a box and a score. Exemplar
boxes ("more like this", or with label 0 "not like this") describe a concept
by example, alone or together with the words.

:class:`Sam3Runner` is an instance model: :meth:`Sam3Runner.predict_instances`
takes ``concepts`` (one class per concept) and/or ``exemplars`` and returns
an :class:`~napari_segsuite.models.prediction.InstancePrediction`. The masks,
boxes and scores are those of the processor's own
``post_process_instance_segmentation`` with ``threshold=conf`` and
``mask_threshold``; instances of all concepts are pooled (where two overlap
the instance painter gives the pixel to the higher score).

The image's vision features are computed once per plane and kept in a small
least-recently-used cache (keyed by the plane's content), and the text
features once per concept: a second concept on a plane runs only the text
encoder and the detector/mask decoder, a concept seen before only the decoder.

Folders: the Hugging Face ``facebook/sam3`` folder (``model_type``
``sam3_video``: detector, tracker and video weights; the detector part is
loaded) or any ``save_pretrained`` folder of ``Sam3Model`` (``sam3``) with its
processor and tokenizer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.hf_segmentation import (
    HfFolderRunner,
)
from napari_segsuite.models.open_vocab_common import check_concepts
from napari_segsuite.models.store import ModelSource

SAM3_MODEL_TYPES = ("sam3", "sam3_video")
#: The text SAM 3's processor sends with exemplar boxes that come without words.
VISUAL_PROMPT = "visual"


def check_exemplars(exemplars, exemplar_labels, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Exemplar boxes (row0, col0, row1, col1) clipped to the image, and their 0/1 labels.

    Returns
    -------
    boxes_xyxy : (N, 4) float array
        (x0, y0, x1, y1) in image pixels, as SAM 3's processor takes them.
    labels : (N,) int array
        1 "more like this", 0 "not like this".

    Raises
    ------
    InputError
        For boxes of the wrong shape, boxes with no area inside the image, and
        labels that are not one 0 or 1 per box.
    """
    h, w = shape
    boxes = np.asarray(exemplars, dtype=float)
    if boxes.size == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=int)
    if boxes.ndim == 1:
        boxes = boxes.reshape(1, -1)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"Exemplars are boxes (row0, col0, row1, col1); got an array of shape {boxes.shape}.")
    labels = np.ones(len(boxes), dtype=int) if exemplar_labels is None else np.asarray(exemplar_labels).reshape(-1)
    if labels.shape != (len(boxes),) or not np.isin(labels, (0, 1)).all():
        raise InputError("exemplar_labels must hold one 1 (more like this) or 0 (not like this) per exemplar box.")
    r0 = np.clip(np.minimum(boxes[:, 0], boxes[:, 2]), 0, h)
    r1 = np.clip(np.maximum(boxes[:, 0], boxes[:, 2]), 0, h)
    c0 = np.clip(np.minimum(boxes[:, 1], boxes[:, 3]), 0, w)
    c1 = np.clip(np.maximum(boxes[:, 1], boxes[:, 3]), 0, w)
    empty = (r1 - r0 < 1) | (c1 - c0 < 1)
    if empty.any():
        bad = ", ".join("(" + ", ".join(f"{v:g}" for v in b) + ")" for b in boxes[empty][:3])
        raise InputError(
            f"{int(empty.sum())} exemplar box(es) lie outside the {h}x{w} image or have no area "
            f"({bad}); draw exemplar boxes on the image."
        )
    return np.stack([c0, r0, c1, r1], axis=1), labels.astype(int)


class Sam3Runner(HfFolderRunner):
    """SAM 3 (``transformers.Sam3Model``) finding every instance of concepts given in words or by example."""

    family = Family.SAM3
    TASKS = (Task.INSTANCE, Task.CONCEPTS)
    MODEL_CLASS = "Sam3Model"
    CONFIG_CLASS = "Sam3Config"
    PROCESSOR_CLASS = "Sam3Processor"
    MODEL_TYPES = SAM3_MODEL_TYPES
    TITLE = "SAM 3"
    HINT = " Pick a SAM 3 folder (facebook/sam3, or a save_pretrained folder of Sam3Model)."
    NEEDS_PROCESSOR_FILES = True
    #: ``classes`` are concept prompts (words), not ids of a fixed class list.
    takes_concepts = True
    takes_exemplars = True
    #: planes whose vision features are kept
    VISION_CACHE = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()
        self._vision: OrderedDict[str, Any] = OrderedDict()
        self._text: OrderedDict[str, Any] = OrderedDict()
        self.vision_runs = 0
        self.text_runs = 0

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> Sam3Runner:
        loaded = cls.load_folder(source, device)
        config = loaded.config
        info = loaded.info(
            image_size=int(config.vision_config.backbone_config.image_size),
            vit_hidden_size=int(config.vision_config.backbone_config.hidden_size),
            vit_layers=int(config.vision_config.backbone_config.num_hidden_layers),
            text_layers=int(config.text_config.num_hidden_layers),
            num_queries=int(config.detr_decoder_config.num_queries),
        )
        return loaded.runner(cls, source, device, cls.TASKS, info)

    def prompt_model(self):
        """Points and boxes go to SAM 3's tracker, which the ``facebook/sam3`` folder also holds."""
        from napari_segsuite.models.base import load_model

        if self.info.get("model_type") != "sam3_video":
            return super().prompt_model()  # raises: a plain Sam3Model folder has no tracker
        if getattr(self, "_tracker", None) is None:
            self._tracker = load_model(self.source.path, self.device, family=Family.SAM3_TRACKER)
        return self._tracker.prompt_model()

    # -- features -----------------------------------------------------------------------
    def vision_features(self, rgb: np.ndarray):
        """The vision encoder's output for a (H, W, 3) uint8 plane (cached by content)."""
        import torch

        from napari_segsuite.core.image import image_signature

        key = image_signature(rgb)
        with self._lock:
            if key in self._vision:
                self._vision.move_to_end(key)
                return self._vision[key]
        inputs = self.processor(images=rgb, return_tensors="pt")
        with torch.inference_mode():
            feats = self.model.get_vision_features(pixel_values=inputs["pixel_values"].to(self.device))
        with self._lock:
            self.vision_runs += 1
            self._vision[key] = feats
            while len(self._vision) > self.VISION_CACHE:
                self._vision.popitem(last=False)
        return feats

    def _text_features(self, text: str):
        """Token ids' attention mask and the text encoder's output for one prompt (cached)."""
        import torch

        with self._lock:
            if text in self._text:
                self._text.move_to_end(text)
                return self._text[text]
        tokens = self.processor(text=text, return_tensors="pt")
        mask = tokens["attention_mask"].to(self.device)
        with torch.inference_mode():
            embeds = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device), attention_mask=mask)
        with self._lock:
            self.text_runs += 1
            self._text[text] = (mask, embeds)
            while len(self._text) > 64:
                self._text.popitem(last=False)
        return mask, embeds

    def clear_cache(self) -> None:
        """Forget the cached vision and text features."""
        with self._lock:
            self._vision.clear()
            self._text.clear()

    # -- prediction ---------------------------------------------------------------------
    def segment_concept(
        self, rgb: np.ndarray, text: str | None, boxes_xyxy=None, box_labels=None, *,
        threshold: float = 0.5, mask_threshold: float = 0.5,
    ) -> dict:
        """One prompt (words and/or exemplar boxes) on one plane, post-processed by the processor.

        Returns
        -------
        dict
            ``post_process_instance_segmentation``'s result for this image:
            ``scores`` (N,), ``boxes`` (N, 4) xyxy, ``masks`` (N, H, W) bool, as numpy.
        """
        import torch

        h, w = rgb.shape[:2]
        vision = self.vision_features(rgb)
        mask, embeds = self._text_features(text or VISUAL_PROMPT)
        extra: dict = {}
        if boxes_xyxy is not None and len(boxes_xyxy):
            prompt = self.processor(
                original_sizes=[[h, w]], input_boxes=[np.asarray(boxes_xyxy, float).tolist()],
                input_boxes_labels=[np.asarray(box_labels, int).tolist()], return_tensors="pt",
            )
            extra = {
                "input_boxes": prompt["input_boxes"].to(self.device),
                "input_boxes_labels": prompt["input_boxes_labels"].to(self.device),
            }
        with torch.inference_mode():
            out = self.model(vision_embeds=vision, text_embeds=embeds, attention_mask=mask, **extra)
            res = self.processor.post_process_instance_segmentation(
                out, threshold=float(threshold), mask_threshold=float(mask_threshold), target_sizes=[(h, w)],
            )[0]
        return {
            "scores": res["scores"].float().cpu().numpy(),
            "boxes": res["boxes"].float().cpu().numpy().reshape(-1, 4),
            "masks": res["masks"].cpu().numpy().astype(bool).reshape(-1, h, w),
        }

    def predict_instances(
        self, image_rgb_uint8, *, conf: float = 0.5, iou: float = 0.7, mask_threshold: float = 0.5,
        classes=None, max_det: int = 300, imgsz: int | None = None, concepts=None, exemplars=None,
        exemplar_labels=None, **_ignored,
    ):
        """Instances of every concept on one plane (class id k = the k-th concept).

        Parameters
        ----------
        image_rgb_uint8 : (H, W, 3) uint8
        conf : float
            Score threshold (the processor's ``threshold``).
        mask_threshold : float
            The processor's ``mask_threshold``.
        concepts : list of str, optional
            Concept prompts in words.
        exemplars : (N, 4) array, optional
            Exemplar boxes (row0, col0, row1, col1) in this plane's pixels, used
            with every concept (or alone, as SAM 3's "visual" prompt).
        exemplar_labels : (N,) array, optional
            1 positive, 0 negative (default: all positive).
        max_det : int
            Most instances kept (highest scores).

        Returns
        -------
        InstancePrediction
        """
        from napari_segsuite.models.prediction import InstancePrediction

        rgb = np.asarray(image_rgb_uint8)
        concepts = check_concepts(concepts)
        boxes_xyxy, labels = (None, None)
        if exemplars is not None and len(np.asarray(exemplars).reshape(-1)):
            boxes_xyxy, labels = check_exemplars(exemplars, exemplar_labels, rgb.shape[:2])
        if not concepts and boxes_xyxy is None:
            raise InputError(
                "SAM 3 needs something to look for: type concepts in words (e.g. 'cell, nucleus') "
                "or draw exemplar boxes."
            )
        prompts: list[str | None] = list(concepts) or [None]
        parts = []
        for k, text in enumerate(prompts):
            res = self.segment_concept(
                rgb, text, boxes_xyxy, labels, threshold=conf, mask_threshold=mask_threshold,
            )
            n = len(res["scores"])
            parts.append(InstancePrediction(
                InstancePrediction.xyxy_to_rc(res["boxes"]), res["scores"], np.full(n, k), res["masks"],
            ))
        boxes = np.concatenate([p.boxes for p in parts])
        scores = np.concatenate([p.scores for p in parts])
        ids = np.concatenate([p.class_ids for p in parts])
        masks = np.concatenate([p.masks for p in parts])
        pred = InstancePrediction(boxes, scores, ids, masks)
        if len(pred) > int(max_det):
            pred = pred.select(np.argsort(-pred.scores, kind="stable")[: int(max_det)])
        return pred
