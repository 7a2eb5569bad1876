"""FLV planner tests: hand-built FLV bytes, then real files checked with PyAV.

A tiny builder makes tags byte by byte; every output is parsed again and its
PreviousTagSize chain checked, in both modes (index: complete Plan over a
random-access source; lazy: LazyPlan over a forward-only source that discards
what lies behind each read, so a planner reading ahead of a yielded span fails).
"""

from __future__ import annotations

import array
import glob
import io
import math
import os
import struct
from itertools import chain

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_middleware.errors import (
    AudioExtractionError,
    InvalidRequest,
    LimitExceeded,
    MalformedMedia,
    NoAudioTrack,
    RangeNotSatisfiable,
    SourceTruncated,
    UnsupportedMedia,
)
from audio_middleware.flv import CONTENT_TYPE, amf, plan_flv
from audio_middleware.flv.planner import INDEX_WINDOW
from audio_middleware.limits import Limits
from audio_middleware.plan import LazyPlan, Literal, Plan, Span, Spans
from audio_middleware.sources import FileSource, SequentialSource, read_exact

from .apps import RecordingSource

MEDIA = "/work/shared/media"

# -- builder -------------------------------------------------------------------------------------

AUDIO, VIDEO, SCRIPT = 8, 9, 18
AAC_CONFIG = b"\xaf\x00\x12\x10"


def tag(kind: int, ts: int, data: bytes, *, prev: int | None = None, flags: int = 0, stream_id: int = 0) -> bytes:
    """One tag with its trailing PreviousTagSize (correct unless ``prev`` is given)."""
    head = bytes([kind | flags]) + len(data).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
    head += bytes([(ts >> 24) & 0xFF]) + stream_id.to_bytes(3, "big")
    return head + data + struct.pack(">I", 11 + len(data) if prev is None else prev)


def aac(ts: int, size: int = 20, **kw) -> bytes:
    return tag(AUDIO, ts, b"\xaf\x01" + bytes([ts & 0xFF]) * size, **kw)


def aac_config(ts: int = 0) -> bytes:
    return tag(AUDIO, ts, AAC_CONFIG)


def video(ts: int, size: int = 300) -> bytes:
    return tag(VIDEO, ts, b"\x17\x01" + b"\xee" * size)


def script(name: str, value: object, ts: int = 0) -> bytes:
    return tag(SCRIPT, ts, amf.encode_value(name) + amf.encode_value(value))


def flv(*tags: bytes, flags: int = 0x05, version: int = 1, data_offset: int = 9) -> bytes:
    extra = b"\x00" * max(0, data_offset - 9)
    return b"FLV" + bytes([version, flags]) + struct.pack(">I", data_offset) + extra + b"\0\0\0\0" + b"".join(tags)


def metadata(**extra) -> amf.EcmaArray:
    value = amf.EcmaArray(duration=10.0, width=640.0, height=360.0, videocodecid=7.0, audiocodecid=10.0,
                          framerate=25.0, hasVideo=True, hasAudio=True, filesize=123456.0, datasize=1000.0,
                          keyframes={"times": [0.0, 1.0], "filepositions": [13.0, 400.0]},
                          hasKeyframes=True, canSeekToEnd=True, videoEncoderName="x", audiosamplerate=44100.0)
    value.update(extra)
    return value


def simple_file() -> bytes:
    return flv(script("onMetaData", metadata()), video(0), aac_config(), aac(0), aac(23), video(40), aac(46))


# -- sources and rendering -----------------------------------------------------------------------


def index_source(data: bytes) -> FileSource:
    return FileSource(io.BytesIO(data))


def stream_source(data: bytes, chunk: int = 7, size: bool = False) -> SequentialSource:
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return SequentialSource(chunks, len(data) if size else None, retain=False)


def flat(pieces) -> tuple:
    """Pieces with every multi-span piece (``Spans``) expanded into its ``Span``s."""
    return tuple(chain.from_iterable(piece if isinstance(piece, Spans) else (piece,) for piece in pieces))


