"""The "Panoptic Segmentation" dock widget.

Run: the plane of the chosen image at the viewer's position goes through a
Mask2Former panoptic checkpoint (:mod:`napari_segsuite.tasks.panoptic`) in a
worker; the result is written on the GUI thread as

- one Labels layer ``<image> [panoptic]`` with a segment per thing instance and
  per stuff region (plain ids, or ``class_id * label_divisor + k``), and one row
  per segment in ``layer.features`` (label, class_id, class_name,
  is_thing, score, area); or
- two layers, ``<image> [panoptic semantic]`` (``class_id + 1`` per pixel) and
  ``<image> [panoptic instance]`` (things only, 1..N).

*Run on* all planes or all open images runs the batch ``panoptic`` task on every plane
(:meth:`~napari_segsuite.widgets.base.SegmentationWidget.make_batch_job`); segment ids then
continue over the planes of a stack (except ``class * divisor + k`` ids).

*Evaluate against ground truth…* opens the "Evaluate Segmentation" dock
(:mod:`napari_segsuite.widgets.evaluation`) with the last result as the prediction.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import (
    ComboBox,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.vocabulary import Task
from napari_segsuite.widgets.base import LOCAL, SegmentationWidget
from napari_segsuite.widgets.evaluation import SHOWN_COLUMNS, layer_classes

__all__ = ["OUTPUTS", "SHOWN_COLUMNS", "PanopticWidget", "layer_classes", "parse_class_list"]

OUTPUTS = {
    "one": "One layer (segment ids)",
    "divisor": "One layer, id = class * divisor + k",
    "split": "Semantic + instance layers",
}


def parse_class_list(text: str, class_names: dict[int, str]) -> tuple[int, ...] | None:
    """Turn "auto", "" or "0, 3, sky" into class ids (None for "auto").

    Raises
    ------
    InputError
        For a name or id the model does not have.
    """
    text = (text or "").strip()
    if text.lower() == "auto":
        return None
    by_name = {v.lower(): k for k, v in class_names.items()}
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lstrip("-").isdigit():
            value = int(part)
            if class_names and value not in class_names:
                raise InputError(f"The model has no class {value} (it has 0 to {max(class_names)}).")
            out.append(value)
        elif part.lower() in by_name:
            out.append(by_name[part.lower()])
        else:
            raise InputError(
                f"The model has no class named {part!r}; use class ids or names such as "
                f"{', '.join(list(class_names.values())[:4])}."
            )
    return tuple(out)


class PanopticWidget(SegmentationWidget):
    """Things get instance ids, stuff gets class regions (Mask2Former)."""

    task = Task.PANOPTIC
    model_tasks = (Task.PANOPTIC,)
    batch_task = Task.PANOPTIC

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.threshold = FloatSpinBox(label="Threshold", value=0.5, min=0.0, max=1.0, step=0.05,
                                      tooltip="Class score a segment needs")
        self.mask_threshold = FloatSpinBox(label="Mask threshold", value=0.5, min=0.0, max=1.0, step=0.05,
                                           tooltip="Mask probability threshold")
        self.overlap = FloatSpinBox(label="Overlap area", value=0.8, min=0.0, max=1.0, step=0.05,
                                    tooltip="Share of a mask that must survive overlaps (overlap_mask_area_threshold)")
        self.fuse = LineEdit(label="Stuff classes", value="auto",
                             tooltip="Classes fused into one region each (ids or names, comma-separated); "
                                     "'auto': COCO/Cityscapes stuff classes; empty: none")
        self.output = ComboBox(label="Output", choices=[(v, k) for k, v in OUTPUTS.items()], value="one")
        self.divisor = SpinBox(label="Label divisor", value=1000, min=2, max=1_000_000, visible=False)
        self.output.changed.connect(lambda v: setattr(self.divisor, "visible", v == "divisor"))
        self.task_options.extend([self.threshold, self.mask_threshold, self.overlap, self.fuse,
                                  self.output, self.divisor, self.scope])
        self._build_evaluation()
        self._smoke_dir = None
        self.show_library_defaults({"threshold": self.threshold, "mask_threshold": self.mask_threshold,
                                    "overlap_mask_area_threshold": self.overlap})
        self.finish_layout()

    # -- running ------------------------------------------------------------------
    def params(self):
        """The task parameters of the current settings (label_ids_to_fuse parsed later)."""
        from napari_segsuite.tasks.panoptic import PanopticParams

        params = PanopticParams(
            threshold=float(self.threshold.value),
            mask_threshold=float(self.mask_threshold.value),
            overlap_mask_area_threshold=float(self.overlap.value),
            label_divisor=int(self.divisor.value) if self.output.value == "divisor" else None,
        )
        params.check()
        return params

    # -- all planes / all open images (the batch engine) -----------------------------------
    def batch_params(self) -> dict:
        """The panoptic task's parameters from the form (stuff classes resolved in the worker)."""
        if self.output.value == "split":
            raise InputError(
                "'Semantic + instance layers' is made for the current plane; choose a one-layer output "
                "to run on all planes or all open images."
            )
        params = self.params()
        out = {"threshold": params.threshold, "mask_threshold": params.mask_threshold,
               "overlap_mask_area_threshold": params.overlap_mask_area_threshold,
               "label_ids_to_fuse": self.fuse.value}
        if params.label_divisor:
            out["label_divisor"] = params.label_divisor
        return out

    def resolve_batch_params(self, runner, params: dict) -> dict:
        """Stuff classes as ids of the loaded model ("auto": the processor's own choice)."""
        fuse = parse_class_list(params.pop("label_ids_to_fuse"), runner.class_names)
        if fuse is not None:
            params["label_ids_to_fuse"] = list(fuse)
        return params

    def batch_unique_ids(self, params: dict) -> bool | None:
        """Segment ids continue over planes, except ``class * divisor + k`` ids (they encode classes)."""
        return False if params.get("label_divisor") else True

    def make_job(self):
        """Read the plane and the settings, return the job and the layer writer."""
        from napari_segsuite.layers import current_plane
        from napari_segsuite.tasks.panoptic import panoptic_job

        image = self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        plane, sel = current_plane(self.viewer, image)
        params = self.params()
        fuse_text = self.fuse.value
        mode = self.output.value

        def job():
            runner = yield from self.load_model_job()
            params.label_ids_to_fuse = parse_class_list(fuse_text, runner.class_names)
            result = yield from panoptic_job(runner, plane, params, channels_last=bool(getattr(image, "rgb", False)))
            return runner, result

        def on_result(value) -> None:
            runner, result = value
            self.write_result(image, sel, runner, result, mode)

        return job, on_result

    def write_result(self, image, sel, runner, result, mode: str) -> list:
        """Write a :class:`PanopticResult` into the output layer(s) (GUI thread)."""
        from napari_segsuite.layers import output_layer_name, write_plane

        provenance = {"model": runner.provenance(), "parameters": result.parameters,
                      "label_divisor": result.label_divisor}
        if mode == "split":
            from napari_segsuite.layers import guard_edited

            guard_edited(self.viewer, [output_layer_name(image, "panoptic semantic"),
                                       output_layer_name(image, "panoptic instance")])
            instances, feats = result.instance_labels()
            layers = [
                write_plane(self.viewer, image, sel, result.semantic_labels(), task=self.task,
                            name=output_layer_name(image, "panoptic semantic"),
                            provenance={**provenance, "encoding": "class_id + 1"},
                            extra_features=result.semantic_features()),
                write_plane(self.viewer, image, sel, instances, task=self.task,
                            name=output_layer_name(image, "panoptic instance"),
                            provenance={**provenance, "encoding": "things 1..N"}, extra_features=feats),
            ]
        else:
            layers = [write_plane(self.viewer, image, sel, result.labels, task=self.task,
                                  provenance=provenance, extra_features=result.features())]
        self.last_layers = layers
        n_things = int(result.table["is_thing"].sum()) if len(result.table) else 0
        self.message.value = (
            f"{len(result.table)} segments ({n_things} things, {len(result.table) - n_things} stuff) "
            f"in {', '.join(layer.name for layer in layers)}."
        )
        return layers

    # -- evaluation -------------------------------------------------------------------
    def _build_evaluation(self) -> None:
        self.evaluate_button = PushButton(text="Evaluate against ground truth…",
                                          tooltip="Open the 'Evaluate Segmentation' dock on the last result")
        self.results.append(self.evaluate_button)
        self.evaluate_button.changed.connect(self.open_evaluation)
        self.last_layers: list = []

    def open_evaluation(self):
        """Open (or show) the "Evaluate Segmentation" dock with the last result as prediction."""
        from napari_segsuite.widgets.evaluation import EvaluationWidget

        widget = None
        window = getattr(self.viewer, "window", None)
        if window is not None and getattr(window, "_qt_window", None) is not None:
            try:
                dock, widget = window.add_plugin_dock_widget("napari-segsuite", "Evaluate Segmentation")
                dock.show()
                dock.raise_()
            except (KeyError, ValueError):  # the plugin is not registered (e.g. a script)
                widget = None
        if widget is None:
            widget = EvaluationWidget(self.viewer)
        if self.last_layers and self.last_layers[-1] in self.viewer.layers:
            widget.show_prediction(self.last_layers[-1])
        return widget

    # -- smoke ----------------------------------------------------------------------
    def smoke(self, timeout: float = 300.0) -> None:
        """Run a tiny random Mask2Former panoptic model end to end on the current image."""
        import tempfile

        from napari_segsuite.demo.tiny_models import build_tiny_mask2former

        self._smoke_dir = tempfile.TemporaryDirectory(prefix="segsuite-panoptic-")
        folder = build_tiny_mask2former(Path(self._smoke_dir.name) / "tiny_mask2former_panoptic",
                                        task=self.task, num_labels=4, seed=2)
        self.models.model.value = LOCAL
        self.models.local.value = str(folder)
        self.device.value = "cpu"
        self.threshold.value, self.mask_threshold.value, self.overlap.value = 0.0, 0.05, 0.0
        self.fuse.value = "0"
        image = self.selected_image()
        self.run()
        self.jobs.wait(timeout, "the panoptic smoke run")
        if self.jobs.last_error is not None:
            raise RuntimeError(f"the panoptic smoke run failed: {self.jobs.last_error}")
        name = f"{image.name} [panoptic]"
        if name not in self.viewer.layers or not len(self.viewer.layers[name].features):
            raise RuntimeError(f"the panoptic smoke run wrote no layer '{name}'")
