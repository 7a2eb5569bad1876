"""The rendition store (``rendition_cache``): fill on the first full download, serve later ones from disk.

Every audio output is still checked with the PyAV oracle; "it was a hit" is proved
by what the upstream had to give (a file object without ``fileno()`` counts every
byte read, a generator counts every byte it yielded) and by the store's counters.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import time

import pytest
from webtest import TestApp
from werkzeug.datastructures import Headers

from audio_middleware import AudioOnlyMiddleware
from audio_middleware.rendition import validators_for
from audio_middleware.renditions import RenditionStore
from audio_middleware.sources import FileSource

from .apps import CountingFile, FileApp, GeneratorApp, call
from .conftest import media_toolkit

FLAG = "ali_audio_only=1"




def listing(directory):
    return sorted(os.listdir(directory))


def stored(directory):
    return [name for name in listing(directory) if name.endswith(".audio")]


def indexes(directory):
    return [name for name in listing(directory) if name.endswith(".json")]


def temporary(directory):
    return [name for name in listing(directory) if name.startswith(".")]


def without_dates(headers):
    return [(name, value) for name, value in headers if name not in ("Date", "Expires")]


class CountingApp:
    """Serves ``path`` through ``wsgi.file_wrapper`` over a CountingFile; keeps every file it opened."""

    def __init__(self, path, etag='"v1"', content_type="video/mp4"):
        self.path = path
        self.etag = etag
        self.content_type = content_type
        self.opened: list[CountingFile] = []

    def __call__(self, environ, start_response):
        counting = CountingFile(self.path)
        self.opened.append(counting)
        headers = [("Content-Type", self.content_type), ("Content-Length", str(self.path.stat().st_size)),
                   ("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")]
        if self.etag:
            headers.append(("ETag", self.etag))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](counting, 8192)


# -- a miss fills, the next request is a hit -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp4_faststart", "video_heavy", "flv_aac"])
def test_miss_fills_and_the_hit_reads_only_the_sniff(media, video_heavy, tmp_path, kind):
    path = video_heavy if kind == "video_heavy" else media(kind)
    app = CountingApp(path, content_type="video/x-flv" if path.suffix == ".flv" else "video/mp4")
    middleware = AudioOnlyMiddleware(app, rendition_cache=tmp_path / "store")
    store = middleware.renditions

    status, headers, first = call(middleware)
    assert status == "200 OK"
    assert (store.hits, store.misses, store.fills) == (0, 1, 1)
    assert app.opened[0].bytes_read > 1000
    assert len(stored(tmp_path / "store")) == 1 and not temporary(tmp_path / "store")
    assert (tmp_path / "store" / stored(tmp_path / "store")[0]).read_bytes() == first

    status2, headers2, second = call(middleware)
    assert status2 == "200 OK" and second == first
    assert without_dates(headers2) == without_dates(headers)
    assert (store.hits, store.fills) == (1, 1)
    assert app.opened[1].bytes_read == 16  # the sniff: no moov, no span was read
    assert [f.closes for f in app.opened] == [1, 1]
    media_toolkit.assert_audio_identical(path, second)


def test_hit_needs_no_plan_a_fresh_middleware_on_the_same_directory_hits(video_heavy, tmp_path):
    """A new worker (empty plan cache) finds the rendition from its ETag: the moov at the end is not read."""
    app = CountingApp(video_heavy)
    call(AudioOnlyMiddleware(app, rendition_cache=tmp_path))
    fresh = AudioOnlyMiddleware(app, rendition_cache=tmp_path)
    _, _, body = call(fresh)
    assert fresh.renditions.hits == 1 and len(fresh.cache) == 0
    assert app.opened[-1].bytes_read == 16
    media_toolkit.assert_audio_identical(video_heavy, body)


def test_forward_only_source_hit_reads_only_the_first_chunks(media, tmp_path):
    path = media("mp4_faststart")
    upstream = GeneratorApp(path)
    client = TestApp(AudioOnlyMiddleware(upstream, rendition_cache=tmp_path))
    first = client.get(f"/v.mp4?{FLAG}").body
    sent = upstream.bytes_sent
    second = client.get(f"/v.mp4?{FLAG}").body
    assert second == first
    assert upstream.bytes_sent - sent < 5000  # chunks of 1, 7 and 4093 bytes cover the 16-byte sniff
    assert upstream.closes == upstream.bodies == 2
    media_toolkit.assert_audio_identical(path, second)


def test_the_hit_goes_out_through_the_servers_file_wrapper(media, tmp_path):
    path = media("mp4_moov_end")
    upstream = FileApp(path)
    middleware = AudioOnlyMiddleware(upstream, rendition_cache=tmp_path)
    _, _, first = call(middleware)
    seen = []

    class ServerWrapper:
        def __init__(self, fileobj, block_size=8192):
            seen.append((fileobj, block_size))
            self.fileobj = fileobj

        def __iter__(self):
            return iter(lambda: self.fileobj.read(8192), b"")

        def close(self):
            self.fileobj.close()

    status, headers, body = call(middleware, **{"wsgi.file_wrapper": ServerWrapper})
    assert status == "200 OK" and body == first
    assert dict(headers)["Content-Length"] == str(len(first))
    [(fileobj, block_size)] = seen
    assert os.path.dirname(fileobj.name) == str(tmp_path) and fileobj.name.endswith(".audio")
    assert fileobj.closed  # the server's wrapper closed it
    assert upstream.closes == upstream.bodies == 2  # the upstream too, exactly once per request
    assert hasattr(fileobj, "fileno")  # the whole file: any server may sendfile it
    # a range: the same file, positioned at the range and read no further; fileno() (sendfile from
    # that position) only for a server known to honour it
    for server, sendfile in (("gunicorn/27.0.1", True), ("uWSGI", False)):
        status, headers, part = call(middleware, HTTP_RANGE="bytes=100-199", SERVER_SOFTWARE=server,
                                     **{"wsgi.file_wrapper": ServerWrapper})
        assert status.startswith("206") and part == first[100:200]
        fileobj = seen[-1][0]
        assert fileobj.name == seen[0][0].name and fileobj.closed and fileobj.tell() == 200
        assert hasattr(fileobj, "fileno") == sendfile


def test_closing_a_hit_before_iterating_closes_everything(media, tmp_path):
    path = media("mp4_faststart")
    upstream = FileApp(path)
    middleware = AudioOnlyMiddleware(upstream, rendition_cache=tmp_path)
    call(middleware)
    body = middleware({"REQUEST_METHOD": "GET", "QUERY_STRING": FLAG, "PATH_INFO": "/v.mp4", "SERVER_NAME": "x",
                       "SERVER_PORT": "80"}, lambda *args: None)
    assert upstream.closes == 2  # already closed: the hit does not need it
    body.close()
    assert upstream.closes == 2


# -- Range, HEAD, conditionals on a hit --------------------------------------------------------------------


@pytest.mark.parametrize("header", ["bytes=0-99", "bytes=100-", "bytes=-500", "bytes=1000-4999", "bytes=0-"])
def test_range_on_a_hit_is_the_slice(media, tmp_path, header):
    path = media("mp4_moov_end")
    app = CountingApp(path)
    client = TestApp(AudioOnlyMiddleware(app, rendition_cache=tmp_path))
    reference = TestApp(AudioOnlyMiddleware(CountingApp(path)))
    full = client.get(f"/v.mp4?{FLAG}").body
    part = client.get(f"/v.mp4?{FLAG}", headers={"Range": header}, status=206)
    expected = reference.get(f"/v.mp4?{FLAG}", headers={"Range": header}, status=206)
    assert part.body == expected.body
    assert part.headers["Content-Range"] == expected.headers["Content-Range"]
    assert part.headers["Content-Length"] == str(len(part.body))
    start = int(header[6:].split("-")[0]) if not header.startswith("bytes=-") else len(full) - 500
    assert part.body == full[start:start + len(part.body)]
    assert app.opened[-1].bytes_read == 16


def test_head_416_304_and_if_range_on_a_hit_are_as_without_the_store(media, tmp_path):
    path = media("mp4_faststart")
    with_store = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path)
    plain = AudioOnlyMiddleware(FileApp(path))
    call(with_store)
    assert with_store.renditions.fills == 1
    full = call(plain)
    etag = dict(full[1])["ETag"]
    cases = [
        {"method": "HEAD"},
        {"HTTP_RANGE": "bytes=999999-"},
        {"HTTP_IF_NONE_MATCH": etag},
        {"HTTP_RANGE": "bytes=10-19", "HTTP_IF_RANGE": '"stale"'},
        {"HTTP_RANGE": "bytes=10-19", "HTTP_IF_RANGE": etag},
        {"HTTP_RANGE": "bytes=0-1,5-9"},
    ]
    for case in cases:
        ours, theirs = call(with_store, **case), call(plain, **case)
        assert ours[0] == theirs[0], case
        assert without_dates(ours[1]) == without_dates(theirs[1]), case
        assert ours[2] == theirs[2], case
    assert call(with_store, method="HEAD")[2] == b""
    assert with_store.renditions.hits >= 4  # HEAD and the ranges were answered from the store


def test_head_never_fills(media, tmp_path):
    middleware = AudioOnlyMiddleware(FileApp(media("mp4_faststart")), rendition_cache=tmp_path)
    call(middleware, method="HEAD")
    call(middleware, method="HEAD", HTTP_RANGE="bytes=0-1")
    assert middleware.renditions.join_fills(timeout=30)
    assert listing(tmp_path) == []


@pytest.mark.parametrize("header", ["bytes=0-", "bytes=-{length}", "bytes=0-{last}"])
def test_a_206_with_every_byte_fills(media, tmp_path, header):
    """Browsers ask for media with ``Range: bytes=0-``: their first download fills the store."""
    path = media("mp4_faststart")
    whole = call(AudioOnlyMiddleware(FileApp(path)))[2]
    length = len(whole)
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path)
    status, headers, body = call(middleware, HTTP_RANGE=header.format(length=length, last=length - 1))
    assert status.startswith("206") and dict(headers)["Content-Range"] == f"bytes 0-{length - 1}/{length}"
    assert body == whole and len(stored(tmp_path)) == 1 and middleware.renditions.fills == 1
    assert (tmp_path / stored(tmp_path)[0]).read_bytes() == body
    media_toolkit.assert_audio_identical(path, body)
    again = call(middleware, HTTP_RANGE="bytes=100-")
    assert middleware.renditions.hits == 1 and again[2] == body[100:]


PARTS = {  # Range header -> the slice of the whole rendition it asks for
    "bytes=0-1": slice(0, 2),  # Safari's first request
    "bytes=1-": slice(1, None),
    "bytes=-100": slice(-100, None),
    "bytes=0-{short}": slice(0, -1),  # a 206 short of the end by one byte
}


@pytest.mark.parametrize("kind", ["mp4_faststart", "flv_aac"])
@pytest.mark.parametrize("header", PARTS)
def test_a_part_from_a_file_backed_source_fills_the_store_in_the_background(media, tmp_path, kind, header):
    """Players that never ask for every byte at once (Safari's ``bytes=0-1``, a seek) still fill the store."""
    path = media(kind)
    whole = call(AudioOnlyMiddleware(FileApp(path, content_type=_type(path))))[2]
    app = FileApp(path, content_type=_type(path))
    middleware = AudioOnlyMiddleware(app, rendition_cache=tmp_path)
    status, _, part = call(middleware, HTTP_RANGE=header.format(short=len(whole) - 2))
    assert status.startswith("206") and part == whole[PARTS[header]]
    assert app.closes == 1  # the response is over: the fill reads through its own descriptor
    assert middleware.renditions.join_fills(timeout=30)
    assert stored(tmp_path) and (tmp_path / stored(tmp_path)[0]).read_bytes() == whole
    assert middleware.renditions.fills == 1 and not temporary(tmp_path)
    media_toolkit.assert_audio_identical(path, (tmp_path / stored(tmp_path)[0]).read_bytes())
    status, _, again = call(middleware)
    assert status == "200 OK" and again == whole and middleware.renditions.hits == 1


def _type(path):
    return "video/x-flv" if path.suffix == ".flv" else "video/mp4"


def test_a_part_from_a_body_that_cannot_be_read_again_does_not_fill(media, tmp_path):
    """A forward-only body is gone once answered; a file object without a descriptor is the app's."""
    path = media("mp4_faststart")
    for app in (GeneratorApp(path), CountingApp(path)):
        middleware = AudioOnlyMiddleware(app, rendition_cache=tmp_path)
        assert call(middleware, HTTP_RANGE="bytes=0-1")[0].startswith("206")
        assert middleware.renditions.join_fills(timeout=30)
        assert listing(tmp_path) == [], app


def test_background_fills_are_bounded_and_a_failure_leaves_nothing(tmp_path, caplog, monkeypatch):
    store = RenditionStore(tmp_path)
    release = threading.Event()
    cleanups = []
    created = []
    mkstemp = tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: created.append(kw) or mkstemp(**kw))

    def slow():
        release.wait(30)
        yield b"x" * 10

    threads = [store.fill_in_background((f'"t{i}"', 10), "audio/mp4", slow, lambda i=i: cleanups.append(i))
               for i in range(3)]
    assert threads[0] is not None and threads[1] is not None
    assert threads[2] is None and cleanups == [2]  # two already run: skipped, cleaned up at once
    assert len(created) == 2  # and skipped before any temporary file was made
    assert store.fill_in_background(('"t0"', 10), "audio/mp4", slow, lambda: cleanups.append(0)) is None
    release.set()
    assert store.join_fills(timeout=30)
    assert sorted(cleanups) == [0, 0, 1, 2] and len(stored(tmp_path)) == 2 and not temporary(tmp_path)

    def broken():
        yield b"x"
        raise OSError("the disk went away")

    with caplog.at_level(logging.DEBUG, logger="audio_middleware"):  # the second is a debug line: rate limit
        store.fill_in_background(('"t8"', 10), "audio/mp4", broken, lambda: cleanups.append(8))
        store.fill_in_background(('"t9"', 10), "audio/mp4", lambda: [b"short"], lambda: cleanups.append(9))
        assert store.join_fills(timeout=30)
    assert sorted(cleanups)[-2:] == [8, 9] and len(stored(tmp_path)) == 2 and not temporary(tmp_path)
    assert "background fill" in caplog.text and "5 bytes written, expected 10" in caplog.text