def render(plan: Plan | LazyPlan, source) -> bytes:
    """Output bytes: each span is read before the next piece is asked for (as the emitter does)."""
    out = bytearray()
    for piece in flat(plan.pieces) if isinstance(plan, Plan) else plan.pieces:
        out += piece.data if isinstance(piece, Literal) else read_exact(source, piece.offset, piece.length)
    return bytes(out)


def both(data: bytes, **kw) -> tuple[bytes, bytes]:
    """(index output, lazy output) for the same file: always the same bytes (one ETag, one rendition)."""
    indexed = plan_flv(index_source(data), Limits(), **kw)
    assert isinstance(indexed, Plan)
    index_out = render(indexed, index_source(data))
    assert len(index_out) == indexed.length
    lazy_source = stream_source(data)
    lazy = plan_flv(lazy_source, Limits(), **kw)
    assert isinstance(lazy, LazyPlan)
    lazy_out = render(lazy, lazy_source)
    assert index_out == lazy_out
    return index_out, lazy_out


def parse(out: bytes) -> list[tuple[int, int, bytes]]:
    """Check header and PreviousTagSize chain; return (type, timestamp, data) per tag."""
    assert out[:3] == b"FLV" and out[3] == 1 and out[4] == 0x04
    assert struct.unpack(">I", out[5:9])[0] == 9 and out[9:13] == b"\0\0\0\0"
    pos, tags = 13, []
    while pos < len(out):
        size = int.from_bytes(out[pos + 1:pos + 4], "big")
        ts = int.from_bytes(out[pos + 4:pos + 7], "big") | (out[pos + 7] << 24)
        data = out[pos + 11:pos + 11 + size]
        assert len(data) == size
        assert struct.unpack(">I", out[pos + 11 + size:pos + 15 + size])[0] == 11 + size
        tags.append((out[pos] & 0x1F, ts, data))
        pos += 15 + size
    assert pos == len(out)
    return tags


def meta_of(out: bytes) -> dict:
    scripts = [data for kind, _, data in parse(out) if kind == SCRIPT]
    values = amf.decode_all(scripts[0], 32)
    assert values[0] == "onMetaData"
    return values[1]


# -- header and layout ---------------------------------------------------------------------------


def test_header_flags_and_layout():
    data = simple_file()
    index_out, lazy_out = both(data)
    for out in (index_out, lazy_out):
        tags = parse(out)
        assert [kind for kind, _, _ in tags] == [SCRIPT, AUDIO, AUDIO, AUDIO, AUDIO]
        assert [ts for _, ts, _ in tags] == [0, 0, 0, 23, 46]
    assert index_out[:9] == b"FLV\x01\x04\x00\x00\x00\x09"


def test_spans_cover_tag_and_following_previous_tag_size_and_coalesce():
    first = aac_config() + aac(0) + aac(23)
    data = flv(video(0), first, video(40), aac(46))
    plan = plan_flv(index_source(data), Limits())
    assert plan.content_type == CONTENT_TYPE == "video/x-flv"
    audio_start = 13 + len(video(0))
    last = len(data) - len(aac(46))
    assert flat(plan.pieces) == (Literal(flv(flags=0x04)), Span(audio_start, len(first)), Span(last, len(aac(46))))


def test_no_script_tag_means_none_in_output():
    data = flv(video(0), aac(0), aac(23))
    for out in both(data):
        assert [kind for kind, _, _ in parse(out)] == [AUDIO, AUDIO]


def test_unknown_tags_dropped_bad_previous_tag_size_tolerated_reserved_bits_ignored():
    data = flv(tag(7, 0, b"junk"), video(0), aac(0, prev=99999), tag(AUDIO, 5, b"\x2f\x01ab", flags=0xC0),
               aac(10))
    index_out, lazy_out = both(data)
    assert index_out == lazy_out
    # the audio tag with the bad PreviousTagSize is copied as is: its chain entry is the source's
    assert index_out.count(struct.pack(">I", 99999)) == 1


def test_data_offset_larger_than_nine_is_skipped():
    data = flv(video(0), aac(0), data_offset=20)
    for out in both(data):
        assert len(parse(out)) == 1


