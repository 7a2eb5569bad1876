"""The extract-audio job API as one WSGI application (werkzeug routing, Request and Response).

::

    from audio_middleware.jobs import create_app
    app = create_app("/var/lib/audio-jobs", tokens={"s3cret": "project-1"})

Routes (relative to wherever the app is mounted: ``SCRIPT_NAME`` is honoured,
and URLs in answers are built from it)::

    POST   /v1.0/{project_id}/asset?name=FILE.mp4                 upload a source (raw body)   201
    POST   /v1.0/{project_id}/asset/extract_audio                 create a task (JSON)          202
    GET    /v1.0/{project_id}/asset/extract_audio?asset_id=...    the task                      200
    DELETE /v1.0/{project_id}/asset/extract_audio?asset_id=...    cancel a queued task          204
    GET    /v1.0/{project_id}/asset/extract_audio/events          completion events (poll)      200
    GET    /v1.0/{project_id}/asset/{asset_id}/content            download (Range, 304)         200/206

Every request needs ``X-Auth-Token``; a token is bound to one project. Errors
are JSON ``{"error_code", "error_msg"}`` (see :mod:`.errors`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

from ..sniff import Container, by_signature
from . import errors
from .errors import ApiError
from .store import OUTPUTS, SUCCEEDED, Store, check_name, task_json

if TYPE_CHECKING:
    from .events import Dispatcher
    from .worker import WorkerPool

log = logging.getLogger("audio_middleware.jobs")

URLS = Map([
    Rule("/v1.0/<project_id>/asset", methods=["POST"], endpoint="upload"),
    Rule("/v1.0/<project_id>/asset/extract_audio", methods=["POST"], endpoint="create_task"),
    Rule("/v1.0/<project_id>/asset/extract_audio", methods=["GET"], endpoint="get_task"),
    Rule("/v1.0/<project_id>/asset/extract_audio", methods=["DELETE"], endpoint="cancel_task"),
    Rule("/v1.0/<project_id>/asset/extract_audio/events", methods=["GET"], endpoint="events"),
    Rule("/v1.0/<project_id>/asset/<asset_id>/content", methods=["GET"], endpoint="content"),
], strict_slashes=False)

MAX_JSON = 64 * 1024
MAX_ID = 128
#: Event ids are SQLite integers: a cursor past the largest one is a client error, not an overflow.
MAX_EVENT_ID = 2**63 - 1
MAX_WAIT = 30.0
BLOCK = 1024 * 1024
CONTENT_TYPES = {Container.MP4: "video/mp4", Container.FLV: "video/x-flv"}


def _json(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(data), status=status, headers=dict(headers or {}), mimetype="application/json")


def _error(error: ApiError) -> Response:
    return _json(error.body(), error.status, error.headers)


def _is_unicode(text: str) -> bool:
    """False for text holding lone surrogates: it cannot be encoded, stored or sent back."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class JobApp:
    """WSGI callable serving the routes above; owns the worker pool and the callback dispatcher."""

    def __init__(self, store: Store, tokens: Mapping[str, str], *, pool: WorkerPool | None = None,
                 dispatcher: Dispatcher | None = None, max_upload: int = 8 * 1024**3) -> None:
        self.store = store
        self.tokens = dict(tokens)
        self.pool = pool
        self.dispatcher = dispatcher
        self.max_upload = max_upload
        #: The HMAC key of callbacks (set by :func:`create_app`).
        self.callback_secret: bytes | None = None
        #: Start the threads on the first request of a process that has none (lazy start, forks).
        self.autostart = True
        self._event_signal = threading.Condition()
        self._started_pid: int | None = None
        self._start_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and the callback dispatcher in this process.

        After a fork the parent's threads do not exist in the child: their
        state is dropped and new threads are started.
        """
        with self._start_lock:
            if self._started_pid == os.getpid():
                return
            forked = self._started_pid is not None
            self._started_pid = os.getpid()
            for part in (self.pool, self.dispatcher):
                if part is not None:
                    if forked:
                        part.forked()
                    part.start()

    def close(self) -> None:
        """Stop the workers (running tasks go back to the queue) and the dispatcher."""
        self.autostart = False
        for part in (self.pool, self.dispatcher):
            if part is not None:
                part.stop()
        self._started_pid = None

    def __enter__(self) -> JobApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def notify(self, event: dict) -> None:
        """A task ended: wake long polls and the dispatcher."""
        with self._event_signal:
            self._event_signal.notify_all()
        if self.dispatcher is not None:
            self.dispatcher.wake()

    # -- WSGI --------------------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.autostart and self._started_pid != os.getpid():
            self.start()  # first request of a lazily started app, or of a process forked after start
        request = Request(environ)
        adapter = URLS.bind_to_environ(environ)
        try:
            response = self._dispatch(request, adapter)
        except ApiError as error:
            response = _error(error)
        except RequestRedirect as redirect:
            response = redirect.get_response(environ)
        except HTTPException as error:
            code = {404: errors.NO_ROUTE, 405: errors.BAD_METHOD, 411: errors.LENGTH_REQUIRED,
                    413: errors.TOO_LARGE}.get(error.code or 400, errors.INVALID_PARAMETER)
            headers = dict(error.get_headers(environ))
            headers.pop("Content-Type", None)
            response = _error(ApiError(code, error.description, status=error.code, headers=headers))
        except Exception:  # noqa: BLE001 - answer JSON, log the details
            log.exception("job API request failed: %s %s", request.method, request.path)
            response = _error(ApiError(errors.INTERNAL))
        return response(environ, start_response)

    def _dispatch(self, request: Request, adapter: MapAdapter) -> Response:
        try:
            endpoint, args = adapter.match()
        except NotFound:
            raise ApiError(errors.NO_ROUTE) from None
        except MethodNotAllowed as error:
            allowed = ", ".join(sorted(error.valid_methods or ()))
            raise ApiError(errors.BAD_METHOD, headers={"Allow": allowed}) from None
        self._authorize(request, args["project_id"])
        return getattr(self, f"_{endpoint}")(request, adapter, **args)

    def _authorize(self, request: Request, project_id: str) -> None:
        token = request.headers.get("X-Auth-Token", "")
        if not token:
            raise ApiError(errors.INVALID_TOKEN, "Missing X-Auth-Token header")
        project = None
        for known, bound in self.tokens.items():  # compare with every token: no timing hint
            if hmac.compare_digest(known.encode(), token.encode()):
                project = bound
        if project is None:
            raise ApiError(errors.INVALID_TOKEN, "Invalid X-Auth-Token")
        if project != project_id:
            raise ApiError(errors.WRONG_PROJECT, f"The token is not valid for project {project_id}")

    # -- helpers -----------------------------------------------------------------------------------

    def _content_url(self, adapter: MapAdapter, project_id: str, audio_id: str, *, external: bool = True) -> str:
        return adapter.build("content", {"project_id": project_id, "asset_id": audio_id}, force_external=external)

    def _task(self, adapter: MapAdapter, row: dict) -> dict:
        task = task_json(row)
        if "audio" in task:
            task["audio"]["url"] = self._content_url(adapter, row["project_id"], row["audio_asset_id"])
        return task

    def _with_url(self, adapter: MapAdapter, event: dict) -> dict:
        task = event.get("task", {})
        if task.get("status") == SUCCEEDED and "audio" in task:
            task["audio"]["url"] = self._content_url(adapter, task["project_id"], task["audio_asset_id"])
        return event

    @staticmethod
    def _body(request: Request) -> dict:
        if request.content_length is not None and request.content_length > MAX_JSON:
            raise ApiError(errors.TOO_LARGE, f"The JSON body is larger than {MAX_JSON} bytes")
        raw = request.stream.read(MAX_JSON + 1)
        if len(raw) > MAX_JSON:
            raise ApiError(errors.TOO_LARGE, f"The JSON body is larger than {MAX_JSON} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise ApiError(errors.INVALID_JSON, f"The request body is not valid JSON: {error}") from None
        except RecursionError:  # 64 KiB of '[' parses to a nesting deeper than the interpreter's stack
            raise ApiError(errors.INVALID_JSON, "The request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(errors.INVALID_PARAMETER, "The request body must be a JSON object")
        return body

    @staticmethod
    def _asset_id(value: object, where: str = "asset_id") -> str:
        """A usable id: JSON strings may hold lone surrogates ("\\ud800"), which SQLite cannot store."""
        if not isinstance(value, str) or not value or len(value) > MAX_ID or not _is_unicode(value):
            raise ApiError(errors.INVALID_PARAMETER, f"{where} must be a non-empty string of at most {MAX_ID} "
                                                     "characters (valid Unicode)")
        return value

    @staticmethod
    def _format(value: object, default: str | None) -> str | None:
        if value is None or value == "":
            return default
        if not isinstance(value, str) or value.upper() not in OUTPUTS:
            raise ApiError(errors.INVALID_PARAMETER, f"format must be one of {', '.join(OUTPUTS)}, not {value!r}")
        return value.upper()

    def _source_asset(self, project_id: str, asset_id: str) -> dict:
        asset = self.store.asset(project_id, asset_id)
        if asset is None or asset["kind"] != "source":
            raise ApiError(errors.UNKNOWN_ASSET, f"Media asset or resource does not exist: {asset_id}")
        return asset

    # -- endpoints ---------------------------------------------------------------------------------

    def _create_task(self, request: Request, adapter: MapAdapter, project_id: str) -> Response:
        body = self._body(request)
        asset_id = self._asset_id(body.get("asset_id"))
        parameter = body.get("parameter")
        parameter = {} if parameter is None else parameter
        if not isinstance(parameter, dict):
            raise ApiError(errors.INVALID_PARAMETER, "parameter must be a JSON object")
        fmt = self._format(parameter.get("format"), "AAC")
        made = self.store.create_task(project_id, asset_id, fmt)
        if made is None:
            raise ApiError(errors.UNKNOWN_ASSET, f"Media asset or resource does not exist: {asset_id}")
        row, created = made
        if created and self.pool is not None:
            self.pool.wake()
        location = adapter.build("get_task", {"project_id": project_id, "asset_id": asset_id, "format": fmt},
                                 method="GET", force_external=True)
        return _json({"asset_id": asset_id, "audio_asset_id": row["audio_asset_id"]}, 202, {"Location": location})

    def _get_task(self, request: Request, adapter: MapAdapter, project_id: str) -> Response:
        asset_id = self._asset_id(request.args.get("asset_id"))
        fmt = self._format(request.args.get("format"), None)
        self._source_asset(project_id, asset_id)
        row = self.store.task(project_id, asset_id, fmt)
        if row is None:
            raise ApiError(errors.UNKNOWN_ASSET, f"No extract-audio task for asset {asset_id}")
        return _json(self._task(adapter, row))

    def _cancel_task(self, request: Request, adapter: MapAdapter, project_id: str) -> Response:
        asset_id = self._asset_id(request.args.get("asset_id"))
        fmt = self._format(request.args.get("format"), None)
        self._source_asset(project_id, asset_id)
        outcome, _ = self.store.cancel(project_id, asset_id, fmt)
        if outcome == "no_task":
            raise ApiError(errors.UNKNOWN_ASSET, f"No extract-audio task for asset {asset_id}")
        if outcome == "not_queued":
            row = self.store.task(project_id, asset_id, fmt)
            raise ApiError(errors.NOT_QUEUED, f"The task is {row['status'] if row else 'gone'}; only a QUEUED "
                                              "task can be cancelled")
        return Response(status=204)

    def _events(self, request: Request, adapter: MapAdapter, project_id: str) -> Response:
        try:
            after = int(request.args.get("after", 0))
            limit = int(request.args.get("limit", 100))
            wait = float(request.args.get("wait", 0))
        except ValueError:
            raise ApiError(errors.INVALID_PARAMETER, "after and limit must be integers, wait a number") from None
        if not 0 <= after <= MAX_EVENT_ID or not 1 <= limit <= 1000 or not 0 <= wait <= MAX_WAIT:
            raise ApiError(errors.INVALID_PARAMETER, f"need 0 <= after <= {MAX_EVENT_ID}, 1 <= limit <= 1000, "
                                                     f"0 <= wait <= {MAX_WAIT}")
        deadline = time.monotonic() + wait
        while True:
            found = self.store.events(project_id, after, limit)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                break
            with self._event_signal:
                self._event_signal.wait(min(remaining, 0.25))  # also polls: events may come from another process
        events = [self._with_url(adapter, event) for event in found]
        return _json({"events": events, "next_after": events[-1]["event_id"] if events else after})

    def _upload(self, request: Request, adapter: MapAdapter, project_id: str) -> Response:
        name = request.args.get("name", "")
        try:
            check_name(name)
        except ValueError as error:
            raise ApiError(errors.INVALID_PARAMETER, str(error)) from None
        if request.content_length is None and not request.environ.get("wsgi.input_terminated"):
            raise ApiError(errors.LENGTH_REQUIRED)
        if request.content_length is not None and request.content_length > self.max_upload:
            raise ApiError(errors.TOO_LARGE, f"Uploads are limited to {self.max_upload} bytes")
        with self.store.partial(".upload") as temp:
            container = self._receive(request, temp)
            asset = self.store.adopt(project_id, name, temp, CONTENT_TYPES[container])
        location = self._content_url(adapter, project_id, asset["asset_id"])
        return _json(asset, 201, {"Location": location})

    def _receive(self, request: Request, temp: Path) -> Container:
        """Stream the body to ``temp`` in blocks; check the size limit and the first bytes as they come."""
        head = b""
        size = 0
        stream = request.stream
        with open(temp, "wb") as out:
            while True:
                block = stream.read(BLOCK)
                if not block:
                    break
                if len(head) < 16:
                    head = (head + block)[:16]
                    if len(head) == 16 and by_signature(head) is None:
                        raise ApiError(errors.NOT_MEDIA)
                size += len(block)
                if size > self.max_upload:
                    raise ApiError(errors.TOO_LARGE, f"Uploads are limited to {self.max_upload} bytes")
                out.write(block)
        if request.content_length is not None and size != request.content_length:
            raise ApiError(errors.INVALID_PARAMETER, f"The body ended after {size} of {request.content_length} bytes")
        container = by_signature(head)
        if container is None:
            raise ApiError(errors.NOT_MEDIA)
        return container

    def _content(self, request: Request, adapter: MapAdapter, project_id: str, asset_id: str) -> Response:
        asset = self.store.asset(project_id, asset_id)
        if asset is None:
            raise ApiError(errors.UNKNOWN_ASSET, f"Media asset or resource does not exist: {asset_id}", status=404)
        if asset["state"] != "READY" or not asset["path"]:
            task = self.store.task_by_audio(asset_id)
            status = task["status"] if task else asset["state"]
            raise ApiError(errors.NOT_READY, f"The audio asset is not ready (task status {status})")
        response = send_file(self.store.path(asset["path"]), request.environ, mimetype=asset["content_type"],
                             download_name=asset["name"], conditional=True, etag=True, max_age=None)
        response.headers.setdefault("Accept-Ranges", "bytes")  # werkzeug 3 sends it on every answer, 2.3 on a 206
        return response
