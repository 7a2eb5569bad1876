"""Time clipping of MP4 (issue 8): clip_movie / plan_clipped, checked with PyAV.

Generated media (tests/media.py) and, when present, real files from
/work/shared/media. Each output must be audio-only and hold exactly a
contiguous run of the source's audio packets covering the window (oracle:
``media.assert_audio_window``); the duration PyAV reports must be the clipped
one. Hand-made tables (ctts, stss, sdtp, csgp) check the slicing itself.
"""

from __future__ import annotations

import io
import math
import pathlib
import struct
import time
from array import array
from fractions import Fraction
from itertools import accumulate, pairwise

import av
import numpy as np
import pytest

from audio_middleware.emit import iter_plan_bytes
from audio_middleware.errors import InvalidRequest, RangeNotSatisfiable, UnsupportedMedia
from audio_middleware.limits import Limits
from audio_middleware.mp4 import plan_mp4
from audio_middleware.mp4.boxes import Box, build_box, child_path, iter_children, only_child, parse_header, rebuild
from audio_middleware.mp4.clip import _csgp, _slice_runs, clip_movie, clip_window, plan_clipped
from audio_middleware.mp4.layout import find_moov
from audio_middleware.mp4.movie import offsets_box, parse_movie, select_audio
from audio_middleware.mp4.tracks import chunk_first_samples_of
from audio_middleware.sources import FileSource, SequentialSource

try:  # works whether or not tests/ is a package
    from tests import media
except ImportError:  # pragma: no cover
    import media

SHARED = pathlib.Path("/work/shared/media")
LIMITS = Limits()


def kind_path(media_dir, kind: str) -> pathlib.Path:
    return media.make_media(kind, media_dir)


def shared(name: str) -> pathlib.Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def clip(path, start, end, track=None):
    """(output bytes, plan) of the clipped rendition, planned the way plan_mp4 does it."""
    with open(path, "rb") as handle:
        src = FileSource(handle)
        layout = find_moov(src, LIMITS)
        movie = parse_movie(layout.moov, LIMITS)
        kept = select_audio(movie, track)
        plan = plan_clipped(layout, movie, kept, src.size, LIMITS, start, end)
        out = b"".join(iter_plan_bytes(plan.pieces, src))
    assert len(out) == plan.length
    return out, plan


def movie_of(path) -> tuple:
    with open(path, "rb") as handle:
        layout = find_moov(FileSource(handle), LIMITS)
    return layout, parse_movie(layout.moov, LIMITS)


def pyav_duration(data: bytes) -> float:
    """The duration PyAV reports: the container's, else the longest audio stream's."""
    with av.open(_bytes_io(data)) as container:
        if container.duration is not None:
            return container.duration / av.time_base
        return max(float(s.duration * s.time_base) for s in container.streams.audio)


def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def decode_all(data: bytes) -> int:
    """Decode every audio frame (raises on a decoding error); return the number of samples."""
    samples = 0
    with av.open(_bytes_io(data)) as container:
        for frame in container.decode(container.streams.audio[0]):
            samples += frame.samples
    return samples


def check_window(source, out, plan, start, end, *, rebased=None, slack_frames=1):
    media.assert_audio_window(source, out, start or 0.0, end, rebased=rebased, slack_frames=slack_frames)
    window = plan.info["window"]
    if start:
        assert window["start"] <= start + 1e-6
    if end is not None:
        assert window["start"] < end
    # players show the clipped duration (PyAV: from mvhd / the edit lists)
    clipped = window["end"] - window["start"]
    assert pyav_duration(out) == pytest.approx(clipped, abs=0.025)
    # the clipped moov is consistent on its own
    out_moov = media.find_boxes(out, "moov")[0]
    parse_movie(out[out_moov.offset:out_moov.end], LIMITS)


WINDOWS = [
    (1.0, None),  # start only
    (None, 1.5),  # end only
    (0.5, 2.0),  # both
    (0, None),  # start=0: the whole file
    (0, 1.0),
    (1.01, 1.02),  # a few milliseconds
    (2.5, 100.0),  # end beyond the media
    (0.73, 2.31),
]


@pytest.mark.parametrize("kind", ["mp4_faststart", "mp4_moov_end", "mov", "m4a_audio_only"])
@pytest.mark.parametrize(("start", "end"), WINDOWS)
def test_generated_windows(media_dir, kind, start, end):
    path = kind_path(media_dir, kind)
    out, plan = clip(path, start, end)
    # generated files have media_time 0 (no priming edit), so every output starts at pts 0
    check_window(path, out, plan, start, end, rebased=True)
    assert plan.info["container"] == "mp4"


