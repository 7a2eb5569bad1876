"""AMF0 values: a hardened decoder and an encoder that reproduces what it decodes.

FLV script tags (``onMetaData``, ``onCuePoint``...) are AMF0. We only need to
drop a few keys from ``onMetaData`` and change two values, but every other
value, however unusual (dates, nested arrays, typed objects, XML), must come
out again as it went in, so each AMF0 type decodes to a Python value whose type
says how to encode it back:

=====================  ==============================================
AMF0 marker            Python value
=====================  ==============================================
number (0x00)          ``float``
boolean (0x01)         ``bool``
string (0x02)          ``str``
object (0x03)          ``dict`` (exactly ``dict``: keys in file order)
movieclip (0x04)       rejected (reserved marker)
null (0x05)            ``None``
undefined (0x06)       :data:`UNDEFINED`
reference (0x07)       :class:`Reference` (index kept verbatim)
ECMA array (0x08)      :class:`EcmaArray` (a ``dict`` subclass)
strict array (0x0A)    ``list``
date (0x0B)            :class:`Date`
long string (0x0C)     :class:`LongString` (a ``str`` subclass)
unsupported (0x0D)     :data:`UNSUPPORTED`
recordset (0x0E)       rejected (reserved marker)
XML document (0x0F)    :class:`XmlDocument` (a ``str`` subclass)
typed object (0x10)    :class:`TypedObject`
AVM+ switch (0x11)     rejected (AMF3 is not handled)
=====================  ==============================================

References are kept as raw indexes: removing a complex value that comes
before a reference would shift what it points to (FLV writers do not emit
references in onMetaData). Strings are decoded as UTF-8 with ``surrogateescape`` so that invalid bytes
survive the round trip. Duplicate keys inside one object collapse to the last
one (a ``dict``); the ECMA array "associative count" is not trusted (it is
rewritten as the real number of entries).

Safety: every length is checked against the bytes left before it is used, the
nesting depth is bounded by ``max_depth``, and every loop consumes at least one
byte per iteration. Any violation raises :class:`MalformedMedia` (or
:class:`LimitExceeded` for the depth bound).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import LimitExceeded, MalformedMedia

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
NULL = 0x05
UNDEFINED_MARKER = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED_MARKER = 0x0D
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")
_OBJECT_END_BYTES = b"\x00\x00\x09"


class _Singleton:
    """A named marker value (AMF0 ``undefined`` and ``unsupported`` carry no data)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: AMF0 ``undefined`` (distinct from ``null``, which is ``None``).
UNDEFINED = _Singleton("UNDEFINED")
#: AMF0 ``unsupported`` marker value.
UNSUPPORTED = _Singleton("UNSUPPORTED")


class EcmaArray(dict):
    """An AMF0 ECMA array (associative array): a ``dict`` that encodes back as marker 0x08."""


class LongString(str):
    """A string that was stored as an AMF0 long string (32-bit length)."""


class XmlDocument(str):
    """An AMF0 XML document (stored like a long string, with its own marker)."""


@dataclass(frozen=True)
class Reference:
    """An AMF0 reference to an earlier complex value, kept as its raw index."""

    index: int


@dataclass(frozen=True)
class Date:
    """An AMF0 date: milliseconds since the epoch (a double) and a time zone field."""

    milliseconds: float
    timezone: int = 0


@dataclass
class TypedObject:
    """An AMF0 typed object: a class name and its properties."""

    class_name: str
    properties: dict = field(default_factory=dict)


