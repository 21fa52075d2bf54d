"""The autosave journal: an append-only record of the labels committed for one image.

A journal is a folder ``<image>.<digest12>.<target>.segsuite-journal`` holding

- ``identity.json``: the image's :class:`~napari_segsuite.core.fingerprint.ImageIdentity`
  (name, shape, dtype, content digest), the target layer's name, shape and dtype;
- one file per change, ``000001.commit.npz``, ``000002.undo.npz``, ...: the
  flat indices and new values of the pixels that change (``flat``, ``values``),
  in order. Nothing is ever overwritten or removed, so replaying every entry
  (:meth:`AutosaveJournal.replay`) gives back the labels after the last change,
  whatever happened to the Labels layer since (deleted, crashed, overwritten).

Every file is written to a temporary file in the journal folder, flushed and
``fsync``-ed, then renamed into place (and the folder ``fsync``-ed): an entry is
either complete or absent. A failed write removes its temporary file and raises
:class:`~napari_segsuite.core.errors.AutosaveError`; the caller shows it. A
replay ignores stray temporary files.

The folder name carries the first 12 hex digits of the image's content digest,
so a journal is found only for the very pixels it was written for: another
image with the same name and shape has a different digest and never sees it.

Pure Python and NumPy; no Qt.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_segsuite.core.errors import AutosaveError
from napari_segsuite.core.fingerprint import ImageIdentity

SUFFIX = ".segsuite-journal"
_ENTRY = re.compile(r"^(\d{6,})\.(\w+)\.npz$")


def safe_name(name: str) -> str:
    """``name`` with everything but letters, digits, ``.``, ``-`` and ``_`` replaced by ``_``."""
    return re.sub(r"[^\w.-]+", "_", str(name)).strip("_") or "unnamed"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(file)`` atomically: temp file, fsync, rename, fsync folder.

    Raises
    ------
    OSError
        When any step fails; the temporary file is removed first.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class Entry:
    """One change recorded in a journal."""

    seq: int
    kind: str
    path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """``(flat indices, values)`` of the change."""
        with np.load(self.path, allow_pickle=False) as z:
            return np.asarray(z["flat"], dtype=np.int64), np.asarray(z["values"])


class AutosaveJournal:
    """The append-only journal of one image's target Labels layer.

    Parameters
    ----------
    folder : path
        Where journals are kept (created on the first write).
    identity : ImageIdentity
        The image the labels belong to.
    target : str
        The Labels layer's name.
    shape, dtype :
        The Labels layer's data shape and dtype.
    """

    def __init__(self, folder, identity: ImageIdentity, target: str, shape: tuple[int, ...], dtype="int32"):
        self.folder = Path(folder)
        self.identity = identity
        self.target = str(target)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.path = self.folder / f"{safe_name(identity.name)}.{identity.digest[:12]}.{safe_name(target)}{SUFFIX}"

    # -- reading -------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the journal holds at least one entry."""
        return bool(self.entries())

    def entries(self) -> list[Entry]:
        """The recorded changes, oldest first (stray temporary files ignored)."""
        if not self.path.is_dir():
            return []
        out = []
        for p in self.path.iterdir():
            m = _ENTRY.match(p.name)
            if m:
                out.append(Entry(int(m.group(1)), m.group(2), p))
        return sorted(out, key=lambda e: e.seq)

    def recorded_identity(self) -> dict | None:
        """The contents of ``identity.json``, or None when there is none."""
        try:
            return json.loads((self.path / "identity.json").read_text())
        except (OSError, ValueError):
            return None

    def check_identity(self) -> None:
        """Raise :class:`AutosaveError` unless the journal was written for this image and shape."""
        rec = self.recorded_identity()
        if rec is None:
            raise AutosaveError(f"The autosave journal {self.path} has no identity record; it is not restored.")
        if not ImageIdentity.from_dict(rec["image"]).same_pixels(self.identity):
            raise AutosaveError(
                f"The autosave journal {self.path.name} belongs to other pixels than image "
                f"'{self.identity.name}'; it is not restored."
            )
        if tuple(rec.get("shape", ())) != self.shape:
            raise AutosaveError(
                f"The autosave journal {self.path.name} has labels of shape {tuple(rec.get('shape', ()))}, "
                f"the layer needs {self.shape}; it is not restored."
            )

    def replay(self) -> np.ndarray:
        """The labels after every recorded change, from an all-zero array.

        Raises
        ------
        AutosaveError
            When the journal belongs to another image or shape, or an entry cannot be read.
        """
        self.check_identity()
        out = np.zeros(self.shape, dtype=self.dtype)
        flat_out = out.reshape(-1)
        for entry in self.entries():
            try:
                flat, values = entry.load()
            except (OSError, ValueError, KeyError) as exc:
                raise AutosaveError(f"The autosave entry {entry.path} cannot be read ({exc}).") from exc
            flat_out[flat] = values
        return out

    def replay_into(self, read, write, *, max_pixels: int = 16 * 1024 * 1024) -> int:
        """Apply every recorded change, oldest first, to labels that live elsewhere (e.g. on disk),
        region by region: memory holds one entry and one region at a time, never the whole array.

        For each entry, the changed pixels of each plane (the leading axes' index) are covered
        by the bounding box of their last two axes, cut into blocks of at most ``max_pixels``;
        each block is read, updated and written back when it changed. Pixels the journal never
        wrote keep their values (:meth:`replay` starts from zeros instead).

        Parameters
        ----------
        read : callable
            ``read(lead, (r0, r1, c0, c1))`` -> the 2D block of plane ``lead`` (a tuple of ints).
        write : callable
            ``write(lead, (r0, r1, c0, c1), block)``.

        Returns
        -------
        int
            The pixel values changed (a pixel changed by several entries counts once per change).

        Raises
        ------
        AutosaveError
            When the journal belongs to another image or shape, or an entry cannot be read.
        """
        import math

        self.check_identity()
        changed = 0
        for entry in self.entries():
            try:
                flat, values = entry.load()
            except (OSError, ValueError, KeyError) as exc:
                raise AutosaveError(f"The autosave entry {entry.path} cannot be read ({exc}).") from exc
            if not flat.size:
                continue
            coords = np.unravel_index(flat, self.shape)
            lead_keys = np.ravel_multi_index(coords[:-2], self.shape[:-2]) if len(self.shape) > 2 else \
                np.zeros(flat.size, dtype=np.int64)
            rows, cols = coords[-2], coords[-1]
            for key in np.unique(lead_keys):
                on = lead_keys == key
                lead = tuple(int(i) for i in np.unravel_index(int(key), self.shape[:-2])) if len(self.shape) > 2 \
                    else ()
                rr, cc, vv = rows[on], cols[on], values[on]
                r0, r1, c0, c1 = int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1
                side = max(1, math.isqrt(int(max_pixels)))
                for br in range(r0, r1, side):
                    for bc in range(c0, c1, side):
                        box = (br, min(r1, br + side), bc, min(c1, bc + side))
                        inside = (rr >= box[0]) & (rr < box[1]) & (cc >= box[2]) & (cc < box[3])
                        if not inside.any():
                            continue
                        block = np.array(read(lead, box), copy=True)
                        before = block[rr[inside] - box[0], cc[inside] - box[2]]
                        new = vv[inside].astype(block.dtype)
                        # the last write of a pixel within one entry wins, as in replay()
                        block[rr[inside] - box[0], cc[inside] - box[2]] = new
                        diff = int(np.count_nonzero(before != new))
                        if diff:
                            write(lead, box, block)
                            changed += diff
        return changed

    # -- writing -------------------------------------------------------------------------
    def _ensure(self) -> None:
        if (self.path / "identity.json").is_file():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"image": self.identity.to_dict(), "target": self.target,
                  "shape": list(self.shape), "dtype": self.dtype.str}
        atomic_write(self.path / "identity.json", lambda f: f.write(json.dumps(record, indent=1).encode()))

    def append(self, coords: tuple[np.ndarray, ...], values: np.ndarray, kind: str = "commit") -> Path:
        """Record that the pixels at ``coords`` (one index array per axis) now hold ``values``.

        Returns
        -------
        Path
            The entry written.

        Raises
        ------
        AutosaveError
            When the folder or the entry cannot be written (no temporary file is left).
        """
        if not re.fullmatch(r"\w+", kind):
            raise ValueError(f"kind must be a word, not {kind!r}")
        flat = np.ravel_multi_index(tuple(np.asarray(c, dtype=np.int64) for c in coords), self.shape)
        values = np.asarray(values, dtype=self.dtype).reshape(-1)
        try:
            self._ensure()
            entries = self.entries()
            seq = entries[-1].seq + 1 if entries else 1
            path = self.path / f"{seq:06d}.{kind}.npz"

            def write(f) -> None:
                np.savez(f, flat=flat.astype(np.int64), values=values)

            atomic_write(path, write)
        except OSError as exc:
            raise AutosaveError(
                f"Autosave failed ({exc.strerror or exc}) in {self.folder}; the labels are still in the layer. "
                "Pick another autosave folder."
            ) from exc
        return path

    def append_difference(self, old: np.ndarray, new: np.ndarray, kind: str = "commit") -> Path | None:
        """Record the pixels where ``new`` differs from ``old`` (whole-layer arrays); None when equal."""
        changed = np.nonzero(np.asarray(old) != np.asarray(new))
        if not changed[0].size:
            return None
        return self.append(changed, np.asarray(new)[changed], kind)

    # -- finding -------------------------------------------------------------------------
    def others(self) -> list[Path]:
        """Journals in the folder for an image of the same name and target but other pixels."""
        if not self.folder.is_dir():
            return []
        prefix, tail = f"{safe_name(self.identity.name)}.", f".{safe_name(self.target)}{SUFFIX}"
        return sorted(p for p in self.folder.iterdir()
                      if p.name.startswith(prefix) and p.name.endswith(tail) and p != self.path)
