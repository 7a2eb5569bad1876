"""Reading the moov without the sample tables of dropped tracks (audio_middleware/mp4/moov_read.py).

The condensed moov must be a well-formed box tree whose kept parts are the
source's bytes, whatever the header forms (32-bit, 64-bit, size 0) and box
order; the skipped tables must never be read; and a hostile moov must cost few
reads and end in a clear error.
"""

from __future__ import annotations

import io
import struct

import pytest

from audio_middleware.errors import LimitExceeded, SourceTruncated
from audio_middleware.limits import Limits
from audio_middleware.mp4.boxes import build_box, iter_children, only_child, parse_header
from audio_middleware.mp4.layout import find_moov
from audio_middleware.mp4.moov_read import READ_AHEAD, read_condensed_moov
from audio_middleware.mp4.movie import parse_movie
from audio_middleware.sources import FileSource, SequentialSource
from tests import media as toolkit
from tests.apps import RecordingSource

LIMITS = Limits()


def hdlr(kind: bytes) -> bytes:
    return build_box(b"hdlr", bytes(8), kind, bytes(12), b"name\0")


def large_box(kind: bytes, *payload: bytes) -> bytes:
    """A box written with a 64-bit size although 32 bits would do (allowed, and seen in the wild)."""
    body = b"".join(payload)
    return struct.pack(">I4sQ", 1, kind, 16 + len(body)) + body


def trak(handler: bytes, minf_size: int, *, minf_first: bool = False, wrap=build_box) -> bytes:
    minf = build_box(b"minf", build_box(b"stbl", build_box(b"stsz", bytes(minf_size))))
    parts = (minf, hdlr(handler)) if minf_first else (hdlr(handler), minf)
    mdia = wrap(b"mdia", build_box(b"mdhd", bytes(24)), *parts)
    return wrap(b"trak", build_box(b"tkhd", bytes(84)), mdia)


def condense(moov: bytes, prefix: bytes = b"") -> tuple[bytes, RecordingSource]:
    data = prefix + moov
    source = RecordingSource(data)
    box = parse_header(data, len(prefix), len(data))
    return bytes(read_condensed_moov(source, box, LIMITS)), source


def tree(data: bytes, start: int = 0, end: int | None = None) -> list:
    """The box tree as nested (type, size, children) for walked containers."""
    out = []
    for box in iter_children(data, start, len(data) if end is None else end):
        inner = tree(data, box.payload_offset, box.end) if box.type in (b"moov", b"trak", b"mdia") else None
        out.append((box.type, box.size, inner))
    return out


def test_a_real_movie_loses_only_the_video_minf(media):
    path = media("mp4_faststart")
    data = path.read_bytes()
    layout = find_moov(FileSource(io.BytesIO(data)), LIMITS)
    (moov,) = toolkit.find_boxes(data, "moov")
    video_minf = [box for box in toolkit.find_boxes(data, "moov/trak/mdia/minf")
                  if b"vmhd" in data[box.offset:box.end][:64]]
    assert len(video_minf) == 1
    assert len(layout.moov) == moov.end - moov.offset - (video_minf[0].end - video_minf[0].offset)

    movie = parse_movie(layout.moov, LIMITS)
    by_handler = {track.handler: track for track in movie.tracks}
    assert set(by_handler) == {b"vide", b"soun"}
    assert only_child(layout.moov, by_handler[b"vide"].box, b"mdia") is not None
    video_mdia = only_child(layout.moov, by_handler[b"vide"].box, b"mdia")
    assert only_child(layout.moov, video_mdia, b"minf", required=False) is None
    # the audio trak is the source's bytes, unchanged
    audio = by_handler[b"soun"].box
    (source_audio,) = [box for box in toolkit.find_boxes(data, "moov/trak")
                       if b"soun" in data[box.offset:box.end]]
    assert bytes(layout.moov[audio.offset:audio.end]) == data[source_audio.offset:source_audio.end]


