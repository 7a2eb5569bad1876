"""FLV (video + audio) to audio-only FLV, as a plan of literals and source spans.

Output layout::

    FLV header (video flag cleared, audio flag set, DataOffset 9) + PreviousTagSize0
    script tags, in place (onMetaData rewritten as a Literal; onCuePoint, captions and other
    script tags describe the video and are dropped)
    audio tags, each one Span = tag header + data + its own PreviousTagSize

Copying the PreviousTagSize that *follows* an audio tag keeps the back-pointer
chain valid without generating a byte per tag: that field describes the tag
before it, i.e. the audio tag itself.

Two ways to plan (``plan_flv(index=...)``):

- **index** (random-access source): walk every tag header (header + the first
  data bytes that name an audio codec) in reads of :data:`INDEX_WINDOW` bytes,
  one per tag that follows a large (video) tag, so never a video payload, and
  return a complete :class:`Plan` with an exact length, so the caller can send
  Content-Length and serve Range.
- **lazy** (stream): return a :class:`LazyPlan` whose generator reads the
  source as it is consumed. It never reads behind a span it has yielded: it
  reads the next tag header only once resumed, i.e. after the caller has read
  the span. Before its first piece it looks ahead (at most
  ``Limits.flv_probe_bytes``) for the first audio tag, so "no audio" is an
  error raised before any output; the header and script tags it holds
  meanwhile are Literals bounded by ``Limits.max_script_size``.

Behaviours decided here (and tested):

- Navigation trusts DataSize only; PreviousTagSize values are never used to
  move (bad ones are tolerated and copied as they are with the audio tag).
- Video tags and unknown tag types are dropped. An audio tag with the filter
  (encryption) bit set is :class:`UnsupportedMedia`. Reserved bits are ignored.
- Every ``onMetaData`` script tag is rewritten (see :func:`rewrite_metadata`);
  other script tags (``onCuePoint``, ``onTextData``...) are dropped: they
  navigate or caption the video, and demuxers expose them as a data stream.
- Fewer than 11 bytes after the last tag are ignored (trailing garbage). A
  final audio/script tag whose own PreviousTagSize is missing gets a generated
  one when the source size is known.
- Truncation: a tag we must copy that runs past the end of the source is
  :class:`MalformedMedia` in index mode and :class:`SourceTruncated` in lazy
  mode (raised by the generator when the source size is known, else by the
  caller when reading the span). A truncated video tag at the end only ends
  the walk: the audio output is complete.
- Seeking (``start``/``end`` in seconds): the audio frame that contains
  ``start`` (the last one at or before it) and the tags with a timestamp in
  ``(start, end)`` milliseconds are kept, timestamps unchanged, plus every
  decoder configuration tag (AAC AudioSpecificConfig, Enhanced-RTMP
  SequenceStart) whatever its time. The walk stops at the first audio tag at or
  past ``end`` (audio timestamps are taken as non-decreasing). Script tags are
  kept if they come before the first audio tag or fall inside the window.
  ``onMetaData.duration`` becomes ``min(end, duration) - start`` when the file
  states a duration. A window inside one frame gets that frame. A ``start``
  after the last audio frame's timestamp keeps that frame while ``start`` is
  before its end, as an MP4 clip does; tags have no duration, so the end comes
  from the codec, else the spacing of the two frames before (:mod:`.frames`;
  unknown: 416). Both modes decide it from the same bytes (each tag's peek),
  the lazy one wherever its walk ends (probe or stream). Bounds are
  compared in whole milliseconds rounded to a nanosecond (2.011 s is 2011 ms,
  not 2011.0000000000002); ``start < end`` closer than that keeps the frame that
  contains ``start``. No audio frame in the window (``end=0`` included, as for
  MP4): :class:`RangeNotSatisfiable` (416); ``start >= end`` (both given) or a
  negative ``end``: :class:`InvalidRequest` (400). A NaN or infinite
  bound is a ``ValueError`` (the middleware refuses those first).
- ``filesize`` (any spelling, e.g. OBS's ``fileSize``) is removed, in both
  modes: lazy mode cannot know the output length, and a rendition's bytes must
  not depend on how the app served the video (one strong ETag, one byte
  sequence: a resumed download may join a file-backed and a streamed answer).

``plan.info``: ``container`` ("flv"), ``audio_codec`` (from the first audio
tag's SoundFormat, see :data:`.tags.SOUND_FORMATS`: "aac", "mp3", "adpcm",
"pcm"... or an Enhanced-RTMP FourCC name such as "opus"), ``duration`` in
seconds (onMetaData's, clipped when seeking; if absent or 0, in index mode the
last kept audio timestamp, else None) and ``tracks`` (one ``{"type": "audio",
"codec": ...}``). A LazyPlan fills them in when its first piece is taken.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import (
    AudioExtractionError,
    InvalidRequest,
    LimitExceeded,
    MalformedMedia,
    NoAudioTrack,
    RangeNotSatisfiable,
    SourceTruncated,
    UnsupportedMedia,
)
from ..limits import Limits
from ..plan import LazyPlan, Literal, Piece, Plan, Span, Spans, coalesce
from ..sources import Source, read_exact
from . import amf
from .frames import LastFrame, data_head
from .tags import (
    FILE_HEADER_SIZE,
    FILTER_BIT,
    PEEK_SIZE,
    PREVIOUS_TAG_SIZE,
    TAG_AUDIO,
    TAG_HEAD,
    TAG_HEADER_SIZE,
    TAG_OVERHEAD,
    TAG_SCRIPT,
    TYPE_MASK,
    FileHeader,
    audio_codec_name,
    is_audio_config,
    parse_file_header,
)

CONTENT_TYPE = "video/x-flv"

#: A script body starting with these bytes is AMF0 string "onMetaData".
METADATA_PREFIX = b"\x02\x00\x0aonMetaData"

#: Bytes read at a time by the index walk: the headers of a run of audio tags in one read
#: (2 KiB measured best on a 10-minute FLV: 99 -> 69 ms; 256 B is slower, 4 KiB copies too much).
INDEX_WINDOW = 2048

#: onMetaData keys that only describe video (compared in lower case).
VIDEO_KEYS = frozenset({
    "width", "height", "framerate", "fps", "displaywidth", "displayheight", "framewidth", "frameheight",
    "keyframes", "haskeyframes", "lastkeyframetimestamp", "lastkeyframelocation",
    "filepositions", "times", "avcprofile", "avclevel",
    # Size of the source's tag data: wrong for the output (filesize is handled apart).
    "datasize",
})
#: onMetaData keys starting with one of these (lower case) are dropped too.
VIDEO_KEY_PREFIXES = ("video", "keyframe", "canseektoend")


@dataclass(frozen=True)
class Window:
    """The kept time range, in milliseconds (``end_ms`` may be infinite)."""

    start: float | None
    end: float | None
    start_ms: float
    end_ms: float

    @property
    def active(self) -> bool:
        return self.start_ms > 0 or self.end_ms != math.inf

    @classmethod
    def from_seconds(cls, start: float | None, end: float | None) -> Window:
        """Validate ``start``/``end``; ``None`` or ``start <= 0`` means "from the beginning".

        Only an inverted window (``start >= end``, both given) or a negative
        ``end`` is a bad request (400), as in MP4 clipping; ``end=0`` alone is a
        valid window without audio, which the walk answers 416.
        """
        for name, value in (("start", start), ("end", end)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
        if end is not None and (end < 0 or (start is not None and start >= end)):
            raise InvalidRequest(f"empty time range: start={start} end={end}")
        # Rounded to a nanosecond: 2.011 s is 2011.0000000000002 ms in binary floating point, and tag
        # timestamps are whole milliseconds (MP4 clipping has the same slack, TICK_SLACK).
        start_ms = round(max(start, 0.0) * 1000.0, 6) if start is not None else 0.0
        end_ms = round(end * 1000.0, 6) if end is not None else math.inf
        if 0 < start_ms and end_ms <= start_ms:  # start < end by less than the rounding: the frame at start
            end_ms = math.nextafter(start_ms, math.inf)
        # end_ms == 0 (``end=0`` without a start) stays an empty window: no frame lies in it, 416 as for MP4
        return cls(start, end, start_ms, end_ms)

    def clip_duration(self, duration: float) -> float:
        """The duration of the clip when the media lasts ``duration`` seconds."""
        stop = min(duration, self.end_ms / 1000.0)
        return max(0.0, stop - self.start_ms / 1000.0)


def plan_flv(source: Source, limits: Limits, *, index: bool | None = None,
             start: float | None = None, end: float | None = None) -> Plan | LazyPlan:
    """Plan the audio-only rendition of the FLV in ``source``.

    ``index`` defaults to ``source.random_access``: a complete :class:`Plan`
    when indexing, else a :class:`LazyPlan` whose ``info`` is filled in when
    its first piece is taken. ``start``/``end`` (seconds) select a time range.
    Indexing only reads forward too, but the plan's spans are read again
    afterwards: ``index=True`` needs a source that can be read twice.
    """
    window = Window.from_seconds(start, end)
    if index is None:
        index = source.random_access
    if index:
        return _plan_indexed(source, limits, window)
    info: dict = {"container": "flv"}
    return LazyPlan(_lazy_pieces(source, limits, window, info), CONTENT_TYPE, info)


# -- onMetaData ---------------------------------------------------------------------------------


def _is_video_key(key: str) -> bool:
    lower = key.lower()
    return lower in VIDEO_KEYS or lower.startswith(VIDEO_KEY_PREFIXES)


class _NoValue:
    """Marks an onMetaData tag that has no argument (encoded as nothing)."""


_NO_VALUE = _NoValue()


@dataclass
class Metadata:
    """A decoded and cleaned onMetaData body, ready to be encoded."""

    name: object
    value: object
    rest: bytes
    duration: float | None

    def encode(self) -> bytes:
        """The script body, without ``filesize`` (any spelling: OBS writes ``fileSize``)."""
        value = self.value
        if isinstance(value, dict):
            value = type(value)((key, item) for key, item in value.items() if key.lower() != "filesize")
        encoded = b"" if value is _NO_VALUE else amf.encode_value(value)
        return amf.encode_value(self.name) + encoded + self.rest


def rewrite_metadata(body: bytes, limits: Limits, window: Window) -> Metadata:
    """Decode onMetaData and make it describe an audio-only file.

    ``hasVideo`` becomes false; video-only keys (:data:`VIDEO_KEYS`, any key
    starting with ``video``/``keyframe``/``canSeekToEnd``) and ``datasize``
    are removed (``filesize`` by :meth:`Metadata.encode`); when
    seeking, ``duration`` is clipped. Everything else is kept, in order, and
    bytes after the metadata value are kept verbatim. A value that is not an
    object (a strict array...) is kept unchanged.
    """
    name, pos = amf.decode_value(body, limits.max_amf_depth)
    if pos >= len(body):
        return Metadata(name, _NO_VALUE, b"", None)
    value, pos = amf.decode_value(body, limits.max_amf_depth, pos)
    duration = None
    if isinstance(value, dict):
        value = type(value)((key, item) for key, item in value.items() if not _is_video_key(key))
        value["hasVideo"] = False
        stated = value.get("duration")
        if isinstance(stated, float) and math.isfinite(stated) and stated >= 0:
            duration = window.clip_duration(stated) if window.active else stated
            value["duration"] = duration
    return Metadata(name, value, body[pos:], duration)


def _metadata_tag(head: bytes, meta: Metadata) -> bytes:
    """A complete script tag for ``meta``: same type byte, timestamp and stream id; new sizes."""
    body = meta.encode()
    if len(body) > 0xFFFFFF:
        raise LimitExceeded("rewritten onMetaData does not fit an FLV tag")
    word = (head[0] << 24) | len(body)
    stamp = TAG_HEAD.unpack_from(head)[1]
    return TAG_HEAD.pack(word, stamp) + head[8:TAG_HEADER_SIZE] + body + PREVIOUS_TAG_SIZE.pack(
        TAG_HEADER_SIZE + len(body))


# -- shared helpers ----------------------------------------------------------------------------


def _read_file_header(source: Source) -> FileHeader:
    return parse_file_header(source.read(0, FILE_HEADER_SIZE))



def _tags(source: Source, pos: int, window: int = PEEK_SIZE) -> Iterator[tuple[int, int, int, int, bytes]]:
    """Every tag from ``pos``: (position, type byte, DataSize, timestamp in ms, first bytes).

    The one tag walker of all three modes. Navigation trusts DataSize only. The
    next header is read only when the caller asks for the next tag, so a span it
    yielded meanwhile is consumed first on a forward-only source. Encrypted
    (filtered) audio is refused here.

    ``window`` > :data:`PEEK_SIZE` reads that many bytes at a time and finds the
    next headers in them while they fit: audio tags are a few hundred bytes, so
    the headers of a run of audio tags come from one read instead of one each.
    Only for random-access sources: it reads past the tag it yields.
    """
    read, unpack = source.read, TAG_HEAD.unpack_from
    buffer, buffer_start, buffer_end = b"", 0, 0
    while True:
        if pos + PEEK_SIZE > buffer_end or pos < buffer_start:
            buffer, buffer_start = read(pos, window), pos
            buffer_end = pos + len(buffer)
        peek = buffer[pos - buffer_start:pos - buffer_start + PEEK_SIZE]
        if len(peek) < TAG_HEADER_SIZE:
            return
        word, stamp = unpack(peek)
        kind, size = word >> 24, word & 0xFFFFFF
        if kind & TYPE_MASK == TAG_AUDIO and kind & FILTER_BIT:
            raise UnsupportedMedia(f"encrypted (filtered) FLV audio tag at byte {pos}")
        yield pos, kind, size, (stamp >> 8) | ((stamp & 0xFF) << 24), peek
        pos += TAG_OVERHEAD + size


def _read_script(source: Source, pos: int, size: int, limits: Limits) -> bytes:
    """The whole script tag (header + body) at ``pos``, bounded by ``max_script_size``."""
    if size > limits.max_script_size:
        raise LimitExceeded(f"script tag at byte {pos} is {size} bytes (max_script_size {limits.max_script_size})")
    return read_exact(source, pos, TAG_HEADER_SIZE + size, f"the script tag at byte {pos}")


def _copy(pos: int, size: int, source_size: int | None, truncated: type[Exception]) -> tuple[Piece, ...]:
    """Pieces copying the tag at ``pos`` and its PreviousTagSize.

    Raises ``truncated`` when the tag itself runs past ``source_size``; a
    missing final PreviousTagSize is generated.
    """
    body_end = pos + TAG_HEADER_SIZE + size
    if source_size is not None and body_end + 4 > source_size:
        if body_end > source_size:
            raise truncated(f"FLV truncated at byte {source_size}: tag at byte {pos} needs {body_end - pos} bytes")
        return Span(pos, body_end - pos), Literal(PREVIOUS_TAG_SIZE.pack(body_end - pos))
    return (Span(pos, body_end + 4 - pos),)


def _measured_size(source: Source, pos: int, size: int) -> int | None:
    """Source size if known, else an upper bound good enough for :func:`_copy` (one small read)."""
    if source.size is not None:
        return source.size
    body_end = pos + TAG_HEADER_SIZE + size
    return body_end - 1 + len(source.read(body_end - 1, 5))


def _audio_info(info: dict, peek: bytes) -> None:
    codec = audio_codec_name(peek)
    info["audio_codec"] = codec
    info["tracks"] = [{"type": "audio", "codec": codec}]


def _no_audio(window: Window, seen_audio: bool) -> AudioExtractionError:
    if seen_audio and window.active:
        return RangeNotSatisfiable(f"no audio in the time range start={window.start} end={window.end}")
    return NoAudioTrack("FLV has no audio tags")


# -- index mode --------------------------------------------------------------------------------


class _Pieces:
    """The pieces of an indexed plan: touching tags merge into runs, runs gather into :class:`Spans`.

    No object per tag or run: a 10-minute FLV has ~26k audio tags between video
    tags, and the index is held by the plan cache.
    """

    def __init__(self) -> None:
        self.pieces: list[Piece] = []
        self.run_start = self.run_end = -1
        self._offsets = array("q")
        self._lengths = array("q")

    def span(self, offset: int, length: int) -> None:
        if offset == self.run_end:
            self.run_end += length
        else:
            self._end_run()
            self.run_start, self.run_end = offset, offset + length

    def _end_run(self) -> None:
        if self.run_end > self.run_start:
            self._offsets.append(self.run_start)
            self._lengths.append(self.run_end - self.run_start)
        self.run_start = self.run_end = -1

    def flush(self) -> None:
        """Close the runs gathered so far into one piece (before a literal is added)."""
        self._end_run()
        if self._offsets:
            self.pieces.append(Spans(self._offsets, self._lengths))
            self._offsets, self._lengths = array("q"), array("q")

    def add(self, piece: Piece) -> None:
        if isinstance(piece, Span):
            self.span(piece.offset, piece.length)
        else:
            self.flush()
            self.pieces.append(piece)

    def copy(self, source: Source, pos: int, size: int) -> None:
        """Copy the tag at ``pos`` with its PreviousTagSize; MalformedMedia if it is truncated."""
        length = TAG_OVERHEAD + size
        if source.size is not None and pos + length <= source.size:
            self.span(pos, length)
        else:
            for piece in _copy(pos, size, _measured_size(source, pos, size), MalformedMedia):
                self.add(piece)


def _plan_indexed(source: Source, limits: Limits, window: Window) -> Plan:
    """Walk every tag header (one small read per run of small tags) and build the complete plan."""
    header = _read_file_header(source)
    out = _Pieces()
    out.add(Literal(header.audio_only()))
    meta_duration: float | None = None  # the first onMetaData's
    seen_metadata = False
    info: dict = {"container": "flv", "audio_codec": None, "duration": None, "tracks": []}
    windowed, start_ms, end_ms = window.active, window.start_ms, window.end_ms
    seen_audio = False
    frames = 0
    last_ts = None
    before_start: tuple[int, int] | None = None  # the frame that contains ``start``
    before_start_ts = 0
    latest = LastFrame()  # where ``before_start`` ends, for a start inside the last frame
    for pos, kind, size, ts, peek in _tags(source, header.data_offset + 4, INDEX_WINDOW):
        if kind & TYPE_MASK == TAG_AUDIO:
            if not seen_audio:
                seen_audio = True
                _audio_info(info, peek)
            if not windowed:
                out.copy(source, pos, size)
                frames += 1
                last_ts = ts
            elif ts >= end_ms:
                if not frames and before_start is not None:  # the window lies inside that one frame
                    out.copy(source, *before_start)
                    frames, last_ts = 1, before_start_ts
                break
            elif is_audio_config(peek, size):
                out.copy(source, pos, size)
                latest.config(data_head(peek, size))
            elif ts >= start_ms:
                if not frames and before_start is not None and ts > start_ms:
                    out.copy(source, *before_start)
                out.copy(source, pos, size)
                frames += 1
                last_ts = ts
            else:
                before_start, before_start_ts = (pos, size), ts
                latest.frame(ts, data_head(peek, size), size)
        elif kind & TYPE_MASK == TAG_SCRIPT and _keep_script(window, seen_audio, ts):
            if size >= len(METADATA_PREFIX) and not kind & FILTER_BIT and _is_metadata(source, pos):
                tag = _read_script(source, pos, size, limits)
                meta = rewrite_metadata(tag[TAG_HEADER_SIZE:], limits, window)
                if not seen_metadata:
                    seen_metadata, meta_duration = True, meta.duration
                out.add(Literal(_metadata_tag(tag, meta)))
            # other script tags (onCuePoint, onTextData captions...) describe the video: dropped
    if not frames and before_start is not None and latest.contains(start_ms):  # start inside the last frame
        out.copy(source, *before_start)
        frames, last_ts = 1, before_start_ts
    if not frames:
        raise _no_audio(window, seen_audio)
    out.flush()
    _set_duration(info, meta_duration, last_ts, window)
    return Plan(tuple(coalesce(out.pieces)), CONTENT_TYPE, info)


def _set_duration(info: dict, meta_duration: float | None, last_ts: int | None, window: Window) -> None:
    """Duration in seconds: onMetaData's if stated and not 0 (live writers leave 0), else the last audio timestamp."""
    if meta_duration:
        info["duration"] = meta_duration
    elif last_ts is not None:
        info["duration"] = max(0.0, last_ts / 1000.0 - window.start_ms / 1000.0)


