"""Sample tables: where each chunk of a track lives and how many bytes it holds.

Counts are checked against the box payload before anything is allocated, and
against :class:`~audio_middleware.limits.Limits`. Arrays are decoded in bulk
(``array`` + ``byteswap``), never with a Python loop per sample.
"""

from __future__ import annotations

import struct
import sys
from array import array
from itertools import accumulate, repeat

from ..errors import LimitExceeded, MalformedMedia
from .boxes import Box

ENTRY_COUNT = struct.Struct(">I")
STSZ_HEAD = struct.Struct(">II")
STSC_ENTRY = struct.Struct(">III")
LITTLE_ENDIAN = sys.byteorder == "little"


def big_endian_array(code: str, raw: bytes | memoryview) -> array:
    values = array(code)
    values.frombytes(raw)
    if LITTLE_ENDIAN:
        values.byteswap()
    return values


def counted_entries(data: bytes | memoryview, box: Box, head: int, entry_size: float,
                    max_entries: int) -> tuple[int, int]:
    """Read an entry count placed after ``head`` payload bytes and check it fits the box.

    Returns (count, offset of the first entry).
    """
    start = box.payload_offset + head
    if box.payload_size < head + 4:
        raise MalformedMedia(f"'{box.name}' at byte {box.offset} is too short for its entry count")
    (count,) = ENTRY_COUNT.unpack_from(data, start)
    if count > max_entries:
        raise LimitExceeded(f"'{box.name}' has {count} entries, more than the limit of {max_entries}")
    room = box.end - (start + 4)
    if count * entry_size > room:
        fits = int(room // entry_size)
        raise MalformedMedia(f"'{box.name}' at byte {box.offset} claims {count} entries, room for {fits}")
    return count, start + 4


def chunk_offsets(data: bytes | memoryview, box: Box, max_entries: int) -> array:
    """Chunk offsets from ``stco`` (32-bit) or ``co64`` (64-bit)."""
    width = 8 if box.type == b"co64" else 4
    count, first = counted_entries(data, box, 4, width, max_entries)
    return big_endian_array("Q" if width == 8 else "I", data[first:first + count * width])


def sample_to_chunk(data: bytes | memoryview, box: Box, max_entries: int) -> list[tuple[int, int]]:
    """``stsc`` as (first_chunk, samples_per_chunk); first_chunk starts at 1 and strictly increases."""
    count, first = counted_entries(data, box, 4, 12, max_entries)
    entries: list[tuple[int, int]] = []
    previous = 0
    for first_chunk, per_chunk, _description in STSC_ENTRY.iter_unpack(data[first:first + count * 12]):
        if first_chunk <= previous:
            raise MalformedMedia(f"stsc first_chunk {first_chunk} does not increase (after {previous})")
        entries.append((first_chunk, per_chunk))
        previous = first_chunk
    return entries


class SampleSizes:
    """``stsz``/``stz2``: a constant size, or one size per sample."""

    def __init__(self, data: bytes | memoryview, box: Box, max_entries: int) -> None:
        self.constant = 0
        self.sizes: array | None = None
        if box.type == b"stsz":
            if box.payload_size < 12:
                raise MalformedMedia(f"stsz at byte {box.offset} is too short")
            self.constant, count = STSZ_HEAD.unpack_from(data, box.payload_offset + 4)
            if count > max_entries:
                raise LimitExceeded(f"stsz has {count} samples, more than the limit of {max_entries}")
            self.count = count
            if self.constant == 0:
                count, first = counted_entries(data, box, 8, 4, max_entries)
                self.sizes = big_endian_array("I", data[first:first + count * 4])
            return
        # stz2: reserved (3 bytes), field_size (1 byte), sample_count, packed entries
        if box.payload_size < 12:
            raise MalformedMedia(f"stz2 at byte {box.offset} is too short")
        field_size = data[box.payload_offset + 7]
        if field_size not in (4, 8, 16):
            raise MalformedMedia(f"stz2 field size {field_size} is not 4, 8 or 16")
        count, first = counted_entries(data, box, 8, field_size / 8, max_entries)
        self.count = count
        if field_size == 16:
            self.sizes = big_endian_array("I", b"")
            self.sizes.extend(big_endian_array("H", data[first:first + count * 2]))
        elif field_size == 8:
            self.sizes = array("I", bytes(data[first:first + count]))
        else:
            packed = bytes(data[first:first + (count + 1) // 2])
            nibbles = array("I")
            for byte in packed:
                nibbles.append(byte >> 4)
                nibbles.append(byte & 15)
            self.sizes = nibbles[:count]


def chunk_sizes(stsc: list[tuple[int, int]], chunk_count: int, sizes: SampleSizes) -> tuple[list[int], list[int]]:
    """Byte size and first sample index of every chunk.

    Samples beyond those the chunks describe are ignored (as demuxers do); chunks
    that would need more samples than ``stsz`` lists are malformed.
    """
    if chunk_count and (not stsc or stsc[0][0] != 1):
        raise MalformedMedia("stsc does not start at chunk 1")
    prefix = None if sizes.sizes is None else array("Q", accumulate(sizes.sizes, initial=0))
    out_sizes: list[int] = []
    out_first: list[int] = []
    sample = 0
    for index, (first_chunk, per_chunk) in enumerate(stsc):
        next_first = stsc[index + 1][0] if index + 1 < len(stsc) else chunk_count + 1
        runs = max(0, min(next_first, chunk_count + 1) - first_chunk)
        if runs == 0:
            continue
        if runs * per_chunk > sizes.count - sample:
            raise MalformedMedia(f"stsc describes more samples than the {sizes.count} in stsz")
        starts = range(sample, sample + runs * per_chunk, per_chunk) if per_chunk else repeat(sample, runs)
        out_first.extend(starts)
        if prefix is None:
            out_sizes.extend(repeat(per_chunk * sizes.constant, runs))
        elif per_chunk:
            ends = prefix[sample + per_chunk: sample + (runs + 1) * per_chunk: per_chunk]
            begins = prefix[sample: sample + runs * per_chunk: per_chunk]
            out_sizes.extend(map(int.__sub__, ends, begins))
        else:
            out_sizes.extend(repeat(0, runs))
        sample += runs * per_chunk
    if len(out_sizes) != chunk_count:
        raise MalformedMedia(f"stsc covers {len(out_sizes)} of {chunk_count} chunks")
    return out_sizes, out_first
