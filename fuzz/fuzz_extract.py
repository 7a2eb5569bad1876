"""Fuzz the container planners and the middleware with mutated media.

Usage (from the repository root)::

    python fuzz/fuzz_extract.py                         # 60 s over the default corpus
    python fuzz/fuzz_extract.py /path/to/media --seconds 600 --seed 7
    python fuzz/fuzz_extract.py --middleware --seconds 300   # also through the WSGI middleware + PyAV oracle
    python fuzz/fuzz_extract.py --atheris -- -max_total_time=600   # coverage-guided, if atheris is installed

The default corpus is every kind made by ``tests/media.py`` (PyAV, cached in
``$TMPDIR/audio-middleware-fuzz-media``), every file of ``/work/shared/media``
(or ``$AUDIO_MIDDLEWARE_SHARED_MEDIA``) when present, and the regression inputs
in ``tests/regressions/``. Each iteration applies 1-4 structure-aware
mutations (see :func:`apply`) and runs :func:`check_planners` (and, with
``--middleware``, :func:`check_middleware`). Any broken guarantee
(:class:`Finding`: an exception outside the package's hierarchy, a hang, a
plan that lies about its bytes, a wrong close count, too much memory) is
written to ``tests/regressions/found-<kind>-<hash>.<ext>`` with a note next to it,
and ``tests/test_regressions.py`` replays it from then on.

This module is also the oracle the test-suite uses (``tests/test_hostile.py``
draws the same mutations with hypothesis, ``tests/test_regressions.py`` replays
the saved inputs), so a guarantee is written down exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import itertools
import os
import pathlib
import random
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the package and tests importable
    sys.path.insert(0, str(ROOT))

from audio_middleware import AudioOnlyMiddleware  # noqa: E402
from audio_middleware.emit import iter_plan_bytes  # noqa: E402
from audio_middleware.errors import AudioExtractionError, NeedsRandomAccess  # noqa: E402
from audio_middleware.extract import Selection, plan_source  # noqa: E402
from audio_middleware.limits import Limits  # noqa: E402
from audio_middleware.plan import LazyPlan, Literal, Plan, Span  # noqa: E402
from audio_middleware.sniff import Container, by_signature  # noqa: E402
from audio_middleware.sources import FileSource, SequentialSource, spool  # noqa: E402

REGRESSIONS = ROOT / "tests" / "regressions"
SHARED_MEDIA = pathlib.Path(os.environ.get("AUDIO_MIDDLEWARE_SHARED_MEDIA", ROOT.parent / "shared" / "media"))
MEDIA_CACHE = pathlib.Path(tempfile.gettempdir()) / "audio-middleware-fuzz-media"
#: Wall-clock bound for one input through one path; far above the few ms a real input takes.
HANG_SECONDS = 10.0
#: tracemalloc peak allowed while handling one (small, < 2 MB) input.
MEMORY_BOUND = 64 * 1024 * 1024
#: Odd upstream chunk sizes so that every header straddles a chunk boundary somewhere.
ODD_CHUNKS = (1, 7, 4093, 65536, 3, 333)
CONTENT_TYPES = {Container.MP4: "video/mp4", Container.FLV: "video/x-flv"}


# ------------------------------------------------------------------------------------------------
# what counts as a broken guarantee
# ------------------------------------------------------------------------------------------------


class Finding(AssertionError):
    """A guarantee of docs/hardening.md does not hold for an input.

    ``kind`` is one of ``crash`` (an exception outside the package's hierarchy),
    ``hang``, ``memory``, ``lie`` (a response or plan whose bytes are wrong),
    ``close`` (upstream close() not called exactly once) or ``http`` (an
    error answered the wrong way).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"[{kind}] {message}")
        self.kind = kind


class Hang(BaseException):
    """Raised by the alarm: a BaseException so that no ``except Exception`` can swallow it."""


