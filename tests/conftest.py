"""Shared fixtures: offline switches, tiny models built once per session."""

from __future__ import annotations

import os

import numpy as np
import pytest

# Nothing in the tests may reach a model hub; set the switches before any import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "true")

# The test modules import torch, torchvision and transformers directly (not only
# through napari_segsuite's guarded loaders), so load triton before any viewer
# creates an OpenGL context: see napari_segsuite.models.offline.guard_llvm_clash,
# which test_llvm_guard.py checks in a fresh process.
try:
    import triton  # noqa: F401
except ImportError:
    pass


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty model cache so the user's cache is never touched."""
    monkeypatch.setenv("NAPARI_SEGSUITE_CACHE", str(tmp_path_factory.mktemp("cache")))
    import napari_segsuite.models.store as store

    monkeypatch.setattr(store, "_DEFAULT_STORE", None)


@pytest.fixture(scope="session")
def tiny_sam_path(tmp_path_factory):
    """A tiny SAM checkpoint in Meta's state-dict format."""
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


@pytest.fixture
def rng():
    """A seeded random generator."""
    return np.random.default_rng(0)


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    seen = []

    def grab(event):
        note = getattr(event, "notification", event)  # napari passes the Notification itself
        seen.append(str(note.message))

    notification_manager.notification_ready.connect(grab)
    yield seen
    notification_manager.notification_ready.disconnect(grab)
