"""napari layers <-> plain arrays: the one place that knows napari's coordinates.

- :func:`current_plane` takes the 2D plane of an Image layer that the viewer
  shows at its current position, from a layer of any dimensionality, RGB or
  not, with an optional channel axis.
- :func:`points_on_plane` and :func:`shapes_on_plane` turn prompt layers'
  coordinates (world space) into the image's data space on that plane,
  honouring scale, translate, rotate/shear/affine and the displayed axes.
- :func:`write_plane` writes a 2D result into an aligned Labels layer (same
  transform as the image), into the right plane of an nD volume, leaving the
  other planes untouched, with provenance in ``metadata`` and one row per
  label in ``features``; the change is recorded in the Labels undo history.
- Hand edits: after every write the layer's content fingerprint is kept in
  ``metadata["segsuite"]["written"]``; :func:`edited_since_written` compares.
  Inside :func:`edit_policy` ("ask", "overwrite", "new"), a write into a layer
  that was edited since raises :class:`LayerEditedError` ("ask"), writes over it
  ("overwrite", the default outside the widgets) or goes to a new layer ("new").

Call these on the GUI thread only.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.labels import LABEL_DTYPE, label_table

if TYPE_CHECKING:
    import napari

METADATA_KEY = "segsuite"


@dataclass(frozen=True)
class PlaneSelection:
    """Where a 2D plane sits in an nD image layer's data.

    Parameters
    ----------
    index : tuple
        Index into the layer's data: ints on sliced axes, ``slice(None)`` on
        the two plane axes, the channel axis and the RGB axis.
    axes : (int, int)
        The data axes of the plane's rows and columns (ascending).
    shape : (int, int)
        The plane's (rows, cols).
    layer_shape : tuple
        Shape of the layer's spatial data (no RGB axis, no channel axis).
    channel_axis : int or None
        Data axis holding channels that travel with the plane.
    """

    index: tuple
    axes: tuple[int, int]
    shape: tuple[int, int]
    layer_shape: tuple[int, ...]
    channel_axis: int | None = None
    rgb: bool = False

    @property
    def labels_index(self) -> tuple:
        """Index of the plane in a Labels volume of ``layer_shape``."""
        idx = list(self.index[: len(self.index) - (1 if self.rgb else 0)])
        if self.channel_axis is not None:
            del idx[self.channel_axis]
        return tuple(idx)

    @property
    def key(self) -> str:
        """A short text naming the plane, e.g. ``"z=3"`` style ``"0:3"`` (``"2d"`` for 2D)."""
        parts = [f"{axis}:{i}" for axis, i in enumerate(self.labels_index) if not isinstance(i, slice)]
        return ",".join(parts) or "2d"


def full_resolution(layer) -> Any:
    """The full-resolution data of a layer: level 0 of a multiscale layer, else ``layer.data``.

    Nothing is read: dask, zarr and other lazy arrays stay lazy.
    """
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return data


def plane_axes(viewer: napari.Viewer, layer) -> tuple[int, int]:
    """The layer's data axes shown as rows and columns of the canvas (ascending)."""
    world_ndim = viewer.dims.ndim
    offset = world_ndim - layer.ndim
    shown = [d - offset for d in viewer.dims.order[-2:]]
    if any(d < 0 for d in shown):
        raise InputError(
            f"Layer '{layer.name}' has {layer.ndim} dimensions and is not shown in the "
            "displayed axes; change the displayed axes or pick another layer."
        )
    a, b = sorted(shown)
    return a, b


