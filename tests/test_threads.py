"""ServiceThread: one persistent thread, newest-request-only queues, errors delivered, clean close."""

import os
import sys
import threading

import pytest

from napari_segsuite.core.threads import ServiceThread, keep_thread_heaps_warm


def _blocker():
    """A call that holds the thread until released, and an event set once it runs."""
    started, release = threading.Event(), threading.Event()

    def call():
        started.set()
        release.wait(10)
        return "blocker"

    return call, started, release


def test_latest_keeps_only_the_newest_waiting_call_on_one_thread():
    service = ServiceThread("t-latest", keep="latest")
    outcomes, idents = [], []
    call, started, release = _blocker()
    service.submit(call, outcomes.append)
    assert started.wait(10)
    for i in range(4):
        service.submit(lambda i=i: idents.append(threading.get_ident()) or i, outcomes.append)
    assert service.pending == 1
    release.set()
    assert service.wait_idle(10)
    assert [o.value for o in outcomes if not o.dropped] == ["blocker", 3]
    assert [o.ticket for o in outcomes if o.dropped] == [2, 3, 4]
    # later calls run on the same OS thread
    service.submit(lambda: idents.append(threading.get_ident()), outcomes.append)
    assert service.wait_idle(10)
    assert len(set(idents)) == 1 and idents[0] == service.thread.ident
    assert service.calls_run == 3
    assert service.close()
    assert not service.thread.is_alive()


def test_all_runs_in_order_and_errors_are_delivered():
    service = ServiceThread("t-all", keep="all")
    outcomes = []
    for i in range(3):
        service.submit(lambda i=i: i, outcomes.append)
    service.submit(lambda: 1 / 0, outcomes.append)
    assert service.wait_idle(10)
    assert [o.value for o in outcomes[:3]] == [0, 1, 2]
    assert isinstance(outcomes[3].error, ZeroDivisionError)
    service.close()


def test_close_drops_waiting_calls_and_refuses_new_ones():
    service = ServiceThread("t-close", keep="all")
    outcomes = []
    call, started, release = _blocker()
    service.submit(call, outcomes.append)
    assert started.wait(10)
    service.submit(lambda: "never", outcomes.append)
    threading.Timer(0.2, release.set).start()
    assert service.close(timeout=10)
    assert [(o.value, o.dropped) for o in outcomes] == [(None, True), ("blocker", False)]
    with pytest.raises(RuntimeError):
        service.submit(lambda: None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are Linux's")
def test_nice_lowers_the_priority_of_the_thread_only():
    service = ServiceThread("t-nice", keep="all", nice=19)
    seen = []
    service.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    assert service.wait_idle(10)
    service.close()
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning")
def test_heap_tuning_is_applied_once(monkeypatch):
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    monkeypatch.setenv("NAPARI_SEGSUITE_MALLOC_TUNING", "1")  # opt-in: it changes the whole process
    assert keep_thread_heaps_warm() is True
    assert keep_thread_heaps_warm() is True
