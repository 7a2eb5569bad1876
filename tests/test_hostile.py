"""Hostile input: whatever the bytes, a flagged request ends well (see docs/hardening.md).

Allowed ends for any input: a correct audio rendition; an HTTP error with a short
text/plain reason before the first body byte; or, only for a forward-only upstream
that ends or breaks after the body started, an aborted response (one of the
package's own errors raised while iterating). Never another exception type, a
hang, unbounded memory, a wrong close count, or a well-formed but wrong body.

Three parts:

1. Property tests (hypothesis): real fixtures (the PyAV-made kinds and every file
   of the shared real-media corpus) mutated by structure-aware operations (flip,
   truncate, splice, box sizes, largesize, entry counts, stsc entries, chunk offsets,
   FLV DataSize/PreviousTagSize/tag type, AMF markers...). The oracle is
   ``fuzz/fuzz_extract.py`` (shared with the fuzz entry point and the regression
   replays), so the guarantees are written down once.
2. Targeted checks, inputs built byte by byte: one test per rule of the issue
   (box sizes, largesize, size 0, nesting, counts, stsc, stco/co64, stsz/stz2,
   duplicates, missing boxes, zero timescale, FLV DataSize, PreviousTagSize, tag
   types, filter bit, AMF0 depth and lengths). A check the package lacks is an
   ``xfail(strict=True)`` test naming it.
3. Limits: every option of :class:`~audio_middleware.limits.Limits` is enforced
   and answers with the documented status.
"""

from __future__ import annotations

import importlib.util
import io
import math
import pathlib
import struct
import time
import tracemalloc
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from audio_middleware import AudioOnlyMiddleware
from audio_middleware.emit import iter_plan_bytes
from audio_middleware.errors import (
    AudioExtractionError,
    LimitExceeded,
    MalformedMedia,
    NeedsRandomAccess,
    NoAudioTrack,
    SourceTruncated,
    UnsupportedMedia,
)
from audio_middleware.extract import Selection, plan_source
from audio_middleware.limits import Limits
from audio_middleware.plan import LazyPlan
from audio_middleware.sniff import Container
from audio_middleware.sources import FileSource, SequentialSource
from fuzz import fuzz_extract as fz

from .apps import GeneratorApp, StaticApp
from .conftest import SHARED_MEDIA, media_toolkit

pytestmark = pytest.mark.usefixtures("quiet_middleware_log")  # thousands of rejections, each logged

# ================================================================================================
# 1. property tests
# ================================================================================================

MP4_SEEDS = ("mp4_faststart", "mp4_moov_end", "mp4_mp3", "mp4_two_audio", "mov", "3gp", "m4a_audio_only",
             "mp4_video_only", "mp4_fragmented", "mp4_largesize_co64")
FLV_SEEDS = ("flv_aac", "flv_mp3", "flv_video_only")
SHARED_FILES = tuple(sorted(p.name for p in SHARED_MEDIA.glob("*") if p.is_file() and p.suffix != ".md")) \
    if SHARED_MEDIA.is_dir() else ()

MP4_OPS = ("truncate", "flip", "byte", "u32", "box_size", "largesize", "count", "stsc", "offset", "splice",
           "duplicate", "drop")
FLV_OPS = ("truncate", "flip", "byte", "u32", "splice", "flv_datasize", "flv_prevsize", "flv_type", "amf")
U16 = st.integers(0, 0xFFFF)


def mutations(ops: Sequence[str]) -> st.SearchStrategy:
    """1-4 mutations; hypothesis shrinks towards fewer, simpler ones (earlier names, smaller numbers)."""
    return st.lists(st.tuples(st.sampled_from(ops), U16, U16, U16), min_size=1, max_size=4)


#: Bounded and deterministic: each property test stays well under a minute and CI
#: sees the same examples every run (a failure prints the exact mutations to replay).
BOUNDED = settings(max_examples=200, deadline=3000, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(BOUNDED, max_examples=150)


class Seeds(dict):
    """The PyAV-made fixtures by kind, as bytes; a short repr keeps hypothesis reports readable."""

    def __repr__(self) -> str:
        return f"<{len(self)} seed files>"


@pytest.fixture(scope="module")
def seeds(media) -> Seeds:
    """The PyAV-made fixtures, by kind, as bytes (the splice partners too)."""
    return Seeds({kind: media(kind).read_bytes() for kind in MP4_SEEDS + FLV_SEEDS})


def _mutated(seeds: dict[str, bytes], kind: str, ops) -> bytes:
    return fz.apply(seeds[kind], ops, list(seeds.values()))


def _tally(outcomes: dict[str, fz.Outcome]) -> None:
    """Label each example by what became of it (see --hypothesis-show-statistics): the mix must stay healthy."""
    for name, outcome in outcomes.items():
        if outcome.status is not None:
            event(f"{name}: {outcome.status[:3]}{' aborted' if outcome.aborted else ''}")
        else:
            event(f"{name}: {'rendition' if outcome.ok else type(outcome.error).__name__}")


@BOUNDED
@given(kind=st.sampled_from(MP4_SEEDS), ops=mutations(MP4_OPS))
def test_mutated_mp4_planners_only_raise_their_own_errors(seeds, kind, ops):
    """plan_source over FileSource and SequentialSource (known and unknown length): only our errors escape.

    Also: a file-backed plan never fails while streaming (its spans were checked),
    every source kind gives the same MP4 bytes, and a rendition re-plans to itself.
    """
    data = _mutated(seeds, kind, ops)
    _tally(fz.check_planners(data))


@BOUNDED
@given(kind=st.sampled_from(FLV_SEEDS), ops=mutations(FLV_OPS))
def test_mutated_flv_planners_only_raise_their_own_errors(seeds, kind, ops):
    data = _mutated(seeds, kind, ops)
    _tally(fz.check_planners(data))


@SLOW
@given(kind=st.sampled_from(MP4_SEEDS + FLV_SEEDS), ops=mutations(fz.OPS))
def test_mutated_media_through_the_middleware(seeds, kind, ops):
    """The full guarantee, over WSGI, from file-backed, forward-only, Range-capable and write() upstreams.

    Each response is an audio rendition equal to the source's audio (reference reader,
    and FFmpeg when it reads the source as its tables say), an error with a text/plain
    reason, or (forward-only only) an abort with one of our errors; upstream close()
    is called once per body; a repeated file-backed request (plan cache) answers the same.
    """
    data = _mutated(seeds, kind, ops)
    _tally(fz.check_middleware(data, sources=("file", "generator", "range", "write")))


def _forward_only(seeds: Seeds, kind: str, ops, directory: pathlib.Path, **options) -> None:
    """Serve the mutated input from a forward-only upstream app and check the one response."""
    data = _mutated(seeds, kind, ops)
    container = fz.container_of(data) or Container.MP4
    path = directory / "input"
    path.write_bytes(data)
    upstream = GeneratorApp(path, fz.CONTENT_TYPES[container], chunks=fz.ODD_CHUNKS, **options)
    with fz.memory_bound(fz.MEMORY_BOUND, "the middleware"), fz.time_bound(fz.HANG_SECONDS, "middleware"):
        outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream))
    verdict = fz.check_response(outcome, data, forward_only=True)
    event(f"forward-only: {verdict}")
    assert upstream.closes == upstream.bodies == 1
    if verdict == "audio":
        fz.check_content(data, outcome.output, container)


@SLOW
@given(kind=st.sampled_from(MP4_SEEDS + FLV_SEEDS), ops=mutations(fz.OPS))
def test_forward_only_upstream_without_content_length(seeds, kind, ops, tmp_path_factory):
    """A chunked upstream (size unknown): every span and fragment is checked against what arrives."""
    _forward_only(seeds, kind, ops, tmp_path_factory.mktemp("chunked"), send_length=False)




@SLOW
@given(kind=st.sampled_from(MP4_SEEDS + FLV_SEEDS), ops=mutations(fz.OPS), cut=st.integers(0, 1 << 20))
def test_forward_only_upstream_that_ends_early(seeds, kind, ops, cut, tmp_path_factory):
    """A body shorter than its Content-Length.

    A rendition that completes must still be right (all its audio came before the
    cut); otherwise the client sees an error status or an aborted body, never a
    complete-looking short file.
    """
    cut %= len(_mutated(seeds, kind, ops)) + 1
    _forward_only(seeds, kind, ops, tmp_path_factory.mktemp("cut"), truncate_at=cut)


@pytest.mark.skipif(not SHARED_FILES, reason=f"real media corpus not found at {SHARED_MEDIA}")
@BOUNDED
@given(name=st.sampled_from(SHARED_FILES or ("none",)), ops=mutations(fz.OPS))
def test_mutated_real_corpus_planners(name, ops):
    """Every real third-party file (66 of them, ClusterFuzz inputs included), mutated, through the planners."""
    data = fz.apply((SHARED_MEDIA / name).read_bytes(), ops)
    _tally(fz.check_planners(data))


@pytest.mark.skipif(not SHARED_FILES, reason=f"real media corpus not found at {SHARED_MEDIA}")
@settings(SLOW, max_examples=100)
@given(name=st.sampled_from(SHARED_FILES or ("none",)), ops=mutations(fz.OPS))
def test_mutated_real_corpus_through_the_middleware(name, ops):
    data = fz.apply((SHARED_MEDIA / name).read_bytes(), ops)
    _tally(fz.check_middleware(data, sources=("file", "generator")))