def test_at_exit_unfinished_background_fills_leave_no_temporary_file(tmp_path):
    """A worker that ends (max_requests, a restart) kills its daemon threads: the store's atexit hook waits a
    little, then drops the files of the fills still running (they waited for a scan an hour later)."""
    store = RenditionStore(tmp_path)
    release = threading.Event()

    def slow():
        yield b"x" * 5
        release.wait(30)
        yield b"x" * 5

    def quick():
        yield b"y" * 10

    store.fill_in_background(('"slow"', 10), "audio/mp4", slow, lambda: None)
    store.fill_in_background(('"quick"', 10), "audio/mp4", quick, lambda: None)
    deadline = time.monotonic() + 10
    while len(stored(tmp_path)) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    store.finish_fills(timeout=0.2)
    assert temporary(tmp_path) == [] and len(stored(tmp_path)) == 1  # the finished one is kept
    release.set()
    assert store.join_fills(timeout=30) and temporary(tmp_path) == [] and len(stored(tmp_path)) == 1


def test_join_fills_counts_a_fill_whose_thread_has_not_started_as_running(tmp_path):
    """Another request may have registered its fill and not started its thread yet when the exit hook
    runs: joining such a thread raises RuntimeError, which must not escape the hook."""
    store = RenditionStore(tmp_path)
    fill = store.filler(('"late"', 10), "audio/mp4")
    not_started = threading.Thread(target=lambda: None)
    store._background[not_started] = fill
    assert store.join_fills(timeout=0.1) is False
    store.finish_fills(timeout=0.1)
    assert not fill.open and temporary(tmp_path) == []


