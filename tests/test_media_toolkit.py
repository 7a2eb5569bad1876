"""Self-tests of the test-media toolkit (tests/media.py): generated files, the largesize/co64 rewriter
and the audio oracle (which must be able to fail)."""

from __future__ import annotations

import struct
import time

import pytest

try:  # works whether or not tests/ is a package
    from tests import media
except ImportError:  # pragma: no cover
    import media

MOV_FAMILY = [k for k, info in media.KINDS.items() if info.ext != ".flv"]


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toolkit_media")
    started = time.perf_counter()
    media.make_all(directory)
    elapsed = time.perf_counter() - started
    assert elapsed < 15, f"building all media took {elapsed:.1f}s"
    return directory


@pytest.fixture(scope="session")
def paths(media_dir):
    return {kind: media.make_media(kind, media_dir) for kind in media.KINDS}


# ------------------------------------------------------------------------------------------------
# generated files
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(media.KINDS))
def test_kind_created_with_expected_streams(kind, paths):
    info = media.KINDS[kind]
    path = paths[kind]
    assert path.name == f"{kind}{info.ext}"
    size = path.stat().st_size
    assert 10_000 < size < 300_000
    streams = media.probe(path)
    types = [s.type for s in streams]
    assert types.count("video") == info.n_video
    assert types.count("audio") == info.n_audio
    assert len(types) == info.n_video + info.n_audio
    audio = [s for s in streams if s.type == "audio"]
    for s, _spec in zip(audio, info.audio):
        pkts = s.packets
        assert len(pkts) > 50
        assert pkts[0][1] == 0, "audio must start at pts 0"
        assert len({p[0] for p in pkts}) == len(pkts), "audio packets should all differ (not silence)"
        total = float((pkts[-1][1] + pkts[-1][3]) * s.time_base)
        assert 2.0 <= total <= 4.0
    video = [s for s in streams if s.type == "video"]
    for s in video:
        assert len(s.packets) == media.DURATION_S * media.FPS


def test_make_media_is_cached(paths, media_dir):
    path = paths["mp4_faststart"]
    mtime = path.stat().st_mtime_ns
    assert media.make_media("mp4_faststart", media_dir) == path
    assert path.stat().st_mtime_ns == mtime


def test_make_media_is_deterministic(paths, tmp_path):
    for kind in ("mp4_faststart", "flv_mp3", "3gp", "mp4_largesize_co64"):
        assert media.make_media(kind, tmp_path).read_bytes() == paths[kind].read_bytes(), kind


def test_unknown_kind(tmp_path):
    with pytest.raises(ValueError):
        media.make_media("nope", tmp_path)


def test_codecs(paths):
    def codecs(kind):
        return [(s.type, s.codec) for s in media.probe(paths[kind])]

    assert codecs("mp4_faststart") == [("video", "h264"), ("audio", "aac")]
    assert codecs("mp4_mp3")[1] == ("audio", "mp3" if media.MP3 == "libmp3lame" else "aac")
    assert codecs("flv_aac") == [("video", "h264"), ("audio", "aac")]
    assert codecs("m4a_audio_only") == [("audio", "aac")]
    assert codecs("mp4_video_only") == [("video", "h264")]
    if media.H263 == "h263" and media.AMR != media.AAC:
        assert codecs("3gp") == [("video", "h263"), ("audio", "amr_nb")]


def test_two_audio_tracks_differ_and_have_languages(paths):
    streams = [s for s in media.probe(paths["mp4_two_audio"]) if s.type == "audio"]
    assert [s.language for s in streams] == ["eng", "fra"]
    assert {p[0] for p in streams[0].packets}.isdisjoint(p[0] for p in streams[1].packets)


def test_video_keyframes_every_second(paths):
    import av

    with av.open(str(paths["mp4_faststart"])) as c:
        keys = [float(p.pts * p.time_base) for p in c.demux(video=0) if p.size and p.is_keyframe]
    assert keys == [0.0, 1.0, 2.0]


# ------------------------------------------------------------------------------------------------
# box layout
# ------------------------------------------------------------------------------------------------


