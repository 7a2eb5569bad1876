"""Completion events pushed to callback URLs: signed, retried with backoff, never on a worker thread.

Each finished or failed task writes one event and one delivery row per
callback URL in the same transaction as the task's end (see
:mod:`.store`). A single dispatcher thread POSTs due deliveries with
``requests``; a failure (network error or any non-2xx answer) schedules the
next attempt after ``backoff * 2**(attempts - 1)`` seconds (capped), until
``max_attempts``. Deliveries live in SQLite, so a restart resumes them.

Deliveries go out one after another, so one slow receiver must not hold up
the others: each attempt reads only the response's status line and headers
(``stream=True``, the body is never read) and is cut after ``timeout``
seconds whatever the receiver does. ``requests``' own timeout bounds each
socket read, not the attempt (a receiver sending one header byte per read
would never time out), so a watchdog shuts down the attempt's socket at the
deadline (:class:`_Deadline`); ``shutdown`` wakes the blocked read at once.
The time before there is a socket counts too: the name is looked up on a
helper thread waited for only until the deadline, and each address is given
only the time left to connect (:class:`_BoundedConnection`).

Receivers verify the ``X-Audio-Signature`` header::

    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, "sha256").hexdigest()

where ``timestamp`` is the ``X-Audio-Timestamp`` header (Unix seconds) and
``body`` the raw request body (:func:`verify` does exactly that).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

from .store import Store

if TYPE_CHECKING:
    import requests
    from urllib3 import PoolManager

log = logging.getLogger("audio_middleware.jobs")

SIGNATURE_HEADER = "X-Audio-Signature"
TIMESTAMP_HEADER = "X-Audio-Timestamp"
EVENT_ID_HEADER = "X-Audio-Event-Id"
EVENT_TYPE_HEADER = "X-Audio-Event-Type"


#: The delivery attempt (a :class:`_Deadline`) running on this thread, for the connections it opens.
_current = threading.local()


class _Deadline:
    """The sockets of one delivery attempt, shut down when the attempt outlives ``seconds``.

    Why: the dispatcher is a single thread, and ``requests``' timeout is per
    socket read, so a receiver trickling its status line, headers or TLS
    handshake could hold every other callback forever. The connections the
    attempt uses register their socket here (see :class:`_WatchedConnection`);
    a timer shuts them down at the deadline, which makes the blocked ``recv``
    return at once and the attempt fail. A duplicate descriptor is kept, not
    the socket object, because TLS wrapping detaches the original socket.
    Waits before there is a socket (a name lookup) end at the deadline too
    (:meth:`wait`).
    """

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._waiting: list[threading.Event] = []
        self._done = False
        self.expired = False
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._timer = threading.Timer(seconds, self.expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._end = time.monotonic() + self.seconds
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _current.deadline = None
        with self._lock:
            self._done = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()  # only our duplicate: a kept-alive connection stays usable

    def remaining(self) -> float:
        """Seconds left to the attempt: 0 once the deadline has passed or the attempt was cut."""
        return 0.0 if self.expired else max(0.0, self._end - time.monotonic())

    @property
    def passed(self) -> bool:
        """The attempt is out of time (its failure is then the deadline's, whatever error it shows)."""
        return self.remaining() <= 0

    def wait(self, event: threading.Event) -> None:
        """Wait for ``event`` at most until the deadline; :meth:`expire` (e.g. by ``stop()``) ends it at once."""
        with self._lock:
            if not self.expired:
                self._waiting.append(event)
        event.wait(self.remaining())

    def watch(self, sock: socket.socket | None) -> None:
        """Remember a socket of this attempt (cut at once if the deadline has already passed)."""
        if sock is None:
            return
        try:
            duplicate = socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):  # closed, or no descriptor to duplicate: nothing left to cut
            return
        with self._lock:
            if self._done:
                duplicate.close()
                return
            self._sockets.append(duplicate)
            if self.expired:
                _cut(duplicate)

    def expire(self) -> None:
        """The deadline passed (or the dispatcher stops): shut down every socket of the attempt."""
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._sockets:
                _cut(sock)
            for event in self._waiting:
                event.set()


