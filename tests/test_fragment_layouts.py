"""Fragmented MP4 layouts, plan recording and trun sizes: each test fails without its fix.

- A partially fragmented movie whose moov-described samples lie after some fragments: the new
  moov puts those samples right after its mdat header, so they must go out there (they went out
  in source order, after the fragments: a moof where the first audio sample should be).
  On a forward-only body that layout is refused (before the first byte when it can be seen
  then, so that a Range-capable app is read with Range), and so is a moov pointing before its own end.
- The recorder of a lazy plan counts what it holds as the plan cache will count it (it counted
  only the spans since the last literal: a fragmented stream grew to several times its bound).
- A trun's sample sizes are summed in place (unpacked to Python ints, a moof within
  max_moof_size took 9 times its size in memory).

The oracle is PyAV: the audio packets of every output equal the source's.
"""

from __future__ import annotations

import pathlib
import struct
import tracemalloc
from array import array

import pytest

from audio_middleware import AudioOnlyMiddleware
from audio_middleware.cache import PlanCache
from audio_middleware.errors import AudioExtractionError
from audio_middleware.limits import Limits
from audio_middleware.mp4.fragments import Fragment
from audio_middleware.plan import LazyPlan, Literal, Span, Spans
from audio_middleware.record import recording

from .apps import FileApp, GeneratorApp, RangeApp, call
from .conftest import media_toolkit as M