def _top(path):
    return [b.type for b in media.top_level_boxes(path)]


@pytest.mark.parametrize("kind", MOV_FAMILY)
def test_moov_position(kind, paths):
    types = _top(paths[kind])
    assert types[0] == "ftyp"
    layout = media.KINDS[kind].layout
    if layout == "faststart":
        assert types.index("moov") < types.index("mdat"), types
    elif layout == "moov_end":
        assert types.index("moov") > types.index("mdat"), types
    elif layout == "fragmented":
        assert types.index("moov") < types.index("moof") < types.index("mdat")
        assert types.count("moof") >= 3, types
        assert media.find_boxes(paths[kind], "moov/mvex")
        data = paths[kind].read_bytes()
        for stco in media.find_boxes(data, "moov/trak/mdia/minf/stbl/stco"):  # empty_moov: no chunks in moov
            assert struct.unpack_from(">I", data, stco.payload_offset + 4)[0] == 0


@pytest.mark.parametrize("kind", ["mp4_faststart", "mp4_moov_end", "mp4_mp3", "mp4_two_audio", "mov", "3gp"])
def test_plain_files_use_stco_and_small_mdat_header(kind, paths):
    data = paths[kind].read_bytes()
    assert all(b.header_size == 8 for b in media.top_level_boxes(data) if b.type == "mdat")
    stbl = "moov/trak/mdia/minf/stbl/"
    assert len(media.find_boxes(data, stbl + "stco")) == media.KINDS[kind].n_video + media.KINDS[kind].n_audio
    assert not media.find_boxes(data, stbl + "co64")


@pytest.mark.parametrize("kind", ["mp4_largesize_co64", "mp4_moov_end_largesize_co64"])
def test_largesize_co64_layout(kind, paths):
    data = paths[kind].read_bytes()
    src = paths[media.KINDS[kind].derived_from].read_bytes()
    top = media.top_level_boxes(data)
    assert [b.type for b in top] == _top(src)
    mdats = [b for b in top if b.type == "mdat"]
    assert mdats and all(b.size_field == 1 and b.header_size == 16 for b in mdats)
    for b in mdats:
        assert data[b.offset : b.offset + 8] == struct.pack(">I4s", 1, b"mdat")
        assert struct.unpack_from(">Q", data, b.offset + 8)[0] == b.size
    assert top[-1].end == len(data)
    stbl = "moov/trak/mdia/minf/stbl/"
    assert not media.find_boxes(data, stbl + "stco")
    assert len(media.find_boxes(data, stbl + "co64")) == 2
    # every chunk offset points into an mdat payload
    for box in media.find_boxes(data, stbl + "co64"):
        (count,) = struct.unpack_from(">I", data, box.payload_offset + 4)
        assert box.size == 16 + 8 * count
        for (off,) in struct.iter_unpack(">Q", data[box.payload_offset + 8 : box.end]):
            assert any(m.payload_offset <= off < m.end for m in mdats)
    # ancestor sizes are consistent (iter_boxes would raise otherwise) and packets are unchanged
    assert media.find_boxes(data, "moov/trak/mdia/minf/stbl/stsd")
    assert [(s.type, s.codec, s.packets) for s in media.probe(data)] == [
        (s.type, s.codec, s.packets) for s in media.probe(src)
    ]


def test_largesize_rewriter_is_idempotent(paths, tmp_path):
    src = paths["mp4_largesize_co64"]
    dst = tmp_path / "again.mp4"
    media.to_largesize_co64(src, dst)
    assert dst.read_bytes() == src.read_bytes()


def test_largesize_rewriter_all_tracks(paths, tmp_path):
    dst = tmp_path / "two.mp4"
    media.to_largesize_co64(paths["mp4_two_audio"], dst)
    assert len(media.find_boxes(dst, "moov/trak/mdia/minf/stbl/co64")) == 3
    assert media.probe(dst) == media.probe(paths["mp4_two_audio"])


