"""Decide whether a response body is a container we transform.

Two signals: the Content-Type (``video/mp4`` says MP4 family, ``text/html``
says leave it alone, ``application/octet-stream`` or none says "look") and the
first bytes (an MP4 box type we know, or the ``FLV`` signature).
"""

from __future__ import annotations

import struct
from enum import Enum

MP4_TYPES = frozenset({
    "video/mp4", "audio/mp4", "application/mp4", "video/quicktime", "video/3gpp", "video/3gpp2", "audio/3gpp",
    "audio/3gpp2", "audio/x-m4a", "audio/m4a", "video/x-m4v", "audio/x-m4b", "video/x-f4v", "video/f4v",
    "audio/aac-mp4", "video/iso.segment",
})
FLV_TYPES = frozenset({"video/x-flv", "video/flv", "application/x-flv", "flv-application/octet-stream"})
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream", "application/x-download",
                           "application/force-download"})
#: Box types that can open an MP4-family file.
FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx",
                         b"moof", b"junk", b"pdin", b"prfl"})


class Container(Enum):
    MP4 = "mp4"
    FLV = "flv"


def by_content_type(mimetype: str) -> tuple[Container | None, bool]:
    """(container the type names, whether the body is worth sniffing at all)."""
    mimetype = mimetype.lower()
    if mimetype in MP4_TYPES:
        return Container.MP4, True
    if mimetype in FLV_TYPES:
        return Container.FLV, True
    return None, mimetype in GENERIC_TYPES


def by_signature(head: bytes) -> Container | None:
    """The container the first bytes announce, if any."""
    if head[:3] == b"FLV" and len(head) >= 9:  # a version other than 1 is refused later: valid, unsupported (501)
        return Container.FLV
    if len(head) >= 8:
        size, kind = struct.unpack_from(">I4s", head)
        if kind in FIRST_BOXES and (size in (0, 1) or size >= 8):
            return Container.MP4
    return None
