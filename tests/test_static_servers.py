"""The middleware in front of the static-file servers Python users serve videos with.

Apps behind it: WhiteNoise (plain WSGI, around Flask, and Django's ``WhiteNoiseMiddleware``),
``django.views.static.serve``, Django ``FileResponse`` with and without ``condition``,
werkzeug's ``SharedDataMiddleware`` and Flask's ``send_from_directory``; in process
(direct WSGI calls, so that headers, bytes and the ``wsgi.file_wrapper`` used are seen
raw), and the WhiteNoise and Django ones under a real gunicorn (gthread) with ``requests``.

What is checked against what:

* every flagged answer against the rendition the engine plans from the file on disk
  (:func:`reference`), that one against the source with the PyAV oracle
  (``assert_audio_identical``), and every status and header against the README's
  Behaviour table: Range slices, 416, HEAD = GET, 304/412 for the rendition's own
  validators, the app's own validators and Range never leaking onto the rendition;
* precompressed ``.gz``/``.br`` variants next to the videos (WhiteNoise serves them to a
  client that accepts them, as the unflagged checks prove): a flagged request never gets
  them, nor audio made from them;
* unflagged requests: the app's own status, headers and bytes, its file handed to the
  server's ``wsgi.file_wrapper`` (sendfile);
* ``rendition_cache``: filled (by a 200, or in the background after Safari's ``bytes=0-1``),
  then hit (the stored file goes to the server's ``wsgi.file_wrapper``).

Django's settings are process-wide, so its apps run in a subprocess (as in
``test_example_apps.py``) and in gunicorn, both through :func:`make_app`, configured by
``SC_STATIC`` (the served folder) and ``SC_STORE`` (a ``rendition_cache``, optional).
WhiteNoise is in the ``test`` extra; its tests skip where it is not installed.
"""

from __future__ import annotations

import datetime
import gzip
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

import pytest
import requests

try:
    from tests import media as media_toolkit
    from tests.servers import ROOT, run_gunicorn
except ImportError:  # tests/ itself on sys.path
    import media as media_toolkit  # type: ignore[no-redef]
    from servers import ROOT, run_gunicorn  # type: ignore[no-redef]

from audio_middleware import AudioOnlyMiddleware
from audio_middleware.emit import iter_plan_bytes
from audio_middleware.extract import plan_source
from audio_middleware.limits import Limits
from audio_middleware.sniff import by_signature
from audio_middleware.sources import FileSource

KINDS = ("mp4_faststart", "mp4_moov_end", "flv_aac", "mp4_fragmented")
#: Media type of each rendition (README: MP4 family -> audio/mp4, FLV stays video/x-flv).
RENDITION_TYPES = {".mp4": "audio/mp4", ".flv": "video/x-flv"}
#: What a browser sends: a flagged request must still get identity audio.
ACCEPTS_COMPRESSION = "gzip, deflate, br"
#: An hour ago: Last-Modified is then a strong validator (README, RFC 9110 8.8.2.2).
PAST = time.time() - 3600


# -- the served folder and the expected bytes ---------------------------------------------------------


