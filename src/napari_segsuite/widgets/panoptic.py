"""The "Panoptic Segmentation" dock widget, with an "Evaluate" section.

Run: the plane of the chosen image at the viewer's position goes through a
Mask2Former panoptic checkpoint (:mod:`napari_segsuite.tasks.panoptic`) in a
worker; the result is written on the GUI thread as

- one Labels layer ``<image> [panoptic]`` with a segment per thing instance and
  per stuff region (plain ids, or ``class_id * label_divisor + k``), and one row
  per segment in ``layer.features`` (segment_id, class_id, class_name,
  is_thing, score, area); or
- two layers, ``<image> [panoptic semantic]`` (``class_id + 1`` per pixel) and
  ``<image> [panoptic instance]`` (things only, 1..N).

*Run on* all planes or all open images runs the batch ``panoptic`` task on every plane
(:meth:`~napari_segsuite.widgets.base.SegmentationWidget.make_batch_job`); segment ids then
continue over the planes of a stack (except ``class * divisor + k`` ids).

Evaluate: compares a prediction Labels layer with a ground-truth Labels layer
(:func:`napari_segsuite.core.metrics.evaluate`; whole layers, all planes of a stack),
shows the per-class table,
optionally adds layers with the false positives and the misses, and exports the
table as CSV. Classes of each layer come from its ``features`` (``class_id``
column), else from its ``label_divisor`` (in ``metadata["segsuite"]``), else
the scores are class-agnostic; prediction scores come from a ``score`` column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
    Table,
)

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.progress import Progress
from napari_segsuite.layers import aligned_layer_kwargs
from napari_segsuite.widgets.base import LOCAL, SegmentationWidget

OUTPUTS = {
    "one": "One layer (segment ids)",
    "divisor": "One layer, id = class * divisor + k",
    "split": "Semantic + instance layers",
}
#: Columns shown in the evaluation table (the CSV has them all).
SHOWN_COLUMNS = ("class_name", "n_gt", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1",
                 "ap50", "ap", "pq", "sq", "rq", "iou", "dice")


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


def layer_classes(layer) -> tuple[dict | None, dict | None, dict]:
    """(classes, scores, class names) of a Labels layer, from its features or its label_divisor."""
    feats = getattr(layer, "features", None)
    classes = scores = None
    names: dict[int, str] = {}
    if feats is not None and len(feats) and "index" in feats.columns:
        ids = feats["index"].astype(np.int64)
        if "class_id" in feats.columns:
            ok = feats["class_id"].notna()
            classes = dict(zip(ids[ok].tolist(), feats["class_id"][ok].astype(int).tolist(), strict=True))
            if "class_name" in feats.columns:
                names = dict(zip(feats["class_id"][ok].astype(int).tolist(), feats["class_name"][ok].astype(str).tolist(), strict=True))
        if "score" in feats.columns:
            ok = feats["score"].notna()
            scores = dict(zip(ids[ok].tolist(), feats["score"][ok].astype(float).tolist(), strict=True))
    if classes is None:
        meta = getattr(layer, "metadata", {}).get("segsuite", {})
        divisor = meta.get("label_divisor") or (meta.get("parameters") or {}).get("label_divisor")
        if divisor:
            data = np.asarray(layer.data)
            classes = {int(i): int(i) // int(divisor) for i in np.unique(data) if i}
    return classes, scores, names


class PanopticWidget(SegmentationWidget):
    """Things get instance ids, stuff gets class regions (Mask2Former)."""

    task = "panoptic"
    model_tasks = ('panoptic',)
    batch_task = "panoptic"

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.threshold = FloatSpinBox(label="Threshold", value=0.8, min=0.0, max=1.0, step=0.05,
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
                write_plane(self.viewer, image, sel, result.semantic_labels(), task="panoptic",
                            name=output_layer_name(image, "panoptic semantic"),
                            provenance={**provenance, "encoding": "class_id + 1"},
                            extra_features=result.semantic_features()),
                write_plane(self.viewer, image, sel, instances, task="panoptic",
                            name=output_layer_name(image, "panoptic instance"),
                            provenance={**provenance, "encoding": "things 1..N"}, extra_features=feats),
            ]
        else:
            layers = [write_plane(self.viewer, image, sel, result.labels, task="panoptic",
                                  provenance=provenance, extra_features=result.features())]
        self.reset_choices()
        if self.pred_layer.value is None or self.pred_layer.value not in self.viewer.layers:
            self.pred_layer.value = layers[-1]
        n_things = int(result.table["is_thing"].sum()) if len(result.table) else 0
        self.message.value = (
            f"{len(result.table)} segments ({n_things} things, {len(result.table) - n_things} stuff) "
            f"in {', '.join(layer.name for layer in layers)}."
        )
        return layers

    # -- evaluation -------------------------------------------------------------------
    def _build_evaluation(self) -> None:
        self.show_evaluation = CheckBox(text="Evaluate against ground truth", value=False)
        self.pred_layer = ComboBox(label="Prediction", choices=self._labels_choices, nullable=True)
        self.gt_layer = ComboBox(label="Ground truth", choices=self._labels_choices, nullable=True)
        self.ignore_classes = CheckBox(text="Ignore classes (class-agnostic scores)", value=False)
        self.error_layers = CheckBox(text="Show false positives and misses as layers", value=True)
        self.evaluate_button = PushButton(text="Evaluate")
        self.eval_summary = Label(value="")
        self.eval_summary.native.setWordWrap(True)
        self.eval_table = Table()
        self.eval_table.read_only = True
        self.csv_path = FileEdit(label="CSV file", mode="w", filter="*.csv", value="evaluation.csv")
        self.export_button = PushButton(text="Export CSV", enabled=False)
        self.evaluation = Container(
            labels=True, visible=False,
            widgets=[self.pred_layer, self.gt_layer, self.ignore_classes, self.error_layers, self.evaluate_button,
                     self.eval_summary, self.eval_table, self.csv_path, self.export_button],
        )
        self.extend([self.show_evaluation, self.evaluation])
        self.show_evaluation.changed.connect(lambda v: setattr(self.evaluation, "visible", bool(v)))
        self.evaluate_button.changed.connect(self.evaluate)
        self.export_button.changed.connect(self.export_csv)
        self.last_evaluation = None

    def _labels_choices(self, _widget=None):
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def make_evaluation_job(self):
        """Read both layers (GUI thread); return the job and the result handler."""
        from napari_segsuite.core.metrics import check_label_image, check_same_shape, evaluate

        pred_layer, gt_layer = self.pred_layer.value, self.gt_layer.value
        if pred_layer is None or gt_layer is None:
            raise InputError("Choose a prediction and a ground-truth Labels layer to evaluate.")
        pred = check_label_image(np.asarray(pred_layer.data), f"labels of '{pred_layer.name}'")
        gt = check_label_image(np.asarray(gt_layer.data), f"labels of '{gt_layer.name}'")
        try:
            check_same_shape(pred, gt)
        except InputError as exc:
            raise InputError(f"'{pred_layer.name}' and '{gt_layer.name}': {exc}") from None
        pred_classes, pred_scores, names = layer_classes(pred_layer)
        gt_classes, _, gt_names = layer_classes(gt_layer)
        names = {**gt_names, **names}
        if self.ignore_classes.value or (pred_classes is None) != (gt_classes is None):
            # asked for, or one side has classes and the other not: compare class-agnostically
            pred_classes = gt_classes = None
            names = {}
        show_errors = bool(self.error_layers.value)

        def job():
            yield Progress(0, 1, "Evaluating")
            return evaluate(pred, gt, pred_classes=pred_classes, gt_classes=gt_classes,
                            pred_scores=pred_scores, class_names=names)

        def on_result(result) -> None:
            self.show_evaluation_result(result, pred_layer, gt_layer, pred, gt, show_errors)

        return job, on_result

    def evaluate(self) -> None:
        """Compare the chosen prediction and ground-truth layers (in a worker)."""
        try:
            job, on_result = self.make_evaluation_job()
        except SegSuiteError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))
            self.message.value = str(exc)
            self.eval_summary.value = str(exc)
            return
        self._start(job, on_result, "Evaluation")

    def show_evaluation_result(self, result, pred_layer, gt_layer, pred, gt, show_errors: bool) -> None:
        """Fill the table and the summary; add the error layers (GUI thread)."""
        self.last_evaluation = result
        table = result.table()
        shown = table[[c for c in SHOWN_COLUMNS if c in table.columns]].copy()
        for col in shown.columns:
            if shown[col].dtype.kind == "f":
                shown[col] = shown[col].round(4)
        self.eval_table.value = shown
        s = result.summary
        self.eval_summary.value = (
            f"PQ {s['pq']:.3f} (SQ {s['sq']:.3f} x RQ {s['rq']:.3f}); AP50 {s['ap50']:.3f}, "
            f"AP {s['ap']:.3f}; F1@0.5 {s['f1']:.3f} (P {s['precision']:.3f}, R {s['recall']:.3f}); "
            f"mIoU {s['iou']:.3f}. {s['tp']} matched, {s['fp']} spurious, {s['fn']} missed."
        )
        self.message.value = "Evaluation done."
        self.export_button.enabled = True
        if show_errors:
            self._error_layer(pred_layer, pred, result.matching.spurious, "false positives")
            self._error_layer(gt_layer, gt, result.matching.missed, "misses")

    def _error_layer(self, source, data: np.ndarray, ids: list[int], what: str):
        from napari.layers import Labels

        name = f"{source.name} [{what}]"
        values = np.where(np.isin(data, np.asarray(ids, dtype=data.dtype)), data, 0) if ids else np.zeros_like(data)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels) \
                and self.viewer.layers[name].data.shape == values.shape:
            layer = self.viewer.layers[name]
            layer.data = values
        else:
            if name in self.viewer.layers:
                del self.viewer.layers[name]
            layer = self.viewer.add_labels(values, name=name, opacity=0.8, **aligned_layer_kwargs(source))
        layer.metadata = {**layer.metadata, "segsuite": {"task": "evaluation", "shows": what, "ids": list(ids)}}
        return layer

    def export_csv(self) -> Path | None:
        """Write the last evaluation's table (and ``<name>_objects.csv``) to the chosen file."""
        from napari.utils.notifications import show_error, show_info

        if self.last_evaluation is None:
            show_error("Evaluate first; there is nothing to export yet.")
            return None
        path = Path(str(self.csv_path.value))
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.last_evaluation.to_csv(path)
            self.last_evaluation.objects_table().to_csv(path.with_name(path.stem + "_objects.csv"), index=False)
        except OSError as exc:
            show_error(f"Could not write {path}: {exc}")
            return None
        show_info(f"Saved the evaluation to {path}")
        self.message.value = f"Saved {path.name} and {path.stem}_objects.csv in {path.parent}."
        return path

    # -- smoke ----------------------------------------------------------------------
    def smoke(self, timeout: float = 300.0) -> None:
        """Run a tiny random Mask2Former panoptic model end to end on the current image."""
        import tempfile

        from napari_segsuite.testing.tiny_models import build_tiny_mask2former

        self._smoke_dir = tempfile.TemporaryDirectory(prefix="segsuite-panoptic-")
        folder = build_tiny_mask2former(Path(self._smoke_dir.name) / "tiny_mask2former_panoptic",
                                        task="panoptic", num_labels=4, seed=2)
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
