"""MP4 family (MP4, MOV, M4A, 3GP, F4V): bytes in, Plan out.

No WSGI, no HTTP: :func:`plan_mp4` reads a :class:`~audio_middleware.sources.Source`
and returns a plan. The command line and the job API use it directly.
"""

from __future__ import annotations

from ..errors import NeedsRandomAccess, NoAudioTrack
from ..limits import Limits
from ..plan import LazyPlan, Plan, Span, Spans
from ..sources import Source
from .layout import Layout, check_gone_past, find_moov
from .movie import parse_movie, select_audio
from .progressive import plan_progressive

__all__ = ["plan_mp4"]


def plan_mp4(source: Source, limits: Limits, *, track: str | None = None, start: float | None = None,
             end: float | None = None, skip_media: bool = False) -> Plan | LazyPlan:
    """Plan the audio-only rendition of an MP4-family source.

    ``track`` selects one audio track (1-based index or ISO-639-2 language);
    by default every audio track is kept. ``start``/``end`` (seconds) clip it.
    Raises :class:`NeedsRandomAccess` on a forward-only source whose moov comes
    after the media data, unless ``skip_media``: then the media data is read
    past and the plan (complete, in source order) is for a second pass over
    the same bytes. Fragments cannot be planned that way.
    """
    layout = find_moov(source, limits, skip_media=skip_media)
    movie = parse_movie(layout.moov, limits)
    if skip_media and movie.fragmented and not source.random_access:
        raise NeedsRandomAccess("a fragmented movie with its moov after media data")
    kept = select_audio(movie, track)
    if start is not None or end is not None:
        from .clip import plan_clipped

        plan = plan_clipped(layout, movie, kept, source.size, limits, start, end)
    elif movie.fragmented:
        from .fragments import plan_fragmented

        return plan_fragmented(source, layout, movie, kept, limits)
    elif not any(track.sample_count and len(track.chunk_offsets) for track in kept):
        # e.g. fragments without the mvex that would declare them: nothing a player could play
        raise NoAudioTrack("the audio track has no samples (fragments without mvex are not read)")
    else:
        plan = plan_progressive(layout, movie, kept, source.size, limits)
    if not source.random_access and not skip_media:
        _check_streamable(plan, layout)
    return plan


def _check_streamable(plan: Plan, layout: Layout) -> None:
    """A progressive plan on a forward-only body: its first span decides (spans increase in a streamable plan)."""
    firsts = (piece.offset if isinstance(piece, Span) else piece.offsets[0]
              for piece in plan.pieces if isinstance(piece, Span) or isinstance(piece, Spans) and len(piece))
    first = next(firsts, None)
    if first is not None:
        check_gone_past(first, layout)
