"""``Spans``: the slice of a piece and its length, against bytes laid out by hand."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from audio_middleware.plan import Spans

SOURCE = bytes(range(256)) * 64


def output_of(spans: Spans) -> bytes:
    return b"".join(SOURCE[offset:offset + length] for offset, length in zip(spans.offsets, spans.lengths))


@st.composite
def spans_and_window(draw):
    lengths = draw(st.lists(st.integers(1, 40), min_size=1, max_size=60))
    gaps = draw(st.lists(st.integers(0, 30), min_size=len(lengths), max_size=len(lengths)))
    offsets, position = [], 0
    for gap, length in zip(gaps, lengths):
        position += gap
        offsets.append(position)
        position += length
    total = sum(lengths)
    start = draw(st.integers(0, total - 1))
    stop = draw(st.integers(start + 1, total))
    return offsets, lengths, start, stop


@given(spans_and_window())
def test_a_slice_is_those_bytes_and_knows_its_length(case):
    offsets, lengths, start, stop = case
    for spans in (Spans(offsets, lengths), Spans.from_arrays(np.array(offsets, ">u4"), np.array(lengths, "<u2"))):
        assert spans.length == sum(lengths)
        whole = output_of(spans)
        part = spans.slice(start, stop)
        assert output_of(part) == whole[start:stop]
        assert part.length == sum(part.lengths) == stop - start
