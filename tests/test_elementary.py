"""Raw AAC (ADTS) and MP3 output: hand-built configs and tags, then real files checked with PyAV.

The oracle for copies: the output's frames, demuxed by FFmpeg (``aac`` / ``mp3``
demuxers, ADTS headers stripped), must be the source's audio packets byte for
byte; for AAC the whole file must equal what FFmpeg's own ADTS muxer writes.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio_middleware import elementary
from audio_middleware.elementary import (
    AudioStream,
    NeedsTranscode,
    TranscodeUnavailable,
    describe,
    mpeg_audio_frame,
    open_audio,
    parse_audio_specific_config,
    parse_esds,
    plan_elementary,
    write_audio,
)
from audio_middleware.emit import iter_plan_bytes
from audio_middleware.errors import (
    AudioExtractionError,
    LimitExceeded,
    MalformedMedia,
    NoAudioTrack,
    SourceTruncated,
    UnsupportedMedia,
)
from audio_middleware.limits import Limits
from audio_middleware.mp4.boxes import build_box, parse_header
from audio_middleware.sniff import Container
from audio_middleware.sources import FileSource

try:  # works whether or not tests/ is a package
    from tests import media
except ImportError:  # pragma: no cover
    import media

CORPUS = "/work/shared/media"


def frames_of(data: bytes, fmt: str) -> list[bytes]:
    """Frame payloads of a raw ADTS/MP3 file as FFmpeg demuxes them (ADTS headers removed)."""
    packets = media.audio_packets(data, "aac" if fmt == "aac" else "mp3")[0]
    return [bytes(p[0])[7:] if fmt == "aac" else bytes(p[0]) for p in packets]


def source_frames(path, audio_index: int = 0) -> list[bytes]:
    return [bytes(p[0]) for p in media.audio_packets(path)[audio_index]]


def extract(path, fmt: str, **kw) -> tuple[bytes, dict]:
    out = io.BytesIO()
    summary = write_audio(str(path), out, fmt, **kw)
    return out.getvalue(), summary


# -- AudioSpecificConfig and ADTS ---------------------------------------------------------------


class Bits:
    """Tiny MSB-first bit writer for hand-made configs."""

    def __init__(self) -> None:
        self.bits = ""

    def put(self, value: int, width: int) -> Bits:
        self.bits += format(value, f"0{width}b")
        return self

    def bytes(self) -> bytes:
        padded = self.bits + "0" * (-len(self.bits) % 8)
        return int(padded, 2).to_bytes(len(padded) // 8, "big") if padded else b""


def test_lc_config():
    config = parse_audio_specific_config(b"\x12\x10")
    assert (config.object_type, config.core_type, config.sampling_index, config.sample_rate, config.channels,
            config.frame_length) == (2, 2, 4, 44100, 2, 1024)
    assert config.adts_problem() is None


def test_he_aac_explicit_signalling_uses_the_core_type_and_rate():
    raw = Bits().put(5, 5).put(7, 4).put(2, 4).put(4, 4).put(2, 5).put(0, 1).bytes()
    config = parse_audio_specific_config(raw)
    assert (config.object_type, config.core_type, config.sample_rate) == (5, 2, 22050)
    assert config.adts_header(100)[2] >> 6 == 1  # profile = core type - 1 (LC)


def _sbr_ps_trailer(ps: bool) -> Bits:
    """Plain mono AAC LC at 24 kHz, then backward-compatible SBR (to 48 kHz) and optionally PS signalling
    (ISO/IEC 14496-3 1.6.5: syncExtensionType 0x2B7, object type 5, sbrPresentFlag, extension rate index;
    syncExtensionType 0x548, psPresentFlag)."""
    bits = Bits().put(2, 5).put(6, 4).put(1, 4).put(0, 3).put(0x2B7, 11).put(5, 5).put(1, 1).put(3, 4)
    return bits.put(0x548, 11).put(1, 1) if ps else bits


@pytest.mark.parametrize("raw, decoded", [
    (Bits().put(29, 5).put(6, 4).put(1, 4).put(3, 4).put(2, 5).put(0, 3).bytes(), (48000, 2)),  # explicit PS
    (_sbr_ps_trailer(ps=True).bytes(), (48000, 2)),   # backward compatible SBR + PS
    (_sbr_ps_trailer(ps=False).bytes(), (48000, 1)),  # backward compatible SBR only: still mono
], ids=["explicit_ps", "implicit_sbr_ps", "implicit_sbr"])
def test_he_aac_v2_decodes_to_stereo_while_adts_keeps_the_mono_core(raw, decoded):
    config = parse_audio_specific_config(raw)
    assert (config.decoded_rate, config.decoded_channels) == decoded
    assert (config.core_type, config.sample_rate, config.channels) == (2, 24000, 1)
    assert (config.adts_header(100)[3] >> 6) | ((config.adts_header(100)[2] & 1) << 2) == 1  # channel config


def test_escaped_object_type_cannot_go_in_adts():
    config = parse_audio_specific_config(Bits().put(31, 5).put(10, 6).put(4, 4).put(1, 4).bytes())
    assert config.object_type == 42
    assert "object type 42" in config.adts_problem()


@pytest.mark.parametrize("raw, problem", [
    (Bits().put(2, 5).put(15, 4).put(44100, 24).put(2, 4).put(0, 1).bytes(), "explicit"),
    (Bits().put(2, 5).put(4, 4).put(0, 4).put(0, 1).bytes(), "channel configuration 0"),
    (Bits().put(2, 5).put(4, 4).put(2, 4).put(1, 1).bytes(), "960"),
])
def test_configs_adts_cannot_carry(raw, problem):
    assert problem in parse_audio_specific_config(raw).adts_problem()


@pytest.mark.parametrize("raw", [b"", b"\x12", Bits().put(2, 5).put(13, 4).put(2, 4).bytes()])
def test_bad_configs_are_malformed(raw):
    with pytest.raises(MalformedMedia):
        parse_audio_specific_config(raw)


def test_adts_header_fields():
    header = parse_audio_specific_config(b"\x12\x10").adts_header(336)
    assert header == bytes.fromhex("fff150802afffc")  # as FFmpeg writes it
    assert len(header) == 7
    bits = int.from_bytes(header, "big")
    assert bits >> 44 == 0xFFF and (bits >> 13) & 0x1FFF == 343 and (bits >> 40) & 1 == 1


def test_adts_refuses_oversized_frames():
    with pytest.raises(MalformedMedia):
        parse_audio_specific_config(b"\x12\x10").adts_header(0x1FFF)


def test_mpeg_audio_headers():
    assert mpeg_audio_frame(bytes.fromhex("fffb9064")) == (3, 44100, 1152, 2)
    assert mpeg_audio_frame(bytes.fromhex("fff390c4")) == (3, 22050, 576, 1)
    assert mpeg_audio_frame(bytes.fromhex("fffd9064")) == (2, 44100, 1152, 2)
    assert mpeg_audio_frame(b"\x00\x00\x00\x00") is None
    assert mpeg_audio_frame(bytes.fromhex("ffeb9064")) is None  # reserved version
    assert mpeg_audio_frame(b"\xff") is None


# -- esds --------------------------------------------------------------------------------------


def descriptor(tag: int, body: bytes, long: bool = False) -> bytes:
    size = len(body)
    if long:
        encoded = bytes([0x80 | (size >> 21) & 0x7F, 0x80 | (size >> 14) & 0x7F, 0x80 | (size >> 7) & 0x7F,
                         size & 0x7F])
    else:
        encoded = bytes([size])
    return bytes([tag]) + encoded + body


def esds(oti: int = 0x40, specific: bytes | None = b"\x12\x10", flags: int = 0, long: bool = False,
         extra: bytes = b"") -> bytes:
    decoder = bytes([oti, 0x15]) + b"\x00" * 11 + (descriptor(5, specific, long) if specific is not None else b"")
    es_head = b"\x00\x01" + bytes([flags])
    if flags & 0x80:
        es_head += b"\x00\x02"
    if flags & 0x40:
        es_head += b"\x03abc"
    if flags & 0x20:
        es_head += b"\x00\x03"
    body = es_head + extra + descriptor(4, decoder, long) + descriptor(6, b"\x02", long)
    return build_box(b"esds", b"\x00\x00\x00\x00", descriptor(3, body, long))


def parse(box: bytes):
    return parse_esds(box, parse_header(box, 0, len(box)))


@pytest.mark.parametrize("flags", [0, 0x80, 0x40, 0x20, 0xE0])
@pytest.mark.parametrize("long", [False, True])
def test_esds_finds_the_decoder_config(flags, long):
    assert parse(esds(flags=flags, long=long)) == (0x40, b"\x12\x10")


def test_esds_skips_other_descriptors_and_allows_no_specific_info():
    assert parse(esds(oti=0x6B, specific=None, extra=descriptor(0x0B, b"xx"))) == (0x6B, None)


@pytest.mark.parametrize("box", [
    build_box(b"esds", b"\x00\x00\x00\x00", descriptor(4, b"\x40" * 13)),  # no ES_Descriptor
    build_box(b"esds", b"\x00\x00\x00\x00", descriptor(3, b"\x00\x01\x00")),  # no DecoderConfigDescriptor
    build_box(b"esds", b"\x00\x00\x00\x00", b"\x03\x80\x80\x80\x80\x05"),  # size field of 5 bytes
    build_box(b"esds", b"\x00\x00\x00\x00", b"\x03\x20\x00\x01"),  # size past the box
    build_box(b"esds", b"\x00\x00\x00\x00", descriptor(3, b"\x00\x01\x40")),  # URL flag, no URL
    build_box(b"esds", b"\x00\x00\x00\x00", descriptor(3, b"\x00\x01\x00" + descriptor(4, b"\x40" * 5))),
    build_box(b"esds", b"\x00\x00"),
])
def test_bad_esds_is_malformed(box):
    with pytest.raises(MalformedMedia):
        parse(box)


# -- FLV built by hand -------------------------------------------------------------------------

AUDIO, VIDEO = 8, 9


def tag(kind: int, ts: int, data: bytes, flags: int = 0) -> bytes:
    head = bytes([kind | flags]) + len(data).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") + b"\0\0\0\0"
    return head + data + struct.pack(">I", 11 + len(data))


def flv(*tags: bytes) -> bytes:
    return b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00" + b"".join(tags)


def aac_config(config: bytes = b"\x12\x10", ts: int = 0) -> bytes:
    return tag(AUDIO, ts, b"\xaf\x00" + config)


def aac_frame(ts: int, payload: bytes) -> bytes:
    return tag(AUDIO, ts, b"\xaf\x01" + payload)


MP3_FRAME = bytes.fromhex("fffb9064") + b"\x55" * 413


def flv_output(data: bytes, fmt: str, track: str | None = None) -> tuple[bytes, dict]:
    source = FileSource(io.BytesIO(data))
    plan = plan_elementary(open_audio(Container.FLV, source, Limits(), track), fmt)
    return b"".join(iter_plan_bytes(plan.pieces, source)), plan.info


def test_flv_aac_frames_get_adts_headers_and_keep_their_bytes():
    payloads = [bytes([n]) * (20 + n) for n in range(3)]
    data = flv(tag(VIDEO, 0, b"\x17" * 50), aac_config(), *(aac_frame(23 * n, p) for n, p in enumerate(payloads)),
               tag(VIDEO, 40, b"\x27" * 30))
    out, info = flv_output(data, "aac")
    header = parse_audio_specific_config(b"\x12\x10").adts_header
    assert out == b"".join(header(len(p)) + p for p in payloads)
    assert info["frames"] == 3 and info["duration"] == pytest.approx(3 * 1024 / 44100)


def test_flv_config_change_mid_stream_changes_the_headers():
    data = flv(aac_config(), aac_frame(0, b"a" * 10), aac_config(b"\x11\x88"), aac_frame(23, b"b" * 10))
    out, _ = flv_output(data, "aac")
    first = parse_audio_specific_config(b"\x12\x10").adts_header(10)
    second = parse_audio_specific_config(b"\x11\x88").adts_header(10)  # 48000 Hz mono
    assert out == first + b"a" * 10 + second + b"b" * 10
    assert first != second


def test_flv_mp3_payloads_are_copied():
    data = flv(tag(AUDIO, 0, b"\x2f" + MP3_FRAME), tag(VIDEO, 0, b"\x17" * 9), tag(AUDIO, 26, b"\x2f" + MP3_FRAME))
    out, info = flv_output(data, "mp3")
    assert out == MP3_FRAME * 2
    assert info["duration"] == pytest.approx(2 * 1152 / 44100)


@pytest.mark.parametrize("data, error", [
    (flv(aac_frame(0, b"x" * 9), aac_config()), MalformedMedia),  # frame before any config
    (flv(aac_config(), aac_frame(0, b"x" * 9), tag(AUDIO, 30, b"\x2f" + MP3_FRAME)), UnsupportedMedia),
    (flv(aac_config(), aac_frame(0, b"x" * 9))[:-10], MalformedMedia),  # truncated last frame
    (flv(tag(AUDIO, 0, b"\xaf\x00\x12\x10", flags=0x20)), UnsupportedMedia),  # encrypted
    (flv(tag(VIDEO, 0, b"\x17" * 9)), NoAudioTrack),
    (flv(aac_config(), tag(AUDIO, 1, b"\xaf")), MalformedMedia),  # no AACPacketType
    (flv(aac_frame(0, b"x")), MalformedMedia),  # no config at all
])
def test_flv_errors(data, error):
    with pytest.raises(error):
        flv_output(data, "aac")


def test_flv_has_one_track():
    data = flv(aac_config(), aac_frame(0, b"x" * 9))
    assert flv_output(data, "aac", "1")[0]
    with pytest.raises(NoAudioTrack):
        flv_output(data, "aac", "2")


def test_flv_other_codecs_need_transcoding():
    data = flv(tag(AUDIO, 0, b"\x6e" + b"\x00" * 64))  # Nellymoser
    with pytest.raises(NeedsTranscode) as caught:
        flv_output(data, "mp3")
    assert caught.value.stream.codec == "nellymoser"


def test_wrong_codec_needs_transcoding():
    stream = AudioStream("aac", 0, 44100, 2, parse_audio_specific_config(b"\x12\x10"), iter(()))
    with pytest.raises(NeedsTranscode, match="aac, not mp3"):
        plan_elementary(stream, "mp3")
    odd = AudioStream("aac", 0, 44100, 0, parse_audio_specific_config(Bits().put(2, 5).put(4, 4).put(0, 4)
                                                                      .put(0, 1).bytes()), iter(()))
    with pytest.raises(NeedsTranscode, match="channel configuration"):
        plan_elementary(odd, "aac")


# -- real files --------------------------------------------------------------------------------

AAC_KINDS = ["mp4_faststart", "mp4_moov_end", "mov", "m4a_audio_only", "mp4_fragmented", "flv_aac",
             "mp4_largesize_co64", "mp4_moov_end_largesize_co64"]


@pytest.mark.parametrize("kind", AAC_KINDS)
def test_adts_copy_is_identical_to_the_source(kind, make):
    path = make(kind)
    out, summary = extract(path, "aac")
    assert summary["method"] == "copy" and summary["source_codec"] == "aac"
    assert frames_of(out, "aac") == source_frames(path)
    assert out == media.remux_audio_only(path, fmt="adts")  # byte for byte what FFmpeg's ADTS muxer writes
    assert summary["size"] == len(out)
    assert summary["duration"] == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize("kind", ["mp4_mp3", "flv_mp3"])
def test_mp3_copy_is_identical_to_the_source(kind, make):
    if "mp3" not in media.KINDS[kind].audio_codecs[0]:
        pytest.skip("this PyAV build has no MP3 encoder to make the source")
    path = make(kind)
    out, summary = extract(path, "mp3")
    assert summary["method"] == "copy"
    assert frames_of(out, "mp3") == source_frames(path)
    assert summary["duration"] == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize("track", ["2", "fra"])
def test_track_selection(make, track):
    path = make("mp4_two_audio")
    out, summary = extract(path, "aac", track=track)
    assert frames_of(out, "aac") == source_frames(path, 1)
    assert summary["sample_rate"] == 48000 and summary["channels"] == 1


def test_unknown_track(make):
    with pytest.raises(NoAudioTrack):
        extract(make("mp4_two_audio"), "aac", track="3")


@pytest.mark.parametrize("kind", ["mp4_video_only", "flv_video_only"])
def test_no_audio(kind, make):
    with pytest.raises(NoAudioTrack):
        extract(make(kind), "aac")


def test_not_media(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(b"hello, this is not a video" * 10)
    with pytest.raises(UnsupportedMedia):
        extract(path, "aac")


def test_truncated_file_is_malformed(make, tmp_path):
    path = tmp_path / "cut.mp4"
    path.write_bytes(make("mp4_faststart").read_bytes()[:-2000])
    with pytest.raises(MalformedMedia):
        extract(path, "aac")


def decoded_seconds(data: bytes, fmt: str) -> float:
    import av

    with av.open(io.BytesIO(data), format="adts" if fmt == "aac" else "mp3") as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


@pytest.mark.parametrize("kind, fmt", [("mp4_faststart", "mp3"), ("flv_aac", "mp3"), ("mp4_mp3", "aac"),
                                       ("3gp", "aac")])
def test_transcode_is_decodable_and_keeps_the_duration(kind, fmt, make):
    if not elementary.transcoding_available(fmt):
        pytest.skip(f"no {fmt} encoder in this PyAV build")
    path = make(kind)
    if media.KINDS[kind].audio_codecs[0] in ("aac",) and fmt == "aac":
        pytest.skip("source is already AAC in this PyAV build")
    out, summary = extract(path, fmt)
    assert summary["method"] == "transcode"
    assert summary["size"] == len(out)
    # raw ADTS/MP3 cannot signal the encoder's delay and padding: allow two encoder frames of slack
    slack = 2 * (1024 if fmt == "aac" else 1152) / summary["sample_rate"] + 0.05
    assert decoded_seconds(out, fmt) == pytest.approx(3.0, abs=slack)
    assert summary["duration"] == pytest.approx(3.0, abs=0.1)


def test_transcode_without_pyav_says_how_to_get_it(make, monkeypatch):
    monkeypatch.setattr(elementary, "load_av", lambda: None)
    with pytest.raises(TranscodeUnavailable, match=r"audio_middleware\[transcode\]"):
        extract(make("mp4_faststart"), "mp3")


def test_transcode_can_be_refused(make):
    with pytest.raises(UnsupportedMedia, match="transcoding is disabled"):
        extract(make("mp4_faststart"), "mp3", allow_transcode=False)


def test_progress_reaches_the_end_and_can_abort(make):
    path = make("mp4_faststart")
    calls = []
    extract(path, "aac", progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == os.path.getsize(path)

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        extract(path, "aac", progress=stop)


def test_describe(make):
    with open(make("mp4_two_audio"), "rb") as handle:
        facts = describe(FileSource(handle))
    assert [(t["index"], t["codec"], t["language"], t["samples"], t["sample_rate"], t["channels"])
            for t in facts["tracks"]] == [(1, "aac", "eng", 131, 44100, 2), (2, "aac", "fra", 142, 48000, 1)]
    with open(make("mp4_fragmented"), "rb") as handle:
        fragmented = describe(FileSource(handle))
    assert fragmented["fragmented"] and fragmented["tracks"][0]["samples"] == 131
    assert fragmented["duration"] == pytest.approx(3.0, abs=0.1)
    with open(make("flv_aac"), "rb") as handle:
        assert describe(FileSource(handle))["tracks"][0]["samples"] == 131


# -- robustness --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_only_raise_extraction_errors(make, data):
    kind = data.draw(st.sampled_from(["mp4_faststart", "flv_aac", "mp4_fragmented"]))
    original = bytearray(make(kind).read_bytes()[:6000])
    for _ in range(data.draw(st.integers(1, 8))):
        original[data.draw(st.integers(0, len(original) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(16, len(original)))
    source = FileSource(io.BytesIO(bytes(original[:cut])))
    try:
        stream = open_audio(elementary.sniff(source), source, Limits(), None)
        for fmt in ("aac", "mp3"):
            try:
                b"".join(iter_plan_bytes(plan_elementary(stream, fmt).pieces, source))
            except NeedsTranscode:
                pass
        describe(source)
    except AudioExtractionError:
        pass


CORPUS_FILES = sorted(path for path in glob.glob(os.path.join(CORPUS, "*")) if not path.endswith(".md"))


@pytest.mark.skipif(not CORPUS_FILES, reason="no real-media corpus")
@pytest.mark.parametrize("path", CORPUS_FILES, ids=os.path.basename)
def test_real_files_never_raise_anything_else(path, tmp_path):
    for fmt in ("aac", "mp3"):
        try:
            extract(path, fmt, allow_transcode=False)
        except AudioExtractionError:
            pass
    with open(path, "rb") as handle:
        try:
            describe(FileSource(handle))
        except AudioExtractionError:
            pass


@pytest.mark.skipif(not CORPUS_FILES, reason="no real-media corpus")
@pytest.mark.parametrize("name, fmt", [
    ("srs_bbb_h264_aac.flv", "aac"), ("mp4ff_aac_fragmented_sidx.mp4", "aac"), ("flavors_vp6_mp3.flv", "mp3"),
    ("taglib_he_aac_mdat_size_zero.m4a", "aac"), ("mutagen_aac_kddi_moof.3g2", "aac"),
    ("exo_h264_aac_partially_fragmented.mp4", "aac"), ("scuffle_enhanced_hevc_aac.flv", "aac"),
])
def test_real_files_copy_identically(name, fmt, tmp_path):
    path = os.path.join(CORPUS, name)
    if not os.path.exists(path):
        pytest.skip("file missing from the corpus")
    local = shutil.copy(path, tmp_path)
    out, _ = extract(local, fmt)
    assert frames_of(out, fmt) == source_frames(local)


# -- hostile input -----------------------------------------------------------------------------

#: An AudioSpecificConfig with the explicit-frequency escape (index 15) and a rate of 0 Hz.
RATE_ZERO = Bits().put(2, 5).put(15, 4).put(0, 24).put(2, 4).put(0, 1).bytes()


def describe_bytes(data: bytes, limits: Limits | None = None) -> dict:
    return describe(FileSource(io.BytesIO(data)), limits)


def test_explicit_sample_rate_of_zero_is_malformed():
    with pytest.raises(MalformedMedia, match="0 Hz"):
        parse_audio_specific_config(RATE_ZERO)
    data = flv(aac_config(RATE_ZERO), aac_frame(0, b"x" * 20))
    with pytest.raises(MalformedMedia):
        describe_bytes(data)  # every frame's duration was frame_length / 0
    with pytest.raises(MalformedMedia):
        flv_output(data, "aac")


class UnsizedSource:
    """A random-access source that does not know its length (only short reads reveal the end)."""

    size = None
    random_access = True

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


@pytest.mark.parametrize("cut", [11, 13])  # right after the tag header; inside the data
def test_flv_cut_inside_the_first_audio_tag_is_malformed(cut):
    whole = flv(tag(AUDIO, 0, b"\x2f" + MP3_FRAME))
    data = whole[:13 + cut]  # 13: FLV header and PreviousTagSize0
    with pytest.raises(MalformedMedia, match="cut short"):
        describe_bytes(data)
    with pytest.raises(MalformedMedia, match="cut short"):
        flv_output(data, "mp3")
    with pytest.raises(SourceTruncated):
        open_audio(Container.FLV, UnsizedSource(data), Limits())


def full_box(kind: bytes, *payload: bytes, flags: int = 0) -> bytes:
    return build_box(kind, struct.pack(">I", flags), *payload)


def sound_entry(kind: bytes, *children: bytes) -> bytes:
    """An audio sample entry (version 0, stereo, 16-bit, 44100 Hz) followed by ``children``."""
    return build_box(kind, bytes(6), struct.pack(">HHHIHHHHI", 1, 0, 0, 0, 2, 16, 0, 0, 44100 << 16), *children)


def audio_moov(entry: bytes, *, fragmented: bool = False) -> bytes:
    """ftyp + a moov with one audio track (track 1) whose sample tables are empty (all samples in fragments)."""
    tables = [full_box(b"stsd", struct.pack(">I", 1), entry)]
    tables += [full_box(kind, bytes(4)) for kind in (b"stts", b"stsc", b"stco")]
    tables.append(full_box(b"stsz", bytes(8)))
    minf = build_box(b"minf", full_box(b"smhd", bytes(4)), build_box(b"stbl", *tables))
    mdia = build_box(b"mdia", full_box(b"mdhd", struct.pack(">IIIIHH", 0, 0, 44100, 0, 0x55C4, 0)),
                     full_box(b"hdlr", struct.pack(">I4s12x", 0, b"soun"), b"sound\0"), minf)
    trak = build_box(b"trak", full_box(b"tkhd", struct.pack(">IIIII", 0, 0, 1, 0, 0), bytes(60), flags=3), mdia)
    mvex = [build_box(b"mvex", full_box(b"trex", struct.pack(">IIIII", 1, 1, 1024, 0, 0)))] if fragmented else []
    mvhd = full_box(b"mvhd", struct.pack(">IIII", 0, 0, 1000, 0), bytes(80))
    return build_box(b"ftyp", b"isom\0\0\2\0isom") + build_box(b"moov", mvhd, trak, *mvex)


def nested_waves(depth: int, inner: bytes) -> bytes:
    for _ in range(depth):
        inner = build_box(b"wave", inner)
    return inner


@pytest.mark.parametrize("depth", [5000, 32])
def test_deeply_nested_wave_boxes_are_refused(depth):
    data = audio_moov(sound_entry(b"mp4a", nested_waves(depth, esds())))
    with pytest.raises(LimitExceeded, match="nest deeper than 32"):  # recursion ran out of stack at 5000
        describe_bytes(data)
    shallow = audio_moov(sound_entry(b"mp4a", nested_waves(31, esds(specific=b"\x11\x88"))))
    assert describe_bytes(shallow)["tracks"][0]["sample_rate"] == 48000


def tfhd(track_id: int, default_size: int | None = None, base: int | None = None) -> bytes:
    """A tfhd: moof-relative (default-base-is-moof) unless ``base`` gives an explicit base data offset."""
    flags = 0x020000 if base is None else 0x000001
    fields = b"" if base is None else struct.pack(">Q", base)
    if default_size is not None:
        flags |= 0x000010
        fields += struct.pack(">I", default_size)
    return full_box(b"tfhd", struct.pack(">I", track_id), fields, flags=flags)


def trun(count: int, sizes: list[int] | None = None, data_offset: int | None = None) -> bytes:
    """A trun of ``count`` samples: per-sample ``sizes`` if given, else the defaults' size."""
    flags = (0x200 if sizes is not None else 0) | (0x001 if data_offset is not None else 0)
    head = struct.pack(">I", count) + (b"" if data_offset is None else struct.pack(">i", data_offset))
    return full_box(b"trun", head, *(struct.pack(">I", size) for size in sizes or ()), flags=flags)


