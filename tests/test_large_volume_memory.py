"""Every non-SAM dock on a dask volume larger than the memory the viewer process may use.

The viewer runs in a subprocess whose data segment is capped with ``RLIMIT_DATA`` (5 GiB): a
(96, 8192, 8192) uint8 volume is 6 GiB, so reading it whole, or allocating labels of its size
in memory, fails there (the script checks that it does). ``RLIMIT_DATA`` rather than
``RLIMIT_AS``: the CUDA build of torch reserves large ranges of address space it never
touches, which ``RLIMIT_AS`` counts and ``RLIMIT_DATA`` (private writable memory) does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from napari_segsuite.testing.instance_doubles import sharpen_yolo
from napari_segsuite.testing.tiny_models import (
    build_tiny_mask2former,
    build_tiny_segformer,
    build_tiny_yolo,
)

pytestmark = [pytest.mark.widget, pytest.mark.slow]

LIMIT_GIB = 5

SCRIPT = textwrap.dedent("""
    import json, resource, sys, time
    limit = int(float(sys.argv[1]) * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    import numpy as np
    import napari
    from napari_segsuite.core.regions import Region
    from napari_segsuite.layers import label_store_of
    from napari_segsuite.testing.canvas import _process, drag, wait_until
    from napari_segsuite.testing.large_images import synthetic_volume
    from napari_segsuite.widgets.base import ALL_PLANES, FIELD_OF_VIEW, LOCAL, RECTANGLE
    from napari_segsuite.widgets.instance import InstanceWidget
    from napari_segsuite.widgets.panoptic import PanopticWidget
    from napari_segsuite.widgets.semantic import SemanticWidget

    seg, yolo, m2f = sys.argv[2:5]
    out = {}
    volume = synthetic_volume((96, 8192, 8192), chunks=(1, 1024, 1024))
    try:
        np.zeros(volume.shape, volume.dtype)
        out["whole_volume_fits"] = True
    except MemoryError:
        out["whole_volume_fits"] = False
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    layer = viewer.add_image(volume, name="vol")
    wait_until(lambda: viewer.window._qt_viewer.canvas.native.isVisible(), 10, "the canvas")
    viewer.dims.set_point(0, 7)

    def dock(cls, path, **options):
        d = cls(viewer)
        d.models.model.value = LOCAL
        if path.endswith(("seg", "m2f")):
            d.models.local.mode = "d"
        d.models.local.value = path
        d.device.value = "cpu"
        d.image.value = layer
        for k, v in options.items():
            getattr(d, k).value = v
        return d

    def run(d):
        d.run()
        wait_until(lambda: not d.jobs.busy and d.run_button.enabled, 900, "the run")
        if d.jobs.last_error is not None:
            raise RuntimeError(str(d.jobs.last_error))
        if "written to" not in d.message.value:
            raise RuntimeError("nothing written: " + d.message.value)
        return d.message.value

    # Semantic: a rectangle drawn with the mouse, on all 96 planes (streamed plane by plane)
    viewer.scene.camera.center = (4000, 4000)
    viewer.scene.camera.zoom = 0.5
    _process(0.3)
    sem = dock(SemanticWidget, seg, tile_size=0)
    sem.region.value = RECTANGLE
    drag(viewer, layer, (3700, 3600), (4100, 4150))
    sem.scope.value = ALL_PLANES
    out["semantic_message"] = run(sem)
    labels = viewer.layers["vol [semantic]"]
    store = label_store_of(labels)
    region = Region(*labels.metadata["segsuite"]["last"]["region"])
    firsts = [store.read((z,), region) for z in (0, 47, 95)]
    out["semantic_region"] = region.as_list()
    out["semantic_planes_labelled"] = [bool(b.min() >= 1) for b in firsts]
    out["semantic_outside_empty"] = not store.read((40,), Region(0, 3000, 0, 3000)).any()
    out["semantic_planes_in_metadata"] = len(store.attrs["planes"])
    out["semantic_levels"] = [list(a.shape) for a in store.levels]
    # Instance and panoptic: the field of view of plane 7
    viewer.scene.camera.center = (2000, 6000)
    viewer.scene.camera.zoom = 2.0
    _process(0.3)
    ins = dock(InstanceWidget, yolo, conf=0.0, max_det=30, region=FIELD_OF_VIEW)
    out["instance_message"] = run(ins)
    il = viewer.layers["vol [instance]"]
    ireg = Region(*il.metadata["segsuite"]["last"]["region"])
    iblock = label_store_of(il).read((7,), ireg)
    out["instance_ids"] = int(len(np.unique(iblock[iblock > 0])))
    out["instance_features"] = int(len(il.features))
    out["instance_other_plane_empty"] = not label_store_of(il).read((6,), ireg).any()
    pan = dock(PanopticWidget, m2f, region=FIELD_OF_VIEW)
    pan.threshold.value, pan.mask_threshold.value, pan.overlap.value = 0.0, 0.05, 0.0
    out["panoptic_message"] = run(pan)
    pl = viewer.layers["vol [panoptic]"]
    pblock = label_store_of(pl).read((7,), Region(*pl.metadata["segsuite"]["last"]["region"]))
    out["panoptic_segments"] = int(len(np.unique(pblock[pblock > 0])))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    status = dict(ln.split(":", 1) for ln in open("/proc/self/status").read().splitlines() if ":" in ln)
    out["vm_data_mb"] = int(status.get("VmData", "0 kB").split()[0]) / 1024
    out["limit_gib"] = float(sys.argv[1])
    viewer.close()
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("volume_models")
    return [
        str(build_tiny_segformer(root / "seg", num_labels=3)),
        str(sharpen_yolo(build_tiny_yolo(root / "yolo.pt", "segment", nc=3))),
        str(build_tiny_mask2former(root / "m2f", task="panoptic", num_labels=4, seed=2)),
    ]


def test_docks_on_a_volume_larger_than_the_memory_limit(tmp_path, model_paths):
    script = tmp_path / "volume_docks.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "NAPARI_SEGSUITE_LABELS_DIR": str(tmp_path / "labels"),
           "NAPARI_SEGSUITE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(script), str(LIMIT_GIB), *model_paths], capture_output=True,
                          text=True, env=env, timeout=1500, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    print("volume docks:", {k: v for k, v in out.items() if not k.endswith("message")})
    assert out["whole_volume_fits"] is False  # the limit bites: the volume cannot be held
    assert out["semantic_planes_labelled"] == [True, True, True] and out["semantic_outside_empty"]
    assert out["semantic_planes_in_metadata"] == 96 and "of 96 planes" in out["semantic_message"]
    r0, r1, c0, c1 = out["semantic_region"]
    assert abs(r0 - 3700) <= 12 and abs(r1 - 4100) <= 12 and abs(c0 - 3600) <= 12 and abs(c1 - 4150) <= 12
    assert out["semantic_levels"][0] == [96, 8192, 8192] and out["semantic_levels"][-1] == [96, 1024, 1024]
    assert out["instance_ids"] > 0 and out["instance_features"] == out["instance_ids"]
    assert out["instance_other_plane_empty"]
    assert out["panoptic_segments"] > 0
    assert out["peak_rss_mb"] < LIMIT_GIB * 1024
