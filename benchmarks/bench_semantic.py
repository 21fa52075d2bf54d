"""Tiled semantic segmentation of large uint16 images: time and peak memory against area.

Each size runs in a fresh process: a tiny SegFormer (the real architecture,
random weights, 64-pixel processor input) segments a uint16 image stored as a
zarr array on disk (512² chunks), in 512-pixel tiles with 64 pixels of overlap,
writing labels into a zarr array on disk. The image is never loaded whole, so
time should grow with the area and peak memory should stay flat.

Columns: ``seconds`` (segmentation only, median), ``s_per_mpx`` (seconds per
million pixels), ``tiles``, ``base_mb`` (peak RSS after imports and model
loading, before segmenting) and ``peak_mb`` (peak RSS of the whole process).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from run import benchmark, print_table

SIZES = (2500, 5000, 10000)
TILE = 512
OVERLAP = 64

MAKE_IMAGE = """
import numpy as np, zarr
size = {size}
z = zarr.open_array(store={path!r}, mode="w", shape=(size, size), chunks=(512, 512), dtype="uint16")
x = np.arange(size, dtype=np.float32)
for y0 in range(0, size, 512):
    y = np.arange(y0, min(y0 + 512, size), dtype=np.float32)[:, None]
    band = 20000 + 15000 * np.sin(x[None] / 97.0) * np.cos(y / 131.0) + (x[None] + y) % 977
    z[y0:y0 + band.shape[0]] = band.astype(np.uint16)
result = {{"seconds": 0.0}}
"""

SEGMENT = """
import numpy as np, time, zarr
from napari_segsuite import api
from napari_segsuite.models.base import load_model
runner = load_model({model!r}, "cpu")
image = zarr.open_array(store={path!r}, mode="r")
out = zarr.open_array(store={out!r}, mode="w", shape=image.shape, chunks=(512, 512), dtype="uint8")
def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
base = vmhwm()
t = time.perf_counter()
res = api.segment_semantic(image, runner, tile_size={tile}, overlap={overlap}, out=out)
seconds = time.perf_counter() - t
result = {{"seconds": seconds, "tiles": res.params["n_tiles"], "base_mb": base,
          "pixels": int(sum(res.pixel_counts.values()))}}
"""


@benchmark("semantic_tiling")
def semantic_tiling(repeats: int) -> list[dict]:
    """Tiled semantic segmentation of 2,500², 5,000² and 10,000² uint16 images (zarr in, zarr out)."""
    from run import run_python

    from napari_segsuite.testing.tiny_models import build_tiny_segformer

    rows = []
    with tempfile.TemporaryDirectory(prefix="segsuite-bench-") as tmp:
        root = Path(tmp)
        model = str(build_tiny_segformer(root / "tiny-segformer", num_labels=4))
        for size in SIZES:
            path = str(root / f"image_{size}.zarr")
            run_python(MAKE_IMAGE.format(size=size, path=path))
            code = SEGMENT.format(model=model, path=path, out=str(root / f"labels_{size}.zarr"), tile=TILE, overlap=OVERLAP)
            runs = [run_python(code) for _ in range(max(1, repeats))]
            assert all(r["pixels"] == size * size for r in runs)
            seconds = sorted(r["seconds"] for r in runs)[len(runs) // 2]
            rows.append({
                "image": f"{size:,}² uint16",
                "tiles": runs[0]["tiles"],
                "seconds": seconds,
                "s_per_mpx": seconds / (size * size / 1e6),
                "base_mb": max(r["base_mb"] for r in runs),
                "peak_mb": max(r["peak_mb"] for r in runs),
                "runs": len(runs),
            })
    return rows


__all__ = ["print_table", "semantic_tiling"]