@pytest.mark.skipif(not SHARED_FILES, reason=f"real media corpus not found at {SHARED_MEDIA}")
def test_every_real_file_unmutated(shared_media):
    """The corpus as it is (its bad_* files are public fuzzer crashes of other parsers)."""
    for path in sorted(shared_media.iterdir()):
        if path.suffix == ".md":
            continue
        data = path.read_bytes()
        fz.check_planners(data)
        fz.check_middleware(data, sources=("file", "generator"))


HAS_MP4_CLIP = importlib.util.find_spec("audio_middleware.mp4.clip") is not None
WINDOW_SEEDS = FLV_SEEDS + (("mp4_faststart", "mp4_moov_end", "mp4_fragmented") if HAS_MP4_CLIP else ())


@BOUNDED
@given(kind=st.sampled_from(WINDOW_SEEDS), ops=mutations(fz.OPS), start=st.floats(0, 4), length=st.floats(0.001, 4))
def test_mutated_media_with_a_time_window(seeds, kind, ops, start, length):
    """Seeking (start/end) on mutated input: still only our own errors (MP4 once mp4/clip.py exists)."""
    data = _mutated(seeds, kind, ops)
    _tally(fz.check_planners(data, selection=Selection(None, start or None, start + length)))


@settings(BOUNDED, max_examples=150)
@given(data=st.binary(max_size=2048), prefix=st.sampled_from([b"", b"FLV\x01\x05\x00\x00\x00\x09",
                                                              b"\x00\x00\x00\x18ftyp", b"\x00\x00\x00\x08moov"]))
def test_arbitrary_bytes_behind_a_valid_looking_signature(data, prefix):
    """Not mutations of real files: raw hypothesis bytes behind an FLV header or an MP4 box type."""
    fz.check_planners(prefix + data)


RANGE_HEADERS = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 1 << 20), st.integers(0, 1 << 20)),
    st.builds(lambda a: f"bytes={a}-", st.integers(0, 1 << 20)),
    st.builds(lambda a: f"bytes=-{a}", st.integers(0, 1 << 20)),
    st.builds(lambda a, b, c: f"bytes={a}-{b},{c}-", st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000)),
    st.text(alphabet="bytes=0123456789-, \t\x00é", max_size=40),
)


@settings(BOUNDED, max_examples=150)
@given(kind=st.sampled_from(("mp4_faststart", "mp4_moov_end", "flv_aac")), header=RANGE_HEADERS,
       if_range=st.one_of(st.none(), st.sampled_from(['"v1"', 'W/"x"', "garbage", "Wed, 21 Oct 2026 07:28:00 GMT"])),
       method=st.sampled_from(("GET", "HEAD")))
def test_hostile_range_and_conditional_headers(seeds, media, kind, header, if_range, method):
    """Any Range / If-Range on a rendition: 200, 206 with the exact slice, or 416; never a crash or a wrong slice."""
    from .apps import FileApp

    path = media(kind)
    full = fz.call_wsgi(AudioOnlyMiddleware(FileApp(path, fz.CONTENT_TYPES[fz.container_of(seeds[kind])])))
    assert full.status.startswith("200")
    environ = {"HTTP_RANGE": header, "REQUEST_METHOD": method}
    if if_range is not None:
        environ["HTTP_IF_RANGE"] = if_range
    upstream = FileApp(path, fz.CONTENT_TYPES[fz.container_of(seeds[kind])])
    outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream), **environ)
    code = int(outcome.status[:3])
    event(f"range: {code}")
    assert upstream.closes == upstream.bodies
    if method == "HEAD":
        assert outcome.output == b""
        return
    if code == 200:
        assert outcome.output == full.output
    elif code == 206:
        start, stop, total = _content_range(outcome.headers["Content-Range"])
        assert total == len(full.output) and outcome.output == full.output[start:stop + 1]
        assert int(outcome.headers["Content-Length"]) == len(outcome.output)
    else:
        assert code == 416 and outcome.headers["Content-Range"] == f"bytes */{len(full.output)}"


def _content_range(value: str) -> tuple[int, int, int]:
    unit, _, rest = value.partition(" ")
    span, _, total = rest.partition("/")
    start, _, stop = span.partition("-")
    assert unit == "bytes"
    return int(start), int(stop), int(total)


# ================================================================================================
# 2. targeted checks: builders (ISO/IEC 14496-12 boxes, FLV tags, AMF0 values), byte by byte
# ================================================================================================

MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(kind: bytes, *payload: bytes, size: int | None = None, large: bool = False) -> bytes:
    """A box; ``size`` overrides the size field, ``large`` writes a 64-bit largesize header."""
    body = b"".join(payload)
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(body) if size is None else size) + body
    return struct.pack(">I4s", 8 + len(body) if size is None else size, kind) + body


def full_box(kind: bytes, *payload: bytes, version: int = 0, flags: int = 0) -> bytes:
    return box(kind, struct.pack(">I", version << 24 | flags), *payload)


def ftyp(brand: bytes = b"isom") -> bytes:
    return box(b"ftyp", brand, struct.pack(">I", 512), b"isomiso2mp41")


def mvhd(timescale: int = 1000, duration: int = 1000, next_track_id: int = 3) -> bytes:
    return full_box(b"mvhd", struct.pack(">IIIIIH10x36s24xI", 0, 0, timescale, duration, 0x10000, 0x100, MATRIX,
                                         next_track_id))


def tkhd(track_id: int, duration: int = 1000) -> bytes:
    return full_box(b"tkhd", struct.pack(">IIIIIQHHHH36sII", 0, 0, track_id, 0, duration, 0, 0, 0, 0x100, 0, MATRIX,
                                         0, 0), flags=3)


def mdhd(timescale: int = 8000, duration: int = 8000, language: int = 0x55C4) -> bytes:
    return full_box(b"mdhd", struct.pack(">IIIIHH", 0, 0, timescale, duration, language, 0))


def hdlr(handler: bytes) -> bytes:
    return full_box(b"hdlr", struct.pack(">I4s12x", 0, handler), b"handler\0")


def sowt_entry() -> bytes:
    """A QuickTime little-endian PCM sample entry: FFmpeg demuxes it without codec setup."""
    return box(b"sowt", bytes(6), struct.pack(">HHHIHHHHI", 1, 0, 0, 0, 1, 16, 0, 0, 8000 << 16))


def stsd(*entries: bytes) -> bytes:
    return full_box(b"stsd", struct.pack(">I", len(entries)), *entries)


def stts(entries) -> bytes:
    return full_box(b"stts", struct.pack(">I", len(entries)), *(struct.pack(">II", *e) for e in entries))


def stsc(entries, count: int | None = None) -> bytes:
    return full_box(b"stsc", struct.pack(">I", len(entries) if count is None else count),
                    *(struct.pack(">III", *e) for e in entries))


def stsz(sizes=(), constant: int = 0, count: int | None = None) -> bytes:
    sizes = list(sizes)
    n = len(sizes) if count is None else count
    if constant:
        return full_box(b"stsz", struct.pack(">II", constant, n))
    return full_box(b"stsz", struct.pack(">II", 0, n), struct.pack(f">{len(sizes)}I", *sizes))


def stz2(sizes, field_size: int, count: int | None = None) -> bytes:
    sizes = list(sizes)
    if field_size == 16:
        packed = struct.pack(f">{len(sizes)}H", *sizes)
    elif field_size == 8:
        packed = bytes(sizes)
    else:
        padded = sizes + [0] * (len(sizes) % 2)
        packed = bytes(a << 4 | b for a, b in zip(padded[::2], padded[1::2], strict=True))
    return full_box(b"stz2", struct.pack(">3xBI", field_size, len(sizes) if count is None else count), packed)


def stco(offsets, wide: bool = False, count: int | None = None) -> bytes:
    n = len(offsets) if count is None else count
    if wide:
        return full_box(b"co64", struct.pack(">I", n), struct.pack(f">{len(offsets)}Q", *offsets))
    return full_box(b"stco", struct.pack(">I", n), struct.pack(f">{len(offsets)}I", *offsets))


_RAMP = bytes(range(1, 252))


