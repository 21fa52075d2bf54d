"""The "SAM Prompt Segmentation" dock widget: click, look, pick, commit.

Prompts live in two layers the widget creates next to the image:

- ``<image> [sam points]``: a Points layer; each point has a ``positive``
  feature (green = positive, red = negative). New points take the polarity of
  the "negative points" box, flipped with **Shift-N**.
- ``<image> [sam boxes]``: a Shapes layer; every rectangle is its own object
  and all boxes are predicted as one batch. Points inside a box refine that
  box; with no box, all points describe one object. Ellipses and polygons act
  as their box plus a mask prompt (SAM) of their outline.

After each prompt change (debounced) the objects appear in the preview layer
``<image> [sam preview]``; a result that arrives after newer prompts is
dropped. On a plane whose embedding is cached, prompts are decoded on one
persistent thread per widget (a warm thread decodes as fast as the main
thread; only the newest waiting request is decoded), and only the shown
candidate is upsampled to the image size until another one is picked.
Neighbouring planes are prefetched on a second, lowest-priority thread that
also pauses between encoder blocks while prompts are decoded. Progress shows
in the dock's own bar (not napari's activity dock, whose animation slows
encoders where OpenGL is software-rendered).

With one object and "three candidates", the candidate masks and
their predicted IoU are on the buttons 1/2/3 (**Alt-1/2/3**); the best score is
the default. **Shift-C** commits the preview into the target Labels layer
(next free id; existing labels are kept unless "overwrite" is ticked; one undo
step), **Shift-X** clears prompts and preview. Committed labels are autosaved
(``.npy`` next to the image file, or in the chosen folder) and can be restored.
Embeddings are cached per (image plane content, model); planes seen before
are never encoded again.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton, SpinBox

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.labels import next_free_id
from napari_segsuite.core.progress import Progress
from napari_segsuite.layers import (
    aligned_layer_kwargs,
    current_plane,
    find_or_create_labels,
    output_layer_name,
    points_on_plane,
    shapes_on_plane,
    write_plane,
)
from napari_segsuite.widgets.base import SegmentationWidget

POSITIVE = "positive"
DEBOUNCE_MS = 120
COLORS = {True: "lime", False: "red"}


class SamPromptWidget(SegmentationWidget):
    """Segment Anything from point and box prompts."""

    task = "prompt"
    model_tasks = ("prompt",)

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        from qtpy.QtCore import QTimer

        self.run_button.text = "Encode image"
        self.target = ComboBox(label="Target labels", choices=self._labels_choices, nullable=True)
        self.overwrite = CheckBox(text="Overwrite existing labels", value=False)
        self.multimask = CheckBox(text="Three candidates", value=True)
        self.negative = CheckBox(text="New points are negative (Shift-N)", value=False)
        self.refine_id = SpinBox(label="Refine label", value=0, min=0, max=2**31 - 1,
                                 tooltip="0: a new object; else this label is the mask prompt and is replaced")
        self.candidate_buttons = [PushButton(text=f"{i + 1}", enabled=False) for i in range(3)]
        self.commit_button = PushButton(text="Commit (Shift-C)")
        self.clear_button = PushButton(text="Clear (Shift-X)")
        self.undo_button = PushButton(text="Undo")
        self.redo_button = PushButton(text="Redo")
        self.autosave_dir = FileEdit(label="Autosave folder", mode="d", value="")
        self.restore_button = PushButton(text="Restore autosave")
        self.embedding_dir = FileEdit(label="Embedding cache", mode="d", value="",
                                      tooltip="Optional folder that keeps image embeddings between sessions")
        self.prefetch = CheckBox(text="Prefetch neighbouring planes", value=False,
                                 tooltip="Encode the next and previous planes in the background while you work")
        self.task_options.extend([
            self.target, self.overwrite, self.multimask, self.negative, self.refine_id,
            Container(widgets=self.candidate_buttons, layout="horizontal", labels=False, label="Candidates"),
            Container(widgets=[self.commit_button, self.clear_button], layout="horizontal", labels=False),
            Container(widgets=[self.undo_button, self.redo_button], layout="horizontal", labels=False),
            self.autosave_dir, self.restore_button, self.embedding_dir, self.prefetch,
        ])
        # Progress shows in this dock's own bar: napari's activity animation would slow the encoder
        # by a third where OpenGL is software-rendered (see JobRunner.napari_progress).
        self.jobs.napari_progress = False
        self.session = None
        self._session_key = None
        self.points_layer = None
        self.boxes_layer = None
        self.preview_layer = None
        self._generation = 0
        self._pending = False
        self._objects: list[dict] = []
        self._sel = None
        self._image_for_prompts = None
        self.last_autosave: Path | None = None
        self._autosave_thread: threading.Thread | None = None
        self.prefetched: list[str] = []
        from napari_segsuite.core.threads import ServiceThread

        #: one long-lived thread decodes the prompts (newest request only): a warm OpenMP team
        self.prompt_thread = ServiceThread("segsuite-sam-prompts", keep="latest")
        #: neighbouring planes are encoded on a low-priority thread that pauses while prompts decode
        self.prefetch_thread = ServiceThread("segsuite-sam-prefetch", keep="all", nice=19)
        self._bridge_obj = None
        self._in_flight = 0
        self._closed = False
        self.last_preview_error: BaseException | None = None
        self._data_versions: dict[int, list] = {}
        self.native.destroyed.connect(self._on_destroyed)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.request_preview)
        for i, button in enumerate(self.candidate_buttons):
            button.changed.connect(lambda _=None, i=i: self.select_candidate(i))
        self.commit_button.changed.connect(self.commit)
        self.clear_button.changed.connect(self.clear)
        self.undo_button.changed.connect(lambda: self._undo(redo=False))
        self.redo_button.changed.connect(lambda: self._undo(redo=True))
        self.restore_button.changed.connect(self.restore_autosave)
        self.negative.changed.connect(self._sync_polarity)
        self.multimask.changed.connect(self.schedule_preview)
        self.viewer.dims.events.current_step.connect(self.schedule_preview)
        self._bind_keys()
        self._init_automatic_and_propagation()
        self._init_find()

    # -- layers -------------------------------------------------------------------------
    def _labels_choices(self, _widget=None):
        from napari.layers import Labels

        own = {output_layer_name(layer, "sam preview") for layer in self.viewer.layers}
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name not in own]

    def _bind_keys(self) -> None:
        bindings = {
            "Shift-C": lambda v: self.commit(),
            "Shift-X": lambda v: self.clear(),
            "Shift-N": lambda v: setattr(self.negative, "value", not self.negative.value),
            "Alt-1": lambda v: self.select_candidate(0),
            "Alt-2": lambda v: self.select_candidate(1),
            "Alt-3": lambda v: self.select_candidate(2),
        }
        for key, func in bindings.items():
            self.viewer.bind_key(key, func, overwrite=True)

    def ensure_prompt_layers(self):
        """Create (or find) the points, boxes and preview layers of the chosen image."""
        from napari.layers import Labels, Points, Shapes

        image = self.selected_image()
        if self._image_for_prompts is image and self.points_layer in self.viewer.layers:
            return self.points_layer, self.boxes_layer
        self._image_for_prompts = image
        kwargs = aligned_layer_kwargs(image)  # prompts share the image transform: data coords agree
        ndim = image.ndim
        name = output_layer_name(image, "sam points")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Points):
            self.points_layer = self.viewer.layers[name]
        else:
            self.points_layer = Points(
                np.zeros((0, ndim)), ndim=ndim, name=name, features={POSITIVE: np.zeros(0, dtype=bool)},
                size=max(4.0, 0.01 * max(image.data.shape[-2:])), **kwargs,
            )
            self.viewer.add_layer(self.points_layer)
        name = output_layer_name(image, "sam boxes")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Shapes):
            self.boxes_layer = self.viewer.layers[name]
        else:
            self.boxes_layer = Shapes(ndim=ndim, name=name, edge_color="yellow", face_color="transparent", **kwargs)
            self.viewer.add_layer(self.boxes_layer)
        name = output_layer_name(image, "sam preview")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            self.preview_layer = self.viewer.layers[name]
        else:
            _, sel = current_plane(self.viewer, image)
            self.preview_layer = Labels(np.zeros(sel.layer_shape, dtype=np.uint8), name=name, opacity=0.5,
                                        **kwargs)
            self.viewer.add_layer(self.preview_layer)
        self._sync_polarity()
        self.points_layer.events.data.connect(self._on_points_changed)
        self.boxes_layer.events.data.connect(self.schedule_preview)
        self.viewer.layers.selection.active = self.points_layer
        self.points_layer.mode = "add"
        return self.points_layer, self.boxes_layer

    def _sync_polarity(self, _=None) -> None:
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {POSITIVE: not self.negative.value}
            self._color_points()

    def _color_points(self) -> None:
        layer = self.points_layer
        if layer is None or len(layer.data) == 0:
            return
        colors = [COLORS[bool(p)] for p in layer.features[POSITIVE]]
        layer.face_color = colors
        layer.current_face_color = COLORS[not self.negative.value]

    def _on_points_changed(self, event=None) -> None:
        self._color_points()
        self.schedule_preview()

    # -- session ------------------------------------------------------------------------------
    def _session_job(self, plane, token=None):
        """Load the session for the chosen model (worker) and make ``plane`` current."""
        from napari_segsuite.tasks.sam_session import SamSession

        key = (*self.model_key(), str(self.embedding_dir.value))
        if self.session is None or self._session_key != key:
            yield Progress(0, None, f"Loading {Path(key[0]).name}")
            folder = str(self.embedding_dir.value)
            self.session = SamSession(key[0], key[1], store=self.store,
                                      disk_cache=folder if folder not in ("", ".") else None)
            self._session_key = key
        yield from self.session.set_image_job(plane, token)
        return self.session

    def make_job(self):
        """Run: encode the current plane (prompts then decode instantly)."""
        image = self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        plane, sel = current_plane(self.viewer, image)
        token = self.plane_token(image, sel.index)

        def on_result(session) -> None:
            self.ensure_prompt_layers()
            self.message.value = (
                f"{session.runner.name}: plane encoded. Click to add points (Shift-N flips polarity), "
                "draw boxes, Shift-C commits."
            )
            self.schedule_preview()
            self.start_prefetch()

        return (lambda: self._session_job(plane, token)), on_result

    # -- prompts -> preview -------------------------------------------------------------------
    def schedule_preview(self, event=None) -> None:
        """Ask for a new preview after the prompts settle (debounced)."""
        self._generation += 1
        self._timer.start()

    def gather_prompts(self):
        """Read the prompts on the current plane (GUI thread). Returns (image, plane, sel, objects)."""
        image = self.selected_image()
        plane, sel = current_plane(self.viewer, image)
        objects = []
        coords = np.zeros((0, 2))
        labels = np.zeros(0, dtype=int)
        if self.points_layer is not None and self.points_layer in self.viewer.layers:
            coords, which = points_on_plane(self.viewer, self.points_layer, image, sel)
            labels = np.asarray(self.points_layer.features[POSITIVE], dtype=bool)[which].astype(int)
        shapes = []
        if self.boxes_layer is not None and self.boxes_layer in self.viewer.layers:
            shapes = shapes_on_plane(self.viewer, self.boxes_layer, image, sel)
        used = np.zeros(len(coords), dtype=bool)
        for shape in shapes:
            box = shape.box
            inside = ((coords[:, 0] >= box[0]) & (coords[:, 0] <= box[2])
                      & (coords[:, 1] >= box[1]) & (coords[:, 1] <= box[3]) & ~used)
            used |= inside
            obj = {"box": box, "points": coords[inside], "labels": labels[inside]}
            if shape.kind in ("ellipse", "polygon"):
                obj["mask"] = shape.mask(sel.shape)
            objects.append(obj)
        if not shapes and len(coords):
            objects.append({"box": None, "points": coords, "labels": labels})
        refine = int(self.refine_id.value)
        if refine and len(objects) == 1 and "mask" not in objects[0]:
            target = self._find_target(image, sel, create=False)
            if target is not None:
                prior = np.asarray(target.data[sel.labels_index]) == refine
                if not prior.any():
                    raise InputError(f"Label {refine} is not on this plane; set 'Refine label' to 0 or pick it.")
                objects[0]["mask"] = prior
        return image, plane, sel, objects

    def request_preview(self) -> None:
        """Predict the objects of the current prompts; show them in the preview.

        On a plane whose embedding is cached, the prompts go to the widget's
        persistent prompt thread (only the newest request is decoded; the
        result comes back through a Qt signal). Otherwise a job with progress
        and Cancel loads the model and encodes the plane first.
        """
        if self.jobs.busy:
            self._pending = True
            return
        if self.points_layer is None or self.image.value not in self.viewer.layers:
            return  # an automatic trigger with nothing to prompt (e.g. layers being removed)
        try:
            image, plane, sel, objects = self.gather_prompts()
            self.models.spec  # noqa: B018
        except SegSuiteError as exc:
            self._report(exc)
            return
        if not objects:
            self._show_objects([], sel)
            return
        generation = self._generation
        multimask = bool(self.multimask.value) and len(objects) == 1
        token = self.plane_token(image, sel.index)
        key = self._cached_key(token)
        if key is not None:
            self._submit_decode(key, objects, multimask, generation, sel)
            return

        def job():
            session = yield from self._session_job(plane, token)
            with session.use(session.image_key):
                return _predict_objects(session, objects, multimask)

        def on_result(results) -> None:
            if generation == self._generation:  # else newer prompts arrived meanwhile; their preview follows
                self._show_objects(results, sel)
            self.start_prefetch()

        self._start(job, on_result, "SAM preview")

    # -- the persistent prompt thread ----------------------------------------------------------
    def plane_token(self, image, index: tuple) -> tuple:
        """A hashable name of the plane at ``index`` (a :class:`PlaneSelection`'s) of ``image``'s data.

        O(1), no pixels are read.

        It changes when the layer's data is replaced or edited (napari's data
        event), so a token never names stale pixels.
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

    def _cached_key(self, token) -> str | None:
        """The cache key of the plane ``token`` when the session for the chosen model has it in memory."""
        if self.session is None or self._session_key != (*self.model_key(), str(self.embedding_dir.value)):
            return None
        return self.session.key_for_token(token)

    def _bridge(self):
        if self._bridge_obj is None:
            self._bridge_obj = _make_bridge()
            self._bridge_obj.delivered.connect(self._on_decoded)
        return self._bridge_obj

    def _submit_decode(self, key: str, objects: list[dict], multimask: bool, generation: int, sel) -> None:
        session = self.session
        bridge = self._bridge()

        def work():
            with session.use(key):
                return _predict_objects(session, objects, multimask)

        def done(outcome) -> None:  # on the prompt thread (or here, for a dropped request)
            bridge.delivered.emit((outcome, generation, sel))

        self._in_flight += 1
        self.prompt_thread.submit(work, done)

    def _on_decoded(self, item) -> None:
        """A prompt-thread result, on the GUI thread: show it unless newer prompts exist."""
        outcome, generation, sel = item
        self._in_flight -= 1
        if self._closed or outcome.dropped:
            return
        if outcome.error is not None:
            from napari.utils.notifications import show_error

            exc = outcome.error
            msg = str(exc) if isinstance(exc, SegSuiteError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, SegSuiteError):
                import logging

                logging.getLogger(__name__).error("Prompt decoding failed", exc_info=exc)
            self.last_preview_error = exc
            show_error(msg)
            self.message.value = msg
            return
        if generation == self._generation:
            self._show_objects(outcome.value, sel)
        self.start_prefetch()

    @property
    def preview_busy(self) -> bool:
        """Whether a preview is being computed or waits to be shown."""
        return self.jobs.busy or self._in_flight > 0 or self._timer.isActive() or self._pending

    def _on_destroyed(self, *_) -> None:
        try:
            self.shutdown()
        except Exception:  # an exception in a Qt slot at exit would abort the process
            import logging

            logging.getLogger(__name__).exception("Stopping the SAM threads failed")

    def shutdown(self) -> None:
        """Stop the widget's threads (the viewer or the widget is closing). Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # at exit Qt may have deleted the timer already
            self._timer.stop()
        self.prompt_thread.close(timeout=10)
        self.prefetch_thread.close(timeout=10)

    def _on_done(self, how: str) -> None:
        super()._on_done(how)
        if self._pending:
            self._pending = False
            self.schedule_preview()

    def _show_objects(self, results: list[dict], sel) -> None:
        self._objects = results
        self._sel = sel
        for i, button in enumerate(self.candidate_buttons):
            single = len(results) == 1 and i < len(results[0]["scores"])
            button.enabled = single
            button.text = f"{i + 1}: {results[0]['scores'][i]:.2f}" if single else f"{i + 1}"
        self._render_preview()

    def _render_preview(self) -> None:
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers:
            return
        if self._sel is None or tuple(layer.data.shape) != tuple(self._sel.layer_shape):
            return
        plane = np.zeros(self._sel.shape, dtype=layer.data.dtype)
        for k, obj in enumerate(self._objects):
            plane[obj["masks"][obj["choice"]]] = min(k + 1, 255)
        layer.data[...] = 0
        layer.data[self._sel.labels_index] = plane
        layer.refresh()
        if self._objects:
            best = self._objects[0]
            self.message.value = (
                f"{len(self._objects)} object(s); candidate {best['choice'] + 1} "
                f"(IoU {best['scores'][best['choice']]:.2f}). Shift-C commits."
            )

    def select_candidate(self, index: int) -> None:
        """Show candidate ``index`` (0, 1, 2) of a single object."""
        if len(self._objects) != 1 or index >= len(self._objects[0]["scores"]):
            return
        self._objects[0]["choice"] = index
        self._render_preview()

    # -- prefetch -----------------------------------------------------------------------------
    def neighbour_planes(self, tokens: bool = False) -> list:
        """The planes before and after the current one along the innermost slider (GUI thread).

        With ``tokens=True``, ``(token, plane)`` pairs (see :meth:`plane_token`).
        """
        image = self.selected_image()
        _, sel = current_plane(self.viewer, image)
        data = image.data[0] if getattr(image, "multiscale", False) else image.data
        planes = []
        for axis, i in enumerate(sel.index[: len(sel.layer_shape)]):
            if isinstance(i, slice):
                continue
            for j in (i + 1, i - 1):
                if 0 <= j < data.shape[axis]:
                    idx = list(sel.index)
                    idx[axis] = j
                    plane = np.asarray(data[tuple(idx)])
                    planes.append((self.plane_token(image, tuple(idx)), plane) if tokens else plane)
            break  # the innermost slider only (z, or t for 2D+t)
        return planes

    def start_prefetch(self) -> None:
        """Encode the neighbouring planes on the low-priority prefetch thread, one at a time.

        The encoder runs beside the prompt decoder (separate predictors, no
        shared state) at the lowest CPU priority, and pauses between its
        blocks while prompts are decoded; each plane is encoded once and then
        answers from the cache.
        """
        if not self.prefetch.value or self.session is None or self._closed:
            return
        if self.prefetch_thread.busy:
            return
        session = self.session
        try:
            todo = [(t, p) for t, p in self.neighbour_planes(tokens=True) if session.key_for_token(t) is None]
        except SegSuiteError:
            return
        if not todo:
            return
        thread = self.prefetch_thread

        def work():
            from napari_segsuite.core.progress import run_sync

            for token, plane in todo:
                if thread.closed:
                    return
                key = run_sync(session.encode_job(plane, background=True, stop=lambda: thread.closed))
                session.remember_token(token, key)
                self.prefetched.append(key)

        thread.submit(work)

    # -- commit, clear, undo ----------------------------------------------------------------
    def _target_name(self, image) -> str:
        return output_layer_name(image, "sam")

    def _find_target(self, image, sel, *, create: bool):
        if self.target.value is not None and self.target.value in self.viewer.layers:
            return find_or_create_labels(self.viewer, image, sel, self.target.value.name, target=self.target.value)
        name = self._target_name(image)
        if not create and name not in self.viewer.layers:
            return None
        return find_or_create_labels(self.viewer, image, sel, name)

    def commit(self) -> None:
        """Write the previewed object(s) into the target Labels layer under new ids."""
        from napari.utils.notifications import show_error, show_info

        if not self._objects or self._sel is None:
            show_info("Nothing to commit: add prompts and wait for the preview.")
            return
        try:
            image = self.selected_image()
            sel = self._sel
            target = self._find_target(image, sel, create=True)
        except SegSuiteError as exc:
            show_error(str(exc))
            self.message.value = str(exc)
            return
        old = np.asarray(target.data[sel.labels_index])
        new = old.copy()
        refine = int(self.refine_id.value)
        next_id = next_free_id(target.data)
        features = {}
        written = []
        for obj in self._objects:
            mask = obj["masks"][obj["choice"]]
            if refine and len(self._objects) == 1:
                label = refine
                new[new == refine] = 0
            else:
                label = next_id
                next_id += 1
            put = mask & ((new == 0) | bool(self.overwrite.value))
            if not put.any():
                continue
            new[put] = label
            written.append(label)
            features[label] = {"score": float(obj["scores"][obj["choice"]]), "model": self.session.runner.name}
            if "class_name" in obj:  # found by a concept
                features[label]["class_name"] = obj["class_name"]
        if not written:
            show_info("The object has no free pixels left (tick 'overwrite' to replace labels).")
            return
        write_plane(
            self.viewer, image, sel, new, task="prompt", target=target,
            provenance={"model": self.session.runner.provenance(), "last_ids": written},
            extra_features=features,
        )
        self.message.value = f"Committed label(s) {', '.join(map(str, written))} to '{target.name}'."
        self.clear()
        self.autosave(target, image)

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        self._generation += 1
        for layer in (self.points_layer, self.boxes_layer):
            if layer is not None and len(layer.data):
                if layer is self.boxes_layer:
                    layer.data = []
                else:
                    layer.data = np.zeros((0, layer.ndim))
        self._show_objects([], self._sel)

    def _undo(self, redo: bool) -> None:
        try:
            image = self.selected_image()
            _, sel = current_plane(self.viewer, image)
            target = self._find_target(image, sel, create=False)
        except SegSuiteError:
            return
        if target is not None:
            (target.redo if redo else target.undo)()
            self.autosave(target, image)

    # -- autosave ------------------------------------------------------------------------------
    def autosave_path(self, target, image) -> Path:
        """Where the target layer is autosaved: next to the image file, or in the chosen folder."""
        chosen = str(self.autosave_dir.value)
        if chosen not in ("", "."):
            folder = Path(chosen)
        elif getattr(image.source, "path", None):
            folder = Path(image.source.path).parent
        else:
            folder = self.store.cache_dir / "autosave"
        safe = re.sub(r"[^\w.-]+", "_", target.name).strip("_")
        return folder / f"{safe}.segsuite-autosave.npy"

    def autosave(self, target, image) -> None:
        """Save the target layer's data in a background thread (atomic rename)."""
        path = self.autosave_path(target, image)
        data = np.array(target.data, copy=True)

        def save() -> None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".part")
                with open(tmp, "wb") as f:
                    np.save(f, data)
                os.replace(tmp, path)
            except OSError as exc:  # reported, never fatal: the labels are still in the layer
                import logging

                logging.getLogger(__name__).warning("Autosave to %s failed: %s", path, exc)

        if self._autosave_thread is not None:
            self._autosave_thread.join()
        self._autosave_thread = threading.Thread(target=save, daemon=True)
        self._autosave_thread.start()
        self.last_autosave = path

    def restore_autosave(self) -> None:
        """Load the autosaved labels into the target layer (one undo step)."""
        from napari.utils.notifications import show_error, show_info

        try:
            image = self.selected_image()
            _, sel = current_plane(self.viewer, image)
            target = self._find_target(image, sel, create=True)
        except SegSuiteError as exc:
            show_error(str(exc))
            return
        path = self.autosave_path(target, image)
        if not path.is_file():
            show_info(f"No autosave at {path}.")
            return
        saved = np.load(path)
        if saved.shape != target.data.shape:
            show_error(f"The autosave at {path} has shape {saved.shape}, the layer {target.data.shape}; not restored.")
            return
        changed = np.nonzero(np.asarray(target.data) != saved)
        if changed[0].size:
            target.data_setitem(changed, saved[changed])
        self.message.value = f"Restored {changed[0].size} pixels from {path}."

    # -- smoke --------------------------------------------------------------------------------------
    def smoke(self) -> None:
        """Headless check: a tiny SAM, one point in the middle of the image, commit."""
        import tempfile
        import time

        from qtpy.QtWidgets import QApplication

        from napari_segsuite.testing.tiny_sam import build_tiny_sam
        from napari_segsuite.widgets.base import LOCAL

        path = build_tiny_sam(Path(tempfile.mkdtemp()) / "tiny_sam.pth")
        self.models.model.value = LOCAL
        self.models.local.value = str(path)
        self.device.value = "cpu"
        image = self.selected_image()
        points, _ = self.ensure_prompt_layers()
        # The prompt layers share the image's transform: data coordinates are the image's.
        center = np.asarray(image.world_to_data(self.viewer.dims.point), dtype=float)
        center[-2:] = [s / 2 for s in image.data.shape[image.ndim - 2: image.ndim]]
        points.add(center)
        deadline = time.time() + 120
        while (not self._objects or self.jobs.busy or self._timer.isActive()) and time.time() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)
        if not self._objects:
            raise RuntimeError(f"SAM smoke: no preview ({self.message.value})")
        self.commit()
        target = self.viewer.layers[self._target_name(image)]
        if not np.asarray(target.data).any():
            raise RuntimeError("SAM smoke: nothing was committed")
        self._smoke_segment_everything(image)

    def _smoke_segment_everything(self, image) -> None:
        """Smoke: 'segment everything' on the sample with thresholds a random tiny model passes."""


        permissive = {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                      "box_nms_thresh": 0.7}
        for key, value in permissive.items():
            self.auto_params[key].value = value
        self.last_auto_layer = None
        self.segment_everything()
        self.jobs.wait(300, "SAM smoke: 'segment everything'")
        layer = self.last_auto_layer
        if layer is None or not np.asarray(layer.data).any():
            raise RuntimeError(f"SAM smoke: 'segment everything' gave no labels ({self.message.value})")

    # -- segment everything and propagation (issue 4) ---------------------------------------
    def _init_automatic_and_propagation(self) -> None:
        """The 'Segment everything' and 'Propagate' sections (added below the prompt options)."""
        from magicgui.widgets import FloatSpinBox, Label

        self.last_auto_layer = None
        self.auto_button = PushButton(text="Segment everything")
        self.auto_show = CheckBox(text="Show 'segment everything' parameters", value=False)
        # SamAutomaticMaskGenerator's parameters, same names and defaults
        self.auto_params = {
            "points_per_side": SpinBox(label="points_per_side", value=32, min=1, max=256),
            "points_per_batch": SpinBox(label="points_per_batch", value=64, min=1, max=4096),
            "pred_iou_thresh": FloatSpinBox(label="pred_iou_thresh", value=0.88, min=-1.0, max=1.0, step=0.01),
            "stability_score_thresh": FloatSpinBox(label="stability_score_thresh", value=0.95, min=0.0, max=1.0,
                                                   step=0.01),
            "stability_score_offset": FloatSpinBox(label="stability_score_offset", value=1.0, min=0.0, max=100.0,
                                                   step=0.1),
            "box_nms_thresh": FloatSpinBox(label="box_nms_thresh", value=0.7, min=0.0, max=1.0, step=0.05),
            "crop_n_layers": SpinBox(label="crop_n_layers", value=0, min=0, max=4),
            "min_mask_region_area": SpinBox(label="min_mask_region_area", value=0, min=0, max=10**7),
            "tile_size": SpinBox(label="tile_size", value=0, min=0, max=10**5,
                                 tooltip="0: off. Else tiles of this many pixels at full resolution (large images)"),
            "tile_overlap": SpinBox(label="tile_overlap", value=256, min=0, max=10**5),
        }
        self.auto_box = Container(widgets=list(self.auto_params.values()), labels=True, visible=False)
        self.auto_show.changed.connect(lambda v: setattr(self.auto_box, "visible", bool(v)))
        self.prop_direction = ComboBox(label="Propagate", choices=["both", "forward", "backward"], value="both")
        self.prop_label = SpinBox(label="Object id", value=0, min=0, max=2**31 - 1,
                                  tooltip="The label to carry to the other planes (0: the last committed one)")
        self.prop_max = SpinBox(label="Max planes", value=0, min=0, max=10**6, tooltip="Per direction; 0: no limit")
        self.prop_floor = FloatSpinBox(label="IoU floor", value=0.2, min=0.0, max=1.0, step=0.05,
                                       tooltip="Stop when a plane's mask overlaps the previous one less than this")
        self.prop_button = PushButton(text="Propagate through planes")
        self.task_options.extend([
            Label(value="Segment everything"), self.auto_button, self.auto_show, self.auto_box,
            Label(value="Propagation (z / time)"), self.prop_direction, self.prop_label, self.prop_max,
            self.prop_floor, self.prop_button,
        ])
        self.auto_button.changed.connect(self.segment_everything)
        self.prop_button.changed.connect(self.propagate)

    # -- find a concept (SAM 3) ----------------------------------------------------------------
    def _init_find(self) -> None:
        """The 'Find' section: every instance of a concept (in words, or like the boxes) with SAM 3."""
        from magicgui.widgets import FloatSpinBox, Label, LineEdit

        self.find_text = LineEdit(label="Find", value="")
        self.find_text.tooltip = "A concept in words (e.g. 'nucleus'): SAM 3 previews every instance; Shift-C commits"
        self.find_exemplars = CheckBox(text="Boxes are exemplars (more like these)", value=False)
        self.find_conf = FloatSpinBox(label="Find score", value=0.5, min=0.0, max=1.0, step=0.05)
        self.find_button = PushButton(text="Find all")
        self.task_options.extend([
            Label(value="Find a concept (SAM 3)"), self.find_text, self.find_exemplars, self.find_conf,
            self.find_button,
        ])
        self.find_button.changed.connect(self.find)
        self.find_text.native.returnPressed.connect(self.find)

    def find(self) -> None:
        """Preview every instance of the Find concept (and/or the exemplar boxes) on the current plane.

        Needs the SAM 3 folder as the model (its tracker answers clicks, its concept
        model answers Find). The instances become the previewed objects: review them,
        then Shift-C commits them all under new ids, like any prompt's object.
        """
        from napari_segsuite.models.open_vocab_common import check_concepts

        if self._refuse_when_busy():
            return
        try:
            image, plane, sel = self._job_plane()
            concepts = check_concepts(str(self.find_text.value))
            exemplars = None
            if self.find_exemplars.value and self.boxes_layer is not None and self.boxes_layer in self.viewer.layers:
                boxes = [s.box for s in shapes_on_plane(self.viewer, self.boxes_layer, image, sel)]
                exemplars = np.asarray(boxes, dtype=float).reshape(-1, 4) if boxes else None
            if not concepts and exemplars is None:
                raise InputError("Type a concept to find (e.g. 'nucleus'), or tick exemplars and draw boxes.")
        except SegSuiteError as exc:
            self._report(exc)
            return
        conf = float(self.find_conf.value)

        def job():
            from napari_segsuite.core.image import prepare_rgb_uint8

            session = yield from self._session_job(plane)
            runner = session.runner
            if not getattr(runner, "takes_exemplars", False):
                raise InputError(
                    f"Find needs SAM 3 as the model (the facebook/sam3 folder); '{runner.name}' takes clicks and "
                    "boxes only."
                )
            yield Progress(0, None, "Finding " + (", ".join(concepts) or "objects like the boxes"))
            return runner.predict_instances(prepare_rgb_uint8(plane), conf=conf, concepts=concepts,
                                            exemplars=exemplars)

        def on_result(pred) -> None:
            order = np.argsort(-pred.scores, kind="stable")
            names = list(concepts) or ["exemplar"]
            objects = [{"masks": pred.masks[i][None], "scores": pred.scores[i: i + 1], "choice": 0,
                        "class_name": names[int(pred.class_ids[i])]} for i in order]
            self.ensure_prompt_layers()
            self._generation += 1  # previews of earlier prompts in flight are stale now
            self._show_objects(objects, sel)
            what = ", ".join(concepts) or "the exemplars"
            self.message.value = (
                f"Found {len(objects)} instance(s) of {what}. Review them, then Shift-C commits them all."
                if objects else f"No instance of {what} above score {conf:.2f}; lower 'Find score'."
            )

        self._start(job, on_result, "Find")

    def automatic_params(self):
        """The 'segment everything' parameters as :class:`AutoParams`."""
        from napari_segsuite.tasks.sam_automatic import AutoParams

        values = {k: w.value for k, w in self.auto_params.items()}
        values["tile_size"] = int(values["tile_size"]) or None
        return AutoParams(**values)

    def _report(self, exc: SegSuiteError) -> None:
        from napari.utils.notifications import show_error

        show_error(str(exc))
        self.message.value = str(exc)

    def _refuse_when_busy(self) -> bool:
        """True (and a message) when a job is running: one job at a time."""
        if self.jobs.busy:
            self.message.value = "Busy; wait for the running job or cancel it."
        return self.jobs.busy

    def _job_plane(self):
        """The chosen image layer, its current plane and the selection (GUI thread).

        Raises a :class:`SegSuiteError` the user can act on (no image, no model file).
        """
        image = self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        plane, sel = current_plane(self.viewer, image)
        return image, plane, sel

    def segment_everything(self) -> None:
        """Class-agnostic masks for the current plane into ``<image> [sam auto]`` (in a worker)."""
        from napari_segsuite.tasks.sam_automatic import automatic_job

        if self._refuse_when_busy():
            return
        try:
            image, plane, sel = self._job_plane()
            params = self.automatic_params()
        except SegSuiteError as exc:
            self._report(exc)
            return

        def job():
            session = yield from self._session_job(plane)
            result = yield from automatic_job(session, plane, params)
            return session, result

        def on_result(value) -> None:
            session, result = value
            skip = {"index", "area"} | {c for c in result.table.columns if c.startswith("bbox_")}
            extra = {int(row["index"]): {k: row[k] for k in result.table.columns if k not in skip}
                     for _, row in result.table.iterrows()}
            layer = write_plane(
                self.viewer, image, sel, result.labels, task="sam auto",
                provenance={"model": session.runner.provenance(), "params": {
                    k: v for k, v in params.__dict__.items() if k != "point_grids"}},
                extra_features=extra,
            )
            self.last_auto_layer = layer
            self.message.value = f"Segment everything: {len(result.table)} object(s) in '{layer.name}'."

        self._start(job, on_result, "Segment everything")

    def _propagation_axis(self, sel) -> int:
        """The labels axis propagation runs along: the innermost slider (z, or t for 2D+t)."""
        sliders = [a for a, i in enumerate(sel.labels_index) if not isinstance(i, slice)]
        if not sliders:
            raise InputError("Propagation needs a 3D (z-stack or time series) image; this one is 2D.")
        return sliders[-1]

    def _last_committed(self, target) -> int:
        meta = target.metadata.get("segsuite", {})
        ids = meta.get("last", meta).get("last_ids") or []
        return int(ids[-1]) if ids else 0

    def propagate(self) -> None:
        """Carry an object of the current plane to the neighbouring planes (worker; one undo step)."""
        from napari_segsuite.tasks.propagation import propagate_job

        if self._refuse_when_busy():
            return
        try:
            image, plane, sel = self._job_plane()
            axis = self._propagation_axis(sel)
            target = self._find_target(image, sel, create=False)
            if target is None:
                raise InputError("Commit an object first: propagation starts from a committed label.")
            label = int(self.prop_label.value) or self._last_committed(target)
            start_mask = np.asarray(target.data[sel.labels_index]) == label if label else None
            if start_mask is None or not start_mask.any():
                raise InputError(f"Label {label} is not on this plane; pick the object id to propagate.")
        except SegSuiteError as exc:
            self._report(exc)
            return
        data = image.data[0] if getattr(image, "multiscale", False) else image.data
        planes = _PlaneStack(data, sel.index, axis)
        start = int(sel.labels_index[axis])
        options = {"direction": self.prop_direction.value, "iou_floor": float(self.prop_floor.value),
                   "max_planes": int(self.prop_max.value) or None}

        def job():
            session = yield from self._session_job(plane)
            return (yield from propagate_job(session, planes, start, start_mask, **options))

        def on_result(masks) -> None:
            written = self.write_propagation(target, sel, axis, label, masks)
            self.message.value = (
                f"Propagated label {label} to {len(written)} plane(s)"
                + (f": {min(written)}…{max(written)}." if written else ".")
            )

        self._start(job, on_result, "Propagation")

    def write_propagation(self, target, sel, axis: int, label: int, masks: dict) -> list[int]:
        """Write ``{plane: mask}`` under ``label`` into ``target`` as one undo step.

        On each plane the object's earlier pixels are replaced; other objects
        keep theirs unless 'overwrite' is ticked.
        """
        from napari_segsuite.layers import _expand_index, _update_features

        coords, values, written = [], [], []
        for z, mask in sorted(masks.items()):
            idx = list(sel.labels_index)
            idx[axis] = int(z)
            idx = tuple(idx)
            old = np.asarray(target.data[idx])
            new = old.copy()
            new[new == label] = 0
            put = np.asarray(mask, dtype=bool) & ((new == 0) | bool(self.overwrite.value))
            new[put] = label
            changed = np.nonzero(new != old)
            if changed[0].size:
                coords.append(_expand_index(idx, changed))
                values.append(new[changed])
            written.append(int(z))
        if coords:
            full = tuple(np.concatenate([c[d] for c in coords]) for d in range(target.data.ndim))
            with target.block_history():
                target.data_setitem(full, np.concatenate(values))
            _update_features(target, sel.labels_index, None)
        return written