def test_extended_timestamp():
    ts = (1 << 24) + 5
    for out in both(flv(aac(ts))):
        assert parse(out)[0][1] == ts


@pytest.mark.parametrize("data, error", [
    (b"FLX\x01\x05\x00\x00\x00\x09", MalformedMedia),
    (b"FLV\x02\x05\x00\x00\x00\x09", UnsupportedMedia),
    (b"FLV\x01\x05\x00\x00\x00\x08", MalformedMedia),
    (b"FLV\x01\x05\x7f\x00\x00\x00", MalformedMedia),
    (b"FLV\x01", MalformedMedia),
    (b"", MalformedMedia),
])
def test_bad_headers(data, error):
    with pytest.raises(error):
        plan_flv(index_source(data), Limits())
    plan = plan_flv(stream_source(data), Limits())
    with pytest.raises(error):
        next(plan.pieces)


def test_encrypted_audio_is_unsupported():
    data = flv(aac(0, flags=0x20))
    with pytest.raises(UnsupportedMedia):
        plan_flv(index_source(data), Limits())
    with pytest.raises(UnsupportedMedia):
        next(plan_flv(stream_source(data), Limits()).pieces)


def test_encrypted_video_is_just_dropped():
    data = flv(tag(VIDEO, 0, b"\x17secret", flags=0x20), aac(0))
    for out in both(data):
        assert [kind for kind, _, _ in parse(out)] == [AUDIO]


# -- metadata ------------------------------------------------------------------------------------


def odd_values() -> dict:
    """Every AMF0 type the decoder knows, nested."""
    return {
        "custom": "value", "flag": False, "nothing": None, "undef": amf.UNDEFINED, "ref": amf.Reference(1),
        "when": amf.Date(1.2e12, -60), "long": amf.LongString("L" * 70000), "xml": amf.XmlDocument("<a/>"),
        "typed": amf.TypedObject("Cls", {"x": 1.0}), "unsupported": amf.UNSUPPORTED,
        "cuePoints": [{"name": "c1", "time": 1.5, "parameters": amf.EcmaArray(a="b")}, 2.0, "s"],
        "nested": {"deeper": amf.EcmaArray(k=[1.0, [2.0, {"z": True}]])},
        "bad utf8 \udcff": "\udcfe",
    }


def test_metadata_rewrite():
    data = flv(script("onMetaData", metadata(**odd_values())), video(0), aac_config(), aac(0))
    index_out, lazy_out = both(data)
    for out in (index_out, lazy_out):
        meta = meta_of(out)
        assert isinstance(meta, amf.EcmaArray)
        assert meta["hasVideo"] is False and meta["hasAudio"] is True
        assert meta["duration"] == 10.0 and meta["audiocodecid"] == 10.0 and meta["audiosamplerate"] == 44100.0
        for key in ("width", "height", "videocodecid", "framerate", "keyframes", "hasKeyframes", "canSeekToEnd",
                    "videoEncoderName", "datasize"):
            assert key not in meta
        assert "filesize" not in meta
        for key, value in odd_values().items():
            assert meta[key] == value, key


def test_metadata_object_value_and_trailing_bytes_kept():
    body = amf.encode_value("onMetaData") + amf.encode_value({"duration": 2.0, "width": 3.0}) + b"\x05tail"
    data = flv(tag(SCRIPT, 0, body), aac(0))
    for out in both(data):
        scripts = [d for kind, _, d in parse(out) if kind == SCRIPT]
        assert scripts[0].endswith(b"\x05tail")
        meta = amf.decode_value(scripts[0], 32, 13)[0]
        assert type(meta) is dict and "width" not in meta and meta["duration"] == 2.0


def test_metadata_strict_array_kept():
    data = flv(script("onMetaData", [1.0, "x"]), aac(0))
    for out in both(data):
        assert amf.decode_all(parse(out)[0][2], 32) == ["onMetaData", [1.0, "x"]]


