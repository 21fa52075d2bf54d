"""The deep-learning libraries' offline switches, on only around the plugin's own calls.

Downloads in napari-segsuite are deliberate: the model store fetches a file only
when the user asks it to. While the plugin imports a library or loads a model
(:func:`offline`), the libraries' own reaching out is switched off
(transformers resolving a processor, ultralytics fetching a font or a missing
weight file, huggingface_hub pinging the hub); afterwards the environment and
huggingface_hub's switch are as they were, so other plugins in the same napari
process see the user's settings. Variables the user set keep the user's value.
:func:`allow_hub_downloads` lifts the switch for one deliberate download.
"""

from __future__ import annotations

import contextlib
import os
import threading

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    # ultralytics compares this to the string "true"; "1" does nothing.
    "YOLO_OFFLINE": "true",
    "YOLO_VERBOSE": "false",
}

_LOCK = threading.RLock()
_DEPTH = 0
_SAVED: dict = {}

#: Held while a model library is imported or a model is built (:func:`model_import_lock`).
_IMPORT_LOCK = threading.RLock()


def model_import_lock() -> threading.RLock:
    """The one lock around importing model libraries and building models from them.

    transformers resolves its classes lazily (``transformers.Mask2FormerConfig``
    imports a submodule on first access) and that resolution is not safe across
    threads: two docks loading at once made the second see a half-imported
    module ("module 'transformers' has no attribute 'Mask2FormerConfig'").
    Every model load (:meth:`napari_segsuite.models.base.Runner.load`) holds
    this re-entrant lock, so loads in several workers run one after the other
    while their predictions still run in parallel.
    """
    return _IMPORT_LOCK


def _hub_constants():
    import sys

    return sys.modules.get("huggingface_hub.constants")


@contextlib.contextmanager
def offline():
    """The libraries' offline switches on inside this block (nested blocks share one setting).

    Sets the variables of :data:`OFFLINE_ENV` the user has not set and, once
    huggingface_hub is imported, its ``HF_HUB_OFFLINE`` constant (which it
    reads at import); both are restored when the outermost block ends. Also
    applies :func:`guard_llvm_clash`, since the block is where torch and its
    libraries get imported.
    """
    global _DEPTH
    guard_llvm_clash()
    with _LOCK:
        if _DEPTH == 0:
            _SAVED.clear()
            _SAVED["env"] = {k: os.environ.get(k) for k in OFFLINE_ENV}
            for key, value in OFFLINE_ENV.items():
                os.environ.setdefault(key, value)
            constants = _hub_constants()
            _SAVED["hub"] = None if constants is None else constants.HF_HUB_OFFLINE
            if constants is not None and os.environ.get("HF_HUB_OFFLINE") == "1":
                constants.HF_HUB_OFFLINE = True
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                for key, value in _SAVED.get("env", {}).items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
                constants = _hub_constants()
                if constants is not None:
                    before = _SAVED.get("hub")
                    constants.HF_HUB_OFFLINE = (
                        before if before is not None else os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True")
                    )


def import_transformers():
    """Import transformers with the hub switched to offline mode."""
    with offline(), _IMPORT_LOCK:
        import transformers

    return transformers


def import_ultralytics():
    """Import ultralytics with its offline switch and quiet logging."""
    with offline(), _IMPORT_LOCK:
        import ultralytics

    return ultralytics


@contextlib.contextmanager
def allow_hub_downloads():
    """Let huggingface_hub reach the network inside this block (a deliberate download)."""
    with offline():
        from huggingface_hub import constants

        old = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = False
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = old


def guard_llvm_clash() -> bool:
    """Keep torch from importing triton when an OpenGL driver's LLVM is already loaded.

    The CUDA builds of torch ship triton, whose ``libtriton.so`` carries its own
    LLVM. Importing it into a process where Mesa's OpenGL driver (llvmpipe,
    radeonsi: what napari gets under Xvfb, in VMs and on many Linux laptops) has
    loaded ``libLLVM`` crashes the process with a segmentation fault. torch
    only imports triton opportunistically (for ``torch.compile``, which
    napari-segsuite does not use) and treats an ImportError as "no triton",
    so when ``libLLVM`` is mapped and triton is not yet imported, triton is
    marked as unavailable. Elsewhere this does nothing.

    Returns
    -------
    bool
        Whether triton was marked unavailable.
    """
    import sys

    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps") as maps:
            clash = any("libLLVM" in line for line in maps)
    except OSError:
        return False
    if clash:
        sys.modules["triton"] = None  # `import triton` now raises ImportError
    return clash
