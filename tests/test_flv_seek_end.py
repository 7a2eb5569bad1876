"""FLV seeking at the edges: a ``start`` inside the last audio frame, and empty windows (``end=0``).

FLV tags carry no durations, so the last frame's end comes from its codec
(AAC config, MP3 header), else from the spacing of the two frames before it
(:mod:`audio_middleware.flv.frames`). A ``start`` inside that frame keeps it,
as an MP4 clip keeps the sample that contains ``start``; at or past its end is
416. ``end=0`` is 416 as for MP4 (only ``start >= end`` is a bad request).
Kept packets are checked with PyAV against the source: same bytes, same pts.
"""

from __future__ import annotations

import array
import math
import pathlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webtest import TestApp

from audio_middleware import AudioOnlyMiddleware
from audio_middleware.errors import InvalidRequest, NoAudioTrack, RangeNotSatisfiable
from audio_middleware.flv import plan_flv
from audio_middleware.flv.frames import MAX_FRAME_MS, LastFrame, aac_frame_ms, mp3_frame_ms
from audio_middleware.flv.tags import TAG_HEADER_SIZE, is_audio_config
from audio_middleware.limits import Limits
from audio_middleware.plan import LazyPlan

from . import test_flv_unit as unit
from .apps import FileApp, GeneratorApp, RangeApp
from .conftest import media_toolkit

av = pytest.importorskip("av")

APPS = {
    "file": FileApp,
    "range": RangeApp,
    "generator": GeneratorApp,
    "generator_no_length": lambda path, ctype: GeneratorApp(path, ctype, send_length=False),
}
#: Codec frame durations of the test media (44.1 kHz): AAC 1024 samples, MPEG-1 Layer III 1152.
FRAME_MS = {"flv_aac": 1024 / 44.1, "flv_mp3": 1152 / 44.1}


def query(start: float) -> str:
    return f"/v?ali_audio_only=1&start={start!r}"


def last_packet_ms(path: pathlib.Path) -> int:
    """Timestamp (ms, the FLV time base) of the source's last audio packet."""
    (stream,) = [s for s in media_toolkit.probe(path) if s.type == "audio"]
    assert stream.time_base == Fraction(1, 1000)
    return stream.packets[-1][1]


def assert_keeps_the_last_packets(source: pathlib.Path | bytes, body: bytes, start: float) -> None:
    """The output's audio packets are the source's last one only: bytes, pts, dts (PyAV).

    The window oracle also runs when PyAV knows the last packet's duration (it takes an unknown one as 0)."""
    (expected,) = media_toolkit.audio_packets(source)
    if expected[-1][3]:
        media_toolkit.assert_audio_window(source, body, start, None, rebased=False)
    (got,) = media_toolkit.audio_packets(body)
    assert [p[:3] for p in got] == [p[:3] for p in expected[-1:]]


# -- 1. a start inside the last frame keeps it ---------------------------------------------------


@pytest.mark.parametrize("kind", sorted(FRAME_MS))
@pytest.mark.parametrize("app", sorted(APPS))
def test_start_inside_the_last_frame_keeps_it(media, kind, app):
    path = media(kind)
    last = last_packet_ms(path)
    client = TestApp(AudioOnlyMiddleware(APPS[app](path, "video/x-flv")))
    for offset_ms in (1.0, FRAME_MS[kind] - 0.5):
        start = (last + offset_ms) / 1000
        response = client.get(query(start))
        assert response.content_type == "video/x-flv"
        assert_keeps_the_last_packets(path, response.body, start)


@pytest.mark.parametrize("kind", sorted(FRAME_MS))
@pytest.mark.parametrize("app", sorted(APPS))
def test_start_at_or_past_the_end_of_the_last_frame_is_416(media, kind, app):
    path = media(kind)
    end_ms = last_packet_ms(path) + FRAME_MS[kind]
    client = TestApp(AudioOnlyMiddleware(APPS[app](path, "video/x-flv")))
    for start_ms in (math.ceil(end_ms), end_ms + 0.5, end_ms + 1000):
        response = client.get(query(start_ms / 1000), status=416)
        assert response.content_type == "text/plain"


