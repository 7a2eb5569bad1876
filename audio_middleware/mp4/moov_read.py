"""Read a ``moov`` box without the sample tables of the tracks we are going to drop.

A 2-hour movie's moov is about half video sample tables (``stsz``, ``stco``,
``ctts``, ``stss`` of 180k frames): bytes that are never parsed, because the
video track is removed whole. Holding them was half of the peak memory of a
cold plan, so the moov is read front to back and the ``minf`` box of every
track whose handler is not ``soun`` is left out. What is kept is a well-formed
moov ("condensed"): the containers on the way (moov, trak, mdia) get their
sizes patched, and every other byte is kept as it was, so the audio tracks
and everything they are rewritten from are exactly the source's bytes.

The read is strictly forward, in blocks (a hostile moov of millions of tiny
boxes costs a few large reads, not a read per box), so it works on a
forward-only source, where the skipped tables are never buffered at all.
"""

from __future__ import annotations

import struct

from ..errors import LimitExceeded, SourceTruncated
from ..limits import Limits
from ..sources import Source
from .boxes import Box, parse_header
from .tracks import AUDIO_HANDLER

#: Read-ahead: a moov is read in blocks of at least this much (bounded by its end).
READ_AHEAD = 64 * 1024
#: Largest single read (longer stretches are read in pieces, so no read doubles a big table in memory).
MAX_READ = 1024 * 1024
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
#: Containers walked on the way to a track's handler and media information.
WALKED = frozenset({b"moov", b"trak", b"mdia"})


class _Reader:
    """The moov's bytes accumulated front to back, minus the stretches cut out."""

    def __init__(self, source: Source, moov: Box) -> None:
        self.source = source
        self.moov = moov
        self.out = bytearray()
        self.cursor = moov.offset  # source offset of the next byte to read
        self.removed = 0  # bytes cut out so far: source offset - removed = index in out
        self.boxes = 0  # headers read so far

    def index(self, offset: int) -> int:
        return offset - self.moov.offset - self.removed

    def fill(self, upto: int) -> None:
        """Have every byte before source offset ``upto`` (at least; reads ahead up to the moov's end)."""
        if upto <= self.cursor:
            return
        stop = min(max(upto, self.cursor + READ_AHEAD), self.moov.end)
        while self.cursor < stop:
            want = min(MAX_READ, stop - self.cursor)
            data = self.source.read(self.cursor, want)
            if len(data) != want:
                raise SourceTruncated(f"source ends inside the moov box at byte {self.cursor + len(data)}")
            self.out += data
            self.cursor += want

    def cut(self, box: Box) -> None:
        """Leave ``box`` out: drop what was read of it and never read the rest."""
        start = self.index(box.offset)
        del self.out[start:start + min(box.size, self.cursor - box.offset)]
        self.removed += box.size
        self.cursor = max(self.cursor, box.end)

    def header(self, offset: int, end: int) -> Box:
        self.fill(min(offset + 16, end))
        at = self.index(offset)
        return parse_header(self.out, at, at + (end - offset), base=offset - at)


def read_condensed_moov(source: Source, moov: Box, limits: Limits) -> bytearray:
    """The moov box's bytes with the ``minf`` of non-audio tracks left out (see the module docstring)."""
    reader = _Reader(source, moov)
    _walk(reader, moov, 0, limits)
    reader.fill(moov.end)
    return reader.out


def _walk(reader: _Reader, box: Box, depth: int, limits: Limits) -> None:
    """Read ``box`` (a walked container) into the reader, cutting non-audio ``minf`` boxes."""
    if depth >= limits.max_box_depth:
        raise LimitExceeded(f"boxes nest deeper than {limits.max_box_depth} levels")
    header_at = reader.index(box.offset)  # before any cut inside it moves later bytes
    before = reader.removed
    handler: bytes | None = None
    offset = box.payload_offset
    while box.end - offset >= 8:
        child = reader.header(offset, box.end)
        reader.boxes += 1
        if reader.boxes > limits.max_moov_boxes:
            raise LimitExceeded(f"moov holds more than {limits.max_moov_boxes} boxes")
        if child.type in WALKED:
            _walk(reader, child, depth + 1, limits)
        elif box.type == b"mdia" and child.type == b"hdlr":
            reader.fill(child.end)
            payload = reader.index(child.payload_offset)
            handler = bytes(reader.out[payload + 8:payload + 12]) if child.payload_size >= 12 else None
        elif box.type == b"mdia" and child.type == b"minf" and handler not in (None, AUDIO_HANDLER):
            reader.cut(child)
        offset = child.end
    shrunk = reader.removed - before
    if shrunk:
        _patch_size(reader.out, header_at, box.size - shrunk)


def _patch_size(out: bytearray, at: int, size: int) -> None:
    """Write a container's new size into its header at ``out[at]`` (32-bit, 64-bit or 'to the end')."""
    (declared,) = U32.unpack_from(out, at)
    if declared == 1:
        U64.pack_into(out, at + 8, size)
    elif declared != 0:  # 0 means "to the end of the parent", still true after the cut
        U32.pack_into(out, at, size)
