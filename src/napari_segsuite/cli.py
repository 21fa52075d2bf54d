"""The ``napari-segsuite`` command: open the viewer with the widgets, a smoke run, or a batch run.

``napari-segsuite view`` opens napari on a sample image with the four
segmentation widgets docked. ``napari-segsuite view --smoke shot.png`` does the
same headless (under Xvfb), runs each widget's smoke step end to end, saves a
screenshot of the whole window and exits (non-zero on failure).
``napari-segsuite run TASK --model MODEL INPUT... --out DIR`` segments many
images (see ``napari-segsuite run --help``). ``napari-segsuite export --images ... --labels ...
--out DIR`` writes a COCO or YOLO training dataset (see ``napari-segsuite export --help``).
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
    add_run_parser(sub)
    add_export_parser(sub)
    return parser


RUN_DESCRIPTION = """\
Segment many images with one task and model, locally or on a dask cluster.

INPUT is any mix of image files (tif, tiff, png, jpg, bmp), folders (their images and zarr
stores, not recursive), glob patterns ("data/**/*.tif", quoted) and zarr / OME-Zarr stores
(an array, every array of a group, or an OME-Zarr's full resolution). 2D images, images with
up to 4 channels (last axis) and stacks of planes (segmented plane by plane) are accepted;
pixel types and channel counts may differ from file to file (each image is normalised on its
own; the summary says when they were mixed).

Outputs in --out, per image: NAME.tif (or NAME.zarr for images larger than --chunk-size, or
with --format zarr) with int32 labels, NAME.csv (or .parquet) with one row per label, and
NAME.done.json (checksums, for resume); for the run: objects.csv (all tables, column "image")
and manifest.json (task, model path and SHA-256, every parameter, package versions, and each
image's status and reason).

Images larger than --chunk-size are segmented in overlapping chunks (--overlap pixels of
context on each side); instance ids are made unique across chunks and objects cut by chunk
borders are merged. A re-run skips images whose outputs are complete and valid (--no-resume
redoes all). A failing image is reported with its reason and the others go on.

Where it runs: by default in this process (--workers N: N threads); --processes: a local dask
cluster of N worker processes on 127.0.0.1; --scheduler tcp://HOST:8786: an existing
dask.distributed cluster (start one with `dask scheduler` and `dask worker tcp://HOST:8786
--nthreads 1`; workers need napari-segsuite installed and must see the inputs, the model and
--out at the same paths). Each worker loads the model once. Torch threads per worker: with
several local workers (--workers N, or --processes) max(1, cores // N) by default, so N workers
on N cores do not oversubscribe the CPU; one in-process worker and the workers of --scheduler
keep torch's default; --torch-threads N sets it.

Exit status: 0 all images done or skipped, 1 some failed, 2 usage or setup error (unknown
task, model not found, output folder not writable, scheduler unreachable within
--connect-timeout seconds).

Examples:
  napari-segsuite run semantic --model lraspp_mobilenet_v3_large_voc data/*.png --out seg/
  napari-segsuite run panoptic --model ./m2f_folder images/ --out pan/ --param threshold=0.5
  napari-segsuite run instance --model yolo11n_seg "plates/*.tif" --out inst/ -p conf=0.3 -p classes=person
  napari-segsuite run sam-auto --model sam_vit_b in/ --out sam/ -p points_per_side=16 --table parquet
  napari-segsuite run threshold big.ome.zarr --out big/ --param level=128 --chunk-size 4096
  napari-segsuite run semantic --model unet_dir/ in/ --out o/ --scheduler tcp://10.0.0.5:8786
"""


def add_run_parser(sub) -> argparse.ArgumentParser:
    """The ``run`` sub-command (batch segmentation)."""
    from napari_segsuite.batch.tasks import TASKS

    tasks = "\n".join(f"  {name:<10} {spec.help}" for name, spec in sorted(TASKS.items()))
    run = sub.add_parser(
        "run", help="segment many images (batch, locally or on a dask cluster)",
        description=RUN_DESCRIPTION + "\ntasks:\n" + tasks,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("task", metavar="TASK", help=f"what to do: {', '.join(sorted(TASKS))}")
    run.add_argument("inputs", metavar="INPUT", nargs="+", help="files, folders, glob patterns, zarr stores")
    run.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created)")
    run.add_argument("--model", "-m", metavar="MODEL", help="registry name or local checkpoint file/folder")
    run.add_argument("--family", help="model family of a local checkpoint when it cannot be detected")
    run.add_argument("--models", metavar="DIR", help="model cache folder (NAPARI_SEGSUITE_CACHE)")
    run.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    run.add_argument("--workers", "-j", type=int, default=1, metavar="N", help="parallel workers (default 1)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--threads", dest="processes", action="store_false", help="workers are threads (default)")
    mode.add_argument("--processes", dest="processes", action="store_true",
                      help="workers are processes of a local dask cluster")
    mode.add_argument("--scheduler", metavar="ADDRESS", help="run on an existing dask.distributed scheduler")
    run.add_argument("--torch-threads", type=int, metavar="N",
                     help="torch threads per worker (default: cores // workers with several local workers or "
                          "--processes, torch's own otherwise; 1 is best on a busy machine)")
    run.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                     help="seconds to wait for --scheduler (default 5)")
    run.add_argument("--chunk-size", type=int, default=2048, metavar="PX",
                     help="images larger than this are segmented in chunks of PX x PX (default 2048)")
    run.add_argument("--overlap", type=int, default=64, metavar="PX", help="halo of each chunk in pixels (default 64)")
    run.add_argument("--merge-threshold", type=float, default=0.5, metavar="F",
                     help="fraction of a border object that must overlap to merge across chunks (default 0.5)")
    run.add_argument("--format", dest="fmt", choices=("auto", "tif", "zarr"), default="auto",
                     help="label image format (auto: tif, zarr for chunked images)")
    run.add_argument("--table", choices=("csv", "parquet"), default="csv", help="table format (default csv)")
    run.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                     help="task parameter (repeatable), e.g. threshold=0.5")
    run.add_argument("--no-resume", dest="resume", action="store_false", help="redo images that are complete")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    run.set_defaults(processes=False)
    return run


def parse_params(pairs: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; ValueError for a pair without ``=``."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects KEY=VALUE, got {pair!r}")
        params[key.strip()] = value.strip()
    return params


class _ProgressPrinter:
    """Progress on stderr: a rich progress bar on a terminal, one line per image otherwise."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.task = quiet, None, None
        if quiet or not sys.stderr.isatty():
            return
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )
        except ImportError:
            return
        self.bar = Progress(TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.description}"), console=Console(stderr=True))
        self.bar.start()

    def __call__(self, p) -> None:
        if self.quiet:
            return
        record = p.partial or {}
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task("", total=p.total)
            self.bar.update(self.task, completed=p.step, description=p.message[-60:])
            if record.get("status") == "failed":
                self.bar.console.print(f"[red]FAILED[/red] {record['input']}: {record.get('reason')}")
            return
        line = f"[{p.step}/{p.total}] {p.message}"
        if record.get("status") == "failed":
            line += f" -- {record.get('reason')}"
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_command(args) -> int:
    """The ``run`` sub-command; returns the exit status (0 ok, 1 some failed, 2 setup error)."""
    from napari_segsuite.batch.engine import BatchSetupError, batch_job
    from napari_segsuite.core.errors import SegSuiteError
    from napari_segsuite.core.progress import run_sync

    try:
        params = parse_params(args.param)
    except ValueError as exc:
        print(f"napari-segsuite run: error: {exc}", file=sys.stderr)
        return 2
    printer = _ProgressPrinter(args.quiet)
    try:
        summary = run_sync(batch_job(
            args.task, args.model, args.inputs, args.out, device=args.device, params=params,
            workers=args.workers, processes=bool(args.processes) and not args.scheduler,
            scheduler=args.scheduler, chunk_size=args.chunk_size, overlap=args.overlap, fmt=args.fmt,
            table=args.table, resume=args.resume, merge_threshold=args.merge_threshold,
            connect_timeout=args.connect_timeout, family=args.family, torch_threads=args.torch_threads,
            argv=sys.argv,
        ), printer)
    except (BatchSetupError, SegSuiteError) as exc:
        printer.close()
        print(f"napari-segsuite run: error: {exc}", file=sys.stderr)
        return 2
    printer.close()
    print(summary, file=sys.stderr)
    print(f"manifest: {summary.manifest}", file=sys.stderr)
    return summary.exit_code


EXPORT_DESCRIPTION = """\
Write images and their label images as a training dataset: COCO instance segmentation (RLE
masks, annotations/instances_{train,val}.json) or ultralytics YOLO segmentation (polygons,
data.yaml). Every object (non-zero label id) of every plane is one instance; stacks give one
dataset image per plane.

--images and --labels take files, folders and glob patterns. A label file belongs to the image
of the same name (x.png with x.tif, x_labels.tif, x_mask.png, ...); files are read one at a
time. Classes: --classes TABLE (CSV/Parquet with columns label, class_id and optionally image,
class_name), or --classes sidecar (the NAME.csv / NAME.parquet next to each label file, as
`napari-segsuite run` writes them); without it every object has one class. --class-names
names the class ids 0, 1, ... (comma-separated, or a text file with one name per line).

The dataset is written beside --out and renamed when complete: an error leaves nothing. An
existing non-empty --out is refused unless --overwrite.

Exit status: 0 written, 2 bad input (the message says why).

Examples:
  napari-segsuite export --images raw/ --labels seg/ --out ds_coco
  napari-segsuite export --images "raw/*.tif" --labels seg/ --format yolo --out ds_yolo \\
      --classes sidecar --val-fraction 0.25
"""


def add_export_parser(sub) -> argparse.ArgumentParser:
    """The ``export`` sub-command (training datasets)."""
    export = sub.add_parser(
        "export", help="write images and label images as a COCO or YOLO training dataset",
        description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--images", "-i", nargs="+", required=True, metavar="IMAGE",
                        help="image files, folders, glob patterns")
    export.add_argument("--labels", "-l", nargs="+", required=True, metavar="LABELS",
                        help="label image files, folders, glob patterns")
    export.add_argument("--out", "-o", required=True, metavar="DIR", help="dataset folder (created)")
    export.add_argument("--format", "-f", dest="fmt", choices=("coco", "yolo"), default="coco",
                        help="dataset format (default coco)")
    export.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                        help="share of images in the validation split, fixed seed (default 0.2)")
    export.add_argument("--classes", metavar="TABLE|sidecar", help="which class each label is")
    export.add_argument("--class-names", metavar="NAMES", help="a,b,c or a file with one name per line")
    export.add_argument("--image-format", choices=("png", "tif"), default="png",
                        help="png: 8-bit (other types scaled), tif: pixels unchanged (default png)")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return export


def export_command(args) -> int:
    """The ``export`` sub-command; returns the exit status (0 written, 2 bad input)."""
    from pathlib import Path

    from napari_segsuite.core.errors import SegSuiteError
    from napari_segsuite.core.progress import run_sync
    from napari_segsuite.datasets import files
    from napari_segsuite.datasets.io import export_job

    def show(p) -> None:
        if not args.quiet and p.step:
            print(f"[{p.step}/{p.total or '?'}] {p.message}", file=sys.stderr, flush=True)

    try:
        pairs = files.pair_files(files.expand(args.images, "--images"), files.expand(args.labels, "--labels"))
        names = [p.stem for p, _ in pairs]
        label_classes, class_names = None, None
        if args.classes == "sidecar":
            tables = [files.sidecar_table(lab) for _, lab in pairs]
            label_classes, class_names = files.classes_from_tables(tables, names)
        elif args.classes:
            table = files.read_table(Path(args.classes))
            label_classes, class_names = files.classes_from_tables([table] * len(pairs), names)
        if args.class_names:
            source = Path(args.class_names)
            text = source.read_text() if source.is_file() else args.class_names.replace(",", "\n")
            class_names = [line.strip() for line in text.splitlines() if line.strip()]
        result = run_sync(export_job(
            [p for p, _ in pairs], [lab for _, lab in pairs], args.out, format=args.fmt,
            class_names=class_names, label_classes=label_classes, val_fraction=args.val_fraction,
            overwrite=args.overwrite, names=names, image_format=args.image_format,
        ), show)
    except SegSuiteError as exc:
        print(f"napari-segsuite export: error: {exc}", file=sys.stderr)
        return 2
    prov = result.provenance
    print(f"{result.format} dataset: {result.n_images} images ({prov['n_train']} train, {prov['n_val']} val), "
          f"{result.n_objects} objects, {len(result.class_names)} classes -> {result.path}", file=sys.stderr)
    return 0


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
    if args.command == "run" and args.workers < 1:
        print("napari-segsuite run: error: --workers must be at least 1", file=sys.stderr)
        return 2
    if getattr(args, "models", None):
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
    elif args.command == "run":
        return run_command(args)
    elif args.command == "export":
        return export_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
