"""SAM 2.1 (transformers) behind :class:`~napari_segsuite.models.prompt.PromptModel`.

``Sam2Model.get_image_embeddings`` encodes a plane once; prompts go through
``Sam2Processor`` and the model with ``image_embeddings=`` and come back
through ``post_process_masks``, the way transformers' documentation shows.
Folders with the video memory weights also track through frames with
``Sam2VideoModel`` / ``Sam2VideoProcessor`` (``propagate_in_video_iterator``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.models.prompt import Decoded, Embedding, PromptModel


class Sam2PromptModel(PromptModel):
    """SAM 2.1 through transformers: ``get_image_embeddings`` once, then prompt decoding."""

    title = "SAM 2.1"

    def __init__(self, runner):
        super().__init__(runner)
        self.processor = runner.processor
        self._video = None

    def encode(self, rgb: np.ndarray, between_blocks=None) -> Embedding:
        import torch

        if between_blocks is not None:
            between_blocks()
        inputs = self.processor(images=rgb, return_tensors="pt")
        with torch.no_grad():
            feats = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        size = tuple(int(v) for v in inputs["pixel_values"].shape[-2:])
        return Embedding(feats, tuple(rgb.shape[:2]), size)

    def predict(self, emb, coords_xy, labels, box_xyxy, mask_input, multimask, lazy=False):
        import torch

        if mask_input is not None:
            self.mask_prompt(emb, mask_input)  # raises: SAM 2.1 takes points and boxes
        kwargs: dict = {"original_sizes": [list(emb.original_size)], "return_tensors": "pt"}
        if coords_xy is not None:
            kwargs["input_points"] = [[coords_xy.tolist()]]
            kwargs["input_labels"] = [[labels.tolist()]]
        if box_xyxy is not None:
            kwargs["input_boxes"] = [[box_xyxy.tolist()]]
        inputs = self.processor(**kwargs)
        model_inputs = {k: inputs[k].to(self.device) for k in ("input_points", "input_labels", "input_boxes")
                        if k in inputs}
        with torch.no_grad():
            out = self.model(image_embeddings=emb.features, multimask_output=multimask, **model_inputs)
        masks = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"])[0][0]
        scores = out.iou_scores[0, 0].float().cpu().numpy()
        return masks.numpy().astype(bool), scores.astype(np.float32)

    def mask_source(self) -> Sam2MaskSource:
        return Sam2MaskSource(self)

    @property
    def supports_video(self) -> bool:
        return bool(self.runner.info.get("memory_weights"))

    def video_tracker(self) -> Sam2VideoTracker:
        if not self.supports_video:
            return super().video_tracker()  # raises the message
        if self._video is None:
            self._video = Sam2VideoTracker(self.runner)
        return self._video


class Sam2MaskSource:
    """SAM 2.1 for segment everything: points through ``Sam2Processor``, logits resized like
    ``post_process_masks``."""

    mask_threshold = 0.0

    def __init__(self, prompt_model: Sam2PromptModel):
        self.prompt_model = prompt_model
        self.model = prompt_model.model
        self.processor = prompt_model.processor
        self.device = prompt_model.device

    def encode(self, rgb: np.ndarray) -> Embedding:
        return self.prompt_model.encode(rgb)

    def decode(self, emb, points_xy: np.ndarray) -> Decoded:
        h, w = emb.original_size
        inputs = self.processor(
            input_points=[[[[float(x), float(y)]] for x, y in points_xy]],
            input_labels=[[[1] for _ in points_xy]],
            original_sizes=[[h, w]], return_tensors="pt",
        )
        out = self.model(image_embeddings=emb.features, input_points=inputs["input_points"].to(self.device),
                         input_labels=inputs["input_labels"].to(self.device), multimask_output=True)
        return Decoded(out.pred_masks[0], out.iou_scores[0])

    def upscale(self, emb, low):
        import torch.nn.functional as F

        return F.interpolate(low[:, None], tuple(emb.original_size), mode="bilinear", align_corners=False)[:, 0]


class Sam2VideoTracker:
    """``Sam2VideoModel`` and ``Sam2VideoProcessor`` loaded from the runner's folder (or the video
    classes named in ``runner.info["video_model"]`` / ``["video_processor"]``)."""

    def __init__(self, runner):
        from napari_segsuite.models.hf_segmentation import quiet_transformers
        from napari_segsuite.models.offline import import_transformers

        t = import_transformers()
        folder = runner.source.path
        self.device = runner.device
        # SAM 3 tracker and EdgeTAM runners name their own video classes (same calling convention)
        model_cls = getattr(t, runner.info.get("video_model") or "Sam2VideoModel")
        proc_cls = getattr(t, runner.info.get("video_processor") or "Sam2VideoProcessor")
        with quiet_transformers():
            self.model = model_cls.from_pretrained(folder).to(runner.device).eval()
        try:
            self.processor = proc_cls.from_pretrained(folder)
        except (OSError, ValueError, TypeError):
            size = int(runner.info.get("image_size") or 1024)
            self.processor = proc_cls(
                image_processor=runner.processor.image_processor,
                video_processor=t.Sam2VideoVideoProcessor(size={"height": size, "width": size}),
            )

    def start(self, frames: np.ndarray, frame: int, mask: np.ndarray) -> _Sam2Clip:
        state = self.processor.init_video_session(video=frames, inference_device=self.device)
        self.processor.add_inputs_to_inference_session(
            inference_session=state, frame_idx=frame, obj_ids=1, input_masks=mask,
        )
        return _Sam2Clip(self, state, frame, tuple(frames.shape[1:3]))


class _Sam2Clip:
    def __init__(self, tracker: Sam2VideoTracker, state, frame: int, size: tuple[int, int]):
        self.tracker, self.state, self.frame, self.size = tracker, state, frame, size

    def propagate(self, *, reverse: bool, max_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        import torch

        if max_frames <= 0:
            raise InputError("max_frames must be at least 1.")
        h, w = self.size
        iterator = self.tracker.model.propagate_in_video_iterator(
            self.state, start_frame_idx=self.frame, max_frame_num_to_track=max_frames, reverse=reverse,
        )
        while True:
            with torch.no_grad():  # the context must not span yields
                try:
                    output = next(iterator)
                except StopIteration:
                    return
            masks = self.tracker.processor.post_process_masks([output.pred_masks.cpu()], original_sizes=[[h, w]])[0]
            yield int(output.frame_idx), np.asarray(masks[0, 0].numpy(), dtype=bool)
