"""Progress messages yielded by long-running generators, and a synchronous driver.

Every long job in napari-segsuite is a generator: it yields :class:`Progress`
objects (and nothing else), and its ``return`` value is the result. napari's
``thread_worker`` runs such a generator in the GUI; :func:`run_sync` drains it
in scripts and tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

Job = Generator["Progress", None, T]


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Parameters
    ----------
    step : int
        Steps done so far.
    total : int or None
        Total number of steps, or None when unknown.
    message : str
        Short text for the progress bar.
    partial : object, optional
        A partial result the GUI may show before the job ends.
    """

    step: int
    total: int | None = None
    message: str = ""
    partial: Any = None

    @property
    def fraction(self) -> float | None:
        """Completed fraction in [0, 1], or None when the total is unknown."""
        if not self.total:
            return None
        return min(1.0, max(0.0, self.step / self.total))


def run_sync(job: Job[T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Run a job generator to completion in the calling thread.

    Parameters
    ----------
    job : generator
        A generator yielding :class:`Progress` and returning a result.
    on_progress : callable, optional
        Called with every yielded :class:`Progress`.

    Returns
    -------
    object
        The generator's return value.
    """
    while True:
        try:
            item = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(item)


def subjob(job: Job[T], offset: int = 0, total: int | None = None, prefix: str = ""):
    """Re-yield a nested job's progress shifted into an outer job's range.

    Use as ``result = yield from subjob(inner(), offset, total, "Loading: ")``.
    """
    while True:
        try:
            item = next(job)
        except StopIteration as stop:
            return stop.value
        yield Progress(
            step=offset + item.step if total is not None else item.step,
            total=total if total is not None else item.total,
            message=prefix + item.message,
            partial=item.partial,
        )


def json_row(row: dict) -> dict:
    """A training-history row ready for JSON: floats rounded to 5 places, NaN/inf as None."""
    out = {}
    for key, value in row.items():
        if isinstance(value, float):
            out[key] = round(value, 5) if math.isfinite(value) else None
        else:
            out[key] = value
    return out