def test_other_script_tags_are_dropped():
    """Cue points and captions describe the video (demuxers make them a data stream)."""
    cue = script("onCuePoint", {"name": "cue", "time": 0.04}, ts=40)
    data = flv(script("onMetaData", metadata()), aac(0), video(0), cue, aac(46))
    index_out, lazy_out = both(data)
    plan = plan_flv(index_source(data), Limits())
    assert Span(data.index(aac(46)), len(aac(46))) in flat(plan.pieces)
    for out in (index_out, lazy_out):
        assert cue not in out
        assert [kind for kind, _, _ in parse(out)].count(SCRIPT) == 1


def test_filesize_in_any_spelling_is_removed_and_the_other_keys_keep_their_order():
    value = metadata()
    value["fileSize"] = 0.0  # OBS's spelling, beside the usual one
    value["after"] = "x"
    for out in both(flv(script("onMetaData", value), aac(0))):
        keys = list(meta_of(out))
        assert not any(key.lower() == "filesize" for key in keys)
        assert keys == [key for key in value if key in keys] and keys[-1] == "after"  # the source's order


def test_info():
    plan = plan_flv(index_source(simple_file()), Limits())
    assert plan.info == {"container": "flv", "audio_codec": "aac", "duration": 10.0,
                         "tracks": [{"type": "audio", "codec": "aac"}]}
    source = stream_source(simple_file())
    lazy = plan_flv(source, Limits())
    render(lazy, source)
    assert lazy.info == plan.info
    mp3 = flv(tag(AUDIO, 0, b"\x2f" + b"m" * 30), tag(AUDIO, 1500, b"\x2f" + b"m" * 30))
    assert plan_flv(index_source(mp3), Limits()).info["duration"] == 1.5
    assert plan_flv(index_source(mp3), Limits()).info["audio_codec"] == "mp3"


def test_enhanced_audio_fourcc():
    opus_start = tag(AUDIO, 0, b"\x90Opus" + b"head")
    opus_frame = tag(AUDIO, 20, b"\x91Opus" + b"data")
    data = flv(opus_start, video(0), opus_frame, aac(40))
    plan = plan_flv(index_source(data), Limits(), start=0.03)
    assert plan.info["audio_codec"] == "opus"
    out = render(plan, index_source(data))
    # SequenceStart kept, then the frame that contains start (20 ms), then the rest
    assert [ts for _, ts, _ in parse(out)] == [0, 20, 40]


# -- AMF hardening -------------------------------------------------------------------------------


def test_amf_round_trip_bytes():
    encoded = amf.encode_all(["onMetaData", metadata(**odd_values())])
    assert amf.encode_all(amf.decode_all(encoded, 32)) == encoded


def test_amf_missing_object_end_at_end_of_data_is_tolerated():
    body = amf.encode_value("onMetaData") + b"\x08\x00\x00\x00\x01" + b"\x00\x01a\x00" + struct.pack(">d", 1.0)
    assert amf.decode_all(body, 32) == ["onMetaData", {"a": 1.0}]


@pytest.mark.parametrize("payload, error", [
    (b"\x0a\x00\x00\x00\x01" * 40 + b"\x05", LimitExceeded),           # depth bomb (strict arrays)
    (b"\x03\x00\x01a" * 40 + b"\x05", LimitExceeded),                   # depth bomb (objects)
    (b"\x02\xff\xffabc", MalformedMedia),                               # string longer than the tag
    (b"\x0c\xff\xff\xff\xffabc", MalformedMedia),                       # long string longer than the tag
    (b"\x0a\xff\xff\xff\xff\x05", MalformedMedia),                      # strict array count bomb
    (b"\x08\xff\xff\xff\xff\x00\x01a\x02\x00\x10x", MalformedMedia),    # ECMA entry runs past the end
    (b"\x04", MalformedMedia),                                          # movieclip (reserved)
    (b"\x11\x01", MalformedMedia),                                      # AMF3 switch
    (b"\x09", MalformedMedia),                                          # object end out of place
    (b"\x00\x01\x02", MalformedMedia),                                  # short number
])
def test_amf_hostile_metadata(payload, error):
    data = flv(tag(SCRIPT, 0, amf.encode_value("onMetaData") + payload), aac(0))
    with pytest.raises(error):
        plan_flv(index_source(data), Limits())
    with pytest.raises(error):
        next(plan_flv(stream_source(data), Limits()).pieces)


