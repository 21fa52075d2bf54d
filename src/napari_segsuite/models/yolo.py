"""Ultralytics YOLO checkpoints (``.pt``): instance segmentation and detection.

An ultralytics ``.pt`` file is a full Python pickle: loading it can run code.
It is therefore loaded only when its source is trusted (a registry file whose
checksum was verified, or a local file the user picked). Ultralytics is always
imported through :func:`~napari_segsuite.models.offline.import_ultralytics` so
that its offline switch is on, and it is only ever given an absolute path to a
file that exists, which it never tries to download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import CheckpointError, ModelNotAvailableError
from napari_segsuite.core.vocabulary import Family, Task
from napari_segsuite.models.base import Runner
from napari_segsuite.models.store import ModelSource

#: ultralytics task -> napari-segsuite tasks
YOLO_TASKS = {"segment": (Task.INSTANCE,), "detect": (Task.DETECTION,)}


def _check_path(path: Path) -> Path:
    """Refuse paths that would make ultralytics search or download something."""
    if not path.exists():
        raise ModelNotAvailableError(f"No YOLO checkpoint at {path}.")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; a YOLO checkpoint is a single .pt file.")
    if path.suffix.lower() != ".pt":
        raise CheckpointError(
            f"{path.name} looks like an ultralytics checkpoint, but ultralytics only loads such files "
            f"with the .pt extension. Rename it to {path.stem}.pt and load it again."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish.")
    from ultralytics.utils.checks import check_yolov5u_filename

    if check_yolov5u_filename(str(path), verbose=False) != str(path):
        # ultralytics would silently swap in another (downloaded) file name
        raise CheckpointError(
            f"ultralytics renames files called like {path.name} to a different official model and "
            f"would download that one. Rename the file (e.g. to my_{path.name}) and load it again."
        )
    return path


def load_yolo(path: Path, device: str = "cpu"):
    """Load an ultralytics checkpoint file (runs pickle code: only for trusted files).

    Parameters
    ----------
    path : Path
        An existing ``.pt`` file.
    device : str
        Torch device for the model and for ``predict``.

    Returns
    -------
    ultralytics.YOLO

    Raises
    ------
    CheckpointError
        If the file is not a loadable ultralytics checkpoint.
    """
    from napari_segsuite.models.offline import import_ultralytics

    ultralytics = import_ultralytics()
    path = _check_path(Path(path).expanduser().resolve())
    try:
        model = ultralytics.YOLO(str(path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path.name} could not be loaded as an ultralytics YOLO checkpoint (truncated, corrupt, "
            f"or saved by an incompatible ultralytics version): {first}"
        ) from exc
    if not hasattr(model.model, "parameters"):
        raise CheckpointError(f"{path.name} is not a PyTorch YOLO checkpoint (exported formats are not supported).")
    model.model.to(device)
    model.overrides["device"] = device
    return model


class YoloRunner(Runner):
    """Ultralytics YOLO: instance segmentation (``-seg`` models) or detection."""

    family = Family.YOLO

    @classmethod
    def _load(cls, source: ModelSource, device: str) -> YoloRunner:
        path = Path(source.path)
        if not source.trusted:
            why = (
                "ultralytics publishes no checksum for it, so this copy cannot be verified"
                if source.entry is not None
                else "it was not chosen as a local file"
            )
            raise CheckpointError(
                f"'{source.name}' was not loaded: an ultralytics .pt file is a Python pickle that can run "
                f"code when it is opened, and {why}. Load it with 'Load from file' if you trust where it "
                "came from."
            )
        model = load_yolo(path, device)
        task = model.task
        if task not in YOLO_TASKS:
            raise CheckpointError(
                f"{path.name} is an ultralytics '{task}' model; napari-segsuite uses YOLO 'segment' "
                "(instance segmentation) and 'detect' models."
            )
        names = {int(k): str(v) for k, v in dict(model.names).items()}
        ckpt = model.ckpt or {}
        yaml = getattr(model.model, "yaml", None) or {}
        info = {
            "arch": Path(str(yaml.get("yaml_file", ""))).stem or None,
            "yolo_task": task,
            "num_classes": len(names),
            "ultralytics_version": ckpt.get("version"),
        }
        return cls(model, source, device, tasks=YOLO_TASKS[task], class_names=names, info=info)

    # -- instance segmentation / detection ----------------------------------
    def predict_instances(
        self,
        image_rgb_uint8,
        conf: float = 0.25,
        iou: float = 0.7,
        mask_threshold: float = 0.5,
        classes: list[int] | None = None,
        max_det: int = 300,
        imgsz: int | None = None,
    ):
        """Instances (``segment`` models) or boxes (``detect`` models) of one RGB image.

        ultralytics reads numpy arrays as BGR (OpenCV's order), so the RGB
        plane is flipped before ``YOLO.predict``. Masks are ultralytics' own
        (``retina_masks=True``: at the image's resolution, binarised at 0.5;
        ``mask_threshold`` is not used).

        Returns
        -------
        InstancePrediction
            Boxes in (row0, col0, row1, col1); masks None for detection models.
        """
        from napari_segsuite.core.image import prepare_rgb_uint8
        from napari_segsuite.models.prediction import InstancePrediction

        rgb = prepare_rgb_uint8(image_rgb_uint8)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        kwargs = {"conf": float(conf), "iou": float(iou), "max_det": int(max_det), "verbose": False}
        if classes is not None:
            kwargs["classes"] = [int(c) for c in classes]
        if imgsz is not None:
            kwargs["imgsz"] = int(imgsz)
        if self.info.get("yolo_task") == "segment":
            kwargs["retina_masks"] = True
        result = self.model.predict(bgr, **kwargs)[0]
        boxes = result.boxes
        if boxes is None or len(boxes) == 0:
            return InstancePrediction.empty(rgb.shape[:2] if Task.INSTANCE in self.tasks else None)
        masks = None
        if Task.INSTANCE in self.tasks:
            masks = np.zeros((len(boxes), *rgb.shape[:2]), dtype=bool)
            if result.masks is not None:
                data = result.masks.data.cpu().numpy() > 0.5
                masks[:, : data.shape[1], : data.shape[2]] = data[:, : rgb.shape[0], : rgb.shape[1]]
        return InstancePrediction(
            InstancePrediction.xyxy_to_rc(boxes.xyxy.cpu().numpy()),
            boxes.conf.cpu().numpy(),
            boxes.cls.cpu().numpy().astype(np.int64),
            masks,
        )
