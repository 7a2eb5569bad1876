"""Fragmented MP4 (moov + moof/mdat pairs): keep only the audio track fragments.

Each ``moof`` keeps its audio ``traf`` boxes; their ``trun`` data offsets are
rewritten relative to the new moof (``default-base-is-moof``), and the
following ``mdat`` holds only the audio sample runs. ``sidx``, ``mfra``,
``styp`` and other indexes that would describe the old layout are dropped.

On a random-access source every moof is read up front (payloads skipped), so
the plan is complete; on a forward-only source the plan is lazy and walks the
fragments as the bytes go by.

The samples the moov itself describes (a partially fragmented file) go right
after the new moov, where its chunk offsets put them, wherever they lie in the
file; a forward-only source can stream them only if they come before every
fragment with audio.
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain

import numpy as np

from ..errors import LimitExceeded, MalformedMedia, NeedsRandomAccess, UnsupportedMedia
from ..limits import Limits
from ..plan import LazyPlan, Literal, Piece, Plan, Span, Spans
from ..sources import Source, read_exact
from .boxes import Box, box_header, build_box, full_box_version, iter_children, parse_header
from .layout import Layout, check_gone_past, read_top_header
from .movie import Movie
from .progressive import build_head, content_type_for, describe
from .tracks import Track

U32 = struct.Struct(">I")
I32 = struct.Struct(">i")
U64 = struct.Struct(">Q")
FULL_BOX = struct.Struct(">I")

#: moof and traf children copied as they are (tfhd/trun/traf are rewritten; the rest is dropped).
MOOF_KEPT = frozenset({b"mfhd", b"pssh"})
TRAF_KEPT = frozenset({b"tfdt", b"sbgp", b"sgpd", b"subs", b"sdtp"})
MAX_DATA_OFFSET = 0x7FFFFFFF

# tfhd flags (ISO/IEC 14496-12 8.8.7)
BASE_DATA_OFFSET = 0x000001
SAMPLE_DESCRIPTION_INDEX = 0x000002
DEFAULT_DURATION = 0x000008
DEFAULT_SIZE = 0x000010
DEFAULT_FLAGS = 0x000020
DEFAULT_BASE_IS_MOOF = 0x020000
# trun flags (8.8.8)
DATA_OFFSET = 0x000001
FIRST_SAMPLE_FLAGS = 0x000004
SAMPLE_DURATION = 0x000100
SAMPLE_SIZE = 0x000200
SAMPLE_FLAGS = 0x000400
SAMPLE_CTO = 0x000800


@dataclass
class TrackRun:
    """One ``trun`` of a kept track: its box, where its samples are, how many bytes."""

    box: Box
    source_offset: int
    length: int
    new_offset: int = 0


def trex_defaults(movie: Movie) -> dict[int, tuple[int, int]]:
    """(default_sample_duration, default_sample_size) per track from ``mvex/trex``."""
    found: dict[int, tuple[int, int]] = {}
    if movie.mvex is None:
        return found
    data = movie.data
    for child in iter_children(data, movie.mvex.payload_offset, movie.mvex.end):
        if child.type == b"trex" and child.payload_size >= 24:
            track_id, _, duration, size = struct.unpack_from(">IIII", data, child.payload_offset + 4)
            found[track_id] = (duration, size)
    return found


def parse_tfhd(data: bytes, tfhd: Box) -> tuple[int, int, int | None, int | None, int | None]:
    """(flags, track_ID, base_data_offset, default_sample_duration, default_sample_size) of a ``tfhd``."""
    full_box_version(data, tfhd)
    flags = FULL_BOX.unpack_from(data, tfhd.payload_offset)[0] & 0xFFFFFF
    fields = [(BASE_DATA_OFFSET, 8), (SAMPLE_DESCRIPTION_INDEX, 4), (DEFAULT_DURATION, 4), (DEFAULT_SIZE, 4),
              (DEFAULT_FLAGS, 4)]
    need = 8 + sum(width for bit, width in fields if flags & bit)
    if tfhd.payload_size < need:
        raise MalformedMedia(f"tfhd at moof byte {tfhd.offset} is too short for its flags")
    track_id = U32.unpack_from(data, tfhd.payload_offset + 4)[0]
    values: dict[int, int] = {}
    at = tfhd.payload_offset + 8
    for bit, width in fields:
        if flags & bit:
            values[bit] = (U64 if width == 8 else U32).unpack_from(data, at)[0]
            at += width
    return flags, track_id, values.get(BASE_DATA_OFFSET), values.get(DEFAULT_DURATION), values.get(DEFAULT_SIZE)


def trun_layout(data: bytes, trun: Box, max_entries: int) -> tuple[int, int, int | None, int, int]:
    """(flags, sample_count, data_offset, first record offset, record width) of a ``trun``."""
    full_box_version(data, trun)
    if trun.payload_size < 8:
        raise MalformedMedia(f"trun at moof byte {trun.offset} is too short")
    flags = FULL_BOX.unpack_from(data, trun.payload_offset)[0] & 0xFFFFFF
    count = U32.unpack_from(data, trun.payload_offset + 4)[0]
    if count > max_entries:
        raise LimitExceeded(f"trun has {count} samples, more than the limit of {max_entries}")
    at = trun.payload_offset + 8
    data_offset = None
    if flags & DATA_OFFSET:
        data_offset = I32.unpack_from(data, at)[0] if trun.end - at >= 4 else None
        at += 4
    if flags & FIRST_SAMPLE_FLAGS:
        at += 4
    width = 4 * sum(1 for bit in (SAMPLE_DURATION, SAMPLE_SIZE, SAMPLE_FLAGS, SAMPLE_CTO) if flags & bit)
    if at > trun.end or count * width > trun.end - at:
        raise MalformedMedia(f"trun at moof byte {trun.offset} claims {count} samples it has no room for")
    return flags, count, data_offset, at, width


def _run_length(data: bytes, flags: int, count: int, first: int, width: int, default_size: int | None) -> int:
    """Bytes of one ``trun``'s samples: its size column summed in place (a 16 MiB moof may hold 4 million
    sizes; unpacked into Python ints they took 9 times the moof, and seconds), or ``count`` default sizes."""
    if flags & SAMPLE_SIZE:
        column = 1 if flags & SAMPLE_DURATION else 0
        records = np.frombuffer(data, ">u4", count * width // 4, first)
        return int(records[column::width // 4].sum(dtype=np.uint64))
    if default_size is None:
        raise MalformedMedia("track fragment gives no sample size (trun, tfhd and trex all lack one)")
    return count * default_size


def _with_data_offset(data: bytes, trun: Box, data_offset: int) -> bytes:
    """The ``trun`` with data-offset-present set and ``data_offset`` stored."""
    flags_word = FULL_BOX.unpack_from(data, trun.payload_offset)[0]
    rest_at = trun.payload_offset + 8 + (4 if flags_word & DATA_OFFSET else 0)
    return build_box(b"trun", FULL_BOX.pack(flags_word | DATA_OFFSET), data[trun.payload_offset + 4:
                     trun.payload_offset + 8], I32.pack(data_offset), data[rest_at:trun.end])


def _moof_relative_tfhd(data: bytes, tfhd: Box) -> bytes:
    """The ``tfhd`` without base_data_offset and with default-base-is-moof set."""
    flags_word = FULL_BOX.unpack_from(data, tfhd.payload_offset)[0]
    rest_at = tfhd.payload_offset + 8 + (8 if flags_word & BASE_DATA_OFFSET else 0)
    new_flags = (flags_word & ~BASE_DATA_OFFSET) | DEFAULT_BASE_IS_MOOF
    return build_box(b"tfhd", FULL_BOX.pack(new_flags), data[tfhd.payload_offset + 4:tfhd.payload_offset + 8],
                     data[rest_at:tfhd.end])


class Fragment:
    """One ``moof`` reduced to the kept tracks, with the runs its new mdat will hold."""

    def __init__(self, moof_data: bytes, moof_offset: int, kept_ids: set[int], trex: dict[int, tuple[int, int]],
                 limits: Limits) -> None:
        self.data = moof_data
        self.offset = moof_offset
        self.runs: list[TrackRun] = []
        self._kept_trafs: dict[int, tuple[Box, Box, list[TrackRun]]] = {}  # by traf offset
        self._children: list[Box] = []
        moof = parse_header(moof_data, 0, len(moof_data))
        self.moof = moof
        previous_end = moof_offset
        for child in iter_children(moof_data, moof.payload_offset, moof.end):
            self._children.append(child)
            if child.type == b"traf":
                previous_end = self._read_traf(child, previous_end, kept_ids, trex, limits)
        self.runs.sort(key=lambda run: run.source_offset)
        filled = [run for run in self.runs if run.length]  # an empty run holds no bytes: it overlaps nothing
        for before, after in zip(filled, filled[1:], strict=False):
            if before.source_offset + before.length > after.source_offset:
                raise MalformedMedia(f"track runs overlap at byte {after.source_offset}")

    @property
    def end(self) -> int:
        """Where the fragment's last audio byte ends in the source (0 without audio)."""
        return max((run.source_offset + run.length for run in self.runs), default=0)

    def _read_traf(self, traf: Box, previous_end: int, kept_ids: set[int], trex: dict[int, tuple[int, int]],
                   limits: Limits) -> int:
        data = self.data
        tfhd: Box | None = None
        truns: list[Box] = []
        for child in iter_children(data, traf.payload_offset, traf.end):
            if child.type == b"tfhd":
                if tfhd is not None:
                    raise MalformedMedia("traf holds two tfhd boxes")
                tfhd = child
            elif child.type == b"trun":
                truns.append(child)
        if tfhd is None:
            raise MalformedMedia("traf has no tfhd")
        flags, track_id, base, _duration, default_size = parse_tfhd(data, tfhd)
        if default_size is None and track_id in trex:
            default_size = trex[track_id][1]
        if base is None:
            base = self.offset if flags & DEFAULT_BASE_IS_MOOF else previous_end
        runs: list[TrackRun] = []
        position = base
        for trun in truns:
            trun_flags, count, data_offset, first, width = trun_layout(data, trun, limits.max_table_entries)
            if data_offset is not None:
                position = base + data_offset
            if position < 0:
                raise MalformedMedia("trun data offset points before the start of the file")
            length = _run_length(data, trun_flags, count, first, width, default_size)
            runs.append(TrackRun(trun, position, length))
            position += length
        if track_id in kept_ids:
            if any(child.type == b"saio" for child in iter_children(data, traf.payload_offset, traf.end)):
                raise UnsupportedMedia("encrypted fragmented MP4 (saio) is not supported")
            self._kept_trafs[traf.offset] = (traf, tfhd, runs)
            self.runs.extend(runs)
        return position

    @property
    def payload(self) -> int:
        return sum(run.length for run in self.runs)

    def rewrite(self, new_moof_offset: int) -> bytes:
        """New ``moof`` + ``mdat`` header for output position ``new_moof_offset``."""
        header = box_header(b"mdat", self.payload)
        size = len(self._serialize())
        position = new_moof_offset + size + len(header)
        for run in self.runs:
            run.new_offset = position - new_moof_offset
            position += run.length
        if self.runs and self.runs[-1].new_offset > MAX_DATA_OFFSET:
            raise LimitExceeded("the audio of one fragment exceeds 2 GiB (trun data_offset is a signed 32-bit field)")
        moof = self._serialize()
        if len(moof) != size:
            raise MalformedMedia("rewritten moof changed size between passes")
        return moof + header

    def _serialize(self) -> bytes:
        """The moof in its original child order: known boxes only, audio trafs rewritten.

        Anything else a moof or traf may hold (a nested mdat in a hostile file,
        vendor boxes describing the old layout) is dropped rather than shipped.
        """
        data = self.data
        parts = []
        for box in self._children:
            if box.type in MOOF_KEPT:
                parts.append(data[box.offset:box.end])
            elif box.offset in self._kept_trafs:
                parts.append(self._traf(*self._kept_trafs[box.offset]))
        return build_box(b"moof", *parts)

    def _traf(self, traf: Box, tfhd: Box, runs: list[TrackRun]) -> bytes:
        data = self.data
        by_box = {run.box.offset: run for run in runs}
        children = []
        for child in iter_children(data, traf.payload_offset, traf.end):
            if child.type == b"tfhd":
                children.append(_moof_relative_tfhd(data, tfhd))
            elif child.type == b"trun":
                children.append(_with_data_offset(data, child, by_box[child.offset].new_offset))
            elif child.type in TRAF_KEPT:
                children.append(data[child.offset:child.end])
        return build_box(b"traf", *children)