class _Reader:
    """Cursor over one script body; every read checks the bytes left first."""

    __slots__ = ("data", "end", "max_depth", "pos")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.max_depth = max_depth

    def take(self, count: int, what: str) -> bytes:
        if count > self.end - self.pos:
            raise MalformedMedia(f"AMF0 {what} needs {count} bytes at {self.pos}, only {self.end - self.pos} left")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def u8(self, what: str) -> int:
        if self.pos >= self.end:
            raise MalformedMedia(f"AMF0 data ends where a {what} was expected")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self, what: str) -> int:
        return _U16.unpack(self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def short_string(self, what: str) -> str:
        return self.take(self.u16(what), what).decode("utf-8", "surrogateescape")

    def long_string(self, what: str) -> str:
        return self.take(self.u32(what), what).decode("utf-8", "surrogateescape")


def _read_properties(reader: _Reader, target: dict, depth: int) -> dict:
    """Read key/value pairs up to the object-end marker (0x00 0x00 0x09).

    A body that ends where a key is expected closes the object: some writers
    omit the final end marker, and the end of the data is an unambiguous end.
    """
    while reader.pos < reader.end:
        key = reader.short_string("property name")
        if not key and (reader.pos == reader.end or reader.data[reader.pos] == OBJECT_END):
            reader.pos = min(reader.pos + 1, reader.end)
            return target
        target[key] = _read_value(reader, depth)
    return target


def _read_value(reader: _Reader, depth: int) -> object:
    """Decode one value; ``depth`` counts the containers around it."""
    marker = reader.u8("type marker")
    if marker == NUMBER:
        return _DOUBLE.unpack(reader.take(8, "number"))[0]
    if marker == BOOLEAN:
        return reader.u8("boolean") != 0
    if marker == STRING:
        return reader.short_string("string")
    if marker == NULL:
        return None
    if marker == UNDEFINED_MARKER:
        return UNDEFINED
    if marker == REFERENCE:
        return Reference(reader.u16("reference"))
    if marker == DATE:
        milliseconds, timezone = _DATE.unpack(reader.take(10, "date"))
        return Date(milliseconds, timezone)
    if marker == LONG_STRING:
        return LongString(reader.long_string("long string"))
    if marker == XML_DOCUMENT:
        return XmlDocument(reader.long_string("XML document"))
    if marker == UNSUPPORTED_MARKER:
        return UNSUPPORTED
    if marker in (OBJECT, ECMA_ARRAY, STRICT_ARRAY, TYPED_OBJECT):
        return _read_container(reader, marker, depth + 1)
    raise MalformedMedia(f"unsupported AMF0 type marker 0x{marker:02x} at byte {reader.pos - 1}")


def _read_container(reader: _Reader, marker: int, depth: int) -> object:
    """Decode an object, ECMA array, strict array or typed object at nesting ``depth``."""
    if depth > reader.max_depth:
        raise LimitExceeded(f"AMF0 nesting deeper than max_amf_depth ({reader.max_depth})")
    if marker == OBJECT:
        return _read_properties(reader, {}, depth)
    if marker == ECMA_ARRAY:
        reader.u32("ECMA array count")  # advisory only: often wrong, never used to allocate
        return _read_properties(reader, EcmaArray(), depth)
    if marker == TYPED_OBJECT:
        name = reader.short_string("typed object class name")
        return TypedObject(name, _read_properties(reader, {}, depth))
    count = reader.u32("strict array count")
    if count > reader.end - reader.pos:  # every element takes at least one byte
        raise MalformedMedia(f"AMF0 strict array claims {count} elements, only {reader.end - reader.pos} bytes left")
    return [_read_value(reader, depth) for _ in range(count)]


def decode_value(data: bytes, max_depth: int, offset: int = 0) -> tuple[object, int]:
    """Decode one AMF0 value at ``offset``; return it and the offset just after it."""
    reader = _Reader(data, max_depth)
    reader.pos = offset
    try:
        value = _read_value(reader, 0)
    except RecursionError:  # only with a max_depth configured beyond what the interpreter allows
        raise LimitExceeded("AMF0 nesting too deep for this interpreter") from None
    return value, reader.pos


def decode_all(data: bytes, max_depth: int) -> list:
    """Decode every value of a script body (name, then arguments)."""
    values = []
    offset = 0
    while offset < len(data):
        value, offset = decode_value(data, max_depth, offset)
        values.append(value)
    return values


def _encode_string_body(text: str, marker_short: int, marker_long: int, force_long: bool) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if not force_long and len(raw) <= 0xFFFF:
        return bytes((marker_short,)) + _U16.pack(len(raw)) + raw
    if len(raw) > 0xFFFFFFFF:
        raise ValueError("string too long for AMF0")
    return bytes((marker_long,)) + _U32.pack(len(raw)) + raw


def _encode_key(key: str) -> bytes:
    raw = str(key).encode("utf-8", "surrogateescape")
    if len(raw) > 0xFFFF:
        raise ValueError("AMF0 property name longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def _encode_properties(properties: dict, out: list[bytes]) -> None:
    for key, item in properties.items():
        out.append(_encode_key(key))
        _encode_into(item, out)
    out.append(_OBJECT_END_BYTES)


def _encode_into(value: object, out: list[bytes]) -> None:
    """Append the encoding of ``value``; the Python type picks the AMF0 marker."""
    if value is None:
        out.append(b"\x05")
    elif value is UNDEFINED:
        out.append(b"\x06")
    elif value is UNSUPPORTED:
        out.append(b"\x0d")
    elif isinstance(value, bool):
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, (int, float)):
        out.append(b"\x00" + _DOUBLE.pack(float(value)))
    elif isinstance(value, XmlDocument):
        out.append(_encode_string_body(value, XML_DOCUMENT, XML_DOCUMENT, True))
    elif isinstance(value, str):
        out.append(_encode_string_body(value, STRING, LONG_STRING, isinstance(value, LongString)))
    elif isinstance(value, EcmaArray):
        out.append(b"\x08" + _U32.pack(len(value)))
        _encode_properties(value, out)
    elif isinstance(value, dict):
        out.append(b"\x03")
        _encode_properties(value, out)
    elif isinstance(value, TypedObject):
        out.append(b"\x10" + _encode_key(value.class_name))
        _encode_properties(value.properties, out)
    elif isinstance(value, (list, tuple)):
        out.append(b"\x0a" + _U32.pack(len(value)))
        for item in value:
            _encode_into(item, out)
    elif isinstance(value, Date):
        out.append(b"\x0b" + _DATE.pack(value.milliseconds, value.timezone))
    elif isinstance(value, Reference):
        out.append(b"\x07" + _U16.pack(value.index))
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")


def encode_value(value: object) -> bytes:
    """Encode one value as AMF0 (the inverse of :func:`decode_value`)."""
    out: list[bytes] = []
    _encode_into(value, out)
    return b"".join(out)


def encode_all(values: list) -> bytes:
    """Encode a sequence of values back to back (a script body)."""
    out: list[bytes] = []
    for value in values:
        _encode_into(value, out)
    return b"".join(out)
