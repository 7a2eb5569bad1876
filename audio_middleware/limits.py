"""Safety limits applied while parsing untrusted media.

Every length, count and nesting level read from a file is checked against
these before it is used to allocate memory or drive a loop.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one extraction; the defaults suit any sane file."""

    #: Largest ``moov`` box accepted (sample tables of a very long movie are ~5 MiB).
    max_moov_size: int = 64 * MiB
    #: Largest number of entries in one sample table (stsz, stco, stts...).
    max_table_entries: int = 50_000_000
    #: Largest number of tracks in one movie.
    max_tracks: int = 1024
    #: Deepest box nesting followed inside ``moov``/``moof``.
    max_box_depth: int = 32
    #: Largest ``moof`` box of a fragmented MP4.
    max_moof_size: int = 16 * MiB
    #: Largest number of boxes inside one ``moov`` (a real one holds tens per track): every box costs
    #: some microseconds of Python on each pass, so a moov of tiny boxes must not pass for a small file.
    max_moov_boxes: int = 50_000
    #: Number of top-level boxes looked at before giving up on finding ``moov``.
    max_top_level_boxes: int = 100_000
    #: Largest FLV script-data (onMetaData) tag parsed.
    max_script_size: int = 16 * MiB
    #: Deepest AMF0 nesting (objects in arrays in objects...).
    max_amf_depth: int = 32
    #: FLV bytes read on a stream, before the first output byte, while looking for the first audio tag.
    flv_probe_bytes: int = 64 * MiB
    #: Largest body copied to a temporary file when random access is needed.
    spool_limit: int = 2 * GiB
