"""Completion events POSTed to a local receiver: HMAC signature, retries with backoff, giving up, resuming
after a restart, never holding up the workers."""

from __future__ import annotations

import json
import threading
import time

import pytest

from audio_middleware.jobs import sign, verify

from .test_jobs_support import PROJECT_A, PROJECT_B, TOKEN_B, Api, Receiver, new_app, wait_for

SECRET = "callback-secret"


@pytest.fixture
def receivers():
    made = []

    def start(*args, **kw) -> Receiver:
        receiver = Receiver(*args, **kw)
        made.append(receiver)
        return receiver

    yield start
    for receiver in made:
        receiver.close()


def started(apps, data_dir, **options):
    options.setdefault("callback_secret", SECRET)
    options.setdefault("callback_backoff", 0.05)
    app = new_app(data_dir, **options)
    apps.append(app)
    return app


def check_signature(request: dict, secret: bytes = SECRET.encode()) -> None:
    headers = request["headers"]
    assert headers["X-Audio-Signature"].startswith("sha256=")
    assert verify(secret, headers["X-Audio-Timestamp"], request["body"], headers["X-Audio-Signature"])


def test_events_are_posted_and_signed(tmp_path, make, receivers, apps):
    receiver = receivers()
    app = started(apps, tmp_path / "data", callback_urls=[receiver.url], base_url="https://audio.example/api/")
    api = Api(app)
    good, bad = api.upload(make("flv_aac")), api.upload(make("mp4_video_only"))
    good_id = api.extract(good).json["audio_asset_id"]
    api.extract(bad)
    wait_for(lambda: len(receiver.requests) == 2, what="two callbacks")
    by_asset = {json.loads(r["body"])["task"]["asset_id"]: r for r in receiver.requests}
    for request in by_asset.values():
        check_signature(request)
        assert request["headers"]["Content-Type"] == "application/json"
        assert request["path"] == "/hook"
    success = json.loads(by_asset[good]["body"])
    assert success["event_type"] == "extract_audio.succeeded" == by_asset[good]["headers"]["X-Audio-Event-Type"]
    assert str(success["event_id"]) == by_asset[good]["headers"]["X-Audio-Event-Id"]
    assert success["task"]["status"] == "SUCCEEDED" and success["task"]["audio"]["size"] > 0
    assert success["task"]["audio"]["url"] == f"https://audio.example/api/v1.0/{PROJECT_A}/asset/{good_id}/content"
    failure = json.loads(by_asset[bad]["body"])
    assert failure["event_type"] == "extract_audio.failed" and failure["task"]["reason_code"] == "NO_AUDIO"
    wait_for(lambda: {d["state"] for d in app.store.deliveries()} == {"DELIVERED"}, what="delivery records")


def test_a_tampered_or_stale_callback_does_not_verify():
    body = b'{"event_id": 1}'
    now = int(time.time())
    signature = sign(b"k", str(now), body)
    assert verify(b"k", str(now), body, signature)
    assert not verify(b"k", str(now), body + b" ", signature)
    assert not verify(b"other", str(now), body, signature)
    assert not verify(b"k", str(now - 3600), body, sign(b"k", str(now - 3600), body))
    assert not verify(b"k", "yesterday", body, signature)


def test_failed_deliveries_are_retried_with_backoff(tmp_path, make, receivers, apps):
    receiver = receivers(answers=[500, 503])
    app = started(apps, tmp_path / "data", callback_urls=[receiver.url], callback_backoff=0.1)
    api = Api(app)
    api.extract(api.upload(make("flv_aac")))
    wait_for(lambda: len(receiver.requests) == 3, what="three attempts")
    times = [request["time"] for request in receiver.requests]
    assert times[1] - times[0] >= 0.09 and times[2] - times[1] >= 0.19  # 0.1 s, then 0.2 s
    assert len({request["headers"]["X-Audio-Event-Id"] for request in receiver.requests}) == 1
    for request in receiver.requests:
        check_signature(request)
    wait_for(lambda: app.store.deliveries()[0]["state"] == "DELIVERED", what="the delivery record")
    assert app.store.deliveries()[0]["attempts"] == 3
    time.sleep(0.3)
    assert len(receiver.requests) == 3  # nothing more once delivered


