"""A bounded pool of threads that claim queued tasks and write their audio.

Why threads claiming from SQLite rather than an in-memory queue: the queue
*is* the ``tasks`` table, so a task posted to one process can be run by
another, a restart resumes what was queued, and the atomic claim in
:meth:`Store.claim` is the only thing that decides who runs a task.

A running task holds a lease that its worker renews while it makes progress.
Tasks left RUNNING by a worker that is gone (its lease expired, its process on
this host died, or its pool in this process was stopped) are put back in the
queue by :meth:`WorkerPool.sweep`, which runs at start and then periodically.
Stopping the pool aborts running extractions at their next progress tick and
puts their tasks back in the queue: they are resumed, not lost. Partial files
that a killed process left in tmp/ are deleted when a pool starts
(:meth:`WorkerPool.remove_stale_partials`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..elementary import TranscodeUnavailable, write_audio
from ..errors import AudioExtractionError, LimitExceeded, MalformedMedia, NoAudioTrack, UnsupportedMedia
from ..limits import Limits
from .store import HOST_TAG, Store, partial_owner, writing

log = logging.getLogger("audio_middleware.jobs")
HOST = socket.gethostname()
#: Seconds after which a partial file nobody has written to is removed even when its writer cannot be checked.
STALE_PARTIAL = 3600.0

#: Owners (pools) alive in this process: a RUNNING task whose owner is of this process but not in here is orphaned.
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()


def reason_code(error: BaseException) -> str:
    """A stable code for why a task failed (``reason_code`` in the task JSON)."""
    for kind, code in ((NoAudioTrack, "NO_AUDIO"), (TranscodeUnavailable, "TRANSCODE_UNAVAILABLE"),
                       (UnsupportedMedia, "UNSUPPORTED_MEDIA"), (LimitExceeded, "LIMIT_EXCEEDED"),
                       (MalformedMedia, "MALFORMED_MEDIA"), (AudioExtractionError, "EXTRACTION_FAILED")):
        if isinstance(error, kind):
            return code
    return "INTERNAL_ERROR"


def owner_gone(owner: str | None) -> bool:
    """True when the owner string names a pool that certainly no longer runs (same host only)."""
    if not owner:
        return True
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != HOST or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        with _LIVE_LOCK:
            return owner not in _LIVE
    return pid_gone(pid)


def pid_gone(pid: int) -> bool:
    """True when no process ``pid`` exists on this host (one we may not signal still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class _Stopped(Exception):
    """The pool is stopping: give the task back."""


class _LeaseLost(Exception):
    """Someone else now owns the task (our lease expired): drop our work."""


class _Heartbeat:
    """The progress callback of one extraction: renews the lease and notices a stop."""

    def __init__(self, store: Store, audio_id: str, owner: str, lease: float, stopping: threading.Event) -> None:
        self.store = store
        self.audio_id = audio_id
        self.owner = owner
        self.lease = lease
        self.stopping = stopping
        self.renewed = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.stopping.is_set():
            raise _Stopped()
        now = time.monotonic()
        if now - self.renewed > self.lease / 3:
            if not self.store.renew(self.audio_id, self.owner, self.lease):
                raise _LeaseLost()
            self.renewed = now


class WorkerPool:
    """``size`` threads running queued tasks; ``on_event`` gets each completion event."""

    def __init__(self, store: Store, size: int, *, on_event: Callable[[dict], None],
                 callback_urls: Callable[[str], Sequence[str]], limits: Limits | None = None,
                 lease: float = 60.0, poll: float = 1.0, allow_transcode: bool = True) -> None:
        if size < 0:
            raise ValueError("workers must be >= 0")
        self.store = store
        self.size = size
        self.on_event = on_event
        self.callback_urls = callback_urls
        self.limits = limits or Limits()
        self.lease = lease
        self.poll = poll
        self.allow_transcode = allow_transcode
        self.owner = f"{HOST}:{os.getpid()}:{os.urandom(6).hex()}"
        self._last_sweep = 0.0
        self.forked()

    def forked(self) -> None:
        """Forget thread state (also after a fork: the parent's threads do not exist in the child)."""
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self.owner = f"{HOST}:{os.getpid()}:{os.urandom(6).hex()}"
        self._stopping.clear()
        with _LIVE_LOCK:
            _LIVE.add(self.owner)
        self.remove_stale_partials()
        if self.size:
            self.sweep()
        for number in range(self.size):
            thread = threading.Thread(target=self._loop, name=f"audio-jobs-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, abort running extractions (their tasks go back to the queue), join the threads."""
        self._stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        with _LIVE_LOCK:
            _LIVE.discard(self.owner)

    def wake(self) -> None:
        """A task was queued: let an idle worker look now rather than at its next poll."""
        with self._wake:
            self._wake.notify_all()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    # -- work --------------------------------------------------------------------------------------

    def sweep(self) -> int:
        """Requeue RUNNING tasks whose lease expired or whose owner is gone; returns how many."""
        self._last_sweep = time.monotonic()
        now = time.time()
        count = 0
        for row in self.store.running():
            expired = row["lease_until"] is None or row["lease_until"] < now
            if (expired or owner_gone(row["owner"])) and self.store.release(row["audio_asset_id"], row["owner"]):
                log.warning("task %s of %s requeued (owner gone or lease expired)", row["audio_asset_id"], row["owner"])
                count += 1
        return count

    def remove_stale_partials(self) -> int:
        """Delete partial files in tmp/ whose writer is gone; returns how many.

        Why: a process killed mid-upload or mid-extraction (SIGKILL, OOM,
        power loss) never runs its own cleanup, and its partial would stay
        forever. A partial's name carries its writer's host and pid: one of
        this host whose process has exited is deleted. One whose writer cannot
        be checked (another host, a name from an older version, a pid that may
        have been reused) is deleted only once nobody has written to it for
        ``max(lease, STALE_PARTIAL)`` seconds. That includes a partial named
        with this process's pid that this process is not writing: a killed
        earlier process had the same pid (containers restart with the same
        hostname and small pids). The partials this process is writing
        (uploads, running tasks: :meth:`Store.partial`) are always kept.
        """
        untouched_since = time.time() - max(self.lease, STALE_PARTIAL)
        removed = 0
        for path in self.store.partials():
            if writing(path):
                continue  # in flight in this process, however long since its last write
            owner = partial_owner(path)
            gone = owner is not None and owner[0] == HOST_TAG and pid_gone(owner[1])
            try:
                if gone or path.stat().st_mtime < untouched_since:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # another process cleaned it up first
            except OSError as error:
                log.warning("could not remove the stale partial file %s: %s", path, error)
        if removed:
            log.info("removed %d partial file(s) left in tmp/ by processes that are gone", removed)
        return removed

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if time.monotonic() - self._last_sweep > min(self.lease / 2, 30.0):
                    self.sweep()
                task = self.store.claim(self.owner, self.lease)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                log.exception("could not claim a task")
                task = None
            if task is None:
                with self._wake:
                    if not self._stopping.is_set():
                        self._wake.wait(self.poll)
                continue
            try:
                self.run(task)
            except Exception:  # noqa: BLE001 - e.g. the database stayed locked: the lease will expire and requeue
                log.exception("task %s could not be recorded", task["audio_asset_id"])

    def run(self, task: dict) -> None:
        """Extract one claimed task and record its end (or give it back when stopping)."""
        with self.store.partial(f".{task['format'].lower()}") as temp:
            event = self._extract(task, temp)
        if event is not None:
            self.on_event(event)

    def _extract(self, task: dict, temp: Path) -> dict | None:
        """Write the task's audio to ``temp`` and record how it ended; returns its event (None if not ended).

        Why apart from :meth:`run`: the partial file stays registered as this
        process's (never removed as stale) exactly while this runs.
        """
        audio_id = task["audio_asset_id"]
        heartbeat = _Heartbeat(self.store, audio_id, self.owner, self.lease, self._stopping)
        urls = self.callback_urls(task["project_id"])
        event = None
        try:
            with open(temp, "wb") as out:
                result = write_audio(str(self.store.path(task["source_path"])), out, task["format"].lower(),
                                     limits=self.limits, progress=heartbeat, allow_transcode=self.allow_transcode)
            result = {"format": task["format"], "file_format": "adts" if task["format"] == "AAC" else "mp3",
                      "size": result["size"], "duration": result["duration"], "method": result["method"],
                      "source_codec": result.get("source_codec"), "sample_rate": result.get("sample_rate"),
                      "channels": result.get("channels")}
            event = self.store.succeed(task, self.owner, temp, result, urls)
        except _Stopped:
            self.store.release(audio_id, self.owner)
            log.info("task %s put back in the queue (stopping)", audio_id)
        except _LeaseLost:
            log.warning("task %s: lease lost, result dropped", audio_id)
        except Exception as error:  # noqa: BLE001 - every failure ends the task with a reason
            if not isinstance(error, AudioExtractionError):
                log.exception("task %s failed unexpectedly", audio_id)
            reason = str(error) if isinstance(error, AudioExtractionError) else f"internal error: {error}"
            event = self.store.fail(task, self.owner, reason, reason_code(error), urls)
        return event
