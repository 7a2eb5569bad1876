"""The upstream body as something a planner can read.

Two families, one interface (:class:`Source`):

- :class:`SequentialSource` wraps any WSGI body iterable. It is forward-only:
  reading at an offset discards what lies before it (unless ``retain`` is on,
  which the middleware uses while planning so that it can still spool the whole
  body if the planner asks for random access).
- Random-access sources read any offset: :class:`FileSource` (a file object
  captured through ``wsgi.file_wrapper``, or a spooled temporary file) and
  :class:`RangeSource` (internal Range sub-requests to a Range-capable app).
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Protocol

from .errors import LimitExceeded, MalformedMedia, SourceTruncated

BLOCK = 1024 * 1024


class Source(Protocol):
    """What planners and the plan emitter need from an upstream body."""

    #: Total length in bytes when known (Content-Length or file size).
    size: int | None
    #: True when :meth:`read` accepts any offset, in any order.
    random_access: bool

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset``; fewer only at the end of the source."""

    def iter_range(self, offset: int, length: int) -> Iterator[bytes]:
        """Stream exactly ``length`` bytes at ``offset``; raise SourceTruncated if short."""

    def close(self) -> None:
        """Release resources owned by the source (never the upstream iterable)."""


def read_exact(source: Source, offset: int, length: int, what: str = "data") -> bytes:
    """Read exactly ``length`` bytes or raise :class:`SourceTruncated`."""
    data = source.read(offset, length)
    if len(data) != length:
        raise SourceTruncated(f"source ends inside {what} at byte {offset + len(data)}")
    return data


class SequentialSource:
    """A forward-only reader over a WSGI body iterable, with skip and a small buffer.

    Consumed bytes are dropped by moving a read index, and the buffer is
    compacted only once most of it is consumed, so that many small reads (FLV
    tag headers) cost no memmove each.
    """

    random_access = False
    COMPACT_AT = 256 * 1024

    def __init__(self, iterable: Iterable[bytes], size: int | None = None, *, retain: bool = True) -> None:
        self._chunks = iter(iterable)
        self._buf = bytearray()
        self._head = 0  # index in self._buf of the first byte still available
        self._base = 0  # source offset of self._buf[self._head]
        self._eof = False
        self._pulled = 0
        self.size = size
        #: While True nothing is discarded, so the body can still be replayed or spooled.
        self.retain = retain

    @property
    def position(self) -> int:
        """Offset of the first byte still available."""
        return self._base

    @property
    def _available(self) -> int:
        return len(self._buf) - self._head

    def _pull(self) -> bytes | None:
        """The next upstream chunk, or None at the end.

        A body that ends before its declared Content-Length is truncated, even
        when it ends exactly between two tags or fragments: raising here keeps a
        lazy plan from closing a well-formed but short file.
        """
        if self._eof:
            return None
        for chunk in self._chunks:
            if chunk:
                self._pulled += len(chunk)
                return chunk if isinstance(chunk, bytes) else bytes(chunk)
        self._eof = True
        if self.size is not None and self._pulled < self.size:
            raise SourceTruncated(f"body ends at byte {self._pulled}, its Content-Length is {self.size}")
        return None

    def _drop(self, count: int) -> None:
        self._head += count
        self._base += count
        if self._head >= self.COMPACT_AT and self._head * 2 >= len(self._buf):
            del self._buf[:self._head]
            self._head = 0

    def _discard_before(self, offset: int) -> None:
        if self.retain:
            return
        if offset < self._base:
            raise MalformedMedia(f"read at {offset} goes back before {self._base} on a forward-only source")
        drop = offset - self._base
        if drop <= self._available:
            self._drop(drop)
            return
        # Skip whole upstream chunks without buffering them.
        self._base += self._available
        self._buf.clear()
        self._head = 0
        while self._base < offset:
            chunk = self._pull()
            if chunk is None:
                return
            if self._base + len(chunk) <= offset:
                self._base += len(chunk)
                continue
            self._buf += memoryview(chunk)[offset - self._base:]
            self._base = offset

    def read(self, offset: int, length: int) -> bytes:
        if offset < self._base:
            raise MalformedMedia(f"read at {offset} goes back before {self._base} on a forward-only source")
        self._discard_before(offset)
        need = offset + length - self._base
        while self._available < need:
            chunk = self._pull()
            if chunk is None:
                break
            self._buf += chunk
        start = self._head + offset - self._base
        if start >= len(self._buf):
            return b""
        with memoryview(self._buf) as view:
            return bytes(view[start:start + length])

    def iter_range(self, offset: int, length: int) -> Iterator[bytes]:
        if self.retain:
            yield read_exact(self, offset, length)
            return
        self._discard_before(offset)
        if self._base != offset:
            raise SourceTruncated(f"source ends before byte {offset}")
        end = offset + length
        if self._available:
            take = min(self._available, length)
            with memoryview(self._buf) as view:
                data = bytes(view[self._head:self._head + take])
            self._drop(take)
            yield data
        while self._base < end:
            chunk = self._pull()
            if chunk is None:
                raise SourceTruncated(f"source ends at byte {self._base}, {end - self._base} bytes short")
            room = end - self._base
            if len(chunk) <= room:
                self._base += len(chunk)
                yield chunk
            else:
                self._buf = bytearray(memoryview(chunk)[room:])
                self._head = 0
                self._base = end
                yield chunk[:room]

    def replay(self) -> Iterator[bytes]:
        """Every byte still available, then the rest of the upstream: for pass-through and spooling."""
        if self._available:
            data = bytes(self._buf[self._head:])
            self._base += len(data)
            self._buf = bytearray()
            self._head = 0
            yield data
        while True:
            chunk = self._pull()
            if chunk is None:
                return
            self._base += len(chunk)
            yield chunk

    def close(self) -> None:
        self._buf = bytearray()
        self._head = 0


