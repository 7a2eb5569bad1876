"""Time clipping (``start``/``end`` in seconds) of a non-fragmented movie.

:func:`clip_movie` turns the parsed ``moov`` into a new ``moov`` that holds only
the kept audio tracks, each with its sample tables cut down to the window; its
``stco``/``co64`` still hold *source* offsets, so the normal progressive planner
(:func:`~audio_middleware.mp4.progressive.plan_progressive`) can lay it out and
copy only the kept audio bytes. :func:`plan_clipped` does both steps.

Which samples are kept (per track):

* Times are *presentation* times of the source: a sample with decoding time
  ``dts`` is shown at ``empty / movie_timescale + (dts - media_time) / timescale``
  where ``empty`` sums the leading empty edits and ``media_time`` is the first
  non-empty edit's (no edit list: both 0). Composition offsets (``ctts``) are
  ignored: audio samples are presented in decoding order. Only the first
  non-empty edit is honoured; its end (when its duration is not 0) caps the media.
* The first kept sample is the one that contains ``start`` (so the audio begins
  at or before ``start``, by less than one frame). When the track has a sync
  sample table (``stss``), it is moved back to the nearest sync sample so that the
  output is decodable. ``start`` at or before the start of the presentation (e.g.
  ``start=0``) keeps everything from the first sample, priming included, exactly
  like no ``start``.
* The last kept sample is the last one that begins before ``end`` (so the audio
  ends at or after ``end``); no ``end`` keeps everything to the end of the edit.

Timestamps are rebased: output time 0 is the source presentation time of the
first kept audio (``plan.info["window"]["start"]``). The new edit list holds one
edit: ``media_time`` stays the source's when the window starts at the first sample
(priming samples stay hidden) and is 0 otherwise (more precisely ``max(0,
media_time - dts of the first kept sample)``, which is the same thing for every
real file); its duration is the kept media, capped by the source edit's end. When
several tracks are kept and begin at slightly different times (frame sizes
differ), the later ones get a leading empty edit so that they stay in sync.

A track with no sample in the window is dropped; no sample in any kept track
raises :class:`~audio_middleware.errors.RangeNotSatisfiable`. Fragmented movies
(``mvex``) raise :class:`~audio_middleware.errors.UnsupportedMedia`: their samples
live in ``moof`` boxes that are only found while streaming. Encrypted tracks
(``saiz``/``saio``/``senc`` in the sample table) are refused too.

Tables are sliced as arrays (run-length tables by bisection on cumulative counts);
no Python loop runs once per sample except over the entries of a kept ``stss``.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import accumulate, compress, islice, pairwise, repeat
from operator import mul, sub

import numpy as np

from ..errors import InvalidRequest, LimitExceeded, MalformedMedia, RangeNotSatisfiable, UnsupportedMedia
from ..limits import Limits
from ..plan import Plan
from .boxes import MAX_U32, Box, build_box, full_box_version, iter_children, only_child, rebuild
from .layout import Layout
from .movie import Movie, offsets_box, parse_movie, tref_edits
from .progressive import plan_progressive
from .tables import SampleSizes, big_endian_array, counted_entries
from .tracks import Track, chunk_first_samples_of

__all__ = ["clip_movie", "plan_clipped", "presented_samples", "ClippedMovie"]

LITTLE_ENDIAN = sys.byteorder == "little"
U32 = struct.Struct(">I")
FULL_HEAD = struct.Struct(">I")  # version (1 byte) + flags (3 bytes), written as one word
ELST_V0 = struct.Struct(">IiI")
ELST_V1 = struct.Struct(">QqI")
UNITY_RATE = 0x00010000
MAX_I32 = 0x7FFFFFFF
MAX_I64 = (1 << 63) - 1
#: Most patterns accepted in a ``csgp`` box: "compact" sample groups repeat a few patterns.
MAX_CSGP_PATTERNS = 1 << 16
MAX_U64 = (1 << 64) - 1
#: Float seconds are exact binary fractions: tolerate a thousandth of a tick at sample boundaries.
TICK_SLACK = Fraction(1, 1000)
#: Per-sample boxes we cannot slice without the decryption context.
ENCRYPTION_BOXES = frozenset({b"saiz", b"saio", b"senc"})
#: Per-sample boxes that are simply left out of a clipped table (optional, rarely used for audio).
DROPPED_BOXES = frozenset({b"subs", b"padb", b"stsh", b"cslg"})


@dataclass
class ClippedMovie:
    """The clipped ``moov`` and the source presentation times it covers (seconds)."""

    moov: bytes
    start: float
    end: float


def clip_movie(movie: Movie, kept: list[Track], start: float | None, end: float | None, limits: Limits) -> bytes:
    """A new ``moov`` keeping only ``kept`` audio tracks, their samples cut to ``[start, end)``.

    Chunk offsets stay source offsets. Raises :class:`RangeNotSatisfiable` when
    no kept track has a sample in the window.
    """
    return clip_window(movie, kept, start, end, limits).moov


def plan_clipped(layout: Layout, movie: Movie, kept: list[Track], source_size: int | None, limits: Limits,
                 start: float | None, end: float | None) -> Plan:
    """The progressive plan of the clipped movie; ``plan.info["window"]`` gives the source times kept."""
    clipped = clip_window(movie, kept, start, end, limits)
    new_movie = parse_movie(clipped.moov, limits)
    audio = [track for track in new_movie.tracks if track.is_audio]
    plan = plan_progressive(layout, new_movie, audio, source_size, limits)
    plan.info["window"] = {"start": clipped.start, "end": clipped.end}
    return plan


def clip_window(movie: Movie, kept: list[Track], start: float | None, end: float | None,
                limits: Limits) -> ClippedMovie:
    """:func:`clip_movie`, also returning the window actually kept."""
    start, end = _check_window(start, end)
    if movie.mvex is not None:
        raise UnsupportedMedia("seeking is not supported for fragmented MP4")
    movie_scale = movie.timescale
    if movie_scale == 0:
        raise MalformedMedia("mvhd timescale is 0")
    known = {id(track) for track in movie.tracks}
    cuts: list[_Cut] = []
    media_end = Fraction(0)
    for track in kept:
        if id(track) not in known or not track.is_audio or track.stbl is None:
            raise ValueError(f"track {track.track_id} is not an audio track of this movie")
        cut, track_end = _cut_track(movie.data, track, movie_scale, start, end, limits)
        media_end = max(media_end, track_end)
        if cut is not None:
            cuts.append(cut)
    if not cuts:
        if start is not None and start >= media_end:
            raise RangeNotSatisfiable(f"start={start:g}s is at or past the end of the audio ({float(media_end):.3f}s)")
        raise RangeNotSatisfiable(f"no audio sample lies in the window start={start}, end={end}")

    origin = min(cut.first for cut in cuts)
    data = movie.data
    edits: dict[int, bytes | None] = {}
    kept_ids = {cut.track.track_id for cut in cuts}
    for track in movie.tracks:
        if track.track_id not in kept_ids:
            edits[track.box.offset] = None
    durations = []
    for cut in cuts:
        empty = round((cut.first - origin) * movie_scale)
        durations.append(empty + cut.segment)
        edits.update(_track_edits(data, cut, empty, limits))
        edits.update(tref_edits(data, cut.track.box, kept_ids))
    mvhd = movie.mvhd
    edits[mvhd.offset] = _retime(data, mvhd, 1, max(durations))
    moov = rebuild(data, movie.moov, edits, max_depth=limits.max_box_depth)
    return ClippedMovie(moov, float(origin), float(max(cut.last for cut in cuts)))


def _check_window(start: float | None, end: float | None) -> tuple[float | None, float | None]:
    for name, value in (("start", start), ("end", end)):
        if value is not None and (math.isnan(value) or value < 0):
            raise InvalidRequest(f"{name} must be a number of seconds >= 0, not {value}")
    if start is not None and math.isinf(start):
        raise InvalidRequest("start must be finite")
    if end is not None and math.isinf(end):
        end = None
    if start is not None and end is not None and start >= end:
        raise InvalidRequest(f"start ({start}) must be before end ({end})")
    return start, end


# -- per track -----------------------------------------------------------------------------------


@dataclass
class _Edit:
    """The part of the source edit list that places the media on the timeline."""

    empty: int  # leading empty edits, movie timescale
    media_time: int  # where the first non-empty edit starts in the media (ticks)
    media_end: Fraction | None  # where it ends (ticks), None when open-ended


class _Timing:
    """Decoding times from ``stts`` runs: bisection on cumulative counts and durations."""

    def __init__(self, counts: array, deltas: array) -> None:
        if 0 in counts:
            keep = [count != 0 for count in counts]
            counts = array("I", compress(counts, keep))
            deltas = array("I", compress(deltas, keep))
        self.counts, self.deltas = counts, deltas
        self.first_sample = list(accumulate(counts, initial=0))
        self.first_time = list(accumulate(map(mul, counts, deltas), initial=0))
        self.samples = self.first_sample[-1]

    def dts(self, sample: int) -> int:
        """Decoding time of ``sample`` (``samples`` gives the end of the last one)."""
        runs = len(self.counts)
        if not runs:
            return 0
        run = max(bisect_right(self.first_sample, sample, 0, runs) - 1, 0)
        return self.first_time[run] + (sample - self.first_sample[run]) * self.deltas[run]

    def sample_at(self, ticks: int) -> int:
        """The last sample whose decoding time is at or before ``ticks`` (>= 0)."""
        runs = len(self.counts)
        run = max(bisect_right(self.first_time, ticks, 0, runs) - 1, 0)
        delta, count = self.deltas[run], self.counts[run]
        step = count - 1 if not delta else min(count - 1, (ticks - self.first_time[run]) // delta)
        return self.first_sample[run] + step

    def samples_before(self, stop: Fraction) -> int:
        """How many samples begin before ``stop`` (ticks, maybe fractional): a window ``[start, stop)`` keeps
        a frame that begins a rounding error (:data:`TICK_SLACK`) before ``stop``, not one at it."""
        before = math.ceil(stop - TICK_SLACK) - 1  # the last whole tick strictly before ``stop``
        return 0 if before < 0 else self.sample_at(before) + 1


@dataclass
class _Cut:
    """What to keep of one track, and where it lands on the source timeline."""

    track: Track
    stbl_children: list[Box]
    sizes: SampleSizes
    stsc: tuple[array, array, array]
    chunk_first: np.ndarray  # first sample of every chunk
    covered: int  # samples the chunks hold
    timing: _Timing
    first_sample: int
    end_sample: int
    media_time: int  # new edit's media_time
    segment: int  # new edit's duration, movie timescale
    first: Fraction  # source presentation time of the first presented instant (s)
    last: Fraction  # ... and of the end of the presented media


def _cut_track(data: bytes, track: Track, movie_scale: int, start: float | None, end: float | None,
               limits: Limits) -> tuple[_Cut | None, Fraction]:
    """Which samples of ``track`` the window keeps (None: none), and where the track ends (s)."""
    scale = track.timescale
    if scale == 0:
        raise MalformedMedia(f"track {track.track_id} has timescale 0")
    edit = _read_edit(data, track, scale, movie_scale, limits)
    children = list(iter_children(data, track.stbl.payload_offset, track.stbl.end))
    found = {child.type: child for child in children}
    for kind in ENCRYPTION_BOXES & found.keys():
        raise UnsupportedMedia(f"seeking is not supported for encrypted tracks ('{kind.decode()}' in track "
                               f"{track.track_id})")
    if b"stts" not in found:
        raise MalformedMedia(f"audio track {track.track_id} has no stts")
    counts, deltas = _runs(data, found[b"stts"], 0, limits)
    timing = _Timing(counts, deltas)
    size_box = found.get(b"stsz") or found.get(b"stz2")
    sizes = SampleSizes(data, size_box, limits.max_table_entries)
    stsc = _stsc(data, found[b"stsc"], limits)
    chunk_first, covered = chunk_first_samples_of(data, track, limits)
    total = min(sizes.count, covered, timing.samples)

    empty = Fraction(edit.empty, movie_scale)
    limit = Fraction(timing.dts(total))
    if edit.media_end is not None:
        limit = min(limit, edit.media_end)
    track_end = empty + max(limit - edit.media_time, 0) / scale
    if total == 0:
        return None, track_end

    if start is None or start <= empty:
        first_sample = 0
    else:
        ticks = edit.media_time + (Fraction(start) - empty) * scale
        if ticks >= limit:
            return None, track_end
        first_sample = min(timing.sample_at(math.floor(ticks + TICK_SLACK)), total - 1)
        if b"stss" in found:
            first_sample = _sync_at_or_before(data, found[b"stss"], first_sample, limits)

    stop = limit if end is None else min(limit, edit.media_time + (Fraction(end) - empty) * scale)
    if end is None and edit.media_end is None:
        end_sample = total
    else:
        end_sample = min(timing.samples_before(stop), total)
    if end_sample <= first_sample:
        return None, track_end

    first_dts = timing.dts(first_sample)
    media_time = max(0, edit.media_time - first_dts)
    shown_from = first_dts + media_time
    shown_to = min(Fraction(timing.dts(end_sample)), limit)
    if shown_to <= shown_from:
        return None, track_end
    segment = math.ceil((shown_to - shown_from) * movie_scale / scale)
    first = empty + Fraction(shown_from - edit.media_time, scale)
    last = empty + (shown_to - edit.media_time) / scale
    return _Cut(track, children, sizes, stsc, chunk_first, covered, timing, first_sample, end_sample, media_time,
                segment, first, last), track_end


def _edit_entries(data: bytes, track: Track, limits: Limits) -> Iterator[tuple[int, int]]:
    """The track's edits as (duration in the movie timescale, media_time), lazily; none without an edit list."""
    edts = only_child(data, track.box, b"edts", required=False)
    elst = None if edts is None else only_child(data, edts, b"elst", required=False)
    if elst is None:
        return
    version = full_box_version(data, elst)
    entry = ELST_V1 if version == 1 else ELST_V0
    count, first = counted_entries(data, elst, 4, entry.size, limits.max_table_entries)
    for duration, media_time, _rate in entry.iter_unpack(memoryview(data)[first:first + count * entry.size]):
        yield duration, media_time


