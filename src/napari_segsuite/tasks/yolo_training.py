"""YOLO-seg training with ultralytics' own trainer on an exported YOLO dataset.

The training and held-out images are written as ultralytics YOLO-seg datasets
by the project's exporter (:func:`napari_segsuite.api.export_dataset`), one per
split, and a ``data.yaml`` points ultralytics at both. ``YOLO(<arch>.yaml)``
builds a new model from the architecture file shipped inside ultralytics (no
weights are downloaded), or ``YOLO(<checkpoint>.pt)`` starts from the user's
model; ``.train`` runs ultralytics' trainer (its augmentation, loss,
optimiser and EMA) in a background thread, with:

- AMP off (its check would download a model), plots off (they fetch a font),
  ``pretrained=False`` for architecture files, data-loading workers in-process;
- validation replaced by the project's own: the EMA model predicts the held-out
  images through :class:`~napari_segsuite.models.yolo.YoloRunner` (RGB flipped to
  the BGR order ultralytics expects) and is scored with
  :func:`~napari_segsuite.tasks.instance_data.dataset_scores`; its mask AP50 is
  ultralytics' *fitness*, so ultralytics' ``best.pt`` is the best model by
  held-out mask AP50;
- ultralytics' final evaluation skipped (it would validate ``best.pt`` again);
- the ``stop`` event ends training at the next batch through the trainer's own
  ``stop`` flag (the epoch is then validated and saved as usual);
- an optimiser step after every batch (``nbs`` = the batch size): ultralytics'
  nominal batch of 64 would accumulate 16 batches of 4 into one step, which
  leaves a few dozen annotated images with a handful of steps per run.
  ``yolo_args`` (more ``YOLO.train`` arguments) can set ``nbs`` and the rest.

Ultralytics reports (per batch, per validation) reach the job through a
queue and are yielded as progress.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Generator
from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Family, Task

DEFAULT_ARCH = "yolo11n-seg.yaml"
DEFAULT_EPOCHS = 100
_DONE = object()
#: ``YOLO.train`` arguments the job sets itself (``yolo_args`` cannot).
JOB_ARGS = frozenset({
    "data", "epochs", "imgsz", "batch", "device", "workers", "project", "name", "exist_ok", "amp", "plots",
    "val", "verbose", "seed", "pretrained", "save", "model", "task", "mode", "resume", "time",
})


def check_yolo_args(args) -> dict:
    """``args`` as a dict of extra ``YOLO.train`` arguments, or :class:`InputError` naming what is wrong."""
    if not isinstance(args, dict):
        raise InputError(f"yolo_args must be a dict of ultralytics training arguments, not {type(args).__name__}.")
    taken = sorted(set(args) & JOB_ARGS)
    if taken:
        raise InputError(f"yolo_args cannot set {', '.join(taken)}: the training options set them.")
    from napari_segsuite.models.offline import import_ultralytics

    import_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    unknown = sorted(set(args) - set(DEFAULT_CFG_DICT))
    if unknown:
        raise InputError(f"ultralytics has no training argument(s) {', '.join(unknown)}.")
    return dict(args)


def default_imgsz(planes, minimum: int = 64) -> int:
    """The larger side of the largest plane rounded up to a multiple of 32 (at least ``minimum``)."""
    side = max(max(p.shape[:2]) for p in planes)
    return max(minimum, int(math.ceil(side / 32) * 32))


def _loss_value(items) -> float:
    if items is None:
        return math.nan
    if isinstance(items, dict):
        return float(sum(float(v) for v in items.values()))
    return float(np.sum(np.asarray(items.detach().cpu() if hasattr(items, "detach") else items, dtype=float)))


def write_yolo_dataset(data, train_idx, val_idx, folder: Path) -> Path:
    """Export the two splits with the project's YOLO exporter and write the ``data.yaml`` that joins them."""
    import yaml

    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.datasets.io import export_job

    folder.mkdir(parents=True, exist_ok=True)
    names = {int(k): str(v) for k, v in data.class_names.items()}
    parts = {}
    for split, idx in (("train", train_idx), ("val", val_idx)):
        sub = data.subset(idx)
        out = folder / f"{split}-export"
        run_sync(export_job(
            sub.planes, sub.labels, out, format="yolo", class_names=names,
            label_classes=sub.classes, val_fraction=0.0,
        ))
        spec = yaml.safe_load((out / "data.yaml").read_text())
        exported = {int(k): str(v) for k, v in dict(spec.get("names") or {}).items()} if isinstance(
            spec.get("names"), dict) else dict(enumerate(spec.get("names") or []))
        if exported and exported != names:
            raise RuntimeError(f"The YOLO export renamed the classes ({exported} instead of {names}).")
        root = Path(spec.get("path") or out)
        if not root.is_absolute():
            root = out / root
        parts[split] = str((root / spec["train"]).resolve())
    data_yaml = folder / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(folder), "train": parts["train"], "val": parts["val"],
        "nc": len(names), "names": names,
    }, sort_keys=False))
    return data_yaml


