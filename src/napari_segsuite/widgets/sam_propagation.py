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
            from napari_segsuite.layers import labels_on_disk, plane_selection

            image = dock.selected_image()
            if labels_on_disk(image, int(dock.on_disk_mpx.value) * 1_000_000):
                self.propagate_windowed(image, plane_selection(self.viewer, image))
                return
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


    def propagate_windowed(self, image, sel) -> None:
        """Propagation on a large volume: each plane's window around the previous mask, read alone.

        Starts from an object committed in this session on the current plane (its region is
        known, so nothing reads the whole plane); the masks are written region by region into
        the target (on disk: the last region is what Undo restores).
        """
        from napari_segsuite.core.regions import Region
        from napari_segsuite.layers import full_resolution, label_store_of
        from napari_segsuite.tasks.sam_windows import PlaneView, propagate_windowed_job

        dock = self.dock
        dock.models.spec  # noqa: B018 - raises a user-facing error when no local file is chosen
        axis = self.propagation_axis(sel)
        target = dock.find_target(image, sel, create=False)
        if target is None:
            raise InputError("Commit an object first: propagation starts from a committed label.")
        label = int(self.prop_label.value) or self.last_committed(target)
        found = [c for c in dock.commits.committed if c.label == label and c.plane_key == sel.key and c.region]
        if not found:
            raise InputError(f"On a large image propagation starts from an object committed on this plane in this "
                             f"session; label {label} is not one. Commit the object here first.")
        idx = found[-1].region
        rs, cs = [i for i in idx if isinstance(i, slice)]
        data0 = target.data[0] if getattr(target, "multiscale", False) else target.data
        start_mask = np.asarray(data0[idx]).reshape(rs.stop - rs.start, cs.stop - cs.start) == label
        if not start_mask.any():
            raise InputError(f"Label {label} is not on this plane; pick the object id to propagate.")
        data = full_resolution(image)
        n = int(data.shape[axis])
        token = dock.plane_token(image, sel.index)[:2]
        start = int(sel.labels_index[axis])
        options = {"direction": self.prop_direction.value, "iou_floor": float(self.prop_floor.value),
                   "max_planes": int(self.prop_max.value) or None}

        def plane_at(z):
            index = list(sel.index)
            index[axis] = int(z)
            return PlaneView(data, tuple(index))

        def job():
            session = yield from dock.load_session_job()
            return (yield from propagate_windowed_job(session, plane_at, n, token, start,
                                                      ((rs.start, cs.start), start_mask), **options))

        def on_result(placed) -> None:
            from napari_segsuite.layers import write_labels_at

            store = label_store_of(target)
            overwrite = bool(dock.commits.overwrite.value)
            changed = 0
            for z, ((r0, c0), mask) in sorted(placed.items()):
                lead = list(sel.labels_index)
                lead[axis] = int(z)
                region = Region(r0, r0 + mask.shape[0], c0, c0 + mask.shape[1])
                where = list(lead)
                where[sel.axes[0]], where[sel.axes[1]] = region.slices
                where = tuple(where)
                old = (store.read(tuple(lead[:-2]), region) if store is not None
                       else np.asarray(data0[where]).reshape(mask.shape))
                new = old.copy()
                new[new == label] = 0
                new[mask & ((new == 0) | overwrite)] = label
                if store is not None:
                    import pandas as pd

                    from napari_segsuite.core.labels import label_table
                    from napari_segsuite.layers import PlaneSelection, record_on_disk_write

                    store.write(tuple(lead[:-2]), region, new)
                    psel = PlaneSelection((*where[:-2], slice(None), slice(None)), sel.axes, sel.shape,
                                          sel.layer_shape)
                    record_on_disk_write(target, store, psel, region, pd.DataFrame(label_table(new))[["label", "area"]],
                                         np.bincount(old.ravel().astype(np.int64)), task="prompt",
                                         provenance={"propagated": label}, before=old)
                    changed += int((new != old).sum())
                else:
                    changed += write_labels_at(target, where, new.reshape(np.asarray(data0[where]).shape))
            if changed:
                dock.commits.record_step(target, f"propagation of label {label}")
                dock.commits.refresh(target)
            written = sorted(placed)
            dock.message.value = (f"Propagated label {label} to {len(written)} plane(s) in windows"
                                  + (f": {min(written)}…{max(written)}" if written else "") + ".")

        dock.start_job(job, on_result, "Propagation")


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