def moof(*trafs: bytes) -> bytes:
    return build_box(b"moof", full_box(b"mfhd", struct.pack(">I", 1)), *trafs)


def traf(track_id: int, *truns: bytes, default_size: int | None = None, base: int | None = None) -> bytes:
    return build_box(b"traf", tfhd(track_id, default_size, base), *truns)


def fragmented_mp3(*moofs: bytes, payload: int = 64) -> bytes:
    """An MP3-in-MP4 movie with every sample in fragments, followed by ``payload`` bytes of mdat."""
    return audio_moov(sound_entry(b".mp3"), fragmented=True) + b"".join(moofs) + build_box(b"mdat", bytes(payload))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("count", [1, 50_000_000])
def test_empty_samples_in_fragments_are_malformed(count):
    data = fragmented_mp3(moof(traf(1, trun(count), default_size=0)))  # 50M claimed from 16 bytes: a hang
    with pytest.raises(MalformedMedia, match="empty"):
        describe_bytes(data)
    listed = fragmented_mp3(moof(traf(1, trun(3, [4, 0, 4]))))
    with pytest.raises(MalformedMedia, match="empty"):
        describe_bytes(listed)


@pytest.mark.timeout(5)
def test_truns_of_skipped_tracks_cost_nothing_per_sample():
    video = traf(2, *[trun(1_000_000)] * 49, default_size=0)  # 49M samples claimed in 800 bytes
    size = len(moof(video, traf(1, trun(2, [10, 20], data_offset=0))))
    fragment = moof(video, traf(1, trun(2, [10, 20], data_offset=size + 8))) + build_box(b"mdat", bytes(30))
    (track,) = describe_bytes(audio_moov(sound_entry(b".mp3"), fragmented=True) + fragment * 4)["tracks"]
    assert track["samples"] == 8  # took 20 s when every claimed sample was stepped over


@pytest.mark.timeout(10)
def test_samples_claimed_by_one_moof_are_capped():
    data = fragmented_mp3(moof(traf(2, *[trun(50_000_000)] * 1000, default_size=0), traf(1, trun(1, [4]))))
    with pytest.raises(LimitExceeded, match="more than 50000000 samples"):
        describe_bytes(data)


def test_fragments_that_reuse_the_same_bytes_are_refused():
    head = audio_moov(sound_entry(b".mp3"), fragmented=True)
    one = moof(traf(1, trun(1000), default_size=1, base=len(head)))  # 1000 one-byte frames from the file's start
    with pytest.raises(MalformedMedia, match="overlap"):
        describe_bytes(head + one * 2000)  # 2000 fragments of 1000 frames in 160 KB: 2M frames
    before = moof(traf(1, trun(1, [4], data_offset=-1000)))
    with pytest.raises(MalformedMedia, match="before the file"):
        describe_bytes(head + before + build_box(b"mdat", bytes(8)))
