"""The ``napari-segsuite`` command: open the viewer with the widgets, or a smoke run.

``napari-segsuite view`` opens napari on a sample image with the four
segmentation widgets docked. ``napari-segsuite view --smoke shot.png`` does the
same headless (under Xvfb), runs each widget's smoke step end to end, saves a
screenshot of the whole window and exits (non-zero on failure).
"""

from __future__ import annotations

import argparse
import sys

WIDGETS = (
    "Semantic Segmentation",
    "Instance Segmentation",
    "Panoptic Segmentation",
    "SAM Prompt Segmentation",
)
SAMPLES = ("coins", "cell", "astronaut", "coins_stack")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``napari-segsuite`` command."""
    parser = argparse.ArgumentParser(prog="napari-segsuite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    view = sub.add_parser("view", help="open napari with the segmentation widgets docked")
    view.add_argument("images", nargs="*", help="image files to open (default: a sample)")
    view.add_argument("--sample", default="coins", choices=SAMPLES, help="sample image to open")
    view.add_argument("--smoke", metavar="PNG", help="headless check: run, save a screenshot, exit")
    view.add_argument("--models", metavar="DIR", help="model cache folder for this session")
    return parser


def open_viewer(images: list[str], sample: str, *, show: bool = True):
    """A viewer with the image(s) and the four widgets docked; returns (viewer, widgets)."""
    import napari

    viewer = napari.Viewer(title="napari-segsuite", show=show)
    viewer.window.resize(1600, 1000)
    if images:
        viewer.open(images)
    else:
        viewer.open_sample("napari-segsuite", sample)
    widgets = {}
    for name in WIDGETS:
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-segsuite", name, tabify=True)
        widgets[name] = widget
    viewer.reset_view()
    return viewer, widgets


def smoke(viewer, widgets, png: str) -> int:
    """Run every widget's smoke step, save a screenshot, return an exit code."""
    from qtpy.QtWidgets import QApplication

    failures = []
    for name, widget in widgets.items():
        try:
            widget.smoke()
        except Exception as exc:  # report every widget, fail at the end
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        QApplication.processEvents()
    viewer.screenshot(png, canvas_only=False, flash=False)
    for line in failures:
        print("SMOKE FAILURE", line, file=sys.stderr)
    print(f"smoke: {len(widgets)} widgets docked, {len(failures)} failed; screenshot {png}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``napari-segsuite`` command."""
    args = build_parser().parse_args(argv)
    if args.models:
        import os

        os.environ["NAPARI_SEGSUITE_CACHE"] = args.models
    if args.command == "view":
        import napari

        viewer, widgets = open_viewer(args.images, args.sample, show=True)
        if args.smoke:
            code = smoke(viewer, widgets, args.smoke)
            viewer.close()
            return code
        napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
