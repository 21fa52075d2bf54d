"""Screenshot of training in the Instance dock, with the Export and Import dataset docks: ``docs/instance_training.png``.

Run under Xvfb: ``xvfb-run -a python benchmarks/shot_training.py [--epochs N] [PNG]``.
Opens synthetic blob images (:mod:`napari_segsuite.testing.synthetic_blobs`) with their
labels and classes in ``features``, opens the Export and Import dataset docks from the
Instance dock's buttons, trains YOLO-seg from scratch in the dock's *Train a model on your
labels* section for a few epochs (live loss and held-out AP50 curve), and saves a picture of
the whole 1920x1080 window.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Open, train, screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", nargs="?", default=str(ROOT / "docs" / "instance_training.png"))
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args(argv)

    import napari
    import numpy as np
    import pandas as pd
    from qtpy.QtWidgets import QApplication

    from napari_segsuite.testing.synthetic_blobs import CLASS_NAMES, blob_dataset
    from napari_segsuite.widgets.instance import InstanceWidget

    images, labels, classes = blob_dataset(12, size=128, seed=5, n_range=(5, 9), radius_range=(8.0, 16.0))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1920, 1080)
    viewer.add_image(np.stack(images), name="blobs")
    stack = np.stack(labels)
    offset = 0
    rows = []
    for k, cls in enumerate(classes):  # ids unique across planes
        plane = stack[k]
        plane[plane > 0] += offset
        rows += [(i + offset, CLASS_NAMES[c]) for i, c in cls.items()]
        offset = int(plane.max())
    layer = viewer.add_labels(stack, name="blobs [labels]", opacity=0.5)
    layer.features = pd.DataFrame(rows, columns=["label", "class_name"])
    dock = InstanceWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Instance Segmentation", area="right")
    dock.models.cache.value = tempfile.mkdtemp(prefix="segsuite-shot-")
    dock.export_dataset_button.native.click()
    dock.import_dataset_button.native.click()
    dock.training_group.expand()
    panel = dock.training
    panel.labels_layers.value = [layer]
    panel.epochs.value, panel.imgsz.value, panel.name.value = args.epochs, 128, "blobs-yolo"
    panel.extra_options = {"batch": 4}
    panel.start_button.native.click()
    panel.wait(3600)
    if panel.model is None:
        print("no model:", panel.message.value, file=sys.stderr)
        return 1
    # show the training section: the Instance dock's tab in front, scrolled to the curve
    wrapper = viewer.window.dock_widgets["Instance Segmentation"]
    getattr(wrapper, "native", wrapper).parent().raise_()
    for _ in range(20):
        QApplication.processEvents()
    dock.scroll_area.ensureWidgetVisible(panel.curve.canvas)
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(args.png, canvas_only=False, flash=False)
    print(f"{args.png}: {panel.message.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
