"""The SAM dock's "Commits" section: commit, clear, undo/redo, committed objects, autosave.

**Shift-C** (or *Commit*) writes the previewed object(s) into the target Labels layer
(``<image> [sam]`` unless another is picked) under the next free id; existing labels are
kept unless *Overwrite* is ticked; one undo step. A preview computed for another image,
plane or model than the current ones is refused
(:meth:`~napari_segsuite.tasks.sam_preview.PreviewController.check_commit`). After a
commit the prompts are cleared, new points are positive again and the points layer is
active in add mode, so the next click starts the next object. **Shift-X** clears prompts
and preview.

*Undo* and *Redo* step through the writes of this dock that changed labels (commits,
deletes, propagations); their tooltips say what they would undo or redo. The list of
committed objects shows id, area and plane; picking one highlights it (and moves to its
plane), *Delete* removes it (one undo step), *Re-prompt* makes it the refined label so the
next prompts replace it.

Committed labels go to an append-only autosave journal (next to the image file, or in
the chosen folder; :mod:`napari_segsuite.widgets.sam_autosave`): every commit, undo, redo,
delete and restore appends the pixels it changed. A deleted target layer is rebuilt from
the journal before the next commit (ids continue); *Restore autosave* replays it, only for
the very pixels it was written for. A failing autosave is shown in the dock; the commit stands.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton, Select

from napari_segsuite.core.errors import SegSuiteError
from napari_segsuite.core.labels import next_free_id
from napari_segsuite.core.vocabulary import Family, LayerTask
from napari_segsuite.layers import (
    current_plane,
    find_or_create_labels,
    output_layer_name,
    plane_selection,
    write_plane,
)
from napari_segsuite.widgets.sam_sections import SamSection
from napari_segsuite.widgets.scaffold import Group, row


@dataclass
class Step:
    """One write of the dock that changed labels (what Undo would undo).

    ``region`` (a write into a region of a large plane) is the Labels index of that region:
    Undo then reads and journals that region only.
    """

    layer: object
    text: str
    region: tuple | None = None


@dataclass
class Committed:
    """A committed object: its id and the plane it was committed on."""

    label: int
    plane_index: tuple
    plane_key: str
    area: int
    #: the Labels index of the region it was committed in (large planes: its area is re-read there)
    region: tuple | None = None

    @property
    def key(self) -> str:
        """``"<label>@<plane>"``: the value of its row in the list."""
        return f"{self.label}@{self.plane_key}"


class CommitSection(SamSection):
    """Commit the preview, undo/redo, the committed objects, autosave."""

    title = "Commits"

    def __init__(self, dock):
        super().__init__(dock)
        self.commit_button = PushButton(text="Commit (Shift-C)")
        self.clear_button = PushButton(text="Clear (Shift-X)")
        self.undo_button = PushButton(text="Undo", enabled=False)
        self.redo_button = PushButton(text="Redo", enabled=False)
        self.next_id = Label(value="Next id: 1")
        self.objects = Select(choices=self._object_choices, allow_multiple=False,
                              tooltip="Committed objects: pick one to highlight it")
        self.objects.native.setMaximumHeight(80)
        self.delete_button = PushButton(text="Delete")
        self.reprompt_button = PushButton(text="Re-prompt")
        self.target = ComboBox(label="Target labels", choices=self._labels_choices, nullable=True)
        self.overwrite = CheckBox(text="Overwrite existing labels", value=False)
        self.autosave_dir = FileEdit(label="Autosave folder", mode="d", value="")
        self.restore_button = PushButton(text="Restore autosave")
        self.target_group = Group("Target and autosave", [
            self.target, self.overwrite, self.autosave_dir, self.restore_button], collapsed=True)
        self.extend([
            row(self.commit_button, self.clear_button, self.undo_button, self.redo_button),
            self.objects, row(self.delete_button, self.reprompt_button, self.next_id), self.target_group,
        ])
        from napari_segsuite.widgets.sam_autosave import SamAutosave

        #: the append-only autosave journal of committed labels
        self.autosaver = SamAutosave()
        self.committed: list[Committed] = []
        self.undo_steps: list[Step] = []
        self.redo_steps: list[Step] = []
        self.commit_button.changed.connect(self.commit)
        self.clear_button.changed.connect(self.clear)
        self.undo_button.changed.connect(lambda: self.undo(redo=False))
        self.redo_button.changed.connect(lambda: self.undo(redo=True))
        self.restore_button.changed.connect(self.restore_autosave)
        self.objects.changed.connect(self._on_pick)
        self.delete_button.changed.connect(self.delete_selected)
        self.reprompt_button.changed.connect(self.reprompt_selected)

    def key_bindings(self):
        """Shift-C commits, Shift-X clears."""
        return {"Shift-C": lambda v: self.commit(), "Shift-X": lambda v: self.clear()}

    # -- the target ------------------------------------------------------------------------
    def _labels_choices(self, _widget=None):
        from napari.layers import Labels

        own = {output_layer_name(layer, LayerTask.SAM_PREVIEW) for layer in self.viewer.layers}
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name not in own]

    def target_name(self, image) -> str:
        """The default target layer of ``image``."""
        return output_layer_name(image, Family.SAM)

    def find_target(self, image, sel, *, create: bool):
        """The target Labels layer (the picked one, else ``<image> [sam]``; created when asked)."""
        if self.target.value is not None and self.target.value in self.viewer.layers:
            return find_or_create_labels(self.viewer, image, sel, self.target.value.name, target=self.target.value)
        name = self.target_name(image)
        if not create and name not in self.viewer.layers:
            return None
        return find_or_create_labels(self.viewer, image, sel, name)

    # -- commit ----------------------------------------------------------------------------
    def commit(self) -> None:
        """Write the previewed object(s) into the target Labels layer under new ids."""
        from napari.utils.notifications import show_info

        dock = self.dock
        preview = dock.preview
        if not preview.objects:
            show_info("Nothing to commit: add prompts and wait for the preview.")
            dock.message.value = "Nothing to commit: add prompts and wait for the preview."
            return
        if preview.windowed:
            self.commit_windowed()
            return
        try:
            image = dock.selected_image()
            _, sel = current_plane(self.viewer, image)
            preview.check_commit(dock.preview_source(image, sel))
            restored = self._recover_deleted_target(image, sel)
            target = self.find_target(image, sel, create=True)
            old = np.array(target.data[sel.labels_index], copy=True)  # a copy: the journal needs the pixels before
            plan = preview.plan_commit(
                old, next_free_id(target.data), overwrite=bool(self.overwrite.value),
                refine=int(dock.prompts.refine_id.value), model=dock.session.runner.name,
            )
        except SegSuiteError as exc:
            dock.report(exc)
            return
        if not plan.written:
            show_info("The object has no free pixels left (tick 'overwrite' to replace labels).")
            dock.message.value = "The object has no free pixels left (tick 'overwrite' to replace labels)."
            return
        write_plane(
            self.viewer, image, sel, plan.labels, task=LayerTask.PROMPT, target=target, guard_edits=False,
            provenance={"model": dock.session.runner.provenance(), "last_ids": plan.written},
            extra_features=plan.features,
        )
        ids = ", ".join(map(str, plan.written))
        self.record_step(target, f"commit of label{'s' if len(plan.written) > 1 else ''} {ids}")
        for label in plan.written:
            self.committed = [c for c in self.committed if c.label != label or c.plane_key != sel.key]
            self.committed.append(Committed(label, sel.labels_index, sel.key, int((plan.labels == label).sum())))
        dock.prompts.refine_id.value = 0
        self.clear()
        dock.prompts.reset_polarity()
        dock.prompts.focus_points()
        self.refresh(target)
        dock.message.value = (f"{restored + ' ' if restored else ''}Committed label(s) {ids} to '{target.name}'. "
                              f"Next id: {next_free_id(target.data)}.")
        self._journal_change(image, target, sel.labels_index, old, plan.labels, "commit")

    def commit_windowed(self) -> None:
        """Commit objects decoded in windows of a large plane: only their region is read and written.

        The region is the rectangle of the objects' windows (at most
        :data:`~napari_segsuite.tasks.sam_windows.MAX_COMMIT_PIXELS`). The write is one undo
        step of that region; features, the next id and the autosave journal are updated from
        the region alone (nothing reads the whole plane).
        """
        from napari_segsuite.layers import next_label, region_index, write_labels_region
        from napari_segsuite.tasks.sam_windows import MAX_COMMIT_PIXELS

        dock = self.dock
        preview = dock.preview
        try:
            image = dock.selected_image()
            sel = plane_selection(self.viewer, image)
            preview.check_commit(dock.preview_source(image, sel))
            region = preview.region(MAX_COMMIT_PIXELS)
            target, store = self.windowed_target(image, sel)  # labels on disk persist: nothing to recover
            refine = int(dock.prompts.refine_id.value) if preview.single else 0
            if refine:  # the refined label is replaced wherever it was: its earlier extent joins the region
                region = self.refine_region(target, sel, refine, region, MAX_COMMIT_PIXELS)
            restored = self._recover_deleted_target(image, sel) if store is None else ""
            idx = region_index(sel, region)
            shape2d = (region.r1 - region.r0, region.c1 - region.c0)
            if store is not None:
                from napari_segsuite.core.regions import Region

                lead = tuple(sel.labels_index[:-2])
                on_disk = Region(region.r0, region.r1, region.c0, region.c1)
                old = store.read(lead, on_disk)
                first = max(next_label(target), int(store.attrs.get("max_label", 0)) + 1)
            else:
                old = np.array(np.asarray(target.data[idx]).reshape(shape2d), copy=True)
                first = next_label(target)
            plan = preview.plan_commit(old, first, overwrite=bool(self.overwrite.value), refine=refine,
                                       model=dock.session.runner.name, region=region)
            if not plan.written:
                dock.message.value = "The object has no free pixels left (tick 'overwrite' to replace labels)."
                return
            if store is not None:
                self._write_on_disk(target, store, sel, on_disk, old, plan)
            else:
                write_labels_region(target, sel, region, plan.labels, extra_features=plan.features)
        except SegSuiteError as exc:
            dock.report(exc)
            return
        meta = dict(target.metadata.get("segsuite", {}))
        record = {"task": LayerTask.PROMPT, "model": dock.session.runner.provenance(), "last_ids": plan.written,
                  "region": [region.r0, region.r1, region.c0, region.c1], "plane": sel.key}
        meta.update({"task": LayerTask.PROMPT, "source_image": image.name, "last": record,
                     "max_label": max(int(meta.get("max_label", 0)), *plan.written)})
        target.metadata = {**target.metadata, "segsuite": meta}
        ids = ", ".join(map(str, plan.written))
        self.record_step(target, f"commit of label{'s' if len(plan.written) > 1 else ''} {ids}", region=idx)
        for label in plan.written:
            self.committed = [c for c in self.committed if c.label != label or c.plane_key != sel.key]
            self.committed.append(Committed(label, sel.labels_index, sel.key, int((plan.labels == label).sum()),
                                            region=idx))
        dock.prompts.refine_id.value = 0
        self.clear()
        dock.prompts.reset_polarity()
        dock.prompts.focus_points()
        self.refresh(target)
        dock.message.value = (f"{restored + ' ' if restored else ''}Committed label(s) {ids} to '{target.name}' "
                              f"(rows {region.r0:,}-{region.r1:,}, columns {region.c0:,}-{region.c1:,}). "
                              f"Next id: {next_label(target)}.")
        full_shape = np.asarray(level0(target)[idx]).shape if store is None else region_shape_of(target, idx)
        self._journal_change(image, target, idx, old.reshape(full_shape), plan.labels.reshape(full_shape), "commit")

    #: a refined label's earlier extent is looked up in pyramid levels of at most this many pixels per plane
    EXTENT_LOOKUP_PIXELS = 4096 * 4096

    def refine_region(self, target, sel, label: int, region, limit: int):
        """``region`` grown to hold every pixel of ``label`` on plane ``sel`` of ``target`` (a large plane).

        The label's earlier extent comes from this dock's record of its commits on the plane
        (their regions); for a label committed elsewhere, from the coarsest pyramid level of
        the target that shows it (levels of at most :attr:`EXTENT_LOOKUP_PIXELS` pixels are
        read whole; its box is scaled to full resolution with a margin of one level pixel).
        A label too small to show in any such level is replaced within ``region`` only.
        Raises :class:`InputError` when the grown region is over ``limit`` pixels.
        """
        from napari_segsuite.core.errors import InputError
        from napari_segsuite.core.tiling import Tile

        h, w = (int(sel.layer_shape[a]) for a in sel.axes)
        boxes = []
        for c in self.committed:
            if c.label == label and c.plane_key == sel.key and c.region is not None:
                rs, cs = (c.region[a] for a in sel.axes)
                boxes.append(Tile(slice(rs.start, rs.stop), slice(cs.start, cs.stop)))
        if not boxes:
            boxes = [b for b in [_extent_in_levels(target, sel, label, self.EXTENT_LOOKUP_PIXELS, (h, w))] if b]
        grown = Tile.bounding([region, *boxes])
        if (grown.r1 - grown.r0) * (grown.c1 - grown.c0) > limit:
            raise InputError(
                f"Label {label} spans {grown.r1 - grown.r0:,} x {grown.c1 - grown.c0:,} pixels with the new mask; a "
                "refinement that large is not written at once. Delete the label and prompt it again in parts."
            )
        return grown

    def windowed_target(self, image, sel):
        """The target of a windowed commit and its on-disk store (None for an in-memory layer).

        The picked layer or ``<image> [sam]`` when it exists; else, for an image whose labels
        live on disk (zarr, dask, multiscale or very large planes, see
        :func:`~napari_segsuite.layers.labels_on_disk`), a new on-disk Labels layer with the
        image's pyramid; else an in-memory layer.
        """
        from napari_segsuite.layers import label_store_of, labels_on_disk, ondisk_labels_layer

        chosen = self.target.value
        name = self.target_name(image)
        if (chosen is None or chosen not in self.viewer.layers) and name not in self.viewer.layers \
                and labels_on_disk(image, int(self.dock.on_disk_mpx.value) * 1_000_000):
            target, store, note = ondisk_labels_layer(self.viewer, image, sel, name,
                                                      folder=Path(self.dock.store.cache_dir) / "labels")
            if note:
                self.dock.message.value = note
            return target, store
        target = self.find_target(image, sel, create=True)
        return target, label_store_of(target)

    def _write_on_disk(self, target, store, sel, region, old, plan) -> None:
        """Write a commit's region into an on-disk store (every pyramid level), with its undo step."""
        import pandas as pd

        from napari_segsuite.core.labels import label_table
        from napari_segsuite.layers import record_on_disk_write

        store.write(tuple(sel.labels_index[:-2]), region, plan.labels)
        rows = pd.DataFrame(label_table(plan.labels))[["label", "area"]]
        for col in ("score", "model"):
            rows[col] = [plan.features.get(int(k), {}).get(col) for k in rows["label"]]
        record_on_disk_write(target, store, sel, region, rows, np.bincount(old.ravel().astype(np.int64)),
                             task=LayerTask.PROMPT, provenance={"model": self.dock.session.runner.provenance(),
                                                        "source_image": self.dock.selected_image().name},
                             before=old)

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        self.dock.prompts.clear()

    # -- undo / redo -----------------------------------------------------------------------
    def record_step(self, layer, text: str, region: tuple | None = None) -> None:
        """Remember a write that changed labels (it becomes what Undo undoes); ``region``: see :class:`Step`.

        As many steps are kept as the layer keeps in its own undo history (napari's Labels
        keep the last 100), so the list stays bounded and every step listed can be undone.
        """
        self.undo_steps.append(Step(layer, text, region))
        del self.undo_steps[:-max(1, int(getattr(layer, "_history_limit", 100)))]
        self.redo_steps.clear()
        self._update_history_buttons()

    def undo(self, redo: bool = False) -> None:
        """Undo (or redo) the last write of this dock that changed labels."""
        source, dest = (self.redo_steps, self.undo_steps) if redo else (self.undo_steps, self.redo_steps)
        while source and source[-1].layer not in self.viewer.layers:
            source.pop()  # its layer was deleted
        if not source:
            self.dock.message.value = f"Nothing to {'redo' if redo else 'undo'}."
            self._update_history_buttons()
            return
        step = source.pop()
        layer = step.layer
        where = step.region if step.region is not None else ()
        before = np.array(level0(layer)[where] if where else layer.data, copy=True)
        from napari_segsuite.layers import label_store_of, undo_on_disk

        if label_store_of(layer) is not None:  # labels on disk: the store keeps the last write's region
            undo_on_disk(layer, redo=redo)
        else:
            (layer.redo if redo else layer.undo)()
        dest.append(step)
        self._update_history_buttons()
        self.refresh(layer)
        self.dock.message.value = f"{'Redid' if redo else 'Undid'} the {step.text} in '{layer.name}'."
        try:
            after = np.asarray(level0(layer)[where] if where else layer.data)
            self._journal_change(self.dock.selected_image(), layer, where, before, after,
                                 "redo" if redo else "undo")
        except SegSuiteError:
            pass

    def _update_history_buttons(self) -> None:
        self.undo_button.enabled = bool(self.undo_steps)
        self.redo_button.enabled = bool(self.redo_steps)
        self.undo_button.tooltip = f"Undo the {self.undo_steps[-1].text}" if self.undo_steps else "Nothing to undo"
        self.redo_button.tooltip = f"Redo the {self.redo_steps[-1].text}" if self.redo_steps else "Nothing to redo"

    # -- committed objects -------------------------------------------------------------------
    def refresh(self, target=None) -> None:
        """Re-read the committed objects' areas and the next id from the target layer."""
        if target is None:
            try:
                image = self.dock.selected_image()
                _, sel = current_plane(self.viewer, image)
                target = self.find_target(image, sel, create=False)
            except SegSuiteError:
                target = None
        if target is None or target not in self.viewer.layers:
            self.next_id.value = "Next id: 1"
            self.objects.reset_choices()
            return
        from napari_segsuite.layers import next_label

        data = level0(target)
        by_plane: dict[str, list[Committed]] = {}
        for c in self.committed:
            if len(c.plane_index) != data.ndim:
                continue
            if c.region is not None:  # a windowed commit on a large plane: read its region only
                c.area = int(np.count_nonzero(np.asarray(data[c.region]) == c.label))
            else:
                by_plane.setdefault(c.plane_key, []).append(c)
        for items in by_plane.values():  # one pass over each plane, however many objects it holds
            area = _label_areas(np.asarray(data[items[0].plane_index]))
            for c in items:
                c.area = int(area(c.label))
        self._target_for_list = target
        self.next_id.value = f"Next id: {next_label(target)}"
        self.objects.reset_choices()

    def _object_choices(self, _widget=None):
        return [(f"id {c.label} · {c.area:,} px · plane {c.plane_key}", c.key)
                for c in getattr(self, "committed", []) if c.area > 0]

    def _picked(self) -> Committed | None:
        value = self.objects.value
        if not value:
            return None
        key = value[0] if isinstance(value, list | tuple) else value
        return next((c for c in self.committed if c.key == key), None)

    def _go_to_plane(self, c: Committed) -> None:
        image = self.dock.selected_image()
        for axis, i in enumerate(c.plane_index):
            if not isinstance(i, slice):
                world = image.data_to_world(
                    [i if a == axis else 0 for a in range(image.ndim)])[axis]
                self.viewer.dims.set_point(self.viewer.dims.ndim - image.ndim + axis, world)

    def _on_pick(self, _value=None) -> None:
        c = self._picked()
        target = getattr(self, "_target_for_list", None)
        if c is None or target is None or target not in self.viewer.layers:
            return
        try:
            self._go_to_plane(c)
        except SegSuiteError:
            pass
        target.selected_label = c.label
        target.show_selected_label = True
        self.dock.message.value = f"Label {c.label} ({c.area:,} px, plane {c.plane_key}) highlighted."

    def delete_selected(self) -> None:
        """Remove the picked object from its plane of the target layer (one undo step)."""
        from napari_segsuite.layers import _expand_index, _update_features

        c = self._picked()
        target = getattr(self, "_target_for_list", None)
        if c is None or target is None or target not in self.viewer.layers:
            self.dock.message.value = "Pick a committed object first."
            return
        from napari_segsuite.layers import label_store_of

        store = label_store_of(target)
        if c.region is not None and store is not None:  # labels on disk: the store's region is rewritten
            import pandas as pd

            from napari_segsuite.core.labels import label_table
            from napari_segsuite.core.regions import Region
            from napari_segsuite.layers import record_on_disk_write

            rs, cs = [i for i in c.region if isinstance(i, slice)]
            region = Region(rs.start, rs.stop, cs.start, cs.stop)
            lead = tuple(i for i in c.region if not isinstance(i, slice))
            old = store.read(lead, region)
            new = np.where(old == c.label, 0, old)
            try:
                store.write(lead, region, new)
                sel = plane_selection(self.viewer, self.dock.selected_image())
                record_on_disk_write(target, store, sel, region, pd.DataFrame(label_table(new))[["label", "area"]],
                                     np.bincount(old.ravel().astype(np.int64)), task=LayerTask.PROMPT,
                                     provenance={"deleted": c.label}, before=old)
                self.record_step(target, f"delete of label {c.label}", region=c.region)
                self._journal_change(self.dock.selected_image(), target, c.region, old.reshape(
                    region_shape_of(target, c.region)), new.reshape(region_shape_of(target, c.region)), "delete")
            except SegSuiteError as exc:
                self.dock.report(exc)
                return
            target.show_selected_label = False
            self.refresh(target)
            self.dock.message.value = f"Deleted label {c.label} from plane {c.plane_key}."
            return
        if c.region is not None:  # committed in a region of a large plane: only that region is read
            from napari_segsuite.layers import write_labels_at

            old = np.array(target.data[c.region], copy=True)
            if write_labels_at(target, c.region, np.where(old == c.label, 0, old)):
                self.record_step(target, f"delete of label {c.label}", region=c.region)
                try:
                    self._journal_change(self.dock.selected_image(), target, c.region, old,
                                         np.asarray(target.data[c.region]), "delete")
                except SegSuiteError:
                    pass
            target.show_selected_label = False
            self.refresh(target)
            self.dock.message.value = f"Deleted label {c.label} from plane {c.plane_key}."
            return
        plane = np.array(target.data[c.plane_index], copy=True)
        where = np.nonzero(plane == c.label)
        if where[0].size:
            target.data_setitem(_expand_index(c.plane_index, where), np.zeros(where[0].size, plane.dtype))
            _update_features(target, c.plane_index, None)
            self.record_step(target, f"delete of label {c.label}")
            try:
                self._journal_change(self.dock.selected_image(), target, c.plane_index, plane,
                                     np.asarray(target.data[c.plane_index]), "delete")
            except SegSuiteError:
                pass
        target.show_selected_label = False
        self.refresh(target)
        self.dock.message.value = f"Deleted label {c.label} from plane {c.plane_key}."

    def reprompt_selected(self) -> None:
        """Make the picked object the refined label: the next prompts replace it."""
        c = self._picked()
        if c is None:
            self.dock.message.value = "Pick a committed object first."
            return
        self._go_to_plane(c)
        self.dock.prompts.clear()
        self.dock.prompts.refine_id.value = c.label
        self.dock.prompts.focus_points()
        self.dock.message.value = f"Prompt label {c.label} again; Shift-C replaces it."

    # -- autosave journal ----------------------------------------------------------------------
    def autosave_folder(self, image) -> Path:
        """Where journals are kept: the chosen folder, else next to the image file, else the model folder's autosave/."""
        chosen = str(self.autosave_dir.value)
        if chosen not in ("", "."):
            return Path(chosen)
        if getattr(image.source, "path", None):
            return Path(image.source.path).parent
        return self.dock.store.cache_dir / "autosave"

    def journal_for(self, image, target):
        """The autosave journal of ``target``'s labels for ``image``'s pixels."""
        token = self.dock.plane_token(image, ())
        return self.autosaver.journal(self.autosave_folder(image), image, token[:2], target)

    def _journal_change(self, image, target, index: tuple, old, new, kind: str) -> None:
        """Append the pixels that changed (``old`` -> ``new`` at ``index``); show a failure in the dock."""
        from napari_segsuite.layers import _expand_index

        changed = np.nonzero(np.asarray(old) != np.asarray(new))
        coords = _expand_index(index, changed) if index else changed
        failure = self.journal_write(image, target, coords, np.asarray(new)[changed], kind)
        if failure:
            self.dock.message.value = f"{self.dock.message.value} {failure}"

    def journal_write(self, image, target, coords: tuple, values, kind: str) -> str:
        """Append a write of the dock into ``target`` (one index array per axis, the new values).

        Every write of the dock into its target goes through here (commits, undo/redo,
        deletes, propagation, concept tracking). A failure is shown in a notification and
        returned as a sentence for the dock's status line ("" when saved); the write itself stands.
        """
        from napari.utils.notifications import show_error

        error = self.autosaver.record(self.journal_for(image, target), coords, np.asarray(values), kind)
        if error is None:
            return ""
        show_error(f"Autosave failed: {error}")
        return f"AUTOSAVE FAILED: {error}"

    def target_for_result(self, image, sel, target):
        """The layer a job's result goes to: ``target``, or, when it was deleted while the job ran,
        the default target rebuilt from the journal. Returns ``(layer, note)``."""
        if target is not None and target in self.viewer.layers:
            return target, ""
        note = self._recover_deleted_target(image, sel)
        return self.find_target(image, sel, create=True), note

    def _recover_deleted_target(self, image, sel) -> str:
        """Rebuild the default target layer from the journal when it is gone; returns a note or ''."""
        from napari_segsuite.core.errors import AutosaveError

        chosen = self.target.value
        if chosen is not None and chosen in self.viewer.layers:
            return ""
        if self.target_name(image) in self.viewer.layers:
            return ""
        target = self.find_target(image, sel, create=True)
        journal = self.journal_for(image, target)
        if not journal.exists():
            return ""
        try:
            n = self.autosaver.restore(journal, target)
        except AutosaveError as exc:
            return f"The autosave could not be replayed ({exc})."
        ids = int(np.unique(np.asarray(target.data)).size - 1)
        return f"'{target.name}' was rebuilt from the autosave journal ({ids} object(s), {n} pixels)."

    def restore_autosave(self) -> None:
        """Replay the image's autosave journal into the target layer (one undo step).

        Only a journal written for these very pixels is used; one for another image of
        the same name is reported and left alone.
        """
        from napari.utils.notifications import show_error, show_info

        from napari_segsuite.layers import labels_on_disk

        store = None
        try:
            image = self.dock.selected_image()
            sel = plane_selection(self.viewer, image)
            if labels_on_disk(image, int(self.dock.on_disk_mpx.value) * 1_000_000):
                target, store = self.windowed_target(image, sel)  # large: labels on disk, written region by region
            else:
                target = self.find_target(image, sel, create=True)
        except SegSuiteError as exc:
            show_error(str(exc))
            return
        journal = self.journal_for(image, target)
        if not journal.exists():
            others = journal.others()
            msg = (f"The autosave {others[0]} belongs to another image named '{image.name}' (other pixels); "
                   "not restored." if others else f"No autosave for '{image.name}' in {journal.folder}.")
            self.dock.message.value = msg
            (show_error if others else show_info)(msg)
            return
        try:
            n = self.autosaver.restore(journal, target) if store is None else self._restore_on_disk(journal, target,
                                                                                                     store)
        except SegSuiteError as exc:
            self.dock.message.value = str(exc)
            show_error(str(exc))
            return
        if n and store is None:
            self.record_step(target, "restore of the autosave")
        self.refresh(target)
        self.dock.message.value = f"Restored {n} pixels from {journal.path}."
        if store is not None:
            self.dock.message.value += " (Written region by region into the labels on disk: not one undo step.)"

    @staticmethod
    def _restore_on_disk(journal, target, store) -> int:
        """Replay ``journal`` into an on-disk target region by region (bounded memory); features follow."""
        import pandas as pd

        from napari_segsuite.core.labels import label_table
        from napari_segsuite.core.regions import Region
        from napari_segsuite.layers import _apply_counts

        def read(lead, box):
            return store.read(lead, Region(*box))

        def write(lead, box, block):
            old = store.read(lead, Region(*box))
            store.write(lead, Region(*box), block)
            _apply_counts(target, store, np.bincount(old.ravel().astype(np.int64)),
                          pd.DataFrame(label_table(block))[["label", "area"]])

        n = journal.replay_into(read, write)
        target.refresh()
        return n

    def shutdown(self) -> None:
        """Nothing to wait for: journal entries are written synchronously at each commit."""


