"""The SAM dock's "Prompts" section: prompt layers, polarity, the live preview, candidates.

Prompts live in two layers next to the dock's image, created as soon as an image is chosen:

- ``<image> [sam points]``: a Points layer; each point has a ``positive`` feature (green
  positive, red negative). A left click adds a positive point (a negative one while
  "New points are negative" is ticked, flipped with **Shift-N**); a right click or a
  Ctrl-click adds a negative point in one gesture.
- ``<image> [sam boxes]``: a Shapes layer; every rectangle is its own object, all boxes
  are predicted as one batch; points inside a box refine it; ellipses and polygons act as
  their box plus a mask prompt (SAM). Each box has an ``exemplar`` feature for Find (SAM 3):
  1 "more like this" (yellow), 0 "not like this" (red, drawn with a Ctrl-drag); a
  "not like this" box is no object of its own.

After each prompt change (debounced) the objects appear in ``<image> [sam preview]``. The
first prompt on a plane that is not encoded yet encodes it, with progress in the dock (the
encoding starts once the canvas has drawn that prompt: where OpenGL is software-rendered,
drawing and the encoder would share the cores, and the click would show late); on an
encoded plane the prompts are decoded on one persistent thread (only the newest
request; a result that arrives after newer prompts is dropped). Neighbouring planes can be
prefetched on a low-priority thread. The candidates of a single object are on buttons
1/2/3 (**Alt-1/2/3**); the shown one is checked.

Choosing another image in the Image box, or activating another image's layer, moves the
prompts and the preview to that image (its own prompt layers; the preview is cleared).
"""

from __future__ import annotations

import contextlib

import numpy as np
from magicgui.widgets import CheckBox, Label, PushButton, SpinBox

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.vocabulary import LayerTask
from napari_segsuite.layers import (
    aligned_layer_kwargs,
    full_resolution,
    output_layer_name,
    plane_selection,
    points_on_plane,
    region_layer_kwargs,
    region_shape,
    shapes_on_plane,
)
from napari_segsuite.tasks.sam_preview import objects_from_prompts, predict_objects
from napari_segsuite.tasks.sam_windows import PlaneView
from napari_segsuite.widgets.canvas_paint import PaintWatch, link_highlight_program
from napari_segsuite.widgets.sam_sections import SamSection
from napari_segsuite.widgets.scaffold import form, row

POSITIVE = "positive"
DEBOUNCE_MS = 120
#: The longest wait for the canvas to draw a new plane's first prompt before the plane's encoding starts.
FIRST_PAINT_MAX_MS = 250
COLORS = {True: "lime", False: "red"}
#: Mouse buttons and modifiers that add a negative point in one gesture.
NEGATIVE_GESTURES = "right-click or Ctrl-click"
PROMPT_SUFFIXES = ("sam points", "sam boxes", "sam preview")
EXEMPLAR = "exemplar"
BOX_COLORS = {1: "yellow", 0: "red"}
#: The gesture that draws a "not like this" exemplar box.
NEGATIVE_BOX_GESTURE = "Ctrl-drag"


def box_polarity(layer) -> np.ndarray:
    """The ``exemplar`` feature of every box of ``layer``: 1 "more like this", 0 "not like this"."""
    n = len(layer.data)
    features = layer.features
    if EXEMPLAR not in features.columns or len(features) != n:
        return np.ones(n, dtype=int)
    return np.asarray(features[EXEMPLAR].fillna(1), dtype=int)


