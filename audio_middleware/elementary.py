"""Raw audio streams (AAC in ADTS, MP3) copied frame by frame out of MP4 and FLV files.

Why a separate path from the container renditions: an ADTS file needs a 7-byte
header in front of every AAC frame and an MP3 file is nothing but frames, so
neither is a rewrite of the source container. They are still plans, though: a
lazy iterator of ``Literal`` (ADTS headers) and ``Span`` (the source's frame
bytes, unchanged) pieces that :func:`~audio_middleware.emit.iter_plan_bytes`
writes out. Every output frame's payload is the source sample byte for byte;
nothing is decoded.

When the source audio is not the codec asked for, :class:`NeedsTranscode` is
raised; :func:`write_audio` then re-encodes with PyAV if it is installed (the
optional ``transcode`` extra) and otherwise fails with a message that says so.

Sources: progressive and fragmented MP4 (sample tables or ``trun`` boxes give
every frame's offset and size; the codec and AudioSpecificConfig come from
``stsd/mp4a/esds``) and FLV (SoundFormat 10 = AAC, AACPacketType 0 carries the
AudioSpecificConfig and 1 a raw frame; SoundFormat 2 and 14 = MP3, the payload
after the one-byte audio header is the frame). Every length read from the file
is checked against the bytes that hold it.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice, repeat
from typing import IO

from .emit import iter_plan_bytes
from .errors import (
    AudioExtractionError,
    LimitExceeded,
    MalformedMedia,
    NoAudioTrack,
    SourceTruncated,
    UnsupportedMedia,
)
from .flv.tags import FILTER_BIT, PEEK_SIZE, TAG_AUDIO, TAG_HEAD, TAG_HEADER_SIZE, TYPE_MASK, audio_codec_name
from .flv.tags import parse_file_header as parse_flv_header
from .limits import Limits
from .mp4.boxes import Box, full_box_version, iter_children, only_child, parse_header
from .mp4.clip import presented_samples
from .mp4.fragments import (
    DEFAULT_BASE_IS_MOOF,
    SAMPLE_DURATION,
    SAMPLE_SIZE,
    parse_tfhd,
    read_moof,
    trex_defaults,
    trun_layout,
)
from .mp4.layout import find_moov, read_top_header
from .mp4.movie import Movie, parse_movie, select_audio
from .mp4.tables import SampleSizes, big_endian_array, sample_to_chunk
from .mp4.tracks import Track
from .plan import LazyPlan, Literal, Piece, Span, coalesce
from .sniff import Container, by_signature
from .sources import FileSource, Source, read_exact

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
F64 = struct.Struct(">d")

#: Output formats written by :func:`write_audio`: (codec, content type, file extension).
FORMATS = {"aac": ("aac", "audio/aac", ".aac"), "mp3": ("mp3", "audio/mpeg", ".mp3")}

#: Sampling frequencies by index (ISO/IEC 14496-3 1.6.3.4).
SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
#: Audio object types whose config is a GASpecificConfig (frameLengthFlag first).
GA_OBJECT_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})
#: Object types ADTS can carry (Main, LC, SSR, LTP): their GASpecificConfig has no extra fields.
ADTS_OBJECT_TYPES = frozenset({1, 2, 3, 4})
#: syncExtensionTypes announcing backward-compatible SBR, then PS, signalling after a GASpecificConfig.
SBR_SYNC_EXTENSION = 0x2B7
PS_SYNC_EXTENSION = 0x548
#: Largest frame accepted from any source: a real AAC/MP3 frame is a few KB.
MAX_FRAME = 1024 * 1024
#: Largest AudioSpecificConfig read from an FLV tag.
MAX_CONFIG = 64

#: Sample entries whose format is fixed by their codec: (rate, channels).
FIXED_FORMATS = {b"samr": (8000, 1), b"sawb": (16000, 1)}
#: AC-3 fscod -> rate, acmod -> full-band channels (ETSI TS 102 366 tables 5.6 and 5.8).
AC3_RATES = (48000, 44100, 32000)
AC3_CHANNELS = (2, 1, 2, 3, 3, 4, 4, 5)
#: objectTypeIndication (MP4 registration authority) -> codec.
OTI_CODECS = {0x40: "aac", 0x66: "aac", 0x67: "aac", 0x68: "aac", 0x69: "mp3", 0x6B: "mp3", 0xA5: "ac3",
              0xA6: "eac3", 0xA9: "dts", 0xAD: "opus", 0xDD: "vorbis", 0xE1: "qcelp"}
#: Sample entry types that name their codec without an esds.
ENTRY_CODECS = {b".mp3": "mp3", b"ms\x00\x55": "mp3", b"samr": "amr_nb", b"sawb": "amr_wb", b"ac-3": "ac3",
                b"ec-3": "eac3", b"Opus": "opus", b"fLaC": "flac", b"alac": "alac", b"ulaw": "pcm_mulaw",
                b"alaw": "pcm_alaw", b"sowt": "pcm_s16le", b"twos": "pcm_s16be", b"lpcm": "pcm", b"ipcm": "pcm",
                b"fpcm": "pcm", b"enca": "encrypted", b"mha1": "mpegh", b"ac-4": "ac4", b"dtsc": "dts"}


# -- AAC configuration and ADTS ------------------------------------------------------------------


class _Bits:
    """MSB-first bit reader that refuses to read past its bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) * 8 - self.pos

    def read(self, count: int) -> int:
        if self.pos + count > len(self.data) * 8:
            raise MalformedMedia(f"AudioSpecificConfig of {len(self.data)} bytes is cut short")
        value = 0
        for _ in range(count):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


