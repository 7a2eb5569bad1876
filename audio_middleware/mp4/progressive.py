"""Plan for MP4 whose samples are described by ``moov`` (not fragmented).

Output: ``ftyp`` + new ``moov`` (audio tracks only, chunk offsets rewritten) +
one ``mdat`` holding the audio chunks in source order. Chunks are laid out in
increasing source offset, so the plan's spans increase too and a forward-only
source can be streamed.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import accumulate
from operator import add, le

from ..errors import MalformedMedia
from ..limits import Limits
from ..plan import Literal, Piece, Plan, Span
from .boxes import MAX_U32, box_header
from .layout import Layout
from .movie import Movie, rewrite_movie
from .tracks import Track


def content_type_for(brand: bytes) -> str:
    """3GPP files keep their own registered audio type; the rest of the family is audio/mp4."""
    if brand.startswith(b"3g2"):
        return "audio/3gpp2"
    if brand.startswith(b"3gp") or brand.startswith(b"3ge") or brand.startswith(b"3gg"):
        return "audio/3gpp"
    return "audio/mp4"


def _source_order(tracks: list[Track]) -> tuple[array, list[int], list[tuple[int, int]]]:
    """All audio chunks as (offsets, sizes, owners) in increasing source offset."""
    if len(tracks) == 1:
        track = tracks[0]
        offsets, sizes = track.chunk_offsets, track.chunk_sizes
        if all(map(le, offsets, offsets[1:])):
            return offsets, sizes, [(0, i) for i in range(len(offsets))]
    owners = [(t, i) for t, track in enumerate(tracks) for i in range(len(track.chunk_offsets))]
    owners.sort(key=lambda owner: tracks[owner[0]].chunk_offsets[owner[1]])
    offsets = array("Q", (tracks[t].chunk_offsets[i] for t, i in owners))
    sizes = [tracks[t].chunk_sizes[i] for t, i in owners]
    return offsets, sizes, owners


def _check_chunks(offsets: array, sizes: list[int], source_size: int | None) -> None:
    """Chunks must not overlap and must lie inside the file when its size is known."""
    ends = list(map(add, offsets, sizes))
    for index, (end, following) in enumerate(zip(ends, offsets[1:], strict=False)):
        if end > following and sizes[index + 1] and sizes[index]:
            raise MalformedMedia(f"audio chunks overlap at byte {following}")
    if source_size is not None and ends and max(ends) > source_size:
        raise MalformedMedia(f"audio chunk ends at byte {max(ends)}, past the end of the file ({source_size})")


@dataclass
class Head:
    """The generated front of the output and the audio chunks that follow it."""

    data: bytes
    spans: list[Span]


def build_head(layout: Layout, movie: Movie, kept: list[Track], source_size: int | None, limits: Limits, *,
               omit_empty_mdat: bool = False) -> Head:
    """``ftyp`` + new ``moov`` + ``mdat`` header, and the spans of the audio chunks in that mdat."""
    offsets, sizes, owners = _source_order(kept)
    _check_chunks(offsets, sizes, source_size)
    payload = sum(sizes)
    ftyp = layout.ftyp or b""
    mdat_header = b"" if omit_empty_mdat and not payload else box_header(b"mdat", payload)
    placeholder = {track.track_id: [0] * len(track.chunk_offsets) for track in kept}
    wide = False
    moov_length = len(rewrite_movie(movie, kept, placeholder, wide, limits))
    data_start = len(ftyp) + moov_length + len(mdat_header)
    if data_start + payload > MAX_U32:
        wide = True
        moov_length = len(rewrite_movie(movie, kept, placeholder, wide, limits))
        data_start = len(ftyp) + moov_length + len(mdat_header)

    new_offsets = placeholder
    tables = [new_offsets[track.track_id] for track in kept]
    for (owner, index), position in zip(owners, accumulate(sizes, initial=data_start), strict=False):
        tables[owner][index] = position
    moov = rewrite_movie(movie, kept, new_offsets, wide, limits)
    if len(moov) != moov_length:
        raise MalformedMedia("rewritten moov changed size between passes")
    return Head(ftyp + moov + mdat_header, _runs(offsets, sizes))


def _runs(offsets: array, sizes: list[int]) -> list[Span]:
    """One span per run of chunks that touch in the source."""
    spans: list[Span] = []
    run_start = run_end = -1
    for offset, size in zip(offsets, sizes, strict=False):
        if not size:
            continue
        if offset == run_end:
            run_end += size
            continue
        if run_end > run_start:
            spans.append(Span(run_start, run_end - run_start))
        run_start, run_end = offset, offset + size
    if run_end > run_start:
        spans.append(Span(run_start, run_end - run_start))
    return spans


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
    pieces: list[Piece] = [Literal(head.data), *head.spans]
    return Plan(tuple(pieces), content_type_for(layout.major_brand), describe(layout, kept, False))