def plane_selection(
    viewer: napari.Viewer,
    layer,
    *,
    channel_axis: int | None = None,
) -> PlaneSelection:
    """Where the plane of ``layer`` at the viewer's current position is; no pixel is read.

    See :func:`current_plane` (which also reads the plane) for the parameters.
    """
    rgb = bool(getattr(layer, "rgb", False))
    data = full_resolution(layer)
    spatial_shape = tuple(data.shape[:-1]) if rgb else tuple(data.shape)
    if channel_axis is not None:
        if rgb:
            raise InputError("An RGB layer has its colours already; do not set a channel axis.")
        if not 0 <= channel_axis < len(spatial_shape):
            raise InputError(f"Channel axis {channel_axis} does not exist in a {len(spatial_shape)}D layer.")
    axes = plane_axes(viewer, layer)
    if channel_axis in axes:
        raise InputError("The channel axis is one of the displayed axes; display two spatial axes.")
    point = layer.world_to_data(viewer.dims.point)
    index: list = []
    for axis, size in enumerate(spatial_shape):
        if axis in axes or axis == channel_axis:
            index.append(slice(None))
            continue
        i = int(np.round(point[axis]))
        if not 0 <= i < size:
            raise InputError(
                f"The viewer's position is outside layer '{layer.name}' along axis {axis} "
                f"(index {i}, size {size}); move the slider onto the image."
            )
        index.append(i)
    if rgb:
        index.append(slice(None))
    labels_shape = tuple(s for a, s in enumerate(spatial_shape) if a != channel_axis)
    return PlaneSelection(
        index=tuple(index),
        axes=axes,
        shape=(spatial_shape[axes[0]], spatial_shape[axes[1]]),
        layer_shape=labels_shape,
        channel_axis=channel_axis,
        rgb=rgb,
    )


def current_plane(
    viewer: napari.Viewer,
    layer,
    *,
    channel_axis: int | None = None,
) -> tuple[np.ndarray, PlaneSelection]:
    """The 2D plane of ``layer`` at the viewer's current position.

    Parameters
    ----------
    viewer : napari.Viewer
    layer : napari.layers.Image (or Labels)
        Any dimensionality; RGB(A) layers keep their colour axis last; multiscale
        layers give their full-resolution level; dask/zarr data is read for this
        plane only.
    channel_axis : int, optional
        A data axis of channels to keep with the plane (moved last).

    Returns
    -------
    plane : ndarray
        (H, W), or (H, W, C) for RGB(A) or with ``channel_axis``.
    selection : PlaneSelection
    """
    sel = plane_selection(viewer, layer, channel_axis=channel_axis)
    plane = np.asarray(full_resolution(layer)[sel.index])
    if channel_axis is not None:
        # Remaining axes are in data order: plane rows, cols and the channel axis.
        kept = [a for a, i in enumerate(sel.index[: len(sel.layer_shape) + 1]) if isinstance(i, slice)]
        plane = np.moveaxis(plane, kept.index(channel_axis), -1)
    return plane, sel


def region_index(sel: PlaneSelection, region) -> tuple:
    """Index of ``region`` (``r0, c0, r1, c1`` attributes) of plane ``sel`` in a Labels volume."""
    idx = list(sel.labels_index)
    idx[sel.axes[0]] = slice(int(region.r0), int(region.r1))
    idx[sel.axes[1]] = slice(int(region.c0), int(region.c1))
    return tuple(idx)


def region_layer_kwargs(image_layer, sel: PlaneSelection, region) -> dict:
    """Transform keywords for a small layer holding ``region`` of plane ``sel`` of ``image_layer``.

    Its data has the Labels volume's dimensions, with size 1 on the slider axes and the
    region's size on the plane axes; the translation puts its pixel (0, ..., 0) on the
    region's first pixel of that plane (scale, rotation, shear and affine are the image's).
    """
    if sel.channel_axis is not None:
        raise InputError("A region layer of an image with a channel axis is not supported.")
    kwargs = aligned_layer_kwargs(image_layer)
    offset = np.zeros(len(sel.layer_shape))
    for axis, i in enumerate(sel.labels_index):
        if not isinstance(i, slice):
            offset[axis] = i
    offset[sel.axes[0]], offset[sel.axes[1]] = region.r0, region.c0
    kwargs["translate"] = np.asarray(image_layer._transforms["data2physical"](offset), dtype=float)
    return kwargs


def region_shape(sel: PlaneSelection, region) -> tuple[int, ...]:
    """The shape of a :func:`region_layer_kwargs` layer's data."""
    shape = [1] * len(sel.layer_shape)
    shape[sel.axes[0]], shape[sel.axes[1]] = int(region.r1 - region.r0), int(region.c1 - region.c0)
    return tuple(shape)


