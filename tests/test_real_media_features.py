"""Every feature (seeking, track selection, Range/HEAD, idempotence, raw AAC/MP3, ``--info``) on the real files.

tests/test_real_media.py checks the full rendition of each file of ../shared/media;
this module drives the same corpus through the other features. Expectations come
from PyAV demuxing the *source* and from the documented rules (README "Seeking",
docs/cli.md), never from what the code produces:

* MP4 (README; mp4/clip.py): times are presentation times (PyAV's ``dts``, which
  already places the media with the edit list: leading empty edits shift it,
  ``media_time`` makes priming negative; ``ctts`` is ignored: audio is presented in
  decoding order; FFmpeg rounds an empty edit to the track's time base, the rule
  does not, so the exact one read from ``elst`` is used). Frames that begin at or
  after the end of the edit are not presented. The first kept frame is the one that contains ``start``, moved
  back to the nearest sync sample (PyAV's keyframe flag) when the track has
  ``stss``; a ``start`` at or before the start of the presentation keeps every
  frame, priming included. The last kept frame is the last one that begins before
  ``end``. The output is rebased: its time 0 is the presentation time of the first
  kept audio (of the earliest kept track), so each packet is at its source time
  minus that origin. ``start`` at or past the end of the audio is 416.
* FLV: the frame at or before ``start`` and the frames stamped in ``(start, end)``
  ms, timestamps unchanged; a ``start`` inside the last frame keeps it, past its
  end is 416.
* ``--format aac`` (docs/cli.md): every frame the source's, and the file identical
  to what FFmpeg's ADTS muxer writes from the same packets; ``--info --json``: the
  codec, rate, channels, language, frame count and duration PyAV finds.

Skips when the corpus is absent. Files PyAV cannot demux, and files the
middleware refuses (tests/test_real_media.py's REFUSED), are left out.
"""

from __future__ import annotations

import functools
import io
import json
import math
import pathlib
import random
import struct
from dataclasses import dataclass, field
from fractions import Fraction

import av
import pytest
from webtest import TestApp

from audio_middleware import AudioOnlyMiddleware
from audio_middleware.cli import main as cli_main
from audio_middleware.elementary import write_audio
from audio_middleware.errors import UnsupportedMedia

from .apps import FileApp, GeneratorApp
from .conftest import SHARED_MEDIA, media_toolkit
from .test_real_media import CONTENT_TYPES, PYAV_CANNOT_READ, REFUSED

ALL = sorted(p.name for p in SHARED_MEDIA.glob("*") if p.suffix != ".md") if SHARED_MEDIA.is_dir() else []
USABLE = [name for name in ALL if name not in REFUSED and name not in PYAV_CANNOT_READ]
FLV = [name for name in USABLE if name.endswith(".flv")]
MP4 = [name for name in USABLE if not name.endswith(".flv")]
#: MP4 files whose constant-size samples FFmpeg groups into one packet per chunk: their
#: packets are not samples, so windows are checked on the audio bytes (see test_grouped_samples_window).
GROUPED = {"exo_h264_twos_pcm_qt_brand.mp4", "mp4parser_h263_amrnb_phone_moov_at_end.3gp"}
EPS = 1e-6


def _params(names: list[str]) -> list[str]:
    return names or ["(corpus absent)"]


# -- the source, as PyAV sees it --------------------------------------------------------------------


@dataclass
class Stream:
    """One audio stream demuxed by PyAV: packets as (bytes, pts, dts, duration, keyframe)."""

    codec: str
    time_base: Fraction
    rate: int
    channels: int
    language: str | None
    profile: str | None
    packets: list[tuple[bytes, int, int, int, bool]] = field(default_factory=list)

    def seconds(self, ticks: int) -> float:
        return float(ticks * self.time_base)

    def dts_s(self, index: int) -> float:
        return self.seconds(self.packets[index][2])

    def end_s(self, index: int) -> float:
        """Where frame ``index`` ends: the next frame's start, else its own (edit-trimmed) duration."""
        if index + 1 < len(self.packets):
            return self.dts_s(index + 1)
        return self.seconds(self.packets[index][2] + self.packets[index][3])