def _read_edit(data: bytes, track: Track, scale: int, movie_scale: int, limits: Limits) -> _Edit:
    """Leading empty edits and the first non-empty edit of the track (no edit list: identity)."""
    empty = 0
    for duration, media_time in _edit_entries(data, track, limits):
        if media_time < 0:  # -1: an empty edit (other negative values are treated alike)
            empty += duration
            continue
        media_end = None if duration == 0 else media_time + Fraction(duration * scale, movie_scale)
        return _Edit(empty, media_time, media_end)
    return _Edit(0, 0, None)  # only empty edits: present the media as it is


def presented_samples(movie: Movie, track: Track, limits: Limits) -> int | None:
    """How many samples of ``track`` begin before the end of its only media edit.

    The samples after it are never presented: demuxers drop them (FFmpeg does) and a
    clip never keeps them, so raw outputs that cannot carry an edit list (ADTS, MP3)
    must leave them out too. Leading samples hidden by ``media_time`` (priming) are
    not counted out: decoders need them. None when nothing ends the media: no edit
    list, an open edit (duration 0), several media edits (their union is shown), or
    a fragmented movie (its edit also spans the fragments).
    """
    if movie.fragmented or track.stbl is None or not movie.timescale or not track.timescale:
        return None
    media_edits = (time for _, time in _edit_entries(movie.data, track, limits) if time >= 0)
    if sum(1 for _ in islice(media_edits, 2)) != 1:
        return None
    edit = _read_edit(movie.data, track, track.timescale, movie.timescale, limits)
    stts = only_child(movie.data, track.stbl, b"stts", required=False)
    if edit.media_end is None or stts is None:
        return None
    timing = _Timing(*_runs(movie.data, stts, 0, limits))
    if not timing.samples or edit.media_end >= timing.dts(timing.samples):
        return None  # the edit ends after the timed samples (or nothing is timed): it cuts nothing
    return timing.samples_before(edit.media_end)