def test_amf_depth_beyond_the_interpreter_is_still_a_limit():
    payload = b"\x0a\x00\x00\x00\x01" * 5000 + b"\x05"
    with pytest.raises(LimitExceeded):
        amf.decode_value(payload, 100_000)


def test_script_bigger_than_limit():
    data = flv(script("onMetaData", metadata(pad="p" * 5000)), aac(0))
    limits = Limits(max_script_size=1000)
    with pytest.raises(LimitExceeded):
        plan_flv(index_source(data), limits)
    with pytest.raises(LimitExceeded):
        next(plan_flv(stream_source(data), limits).pieces)


# -- truncation and missing audio ----------------------------------------------------------------


def test_truncated_audio_tag():
    data = flv(script("onMetaData", metadata()), video(0), aac(0), aac(23))[:-10]
    with pytest.raises(MalformedMedia, match="truncated"):
        plan_flv(index_source(data), Limits())
    # lazy, size unknown: the span read fails (the emitter aborts the response)
    source = stream_source(data)
    with pytest.raises(SourceTruncated):
        render(plan_flv(source, Limits()), source)
    # lazy, size known: the planner itself raises before yielding the span
    source = stream_source(data, size=True)
    pieces = plan_flv(source, Limits()).pieces
    first = next(pieces)
    assert isinstance(first, Literal)
    with pytest.raises(SourceTruncated):
        for piece in pieces:
            if isinstance(piece, Span):
                read_exact(source, piece.offset, piece.length)
                assert piece.end <= len(data)


def test_truncated_video_tag_at_the_end_keeps_complete_audio():
    data = flv(aac(0), aac(23), video(40))[:-50]
    for out in both(data):
        assert len(parse(out)) == 2


def test_missing_final_previous_tag_size_is_generated():
    data = flv(video(0), aac(0), aac(23))[:-4]
    index_out = render(plan_flv(index_source(data), Limits()), index_source(data))
    assert len(parse(index_out)) == 2
    source = stream_source(data, size=True)
    assert render(plan_flv(source, Limits()), source) == index_out
    # a stream of unknown size cannot tell: the last span runs 4 bytes past the end
    source = stream_source(data)
    with pytest.raises(SourceTruncated):
        render(plan_flv(source, Limits()), source)


def test_trailing_garbage_shorter_than_a_header_ignored():
    for out in both(flv(aac(0)) + b"\x01\x02\x03"):
        assert len(parse(out)) == 1


def test_no_audio():
    data = flv(script("onMetaData", metadata()), video(0), video(40), flags=0x01)
    with pytest.raises(NoAudioTrack):
        plan_flv(index_source(data), Limits())
    with pytest.raises(NoAudioTrack):
        next(plan_flv(stream_source(data), Limits()).pieces)


def test_lazy_probe_is_bounded():
    data = flv(*(video(ts, 1000) for ts in range(0, 400, 40)), aac(400))
    with pytest.raises(NoAudioTrack, match="first 5000 bytes"):
        next(plan_flv(stream_source(data), Limits(flv_probe_bytes=5000)).pieces)
    source = stream_source(data)
    assert len(parse(render(plan_flv(source, Limits(flv_probe_bytes=20000)), source))) == 1


def test_index_reads_only_tag_headers():
    data = flv(script("onMetaData", metadata()), *(video(ts, 50_000) + aac(ts) for ts in range(0, 2000, 40)))
    source = RecordingSource(data)  # to prove the index walk never reads a video payload
    plan_flv(source, Limits())
    script_size = len(script("onMetaData", metadata()))
    assert max(length for _, length in source.reads) <= max(script_size, INDEX_WINDOW)
    # one windowed read per tag that follows a video tag (50), plus the file and script headers
    assert len(source.reads) <= 50 + 5
    assert sum(length for _, length in source.reads) < 60 * INDEX_WINDOW < len(data) / 10


