"""The benchmark: ``python -m bench`` (full, ~10 min) or ``python -m bench --quick`` (small inputs).

Phases, all in one run (each number is the median of ``--repeats`` runs after one
warm-up; all inputs sit in the page cache, as a busy server's files do):

1. inputs: generated once and cached (:mod:`bench.inputs`);
2. in process: the audio rendition of every input (saved, checked with PyAV, and
   used as the "plain file of the audio's size"), plan times (cold ``plan_mp4``,
   and the middleware's whole path up to the response headers with a warm plan
   cache), forward-only filtering rates (middleware over a generator app, no
   network);
3. ``ffmpeg -y -i IN -vn -c:a copy OUT`` for every input (when ffmpeg exists);
4. through gunicorn (gthread, one worker) on 127.0.0.1: for every input and both
   source kinds (``/file/``: Flask ``send_file``; ``/stream/``: generator of
   64 KiB blocks), time to first byte and total time of the flagged download
   (plan cached and cold), the same URL without the flag (the whole video), and
   the saved audio file served plainly (the floor); for ``/file/``, the same
   flagged download through a middleware with a rendition store
   (``rendition_cache``): filling it (first full download, plan cached) and
   served from it; worker peak extra RSS of every flagged request; then
   ``--rss-requests`` sequential flagged requests;
5. concurrency (gunicorn, ``--workers`` workers): ``--concurrency`` simultaneous
   flagged downloads (without and with the rendition store) vs as many plain
   downloads of the audio-sized file.

Results: a table of ratios against the issue's targets on stdout, JSON, and
(full run) ``BENCHMARKS.md`` + ``bench/ratios.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable

import requests

from . import measure, report
from .inputs import INPUT_SETS, Input, default_cache, ensure_inputs
from .measure import MiB, PeakRSS, Server, fetch, median, run_wsgi, status_kb, summarize

HERE = pathlib.Path(__file__).resolve().parent
FLAG = "ali_audio_only=1"
KINDS = ("file", "stream")


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs and fewer repeats (a few seconds)")
    parser.add_argument("--set", choices=sorted(INPUT_SETS), help="input set (default: full, or quick with --quick)")
    parser.add_argument("--cache", type=pathlib.Path, default=None,
                        help="where inputs are generated and kept ($BENCH_CACHE or ~/.cache/audio_middleware_bench)")
    parser.add_argument("--inputs", default=None, help="comma-separated subset of the inputs")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median reported)")
    parser.add_argument("--rss-requests", type=int, default=None, help="sequential flagged requests for RSS drift")
    parser.add_argument("--concurrency", type=int, default=16, help="simultaneous downloads")
    parser.add_argument("--per-thread", type=int, default=None, help="downloads per thread in a concurrent round")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for the concurrency phase")
    parser.add_argument("--fresh-worker", dest="fresh_worker", action="store_true", default=None,
                        help="a fresh gunicorn worker per input and source kind, so that memory is measured from a "
                        "clean start (default in the full run)")
    parser.add_argument("--no-fresh-worker", dest="fresh_worker", action="store_false",
                        help="one gunicorn for the whole sequential phase (default with --quick)")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: "
                        "plan,inprocess,ffmpeg,http,rss,concurrency")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="results file")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help="plot image (needs matplotlib)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--markdown", type=pathlib.Path, default=None, help="BENCHMARKS.md to update")
    parser.add_argument("--no-markdown", action="store_true")
    args = parser.parse_args(argv)
    args.set = args.set or ("quick" if args.quick else "full")
    full = args.set == "full"
    args.cache = args.cache or default_cache()
    args.repeats = args.repeats or (5 if full else 3)
    args.rss_requests = args.rss_requests if args.rss_requests is not None else (500 if full else 50)
    args.per_thread = args.per_thread or (2 if full else 1)
    if args.fresh_worker is None:
        args.fresh_worker = full
    args.skip = {phase.strip() for phase in args.skip.split(",") if phase.strip()}
    if args.json is None:
        args.json = HERE / "results.json" if full else args.cache / f"results-{args.set}.json"
    if args.plot is None and full:
        args.plot = HERE / "ratios.png"
    if args.no_plot:
        args.plot = None
    if args.markdown is None and full:
        args.markdown = HERE.parent / "BENCHMARKS.md"
    if args.no_markdown:
        args.markdown = None
    return args


# ------------------------------------------------------------------------------------------------
# machine
# ------------------------------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return None


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = None
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    ffmpeg = measure.ffmpeg_path()
    ffmpeg_version = None
    if ffmpeg:
        try:
            out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=False).stdout
            ffmpeg_version = out.splitlines()[0].split(" Copyright")[0] if out else None
        except OSError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_GB": round(memory / 1e9, 1) if memory else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in ("audio_middleware", "gunicorn", "werkzeug", "flask",
                                                        "requests", "av")},
        "ffmpeg": ffmpeg_version,
    }


# ------------------------------------------------------------------------------------------------
# phases
# ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.repeats = args.repeats
        self.cache: pathlib.Path = args.cache
        self.inputs: dict[str, Input] = {}
        self.audio: dict[str, pathlib.Path] = {}  # input name -> saved audio rendition (the floor file)
        self.results: dict = {"errors": [], "unavailable": {}}

    # -- helpers -----------------------------------------------------------------------------

    def available(self) -> list[Input]:
        return [inp for name, inp in self.inputs.items() if name not in self.results["unavailable"]]

    def phase(self, name: str, function: Callable[[], object]) -> None:
        if name in self.args.skip:
            log(f"== {name}: skipped")
            return
        log(f"== {name}")
        load_before = _load()
        start = time.perf_counter()
        try:
            function()
        except Exception as error:  # noqa: BLE001 - a phase failing must not lose the others
            traceback.print_exc()
            self.results["errors"].append(f"{name}: {type(error).__name__}: {error}")
        self.results.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - start, 1)
        self.results.setdefault("load_average", {})[name] = [load_before, _load()]

    def app(self) -> Callable:
        from .apps import make_app

        return make_app(str(self.cache))

    @property
    def store(self) -> pathlib.Path:
        """The rendition store of the ``/stored`` routes (emptied before each use)."""
        return self.cache / "renditions"

    def clear_store(self) -> None:
        from audio_middleware.renditions import RenditionStore

        RenditionStore(self.store).clear()

    def stored_files(self) -> int:
        return len([name for name in os.listdir(self.store) if name.endswith(".audio")])

    # -- 1. inputs -----------------------------------------------------------------------------

    def make_inputs(self) -> None:
        names = self.args.inputs.split(",") if self.args.inputs else None
        start = time.perf_counter()
        self.inputs = ensure_inputs(self.args.set, self.cache, log, names)
        self.results["generation_s_this_run"] = round(time.perf_counter() - start, 1)
        self.results["inputs"] = {
            name: {"file": inp.path.name, "container": inp.spec.container, "role": inp.spec.role,
                   "moov_front": inp.spec.moov_front if inp.spec.container == "mp4" else None,
                   **{k: v for k, v in inp.meta.items() if k != "spec"}}
            for name, inp in self.inputs.items()
        }

    # -- 2. in process -------------------------------------------------------------------------

    def renditions(self) -> None:
        """Extract every input once in process: the floor files, and a check of our output."""
        app = self.app()
        for inp in self.inputs.values():
            ext = ".m4a" if inp.spec.container == "mp4" else ".flv"
            path = self.cache / f"audio-{inp.path.stem}{ext}"
            tmp = path.with_name(path.name + ".part")
            try:
                with open(tmp, "wb") as out:
                    run = run_wsgi(app, f"/file/{inp.path.name}", FLAG, sink=out.write)
                if not run.status.startswith("200") or run.nbytes * 2 > inp.size:
                    raise RuntimeError(f"flagged request answered {run.status!r} with {run.nbytes} bytes "
                                       f"({run.headers.get('Content-Type')})")
                os.replace(tmp, path)
            except Exception as error:  # noqa: BLE001 - reported as n/a
                tmp.unlink(missing_ok=True)
                self.results["unavailable"][inp.name] = f"{type(error).__name__}: {error}"
                log(f"  {inp.name}: n/a ({type(error).__name__}: {error})")
                continue
            self.audio[inp.name] = path
            check = check_rendition(path, inp)
            self.results.setdefault("renditions", {})[inp.name] = {"file": path.name, "bytes": run.nbytes,
                                                                    "check": check}
            log(f"  {inp.name}: {run.nbytes / 1e6:.1f} MB of audio ({check})")

    def plan(self) -> None:
        from audio_middleware.limits import Limits
        from audio_middleware.mp4 import plan_mp4
        from audio_middleware.sources import FileSource

        out = self.results.setdefault("plan", {})
        runs = max(self.repeats, 5)
        app = self.app()
        for inp in self.available():
            planner: Callable | None = plan_mp4
            if inp.spec.container == "flv":
                try:
                    from audio_middleware.flv import plan_flv
                except ImportError:
                    planner = None
                else:
                    planner = plan_flv
            entry: dict = {}
            if planner is not None:
                samples = []
                for _ in range(runs + 1):
                    gc.collect()
                    start = time.perf_counter()
                    with open(inp.path, "rb") as f:
                        plan = planner(FileSource(f), Limits())
                    samples.append(time.perf_counter() - start)
                    pieces = len(plan.pieces) if hasattr(plan.pieces, "__len__") else None
                    del plan
                entry["cold_ms"] = median(samples[1:]) * 1000
                entry["cold_ms_samples"] = [round(s * 1000, 3) for s in samples[1:]]
                entry["pieces"] = pieces
            # The middleware's whole path up to the response headers (app call, validators, plan),
            # after one unflagged call, so that the route's own first-use work is not counted.
            path = f"/file/{inp.path.name}"
            run_wsgi(app, path, "", consume=False)
            cold = [run_wsgi(app, path, f"{FLAG}&bench_nocache={uuid.uuid4().hex}", consume=False).first_s
                    for _ in range(runs)]
            run_wsgi(app, path, FLAG, consume=False)
            cached = [run_wsgi(app, path, FLAG, consume=False).first_s for _ in range(max(50, runs))]
            entry["middleware_cold_ms"] = median(cold) * 1000
            entry["middleware_cached_ms"] = median(cached) * 1000
            entry["middleware_cached_ms_max"] = max(cached) * 1000
            out[inp.name] = entry
            log(f"  {inp.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in entry.items() if k.endswith("ms")))
        app.cache.clear()

    def inprocess(self) -> None:
        """Forward-only filtering rate (and file-backed time) without a network."""
        from .apps import _blocks

        out = self.results.setdefault("inprocess", {})
        app = self.app()
        for inp in self.inputs.values():
            entry: dict = {}
            samples = []
            for _ in range(self.repeats + 1):
                start = time.perf_counter()
                for _block in _blocks(str(inp.path), 64 * 1024):
                    pass
                samples.append(time.perf_counter() - start)
            entry["app_only_MBps"] = inp.size / median(samples[1:]) / 1e6
            if inp.name not in self.results["unavailable"]:
                for kind in KINDS:
                    runs = [run_wsgi(app, f"/{kind}/{inp.path.name}", FLAG) for _ in range(self.repeats + 1)]
                    runs = runs[1:]
                    if any(not run.status.startswith("200") for run in runs):
                        raise RuntimeError(f"{inp.name} {kind}: {runs[0].status}")
                    seconds = median(run.seconds for run in runs)
                    entry[kind] = {"total_s": seconds, "input_MBps": inp.size / seconds / 1e6,
                                   "output_MBps": runs[0].nbytes / seconds / 1e6, "bytes": runs[0].nbytes}
                # the same forward-only filtering with the plan made in each request (a cache-busting parameter)
                runs = [run_wsgi(app, f"/stream/{inp.path.name}", f"{FLAG}&bench_nocache={uuid.uuid4().hex}")
                        for _ in range(self.repeats + 1)][1:]
                if any(not run.status.startswith("200") for run in runs):
                    raise RuntimeError(f"{inp.name} stream (cold): {runs[0].status}")
                seconds = median(run.seconds for run in runs)
                entry["stream_cold"] = {"total_s": seconds, "input_MBps": inp.size / seconds / 1e6,
                                        "bytes": runs[0].nbytes}
            out[inp.name] = entry
            log(f"  {inp.name}: app alone {entry['app_only_MBps']:.0f} MB/s; stream, plan made in the request "
                f"{entry.get('stream_cold', {}).get('input_MBps', 0):.0f} MB/s of input; " + "; ".join(
                f"{kind} {entry[kind]['total_s'] * 1000:.0f} ms = {entry[kind]['input_MBps']:.0f} MB/s of input"
                for kind in KINDS if kind in entry))
        app.cache.clear()

    # -- 3. ffmpeg -------------------------------------------------------------------------------

    def ffmpeg(self) -> None:
        ffmpeg = measure.ffmpeg_path()
        out = self.results.setdefault("ffmpeg", {})
        if ffmpeg is None:
            log("  ffmpeg not found: n/a")
            return
        target_dir = self.cache / "ffmpeg-out"
        target_dir.mkdir(exist_ok=True)
        for inp in self.inputs.values():
            target = target_dir / f"{inp.path.stem}-audio.{inp.spec.container}"
            samples = [measure.time_ffmpeg(ffmpeg, inp.path, target) for _ in range(self.repeats + 1)][1:]
            out[inp.name] = {"total_s": median(samples), "samples": [round(s, 4) for s in samples],
                             "bytes": target.stat().st_size}
            log(f"  {inp.name}: {median(samples):.3f} s -> {target.stat().st_size / 1e6:.1f} MB")
            target.unlink()

    # -- 4. sequential requests through gunicorn -----------------------------------------------------

    def http(self) -> None:
        out = self.results.setdefault("http", {})
        self.results.setdefault("rss", {"per_request": {}})
        # A fresh worker for every input and source kind, so that each one's memory is measured from a clean
        # start (its first flagged request plans cold on an empty plan cache).
        self.clear_store()
        shared = None if self.args.fresh_worker else Server(self.cache, workers=1, threads=4, store=self.store).start()
        try:
            for inp in self.inputs.values():
                entry = out.setdefault(inp.name, {})
                for kind in KINDS:
                    entry[kind] = self._http_fresh(inp, kind) if shared is None else self._http_one(shared, inp, kind)
                    log(f"  {inp.name} {kind}: " + "; ".join(
                        f"{name} {value['total_s'] * 1000:.0f} ms (ttfb {value['ttfb_s'] * 1000:.1f})"
                        for name, value in entry[kind].items()))
            if "rss" not in self.args.skip:
                if shared is not None:
                    self.rss_drift(shared, shared.worker_pids()[0])
                else:
                    with Server(self.cache, workers=1, threads=4) as server:
                        self.rss_drift(server, server.worker_pids()[0])
        finally:
            if shared is not None:
                shared.stop()

    def _http_fresh(self, inp: Input, kind: str) -> dict:
        with Server(self.cache, workers=1, threads=4, store=self.store) as server:
            return self._http_one(server, inp, kind)

    def _http_one(self, server: Server, inp: Input, kind: str) -> dict:
        with requests.Session() as session:
            return self._http_session(server, session, inp, kind)

    def _http_session(self, server: Server, session: requests.Session, inp: Input, kind: str) -> dict:
        worker = server.worker_pids()[0]
        fetch(session, f"{server.url}/health")
        base = f"{server.url}/{kind}/{inp.path.name}"
        # The app's own one-time work for this route (Flask's send_file loads the mimetypes database...)
        # is not the middleware's: the worker serves the route once, unflagged, before memory is measured.
        session.head(base, timeout=600).close()
        result: dict = {}
        if inp.name not in self.results["unavailable"]:
            peaks: dict[str, list[int]] = {"first": [], "warm": [], "cold": [], "fill": [], "stored": []}
            start_rss = status_kb(worker, "VmRSS") * 1024

            def flagged(url: str, key: str) -> measure.Fetch:
                with PeakRSS(worker) as peak:
                    fetched = fetch(session, url)
                peaks[key].append(peak.extra)
                return fetched

            first = flagged(f"{base}?{FLAG}", "first")  # plans (empty cache), then warm-up
            result["flagged_first"] = summarize([first])
            result["flagged"] = summarize(self.samples(lambda: flagged(f"{base}?{FLAG}", "warm"), first))
            result["flagged_cold"] = summarize([flagged(f"{base}?{FLAG}&bench_nocache={uuid.uuid4().hex}", "cold")
                                                for _ in range(self.repeats)])
            if kind == "file":
                result.update(self._stored(server, inp, flagged))
            self.results["rss"]["per_request"].setdefault(inp.name, {})[kind] = {
                "worker_start_MB": start_rss / MiB, "worker_end_MB": status_kb(worker, "VmRSS") * 1024 / MiB,
                **{f"{key}_extra_MB": max(values) / MiB for key, values in peaks.items() if values}}
            floor_url = f"{server.url}/{kind}/{self.audio[inp.name].name}"
            result["floor"] = summarize(self.samples(lambda: fetch(session, floor_url), fetch(session, floor_url)))
        fetch(session, base)
        result["whole"] = summarize([fetch(session, base) for _ in range(self.repeats)])
        return result

    def samples(self, fetch_once: Callable[[], measure.Fetch], warm: measure.Fetch) -> list[measure.Fetch]:
        """``--repeats`` timed downloads, three times as many when one takes under 50 ms.

        Downloads of a few milliseconds (the audio-sized floor, stored renditions) move by
        a millisecond with the machine's other work: more samples steady their median.
        """
        count = self.repeats * (3 if warm.total < 0.05 else 1)
        return [fetch_once() for _ in range(count)]

    def _stored(self, server: Server, inp: Input, flagged: Callable[[str, str], measure.Fetch]) -> dict:
        """The flagged download through the middleware with a rendition store: filling it, then served from it."""
        url = f"{server.url}/stored/file/{inp.path.name}?{FLAG}"
        fills = []
        for _ in range(self.repeats + 1):  # the first also plans (the /stored middleware has its own plan cache)
            self.clear_store()
            fills.append(flagged(url, "fill"))
            if self.stored_files() != 1:
                raise RuntimeError(f"{inp.name}: a full flagged download did not fill the rendition store")
        hits = self.samples(lambda: flagged(url, "stored"), flagged(url, "stored"))
        if self.stored_files() != 1 or any(hit.nbytes != fills[0].nbytes for hit in hits):
            raise RuntimeError(f"{inp.name}: downloads from the rendition store differ from the fill")
        self.clear_store()
        return {"stored_fill": summarize(fills[1:]), "stored": summarize(hits)}

    def rss_drift(self, server: Server, worker: int) -> None:
        """Worker RSS over many sequential flagged requests: it must stay flat."""
        count = self.args.rss_requests
        picks = [inp for inp in self.available() if inp.spec.role == "big"] or self.available()
        if not count or not picks:
            return
        urls = [f"{server.url}/file/{inp.path.name}?{FLAG}" for inp in picks]
        series = []
        start = time.perf_counter()
        with requests.Session() as session, PeakRSS(worker) as peak:
            for index in range(count):
                fetch(session, urls[index % len(urls)])
                series.append(status_kb(worker, "VmRSS") * 1024)
        elapsed = time.perf_counter() - start
        tenth = max(1, count // 10)
        growth = series[-1] - series[tenth - 1]
        tail = series[count // 2:]
        slope = _slope(tail) if len(tail) > 2 else 0.0
        self.results["rss"]["drift"] = {
            "requests": count, "inputs": [inp.name for inp in picks], "seconds": elapsed,
            "rss_first_MB": series[0] / MiB, "rss_at_10pct_MB": series[tenth - 1] / MiB,
            "rss_last_MB": series[-1] / MiB, "rss_max_MB": max(series) / MiB, "peak_MB": peak.peak / MiB,
            "growth_after_10pct_MB": growth / MiB, "slope_KB_per_request": slope / 1024,
            "series_MB": [round(value / MiB, 2) for value in series[:: max(1, count // 100)]],
        }
        log(f"  {count} requests in {elapsed:.1f} s: RSS {series[0] / MiB:.1f} -> {series[-1] / MiB:.1f} MB "
            f"(growth after 10%: {growth / MiB:+.2f} MB, slope {slope / 1024:+.2f} KB/request)")

    # -- 5. concurrency -----------------------------------------------------------------------------

    def concurrency(self) -> None:
        out = self.results.setdefault("concurrency", {})
        count = self.args.concurrency
        workers = self.args.workers
        threads = max(1, -(-count // workers))
        picks = [inp for inp in self.available()
                 if inp.spec.role == "big" or (inp.name == "movie_front" and self.args.set == "full")]
        rounds = min(self.repeats, 3 if self.args.set == "full" else 2)
        self.clear_store()
        with Server(self.cache, workers=workers, threads=threads, store=self.store) as server:
            for inp in picks:
                ours_url = f"{server.url}/file/{inp.path.name}?{FLAG}"
                stored_url = f"{server.url}/stored/file/{inp.path.name}?{FLAG}"
                plain_url = f"{server.url}/file/{self.audio[inp.name].name}"
                entry: dict = {"clients": count, "per_thread": self.args.per_thread, "workers": workers,
                               "threads": threads}
                for name, url in (("flagged", ours_url), ("stored", stored_url), ("plain", plain_url)):
                    # warm-up: plans cached in every worker; for "stored", the first full download fills the store
                    before = self.stored_files()
                    measure.concurrent_downloads([url] * count, 1)
                    if name == "stored" and self.stored_files() != before + 1:
                        raise RuntimeError(f"{inp.name}: concurrent flagged downloads did not fill the store")
                    samples = [measure.concurrent_downloads([url] * count, self.args.per_thread)
                               for _ in range(rounds)]
                    entry[name] = {"MBps": median(s["MBps"] for s in samples),
                                   "latency_median_s": median(s["latency_median_s"] for s in samples),
                                   "MBps_samples": [round(s["MBps"], 1) for s in samples]}
                entry["ratio"] = entry["flagged"]["MBps"] / entry["plain"]["MBps"]
                entry["stored_ratio"] = entry["stored"]["MBps"] / entry["plain"]["MBps"]
                out[inp.name] = entry
                log(f"  {inp.name}: flagged {entry['flagged']['MBps']:.0f} MB/s, from the rendition store "
                    f"{entry['stored']['MBps']:.0f} MB/s, plain audio file {entry['plain']['MBps']:.0f} MB/s "
                    f"-> {entry['ratio']:.2f} / {entry['stored_ratio']:.2f}")
        self.clear_store()

    # -- all -----------------------------------------------------------------------------------------

    def run(self) -> dict:
        started = time.perf_counter()
        self.results["meta"] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(["python -m bench", *map(shlex.quote, sys.argv[1:])])
            if sys.argv and sys.argv[0].endswith(("bench", "__main__.py")) else None,
            "set": self.args.set, "repeats": self.repeats, "machine": machine_info(), "git": _git_head(),
            "cache": str(self.cache),
        }
        self.phase("inputs", self.make_inputs)
        if not self.inputs:
            return self.results
        self.phase("renditions", self.renditions)
        self.phase("plan", self.plan)
        self.phase("inprocess", self.inprocess)
        self.phase("ffmpeg", self.ffmpeg)
        self.phase("http", self.http)
        self.phase("concurrency", self.concurrency)
        self.results["seconds"] = round(time.perf_counter() - started, 1)
        self.results["targets"] = report.targets(self.results)
        self.results["ratios"] = report.ratios(self.results)
        return self.results


def _git_head() -> str | None:
    """The repository's commit (``+dirty`` when audio_middleware has uncommitted changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "audio_middleware"], cwd=HERE.parent,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _load() -> float | None:
    """1-minute load average (other processes compete for the cores: read the numbers with it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _slope(values: list[int]) -> float:
    """Least-squares slope of ``values`` per step."""
    n = len(values)
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values))
    den = sum((x - mean_x) ** 2 for x in range(n))
    return num / den if den else 0.0


def check_rendition(path: pathlib.Path, inp: Input) -> str:
    """Our audio output must demux to the input's audio packets and hold no video."""
    try:
        import av
    except ImportError:
        return "not checked (no PyAV)"
    with av.open(str(path)) as container:
        kinds = sorted({stream.type for stream in container.streams})
        packets = sum(1 for packet in container.demux() if packet.size and packet.stream.type == "audio")
    expected = inp.meta.get("audio_packets")
    if kinds != ["audio"] or packets != expected:
        return f"MISMATCH: streams {kinds}, {packets} audio packets, expected {expected}"
    return f"ok: {packets} audio packets, no video"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    bench = Bench(args)
    results = bench.run()
    print()
    print(report.text(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    log(f"results: {args.json}")
    if args.plot is not None:
        from .plot import plot

        try:
            plot(results, args.plot)
            log(f"plot: {args.plot}")
        except ImportError as error:
            log(f"plot skipped: {error}")
    if args.markdown is not None:
        report.update_markdown(results, args.markdown, args.plot)
        log(f"markdown: {args.markdown}")
    return results


if __name__ == "__main__":
    main()