class FileSource:
    """Positioned reads from a real file: only the bytes a plan needs are read.

    Uses ``os.pread`` on the file descriptor when there is one (thread-safe, no
    shared file position); otherwise seek + read under a lock.
    """

    random_access = True

    def __init__(self, fileobj: IO[bytes], start: int = 0, size: int | None = None, *, owned: bool = False) -> None:
        self._file = fileobj
        self._start = start
        self._owned = owned
        self._lock = threading.Lock()
        try:
            self._fd: int | None = fileobj.fileno() if reads_its_descriptor(fileobj) else None
            if self._fd is not None:
                os.fstat(self._fd)
        except (AttributeError, OSError, ValueError):
            self._fd = None
        if self._fd is not None and not hasattr(os, "pread"):
            self._fd = None
        if size is None:
            size = self._measure()
        self.size = size

    def _measure(self) -> int | None:
        if self._fd is not None:
            return max(os.fstat(self._fd).st_size - self._start, 0)
        try:
            with self._lock:
                here = self._file.tell()
                end = self._file.seek(0, os.SEEK_END)
                self._file.seek(here)
            return max(end - self._start, 0)
        except (AttributeError, OSError, ValueError):
            return None

    def read(self, offset: int, length: int) -> bytes:
        if self.size is not None:
            length = max(0, min(length, self.size - offset))
        if length <= 0 or offset < 0:
            return b""
        position = self._start + offset
        if self._fd is not None:
            data = os.pread(self._fd, length, position)
            if len(data) == length or not data:
                return data
            parts = [data]
            got = len(data)
            while got < length:
                more = os.pread(self._fd, length - got, position + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        with self._lock:
            here = self._file.tell()  # put it back: the file may still be served as it is
            self._file.seek(position)
            parts, got = [], 0
            while got < length:
                more = self._file.read(length - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            self._file.seek(here)
            return b"".join(parts)

    def gather(self, offsets: Iterable[int], lengths: Iterable[int], block: int) -> Iterator[bytes]:
        """The bytes of many spans, concatenated into blocks of about ``block`` bytes.

        The hot loop of a file-backed download: one bare ``os.pread`` per span
        (spans were checked against the file when planned; a short read falls
        back to :meth:`read`), so interleaved movies stream at about a
        microsecond of Python per audio chunk.
        """
        if self._fd is None:
            return _gather(lambda _fd, length, position: self.read(position, length), None, 0, offsets, lengths,
                           block, self.read)
        return _gather(os.pread, self._fd, self._start, offsets, lengths, block, self.read)

    def located(self, offset: int) -> tuple[IO[bytes], int] | None:
        """The underlying file and the position of ``offset`` in it, for handing a region of it to
        the server (see :func:`.body.sendfile_region`); None without a descriptor."""
        if self._fd is None:
            return None
        return self._file, self._start + offset

    def independent_copy(self) -> FileSource | None:
        """The same bytes through a duplicate descriptor, for work that outlives the response
        (the app closes its file when the response ends); None without a descriptor."""
        if self._fd is None:
            return None
        try:
            fd = os.dup(self._fd)
        except OSError:
            return None
        try:
            copy = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        return FileSource(copy, self._start, self.size, owned=True)

    def iter_range(self, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            want = min(BLOCK, end - offset)
            data = self.read(offset, want)
            if len(data) != want:
                missing = end - offset - len(data)
                raise SourceTruncated(f"source ends at byte {offset + len(data)}, {missing} bytes short")
            offset += want
            yield data

    def close(self) -> None:
        if self._owned:
            self._file.close()


def reads_its_descriptor(fileobj: object) -> bool:
    """Whether reading ``fileobj`` reads the bytes of its ``fileno()`` at their own offsets, so that
    ``os.pread`` and sendfile on that descriptor give what the app serves: a ``FileIO``, or a
    buffered file over one (``open(path, "rb")``, which ``send_file`` and ``FileResponse`` use,
    and ``tempfile`` files). A ``GzipFile``, ``BZ2File`` or ``LZMAFile`` also has a ``fileno()``,
    the compressed file's, whose bytes are not the ones it reads."""
    return isinstance(getattr(fileobj, "raw", fileobj), io.FileIO)


def positioned_reads(fileobj: object) -> bool:
    """Whether a file object an app serves can be a :class:`FileSource`: a regular file read as it is
    (a pipe or a socket, such as a subprocess's stdout, has a descriptor but no positions; a
    decompressing file has one whose bytes it does not serve, and its seeks decompress again from
    the start), or an object with no descriptor that does not say it cannot seek."""
    try:
        fd = fileobj.fileno()  # type: ignore[attr-defined]
        if not reads_its_descriptor(fileobj):
            return False
    except (AttributeError, OSError, ValueError):
        seekable = getattr(fileobj, "seekable", None)
        try:
            return bool(seekable()) if seekable is not None else True
        except (OSError, ValueError):
            return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, TypeError):
        return False


def _gather(pread: Callable, fd: int | None, start: int, offsets: Iterable[int], lengths: Iterable[int],
            block: int, finish: Callable[[int, int], bytes]) -> Iterator[bytes]:
    """Join spans read by ``pread(fd, length, start + offset)`` into blocks.

    One loop for both kinds of file; nothing but the read and the length check
    per span (a closure per span costs ~60% more on a 2-hour movie). ``finish``
    completes a short read, or finds the real end of the source.
    """
    parts: list[bytes] = []
    pending = 0
    try:
        for offset, length in zip(offsets, lengths):
            data = pread(fd, length, start + offset)
            if len(data) != length:
                data += finish(offset + len(data), length - len(data))
                if len(data) != length:
                    raise SourceTruncated(f"source ends inside the span at byte {offset}")
            parts.append(data)
            pending += length
            if pending >= block:
                yield b"".join(parts)
                parts, pending = [], 0
    except OSError as error:  # e.g. a negative offset: EINVAL
        raise SourceTruncated(f"cannot read a span of the source: {error}") from error
    if parts:
        yield b"".join(parts)


def stop_retaining(source: Source) -> None:
    """No more random access will be asked of ``source``: a forward-only one may forget what it read."""
    if isinstance(source, SequentialSource):
        source.retain = False


def spool(sequential: SequentialSource, limit: int) -> FileSource:
    """Copy the rest of a forward-only body to a temporary file, at most ``limit`` bytes.

    The source must not have discarded anything yet (it is read from offset 0).
    """
    if sequential.position != 0:
        raise MalformedMedia("cannot spool a body that was partly consumed")
    tmp = tempfile.TemporaryFile(prefix="audio-middleware-")
    try:
        written = 0
        for chunk in sequential.replay():
            written += len(chunk)
            if written > limit:
                raise LimitExceeded(f"body needs random access and exceeds spool_limit ({limit} bytes)")
            tmp.write(chunk)
        tmp.flush()
        return FileSource(tmp, size=written, owned=True)
    except BaseException:
        tmp.close()
        raise


class RangeSource:
    """Random access through HTTP-style Range sub-requests to the wrapped app.

    ``fetch(start, stop)`` returns the bytes ``[start, stop)`` (possibly fewer at
    the end) or raises. Header-sized reads fetch a small read-ahead window (a box
    header is often followed by the next one); larger reads fetch exactly what is
    asked, so video bytes are never transferred.
    """

    random_access = True

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, window: int = 4096) -> None:
        self._fetch = fetch
        self.size = size
        self._window = window
        self._cache_start = 0
        self._cache = b""
        self.requests = 0

    def _get(self, start: int, stop: int) -> bytes:
        self.requests += 1
        return self._fetch(start, stop)

    def read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        if length == 0 or offset < 0:
            return b""
        lo = offset - self._cache_start
        if 0 <= lo and lo + length <= len(self._cache):
            return self._cache[lo:lo + length]
        if length > 64:
            return self._get(offset, offset + length)
        stop = min(self.size, offset + self._window)
        self._cache = self._get(offset, stop)
        self._cache_start = offset
        return self._cache[:length]

    def iter_range(self, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            want = min(BLOCK, end - offset)
            data = self.read(offset, want)
            if len(data) != want:
                raise SourceTruncated(f"source ends at byte {offset + len(data)}")
            offset += want
            yield data

    def close(self) -> None:
        self._cache = b""
