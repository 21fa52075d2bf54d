"""torchvision segmentation and instance models loaded from plain state dicts.

Supported architectures (torchvision builders): DeepLabV3 with ResNet-50,
ResNet-101 or MobileNetV3-Large backbones, LRASPP MobileNetV3-Large, FCN
ResNet-50/101 (semantic), and Mask R-CNN ResNet-50 FPN v1 and v2 (instance).

The file is read with ``torch.load(weights_only=True)`` (never unpickling
code). The architecture comes from the registry entry when there is one and is
otherwise read from the state dict's keys and shapes; the number of classes is
read from the classifier's shapes, so fine-tuned checkpoints with other class
counts load too. Builders are always called with ``weights=None,
weights_backbone=None`` so that torchvision never downloads anything.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from napari_segsuite.core.errors import CheckpointError, InputError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.base import Runner
from napari_segsuite.models.detect import read_state_dict
from napari_segsuite.models.store import ModelSource

#: arch name -> (torchvision module, builder name, task, has aux classifier option)
ARCHITECTURES: dict[str, tuple[str, str, str, bool]] = {
    "deeplabv3_resnet50": ("segmentation", "deeplabv3_resnet50", Task.SEMANTIC, True),
    "deeplabv3_resnet101": ("segmentation", "deeplabv3_resnet101", Task.SEMANTIC, True),
    "deeplabv3_mobilenet_v3_large": ("segmentation", "deeplabv3_mobilenet_v3_large", Task.SEMANTIC, True),
    "lraspp_mobilenet_v3_large": ("segmentation", "lraspp_mobilenet_v3_large", Task.SEMANTIC, False),
    "fcn_resnet50": ("segmentation", "fcn_resnet50", Task.SEMANTIC, True),
    "fcn_resnet101": ("segmentation", "fcn_resnet101", Task.SEMANTIC, True),
    "maskrcnn_resnet50_fpn": ("detection", "maskrcnn_resnet50_fpn", Task.INSTANCE, False),
    "maskrcnn_resnet50_fpn_v2": ("detection", "maskrcnn_resnet50_fpn_v2", Task.INSTANCE, False),
}

#: ImageNet statistics used by every torchvision model's preprocessing.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SUPPORTED_TEXT = (
    "napari-segsuite loads torchvision DeepLabV3 (ResNet-50, ResNet-101, MobileNetV3-Large), "
    "LRASPP MobileNetV3-Large, FCN (ResNet-50, ResNet-101) and Mask R-CNN ResNet-50 FPN (v1, v2) "
    "state dicts"
)
_RESNET_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}


def _blocks(keys, prefix: str) -> int:
    """Number of residual blocks under ``prefix`` (e.g. ``backbone.layer3.``)."""
    rx = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _resnet_depth(keys, prefix: str, what: str) -> str:
    n = _blocks(keys, prefix)
    try:
        return _RESNET_LAYER3_BLOCKS[n]
    except KeyError:
        raise CheckpointError(
            f"The {what} checkpoint has a ResNet backbone with {n} blocks in layer3, which is neither "
            f"ResNet-50 (6) nor ResNet-101 (23). {_SUPPORTED_TEXT}."
        ) from None


def infer_arch(state: dict) -> str:
    """Tell the torchvision architecture of a state dict from its keys.

    Parameters
    ----------
    state : dict
        A state dict (parameter name -> tensor).

    Returns
    -------
    str
        A key of :data:`ARCHITECTURES`.

    Raises
    ------
    CheckpointError
        If the state dict is not one of the supported architectures.
    """
    keys = set(state)
    if any(k.startswith("roi_heads.") for k in keys):
        if not any(k.startswith("roi_heads.mask_predictor.") for k in keys):
            raise CheckpointError(
                "This checkpoint is a torchvision detector without a mask head (Faster R-CNN or "
                f"similar), which gives boxes, not masks. {_SUPPORTED_TEXT}."
            )
        if "backbone.body.layer1.0.conv1.weight" not in keys:
            raise CheckpointError(f"This Mask R-CNN checkpoint has no ResNet-FPN backbone. {_SUPPORTED_TEXT}.")
        depth = _resnet_depth(keys, "backbone.body.layer3.", "Mask R-CNN")
        if depth != "resnet50":
            raise CheckpointError(
                f"This Mask R-CNN checkpoint has a {depth} backbone; torchvision builds Mask R-CNN "
                f"with ResNet-50 only. {_SUPPORTED_TEXT}."
            )
        if "roi_heads.box_head.fc6.weight" in keys:
            return "maskrcnn_resnet50_fpn"
        if "roi_heads.box_head.0.0.weight" in keys:
            return "maskrcnn_resnet50_fpn_v2"
        raise CheckpointError(f"This Mask R-CNN checkpoint has an unknown box head. {_SUPPORTED_TEXT}.")
    if "classifier.low_classifier.weight" in keys and "classifier.cbr.0.weight" in keys:
        return "lraspp_mobilenet_v3_large"
    if "classifier.0.convs.0.0.weight" in keys:
        head = "deeplabv3"
    elif "classifier.0.weight" in keys and "classifier.4.weight" in keys:
        head = "fcn"
    else:
        sample = ", ".join(sorted(keys)[:3])
        raise CheckpointError(
            f"This state dict is not a supported torchvision segmentation model (first keys: {sample}). "
            f"{_SUPPORTED_TEXT}."
        )
    if "backbone.layer1.0.conv1.weight" in keys:
        return f"{head}_{_resnet_depth(keys, 'backbone.layer3.', head.upper())}"
    if head == "deeplabv3" and "backbone.0.0.weight" in keys and "backbone.16.0.weight" in keys:
        return "deeplabv3_mobilenet_v3_large"
    raise CheckpointError(f"This {head.upper()} checkpoint has an unknown backbone. {_SUPPORTED_TEXT}.")


def infer_num_classes(state: dict, arch: str) -> int:
    """Read the number of output classes (including background) from classifier shapes."""
    if arch.startswith("maskrcnn"):
        key = "roi_heads.box_predictor.cls_score.weight"
    elif arch.startswith("lraspp"):
        key = "classifier.low_classifier.weight"
    else:
        key = "classifier.4.weight"
    if key not in state:
        raise CheckpointError(f"This checkpoint has no {key!r}, so it is not a {arch} state dict.")
    return int(state[key].shape[0])


def class_names_for(arch: str, num_classes: int) -> dict[int, str]:
    """Class names: VOC's for 21-class segmentation, COCO's for 91-class Mask R-CNN, else ``class_<i>``.

    The names are torchvision's own (``Weights.meta["categories"]``), which are
    part of the installed package and need no download.
    """
    categories: list[str] | None = None
    if ARCHITECTURES[arch][2] == Task.SEMANTIC and num_classes == 21:
        from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

        categories = DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1.meta["categories"]
    elif ARCHITECTURES[arch][2] == Task.INSTANCE and num_classes == 91:
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

        categories = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    if categories is not None and len(categories) == num_classes:
        return dict(enumerate(categories))
    return {i: f"class_{i}" for i in range(num_classes)}


def build_torchvision_model(arch: str, num_classes: int, aux_loss: bool = False):
    """Build an untrained torchvision model (never downloads).

    Parameters
    ----------
    arch : str
        A key of :data:`ARCHITECTURES`.
    num_classes : int
        Number of output classes, background included.
    aux_loss : bool
        Whether to include the auxiliary classifier (DeepLabV3, FCN).

    Returns
    -------
    torch.nn.Module
    """
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"Unknown torchvision architecture {arch!r}; known: {', '.join(ARCHITECTURES)}.")
    import importlib

    module, builder, _, has_aux = ARCHITECTURES[arch]
    fn = getattr(importlib.import_module(f"torchvision.models.{module}"), builder)
    kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": int(num_classes)}
    if has_aux:
        kwargs["aux_loss"] = bool(aux_loss)
    return fn(**kwargs)


def _load_weights(model, state: dict, arch: str, name: str) -> None:
    """Load ``state`` into ``model``; tolerate only BatchNorm counters absent from the file."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = lines[0] if lines else str(exc).splitlines()[0]
        raise CheckpointError(f"{name} does not fit a {arch} model: {detail}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"{name} is not a {arch} state dict: {len(missing)} weights missing "
            f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected "
            f"(e.g. {', '.join(unexpected[:3]) or '-'})."
        )


