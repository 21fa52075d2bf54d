"""Exceptions whose message is meant for the person at the viewer.

Every message says what went wrong and what to do about it; the widgets show
``str(error)`` as a napari notification without adding a traceback.
"""

from __future__ import annotations


class SegSuiteError(Exception):
    """Base class for errors with a user-facing message."""


class InputError(SegSuiteError, ValueError):
    """The image, prompts or layers given to a task cannot be used."""


class ModelNotAvailableError(SegSuiteError, FileNotFoundError):
    """A model is not on this machine and may not be downloaded now."""


class CheckpointError(SegSuiteError, ValueError):
    """A file or folder exists but is not a usable checkpoint of the expected kind."""


class DownloadError(SegSuiteError, OSError):
    """A deliberate download failed (network, checksum, disk)."""


class DeviceError(SegSuiteError, RuntimeError):
    """The requested compute device is not available."""


class AutosaveError(SegSuiteError, OSError):
    """Committed labels could not be written to (or read from) the autosave journal."""


class DatasetError(SegSuiteError, ValueError):
    """A dataset cannot be written where asked, or a file is not a dataset this plugin reads."""
