"""SAM prompt benchmarks: click to preview, the encoder in a worker, event-loop stalls, cache hits.

Real-size architectures with random weights (vit_b from segment_anything's
builder, SAM 2.1 Hiera-tiny from transformers' default ``Sam2Config``): the
timings depend on the architecture, not on the weights. Everything runs in one
process so that the ratios compare runs made side by side. Needs a display
(``./dev bench sam`` brings Xvfb).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from run import benchmark


def _vit_b_checkpoint(folder: Path) -> Path:
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = folder / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    return path


def _sam21_tiny_folder(folder: Path) -> Path:
    import torch
    from transformers import Sam2Config, Sam2Model, Sam2Processor
    from transformers.models.sam2.image_processing_sam2_fast import Sam2ImageProcessorFast

    torch.manual_seed(0)
    out = folder / "sam2.1_hiera_tiny_random"
    Sam2Model(Sam2Config()).save_pretrained(out)  # the default config is Hiera-tiny
    Sam2Processor(image_processor=Sam2ImageProcessorFast()).save_pretrained(out)
    return out


def _median_ms(values) -> float:
    return 1000 * statistics.median(values)


def _wait(app, condition, timeout=600.0) -> None:
    """Run the Qt event loop (blocking, not spinning) until ``condition()`` holds."""
    from qtpy.QtCore import QEventLoop, QTimer

    end = time.perf_counter() + timeout
    loop = QEventLoop()
    check = QTimer()
    check.setInterval(20)
    check.timeout.connect(lambda: loop.quit() if condition() or time.perf_counter() > end else None)
    check.start()
    if not condition():
        loop.exec()
    check.stop()
    if not condition():
        raise TimeoutError


@benchmark("sam")
def sam_prompt(repeats: int) -> list[dict]:
    """Issue 3's figures on this CPU."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication
    from segment_anything import SamPredictor
    from superqt.utils import create_worker

    from napari_segsuite.models.offline import guard_llvm_clash
    from napari_segsuite.tasks.sam_session import SamSession
    from napari_segsuite.widgets.base import LOCAL
    from napari_segsuite.widgets.sam_prompt import SamPromptWidget

    guard_llvm_clash()
    rows = []
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    point = np.array([[400.0, 600.0]])

    # -- time to the first mask on a new image -------------------------------------------
    vit_b = _vit_b_checkpoint(tmp)
    sam2 = _sam21_tiny_folder(tmp)
    for name, spec in (("vit_b", vit_b), ("SAM 2.1 Hiera-tiny", sam2)):
        session = SamSession(str(spec), device="cpu")
        times = []
        for k in range(repeats):
            img = np.roll(image, k, axis=1)  # a new image each time
            t = time.perf_counter()
            session.set_image(img)
            session.predict(points=point)
            times.append(time.perf_counter() - t)
        rows.append({"measure": f"first mask, new 1024x1024 image, {name}", "value": _median_ms(times), "unit": "ms",
                     "goal": "report"})

    # -- click to preview with a cached embedding vs bare SamPredictor ------------------------
    session = SamSession(str(vit_b), device="cpu")
    session.set_image(image)
    bare = SamPredictor(session.runner.model)
    bare.set_image(image)
    ours, theirs = [], []
    for _ in range(max(20, repeats)):
        t = time.perf_counter()
        bare.predict(point_coords=point[:, ::-1], point_labels=np.array([1]))
        theirs.append(time.perf_counter() - t)
        t = time.perf_counter()
        session.predict(points=point, point_labels=np.array([1]))
        ours.append(time.perf_counter() - t)
    rows.append({"measure": "prompt decode, bare SamPredictor.predict (vit_b)", "value": _median_ms(theirs), "unit": "ms",
                 "goal": ""})
    rows.append({"measure": "prompt decode, SamSession.predict (vit_b)", "value": _median_ms(ours), "unit": "ms",
                 "goal": ""})
    rows.append({"measure": "  ratio SamSession / SamPredictor", "value": statistics.median(ours) / statistics.median(theirs),
                 "unit": "x", "goal": "<= 1.1"})

    # -- prompts while a neighbouring plane is prefetched in the background ------------------------
    import threading

    from napari_segsuite.core.progress import run_sync

    busy = threading.Event()
    during = []

    def prefetch() -> None:
        busy.set()
        run_sync(session.encode_job(np.roll(image, 31, axis=0), background=True))
        busy.clear()

    thread = threading.Thread(target=prefetch)
    thread.start()
    while not busy.is_set():
        time.sleep(0.001)
    time.sleep(1.0)  # the prefetch is inside the encoder now
    for _ in range(max(20, repeats)):
        t = time.perf_counter()
        session.predict(points=point, point_labels=np.array([1]))
        during.append(time.perf_counter() - t)
        time.sleep(0.05)  # a user clicking quickly
    thread.join()
    rows.append({"measure": "prompt decode while prefetching a plane (vit_b)", "value": _median_ms(during),
                 "unit": "ms", "goal": f"vs {_median_ms(ours):.0f} idle"})

    # -- revisiting a cached plane ------------------------------------------------------------
    other = np.roll(image, 7, axis=0)
    session.set_image(other)
    revisit = []
    for _ in range(max(10, repeats)):
        t = time.perf_counter()
        session.set_image(image)
        revisit.append(time.perf_counter() - t)
        session.set_image(other)
    rows.append({"measure": "revisit a cached plane (vit_b, 1024x1024)", "value": _median_ms(revisit), "unit": "ms",
                 "goal": "<= 50"})

    # -- the encoder in a worker vs on the main thread; event-loop stalls -------------------------
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, rgb=True)
    app = QApplication.instance()
    main_t, worker_t, stalls = [], [], []
    rgb = image

    def run_in_worker(img, heartbeat: bool):
        beats, done = [], []
        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(lambda: beats.append(time.perf_counter()))

        def job():
            yield
            t0 = time.perf_counter()
            session.backend.encode(img)
            return time.perf_counter() - t0

        worker = create_worker(job, _start_thread=False)
        worker.returned.connect(done.append)
        if heartbeat:
            timer.start()
            beats.append(time.perf_counter())
        worker.start()
        _wait(app, lambda: bool(done))
        timer.stop()
        return done[0], (max(np.diff(beats)) if len(beats) > 1 else float("nan"))

    for k in range(repeats):
        img = np.roll(rgb, 100 + k, axis=1)
        t = time.perf_counter()
        session.backend.encode(img)
        main_t.append(time.perf_counter() - t)
        worker_t.append(run_in_worker(np.roll(rgb, 200 + k, axis=1), heartbeat=False)[0])
    for k in range(repeats):  # the stall measurement, with a 10 ms heartbeat timer
        stalls.append(run_in_worker(np.roll(rgb, 300 + k, axis=1), heartbeat=True)[1])
    rows.append({"measure": "encoder on the main thread (vit_b)", "value": _median_ms(main_t), "unit": "ms", "goal": ""})
    rows.append({"measure": "encoder in a worker, viewer running (vit_b)", "value": _median_ms(worker_t), "unit": "ms",
                 "goal": ""})
    rows.append({"measure": "  ratio worker / main thread", "value": statistics.median(worker_t) / statistics.median(main_t),
                 "unit": "x", "goal": "<= 1.05"})
    rows.append({"measure": "longest event-loop gap while encoding (10 ms heartbeat)", "value": 1000 * max(stalls),
                 "unit": "ms", "goal": "<= 100"})

    # -- click to preview in the widget (worker + preview layer), debounce excluded --------------
    viewer.layers.clear()
    viewer.add_image(image[..., 0], name="img")
    widget = SamPromptWidget(viewer)
    widget.models.model.value = LOCAL
    widget.models.local.value = str(vit_b)
    widget.device.value = "cpu"
    widget.session = session
    widget._session_key = (*widget.model_key(), str(widget.embedding_dir.value))
    session.set_image(image[..., 0])
    points, _ = widget.ensure_prompt_layers()
    points.add([500.0, 500.0])
    _wait(app, lambda: bool(widget._objects) and not widget.jobs.busy and not widget._timer.isActive())
    clicks = []
    for k in range(max(10, repeats)):
        widget._objects = []
        points.data = np.array([[300.0 + k, 500.0]])
        widget._timer.stop()
        t = time.perf_counter()
        widget.request_preview()
        _wait(app, lambda: bool(widget._objects) and not widget.jobs.busy)
        clicks.append(time.perf_counter() - t)
    rows.append({"measure": "widget click to preview, cached (vit_b; worker + layer update)", "value": _median_ms(clicks),
                 "unit": "ms", "goal": ""})
    rows.append({"measure": "  ratio widget / bare SamPredictor.predict",
                 "value": statistics.median(clicks) / statistics.median(theirs), "unit": "x", "goal": "report"})
    viewer.close()
    return rows
