"""Benchmark inputs: long, realistic MP4 and FLV files made once and cached.

Encoding two hours of video is far too slow, so every input is made by *packet
repetition*: a short clip (a few seconds of libx264 video with closed GOPs and
B-frames, plus AAC audio) is encoded once with PyAV (no numpy needed), then its packets are muxed
again and again with increasing pts/dts into the output container (streams made
with ``add_stream_from_template``, packets fed in dts order so that the muxer
interleaves audio and video as a real encoder would). The result has the
sample tables of a real file of that length (one sample per frame, chunks
alternating between tracks, ``ctts``/``stss`` for the video) and demuxes and
decodes cleanly: each repetition starts with an IDR frame.

The video rate is held by x264 in CBR mode (``nal-hrd=cbr`` adds filler data),
so the file sizes come out close to the requested bit rate.

Files live in a cache directory (``$BENCH_CACHE`` or
``~/.cache/audio_middleware_bench``), named after a hash of their spec, with a
``.json`` sidecar holding what was measured about them (size, moov size and
position, packet counts, generation time). Nothing is made twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import random
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

#: Bump when the generator's output for the same spec changes.
GENERATOR_VERSION = 3
FPS = 25
SAMPLE_RATE = 44100
AAC_FRAME = 1024


def default_cache() -> pathlib.Path:
    return pathlib.Path(os.environ.get("BENCH_CACHE") or pathlib.Path.home() / ".cache" / "audio_middleware_bench")


@dataclass(frozen=True)
class ClipSpec:
    """The short clip whose packets are repeated."""

    width: int
    height: int
    video_bitrate: int
    seconds: int = 4
    gop_seconds: int = 2
    audio_bitrate: int = 128_000

    @property
    def key(self) -> str:
        return _digest(("clip", GENERATOR_VERSION, dataclasses.astuple(self)))


@dataclass(frozen=True)
class InputSpec:
    """One benchmark input: a clip repeated for ``seconds`` in a container."""

    name: str
    role: str  # "movie" (2-hour, big sample tables) or "big" (600 MB, high bit rate)
    clip: ClipSpec
    seconds: int
    container: str  # "mp4" or "flv"
    moov_front: bool = True

    @property
    def ext(self) -> str:
        return self.container

    @property
    def key(self) -> str:
        return _digest(("input", GENERATOR_VERSION, self.clip.key, self.seconds, self.container, self.moov_front))

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.key}.{self.ext}"


def _digest(value: object) -> str:
    return hashlib.sha1(repr(value).encode()).hexdigest()[:10]


MOVIE_CLIP = ClipSpec(640, 360, 1_000_000)
BIG_CLIP = ClipSpec(1280, 720, 7_700_000)
QUICK_MOVIE_CLIP = ClipSpec(320, 180, 400_000)
QUICK_BIG_CLIP = ClipSpec(640, 360, 6_000_000)
TINY_CLIP = ClipSpec(160, 96, 300_000, seconds=2, gop_seconds=1, audio_bitrate=64_000)


def _set(movie_clip: ClipSpec, movie_s: int, big_clip: ClipSpec, big_s: int) -> list[InputSpec]:
    return [
        InputSpec("movie_front", "movie", movie_clip, movie_s, "mp4", True),
        InputSpec("movie_end", "movie", movie_clip, movie_s, "mp4", False),
        InputSpec("big_mp4", "big", big_clip, big_s, "mp4", True),
        InputSpec("big_flv", "big", big_clip, big_s, "flv"),
    ]


#: full: the issue's inputs (2 h movie: 180k video + 310k audio samples; 10 min at ~8 Mbit/s = ~600 MB).
INPUT_SETS: dict[str, list[InputSpec]] = {
    "full": _set(MOVIE_CLIP, 2 * 3600, BIG_CLIP, 10 * 60),
    "quick": _set(QUICK_MOVIE_CLIP, 5 * 60, QUICK_BIG_CLIP, 20),
    "tiny": _set(TINY_CLIP, 20, TINY_CLIP, 6),
}


@dataclass
class Input:
    """A generated input file and what we know about it."""

    spec: InputSpec
    path: pathlib.Path
    meta: dict

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @property
    def moov_size(self) -> int:
        return int(self.meta.get("moov_size") or 0)


# ------------------------------------------------------------------------------------------------
# the clip
# ------------------------------------------------------------------------------------------------


def encode_clip(spec: ClipSpec, path: pathlib.Path) -> None:
    """Encode ``spec.seconds`` of noise video (x264, CBR) and two tones + noise (AAC) to ``path``.

    Pure Python + PyAV (no numpy), seeded: the same spec gives the same clip.
    """
    import av

    rng = random.Random(6)
    frames = spec.seconds * FPS
    gop = spec.gop_seconds * FPS
    kbps = spec.video_bitrate // 1000
    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = spec.width, spec.height, "yuv420p"
        video.bit_rate = spec.video_bitrate
        video.codec_context.gop_size = gop
        video.options = {
            "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:nal-hrd=cbr:"
                           f"vbv-maxrate={kbps}:vbv-bufsize={kbps}:force-cfr=1",
        }
        audio = out.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "stereo"
        audio.bit_rate = spec.audio_bitrate
        for index in range(frames):
            frame = av.VideoFrame(spec.width, spec.height, "yuv420p")
            for plane in frame.planes:
                plane.update(rng.randbytes(plane.buffer_size))
            frame.pts = index
            frame.time_base = Fraction(1, FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        count = spec.seconds * SAMPLE_RATE
        for start in range(0, count, AAC_FRAME):
            frame = av.AudioFrame(format="fltp", layout="stereo", samples=AAC_FRAME)
            for channel, (plane, tone) in enumerate(zip(frame.planes, (440.0, 660.0), strict=True)):
                step = 2 * math.pi * tone / SAMPLE_RATE
                pcm = array("f", (0.3 * math.sin(step * n) + 0.15 * rng.gauss(0.0, 1.0) * (1 + channel) / 2
                                  for n in range(start, start + AAC_FRAME)))
                plane.update(pcm.tobytes())
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            frame.time_base = Fraction(1, SAMPLE_RATE)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# repetition
# ------------------------------------------------------------------------------------------------


def mux_repeated(clip_path: pathlib.Path, spec: InputSpec, path: pathlib.Path) -> dict:
    """Write ``spec.seconds`` of the clip's packets, repeated, into ``path``; returns packet counts."""
    import av

    if spec.seconds % spec.clip.seconds:
        raise ValueError(f"{spec.name}: {spec.seconds} s is not a multiple of the clip ({spec.clip.seconds} s)")
    reps = spec.seconds // spec.clip.seconds
    tmp = path.with_name(path.name + ".part")
    options = {"movflags": "faststart"} if spec.container == "mp4" and spec.moov_front else {}
    with av.open(str(clip_path)) as clip:
        vin, ain = clip.streams.video[0], clip.streams.audio[0]
        vpackets, apackets = [], []
        for packet in clip.demux(vin, ain):
            if packet.size == 0 or packet.dts is None:
                continue
            if packet.stream.type == "video":
                vpackets.append(packet)
            elif packet.pts >= 0 and packet.duration == AAC_FRAME:  # no priming, no short last frame
                apackets.append(packet)
        vtimes = [(p.pts, p.dts) for p in vpackets]
        vtb, atb = vin.time_base, ain.time_base
        period = round(spec.clip.seconds / vtb)
        audio_total = math.ceil(spec.seconds * SAMPLE_RATE / AAC_FRAME)
        video_total = len(vpackets) * reps
        with av.open(str(tmp), "w", format=spec.container, options=options) as out:
            vout = out.add_stream_from_template(vin)
            aout = out.add_stream_from_template(ain)
            for packet in vpackets:
                packet.stream = vout
            for packet in apackets:
                packet.stream = aout
            vsec, asec = float(vtb), float(atb)
            nv = len(vpackets)
            na = len(apackets)
            vi = ai = 0
            while vi < video_total or ai < audio_total:
                rep, j = divmod(vi, nv)
                vdts = vtimes[j][1] + rep * period if vi < video_total else None
                if ai >= audio_total or (vdts is not None and vdts * vsec <= ai * AAC_FRAME * asec):
                    packet = vpackets[j]
                    packet.time_base = vtb  # the muxer rebased it to the output's time base last time
                    packet.pts = vtimes[j][0] + rep * period
                    packet.dts = vdts
                    vi += 1
                else:
                    packet = apackets[ai % na]
                    packet.time_base = atb
                    packet.pts = packet.dts = ai * AAC_FRAME
                    ai += 1
                out.mux(packet)
    os.replace(tmp, path)
    return {"video_packets": video_total, "audio_packets": audio_total}


