"""The npe2 manifest: valid, five widgets, samples, every python_name importable."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManifest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "transformers", "ultralytics", "segment_anything")


@pytest.fixture(scope="module")
def manifest():
    return PluginManifest.from_distribution("napari-segsuite")


def test_installed_manifest_is_the_top_level_file(manifest):
    import napari_segsuite

    shipped = Path(napari_segsuite.__file__).parent / "napari.yaml"
    assert shipped.read_text() == (ROOT / "napari.yaml").read_text()
    assert manifest.name == "napari-segsuite"


def test_npe2_validate_passes():
    exe = Path(sys.executable).parent / "npe2"
    result = subprocess.run([str(exe), "validate", "napari-segsuite"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_five_widgets_samples_and_categories(manifest):
    names = [w.display_name for w in manifest.contributions.widgets]
    assert names == [
        "Semantic Segmentation",
        "Instance Segmentation",
        "Panoptic Segmentation",
        "SAM Prompt Segmentation",
        "Evaluate Segmentation",
    ]
    assert {"Segmentation", "Annotation"} <= set(manifest.categories)
    assert {s.key for s in manifest.contributions.sample_data} >= {"coins", "astronaut"}


def test_every_python_name_imports(manifest):
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name


def test_sample_data_comes_without_network(manifest):
    from napari_segsuite import sample_data

    for func in (sample_data.coins, sample_data.cell, sample_data.astronaut, sample_data.coins_stack):
        (data, meta, kind), = func()
        assert kind == "image" and data.size > 0 and meta["name"]


def _imported_after(code: str) -> set[str]:
    probe = code + f"\nimport sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return {m for m in out.stdout.strip().split(",") if m}


def test_import_pulls_in_no_heavy_library():
    assert _imported_after("import napari_segsuite") == set()
    assert _imported_after("import napari_segsuite.api") == set()


def test_importtime_report_lists_no_heavy_library():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import napari_segsuite.api"],
        capture_output=True, text=True, check=True,
    )
    modules = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not modules & set(HEAVY), modules & set(HEAVY)


def test_napari_startup_with_plugin_imports_no_heavy_library():
    code = (
        "import napari\n"
        "from npe2 import PluginManager\n"
        "pm = PluginManager.instance(); pm.discover(); assert 'napari-segsuite' in pm._manifests\n"
        "v = napari.Viewer(show=False)\n"
        "v.close()\n"
    )
    assert _imported_after(code) == set()


def test_widget_modules_import_no_heavy_library():
    code = "\n".join(f"import {c}" for c in (
        "napari_segsuite.widgets.semantic", "napari_segsuite.widgets.instance",
        "napari_segsuite.widgets.panoptic", "napari_segsuite.widgets.sam_prompt",
    ))
    assert _imported_after(code) == set()