def test_a_thread_that_cannot_start_is_no_fill_and_no_error(tmp_path, monkeypatch):
    store = RenditionStore(tmp_path)
    cleanups = []

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert store.fill_in_background(('"t"', 1), "audio/mp4", lambda: [b"x"], lambda: cleanups.append(1)) is None
    assert cleanups == [1] and listing(tmp_path) == [] and store.join_fills(timeout=1)
    monkeypatch.undo()  # threads again: the key was released, the next request fills it
    assert store.fill_in_background(('"t"', 1), "audio/mp4", lambda: [b"x"], lambda: None) is not None
    assert store.join_fills(timeout=30) and len(stored(tmp_path)) == 1


def test_an_independent_copy_reads_after_the_original_is_closed(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 4)
    original = FileSource(open(path, "rb"), start=10, owned=True)
    copy = original.independent_copy()
    original.close()
    assert copy.size == 1014 and copy.read(0, 4) == bytes(range(10, 14))
    copy.close()
    assert FileSource(CountingFile(path)).independent_copy() is None  # no descriptor to duplicate


# -- keys ------------------------------------------------------------------------------------------------------


def test_a_changed_source_etag_misses(media, tmp_path):
    path = media("mp4_faststart")
    app = CountingApp(path)
    middleware = AudioOnlyMiddleware(app, rendition_cache=tmp_path)
    call(middleware)
    app.etag = '"v2"'
    _, _, body = call(middleware)
    assert middleware.renditions.hits == 0 and middleware.renditions.fills == 2
    assert app.opened[-1].bytes_read > 1000
    assert len(stored(tmp_path)) == 2
    media_toolkit.assert_audio_identical(path, body)
    call(middleware)
    assert middleware.renditions.hits == 1


