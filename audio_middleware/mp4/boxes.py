"""A small ISO-BMFF box reader and writer with explicit size rules.

Sizes follow ISO/IEC 14496-12 4.2: ``size`` counts the whole box; 1 means a
64-bit ``largesize`` follows the type; 0 means "to the end of the enclosing
space" (file or parent). A ``uuid`` box carries 16 more header bytes. Every
size is checked against the space that contains it before it is trusted.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ..errors import LimitExceeded, MalformedMedia

HEADER = struct.Struct(">I4s")
LARGESIZE = struct.Struct(">Q")
U32 = struct.Struct(">I")
MAX_U32 = 0xFFFFFFFF

#: Boxes whose payload is nothing but child boxes, which we may descend into and rebuild.
CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"edts", b"dinf", b"udta", b"moof",
                        b"traf", b"mfra", b"tref"})


@dataclass(frozen=True, slots=True)
class Box:
    """Where a box sits: ``offset`` of its first header byte, its header and total size."""

    type: bytes
    offset: int
    header_size: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def payload_offset(self) -> int:
        return self.offset + self.header_size

    @property
    def payload_size(self) -> int:
        return self.size - self.header_size

    @property
    def name(self) -> str:
        return self.type.decode("latin-1")


def parse_header(data: bytes | memoryview, offset: int, limit: int | None, *, base: int = 0) -> Box:
    """Read the box header at ``data[offset:]``.

    ``limit`` is where the enclosing space ends (an index into ``data``'s
    coordinate space), or None when it is unknown (a stream of unknown length;
    then a size-0 box is refused). ``base`` is added to offsets in the result,
    so that a header read from a small buffer can carry its position in the file.
    """
    available = len(data) - offset
    if available < 8:
        raise MalformedMedia(f"box header at byte {base + offset} is cut short")
    size, kind = HEADER.unpack_from(data, offset)
    header = 8
    if size == 1:
        if available < 16:
            raise MalformedMedia(f"64-bit box header at byte {base + offset} is cut short")
        (size,) = LARGESIZE.unpack_from(data, offset + 8)
        header = 16
    elif size == 0:
        if limit is None:
            raise MalformedMedia(f"box '{_name(kind)}' at byte {base + offset} extends to an unknown end")
        size = limit - offset
    if kind == b"uuid":
        header += 16
    if size < header:
        raise MalformedMedia(f"box '{_name(kind)}' at byte {base + offset} has size {size}, smaller than its header")
    if limit is not None and offset + size > limit:
        raise MalformedMedia(
            f"box '{_name(kind)}' at byte {base + offset} claims {size} bytes, only {limit - offset} available"
        )
    return Box(kind, base + offset, header, size)


def iter_children(data: bytes | memoryview, start: int, end: int) -> Iterator[Box]:
    """The boxes laid end to end in ``data[start:end]``.

    Fewer than 8 trailing bytes are ignored (QuickTime ends some lists with a
    32-bit zero terminator). Each step advances by at least 8 bytes.
    """
    if end > len(data):
        raise MalformedMedia("box list runs past the data holding it")
    pos = start
    while end - pos >= 8:
        box = parse_header(data, pos, end)
        yield box
        pos = box.end


#: The containers whose children the movie's parsing and rewriting iterate.
PARSED_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl"})


def check_box_count(data: bytes | memoryview, box: Box, limit: int, max_depth: int) -> None:
    """Refuse (LimitExceeded) a box holding more than ``limit`` boxes in itself and its
    :data:`PARSED_CONTAINERS`: bounds every later pass over them, each of which costs some
    microseconds of Python per box (others, such as ``udta``, are copied unparsed)."""
    count = 0
    stack = [(box, 0)]
    while stack:
        parent, depth = stack.pop()
        if depth >= max_depth:
            raise LimitExceeded(f"boxes nest deeper than {max_depth} levels")
        for child in iter_children(data, parent.payload_offset, parent.end):
            count += 1
            if count > limit:
                raise LimitExceeded(f"'{box.name}' holds more than {limit} boxes")
            if child.type in PARSED_CONTAINERS:
                stack.append((child, depth + 1))


def children_by_type(data: bytes | memoryview, box: Box) -> dict[bytes, list[Box]]:
    """Group a container's children by type (duplicates kept, in order)."""
    found: dict[bytes, list[Box]] = {}
    for child in iter_children(data, box.payload_offset, box.end):
        found.setdefault(child.type, []).append(child)
    return found


