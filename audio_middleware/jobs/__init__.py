"""The asynchronous extract-audio job API: a WSGI app, a bounded worker pool, signed callbacks.

::

    from audio_middleware.jobs import create_app
    app = create_app("/var/lib/audio-jobs", tokens={"s3cret": "project-1"},
                     callback_urls=["https://example.org/hooks/audio"], workers=2)

Run it alone with ``python -m audio_middleware.jobs --data-dir DIR --token TOKEN:PROJECT --port 8080``
or mount it under any prefix of another WSGI server. See docs/jobs.md.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..limits import Limits
from .api import JobApp
from .events import Dispatcher, sign, verify
from .store import Store, check_project
from .worker import WorkerPool

__all__ = ["JobApp", "Store", "create_app", "sign", "verify"]


def _secret(data_dir: Path, secret: str | bytes | None) -> bytes:
    """The HMAC key: the one given, else one generated once and kept in DATA_DIR/callback.key (0600)."""
    if secret:
        return secret.encode() if isinstance(secret, str) else bytes(secret)
    path = data_dir / "callback.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


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
