"""Replay every input of tests/regressions/: each bug found stays found.

A case is either

- a media file (``.mp4``, ``.flv``...; written by hand or by ``fuzz/fuzz_extract.py``,
  which adds a ``.txt`` note saying what broke): it goes through the whole oracle of
  ``fuzz/fuzz_extract.py`` (every planner path, then the middleware from a file-backed
  and a forward-only upstream, PyAV and the reference reader on the output); or
- a ``.json`` case, when the bug needs more than bytes: a request (``query``), an
  upstream that misbehaves (``upstream``: ``{"kind": "generator", "truncate_at": N}`` or
  ``{"kind": "static", "headers": [...]}``), an input too big to keep (``build``:
  arguments of ``tests.test_hostile.Movie``), a tighter time bound (``seconds``), no memory
  tracing for a time-bound case (``"memory": null``). Its
  ``expect`` lists the allowed verdicts (``audio``, ``error``, ``aborted``) and
  ``status`` the error status, when it matters.

A media file that a ``.json`` case names as its ``input`` is only replayed through that case.

``KNOWN_OPEN`` lists the cases whose bug is not fixed yet (strict xfail): remove the
line with the fix. See tests/regressions/README.md for the story of each case.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from audio_middleware import AudioOnlyMiddleware
from fuzz import fuzz_extract as fz

from .apps import GeneratorApp, StaticApp

pytestmark = pytest.mark.usefixtures("quiet_middleware_log")  # thousands of rejections, each logged

FOLDER = pathlib.Path(__file__).resolve().parent / "regressions"
NOTES = (".md", ".txt", ".json")

#: case -> what is still broken (file and function to fix).
KNOWN_OPEN: dict[str, str] = {}


def _cases() -> list[pathlib.Path]:
    if not FOLDER.is_dir():
        return []
    specs = sorted(FOLDER.glob("*.json"))
    named = {json.loads(spec.read_text()).get("input") for spec in specs}
    media = sorted(p for p in FOLDER.iterdir() if p.is_file() and p.suffix not in NOTES and p.name not in named)
    return media + specs


def _param(case: pathlib.Path):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_OPEN[case.name])] if case.name in KNOWN_OPEN else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in _cases()])
def test_regression(case: pathlib.Path, tmp_path: pathlib.Path) -> None:
    if case.suffix != ".json":
        data = case.read_bytes()
        fz.check_planners(data)
        fz.check_middleware(data, workdir=tmp_path)
        return
    spec = json.loads(case.read_text())
    if "build" in spec:
        from .test_hostile import Movie

        data = Movie(**spec["build"]).build()
    else:
        data = (FOLDER / spec["input"]).read_bytes()
    seconds = spec.get("seconds", fz.HANG_SECONDS)
    if "upstream" not in spec and "query" not in spec:
        fz.check_planners(data, sources=spec.get("sources", ("file", "stream", "stream-nolength")),
                          hang_seconds=seconds, memory=spec.get("memory", fz.MEMORY_BOUND))
        if spec.get("middleware", True):
            fz.check_middleware(data, workdir=tmp_path, hang_seconds=seconds)
        return
    _replay_request(spec, data, tmp_path, seconds)


def _replay_request(spec: dict, data: bytes, tmp_path: pathlib.Path, seconds: float) -> None:
    """One request through the middleware, from the upstream the case describes."""
    container = fz.container_of(data)
    upstream_spec = dict(spec.get("upstream", {"kind": "file"}))
    kind = upstream_spec.pop("kind")
    path = tmp_path / f"input.{container.value if container else 'bin'}"
    path.write_bytes(data)
    content_type = fz.CONTENT_TYPES.get(container, "video/mp4")
    if kind == "static":
        upstream = StaticApp("200 OK", [tuple(header) for header in upstream_spec["headers"]], data)
    elif kind == "generator":
        upstream = GeneratorApp(path, content_type, chunks=fz.ODD_CHUNKS, **upstream_spec)
    else:
        from .apps import FileApp

        upstream = FileApp(path, content_type)
    with fz.time_bound(seconds, "the request"), fz.memory_bound(fz.MEMORY_BOUND, "the request"):
        outcome = fz.call_wsgi(AudioOnlyMiddleware(upstream), spec.get("query", "ali_audio_only=1"))
    verdict = fz.check_response(outcome, data, forward_only=kind != "file")
    assert verdict in spec.get("expect", ("audio", "error", "aborted")), (verdict, outcome.status)
    if "status" in spec:
        assert outcome.status.startswith(str(spec["status"])), outcome.status
    if verdict == "audio":
        fz.check_content(data, outcome.output, container)
    assert upstream.closes == upstream.bodies
