"""Run a real gunicorn on 127.0.0.1 for a test::

    from tests.servers import run_gunicorn   # or: from servers import run_gunicorn

    with run_gunicorn("example_app.flask_app:app", env={"AUDIO_DEMO_MEDIA": str(tmp)}) as url:
        requests.get(url + "/media/sample.mp4?ali_audio_only=1")
        url.pid, url.port, url.log_path, url.log()   # process id, port, and the server's log

Gunicorn binds port 0 (the kernel picks a free port, no race with other tests) and
the real port is read from its "Listening at" log line; the context manager then
waits until an HTTP request gets an answer. On exit it sends SIGTERM, waits, and
kills the process group (the master and its workers) if they are still there.
The log (error log and, when you pass ``--access-logfile -``, the access log) is
kept in a temporary file: ``url.log()`` reads it, and it is printed on failure.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


class ServerURL(str):
    """The base URL (``http://127.0.0.1:PORT``, no trailing slash) plus facts about the server."""

    process: subprocess.Popen
    port: int
    log_path: pathlib.Path

    def __new__(cls, port: int, process: subprocess.Popen, log_path: pathlib.Path) -> ServerURL:
        url = super().__new__(cls, f"http://127.0.0.1:{port}")
        url.port, url.process, url.log_path = port, process, log_path
        return url

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return str(self)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _gunicorn_has(option: str) -> bool:
    try:
        from gunicorn.config import KNOWN_SETTINGS
    except ImportError:  # pragma: no cover - gunicorn too old or missing
        return False
    return any(option in (getattr(setting, "cli", None) or ()) for setting in KNOWN_SETTINGS)


@contextlib.contextmanager
def run_gunicorn(
    app_spec: str,
    *,
    env: Mapping[str, str] | None = None,
    workers: int = 1,
    threads: int = 1,
    worker_class: str = "gthread",
    extra_args: Sequence[str] = (),
    cwd: str | os.PathLike | None = None,
    start_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[ServerURL]:
    """Start ``gunicorn app_spec`` on 127.0.0.1 (free port); yield its :class:`ServerURL`; stop it.

    ``env`` is added to this process's environment; ``cwd`` (default: the repository root) is
    the working directory, which gunicorn puts on ``sys.path``; ``extra_args`` go before the
    app spec (``-c example_app/gunicorn.conf.py``, ``--access-logfile -``...). Command-line
    options win over a config file, so the bind and worker settings here always apply.
    """
    log_file = tempfile.NamedTemporaryFile(prefix="gunicorn-", suffix=".log", delete=False)
    log_path = pathlib.Path(log_file.name)
    command = [
        sys.executable, "-m", "gunicorn",
        "--bind", "127.0.0.1:0",
        "--workers", str(workers),
        "--threads", str(threads),
        "--worker-class", worker_class,
        "--graceful-timeout", "5",
        "--log-level", "info",
    ]
    if _gunicorn_has("--no-control-socket"):
        command.append("--no-control-socket")  # gunicorn >= 25: one shared socket path per user otherwise
    command += [*extra_args, app_spec]
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        command,
        cwd=str(cwd or ROOT),
        env=process_env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the master and its workers, nothing else
    )
    log_file.close()
    try:
        port = _wait_listening(process, log_path, start_timeout)
        url = ServerURL(port, process, log_path)
        _wait_answering(process, port, log_path, start_timeout)
        yield url
    except BaseException:
        sys.stderr.write(f"--- gunicorn log ({' '.join(command)}) ---\n{_read(log_path)}\n---\n")
        raise
    finally:
        _stop(process, stop_timeout)
        log_path.unlink(missing_ok=True)


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _wait_listening(process: subprocess.Popen, log_path: pathlib.Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _LISTENING.search(_read(log_path))
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with status {process.returncode} before listening")
        time.sleep(0.05)
    raise TimeoutError(f"gunicorn did not start listening within {timeout} s")


def _wait_answering(process: subprocess.Popen, port: int, log_path: pathlib.Path, timeout: float) -> None:
    """Until a worker answers (any status): the master listens before its workers have booted."""
    deadline = time.monotonic() + timeout
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=max(1.0, deadline - time.monotonic()))
        try:
            connection.request("HEAD", "/__server_ready__")
            connection.getresponse().read()
            return
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with status {process.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn on port {port} did not answer within {timeout} s") from None
            time.sleep(0.05)
        finally:
            connection.close()


def _stop(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the master (graceful), then SIGKILL its process group if anything is left."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # workers left behind by a killed master
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