def _yolo_from_model(model, arch_yaml: str, imgsz: int, device: str, class_names: dict[int, str]):
    """A :class:`YoloRunner` around an in-memory ultralytics model (the EMA weights being trained)."""
    from napari_segsuite.models.offline import import_ultralytics
    from napari_segsuite.models.store import ModelSource
    from napari_segsuite.models.yolo import YoloRunner

    ultralytics = import_ultralytics()
    wrapper = ultralytics.YOLO(arch_yaml, task="segment")
    wrapper.model = model
    wrapper.overrides.update({"imgsz": imgsz, "device": device, "task": "segment"})
    source = ModelSource(path=Path("<training>"), family=Family.YOLO, name="training", trusted=True)
    return YoloRunner(wrapper, source, device, tasks=(Task.INSTANCE,), class_names=class_names,
                      info={"yolo_task": "segment"})


def train_yolo_job(data, train_idx, val_idx, opts, init_runner, state, work: Path
                   ) -> Generator[Progress, None, tuple[str, Path, dict, dict]]:
    """Train YOLO-seg (see the module docstring).

    Returns
    -------
    (str, Path, dict, dict)
        Runner family, weights file (ultralytics' ``best.pt``), card info, class names.
    """
    import copy

    import torch

    from napari_segsuite.core.device import resolve_device
    from napari_segsuite.models.offline import import_ultralytics
    from napari_segsuite.tasks.instance_data import dataset_scores, predict_for_scores, truths_of

    threads = torch.get_num_threads()  # ultralytics' select_device changes it for the whole process
    ultralytics = import_ultralytics()
    device = resolve_device(opts.device)
    imgsz = int(opts.imgsz or default_imgsz(data.planes))
    epochs = int(opts.epochs or DEFAULT_EPOCHS)
    yield Progress(0, None, "Writing the YOLO dataset")
    data_yaml = write_yolo_dataset(data, train_idx, val_idx, work / "dataset")
    val_planes = [data.planes[i] for i in val_idx]
    truths = truths_of(data, val_idx)
    names = dict(data.class_names)
    if init_runner is not None:
        model = ultralytics.YOLO(str(init_runner.source.path))  # a fresh copy: the runner stays as it is
        arch = init_runner.info.get("arch") or DEFAULT_ARCH
        arch_yaml = arch if str(arch).endswith((".yaml", ".yml")) else f"{arch}.yaml"
        pretrained = True
    else:
        arch_yaml = opts.arch or DEFAULT_ARCH
        if not str(arch_yaml).endswith((".yaml", ".yml")):
            raise InputError(f"A new YOLO model is built from an architecture yaml (e.g. {DEFAULT_ARCH}), not {arch_yaml!r}.")
        try:
            model = ultralytics.YOLO(arch_yaml, task="segment")
        except Exception as exc:
            raise InputError(f"ultralytics cannot build {arch_yaml!r}: {exc}") from exc
        pretrained = False
    if model.task != "segment":
        raise InputError(f"{arch_yaml} is a YOLO '{model.task}' model; train a segmentation ('-seg') model.")

    events: queue.Queue = queue.Queue()
    total_steps = [None]
    history0 = list(getattr(init_runner, "training", {}).get("history", []) if init_runner else [])
    epoch0 = max([int(r.get("epoch", 0)) for r in history0] or [0])
    state.history[:] = history0
    step = [0]

    def validate(trainer):
        epoch = epoch0 + int(trainer.epoch) + 1
        state.epoch = epoch
        due = (epoch - epoch0) % int(opts.val_every) == 0 or epoch - epoch0 >= epochs or trainer.stop
        if not due:  # no score this epoch: ultralytics keeps its best.pt and does not early-stop
            return {}, None
        ema = copy.deepcopy(trainer.ema.ema).float().eval()
        if truths:
            runner = _yolo_from_model(ema, arch_yaml, imgsz, device, names)
            from napari_segsuite.core.progress import run_sync

            preds = run_sync(predict_for_scores(runner, val_planes))
            scores = dataset_scores(preds, truths)
            fitness = scores["ap50"] + 1e-3 * scores["ap"]
            state.improved(scores["ap50"], scores["ap"], epoch)
            row = {"epoch": epoch, "step": step[0], "val_ap50": scores["ap50"], "val_ap": scores["ap"],
                   "val_precision": scores["precision"], "val_recall": scores["recall"]}
        else:  # nothing held out: the latest weights are the best
            fitness = float(epoch)
            row = {"epoch": epoch, "step": step[0]}
        if trainer.best_fitness is None or trainer.best_fitness < fitness:
            trainer.best_fitness = fitness
        events.put(("val", row))
        metrics = {"metrics/mask_AP50(segsuite)": row.get("val_ap50", 0.0),
                   "metrics/mask_AP(segsuite)": row.get("val_ap", 0.0)}
        return metrics, fitness

    def on_pretrain_routine_start(trainer):
        trainer.validate = lambda: validate(trainer)
        trainer.final_eval = lambda: None

    def on_train_start(trainer):
        total_steps[0] = int(trainer.epochs) * len(trainer.train_loader)

    def on_train_batch_end(trainer):
        step[0] += 1
        events.put(("batch", {"epoch": epoch0 + int(trainer.epoch) + 1, "step": step[0],
                              "train_loss": _loss_value(getattr(trainer, "loss_items", None))}))
        if state.stop.is_set():
            trainer.stop = True
            state.stopped_early = True

    for event, fn in (("on_pretrain_routine_start", on_pretrain_routine_start), ("on_train_start", on_train_start),
                      ("on_train_batch_end", on_train_batch_end)):
        model.add_callback(event, fn)

    result: dict = {}
    batch = max(1, min(int(opts.batch), len(train_idx)))
    # ultralytics' optimizer "auto" ignores lr0: a learning rate set here comes with AdamW
    train_args = {"nbs": batch, **({"lr0": float(opts.learning_rate), "optimizer": "AdamW"} if opts.learning_rate else {}),
                  **check_yolo_args(opts.yolo_args or {})}

    def run():
        try:
            model.train(
                data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch,
                device=device, workers=int(opts.workers), project=str(work / "runs"), name="train",
                exist_ok=True, amp=False, plots=False, val=True, verbose=False, seed=int(opts.seed),
                deterministic=False, pretrained=pretrained, patience=10**6, save=True,
                **train_args,
            )
            result["trainer"] = model.trainer
        except BaseException as exc:
            result["error"] = exc
        finally:
            events.put((_DONE, None))

    thread = threading.Thread(target=run, name="segsuite-yolo-train", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, row = events.get(timeout=0.2)
            except queue.Empty:
                yield Progress(step[0], total_steps[0], "")
                continue
            if kind is _DONE:
                break
            state.history.append(row)
            if kind == "batch":
                msg = f"Epoch {row['epoch'] - epoch0}/{epochs}: loss {row['train_loss']:.3f}"
            else:
                msg = f"Epoch {row['epoch'] - epoch0}/{epochs}"
                if "val_ap50" in row:
                    msg += (f": held-out mask AP50 {row['val_ap50']:.3f}, AP {row['val_ap']:.3f} "
                            f"(best {state.best_ap50:.3f})")
            yield Progress(step[0], total_steps[0], msg, partial=row)
    finally:
        if thread.is_alive():  # the job was closed early: stop the trainer at its next batch
            state.stop.set()
            thread.join()
        torch.set_num_threads(threads)
    if "error" in result:
        exc = result["error"]
        raise InputError(f"YOLO training failed: {exc}") from exc
    trainer = result["trainer"]
    best = Path(trainer.best) if Path(trainer.best).is_file() else Path(trainer.last)
    if not best.is_file():
        raise InputError("YOLO training ended without saving a model (it was stopped before the first epoch ended).")
    import shutil

    weights = work / "model.pt"
    shutil.copyfile(best, weights)
    info = {"arch": Path(arch_yaml).stem, "yolo_task": "segment", "imgsz": imgsz}
    return Family.YOLO, weights, info, names
