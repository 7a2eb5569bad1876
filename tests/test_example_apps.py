"""The example apps: the Flask app and the Django project (WebTest), both under a real gunicorn
(``tests/servers.py`` + requests), the gunicorn config file and ``python -m example_app``.

What is checked against what:

* audio renditions: PyAV oracle from ``tests/media.py`` (no video stream, every audio packet
  identical to the source's: bytes, pts, dts, duration);
* requests without the flag: byte-identical to the file on disk;
* the index page: the players and links the README promises, and every audio link answers.

The Django project runs in a subprocess for WebTest (its settings module is process-wide state
and must not leak into other tests), and as its own gunicorn for the real-server tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
import requests
import webtest

try:
    from tests import media
    from tests.servers import ROOT, run_gunicorn
except ImportError:  # tests/ itself on sys.path (pytest's rootdir-less import mode)
    import media
    from servers import ROOT, run_gunicorn

if str(ROOT) not in sys.path:  # example_app is not installed: it lives at the repository root
    sys.path.insert(0, str(ROOT))

from example_app import pages  # noqa: E402
from example_app.flask_app import create_app  # noqa: E402
from example_app.sample_media import FILES, ensure_media  # noqa: E402

DJANGO_SETTINGS = "example_app.django_project.settings"
GUNICORN_CONF = str(ROOT / "example_app" / "gunicorn.conf.py")
MP4_AUDIO = "/media/sample.mp4?ali_audio_only=1"
FLV_AUDIO = "/media/sample.flv?ali_audio_only=1"


# -- media -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_media(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The demo's own sample files, generated once per session (shared with test_browser.py)."""
    return ensure_media(tmp_path_factory.getbasetemp() / "example_app_media")


def test_generated_media_is_h264_aac_with_moov_first(demo_media):
    mp4, flv = demo_media["sample.mp4"], demo_media["sample.flv"]
    assert set(demo_media) == set(FILES)
    types = [box.type for box in media.top_level_boxes(mp4)]
    assert types.index("moov") < types.index("mdat"), types
    for path in (mp4, flv):
        streams = media.probe(path)
        assert sorted((s.type, s.codec) for s in streams) == [("audio", "aac"), ("video", "h264")], path
        audio = next(s for s in streams if s.type == "audio")
        last = audio.packets[-1]
        seconds = float((last[1] + last[3]) * audio.time_base) - float(audio.packets[0][1] * audio.time_base)
        assert 9.9 < seconds < 10.2, f"{path.name}: {seconds} s of audio"


def test_media_generation_is_idempotent(demo_media):
    before = {name: path.stat().st_mtime_ns for name, path in demo_media.items()}
    again = ensure_media(next(iter(demo_media.values())).parent)
    assert {name: path.stat().st_mtime_ns for name, path in again.items()} == before


# -- one response, whatever produced it ------------------------------------------------------------


@dataclasses.dataclass
class Fetched:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _from_webtest(response) -> Fetched:
    return Fetched(response.status_int, {k.lower(): v for k, v in response.headerlist}, response.body)


def _from_requests(response: requests.Response) -> Fetched:
    return Fetched(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)


#: Every request the WebTest checks make: (name, method, url, request headers).
REQUESTS = [
    ("index", "GET", "/", {}),
    ("mp4_plain", "GET", "/media/sample.mp4", {}),
    ("mp4_flag_0", "GET", "/media/sample.mp4?ali_audio_only=0", {}),
    ("flv_plain", "GET", "/media/sample.flv", {}),
    ("mp4_audio", "GET", MP4_AUDIO, {}),
    ("mp4_audio_head", "HEAD", MP4_AUDIO, {}),
    ("mp4_audio_range", "GET", MP4_AUDIO, {"Range": "bytes=1000-1999"}),
    ("mp4_audio_suffix", "GET", MP4_AUDIO, {"Range": "bytes=-500"}),
    ("flv_audio", "GET", FLV_AUDIO, {}),
    ("flv_audio_start4", "GET", FLV_AUDIO + "&start=4", {}),
    ("mp4_clip_2_5", "GET", MP4_AUDIO + "&start=2&end=5", {}),
    ("stream_mp4_audio", "GET", "/stream/sample.mp4?ali_audio_only=1", {}),
    ("stream_flv_audio", "GET", "/stream/sample.flv?ali_audio_only=1", {}),
    ("missing", "GET", "/media/nothing.mp4?ali_audio_only=1", {}),
]
REQUEST_NAMES = [name for name, *_ in REQUESTS]

