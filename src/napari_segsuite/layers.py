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

- Large images: :func:`field_of_view` and :func:`rectangle_region` give the region of a
  plane to segment; :func:`ondisk_labels_layer` makes (or re-opens) a Labels layer backed by a
  zarr pyramid (:class:`~napari_segsuite.core.label_store.LabelStore`, OME-Zarr labels),
  :func:`record_on_disk_write` updates its features and provenance after a region was written,
  :func:`undo_on_disk` undoes the last bounded write, and :func:`write_region` writes a region
  into an in-memory Labels layer.

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


# -- large images: regions, labels on disk -------------------------------------------------

#: Planes with more pixels than this get labels on disk (the docks' default; settable there).
ON_DISK_PIXELS = 64_000_000
#: Environment variable naming the folder for on-disk labels of images that are not OME-Zarr.
LABELS_DIR_ENV = "NAPARI_SEGSUITE_LABELS_DIR"
#: Name of the Shapes layer whose last rectangle is the "rectangle" region of an image.
REGION_SUFFIX = "region"
_STORES: dict = {}  # id(layer) -> LabelStore: the open store (and its undo step) of an on-disk layer


def is_lazy(layer) -> bool:
    """Whether a layer's data is multiscale or not a numpy array (dask, zarr ...): read on demand."""
    data = full_resolution(layer)
    return bool(getattr(layer, "multiscale", False)) or not isinstance(data, np.ndarray)


def labels_on_disk(layer, limit_pixels: int = ON_DISK_PIXELS) -> bool:
    """Whether results for Image ``layer`` go to a Labels layer on disk: lazy data, or planes
    larger than ``limit_pixels`` (0: always)."""
    data = full_resolution(layer)
    spatial = tuple(data.shape[:-1]) if getattr(layer, "rgb", False) else tuple(data.shape)
    return is_lazy(layer) or int(np.prod(spatial[-2:], dtype=np.int64)) > int(limit_pixels)


def field_of_view(viewer, image_layer, sel: PlaneSelection):
    """The part of the plane ``sel`` of ``image_layer`` that the canvas shows, as a Region.

    Raises
    ------
    InputError
        With no canvas (a viewer without a window), or when the view does not show the image.
    """
    from napari_segsuite.core.regions import clip_region

    try:
        canvas = viewer.window._qt_viewer.canvas.native
        height, width = int(canvas.height()), int(canvas.width())
    except AttributeError as exc:
        raise InputError("The field of view needs a viewer window; run on a rectangle or the whole plane.") from exc
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    zoom = float(camera.zoom)
    center = np.asarray(camera.center, dtype=float)[-2:]
    rows_axis, cols_axis = viewer.dims.displayed[-2:]
    corners = []
    for dy in (-0.5, 0.5):
        for dx in (-0.5, 0.5):
            point = np.asarray(viewer.dims.point, dtype=float).copy()
            point[rows_axis] = center[0] + dy * height / zoom
            point[cols_axis] = center[1] + dx * width / zoom
            corners.append(point)
    data = _spatial_coords(_to_image_data(np.asarray(corners), image_layer), sel)[:, list(sel.axes)]
    lo, hi = data.min(axis=0) + 0.5, data.max(axis=0) + 0.5
    return clip_region(lo[0], hi[0], lo[1], hi[1], sel.shape, what="The field of view", min_side=16)


def region_layer_name(image_layer) -> str:
    """The Shapes layer whose last rectangle is the region to segment, e.g. ``"slide [region]"``."""
    return f"{image_layer.name} [{REGION_SUFFIX}]"


def rectangle_region(viewer, image_layer, sel: PlaneSelection):
    """The last rectangle of ``"<image> [region]"`` on the plane ``sel``, as a Region of the image.

    Raises
    ------
    InputError
        No such layer or no rectangle on the plane; a rectangle outside the image.
    """
    from napari_segsuite.core.regions import clip_region

    name = region_layer_name(image_layer)
    if name not in viewer.layers:
        raise InputError(f"Draw a rectangle in the Shapes layer '{name}' first (choose Region: rectangle).")
    shapes = [p for p in shapes_on_plane(viewer, viewer.layers[name], image_layer, sel)
              if p.kind in ("rectangle", "polygon", "ellipse")]
    if not shapes:
        raise InputError(f"'{name}' has no rectangle on this plane; draw one over the part to segment.")
    r0, c0, r1, c1 = shapes[-1].box
    return clip_region(r0 + 0.5, r1 + 0.5, c0 + 0.5, c1 + 0.5, sel.shape, what="The rectangle", min_side=16)


