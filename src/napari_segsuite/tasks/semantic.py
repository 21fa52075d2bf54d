"""Semantic segmentation: a class for every pixel, tile by tile, in bounded memory.

Label ids
---------
The label of a pixel is **its model class id + 1**, so that label 0 stays
"unlabeled" in napari and every class of the model, including a class 0 such
as "background" or ADE20K's "wall", gets its own visible label. Every pixel
gets a class, so a result has no 0 pixels. :attr:`SemanticResult.class_names`
maps label ids to class names, :attr:`SemanticResult.class_ids` label ids to
model class ids, and :meth:`SemanticResult.class_map` gives the model's class
ids per pixel (``labels - 1``).

Image preparation
-----------------
Each tile is read from the image (lazily: dask and zarr arrays are never
loaded whole), turned into RGB uint8 with one intensity scaling for the whole
image (:class:`~napari_segsuite.core.tiling.TileReader`), and handed to the
runner's ``predict_semantic``, which prepares it as the checkpoint's own
processor says (transformers: resize, rescale, normalise; torchvision:
ImageNet statistics) and returns per-class scores at the tile's size. Tiles
overlap and are blended (:mod:`napari_segsuite.core.tiling`). When one tile
covers the image, the labels are exactly the argmax of the model's scores for
the whole image: for SegFormer and Mask2Former, exactly transformers'
``post_process_semantic_segmentation``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.tiling import TileReader, blend_tiles, make_grid
from napari_segsuite.core.vocabulary import Task

#: Default tile side when tiling is on.
DEFAULT_TILE = 512
#: Default overlap of neighbouring tiles.
DEFAULT_OVERLAP = 64
#: With ``tile_size=None``, images whose sides are all at most this run as one tile.
AUTO_SINGLE_TILE = 1024
#: Smallest image side the task accepts.
MIN_SIDE = 16
#: Value added to a model class id to make its label id.
LABEL_OFFSET = 1


def label_dtype(n_classes: int) -> np.dtype:
    """The smallest unsigned dtype that holds labels ``1 .. n_classes``."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_classes + LABEL_OFFSET <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def resolve_tile_size(shape: tuple[int, int], tile_size: int | None) -> int | None:
    """The tile side used for an image of ``shape``.

    ``None`` picks automatically: one tile (returned as None) when both sides
    are at most :data:`AUTO_SINGLE_TILE`, else :data:`DEFAULT_TILE`. ``0``
    means one tile whatever the size. A tile below :data:`MIN_SIDE` is refused.
    """
    if tile_size is None:
        return None if max(shape) <= AUTO_SINGLE_TILE else DEFAULT_TILE
    tile_size = int(tile_size)
    if tile_size == 0:
        return None
    if tile_size < MIN_SIDE * 4:
        raise InputError(f"The tile size must be at least {MIN_SIDE * 4} pixels (or 0 for no tiling), got {tile_size}.")
    return tile_size


@dataclass
class SemanticResult:
    """The result of semantic segmentation of one 2D image.

    Attributes
    ----------
    labels : ndarray (H, W) unsigned int
        Model class id + 1 per pixel (or the ``out`` array the caller gave).
    class_names : dict of int to str
        Label id -> class name, for every class of the model.
    class_ids : dict of int to int
        Label id -> model class id.
    pixel_counts : dict of int to int
        Label id -> number of pixels, for the labels present.
    confidence : ndarray (H, W) float32 or None
        The winning class's probability (softmax of the blended logits; for
        Mask2Former the winner's share of the class scores), when asked for.
    model : str
        Model name.
    params : dict
        Tile size, overlap and the other parameters, for provenance.
    notes : list of str
        Things the user should know (e.g. an image smaller than the model's input was upscaled).
    """

    labels: Any
    class_names: dict[int, str]
    class_ids: dict[int, int]
    pixel_counts: dict[int, int]
    confidence: Any = None
    model: str = ""
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def present(self) -> list[int]:
        """Label ids present in the result, ascending."""
        return sorted(k for k, n in self.pixel_counts.items() if n > 0)

    @property
    def table(self):
        """One row per label present (pandas): ``label``, ``class_id``, ``class_name``, ``pixel_count``."""
        import pandas as pd

        rows = [{"label": k, **row} for k, row in self.features().items()]
        return pd.DataFrame(rows, columns=["label", "class_id", "class_name", "pixel_count"])

    @property
    def provenance(self) -> dict:
        """What made the result: task, model and parameters (plain data for ``layer.metadata``)."""
        return {"task": Task.SEMANTIC, "model": self.model, "parameters": dict(self.params), "notes": list(self.notes)}

    def class_map(self) -> np.ndarray:
        """The model's class id per pixel (``labels - 1``), as int64."""
        return np.asarray(self.labels).astype(np.int64) - LABEL_OFFSET

    def features(self) -> dict[int, dict]:
        """``{label: {"class_id", "class_name", "pixel_count"}}`` for the labels present."""
        return {
            k: {"class_id": self.class_ids[k], "class_name": self.class_names.get(k, f"class_{k - LABEL_OFFSET}"),
                "pixel_count": int(self.pixel_counts[k])}
            for k in self.present
        }


