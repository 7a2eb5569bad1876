"""Where the time goes: ``python -m bench.profile [http|inprocess|plan|reads] --input big_mp4 --kind file``.

- ``http``: py-spy samples the gunicorn worker (gthread, 1 worker) while a client
  downloads flagged URLs in a loop; prints the top functions by own time and by
  inclusive time (idle threads excluded), and keeps the raw stacks.
- ``inprocess``: pyinstrument around the middleware iterated in process (no network).
- ``plan``: pyinstrument around cold ``plan_mp4``/``plan_flv`` calls.
- ``reads``: the ways to fetch a file-backed plan's audio spans from the page cache,
  timed in process (best and median of ``--seconds`` worth of runs), with the worker
  memory each one maps: the emission loop the middleware uses, a bare ``os.pread``
  loop, an ``mmap`` made and dropped per request, and one kept across requests. It
  shows what bounds a download without the rendition store (BENCHMARKS.md).

Needs ``py-spy`` (http) or ``pyinstrument`` (inprocess, plan): ``pip install py-spy pyinstrument``.
"""

from __future__ import annotations

import argparse
import collections
import mmap
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time
import uuid

import requests

from .inputs import INPUT_SETS, default_cache, ensure_input
from .measure import Server, fetch, run_wsgi

FLAG = "ali_audio_only=1"


def summarize_raw(raw: pathlib.Path, top: int = 25) -> str:
    """Top functions (own and inclusive samples) from py-spy's raw (collapsed stack) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if frame and not frame.startswith("process ")
                  and not frame.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples of active threads", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def profile_http(args: argparse.Namespace, path: pathlib.Path, out: pathlib.Path) -> None:
    py_spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    raw = out / f"pyspy-{args.input}-{args.kind}{'-cold' if args.cold else ''}.txt"
    with Server(path.parent, workers=1, threads=4) as server, requests.Session() as session:
        worker = server.worker_pids()[0]
        url = f"{server.url}/{args.kind}/{path.name}?{FLAG}"
        fetch(session, url)
        spy = subprocess.Popen([py_spy, "record", "--pid", str(worker), "--rate", str(args.rate), "--format", "raw",
                                "--function", "--nonblocking", "--duration", str(args.seconds), "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
        count = 0
        while spy.poll() is None:
            fetch(session, url + (f"&bench_nocache={uuid.uuid4().hex}" if args.cold else ""))
            count += 1
        if spy.returncode:
            raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode() if spy.stderr else ''}")
    print(f"{count} flagged downloads of {path.name} ({args.kind}{', cold' if args.cold else ''}); raw stacks: {raw}")
    print(summarize_raw(raw, args.top))


def profile_inprocess(args: argparse.Namespace, path: pathlib.Path) -> None:
    from pyinstrument import Profiler

    from .apps import make_app

    app = make_app(str(path.parent))
    run_wsgi(app, f"/{args.kind}/{path.name}", FLAG)
    profiler = Profiler(interval=0.0005)
    deadline = time.perf_counter() + args.seconds
    count = 0
    with profiler:
        while time.perf_counter() < deadline:
            query = FLAG + (f"&bench_nocache={uuid.uuid4().hex}" if args.cold else "")
            run_wsgi(app, f"/{args.kind}/{path.name}", query)
            count += 1
    print(f"{count} in-process flagged runs of {path.name} ({args.kind})")
    print(profiler.output_text(unicode=True, color=False, show_all=False))


def profile_plan(args: argparse.Namespace, path: pathlib.Path) -> None:
    from pyinstrument import Profiler

    from audio_middleware.limits import Limits
    from audio_middleware.sources import FileSource

    if path.suffix == ".flv":
        from audio_middleware.flv import plan_flv as planner
    else:
        from audio_middleware.mp4 import plan_mp4 as planner
    profiler = Profiler(interval=0.0002)
    deadline = time.perf_counter() + args.seconds
    count = 0
    with profiler:
        while time.perf_counter() < deadline:
            with open(path, "rb") as f:
                planner(FileSource(f), Limits())
            count += 1
    print(f"{count} cold plans of {path.name}")
    print(profiler.output_text(unicode=True, color=False, show_all=False))


def _rss_file_kb() -> int:
    """This process's resident file-backed pages (``RssFile``: mapped page cache), in KiB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return 0


