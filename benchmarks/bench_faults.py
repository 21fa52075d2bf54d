"""Soak and shutdown benchmarks: nothing lost over long sessions, nothing left running at exit.

- ``soak``: 1,000 prompt-and-commit cycles in a real viewer (1920x1080 window) with a tiny SAM:
  a real mouse click on the canvas, wait for the preview, Shift-C on the canvas. Reports the
  click-to-preview latency (median of the first and last 100 cycles), the resident memory after
  the first 100 cycles and at the end, and checks that every commit is in the layer and in the
  autosave journal.
- ``exit``: seconds from closing the viewer to the end of the process, with no job and during
  each kind of job (model loading, tiled instance inference, SAM encoding, segment everything).

Run ``python benchmarks/run.py soak exit`` (under Xvfb on a headless machine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from run import benchmark

SOAK = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import napari
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication
    from napari_segsuite.widgets.base import LOCAL
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget
    cycles, sam, folder = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    def process(until, timeout=60):
        end = time.monotonic() + timeout
        while not until():
            if time.monotonic() > end:
                raise TimeoutError("no preview")
            QApplication.processEvents(); time.sleep(0.001)

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    rng = np.random.default_rng(0)
    image = viewer.add_image((rng.random((512, 512)) * 255).astype(np.uint8), name="img")
    w = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.models.model.value = LOCAL; w.models.local.value = sam; w.device.value = "cpu"
    w.autosave_dir.value = folder
    w.overwrite.value = True
    w.run()
    process(lambda: not w.jobs.busy, 300)
    points, _ = w.ensure_prompt_layers()
    viewer.reset_view()
    canvas = viewer.window._qt_viewer.canvas.native
    for _ in range(20):
        QApplication.processEvents(); time.sleep(0.01)

    def pixel(r, c):
        cam = viewer.camera
        return QPoint(round(canvas.width() / 2 + (c - cam.center[-1]) * cam.zoom),
                      round(canvas.height() / 2 + (r - cam.center[-2]) * cam.zoom))

    latency, rss, lost_clicks = [], [], 0
    for k in range(cycles):
        r, c = rng.uniform(20, 490, 2)
        viewer.layers.selection.active = points
        points.mode = "add"
        n = len(points.data)
        t = time.perf_counter()
        QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pixel(r, c))
        process(lambda: len(points.data) > n and not w.preview_busy and bool(w._objects))
        latency.append(time.perf_counter() - t)
        if abs(points.data[-1][-2] - r) > 1.5 or abs(points.data[-1][-1] - c) > 1.5:
            lost_clicks += 1
        canvas.setFocus()
        QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
        QApplication.processEvents()
        if (k + 1) % 100 == 0 or k == 9:
            rss.append((k + 1, rss_mb()))
    target = viewer.layers["img [sam]"]
    from napari_segsuite.core.fingerprint import ImageIdentity
    from napari_segsuite.core.journal import AutosaveJournal
    journal = AutosaveJournal(folder, ImageIdentity.of(image.data, "img"), "img [sam]", target.data.shape)
    result = {"latency": latency, "rss": rss, "lost_clicks": lost_clicks,
              "labels": int(np.asarray(target.data).max()), "entries": len(journal.entries()),
              "journal_equal": bool(np.array_equal(journal.replay(), target.data))}
    print("RESULT", json.dumps(result), flush=True)
""")


