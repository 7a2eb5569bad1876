"""WSGI body iterables that close what they wrap exactly once.

A bare generator is not enough: a generator that was never started does not
run its ``finally`` when closed, and the server may close our iterable before
(or instead of) iterating it when the client goes away.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

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
