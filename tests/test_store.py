"""The model store: offline resolution, verified downloads from a local server, no partial files."""

import hashlib
import http.server
import threading
import time
from functools import partial

import pytest

from napari_segsuite.core.errors import CheckpointError, DownloadError, ModelNotAvailableError
from napari_segsuite.core.progress import run_sync
from napari_segsuite.models.registry import ENTRIES, REGISTRY, ModelEntry, entries_for, get_entry
from napari_segsuite.models.store import ModelStore, default_cache_dir


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/short/"):
            # Announce more bytes than are sent: a connection cut mid-download.
            body = b"x" * 1000
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return
        super().do_GET()


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the client hangs up on purpose in the truncation test


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = _QuietServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


def _entry(url, sha=None, prefix=None, name="test_model"):
    return ModelEntry(name=name, family="sam", tasks=("prompt",), title="t", url=url, sha256=sha, sha256_prefix=prefix)


def test_registry_has_the_official_sam_checksums():
    assert get_entry("sam_vit_b").sha256 == "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"
    assert get_entry("sam_vit_l").sha256 == "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"
    assert get_entry("sam_vit_h").sha256 == "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"
    assert get_entry("sam_vit_b").url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"
    families = {e.family for e in ENTRIES}
    assert {"sam", "sam2", "yolo", "torchvision", "segformer", "mask2former"} <= families
    assert {e.name for e in entries_for("panoptic")} >= {"mask2former_swin_tiny_coco_panoptic"}
    with pytest.raises(KeyError, match="Did you mean sam_vit_b"):
        get_entry("sam_vitb")


def test_cache_dir_from_env_and_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SEGSUITE_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert ModelStore().cache_dir == tmp_path / "env"
    assert ModelStore(tmp_path / "arg").cache_dir == tmp_path / "arg"


def test_missing_registry_model_gives_one_clear_message_without_network(tmp_path):
    store = ModelStore(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as err:
        store.resolve("sam_vit_b")
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert "sam_vit_b_01ec64.pth" in msg
    assert str(tmp_path / "sam" / "sam_vit_b_01ec64.pth") in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg
    with pytest.raises(ModelNotAvailableError, match=r"config\.json"):
        store.resolve("segformer_b0_ade")
    with pytest.raises(ModelNotAvailableError, match="not a registry model"):
        store.resolve(str(tmp_path / "nothing.pth"))


def test_download_verifies_and_renames_atomically(tmp_path, server):
    root, base = server
    payload = b"weights" * 100_000
    (root / "m.pth").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    store = ModelStore(tmp_path / "cache")
    entry = _entry(base + "m.pth", sha=sha)
    steps = []
    path = run_sync(store.download(entry), steps.append)
    assert path.read_bytes() == payload
    assert steps[-1].message.startswith("Downloaded") and steps[1].total == len(payload)
    assert not list(path.parent.glob("*.part"))
    source = store.resolve(entry)
    assert source.sha256 == sha and source.trusted
    # A second resolve uses the checksum record instead of hashing again.
    assert (path.parent / (path.name + ".sha256.json")).is_file()


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, server):
    root, base = server
    (root / "m.pth").write_bytes(b"not the real file")
    store = ModelStore(tmp_path / "cache")
    entry = _entry(base + "m.pth", sha="0" * 64)
    with pytest.raises(DownloadError, match="failed verification"):
        run_sync(store.download(entry))
    assert not any((tmp_path / "cache").rglob("*m.pth*"))
    assert not store.is_available(entry)


def test_truncated_download_leaves_nothing(tmp_path, server):
    _, base = server
    store = ModelStore(tmp_path / "cache")
    entry = _entry(base + "short/m.pth")
    with pytest.raises(DownloadError):
        run_sync(store.download(entry))
    assert not any((tmp_path / "cache").rglob("*m.pth*"))


def test_cancelled_download_leaves_no_partial_file(tmp_path, server):
    root, base = server
    (root / "big.pth").write_bytes(b"z" * (5 << 20))
    store = ModelStore(tmp_path / "cache")
    job = store.download(_entry(base + "big.pth"))
    next(job)
    next(job)
    job.close()  # what a worker's Cancel does to the generator
    assert not any((tmp_path / "cache").rglob("big.pth*"))


def test_unreachable_server_is_a_clear_error(tmp_path):
    store = ModelStore(tmp_path)
    entry = _entry("http://127.0.0.1:9/m.pth")
    with pytest.raises(DownloadError, match=r"Could not download m.pth.*copy the file m.pth"):
        run_sync(store.download(entry, timeout=5))


def test_damaged_cached_file_is_rejected(tmp_path):
    store = ModelStore(tmp_path)
    entry = REGISTRY["sam_vit_b"]
    path = store.path_for(entry)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    with pytest.raises(CheckpointError, match="does not match the official checkpoint"):
        store.resolve("sam_vit_b")


def test_torchvision_prefix_checksum(tmp_path):
    payload = b"abc"
    digest = hashlib.sha256(payload).hexdigest()
    store = ModelStore(tmp_path)
    good = _entry("http://x/a-" + digest[:8] + ".pth", prefix=digest[:8], name="good")
    bad = _entry("http://x/b-deadbeef.pth", prefix="deadbeef", name="bad")
    for e in (good, bad):
        p = store.path_for(e)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(payload)
    assert store.resolve(good).sha256 == digest
    with pytest.raises(CheckpointError):
        store.resolve(bad)


def test_folder_models_need_config_and_weights(tmp_path):
    store = ModelStore(tmp_path)
    entry = REGISTRY["segformer_b0_ade"]
    folder = store.path_for(entry)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "segformer"}')
    assert not store.is_available(entry)  # no weights yet: an unfinished copy
    (folder / "model.safetensors").write_bytes(b"")
    assert store.is_available(entry)
    assert store.resolve("segformer_b0_ade").family == "segformer"
