"""Walk the top-level boxes of a source to find ``ftyp`` and ``moov``.

Only box headers are read on a random-access source. On a forward-only source
the boxes before ``moov`` are read through (they are small: ftyp, free...);
meeting ``mdat`` or ``moof`` first means the movie header comes later, so we
raise :class:`NeedsRandomAccess` instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LimitExceeded, MalformedMedia, NeedsRandomAccess
from ..limits import Limits
from ..sources import Source, read_exact, stop_retaining
from .boxes import Box, parse_header
from .moov_read import read_condensed_moov

#: Largest non-media box read through on a forward-only source before moov.
MAX_PREAMBLE_BOX = 1024 * 1024
MAX_FTYP = 4096
MEDIA_BOXES = frozenset({b"mdat", b"moof"})


@dataclass
class Layout:
    """What the top level told us: the first ftyp (if any) and the moov box."""

    ftyp: bytes | None
    #: The moov without the sample tables of non-audio tracks (see :mod:`.moov_read`).
    moov: bytes | bytearray
    moov_box: Box

    @property
    def major_brand(self) -> bytes:
        return self.ftyp[8:12] if self.ftyp and len(self.ftyp) >= 12 else b""


def read_top_header(source: Source, offset: int) -> Box | None:
    """The top-level box header at ``offset``, or None at the end of the source."""
    head = source.read(offset, 16)
    if len(head) < 8:
        if head and any(head):
            raise MalformedMedia(f"{len(head)} stray bytes at the end of the file (byte {offset})")
        return None
    limit = None if source.size is None else source.size - offset
    if limit is None and head[:4] == b"\0\0\0\0":
        raise MalformedMedia(f"box at byte {offset} extends to the end of a body of unknown length")
    return parse_header(head, 0, limit, base=offset)


def find_moov(source: Source, limits: Limits, *, skip_media: bool = False) -> Layout:
    """Locate and read ``moov`` (bounded by ``limits.max_moov_size``).

    On a forward-only source, finding the moov before any media data settles
    that the body can be streamed, so the source stops retaining what it has
    read (kept until now only so that the body could still be spooled).
    Meeting ``mdat`` first raises :class:`NeedsRandomAccess`, unless
    ``skip_media``: then the media data is read past (the first of two passes
    over a body whose moov comes last; the caller has stopped the retaining).
    """
    if skip_media:
        stop_retaining(source)  # the media data is read past, not kept
    offset = 0
    ftyp: bytes | None = None
    preamble = 0
    for _ in range(limits.max_top_level_boxes):
        box = read_top_header(source, offset)
        if box is None:
            break
        if box.type == b"moov":
            if box.size > limits.max_moov_size:
                raise LimitExceeded(f"moov is {box.size} bytes, more than max_moov_size ({limits.max_moov_size})")
            # From here on nothing can ask for random access: the movie header is in front.
            stop_retaining(source)
            return Layout(ftyp, read_condensed_moov(source, box, limits), box)
        if box.type == b"ftyp" and ftyp is None:
            if box.size > MAX_FTYP:
                raise MalformedMedia(f"ftyp of {box.size} bytes")
            ftyp = read_exact(source, box.offset, box.size, "the ftyp box")
        elif not source.random_access:
            if skip_media and box.type == b"mdat":
                offset = box.end  # read past, never held: the next header read skips it
                continue
            preamble += box.size
            if box.type in MEDIA_BOXES or box.size > MAX_PREAMBLE_BOX or preamble > limits.max_moov_size:
                raise NeedsRandomAccess(f"'{box.name}' comes before moov")
            read_exact(source, box.offset, box.size, f"the '{box.name}' box")
        offset = box.end
    raise MalformedMedia("no moov box found")


def check_gone_past(first: int, layout: Layout) -> None:
    """On a forward-only body read up to the end of the moov, no audio can come from before it.

    Only a hostile file points chunks into its own ``ftyp``/``moov``; a file
    could still serve those bytes, a stream has gone past them.
    """
    if first < layout.moov_box.end:
        raise MalformedMedia(f"audio chunk at byte {first} lies before the end of the moov (byte "
                             f"{layout.moov_box.end}), which a forward-only body has already gone past")
