"""PEP 3333 corners of the middleware: apps that start their response late, HEAD on an answer
passed through, close() of a file handed back to the server, the query string the app sees,
and error answers that must not leave a spooled copy open.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import sys
import tempfile
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.wsgi import FileWrapper

import audio_middleware.middleware as middleware_module
from audio_middleware import AudioOnlyMiddleware
from audio_middleware.body import withhold_tail
from audio_middleware.errors import SourceTruncated
from audio_middleware.sources import FileSource, reads_its_descriptor

from .apps import FileApp, GeneratorApp, LateStartApp, StaticApp, call
from .conftest import media_toolkit

TYPES = {".mp4": "video/mp4", ".flv": "video/x-flv"}


@pytest.mark.parametrize("kind", ["mp4_faststart", "mp4_moov_end", "flv_aac"])
def test_an_app_that_starts_its_response_while_iterated_is_transformed(media, kind):
    path = media(kind)
    upstream = LateStartApp(path, TYPES[path.suffix])
    status, headers, body = call(AudioOnlyMiddleware(upstream))
    assert status == "200 OK" and int(dict(headers).get("Content-Length", len(body))) == len(body)
    media_toolkit.assert_audio_identical(path, body)
    assert upstream.closes == upstream.bodies


def test_an_app_that_starts_its_response_while_iterated_passes_through_intact(tmp_path):
    page = tmp_path / "page.html"
    page.write_bytes(b"<html>" + b"x" * 3000 + b"</html>")
    upstream = LateStartApp(page, "text/html", status="404 Not Found")
    status, headers, body = call(AudioOnlyMiddleware(upstream))
    assert status == "404 Not Found" and body == page.read_bytes()
    assert dict(headers)["Content-Type"] == "text/html" and upstream.closes == 1


@pytest.mark.parametrize("upstream", [
    StaticApp("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "5")], b"nope\n"),
    StaticApp("200 OK", [("Content-Type", "text/html"), ("Content-Length", "6")], b"<html>"),
    StaticApp("200 OK", [("Content-Type", "application/octet-stream")], b"no container in here"),
], ids=["404", "html", "unknown bytes"])
def test_head_of_an_answer_passed_through_has_no_body(upstream):
    """The app is always called with GET: its body must not follow the headers of a HEAD."""
    status, headers, body = call(AudioOnlyMiddleware(upstream), method="HEAD")
    assert status == upstream.status and body == b"" and upstream.closes == 1
    assert headers == upstream.fixed_headers


def test_a_file_passed_through_to_the_servers_wrapper_closes_the_apps_iterable(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"not a video\n" * 50)
    for query in ("", "ali_audio_only=1"):
        upstream = FileApp(notes, "text/plain")
        status, _, body = call(AudioOnlyMiddleware(upstream), query=query, **{"wsgi.file_wrapper": FileWrapper})
        assert status == "200 OK" and body == notes.read_bytes()
        assert upstream.closes == 1, query


@pytest.mark.parametrize("raw", ["path=/media/a.mp4&download", "name=caf%E9.mp4", "sig=AbC%2f%2b%3d",
                                 "q=a%20b(1)", "a=1;b=2", "a=1&&b=+x+"])
def test_the_app_sees_the_rest_of_the_query_string_byte_for_byte(media, raw):
    upstream = GeneratorApp(media("mp4_faststart"))
    for query in (f"ali_audio_only=1&{raw}", f"{raw}&ali_audio_only=1&audio_track=1",
                  f"{raw}&start=&ali%5Faudio_only=1"):
        assert call(AudioOnlyMiddleware(upstream), query=query)[0] == "200 OK"
        assert upstream.environs[-1]["QUERY_STRING"] == raw, query


@pytest.mark.parametrize("query, seen", [("ali_audio_only=1&sig=AbC%2f", "/v.mp4?sig=AbC%2f"),
                                         ("ali_audio_only=1", "/v.mp4")])
def test_the_raw_request_target_says_what_the_query_string_says(media, query, seen):
    """gunicorn and werkzeug add the raw target (RAW_URI, REQUEST_URI): an app that reads or signs it
    sees the URL without our parameters too."""
    upstream = GeneratorApp(media("mp4_faststart"))
    target = f"/v.mp4?{query}"
    assert call(AudioOnlyMiddleware(upstream), query=query, REQUEST_URI=target, RAW_URI=target)[0] == "200 OK"
    assert (upstream.environs[-1]["REQUEST_URI"], upstream.environs[-1]["RAW_URI"]) == (seen, seen)


@pytest.mark.parametrize("request_environ, status", [
    ({"HTTP_RANGE": "bytes=999999999-"}, "416"),
    ({"HTTP_RANGE": "bytes=0-1"}, "416"),  # range_policy="reject"
    ({"QUERY_STRING": "ali_audio_only=1&audio_track=9"}, "404"),
    ({"QUERY_STRING": "ali_audio_only=1&start=99"}, "416"),
])
def test_an_error_answer_closes_the_spooled_copy(media, monkeypatch, request_environ, status):
    spooled = []

    def spool(*args, **kwargs):
        spooled.append(real_spool(*args, **kwargs))
        return spooled[-1]

    real_spool = middleware_module.spool
    monkeypatch.setattr(middleware_module, "spool", spool)
    policy = "reject" if request_environ.get("HTTP_RANGE") == "bytes=0-1" else "serve"
    upstream = GeneratorApp(media("mp4_moov_end"))  # forward-only with the moov at the end: spooled
    middleware = AudioOnlyMiddleware(upstream, range_policy=policy, range_subrequests=False)
    assert call(middleware, **request_environ)[0].startswith(status)
    [source] = spooled
    assert source._file.closed and upstream.closes == upstream.bodies


def test_a_pipe_served_through_the_file_wrapper_is_read_as_a_stream(media):
    """A subprocess's stdout has a descriptor but no positions: no positioned reads on it."""
    path = media("mp4_faststart")

    def piping_app(environ, start_response):
        reader, writer = os.pipe()
        feeder = threading.Thread(target=_feed, args=(writer, path.read_bytes()), daemon=True)
        feeder.start()
        start_response("200 OK", [("Content-Type", "video/mp4"), ("Content-Length", str(path.stat().st_size)),
                                  ("ETag", '"p1"')])
        return environ["wsgi.file_wrapper"](os.fdopen(reader, "rb"), 4096)

    middleware = AudioOnlyMiddleware(piping_app)
    assert call(middleware, query="", **{"wsgi.file_wrapper": FileWrapper})[2] == path.read_bytes()
    status, _, body = call(middleware, **{"wsgi.file_wrapper": FileWrapper})
    assert status == "200 OK"
    media_toolkit.assert_audio_identical(path, body)


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open], ids=["gzip", "bz2", "lzma"])
def test_a_decompressing_file_served_through_the_file_wrapper_is_read_as_it_reads(media, tmp_path, opener):
    """GzipFile & co. report the compressed file's descriptor: reads of it are not the served bytes."""
    path = media("mp4_moov_end")  # the moov at the end: a stream must be read to its end (spooled)
    packed = tmp_path / "v.mp4.z"
    with opener(packed, "wb") as out:
        out.write(path.read_bytes())

    def compressed_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "video/mp4"), ("ETag", '"z1"')])
        return environ["wsgi.file_wrapper"](opener(packed, "rb"), 4096)

    middleware = AudioOnlyMiddleware(compressed_app)
    assert call(middleware, query="", **{"wsgi.file_wrapper": FileWrapper})[2] == path.read_bytes()
    status, _, body = call(middleware, **{"wsgi.file_wrapper": FileWrapper})
    assert status == "200 OK"
    media_toolkit.assert_audio_identical(path, body)


