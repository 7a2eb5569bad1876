"""A tiny run of the benchmark (``python -m bench``) so that its code paths keep working.

Tiny inputs (a few seconds of media), one run per measurement, every phase: input
generation, in-process extraction, plan timing, ffmpeg (when installed), gunicorn
on 127.0.0.1, RSS, concurrency, report, JSON, plot and BENCHMARKS.md rendering.
No timing is asserted: this is not where performance is judged.
"""

from __future__ import annotations

import json
import pathlib

import pytest

pytest.importorskip("av")
pytest.importorskip("gunicorn")
pytest.importorskip("requests")
pytest.importorskip("flask")

pytestmark = pytest.mark.server


def test_tiny_benchmark_run(tmp_path: pathlib.Path) -> None:
    from bench import report, run

    out = tmp_path / "results.json"
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\nhand-written text\n")
    args = ["--set", "tiny", "--cache", str(tmp_path / "cache"), "--repeats", "1", "--rss-requests", "4",
            "--concurrency", "2", "--per-thread", "1", "--no-fresh-worker", "--json", str(out),
            "--markdown", str(markdown)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        args.append("--no-plot")
    else:
        args += ["--plot", str(tmp_path / "ratios.png")]

    results = run.main(args)

    assert results["errors"] == []
    assert json.loads(out.read_text())["inputs"].keys() == {"movie_front", "movie_end", "big_mp4", "big_flv"}
    # Every MP4 input has an audio rendition that PyAV reads back as the input's audio packets.
    for name in ("movie_front", "movie_end", "big_mp4"):
        assert results["renditions"][name]["check"].startswith("ok"), results["renditions"][name]
    for kind in ("file", "stream"):
        http = results["http"]["big_mp4"][kind]
        assert http["flagged"]["status"] == 200
        assert http["flagged"]["bytes"] == results["renditions"]["big_mp4"]["bytes"]
        assert http["flagged"]["bytes"] == http["floor"]["bytes"]
        assert http["whole"]["bytes"] == results["inputs"]["big_mp4"]["size"]
    assert results["plan"]["movie_front"]["cold_ms"] > 0
    assert results["inprocess"]["big_mp4"]["stream"]["input_MBps"] > 0
    assert results["rss"]["drift"]["requests"] == 4
    assert results["concurrency"]["big_mp4"]["ratio"] > 0
    ids = {row["id"] for row in results["targets"]}
    assert {"plan_cold/movie_front", "plan_cached/movie_front", "vs_floor/big_mp4/file", "rss_flat",
            "concurrency/big_mp4"} <= ids
    assert "Targets" in report.text(results)
    text = markdown.read_text()
    assert "hand-written text" in text and report.START in text and report.END in text


def test_span_reads_profile_runs_every_way(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bench.profile reads`` (what bounds a download without the store) keeps working."""
    from bench import profile

    for name in ("big_mp4", "big_flv"):
        profile.main(["reads", "--set", "tiny", "--input", name, "--seconds", "1", "--cache", str(tmp_path)])
        out = capsys.readouterr().out
        spans = int(out.split(": ", 1)[1].split(" spans", 1)[0])
        assert spans > 1
        for way in ("emission loop", "bare os.pread loop", "mmap made and dropped", "mmap kept"):
            assert way in out
