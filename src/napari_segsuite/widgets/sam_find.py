"""The SAM dock's "Find a concept (SAM 3)" section.

Every instance of a concept in words (e.g. "nucleus"), or of objects like the boxes drawn
in the boxes layer (exemplars: a box is "more like this", a box drawn with a Ctrl-drag
"not like this"), is previewed by SAM 3 (the facebook/sam3 folder as the
model: its tracker answers clicks, its concept model answers Find). The instances become
the previewed objects, each with its ``class_name``: review them, then Shift-C commits
them all under new ids, like any prompt's object. *Track the concept through planes* runs
SAM 3 video on the stack (along the innermost slider): one id per object on every plane,
after the target layer's existing ids, in one undo step.
"""

from __future__ import annotations

import numpy as np
from magicgui.widgets import CheckBox, FloatSpinBox, Label, LineEdit, PushButton

from napari_segsuite.core.errors import InputError, SegSuiteError
from napari_segsuite.core.labels import next_free_id
from napari_segsuite.core.progress import Progress
from napari_segsuite.layers import full_resolution, shapes_on_plane
from napari_segsuite.widgets.sam_prompts import BOX_COLORS, NEGATIVE_BOX_GESTURE, box_polarity
from napari_segsuite.widgets.sam_sections import SamSection
from napari_segsuite.widgets.scaffold import form


def concept_model(runner):
    """The SAM 3 concept model behind a session's runner (the ``sam3_tracker`` entry shares its folder)."""
    get = getattr(runner, "concept_runner", None)
    return (get() or runner) if get is not None else runner


