"""Review fixes of the job API, each test failing without its fix: callback attempts bounded against
receivers that trickle, resolve slowly or drop connects, one callback key for processes starting together,
documented 400s (not 500s) for hostile input, and partial files of dead processes (even one that had this
process's pid) removed at start."""

from __future__ import annotations

import os
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest

from audio_middleware import jobs
from audio_middleware.jobs.store import Store

try:  # works whether or not tests/ is a package
    from tests.test_jobs_support import PROJECT_A, Api, Receiver, install_gate, new_app, wait_for
except ImportError:  # pragma: no cover
    from test_jobs_support import PROJECT_A, Api, Receiver, install_gate, new_app, wait_for


# -- callbacks: a receiver that trickles cannot hold up the dispatcher -----------------------------------


class Trickler:
    """A callback receiver that reads the request, sends ``head`` at once, then one byte of ``drip`` every
    ``interval`` seconds until the client hangs up. ``held`` records, per connection, how many seconds the
    client stayed after its request (how long one attempt held the dispatcher)."""

    def __init__(self, head: bytes, drip: bytes, interval: float = 0.05) -> None:
        self.head = head
        self.drip = drip
        self.interval = interval
        self.arrived = 0
        self.held: list[float] = []
        self.stopping = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            self._read_request(conn)
            self.arrived += 1
            start = time.monotonic()
            conn.sendall(self.head)
            for byte in self.drip:
                if self.stopping.is_set():
                    return
                readable, _, _ = select.select([conn], [], [], self.interval)
                try:
                    if readable and not conn.recv(1):
                        break  # the client hung up
                    conn.sendall(bytes([byte]))
                except OSError:
                    break
            self.held.append(time.monotonic() - start)

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += conn.recv(65536)

    def close(self) -> None:
        self.stopping.set()
        self.server.close()


HEADERS_TRICKLED = (b"", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000)
BODY_TRICKLED = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100000\r\n\r\n", b"x" * 100_000)


@pytest.fixture
def servers():
    """Starts Trickler (head, drip) or Receiver (no argument) servers and closes them after the test."""
    made = []

    def start(kind: tuple[bytes, bytes] | None = None):
        server = Receiver() if kind is None else Trickler(*kind)
        made.append(server)
        return server

    yield start
    for server in made:
        server.close()


def test_trickling_receivers_cannot_hold_up_the_callbacks_behind_them(tmp_path, make, servers, apps):
    timeout = 0.5
    headers_slow, body_slow, healthy = servers(HEADERS_TRICKLED), servers(BODY_TRICKLED), servers()
    app = new_app(tmp_path / "data", callback_urls=[headers_slow.url, body_slow.url, healthy.url],
                  callback_timeout=timeout, callback_attempts=1, callback_secret="k" * 32)
    apps.append(app)
    api = Api(app)
    api.extract(api.upload(make("flv_aac")))

    def states() -> dict[str, dict]:
        return {row["url"]: row for row in app.store.deliveries()}

    wait_for(lambda: states().get(healthy.url, {}).get("state") == "DELIVERED", timeout=5,
             what="the healthy receiver's callback")
    assert len(healthy.requests) == 1
    wait_for(lambda: len(headers_slow.held) == len(body_slow.held) == 1, timeout=2 * timeout, what="both cut")
    assert max(headers_slow.held + body_slow.held) < 2 * timeout
    deliveries = states()
    assert deliveries[headers_slow.url]["state"] == "FAILED"
    assert deliveries[headers_slow.url]["last_error"].startswith("Timeout: no answer within 0.5 s")
    assert deliveries[body_slow.url]["state"] == "FAILED" and deliveries[body_slow.url]["last_error"] == "HTTP 500"


def test_close_cuts_a_callback_in_flight_and_keeps_it_pending(tmp_path, make, servers, apps):
    slow = servers(HEADERS_TRICKLED)
    app = new_app(tmp_path / "data", callback_urls=[slow.url], callback_timeout=30, callback_secret="k" * 32)
    apps.append(app)
    api = Api(app)
    api.extract(api.upload(make("flv_aac")))
    wait_for(lambda: slow.arrived == 1, what="the callback in flight")
    started = time.monotonic()
    app.close()
    assert time.monotonic() - started < 2
    delivery = app.store.deliveries()[0]
    assert delivery["state"] == "PENDING" and delivery["attempts"] == 0  # resumed, uncounted, at the next start


