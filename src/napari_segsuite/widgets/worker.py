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

Shutdown: closing a dock (napari's ``remove_dock_widget``, which the dock's
close button calls, or its widget destroyed; see :meth:`JobRunner.stop_with`)
or quitting the application (``QApplication.aboutToQuit``) cancels every
running job and drops its result, so no job outlives the window that shows it
and none writes into the layers after its dock is gone; work without yield
points of its own (model loading) runs through
:func:`napari_segsuite.core.threads.call_in_background`, so the cancel takes
effect at once. Hiding a dock (its title bar's hide button) cancels nothing:
the dock stays in the window's menu and shows the job's outcome when reopened.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any

from napari_segsuite.core.progress import Progress
from napari_segsuite.core.vocabulary import Outcome

log = logging.getLogger(__name__)

#: every JobRunner alive, cancelled together when the application quits
_RUNNERS: weakref.WeakSet = weakref.WeakSet()
_QUIT_HOOKED = False


def cancel_all_jobs() -> int:
    """Cancel the jobs of every :class:`JobRunner`; returns how many were running."""
    running = [r for r in list(_RUNNERS) if r.busy]
    for runner in running:
        runner.shutdown()
    return len(running)


def _hook_application_quit() -> None:
    global _QUIT_HOOKED
    if _QUIT_HOOKED:
        return
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(cancel_all_jobs)
        _QUIT_HOOKED = True


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
        #: set by :meth:`shutdown`: no result is written and no message shown afterwards
        self.closed = False
        #: CPU niceness added to the job thread (and the library threads it starts), set before
        #: the first job: long work then takes only the CPU time that the GUI leaves
        self.nice = 0
        #: the notification of a Cancel (a job that writes as it goes says what stays)
        self.abort_message = "Cancelled; no layer was changed."
        self._job_thread = None
        #: set once the last started job has ended on the job thread (its generator finished or
        #: closed, so its clean-up ran), or when it was cancelled before it began. After a
        #: Cancel the worker ends at once while the job may still run to its next yield.
        self.job_ended = threading.Event()
        self.job_ended.set()
        self._submitted = False
        self._stop_job = threading.Event()
        #: the Qt widget the jobs belong to (:meth:`stop_with`)
        self._widget = None
        #: set by :meth:`detach`: the running job's result is dropped whenever it arrives
        self._drop_result = False
        _RUNNERS.add(self)

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
        if self.closed:
            raise RuntimeError("This widget was closed; no new job can start.")
        _hook_application_quit()
        self._watch_dock()
        self.last_error = None
        self._drop_result = False

        self.job_ended = threading.Event()
        self._submitted = False
        job = self._relay(job_factory)
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
            self._stop_job.set()

    def _relay(self, job_factory):
        """The worker's generator: relays the job, which runs on this runner's own job thread.

        The job generator is driven on a persistent daemon :class:`ServiceThread`
        (one per runner, so its OpenMP team stays warm between jobs); the
        worker only passes its progress on and wakes every 50 ms. Cancel and
        closing therefore end the worker at once, even while the job sits in
        one long library call (a model's first prediction importing
        ``torch._dynamo`` took seconds): the job itself stops at its next
        yield, its result dropped, and the next job waits for it on the job thread.
        """
        import queue
        import threading

        from napari_segsuite.core.threads import ServiceThread

        if self._job_thread is None:
            self._job_thread = ServiceThread("segsuite-job", keep="all", nice=self.nice)
        items: queue.SimpleQueue = queue.SimpleQueue()
        # Set by cancel() and shutdown(): the worker does not close this generator when it
        # aborts, so the job thread learns of a Cancel from the event, not from relay's end.
        stop = self._stop_job = threading.Event()
        ended = self.job_ended

        def drive() -> None:
            try:
                gen = job_factory()
                item = next(gen)
                while True:
                    items.put(("yield", item))
                    if stop.is_set():
                        gen.close()
                        items.put(("stopped", None))
                        return
                    item = next(gen)
            except StopIteration as end:
                items.put(("return", end.value))
            except BaseException as exc:  # delivered to the worker, which reports it
                items.put(("error", exc))
            finally:
                ended.set()

        def relay():
            self._submitted = True
            self._job_thread.submit(drive)
            try:
                while True:
                    try:
                        kind, value = items.get(timeout=0.05)
                    except queue.Empty:
                        yield None  # where the worker's quit takes effect
                        continue
                    if kind == "yield":
                        yield value
                    elif kind == "return":
                        return value
                    elif kind == "error":
                        raise value
                    else:  # stopped after a Cancel: the worker aborts at its next step
                        while True:
                            yield None
            finally:
                stop.set()

        return relay

    def shutdown(self) -> None:
        """Cancel the running job for good: its result is dropped and nothing is written.

        Called when the dock or the viewer closes. The job stops at its next
        yield; model loading yields every 50 ms (it runs on a daemon thread).
        """
        self.closed = True
        worker = self.worker
        if worker is not None:
            from napari_segsuite.core.threads import job_interrupted_by_exit

            job_interrupted_by_exit()
            worker.quit()
            self._stop_job.set()
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None

    def detach(self) -> None:
        """Cancel the running job because its dock left the window; its result is dropped.

        Unlike :meth:`cancel`, the result is dropped even when the job has already
        returned and its result waits to be written; unlike :meth:`shutdown`, the runner
        can start jobs again (a script may dock the same widget again). The job ends as
        a Cancel does (``on_done("aborted")``), with a notification that says so.
        """
        if self.worker is None or self.closed:
            return
        self._drop_result = True
        self.cancel()

    def stop_with(self, qwidget) -> None:
        """Tie the jobs to ``qwidget``: a dock's widget, or a panel's widget inside a dock.

        Destroying ``qwidget`` shuts the runner down for good (:meth:`shutdown`). Taking
        the dock that holds ``qwidget`` out of the window detaches the running job
        (:meth:`detach`): napari's ``remove_dock_widget`` (also what the dock's close
        button calls) takes the dock's widget out of its ``QDockWidget`` and deletes only
        the ``QDockWidget``, so the widget itself lives on while Python holds it and its
        ``destroyed`` signal may come late or never. Hiding the dock does neither.
        """
        self._widget = qwidget
        # A bound method, which PyQt holds weakly: when the garbage collector frees a closed
        # dock's widgets together with this runner, the slot is not called (a closure would
        # be, with its variables already cleared, and abort the process).
        qwidget.destroyed.connect(self._on_widget_destroyed)

    def _on_widget_destroyed(self, *_) -> None:
        self.shutdown()

    def _watch_dock(self) -> None:
        """Watch the dock content that holds this runner's widget for leaving its dock."""
        widget = self._widget
        if widget is None:
            return
        try:
            content = _dock_content(widget)
            if content is None or content.property(_WATCHED):
                return
            content.setProperty(_WATCHED, True)
            _ParentWatch(content)
        except RuntimeError:  # the widget was deleted
            return

    def owned_by(self, content) -> bool:
        """Whether this runner's widget is ``content`` or inside it."""
        widget = self._widget
        if widget is None:
            return False
        try:
            return widget is content or content.isAncestorOf(widget)
        except RuntimeError:
            return False

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
        if not isinstance(item, Progress) or self.worker is None or self.closed:
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
        if self.closed:  # the dock or viewer closed meanwhile: its layers are not written
            self.worker = None
            return
        if self._drop_result:  # the dock left the window after the job had returned
            self._on_aborted()
            return
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

        if not self._submitted:  # cancelled before the job began: it never will
            self.job_ended.set()

        if self.closed:
            self.worker = None
            return
        if self._drop_result:
            self._drop_result = False
            message = self.abort_message
            show_info("The dock was closed: " + message[:1].lower() + message[1:])
        else:
            show_info(self.abort_message)
        self._finish(Outcome.ABORTED)

    def _on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from napari_segsuite.core.errors import SegSuiteError

        self.last_error = exc
        if self.closed:  # closing ended the job; what it ran into afterwards is no news
            log.debug("A job of a closed widget ended with %r", exc)
            self.worker = None
            return
        if self._drop_result:
            log.debug("A job of a closed dock ended with %r", exc)
            self._on_aborted()
            return
        if isinstance(exc, SegSuiteError):
            log.info("Job failed: %s", exc)
            show_error(str(exc))
        else:
            log.error("Job failed", exc_info=exc)
            show_error(f"{type(exc).__name__}: {exc}")
        self._finish(Outcome.ERRORED)


#: property set on a dock's content widget once a :class:`_ParentWatch` watches it
_WATCHED = "segsuite_job_watch"


def _dock_content(widget):
    """The widget a ``QDockWidget`` holds that is ``widget`` or contains it, or None."""
    from qtpy.QtWidgets import QDockWidget

    while widget is not None:
        parent = widget.parentWidget()
        if isinstance(parent, QDockWidget):
            return widget
        widget = parent
    return None


def _ParentWatch(content):
    """Detach the running jobs inside ``content`` when it is taken out of its ``QDockWidget``."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QDockWidget

    class Watch(QObject):
        def eventFilter(self, obj, event):
            if event.type() == QEvent.Type.ParentChange and not isinstance(obj.parentWidget(), QDockWidget):
                for runner in [r for r in list(_RUNNERS) if r.busy and r.owned_by(obj)]:
                    try:
                        runner.detach()
                    except Exception:  # an exception in an event filter would abort the process
                        log.exception("Stopping a job of a closed dock failed")
            return False

    watch = Watch(content)
    content.installEventFilter(watch)
    return watch
