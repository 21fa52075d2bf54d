"""Long-lived compute threads: one OS thread reused for every call (no Qt).

Why not a fresh worker per call: PyTorch's CPU kernels run on an OpenMP
thread team that belongs to the calling thread, and glibc gives each thread
its own malloc arena. A new thread builds both afresh, which made a SAM prompt
decode more than twice as slow in a freshly started worker (``benchmarks/bench_sam.py``). A :class:`ServiceThread`
keeps one thread, and therefore one warm team, for its whole life;
:func:`keep_thread_heaps_warm` removes the remaining gap to the main thread
(worker-thread heaps that glibc unmaps as soon as they are free) when the user
opts in (``NAPARI_SEGSUITE_MALLOC_TUNING=1``).

Two ways to queue work:

- ``keep="latest"`` (interactive previews): only the newest pending call
  runs; older pending calls are dropped (their callback gets ``dropped=True``),
  so a burst of prompt changes decodes once, for the last prompts.
- ``keep="all"`` (background prefetch): calls run in order.

``nice`` lowers the thread's CPU priority on Linux (``setpriority`` on the
thread id, inherited by the OpenMP team the thread starts afterwards): a
background encode then only takes the CPU time that foreground work leaves.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a call submitted to a :class:`ServiceThread` came to."""

    ticket: int
    value: Any = None
    error: BaseException | None = None
    dropped: bool = False
    info: dict = field(default_factory=dict)


class ServiceThread:
    """One persistent daemon thread that runs submitted calls.

    Parameters
    ----------
    name : str
        The thread's name (shown by debuggers and ``threading.enumerate()``).
    keep : {"latest", "all"}
        Run only the newest pending call, or every call in order.
    nice : int
        Added CPU niceness of the thread (Linux only; 0 leaves it unchanged).
    """

    def __init__(self, name: str, *, keep: str = "latest", nice: int = 0):
        if keep not in ("latest", "all"):
            raise ValueError("keep must be 'latest' or 'all'")
        self.name = name
        self.keep = keep
        self.nice = nice
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._ticket = 0
        self._closed = False
        self._running: int | None = None
        self.calls_run = 0
        self._thread: threading.Thread | None = None

    # -- state --------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        """The OS thread (started on the first call), or None."""
        return self._thread

    @property
    def busy(self) -> bool:
        """Whether a call is running or waiting."""
        with self._cond:
            return self._running is not None or bool(self._queue)

    @property
    def pending(self) -> int:
        """How many calls wait (not counting the running one)."""
        with self._cond:
            return len(self._queue)

    # -- use ----------------------------------------------------------------
    def submit(self, func: Callable[[], Any], done: Callable[[Outcome], None] | None = None) -> int:
        """Queue ``func()``; ``done(outcome)`` is called on this thread afterwards.

        Returns the call's ticket. With ``keep="latest"`` a call still waiting
        is dropped (``done`` gets ``Outcome(dropped=True)``, on the caller's thread).
        """
        dropped = []
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._ticket += 1
            ticket = self._ticket
            if self.keep == "latest":
                dropped = list(self._queue)
                self._queue.clear()
            self._queue.append((ticket, func, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
                _LIVE.add(self)
            self._cond.notify_all()
        for old_ticket, _, old_done in dropped:
            if old_done is not None:
                old_done(Outcome(old_ticket, dropped=True))
        return ticket

    def has_newer_than(self, ticket: int) -> bool:
        """Whether a call submitted after ``ticket`` is waiting (a running call may stop early)."""
        with self._cond:
            return bool(self._queue) and self._queue[-1][0] > ticket

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no call runs or waits; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._running is None and not self._queue, timeout)

    def close(self, timeout: float | None = 5.0) -> bool:
        """Drop the waiting calls, let the running one finish, end the thread.

        Returns whether the thread ended within ``timeout`` (it is a daemon
        thread, so a call that never returns cannot block the interpreter's exit).
        """
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        for ticket, _, done in dropped:
            if done is not None:
                done(Outcome(ticket, dropped=True))
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- the thread ---------------------------------------------------------
    def _lower_priority(self) -> None:
        if not self.nice or not hasattr(os, "setpriority"):
            return
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError:  # not permitted or not Linux: run at normal priority
            log.debug("Could not lower the priority of %s", self.name)

    def _loop(self) -> None:
        keep_thread_heaps_warm()
        self._lower_priority()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if self._closed and not self._queue:
                    self._running = None
                    self._cond.notify_all()
                    return
                ticket, func, done = self._queue.popleft()
                self._running = ticket
            outcome = Outcome(ticket)
            try:
                outcome.value = func()
            except BaseException as exc:  # delivered to the caller, never lost in the thread
                outcome.error = exc
            self.calls_run += 1
            if done is not None:
                try:
                    done(outcome)
                except Exception:
                    log.exception("%s: the completion callback failed", self.name)
            with self._cond:
                self._running = None
                self._cond.notify_all()


_HEAPS_TUNED = False


def keep_thread_heaps_warm() -> bool:
    """Let worker threads reuse their freed memory the way the main thread does (glibc only; once).

    glibc gives every thread but the main one its own malloc arena, whose heaps
    are unmapped or shrunk as soon as their top is free, while the main arena
    keeps up to a dynamic threshold. PyTorch's CPU tensors of a few MB
    (SAM's upsampled masks, the encoder's activations) then page-fault afresh
    on every call in a worker, so a SAM prompt decode is slower in a
    persistent thread than on the main thread (``benchmarks/bench_sam.py``),
    the same with ``MALLOC_ARENA_MAX=1``. Fixing the thresholds (what the main thread
    reaches dynamically: 32 MB mmap threshold) with a 64 MB top pad and a
    128 MB trim threshold makes both equally fast. Memory handed back to the
    system is that much later, for the whole process (napari and every other
    plugin): so it is opt-in, with ``NAPARI_SEGSUITE_MALLOC_TUNING=1`` in the
    environment; without it this does nothing.

    Returns whether the tuning is in effect.
    """
    global _HEAPS_TUNED
    if _HEAPS_TUNED:
        return True
    if os.environ.get("NAPARI_SEGSUITE_MALLOC_TUNING", "0") != "1" or not sys.platform.startswith("linux"):
        return False
    _HEAPS_TUNED = False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's malloc.h
        ok = (libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_top_pad, 64 << 20) == 1
              and libc.mallopt(m_trim_threshold, 128 << 20) == 1)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    _HEAPS_TUNED = bool(ok)
    return _HEAPS_TUNED


