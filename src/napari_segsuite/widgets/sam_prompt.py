"""The "SAM Prompt Segmentation" dock: click, look, pick, commit.

The dock holds what its sections share: the Image and Model, the SAM session (loaded in a
worker, kept while the model stays the same; embeddings cached per plane content and
model, in memory and optionally on disk), the job panel (progress and status), the
:class:`~napari_segsuite.tasks.sam_preview.PreviewController`, and the key bindings. The
work is in sections, each a collapsible group:

- :class:`~napari_segsuite.widgets.sam_prompts.PromptSection`: prompt layers, polarity,
  the live preview and its candidates;
- :class:`~napari_segsuite.widgets.sam_commits.CommitSection`: commit, clear, undo/redo,
  committed objects, autosave;
- :class:`~napari_segsuite.widgets.sam_everything.EverythingSection`: segment everything;
- :class:`~napari_segsuite.widgets.sam_propagation.PropagationSection`: propagation
  through planes;
- :class:`~napari_segsuite.widgets.sam_find.FindSection`: every instance of a concept
  (SAM 3).

:meth:`SamPromptWidget.add_section` adds another one (see
:mod:`napari_segsuite.widgets.sam_sections`). *Encode image* encodes the current plane
ahead of time (the first prompt on a plane encodes it anyway), and progress shows in the
dock's own bar (napari's activity animation slows encoders where OpenGL is
software-rendered).

:meth:`SamPromptWidget.preview_source` names the image, plane and model of "now";
``dock.preview.source`` is what the shown preview was computed for, and
``dock.preview.check_commit(dock.preview_source(image, sel))`` refuses a commit when they
differ.
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, FileEdit

from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Outcome, Task
from napari_segsuite.layers import current_plane
from napari_segsuite.tasks.sam_preview import PreviewController, PreviewSource
from napari_segsuite.widgets.base import SegmentationWidget
from napari_segsuite.widgets.sam_commits import CommitSection
from napari_segsuite.widgets.sam_everything import EverythingSection
from napari_segsuite.widgets.sam_find import FindSection
from napari_segsuite.widgets.sam_prompts import COLORS, DEBOUNCE_MS, POSITIVE, PromptSection
from napari_segsuite.widgets.sam_propagation import PropagationSection

__all__ = ["COLORS", "DEBOUNCE_MS", "POSITIVE", "SamPromptWidget"]

_VERSIONS = itertools.count(1)
#: CPU niceness added to the dock's job thread (model loading, encoding, segment everything,
#: propagation); ``NAPARI_SEGSUITE_JOB_NICE`` in the environment sets another (0: none)
JOB_NICE = 5


def job_nice() -> int:
    """The niceness for the dock's job thread: ``NAPARI_SEGSUITE_JOB_NICE``, else :data:`JOB_NICE`."""
    import os

    try:
        return max(0, min(19, int(os.environ.get("NAPARI_SEGSUITE_JOB_NICE", JOB_NICE))))
    except ValueError:
        return JOB_NICE