def labels_pyramid_shapes(image_layer, sel: PlaneSelection) -> list[tuple[int, ...]]:
    """Level shapes of on-disk labels for ``image_layer``: the image's own pyramid (spatial axes)
    when it is multiscale, else a 2x pyramid down to 1024 pixels."""
    from napari_segsuite.core.label_store import pyramid_shapes

    if getattr(image_layer, "multiscale", False):
        rgb = bool(getattr(image_layer, "rgb", False))
        return [tuple(int(s) for s in (level.shape[:-1] if rgb else level.shape)) for level in image_layer.data]
    return pyramid_shapes(tuple(sel.layer_shape))


def _ome_root_of(image_layer):
    """The local OME-Zarr folder holding the image's level 0 (None when it is not one)."""
    from pathlib import Path

    data = full_resolution(image_layer)
    store = getattr(data, "store", None)
    root = getattr(store, "root", None)
    if root is not None:
        folder = Path(str(root)) / str(getattr(data, "path", "") or "")
        folder = folder.parent
        for candidate in (folder, folder.parent):
            meta = candidate / "zarr.json"
            if meta.exists() and '"multiscales"' in meta.read_text():
                return candidate
            if (candidate / ".zattrs").exists() and '"multiscales"' in (candidate / ".zattrs").read_text():
                return candidate
    source = getattr(getattr(image_layer, "source", None), "path", None)
    if source and str(source).rstrip("/").endswith(".zarr"):
        return Path(str(source))
    return None


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "labels"


def labels_store_location(image_layer, name: str, folder=None):
    """Where the on-disk labels ``name`` of ``image_layer`` go, and a note when it is not the image.

    The ``labels/<name>`` group of the image's OME-Zarr when the image is a writable local
    OME-Zarr; else ``<folder>/<image>.labels.zarr/labels/<name>`` (``folder``:
    ``$NAPARI_SEGSUITE_LABELS_DIR`` when set, else the one given: the docks give the model
    folder's ``labels/``).

    Returns
    -------
    (Path, str)
        The store folder and a note for the user ("" when it is inside the image).
    """
    import os
    from pathlib import Path

    note = ""
    root = _ome_root_of(image_layer)
    if root is not None:
        target = root / "labels"
        probe = target if target.exists() else root
        if os.access(probe, os.W_OK):
            return target / _safe(name), ""
        note = f"'{root}' is read-only, so the labels are kept in another folder: "
    folder = os.environ.get(LABELS_DIR_ENV) or folder
    if folder is None:
        raise InputError(f"No folder for the labels of '{image_layer.name}': set {LABELS_DIR_ENV}.")
    path = Path(folder) / f"{_safe(image_layer.name)}.labels.zarr" / "labels" / _safe(name)
    return path, (note + str(path)) if note else ""


def _register_label_name(store_path) -> None:
    """List the store in its ``labels`` group's attributes (OME-Zarr's ``labels: [names]``)."""
    import json

    group = store_path.parent
    meta = group / "zarr.json"
    try:
        if meta.exists():
            doc = json.loads(meta.read_text())
        else:
            doc = {"zarr_format": 3, "node_type": "group", "attributes": {}}
        attrs = doc.setdefault("attributes", {})
        ome = attrs.setdefault("ome", {"version": "0.5"})
        names = list(ome.get("labels", []))
        if store_path.name not in names:
            ome["labels"] = [*names, store_path.name]
            tmp = meta.with_name(".zarr.json.tmp")
            tmp.write_text(json.dumps(doc, indent=2))
            tmp.replace(meta)
    except OSError as exc:
        from napari_segsuite.core.label_store import _write_error

        raise _write_error(exc, group) from exc


def _lazy_levels(store) -> list:
    """The store's levels as dask arrays for napari: napari slices a multiscale level over every
    non-displayed axis before it picks the plane, which dask keeps lazy (a zarr array would read
    the region of every plane)."""
    import dask.array as da

    return [da.from_array(level, chunks=level.chunks, asarray=False, fancy=False, lock=False)
            for level in store.levels]


def label_store_of(layer):
    """The :class:`~napari_segsuite.core.label_store.LabelStore` of an on-disk Labels layer (or None)."""
    from napari_segsuite.core.label_store import LabelStore

    store = _STORES.get(id(layer))
    path = layer.metadata.get(METADATA_KEY, {}).get("store")
    if store is not None and str(store.path) == str(path):
        return store
    path = layer.metadata.get(METADATA_KEY, {}).get("store")
    if not path:
        return None
    store = LabelStore.open(path)
    _STORES[id(layer)] = store
    return store