def _runs(data: bytes, box: Box, head: int, limits: Limits) -> tuple[array, array]:
    """A table of (count, value) u32 pairs placed after ``head`` bytes (past version/flags)."""
    count, first = counted_entries(data, box, 4 + head, 8, limits.max_table_entries)
    pairs = big_endian_array("I", data[first:first + count * 8])
    return pairs[0::2], pairs[1::2]


def _stsc(data: bytes, box: Box, limits: Limits) -> tuple[array, array, array]:
    """``stsc`` as three arrays: first_chunk (1-based), samples_per_chunk, sample_description_index."""
    count, first = counted_entries(data, box, 4, 12, limits.max_table_entries)
    table = big_endian_array("I", data[first:first + count * 12])
    firsts = table[0::3]
    if not all(a < b for a, b in pairwise(firsts)):
        raise MalformedMedia("stsc first_chunk values do not increase")
    return firsts, table[1::3], table[2::3]


def _sync_at_or_before(data: bytes, stss: Box, sample: int, limits: Limits) -> int:
    """The nearest sync sample at or before ``sample`` (0-based); unchanged if there is none."""
    sync = _sync_samples(data, stss, limits)
    index = bisect_right(sync, sample + 1) - 1
    return sync[index] - 1 if index >= 0 and sync[index] >= 1 else sample


