"""Call the wrapped app and capture everything it answers, without sending anything yet.

The middleware must look at the status, headers and first body bytes before it
can decide whether to transform a response, so ``start_response`` is
intercepted, bytes pushed through the legacy ``write()`` callable are kept (in a
spooled temporary file, so memory stays bounded), and a file served through
``wsgi.file_wrapper`` is recognised so that it can be read with positioned reads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from werkzeug.datastructures import Headers
from werkzeug.wsgi import FileWrapper

from .body import ClosingBody, ClosingFile

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
SPOOL_IN_MEMORY = 1024 * 1024


class CaptureFileWrapper(FileWrapper):
    """Our ``wsgi.file_wrapper``: a plain iterable over the file that also exposes it."""


class Upstream:
    """One call of the wrapped app: status, headers, written bytes and body iterable."""

    def __init__(self, app: WSGIApp, environ: dict) -> None:
        self.status = "500 Internal Server Error"
        self.headers = Headers()
        self.exc_info: Any = None
        self._written: IO[bytes] | None = None
        self._closed = False
        self._started = False
        self._committed = False
        self._early: list[bytes] = []
        self.app_iter: Iterable[bytes] = app(environ, self._start_response)
        if not self._started:
            self._pull_until_started()

    def _pull_until_started(self) -> None:
        """PEP 3333 lets an app call ``start_response`` only when its iterable is first iterated (a
        generator app does): pull its first items until it has, keeping them for :meth:`chunks`
        (as ``werkzeug.test.run_wsgi_app`` does)."""
        try:
            items = iter(self.app_iter)
            while not self._started:
                item = next(items, None)
                if item is None:
                    break  # the app ended without a status: the placeholder 500 stands
                self._early.append(item)
        except BaseException:
            self.close()
            raise
        self.app_iter = _Resumed(items, self.app_iter)

    def _start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
        """Keep the app's status and headers; PEP 3333's rules for a second call, as a server's: with
        ``exc_info`` once the body is being read (our answer may have gone out), re-raise it; without,
        it is an error."""
        if self._started:
            if exc_info is None:
                raise AssertionError("start_response called a second time without exc_info")
            if self._committed:
                try:
                    raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
        self._started = True
        self.status = status
        self.headers = Headers(headers)
        self.exc_info = exc_info
        return self._write

    def _write(self, data: bytes) -> None:
        if self._written is None:
            self._written = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        self._written.write(data)

    @property
    def status_code(self) -> int:
        try:
            return int(self.status.split(None, 1)[0])
        except (ValueError, IndexError):
            return 500

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length", "")
        return int(value) if value.isascii() and value.isdigit() else None

    @property
    def served_file(self) -> CaptureFileWrapper | None:
        """The file wrapper the app returned, when its body is exactly that file."""
        if isinstance(self.app_iter, CaptureFileWrapper) and self._written is None:
            return self.app_iter
        return None

    def chunks(self) -> Iterator[bytes]:
        """Written bytes first, then the body iterable (not closed here)."""
        self._committed = True  # from here on, the app's status and headers may have been acted upon
        if self._written is not None:
            self._written.seek(0)
            while block := self._written.read(256 * 1024):
                yield block
        yield from self._early
        # Not ``yield from``: that would forward this generator's close() to the app's
        # iterable, and close() must reach the app exactly once, through close() below.
        for chunk in self.app_iter:  # noqa: UP028
            yield chunk

    def close(self) -> None:
        """Close the app's iterable, once: later calls do nothing (PEP 3333 asks for one close)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._written is not None:
                self._written.close()
        finally:
            close = getattr(self.app_iter, "close", None)
            if close is not None:
                close()

    def pass_through(self, start_response: Callable, server_file_wrapper: Callable | None,
                     body: Iterable[bytes] | None = None, *, head: bool = False) -> Iterable[bytes]:
        """Send the response as the app made it (for ``head``, its status and headers alone: the
        app was called with GET).

        A captured file goes back to the server's own file wrapper (so sendfile
        still works); ``body`` replaces the iterable when its first bytes were
        already read for sniffing.
        """
        start_response(self.status, self.headers.to_wsgi_list(), self.exc_info)
        self._committed = True
        if head:
            self.close()
            return []
        served = self.served_file
        if body is None and served is not None and server_file_wrapper is not None:
            # the server's own wrapper (sendfile); closing it closes the app's iterable, as PEP 3333 asks
            return server_file_wrapper(ClosingFile(served.file, self.close), served.buffer_size)
        if body is None and self._written is None and not self._early:
            return self.app_iter
        return ClosingBody(body if body is not None else self.chunks(), self.close)


class _Resumed:
    """The rest of an app's iterable after its first items were pulled: iterates ``items``,
    closes (and otherwise looks like) the app's own iterable."""

    def __init__(self, items: Iterator[bytes], app_iter: Iterable[bytes]) -> None:
        self._items = items
        self._app_iter = app_iter

    def __iter__(self) -> Iterator[bytes]:
        return self._items

    def close(self) -> None:
        close = getattr(self._app_iter, "close", None)
        if close is not None:
            close()