def test_keys_are_scoped_to_the_resource_and_the_extraction_options(media, tmp_path):
    """Two files with the same ETag (mtime-size collisions happen) never share a stored rendition."""
    one, two = media("mp4_faststart"), media("mp4_two_audio")

    def app(environ, start_response):
        return (FileApp(two) if environ["PATH_INFO"] == "/two.mp4" else FileApp(one))(environ, start_response)

    client = TestApp(AudioOnlyMiddleware(app, rendition_cache=tmp_path))
    for _ in range(2):
        media_toolkit.assert_audio_identical(one, client.get(f"/one.mp4?{FLAG}").body)
        media_toolkit.assert_audio_identical(two, client.get(f"/two.mp4?{FLAG}").body)
        media_toolkit.assert_audio_identical(two, client.get(f"/two.mp4?{FLAG}&audio_track=2").body, tracks=[1])
    assert len(stored(tmp_path)) == 3


def test_weak_etag_or_no_validators_are_not_stored(media, tmp_path):
    path = media("mp4_faststart")
    for upstream in (FileApp(path, etag='W/"weak"'), GeneratorApp(path, etag=None, last_modified=None),
                     GeneratorApp(path, etag=None, send_length=False)):
        middleware = AudioOnlyMiddleware(upstream, rendition_cache=tmp_path)
        for _ in range(2):
            _, _, body = call(middleware)
            media_toolkit.assert_audio_identical(path, body)
    assert listing(tmp_path) == []


def test_last_modified_and_length_are_a_strong_validator(media, tmp_path):
    path = tmp_path / "v.mp4"
    shutil.copy(media("mp4_faststart"), path)
    os.utime(path, (time.time() - 7200, time.time() - 7200))  # kept for more than a second (RFC 9110 8.8.2.2)
    store = tmp_path / "store"
    middleware = AudioOnlyMiddleware(FileApp(path, etag=None), rendition_cache=store)
    first = call(middleware)[2]
    assert call(middleware)[2] == first and middleware.renditions.hits == 1
    assert len(stored(store)) == 1
    os.utime(path, (time.time() - 3600, time.time() - 3600))  # a new Last-Modified: a new rendition ETag
    assert call(middleware)[2] == first
    assert middleware.renditions.hits == 1 and len(stored(store)) == 2