# The Django project under WebTest, in a fresh interpreter: writes one JSON + one body file per request.
_DJANGO_CLIENT = r"""
import json, pathlib, sys
import webtest
from example_app.django_project.wsgi import application

out = pathlib.Path(sys.argv[1])
app = webtest.TestApp(application)
for name, method, url, headers in json.loads(sys.argv[2]):
    call = app.head if method == "HEAD" else app.get
    response = call(url, headers=headers, status="*")
    (out / f"{name}.json").write_text(json.dumps({"status": response.status_int, "headers": response.headerlist}))
    (out / f"{name}.body").write_bytes(response.body)
"""


@pytest.fixture(scope="module")
def flask_responses(demo_media) -> dict[str, Fetched]:
    app = webtest.TestApp(create_app(demo_media["sample.mp4"].parent))
    fetched = {}
    for name, method, url, headers in REQUESTS:
        call = app.head if method == "HEAD" else app.get
        fetched[name] = _from_webtest(call(url, headers=headers, status="*"))
    return fetched


@pytest.fixture(scope="module")
def django_responses(demo_media, tmp_path_factory) -> dict[str, Fetched]:
    out = tmp_path_factory.mktemp("django_webtest")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS,
        "AUDIO_DEMO_MEDIA": str(demo_media["sample.mp4"].parent),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, "-c", _DJANGO_CLIENT, str(out), json.dumps(REQUESTS)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"Django WebTest client failed:\n{done.stdout}\n{done.stderr}"
    fetched = {}
    for name in REQUEST_NAMES:
        meta = json.loads((out / f"{name}.json").read_text())
        headers = {k.lower(): v for k, v in meta["headers"]}
        fetched[name] = Fetched(meta["status"], headers, (out / f"{name}.body").read_bytes())
    return fetched


@pytest.fixture(params=["flask", "django"])
def responses(request) -> dict[str, Fetched]:
    return request.getfixturevalue(f"{request.param}_responses")


# -- checks shared by the WebTest runs of both apps -----------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def _page(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Links()
    parser.feed(html)
    return parser.elements


def test_index_has_players_and_links(responses):
    index = responses["index"]
    assert index.status == 200 and index.header("content-type").startswith("text/html")
    elements = _page(index.body.decode())
    audio = [a for tag, a in elements if tag == "audio"]
    video = [a for tag, a in elements if tag == "video"]
    assert [a.get("src") for a in video] == ["/media/sample.mp4"]
    assert len(audio) == 1 and audio[0]["src"] == MP4_AUDIO and "controls" in audio[0], audio
    hrefs = [a.get("href", "") for tag, a in elements if tag == "a"]
    flv_starts = [h for h in hrefs if h.startswith(FLV_AUDIO + "&start=")]
    assert flv_starts == [f"{FLV_AUDIO}&start={s}" for s in pages.FLV_STARTS if s], hrefs
    assert FLV_AUDIO in hrefs
    clips = [h for h in hrefs if h.startswith("/media/sample.mp4?ali_audio_only=1&") and "end=" in h]
    assert len(clips) >= 2 and any("start=" in h for h in clips), hrefs
    assert "/stream/sample.flv?ali_audio_only=1" in hrefs


def test_not_flagged_is_the_file(responses, demo_media):
    for name, file in (("mp4_plain", "sample.mp4"), ("mp4_flag_0", "sample.mp4"), ("flv_plain", "sample.flv")):
        got = responses[name]
        assert got.status == 200, name
        assert got.body == demo_media[file].read_bytes(), name
        assert got.header("content-type") == FILES[file][2], name


