"""The "Instance Segmentation" dock widget.

Reads the image plane (or every plane of a stack) and, optionally, boxes from
a Shapes layer on the GUI thread; runs the instance job
(:mod:`napari_segsuite.tasks.instance`) in a worker; writes one Labels plane
per image plane (ids ordered by score, one row per instance in
``layer.features``) and, optionally, a Shapes layer of the boxes labelled with
class and score, on the GUI thread.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, LineEdit, SpinBox

from napari_segsuite.core.errors import InputError
from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Task
from napari_segsuite.layers import full_resolution
from napari_segsuite.widgets.base import (
    ALL_PLANES,
    CURRENT_PLANE,
    LOCAL,
    SegmentationWidget,
)
from napari_segsuite.widgets.dataset_export import add_export_button
from napari_segsuite.widgets.dataset_import import add_import_button

CURRENT, ALL = CURRENT_PLANE, ALL_PLANES
BOXES_SUFFIX = "instance boxes"


def all_planes(layer, sel) -> list:
    """Every plane of ``layer`` along the axes that ``sel`` fixes (the stack axes)."""
    data = full_resolution(layer)
    fixed = [a for a, i in enumerate(sel.index) if not isinstance(i, slice)]
    out = []
    for combo in itertools.product(*(range(data.shape[a]) for a in fixed)):
        index = list(sel.index)
        for a, i in zip(fixed, combo, strict=True):
            index[a] = i
        out.append(replace(sel, index=tuple(index)))
    return out


class InstanceWidget(SegmentationWidget):
    """One id per object: YOLO-seg, Mask R-CNN, Mask2Former instance, SAM 3 concepts; detector boxes + SAM.

    For SAM 3 and the open-vocabulary detectors (Grounding DINO, OWLv2) the
    *Classes* box holds the concepts to find, in words; a detector's boxes
    become masks with *Refine masks with SAM* (any prompt model).
    """

    task = Task.INSTANCE
    model_tasks = (Task.INSTANCE, Task.DETECTION)
    batch_task = Task.INSTANCE

    def __init__(self, napari_viewer):
        super().__init__(napari_viewer)
        self.conf = FloatSpinBox(label="Score threshold", value=0.25, min=0.0, max=1.0, step=0.01)
        self.iou = FloatSpinBox(label="NMS IoU", value=0.7, min=0.0, max=1.0, step=0.05)
        self.mask_threshold = FloatSpinBox(label="Mask threshold", value=0.5, min=0.01, max=0.99, step=0.05)
        self.classes = LineEdit(label="Classes", value="")
        self.classes.tooltip = (
            "Class names or ids to keep, comma-separated (empty: all classes). For SAM 3, Grounding DINO "
            "and OWLv2: the objects to find, in words (e.g. 'cell, nucleus')"
        )
        self.text_threshold = FloatSpinBox(label="Text threshold", value=0.25, min=0.0, max=1.0, step=0.05)
        self.text_threshold.tooltip = "Grounding DINO: a box is kept when a word of its concept passes this"
        self.max_det = SpinBox(label="Max detections", value=300, min=1, max=100_000)
        self.imgsz = SpinBox(label="Input size", value=0, min=0, max=8192, step=32)
        self.imgsz.tooltip = "Model input size in pixels (0: the model's own)"
        self.tile_size = SpinBox(label="Tile size", value=0, min=0, max=65_536, step=64)
        self.tile_size.tooltip = "Tiled inference for large images (0: the whole plane at once)"
        self.overlap = SpinBox(label="Tile overlap", value=64, min=0, max=4096, step=16)
        self.planes = self.scope  # current plane / all planes / all open images
        self.refine = CheckBox(text="Refine masks with SAM", value=False)
        self.sam_model = FileEdit(label="SAM model", mode="r", visible=False)
        self.sam_model.tooltip = (
            "A prompt model that turns boxes into masks: a SAM checkpoint file, or a SAM 2.1, SAM 3 or "
            "EdgeTAM folder (EdgeTAM is the fastest on a CPU)"
        )
        self.box_source = ComboBox(label="Boxes from Shapes", choices=self._shapes_choices, nullable=True)
        self.box_source.tooltip = "Segment the rectangles of a Shapes layer with SAM instead of running a detector"
        self.boxes_output = CheckBox(text="Boxes Shapes layer", value=False)
        self.task_options.extend([self.conf, self.iou, self.mask_threshold, self.classes, self.text_threshold, self.planes])
        self.sam_group = self.add_group("SAM masks and boxes", [
            self.refine, self.sam_model, self.box_source, self.boxes_output], index=self.body.index(self.options_group) + 1)
        self.more_group = self.add_group("Detections and tiles", [
            self.max_det, self.imgsz, self.tile_size, self.overlap], index=self.body.index(self.options_group) + 2)
        self.refine.changed.connect(self._toggle_sam)
        self.box_source.changed.connect(self._toggle_sam)
        from napari_segsuite.widgets.instance_training import add_training_sections

        add_training_sections(self)  # train YOLO-seg / Mask R-CNN, fine-tune SAM (collapsible)
        self._sam = None
        self._sam_key = None
        self.box_source.value = None
        self.export_dataset_button = add_export_button(self)
        self.import_dataset_button = add_import_button(self)
        self.show_library_defaults({"conf": self.conf, "iou": self.iou, "max_det": self.max_det})
        self.finish_layout()

    # -- options ------------------------------------------------------------------
    def _shapes_choices(self, _widget=None):
        from napari.layers import Shapes

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Shapes)]

    def _toggle_sam(self, _value=None) -> None:
        self.sam_model.visible = bool(self.refine.value) or self.box_source.value is not None

    @property
    def uses_sam(self) -> bool:
        """Whether masks come from SAM (refinement, or boxes from a Shapes layer)."""
        return bool(self.refine.value) or self.box_source.value is not None

    def params(self):
        """The instance parameters of the form (classes stay text until the model is known)."""
        from napari_segsuite.tasks.instance import InstanceParams

        return InstanceParams(
            conf=float(self.conf.value), iou=float(self.iou.value),
            mask_threshold=float(self.mask_threshold.value), classes=None,
            max_det=int(self.max_det.value), imgsz=int(self.imgsz.value) or None,
            text_threshold=float(self.text_threshold.value),
        )

    # -- all planes / all open images (the batch engine) -----------------------------------
    @property
    def widget_only_options(self) -> list[str]:
        """Options the batch engine does not have (they need the widget's own job)."""
        out = []
        if self.refine.value:
            out.append("Refine masks with SAM")
        if self.box_source.value is not None:
            out.append("Boxes from Shapes")
        if self.boxes_output.value:
            out.append("Boxes Shapes layer")
        return out

    def uses_batch(self) -> bool:
        """All planes / all open images go through the batch engine, except all planes of one
        image with SAM refinement, Shapes boxes or a boxes layer (the widget's own job)."""
        if self.scope.value == ALL and self.widget_only_options:
            return False
        return super().uses_batch()

    def batch_params(self) -> dict:
        """The instance task's parameters from the form (classes resolved by the task)."""
        if self.widget_only_options:
            raise InputError(
                f"{', '.join(self.widget_only_options)}: only for the current plane or all planes of one "
                "image; turn it off to run on all open images."
            )
        params = self.params()
        params.check()
        return {
            "conf": params.conf, "iou": params.iou, "mask_threshold": params.mask_threshold,
            "classes": str(self.classes.value).strip() or None, "max_det": params.max_det,
            "imgsz": params.imgsz, "tile_size": int(self.tile_size.value) or None,
            "overlap": int(self.overlap.value), "text_threshold": params.text_threshold,
        }

    # -- models (worker) --------------------------------------------------------------
    def _load_detector_job(self, allow_boxes: bool):
        from napari_segsuite.core.threads import call_in_background
        from napari_segsuite.models.base import load_model
        from napari_segsuite.tasks.instance import check_instance_model

        key = self.job_model_key()
        if self._runner is None or self._runner_key != key:
            yield Progress(0, None, f"Loading {Path(key[0]).name}")
            self._runner, self._runner_key = None, None
            store = self.store
            # loading has no yield points: on its own thread, so that Cancel and closing return at once
            runner = yield from call_in_background(lambda: load_model(key[0], key[1], store=store),
                                                   f"Loading {Path(key[0]).name}")
            self._runner, self._runner_key = runner, key
        check_instance_model(self._runner, allow_boxes=allow_boxes)
        return self._runner

    def _load_sam_job(self, path: str, device: str):
        from napari_segsuite.tasks.sam_session import SamSession

        key = (path, device)
        if self._sam is None or self._sam_key != key:
            yield Progress(0, None, f"Loading SAM {Path(path).name}")
            self._sam = SamSession(path, device=device, store=self.store)
            self._sam_key = key
        return self._sam

    def _sam_path(self) -> str:
        path = str(self.sam_model.value)
        if path in ("", ".") or not Path(path).exists():
            raise InputError(
                "Choose a prompt model (SAM model: a SAM checkpoint file, or a SAM 2.1 / SAM 3 / EdgeTAM "
                "folder) to make masks from boxes."
            )
        return path

    # -- running ----------------------------------------------------------------------
    def make_job(self):
        """Read image planes, boxes and options on the GUI thread; return (job, on_result)."""
        from napari_segsuite.layers import current_plane, shapes_on_plane
        from napari_segsuite.tasks.instance import detections_from_boxes, segment_plane_job

        image_layer = self.selected_image()
        _plane, sel = current_plane(self.viewer, image_layer)
        sels = all_planes(image_layer, sel) if self.planes.value == ALL else [sel]
        data = full_resolution(image_layer)
        params = self.params()
        params.check()
        classes_text = str(self.classes.value).strip()
        shapes_layer = self.box_source.value
        boxes = None
        if shapes_layer is not None:
            boxes = []
            for s in sels:
                prompts = shapes_on_plane(self.viewer, shapes_layer, image_layer, s)
                boxes.append(detections_from_boxes([p.box for p in prompts], shape=s.shape))
            if not any(boxes):
                raise InputError(f"Shapes layer '{shapes_layer.name}' has no shape on the selected plane(s).")
        else:
            self.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        sam_path = self._sam_path() if self.uses_sam else None
        device = self.device.value
        tile_size = int(self.tile_size.value) or None
        overlap = int(self.overlap.value)

        def job():
            from napari_segsuite.tasks.instance import concept_params

            runner, names = None, {0: "object"}
            if boxes is None:
                runner = yield from self._load_detector_job(allow_boxes=sam_path is not None)
                # concepts in words for SAM 3 / open-vocabulary detectors, else the model's classes
                names = concept_params(runner, params, classes_text or None)
            session = (yield from self._load_sam_job(sam_path, device)) if sam_path else None
            results, start = [], 1
            for k, s in enumerate(sels):
                yield Progress(k, len(sels), f"Plane {k + 1}/{len(sels)}" if len(sels) > 1 else "Segmenting")
                plane = np.asarray(data[s.index])
                res = yield from segment_plane_job(
                    plane, runner, params, sam=session, boxes=None if boxes is None else boxes[k],
                    class_names=names, tile_size=tile_size, overlap=overlap, start=start,
                    progress=(k, len(sels)),
                )
                results.append(res)
                start += len(res.table)
            yield Progress(len(sels), len(sels), "Writing layers")
            provenance = {
                "model": runner.provenance() if runner is not None else {"boxes_from": shapes_layer.name},
                "sam": session.runner.provenance() if session is not None else None,
                "params": {**params.as_kwargs(), "tile_size": tile_size, "overlap": overlap},
            }
            return results, provenance

        def on_result(value) -> None:
            results, provenance = value
            self.write_results(image_layer, sels, results, provenance)

        return job, on_result

    # -- writing (GUI thread) -------------------------------------------------------------
    def _id_offset(self, layer, sels) -> int:
        """Largest id in the planes of ``layer`` that this run does not write (nD layers)."""
        if layer is None or len(sels[0].layer_shape) <= 2:
            return 0
        written = {s.labels_index for s in sels}
        top = 0
        for s in all_planes_of_labels(layer, sels[0]):
            if s not in written:
                top = max(top, int(np.asarray(layer.data[s]).max(initial=0)))
        return top

    def write_results(self, image_layer, sels, results, provenance) -> None:
        """Write each plane's labels and features, and the boxes layer when asked."""
        from napari.layers import Labels
        from napari.utils.notifications import show_info

        from napari_segsuite.layers import output_layer_name, write_plane

        name = output_layer_name(image_layer, self.task)
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if existing is not None and not isinstance(existing, Labels):
            raise InputError(f"A layer named '{name}' exists and is not a Labels layer; rename it.")
        n = sum(len(r.table) for r in results)
        if n == 0:
            msg = results[0].message if results else "No instances found."
            show_info(msg)
            self.message.value = msg
            if existing is None:
                return  # nothing found, nothing to show: no empty layer
        offset = self._id_offset(existing, sels)
        layer = existing
        for s, res in zip(sels, results, strict=True):
            res = res.with_offset(offset)
            layer = write_plane(
                self.viewer, image_layer, s, res.labels, task=self.task, provenance=provenance,
                extra_features=res.features(),
            )
        if self.boxes_output.value:
            self.write_boxes(image_layer, sels, [r.with_offset(offset) for r in results])
        if n:
            self.message.value = (
                f"{n} instance{'s' if n != 1 else ''} in {len(sels)} plane{'s' if len(sels) != 1 else ''} "
                f"written to '{layer.name}'."
            )

    def write_boxes(self, image_layer, sels, results):
        """A Shapes layer of the detector boxes, each with its class and score as text."""
        import pandas as pd
        from napari.layers import Shapes

        from napari_segsuite.layers import aligned_layer_kwargs

        name = f"{image_layer.name} [{BOXES_SUFFIX}]"
        keys = {s.key for s in sels}
        data, rows = [], []
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(existing, Shapes) and "plane" in existing.features:
            for verts, (_, row) in zip(existing.data, existing.features.iterrows(), strict=True):
                if row["plane"] not in keys:
                    data.append(np.asarray(verts))
                    rows.append(row.to_dict())
        for s, res in zip(sels, results, strict=True):
            for row in res.table.to_dict("records"):
                r0, c0, r1, c1 = row["bbox_row0"], row["bbox_col0"], row["bbox_row1"], row["bbox_col1"]
                corners = [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]
                verts = np.zeros((4, len(s.layer_shape)))
                for axis, i in enumerate(s.labels_index):
                    if not isinstance(i, slice):
                        verts[:, axis] = i
                verts[:, s.axes[0]] = [p[0] for p in corners]
                verts[:, s.axes[1]] = [p[1] for p in corners]
                data.append(verts)
                rows.append({**row, "plane": s.key})
        features = pd.DataFrame(rows, columns=[*(rows[0] if rows else {"plane": 0}).keys()])
        text = {"string": "{class_name} {score:.2f}", "size": 9, "color": "yellow", "anchor": "upper_left"}
        if isinstance(existing, Shapes):
            self.viewer.layers.remove(existing)
        layer = Shapes(
            data, shape_type="rectangle", name=name, features=features, text=text, edge_color="yellow",
            face_color="transparent", edge_width=1,
            **aligned_layer_kwargs(image_layer, sels[0].channel_axis),
        )
        self.viewer.add_layer(layer)
        return layer

    # -- headless check ------------------------------------------------------------------
    def smoke(self) -> None:
        """Run a tiny YOLO-seg end to end on the current image; raise if no Labels layer appears."""
        import shutil
        import tempfile

        from napari_segsuite.demo.tiny_models import build_tiny_yolo
        from napari_segsuite.layers import output_layer_name

        image = self.selected_image()
        folder = Path(tempfile.mkdtemp(prefix="segsuite-smoke-"))
        try:
            path = build_tiny_yolo(folder / "smoke-seg.pt", "segment", nc=3)
            self.models.model.value = LOCAL
            self.models.local.value = str(path)
            self.device.value = "cpu"
            self.conf.value = 0.0
            self.max_det.value = 20
            self.run()
            self.jobs.wait(180, "the instance smoke run")
            if self.jobs.last_error is not None:
                raise RuntimeError(f"the instance smoke run failed: {self.jobs.last_error}")
            name = output_layer_name(image, self.task)
            if name not in self.viewer.layers or not len(self.viewer.layers[name].features):
                raise RuntimeError(f"the instance smoke run wrote no '{name}' layer: {self.message.value}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def all_planes_of_labels(layer, sel) -> list[tuple]:
    """``labels_index`` of every plane of a Labels ``layer`` shaped like ``sel.layer_shape``."""
    fixed = [a for a, i in enumerate(sel.labels_index) if not isinstance(i, slice)]
    out = []
    for combo in itertools.product(*(range(layer.data.shape[a]) for a in fixed)):
        index = list(sel.labels_index)
        for a, i in zip(fixed, combo, strict=True):
            index[a] = i
        out.append(tuple(index))
    return out
