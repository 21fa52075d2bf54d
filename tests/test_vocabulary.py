"""One vocabulary: the fixed sets are enums, results share one shape, the api one signature style."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from napari_segsuite import api
from napari_segsuite.core.vocabulary import RUN_SCOPES, Family, LayerTask, Region, Scope, Task
from napari_segsuite.models.base import FAMILIES
from napari_segsuite.models.registry import ENTRIES


def test_every_family_has_a_runner_and_every_registry_entry_speaks_the_enums():
    assert set(FAMILIES) == set(Family)
    assert all(isinstance(key, Family) for key in FAMILIES)
    for entry in ENTRIES:
        assert isinstance(entry.family, Family), entry.name
        assert entry.tasks and all(isinstance(t, Task) for t in entry.tasks), entry.name


def test_members_are_their_strings():
    assert Task.SEMANTIC == "semantic" and f"{Family.SAM2}" == "sam2" and str(Scope.ALL_PLANES) == "all planes"
    assert LayerTask.SAM_AUTO == "sam auto" and LayerTask.SEMANTIC == Task.SEMANTIC
    assert [s.value for s in RUN_SCOPES] == ["current plane", "all planes", "all open images"]
    assert Region.values() == ("whole plane", "field of view", "rectangle")


def _result_classes():
    from napari_segsuite.tasks.concept_tracking import ConceptTrackResult
    from napari_segsuite.tasks.instance import InstanceResult
    from napari_segsuite.tasks.panoptic import PanopticResult
    from napari_segsuite.tasks.propagation import PropagationResult
    from napari_segsuite.tasks.sam_automatic import AutoResult
    from napari_segsuite.tasks.semantic import SemanticResult

    return [ConceptTrackResult, InstanceResult, PanopticResult, PropagationResult, AutoResult, SemanticResult]


@pytest.mark.parametrize("cls", _result_classes(), ids=lambda c: c.__name__)
def test_every_result_has_labels_table_and_provenance(cls):
    fields = {f.name for f in dataclasses.fields(cls)}
    for name in ("labels", "table", "provenance"):
        assert name in fields or isinstance(inspect.getattr_static(cls, name, None), property), (cls, name)


def _model_functions():
    for name, func in vars(api).items():
        if inspect.isfunction(func) and func.__module__ == api.__name__ and not name.startswith("_"):
            params = list(inspect.signature(func).parameters.values())
            # run_batch takes (task, model, inputs, out): files, not an image
            if len(params) > 1 and params[1].name in ("model", "detector") and name != "run_batch":
                yield name, params


@pytest.mark.parametrize(("name", "params"), list(_model_functions()), ids=lambda v: v if isinstance(v, str) else "")
def test_api_functions_take_image_model_then_keywords_with_one_progress_hook(name, params):
    assert params[0].name in ("image", "volume"), name
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[2:]), name
    assert [p.name for p in params if "progress" in p.name] == ["progress"], name
