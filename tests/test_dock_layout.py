"""Every dock fits a 1920x1080 screen: at most 800 px of default content, scrolling instead of
growing the window, and all docks opened from the Plugins menu tabified so the canvas keeps
its height."""

from __future__ import annotations

import pytest
import yaml
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_segsuite.testing.canvas import _process

pytestmark = pytest.mark.widget

SCREEN = (1920, 1080)


def _dock_commands() -> list[tuple[str, str]]:
    """(command id, display name) of every widget contribution in the plugin's manifest."""
    from importlib.resources import files

    manifest = yaml.safe_load(files("napari_segsuite").joinpath("napari.yaml").read_text())
    return [(w["command"], w["display_name"]) for w in manifest["contributions"]["widgets"]]


def _viewer(make_napari_viewer):
    from napari_segsuite.sample_data import coins

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.showNormal()
    window.setGeometry(0, 0, *SCREEN)
    for data, kwargs, kind in coins():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    _process(0.3)
    return viewer


def _open_from_plugins_menu(viewer, command: str):
    """Run the app-model command that the Plugins menu entry runs; the dock's widget."""
    from napari._app_model import get_app_model

    before = set(viewer.window.dock_widgets)
    get_app_model().commands.execute_command(command).result()
    new = [name for name in viewer.window.dock_widgets if name not in before]
    assert len(new) == 1, new
    return viewer.window.dock_widgets[new[0]]


@pytest.mark.parametrize(("command", "name"), _dock_commands(), ids=[n for _, n in _dock_commands()])
def test_each_dock_starts_at_most_800_px_and_scrolls_when_opened(make_napari_viewer, command, name):
    viewer = _viewer(make_napari_viewer)
    window = viewer.window._qt_window
    widget = _open_from_plugins_menu(viewer, command)
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
    widgets = [_open_from_plugins_menu(viewer, command) for command, _ in _dock_commands()]
    for _ in range(3):
        _process(0.2)
        QApplication.processEvents()
    docks = [w.native.parent() for w in widgets]
    assert window.height() <= SCREEN[1]
    assert canvas.height() >= alone - 2, (canvas.height(), alone)
    tabified = [d for d in docks[1:] if docks[0] in window.tabifiedDockWidgets(d)]
    assert len(tabified) == len(docks) - 1, [d.windowTitle() for d in docks if d not in tabified]
