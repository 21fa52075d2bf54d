"""A good citizen in napari's process: no process-wide changes outside the plugin's own calls."""

import os
import subprocess
import sys

from napari_segsuite.models.offline import OFFLINE_ENV, offline

SCRIPT = r"""
import os, sys, json
for key in {keys!r}:
    os.environ.pop(key, None)
os.environ["YOLO_VERBOSE"] = "true"  # the user's own choice
import napari_segsuite, napari_segsuite.api as api
from napari_segsuite.demo.tiny_models import build_tiny_segformer
folder = build_tiny_segformer(sys.argv[1])
runner = api.load_model(folder, "cpu")
import huggingface_hub.constants as hub
print(json.dumps({{"env": {{k: os.environ.get(k) for k in {keys!r}}}, "hub_offline": hub.HF_HUB_OFFLINE,
                  "triton_blocked": "triton" in sys.modules and sys.modules["triton"] is None,
                  "loaded": runner.family}}))
"""


def test_offline_switches_are_on_only_inside_the_block(monkeypatch):
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("YOLO_VERBOSE", "true")
    with offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["YOLO_OFFLINE"] == "true"
        with offline():  # nested blocks share the setting
            assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["YOLO_VERBOSE"] == "true"  # the user's value is kept
    assert all(key not in os.environ for key in OFFLINE_ENV if key != "YOLO_VERBOSE")
    assert os.environ["YOLO_VERBOSE"] == "true"


def test_importing_and_loading_leave_the_environment_as_the_user_set_it(tmp_path):
    import json

    script = SCRIPT.format(keys=tuple(OFFLINE_ENV))
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "seg")], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["loaded"] == "segformer"
    assert out["env"] == {k: ("true" if k == "YOLO_VERBOSE" else None) for k in OFFLINE_ENV}
    assert out["hub_offline"] is False  # huggingface_hub is back to the user's (online) setting
    assert out["triton_blocked"] is False  # no OpenGL LLVM in this process: triton is left alone


def test_sam_dock_gives_its_keys_back_when_it_closes(make_napari_viewer, qtbot):
    from napari.utils.key_bindings import coerce_keybinding

    from napari_segsuite.widgets.sam_prompt import SamPromptWidget

    viewer = make_napari_viewer(show=False)
    mine = []
    viewer.bind_key("Shift-X", lambda v: mine.append("x"))  # the user's own binding first
    before = viewer.keymap[coerce_keybinding("Shift-X")]
    widget = SamPromptWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="SAM")
    assert viewer.keymap[coerce_keybinding("Shift-C")] is not None
    assert viewer.keymap[coerce_keybinding("Shift-X")] is not before  # the dock's while it is open
    dock.destroyOnClose()  # what the dock's close button does
    qtbot.waitUntil(lambda: coerce_keybinding("Shift-C") not in viewer.keymap, timeout=5000)
    assert viewer.keymap[coerce_keybinding("Shift-X")] is before  # the user's binding is back
    viewer.window.add_dock_widget(widget, name="SAM")  # opened again: the keys are the dock's again
    assert viewer.keymap[coerce_keybinding("Shift-X")] is not before
    widget.shutdown()