@dataclass(frozen=True)
class AacConfig:
    """What an ADTS header needs from an AudioSpecificConfig."""

    object_type: int
    #: The AAC core under SBR/PS (HE-AAC), else ``object_type``: ADTS carries this one.
    core_type: int
    sampling_index: int
    #: The core's rate (ADTS and frame durations use it).
    sample_rate: int
    channels: int
    frame_length: int
    raw: bytes
    #: The rate the decoded audio has: SBR's extension rate when the config signals it (HE-AAC at
    #: 22.05 kHz core plays at 44.1 kHz, and every player and prober says so), else the core's.
    output_rate: int = 0
    #: Parametric stereo (HE-AAC v2): a mono core that decodes to two channels.
    parametric_stereo: bool = False

    @property
    def decoded_rate(self) -> int:
        return self.output_rate or self.sample_rate

    @property
    def decoded_channels(self) -> int:
        """The channels the decoded audio has (ADTS keeps the core's ``channels``)."""
        return 2 if self.parametric_stereo and self.channels == 1 else self.channels

    def adts_problem(self) -> str | None:
        """Why this stream cannot be carried in ADTS, or None."""
        if not 1 <= self.core_type <= 4:
            return f"AAC object type {self.core_type} cannot be carried in ADTS"
        if self.sampling_index > 12:
            return "an explicit AAC sampling frequency cannot be carried in ADTS"
        if not 1 <= self.channels <= 7:
            return f"AAC channel configuration {self.channels} (program config element) is not supported in ADTS"
        if self.frame_length != 1024:
            return "AAC with 960-sample frames cannot be carried in ADTS"
        return None

    def adts_header(self, payload: int) -> bytes:
        """The 7-byte ADTS header (MPEG-4, no CRC) of one frame of ``payload`` bytes."""
        length = payload + 7
        if length > 0x1FFF:
            raise MalformedMedia(f"AAC frame of {payload} bytes is too large for ADTS")
        bits = (0xFFF << 44) | (1 << 40) | ((self.core_type - 1) << 38) | (self.sampling_index << 34)
        bits |= (self.channels << 30) | (length << 13) | (0x7FF << 2)
        return bits.to_bytes(7, "big")


def _object_type(bits: _Bits) -> int:
    value = bits.read(5)
    return 32 + bits.read(6) if value == 31 else value


def _frequency(bits: _Bits) -> tuple[int, int]:
    """(samplingFrequencyIndex, rate in Hz): an explicit rate of 0 is refused here, once, because every
    frame duration downstream is ``frame_length / sample_rate``."""
    index = bits.read(4)
    if index == 0xF:
        rate = bits.read(24)
        if not rate:
            raise MalformedMedia("AudioSpecificConfig gives an explicit sampling frequency of 0 Hz")
        return index, rate
    if index >= len(SAMPLE_RATES):
        raise MalformedMedia(f"reserved AAC sampling frequency index {index}")
    return index, SAMPLE_RATES[index]


def parse_audio_specific_config(data: bytes) -> AacConfig:
    """Decode the fields of an AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1) that ADTS needs."""
    bits = _Bits(bytes(data))
    object_type = _object_type(bits)
    index, rate = _frequency(bits)
    channels = bits.read(4)
    core, output_rate, parametric_stereo = object_type, rate, object_type == 29
    if object_type in (5, 29):  # explicit SBR/PS signalling: extension rate, then the core type
        output_rate = _frequency(bits)[1]
        core = _object_type(bits)
        if core == 22:
            bits.read(4)  # extensionChannelConfiguration
    frame_length = 1024
    if core in GA_OBJECT_TYPES:
        frame_length = 960 if bits.read(1) else 1024
        if object_type == core and core in ADTS_OBJECT_TYPES and channels:
            sbr_rate, parametric_stereo = _backward_compatible_extensions(bits)
            output_rate = sbr_rate or output_rate
    return AacConfig(object_type, core, index, rate, channels, frame_length, bytes(data), output_rate,
                     parametric_stereo)


def _backward_compatible_extensions(bits: _Bits) -> tuple[int | None, bool]:
    """(SBR output rate or None, PS present) signalled after the GASpecificConfig of plain AAC
    (ISO/IEC 14496-3 1.6.2.1 and 1.6.5: syncExtensionType 0x2B7, extension object type 5,
    sbrPresentFlag, then optionally 0x548 and psPresentFlag), as iTunes and many encoders write
    HE-AAC (v2). Optional trailing bits: anything unexpected only means "not signalled"."""
    try:
        if bits.read(1):  # dependsOnCoreCoder
            bits.read(14)  # coreCoderDelay
        if bits.read(1):  # extensionFlag: for object types 1-4 only extensionFlag3 follows
            bits.read(1)
        if bits.remaining() < 16 or bits.read(11) != SBR_SYNC_EXTENSION:
            return None, False
        if _object_type(bits) != 5 or not bits.read(1):  # SBR, sbrPresentFlag
            return None, False
        rate = _frequency(bits)[1]
        parametric_stereo = bits.remaining() >= 12 and bits.read(11) == PS_SYNC_EXTENSION and bool(bits.read(1))
        return rate, parametric_stereo
    except MalformedMedia:
        return None, False


# -- MPEG audio frame headers --------------------------------------------------------------------