def chunk_bytes(kind: str, index: int, length: int) -> bytes:
    """Recognisable chunk contents (a ramp of 1..251 starting somewhere): neighbours never repeat each other."""
    seed = (index * 31 + (7 if kind == "v" else 3)) % 251
    return (_RAMP * (length // 251 + 2))[seed:seed + length]


class Movie:
    """A small but complete MP4: one audio track (PCM) and one video track, chunks interleaved.

    ``stbl`` maps an audio sample-table box name to replacement bytes (None drops
    it, a callable gets the default bytes); ``extra_*`` add boxes. Chunk offsets
    are computed for the final layout (two passes when moov comes first).
    """

    def __init__(self, chunks: int = 4, per_chunk: int = 2, sample_size: int = 4, video_size: int = 16, *,
                 moov_first: bool = True, wide: bool = False, video: bool = True, mvex: bool = False,
                 audio_id: int = 1, video_id: int = 2, stbl: dict | None = None, extra_stbl: Sequence[bytes] = (),
                 extra_trak: Sequence[bytes] = (), extra_moov: Sequence[bytes] = (), extra_minf: Sequence[bytes] = (),
                 audio_mdhd: bytes | None = None, audio_tkhd: bytes | None = None, audio_hdlr: bytes | None = None,
                 movie_header: bytes | None = None, large_mdat: bool = False) -> None:
        self.chunks, self.per_chunk, self.sample_size, self.video_size = chunks, per_chunk, sample_size, video_size
        self.moov_first, self.wide, self.video, self.mvex = moov_first, wide, video, mvex
        self.audio_id, self.video_id = audio_id, video_id
        self.stbl = stbl or {}
        self.extra_stbl, self.extra_trak, self.extra_moov, self.extra_minf = extra_stbl, extra_trak, extra_moov, \
            extra_minf
        self.audio_mdhd, self.audio_tkhd, self.audio_hdlr = audio_mdhd, audio_tkhd, audio_hdlr
        self.movie_header = movie_header
        self.large_mdat = large_mdat

    def payload(self) -> tuple[bytes, list[int], list[int]]:
        parts, audio, video, pos = [], [], [], 0
        for index in range(self.chunks):
            if self.video:
                parts.append(chunk_bytes("v", index, self.video_size))
                video.append(pos)
                pos += self.video_size
            size = self.per_chunk * self.sample_size
            parts.append(chunk_bytes("a", index, size))
            audio.append(pos)
            pos += size
        return b"".join(parts), audio, video

    def audio_stbl(self, offsets: list[int]) -> bytes:
        samples = self.chunks * self.per_chunk
        children = {
            b"stsd": stsd(sowt_entry()),
            b"stts": stts([(samples, 1)]),
            b"stsc": stsc([(1, self.per_chunk, 1)]),
            b"stsz": stsz([self.sample_size] * samples),
            b"stco": stco(offsets, wide=self.wide),
        }
        for name, value in self.stbl.items():
            children[name] = value(children.get(name), offsets) if callable(value) else value
        return box(b"stbl", *(v for v in children.values() if v is not None), *self.extra_stbl)

    def audio_trak(self, offsets: list[int]) -> bytes:
        minf = box(b"minf", full_box(b"smhd", bytes(4)), self.audio_stbl(offsets), *self.extra_minf)
        mdia = box(b"mdia", self.audio_mdhd or mdhd(), self.audio_hdlr or hdlr(b"soun"), minf)
        return box(b"trak", self.audio_tkhd or tkhd(self.audio_id), mdia, *self.extra_trak)

    def video_trak(self, offsets: list[int]) -> bytes:
        n = len(offsets)
        entry = box(b"mp4v", bytes(6), struct.pack(">H", 1), bytes(70))
        table = box(b"stbl", stsd(entry), stts([(n, 1)]), stsc([(1, 1, 1)]), stsz([self.video_size] * n),
                    stco(offsets, wide=self.wide))
        minf = box(b"minf", full_box(b"vmhd", bytes(8), flags=1), table)
        return box(b"trak", tkhd(self.video_id), box(b"mdia", mdhd(25, n), hdlr(b"vide"), minf))

    def moov(self, audio: list[int], video: list[int]) -> bytes:
        traks = [self.audio_trak(audio)] + ([self.video_trak(video)] if self.video else [])
        mvex = [box(b"mvex", full_box(b"trex", struct.pack(">IIIII", self.audio_id, 1, 0, 0, 0)))] if self.mvex else []
        return box(b"moov", self.movie_header or mvhd(), *traks, *mvex, *self.extra_moov)

    def build(self) -> bytes:
        payload, audio, video = self.payload()
        head = ftyp()
        mdat = box(b"mdat", payload, large=self.large_mdat)
        mdat_header = len(mdat) - len(payload)
        if self.moov_first:
            base = len(head) + len(self.moov(audio, video)) + mdat_header
            return head + self.moov([o + base for o in audio], [o + base for o in video]) + mdat
        base = len(head) + mdat_header
        return head + mdat + self.moov([o + base for o in audio], [o + base for o in video])

    def audio(self) -> bytes:
        """The audio bytes every correct rendition carries, in order."""
        payload, audio, _ = self.payload()
        size = self.per_chunk * self.sample_size
        return b"".join(payload[o:o + size] for o in audio)


def tfhd(track_id: int, flags: int = 0x020000, *fields: bytes) -> bytes:
    return full_box(b"tfhd", struct.pack(">I", track_id), *fields, flags=flags)


def trun(sizes: Sequence[int], data_offset: int | None = None, count: int | None = None) -> bytes:
    flags = 0x200 | (0x1 if data_offset is not None else 0)
    head = struct.pack(">I", len(sizes) if count is None else count)
    if data_offset is not None:
        head += struct.pack(">i", data_offset)
    return full_box(b"trun", head, *(struct.pack(">I", s) for s in sizes), flags=flags)


def fragmented(fragments: Sequence[Sequence[Sequence[int]]], *, traf_extra: Sequence[bytes] = ()) -> bytes:
    """ftyp + moov (audio track, empty tables, mvex) + one moof/mdat per fragment.

    ``fragments`` lists, per fragment, the sample sizes of each trun; samples
    follow their moof in the mdat, trun data offsets relative to the moof.
    """
    out = ftyp() + Movie(chunks=0, video=False, mvex=True).moov([], [])
    for sequence, truns in enumerate(fragments, 1):
        def moof(offsets, sequence=sequence, truns=truns):
            traf = box(b"traf", tfhd(1), *(trun(s, o) for s, o in zip(truns, offsets, strict=True)), *traf_extra)
            return box(b"moof", full_box(b"mfhd", struct.pack(">I", sequence)), traf)

        size = len(moof([0] * len(truns)))
        offsets, pos = [], size + 8
        for sizes in truns:
            offsets.append(pos)
            pos += sum(sizes)
        payload = b"".join(chunk_bytes("a", sequence * 10 + k, sum(s)) for k, s in enumerate(truns))
        out += moof(offsets) + box(b"mdat", payload)
    return out


# -- FLV and AMF0 -------------------------------------------------------------------------------


def amf_string(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def amf_number(value: float) -> bytes:
    return b"\x00" + struct.pack(">d", value)


def amf_object(**items: bytes) -> bytes:
    body = b"".join(struct.pack(">H", len(k)) + k.encode() + v for k, v in items.items())
    return b"\x03" + body + b"\x00\x00\x09"


def amf_ecma(**items: bytes) -> bytes:
    body = b"".join(struct.pack(">H", len(k)) + k.encode() + v for k, v in items.items())
    return b"\x08" + struct.pack(">I", len(items)) + body + b"\x00\x00\x09"


def flv_header(flags: int = 5, data_offset: int = 9, version: int = 1) -> bytes:
    return b"FLV" + bytes([version, flags]) + struct.pack(">I", data_offset) + bytes(max(0, data_offset - 9)) \
        + b"\0\0\0\0"


def flv_tag(kind: int, data: bytes, timestamp: int = 0, *, data_size: int | None = None,
            previous: int | None = None) -> bytes:
    """Tag header + data + its PreviousTagSize (``data_size``/``previous`` override the real ones)."""
    size = len(data) if data_size is None else data_size
    header = struct.pack(">I", kind << 24 | size) + struct.pack(">I", (timestamp & 0xFFFFFF) << 8 |
                                                               (timestamp >> 24) & 0xFF) + b"\0\0\0"
    return header + data + struct.pack(">I", 11 + len(data) if previous is None else previous)


#: An MPEG-1 Layer III frame header: 32 kbit/s, 44.1 kHz, stereo, no CRC, no padding: 104-byte frames.
MP3_HEADER = b"\xff\xfb\x10\x00"


def mp3_frame(index: int) -> bytes:
    """An FLV audio tag body: SoundFormat 2 (MP3) flags byte + one MP3 frame with a recognisable payload.

    A real frame header, so that FFmpeg's MP3 parser gives one packet per tag, as it does
    for real files, and the oracle can compare FFmpeg's packets (on bytes that are not MP3
    frames its parser joins tags by heuristics: see ``fuzz_extract._merges_tags``).
    """
    return b"\x2f" + MP3_HEADER + chunk_bytes("a", index, 100)


def video_frame(index: int) -> bytes:
    return b"\x22" + chunk_bytes("v", index, 40)  # Sorenson H.263 inter frame


def metadata(**extra: bytes) -> bytes:
    items = {"duration": amf_number(1.0), "width": amf_number(160.0), "hasVideo": b"\x01\x01", **extra}
    return amf_string("onMetaData") + amf_ecma(**items)


def flv_file(*tags: bytes, script: bytes | None = None, header: bytes | None = None) -> bytes:
    out = header if header is not None else flv_header()
    if script is not False:
        out += flv_tag(18, script if script is not None else metadata())
    return out + b"".join(tags)


def interleaved(frames: int = 6) -> list[bytes]:
    tags = []
    for index in range(frames):
        tags.append(flv_tag(9, video_frame(index), index * 40))
        tags.append(flv_tag(8, mp3_frame(index), index * 26))
    return tags


# -- running the planners and the middleware on one input --------------------------------------


def plan_bytes(data: bytes, source: str = "file", limits: Limits = Limits(), selection: Selection = Selection(),
               ) -> bytes:
    """The rendition of ``data`` through one planner path; raises what the planner raises."""
    container = fz.container_of(data)
    assert container is not None, "test input must sniff as MP4 or FLV"
    outcome = fz.plan_and_emit(data, source, container, limits, selection)
    if outcome.error is not None:
        raise outcome.error
    return outcome.output


def assert_refused(data: bytes, error: type[AudioExtractionError] = MalformedMedia, match: str | None = None,
                   limits: Limits = Limits(), sources: Sequence[str] = ("file", "stream"),
                   middleware: Sequence[str] = ("file", "generator")) -> None:
    """Every planner path in ``sources`` refuses ``data`` with ``error``, found before any output byte.

    Then through the middleware (``middleware``: file-backed and/or forward-only
    upstream): the status of that error class and a text/plain reason, never a body.
    """
    container = fz.container_of(data)
    for source in sources:
        outcome = fz.plan_and_emit(data, source, container, limits)
        assert isinstance(outcome.error, error), f"{source}: expected {error.__name__}, got {outcome.error!r}"
        assert outcome.phase == "plan", f"{source}: {outcome.error!r} only found while streaming"
        if match:
            assert match in str(outcome.error), f"{source}: {outcome.error}"
    outcomes = fz.check_middleware(data, sources=middleware, limits=limits, oracle=False)
    for name, response in outcomes.items():
        assert response.status.startswith(str(error.http_status)), f"{name}: {response.status} {response.output!r}"
        assert response.headers["Content-Type"].startswith("text/plain")


def assert_accepted(data: bytes, audio: bytes | None = None, limits: Limits = Limits()) -> bytes:
    """Every path produces the same rendition; it carries ``audio`` and passes the content oracle."""
    outcomes = fz.check_planners(data, limits=limits)
    outputs = {name: o.output for name, o in outcomes.items() if o.ok}
    assert "file" in outputs, f"file-backed planning failed: {outcomes['file'].error!r}"
    rendition = outputs["file"]
    if audio is not None:
        assert audio in rendition, "the rendition does not carry the audio bytes"
    container = fz.container_of(data)
    fz.check_content(data, rendition, container)
    fz.check_middleware(data, sources=("file", "generator"), limits=limits)
    return rendition


def patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def find(data: bytes, kind: bytes, nth: int = 0) -> fz.BoxAt:
    return [b for b in fz.mp4_boxes(data) if b.type == kind][nth]


def test_builders_make_media_ffmpeg_reads(tmp_path):
    """The synthetic movie and FLV are real media: FFmpeg reads them, our rendition equals their audio."""
    movie = Movie()
    data = movie.build()
    assert [s.type for s in media_toolkit.probe(data)] == ["audio", "video"]
    rendition = assert_accepted(data, movie.audio())
    media_toolkit.assert_audio_identical(data, rendition)
    flv = flv_file(*interleaved())
    assert {s.type for s in media_toolkit.probe(flv)} == {"audio", "video"}
    media_toolkit.assert_audio_identical(flv, assert_accepted(flv))


def _scripted_probe(monkeypatch, rendition: bytes, *, rendition_opens: list[bool], source_opens: list[bool]):
    """Make the oracle's FFmpeg probe fail or succeed, call by call, for the rendition and the source."""
    real = fz._probe
    script = {True: list(rendition_opens), False: list(source_opens)}

    def probe(data: bytes):
        opens = script[data == rendition]
        return real(data) if (opens.pop(0) if len(opens) > 1 else opens[0]) else None

    monkeypatch.setattr(fz, "_probe", probe)


@pytest.mark.parametrize("rendition_opens, source_opens, verdict", [
    ([False, True], [True], "identical"),  # failed once, then read: checked packet for packet
    ([False], [True, True, False], "reference"),  # the source's reading is not reproducible either
    ([False], [True], "lie"),  # never opens while the source always does: a finding
])
def test_the_ffmpeg_oracle_believes_only_a_reproducible_failure(monkeypatch, rendition_opens, source_opens, verdict):
    flv = flv_file(*interleaved())
    rendition = assert_accepted(flv)
    _scripted_probe(monkeypatch, rendition, rendition_opens=rendition_opens, source_opens=source_opens)
    if verdict == "lie":
        with pytest.raises(fz.Finding, match="cannot open the rendition"):
            fz.check_content(flv, rendition, fz.container_of(flv))
    else:
        assert fz.check_content(flv, rendition, fz.container_of(flv)) == verdict


@pytest.mark.parametrize("kind", ["flv_aac", "flv_mp3", "mp4_faststart", "mp4_mp3"])
def test_the_ffmpeg_oracle_compares_packets_on_valid_media(media, kind):
    """The conditions under which the oracle falls back to its byte-level check must not swallow valid files."""
    data = media(kind).read_bytes()
    rendition = fz.check_planners(data)["file"].output
    assert fz.check_content(data, rendition, fz.container_of(data)) == "identical"


# -- box sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0x3, 0x7])
def test_top_level_box_smaller_than_its_header(size):
    data = ftyp() + box(b"free", b"", size=size) + Movie().build()[len(ftyp()):]
    assert_refused(data, match="smaller than its header")


@pytest.mark.parametrize("inside", [b"trak", b"stbl", b"stsz"])
def test_nested_box_smaller_than_its_header(inside):
    data = Movie().build()
    target = find(data, inside)
    assert_refused(patch(data, target.offset, ">I", 4))


@pytest.mark.parametrize("inside", [b"moov", b"trak", b"stbl", b"stco"])
def test_box_larger_than_its_parent(inside):
    """The last box of each parent (or the file) claims 1 byte more than there is."""
    data = Movie().build()
    target = find(data, inside, 1 if inside == b"trak" else 0)  # the video trak ends the moov
    assert_refused(patch(data, target.offset, ">I", target.size + 1 if inside != b"moov" else len(data)))


def test_moov_larger_than_the_file_on_a_stream_of_unknown_length():
    """No length to check against: reading the moov runs into the end of the body."""
    data = Movie().build()
    data = patch(data, find(data, b"moov").offset, ">I", 0x7FFFFFF0)
    outcome = fz.plan_and_emit(data, "stream-nolength", Container.MP4, Limits())
    assert isinstance(outcome.error, LimitExceeded | MalformedMedia)


def test_valid_largesize_boxes_are_followed():
    """64-bit headers on mdat and on moov itself (size 1 + largesize) are legal and read."""
    movie = Movie(large_mdat=True)
    assert_accepted(movie.build(), movie.audio())
    at_end = Movie(moov_first=False, large_mdat=True)
    data = at_end.build()
    moov = find(data, b"moov")
    as_large = data[:moov.offset] + struct.pack(">I4sQ", 1, b"moov", moov.size + 8) + data[moov.payload:]
    assert_accepted(as_large, at_end.audio())


@pytest.mark.parametrize("largesize", [0, 8, 15, 1 << 40, (1 << 64) - 1])
def test_bad_largesize(largesize):
    """largesize smaller than its 16-byte header, or far past the end of the file."""
    data = Movie(large_mdat=True, moov_first=False).build()
    assert_refused(patch(data, find(data, b"mdat").offset + 8, ">Q", largesize))


def test_largesize_header_cut_short():
    data = ftyp() + struct.pack(">I4s", 1, b"free") + b"\0\0\0"
    assert_refused(data)


def test_size_zero_last_box_extends_to_the_end_of_the_file():
    movie = Movie()
    data = movie.build()
    mdat = find(data, b"mdat")
    assert_accepted(patch(data, mdat.offset, ">I", 0), movie.audio())


def test_size_zero_box_in_the_middle_of_the_file():
    """A size-0 mdat before moov swallows the moov: "no moov" (FFmpeg agrees: it finds none either)."""
    data = Movie(moov_first=False).build()
    data = patch(data, find(data, b"mdat").offset, ">I", 0)
    assert_refused(data, match="no moov")


def test_size_zero_on_a_body_of_unknown_length():
    data = Movie(moov_first=False).build()
    data = patch(data, find(data, b"mdat").offset, ">I", 0)
    outcome = fz.plan_and_emit(data, "stream-nolength", Container.MP4, Limits())
    assert isinstance(outcome.error, MalformedMedia)


def test_size_zero_box_nested_in_moov():
    """Decided: a nested size-0 box extends to the end of its parent (FFmpeg's reading too).

    The boxes after it become its children; the video trak swallowed by the audio
    trak here is ignored by us and by FFmpeg alike, and the audio is intact.
    """
    movie = Movie()
    data = movie.build()
    data = patch(data, find(data, b"trak").offset, ">I", 0)
    rendition = assert_accepted(data, movie.audio())
    assert [s.type for s in media_toolkit.probe(rendition)] == ["audio"]


def test_deep_box_nesting_does_not_recurse():
    """100 000 nested udta boxes inside moov: copied, never walked recursively."""
    depth = 100_000
    nested = b"".join(struct.pack(">I4s", 8 * (depth - level), b"udta") for level in range(depth))
    movie = Movie(extra_moov=[nested])
    assert_accepted(movie.build(), movie.audio())


def test_box_depth_limit():
    """max_box_depth bounds how deep a rewrite descends (moov/trak/mdia/minf/stbl/stco is 5)."""
    movie = Movie()
    assert_refused(movie.build(), LimitExceeded, limits=Limits(max_box_depth=3))
    assert_accepted(movie.build(), movie.audio(), limits=Limits(max_box_depth=5))


# -- sample tables -------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["stsz", "stco", "co64", "stsc", "stz2"])
@pytest.mark.parametrize("claim", ["one-more", "64k", "max"])
def test_entry_count_larger_than_the_box_holds(table, claim):
    """Counts are checked against the box's own bytes before anything is allocated or looped."""
    movie = Movie()
    samples = movie.chunks * movie.per_chunk
    real = {"stsz": samples, "stco": movie.chunks, "co64": movie.chunks, "stsc": 1, "stz2": samples}[table]
    count = {"one-more": real + 1, "64k": real + 0x10000, "max": 0xFFFFFFFF}[claim]
    builders = {
        "stsz": {b"stsz": stsz([4] * samples, count=count)},
        "stz2": {b"stsz": None, b"stz2": stz2([4] * samples, 8, count=count)},
        "stsc": {b"stsc": stsc([(1, 2, 1)], count=count)},
        "stco": {b"stco": lambda default, offsets: stco(offsets, count=count)},
        "co64": {b"stco": lambda default, offsets: stco(offsets, wide=True, count=count)},
    }
    # 0xFFFFFFFF entries is also over the default max_table_entries: that check may come first.
    assert_refused(Movie(stbl=builders[table]).build(), LimitExceeded if claim == "max" else MalformedMedia)


def test_table_entry_limit():
    movie = Movie(chunks=8)
    assert_refused(movie.build(), LimitExceeded, limits=Limits(max_table_entries=8))
    assert_accepted(movie.build(), movie.audio(), limits=Limits(max_table_entries=16))


def test_stsz_sample_count_beyond_what_chunks_use_is_ignored():
    """More samples in stsz than the chunks describe: extra ones are unused (FFmpeg does the same)."""
    movie = Movie(stbl={b"stsz": stsz([4] * 8 + [4] * 5)})
    assert_accepted(movie.build(), movie.audio())


def test_chunks_that_need_more_samples_than_stsz_lists():
    assert_refused(Movie(stbl={b"stsc": stsc([(1, 3, 1)])}).build(), match="more samples")


def test_samples_per_chunk_huge():
    assert_refused(Movie(stbl={b"stsc": stsc([(1, 0xFFFFFFFF, 1)])}).build())


@pytest.mark.parametrize("entries", [
    [(0, 2, 1)],                       # first_chunk 0
    [(1, 2, 1), (1, 2, 1)],            # not increasing (equal)
    [(1, 2, 1), (3, 2, 1), (2, 2, 1)],  # decreasing
    [(2, 2, 1)],                       # does not start at chunk 1
], ids=["first-chunk-0", "equal", "decreasing", "starts-at-2"])
def test_stsc_first_chunk_must_start_at_1_and_increase(entries):
    """The out-of-order stsc of nginx CVE-2022-41741 is refused, not followed."""
    assert_refused(Movie(stbl={b"stsc": stsc(entries)}).build())


def test_stsc_runs_beyond_the_chunk_count_are_ignored():
    """An stsc entry for chunk 1000 of a 4-chunk track describes nothing: harmless."""
    movie = Movie(stbl={b"stsc": stsc([(1, 2, 1), (1000, 1, 1)])})
    assert_accepted(movie.build(), movie.audio())


def test_stsc_with_zero_samples_per_chunk():
    """Chunks with no samples are legal: they produce no bytes."""
    movie = Movie(chunks=4, stbl={b"stsc": stsc([(1, 2, 1), (3, 0, 1), (4, 2, 1)]), b"stsz": stsz([4] * 6)})
    rendition = assert_accepted(movie.build())
    payload, offsets, _ = movie.payload()
    assert payload[offsets[2]:offsets[2] + 8] not in rendition


@pytest.mark.parametrize("offset", ["past-end", "straddles-end", "max32", "max64"])
def test_chunk_offset_outside_the_file(offset):
    wide = offset == "max64"
    length = len(Movie(wide=wide).build())

    def offsets(default, real):
        bad = {"past-end": 10_000_000, "straddles-end": None, "max32": 0xFFFFFFFF, "max64": (1 << 64) - 1}[offset]
        values = list(real)
        if bad is None:  # the last chunk starts inside the file and ends past it
            values[-1] = length - 3
        else:
            values[1] = bad
        return stco(values, wide=wide)

    movie = Movie(wide=wide, stbl={b"stco": offsets})
    assert_refused(movie.build())


def test_chunk_offset_past_the_end_of_a_body_of_unknown_length():
    """Without a length to check against, the stream runs out while copying: an abort, never a short file."""
    movie = Movie()
    movie.stbl = {b"stco": lambda default, real: stco(list(real[:-1]) + [real[-1] + 10_000])}
    outcome = fz.plan_and_emit(movie.build(), "stream-nolength", Container.MP4, Limits())
    assert isinstance(outcome.error, SourceTruncated) and outcome.phase == "emit"


def test_overlapping_chunks():
    movie = Movie()
    movie.stbl = {b"stco": lambda default, real: stco([real[0], real[0] + 4, *real[2:]])}
    assert_refused(movie.build(), match="overlap")


def test_chunks_out_of_order_are_copied_in_source_order():
    """Chunk offsets need not increase (interleaving writers); sample order stays the table's."""
    movie = Movie()
    movie.stbl = {b"stco": lambda default, real: stco([real[1], real[0], *real[2:]])}
    data = movie.build()
    rendition = assert_accepted(data)
    fz.check_content(data, rendition, Container.MP4)


@pytest.mark.parametrize("variant", ["stsz-constant", "stsz-table", "stz2-16", "stz2-8", "stz2-4-odd"])
def test_sample_size_box_variants(variant):
    samples = 7  # odd, so that the 4-bit stz2 ends on a half byte
    sizes = [4, 2, 6, 4, 8, 2, 4]
    table = {
        "stsz-constant": {b"stsz": stsz(count=samples, constant=4)},
        "stsz-table": {b"stsz": stsz(sizes)},
        "stz2-16": {b"stsz": None, b"stz2": stz2(sizes, 16)},
        "stz2-8": {b"stsz": None, b"stz2": stz2(sizes, 8)},
        "stz2-4-odd": {b"stsz": None, b"stz2": stz2(sizes, 4)},
    }[variant]
    movie = Movie(chunks=7, per_chunk=1, sample_size=8, stbl={**table, b"stts": stts([(samples, 1)])})
    data = movie.build()
    rendition = assert_accepted(data)
    expected = sizes if variant != "stsz-constant" else [4] * samples
    payload, offsets, _ = movie.payload()
    assert b"".join(payload[o:o + size] for o, size in zip(offsets, expected, strict=True)) in rendition


@pytest.mark.parametrize("field_size", [0, 12, 32])
def test_stz2_field_size_must_be_4_8_or_16(field_size):
    bad = full_box(b"stz2", struct.pack(">3xBI", field_size, 8), bytes(32))
    assert_refused(Movie(stbl={b"stsz": None, b"stz2": bad}).build())


def test_sample_size_box_too_short():
    assert_refused(Movie(stbl={b"stsz": full_box(b"stsz", b"\0\0")}).build())


# -- duplicates and missing boxes ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["stbl-in-minf", "stsz", "stco", "stsz+stz2", "stco+co64", "stsc", "stsd",
                                   "tkhd", "mdia", "mdhd", "hdlr", "minf", "mvhd", "track-id"])
def test_duplicate_boxes_are_refused(where):
    """Two of a box that must be unique: refused, never "first one wins" on a table (nginx CVE-2024-7347)."""
    movie = Movie()
    payload, audio, video = movie.payload()
    stbl_copy = movie.audio_stbl(audio)
    extra = {
        "stbl-in-minf": dict(extra_minf=[stbl_copy]),
        "stsz": dict(extra_stbl=[stsz([4] * 8)]),
        "stco": dict(extra_stbl=[stco([0, 0, 0, 0])]),
        "stsz+stz2": dict(extra_stbl=[stz2([4] * 8, 8)]),
        "stco+co64": dict(extra_stbl=[stco([0, 0, 0, 0], wide=True)]),
        "stsc": dict(extra_stbl=[stsc([(1, 2, 1)])]),
        "stsd": dict(extra_stbl=[stsd(sowt_entry())]),
        "tkhd": dict(extra_trak=[tkhd(1)]),
        "mdia": dict(extra_trak=[box(b"mdia", mdhd(), hdlr(b"soun"))]),
        "mdhd": dict(audio_hdlr=hdlr(b"soun") + mdhd()),
        "hdlr": dict(audio_hdlr=hdlr(b"soun") + hdlr(b"soun")),
        "minf": dict(extra_trak=[]),
        "mvhd": dict(movie_header=mvhd() + mvhd()),
        "track-id": dict(video_id=1),
    }[where]
    if where == "minf":  # a second minf inside mdia
        extra = dict(audio_hdlr=hdlr(b"soun") + box(b"minf", full_box(b"smhd", bytes(4))))
    movie = Movie(**extra)
    assert_refused(movie.build())


def test_two_moov_boxes_first_wins():
    """Decided: the first moov is the movie (FFmpeg skips a duplicated moov too); the second is never read.

    Only the first is parsed, so a second one cannot feed a second pass of the
    parser (the nginx duplicate-atom bugs came from merging both).
    """
    movie = Movie(moov_first=True)
    data = movie.build()
    junk_moov = box(b"moov", mvhd(), box(b"trak", tkhd(9), box(b"mdia", mdhd(), hdlr(b"soun"))))
    rendition = assert_accepted(data + junk_moov, movie.audio())
    assert rendition == plan_bytes(data)


def assert_stream_aborts(data: bytes, error: type[AudioExtractionError] = MalformedMedia,
                         limits: Limits = Limits()) -> None:
    """A lazily planned stream (fragmented MP4, FLV) meets ``error`` after its body started: an abort.

    The head of the rendition went out before the bad fragment or tag was read, so
    the only honest end is an incomplete body (the client never sees a short but
    well-formed file); the same input from a file is an HTTP error (assert_refused).
    """
    outcome = fz.plan_and_emit(data, "stream", fz.container_of(data), limits)
    assert isinstance(outcome.error, error) and outcome.phase == "emit", repr(outcome.error)
    response = fz.check_middleware(data, sources=("generator",), limits=limits, oracle=False)["generator"]
    assert response.aborted and isinstance(response.error, error), (response.status, response.error)


@pytest.mark.parametrize("missing", ["mvhd", "tkhd", "mdia", "mdhd", "hdlr", "minf", "stbl", "stsd", "stsc",
                                     "stco", "stsz", "moov"])
def test_missing_mandatory_boxes(missing):
    movie = Movie()
    if missing in ("stsd", "stsc", "stco", "stsz"):
        movie.stbl = {missing.encode(): None}
        data = movie.build()
    else:
        data = movie.build()
        target = find(data, missing.encode())  # the audio track's comes first
        # Keep sizes right: rename the box instead of removing it, so only its absence is tested.
        data = data[:target.offset + 4] + b"skip" + data[target.offset + 8:]
    assert_refused(data, match="no " if missing in ("mvhd", "moov", "stsd") else None)


def test_missing_ftyp_is_fine():
    """QuickTime files may start with moov (or wide/free): ftyp is optional."""
    movie = Movie()
    data = movie.build()[len(ftyp()):]
    fixed = Movie()
    fixed_data = fixed.build()
    # Rebuild offsets for a file without ftyp: shift every audio chunk offset back by len(ftyp).
    moov = find(fixed_data, b"moov")
    moov_bytes = bytearray(fixed_data[moov.offset:moov.end])
    for table in [b for b in fz.mp4_boxes(bytes(moov_bytes)) if b.type == b"stco"]:
        count = struct.unpack_from(">I", moov_bytes, table.payload + 4)[0]
        for index in range(count):
            at = table.payload + 8 + 4 * index
            struct.pack_into(">I", moov_bytes, at, struct.unpack_from(">I", moov_bytes, at)[0] - len(ftyp()))
    data = bytes(moov_bytes) + fixed_data[moov.end:]
    assert_accepted(data, fixed.audio())


def test_an_audio_track_without_samples():
    """Decided: a track with no samples and no fragments (no mvex) has nothing to play: 404, not an empty 200."""
    movie = Movie(chunks=0, video=False)
    with pytest.raises(NoAudioTrack, match="no samples"):
        plan_source(Container.MP4, FileSource(io.BytesIO(movie.build())), Limits(), Selection())


# -- times and identities -----------------------------------------------------------------------


def test_zero_timescale_is_copied_for_a_plain_rendition():
    """Decided: timescale 0 is not an error for a plain rendition.

    The rendition never divides by it (durations are copied, not computed), so the
    output is exactly as playable as the source. Clipping (start/end) must convert
    times and refuses it (next test).
    """
    movie = Movie(audio_mdhd=mdhd(timescale=0), movie_header=mvhd(timescale=0))
    rendition = assert_accepted(movie.build(), movie.audio())
    assert find(rendition, b"mdhd") and struct.unpack_from(">I", rendition, find(rendition, b"mdhd").payload + 12)[0] \
        == 0


def test_zero_timescale_when_clipping():
    pytest.importorskip("audio_middleware.mp4.clip", reason="MP4 clipping is not there yet")
    movie = Movie(audio_mdhd=mdhd(timescale=0), movie_header=mvhd(timescale=0))
    outcome = fz.plan_and_emit(movie.build(), "file", Container.MP4, Limits(), Selection(None, 0.5, 1.0))
    assert isinstance(outcome.error, AudioExtractionError)


def test_track_id_at_the_32_bit_maximum():
    movie = Movie(audio_id=0xFFFFFFFF)
    outcome = fz.plan_and_emit(movie.build(), "file", Container.MP4, Limits())
    assert outcome.ok or isinstance(outcome.error, AudioExtractionError)


def test_track_id_zero_is_accepted():
    """track_ID 0 is reserved by the spec but harmless to copy."""
    movie = Movie(audio_id=0)
    assert_accepted(movie.build(), movie.audio())


def test_audio_handler_on_a_track_without_audio_tables():
    """A 'soun' handler on a track whose stbl holds only stsd: refused (it has no sample tables)."""
    movie = Movie(stbl={b"stsz": None, b"stsc": None, b"stco": None})
    assert_refused(movie.build())


# -- fragmented MP4 -----------------------------------------------------------------------------


def test_fragmented_builder_is_accepted():
    data = fragmented([[[4, 4], [4]], [[8]]])
    rendition = assert_accepted(data)
    assert find(rendition, b"moof")


FILE_ONLY = dict(sources=("file",), middleware=("file",))


@pytest.mark.parametrize("claim", [3, 0x10000, 0xFFFFFFFF])
def test_trun_sample_count_larger_than_the_box(claim):
    data = fragmented([[[4, 4]]])
    data = patch(data, find(data, b"trun").payload + 4, ">I", claim)
    error = LimitExceeded if claim > Limits().max_table_entries else MalformedMedia
    assert_refused(data, error, **FILE_ONLY)
    assert_stream_aborts(data, error)


@pytest.mark.parametrize("data_offset", [-10_000, 1_000_000], ids=["before-the-file", "past-the-end"])
def test_trun_data_offset_outside_the_file(data_offset):
    data = fragmented([[[4, 4]]])
    data = patch(data, find(data, b"trun").payload + 8, ">i", data_offset)
    assert_refused(data, **FILE_ONLY)
    assert_stream_aborts(data)


def test_tfhd_too_short_for_its_flags():
    data = fragmented([[[4]]])
    data = patch(data, find(data, b"tfhd").payload, ">I", 0x02003B)  # claims 5 optional fields it does not hold
    assert_refused(data, **FILE_ONLY)
    assert_stream_aborts(data)


def test_moof_size_limit():
    data = fragmented([[[4]]])
    assert_refused(data, LimitExceeded, limits=Limits(max_moof_size=16), **FILE_ONLY)
    assert_stream_aborts(data, LimitExceeded, limits=Limits(max_moof_size=16))


def test_encrypted_fragments_are_unsupported():
    data = fragmented([[[4]]], traf_extra=[full_box(b"saio", struct.pack(">II", 1, 0))])
    assert_refused(data, UnsupportedMedia, **FILE_ONLY)
    assert_stream_aborts(data, UnsupportedMedia)


def test_compressed_movie_header_is_unsupported():
    data = ftyp() + box(b"moov", box(b"cmov", box(b"dcom", b"zlib"))) + box(b"mdat", b"x" * 32)
    assert_refused(data, UnsupportedMedia)


def test_fragment_runs_beyond_2_gib_on_a_body_of_unknown_length():
    head = ftyp() + Movie(chunks=0, video=False, mvex=True).moov([], [])

    def moof(offset):
        traf = box(b"traf", tfhd(1), trun([0xF0000000], offset), trun([4]))
        return box(b"moof", full_box(b"mfhd", struct.pack(">I", 1)), traf)

    data = head + moof(len(moof(0)) + 8) + box(b"mdat", b"x" * 64)
    outcome = fz.plan_and_emit(data, "stream-nolength", Container.MP4, Limits())
    assert isinstance(outcome.error, AudioExtractionError)


def _planning_seconds(data: bytes) -> float:
    """CPU seconds (not wall-clock: a loaded CI machine must not make the ratio lie)."""
    started = time.process_time()
    plan_source(Container.MP4, FileSource(io.BytesIO(data)), Limits())
    return time.process_time() - started


def assert_linear(small: bytes, large: bytes) -> None:
    """Planning 4x the chunks costs about 4x the time, not 16x (or is too fast to matter: < 0.25 s)."""
    _planning_seconds(small)  # warm up
    fast = min(_planning_seconds(small) for _ in range(2))
    slow = min(_planning_seconds(large) for _ in range(2))
    assert slow < 0.25 or slow / fast < 8, f"4x the chunks took {slow / fast:.1f}x the time ({slow:.2f} s)"


def test_partially_fragmented_planning_is_linear_in_the_chunk_count():
    assert_linear(Movie(chunks=30_000, per_chunk=1, sample_size=1, video_size=1, mvex=True).build(),
                  Movie(chunks=120_000, per_chunk=1, sample_size=1, video_size=1, mvex=True).build())


def test_progressive_planning_is_linear_in_the_chunk_count():
    assert_linear(Movie(chunks=20_000, per_chunk=1, sample_size=1, video_size=1).build(),
                  Movie(chunks=80_000, per_chunk=1, sample_size=1, video_size=1).build())


def test_memory_is_bounded_by_the_moov_size():
    """Worst case measured: the plan of a table-heavy moov needs about 10x the moov's bytes.

    docs/hardening.md gives this factor so that max_moov_size can be chosen as a
    memory bound; this test keeps it from creeping up (bound: 16x).
    """
    data = Movie(chunks=100_000, per_chunk=1, sample_size=1, video_size=1).build()
    moov = find(data, b"moov").size
    tracemalloc.start()
    try:
        plan = plan_source(Container.MP4, FileSource(io.BytesIO(data)), Limits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert plan.length > 100_000
    assert peak < 16 * moov, f"planning a {moov}-byte moov peaked at {peak} bytes ({peak / moov:.1f}x)"


# -- FLV ----------------------------------------------------------------------------------------


def test_flv_data_size_larger_than_the_rest_of_an_audio_tag():
    tags = interleaved(3)
    data = flv_file(*tags, flv_tag(8, mp3_frame(9), 500, data_size=5000))
    assert_refused(data, **FILE_ONLY)
    assert_stream_aborts(data, SourceTruncated)


def test_flv_first_audio_tag_truncated_is_an_error_before_the_body():
    data = flv_file(flv_tag(9, video_frame(0)), flv_tag(8, mp3_frame(0), data_size=5000))
    assert_refused(data)


def test_flv_data_size_larger_than_the_rest_of_a_video_tag():
    """A truncated video tag at the end: nothing to copy from it, the audio is complete."""
    tags = interleaved(3)
    data = flv_file(*tags, flv_tag(9, video_frame(9), 500, data_size=0xFFFFFF))
    assert_accepted(data)


@pytest.mark.parametrize("previous", [0, 1, 0xFFFFFFFF])
def test_flv_bad_previous_tag_size_is_tolerated_and_copied(previous):
    """Navigation uses DataSize only; a bad back-pointer is copied as it is, never followed."""
    tags = interleaved(4)
    tags[3] = flv_tag(8, mp3_frame(1), 26, previous=previous)
    tags[4] = flv_tag(9, video_frame(2), 80, previous=previous)
    data = flv_file(*tags)
    rendition = assert_accepted(data)
    assert tags[3] in rendition


@pytest.mark.parametrize("kind", [0, 7, 10, 17, 31])
def test_flv_unknown_tag_types_are_dropped(kind):
    tags = interleaved(3)
    tags.insert(2, flv_tag(kind, b"whatever" * 4))
    rendition = assert_accepted(flv_file(*tags))
    assert b"whatever" not in rendition
    assert rendition == plan_bytes(flv_file(*interleaved(3)))


def test_flv_encrypted_audio_is_unsupported():
    tags = interleaved(3)
    tags[1] = flv_tag(8 | 0x20, mp3_frame(0))
    assert_refused(flv_file(*tags), UnsupportedMedia)


def test_flv_filter_bit_on_video_and_script_tags():
    """A filtered video tag is dropped like any video; a filtered script tag is never decoded as onMetaData.

    (Its body is encrypted: here it is not even valid AMF0, and nothing fails.)
    """
    tags = interleaved(3)
    tags[0] = flv_tag(9 | 0x20, video_frame(0))
    encrypted = flv_tag(18 | 0x20, amf_string("onMetaData") + b"\xff\xfe\xfd")
    rendition = assert_accepted(flv_file(*tags[:3], encrypted, *tags[3:]))
    assert video_frame(0) not in rendition


def test_flv_reserved_bits_of_the_tag_type_are_ignored():
    tags = interleaved(3)
    tags[1] = flv_tag(8 | 0xC0, mp3_frame(0))
    rendition = assert_accepted(flv_file(*tags))
    assert tags[1] in rendition


def nested_metadata(depth: int, marker: bytes = b"\x0a") -> bytes:
    """onMetaData whose value is ``depth`` strict arrays (or objects) nested in one another."""
    if marker == b"\x0a":
        value = b"".join(b"\x0a" + struct.pack(">I", 1) for _ in range(depth)) + b"\x05"
    else:
        value = b"".join(b"\x03\x00\x01k" for _ in range(depth)) + b"\x05" + b"\x00\x00\x09" * depth
    return amf_string("onMetaData") + value


@pytest.mark.parametrize("marker", [b"\x0a", b"\x03"], ids=["strict-array", "object"])
def test_amf0_nesting_deeper_than_the_limit(marker):
    assert_refused(flv_file(*interleaved(2), script=nested_metadata(33, marker)), LimitExceeded)
    assert_accepted(flv_file(*interleaved(2), script=nested_metadata(32, marker)))


def test_amf0_nesting_far_deeper_than_the_interpreter_allows():
    """1 000 000 nested arrays: refused at max_amf_depth, never a RecursionError."""
    assert_refused(flv_file(*interleaved(2), script=nested_metadata(1_000_000)), LimitExceeded)


@pytest.mark.parametrize("value", [
    b"\x02\xff\xff" + b"abc",                       # string claims 65535 bytes
    b"\x0c\xff\xff\xff\xff" + b"abc",               # long string claims 4 GiB
    b"\x0f\x7f\xff\xff\xff" + b"abc",               # XML document claims 2 GiB
    b"\x0a\xff\xff\xff\xff\x05",                    # strict array claims 4 billion elements
    b"\x03\xff\xffkey",                             # object property name claims 65535 bytes
    b"\x10\xff\xff",                                # typed object class name claims 65535 bytes
    b"\x04", b"\x0e", b"\x11", b"\xff",             # reserved / AMF3 / unknown markers
], ids=["string", "long-string", "xml", "strict-array", "key", "class-name", "movieclip", "recordset", "amf3",
        "unknown"])
def test_amf0_lengths_and_markers_are_checked(value):
    script = amf_string("onMetaData") + value
    assert_refused(flv_file(*interleaved(2), script=script))


def test_amf0_ecma_array_count_is_advisory():
    """The ECMA array count is often wrong in real files: never trusted, never used to allocate."""
    body = amf_string("onMetaData") + b"\x08" + struct.pack(">I", 0xFFFFFFFF) + b"\x00\x03dur" + amf_number(1.0) \
        + b"\x00\x00\x09"
    assert_accepted(flv_file(*interleaved(2), script=body))


@pytest.mark.parametrize("header", [flv_header(data_offset=8), flv_header(data_offset=2 * 1024 * 1024)],
                         ids=["below-9", "above-1MiB"])
def test_flv_data_offset_out_of_range(header):
    assert_refused(flv_file(*interleaved(2), header=header[:13]))


def test_flv_version_other_than_1():
    """Sniffed as FLV by its signature; the planner says unsupported: a 501, as docs/hardening.md says."""
    data = flv_file(*interleaved(2), header=flv_header(version=2))
    for source in ("file", "stream"):
        assert isinstance(fz.plan_and_emit(data, source, Container.FLV, Limits()).error, UnsupportedMedia)
    response = fz.check_middleware(data, sources=("file", "generator"), oracle=False)
    assert all(r.status.startswith("501") for r in response.values())


def test_flv_script_tag_larger_than_the_limit():
    assert_refused(flv_file(*interleaved(2), script=metadata(pad=amf_string("x" * 4000))), LimitExceeded,
                   limits=Limits(max_script_size=1024))


def test_flv_without_audio_in_the_probe_window():
    """A stream whose first audio tag is beyond flv_probe_bytes: 404 before any body byte."""
    tags = [flv_tag(9, video_frame(i), i * 40) for i in range(40)] + interleaved(2)
    data = flv_file(*tags)
    outcome = fz.plan_and_emit(data, "stream", Container.FLV, Limits(flv_probe_bytes=512))
    assert isinstance(outcome.error, NoAudioTrack) and outcome.phase == "plan"
    responses = fz.check_middleware(data, sources=("generator",), limits=Limits(flv_probe_bytes=512), oracle=False)
    assert responses["generator"].status.startswith("404")


def test_flv_trailing_garbage_shorter_than_a_tag_header():
    data = flv_file(*interleaved(3))
    assert plan_bytes(data + b"\x01\x02\x03") == plan_bytes(data)


def test_truncated_flv_stream_at_a_tag_boundary(tmp_path):
    """The upstream says Content-Length N and sends fewer bytes, ending exactly between two tags."""
    data = flv_file(*interleaved(6))
    cut = fz.flv_tags(data)[5].offset
    path = tmp_path / "cut.flv"
    path.write_bytes(data)
    upstream = GeneratorApp(path, "video/x-flv", truncate_at=cut)
    outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream))
    assert fz.check_response(outcome, data, forward_only=True) in ("aborted", "error")