@pytest.mark.parametrize(("last_modified", "date", "strong"), [
    ("Wed, 21 Oct 2026 07:28:00 GMT", "Wed, 21 Oct 2026 07:28:01 GMT", True),   # a second later: strong
    ("Wed, 21 Oct 2026 07:28:00 GMT", "Wed, 21 Oct 2026 07:28:00 GMT", False),  # the same second
    ("Wed, 21 Oct 2026 07:28:05 GMT", "Wed, 21 Oct 2026 07:28:00 GMT", False),  # after the response's Date
    ("yesterday", "Wed, 21 Oct 2026 07:28:00 GMT", False),                      # not a date
    ("Wed, 21 Oct 2026 07:28:00 GMT", None, True),                              # no Date: now, years later
])
def test_last_modified_is_strong_from_a_second_before_the_date(last_modified, date, strong):
    headers = Headers([("Last-Modified", last_modified), ("Content-Length", "10")] + ([("Date", date)] if date else []))
    validators = validators_for(headers, ("mp4", ()))
    assert validators.strong is strong
    assert (validators.source is not None) is strong  # the plan cache keys on strong validators only
    assert validators.etag.startswith("W/") is not strong


def test_a_last_modified_younger_than_a_second_is_a_weak_validator(media, tmp_path):
    """A file changed this very second may change again within it with the same date and size:
    its rendition gets a weak ETag, and neither its plan nor its bytes are kept (RFC 9110 8.8.2.2)."""
    path = tmp_path / "v.mp4"
    shutil.copy(media("mp4_faststart"), path)
    now = time.time()
    os.utime(path, (now + 60, now + 60))  # not settled for the next minute (a clock ahead is not either)
    store = tmp_path / "store"
    middleware = AudioOnlyMiddleware(FileApp(path, etag=None), rendition_cache=store)
    for _ in range(2):
        _, headers, body = call(middleware)
        assert dict(headers)["ETag"].startswith('W/"audio-')
        media_toolkit.assert_audio_identical(path, body)
    assert len(middleware.cache) == 0 and middleware.cache.hits == 0
    assert listing(store) == []


@pytest.mark.parametrize(("age", "partial"), [(7200, True), (-60, False)], ids=["settled", "this_second"])
def test_if_range_with_a_date_needs_a_strong_last_modified(media, tmp_path, age, partial):
    """RFC 9110 13.1.5: an If-Range date counts only against a strong Last-Modified; against one that is
    not yet a second old the condition is false and the whole rendition is sent (it got a 206)."""
    path = tmp_path / "v.mp4"
    shutil.copy(media("mp4_faststart"), path)
    os.utime(path, (time.time() - age, time.time() - age))
    middleware = AudioOnlyMiddleware(FileApp(path, etag=None))
    _, headers, whole = call(middleware)
    status, _, body = call(middleware, HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE=dict(headers)["Last-Modified"])
    assert (status, body) == (("206 Partial Content", whole[:10]) if partial else ("200 OK", whole))


def test_a_lazy_plan_is_stored_once_recorded(media, tmp_path):
    """A streamed (chunked) answer is not stored; the sized one made from its recording is."""
    path = media("flv_aac")
    middleware = AudioOnlyMiddleware(GeneratorApp(path, "video/x-flv"), rendition_cache=tmp_path)
    streamed = call(middleware)
    assert "Content-Length" not in dict(streamed[1]) and listing(tmp_path) == []
    media_toolkit.assert_audio_identical(path, streamed[2])
    assert call(middleware)[2] == streamed[2] and len(stored(tmp_path)) == 1
    assert call(middleware)[2] == streamed[2] and middleware.renditions.hits == 1

    plain = AudioOnlyMiddleware(GeneratorApp(path, "video/x-flv"), rendition_cache=tmp_path / "off", cache_entries=0)
    for _ in range(2):  # without a plan cache nothing is recorded, so nothing is stored
        assert call(plain)[2] == streamed[2]
    assert listing(tmp_path / "off") == []


# -- incomplete responses leave nothing --------------------------------------------------------------------


def test_client_gone_after_the_first_block_leaves_no_file(media, tmp_path):
    path = media("mp4_faststart")
    upstream = FileApp(path)
    middleware = AudioOnlyMiddleware(upstream, rendition_cache=tmp_path, block_size=4096)
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": FLAG, "PATH_INFO": "/v.mp4", "SERVER_NAME": "x",
               "SERVER_PORT": "80"}
    body = middleware(dict(environ), lambda *args: None)
    next(iter(body))
    assert len(temporary(tmp_path)) == 1  # the fill in progress
    body.close()
    assert listing(tmp_path) == []
    body = middleware(dict(environ), lambda *args: None)  # closed before the first block
    body.close()
    assert listing(tmp_path) == []
    assert upstream.closes == upstream.bodies == 2
    assert middleware.renditions.fills == 0
    call(middleware)  # and the next complete download fills
    assert len(stored(tmp_path)) == 1 and not temporary(tmp_path)


def test_a_body_dropped_without_close_leaves_no_file(media, tmp_path):
    import gc

    path = media("mp4_faststart")
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path, block_size=4096)
    body = middleware({"REQUEST_METHOD": "GET", "QUERY_STRING": FLAG, "PATH_INFO": "/v.mp4"}, lambda *args: None)
    next(iter(body))
    del body
    gc.collect()
    assert listing(tmp_path) == []
    call(middleware)  # the key is not left blocked
    assert middleware.renditions.fills == 1 and len(stored(tmp_path)) == 1