_LIBC = None


def release_freed_memory() -> bool:
    """Hand the free pages of every malloc heap back to the system (glibc's ``malloc_trim``).

    glibc keeps memory freed in a heap (and a worker thread's arena) mapped for reuse, and
    its dynamic mmap threshold moves large blocks (a chunk's float tensors and arrays) from
    fresh mappings into those heaps after the first ones are freed. A loop over hundreds of
    chunks of different sizes then leaves the resident memory growing with the number of
    chunks, although nothing is alive. Called between chunks, this keeps the resident memory
    at what one chunk needs. A no-op where the C library is not glibc.

    Returns whether memory was handed back.
    """
    global _LIBC
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _LIBC is None:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
        return bool(_LIBC.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        _LIBC = False
        return False


_LIVE: weakref.WeakSet = weakref.WeakSet()
#: threads of :func:`call_in_background` calls still running
_BACKGROUND: weakref.WeakSet = weakref.WeakSet()
#: set by :func:`job_interrupted_by_exit`: a job was cut short by closing the application
_INTERRUPTED = threading.Event()


def job_interrupted_by_exit() -> None:
    """Note that a running job was cancelled because its window or the application closed.

    At exit (:func:`_close_all`) the interpreter then skips its last full garbage
    collection: the half-finished job's objects (models, tensors, arrays) and the
    viewer's are freed by reference counting or left to the operating system, which
    makes the exit seconds shorter on a loaded machine.
    """
    _INTERRUPTED.set()


#: seconds :func:`_close_all` waits, in all, for running calls at exit
EXIT_GRACE = 2.0


@atexit.register
def _close_all() -> None:
    """End every service thread before the interpreter finalises (a thread inside torch then could crash it).

    Waiting calls are dropped; running ones get :data:`EXIT_GRACE` seconds in all to end.
    A call still running after that ends the process at once (:func:`_exit_now`). When a
    job was cut short by the exit (:func:`job_interrupted_by_exit`), every live object is
    frozen (``gc.freeze``) so that the interpreter's final collection does not walk them
    (the other exit handlers still run). ``NAPARI_SEGSUITE_HARD_EXIT=0`` turns both off.
    """
    import time

    services = list(_LIVE)
    for service in services:
        service.close(timeout=0)
    end = time.monotonic() + EXIT_GRACE
    ended = True
    for service in services:
        ended &= service.close(timeout=max(0.0, end - time.monotonic()))
    for thread in list(_BACKGROUND):
        thread.join(max(0.0, end - time.monotonic()))
        ended &= not thread.is_alive()
    if os.environ.get("NAPARI_SEGSUITE_HARD_EXIT", "1") == "0":
        return
    if not ended:
        _exit_now()
    if _INTERRUPTED.is_set():
        import gc

        gc.freeze()


def _exit_now() -> None:
    """End the process at once: a thread is still inside a library call at exit.

    Finalising the interpreter under a running torch/ultralytics call aborts the
    process ("terminate called without an active exception", exit 134) or waits
    for the call. Streams and logging are flushed first; the exit status is 0
    (the application was quitting normally). ``NAPARI_SEGSUITE_HARD_EXIT=0`` turns this off.
    """
    import logging as _logging

    log.warning("A segsuite job was still running at exit; ending the process without waiting for it.")
    _logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to write
            pass
    os._exit(0)


def call_in_background(func: Callable[[], Any], message: str = "Working", *, poll: float = 0.05):
    """A job that runs ``func()`` on its own daemon thread and yields while waiting.

    Used for work that has no yield points of its own (loading a model: library
    imports, reading weights). The calling job stays responsive: each yield is
    where Cancel takes effect, so Cancel and closing the viewer return at once;
    the abandoned call finishes on its daemon thread (which never keeps the
    process alive) and its result or error is dropped.

    Parameters
    ----------
    func : callable
        The call to make.
    message : str
        The progress message yielded while waiting.
    poll : float
        Seconds between yields.

    Yields
    ------
    Progress
        An indeterminate progress item every ``poll`` seconds.

    Returns
    -------
    Any
        ``func()``'s value (its exception is raised in the job).
    """
    from napari_segsuite.core.progress import Progress

    box: dict = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # re-raised in the job; dropped when the job was abandoned
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=target, name=f"segsuite-{message[:40]}", daemon=True)
    _BACKGROUND.add(thread)
    thread.start()
    while not done.wait(poll):
        yield Progress(0, None, message)
    if "error" in box:
        raise box["error"]
    return box["value"]
