"""Real mouse and key events on a napari canvas, and a scripted SAM annotation session.

:func:`canvas_position` maps a layer's data coordinates through the layer transform and
the camera to canvas pixels; :func:`click`, :func:`drag` and :func:`key` send ``QTest`` events to
``viewer.window._qt_viewer.canvas.native``, so napari's own mouse bindings (add mode of a
Points layer, pan/zoom) and key bindings handle them as they handle a user's.

:func:`annotate_objects` is the scripted session of the SAM dock: for every object, clicks
on the canvas (a positive click, optionally a negative right-click) and one Shift-C,
counting the user's actions and checking that no click and no commit is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


def canvas_position(viewer, layer, data_coords) -> tuple[int, int]:
    """Canvas pixel (x, y) of ``data_coords`` of ``layer`` (2D view, displayed axes last)."""
    world = np.asarray(layer.data_to_world(np.asarray(data_coords, dtype=float)), dtype=float)
    full = np.asarray(viewer.dims.point, dtype=float).copy()
    full[viewer.dims.ndim - len(world):] = world
    rows, cols = viewer.dims.displayed[-2:]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    center = np.asarray(camera.center, dtype=float)[-2:]
    zoom = float(camera.zoom)
    canvas = viewer.window._qt_viewer.canvas.native
    x = canvas.width() / 2 + (full[cols] - center[1]) * zoom
    y = canvas.height() / 2 + (full[rows] - center[0]) * zoom
    return round(x), round(y)


def _process(seconds: float = 0.0) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while True:
        QApplication.processEvents()
        if time.monotonic() >= end:
            return
        time.sleep(0.005)


def click(viewer, layer, data_coords, *, button: str = "left", modifiers: tuple[str, ...] = ()) -> tuple[int, int]:
    """A mouse click at ``data_coords`` of ``layer`` on the canvas; returns the canvas pixel."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    buttons = {"left": Qt.MouseButton.LeftButton, "right": Qt.MouseButton.RightButton}
    mods = Qt.KeyboardModifier.NoModifier
    for m in modifiers:
        mods |= {"ctrl": Qt.KeyboardModifier.ControlModifier, "shift": Qt.KeyboardModifier.ShiftModifier,
                 "alt": Qt.KeyboardModifier.AltModifier}[m]
    _process()  # a user clicks on a settled window: pending resizes and draws first
    x, y = canvas_position(viewer, layer, data_coords)
    canvas = viewer.window._qt_viewer.canvas.native
    QTest.mouseMove(canvas, QPoint(x, y))
    _process()
    QTest.mouseClick(canvas, buttons[button], mods, QPoint(x, y))
    _process()
    return x, y


def drag(viewer, layer, start, end, *, modifiers: tuple[str, ...] = (), steps: int = 6) -> None:
    """A left-button drag on the canvas from ``start`` to ``end`` (data coordinates of ``layer``)."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest

    mods = Qt.KeyboardModifier.NoModifier
    for m in modifiers:
        mods |= {"ctrl": Qt.KeyboardModifier.ControlModifier, "shift": Qt.KeyboardModifier.ShiftModifier,
                 "alt": Qt.KeyboardModifier.AltModifier}[m]
    _process()  # pending resizes and draws first
    (x0, y0), (x1, y1) = canvas_position(viewer, layer, start), canvas_position(viewer, layer, end)
    canvas = viewer.window._qt_viewer.canvas.native
    QTest.mouseMove(canvas, QPoint(x0, y0))
    _process()
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, mods, QPoint(x0, y0))
    _process()
    for k in range(1, steps + 1):
        QTest.mouseMove(canvas, QPoint(round(x0 + (x1 - x0) * k / steps), round(y0 + (y1 - y0) * k / steps)))
        _process()
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, mods, QPoint(x1, y1))
    _process()


def key(viewer, name: str, modifiers: tuple[str, ...] = ()) -> None:
    """A key press on the canvas (napari's key bindings handle it), e.g. ``key(v, "C", ("shift",))``."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    mods = Qt.KeyboardModifier.NoModifier
    for m in modifiers:
        mods |= {"ctrl": Qt.KeyboardModifier.ControlModifier, "shift": Qt.KeyboardModifier.ShiftModifier,
                 "alt": Qt.KeyboardModifier.AltModifier}[m]
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, getattr(Qt.Key, f"Key_{name}"), mods)
    _process()


