"""The scaffolding every segmentation dock widget shares.

Image layer picker, model picker (registry models with their availability, a
local file or folder, a Download button, the cache folder), device picker,
Run and Cancel, and progress. Subclasses add their options and implement
:meth:`SegmentationWidget.make_job` (the compute, run in a worker) and
:meth:`SegmentationWidget.apply_result` (writing layers, on the GUI thread).

The "Run on" choice (:attr:`SegmentationWidget.scope`): *current plane* runs the
widget's own job; *all planes* (of the chosen image) and *all open images* (every
Image layer) run the widget's registered batch task (:attr:`~SegmentationWidget.batch_task`)
through :func:`napari_segsuite.batch.engine.array_job`, plane by plane, in the same
worker with progress and Cancel. The results are written on the GUI thread when every
image is done: one Labels layer ``"<image> [<task>]"`` per image, aligned with it and of
its spatial shape (an nD layer for a stack; the planes are the last two spatial axes),
one row per label in ``features`` and the model, parameters and planes in
``metadata["segsuite"]``. A cancelled run changes no layer.

The "Region" choice (:attr:`SegmentationWidget.region`) and large images: a field of view,
a drawn rectangle (``"<image> [region]"``), or the whole plane of an image whose labels live
on disk (zarr, dask or multiscale data, or planes above *Labels on disk above*) run through
:meth:`SegmentationWidget.make_region_job`: the region of the current plane (or of every plane)
goes through the batch task in chunks (:mod:`napari_segsuite.batch.regions`), read lazily, and
is written into an on-disk Labels pyramid chunk by chunk (:func:`napari_segsuite.layers.ondisk_labels_layer`)
or, for in-memory layers, into the region of the Labels layer at the end. A Cancel keeps the
chunks already on disk (the message says so).
"""

from __future__ import annotations

import weakref
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from napari_segsuite.core.device import DEVICE_CHOICES
from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.labels import LABEL_DTYPE
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import RUN_SCOPES, Outcome, Region, Scope, Task
from napari_segsuite.layers import full_resolution
from napari_segsuite.models.registry import REGISTRY, entries_for
from napari_segsuite.models.store import ModelStore
from napari_segsuite.widgets.edit_question import EditQuestion
from napari_segsuite.widgets.scaffold import Dock, JobPanel

LOCAL = "__local__"
TRAINED_PREFIX = "trained/"
_PICKERS: weakref.WeakSet = weakref.WeakSet()


def refresh_model_pickers() -> None:
    """Re-read every open model picker's choices (after a model was trained into a model folder)."""
    for picker in list(_PICKERS):
        try:
            picker.refresh()
        except RuntimeError:  # its Qt widget is gone
            _PICKERS.discard(picker)


CURRENT_PLANE, ALL_PLANES, ALL_IMAGES = Scope.CURRENT_PLANE, Scope.ALL_PLANES, Scope.ALL_IMAGES
SCOPES = tuple(s.value for s in RUN_SCOPES)
#: The "Region" choices: the whole plane, what the canvas shows, the last drawn rectangle.
WHOLE_PLANE, FIELD_OF_VIEW, RECTANGLE = Region.WHOLE_PLANE, Region.FIELD_OF_VIEW, Region.RECTANGLE
REGIONS = Region.values()


