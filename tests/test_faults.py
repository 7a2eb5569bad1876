"""Faults and load under a real gunicorn (gthread workers, 127.0.0.1, a free port).

The server runs ``tests.fault_apps:app``: the middleware over upstream apps that
serve files in several ways and misbehave on request (see tests/fault_apps.py).
Every upstream body logs ``open``/``close`` lines to a shared file, so after each
test we can prove that each body was closed exactly once, whoever ended it: the
end of the body, an error, or a client that went away. The worker's open file
descriptors and RSS are read from ``/proc/<worker pid>``; the worker is the child
of the gunicorn master.

Proved here:

- clients that disconnect at random points (before the response, after the
  headers, mid-body) leave no unclosed upstream body and no leaked descriptor;
- an upstream that raises mid-body gives the client an incomplete response
  (an error from ``requests``, or fewer bytes than Content-Length), never a clean end;
- a slow upstream still gives the exact rendition;
- 64 concurrent clients mixing plain and flagged requests for a few seconds all
  get complete, correct bodies (plain: the file's bytes; flagged: the rendition
  computed in-process);
- the worker's RSS stays flat over 500 sequential flagged requests.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import random
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from fuzz import fuzz_extract as fz

from . import fault_apps
from .servers import ServerURL, run_gunicorn
from .test_hostile import Movie, chunk_bytes, flv_file, flv_tag

pytestmark = pytest.mark.server

FLAG = "?ali_audio_only=1"
SMALL = ("mp4_faststart", "mp4_moov_end", "mp4_fragmented", "flv_aac")


@dataclass
class FaultServer:
    """The running gunicorn, the folder it serves, and where its upstream bodies log."""

    url: ServerURL
    media_dir: pathlib.Path
    events: pathlib.Path
    expected: dict[str, bytes]

    @property
    def worker(self) -> int:
        children = worker_pids(self.url.pid)
        assert len(children) == 1, f"expected one gunicorn worker, found {children}"
        return children[0]

    def get(self, path: str, session: requests.Session | None = None) -> requests.Response:
        return (session or requests).get(self.url + path, timeout=30)

    def expect(self, path: str) -> bytes:
        """The right body for ``path``: the file's bytes, or the rendition computed in-process."""
        if path not in self.expected:
            outcome = fz.call_wsgi(_in_process_app(self.media_dir), path.partition("?")[2],
                                   PATH_INFO=path.partition("?")[0])
            assert outcome.status.startswith("200") and not outcome.aborted, (path, outcome.status)
            self.expected[path] = outcome.output
        return self.expected[path]


def _in_process_app(media_dir: pathlib.Path) -> fault_apps.FaultApp:
    return fault_apps.FaultApp(fault_apps.FaultyMediaApp(media_dir))