def fill_static(folder: pathlib.Path, make: Callable[[str], pathlib.Path]) -> list[str]:
    """Copy the test videos into ``folder`` with precompressed variants next to them, all an hour old.

    The ``.br`` variant is not real Brotli (WhiteNoise never decodes it): it only has to be
    smaller than the video, so that a server that let Accept-Encoding through would pick it.
    """
    names = []
    for kind in KINDS:
        source = make(kind)
        target = folder / source.name
        shutil.copy(source, target)
        data = target.read_bytes()
        (folder / f"{source.name}.gz").write_bytes(gzip.compress(data))
        (folder / f"{source.name}.br").write_bytes(b"not-brotli" + gzip.compress(data, 1)[: len(data) // 3])
        for path in (target, folder / f"{source.name}.gz", folder / f"{source.name}.br"):
            os.utime(path, (PAST, PAST))
        names.append(source.name)
    return names


def reference(path: pathlib.Path) -> bytes:
    """The rendition the engine plans from the file itself (what any app serving it must lead to)."""
    with open(path, "rb") as file:
        source = FileSource(file)
        plan = plan_source(by_signature(source.read(0, 16)), source, Limits())
        return b"".join(iter_plan_bytes(plan.pieces, source))


# -- raw WSGI calls --------------------------------------------------------------------------------------


class MarkedWrapper:
    """A server's ``wsgi.file_wrapper`` that records the name of each file it is handed (sendfile's input)."""

    handed: list[str] = []
    #: Whether the last :func:`fetch` got an instance of this class as the body (what a server sendfiles).
    returned = False

    def __init__(self, file: object, block_size: int = 8192) -> None:
        MarkedWrapper.handed.append(str(getattr(file, "name", type(file).__name__)))
        self.file, self.block_size = file, block_size

    def __iter__(self) -> Iterator[bytes]:
        while block := self.file.read(self.block_size):  # type: ignore[attr-defined]
            yield block

    def close(self) -> None:
        self.file.close()  # type: ignore[attr-defined]


def fetch(app: Callable, path: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers without Date, body) of one WSGI call, its body closed; ``headers`` as ``Range=...``."""
    seen: dict = {}

    def start_response(status: str, response_headers: list, exc_info: object = None) -> Callable:
        seen["status"], seen["headers"] = status, response_headers
        return lambda data: None

    target, _, query = path.partition("?")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": target, "QUERY_STRING": query, "SERVER_NAME": "testserver",
               "SERVER_PORT": "80", "HTTP_HOST": "testserver", "SERVER_PROTOCOL": "HTTP/1.1",
               "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr,
               "wsgi.version": (1, 0), "wsgi.multithread": False, "wsgi.multiprocess": False,
               "wsgi.run_once": False, "wsgi.file_wrapper": MarkedWrapper, "SCRIPT_NAME": ""}
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    result = app(environ, start_response)
    MarkedWrapper.returned = isinstance(result, MarkedWrapper)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    found = {name: value for name, value in seen["headers"] if name.lower() != "date"}
    return int(seen["status"].split()[0]), found, body


def _slice(reference_body: bytes, content_range: str) -> bytes:
    first, last = content_range.split()[1].split("/")[0].split("-")
    return reference_body[int(first):int(last) + 1]


# -- the checks, shared by the in-process, subprocess (Django) and nothing else --------------------------


def probe(app: Callable, inner: Callable, url: str, file: pathlib.Path, *, validated: bool = True) -> list[str]:
    """Every documented behaviour of a flagged request for ``url`` (the file ``file``); the discrepancies.

    ``inner`` is the app without the middleware: an unflagged request must get its very answer.
    ``validated``: the app sends a validator (an ETag, or a Last-Modified an hour old); without one
    the rendition has neither (README: no ETag, no 304) and the conditional checks do not apply.
    """
    expected = reference(file)
    length = len(expected)
    flagged = url + "?ali_audio_only=1"
    problems: list[str] = []

    def check(what: str, condition: bool) -> None:
        if not condition:
            problems.append(what)

    status, headers, body = fetch(app, flagged, Accept_Encoding=ACCEPTS_COMPRESSION)
    own_status, own, _ = fetch(inner, url)
    check(f"GET: status {status}", status == 200)
    check(f"GET: {len(body)} bytes, not the rendition's {length}", body == expected)
    check(f"GET: Content-Length {headers.get('Content-Length')}", headers.get("Content-Length") == str(length))
    check(f"GET: Content-Type {headers.get('Content-Type')}",
          headers.get("Content-Type") == RENDITION_TYPES[file.suffix])
    check(f"GET: Content-Encoding {headers.get('Content-Encoding')}", "Content-Encoding" not in headers)
    check("GET: Accept-Ranges", headers.get("Accept-Ranges") == "bytes")
    etag = headers.get("ETag", "")
    if validated:
        check(f"GET: ETag {etag!r} is not strong", etag.startswith('"'))
        check(f"GET: ETag {etag!r} is the video's", etag != own.get("ETag"))
    else:
        check(f"GET: ETag {etag!r} without a validator", "ETag" not in headers and "ETag" not in own)
    check("GET: Last-Modified is not the video's", own_status == 200 and headers.get("Last-Modified") ==
          own.get("Last-Modified"))

    head_status, head_headers, head_body = fetch(app, flagged, "HEAD")
    check(f"HEAD: {head_status} {head_headers} != GET's {headers}",
          (head_status, head_headers) == (status, headers) and head_body == b"")
    head_status, head_headers, _ = fetch(app, flagged, "HEAD", Range="bytes=0-1")
    check("HEAD with Range is not the GET without it", (head_status, head_headers) == (status, headers))

    for spec in ("bytes=0-1", "bytes=0-", "bytes=100-199", "bytes=-300", f"bytes={length // 2}-",
                 f"bytes={length - 10}-{length + 1000}"):
        status, part_headers, part = fetch(app, flagged, Range=spec)
        content_range = part_headers.get("Content-Range", "")
        check(f"{spec}: {status} {content_range}", status == 206 and content_range.endswith(f"/{length}"))
        if status == 206:
            check(f"{spec}: not the slice {content_range} of the rendition", part == _slice(expected, content_range)
                  and part_headers.get("Content-Length") == str(len(part)))
    status, part_headers, _ = fetch(app, flagged, Range=f"bytes={length}-")
    check(f"bytes={length}-: {status}", status == 416 and part_headers.get("Content-Range") == f"bytes */{length}")
    if validated:
        status, _, part = fetch(app, flagged, Range="bytes=0-1", If_Range='"stale"')
        check(f"stale If-Range: {status}", status == 200 and part == expected)
        status, _, part = fetch(app, flagged, Range="bytes=0-1", If_Range=etag)
        check(f"If-Range with the rendition's ETag: {status}", status == 206 and part == expected[:2])

        status, not_modified, part = fetch(app, flagged, If_None_Match=etag)
        check(f"If-None-Match rendition: {status}", status == 304 and not_modified.get("ETag") == etag and part == b"")
        status, _, _ = fetch(app, flagged, "HEAD", If_None_Match=etag)
        check(f"HEAD If-None-Match rendition: {status}", status == 304)
        status, not_modified, _ = fetch(app, flagged, If_Modified_Since=headers.get("Last-Modified", ""))
        check(f"If-Modified-Since = Last-Modified: {status} {not_modified}",
              status == 304 and not_modified.get("ETag") == etag)
        status, _, part = fetch(app, flagged, If_Modified_Since="Sat, 01 Jan 2000 00:00:00 GMT")
        check(f"If-Modified-Since long ago: {status}", status == 200 and part == expected)
        status, _, _ = fetch(app, flagged, If_Match='"not-it"')
        check(f"If-Match other: {status}", status == 412)
        status, _, part = fetch(app, flagged, If_Match=etag)
        check(f"If-Match rendition: {status}", status == 200 and part == expected)
        status, _, _ = fetch(app, flagged, If_Unmodified_Since="Sat, 01 Jan 2000 00:00:00 GMT")
        check(f"If-Unmodified-Since long ago: {status}", status == 412)

    # The app's own validators and Range handling must not reach the rendition (its request went without them).
    if own.get("ETag"):
        status, _, part = fetch(app, flagged, If_None_Match=own["ETag"])
        check(f"the video's ETag in If-None-Match: {status}", status == 200 and part == expected)
        status, _, part = fetch(app, flagged, Range="bytes=0-1", If_Range=own["ETag"])
        check(f"the video's ETag in If-Range: {status}", status == 200 and part == expected)
    status, _, part = fetch(app, flagged, Range=f"bytes=0-{length + 5000}")
    check(f"a range past the rendition's end but inside the video's: {status}", status == 206 and part == expected)

    # Unflagged: the app's very answer, its file handed to the server's wrapper (sendfile).
    for extra in ({}, {"Accept_Encoding": ACCEPTS_COMPRESSION}, {"Range": "bytes=0-99"},
                  {"If_None_Match": own.get("ETag") or '"x"'}, {"If_Modified_Since": own.get("Last-Modified", "")}):
        MarkedWrapper.handed.clear()
        through = fetch(app, url, **extra)
        wrapped, returned = list(MarkedWrapper.handed), MarkedWrapper.returned
        MarkedWrapper.handed.clear()
        direct = fetch(inner, url, **extra)
        check(f"unflagged {extra}: {through[:2]} != the app's {direct[:2]}", through == direct)
        check(f"unflagged {extra}: the server's file wrapper got {wrapped}, the app's {MarkedWrapper.handed}",
              (wrapped, returned) == (MarkedWrapper.handed, MarkedWrapper.returned))
    return problems


def store_probe(build: Callable[[str], Callable], url: str, file: pathlib.Path) -> list[str]:
    """``rendition_cache``: Safari's pattern fills it in the background, then it is hit; a 200 fills it too.

    ``build(directory)`` makes the middleware (around the app) with that store.
    """
    expected = reference(file)
    flagged = url + "?ali_audio_only=1"
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        app = build(first)
        status, _, part = fetch(app, flagged, Range="bytes=0-1")
        if status != 206 or part != expected[:2]:
            problems.append(f"bytes=0-1: {status}")
        app.renditions.join_fills(10)  # type: ignore[attr-defined]
        stored = sorted(pathlib.Path(first).glob("*.audio"))
        if [path.read_bytes() for path in stored] != [expected]:
            problems.append(f"after bytes=0-1 the store holds {[path.stat().st_size for path in stored]}")
        for spec, want in (("bytes=0-", expected), (f"bytes={len(expected) // 3}-", expected[len(expected) // 3:])):
            MarkedWrapper.handed.clear()
            status, _, part = fetch(app, flagged, Range=spec)
            if status != 206 or part != want:
                problems.append(f"{spec} from the store: {status}")
            if not (MarkedWrapper.handed and MarkedWrapper.handed[-1].startswith(first)):
                problems.append(f"{spec}: not sent from the stored file, but {MarkedWrapper.handed}")
        get, head = fetch(app, flagged), fetch(app, flagged, "HEAD")
        if get[2] != expected or head[:2] != get[:2] or head[2]:
            problems.append(f"stored GET/HEAD: {get[:2]} / {head[:2]}")
        if fetch(app, flagged, If_None_Match=get[1].get("ETag", "?"))[0] != 304:
            problems.append("no 304 from the store")

        fresh = build(second)
        planned = fetch(fresh, flagged)
        if [path.read_bytes() for path in pathlib.Path(second).glob("*.audio")] != [expected]:
            problems.append("a 200 did not fill the store")
        if planned[:2] != get[:2]:
            problems.append(f"stored answer {get[:2]} != planned answer {planned[:2]}")
    return problems


# -- the apps --------------------------------------------------------------------------------------------


def not_found(environ: dict, start_response: Callable) -> list[bytes]:
    """What WhiteNoise and SharedDataMiddleware fall back to."""
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


def _static_root() -> pathlib.Path:
    return pathlib.Path(os.environ["SC_STATIC"])


def _file_etag(request: object, name: str) -> str:
    stat = (_static_root() / name).stat()
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _file_mtime(request: object, name: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp((_static_root() / name).stat().st_mtime, tz=datetime.timezone.utc)


#: ROOT_URLCONF of the Django app is this module: filled by :func:`django_handler`.
urlpatterns: list = []


def django_handler() -> Callable:
    """Django (settings from ``SC_STATIC``) serving the folder four ways; call once per process.

    ``/static/``: WhiteNoiseMiddleware (STATIC_ROOT), when installed; ``/media/``: ``static.serve``;
    ``/plain/``: ``FileResponse``; ``/cond/``: ``FileResponse`` under ``condition`` (ETag + Last-Modified).
    """
    import django
    from django.conf import settings
    from django.http import FileResponse
    from django.urls import path, re_path
    from django.views.decorators.http import condition
    from django.views.static import serve

    def media(request: object, name: str) -> object:
        return serve(request, name, document_root=str(_static_root()))

    def plain(request: object, name: str) -> object:
        return FileResponse((_static_root() / name).open("rb"))

    @condition(etag_func=_file_etag, last_modified_func=_file_mtime)
    def conditional(request: object, name: str) -> object:
        return FileResponse((_static_root() / name).open("rb"))

    urlpatterns[:] = [re_path(r"^media/(?P<name>.+)$", media), path("plain/<str:name>", plain),
                      path("cond/<str:name>", conditional)]
    try:
        import whitenoise  # noqa: F401
        middleware = ["whitenoise.middleware.WhiteNoiseMiddleware"]
    except ImportError:
        middleware = []
    settings.configure(DEBUG=False, SECRET_KEY="static-servers-test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
                       INSTALLED_APPS=[], MIDDLEWARE=middleware, STATIC_URL="/static/",
                       STATIC_ROOT=str(_static_root()), DATABASES={}, USE_TZ=True)
    django.setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def whitenoise_app(root: pathlib.Path) -> Callable:
    from whitenoise import WhiteNoise

    return WhiteNoise(not_found, root=str(root), prefix="wn/")


def make_app() -> Callable:
    """gunicorn's app (``tests.test_static_servers:make_app()``): ``/wn/`` WhiteNoise, the rest Django."""
    store = os.environ.get("SC_STORE") or None
    django_app = AudioOnlyMiddleware(django_handler(), rendition_cache=store)
    try:
        whitenoise = AudioOnlyMiddleware(whitenoise_app(_static_root()), rendition_cache=store)
    except ImportError:  # the WhiteNoise tests skip; the Django ones still run
        whitenoise = not_found

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        chosen = whitenoise if environ.get("PATH_INFO", "").startswith("/wn/") else django_app
        return chosen(environ, start_response)

    return app


# -- in process: WhiteNoise, SharedDataMiddleware, Flask -------------------------------------------------


@pytest.fixture(scope="module")
def static(media, tmp_path_factory) -> tuple[pathlib.Path, list[str]]:
    folder = tmp_path_factory.mktemp("static")
    return folder, fill_static(folder, media)


def _whitenoise_flask(root: pathlib.Path) -> Callable:
    import flask
    from whitenoise import WhiteNoise

    app = flask.Flask("static_servers_whitenoise")
    app.wsgi_app = WhiteNoise(app.wsgi_app, root=str(root), prefix="wn/")  # type: ignore[method-assign]
    return app.wsgi_app


def _shared_data(root: pathlib.Path) -> Callable:
    from werkzeug.middleware.shared_data import SharedDataMiddleware

    return SharedDataMiddleware(not_found, {"/wn": str(root)})


def _send_from_directory(root: pathlib.Path) -> Callable:
    import flask

    app = flask.Flask("static_servers_send_from_directory")
    app.add_url_rule("/wn/<path:name>", "media", lambda name: flask.send_from_directory(root, name))
    return app.wsgi_app


INNER = {"whitenoise": whitenoise_app, "flask_whitenoise": _whitenoise_flask, "shared_data": _shared_data,
         "send_from_directory": _send_from_directory}


def _inner(server: str, root: pathlib.Path) -> Callable:
    if "whitenoise" in server:
        pytest.importorskip("whitenoise")
    return INNER[server](root)


@pytest.mark.parametrize("kind", KINDS)
def test_the_reference_is_the_sources_audio(static, kind):
    """The expected bytes are right: audio only, every packet the source's (PyAV)."""
    folder, names = static
    file = folder / names[KINDS.index(kind)]
    media_toolkit.assert_audio_identical(file, reference(file))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("server", sorted(INNER))
def test_documented_behaviour(static, server, kind):
    folder, names = static
    inner = _inner(server, folder)
    assert probe(AudioOnlyMiddleware(inner), inner, f"/wn/{names[KINDS.index(kind)]}",
                 folder / names[KINDS.index(kind)]) == []


@pytest.mark.parametrize("kind", ["mp4_moov_end", "flv_aac"])
@pytest.mark.parametrize("server", sorted(INNER))
def test_rendition_cache(static, server, kind):
    folder, names = static
    inner = _inner(server, folder)
    name = names[KINDS.index(kind)]
    assert store_probe(lambda store: AudioOnlyMiddleware(inner, rendition_cache=store), f"/wn/{name}",
                       folder / name) == []


def test_whitenoise_serves_its_compressed_variants_only_unflagged(static):
    """The trap is real: WhiteNoise answers a client accepting gzip/br with the precompressed bytes;
    a flagged request gets identity audio, and a flagged request for a non-media file the identity file."""
    pytest.importorskip("whitenoise")
    folder, names = static
    (folder / "notes.txt").write_text("not a video " * 200)
    (folder / "notes.txt.gz").write_bytes(gzip.compress((folder / "notes.txt").read_bytes()))
    inner = whitenoise_app(folder)
    app = AudioOnlyMiddleware(inner)
    for name in names:
        for encoding in ("gzip", "br"):
            status, headers, body = fetch(app, f"/wn/{name}", Accept_Encoding=encoding)
            assert headers.get("Content-Encoding") == encoding
            assert body == (folder / f"{name}.{encoding[:2]}").read_bytes()
            status, headers, body = fetch(app, f"/wn/{name}?ali_audio_only=1", Accept_Encoding=encoding)
            assert "Content-Encoding" not in headers and body == reference(folder / name)
    status, headers, body = fetch(app, "/wn/notes.txt?ali_audio_only=1", Accept_Encoding="gzip")
    assert status == 200 and "Content-Encoding" not in headers and body == (folder / "notes.txt").read_bytes()
    assert fetch(app, "/wn/notes.txt?ali_audio_only=1", If_None_Match=headers["ETag"])[0] == 304


def test_whitenoise_must_be_inside_the_middleware(static):
    """docs/flask.md: WhiteNoise added around the middleware answers first, so the flagged request gets
    the video itself (why the docs say to wrap it first); inside, the rendition."""
    pytest.importorskip("whitenoise")
    import flask
    from whitenoise import WhiteNoise

    folder, names = static
    app = flask.Flask("static_servers_wrong_order")
    app.wsgi_app = AudioOnlyMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    app.wsgi_app = WhiteNoise(app.wsgi_app, root=str(folder), prefix="wn/")  # type: ignore[method-assign]
    status, headers, body = fetch(app.wsgi_app, f"/wn/{names[0]}?ali_audio_only=1")
    assert (status, headers["Content-Type"], body) == (200, "video/mp4", (folder / names[0]).read_bytes())
    status, headers, body = fetch(AudioOnlyMiddleware(_whitenoise_flask(folder)), f"/wn/{names[0]}?ali_audio_only=1")
    assert (status, headers["Content-Type"], body) == (200, "audio/mp4", reference(folder / names[0]))


def test_compressed_bytes_served_as_video_are_never_labelled_audio(static):
    """A ``.mp4.gz`` URL: Flask sends it with Content-Encoding (passed through untouched); werkzeug's
    SharedDataMiddleware labels it video/mp4 without one (a 502 before any byte, never audio)."""
    folder, names = static
    name = names[0] + ".gz"
    for server in ("send_from_directory", "shared_data"):
        inner = _inner(server, folder)
        status, headers, body = fetch(AudioOnlyMiddleware(inner), f"/wn/{name}?ali_audio_only=1")
        assert headers.get("Content-Type") not in RENDITION_TYPES.values()
        if "Content-Encoding" in fetch(inner, f"/wn/{name}")[1]:
            assert (status, headers, body) == fetch(inner, f"/wn/{name}")
        else:
            assert status == 502


def test_flask_x_sendfile_is_refused_before_any_byte(static):
    """Flask's USE_X_SENDFILE sends an empty body and leaves the file to the front server, which the
    middleware cannot transform: a 501 saying so, that carries no X-Sendfile (the front server would
    replace any body with the video), as docs/flask.md says (it was a 502 'body ends at byte 0')."""
    import flask

    folder, names = static
    app = flask.Flask("static_servers_x_sendfile")
    app.config["USE_X_SENDFILE"] = True
    app.add_url_rule("/wn/<path:name>", "media", lambda name: flask.send_from_directory(folder, name))
    status, headers, body = fetch(AudioOnlyMiddleware(app.wsgi_app), f"/wn/{names[0]}?ali_audio_only=1")
    assert status == 501 and "X-Sendfile" not in headers and b"front server (X-Sendfile)" in body


@pytest.mark.parametrize("content_type", ["video/mp4", "application/octet-stream", None])
def test_x_accel_redirect_is_refused_unless_the_type_says_it_is_not_media(content_type):
    """nginx's X-Accel-Redirect with an empty body: a 501 for an MP4/FLV or unknown type (it passed a generic
    one through, and nginx then sent the whole video for the flagged request); a non-media type still
    passes through untouched."""
    def app(environ, start_response):
        headers = [("X-Accel-Redirect", "/protected/v.mp4"), ("Content-Length", "0")]
        start_response("200 OK", headers + ([("Content-Type", content_type)] if content_type else []))
        return [b""]

    status, headers, body = fetch(AudioOnlyMiddleware(app), "/v.mp4?ali_audio_only=1")
    assert status == 501 and "X-Accel-Redirect" not in headers and b"front server (X-Accel-Redirect)" in body

    def page(environ, start_response):
        start_response("200 OK", [("X-Accel-Redirect", "/protected/a.pdf"), ("Content-Type", "application/pdf")])
        return [b""]

    status, headers, _ = fetch(AudioOnlyMiddleware(page), "/a.pdf?ali_audio_only=1")
    assert status == 200 and headers["X-Accel-Redirect"] == "/protected/a.pdf"


# -- Django, in a subprocess -----------------------------------------------------------------------------

DJANGO_PREFIXES = ("/static/", "/media/", "/cond/", "/plain/")

_DJANGO_PROBES = r"""
import json, pathlib, sys
from audio_middleware import AudioOnlyMiddleware
from tests import test_static_servers as t

handler = t.django_handler()
folder, names, prefixes = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
found = {}
for prefix in prefixes:
    for name in names:
        found[prefix + name] = t.probe(AudioOnlyMiddleware(handler), handler, prefix + name, folder / name,
                                       validated=prefix != "/plain/")
        if prefix != "/plain/":
            found["store " + prefix + name] = t.store_probe(
                lambda store: AudioOnlyMiddleware(handler, rendition_cache=store), prefix + name, folder / name)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def django_probes(static) -> dict[str, list[str]]:
    folder, names = static
    env = {**os.environ, "SC_STATIC": str(folder),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, "-c", _DJANGO_PROBES, str(folder), json.dumps(names),
                           json.dumps(DJANGO_PREFIXES)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"Django probes failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefix", ["/static/", "/media/", "/cond/"])
def test_django_documented_behaviour(django_probes, static, prefix, kind):
    """WhiteNoiseMiddleware (STATIC files), ``static.serve`` (Last-Modified, no ETag, its own 304),
    ``FileResponse`` under ``condition``: every behaviour, and the rendition store."""
    if prefix == "/static/":
        pytest.importorskip("whitenoise")
    name = static[1][KINDS.index(kind)]
    assert django_probes[prefix + name] == []
    assert django_probes["store " + prefix + name] == []


@pytest.mark.parametrize("kind", KINDS)
def test_django_file_response_without_validators(django_probes, static, kind):
    """A bare ``FileResponse`` has no validator: the rendition has no ETag and no Last-Modified (so no 304,
    no store, docs/django.md), and everything else holds."""
    assert django_probes["/plain/" + static[1][KINDS.index(kind)]] == []


# -- under gunicorn ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gunicorn_server(static, tmp_path_factory):
    folder, names = static
    store = tmp_path_factory.mktemp("store")
    for prefix in ("wn", "media"):  # overwritten by test_gunicorn_rendition_cache_is_hit
        shutil.copy(folder / names[KINDS.index("mp4_moov_end")], folder / f"hit_{prefix}.mp4")
        os.utime(folder / f"hit_{prefix}.mp4", (PAST, PAST))
    env = {"SC_STATIC": str(folder), "SC_STORE": str(store)}
    with run_gunicorn("tests.test_static_servers:make_app()", env=env, threads=4) as url:
        yield url, folder, names, store


@pytest.mark.server
@pytest.mark.parametrize("prefix", ["/wn/", "/static/", "/media/"])
def test_gunicorn(gunicorn_server, prefix):
    """Real HTTP through gunicorn's gthread worker (its Date, its sendfile): Safari's pattern, a seek,
    the full download, HEAD, 304s, the video's validators not leaking, unflagged = the file."""
    if prefix in ("/wn/", "/static/"):
        pytest.importorskip("whitenoise")
    url, folder, names, _ = gunicorn_server
    with requests.Session() as session:
        for name in names:
            expected = reference(folder / name)
            target = f"{url}{prefix}{name}?ali_audio_only=1"
            probe_part = session.get(target, headers={"Range": "bytes=0-1"}, timeout=30)
            assert probe_part.status_code == 206 and probe_part.content == expected[:2], name
            assert probe_part.headers["Content-Range"] == f"bytes 0-1/{len(expected)}"
            whole = session.get(target, headers={"Range": "bytes=0-"}, timeout=30)
            assert whole.status_code == 206 and whole.content == expected, name
            seek = session.get(target, headers={"Range": f"bytes={len(expected) // 2}-"}, timeout=30)
            assert seek.status_code == 206 and seek.content == expected[len(expected) // 2:], name
            full = session.get(target, headers={"Accept-Encoding": ACCEPTS_COMPRESSION}, timeout=30)
            assert full.status_code == 200 and full.content == expected, name
            assert "Content-Encoding" not in full.headers and full.headers["Content-Length"] == str(len(expected))
            head = session.head(target, timeout=30)
            assert {**head.headers, "Date": ""} == {**full.headers, "Date": ""} and not head.content
            etag = full.headers["ETag"]
            assert etag.startswith('"')
            assert session.get(target, headers={"If-None-Match": etag}, timeout=30).status_code == 304
            since = {"If-Modified-Since": full.headers["Last-Modified"]}
            assert session.get(target, headers=since, timeout=30).status_code == 304
            plain = session.get(f"{url}{prefix}{name}", headers={"Accept-Encoding": "identity"}, timeout=30)
            assert plain.content == (folder / name).read_bytes()
            if "ETag" in plain.headers:  # the video's: the app never sees it, the rendition does not match it
                leaked = session.get(target, headers={"If-None-Match": plain.headers["ETag"]}, timeout=30)
                assert leaked.status_code == 200 and leaked.content == expected, name


@pytest.mark.server
@pytest.mark.parametrize("prefix", ["/wn/", "/media/"])
def test_gunicorn_rendition_cache_is_hit(gunicorn_server, prefix):
    """After one full download the store answers: the video's bytes past its first 16 are then
    never read (README), so a same-size, same-date copy with its audio overwritten still gets
    the stored rendition (while a planned answer would read the overwritten bytes)."""
    if prefix == "/wn/":
        pytest.importorskip("whitenoise")
    url, folder, _, store = gunicorn_server
    name = f"hit_{prefix.strip('/')}.mp4"
    expected = reference(folder / name)
    target = f"{url}{prefix}{name}?ali_audio_only=1"
    stored_before = len(list(store.glob("*.audio")))
    first = requests.get(target, timeout=30)
    assert first.status_code == 200 and first.content == expected
    deadline = time.monotonic() + 10
    while len(list(store.glob("*.audio"))) == stored_before and time.monotonic() < deadline:
        time.sleep(0.05)
    data = bytearray((folder / name).read_bytes())
    data[16:] = bytes(len(data) - 16)
    (folder / name).write_bytes(bytes(data))
    os.utime(folder / name, (PAST, PAST))
    again = requests.get(target, timeout=30)
    assert again.status_code == 200 and again.content == expected
    part = requests.get(target, headers={"Range": "bytes=100-"}, timeout=30)
    assert part.status_code == 206 and part.content == expected[100:]