class ModelPicker(Container):
    """Registry models for some tasks, or a local file/folder; with download and cache folder."""

    def __init__(self, tasks: tuple[str, ...], store: ModelStore, families: tuple[str, ...] | None = None):
        from napari_segsuite.widgets.scaffold import form, wrapping

        super().__init__(labels=False)
        self.tasks = tasks
        self.families = families
        self.store = store
        self.model = ComboBox(label="Model", choices=self._choices)
        self.local = FileEdit(label="Local file", mode="r", visible=False)
        self.local_dir = PushButton(text="Use a folder instead…", visible=False)
        self.download = PushButton(text="Download", visible=False)
        self.cache = FileEdit(label="Model folder", mode="d", value=str(store.cache_dir))
        self.status = wrapping(Label(value=""))
        # Model and Local file in the labelled column; the status line and the buttons span the width.
        self.fields = form(self.model, self.local)
        self.cache_fields = form(self.cache)
        self.extend([self.fields, self.local_dir, self.status, self.download, self.cache_fields])
        self.model.changed.connect(self._update)
        self.local.changed.connect(self._update)
        self.cache.changed.connect(self._on_cache)
        self.local_dir.changed.connect(self._toggle_folder)
        self._update()
        _PICKERS.add(self)

    def detach_cache(self):
        """Take the *Model folder* field out of the picker (a dock shows it elsewhere); returns it."""
        self.remove(self.cache_fields)
        self.cache_fields.remove(self.cache)
        return self.cache

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
        for card in self._trained():
            names = ", ".join(card.class_names.values())
            items.append((f"{card.name} (trained{': ' + names if names else ''})", TRAINED_PREFIX + card.name))
        items.append(("Local file or folder…", LOCAL))
        return items

    def _trained(self):
        """Models trained into this model folder that do one of the picker's tasks."""
        seen, out = set(), []
        for task in self.tasks:
            for card in self.store.trained_models(task):
                if card.name not in seen and (self.families is None or card.family in self.families):
                    seen.add(card.name)
                    out.append(card)
        return out

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
        if str(self.model.value).startswith(TRAINED_PREFIX):
            self.status.value = f"Trained here; in {self.store.cache_dir / self.model.value}"
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


