"""Hash-checked downloads against a loopback HTTP server: good hash, bad hash, server down."""

import hashlib
import http.server
import socket
import threading

import pytest

from pathseg.demo import fetch_demo_slide
from pathseg.download import DownloadError, download, install_local
from pathseg.errors import PathsegError

PAYLOAD = b"pathseg test payload " * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            if self.path != "/file.bin":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_good_hash(server, tmp_path):
    seen = []
    path = download(f"{server}/file.bin", tmp_path / "f.bin", SHA, progress=lambda d, t, m: seen.append((d, t)))
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))


def test_bad_hash_discards_the_file(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(f"{server}/file.bin", tmp_path / "f.bin", "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_not_found_and_server_down(server, tmp_path):
    with pytest.raises(DownloadError, match="404|Not Found"):
        download(f"{server}/missing.bin", tmp_path / "f.bin", SHA)
    with pytest.raises(DownloadError, match="could not download"):
        download(f"http://127.0.0.1:{_closed_port()}/file.bin", tmp_path / "f.bin", SHA, timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_install_local_checks_hash(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    assert install_local(src, tmp_path / "cache" / "f.bin", SHA).read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="mismatch"):
        install_local(src, tmp_path / "cache" / "g.bin", "1" * 64)


def test_demo_slide_offline_message_says_what_to_do(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/CMU-1-Small-Region.svs"
    with pytest.raises(PathsegError) as info:
        fetch_demo_slide(url, wheel=None, dest=tmp_path / "slide.svs", timeout=2)
    msg = str(info.value)
    assert "ed92d5a9" in msg and "--slide" in msg and str(tmp_path / "slide.svs") in msg


def test_demo_slide_wrong_content_is_refused(server, tmp_path):
    with pytest.raises(PathsegError, match="sha256 mismatch"):
        fetch_demo_slide(f"{server}/file.bin", wheel=None, dest=tmp_path / "slide.svs", timeout=5)
    assert not (tmp_path / "slide.svs").exists()
