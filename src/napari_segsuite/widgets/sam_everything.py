"""The SAM dock's "Segment everything" section.

Fills ``<image> [sam auto]`` with class-agnostic masks of the current plane
(:func:`napari_segsuite.tasks.sam_automatic.automatic_job`), with
``SamAutomaticMaskGenerator``'s parameters under their own names.
"""

from __future__ import annotations

from magicgui.widgets import FloatSpinBox, PushButton, SpinBox

from napari_segsuite.core.errors import SegSuiteError
from napari_segsuite.core.vocabulary import LayerTask
from napari_segsuite.layers import write_plane
from napari_segsuite.widgets.sam_sections import SamSection
from napari_segsuite.widgets.scaffold import form


class EverythingSection(SamSection):
    """Class-agnostic masks of the whole plane."""

    title = "Segment everything"
    collapsed = True

    def __init__(self, dock):
        super().__init__(dock)
        self.last_auto_layer = None
        self.auto_button = PushButton(text="Segment everything")
        # SamAutomaticMaskGenerator's parameters, same names and defaults
        self.auto_params = {
            "points_per_side": SpinBox(label="points_per_side", value=32, min=1, max=256),
            "points_per_batch": SpinBox(label="points_per_batch", value=64, min=1, max=4096),
            "pred_iou_thresh": FloatSpinBox(label="pred_iou_thresh", value=0.88, min=-1.0, max=1.0, step=0.01),
            "stability_score_thresh": FloatSpinBox(label="stability_score_thresh", value=0.95, min=0.0, max=1.0,
                                                   step=0.01),
            "stability_score_offset": FloatSpinBox(label="stability_score_offset", value=1.0, min=0.0, max=100.0,
                                                   step=0.1),
            "box_nms_thresh": FloatSpinBox(label="box_nms_thresh", value=0.7, min=0.0, max=1.0, step=0.05),
            "crop_n_layers": SpinBox(label="crop_n_layers", value=0, min=0, max=4),
            "min_mask_region_area": SpinBox(label="min_mask_region_area", value=0, min=0, max=10**7),
            "tile_size": SpinBox(label="tile_size", value=0, min=0, max=10**5,
                                 tooltip="0: off. Else tiles of this many pixels at full resolution (large images)"),
            "tile_overlap": SpinBox(label="tile_overlap", value=256, min=0, max=10**5),
        }
        self.extend([self.auto_button, form(*self.auto_params.values())])
        self.auto_button.changed.connect(self.segment_everything)

    def automatic_params(self):
        """The 'segment everything' parameters as :class:`AutoParams`."""
        from napari_segsuite.tasks.sam_automatic import AutoParams

        values = {k: w.value for k, w in self.auto_params.items()}
        values["tile_size"] = int(values["tile_size"]) or None
        return AutoParams(**values)

    def segment_everything(self) -> None:
        """Class-agnostic masks for the current plane into ``<image> [sam auto]`` (in a worker)."""
        from napari_segsuite.tasks.sam_automatic import automatic_job

        dock = self.dock
        if dock.refuse_when_busy():
            return
        try:
            image, plane, sel = dock.job_plane()
            params = self.automatic_params()
        except SegSuiteError as exc:
            dock.report(exc)
            return

        def job():
            session = yield from dock.session_job(plane)
            result = yield from automatic_job(session, plane, params)
            return session, result

        def on_result(value) -> None:
            session, result = value
            skip = {"label", "area"} | {c for c in result.table.columns if c.startswith("bbox_")}
            extra = {int(row["label"]): {k: row[k] for k in result.table.columns if k not in skip}
                     for _, row in result.table.iterrows()}
            layer = write_plane(
                self.viewer, image, sel, result.labels, task=LayerTask.SAM_AUTO,
                provenance={"model": session.runner.provenance(), "params": {
                    k: v for k, v in params.__dict__.items() if k != "point_grids"}},
                extra_features=extra,
            )
            self.last_auto_layer = layer
            dock.message.value = f"Segment everything: {len(result.table)} object(s) in '{layer.name}'."

        dock.start_job(job, on_result, "Segment everything")