def demux(data: bytes | pathlib.Path, fmt: str | None = None) -> list[Stream]:
    """Every audio stream of ``data`` with its non-empty packets (PyAV; ``fmt``: the demuxer, else probed)."""
    handle = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(handle, format=fmt) as container:
        audio = list(container.streams.audio)
        streams = {s.index: Stream(s.codec_context.codec.canonical_name if s.codec_context else "", s.time_base,
                                   s.codec_context.sample_rate if s.codec_context else 0,
                                   s.codec_context.channels if s.codec_context else 0,
                                   s.metadata.get("language"), s.codec_context.profile if s.codec_context else None)
                   for s in audio}
        for packet in container.demux(*audio):
            if packet.size:
                streams[packet.stream.index].packets.append(
                    (bytes(packet), packet.pts, packet.dts, packet.duration or 0, packet.is_keyframe))
    return [streams[index] for index in sorted(streams)]


@functools.cache
def source_streams(name: str) -> tuple[Stream, ...]:
    return tuple(demux(SHARED_MEDIA / name))


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(pathlib.Path(name).suffix, "video/mp4")


def client_for(name: str, app=FileApp, **options) -> TestApp:
    return TestApp(AudioOnlyMiddleware(app(SHARED_MEDIA / name, content_type(name)), **options))


def query(start: float | None = None, end: float | None = None, track: str | None = None) -> str:
    parts = ["ali_audio_only=1"]
    if start is not None:
        parts.append(f"start={start!r}")
    if end is not None:
        parts.append(f"end={end!r}")
    if track is not None:
        parts.append(f"audio_track={track}")
    return "/m?" + "&".join(parts)


# -- MP4 movie facts read straight from the file (edit lists, timescales) ----------------------------


@dataclass
class Edit:
    """Where an audio track's media is presented (seconds): after ``empty``, until ``end`` (None: open)."""

    empty: float = 0.0
    end: float | None = None


@dataclass
class Movie:
    timescale: int
    fragmented: bool
    #: per audio track, in file order
    edits: list[Edit]
    samples: list[int]


def _children(data: bytes, box, name: str) -> list:
    return [b for b in media_toolkit.iter_boxes(data, box.offset + box.header_size, box.offset + box.size)
            if b.type == name]


def _top_level_moov(data: bytes):
    """The top-level moov (boxes after it may claim more bytes than the file holds)."""
    position = 0
    while position + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, position)
        if kind == b"moov":
            return next(media_toolkit.iter_boxes(data, position))
        if size == 1:
            size = struct.unpack_from(">Q", data, position + 8)[0]
        assert size >= 8, f"top-level box at byte {position} of size {size}"
        position += size
    raise AssertionError("no moov")


def _edit(data: bytes, trak, timescale: int) -> Edit:
    """Leading empty edits and the end of the first media edit (ISO/IEC 14496-12 8.6.6)."""
    empty = 0
    for edts in _children(data, trak, "edts"):
        for elst in _children(data, edts, "elst"):
            at = elst.offset + elst.header_size
            entry = struct.Struct(">Qq" if data[at] == 1 else ">Ii")
            (count,) = struct.unpack_from(">I", data, at + 4)
            for number in range(count):
                duration, media_time = entry.unpack_from(data, at + 8 + number * (entry.size + 4))
                if media_time < 0:
                    empty += duration
                    continue
                end = (empty + duration) / timescale if duration else None
                return Edit(empty / timescale, end)
    return Edit()


