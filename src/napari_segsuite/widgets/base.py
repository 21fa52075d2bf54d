"""The scaffolding every segmentation dock widget shares.

Image layer picker, model picker (registry models with their availability, a
local file or folder, a Download button, the cache folder), device picker,
Run and Cancel, and progress. Subclasses add their options and implement
:meth:`SegmentationWidget.make_job` (the compute, run in a worker) and
:meth:`SegmentationWidget.apply_result` (writing layers, on the GUI thread).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton

from napari_segsuite.core.device import DEVICE_CHOICES
from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.progress import Progress
from napari_segsuite.models.registry import REGISTRY, entries_for
from napari_segsuite.models.store import ModelStore
from napari_segsuite.widgets.worker import JobRunner

LOCAL = "__local__"


class ModelPicker(Container):
    """Registry models for some tasks, or a local file/folder; with download and cache folder."""

    def __init__(self, tasks: tuple[str, ...], store: ModelStore, families: tuple[str, ...] | None = None):
        super().__init__(labels=True)
        self.tasks = tasks
        self.families = families
        self.store = store
        self.model = ComboBox(label="Model", choices=self._choices)
        self.local = FileEdit(label="Local file", mode="r", visible=False)
        self.local_dir = PushButton(text="Use a folder instead…", visible=False)
        self.download = PushButton(text="Download", visible=False)
        self.cache = FileEdit(label="Model folder", mode="d", value=str(store.cache_dir))
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.extend([self.model, self.local, self.local_dir, self.download, self.status, self.cache])
        self.model.changed.connect(self._update)
        self.local.changed.connect(self._update)
        self.cache.changed.connect(self._on_cache)
        self.local_dir.changed.connect(self._toggle_folder)
        self._update()

    def _entries(self):
        seen, out = set(), []
        for task in self.tasks:
            for e in entries_for(task):
                if e.name not in seen and (self.families is None or e.family in self.families):
                    seen.add(e.name)
                    out.append(e)
        return out

    def _choices(self, _widget=None):
        items = []
        for e in self._entries():
            mark = "" if self.store.is_available(e) else " (not downloaded)"
            items.append((f"{e.title}{mark}", e.name))
        items.append(("Local file or folder…", LOCAL))
        return items

    def _toggle_folder(self) -> None:
        folder = self.local.mode.value != "d"
        self.local.mode = "d" if folder else "r"
        self.local_dir.text = "Use a file instead…" if folder else "Use a folder instead…"

    def _on_cache(self) -> None:
        self.store.cache_dir = str(self.cache.value) if str(self.cache.value) not in ("", ".") else None
        self.refresh()

    def refresh(self) -> None:
        """Re-read availability from the cache folder."""
        value = self.model.value
        self.model.reset_choices()
        if value in [c[1] for c in self._choices()]:
            self.model.value = value
        self._update()

    @property
    def spec(self) -> str:
        """Registry name, or the local path as a string."""
        if self.model.value == LOCAL:
            path = str(self.local.value)
            if path in ("", "."):
                raise InputError("Choose a local model file or folder, or pick a registry model.")
            return path
        return self.model.value

    def _update(self) -> None:
        is_local = self.model.value == LOCAL
        self.local.visible = is_local
        self.local_dir.visible = is_local
        self.download.visible = False
        if is_local:
            self.status.value = self._local_status()
            return
        entry = REGISTRY[self.model.value]
        if self.store.is_available(entry):
            self.status.value = f"In {self.store.path_for(entry).parent}"
        else:
            self.download.visible = True
            size = f" (~{entry.size_mb:.0f} MB)" if entry.size_mb else ""
            self.status.value = f"Not downloaded{size}. Download it, or copy it to {self.store.path_for(entry)}"

    def _local_status(self) -> str:
        path = Path(str(self.local.value))
        if str(self.local.value) in ("", ".") or not path.exists():
            return "Pick a checkpoint file or a model folder."
        try:
            from napari_segsuite.models.detect import _looks_like_ultralytics

            if path.is_file() and _looks_like_ultralytics(path):
                return (
                    "Ultralytics checkpoint: loading it runs code stored in the file. "
                    "Load only files you trust."
                )
        except OSError:
            pass
        return f"Local: {path.name}"


class SegmentationWidget(Container):
    """Base of the four dock widgets.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 passes it).
    """

    task = ""
    model_tasks: tuple[str, ...] = ()
    model_families: tuple[str, ...] | None = None

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.store = ModelStore()
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.models = ModelPicker(self.model_tasks, self.store, self.model_families)
        self.device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto")
        self.task_options = Container(labels=True)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="Progress", value=0, min=0, max=100)
        self.message = Label(value="")
        self.message.native.setWordWrap(True)
        self.extend([
            self.image, self.models, self.device, self.task_options,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.progress, self.message,
        ])
        self.jobs = JobRunner(on_progress=self._on_progress, on_done=self._on_done)
        self._runner = None
        self._runner_key = None
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.jobs.cancel)
        self.models.download.changed.connect(self.download_model)
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._refresh_layers)
        self._select_active_image()

    # -- layers -----------------------------------------------------------------
    def _image_choices(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        self.reset_choices()
        if self.image.value is None:
            self._select_active_image()

    def _select_active_image(self) -> None:
        from napari.layers import Image

        self.image.reset_choices()
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self.image.value = active

    def selected_image(self):
        """The chosen Image layer (raises a user-facing error when none)."""
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            raise InputError("Open an image and choose it in the Image box first.")
        return layer

    # -- models -------------------------------------------------------------------
    def model_key(self) -> tuple[str, str]:
        """(model spec, device) of the current choice."""
        return self.models.spec, self.device.value

    def load_model_job(self) -> Generator[Progress, None, Any]:
        """Load the chosen model in the worker (cached between runs)."""
        from napari_segsuite.models.base import load_model

        key = self.model_key()
        if self._runner is not None and self._runner_key == key:
            return self._runner
        yield Progress(0, None, f"Loading {Path(key[0]).name}")
        runner = load_model(key[0], key[1], store=self.store)
        for task in self.model_tasks[:1]:
            runner.require(task)
        self._runner, self._runner_key = runner, key
        yield Progress(0, None, f"Loaded {runner.name} on {runner.device}")
        return runner

    def download_model(self) -> None:
        """Download the chosen registry model (a job with progress and Cancel)."""
        name = self.models.model.value
        if name not in REGISTRY:
            return

        def done(path):
            self.message.value = f"Downloaded to {path}"
            self.models.refresh()

        self._start(lambda: self.store.download(name), done, f"Downloading {name}")

    # -- running -------------------------------------------------------------------
    def make_job(self) -> tuple[Any, Any]:
        """Read the inputs (GUI thread) and return ``(job_factory, on_result)``.

        ``job_factory()`` is a generator run in the worker; ``on_result(value)``
        writes layers on the GUI thread. Task widgets override this; the base
        job loads the chosen model and checks that it can do the widget's task.
        """
        self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen

        def on_result(runner) -> None:
            self.message.value = f"{runner.name} ({runner.family}) is loaded on {runner.device}."

        return self.load_model_job, on_result

    def run(self) -> None:
        """Read the inputs, then run the task in a worker."""
        try:
            job_factory, on_result = self.make_job()
        except SegSuiteError as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))
            self.message.value = str(exc)
            return
        self._start(job_factory, on_result, f"{self.task.capitalize()} segmentation")

    def _start(self, job_factory, on_result, description: str) -> None:
        self.run_button.enabled = False
        self.models.download.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.message.value = description + "…"
        self.jobs.start(job_factory, on_result, description)

    def _on_progress(self, item: Progress) -> None:
        if item.message:
            self.message.value = item.message
        self.progress.value = int(100 * item.fraction) if item.fraction is not None else 0

    def _on_done(self, how: str) -> None:
        self.run_button.enabled = True
        self.models.download.enabled = True
        self.cancel_button.enabled = False
        if how == "returned":
            self.progress.value = 100
        elif how == "aborted":
            self.message.value = "Cancelled; nothing was changed."
        elif how == "errored" and self.jobs.last_error is not None:
            self.message.value = str(self.jobs.last_error)

    def smoke(self) -> None:
        """What the headless smoke mode runs in this widget (features extend it)."""