def test_truncated_fragmented_stream_at_a_fragment_boundary(tmp_path):
    data = fragmented([[[4, 4]], [[8]], [[4]]])
    cut = find(data, b"moof", 1).offset
    path = tmp_path / "cut.mp4"
    path.write_bytes(data)
    upstream = GeneratorApp(path, "video/mp4", truncate_at=cut)
    outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream))
    assert fz.check_response(outcome, data, forward_only=True) in ("aborted", "error")


def test_truncated_progressive_stream_aborts(tmp_path, media):
    """Control: a progressive MP4 cut anywhere after moov aborts (its spans know their bytes)."""
    path = media("mp4_faststart")
    data = path.read_bytes()
    for cut in (find(data, b"mdat").offset + 100, len(data) // 2, len(data) - 1):
        upstream = GeneratorApp(path, "video/mp4", truncate_at=cut)
        outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream))
        assert fz.check_response(outcome, data, forward_only=True) == "aborted"
        assert upstream.closes == upstream.bodies == 1


def test_flv_without_any_tag():
    assert_refused(flv_header(), NoAudioTrack)


# -- upstream responses and requests that are themselves hostile --------------------------------


def test_track_selector_that_looks_like_a_digit(media):
    """?audio_track=² (U+00B2): str.isdigit() accepts it, int() does not."""
    from .apps import FileApp

    outcome = fz.call_wsgi(AudioOnlyMiddleware(FileApp(media("mp4_faststart"))),
                           "ali_audio_only=1&audio_track=%C2%B2")
    assert outcome.status.startswith("404")


