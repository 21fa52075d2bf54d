"""The viewer's canvas as the SAM dock sees it: when it painted, and shader programs linked ahead of use.

Where OpenGL is software-rendered (llvmpipe: remote desktops, VMs, CI), drawing a frame takes
the CPU cores, and so does linking a shader program, which OpenGL does the first time a
visual is drawn. Two helpers keep that work out of the moment a heavy job starts:

- :class:`PaintWatch` calls back once after the canvas next painted (or after a timeout when
  no paint comes), so a job can start after the frame that shows the user's click;
- :func:`link_highlight_program` has the selection-highlight markers of a Points layer drawn
  once (invisibly), so their program is linked before the first point is added and
  highlighted, not during that click.

Both use napari's canvas widget and vispy nodes, which napari does not expose publicly; when
they are not there (a viewer without a window, another napari), both do nothing.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np


def canvas_widget(viewer):
    """The Qt widget of ``viewer``'s canvas, or None (no window)."""
    try:
        return viewer.window._qt_viewer.canvas.native
    except (AttributeError, RuntimeError):
        return None


class PaintWatch:
    """Call ``callback()`` once, right after the canvas of ``viewer`` next painted.

    :meth:`arm` starts a wait; the callback runs from the event loop after the paint
    event was handled (the frame is drawn), or after ``timeout_ms`` when the canvas does
    not paint (nothing changed); at once when the canvas is hidden. :meth:`disarm` drops a
    wait. The Qt objects are children of ``parent`` (the dock's widget): they go with it,
    and then nothing is called back.
    """

    def __init__(self, viewer, callback, timeout_ms: int, parent=None):
        from qtpy.QtCore import QEvent, QObject, QTimer

        self._viewer = viewer
        self._callback = callback
        self._armed = False
        #: the longest wait for a paint (milliseconds)
        self.timeout_ms = int(timeout_ms)
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._fire)
        self._widget = None
        timer = self._timer
        me = weakref.ref(self)  # no reference cycle through the Qt filter

        class _Filter(QObject):
            def eventFilter(self, obj, event):
                if event.type() == QEvent.Type.Paint:
                    watch = me()
                    if watch is not None and watch._armed:
                        # the paint is handled after this filter returns: call back from the event loop after it
                        timer.setInterval(0)
                        timer.start()
                return False

        self._filter = _Filter(parent)

    @property
    def armed(self) -> bool:
        """Whether a callback is pending."""
        return self._armed

    def arm(self, timeout_ms: int | None = None) -> None:
        """Wait for the next paint (at most ``timeout_ms``, else the constructor's)."""
        widget = canvas_widget(self._viewer)
        try:
            if widget is not None and widget is not self._widget:
                self._unwatch()
                widget.installEventFilter(self._filter)
                self._widget = widget
            visible = widget is not None and _visible(widget)
            wait = self.timeout_ms if timeout_ms is None else int(timeout_ms)
            self._timer.setInterval(wait if visible else 0)  # a hidden canvas does not paint
            self._timer.start()
        except RuntimeError:  # the dock's Qt objects are gone (closing)
            self._armed = False
            return
        self._armed = True

    def disarm(self) -> None:
        """Drop a pending callback."""
        self._armed = False
        with contextlib.suppress(RuntimeError):
            self._timer.stop()

    def _fire(self) -> None:
        if not self._armed:
            return
        self._armed = False
        self._callback()

    def _unwatch(self) -> None:
        with contextlib.suppress(RuntimeError, AttributeError):
            if self._widget is not None:
                self._widget.removeEventFilter(self._filter)
        self._widget = None

    def close(self) -> None:
        """Disarm and stop watching the canvas."""
        self.disarm()
        self._unwatch()


def _visible(widget) -> bool:
    try:
        return bool(widget.isVisible()) and widget.width() > 0 and widget.height() > 0
    except RuntimeError:
        return False


def link_highlight_program(viewer, points) -> bool:
    """Have the selection-highlight markers of Points layer ``points`` drawn once, invisibly.

    napari draws a Points layer's highlight markers only while a point is selected or
    hovered, so OpenGL links their shader program at the first highlighted point: the
    click that adds a layer's first point. Until the markers' program is built (at their
    first draw), they hold one point of size 0 whenever napari leaves them empty, so the
    next frame draws and links them. Returns whether a warm-up was set up (False: linked
    already, or no canvas).
    """
    try:
        markers = viewer.window._qt_viewer.canvas.layer_to_visual[points].node.selection_markers
        program = markers._program
    except (AttributeError, KeyError, TypeError, RuntimeError):
        return False
    if not getattr(program, "_need_build", False):
        return False

    viewer_ref, markers_ref = weakref.ref(viewer), weakref.ref(markers)  # the layer keeps neither alive

    def hold(_event=None) -> None:
        viewer, markers = viewer_ref(), markers_ref()
        if viewer is None or markers is None or not markers._program._need_build:  # drawn once: linked
            with contextlib.suppress(Exception):
                points.events.highlight.disconnect(hold)
            return
        if markers._data is None:
            markers.set_data(np.zeros((1, int(viewer.dims.ndisplay))), size=0.0, edge_width=0.0,
                             face_color=(0.0, 0.0, 0.0, 0.0), edge_color=(0.0, 0.0, 0.0, 0.0))

    hold()
    points.events.highlight.connect(hold, position="last")  # after napari's own update of the markers
    return True
