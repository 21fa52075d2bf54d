"""Time to the first mask on a new 1024x1024 image for every prompt family; SAM 3's first vs second concept.

Random weights of the real default architectures (the timings depend on the
architecture, not on the weights): SAM vit_b (segment_anything's builder),
SAM 2.1 Hiera-tiny (transformers' default ``Sam2Config``), SAM 3 tracker
(default ``Sam3TrackerConfig``: SAM 3's ViT-L/14 at 1008 pixels), EdgeTAM
(default ``EdgeTamConfig`` with its RepViT-M1 backbone from timm) and the SAM 3
concept model (default ``Sam3Config``: the same ViT plus a 24-layer text
encoder, 840 M parameters). Each family runs in its own fresh process (the
large ones need several GB) through :class:`~napari_segsuite.api.SamSession`
(or ``api.segment_instances`` for concepts), the way a user's call runs.

- ``prompt_families``: ``SamSession.set_image`` + ``predict`` (one point) on a
  new image each repeat, after one warm-up image (the process's one-time costs)
  for the models under 100 M parameters.
- ``sam3_concepts``: ``segment_instances`` with a first concept on a new plane
  (vision encoder + text encoder + decoder), then a second concept on the same
  plane (text encoder + decoder: the plane's vision features are cached), then
  the first concept again (decoder only: its text features are cached too).

Run ``python benchmarks/run.py prompt_families sam3_concepts --repeats 2``.

Measured 2026-12-01 on the 2-core dev VM while five other sessions ran tests (load average
15-18), ``SEGSUITE_BENCH_FAMILIES=edgetam,sam2.1_hiera_tiny,sam_vit_b ... prompt_families
--repeats 2``: EdgeTAM (9.1 M) 26.7 s, SAM 2.1 Hiera-tiny (31.4 M) 32.3 s, SAM vit_b (93.7 M)
161.9 s to the first mask (medians of 2). Under that load the absolute times are 5-30x a quiet
machine's (EdgeTAM's encoder alone: 0.6 s quiet); compare the rows of one run.
``sam3_concepts --repeats 1`` (840.4 M parameters, load 14.7): first concept on a new plane
358.1 s, a second concept on the same plane 44.9 s (0.125x: text encoder + decoder, one vision
pass in all), the first concept again 38.1 s (decoder only). SAM 3 tracker (458.3 M, ViT-L/14
at 1008 px), ``SEGSUITE_BENCH_FAMILIES=sam3_tracker ... --repeats 1`` (no warm-up, load 11.0):
270.7 s to the first mask.
On a quiet machine (2 December 2026, load average 1.5-1.7, the SAM encoder with its reused
attention buffers), ``SEGSUITE_BENCH_FAMILIES=edgetam,sam2.1_hiera_tiny,sam_vit_b ...
prompt_families --repeats 2``: EdgeTAM 0.58 s, SAM 2.1 Hiera-tiny 1.88 s, SAM vit_b 6.39 s to
the first mask (medians of 2), peak resident memory 1,377 / 1,724 / 3,119 MB.
The machine is shared: report the load average with the numbers and compare
rows of one run.
"""

from __future__ import annotations

import os

from run import benchmark, run_python

FAMILY_CODE = """
import numpy as np, time, os
from pathlib import Path
from napari_segsuite.models.offline import import_transformers
import torch
t = import_transformers()
torch.manual_seed(0)
family = {family!r}
from napari_segsuite.models.store import ModelSource
if family == "sam_vit_b":
    from segment_anything import sam_model_registry
    path = Path({tmp!r}) / "sam_vit_b_random.pth"
    if not path.exists():
        torch.save(sam_model_registry["vit_b"]().state_dict(), path)
    spec = str(path)
elif family == "sam2.1_hiera_tiny":
    from napari_segsuite.models.sam2 import Sam2Runner, default_sam2_processor
    config = t.Sam2Config()  # the default configuration is Hiera-tiny
    model = t.Sam2Model(config).eval()
    spec = Sam2Runner(model, ModelSource(Path("random"), "sam2", "random"), "cpu", Sam2Runner.TASKS,
                      processor=default_sam2_processor(config), info={{}})
elif family == "sam3_tracker":
    from napari_segsuite.models.sam2_family import Sam3TrackerRunner, default_sam3_tracker_processor
    config = t.Sam3TrackerConfig()
    model = t.Sam3TrackerModel(config).eval()
    spec = Sam3TrackerRunner(model, ModelSource(Path("random"), "sam3_tracker", "random"), "cpu",
                             Sam3TrackerRunner.TASKS, processor=default_sam3_tracker_processor(config), info={{}})
elif family == "edgetam":
    from napari_segsuite.models.sam2_family import EdgeTamRunner, default_edgetam_processor
    backbone = t.TimmWrapperConfig(architecture="repvit_m1",
                                   model_args={{"in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]}})
    config = t.EdgeTamConfig(vision_config=t.EdgeTamVisionConfig(backbone_config=backbone))
    model = t.EdgeTamModel(config).eval()
    spec = EdgeTamRunner(model, ModelSource(Path("random"), "edgetam", "random"), "cpu", EdgeTamRunner.TASKS,
                         processor=default_edgetam_processor(config), info={{}})
from napari_segsuite.tasks.sam_session import SamSession
session = SamSession(spec, device="cpu")
image = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
params = sum(p.numel() for p in session.runner.model.parameters())
if params < 100e6:  # warm-up: one-time costs of the process are not the first mask's (small next to SAM 3's)
    session.set_image(image)
    session.predict(points=np.array([[400.0, 600.0]]))
times = []
for k in range({repeats}):
    img = np.roll(image, 7 * (k + 1), axis=1)  # a new image each time
    t0 = time.perf_counter()
    session.set_image(img)
    masks, scores = session.predict(points=np.array([[400.0, 600.0]]))
    times.append(time.perf_counter() - t0)
assert masks.shape[1:] == (1024, 1024)
result = {{"seconds": float(np.median(times)), "min": float(min(times)), "params_m": params / 1e6,
          "load": os.getloadavg()[0]}}
"""