def test_index_reads_a_run_of_audio_tags_at_once():
    data = flv(script("onMetaData", metadata()), *(aac(ts) for ts in range(0, 20_000, 23)))
    source = RecordingSource(data)
    plan = plan_flv(source, Limits())
    tags = len(range(0, 20_000, 23))
    assert len(source.reads) < tags / 5  # not one read per tag
    assert render(plan, source) == both(data)[0]


def test_lazy_holds_nothing_but_literals_before_first_audio_and_reads_forward_only():
    data = simple_file()
    source = stream_source(data, chunk=3)
    plan = plan_flv(source, Limits())
    assert "audio_codec" not in plan.info  # filled when the first piece is taken
    first = next(plan.pieces)
    assert isinstance(first, Literal) and plan.info["audio_codec"] == "aac"
    # the forward-only source raises if the planner read past a span before it was consumed
    out = first.data + render(LazyPlan(plan.pieces, plan.content_type), source)
    assert out == both(data)[1]


# -- seeking -------------------------------------------------------------------------------------


def seek_file() -> bytes:
    body = [script("onMetaData", metadata()), aac_config()]
    for ts in range(0, 5000, 100):
        body += [video(ts, 50), aac(ts)]
    body.append(script("onCuePoint", {"name": "late"}, ts=4550))
    return flv(*body)


def test_seek_keeps_sequence_header_and_window():
    for out in both(seek_file(), start=1.0, end=2.0):
        tags = parse(out)
        assert tags[1] == (AUDIO, 0, AAC_CONFIG)
        assert [ts for kind, ts, _ in tags[2:]] == list(range(1000, 2000, 100))
        assert meta_of(out)["duration"] == 1.0


def test_seek_start_only_and_duration_bounded_by_media():
    index_out, lazy_out = both(seek_file(), start=4.5)
    for out in (index_out, lazy_out):
        tags = parse(out)
        assert [ts for kind, ts, _ in tags if kind == AUDIO] == [0, 4500, 4600, 4700, 4800, 4900]
        assert [kind for kind, _, _ in tags].count(SCRIPT) == 1  # the cue point is dropped
        assert meta_of(out)["duration"] == 5.5  # metadata says 10 s


def test_seek_end_beyond_media_and_zero_start():
    index_out, lazy_out = both(seek_file(), start=0, end=100)
    assert meta_of(index_out)["duration"] == 10.0
    assert len([1 for kind, _, _ in parse(lazy_out) if kind == AUDIO]) == 51


def audio_stamps(out: bytes) -> list[int]:
    """Timestamps of the audio frames of an output (decoder configuration tags left out)."""
    return [ts for kind, ts, payload in parse(out) if kind == AUDIO and payload != AAC_CONFIG]


def test_a_window_inside_one_frame_keeps_that_frame():
    """The frame that contains ``start`` is kept even when the next one starts at or after ``end``."""
    for out in both(seek_file(), start=0.01, end=0.05):
        assert audio_stamps(out) == [0]
    for out in both(seek_file(), start=1.52, end=1.53):
        assert audio_stamps(out) == [1500]


@pytest.mark.parametrize("start, end, expected", [
    (1.019, None, [1019, 1045, 1985, 2011, 2038, 2064]),
    (None, 2.011, [0, 993, 1019, 1045, 1985]),
    (2.011, 2.038, [2011]),
    (1.02, 1.045, [1019]),
])
def test_window_bounds_are_exact_milliseconds(start, end, expected):
    """2.011 s is 2011.0000000000002 ms in binary floating point: no frame may move across a bound for that."""
    stamps = [0, 993, 1019, 1045, 1985, 2011, 2038, 2064]
    data = flv(script("onMetaData", metadata()), aac_config(), *[aac(ts) for ts in stamps])
    for out in both(data, start=start, end=end):
        assert audio_stamps(out) == expected


