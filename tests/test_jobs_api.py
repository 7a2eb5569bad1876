"""Every endpoint and error code of the job API, auth isolation, mounting under a prefix, and the outputs'
audio checked with PyAV against the source."""

from __future__ import annotations

import io
import threading

import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import EnvironBuilder, run_wsgi_app
from werkzeug.wrappers import Response

from audio_middleware import elementary

try:  # works whether or not tests/ is a package
    from tests import media
    from tests.test_jobs_support import PROJECT_A, PROJECT_B, TOKEN_A, TOKEN_B, Api, install_gate, new_app
except ImportError:  # pragma: no cover
    import media
    from test_jobs_support import PROJECT_A, PROJECT_B, TOKEN_A, TOKEN_B, Api, install_gate, new_app


@pytest.fixture
def app(tmp_path):
    application = new_app(tmp_path / "data", workers=2)
    yield application
    application.close()


@pytest.fixture
def idle_app(tmp_path):
    """No workers: tasks stay QUEUED."""
    application = new_app(tmp_path / "data", workers=0)
    yield application
    application.close()


def error_of(response) -> tuple[int, str]:
    assert response.mimetype == "application/json"
    body = response.json
    assert set(body) == {"error_code", "error_msg"} and body["error_msg"]
    return response.status_code, body["error_code"]


# -- upload ------------------------------------------------------------------------------------


def test_upload_stores_the_raw_body(idle_app, make):
    api = Api(idle_app)
    path = make("mp4_faststart")
    response = api.client.post(api.url("?name=talk.mp4"), data=path.read_bytes(), headers=api.headers())
    assert response.status_code == 201
    asset = response.json
    assert asset["name"] == "talk.mp4" and asset["size"] == path.stat().st_size
    assert response.headers["Location"].endswith(f"/v1.0/{PROJECT_A}/asset/{asset['asset_id']}/content")
    download = api.content(asset["asset_id"])
    assert download.status_code == 200 and download.data == path.read_bytes()
    assert download.mimetype == "video/mp4"
    assert not list((idle_app.store.root / "tmp").iterdir())


@pytest.mark.parametrize("query", ["", "?name=", "?name=a/b.mp4", "?name=..", "?name=a%5Cb.mp4", "?name=a%00b"])
def test_upload_needs_a_plain_name(idle_app, make, query):
    api = Api(idle_app)
    response = api.client.post(api.url(query), data=make("flv_aac").read_bytes(), headers=api.headers())
    assert error_of(response) == (400, "VOD.10053")


def test_upload_refuses_non_media(idle_app):
    api = Api(idle_app)
    for body in (b"<html>not a video</html>", b"tiny"):
        response = api.client.post(api.url("?name=x.mp4"), data=body, headers=api.headers())
        assert error_of(response) == (400, "VOD.10086")
    assert not list((idle_app.store.root / "tmp").iterdir())


def test_upload_size_limit(tmp_path, make):
    application = new_app(tmp_path / "data", workers=0, max_upload=1000)
    try:
        api = Api(application)
        response = api.client.post(api.url("?name=x.mp4"), data=make("mp4_faststart").read_bytes(),
                                   headers=api.headers())
        assert error_of(response) == (413, "VOD.10085")
        chunked = EnvironBuilder(path=api.url("?name=x.mp4"), method="POST", headers=api.headers(),
                                 input_stream=io.BytesIO(make("mp4_faststart").read_bytes())).get_environ()
        chunked.pop("CONTENT_LENGTH", None)
        chunked["wsgi.input_terminated"] = True
        status = run_wsgi_app(application, chunked)[1]
        assert status.startswith("413")
    finally:
        application.close()


def test_upload_without_length(idle_app, make):
    api = Api(idle_app)
    environ = EnvironBuilder(path=api.url("?name=x.mp4"), method="POST", headers=api.headers(),
                             input_stream=io.BytesIO(make("mp4_faststart").read_bytes())).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    body, status, headers = run_wsgi_app(idle_app, environ)
    assert status.startswith("411") and b"VOD.10087" in b"".join(body)
    environ = EnvironBuilder(path=api.url("?name=x.mp4"), method="POST", headers=api.headers(),
                             input_stream=io.BytesIO(make("mp4_faststart").read_bytes())).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True  # a server that de-chunks the body
    body, status, headers = run_wsgi_app(idle_app, environ)
    assert status.startswith("201")


