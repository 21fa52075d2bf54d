"""How tall the docks are, and what is left of the canvas when all of them are open.

``python benchmarks/run.py docks`` (under Xvfb or a display): a napari window of 1920x1080 on
the coins sample; each dock is opened through the Plugins-menu command (the app-model action
napari's Plugins menu runs) in a fresh viewer, and its default content height is read (the
height its scroll area's content asks for, option groups as they start). Then all docks are
opened one after the other from the Plugins menu in one viewer: the window height, the canvas
height and whether the docks are tabified are reported.

Measured 2026-12-02 on main at c7deedb, on the 2-core dev VM (Xvfb 1920x1080, software OpenGL;
heights do not depend on load), default content height in px: Semantic 515, Instance 675,
Panoptic 522, SAM 792, Evaluate 638 (goal <= 800 each). All five opened from the Plugins menu:
the window stays 1080 px tall, the canvas keeps its 1031 px (as with no dock), 4 of 4 later docks
tabified with the first. ``tests/test_dock_layout.py`` asserts the same limits.

``python benchmarks/bench_docks.py --shots docs/`` also saves a screenshot of each dock at its
default size (``docs/dock_<name>.png``) and of the window with all docks open
(``docks_all.png``). The README's ``docs/screenshot.png`` is a SAM session:
``benchmarks/shot_sam_session.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    from run import benchmark, run_python
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import benchmark, run_python


def _docks() -> list[tuple[str, str, str]]:
    """(short name, display name, app-model command) of every dock in napari.yaml; the short name
    names its screenshot (``make_sam_widget``: ``sam``)."""
    from napari_segsuite.testing.docks import manifest_docks

    return [(command.rsplit(".", 1)[-1].removeprefix("make_").removesuffix("_widget"), title, command)
            for command, title in manifest_docks()]


def _settle(app, n: int = 30) -> None:
    for _ in range(n):
        app.processEvents()


def new_viewer():
    """A 1920x1080 napari window on the coins sample (sample data through the plugin's own contribution)."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_segsuite.testing.docks import coins_on_screen

    viewer = coins_on_screen(napari.Viewer(show=True))
    _settle(QApplication.instance())
    return viewer


def measure(shots: str | None = None) -> dict:
    """Heights of every dock alone and of all docks together (in this process)."""
    from qtpy.QtWidgets import QApplication

    from napari_segsuite.testing.docks import open_from_plugins_menu

    app = QApplication.instance() or QApplication([])
    entries = _docks()
    out: dict = {"docks": []}
    for short, title, command in entries:
        viewer = new_viewer()
        widget = open_from_plugins_menu(viewer, command)
        _settle(app)
        dock = widget.native.parent()
        row = {"dock": title, "content_px": widget.content_height(), "dock_px": dock.height(),
               "window_px": viewer.window._qt_window.height()}
        out["docks"].append(row)
        if shots:
            from qtpy.QtCore import QRect

            viewer.window._qt_window.grab(QRect(dock.mapTo(viewer.window._qt_window, dock.rect().topLeft()),
                                                dock.size())).save(str(Path(shots) / f"dock_{short}.png"))
        viewer.close()
        _settle(app)
    viewer = new_viewer()
    canvas = viewer.window._qt_viewer.canvas.native
    alone = canvas.height()
    widgets = [open_from_plugins_menu(viewer, command) for _, _, command in entries]
    _settle(app, 60)
    window = viewer.window._qt_window
    docks = [w.native.parent() for w in widgets]
    tabified = sum(1 for d in docks[1:] if docks[0] in window.tabifiedDockWidgets(d))
    out["all"] = {"docks": len(docks), "window_px": window.height(), "canvas_px": canvas.height(),
                  "canvas_alone_px": alone, "tabified_with_first": tabified}
    if shots:
        viewer.window._qt_window.grab().save(str(Path(shots) / "docks_all.png"))
    viewer.close()
    return out


CODE = """
import sys
sys.path.insert(0, {here!r})
from bench_docks import measure
result = measure()
"""


@benchmark("docks")
def docks(repeats: int) -> list[dict]:
    """Default content height of each dock, and the window with all of them open (1920x1080)."""
    res = run_python(CODE.format(here=str(Path(__file__).resolve().parent)))
    rows = [{"case": r["dock"], "content_px": r["content_px"], "dock_px": r["dock_px"],
             "window_px": r["window_px"]} for r in res["docks"]]
    a = res["all"]
    rows.append({"case": f"all {a['docks']} from the Plugins menu", "content_px": "",
                 "dock_px": f"canvas {a['canvas_px']} (alone {a['canvas_alone_px']})",
                 "window_px": a["window_px"]})
    rows.append({"case": "docks tabified with the first", "content_px": "", "dock_px": a["tabified_with_first"],
                 "window_px": ""})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure (and optionally save screenshots); print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", help="folder for dock_<name>.png and docks_all.png")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.shots), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
