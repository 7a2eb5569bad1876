"""Measuring tools: a gunicorn server on loopback, a streaming HTTP client, worker RSS, in-process WSGI runs."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import requests

MiB = 1024 * 1024
CHUNK = MiB
REPO = pathlib.Path(__file__).resolve().parent.parent


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ------------------------------------------------------------------------------------------------
# HTTP client
# ------------------------------------------------------------------------------------------------


@dataclass
class Fetch:
    """One download: status, body bytes, time to first body byte and total time (seconds)."""

    status: int
    nbytes: int
    ttfb: float
    total: float
    headers: dict = field(default_factory=dict)


def fetch(session: requests.Session, url: str, sink: Callable[[bytes], object] | None = None,
          chunk: int = CHUNK) -> Fetch:
    """GET ``url`` with ``stream=True``, read the body in ``chunk``-sized blocks, return timings."""
    start = time.perf_counter()
    with session.get(url, stream=True, timeout=600) as response:
        blocks = response.iter_content(chunk)
        if response.raw.chunked:
            # urllib3 decodes chunked bodies itself (one HTTP chunk per block at most): the first block
            # arrives with the first chunk the server wrote.
            first = next(blocks, b"")
        else:
            first = response.raw.read(1)
        ttfb = time.perf_counter() - start
        count = len(first)
        if sink is not None and first:
            sink(first)
        for block in blocks:
            count += len(block)
            if sink is not None:
                sink(block)
        total = time.perf_counter() - start
        headers = dict(response.headers)
    length = headers.get("Content-Length")
    if length is not None and int(length) != count:
        raise RuntimeError(f"{url}: got {count} bytes, Content-Length said {length}")
    return Fetch(response.status_code, count, ttfb, total, headers)


def summarize(fetches: list[Fetch]) -> dict:
    """Median and samples of a list of downloads of the same URL."""
    if not fetches:
        return {}
    return {
        "ttfb_s": median(f.ttfb for f in fetches),
        "total_s": median(f.total for f in fetches),
        "bytes": fetches[0].nbytes,
        "status": fetches[0].status,
        "ttfb_min_s": min(f.ttfb for f in fetches),
        "total_min_s": min(f.total for f in fetches),
        "ttfb_samples": [round(f.ttfb, 6) for f in fetches],
        "total_samples": [round(f.total, 6) for f in fetches],
    }


def concurrent_downloads(urls: list[str], per_thread: int) -> dict:
    """Each URL downloaded ``per_thread`` times by its own thread, all threads started together."""
    sessions = [requests.Session() for _ in urls]
    go = threading.Event()
    results: list[list[Fetch]] = [[] for _ in urls]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        go.wait()
        try:
            for _ in range(per_thread):
                results[index].append(fetch(sessions[index], urls[index]))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(urls))]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    for session in sessions:
        session.close()
    if errors:
        raise errors[0]
    total_bytes = sum(f.nbytes for fetched in results for f in fetched)
    return {"wall_s": wall, "bytes": total_bytes, "MBps": total_bytes / wall / 1e6,
            "latency_median_s": median(f.total for fetched in results for f in fetched)}


# ------------------------------------------------------------------------------------------------
# gunicorn
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


class Server:
    """``gunicorn -k gthread`` serving :func:`bench.apps.make_server_app` on 127.0.0.1 at a free port.

    With ``store`` (a directory), ``/stored/...`` is served by a middleware with that rendition store.
    """

    def __init__(self, media_dir: pathlib.Path, *, workers: int = 1, threads: int = 4,
                 log_path: pathlib.Path | None = None, store: pathlib.Path | None = None) -> None:
        self.media_dir = media_dir
        self.store = store
        self.workers = workers
        self.threads = threads
        self.log_path = log_path or media_dir / "gunicorn.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(self.workers),
                "--threads", str(self.threads), "--bind", f"127.0.0.1:{self.port}", "--timeout", "600",
                "--keep-alive", "120", "--log-level", "warning", "--pythonpath", str(REPO),
                f"bench.apps:make_server_app({str(self.media_dir)!r}, "
                f"{str(self.store) if self.store is not None else None!r})"]

    def start(self, timeout: float = 30) -> Server:
        for _attempt in range(3):
            self.port = free_port()
            log = open(self.log_path, "ab")
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=str(REPO))
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if requests.get(self.url + "/health", timeout=2).ok and len(self.worker_pids()) >= self.workers:
                        return self
                except requests.ConnectionError:
                    pass
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"gunicorn did not start, see {self.log_path}")

    def worker_pids(self) -> list[int]:
        return children(self.process.pid) if self.process else []

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------------
# memory of a process
# ------------------------------------------------------------------------------------------------


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class PeakRSS:
    """Peak resident memory of ``pid`` while the ``with`` block runs, in bytes.

    Uses the kernel's high-water mark (VmHWM, reset through ``clear_refs``) so that
    nothing is missed and nothing polls; falls back to sampling VmRSS every ms.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.before)

    def __enter__(self) -> PeakRSS:
        self.before = status_kb(self.pid, "VmRSS") * 1024
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kb(self.pid, "VmRSS") * 1024)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        else:
            self.peak = status_kb(self.pid, "VmHWM") * 1024


# ------------------------------------------------------------------------------------------------
# in-process WSGI
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    status: str
    nbytes: int
    seconds: float
    first_s: float
    headers: dict


def run_wsgi(app: Callable, path: str, query: str = "", sink: Callable[[bytes], object] | None = None,
             consume: bool = True) -> Run:
    """Call ``app`` for GET ``path?query`` and iterate its whole body; no server, no socket."""
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(path=path, query_string=query).get_environ()
    answer: dict = {}

    def start_response(status: str, headers: list, exc_info: object = None) -> Callable:
        answer["status"], answer["headers"] = status, dict(headers)
        return lambda data: None

    start = time.perf_counter()
    body = app(environ, start_response)
    first = time.perf_counter() - start
    count = 0
    try:
        if consume:
            for block in body:
                count += len(block)
                if sink is not None:
                    sink(block)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    return Run(answer.get("status", ""), count, time.perf_counter() - start, first, answer.get("headers", {}))


def ffmpeg_path() -> str | None:
    return os.environ.get("BENCH_FFMPEG") or shutil.which("ffmpeg")


def time_ffmpeg(ffmpeg: str, source: pathlib.Path, out: pathlib.Path) -> float:
    """Wall time of ``ffmpeg -y -i IN -vn -c:a copy OUT`` (OUT on local disk)."""
    start = time.perf_counter()
    subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(source), "-vn", "-c:a", "copy", str(out)],
                   check=True)
    return time.perf_counter() - start
