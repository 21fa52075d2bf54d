"""Screenshot of the U-Net training panel after training on the coins strokes: ``docs/unet_training.png``.

Run under Xvfb: ``xvfb-run -a python benchmarks/shot_unet.py [--model FOLDER] [--steps N] [PNG]``.
With ``--model`` (e.g. the folder ``UNET_BENCH_SAVE`` of the benchmark wrote) the
panel loads that model and shows its recorded training curve; otherwise it
trains in the panel for ``--steps`` steps. Then it predicts the coins (with
the probability layer) and saves a picture of the whole window.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Train or load, predict, screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", nargs="?", default=str(ROOT / "docs" / "unet_training.png"))
    parser.add_argument("--model", help="a trained U-Net folder to load instead of training")
    parser.add_argument("--steps", type=int, default=250)
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_segsuite.sample_data import coins_strokes
    from napari_segsuite.widgets.unet_training import UnetTrainingPanel

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    for data, kwargs, kind in coins_strokes():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    panel = UnetTrainingPanel(viewer)
    viewer.window.add_dock_widget(panel, name="U-Net training", area="right")
    if args.model:
        panel.folder.value = args.model
        panel.load()
    else:
        panel.steps.value = args.steps
        panel.train()
        panel.wait(3600)
    if panel.model is None:
        print("no model:", panel.message.value, file=sys.stderr)
        return 1
    panel.probability.value = True
    panel.predict()
    panel.wait()
    viewer.layers["coins [unet p(coin)]"].visible = False
    viewer.layers["coins strokes"].visible = True
    viewer.layers.move(viewer.layers.index("coins strokes"), len(viewer.layers))
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(args.png, canvas_only=False, flash=False)
    print(f"{args.png}: {panel.message.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