def test_start_zero_is_the_whole_file(media_dir):
    path = kind_path(media_dir, "mp4_faststart")
    out, _ = clip(path, 0, None)
    media.assert_audio_identical(path, out)


def test_output_decodes(media_dir):
    path = kind_path(media_dir, "mp4_faststart")
    out, plan = clip(path, 0.8, 2.2)
    samples = decode_all(out)
    window = plan.info["window"]
    assert samples == pytest.approx((window["end"] - window["start"]) * 44100, abs=1024)


@pytest.mark.parametrize("name", ["mp4_faststart", "exo_aac_long_editlist_audio_only.mp4"])
def test_window_inside_one_chunk(media_dir, name):
    path = shared(name) if name.endswith(".mp4") else kind_path(media_dir, name)
    _, movie = movie_of(path)
    track = select_audio(movie, None)[0]
    firsts = chunk_first_samples_of(movie.data, track, LIMITS)[0].tolist()
    counts = [b - a for a, b in pairwise(firsts)] + [track.sample_count - firsts[-1]]
    chunk = max(range(len(counts)), key=counts.__getitem__)
    assert counts[chunk] >= 2, "need a chunk with 2 samples or more"
    middle = firsts[chunk] + counts[chunk] // 2  # not the first sample of the chunk
    packets = media.audio_packets(path)[0]
    pts, duration = packets[middle][1], packets[middle][3]
    start = (pts + duration / 3) / track.timescale
    end = (pts + 2 * duration / 3) / track.timescale
    out, plan = clip(path, start, end)
    check_window(path, out, plan, start, end)
    new = parse_movie(clip_movie(movie, [track], start, end, LIMITS), LIMITS).tracks[0]
    assert new.sample_count == 1 and len(new.chunk_offsets) == 1
    skipped = sum(len(packets[i][0]) for i in range(firsts[chunk], middle))
    assert new.chunk_offsets[0] == track.chunk_offsets[chunk] + skipped
    assert list(new.chunk_sizes) == [len(packets[middle][0])]


def test_partial_first_and_last_chunks(media_dir):
    path = kind_path(media_dir, "mp4_moov_end")
    _, movie = movie_of(path)
    track = select_audio(movie, None)[0]
    new = parse_movie(clip_movie(movie, [track], 0.61, 2.07, LIMITS), LIMITS).tracks[0]
    packets = media.audio_packets(path)[0]
    frame = 1024 / track.timescale
    lo, hi = int(0.61 / frame), int(2.07 / frame) + 1
    assert new.sample_count == hi - lo
    assert sum(new.chunk_sizes) == sum(len(p[0]) for p in packets[lo:hi])
    with open(path, "rb") as handle:
        data = handle.read()
    got = b"".join(data[o:o + s] for o, s in zip(new.chunk_offsets, new.chunk_sizes, strict=True))
    assert got == b"".join(p[0] for p in packets[lo:hi])


