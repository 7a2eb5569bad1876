"""Test-media toolkit: small real media files made with PyAV, an MP4 rewriter and an audio oracle.

Everything here is deterministic (fixed content, fixed timestamps, single-threaded x264), so a
session-scoped cache directory can be reused: ``make_media`` only encodes a file if it is missing.

Encoders used (all checked with ``av.Codec(name, "w")`` at import time, with fallbacks):

* video: ``libx264`` (fallback ``mpeg4``), ``h263`` for 3GP (fallback: the H.264 choice),
  ``flv`` (Sorenson Spark) for ``flv_mp3`` (fallback: the H.264 choice);
* audio: ``aac`` (native FFmpeg encoder), ``libmp3lame`` (fallback ``aac``; the kind then has
  AAC, see ``KINDS[kind].audio_codecs`` at run time), ``libopencore_amrnb`` for 3GP (fallback ``aac``).

Audio timestamps: encoders with priming (AAC: 1024 samples, LAME: 1105) emit a first packet with a
negative pts.  The generator shifts every audio packet so that the first one has pts == dts == 0,
which also makes the MP4 muxer write a trivial edit list (media_time 0).

Oracle: :func:`audio_packets`, :func:`stream_types`, :func:`assert_audio_identical`,
:func:`assert_audio_window`.  Box helpers: :func:`iter_boxes`, :func:`top_level_boxes`,
:func:`find_boxes`.  Reference rendition: :func:`remux_audio_only` (PyAV stream copy).
"""

from __future__ import annotations

import array
import dataclasses
import io
import math
import os
import pathlib
import struct
from collections.abc import Iterator, Sequence
from fractions import Fraction

import av

MediaInput = bytes | bytearray | memoryview | str | os.PathLike
Packet = tuple  # (bytes, pts, dts, duration)

DURATION_S = 3  # every generated file is 3 seconds long
FPS = 25
GOP = FPS  # one keyframe per second -> 3 fragments in the fragmented MP4


# --------------------------------------------------------------------------------------------
# encoder availability
# --------------------------------------------------------------------------------------------


def _has_encoder(name: str) -> bool:
    try:
        av.Codec(name, "w")
    except Exception:  # noqa: BLE001 - av raises various errors for unknown codecs
        return False
    return True


def _pick(*names: str) -> str:
    for name in names:
        if _has_encoder(name):
            return name
    raise RuntimeError(f"none of the encoders {names} is available in this PyAV build")


H264 = _pick("libx264", "mpeg4")  # "mpeg4" only if libx264 is missing
AAC = _pick("aac", "libfdk_aac")
MP3 = _pick("libmp3lame", AAC)
AMR = "libopencore_amrnb" if _has_encoder("libopencore_amrnb") else AAC
H263 = "h263" if _has_encoder("h263") else H264
FLV1 = "flv" if _has_encoder("flv") else H264


# --------------------------------------------------------------------------------------------
# kind table
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AudioSpec:
    codec: str
    rate: int = 44100
    layout: str = "stereo"
    bit_rate: int | None = None
    language: str | None = None
    sweep: tuple[float, float] = (220.0, 880.0)  # start/end frequency in Hz


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    codec: str
    width: int = 160
    height: int = 120


@dataclasses.dataclass(frozen=True)
class KindInfo:
    ext: str
    fmt: str | None  # PyAV/FFmpeg muxer name (None for derived kinds)
    video: VideoSpec | None
    audio: tuple[AudioSpec, ...]
    movflags: str | None = None  # mov-family only
    layout: str = ""  # human readable: "faststart", "moov_end", "fragmented", "flv"
    derived_from: str | None = None  # for the largesize/co64 kinds

    @property
    def n_video(self) -> int:
        return 1 if self.video else 0

    @property
    def n_audio(self) -> int:
        return len(self.audio)

    @property
    def video_codec(self) -> str | None:
        return self.video.codec if self.video else None

    @property
    def audio_codecs(self) -> list[str]:
        return [a.codec for a in self.audio]


