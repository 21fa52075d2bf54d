"""Loading models after napari created its OpenGL context must not crash the process.

Under Mesa's OpenGL (Xvfb, VMs, many Linux laptops) importing triton after
libLLVM is loaded segfaults; the loaders guard against it. This runs in a fresh
process, where nothing imported triton first.
"""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.widget

SCRIPT = r"""
import sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((32, 32)))
assert "triton" not in sys.modules
from napari_segsuite.testing.tiny_sam import build_tiny_sam
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget
path = build_tiny_sam(sys.argv[1])
w = SamPromptWidget(viewer)
w.models.model.value = LOCAL
w.models.local.value = str(path)
w.device.value = "cpu"
w.run()
t = time.time()
while not w.run_button.enabled and time.time() - t < 60:
    QApplication.processEvents(); time.sleep(0.01)
import torchvision.ops  # what Mask R-CNN and DeepLabV3 need
print("RESULT", w.message.value, w.jobs.last_error)
"""


def test_models_load_in_a_worker_after_the_gl_context_exists(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "sam.pth")], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plane encoded" in result.stdout and result.stdout.strip().endswith("None")
