"""Plan for MP4 whose samples are described by ``moov`` (not fragmented).

Output: ``ftyp`` + new ``moov`` (audio tracks only, chunk offsets rewritten) +
one ``mdat`` holding the audio chunks in source order. Chunks are laid out in
increasing source offset, so the plan's spans increase too and a forward-only
source can be streamed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MalformedMedia
from ..limits import Limits
from ..plan import Literal, Piece, Plan, Spans
from .boxes import MAX_U32, box_header, rebuild_parts
from .layout import Layout
from .movie import Movie, movie_edits, offsets_box, rewritten_size
from .tracks import Track


def content_type_for(brand: bytes) -> str:
    """3GPP files keep their own registered audio type; the rest of the family is audio/mp4."""
    if brand.startswith(b"3g2"):
        return "audio/3gpp2"
    if brand.startswith(b"3gp") or brand.startswith(b"3ge") or brand.startswith(b"3gg"):
        return "audio/3gpp"
    return "audio/mp4"


def _source_order(tracks: list[Track]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """All audio chunks as (offsets, sizes, order) sorted by source offset.

    ``order`` indexes the chunks of all tracks concatenated in ``tracks`` order,
    or is None when they already are in source order (one track, the usual
    case: then the track's own arrays are returned, nothing is copied).
    """
    if len(tracks) == 1:
        offsets, sizes = tracks[0].chunk_offsets, tracks[0].chunk_sizes
    elif tracks:
        offsets = np.concatenate([track.chunk_offsets for track in tracks])
        sizes = np.concatenate([track.chunk_sizes for track in tracks])
    else:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), None
    if len(offsets) < 2 or bool(np.all(offsets[1:] >= offsets[:-1])):
        return offsets, sizes, None
    # By offset; at one offset an empty chunk first: the new offsets then sort the same way again,
    # so the rendition of a rendition is itself (an empty chunk's offset is arbitrary, but stable)
    order = np.lexsort((sizes > 0, offsets))
    return offsets[order], sizes[order], order


def _chunk_ends(offsets: np.ndarray, sizes: np.ndarray, source_size: int | None) -> np.ndarray:
    """Where each chunk ends; chunks must not overlap and must lie inside the file when its size is known."""
    ends = offsets + sizes
    if not len(offsets):
        return ends
    if offsets[0] < 0:
        raise MalformedMedia(f"audio chunk offset {int(offsets[0])} is out of range")
    # Sorted by offset, chunks overlap only if one overlaps the next non-empty one (an empty chunk
    # holds no bytes: it must not hide the pair around it).
    filled = sizes > 0
    starts, stops = (offsets, ends) if bool(filled.all()) else (offsets[filled], ends[filled])
    overlapping = np.flatnonzero(stops[:-1] > starts[1:])
    if overlapping.size:
        raise MalformedMedia(f"audio chunks overlap at byte {int(starts[overlapping[0] + 1])}")
    last = int(ends.max())
    if source_size is not None and last > source_size:
        raise MalformedMedia(f"audio chunk ends at byte {last}, past the end of the file ({source_size})")
    return ends


@dataclass
class Head:
    """The generated front of the output and the audio chunks that follow it.

    ``literals`` are ftyp, the new moov (in parts: unchanged boxes are views of
    the parsed moov, so it is never copied whole) and the mdat header.
    """

    literals: list[Literal]
    spans: Spans

    @property
    def length(self) -> int:
        return sum(literal.length for literal in self.literals)


def build_head(layout: Layout, movie: Movie, kept: list[Track], source_size: int | None, limits: Limits, *,
               omit_empty_mdat: bool = False) -> Head:
    """``ftyp`` + new ``moov`` + ``mdat`` header, and the spans of the audio chunks in that mdat.

    Arrays of one value per chunk (180k of them for a 2-hour movie) are made
    one at a time and dropped as soon as they are used: peak memory while
    planning is a target of its own (issue 6).
    """
    offsets, sizes, order = _source_order(kept)
    ends = _chunk_ends(offsets, sizes, source_size)
    spans = _runs(offsets, sizes, ends)
    del ends
    payload = spans.length
    ftyp = layout.ftyp or b""
    mdat_header = b"" if omit_empty_mdat and not payload else box_header(b"mdat", payload)
    wide = False
    moov_length = rewritten_size(movie, kept, wide, limits)
    data_start = len(ftyp) + moov_length + len(mdat_header)
    if data_start + payload > MAX_U32:
        wide = True
        moov_length = rewritten_size(movie, kept, wide, limits)
        data_start = len(ftyp) + moov_length + len(mdat_header)
    boxes = _offset_boxes(kept, sizes, order, data_start, wide)
    del offsets, sizes, order
    size, parts = rebuild_parts(movie.data, movie.moov, movie_edits(movie, kept, boxes, None),
                                max_depth=limits.max_box_depth)
    if size != moov_length:
        raise MalformedMedia("rewritten moov changed size between passes")
    return Head([Literal(part) for part in (ftyp, *parts, mdat_header) if len(part)], spans)


def _offset_boxes(kept: list[Track], sizes: np.ndarray, order: np.ndarray | None, data_start: int, wide: bool
                  ) -> dict[int, bytearray]:
    """Each kept track's new ``stco``/``co64``: its chunks' offsets in the output's mdat."""
    positions = np.cumsum(sizes)  # chunks in source order, laid end to end after data_start
    positions -= sizes
    positions += data_start
    if order is not None:
        in_track_order = np.empty_like(positions)
        in_track_order[order] = positions
        positions = in_track_order
    boxes, first = {}, 0
    for track in kept:
        count = len(track.chunk_offsets)
        boxes[track.track_id] = offsets_box(positions[first:first + count], wide)
        first += count
    return boxes


def _runs(offsets: np.ndarray, sizes: np.ndarray, ends: np.ndarray) -> Spans:
    """One span per run of chunks that touch in the source (empty chunks dropped)."""
    keep = sizes > 0
    if not keep.all():
        offsets, sizes, ends = offsets[keep], sizes[keep], ends[keep]
    del keep
    if not len(offsets):
        return Spans((), ())
    breaks = offsets[1:] != ends[:-1]
    if breaks.all():  # nothing touches (interleaved media): one span per chunk, as they are
        return Spans.from_arrays(offsets, sizes)
    starts_run = np.flatnonzero(np.concatenate(([True], breaks)))
    del breaks
    ends_run = np.append(starts_run[1:], len(offsets)) - 1
    run_offsets = offsets[starts_run]
    return Spans.from_arrays(run_offsets, ends[ends_run] - run_offsets)


def describe(layout: Layout, kept: list[Track], fragmented: bool) -> dict:
    """Facts about the rendition for ``plan.info``."""
    return {
        "container": "mp4",
        "brand": layout.major_brand.decode("latin-1").strip(),
        "tracks": [track.describe() for track in kept],
        "duration": max((track.duration_seconds for track in kept), default=0.0),
        "fragmented": fragmented,
    }


def plan_progressive(layout: Layout, movie: Movie, kept: list[Track], source_size: int | None,
                     limits: Limits) -> Plan:
    """The complete plan for a non-fragmented movie keeping ``kept`` audio tracks."""
    head = build_head(layout, movie, kept, source_size, limits)
    pieces: list[Piece] = [*head.literals, head.spans]
    return Plan(tuple(pieces), content_type_for(layout.major_brand), describe(layout, kept, False))