def _model_input_side(runner) -> int | None:
    size = (getattr(runner, "info", None) or {}).get("input_size") or {}
    values = [v for k, v in size.items() if k in ("height", "width", "shortest_edge")]
    return min(values) if values else None


def segment_semantic_job(
    image,
    runner,
    *,
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    confidence: bool = False,
    out=None,
    confidence_out=None,
    percentiles: tuple[float, float] = (1.0, 99.8),
) -> Generator[Progress, None, SemanticResult]:
    """Segment one 2D image with a semantic runner, tile by tile (a job generator).

    Parameters
    ----------
    image : array-like
        (H, W) or (H, W, C) with C in 1, 3, 4; numpy, memmap, dask or zarr,
        read one tile at a time.
    runner : Runner
        A loaded model that does semantic segmentation (``predict_semantic``).
    tile_size : int or None
        Square tile side. None: automatic (one tile up to
        :data:`AUTO_SINGLE_TILE` pixels a side, else :data:`DEFAULT_TILE`);
        0: one tile whatever the size.
    overlap : int
        Overlap of neighbouring tiles, blended smoothly.
    confidence : bool
        Also return the winning class's probability per pixel.
    out, confidence_out : array-like (H, W), optional
        Where to write labels / confidence (e.g. a memmap or zarr array, to
        keep memory bounded for huge images). Allocated when not given.
    percentiles : (float, float)
        Intensity scaling of non-uint8 images.

    Yields
    ------
    Progress
        One per tile.

    Returns
    -------
    SemanticResult

    Raises
    ------
    InputError
        Wrong number of channels, an image smaller than :data:`MIN_SIDE`,
        NaN or infinite values, a model that is not semantic.
    """
    runner.require(Task.SEMANTIC)
    reader = TileReader(image, percentiles, min_side=MIN_SIDE)
    h, w = reader.shape
    tile = resolve_tile_size((h, w), tile_size)
    grid = make_grid((h, w), tile, overlap)
    names = dict(runner.class_names)
    n_classes = max(len(names), max(names, default=-1) + 1)
    dtype = label_dtype(max(n_classes, 1))
    if out is None:
        out = np.zeros((h, w), dtype=dtype)
    elif tuple(out.shape) != (h, w):
        raise InputError(f"The output array has shape {tuple(out.shape)}, not the image's {(h, w)}.")
    if confidence and confidence_out is None:
        confidence_out = np.zeros((h, w), dtype=np.float32)
    notes = []
    side = _model_input_side(runner)
    th, tw = grid.tile
    if side is not None and min(th, tw) < side:
        notes.append(
            f"The {'image' if grid.n_tiles == 1 else 'tile'} ({th}x{tw}) is smaller than the model's "
            f"input ({side} pixels); the model's processor upscaled it."
        )
    kind = getattr(runner, "semantic_output", "logits")

    def predict(window):
        return runner.predict_semantic(reader.read(window))

    yield Progress(0, grid.n_tiles, f"Segmenting {h}x{w} in {grid.n_tiles} tile(s)")
    blend = blend_tiles(
        grid, predict, out, confidence_out=confidence_out if confidence else None,
        kind=kind, label_offset=LABEL_OFFSET,
    )
    while True:
        try:
            done, total = next(blend)
        except StopIteration as stop:
            counts = stop.value
            break
        yield Progress(done, total, f"Tile {done}/{total}")
    for i in range(len(counts)):
        names.setdefault(i, f"class_{i}")
    label_names = {i + LABEL_OFFSET: str(n) for i, n in sorted(names.items())}
    return SemanticResult(
        labels=out,
        class_names=label_names,
        class_ids={i + LABEL_OFFSET: i for i in names},
        pixel_counts={i + LABEL_OFFSET: int(n) for i, n in enumerate(counts) if n > 0},
        confidence=confidence_out if confidence else None,
        model=runner.name,
        params={
            "tile_size": tile, "overlap": grid.overlap if grid.n_tiles > 1 else 0,
            "n_tiles": grid.n_tiles, "percentiles": list(percentiles), "label_offset": LABEL_OFFSET,
        },
        notes=notes,
    )
