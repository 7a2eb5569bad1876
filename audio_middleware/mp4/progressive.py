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
from .movie import Movie, movie_edits, rewritten_size
from .tracks import Track


def content_type_for(brand: bytes) -> str:
    """3GPP files keep their own registered audio type; the rest of the family is audio/mp4."""
    if brand.startswith(b"3g2"):
        return "audio/3gpp2"
    if brand.startswith(b"3gp") or brand.startswith(b"3ge") or brand.startswith(b"3gg"):
        return "audio/3gpp"
    return "audio/mp4"


def _source_order(tracks: list[Track]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All audio chunks as (offsets, sizes, order), ``order`` sorting them by source offset.

    ``order`` indexes the chunks of all tracks concatenated in ``tracks`` order.
    """
    offsets = np.concatenate([track.chunk_offsets for track in tracks]) if tracks else np.zeros(0, np.int64)
    sizes = np.concatenate([track.chunk_sizes for track in tracks]) if tracks else np.zeros(0, np.int64)
    if len(offsets) < 2 or bool(np.all(offsets[1:] >= offsets[:-1])):
        order = np.arange(len(offsets))
    else:
        order = np.argsort(offsets, kind="stable")
    return offsets[order], sizes[order], order


def _check_chunks(offsets: np.ndarray, sizes: np.ndarray, source_size: int | None) -> None:
    """Chunks must not overlap and must lie inside the file when its size is known."""
    if not len(offsets):
        return
    if offsets[0] < 0:
        raise MalformedMedia(f"audio chunk offset {int(offsets[0])} is out of range")
    ends = offsets + sizes
    overlapping = np.flatnonzero((ends[:-1] > offsets[1:]) & (sizes[:-1] > 0) & (sizes[1:] > 0))
    if overlapping.size:
        raise MalformedMedia(f"audio chunks overlap at byte {int(offsets[overlapping[0] + 1])}")
    last = int(ends.max())
    if source_size is not None and last > source_size:
        raise MalformedMedia(f"audio chunk ends at byte {last}, past the end of the file ({source_size})")


@dataclass
class Head:
    """The generated front of the output and the audio chunks that follow it."""

    data: bytes
    spans: Spans


def build_head(layout: Layout, movie: Movie, kept: list[Track], source_size: int | None, limits: Limits, *,
               omit_empty_mdat: bool = False) -> Head:
    """``ftyp`` + new ``moov`` + ``mdat`` header, and the spans of the audio chunks in that mdat."""
    offsets, sizes, order = _source_order(kept)
    _check_chunks(offsets, sizes, source_size)
    payload = int(sizes.sum())
    ftyp = layout.ftyp or b""
    mdat_header = b"" if omit_empty_mdat and not payload else box_header(b"mdat", payload)
    counts = [len(track.chunk_offsets) for track in kept]
    wide = False
    moov_length = rewritten_size(movie, kept, wide, limits)
    data_start = len(ftyp) + moov_length + len(mdat_header)
    if data_start + payload > MAX_U32:
        wide = True
        moov_length = rewritten_size(movie, kept, wide, limits)
        data_start = len(ftyp) + moov_length + len(mdat_header)

    positions = np.empty(len(order), np.int64)
    positions[order] = data_start + np.cumsum(sizes) - sizes  # new offset of each chunk, in track order
    splits = np.cumsum(counts)[:-1]
    new_offsets = {track.track_id: part for track, part in zip(kept, np.split(positions, splits))}
    size, parts = rebuild_parts(movie.data, movie.moov, movie_edits(movie, kept, new_offsets, wide, None),
                                max_depth=limits.max_box_depth)
    if size != moov_length:
        raise MalformedMedia("rewritten moov changed size between passes")
    return Head(b"".join([ftyp, *parts, mdat_header]), _runs(offsets, sizes))  # one copy of the new moov


def _runs(offsets: np.ndarray, sizes: np.ndarray) -> Spans:
    """One span per run of chunks that touch in the source (empty chunks dropped)."""
    keep = sizes > 0
    offsets, sizes = offsets[keep], sizes[keep]
    if not len(offsets):
        return Spans((), ())
    ends = offsets + sizes
    starts_run = np.flatnonzero(np.concatenate(([True], offsets[1:] != ends[:-1])))
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
    pieces: list[Piece] = [Literal(head.data), head.spans]
    return Plan(tuple(pieces), content_type_for(layout.major_brand), describe(layout, kept, False))