# ------------------------------------------------------------------------------------------------
# inspection
# ------------------------------------------------------------------------------------------------

_HEADER = struct.Struct(">I4s")


def top_level_boxes(path: pathlib.Path) -> list[tuple[str, int, int]]:
    """(type, offset, size) of the top-level boxes of an MP4 file."""
    boxes = []
    size_total = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            head = f.read(16)
            size, kind = _HEADER.unpack_from(head)
            if size == 1:
                size = struct.unpack_from(">Q", head, 8)[0]
            elif size == 0:
                size = size_total - offset
            if size < 8:
                break
            boxes.append((kind.decode("latin-1"), offset, size))
            offset += size
    return boxes


def verify(path: pathlib.Path) -> dict:
    """Demux the whole file with PyAV (it must demux) and count packets per stream."""
    import av

    counts = {"video": 0, "audio": 0}
    with av.open(str(path)) as container:
        duration = float(container.duration or 0) / 1_000_000
        for packet in container.demux():
            if packet.size:
                counts[packet.stream.type] = counts.get(packet.stream.type, 0) + 1
    return {"demuxed_video_packets": counts["video"], "demuxed_audio_packets": counts["audio"], "duration_s": duration}


def describe(path: pathlib.Path, spec: InputSpec) -> dict:
    meta: dict = {"size": path.stat().st_size}
    if spec.container == "mp4":
        boxes = top_level_boxes(path)
        meta["boxes"] = [name for name, _, _ in boxes]
        for name, offset, size in boxes:
            if name == "moov":
                meta["moov_size"], meta["moov_offset"] = size, offset
    return meta


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------


