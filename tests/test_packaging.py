"""A regular (non-editable) wheel ships the manifest and registers it with napari."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_the_manifest_and_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("napari_segsuite-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = zf.read("napari_segsuite/napari.yaml").decode()
        entry_points = next(n for n in zf.namelist() if n.endswith("entry_points.txt"))
        assert "napari_segsuite:napari.yaml" in zf.read(entry_points).decode()
    assert shipped == (ROOT / "napari.yaml").read_text()