# -- callbacks: name lookups and connects count against the deadline too ------------------------------


class FakeDns:
    """Stands in for ``socket.getaddrinfo``: the names added answer with 127.0.0.1 (``copies`` times, like a
    name with that many addresses), ``slow`` ones only once released; other names go to the real resolver.
    ``asked`` holds when each added name was first looked up (when the attempt started)."""

    def __init__(self) -> None:
        self.real = socket.getaddrinfo
        self.names: dict[str, tuple[int, bool]] = {}
        self.asked: dict[str, float] = {}
        self.release = threading.Event()

    def add(self, name: str, copies: int = 1, slow: bool = False) -> str:
        self.names[name] = (copies, slow)
        return name

    def __call__(self, host, port, *args, **kwargs):
        if host not in self.names:
            return self.real(host, port, *args, **kwargs)
        self.asked.setdefault(host, time.monotonic())
        copies, slow = self.names[host]
        if slow:
            self.release.wait(20)
        return self.real("127.0.0.1", port, *args, **kwargs) * copies


@pytest.fixture
def dns(monkeypatch):
    fake = FakeDns()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake
    fake.release.set()  # a lookup left behind ends (before the apps are closed: requested after them)


@pytest.fixture
def blackhole():
    """A loopback port whose connects never complete, like a firewalled address: its listener's accept
    queue is full, so the SYNs are dropped."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = server.getsockname()[1]
    fillers = [socket.socket() for _ in range(3)]
    for filler in fillers:
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
    except TimeoutError:
        pass
    else:  # pragma: no cover - depends on the kernel
        pytest.skip("this system completes connects to a full accept queue")
    yield port
    for sock in [*fillers, server]:
        sock.close()


@pytest.mark.parametrize("case", ["slow name lookup", "8 addresses dropping connects"])
def test_connecting_counts_against_the_callback_deadline(tmp_path, make, apps, servers, dns, request, case):
    """A DNS answer slower than ``callback_timeout``, or a name whose 8 addresses all drop connects, holds
    the dispatcher ``callback_timeout`` in all (not the resolver's time, nor the timeout once per address)."""
    timeout = 0.5
    healthy = servers()
    if case == "slow name lookup":
        name, port = dns.add("slow.invalid", slow=True), healthy.server.server_address[1]
    else:
        name, port = dns.add("dropping.invalid", copies=8), request.getfixturevalue("blackhole")
    hostile = f"http://{name}:{port}/hook"
    by_name = healthy.url.replace("127.0.0.1", dns.add("healthy.invalid"))  # a lookup that answers still works
    app = new_app(tmp_path / "data", callback_urls=[hostile, by_name], callback_timeout=timeout,
                  callback_attempts=1, callback_secret="k" * 32)
    apps.append(app)
    api = Api(app)
    api.extract(api.upload(make("flv_aac")))
    ended: list[float] = []

    def hostile_failed() -> bool:
        if any(row["url"] == hostile and row["state"] == "FAILED" for row in app.store.deliveries()):
            ended.append(time.monotonic())
        return bool(ended)

    wait_for(hostile_failed, timeout=10, what="the attempt to the hostile receiver")
    assert ended[0] - dns.asked[name] < 2 * timeout
    error = next(row["last_error"] for row in app.store.deliveries() if row["url"] == hostile)
    assert error.startswith("Timeout: no answer within 0.5 s"), error
    wait_for(lambda: len(healthy.requests) == 1, timeout=5, what="the callback to the receiver found by name")


@pytest.mark.parametrize("case", ["name lookup", "connect"])
def test_close_cuts_a_lookup_or_connect_in_flight(tmp_path, make, apps, dns, request, case):
    """``app.close()`` ends an attempt at once even before it has a connection: looking up the name, or
    connecting to an address that drops connects. The delivery stays pending, not counted."""
    if case == "name lookup":
        name, port = dns.add("slow.invalid", slow=True), 9
    else:
        name, port = dns.add("dropping.invalid"), request.getfixturevalue("blackhole")
    app = new_app(tmp_path / "data", callback_urls=[f"http://{name}:{port}/hook"], callback_timeout=30,
                  callback_secret="k" * 32)
    apps.append(app)
    api = Api(app)
    api.extract(api.upload(make("flv_aac")))
    wait_for(lambda: name in dns.asked, what="the attempt in flight")
    time.sleep(0.2)  # into the lookup or connect
    started = time.monotonic()
    app.close()
    assert time.monotonic() - started < 2
    delivery = app.store.deliveries()[0]
    assert delivery["state"] == "PENDING" and delivery["attempts"] == 0


# -- the generated callback key --------------------------------------------------------------------------


def test_processes_creating_the_key_together_agree_on_it(tmp_path, monkeypatch):
    """The worst interleaving: another process runs completely while this one makes its key."""
    real_token_hex = jobs.secrets.token_hex
    others: list[bytes] = []

    def token_hex(size: int) -> str:
        if not others:
            others.append(b"")
            others[0] = jobs._secret(tmp_path, None)  # the other process, starting meanwhile
        return real_token_hex(size)

    monkeypatch.setattr(jobs.secrets, "token_hex", token_hex)
    mine = jobs._secret(tmp_path, None)
    assert len(mine) == 64 and others == [mine]
    assert (tmp_path / "callback.key").read_text().strip().encode() == mine
    assert sorted(path.name for path in tmp_path.iterdir()) == ["callback.key"]  # no temporary file left


def test_a_key_file_still_being_written_is_waited_for(tmp_path):
    key_file = tmp_path / "callback.key"
    key_file.touch(mode=0o600)  # another process created it and has not written yet
    writer = threading.Timer(0.2, key_file.write_text, args=("ab" * 32,))
    writer.start()
    try:
        assert jobs._secret(tmp_path, None) == b"ab" * 32
    finally:
        writer.join()


@pytest.mark.parametrize("content", ["", "short-key\n"])
def test_an_empty_or_short_key_file_is_refused(tmp_path, monkeypatch, content):
    monkeypatch.setattr(jobs, "KEY_WAIT", 0.1, raising=False)
    (tmp_path / "callback.key").write_text(content)
    with pytest.raises(RuntimeError, match="callback.key holds no usable callback key"):
        jobs._secret(tmp_path, None)


# -- hostile input gets the documented 400, never a 500 --------------------------------------------------


@pytest.fixture
def idle_app(tmp_path, apps):
    app = new_app(tmp_path / "data", workers=0)
    apps.append(app)
    return app


def asset_dirs(app) -> list[str]:
    project = app.store.root / "assets" / PROJECT_A
    return sorted(os.listdir(project)) if project.exists() else []


@pytest.mark.parametrize(("case", "expected"), [
    ("nested JSON", "VOD.10054"),
    ("lone surrogate asset_id", "VOD.10053"),
    ("after over 2**63-1", "VOD.10053"),
    ("name of 256 UTF-8 bytes", "VOD.10053"),
])
def test_hostile_input_is_a_documented_400(idle_app, make, case, expected):
    api = Api(idle_app)
    if case == "nested JSON":
        response = api.client.post(api.url("/extract_audio"), data="[" * 10_000, headers=api.headers())
    elif case == "lone surrogate asset_id":
        response = api.client.post(api.url("/extract_audio"), data='{"asset_id": "\\ud800"}', headers=api.headers())
    elif case == "after over 2**63-1":
        assert api.events(after=2**63 - 1).json == {"events": [], "next_after": 2**63 - 1}  # the largest is fine
        response = api.events(after=2**63)
    else:
        response = api.client.post(api.url("?name=" + "%C3%A9" * 128), data=make("flv_aac").read_bytes(),
                                   headers=api.headers())
    assert (response.status_code, response.json["error_code"]) == (400, expected)
    assert asset_dirs(idle_app) == [] and not list((idle_app.store.root / "tmp").iterdir())


def test_a_failed_upload_leaves_no_file_or_directory(idle_app, make, monkeypatch):
    def locked():
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(idle_app.store, "transaction", locked)
    api = Api(idle_app)
    response = api.client.post(api.url("?name=a.flv"), data=make("flv_aac").read_bytes(), headers=api.headers())
    assert (response.status_code, response.json["error_code"]) == (500, "VOD.10500")
    assert asset_dirs(idle_app) == [] and not list((idle_app.store.root / "tmp").iterdir())


# -- partial files left in tmp/ by processes that are gone -----------------------------------------------


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_partials_of_dead_processes_are_removed_at_start(tmp_path, apps, live_process):
    data = tmp_path / "data"
    store = Store(data)
    name = store.temp_path(".aac").name.split("~")
    assert len(name) == 3 and name[1] == str(os.getpid())  # a partial's name says who writes it: host~pid~id
    host = name[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hour_ago = time.time() - 2 * 3600

    def partial(writer: str, suffix: str = ".aac", mtime: float | None = None) -> str:
        path = store.root / "tmp" / f"{writer}{uuid.uuid4().hex}{suffix}.part"
        path.write_bytes(b"partial")
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path.name

    removed = {partial(f"{host}~{dead.pid}~"),                        # its process has exited
               partial("", ".mp3", mtime=hour_ago),                  # an older version's name, long untouched
               partial("other-host~1~", mtime=hour_ago),             # not checkable, long untouched
               partial(f"{host}~{live_process.pid}~", mtime=hour_ago)}  # live pid, but untouched: reused pid
    kept = {partial(f"{host}~{live_process.pid}~", ".upload"),        # another live process writes it
            partial(f"{host}~{os.getpid()}~", ".upload"),             # our pid, recently written
            partial("", ".mp3"), partial("other-host~1~")}            # not checkable, recently written
    app = new_app(data, workers=1)
    apps.append(app)
    left = set(os.listdir(store.root / "tmp"))
    assert left == kept and not left & removed


def test_partials_with_our_pid_are_removed_when_stale_unless_we_write_them(tmp_path, make, apps, monkeypatch):
    """A killed earlier process that had this process's pid (a container restarts with the same hostname and
    pids) left partials named as ours: they are removed like a possibly reused pid's, once untouched for
    max(lease, STALE_PARTIAL). What this process writes (a running task's output, an upload) is kept however
    long since its last write."""
    gate = install_gate(monkeypatch)
    app = new_app(tmp_path / "data", workers=1)
    apps.append(app)
    api = Api(app)
    asset_id = api.upload(make("flv_aac"))
    api.extract(asset_id)
    wait_for(lambda: gate.started() == 1, what="the task running")
    store = app.store
    (output,) = store.partials()  # the running task's
    two_days_ago = time.time() - 2 * 86400
    leftover, recent = store.temp_path(".aac"), store.temp_path(".upload")  # named as ours, not ours
    for path in (leftover, recent):
        path.write_bytes(b"left by the killed process")
    for path in (output, leftover):
        os.utime(path, (two_days_ago, two_days_ago))
    assert app.pool.remove_stale_partials() == 1
    assert set(store.partials()) == {output, recent}
    with store.partial(".upload") as upload:
        upload.write_bytes(b"an upload in flight")
        os.utime(upload, (two_days_ago, two_days_ago))
        assert app.pool.remove_stale_partials() == 0
        assert set(store.partials()) == {output, upload, recent}
    assert not upload.exists()
    gate.open.set()
    assert api.wait(asset_id)["status"] == "SUCCEEDED"


def test_callbacks_without_requests_refuse_to_start_in_one_line(tmp_path, monkeypatch):
    """The callbacks need the 'jobs' extra: without requests, starting says so instead of a traceback."""
    import builtins

    from audio_middleware.jobs import create_app

    real_import = builtins.__import__

    def no_requests(name, *args, **kwargs):
        if name == "requests" or name.startswith("requests."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_requests)
    app = create_app(tmp_path / "data", tokens={"t": "p"}, callback_urls=["http://127.0.0.1:9/hook"], workers=0,
                     start=False)
    try:
        with pytest.raises(RuntimeError, match=r"audio_middleware\[jobs\]"):
            app.start()
    finally:
        app.close()
