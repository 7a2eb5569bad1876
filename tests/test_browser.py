"""The audio-only rendition in a real browser: the example Flask app under gunicorn, played by
headless Chromium (Debian's ``/usr/bin/chromium``) driven with Playwright for Python.

Proves, on the demo page's ``<audio>`` element (``/media/sample.mp4?ali_audio_only=1``):

* ``duration`` equals the source's audio duration (PyAV), within 0.1 s;
* playback advances (``currentTime`` grows while playing; muted, so autoplay is allowed);
* seeking to the middle continues from there (``seeked`` fires, ``currentTime`` grows past it);
* Chromium fetched the rendition with Range requests, the server answered 206 (gunicorn access
  log), including at least one range that does not start at 0 (the HTTP cache is disabled so
  every byte Chromium reads comes from the server);
* a clipped rendition (``&start=2&end=5``) shows the clipped duration and plays.

All of it twice: once planned on every request, once with a rendition store
(``AUDIO_DEMO_RENDITIONS``), which Chromium's ranged requests alone must fill
(its first request is ``Range: bytes=0-``, answered with every byte), so that
later requests, such as the seek, are answered from the stored file.

Skipped (with the reason) only when Chromium or Playwright is missing, and then only outside CI:
with ``CI=true`` a missing browser fails the test. Install with ``apt-get install -y chromium``
and ``pip install playwright`` (``playwright install`` is not needed: the system Chromium is
used). ``AUDIO_MIDDLEWARE_CHROMIUM`` overrides the browser path.
"""

from __future__ import annotations

import os
import re
import sys

import pytest

try:
    from tests import media as media_toolkit
    from tests.servers import ROOT, run_gunicorn
except ImportError:  # tests/ itself on sys.path
    import media as media_toolkit  # type: ignore[no-redef]
    from servers import ROOT, run_gunicorn

if str(ROOT) not in sys.path:  # example_app is not installed: it lives at the repository root
    sys.path.insert(0, str(ROOT))

from example_app.sample_media import ensure_media  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = os.environ.get("AUDIO_MIDDLEWARE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
AUDIO_URL = "/media/sample.mp4?ali_audio_only=1"
CLIP_URL = "/media/sample.mp4?ali_audio_only=1&start=2&end=5"
ACCESS_FORMAT = 'ACCESS "%(r)s" %(s)s %(B)s range="%({range}i)s"'
ACCESS_LINE = re.compile(r'^ACCESS "(?P<method>\S+) (?P<target>\S+) [^"]*" (?P<status>\d+) (?P<bytes>\S+) '
                         r'range="(?P<range>[^"]*)"$', re.M)
TIMEOUT_MS = 20_000

# JS helpers, run in the page: every wait has a timeout and fails on a media error.
# An event that fired between the caller's readyState check and this listener (a fast answer, such as
# one from the rendition store) is not waited for: the check and the listener run in one page task.
_WAIT_EVENT = """([selector, event, timeoutMs]) => new Promise((resolve, reject) => {
  const el = document.querySelector(selector);
  if (event === 'loadedmetadata' && el.readyState >= 1) { resolve(); return; }
  const timer = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms (readyState ${el.readyState},
    networkState ${el.networkState}, error ${el.error && el.error.code} ${el.error && el.error.message})`)), timeoutMs);
  el.addEventListener('error', () => { clearTimeout(timer);
    reject(new Error(`media error ${el.error && el.error.code}: ${el.error && el.error.message}`)); }, {once: true});
  el.addEventListener(event, () => { clearTimeout(timer); resolve(); }, {once: true});
})"""
_SEEK = """([selector, target, timeoutMs]) => new Promise((resolve, reject) => {
  const el = document.querySelector(selector);
  const timer = setTimeout(() => reject(new Error(`no seeked within ${timeoutMs} ms`)), timeoutMs);
  el.addEventListener('seeked', () => { clearTimeout(timer); resolve(el.currentTime); }, {once: true});
  el.currentTime = target;
})"""
_STATE = """(selector) => { const el = document.querySelector(selector);
  return {currentTime: el.currentTime, duration: el.duration, paused: el.paused, ended: el.ended,
          readyState: el.readyState, error: el.error && `${el.error.code} ${el.error.message}`}; }"""


def _source_audio_duration(path) -> float:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base)


