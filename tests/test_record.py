"""Lazy plans (FLV and fragmented MP4 from a forward-only body) recorded into complete ones.

The first flagged answer streams (chunked, no Range); once one has gone out whole,
the next ones are sized, answer Range and conditionals, and are byte-identical.
Nothing is recorded from an answer that did not complete.
"""

from __future__ import annotations

import pytest

from audio_middleware import AudioOnlyMiddleware
from audio_middleware.errors import SourceTruncated
from audio_middleware.plan import LazyPlan, Literal, Span, Spans
from audio_middleware.record import PlanRecorder, recording

from .apps import GeneratorApp, call
from .conftest import media_toolkit

KINDS = {"flv_aac": "video/x-flv", "mp4_fragmented": "video/mp4"}


def stream_app(media, kind, **options):
    upstream = GeneratorApp(media(kind), KINDS[kind], **options)
    return upstream, AudioOnlyMiddleware(upstream)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_second_answer_is_sized_identical_and_seekable(media, kind):
    upstream, app = stream_app(media, kind)
    status, headers, streamed = call(app)
    assert status == "200 OK" and "Content-Length" not in dict(headers)
    assert len(app.cache) == 1

    status, headers, sized = call(app)
    headers = dict(headers)
    assert status == "200 OK" and sized == streamed
    assert int(headers["Content-Length"]) == len(sized) and headers["Accept-Ranges"] == "bytes"
    media_toolkit.assert_audio_identical(media(kind), sized)

    for spec, expected in ((f"bytes=100-{len(sized) // 2}", sized[100:len(sized) // 2 + 1]),
                           ("bytes=-333", sized[-333:])):
        status, _, part = call(app, HTTP_RANGE=spec)
        assert status == "206 Partial Content" and part == expected
    status, _, body = call(app, HTTP_IF_NONE_MATCH=headers["ETag"])
    assert status == "304 Not Modified" and body == b""
    assert upstream.closes == upstream.bodies


def test_a_client_that_goes_away_records_nothing(media):
    upstream = GeneratorApp(media("flv_aac"), KINDS["flv_aac"])
    app = AudioOnlyMiddleware(upstream, block_size=1024)  # the first block is far from the whole rendition
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": "ali_audio_only=1", "PATH_INFO": "/v.flv",
               "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    body = app(environ, lambda status, headers, exc_info=None: None)
    next(iter(body))
    body.close()
    assert len(app.cache) == 0
    _, headers, _ = call(app)
    assert "Content-Length" not in dict(headers)  # still streamed: this one is recorded
    assert len(app.cache) == 1
    assert upstream.closes == upstream.bodies


def test_a_truncated_body_records_nothing(media):
    path = media("flv_aac")
    upstream = GeneratorApp(path, "video/x-flv", truncate_at=path.stat().st_size - 3000)
    app = AudioOnlyMiddleware(upstream)
    for _ in range(2):
        with pytest.raises(SourceTruncated):
            call(app)
        assert len(app.cache) == 0


def test_head_records_nothing_and_a_changed_source_is_streamed_again(media):
    upstream, app = stream_app(media, "mp4_fragmented")
    call(app, method="HEAD")
    assert len(app.cache) == 0
    call(app)
    assert "Content-Length" in dict(call(app)[1])
    upstream.etag = '"v2"'  # a new version of the file: a new key, streamed (and recorded) again
    assert "Content-Length" not in dict(call(app)[1])
    assert "Content-Length" in dict(call(app)[1])


def test_each_selection_is_recorded_on_its_own(media):
    upstream, app = stream_app(media, "flv_aac")
    whole = call(app)[2]
    clipped = call(app, query="ali_audio_only=1&start=1.5")[2]
    assert clipped != whole
    assert call(app)[2] == whole and call(app, query="ali_audio_only=1&start=1.5")[2] == clipped
    assert len(app.cache) == 2


def test_a_recording_larger_than_the_cache_is_dropped(media):
    upstream = GeneratorApp(media("flv_aac"), "video/x-flv")
    app = AudioOnlyMiddleware(upstream, cache_bytes=2000)
    first, second = call(app), call(app)
    assert first[2] == second[2] and "Content-Length" not in dict(second[1])
    assert len(app.cache) == 0


def test_the_recorder_keeps_pieces_in_order_and_merges_touching_spans():
    pieces = [Literal(b"head"), Span(10, 5), Span(15, 5), Span(30, 1), Literal(b"mid"),
              Spans([40, 50], [10, 2]), Span(52, 8), Span(70, 0)]
    kept = []
    lazy = LazyPlan(iter(pieces), "audio/x-flv", {"audio_codec": "aac"})
    out = list(recording(lazy, 1 << 20, kept.append))
    assert out == pieces
    (plan,) = kept
    assert plan.content_type == "audio/x-flv" and plan.info == {"audio_codec": "aac"}
    literal, first, middle, second = plan.pieces
    assert literal == Literal(b"head") and middle == Literal(b"mid")
    assert list(zip(first.offsets, first.lengths)) == [(10, 10), (30, 1)]
    assert list(zip(second.offsets, second.lengths)) == [(40, 20)]
    assert plan.length == 4 + 11 + 3 + 20


def test_the_recorder_gives_up_past_its_bound():
    recorder = PlanRecorder(max_bytes=100)
    recorder.add(Literal(b"x" * 50))
    for offset in range(0, 100, 10):
        recorder.add(Span(offset, 5))
    assert recorder.overflowed
    assert recorder.plan(LazyPlan(iter(()), "audio/mp4")) is None


def test_an_unfinished_lazy_plan_is_never_passed_on():
    kept = []
    stream = recording(LazyPlan(iter([Literal(b"a"), Span(0, 4)]), "audio/mp4"), 1 << 20, kept.append)
    next(stream)
    stream.close()
    assert kept == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_range_on_the_first_request_walks_the_plan_then_answers_206(media, kind):
    """Safari's first request is a Range: a streamed rendition cannot answer it, a recorded plan can."""
    upstream, app = stream_app(media, kind)
    status, headers, part = call(app, HTTP_RANGE="bytes=0-1")
    assert status == "206 Partial Content" and len(part) == 2
    assert upstream.bodies == 2 and upstream.closes == 2  # walked once, then sent from a second call
    whole = call(app)[2]
    assert part == whole[:2] and dict(headers)["Content-Range"] == f"bytes 0-1/{len(whole)}"
    media_toolkit.assert_audio_identical(media(kind), whole)
    status, _, tail = call(app, HTTP_RANGE="bytes=-500")
    assert status == "206 Partial Content" and tail == whole[-500:]
    assert upstream.bodies == 4  # from the cached plan: one app call each


def test_a_range_on_a_streamed_rendition_without_a_cache_is_a_full_200(media):
    upstream = GeneratorApp(media("flv_aac"), "video/x-flv")
    app = AudioOnlyMiddleware(upstream, cache_entries=0)
    status, headers, body = call(app, HTTP_RANGE="bytes=0-1")
    assert status == "200 OK" and dict(headers)["Accept-Ranges"] == "none" and len(body) > 2
    assert upstream.bodies == 1


def test_a_range_on_a_truncated_stream_is_an_error_before_any_byte(media):
    path = media("mp4_fragmented")
    upstream = GeneratorApp(path, "video/mp4", truncate_at=path.stat().st_size - 3000)
    status, headers, body = call(AudioOnlyMiddleware(upstream), HTTP_RANGE="bytes=0-99")
    assert status == "502 Bad Gateway" and b"its Content-Length is" in body
    assert upstream.closes == upstream.bodies == 1


class ChangingApp(GeneratorApp):
    """Serves the file once, then (same validators) bytes that are not FLV at all."""

    def body(self):
        if self.bodies >= 1:  # counted once the body is made: this is the second call
            return iter([b"not an flv" * 100])
        return super().body()


def test_a_second_call_that_fails_still_closes_each_body_once(media):
    upstream = ChangingApp(media("flv_aac"), "video/x-flv")
    status, _, body = call(AudioOnlyMiddleware(upstream), HTTP_RANGE="bytes=0-1")
    assert status == "502 Bad Gateway" and b"not a valid FLV" in body
    assert upstream.bodies == 2 and upstream.closes == 2
