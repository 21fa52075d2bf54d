"""Automatic "segment everything" masks from any prompt model with a mask source, as a job.

The algorithm is segment_anything's ``SamAutomaticMaskGenerator`` with the
same parameters under the same names (a grid of single-point prompts per crop,
three masks per point, filtering by predicted IoU and stability score, removal
of masks at inner crop edges, box NMS within a crop and between crops, and the
optional small-region clean-up), built from that library's own helpers
(``segment_anything.utils.amg``) so that for SAM the masks are the same masks,
in the same order, with the same scores.

What differs is where the work goes. The generator upsamples the logits of
*every* candidate mask to the crop's full resolution, thresholds them, turns
them into run-length codes, and only then throws most of them away; and its
mask decoder copies the image embedding once per point and streams those
copies through memory. Here:

- the model is reached through its
  :class:`~napari_segsuite.models.prompt.MaskSource` (SAM, SAM 2.1); SAM's
  decoder there is :class:`~napari_segsuite.models.sam_decoder.ChunkedMaskDecoder`
  (the same numbers bit for bit, about twice as fast on a CPU): the image side
  in small chunks of points, the first block's image side shared, and the
  output upscaling only for points with a candidate that passes the filter;
- the predicted-IoU filter runs on the decoder's scores before any upsampling;
- only its survivors are upsampled (in small chunks, so memory stays bounded),
  which is what the stability score and the boxes need to be exact;
- survivors are kept as boolean masks cropped to their box (no run-length
  encoding, no full-image masks until the very end);
- the whole image's embedding (crop layer 0) comes from the
  :class:`~napari_segsuite.tasks.sam_session.SamSession` cache, so a plane that
  was prompted before is not encoded again.

Large images: with ``tile_size`` the image is covered by a grid of
overlapping tiles processed at full resolution (each tile is one crop). A mask
is kept only from the tile whose *core* (the tile minus half the overlap on
each inner side) contains the centre of its box, and masks near a tile's inner
edge are dropped (the generator's rule); so an object smaller than about half
the overlap (minus 20 pixels) that straddles a tile border is found whole in
the neighbouring tile, and exactly once. Remaining duplicates go through the
between-crop NMS.

Output: :class:`AutoResult` with ``labels`` (H, W) int32 without overlaps:
masks are painted from the largest to the smallest, so where masks overlap the
**smaller mask is on top** (an object inside a larger one stays visible); the
ids follow the generator's output order (1 = its first mask) after dropping
masks left without pixels, and ``table`` has one row per label (id, visible
area and bounding box, and the mask's predicted IoU, stability score, full
area and box (``mask_bbox_*``, max exclusive), prompt point and crop box).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.image import prepare_rgb_uint8
from napari_segsuite.core.labels import LABEL_DTYPE, label_table
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Task
from napari_segsuite.models.prompt import Decoded, MaskSource

__all__ = ["AutoMask", "AutoParams", "AutoResult", "Decoded", "automatic_job", "automatic_masks_job",
           "masks_to_result", "tile_boxes"]

#: How many candidate masks are upsampled to full resolution at a time.
UPSCALE_CHUNK = 16


@dataclass
class AutoParams:
    """``SamAutomaticMaskGenerator``'s parameters (same names, same defaults), plus tiling.

    ``tile_size`` (pixels, None: off) replaces the crop layers by a grid of
    overlapping tiles of that size with ``tile_overlap`` pixels of overlap,
    used when the image is larger than one tile.
    """

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    point_grids: list | None = None
    min_mask_region_area: int = 0
    tile_size: int | None = None
    tile_overlap: int = 256

    def generator_kwargs(self) -> dict:
        """The keyword arguments of ``SamAutomaticMaskGenerator`` (without tiling)."""
        out = asdict(self)
        out.pop("tile_size")
        out.pop("tile_overlap")
        return out

    def grids(self) -> list[np.ndarray]:
        """Point grids per crop layer, normalised to [0, 1] (x, y), like the generator's."""
        from segment_anything.utils.amg import build_all_layer_point_grids

        if (self.points_per_side is None) == (self.point_grids is None):
            raise InputError("Give exactly one of points_per_side or point_grids.")
        if self.point_grids is not None:
            return [np.asarray(g, dtype=float) for g in self.point_grids]
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise InputError("points_per_side and points_per_batch must be at least 1.")
        return build_all_layer_point_grids(self.points_per_side, self.crop_n_layers,
                                           self.crop_n_points_downscale_factor)


