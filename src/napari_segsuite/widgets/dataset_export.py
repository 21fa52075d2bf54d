"""The "Export dataset" dock: Labels layers with their images as a COCO or YOLO dataset.

Opened from the Instance dock's *Export dataset…* button. It exports one Labels layer (every
plane of a stack) or every Labels layer, each with its image: the Image layer whose name
starts the Labels layer's name (``coins`` for ``coins [instance]``), else the only Image layer
of the same shape. Classes come from each Labels layer's ``features`` (``label`` or napari's
``index`` column with ``class_id`` and/or ``class_name``); without them every object has the
class named in *Class name*. The export runs in a worker with progress and Cancel; a
cancelled or failed export leaves no folder behind.
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
    ProgressBar,
    PushButton,
)

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Outcome
from napari_segsuite.widgets.scaffold import add_panel_button, show_or_dock
from napari_segsuite.widgets.worker import JobRunner

THIS_LAYER, ALL_LAYERS = "this Labels layer (all planes)", "all Labels layers"
DOCK_NAME = "Export dataset"


def classes_from_features(features) -> tuple[dict[int, int] | None, dict[int, str] | None]:
    """``(label -> class id, class id -> name)`` from a Labels layer's features (or Nones)."""
    if features is None or not len(features):
        return None, None
    key = "label" if "label" in features.columns else "index" if "index" in features.columns else None
    if key is None:
        return None, None
    table = features.dropna(subset=[key])
    if "class_id" in table.columns:
        table = table.dropna(subset=["class_id"])
        classes = dict(zip(table[key].astype(int), table["class_id"].astype(int), strict=True))
        names = None
        if "class_name" in table.columns:
            names = {int(c): str(n) for c, n in zip(table["class_id"], table["class_name"], strict=True)
                     if n is not None and str(n) != "nan"}
        return classes, names or None
    if "class_name" in table.columns:
        table = table.dropna(subset=["class_name"])
        ordered = sorted({str(n) for n in table["class_name"]})
        ids = {n: k for k, n in enumerate(ordered)}
        return ({int(i): ids[str(n)] for i, n in zip(table[key], table["class_name"], strict=True)},
                dict(enumerate(ordered)))
    return None, None


def merge_classes(per_layer: list[tuple[dict | None, dict | None]]):
    """One class numbering for several layers: their ids when no id has two names, else
    ids given by name in order of appearance. Returns (label_classes per layer, names)."""
    named = [names for _, names in per_layer if names]
    if not named:
        return [lc for lc, _ in per_layer], None
    union: dict[int, str] = {}
    clash = False
    for names in named:
        for cid, name in names.items():
            clash |= union.setdefault(cid, name) != name
    if not clash:
        return [lc for lc, _ in per_layer], dict(sorted(union.items()))
    by_name: dict[str, int] = {}
    out = []
    for lc, names in per_layer:
        if lc is None:
            out.append(None)
            continue
        names = names or {c: f"class_{c}" for c in set(lc.values())}
        remap = {cid: by_name.setdefault(name, len(by_name)) for cid, name in sorted(names.items())}
        out.append({label: remap[c] for label, c in lc.items()})
    return out, {v: k for k, v in by_name.items()}


def _data(layer):
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _spatial_shape(image) -> tuple[int, ...]:
    shape = tuple(_data(image).shape)
    return shape[:-1] if getattr(image, "rgb", False) else shape


def image_for(viewer, labels) -> object:
    """The Image layer a Labels layer annotates (name prefix, else the only one of its shape)."""
    from napari.layers import Image

    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    shape = tuple(_data(labels).shape)
    base = labels.name.split(" [", 1)[0]
    for image in images:
        if image.name == base and _spatial_shape(image) == shape:
            return image
    same = [image for image in images if _spatial_shape(image) == shape]
    if len(same) == 1:
        return same[0]
    if not same:
        raise InputError(f"No Image layer has the shape {shape} of Labels layer '{labels.name}'.")
    raise InputError(
        f"Several Image layers have the shape of '{labels.name}' ({', '.join(i.name for i in same)}); "
        "choose its image."
    )


