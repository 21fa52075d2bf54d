"""Soak and shutdown benchmarks: nothing lost over long sessions, nothing left running at exit.

- ``soak``: 1,000 prompt-and-commit cycles in a real viewer (1920x1080 window) with a tiny SAM:
  a real mouse click on the canvas, wait for the preview, Shift-C on the canvas. Reports the
  click-to-preview latency (median of the first and last 100 cycles, and their minimum), the
  same decode without the viewer after each cycle (a control for how busy the machine is; the
  click latency minus it is what the viewer and the dock add), the resident memory after
  the first 100 cycles and at the end, and checks that every commit is in the layer and in the
  autosave journal.
- ``exit``: seconds from closing the viewer to the end of the process, with no job and during
  each kind of job (model loading, tiled semantic and instance inference, panoptic inference,
  SAM encoding, segment everything, propagation through planes, U-Net training);
  ``SEGSUITE_EXIT_KINDS=semantic,sam_auto`` picks some.

- ``long_prompt``: 800 real clicks into one prompt (no commit): click-to-preview latency of
  clicks 1-100 against the last 100, and memory (``SEGSUITE_TRACEMALLOC=1`` prints where the
  memory grew between click 100 and the last).

Run ``python benchmarks/run.py soak exit long_prompt`` (under Xvfb on a headless machine).
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

# The SAM dock of the soak and long-prompt scripts: a 1920x1080 viewer on a 512x512 image, the dock
# with the tiny SAM of argv[2] loaded, its prompt layers made and pixel(row, col) mapping data to the canvas.
_SAM_DOCK = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    import napari
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication
    from napari_segsuite.widgets.base import LOCAL
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget
    sam = sys.argv[2]

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
""")

_SAM_DOCK_READY = textwrap.dedent("""
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
""")

