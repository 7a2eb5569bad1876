"""The WSGI apps the benchmark serves through gunicorn.

One middleware in front of two upstream apps, both serving the files of one
directory (gunicorn's factory syntax: ``'bench.apps:make_app("/media/dir")'``):

- ``/file/<name>``: a Flask app answering with ``send_file`` (a file-backed
  response: the middleware reads only the bytes it needs with ``os.pread``, and
  an unflagged request keeps the server's sendfile);
- ``/stream/<name>``: a plain WSGI app whose body is a generator of 64 KiB
  blocks (a forward-only source: the middleware must filter the stream).

Both send ``Content-Length``, ``Last-Modified`` and an ``ETag``, as a static file
server does, so the middleware can cache plans. ``/health`` answers ``ok``.

:func:`make_server_app` (what gunicorn runs) also mounts, under ``/stored``, the
same apps behind a second middleware with a rendition store
(``rendition_cache``): ``/stored/file/<name>`` is a flagged download that is
served from the stored rendition once a first full download has filled it.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Iterable, Iterator

from flask import Flask, abort, send_file
from werkzeug.http import http_date
from werkzeug.security import safe_join

from audio_middleware import AudioOnlyMiddleware

BLOCK = 64 * 1024
STORED = "/stored"
#: Room for every rendition of the full input set (about 260 MB), so the benchmark never evicts.
STORE_BYTES = 4 * 1024 ** 3
TYPES = {".mp4": "video/mp4", ".flv": "video/x-flv", ".m4a": "audio/mp4"}


def media_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def _resolve(root: str, name: str) -> str | None:
    path = safe_join(root, name)
    return path if path is not None and os.path.isfile(path) else None


def make_file_app(root: str) -> Flask:
    """Flask serving files with ``send_file`` under ``/file/<name>``."""
    flask_app = Flask("bench_files")

    @flask_app.route("/file/<path:name>")
    def serve(name: str):  # noqa: ANN202 - Flask view
        path = _resolve(root, name)
        if path is None:
            abort(404)
        return send_file(path, mimetype=media_type(path), conditional=True, etag=True, max_age=0)

    return flask_app


def _blocks(path: str, block: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(block):
            yield data


def make_stream_app(root: str, prefix: str = "/stream/", block: int = BLOCK) -> Callable:
    """A plain WSGI app answering ``prefix<name>`` with a generator of ``block``-sized reads."""

    def stream_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = _resolve(root, environ.get("PATH_INFO", "")[len(prefix):])
        if path is None:
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"not found\n"]
        st = os.stat(path)
        start_response("200 OK", [
            ("Content-Type", media_type(path)),
            ("Content-Length", str(st.st_size)),
            ("Last-Modified", http_date(st.st_mtime)),
            ("ETag", f'"{st.st_mtime_ns:x}-{st.st_size:x}"'),
        ])
        return _blocks(path, block)

    return stream_app


def make_app(root: str, **middleware_options: object) -> AudioOnlyMiddleware:
    """The benchmark server's app: the middleware over ``/file/``, ``/stream/`` and ``/health``."""
    files = make_file_app(root).wsgi_app
    stream = make_stream_app(root)

    def dispatch(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/stream/"):
            return stream(environ, start_response)
        if path == "/health":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
            return [b"ok\n"]
        return files(environ, start_response)

    return AudioOnlyMiddleware(dispatch, **middleware_options)  # type: ignore[arg-type]


def make_server_app(root: str, rendition_cache: str | None = None) -> Callable:
    """:func:`make_app`, plus (with ``rendition_cache``) the same under ``/stored`` with a rendition store."""
    plain = make_app(root)
    if rendition_cache is None:
        return plain
    stored = make_app(root, rendition_cache=rendition_cache, rendition_cache_bytes=STORE_BYTES)

    def mount(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(STORED + "/"):
            environ = {**environ, "SCRIPT_NAME": environ.get("SCRIPT_NAME", "") + STORED,
                       "PATH_INFO": path[len(STORED):]}
            return stored(environ, start_response)
        return plain(environ, start_response)

    return mount
