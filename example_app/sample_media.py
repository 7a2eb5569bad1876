"""Make the demo's sample media with PyAV: a 10 s H.264 + AAC MP4 and the same in FLV.

The picture is a scrolling gradient whose colour changes every second, with a
progress bar along the bottom; the sound is a rising sine sweep (220 Hz to
880 Hz) with a short high beep on every whole second, so both where you are
and whether seeking worked can be heard.

Files are written atomically (temporary name, then ``os.replace``), so several
processes may call :func:`ensure_media` at the same time.  They go to
``$AUDIO_DEMO_MEDIA`` or ``example_app/media/`` (gitignored).
"""

from __future__ import annotations

import math
import os
import pathlib
import struct
from fractions import Fraction

DURATION_S = 10
FPS = 25
WIDTH, HEIGHT = 320, 180
RATE = 44100
AUDIO_FRAME = 1024  # samples per AAC frame

#: file name -> (PyAV muxer name, container options, Content-Type)
FILES: dict[str, tuple[str, dict[str, str], str]] = {
    "sample.mp4": ("mp4", {"movflags": "faststart"}, "video/mp4"),
    "sample.flv": ("flv", {}, "video/x-flv"),
}

ENV_VAR = "AUDIO_DEMO_MEDIA"
DEFAULT_DIR = pathlib.Path(__file__).resolve().parent / "media"


def media_dir(directory: str | os.PathLike | None = None) -> pathlib.Path:
    """The directory holding the sample files: the argument, ``$AUDIO_DEMO_MEDIA`` or ``example_app/media``."""
    return pathlib.Path(directory or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def ensure_media(directory: str | os.PathLike | None = None) -> dict[str, pathlib.Path]:
    """Create the missing sample files; return ``{name: path}`` for all of them."""
    folder = media_dir(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (fmt, options, _) in FILES.items():
        path = folder / name
        if not path.exists():
            tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
            try:
                _encode(tmp, fmt, options)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        paths[name] = path
    return paths


def content_type(name: str) -> str:
    return FILES[name][2]


# -- synthesis -----------------------------------------------------------------------------------

_RAMP = bytes(range(256)) * 3


def _video_frame(index: int):
    import av

    frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
    luma = frame.planes[0]
    t = index / (DURATION_S * FPS)
    bar_top = HEIGHT - 16
    bar = b"\xeb" * int(WIDTH * t) + b"\x20" * (WIDTH - int(WIDTH * t))
    rows = []
    for y in range(HEIGHT):
        if y >= bar_top:
            row = bar
        else:
            offset = (index * 3 + y) % 256
            row = _RAMP[offset : offset + WIDTH]
        rows.append(row.ljust(luma.line_size, b"\0"))
    luma.update(b"".join(rows))
    second = index // FPS
    u, v = (64 + 37 * second) % 256, (192 - 53 * second) % 256
    frame.planes[1].update(bytes([u]) * frame.planes[1].buffer_size)
    frame.planes[2].update(bytes([v]) * frame.planes[2].buffer_size)
    frame.pts = index
    frame.time_base = Fraction(1, FPS)
    return frame


def _tone(n: int) -> float:
    """Sample ``n``: a 220 -> 880 Hz sweep plus a 0.08 s 1760 Hz beep at each whole second."""
    t = n / RATE
    total = DURATION_S
    # phase of a linear sweep f(t) = f0 + (f1 - f0) * t / T  ->  2*pi*(f0*t + (f1-f0)*t^2/(2T))
    phase = 2 * math.pi * (220.0 * t + (880.0 - 220.0) * t * t / (2 * total))
    value = 0.25 * math.sin(phase)
    if t % 1.0 < 0.08:
        value += 0.2 * math.sin(2 * math.pi * 1760.0 * t)
    return value


class _Audio:
    def __init__(self, container) -> None:
        import av

        self.stream = container.add_stream("aac", rate=RATE, layout="stereo")
        ctx = self.stream.codec_context
        ctx.format = "fltp"
        ctx.bit_rate = 96_000
        ctx.time_base = Fraction(1, RATE)
        self.av = av
        self.total = DURATION_S * RATE
        self.pos = 0
        self.shift: int | None = None

    def encode_until(self, seconds: float | None):
        av = self.av
        limit = self.total if seconds is None else min(self.total, int(seconds * RATE))
        packets = []
        while self.pos < limit:
            n = min(AUDIO_FRAME, self.total - self.pos)
            frame = av.AudioFrame(format="fltp", layout="stereo", samples=n)
            raw = struct.pack(f"<{n}f", *(_tone(self.pos + i) for i in range(n)))
            for plane in frame.planes:
                plane.update(raw.ljust(plane.buffer_size, b"\0"))
            frame.sample_rate = RATE
            frame.pts = self.pos
            frame.time_base = Fraction(1, RATE)
            packets += self.stream.encode(frame)
            self.pos += n
        if seconds is None:
            packets += self.stream.encode(None)
        # AAC encoder priming gives the first packet a negative pts: start the audio at 0
        for packet in packets:
            if self.shift is None:
                self.shift = -packet.pts if packet.pts is not None and packet.pts < 0 else 0
            if self.shift:
                packet.pts += self.shift
                packet.dts += self.shift
        return packets


def _encode(path: pathlib.Path, fmt: str, options: dict[str, str]) -> None:
    try:
        import av
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "The demo generates its sample video with PyAV: pip install av (or put ready-made "
            f"sample.mp4 / sample.flv files in {path.parent})"
        ) from None

    with av.open(str(path), "w", format=fmt, container_options=options) as out:
        video = out.add_stream("libx264" if _has_encoder("libx264") else "mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        ctx = video.codec_context
        ctx.time_base = Fraction(1, FPS)
        ctx.gop_size = FPS
        ctx.thread_count = 1
        if ctx.name == "libx264":
            ctx.options = {"preset": "veryfast", "x264-params": f"keyint={FPS}:min-keyint={FPS}:scenecut=0"}
        else:
            ctx.bit_rate = 400_000
        audio = _Audio(out)
        for index in range(DURATION_S * FPS):
            out.mux(video.encode(_video_frame(index)))
            out.mux(audio.encode_until((index + 1) / FPS))
        out.mux(video.encode(None))
        out.mux(audio.encode_until(None))


def _has_encoder(name: str) -> bool:
    import av

    try:
        av.Codec(name, "w")
    except Exception:  # noqa: BLE001 - PyAV raises several error types for unknown codecs
        return False
    return True


if __name__ == "__main__":  # python -m example_app.sample_media [DIR]
    import sys

    for name, file in ensure_media(sys.argv[1] if len(sys.argv) > 1 else None).items():
        print(f"{name}: {file} ({file.stat().st_size} bytes)")
