"""Pick the container planner for a source: the one entry point shared by all front ends.

The middleware, the command line and the job API all come through
:func:`plan_source`, so every front end gets the same container support,
track selection, seeking and limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NoAudioTrack, echo
from .flv import plan_flv
from .limits import Limits
from .mp4 import plan_mp4
from .plan import LazyPlan, Plan
from .sniff import Container
from .sources import Source


@dataclass(frozen=True)
class Selection:
    """What part of the audio a request wants: a track, a time window."""

    track: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def key(self) -> tuple:
        return (self.track, self.start, self.end)

    @property
    def clipped(self) -> bool:
        return self.start is not None or self.end is not None


def plan_source(container: Container, source: Source, limits: Limits, selection: Selection = Selection(), *,
                skip_media: bool = False) -> Plan | LazyPlan:
    """Plan the audio rendition of ``source``; raises AudioExtractionError or NeedsRandomAccess.

    ``skip_media``: plan a forward-only MP4 whose moov comes last by reading past
    its media data (see :func:`~audio_middleware.mp4.plan_mp4`).
    """
    if container is Container.FLV:
        if selection.track not in (None, "", "1"):  # as for an MP4 without that track: 404
            raise NoAudioTrack(f"no audio track {echo(selection.track)} (an FLV file has one, without a language)")
        return plan_flv(source, limits, start=selection.start, end=selection.end)
    return plan_mp4(source, limits, track=selection.track, start=selection.start, end=selection.end,
                    skip_media=skip_media)
