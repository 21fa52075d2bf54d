"""The SAM dock's "Segment everything" section.

Fills ``<image> [sam auto]`` with class-agnostic masks of the current plane
(:func:`napari_segsuite.tasks.sam_automatic.automatic_job`), with
``SamAutomaticMaskGenerator``'s parameters under their own names.

On an image whose labels live on disk (zarr, dask, multiscale, or planes above the dock's
size; :func:`~napari_segsuite.layers.labels_on_disk`) it runs on the dock's *Region* (the
whole plane, the field of view or the drawn rectangle) chunk by chunk
(:func:`~napari_segsuite.batch.regions.segment_region_job` with the ``sam-auto`` batch task:
chunks of :data:`~napari_segsuite.batch.regions.REGION_CHUNK` pixels read alone, each
segmented in tiles of the model's input size at full resolution, objects merged across
chunk borders), writing into the on-disk ``<image> [sam auto]`` as the chunks come, with
progress and Cancel (the chunks written stay).
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
        from napari_segsuite.layers import labels_on_disk, plane_selection
        from napari_segsuite.tasks.sam_automatic import automatic_job

        dock = self.dock
        if dock.refuse_when_busy():
            return
        try:
            image = dock.selected_image()
            if labels_on_disk(image, int(dock.on_disk_mpx.value) * 1_000_000):
                self.segment_region(image, plane_selection(self.viewer, image))
                return
        except SegSuiteError as exc:
            dock.report(exc)
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

    def segment_region(self, image, sel) -> None:
        """Segment everything on the dock's region of a large plane, chunk by chunk, into on-disk labels."""
        from pathlib import Path

        import numpy as np

        from napari_segsuite.batch.regions import REGION_CHUNK, segment_region_job
        from napari_segsuite.core.label_store import UNDO_PIXELS
        from napari_segsuite.core.regions import LazyView, Region
        from napari_segsuite.layers import (
            field_of_view,
            full_resolution,
            ondisk_labels_layer,
            output_layer_name,
            record_on_disk_write,
            rectangle_region,
        )
        from napari_segsuite.widgets.base import FIELD_OF_VIEW, RECTANGLE

        dock = self.dock
        dock.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        params = self.automatic_params()
        kw = {k: v for k, v in params.__dict__.items() if k != "point_grids"}
        choice = dock.region.value
        if choice == FIELD_OF_VIEW:
            region = field_of_view(self.viewer, image, sel)
        elif choice == RECTANGLE:
            region = rectangle_region(self.viewer, image, sel)
        else:
            region = Region.whole(sel.shape)
        target, store, note = ondisk_labels_layer(self.viewer, image, sel, output_layer_name(image, "sam auto"),
                                                  folder=Path(dock.store.cache_dir) / "labels")
        lead = tuple(sel.labels_index[:-2])
        before = store.read(lead, region) if region.size <= UNDO_PIXELS else None
        if before is not None:
            old = np.bincount(before.ravel().astype(np.int64))
        else:
            old = store.region_counts(lead, region) if sel.key in store.attrs.get("planes", {}) else None
        view = LazyView(full_resolution(image), sel.index, region)
        dock.jobs.abort_message = f"Cancelled; the chunks written so far stay in '{target.name}'."

        def job():
            session = yield from dock.load_session_job()
            if not kw["tile_size"]:  # tiles of the model's input (full resolution), a quarter of it overlapping
                kw["tile_size"] = session.prompt_model.input_size
                kw["tile_overlap"] = min(int(kw["tile_overlap"]), kw["tile_size"] // 4)
            offset = int(store.attrs.get("max_label", 0))
            table = yield from segment_region_job("sam-auto", session.runner, view, store.writer(lead, region),
                                                  params=kw, chunk=REGION_CHUNK, id_offset=offset)
            return session, table

        def on_result(value) -> None:
            session, table = value
            record_on_disk_write(target, store, sel, region, table, old, task="sam auto", before=before,
                                 provenance={"model": session.runner.provenance(), "params": dict(kw),
                                             "region_choice": choice, "source_image": image.name})
            self.last_auto_layer = target
            dock.message.value = (f"Segment everything: {len(table)} object(s) in rows {region.r0:,}-{region.r1:,}, "
                                  f"columns {region.c0:,}-{region.c1:,} of '{target.name}' ({store.path})."
                                  + (f" {note}" if note else ""))

        dock.start_job(job, on_result, "Segment everything")
