"""WSGI apps that misbehave on purpose, for the fault tests under a real gunicorn.

``tests/test_faults.py`` runs ``gunicorn tests.fault_apps:app``; everything is
configured through environment variables (gunicorn passes its environment on to
its workers):

``FAULT_MEDIA``
    folder of media files, served as ``/<mode>/<file name>``.
``FAULT_EVENTS``
    file to which every upstream body appends ``open <id>`` when it is created and
    ``close <id>`` on each ``close()`` call (one ``write`` per line on an
    ``O_APPEND`` descriptor, so lines from threads and workers never interleave).
    The tests prove with it that each body is closed exactly once, whoever ended
    the response (end of body, error, client gone).
``FAULT_CHUNK``
    size of the chunks of iterable bodies (default 65536).
``FAULT_DELAY``
    seconds slept before each chunk of a ``/slow/`` body (default 0.002).
``FAULT_RAISE_AT``
    byte offset at which a ``/raise/`` body raises (default: half of the file).

Modes, every one wrapped in :class:`~audio_middleware.AudioOnlyMiddleware`:

``/file/<name>``
    werkzeug ``send_file``: ``wsgi.file_wrapper``, so random access for flagged
    requests and sendfile for plain ones.
``/stream/<name>``
    a forward-only iterable body with Content-Length (moov-at-end files get spooled).
``/range/<name>``
    an iterable body from an app that honours single byte ranges (``Accept-Ranges:
    bytes``), so the middleware uses Range sub-requests instead of spooling.
``/slow/<name>``
    forward-only, sleeping ``FAULT_DELAY`` before every chunk.
``/raise/<name>``
    forward-only, raises ``RuntimeError`` once ``FAULT_RAISE_AT`` bytes were sent.
``/__stats__``
    (not wrapped) JSON facts about the worker that answers: pid, open file
    descriptors, RSS in KiB, thread count.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from werkzeug.http import parse_range_header
from werkzeug.utils import send_file

from audio_middleware import AudioOnlyMiddleware

CONTENT_TYPES = {".mp4": "video/mp4", ".m4a": "audio/mp4", ".mov": "video/quicktime", ".flv": "video/x-flv"}
_ids = itertools.count()
_lock = threading.Lock()


class EventLog:
    """Append-only ``open``/``close`` lines in a file shared by every worker and thread."""

    def __init__(self, path: str | None) -> None:
        self.path = path

    def record(self, what: str, body_id: str) -> None:
        if not self.path:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{what} {body_id}\n".encode())
        finally:
            os.close(fd)


def new_id() -> str:
    with _lock:
        return f"{os.getpid()}-{next(_ids)}"


class TrackedBody:
    """An iterable body that logs its creation and every close(); may sleep or raise on the way."""

    def __init__(self, chunks: Iterable[bytes], log: EventLog, *, delay: float = 0.0,
                 raise_at: int | None = None) -> None:
        self._chunks = iter(chunks)
        self._log = log
        self._delay = delay
        self._raise_at = raise_at
        self._sent = 0
        self.id = new_id()
        log.record("open", self.id)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._raise_at is not None and self._sent >= self._raise_at:
            raise RuntimeError(f"upstream failure after {self._sent} bytes (FAULT_RAISE_AT)")
        if self._delay:
            time.sleep(self._delay)
        chunk = next(self._chunks)
        if self._raise_at is not None and self._sent + len(chunk) > self._raise_at:
            chunk = chunk[:self._raise_at - self._sent]
        self._sent += len(chunk)
        return chunk

    def close(self) -> None:
        self._log.record("close", self.id)


def _chunks(path: pathlib.Path, size: int, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(start)
        left = (stop if stop is not None else path.stat().st_size) - start
        while left > 0:
            block = handle.read(min(size, left))
            if not block:
                return
            left -= len(block)
            yield block


class FaultyMediaApp:
    """The upstream application: serves ``media_dir`` in the mode named by the first path segment."""

    def __init__(self, media_dir: str | os.PathLike, events: str | None = None, chunk: int = 65536,
                 delay: float = 0.002, raise_at: int | None = None) -> None:
        self.media_dir = pathlib.Path(media_dir)
        self.log = EventLog(events)
        self.chunk = chunk
        self.delay = delay
        self.raise_at = raise_at

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        if len(parts) != 2 or "/" in parts[1] or parts[1].startswith("."):
            return _plain(start_response, "404 Not Found", b"no such route\n")
        mode, name = parts
        path = self.media_dir / name
        if not path.is_file():
            return _plain(start_response, "404 Not Found", b"no such file\n")
        content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        size = path.stat().st_size
        headers = [("Content-Type", content_type), ("ETag", f'"{name}-{int(path.stat().st_mtime)}"')]
        if mode == "file":
            return self._file(environ, start_response, path, content_type, headers[1])
        if mode == "range":
            return self._range(environ, start_response, path, headers)
        if mode not in ("stream", "slow", "raise"):
            return _plain(start_response, "404 Not Found", b"no such mode\n")
        start_response("200 OK", headers + [("Content-Length", str(size))])
        return TrackedBody(_chunks(path, self.chunk), self.log, delay=self.delay if mode == "slow" else 0.0,
                           raise_at=(self.raise_at if self.raise_at is not None else size // 2)
                           if mode == "raise" else None)

    def _file(self, environ: dict, start_response: Callable, path: pathlib.Path, content_type: str,
              etag: tuple[str, str]) -> Iterable[bytes]:
        response = send_file(str(path), environ, mimetype=content_type, conditional=True, etag=False)
        response.headers["ETag"] = etag[1]
        app_iter = response(environ, start_response)
        body_id = new_id()
        self.log.record("open", body_id)
        original_close = getattr(app_iter, "close", None)

        def close() -> None:
            self.log.record("close", body_id)
            if original_close is not None:
                original_close()

        app_iter.close = close  # type: ignore[attr-defined]
        return app_iter

    def _range(self, environ: dict, start_response: Callable, path: pathlib.Path,
               headers: list[tuple[str, str]]) -> Iterable[bytes]:
        size = path.stat().st_size
        headers = headers + [("Accept-Ranges", "bytes")]
        wanted = parse_range_header(environ.get("HTTP_RANGE"))
        found = wanted.range_for_length(size) if wanted else None
        if found is None:
            start_response("200 OK", headers + [("Content-Length", str(size))])
            return TrackedBody(_chunks(path, self.chunk), self.log)
        start, stop = found
        start_response("206 Partial Content", headers + [("Content-Length", str(stop - start)),
                                                         ("Content-Range", f"bytes {start}-{stop - 1}/{size}")])
        return TrackedBody(_chunks(path, self.chunk, start, stop), self.log)


def _plain(start_response: Callable, status: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def worker_stats() -> dict:
    """pid, open descriptors, RSS (KiB) and threads of the current process, from /proc."""
    status = pathlib.Path("/proc/self/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"pid": os.getpid(), "fds": len(os.listdir("/proc/self/fd")),
            "rss_kb": int(fields.get("VmRSS", "0 kB").split()[0]), "threads": threading.active_count()}


class FaultApp:
    """The whole application gunicorn serves: /__stats__, else the middleware over the faulty upstream."""

    def __init__(self, upstream: FaultyMediaApp, **middleware_options) -> None:
        self.upstream = upstream
        self.middleware = AudioOnlyMiddleware(upstream, **middleware_options)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/__stats__":
            body = json.dumps(worker_stats()).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return self.middleware(environ, start_response)


def from_environment(environ: dict | None = None) -> FaultApp:
    """The app as configured by the FAULT_* variables (see the module docstring)."""
    env = os.environ if environ is None else environ
    raise_at = env.get("FAULT_RAISE_AT")
    upstream = FaultyMediaApp(env.get("FAULT_MEDIA", "."), env.get("FAULT_EVENTS") or None,
                              chunk=int(env.get("FAULT_CHUNK", "65536")), delay=float(env.get("FAULT_DELAY", "0.002")),
                              raise_at=int(raise_at) if raise_at else None)
    return FaultApp(upstream)


class _LazyApp:
    """``tests.fault_apps:app``: built from the environment on the first request (in the worker)."""

    _app: FaultApp | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self._app is None:
            with _lock:
                if self._app is None:
                    self._app = from_environment()
        return self._app(environ, start_response)


app = _LazyApp()