def test_largesize_rewriter_rejects_fragmented(paths, tmp_path):
    with pytest.raises(ValueError):
        media.to_largesize_co64(paths["mp4_fragmented"], tmp_path / "x.mp4")


# ------------------------------------------------------------------------------------------------
# oracle
# ------------------------------------------------------------------------------------------------


def test_audio_packets_and_stream_types(paths):
    data = paths["mp4_two_audio"].read_bytes()
    assert media.stream_types(data) == ["video", "audio", "audio"]
    assert media.stream_types(paths["flv_aac"]) == ["video", "audio"]
    per_stream = media.audio_packets(data)
    assert len(per_stream) == 2
    assert per_stream == media.audio_packets(paths["mp4_two_audio"])
    pkt = per_stream[0][0]
    assert isinstance(pkt[0], bytes) and pkt[1:] == (0, 0, 1024)
    assert all(len(p[0]) > 0 for s in per_stream for p in s)
    assert media.audio_packets(paths["mp4_video_only"]) == []


def test_identical_passes_on_audio_only_self(paths):
    src = paths["m4a_audio_only"]
    media.assert_audio_identical(src, src.read_bytes())


@pytest.mark.parametrize("kind", ["mp4_faststart", "mp4_moov_end", "mp4_mp3", "mov", "3gp", "mp4_largesize_co64"])
def test_identical_passes_on_reference_remux(kind, paths):
    src = paths[kind]
    fmt = "3gp" if kind == "3gp" else "mp4"  # FFmpeg's mp4 muxer refuses AMR-NB; 3gp accepts it
    media.assert_audio_identical(src, media.remux_audio_only(src, fmt))


def test_identical_passes_on_flv_reference_remux(paths):
    for kind in ("flv_aac", "flv_mp3"):
        src = paths[kind]
        out = media.remux_audio_only(src, "flv")
        assert media.stream_types(out) == ["audio"]
        media.assert_audio_identical(src, out, fmt="flv")


def test_identical_track_selection(paths):
    src = paths["mp4_two_audio"]
    media.assert_audio_identical(src, media.remux_audio_only(src, tracks=[1]), tracks=[1])
    media.assert_audio_identical(src, media.remux_audio_only(src, tracks=[1, 0]), tracks=[1, 0])
    media.assert_audio_identical(src, media.remux_audio_only(src))
    with pytest.raises(AssertionError, match="codec|time_base|packet"):
        media.assert_audio_identical(src, media.remux_audio_only(src, tracks=[1]), tracks=[0])
    with pytest.raises(AssertionError, match="audio stream"):
        media.assert_audio_identical(src, media.remux_audio_only(src, tracks=[1]))
    with pytest.raises(AssertionError, match="no audio track 5"):
        media.assert_audio_identical(src, media.remux_audio_only(src, tracks=[1]), tracks=[5])


