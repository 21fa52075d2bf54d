"""The SAM dock on a lazy dask volume larger than this machine's memory, in a real viewer.

The volume (the conftest fixture ``volume_beyond_memory``) has more bytes than RAM + swap (or
the cgroup's limit): loading it whole cannot succeed. A click on a plane gives a preview in the
window around it, Shift-C commits it into labels on disk, and *Propagate* carries it over the
neighbouring planes, each decoded in a window of its own. The volume's chunk reads are counted
(every read is one chunk, and all of them together a few planes' worth, napari's drawing of
the shown plane included) and the process's peak resident memory over the work is bounded.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_segsuite.core.fingerprint import SAMPLED_PLANES
from napari_segsuite.layers import label_store_of
from napari_segsuite.testing.canvas import _process, click, key, wait_until
from napari_segsuite.testing.large_images import PeakMemory, counting_dask, memory_limit
from napari_segsuite.widgets.base import LOCAL
from napari_segsuite.widgets.sam_prompt import SamPromptWidget

pytestmark = pytest.mark.widget

#: The most the process's resident memory may rise over a commit and a propagation.
RISE_LIMIT = 500 * 2**20


def _ready(dock):
    return bool(dock.preview.objects) and not dock.preview_busy


def _look_at(viewer, image, zrc, zoom=2.0):
    world = image.data_to_world(np.asarray(zrc, dtype=float))
    viewer.scene.camera.center = tuple(world[1:])
    viewer.scene.camera.zoom = zoom
    _process(1.0)


def test_sam_click_commit_and_propagation_on_a_volume_beyond_memory(make_napari_viewer, volume_beyond_memory,
                                                                   tiny_sam_path, tmp_path):
    data, counter = counting_dask(volume_beyond_memory, chunks=(1, 1024, 1024))
    assert data.nbytes > memory_limit()
    depth, h, w = data.shape
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    image = viewer.add_image(data, name="volume")
    dock = SamPromptWidget(viewer)
    viewer.window.add_dock_widget(dock, name="SAM")
    dock.models.model.value = LOCAL
    dock.models.local.value = str(tiny_sam_path)
    dock.device.value = "cpu"
    dock.autosave_dir.value = str(tmp_path / "autosave")
    wait_until(lambda: viewer.window._qt_viewer.canvas.native.isVisible(), 10, "the canvas")
    z = depth // 2
    viewer.dims.set_point(0, z)
    # the model is loaded by a first click (its import and weights are not the work measured)
    _look_at(viewer, image, (z, 600.0, 600.0))
    click(viewer, image, (z, 600.0, 600.0))
    wait_until(lambda: _ready(dock), 300, "the first preview")
    dock.prompts.clear()

    where = (z, 2100.0, 1900.0)
    _look_at(viewer, image, where)
    counter.reset()
    with PeakMemory() as peak:
        click(viewer, image, where)
        wait_until(lambda: _ready(dock), 300, "the preview")
        (obj,) = dock.preview.objects
        window = obj["window"]
        assert window.r0 <= where[1] < window.r1 and window.c0 <= where[2] < window.c1
        assert (window.r1 - window.r0, window.c1 - window.c0) == (256, 256)  # full resolution, 1:1
        key(viewer, "C", ("shift",))
        target = viewer.layers["volume [sam]"]
        store = label_store_of(target)
        assert store is not None  # a lazy image: the labels live on disk
        level0 = target.data[0] if target.multiscale else target.data
        committed = np.asarray(level0[(z, window.slices[0], window.slices[1])]) == 1
        np.testing.assert_array_equal(committed, np.asarray(obj["masks"][obj["choice"]]))

        dock.propagation.prop_max.value = 2
        dock.propagation.prop_floor.value = 0.0
        dock.propagation.prop_button.native.click()
        dock.jobs.wait(600, "propagation")
    assert "Propagated label 1 to" in dock.message.value, dock.message.value
    done = [k for k in (z - 2, z - 1, z + 1, z + 2) if (np.asarray(level0[k, 1500:2700, 1300:2500]) == 1).any()]
    assert len(done) >= 2, (done, dock.message.value)
    assert not np.asarray(level0[z + 3, 1500:2700, 1300:2500]).any()  # at most 2 planes each way
    # no whole-volume or whole-plane load: every read is one chunk, of the planes worked on, and all
    # reads together (napari drawing the shown plane included) are a few planes' worth
    per_plane: dict[int, int] = {}
    for k in counter.reads:
        plane = int(k[0].start if isinstance(k[0], slice) else k[0])
        rows, cols = (len(range(*s.indices(n))) for s, n in zip(k[1:], (h, w), strict=True))
        per_plane[plane] = per_plane.get(plane, 0) + rows * cols
    assert counter.largest <= 1024 * 1024
    # besides the planes worked on, only the planes the autosave journal's image identity samples
    # (core.fingerprint: tiles of SAMPLED_PLANES planes spread over the volume, computed once)
    sampled = set(np.unique(np.linspace(0, depth - 1, SAMPLED_PLANES).astype(np.int64)).tolist())
    others = {p: n for p, n in per_plane.items() if p not in sampled}
    assert set(others) <= set(range(z - 2, z + 3)), sorted(others)
    assert sum(others.values()) <= 5 * h * w, others
    assert len(per_plane) <= len(sampled) + 5 < depth and all(n <= 4 * h * w for n in per_plane.values())
    print(f"volume {data.nbytes / 1e9:.1f} GB (memory {memory_limit() / 1e9:.1f} GB): peak RSS rise "
          f"{peak.rise / 2**20:.0f} MiB over a click, a commit and a propagation; {counter.pixels / 1e6:.0f} Mpx read")
    assert peak.rise < RISE_LIMIT, f"peak RSS rose by {peak.rise / 2**20:.0f} MiB"
