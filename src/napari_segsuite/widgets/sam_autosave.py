"""The SAM dock's committed work: the autosave journal and the recovery of a deleted target.

:class:`SamAutosave` keeps one :class:`~napari_segsuite.core.journal.AutosaveJournal`
per (image pixels, target layer name): every commit, undo, redo, delete and restore
appends the pixels it changed; nothing is ever overwritten. A target layer that was
deleted is rebuilt from the journal before the next commit writes into it; *Restore
autosave* replays it. The image is recognised by its content digest, so another image
of the same name and shape never receives these labels.

No Qt; layers are read and written on the GUI thread by the dock.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import AutosaveError
from napari_segsuite.core.fingerprint import ImageIdentity
from napari_segsuite.core.journal import AutosaveJournal


class SamAutosave:
    """One append-only journal per (image pixels, target layer) for the SAM dock."""

    def __init__(self):
        self._identities: dict[tuple, ImageIdentity] = {}
        self.last_error: AutosaveError | None = None
        self.last_entry: Path | None = None

    def identity(self, image, version_key: tuple) -> ImageIdentity:
        """The image's identity, computed once per ``version_key`` (layer id and data version)."""
        key = (*version_key, image.name)
        if key not in self._identities:
            data = image.data[0] if getattr(image, "multiscale", False) else image.data
            self._identities = {key: ImageIdentity.of(data, image.name)}  # only the current image is kept
        return self._identities[key]

    def journal(self, folder: Path, image, version_key: tuple, target) -> AutosaveJournal:
        """The journal of ``target``'s labels for ``image`` in ``folder``."""
        return AutosaveJournal(folder, self.identity(image, version_key), target.name, target.data.shape,
                               target.data.dtype)

    def record(self, journal: AutosaveJournal, coords: tuple, values: np.ndarray, kind: str) -> AutosaveError | None:
        """Append a change; returns the error instead of raising (the commit itself stands)."""
        try:
            self.last_entry = journal.append(coords, values, kind) if len(coords[0]) else self.last_entry
            self.last_error = None
        except AutosaveError as exc:
            self.last_error = exc
        return self.last_error

    @staticmethod
    def restore(journal: AutosaveJournal, target) -> int:
        """Write the journal's labels into ``target`` (one undo step); returns the pixels changed.

        Raises
        ------
        AutosaveError
            When the journal is for other pixels or shape, or cannot be read.
        """
        saved = journal.replay()
        changed = np.nonzero(np.asarray(target.data) != saved)
        if changed[0].size:
            target.data_setitem(changed, saved[changed])
        return int(changed[0].size)
