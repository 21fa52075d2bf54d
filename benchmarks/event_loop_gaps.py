"""What the GUI thread does while the event loop stalls: a heartbeat, a sampler and CPU accounting.

:class:`GapMonitor` runs a 10 ms ``QTimer`` heartbeat on the GUI thread and a watchdog
thread. While no beat has come for ``threshold_s``, the watchdog samples the GUI thread's
Python stack (``sys._current_frames``) and reads the Linux scheduler statistics of every
thread of the process (``/proc/self/task/<tid>/schedstat``: time on a CPU, time waiting
for one; the X server's main thread too). Between stalls it keeps reading them every
``sample_s``, and the heartbeat reads the GUI thread's, so a gap's accounting starts where
the gap started. For each gap it then reports how long the GUI thread ran, how long it
waited for a CPU (runnable but not scheduled: the cores were busy) and how long it slept
(waiting for the GIL, a lock, or nothing), with the stack it was seen in most and the
other threads that ran meanwhile. Used by ``bench_sam_session.py``; Linux only for the
CPU accounting (elsewhere the stacks alone).

The watchdog's sampling takes the GIL and a CPU share, so it lengthens the gaps it
describes (a click with no job at all: about 100 ms with it, 72 ms without). The figures
to quote come from a monitor with ``detail=False``, the heartbeat alone.
"""

from __future__ import annotations

import bisect
import collections
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass, field