def _sync_samples(data: bytes, stss: Box, limits: Limits) -> array:
    count, first = counted_entries(data, stss, 4, 4, limits.max_table_entries)
    sync = big_endian_array("I", data[first:first + count * 4])
    if not all(a < b for a, b in pairwise(sync)):
        sync = array("I", sorted(set(sync)))
    return sync


# -- rewriting one track ---------------------------------------------------------------------------


def _track_edits(data: bytes, cut: _Cut, empty: int, limits: Limits) -> dict[int, bytes | None]:
    """Replacement boxes for one kept track: stbl, mdhd, tkhd and its edit list."""
    track = cut.track
    edits: dict[int, bytes | None] = {track.stbl.offset: _new_stbl(data, cut, limits)}
    mdia = only_child(data, track.box, b"mdia")
    mdhd = only_child(data, mdia, b"mdhd")
    edits[mdhd.offset] = _retime(data, mdhd, 1, cut.timing.dts(cut.end_sample) - cut.timing.dts(cut.first_sample))
    tkhd = only_child(data, track.box, b"tkhd")
    new_tkhd = _retime(data, tkhd, 2, empty + cut.segment)
    edts = build_box(b"edts", _elst(empty, cut.segment, cut.media_time))
    old_edts = only_child(data, track.box, b"edts", required=False)
    if old_edts is None:
        edits[tkhd.offset] = new_tkhd + edts  # the edit list follows tkhd
    else:
        edits[tkhd.offset] = new_tkhd
        edits[old_edts.offset] = edts
    return edits


