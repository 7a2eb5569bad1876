"""How long the last FLV audio frame lasts: FLV tags carry a start time, never a duration.

Seeking needs it once: a ``start`` after the timestamp of the last audio frame
is either inside that frame (kept, as an MP4 clip keeps the sample that contains
``start``) or past the end of the audio (416). :class:`LastFrame` follows the
audio tags met before ``start`` and answers where the latest one ends:

1. from its codec, when the planner can tell it from the bytes it reads anyway
   (the first :data:`HEAD_SIZE` data bytes of each tag, so no extra read and the
   same answer in index and lazy mode):

   - AAC (SoundFormat 10): 1024 samples (960 when the AudioSpecificConfig sets
     ``frameLengthFlag``; 512/480 for AAC-LD) at the core sampling rate of the
     latest sequence header. Only its first 3 bytes are seen: an escaped object
     type or an explicit 24-bit sampling rate is "unknown".
   - MP3 (SoundFormat 2 and 14): the MPEG audio header of the frame itself
     (1152 samples for MPEG-1 Layer II/III, 576 for MPEG-2/2.5 Layer III, 384 for
     Layer I), trusted only when the tag holds exactly one MPEG frame (its
     payload is the frame length that header gives).

2. else from the spacing of the timestamps of the two latest frames;
3. else unknown: the caller keeps answering 416 for a start after the last frame's timestamp.

Every value read is checked (sync word, reserved indexes, free-format bitrate,
rates); a duration that is not in ``(0, MAX_FRAME_MS]`` is not trusted either,
so a hostile header or a gap in the audio only ever falls back to the next rule.
"""

from __future__ import annotations

from .tags import SOUND_FORMAT_AAC, TAG_HEADER_SIZE

#: Data bytes of a tag looked at: the peek the planner reads at every tag start holds these.
HEAD_SIZE = 5
#: Longest believable audio frame (ADPCM's 4096 samples at 5.5 kHz last 0.74 s); longer is a gap.
MAX_FRAME_MS = 1000.0

AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
#: Object types whose config is a GASpecificConfig starting with frameLengthFlag (ISO 14496-3 1.6.2.1).
GA_OBJECT_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})
AAC_LD = 23
SBR_OBJECT_TYPES = (5, 29)  # explicit SBR / PS: the core object type follows the extension rate

SOUND_FORMATS_MP3 = (2, 14)
#: MPEG audio sampling rates by the header's version bits (0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1; 1 is reserved).
MP3_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}
#: kbit/s for bitrate indexes 1-14, by (MPEG-1, layer bits) (layer bits: 3 Layer I, 2 Layer II, 1 Layer III).
MP3_KBPS = {
    (True, 3): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 1): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 3): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 1): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def data_head(peek: bytes, size: int) -> bytes:
    """The first data bytes of a tag from its peek, never the bytes of the next tag (small tags)."""
    return peek[TAG_HEADER_SIZE:TAG_HEADER_SIZE + min(size, HEAD_SIZE)]


class LastFrame:
    """The latest audio frame met before ``start``: its timestamp, the one before, its codec's duration."""

    __slots__ = ("aac_ms", "ts", "previous_ts", "codec_ms")

    def __init__(self) -> None:
        self.aac_ms: float | None = None  # per frame, from the latest AAC sequence header
        self.ts: int | None = None
        self.previous_ts: int | None = None
        self.codec_ms: float | None = None

    def config(self, head: bytes) -> None:
        """A decoder configuration tag: the frames after it use it (another codec's config: unknown)."""
        self.aac_ms = aac_frame_ms(head)

    def frame(self, ts: int, head: bytes, size: int) -> None:
        """An audio frame at ``ts`` ms: ``head`` is :func:`data_head`, ``size`` its DataSize."""
        self.previous_ts, self.ts = self.ts, ts
        self.codec_ms = _codec_ms(head, size, self.aac_ms)

    def end_ms(self) -> float | None:
        """Where the latest frame ends (ms), from its codec, else the spacing; None when neither tells."""
        if self.ts is None:
            return None
        duration = self.codec_ms
        if duration is None and self.previous_ts is not None:
            duration = _plausible(self.ts - self.previous_ts)
        return None if duration is None else self.ts + duration

    def contains(self, ms: float) -> bool:
        """Whether ``ms`` lies before the end of the latest frame (False when that end is unknown)."""
        end = self.end_ms()
        return end is not None and ms < end