class DatasetExportWidget(Container):
    """Export Labels layers with their images as a COCO or YOLO training dataset."""

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.labels_layer = ComboBox(label="Labels", choices=self._labels_choices, nullable=True)
        self.image_layer = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.image_layer.tooltip = "The image of the chosen Labels layer (empty: found by name or shape)"
        self.scope = ComboBox(label="Export", choices=[THIS_LAYER, ALL_LAYERS], value=THIS_LAYER)
        self.format = ComboBox(label="Format", choices=["coco", "yolo"], value="coco")
        self.format.tooltip = "coco: RLE masks + JSON; yolo: ultralytics polygons + data.yaml"
        self.out = FileEdit(label="Folder", mode="d")
        self.val_fraction = FloatSpinBox(label="Validation", value=0.2, min=0.0, max=0.9, step=0.05)
        self.val_fraction.tooltip = "Share of images in the validation split (same split every time)"
        self.class_name = LineEdit(label="Class name", value="object")
        self.class_name.tooltip = "The class of every object when the Labels layer has no class table"
        self.overwrite = CheckBox(text="Replace a dataset already in the folder", value=False)
        self.export_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.message = Label(value="")
        self.message.native.setWordWrap(True)
        self.extend([
            self.labels_layer, self.image_layer, self.scope, self.format, self.out, self.val_fraction,
            self.class_name, self.overwrite,
            Container(widgets=[self.export_button, self.cancel_button], layout="horizontal", labels=False),
            self.progress, self.message,
        ])
        self.jobs = JobRunner(on_progress=self._on_progress, on_done=self._on_done)
        self.jobs.napari_progress = False
        self.jobs.stop_with(self.native)  # closing the dock cancels the export
        self.last_result = None
        self.export_button.changed.connect(self.export)
        self.cancel_button.changed.connect(self.jobs.cancel)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._refresh)
        self.labels_layer.changed.connect(self._guess_image)
        self._select_active()

    # -- layers -------------------------------------------------------------------------
    def _labels_choices(self, _widget=None):
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _image_choices(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh(self, _event=None) -> None:
        self.reset_choices()
        if self.labels_layer.value is None:
            self._select_active()

    def _select_active(self) -> None:
        from napari.layers import Labels

        active = self.viewer.layers.selection.active
        if isinstance(active, Labels):
            self.labels_layer.value = active
        elif self.labels_layer.choices:
            self.labels_layer.value = self.labels_layer.choices[-1]
        self._guess_image()

    def _guess_image(self, _value=None) -> None:
        labels = self.labels_layer.value
        if labels is None:
            return
        try:
            self.image_layer.value = image_for(self.viewer, labels)
        except InputError:
            self.image_layer.value = None

    def pairs(self) -> list[tuple[object, object]]:
        """(Labels layer, Image layer) pairs to export, read on the GUI thread."""
        if self.scope.value == ALL_LAYERS:
            layers = [layer for _, layer in self._labels_choices()]
            if not layers:
                raise InputError("There is no Labels layer to export.")
            return [(layer, image_for(self.viewer, layer)) for layer in layers]
        labels = self.labels_layer.value
        if labels is None:
            raise InputError("Choose the Labels layer to export.")
        image = self.image_layer.value or image_for(self.viewer, labels)
        if _spatial_shape(image) != tuple(_data(labels).shape):
            raise InputError(
                f"Image '{image.name}' (shape {_spatial_shape(image)}) does not match Labels '{labels.name}' "
                f"(shape {tuple(_data(labels).shape)})."
            )
        return [(labels, image)]

    # -- running ------------------------------------------------------------------------
    def make_job(self):
        """Read layers and options on the GUI thread; return the job factory and result handler."""
        from napari_segsuite.datasets.io import export_job

        text = str(self.out.line_edit.value).strip()
        if text in ("", "."):  # FileEdit shows an unset path as "."
            raise InputError("Choose the dataset folder.")
        out = str(Path(text).expanduser())
        pairs = self.pairs()
        labels = [np.array(_data(lab)) for lab, _ in pairs]  # a copy: painting goes on meanwhile
        images = [_data(image) for _, image in pairs]
        names = [image.name if len(pairs) == 1 else lab.name.split(" [", 1)[0] for lab, image in pairs]
        per_layer = [classes_from_features(lab.features) for lab, _ in pairs]
        label_classes, class_names = merge_classes(per_layer)
        if all(lc is None for lc in label_classes):
            label_classes = None
            class_names = [str(self.class_name.value).strip() or "object"]
        options = {"format": self.format.value, "val_fraction": float(self.val_fraction.value),
                   "overwrite": bool(self.overwrite.value), "names": names}

        def job():
            maps = label_classes
            if maps is not None:  # rows of painted-over labels stay in features: drop them
                maps = []
                for lc, lab in zip(label_classes, labels, strict=True):
                    present = set(np.unique(lab).tolist()) if lc else set()
                    maps.append({k: v for k, v in lc.items() if k in present} if lc else None)
            return (yield from export_job(images, labels, out, class_names=class_names,
                                          label_classes=maps, **options))

        def on_result(result) -> None:
            self.last_result = result
            prov = result.provenance
            self.message.value = (
                f"{result.format.upper()}: {result.n_images} images ({prov['n_train']} train, "
                f"{prov['n_val']} val), {result.n_objects} objects, {len(result.class_names)} classes "
                f"in {result.path}"
            )

        return job, on_result

    def export(self) -> None:
        """Start the export in a worker (errors in the form are shown, nothing starts)."""
        try:
            job, on_result = self.make_job()
        except SegSuiteError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))
            self.message.value = str(exc)
            return
        self.export_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.message.value = "Exporting…"
        self.jobs.start(job, on_result, "Exporting dataset")

    def _on_progress(self, item: Progress) -> None:
        if item.message:
            self.message.value = item.message
        self.progress.value = int(100 * item.fraction) if item.fraction is not None else 0

    def _on_done(self, how: Outcome) -> None:
        self.cancel_button.enabled = False
        if how == Outcome.ABORTED:
            # The job runs on the runner's job thread and stops at its next yield, where
            # closing it removes the unfinished folder; the panel waits for that (job_ended).
            self.message.value = "Cancelling…"
            self._after_cancel()
            return
        self.export_button.enabled = True
        if how == Outcome.RETURNED:
            self.progress.value = 100
        elif how == Outcome.ERRORED and self.jobs.last_error is not None:
            self.message.value = str(self.jobs.last_error)

    def _after_cancel(self) -> None:
        from qtpy.QtCore import QTimer

        if not self.jobs.job_ended.is_set():
            QTimer.singleShot(50, self._after_cancel)
            return
        self.export_button.enabled = True
        self.message.value = "Cancelled; no dataset was written."


def open_export_dock(viewer, panel: DatasetExportWidget | None = None) -> DatasetExportWidget:
    """Show ``panel``'s dock when it is still docked, else dock a new export panel."""
    return show_or_dock(viewer, DOCK_NAME, panel, DatasetExportWidget)


def add_export_button(dock) -> PushButton:
    """Append an *Export dataset…* button to a dock (a magicgui Container with ``viewer``);
    the panel it opens is ``dock.export_panel``."""
    return add_panel_button(dock, "Export dataset…",
                            "Write Labels layers with their images as a COCO or YOLO training dataset",
                            "export_panel", open_export_dock)