CONCEPT_CODE = """
import numpy as np, time, os
from pathlib import Path
from napari_segsuite.models.offline import import_transformers
import torch
t = import_transformers()
torch.manual_seed(0)
from napari_segsuite import api
from napari_segsuite.models.sam3 import Sam3Runner
from napari_segsuite.models.store import ModelSource
from napari_segsuite.testing.tiny_open_vocab import make_clip_tokenizer
config = t.Sam3Config()
model = t.Sam3Model(config).eval()
processor = t.Sam3Processor(image_processor=t.Sam3ImageProcessor(), tokenizer=make_clip_tokenizer())
runner = Sam3Runner(model, ModelSource(Path("random"), "sam3", "random"), "cpu", Sam3Runner.TASKS,
                    processor=processor, info={{}})
image = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
first, second, again = [], [], []  # no warm-up: the one-time costs are small next to an 840 M model's
for k in range({repeats}):
    img = np.roll(image, 7 * (k + 1), axis=1)
    t0 = time.perf_counter(); api.segment_instances(img, runner, classes=["cell"], conf=0.5)
    t1 = time.perf_counter(); api.segment_instances(img, runner, classes=["nucleus"], conf=0.5)
    t2 = time.perf_counter(); api.segment_instances(img, runner, classes=["cell"], conf=0.5)
    t3 = time.perf_counter()
    first.append(t1 - t0); second.append(t2 - t1); again.append(t3 - t2)
    runner._text.clear()  # the next repeat's concepts are new again
result = {{"seconds": float(np.median(first)), "second": float(np.median(second)), "again": float(np.median(again)),
          "vision_runs": runner.vision_runs, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
          "load": os.getloadavg()[0]}}
"""

FAMILIES = ("edgetam", "sam2.1_hiera_tiny", "sam_vit_b", "sam3_tracker")


@benchmark("prompt_families")
def prompt_families(repeats: int) -> list[dict]:
    """First mask on a new 1024x1024 image, per prompt family (fresh process each)."""
    import tempfile

    tmp = tempfile.mkdtemp()
    wanted = os.environ.get("SEGSUITE_BENCH_FAMILIES")
    rows = []
    for family in FAMILIES:
        if wanted and family not in wanted.split(","):
            continue
        r = run_python(FAMILY_CODE.format(family=family, tmp=tmp, repeats=repeats))
        rows.append({
            "family": family, "params_M": round(r["params_m"], 1), "first_mask_s": r["seconds"],
            "min_s": r["min"], "peak_mb": round(r["peak_mb"]), "load_avg": r["load"],
        })
        print(rows[-1], flush=True)  # the large families take minutes: show each row when it is done
    return rows


@benchmark("sam3_concepts")
def sam3_concepts(repeats: int) -> list[dict]:
    """SAM 3: first concept on a new plane vs a second concept on the same plane."""
    r = run_python(CONCEPT_CODE.format(repeats=repeats))
    return [{
        "params_M": round(r["params_m"], 1), "first_concept_s": r["seconds"], "second_concept_s": r["second"],
        "ratio": r["second"] / r["seconds"], "same_concept_again_s": r["again"],
        "vision_runs": r["vision_runs"], "peak_mb": round(r["peak_mb"]), "load_avg": r["load"],
    }]