def test_two_audio_tracks(media_dir):
    path = kind_path(media_dir, "mp4_two_audio")
    for start, end in [(1.0, None), (None, 1.2), (0.4, 2.6), (1.01, 1.03)]:
        out, plan = clip(path, start, end)
        check_window(path, out, plan, start, end)
    # tracks with different frame durations start at different times: the later one gets an empty edit
    out, plan = clip(path, 1.0, 2.0)
    firsts = {}
    with av.open(_bytes_io(out)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.stream.index not in firsts:
                firsts[packet.stream.index] = float(packet.pts * packet.stream.time_base)
    src = media.audio_packets(path)
    src_starts = []
    for packets, rate in zip(src, (44100, 48000), strict=True):
        k = max(i for i, p in enumerate(packets) if p[1] / rate <= 1.0)
        src_starts.append(packets[k][1] / rate)
    assert plan.info["window"]["start"] == pytest.approx(min(src_starts), abs=1e-6)
    for index, source_start in enumerate(src_starts):
        assert firsts[index] == pytest.approx(source_start - min(src_starts), abs=0.0015)


def test_two_audio_tracks_one_selected(media_dir):
    path = kind_path(media_dir, "mp4_two_audio")
    out, plan = clip(path, 0.5, 1.5, track="2")
    media.assert_audio_window(path, out, 0.5, 1.5, tracks=[1], rebased=True)
    assert [t["language"] for t in plan.info["tracks"]] == ["fra"]


def test_start_past_the_end(media_dir):
    path = kind_path(media_dir, "mp4_faststart")
    with pytest.raises(RangeNotSatisfiable, match="past the end"):
        clip(path, 10.0, None)
    with pytest.raises(RangeNotSatisfiable):
        clip(path, 3.1, 20.0)
    assert RangeNotSatisfiable.http_status == 416


def test_invalid_windows(media_dir):
    path = kind_path(media_dir, "mp4_faststart")
    for start, end in [(-1.0, None), (2.0, 1.0), (1.0, 1.0), (float("nan"), None), (None, -3.0)]:
        with pytest.raises(InvalidRequest):
            clip(path, start, end)


def test_fragmented_is_refused(media_dir):
    path = kind_path(media_dir, "mp4_fragmented")
    _, movie = movie_of(path)
    with pytest.raises(UnsupportedMedia, match="fragmented"):
        clip_movie(movie, select_audio(movie, None), 1.0, None, LIMITS)


def test_plan_mp4_and_range_slices(media_dir):
    path = kind_path(media_dir, "mp4_faststart")
    out, plan = clip(path, 0.9, 2.1)
    with open(path, "rb") as handle:
        src = FileSource(handle)
        wired = plan_mp4(src, LIMITS, start=0.9, end=2.1)
        assert wired.pieces == plan.pieces
        for lo, hi in [(0, 100), (500, 9000), (len(out) - 700, len(out)), (3, len(out))]:
            assert b"".join(iter_plan_bytes(plan.slice(lo, hi), src)) == out[lo:hi]


def test_forward_only_source_and_reads(media_dir):
    path = kind_path(media_dir, "mp4_faststart")
    out, plan = clip(path, 1.2, 1.8)
    data = path.read_bytes()
    stream = SequentialSource(iter([data[i:i + 4096] for i in range(0, len(data), 4096)]), len(data))
    streamed = plan_mp4(stream, LIMITS, start=1.2, end=1.8)
    assert b"".join(iter_plan_bytes(streamed.pieces, stream)) == out

    class Counting(FileSource):
        read_bytes = 0

        def read(self, offset, length):
            chunk = super().read(offset, length)
            Counting.read_bytes += len(chunk)
            return chunk

        def iter_range(self, offset, length):
            for chunk in super().iter_range(offset, length):
                Counting.read_bytes += len(chunk)
                yield chunk

    with open(path, "rb") as handle:
        src = Counting(handle)
        counted = plan_mp4(src, LIMITS, start=1.2, end=1.8)
        assert b"".join(iter_plan_bytes(counted.pieces, src)) == out
    layout, _ = movie_of(path)
    spans = sum(piece.length for piece in plan.pieces if hasattr(piece, "offset"))
    assert Counting.read_bytes <= spans + len(layout.moov) + len(layout.ftyp or b"") + 1024
    assert spans < len(data) // 3


# -- edit lists ---------------------------------------------------------------------------------


def elst_of(moov: bytes, index: int = 0) -> list[tuple[int, int]]:
    movie = parse_movie(moov, LIMITS)
    track = [t for t in movie.tracks if t.is_audio][index]
    elst = child_path(moov, track.box, b"edts", b"elst")
    count = struct.unpack_from(">I", moov, elst.payload_offset + 4)[0]
    if moov[elst.payload_offset] == 1:
        return [struct.unpack_from(">Qq", moov, elst.payload_offset + 8 + 20 * i) for i in range(count)]
    return [struct.unpack_from(">Ii", moov, elst.payload_offset + 8 + 12 * i) for i in range(count)]


def test_priming_edit_is_kept_only_from_the_first_sample():
    path = shared("exo_aac_long_editlist_audio_only.mp4")  # edit: 1548 ms from media_time 26342 (long priming)
    _, movie = movie_of(path)
    kept = select_audio(movie, None)
    whole = clip_window(movie, kept, None, 0.5, LIMITS)
    (duration, media_time), = elst_of(whole.moov)
    assert media_time == 26342  # the window starts at sample 0: priming stays hidden
    assert whole.start == 0.0
    # start=0.3 s is media time 26342 + 13230 = 39572: sample 38 (38912..39936), so media_time becomes 0
    later = clip_window(movie, kept, 0.3, None, LIMITS)
    (duration, media_time), = elst_of(later.moov)
    assert media_time == 0
    assert later.start == pytest.approx((38912 - 26342) / 44100)
    edit_end = 26342 + Fraction(1548 * 44100, 1000)  # the source edit ends before the last sample does
    assert duration == math.ceil((edit_end - 38912) * 1000 / 44100)
    assert later.end == pytest.approx(1.548)
    new = parse_movie(later.moov, LIMITS).tracks[0]
    assert new.sample_count == 93 - 38
    assert new.media_duration == kept[0].media_duration - 38912  # the last sample is shorter
    assert parse_movie(later.moov, LIMITS).tracks[0].tkhd_duration == duration


def test_empty_edit_counts_in_start():
    path = shared("exo_h264_aac_faststart.mp4")  # audio: empty edit 44 ms, then 1024 ms from media time 0
    _, movie = movie_of(path)
    kept = select_audio(movie, None)
    clipped = clip_window(movie, kept, 0.5, None, LIMITS)
    # presentation 0.5 s is media time (0.5 - 0.044) * 44100 = 20109.6: sample 19 (19456..20480)
    assert clipped.start == pytest.approx(0.044 + 19456 / 44100)
    media_end = kept[0].media_duration  # 45124 ticks, before the edit's end (45158.4)
    assert elst_of(clipped.moov) == [(math.ceil((media_end - 19456) * 1000 / 44100), 0)]
    assert clipped.end == pytest.approx(0.044 + media_end / 44100)
    # no start: the empty edit is dropped, the audio begins at output time 0
    head = clip_window(movie, kept, None, 0.5, LIMITS)
    assert head.start == pytest.approx(0.044)
    assert elst_of(head.moov)[0][1] == 0 and len(elst_of(head.moov)) == 1
    with pytest.raises(RangeNotSatisfiable):  # ends before the first presented sample
        clip_window(movie, kept, None, 0.02, LIMITS)


# -- real files ---------------------------------------------------------------------------------

REAL = {
    "exo_h264_aac_faststart.mp4": [(0.3, None), (None, 0.6), (0.25, 0.75), (0.5, 0.52)],
    "mp4ff_bbb_h264_aac_moov_at_end.mp4": [(3.0, None), (None, 2.0), (4.2, 7.9), (5.0, 5.01), (9.0, 60.0)],
    "exo_aac_long_editlist_audio_only.mp4": [(0.3, None), (0.1, 0.9), (1.0, 1.01), (0.001, 0.2)],
    "exo_ac3_and_aac_two_audio_tracks.mp4": [(0.1, None), (None, 0.15), (0.05, 0.2)],
}


@pytest.mark.parametrize(("name", "start", "end"), [(n, s, e) for n, ws in REAL.items() for s, e in ws])
def test_real_files(name, start, end):
    path = shared(name)
    out, plan = clip(path, start, end)
    check_window(path, out, plan, start, end)
    decode_all(out)


def test_real_end_only_keeps_priming():
    path = shared("exo_aac_long_editlist_audio_only.mp4")
    out, plan = clip(path, None, 0.5)
    # the priming packets (negative pts) are kept and stay hidden by the edit list
    packets = media.audio_packets(out)[0]
    source = media.audio_packets(path)[0]
    assert [p[0] for p in packets] == [p[0] for p in source[:len(packets)]]
    assert packets[0][1] == source[0][1] < 0
    assert packets[-1][1] / 44100 < 0.5 <= (packets[-1][1] + 1024) / 44100
    assert pyav_duration(out) == pytest.approx(plan.info["window"]["end"], abs=0.025)


def test_real_sync_samples_snap_back():
    path = shared("mp4parse_xhe_aac_usac.mp4")  # stss: samples 1 and 85 only (USAC independent frames)
    out, plan = clip(path, 2.5, None)
    first = media.audio_packets(out)[0][0]
    source = media.audio_packets(path)[0]
    assert first[0] == source[84][0]
    media.assert_audio_window(path, out, source[84][1] / 44100, None)
    assert plan.info["window"]["start"] == pytest.approx(source[84][1] / 44100)


# -- table slicing ------------------------------------------------------------------------------


def expand(counts, values):
    return [v for c, v in zip(counts, values, strict=True) for _ in range(c)]


@pytest.mark.parametrize(("lo", "hi"), [(0, 1), (0, 12), (3, 4), (2, 9), (5, 12), (11, 12), (4, 5), (0, 50), (12, 20)])
def test_slice_runs(lo, hi):
    counts, values = array("I", [3, 0, 2, 5, 0, 2]), array("I", [7, 9, 8, 6, 1, 5])
    new_counts, new_values = _slice_runs(counts, values, lo, hi)
    assert expand(new_counts, new_values) == expand(counts, values)[lo:hi]
    assert 0 not in new_counts


def _pack_csgp(flags: int, patterns: list[tuple[int, list[int]]], param: bool = False) -> bytes:
    widths = [1 << ((flags >> s) & 3) for s in (4, 2, 0)]
    digits = "".join(f"{len(ix):0{widths[0]}x}{count:0{widths[1]}x}" for count, ix in patterns)
    digits += "".join(f"{i:0{widths[2]}x}" for _, ix in patterns for i in ix)
    digits += "0" * (len(digits) % 2)
    head = struct.pack(">I4s", flags | (0x40 if param else 0), b"roll") + (b"\0\0\0\7" if param else b"")
    return build_box(b"csgp", head, struct.pack(">I", len(patterns)), bytes.fromhex(digits))


def _unpack_csgp(box: bytes) -> list[int]:
    flags = struct.unpack_from(">I", box, 8)[0] & 0xFFFFFF
    at = 16 + (4 if flags & 0x40 else 0)
    widths = [1 << ((flags >> s) & 3) for s in (4, 2, 0)]
    count = struct.unpack_from(">I", box, at)[0]
    digits = box[at + 4:].hex()
    pos, heads = 0, []
    for _ in range(count):
        heads.append((int(digits[pos:pos + widths[0]], 16), int(digits[pos + widths[0]:pos + widths[0] + widths[1]],
                                                                16)))
        pos += widths[0] + widths[1]
    samples = []
    for length, n in heads:
        indices = [int(digits[pos + k * widths[2]:pos + (k + 1) * widths[2]], 16) for k in range(length)]
        pos += length * widths[2]
        samples += [indices[i % length] for i in range(n)]
    return samples


@pytest.mark.parametrize("flags", [0x14, 0x00, 0x15, 0x2A, 0x3F])
@pytest.mark.parametrize(("lo", "hi"), [(0, 30), (1, 2), (5, 17), (7, 8), (10, 30), (3, 40)])
def test_csgp_slicing(flags, lo, hi):
    patterns = [(7, [1, 0, 2]), (4, [3]), (10, [1, 2, 0, 0]), (9, [2, 1])]
    box = _pack_csgp(flags, patterns, param=flags == 0x15)
    header = parse_header(box, 0, len(box))
    full = _unpack_csgp(box)
    sliced = _csgp(box, header, lo, hi, LIMITS)
    assert _unpack_csgp(sliced) == full[lo:hi]
    assert sliced[8:16 + (4 if flags == 0x15 else 0)] == box[8:16 + (4 if flags == 0x15 else 0)]


def _box_at(data: bytes, parent: Box, kind: bytes) -> Box:
    return only_child(data, parent, kind)


def test_per_sample_tables_are_sliced(media_dir):
    """Inject ctts, stss, sdtp and sbgp into a real audio track, clip, and compare with the expected slices."""
    path = kind_path(media_dir, "mp4_faststart")
    layout, movie = movie_of(path)
    track = select_audio(movie, None)[0]
    n = track.sample_count
    ctts_runs = [(5, 0), (7, 1024), (n - 12, 2048)]
    sync = list(range(1, n + 1, 10))  # every tenth sample is a sync sample
    sdtp = bytes(i % 251 for i in range(n))
    sbgp_runs = [(20, 1), (15, 0), (n - 35, 1)]
    extra = (
        build_box(b"ctts", b"\0\0\0\0", struct.pack(">I", 3), b"".join(struct.pack(">II", *r) for r in ctts_runs))
        + build_box(b"stss", b"\0\0\0\0", struct.pack(f">I{len(sync)}I", len(sync), *sync))
        + build_box(b"sdtp", b"\0\0\0\0", sdtp)
        + build_box(b"cslg", b"\0" * 24)
    )
    data = movie.data
    stbl = track.stbl
    stsd = _box_at(data, stbl, b"stsd")
    edits = {stsd.offset: bytes(data[stsd.offset:stsd.end]) + extra}
    old_sbgp = only_child(data, stbl, b"sbgp", required=False)
    new_sbgp = build_box(b"sbgp", b"\0\0\0\0roll", struct.pack(">I", 3),
                         b"".join(struct.pack(">II", *r) for r in sbgp_runs))
    if old_sbgp is not None:
        edits[old_sbgp.offset] = new_sbgp
    else:
        edits[stsd.offset] += new_sbgp
    moov = rebuild(data, movie.moov, edits)
    injected = parse_movie(moov, LIMITS)
    kept = select_audio(injected, None)
    out = clip_movie(injected, kept, 1.0, 2.0, LIMITS)
    new_movie = parse_movie(out, LIMITS)
    new_track = new_movie.tracks[0]
    frame = Fraction(1024, track.timescale)
    wanted = int(Fraction(1.0) / frame)
    lo = max(s - 1 for s in sync if s - 1 <= wanted)  # snapped back to a sync sample
    hi = int(Fraction(2.0) / frame) + 1
    assert new_track.sample_count == hi - lo
    boxes = {b.type: b for b in iter_children(out, new_track.stbl.payload_offset, new_track.stbl.end)}
    assert b"cslg" not in boxes

    def runs(box: Box, head: int) -> list[int]:
        count = struct.unpack_from(">I", out, box.payload_offset + 4 + head)[0]
        pairs = struct.unpack_from(f">{2 * count}I", out, box.payload_offset + 8 + head)
        return expand(pairs[0::2], pairs[1::2])

    assert runs(boxes[b"ctts"], 0) == expand(*zip(*ctts_runs, strict=True))[lo:hi]
    assert runs(boxes[b"sbgp"], 4) == expand(*zip(*sbgp_runs, strict=True))[lo:hi]
    stss = boxes[b"stss"]
    count = struct.unpack_from(">I", out, stss.payload_offset + 4)[0]
    assert list(struct.unpack_from(f">{count}I", out, stss.payload_offset + 8)) == [
        s - lo for s in sync if lo < s <= hi]
    sd = boxes[b"sdtp"]
    assert out[sd.payload_offset + 4:sd.end] == sdtp[lo:hi]
    # the sample bytes are those of samples lo..hi
    source = path.read_bytes()
    got = b"".join(source[o:o + s] for o, s in zip(new_track.chunk_offsets, new_track.chunk_sizes, strict=True))
    packets = media.audio_packets(path)[0]
    assert got == b"".join(p[0] for p in packets[lo:hi])
    assert layout.moov  # (the file itself is untouched)


# -- constant-size samples, 64-bit offsets, big tables --------------------------------------------


@pytest.mark.parametrize(("name", "start", "end"), [
    ("exo_h264_twos_pcm_qt_brand.mp4", 0.5, None),  # 16-bit PCM: one "sample" per PCM frame
    ("exo_h264_twos_pcm_qt_brand.mp4", None, 0.7),
    ("mp4parser_h263_amrnb_phone_moov_at_end.3gp", 0.5, 3.3),  # AMR, no edit list in the source
])
def test_constant_size_samples(name, start, end):
    """FFmpeg packs the constant-size samples of a chunk into one packet, so packets differ when a
    chunk is cut: the output's audio bytes must be the source's, from the sample holding ``start``."""
    path = shared(name)
    out, plan = clip(path, start, end)
    source = b"".join(p[0] for p in media.audio_packets(path)[0])
    got = b"".join(p[0] for p in media.audio_packets(out)[0])
    _, movie = movie_of(path)
    track = select_audio(movie, None)[0]
    sizes = track.chunk_sizes[0] // int(np.diff(chunk_first_samples_of(movie.data, track, LIMITS)[0][:2])[0])
    window = plan.info["window"]
    empty = 0.067 if name.startswith("exo_h264_twos") else 0.0  # the PCM track starts with a 67 ms empty edit
    first = round((window["start"] - empty) * track.timescale)
    assert source[first * sizes:first * sizes + len(got)] == got
    samples = len(got) // sizes
    assert samples / track.timescale == pytest.approx(window["end"] - window["start"], abs=1e-6)
    if start is not None:
        assert window["start"] <= start < window["start"] + 1 / track.timescale + 1e-9
    if end is not None and end < window["end"]:
        assert window["end"] == pytest.approx(end, abs=1 / track.timescale)
    assert pyav_duration(out) == pytest.approx(window["end"] - window["start"], abs=0.02)


@pytest.mark.parametrize("kind", ["mp4_largesize_co64", "mp4_moov_end_largesize_co64"])
def test_largesize_co64_sources(media_dir, kind):
    path = kind_path(media_dir, kind)
    for start, end in [(1.3, None), (0.2, 1.1)]:
        out, plan = clip(path, start, end)
        check_window(path, out, plan, start, end, rebased=True)


def test_offsets_above_4gib_use_co64(media_dir):
    path = kind_path(media_dir, "mp4_faststart")
    _, movie = movie_of(path)
    track = select_audio(movie, None)[0]
    shift = 5 << 30
    moov = rebuild(movie.data, movie.moov, {
        track.offsets_box.offset: offsets_box(array("Q", (o + shift for o in track.chunk_offsets)), True)})
    far = parse_movie(moov, LIMITS)
    far_track = select_audio(far, None)[0]
    near = parse_movie(clip_movie(movie, [track], 1.0, 2.0, LIMITS), LIMITS).tracks[0]
    clipped = parse_movie(clip_movie(far, [far_track], 1.0, 2.0, LIMITS), LIMITS).tracks[0]
    assert near.offsets_box.type == b"stco" and clipped.offsets_box.type == b"co64"
    assert list(clipped.chunk_offsets) == [o + shift for o in near.chunk_offsets]
    assert list(clipped.chunk_sizes) == list(near.chunk_sizes)


def test_big_variable_tables(media_dir):
    """300k samples, one stts entry per sample and one stsc entry per chunk: cut exactly, quickly."""
    path = kind_path(media_dir, "mp4_faststart")
    _, movie = movie_of(path)
    track = select_audio(movie, None)[0]
    n, data = 300_000, movie.data
    durations = array("I", (1000 + i % 7 for i in range(n)))
    per_chunk = array("I", (1 + c % 4 for c in range(n)))
    chunk_counts, total = [], 0
    for count in per_chunk:
        if total + count > n:
            break
        chunk_counts.append(count)
        total += count
    sizes = array("I", (10 + i % 5 for i in range(total)))

    def be(values):
        values = array("I", values)
        values.byteswap()
        return values.tobytes()

    pairs = array("I", bytes(8 * total))
    pairs[0::2], pairs[1::2] = array("I", [1]) * total, durations[:total]
    stsc = array("I", bytes(12 * len(chunk_counts)))
    stsc[0::3] = array("I", range(1, len(chunk_counts) + 1))
    stsc[1::3] = array("I", chunk_counts)
    stsc[2::3] = array("I", [1]) * len(chunk_counts)
    firsts = list(accumulate(chunk_counts, initial=0))[:-1]
    offsets = array("Q", (1000 + 20 * f for f in firsts))
    stbl = build_box(
        b"stbl",
        bytes(data[only_child(data, track.stbl, b"stsd").offset:only_child(data, track.stbl, b"stsd").end]),
        build_box(b"stts", b"\0\0\0\0", struct.pack(">I", total), be(pairs)),
        build_box(b"stsc", b"\0\0\0\0", struct.pack(">I", len(chunk_counts)), be(stsc)),
        build_box(b"stsz", b"\0\0\0\0", struct.pack(">II", 0, total), be(sizes)),
        offsets_box(offsets, False),
    )
    edts = only_child(data, track.box, b"edts")
    big = parse_movie(rebuild(data, movie.moov, {track.stbl.offset: stbl, edts.offset: None}), LIMITS)
    kept = select_audio(big, None)
    dts = list(accumulate(durations[:total], initial=0))
    scale = track.timescale
    start, end = dts[123_457] / scale + 0.5 / scale, dts[234_567] / scale + 0.5 / scale
    started = time.perf_counter()
    clipped = parse_movie(clip_movie(big, kept, start, end, LIMITS), LIMITS).tracks[0]
    assert time.perf_counter() - started < 10
    assert clipped.sample_count == 234_568 - 123_457
    assert clipped.media_duration == dts[234_568] - dts[123_457]
    assert sum(clipped.chunk_sizes) == sum(sizes[123_457:234_568])
    chunk = next(c for c, f in enumerate(firsts) if f > 123_457) - 1
    assert clipped.chunk_offsets[0] == offsets[chunk] + sum(sizes[firsts[chunk]:123_457])

