"""Small WSGI apps that serve a media file the ways real apps do.

- ``file_app``: werkzeug ``send_file`` (uses ``wsgi.file_wrapper``, like Flask/Django/WhiteNoise);
- ``generator_app``: a forward-only iterable body in odd chunk sizes;
- ``range_app``: an iterable body from an app that honours Range (206);
- ``write_app``: pushes the body through the legacy ``write()`` callable.

Each records how its body was closed in ``app.closes`` so tests can prove
``close()`` is called exactly once.
"""

from __future__ import annotations

import io
import itertools
import pathlib
from collections.abc import Callable, Iterable, Iterator

from werkzeug.http import parse_range_header
from werkzeug.utils import send_file
from werkzeug.wrappers import Request

from audio_middleware.sources import FileSource

ODD_CHUNKS = (1, 7, 4093, 65536, 3)


class TrackedBody:
    """An iterable body that counts its close() calls."""

    def __init__(self, chunks: Iterable[bytes], app: TrackingApp) -> None:
        self._chunks = iter(chunks)
        self._app = app
        app.bodies += 1

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self._app.bytes_sent += len(chunk)
        return chunk

    def close(self) -> None:
        self._app.closes += 1


class TrackingApp:
    """Base: serve ``path`` with ``content_type``; subclasses choose how."""

    def __init__(self, path: pathlib.Path | str, content_type: str = "video/mp4", *, etag: str | None = '"v1"',
                 last_modified: str | None = "Wed, 21 Oct 2026 07:28:00 GMT") -> None:
        self.path = pathlib.Path(path)
        self.content_type = content_type
        self.etag = etag
        self.last_modified = last_modified
        self.bodies = 0
        self.closes = 0
        self.bytes_sent = 0
        self.environs: list[dict] = []

    def headers(self, length: int) -> list[tuple[str, str]]:
        headers = [("Content-Type", self.content_type), ("Content-Length", str(length))]
        if self.etag:
            headers.append(("ETag", self.etag))
        if self.last_modified:
            headers.append(("Last-Modified", self.last_modified))
        return headers

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        self.environs.append(environ)
        return self.serve(environ, start_response)

    def serve(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        raise NotImplementedError


class FileApp(TrackingApp):
    """werkzeug.send_file: the body is ``environ['wsgi.file_wrapper'](file)``."""

    def serve(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        response = send_file(str(self.path), environ, mimetype=self.content_type, conditional=True, etag=False,
                             max_age=60)
        if self.etag:
            response.headers["ETag"] = self.etag
        app_iter = response(environ, start_response)
        closes = app_iter.close

        def close() -> None:
            self.closes += 1
            closes()

        self.bodies += 1
        app_iter.close = close  # type: ignore[method-assign]
        return app_iter


class GeneratorApp(TrackingApp):
    """Forward-only body in awkward chunk sizes; optionally truncated or without Content-Length."""

    def __init__(self, *args, chunks: tuple[int, ...] = ODD_CHUNKS, truncate_at: int | None = None,
                 send_length: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunks = chunks
        self.truncate_at = truncate_at
        self.send_length = send_length

    def body(self) -> Iterable[bytes]:
        data = self.path.read_bytes()
        if self.truncate_at is not None:
            data = data[:self.truncate_at]
        position = 0
        for size in itertools.cycle(self.chunks):
            if position >= len(data):
                return
            yield data[position:position + size]
            position += size

    def serve(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        length = self.path.stat().st_size
        headers = self.headers(length)
        if not self.send_length:
            headers = [h for h in headers if h[0] != "Content-Length"]
        start_response("200 OK", headers)
        return TrackedBody(self.body(), self)


class RangeApp(TrackingApp):
    """An iterable-bodied app that honours single byte ranges and says so."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.range_requests = 0

    def serve(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        data = self.path.read_bytes()
        headers = self.headers(len(data)) + [("Accept-Ranges", "bytes")]
        parsed = parse_range_header(environ.get("HTTP_RANGE"))
        found = parsed.range_for_length(len(data)) if parsed else None
        if found is None:
            start_response("200 OK", headers)
            return TrackedBody(iter([data[i:i + 65536] for i in range(0, len(data), 65536)]), self)
        self.range_requests += 1
        start, stop = found
        headers = [h for h in headers if h[0] != "Content-Length"]
        headers += [("Content-Length", str(stop - start)), ("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")]
        start_response("206 Partial Content", headers)
        return TrackedBody(iter([data[start:stop]]), self)


class WriteApp(TrackingApp):
    """Legacy app: pushes part of the body through write(), returns the rest."""

    def serve(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        data = self.path.read_bytes()
        write = start_response("200 OK", self.headers(len(data)))
        half = len(data) // 2
        write(data[:1000])
        write(data[1000:half])
        return TrackedBody(iter([data[half:]]), self)


class StaticApp(TrackingApp):
    """Any fixed status, headers and body (HTML pages, 404s, 304s...)."""

    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        super().__init__("/dev/null")
        self.status = status
        self.fixed_headers = headers
        self.payload = body

    def serve(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        start_response(self.status, self.fixed_headers)
        return TrackedBody(iter([self.payload]), self)


class LateStartApp(TrackingApp):
    """PEP 3333's own ``AppClass``: ``start_response`` is called only when the body is first
    iterated (as any generator app does)."""

    def __init__(self, *args, status: str = "200 OK", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.status = status

    def serve(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        def body() -> Iterator[bytes]:
            data = self.path.read_bytes()
            start_response(self.status, self.headers(len(data)))
            yield data[:1000]
            yield data[1000:]

        return TrackedBody(body(), self)


class RecordingSource(FileSource):
    """A file source over bytes that records every read, to prove what a walker reads (and skips)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return super().read(offset, length)


class CountingFile:
    """A file object without fileno(): every byte read goes through read() and is counted."""

    def __init__(self, path):
        self._file = open(path, "rb")
        self.bytes_read = 0
        self.closes = 0

    def read(self, size=-1):
        data = self._file.read(size)
        self.bytes_read += len(data)
        return data

    def seek(self, *args):
        return self._file.seek(*args)

    def tell(self):
        return self._file.tell()

    def close(self):
        self.closes += 1
        self._file.close()


def request_of(environ: dict) -> Request:
    return Request(environ)


def call(app, query="ali_audio_only=1", method="GET", **environ):
    """Call a WSGI app directly: (status, headers list, body bytes), body closed."""
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, list(headers)

    base = {"REQUEST_METHOD": method, "QUERY_STRING": query, "PATH_INFO": "/v.mp4", "SERVER_NAME": "x",
            "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    result = app({**base, **environ}, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return seen["status"], seen["headers"], body