def write_labels_region(layer, sel: PlaneSelection, region, block: np.ndarray, *,
                        extra_features: dict[int, dict] | None = None) -> int:
    """Write ``block`` over ``region`` of plane ``sel`` of Labels ``layer`` (see :func:`write_labels_at`)."""
    return write_labels_at(layer, region_index(sel, region), block, extra_features=extra_features)


def write_labels_at(layer, idx: tuple, block: np.ndarray, *, extra_features: dict[int, dict] | None = None) -> int:
    """Write ``block`` at ``idx`` (ints and two bounded slices) of Labels ``layer``: one undo step.

    Only the changed pixels go through ``layer.data_setitem`` (the Labels undo history).
    ``layer.features`` is updated from the region alone: each label's ``area`` changes by
    what the region gained or lost; labels new to the layer get a row (area and the
    bounding box of their pixels in the region, exact for objects inside the region, plus
    ``extra_features``); labels whose area drops to 0 lose their row. Returns the number
    of pixels changed.
    """
    import pandas as pd

    old = np.array(layer.data[idx], copy=True)  # a copy: a numpy layer's slice is a view
    block = np.asarray(block).reshape(old.shape).astype(old.dtype, copy=False)
    changed = np.nonzero(old != block)
    if not changed[0].size:
        return 0
    layer.data_setitem(_expand_index(idx, changed), block[changed])
    was, now = old[changed].astype(np.int64), block[changed].astype(np.int64)
    ids = np.union1d(was, now)
    ids = ids[ids != 0]
    delta = {int(i): int((now == i).sum()) - int((was == i).sum()) for i in ids}
    features = layer.features.copy()
    if "label" not in features.columns:
        features = pd.DataFrame({"index": np.zeros(0, np.int64), "label": np.zeros(0, np.int64),
                                 "area": np.zeros(0, np.int64)})
    features = features.drop_duplicates("label").set_index("label", drop=False)
    if "area" not in features.columns:
        features["area"] = 0
    plane = np.squeeze(block, axis=tuple(a for a, i in enumerate(idx) if not isinstance(i, slice)))
    new_rows = []
    for label, d in delta.items():
        if label in features.index:
            features.loc[label, "area"] = int(features.loc[label, "area"]) + d
            continue
        rows, cols = np.nonzero(plane == label)
        row = {"index": label, "label": label, "area": d}
        if rows.size:
            names = ("row", "col")
            offsets = [i.start or 0 for i in idx if isinstance(i, slice)]
            for name, v, off in zip(names, (rows, cols), offsets, strict=True):
                row[f"bbox_{name}_min"], row[f"bbox_{name}_max"] = int(v.min() + off), int(v.max() + off + 1)
        row.update((extra_features or {}).get(label, {}))
        new_rows.append(row)
    if new_rows:
        added = pd.DataFrame(new_rows).set_index("label", drop=False)
        features = pd.concat([features, added]) if len(features) else added
    for label, values in (extra_features or {}).items():
        if label in features.index:
            for col, v in values.items():
                if col not in features.columns:
                    features[col] = pd.Series([None] * len(features), index=features.index, dtype=object)
                features.loc[label, col] = v
    features = features[features["area"].astype(np.int64) > 0]
    features["area"] = features["area"].astype(np.int64)
    layer.features = features.sort_index().reset_index(drop=True)
    return int(changed[0].size)


def next_label(layer) -> int:
    """One more than the largest label of ``layer``, without reading a large layer whole.

    Layers up to :data:`FEATURES_FULL_VOLUME_LIMIT` voxels are read; larger ones use
    their ``features`` (the ``label`` column, kept by every SegSuite write) and the
    ``max_label`` in their SegSuite metadata, whichever is larger.
    """
    from napari_segsuite.core.labels import next_free_id

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if int(np.prod(data.shape, dtype=np.int64)) <= FEATURES_FULL_VOLUME_LIMIT:
        return next_free_id(data)
    known = int(layer.metadata.get(METADATA_KEY, {}).get("max_label", 0))
    features = layer.features
    if "label" in features.columns and len(features):
        known = max(known, int(features["label"].max()))
    return known + 1