_V264 = VideoSpec(H264)
_A = AudioSpec(AAC)
_FAST = "faststart"
_FRAG = "frag_keyframe+empty_moov+default_base_moof"

KINDS: dict[str, KindInfo] = {
    "mp4_faststart": KindInfo(".mp4", "mp4", _V264, (_A,), _FAST, "faststart"),
    "mp4_moov_end": KindInfo(".mp4", "mp4", _V264, (_A,), None, "moov_end"),
    "mp4_mp3": KindInfo(".mp4", "mp4", _V264, (AudioSpec(MP3, bit_rate=128000),), _FAST, "faststart"),
    "mp4_two_audio": KindInfo(
        ".mp4",
        "mp4",
        _V264,
        (
            AudioSpec(AAC, language="eng", sweep=(220.0, 880.0)),
            AudioSpec(AAC, rate=48000, layout="mono", language="fra", sweep=(1500.0, 500.0)),
        ),
        _FAST,
        "faststart",
    ),
    "mov": KindInfo(".mov", "mov", _V264, (_A,), _FAST, "faststart"),
    "3gp": KindInfo(
        ".3gp",
        "3gp",
        VideoSpec(H263, 176, 144),  # H.263 only allows the CIF family of sizes
        (AudioSpec(AMR, rate=8000, layout="mono", bit_rate=12200) if AMR != AAC else _A,),
        _FAST,
        "faststart",
    ),
    "m4a_audio_only": KindInfo(".m4a", "ipod", None, (_A,), _FAST, "faststart"),
    "mp4_video_only": KindInfo(".mp4", "mp4", _V264, (), _FAST, "faststart"),
    "mp4_fragmented": KindInfo(".mp4", "mp4", _V264, (_A,), _FRAG, "fragmented"),
    "flv_aac": KindInfo(".flv", "flv", _V264, (_A,), None, "flv"),
    "flv_mp3": KindInfo(".flv", "flv", VideoSpec(FLV1), (AudioSpec(MP3, bit_rate=128000),), None, "flv"),
    "flv_video_only": KindInfo(".flv", "flv", _V264, (), None, "flv"),
    "mp4_largesize_co64": KindInfo(".mp4", None, _V264, (_A,), None, "faststart", "mp4_faststart"),
    "mp4_moov_end_largesize_co64": KindInfo(".mp4", None, _V264, (_A,), None, "moov_end", "mp4_moov_end"),
}


def media_path(kind: str, directory: pathlib.Path) -> pathlib.Path:
    """The deterministic file name used by :func:`make_media` (the file may not exist yet)."""
    return pathlib.Path(directory) / f"{kind}{KINDS[kind].ext}"


