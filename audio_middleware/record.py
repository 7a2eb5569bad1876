"""Turn a lazy plan that streamed to its end into a complete plan.

A forward-only body (a generator app) gives a lazy plan for FLV and fragmented
MP4: the pieces are found while the body goes by, so the response has no
Content-Length and cannot answer Range. Once such a response has gone out
whole, every piece is known; recording them (compactly: literals, plus spans
as two integer arrays) gives a complete :class:`~audio_middleware.plan.Plan`
that the plan cache can keep. The next request for the same source (same
validators) is then answered with an exact Content-Length, Range and the
rendition store, still streaming the upstream body forward-only, and without
parsing a tag or a fragment again.

Only a lazy plan that ran to its end, with every span read from the source,
is kept: a client that goes away, a truncated body or an error leaves nothing.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator

from .plan import PLAN_COST, LazyPlan, Literal, Piece, Plan, Span, Spans, literal_cost, spans_cost


class PlanRecorder:
    """Collect the pieces of one lazy plan, up to ``max_bytes`` of recorded state.

    The state is counted as the plan cache counts the finished plan's footprint, every
    piece recorded so far included: a fragmented MP4 alternates a moof literal and a
    run of spans, and counting only the pending spans let a recording grow to several
    times ``max_bytes`` (of span objects) before the cache refused it whole.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.overflowed = False
        self._pieces: list[Piece] = []
        self._offsets = array("q")
        self._lengths = array("q")
        self._cost = PLAN_COST  # of the pieces in self._pieces
        self._owners: set[int] = set()  # buffers behind memoryview literals, counted whole and once

    def add(self, piece: Piece) -> None:
        if self.overflowed:
            return
        if isinstance(piece, Literal):
            self._flush_spans()
            self._pieces.append(piece)
            self._cost += literal_cost(piece, self._owners)
        elif isinstance(piece, Span):
            self._add_span(piece.offset, piece.length)
        else:
            for offset, length in zip(piece.offsets, piece.lengths):
                self._add_span(offset, length)
        pending = spans_cost(len(self._offsets)) if self._offsets else 0
        if self._cost + pending > self.max_bytes:
            self._give_up()

    def _add_span(self, offset: int, length: int) -> None:
        if not length:
            return
        if self._offsets and self._offsets[-1] + self._lengths[-1] == offset:
            self._lengths[-1] += length  # touching spans (consecutive audio tags) become one
            return
        self._offsets.append(offset)
        self._lengths.append(length)

    def _flush_spans(self) -> None:
        if self._offsets:
            self._pieces.append(Spans(self._offsets, self._lengths))
            self._cost += spans_cost(len(self._offsets))
            self._offsets, self._lengths = array("q"), array("q")

    def _give_up(self) -> None:
        self.overflowed = True
        self._pieces, self._offsets, self._lengths = [], array("q"), array("q")
        self._owners.clear()

    def plan(self, lazy: LazyPlan) -> Plan | None:
        """The complete plan of what was recorded (None if it outgrew ``max_bytes``)."""
        if self.overflowed:
            return None
        self._flush_spans()
        return Plan(tuple(self._pieces), lazy.content_type, dict(lazy.info))


def recording(lazy: LazyPlan, max_bytes: int, done: Callable[[Plan], None]) -> Iterator[Piece]:
    """Yield ``lazy``'s pieces unchanged; when they run out, pass the complete plan to ``done``.

    The emitter reads each span before asking for the next piece, so running
    out means every span was read. A generator closed early (the client went
    away) or failing never calls ``done``.
    """
    recorder = PlanRecorder(max_bytes)
    for piece in lazy.pieces:
        recorder.add(piece)
        yield piece
    plan = recorder.plan(lazy)
    if plan is not None:
        done(plan)
