"""The model store: a cache folder of checkpoints, verified downloads, local files.

Resolution never touches the network. A registry model that is not in the
cache raises :class:`ModelNotAvailableError` naming the file, where to put it
and where to get it; :meth:`ModelStore.download` fetches it when the user asks,
with progress, checksum verification and an atomic rename, so a half-written
file is never taken as a checkpoint.

The cache folder is, in order: the ``cache_dir`` argument, the
``NAPARI_SEGSUITE_CACHE`` environment variable, the platform's user cache
folder (``platformdirs.user_cache_dir("napari-segsuite")``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from napari_segsuite.core.errors import CheckpointError, DownloadError, ModelNotAvailableError
from napari_segsuite.core.progress import Job, Progress
from napari_segsuite.models.registry import REGISTRY, ModelEntry

CACHE_ENV = "NAPARI_SEGSUITE_CACHE"
CHUNK = 1 << 20
_MARKER_SUFFIX = ".sha256.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def default_cache_dir() -> Path:
    """The cache folder used when none is given (see module docstring)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-segsuite"))


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint found on disk, ready for a family's loader.

    Parameters
    ----------
    path : Path
        File or folder.
    family : str
        Runner family that loads it.
    name : str
        Registry name, or the file name for local files.
    entry : ModelEntry, optional
        The registry entry, for registry models.
    sha256 : str, optional
        Checksum of a single-file checkpoint when known.
    trusted : bool
        Whether loading may run pickle code (verified registry file, or a local
        file the user chose themselves).
    class_names : dict of int to str, optional
        Class names that replace the weights' own (a trained model's card).
    card : dict, optional
        A trained model's ``segsuite_model.json`` (see :mod:`napari_segsuite.models.trained`).
    """

    path: Path
    family: str
    name: str
    entry: ModelEntry | None = None
    sha256: str | None = None
    trusted: bool = False
    class_names: dict | None = field(default=None, compare=False, hash=False)
    card: dict | None = field(default=None, compare=False, hash=False)

    def provenance(self) -> dict:
        """Plain-data description for ``layer.metadata``."""
        return {
            "name": self.name,
            "family": str(self.family),
            "path": str(self.path),
            "registry": self.entry is not None,
            "sha256": self.sha256,
            "source": self.entry.url or self.entry.hf_repo if self.entry else ("trained" if self.card else "local"),
        }


class ModelStore:
    """Checkpoints in a cache folder, found offline and downloaded on request.

    Parameters
    ----------
    cache_dir : path-like, optional
        Overrides the default cache folder (see module docstring).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    @property
    def cache_dir(self) -> Path:
        """The folder holding downloaded checkpoints."""
        return self._cache_dir or default_cache_dir()

    @cache_dir.setter
    def cache_dir(self, value: str | os.PathLike | None) -> None:
        self._cache_dir = Path(value).expanduser() if value else None

    # -- where things live -------------------------------------------------
    def path_for(self, entry: ModelEntry) -> Path:
        """Where the checkpoint of ``entry`` lives in the cache (file or folder)."""
        family = entry.extra.get("folder_family", entry.family)
        if entry.is_folder:
            return self.cache_dir / family / entry.hf_repo.replace("/", "--")
        return self.cache_dir / family / entry.filename

    def is_available(self, entry: ModelEntry | str) -> bool:
        """Whether the checkpoint is in the cache (checksums are checked at load)."""
        entry = REGISTRY[entry] if isinstance(entry, str) else entry
        path = self.path_for(entry)
        if entry.is_folder:
            return _folder_complete(path)
        return path.is_file()

    def missing_message(self, entry: ModelEntry) -> str:
        """The one message shown when a registry model is not on this machine."""
        return (
            f"Model '{entry.name}' is not on this machine. Download it with the widget's "
            f"Download button (or ModelStore().download), or, on a machine without internet, "
            f"{self.offline_hint(entry)}"
        )

    def offline_hint(self, entry: ModelEntry) -> str:
        """How to bring a registry model onto a machine without internet."""
        path = self.path_for(entry)
        if entry.is_folder:
            where = (
                f"https://huggingface.co/{entry.hf_repo} (the whole folder: config.json, "
                "the weights and the preprocessor config)"
            )
            what = f"the folder of {entry.hf_repo}"
        else:
            where = entry.url
            what = f"the file {entry.filename}"
        return f"copy {what} from {where} to {path}, or pick a local file or folder instead."

    # -- resolving ---------------------------------------------------------
    def resolve(self, spec: str | os.PathLike | ModelEntry, *, family: str | None = None) -> ModelSource:
        """Find a checkpoint on disk without touching the network.

        Parameters
        ----------
        spec : str, path or ModelEntry
            A registry name, a registry entry, or a path to a local file or folder.
        family : str, optional
            Family of a local checkpoint; detected from its contents when None.

        Returns
        -------
        ModelSource

        Raises
        ------
        ModelNotAvailableError
            A registry model that is not in the cache, or a path that does not exist.
        CheckpointError
            A cached file whose checksum is wrong, or a local file of no known kind.
        """
        if isinstance(spec, ModelEntry):
            return self._resolve_entry(spec)
        text = os.fspath(spec)
        if isinstance(spec, str) and text in REGISTRY:
            return self._resolve_entry(REGISTRY[text])
        path = Path(text).expanduser()
        if not path.exists():
            trained = self._resolve_trained_name(text)
            if trained is not None:
                return trained
            hint = ""
            if isinstance(spec, str) and os.sep not in text and "." not in text:
                import difflib

                close = difflib.get_close_matches(text, REGISTRY, n=3)
                hint = f" Registry models with similar names: {', '.join(close)}." if close else ""
            raise ModelNotAvailableError(
                f"No model file or folder at {path}, and {text!r} is not a registry model name.{hint}"
            )
        from napari_segsuite.models.trained import resolve_trained

        trained = resolve_trained(path)
        if trained is not None:
            return trained
        from napari_segsuite.models.detect import detect_family

        fam = family or detect_family(path)
        return ModelSource(path=path, family=fam, name=path.name, trusted=True)

    def _resolve_trained_name(self, text: str) -> ModelSource | None:
        """A trained model of this model folder named ``text`` or ``trained/<text>`` (None if none)."""
        from napari_segsuite.models.trained import TRAINED_DIR, resolve_trained, trained_root

        name = text.split("/", 1)[1] if text.startswith(TRAINED_DIR + "/") else text
        if not name or "/" in name or os.sep in name or name.startswith("."):
            return None
        folder = trained_root(self.cache_dir) / name
        return resolve_trained(folder) if folder.is_dir() else None

    def trained_models(self, task: str | None = None):
        """Trained models in this model folder (see :func:`napari_segsuite.models.trained.list_trained`)."""
        from napari_segsuite.models.trained import list_trained

        return list_trained(self.cache_dir, task)

    def _resolve_entry(self, entry: ModelEntry) -> ModelSource:
        path = self.path_for(entry)
        if not self.is_available(entry):
            raise ModelNotAvailableError(self.missing_message(entry))
        sha = None
        if not entry.is_folder:
            sha = self._checked_sha256(entry, path)
        return ModelSource(
            path=path, family=entry.family, name=entry.name, entry=entry, sha256=sha,
            trusted=entry.verified,
        )

    def _checked_sha256(self, entry: ModelEntry, path: Path) -> str:
        """Return the file's SHA-256, hashing only when the file changed since last time."""
        stat = path.stat()
        marker = path.with_name(path.name + _MARKER_SUFFIX)
        record = None
        if marker.is_file():
            try:
                record = json.loads(marker.read_text())
            except (OSError, ValueError):
                record = None
        if record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
            digest = record["sha256"]
        else:
            digest = sha256_file(path)
        problem = _checksum_problem(entry, digest)
        if problem:
            raise CheckpointError(
                f"The file {path} does not match the official checkpoint of '{entry.name}' "
                f"({problem}). It is damaged or a different file: delete it and download it again, "
                f"or load it as a local file if it is your own checkpoint."
            )
        if record is None or record.get("sha256") != digest or record.get("size") != stat.st_size:
            _write_marker(marker, path, digest)
        return digest

    # -- downloading -------------------------------------------------------
    def download(self, entry: ModelEntry | str, *, timeout: float = 30.0) -> Job[Path]:
        """Download a registry checkpoint into the cache (a generator yielding Progress).

        The file is written next to its final place under a temporary name,
        verified, then renamed; an interrupted or failed download leaves nothing
        that :meth:`resolve` would accept.

        Returns
        -------
        Path
            The checkpoint's path in the cache.
        """
        entry = REGISTRY[entry] if isinstance(entry, str) else entry
        if self.is_available(entry):
            yield Progress(1, 1, f"{entry.name} is already downloaded")
            return self.path_for(entry)
        if entry.is_folder:
            return (yield from self._download_hf(entry))
        return (yield from self._download_url(entry, timeout=timeout))

    def _download_url(self, entry: ModelEntry, timeout: float) -> Job[Path]:
        import urllib.error
        import urllib.request

        final = self.path_for(entry)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=final.name + ".", suffix=".part", dir=final.parent)
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        done = 0
        try:
            request = urllib.request.Request(entry.url, headers={"User-Agent": "napari-segsuite"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                yield Progress(0, total, f"Downloading {entry.filename}")
                while block := resp.read(CHUNK):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    yield Progress(done, total, f"Downloading {entry.filename}: {done / 1e6:.0f} MB")
            if total is not None and done != total:
                raise DownloadError(
                    f"The download of {entry.filename} stopped after {done} of {total} bytes. Try again."
                )
            digest = h.hexdigest()
            problem = _checksum_problem(entry, digest)
            if problem:
                raise DownloadError(
                    f"The downloaded {entry.filename} failed verification ({problem}); nothing was saved. "
                    "Try again; if it keeps failing the file on the server changed."
                )
            os.replace(tmp, final)
            _write_marker(final.with_name(final.name + _MARKER_SUFFIX), final, digest)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            if isinstance(exc, DownloadError):
                raise
            raise DownloadError(
                f"Could not download {entry.filename} from {entry.url}: {getattr(exc, 'reason', exc)}. "
                f"If this machine is offline, {self.offline_hint(entry)}"
            ) from exc
        finally:
            if tmp.exists():
                tmp.unlink()
        yield Progress(done, done, f"Downloaded {entry.filename}")
        return final

    def _download_hf(self, entry: ModelEntry) -> Job[Path]:
        from napari_segsuite.models.offline import allow_hub_downloads

        final = self.path_for(entry)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".part", dir=final.parent))
        yield Progress(0, None, f"Downloading {entry.hf_repo}")
        try:
            from huggingface_hub import snapshot_download

            with allow_hub_downloads():
                snapshot_download(
                    entry.hf_repo, local_dir=tmp,
                    allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"],
                )
            shutil.rmtree(tmp / ".cache", ignore_errors=True)
            if not _has_weights(tmp):
                raise DownloadError(f"The download of {entry.hf_repo} holds no weights file.")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except DownloadError:
            raise
        except Exception as exc:
            raise DownloadError(
                f"Could not download {entry.hf_repo}: {exc}. If this machine is offline, "
                f"{self.offline_hint(entry)}"
            ) from exc
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        yield Progress(1, 1, f"Downloaded {entry.hf_repo}")
        return final

    def fetch(self, spec, *, family: str | None = None, allow_download: bool = False) -> Job[ModelSource]:
        """Resolve ``spec``, downloading a missing registry model first if allowed."""
        entry = spec if isinstance(spec, ModelEntry) else REGISTRY.get(os.fspath(spec)) if isinstance(spec, str) else None
        if entry is not None and allow_download and not self.is_available(entry):
            yield from self.download(entry)
        return self.resolve(spec, family=family)


def _checksum_problem(entry: ModelEntry, digest: str) -> str | None:
    if entry.sha256 and digest != entry.sha256:
        return f"SHA-256 {digest[:12]}… instead of {entry.sha256[:12]}…"
    if entry.sha256_prefix and not digest.startswith(entry.sha256_prefix):
        return f"SHA-256 {digest[:12]}… does not start with {entry.sha256_prefix}"
    return None


def _write_marker(marker: Path, path: Path, digest: str) -> None:
    stat = path.stat()
    try:
        marker.write_text(json.dumps({"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))
    except OSError:
        pass  # a read-only cache still works; the file is hashed again next time


def _has_weights(folder: Path) -> bool:
    return any((folder / name).is_file() for name in WEIGHT_FILES)


def _folder_complete(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file() and _has_weights(folder)


_DEFAULT_STORE: ModelStore | None = None


def default_store() -> ModelStore:
    """The process-wide store used when none is passed (its folder can be changed)."""
    global _DEFAULT_STORE
    if _DEFAULT_STORE is None:
        _DEFAULT_STORE = ModelStore()
    return _DEFAULT_STORE