def first_audio_tag(data: bytes) -> int:
    """Offset of the first audio tag, from the tags' DataSize."""
    pos = 13
    while data[pos] & 0x1F != unit.AUDIO:
        pos += 15 + int.from_bytes(data[pos + 1:pos + 4], "big")
    return pos


@pytest.mark.parametrize("kind", sorted(FRAME_MS))
@pytest.mark.parametrize("bounded", [False, True])
def test_streamed_plans_keep_the_last_frame_like_indexed_ones(media, kind, bounded):
    """Lazy mode: the probe walking to the end, or stopping at its byte bound just after the first audio
    tag (then the stream walk decides)."""
    data = media(kind).read_bytes()
    limits = Limits(flv_probe_bytes=first_audio_tag(data)) if bounded else Limits()
    if bounded:
        assert limits.flv_probe_bytes < len(data) // 2
    start = (last_packet_ms(media(kind)) + FRAME_MS[kind] / 2) / 1000
    indexed = unit.render(plan_flv(unit.index_source(data), limits, start=start), unit.index_source(data))
    for size in (False, True):
        source = unit.stream_source(data, 4096, size=size)
        plan = plan_flv(source, limits, start=start)
        assert isinstance(plan, LazyPlan)
        assert unit.render(plan, source) == indexed
    assert_keeps_the_last_packets(data, indexed, start)
    past = (last_packet_ms(media(kind)) + FRAME_MS[kind] + 1) / 1000
    with pytest.raises(RangeNotSatisfiable):
        source = unit.stream_source(data, 4096)
        unit.render(plan_flv(source, limits, start=past), source)


def test_the_spacing_of_the_last_two_frames_when_the_codec_does_not_tell(tmp_path):
    """ADPCM (SoundFormat 1): no codec rule, the frame lasts as long as the spacing before it."""
    path = tmp_path / "adpcm.flv"
    make_audio_flv(path, "adpcm_swf", 22050)
    (packets,) = media_toolkit.audio_packets(path)
    last, spacing = packets[-1][1], packets[-1][1] - packets[-2][1]
    assert 100 < spacing < MAX_FRAME_MS
    data = path.read_bytes()
    for app in sorted(APPS):
        client = TestApp(AudioOnlyMiddleware(APPS[app](path, "video/x-flv")))
        start = (last + spacing - 1) / 1000
        assert_keeps_the_last_packets(data, client.get(query(start)).body, start)
        client.get(query((last + spacing) / 1000), status=416)


def make_audio_flv(path: pathlib.Path, codec: str, rate: int, seconds: float = 1.0) -> None:
    """An audio-only FLV written by FFmpeg through PyAV (a sine, mono s16: every packet differs)."""
    with av.open(str(path), "w", format="flv") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        stream.codec_context.open()
        block = stream.codec_context.frame_size or 1024
        for pts in range(0, int(seconds * rate), block):
            frame = av.AudioFrame(format="s16", layout="mono", samples=block)
            wave = array.array("h", (int(8000 * math.sin((pts + n) / 9.0)) for n in range(block)))
            frame.planes[0].update(wave.tobytes().ljust(frame.planes[0].buffer_size, b"\0"))
            frame.sample_rate, frame.pts = rate, pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


# -- the same rule on hand-built files: checked numbers, fallbacks ------------------------------


def frames_file(config: bytes | None, frames: list[tuple[int, bytes]]) -> bytes:
    """An FLV with an optional AAC-style config tag, then audio tags ``(ts, data)`` between video tags."""
    tags = [unit.script("onMetaData", unit.metadata())]
    if config is not None:
        tags.append(unit.tag(unit.AUDIO, 0, config))
    for ts, data in frames:
        tags += [unit.video(ts, 40), unit.tag(unit.AUDIO, ts, data)]
    return unit.flv(*tags)


