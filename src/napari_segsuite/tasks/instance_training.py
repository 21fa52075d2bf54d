"""Training instance models (YOLO-seg, Mask R-CNN) on the user's label images.

:func:`train_instances_job` is the one entry point (a job: it yields
:class:`~napari_segsuite.core.progress.Progress` and returns a loaded runner):

1. the annotations are checked and prepared (:mod:`napari_segsuite.tasks.instance_data`),
   split into training and held-out images;
2. the family's trainer runs: ultralytics' own trainer for YOLO-seg
   (:mod:`napari_segsuite.tasks.yolo_training`), a torchvision training loop for
   Mask R-CNN (:mod:`napari_segsuite.tasks.maskrcnn_training`);
3. after every epoch the model is evaluated on the held-out images with the
   project's own evaluation (mask AP50 and AP@[.5:.95]) and the best weights so
   far are kept;
4. the best weights are saved as a trained-model folder (in the model folder's
   ``trained/`` unless ``out`` is given; :mod:`napari_segsuite.models.trained`),
   which every model picker lists, and loaded back as the returned runner.

Each progress report's ``partial`` is a history row: ``{"epoch", "step",
"train_loss"}`` per step and ``{"epoch", "val_ap50", "val_ap", ...}`` after each
validation. Stopping: set ``state.stop`` (a :class:`threading.Event`; the
widget's Cancel does); training ends at the next step and the job saves and
returns the best model so far, as it does at the end.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress, json_row, run_sync
from napari_segsuite.core.vocabulary import Family, Task

#: What the instance trainer trains (``maskrcnn`` is a torchvision model).
TrainingFamily = Literal["yolo", "maskrcnn"]
FAMILIES: tuple[str, ...] = ("yolo", "maskrcnn")
#: The runner family a trained model of each training family loads as.
RUNNER_FAMILY: dict[str, Family] = {"yolo": Family.YOLO, "maskrcnn": Family.TORCHVISION}


@dataclass
class InstanceTrainingOptions:
    """Settings of an instance training run.

    Parameters
    ----------
    epochs : int, optional
        Passes over the training images (family default when None: 100 YOLO, 30 Mask R-CNN).
    imgsz : int, optional
        Training and prediction input size (default: the images' larger side
        rounded up to a multiple of 32, at least 256 for Mask R-CNN and 64 for YOLO).
    batch : int
        Images per step.
    learning_rate : float, optional
        Peak learning rate (family default when None).
    val_fraction : float
        Share of the annotated images held out for validation.
    val_every : int
        Validate every this many epochs (and after the last).
    arch : str, optional
        YOLO architecture yaml (default ``yolo11n-seg.yaml``); Mask R-CNN
        ``maskrcnn_resnet50_fpn`` or ``maskrcnn_resnet50_fpn_v2``.
    device : str
        "cpu", "cuda", "mps" or "auto".
    seed : int
        Seed of the split, the sampling and the initial weights.
    name : str, optional
        Folder name in the model folder's ``trained/`` (default: family and time).
    overwrite : bool
        Replace an existing non-empty ``out`` folder.
    workers : int
        Data-loading workers (YOLO).
    yolo_args : dict, optional
        More arguments of ultralytics' ``YOLO.train`` (augmentation, optimiser,
        schedule: ``mosaic``, ``flipud``, ``hsv_v``, ``optimizer``, ``lr0``,
        ``warmup_epochs``, ``close_mosaic``, ``nbs`` ...). The arguments the job
        sets itself (data, epochs, imgsz, batch, device, output folder, seed)
        are refused here; set them through the fields above.
    """

    epochs: int | None = None
    imgsz: int | None = None
    batch: int = 4
    learning_rate: float | None = None
    val_fraction: float = 0.2
    val_every: int = 1
    arch: str | None = None
    device: str = "cpu"
    seed: int = 0
    name: str | None = None
    overwrite: bool = False
    workers: int = 0
    yolo_args: dict | None = None

    def check(self) -> None:
        """Raise :class:`InputError` for values that cannot work."""
        if self.epochs is not None and self.epochs < 1:
            raise InputError(f"Train for at least 1 epoch, not {self.epochs}.")
        if self.batch < 1:
            raise InputError(f"The batch size must be at least 1, not {self.batch}.")
        if self.imgsz is not None and (self.imgsz < 32 or self.imgsz % 32):
            raise InputError(f"The input size must be a positive multiple of 32, not {self.imgsz}.")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"The validation fraction must be in [0, 1), not {self.val_fraction}.")
        if self.val_every < 1:
            raise InputError(f"Validate every 1 epoch or more, not {self.val_every}.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise InputError(f"The learning rate must be positive, not {self.learning_rate}.")
        if self.yolo_args:
            from napari_segsuite.tasks.yolo_training import check_yolo_args

            check_yolo_args(self.yolo_args)


@dataclass
class InstanceTrainingState:
    """What a training run has reached, held by the caller.

    ``stop`` ends training at the next step (the best model so far is then
    saved and returned). ``history`` gets the job's history rows; ``best_ap50``
    and ``best_epoch`` describe the kept weights; ``saved`` is the trained
    model folder once written.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    history: list[dict] = field(default_factory=list)
    best_ap50: float = -math.inf
    best_ap: float = math.nan
    best_epoch: int | None = None
    epoch: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    stopped_early: bool = False
    saved: Path | None = None
    note: str = ""

    def improved(self, ap50: float, ap: float, epoch: int) -> bool:
        """Record a validation; True when it is the best so far (ties go to the later epoch)."""
        if ap50 >= self.best_ap50:
            self.best_ap50, self.best_ap, self.best_epoch = ap50, ap, epoch
            return True
        return False