def test_mp4_audio_only(responses, demo_media):
    got = responses["mp4_audio"]
    assert got.status == 200
    assert got.header("content-type") == "audio/mp4"
    assert got.header("content-length") == str(len(got.body))
    assert got.header("accept-ranges") == "bytes"
    assert got.header("etag") and got.header("etag") != responses["mp4_plain"].header("etag")
    media.assert_audio_identical(demo_media["sample.mp4"], got.body)


def test_mp4_audio_head_and_ranges(responses):
    full = responses["mp4_audio"].body
    head = responses["mp4_audio_head"]
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == str(len(full))
    part = responses["mp4_audio_range"]
    assert part.status == 206
    assert part.header("content-range") == f"bytes 1000-1999/{len(full)}"
    assert part.body == full[1000:2000]
    suffix = responses["mp4_audio_suffix"]
    assert suffix.status == 206 and suffix.body == full[-500:]
    assert suffix.header("content-range") == f"bytes {len(full) - 500}-{len(full) - 1}/{len(full)}"


def test_flv_audio_only(responses, demo_media):
    got = responses["flv_audio"]
    assert got.status == 200
    assert got.header("content-type") == "video/x-flv"
    media.assert_audio_identical(demo_media["sample.flv"], got.body)


def test_flv_audio_from_start_time(responses, demo_media):
    got = responses["flv_audio_start4"]
    assert got.status == 200 and got.header("content-type") == "video/x-flv"
    # audio-only; packets are a run of the source's: from the frame containing 4 s to the end
    media.assert_audio_window(demo_media["sample.flv"], got.body, 4.0, None)


def test_mp4_clip(responses, demo_media):
    got = responses["mp4_clip_2_5"]
    assert got.status == 200, got.body[:300]
    assert got.header("content-type") == "audio/mp4"
    assert got.header("content-length") == str(len(got.body))
    media.assert_audio_window(demo_media["sample.mp4"], got.body, 2.0, 5.0)


def test_streamed_sources(responses, demo_media):
    mp4 = responses["stream_mp4_audio"]
    assert mp4.status == 200 and mp4.header("content-type") == "audio/mp4"
    assert mp4.body == responses["mp4_audio"].body  # same bytes whether the source is a file or a stream
    flv = responses["stream_flv_audio"]
    assert flv.status == 200 and flv.header("content-type") == "video/x-flv"
    media.assert_audio_identical(demo_media["sample.flv"], flv.body)


def test_unknown_file_is_404(responses):
    assert responses["missing"].status == 404


def test_index_links_all_answer(demo_media):
    """Every audio-only link on the Flask index page gives audio (crawled, not hard-coded)."""
    app = webtest.TestApp(create_app(demo_media["sample.mp4"].parent))
    elements = _page(app.get("/").text)
    urls = {a["href"] for tag, a in elements if tag == "a" and "ali_audio_only=1" in a.get("href", "")}
    urls |= {a["src"] for tag, a in elements if tag == "audio"}
    assert len(urls) >= 10
    failures = {}
    for url in sorted(urls):
        response = app.get(url, status="*")
        expected = "video/x-flv" if ".flv" in url else "audio/mp4"
        if response.status_int != 200 or response.content_type != expected:
            failures[url] = f"{response.status} {response.content_type} {response.body[:200]!r}"
        else:
            assert media.stream_types(response.body) == ["audio"], url
    assert not failures, failures


# -- real gunicorn ---------------------------------------------------------------------------------


def _gunicorn(app_spec: str, demo_media, **env):
    return run_gunicorn(
        app_spec,
        env={"AUDIO_DEMO_MEDIA": str(demo_media["sample.mp4"].parent), **env},
        threads=4,
        extra_args=["-c", GUNICORN_CONF],
    )


@pytest.fixture(scope="module", params=["flask", "django"])
def server(request, demo_media):
    if request.param == "flask":
        spec, env = "example_app.flask_app:app", {}
    else:
        spec, env = "example_app.django_project.wsgi:application", {"DJANGO_SETTINGS_MODULE": DJANGO_SETTINGS}
    with _gunicorn(spec, demo_media, **env) as url:
        yield url