SOAK = _SAM_DOCK + textwrap.dedent("""
    cycles, folder = int(sys.argv[1]), sys.argv[3]
    w.autosave_dir.value = folder
    w.overwrite.value = True
""") + _SAM_DOCK_READY + textwrap.dedent("""

    latency, reference, rss, lost_clicks = [], [], [], 0
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
        # the same decode without the viewer: how busy the machine is right now (a load control)
        # (the dock's current session may hold one window of the plane: prompt its centre)
        fixed_point = np.array([[(s - 1) / 2 for s in w.session._prompted_image()[1]]])
        t = time.perf_counter()
        w.session.predict(points=fixed_point, point_labels=np.array([1]))
        reference.append(time.perf_counter() - t)
        if (k + 1) % 100 == 0 or k == 9:
            rss.append((k + 1, rss_mb()))
    target = viewer.layers["img [sam]"]
    from napari_segsuite.core.fingerprint import ImageIdentity
    from napari_segsuite.core.journal import AutosaveJournal
    journal = AutosaveJournal(folder, ImageIdentity.of(image.data, "img"), "img [sam]", target.data.shape)
    result = {"latency": latency, "reference": reference, "rss": rss, "lost_clicks": lost_clicks,
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
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        sam = build_tiny_sam(Path(tmp) / "tiny_sam.pth")
        proc = subprocess.run([sys.executable, "-c", SOAK, str(cycles), str(sam), str(Path(tmp) / "auto")],
                              capture_output=True, text=True, env=_env(), timeout=7200)
        r = _result(proc.stdout + proc.stderr)
    raw = os.environ.get("SEGSUITE_SOAK_RAW")
    if raw:  # the per-cycle latencies and memory, for a closer look
        Path(raw).write_text(json.dumps(r))
    lat, ref = np.asarray(r["latency"]), np.asarray(r["reference"])
    first, last = float(np.median(lat[:100])), float(np.median(lat[-100:]))
    over = lat - ref  # what the viewer and the dock add to the decode
    rss = dict(r["rss"])
    base = rss.get(100, rss[min(rss)])
    return [{
        "cycles": cycles,
        "click_to_preview_first100_s": first,
        "click_to_preview_last100_s": last,
        "latency_ratio_last_first": last / first,
        "latency_min_first100_last100_s": f"{lat[:100].min():.3f}/{lat[-100:].min():.3f}",
        "bare_decode_first100_last100_s": f"{np.median(ref[:100]):.3f}/{np.median(ref[-100:]):.3f}",
        "gui_part_first100_last100_s": f"{np.median(over[:100]):.3f}/{np.median(over[-100:]):.3f}",
        "rss_after_100_mb": base,
        "rss_end_mb": rss[max(rss)],
        "rss_growth_mb": rss[max(rss)] - base,
        "labels": r["labels"],
        "journal_entries": r["entries"],
        "journal_equals_layer": r["journal_equal"],
        "clicks_misplaced": r["lost_clicks"],
        "load_avg_1min_before_after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
    }]


LONG_PROMPT = _SAM_DOCK + textwrap.dedent("""
    clicks, trace = int(sys.argv[1]), sys.argv[3] == "1"
""") + _SAM_DOCK_READY + textwrap.dedent("""

    if trace:
        import tracemalloc
        tracemalloc.start(int(os.environ.get("SEGSUITE_TRACEMALLOC_FRAMES", "1")))
    latency, rss, snaps = [], [], {}
    for k in range(clicks):
        r, c = rng.uniform(20, 490, 2)
        viewer.layers.selection.active = points
        points.mode = "add"
        n = len(points.data)
        t = time.perf_counter()
        button = Qt.MouseButton.LeftButton if k % 4 else Qt.MouseButton.RightButton  # a quarter negative
        QTest.mouseClick(canvas, button, Qt.KeyboardModifier.NoModifier, pixel(r, c))
        process(lambda: len(points.data) > n and not w.preview_busy and bool(w._objects), 120)
        latency.append(time.perf_counter() - t)
        if (k + 1) % 100 == 0:
            rss.append((k + 1, rss_mb()))
            if trace and (k + 1) in (100, clicks):
                snaps[k + 1] = tracemalloc.take_snapshot()
    top = []
    if trace:
        diff = snaps[clicks].compare_to(snaps[100], "traceback")
        for stat in diff[:8]:
            top.append({"kib": stat.size_diff / 1024, "count": stat.count_diff,
                        "where": [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback][-8:]})
    print("RESULT", json.dumps({"latency": latency, "rss": rss, "points": len(points.data), "top": top}), flush=True)
""")


@benchmark("long_prompt")
def long_prompt(repeats: int) -> list[dict]:
    """800 real clicks into one prompt: click-to-preview latency and memory, clicks 1-100 against 700-800."""
    import numpy as np

    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    clicks = int(os.environ.get("SEGSUITE_LONG_PROMPT_CLICKS", "800"))
    trace = os.environ.get("SEGSUITE_TRACEMALLOC", "0")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        sam = build_tiny_sam(Path(tmp) / "tiny_sam.pth")
        proc = subprocess.run([sys.executable, "-c", LONG_PROMPT, str(clicks), str(sam), trace],
                              capture_output=True, text=True, env=_env(), timeout=7200)
        r = _result(proc.stdout + proc.stderr)
    for stat in r["top"]:
        print(f"{stat['kib']:10.1f} KiB {stat['count']:7d} objects  " + " <- ".join(reversed(stat["where"])))
    lat = np.asarray(r["latency"])
    rss = dict(r["rss"])
    first, last = float(np.median(lat[:100])), float(np.median(lat[-100:]))
    return [{
        "points": r["points"],
        "click_to_preview_1_100_s": first,
        "click_to_preview_last100_s": last,
        "ratio": last / first,
        "rss_at_100_mb": rss[min(rss)],
        "rss_end_mb": rss[max(rss)],
        "rss_growth_mb": rss[max(rss)] - rss[min(rss)],
        "load_avg_1min_before_after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
    }]


EXIT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import napari
    from qtpy.QtCore import QTimer
    from napari_segsuite.widgets.base import LOCAL
    kind, models = sys.argv[1], json.loads(sys.argv[2])
    viewer = napari.Viewer(show=True)
    rng = np.random.default_rng(0)

    def dock(cls, model):
        w = cls(viewer); viewer.window.add_dock_widget(w)
        w.models.model.value = LOCAL; w.models.local.value = model; w.device.value = "cpu"
        return w

    if kind in ("idle", "load", "panoptic"):
        from napari_segsuite.widgets.panoptic import PanopticWidget
        viewer.add_image(rng.random((64, 64) if kind != "panoptic" else (1024, 1024)), name="img")
        w = dock(PanopticWidget, models["panoptic"])
        ready = {"idle": lambda: True, "load": lambda: "Loading" in w.message.value,
                 "panoptic": lambda: "Segmenting" in w.message.value}[kind]
        start = w.run if kind != "idle" else (lambda: None)
    elif kind == "semantic":
        from napari_segsuite.widgets.semantic import SemanticWidget
        viewer.add_image((rng.random((2048, 2048, 3)) * 255).astype(np.uint8), name="img", rgb=True)
        w = dock(SemanticWidget, models["semantic"])
        w.tile_size.value, w.overlap.value = 256, 32
        ready, start = (lambda: "Tile" in w.message.value), w.run
    elif kind == "instance":
        from napari_segsuite.widgets.instance import InstanceWidget
        viewer.add_image((rng.random((960, 960, 3)) * 255).astype(np.uint8), name="img", rgb=True)
        w = dock(InstanceWidget, models["instance"])
        w.conf.value, w.tile_size.value, w.overlap.value, w.max_det.value = 0.0, 256, 64, 300
        ready, start = (lambda: "Tile" in w.message.value), w.run
    elif kind == "training":
        from napari_segsuite.testing.coins import coins_strokes
        from napari_segsuite.widgets.unet_training import UnetTrainingPanel
        from skimage import data
        viewer.add_image(data.coins(), name="coins")
        viewer.add_labels(coins_strokes(), name="strokes")
        w = UnetTrainingPanel(viewer); viewer.window.add_dock_widget(w)
        w.extra_options = {"encoder_name": "tu-mobilenetv3_small_050", "encoder_depth": 3,
                           "decoder_channels": (16, 8, 8), "batch_size": 2, "val_every": 2}
        w.steps.value, w.patch_size.value = 100000, 64
        ready, start = (lambda: "Step" in w.message.value), w.train
    else:
        from napari_segsuite.widgets.sam_prompt import SamPromptWidget
        shape = (24, 512, 512) if kind == "propagation" else (1024, 1024)
        image = viewer.add_image(rng.random(shape), name="img")
        w = dock(SamPromptWidget, models["sam"])
        if kind == "sam_encode":
            ready, start = (lambda: "Encoding" in w.message.value), w.run
        elif kind == "sam_auto":
            for key, v in {"points_per_side": 32, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}.items():
                w.auto_params[key].value = v
            ready, start = (lambda: "points" in w.message.value), w.segment_everything
        else:  # propagation of an object on the middle plane through all 24
            labels = np.zeros(shape, np.int32); labels[12, 200:300, 200:300] = 1
            viewer.add_labels(labels, name="img [sam]")
            viewer.dims.set_point(0, 12)
            w.prop_label.value, w.prop_floor.value = 1, 0.0
            ready, start = (lambda: "Propagating" in w.message.value), w.propagate
    deadline = time.monotonic() + 600

    def close():
        if not ready() and time.monotonic() < deadline:
            QTimer.singleShot(20, close); return
        print("BUSY", w.jobs.busy, "|", w.message.value, flush=True)
        print("CLOSE", time.time(), flush=True)
        viewer.close()
    QTimer.singleShot(100, start)
    QTimer.singleShot(400, close)
    napari.run()
""")