STCO_PATH = "moov/trak/mdia/minf/stbl/stco"


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A partially fragmented movie made by PyAV: the first second's samples in the moov and its mdat,
    the rest in moof/mdat pairs (default-base-is-moof, so fragments may move)."""
    path = tmp_path_factory.mktemp("fragment_layouts") / "partial.mp4"
    M._encode(M.KindInfo(".mp4", "mp4", M._V264, (M._A,), "frag_keyframe+default_base_moof", "fragmented"), path)
    return path.read_bytes()


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", len(payload) + 8, kind) + payload


def _moov_data_moved(data: bytes, keep: float) -> bytes:
    """``data`` with the moov-described samples after the first ``keep`` of its mdat moved to a second
    mdat at the end of the file, after every fragment (chunk offsets patched; ISO BMFF allows any
    placement of the data a moov's chunk offsets point to)."""
    top = M.top_level_boxes(data)
    mdat = next(box for box in top if box.type == "mdat")
    chunks = sorted({offset for stco in M.find_boxes(data, STCO_PATH)
                     for offset in struct.unpack_from(f">{_count(data, stco)}I", data, stco.payload_offset + 8)})
    cut = chunks[int(len(chunks) * keep)]  # a chunk's start: no chunk straddles it
    front = data[:mdat.offset] + (_box(b"mdat", data[mdat.payload_offset:cut]) if cut > mdat.payload_offset else b"")
    fragments = b"".join(data[box.offset:box.end] for box in top if box.offset > mdat.offset)
    out = bytearray(front + fragments + _box(b"mdat", data[cut:mdat.end]))
    delta = len(front) + len(fragments) + 8 - cut
    for stco in M.find_boxes(bytes(out), STCO_PATH):
        for index in range(_count(out, stco)):
            at = stco.payload_offset + 8 + 4 * index
            value = struct.unpack_from(">I", out, at)[0]
            if value >= cut:
                struct.pack_into(">I", out, at, value + delta)
    return bytes(out)


def _count(data: bytes | bytearray, stco: M.Box) -> int:
    return struct.unpack_from(">I", data, stco.payload_offset + 4)[0]


@pytest.fixture(scope="module", params=[0.0, 0.5], ids=["all_after", "half_after"])
def moved(request, partial: bytes, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    data = _moov_data_moved(partial, request.param)
    assert M.audio_packets(data) == M.audio_packets(partial)  # the builder kept the movie the same
    path = tmp_path_factory.mktemp("moved") / "moved.mp4"
    path.write_bytes(data)
    return path


def _answer(app_class, path: pathlib.Path, **environ) -> tuple[str, bytes | None]:
    """(status, body), body None when the answer was aborted while streaming."""
    try:
        status, _, body = call(AudioOnlyMiddleware(app_class(path, "video/mp4")), **environ)
    except AudioExtractionError:  # raised while streaming: the server aborts the answer
        return "aborted", None
    return status, body


def test_moov_described_audio_after_fragments_goes_right_after_the_new_moov(moved: pathlib.Path, tmp_path):
    status, body = _answer(FileApp, moved)
    assert status == "200 OK"
    M.assert_audio_identical(moved, body)
    again = tmp_path / "again.mp4"
    again.write_bytes(body)
    assert _answer(FileApp, again) == ("200 OK", body)  # a rendition of a rendition is itself
    size = len(body)
    for first, last in ((0, size // 3), (size // 3, size - 1), (size - 700, size - 1)):
        assert _answer(FileApp, moved, HTTP_RANGE=f"bytes={first}-{last}") == ("206 Partial Content",
                                                                              body[first:last + 1])


@pytest.mark.parametrize("app_class", [GeneratorApp, RangeApp])
def test_a_forward_only_body_never_gets_a_wrong_rendition_of_that_layout(moved: pathlib.Path, app_class):
    """Streamed in one pass, the samples cannot be put back in front: an error (before the first byte when
    the first of them already lies after a fragment, so a Range-capable app is read with Range), never a
    complete-looking file whose first audio bytes are a moof."""
    status, body = _answer(app_class, moved)
    if status == "200 OK":
        M.assert_audio_identical(moved, body)
    else:
        assert status == "aborted" or status.startswith("5")
    if app_class is RangeApp and M.top_level_boxes(moved)[2].type == "moof":
        assert status == "200 OK"  # all of them after the fragments: found before answering, read with Range


def test_a_generator_app_gets_a_clear_refusal_for_that_layout(partial: bytes, tmp_path):
    """All of them after the fragments: the planner finds it before the first byte, once the body went past
    the moov; it cannot be spooled any more (it was 'cannot spool a body that was partly consumed', a 502)."""
    path = tmp_path / "all_after.mp4"
    path.write_bytes(_moov_data_moved(partial, 0.0))
    assert M.top_level_boxes(path.read_bytes())[2].type == "moof"
    status, headers, body = call(AudioOnlyMiddleware(GeneratorApp(path, "video/mp4")))
    assert status.startswith("501")
    assert b"read past its start" in body and b"honours Range" in body


def _audio_stco(data: bytes) -> M.Box:
    """The chunk offsets of the movie's one audio track (its handler is 'soun')."""
    found = []
    for trak in M.find_boxes(data, "moov/trak"):
        mdia = next(box for box in M.iter_boxes(data, trak.payload_offset, trak.end) if box.type == "mdia")
        hdlr = next(box for box in M.iter_boxes(data, mdia.payload_offset, mdia.end) if box.type == "hdlr")
        if data[hdlr.payload_offset + 8:hdlr.payload_offset + 12] == b"soun":
            found += [stco for stco in M.find_boxes(data, STCO_PATH) if trak.offset < stco.offset < trak.end]
    (stco,) = found
    return stco


def test_a_stream_whose_moov_points_before_its_own_end_fails_before_the_first_byte(partial: bytes, tmp_path):
    data = bytearray(partial)
    struct.pack_into(">I", data, _audio_stco(partial).payload_offset + 8, 0)  # first audio chunk in the ftyp
    path = tmp_path / "hostile.mp4"
    path.write_bytes(bytes(data))
    status, body = _answer(GeneratorApp, path)
    assert status.startswith("502") and body is not None


def _pieces() -> list:
    """A fragmented stream's lazy pieces: ftyp and moov views of one buffer, then moof + mdat literal
    and one audio span per fragment."""
    head = bytes(range(256)) * 8
    pieces = [Literal(memoryview(head)[:100]), Literal(memoryview(head)[100:]), Spans([5000, 6000], [10, 20])]
    for index in range(300):
        pieces += [Literal(bytes([index % 256]) * 120), Span(10_000 + 1000 * index, 400)]
    return pieces


def _record(bound: int):
    kept = []
    for _ in recording(LazyPlan(iter(_pieces()), "audio/mp4"), bound, kept.append):
        pass
    return kept[0] if kept else None


def test_the_recorder_keeps_a_plan_exactly_when_the_cache_would():
    whole = _record(1 << 30)
    assert whole is not None
    for bound in (whole.footprint, whole.footprint - 1, whole.footprint // 2):
        cache = PlanCache(max_entries=8, max_bytes=bound)
        cache.put("whole", whole)
        plan = _record(bound)
        assert (plan is not None) == (len(cache) == 1), f"bound {bound}, footprint {whole.footprint}"
        if plan is not None:
            assert plan.length == whole.length and plan.footprint <= bound


def _moof_with_sizes(sizes: array) -> bytes:
    """A moof whose one traf (track 1, default-base-is-moof) has a trun of data offset and sizes."""
    raw = array("I", sizes)
    raw.byteswap()
    trun = _box(b"trun", struct.pack(">IIi", 0x000201, len(sizes), 0) + raw.tobytes())
    tfhd = _box(b"tfhd", struct.pack(">II", 0x020000, 1))
    return _box(b"moof", _box(b"mfhd", struct.pack(">II", 0, 1)) + _box(b"traf", tfhd + trun))


def test_a_moof_of_a_million_sample_sizes_is_summed_in_place():
    sizes = array("I", range(1000, 1000 + 1_000_000))
    moof = _moof_with_sizes(sizes)
    tracemalloc.start()
    try:
        fragment = Fragment(moof, 0, {1}, {}, Limits())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fragment.payload == sum(sizes)
    assert peak < len(moof), f"planning a {len(moof)}-byte moof peaked at {peak} bytes"