def _keep_script(window: Window, seen_audio: bool, ts: int) -> bool:
    """Script tags before the first audio tag are always kept; later ones when inside the window."""
    return not seen_audio or not window.active or window.start_ms <= ts < window.end_ms


def _is_metadata(source: Source, pos: int) -> bool:
    """Whether the script tag at ``pos`` is onMetaData (reads 13 bytes, not the body)."""
    return source.read(pos + TAG_HEADER_SIZE, len(METADATA_PREFIX)) == METADATA_PREFIX


# -- lazy mode ---------------------------------------------------------------------------------


class _Probe:
    """State of the look-ahead done before the first lazy piece.

    Everything met before the first kept audio frame is held as Literals (the
    source may be forward-only: reading on discards it), within
    ``max_script_size`` bytes in all.
    """

    def __init__(self, source: Source, limits: Limits, window: Window, info: dict) -> None:
        self.source = source
        self.limits = limits
        self.window = window
        self.info = info
        self.held: list[Piece] = []
        self.budget = limits.max_script_size
        self.seen_audio = False
        self.found_frame = False
        self.before_start: bytes | None = None
        self.latest = LastFrame()  # where ``before_start`` ends

    def hold(self, data: bytes) -> None:
        self.budget -= len(data)
        if self.budget < 0:
            raise LimitExceeded(f"more than max_script_size ({self.limits.max_script_size}) bytes of script "
                                "and configuration tags before the first audio frame")
        self.held.append(Literal(data))

    def script(self, pos: int, size: int, kind: int) -> None:
        """Hold a script tag met during the probe (rewritten if it is onMetaData)."""
        tag = _read_script(self.source, pos, size, self.limits)
        body = tag[TAG_HEADER_SIZE:]
        if not kind & FILTER_BIT and body.startswith(METADATA_PREFIX):
            meta = rewrite_metadata(body, self.limits, self.window)
            self.info.setdefault("duration", meta.duration or None)  # live writers store 0
            self.hold(_metadata_tag(tag, meta))
        # other script tags (onCuePoint, onTextData captions...) describe the video: dropped

    def audio(self, pos: int, size: int, ts: int, peek: bytes) -> bool:
        """Handle an audio tag; True when it is the first kept frame (its Span ends the probe)."""
        window = self.window
        if ts >= window.end_ms:
            if self.before_start is None:
                raise _no_audio(window, True)
            self.hold(self.before_start)  # the window lies inside that one frame
            self.found_frame = True
            return True
        if not self.seen_audio:
            self.seen_audio = True
            _audio_info(self.info, peek)
        if window.active and is_audio_config(peek, size):
            # verbatim, PreviousTagSize included, as index mode copies it: one rendition, one byte sequence
            self.hold(read_exact(self.source, pos, TAG_OVERHEAD + size, f"the audio tag at byte {pos}"))
            self.latest.config(data_head(peek, size))
            return False
        if ts < window.start_ms:
            # keep the frame that contains ``start``: it is the first one sent if the next starts later
            self.before_start = read_exact(self.source, pos, TAG_OVERHEAD + size, f"the audio tag at byte {pos}")
            self.latest.frame(ts, data_head(peek, size), size)
            return False
        if self.before_start is not None and ts > window.start_ms:
            self.hold(self.before_start)
        self.held.extend(_copy(pos, size, self.source.size, SourceTruncated))
        self.found_frame = True
        return True

    def run(self, pos: int) -> int:
        """Walk until the first kept audio frame (or the probe bound); return where streaming resumes."""
        limits = self.limits
        probe_end, end = pos + limits.flv_probe_bytes, pos
        for pos, kind, size, ts, peek in _tags(self.source, pos):  # noqa: B020 - walks on from its argument
            if pos > probe_end:
                if self.seen_audio:
                    return pos
                raise NoAudioTrack(f"FLV has no audio tags in its first {limits.flv_probe_bytes} bytes")
            if kind & TYPE_MASK == TAG_AUDIO:
                if self.audio(pos, size, ts, peek):
                    return pos + TAG_OVERHEAD + size
            elif kind & TYPE_MASK == TAG_SCRIPT and _keep_script(self.window, self.seen_audio, ts):
                self.script(pos, size, kind)
            end = pos + TAG_OVERHEAD + size
        if self.keep_last_frame():
            return end  # every tag was walked: streaming finds nothing more
        raise _no_audio(self.window, self.seen_audio)

    def keep_last_frame(self) -> bool:
        """At the end of the tags: hold the frame before ``start`` if ``start`` lies inside it (as index mode)."""
        if self.before_start is None or not self.latest.contains(self.window.start_ms):
            return False
        self.hold(self.before_start)
        self.found_frame = True
        return True