_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mpeg_audio_frame(header: bytes) -> tuple[int, int, int, int] | None:
    """(layer, sample rate, samples per frame, channels) of an MPEG audio frame header, or None."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version = (header[1] >> 3) & 3
    layer = 4 - ((header[1] >> 1) & 3)
    rate_index = (header[2] >> 2) & 3
    if version == 1 or layer == 4 or rate_index == 3:
        return None
    rate = _MPEG_RATES[version][rate_index]
    samples = 384 if layer == 1 else 1152 if layer == 2 or version == 3 else 576
    channels = 1 if header[3] >> 6 == 3 else 2
    return layer, rate, samples, channels


# -- the stream model ----------------------------------------------------------------------------

#: One frame: source offset, size, its AAC config (None for other codecs), duration in seconds.
Frame = tuple[int, int, AacConfig | None, float]


@dataclass
class AudioStream:
    """One audio track of a source, ready to be copied frame by frame.

    ``frames`` is a one-shot iterator that reads the source as it goes.
    ``index`` is the track's 0-based position among the source's audio tracks
    (the order demuxers such as PyAV list them in).
    """

    codec: str
    index: int
    sample_rate: int
    channels: int
    config: AacConfig | None
    frames: Iterator[Frame]


class NeedsTranscode(UnsupportedMedia):
    """The source audio is not in the requested codec (or cannot be carried as is)."""

    def __init__(self, message: str, stream: AudioStream) -> None:
        super().__init__(message)
        self.stream = stream


def open_audio(container: Container, source: Source, limits: Limits, track: str | None = None) -> AudioStream:
    """The audio track chosen by ``track`` (1-based index or ISO-639-2 language; default the first)."""
    if container is Container.FLV:
        return _flv_stream(source, limits, track)
    return _mp4_stream(source, limits, track)


def plan_elementary(stream: AudioStream, fmt: str) -> LazyPlan:
    """Pieces of a raw ``fmt`` file ("aac": ADTS, "mp3") holding the stream's frames unchanged.

    ``info`` gets ``frames``, ``duration`` (seconds) and ``position`` (source
    offset reached) as the pieces are consumed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown elementary format {fmt!r}")
    codec, content_type, _ = FORMATS[fmt]
    if stream.codec != codec:
        raise NeedsTranscode(f"the source audio is {stream.codec}, not {codec}", stream)
    if fmt == "aac" and stream.config is not None and stream.config.adts_problem():
        raise NeedsTranscode(stream.config.adts_problem() or "", stream)
    info: dict = {"codec": codec, "sample_rate": stream.sample_rate, "channels": stream.channels, "frames": 0,
                  "duration": 0.0, "position": 0}
    return LazyPlan(coalesce(_pieces(stream, fmt == "aac", info)), content_type, info)


def _pieces(stream: AudioStream, adts: bool, info: dict) -> Iterator[Piece]:
    frames, seconds = 0, 0.0
    for offset, size, config, duration in stream.frames:
        if adts:
            if config is None:
                raise MalformedMedia("AAC frame without an AudioSpecificConfig")
            problem = config.adts_problem()
            if problem:
                raise UnsupportedMedia(problem)
            yield Literal(config.adts_header(size))
        yield Span(offset, size)
        frames += 1
        seconds += duration
        info["position"] = offset
        if frames % 256 == 0:
            info.update(frames=frames, duration=seconds)
    info.update(frames=frames, duration=seconds)


def _check_frame(offset: int, size: int, source: Source) -> None:
    if size > MAX_FRAME:
        raise MalformedMedia(f"audio frame of {size} bytes at byte {offset}")
    if source.size is not None and offset + size > source.size:
        raise MalformedMedia(f"audio frame at byte {offset} runs past the end of the file ({source.size} bytes)")


# -- MP4 -----------------------------------------------------------------------------------------


@dataclass
class EntryInfo:
    """What the first sample entry of an audio track says."""

    codec: str
    sample_rate: int
    channels: int
    object_type_indication: int | None = None
    specific: bytes | None = None


