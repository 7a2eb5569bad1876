"""The asynchronous extract-audio job API: a WSGI app, a bounded worker pool, signed callbacks.

::

    from audio_middleware.jobs import create_app
    app = create_app("/var/lib/audio-jobs", tokens={"s3cret": "project-1"},
                     callback_urls=["https://example.org/hooks/audio"], workers=2)

Run it alone with ``python -m audio_middleware.jobs --data-dir DIR --token TOKEN:PROJECT --port 8080``
or mount it under any prefix of another WSGI server. See docs/jobs.md.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..limits import Limits
from .api import JobApp
from .events import Dispatcher, sign, verify
from .store import Store, check_project
from .worker import WorkerPool

__all__ = ["JobApp", "Store", "create_app", "sign", "verify"]


#: A generated key is 64 hex characters; a key file with fewer than this many is refused (empty, cut short).
MIN_KEY_LENGTH = 32
#: Seconds to wait for another process that is still writing the key file (an older version wrote it in place).
KEY_WAIT = 2.0


def _secret(data_dir: Path, secret: str | bytes | None) -> bytes:
    """The HMAC key: the one given, else one generated once and kept in DATA_DIR/callback.key (0600).

    Several processes may start together on a fresh data directory (gunicorn
    workers): every one must end up with the same key, and never with an empty
    one. So the key is written completely to a private temporary file first and
    then hard-linked into place, which fails for all but one process; the others
    read the winner's complete key.
    """
    if secret:
        return secret.encode() if isinstance(secret, str) else bytes(secret)
    path = data_dir / "callback.key"
    if not path.exists():
        _publish_key(path)
    return _read_key(path)


def _publish_key(path: Path) -> None:
    """Create ``path`` holding a new random key, atomically; do nothing if another process was first."""
    fd, temp = tempfile.mkstemp(prefix=".callback.key.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process won: its key is the one
        except OSError:  # no hard links on this file system: exclusive create (readers wait for the content)
            with contextlib.suppress(FileExistsError):
                _write_exclusive(path, Path(temp).read_text())
    finally:
        os.unlink(temp)


def _write_exclusive(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _read_key(path: Path) -> bytes:
    """The key in ``path``; waits briefly for one still being written, then refuses an empty or short one."""
    deadline = time.monotonic() + KEY_WAIT
    while True:
        key = path.read_text().strip().encode()
        if len(key) >= MIN_KEY_LENGTH:
            return key
        if time.monotonic() >= deadline:
            raise RuntimeError(f"{path} holds no usable callback key ({len(key)} characters, at least "
                               f"{MIN_KEY_LENGTH} needed): delete it to generate a new one, or set "
                               "callback_secret")
        time.sleep(0.02)


def create_app(data_dir: str | os.PathLike, tokens: Mapping[str, str],
               callback_urls: Sequence[str] | Mapping[str, Sequence[str]] = (), workers: int = 2,
               callback_secret: str | bytes | None = None, *, base_url: str | None = None,
               max_upload: int = 8 * 1024**3, lease: float = 60.0, poll: float = 1.0,
               callback_timeout: float = 5.0, callback_attempts: int = 8, callback_backoff: float = 2.0,
               limits: Limits | None = None, allow_transcode: bool = True, start: bool = True) -> JobApp:
    """Build the job API on ``data_dir`` (created if needed) and start its threads.

    ``tokens`` maps each accepted ``X-Auth-Token`` to the one project it may
    use. ``callback_urls`` receive every completion event (a list), or only
    their project's (a mapping project -> list). ``workers`` threads extract
    (0: this process only serves the API). ``base_url`` (the public URL the
    app is mounted at) lets callbacks carry the download URL of the audio.
    ``start=False`` defers the threads to the first request the app serves
    (or an explicit ``app.start()``): use it when the app is built in a parent
    process that forks its servers (``gunicorn --preload``). Call
    ``app.close()`` to stop.
    """
    if not tokens:
        raise ValueError("at least one token is needed")
    for token, project in tokens.items():
        if not token or not isinstance(token, str):
            raise ValueError("tokens must be non-empty strings")
        check_project(project)
    store = Store(data_dir)
    if isinstance(callback_urls, Mapping):
        per_project = {check_project(project): list(urls) for project, urls in callback_urls.items()}
    else:
        per_project = {None: list(callback_urls)}

    def urls_for(project_id: str) -> list[str]:
        return per_project.get(project_id, []) + per_project.get(None, [])

    secret = _secret(store.root, callback_secret)
    dispatcher = None
    if any(per_project.values()):
        dispatcher = Dispatcher(store, secret, timeout=callback_timeout, max_attempts=callback_attempts,
                                backoff=callback_backoff, poll=poll, base_url=base_url)
    app = JobApp(store, tokens, dispatcher=dispatcher, max_upload=max_upload)
    app.pool = WorkerPool(store, workers, on_event=app.notify, callback_urls=urls_for, limits=limits, lease=lease,
                          poll=poll, allow_transcode=allow_transcode)
    app.callback_secret = secret
    if start:
        app.start()
    return app