@dataclass
class AutoMask:
    """One mask: boolean pixels inside its box and the generator's record fields."""

    box: np.ndarray  # (x0, y0, x1, y1), inclusive, image pixels (the generator's XYXY boxes)
    crop_mask: np.ndarray  # bool, (y1 - y0 + 1, x1 - x0 + 1)
    predicted_iou: float
    stability_score: float
    point: np.ndarray  # (x, y) image pixels
    crop_box: np.ndarray  # (x0, y0, x1, y1)
    area: int = 0

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as an image-sized boolean array."""
        out = np.zeros(shape, dtype=bool)
        x0, y0, x1, y1 = (int(v) for v in self.box)
        out[y0:y1 + 1, x0:x1 + 1] = self.crop_mask
        return out


@dataclass
class AutoResult:
    """Labels without overlaps, their table, and the masks they come from."""

    labels: np.ndarray
    table: Any  # pandas.DataFrame
    masks: list[AutoMask] = field(default_factory=list)
    params: AutoParams | None = None
    #: what made the result: task, model, parameters
    provenance: dict = field(default_factory=dict)


# -- crops and tiles --------------------------------------------------------------------------


def tile_boxes(size: tuple[int, int], tile: int, overlap: int) -> tuple[list[list[int]], list[list[float]]]:
    """The tiles of :func:`napari_segsuite.core.tiling.tile_grid` as SAM crop boxes, and their cores.

    Parameters
    ----------
    size : (H, W)
    tile : int
        Tile side in pixels.
    overlap : int
        Overlap between neighbouring tiles in pixels (< tile).

    Returns
    -------
    boxes : list of [x0, y0, x1, y1]
        The tiles (end exclusive), row by row.
    cores : list of [x0, y0, x1, y1]
        Non-overlapping cores that partition the image: each tile's share,
        from the middle of its overlap with the previous tile to the middle of
        its overlap with the next.
    """
    from napari_segsuite.core.tiling import axis_cores, axis_starts, tile_grid

    tiles = tile_grid(size, tile, overlap)
    h, w = size
    ycores = axis_cores(axis_starts(h, tile, overlap), tile, h)
    xcores = axis_cores(axis_starts(w, tile, overlap), tile, w)
    boxes = [[t.c0, t.r0, t.c1, t.r1] for t in tiles]
    cores = [[cx0, cy0, cx1, cy1] for (cy0, cy1) in ycores for (cx0, cx1) in xcores]
    return boxes, cores


# -- the job ----------------------------------------------------------------------------------


def _process_crop(source, emb, crop_box, grid, params: AutoParams, orig_size, lazy: bool, progress=None):
    """The generator's ``_process_crop`` + ``_process_batch``: masks of one crop, after NMS (a job).

    ``progress(batch_index)`` makes the :class:`Progress` yielded before each point batch and
    between its upscaling chunks (where Cancel takes effect: at most one chunk of
    :data:`UPSCALE_CHUNK` masks, or one batch's decode, runs after it).
    """
    import torch
    from segment_anything.utils.amg import (
        batch_iterator,
        batched_mask_to_box,
        calculate_stability_score,
        is_box_near_crop_edge,
    )
    from torchvision.ops.boxes import batched_nms

    orig_h, orig_w = orig_size
    x0c, y0c = crop_box[0], crop_box[1]
    ch, cw = crop_box[3] - crop_box[1], crop_box[2] - crop_box[0]
    points_for_image = grid * np.array([[cw, ch]])
    thr = source.mask_threshold
    boxes, ious, stabs, pts, crops = [], [], [], [], []
    for b, (points,) in enumerate(batch_iterator(params.points_per_batch, points_for_image)):
        if progress is not None:
            yield progress(b)
        with torch.no_grad():
            decoded = source.decode(emb, points)
            iou = decoded.iou.flatten(0, 1)
            n_out = decoded.iou.shape[1]
            point_rows = torch.as_tensor(points.repeat(n_out, axis=0))
            if lazy:
                # Only the candidates that pass the predicted-IoU filter are ever upsampled,
                # and only their prompts go through the decoder's output upscaling.
                keep = iou > params.pred_iou_thresh if params.pred_iou_thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)
                rows = torch.nonzero(keep).flatten()
                low = torch.empty(0)  # nothing passes: nothing to upscale
                if len(rows):
                    prompts = torch.unique(rows // n_out)
                    where = torch.searchsorted(prompts, rows // n_out)
                    low = decoded.low_res_masks(prompts.numpy())[where, rows % n_out]
                iou, point_rows = iou[keep], point_rows[keep]
            else:
                low = decoded.all_low_res_masks().flatten(0, 1)
            for start in range(0, len(low), UPSCALE_CHUNK if lazy else max(1, len(low))):
                if start and progress is not None:
                    yield progress(b)  # between upscale chunks too: Cancel and closing take effect here
                logits = source.upscale(emb, low[start:start + (UPSCALE_CHUNK if lazy else len(low))])
                c_iou = iou[start:start + len(logits)]
                c_pts = point_rows[start:start + len(logits)]
                if not lazy and params.pred_iou_thresh > 0.0:
                    keep = c_iou > params.pred_iou_thresh
                    logits, c_iou, c_pts = logits[keep], c_iou[keep], c_pts[keep]
                stab = calculate_stability_score(logits, thr, params.stability_score_offset)
                if params.stability_score_thresh > 0.0:
                    keep = stab >= params.stability_score_thresh
                    logits, c_iou, c_pts, stab = logits[keep], c_iou[keep], c_pts[keep], stab[keep]
                masks = logits > thr
                del logits
                bx = batched_mask_to_box(masks)
                keep = ~is_box_near_crop_edge(bx, crop_box, [0, 0, orig_w, orig_h])
                for k in torch.nonzero(keep).flatten().tolist():
                    bx0, by0, bx1, by1 = (int(v) for v in bx[k])
                    crops.append(masks[k, by0:by1 + 1, bx0:bx1 + 1].cpu().numpy())
                    boxes.append(bx[k])
                    ious.append(c_iou[k])
                    stabs.append(stab[k])
                    pts.append(c_pts[k])
    if not boxes:
        return []
    boxes_t = torch.stack(boxes)
    iou_t = torch.stack(ious)
    keep = batched_nms(boxes_t.float(), iou_t, torch.zeros(len(boxes_t)), iou_threshold=params.box_nms_thresh)
    offset = np.array([x0c, y0c, x0c, y0c])
    out = []
    for k in keep.tolist():
        out.append(AutoMask(
            box=boxes_t[k].cpu().numpy().astype(np.int64) + offset,
            crop_mask=crops[k],
            predicted_iou=float(iou_t[k]),
            stability_score=float(stabs[k]),
            point=pts[k].cpu().numpy().astype(float) + offset[:2],
            crop_box=np.asarray(crop_box, dtype=np.int64),
        ))
    return out


def _small_regions(masks: list[AutoMask], shape, min_area: int, nms_thresh: float) -> list[AutoMask]:
    """The generator's ``postprocess_small_regions`` on our masks (same helpers, same order)."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
    from torchvision.ops.boxes import batched_nms

    if not masks:
        return masks
    new, scores, boxes = [], [], []
    for m in masks:
        full = m.full(shape)
        full, changed = remove_small_regions(full, min_area, mode="holes")
        unchanged = not changed
        full, changed = remove_small_regions(full, min_area, mode="islands")
        unchanged = unchanged and not changed
        box = batched_mask_to_box(torch.as_tensor(full)[None])[0]
        boxes.append(box)
        scores.append(float(unchanged))
        x0, y0, x1, y1 = (int(v) for v in box)
        new.append((full[y0:y1 + 1, x0:x1 + 1].copy(), box.numpy().astype(np.int64)))
    keep = batched_nms(torch.stack(boxes).float(), torch.as_tensor(scores), torch.zeros(len(boxes)),
                       iou_threshold=nms_thresh)
    out = []
    for k in keep.tolist():
        m = masks[k]
        if scores[k] == 0.0:
            m.crop_mask, m.box = new[k]
        out.append(m)
    return out


def automatic_masks_job(
    session,
    image2d: np.ndarray,
    params: AutoParams | None = None,
    *,
    source: MaskSource | None = None,
    lazy: bool = True,
) -> Generator[Progress, None, list[AutoMask]]:
    """The masks ``SamAutomaticMaskGenerator.generate`` gives, as a job.

    Parameters
    ----------
    session : SamSession
        Its embedding cache serves the whole image (crop layer 0).
    image2d : ndarray
        (H, W) or (H, W, C), any dtype (turned into RGB uint8 like prompts are).
    params : AutoParams
    source : MaskSource, optional
        Replaces the session's model (``session.prompt_model.mask_source()``;
        tests use a deterministic one).
    lazy : bool
        Filter before upsampling (True) or upsample every candidate like the
        generator (False; for checking that both agree).

    Returns
    -------
    list of AutoMask
        In the generator's output order.
    """
    import torch
    from segment_anything.utils.amg import generate_crop_boxes
    from torchvision.ops.boxes import batched_nms, box_area

    params = params or AutoParams()
    rgb = prepare_rgb_uint8(image2d)
    orig_size = rgb.shape[:2]
    grids = params.grids()
    source = source or session.prompt_model.mask_source()
    tiled = params.tile_size is not None and max(orig_size) > params.tile_size
    if tiled:
        crop_boxes, cores = tile_boxes(orig_size, int(params.tile_size), int(params.tile_overlap))
        layer_idxs = [0] * len(crop_boxes)
    else:
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, params.crop_n_layers, params.crop_overlap_ratio)
        cores = None
    if max(layer_idxs) >= len(grids):
        raise InputError(f"{len(grids)} point grid(s) for {max(layer_idxs) + 1} crop layers.")
    n_crops = len(crop_boxes)
    batches = [-(-len(grids[layer]) // params.points_per_batch) for layer in layer_idxs]
    total = sum(batches) + n_crops
    masks: list[AutoMask] = []
    for i, (crop_box, layer) in enumerate(zip(crop_boxes, layer_idxs, strict=True)):
        done = sum(batches[:i]) + i
        yield Progress(done, total, f"Segment everything: encoding crop {i + 1}/{n_crops}")
        x0, y0, x1, y1 = crop_box
        if (x0, y0, x1, y1) == (0, 0, orig_size[1], orig_size[0]) and session is not None:
            key = yield from session.encode_job(rgb)
            emb = session._cache[key]
        else:
            emb = source.encode(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        def progress(b, i=i, done=done):
            return Progress(done + 1 + b, total,
                            f"Segment everything: crop {i + 1}/{n_crops}, points {b + 1}/{batches[i]}")

        found = yield from _process_crop(source, emb, crop_box, grids[layer], params, orig_size, lazy, progress)
        if cores is not None:
            cx0, cy0, cx1, cy1 = cores[i]
            found = [m for m in found
                     if cx0 <= (m.box[0] + m.box[2] + 1) / 2 < cx1 and cy0 <= (m.box[1] + m.box[3] + 1) / 2 < cy1]
        masks.extend(found)
    yield Progress(total, total, f"Segment everything: {len(masks)} masks")
    if len(crop_boxes) > 1 and masks:
        crop_t = torch.as_tensor(np.stack([m.crop_box for m in masks]))
        scores = 1 / box_area(crop_t)
        boxes = torch.as_tensor(np.stack([m.box for m in masks]))
        keep = batched_nms(boxes.float(), scores, torch.zeros(len(boxes)), iou_threshold=params.crop_nms_thresh)
        masks = [masks[k] for k in keep.tolist()]
    if params.min_mask_region_area > 0:
        masks = _small_regions(masks, orig_size, params.min_mask_region_area,
                               max(params.box_nms_thresh, params.crop_nms_thresh))
    for m in masks:
        m.area = int(m.crop_mask.sum())
    return masks


def masks_to_result(masks: list[AutoMask], shape: tuple[int, int], params: AutoParams | None = None) -> AutoResult:
    """Labels without overlaps (smaller masks on top) and one table row per label."""
    import pandas as pd

    labels = np.zeros(shape, dtype=LABEL_DTYPE)
    # Paint the largest first so smaller masks end on top; ties: later in output order on top.
    order = sorted(range(len(masks)), key=lambda k: (-masks[k].area, k))
    for k in order:
        m = masks[k]
        x0, y0, x1, y1 = (int(v) for v in m.box)
        view = labels[y0:y1 + 1, x0:x1 + 1]
        view[m.crop_mask] = k + 1
    present = np.unique(labels)
    present = present[present != 0]
    mapping = np.zeros(len(masks) + 1, dtype=LABEL_DTYPE)
    mapping[present] = np.arange(1, len(present) + 1, dtype=LABEL_DTYPE)
    labels = mapping[labels]
    kept = [masks[i - 1] for i in present]
    extra = {
        new: {
            "predicted_iou": m.predicted_iou,
            "stability_score": m.stability_score,
            "mask_area": m.area,
            "mask_bbox_0_min": int(m.box[1]),
            "mask_bbox_1_min": int(m.box[0]),
            "mask_bbox_0_max": int(m.box[3]) + 1,
            "mask_bbox_1_max": int(m.box[2]) + 1,
            "point_row": float(m.point[1]),
            "point_col": float(m.point[0]),
            "crop_box_xyxy": ",".join(str(int(v)) for v in m.crop_box),
        }
        for new, m in enumerate(kept, start=1)
    }
    table = pd.DataFrame(label_table(labels, extra))
    return AutoResult(labels=labels, table=table, masks=kept, params=params)


def automatic_job(session, image2d: np.ndarray, params: AutoParams | None = None,
                  **kwargs) -> Generator[Progress, None, AutoResult]:
    """Masks for the whole plane, turned into an :class:`AutoResult` (labels + table)."""
    params = params or AutoParams()
    masks = yield from automatic_masks_job(session, image2d, params, **kwargs)
    result = masks_to_result(masks, tuple(np.asarray(image2d).shape[:2]), params)
    result.provenance = {
        "task": Task.AUTOMATIC,
        "model": session.runner.provenance() if session is not None else None,
        "parameters": params.generator_kwargs() | {"tile_size": params.tile_size, "tile_overlap": params.tile_overlap},
    }
    return result