def _default_name(family: str) -> str:
    return f"{family}-{time.strftime('%Y%m%d-%H%M%S')}"


def _known_names(init_runner) -> dict[int, str] | None:
    """The classes of a model trained here, which continued training keeps (others get new heads)."""
    if init_runner is None or not getattr(init_runner, "training", None):
        return None
    return dict(getattr(init_runner, "class_names", {}) or {})


def _load_init(init_model, family: str, device: str, store):
    """The runner of ``init_model`` (a runner, registry name, trained name or path), checked for ``family``."""
    if init_model is None:
        return None
    from napari_segsuite.models.base import load_model

    runner = load_model(init_model, device, store=store)
    want = RUNNER_FAMILY[family]
    if runner.family != want or Task.INSTANCE not in runner.tasks:
        raise InputError(
            f"'{runner.name}' is a {runner.family} {'/'.join(runner.tasks)} model; continuing {family} training "
            f"needs a {'YOLO-seg' if family == 'yolo' else 'Mask R-CNN'} model."
        )
    return runner


def train_instances_job(
    images: Any,
    labels: Any,
    *,
    label_classes=None,
    class_names=None,
    family: TrainingFamily = "yolo",
    init_model=None,
    options: InstanceTrainingOptions | None = None,
    out=None,
    store=None,
    state: InstanceTrainingState | None = None,
) -> Generator[Progress, None, Any]:
    """Train an instance model on label images and save it (a job returning the loaded runner).

    Parameters
    ----------
    images, labels, label_classes, class_names
        See :func:`napari_segsuite.tasks.instance_data.prepare_instance_data`.
    family : {"yolo", "maskrcnn"}
        YOLO-seg (ultralytics' trainer) or Mask R-CNN (torchvision).
    init_model : str, path or Runner, optional
        Start from this checkpoint (continue training); None: from scratch
        (the architecture yaml or ``weights=None, weights_backbone=None``).
    options : InstanceTrainingOptions, optional
    out : path, optional
        Folder of the trained model (default ``<model folder>/trained/<name>``).
    store : ModelStore, optional
        The model folder (default: the process-wide store).
    state : InstanceTrainingState, optional
        Updated as training goes; its ``stop`` event ends training early.

    Returns
    -------
    Runner
        The saved best model, loaded (``class_names`` from the annotations,
        ``training`` with the history).
    """
    from napari_segsuite.models.store import default_store
    from napari_segsuite.models.trained import check_output_folder, trained_root, unique_name
    from napari_segsuite.tasks.instance_data import prepare_instance_data, split_indices

    if family not in FAMILIES:
        raise InputError(f"Unknown training family {family!r}; choose one of {', '.join(FAMILIES)}.")
    opts = options or InstanceTrainingOptions()
    opts.check()
    store = store or default_store()
    state = state if state is not None else InstanceTrainingState()
    overwrite = bool(opts.overwrite)
    if out is not None:
        folder = check_output_folder(out, overwrite)
    else:
        root = trained_root(store.cache_dir)
        if opts.name:
            from napari_segsuite.models.trained import safe_name

            folder = check_output_folder(root / safe_name(opts.name), overwrite)
        else:
            folder = root / unique_name(store.cache_dir, _default_name(family))
    yield Progress(0, None, "Checking the annotations")
    init_runner = _load_init(init_model, family, opts.device, store)
    data = prepare_instance_data(
        images, labels, label_classes=label_classes, class_names=class_names,
        known_names=_known_names(init_runner),
    )
    train_idx, val_idx, note = split_indices(data, opts.val_fraction, opts.seed)
    state.note = note
    yield Progress(0, None, f"{data.n_objects} objects in {len(data)} image(s), {len(data.class_names)} class(es); "
                   f"{note}")
    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="segsuite-train-") as work:
        if family == "maskrcnn":
            from napari_segsuite.tasks.maskrcnn_training import train_maskrcnn_job

            result = yield from train_maskrcnn_job(data, train_idx, val_idx, opts, init_runner, state, Path(work))
        else:
            from napari_segsuite.tasks.yolo_training import train_yolo_job

            result = yield from train_yolo_job(data, train_idx, val_idx, opts, init_runner, state, Path(work))
        state.seconds = time.perf_counter() - t0
        state.cpu_seconds = time.process_time() - c0
        yield Progress(1, 1, "Saving the model")
        card_family, weights, info, model_names = result
        from napari_segsuite.models.trained import save_trained

        training = {
            "family": family,
            "init_model": None if init_runner is None else init_runner.source.provenance(),
            "epochs_done": state.epoch,
            "best_epoch": state.best_epoch,
            "best_val_ap50": None if not math.isfinite(state.best_ap50) else round(state.best_ap50, 5),
            "best_val_ap": None if not math.isfinite(state.best_ap) else round(state.best_ap, 5),
            "stopped_early": state.stopped_early,
            "images": len(data), "objects": data.n_objects,
            "train_images": len(train_idx), "val_images": len(val_idx), "split": note,
            "seconds": round(state.seconds, 2), "cpu_seconds": round(state.cpu_seconds, 2),
            "options": {k: v for k, v in vars(opts).items() if k not in ("overwrite",)},
            "history": [json_row(r) for r in state.history],
        }
        save_trained(
            folder, weights, family=card_family, tasks=(Task.INSTANCE,), class_names=model_names,
            info={**info, "training": training}, overwrite=overwrite, move=True,
        )
    state.saved = folder
    from napari_segsuite.models.base import load_model

    runner = load_model(folder, opts.device, store=store)
    msg = f"Saved {folder.name}"
    if math.isfinite(state.best_ap50):
        msg += f" (held-out mask AP50 {state.best_ap50:.3f} at epoch {state.best_epoch})"
    yield Progress(1, 1, msg)
    return runner


def train_instances(
    images: Any,
    labels: Any,
    *,
    label_classes=None,
    class_names=None,
    family: TrainingFamily = "yolo",
    init_model=None,
    out=None,
    store=None,
    state: InstanceTrainingState | None = None,
    progress: Callable[[Progress], None] | None = None,
    **options: Any,
):
    """Synchronous :func:`train_instances_job` with options as keywords."""
    from dataclasses import fields

    known = {f.name for f in fields(InstanceTrainingOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"Unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    opts = InstanceTrainingOptions(**options)
    return run_sync(train_instances_job(
        images, labels, label_classes=label_classes, class_names=class_names, family=family,
        init_model=init_model, options=opts, out=out, store=store, state=state,
    ), progress)
