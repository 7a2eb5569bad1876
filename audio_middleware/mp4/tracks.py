"""What a ``trak`` box says about one track: identity, handler, language, chunks.

Only audio tracks get their sample tables decoded: video tables are never
needed (the video is dropped), which keeps planning fast on long movies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from ..errors import MalformedMedia
from ..limits import Limits
from .boxes import Box, child_path, full_box_version, iter_children, only_child
from .tables import SampleSizes, chunk_first_samples, chunk_offsets, chunk_sizes, stsc_columns

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
U16 = struct.Struct(">H")
#: handler_type of tracks we keep.
AUDIO_HANDLER = b"soun"


@dataclass
class Track:
    """One ``trak`` of the movie, with its chunk layout when it is an audio track."""

    box: Box
    track_id: int
    handler: bytes
    tkhd_duration: int = 0
    timescale: int = 0
    media_duration: int = 0
    language: str = "und"
    codec: str = ""
    sample_count: int = 0
    #: The stbl box holding the sample tables, and its chunk offset box (stco or co64).
    stbl: Box | None = None
    offsets_box: Box | None = None
    #: Source offset and byte size of every chunk (audio tracks only),
    #: as int64 numpy arrays: long movies have hundreds of thousands of chunks.
    chunk_offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    chunk_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def is_audio(self) -> bool:
        return self.handler == AUDIO_HANDLER

    @property
    def duration_seconds(self) -> float:
        return self.media_duration / self.timescale if self.timescale else 0.0

    def describe(self) -> dict:
        """Plain facts for ``plan.info`` and the command line."""
        return {"track_id": self.track_id, "codec": self.codec, "language": self.language,
                "duration": round(self.duration_seconds, 6), "samples": self.sample_count,
                "timescale": self.timescale}


def parse_track(data: bytes | memoryview, trak: Box, limits: Limits) -> Track:
    """Read the headers of a ``trak``; decode sample tables only for audio."""
    tkhd = only_child(data, trak, b"tkhd")
    version = full_box_version(data, tkhd)
    need = 4 + (32 if version == 1 else 20)
    if tkhd.payload_size < need:
        raise MalformedMedia(f"tkhd at byte {tkhd.offset} is too short")
    at = tkhd.payload_offset + 4
    if version == 1:
        track_id = U32.unpack_from(data, at + 16)[0]
        duration = U64.unpack_from(data, at + 24)[0]
    else:
        track_id = U32.unpack_from(data, at + 8)[0]
        duration = U32.unpack_from(data, at + 16)[0]
    mdia = only_child(data, trak, b"mdia")
    hdlr = only_child(data, mdia, b"hdlr")
    if hdlr.payload_size < 12:
        raise MalformedMedia(f"hdlr at byte {hdlr.offset} is too short")
    handler = bytes(data[hdlr.payload_offset + 8:hdlr.payload_offset + 12])
    track = Track(trak, track_id, handler, tkhd_duration=duration)
    _read_media_header(data, only_child(data, mdia, b"mdhd"), track)
    if track.is_audio:
        _read_audio_tables(data, mdia, track, limits)
    return track


def _read_media_header(data: bytes | memoryview, mdhd: Box, track: Track) -> None:
    version = full_box_version(data, mdhd)
    need = 4 + (30 if version == 1 else 18)
    if mdhd.payload_size < need:
        raise MalformedMedia(f"mdhd at byte {mdhd.offset} is too short")
    at = mdhd.payload_offset + 4
    if version == 1:
        track.timescale = U32.unpack_from(data, at + 16)[0]
        track.media_duration = U64.unpack_from(data, at + 20)[0]
        code = U16.unpack_from(data, at + 28)[0]
    else:
        track.timescale = U32.unpack_from(data, at + 8)[0]
        track.media_duration = U32.unpack_from(data, at + 12)[0]
        code = U16.unpack_from(data, at + 16)[0]
    track.language = decode_language(code)


def decode_language(code: int) -> str:
    """ISO-639-2/T packed as three 5-bit letters; small values are old Macintosh codes."""
    if code == 0:
        return "eng"  # Macintosh language code 0 is English
    if code < 0x400 or code == 0x7FFF:
        return "und"
    letters = bytes(((code >> shift) & 0x1F) + 0x60 for shift in (10, 5, 0))
    return letters.decode("ascii") if letters.isalpha() else "und"


def _read_audio_tables(data: bytes | memoryview, mdia: Box, track: Track, limits: Limits) -> None:
    stbl = child_path(data, mdia, b"minf", b"stbl")
    track.stbl = stbl
    found: dict[bytes, list[Box]] = {}
    for child in iter_children(data, stbl.payload_offset, stbl.end):
        found.setdefault(child.type, []).append(child)
    for kind, boxes in found.items():
        if len(boxes) > 1:
            raise MalformedMedia(f"track {track.track_id} has {len(boxes)} '{kind.decode('latin-1')}' boxes")
    if b"stsd" not in found:
        raise MalformedMedia(f"audio track {track.track_id} has no sample description (stsd)")
    track.codec = _first_sample_entry(data, found[b"stsd"][0])
    size_boxes = found.get(b"stsz", []) + found.get(b"stz2", [])
    offset_boxes = found.get(b"stco", []) + found.get(b"co64", [])
    if len(size_boxes) != 1 or len(offset_boxes) != 1 or b"stsc" not in found:
        raise MalformedMedia(f"audio track {track.track_id} lacks one of stsz/stz2, stco/co64, stsc")
    sizes = SampleSizes(data, size_boxes[0], limits.max_table_entries)
    track.sample_count = sizes.count
    track.offsets_box = offset_boxes[0]
    track.chunk_offsets = chunk_offsets(data, offset_boxes[0], limits.max_table_entries)
    stsc = stsc_columns(data, found[b"stsc"][0], limits.max_table_entries)
    first_samples, covered = chunk_first_samples(stsc, len(track.chunk_offsets), sizes.count)
    most = int(stsc[1].max()) if len(stsc[1]) else 0
    del stsc  # one int64 column pair per stsc entry: not needed any more
    track.chunk_sizes = chunk_sizes(first_samples, covered, sizes, most)


def chunk_first_samples_of(data: bytes | memoryview, track: Track, limits: Limits) -> tuple[np.ndarray, int]:
    """First sample index of every chunk of an audio track, and how many samples its chunks hold.

    Recomputed from ``stsc`` rather than kept on :class:`Track`: only seeking
    needs it, and it is an int64 per chunk held through every cold plan.
    """
    stsc = only_child(data, track.stbl, b"stsc")
    columns = stsc_columns(data, stsc, limits.max_table_entries)
    return chunk_first_samples(columns, len(track.chunk_offsets), track.sample_count)


def _first_sample_entry(data: bytes | memoryview, stsd: Box) -> str:
    if stsd.payload_size < 8:
        raise MalformedMedia(f"stsd at byte {stsd.offset} is too short")
    count = U32.unpack_from(data, stsd.payload_offset + 4)[0]
    if count == 0:
        raise MalformedMedia(f"stsd at byte {stsd.offset} has no sample entry")
    entries = iter_children(data, stsd.payload_offset + 8, stsd.end)
    first = next(entries, None)
    if first is None:
        raise MalformedMedia(f"stsd at byte {stsd.offset} has no sample entry")
    return first.type.decode("latin-1").strip()
