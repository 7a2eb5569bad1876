"""Helpers shared by the job API tests (no tests here): apps on a temp dir, a small API client, a gate
that holds extractions, and a local HTTP receiver for callbacks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from werkzeug.test import Client

from audio_middleware.jobs import create_app, worker

TOKEN_A, PROJECT_A = "token-for-a", "project-a"
TOKEN_B, PROJECT_B = "token-for-b", "project-b"
TOKENS = {TOKEN_A: PROJECT_A, TOKEN_B: PROJECT_B}
DONE = ("SUCCEEDED", "FAILED", "CANCELLED")


def new_app(data_dir, **options):
    """An app polling fast (tests should not wait a second for idle workers)."""
    options.setdefault("poll", 0.05)
    return create_app(data_dir, TOKENS, **options)


class Api:
    """The API as one project sees it, through werkzeug's test client."""

    def __init__(self, app, token: str = TOKEN_A, project: str = PROJECT_A, prefix: str = "") -> None:
        self.client = Client(app)
        self.token = token
        self.project = project
        self.prefix = prefix

    def url(self, tail: str) -> str:
        return f"{self.prefix}/v1.0/{self.project}/asset{tail}"

    def headers(self, extra: dict | None = None) -> dict:
        return {"X-Auth-Token": self.token, **(extra or {})}

    def upload(self, path, name: str | None = None) -> str:
        with open(path, "rb") as handle:
            data = handle.read()
        response = self.client.post(self.url(f"?name={name or 'video.mp4'}"), data=data, headers=self.headers())
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.json["asset_id"]

    def extract(self, asset_id: str, fmt: str | None = None, **body):
        payload = {"asset_id": asset_id, **body}
        if fmt is not None:
            payload["parameter"] = {"format": fmt}
        return self.client.post(self.url("/extract_audio"), json=payload, headers=self.headers())

    def task(self, asset_id: str, fmt: str | None = None):
        query = f"?asset_id={asset_id}" + (f"&format={fmt}" if fmt else "")
        return self.client.get(self.url(f"/extract_audio{query}"), headers=self.headers())

    def cancel(self, asset_id: str, fmt: str | None = None):
        query = f"?asset_id={asset_id}" + (f"&format={fmt}" if fmt else "")
        return self.client.delete(self.url(f"/extract_audio{query}"), headers=self.headers())

    def events(self, **query):
        text = "&".join(f"{key}={value}" for key, value in query.items())
        return self.client.get(self.url(f"/extract_audio/events?{text}"), headers=self.headers())

    def content(self, asset_id: str, headers: dict | None = None):
        return self.client.get(self.url(f"/{asset_id}/content"), headers=self.headers(headers))

    def wait(self, asset_id: str, fmt: str | None = None, statuses=DONE, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            response = self.task(asset_id, fmt)
            assert response.status_code == 200, response.get_data(as_text=True)
            if response.json["status"] in statuses:
                return response.json
            assert time.monotonic() < deadline, f"task still {response.json['status']} after {timeout}s"
            time.sleep(0.02)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Gate:
    """Stands in for ``write_audio`` in the worker: counts runs, holds them until opened.

    While held it keeps calling the progress callback, so a stopping pool can
    abort it (the same way a real long extraction is aborted).
    """

    def __init__(self, real: Callable) -> None:
        self.real = real
        self.open = threading.Event()
        self.lock = threading.Lock()
        self.runs: dict[str, int] = {}
        self.finished: dict[str, int] = {}

    def __call__(self, path: str, out, fmt: str, **kw):
        with self.lock:
            self.runs[path] = self.runs.get(path, 0) + 1
        progress = kw.get("progress")
        while not self.open.wait(0.01):
            if progress is not None:
                progress(0, 1)
        result = self.real(path, out, fmt, **kw)
        with self.lock:
            self.finished[path] = self.finished.get(path, 0) + 1
        return result

    def started(self) -> int:
        with self.lock:
            return sum(self.runs.values())


def install_gate(monkeypatch, opened: bool = False) -> Gate:
    gate = Gate(worker.write_audio)
    if opened:
        gate.open.set()
    monkeypatch.setattr(worker, "write_audio", gate)
    return gate


class Receiver:
    """A local HTTP server on 127.0.0.1 that records callback POSTs; ``answers`` scripts the statuses."""

    def __init__(self, answers: list[int] | None = None, hold: threading.Event | None = None) -> None:
        self.requests: list[dict] = []
        self.answers = list(answers or [])
        self.hold = hold  # when given, each request waits for it before being answered
        self.arrived = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.arrived += 1
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                              "time": time.monotonic()})
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(request["body"]) for request in self.requests]

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()