def load_torchvision_model(state: dict, arch: str | None = None, name: str = "checkpoint"):
    """Build the model of ``state`` and load the weights into it (CPU, eval mode).

    Parameters
    ----------
    state : dict
        A plain state dict.
    arch : str, optional
        Architecture; inferred from ``state`` when None.
    name : str
        File or model name for error messages.

    Returns
    -------
    (torch.nn.Module, dict)
        The model and its info: ``arch``, ``num_classes``, ``aux_classifier``.
    """
    inferred = None
    try:
        inferred = infer_arch(state)
    except CheckpointError:
        if arch is None:
            raise
    if arch is None:
        arch = inferred
    elif arch not in ARCHITECTURES:
        raise CheckpointError(f"Unknown torchvision architecture {arch!r}; known: {', '.join(ARCHITECTURES)}.")
    elif inferred is not None and inferred != arch:
        raise CheckpointError(f"{name} holds a {inferred} model, not the expected {arch}.")
    num_classes = infer_num_classes(state, arch)
    aux = ARCHITECTURES[arch][3] and any(k.startswith("aux_classifier.") for k in state)
    model = build_torchvision_model(arch, num_classes, aux_loss=aux)
    _load_weights(model, state, arch, name)
    model.eval()
    info = {"arch": arch, "num_classes": num_classes, "aux_classifier": bool(aux)}
    return model, info