# -- create / get / cancel ---------------------------------------------------------------------


def test_create_answers_at_once_and_defaults_to_aac(idle_app, make):
    api = Api(idle_app)
    asset = api.upload(make("mp4_faststart"))
    response = api.extract(asset)
    assert response.status_code == 202
    assert set(response.json) == {"asset_id", "audio_asset_id"} and response.json["asset_id"] == asset
    assert "extract_audio?asset_id=" in response.headers["Location"]
    task = api.task(asset).json
    assert task["status"] == "QUEUED" and task["format"] == "AAC"
    assert task["audio_asset_id"] == response.json["audio_asset_id"]
    assert "audio" not in task and task["end_time"] is None


def test_create_is_idempotent_per_asset_and_format(idle_app, make):
    api = Api(idle_app)
    asset = api.upload(make("mp4_faststart"))
    first = api.extract(asset, "AAC").json["audio_asset_id"]
    assert api.extract(asset, "aac").json["audio_asset_id"] == first
    other = api.extract(asset, "MP3").json["audio_asset_id"]
    assert other != first
    assert api.task(asset, "AAC").json["audio_asset_id"] == first
    assert api.task(asset).json["audio_asset_id"] == other  # newest task by default


@pytest.mark.parametrize("body, code", [
    (b"{not json", "VOD.10054"), (b"\xff\xfe", "VOD.10054"), (b"", "VOD.10054"), (b"[1, 2]", "VOD.10053"),
    (b"{}", "VOD.10053"), (b'{"asset_id": 5}', "VOD.10053"), (b'{"asset_id": ""}', "VOD.10053"),
    (b'{"asset_id": "x", "parameter": []}', "VOD.10053"),
    (b'{"asset_id": "x", "parameter": {"format": "WAV"}}', "VOD.10053"),
    (b'{"asset_id": "x", "parameter": {"format": 3}}', "VOD.10053"),
    (b'{"asset_id": "does-not-exist"}', "VOD.10062"),
])
def test_create_errors(idle_app, body, code):
    api = Api(idle_app)
    response = api.client.post(api.url("/extract_audio"), data=body, headers=api.headers())
    assert error_of(response) == (400, code)


def test_create_body_too_large(idle_app):
    api = Api(idle_app)
    response = api.client.post(api.url("/extract_audio"), data=b" " * 70000, headers=api.headers())
    assert error_of(response) == (413, "VOD.10085")


def test_create_refuses_an_audio_asset_as_source(app, make):
    api = Api(app)
    asset = api.upload(make("flv_aac"))
    audio = api.extract(asset).json["audio_asset_id"]
    api.wait(asset)
    assert error_of(api.extract(audio)) == (400, "VOD.10062")


def test_get_errors(idle_app, make):
    api = Api(idle_app)
    assert error_of(api.client.get(api.url("/extract_audio"), headers=api.headers())) == (400, "VOD.10053")
    assert error_of(api.task("unknown")) == (400, "VOD.10062")
    asset = api.upload(make("flv_aac"))
    assert error_of(api.task(asset)) == (400, "VOD.10062")  # no task yet
    assert error_of(api.task(asset, "OGG")) == (400, "VOD.10053")


def test_cancel_a_queued_task(idle_app, make):
    api = Api(idle_app)
    asset = api.upload(make("flv_aac"))
    first = api.extract(asset).json["audio_asset_id"]
    response = api.cancel(asset)
    assert response.status_code == 204 and response.data == b""
    assert api.task(asset).json["status"] == "CANCELLED"
    assert error_of(api.cancel(asset)) == (400, "VOD.10083")
    again = api.extract(asset).json["audio_asset_id"]  # a cancelled task does not block a new one
    assert again != first and api.task(asset).json["status"] == "QUEUED"
    assert error_of(api.content(first)) == (409, "VOD.10084")