def _env() -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _result(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(out[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


@benchmark("soak")
def soak(repeats: int) -> list[dict]:
    """1,000 click-preview-commit cycles with a tiny SAM: latency over the run and memory growth."""
    import numpy as np

    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    cycles = int(os.environ.get("SEGSUITE_SOAK_CYCLES", "1000"))
    with tempfile.TemporaryDirectory() as tmp:
        sam = build_tiny_sam(Path(tmp) / "tiny_sam.pth")
        proc = subprocess.run([sys.executable, "-c", SOAK, str(cycles), str(sam), str(Path(tmp) / "auto")],
                              capture_output=True, text=True, env=_env(), timeout=7200)
        r = _result(proc.stdout + proc.stderr)
    lat = np.asarray(r["latency"])
    first, last = float(np.median(lat[:100])), float(np.median(lat[-100:]))
    rss = dict(r["rss"])
    base = rss.get(100, rss[min(rss)])
    return [{
        "cycles": cycles,
        "click_to_preview_first100_s": first,
        "click_to_preview_last100_s": last,
        "latency_change_pct": 100.0 * (last - first) / first,
        "rss_after_100_mb": base,
        "rss_end_mb": rss[max(rss)],
        "rss_growth_mb": rss[max(rss)] - base,
        "labels": r["labels"],
        "journal_entries": r["entries"],
        "journal_equals_layer": r["journal_equal"],
        "clicks_misplaced": r["lost_clicks"],
    }]


EXIT = textwrap.dedent("""
    import sys, time
    import numpy as np
    import napari
    from qtpy.QtCore import QTimer
    from napari_segsuite.widgets.base import LOCAL
    kind, model = sys.argv[1], sys.argv[2]
    viewer = napari.Viewer(show=True)
    rng = np.random.default_rng(0)
    if kind in ("idle", "load"):
        from napari_segsuite.widgets.panoptic import PanopticWidget as W
        viewer.add_image(rng.random((64, 64)), name="img")
        ready = lambda w: "Loading" in w.message.value
    elif kind == "tiling":
        from napari_segsuite.widgets.instance import InstanceWidget as W
        viewer.add_image((rng.random((960, 960, 3)) * 255).astype(np.uint8), name="img", rgb=True)
        ready = lambda w: "Tile" in w.message.value
    else:
        from napari_segsuite.widgets.sam_prompt import SamPromptWidget as W
        viewer.add_image(rng.random((512, 512)), name="img")
        ready = lambda w: "Encod" in w.message.value or "Segment" in w.message.value or "everything" in w.message.value
    w = W(viewer); viewer.window.add_dock_widget(w)
    w.models.model.value = LOCAL; w.models.local.value = model; w.device.value = "cpu"
    if kind == "tiling":
        w.conf.value, w.tile_size.value, w.overlap.value, w.max_det.value = 0.0, 256, 64, 300
    def start():
        if kind == "idle":
            return
        if kind == "sam_auto":
            for key, v in {"points_per_side": 32, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}.items():
                w.auto_params[key].value = v
            w.segment_everything()
        else:
            w.run()
    deadline = time.monotonic() + 300
    def close():
        if kind != "idle" and not ready(w) and time.monotonic() < deadline:
            QTimer.singleShot(20, close); return
        print("BUSY", w.jobs.busy, "|", w.message.value, flush=True)
        print("CLOSE", time.time(), flush=True)
        viewer.close()
    QTimer.singleShot(100, start)
    QTimer.singleShot(400, close)
    napari.run()
""")


@benchmark("exit")
def exit_time(repeats: int) -> list[dict]:
    """Seconds from closing the viewer to the end of the process, idle and during each kind of job."""
    import statistics

    from napari_segsuite.testing.instance_doubles import sharpen_yolo
    from napari_segsuite.testing.tiny_models import build_tiny_mask2former, build_tiny_yolo
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "idle": build_tiny_mask2former(Path(tmp) / "m2f", task="panoptic", num_labels=4),
            "tiling": sharpen_yolo(build_tiny_yolo(Path(tmp) / "yseg.pt", "segment", nc=3)),
            "sam": build_tiny_sam(Path(tmp) / "sam.pth"),
        }
        models["load"] = models["idle"]
        models["sam_encode"] = models["sam_auto"] = models["sam"]
        for kind in ("idle", "load", "tiling", "sam_encode", "sam_auto"):
            times, states, codes = [], [], []
            for _ in range(max(1, min(repeats, 3))):
                proc = subprocess.Popen([sys.executable, "-c", EXIT, kind, str(models[kind])],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
                out, err = proc.communicate(timeout=900)
                end = time.time()
                closed = [float(line.split()[1]) for line in out.splitlines() if line.startswith("CLOSE ")]
                states += [line[5:].strip() for line in out.splitlines() if line.startswith("BUSY ")]
                codes.append(proc.returncode if "Traceback" not in err else "traceback")
                if closed:
                    times.append(end - closed[0])
            rows.append({"job when closed": kind, "median_exit_s": statistics.median(times) if times else -1.0,
                         "max_exit_s": max(times) if times else -1.0, "exit codes": ",".join(map(str, codes)),
                         "state": states[0][:40] if states else ""})
    return rows