def _lazy_pieces(source: Source, limits: Limits, window: Window, info: dict) -> Iterator[Piece]:
    """The lazy plan: probe for audio, flush what was held, then stream tag by tag."""
    header = _read_file_header(source)
    probe = _Probe(source, limits, window, info)
    probe.held.append(Literal(header.audio_only()))
    pos = probe.run(header.data_offset + 4)
    info.setdefault("duration", None)
    yield from coalesce(probe.held)
    yield from _stream(source, limits, window, pos, probe.found_frame, probe.before_start, probe.latest)


def _stream(source: Source, limits: Limits, window: Window, pos: int, frames: bool,
            before_start: bytes | None = None, latest: LastFrame | None = None) -> Iterator[Piece]:
    """Yield audio tags from ``pos`` on; a tag header is read only after the previous span was consumed.

    ``before_start``: the frame that contains ``start``, when the probe met it but
    stopped (at its byte bound) before the first kept frame; ``latest``: where it
    ends, so that a ``start`` inside the last frame keeps it here too.
    """
    latest = latest or LastFrame()
    source_size = source.size
    windowed = window.active
    start_ms, end_ms = window.start_ms, window.end_ms
    for pos, kind, size, ts, peek in _tags(source, pos):  # noqa: B020 - the walker owns the position
        if kind & TYPE_MASK == TAG_AUDIO:
            if windowed:
                if ts >= end_ms:
                    if not frames and before_start is not None:  # the window lies inside that one frame
                        yield Literal(before_start)
                        frames = True
                    break
                config = is_audio_config(peek, size)
                if ts < start_ms and not config:
                    before_start = read_exact(source, pos, TAG_OVERHEAD + size, f"the audio tag at byte {pos}")
                    latest.frame(ts, data_head(peek, size), size)
                    continue
                if config:
                    latest.config(data_head(peek, size))
                elif not frames and before_start is not None and ts > start_ms:
                    yield Literal(before_start)
                frames = frames or not config
            if source_size is None or pos + TAG_OVERHEAD + size <= source_size:
                yield Span(pos, TAG_OVERHEAD + size)
            else:
                yield from _copy(pos, size, source_size, SourceTruncated)
        elif kind & TYPE_MASK == TAG_SCRIPT and (not windowed or start_ms <= ts < end_ms):
            yield from _stream_script(source, limits, window, pos, size, kind)
    if not frames and before_start is not None and latest.contains(start_ms):  # start inside the last frame
        yield Literal(before_start)
        frames = True
    if not frames:
        raise _no_audio(window, True)


def _stream_script(source: Source, limits: Limits, window: Window, pos: int, size: int, kind: int) -> Iterator[Piece]:
    """A script tag met while streaming: onMetaData rewritten, others (cue points, captions) dropped."""
    prefix = source.read(pos, TAG_HEADER_SIZE + len(METADATA_PREFIX))
    if not kind & FILTER_BIT and prefix[TAG_HEADER_SIZE:] == METADATA_PREFIX:
        tag = _read_script(source, pos, size, limits)
        yield Literal(_metadata_tag(tag, rewrite_metadata(tag[TAG_HEADER_SIZE:], limits, window)))