_VERSIONS = itertools.count(1)


@functools.cache
def _bridge_class():
    from qtpy.QtCore import QObject, Signal

    class Bridge(QObject):
        delivered = Signal(object)

    return Bridge


def _make_bridge():
    """A QObject whose ``delivered`` signal carries prompt-thread results to the GUI thread (lazy Qt import)."""
    return _bridge_class()()


def _predict_objects(session, objects: list[dict], multimask: bool) -> list[dict]:
    """The preview objects: one batched decoder pass for plain boxes, else one prediction per object."""
    plain_boxes = len(objects) > 1 and all(
        o["box"] is not None and not len(o["points"]) and "mask" not in o for o in objects
    )
    if plain_boxes:
        masks, scores = session.predict_boxes(np.array([o["box"] for o in objects]))
        return [{"masks": m[None], "scores": sc[None], "choice": 0} for m, sc in zip(masks, scores, strict=True)]
    results = []
    for obj in objects:
        masks, scores = session.predict(
            points=obj["points"] if len(obj["points"]) else None,
            point_labels=obj["labels"] if len(obj["points"]) else None,
            box=obj["box"], mask=obj.get("mask"), multimask=multimask, lazy=True,
        )
        choice = int(np.argmax(scores))
        masks[choice]  # the shown candidate is upsampled here, in the thread; the others when picked
        results.append({"masks": masks, "scores": scores, "choice": choice})
    return results


class _PlaneStack:
    """The planes of an nD image along one axis, read one at a time."""

    def __init__(self, data, index: tuple, axis: int):
        self.data, self.index, self.axis = data, index, axis

    def __len__(self) -> int:
        return int(self.data.shape[self.axis])

    def __getitem__(self, i: int) -> np.ndarray:
        idx = list(self.index)
        idx[self.axis] = int(i)
        return np.asarray(self.data[tuple(idx)])
