"""The job API as its own process (``python -m audio_middleware.jobs``) on 127.0.0.1, driven with
requests, plus the command-line import."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

try:  # works whether or not tests/ is a package
    from tests import media
except ImportError:  # pragma: no cover
    import media

TOKEN, PROJECT = "server-token", "server-project"


def jobs(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audio_middleware.jobs", *argv], capture_output=True, text=True,
                          timeout=60, **kw)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """Start the server on a free port; yield (base URL, data dir, process); stop it with SIGTERM."""
    data = tmp_path / "data"
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "audio_middleware.jobs", "--data-dir", str(data),
                                "--token", f"{TOKEN}:{PROJECT}", "--port", str(port), "--workers", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
    yield base, data, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_import_then_extract_over_http(server, media_dir):
    base, data, process = server
    video = media.make_media("mp4_faststart", media_dir)
    imported = jobs("import", "--data-dir", str(data), "--project", PROJECT, str(video))
    assert imported.returncode == 0, imported.stderr
    asset = json.loads(imported.stdout)
    assert asset["name"] == video.name and asset["size"] == video.stat().st_size

    headers = {"X-Auth-Token": TOKEN}
    created = requests.post(f"{base}/v1.0/{PROJECT}/asset/extract_audio", headers=headers,
                            json={"asset_id": asset["asset_id"], "parameter": {"format": "AAC"}}, timeout=10)
    assert created.status_code == 202
    deadline = time.monotonic() + 20
    while True:
        task = requests.get(f"{base}/v1.0/{PROJECT}/asset/extract_audio", params={"asset_id": asset["asset_id"]},
                            headers=headers, timeout=10).json()
        if task["status"] in ("SUCCEEDED", "FAILED"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert task["status"] == "SUCCEEDED"
    assert task["audio"]["url"] == f"{base}/v1.0/{PROJECT}/asset/{created.json()['audio_asset_id']}/content"
    download = requests.get(task["audio"]["url"], headers=headers, timeout=10)
    frames = [bytes(p[0])[7:] for p in media.audio_packets(download.content, "aac")[0]]
    assert frames == [bytes(p[0]) for p in media.audio_packets(video)[0]]
    part = requests.get(task["audio"]["url"], headers={**headers, "Range": "bytes=0-6"}, timeout=10)
    assert part.status_code == 206 and part.content == download.content[:7]

    uploaded = requests.post(f"{base}/v1.0/{PROJECT}/asset", params={"name": "up.flv"}, headers=headers,
                             data=media.make_media("flv_aac", media_dir).read_bytes(), timeout=10)
    assert uploaded.status_code == 201
    assert requests.get(f"{base}/v1.0/{PROJECT}/asset/extract_audio", params={"asset_id": "x"},
                        timeout=10).status_code == 401

    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0


def test_import_errors(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert jobs("import", "--data-dir", str(tmp_path / "d"), "--project", PROJECT, str(text)).returncode == 3
    assert jobs("import", "--data-dir", str(tmp_path / "d"), "--project", "bad/project", str(text)).returncode == 2
    assert jobs("import", "--data-dir", str(tmp_path / "d"), "--project", PROJECT,
                str(tmp_path / "missing.mp4")).returncode == 2


def test_serve_needs_a_token(tmp_path):
    done = jobs("--data-dir", str(tmp_path / "d"), "--port", "1")
    assert done.returncode == 2 and "--token" in done.stderr
    assert jobs("--data-dir", str(tmp_path / "d"), "--token", "no-project-part").returncode == 2


def test_token_file(tmp_path):
    from audio_middleware.jobs.__main__ import _tokens, serve_parser

    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\nalpha:p1\nbe:ta:p2\n\n")
    args = serve_parser().parse_args(["--data-dir", "x", "--token-file", str(tokens), "--token", "gamma:p3"])
    assert _tokens(args) == {"alpha": "p1", "be:ta": "p2", "gamma": "p3"}