def _check_time(value: int, limit: int, what: str) -> int:
    """A computed duration or time, refused (MalformedMedia) when it does not fit its 64-bit field:
    tables whose times add up past 2**64 describe no real file."""
    if not 0 <= value <= limit:
        raise MalformedMedia(f"clipped {what} ({value}) does not fit a 64-bit field")
    return value


def _elst(empty: int, segment: int, media_time: int) -> bytes:
    _check_time(empty, MAX_U64, "edit duration")
    _check_time(segment, MAX_U64, "edit duration")
    _check_time(media_time, MAX_I64, "media time")
    entries = ([(empty, -1)] if empty > 0 else []) + [(segment, media_time)]
    wide = max(empty, segment) > MAX_U32 or media_time > MAX_I32
    entry = ELST_V1 if wide else ELST_V0
    body = b"".join(entry.pack(duration, media, UNITY_RATE) for duration, media in entries)
    return build_box(b"elst", FULL_HEAD.pack((1 if wide else 0) << 24), U32.pack(len(entries)), body)


def _retime(data: bytes, box: Box, middle: int, duration: int) -> bytes:
    """``mvhd``/``mdhd`` (middle=1: timescale) or ``tkhd`` (middle=2: track_ID, reserved) with a new duration.

    Version 0 is upgraded to version 1 when the duration needs 64 bits.
    """
    payload = data[box.payload_offset:box.end]
    version = full_box_version(data, box)
    wide_in = version == 1
    times = struct.Struct(">QQ" if wide_in else ">II")
    middle_at = 4 + times.size
    duration_at = middle_at + 4 * middle
    rest_at = duration_at + (8 if wide_in else 4)
    if len(payload) < rest_at:
        raise MalformedMedia(f"'{box.name}' at byte {box.offset} is too short")
    created, modified = times.unpack_from(payload, 4)
    _check_time(duration, MAX_U64, f"'{box.name}' duration")
    wide = wide_in or duration > MAX_U32
    out = bytearray([1 if wide else 0]) + payload[1:4]
    out += struct.pack(">QQ" if wide else ">II", created, modified)
    out += payload[middle_at:duration_at]
    out += struct.pack(">Q" if wide else ">I", duration)
    out += payload[rest_at:]
    return build_box(box.type, bytes(out))