def ondisk_labels_layer(viewer, image_layer, sel: PlaneSelection, name: str, *, folder=None):
    """The on-disk Labels layer ``name`` for ``image_layer`` (created, or re-opened from its store).

    A new layer's store is made at :func:`labels_store_location` with the image's pyramid; a
    store already there with the same shapes is re-opened (the labels of an earlier session).
    The layer shows the store's levels (multiscale when there are several), aligned with the
    image; Ctrl-Z / Ctrl-Shift-Z on it undo / redo the last write (see :func:`undo_on_disk`).

    Returns
    -------
    (napari.layers.Labels, LabelStore, str)
        The layer, its store and a note for the user ("" when none).

    Raises
    ------
    InputError
        A layer of that name that is not an on-disk Labels layer of this shape.
    LabelStoreError
        The store cannot be made (read-only folder, full disk).
    """
    from napari.layers import Labels

    from napari_segsuite.core.label_store import LabelStore

    if name in viewer.layers:
        layer = viewer.layers[name]
        store = label_store_of(layer) if isinstance(layer, Labels) else None
        if store is None or tuple(store.shapes[0]) != tuple(sel.layer_shape):
            raise InputError(
                f"A layer named '{name}' exists and is not on-disk labels of shape {tuple(sel.layer_shape)}; "
                "rename or delete it."
            )
        return layer, store, ""
    if tuple(sel.axes) != (len(sel.layer_shape) - 2, len(sel.layer_shape) - 1):
        raise InputError("Labels on disk need the image's last two axes displayed; reset the displayed axes.")
    path, note = labels_store_location(image_layer, name, folder)
    shapes = labels_pyramid_shapes(image_layer, sel)
    if path.exists() and (path / "zarr.json").exists():
        store = LabelStore.open(path)
        if store.shapes != shapes:
            raise InputError(f"The labels store {path} has other shapes ({store.shapes[0]}); move it away.")
        note = note or f"Re-opened the labels in {path}."
    else:
        store = LabelStore.create(path, shapes, source=image_layer.name)
        if path.parent.name == "labels":
            _register_label_name(path)
    levels = _lazy_levels(store)
    layer = Labels(levels if len(levels) > 1 else levels[0], name=name, multiscale=len(levels) > 1,
                   **aligned_layer_kwargs(image_layer, sel.channel_axis))
    layer.editable = False  # the pixels live on disk; the docks write them, napari's brush does not
    layer.metadata = {**layer.metadata, METADATA_KEY: {
        **store.attrs.get("provenance", {}), "store": str(path), "on_disk": True, "source_image": image_layer.name}}
    if store.attrs.get("features"):
        import pandas as pd

        layer.features = pd.DataFrame(store.attrs["features"])
    _STORES[id(layer)] = store
    layer.bind_key("Control-z", lambda lay: undo_on_disk(lay), overwrite=True)
    layer.bind_key("Control-Shift-z", lambda lay: undo_on_disk(lay, redo=True), overwrite=True)
    viewer.add_layer(layer)
    return layer, store, note


def undo_on_disk(layer, *, redo: bool = False) -> bool:
    """Undo (or redo) the last write into an on-disk Labels layer; False when there is none.

    Only the last write of a region of at most
    :data:`~napari_segsuite.core.label_store.UNDO_PIXELS` pixels can be undone (one step).
    """
    store = label_store_of(layer)
    if store is None:
        return False
    step = store.redo() if redo else store.undo()
    if step is None:
        return False
    old, new = (step.before, step.after) if not redo else (step.after, step.before)
    _apply_counts(layer, store, np.bincount(new.ravel().astype(np.int64)), None,
                  np.bincount(old.ravel().astype(np.int64)))
    layer.refresh()
    return True


