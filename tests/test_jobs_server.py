"""The job API as its own process (``python -m audio_middleware.jobs``) on 127.0.0.1, driven with
requests, plus the command-line import."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

try:  # works whether or not tests/ is a package
    from tests import media
    from tests.servers import run_gunicorn
except ImportError:  # pragma: no cover
    import media
    from servers import run_gunicorn

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


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.server
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs /proc to count threads")
def test_gunicorn_preload_with_two_workers(tmp_path, media_dir):
    """``gunicorn --preload --workers 2``: the master runs no job thread, the workers extract every task once."""
    data = tmp_path / "data"
    env = {"AM_JOBS_DIR": str(data), "AM_JOBS_TOKEN": TOKEN, "AM_JOBS_PROJECT": PROJECT}
    videos = [media.make_media(kind, media_dir) for kind in ("mp4_faststart", "flv_aac", "mp4_moov_end")]
    with run_gunicorn("tests.jobs_preload_app:application", env=env, workers=2, threads=4,
                      extra_args=["--preload"]) as url:
        base, headers = str(url), {"X-Auth-Token": TOKEN}
        tasks = {}
        for _ in range(2):  # several requests, so that both workers may serve some
            for video in videos:
                imported = jobs("import", "--data-dir", str(data), "--project", PROJECT, str(video))
                assert imported.returncode == 0, imported.stderr
                asset = json.loads(imported.stdout)["asset_id"]
                created = requests.post(f"{base}/v1.0/{PROJECT}/asset/extract_audio", headers=headers,
                                        json={"asset_id": asset, "parameter": {"format": "AAC"}}, timeout=10)
                assert created.status_code == 202, created.text
                tasks[asset] = (video, created.json()["audio_asset_id"])
        deadline = time.monotonic() + 60
        pending = set(tasks)
        while pending:
            assert time.monotonic() < deadline, f"tasks not done: {pending}"
            for asset in list(pending):
                task = requests.get(f"{base}/v1.0/{PROJECT}/asset/extract_audio", params={"asset_id": asset},
                                    headers=headers, timeout=10).json()
                assert task["status"] != "FAILED", task
                if task["status"] == "SUCCEEDED":
                    pending.discard(asset)
            time.sleep(0.1)
        for video, audio_id in tasks.values():
            download = requests.get(f"{base}/v1.0/{PROJECT}/asset/{audio_id}/content", headers=headers, timeout=10)
            assert download.status_code == 200
            frames = [bytes(p[0])[7:] for p in media.audio_packets(download.content, "aac")[0]]
            assert frames == [bytes(p[0]) for p in media.audio_packets(video)[0]]
        assert threads_of(url.process.pid) == 1  # the master: built the app, started nothing
        workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(url.process.pid)], capture_output=True,
                                                      text=True).stdout.split()]
        assert len(workers) == 2
        with contextlib.closing(sqlite3.connect(data / "jobs.sqlite3")) as db:
            attempts = [row[0] for row in db.execute("SELECT attempts FROM tasks")]
        assert attempts == [1] * len(tasks)  # each task claimed once, by a worker (the master runs no thread)