def test_only_files_read_as_they_are_get_positioned_reads(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x" * 10)
    with open(plain, "rb") as buffered, open(plain, "rb", buffering=0) as raw, \
            tempfile.TemporaryFile() as temporary, gzip.open(tmp_path / "z", "wb") as compressed:
        assert reads_its_descriptor(buffered) and reads_its_descriptor(raw) and reads_its_descriptor(temporary)
        assert not reads_its_descriptor(compressed) and not reads_its_descriptor(io.BytesIO(b"x"))
        assert FileSource(buffered).located(0) is not None
        assert FileSource(compressed).located(0) is None  # no pread or sendfile on the compressed descriptor


def _feed(fd: int, data: bytes) -> None:
    with os.fdopen(fd, "wb") as pipe:
        with contextlib.suppress(BrokenPipeError):
            pipe.write(data)



@given(st.lists(st.binary(max_size=20), max_size=12), st.booleans())
def test_withhold_tail_sends_the_last_bytes_only_after_a_normal_end(chunks, fails):
    def source():
        yield from chunks
        if fails:
            raise SourceTruncated("cut")

    sent = []
    try:
        for chunk in withhold_tail(source(), 5):
            assert chunk  # no empty writes
            sent.append(chunk)
    except SourceTruncated:
        assert fails
    whole = b"".join(chunks)
    assert b"".join(sent) == (whole[:max(0, len(whole) - 5)] if fails else whole)


def _audio_tag_ends(data: bytes) -> tuple[int, list[int]]:
    """(where the tags start, where each audio tag of an FLV ends, its PreviousTagSize included)."""
    position = first = int.from_bytes(data[5:9], "big") + 4
    ends = []
    while position + 11 <= len(data):
        end = position + 11 + int.from_bytes(data[position + 1:position + 4], "big") + 4
        if data[position] & 0x1F == 8:
            ends.append(end)
        position = end
    return first, ends


def test_a_streamed_flv_cut_short_never_ends_on_a_tag_boundary(media):
    """Over a connection whose close is the only end mark, an aborted answer must not be a well-formed shorter FLV:
    the source is cut inside the video tag after an audio tag, which had already gone out whole."""
    data = media("flv_aac").read_bytes()
    _, ends = _audio_tag_ends(data)
    cut = next(end for end in ends[len(ends) // 2:] if data[end] & 0x1F == 9) + 20  # inside the next (video) tag
    upstream = GeneratorApp(media("flv_aac"), "video/x-flv", truncate_at=cut)  # with the full Content-Length
    sent = bytearray()
    seen = {}
    body = AudioOnlyMiddleware(upstream, block_size=1024)({"REQUEST_METHOD": "GET", "QUERY_STRING": "ali_audio_only=1",
                                          "PATH_INFO": "/v.flv", "SERVER_NAME": "x", "SERVER_PORT": "80",
                                          "wsgi.url_scheme": "http"}, lambda s, h, e=None: seen.update(status=s))
    with pytest.raises(SourceTruncated):
        for chunk in body:
            sent += chunk
    body.close()
    assert seen["status"] == "200 OK" and len(sent) > 1000
    first, out_ends = _audio_tag_ends(bytes(sent))
    assert len(sent) not in out_ends  # the last tag is incomplete: no demuxer takes it for a complete file


def _failing_midway_app(path, error_page: bytes, content_type: str):
    """An app that sends a file, then fails and switches to an error page with ``exc_info``."""

    def app(environ, start_response):
        data = path.read_bytes()
        start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(data))),
                                  ("ETag", '"m1"')])
        yield data[:len(data) // 2]
        try:
            raise RuntimeError("the storage went away")
        except RuntimeError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        yield error_page

    return app


@pytest.mark.parametrize("content_type", ["video/mp4", "text/html"], ids=["extracted", "passed-through"])
def test_start_response_with_exc_info_after_the_body_began_reraises(media, content_type):
    """PEP 3333: once the headers may have gone out, start_response(..., exc_info) raises it, so the
    app's error page is never taken for (or appended to) the body we already answer with."""
    middleware = AudioOnlyMiddleware(_failing_midway_app(media("mp4_moov_end"), b"ERROR PAGE", content_type))
    with pytest.raises(RuntimeError, match="the storage went away"):
        call(middleware)


def test_start_response_with_exc_info_before_the_body_replaces_the_answer(media):
    """Before any body item was read, an app may still change its mind (PEP 3333's error handling)."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "video/mp4")])
        try:
            raise RuntimeError("found out early")
        except RuntimeError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"try later"]

    status, _, body = call(AudioOnlyMiddleware(app))
    assert (status, body) == ("503 Service Unavailable", b"try later")


def test_start_response_twice_without_exc_info_is_an_error(media):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "video/mp4")])
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b""]

    with pytest.raises(AssertionError, match="second time"):
        call(AudioOnlyMiddleware(app))