def _apply_counts(layer, store, old_counts, table, new_counts=None) -> None:
    """Features after a region changed: areas minus the region's old counts plus its new ones;
    other columns from ``table`` (the new labels' rows) or kept."""
    import pandas as pd

    features = layer.features.copy()
    if "label" not in features.columns:
        features = pd.DataFrame({"index": np.zeros(0, np.int64), "label": np.zeros(0, np.int64),
                                 "area": np.zeros(0, np.int64)})
    features = features.set_index("label", drop=False)
    if "area" not in features.columns:
        features["area"] = 0
    if old_counts is not None:
        ids = np.intersect1d(features.index.to_numpy(), np.nonzero(old_counts)[0])
        features.loc[ids, "area"] = features.loc[ids, "area"] - old_counts[ids]
    if table is not None and len(table):
        rows = table.copy()
        rows["label"] = rows["label"].astype(np.int64)
        rows = rows.drop_duplicates("label").set_index("label", drop=False)
        for col in rows.columns:
            if col not in features.columns:
                features[col] = pd.Series([None] * len(features), index=features.index, dtype=object)
        new = rows.index.difference(features.index)
        features = pd.concat([features, pd.DataFrame(index=new, columns=features.columns)])
        features.loc[new, "area"] = 0
        features.loc[rows.index, "area"] = features.loc[rows.index, "area"].astype(np.int64) + rows["area"].astype(np.int64)
        for col in rows.columns:
            if col not in ("area",):
                features.loc[rows.index, col] = rows[col]
        features["label"] = features.index
    if new_counts is not None:
        ids = np.nonzero(new_counts)[0]
        ids = ids[ids > 0]
        missing = pd.Index(ids).difference(features.index)
        if len(missing):
            features = pd.concat([features, pd.DataFrame({"label": missing, "area": 0}, index=missing)])
        features.loc[ids, "area"] = features.loc[ids, "area"].astype(np.int64) + new_counts[ids]
    features = features[features["area"].astype(np.int64) > 0]
    features["area"] = features["area"].astype(np.int64)
    features["index"] = features["label"].astype(np.int64)
    features["label"] = features["label"].astype(np.int64)
    cols = ["index", "label", *[c for c in features.columns if c not in ("index", "label")]]
    layer.features = features[cols].sort_index().reset_index(drop=True)
    store.update_attrs(features=layer.features.to_dict("list"),
                       max_label=max(int(store.attrs.get("max_label", 0)),
                                     int(features["label"].max()) if len(features) else 0))


def record_on_disk_write(layer, store, sel: PlaneSelection, region, table, old_counts, *, task: str,
                         provenance: dict, before=None) -> None:
    """After a run wrote ``region`` of plane ``sel`` into ``store``: features, provenance, undo step.

    ``old_counts`` is the ``bincount`` of the region's labels before the write (None: it held none).
    """
    lead = tuple(i for i in sel.labels_index[:-2])
    store.record(lead, region, before)
    _apply_counts(layer, store, old_counts, table)
    record = {"task": str(task), **provenance, "region": region.as_list(), "plane": sel.key}
    planes = dict(store.attrs.get("planes", {}))
    planes[sel.key] = record
    store.update_attrs(provenance={"task": str(task), "source_image": record.get("source_image", "")},
                       planes=planes, last=record)
    meta = dict(layer.metadata.get(METADATA_KEY, {}))
    meta.update({"task": str(task), "last": record, "planes": planes})
    layer.metadata = {**layer.metadata, METADATA_KEY: meta}
    layer.refresh()


def write_region(viewer, image_layer, sel: PlaneSelection, region, block: np.ndarray, *, task: str,
                 provenance: dict | None = None, table=None, name: str | None = None):
    """Write a region's labels into an in-memory Labels layer (one undo step); the rest stays.

    The region's old labels are replaced by ``block``; ``table`` rows (label, class, score ...)
    go into ``features`` as in :func:`write_plane`.
    """
    name = resolve_output_name(viewer, name or output_layer_name(image_layer, task))
    layer = find_or_create_labels(viewer, image_layer, sel, name)
    idx = list(sel.labels_index)
    idx[sel.axes[0]], idx[sel.axes[1]] = region.slices
    old = np.asarray(layer.data[tuple(idx)])
    changed = np.nonzero(old != block)
    if changed[0].size:
        full = []
        k = 0
        for a, i in enumerate(idx):
            if isinstance(i, slice):
                full.append(changed[k] + (region.r0 if a == sel.axes[0] else region.c0))
                k += 1
            else:
                full.append(np.full(changed[0].size, i, dtype=np.intp))
        layer.data_setitem(tuple(full), block[changed].astype(layer.data.dtype))
    extra = None
    if table is not None and len(table):
        keep = [c for c in table.columns if c not in ("area",) and not c.startswith("bbox_")]
        extra = {int(r["label"]): {k: v for k, v in r.items() if k != "label"}
                 for r in table[keep].to_dict("records")}
    _update_features(layer, tuple(sel.labels_index), extra)
    meta = dict(layer.metadata.get(METADATA_KEY, {}))
    record = {"task": str(task), **(provenance or {}), "region": region.as_list()}
    meta.update({"task": str(task), "source_image": image_layer.name, "last": record})
    layer.metadata = {**layer.metadata, METADATA_KEY: meta}
    mark_written(layer)
    return layer
