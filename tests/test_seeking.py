"""Time-based seeking (``start``/``end``) through the middleware, for MP4 and FLV."""

from __future__ import annotations

import pytest
from webtest import TestApp

from audio_middleware import AudioOnlyMiddleware

from .apps import FileApp, GeneratorApp, RangeApp
from .conftest import media_toolkit

WINDOWS = [(1.0, None), (None, 1.5), (0.5, 2.0), (1.234, 1.3)]
SOURCES = {"file": FileApp, "generator": GeneratorApp, "range": RangeApp}


def query(start, end, **extra):
    parts = ["ali_audio_only=1"]
    if start is not None:
        parts.append(f"start={start}")
    if end is not None:
        parts.append(f"end={end}")
    parts += [f"{k}={v}" for k, v in extra.items()]
    return "/v?" + "&".join(parts)


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("start, end", WINDOWS)
def test_mp4_window(media, source, start, end):
    path = media("mp4_moov_end")
    client = TestApp(AudioOnlyMiddleware(SOURCES[source](path, "video/mp4")))
    response = client.get(query(start, end))
    assert response.content_type == "audio/mp4"
    media_toolkit.assert_audio_window(path, response.body, start or 0.0, end, rebased=True)


@pytest.mark.parametrize("source", ["file", "generator"])
@pytest.mark.parametrize("start, end", WINDOWS)
def test_flv_window(media, source, start, end):
    path = media("flv_aac")
    client = TestApp(AudioOnlyMiddleware(SOURCES[source](path, "video/x-flv")))
    response = client.get(query(start, end))
    assert response.content_type == "video/x-flv"
    media_toolkit.assert_audio_window(path, response.body, start or 0.0, end, rebased=False)


def test_ranges_of_a_clipped_rendition_are_slices_of_it(media):
    path = media("mp4_faststart")
    client = TestApp(AudioOnlyMiddleware(FileApp(path, "video/mp4")))
    full = client.get(query(0.5, 2.0))
    assert int(full.headers["Content-Length"]) == len(full.body)
    assert full.headers["ETag"] != client.get(query(None, None)).headers["ETag"]
    for header, expected in (("bytes=0-99", slice(0, 100)), ("bytes=-700", slice(-700, None)),
                             ("bytes=1000-", slice(1000, None))):
        part = client.get(query(0.5, 2.0), headers={"Range": header}, status=206)
        assert part.body == full.body[expected]


@pytest.mark.parametrize("bad", ["start=-1", "start=abc", "end=nan", "start=2&end=1", "start=1&end=1", "end=-3"])
def test_invalid_values_are_400(media, bad):
    client = TestApp(AudioOnlyMiddleware(FileApp(media("mp4_faststart"), "video/mp4")))
    response = client.get(f"/v?ali_audio_only=1&{bad}", status=400)
    assert response.content_type == "text/plain"


@pytest.mark.parametrize("kind, content_type", [("mp4_faststart", "video/mp4"), ("flv_aac", "video/x-flv")])
def test_start_past_the_end_is_416(media, kind, content_type):
    client = TestApp(AudioOnlyMiddleware(FileApp(media(kind), content_type)))
    response = client.get("/v?ali_audio_only=1&start=3600", status=416)
    assert "start" in response.text or "range" in response.text


def test_seeking_can_be_turned_off(media):
    path = media("mp4_faststart")
    client = TestApp(AudioOnlyMiddleware(FileApp(path, "video/mp4"), start_param=None, end_param=None))
    response = client.get("/v?ali_audio_only=1&start=1")
    media_toolkit.assert_audio_identical(path, response.body)


def test_fragmented_mp4_seeking_is_501(media):
    client = TestApp(AudioOnlyMiddleware(FileApp(media("mp4_fragmented"), "video/mp4")))
    response = client.get("/v?ali_audio_only=1&start=1", status=501)
    assert "fragmented" in response.text
