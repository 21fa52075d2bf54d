"""Open-vocabulary detectors through transformers: Grounding DINO (and MM-Grounding-DINO), OWLv2.

They find boxes for objects named in words; masks come from a prompt model
(SAM, SAM 2.1, ...) fed with those boxes (``api.detect_then_segment``).
Both runners are detection models (``tasks = (Task.DETECTION,)``) whose
``predict_instances`` takes ``concepts``: one class per concept, in order.

- Grounding DINO: the concepts are joined into one caption (``"cell. nucleus."``,
  the processor's own format); boxes, scores and phrases are those of
  ``post_process_grounded_object_detection(threshold=conf, text_threshold=...)``.
  A box is kept when the library reads a phrase for it (some caption token
  above ``text_threshold``); its class is the concept whose caption tokens
  hold its highest logit. MM-Grounding-DINO folders (``mm-grounding-dino``)
  load the same way with their own model class.
- OWLv2: each concept is one text query; boxes, scores and query indices are
  those of ``post_process_grounded_object_detection(threshold=conf)`` with the
  square target size OWLv2's padding needs; boxes are clipped to the image.
"""

from __future__ import annotations

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.hf_segmentation import (
    HfFolderRunner,
)
from napari_segsuite.models.open_vocab_common import check_concepts
from napari_segsuite.models.store import ModelSource

GROUNDING_DINO_TYPES = {"grounding-dino": "GroundingDinoForObjectDetection",
                        "mm-grounding-dino": "MMGroundingDinoForObjectDetection"}
GROUNDING_DINO_CONFIGS = {"grounding-dino": "GroundingDinoConfig", "mm-grounding-dino": "MMGroundingDinoConfig"}


def _need_concepts(concepts, title: str) -> list[str]:
    concepts = check_concepts(concepts)
    if not concepts:
        raise InputError(
            f"{title} finds what you name: give the objects to detect in words "
            "(classes, e.g. 'cell, nucleus')."
        )
    return concepts


def _keep(boxes, scores, ids, shape, max_det):
    from napari_segsuite.models.prediction import InstancePrediction

    h, w = shape
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, w)
    xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, h)
    pred = InstancePrediction(InstancePrediction.xyxy_to_rc(xyxy), scores, ids, None)
    if len(pred) > int(max_det):
        pred = pred.select(np.argsort(-pred.scores, kind="stable")[: int(max_det)])
    return pred