def _new_stbl(data: bytes, cut: _Cut, limits: Limits) -> bytes:
    lo, hi = cut.first_sample, cut.end_sample
    parts: list[bytes] = []
    for child in cut.stbl_children:
        kind = child.type
        if kind == b"stts":
            parts.append(_runs_box(b"stts", b"\0\0\0\0", *_slice_runs(cut.timing.counts, cut.timing.deltas, lo, hi)))
        elif kind in (b"stsz", b"stz2"):
            parts.append(_stsz(cut.sizes, lo, hi))
        elif kind == b"stsc":
            stsc, offsets = _chunks(cut)
            parts.append(stsc)
            parts.append(offsets)
        elif kind in (b"stco", b"co64"):
            continue  # written right after stsc
        elif kind == b"ctts":
            head = bytes(data[child.payload_offset:child.payload_offset + 4])
            parts.append(_runs_box(b"ctts", head, *_slice_runs(*_runs(data, child, 0, limits), lo, hi)))
        elif kind == b"sbgp":
            parts.append(_sbgp(data, child, lo, hi, limits))
        elif kind == b"stss":
            parts.append(_stss(data, child, lo, hi, limits))
        elif kind == b"sdtp":
            parts.append(_per_sample_bytes(data, child, 1, lo, hi))
        elif kind == b"stdp":
            parts.append(_per_sample_bytes(data, child, 2, lo, hi))
        elif kind == b"csgp":
            parts.append(_csgp(data, child, lo, hi, limits))
        elif kind in DROPPED_BOXES:
            continue
        else:
            parts.append(bytes(data[child.offset:child.end]))
    return build_box(b"stbl", *parts)


def _slice_runs(counts: Sequence[int], values: Sequence[int], lo: int, hi: int) -> tuple[array, array]:
    """Run-length table (counts, values) restricted to items ``[lo, hi)``, zero-count runs dropped."""
    starts = list(accumulate(counts, initial=0))
    hi = min(hi, starts[-1])
    if lo >= hi:
        return array("I"), array("I")
    runs = len(counts)
    first = bisect_right(starts, lo, 0, runs) - 1
    last = bisect_left(starts, hi, 0, runs) - 1
    new_counts = array("I", counts[first:last + 1])
    new_values = array("I", values[first:last + 1])
    new_counts[0] -= lo - starts[first]
    new_counts[-1] -= starts[last + 1] - hi
    if 0 in new_counts:
        keep = [count != 0 for count in new_counts]
        new_counts = array("I", compress(new_counts, keep))
        new_values = array("I", compress(new_values, keep))
    return new_counts, new_values


def _be_bytes(values: array) -> bytes:
    values = array(values.typecode, values)
    if LITTLE_ENDIAN:
        values.byteswap()
    return values.tobytes()