def test_the_skipped_tables_are_never_read():
    moov = build_box(b"moov", build_box(b"mvhd", bytes(100)), trak(b"vide", 3 * READ_AHEAD),
                     trak(b"soun", 1000))
    condensed, source = condense(moov, prefix=b"\0" * 64)
    skipped = len(moov) - len(condensed)
    assert skipped == 3 * READ_AHEAD + 3 * 8  # the minf: its payload and the minf, stbl, stsz headers
    read = sum(length for _, length in source.reads)
    assert read <= len(moov) - skipped + READ_AHEAD  # at most one read-ahead block of the tables
    assert tree(condensed)[0][2][1][2][1][2] == [(b"mdhd", 32, None), (b"hdlr", 37, None)]


@pytest.mark.parametrize("wrap", [build_box, large_box], ids=["32-bit", "64-bit"])
def test_container_sizes_are_patched_in_their_own_header_form(wrap):
    moov = wrap(b"moov", build_box(b"mvhd", bytes(100)), trak(b"vide", 5000, wrap=wrap), trak(b"soun", 10, wrap=wrap))
    condensed, _ = condense(moov)
    (top,) = tree(condensed)
    assert top[0] == b"moov" and top[1] == len(condensed)
    video, audio = top[2][1], top[2][2]
    header = 16 if wrap is large_box else 8
    assert video[1] == header + 92 + header + 32 + 37 and [kind for kind, *_ in video[2][1][2]] == [b"mdhd", b"hdlr"]
    assert audio[1] == len(trak(b"soun", 10, wrap=wrap))
    assert struct.unpack_from(">I", condensed)[0] == (1 if wrap is large_box else len(condensed))


def test_a_minf_before_its_handler_is_kept():
    moov = build_box(b"moov", build_box(b"mvhd", bytes(100)), trak(b"vide", 500, minf_first=True))
    condensed, _ = condense(moov)
    assert condensed == moov


def test_size_zero_keeps_meaning_to_the_end_of_the_parent():
    video = trak(b"vide", 700)
    last = struct.pack(">I4s", 0, b"trak") + video[8:]  # a last child "to the end of the moov"
    moov = build_box(b"moov", build_box(b"mvhd", bytes(100)), last)
    condensed, _ = condense(moov)
    top = tree(condensed)[0]
    assert top[1] == len(condensed) and top[2][1][0] == b"trak" and top[2][1][1] == len(condensed) - 8 - 108
    assert len(condensed) == len(moov) - (8 + 8 + 8 + 700)


def test_a_moov_of_tiny_boxes_costs_few_reads():
    moov = build_box(b"moov", build_box(b"mvhd", bytes(100)), *[build_box(b"free")] * 40_000)
    condensed, source = condense(moov)
    assert condensed == moov
    assert len(source.reads) <= len(moov) // READ_AHEAD + 2


def test_a_moov_of_more_boxes_than_the_limit_is_refused_while_read():
    moov = build_box(b"moov", build_box(b"mvhd", bytes(100)), *[build_box(b"free")] * 101)
    with pytest.raises(LimitExceeded, match="more than 100 boxes"):
        read_condensed_moov(FileSource(io.BytesIO(moov)), parse_header(moov, 0, len(moov)),
                            Limits(max_moov_boxes=100))


def test_nesting_is_bounded():
    box = trak(b"vide", 10)
    for _ in range(10):
        box = build_box(b"trak", box)
    moov = build_box(b"moov", box)
    with pytest.raises(LimitExceeded):
        read_condensed_moov(FileSource(io.BytesIO(moov)), parse_header(moov, 0, len(moov)),
                            Limits(max_box_depth=8))


def test_a_moov_cut_short_is_a_clear_error():
    moov = build_box(b"moov", build_box(b"mvhd", bytes(100)), trak(b"soun", 5000))
    cut = moov[:3000]
    with pytest.raises(SourceTruncated, match="inside the moov box"):
        read_condensed_moov(FileSource(io.BytesIO(cut), size=len(moov)), parse_header(moov, 0, len(moov)), LIMITS)


def test_a_forward_only_source_streams_past_the_skipped_tables(media):
    path = media("mp4_faststart")
    data = path.read_bytes()
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    sequential = SequentialSource(iter(chunks), len(data), retain=True)
    layout = find_moov(sequential, LIMITS)
    assert not sequential.retain  # the moov came first: nothing needs to be kept for a spool
    assert layout.moov == find_moov(FileSource(io.BytesIO(data)), LIMITS).moov
    (moov,) = toolkit.find_boxes(data, "moov")
    assert sequential.position >= moov.end - READ_AHEAD  # it went on past the tables, not back