@pytest.mark.server
def test_gunicorn_config_file_loaded(server):
    log = server.log()
    assert "Using worker: gthread" in log
    assert re.search(r"sample sample\.mp4: ", log), "on_starting hook of gunicorn.conf.py did not run"
    index = requests.get(server + "/", timeout=10)
    assert index.status_code == 200 and 'id="audio-only"' in index.text


@pytest.mark.server
def test_gunicorn_mp4_audio(server, demo_media):
    response = requests.get(server + MP4_AUDIO, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "audio/mp4"
    assert "Transfer-Encoding" not in response.headers
    assert int(response.headers["Content-Length"]) == len(response.content)
    media.assert_audio_identical(demo_media["sample.mp4"], response.content)

    part = requests.get(server + MP4_AUDIO, headers={"Range": "bytes=100-4195"}, timeout=30)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-4195/{len(response.content)}"
    assert part.content == response.content[100:4196]

    head = requests.head(server + MP4_AUDIO, timeout=30)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(response.content))

    etag = response.headers["ETag"]
    assert etag != requests.head(server + "/media/sample.mp4", timeout=30).headers.get("ETag")
    again = requests.get(server + MP4_AUDIO, headers={"If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and again.content == b""


@pytest.mark.server
def test_gunicorn_not_flagged_is_the_file(server, demo_media):
    for name in FILES:
        response = requests.get(f"{server}/media/{name}", timeout=30)
        assert response.status_code == 200
        assert response.content == demo_media[name].read_bytes()


@pytest.mark.server
def test_gunicorn_flv_from_file_has_length(server, demo_media):
    """A file-backed FLV (send_file / FileResponse) is random access: the middleware indexes its tags
    and knows the exact length, so there is a Content-Length and no chunking."""
    response = requests.get(server + FLV_AUDIO, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "video/x-flv"
    assert "Transfer-Encoding" not in response.headers
    assert int(response.headers["Content-Length"]) == len(response.content)
    media.assert_audio_identical(demo_media["sample.flv"], response.content)


@pytest.mark.server
def test_gunicorn_flv_from_stream_is_chunked(server, demo_media):
    """A streamed FLV (no Content-Length, forward only) is sent as it is found: the server chunks it."""
    response = requests.get(server + "/stream/sample.flv?ali_audio_only=1", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "video/x-flv"
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    media.assert_audio_identical(demo_media["sample.flv"], response.content)

    mp4 = requests.get(server + "/stream/sample.mp4?ali_audio_only=1", timeout=30)
    assert mp4.status_code == 200 and "Transfer-Encoding" not in mp4.headers
    assert int(mp4.headers["Content-Length"]) == len(mp4.content)
    media.assert_audio_identical(demo_media["sample.mp4"], mp4.content)


@pytest.mark.server
def test_gunicorn_flv_start_time(server, demo_media):
    response = requests.get(server + FLV_AUDIO + "&start=6", timeout=30)
    assert response.status_code == 200
    media.assert_audio_window(demo_media["sample.flv"], response.content, 6.0, None)


# -- python -m example_app --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.server
@pytest.mark.parametrize(
    "extra", [[], ["--werkzeug"], ["--django"]], ids=["gunicorn", "werkzeug", "django-gunicorn"]
)
def test_python_m_example_app(demo_media, tmp_path, extra):
    """The README's demo command: prints the URL, serves the page and the audio rendition."""
    port = _free_port()
    log = tmp_path / "demo.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "AUDIO_DEMO_MEDIA": str(demo_media["sample.mp4"].parent),
        "WEB_CONCURRENCY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "example_app", *extra], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                index = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except requests.ConnectionError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert index.status_code == 200 and 'id="audio-only"' in index.text
        assert ("Served by Django" if "--django" in extra else "Served by Flask") in index.text
        audio = requests.get(f"http://127.0.0.1:{port}{MP4_AUDIO}", timeout=30)
        assert audio.status_code == 200 and audio.headers["Content-Type"] == "audio/mp4"
        assert f"audio_middleware demo: http://127.0.0.1:{port}/" in log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
