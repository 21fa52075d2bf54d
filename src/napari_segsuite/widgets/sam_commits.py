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

Committed labels are autosaved (``.npy`` next to the image file, or in the chosen
folder) and come back with *Restore autosave*.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FileEdit, Label, PushButton, Select

from napari_segsuite.core.errors import SegSuiteError
from napari_segsuite.core.labels import next_free_id
from napari_segsuite.layers import (
    current_plane,
    find_or_create_labels,
    output_layer_name,
    write_plane,
)
from napari_segsuite.widgets.sam_sections import SamSection
from napari_segsuite.widgets.scaffold import Group, row


@dataclass
class Step:
    """One write of the dock that changed labels (what Undo would undo)."""

    layer: object
    text: str


@dataclass
class Committed:
    """A committed object: its id and the plane it was committed on."""

    label: int
    plane_index: tuple
    plane_key: str
    area: int

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
            row(self.commit_button, self.clear_button), row(self.undo_button, self.redo_button, self.next_id),
            self.objects, row(self.delete_button, self.reprompt_button), self.target_group,
        ])
        self.last_autosave: Path | None = None
        self._autosave_thread: threading.Thread | None = None
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

        own = {output_layer_name(layer, "sam preview") for layer in self.viewer.layers}
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer.name not in own]

    def target_name(self, image) -> str:
        """The default target layer of ``image``."""
        return output_layer_name(image, "sam")

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
        try:
            image = dock.selected_image()
            _, sel = current_plane(self.viewer, image)
            preview.check_commit(dock.preview_source(image, sel))
            target = self.find_target(image, sel, create=True)
            old = np.asarray(target.data[sel.labels_index])
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
            self.viewer, image, sel, plan.labels, task="prompt", target=target,
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
        dock.message.value = f"Committed label(s) {ids} to '{target.name}'. Next id: {next_free_id(target.data)}."
        self.autosave(target, image)

    def clear(self) -> None:
        """Remove all prompts and the preview."""
        self.dock.prompts.clear()

    # -- undo / redo -----------------------------------------------------------------------
    def record_step(self, layer, text: str) -> None:
        """Remember a write that changed labels (it becomes what Undo undoes)."""
        self.undo_steps.append(Step(layer, text))
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
        (layer.redo if redo else layer.undo)()
        dest.append(step)
        self._update_history_buttons()
        self.refresh(layer)
        self.dock.message.value = f"{'Redid' if redo else 'Undid'} the {step.text} in '{layer.name}'."
        try:
            self.autosave(layer, self.dock.selected_image())
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
        kept = []
        for c in self.committed:
            if tuple(target.data.shape[:len(c.plane_index)]) and len(c.plane_index) == target.data.ndim:
                c.area = int(np.count_nonzero(np.asarray(target.data[c.plane_index]) == c.label))
            kept.append(c)
        self.committed = kept
        self._target_for_list = target
        self.next_id.value = f"Next id: {next_free_id(target.data)}"
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
        plane = np.asarray(target.data[c.plane_index])
        where = np.nonzero(plane == c.label)
        if where[0].size:
            target.data_setitem(_expand_index(c.plane_index, where), np.zeros(where[0].size, plane.dtype))
            _update_features(target, c.plane_index, None)
            self.record_step(target, f"delete of label {c.label}")
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

    # -- autosave ------------------------------------------------------------------------------
    def autosave_path(self, target, image) -> Path:
        """Where the target layer is autosaved: next to the image file, or in the chosen folder."""
        chosen = str(self.autosave_dir.value)
        if chosen not in ("", "."):
            folder = Path(chosen)
        elif getattr(image.source, "path", None):
            folder = Path(image.source.path).parent
        else:
            folder = self.dock.store.cache_dir / "autosave"
        safe = re.sub(r"[^\w.-]+", "_", target.name).strip("_")
        return folder / f"{safe}.segsuite-autosave.npy"

    def autosave(self, target, image) -> None:
        """Save the target layer's data in a background thread (atomic rename)."""
        path = self.autosave_path(target, image)
        data = np.array(target.data, copy=True)

        def save() -> None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".part")
                with open(tmp, "wb") as f:
                    np.save(f, data)
                os.replace(tmp, path)
            except OSError as exc:  # reported, never fatal: the labels are still in the layer
                import logging

                logging.getLogger(__name__).warning("Autosave to %s failed: %s", path, exc)

        if self._autosave_thread is not None:
            self._autosave_thread.join()
        self._autosave_thread = threading.Thread(target=save, daemon=True)
        self._autosave_thread.start()
        self.last_autosave = path

    def restore_autosave(self) -> None:
        """Load the autosaved labels into the target layer (one undo step)."""
        from napari.utils.notifications import show_error, show_info

        try:
            image = self.dock.selected_image()
            _, sel = current_plane(self.viewer, image)
            target = self.find_target(image, sel, create=True)
        except SegSuiteError as exc:
            show_error(str(exc))
            return
        path = self.autosave_path(target, image)
        if not path.is_file():
            show_info(f"No autosave at {path}.")
            return
        saved = np.load(path)
        if saved.shape != target.data.shape:
            show_error(f"The autosave at {path} has shape {saved.shape}, the layer {target.data.shape}; not restored.")
            return
        changed = np.nonzero(np.asarray(target.data) != saved)
        if changed[0].size:
            target.data_setitem(changed, saved[changed])
            self.record_step(target, "restore of the autosave")
        self.refresh(target)
        self.dock.message.value = f"Restored {changed[0].size} pixels from {path}."

    def shutdown(self) -> None:
        """Wait for a running autosave."""
        if self._autosave_thread is not None:
            self._autosave_thread.join(timeout=10)

