"""The U-Net training panel: paint strokes, train, look, correct, continue training, predict.

A thin magicgui container around :mod:`napari_segsuite.tasks.unet_training`:
it reads the image plane(s) and the strokes Labels layer on the GUI thread,
runs training or prediction as a job in a worker (the shared
:class:`~napari_segsuite.widgets.scaffold.JobPanel`), draws
the loss curve live from the job's progress reports, and writes results with
:func:`napari_segsuite.layers.write_plane` on the GUI thread. Cancel during
training keeps the best model so far (the job's :class:`TrainingState` lives
here); Cancel during prediction writes nothing.

The Semantic dock embeds this panel as a collapsed group that shares the dock's Image box;
it also works on its own (``UnetTrainingPanel(viewer)``, with its own Image box).
"""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import LayerTask, Outcome, Scope
from napari_segsuite.layers import METADATA_KEY, PlaneSelection, current_plane, full_resolution

TASK = LayerTask.UNET
CURRENT, ALL = Scope.CURRENT_PLANE, Scope.STROKED_PLANES
PREDICT_CURRENT, PREDICT_ALL = Scope.CURRENT_PLANE, Scope.ALL_PLANES


class LossCurve:
    """A small matplotlib figure of training and validation loss, updated as points arrive."""

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.axes = self.figure.add_subplot(111)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.draw()

    def clear(self) -> None:
        """Forget all points."""
        self.train, self.val = [], []
        self.draw()

    def set_history(self, history: list[dict]) -> None:
        """Show a whole history (e.g. of a loaded model)."""
        self.train, self.val = [], []
        for row in history:
            self.add(row, draw=False)
        self.draw()

    def add(self, row: dict, draw: bool = True) -> None:
        """Add one history row (``step``, ``train_loss``, optional ``val_loss``)."""
        step = int(row["step"])
        if row.get("train_loss") is not None:
            self.train.append((step, float(row["train_loss"])))
        val = row.get("val_loss")
        if val is not None and math.isfinite(val):
            self.val.append((step, float(val)))
        if draw:
            self.draw()

    def draw(self) -> None:
        """Redraw the axes."""
        ax = self.axes
        ax.clear()
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        if self.train:
            steps, values = zip(*self.train, strict=True)
            ax.plot(steps, values, color="#9ab", lw=0.8, label="train")
            if len(values) >= 10:
                k = min(20, len(values) // 3)
                smooth = np.convolve(values, np.ones(k) / k, mode="valid")
                ax.plot(steps[k - 1:], smooth, color="#25a", lw=1.5, label="train (mean)")
        if self.val:
            steps, values = zip(*self.val, strict=True)
            ax.plot(steps, values, "o-", color="#e62", ms=3, lw=1.2, label="validation")
        if self.train or self.val:
            ax.set_yscale("log")
            ax.legend(fontsize=7, loc="upper right")
        self.canvas.draw_idle()


class UnetTrainingPanel(Container):
    """Train a U-Net from painted strokes, watch the curve, predict, save and load.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer, image: ComboBox | None = None):
        super().__init__(labels=False)
        from napari_segsuite.tasks.unet_training import TrainingOptions
        from napari_segsuite.widgets.scaffold import JobPanel

        defaults = TrainingOptions()
        self.margins = (0, 0, 0, 0)
        self.viewer = napari_viewer
        self.job_panel = JobPanel(napari_viewer, image=image, on_progress=self._on_curve, on_done=self._on_done)
        self.image = self.job_panel.image
        self.strokes = ComboBox(label="Strokes", choices=self._labels_choices, nullable=True,
                                tooltip="Labels layer: 0 = not labelled, 1, 2, ... = classes")
        self.class_names = LineEdit(label="Class names", value="background, coin",
                                    tooltip="Names of classes 1, 2, ... separated by commas")
        self.train_on = ComboBox(label="Train on", choices=[CURRENT, ALL], value=CURRENT)
        self.steps = SpinBox(label="Steps", value=defaults.steps, min=1, max=100_000)
        self.patch_size = SpinBox(label="Patch size", value=defaults.patch_size, min=32, max=1024, step=32)
        self.learning_rate = FloatSpinBox(label="Learning rate", value=defaults.learning_rate, min=1e-5,
                                          max=1.0, step=1e-4)
        self.train_button = self.job_panel.add_action("Train")
        self.continue_button = self.job_panel.add_action("Continue training", enabled=False)
        self.cancel_button = self.job_panel.cancel_button
        self.progress = self.job_panel.progress
        self.message = self.job_panel.message
        self.message.value = "Paint strokes (1, 2, ...) in a Labels layer, then Train."
        self.jobs = self.job_panel.jobs
        self.predict_on = ComboBox(label="Predict", choices=[PREDICT_CURRENT, PREDICT_ALL], value=PREDICT_CURRENT)
        self.probability = CheckBox(text="Probability layer", value=False)
        self.predict_button = PushButton(text="Predict", enabled=False)
        self.folder = FileEdit(label="Model folder", mode="d")
        self.save_button = PushButton(text="Save", enabled=False)
        self.load_button = PushButton(text="Load")
        self.curve = LossCurve()
        own_image = [self.image] if self.job_panel.owns_image else []
        self.inputs = Container(labels=True, widgets=[*own_image, self.strokes, self.class_names])
        self.training_options = Container(labels=True, widgets=[
            self.train_on, self.steps, self.patch_size, self.learning_rate])
        self.predict_row = Container(widgets=[self.predict_on, self.probability, self.predict_button],
                                     layout="horizontal", labels=False)
        self.storage = Container(labels=True, widgets=[
            self.folder,
            Container(widgets=[self.save_button, self.load_button], layout="horizontal", labels=False),
        ])
        for c in (self.inputs, self.training_options, self.predict_row, self.storage):
            c.margins = (0, 0, 0, 0)
        self.extend([self.inputs, self.job_panel.controls])
        self.native.layout().addWidget(self.curve.canvas)
        self.extend([self.predict_row, self.training_options, self.storage])
        #: Further TrainingOptions fields for scripts and tests (e.g. {"val_every": 5}).
        self.extra_options: dict = {}
        self.model = None  # the current TrainedUnet
        self.state = None  # TrainingState of the running or last training
        self._kind = ""  # "train" or "predict" while a job runs
        self.train_button.changed.connect(lambda: self.train(False))
        self.continue_button.changed.connect(lambda: self.train(True))
        self.predict_button.changed.connect(self.predict)
        self.save_button.changed.connect(self.save)
        self.load_button.changed.connect(self.load)
        self.strokes.changed.connect(self._names_from_layer)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._refresh_layers)
        self._refresh_layers()

    # -- layers -------------------------------------------------------------------
    def _labels_choices(self, _widget=None):
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and METADATA_KEY not in layer.metadata]

    def _refresh_layers(self, event=None) -> None:
        self.reset_choices()
        self.job_panel._on_layers_changed()
        strokes = [c for c in self.strokes.choices if c is not None]
        if self.strokes.value is None and strokes:
            self.strokes.value = strokes[0]

    def _names_from_layer(self, layer=None) -> None:
        """Take class names from the strokes layer's features (``class_name`` column) when it has them."""
        layer = self.strokes.value
        if layer is None:
            return
        features = getattr(layer, "features", None)
        if features is None or "class_name" not in features or "index" not in features:
            return
        rows = sorted((int(i), str(n)) for i, n in zip(features["index"], features["class_name"], strict=True)
                      if int(i) > 0)
        if rows:
            self.class_names.value = ", ".join(n for _, n in rows)

    def _layer(self, combo: ComboBox, what: str):
        layer = combo.value
        if layer is None or layer not in self.viewer.layers:
            raise InputError(f"Choose {what} first.")
        return layer

    def names(self) -> list[str]:
        """Class names 1, 2, ... from the text field."""
        return [n.strip() for n in str(self.class_names.value).split(",") if n.strip()]

    def _planes(self, image, which: str, strokes=None) -> list[tuple[Any, PlaneSelection, bool]]:
        """(data, selection, is_plane) triples: the current plane, or every plane (with strokes).

        For the current plane ``data`` is the plane itself (``is_plane``);
        otherwise it is the layer's data, to be read at ``selection.index``
        (one plane at a time, in the worker for prediction).
        """
        plane, sel = current_plane(self.viewer, image)
        if which in (CURRENT, PREDICT_CURRENT) or len(sel.layer_shape) == 2:
            return [(plane, sel, True)]
        other = [a for a in range(len(sel.layer_shape)) if a not in sel.axes]
        data = full_resolution(image)
        out = []
        if strokes is not None:
            if not isinstance(strokes.data, np.ndarray):
                raise InputError(
                    f"The strokes layer '{strokes.name}' is not in memory (zarr or dask), so its planes with "
                    "strokes cannot be searched; train on the current plane (Train on: current plane)."
                )
            has = np.any(np.asarray(strokes.data) != 0, axis=tuple(sel.axes))
            coords = [tuple(int(i) for i in c) for c in np.argwhere(has)]
        else:
            coords = list(product(*(range(sel.layer_shape[a]) for a in other)))
        for c in coords:
            idx: list = [slice(None)] * len(sel.layer_shape)
            for a, i in zip(other, c, strict=True):
                idx[a] = i
            index = (*idx, slice(None)) if sel.rgb else tuple(idx)
            s = PlaneSelection(index=index, axes=sel.axes, shape=sel.shape, layer_shape=sel.layer_shape, rgb=sel.rgb)
            out.append((data, s, False))
        return out

    # -- training ---------------------------------------------------------------------
    def train(self, continue_training: bool = False) -> None:
        """Train a new model (or continue the current one) on the strokes, in a worker."""
        try:
            job_factory, on_result = self._make_training_job(continue_training)
        except SegSuiteError as exc:
            self._error(exc)
            return
        self._start("train", job_factory, on_result, "Training the U-Net")

    def _make_training_job(self, continue_training: bool):
        from napari_segsuite.tasks.unet_training import (
            TrainingOptions,
            TrainingState,
            check_training_data,
            train_unet_job,
        )

        image = self._layer(self.image, "an image")
        strokes = self._layer(self.strokes, "a Labels layer of strokes")
        init = None
        if continue_training:
            if self.model is None:
                raise InputError("There is no model to continue; press Train first.")
            init = self.model
        sel = current_plane(self.viewer, image)[1]
        if tuple(strokes.data.shape) != tuple(sel.layer_shape):
            raise InputError(
                f"The strokes layer '{strokes.name}' has shape {tuple(strokes.data.shape)}, but image "
                f"'{image.name}' has {tuple(sel.layer_shape)}; paint strokes in a Labels layer of the image's shape."
            )
        planes, marks = [], []
        todo = self._planes(image, self.train_on.value, strokes)
        for data, s, is_plane in todo:
            planes.append(np.array(data if is_plane else data[s.index]))
            marks.append(np.array(strokes.data[s.labels_index]))
        check_training_data(list(zip(planes, marks, strict=True)), init)
        opts = TrainingOptions.from_kwargs(**{
            "steps": int(self.steps.value), "patch_size": int(self.patch_size.value),
            "learning_rate": float(self.learning_rate.value), **self.extra_options,
        })
        if init is not None:
            opts.patch_size -= opts.patch_size % (2 ** init.config["encoder_depth"])
        opts.check()
        names = self.names()
        state = TrainingState()
        self.state = state
        if init is None:
            self.curve.clear()

        def job():
            return (yield from train_unet_job(planes, marks, opts, class_names=names or None,
                                              init_model=init, state=state))

        def on_result(model) -> None:
            self._set_model(model)
            tr = model.config.get("training", {})
            self.message.value = (
                f"Trained {tr.get('steps')} steps in {state.seconds:.0f} s on {state.labeled_pixels} labelled "
                f"pixels; kept step {tr.get('best_step')} (validation loss {_fmt(model.best_val)})."
            )

        return job, on_result

    def _set_model(self, model) -> None:
        self.model = model
        for button in (self.continue_button, self.predict_button, self.save_button):
            button.enabled = True
        self.class_names.value = ", ".join(model.class_names.values())

    # -- prediction ---------------------------------------------------------------------
    def predict(self) -> None:
        """Predict the current plane or all planes of the image into a Labels layer."""
        try:
            job_factory, on_result = self._make_prediction_job()
        except SegSuiteError as exc:
            self._error(exc)
            return
        self._start("predict", job_factory, on_result, "Predicting with the U-Net")

    def _make_prediction_job(self):
        from napari_segsuite.tasks.unet_training import check_channels, predict_plane_job

        if self.model is None:
            raise InputError("Train or load a U-Net first.")
        model = self.model
        image = self._layer(self.image, "an image")
        self._refuse_large(image)
        check_channels(current_plane(self.viewer, image)[0], model.in_channels)
        todo = self._planes(image, self.predict_on.value)
        keep_proba = bool(self.probability.value)

        def job():
            out = []
            n = len(todo)
            for i, (data, s, is_plane) in enumerate(todo):
                arr = np.asarray(data if is_plane else data[s.index])
                yield Progress(i, n, f"Predicting plane {i + 1}/{n}")
                labels, probs = yield from predict_plane_job(model, arr)
                out.append((s, labels, probs if keep_proba else None))
            yield Progress(n, n, f"Predicted {n} plane(s)")
            return out

        def on_result(results) -> None:
            self._write(image, results)

        return job, on_result

    @staticmethod
    def _refuse_large(image) -> None:
        """Refuse to predict an image whose labels cannot be held in memory, naming the way that works."""
        from napari_segsuite.layers import labels_on_disk

        if labels_on_disk(image):
            raise InputError(
                f"'{image.name}' is a large image (zarr, dask or multiscale data, or planes over 64 Mpx): this "
                "panel predicts whole planes into a Labels layer in memory, which does not fit. Save the U-Net, "
                "pick its folder as the dock's Model (Local file or folder…, Use a folder instead…) and Run with "
                "a Region (field of view, rectangle or whole plane): the dock runs it in chunks into labels on disk."
            )

    def _write(self, image, results) -> None:
        from napari_segsuite.layers import write_plane

        model = self.model
        names = model.class_names
        provenance = {
            "model": "unet (trained from strokes)",
            "encoder_name": model.config["encoder_name"],
            "class_names": {str(k): v for k, v in names.items()},
            "training": {k: v for k, v in model.config.get("training", {}).items() if k != "history"},
        }
        extra = {k: {"class_name": v} for k, v in names.items()}
        layer = None
        for sel, labels, probs in results:
            layer = write_plane(self.viewer, image, sel, labels, task=TASK, provenance=provenance,
                                extra_features=extra)
            if probs is not None:
                self._write_probability(image, sel, probs, names)
        if layer is not None:
            self.message.value = f"Wrote {len(results)} plane(s) to '{layer.name}'."

    def _write_probability(self, image, sel: PlaneSelection, probs: np.ndarray, names: dict) -> None:
        """Probability of the last class for two classes, else the winning class's probability."""
        from napari.layers import Image

        from napari_segsuite.layers import aligned_layer_kwargs, output_layer_name

        values = probs[-1] if len(probs) == 2 else probs.max(axis=0)
        title = f"p({list(names.values())[-1]})" if len(probs) == 2 else "confidence"
        name = output_layer_name(image, f"{TASK} {title}")
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if not isinstance(layer, Image) or tuple(layer.data.shape) != tuple(sel.layer_shape):
            data = np.zeros(sel.layer_shape, np.float32)
            layer = Image(data, name=name, colormap="magma", blending="additive", contrast_limits=(0, 1),
                          opacity=0.6, **aligned_layer_kwargs(image))
            self.viewer.add_layer(layer)
        layer.data[sel.labels_index] = values
        layer.refresh()

    # -- save / load -------------------------------------------------------------------
    def _folder(self) -> Path:
        text = str(self.folder.value)
        if text in ("", "."):
            raise InputError("Choose a model folder first.")
        return Path(text)

    def save(self) -> None:
        """Save the current model into the model folder."""
        try:
            if self.model is None:
                raise InputError("There is no model to save; train or load one first.")
            folder = self.model.save(self._folder())
        except (SegSuiteError, OSError) as exc:
            self._error(exc)
            return
        self.message.value = f"Saved the U-Net to {folder}."

    def load(self) -> None:
        """Load a U-Net folder as the current model."""
        from napari_segsuite.tasks.unet_training import load_trained_unet

        try:
            model = load_trained_unet(self._folder())
        except (SegSuiteError, OSError) as exc:
            self._error(exc)
            return
        self._set_model(model)
        self.curve.set_history(model.history)
        self.message.value = f"Loaded {model!r}."

    # -- running ------------------------------------------------------------------------
    def _error(self, exc: BaseException) -> None:
        self.job_panel.report(exc)

    def _start(self, kind: str, job_factory, on_result, description: str) -> None:
        self._kind = kind
        for button in (self.predict_button, self.load_button, self.save_button):
            button.enabled = False
        self.job_panel.start(job_factory, on_result, description)

    @property
    def busy(self) -> bool:
        """Whether a training or prediction job is running."""
        return self.jobs.busy or not self.train_button.enabled

    def _on_progress(self, item: Progress) -> None:
        self.job_panel.on_progress(item)

    def _on_curve(self, item: Progress) -> None:
        if self._kind == "train" and isinstance(item.partial, dict):
            row = item.partial
            self.curve.add(row, draw="val_loss" in row or int(row["step"]) % 5 == 0)

    def _on_done(self, how: Outcome) -> None:
        kind, self._kind = self._kind, ""
        self.load_button.enabled = True
        if how == Outcome.ABORTED and kind == "train":
            state = self.state
            best = state.best_model() if state is not None else None
            if best is not None:
                self._set_model(best)
                self.message.value = (
                    f"Cancelled at step {state.step}; kept the best model so far (step {state.best_step}, "
                    f"validation loss {_fmt(state.best_val)}). No layer was changed."
                )
            else:
                kept = " The previous model is kept." if self.model is not None else ""
                self.message.value = f"Cancelled before the first validation; no new model.{kept}"
        elif how == Outcome.ABORTED:
            self.message.value = "Prediction cancelled; no layer was changed."
        has_model = self.model is not None
        for button in (self.continue_button, self.predict_button, self.save_button):
            button.enabled = has_model
        if self.curve.train:
            self.curve.draw()

    def wait(self, timeout: float = 600.0) -> None:
        """Process Qt events until the running job ends (for scripts and the smoke mode)."""
        self.jobs.wait(timeout, "The U-Net job")

    def smoke(self, steps: int = 12) -> None:
        """Train briefly on the coins sample with its shipped strokes, then predict (headless check)."""
        from napari_segsuite.sample_data import coins_strokes

        layers = {layer.name: layer for layer in self.viewer.layers}
        if "coins strokes" not in layers:
            for data, kwargs, kind in coins_strokes():
                if kind == "image" and kwargs["name"] in layers:
                    continue
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.image.value = self.viewer.layers["coins"]
        self.strokes.value = self.viewer.layers["coins strokes"]
        self.steps.value, self.patch_size.value = steps, 64
        self.train()
        self.wait()
        if self.model is None:
            raise RuntimeError(f"U-Net training failed: {self.message.value}")
        self.predict()
        self.wait()
        if f"coins [{TASK}]" not in self.viewer.layers:
            raise RuntimeError(f"U-Net prediction wrote no layer: {self.message.value}")


def _fmt(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
