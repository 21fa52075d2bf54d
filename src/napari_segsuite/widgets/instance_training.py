"""Training sections of the Instance dock: train YOLO-seg / Mask R-CNN on Labels layers, fine-tune SAM.

Two thin magicgui containers around :mod:`napari_segsuite.tasks.instance_training`
and :mod:`napari_segsuite.tasks.sam_finetune`. On the GUI thread they read the
chosen Labels layers (every plane with objects; the image of each Labels layer
is the Image layer its name starts with, else the chosen image) and the
classes in their ``features`` (``label`` or ``index`` with ``class_name`` or
``class_id``); the job runs in a worker (the shared :class:`~napari_segsuite.widgets.scaffold.JobPanel`) and its progress
draws the live curves. **Cancel** sets the job's stop event: training ends at
the next step and the best model so far is saved and kept, as at the end.
Trained models go into the ``trained/`` folder of the dock's model folder (its
*Model folder* setting), which every model picker lists (they are refreshed
when a model is saved).
"""

from __future__ import annotations

import math

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    Select,
    SpinBox,
)

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Family, Outcome, Task
from napari_segsuite.models.store import ModelStore

FAMILY_CHOICES = [("YOLO-seg (ultralytics)", "yolo"), ("Mask R-CNN (torchvision)", "maskrcnn")]
NEW_MODEL = "__new__"
LOCAL_CHECKPOINT = "__local__"