def _runs_box(kind: bytes, head: bytes, counts: array, values: array, extra: bytes = b"") -> bytes:
    pairs = array("I", bytes(8 * len(counts)))
    pairs[0::2] = counts
    pairs[1::2] = values
    return build_box(kind, head, extra, U32.pack(len(counts)), _be_bytes(pairs))


def _stsz(sizes: SampleSizes, lo: int, hi: int) -> bytes:
    if sizes.sizes is None:
        return build_box(b"stsz", b"\0\0\0\0", struct.pack(">II", sizes.constant, hi - lo))
    return build_box(b"stsz", b"\0\0\0\0", struct.pack(">II", 0, hi - lo), sizes.sizes[lo:hi].astype(">u4").tobytes())


def _chunks(cut: _Cut) -> tuple[bytes, bytes]:
    """New ``stsc`` and ``stco``/``co64`` for samples ``[lo, hi)``: partial end chunks shrink.

    The stsc entries covering the kept chunks are sliced as arrays and renumbered;
    the first and last kept chunks get an entry of their own when they lose samples.
    """
    track, lo, hi = cut.track, cut.first_sample, cut.end_sample
    firsts, per_chunk, descriptions = cut.stsc
    chunk_first = cut.chunk_first
    chunks = len(chunk_first)
    first = bisect_right(chunk_first, lo) - 1
    last = bisect_right(chunk_first, hi - 1) - 1
    kept_chunks = last - first + 1
    e0 = bisect_right(firsts, first + 1) - 1
    e1 = bisect_right(firsts, last + 1) - 1
    # 1-based chunk numbers within the kept chunks; the first entry starts at the first kept chunk
    starts = array("I", [1]) + array("I", map(sub, firsts[e0 + 1:e1 + 1], repeat(first)))
    pers = per_chunk[e0:e1 + 1]
    descs = descriptions[e0:e1 + 1]
    end_of_first = chunk_first[first + 1] if first + 1 < chunks else cut.covered
    head = min(hi, end_of_first) - lo
    if pers[0] != head:
        if (starts[1] if len(starts) > 1 else kept_chunks + 1) == 2:  # the entry holds just this chunk
            pers[0] = head
        else:
            starts[0] = 2
            starts.insert(0, 1)
            pers.insert(0, head)
            descs.insert(0, descs[0])
    if last > first and pers[-1] != hi - chunk_first[last]:
        if starts[-1] == kept_chunks:
            pers[-1] = hi - chunk_first[last]
        else:
            starts.append(kept_chunks)
            pers.append(hi - chunk_first[last])
            descs.append(descs[-1])
    for at in (1, -1):  # an edge entry may now repeat its neighbour
        if len(starts) > 1 and pers[at] == pers[at - 1] and descs[at] == descs[at - 1]:
            del starts[at], pers[at], descs[at]
    lengths = map(sub, starts[1:] + array("I", [kept_chunks + 1]), starts)
    if sum(map(mul, lengths, pers)) != hi - lo:
        raise MalformedMedia(f"stsc of track {track.track_id} does not match its chunks")
    table = array("I", bytes(12 * len(starts)))
    table[0::3], table[1::3], table[2::3] = starts, pers, descs
    stsc = build_box(b"stsc", b"\0\0\0\0", U32.pack(len(starts)), _be_bytes(table))
    offsets = array("Q", track.chunk_offsets[first:last + 1])
    sizes = cut.sizes
    if sizes.sizes is None:
        offsets[0] += (lo - chunk_first[first]) * sizes.constant
    else:
        offsets[0] += int(sizes.sizes[chunk_first[first]:lo].sum(dtype=np.int64))
    return stsc, offsets_box(offsets, max(offsets) > MAX_U32)


def _sbgp(data: bytes, box: Box, lo: int, hi: int, limits: Limits) -> bytes:
    version = full_box_version(data, box)
    head = 8 if version == 1 else 4  # grouping_type [+ grouping_type_parameter]
    counts, groups = _runs(data, box, head, limits)
    prefix = bytes(data[box.payload_offset:box.payload_offset + 4])
    extra = bytes(data[box.payload_offset + 4:box.payload_offset + 4 + head])
    return _runs_box(b"sbgp", prefix, *_slice_runs(counts, groups, lo, hi), extra=extra)