def kept_stamps(data: bytes, start: float) -> list[int] | None:
    """Audio frame timestamps kept from ``start`` (the same in both modes), None for a 416."""
    try:
        outputs = unit.both(data, start=start)
    except RangeNotSatisfiable:
        source = unit.stream_source(data)
        with pytest.raises(RangeNotSatisfiable):
            unit.render(plan_flv(source, Limits(), start=start), source)
        return None
    return [ts for kind, ts, payload in unit.parse(outputs[0])
            if kind == unit.AUDIO and not is_audio_config(bytes(TAG_HEADER_SIZE) + payload[:5], len(payload))]


def aac_frames(*stamps: int) -> list[tuple[int, bytes]]:
    return [(ts, b"\xaf\x01" + bytes(20)) for ts in stamps]


@pytest.mark.parametrize("config, start, expected", [
    (b"\xaf\x00\x12\x10", 0.222, [200]),  # AAC LC 44.1 kHz: 200 + 23.2 ms
    (b"\xaf\x00\x12\x10", 0.224, None),
    (b"\xaf\x00\x12\x14", 0.220, [200]),  # frameLengthFlag: 960 samples, 21.8 ms
    (b"\xaf\x00\x12\x14", 0.222, None),
    (b"\xaf\x00\x2b\x92\x08", 0.246, [200]),  # HE-AAC (explicit SBR), 22.05 kHz core: 46.4 ms
    (b"\xaf\x00\x2b\x92\x08", 0.247, None),
    # unreadable configs fall back to the spacing (100 ms): reserved index 13, explicit rate, escaped
    # object type (32), null object type, truncated config, an Enhanced-RTMP config
    (b"\xaf\x00\x16\x90", 0.299, [200]),
    (b"\xaf\x00\x17\x80\x00", 0.299, [200]),
    (b"\xaf\x00\xf8\x08\x40", 0.299, [200]),
    (b"\xaf\x00\x02\x10", 0.299, [200]),
    (b"\x90mp4a\x12\x10", 0.299, [200]),
    (b"\xaf\x00", 0.299, [200]),
    (b"\xaf\x00", 0.300, None),
])
def test_aac_last_frame(config, start, expected):
    assert kept_stamps(frames_file(config, aac_frames(0, 100, 200)), start) == expected


def test_aac_config_without_spacing_and_no_config_at_all():
    """One frame only: the codec alone tells; without it, today's 416."""
    assert kept_stamps(frames_file(b"\xaf\x00\x12\x10", aac_frames(200)), 0.22) == [200]
    assert kept_stamps(frames_file(b"\xaf\x00\x16\x90", aac_frames(200)), 0.201) is None
    assert kept_stamps(frames_file(None, aac_frames(200)), 0.201) is None
    assert kept_stamps(frames_file(None, aac_frames(100, 200)), 0.299) == [200]


def test_a_later_config_replaces_the_first_one():
    """A new sequence header (22.05 kHz LC: 46.4 ms) applies to the frames after it."""
    data = unit.flv(unit.tag(unit.AUDIO, 0, b"\xaf\x00\x12\x10"), *[unit.tag(unit.AUDIO, ts, b"\xaf\x01" + bytes(9))
                                                                     for ts in (0, 23)],
                    unit.tag(unit.AUDIO, 46, b"\xaf\x00\x13\x90"), unit.tag(unit.AUDIO, 46, b"\xaf\x01" + bytes(9)))
    assert kept_stamps(data, 0.09) == [46]
    assert kept_stamps(data, 0.093) is None


def test_gaps_and_disorder_are_not_frame_durations():
    """Spacing longer than MAX_FRAME_MS (a gap) or not positive: unknown, 416."""
    assert kept_stamps(frames_file(None, aac_frames(0, 5000)), 5.001) is None
    assert kept_stamps(frames_file(None, aac_frames(300, 200)), 0.301) is None


MP3_128K = b"\xff\xfb\x90\x64"  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no padding: 417 bytes, 1152 samples


def mp3_frames(header: bytes, payload: int, *stamps: int) -> list[tuple[int, bytes]]:
    return [(ts, b"\x2f" + header + bytes(payload - len(header))) for ts in stamps]