def _data_to_world_transform(layer):
    """The layer's data-to-world affine (what ``layer.data_to_world`` applies), for (N, ndim) arrays."""
    return layer._transforms[1:].simplified


def _to_image_data(world_coords: np.ndarray, image) -> np.ndarray:
    """``image.world_to_data`` of every row of ``world_coords``, in one vectorised step."""
    world = np.asarray(world_coords, dtype=float).reshape(len(world_coords), -1)
    if len(world) == 0:
        return np.zeros((0, image.ndim))
    if world.shape[1] >= image.ndim:
        world = world[:, world.shape[1] - image.ndim:]
    else:
        world = np.hstack([np.zeros((len(world), image.ndim - world.shape[1])), world])
    return np.atleast_2d(_data_to_world_transform(image).inverse(world)).astype(float)


def _layer_to_world(layer, data_coords: np.ndarray, viewer_point: np.ndarray) -> np.ndarray:
    """World coordinates of ``data_coords`` (N, layer.ndim); missing world dims from the viewer.

    One vectorised affine for all points (a per-point ``data_to_world`` made
    each prompt change cost O(points) Python calls: 50 ms at 400 points).
    """
    world_ndim = len(viewer_point)
    out = np.tile(np.asarray(viewer_point, dtype=float), (len(data_coords), 1))
    if len(data_coords):
        out[:, world_ndim - layer.ndim:] = _data_to_world_transform(layer)(np.asarray(data_coords, dtype=float))
    return out


def _on_plane(coords: np.ndarray, sel: PlaneSelection, tolerance: float = 0.5) -> np.ndarray:
    keep = np.ones(len(coords), dtype=bool)
    for axis, i in enumerate(sel.labels_index):
        if isinstance(i, slice):
            continue
        keep &= np.abs(coords[:, axis] - i) <= tolerance
    return keep


def _spatial_coords(coords: np.ndarray, sel: PlaneSelection) -> np.ndarray:
    """Drop the channel axis column (if any) so columns match ``labels_index``."""
    if sel.channel_axis is None:
        return coords
    return np.delete(coords, sel.channel_axis, axis=1)


def points_on_plane(
    viewer: napari.Viewer,
    points_layer,
    image_layer,
    sel: PlaneSelection,
) -> tuple[np.ndarray, np.ndarray]:
    """Points of ``points_layer`` that lie on the selected plane, in the image's data space.

    Returns
    -------
    coords : ndarray (N, 2)
        (row, col) on the plane, in pixels of the image data (not rounded).
    which : ndarray (N,) int
        Indices of those points in ``points_layer.data``.
    """
    data = np.asarray(points_layer.data, dtype=float).reshape(-1, points_layer.ndim)
    if len(data) == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=int)
    world = _layer_to_world(points_layer, data, np.asarray(viewer.dims.point, dtype=float))
    img = _spatial_coords(_to_image_data(world, image_layer), sel)
    keep = _on_plane(img, sel)
    return img[keep][:, list(sel.axes)], np.flatnonzero(keep)


