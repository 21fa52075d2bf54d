"""Quality of the U-Net trained from sparse strokes: IoU of the coin class on scikit-image's coins.

The strokes are the shipped ``coins_strokes.npy`` (lines through rows of coins
and through background, about 4 % of the pixels); the reference is a careful
marker-based watershed on the Sobel gradient with holes filled
(:func:`napari_segsuite.testing.coins.coins_reference_mask`). Training runs
once, on the CPU, in a fresh process (``repeats`` is ignored: one training is
minutes). ``UNET_BENCH_STEPS`` overrides the number of steps and
``UNET_BENCH_SAVE`` names a folder to save the trained model in (the
screenshot script ``benchmarks/shot_unet.py`` can show its curve).
"""

from __future__ import annotations

import os

from run import benchmark, run_python

#: The benchmark's training settings (the defaults of TrainingOptions, spelled out).
STEPS = 250

CODE = """
import os, time
import numpy as np
import torch
from skimage import data
from napari_segsuite import api
from napari_segsuite.testing.coins import coins_reference_mask, coins_strokes

image, strokes, ref = data.coins(), coins_strokes(), coins_reference_mask()
t = time.perf_counter()
model = api.train_unet(image, strokes, class_names=["background", "coin"], steps={steps}, device="cpu")
train_s = time.perf_counter() - t
t = time.perf_counter()
coin = model.predict(image) == 2
predict_s = time.perf_counter() - t
save = os.environ.get("UNET_BENCH_SAVE")
if save:
    model.save(save)
n = int(np.count_nonzero(strokes))
result = {{
    "iou_coin": float((coin & ref).sum() / (coin | ref).sum()),
    "train_s": train_s, "predict_s": predict_s, "steps": {steps},
    "labeled_px": n, "labeled_frac": n / strokes.size,
    "best_step": model.config["training"]["best_step"], "threads": torch.get_num_threads(),
}}
"""


@benchmark("unet_coins")
def unet_coins(repeats: int) -> list[dict]:
    """Train on coins with the shipped strokes (CPU), report IoU vs the watershed reference and time."""
    steps = int(os.environ.get("UNET_BENCH_STEPS", STEPS))
    row = run_python(CODE.format(steps=steps))
    return [{"case": f"coins, {steps} steps, CPU", **row}]
