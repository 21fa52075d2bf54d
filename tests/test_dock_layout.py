"""Every dock fits a 1920x1080 screen: at most 800 px of default content, scrolling instead of
growing the window, and all docks opened from the Plugins menu tabified so the canvas keeps
its height."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QScrollArea

from napari_segsuite.testing.canvas import _process
from napari_segsuite.testing.docks import (
    SCREEN,
    coins_on_screen,
    manifest_docks,
    open_from_plugins_menu,
)

pytestmark = pytest.mark.widget


def _viewer(make_napari_viewer):
    viewer = coins_on_screen(make_napari_viewer(show=True))
    _process(0.3)
    return viewer


@pytest.mark.parametrize(("command", "name"), manifest_docks(), ids=[n for _, n in manifest_docks()])
def test_each_dock_starts_at_most_800_px_and_scrolls_when_opened(make_napari_viewer, command, name):
    viewer = _viewer(make_napari_viewer)
    window = viewer.window._qt_window
    widget = open_from_plugins_menu(viewer, command)
    _process(0.3)
    default = widget.content_height()
    assert 100 < default <= 800, (name, default)
    assert isinstance(widget.scroll_area, QScrollArea) and widget.scroll_area.widget() is widget.body.native
    assert window.height() <= SCREEN[1]
    assert widget.groups and not all(g.expanded for g in widget.groups.values()), name  # some start collapsed
    for group in widget.groups.values():  # every option open: the dock scrolls, the window keeps its size
        group.expand()
    _process(0.3)
    opened = widget.content_height()
    viewport = widget.scroll_area.viewport().height()
    assert opened > default and window.height() <= SCREEN[1], (name, default, opened, window.height())
    assert widget.native.parent().height() <= window.height()
    assert (widget.scroll_area.verticalScrollBar().maximum() > 0) == (opened > viewport), (name, opened, viewport)


def test_all_docks_from_the_plugins_menu_are_tabified_and_the_canvas_keeps_its_height(make_napari_viewer):
    viewer = _viewer(make_napari_viewer)
    window = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    alone = canvas.height()
    widgets = [open_from_plugins_menu(viewer, command) for command, _ in manifest_docks()]
    _process(0.6)
    docks = [w.native.parent() for w in widgets]
    assert window.height() <= SCREEN[1]
    assert canvas.height() >= alone - 2, (canvas.height(), alone)
    tabified = [d for d in docks[1:] if docks[0] in window.tabifiedDockWidgets(d)]
    assert len(tabified) == len(docks) - 1, [d.windowTitle() for d in docks if d not in tabified]