class TorchvisionRunner(Runner):
    """torchvision DeepLabV3 / LRASPP / FCN (semantic) and Mask R-CNN (instance) models."""

    family = Family.TORCHVISION

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> TorchvisionRunner:
        path = source.path
        if path.is_dir():
            raise CheckpointError(
                f"{path} is a folder; a torchvision checkpoint is a single .pth file (a state dict)."
            )
        state = read_state_dict(path)
        arch = source.entry.arch if source.entry is not None and source.entry.arch else None
        model, info = load_torchvision_model(state, arch, name=path.name)
        model.to(device)
        task = ARCHITECTURES[info["arch"]][2]
        return cls(
            model, source, device, tasks=(task,),
            class_names=class_names_for(info["arch"], info["num_classes"]), info=info,
        )

    def apply_card(self, card: dict) -> None:
        """Use the input size a trained Mask R-CNN was trained at (torchvision's ``min_size``/``max_size``)."""
        info = card.get("info") or {}
        transform = getattr(self.model, "transform", None)
        if transform is not None and info.get("min_size"):
            transform.min_size = (int(info["min_size"]),)
            transform.max_size = int(info.get("max_size") or info["min_size"])

    @property
    def arch(self) -> str:
        """The torchvision architecture name, e.g. ``"deeplabv3_resnet50"``."""
        return self.info["arch"]

    def _to_tensor(self, image_rgb_uint8: np.ndarray):
        import torch

        from napari_segsuite.core.image import prepare_rgb_uint8

        rgb = prepare_rgb_uint8(image_rgb_uint8)
        x = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div_(255.0)
        return x

    def predict_semantic(self, image_rgb_uint8: np.ndarray) -> np.ndarray:
        """Per-class logits of one image at its own resolution.

        Parameters
        ----------
        image_rgb_uint8 : ndarray
            (H, W, 3) uint8 (other planes are converted with
            :func:`~napari_segsuite.core.image.prepare_rgb_uint8`).

        Returns
        -------
        ndarray
            (C, H, W) float32 logits, C = number of classes.
        """
        import torch

        if Task.SEMANTIC not in self.tasks:
            raise NotImplementedError(f"{self.arch} does instance segmentation, not semantic segmentation.")
        x = self._to_tensor(image_rgb_uint8)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
        x = ((x - mean) / std).unsqueeze(0)
        if min(x.shape[-2:]) < 2:
            raise InputError(f"The image ({x.shape[-2]}x{x.shape[-1]}) is too small for {self.arch}.")
        with torch.inference_mode():
            out = self.model(x)["out"][0]
        return out.float().cpu().numpy()

    # -- instance segmentation ----------------------------------------------
    def predict_instances(
        self,
        image_rgb_uint8: np.ndarray,
        conf: float = 0.5,
        iou: float = 0.5,
        mask_threshold: float = 0.5,
        classes: list[int] | None = None,
        max_det: int = 100,
        imgsz: int | None = None,
    ):
        """Mask R-CNN instances of one RGB image.

        The thresholds are set on the model itself (``roi_heads.score_thresh``,
        ``nms_thresh``, ``detections_per_img``), so the result is the model's own;
        masks are its mask probabilities above ``mask_threshold``. With
        ``classes``, the other classes are removed after torchvision's per-class
        NMS (which equals removing them before) and before ``max_det`` and the mask
        head are applied.
        ``imgsz`` sets the shorter side the image is resized to (torchvision's
        ``min_size``; the longer side is capped in torchvision's 800:1333 ratio).

        Returns
        -------
        InstancePrediction
        """
        import torch

        from napari_segsuite.models.prediction import InstancePrediction

        if Task.INSTANCE not in self.tasks:
            raise NotImplementedError(f"{self.arch} does semantic segmentation, not instance segmentation.")
        model = self.model
        if not hasattr(self, "_default_input_size"):
            self._default_input_size = (tuple(model.transform.min_size), int(model.transform.max_size))
        if imgsz is None:
            model.transform.min_size, model.transform.max_size = self._default_input_size
        else:
            model.transform.min_size = (int(imgsz),)
            model.transform.max_size = max(int(imgsz), round(int(imgsz) * 1333 / 800))
        heads = model.roi_heads
        heads.score_thresh = float(conf)
        heads.nms_thresh = float(iou)
        heads.detections_per_img = int(max_det)
        x = self._to_tensor(image_rgb_uint8)
        if classes is not None:
            # Filter classes where torchvision caps the detections, before the mask head runs.
            wanted = torch.as_tensor(list(classes), dtype=torch.int64, device=x.device)
            original = type(heads).postprocess_detections

            def postprocess_detections(class_logits, box_regression, proposals, image_shapes):
                heads.detections_per_img = 1 << 30
                try:
                    boxes, scores, labels = original(heads, class_logits, box_regression, proposals, image_shapes)
                finally:
                    heads.detections_per_img = int(max_det)
                keep = [torch.isin(lab, wanted).nonzero()[:, 0][: int(max_det)] for lab in labels]
                return (
                    [b[k] for b, k in zip(boxes, keep, strict=True)],
                    [s[k] for s, k in zip(scores, keep, strict=True)],
                    [lab[k] for lab, k in zip(labels, keep, strict=True)],
                )

            heads.postprocess_detections = postprocess_detections
        try:
            with torch.inference_mode():
                out = model([x])[0]
        finally:
            heads.__dict__.pop("postprocess_detections", None)
        masks = out["masks"][:, 0].cpu().numpy() > float(mask_threshold)
        return InstancePrediction(
            InstancePrediction.xyxy_to_rc(out["boxes"].cpu().numpy()),
            out["scores"].cpu().numpy(),
            out["labels"].cpu().numpy().astype(np.int64),
            masks,
        )