@functools.cache
def movie_of(name: str) -> Movie:
    data = (SHARED_MEDIA / name).read_bytes()
    moov = _top_level_moov(data)
    (mvhd,) = _children(data, moov, "mvhd")
    at = mvhd.offset + mvhd.header_size
    timescale = struct.unpack_from(">I", data, at + (20 if data[at] == 1 else 12))[0]
    edits, samples = [], []
    for trak in _children(data, moov, "trak"):
        (mdia,) = _children(data, trak, "mdia")
        (hdlr,) = _children(data, mdia, "hdlr")
        if data[hdlr.offset + hdlr.header_size + 8:hdlr.offset + hdlr.header_size + 12] == b"soun":
            edits.append(_edit(data, trak, timescale))
            (minf,) = _children(data, mdia, "minf")
            (stbl,) = _children(data, minf, "stbl")
            (sizes,) = _children(data, stbl, "stsz") + _children(data, stbl, "stz2")
            samples.append(struct.unpack_from(">I", data, sizes.offset + sizes.header_size + 8)[0])
    return Movie(timescale, bool(_children(data, moov, "mvex")), edits, samples)


# -- the documented selection rules -----------------------------------------------------------------


@dataclass
class Track:
    """A source audio track on the presentation timeline: PyAV's packets placed by the edit list."""

    stream: Stream
    edit: Edit

    @property
    def correction(self) -> float:
        """FFmpeg places the media after the empty edit rounded to the track's time base; the rule uses
        the exact time (ISO/IEC 14496-12): 44 ms is 1940.4 ticks at 44.1 kHz, not 1940."""
        empty, tick = self.edit.empty, self.stream.time_base
        return float(Fraction(empty).limit_denominator(10**9) - round(Fraction(empty).limit_denominator(10**9)
                                                                       / tick) * tick)

    def at(self, index: int) -> float:
        """Presentation time of frame ``index`` (seconds)."""
        return self.stream.dts_s(index) + self.correction

    @property
    def count(self) -> int:
        return len(self.stream.packets)

    @property
    def end(self) -> float:
        """End of the presented audio: the last frame's end, capped by the edit's."""
        last = self.stream.end_s(self.count - 1) + self.correction
        return last if self.edit.end is None else min(last, self.edit.end)

    def frame_end(self, index: int) -> float:
        return self.at(index + 1) if index + 1 < self.count else self.end

    @property
    def eps(self) -> float:
        """Slack of time comparisons: a microsecond, less when a tick is shorter (a fuzzed timescale)."""
        return min(EPS, float(self.stream.time_base) / 4)


def tracks_of(name: str) -> list[Track]:
    return [Track(stream, edit) for stream, edit in zip(source_streams(name), movie_of(name).edits, strict=True)]


def mp4_first(track: Track, start: float | None) -> int:
    """Index of the first kept frame: the one containing ``start`` (back to a sync sample)."""
    if start is None or start <= track.edit.empty + track.eps:
        return 0
    index = max(i for i in range(track.count) if track.at(i) <= start + track.eps)
    packets = track.stream.packets
    if not all(p[4] for p in packets):  # the track has stss: back to a sync sample
        index = max(i for i in range(index + 1) if packets[i][4])
    return index


def mp4_last(track: Track, end: float | None) -> int:
    """Index of the last kept frame: the last one that begins before ``end`` (and before the edit's end)."""
    stop = track.end if end is None else min(end, track.end)
    return max((i for i in range(track.count) if track.at(i) < stop - track.eps), default=-1)


@dataclass
class Expected:
    """What one kept track of a clipped MP4 must hold."""

    track: Track
    first: int
    last: int
    shown_from: float  # source presentation time of its first presented instant


def mp4_expected(name: str, start: float | None, end: float | None) -> list[Expected]:
    kept = []
    for track in tracks_of(name):
        if start is not None and start >= track.end - track.eps:
            continue  # no frame of this track in the window: dropped
        first, last = mp4_first(track, start), mp4_last(track, end)
        if last < first:
            continue
        kept.append(Expected(track, first, last, max(track.at(first), track.edit.empty)))
    return kept