class TrainingCurve:
    """A small matplotlib figure: training loss (left axis) and a validation score (right axis, 0-1)."""

    def __init__(self, score_label: str = "held-out mask AP50", score_key: str = "val_ap50"):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.score_label, self.score_key = score_label, score_key
        self.figure = Figure(figsize=(3.2, 2.0), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.axes = self.figure.add_subplot(111)
        self.score_axes = self.axes.twinx()
        self.loss: list[tuple[int, float]] = []
        self.score: list[tuple[int, float]] = []
        self.draw()

    def set_history(self, history: list[dict]) -> None:
        """Show a whole history (e.g. of the model training continues from)."""
        self.loss, self.score = [], []
        for row in history:
            self.add(row, draw=False)
        self.draw()

    def add(self, row: dict, draw: bool = True) -> None:
        """Add one history row (``step`` with ``train_loss`` and/or the score key)."""
        step = int(row.get("step", 0))
        loss = row.get("train_loss")
        if loss is not None and math.isfinite(loss):
            self.loss.append((step, float(loss)))
        score = row.get(self.score_key)
        if score is not None and math.isfinite(score):
            self.score.append((step, float(score)))
        if draw:
            self.draw()

    def draw(self) -> None:
        """Redraw both axes."""
        ax, ax2 = self.axes, self.score_axes
        ax.clear()
        ax2.clear()
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8, color="#25a")
        ax2.yaxis.set_label_position("right")  # clear() puts a twin's label back on the left
        ax2.yaxis.tick_right()
        ax2.set_ylabel(self.score_label, fontsize=8, color="#e62")
        ax2.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
        ax2.tick_params(labelsize=7)
        if self.loss:
            steps, values = zip(*self.loss, strict=True)
            ax.plot(steps, values, color="#9ab", lw=0.8)
            if len(values) >= 10:
                k = min(20, len(values) // 3)
                ax.plot(steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid"), color="#25a", lw=1.5)
        if self.score:
            steps, values = zip(*self.score, strict=True)
            ax2.plot(steps, values, "o-", color="#e62", ms=3, lw=1.2)
        self.canvas.draw_idle()


def _labels_layers(viewer):
    from napari.layers import Labels

    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def image_for(viewer, labels_layer, fallback=None):
    """The Image layer of a Labels layer: the longest Image name its name starts with, of the same
    spatial shape, else ``fallback`` when its shape fits."""
    from napari.layers import Image

    def spatial(layer):
        shape = tuple(layer.data.shape)
        return shape[:-1] if getattr(layer, "rgb", False) else shape

    candidates = [
        layer for layer in viewer.layers
        if isinstance(layer, Image) and labels_layer.name.startswith(layer.name) and spatial(layer) == spatial(labels_layer)
    ]
    if candidates:
        return max(candidates, key=lambda layer: len(layer.name))
    if fallback is not None and spatial(fallback) == spatial(labels_layer):
        return fallback
    raise InputError(
        f"No image fits the Labels layer '{labels_layer.name}' (shape {spatial(labels_layer)}): name it after "
        "its image (e.g. '<image> [instance]') or choose an image of the same shape."
    )


def classes_of(labels_layer) -> dict[int, str] | None:
    """``{label: class name}`` from a Labels layer's features (None when it has no classes)."""
    features = getattr(labels_layer, "features", None)
    if features is None or len(features) == 0:
        return None
    id_col = next((c for c in ("label", "label_id", "index") if c in features), None)
    name_col = next((c for c in ("class_name", "class_id", "class") if c in features), None)
    if id_col is None or name_col is None:
        return None
    out = {}
    for i, name in zip(features[id_col], features[name_col], strict=True):
        if int(i) > 0 and name is not None and str(name) not in ("", "nan"):
            out[int(i)] = str(name)
    return out or None


def gather_annotations(viewer, labels_layers, fallback_image=None, default_class: str = "object"):
    """Planes with objects of the Labels layers, their images and classes (GUI thread).

    Returns
    -------
    (list, list, list, list of str)
        Image planes, label planes, ``{label: class name}`` per plane, and one line per layer
        saying what was taken.
    """
    images, labels, classes, summary = [], [], [], []
    if not labels_layers:
        raise InputError("Choose one or more Labels layers with your objects.")
    for layer in labels_layers:
        image = image_for(viewer, layer, fallback_image)
        lab = np.asarray(layer.data)
        img = np.asarray(image.data[0] if getattr(image, "multiscale", False) else image.data)
        names = classes_of(layer)
        planes = lab.reshape(-1, *lab.shape[-2:])
        flat_img = img.reshape(-1, *img.shape[-3 if getattr(image, "rgb", False) else -2:])
        kept = 0
        for k in range(len(planes)):
            ids = np.unique(planes[k])
            ids = ids[ids != 0]
            if not len(ids):
                continue
            images.append(flat_img[k])
            labels.append(planes[k])
            if names is None:
                classes.append({int(i): default_class for i in ids})
            else:
                missing = [int(i) for i in ids if int(i) not in names]
                if missing:
                    raise InputError(
                        f"Labels layer '{layer.name}': label(s) {', '.join(map(str, missing[:5]))} have no class in "
                        "its features (class_name); give every object a class or remove the class column."
                    )
                classes.append({int(i): names[int(i)] for i in ids})
            kept += 1
        summary.append(f"{layer.name}: {kept} plane(s) with objects (image '{image.name}')")
    if not images:
        raise InputError("The chosen Labels layers hold no object. Annotate some objects first.")
    return images, labels, classes, summary


class _TrainingPanelBase(Container):
    """What both training panels share: layer choice, the job panel (buttons, progress, status), curve.

    The start button, Cancel, the progress bar and the status line are the dock's shared
    :class:`~napari_segsuite.widgets.scaffold.JobPanel`; its Cancel is rewired to stop training
    at the next step (the best model so far is kept) instead of dropping the job.
    """

    job_title = "Training"

    def __init__(self, napari_viewer, store: ModelStore | None = None, on_saved=None, score_label="", score_key=""):
        from napari_segsuite.widgets.scaffold import JobPanel

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.store = store or ModelStore()
        self.on_saved = on_saved
        self.labels_layers = Select(label="Labels layers", choices=self._labels_choices)
        self.labels_layers.tooltip = "Labels layers with your objects (every plane that has objects is used)"
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.image.tooltip = ("Image of a Labels layer whose name does not start with its image's name")
        self.panel = JobPanel(napari_viewer, image=self.image, on_progress=self._on_progress,
                              on_done=self._on_done)
        self.start_button = self.panel.add_action("Train")
        self.cancel_button = self.panel.cancel_button
        self.cancel_button.changed.disconnect(self.panel.jobs.cancel)
        self.cancel_button.changed.connect(self.cancel)
        self.progress = self.panel.progress
        self.message = self.panel.message
        self.curve = TrainingCurve(score_label, score_key)
        self.jobs = self.panel.jobs
        self.jobs.napari_progress = False
        self.state = None
        self.model = None  # the last trained runner
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._refresh_layers)

    def _labels_choices(self, _widget=None):
        return [(layer.name, layer) for layer in _labels_layers(self.viewer)]

    def _image_choices(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        chosen = [layer for layer in self.labels_layers.value if layer in self.viewer.layers]
        self.reset_choices()
        self.labels_layers.value = chosen
        if self.image.value is None:
            images = [c for c in self.image.choices if c is not None]
            if images:
                self.image.value = images[0]

    def annotations(self, default_class: str = "object"):
        """Image planes, label planes and classes of the chosen layers (GUI thread)."""
        return gather_annotations(self.viewer, list(self.labels_layers.value), self.image.value, default_class)

    @property
    def busy(self) -> bool:
        """Whether a job is running."""
        return self.jobs.busy

    def cancel(self) -> None:
        """Stop training at the next step; the best model so far is saved and kept."""
        if self.state is not None:
            self.state.stop.set()
            self.message.value = "Stopping after this step; the best model so far will be kept…"

    def _error(self, exc: BaseException) -> None:
        self.panel.report(exc)

    def _start(self, job_factory, on_result, description: str) -> None:
        self.panel.start(job_factory, on_result, description)

    def _on_progress(self, item: Progress) -> None:
        row = item.partial
        if isinstance(row, dict):
            self.curve.add(row, draw=self.curve.score_key in row or int(row.get("step", 0)) % 5 == 0)

    def _on_done(self, how: Outcome) -> None:
        self.curve.draw()

    def _saved(self, runner) -> None:
        self.model = runner
        if self.on_saved is not None:
            self.on_saved(runner)
        from napari_segsuite.widgets.base import refresh_model_pickers

        refresh_model_pickers()

    def wait(self, timeout: float = 600.0) -> None:
        """Process Qt events until the running job ends."""
        self.jobs.wait(timeout, self.job_title)


class InstanceTrainingPanel(_TrainingPanelBase):
    """Train YOLO-seg or Mask R-CNN on Labels layers; Continue training from the last model."""

    job_title = "Instance training"

    def __init__(self, napari_viewer, store: ModelStore | None = None, on_saved=None):
        super().__init__(napari_viewer, store, on_saved, "held-out mask AP50", "val_ap50")
        self.family = ComboBox(label="Model", choices=FAMILY_CHOICES, value="yolo")
        self.start_from = ComboBox(label="Start from", choices=self._start_choices)
        self.start_from.tooltip = "A new model from scratch, a model trained here, or a checkpoint you pick"
        self.checkpoint = FileEdit(label="Checkpoint", mode="r", visible=False)
        self.class_name = LineEdit(label="Class name", value="object")
        self.class_name.tooltip = "The class of objects in Labels layers whose features name no classes"
        self.epochs = SpinBox(label="Epochs", value=50, min=1, max=10_000)
        self.imgsz = SpinBox(label="Input size", value=0, min=0, max=4096, step=32)
        self.imgsz.tooltip = "Training and prediction input size (0: the images' size)"
        self.val_fraction = FloatSpinBox(label="Held out", value=0.2, min=0.0, max=0.9, step=0.05)
        self.val_fraction.tooltip = "Share of the annotated planes kept for validation (mask AP50)"
        self.name = LineEdit(label="Save as", value="")
        self.name.tooltip = "Name in the model folder (empty: family and time)"
        self.continue_button = self.panel.add_action("Continue training", enabled=False)
        self.continue_button.tooltip = "Train the last model further on all annotations of the chosen layers"
        self.start_button.text = "Train"
        self.extend([
            self.labels_layers, self.image, self.family, self.start_from, self.checkpoint, self.class_name,
            self.epochs, self.imgsz, self.val_fraction, self.name, self.panel.controls,
        ])
        self.native.layout().addWidget(self.curve.canvas)
        #: Further InstanceTrainingOptions for scripts and tests (e.g. {"batch": 2}).
        self.extra_options: dict = {}
        self.start_button.changed.connect(lambda: self.train(False))
        self.continue_button.changed.connect(lambda: self.train(True))
        self.start_from.changed.connect(self._toggle_checkpoint)
        self.family.changed.connect(lambda: self.start_from.reset_choices())
        self._refresh_layers()

    def _start_choices(self, _widget=None):
        from napari_segsuite.tasks.instance_training import RUNNER_FAMILY

        family = RUNNER_FAMILY[self.family.value] if hasattr(self, "family") else None
        items = [("New model (from scratch)", NEW_MODEL)]
        for card in self.store.trained_models(Task.INSTANCE):
            if family is None or card.family == family:
                items.append((f"{card.name} ({', '.join(card.class_names.values())})", f"trained/{card.name}"))
        items.append(("Checkpoint file…", LOCAL_CHECKPOINT))
        return items

    def _toggle_checkpoint(self) -> None:
        self.checkpoint.visible = self.start_from.value == LOCAL_CHECKPOINT

    def _init_model(self, continue_training: bool):
        if continue_training:
            if self.model is None:
                raise InputError("There is no model to continue; train one first.")
            return self.model
        value = self.start_from.value
        if value == NEW_MODEL:
            return None
        if value == LOCAL_CHECKPOINT:
            path = str(self.checkpoint.value)
            if path in ("", "."):
                raise InputError("Choose the checkpoint file to start from.")
            return path
        return value

    def train(self, continue_training: bool = False) -> None:
        """Train on the chosen Labels layers in a worker (Continue: from the last model)."""
        from napari_segsuite.tasks.instance_training import (
            InstanceTrainingOptions,
            InstanceTrainingState,
            train_instances_job,
        )

        try:
            if self.busy:
                raise InputError("A training job is running; cancel it first.")
            images, labels, classes, summary = self.annotations(str(self.class_name.value).strip() or "object")
            init = self._init_model(continue_training)
            family = self.family.value
            if continue_training and self.model is not None:
                family = "yolo" if self.model.family == Family.YOLO else "maskrcnn"
            name = str(self.name.value).strip() or None
            if name is not None:  # never over an existing model: my-cells, my-cells-2, ...
                from napari_segsuite.models.trained import unique_name

                name = unique_name(self.store.cache_dir, name)
            options = InstanceTrainingOptions(
                epochs=int(self.epochs.value), imgsz=int(self.imgsz.value) or None,
                val_fraction=float(self.val_fraction.value), name=name, **self.extra_options,
            )
            options.check()
        except SegSuiteError as exc:
            self._error(exc)
            return
        self.state = state = InstanceTrainingState()
        store = self.store
        history = list(getattr(init, "training", {}).get("history", [])) if continue_training else []
        self.curve.set_history(history)

        def job():
            return (yield from train_instances_job(
                images, labels, label_classes=classes, family=family, init_model=init, options=options,
                store=store, state=state,
            ))

        def on_result(runner) -> None:
            self._saved(runner)
            best = runner.training.get("best_val_ap50")
            kept = "" if best is None else f"; held-out mask AP50 {best:.3f} (epoch {runner.training['best_epoch']})"
            how = "Stopped early" if state.stopped_early else "Trained"
            self.message.value = f"{how}: saved '{runner.name}' in the model folder's trained/{kept}."
            self.start_from.reset_choices()

        self._start(job, on_result, f"Training {family} on " + "; ".join(summary))

    def _on_done(self, how: Outcome) -> None:
        super()._on_done(how)
        self.continue_button.enabled = self.model is not None


class SamFinetunePanel(_TrainingPanelBase):
    """Fine-tune a SAM model's mask decoder and prompt encoder on the objects of Labels layers."""

    job_title = "SAM fine-tuning"

    def __init__(self, napari_viewer, store: ModelStore | None = None, on_saved=None):
        super().__init__(napari_viewer, store, on_saved, "held-out single-point IoU", "val_iou")
        from napari_segsuite.widgets.base import ModelPicker

        self.sam = ModelPicker((Task.PROMPT,), self.store, families=(Family.SAM,))
        self.steps = SpinBox(label="Steps", value=200, min=1, max=100_000)
        self.learning_rate = FloatSpinBox(label="Learning rate", value=1e-4, min=1e-6, max=1e-1, step=1e-5)
        self.name = LineEdit(label="Save as", value="")
        self.start_button.text = "Fine-tune SAM"
        self.extend([
            self.labels_layers, self.image, self.sam, self.steps, self.learning_rate, self.name, self.panel.controls,
        ])
        self.native.layout().addWidget(self.curve.canvas)
        self.extra_options: dict = {}
        self.start_button.changed.connect(self.finetune)
        self._refresh_layers()

    def finetune(self) -> None:
        """Fine-tune the chosen SAM on the chosen Labels layers in a worker."""
        from napari_segsuite.tasks.sam_finetune import (
            SamFinetuneOptions,
            SamFinetuneState,
            finetune_sam_job,
        )

        try:
            if self.busy:
                raise InputError("A fine-tuning job is running; cancel it first.")
            images, labels, _, summary = self.annotations()
            spec = self.sam.spec
            name = str(self.name.value).strip() or None
            if name is not None:
                from napari_segsuite.models.trained import unique_name

                name = unique_name(self.store.cache_dir, name)
            options = SamFinetuneOptions(
                steps=int(self.steps.value), learning_rate=float(self.learning_rate.value), name=name,
                **self.extra_options,
            )
            options.check()
        except SegSuiteError as exc:
            self._error(exc)
            return
        self.state = state = SamFinetuneState()
        store = self.store
        self.curve.set_history([])

        def job():
            return (yield from finetune_sam_job(images, labels, spec, options=options, store=store, state=state))

        def on_result(runner) -> None:
            self._saved(runner)
            t = runner.training
            self.message.value = (
                f"{'Stopped early. ' if state.stopped_early else ''}"
                f"Saved '{runner.name}' in {store.cache_dir / 'trained'}: held-out single-point IoU "
                f"{t['val_iou_before']:.3f} before, {t['val_iou_best']:.3f} after (step {t['best_step']}). "
                "Pick it in the SAM dock's model list."
            )

        self._start(job, on_result, "Fine-tuning SAM on " + "; ".join(summary))


def add_training_sections(widget) -> None:
    """Add the two training panels to a dock as collapsed groups (``widget.training``,
    ``widget.sam_finetune``; their groups ``widget.training_group``, ``widget.sam_finetune_group``),
    sharing the dock's model store."""
    widget.training = InstanceTrainingPanel(widget.viewer, store=widget.store)
    widget.sam_finetune = SamFinetunePanel(widget.viewer, store=widget.store)
    widget.training_group = widget.add_group("Train a model on your labels", [widget.training], labels=False)
    widget.sam_finetune_group = widget.add_group("Fine-tune SAM on your labels", [widget.sam_finetune],
                                                 labels=False)