def _unavailable(reason: str):
    """Skip locally; under CI (``CI=true``) a missing browser is a failure, so green means it played."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI is set, so the browser test must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def sync_playwright():
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (pip install playwright)")
    return sync_playwright


@pytest.fixture(scope="module")
def browser(sync_playwright):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    return ensure_media(tmp_path_factory.getbasetemp() / "example_app_media")


@pytest.fixture(scope="module", params=["planned", "store"])
def server(request, media_files, tmp_path_factory):
    """The demo under gunicorn; ``store``: with a rendition store in ``server.renditions``."""
    env = {"AUDIO_DEMO_MEDIA": str(media_files["sample.mp4"].parent)}
    renditions = tmp_path_factory.mktemp("renditions") if request.param == "store" else None
    if renditions is not None:
        env["AUDIO_DEMO_RENDITIONS"] = str(renditions)
    with run_gunicorn(
        "example_app.flask_app:app",
        env=env,
        threads=4,
        extra_args=["-c", str(ROOT / "example_app" / "gunicorn.conf.py"),
                    "--access-logfile", "-", "--access-logformat", ACCESS_FORMAT],
    ) as url:
        url.renditions = renditions
        yield url


def _new_page(browser):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})  # every media byte comes from the server
    return page, errors


def _wait_playing_past(page, selector: str, seconds: float) -> None:
    page.wait_for_function(
        f"() => {{ const el = document.querySelector('{selector}'); return el.error || el.currentTime > {seconds}; }}",
        timeout=TIMEOUT_MS,
    )
    state = page.evaluate(_STATE, selector)
    assert state["error"] is None, state


@pytest.fixture(scope="module")
def demo_session(browser, server, media_files):
    """Open the demo page, play the audio-only player, seek to the middle: record what happened."""
    page, errors = _new_page(browser)
    page.goto(server + "/")
    selector = "#audio-only"
    assert page.get_attribute(selector, "src") == AUDIO_URL
    page.evaluate(f"() => {{ document.querySelector('{selector}').muted = true; }}")
    if page.evaluate(f"() => document.querySelector('{selector}').readyState") < 1:
        page.evaluate(_WAIT_EVENT, [selector, "loadedmetadata", TIMEOUT_MS])
    record = {"metadata": page.evaluate(_STATE, selector)}

    page.evaluate(f"() => document.querySelector('{selector}').play()")
    _wait_playing_past(page, selector, 1.0)
    record["playing"] = [page.evaluate(_STATE, selector)]
    page.wait_for_timeout(500)
    record["playing"].append(page.evaluate(_STATE, selector))

    middle = record["metadata"]["duration"] / 2
    record["middle"] = middle
    record["seeked_at"] = page.evaluate(_SEEK, [selector, middle, TIMEOUT_MS])
    record["after_seek"] = page.evaluate(_STATE, selector)
    _wait_playing_past(page, selector, middle + 1.0)
    record["after_play_on"] = page.evaluate(_STATE, selector)
    record["page_errors"] = errors
    page.close()
    record["access"] = [m.groupdict() for m in ACCESS_LINE.finditer(server.log())]
    return record


def test_duration_matches_source(demo_session, media_files):
    expected = _source_audio_duration(media_files["sample.mp4"])
    duration = demo_session["metadata"]["duration"]
    assert abs(duration - expected) <= 0.1, f"<audio> duration {duration} s, source audio {expected} s"


def test_playback_advances(demo_session):
    first, later = demo_session["playing"]
    assert not later["paused"] and later["error"] is None, later
    assert 1.0 < first["currentTime"] < later["currentTime"], demo_session["playing"]


def test_seek_to_middle_continues_from_there(demo_session):
    middle = demo_session["middle"]
    after_seek, later = demo_session["after_seek"], demo_session["after_play_on"]
    assert abs(demo_session["seeked_at"] - middle) < 0.1, (middle, demo_session["seeked_at"])
    assert middle - 0.1 < after_seek["currentTime"] < middle + 0.5, (middle, after_seek)
    assert middle + 1.0 < later["currentTime"] < demo_session["metadata"]["duration"], (middle, later)
    assert not later["paused"] and later["error"] is None, later
    assert not demo_session["page_errors"]


def test_chromium_used_range_requests(demo_session):
    audio = [line for line in demo_session["access"] if line["target"] == AUDIO_URL and line["method"] == "GET"]
    assert audio, f"no request for {AUDIO_URL} in the access log: {demo_session['access']}"
    ranged = [line for line in audio if line["range"].startswith("bytes=")]
    assert ranged, f"Chromium sent no Range header: {audio}"
    assert all(line["status"] in ("206", "304") for line in ranged), audio
    partial = [line for line in ranged if line["status"] == "206"]
    assert partial, audio
    assert any(not line["range"].startswith("bytes=0-") for line in partial), (
        f"no 206 for a range starting after byte 0: {audio}"
    )


@pytest.mark.parametrize("server", ["store"], indirect=True)
def test_chromium_ranged_requests_fill_the_store(demo_session, server, media_files):
    audio = [line for line in demo_session["access"] if line["target"] == AUDIO_URL and line["method"] == "GET"]
    assert audio and all(line["range"].startswith("bytes=") for line in audio), audio  # no plain GET filled it
    files = [path for path in server.renditions.iterdir() if path.suffix == ".audio"]
    assert len(files) == 1, sorted(server.renditions.iterdir())
    media_toolkit.assert_audio_identical(media_files["sample.mp4"], files[0].read_bytes())
    first = audio[0]  # the player's first request: every byte, as a 206
    assert (first["range"], first["status"], int(first["bytes"])) == ("bytes=0-", "206", files[0].stat().st_size)


def test_clipped_rendition_duration_and_playback(browser, server):
    page, errors = _new_page(browser)
    page.goto(server + "/")
    page.evaluate(f"""() => {{ const el = document.createElement('audio'); el.id = 'clip'; el.muted = true;
        el.preload = 'auto'; el.src = '{CLIP_URL}'; document.body.append(el); }}""")
    if page.evaluate("() => document.querySelector('#clip').readyState") < 1:
        try:
            page.evaluate(_WAIT_EVENT, ["#clip", "loadedmetadata", TIMEOUT_MS])
        except Exception as error:
            requests = [m.group(0) for m in ACCESS_LINE.finditer(server.log()) if "start=" in m.group("target")]
            raise AssertionError(f"{CLIP_URL} did not load in Chromium: {error}; requests: {requests}") from None
    duration = page.evaluate(_STATE, "#clip")["duration"]
    assert abs(duration - 3.0) <= 0.1, f"clip start=2 end=5 shows duration {duration} s"
    page.evaluate("() => document.querySelector('#clip').play()")
    _wait_playing_past(page, "#clip", 0.5)
    assert not errors
    page.close()