class SegmentationWidget(Dock):
    """Base of the segmentation docks.

    Top-down: the Image, the Model, the primary action (Run) with Cancel, progress and
    status at full width, :attr:`results` (legends, tables), then option groups: "Options"
    (:attr:`task_options`, open) and "Model folder and device" (collapsed). Subclasses add
    fields to :attr:`task_options`, results to :attr:`results`, and further groups with
    :meth:`~napari_segsuite.widgets.scaffold.Dock.add_group`; they end their ``__init__``
    with :meth:`~napari_segsuite.widgets.scaffold.Dock.finish_layout`.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (npe2 passes it).
    """

    task = ""
    model_tasks: tuple[str, ...] = ()
    model_families: tuple[str, ...] | None = None
    #: The batch task (:mod:`napari_segsuite.batch.tasks`) behind "all planes / all open images".
    batch_task: str | None = None

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.store = ModelStore()
        self.job_panel = JobPanel(self.viewer, on_done=self._after_job)
        self.image = self.job_panel.image
        self.models = ModelPicker(self.model_tasks, self.store, self.model_families)
        self.models.margins = (0, 0, 0, 0)
        self.device = ComboBox(label="Device", choices=list(DEVICE_CHOICES), value="auto")
        self.task_options = Container(labels=True)
        self.task_options.margins = (0, 0, 0, 0)
        self.scope = ComboBox(
            label="Run on", choices=list(SCOPES), value=CURRENT_PLANE,
            tooltip="The plane the viewer shows, every plane of the chosen image, or every open image "
                    "(one output layer per image)",
        )
        self.run_button = self.job_panel.add_action("Run")
        self.cancel_button = self.job_panel.cancel_button
        self.progress = self.job_panel.progress
        self.message = self.job_panel.message
        self.jobs = self.job_panel.jobs
        self.jobs.stop_with(self.native)
        #: asked when a result would replace hand edits (see :meth:`_guarded`)
        self.edit_question = EditQuestion()
        self.region = ComboBox(
            label="Region", choices=list(REGIONS), value=WHOLE_PLANE,
            tooltip="Segment the whole plane (large planes in chunks, objects merged across chunks), "
                    "what the canvas shows at full resolution, or the last rectangle drawn in "
                    "'<image> [region]'",
        )
        self.on_disk_mpx = SpinBox(
            label="Labels on disk above (Mpx)", value=64, min=0, max=1_000_000, step=16,
            tooltip="Images with planes larger than this (and every zarr, dask or multiscale image) get "
                    "their labels in a zarr store on disk, written chunk by chunk (0: always)",
        )
        self.inputs = Container(labels=True, widgets=[self.image, self.region])
        self.inputs.margins = (0, 0, 0, 0)
        cache = self.models.detach_cache()
        self.body.extend([self.inputs, self.models, self.job_panel.controls, self.edit_question, self.results])
        self.options_group = self.add_group("Options", [self.task_options], collapsed=False, labels=False)
        self.model_group = self.add_group("Model folder and device", [cache, self.device, self.on_disk_mpx])
        self.region.changed.connect(self._on_region_choice)
        self._region_run = None
        self._runner = None
        self._runner_key = None
        self.run_button.changed.connect(self.run)
        self.models.download.changed.connect(self.download_model)
        self.finish_layout()

    # -- library defaults ---------------------------------------------------------
    def show_library_defaults(self, fields: dict) -> None:
        """Show a picked registry model's own defaults (its library's) in ``fields``.

        ``fields`` maps a keyword of the family's task method (``conf``, ``threshold`` ...)
        to the form field that sets it; the fields are updated now and whenever a registry
        model is picked (a local file's family is known only once it is loaded).
        """
        self._library_default_fields = dict(fields)
        self.models.model.changed.connect(self._show_library_defaults)
        self._show_library_defaults()

    def _show_library_defaults(self, _value=None) -> None:
        from napari_segsuite.models.base import library_defaults
        from napari_segsuite.models.registry import REGISTRY

        entry = REGISTRY.get(self.models.model.value)
        if entry is None:
            return
        defaults = library_defaults(entry.family, self.task)
        for key, field in self._library_default_fields.items():
            if key in defaults:
                field.value = defaults[key]

    # -- layers -----------------------------------------------------------------
    def _image_choices(self, _widget=None):
        return self.job_panel._image_choices()

    def _refresh_layers(self, event=None) -> None:
        self.reset_choices()
        self.job_panel._on_layers_changed()

    def _select_active_image(self) -> None:
        self.job_panel.follow_active_layer()

    def selected_image(self):
        """The chosen Image layer (raises a user-facing error when none)."""
        return self.job_panel.selected_image()

    # -- models -------------------------------------------------------------------
    def model_key(self) -> tuple[str, str]:
        """(model spec, device) of the current choice."""
        return self.models.spec, self.device.value

    def job_model_key(self) -> tuple[str, str]:
        """(model spec, device) for the running job: the choice at Run (read on the GUI thread),
        so a model picked while the job runs is used by the next run, not this one."""
        key = getattr(self, "_run_model_key", None)
        return key if key is not None else self.model_key()

    def load_model_job(self) -> Generator[Progress, None, Any]:
        """Load the chosen model in the worker (cached between runs)."""
        from napari_segsuite.models.base import load_model

        key = self.job_model_key()
        if self._runner is not None and self._runner_key == key:
            return self._runner
        from napari_segsuite.core.threads import call_in_background

        yield Progress(0, None, f"Loading {Path(key[0]).name}")
        store = self.store
        runner = yield from call_in_background(lambda: load_model(key[0], key[1], store=store),
                                               f"Loading {Path(key[0]).name}")
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
        if self.jobs.busy:
            self.message.value = "Busy; wait for the running job or cancel it."
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

    # -- all planes / all open images (the batch engine) ---------------------------------
    def uses_batch(self) -> bool:
        """Whether Run goes through :meth:`make_batch_job` (the scope and the options allow it)."""
        return self.batch_task is not None and self.scope.value != CURRENT_PLANE

    def batch_params(self) -> dict:
        """The batch task's parameters from the form (GUI thread). Subclasses override."""
        return {}

    def resolve_batch_params(self, runner, params: dict) -> dict:
        """Parameters that need the loaded model (class names ...), in the worker."""
        return params

    def batch_images(self) -> list:
        """The Image layers the scope names (GUI thread)."""
        from napari.layers import Image

        if self.scope.value == ALL_IMAGES:
            layers = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
            if not layers:
                raise InputError("Open an image first: there is no Image layer.")
            return layers
        return [self.selected_image()]

    def make_batch_job(self) -> tuple[Any, Any]:
        """Read the images and options (GUI thread); the job runs the batch task on every plane.

        Returns
        -------
        (job_factory, on_result)
            ``job_factory()`` loads the model and drains one
            :func:`~napari_segsuite.batch.engine.array_job` per image (one progress range over
            all planes); ``on_result`` writes one Labels layer per image.
        """
        from napari_segsuite.batch.engine import array_job

        images = self.batch_images()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        params = self.batch_params()
        unique_ids = self.batch_unique_ids(params)
        inputs = []
        for layer in images:
            data = full_resolution(layer)
            rgb = bool(getattr(layer, "rgb", False))
            spatial = tuple(data.shape[:-1]) if rgb else tuple(data.shape)
            if len(spatial) < 2 or min(spatial[-2:]) < 1:
                raise InputError(f"Image '{layer.name}' has no 2D planes (shape {tuple(data.shape)}).")
            inputs.append((layer, data, rgb, int(np.prod(spatial[:-2], dtype=np.int64))))
        total = sum(n for *_, n in inputs)
        scope = self.scope.value
        from napari_segsuite.core.regions import check_fits_memory

        pixels = sum(n * int(np.prod(d.shape[-3:-1] if rgb else d.shape[-2:], dtype=np.int64))
                     for _, d, rgb, n in inputs)
        check_fits_memory(pixels, 8, f"The labels of {len(inputs)} image{'s' if len(inputs) != 1 else ''} "
                                     f"({scope}, kept in memory)")

        def job():
            runner = yield from self.load_model_job()
            resolved = self.resolve_batch_params(runner, dict(params))
            results, done = [], 0
            for layer, data, rgb, n in inputs:
                yield Progress(done, total, f"{layer.name}: segmenting {n} plane{'s' if n != 1 else ''}")
                labels, table = yield from array_job(
                    self.batch_task, runner, data, params=resolved, channels_last=rgb,
                    unique_ids=unique_ids, progress_offset=done, progress_total=total,
                )
                results.append((layer, labels, table))
                done += n
            return runner, resolved, results

        def on_result(value) -> None:
            from napari_segsuite.layers import guard_edited, output_layer_name

            runner, resolved, results = value
            guard_edited(self.viewer, [output_layer_name(layer, self.task) for layer, _, _ in results])
            written = [self.write_batch_result(layer, labels, table, runner, resolved, scope)
                       for layer, labels, table in results]
            n_labels = sum(len(layer.features) for layer in written)
            self.message.value = (
                f"{runner.name}: {n_labels} label{'s' if n_labels != 1 else ''} in "
                f"{', '.join(repr(layer.name) for layer in written)} ({scope})."
            )

        return job, on_result

    def batch_unique_ids(self, params: dict) -> bool | None:
        """Whether ids continue from plane to plane (None: the task's default)."""
        return None

    def write_batch_result(self, image_layer, labels: np.ndarray, table, runner, params: dict, scope: str):
        """One image's labels and table into its Labels layer (GUI thread); returns the layer.

        An existing ``"<image> [<task>]"`` Labels layer of the same shape is updated (one
        undo step); a new one is created with the image's transform otherwise.
        """
        from napari.layers import Labels

        from napari_segsuite.layers import (
            METADATA_KEY,
            aligned_layer_kwargs,
            mark_written,
            output_layer_name,
            resolve_output_name,
        )

        name = resolve_output_name(self.viewer, output_layer_name(image_layer, self.task))
        labels = np.asarray(labels, dtype=LABEL_DTYPE)
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is not None and not isinstance(layer, Labels):
            raise InputError(f"A layer named '{name}' exists and is not a Labels layer; rename it.")
        if layer is not None and tuple(layer.data.shape) != labels.shape:
            raise InputError(
                f"Labels layer '{name}' has shape {tuple(layer.data.shape)} but image "
                f"'{image_layer.name}' needs {labels.shape}; rename or delete it."
            )
        if layer is None:
            layer = Labels(labels, name=name, **aligned_layer_kwargs(image_layer))
            self.viewer.add_layer(layer)
        else:
            old = np.asarray(layer.data)
            changed = np.nonzero(old != labels)
            if changed[0].size:
                layer.data_setitem(changed, labels[changed])
        layer.features = batch_features(labels, table)
        record = {"model": runner.provenance(), "parameters": dict(params), "scope": scope,
                  "batch_task": self.batch_task}
        meta = {"task": self.task, "source_image": image_layer.name, **record}
        lead = labels.shape[:-2]
        if lead:
            keys = [",".join(f"{a}:{int(i)}" for a, i in enumerate(idx)) for idx in np.ndindex(*lead)]
            meta["planes"] = dict.fromkeys(keys, record)
            meta["last"] = record
        layer.metadata = {**layer.metadata, METADATA_KEY: meta}
        mark_written(layer)
        self.after_batch_write(layer)
        return layer

    def after_batch_write(self, layer) -> None:
        """Widget-specific touches on a written layer (legend ...). Subclasses override."""

    # -- regions and large images (field of view, rectangle, whole plane in chunks, on disk) ----
    def _on_region_choice(self, value=None) -> None:
        """Choosing "rectangle" adds the image's ``"<image> [region]"`` Shapes layer (active, in
        rectangle mode) where the user draws the region."""
        from napari.layers import Shapes

        from napari_segsuite.layers import aligned_layer_kwargs, region_layer_name

        if self.region.value != RECTANGLE or self.image.value is None:
            return
        image = self.image.value
        name = region_layer_name(image)
        if name not in self.viewer.layers:
            layer = Shapes(name=name, ndim=image.ndim - (1 if getattr(image, "rgb", False) else 0),
                           edge_color="yellow", face_color="transparent", edge_width=2,
                           **aligned_layer_kwargs(image))
            self.viewer.add_layer(layer)
        layer = self.viewer.layers[name]
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"

    def uses_region(self) -> bool:
        """Whether Run goes through :meth:`make_region_job`: a field of view or rectangle, or an
        image whose labels live on disk (zarr/dask/multiscale, or planes above the size set)."""
        from napari_segsuite.layers import labels_on_disk

        if self.batch_task is None or self.scope.value == ALL_IMAGES:
            return False
        if self.region.value != WHOLE_PLANE:
            return True
        try:
            layer = self.selected_image()
        except SegSuiteError:
            return False
        return labels_on_disk(layer, int(self.on_disk_mpx.value) * 1_000_000)

    def make_region_job(self) -> tuple[Any, Any]:
        """Read the region and options (GUI thread); the job segments it chunk by chunk.

        The region (the whole plane, the field of view or the last rectangle of
        ``"<image> [region]"``) of the current plane, or of every plane with *all planes*, goes
        through the dock's batch task in chunks of
        :data:`~napari_segsuite.batch.regions.REGION_CHUNK` pixels (objects merged across
        chunk borders). With labels on disk the chunks are written into the
        ``"<image> [<task>]"`` store as they come (plane by plane); otherwise the region's labels
        are written into the in-memory Labels layer at the end (one undo step).
        """
        from napari_segsuite.batch.regions import REGION_CHUNK, n_chunks, segment_region_job
        from napari_segsuite.batch.tasks import get_task
        from napari_segsuite.core.label_store import UNDO_PIXELS
        from napari_segsuite.core.regions import LazyView, Region, check_fits_memory
        from napari_segsuite.layers import (
            field_of_view,
            labels_on_disk,
            ondisk_labels_layer,
            output_layer_name,
            rectangle_region,
        )
        from napari_segsuite.widgets.semantic import plane_selections

        layer = self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        params = self.batch_params()
        sels = plane_selections(self.viewer, layer, self.scope.value == ALL_PLANES)
        sel0 = sels[0]
        current = plane_selections(self.viewer, layer, False)[0]  # the region is read on the shown plane
        choice = self.region.value
        if choice == FIELD_OF_VIEW:
            region = field_of_view(self.viewer, layer, current)
        elif choice == RECTANGLE:
            region = rectangle_region(self.viewer, layer, current)
        else:
            region = Region.whole(sel0.shape)
        data = full_resolution(layer)
        kind = get_task(self.batch_task).kind
        n = len(sels)
        name = output_layer_name(layer, self.task)
        store, target, note, base_offset = None, None, "", 0
        if labels_on_disk(layer, int(self.on_disk_mpx.value) * 1_000_000):
            target, store, note = ondisk_labels_layer(self.viewer, layer, sel0, name,
                                                      folder=Path(self.store.cache_dir) / "labels")
        else:
            what = f"The region ({region.shape[0]} x {region.shape[1]} pixels{f' x {n} planes' if n > 1 else ''})"
            check_fits_memory(region.size * n, 8, what)
            if name in self.viewer.layers and kind == Task.INSTANCE:
                base_offset = int(np.asarray(self.viewer.layers[name].data).max(initial=0))
        per = n_chunks(region.shape, REGION_CHUNK)
        total = per * n
        run = {"store": store, "layer": target, "region": region, "pending": None}
        self._region_run = run
        if store is not None:
            self.jobs.abort_message = f"Cancelled; the chunks written so far stay in '{target.name}'."

        def job():
            runner = yield from self.load_model_job()
            resolved = self.resolve_batch_params(runner, dict(params))
            results, offset = [], base_offset
            for k, sel in enumerate(sels):
                view = LazyView(data, sel.index, region)
                before = old = None
                if store is not None:
                    lead = tuple(sel.labels_index[:-2])
                    if n == 1 and region.size <= UNDO_PIXELS:
                        before = store.read(lead, region)
                        old = np.bincount(before.ravel().astype(np.int64))
                    elif sel.key in store.attrs.get("planes", {}):
                        old = store.region_counts(lead, region)
                    if kind == Task.INSTANCE:
                        offset = max(offset, int(store.attrs.get("max_label", 0)))
                    out = store.writer(lead, region)
                    run["pending"] = (sel, before)
                else:
                    out = np.zeros(region.shape, LABEL_DTYPE)
                table = yield from segment_region_job(
                    self.batch_task, runner, view, out, params=resolved, chunk=REGION_CHUNK,
                    id_offset=offset if kind == Task.INSTANCE else 0, progress_offset=k * per,
                    progress_total=total, prefix=f"Plane {k + 1}/{n}: " if n > 1 else "",
                )
                if kind == Task.INSTANCE and len(table):
                    offset = max(offset, int(table["label"].max()))
                results.append((sel, _shift_boxes(table, region), out if store is None else None, before, old))
            return runner, resolved, results

        def on_result(value) -> None:
            from napari_segsuite.layers import record_on_disk_write, write_region

            runner, resolved, results = value
            provenance = {"model": runner.provenance(), "parameters": dict(resolved), "scope": self.scope.value,
                          "region_choice": choice, "batch_task": self.batch_task, "source_image": layer.name}
            written = target
            for sel, table, block, before, old in results:
                if store is not None:
                    record_on_disk_write(target, store, sel, region, table, old, task=self.task,
                                         provenance=provenance, before=before)
                else:
                    written = write_region(self.viewer, layer, sel, region, block, task=self.task,
                                           provenance=provenance, table=table)
            run["pending"] = None
            self.after_batch_write(written)
            n_labels = len(written.features)
            where = f"rows {region.r0}-{region.r1}, columns {region.c0}-{region.c1}"
            disk = f" (on disk: {store.path})" if store is not None else ""
            self.message.value = (f"{runner.name}: {choice} ({where}) of {n} plane{'s' if n != 1 else ''} "
                                  f"written to '{written.name}'{disk}; {n_labels} labels in the layer."
                                  + (f" {note}" if note else ""))

        return job, on_result

    def _finish_region_run(self, how: str) -> None:
        """After a Cancel or an error of an on-disk run: the chunks written stay; the region can
        be put back with Ctrl-Z on the layer when it was small enough to keep its old pixels."""
        run, self._region_run = self._region_run, None
        self.jobs.abort_message = "Cancelled; no layer was changed."
        if run is None or run.get("store") is None or run.get("pending") is None or how == Outcome.RETURNED:
            return
        sel, before = run["pending"]
        store, layer = run["store"], run["layer"]
        lead = tuple(sel.labels_index[:-2])
        undoable = store.record(lead, run["region"], before)
        layer.refresh()
        extra = (" Ctrl-Z on the layer puts the region back." if undoable
                 else " The region is too large to keep its old pixels, so it cannot be undone.")
        lead_text = "Cancelled." if how == Outcome.ABORTED else (self.message.value or "Stopped.")
        self.message.value = (f"{lead_text} The chunks written before the stop stay in '{layer.name}' "
                              f"({store.path}).{extra}")

    def run(self) -> None:
        """Read the inputs, then run the task in a worker.

        The result is written only when every input image is still open with the pixels
        it had at Run (:meth:`_inputs_unchanged`); otherwise it is dropped with a message
        and no layer changes.
        """
        if self.jobs.busy:  # (a short job may leave Run enabled: see _start's announce_after_ms)
            self.message.value = "Busy; wait for the running job or cancel it."
            return
        try:
            self._run_model_key = None
            self._run_model_key = self.model_key()
            if self.uses_region():
                job_factory, on_result = self.make_region_job()
            else:
                job_factory, on_result = self.make_batch_job() if self.uses_batch() else self.make_job()
            inputs = [(layer, full_resolution(layer)) for layer in
                      (self.batch_images() if self.uses_batch() and not self.uses_region()
                       else [self.selected_image()])]
        except SegSuiteError as exc:
            self._report(exc)
            return
        self._start(job_factory, self._inputs_unchanged(inputs, on_result),
                    f"{self.task.capitalize()} segmentation", inputs=[layer for layer, _ in inputs])

    def _inputs_unchanged(self, inputs: list, on_result):
        """``on_result`` that first checks that each ``(image layer, data at Run)`` is unchanged.

        Raises :class:`InputError` (shown in the dock; nothing written) when an image was
        removed from the viewer, or its data replaced, while the job ran.
        """

        def checked(value) -> None:
            for layer, data in inputs:
                if layer not in self.viewer.layers:
                    raise InputError(
                        f"Image '{layer.name}' was removed while the {self.task} job ran; its result was "
                        "dropped and no layer was changed."
                    )
                if full_resolution(layer) is not data:
                    raise InputError(
                        f"Image '{layer.name}' got other pixels while the {self.task} job ran; its result was "
                        "dropped and no layer was changed. Run again."
                    )
            on_result(value)

        return checked

    def _guarded(self, on_result):
        """``on_result`` run under the "ask" edit policy: hand-edited output layers raise a question.

        The result is held until the question in the dock is answered: "overwrite" and
        "new" write it (over the edits, or into ``"<name> (new)"``), "cancel" drops it.
        """
        from napari_segsuite.layers import LayerEditedError, edit_policy

        def write(value, choice: str = "ask") -> None:
            with edit_policy(choice):
                on_result(value)

        def guarded(value) -> None:
            try:
                write(value)
            except LayerEditedError as exc:
                self.message.value = str(exc)

                def answered(choice: str) -> None:
                    if choice == "cancel":
                        self.message.value = "Not written: the edited layer(s) keep their pixels."
                        return
                    try:
                        write(value, choice)
                    except SegSuiteError as err:
                        self._show_error(err)

                self.edit_question.ask(str(exc), answered)

        return guarded

    def _show_error(self, exc: SegSuiteError) -> None:
        self.job_panel.report(exc)

    def _report(self, exc: BaseException) -> None:
        self.job_panel.report(exc)

    def _start(self, job_factory, on_result, description: str, inputs=(), *, thread=None,
               announce_after_ms: int = 0) -> None:
        """Run a job; removing one of the ``inputs`` (Image layers) from the viewer cancels it.

        ``thread`` and ``announce_after_ms``: see :meth:`~napari_segsuite.widgets.scaffold.JobPanel.start`
        (a job announced late leaves the Download button as it is; it refuses while a job runs).
        """
        self.edit_question.drop()
        on_result = self._guarded(on_result)
        if announce_after_ms <= 0:
            self.models.download.enabled = False
        self._job_inputs = list(inputs)
        self._cancel_note = ""
        if not getattr(self, "_watching_removals", False):
            self.viewer.layers.events.removed.connect(self._on_layer_removed)
            self._watching_removals = True
        self.job_panel.start(job_factory, on_result, description, thread=thread, announce_after_ms=announce_after_ms)

    def _on_layer_removed(self, event=None) -> None:
        """An input of the running job left the viewer (deleted, or the viewer closing): cancel the job.

        Its result could only be dropped (see :meth:`_inputs_unchanged`), and a job that goes on
        computing slows the closing viewer down.
        """
        from napari.utils.notifications import show_info

        layer = getattr(event, "value", None)
        if layer is None or not self.jobs.busy or self.jobs.closed:
            return
        if any(layer is item for item in getattr(self, "_job_inputs", ())):
            self._cancel_note = (f"Image '{layer.name}' was removed while the {self.task} job ran; the job was "
                                 "cancelled and no layer was changed.")
            self.jobs.cancel()
            show_info(self._cancel_note)

    def _on_progress(self, item: Progress) -> None:
        self.job_panel.on_progress(item)

    def _after_job(self, how: Outcome) -> None:
        self.models.download.enabled = True
        if how == Outcome.ABORTED and getattr(self, "_cancel_note", ""):
            self.message.value = self._cancel_note
        self._cancel_note = ""
        self._job_inputs = []
        self._finish_region_run(str(how))
        self._on_done(how)

    def _on_done(self, how: Outcome) -> None:
        """A job ended (after the panel re-enabled its buttons). Subclasses extend."""

    def smoke(self) -> None:
        """What the headless smoke mode runs in this widget (features extend it)."""