def worker_pids(master: int) -> list[int]:
    """Processes whose parent is ``master`` (from /proc/<pid>/stat)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                found.append(int(entry.name))
    return sorted(found)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def body_events(events: pathlib.Path) -> tuple[set[str], collections.Counter]:
    """(bodies opened, close() calls per body) from the shared log."""
    opened: set[str] = set()
    closes: collections.Counter = collections.Counter()
    if events.exists():
        for line in events.read_text().splitlines():
            what, _, body = line.partition(" ")
            if what == "open":
                opened.add(body)
            elif what == "close":
                closes[body] += 1
    return opened, closes


def assert_every_body_closed_once(server: FaultServer, timeout: float = 15.0) -> int:
    """Wait for the worker to finish what the clients left; then each body has exactly one close()."""
    deadline = time.monotonic() + timeout
    while True:
        opened, closes = body_events(server.events)
        unclosed = opened - set(closes)
        if not unclosed or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not unclosed, f"{len(unclosed)} of {len(opened)} upstream bodies never closed"
    twice = {body: count for body, count in closes.items() if count != 1}
    assert not twice, f"close() called more than once: {dict(list(twice.items())[:5])}"
    assert set(closes) <= opened, "close() on a body that was never opened"
    return len(opened)


def wait_for_fds(pid: int, at_most: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = open_fds(pid)
        if count <= at_most or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def _big_mp4(path: pathlib.Path) -> None:
    """~26 MB: 13 MB of audio in 400 chunks of 32 KiB, interleaved with as much video."""
    path.write_bytes(Movie(chunks=400, per_chunk=1, sample_size=32768, video_size=32768).build())


def _big_flv(path: pathlib.Path) -> None:
    """~26 MB: 200 audio tags and 200 video tags of 64 KiB."""
    tags = []
    for index in range(200):
        tags.append(flv_tag(9, b"\x22" + chunk_bytes("v", index, 65536), index * 40))
        tags.append(flv_tag(8, b"\x2f" + chunk_bytes("a", index, 65536), index * 26))
    path.write_bytes(flv_file(*tags))


@pytest.fixture(scope="module")
def server(media, tmp_path_factory) -> FaultServer:
    folder = tmp_path_factory.mktemp("fault-media")
    for kind in SMALL:
        source = media(kind)
        shutil.copyfile(source, folder / f"{kind}{source.suffix}")
    _big_mp4(folder / "big.mp4")
    _big_flv(folder / "big.flv")
    events = folder / "events.log"
    env = {"FAULT_MEDIA": str(folder), "FAULT_EVENTS": str(events), "FAULT_DELAY": "0.002"}
    # --log-level debug: gunicorn reports each client that vanished mid-write ("Ignoring connection reset").
    with run_gunicorn("tests.fault_apps:app", env=env, workers=1, threads=16,
                      extra_args=("--timeout", "60", "--keep-alive", "5", "--log-level", "debug")) as url:
        fault = FaultServer(url, folder, events, {})
        yield fault
        assert_every_body_closed_once(fault)


def small_paths(server: FaultServer) -> list[str]:
    names = sorted(p.name for p in server.media_dir.iterdir() if p.stem in SMALL)
    return [f"/{mode}/{name}" for name in names for mode in ("file", "stream", "range")]


def test_the_worker_is_the_masters_child(server):
    stats = server.get("/__stats__").json()
    assert stats["pid"] == server.worker


def test_clients_that_disconnect_mid_download(server):
    """60 clients give up at random points; then nothing is left open in the worker."""
    paths = [f"/{mode}/{name}{FLAG}" for name in ("big.mp4", "big.flv", "mp4_moov_end.mp4")
             for mode in ("file", "stream", "range")] + ["/file/big.mp4", "/stream/big.flv"]
    for path in paths:  # warm up: plan cache, imports, thread pool, spooled copies
        assert server.get(path).content == server.expect(path)
    assert_every_body_closed_once(server)
    worker = server.worker
    before = open_fds(worker)
    resets_before = server.url.log().count("Ignoring connection")
    rng = random.Random(20261121)
    for round_ in range(60):
        path = rng.choice(paths)
        if round_ % 6 == 5:  # gone before the response: request sent, socket closed at once
            with socket.create_connection(("127.0.0.1", server.url.port), timeout=5) as raw:
                raw.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            continue
        response = requests.get(server.url + path, stream=True, timeout=30)
        assert response.status_code == 200
        wanted = rng.choice([0, 1, 4096, rng.randrange(1, len(server.expect(path)))])
        got = response.raw.read(wanted) if wanted else b""
        assert server.expect(path).startswith(got)
        response.close()  # drops the connection mid-body
    count = assert_every_body_closed_once(server)
    after = wait_for_fds(worker, before)
    assert after <= before, f"worker holds {after} descriptors, {before} before the disconnects"
    assert count > len(paths)
    # The worker itself saw many of them mid-body (gunicorn logs EPIPE/ECONNRESET at debug level):
    resets = server.url.log().count("Ignoring connection") - resets_before
    assert resets >= 10, f"only {resets} disconnects were noticed while writing: renditions too small?"


def test_upstream_that_raises_mid_body(server):
    """The client must see that the body is incomplete: an error from requests or a short read."""
    for path in ("/raise/big.mp4" + FLAG, "/raise/big.flv" + FLAG, "/raise/big.mp4"):
        response = requests.get(server.url + path, stream=True, timeout=30)
        assert response.status_code == 200
        received = bytearray()
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
            for chunk in response.iter_content(65536):
                received += chunk
            declared = response.headers.get("Content-Length")
            if declared is not None and len(received) < int(declared):
                raise requests.exceptions.ConnectionError(f"short body: {len(received)} of {declared}")
        if path.endswith(FLAG):  # what arrived is the start of the right rendition (same source kind)
            assert server.expect(path.replace("/raise/", "/stream/")).startswith(bytes(received))
    assert_every_body_closed_once(server)


def test_upstream_that_raises_before_the_first_byte(server):
    """moov at the end: the body is spooled before answering, so the failure is a 500 with no body sent."""
    fault = fault_apps.FaultyMediaApp(server.media_dir, raise_at=1000)
    outcome_status = []

    def start_response(status, headers, exc_info=None):
        outcome_status.append(status)

    app = fault_apps.FaultApp(fault)
    with pytest.raises(RuntimeError):
        app({"REQUEST_METHOD": "GET", "PATH_INFO": "/raise/mp4_moov_end.mp4", "QUERY_STRING": "ali_audio_only=1",
             "wsgi.input": None}, start_response)
    assert not outcome_status  # nothing was started: the server turns the exception into a 500
    response = server.get("/raise/mp4_moov_end.mp4" + FLAG)
    assert response.status_code == 500
    assert_every_body_closed_once(server)


def test_slow_upstream(server):
    """An upstream that sleeps before every 64 KiB chunk: slower, still exact."""
    for path in ("/slow/big.mp4" + FLAG, "/slow/big.flv" + FLAG, "/slow/mp4_moov_end.mp4" + FLAG):
        response = server.get(path)
        assert response.status_code == 200
        assert response.content == server.expect(path)
    assert_every_body_closed_once(server)


def test_64_concurrent_clients_mixing_plain_and_flagged_requests(server):
    paths = small_paths(server)
    everything = paths + [path + FLAG for path in paths]
    for path in everything:
        server.expect(path)
    for path in paths:
        assert server.expect(path) == (server.media_dir / path.rsplit("/", 1)[1]).read_bytes()
    deadline = time.monotonic() + 4.0
    done = collections.Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with requests.Session() as session:
            while time.monotonic() < deadline:
                path = rng.choice(everything)
                try:
                    response = server.get(path, session)
                    ok = response.status_code == 200 and response.content == server.expect(path)
                    problem = None if ok else f"{path}: {response.status_code}, {len(response.content)} bytes"
                except requests.RequestException as error:
                    problem = f"{path}: {error!r}"
                with lock:
                    done["flagged" if path.endswith(FLAG) else "plain"] += 1
                    if problem:
                        failures.append(problem)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(client, range(64)))
    assert not failures, f"{len(failures)} bad responses, e.g. {failures[:3]}"
    assert done["flagged"] >= 64 and done["plain"] >= 64, done
    assert_every_body_closed_once(server)


def test_worker_memory_stays_flat_over_500_flagged_requests(server):
    """RSS after 500 flagged requests is within a few MB of RSS after the first 100."""
    paths = [path + FLAG for path in small_paths(server)]
    worker = server.worker
    with requests.Session() as session:
        for index in range(500):
            path = paths[index % len(paths)]
            response = server.get(path, session)
            assert response.status_code == 200 and response.content == server.expect(path)
            if index == 99:
                at_100, fds_100 = rss_kib(worker), open_fds(worker)
    at_500 = rss_kib(worker)
    assert at_500 - at_100 < 4096, f"RSS grew by {at_500 - at_100} KiB between request 100 and 500"
    assert wait_for_fds(worker, fds_100) <= fds_100
    assert_every_body_closed_once(server)