def test_a_stream_whose_probe_stops_inside_the_window_keeps_the_frame_that_contains_start():
    """The look-ahead may stop (flv_probe_bytes) after the frame that contains ``start``: streaming goes on
    with it remembered, so the streamed rendition equals the file-backed one."""
    data = seek_file()
    limits = Limits(flv_probe_bytes=data.index(aac(1500)) - 13 + 10)  # the bound falls after the 1500 ms frame
    indexed = plan_flv(index_source(data), limits, start=1.55)
    lazy_source = stream_source(data)
    lazy = render(plan_flv(lazy_source, limits, start=1.55), lazy_source)
    assert lazy == render(indexed, index_source(data)) and audio_stamps(lazy)[:2] == [1500, 1600]


@pytest.mark.parametrize("start, end, error", [(6.0, None, RangeNotSatisfiable),
                                               (3.0, 3.0, InvalidRequest), (5.0, 4.0, InvalidRequest)])
def test_seek_without_audio_in_window(start, end, error):
    data = seek_file()
    with pytest.raises(error):
        plan_flv(index_source(data), Limits(), start=start, end=end)
    with pytest.raises(error):
        render(plan_flv(stream_source(data), Limits(), start=start, end=end), stream_source(data))


def test_seek_lazy_start_beyond_probe_raises_after_first_piece():
    data = seek_file()
    source = stream_source(data)
    plan = plan_flv(source, Limits(flv_probe_bytes=1000), start=6.0)
    assert isinstance(next(plan.pieces), Literal)
    with pytest.raises(RangeNotSatisfiable):
        render(LazyPlan(plan.pieces, plan.content_type), source)


def test_seek_rejects_nan():
    with pytest.raises(ValueError):
        plan_flv(index_source(seek_file()), Limits(), start=math.nan)


# -- never hang, never escape the error hierarchy ------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_fuzz_tags_after_a_valid_header(body, lazy):
    data = flv(aac(0)) + body
    try:
        if lazy:
            source = stream_source(data, chunk=5)
            render(plan_flv(source, Limits(max_amf_depth=8)), source)
        else:
            plan = plan_flv(index_source(data), Limits(max_amf_depth=8))
            render(plan, index_source(data))
    except AudioExtractionError:
        pass


tag_strategy = st.tuples(st.sampled_from([AUDIO, VIDEO, SCRIPT, 0, 31]), st.integers(0, 2**32 - 1),
                         st.binary(max_size=40))


@settings(max_examples=300, deadline=None)
@given(st.lists(tag_strategy, max_size=30))
def test_fuzz_well_formed_tag_sequences(tags):
    """Any sequence of well-formed tags: both modes agree and keep exactly the audio tags."""
    built = []
    for kind, ts, payload in tags:
        if kind == SCRIPT:
            payload = amf.encode_value("onCuePoint") + amf.encode_value(payload.hex())
        built.append(tag(kind, ts, payload))
    data = flv(*built)
    expected = [(kind, ts, payload) for kind, ts, payload in tags if kind == AUDIO]
    if not expected:
        with pytest.raises(NoAudioTrack):
            plan_flv(index_source(data), Limits())
        return
    index_out, lazy_out = both(data)
    assert index_out == lazy_out
    assert [t for t in parse(index_out) if t[0] == AUDIO] == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_metadata_body(body):
    data = flv(tag(SCRIPT, 0, amf.encode_value("onMetaData") + body), aac(0))
    try:
        out = render(plan_flv(index_source(data), Limits(max_amf_depth=8)), index_source(data))
    except AudioExtractionError:
        return
    parse(out)


# -- real files, checked with PyAV ---------------------------------------------------------------

av = pytest.importorskip("av")


def audio_packets(data: bytes) -> tuple[list[tuple], list[str]]:
    with av.open(io.BytesIO(data), format="flv") as container:
        kinds = [stream.type for stream in container.streams]
        packets = [(bytes(p), p.pts, p.dts, p.duration) for p in container.demux() if p.stream.type == "audio"
                   and p.size]
    return packets, kinds


REAL = sorted(glob.glob(os.path.join(MEDIA, "*.flv")))


