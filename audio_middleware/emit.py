"""Turn pieces into output bytes by reading their spans from a source.

Small pieces (box headers, short audio chunks, FLV tags) are gathered into
blocks of about ``block_size`` bytes so that the server makes few, large
writes; spans at least that large are passed through in the source's own
blocks without an extra copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .plan import Literal, Piece, Spans
from .sources import Source, read_exact

DEFAULT_BLOCK = 128 * 1024  # small enough that a block and its parts stay under 2 MB of RSS headroom


def iter_plan_bytes(pieces: Iterable[Piece], source: Source, block_size: int = DEFAULT_BLOCK) -> Iterator[bytes]:
    """Yield the output bytes of ``pieces``; raises SourceTruncated if the source runs short."""
    gather = getattr(source, "gather", None)
    parts: list[bytes] = []
    pending = 0
    for piece in pieces:
        if isinstance(piece, Literal):
            parts.append(piece.data)
            pending += len(piece.data)
        elif isinstance(piece, Spans) and gather is not None:
            # file-backed sources: positioned reads in one tight loop
            if parts:
                yield b"".join(parts)
                parts, pending = [], 0
            yield from gather(piece.offsets, piece.lengths, block_size)
            continue
        else:
            spans = zip(piece.offsets, piece.lengths) if isinstance(piece, Spans) else ((piece.offset, piece.length),)
            for offset, length in spans:
                if length >= block_size:  # large spans pass through in the source's own blocks
                    if parts:
                        yield b"".join(parts)
                        parts, pending = [], 0
                    yield from source.iter_range(offset, length)
                elif length:
                    parts.append(read_exact(source, offset, length, "an audio span"))
                    pending += length
                    if pending >= block_size:
                        yield b"".join(parts)
                        parts, pending = [], 0
            continue
        if pending >= block_size:
            yield b"".join(parts)
            parts, pending = [], 0
    if parts:
        yield b"".join(parts)