def test_identical_fails_on_changed_byte(paths):
    src = paths["m4a_audio_only"]
    data = bytearray(src.read_bytes())
    victim = media.audio_packets(src)[0][7][0]
    pos = bytes(data).find(victim)
    assert pos > 0 and bytes(data).find(victim, pos + 1) == -1
    data[pos + len(victim) // 2] ^= 0x01
    with pytest.raises(AssertionError, match=r"packet is #7 \(bytes differ\)"):
        media.assert_audio_identical(src, bytes(data))


def test_identical_fails_on_timestamp_change(paths):
    src = paths["m4a_audio_only"]
    out = media.remux_audio_only(src, window=(0.0, None), rebase=False)
    media.assert_audio_identical(src, out)
    shifted = media.remux_audio_only(src, window=(0.5, None), rebase=True)
    with pytest.raises(AssertionError, match="packet is #0"):
        media.assert_audio_identical(src, shifted)


def test_identical_fails_on_missing_packet(paths):
    src = paths["m4a_audio_only"]
    short = media.remux_audio_only(src, window=(0.0, 2.0))
    with pytest.raises(AssertionError, match="output has .* packets, source has"):
        media.assert_audio_identical(src, short)


@pytest.mark.parametrize("kind", ["mp4_faststart", "flv_aac", "mp4_two_audio"])
def test_identical_fails_when_video_present(kind, paths):
    with pytest.raises(AssertionError, match="non-audio stream"):
        media.assert_audio_identical(paths[kind], paths[kind].read_bytes())


def test_identical_fails_on_video_only_output(paths):
    with pytest.raises(AssertionError, match="non-audio"):
        media.assert_audio_identical(paths["mp4_faststart"], paths["mp4_video_only"].read_bytes())


def test_window_passes(paths):
    src = paths["mp4_faststart"]
    frame = 1024 / 44100
    for start, end in [(0.0, None), (0.5, 1.5), (1.0, 2.0), (0.0, 1.0), (2.5, None), (1.25, 99.0)]:
        for rebase in (True, False):
            out = media.remux_audio_only(src, window=(start, end), rebase=rebase)
            media.assert_audio_window(src, out, start, end, rebased=rebase)
    # one extra pre-roll packet is only accepted with slack_frames=2
    out = media.remux_audio_only(src, window=(1.0 - frame, 2.0), rebase=True)
    with pytest.raises(AssertionError, match="more than 1 frame"):
        media.assert_audio_window(src, out, 1.0, 2.0)
    media.assert_audio_window(src, out, 1.0, 2.0, slack_frames=2)


def test_window_on_flv_and_tracks(paths):
    src = paths["flv_aac"]
    media.assert_audio_window(src, media.remux_audio_only(src, "flv", window=(0.7, 1.9)), 0.7, 1.9, fmt="flv")
    two = paths["mp4_two_audio"]
    out = media.remux_audio_only(two, tracks=[1], window=(0.3, 2.2), rebase=True)
    media.assert_audio_window(two, out, 0.3, 2.2, tracks=[1])
    with pytest.raises(AssertionError):
        media.assert_audio_window(two, out, 0.3, 2.2, tracks=[0])


def test_window_fails(paths):
    src = paths["mp4_faststart"]
    out = media.remux_audio_only(src, window=(0.5, 1.5), rebase=True)
    with pytest.raises(AssertionError, match="after start"):  # window starts too late
        media.assert_audio_window(src, out, 0.4, 1.5)
    with pytest.raises(AssertionError, match="before end"):  # window ends too early
        media.assert_audio_window(src, out, 0.5, 1.7)
    with pytest.raises(AssertionError, match="too long"):
        media.assert_audio_window(src, out, 0.5, 1.2)
    with pytest.raises(AssertionError, match="end of the source"):
        media.assert_audio_window(src, out, 0.5, None)
    with pytest.raises(AssertionError, match="rebased"):
        media.assert_audio_window(src, media.remux_audio_only(src, window=(0.5, 1.5)), 0.5, 1.5, rebased=True)
    with pytest.raises(AssertionError, match="non-audio"):
        media.assert_audio_window(src, src.read_bytes(), 0.0, None)


def test_window_fails_on_gap_or_changed_byte(paths, tmp_path):
    import av

    src = paths["m4a_audio_only"]
    # drop one packet in the middle of the window
    buf = tmp_path / "gap.m4a"
    with av.open(str(src)) as inp, av.open(str(buf), "w", format="ipod") as out:
        ostream = out.add_stream_from_template(inp.streams.audio[0])
        for i, p in enumerate(inp.demux(audio=0)):
            if p.size == 0 or i == 20:
                continue
            p.stream = ostream
            out.mux(p)
    with pytest.raises(AssertionError, match="contiguous"):
        media.assert_audio_window(src, buf.read_bytes(), 0.0, None)
    # change one byte of a packet
    data = bytearray(src.read_bytes())
    victim = media.audio_packets(src)[0][30][0]
    pos = bytes(data).find(victim)
    data[pos + 3] ^= 0x80
    with pytest.raises(AssertionError, match="output #30"):
        media.assert_audio_window(src, bytes(data), 0.0, None)
    # timestamps of a window must follow the source spacing
    media.assert_audio_window(src, src.read_bytes(), 0.0, None, rebased=False)