def _shift_boxes(table, region):
    """A region's table with its bounding boxes in plane pixels (region origin added)."""
    if table is None or not len(table) or (region.r0 == 0 and region.c0 == 0):
        return table
    table = table.copy()
    for col in table.columns:
        if col.startswith("bbox_0") or col.startswith("bbox_row"):
            table[col] = table[col] + region.r0
        elif col.startswith("bbox_1") or col.startswith("bbox_col"):
            table[col] = table[col] + region.c0
    return table


def batch_features(labels: np.ndarray, table):
    """``layer.features`` of a batch result: one row per label present in ``labels``.

    ``index`` (napari's key) and ``label``, ``area`` and the bounding box come from the labels (the whole nD volume); the
    task's other columns (class, score ...) from the table's first row for the label (a
    semantic class appears once per plane; its name is the same in each).
    """
    import pandas as pd

    from napari_segsuite.core.labels import label_table

    features = pd.DataFrame(label_table(labels))
    features.insert(0, "index", features["label"])  # napari's key from label value to feature row
    if table is None or not len(table) or "label" not in table.columns:
        return features
    drop = [c for c in table.columns if c in ("plane", "area") or c.startswith("bbox_")]
    extra = table.drop(columns=drop).drop_duplicates("label").set_index("label")
    extra = extra[[c for c in extra.columns if c not in features.columns]]
    return features.join(extra, on="label")