def ensure_clip(spec: ClipSpec, cache: pathlib.Path, log: Callable[[str], None] = print) -> tuple[pathlib.Path, float]:
    path = cache / f"clip-{spec.width}x{spec.height}-{spec.key}.mp4"
    if path.exists():
        return path, 0.0
    log(f"encoding clip {path.name} ({spec.seconds} s, {spec.width}x{spec.height}, {spec.video_bitrate} bit/s)")
    start = time.perf_counter()
    encode_clip(spec, path)
    return path, time.perf_counter() - start


def ensure_input(spec: InputSpec, cache: pathlib.Path, log: Callable[[str], None] = print, *,
                 check: bool = True) -> Input:
    """The input for ``spec``, made now if it is not in ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / spec.filename
    sidecar = path.with_name(path.name + ".json")
    if path.exists() and sidecar.exists():
        meta = json.loads(sidecar.read_text())
        if meta.get("size") == path.stat().st_size:
            return Input(spec, path, meta)
    clip_path, clip_seconds = ensure_clip(spec.clip, cache, log)
    log(f"making {path.name} ({spec.seconds} s of {spec.container}, moov {'front' if spec.moov_front else 'end'})")
    start = time.perf_counter()
    counts = mux_repeated(clip_path, spec, path)
    mux_seconds = time.perf_counter() - start
    meta = describe(path, spec)
    meta.update(counts, spec=dataclasses.asdict(spec), clip_encode_s=round(clip_seconds, 2),
                mux_s=round(mux_seconds, 2))
    if check:
        start = time.perf_counter()
        meta.update(verify(path))
        meta["verify_s"] = round(time.perf_counter() - start, 2)
        if (meta["demuxed_video_packets"], meta["demuxed_audio_packets"]) != (counts["video_packets"],
                                                                               counts["audio_packets"]):
            raise RuntimeError(f"{path.name} does not demux to the packets written: {meta}")
        if abs(meta["duration_s"] - spec.seconds) > 1:
            raise RuntimeError(f"{path.name} lasts {meta['duration_s']} s, not {spec.seconds} s")
    sidecar.write_text(json.dumps(meta, indent=1))
    log(f"  {meta['size'] / 1e6:.1f} MB in {mux_seconds:.1f} s"
        + (f", moov {meta['moov_size'] / 1e6:.2f} MB at byte {meta['moov_offset']}" if "moov_size" in meta else ""))
    return Input(spec, path, meta)


def ensure_inputs(set_name: str, cache: pathlib.Path | None = None, log: Callable[[str], None] = print,
                  names: list[str] | None = None) -> dict[str, Input]:
    cache = cache or default_cache()
    specs = [spec for spec in INPUT_SETS[set_name] if names is None or spec.name in names]
    return {spec.name: ensure_input(spec, cache, log) for spec in specs}


if __name__ == "__main__":
    import sys

    for item in ensure_inputs(sys.argv[1] if len(sys.argv) > 1 else "full").values():
        print(item.name, item.path, json.dumps({k: v for k, v in item.meta.items() if k != "spec"}))