def _plausible(ms: float) -> float | None:
    return ms if 0 < ms <= MAX_FRAME_MS else None


def _codec_ms(head: bytes, size: int, aac_ms: float | None) -> float | None:
    """A frame's duration from its codec: AAC from the config, MP3 from its own header."""
    if not head:
        return None
    sound_format = head[0] >> 4
    if sound_format == SOUND_FORMAT_AAC:
        return aac_ms
    if sound_format in SOUND_FORMATS_MP3:
        return mp3_frame_ms(head[1:], size - 1)
    return None


# -- AAC -----------------------------------------------------------------------------------------


class _Short(Exception):
    """The AudioSpecificConfig needs more bits than were read."""


class _Bits:
    """Big-endian bit reader over a few bytes."""

    def __init__(self, data: bytes) -> None:
        self.value = int.from_bytes(data, "big")
        self.left = 8 * len(data)

    def take(self, count: int) -> int:
        if count > self.left:
            raise _Short
        self.left -= count
        return (self.value >> self.left) & ((1 << count) - 1)


def aac_frame_ms(head: bytes) -> float | None:
    """Duration of an AAC frame from a sequence header's first data bytes; None if not AAC or unknown."""
    if len(head) < 3 or head[0] >> 4 != SOUND_FORMAT_AAC or head[1] != 0:
        return None
    try:
        found = _asc_frame(_Bits(head[2:]))
    except _Short:
        return None
    return None if found is None else _plausible(found[0] * 1000.0 / found[1])


def _asc_frame(bits: _Bits) -> tuple[int, int] | None:
    """(samples per frame, core sampling rate) from an AudioSpecificConfig, None when not known."""
    object_type = _object_type(bits)
    rate = _rate(bits)
    bits.take(4)  # channelConfiguration
    if object_type in SBR_OBJECT_TYPES:
        _rate(bits)  # the extension (output) rate: a frame is 1024 core samples, i.e. 2048 at that rate
        object_type = _object_type(bits)
        if object_type == 22:
            bits.take(4)  # extensionChannelConfiguration
    if rate is None or object_type not in GA_OBJECT_TYPES:
        return None
    short = bits.take(1)  # frameLengthFlag
    if object_type == AAC_LD:
        return (480 if short else 512), rate
    return (960 if short else 1024), rate


def _object_type(bits: _Bits) -> int:
    object_type = bits.take(5)
    return 32 + bits.take(6) if object_type == 31 else object_type


def _rate(bits: _Bits) -> int | None:
    """The sampling rate of a samplingFrequencyIndex; reserved indexes and explicit rates are None."""
    index = bits.take(4)
    if index == 0x0F:
        bits.take(24)  # an explicit rate: not trusted (and beyond the 3 config bytes the planner reads)
        return None
    return AAC_RATES[index] if index < len(AAC_RATES) else None


# -- MP3 -----------------------------------------------------------------------------------------


def mp3_frame_ms(header: bytes, payload_size: int) -> float | None:
    """Duration of the MPEG audio frame starting with ``header`` when the payload is exactly that frame."""
    if len(header) < 4:
        return None
    word = int.from_bytes(header[:4], "big")
    version, layer = (word >> 19) & 3, (word >> 17) & 3
    bitrate_index, rate_index, padding = (word >> 12) & 15, (word >> 10) & 3, (word >> 9) & 1
    if word >> 21 != 0x7FF or version == 1 or layer == 0 or rate_index == 3 or bitrate_index in (0, 15):
        return None  # no sync, reserved values, or free format (no frame length to check)
    rate = MP3_RATES[version][rate_index]
    mpeg1 = version == 3
    bitrate = MP3_KBPS[mpeg1, layer][bitrate_index - 1] * 1000
    if layer == 3:
        samples, length = 384, (12 * bitrate // rate + padding) * 4
    else:
        samples = 1152 if mpeg1 or layer == 2 else 576
        length = samples // 8 * bitrate // rate + padding
    if payload_size != length:
        return None  # several frames in one tag, or not a frame: the codec does not tell
    return _plausible(samples * 1000.0 / rate)
