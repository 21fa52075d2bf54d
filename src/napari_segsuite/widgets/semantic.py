"""The "Semantic Segmentation" dock widget.

Reads the chosen Image layer's current plane (or every plane of a 3D/4D
layer), runs :func:`napari_segsuite.tasks.semantic.segment_semantic_job` in a
worker (tile size, overlap, progress, Cancel), and writes a Labels layer
``"<image> [semantic]"`` aligned with the image: label id = model class id + 1,
``class_id``, ``class_name`` and ``pixel_count`` in ``layer.features``, model and
parameters in ``layer.metadata["segsuite"]``. Optionally a confidence Image
layer ``"<image> [semantic confidence]"`` (winning class's probability).

The legend lists the classes present with their colour, name and pixel count;
its check boxes show or hide a class by giving the Labels layer a
:class:`~napari.utils.colormaps.DirectLabelColormap` in which hidden classes
are transparent (the other colours are unchanged).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, SpinBox

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import subjob
from napari_segsuite.core.vocabulary import Task
from napari_segsuite.layers import full_resolution
from napari_segsuite.widgets.base import (
    ALL_IMAGES,
    ALL_PLANES,
    CURRENT_PLANE,
    LOCAL,
    SegmentationWidget,
)
from napari_segsuite.widgets.scaffold import header

__all__ = ["ALL_IMAGES", "ALL_PLANES", "CURRENT_PLANE", "Legend", "SemanticWidget", "plane_selections"]


def plane_selections(viewer, layer, all_planes: bool):
    """The plane selections to segment, without reading pixel data (GUI thread).

    Returns
    -------
    list of napari_segsuite.layers.PlaneSelection
        The current plane, or every plane of the non-displayed axes.
    """
    from napari_segsuite.layers import PlaneSelection, plane_axes

    rgb = bool(getattr(layer, "rgb", False))
    data = full_resolution(layer)
    spatial = tuple(data.shape[:-1]) if rgb else tuple(data.shape)
    axes = plane_axes(viewer, layer)
    point = layer.world_to_data(viewer.dims.point)
    others = [a for a in range(len(spatial)) if a not in axes]
    if all_planes:
        combos = list(itertools.product(*(range(spatial[a]) for a in others)))
    else:
        current = []
        for a in others:
            i = int(np.round(point[a]))
            if not 0 <= i < spatial[a]:
                raise InputError(
                    f"The viewer's position is outside layer '{layer.name}' along axis {a} "
                    f"(index {i}, size {spatial[a]}); move the slider onto the image."
                )
            current.append(i)
        combos = [tuple(current)]
    out = []
    for combo in combos:
        index: list = [slice(None)] * len(spatial)
        for a, i in zip(others, combo, strict=True):
            index[a] = i
        if rgb:
            index.append(slice(None))
        out.append(PlaneSelection(
            index=tuple(index), axes=axes, shape=(spatial[axes[0]], spatial[axes[1]]),
            layer_shape=spatial, channel_axis=None, rgb=rgb,
        ))
    return out


def _swatch(rgba) -> str:
    r, g, b, _a = (round(255 * float(v)) for v in rgba)
    return f'<span style="background-color: rgb({r},{g},{b});">&nbsp;&nbsp;&nbsp;&nbsp;</span>'


class Legend(Container):
    """Colour, name and pixel count of each class in a semantic Labels layer; check boxes show/hide."""

    def __init__(self):
        super().__init__(labels=False)
        self.layer = None
        self.rows: dict[int, CheckBox] = {}
        self.colors: dict[int, np.ndarray] = {}
        self._original_colormap = None

    def show_for(self, layer) -> None:
        """Rebuild the legend from ``layer.features`` (and make every class visible)."""
        from napari.utils.colormaps import DirectLabelColormap

        if self.layer is layer and isinstance(layer.colormap, DirectLabelColormap) and self._original_colormap is not None:
            layer.colormap = self._original_colormap
        self.clear()
        self.rows = {}
        self.layer = layer
        self._original_colormap = layer.colormap
        features = layer.features
        if not len(features) or "class_name" not in features.columns:
            return
        ids = [int(i) for i in features["index"]]
        self.colors = {i: np.asarray(c, dtype=float) for i, c in zip(ids, layer.colormap.map(np.asarray(ids)), strict=True)}
        for (_, row), label_id in zip(features.iterrows(), ids, strict=True):
            box = CheckBox(value=True, text=str(row["class_name"]))
            box.changed.connect(self._apply)
            count = int(row.get("pixel_count", row.get("area", 0)))
            self.append(Container(
                layout="horizontal", labels=False,
                widgets=[Label(value=_swatch(self.colors[label_id])), box, Label(value=f"{count:,} px")],
            ))
            self.rows[label_id] = box

    @property
    def hidden(self) -> list[int]:
        """Label ids whose check box is off."""
        return [i for i, box in self.rows.items() if not box.value]

    def set_visible(self, label_id: int, visible: bool) -> None:
        """Show or hide one class."""
        self.rows[label_id].value = visible

    def _apply(self, _value=None) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        if self.layer is None:
            return
        hidden = set(self.hidden)
        if not hidden:
            self.layer.colormap = self._original_colormap
            return
        colors = {None: np.zeros(4), 0: np.zeros(4)}
        for i, rgba in self.colors.items():
            c = rgba.copy()
            if i in hidden:
                c[3] = 0.0
            colors[i] = c
        self.layer.colormap = DirectLabelColormap(color_dict=colors)


class SemanticWidget(SegmentationWidget):
    """A class for every pixel: SegFormer, Mask2Former, DeepLabV3, LRASPP and the U-Net."""

    task = Task.SEMANTIC
    model_tasks = (Task.SEMANTIC,)
    batch_task = Task.SEMANTIC

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.tile_size = SpinBox(
            label="Tile size", value=512, min=0, max=16384, step=64,
            tooltip="Side of the square tiles the image is cut into (0: the whole plane at once).",
        )
        self.overlap = SpinBox(label="Overlap", value=64, min=0, max=1024, step=16,
                               tooltip="Overlap of neighbouring tiles; their scores are blended smoothly.")
        self.planes = self.scope  # current plane / all planes / all open images
        self.with_confidence = CheckBox(value=False, text="Confidence layer")
        self.legend = Legend()
        self.task_options.extend([self.tile_size, self.overlap, self.planes, self.with_confidence])
        self.results.extend([header("Classes"), self.legend])
        self._add_unet_section()
        self.finish_layout()

    def _add_unet_section(self) -> None:
        """The U-Net trained from painted strokes, as a collapsed group of this dock (same image)."""
        from napari_segsuite.widgets.unet_training import UnetTrainingPanel

        self.unet = UnetTrainingPanel(self.viewer, image=self.image)
        self.unet_section = self.add_group("U-Net: train from painted strokes", [self.unet], labels=False,
                                           index=self.body.index(self.options_group) + 1)

    # -- running ------------------------------------------------------------------
    def uses_batch(self) -> bool:
        """All planes / all open images go through the batch engine; with the confidence
        layer, all planes of one image keep the widget's own job (the engine has no
        confidence output)."""
        if self.scope.value == ALL_PLANES and self.with_confidence.value:
            return False
        return super().uses_batch()

    def batch_params(self) -> dict:
        """Labels = class id + 1 (as in the widget's own job), the form's tiles and overlap."""
        from napari_segsuite.tasks.semantic import resolve_tile_size

        if self.with_confidence.value:
            raise InputError(
                "The confidence layer is made for the current plane or all planes of one image; "
                "turn it off to run on all open images."
            )
        tile = int(self.tile_size.value) or 0
        resolve_tile_size((tile, tile), tile)  # a user-facing error for a tile that is too small
        return {"background_zero": False, "tile_size": tile, "overlap": int(self.overlap.value)}

    def after_batch_write(self, layer) -> None:
        """Pixel counts in the features, and the legend for the layer."""
        features = layer.features.copy()
        if "area" in features.columns:
            features["pixel_count"] = features["area"].astype(int)
            layer.features = features
        meta = dict(layer.metadata.get("segsuite", {}))
        meta["label_ids"] = "model class id + 1"
        layer.metadata = {**layer.metadata, "segsuite": meta}
        self.legend.show_for(layer)

    def make_job(self):
        """Read the layer and options (GUI thread); the job segments plane by plane."""
        from napari_segsuite.core.tiling import check_image, make_grid
        from napari_segsuite.tasks.semantic import (
            MIN_SIDE,
            resolve_tile_size,
            segment_semantic_job,
        )

        layer = self.selected_image()
        self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        sels = plane_selections(self.viewer, layer, self.planes.value == ALL_PLANES)
        data = full_resolution(layer)
        first = data[sels[0].index]
        check_image(first, min_side=MIN_SIDE)
        tile = resolve_tile_size(sels[0].shape, int(self.tile_size.value) or 0)
        overlap = int(self.overlap.value)
        n_tiles = make_grid(sels[0].shape, tile, overlap).n_tiles
        confidence = bool(self.with_confidence.value)
        n = len(sels)

        def job():
            runner = yield from self.load_model_job()
            results = []
            for k, sel in enumerate(sels):
                prefix = f"Plane {k + 1}/{n}: " if n > 1 else ""
                result = yield from subjob(
                    segment_semantic_job(data[sel.index], runner, tile_size=tile if tile else 0,
                                         overlap=overlap, confidence=confidence),
                    offset=k * n_tiles, total=n * n_tiles, prefix=prefix,
                )
                results.append((sel, result))
            return runner, results

        def on_result(value):
            self.write_results(layer, *value)

        return job, on_result

    def write_results(self, image_layer, runner, results) -> None:
        """Write each plane's result into its plane (GUI thread), then update the legend."""
        from napari.utils.notifications import show_info

        from napari_segsuite.layers import write_plane

        labels_layer = None
        notes: list[str] = []
        for sel, result in results:
            provenance = {
                "model": runner.provenance(),
                "parameters": dict(result.params),
                "class_names": dict(result.class_names),
                "label_ids": "model class id + 1",
            }
            extra = {k: {"class_id": v["class_id"], "class_name": v["class_name"]} for k, v in result.features().items()}
            labels_layer = write_plane(
                self.viewer, image_layer, sel, result.labels, task=self.task,
                provenance=provenance, extra_features=extra,
            )
            if result.confidence is not None:
                self._write_confidence(image_layer, sel, result.confidence)
            notes.extend(n for n in result.notes if n not in notes)
        if labels_layer is None:
            return
        features = labels_layer.features.copy()
        if "area" in features.columns:
            features["pixel_count"] = features["area"].astype(int)
            labels_layer.features = features
        self.legend.show_for(labels_layer)
        present = ", ".join(f"{n} ({c:,} px)" for n, c in zip(features.get("class_name", []), features.get("pixel_count", []), strict=False))
        self.message.value = f"{runner.name}: {len(features)} classes in {len(results)} plane(s): {present}"
        for note in notes:
            show_info(note)

    def _write_confidence(self, image_layer, sel, confidence: np.ndarray) -> None:
        from napari.layers import Image

        from napari_segsuite.layers import aligned_layer_kwargs

        name = f"{image_layer.name} [semantic confidence]"
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is not None and (not isinstance(layer, Image) or tuple(layer.data.shape) != tuple(sel.layer_shape)):
            self.viewer.layers.remove(layer)
            layer = None
        if layer is None:
            data = np.zeros(sel.layer_shape, dtype=np.float32)
            layer = Image(
                data, name=name, colormap="magma", contrast_limits=(0.0, 1.0), blending="additive",
                visible=True, **aligned_layer_kwargs(image_layer),
            )
            self.viewer.add_layer(layer)
        layer.data[sel.labels_index] = np.asarray(confidence, dtype=np.float32)
        layer.refresh()

    # -- smoke ----------------------------------------------------------------------
    def smoke(self, timeout: float = 120.0) -> None:
        """Segment the sample end to end with a tiny SegFormer built into a temporary folder."""
        import shutil
        import tempfile

        from napari_segsuite.demo.tiny_models import build_tiny_segformer

        if self.image.value is None:
            self._select_active_image()
        layer = self.selected_image()
        folder = Path(tempfile.mkdtemp(prefix="segsuite-smoke-")) / "tiny-segformer"
        build_tiny_segformer(folder, num_labels=3)
        self.models.model.value = LOCAL
        self.models.local.mode = "d"
        self.models.local.value = str(folder)
        self.device.value = "cpu"
        try:
            self.run()
            self.jobs.wait(timeout, f"Semantic segmentation of '{layer.name}'")
        finally:
            shutil.rmtree(folder.parent, ignore_errors=True)
        if self.jobs.last_error is not None:
            raise RuntimeError(f"Semantic segmentation failed: {self.jobs.last_error}")
        name = f"{layer.name} [semantic]"
        if name not in self.viewer.layers:
            raise RuntimeError(f"Semantic segmentation wrote no layer '{name}'.")
        if layer.name == "coins":  # the sample the U-Net's shipped strokes belong to
            self.unet.smoke()
