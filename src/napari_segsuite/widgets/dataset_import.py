"""The "Import dataset" dock: a COCO or YOLO dataset read in a worker into Image + Labels layers.

Opened from the Instance dock's *Import dataset…* button. The dataset (a COCO JSON, a YOLO
``data.yaml`` or a dataset folder) is read by :func:`napari_segsuite.datasets.io.import_job`
in a worker, with a progress bar per image and Cancel; the layers are the napari reader's
(:func:`napari_segsuite.datasets.reader.imported_layers`: images of one size stacked, class
names in the Labels layer's ``features``) and are added on the GUI thread once everything is
read, so a cancelled or failed import adds nothing.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FileEdit, PushButton

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.vocabulary import Outcome
from napari_segsuite.widgets.scaffold import JobPanel, add_panel_button, form, show_or_dock

DOCK_NAME = "Import dataset"


class DatasetImportWidget(Container):
    """Read a COCO or YOLO segmentation dataset into layers, in a worker with progress and Cancel."""

    def __init__(self, napari_viewer):
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.path = FileEdit(label="Dataset", mode="r", filter="*.json *.yaml *.yml")
        self.path.tooltip = "A COCO annotations JSON, a YOLO data.yaml, or a dataset folder (type its path)"
        self.panel = JobPanel(napari_viewer, pick_image=False, on_done=self._on_done)
        self.import_button = self.panel.add_action("Import")
        self.cancel_button = self.panel.cancel_button
        self.progress = self.panel.progress
        self.message = self.panel.message
        self.jobs = self.panel.jobs
        self.jobs.napari_progress = False
        self.jobs.abort_message = "Cancelled; no layer was added."
        self.extend([form(self.path), self.panel.controls])
        self.last_result = None
        self.added: list = []
        self.import_button.changed.connect(self.start_import)

    def dataset_path(self) -> Path:
        """The chosen path (a user-facing error when none or missing)."""
        text = str(self.path.line_edit.value).strip()
        if text in ("", "."):  # FileEdit shows an unset path as "."
            raise InputError("Choose the dataset: a COCO JSON, a data.yaml or a dataset folder.")
        path = Path(text).expanduser()
        if not path.exists():
            raise InputError(f"{path}: no such file or folder.")
        return path

    def start_import(self) -> None:
        """Read the dataset in a worker; add its layers when it is read."""
        from napari_segsuite.datasets.io import import_job

        try:
            path = self.dataset_path()
        except SegSuiteError as exc:
            self.panel.report(exc)
            return

        def job():
            return (yield from import_job(path))

        self.panel.start(job, self._add_layers, f"Reading {path.name}")

    def _add_layers(self, dataset) -> None:
        from napari.layers import Layer

        from napari_segsuite.datasets.reader import imported_layers

        self.last_result = dataset
        try:
            tuples = imported_layers(dataset)
        except SegSuiteError as exc:
            self.panel.report(exc)
            return
        self.added = [self.viewer.add_layer(Layer.create(data, meta, kind)) for data, meta, kind in tuples]
        n_obj = len(dataset.table) if dataset.table is not None else 0
        self.message.value = (
            f"{dataset.provenance['format'].upper()}: {len(dataset.images)} image(s), {n_obj} objects, "
            f"{len(dataset.class_names)} class(es) ({', '.join(dataset.class_names.values())}) "
            f"in {len(tuples) // 2} Labels layer(s)."
        )

    def _on_done(self, how: Outcome) -> None:
        if how == Outcome.ABORTED:
            self.message.value = "Cancelled; no layer was added."

    def wait(self, timeout: float = 600.0) -> None:
        """Process Qt events until the running import ends."""
        self.jobs.wait(timeout, "Dataset import")


def open_import_dock(viewer, panel: DatasetImportWidget | None = None) -> DatasetImportWidget:
    """Show ``panel``'s dock when it is still docked, else dock a new import panel."""
    return show_or_dock(viewer, DOCK_NAME, panel, DatasetImportWidget)


def add_import_button(dock) -> PushButton:
    """Append an *Import dataset…* button to a dock (a magicgui Container with ``viewer``);
    the panel it opens is ``dock.import_panel``."""
    return add_panel_button(dock, "Import dataset…",
                            "Read a COCO or YOLO segmentation dataset into Image and Labels layers",
                            "import_panel", open_import_dock)
