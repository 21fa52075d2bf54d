"""The README's screenshot: a SAM session in the viewer at 1920x1080, ``docs/screenshot.png``.

Run under Xvfb: ``xvfb-run -a -s "-screen 0 1920x1080x24" python benchmarks/shot_sam_session.py [PNG]
[--model SAM.pth]``. The five docks are opened from the Plugins menu (tabified, the SAM dock
in front) on the coins sample. Without ``--model`` a tiny SAM (segment_anything's
architecture, random weights) is used, fine-tuned on the coins' reference mask first when
``--steps`` is above 0 (decoder and prompt encoder; on a 2-core machine 100 steps took 22 min
under load and reached a held-out IoU of only 0.02, so the README's picture uses ``--steps 0``).
Then, with real
mouse events on the canvas, a few coins are annotated (a click, a right-click beside every
second one, Shift-C), the next coin gets a positive and a negative point and its preview, a
committed object is picked in the list, and the window is saved.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def coins_sam(folder: Path, steps: int) -> Path:
    """A tiny SAM fine-tuned on the coins (single-point prompts on each coin)."""
    from scipy import ndimage
    from skimage import data

    from napari_segsuite.tasks.sam_finetune import finetune_sam
    from napari_segsuite.testing.coins import coins_reference_mask
    from napari_segsuite.testing.tiny_sam import build_tiny_sam

    labels, _ = ndimage.label(coins_reference_mask() > 0)
    start = build_tiny_sam(folder / "tiny_sam.pth")
    if steps <= 0:
        return start
    out = folder / "coins_sam.pth"
    finetune_sam([data.coins()], [labels], str(start), out=str(out), steps=steps, objects_per_step=8,
                 learning_rate=1e-3, val_fraction=0.2, val_every=max(1, steps // 4))
    return out


def main(argv: list[str] | None = None) -> int:
    """Fine-tune (or take) a SAM, annotate coins in the dock, save the window."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", nargs="?", default=str(ROOT / "docs" / "screenshot.png"))
    parser.add_argument("--model", help="a SAM checkpoint to use instead of fine-tuning a tiny one")
    parser.add_argument("--steps", type=int, default=0, help="fine-tuning steps of the tiny SAM (0: the random tiny SAM)")
    parser.add_argument("--objects", type=int, default=5, help="coins committed before the shot")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from bench_docks import DOCKS, new_viewer, open_from_plugins_menu
    from qtpy.QtWidgets import QApplication

    from napari_segsuite.testing.canvas import (
        _process,
        annotate_objects,
        click,
        coin_centres,
        wait_until,
    )
    from napari_segsuite.widgets.base import LOCAL

    tmp = Path(tempfile.mkdtemp())
    model = Path(args.model) if args.model else coins_sam(tmp, args.steps)
    viewer = new_viewer()
    widgets = {short: open_from_plugins_menu(viewer, command) for short, _, command in DOCKS}
    dock = widgets["sam"]
    _process(1.0)
    qdock = dock.native.parent()
    qdock.show()
    qdock.raise_()
    image = viewer.layers["coins"]
    dock.image.value = image
    dock.models.model.value = LOCAL
    dock.models.local.value = str(model)
    dock.device.value = "cpu"
    dock.autosave_dir.value = str(tmp / "autosave")
    dock.prompts.focus_points()
    viewer.reset_view()
    _process(1.0)
    centres = coin_centres(args.objects + 1)
    log = annotate_objects(viewer, dock, image, centres[: args.objects])
    if log.problems:
        raise RuntimeError("; ".join(log.problems))
    # the next coin: a positive click on it and a negative right-click beside it, with the preview
    row, col = centres[args.objects]
    click(viewer, image, (row, col))
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 120, "the preview")
    click(viewer, image, (row, max(0.0, col - 40.0)), button="right")
    wait_until(lambda: bool(dock.preview.objects) and not dock.preview_busy, 120, "the preview")
    _process(1.0)
    QApplication.processEvents()
    viewer.window._qt_window.grab().save(args.png)
    print(f"saved {args.png}: {log.objects} objects committed, preview of the next one shown")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