def _stss(data: bytes, box: Box, lo: int, hi: int, limits: Limits) -> bytes:
    sync = _sync_samples(data, box, limits)
    kept = sync[bisect_right(sync, lo):bisect_right(sync, hi)]  # 1-based numbers lo+1 .. hi
    renumbered = array("I", (number - lo for number in kept))
    head = bytes(data[box.payload_offset:box.payload_offset + 4])
    return build_box(b"stss", head, U32.pack(len(renumbered)), _be_bytes(renumbered))


def _per_sample_bytes(data: bytes, box: Box, width: int, lo: int, hi: int) -> bytes:
    """``sdtp`` (1 byte per sample) / ``stdp`` (2 bytes): entries after version/flags, count implied."""
    if box.payload_size < 4:
        raise MalformedMedia(f"'{box.name}' at byte {box.offset} is too short")
    first = box.payload_offset + 4
    available = (box.end - first) // width
    lo, hi = min(lo, available), min(hi, available)
    return build_box(box.type, bytes(data[box.payload_offset:first]),
                     bytes(data[first + lo * width:first + hi * width]))


def _csgp(data: bytes, box: Box, lo: int, hi: int, limits: Limits) -> bytes:
    """``csgp`` (compact sample-to-group, ISO/IEC 14496-12 8.9.5) restricted to samples ``[lo, hi)``.

    Each pattern of group indices repeats over its ``sample_count`` samples; a
    pattern cut at the front is rotated so that it starts at the first kept sample.
    All fields are multiples of 4 bits, so they are read and written as hex digits.
    """
    if box.payload_size < 12:
        raise MalformedMedia(f"csgp at byte {box.offset} is too short")
    at = box.payload_offset
    flags = U32.unpack_from(data, at)[0] & 0xFFFFFF
    head = 8 + (4 if flags & 0x40 else 0)
    pattern_count, digits_at = counted_entries(data, box, head, 0, limits.max_table_entries)
    if pattern_count > MAX_CSGP_PATTERNS:  # each costs Python work and memory; a compact group has few
        raise LimitExceeded(f"csgp at byte {box.offset} has {pattern_count} patterns (at most {MAX_CSGP_PATTERNS})")
    width = [1 << ((flags >> shift) & 3) for shift in (4, 2, 0)]  # hex digits per field: 1, 2, 4 or 8
    digits = bytes(data[digits_at:box.end]).hex()
    pair = width[0] + width[1]
    if pattern_count * pair > len(digits):
        raise MalformedMedia(f"csgp at byte {box.offset} claims {pattern_count} patterns, room for fewer")
    heads = [(int(digits[i:i + width[0]], 16), int(digits[i + width[0]:i + pair], 16))
             for i in range(0, pattern_count * pair, pair)]
    needed = pattern_count * pair + sum(length for length, _ in heads) * width[2]
    if needed > len(digits) or sum(length for length, _ in heads) > limits.max_table_entries:
        raise MalformedMedia(f"csgp at byte {box.offset} holds fewer group indices than its patterns need")
    position = pattern_count * pair
    sample = 0
    out: list[tuple[int, int, str]] = []  # (pattern_length, sample_count, index digits)
    for length, count in heads:
        indices = digits[position:position + length * width[2]]
        position += length * width[2]
        begin, stop = max(lo, sample), min(hi, sample + count)
        if begin < stop:
            phase = (begin - sample) % length if length else 0
            cut_at = phase * width[2]
            rotated = indices[cut_at:] + indices[:cut_at]
            kept = min(length, stop - begin)
            out.append((kept, stop - begin, rotated[:kept * width[2]]))
        sample += count
        if sample >= hi:
            break
    fields = "".join(f"{length:0{width[0]}x}{count:0{width[1]}x}" for length, count, _ in out)
    fields += "".join(indices for _, _, indices in out)
    if len(fields) % 2:
        fields += "0"
    return build_box(b"csgp", bytes(data[at:at + head]), U32.pack(len(out)), bytes.fromhex(fields))