def test_truncated_source_leaves_no_file(media, tmp_path):
    path = media("mp4_faststart")
    upstream = GeneratorApp(path, truncate_at=path.stat().st_size - 5000)
    middleware = AudioOnlyMiddleware(upstream, rendition_cache=tmp_path, block_size=4096)
    body = middleware({"REQUEST_METHOD": "GET", "QUERY_STRING": FLAG, "PATH_INFO": "/v.mp4"}, lambda *args: None)
    received = b""
    with pytest.raises(Exception, match="short|ends"):
        for chunk in body:
            received += chunk
    assert received
    body.close()
    assert listing(tmp_path) == []
    assert upstream.closes == 1


def test_a_stored_file_cut_short_is_a_miss_and_is_replaced(media, tmp_path):
    path = media("mp4_faststart")
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path)
    first = call(middleware)[2]
    [name] = stored(tmp_path)
    with open(tmp_path / name, "r+b") as f:  # what a crash before the data reached the disk may leave
        f.truncate(len(first) // 2)
    assert call(middleware)[2] == first
    assert middleware.renditions.hits == 0 and middleware.renditions.fills == 2
    assert (tmp_path / name).read_bytes() == first
    assert call(middleware)[2] == first and middleware.renditions.hits == 1


# -- bounds ---------------------------------------------------------------------------------------------------


def test_eviction_keeps_the_directory_under_max_bytes_least_recently_used_first(media, tmp_path):
    path = media("mp4_faststart")
    length = len(call(AudioOnlyMiddleware(FileApp(path)))[2])
    upstream = FileApp(path)
    middleware = AudioOnlyMiddleware(upstream, rendition_cache=tmp_path, rendition_cache_bytes=2 * length + length // 2)
    store = middleware.renditions
    for etag in ('"a"', '"b"'):
        upstream.etag = etag
        call(middleware)
    assert len(stored(tmp_path)) == 2 and store.evictions == 0
    for age, name in enumerate(stored(tmp_path)):  # both long unused
        os.utime(tmp_path / name, (time.time() - 1000 - age, time.time() - 1000 - age))
    upstream.etag = '"a"'
    call(middleware)  # a hit: "a" is now the most recently used
    assert store.hits == 1
    upstream.etag = '"c"'
    call(middleware)
    assert store.evictions == 1
    assert store.size_bytes() <= store.max_bytes
    assert len(stored(tmp_path)) == 2 and len(listing(tmp_path)) == 4  # renditions and their indexes
    upstream.etag = '"a"'
    call(middleware)
    assert store.hits == 2  # "a" survived
    upstream.etag = '"b"'
    call(middleware)
    assert store.hits == 2 and store.fills == 4  # "b" was evicted, and is filled again
    assert store.size_bytes() <= store.max_bytes


def test_a_rendition_larger_than_the_store_is_not_stored(media, tmp_path):
    path = media("mp4_faststart")
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path, rendition_cache_bytes=1000)
    media_toolkit.assert_audio_identical(path, call(middleware)[2])
    assert listing(tmp_path) == []


def test_stale_temporary_files_are_removed(tmp_path):
    store = RenditionStore(tmp_path)
    old, recent = tmp_path / ".fill-dead.tmp", tmp_path / ".fill-busy.tmp"
    old.write_bytes(b"x" * 100)
    recent.write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    store.evict()
    assert listing(tmp_path) == [".fill-busy.tmp"]


# -- concurrency -------------------------------------------------------------------------------------------


def test_two_workers_filling_the_same_key_at_once_end_with_one_complete_file(media, tmp_path):
    """Two processes' middlewares on one directory, their downloads interleaved block by block."""
    path = media("mp4_moov_end")
    workers = [AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path, block_size=4096) for _ in range(2)]
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": FLAG, "PATH_INFO": "/v.mp4", "SERVER_NAME": "x",
               "SERVER_PORT": "80"}
    bodies = [iter(worker(dict(environ), lambda *args: None)) for worker in workers]
    outputs = [bytearray(), bytearray()]
    done = [False, False]
    while not all(done):
        for index, body in enumerate(bodies):
            if not done[index]:
                chunk = next(body, None)
                if chunk is None:
                    done[index] = True
                else:
                    outputs[index] += chunk
    for body in bodies:
        body.close()
    assert outputs[0] == outputs[1]
    assert [worker.renditions.fills for worker in workers] == [1, 1]
    assert len(stored(tmp_path)) == 1 and not temporary(tmp_path)
    assert (tmp_path / stored(tmp_path)[0]).read_bytes() == outputs[0]
    media_toolkit.assert_audio_identical(path, bytes(outputs[0]))


def test_threads_filling_the_same_key_concurrently(media, tmp_path):
    path = media("mp4_moov_end")
    expected = call(AudioOnlyMiddleware(FileApp(path)))[2]
    stores = [RenditionStore(tmp_path) for _ in range(4)]  # as many processes
    key = ('"audio-x" host/v.mp4?', len(expected))
    barrier = threading.Barrier(len(stores))
    errors = []

    def fill(store):
        try:
            filler = store.filler(key, "audio/mp4")
            barrier.wait()
            blocks = [expected[i:i + 1000] for i in range(0, len(expected), 1000)]
            assert b"".join(filler.tee(blocks)) == expected
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=fill, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(store.fills for store in stores) == 4
    assert listing(tmp_path) == sorted([stores[0].path_for(key).name, stores[0]._index_path(key[0]).name])
    assert stores[0].lookup(key).read_bytes() == expected
    hit = stores[1].find(key[0])
    assert (hit.length, hit.content_type, hit.file.read()) == (len(expected), "audio/mp4", expected)
    hit.file.close()