@dataclass(frozen=True)
class ShapePrompt:
    """A shape from a Shapes layer, in the image's plane coordinates."""

    kind: str
    vertices: np.ndarray  # (V, 2) row, col
    index: int

    @property
    def box(self) -> np.ndarray:
        """(row0, col0, row1, col1) around the vertices."""
        return np.concatenate([self.vertices.min(axis=0), self.vertices.max(axis=0)])

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The shape filled as a boolean mask of ``shape`` (polygon fill of its outline)."""
        from skimage.draw import polygon

        out = np.zeros(shape, dtype=bool)
        verts = self.vertices
        if self.kind == "ellipse":
            verts = _ellipse_outline(verts)
        rr, cc = polygon(verts[:, 0], verts[:, 1], shape=shape)
        out[rr, cc] = True
        return out


def _ellipse_outline(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """napari stores an ellipse as the four corners of its bounding box."""
    center = corners.mean(axis=0)
    half = (corners.max(axis=0) - corners.min(axis=0)) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([center[0] + half[0] * np.sin(t), center[1] + half[1] * np.cos(t)], axis=1)


def shapes_on_plane(
    viewer: napari.Viewer,
    shapes_layer,
    image_layer,
    sel: PlaneSelection,
) -> list[ShapePrompt]:
    """Shapes of ``shapes_layer`` that lie on the selected plane, in the image's data space."""
    prompts = []
    point = np.asarray(viewer.dims.point, dtype=float)
    for i, (verts, kind) in enumerate(zip(shapes_layer.data, shapes_layer.shape_type, strict=True)):
        verts = np.asarray(verts, dtype=float)
        world = _layer_to_world(shapes_layer, verts, point)
        img = _spatial_coords(_to_image_data(world, image_layer), sel)
        if not _on_plane(img, sel).all():
            continue
        prompts.append(ShapePrompt(kind=kind, vertices=img[:, list(sel.axes)], index=i))
    return prompts


def output_layer_name(image_layer, task: str) -> str:
    """Name of a task's output layer, e.g. ``"coins [semantic]"``."""
    return f"{image_layer.name} [{task}]"


def aligned_layer_kwargs(layer, channel_axis: int | None = None) -> dict:
    """Transform keyword arguments that put a new layer exactly on top of ``layer``.

    Parameters
    ----------
    layer : napari layer
        The layer to align with (an Image, or a Labels layer).
    channel_axis : int, optional
        A channel axis of ``layer`` that the new layer does not have; only
        scale and translate are kept then (a rotation or affine cannot be
        reduced by one axis).
    """
    kwargs = {"scale": np.asarray(layer.scale), "translate": np.asarray(layer.translate)}
    if channel_axis is not None:
        keep = [a for a in range(layer.ndim) if a != channel_axis]
        return {k: v[keep] for k, v in kwargs.items()}
    kwargs["affine"] = layer.affine.affine_matrix
    kwargs["rotate"] = layer.rotate
    kwargs["shear"] = layer.shear
    return kwargs


def find_or_create_labels(
    viewer: napari.Viewer,
    image_layer,
    sel: PlaneSelection,
    name: str,
    *,
    target=None,
):
    """The Labels layer a result goes into, created aligned with the image if needed.

    Parameters
    ----------
    target : napari.layers.Labels, optional
        A user-chosen layer; must have the image's spatial shape.

    Raises
    ------
    InputError
        When ``target`` (or an existing layer called ``name``) has another shape.
    """
    from napari.layers import Labels

    layer = target
    if layer is None and name in viewer.layers:
        layer = viewer.layers[name]
        if not isinstance(layer, Labels):
            raise InputError(f"A layer named '{name}' exists and is not a Labels layer; rename it.")
    if layer is not None:
        if tuple(layer.data.shape) != tuple(sel.layer_shape):
            raise InputError(
                f"Labels layer '{layer.name}' has shape {tuple(layer.data.shape)} but image "
                f"'{image_layer.name}' needs {tuple(sel.layer_shape)}; pick or create a matching layer."
            )
        return layer
    data = np.zeros(sel.layer_shape, dtype=LABEL_DTYPE)
    layer = Labels(data, name=name, **aligned_layer_kwargs(image_layer, sel.channel_axis))
    viewer.add_layer(layer)
    return layer