def _cut(sock: socket.socket) -> None:
    """Shut a socket down both ways: wakes a thread blocked reading or writing it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed or not connected: nothing is blocked on it
        pass


def _watch(sock: socket.socket | None) -> None:
    deadline = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


def _resolve(host: str, port: int, deadline: _Deadline) -> list[tuple]:
    """``getaddrinfo`` for ``host``, given only the time left to the attempt.

    Why: the system resolver takes no timeout (a slow DNS server holds it for
    all its retries), so a name is looked up on a helper thread that is left
    behind, to end when the resolver does, once the deadline passes. A
    numeric address needs no lookup and is answered here.
    """
    from urllib3.util.connection import allowed_gai_family

    family = allowed_gai_family()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass  # a name: look it up below
    else:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    answer: list = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except Exception as error:  # noqa: BLE001 - handed to the attempt, which fails with it
            answer.append(error)
        done.set()

    threading.Thread(target=lookup, name="audio-jobs-resolve", daemon=True).start()
    deadline.wait(done)
    if not answer:
        raise TimeoutError(f"no address for {host} within the attempt's {deadline.seconds:g} s")
    if isinstance(answer[0], Exception):
        raise answer[0]
    return answer[0]


def _connect(addresses: list[tuple], deadline: _Deadline, timeout: object, source_address: tuple | None,
             options: list | None) -> socket.socket:
    """A socket connected to the first of ``addresses`` that answers, each try given only the time left.

    Why: urllib3 gives every address its whole connect timeout, so a name
    with several addresses that drop connections held the attempt that many
    times over. The socket is watched from before its connect, so
    :meth:`_Deadline.expire` (``stop()``) also cuts a connect in progress.
    """
    error = OSError("getaddrinfo returned no address")
    for family, kind, proto, _, address in addresses:
        left = deadline.remaining()
        if left <= 0:
            raise TimeoutError(f"no time left to connect within {deadline.seconds:g} s")
        sock = socket.socket(family, kind, proto)
        try:
            for option in options or ():
                sock.setsockopt(*option)
            sock.settimeout(min(timeout, left) if isinstance(timeout, (int, float)) else left)
            if source_address:
                sock.bind(source_address)
            deadline.watch(sock)
            sock.connect(address)
            return sock
        except OSError as failure:
            error = failure
            sock.close()
    raise error


class _WatchedConnection:
    """Mixed into urllib3's connection classes: registers the socket with the running attempt's deadline.

    ``_new_conn`` covers a new connection right after the TCP connect (before
    any TLS handshake or proxy tunnel); ``request`` covers a kept-alive one.
    Plain connections get :class:`_BoundedConnection`, which bounds the
    connect as well; this class alone serves those that open their socket
    their own way (a SOCKS proxy's).
    """

    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _watch(sock)
        return sock

    def request(self, *args: object, **kwargs: object) -> object:
        _watch(self.sock)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _BoundedConnection(_WatchedConnection):
    """Mixed into urllib3's plain connection classes: the name lookup and the connects obey the deadline too.

    Why: ``_WatchedConnection`` only sees a socket once connected, so DNS
    and TCP connects (once per address) ran outside the attempt's deadline.
    This replaces urllib3's ``HTTPConnection._new_conn`` during an attempt,
    raising the same urllib3 errors.
    """

    host: str
    port: int
    timeout: object
    source_address: tuple | None
    socket_options: list | None
    _dns_host: str

    def _new_conn(self) -> socket.socket:
        deadline = getattr(_current, "deadline", None)
        if deadline is None:
            return super()._new_conn()
        from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

        try:
            addresses = _resolve(self._dns_host.strip("[]"), self.port, deadline)
            sock = _connect(addresses, deadline, self.timeout, self.source_address, self.socket_options)
        except socket.gaierror as error:
            raise NewConnectionError(self, f"Failed to resolve '{self.host}' ({error})") from error
        except TimeoutError as error:
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out ({error})") from error
        except OSError as error:
            raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error
        sys.audit("http.client.connect", self, self.host, self.port)
        return sock


@functools.cache
def _watched_pool(pool_class: type) -> type:
    """``pool_class`` with its connections registering their sockets (one class per pool class).

    A connection class that opens its socket as urllib3's ``HTTPConnection``
    does gets the bounded connect; any other keeps its own ``_new_conn``.
    """
    from urllib3.connection import HTTPConnection

    if issubclass(pool_class.ConnectionCls, _WatchedConnection):
        return pool_class
    plain = getattr(pool_class.ConnectionCls, "_new_conn", None) is HTTPConnection._new_conn
    mixin = _BoundedConnection if plain else _WatchedConnection
    connection = type(f"Watched{pool_class.ConnectionCls.__name__}", (mixin, pool_class.ConnectionCls), {})
    return type(f"Watched{pool_class.__name__}", (pool_class,), {"ConnectionCls": connection})


def _watch_pools(manager: PoolManager) -> PoolManager:
    """Make a urllib3 pool manager (direct or proxy) open watched connections."""
    manager.pool_classes_by_scheme = {scheme: _watched_pool(pool) for scheme, pool
                                      in manager.pool_classes_by_scheme.items()}
    return manager


def _session() -> requests.Session:
    """A ``requests`` session whose connections can be cut by a :class:`_Deadline`."""
    try:
        import requests  # only needed when callbacks are configured
        from requests.adapters import HTTPAdapter
    except ImportError:
        raise RuntimeError("callback URLs need the 'requests' package: pip install 'audio_middleware[jobs]'") from None

    class WatchedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: object, **kwargs: object) -> None:
            super().init_poolmanager(*args, **kwargs)
            _watch_pools(self.poolmanager)

        def proxy_manager_for(self, proxy: str, **kwargs: object) -> PoolManager:
            return _watch_pools(super().proxy_manager_for(proxy, **kwargs))

    session = requests.Session()
    adapter = WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


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
        self._session: requests.Session | None = None
        self._inflight: _Deadline | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._session = _session()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="audio-jobs-callbacks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; an attempt in flight is cut (its delivery stays pending, resumed at restart)."""
        self._stopping.set()
        self.wake()
        inflight = self._inflight
        if inflight is not None:
            inflight.expire()
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
        error = self._post(row["url"], body, headers)
        if error is not None and self._stopping.is_set():
            return  # cut by stop(): not the receiver's fault, the delivery stays pending as it was
        attempts = row["attempts"] + 1
        if error is None:
            self.store.record_delivery(row["event_id"], row["url"], delivered=True)
            return
        retry_at = time.time() + self.delay(attempts) if attempts < self.max_attempts else None
        log.warning("callback %s for event %s failed (attempt %d): %s", row["url"], row["event_id"], attempts, error)
        self.store.record_delivery(row["event_id"], row["url"], delivered=False, error=error, retry_at=retry_at)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str | None:
        """POST one event within ``timeout`` seconds in all; None when answered 2xx, else why not.

        Only the status matters: the body is never read (``stream=True``, then
        closed), and the deadline cuts a receiver that trickles what comes
        before it, as well as a slow name lookup or connect.
        """
        with _Deadline(self.timeout) as deadline:
            self._inflight = deadline
            if self._stopping.is_set():
                deadline.expire()  # stop() came before it could see this attempt
            try:
                with self._session.post(url, data=body, headers=headers, timeout=self.timeout,
                                        allow_redirects=False, stream=True) as response:
                    if 200 <= response.status_code < 300:
                        return None
                    return f"HTTP {response.status_code}"
            except Exception as failure:  # noqa: BLE001 - requests raises many kinds; all mean "retry later"
                if deadline.passed:
                    return f"Timeout: no answer within {self.timeout:g} s ({type(failure).__name__})"
                return f"{type(failure).__name__}: {failure}"
            finally:
                self._inflight = None
