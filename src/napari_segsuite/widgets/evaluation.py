"""The "Evaluate Segmentation" dock: a prediction Labels layer against a ground truth.

Three modes, picked from the prediction layer's provenance and features (``auto``) or by
hand:

- **semantic**: the layers are class maps (one class label per pixel). Per-class IoU and
  Dice, their means and the pixel accuracy
  (:func:`napari_segsuite.core.metrics.semantic_evaluation`). The background label of
  each layer (not a scored class) defaults to the label whose ``class_name`` says
  background (e.g. label 1 of a semantic or U-Net prediction, whose labels are
  ``class id + 1``), else 0; a ground-truth label can be ignored.
- **instance**: every id is an object. Precision, recall and F1 at IoU 0.5 with the
  matched, spurious and missed objects, and COCO's AP@0.5 and AP@[0.5:0.95]
  (:func:`napari_segsuite.core.metrics.evaluate`).
- **panoptic**: the same matching per class with panoptic quality PQ = SQ x RQ.

Classes of each layer (instance and panoptic) come from its ``class_id`` feature, else from
its label divisor; prediction scores from a ``score`` feature. The false positives and the
misses can be shown as layers; the table exports to CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton, SpinBox, Table

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import LayerTask, Task
from napari_segsuite.layers import aligned_layer_kwargs
from napari_segsuite.widgets.scaffold import Dock, JobPanel, form, row

AUTO, SEMANTIC, INSTANCE, PANOPTIC = "auto", Task.SEMANTIC, Task.INSTANCE, Task.PANOPTIC
MODES = (AUTO, SEMANTIC, INSTANCE, PANOPTIC)
#: Columns shown in the instance/panoptic table (the CSV has them all).
SHOWN_COLUMNS = ("class_name", "n_gt", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1",
                 "ap50", "ap", "pq", "sq", "rq", "iou", "dice")
SEMANTIC_COLUMNS = ("class_name", "gt_label", "pred_label", "iou", "dice", "gt_pixels", "pred_pixels")
NO_LABEL = -1


def _label_column(features) -> str | None:
    for name in ("label", "index"):
        if name in features.columns:
            return name
    return None


def layer_class_names(layer) -> dict[int, str]:
    """``{label: class name}`` from a Labels layer's features (empty when it has none)."""
    feats = getattr(layer, "features", None)
    if feats is None or not len(feats) or "class_name" not in feats.columns:
        return {}
    col = _label_column(feats)
    if col is None:
        return {}
    return {int(i): str(n) for i, n in zip(feats[col], feats["class_name"], strict=True)}


def layer_classes(layer) -> tuple[dict | None, dict | None, dict]:
    """(classes, scores, class names) of a Labels layer, from its features or its label_divisor."""
    feats = getattr(layer, "features", None)
    classes = scores = None
    names: dict[int, str] = {}
    col = _label_column(feats) if feats is not None and len(feats) else None
    if col is not None:
        ids = feats[col].astype(np.int64)
        if "class_id" in feats.columns:
            ok = feats["class_id"].notna()
            classes = dict(zip(ids[ok].tolist(), feats["class_id"][ok].astype(int).tolist(), strict=True))
            if "class_name" in feats.columns:
                names = dict(zip(feats["class_id"][ok].astype(int).tolist(),
                                 feats["class_name"][ok].astype(str).tolist(), strict=True))
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


def guess_mode(layer) -> str:
    """The evaluation a prediction layer calls for, from its provenance and features."""
    if layer is None:
        return INSTANCE
    meta = getattr(layer, "metadata", {}).get("segsuite", {})
    task = str(meta.get("task", ""))
    if task in (LayerTask.SEMANTIC, LayerTask.UNET) or meta.get("label_ids") == "model class id + 1":
        return SEMANTIC
    if task == LayerTask.PANOPTIC:
        return PANOPTIC
    if task in (LayerTask.INSTANCE, LayerTask.PROMPT, LayerTask.SAM_AUTO):
        return INSTANCE
    feats = getattr(layer, "features", None)
    cols = set(feats.columns) if feats is not None else set()
    if "is_thing" in cols:
        return PANOPTIC
    if "score" in cols:
        return INSTANCE
    if "class_name" in cols:
        return SEMANTIC
    return INSTANCE