def test_cancel_by_format(idle_app, make):
    api = Api(idle_app)
    asset = api.upload(make("flv_aac"))
    api.extract(asset, "AAC")
    api.extract(asset, "MP3")
    assert api.cancel(asset, "MP3").status_code == 204
    assert api.task(asset, "MP3").json["status"] == "CANCELLED"
    assert api.task(asset, "AAC").json["status"] == "QUEUED"


def test_cancel_errors(app, make):
    api = Api(app)
    assert error_of(api.client.delete(api.url("/extract_audio"), headers=api.headers())) == (400, "VOD.10053")
    assert error_of(api.cancel("unknown")) == (400, "VOD.10062")
    asset = api.upload(make("mp4_faststart"))
    assert error_of(api.cancel(asset)) == (400, "VOD.10062")  # no task
    api.extract(asset)
    api.wait(asset)
    status, code = error_of(api.cancel(asset))
    assert (status, code) == (400, "VOD.10083")
    assert "SUCCEEDED" in api.cancel(asset).json["error_msg"]


def test_cancel_a_running_task_is_refused(tmp_path, make, monkeypatch):
    gate = install_gate(monkeypatch)
    application = new_app(tmp_path / "data", workers=1)
    try:
        api = Api(application)
        asset = api.upload(make("flv_aac"))
        api.extract(asset)
        api.wait(asset, statuses=("RUNNING",))
        assert error_of(api.cancel(asset)) == (400, "VOD.10083")
        gate.open.set()
        assert api.wait(asset)["status"] == "SUCCEEDED"
    finally:
        gate.open.set()
        application.close()


# -- outputs -----------------------------------------------------------------------------------


def frames(data: bytes, fmt: str) -> list[bytes]:
    packets = media.audio_packets(data, "aac" if fmt == "AAC" else "mp3")[0]
    return [bytes(p[0])[7:] if fmt == "AAC" else bytes(p[0]) for p in packets]


@pytest.mark.parametrize("kind, fmt", [("mp4_faststart", "AAC"), ("mp4_moov_end", "AAC"), ("flv_aac", "AAC"),
                                       ("mp4_fragmented", "AAC"), ("mp4_mp3", "MP3"), ("flv_mp3", "MP3")])
def test_copies_are_identical_to_the_source(app, make, kind, fmt):
    if fmt == "MP3" and media.KINDS[kind].audio_codecs[0] != "libmp3lame":
        pytest.skip("no MP3 encoder to make the source")
    api = Api(app)
    path = make(kind)
    asset = api.upload(path, name=path.name)
    audio_id = api.extract(asset, fmt).json["audio_asset_id"]
    task = api.wait(asset, fmt)
    assert task["status"] == "SUCCEEDED", task
    audio = task["audio"]
    assert audio["format"] == fmt and audio["method"] == "copy"
    assert audio["duration"] == pytest.approx(3.0, abs=0.1)
    assert audio["url"] == f"http://localhost/v1.0/{PROJECT_A}/asset/{audio_id}/content"
    download = api.content(audio_id)
    assert download.status_code == 200 and len(download.data) == audio["size"]
    assert download.mimetype == ("audio/aac" if fmt == "AAC" else "audio/mpeg")
    assert path.stem in download.headers["Content-Disposition"]
    assert frames(download.data, fmt) == [bytes(p[0]) for p in media.audio_packets(path)[0]]


def test_transcode_is_decodable_with_the_right_duration(app, make):
    if not elementary.transcoding_available("mp3"):
        pytest.skip("no MP3 encoder")
    import av

    api = Api(app)
    asset = api.upload(make("flv_aac"), name="x.flv")
    audio_id = api.extract(asset, "MP3").json["audio_asset_id"]
    task = api.wait(asset)
    assert task["status"] == "SUCCEEDED" and task["audio"]["method"] == "transcode"
    with av.open(io.BytesIO(api.content(audio_id).data), format="mp3") as container:
        stream = container.streams.audio[0]
        seconds = sum(frame.samples for frame in container.decode(stream)) / stream.rate
    assert seconds == pytest.approx(3.0, abs=2 * 1152 / 44100 + 0.05)