@pytest.mark.parametrize("header, payload, start, expected", [
    (MP3_128K, 417, 0.226, [200]),  # 26.1 ms, 100 ms spacing not used
    (MP3_128K, 417, 0.227, None),
    (b"\xff\xf3\x90\x64", 261, 0.226, [200]),  # MPEG-2 Layer III 22.05 kHz 80 kbit/s: 576 samples, 26.1 ms
    (b"\xff\xf3\x90\x64", 261, 0.227, None),
    (b"\xff\xfd\x90\x64", 522, 0.226, [200]),  # MPEG-1 Layer II 160 kbit/s: 1152 samples too
    (b"\xff\xfd\x90\x64", 522, 0.227, None),
    # hostile or unusable headers fall back to the spacing: no sync, reserved version, reserved layer,
    # free format, bad bitrate, reserved rate, two frames in one tag
    (b"\x00\xfb\x90\x64", 417, 0.299, [200]),
    (b"\xff\xeb\x90\x64", 417, 0.299, [200]),
    (b"\xff\xf9\x90\x64", 417, 0.299, [200]),
    (b"\xff\xfb\x00\x64", 417, 0.299, [200]),
    (b"\xff\xfb\xf0\x64", 417, 0.299, [200]),
    (b"\xff\xfb\x9c\x64", 417, 0.299, [200]),
    (MP3_128K, 834, 0.299, [200]),
    (MP3_128K, 834, 0.300, None),
])
def test_mp3_last_frame(header, payload, start, expected):
    assert kept_stamps(frames_file(None, mp3_frames(header, payload, 0, 100, 200)), start) == expected


def test_small_tags_never_read_the_next_bytes_as_their_own():
    """A 2-byte AAC config followed by a PreviousTagSize that reads as an AudioSpecificConfig (LC 44.1 kHz):
    the planner's peek holds those bytes, but they are not the config's; unknown, so 416."""
    data = unit.flv(unit.tag(unit.AUDIO, 0, b"\xaf\x00", prev=0x12100000), *[t for ts, d in aac_frames(200)
                                                                             for t in [unit.tag(unit.AUDIO, ts, d)]])
    assert kept_stamps(data, 0.201) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3000), st.binary(max_size=6)), max_size=8),
       st.floats(0, 4000))
def test_last_frame_never_raises_and_stays_plausible(events, start_ms):
    latest = LastFrame()
    for is_config, ts, head in events:
        if is_config:
            latest.config(head)
        else:
            latest.frame(ts, head, len(head))
    end = latest.end_ms()
    assert end is None or 0 < end - latest.ts <= MAX_FRAME_MS
    assert latest.contains(start_ms) in (True, False)


def test_frame_duration_helpers():
    assert aac_frame_ms(b"\xaf\x00\x12\x10") == pytest.approx(1024 / 44.1)
    assert aac_frame_ms(b"\xaf\x00\xba\x10") == pytest.approx(512 / 44.1)  # AAC-LD
    assert aac_frame_ms(b"\xaf\x00\x16\x10") == pytest.approx(1024 / 7.35)  # the lowest rate, index 12
    assert aac_frame_ms(b"\xaf\x01\x12\x10") is None  # a raw frame, not a config
    assert mp3_frame_ms(MP3_128K, 417) == pytest.approx(1152 / 44.1)
    assert mp3_frame_ms(MP3_128K[:3], 417) is None


# -- 2. empty windows ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, content_type", [("mp4_faststart", "video/mp4"), ("flv_aac", "video/x-flv"),
                                                ("flv_mp3", "video/x-flv")])
@pytest.mark.parametrize("app", ["file", "generator"])
def test_end_zero_is_416_for_every_container(media, kind, content_type, app):
    client = TestApp(AudioOnlyMiddleware(APPS[app](media(kind), content_type)))
    for end in ("0", "0.0", "0.0000000001"):
        response = client.get(f"/v?ali_audio_only=1&end={end}", status=416)
        assert response.content_type == "text/plain"
    client.get("/v?ali_audio_only=1&start=1&end=1", status=400)  # start >= end stays a bad request