def test_upstream_content_length_that_looks_like_a_digit(media):
    data = media("mp4_faststart").read_bytes()
    app = StaticApp("200 OK", [("Content-Type", "video/mp4"), ("Content-Length", "\u00b2")], data)
    outcome = fz.call_wsgi(AudioOnlyMiddleware(app))
    assert fz.check_response(outcome, data, forward_only=True) in ("audio", "error")


@pytest.mark.parametrize("value", ["-5", "1e3", "99999999999999999999", " 12", ""])
def test_upstream_content_length_garbage(media, value):
    """A wrong or absurd upstream Content-Length: never a crash, never a wrong Content-Length of ours."""
    data = media("mp4_faststart").read_bytes()
    app = StaticApp("200 OK", [("Content-Type", "video/mp4"), ("Content-Length", value)], data)
    outcome = fz.call_wsgi(AudioOnlyMiddleware(app))
    verdict = fz.check_response(outcome, data, forward_only=True)
    if verdict == "audio":
        fz.check_content(data, outcome.output, Container.MP4)
    assert app.closes == app.bodies == 1


@pytest.mark.parametrize("query", ["start=nan", "start=inf", "end=-1", "start=3&end=2", "start=1e400",
                                   "audio_track=0", "audio_track=99999999999999999999", "audio_track=%00",
                                   "audio_track=" + "x" * 200, "start=%FF%FE"])
