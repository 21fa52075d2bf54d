"""Running job generators in napari's thread workers, with progress and Cancel.

One mechanism for every long job: a generator that yields
:class:`~napari_segsuite.core.progress.Progress` runs in a
``GeneratorWorker`` (superqt's, which napari's ``thread_worker`` is built on;
we take it without napari's error relay so that each failure produces exactly
one notification, with our message). Each yield updates a napari progress bar (and an optional
callback); Cancel asks the worker to quit, which takes effect at the job's
next yield, before any layer is touched (layers are written only in the
``returned`` handler, on the GUI thread). An exception in the job reaches the
user as a napari notification with its message, and the ``on_done`` callback
re-enables the widget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Outcome

log = logging.getLogger(__name__)


class JobRunner:
    """Start, track and cancel one job at a time for a widget.

    Parameters
    ----------
    on_progress : callable, optional
        Called on the GUI thread with every :class:`Progress`.
    on_done : callable, optional
        Called on the GUI thread when a job ends for any reason, with one of
        ``"returned"``, ``"aborted"``, ``"errored"``.
    """

    def __init__(
        self,
        on_progress: Callable[[Progress], None] | None = None,
        on_done: Callable[[str], None] | None = None,
    ):
        self.on_progress = on_progress
        self.on_done = on_done
        self.worker = None
        self._pbar = None
        self.last_error: BaseException | None = None
        #: show jobs in napari's activity dock too. Its "in progress" animation repaints the
        #: main window all along; where OpenGL is software-rendered (no GPU, remote desktops,
        #: Xvfb) that took a third of the CPU from a SAM encoder in the worker.
        self.napari_progress = True

    @property
    def busy(self) -> bool:
        """Whether a job was started and has not ended yet (queued jobs count)."""
        return self.worker is not None

    def start(
        self,
        job_factory: Callable[[], Generator[Progress, None, Any]],
        on_result: Callable[[Any], None],
        description: str = "Working",
    ):
        """Run ``job_factory()`` in a worker; ``on_result(value)`` runs on the GUI thread.

        Returns
        -------
        napari.qt.threading.GeneratorWorker
        """
        from napari.utils import progress
        from superqt.utils import create_worker

        if self.busy:
            raise RuntimeError("A job is already running; cancel it first.")
        self.last_error = None

        def job():
            return (yield from job_factory())

        worker = create_worker(job, _start_thread=False, _connect={"errored": self._on_error})
        self._pbar = progress(total=0, desc=description) if self.napari_progress else None
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(lambda value: self._on_returned(value, on_result))
        worker.aborted.connect(self._on_aborted)
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next yield."""
        if self.worker is not None:
            self.worker.quit()

    def wait(self, timeout: float, what: str = "The job") -> None:
        """Process Qt events until the job has ended (headless runs and smoke checks).

        Raises
        ------
        TimeoutError
            After cancelling the job, when it runs longer than ``timeout`` seconds.
        """
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.busy:
            if time.monotonic() > end:
                self.cancel()
                raise TimeoutError(f"{what} did not finish within {timeout:.0f} s.")
            QApplication.processEvents()
            time.sleep(0.01)
        QApplication.processEvents()

    # -- handlers (GUI thread) --------------------------------------------------
    def _on_yielded(self, item) -> None:
        if not isinstance(item, Progress) or self.worker is None:
            return  # a late report from a job that already ended
        # The widget first: updating napari's progress bar can process events,
        # during which the job may end.
        if self.on_progress is not None:
            self.on_progress(item)
        pbar = self._pbar
        if pbar is not None:
            pbar.total = item.total or 0
            pbar.n = item.step if item.total else 0
            if item.message:
                pbar.set_description(item.message)
            else:
                pbar.refresh()

    def _finish(self, how: Outcome) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        if self.on_done is not None:
            self.on_done(how)

    def _on_returned(self, value, on_result) -> None:
        try:
            on_result(value)
        except Exception as exc:  # writing the result failed: tell the user, keep the widget usable
            from napari.utils.notifications import show_error

            self.last_error = exc
            log.exception("Writing the result failed")
            show_error(str(exc))
            self._finish(Outcome.ERRORED)
            return
        self._finish(Outcome.RETURNED)

    def _on_aborted(self) -> None:
        from napari.utils.notifications import show_info

        show_info("Cancelled; no layer was changed.")
        self._finish(Outcome.ABORTED)

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from napari_segsuite.core.errors import SegSuiteError

        self.last_error = exc
        if isinstance(exc, SegSuiteError):
            log.info("Job failed: %s", exc)
            show_error(str(exc))
        else:
            log.error("Job failed", exc_info=exc)
            show_error(f"{type(exc).__name__}: {exc}")
        self._finish(Outcome.ERRORED)