@pytest.mark.parametrize("app", ["file", "generator"])
def test_a_window_narrower_than_the_rounding_keeps_the_frame_that_contains_start(media, app):
    """start < end by less than a nanosecond: as for MP4, the frame containing start, not a 400."""
    path = media("flv_aac")
    client = TestApp(AudioOnlyMiddleware(APPS[app](path, "video/x-flv")))
    response = client.get("/v?ali_audio_only=1&start=1.0000000001&end=1.0000000002")
    media_toolkit.assert_audio_window(path, response.body, 1.0, 1.0000000002, rebased=False)
    (got,) = media_toolkit.audio_packets(response.body)
    assert len(got) == 1


def test_plan_flv_empty_windows():
    data = unit.seek_file()
    for start in (None, -1.0):
        with pytest.raises(RangeNotSatisfiable):
            plan_flv(unit.index_source(data), Limits(), start=start, end=0.0)
        source = unit.stream_source(data)
        with pytest.raises(RangeNotSatisfiable):
            unit.render(plan_flv(source, Limits(), start=start, end=0.0), source)
    for start, end in ((2.0, 1.0), (1.0, 1.0), (0.0, 0.0), (None, -1.0)):
        with pytest.raises(InvalidRequest):
            plan_flv(unit.index_source(data), Limits(), start=start, end=end)
    no_audio = unit.flv(unit.script("onMetaData", unit.metadata()), unit.video(0), unit.video(40))
    with pytest.raises(NoAudioTrack):  # a 404 stays a 404
        plan_flv(unit.index_source(no_audio), Limits(), end=0.0)


def test_a_config_between_start_and_the_next_frame_in_the_streamed_part():
    """Past the probe bound, a sequence header after ``start`` met before the first kept frame: the frame
    that contains ``start`` is sent once, after it, as in index mode (the stream walk now tracks configs)."""
    data = unit.flv(unit.aac_config(), *[unit.aac(ts) for ts in (0, 100)], unit.aac_config(200), unit.aac(200))
    limits = Limits(flv_probe_bytes=60)  # the probe stops after the first frame
    indexed = unit.render(plan_flv(unit.index_source(data), limits, start=0.15), unit.index_source(data))
    source = unit.stream_source(data)
    assert unit.render(plan_flv(source, limits, start=0.15), source) == indexed
    assert [ts for kind, ts, _ in unit.parse(indexed) if kind == unit.AUDIO] == [0, 200, 100, 200]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120), st.sampled_from([b"\xaf\x01", b"\x2f\xff\xfb\x90\x64", b"\x1f"]),
                          st.booleans()), min_size=1, max_size=12),
       st.binary(min_size=2, max_size=5), st.integers(0, 400), st.floats(0.001, 1.6))
def test_index_and_stream_agree_near_the_end(steps, config, probe_bytes, start):
    """Whatever the codecs, configs and probe bound, both modes keep the same frames or both answer 416."""
    tags, ts = [unit.tag(unit.AUDIO, 0, b"\xaf\x00" + config[2:])], 0
    for gap, head, sized in steps:
        ts += gap
        tags.append(unit.tag(unit.AUDIO, ts, head + bytes(416 if sized else 3)))
    data = unit.flv(*tags)
    limits = Limits(flv_probe_bytes=probe_bytes)
    try:
        indexed = unit.render(plan_flv(unit.index_source(data), limits, start=start), unit.index_source(data))
    except RangeNotSatisfiable:
        indexed = None
    source = unit.stream_source(data)
    try:
        streamed = unit.render(plan_flv(source, limits, start=start), source)
    except RangeNotSatisfiable:
        streamed = None
    assert streamed == indexed


@pytest.mark.parametrize("start", [0.03, 0.001])
def test_a_wrong_previous_tag_size_after_the_config_is_copied_in_both_modes(start):
    """With a window, the lazy probe kept the sequence header with a PreviousTagSize of its own, while
    index mode copied the source's: two byte sequences under one ETag when the source's is wrong."""
    data = unit.flv(unit.script("onMetaData", unit.metadata()), unit.tag(unit.AUDIO, 0, unit.AAC_CONFIG, prev=999),
                    *(unit.aac(ts) for ts in (0, 23, 46, 70)))
    index_out, _ = unit.both(data, start=start)
    assert (999).to_bytes(4, "big") in index_out