def check_mp4_window(name: str, body: bytes, start: float | None, end: float | None) -> None:
    expected = mp4_expected(name, start, end)
    assert expected, "the test asked for a window with audio"
    output = demux(body)
    assert len(output) == len(expected), f"{len(output)} audio streams, expected {len(expected)}"
    origin = min(e.shown_from for e in expected)
    # the empty edit of a later track is rounded to the movie timescale
    tolerance = 1.0 / movie_of(name).timescale + EPS
    for number, (out, want) in enumerate(zip(output, expected, strict=True)):
        label = f"{name} start={start} end={end} track {number}"
        source = want.track.stream.packets[want.first:want.last + 1]
        got = [p[0] for p in out.packets]
        assert got == [p[0] for p in source], (
            f"{label}: kept {len(got)} packets, expected source #{want.first}..#{want.last} ({len(source)}); "
            f"first kept is source #{_index_of(want.track.stream, got)}")
        assert out.codec == want.track.stream.codec
        for index in range(len(source)):
            wanted = want.track.at(want.first + index) - origin
            assert abs(out.dts_s(index) - wanted) <= tolerance + float(out.time_base), (
                f"{label}: packet #{index} at {out.dts_s(index):.6f}s, expected {wanted:.6f}s")


def _index_of(stream: Stream, got: list[bytes]) -> int | None:
    return next((i for i, p in enumerate(stream.packets) if got and p[0] == got[0]), None)


def flv_expected(stream: Stream, start: float | None, end: float | None) -> list[int]:
    """Indices of the kept frames: the one at or before ``start``, then those stamped in (start, end)."""
    start_ms = round(start * 1000, 6) if start is not None else 0.0
    end_ms = round(end * 1000, 6) if end is not None else math.inf
    stamps = [p[1] for p in stream.packets]
    inside = [i for i, ts in enumerate(stamps) if start_ms < ts < end_ms]
    before = [i for i, ts in enumerate(stamps) if ts <= start_ms]
    if before and (not inside or inside[0] == before[-1] + 1):
        return [before[-1], *inside]
    return inside


# -- windows ----------------------------------------------------------------------------------------