class LayerEditedError(SegSuiteError):
    """A result would replace hand edits in Labels layers (raised under the "ask" policy)."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        quoted = ", ".join(repr(n) for n in self.names)
        super().__init__(
            f"{quoted} {'was' if len(self.names) == 1 else 'were'} edited by hand since SegSuite last wrote "
            "it: overwrite, write to a new layer, or cancel?"
        )


@dataclass
class _Policy:
    choice: str
    redirects: dict = field(default_factory=dict)


_EDIT_POLICY: contextvars.ContextVar = contextvars.ContextVar("segsuite_edit_policy", default=None)
EDIT_CHOICES = ("ask", "overwrite", "new")


@contextlib.contextmanager
def edit_policy(choice: str):
    """What writes inside the block do with hand-edited layers: "ask", "overwrite" or "new".

    "ask" raises :class:`LayerEditedError`; "new" writes to ``"<name> (new)"``
    (numbered when taken), the same new layer for every write to one name in the block.
    """
    if choice not in EDIT_CHOICES:
        raise ValueError(f"choice must be one of {EDIT_CHOICES}")
    token = _EDIT_POLICY.set(_Policy(choice))
    try:
        yield
    finally:
        _EDIT_POLICY.reset(token)


def mark_written(layer) -> None:
    """Record ``layer``'s current content as what SegSuite wrote (see :func:`edited_since_written`)."""
    from napari_segsuite.core.fingerprint import fingerprint

    meta = dict(layer.metadata.get(METADATA_KEY, {}))
    meta["written"] = fingerprint(layer.data)
    layer.metadata = {**layer.metadata, METADATA_KEY: meta}


def edited_since_written(layer) -> bool:
    """Whether ``layer``'s pixels differ from what SegSuite last wrote into it.

    A layer SegSuite never wrote counts as edited when it holds any label (it is the user's).
    """
    from napari_segsuite.core.fingerprint import fingerprint

    written = layer.metadata.get(METADATA_KEY, {}).get("written")
    if written is None:
        return bool(np.asarray(layer.data).any())
    return fingerprint(layer.data) != written


def _unique_name(viewer, name: str) -> str:
    candidate, k = f"{name} (new)", 2
    while candidate in viewer.layers:
        candidate, k = f"{name} (new {k})", k + 1
    return candidate


def guard_edited(viewer, names: list[str]) -> None:
    """Under the "ask" policy, raise :class:`LayerEditedError` when any layer ``names`` was edited.

    Call before a result writes several layers, so that nothing is written before the question.
    """
    policy = _EDIT_POLICY.get()
    if policy is None or policy.choice != "ask":
        return
    edited = [n for n in names if n in viewer.layers and hasattr(viewer.layers[n], "paint")
              and edited_since_written(viewer.layers[n])]
    if edited:
        raise LayerEditedError(edited)


def resolve_output_name(viewer, name: str) -> str:
    """The name a result meant for layer ``name`` is written to, under the current edit policy.

    Raises
    ------
    LayerEditedError
        Under "ask", when the layer was edited since SegSuite wrote it.
    """
    policy = _EDIT_POLICY.get()
    if policy is None:
        return name
    if name in policy.redirects:
        return policy.redirects[name]
    if policy.choice == "overwrite" or name not in viewer.layers:
        return name
    layer = viewer.layers[name]
    if not hasattr(layer, "paint") or not edited_since_written(layer):
        return name
    if policy.choice == "ask":
        raise LayerEditedError([name])
    policy.redirects[name] = _unique_name(viewer, name)
    return policy.redirects[name]