def _read_schedstat(path: str) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) from a ``schedstat`` file; zeros when unknown."""
    try:
        with open(path) as f:
            run_ns, wait_ns, _ = f.read().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def _schedstat(tid: int) -> tuple[float, float]:
    """The CPU accounting of thread ``tid`` of this process."""
    return _read_schedstat(f"/proc/self/task/{tid}/schedstat")


def _thread_names() -> dict[int, str]:
    names = {}
    for t in threading.enumerate():
        if t.native_id is not None:
            names[t.native_id] = t.name
    try:
        for tid in os.listdir("/proc/self/task"):
            if int(tid) not in names:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    names[int(tid)] = f.read().strip()
    except OSError:
        pass
    return names


def _all_schedstats() -> dict[int, tuple[float, float]]:
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return {}
    stats = {tid: _schedstat(tid) for tid in tids}
    for pid in _x_servers():
        stats[-pid] = _read_schedstat(f"/proc/{pid}/schedstat")  # its main thread
    return stats


_X_SERVERS: list[int] | None = None


def _x_servers() -> list[int]:
    """The process ids of the X servers (Xvfb, Xorg) on this machine: they draw what Qt sends."""
    global _X_SERVERS
    if _X_SERVERS is None:
        found = []
        try:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/comm") as f:
                            if f.read().strip() in ("Xvfb", "Xorg"):
                                found.append(int(pid))
                    except OSError:
                        continue
        except OSError:
            pass
        _X_SERVERS = found
    return _X_SERVERS


def _stack_text(frame, depth: int = 6) -> str:
    """The innermost ``depth`` frames, innermost first (no source lines read: cheap enough to sample)."""
    lines = []
    while frame is not None and len(lines) < depth:
        code = frame.f_code
        lines.append(f"{os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(lines)


@dataclass
class Gap:
    """One stall of the event loop."""

    start: float
    seconds: float
    offset_s: float = 0.0
    gui_run_s: float = 0.0
    gui_wait_cpu_s: float = 0.0
    stacks: collections.Counter = field(default_factory=collections.Counter)
    others_run_s: dict = field(default_factory=dict)
    others_wait_s: dict = field(default_factory=dict)
    other_stacks: collections.Counter = field(default_factory=collections.Counter)

    @property
    def gui_sleep_s(self) -> float:
        """Neither running nor runnable: waiting for the GIL, a lock, or an event."""
        return max(0.0, self.seconds - self.gui_run_s - self.gui_wait_cpu_s)

    def describe(self, top: int = 3) -> str:
        others = sorted(self.others_run_s.items(), key=lambda kv: -kv[1])[:6]
        lines = [
            f"gap {1000 * self.seconds:.0f} ms at {self.offset_s:.2f} s: GUI thread ran {1000 * self.gui_run_s:.0f} ms, "
            f"waited for a CPU {1000 * self.gui_wait_cpu_s:.0f} ms, slept {1000 * self.gui_sleep_s:.0f} ms; "
            "other threads ran (waited for a CPU): "
            + ", ".join(f"{n} {1000 * s:.0f} ({1000 * self.others_wait_s.get(n, 0):.0f}) ms" for n, s in others)
        ]
        for stack, n in self.stacks.most_common(top):
            lines.append(f"    GUI {n:3d}x {stack}")
        for stack, n in self.other_stacks.most_common(top):
            lines.append(f"    other {n:3d}x {stack}")
        return "\n".join(lines)


class GapMonitor:
    """Heartbeat on the GUI thread plus a sampling watchdog; use as a context manager.

    Parameters
    ----------
    interval_ms : int
        The heartbeat period.
    threshold_s : float
        A stall longer than this is sampled and reported as a :class:`Gap`.
    sample_s : float
        Seconds between two samples of the stacks during a stall.
    detail : bool
        Run the watchdog (stacks and CPU accounting of each gap). It takes the GIL and a
        CPU share while it samples, which lengthens the gaps it describes; without it
        only the heartbeat runs, and :attr:`largest_s` is the figure to quote.
    """

    def __init__(self, interval_ms: int = 10, threshold_s: float = 0.05, sample_s: float = 0.02,
                 detail: bool = True):
        self.interval_ms = interval_ms
        self.sample_s = sample_s
        self.threshold_s = threshold_s
        self.detail = detail
        self.beats: list[float] = []
        self.gaps: list[Gap] = []
        self._stop = threading.Event()
        self._gui_ident = threading.get_ident()
        self._gui_tid = threading.get_native_id()
        self._timer = None
        self._thread = None
        #: Python garbage collections while the monitor ran: (start, end, generation).
        self.collections: list[tuple[float, float, int]] = []
        self._gc_started: float | None = None

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.collections.append((self._gc_started, time.perf_counter(), int(info.get("generation", -1))))
            self._gc_started = None

    def gc_within(self, start: float, end: float) -> tuple[float, int]:
        """Seconds that Python's garbage collector ran between ``start`` and ``end`` (any
        thread), and the oldest generation it collected there (-1: none)."""
        seconds, oldest = 0.0, -1
        for a, b, generation in self.collections:
            overlap = min(b, end) - max(a, start)
            if overlap > 0:
                seconds += overlap
                oldest = max(oldest, generation)
        return seconds, oldest

    def _beat(self) -> None:
        self.beats.append(time.perf_counter())
        if self.detail:
            self._gui_stat = _schedstat(self._gui_tid)  # the GUI thread's CPU accounting at its last beat

    def __enter__(self) -> GapMonitor:
        from qtpy.QtCore import QTimer

        self.beats = [time.perf_counter()]
        self._t0 = self.beats[0]
        self._gui_stat = _schedstat(self._gui_tid)
        self._timer = QTimer()
        self._timer.setInterval(self.interval_ms)
        self._timer.timeout.connect(self._beat)
        self._timer.start()
        gc.callbacks.append(self._gc)
        if self.detail:
            self._thread = threading.Thread(target=self._watch, name="gap-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.stop()
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def largest_s(self) -> float:
        """The longest interval between two beats (seconds)."""
        if len(self.beats) < 2:
            return float("nan")
        return max(b - a for a, b in zip(self.beats, self.beats[1:], strict=False))

    def _watch(self) -> None:
        names = _thread_names()
        for pid in _x_servers():
            names[-pid] = f"X server {pid}"
        snapshots: collections.deque = collections.deque(maxlen=16)  # (time, schedstats), for the gap's start
        current: Gap | None = None
        before: dict = {}
        last_seen = None
        while not self._stop.is_set():
            time.sleep(self.sample_s)
            if current is None:
                snapshots.append((time.perf_counter(), _all_schedstats()))
            last = self.beats[-1]
            now = time.perf_counter()
            stalled = now - last > self.threshold_s
            if stalled and current is None:
                idents = {t.ident: t.name for t in threading.enumerate()}
                current = Gap(start=last, seconds=0.0, offset_s=last - self._t0)
                # the other threads as last read before the gap began
                earlier = [snap for when, snap in snapshots if when <= last]
                before = earlier[-1] if earlier else (snapshots[0][1] if snapshots else _all_schedstats())
                before[self._gui_tid] = self._gui_stat  # exact for the GUI thread: read at the last beat
                last_seen = last
            if current is not None:
                frames = sys._current_frames()
                frame = frames.get(self._gui_ident)
                if frame is not None:
                    current.stacks[_stack_text(frame)] += 1
                for ident, other in frames.items():
                    if str(idents.get(ident, "")).startswith("segsuite"):
                        text = _stack_text(other, 3)
                        if "wait" not in text and "get " not in text:
                            current.other_stacks[f"{idents.get(ident, ident)}: {text}"] += 1
                if self.beats[-1] != last_seen:  # the loop beat again: the gap ended
                    after = _all_schedstats()
                    # the first beat after the stall ended it (the watchdog may notice a few beats later)
                    beats = self.beats[:]
                    current.seconds = beats[bisect.bisect_right(beats, current.start)] - current.start
                    g0, g1 = before.get(self._gui_tid, (0, 0)), after.get(self._gui_tid, (0, 0))
                    current.gui_run_s, current.gui_wait_cpu_s = g1[0] - g0[0], g1[1] - g0[1]
                    names.update(_thread_names())
                    for tid, (run, wait) in after.items():
                        if tid != self._gui_tid and tid in before:
                            ran = run - before[tid][0]
                            if ran > 0.002 or wait - before[tid][1] > 0.002:
                                name = f"{names.get(tid, tid)}[{tid}]"
                                current.others_run_s[name] = ran
                                current.others_wait_s[name] = wait - before[tid][1]
                    self.gaps.append(current)
                    current = None

    def report(self, top: int = 5) -> str:
        """The largest gaps, described."""
        if not self.detail:
            return "not sampled (detail=False)"
        worst = sorted(self.gaps, key=lambda g: -g.seconds)[:top]
        return "\n".join(g.describe() for g in worst) or "no gap above the threshold"
