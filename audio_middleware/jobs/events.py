"""Completion events pushed to callback URLs: signed, retried with backoff, never on a worker thread.

Each finished or failed task writes one event and one delivery row per
callback URL in the same transaction as the task's end (see
:mod:`.store`). A single dispatcher thread POSTs due deliveries with
``requests``; a failure (network error or any non-2xx answer) schedules the
next attempt after ``backoff * 2**(attempts - 1)`` seconds (capped), until
``max_attempts``. Deliveries live in SQLite, so a restart resumes them.

Receivers verify the ``X-Audio-Signature`` header::

    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, "sha256").hexdigest()

where ``timestamp`` is the ``X-Audio-Timestamp`` header (Unix seconds) and
``body`` the raw request body (:func:`verify` does exactly that).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time

from .store import Store

log = logging.getLogger("audio_middleware.jobs")

SIGNATURE_HEADER = "X-Audio-Signature"
TIMESTAMP_HEADER = "X-Audio-Timestamp"
EVENT_ID_HEADER = "X-Audio-Event-Id"
EVENT_TYPE_HEADER = "X-Audio-Event-Type"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value of ``body`` sent at ``timestamp``."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:
    """True when ``signature`` is ours and ``timestamp`` is within ``tolerance`` seconds (replay guard)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except (TypeError, ValueError):
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature or "")


class Dispatcher:
    """The thread that delivers pending events to their callback URLs."""

    def __init__(self, store: Store, secret: bytes, *, timeout: float = 5.0, max_attempts: int = 8,
                 backoff: float = 2.0, max_backoff: float = 600.0, poll: float = 1.0,
                 base_url: str | None = None) -> None:
        self.store = store
        self.base_url = base_url.rstrip("/") if base_url else None
        self.secret = secret
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll = poll
        self.forked()

    def forked(self) -> None:
        """Forget thread state (also after a fork: the parent's thread does not exist in the child)."""
        self._stopping = threading.Event()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._session = None

    def start(self) -> None:
        if self._thread is not None:
            return
        import requests  # only needed when callbacks are configured

        self._session = requests.Session()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="audio-jobs-callbacks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def delay(self, attempts: int) -> float:
        """Seconds to wait before attempt ``attempts + 1``."""
        return min(self.backoff * 2 ** max(0, attempts - 1), self.max_backoff)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sent = self.deliver_due()
            except Exception:  # noqa: BLE001 - keep delivering whatever one failure was
                log.exception("callback delivery loop failed")
                sent = 0
            if sent:
                continue
            due = self.store.next_delivery_at()
            wait = self.poll if due is None else max(0.0, min(self.poll, due - time.time()))
            with self._wake:
                if not self._stopping.is_set():
                    self._wake.wait(wait)

    def deliver_due(self) -> int:
        """Attempt every delivery that is due now; returns how many were attempted."""
        rows = self.store.due_deliveries(time.time())
        for row in rows:
            if self._stopping.is_set():
                break
            self._attempt(row)
        return len(rows)

    def _attempt(self, row: dict) -> None:
        event = {**json.loads(row["payload"]), "event_id": row["event_id"]}
        task = event.get("task", {})
        if self.base_url and "audio" in task:
            task["audio"]["url"] = f"{self.base_url}/v1.0/{task['project_id']}/asset/{task['audio_asset_id']}/content"
        body = json.dumps(event).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "audio-middleware-jobs",
                   TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(self.secret, timestamp, body),
                   EVENT_ID_HEADER: str(row["event_id"]), EVENT_TYPE_HEADER: event["event_type"]}
        error = None
        try:
            response = self._session.post(row["url"], data=body, headers=headers, timeout=self.timeout,
                                          allow_redirects=False)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
            response.close()
        except Exception as failure:  # noqa: BLE001 - requests raises many kinds; all mean "retry later"
            error = f"{type(failure).__name__}: {failure}"
        attempts = row["attempts"] + 1
        if error is None:
            self.store.record_delivery(row["event_id"], row["url"], delivered=True)
            return
        retry_at = time.time() + self.delay(attempts) if attempts < self.max_attempts else None
        log.warning("callback %s for event %s failed (attempt %d): %s", row["url"], row["event_id"], attempts, error)
        self.store.record_delivery(row["event_id"], row["url"], delivered=False, error=error, retry_at=retry_at)