def test_failed_task_has_a_reason(app, make):
    api = Api(app)
    asset = api.upload(make("mp4_video_only"))
    audio_id = api.extract(asset).json["audio_asset_id"]
    task = api.wait(asset)
    assert task["status"] == "FAILED" and task["reason_code"] == "NO_AUDIO" and "no audio" in task["reason"]
    assert error_of(api.content(audio_id)) == (409, "VOD.10084")
    assert not list((app.store.root / "tmp").iterdir())


def test_transcode_unavailable_fails_the_task(app, make, monkeypatch):
    monkeypatch.setattr(elementary, "load_av", lambda: None)
    api = Api(app)
    asset = api.upload(make("mp4_faststart"))
    api.extract(asset, "MP3")
    task = api.wait(asset)
    assert task["status"] == "FAILED" and task["reason_code"] == "TRANSCODE_UNAVAILABLE"
    assert "pip install" in task["reason"]


def test_retry_after_failure_creates_a_new_task(tmp_path, make, monkeypatch):
    monkeypatch.setattr(elementary, "load_av", lambda: None)
    application = new_app(tmp_path / "data", workers=1)
    try:
        api = Api(application)
        asset = api.upload(make("mp4_faststart"))
        first = api.extract(asset, "MP3").json["audio_asset_id"]
        assert api.wait(asset)["status"] == "FAILED"
        monkeypatch.undo()
        second = api.extract(asset, "MP3").json["audio_asset_id"]
        assert second != first
        assert api.wait(asset)["status"] == "SUCCEEDED" or not elementary.transcoding_available("mp3")
    finally:
        application.close()


# -- content -----------------------------------------------------------------------------------