def test_hostile_query_parameters(media, query):
    """Bad request parameters are a 4xx with a reason, whatever they hold."""
    from .apps import FileApp

    upstream = FileApp(media("mp4_faststart"))
    outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream), "ali_audio_only=1&" + query)
    assert fz.check_response(outcome, b"", forward_only=False) == "error"
    assert 400 <= int(outcome.status[:3]) < 500, outcome.status
    assert upstream.closes == upstream.bodies


@pytest.mark.parametrize("query", ["audio_track=" + "x" * 5000, "start=" + "9" * 5000], ids=["track", "start"])
def test_error_reasons_stay_short_whatever_the_request(media, query):
    from .apps import FileApp

    outcome = fz.call_wsgi(AudioOnlyMiddleware(FileApp(media("mp4_faststart"))), "ali_audio_only=1&" + query)
    assert fz.check_response(outcome, b"", forward_only=False) == "error"


# ================================================================================================
# 3. limits
# ================================================================================================


def test_moov_size_limit():
    movie = Movie()
    data = movie.build()
    moov = find(data, b"moov").size
    assert_refused(data, LimitExceeded, limits=Limits(max_moov_size=moov - 1))
    assert_accepted(data, movie.audio(), limits=Limits(max_moov_size=moov))


def test_track_count_limit():
    movie = Movie()
    assert_refused(movie.build(), LimitExceeded, limits=Limits(max_tracks=1))
    assert_accepted(movie.build(), movie.audio(), limits=Limits(max_tracks=2))


