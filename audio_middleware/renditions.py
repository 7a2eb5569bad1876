"""An on-disk store of complete audio renditions, so that repeat downloads go out by sendfile.

::

    store = RenditionStore("/var/cache/audio-renditions", max_bytes=10 * GiB)
    AudioOnlyMiddleware(app, rendition_cache="/var/cache/audio-renditions")   # what the middleware does with it

Emitting a rendition of an interleaved file costs one read and some Python work
per audio span (15k spans for 10 minutes of video, 180k for a 2-hour movie),
while a plain file goes out with sendfile. So, as a CDN would, the middleware
keeps the bytes it produced: the first download of a rendition with every byte
(a ``200``, or the ``206`` of a player's first ``Range: bytes=0-``) is *teed*
into a temporary file of this store while it streams (:meth:`RenditionStore.filler`),
and later requests are answered from that file (:meth:`RenditionStore.find`)
through the server's ``wsgi.file_wrapper``, without planning or reading spans.

Keys are ``(tag, length)``: ``tag`` starts with the rendition's **strong** ETag
(derived by :func:`audio_middleware.rendition.validators_for` from the source's
validator and the extraction options, so a changed source or other options never
meet a stale file), followed by whatever scopes it (the middleware adds the host,
path and query: an ETag only identifies a representation of *one* URL, and two
files may well share ``mtime-size``); ``length`` is the exact length of the
complete plan. For a key the store holds:

- ``<h>-<length>.audio``: the rendition, ``h`` being the first 40 hex digits of
  SHA-256 of the tag;
- ``<h>.json``: the tag's whole SHA-256, length and Content-Type (a few hundred
  bytes, whatever the URL's length), so that a request finds its
  rendition from the tag alone (no plan needed: a fresh worker, or a plan that
  left the plan cache, still gets a hit).

Rules:

- Only complete files are ever visible: a fill writes a unique temporary file
  (``tempfile.mkstemp`` in the same directory) and renames it into place
  (atomic, no fsync) as soon as exactly ``length`` bytes went through; an error
  or an early close (client gone) before that, or a wrong length, deletes it.
  Readers also check the size against the expected length, so a file cut short
  by a crash is a miss.
- Several threads and processes (gunicorn workers) may share a directory and fill
  the same key at once: the renames are atomic and the last one wins (the bytes
  are the same). Within one store object, one fill per key at a time.
- The store never fails or blocks a response: every OS error (disk full, no
  permission, a file evicted under our feet) is logged (at most one warning a
  minute) and the request goes on without it.
- A part of a rendition (a ``206``, such as Safari's first ``bytes=0-1`` or a seek)
  cannot be teed: for a file-backed source the middleware then fills the store in a
  background thread (:meth:`RenditionStore.fill_in_background`) from its own handle
  on the file, so that players that never ask for every byte at once still get the
  stored file from their next request on. At most :data:`BACKGROUND_FILLS` run at once
  per store; more are skipped (a later request starts them).
- Eviction: after each fill, one directory scan; least recently used renditions
  (file mtime, set to now on every hit) are removed until the total is at most
  ``max_bytes``; temporary files untouched for an hour (a crashed worker's) are
  removed too. A rendition larger than ``max_bytes`` is never stored.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .limits import GiB

log = logging.getLogger("audio_middleware")

#: ``(tag: the rendition's strong ETag and its scope, exact length of its complete plan)``
Key = tuple[str, int]

#: Part of every file name's hash: bump it when the layout changes, and old files are never read.
FORMAT = "renditions-1"
DATA_SUFFIX = ".audio"
INDEX_SUFFIX = ".json"
TEMP_PREFIX = ".fill-"
#: A temporary file not written for this long belongs to a process that died.
STALE_TEMP_SECONDS = 3600.0
#: An index whose data file is gone is removed once it is this old (it may be a fill's, racing with the scan).
STALE_INDEX_SECONDS = 60.0
WARN_INTERVAL = 60.0
#: Background fills running at once in one store (each reads spans and writes a file: a bounded cost).
BACKGROUND_FILLS = 2
#: Seconds an exiting process gives its background fills before dropping their files.
EXIT_WAIT = 5.0
_STEM = 40
_INDEX_MAX = 4096


@dataclass
class Hit:
    """A stored rendition, opened: the caller serves ``file`` (and closes it)."""

    file: BinaryIO
    length: int
    content_type: str
    path: pathlib.Path


class RenditionStore:
    """A bounded directory of complete renditions, keyed by ``(tag, length)`` (see the module docstring).

    :param directory: created if missing; may be shared by several processes.
    :param max_bytes: bound of the total size of the stored renditions.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int = GiB) -> None:
        self.directory = pathlib.Path(directory)
        self.max_bytes = int(max_bytes)
        self._lock = threading.RLock()  # re-entrant: Fill.__del__, run by the GC anywhere, takes it
        self._filling: set[Key] = set()
        self._background: dict[threading.Thread, Fill] = {}
        self._last_warning = float("-inf")
        #: Counters, for tests and monitoring.
        self.hits = self.misses = self.fills = self.failures = self.evictions = 0
        atexit.register(_finish_fills, weakref.ref(self))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._warn("rendition store: cannot create %s (%s); renditions will not be stored", self.directory,
                       error)

    # -- names -----------------------------------------------------------------------------------

    @staticmethod
    def _stem(tag: str) -> str:
        return _digest(tag)[:_STEM]

    def path_for(self, key: Key) -> pathlib.Path:
        """Where the rendition of ``key`` lives (whether or not it is there)."""
        tag, length = key
        return self.directory / f"{self._stem(tag)}-{int(length)}{DATA_SUFFIX}"

    def _index_path(self, tag: str) -> pathlib.Path:
        return self.directory / f"{self._stem(tag)}{INDEX_SUFFIX}"

    def storable(self, key: Key) -> bool:
        """Only strong ETags, and lengths that fit in the store."""
        tag, length = key
        return bool(tag) and not tag.startswith("W/") and 0 < length <= self.max_bytes

    # -- reading ---------------------------------------------------------------------------------

    def lookup(self, key: Key) -> pathlib.Path | None:
        """The path of the complete rendition of ``key`` (marked as just used), or None."""
        path = self.path_for(key)
        try:
            if os.stat(path).st_size != key[1]:
                raise FileNotFoundError(path)
        except OSError:
            self._count("misses")
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        self._count("hits")
        return path

    def find(self, tag: str) -> Hit | None:
        """The stored rendition of ``tag``, opened, or None; no plan needed (the index gives the length)."""
        if not tag or tag.startswith("W/"):
            return None
        try:
            with open(self._index_path(tag), "rb") as index:
                meta = json.loads(index.read(_INDEX_MAX))
            length, content_type = meta["length"], meta["content_type"]
            if meta["digest"] != _digest(tag) or not isinstance(length, int) or not isinstance(content_type, str):
                raise ValueError("index does not describe this tag")
            path = self.path_for((tag, length))
            file = open(path, "rb")  # handed to the caller, who closes it
        except (OSError, ValueError, KeyError, TypeError):
            self._count("misses")
            return None
        try:
            complete = os.fstat(file.fileno()).st_size == length
        except OSError:
            complete = False
        if not complete:  # cut short (a crash before the data reached the disk): a miss, refilled later
            file.close()
            self._count("misses")
            return None
        with contextlib.suppress(OSError):
            os.utime(file.fileno() if os.utime in os.supports_fd else path)
        self._count("hits")
        return Hit(file, length, content_type, path)

    # -- filling ---------------------------------------------------------------------------------

    def filler(self, key: Key, content_type: str) -> Fill | None:
        """A temporary file to tee the complete rendition of ``key`` into, or None.

        None when the key cannot be stored, when this store is already filling it,
        or when the directory refuses a new file.
        """
        if not self.storable(key):
            return None
        with self._lock:
            if key in self._filling:
                return None
            self._filling.add(key)
        try:
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=self.directory)
        except OSError as error:
            self._release(key)
            self._count("failures")
            self._warn("rendition store: cannot create a file in %s (%s)", self.directory, error)
            return None
        return Fill(self, key, content_type, fd, temp)

    def fill_in_background(self, key: Key, content_type: str, blocks: Callable[[], Iterable[bytes]],
                           cleanup: Callable[[], None]) -> threading.Thread | None:
        """Fill ``key`` from ``blocks()`` in a daemon thread, then call ``cleanup`` (always, exactly once).

        Returns the thread, or None (``cleanup`` already called) when the key cannot be
        filled now: not storable, already being filled, or :data:`BACKGROUND_FILLS` running.
        """
        with self._lock:
            busy = len(self._background) >= BACKGROUND_FILLS
        # (checked again below, where it counts: this one spares a temporary file when busy)
        fill = None if busy else self.filler(key, content_type)
        if fill is None:
            cleanup()
            return None
        thread = threading.Thread(target=self._fill_from, args=(fill, blocks, cleanup), daemon=True,
                                  name=f"rendition-fill-{self._stem(key[0])[:8]}")
        with self._lock:
            busy = len(self._background) >= BACKGROUND_FILLS
            if not busy:
                self._background[thread] = fill
        if busy:
            fill.abort()
            cleanup()
            return None
        try:
            thread.start()
        except Exception as error:  # noqa: BLE001 - no thread (resource limits): the response goes on
            with self._lock:
                self._background.pop(thread, None)
            fill.abort()
            cleanup()
            self._warn("rendition store: cannot start a background fill (%s)", error)
            return None
        return thread

    def _fill_from(self, fill: Fill, blocks: Callable[[], Iterable[bytes]], cleanup: Callable[[], None]) -> None:
        try:
            for block in blocks():
                fill.write(block)
                if not fill.open:
                    break  # the fill gave up (disk full...), already logged
                time.sleep(0)  # let the requests run between blocks (under gevent: yield to the hub)
            fill.commit()
        except Exception as error:  # noqa: BLE001 - a background fill never takes the worker down
            self._warn("rendition store: background fill of %s failed (%s)", self.path_for(fill.key), error)
            fill.abort()
        finally:
            with contextlib.suppress(Exception):
                cleanup()
            with self._lock:
                self._background.pop(threading.current_thread(), None)

    def join_fills(self, timeout: float | None = None) -> bool:
        """Wait for the background fills running now; False if some still run after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            threads = list(self._background)
        for thread in threads:
            with contextlib.suppress(RuntimeError):  # registered by another thread, not started yet
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() or thread.ident is None for thread in threads)

    def finish_fills(self, timeout: float = EXIT_WAIT) -> None:
        """At exit: give the background fills ``timeout`` seconds, then drop the unfinished ones' files.

        A worker that ends (gunicorn's ``max_requests``, a restart) kills its daemon
        threads; without this their temporary files stayed until a scan an hour later.
        """
        if self.join_fills(timeout):
            return
        with self._lock:
            unfinished = list(self._background.values())
        for fill in unfinished:
            with contextlib.suppress(Exception):
                fill.abort()

    def _release(self, key: Key) -> None:
        with self._lock:
            self._filling.discard(key)

    def _publish(self, fill: Fill) -> None:
        """Rename a complete fill into place, then its index; raise OSError on failure."""
        tag, length = fill.key
        final = self.path_for(fill.key)
        os.replace(fill.temp, final)
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as index:
                index.write(json.dumps({"digest": _digest(tag), "length": length,
                                        "content_type": fill.content_type}).encode())
            os.replace(temp, self._index_path(tag))
        except BaseException:
            _unlink(temp)
            _unlink(final)
            raise

    # -- size ------------------------------------------------------------------------------------

    def evict(self) -> int:
        """Remove least recently used renditions until at most ``max_bytes`` remain; return how many."""
        now = time.time()
        renditions: list[tuple[float, str, int]] = []
        indexes: list[tuple[str, float]] = []
        total = 0
        try:
            with os.scandir(self.directory) as listing:
                for entry in listing:
                    name = entry.name
                    try:
                        if name.startswith(TEMP_PREFIX):
                            if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                                _unlink(entry.path)
                        elif name.endswith(DATA_SUFFIX):
                            stat = entry.stat(follow_symlinks=False)
                            renditions.append((stat.st_mtime, name, stat.st_size))
                            total += stat.st_size
                        elif name.endswith(INDEX_SUFFIX):
                            indexes.append((name, entry.stat(follow_symlinks=False).st_mtime))
                    except FileNotFoundError:
                        continue  # another process removed it meanwhile
        except OSError as error:
            self._warn("rendition store: cannot list %s (%s)", self.directory, error)
            return 0
        renditions.sort()
        kept = {name.split("-", 1)[0] for _, name, _ in renditions}
        removed = 0
        for _, name, size in renditions:
            if total <= self.max_bytes:
                break
            stem = name.split("-", 1)[0]
            _unlink(self.directory / name)
            _unlink(self.directory / f"{stem}{INDEX_SUFFIX}")
            kept.discard(stem)
            total -= size
            removed += 1
        for name, mtime in indexes:
            if name[:-len(INDEX_SUFFIX)] not in kept and now - mtime > STALE_INDEX_SECONDS:
                _unlink(self.directory / name)
        if removed:
            self._count("evictions", removed)
        return removed

    def size_bytes(self) -> int:
        """Total size of the stored renditions (one directory scan)."""
        total = 0
        with contextlib.suppress(OSError), os.scandir(self.directory) as listing:
            for entry in listing:
                if entry.name.endswith(DATA_SUFFIX) and not entry.name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(OSError):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def clear(self) -> None:
        """Remove every rendition and index (temporary files of fills in progress stay)."""
        with contextlib.suppress(OSError), os.scandir(self.directory) as listing:
            for entry in listing:
                if entry.name.endswith((DATA_SUFFIX, INDEX_SUFFIX)) and not entry.name.startswith(TEMP_PREFIX):
                    _unlink(entry.path)

    # -- bookkeeping -----------------------------------------------------------------------------

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def _warn(self, message: str, *args: object) -> None:
        """A warning at most every WARN_INTERVAL seconds (a full disk must not flood the log), else debug."""
        now = time.monotonic()
        with self._lock:
            loud = now - self._last_warning >= WARN_INTERVAL
            if loud:
                self._last_warning = now
        log.log(logging.WARNING if loud else logging.DEBUG, message, *args)


class Fill:
    """One rendition being written: :meth:`tee` the response's blocks through it.

    It ends exactly once, by :meth:`commit` (all bytes seen: publish) or
    :meth:`abort` (delete the temporary file); both never raise.
    """

    def __init__(self, store: RenditionStore, key: Key, content_type: str, fd: int, temp: str) -> None:
        self.store = store
        self.key = key
        self.length = key[1]
        self.content_type = content_type
        self.temp = temp
        self.written = 0
        self.committed = False
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def tee(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` unchanged, copied here; committed once ``length`` bytes went through (or at their
        end, where a wrong count is refused), aborted if closed or failed before."""
        return _Tee(chunks, self)

    @property
    def open(self) -> bool:
        """Still taking bytes: neither committed, aborted nor given up."""
        return self._file is not None

    def write(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(data)
            self.written += len(data)
            if self.written > self.length:
                raise ValueError(f"{self.written} bytes, more than the expected {self.length}")
        except Exception as error:  # noqa: BLE001 - the response goes on without the store
            self.store._warn("rendition store: giving up a fill of %s (%s)", self.store.path_for(self.key), error)
            self._discard(failed=True)

    def commit(self) -> bool:
        """The response ended normally: publish the file if exactly ``length`` bytes went through."""
        if self._file is None:
            return self.committed
        file, self._file = self._file, None
        try:
            file.close()
            if self.written != self.length:
                raise ValueError(f"{self.written} bytes written, expected {self.length}")
            self.store._publish(self)
        except Exception as error:  # noqa: BLE001 - the response goes on without the store
            self.store._warn("rendition store: not storing %s (%s)", self.store.path_for(self.key), error)
            _unlink(self.temp)
            self.store._count("failures")
            self.store._release(self.key)
            return False
        self.committed = True
        self.store._release(self.key)
        self.store._count("fills")
        try:
            self.store.evict()
        except Exception:  # noqa: BLE001 - never fail the response
            log.exception("rendition store: eviction failed")
        return True

    def retract(self) -> None:
        """Unpublish a committed file (the body went on past ``length``: a bug, logged)."""
        log.error("rendition store: body longer than its %d bytes; removing %s", self.length,
                  self.store.path_for(self.key))
        self.committed = False
        _unlink(self.store.path_for(self.key))
        _unlink(self.store._index_path(self.key[0]))
        self.store._count("failures")

    def abort(self) -> None:
        """The response did not end normally (error, client gone): forget the file. No-op once committed."""
        if self._file is not None:
            self._discard(failed=False)

    def __del__(self) -> None:
        # A body dropped without close() (a server ignoring PEP 3333): leave no file and no blocked key behind.
        if getattr(self, "_file", None) is not None:
            with contextlib.suppress(Exception):
                self.abort()

    def _discard(self, *, failed: bool) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(Exception):
                file.close()
        _unlink(self.temp)
        if failed:
            self.store._count("failures")
        self.store._release(self.key)


class _Tee:
    """Iterator over a body's blocks that copies them into a :class:`Fill` (a class: close() must always work)."""

    def __init__(self, chunks: Iterable[bytes], fill: Fill) -> None:
        self._chunks = iter(chunks)
        self._fill = fill

    def __iter__(self) -> _Tee:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._fill.commit()
            raise
        except BaseException:
            self._fill.abort()
            raise
        if self._fill.committed and chunk:
            self._fill.retract()  # more bytes than the plan's length: never serve the short copy
        self._fill.write(chunk)
        if self._fill.written == self._fill.length:
            # Every byte is produced: publish now rather than on the next call, which a server
            # that stops at Content-Length may never make.
            self._fill.commit()
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            self._fill.abort()


def _finish_fills(store: weakref.ref[RenditionStore]) -> None:
    """The atexit hook of a store (held weakly: a store dropped earlier needs nothing)."""
    alive = store()
    if alive is not None:
        alive.finish_fills()


def _digest(tag: str) -> str:
    """SHA-256 of the tag (and the store's format), in hex: names and identifies a rendition."""
    return hashlib.sha256(f"{FORMAT}\n{tag}".encode("utf-8", "surrogateescape")).hexdigest()


def _unlink(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.debug("rendition store: cannot remove %s (%s)", path, error)
