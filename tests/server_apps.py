"""A WSGI app for the real-server tests, configured by environment variables.

``AM_MEDIA_DIR``: folder of media files; ``AM_CLOSE_LOG``: file that gets one
line per upstream ``close()`` (the worker is another process, so a file is how
the test sees it); ``AM_RENDITION_CACHE``: when set, the middleware's
``rendition_cache`` directory. Routes (the middleware wraps them all):

- ``/file/NAME``: werkzeug ``send_file`` (file-backed, uses ``wsgi.file_wrapper``);
- ``/stream/NAME``: forward-only generator body in 64 KiB chunks, with Content-Length;
- ``/slow/NAME``: the same, sleeping 20 ms between chunks;
- ``/truncated/NAME``: claims the full Content-Length, stops 20 KB early;
- ``/twice/NAME``: the ``/stream/`` body behind a middleware with ``spool_limit=0``
  (a moov-at-end MP4 is read twice, never spooled).
"""

from __future__ import annotations

import os
import pathlib
import time

from werkzeug.utils import send_file

from audio_middleware import AudioOnlyMiddleware

MEDIA = pathlib.Path(os.environ.get("AM_MEDIA_DIR", "."))
CLOSE_LOG = os.environ.get("AM_CLOSE_LOG")
RENDITION_CACHE = os.environ.get("AM_RENDITION_CACHE") or None
TYPES = {".mp4": "video/mp4", ".flv": "video/x-flv", ".mov": "video/quicktime"}


class LoggedBody:
    """Body iterable that appends a line to AM_CLOSE_LOG when closed."""

    def __init__(self, chunks, label: str) -> None:
        self._chunks = iter(chunks)
        self._label = label

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        if CLOSE_LOG:
            with open(CLOSE_LOG, "a") as log:
                log.write(f"{self._label}\n")


def _chunks(data: bytes, delay: float = 0.0):
    for start in range(0, len(data), 65536):
        if delay:
            time.sleep(delay)
        yield data[start:start + 65536]


def media_app(environ, start_response):
    _, mode, name = (environ.get("PATH_INFO", "") + "//").split("/")[:3]
    path = MEDIA / name
    if not name or not path.is_file():
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    mimetype = TYPES.get(path.suffix, "application/octet-stream")
    if mode == "file":
        return send_file(str(path), environ, mimetype=mimetype)(environ, start_response)
    data = path.read_bytes()
    headers = [("Content-Type", mimetype), ("Content-Length", str(len(data))), ("ETag", '"fixed"')]
    start_response("200 OK", headers)
    if mode == "truncated":
        return LoggedBody(_chunks(data[:-20000]), f"{mode} {name}")
    return LoggedBody(_chunks(data, 0.02 if mode == "slow" else 0.0), f"{mode} {name}")


# Small blocks, so that a short source is found after the first body bytes went out.
main = AudioOnlyMiddleware(media_app, block_size=4096, rendition_cache=RENDITION_CACHE)
never_spooled = AudioOnlyMiddleware(media_app, spool_limit=0)


def app(environ, start_response):
    chosen = never_spooled if environ.get("PATH_INFO", "").startswith("/twice/") else main
    return chosen(environ, start_response)