def make_media(kind: str, directory: pathlib.Path) -> pathlib.Path:
    """Create (unless already present) the media file of ``kind`` in ``directory``; return its path."""
    if kind not in KINDS:
        raise ValueError(f"unknown media kind {kind!r}; known: {sorted(KINDS)}")
    info = KINDS[kind]
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = media_path(kind, directory)
    if path.exists():
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if info.derived_from:
            to_largesize_co64(make_media(info.derived_from, directory), tmp)
        else:
            _encode(info, tmp)
        os.replace(tmp, path)  # atomic: concurrent sessions never see a half-written file
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def make_all(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    """Create every kind; return ``{kind: path}``."""
    return {kind: make_media(kind, directory) for kind in KINDS}


# --------------------------------------------------------------------------------------------
# synthesis + encoding
# --------------------------------------------------------------------------------------------

_RAMP = bytes(range(256)) * 2


def _video_frame(width: int, height: int, index: int) -> av.VideoFrame:
    """A moving diagonal gradient plus a moving colour tint (deterministic, compresses well)."""
    frame = av.VideoFrame(width, height, "yuv420p")
    luma = frame.planes[0]
    shift = index * 4
    rows = []
    for y in range(height):
        o = (shift + y) % 256
        rows.append(_RAMP[o : o + width].ljust(luma.line_size, b"\0"))
    luma.update(b"".join(rows))
    for plane, value in ((frame.planes[1], (64 + 3 * index) % 256), (frame.planes[2], (192 - 2 * index) % 256)):
        plane.update(bytes([value]) * plane.buffer_size)
    frame.pts = index
    frame.time_base = Fraction(1, FPS)
    return frame


def _sweep(spec: AudioSpec, total: int) -> list[float]:
    """Linear sine sweep with a slow amplitude wobble; every encoded frame differs."""
    f0, f1 = spec.sweep
    out = []
    phase = 0.0
    two_pi = 2 * math.pi
    for n in range(total):
        t = n / total
        phase += two_pi * (f0 + (f1 - f0) * t) / spec.rate
        out.append((0.25 + 0.15 * math.sin(two_pi * 1.3 * n / spec.rate)) * math.sin(phase))
    return out


def _pack(samples: Sequence[float], fmt: str, channels: int) -> list[bytes]:
    """Encode mono float samples as the planes of an audio frame in ``fmt`` (same signal on each channel)."""
    if fmt in ("flt", "fltp"):
        data = array.array("f", samples)
    elif fmt in ("s16", "s16p"):
        data = array.array("h", (int(s * 32767) for s in samples))
    elif fmt in ("s32", "s32p"):
        data = array.array("i", (int(s * 2147483647) for s in samples))
    else:  # pragma: no cover - no encoder we use needs anything else
        raise ValueError(f"unsupported sample format {fmt}")
    if fmt.endswith("p"):
        raw = data.tobytes()
        return [raw] * channels
    if channels == 1:
        return [data.tobytes()]
    inter = array.array(data.typecode)
    for s in data:
        inter.extend([s] * channels)
    return [inter.tobytes()]


_PREFERRED_FMTS = ("fltp", "flt", "s16p", "s16", "s32p", "s32")


class _AudioTrack:
    def __init__(self, container: av.container.OutputContainer, spec: AudioSpec):
        self.spec = spec
        self.stream = container.add_stream(spec.codec, rate=spec.rate, layout=spec.layout)
        ctx = self.stream.codec_context
        if spec.bit_rate:
            ctx.bit_rate = spec.bit_rate
        formats = [f.name for f in (ctx.codec.audio_formats or ())]
        ctx.format = next((f for f in _PREFERRED_FMTS if f in formats), formats[0] if formats else "fltp")
        ctx.time_base = Fraction(1, spec.rate)
        if spec.language:
            self.stream.metadata["language"] = spec.language
        self.total = DURATION_S * spec.rate
        self.samples: list[float] | None = None
        self.pos = 0
        self.shift: int | None = None  # encoder priming compensation (packet time base units)

    def _fix(self, packets: list[av.Packet]) -> list[av.Packet]:
        for p in packets:
            if self.shift is None:
                self.shift = -p.pts if p.pts is not None and p.pts < 0 else 0
            if self.shift:
                p.pts += self.shift
                p.dts += self.shift
        return packets

    def encode_until(self, t_seconds: float | None) -> list[av.Packet]:
        ctx = self.stream.codec_context
        if self.samples is None:
            if not ctx.is_open:
                ctx.open()  # makes frame_size known
            self.samples = _sweep(self.spec, self.total)
        fs = ctx.frame_size or 1024
        limit = self.total if t_seconds is None else min(self.total, int(t_seconds * self.spec.rate))
        out: list[av.Packet] = []
        channels = ctx.layout.nb_channels
        while self.pos < limit:
            n = min(fs, self.total - self.pos)
            frame = av.AudioFrame(format=ctx.format.name, layout=self.spec.layout, samples=n)
            for plane, raw in zip(
                frame.planes, _pack(self.samples[self.pos : self.pos + n], ctx.format.name, channels)
            ):
                plane.update(raw.ljust(plane.buffer_size, b"\0"))
            frame.sample_rate = self.spec.rate
            frame.pts = self.pos
            frame.time_base = Fraction(1, self.spec.rate)
            out += self.stream.encode(frame)
            self.pos += n
        if t_seconds is None:
            out += self.stream.encode(None)
        return self._fix(out)


def _encode(info: KindInfo, path: pathlib.Path) -> None:
    container_options = {"movflags": info.movflags} if info.movflags else {}
    with av.open(str(path), "w", format=info.fmt, container_options=container_options) as out:
        vstream = None
        if info.video:
            vstream = out.add_stream(info.video.codec, rate=FPS)
            vstream.width = info.video.width
            vstream.height = info.video.height
            vstream.pix_fmt = "yuv420p"
            ctx = vstream.codec_context
            ctx.time_base = Fraction(1, FPS)
            ctx.gop_size = GOP
            ctx.thread_count = 1
            if info.video.codec == "libx264":
                ctx.options = {"preset": "ultrafast", "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"}
            else:
                ctx.bit_rate = 200_000
        tracks = [_AudioTrack(out, spec) for spec in info.audio]

        n_frames = DURATION_S * FPS
        for i in range(n_frames):
            if vstream is not None:
                out.mux(vstream.encode(_video_frame(info.video.width, info.video.height, i)))
            for track in tracks:
                out.mux(track.encode_until((i + 1) / FPS))
        if vstream is not None:
            out.mux(vstream.encode(None))
        for track in tracks:
            out.mux(track.encode_until(None))


# --------------------------------------------------------------------------------------------
# ISO BMFF box helpers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Box:
    type: str
    offset: int  # of the box header
    size: int  # total size including header
    header_size: int  # 8, or 16 for size==1 (largesize)
    size_field: int  # the raw 32-bit size field (1 for largesize, 0 for "to end of file")

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def payload_offset(self) -> int:
        return self.offset + self.header_size


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    """Boxes laid out back to back in ``data[start:end]`` (does not descend)."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size_field, raw_type = struct.unpack_from(">I4s", data, pos)
        header = 8
        size = size_field
        if size_field == 1:
            if pos + 16 > end:
                raise ValueError(f"truncated largesize header at {pos}")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size_field == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"bad box size {size} for {raw_type!r} at offset {pos} (limit {end})")
        yield Box(raw_type.decode("latin-1"), pos, size, header, size_field)
        pos += size


def top_level_boxes(data: bytes | pathlib.Path) -> list[Box]:
    return list(iter_boxes(_as_bytes(data)))


def find_boxes(data: bytes | pathlib.Path, path: str) -> list[Box]:
    """All boxes matching a slash path such as ``"moov/trak/mdia/minf/stbl/stco"``."""
    data = _as_bytes(data)
    parts = path.split("/")
    level = [b for b in iter_boxes(data) if b.type == parts[0]]
    for name in parts[1:]:
        level = [c for b in level for c in iter_boxes(data, b.payload_offset, b.end) if c.type == name]
    return level


# --------------------------------------------------------------------------------------------
# largesize / co64 rewriter
# --------------------------------------------------------------------------------------------

_STBL_PATH = ("moov", "trak", "mdia", "minf", "stbl")
_CONTAINERS = set(_STBL_PATH)


def _box_bytes(box_type: bytes, payload: bytes) -> bytes:
    size = 8 + len(payload)
    if size <= 0xFFFFFFFF:
        return struct.pack(">I4s", size, box_type) + payload
    return struct.pack(">I4sQ", 1, box_type, size + 8) + payload


def to_largesize_co64(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Rewrite an MP4 so every top-level ``mdat`` has a 16-byte (size==1 + 64-bit largesize) header
    and every ``stco`` is a ``co64``; chunk offsets of all tracks are remapped, ancestor sizes fixed.

    Works with moov before or after mdat.  Fragmented files (moof) are rejected.
    """
    data = pathlib.Path(src).read_bytes()
    boxes = list(iter_boxes(data))
    types = [b.type for b in boxes]
    if "moof" in types:
        raise ValueError("fragmented MP4 (moof) is not supported by to_largesize_co64")
    if types.count("moov") != 1:
        raise ValueError(f"expected exactly one top-level moov, found {types.count('moov')}")

    def rebuild(box: Box, offset_map) -> bytes:
        btype = box.type.encode("latin-1")
        if box.type in _CONTAINERS:
            children = b"".join(rebuild(c, offset_map) for c in iter_boxes(data, box.payload_offset, box.end))
            return _box_bytes(btype, children)
        if box.type in ("stco", "co64"):
            p = box.payload_offset
            version_flags, count = struct.unpack_from(">II", data, p)
            entries = struct.unpack_from(f">{count}{'I' if box.type == 'stco' else 'Q'}", data, p + 8)
            mapped = [offset_map(e) for e in entries]
            return _box_bytes(b"co64", struct.pack(">II", version_flags, count) + struct.pack(f">{count}Q", *mapped))
        return data[box.offset : box.end]

    # pass 1: the size growth of moov does not depend on the offset map (only on entry counts)
    moov = boxes[types.index("moov")]
    new_moov_size = len(rebuild(moov, lambda off: 0))

    # new sizes of every top-level box, then their new offsets
    new_sizes = []
    for b in boxes:
        if b.type == "moov":
            new_sizes.append(new_moov_size)
        elif b.type == "mdat" and b.header_size == 8:
            new_sizes.append(b.size + 8)
        else:
            new_sizes.append(b.size)
    new_offsets = []
    pos = 0
    for size in new_sizes:
        new_offsets.append(pos)
        pos += size

    def offset_map(off: int) -> int:
        for b, new_off, _new_size in zip(boxes, new_offsets, new_sizes):
            if b.offset <= off < b.end:
                if b.type == "mdat":
                    if off < b.payload_offset:
                        raise ValueError(f"chunk offset {off} points into an mdat header")
                    new_header = 16
                    return new_off + new_header + (off - b.payload_offset)
                if b.type == "moov":
                    raise ValueError(f"chunk offset {off} points into moov")
                return new_off + (off - b.offset)
        raise ValueError(f"chunk offset {off} is outside every top-level box")

    parts = []
    for b in boxes:
        if b.type == "moov":
            parts.append(rebuild(b, offset_map))
        elif b.type == "mdat" and b.header_size == 8:
            parts.append(struct.pack(">I4sQ", 1, b"mdat", b.size + 8) + data[b.payload_offset : b.end])
        else:
            parts.append(data[b.offset : b.end])
    out = b"".join(parts)
    assert len(out) == pos
    pathlib.Path(dst).write_bytes(out)


# --------------------------------------------------------------------------------------------
# oracle
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StreamInfo:
    index: int
    type: str
    codec: str
    time_base: Fraction | None
    language: str | None
    packets: list[Packet]


def _as_bytes(data: MediaInput | pathlib.Path) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return pathlib.Path(data).read_bytes()


def _open(data: MediaInput, fmt: str | None):
    if isinstance(data, (bytes, bytearray, memoryview)):
        return av.open(io.BytesIO(bytes(data)), "r", format=fmt)
    return av.open(str(data), "r", format=fmt)


def probe(data: MediaInput, fmt: str | None = None) -> list[StreamInfo]:
    """Every stream of the file (in stream order) with all its non-empty packets."""
    with _open(data, fmt) as container:
        infos: dict[int, StreamInfo] = {}

        def add(stream) -> StreamInfo:
            info = StreamInfo(
                stream.index,
                stream.type,
                stream.codec_context.codec.canonical_name if stream.codec_context else "",
                stream.time_base,
                stream.metadata.get("language"),
                [],
            )
            infos[stream.index] = info
            return info

        for stream in container.streams:
            add(stream)
        for packet in container.demux():
            if packet.size == 0:
                continue
            info = infos.get(packet.stream.index) or add(packet.stream)
            info.packets.append((bytes(packet), packet.pts, packet.dts, packet.duration))
        return [infos[i] for i in sorted(infos)]


def audio_packets(data: MediaInput, fmt: str | None = None) -> list[list[Packet]]:
    """Per audio stream (stream order): ``[(bytes, pts, dts, duration), ...]`` without flush packets."""
    return [s.packets for s in probe(data, fmt) if s.type == "audio"]


def stream_types(data: MediaInput, fmt: str | None = None) -> list[str]:
    return [s.type for s in probe(data, fmt)]


def _describe(p: Packet) -> str:
    return f"(size={len(p[0])}, pts={p[1]}, dts={p[2]}, duration={p[3]}, head={p[0][:8].hex()})"


def _select(source_audio: list[StreamInfo], tracks: list[int] | None) -> list[StreamInfo]:
    if tracks is None:
        return source_audio
    for t in tracks:
        assert 0 <= t < len(source_audio), f"source has {len(source_audio)} audio stream(s); no audio track {t}"
    return [source_audio[t] for t in tracks]


def _audio_only(output: MediaInput, fmt: str | None) -> list[StreamInfo]:
    streams = probe(output, fmt)
    other = [f"#{s.index} {s.type} ({s.codec})" for s in streams if s.type != "audio"]
    assert not other, f"output must be audio-only but has non-audio stream(s): {', '.join(other)}"
    return streams


def assert_audio_identical(
    source: MediaInput,
    output: MediaInput,
    tracks: list[int] | None = None,
    fmt: str | None = None,
    source_fmt: str | None = None,
) -> None:
    """Output must be audio-only, and its audio streams must equal the source's audio streams
    (all of them, or the 0-based audio indices in ``tracks``, in that order) packet for packet:
    bytes, pts, dts, duration, plus codec name and stream time_base.  ``fmt`` is the output's
    demuxer name (probed when None); ``source_fmt`` the source's."""
    out_streams = _audio_only(output, fmt)
    src = _select([s for s in probe(source, source_fmt) if s.type == "audio"], tracks)
    assert len(out_streams) == len(src), (
        f"output has {len(out_streams)} audio stream(s), expected {len(src)} (tracks={tracks})"
    )
    for n, (o, s) in enumerate(zip(out_streams, src)):
        label = f"output audio stream {n} vs source audio stream {s.index if tracks is None else tracks[n]}"
        assert o.codec == s.codec, f"{label}: codec {o.codec!r} != {s.codec!r}"
        assert o.time_base == s.time_base, f"{label}: time_base {o.time_base} != {s.time_base}"
        for i, (op, sp) in enumerate(zip(o.packets, s.packets)):
            if op != sp:
                fields = [name for name, a, b in zip(("bytes", "pts", "dts", "duration"), op, sp) if a != b]
                raise AssertionError(
                    f"{label}: first differing packet is #{i} ({', '.join(fields)} differ): "
                    f"output {_describe(op)} != source {_describe(sp)}"
                )
        assert len(o.packets) == len(s.packets), (
            f"{label}: output has {len(o.packets)} packets, source has {len(s.packets)} "
            f"(first {min(len(o.packets), len(s.packets))} are identical)"
        )


def _seconds(value: int | None, tb: Fraction | None) -> float | None:
    if value is None or tb is None:
        return None
    return float(value * tb)


def _window_one(
    label: str,
    s: StreamInfo,
    o: StreamInfo,
    start: float,
    end: float | None,
    slack_frames: int,
    rebased: bool | None,
) -> None:
    sp, op = s.packets, o.packets
    assert op, f"{label}: output has no audio packets"
    assert o.codec == s.codec, f"{label}: codec {o.codec!r} != {s.codec!r}"
    n = len(op)
    obytes = [p[0] for p in op]
    candidates = [
        k for k in range(len(sp) - n + 1) if sp[k][0] == obytes[0] and [p[0] for p in sp[k : k + n]] == obytes
    ]
    if not candidates:
        firsts = [k for k in range(len(sp)) if sp[k][0] == obytes[0]]
        if not firsts:
            raise AssertionError(f"{label}: first output packet {_describe(op[0])} is not a packet of the source")
        k = firsts[0]
        for i in range(n):
            if k + i >= len(sp):
                raise AssertionError(f"{label}: output packet #{i} runs past the end of the source (window from #{k})")
            if sp[k + i][0] != obytes[i]:
                raise AssertionError(
                    f"{label}: output is not a contiguous run of source packets: output #{i} {_describe(op[i])} "
                    f"!= source #{k + i} {_describe(sp[k + i])}"
                )
        raise AssertionError(f"{label}: output is not a contiguous run of source packets")  # pragma: no cover
    stb, otb = s.time_base, o.time_base
    eps = float(stb) + float(otb) + 1e-6  # one tick of each time base (FLV rounds to ms)

    def src_t(p: Packet) -> float:
        return _seconds(p[1], stb)

    # among matching windows (repeated content) take the one whose start is closest to `start`
    k = min(candidates, key=lambda c: abs(src_t(sp[c]) - start))
    first, last = sp[k], sp[k + n - 1]
    frame = _seconds(first[3], stb) or (src_t(sp[k + 1]) - src_t(first) if k + 1 < len(sp) else 0.0)
    t0 = src_t(first)
    if k > 0 or start > t0 + eps:
        assert t0 <= start + eps, f"{label}: first output packet is source #{k} at {t0:.6f}s, after start={start}"
        assert start - t0 < slack_frames * frame + eps, (
            f"{label}: first output packet is source #{k} at {t0:.6f}s, more than {slack_frames} frame(s) "
            f"({frame:.6f}s each) before start={start}"
        )
    src_end = src_t(sp[-1]) + (_seconds(sp[-1][3], stb) or frame)
    last_end = src_t(last) + (_seconds(last[3], stb) or frame)
    if end is None or end >= src_end - eps:
        assert k + n == len(sp), (
            f"{label}: output stops at source packet #{k + n - 1} (ends {last_end:.6f}s) but should run to the "
            f"end of the source (#{len(sp) - 1}, {src_end:.6f}s) for end={end}"
        )
    else:
        assert last_end >= end - eps, f"{label}: output ends at {last_end:.6f}s, before end={end}"
        assert src_t(last) < end + (slack_frames - 1) * frame + eps, (
            f"{label}: output runs too long: last packet (source #{k + n - 1}) starts at {src_t(last):.6f}s, "
            f"not before end={end}"
        )
    o0 = _seconds(op[0][1], otb)
    if rebased is True:
        assert abs(o0) <= eps, f"{label}: expected rebased output starting at 0, first pts is {o0:.6f}s"
    elif rebased is False:
        # MP4 edit lists express a non-zero start in the movie timescale (FFmpeg: 1/1000 s) -> allow 1 ms
        assert abs(o0 - t0) <= eps + 0.001, (
            f"{label}: expected source timestamps, output starts {o0:.6f}s, source {t0:.6f}s"
        )
    for i in range(n):
        a, b = op[i], sp[k + i]
        for name, idx in (("pts", 1), ("dts", 2)):
            if a[idx] is None or b[idx] is None or op[0][idx] is None or first[idx] is None:
                continue
            rel_o = _seconds(a[idx] - op[0][idx], otb)
            rel_s = _seconds(b[idx] - first[idx], stb)
            if abs(rel_o - rel_s) > eps:
                raise AssertionError(
                    f"{label}: output packet #{i} {name} is {rel_o:.6f}s after the first, source #{k + i} is "
                    f"{rel_s:.6f}s after it: output {_describe(a)}, source {_describe(b)}"
                )
        if a[3] and b[3]:
            da, db = _seconds(a[3], otb), _seconds(b[3], stb)
            if abs(da - db) > eps:
                raise AssertionError(f"{label}: output packet #{i} duration {da:.6f}s != source {db:.6f}s")


def assert_audio_window(
    source: MediaInput,
    output: MediaInput,
    start: float,
    end: float | None,
    tracks: list[int] | None = None,
    fmt: str | None = None,
    source_fmt: str | None = None,
    slack_frames: int = 1,
    rebased: bool | None = None,
) -> None:
    """For clipped outputs: each output audio stream is exactly (bytes) a contiguous run of source packets;
    its first packet starts at or before ``start`` by less than ``slack_frames`` frames (or is the source's
    first packet when ``start`` precedes it); it ends at/after ``end`` (``None`` or past the source end: runs
    to the last source packet) with its last packet starting no later than ``end`` (+ slack_frames-1 frames).
    Timestamps are compared relative to the first packet, in seconds, within one tick of either time base.
    ``rebased``: True = output pts must start at 0, False = must equal the source's, None = not checked."""
    out_streams = _audio_only(output, fmt)
    src = _select([s for s in probe(source, source_fmt) if s.type == "audio"], tracks)
    assert len(out_streams) == len(src), (
        f"output has {len(out_streams)} audio stream(s), expected {len(src)} (tracks={tracks})"
    )
    for n, (o, s) in enumerate(zip(out_streams, src)):
        label = f"output audio stream {n} vs source audio stream {s.index if tracks is None else tracks[n]}"
        _window_one(label, s, o, start, end, slack_frames, rebased)


# --------------------------------------------------------------------------------------------
# reference renditions (PyAV stream copy), handy for self-tests and as an expected-output model
# --------------------------------------------------------------------------------------------


def remux_audio_only(
    source: MediaInput,
    fmt: str = "mp4",
    tracks: list[int] | None = None,
    window: tuple[float, float | None] | None = None,
    rebase: bool = False,
    source_fmt: str | None = None,
) -> bytes:
    """Stream-copy the source's audio streams (or ``tracks``) into a new ``fmt`` container, in memory.

    ``window=(start, end)`` keeps the packets whose span overlaps [start, end) (end None = to the end);
    ``rebase`` shifts kept timestamps so the first one is 0."""
    buf = io.BytesIO()
    with _open(source, source_fmt) as inp:
        audio = [s for s in inp.streams if s.type == "audio"]
        chosen = audio if tracks is None else [audio[t] for t in tracks]
        with av.open(buf, "w", format=fmt) as out:
            mapping = {s.index: out.add_stream_from_template(s) for s in chosen}
            for s in chosen:
                if "language" in s.metadata:
                    mapping[s.index].metadata["language"] = s.metadata["language"]
            offsets: dict[int, int] = {}
            for packet in inp.demux(*chosen):
                if packet.size == 0 or packet.pts is None:
                    continue
                tb = packet.stream.time_base
                if window is not None:
                    t0 = float(packet.pts * tb)
                    t1 = t0 + float((packet.duration or 0) * tb)
                    if t1 <= window[0] or (window[1] is not None and t0 >= window[1]):
                        continue
                if rebase:
                    off = offsets.setdefault(packet.stream.index, packet.dts if packet.dts is not None else packet.pts)
                    packet.pts -= off
                    if packet.dts is not None:
                        packet.dts -= off
                packet.stream = mapping[packet.stream.index]
                out.mux(packet)
    return buf.getvalue()