def test_one_store_fills_a_key_once_at_a_time(media, tmp_path):
    path = media("mp4_faststart")
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path, block_size=4096)
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": FLAG, "PATH_INFO": "/v.mp4", "SERVER_NAME": "x",
               "SERVER_PORT": "80"}
    first = middleware(dict(environ), lambda *args: None)
    head = next(iter(first))
    second_body = b"".join(middleware(dict(environ), lambda *args: None))  # served, not filled
    assert len(temporary(tmp_path)) == 1 and middleware.renditions.fills == 0
    first_body = head + b"".join(first)
    first.close()
    assert first_body == second_body
    assert middleware.renditions.fills == 1 and len(stored(tmp_path)) == 1
    assert (tmp_path / stored(tmp_path)[0]).read_bytes() == second_body


# -- the store never breaks a response ------------------------------------------------------------------------


def test_an_unusable_directory_still_gives_correct_responses(media, tmp_path, caplog):
    path = media("mp4_faststart")
    blocker = tmp_path / "not-a-directory"
    blocker.write_bytes(b"")
    caplog.set_level(logging.WARNING, "audio_middleware")
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=blocker / "store")
    for _ in range(3):
        status, headers, body = call(middleware)
        assert status == "200 OK" and dict(headers)["Content-Length"] == str(len(body))
        media_toolkit.assert_audio_identical(path, body)
    assert middleware.renditions.fills == 0
    assert "rendition store" in caplog.text


def test_a_full_disk_abandons_the_fill_not_the_response(media, tmp_path, monkeypatch):
    path = media("mp4_moov_end")
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path, block_size=4096)
    real_filler = middleware.renditions.filler

    class FullDisk:
        def __init__(self, file):
            self.file = file
            self.writes = 0

        def write(self, data):
            self.writes += 1
            if self.writes > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def close(self):
            self.file.close()

    def filler(key, content_type):
        fill = real_filler(key, content_type)
        fill._file = FullDisk(fill._file)
        return fill

    monkeypatch.setattr(middleware.renditions, "filler", filler)
    status, headers, body = call(middleware)
    assert status == "200 OK" and dict(headers)["Content-Length"] == str(len(body))
    media_toolkit.assert_audio_identical(path, body)
    assert listing(tmp_path) == [] and middleware.renditions.failures == 1


def test_a_failing_rename_leaves_no_file(media, tmp_path, monkeypatch):
    import audio_middleware.renditions as renditions

    path = media("mp4_faststart")
    middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=tmp_path)

    def refuse(*args):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(renditions.os, "replace", refuse)
    media_toolkit.assert_audio_identical(path, call(middleware)[2])
    monkeypatch.undo()
    assert listing(tmp_path) == []
    media_toolkit.assert_audio_identical(path, call(middleware)[2])
    assert len(stored(tmp_path)) == 1


# -- the store on its own ----------------------------------------------------------------------------------