def _descriptor(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, body start, body end) of an MPEG-4 descriptor with its 1-4 byte expandable size."""
    if end - pos < 2:
        raise MalformedMedia("esds descriptor header is cut short")
    tag = data[pos]
    pos += 1
    size = 0
    for _ in range(4):
        if pos >= end:
            raise MalformedMedia("esds descriptor size is cut short")
        byte = data[pos]
        pos += 1
        size = (size << 7) | (byte & 0x7F)
        if not byte & 0x80:
            break
    else:
        raise MalformedMedia("esds descriptor size longer than 4 bytes")
    if size > end - pos:
        raise MalformedMedia(f"esds descriptor 0x{tag:02x} claims {size} bytes, only {end - pos} left")
    return tag, pos, pos + size


def parse_esds(data: bytes, esds: Box) -> tuple[int, bytes | None]:
    """(objectTypeIndication, DecoderSpecificInfo bytes or None) of an ``esds`` box."""
    full_box_version(data, esds)
    tag, start, stop = _descriptor(data, esds.payload_offset + 4, esds.end)
    if tag != 0x03:
        raise MalformedMedia(f"esds starts with descriptor 0x{tag:02x}, not an ES_Descriptor")
    if stop - start < 3:
        raise MalformedMedia("ES_Descriptor is too short")
    flags = data[start + 2]
    pos = start + 3
    if flags & 0x80:  # streamDependenceFlag
        pos += 2
    if flags & 0x40:  # URL_Flag
        if pos >= stop:
            raise MalformedMedia("ES_Descriptor URL is cut short")
        pos += 1 + data[pos]
    if flags & 0x20:  # OCRstreamFlag
        pos += 2
    while pos < stop:
        tag, start, end = _descriptor(data, pos, stop)
        if tag == 0x04:
            if end - start < 13:
                raise MalformedMedia("DecoderConfigDescriptor is too short")
            inner = start + 13
            while inner < end:
                sub, sub_start, sub_end = _descriptor(data, inner, end)
                if sub == 0x05:
                    return data[start], bytes(data[sub_start:sub_end])
                inner = sub_end
            return data[start], None
        pos = end
    raise MalformedMedia("esds has no DecoderConfigDescriptor")


def _find_esds(data: bytes, start: int, end: int, max_depth: int) -> Box | None:
    """The first ``esds`` among a sample entry's boxes, depth first into QuickTime ``wave`` atoms.

    QuickTime sound description v1 keeps the esds in a 'wave' atom. The search
    keeps its own stack rather than recursing: a hostile entry can nest thousands
    of 'wave' boxes in a few KB, and nesting deeper than ``max_depth`` levels is
    refused with LimitExceeded, as the moov walkers do.
    """
    stack = [iter_children(data, start, end)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif child.type == b"esds":
            return child
        elif child.type == b"wave":
            if len(stack) >= max_depth:
                raise LimitExceeded(f"'wave' boxes nest deeper than {max_depth} levels")
            stack.append(iter_children(data, child.payload_offset, child.end))
    return None


def sample_entry(data: bytes, track: Track, limits: Limits | None = None) -> EntryInfo:
    """Codec, rate and channels from the first sample entry of an audio track."""
    limits = limits or Limits()
    if track.stbl is None:
        raise MalformedMedia(f"track {track.track_id} has no sample table")
    stsd = only_child(data, track.stbl, b"stsd")
    entry = next(iter_children(data, stsd.payload_offset + 8, stsd.end), None)
    if entry is None:
        raise MalformedMedia(f"track {track.track_id} has no sample entry")
    at = entry.payload_offset
    if entry.payload_size < 28:
        raise MalformedMedia(f"audio sample entry '{entry.name}' is too short")
    version = U16.unpack_from(data, at + 8)[0]
    channels = U16.unpack_from(data, at + 16)[0]
    rate = U32.unpack_from(data, at + 24)[0] >> 16
    extra = {1: 16, 2: 36}.get(version, 0)
    if entry.payload_size < 28 + extra:
        raise MalformedMedia(f"QuickTime sound description v{version} is too short")
    if version == 2:  # the rate is a float64 here; anything absurd is reported as 0 (unknown)
        exact = F64.unpack_from(data, at + 32)[0]
        rate = int(exact) if 0 < exact < 1e7 else 0
        channels = U32.unpack_from(data, at + 40)[0]
    info = EntryInfo(ENTRY_CODECS.get(entry.type, entry.name.strip() or "unknown"), rate, channels)
    if entry.type in FIXED_FORMATS:  # 3GPP TS 26.244: the entry's rate and channel count are not used
        info.sample_rate, info.channels = FIXED_FORMATS[entry.type]
    elif entry.type == b"ac-3":
        _ac3_format(data, entry, at + 28 + extra, info)
    if entry.type in (b"mp4a", b"enca"):
        esds = _find_esds(data, at + 28 + extra, entry.end, limits.max_box_depth)
        if esds is not None and entry.type == b"mp4a":
            info.object_type_indication, info.specific = parse_esds(data, esds)
            info.codec = OTI_CODECS.get(info.object_type_indication, f"mp4a.{info.object_type_indication:02X}")
    return info


def _ac3_format(data: bytes, entry: Box, first_child: int, info: EntryInfo) -> None:
    """Rate and channels of AC-3 from its ``dac3`` box (ETSI TS 102 366 F.4): the entry's channel
    count is always 2, whatever the stream holds (5.1 is common)."""
    try:
        dac3 = next((child for child in iter_children(data, first_child, entry.end) if child.type == b"dac3"), None)
    except MalformedMedia:  # only facts for --info: a damaged box after the entry's fields leaves them as they are
        return
    if dac3 is None or dac3.payload_size < 3:
        return
    bits = int.from_bytes(data[dac3.payload_offset:dac3.payload_offset + 3], "big")
    fscod, acmod, lfeon = bits >> 22, (bits >> 11) & 7, (bits >> 10) & 1
    if fscod < len(AC3_RATES):
        info.sample_rate = AC3_RATES[fscod]
    info.channels = AC3_CHANNELS[acmod] + lfeon


def _samples_per_chunk(stsc: list[tuple[int, int]], chunk_count: int) -> Iterator[int]:
    for index, (first, per_chunk) in enumerate(stsc):
        following = stsc[index + 1][0] if index + 1 < len(stsc) else chunk_count + 1
        yield from repeat(per_chunk, max(0, min(following, chunk_count + 1) - first))


def _table_samples(data: bytes, track: Track, limits: Limits) -> Iterator[tuple[int, int]]:
    """(offset, size) of every sample the moov's tables describe, in decode order."""
    if track.stbl is None or not len(track.chunk_offsets):
        return
    found = {child.type: child for child in iter_children(data, track.stbl.payload_offset, track.stbl.end)}
    sizes = SampleSizes(data, found.get(b"stsz") or found[b"stz2"], limits.max_table_entries)
    stsc = sample_to_chunk(data, found[b"stsc"], limits.max_table_entries)
    table = None if sizes.sizes is None else array("I", sizes.sizes.astype("=u4").tobytes())  # fast item access
    sample = 0
    for offset, count in zip(track.chunk_offsets, _samples_per_chunk(stsc, len(track.chunk_offsets)),
                             strict=False):
        for _ in range(count):
            if sample >= sizes.count:
                raise MalformedMedia("stsc describes more samples than stsz")
            size = table[sample] if table is not None else sizes.constant
            yield offset, size
            offset += size
            sample += 1


@dataclass(frozen=True)
class _TrackRun:
    """One ``trun`` of one track: ``count`` samples laid end to end from ``offset``, ``length`` bytes in all.

    ``sizes`` / ``durations`` are the trun's per-sample columns when it has them
    (durations are only read for the wanted track); otherwise every sample is
    ``size`` bytes and ``duration`` ticks long.
    """

    track_id: int
    offset: int
    count: int
    length: int
    size: int
    duration: int
    sizes: array | None = None
    durations: array | None = None

    def samples(self) -> Iterator[tuple[int, int, int]]:
        """(offset, size, duration) of every sample, in order."""
        position = self.offset
        for index in range(self.count):
            size = self.size if self.sizes is None else self.sizes[index]
            yield position, size, self.duration if self.durations is None else self.durations[index]
            position += size


