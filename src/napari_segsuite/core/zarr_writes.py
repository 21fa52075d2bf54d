"""Waiting out zarr's chunk writes after one of them failed.

zarr (v3) writes the chunks of one assignment as concurrent tasks on its IO event loop and
raises the first failure at once, while the other chunks' tasks go on writing in the
background. A caller that reports the failure, retries, or deletes the output right then
races those writes: a retry's chunk can be overwritten by a stale one, a removed folder can
be re-created, and a full disk can stay full for a while after the error.
:func:`settle_zarr_writes` waits until zarr's IO loop runs nothing else, so that when a write
of ours raises, none of its chunks is still being written.
"""

from __future__ import annotations

#: The longest a failed write waits for its other chunk writes to end (seconds).
SETTLE_SECONDS = 60.0


def settle_zarr_writes(timeout: float = SETTLE_SECONDS) -> bool:
    """Wait until every task on zarr's IO loop, other than this wait, has ended.

    Parameters
    ----------
    timeout
        Seconds to wait at most.

    Returns
    -------
    bool
        True when nothing was left running, False when ``timeout`` passed first or zarr's
        loop could not be reached (then nothing is waited for).
    """
    import asyncio

    try:
        from zarr.core.sync import sync
    except ImportError:
        return False

    async def others_ended() -> bool:
        me = asyncio.current_task()
        running = {t for t in asyncio.all_tasks() if t is not me and not t.done()}
        if not running:
            return True
        _, pending = await asyncio.wait(running, timeout=timeout)
        return not pending

    try:
        return bool(sync(others_ended(), timeout=timeout + 5))
    except (RuntimeError, TimeoutError):
        return False
