"""Shared fixtures: media made by PyAV once per session, the real third-party corpus."""

from __future__ import annotations

import fractions
import logging
import os
import pathlib

import pytest

try:
    from tests import media as media_toolkit
except ImportError:  # tests/ run as a plain directory
    import media as media_toolkit  # type: ignore[no-redef]

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_MEDIA = pathlib.Path(os.environ.get("AUDIO_MIDDLEWARE_SHARED_MEDIA", REPO.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def media(media_dir: pathlib.Path):
    """``media("mp4_faststart")`` -> path of a small PyAV-made file (made once per session)."""

    def make(kind: str) -> pathlib.Path:
        return media_toolkit.make_media(kind, media_dir)

    return make


@pytest.fixture(scope="session")
def make(media):
    """``media`` under another name, for test files that import the toolkit module as ``media``."""
    return media


@pytest.fixture
def apps():
    """Collects job-API apps so that every one is closed, whatever the test does."""
    made = []
    yield made
    for app in made:
        app.close()


@pytest.fixture(scope="session")
def shared_media() -> pathlib.Path:
    """The folder of real third-party files; tests using it skip when it is absent."""
    if not SHARED_MEDIA.is_dir():
        pytest.skip(f"real media corpus not found at {SHARED_MEDIA}")
    return SHARED_MEDIA


@pytest.fixture(scope="session")
def video_heavy(media_dir: pathlib.Path) -> pathlib.Path:
    """An MP4 (moov at the end) whose video is most of the file: noise frames at a high bitrate."""
    path = media_dir / "video_heavy_moov_end.mp4"
    if path.exists():
        return path
    return _make_video_heavy(path)


def _make_video_heavy(path: pathlib.Path) -> pathlib.Path:
    import math
    import random

    import av

    rng = random.Random(7)
    tmp = path.with_suffix(".part")
    with av.open(str(tmp), "w", format="mp4") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 320, 240, "yuv420p"
        video.codec_context.options = {"qscale": "1"}
        audio = out.add_stream("aac", rate=44100)
        audio.codec_context.layout = "mono"
        frames = 50
        for index in range(frames):
            frame = av.VideoFrame(320, 240, "yuv420p")
            for plane in frame.planes:
                plane.update(rng.randbytes(plane.buffer_size))
            frame.pts = index
            frame.time_base = fractions.Fraction(1, 25)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples = 1024
        for index in range(2 * 44100 // samples):
            frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
            tone = bytearray()
            for n in range(samples):
                value = int(8000 * math.sin(2 * math.pi * 440 * (index * samples + n) / 44100))
                tone += value.to_bytes(2, "little", signed=True)
            frame.planes[0].update(bytes(tone))
            frame.sample_rate = 44100
            frame.pts = index * samples
            frame.time_base = fractions.Fraction(1, 44100)
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    tmp.rename(path)
    return path


@pytest.fixture
def quiet_middleware_log():
    """Silence the middleware's logger: each rejected input logs a warning by design, and
    thousands of them (hostile inputs, regression replays) only slow the run down."""
    logger = logging.getLogger("audio_middleware")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)