def test_top_level_box_count_limit():
    """A file of 10 000 'free' boxes before moov: the walk gives up instead of reading them all."""
    movie = Movie(moov_first=False)
    data = movie.build()
    mdat = find(data, b"mdat")
    junk = box(b"free") * 10_000
    assert_refused(data[:mdat.offset] + junk + data[mdat.offset:], MalformedMedia,
                   limits=Limits(max_top_level_boxes=100), sources=("file",))


def test_spool_limit_for_a_forward_only_body_with_moov_at_the_end(media):
    """A moov-at-end stream is spooled up to spool_limit; beyond it, it is read twice only when that is safe
    (a validator to check the second read against), else 502."""
    path = media("mp4_moov_end")
    upstream = GeneratorApp(path, "video/mp4", etag=None, last_modified=None)
    outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream, spool_limit=path.stat().st_size - 1))
    assert outcome.status.startswith("502") and b"spool_limit" in outcome.output
    assert upstream.closes == upstream.bodies == 1
    upstream = GeneratorApp(path, "video/mp4")
    outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream, spool_limit=path.stat().st_size - 1))
    assert outcome.status.startswith("200") and upstream.closes == upstream.bodies == 2
    media_toolkit.assert_audio_identical(path, outcome.output)
    upstream = GeneratorApp(path, "video/mp4")
    outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream, spool_limit=path.stat().st_size))
    assert outcome.status.startswith("200")
    media_toolkit.assert_audio_identical(path, outcome.output)