class GroundingDinoRunner(HfFolderRunner):
    """Grounding DINO / MM-Grounding-DINO boxes for concepts in words."""

    family = Family.GROUNDING_DINO
    TASKS = (Task.DETECTION,)
    PROCESSOR_CLASS = "GroundingDinoProcessor"
    TITLE = "Grounding DINO"
    NEEDS_PROCESSOR_FILES = True
    takes_concepts = True
    takes_exemplars = False

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> GroundingDinoRunner:
        from napari_segsuite.models.hf_segmentation import read_hf_config

        raw = read_hf_config(source.path, model_types=GROUNDING_DINO_TYPES, title="Grounding DINO")
        model_type = raw["model_type"]
        loaded = cls.load_folder(
            source, device, model_class=GROUNDING_DINO_TYPES[model_type],
            config_class=GROUNDING_DINO_CONFIGS[model_type], model_types=(model_type,),
        )
        info = loaded.info(
            d_model=int(loaded.config.d_model),
            num_queries=int(loaded.config.num_queries),
            max_text_len=int(loaded.config.max_text_len),
        )
        return loaded.runner(cls, source, device, cls.TASKS, info)

    def concept_spans(self, input_ids, concepts: list[str]) -> list[list[int]]:
        """Token positions of each concept in the caption's ``input_ids`` (separators excluded)."""
        tok = self.processor.tokenizer
        ids = [int(i) for i in input_ids]
        special = set(tok.all_special_ids)
        dot = tok.convert_tokens_to_ids(".")
        spans: list[list[int]] = [[]]
        for pos, i in enumerate(ids):
            if i in special:
                continue
            if i == dot:
                if spans[-1]:
                    spans.append([])
                continue
            spans[-1].append(pos)
        spans = [s for s in spans if s]
        if len(spans) != len(concepts):
            raise InputError(
                f"The caption of {len(concepts)} concepts was read as {len(spans)} phrases; remove dots "
                "from the concepts, or shorten them (Grounding DINO reads at most "
                f"{self.info.get('max_text_len', 256)} tokens)."
            )
        return spans

    def detect(self, rgb: np.ndarray, concepts: list[str], *, box_threshold: float, text_threshold: float):
        """The processor's post-processed detections that have a phrase, and each one's concept index.

        Returns
        -------
        dict
            ``scores``, ``boxes`` (xyxy), ``text_labels`` (the library's phrases)
            and ``class_ids`` (index into ``concepts``), for the boxes whose
            phrase is not empty.
        """
        import torch

        h, w = rgb.shape[:2]
        inputs = self.processor(images=rgb, text=[list(concepts)], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        res = self.processor.post_process_grounded_object_detection(
            out, inputs["input_ids"], threshold=float(box_threshold), text_threshold=float(text_threshold),
            target_sizes=[(h, w)],
        )[0]
        logits = out.logits[0].sigmoid()  # (queries, tokens)
        best = logits.max(dim=-1).values
        kept = torch.nonzero(best > float(box_threshold)).reshape(-1)  # the post-processing's selection
        spans = self.concept_spans(inputs["input_ids"][0].tolist(), concepts)
        per_concept = torch.stack([logits[kept][:, s].max(dim=-1).values for s in spans], dim=-1) if len(kept) else None
        ids = per_concept.argmax(dim=-1).cpu().numpy() if per_concept is not None else np.zeros(0, int)
        phrases = [str(t).strip() for t in res["text_labels"]]
        read = np.array([bool(t) for t in phrases], dtype=bool)
        return {
            "scores": res["scores"].float().cpu().numpy()[read],
            "boxes": res["boxes"].float().cpu().numpy().reshape(-1, 4)[read],
            "text_labels": [t for t, r in zip(phrases, read, strict=True) if r],
            "class_ids": ids.astype(np.int64)[read],
        }

    def predict_instances(
        self, image_rgb_uint8, *, conf: float = 0.35, concepts=None, text_threshold: float = 0.25,
        max_det: int = 300, exemplars=None, **_ignored,
    ):
        """Boxes (no masks) for the concepts on one plane; class id k = the k-th concept."""
        if exemplars is not None and len(np.asarray(exemplars).reshape(-1)):
            raise InputError("Grounding DINO takes concepts in words, not exemplar boxes; use SAM 3 for exemplars.")
        concepts = _need_concepts(concepts, "Grounding DINO")
        rgb = np.asarray(image_rgb_uint8)
        res = self.detect(rgb, concepts, box_threshold=conf, text_threshold=text_threshold)
        return _keep(res["boxes"], res["scores"], res["class_ids"], rgb.shape[:2], max_det)


class Owlv2Runner(HfFolderRunner):
    """OWLv2 boxes for concepts in words (one text query per concept)."""

    family = Family.OWLV2
    TASKS = (Task.DETECTION,)
    MODEL_CLASS = "Owlv2ForObjectDetection"
    CONFIG_CLASS = "Owlv2Config"
    PROCESSOR_CLASS = "Owlv2Processor"
    MODEL_TYPES = ("owlv2",)
    TITLE = "OWLv2"
    NEEDS_PROCESSOR_FILES = True
    takes_concepts = True
    takes_exemplars = False

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> Owlv2Runner:
        loaded = cls.load_folder(source, device)
        info = loaded.info(
            image_size=int(loaded.config.vision_config.image_size),
            patch_size=int(loaded.config.vision_config.patch_size),
        )
        return loaded.runner(cls, source, device, cls.TASKS, info)

    def detect(self, rgb: np.ndarray, concepts: list[str], *, box_threshold: float) -> dict:
        """The processor's post-processed detections (``labels`` index the concepts)."""
        import torch

        h, w = rgb.shape[:2]
        side = max(h, w)  # OWLv2 pads the image to a square before resizing
        inputs = self.processor(images=rgb, text=[list(concepts)], return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        res = self.processor.post_process_grounded_object_detection(
            out, threshold=float(box_threshold), target_sizes=[(side, side)],
        )[0]
        return {
            "scores": res["scores"].float().cpu().numpy(),
            "boxes": res["boxes"].float().cpu().numpy().reshape(-1, 4),
            "class_ids": res["labels"].cpu().numpy().astype(np.int64),
        }

    def predict_instances(
        self, image_rgb_uint8, *, conf: float = 0.1, concepts=None, max_det: int = 300, exemplars=None, **_ignored,
    ):
        """Boxes (no masks) for the concepts on one plane; class id k = the k-th concept."""
        if exemplars is not None and len(np.asarray(exemplars).reshape(-1)):
            raise InputError("OWLv2 takes concepts in words here, not exemplar boxes; use SAM 3 for exemplars.")
        concepts = _need_concepts(concepts, "OWLv2")
        rgb = np.asarray(image_rgb_uint8)
        res = self.detect(rgb, concepts, box_threshold=conf)
        return _keep(res["boxes"], res["scores"], res["class_ids"], rgb.shape[:2], max_det)