def only_child(data: bytes | memoryview, box: Box, kind: bytes, *, required: bool = True) -> Box | None:
    """The single child of ``kind``; two of them is malformed (duplicate-atom attacks)."""
    matches = [child for child in iter_children(data, box.payload_offset, box.end) if child.type == kind]
    if len(matches) > 1:
        raise MalformedMedia(f"'{box.name}' at byte {box.offset} holds {len(matches)} '{_name(kind)}' boxes")
    if not matches:
        if required:
            raise MalformedMedia(f"'{box.name}' at byte {box.offset} has no '{_name(kind)}' box")
        return None
    return matches[0]


def child_path(data: bytes | memoryview, box: Box, *kinds: bytes) -> Box:
    """Follow a chain of single required children, e.g. ``mdia/minf/stbl``."""
    for kind in kinds:
        box = only_child(data, box, kind)  # type: ignore[assignment]
    return box


def build_box(kind: bytes, *payload: bytes) -> bytes:
    """Serialize a box, using a 64-bit size only when 32 bits cannot hold it."""
    length = sum(len(part) for part in payload)
    if length + 8 <= MAX_U32:
        return HEADER.pack(length + 8, kind) + b"".join(payload)
    return HEADER.pack(1, kind) + LARGESIZE.pack(length + 16) + b"".join(payload)


def box_header(kind: bytes, payload_length: int) -> bytes:
    """Just the header of a box whose payload is ``payload_length`` bytes long."""
    if payload_length + 8 <= MAX_U32:
        return HEADER.pack(payload_length + 8, kind)
    return HEADER.pack(1, kind) + LARGESIZE.pack(payload_length + 16)


def rebuild(data: bytes | memoryview, box: Box, edits: Mapping[int, bytes | None], depth: int = 0,
            max_depth: int = 32) -> bytes:
    """Serialize ``box`` with some descendants replaced.

    ``edits`` maps the offset of a descendant box to its new bytes, or to None to
    remove it. Only containers on the way to an edit are re-serialized (with new
    sizes); everything else is copied byte for byte, in a single join at the end.
    """
    return b"".join(rebuild_parts(data, box, edits, depth, max_depth)[1])


def rebuild_parts(data: bytes | memoryview, box: Box, edits: Mapping[int, bytes | None], depth: int = 0,
                  max_depth: int = 32) -> tuple[int, list[bytes | memoryview]]:
    """(size, pieces) of :func:`rebuild` without joining: unchanged boxes stay zero-copy views, one
    view per run of unchanged siblings (a moov of 100k small boxes is not 100k pieces)."""
    size, parts, _ = _rebuild_parts(data, box, edits, sorted(edits), depth, max_depth)
    return size, parts


def _rebuild_parts(data: bytes | memoryview, box: Box, edits: Mapping[int, bytes | None], where: list[int],
                   depth: int, max_depth: int) -> tuple[int, list[bytes | memoryview], bool]:
    """:func:`rebuild_parts`, plus whether ``box`` is unchanged; ``where``: the edits' offsets, sorted
    (so finding an edit inside a box is a bisection, not a scan of every edit for every box)."""
    if box.offset in edits:
        new = edits[box.offset] or b""
        return len(new), [new], False
    inside = bisect_right(where, box.offset)
    if inside == len(where) or where[inside] >= box.end:
        return box.size, [memoryview(data)[box.offset:box.end]], True
    if box.type not in CONTAINERS:
        raise MalformedMedia(f"cannot rewrite inside '{box.name}'")
    if depth >= max_depth:
        raise LimitExceeded(f"boxes nest deeper than {max_depth} levels")
    size, parts = 0, []
    run_start = run_end = -1  # unchanged siblings are contiguous: one view for each run of them
    for child in iter_children(data, box.payload_offset, box.end):
        child_size, child_parts, unchanged = _rebuild_parts(data, child, edits, where, depth + 1, max_depth)
        size += child_size
        if unchanged and run_end == child.offset:
            run_end = child.end
            continue
        if run_start >= 0:
            parts.append(memoryview(data)[run_start:run_end])
            run_start = run_end = -1
        if unchanged:
            run_start, run_end = child.offset, child.end
        else:
            parts += child_parts
    if run_start >= 0:
        parts.append(memoryview(data)[run_start:run_end])
    header = box_header(box.type, size)
    return len(header) + size, [header, *parts], False


def full_box_version(data: bytes | memoryview, box: Box) -> int:
    """The version byte of a FullBox (and check the 4-byte version/flags exist)."""
    if box.payload_size < 4:
        raise MalformedMedia(f"'{box.name}' at byte {box.offset} is too short for its version and flags")
    return data[box.payload_offset]


def _name(kind: bytes) -> str:
    return kind.decode("latin-1")