def test_default_limits_are_documented():
    """docs/hardening.md lists every limit with its default; a new limit must be documented there."""
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "hardening.md").read_text()
    for name in Limits().__dict__:
        assert f"`{name}`" in doc, f"Limits.{name} is not documented in docs/hardening.md"
    assert math.isfinite(Limits().max_moov_size)


def test_lazy_flv_plan_reads_in_step_with_streaming():
    """A LazyPlan never reads a tag header before the previous span was streamed (forward-only sources)."""
    data = flv_file(*interleaved(20))
    source = SequentialSource([data[i:i + 7] for i in range(0, len(data), 7)], len(data), retain=False)
    plan = plan_source(Container.FLV, source, Limits())
    assert isinstance(plan, LazyPlan)
    assert b"".join(iter_plan_bytes(plan.pieces, source)) == plan_bytes(data, "stream")


def test_planner_errors_are_only_ours_or_needs_random_access():
    """The contract of plan_source itself, on a forward-only source: NeedsRandomAccess is its one signal."""
    data = Movie(moov_first=False).build()
    with pytest.raises(NeedsRandomAccess):
        plan_source(Container.MP4, SequentialSource([data], len(data)), Limits())



def test_an_audio_track_without_samples_is_404_not_an_empty_success(tmp_path):
    """E.g. audio that lives only in moofs of a movie without mvex: no 200 with nothing to play."""
    from webtest import TestApp

    from .apps import FileApp

    path = tmp_path / "empty_audio.mp4"
    path.write_bytes(Movie(chunks=0).build())
    response = TestApp(AudioOnlyMiddleware(FileApp(path))).get("/v.mp4?ali_audio_only=1", status=404)
    assert "no samples" in response.text


# -- found by review (each failed before its fix) ------------------------------------------------


@pytest.mark.parametrize("offset", [2**63 - 8, 2**64 - 16])
def test_a_co64_offset_no_file_reaches_is_refused(offset):
    """As int64 the offset wraps: offset + size passed the end-of-file check (200, then an aborted body)."""
    movie = Movie(chunks=4, per_chunk=2, sample_size=4)
    movie.stbl = {b"stco": lambda default, real: stco([offset, *real[1:]], wide=True)}
    data = movie.build()
    assert_refused(data, match="co64")
    with pytest.raises(MalformedMedia, match="co64"):  # the clip path too (it packed the offsets: OverflowError)
        plan_source(Container.MP4, FileSource(io.BytesIO(data)), Limits(), Selection(start=0.0002))


def test_overlapping_chunks_with_an_empty_chunk_between_them_are_refused():
    movie = Movie(chunks=4, per_chunk=2, sample_size=1000)
    movie.stbl = {b"stsc": stsc([(1, 2, 1), (2, 0, 1), (3, 2, 1)]),
                  b"stco": lambda default, real: stco([real[0], real[0] + 2, real[0] + 4, real[3]])}
    assert_refused(movie.build(), match="overlap")


def test_a_fragment_run_past_the_end_of_the_file_is_refused_when_it_is_not_the_last_run():
    head = ftyp() + Movie(chunks=0, video=False, mvex=True).moov([], [])

    def moof(first, second):
        traf = box(b"traf", tfhd(1), trun([1_000_000_000], first), trun([], second))
        return box(b"moof", full_box(b"mfhd", struct.pack(">I", 1)), traf)

    size = len(moof(0, 0))
    data = head + moof(size + 8, size + 9) + box(b"mdat", bytes(range(1, 65)))
    assert_refused(data, match="past the end", sources=("file",), middleware=("file",))


def test_clipped_durations_that_need_more_than_64_bits_are_refused():
    movie = Movie(chunks=4, per_chunk=2, sample_size=4, movie_header=mvhd(timescale=0xFFFFFFFF),
                  audio_mdhd=mdhd(timescale=1))
    movie.stbl = {b"stts": stts([(8, 0xFFFFFFFF)])}
    data = movie.build()
    assert_accepted(data)  # without a window the file is fine
    for source in (FileSource(io.BytesIO(data)), SequentialSource(iter([data]), len(data))):
        with pytest.raises(MalformedMedia, match="64-bit"):  # struct.error before
            plan_source(Container.MP4, source, Limits(), Selection(start=1.0))
    status = fz.call_wsgi(AudioOnlyMiddleware(StaticApp("200 OK", [("Content-Type", "video/mp4")], data)),
                          "ali_audio_only=1&start=1").status
    assert status.startswith("502")


def test_a_moov_of_many_tiny_boxes_is_refused_and_unchanged_boxes_are_one_piece_per_run():
    crowded = Movie(chunks=4, per_chunk=2, sample_size=4, extra_moov=[box(b"free")] * 300)
    assert_refused(crowded.build(), LimitExceeded, match="boxes", limits=Limits(max_moov_boxes=200))
    plan = plan_source(Container.MP4, FileSource(io.BytesIO(crowded.build())), Limits())
    assert len(plan.pieces) < 30  # 300 kept boxes in a row are one view, not 300 pieces (memory)


def test_rewriting_a_moov_is_linear_in_its_boxes_times_its_dropped_tracks():
    """Finding whether an edit lies inside a box scanned every edit (one per dropped track) for every box."""
    def movie(boxes: int, tracks: int) -> bytes:
        traks = [box(b"trak", tkhd(10 + i), box(b"mdia", mdhd(25, 25), hdlr(b"vide"))) for i in range(tracks)]
        return Movie(chunks=4, per_chunk=2, sample_size=4, extra_moov=traks + [box(b"free")] * boxes).build()

    assert_linear(movie(3000, 200), movie(12000, 800))


def test_a_csgp_with_more_patterns_than_the_limit_is_refused_when_clipping():
    patterns = 70_000  # 4-bit fields: (length 0, count 0) patterns, one byte each
    csgp = full_box(b"csgp", b"roll", struct.pack(">I", patterns), bytes(patterns))
    data = Movie(chunks=4, per_chunk=2, sample_size=4, extra_stbl=[csgp]).build()
    with pytest.raises(LimitExceeded, match="csgp"):
        plan_source(Container.MP4, FileSource(io.BytesIO(data)), Limits(), Selection(start=0.0002))