def _walk(source: Source, start: int, interleaved: Spans, out_position: int, kept_ids: set[int],
          trex: dict[int, tuple[int, int]], limits: Limits) -> Iterator[Piece]:
    """Pieces after the head: the progressive spans still to send, then each reduced fragment, in source order.

    ``interleaved`` are the progressive spans (the moov's own samples, in a partially
    fragmented file) that a forward-only source gives as it goes by: they go out as
    slices of that :class:`Spans`, each before the first top-level box that ends after
    them. The new moov puts all of them right after its mdat header, before any
    fragment, so a fragment with audio met while some are still to come cannot be
    streamed in one pass (:class:`UnsupportedMedia`, rather than a moof inside that
    mdat). ``out_position`` is where the first fragment goes in the output. The header
    of the box after a ``moof`` is read before the fragment's spans are yielded: on a
    forward-only source those spans move the read position past it. The walk begins
    at top-level offset ``start``.
    """
    offsets, lengths = interleaved.offsets, interleaved.lengths
    sent = 0  # progressive spans already yielded
    box = read_top_header(source, start)
    for _ in range(limits.max_top_level_boxes * 100):
        if box is None:
            break
        upto = bisect_left(offsets, box.end, lo=sent)
        if upto > sent:
            yield Spans(offsets[sent:upto], lengths[sent:upto])
            sent = upto
        if box.type != b"moof":
            box = read_top_header(source, box.end)
            continue
        pieces = _fragment_pieces(source, box, kept_ids, trex, limits, out_position)
        if pieces and sent < len(offsets):
            raise UnsupportedMedia(f"audio described by the moov lies after the fragment at byte {box.offset}: "
                                   "a forward-only body cannot put it back in front")
        box = read_top_header(source, box.end)
        for piece in pieces:
            out_position += piece.length
            yield piece
    else:
        raise LimitExceeded("too many top-level boxes")
    if sent < len(offsets):
        yield Spans(offsets[sent:], lengths[sent:])


