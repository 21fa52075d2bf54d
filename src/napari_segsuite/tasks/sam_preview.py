"""SAM prompt previews without Qt: prompts to objects, the shown candidates, and commits.

:class:`PreviewController` holds the objects predicted for the current prompts, which
candidate of each is shown, and :attr:`PreviewController.source`: the image, plane and
model the preview was computed for. A commit is planned from the preview
(:meth:`PreviewController.plan_commit`) only after :meth:`PreviewController.check_commit`
has compared that source with the image, plane and model the caller has now; a preview
computed for another image, plane or model is refused with a clear message instead of
being written to the wrong place.

:func:`objects_from_prompts` groups points and shapes into objects (every box is one
object; points inside a box refine it; with no box all points are one object) and
:func:`predict_objects` predicts them with a
:class:`~napari_segsuite.tasks.sam_session.SamSession`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_segsuite.core.errors import InputError


@dataclass(frozen=True)
class PreviewSource:
    """What a preview was computed from.

    Parameters
    ----------
    image : hashable
        The caller's name for the image's content (e.g. the layer's id and data version).
    plane : tuple
        The plane's index in the image's data (ints on slider axes, None on plane axes).
    model : hashable
        The model the embedding came from (e.g. model spec and device).
    image_name : str
        A readable name of the image, for messages (not compared).
    """

    image: Hashable
    plane: tuple
    model: Hashable
    image_name: str = field(default="", compare=False)


@dataclass
class CommitPlan:
    """A planned commit: the new plane, the ids written and one features row per id."""

    labels: np.ndarray
    written: list[int]
    features: dict[int, dict[str, Any]]


def objects_from_prompts(coords: np.ndarray, labels: np.ndarray, shapes: list, plane_shape, *,
                         draw_masks: bool = True) -> list[dict]:
    """Group prompts into objects.

    Parameters
    ----------
    coords : (N, 2) array
        Points (row, col) on the plane.
    labels : (N,) int array
        1 positive, 0 negative.
    shapes : list
        :class:`~napari_segsuite.layers.ShapePrompt`-like items with ``box``, ``kind`` and
        ``mask(shape)``; each is one object; ellipses and polygons add a mask prompt.
    plane_shape : (int, int)
    draw_masks : bool
        Draw the mask prompt of an ellipse or polygon at the plane's size (``"mask"``);
        False keeps the shape itself (``"shape"``), for large planes where the mask is
        drawn in a window only (:mod:`~napari_segsuite.tasks.sam_windows`).

    Returns
    -------
    list of dict
        ``{"box", "points", "labels"}`` (and ``"mask"``) per object.
    """
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    labels = np.asarray(labels, dtype=int).reshape(-1)
    objects = []
    used = np.zeros(len(coords), dtype=bool)
    for shape in shapes:
        box = shape.box
        inside = ((coords[:, 0] >= box[0]) & (coords[:, 0] <= box[2])
                  & (coords[:, 1] >= box[1]) & (coords[:, 1] <= box[3]) & ~used)
        used |= inside
        obj = {"box": box, "points": coords[inside], "labels": labels[inside]}
        if shape.kind in ("ellipse", "polygon"):
            if draw_masks:
                obj["mask"] = shape.mask(tuple(plane_shape))
            else:
                obj["shape"] = shape
        objects.append(obj)
    if not shapes and len(coords):
        objects.append({"box": None, "points": coords, "labels": labels})
    return objects


def predict_objects(session, objects: list[dict], multimask: bool) -> list[dict]:
    """The preview objects: one batched decoder pass for plain boxes, else one prediction per object.

    Returns
    -------
    list of dict
        ``{"masks", "scores", "choice"}`` per object; ``choice`` is the best-scored candidate.
    """
    plain_boxes = len(objects) > 1 and all(
        o["box"] is not None and not len(o["points"]) and "mask" not in o for o in objects
    )
    if plain_boxes:
        masks, scores = session.predict_boxes(np.array([o["box"] for o in objects]))
        return [{"masks": m[None], "scores": sc[None], "choice": 0} for m, sc in zip(masks, scores, strict=True)]
    results = []
    for obj in objects:
        masks, scores = session.predict(
            points=obj["points"] if len(obj["points"]) else None,
            point_labels=obj["labels"] if len(obj["points"]) else None,
            box=obj["box"], mask=obj.get("mask"), multimask=multimask, lazy=True,
        )
        choice = int(np.argmax(scores))
        masks[choice]  # the shown candidate is upsampled here (in the caller's thread); the others when picked
        results.append({"masks": masks, "scores": scores, "choice": choice})
    return results


class PreviewController:
    """The preview of the current prompts and what it was computed for.

    Attributes
    ----------
    objects : list of dict
        The predicted objects (``masks``, ``scores``, ``choice``), empty when none.
    source : PreviewSource or None
        The image, plane and model the shown objects were computed for (None with no
        preview). :meth:`check_commit` compares it with the caller's current ones.
    generation : int
        Bumped by every prompt change; a result computed for an older generation is
        dropped by :meth:`offer`.
    """

    def __init__(self):
        self.objects: list[dict] = []
        self.source: PreviewSource | None = None
        self.generation = 0

    # -- prompts and results ------------------------------------------------------------
    def new_prompts(self) -> int:
        """The prompts changed: results computed before now are stale. Returns the generation."""
        self.generation += 1
        return self.generation

    def offer(self, objects: list[dict], source: PreviewSource, generation: int) -> bool:
        """Show ``objects`` (computed for ``source`` at ``generation``) unless newer prompts exist."""
        if generation != self.generation:
            return False
        self.objects = list(objects)
        self.source = source if objects else None
        return True

    def clear(self) -> None:
        """No preview (prompts cleared or committed); results still being computed are dropped."""
        self.generation += 1
        self.objects = []
        self.source = None

    @property
    def single(self) -> bool:
        """Whether the preview is one object (whose candidates can be picked)."""
        return len(self.objects) == 1

    def scores(self) -> list[float]:
        """Predicted IoU of each candidate of a single object (empty otherwise)."""
        return [float(s) for s in self.objects[0]["scores"]] if self.single else []

    @property
    def choice(self) -> int | None:
        """The shown candidate of a single object (None otherwise)."""
        return int(self.objects[0]["choice"]) if self.single else None

    def select(self, index: int) -> bool:
        """Show candidate ``index`` of a single object; False when there is no such candidate."""
        if not self.single or not 0 <= index < len(self.objects[0]["scores"]):
            return False
        self.objects[0]["choice"] = int(index)
        return True

    def masks(self) -> list[np.ndarray]:
        """The shown mask of every object (window-sized for windowed objects, see :attr:`windowed`)."""
        return [np.asarray(o["masks"][o["choice"]], dtype=bool) for o in self.objects]

    @property
    def windowed(self) -> bool:
        """Whether the objects were decoded in windows of a large plane (each has ``origin`` and ``window``)."""
        return bool(self.objects) and all("window" in o for o in self.objects)

    def region(self, limit: int | None = None):
        """The :class:`~napari_segsuite.core.tiling.Tile` holding every object's window (windowed previews)."""
        from napari_segsuite.tasks.sam_windows import objects_region

        return objects_region(self.objects, limit)

    # -- commits ----------------------------------------------------------------------------
    def stale_reason(self, current: PreviewSource) -> str | None:
        """Why the preview does not belong to ``current`` (None when it does)."""
        src = self.source
        if src is None:
            return None
        if src.image != current.image:
            return (f"the preview was computed for image '{src.image_name or src.image}', "
                    f"not '{current.image_name or current.image}'")
        if src.plane != current.plane:
            return f"the preview was computed for plane {_plane_text(src.plane)}, not {_plane_text(current.plane)}"
        if src.model != current.model:
            return "the preview was computed with another model"
        return None

    def check_commit(self, current: PreviewSource) -> None:
        """Raise :class:`InputError` unless the preview can be committed to ``current``."""
        if not self.objects or self.source is None:
            raise InputError("Nothing to commit: add prompts and wait for the preview.")
        reason = self.stale_reason(current)
        if reason is not None:
            raise InputError(f"Not committed: {reason}. Wait for the new preview, or prompt again.")

    def plan_commit(self, old: np.ndarray, next_id: int, *, overwrite: bool = False, refine: int = 0,
                    model: str = "", region=None) -> CommitPlan:
        """The plane (or ``region`` of it) after committing the preview into ``old``.

        Each object gets the next free id (from ``next_id``), or ``refine`` for a single
        object (its earlier pixels are replaced). Existing labels are kept unless
        ``overwrite``. Objects without a free pixel are skipped. With ``region`` (a
        :class:`~napari_segsuite.core.tiling.Tile` of the plane, see :meth:`region`),
        ``old`` holds that region's pixels and windowed masks are placed at their origin in it.
        """
        new = np.array(old, copy=True)
        features: dict[int, dict[str, Any]] = {}
        written: list[int] = []
        label = int(next_id)
        if region is not None:
            from napari_segsuite.tasks.sam_windows import paste_objects

            masks = paste_objects(self.objects, region)
        else:
            masks = self.masks()
        for obj, mask in zip(self.objects, masks, strict=True):
            if refine and self.single:
                this = int(refine)
                new[new == this] = 0
            else:
                this = label
            put = mask & ((new == 0) | bool(overwrite))
            if not put.any():
                continue
            new[put] = this
            written.append(this)
            features[this] = {"score": float(obj["scores"][obj["choice"]]), "model": model}
            if "class_name" in obj:  # found by a concept
                features[this]["class_name"] = obj["class_name"]
            if this == label:
                label += 1
        return CommitPlan(new, written, features)


def _plane_text(plane: tuple) -> str:
    fixed = [f"{axis}:{i}" for axis, i in enumerate(plane) if i is not None]
    return ",".join(fixed) or "2d"