class FindSection(SamSection):
    """Find every instance of a concept with SAM 3."""

    title = "Find a concept (SAM 3)"
    collapsed = True

    def __init__(self, dock):
        super().__init__(dock)
        self.find_text = LineEdit(label="Find", value="")
        self.find_text.tooltip = "A concept in words (e.g. 'nucleus'): SAM 3 previews every instance; Shift-C commits"
        self.find_exemplars = CheckBox(text="Boxes are exemplars", value=False)
        self.find_hint = Label(value=(
            f"Exemplars: draw a box: more like this ({BOX_COLORS[1]}) · "
            f"{NEGATIVE_BOX_GESTURE}: not like this ({BOX_COLORS[0]})"
        ))
        self.find_conf = FloatSpinBox(label="Find score", value=0.5, min=0.0, max=1.0, step=0.05)
        self.find_button = PushButton(text="Find all")
        self.track_button = PushButton(text="Track the concept through planes")
        self.track_button.tooltip = (
            "SAM 3 video: every instance of the Find concept, one id per object on every plane of the "
            "stack (along the innermost slider), into the target Labels layer in one undo step"
        )
        self.extend([self.find_hint, form(self.find_text, self.find_exemplars, self.find_conf), self.find_button,
                     self.track_button])
        self.find_button.changed.connect(self.find)
        self.track_button.changed.connect(self.track_concept)
        self.find_text.native.returnPressed.connect(self.find)

    def find(self) -> None:
        """Preview every instance of the Find concept (and/or the exemplar boxes) on the current plane."""
        from napari_segsuite.models.open_vocab_common import check_concepts
        from napari_segsuite.models.sam3 import check_exemplars

        dock = self.dock
        if dock.refuse_when_busy():
            return
        prompts = dock.prompts
        try:
            image, plane, sel = dock.job_plane()
            concepts = check_concepts(str(self.find_text.value))
            exemplars = exemplar_labels = None
            boxes_layer = prompts.boxes_layer
            if self.find_exemplars.value and boxes_layer is not None and boxes_layer in self.viewer.layers:
                shapes = shapes_on_plane(self.viewer, boxes_layer, image, sel)
                if shapes:
                    polarity = box_polarity(boxes_layer)
                    exemplars = np.asarray([s.box for s in shapes], dtype=float).reshape(-1, 4)
                    exemplar_labels = np.asarray([polarity[s.index] for s in shapes], dtype=int)
                    check_exemplars(exemplars, exemplar_labels, plane.shape[:2])
            if not concepts and exemplars is None:
                raise InputError("Type a concept to find (e.g. 'nucleus'), or tick exemplars and draw boxes.")
            if not concepts and not exemplar_labels.any():
                raise InputError(
                    "Every exemplar box is 'not like this': type a concept, or draw a box around an object "
                    "like the ones to find."
                )
        except SegSuiteError as exc:
            dock.report(exc)
            return
        conf = float(self.find_conf.value)

        def job():
            from napari_segsuite.core.image import prepare_rgb_uint8

            session = yield from dock.session_job(plane)
            runner = concept_model(session.runner)
            if not getattr(runner, "takes_exemplars", False):
                raise InputError(
                    f"Find needs SAM 3 as the model (the facebook/sam3 folder); '{runner.name}' takes clicks and "
                    "boxes only."
                )
            yield Progress(0, None, "Finding " + (", ".join(concepts) or "objects like the boxes"))
            return runner.predict_instances(prepare_rgb_uint8(plane), conf=conf, concepts=concepts,
                                            exemplars=exemplars, exemplar_labels=exemplar_labels)

        def on_result(pred) -> None:
            order = np.argsort(-pred.scores, kind="stable")
            names = list(concepts) or ["exemplar"]
            objects = [{"masks": pred.masks[i][None], "scores": pred.scores[i: i + 1], "choice": 0,
                        "class_name": names[int(pred.class_ids[i])]} for i in order]
            prompts.ensure_prompt_layers()
            generation = dock.preview.new_prompts()  # previews of earlier prompts in flight are stale now
            dock.preview.offer(objects, dock.preview_source(image, sel), generation)
            prompts._show(sel)
            what = ", ".join(concepts) or "the exemplars"
            dock.message.value = (
                f"Found {len(objects)} instance(s) of {what}. Review them, then Shift-C commits them all."
                if objects else f"No instance of {what} above score {conf:.2f}; lower 'Find score'."
            )

        dock.start_job(job, on_result, "Find")

    def track_concept(self) -> None:
        """Track every instance of the Find concept through the planes with SAM 3 video (worker)."""
        from napari_segsuite.models.open_vocab_common import check_concepts
        from napari_segsuite.tasks.concept_tracking import track_concepts_job
        from napari_segsuite.widgets.sam_propagation import PropagationSection, _PlaneStack

        dock = self.dock
        if dock.refuse_when_busy():
            return
        try:
            image, plane, sel = dock.job_plane()
            axis = PropagationSection.propagation_axis(sel)
            concepts = check_concepts(str(self.find_text.value))
            if not concepts:
                raise InputError("Type the concept to track in the Find field (e.g. 'nucleus').")
        except SegSuiteError as exc:
            dock.report(exc)
            return
        planes = _PlaneStack(full_resolution(image), sel.index, axis)
        start = int(sel.labels_index[axis])
        conf = float(self.find_conf.value)

        def job():
            session = yield from dock.session_job(plane)
            volume = np.stack([planes[i] for i in range(len(planes))])
            runner = concept_model(session.runner)
            return (yield from track_concepts_job(runner, volume, concepts, start_index=start, conf=conf))

        def on_result(result) -> None:
            from napari_segsuite.layers import _expand_index, _update_features

            target, note = dock.commits.target_for_result(image, sel, dock.find_target(image, sel, create=False))
            offset = next_free_id(target.data) - 1
            overwrite = bool(dock.commits.overwrite.value)
            coords, values = [], []
            for z in range(result.labels.shape[0]):
                lab = result.labels[z]
                if not lab.any():
                    continue
                idx = list(sel.labels_index)
                idx[axis] = z
                idx = tuple(idx)
                old = np.asarray(target.data[idx])
                new = old.copy()
                put = (lab > 0) & ((old == 0) | overwrite)
                new[put] = lab[put] + offset
                changed = np.nonzero(new != old)
                if changed[0].size:
                    coords.append(_expand_index(idx, changed))
                    values.append(new[changed])
            failure = ""
            if coords:
                full = tuple(np.concatenate([c[d] for c in coords]) for d in range(target.data.ndim))
                with target.block_history():
                    target.data_setitem(full, np.concatenate(values))
                failure = dock.commits.journal_write(image, target, full, np.concatenate(values), "tracking")
                extra = {int(r.label) + offset: {"class_name": r.class_name, "score": float(r.score),
                                                 "first_plane": int(r.first_plane), "last_plane": int(r.last_plane)}
                         for r in result.table.itertuples()}
                _update_features(target, sel.labels_index, extra)
                dock.commits.record_step(target, f"tracking of {', '.join(concepts)}")
            text = (
                f"Tracked {len(result.table)} object(s) of {', '.join(concepts)} through "
                f"{result.labels.shape[0]} planes into '{target.name}'." if len(result.table) else result.message
            )
            dock.message.value = " ".join(t for t in (note, text, failure) if t)

        dock.start_job(job, on_result, "Track concept")