def read_moof(source: Source, moof: Box, limits: Limits) -> bytes:
    """The bytes of one ``moof`` box, bounded by ``limits.max_moof_size`` before anything is read."""
    if moof.size > limits.max_moof_size:
        raise LimitExceeded(f"moof of {moof.size} bytes exceeds max_moof_size ({limits.max_moof_size})")
    return read_exact(source, moof.offset, moof.size, "a moof box")


def _fragment_pieces(source: Source, moof: Box, kept_ids: set[int], trex: dict[int, tuple[int, int]], limits: Limits,
                     out_position: int) -> list[Piece]:
    """The new moof + mdat header and the audio runs of one fragment (nothing if it has no audio)."""
    fragment = Fragment(read_moof(source, moof, limits), moof.offset, kept_ids, trex, limits)
    if not fragment.runs:
        return []
    if source.size is not None and fragment.end > source.size:  # any run, not only the last one by offset
        raise MalformedMedia(f"fragment at byte {moof.offset} points past the end of the file")
    pieces: list[Piece] = [Literal(fragment.rewrite(out_position))]
    pieces.extend(Span(run.source_offset, run.length) for run in fragment.runs if run.length)
    return pieces


def plan_fragmented(source: Source, layout: Layout, movie: Movie, kept: list[Track], limits: Limits
                    ) -> Plan | LazyPlan:
    """Plan for a movie with ``mvex``: moov samples (if any) plus every fragment's audio."""
    head = build_head(layout, movie, kept, source.size, limits, omit_empty_mdat=True)
    kept_ids = {track.track_id for track in kept}
    content_type = content_type_for(layout.major_brand)
    info = describe(layout, kept, True)
    after_head = head.length + head.spans.length
    trex = trex_defaults(movie)
    if source.random_access:
        # The new moov puts the moov-described samples right after its mdat header, wherever they lie in the
        # file (even after some fragments): they go first. A file may hold fragments before its moov: walk
        # from the start.
        first = [head.spans] if len(head.spans) else []
        pieces = _walk(source, 0, Spans((), ()), after_head, kept_ids, trex, limits)
        return Plan((*head.literals, *first, *pieces), content_type, info)
    # A forward-only source is past the moov (it was read before any media data).
    start = _streamable_from(source, layout, head.spans, kept_ids, trex, limits)
    pieces = _walk(source, start, head.spans, after_head, kept_ids, trex, limits)
    return LazyPlan(chain(head.literals, pieces), content_type, info)


def _streamable_from(source: Source, layout: Layout, interleaved: Spans, kept_ids: set[int],
                     trex: dict[int, tuple[int, int]], limits: Limits) -> int:
    """Where a forward-only walk begins, after checking, before any byte is sent, the boxes in front
    of the first moov-described sample (none in the usual layout: it lies in the box after the moov).

    A fragment with audio there would have to go out after that sample, which the stream has
    not reached yet: :class:`NeedsRandomAccess` (Range sub-requests can still serve the file),
    where the walk could only abort the answer half-way. Only headers and such moofs are read;
    the boxes passed hold nothing the walk would send.
    """
    start = layout.moov_box.end
    if not len(interleaved):
        return start
    first = interleaved.offsets[0]
    check_gone_past(first, layout)
    for _ in range(limits.max_top_level_boxes):
        box = read_top_header(source, start)
        if box is None or box.end > first:
            return start
        if box.type == b"moof" and _fragment_pieces(source, box, kept_ids, trex, limits, 0):
            raise NeedsRandomAccess(f"the fragment at byte {box.offset} comes before audio the moov describes")
        start = box.end
    raise LimitExceeded("too many top-level boxes")