def _label_areas(plane: np.ndarray):
    """``area(label)``: the pixel count of each label in ``plane``, from one pass over it."""
    flat = plane.reshape(-1)
    low = int(flat.min(initial=0))
    high = int(flat.max(initial=0))
    if low >= 0 and high <= 4 * flat.size + 1024:
        counts = np.bincount(flat, minlength=high + 1)
        return lambda label: int(counts[label]) if 0 <= label <= high else 0
    ids, n = np.unique(flat, return_counts=True)
    table = dict(zip(ids.tolist(), n.tolist(), strict=True))
    return lambda label: table.get(label, 0)


def _extent_in_levels(target, sel, label: int, max_pixels: int, full: tuple[int, int]):
    """The box (a Tile at full resolution) of ``label`` on plane ``sel``, from the coarsest level
    of ``target`` that shows it among levels of at most ``max_pixels`` per plane; None if none does."""
    from napari_segsuite.core.tiling import Tile

    levels = list(target.data) if getattr(target, "multiscale", False) else [target.data]
    h, w = full
    for data in reversed(levels):
        lh, lw = int(data.shape[sel.axes[0]]), int(data.shape[sel.axes[1]])
        if lh * lw > max_pixels:
            continue
        plane = np.asarray(data[sel.labels_index]).reshape(lh, lw) == label
        if not plane.any():
            continue
        fy, fx = h / lh, w / lw
        rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        return Tile(slice(max(0, int((rows[0] - 1) * fy)), min(h, int(np.ceil((rows[-1] + 2) * fy)))),
                    slice(max(0, int((cols[0] - 1) * fx)), min(w, int(np.ceil((cols[-1] + 2) * fx)))))
    return None


def level0(layer):
    """A Labels layer's full-resolution data (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def region_shape_of(target, idx: tuple) -> tuple[int, ...]:
    """The shape of ``target.data[idx]`` (level 0 of a multiscale layer) without reading it."""
    data = target.data[0] if getattr(target, "multiscale", False) else target.data
    out = []
    for i, n in zip(idx, data.shape, strict=False):
        if isinstance(i, slice):
            out.append(len(range(*i.indices(int(n)))))
    return tuple(1 if not isinstance(i, slice) else out.pop(0) for i in idx)