#: every kind of job the exit benchmark closes the viewer during
EXIT_KINDS = ("idle", "load", "semantic", "instance", "panoptic", "sam_encode", "sam_auto", "propagation",
              "training")


@benchmark("exit")
def exit_time(repeats: int) -> list[dict]:
    """Seconds from closing the viewer to the end of the process, idle and during each kind of job."""
    import statistics

    from napari_segsuite.testing.instance_doubles import sharpen_yolo
    from napari_segsuite.testing.tiny_models import (
        build_tiny_mask2former,
        build_tiny_segformer,
        build_tiny_yolo,
    )
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    kinds = os.environ.get("SEGSUITE_EXIT_KINDS", ",".join(EXIT_KINDS)).split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = json.dumps({
            "panoptic": str(build_tiny_mask2former(Path(tmp) / "m2f", task="panoptic", num_labels=4)),
            "semantic": str(build_tiny_segformer(Path(tmp) / "seg", num_labels=4)),
            "instance": str(sharpen_yolo(build_tiny_yolo(Path(tmp) / "yseg.pt", "segment", nc=3))),
            "sam": str(build_tiny_sam(Path(tmp) / "sam.pth")),
        })
        for kind in kinds:
            times, states, codes = [], [], []
            for _ in range(max(1, min(repeats, 3))):
                proc = subprocess.Popen([sys.executable, "-c", EXIT, kind, models],
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
                         "load_1min": round(os.getloadavg()[0], 1), "state": states[0][:44] if states else ""})
    return rows