def test_delivery_gives_up_after_max_attempts(tmp_path, make, receivers, apps):
    receiver = receivers(answers=[500] * 10)
    app = started(apps, tmp_path / "data", callback_urls=[receiver.url], callback_attempts=3)
    api = Api(app)
    api.extract(api.upload(make("flv_aac")))
    wait_for(lambda: app.store.deliveries() and app.store.deliveries()[0]["state"] == "FAILED", what="giving up")
    delivery = app.store.deliveries()[0]
    assert delivery["attempts"] == 3 and delivery["last_error"] == "HTTP 500"
    time.sleep(0.3)
    assert len(receiver.requests) == 3


def test_unreachable_receiver_is_retried(tmp_path, make, apps):
    app = started(apps, tmp_path / "data", callback_urls=["http://127.0.0.1:9/none"], callback_attempts=2)
    api = Api(app)
    api.extract(api.upload(make("flv_aac")))
    wait_for(lambda: app.store.deliveries() and app.store.deliveries()[0]["state"] == "FAILED", what="giving up")
    assert "ConnectionError" in app.store.deliveries()[0]["last_error"]


def test_a_slow_receiver_never_holds_up_the_workers(tmp_path, make, receivers, apps):
    hold = threading.Event()
    receiver = receivers(hold=hold)
    app = started(apps, tmp_path / "data", callback_urls=[receiver.url], workers=1)
    api = Api(app)
    assets = [api.upload(make("flv_aac")) for _ in range(3)]
    for asset in assets:
        api.extract(asset)
    for asset in assets:
        assert api.wait(asset)["status"] == "SUCCEEDED"
    wait_for(lambda: receiver.arrived == 1, what="the first callback")
    assert receiver.requests == []  # all three done while the first callback is still unanswered
    hold.set()
    wait_for(lambda: len(receiver.requests) == 3, what="the held callbacks")


def test_pending_deliveries_resume_after_a_restart(tmp_path, make, receivers, apps):
    receiver = receivers(answers=[503])
    data = tmp_path / "data"
    first = started(apps, data, callback_urls=[receiver.url], callback_backoff=0.5)
    api = Api(first)
    api.extract(api.upload(make("flv_aac")))
    wait_for(lambda: len(receiver.requests) == 1, what="the first attempt")
    first.close()
    assert first.store.deliveries()[0]["state"] == "PENDING"

    second = started(apps, data, callback_urls=[receiver.url])
    wait_for(lambda: second.store.deliveries()[0]["state"] == "DELIVERED", what="the resumed delivery")
    assert len(receiver.requests) == 2
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"]


def test_callbacks_per_project(tmp_path, make, receivers, apps):
    to_a, to_b = receivers(), receivers()
    app = started(apps, tmp_path / "data", callback_urls={PROJECT_A: [to_a.url], PROJECT_B: [to_b.url]})
    api_b = Api(app, TOKEN_B, PROJECT_B)
    asset = api_b.upload(make("flv_aac"))
    api_b.extract(asset)
    wait_for(lambda: len(to_b.requests) == 1, what="project B's callback")
    time.sleep(0.2)
    assert to_a.requests == []
    assert to_b.events()[0]["project_id"] == PROJECT_B


def test_default_secret_is_generated_once_and_kept(tmp_path, make, receivers, apps):
    receiver = receivers()
    data = tmp_path / "data"
    first = started(apps, data, callback_urls=[receiver.url], callback_secret=None)
    key_file = data / "callback.key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert first.callback_secret == key_file.read_text().strip().encode()
    api = Api(first)
    api.extract(api.upload(make("flv_aac")))
    wait_for(lambda: len(receiver.requests) == 1, what="the callback")
    check_signature(receiver.requests[0], first.callback_secret)
    first.close()
    second = started(apps, data, callback_urls=[receiver.url], callback_secret=None)
    assert second.callback_secret == first.callback_secret