def _spans_of(path: pathlib.Path) -> tuple[list[int], list[int]]:
    """The source offsets and lengths of every audio span of the file's (MP4 or FLV) rendition."""
    from audio_middleware.elementary import sniff
    from audio_middleware.extract import Selection, plan_source
    from audio_middleware.limits import Limits
    from audio_middleware.plan import Span, Spans
    from audio_middleware.sources import FileSource

    with open(path, "rb") as f:
        source = FileSource(f)
        plan = plan_source(sniff(source), source, Limits(), Selection())
    offsets: list[int] = []
    lengths: list[int] = []
    for piece in plan.pieces:
        if isinstance(piece, Spans):
            offsets += piece.offsets
            lengths += piece.lengths
        elif isinstance(piece, Span):
            offsets.append(piece.offset)
            lengths.append(piece.length)
    return offsets, lengths


def profile_reads(args: argparse.Namespace, path: pathlib.Path) -> None:
    from audio_middleware.emit import iter_plan_bytes
    from audio_middleware.plan import Spans
    from audio_middleware.sources import FileSource

    offsets, lengths = _spans_of(path)
    total = sum(lengths)
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size

        def emission() -> int:
            return sum(map(len, iter_plan_bytes([Spans(offsets, lengths)], FileSource(f))))

        def bare_pread() -> int:
            return len(b"".join(map(os.pread, [fd] * len(offsets), lengths, offsets)))

        def slices(view: mmap.mmap) -> int:
            return len(b"".join([view[offset:offset + length] for offset, length in zip(offsets, lengths)]))

        def mmap_per_request() -> int:
            with mmap.mmap(fd, size, prot=mmap.PROT_READ) as view:
                return slices(view)

        kept = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        ways = {"emission loop (iter_plan_bytes, FileSource.gather)": emission, "bare os.pread loop": bare_pread,
                "mmap made and dropped per request": mmap_per_request,
                "mmap kept across requests": lambda: slices(kept)}
        print(f"{path.name}: {len(offsets)} spans, {total / 1e6:.2f} MB of audio in {size / 1e6:.0f} MB")
        for name, way in ways.items():
            before = _rss_file_kb()
            assert way() == total
            mapped = _rss_file_kb() - before
            times = []
            deadline = time.perf_counter() + args.seconds / len(ways)
            while time.perf_counter() < deadline or len(times) < 5:
                start = time.perf_counter()
                way()
                times.append((time.perf_counter() - start) * 1000)
            print(f"  {name:52s} best {min(times):7.2f} ms  median {statistics.median(times):7.2f} ms"
                  f"  ({len(times)} runs)  RssFile after the first run +{mapped / 1024:.1f} MiB")
        kept.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("http", "inprocess", "plan", "reads"), nargs="?", default="http")
    parser.add_argument("--set", choices=sorted(INPUT_SETS), default="full")
    parser.add_argument("--input", default="big_mp4")
    parser.add_argument("--kind", choices=("file", "stream"), default="file")
    parser.add_argument("--cold", action="store_true", help="bypass the plan cache (plan in every request)")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cache", type=pathlib.Path, default=None)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="where raw profiles go (default: cache)")
    args = parser.parse_args(argv)
    cache = args.cache or default_cache()
    spec = next(spec for spec in INPUT_SETS[args.set] if spec.name == args.input)
    path = ensure_input(spec, cache).path
    out = args.out or cache / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    if args.mode == "http":
        profile_http(args, path, out)
    elif args.mode == "inprocess":
        profile_inprocess(args, path)
    elif args.mode == "reads":
        profile_reads(args, path)
    else:
        profile_plan(args, path)


if __name__ == "__main__":
    main()