class SamPromptWidget(SegmentationWidget):
    """Segment Anything from point and box prompts."""

    task = Task.PROMPT
    model_tasks = (Task.PROMPT,)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.run_button.text = "Encode image"
        self.run_button.tooltip = "Encode the current plane now (the first prompt on a plane encodes it too)"
        self.embedding_dir = FileEdit(label="Embedding cache", mode="d", value="",
                                      tooltip="Optional folder that keeps image embeddings between sessions")
        self.prefetch = CheckBox(text="Prefetch neighbouring planes", value=False,
                                 tooltip="Encode the next and previous planes in the background while you work")
        self.task_options.extend([self.embedding_dir, self.prefetch])
        self.options_group.collapse()
        # Progress shows in this dock's own bar: napari's activity animation would slow the encoder
        # by a third where OpenGL is software-rendered (see JobRunner.napari_progress).
        self.jobs.napari_progress = False
        # Encoding runs below the GUI's CPU priority (the job thread and the library threads it
        # starts): the viewer keeps drawing while the encoder takes every core the GUI leaves.
        self.jobs.nice = job_nice()
        self.session = None
        self._session_key = None
        self._data_versions: dict[int, list] = {}
        self._closed = False
        #: The preview of the current prompts and the image, plane and model it was computed for.
        self.preview = PreviewController()
        self.sections: dict[str, object] = {}
        self.prompts = self.add_section(PromptSection(self))
        self.commits = self.add_section(CommitSection(self))
        self.everything = self.add_section(EverythingSection(self))
        self.propagation = self.add_section(PropagationSection(self))
        self.finder = self.add_section(FindSection(self))
        self.native.destroyed.connect(self._on_destroyed)
        self.image.changed.connect(self._on_image_changed)
        self._bind_keys()
        self.finish_layout()
        if self.image.value is not None:
            self.prompts.attach(self.image.value)

    # -- sections -------------------------------------------------------------------------------
    def add_section(self, section, *, collapsed: bool | None = None):
        """Show ``section`` as a collapsible group after the existing sections; returns it."""
        index = self.body.index(self.options_group)
        self.add_group(section.title, [section], labels=False, index=index,
                       collapsed=section.collapsed if collapsed is None else collapsed)
        self.sections[section.title] = section
        if getattr(self, "_keys_bound", False):
            self._bind_keys()
        return section

    def _bind_keys(self) -> None:
        if not hasattr(self, "_parent_watch"):  # closing the dock takes the widget out of the window
            self._parent_watch = _parent_watch(self.native, self._on_parent_change)
        #: key -> (our function, the binding it replaced): given back when the dock closes
        bound = getattr(self, "_bound_keys", {})
        for section in self.sections.values():
            for key, func in section.key_bindings().items():
                before = self.viewer.bind_key(key, func, overwrite=True)
                bound[key] = (func, bound[key][1] if key in bound else before)
        self._bound_keys = bound
        self._keys_bound = True

    def _on_parent_change(self, docked: bool) -> None:
        if docked and not self._closed and not getattr(self, "_bound_keys", None):
            self._bind_keys()
        elif not docked:  # closed: the keys go back, a preview being computed is not shown
            self._release_keys()
            self.prompts.drop_pending()

    def _release_keys(self) -> None:
        """Give the viewer back the keys this dock bound (the earlier bindings, if any)."""
        from napari.utils.key_bindings import coerce_keybinding

        for key, (func, before) in getattr(self, "_bound_keys", {}).items():
            if self.viewer.keymap.get(coerce_keybinding(key)) is func:
                self.viewer.bind_key(key, before, overwrite=True)
        self._bound_keys = {}
        self._keys_bound = False

    def _on_image_changed(self, image=None) -> None:
        image = self.image.value
        if image is None or image not in self.viewer.layers:
            return
        for section in self.sections.values():
            section.image_changed(image)

    # -- shared helpers for the sections ------------------------------------------------------
    def report(self, exc: BaseException) -> None:
        """Show an error (notification and status line)."""
        self.job_panel.report(exc)

    _report = report

    def start_job(self, job_factory, on_result, description: str) -> None:
        """Run a job with the dock's progress bar and Cancel (removing the dock's image cancels it)."""
        image = self.image.value
        self._start(job_factory, on_result, description, inputs=[image] if image is not None else [])

    def refuse_when_busy(self) -> bool:
        """True (and a message) when a job is running: one job at a time."""
        if self.jobs.busy:
            self.message.value = "Busy; wait for the running job or cancel it."
        return self.jobs.busy

    _refuse_when_busy = refuse_when_busy

    def job_plane(self):
        """The chosen image layer, its current plane and the selection (GUI thread).

        Raises a :class:`SegSuiteError` the user can act on (no image, no model file).
        """
        image = self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        plane, sel = current_plane(self.viewer, image)
        return image, plane, sel

    _job_plane = job_plane

    def find_target(self, image, sel, *, create: bool):
        """The commit target layer of ``image`` (see :meth:`CommitSection.find_target`)."""
        return self.commits.find_target(image, sel, create=create)

    _find_target = find_target

    def _target_name(self, image) -> str:
        return self.commits.target_name(image)

    def preview_source(self, image, sel) -> PreviewSource:
        """The image (layer and data version), plane and model a preview made now is for."""
        token = self.plane_token(image, sel.index)
        return PreviewSource(image=token[:2], plane=token[2], model=self.session_key(), image_name=image.name)

    # -- session ------------------------------------------------------------------------------
    def session_key(self) -> tuple:
        """(model spec, device, embedding folder) of the current choice."""
        return (*self.model_key(), str(self.embedding_dir.value))

    def load_session_job(self):
        """Load the session for the chosen model (worker) unless it is loaded; returns it.

        Its embedding cache holds at most :data:`~napari_segsuite.tasks.sam_windows.CACHE_EMBEDDINGS`
        embeddings and :data:`~napari_segsuite.tasks.sam_windows.CACHE_BYTES` bytes (planes
        and windows of large planes alike).
        """
        from napari_segsuite.tasks.sam_session import SamSession
        from napari_segsuite.tasks.sam_windows import CACHE_BYTES, CACHE_EMBEDDINGS

        key = self.session_key()
        if self.session is None or self._session_key != key:
            from napari_segsuite.core.threads import call_in_background

            yield Progress(0, None, f"Loading {Path(key[0]).name}")
            folder = str(self.embedding_dir.value)
            store = self.store
            # loading has no yield points: on its own thread, so that Cancel and closing return at once
            self.session = yield from call_in_background(
                lambda: SamSession(key[0], key[1], store=store, disk_cache=folder if folder not in ("", ".") else None,
                                   cache_size=CACHE_EMBEDDINGS, cache_bytes=CACHE_BYTES),
                f"Loading {Path(key[0]).name}")
            self._session_key = key
            self._windowed = {}
        return self.session

    def session_job(self, plane, token=None):
        """Load the session for the chosen model (worker) and make ``plane`` current."""
        yield from self.load_session_job()
        yield from self.session.set_image_job(plane, token)
        return self.session

    def windowed_prompts(self, image, sel):
        """The :class:`~napari_segsuite.tasks.sam_windows.WindowedPrompts` of the plane ``sel`` of
        ``image`` when it is prompted in windows (large planes), else None.

        None too while no session is loaded for the chosen model (it is decided after loading).
        Kept per plane (and data version), so a plane's intensity range is estimated once.
        """
        from napari_segsuite.layers import full_resolution
        from napari_segsuite.tasks.sam_windows import PlaneView, WindowedPrompts, needs_windows

        session = self.session
        if session is None or self._session_key != self.session_key():
            return None
        if not needs_windows(sel.shape, session.prompt_model.input_size):
            return None
        token = self.plane_token(image, sel.index)
        cache = getattr(self, "_windowed", None)
        if cache is None:
            cache = self._windowed = {}
        if token not in cache:
            while len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[token] = WindowedPrompts(session, PlaneView(full_resolution(image), sel.index), token)
        return cache[token]

    _session_job = session_job

    def make_job(self):
        """Encode image: encode the current plane (prompts then decode at once)."""
        image = self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        plane, sel = current_plane(self.viewer, image)
        token = self.plane_token(image, sel.index)

        def on_result(session) -> None:
            self.prompts.ensure_prompt_layers()
            self.message.value = (
                f"{session.runner.name}: plane encoded. Click to add points (right-click: negative), "
                "draw boxes, Shift-C commits."
            )
            self.prompts.schedule_preview()
            self.prompts.start_prefetch()

        return (lambda: self.session_job(plane, token)), on_result

    def plane_token(self, image, index: tuple) -> tuple:
        """A hashable name of the plane at ``index`` (a :class:`PlaneSelection`'s) of ``image``'s data.

        O(1), no pixels are read. It changes when the layer's data is replaced or edited
        (napari's data event), so a token never names stale pixels.
        """
        entry = self._data_versions.get(id(image))
        if entry is None or entry[0]() is not image:
            import weakref

            entry = [weakref.ref(image), next(_VERSIONS)]
            self._data_versions[id(image)] = entry

            def bump(_event=None, entry=entry) -> None:
                entry[1] = next(_VERSIONS)

            image.events.data.connect(bump)
        return (id(image), entry[1], tuple(None if isinstance(i, slice) else int(i) for i in index))

    def cached_key(self, token) -> str | None:
        """The cache key of the plane ``token`` when the session for the chosen model has it in memory."""
        if self.session is None or self._session_key != self.session_key():
            return None
        return self.session.key_for_token(token)

    _cached_key = cached_key

    # -- state the tests and scripts read ------------------------------------------------------
    @property
    def _objects(self) -> list[dict]:
        return self.preview.objects

    @property
    def preview_busy(self) -> bool:
        """Whether a preview is being computed or waits to be shown."""
        return self.prompts.busy

    def _on_done(self, how: Outcome) -> None:
        self.prompts.job_done()

    # -- closing ------------------------------------------------------------------------------
    def _on_destroyed(self, *_) -> None:
        try:
            self.shutdown()
        except Exception:  # an exception in a Qt slot at exit would abort the process
            import logging

            logging.getLogger(__name__).exception("Stopping the SAM threads failed")

    def shutdown(self) -> None:
        """Stop the sections' threads (the viewer or the dock is closing). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for section in self.sections.values():
            section.shutdown()
        with contextlib.suppress(RuntimeError):  # the viewer may be gone already at exit
            self._release_keys()

    # -- smoke --------------------------------------------------------------------------------------
    def smoke(self) -> None:
        """Headless check: a tiny SAM, one point in the middle of the image, commit."""
        import tempfile
        import time

        from qtpy.QtWidgets import QApplication

        from napari_segsuite.demo.tiny_sam import build_tiny_sam
        from napari_segsuite.widgets.base import LOCAL

        path = build_tiny_sam(Path(tempfile.mkdtemp()) / "tiny_sam.pth")
        self.models.model.value = LOCAL
        self.models.local.value = str(path)
        self.device.value = "cpu"
        image = self.selected_image()
        points, _ = self.prompts.ensure_prompt_layers()
        # The prompt layers share the image's transform: data coordinates are the image's.
        center = np.asarray(image.world_to_data(self.viewer.dims.point), dtype=float)
        center[-2:] = [s / 2 for s in image.data.shape[image.ndim - 2: image.ndim]]
        points.add(center)
        deadline = time.time() + 120
        while (not self.preview.objects or self.preview_busy) and time.time() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)
        if not self.preview.objects:
            raise RuntimeError(f"SAM smoke: no preview ({self.message.value})")
        self.commits.commit()
        target = self.viewer.layers[self._target_name(image)]
        if not np.asarray(target.data).any():
            raise RuntimeError("SAM smoke: nothing was committed")
        self._smoke_segment_everything()

    def _smoke_segment_everything(self) -> None:
        """Smoke: 'segment everything' on the sample with thresholds a random tiny model passes."""
        permissive = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                      "box_nms_thresh": 0.7}
        for key, value in permissive.items():
            self.everything.auto_params[key].value = value
        self.everything.last_auto_layer = None
        self.everything.segment_everything()
        self.jobs.wait(300, "SAM smoke: 'segment everything'")
        layer = self.everything.last_auto_layer
        if layer is None or not np.asarray(layer.data).any():
            raise RuntimeError(f"SAM smoke: 'segment everything' gave no labels ({self.message.value})")


#: Attributes of the sections that the dock shows as its own (scripts and tests use them).
_FORWARDED = {
    "prompts": ("points_layer", "boxes_layer", "preview_layer", "negative", "multimask", "refine_id",
                "candidate_buttons", "prompt_thread", "prefetch_thread", "prefetched", "ensure_prompt_layers",
                "request_preview", "schedule_preview", "gather_prompts", "select_candidate", "start_prefetch",
                "neighbour_planes", "_timer", "last_preview_error", "clear"),
    "commits": ("target", "overwrite", "commit", "commit_button", "clear_button", "undo_button", "redo_button",
                "autosave_dir", "restore_button", "autosaver", "autosave_folder", "journal_for",
                "restore_autosave"),
    "everything": ("auto_button", "auto_params", "segment_everything", "automatic_params", "last_auto_layer"),
    "finder": ("find_text", "find_exemplars", "find_hint", "find_conf", "find_button", "find", "track_button",
               "track_concept"),
    "propagation": ("prop_direction", "prop_label", "prop_max", "prop_floor", "prop_button", "propagate",
                    "write_propagation"),
}


def _forward(section: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, section), name),
                    doc=f"The {section} section's ``{name}``.")


for _section, _names in _FORWARDED.items():
    for _name in _names:
        setattr(SamPromptWidget, _name, _forward(_section, _name))


def _parent_watch(widget, callback):
    """Call ``callback(has_parent)`` whenever ``widget`` is put into or taken out of a parent."""
    from qtpy.QtCore import QEvent, QObject

    class Watch(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.ParentChange:
                callback(obj.parent() is not None)
            return False

    watch = Watch(widget)
    widget.installEventFilter(watch)
    return watch