@contextlib.contextmanager
def time_bound(seconds: float, what: str) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; a no-op outside the main thread).

    An alarm already set (pytest-timeout's "signal" method uses the same timer) is
    put back afterwards, minus the time spent here, with its own handler.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def ring(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Hang(what)

    previous = signal.signal(signal.SIGALRM, ring)
    started = time.monotonic()
    outer, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if outer and outer < seconds:  # the outer alarm comes first: keep its deadline
        signal.setitimer(signal.ITIMER_REAL, outer)
    try:
        yield
    except Hang:
        raise Finding("hang", f"{what} did not finish within {seconds} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 0.001), interval)


@contextlib.contextmanager
def memory_bound(limit: int, what: str) -> Iterator[None]:
    """Fail when the traced peak inside the block exceeds ``limit`` bytes."""
    nested = tracemalloc.is_tracing()
    if not nested:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if not nested:
            tracemalloc.stop()
    if peak > limit:
        raise Finding("memory", f"{what} peaked at {peak / 2**20:.1f} MiB (bound {limit / 2**20:.0f} MiB)")


def _crash(error: BaseException, where: str) -> Finding:
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    at = f" at {pathlib.Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return Finding("crash", f"{where}: {type(error).__name__}{at}: {error}")


def container_of(data: bytes) -> Container | None:
    """What the middleware would sniff; None when the bytes are neither MP4 nor FLV."""
    return by_signature(data[:16])


# ------------------------------------------------------------------------------------------------
# structure walkers (tolerant: they only find places worth mutating)
# ------------------------------------------------------------------------------------------------

#: Boxes whose payload is a list of boxes, and where that list starts in the payload.
_CHILDREN_AT = {
    b"moov": 0, b"trak": 0, b"mdia": 0, b"minf": 0, b"stbl": 0, b"mvex": 0, b"edts": 0, b"dinf": 0, b"udta": 0,
    b"moof": 0, b"traf": 0, b"mfra": 0, b"tref": 0, b"meta": 4, b"stsd": 8, b"dref": 8, b"mp4a": 28, b"sowt": 28,
    b"twos": 28, b"ac-3": 28, b"ec-3": 28, b"Opus": 28, b"alac": 28, b"fLaC": 28, b"samr": 28, b"avc1": 78,
    b"hev1": 78, b"hvc1": 78, b"mp4v": 78, b"s263": 78,
}
#: Table boxes: offset of the entry count in the payload, entry width.
TABLES = {
    b"stts": (4, 8), b"ctts": (4, 8), b"stss": (4, 4), b"stsc": (4, 12), b"stco": (4, 4), b"co64": (4, 8),
    b"stsz": (8, 4), b"stz2": (8, 0), b"elst": (4, 12), b"trun": (4, 4), b"stsd": (4, 0), b"dref": (4, 0),
    b"sbgp": (8, 8), b"sgpd": (8, 0), b"tfra": (12, 0), b"sidx": (26, 12), b"saiz": (8, 1), b"saio": (4, 4),
}


@dataclass(frozen=True)
class BoxAt:
    """A box found by :func:`mp4_boxes`: where its header is, its header size, total size, depth."""

    type: bytes
    offset: int
    header: int
    size: int
    depth: int

    @property
    def payload(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.offset + self.size


def mp4_boxes(data: bytes, max_depth: int = 12) -> list[BoxAt]:
    """Every box a tolerant walk finds, parents before children; stops quietly at the first inconsistency."""
    found: list[BoxAt] = []

    def walk(start: int, end: int, depth: int) -> None:
        pos = start
        while end - pos >= 8 and len(found) < 5000:
            size, kind = struct.unpack_from(">I4s", data, pos)
            header = 8
            if size == 1:
                if end - pos < 16:
                    return
                size = struct.unpack_from(">Q", data, pos + 8)[0]
                header = 16
            elif size == 0:
                size = end - pos
            if size < header or pos + size > end:
                return
            box = BoxAt(kind, pos, header, size, depth)
            found.append(box)
            skip = _CHILDREN_AT.get(kind)
            if skip is not None and depth < max_depth:
                walk(box.payload + skip, box.end, depth + 1)
            pos += size

    walk(0, len(data), 0)
    return found


@dataclass(frozen=True)
class TagAt:
    """An FLV tag found by :func:`flv_tags`."""

    offset: int
    type: int
    size: int

    @property
    def data(self) -> int:
        return self.offset + 11

    @property
    def end(self) -> int:
        return self.offset + 11 + self.size


def flv_tags(data: bytes) -> list[TagAt]:
    """Tags reachable by DataSize from the header (stops at the end or at 5000 tags)."""
    if len(data) < 13 or data[:3] != b"FLV":
        return []
    pos = struct.unpack_from(">I", data, 5)[0] + 4
    tags: list[TagAt] = []
    while pos + 11 <= len(data) and len(tags) < 5000:
        word = struct.unpack_from(">I", data, pos)[0]
        tag = TagAt(pos, word >> 24, word & 0xFFFFFF)
        tags.append(tag)
        pos = tag.end + 4
    return tags


# ------------------------------------------------------------------------------------------------
# mutations: plain data (tuples of ints), so hypothesis can draw and shrink them
# ------------------------------------------------------------------------------------------------

#: Values that break size and count arithmetic most often.
INTERESTING_U32 = (0, 1, 2, 7, 8, 9, 15, 16, 0x7F, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
                   0xFFFFFFFE, 0xFFFFFFFF)
INTERESTING_U64 = (0, 1, 8, 15, 16, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)
INTERESTING_U24 = (0, 1, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFF, 0xFFFFFF)
AMF_MARKERS = tuple(range(0x12)) + (0x3F, 0x80, 0xFF)

#: Mutation names, in the order hypothesis shrinks towards (simplest first).
OPS = ("truncate", "flip", "byte", "u32", "box_size", "largesize", "count", "stsc", "offset", "splice",
       "flv_datasize", "flv_prevsize", "flv_type", "amf", "duplicate", "drop")

Mutation = tuple  # (op, a, b, c): small non-negative ints, interpreted modulo what exists


def _spread(a: int, b: int, n: int) -> int:
    """A position in ``range(n)`` from two small numbers, spread over the whole range.

    Hypothesis favours small numbers; a plain ``a * k + b`` would keep every
    mutation near the start of the file.
    """
    return ((a * 0x9E3779B1) ^ (b * 0x85EBCA77) ^ (a << 7)) % n if n else 0


def _pick(seq: Sequence, index: int):
    return seq[index % len(seq)] if seq else None


def _put(data: bytearray, offset: int, fmt: str, value: int) -> None:
    width = struct.calcsize(fmt)
    if 0 <= offset <= len(data) - width:
        struct.pack_into(fmt, data, offset, value & ((1 << (8 * width)) - 1))


def _size_variant(box: BoxAt, parent_room: int, choice: int) -> int:
    variants = (0, 1, 4, 7, 8, box.header - 1, box.size - 1, box.size + 1, box.size + 8, parent_room,
                parent_room + 1, box.size * 2, 0xFFFFFFFF)
    return variants[choice % len(variants)]


def _parent_room(boxes: list[BoxAt], box: BoxAt, total: int) -> int:
    """Bytes from ``box`` to the end of its parent (or the file)."""
    end = total
    for other in boxes:
        if other.depth == box.depth - 1 and other.offset < box.offset < other.end:
            end = other.end
    return end - box.offset


def apply(data: bytes, ops: Sequence[Mutation], corpus: Sequence[bytes] = ()) -> bytes:
    """Apply mutations in order; each one re-walks the (already mutated) structure."""
    out = bytearray(data)
    for op, a, b, c in ops:
        _apply_one(out, op, a, b, c, corpus)
        if len(out) > 4 * 1024 * 1024:  # splices of splices: keep inputs small
            del out[4 * 1024 * 1024:]
    return bytes(out)


def _apply_one(out: bytearray, op: str, a: int, b: int, c: int, corpus: Sequence[bytes]) -> None:  # noqa: C901
    n = len(out)
    if op == "truncate":
        del out[_spread(a, b, n + 1):]
    elif op == "flip" and n:
        out[_spread(a, b, n)] ^= 1 << (c % 8)
    elif op == "byte" and n:
        out[_spread(a, b, n)] = (0, 0xFF, 0x80, 1, 0x7F, c % 256)[c % 6]
    elif op == "u32" and n >= 4:
        _put(out, _spread(a, b, n - 3), ">I", _pick(INTERESTING_U32, c))
    elif op == "splice" and corpus:
        other = _pick(corpus, a)
        cut, graft = _spread(b, a, n + 1), _spread(c, b, len(other) + 1)
        out[cut:] = other[graft:graft + 2 * 1024 * 1024]
    elif op in ("box_size", "largesize", "count", "stsc", "offset", "duplicate", "drop"):
        _mutate_mp4(out, op, a, b, c)
    elif op in ("flv_datasize", "flv_prevsize", "flv_type", "amf"):
        _mutate_flv(out, op, a, b, c)


def _mutate_mp4(out: bytearray, op: str, a: int, b: int, c: int) -> None:
    boxes = mp4_boxes(bytes(out))
    if not boxes:
        return
    if op == "box_size":
        box = _pick(boxes, a)
        _put(out, box.offset, ">I", _size_variant(box, _parent_room(boxes, box, len(out)), b))
    elif op == "largesize":
        large = [box for box in boxes if box.header == 16 or (box.header == 8 and box.type == b"mdat")]
        box = _pick(large or boxes, a)
        if box.header == 16:
            _put(out, box.offset + 8, ">Q", _pick(INTERESTING_U64 + (box.size - 1, box.size + 1), b))
        else:  # turn a 32-bit header into a 64-bit one (shifts everything after it by 8 bytes)
            out[box.offset:box.offset + 8] = struct.pack(">I4sQ", 1, box.type, box.size + 8)
    elif op == "count":
        tables = [box for box in boxes if box.type in TABLES]
        box = _pick(tables, a)
        if box is not None:
            at, width = TABLES[box.type]
            where = box.payload + at
            current = struct.unpack_from(">I", out, where)[0] if where + 4 <= len(out) else 0
            room = (box.end - where - 4) // width if width else current
            variants = (0, 1, current - 1, current + 1, room, room + 1, current * 2, 0x7FFFFFFF, 0xFFFFFFFF,
                        0x10000000)
            _put(out, where, ">I", _pick(variants, b))
    elif op == "stsc":
        stscs = [box for box in boxes if box.type == b"stsc"]
        box = _pick(stscs, a)
        if box is not None:
            count = max(1, (box.size - box.header - 8) // 12)
            entry = box.payload + 8 + 12 * (b % count)
            column = c % 3
            previous = struct.unpack_from(">I", out, entry - 12)[0] if b % count and entry - 12 >= 0 else 0
            values = (0, 1, previous, previous + 1, 0xFFFFFFFF, 0x7FFFFFFF, 1000)
            _put(out, entry + 4 * column, ">I", values[(b + c) % len(values)])
    elif op == "offset":
        tables = [box for box in boxes if box.type in (b"stco", b"co64", b"tfhd", b"trun")]
        box = _pick(tables, a)
        if box is not None:
            if box.type in (b"stco", b"co64"):
                width = 8 if box.type == b"co64" else 4
                count = max(1, (box.size - box.header - 8) // width)
                entry = box.payload + 8 + width * (b % count)
                previous = int.from_bytes(out[entry - width:entry], "big") if b % count else 0
                values = (0, len(out), len(out) - 1, previous, previous + 1, box.offset, 0xFFFFFFFF,
                          (1 << (8 * width)) - 1, c * 4096)
                _put(out, entry, ">Q" if width == 8 else ">I", values[c % len(values)])
            elif box.type == b"trun":  # data_offset (signed) right after the sample count
                _put(out, box.payload + 8, ">I", _pick((0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, c * 512), b))
            else:  # tfhd base_data_offset
                _put(out, box.payload + 8, ">Q", _pick(INTERESTING_U64, b))
                _put(out, box.payload, ">I", out[box.payload] << 24 | 0x1)
    elif op == "duplicate":  # the same box twice in a row (sizes of ancestors left stale on purpose)
        box = _pick([box for box in boxes if box.depth > 0] or boxes, a)
        out[box.end:box.end] = out[box.offset:box.end]
        if b % 2:  # and fix the ancestors' sizes, so that the duplicate is well-formed
            for parent in boxes:
                if parent.depth < box.depth and parent.offset < box.offset < parent.end and parent.header == 8:
                    _put(out, parent.offset, ">I", parent.size + box.size)
    elif op == "drop":
        box = _pick([box for box in boxes if box.depth > 0] or boxes, a)
        del out[box.offset:box.end]
        if b % 2:
            for parent in boxes:
                if parent.depth < box.depth and parent.offset < box.offset < parent.end and parent.header == 8:
                    _put(out, parent.offset, ">I", parent.size - box.size)


def _mutate_flv(out: bytearray, op: str, a: int, b: int, c: int) -> None:
    tags = flv_tags(bytes(out))
    if not tags:
        return
    tag = _pick(tags, a)
    if op == "flv_datasize":
        rest = len(out) - tag.data
        values = INTERESTING_U24 + (tag.size + 1, tag.size - 1, rest, rest + 1, rest - 4)
        word = struct.unpack_from(">I", out, tag.offset)[0] & 0xFF000000
        _put(out, tag.offset, ">I", word | (values[b % len(values)] & 0xFFFFFF))
    elif op == "flv_prevsize":
        values = (0, tag.size, tag.size + 10, tag.size + 12, 0xFFFFFFFF, 11, c)
        _put(out, tag.end, ">I", values[b % len(values)])
    elif op == "flv_type":
        values = (8, 9, 18, 0, 31, 7, tag.type | 0x20, tag.type | 0xC0, 8 | 0x20, 18 | 0x20, 0xFF)
        if tag.offset < len(out):
            out[tag.offset] = values[b % len(values)]
    elif op == "amf":
        scripts = [t for t in tags if t.type & 0x1F == 18] or tags
        tag = _pick(scripts, a)
        end = min(tag.end, len(out))
        if end <= tag.data:
            return
        where = tag.data + _spread(b, c, end - tag.data)
        if c % 3 == 0:
            out[where] = AMF_MARKERS[c % len(AMF_MARKERS)]
        elif c % 3 == 1:  # a string / array length claiming far more than there is
            _put(out, where, ">H", 0xFFFF)
        else:
            _put(out, where, ">I", _pick(INTERESTING_U32, c))


def random_ops(rng: random.Random, count: int | None = None) -> list[Mutation]:
    """1-4 random mutations (for the plain fuzz loop)."""
    return [(rng.choice(OPS), rng.randrange(1 << 16), rng.randrange(1 << 16), rng.randrange(1 << 16))
            for _ in range(count or rng.randint(1, 4))]


# ------------------------------------------------------------------------------------------------
# the oracle, planner level
# ------------------------------------------------------------------------------------------------

ALLOWED = (AudioExtractionError,)


@dataclass
class Outcome:
    """What one path made of an input: output bytes, or the error it answered."""

    path: str
    output: bytes | None = None
    error: BaseException | None = None
    status: str | None = None
    headers: dict = field(default_factory=dict)
    aborted: bool = False
    #: ``plan`` or ``emit``: where the error was raised (planner paths only).
    phase: str = ""

    @property
    def ok(self) -> bool:
        return self.output is not None and self.error is None and not self.aborted


def _sequential(data: bytes, known_size: bool, chunks: Sequence[int] = ODD_CHUNKS) -> SequentialSource:
    def body() -> Iterator[bytes]:
        position, index = 0, 0
        while position < len(data):
            size = chunks[index % len(chunks)]
            yield data[position:position + size]
            position, index = position + size, index + 1

    return SequentialSource(body(), len(data) if known_size else None, retain=True)


def _check_plan_shape(plan: Plan | LazyPlan, size: int | None, path: str) -> None:
    """Every span of a complete plan lies inside the source (a Spans piece holds many)."""
    if isinstance(plan, Plan):
        for piece in plan.pieces:
            if isinstance(piece, Literal):
                continue
            for span in [piece] if isinstance(piece, Span) else piece:
                if span.offset < 0 or span.length < 0:
                    raise Finding("lie", f"{path}: span {span} is negative")
                if size is not None and span.end > size:
                    raise Finding("lie", f"{path}: span {span} ends past the source ({size} bytes)")


def plan_and_emit(data: bytes, source_kind: str, container: Container, limits: Limits,
                  selection: Selection = Selection()) -> Outcome:
    """Plan ``data`` over one kind of source and stream the plan, the way the middleware does.

    ``file``: random access (FileSource). ``stream``: forward-only with a known
    size, ``stream-nolength``: forward-only, size unknown; both spool to a
    temporary file when the planner asks for random access, as the middleware does.
    """
    path = f"planner/{source_kind}"
    if source_kind == "file":
        source = FileSource(io.BytesIO(data))
    else:
        source = _sequential(data, source_kind == "stream")
    spooled = None
    phase = "plan"
    try:
        try:
            plan = plan_source(container, source, limits, selection)
        except NeedsRandomAccess:
            if source.random_access:
                raise Finding("crash", f"{path}: NeedsRandomAccess from a random-access source") from None
            spooled = spool(source, limits.spool_limit)  # type: ignore[arg-type]
            source = spooled
            plan = plan_source(container, source, limits, selection)
        _check_plan_shape(plan, len(data) if source.random_access else source.size, path)
        if isinstance(source, SequentialSource):
            source.retain = False
        pieces = plan.pieces
        if isinstance(plan, LazyPlan):  # as the middleware does: what the first piece finds is still an HTTP error
            first = next(pieces, None)
            pieces = itertools.chain([] if first is None else [first], pieces)
        phase = "emit"
        parts = []
        emitted = 0
        for chunk in iter_plan_bytes(pieces, source):
            parts.append(chunk)
            emitted += len(chunk)
            if emitted > 4 * len(data) + 1024 * 1024:
                raise Finding("lie", f"{path}: output grows past {emitted} bytes for a {len(data)}-byte input")
        output = b"".join(parts)
        if isinstance(plan, Plan) and plan.length != len(output):
            raise Finding("lie", f"{path}: plan length {plan.length} but {len(output)} bytes emitted")
        return Outcome(path, output=output)
    except Finding:
        raise
    except NeedsRandomAccess as error:
        raise _crash(error, path) from error
    except ALLOWED as error:
        return Outcome(path, error=error, phase=phase)
    except Exception as error:  # noqa: BLE001 - that is exactly what we look for
        raise _crash(error, path) from error
    finally:
        source.close()
        if spooled is not None:
            spooled.close()


def check_planners(data: bytes, *, limits: Limits = Limits(), selection: Selection = Selection(),
                   sources: Sequence[str] = ("file", "stream", "stream-nolength"),
                   hang_seconds: float = HANG_SECONDS, memory: int | None = MEMORY_BOUND) -> dict[str, Outcome]:
    """Run every planner path on ``data``; raise :class:`Finding` if any guarantee breaks.

    Beyond "only our own errors escape": a file-backed plan must never point past
    the file (else Content-Length would be a lie), outputs of the paths that
    succeed must agree (MP4: byte for byte), and a successful rendition must be
    a fixed point (planning the audio rendition again gives the same bytes).
    ``memory`` bounds the traced peak of each path (tracemalloc).
    """
    container = container_of(data)
    if container is None:
        return {}
    outcomes: dict[str, Outcome] = {}
    for kind in sources:
        bound = memory_bound(memory, f"planner/{kind}") if memory else contextlib.nullcontext()
        with bound, time_bound(hang_seconds, f"planner/{kind}"):
            outcomes[kind] = plan_and_emit(data, kind, container, limits, selection)
    file_outcome = outcomes.get("file")
    if file_outcome is not None and file_outcome.error is not None and file_outcome.phase == "emit":
        raise Finding("lie", f"planner/file: a complete file-backed plan failed while streaming: "
                             f"{file_outcome.error!r}")
    if container is Container.MP4:
        done = {kind: o.output for kind, o in outcomes.items() if o.ok}
        if len(set(done.values())) > 1:
            sizes = {kind: len(out) for kind, out in done.items()}
            raise Finding("lie", f"MP4 renditions differ between source kinds: {sizes}")
    if file_outcome is not None and file_outcome.ok and not selection.clipped:
        check_fixed_point(file_outcome.output, container, limits, hang_seconds)
    return outcomes


def check_fixed_point(output: bytes, container: Container, limits: Limits, hang_seconds: float = HANG_SECONDS
                      ) -> None:
    """The audio rendition of an audio rendition is itself (our own re-parse of what we sent)."""
    if container_of(output) is not container:
        raise Finding("lie", f"rendition does not start like {container.value.upper()}: {output[:16]!r}")
    with time_bound(hang_seconds, "re-planning the rendition"):
        again = plan_and_emit(output, "file", container, limits)
    if not again.ok:
        raise Finding("lie", f"our own rendition does not re-parse: {again.error!r}")
    if again.output != output:
        raise Finding("lie", f"re-planning the rendition changed it ({len(output)} -> {len(again.output)} bytes)")


# ------------------------------------------------------------------------------------------------
# the oracle, middleware level
# ------------------------------------------------------------------------------------------------


def call_wsgi(app: Callable, query: str = "ali_audio_only=1", **environ) -> Outcome:
    """Call a WSGI app like a server: start_response, iterate, close. Never raises for the app's errors."""
    seen: dict = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(headers)
        return lambda data: None

    base = {"REQUEST_METHOD": "GET", "QUERY_STRING": query, "PATH_INFO": "/media", "SERVER_NAME": "fuzz",
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO()}
    outcome = Outcome("middleware")
    try:
        result = app({**base, **environ}, start_response)
    except Exception as error:  # noqa: BLE001 - a crash before any response
        raise _crash(error, "middleware call") from error
    parts: list[bytes] = []
    try:
        for chunk in result:
            parts.append(chunk)
    except ALLOWED as error:
        outcome.error, outcome.aborted = error, True
    except Exception as error:  # noqa: BLE001
        raise _crash(error, "middleware body") from error
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    outcome.status, outcome.headers = seen.get("status"), seen.get("headers", {})
    outcome.output = b"".join(parts)
    return outcome


def check_response(outcome: Outcome, data: bytes, *, forward_only: bool) -> str:
    """Classify a middleware response; raise :class:`Finding` when it is none of the allowed outcomes.

    Returns ``"audio"``, ``"error"`` or ``"aborted"``.
    """
    if outcome.status is None:
        raise Finding("http", "the middleware never called start_response")
    code = int(outcome.status.split()[0])
    headers = {name.lower(): value for name, value in outcome.headers.items()}
    if outcome.aborted:
        if not forward_only:
            raise Finding("lie", f"file-backed response aborted mid-body: {outcome.error!r}")
        if code not in (200, 206):
            raise Finding("http", f"aborted a {outcome.status} response")
        if "content-length" in headers and len(outcome.output) >= int(headers["content-length"]):
            raise Finding("lie", "aborted response already had all its Content-Length bytes")
        return "aborted"
    if code >= 400:
        if not headers.get("content-type", "").startswith("text/plain"):
            raise Finding("http", f"{outcome.status} without a text/plain reason: {headers}")
        if not outcome.output or len(outcome.output) > 4096:
            raise Finding("http", f"{outcome.status} reason is {len(outcome.output)} bytes")
        return "error"
    if code not in (200, 206):
        raise Finding("http", f"unexpected status {outcome.status}")
    content_type = headers.get("content-type", "")
    if not (content_type.startswith("audio/") or content_type == "video/x-flv"):
        what = "the source itself" if outcome.output == data else f"{len(outcome.output)} bytes"
        raise Finding("http", f"200 with Content-Type {content_type!r} and {what}: a flagged media request passed "
                              "through untransformed")
    if "content-length" in headers and int(headers["content-length"]) != len(outcome.output):
        raise Finding("lie", f"Content-Length {headers['content-length']} but {len(outcome.output)} bytes sent")
    if not forward_only and "content-length" not in headers:
        raise Finding("http", "file-backed rendition without Content-Length")
    return "audio"


def check_middleware(data: bytes, *, sources: Sequence[str] = ("file", "generator"), limits: Limits | None = None,
                     oracle: bool = True, query: str = "ali_audio_only=1", workdir: pathlib.Path | None = None,
                     hang_seconds: float = HANG_SECONDS, etag: str | None = None,
                     memory: int | None = MEMORY_BOUND) -> dict[str, Outcome]:
    """Serve ``data`` through the middleware from each kind of upstream app and check every response.

    ``file``: werkzeug send_file (wsgi.file_wrapper, random access); ``generator``: a
    forward-only body in odd chunks with Content-Length; ``chunked``: the same without
    Content-Length; ``range``: an iterable body from an app that honours Range (the
    middleware reads it with sub-requests); ``write``: an app pushing half its body
    through the legacy ``write()`` callable. File-backed and forward-only requests are made twice (the second
    comes from the plan cache, or the plan recorded while the first streamed) and must give the same bytes.
    With ``oracle``, successful renditions are
    compared with the source (:func:`check_content`). ``memory`` bounds the traced
    peak of each request (the oracle itself runs untraced).
    """
    from tests.apps import FileApp, GeneratorApp, RangeApp, WriteApp  # the apps the rest of the suite uses

    container = container_of(data) or (Container.FLV if data[:3] == b"FLV" else Container.MP4)
    content_type = CONTENT_TYPES[container]
    etag = etag or '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = pathlib.Path(tmp) / ("input.flv" if container is Container.FLV else "input.mp4")
        path.write_bytes(data)
        for kind in sources:
            if kind == "file":
                upstream = FileApp(path, content_type, etag=etag)
            elif kind == "range":
                upstream = RangeApp(path, content_type, etag=etag)
            elif kind == "write":
                upstream = WriteApp(path, content_type, etag=etag)
            else:
                upstream = GeneratorApp(path, content_type, etag=etag, chunks=ODD_CHUNKS,
                                        send_length=kind != "chunked")
            middleware = AudioOnlyMiddleware(upstream, limits=limits)
            # file: the second request comes from the plan cache; generator/chunked: from the plan recorded
            # while the first streamed (FLV, fragmented MP4) or cached (moov first); same bytes either way
            rounds = 2 if kind in ("file", "generator", "chunked") else 1
            results = []
            for _ in range(rounds):
                bound = memory_bound(memory, f"middleware/{kind}") if memory else contextlib.nullcontext()
                with bound, time_bound(hang_seconds, f"middleware/{kind}"):
                    outcome = call_wsgi(middleware, query)
                outcome.path = f"middleware/{kind}"
                check_response(outcome, data, forward_only=kind != "file")
                results.append(outcome)
            if upstream.closes != upstream.bodies:
                raise Finding("close", f"middleware/{kind}: {upstream.bodies} upstream bodies, "
                                       f"{upstream.closes} close() calls")
            if rounds == 2 and (results[0].status, results[0].output) != (results[1].status, results[1].output):
                raise Finding("lie", f"middleware/{kind}: a repeated (cached) request answered differently")
            if kind in ("generator", "chunked") and results[0].ok and results[0].status.startswith("200"):
                _check_first_range(results[0].output, path, content_type, etag, kind, limits, query, hang_seconds)
                if kind == "generator" and container is Container.MP4:
                    _check_read_twice(results[0].output, path, content_type, etag, limits, query, hang_seconds)
            outcomes[kind] = results[0]
    if oracle:
        for outcome in outcomes.values():
            if outcome.ok and outcome.status.startswith("200"):
                check_content(data, outcome.output, container)
    return outcomes


def _fresh_stream_call(path: pathlib.Path, content_type: str, etag: str, label: str, limits: Limits | None,
                       query: str, hang_seconds: float, *, send_length: bool = True,
                       **environ: str) -> tuple[Outcome, int]:
    """One request through a fresh middleware (empty plan cache) over a forward-only body of ``path``.

    Returns the outcome and how many bodies the app gave (one, or two when the
    middleware read twice); each of them must be closed exactly once.
    """
    from tests.apps import GeneratorApp

    upstream = GeneratorApp(path, content_type, etag=etag, chunks=ODD_CHUNKS, send_length=send_length)
    with time_bound(hang_seconds, label):
        outcome = call_wsgi(AudioOnlyMiddleware(upstream, limits=limits), query, **environ)
    if upstream.closes != upstream.bodies:
        raise Finding("close", f"{label}: {upstream.bodies} upstream bodies, {upstream.closes} close() calls")
    outcome.path = label
    return outcome, upstream.bodies


def _check_first_range(full: bytes, path: pathlib.Path, content_type: str, etag: str, kind: str,
                       limits: Limits | None, query: str, hang_seconds: float) -> None:
    """A Range that comes first (Safari's ``bytes=0-1``) on a fresh middleware over a forward-only body.

    It may be answered from a plan completed by walking the body (``206``: the
    first bytes of the full answer), or, when no plan can be kept (no length, too
    large for the cache), with the full ``200``; either way each body is closed once.
    """
    label = f"middleware/{kind}/range"
    outcome, _ = _fresh_stream_call(path, content_type, etag, label, limits, query, hang_seconds,
                                    send_length=kind != "chunked", HTTP_RANGE="bytes=0-1")
    expected = {"206 Partial Content": full[:2], "200 OK": full}.get(outcome.status or "")
    if expected is None or not outcome.ok or outcome.output != expected:
        raise Finding("lie", f"{label}: a first 'Range: bytes=0-1' answered {outcome.status} with "
                             f"{len(outcome.output or b'')} bytes; the full answer was 200 with {len(full)} bytes")


def _check_read_twice(full: bytes, path: pathlib.Path, content_type: str, etag: str, limits: Limits | None,
                      query: str, hang_seconds: float) -> None:
    """With ``spool_limit=0`` a moov-at-end body is planned from a first pass and sent from a second call.

    The answer must be the same bytes as the spooled one, or a clean ``502`` when
    two passes cannot plan it (fragments before the moov); each body closed once.
    """
    label = "middleware/generator/read-twice"
    never_spooled = dataclasses.replace(limits or Limits(), spool_limit=0)
    outcome, bodies = _fresh_stream_call(path, content_type, etag, label, never_spooled, query, hang_seconds)
    if outcome.status == "502 Bad Gateway" and outcome.error is None and bodies == 1:
        return  # refused before any byte (a clean error answer)
    if not outcome.ok or outcome.status != "200 OK" or outcome.output != full:
        raise Finding("lie", f"{label}: answered {outcome.status} with {len(outcome.output or b'')} bytes; "
                             f"spooled, it was 200 with {len(full)} bytes")


# ------------------------------------------------------------------------------------------------
# content oracle: PyAV
# ------------------------------------------------------------------------------------------------


def _probe(data: bytes):
    from tests.media import probe

    try:
        import av  # noqa: F401
    except ImportError:  # pragma: no cover - PyAV is a test dependency
        return None
    try:
        with _quiet_ffmpeg():
            return probe(data)
    except Exception:  # noqa: BLE001 - FFmpeg rejects many mutated inputs; that is information, not a failure
        return None


#: How many more times an input is probed before "FFmpeg cannot open it" is believed.
PROBE_RETRIES = 4


def _probe_again(data: bytes):
    """The first of :data:`PROBE_RETRIES` more probes of ``data`` that succeeds, or None.

    FFmpeg's FLV reader on some mutated inputs adds a stream while demuxing in some runs and
    not in others, and PyAV then fails to look that stream up (IndexError inside ``demux``): the
    same bytes open in one run in thirty. A rendition is only called unreadable when it never
    opens while its source always does (:func:`_always_opens`).
    """
    for _ in range(PROBE_RETRIES):
        found = _probe(data)
        if found is not None:
            return found
    return None


def _always_opens(data: bytes) -> bool:
    """Whether :data:`PROBE_RETRIES` more probes of ``data`` all succeed."""
    return all(_probe(data) is not None for _ in range(PROBE_RETRIES))


@contextlib.contextmanager
def _quiet_ffmpeg() -> Iterator[None]:
    try:
        import av.logging

        previous = av.logging.get_level()
        av.logging.set_level(None)
    except Exception:  # noqa: BLE001
        yield
        return
    try:
        yield
    finally:
        av.logging.set_level(previous)


class ReferenceError_(Exception):
    """The reference reader cannot make sense of an input (it is stricter than it needs to be)."""


def _ref_boxes(data: bytes, start: int, end: int, *, strict: bool = True) -> list[tuple[bytes, int, int]]:
    """(type, payload start, end) of the boxes in ``data[start:end]``; trailing < 8 bytes ignored.

    ``strict=False`` (top level) keeps the boxes before the first bad one, as a
    player that reads moov first would.
    """
    boxes, pos = [], start
    while end - pos >= 8:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if end - pos < 16:
                if not strict:
                    break
                raise ReferenceError_("cut largesize")
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if kind == b"uuid":
            header += 16
        if size < header or pos + size > end:
            if not strict:
                break
            raise ReferenceError_(f"bad size for {kind!r} at {pos}")
        boxes.append((kind, pos + header, pos + size))
        pos += size
    return boxes


def _ref_child(data: bytes, parent: tuple[bytes, int, int], kind: bytes) -> tuple[bytes, int, int]:
    found = [box for box in _ref_boxes(data, parent[1], parent[2]) if box[0] == kind]
    if len(found) != 1:
        raise ReferenceError_(f"{len(found)} {kind!r} boxes")
    return found[0]


def _ref_u32s(data: bytes, at: int, count: int, end: int, width: int = 4) -> list[int]:
    if count < 0 or at + count * width > end:
        raise ReferenceError_("table runs past its box")
    return list(struct.unpack_from(f">{count}{'Q' if width == 8 else 'I'}", data, at))


def _ref_sample_sizes(data: bytes, stbl: tuple[bytes, int, int]) -> list[int]:
    kinds = {box[0]: box for box in _ref_boxes(data, stbl[1], stbl[2])}
    if b"stsz" in kinds:
        _, at, end = kinds[b"stsz"]
        constant, count = struct.unpack_from(">II", data, at + 4)
        if count > 10_000_000:
            raise ReferenceError_("huge stsz")
        return [constant] * count if constant else _ref_u32s(data, at + 12, count, end)
    _, at, end = kinds[b"stz2"]
    field_size, count = data[at + 7], struct.unpack_from(">I", data, at + 8)[0]
    raw = data[at + 12:end]
    if field_size == 16:
        return list(struct.unpack_from(f">{count}H", raw))
    if field_size == 8:
        return list(raw[:count]) if len(raw) >= count else _fail("short stz2")
    nibbles = [n for byte in raw for n in (byte >> 4, byte & 15)]
    return nibbles[:count] if len(nibbles) >= count else _fail("short stz2")


def _fail(message: str):
    raise ReferenceError_(message)


@dataclass
class Samples:
    """A track's samples, in decoding order: their bytes end to end, and each one's size."""

    data: bytearray
    sizes: list[int]

    def append(self, sample: bytes) -> None:
        self.data += sample
        self.sizes.append(len(sample))

    def __len__(self) -> int:
        return len(self.sizes)

    def first_difference(self, other: Samples) -> int:
        """Index of the first sample that differs from ``other``'s (bytes or size)."""
        position = 0
        for index, (mine, theirs) in enumerate(zip(self.sizes, other.sizes, strict=False)):
            if mine != theirs or self.data[position:position + mine] != other.data[position:position + mine]:
                return index
            position += mine
        return min(len(self), len(other))


def reference_mp4(data: bytes) -> dict:
    """What a spec-literal reader sees: per audio track, its sample bytes in decoding order.

    Independent of the package's parser on purpose (written from ISO/IEC 14496-12,
    not from audio_middleware/mp4): it is the yardstick the renditions are held to.
    Returns ``{"tracks": [(track_ID, Samples, timing boxes)]}``;
    the timing boxes (stts, ctts, stsd, mdhd, elst) must be copied unchanged.
    """
    top = _ref_boxes(data, 0, len(data), strict=False)
    moovs = [box for box in top if box[0] == b"moov"]
    if not moovs:
        raise ReferenceError_("no moov")
    moov = moovs[0]
    tracks: dict[int, tuple[Samples, bytes]] = {}
    trex: dict[int, int] = {}
    handlers: list[bytes] = []
    for kind, at, end in _ref_boxes(data, moov[1], moov[2]):
        if kind == b"mvex":
            for child in _ref_boxes(data, at, end):
                if child[0] == b"trex" and child[2] - child[1] >= 24:
                    track_id, _, _, size = struct.unpack_from(">IIII", data, child[1] + 4)
                    trex[track_id] = size
        if kind != b"trak":
            continue
        trak = (kind, at, end)
        mdia = _ref_child(data, trak, b"mdia")
        hdlr = _ref_child(data, mdia, b"hdlr")
        handlers.append(bytes(data[hdlr[1] + 8:hdlr[1] + 12]))
        if handlers[-1] != b"soun":
            continue
        tkhd = _ref_child(data, trak, b"tkhd")
        track_id = struct.unpack_from(">I", data, tkhd[1] + (20 if data[tkhd[1]] == 1 else 12))[0]
        stbl = _ref_child(data, _ref_child(data, mdia, b"minf"), b"stbl")
        children = {box[0]: box for box in _ref_boxes(data, stbl[1], stbl[2])}
        sizes = _ref_sample_sizes(data, stbl)
        offsets_box = children.get(b"stco") or children.get(b"co64")
        width = 8 if offsets_box[0] == b"co64" else 4
        count = struct.unpack_from(">I", data, offsets_box[1] + 4)[0]
        offsets = _ref_u32s(data, offsets_box[1] + 8, count, offsets_box[2], width)
        stsc = children[b"stsc"]
        entries = struct.unpack_from(">I", data, stsc[1] + 4)[0]
        table = [struct.unpack_from(">II", data, stsc[1] + 8 + 12 * i) for i in range(entries)]
        if stsc[1] + 8 + 12 * entries > stsc[2]:
            raise ReferenceError_("stsc runs past its box")
        view = memoryview(data)
        parts, used, index, entry, per_chunk = [], [], 0, 0, 0
        for chunk, offset in enumerate(offsets, 1):
            while entry < len(table) and table[entry][0] <= chunk:
                per_chunk = table[entry][1]
                entry += 1
            if index + per_chunk > len(sizes):
                raise ReferenceError_("chunks need more samples than stsz has")
            length = sum(sizes[index:index + per_chunk])
            if offset + length > len(data):
                raise ReferenceError_("sample past the end")
            parts.append(view[offset:offset + length])
            used.extend(sizes[index:index + per_chunk])
            index += per_chunk
        samples = Samples(bytearray().join(parts), used)
        # Everything but the chunk offsets is copied unchanged: sample tables, codec setup, edit list.
        timing = b"".join(data[box[1] - 8:box[2]] for box in _ref_boxes(data, stbl[1], stbl[2])
                          if box[0] not in (b"stco", b"co64"))
        for box in (tkhd, hdlr, _ref_child(data, mdia, b"mdhd"), *(b for b in _ref_boxes(data, trak[1], trak[2])
                                                                   if b[0] == b"edts")):
            timing += data[box[1]:box[2]]
        if track_id in tracks:
            raise ReferenceError_("two tracks with one ID")
        tracks[track_id] = (samples, timing)
    fragmented = any(kind == b"mvex" for kind, _, _ in _ref_boxes(data, moov[1], moov[2]))
    start = 0
    for kind, at, end in top:  # top-level boxes are back to back: each starts where the previous ends
        if kind == b"moof" and fragmented:  # fragments only exist for a moov with mvex (ISO 14496-12 8.8.1)
            _ref_fragment(data, (kind, at, end), start, tracks, trex)
        start = end
    return {"tracks": [(track_id, samples, timing) for track_id, (samples, timing) in tracks.items()],
            "handlers": handlers}


def _ref_fragment(data: bytes, moof: tuple[bytes, int, int], moof_offset: int,
                  tracks: dict[int, tuple[Samples, bytes]], trex: dict[int, int]) -> None:
    previous_end = moof_offset
    for kind, at, end in _ref_boxes(data, moof[1], moof[2]):
        if kind != b"traf":
            continue
        traf = (kind, at, end)
        tfhd = _ref_child(data, traf, b"tfhd")
        flags = struct.unpack_from(">I", data, tfhd[1])[0] & 0xFFFFFF
        track_id = struct.unpack_from(">I", data, tfhd[1] + 4)[0]
        pos = tfhd[1] + 8
        base, default_size = None, trex.get(track_id)
        for bit, width in ((0x1, 8), (0x2, 4), (0x8, 4), (0x10, 4), (0x20, 4)):
            if flags & bit:
                if pos + width > tfhd[2]:
                    raise ReferenceError_("short tfhd")
                if bit == 0x1:
                    base = struct.unpack_from(">Q", data, pos)[0]
                elif bit == 0x10:
                    default_size = struct.unpack_from(">I", data, pos)[0]
                pos += width
        if base is None:
            base = moof_offset if flags & 0x020000 else previous_end
        position = base
        for trun in (box for box in _ref_boxes(data, at, end) if box[0] == b"trun"):
            trun_flags = struct.unpack_from(">I", data, trun[1])[0] & 0xFFFFFF
            count = struct.unpack_from(">I", data, trun[1] + 4)[0]
            pos = trun[1] + 8
            if trun_flags & 0x1:
                position = base + struct.unpack_from(">i", data, pos)[0]
                pos += 4
            if trun_flags & 0x4:
                pos += 4
            columns = [bit for bit in (0x100, 0x200, 0x400, 0x800) if trun_flags & bit]
            if count > 10_000_000 or pos + 4 * len(columns) * count > trun[2]:
                raise ReferenceError_("trun runs past its box")
            for sample in range(count):
                if trun_flags & 0x200:
                    size = struct.unpack_from(">I", data, pos + 4 * (sample * len(columns) + columns.index(0x200)))[0]
                elif default_size is not None:
                    size = default_size
                else:
                    raise ReferenceError_("no sample size")
                if position < 0 or position + size > len(data):
                    raise ReferenceError_("fragment sample past the end")
                if track_id in tracks:
                    tracks[track_id][0].append(data[position:position + size])
                position += size
        previous_end = position


def reference_flv(data: bytes) -> dict:
    """Every audio tag reachable through DataSize, in order (FLV spec, annex E).

    Each item is the tag (header + data) and the PreviousTagSize after it, which
    a rendition copies as it is (or, when the source ends without it, writes as 11 + DataSize).
    """
    if len(data) < 9 or data[:3] != b"FLV":
        raise ReferenceError_("no FLV header")
    pos = struct.unpack_from(">I", data, 5)[0] + 4
    audio, kinds = [], set()
    while pos + 11 <= len(data):
        word = struct.unpack_from(">I", data, pos)[0]
        size = word & 0xFFFFFF
        kinds.add(word >> 24 & 0x1F)
        if word >> 24 & 0x1F == 8:
            if pos + 11 + size > len(data):
                raise ReferenceError_("audio tag cut short")
            trailer = data[pos + 11 + size:pos + 15 + size]
            audio.append(data[pos:pos + 11 + size] + (trailer if len(trailer) == 4 else struct.pack(">I", 11 + size)))
        pos += 15 + size
    return {"audio_tags": audio, "tag_types": kinds}


def reference(data: bytes, container: Container) -> dict:
    return reference_flv(data) if container is Container.FLV else reference_mp4(data)


def check_content(source: bytes, output: bytes, container: Container) -> str:
    """Hold a successful rendition to the source: the rule documented in docs/hardening.md.

    1. Reference reader (independent, spec-literal): the rendition must read cleanly,
       and whenever the source reads cleanly too, every audio sample (MP4) or audio tag
       (FLV) of the source must be in the rendition, byte for byte, in order, with the
       timing boxes (stts, ctts, stsd, mdhd, edit list) unchanged. Returns
       ``"reference"`` when only this level could be checked.
    2. FFmpeg (PyAV): the rendition holds no video stream; when FFmpeg reads the
       source's audio exactly as its tables describe it (same bytes as the reference
       reader), it must read the rendition's audio as the same packets (bytes, pts, dts,
       duration). FFmpeg repairs broken tables by heuristics (it stops at a video
       chunk past the end of the file, re-frames MP3 chunks with its parser, resyncs
       on a bad FLV PreviousTagSize...), so on such sources only level 1 applies.
       Returns ``"identical"`` when this level was checked.
    """
    try:
        wanted = reference(source, container)
    except (ReferenceError_, struct.error, KeyError, IndexError, TypeError, ValueError):
        wanted = None
    try:
        got = reference(output, container)
    except (ReferenceError_, struct.error, KeyError, IndexError, TypeError, ValueError) as error:
        raise Finding("lie", f"the rendition does not read cleanly: {type(error).__name__}: {error}") from None
    if container is Container.FLV and not got["tag_types"] <= {8, 18}:
        raise Finding("lie", f"the rendition holds tags of types {sorted(got['tag_types'])} (audio and script only)")
    if container is Container.MP4 and set(got["handlers"]) - {b"soun"}:
        raise Finding("lie", f"the rendition keeps tracks with handlers {got['handlers']}")
    if wanted is not None:
        if container is Container.FLV:
            if got["audio_tags"] != wanted["audio_tags"]:
                raise Finding("lie", f"the rendition's audio tags differ from the source's "
                                     f"({len(got['audio_tags'])} vs {len(wanted['audio_tags'])})")
        else:
            if len(got["tracks"]) != len(wanted["tracks"]):
                raise Finding("lie", f"{len(got['tracks'])} audio tracks in the rendition, "
                                     f"{len(wanted['tracks'])} in the source")
            pairs = zip(got["tracks"], wanted["tracks"], strict=True)
            for (_, out_samples, out_timing), (track_id, src_samples, src_timing) in pairs:
                if out_samples != src_samples:
                    first = out_samples.first_difference(src_samples)
                    raise Finding("lie", f"track {track_id}: sample #{first} differs ({len(src_samples)} "
                                         f"samples in the source, {len(out_samples)} in the rendition)")
                if out_timing != src_timing:
                    raise Finding("lie", f"track {track_id}: timing boxes changed")
    return _check_ffmpeg(source, output, wanted)


def _check_ffmpeg(source: bytes, output: bytes, wanted: dict | None) -> str:
    out_streams = _probe(output)
    src_streams = _probe(source)
    if out_streams is None:
        if src_streams is None or wanted is None or not _ffmpeg_agrees(src_streams, wanted, source):
            return "reference"
        out_streams = _probe_again(output)
        if out_streams is None:
            if not _always_opens(source):
                return "reference"  # FFmpeg's reading of the source is not reproducible either
            raise Finding("lie", "FFmpeg reads the source's audio but cannot open the rendition")
    if src_streams is None or wanted is None or not _ffmpeg_agrees(src_streams, wanted, source):
        # FFmpeg resynchronises inside broken sources and may then find video bytes in what the
        # tables call one audio sample or tag; the spec-level "audio only" check still applied.
        return "reference"
    video = [s for s in out_streams if s.type == "video" and s.packets]
    if video:
        raise Finding("lie", f"the rendition still carries {len(video)} video stream(s) with packets")
    src_audio = [s for s in src_streams if s.type == "audio"]
    out_audio = [s for s in out_streams if s.type == "audio"]
    if [(s.codec, s.time_base) for s in src_audio] != [(s.codec, s.time_base) for s in out_audio]:
        raise Finding("lie", f"FFmpeg sees audio streams {[(s.codec, s.time_base) for s in out_audio]} in the "
                             f"rendition, {[(s.codec, s.time_base) for s in src_audio]} in the source")
    for index, (src, out) in enumerate(zip(src_audio, out_audio, strict=True)):
        if src.packets != out.packets:
            first = next((i for i, (a, b) in enumerate(zip(src.packets, out.packets, strict=False)) if a != b),
                         min(len(src.packets), len(out.packets)))
            raise Finding("lie", f"FFmpeg: audio stream {index} packet #{first} differs from the source "
                                 f"({len(src.packets)} source packets, {len(out.packets)} in the rendition)")
    return "identical"


def _flv_audio_payloads(source: bytes, tags: list) -> list[bytes] | None:
    """The audio bytes FFmpeg gives for these tags read whole, one item per tag: each payload after
    its codec header (1 byte, 2 for AAC, whose sequence headers are extradata); None for Enhanced
    RTMP, whose header length depends on the packet type."""
    parts = []
    for tag in tags:
        if tag.type != 8 or tag.size == 0:
            continue
        sound_format = source[tag.data] >> 4
        if sound_format == 9:
            return None
        if sound_format != 10:
            parts.append(source[tag.data + 1:tag.end])
        elif tag.size >= 2 and source[tag.data + 1] != 0:
            parts.append(source[tag.data + 2:tag.end])
    return parts


def _merges_tags(packets: list[bytes], payloads: list[bytes]) -> bool:
    """Whether FFmpeg made one packet of bytes from two tags: a boundary between two payloads
    that is not a boundary between two packets.

    FFmpeg runs MP3 in FLV through its parser, which may split a tag holding several frames
    (the boundaries of the tags stay packet boundaries), but on bytes that are not MP3 frames
    it may also join tags, and where it does depends on how far its stream probing read:
    ``tests/regressions/flv_mp3_garbage_reframed.flv`` gives packets of 24 and 120 bytes from
    six tags of 24, and 144 bytes from the same six tags without the video tags around them.
    """
    cuts = set(itertools.accumulate(len(packet) for packet in packets))
    return any(cut not in cuts for cut in itertools.accumulate(len(part) for part in payloads if part))


def _aac_config_changes(source: bytes, tags: list) -> bool:
    """Whether an AAC sequence header (AudioSpecificConfig) comes after the first AAC frame.

    FLV stores no packet duration: FFmpeg infers it from the codec parameters, and
    a mid-stream config makes it change them; what it infers from there depends on
    how far its stream probing read, which depends on the video tags around. The
    source of ``tests/regressions/flv_mid_stream_aac_config.flv`` gives durations of
    23 ms after such a header, and the same bytes with only the video tags removed
    give 0 ms. So on such sources only the reference reader's byte-level check holds.
    """
    framed = False
    for tag in tags:
        if tag.type != 8 or tag.size < 2 or source[tag.offset + 11] >> 4 != 10:
            continue
        if source[tag.offset + 12] == 1:
            framed = True
        elif framed:
            return True
    return False


def _ffmpeg_agrees(streams: list, wanted: dict, source: bytes) -> bool:
    """Whether FFmpeg has no reason to read the source's audio differently from its tables.

    MP4: FFmpeg's audio packets are exactly the reference reader's samples (same
    bytes, one packet per sample). FLV (FFmpeg's packets are tag payloads minus codec headers):
    every tag is audio, video or script without the filter bit, every
    PreviousTagSize is right, the file ends with the last one, the AAC
    configuration does not change mid-stream (:func:`_aac_config_changes`), and
    FFmpeg's audio bytes are all the audio tags' payloads (:func:`_flv_audio_payloads`), and no
    packet holds bytes of two tags (:func:`_merges_tags`):
    video tags it cannot read (a codec id that changes mid-stream) can make it stop
    reading the source early, which the rendition, without them, does not.
    """
    audio = [b"".join(packet[0] for packet in s.packets) for s in streams if s.type == "audio"]
    if "audio_tags" in wanted:
        tags = flv_tags(source)
        for tag in tags:
            if tag.type not in (8, 9, 18) or tag.end + 4 > len(source):
                return False
            if struct.unpack_from(">I", source, tag.end)[0] != tag.size + 11:
                return False
        payloads = _flv_audio_payloads(source, tags)
        packets = [packet[0] for s in streams if s.type == "audio" for packet in s.packets]
        return (bool(tags) and tags[-1].end + 4 == len(source) and any(audio)
                and not _aac_config_changes(source, tags)
                and (payloads is None or (b"".join(audio) == b"".join(payloads)
                                          and not _merges_tags(packets, payloads))))
    expected = [bytes(samples.data) for _, samples, _ in wanted["tracks"]]
    sizes = [[len(packet[0]) for packet in s.packets] for s in streams if s.type == "audio"]
    # Same bytes *and* one packet per sample: FFmpeg neither skipped, merged (PCM chunks) nor
    # re-framed (its MP3 parser) anything, so it has no excuse to read the rendition differently.
    return audio == expected and all(audio) and sizes == [samples.sizes for _, samples, _ in wanted["tracks"]]


# ------------------------------------------------------------------------------------------------
# corpus and command line
# ------------------------------------------------------------------------------------------------


#: Notes and case descriptions that live next to media files.
NOT_MEDIA = (".md", ".py", ".txt", ".json")


def default_corpus(extra: Sequence[pathlib.Path] = (), regressions: bool = True) -> list[pathlib.Path]:
    """PyAV-made kinds, the shared real-media folder (if present), saved regressions, and ``extra``."""
    files: list[pathlib.Path] = []
    try:
        from tests import media

        files += [media.make_media(kind, MEDIA_CACHE) for kind in media.KINDS]
    except Exception as error:  # noqa: BLE001 - PyAV missing: fuzz what else there is
        print(f"(no PyAV-made media: {error})", file=sys.stderr)
    for folder in (SHARED_MEDIA, *((REGRESSIONS,) if regressions else ()), *extra):
        if folder.is_dir():
            files += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix not in NOT_MEDIA)
        elif folder.is_file():
            files.append(folder)
    return files


def save_finding(data: bytes, finding: Finding, ops: Sequence[Mutation], origin: str,
                 folder: pathlib.Path = REGRESSIONS) -> pathlib.Path:
    """Write the input and a one-line note (what broke, where it came from) for test_regressions.py."""
    folder.mkdir(parents=True, exist_ok=True)
    container = container_of(data)
    ext = ".flv" if container is Container.FLV or data[:3] == b"FLV" else ".mp4"
    name = f"found-{finding.kind}-{hashlib.sha1(data).hexdigest()[:12]}{ext}"
    path = folder / name
    path.write_bytes(data)
    path.with_name(name + ".txt").write_text(f"{finding}\nfrom {origin} with {list(ops)}\n")
    return path


def signature(finding: Finding) -> str:
    """What makes two findings the same bug: the kind and the place (crash) or the message without numbers."""
    text = str(finding)
    if finding.kind == "crash":
        return text.split(":", 1)[0].split("]")[0] + text.split(": ", 1)[1].split(":", 1)[0].split("/")[-1]
    return finding.kind + "".join(char for char in text if not char.isdigit())[:90]


def known_signatures(middleware: bool) -> set[str]:
    """Signatures of what the saved regression inputs still trigger (bugs not fixed yet): not new."""
    known: set[str] = set()
    if not REGRESSIONS.is_dir():
        return known
    for path in REGRESSIONS.iterdir():
        if path.suffix in NOT_MEDIA or not path.is_file():
            continue
        try:
            check_planners(path.read_bytes())
            if middleware:
                check_middleware(path.read_bytes())
        except Finding as finding:
            known.add(signature(finding))
    return known


def fuzz_loop(corpus: Sequence[pathlib.Path], seconds: float, seed: int, middleware: bool,
              out: pathlib.Path = REGRESSIONS) -> int:
    """Mutate and check until ``seconds`` have passed; return the number of findings saved.

    A finding with the signature of one a saved regression input still triggers is
    counted, not saved again: it is a bug already on file.
    """
    rng = random.Random(seed)
    blobs = [(path.name, path.read_bytes()) for path in corpus]
    blobs = [(name, data) for name, data in blobs if data]
    if not blobs:
        raise SystemExit("empty corpus")
    seen: set[str] = known_signatures(middleware)
    if seen:
        print(f"{len(seen)} known bug(s) on file in {REGRESSIONS}: not saved again")
    start = time.monotonic()
    runs = findings = 0
    stats: dict[str, int] = {}
    while time.monotonic() - start < seconds:
        name, base = rng.choice(blobs)
        ops = random_ops(rng)
        data = apply(base, ops, [blob for _, blob in blobs])
        runs += 1
        try:
            outcomes = check_planners(data)
            if middleware:
                check_middleware(data)
            for outcome in outcomes.values():
                key = "ok" if outcome.ok else type(outcome.error).__name__
                stats[key] = stats.get(key, 0) + 1
        except Finding as finding:
            key = signature(finding)
            if key in seen:
                stats["known finding"] = stats.get("known finding", 0) + 1
                continue
            seen.add(key)
            findings += 1
            path = save_finding(data, finding, ops, name, out)
            print(f"FINDING {finding}\n  saved to {path}", flush=True)
    print(f"{runs} inputs in {time.monotonic() - start:.0f} s, {findings} new finding(s); outcomes {stats}")
    return findings


def atheris_main(corpus: Sequence[pathlib.Path], argv: list[str]) -> None:  # pragma: no cover - optional
    """Coverage-guided fuzzing with atheris: the fuzzer's bytes pick a seed file and the mutations."""
    try:
        import atheris
    except ImportError:
        raise SystemExit("--atheris needs atheris (pip install atheris); without it, leave --atheris out") from None

    blobs = [path.read_bytes() for path in corpus]

    def one_input(raw: bytes) -> None:
        provider = atheris.FuzzedDataProvider(raw)
        base = blobs[provider.ConsumeIntInRange(0, len(blobs) - 1)]
        ops = [(OPS[provider.ConsumeIntInRange(0, len(OPS) - 1)], provider.ConsumeIntInRange(0, 65535),
                provider.ConsumeIntInRange(0, 65535), provider.ConsumeIntInRange(0, 65535))
               for _ in range(provider.ConsumeIntInRange(1, 4))]
        data = apply(base, ops, blobs)
        try:
            check_planners(data)
        except Finding as finding:
            save_finding(data, finding, ops, "atheris")
            raise

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("audio_middleware").setLevel(logging.CRITICAL)  # expected errors are logged per input
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="*", type=pathlib.Path, help="extra files or folders of seed inputs")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time based)")
    parser.add_argument("--middleware", action="store_true", help="also run each input through the middleware "
                        "(file and forward-only upstreams) with the PyAV content oracle: slower, deeper")
    parser.add_argument("--out", type=pathlib.Path, default=REGRESSIONS, help="where findings are written")
    parser.add_argument("--atheris", action="store_true", help="use atheris (libFuzzer) instead of the random loop")
    parser.add_argument("--no-regressions", action="store_true", help="leave tests/regressions/ out of the corpus "
                        "(its inputs for bugs not fixed yet are found again and again)")
    args, rest = parser.parse_known_args(argv)
    corpus = default_corpus(args.corpus, regressions=not args.no_regressions)
    print(f"corpus: {len(corpus)} files")
    if args.atheris:
        atheris_main(corpus, rest)
        return 0
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"seed {seed}")
    return 1 if fuzz_loop(corpus, args.seconds, seed, args.middleware, args.out) else 0


if __name__ == "__main__":
    sys.exit(main())