@pytest.mark.skipif(not REAL, reason="no media folder")
@pytest.mark.parametrize("path", REAL, ids=os.path.basename)
def test_real_files(path):
    with open(path, "rb") as handle:
        data = handle.read()
    name = os.path.basename(path)
    if "video_only" in name:
        with pytest.raises(NoAudioTrack):
            plan_flv(index_source(data), Limits())
        with pytest.raises(NoAudioTrack):
            next(plan_flv(stream_source(data, 4096), Limits()).pieces)
        return
    if "truncated" in name:
        with pytest.raises(MalformedMedia):
            plan_flv(index_source(data), Limits())
        source = stream_source(data, 4096)
        with pytest.raises(SourceTruncated):
            render(plan_flv(source, Limits()), source)
        return
    index_out, lazy_out = both(data)
    check_against_pyav(data, index_out)
    check_against_pyav(data, lazy_out)
    if data[13] == SCRIPT:
        check_metadata(data, index_out)


def check_metadata(source: bytes, out: bytes) -> None:
    """Every non-video key of the source's onMetaData comes out equal (dates, nested arrays...)."""
    size = int.from_bytes(source[14:17], "big")
    before = amf.decode_all(source[24:24 + size], 32)[1]
    after = meta_of(out)
    assert after["hasVideo"] is False
    assert not any(key.lower().startswith("video") or key in ("width", "height", "keyframes") for key in after)
    assert not any(key.lower() == "filesize" for key in after)
    for key, value in before.items():
        if key in after and key.lower() not in ("filesize", "hasvideo"):
            assert after[key] == value, key
    kept = {"duration", "audiocodecid", "audiosamplerate", "stereo", "cuePoints", "metadatadate", "encoder", "4.1"}
    assert {key for key in before if key in kept} <= set(after)


def check_against_pyav(source: bytes, out: bytes) -> None:
    parse(out)
    expected, _ = audio_packets(source)
    got, kinds = audio_packets(out)
    assert "video" not in kinds and "audio" in kinds
    assert got == expected and got


@pytest.mark.parametrize("vcodec, acodec", [("libx264", "aac"), ("flv", "libmp3lame")])
def test_pyav_made_files(tmp_path, vcodec, acodec):
    path = str(tmp_path / "made.flv")
    make_flv(path, vcodec, acodec)
    with open(path, "rb") as handle:
        data = handle.read()
    index_out, lazy_out = both(data)
    check_against_pyav(data, index_out)
    check_against_pyav(data, lazy_out)
    # seeking with PyAV-written files: config kept, window respected
    clipped = both(data, start=0.5, end=1.0)[0]
    stamps = [ts for kind, ts, _ in parse(clipped) if kind == AUDIO][1 if acodec == "aac" else 0:]
    assert stamps and stamps[0] <= 500 < stamps[1]  # the frame that contains start comes first
    assert all(500 < ts < 1000 for ts in stamps[1:])


def make_flv(path: str, vcodec: str, acodec: str, seconds: float = 1.5) -> None:
    """A small video + audio FLV written by FFmpeg (through PyAV), frames built without numpy."""
    with av.open(path, "w", format="flv") as container:
        vstream = container.add_stream(vcodec, rate=25)
        vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        astream = container.add_stream(acodec, rate=44100)
        astream.layout = "mono"
        for i in range(int(seconds * 25)):
            frame = av.VideoFrame(64, 48, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([i * 7 % 256]) * plane.buffer_size)
            frame.pts = i
            container.mux(vstream.encode(frame))
        fmt = astream.codec_context.format.name
        block = astream.codec_context.frame_size or 1152
        for pts in range(0, int(seconds * 44100) - block, block):
            wave = [math.sin((pts + n) / 20.0) * 0.3 for n in range(block)]
            code = {"flt": "f", "dbl": "d", "s16": "h", "s32": "i"}[fmt.rstrip("p")]
            scale = {"h": 32767, "i": 2**31 - 1}.get(code)
            raw = array.array(code, (int(x * scale) for x in wave) if scale else wave).tobytes()
            frame = av.AudioFrame(format=fmt, layout="mono", samples=block)
            frame.planes[0].update(raw)
            frame.sample_rate, frame.pts = 44100, pts
            container.mux(astream.encode(frame))
        container.mux(vstream.encode())
        container.mux(astream.encode())