def test_content_range_conditional_and_head(app, make):
    api = Api(app)
    asset = api.upload(make("mp4_faststart"))
    audio_id = api.extract(asset).json["audio_asset_id"]
    api.wait(asset)
    full = api.content(audio_id)
    assert full.headers["Accept-Ranges"] == "bytes"
    part = api.content(audio_id, {"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.data == full.data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(full.data)}"
    tail = api.content(audio_id, {"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.data == full.data[-7:]
    assert api.content(audio_id, {"Range": f"bytes={len(full.data) + 5}-"}).status_code == 416
    cached = api.content(audio_id, {"If-None-Match": full.headers["ETag"]})
    assert cached.status_code == 304 and cached.data == b""
    stale = api.content(audio_id, {"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.data == full.data
    head = api.client.head(api.url(f"/{audio_id}/content"), headers=api.headers())
    assert head.status_code == 200 and head.data == b"" and head.headers["Content-Length"] == str(len(full.data))


def test_content_errors(idle_app, make):
    api = Api(idle_app)
    assert error_of(api.content("nope")) == (404, "VOD.10062")
    asset = api.upload(make("flv_aac"))
    audio_id = api.extract(asset).json["audio_asset_id"]
    response = api.content(audio_id)
    assert error_of(response) == (409, "VOD.10084") and "QUEUED" in response.json["error_msg"]


# -- events ------------------------------------------------------------------------------------


def test_events_are_listed_in_order_and_paged(app, make):
    api = Api(app)
    assets = [api.upload(make(kind)) for kind in ("flv_aac", "mp4_video_only", "mp4_faststart")]
    for asset in assets:
        api.extract(asset)
        api.wait(asset)
    listing = api.events().json
    assert [event["event_type"] for event in listing["events"]].count("extract_audio.failed") == 1
    assert sorted(event["task"]["asset_id"] for event in listing["events"]) == sorted(assets)
    ids = [event["event_id"] for event in listing["events"]]
    assert ids == sorted(ids) and listing["next_after"] == ids[-1]
    succeeded = [event for event in listing["events"] if event["task"]["status"] == "SUCCEEDED"]
    assert all(event["task"]["audio"]["url"].startswith("http://localhost/v1.0/") for event in succeeded)
    page = api.events(after=ids[0], limit=1).json
    assert [event["event_id"] for event in page["events"]] == [ids[1]] and page["next_after"] == ids[1]
    assert api.events(after=ids[-1]).json == {"events": [], "next_after": ids[-1]}


def test_events_long_poll_returns_when_a_task_ends(tmp_path, make, monkeypatch):
    gate = install_gate(monkeypatch)
    application = new_app(tmp_path / "data", workers=1)
    try:
        api = Api(application)
        asset = api.upload(make("flv_aac"))
        api.extract(asset)
        threading.Timer(0.3, gate.open.set).start()
        response = api.events(wait=10)
        assert response.status_code == 200 and len(response.json["events"]) == 1
        assert api.events(after=response.json["next_after"], wait=0.2).json["events"] == []
    finally:
        gate.open.set()
        application.close()


@pytest.mark.parametrize("query", [{"after": "x"}, {"after": -1}, {"limit": 0}, {"limit": 5000}, {"wait": 99},
                                   {"wait": "soon"}])
def test_events_parameters(idle_app, query):
    assert error_of(Api(idle_app).events(**query)) == (400, "VOD.10053")


# -- access ------------------------------------------------------------------------------------


def test_missing_or_bad_token_is_401(idle_app):
    api = Api(idle_app)
    for headers in ({}, {"X-Auth-Token": "wrong"}, {"X-Auth-Token": ""}):
        response = api.client.get(api.url("/extract_audio?asset_id=x"), headers=headers)
        assert error_of(response) == (401, "VOD.10001")
    response = api.client.post(api.url("?name=a.mp4"), data=b"x" * 100)
    assert error_of(response) == (401, "VOD.10001")


def test_projects_are_isolated(app, make):
    a = Api(app, TOKEN_A, PROJECT_A)
    b = Api(app, TOKEN_B, PROJECT_B)
    asset = a.upload(make("flv_aac"))
    audio_id = a.extract(asset).json["audio_asset_id"]
    a.wait(asset)
    # a token on another project's path: 403
    crossed = Api(app, TOKEN_B, PROJECT_A)
    assert error_of(crossed.task(asset)) == (403, "VOD.10002")
    assert error_of(crossed.content(audio_id)) == (403, "VOD.10002")
    assert error_of(crossed.extract(asset)) == (403, "VOD.10002")
    assert error_of(crossed.cancel(asset)) == (403, "VOD.10002")
    assert error_of(crossed.events()) == (403, "VOD.10002")
    # another project's ids through one's own project: they do not exist
    assert error_of(b.task(asset)) == (400, "VOD.10062")
    assert error_of(b.extract(asset)) == (400, "VOD.10062")
    assert error_of(b.cancel(asset)) == (400, "VOD.10062")
    assert error_of(b.content(audio_id)) == (404, "VOD.10062")
    assert error_of(b.content(asset)) == (404, "VOD.10062")
    assert b.events().json["events"] == []
    assert len(a.events().json["events"]) == 1


# -- routing -----------------------------------------------------------------------------------


def test_unknown_route_and_method(idle_app):
    api = Api(idle_app)
    assert error_of(api.client.get("/v2/x", headers=api.headers())) == (404, "VOD.10404")
    assert error_of(api.client.get(api.url("/a/b/c"), headers=api.headers())) == (404, "VOD.10404")
    response = api.client.put(api.url("/extract_audio"), headers=api.headers())
    assert error_of(response) == (405, "VOD.10405")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST", "DELETE"}


def test_internal_errors_are_json(idle_app, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(idle_app.store, "task", broken)
    monkeypatch.setattr(idle_app.store, "asset", lambda *a: {"kind": "source"})
    response = Api(idle_app).task("x")
    assert error_of(response) == (500, "VOD.10500") and "fire" not in response.json["error_msg"]


def test_mounted_under_a_prefix(app, make):
    def other(environ, start_response):
        return Response("other app")(environ, start_response)

    mounted = DispatcherMiddleware(other, {"/media/api": app})
    api = Api(mounted, prefix="/media/api")
    asset = api.upload(make("flv_aac"))
    response = api.extract(asset)
    assert response.headers["Location"].startswith("http://localhost/media/api/v1.0/")
    audio_id = response.json["audio_asset_id"]
    task = api.wait(asset)
    assert task["audio"]["url"] == f"http://localhost/media/api/v1.0/{PROJECT_A}/asset/{audio_id}/content"
    assert api.client.get(task["audio"]["url"], headers=api.headers()).status_code == 200
    assert api.events().json["events"][0]["task"]["audio"]["url"] == task["audio"]["url"]
    assert api.client.get("/elsewhere").get_data(as_text=True) == "other app"
