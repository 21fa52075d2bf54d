"""Docks set up and run as a user would: opened from the Plugins menu, or with a local model file
or folder and Run until the job ends."""

from __future__ import annotations

from pathlib import Path


def local_model_dock(cls, viewer, layer, path, **options):
    """A ``cls`` dock on ``viewer`` with the local model at ``path`` (a file, or a folder) on the CPU,
    ``layer`` as its image and each ``options`` name (a widget of the dock) set to its value."""
    from napari_segsuite.widgets.base import LOCAL

    path = Path(path)
    dock = cls(viewer)
    dock.models.model.value = LOCAL
    if path.is_dir():
        dock.models.local.mode = "d"
    dock.models.local.value = str(path)
    dock.device.value = "cpu"
    dock.image.value = layer
    for name, value in options.items():
        getattr(dock, name).value = value
    return dock


def run_dock(qtbot, dock, timeout: int) -> None:
    """Press the dock's Run, wait (``timeout`` ms at most) until its job ended and Run is enabled
    again, and fail with the dock's error if the job raised one."""
    dock.run()
    qtbot.waitUntil(lambda: not dock.jobs.busy and dock.run_button.enabled, timeout=timeout)
    assert dock.jobs.last_error is None, dock.jobs.last_error


#: The screen size the dock layout is measured and tested on (width, height).
SCREEN = (1920, 1080)


def manifest_docks() -> list[tuple[str, str]]:
    """(command id, display name) of every dock in the plugin's manifest, in its order."""
    from importlib.resources import files

    import yaml

    manifest = yaml.safe_load(files("napari_segsuite").joinpath("napari.yaml").read_text())
    return [(w["command"], w["display_name"]) for w in manifest["contributions"]["widgets"]]


def coins_on_screen(viewer):
    """Size ``viewer``'s window to :data:`SCREEN` and open the plugin's coins sample in it."""
    from napari_segsuite.sample_data import coins

    window = viewer.window._qt_window
    window.showNormal()
    window.setGeometry(0, 0, *SCREEN)
    for data, kwargs, kind in coins():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer


def open_from_plugins_menu(viewer, command: str):
    """Open a dock the way its Plugins-menu entry does (the app-model ``command``); the dock's widget."""
    from napari._app_model import get_app_model

    before = set(viewer.window.dock_widgets)
    get_app_model().commands.execute_command(command).result()
    new = [name for name in viewer.window.dock_widgets if name not in before]
    if len(new) != 1:
        raise RuntimeError(f"{command} opened {len(new)} docks: {new}")
    return viewer.window.dock_widgets[new[0]]