class EvaluationWidget(Dock):
    """Compare a prediction Labels layer with a ground-truth Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.job_panel = JobPanel(self.viewer, pick_image=False)
        self.jobs = self.job_panel.jobs
        self.message = self.job_panel.message
        self.progress = self.job_panel.progress
        self.pred_layer = ComboBox(label="Prediction", choices=self._labels_choices, nullable=True)
        self.gt_layer = ComboBox(label="Ground truth", choices=self._labels_choices, nullable=True)
        self.mode = ComboBox(label="Mode", choices=list(MODES), value=AUTO,
                             tooltip="auto: from the prediction's provenance and features")
        self.mode_note = Label(value="")
        self.evaluate_button = self.job_panel.add_action("Evaluate")
        self.eval_summary = Label(value="")
        self.eval_summary.native.setWordWrap(True)
        self.eval_table = Table()
        self.eval_table.read_only = True
        self.eval_table.native.setMinimumHeight(160)
        self.pred_background = SpinBox(label="Prediction background", value=0, min=NO_LABEL, max=2**31 - 1,
                                       tooltip="The prediction's background label (-1: none)")
        self.gt_background = SpinBox(label="Truth background", value=0, min=NO_LABEL, max=2**31 - 1,
                                     tooltip="The ground truth's background label (-1: none)")
        self.gt_ignore = SpinBox(label="Truth ignore label", value=NO_LABEL, min=NO_LABEL, max=2**31 - 1,
                                 tooltip="Ground-truth pixels with this label are not scored (-1: none)")
        self.ignore_classes = CheckBox(text="Ignore classes (class-agnostic scores)", value=False)
        self.error_layers = CheckBox(text="Show false positives and misses as layers", value=True)
        self.csv_path = FileEdit(label="CSV file", mode="w", filter="*.csv", value="evaluation.csv")
        self.export_button = PushButton(text="Export CSV", enabled=False)
        self.inputs = form(self.pred_layer, self.gt_layer, self.mode)
        self.results.extend([self.eval_summary, self.eval_table])
        self.body.extend([self.inputs, self.mode_note, self.job_panel.controls, self.results])
        self.semantic_group = self.add_group("Semantic: background and ignore labels", [
            self.pred_background, self.gt_background, self.gt_ignore], collapsed=False)
        self.instance_group = self.add_group("Instance and panoptic", [self.ignore_classes, self.error_layers])
        self.export_group = self.add_group("Export", [self.csv_path, row(self.export_button)])
        self.last_evaluation = None
        self.last_mode: str | None = None
        self.evaluate_button.changed.connect(self.evaluate)
        self.export_button.changed.connect(self.export_csv)
        self.pred_layer.changed.connect(self._on_layers_picked)
        self.gt_layer.changed.connect(self._on_layers_picked)
        self.mode.changed.connect(self._update_mode_note)
        self._pick_defaults()
        self.finish_layout()

    # -- layers ----------------------------------------------------------------------------
    def _labels_choices(self, _widget=None):
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)
                and layer.metadata.get("segsuite", {}).get("role") != "prompt"]  # not the SAM dock's preview

    def _on_layer_list(self, event=None) -> None:
        super()._on_layer_list(event)
        self._pick_defaults()

    def _pick_defaults(self) -> None:
        """A prediction (a layer with provenance) and a ground truth (one without) when none is chosen."""
        layers = [c for c in self.pred_layer.choices if c is not None]
        made = [layer for layer in layers if "segsuite" in layer.metadata]
        if self.pred_layer.value is None and made:
            self.pred_layer.value = made[-1]
        if self.gt_layer.value is None:
            others = [layer for layer in layers if layer is not self.pred_layer.value and layer not in made]
            if others:
                self.gt_layer.value = others[0]
        self._update_mode_note()

    def _on_layers_picked(self, _value=None) -> None:
        from napari_segsuite.core.metrics import background_label

        pred, gt = self.pred_layer.value, self.gt_layer.value
        if pred is not None:
            self.pred_background.value = background_label(layer_class_names(pred), 0)
        if gt is not None:
            self.gt_background.value = background_label(layer_class_names(gt), 0)
        self._update_mode_note()

    def resolved_mode(self) -> str:
        """The mode the next evaluation uses (``auto`` resolved from the prediction layer)."""
        return guess_mode(self.pred_layer.value) if self.mode.value == AUTO else self.mode.value

    def _update_mode_note(self, _value=None) -> None:
        mode = self.resolved_mode()
        if self.mode.value == AUTO and self.pred_layer.value is None:
            self.mode_note.value = "Mode: picked from the prediction's provenance and features"
            return
        how = "from the prediction's provenance and features" if self.mode.value == AUTO else "chosen"
        self.mode_note.value = f"Mode: {mode} ({how})"
        if mode == SEMANTIC:
            self.semantic_group.expand()
        else:
            self.semantic_group.collapse()

    def show_prediction(self, layer) -> None:
        """Make ``layer`` the prediction (and update the defaults)."""
        self.pred_layer.reset_choices()
        self.pred_layer.value = layer

    # -- evaluating -------------------------------------------------------------------------
    def _read(self):
        from napari_segsuite.core.metrics import check_label_image, check_same_shape

        pred_layer, gt_layer = self.pred_layer.value, self.gt_layer.value
        if pred_layer is None or gt_layer is None:
            raise InputError("Choose a prediction and a ground-truth Labels layer to evaluate.")
        pred = check_label_image(np.asarray(pred_layer.data), f"labels of '{pred_layer.name}'")
        gt = check_label_image(np.asarray(gt_layer.data), f"labels of '{gt_layer.name}'")
        try:
            check_same_shape(pred, gt)
        except InputError as exc:
            raise InputError(f"'{pred_layer.name}' and '{gt_layer.name}': {exc}") from None
        return pred_layer, gt_layer, pred, gt

    def make_evaluation_job(self):
        """Read both layers (GUI thread); return the job and the result handler."""
        from napari_segsuite.core.metrics import evaluate, semantic_evaluation

        pred_layer, gt_layer, pred, gt = self._read()
        mode = self.resolved_mode()
        if mode == SEMANTIC:
            def optional(v):
                return None if int(v) == NO_LABEL else int(v)

            kwargs = {"pred_background": int(self.pred_background.value),
                      "gt_background": int(self.gt_background.value), "gt_ignore": optional(self.gt_ignore.value),
                      "pred_names": layer_class_names(pred_layer), "gt_names": layer_class_names(gt_layer)}

            def job():
                yield Progress(0, 1, "Evaluating (semantic)")
                return semantic_evaluation(pred, gt, **kwargs)

            return job, lambda report: self.show_semantic_result(report, pred_layer, gt_layer)

        pred_classes, pred_scores, names = layer_classes(pred_layer)
        gt_classes, _, gt_names = layer_classes(gt_layer)
        names = {**gt_names, **names}
        if self.ignore_classes.value or (pred_classes is None) != (gt_classes is None):
            # asked for, or one side has classes and the other not: compare class-agnostically
            pred_classes = gt_classes = None
            names = {}
        show_errors = bool(self.error_layers.value)

        def job():
            yield Progress(0, 1, f"Evaluating ({mode})")
            return evaluate(pred, gt, pred_classes=pred_classes, gt_classes=gt_classes,
                            pred_scores=pred_scores, class_names=names)

        def on_result(result) -> None:
            self.show_evaluation_result(result, mode, pred_layer, gt_layer, pred, gt, show_errors)

        return job, on_result

    def evaluate(self) -> None:
        """Compare the chosen prediction and ground-truth layers (in a worker)."""
        try:
            job, on_result = self.make_evaluation_job()
        except SegSuiteError as exc:
            self.job_panel.report(exc)
            self.eval_summary.value = str(exc)
            return
        self.job_panel.start(job, on_result, "Evaluation")

    def _show_table(self, table, columns) -> None:
        shown = table[[c for c in columns if c in table.columns]].copy()
        for col in shown.columns:
            if shown[col].dtype.kind == "f":
                shown[col] = shown[col].round(4)
        self.eval_table.value = shown

    def show_semantic_result(self, report, pred_layer, gt_layer) -> None:
        """Per-class IoU/Dice table and summary (GUI thread)."""
        self.last_evaluation, self.last_mode = report, SEMANTIC
        self._show_table(report.table(), SEMANTIC_COLUMNS)
        s = report.summary
        per_class = "; ".join(f"{r['class_name']} IoU {r['iou']:.3f}" for r in report.rows)
        self.eval_summary.value = (
            f"Semantic: mIoU {s['miou']:.3f}, mDice {s['mdice']:.3f}, pixel accuracy {s['accuracy']:.3f}. "
            f"{per_class}."
        )
        self.message.value = f"Evaluated '{pred_layer.name}' against '{gt_layer.name}' (semantic)."
        self.export_button.enabled = True

    def show_evaluation_result(self, result, mode, pred_layer, gt_layer, pred, gt, show_errors: bool) -> None:
        """Fill the table and the summary; add the error layers (GUI thread)."""
        self.last_evaluation, self.last_mode = result, mode
        self._show_table(result.table(), SHOWN_COLUMNS)
        s = result.summary
        counts = f"{s['tp']} matched, {s['fp']} spurious, {s['fn']} missed."
        if mode == PANOPTIC:
            self.eval_summary.value = (
                f"Panoptic: PQ {s['pq']:.3f} (SQ {s['sq']:.3f} x RQ {s['rq']:.3f}); AP50 {s['ap50']:.3f}; "
                f"F1@0.5 {s['f1']:.3f}; mIoU {s['iou']:.3f}. {counts}"
            )
        else:
            self.eval_summary.value = (
                f"Instance: F1@0.5 {s['f1']:.3f} (P {s['precision']:.3f}, R {s['recall']:.3f}); AP50 {s['ap50']:.3f}, "
                f"AP {s['ap']:.3f}; PQ {s['pq']:.3f}. {counts}"
            )
        self.message.value = f"Evaluated '{pred_layer.name}' against '{gt_layer.name}' ({mode})."
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
        layer.metadata = {**layer.metadata, "segsuite": {"task": LayerTask.EVALUATION, "shows": what, "ids": list(ids)}}
        return layer

    def export_csv(self) -> Path | None:
        """Write the last evaluation's table (and, for objects, ``<name>_objects.csv``) to the chosen file."""
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
            if hasattr(self.last_evaluation, "objects_table"):
                self.last_evaluation.objects_table().to_csv(path.with_name(path.stem + "_objects.csv"), index=False)
        except OSError as exc:
            show_error(f"Could not write {path}: {exc}")
            return None
        show_info(f"Saved the evaluation to {path}")
        self.message.value = f"Saved {path.name} in {path.parent}."
        return path
