"""Sample tables: where each chunk of a track lives and how many bytes it holds.

Counts are checked against the box payload before anything is allocated, and
against :class:`~audio_middleware.limits.Limits`. Tables are decoded in bulk
(numpy views of the box's bytes; ``array`` + ``byteswap`` where a copy is
needed) and the chunk layout is computed with numpy: a 2-hour movie has ~100k
``stsc`` entries and ~180k chunks per track, which a Python step per entry
turned into a quarter of a second per cold plan.
"""

from __future__ import annotations

import struct
import sys
from array import array

import numpy as np

from ..errors import LimitExceeded, MalformedMedia
from .boxes import Box

ENTRY_COUNT = struct.Struct(">I")
STSZ_HEAD = struct.Struct(">II")
STSC_ENTRY = struct.Struct(">III")
LITTLE_ENDIAN = sys.byteorder == "little"
#: The largest chunk offset accepted (2**62, 4 EiB): sums with chunk sizes stay inside int64.
MAX_OFFSET = 1 << 62


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


def chunk_offsets(data: bytes | memoryview, box: Box, max_entries: int) -> np.ndarray:
    """Chunk offsets from ``stco`` (32-bit) or ``co64`` (64-bit), as int64."""
    width = 8 if box.type == b"co64" else 4
    count, first = counted_entries(data, box, 4, width, max_entries)
    offsets = np.frombuffer(data, ">u8" if width == 8 else ">u4", count, first)
    if width == 8 and count and int(offsets.max()) > MAX_OFFSET:
        # an offset no file reaches: as int64 it would wrap, and offset + size with it
        raise MalformedMedia(f"co64 chunk offset {int(offsets.max())} is out of range")
    return offsets.astype(np.int64)


def stsc_columns(data: bytes | memoryview, box: Box, max_entries: int) -> tuple[np.ndarray, np.ndarray]:
    """``stsc`` as two int64 columns (first_chunk, samples_per_chunk), first_chunk strictly increasing from 1."""
    count, first = counted_entries(data, box, 4, 12, max_entries)
    table = np.frombuffer(data, ">u4", count * 3, first).reshape(count, 3)  # a view: no copy of the box
    first_chunk, per_chunk = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
    if count and first_chunk[0] < 1:
        raise MalformedMedia("stsc first_chunk 0 (chunks are numbered from 1)")
    steps = np.flatnonzero(np.diff(first_chunk) <= 0)
    if steps.size:
        at = int(steps[0]) + 1
        raise MalformedMedia(f"stsc first_chunk {first_chunk[at]} does not increase (after {first_chunk[at - 1]})")
    return first_chunk, per_chunk


def sample_to_chunk(data: bytes | memoryview, box: Box, max_entries: int) -> list[tuple[int, int]]:
    """``stsc`` as (first_chunk, samples_per_chunk); first_chunk starts at 1 and strictly increases."""
    first_chunk, per_chunk = stsc_columns(data, box, max_entries)
    return list(zip(first_chunk.tolist(), per_chunk.tolist()))


class SampleSizes:
    """``stsz``/``stz2``: a constant size, or one size per sample.

    ``sizes`` is a numpy view of the box's own bytes (``>u4``) for ``stsz``:
    a 2-hour movie's audio has 310k sizes, and a copy of them is memory the
    plan does not need.
    """

    def __init__(self, data: bytes | memoryview, box: Box, max_entries: int) -> None:
        self.constant = 0
        self.sizes: np.ndarray | None = None
        if box.type == b"stsz":
            if box.payload_size < 12:
                raise MalformedMedia(f"stsz at byte {box.offset} is too short")
            self.constant, count = STSZ_HEAD.unpack_from(data, box.payload_offset + 4)
            if count > max_entries:
                raise LimitExceeded(f"stsz has {count} samples, more than the limit of {max_entries}")
            self.count = count
            if self.constant == 0:
                count, first = counted_entries(data, box, 8, 4, max_entries)
                self.sizes = np.frombuffer(data, ">u4", count, first)
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
            wide = np.frombuffer(data, ">u2", count, first).astype(np.uint32)
        elif field_size == 8:
            wide = np.frombuffer(data, np.uint8, count, first).astype(np.uint32)
        else:
            packed = np.frombuffer(data, np.uint8, (count + 1) // 2, first)
            wide = np.stack((packed >> 4, packed & 15), axis=1).reshape(-1)[:count].astype(np.uint32)
        self.sizes = wide


def chunk_first_samples(stsc: tuple[np.ndarray, np.ndarray], chunk_count: int, sample_count: int
                        ) -> tuple[np.ndarray, int]:
    """The first sample index of every chunk (int64), and how many samples the chunks hold.

    Samples beyond those the chunks describe are ignored (as demuxers do); chunks
    that would need more samples than ``stsz`` lists are malformed.
    """
    first_chunk, per_chunk = stsc
    if not chunk_count:
        return np.zeros(0, np.int64), 0
    if not first_chunk.size or first_chunk[0] != 1:
        raise MalformedMedia("stsc does not start at chunk 1")
    following = np.append(first_chunk[1:], chunk_count + 1)
    runs = np.clip(np.minimum(following, chunk_count + 1) - first_chunk, 0, None)
    if int(np.dot(runs, per_chunk.astype(np.float64))) > sample_count:  # float: no overflow on hostile counts
        raise MalformedMedia(f"stsc describes more samples than the {sample_count} in stsz")
    samples = np.repeat(per_chunk, runs)
    del following, runs
    starts = np.empty(chunk_count, np.int64)
    starts[0] = 0
    np.cumsum(samples[:-1], out=starts[1:])
    total = int(starts[-1] + samples[-1])
    if total > sample_count:
        raise MalformedMedia(f"stsc describes more samples than the {sample_count} in stsz")
    return starts, total


def chunk_sizes(first_samples: np.ndarray, total: int, sizes: SampleSizes, most_per_chunk: int) -> np.ndarray:
    """Byte size of every chunk (int64) from its first sample and the sample sizes.

    ``np.add.reduceat`` sums each chunk's samples without the full prefix-sum
    array (an int64 per sample) the obvious way needs; it only needs care for
    empty chunks, where it returns the next sample's size instead of 0.
    """
    chunks = len(first_samples)
    if sizes.sizes is None:
        counts = np.diff(first_samples, append=total)
        counts *= sizes.constant
        return counts
    out = np.zeros(chunks, np.int64)
    filled = int(np.searchsorted(first_samples, total))  # chunks from here on are empty
    if not filled:
        return out
    table = sizes.sizes[:total]
    wide = int(table.max()) * most_per_chunk > 0xFFFFFFFF  # could a chunk's sum overflow 32 bits?
    out[:filled] = np.add.reduceat(table, first_samples[:filled], dtype=np.int64 if wide else np.uint32)
    empty = np.flatnonzero(first_samples[1:filled] == first_samples[:filled - 1])
    out[empty] = 0
    return out
