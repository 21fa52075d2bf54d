"""The SAM dock's "Propagation" section: carry a committed object through planes.

An object of the current plane (its id, or the last committed one) is carried forwards
and/or backwards along the innermost slider (z, or t for 2D+t) by
:func:`napari_segsuite.tasks.propagation.propagate_job`, until it disappears, its overlap
with the previous plane drops below the IoU floor, or *Max planes*. The result is one undo
step of the target layer; a propagation that changed no pixel takes no undo step.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox, PushButton, SpinBox

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.layers import full_resolution
from napari_segsuite.widgets.sam_sections import SamSection
from napari_segsuite.widgets.scaffold import form


class PropagationSection(SamSection):
    """Propagate a committed object through a z-stack or time series."""

    title = "Propagation (z / time)"
    collapsed = True

    def __init__(self, dock):
        super().__init__(dock)
        self.prop_direction = ComboBox(label="Propagate", choices=["both", "forward", "backward"], value="both")
        self.prop_label = SpinBox(label="Object id", value=0, min=0, max=2**31 - 1,
                                  tooltip="The label to carry to the other planes (0: the last committed one)")
        self.prop_max = SpinBox(label="Max planes", value=0, min=0, max=10**6, tooltip="Per direction; 0: no limit")
        self.prop_floor = FloatSpinBox(label="IoU floor", value=0.2, min=0.0, max=1.0, step=0.05,
                                       tooltip="Stop when a plane's mask overlaps the previous one less than this")
        self.prop_button = PushButton(text="Propagate through planes")
        self.extend([self.prop_button, form(self.prop_direction, self.prop_label, self.prop_max, self.prop_floor)])
        self.prop_button.changed.connect(self.propagate)

    @staticmethod
    def propagation_axis(sel) -> int:
        """The labels axis propagation runs along: the innermost slider (z, or t for 2D+t)."""
        sliders = [a for a, i in enumerate(sel.labels_index) if not isinstance(i, slice)]
        if not sliders:
            raise InputError("Propagation needs a 3D (z-stack or time series) image; this one is 2D.")
        return sliders[-1]

    @staticmethod
    def last_committed(target) -> int:
        """The last id committed into ``target`` (0 when none is recorded)."""
        meta = target.metadata.get("segsuite", {})
        ids = meta.get("last", meta).get("last_ids") or []
        return int(ids[-1]) if ids else 0

    def propagate(self) -> None:
        """Carry an object of the current plane to the neighbouring planes (worker; one undo step)."""
        from napari_segsuite.tasks.propagation import propagate_job

        dock = self.dock
        if dock.refuse_when_busy():
            return
        try:
            image, plane, sel = dock.job_plane()
            axis = self.propagation_axis(sel)
            target = dock.find_target(image, sel, create=False)
            if target is None:
                raise InputError("Commit an object first: propagation starts from a committed label.")
            label = int(self.prop_label.value) or self.last_committed(target)
            start_mask = np.asarray(target.data[sel.labels_index]) == label if label else None
            if start_mask is None or not start_mask.any():
                raise InputError(f"Label {label} is not on this plane; pick the object id to propagate.")
        except SegSuiteError as exc:
            dock.report(exc)
            return
        planes = _PlaneStack(full_resolution(image), sel.index, axis)
        start = int(sel.labels_index[axis])
        options = {"direction": self.prop_direction.value, "iou_floor": float(self.prop_floor.value),
                   "max_planes": int(self.prop_max.value) or None}

        def job():
            session = yield from dock.session_job(plane)
            return (yield from propagate_job(session, planes, start, start_mask, **options))

        def on_result(masks) -> None:
            layer, note = dock.commits.target_for_result(image, sel, target)
            written, changed, failure = self._write(layer, sel, axis, label, masks, image)
            if changed:
                dock.commits.record_step(layer, f"propagation of label {label}")
                dock.commits.refresh(layer)
            text = (
                f"Propagated label {label} to {len(written)} plane(s)"
                + (f": {min(written)}…{max(written)}" if written else "")
                + ("." if changed else "; no pixel changed, so there is nothing to undo.")
            )
            dock.message.value = " ".join(t for t in (note, text, failure) if t)

        dock.start_job(job, on_result, "Propagation")

    def write_propagation(self, target, sel, axis: int, label: int, masks: dict, *,
                          image=None) -> tuple[list[int], int]:
        """Write ``{plane: mask}`` under ``label`` into ``target`` as one undo step.

        On each plane the object's earlier pixels are replaced; other objects keep theirs
        unless 'overwrite' is ticked. The pixels that changed are appended to ``image``'s
        autosave journal (the dock's image when None). Returns the planes written and the
        number of pixels that changed (0: no undo step was taken).
        """
        written, n_changed, _failure = self._write(target, sel, axis, label, masks, image)
        return written, n_changed

    def _write(self, target, sel, axis, label, masks, image) -> tuple[list[int], int, str]:
        """:meth:`write_propagation`, and the autosave's failure sentence ("" when saved)."""
        from napari_segsuite.layers import _expand_index, _update_features

        overwrite = bool(self.dock.commits.overwrite.value)
        coords, values, written = [], [], []
        for z, mask in sorted(masks.items()):
            idx = list(sel.labels_index)
            idx[axis] = int(z)
            idx = tuple(idx)
            old = np.asarray(target.data[idx])
            new = old.copy()
            new[new == label] = 0
            put = np.asarray(mask, dtype=bool) & ((new == 0) | overwrite)
            new[put] = label
            changed = np.nonzero(new != old)
            if changed[0].size:
                coords.append(_expand_index(idx, changed))
                values.append(new[changed])
            written.append(int(z))
        n_changed = int(sum(len(v) for v in values))
        failure = ""
        if coords:
            full = tuple(np.concatenate([c[d] for c in coords]) for d in range(target.data.ndim))
            with target.block_history():
                target.data_setitem(full, np.concatenate(values))
            _update_features(target, sel.labels_index, None)
            failure = self.dock.commits.journal_write(self.dock.selected_image() if image is None else image,
                                                      target, full, np.concatenate(values), "propagation")
        return written, n_changed, failure


class _PlaneStack:
    """The planes of an nD image along one axis, read one at a time."""

    def __init__(self, data, index: tuple, axis: int):
        self.data, self.index, self.axis = data, index, axis

    def __len__(self) -> int:
        return int(self.data.shape[self.axis])

    def __getitem__(self, i: int) -> np.ndarray:
        idx = list(self.index)
        idx[self.axis] = int(i)
        return np.asarray(self.data[tuple(idx)])