class PromptSection(SamSection):
    """Prompt layers of the dock's image, polarity, the preview and its candidates."""

    title = "Prompts"

    def __init__(self, dock):
        super().__init__(dock)
        from qtpy.QtCore import QTimer

        from napari_segsuite.core.threads import ServiceThread

        self.hint = Label(value=(
            f"Click: positive point · {NEGATIVE_GESTURES}: negative\n"
            "Shift-C: commit · Shift-X: clear · Shift-N: flip polarity\n"
            f"Box: object / exemplar · {NEGATIVE_BOX_GESTURE} a box: 'not like this' exemplar (Find)"
        ))
        self.candidate_buttons = [PushButton(text=f"{i + 1}", enabled=False) for i in range(3)]
        for b in self.candidate_buttons:
            b.native.setCheckable(True)
        self.candidates = row(*self.candidate_buttons)
        self.negative = CheckBox(text="New points are negative (Shift-N)", value=False)
        self.multimask = CheckBox(text="Three candidates", value=True)
        self.refine_id = SpinBox(label="Refine label", value=0, min=0, max=2**31 - 1,
                                 tooltip="0: a new object; else this label is the mask prompt and is replaced")
        self.extend([self.hint, self.candidates, row(self.negative, self.multimask), form(self.refine_id)])
        self.points_layer = None
        self.boxes_layer = None
        self.preview_layer = None
        self._image_for_prompts = None
        self._sel = None
        self._pending = False
        self._in_flight = 0
        self._closed = False
        self._bridge_obj = None
        self.last_preview_error: BaseException | None = None
        self.prefetched: list[str] = []
        #: one long-lived thread decodes the prompts (newest request only): a warm OpenMP team
        self.prompt_thread = ServiceThread("segsuite-sam-prompts", keep="latest")
        #: neighbouring planes are encoded on a low-priority thread that pauses while prompts decode
        self.prefetch_thread = ServiceThread("segsuite-sam-prefetch", keep="all", nice=19)
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self.request_preview)
        self._paint_watch = PaintWatch(self.viewer, self.request_preview, FIRST_PAINT_MAX_MS, parent=dock.native)
        for i, button in enumerate(self.candidate_buttons):
            button.changed.connect(lambda _=None, i=i: self.select_candidate(i))
        self.negative.changed.connect(self._sync_polarity)
        self.multimask.changed.connect(self.schedule_preview)
        self.viewer.dims.events.current_step.connect(self._on_step)

    @property
    def preview(self):
        """The dock's :class:`~napari_segsuite.tasks.sam_preview.PreviewController`."""
        return self.dock.preview

    def key_bindings(self):
        """Shift-N flips the polarity of new points; Alt-1/2/3 pick a candidate."""
        return {
            "Shift-N": lambda v: setattr(self.negative, "value", not self.negative.value),
            "Alt-1": lambda v: self.select_candidate(0),
            "Alt-2": lambda v: self.select_candidate(1),
            "Alt-3": lambda v: self.select_candidate(2),
        }

    # -- prompt layers ------------------------------------------------------------------------
    def image_changed(self, image) -> None:
        """Move the prompts and the preview to ``image`` (its own prompt layers)."""
        from napari.layers import Image

        if image is None or image is self._image_for_prompts:
            return
        self.preview.clear()
        self._render_preview()
        # the points layer takes the focus, unless the user just activated an image layer itself
        self.attach(image, activate=not isinstance(self.viewer.layers.selection.active, Image))

    def ensure_prompt_layers(self):
        """Create (or find) the points, boxes and preview layers of the dock's image; returns (points, boxes)."""
        image = self.dock.selected_image()
        if self._image_for_prompts is not image or self.points_layer not in self.viewer.layers:
            self.attach(image)
        return self.points_layer, self.boxes_layer

    def attach(self, image, activate: bool = True) -> None:
        """Use ``image``'s prompt layers (created when missing); the points layer becomes active."""
        from napari.layers import Labels, Points, Shapes

        self._detach()
        previous = self.viewer.layers.selection.active
        self._image_for_prompts = image
        kwargs = aligned_layer_kwargs(image)  # prompts share the image transform: data coords agree
        ndim = image.ndim
        data = full_resolution(image)
        size = max(4.0, 0.01 * max(data.shape[image.ndim - 2: image.ndim]))
        name = output_layer_name(image, "sam points")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Points):
            points = self.viewer.layers[name]
        else:
            points = Points(np.zeros((0, ndim)), ndim=ndim, name=name,
                            features={POSITIVE: np.zeros(0, dtype=bool)}, size=size, **kwargs)
            self.viewer.add_layer(points)
        name = output_layer_name(image, "sam boxes")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Shapes):
            boxes = self.viewer.layers[name]
        else:
            boxes = Shapes(ndim=ndim, name=name, edge_color=BOX_COLORS[1], face_color="transparent",
                           features={EXEMPLAR: np.zeros(0, dtype=int)}, **kwargs)
            self.viewer.add_layer(boxes)
        if EXEMPLAR not in boxes.features.columns:
            boxes.features = boxes.features.assign(**{EXEMPLAR: np.ones(len(boxes.features), dtype=int)})
        boxes.feature_defaults = {EXEMPLAR: 1}
        name = output_layer_name(image, "sam preview")
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            preview = self.viewer.layers[name]
        else:
            sel = plane_selection(self.viewer, image)
            meta = {"task": LayerTask.SAM_PREVIEW, "role": "prompt"}
            if _large(sel.layer_shape):  # a large image: the preview holds the objects' windows only
                from napari_segsuite.core.tiling import Tile

                one = Tile(slice(0, 1), slice(0, 1))
                preview = Labels(np.zeros(region_shape(sel, one), dtype=np.uint8), name=name, opacity=0.5,
                                 metadata={"segsuite": {**meta, "windowed": True}},
                                 **region_layer_kwargs(image, sel, one))
            else:
                preview = Labels(np.zeros(sel.layer_shape, dtype=np.uint8), name=name, opacity=0.5,
                                 metadata={"segsuite": meta}, **kwargs)
            self.viewer.add_layer(preview)
        self.points_layer, self.boxes_layer, self.preview_layer = points, boxes, preview
        self._sync_polarity()
        points.events.data.connect(self._on_points_changed)
        boxes.events.data.connect(self.schedule_preview)
        boxes.events.data.connect(self._on_boxes_changed)
        if self._negative_gesture not in points.mouse_drag_callbacks:
            points.mouse_drag_callbacks.insert(0, self._negative_gesture)
        if self._box_gesture not in boxes.mouse_drag_callbacks:
            boxes.mouse_drag_callbacks.insert(0, self._box_gesture)
        if activate:
            self.focus_points()
        elif previous is not None and previous in self.viewer.layers:
            self.viewer.layers.selection.active = previous  # adding layers made the last one active
        # the first point's highlight is drawn at the click: link its shader program now
        link_highlight_program(self.viewer, points)

    def _detach(self) -> None:
        for layer, slot in ((self.points_layer, self._on_points_changed), (self.boxes_layer, self.schedule_preview)):
            if layer is not None:
                with contextlib.suppress(Exception):
                    layer.events.data.disconnect(slot)
        if self.boxes_layer is not None:
            with contextlib.suppress(Exception):
                self.boxes_layer.events.data.disconnect(self._on_boxes_changed)
            if self._box_gesture in self.boxes_layer.mouse_drag_callbacks:
                self.boxes_layer.mouse_drag_callbacks.remove(self._box_gesture)
        if self.points_layer is not None and self._negative_gesture in self.points_layer.mouse_drag_callbacks:
            self.points_layer.mouse_drag_callbacks.remove(self._negative_gesture)

    def focus_points(self) -> None:
        """Make the points layer the active layer, in add mode (the next click adds a point)."""
        layer = self.points_layer
        if layer is None or layer not in self.viewer.layers:
            return
        self.viewer.layers.selection.active = layer
        layer.mode = "add"

    def _negative_gesture(self, layer, event):
        """Before napari's add-point handler: a right click or Ctrl-click adds a negative point."""
        negative = event.button == 2 or "Control" in {getattr(m, "name", str(m)) for m in event.modifiers}
        _set_default(layer, POSITIVE, not (negative or self.negative.value))
        yield

    @staticmethod
    def _box_gesture(layer, event):
        """Before napari's drawing handler: a box drawn with Ctrl held is a "not like this" exemplar."""
        negative = "Control" in {getattr(m, "name", str(m)) for m in event.modifiers}
        _set_default(layer, EXEMPLAR, 0 if negative else 1)
        yield

    def _on_boxes_changed(self, event=None) -> None:
        """Yellow "more like this", red "not like this" boxes; set only when a colour is wrong."""
        from napari.utils.colormaps.standardize_color import transform_color

        action = str(getattr(event, "action", "") or "")
        layer = self.boxes_layer
        if action.endswith(("ing", "ING")) or layer is None or len(layer.data) == 0:
            return
        polarity = box_polarity(layer)
        expected = np.where(polarity[:, None] == 1, transform_color(BOX_COLORS[1]), transform_color(BOX_COLORS[0]))
        edge = np.asarray(layer.edge_color)
        if edge.shape != expected.shape or not np.allclose(edge, expected):
            layer.edge_color = [BOX_COLORS[int(p)] for p in polarity]

    def _sync_polarity(self, _=None) -> None:
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {POSITIVE: not self.negative.value}
            self._color_points()

    def reset_polarity(self) -> None:
        """New points are positive again."""
        self.negative.value = False
        self._sync_polarity()

    def _color_points(self) -> None:
        """Green positive, red negative points; set only when a colour is wrong (flat cost per click)."""
        from napari.utils.colormaps.standardize_color import transform_color

        layer = self.points_layer
        if layer is None or len(layer.data) == 0 or len(layer.features) != len(layer.data):
            return
        positive = np.asarray(layer.features[POSITIVE], dtype=bool)
        expected = np.where(positive[:, None], transform_color(COLORS[True]), transform_color(COLORS[False]))
        face = np.asarray(layer.face_color)
        if face.shape != expected.shape or not np.allclose(face, expected):
            layer.face_color = [COLORS[bool(p)] for p in positive]

    def _on_points_changed(self, event=None) -> None:
        action = str(getattr(event, "action", "") or "")
        if action.endswith(("ing", "ING")):  # napari's "adding"/"removing"/"changing": the data is not final yet
            return
        self._color_points()
        self.schedule_preview()

    # -- prompts -> preview -------------------------------------------------------------------
    def schedule_preview(self, event=None) -> None:
        """Ask for a new preview after the prompts settle (debounced).

        On a plane that is not encoded yet the encoding starts without the debounce, once
        the canvas has drawn the prompt (at most :data:`FIRST_PAINT_MAX_MS` later): it does
        not depend on the prompts, and prompts added meanwhile are decoded when it ends.
        """
        self.preview.new_prompts()
        settled = not str(getattr(event, "action", "") or "").endswith(("ing", "ING"))  # not mid-drag
        if settled and self._plane_needs_encoding():
            self._timer.stop()
            self._paint_watch.arm()
            return
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.start()

    def _on_step(self, event=None) -> None:
        """The slider moved: a preview of the new plane's prompts after the usual debounce (no encode while scrubbing)."""
        self.preview.new_prompts()
        self._paint_watch.disarm()  # no encoding while scrubbing
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.start()

    def _plane_needs_encoding(self) -> bool:
        """Whether the current plane of an in-memory image has no embedding yet (no job running).

        Lazy (dask, zarr) images and large planes prompted in windows answer False (debounced as before).
        """
        dock = self.dock
        if dock.jobs.busy or self.points_layer is None:
            return False
        image = dock.image.value
        if image is None or image not in self.viewer.layers or not isinstance(full_resolution(image), np.ndarray):
            return False
        try:
            sel = plane_selection(self.viewer, image)
        except SegSuiteError:
            return False
        if dock.windowed_prompts(image, sel) is not None:  # a large plane: its windows are encoded per prompt
            return False
        return dock.cached_key(dock.plane_token(image, sel.index)) is None

    def gather_prompts(self):
        """Read the prompts on the current plane (GUI thread). Returns (image, plane, sel, objects).

        ``plane`` is a lazy :class:`~napari_segsuite.tasks.sam_windows.PlaneView` (nothing is
        read here); an ellipse or polygon keeps its ``shape`` (its mask is drawn for the
        plane, or for its window on a large plane, when it is predicted).
        """
        image = self.dock.selected_image()
        sel = plane_selection(self.viewer, image)
        plane = PlaneView(full_resolution(image), sel.index)
        coords = np.zeros((0, 2))
        labels = np.zeros(0, dtype=int)
        if self.points_layer is not None and self.points_layer in self.viewer.layers:
            coords, which = points_on_plane(self.viewer, self.points_layer, image, sel)
            labels = np.asarray(self.points_layer.features[POSITIVE], dtype=bool)[which].astype(int)
        shapes = []
        if self.boxes_layer is not None and self.boxes_layer in self.viewer.layers:
            positive = box_polarity(self.boxes_layer)
            shapes = [s for s in shapes_on_plane(self.viewer, self.boxes_layer, image, sel) if positive[s.index]]
        objects = objects_from_prompts(coords, labels, shapes, sel.shape, draw_masks=False)
        refine = int(self.refine_id.value)
        if refine and len(objects) == 1 and "shape" not in objects[0]:
            if self.dock.windowed_prompts(image, sel) is not None:
                raise InputError("'Refine label' works on planes prompted whole; on a large plane delete the label "
                                 "and prompt the object again.")
            target = self.dock.find_target(image, sel, create=False)
            if target is not None:
                prior = np.asarray(target.data[sel.labels_index]) == refine
                if not prior.any():
                    raise InputError(f"Label {refine} is not on this plane; set 'Refine label' to 0 or pick it.")
                objects[0]["mask"] = prior
        return image, plane, sel, objects

    def request_preview(self) -> None:
        """Predict the objects of the current prompts; show them in the preview.

        On a plane whose embedding is cached, the prompts go to the persistent prompt
        thread (only the newest request is decoded; the result comes back through a Qt
        signal). Otherwise a job with progress and Cancel loads the model and encodes the
        plane first (the first click on a new plane).
        """
        dock = self.dock
        if dock.jobs.busy:
            self._pending = True
            return
        if self.points_layer is None or dock.image.value not in self.viewer.layers:
            return  # an automatic trigger with nothing to prompt (e.g. layers being removed)
        try:
            image, plane, sel, objects = self.gather_prompts()
            dock.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        except SegSuiteError as exc:
            dock.report(exc)
            return
        if not objects:
            self.preview.clear()
            self._show(sel)
            return
        generation = self.preview.generation
        multimask = bool(self.multimask.value) and len(objects) == 1
        token = dock.plane_token(image, sel.index)
        source = dock.preview_source(image, sel)
        windowed = dock.windowed_prompts(image, sel)
        if windowed is not None:
            try:
                cached = windowed.all_cached(objects)
            except SegSuiteError as exc:
                dock.report(exc)
                return
            if cached:
                self._submit_work(lambda: windowed.predict(objects, multimask), generation, sel, source)
                return
        key = dock.cached_key(token) if windowed is None else None
        if key is not None:
            self._submit_decode(key, _whole_plane(objects, sel.shape), multimask, generation, sel, source)
            return

        def job():
            yield from dock.load_session_job()
            windows = dock.windowed_prompts(image, sel) if windowed is None else windowed
            if windows is not None:
                return (yield from windows.predict_job(objects, multimask))
            session = yield from dock.session_job(plane, token)
            with session.use(session.image_key):
                return predict_objects(session, _whole_plane(objects, sel.shape), multimask)

        def on_result(results) -> None:
            if self.preview.offer(results, source, generation):
                self._show(sel)
            self.start_prefetch()

        what = "Encoding the window" if windowed is not None else "Encoding the plane"
        dock.start_job(job, on_result, what if dock.session is not None else "Loading SAM")

    def _bridge(self):
        if self._bridge_obj is None:
            self._bridge_obj = _make_bridge()
            self._bridge_obj.delivered.connect(self._on_decoded)
        return self._bridge_obj

    def _submit_decode(self, key: str, objects: list[dict], multimask: bool, generation: int, sel, source) -> None:
        session = self.dock.session

        def work():
            with session.use(key):
                return predict_objects(session, objects, multimask)

        self._submit_work(work, generation, sel, source)

    def _submit_work(self, work, generation: int, sel, source) -> None:
        """Run ``work()`` (decoding only) on the prompt thread; its result comes back to the GUI thread."""
        bridge = self._bridge()
        if self.dock.session is not None:
            inner = work

            def work():
                with self.dock.session.prompting():  # a prefetch pauses meanwhile
                    return inner()

        def done(outcome) -> None:  # on the prompt thread (or here, for a dropped request)
            bridge.delivered.emit((outcome, generation, sel, source))

        self._in_flight += 1
        self.prompt_thread.submit(work, done)

    def _on_decoded(self, item) -> None:
        """A prompt-thread result, on the GUI thread: show it unless newer prompts exist."""
        outcome, generation, sel, source = item
        self._in_flight -= 1
        if self._closed or outcome.dropped:
            return
        if outcome.error is not None:
            exc = outcome.error
            if not isinstance(exc, SegSuiteError):
                import logging

                logging.getLogger(__name__).error("Prompt decoding failed", exc_info=exc)
            self.last_preview_error = exc
            self.dock.report(exc)
            return
        if self.preview.offer(outcome.value, source, generation):
            self._show(sel)
        self.start_prefetch()

    @property
    def busy(self) -> bool:
        """Whether a preview is being computed or waits to be shown."""
        return (self.dock.jobs.busy or self._in_flight > 0 or self._timer.isActive() or self._paint_watch.armed
                or self._pending)

    def drop_pending(self) -> None:
        """Show no preview asked for until now (the dock left the window); the prompts stay."""
        with contextlib.suppress(RuntimeError):
            self._timer.stop()
        self._paint_watch.disarm()  # nor is a plane encoded for it
        self._pending = False
        self.preview.new_prompts()

    def job_done(self) -> None:
        """A dock job ended: a preview asked for meanwhile is computed now."""
        if self._pending:
            self._pending = False
            self.schedule_preview()

    def _show(self, sel) -> None:
        self._sel = sel
        self._update_candidates()
        self._render_preview()

    def _update_candidates(self) -> None:
        scores, choice = self.preview.scores(), self.preview.choice
        for i, button in enumerate(self.candidate_buttons):
            on = i < len(scores)
            button.enabled = on
            button.text = f"{i + 1}: {scores[i]:.2f}" if on else f"{i + 1}"
            button.native.setChecked(on and i == choice)
            font = button.native.font()
            font.setBold(on and i == choice)
            button.native.setFont(font)

    def _render_preview(self) -> None:
        layer = self.preview_layer
        image = self._image_for_prompts
        if (layer is not None and layer not in self.viewer.layers and self.preview.objects
                and image is not None and image in self.viewer.layers):
            self.attach(image, activate=False)  # the user deleted the preview layer: it comes back
            layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers:
            return
        if self._render_windowed(layer):
            return
        if self._sel is None or tuple(layer.data.shape) != tuple(self._sel.layer_shape):
            if layer.data.any():
                layer.data[...] = 0
                layer.refresh()
            return
        plane = np.zeros(self._sel.shape, dtype=layer.data.dtype)
        for k, mask in enumerate(self.preview.masks()):
            plane[mask] = min(k + 1, 255)
        layer.data[...] = 0
        layer.data[self._sel.labels_index] = plane
        layer.refresh()
        objects = self.preview.objects
        if objects:
            best = objects[0]
            self.dock.message.value = (
                f"{len(objects)} object(s); candidate {best['choice'] + 1} "
                f"(IoU {best['scores'][best['choice']]:.2f}). Shift-C commits."
            )

    def _render_windowed(self, layer) -> bool:
        """Show a windowed preview in a preview layer of the objects' region only; True when handled.

        On a large plane the preview layer holds the region of the objects' windows (placed
        by its translation), never a whole plane; with no objects it shrinks to one pixel.
        """
        sel, image = self._sel, self._image_for_prompts
        meta = layer.metadata.get("segsuite", {})
        if not self.preview.windowed:
            if not meta.get("windowed"):
                return False
            if layer.data.any():
                layer.data[...] = 0
                layer.refresh()
            if self.preview.objects and sel is not None and image is not None and not _large(sel.layer_shape):
                layer.data = np.zeros(sel.layer_shape, dtype=np.uint8)  # back to a whole-plane preview
                for key, value in aligned_layer_kwargs(image).items():
                    setattr(layer, key, value)
                layer.metadata = {**layer.metadata, "segsuite": {**meta, "windowed": False}}
                return False
            return True
        from napari_segsuite.tasks.sam_windows import MAX_COMMIT_PIXELS, paste_objects

        try:
            region = self.preview.region(MAX_COMMIT_PIXELS)
        except SegSuiteError as exc:
            self.dock.report(exc)
            return True
        plane = np.zeros((region.r1 - region.r0, region.c1 - region.c0), dtype=np.uint8)
        for k, mask in enumerate(paste_objects(self.preview.objects, region)):
            plane[mask] = min(k + 1, 255)
        box = [region.r0, region.c0, region.r1, region.c1]
        if meta.get("region") == box and layer.data.shape == region_shape(sel, region):
            layer.data[...] = plane.reshape(layer.data.shape)  # the same window: drawn in place
        else:
            layer.data = plane.reshape(region_shape(sel, region))
            layer.translate = region_layer_kwargs(image, sel, region)["translate"]
            layer.metadata = {**layer.metadata, "segsuite": {**meta, "windowed": True, "region": box}}
        layer.refresh()
        objects = self.preview.objects
        best = objects[0]
        self.dock.message.value = (
            f"{len(objects)} object(s) in a {region.r1 - region.r0:,}x{region.c1 - region.c0:,} window at row "
            f"{region.r0:,}, column {region.c0:,}; candidate {best['choice'] + 1} "
            f"(IoU {best['scores'][best['choice']]:.2f}). Shift-C commits."
        )
        return True

    def select_candidate(self, index: int) -> None:
        """Show candidate ``index`` (0, 1, 2) of a single object."""
        if self.preview.select(index):
            self._update_candidates()
            self._render_preview()
        else:
            self._update_candidates()

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        self.preview.clear()
        for layer in (self.points_layer, self.boxes_layer):
            if layer is not None and len(layer.data):
                if layer is self.boxes_layer:
                    layer.data = []
                else:
                    layer.data = np.zeros((0, layer.ndim))
        self.preview.clear()  # the layer events above asked for a preview of no prompts
        self._show(self._sel)

    # -- prefetch -----------------------------------------------------------------------------
    def neighbour_planes(self, tokens: bool = False) -> list:
        """The planes before and after the current one along the innermost slider (GUI thread).

        With ``tokens=True``, ``(token, plane)`` pairs (see the dock's ``plane_token``).
        """
        image = self.dock.selected_image()
        sel = plane_selection(self.viewer, image)
        data = full_resolution(image)
        planes = []
        for axis, i in enumerate(sel.index[: len(sel.layer_shape)]):
            if isinstance(i, slice):
                continue
            for j in (i + 1, i - 1):
                if 0 <= j < data.shape[axis]:
                    idx = list(sel.index)
                    idx[axis] = j
                    plane = np.asarray(data[tuple(idx)])
                    planes.append((self.dock.plane_token(image, tuple(idx)), plane) if tokens else plane)
            break  # the innermost slider only (z, or t for 2D+t)
        return planes

    def start_prefetch(self) -> None:
        """Encode the neighbouring planes on the low-priority prefetch thread, one at a time.

        The encoder runs beside the prompt decoder (separate predictors, no shared state)
        at the lowest CPU priority, and pauses between its blocks while prompts are
        decoded; each plane is encoded once and then answers from the cache.
        """
        session = self.dock.session
        if not self.dock.prefetch.value or session is None or self._closed:
            return
        if self.preview.windowed:
            self._prefetch_windows()
            return
        if self.prefetch_thread.busy:
            return
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

    #: windows around the last preview's window that a prefetch encodes
    PREFETCH_WINDOWS = 8

    def _prefetch_windows(self) -> None:
        """Encode the grid windows nearest to the preview's window on the prefetch thread.

        At most :attr:`PREFETCH_WINDOWS` (and never more than half the embedding cache), one
        at a time, paused between encoder blocks while prompts decode; a prefetch around an
        older window stops (between blocks) as soon as the preview moves to another window.
        """
        try:
            image = self.dock.selected_image()
            sel = plane_selection(self.viewer, image)
        except SegSuiteError:
            return
        windows = self.dock.windowed_prompts(image, sel)
        if windows is None:
            return
        around = self.preview.objects[0]["window"]
        n = min(self.PREFETCH_WINDOWS, max(0, windows.session.cache_size // 2 - 1))
        if getattr(self, "_prefetch_around", None) == (windows.token, around):
            return
        self._prefetch_around = (windows.token, around)
        thread = self.prefetch_thread
        mine = self._prefetch_around

        def stop() -> bool:
            return thread.closed or self._prefetch_around != mine

        def work():
            from napari_segsuite.core.progress import run_sync
            from napari_segsuite.tasks.sam_session import EncodingStopped

            try:
                self.prefetched.extend(run_sync(windows.prefetch_job(around, n, stop=stop)))
            except EncodingStopped:
                pass

        thread.submit(work)

    def shutdown(self) -> None:
        """Stop the prompt and prefetch threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):  # at exit Qt may have deleted the timer already
            self._timer.stop()
        self._paint_watch.close()
        self.prompt_thread.close(timeout=10)
        self.prefetch_thread.close(timeout=10)


def _set_default(layer, column: str, value) -> None:
    """Set a layer's feature default for the next shape or point, only when it differs (one DataFrame less per click)."""
    current = layer.feature_defaults
    if column in current.columns and len(current) and current[column].iloc[0] == value:
        return
    layer.feature_defaults = {column: value}


#: a preview layer of more pixels than this is never made whole: it holds the objects' windows
LARGE_PREVIEW_PIXELS = 4096 * 4096


def _large(layer_shape) -> bool:
    return int(np.prod(layer_shape, dtype=np.int64)) > LARGE_PREVIEW_PIXELS


def _whole_plane(objects: list[dict], shape) -> list[dict]:
    """Objects for a plane prompted whole: an ellipse's or polygon's mask drawn at the plane's size."""
    out = []
    for obj in objects:
        if "shape" in obj:
            obj = {k: v for k, v in obj.items() if k != "shape"} | {"mask": obj["shape"].mask(tuple(shape))}
        out.append(obj)
    return out


def _bridge_class():
    from qtpy.QtCore import QObject, Signal

    global _BRIDGE
    if _BRIDGE is None:
        class Bridge(QObject):
            delivered = Signal(object)

        _BRIDGE = Bridge
    return _BRIDGE


_BRIDGE = None


def _make_bridge():
    """A QObject whose ``delivered`` signal carries prompt-thread results to the GUI thread (lazy Qt import)."""
    return _bridge_class()()