def test_a_long_url_is_stored_and_found_like_a_short_one(media, tmp_path):
    """The index names the tag by its digest: a signed URL's query of 8 KB gets hits like any other."""
    path = media("mp4_faststart")
    for length in (10, 8000):
        store = tmp_path / str(length)
        middleware = AudioOnlyMiddleware(FileApp(path), rendition_cache=store)
        query = "ali_audio_only=1&token=" + "%C3%A9" * (length // 6)
        bodies = {call(middleware, query=query)[2] for _ in range(3)}
        assert len(bodies) == 1 and (middleware.renditions.fills, middleware.renditions.hits) == (1, 2), length
        [index] = indexes(store)
        assert (store / index).stat().st_size < 300


def test_a_fill_dropped_while_its_store_lock_is_held_does_not_deadlock(tmp_path):
    """Fill.__del__ (run by the garbage collector wherever it is) releases its key under the store's lock."""
    store = RenditionStore(tmp_path)
    fills = [store.filler(('"t"', 10), "audio/mp4")]

    def drop_under_the_lock():
        with store._lock:
            fills.clear()  # the last reference: __del__ runs here

    thread = threading.Thread(target=drop_under_the_lock, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and listing(tmp_path) == []
    assert store.filler(('"t"', 10), "audio/mp4") is not None  # the key was released


def test_store_lookup_checks_the_length_and_touches(tmp_path):
    store = RenditionStore(tmp_path)
    key = ('"e" host/p?', 5)
    assert store.lookup(key) is None
    assert store.filler(('W/"weak" host/p?', 5), "audio/mp4") is None
    assert store.filler(('"e" host/p?', 0), "audio/mp4") is None
    filler = store.filler(key, "audio/mp4")
    assert list(filler.tee([b"ab", b"cde"])) == [b"ab", b"cde"]
    found = store.lookup(key)
    assert found is not None and found.read_bytes() == b"abcde"
    os.utime(found, (1000, 1000))
    assert store.lookup(key) == found and found.stat().st_mtime > 1000
    assert store.lookup(('"e" host/p?', 6)) is None
    wrong = store.filler(('"f" host/p?', 5), "audio/mp4")
    list(wrong.tee([b"abc"]))  # fewer bytes than the plan said: not published
    assert store.lookup(('"f" host/p?', 5)) is None and store.failures == 1
    longer = store.filler(('"g" host/p?', 5), "audio/mp4")
    assert list(longer.tee([b"abcde", b"f"])) == [b"abcde", b"f"]  # more bytes than the plan said: withdrawn
    assert store.lookup(('"g" host/p?', 5)) is None and store.failures == 2
    assert len(listing(tmp_path)) == 2


# -- under a real gunicorn ---------------------------------------------------------------------------------


@pytest.mark.server
def test_gunicorn_serves_the_second_download_from_the_store(media, video_heavy, tmp_path):
    import requests

    from .servers import run_gunicorn

    folder, store = tmp_path / "media", tmp_path / "store"
    folder.mkdir()
    shutil.copy(video_heavy, folder / "heavy.mp4")
    for kind in ("mp4_faststart", "mp4_moov_end"):
        shutil.copy(media(kind), folder / media(kind).name)
    close_log = folder / "closes.log"
    close_log.touch()
    env = {"AM_MEDIA_DIR": str(folder), "AM_CLOSE_LOG": str(close_log), "AM_RENDITION_CACHE": str(store)}
    with run_gunicorn("tests.server_apps:app", env=env, workers=2, threads=2) as url:
        first = requests.get(f"{url}/file/heavy.mp4?{FLAG}", timeout=30)
        assert first.status_code == 200 and int(first.headers["Content-Length"]) == len(first.content)
        [name] = stored(store)
        assert (store / name).read_bytes() == first.content
        os.utime(store / name, (1000, 1000))
        for _ in range(3):  # whichever worker answers: the directory is shared
            again = requests.get(f"{url}/file/heavy.mp4?{FLAG}", timeout=30)
            assert again.status_code == 200 and again.content == first.content
            assert without_dates(again.headers.items()) == without_dates(first.headers.items())
        assert (store / name).stat().st_mtime > 1000  # touched by the hits
        media_toolkit.assert_audio_identical(video_heavy, again.content)
        part = requests.get(f"{url}/file/heavy.mp4?{FLAG}", headers={"Range": "bytes=100-9999"}, timeout=30)
        assert part.status_code == 206 and part.content == first.content[100:10000]
        # the stream route gives every file the same ETag: the store keeps them apart by URL
        for _ in range(2):
            for file in ("mp4_faststart.mp4", "mp4_moov_end.mp4"):
                response = requests.get(f"{url}/stream/{file}?{FLAG}", timeout=30)
                assert int(response.headers["Content-Length"]) == len(response.content)
                media_toolkit.assert_audio_identical(folder / file, response.content)
        assert len(stored(store)) == 3 and not temporary(store)
        deadline = time.monotonic() + 10
        while close_log.read_text().count("\n") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(close_log.read_text().splitlines()) == sorted(
            [f"stream {file}" for file in ("mp4_faststart.mp4", "mp4_moov_end.mp4")] * 2)


@pytest.mark.parametrize("worker_class", ["gthread", "sync"])
def test_gunicorn_fills_the_store_in_the_background_after_a_first_ranged_request(video_heavy, tmp_path,
                                                                                 worker_class):
    """Safari's pattern under a real server: ``bytes=0-1`` first, then the store answers the rest
    (with the sync worker too: the fill's thread runs beside the one that serves requests)."""
    import requests

    from .servers import run_gunicorn

    folder, store = tmp_path / "media", tmp_path / "store"
    folder.mkdir()
    shutil.copy(video_heavy, folder / "heavy.mp4")
    env = {"AM_MEDIA_DIR": str(folder), "AM_RENDITION_CACHE": str(store)}
    with run_gunicorn("tests.server_apps:app", env=env, workers=1, threads=2, worker_class=worker_class) as url:
        probe = requests.get(f"{url}/file/heavy.mp4?{FLAG}", headers={"Range": "bytes=0-1"}, timeout=30)
        assert probe.status_code == 206 and len(probe.content) == 2
        length = int(probe.headers["Content-Range"].rsplit("/", 1)[1])
        deadline = time.monotonic() + 30
        # settled: the rendition is renamed into place before its index is written, so wait for both
        while not (stored(store) and indexes(store) and not temporary(store)) and time.monotonic() < deadline:
            time.sleep(0.05)
        [name] = stored(store)
        assert (store / name).stat().st_size == length and len(indexes(store)) == 1 and not temporary(store)
        whole = requests.get(f"{url}/file/heavy.mp4?{FLAG}", timeout=30)
        assert whole.status_code == 200 and whole.content == (store / name).read_bytes()
        assert whole.content[:2] == probe.content
        media_toolkit.assert_audio_identical(video_heavy, whole.content)
