"""The pieces every dock is built from.

- :class:`Dock`: a magicgui container whose content sits in a ``QScrollArea``, so a dock
  scrolls instead of growing the window. Content is stacked top-down in :attr:`Dock.body`;
  :meth:`Dock.add_group` adds a collapsible option group and :meth:`Dock.finish_layout`
  lines up the fields of all groups (one label column for the whole dock). Docks of this
  plugin opened one after another (e.g. from the Plugins menu) are tabified with each other,
  so the canvas keeps its size.
- :func:`header`: a section header (bold text with a rule) spanning the dock's width.
- :class:`Group`: a titled, collapsible section around a labelled magicgui container.
- :class:`JobPanel`: the image picker, the job runner (start, progress, Cancel, done) and the
  status line with error reporting, shared by every dock and by the U-Net panel.
- :func:`image_for_layer`: the Image layer another layer belongs to (the Image box follows the
  active layer with it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton

from napari_segsuite.core.errors import SegSuiteError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Outcome
from napari_segsuite.layers import full_resolution
from napari_segsuite.widgets.worker import JobRunner

#: Property set on the Qt widget of every dock of this plugin (used to tabify them together).
DOCK_PROPERTY = "segsuite_dock"
_SUFFIX = re.compile(r"\s*\[[^\]]*\]\s*$")


def name_stem(name: str) -> str:
    """A layer name without its ``" [task]"`` suffixes (``"coins [sam points]"`` -> ``"coins"``)."""
    stem = name
    while True:
        shorter = _SUFFIX.sub("", stem)
        if shorter == stem:
            return stem.strip()
        stem = shorter


def image_for_layer(viewer, layer):
    """The Image layer that ``layer`` belongs to, or None.

    An Image layer is its own image. Otherwise the image whose name is the layer's name
    stem (``"coins"`` for ``"coins [sam]"`` or ``"coins strokes"`` when ``"coins"`` is
    open: the longest image name that starts the layer's name), else the only image
    whose spatial shape equals the layer's.
    """
    from napari.layers import Image

    if layer is None:
        return None
    if isinstance(layer, Image):
        return layer
    images = [lyr for lyr in viewer.layers if isinstance(lyr, Image)]
    stem = name_stem(layer.name)
    by_name = [im for im in images if im.name == stem]
    if not by_name:
        by_name = sorted((im for im in images if stem.startswith(im.name + " ")),
                         key=lambda im: len(im.name), reverse=True)[:1]
    if by_name:
        return by_name[0]
    shape = tuple(getattr(layer.data, "shape", ()))
    if not shape:
        return None
    matching = []
    for im in images:
        data = full_resolution(im)
        spatial = tuple(data.shape[:-1]) if getattr(im, "rgb", False) else tuple(data.shape)
        if spatial == shape:
            matching.append(im)
    return matching[0] if len(matching) == 1 else None


def form(*widgets, **kwargs) -> Container:
    """A labelled column of fields without margins (its labels line up with the dock's)."""
    box = Container(labels=True, widgets=list(widgets), **kwargs)
    box.margins = (0, 0, 0, 0)
    return box


def row(*widgets, **kwargs) -> Container:
    """A horizontal row of widgets (buttons) without margins or labels."""
    box = Container(layout="horizontal", labels=False, widgets=list(widgets), **kwargs)
    box.margins = (0, 0, 0, 0)
    return box


def header(text: str) -> Label:
    """A section header: bold text over a thin rule, spanning the dock's width."""
    from qtpy.QtWidgets import QSizePolicy

    label = Label(value=text)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    label.native.setStyleSheet(
        "font-weight: bold; padding-top: 6px; padding-bottom: 2px; "
        "border-bottom: 1px solid palette(mid);"
    )
    return label


def _rehost(container: Container, child, place: Callable[[Any], None]) -> None:
    """Move ``child``'s Qt widget (a magicgui child of ``container``) to ``place``.

    ``child`` stays in the container's magicgui list (so ``reset_choices`` and lookups by
    name reach it); only its Qt parent changes.
    """
    container.native.layout().removeWidget(child.native)
    place(child.native)


class Group(Container):
    """A titled, collapsible section around a column of fields.

    The header is a full-width toggle button with an arrow; collapsing hides the fields.

    Parameters
    ----------
    title : str
        Shown on the header button.
    widgets : iterable of magicgui widgets
        The fields, in a labelled column (:attr:`fields`).
    collapsed : bool
        Start collapsed (rarely used options) or open.
    labels : bool
        Put the fields in a labelled column (False: a plain column, e.g. for a panel).
    """

    def __init__(self, title: str, widgets: Iterable = (), *, collapsed: bool = True, labels: bool = True):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QSizePolicy, QToolButton

        self.fields = Container(labels=labels, widgets=list(widgets))
        self.fields.margins = (0, 0, 0, 0)
        super().__init__(labels=False, widgets=[self.fields])
        self.margins = (0, 0, 0, 0)
        self.title = title
        button = QToolButton()
        button.setText(title)
        button.setCheckable(True)
        button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        button.setStyleSheet(
            "QToolButton { font-weight: bold; border: none; border-bottom: 1px solid palette(mid); "
            "padding: 3px 0px 2px 0px; background: transparent; text-align: left; }"
        )
        button.toggled.connect(self._set_open)
        self.toggle_button = button
        self.native.layout().insertWidget(0, button)
        self._set_open(not collapsed)

    def _set_open(self, open_: bool) -> None:
        from qtpy.QtCore import Qt

        self.toggle_button.blockSignals(True)
        self.toggle_button.setChecked(open_)
        self.toggle_button.blockSignals(False)
        self.toggle_button.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.fields.visible = open_

    def extend_fields(self, widgets: Iterable) -> None:
        """Add fields at the end of the group."""
        self.fields.extend(list(widgets))

    @property
    def expanded(self) -> bool:
        """Whether the group is open."""
        return self.toggle_button.isChecked()

    def expand(self) -> None:
        """Open the group."""
        self._set_open(True)

    def collapse(self) -> None:
        """Close the group."""
        self._set_open(False)


def _labeled_rows(container: Container) -> list:
    """Every magicgui ``_LabeledWidget`` in ``container`` and its sub-containers."""
    rows = []
    for w in container:
        labeled = w._labeled_widget() if hasattr(w, "_labeled_widget") else None
        if labeled is not None and container.labels and container.layout == "vertical":
            rows.append((w, labeled))
        if isinstance(w, Container):
            rows.extend(_labeled_rows(w))
    return rows


def align_labels(container: Container, minimum: int = 0) -> int:
    """Give every label column in ``container`` (and its sub-containers) the same width.

    Returns the width used.
    """
    from magicgui.application import use_app

    measure = use_app().get_obj("get_text_width")
    rows = _labeled_rows(container)

    try:  # the font the dock shows (the viewer's stylesheet), also for labels of collapsed groups
        metrics = container.native.fontMetrics()
    except RuntimeError:
        metrics = None

    def needed(w, labeled) -> int:
        # the plain text measure can be narrower than the label as shown (its font and margins)
        widths = [measure(w.label)]
        try:
            native = labeled._label_widget.native
            widths.append(native.sizeHint().width())
            if metrics is not None:
                margins = native.contentsMargins()
                widths.append(metrics.horizontalAdvance(w.label) + margins.left() + margins.right()
                              + 2 * native.margin() + 2)
        except (AttributeError, RuntimeError):
            pass
        return max(widths)

    width = max([minimum, *(needed(w, labeled) for w, labeled in rows)])
    for _w, labeled in rows:
        labeled.label_width = width
    return width


def wrapping(label: Label) -> Label:
    """Let ``label`` wrap its text over the dock's width and keep the height its lines need.

    A word-wrapped ``QLabel`` in nested layouts can be given the height of fewer lines
    than it shows (its text is then cut at the top and bottom); its minimum height follows
    its width and text instead. Returns ``label``.
    """
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(True)
    native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def fit(*_) -> None:
        try:
            width = native.width()
            need = native.heightForWidth(width) if width > 0 else -1
            if need > 0 and native.minimumHeight() != need:
                native.setMinimumHeight(need)
        except RuntimeError:  # deleted
            pass

    class Watch(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.Resize:
                fit()
            return False

    watch = Watch(native)
    native.installEventFilter(watch)
    label.changed.connect(fit)
    return label


def _EventWatch(widget, kinds: tuple[str, ...], callback):
    """Call ``callback()`` after ``widget`` receives an event of one of ``kinds`` (``QEvent.Type`` names)."""
    from qtpy.QtCore import QEvent, QObject

    types = {getattr(QEvent.Type, kind) for kind in kinds}

    class Watch(QObject):
        def eventFilter(self, obj, event):
            if event.type() in types:
                callback()
            return False

    watch = Watch(widget)
    widget.installEventFilter(watch)
    return watch


def _LayoutWatch(widget, callback):
    """Call ``callback()`` whenever ``widget``'s layout is recomputed (an event filter)."""
    from qtpy.QtCore import QEvent, QObject

    class Watch(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.LayoutRequest:
                callback()
            return False

    watch = Watch(widget)
    widget.installEventFilter(watch)
    return watch


class Dock(Container):
    """A dock whose content scrolls: everything goes into :attr:`body`, top-down.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        from qtpy.QtCore import Qt, QTimer
        from qtpy.QtWidgets import QFrame, QScrollArea

        self.body = Container(labels=False)
        super().__init__(labels=False, widgets=[self.body])
        self.margins = (0, 0, 0, 0)
        self.viewer = napari_viewer
        self.groups: dict[str, Group] = {}
        #: Results (legends, tables) go here; the dock places it under the status line.
        self.results = Container(labels=False)
        self.results.margins = (0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        _rehost(self, self.body, scroll.setWidget)
        self.body.native.layout().addStretch(1)  # content stays at the top of a tall dock
        self.native.layout().addWidget(scroll)
        self.scroll_area = scroll
        self._width_watch = _LayoutWatch(self.body.native, self.fit_width)
        # the viewer's stylesheet (its font) reaches the dock when it is shown: line the labels up again
        self._style_watch = _EventWatch(self.native, ("Show", "StyleChange", "FontChange"), self._realign)
        self.native.setProperty(DOCK_PROPERTY, True)
        events = napari_viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._on_layer_list)  # layer pickers stay current also when not docked
        QTimer.singleShot(0, self._tabify_with_siblings)

    def _on_layer_list(self, event=None) -> None:
        self.reset_choices()

    # -- building -------------------------------------------------------------------
    def add_group(self, title: str, widgets: Iterable = (), *, collapsed: bool = True,
                  index: int | None = None, labels: bool = True) -> Group:
        """Add a collapsible option group (at the end, or at ``index`` of :attr:`body`)."""
        group = Group(title, widgets, collapsed=collapsed, labels=labels)
        if index is None:
            self.body.append(group)
        else:
            self.body.insert(index, group)
        self.groups[title] = group
        return group

    def finish_layout(self) -> None:
        """Line up the fields of every group (call after the dock's widgets are added)."""
        align_labels(self.body)
        self.results.visible = len(self.results) > 0
        self.fit_width()

    def _realign(self) -> None:
        try:
            align_labels(self.body)
            self.fit_width()
        except RuntimeError:  # deleted
            pass

    def fit_width(self) -> None:
        """Make the dock at least as wide as its content (the content never scrolls sideways)."""
        try:
            bar = self.scroll_area.verticalScrollBar().sizeHint().width()
            self.scroll_area.setMinimumWidth(self.body.native.minimumSizeHint().width() + bar + 4)
        except RuntimeError:  # deleted
            pass

    def content_height(self) -> int:
        """Height in pixels the dock's content asks for (its scroll area's content)."""
        return int(self.body.native.sizeHint().height())

    # -- docking --------------------------------------------------------------------
    def _tabify_with_siblings(self) -> None:
        """Tabify this dock with the plugin's docks already in the same dock area."""
        from qtpy.QtWidgets import QDockWidget

        try:
            dock = self.native.parent()
        except RuntimeError:  # deleted before the event loop ran
            return
        if not isinstance(dock, QDockWidget):
            return
        window = dock.parent()
        if window is None or not hasattr(window, "dockWidgetArea"):
            return
        area = window.dockWidgetArea(dock)
        for other in window.findChildren(QDockWidget):
            inner = other.widget()
            if (other is not dock and inner is not None and inner.property(DOCK_PROPERTY)
                    and not other.isFloating() and other.isVisible()
                    and window.dockWidgetArea(other) == area):
                window.tabifyDockWidget(other, dock)
                dock.show()
                dock.raise_()
                return


class JobPanel:
    """Image picker, job runner, Cancel, progress and status of one dock (or panel).

    The widgets are laid out by the owner: :attr:`image` near the top, :attr:`controls`
    (the action buttons with Cancel, the progress bar and the status line, full width)
    under the primary fields.

    Parameters
    ----------
    viewer : napari.Viewer
    image : ComboBox, optional
        Share another panel's Image box (all panels of a dock agree on the image); by
        default the panel makes its own, which follows the active layer.
    pick_image : bool
        False for a panel that works on no image (:attr:`image` is None).
    on_progress, on_done : callable, optional
        Extra callbacks after the panel's own handling.
    """

    def __init__(self, viewer, *, image: ComboBox | None = None, pick_image: bool = True,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_done: Callable[[str], None] | None = None):
        self.viewer = viewer
        self.owns_image = image is None and pick_image
        self.image = image
        if self.owns_image:
            self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True,
                                  tooltip="Follows the active layer: the image it belongs to")
        self.actions: list[PushButton] = []
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.buttons = Container(layout="horizontal", labels=False, widgets=[self.cancel_button])
        self.buttons.margins = (0, 0, 0, 0)
        self.progress = ProgressBar(value=0, min=0, max=100, label="")
        self.message = wrapping(Label(value=""))
        self.controls = Container(labels=False, widgets=[self.buttons, self.progress, self.message])
        self.controls.margins = (0, 0, 0, 0)
        self._extra_progress = on_progress
        self._extra_done = on_done
        self._disabled: list = []
        self.jobs = JobRunner(on_progress=self.on_progress, on_done=self.on_done)
        # closing the dock that shows these controls ends the panel's job and drops its result
        self.jobs.stop_with(self.controls.native)
        self.cancel_button.changed.connect(self.jobs.cancel)
        if self.owns_image:
            events = viewer.layers.events
            for ev in (events.inserted, events.removed, events.reordered):
                ev.connect(self._on_layers_changed)
            viewer.layers.selection.events.active.connect(self._on_active_layer)
            self.follow_active_layer()

    # -- the image -------------------------------------------------------------------
    def _image_choices(self, _widget=None):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def follow_active_layer(self) -> None:
        """Pick the image the active layer belongs to; keep a valid choice otherwise."""
        if self.image is None:
            return
        self.image.reset_choices()
        image = image_for_layer(self.viewer, self.viewer.layers.selection.active)
        if image is not None and image is not self.image.value:
            self.image.value = image
        elif self.image.value is None or self.image.value not in self.viewer.layers:
            images = [c for c in self.image.choices if c is not None]
            if images:
                self.image.value = images[0]

    def _on_active_layer(self, event=None) -> None:
        self.follow_active_layer()

    def _on_layers_changed(self, event=None) -> None:
        if self.image is None:
            return
        self.image.reset_choices()
        if self.image.value is None or self.image.value not in self.viewer.layers:
            self.follow_active_layer()

    def selected_image(self):
        """The chosen Image layer (raises a user-facing error when none)."""
        from napari_segsuite.core.errors import InputError

        layer = self.image.value if self.image is not None else None
        if layer is None or layer not in self.viewer.layers:
            raise InputError("Open an image and choose it in the Image box first.")
        return layer

    # -- actions ---------------------------------------------------------------------
    def add_action(self, text: str, *, enabled: bool = True) -> PushButton:
        """A primary action button, left of Cancel; disabled while a job runs."""
        button = PushButton(text=text, enabled=enabled)
        self.buttons.insert(len(self.actions), button)
        self.actions.append(button)
        return button

    @property
    def busy(self) -> bool:
        """Whether a job runs."""
        return self.jobs.busy

    def start(self, job_factory, on_result, description: str) -> None:
        """Run ``job_factory()`` in a worker; ``on_result`` on the GUI thread when it returns."""
        self._disabled = [b for b in self.actions if b.enabled]
        for b in self._disabled:
            b.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.message.value = description + "…"
        self.jobs.start(job_factory, on_result, description)

    def report(self, exc: BaseException) -> None:
        """Show an error in a notification and in the status line."""
        from napari.utils.notifications import show_error

        text = str(exc) if isinstance(exc, SegSuiteError | OSError) else f"{type(exc).__name__}: {exc}"
        show_error(text)
        self.message.value = text

    def on_progress(self, item: Progress) -> None:
        """A job's progress report (GUI thread)."""
        if item.message:
            self.message.value = item.message
        self.progress.value = int(100 * item.fraction) if item.fraction is not None else 0
        if self._extra_progress is not None:
            self._extra_progress(item)

    def on_done(self, how: Outcome) -> None:
        """A job ended (an :class:`~napari_segsuite.core.vocabulary.Outcome`; GUI thread)."""
        for b in self._disabled:
            b.enabled = True
        self._disabled = []
        self.cancel_button.enabled = False
        if how == Outcome.RETURNED:
            self.progress.value = 100
        elif how == Outcome.ABORTED:
            self.message.value = "Cancelled; nothing was changed."
        elif how == Outcome.ERRORED and self.jobs.last_error is not None:
            self.message.value = str(self.jobs.last_error)
        if self._extra_done is not None:
            self._extra_done(how)


def show_or_dock(viewer, name: str, panel, make: Callable[[Any], Any]):
    """Show ``panel``'s dock when it is still docked under ``name``, else dock ``make(viewer)``.

    Returns the panel shown.
    """
    docked = viewer.window.dock_widgets.get(name)
    if panel is not None and docked is not None:
        wrapper = getattr(docked, "native", docked).parent()
        wrapper.show()
        wrapper.raise_()
        return panel
    panel = make(viewer)
    viewer.window.add_dock_widget(panel, name=name, area="right")
    return panel


def add_panel_button(dock, text: str, tooltip: str, attr: str, opener: Callable[[Any, Any], Any]) -> PushButton:
    """Append a button to ``dock`` (a magicgui Container with ``viewer``) that opens a panel.

    ``opener(viewer, panel)`` shows the panel kept in ``dock.<attr>`` (None at first) or docks
    a new one, which is kept there. A scrolling dock takes the button in its ``results``.
    """
    button = PushButton(text=text)
    button.tooltip = tooltip
    setattr(dock, attr, None)

    def show(_value=None):
        setattr(dock, attr, opener(dock.viewer, getattr(dock, attr)))

    button.changed.connect(show)
    getattr(dock, "results", dock).append(button)
    return button
