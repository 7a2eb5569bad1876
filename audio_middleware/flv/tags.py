"""FLV file header and tag header layouts (Adobe FLV spec v10.1, annex E).

Layout reminder::

    header   "FLV" version:u8 flags:u8 data_offset:u32      (9 bytes, or more)
    u32      PreviousTagSize0 = 0
    tag      type:u8 data_size:u24 timestamp:u24 timestamp_ext:u8 stream_id:u24  (11 bytes)
             data[data_size]
    u32      PreviousTagSize = 11 + data_size                (describes the tag before it)
    tag ...

The tag type byte is ``reserved:2 filter:1 type:5``. The timestamp is in
milliseconds: 24 low bits plus an upper byte (``timestamp_ext``).

Only fixed-size fields live here; reading policy (how many bytes, which
source) belongs to the planner.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import MalformedMedia, UnsupportedMedia

FILE_HEADER = struct.Struct(">3sBBI")
FILE_HEADER_SIZE = FILE_HEADER.size  # 9
#: First 8 bytes of a tag header: (type << 24 | data_size) and (timestamp24 << 8 | timestamp_ext).
TAG_HEAD = struct.Struct(">II")
TAG_HEADER_SIZE = 11
PREVIOUS_TAG_SIZE = struct.Struct(">I")
#: A tag's header, its data and its trailing PreviousTagSize add this much to DataSize.
TAG_OVERHEAD = TAG_HEADER_SIZE + PREVIOUS_TAG_SIZE.size  # 15
#: How many bytes are read at each tag start: the header plus the first data
#: bytes that identify an audio codec and packet type (5 for an enhanced FourCC).
PEEK_SIZE = TAG_HEADER_SIZE + 5

FLAG_VIDEO = 0x01
FLAG_AUDIO = 0x04

TAG_AUDIO = 8
TAG_VIDEO = 9
TAG_SCRIPT = 18
TYPE_MASK = 0x1F
FILTER_BIT = 0x20

#: DataOffset larger than this is not a real FLV header.
MAX_DATA_OFFSET = 1024 * 1024

SOUND_FORMAT_AAC = 10
SOUND_FORMAT_EX_HEADER = 9  # Enhanced RTMP: low nibble is AudioPacketType, FourCC follows

SOUND_FORMATS = {
    0: "pcm",
    1: "adpcm",
    2: "mp3",
    3: "pcm_le",
    4: "nellymoser_16k",
    5: "nellymoser_8k",
    6: "nellymoser",
    7: "alaw",
    8: "mulaw",
    10: "aac",
    11: "speex",
    14: "mp3_8k",
    15: "device_specific",
}

#: Enhanced-RTMP audio FourCCs.
AUDIO_FOURCCS = {
    b"mp4a": "aac",
    b".mp3": "mp3",
    b"Opus": "opus",
    b"fLaC": "flac",
    b"ac-3": "ac3",
    b"ec-3": "eac3",
}

#: Enhanced-RTMP AudioPacketType values that configure the decoder (kept when seeking).
_EX_AUDIO_CONFIG_PACKETS = (0, 4)  # SequenceStart, MultichannelConfig


@dataclass(frozen=True)
class FileHeader:
    """The parsed 9-byte FLV header."""

    version: int
    flags: int
    data_offset: int

    def audio_only(self) -> bytes:
        """The output header: same version, audio flag only, DataOffset 9, then PreviousTagSize0.

        Reserved flag bits are cleared: the spec says they must be 0 and the
        output must not claim anything we did not check.
        """
        return FILE_HEADER.pack(b"FLV", self.version, FLAG_AUDIO, FILE_HEADER_SIZE) + b"\x00\x00\x00\x00"


def parse_file_header(data: bytes) -> FileHeader:
    """Validate the FLV header; ``data`` must hold at least its 9 bytes."""
    if len(data) < FILE_HEADER_SIZE:
        raise MalformedMedia(f"FLV header needs {FILE_HEADER_SIZE} bytes, source has {len(data)}")
    signature, version, flags, data_offset = FILE_HEADER.unpack_from(data)
    if signature != b"FLV":
        raise MalformedMedia("not an FLV file (no 'FLV' signature)")
    if version != 1:
        raise UnsupportedMedia(f"FLV version {version} (only version 1 exists)")
    if not FILE_HEADER_SIZE <= data_offset <= MAX_DATA_OFFSET:
        raise MalformedMedia(f"FLV DataOffset {data_offset} is outside [{FILE_HEADER_SIZE}, {MAX_DATA_OFFSET}]")
    return FileHeader(version, flags, data_offset)


def audio_codec_name(peek: bytes) -> str:
    """Codec name of an audio tag from its first data bytes (``peek`` starts at the tag header)."""
    if len(peek) <= TAG_HEADER_SIZE:
        return "unknown"
    sound_format = peek[TAG_HEADER_SIZE] >> 4
    if sound_format == SOUND_FORMAT_EX_HEADER:
        return AUDIO_FOURCCS.get(peek[TAG_HEADER_SIZE + 1:TAG_HEADER_SIZE + 5], "unknown")
    return SOUND_FORMATS.get(sound_format, "unknown")


def is_audio_config(peek: bytes, data_size: int) -> bool:
    """True for a tag that configures the decoder and must be kept when seeking.

    AAC: SoundFormat 10 and AACPacketType 0 (AudioSpecificConfig). Enhanced
    RTMP: SequenceStart or MultichannelConfig packets.
    """
    if data_size < 1 or len(peek) <= TAG_HEADER_SIZE:
        return False
    first = peek[TAG_HEADER_SIZE]
    sound_format = first >> 4
    if sound_format == SOUND_FORMAT_AAC:
        return data_size >= 2 and len(peek) > TAG_HEADER_SIZE + 1 and peek[TAG_HEADER_SIZE + 1] == 0
    if sound_format == SOUND_FORMAT_EX_HEADER:
        return (first & 0x0F) in _EX_AUDIO_CONFIG_PACKETS
    return False