def mp4_windows(name: str) -> list[tuple[str, float | None, float | None]]:
    """A few windows per file, from the first audio track's frames."""
    track = tracks_of(name)[0]
    n, empty = track.count, track.edit.empty
    shown = [i for i in range(n) if track.at(i) < track.end - EPS]
    first_shown = max(i for i in shown if track.at(i) <= empty + EPS) if track.at(0) <= empty + EPS else 0
    last_shown = shown[-1]

    def inside(index: int, fraction: float) -> float:
        begin = max(track.at(index), empty)
        return begin + fraction * (track.frame_end(index) - begin)

    windows = [("inside first frame", inside(first_shown, 0.4), None),
               ("end only", None, inside(n // 2, 0.5)),
               ("last frame", inside(last_shown, 0.3), None)]
    if n >= 4:
        windows.append(("mid-file", inside(n // 3, 0.37), inside(2 * n // 3, 0.61)))
        windows.append(("start on a frame boundary", track.at(n // 2), None))
        windows.append(("inside one frame", inside(n // 2, 0.2), inside(n // 2, 0.7)))
    if empty > 0 or track.at(0) < 0:  # across the edit list: the empty edit or the priming
        windows.append(("across the edit", empty / 2 if empty else None, inside(min(first_shown + 1, n - 1), 0.5)))
    return windows


def flv_windows(name: str) -> list[tuple[str, float | None, float | None]]:
    stamps = [p[1] for p in source_streams(name)[0].packets]
    n = len(stamps)
    windows = [("inside first frame", (stamps[0] + 5) / 1000, None),
               ("last frame", (stamps[-1] + 5) / 1000, None)]
    if n >= 4:
        windows += [("end only", None, (stamps[n // 2] + 7) / 1000),
                    ("mid-file", (stamps[n // 3] + 3) / 1000, (stamps[2 * n // 3] + 9) / 1000),
                    ("start on a tag timestamp", stamps[n // 2] / 1000, None)]
    return windows


SEEK_MP4 = [name for name in MP4 if name not in GROUPED and SHARED_MEDIA.is_dir() and not movie_of(name).fragmented]
FRAGMENTED = [name for name in MP4 if SHARED_MEDIA.is_dir() and movie_of(name).fragmented]


# -- 1. seeking -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(SEEK_MP4))
def test_mp4_windows(shared_media, name):
    client = client_for(name)
    for label, start, end in mp4_windows(name):
        response = client.get(query(start, end), status="*")
        assert response.status_int == 200, f"{label}: {response.status} {response.text[:200]}"
        check_mp4_window(name, response.body, start, end)
    # the last window again: from a forward-only body, and as ranges of the clipped rendition
    clipped = query(*mp4_windows(name)[-1][1:])
    body = client.get(clipped).body
    assert client_for(name, GeneratorApp).get(clipped).body == body
    first = random.Random(name).randrange(len(body))
    part = client.get(clipped, headers={"Range": f"bytes={first}-"}, status=206)
    assert part.body == body[first:]


@pytest.mark.parametrize("name", _params(SEEK_MP4))
def test_mp4_start_past_the_end_is_416(shared_media, name):
    last = max(track.end for track in tracks_of(name))
    response = client_for(name).get(query(last + 0.05), status="*")
    assert response.status_int == 416, response.text[:200]


@pytest.mark.parametrize("name", _params(FRAGMENTED))
def test_fragmented_mp4_seeking_is_501(shared_media, name):
    response = client_for(name).get(query(0.1), status="*")
    assert response.status_int == 501, response.text[:200]


@pytest.mark.parametrize("name", _params(sorted(GROUPED & set(MP4))))
def test_grouped_samples_window(shared_media, name):
    """FFmpeg's packets hold several constant-size samples: the audio bytes must be a run of the source's."""
    source = b"".join(p[0] for p in source_streams(name)[0].packets)
    body = client_for(name).get(query(0.5, 0.9)).body
    got = b"".join(p[0] for p in demux(body)[0].packets)
    assert got and got in source


@pytest.mark.parametrize("name", _params(FLV))
def test_flv_windows(shared_media, name):
    (stream,) = source_streams(name)
    for app in (FileApp, GeneratorApp):
        client = client_for(name, app)
        for label, start, end in flv_windows(name):
            response = client.get(query(start, end), status="*")
            assert response.status_int == 200, f"{label}: {response.status} {response.text[:200]}"
            (out,) = demux(response.body)
            want = [stream.packets[i] for i in flv_expected(stream, start, end)]
            assert [p[0] for p in out.packets] == [p[0] for p in want], f"{label} ({app.__name__})"
            assert [p[1] for p in out.packets] == [p[1] for p in want], f"{label}: timestamps ({app.__name__})"
        past = (stream.packets[-1][1] + 1500) / 1000
        assert client.get(query(past), status="*").status_int == 416


# -- 2. audio_track ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(MP4))
def test_audio_track_by_number_and_language(shared_media, name):
    streams = source_streams(name)
    client = client_for(name)
    for number in range(len(streams)):
        body = client.get(query(track=str(number + 1))).body
        media_toolkit.assert_audio_identical(SHARED_MEDIA / name, body, tracks=[number])
    languages = [s.language or "und" for s in streams]
    for language in dict.fromkeys(languages):
        body = client.get(query(track=language)).body
        media_toolkit.assert_audio_identical(SHARED_MEDIA / name, body, tracks=[languages.index(language)])
    assert client.get(query(track=str(len(streams) + 1)), status="*").status_int == 404
    missing = "zzz" if "zzz" not in languages else "qqq"
    assert client.get(query(track=missing), status="*").status_int == 404


@pytest.mark.parametrize("name", _params(FLV))
def test_flv_has_track_one_only(shared_media, name):
    client = client_for(name)
    assert client.get(query(track="1")).body == client.get(query()).body
    assert client.get(query(track="2"), status="*").status_int == 404


def test_two_audio_tracks_clipped_one_selected(shared_media):
    name = "exo_ac3_and_aac_two_audio_tracks.mp4"
    if name not in SEEK_MP4:
        pytest.skip(f"{name} is absent")
    stream = source_streams(name)[1]
    start, end = stream.dts_s(4) + 0.003, stream.dts_s(9) + 0.003
    body = client_for(name).get(query(start, end, track="2")).body
    (out,) = demux(body)
    assert [p[0] for p in out.packets] == [p[0] for p in stream.packets[4:10]]
    assert abs(out.dts_s(0)) <= 1 / 48000 + EPS


# -- 3. Range and HEAD ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(USABLE))
def test_ranges_are_slices_and_head_is_get(shared_media, name):
    client = client_for(name)
    full = client.get(query())
    body = full.body
    rng = random.Random(name)
    for _ in range(4):
        first = rng.randrange(len(body))
        last = rng.randrange(first, len(body))
        part = client.get(query(), headers={"Range": f"bytes={first}-{last}"}, status=206)
        assert part.body == body[first:last + 1]
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{len(body)}"
    suffix = rng.randrange(1, len(body) + 1)
    assert client.get(query(), headers={"Range": f"bytes=-{suffix}"}, status=206).body == body[-suffix:]
    head = client.head(query())
    assert head.body == b""
    assert without_date(head.headers) == without_date(full.headers)


def without_date(headers) -> list[tuple[str, str]]:
    """Headers but those the app derives from the clock (``Date``, ``Expires``): it may tick between requests."""
    return sorted((key, value) for key, value in headers.items() if key not in ("Date", "Expires"))


# -- 4. idempotence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params(USABLE))
def test_rendition_of_a_rendition_is_itself(shared_media, name, tmp_path):
    first = client_for(name).get(query())
    copy = tmp_path / ("rendition" + (".flv" if name.endswith(".flv") else ".m4a"))
    copy.write_bytes(first.body)
    again = TestApp(AudioOnlyMiddleware(FileApp(copy, first.content_type))).get(query())
    assert again.body == first.body


# -- 5. raw AAC / MP3 and --info ----------------------------------------------------------------------


def _first_codec(name: str) -> str | None:
    streams = source_streams(name) if SHARED_MEDIA.is_dir() else ()
    return streams[0].codec if streams and streams[0].packets else None


AAC_FILES = [name for name in USABLE if _first_codec(name) == "aac"]
MP3_FILES = [name for name in USABLE if _first_codec(name) in ("mp3", "mp2")]
#: ADTS carries AAC Main/LC/SSR/LTP, with SBR/PS signalled implicitly (docs/cli.md).
ADTS_PROFILES = {"Main", "LC", "SSR", "LTP", "HE-AAC", "HE-AACv2"}


def ffmpeg_adts(name: str) -> bytes:
    """What FFmpeg's ADTS muxer writes from the source's first audio stream (stream copy)."""
    out = io.BytesIO()
    with av.open(str(SHARED_MEDIA / name)) as source, av.open(out, "w", format="adts") as sink:
        stream = source.streams.audio[0]
        target = sink.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.size:
                packet.stream = target
                sink.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize("name", _params(AAC_FILES))
def test_adts_copy(shared_media, name):
    stream = source_streams(name)[0]
    out = io.BytesIO()
    if stream.profile not in ADTS_PROFILES:  # xHE-AAC (USAC)...: needs a transcode, refused here
        with pytest.raises(UnsupportedMedia):
            write_audio(str(SHARED_MEDIA / name), out, "aac", allow_transcode=False)
        return
    summary = write_audio(str(SHARED_MEDIA / name), out, "aac", allow_transcode=False)
    assert summary["method"] == "copy"
    (adts,) = demux(out.getvalue(), "aac")
    assert [p[0][7:] for p in adts.packets] == [p[0] for p in stream.packets]
    assert out.getvalue() == ffmpeg_adts(name)
    assert adts.rate == stream.rate
    if not stream.profile.startswith("HE"):  # ADTS cannot say "no PS": FFmpeg may decode mono HE-AAC as stereo
        assert adts.channels == stream.channels


@pytest.mark.parametrize("name", _params(MP3_FILES))
def test_mp3_copy(shared_media, name):
    stream = source_streams(name)[0]
    out = io.BytesIO()
    if not _is_layer3(stream):  # Layer I/II in an MP3 file would be a lie: a transcode, refused here
        with pytest.raises(UnsupportedMedia):
            write_audio(str(SHARED_MEDIA / name), out, "mp3", allow_transcode=False)
        return
    summary = write_audio(str(SHARED_MEDIA / name), out, "mp3", allow_transcode=False)
    assert summary["method"] == "copy"
    assert out.getvalue() == b"".join(p[0] for p in stream.packets)  # an MP3 file is its frames
    if len(stream.packets) > 1:  # (FFmpeg does not recognise a file of one frame)
        (mp3,) = demux(out.getvalue(), "mp3")
        assert [p[0] for p in mp3.packets] == [p[0] for p in stream.packets]
        assert (mp3.rate, mp3.channels) == (stream.rate, stream.channels)


def _is_layer3(stream: Stream) -> bool:
    head = stream.packets[0][0][:4]
    return len(head) == 4 and head[0] == 0xFF and (head[1] >> 1) & 3 == 1


#: PyAV's codec names that ``--info`` spells otherwise.
CODEC_NAMES = {"mp3": ("mp3", "mp2"), "adpcm_swf": ("adpcm",)}
#: Its AudioSpecificConfig (escaped object type 36, MPEG-4 ALS) states an explicit 48016 Hz; FFmpeg
#: takes 48000 Hz from the ALSSpecificConfig inside it: the file disagrees with itself.
INFO_SKIPPED = {"mp4rust_mpeg4_als_escaped_aot.mp4"}
INFO_FILES = [name for name in USABLE if _first_codec(name) and name not in INFO_SKIPPED]


@pytest.mark.parametrize("name", _params(INFO_FILES))
def test_info_json(shared_media, name, capsys):
    """Every real file with audio: the facts PyAV finds (codec, rate, channels, language, frames, duration)."""
    assert cli_main([str(SHARED_MEDIA / name), "--info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    streams = source_streams(name)
    assert len(facts["tracks"]) == len(streams)
    for number, (track, stream) in enumerate(zip(facts["tracks"], streams, strict=True), 1):
        label = f"{name} track {number}: {track}"
        assert track["index"] == number
        assert track["codec"] in CODEC_NAMES.get(stream.codec, (stream.codec,)), label
        assert track["sample_rate"] == stream.rate, label
        if not stream.profile or not stream.profile.startswith("HE"):  # (PS may make mono HE-AAC stereo)
            assert track["channels"] == stream.channels, label
        check_info_counts(name, number - 1, track, stream)


def check_info_counts(name: str, index: int, track: dict, stream: Stream) -> None:
    """``samples``: MP4 samples (every one of stsz, also those an edit list hides), FLV audio frames;
    ``duration``: FLV frames x the codec's frame length (tags have no durations) or the tag times,
    MP4 the media's (PyAV's packets, give or take an edit list's trim)."""
    label = f"{name} track {index + 1}: {track}"
    if name.endswith(".flv"):
        assert track["samples"] == len(stream.packets), label
        with av.open(str(SHARED_MEDIA / name)) as container:
            frame = container.streams.audio[0].codec_context.frame_size
        stamps = [p[1] for p in stream.packets]
        spacing = stamps[-1] - stamps[-2] if len(stamps) > 1 else 0
        seconds = len(stamps) * frame / stream.rate if frame else (stamps[-1] - stamps[0] + spacing) / 1000
        assert track["duration"] == pytest.approx(seconds, abs=1e-5), label
        return
    movie = movie_of(name)
    if name not in GROUPED:  # (FFmpeg packs a chunk of constant-size samples into one packet)
        assert track["samples"] == (len(stream.packets) if movie.fragmented else movie.samples[index]), label
    seconds = float(sum(p[3] for p in stream.packets) * stream.time_base)
    assert track["duration"] == pytest.approx(seconds, abs=0.05), label
    assert track["language"] == (stream.language or "und"), label