def wait_until(condition, timeout: float = 60.0, what: str = "the condition") -> float:
    """Process Qt events until ``condition()``; returns the seconds waited."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        _process(0.01)
    return time.monotonic() - start


def coin_centres(n: int) -> list[tuple[float, float]]:
    """(row, col) centres of the ``n`` largest coins of scikit-image's coins image."""
    from scipy import ndimage

    from napari_segsuite.testing.coins import coins_reference_mask

    mask = coins_reference_mask() > 0
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    order = np.argsort(sizes)[::-1][:n] + 1
    return [tuple(float(v) for v in ndimage.center_of_mass(mask, labels, i)) for i in order]


@dataclass
class SessionLog:
    """What a scripted session did."""

    objects: int = 0
    clicks: int = 0
    keys: int = 0
    points_added: int = 0
    labels_added: int = 0
    #: user actions (clicks + keys) per object
    actions: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Clicks that added no point plus commits that added no label."""
        return (self.clicks - self.points_added) + (self.objects - self.labels_added)


def annotate_objects(viewer, dock, image, centres, *, negative_offset: float | None = 18.0,
                     timeout: float = 120.0) -> SessionLog:
    """Annotate one object per centre with real canvas events: click(s), then Shift-C.

    Every second object also gets a negative right-click ``negative_offset`` pixels to its
    left (None: never). Between clicks the session waits for the dock's preview, as a user
    looks at it. Checks after every action: a click added exactly one point with the right
    polarity; a commit added exactly one new label id, and left the points layer active in
    add mode with positive polarity.
    """
    log = SessionLog()
    prompts = dock.prompts
    for k, centre in enumerate(centres):
        t0 = time.monotonic()
        actions = 0
        plan = [("left", centre)]
        if negative_offset is not None and k % 2 == 1:
            plan.append(("right", (centre[0], max(0.0, centre[1] - negative_offset))))
        for button, where in plan:
            points = prompts.points_layer
            if viewer.layers.selection.active is not points or points.mode != "add":
                log.problems.append(f"object {k}: the points layer is not active in add mode before a click")
            before = len(points.data)
            click(viewer, image, where, button=button)
            log.clicks += 1
            actions += 1
            if len(points.data) == before + 1:
                log.points_added += 1
                positive = bool(points.features["positive"].iloc[-1])
                if positive != (button == "left"):
                    log.problems.append(f"object {k}: a {button} click added a point with positive={positive}")
                if not np.allclose(points.data[-1][-2:], where, atol=1.0):
                    log.problems.append(f"object {k}: point at {points.data[-1][-2:]}, clicked {where}")
            else:
                log.problems.append(f"object {k}: a {button} click added {len(points.data) - before} points")
            wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, timeout, "the preview")
        target_name = dock.commits.target_name(image)
        ids_before = set(np.unique(viewer.layers[target_name].data)) if target_name in viewer.layers else {0}
        key(viewer, "C", ("shift",))
        log.keys += 1
        actions += 1
        log.objects += 1
        ids_after = set(np.unique(viewer.layers[target_name].data)) if target_name in viewer.layers else {0}
        if len(ids_after - ids_before) == 1:
            log.labels_added += 1
        else:
            log.problems.append(f"object {k}: the commit added labels {sorted(ids_after - ids_before)}")
        points = prompts.points_layer
        if viewer.layers.selection.active is not points or points.mode != "add" or prompts.negative.value:
            log.problems.append(f"object {k}: after the commit the points layer is not ready for the next click")
        if len(points.data):
            log.problems.append(f"object {k}: prompts left after the commit")
        log.actions.append(actions)
        log.seconds.append(time.monotonic() - t0)
    return log