def _trun_column(data: bytes, first: int, count: int, width: int, column: int) -> array:
    """Field ``column`` (0-based, 32-bit) of each of a trun's ``count`` records of ``width`` bytes."""
    return big_endian_array("I", data[first:first + count * width])[column::width // 4]


def _read_run(data: bytes, trun: Box, track_id: int, position: int, base: int, defaults: tuple[int, int | None],
              wanted: bool, limits: Limits) -> _TrackRun:
    """The samples of one ``trun``, which start at ``position`` unless it has a data offset (from ``base``).

    Costs O(1) when the sample size is constant (a skipped track's 16-byte trun
    may claim 50 million samples) and otherwise O(records), which the moof holds.
    """
    flags, count, data_offset, first, width = trun_layout(data, trun, limits.max_table_entries)
    if data_offset is not None:
        position = base + data_offset
    duration, size = defaults
    sizes = durations = None
    if flags & SAMPLE_SIZE:
        sizes = _trun_column(data, first, count, width, 1 if flags & SAMPLE_DURATION else 0)
        length, size = sum(sizes), 0
    elif size is None:
        if count:
            raise MalformedMedia("track fragment gives no sample size (trun, tfhd and trex all lack one)")
        length, size = 0, 0
    else:
        length = count * size
    if wanted and flags & SAMPLE_DURATION:
        durations = _trun_column(data, first, count, width, 0)
    return _TrackRun(track_id, position, count, length, size, duration, sizes, durations)


def _moof_runs(data: bytes, moof_offset: int, wanted: int, defaults: dict[int, tuple[int, int]],
               limits: Limits) -> Iterator[_TrackRun]:
    """Every ``trun`` of one ``moof`` (every track: they chain each other's positions), in order.

    The samples all truns claim together are capped at ``max_table_entries``,
    as one sample table's are.
    """
    moof = parse_header(data, 0, len(data))
    previous_end = moof_offset
    claimed = 0
    for traf in iter_children(data, moof.payload_offset, moof.end):
        if traf.type != b"traf":
            continue
        flags, track_id, base, duration, size = parse_tfhd(data, only_child(data, traf, b"tfhd"))
        trex_duration, trex_size = defaults.get(track_id, (0, None))
        traf_defaults = (trex_duration if duration is None else duration, trex_size if size is None else size)
        if base is None:
            base = moof_offset if flags & DEFAULT_BASE_IS_MOOF else previous_end
        position = base
        for trun in iter_children(data, traf.payload_offset, traf.end):
            if trun.type != b"trun":
                continue
            run = _read_run(data, trun, track_id, position, base, traf_defaults, track_id == wanted, limits)
            claimed += run.count
            if claimed > limits.max_table_entries:
                raise LimitExceeded(f"moof at byte {moof_offset} claims more than {limits.max_table_entries} samples")
            yield run
            position = run.offset + run.length
        previous_end = position


def _check_run(run: _TrackRun, source: Source, spent: int) -> int:
    """Refuse a wanted track's run that no real file has; return the sample bytes ``spent`` with it.

    Empty samples are not audio frames (and would be free to claim by the
    billion). The track's samples never overlap in a real file, so together they
    fit in it: that caps the samples read, each at least a byte, by the file size,
    however many fragments point at the same bytes.
    """
    if run.offset < 0:
        raise MalformedMedia(f"track {run.track_id} fragment data starts before the file (byte {run.offset})")
    if (run.size if run.sizes is None else min(run.sizes)) == 0:
        raise MalformedMedia(f"track {run.track_id} has an empty (0-byte) audio sample at or after byte {run.offset}")
    spent += run.length
    if source.size is not None and run.offset + run.length > source.size:
        raise MalformedMedia(f"track {run.track_id} fragment samples at byte {run.offset} run past the end of the file")
    if source.size is not None and spent > source.size:
        raise MalformedMedia(f"track {run.track_id} fragment samples add up to more bytes than the file holds: "
                             "they overlap")
    return spent


def _fragment_samples(source: Source, movie: Movie, track: Track, limits: Limits) -> Iterator[tuple[int, int, int]]:
    """(offset, size, duration) of the track's samples in every ``moof`` of the file, in file order."""
    defaults = trex_defaults(movie)
    offset = spent = 0
    for _ in range(limits.max_top_level_boxes * 100):
        box = read_top_header(source, offset)
        if box is None:
            return
        if box.type == b"moof":
            for run in _moof_runs(read_moof(source, box, limits), box.offset, track.track_id, defaults, limits):
                if run.track_id == track.track_id and run.count:
                    spent = _check_run(run, source, spent)
                    yield from run.samples()
        offset = box.end
    raise LimitExceeded("too many top-level boxes")


def _mp4_frames(source: Source, movie: Movie, track: Track, limits: Limits,
                config: AacConfig | None) -> Iterator[Frame]:
    mean = track.duration_seconds / track.sample_count if track.sample_count else 0.0
    # samples after the end of the edit list are never presented: ADTS/MP3 cannot hide them, so they go
    shown = presented_samples(movie, track, limits)
    for offset, size in islice(_table_samples(movie.data, track, limits), shown):
        _check_frame(offset, size, source)
        yield offset, size, config, mean
    if movie.fragmented:
        scale = track.timescale or 1
        for offset, size, duration in _fragment_samples(source, movie, track, limits):
            _check_frame(offset, size, source)
            yield offset, size, config, duration / scale


def _first_sample(movie: Movie, track: Track, source: Source, limits: Limits) -> tuple[int, int] | None:
    first = next(_table_samples(movie.data, track, limits), None)
    if first is None and movie.fragmented:
        found = next(_fragment_samples(source, movie, track, limits), None)
        first = found[:2] if found else None
    return first


def _entry_codec(movie: Movie, track: Track, source: Source, limits: Limits) -> tuple[EntryInfo, AacConfig | None]:
    """The sample entry of ``track`` with MPEG audio told apart by layer and AAC config decoded."""
    entry = sample_entry(movie.data, track, limits)
    config = None
    if entry.codec == "aac":
        if entry.specific is None:
            raise MalformedMedia(f"AAC track {track.track_id} has no AudioSpecificConfig")
        config = parse_audio_specific_config(entry.specific)
        entry.sample_rate, entry.channels = config.decoded_rate, config.decoded_channels or entry.channels
    elif entry.codec == "mp3":
        first = _first_sample(movie, track, source, limits)
        frame = mpeg_audio_frame(source.read(first[0], 4)) if first else None
        if frame is not None:
            entry.codec = {1: "mp1", 2: "mp2", 3: "mp3"}[frame[0]]
            entry.sample_rate, entry.channels = frame[1], frame[3]
    return entry, config


def _load_movie(source: Source, limits: Limits) -> Movie:
    return parse_movie(find_moov(source, limits).moov, limits)


def _mp4_stream(source: Source, limits: Limits, selector: str | None) -> AudioStream:
    movie = _load_movie(source, limits)
    track = select_audio(movie, selector)[0]
    audio = [candidate for candidate in movie.tracks if candidate.is_audio]
    entry, config = _entry_codec(movie, track, source, limits)
    return AudioStream(entry.codec, audio.index(track), entry.sample_rate, entry.channels, config,
                       _mp4_frames(source, movie, track, limits, config))


def _mp4_description(source: Source, limits: Limits) -> dict:
    layout = find_moov(source, limits)
    movie = parse_movie(layout.moov, limits)
    tracks = []
    for index, track in enumerate((track for track in movie.tracks if track.is_audio), 1):
        entry, _ = _entry_codec(movie, track, source, limits)
        samples, duration = track.sample_count, track.duration_seconds
        if movie.fragmented:
            # mdhd of a fragmented movie describes the moov's own samples only (often none, or junk)
            duration = duration if samples else 0.0
            scale = track.timescale or 1
            for _, _, sample_duration in _fragment_samples(source, movie, track, limits):
                samples += 1
                duration += sample_duration / scale
        tracks.append({"index": index, "track_id": track.track_id, "codec": entry.codec, "language": track.language,
                       "duration": round(duration, 6), "samples": samples, "sample_rate": entry.sample_rate,
                       "channels": entry.channels})
    return {"container": "mp4", "brand": layout.major_brand.decode("latin-1").strip(), "fragmented": movie.fragmented,
            "duration": max((track["duration"] for track in tracks), default=0.0), "tracks": tracks}


# -- FLV -----------------------------------------------------------------------------------------

SOUND_AAC = 10
SOUND_MP3 = (2, 14)
SOUND_ENHANCED = 9
#: SoundRate (bits 2-3 of an audio tag's first byte), and the formats whose rate is fixed instead.
FLV_RATES = (5512, 11025, 22050, 44100)
FLV_FIXED_RATES = {4: 16000, 5: 8000, 7: 8000, 8: 8000, 11: 16000}
#: Nellymoser and Speex are mono whatever SoundType says.
FLV_MONO_FORMATS = frozenset({4, 5, 6, 11})


@dataclass
class _FlvAudio:
    """The first audio tag of an FLV: where it is and what it holds."""

    pos: int
    sound_format: int
    codec: str
    peek: bytes


def _flv_tags(source: Source, pos: int) -> Iterator[tuple[int, int, int, bytes]]:
    """(position, type byte, data size, first bytes) of every tag from ``pos`` on."""
    while True:
        peek = source.read(pos, PEEK_SIZE)
        if len(peek) < TAG_HEADER_SIZE:
            return
        word = TAG_HEAD.unpack_from(peek)[0]
        yield pos, word >> 24, word & 0xFFFFFF, peek
        pos += TAG_HEADER_SIZE + (word & 0xFFFFFF) + 4


def _audio_tag_data(source: Source, pos: int, size: int, peek: bytes) -> int:
    """Where the data of the audio tag at ``pos`` starts, once all ``size`` bytes of it are known to exist.

    A tag header is 11 bytes and its data follows: a file cut right after a
    header still yields the header, so the data (at least the codec byte the
    callers read from ``peek``) is checked here, against the file size when it
    is known (MalformedMedia), else against what the read returned (SourceTruncated).
    """
    data_at = pos + TAG_HEADER_SIZE
    if source.size is not None and data_at + size > source.size:
        raise MalformedMedia(f"FLV truncated at byte {source.size}: audio tag at byte {pos} is cut short")
    if len(peek) < TAG_HEADER_SIZE + min(size, PEEK_SIZE - TAG_HEADER_SIZE):
        raise SourceTruncated(f"FLV source ends inside the audio tag at byte {pos}")
    return data_at


def _first_flv_audio(source: Source) -> _FlvAudio:
    header = parse_flv_header(source.read(0, 9))
    for pos, kind, size, peek in _flv_tags(source, header.data_offset + 4):
        if kind & TYPE_MASK == TAG_AUDIO and size:
            _audio_tag_data(source, pos, size, peek)
            if kind & FILTER_BIT:
                raise UnsupportedMedia(f"encrypted (filtered) FLV audio tag at byte {pos}")
            return _FlvAudio(pos, peek[TAG_HEADER_SIZE] >> 4, audio_codec_name(peek), peek)
    raise NoAudioTrack("FLV has no audio tags")


def _flv_frames(source: Source, first: _FlvAudio, state: dict) -> Iterator[Frame]:
    """Every audio frame of the FLV; AAC configs are taken from AACPacketType 0 tags as they come."""
    config: AacConfig | None = None
    for pos, kind, size, peek in _flv_tags(source, first.pos):
        if kind & TYPE_MASK != TAG_AUDIO or not size:
            continue
        data_at = _audio_tag_data(source, pos, size, peek)
        if kind & FILTER_BIT:
            raise UnsupportedMedia(f"encrypted (filtered) FLV audio tag at byte {pos}")
        if peek[TAG_HEADER_SIZE] >> 4 != first.sound_format:
            raise UnsupportedMedia(f"the FLV audio codec changes at byte {pos}")
        if first.sound_format == SOUND_AAC:
            if size < 2:
                raise MalformedMedia(f"AAC audio tag at byte {pos} has no AACPacketType")
            if peek[TAG_HEADER_SIZE + 1] == 0:
                config = parse_audio_specific_config(read_exact(source, data_at + 2, min(size - 2, MAX_CONFIG),
                                                                "an AudioSpecificConfig"))
                state.setdefault("config", config)
                continue
            if config is None:
                raise MalformedMedia(f"AAC frame at byte {pos} comes before any AudioSpecificConfig")
            _check_frame(data_at + 2, size - 2, source)
            yield data_at + 2, size - 2, config, config.frame_length / config.sample_rate
        else:
            frame = mpeg_audio_frame(peek[TAG_HEADER_SIZE + 1:])
            _check_frame(data_at + 1, size - 1, source)
            yield data_at + 1, size - 1, None, frame[2] / frame[1] if frame else 0.0


def _flv_config(source: Source, first: _FlvAudio) -> AacConfig:
    """The first AudioSpecificConfig (it must precede the first raw AAC frame)."""
    state: dict = {}
    for _ in _flv_frames(source, first, state):
        break
    if "config" not in state:
        raise MalformedMedia("FLV AAC audio has no AudioSpecificConfig")
    return state["config"]


def _flv_stream(source: Source, limits: Limits, selector: str | None) -> AudioStream:
    if selector not in (None, "", "1"):
        raise NoAudioTrack(f"an FLV file has a single audio stream; there is no track {selector!r}")
    return _flv_stream_from(source, _first_flv_audio(source))


def _flv_stream_from(source: Source, first: _FlvAudio) -> AudioStream:
    """The audio stream whose first tag is ``first``: its facts, and its frames when AAC or MPEG audio."""
    config = None
    rate, channels = 0, 0
    if first.sound_format == SOUND_AAC:
        config = _flv_config(source, first)
        rate, channels = config.decoded_rate, config.decoded_channels
    elif first.sound_format in SOUND_MP3:
        frame = mpeg_audio_frame(first.peek[TAG_HEADER_SIZE + 1:])
        if frame:
            rate, channels = frame[1], frame[3]
    elif first.sound_format != SOUND_ENHANCED:
        rate, channels = _flv_header_format(first)
    codec = first.codec
    framed = first.sound_format == SOUND_AAC or first.sound_format in SOUND_MP3
    if first.sound_format == SOUND_ENHANCED:  # Enhanced RTMP: the codec is known but its framing is not handled here
        codec = f"{codec} (enhanced FLV)"
    frames = _flv_frames(source, first, {}) if framed else iter(())
    return AudioStream(codec, 0, rate, channels, config, frames)


def _flv_header_format(first: _FlvAudio) -> tuple[int, int]:
    """(rate, channels) from the tag header, for codecs without a config or frame header of their own."""
    byte = first.peek[TAG_HEADER_SIZE]
    rate = FLV_FIXED_RATES.get(first.sound_format, FLV_RATES[(byte >> 2) & 3])
    return rate, 1 if first.sound_format in FLV_MONO_FORMATS else (byte & 1) + 1


def _flv_tag_count(source: Source, first: _FlvAudio) -> tuple[int, float]:
    """(audio tags, seconds) of a codec whose frames this module does not parse (ADPCM, PCM, Nellymoser...).

    Tags have no durations: the audio lasts from the first tag's time to the last one's,
    plus the last spacing between two tags (a gap longer than a second is not a frame).
    """
    count, first_ms, previous, last = 0, 0, 0, 0
    for pos, kind, size, peek in _flv_tags(source, first.pos):
        if kind & TYPE_MASK != TAG_AUDIO or not size:
            continue
        _audio_tag_data(source, pos, size, peek)
        stamp = TAG_HEAD.unpack_from(peek)[1]
        previous, last = last, (stamp >> 8) | ((stamp & 0xFF) << 24)
        first_ms = last if not count else first_ms
        count += 1
    spacing = last - previous if count > 1 and 0 < last - previous <= 1000 else 0
    return count, max(0, last - first_ms + spacing) / 1000


def _flv_description(source: Source, limits: Limits) -> dict:
    try:
        first = _first_flv_audio(source)
    except NoAudioTrack:
        return {"container": "flv", "duration": 0.0, "tracks": []}
    stream = _flv_stream_from(source, first)
    samples, duration = 0, 0.0
    for _, _, _, seconds in stream.frames:
        samples += 1
        duration += seconds
    if first.sound_format not in (SOUND_AAC, SOUND_ENHANCED, *SOUND_MP3):
        samples, duration = _flv_tag_count(source, first)
    track = {"index": 1, "track_id": None, "codec": stream.codec, "language": "und", "duration": round(duration, 6),
             "samples": samples, "sample_rate": stream.sample_rate, "channels": stream.channels}
    return {"container": "flv", "duration": track["duration"], "tracks": [track]}


# -- front ends ----------------------------------------------------------------------------------


def sniff(source: Source) -> Container:
    """The container of a file, or UnsupportedMedia when it is neither MP4 family nor FLV."""
    container = by_signature(source.read(0, 16))
    if container is None:
        raise UnsupportedMedia("not an MP4-family (MP4, MOV, M4A, 3GP, F4V) or FLV file")
    return container


def describe(source: Source, limits: Limits | None = None) -> dict:
    """Container facts and every audio track (codec, language, duration, samples, rate, channels)."""
    limits = limits or Limits()
    if sniff(source) is Container.FLV:
        return _flv_description(source, limits)
    return _mp4_description(source, limits)


Progress = Callable[[int, int], None]


def write_audio(path: str, out: IO[bytes], fmt: str, *, track: str | None = None, limits: Limits | None = None,
                progress: Progress | None = None, allow_transcode: bool = True) -> dict:
    """Write the audio of the media file at ``path`` to ``out`` as raw ``fmt`` ("aac" = ADTS, or "mp3").

    Stream copy when the source audio already is that codec; otherwise a
    transcode with PyAV when ``allow_transcode`` and PyAV is installed, else
    :class:`UnsupportedMedia` saying why. ``progress(done, total)`` is called as
    source bytes go by; it may raise to abort. Returns a summary: format,
    method ("copy" or "transcode"), source codec, size, duration, sample rate
    and channels.
    """
    limits = limits or Limits()
    with open(path, "rb") as handle:
        source = FileSource(handle)
        stream = open_audio(sniff(source), source, limits, track)
        try:
            plan = plan_elementary(stream, fmt)
        except NeedsTranscode as why:
            if not allow_transcode:
                raise UnsupportedMedia(f"{why}, and transcoding is disabled") from None
            reason = str(why)
        else:
            total = source.size or 0
            written = 0
            for block in iter_plan_bytes(plan.pieces, source):
                out.write(block)
                written += len(block)
                if progress is not None:
                    progress(plan.info["position"], total)
            if not plan.info["frames"]:
                raise NoAudioTrack("the audio track holds no frames")
            if progress is not None:
                progress(total, total)
            return {"format": fmt, "method": "copy", "source_codec": stream.codec, "size": written,
                    "duration": round(plan.info["duration"], 6), "sample_rate": stream.sample_rate,
                    "channels": stream.channels}
    result = transcode(path, out, fmt, stream.index, progress, reason)
    result["source_codec"] = stream.codec
    return result


# -- transcoding (optional: PyAV) ----------------------------------------------------------------

#: PyAV encoder and muxer per output format.
ENCODERS = {"aac": ("aac", "adts"), "mp3": ("libmp3lame", "mp3")}
EXTRA_HINT = "install the optional extra: pip install 'audio_middleware[transcode]'"


class TranscodeUnavailable(UnsupportedMedia):
    """Transcoding was needed but PyAV (or its encoder) is not available."""


def load_av() -> object | None:
    """The PyAV module, or None when the ``transcode`` extra is not installed."""
    try:
        import av
    except ImportError:
        return None
    return av


def transcoding_available(fmt: str) -> bool:
    """True when PyAV is importable and has an encoder for ``fmt``."""
    av = load_av()
    if av is None:
        return False
    try:
        av.Codec(ENCODERS[fmt][0], "w")  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - PyAV raises several kinds of errors for a missing codec
        return False
    return True


def transcode(path: str, out: IO[bytes], fmt: str, audio_index: int = 0, progress: Progress | None = None,
              reason: str = "") -> dict:
    """Decode audio track ``audio_index`` of ``path`` and encode it as raw ``fmt`` into ``out`` with PyAV."""
    why = f"{reason}; " if reason else ""
    if not transcoding_available(fmt):
        if load_av() is None:
            raise TranscodeUnavailable(f"{why}writing {fmt} needs transcoding: {EXTRA_HINT}")
        raise TranscodeUnavailable(f"{why}this PyAV build has no {ENCODERS[fmt][0]} encoder")
    av = load_av()
    encoder, muxer = ENCODERS[fmt]
    try:
        return _transcode(av, path, out, encoder, muxer, fmt, audio_index, progress)
    except AudioExtractionError:
        raise
    except av.FFmpegError as error:  # type: ignore[attr-defined]
        raise MalformedMedia(f"transcoding failed: {error}") from error


def _transcode(av: object, path: str, out: IO[bytes], encoder: str, muxer: str, fmt: str, audio_index: int,
               progress: Progress | None) -> dict:
    counting = _CountingWriter(out)
    with av.open(path) as source:  # type: ignore[attr-defined]
        streams = [stream for stream in source.streams if stream.type == "audio"]
        if audio_index >= len(streams):
            raise NoAudioTrack(f"PyAV finds no audio stream {audio_index + 1}")
        stream = streams[audio_index]
        supported = av.Codec(encoder, "w").audio_rates or ()  # type: ignore[attr-defined]
        rate = stream.rate if not supported or stream.rate in supported else 48000 if stream.rate > 44100 else 44100
        layout = "mono" if stream.channels == 1 else "stereo"
        total = os.path.getsize(path)
        samples = 0
        with av.open(counting, "w", format=muxer) as output:  # type: ignore[attr-defined]
            target = output.add_stream(encoder, rate=rate, layout=layout)
            target.bit_rate = 128_000 if layout == "stereo" else 64_000
            resampler = av.AudioResampler(format=target.codec_context.format.name,  # type: ignore[attr-defined]
                                          layout=layout, rate=rate)
            for packet in source.demux(stream):
                for frame in packet.decode():
                    for converted in resampler.resample(frame):
                        samples += converted.samples
                        output.mux(target.encode(converted))
                if progress is not None and packet.pos is not None:
                    progress(packet.pos, total)
            for converted in resampler.resample(None):
                samples += converted.samples
                output.mux(target.encode(converted))
            output.mux(target.encode(None))
    if not samples:
        raise NoAudioTrack("the audio track decodes to no samples")
    return {"format": fmt, "method": "transcode", "size": counting.written, "duration": round(samples / rate, 6),
            "sample_rate": rate, "channels": 1 if layout == "mono" else 2}


class _CountingWriter:
    """A write-only file object for PyAV that counts the bytes it passes on."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self.written = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()
