"""WSGI body iterables that close what they wrap exactly once.

A bare generator is not enough: a generator that was never started does not
run its ``finally`` when closed, and the server may close our iterable before
(or instead of) iterating it when the client goes away.

:class:`FileRegion` is the other kind of body: one contiguous region of a real
file, handed to the server's ``wsgi.file_wrapper`` so that gunicorn sends it
with ``sendfile`` instead of our reading it block by block, where that is safe
(:func:`sendfile_region`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO

log = logging.getLogger("audio_middleware")


class ClosingBody:
    """Iterate ``chunks``; on ``close()`` (or exhaustion, or error) run every closer once.

    Errors raised while producing chunks after the body started are logged and
    re-raised, so the server aborts the response rather than ending it cleanly.
    """

    def __init__(self, chunks: Iterable[bytes], *closers: Callable[[], object] | None) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._closers = [closer for closer in closers if closer is not None]
        self._closed = False

    def __iter__(self) -> ClosingBody:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            return next(self._chunks)
        except StopIteration:
            self.close()
            raise
        except Exception:
            log.exception("audio rendition aborted mid-stream")
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        closers = [getattr(self._chunks, "close", None), *self._closers]
        self._closers = []
        _run_all([closer for closer in closers if closer is not None])


class ClosingFile:
    """``file`` with a different ``close()``: it runs ``closers`` once (and not the file's own).

    For an app's file handed back, untransformed, to the server's ``wsgi.file_wrapper``:
    the server closes the wrapper, and that must close the app's iterable (PEP 3333),
    which closes the file and runs whatever else the app hooked on it. Everything
    else (``read``, ``fileno``, ``seek``...) is the file's.
    """

    def __init__(self, file: IO[bytes], *closers: Callable[[], object]) -> None:
        self._file = file
        self._closers = list(closers)

    def __getattr__(self, name: str) -> object:
        return getattr(self._file, name)

    def close(self) -> None:
        closers, self._closers = self._closers, []
        _run_all(closers)


#: Bytes of an unsized answer held back until its plan ended normally (the source read to its end):
#: an FLV tag's last data byte and its 4-byte PreviousTagSize.
UNSIZED_TAIL = 5


def withhold_tail(chunks: Iterable[bytes], size: int = UNSIZED_TAIL) -> Iterator[bytes]:
    """``chunks``, but their last ``size`` bytes only once ``chunks`` ended without an error.

    An unsized answer (a streamed FLV or fragmented MP4, no Content-Length) whose
    source ends early is aborted after its last complete tag went out. Where
    only the connection's close marks the end of a response (HTTP/1.0 clients,
    uWSGI, wsgiref), the client would then hold a well-formed, shorter file;
    without the tail it holds one that ends inside its last tag. Each block is
    copied once (with the previous tail), which costs in proportion to the
    audio sent, not to the video read.
    """
    held = b""
    for chunk in chunks:
        if len(held) + len(chunk) <= size:
            held += chunk
            continue
        cut = len(chunk) - size
        if cut >= 0:
            out, held = b"".join((held, memoryview(chunk)[:cut])), chunk[cut:]
        else:  # a chunk shorter than the tail: part of the old tail goes out
            joined = held + chunk
            out, held = joined[:-size], joined[-size:]
        yield out
    if held:
        yield held


class FileRegion:
    """``length`` bytes of ``file`` from byte ``start``, as a file object for ``wsgi.file_wrapper``.

    The file is positioned at ``start``, and :meth:`read` never goes past the
    region, so any server that iterates the wrapper (or werkzeug's and
    wsgiref's ``FileWrapper``) sends exactly the region. It has no ``fileno()``:
    servers that see one may ``sendfile`` from byte 0 (gunicorn before 21,
    uWSGI) or to the end of the file; :class:`SendfileRegion` has it, for the
    cases where that is known to be right (see :func:`sendfile_region`).
    :meth:`close` runs ``closers`` once, every one of them.
    """

    def __init__(self, file: IO[bytes], start: int, length: int, *closers: Callable[[], object]) -> None:
        self._file = file
        self._position = file.seek(start)
        self._end = start + length
        self._closers = list(closers)

    @property
    def name(self) -> object:
        return getattr(self._file, "name", None)

    @property
    def closed(self) -> bool:
        return self._file.closed

    def read(self, size: int | None = -1) -> bytes:
        left = self._end - self._position
        if size is None or size < 0 or size > left:
            size = left
        if size <= 0:
            return b""
        data = self._file.read(size)
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """Absolute positions in the file (what ``socket.sendfile`` passes back after a partial send)."""
        self._position = self._file.seek(offset, whence)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        closers, self._closers = self._closers, []
        _run_all(closers)


class SendfileRegion(FileRegion):
    """A :class:`FileRegion` with ``fileno()``: the server may ``sendfile`` it."""

    def fileno(self) -> int:
        return self._file.fileno()


#: gunicorn sends a file wrapper from the descriptor's position for Content-Length bytes since
#: version 21 (benoitc/gunicorn#2687; 20.1 sent from byte 0, issue #2669).
GUNICORN_SENDFILE_FROM_POSITION = (21,)


def sendfile_region(environ: dict, file: IO[bytes], start: int, length: int, *closers: Callable[[], object],
                    whole: bool = False) -> FileRegion:
    """The region as a file object for ``environ``'s server: with ``fileno()`` (so ``sendfile``) when it
    is the ``whole`` file, which every server sends right, or when the server is known to honour the
    file's position and Content-Length (gunicorn 21 or later); else bounded reads."""
    sendfile = (whole or _honours_position(environ)) and _descriptor_at(file, start)
    return (SendfileRegion if sendfile else FileRegion)(file, start, length, *closers)


def _descriptor_at(file: IO[bytes], start: int) -> bool:
    """Position ``file`` at ``start`` so that its descriptor's offset is ``start`` too; False if it cannot be.

    ``sendfile`` starts at the descriptor's offset, and a buffered file's ``seek`` inside the
    bytes it read ahead moves only the buffer's pointer (an app that read the file's first
    bytes before returning it leaves the descriptor thousands of bytes further): seeking
    from the end first always drops the buffer and moves the descriptor.
    """
    try:
        fd = file.fileno()
        file.seek(start)
        if os.lseek(fd, 0, os.SEEK_CUR) != start:
            file.seek(0, os.SEEK_END)
            file.seek(start)
        return os.lseek(fd, 0, os.SEEK_CUR) == start
    except (AttributeError, OSError, ValueError):
        return False


def _honours_position(environ: dict) -> bool:
    name, _, version = str(environ.get("SERVER_SOFTWARE", "")).partition("/")
    if name != "gunicorn":
        return False
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return numbers >= GUNICORN_SENDFILE_FROM_POSITION


def _run_all(closers: list[Callable[[], object]]) -> None:
    """Call every closer even if one raises; re-raise the first failure."""
    first: BaseException | None = None
    for closer in closers:
        try:
            closer()
        except BaseException as error:  # noqa: BLE001 - every closer must run
            if first is None:
                first = error
    if first is not None:
        raise first


def close_quietly(iterable: object) -> None:
    """Close an upstream iterable we are abandoning, logging (not raising) failures."""
    close = getattr(iterable, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:
        log.exception("closing the upstream response failed")
