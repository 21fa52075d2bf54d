"""Docks set up and run as a user would: a local model file or folder, then Run until the job ends."""

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