def write_plane(
    viewer: napari.Viewer,
    image_layer,
    sel: PlaneSelection,
    labels2d: np.ndarray,
    *,
    task: str,
    provenance: dict | None = None,
    extra_features: dict[int, dict] | None = None,
    target=None,
    name: str | None = None,
    mode: str = "replace",
    guard_edits: bool = True,
):
    """Write a 2D label result into the image's output Labels layer.

    Parameters
    ----------
    labels2d : ndarray (H, W) int
        The result for the plane ``sel``.
    task : str
        Task name, used for the layer name and metadata.
    provenance : dict, optional
        Model and parameters; stored in ``layer.metadata["segsuite"]``, under
        the plane's key for nD layers.
    extra_features : dict, optional
        ``{label: {column: value}}`` for ``layer.features``.
    target : Labels, optional
        Write here instead of the default ``"<image> [<task>]"`` layer.
    mode : {"replace", "merge", "paint"}
        ``replace`` sets the whole plane to ``labels2d``; ``merge`` writes only
        the non-zero pixels of ``labels2d`` into unlabeled pixels; ``paint``
        writes the non-zero pixels of ``labels2d`` over whatever is there.
    guard_edits : bool
        Apply the :func:`edit_policy` to the output layer (False for writes that
        keep what is there, such as SAM commits).

    Returns
    -------
    napari.layers.Labels
        The layer written to. The write is one step in its undo history.
    """
    labels2d = np.asarray(labels2d)
    if labels2d.shape != sel.shape:
        raise InputError(f"Result of shape {labels2d.shape} does not fit the plane {sel.shape}.")
    if mode not in ("replace", "merge", "paint"):
        raise InputError(f"Unknown write mode {mode!r}.")
    if labels2d.size and int(labels2d.max(initial=0)) > np.iinfo(LABEL_DTYPE).max:
        raise InputError("Label ids beyond int32 cannot be written to the Labels layer.")
    name = name or output_layer_name(image_layer, task)
    if guard_edits:
        if target is not None and target in viewer.layers:
            new_name = resolve_output_name(viewer, target.name)
            if new_name != target.name:
                target, name = None, new_name
        elif target is None:
            name = resolve_output_name(viewer, name)
    layer = find_or_create_labels(viewer, image_layer, sel, name, target=target)
    idx = sel.labels_index
    old = np.asarray(layer.data[idx])
    new = np.zeros_like(old) if mode == "replace" else old.copy()
    if mode in ("merge", "paint"):
        put = (labels2d != 0) & (old == 0) if mode == "merge" else labels2d != 0
        new[put] = labels2d[put]
    else:
        new[...] = labels2d.astype(old.dtype, copy=False)
    changed = np.nonzero(new != old)
    if changed[0].size:
        full = _expand_index(idx, changed)
        layer.data_setitem(full, new[changed])
    _update_features(layer, idx, extra_features)
    meta = dict(layer.metadata.get(METADATA_KEY, {}))
    record = {"task": task, **(provenance or {})}
    meta["task"] = task
    meta["source_image"] = image_layer.name
    if sel.key == "2d":
        meta.update(record)
    else:
        planes = dict(meta.get("planes", {}))
        planes[sel.key] = record
        meta["planes"] = planes
        meta["last"] = record
    layer.metadata = {**layer.metadata, METADATA_KEY: meta}
    mark_written(layer)
    return layer


def _expand_index(plane_index: tuple, plane_coords: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Full-volume integer indices of pixels given in plane coordinates."""
    n = plane_coords[0].size
    out, k = [], 0
    for i in plane_index:
        if isinstance(i, slice):
            out.append(plane_coords[k] + (i.start or 0))
            k += 1
        else:
            out.append(np.full(n, i, dtype=np.intp))
    return tuple(out)


FEATURES_FULL_VOLUME_LIMIT = 64_000_000


def _update_features(layer, plane_index: tuple, extra: dict[int, dict] | None) -> None:
    """One row per label in ``layer.features``: ``index`` (napari's key) and ``label`` (both the
    label id), area, bbox, plus extra columns.

    Areas and boxes cover the whole volume when it has at most
    :data:`FEATURES_FULL_VOLUME_LIMIT` voxels, else the written plane. Extra
    columns of labels not in ``extra`` keep their earlier values; rows of
    labels that no longer exist are dropped.
    """
    import pandas as pd

    data = layer.data
    source = np.asarray(data) if data.size <= FEATURES_FULL_VOLUME_LIMIT else np.asarray(data[plane_index])
    table = pd.DataFrame(label_table(source))
    table.insert(0, "index", table["label"])  # napari's key from label value to feature row
    table = table.set_index("label", drop=False)
    old = layer.features
    key = "label" if "label" in old.columns else "index"
    if len(old) and key in old.columns:
        old = old.drop_duplicates(key).set_index(key, drop=False)
        for col in old.columns:
            if col not in table.columns:
                table[col] = old[col].reindex(table.index)
    if extra:
        ex = pd.DataFrame.from_dict(extra, orient="index")
        rows = ex.index.intersection(table.index)
        for col in ex.columns:
            if col not in table.columns:
                table[col] = pd.Series([None] * len(table), index=table.index, dtype=object)
            table.loc[rows, col] = ex.loc[rows, col]
    layer.features = table.reset_index(drop=True)
