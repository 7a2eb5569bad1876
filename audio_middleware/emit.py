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

DEFAULT_BLOCK = 256 * 1024


def iter_plan_bytes(pieces: Iterable[Piece], source: Source, block_size: int = DEFAULT_BLOCK) -> Iterator[bytes]:
    """Yield the output bytes of ``pieces``; raises SourceTruncated if the source runs short."""
    parts: list[bytes] = []
    pending = 0
    for piece in pieces:
        if isinstance(piece, Literal):
            parts.append(piece.data)
            pending += len(piece.data)
        elif isinstance(piece, Spans):
            gather = getattr(source, "gather", None)
            if gather is not None:  # positioned reads in one tight loop (file-backed sources)
                if parts:
                    yield b"".join(parts)
                    parts, pending = [], 0
                yield from gather(piece.offsets, piece.lengths, block_size)
                continue
            for offset, length in zip(piece.offsets, piece.lengths):
                if length >= block_size:
                    if parts:
                        yield b"".join(parts)
                        parts, pending = [], 0
                    yield from source.iter_range(offset, length)
                    continue
                parts.append(read_exact(source, offset, length, "an audio span"))
                pending += length
                if pending >= block_size:
                    yield b"".join(parts)
                    parts, pending = [], 0
            continue
        elif piece.length >= block_size:
            if parts:
                yield b"".join(parts)
                parts, pending = [], 0
            yield from source.iter_range(piece.offset, piece.length)
            continue
        elif piece.length:
            parts.append(read_exact(source, piece.offset, piece.length, "an audio span"))
            pending += piece.length
        if pending >= block_size:
            yield b"".join(parts)
            parts, pending = [], 0
    if parts:
        yield b"".join(parts)
