"""Where the time goes: ``python -m bench.profile [http|inprocess|plan] --input big_mp4 --kind file``.

- ``http``: py-spy samples the gunicorn worker (gthread, 1 worker) while a client
  downloads flagged URLs in a loop; prints the top functions by own time and by
  inclusive time (idle threads excluded), and keeps the raw stacks.
- ``inprocess``: pyinstrument around the middleware iterated in process (no network).
- ``plan``: pyinstrument around cold ``plan_mp4``/``plan_flv`` calls.

Needs ``py-spy`` (http) or ``pyinstrument`` (the others): ``pip install py-spy pyinstrument``.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import shutil
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("http", "inprocess", "plan"), nargs="?", default="http")
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
    else:
        profile_plan(args, path)


if __name__ == "__main__":
    main()
