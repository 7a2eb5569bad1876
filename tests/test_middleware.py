"""The middleware over WSGI (WebTest): transform rules, sources, HTTP semantics.

Every audio output is checked with the PyAV oracle: no video stream, and the
audio packets identical to the source's (bytes, pts, dts, duration).
"""

from __future__ import annotations

import os

import pytest
from webtest import TestApp

from audio_middleware import AudioOnlyMiddleware

from .apps import CountingFile, FileApp, GeneratorApp, RangeApp, StaticApp, WriteApp, call
from .conftest import media_toolkit

MP4_KINDS = ["mp4_faststart", "mp4_moov_end", "mp4_mp3", "mp4_two_audio", "mov", "3gp", "m4a_audio_only",
             "mp4_fragmented", "mp4_largesize_co64", "mp4_moov_end_largesize_co64"]
FLV_KINDS = ["flv_aac", "flv_mp3"]
SOURCES = {"file": FileApp, "generator": GeneratorApp, "range": RangeApp, "write": WriteApp}
CONTENT_TYPES = {".mp4": "video/mp4", ".mov": "video/quicktime", ".3gp": "video/3gpp", ".m4a": "audio/mp4",
                 ".flv": "video/x-flv"}


def serve(path, source="file", **options):
    upstream = SOURCES[source](path, CONTENT_TYPES[path.suffix])
    return upstream, TestApp(AudioOnlyMiddleware(upstream, **options))


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("kind", MP4_KINDS)
def test_mp4_family_audio_is_identical(media, kind, source):
    path = media(kind)
    upstream, client = serve(path, source)
    status, first_headers, first_body = call(client.app)
    assert status == "200 OK"
    if kind == "mp4_fragmented" and source != "file":
        assert "Content-Length" not in dict(first_headers)  # streamed fragment by fragment...
    else:
        assert int(dict(first_headers)["Content-Length"]) == len(first_body)
    response = client.get("/v.mp4?ali_audio_only=1")
    assert response.status_int == 200
    expected_type = "audio/3gpp" if kind == "3gp" else "audio/mp4"
    assert response.content_type == expected_type
    _, headers, body = call(client.app)
    assert body == response.body == first_body
    assert int(dict(headers)["Content-Length"]) == len(body)  # ...and recorded: the next answers are sized
    media_toolkit.assert_audio_identical(path, response.body)
    assert upstream.closes == upstream.bodies


@pytest.mark.parametrize("kind", ["mov", "3gp", "mp4_faststart"])
def test_ftyp_and_brand_are_kept(media, kind):
    """MOV stays QuickTime and 3GP stays 3GPP: the source's ftyp is copied unchanged."""
    path = media(kind)
    _, client = serve(path, "file")
    body = client.get("/v?ali_audio_only=1").body
    source = path.read_bytes()
    size = int.from_bytes(source[:4], "big")
    assert source[4:8] == b"ftyp" and body[:size] == source[:size]


@pytest.mark.parametrize("source", ["file", "generator", "write"])
@pytest.mark.parametrize("kind", FLV_KINDS)
def test_flv_audio_is_identical(media, kind, source):
    path = media(kind)
    upstream, client = serve(path, source)
    response = client.get("/v.flv?ali_audio_only=1")
    assert response.status_int == 200
    assert response.content_type == "video/x-flv"
    assert response.body[:3] == b"FLV" and response.body[4] & 0x01 == 0 and response.body[4] & 0x04
    media_toolkit.assert_audio_identical(path, response.body)
    assert upstream.closes == upstream.bodies


def test_flv_forward_only_is_streamed_without_length(media):
    _, client = serve(media("flv_aac"), "generator")
    status, headers, body = call(client.app)
    headers = dict(headers)
    assert status == "200 OK" and body[:3] == b"FLV"
    assert "Content-Length" not in headers
    assert headers["Accept-Ranges"] == "none"


def _flv_tag_boundary(data: bytes) -> int:
    """The offset of a tag about half way into an FLV file (where a cut leaves a well-formed, shorter file)."""
    position = int.from_bytes(data[5:9], "big") + 4
    while position < len(data) // 2:
        position += 11 + int.from_bytes(data[position + 1:position + 4], "big") + 4
    return position


def test_a_stream_cut_short_without_content_length_is_not_recorded(media):
    """Without a Content-Length, a body cut at a tag boundary ends like a complete one: its plan must not be
    kept, or the next (complete) answers would be the short rendition, sized and seekable."""
    path = media("flv_aac")
    upstream = GeneratorApp(path, "video/x-flv", send_length=False, truncate_at=_flv_tag_boundary(path.read_bytes()))
    middleware = AudioOnlyMiddleware(upstream)
    short = call(middleware)[2]
    upstream.truncate_at = None
    status, headers, full = call(middleware)
    assert status == "200 OK" and len(full) > len(short) and "Content-Length" not in dict(headers)
    media_toolkit.assert_audio_identical(path, full)


def test_the_plan_cache_keeps_virtual_hosts_apart(media):
    """Two hosts serve different files at one path with the same validators (a deploy that stamps every file
    with one time, an app whose ETag is a release number)."""
    files = {"a.example": media("mp4_faststart"), "b.example": media("mp4_moov_end")}
    apps = {host: FileApp(path, etag='"release-7"') for host, path in files.items()}

    def by_host(environ, start_response):
        return apps[environ["HTTP_HOST"]](environ, start_response)

    middleware = AudioOnlyMiddleware(by_host)
    for host, path in [*files.items(), *files.items()]:
        status, _, body = call(middleware, HTTP_HOST=host)
        assert status == "200 OK"
        media_toolkit.assert_audio_identical(path, body)


def test_unflagged_request_returns_the_apps_own_iterable(media):
    path = media("mp4_faststart")
    upstream = GeneratorApp(path)
    sentinel = []
    middleware = AudioOnlyMiddleware(upstream)
    for query in ("", "ali_audio_only=0", "ali_audio_only=true", "ali_audio_only=", "other=1"):
        result = middleware({"REQUEST_METHOD": "GET", "QUERY_STRING": query, "PATH_INFO": "/v.mp4"},
                            lambda status, headers, exc_info=None: sentinel.append(status))
        assert type(result).__name__ == "TrackedBody"  # the very object the app returned
        assert b"".join(result) == path.read_bytes()
        result.close()


def test_unflagged_file_response_keeps_the_servers_file_wrapper(media):
    path = media("mp4_faststart")
    seen = []

    class ServerWrapper:
        def __init__(self, fileobj, block_size=8192):
            seen.append(fileobj)
            self.fileobj = fileobj

        def __iter__(self):
            return iter(lambda: self.fileobj.read(8192), b"")

        def close(self):
            self.fileobj.close()

    middleware = AudioOnlyMiddleware(FileApp(path))
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": "", "PATH_INFO": "/v.mp4", "wsgi.file_wrapper": ServerWrapper,
               "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    result = middleware(environ, lambda *a: None)
    assert isinstance(result, ServerWrapper)
    result.close()


def test_unflagged_body_is_byte_identical(media):
    path = media("mp4_moov_end")
    _, client = serve(path, "file")
    assert client.get("/v.mp4").body == path.read_bytes()
    assert client.get("/v.mp4?ali_audio_only=2").body == path.read_bytes()


def test_flagged_non_200_and_non_media_pass_through():
    cases = [
        StaticApp("404 Not Found", [("Content-Type", "text/plain")], b"nope"),
        StaticApp("304 Not Modified", [("ETag", '"x"')]),
        StaticApp("200 OK", [("Content-Type", "text/html")], b"<html>hello</html>"),
        StaticApp("200 OK", [("Content-Type", "video/webm")], b"\x1aE\xdf\xa3webm..."),
        StaticApp("200 OK", [("Content-Type", "application/octet-stream")], b"just some bytes, no container"),
    ]
    for upstream in cases:
        response = TestApp(AudioOnlyMiddleware(upstream)).get("/x?ali_audio_only=1", status="*")
        assert response.status == upstream.status
        assert response.body == upstream.payload
        assert upstream.closes == 1


def test_post_is_never_transformed(media):
    path = media("mp4_faststart")
    _, client = serve(path, "generator")
    assert client.post("/v.mp4?ali_audio_only=1", b"").body == path.read_bytes()


def test_octet_stream_mp4_is_sniffed(media):
    path = media("mp4_faststart")
    upstream = GeneratorApp(path, "application/octet-stream")
    response = TestApp(AudioOnlyMiddleware(upstream)).get("/v?ali_audio_only=1")
    assert response.content_type == "audio/mp4"
    media_toolkit.assert_audio_identical(path, response.body)


def test_app_sees_a_plain_get_for_the_whole_file(media):
    upstream, client = serve(media("mp4_faststart"), "generator")
    client.head("/v.mp4?ali_audio_only=1&audio_track=1&keep=yes", headers={"Range": "bytes=0-10",
                                                                           "If-None-Match": '"zzz"'})
    environ = upstream.environs[-1]
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["QUERY_STRING"] == "keep=yes"
    assert "HTTP_RANGE" not in environ and "HTTP_IF_NONE_MATCH" not in environ


@pytest.mark.parametrize("content_type", ["video/x-flv", "application/octet-stream"])
def test_an_flv_of_another_version_is_valid_but_unsupported(media, content_type):
    data = bytearray(media("flv_aac").read_bytes())
    data[3] = 2
    upstream = StaticApp("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(data)))], bytes(data))
    status, headers, body = call(AudioOnlyMiddleware(upstream))
    assert status.startswith("501") and b"version" in body


def test_video_only_is_404_with_reason(media):
    for kind in ("mp4_video_only", "flv_video_only"):
        path = media(kind)
        upstream, client = serve(path, "file")
        response = client.get("/v?ali_audio_only=1", status=404)
        assert response.content_type == "text/plain"
        assert "audio" in response.text
        assert upstream.closes == upstream.bodies


def test_garbage_that_claims_to_be_mp4_is_a_5xx_before_any_body(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 16 + b"\x00\x00\x10\x00moov" + b"junk" * 10)
    for source in ("file", "generator"):
        upstream, client = serve(bad, source)
        response = client.get("/bad.mp4?ali_audio_only=1", status="*")
        assert 500 <= response.status_int < 600
        assert response.content_type == "text/plain"
        assert "moov" in response.text
        assert upstream.closes == upstream.bodies


def test_moov_larger_than_limit_is_refused(media):
    _, client = serve(media("mp4_faststart"), "file", max_moov_size=100)
    response = client.get("/v.mp4?ali_audio_only=1", status=502)
    assert "max_moov_size" in response.text


def test_moov_at_end_larger_than_the_spool_limit_is_read_twice(media):
    """No Range, too large to spool: plan from a first pass (media data read past), send from a second call."""
    path = media("mp4_moov_end")
    upstream = GeneratorApp(path, "video/mp4")
    app = AudioOnlyMiddleware(upstream, spool_limit=1000)
    status, headers, body = call(app)
    assert status == "200 OK" and int(dict(headers)["Content-Length"]) == len(body)
    media_toolkit.assert_audio_identical(path, body)
    assert upstream.bodies == upstream.closes == 2
    assert call(app)[2] == body and upstream.bodies == 3  # then the plan is cached: one pass
    status, _, part = call(app, HTTP_RANGE="bytes=100-199")
    assert status == "206 Partial Content" and part == body[100:200]

    fresh = GeneratorApp(path, "video/mp4")
    status, headers, nothing = call(AudioOnlyMiddleware(fresh, spool_limit=1000), method="HEAD")
    assert status == "200 OK" and int(dict(headers)["Content-Length"]) == len(body) and nothing == b""
    assert fresh.bodies == fresh.closes == 1  # a HEAD needs the length only: no second call


@pytest.mark.parametrize("app_options", [{"etag": None, "last_modified": None}, {"send_length": False}],
                         ids=["no validators", "no Content-Length"])
def test_spool_limit_is_enforced_when_reading_twice_is_unsafe(media, app_options):
    """Without validators a second call may get another file; without a length the limit is found by spooling."""
    upstream = GeneratorApp(media("mp4_moov_end"), "video/mp4", **app_options)
    status, _, body = call(AudioOnlyMiddleware(upstream, spool_limit=1000))
    assert status == "502 Bad Gateway" and b"spool_limit" in body
    assert upstream.bodies == upstream.closes == 1


class SwappedApp(GeneratorApp):
    """Its second answer has another ETag: the file changed between the two calls."""

    def headers(self, length):
        if self.bodies >= 1:
            self.etag = '"v2"'
        return super().headers(length)


def test_a_file_that_changes_between_the_two_calls_is_refused(media):
    upstream = SwappedApp(media("mp4_moov_end"), "video/mp4")
    status, _, body = call(AudioOnlyMiddleware(upstream, spool_limit=1000))
    assert status == "502 Bad Gateway" and b"spool_limit" in body
    assert upstream.bodies == upstream.closes == 2


@pytest.mark.parametrize("cache_entries", [0, 256], ids=["streamed", "recorded"])
def test_head_matches_get_without_body(media, cache_entries):
    """HEAD and GET agree, whether the lazy FLV plan is streamed each time or was recorded by a first GET."""
    for kind, source in (("mp4_faststart", "file"), ("mp4_moov_end", "generator"), ("flv_aac", "generator")):
        upstream, client = serve(media(kind), source, cache_entries=cache_entries)
        first = call(client.app)
        head = call(client.app, method="HEAD")
        get = call(client.app)
        assert head[0] == get[0] == "200 OK"
        assert head[1] == get[1]
        assert head[2] == b"" and get[2] == first[2]
        sized = cache_entries or kind != "flv_aac"
        assert ("Content-Length" in dict(get[1])) == bool(sized)
        assert upstream.closes == upstream.bodies


def test_truncated_source_aborts_after_the_body_started(media):
    path = media("mp4_faststart")
    size = path.stat().st_size
    upstream = GeneratorApp(path, truncate_at=size - 5000)
    middleware = AudioOnlyMiddleware(upstream, block_size=4096)
    body = middleware({"REQUEST_METHOD": "GET", "QUERY_STRING": "ali_audio_only=1", "PATH_INFO": "/v.mp4"},
                      lambda status, headers, exc_info=None: None)
    received = b""
    with pytest.raises(Exception) as raised:
        for chunk in body:
            received += chunk
    assert "short" in str(raised.value) or "ends" in str(raised.value)
    assert received  # the body had started
    body.close()
    assert upstream.closes == 1


def test_upstream_closed_once_when_never_iterated_or_closed_early(media):
    path = media("mp4_faststart")
    for consume in (0, 1):
        upstream = GeneratorApp(path)
        middleware = AudioOnlyMiddleware(upstream, block_size=4096)
        body = middleware({"REQUEST_METHOD": "GET", "QUERY_STRING": "ali_audio_only=1", "PATH_INFO": "/v.mp4"},
                          lambda status, headers, exc_info=None: None)
        for _ in range(consume):
            next(iter(body))
        body.close()
        body.close()
        assert upstream.closes == 1


# -- Range, validators, caching --------------------------------------------------------------


@pytest.fixture
def mp4_client(media):
    return serve(media("mp4_moov_end"), "file")


def full_body(client):
    return client.get("/v.mp4?ali_audio_only=1").body


@pytest.mark.parametrize("header, expected", [
    ("bytes=0-99", slice(0, 100)),
    ("bytes=100-", slice(100, None)),
    ("bytes=-500", slice(-500, None)),
    ("bytes=5000-5999", slice(5000, 6000)),
    ("bytes=0-999999999", slice(0, None)),
])
def test_single_range_is_a_slice_of_the_full_body(mp4_client, header, expected):
    _, client = mp4_client
    full = full_body(client)
    response = client.get("/v.mp4?ali_audio_only=1", headers={"Range": header}, status=206)
    assert response.body == full[expected]
    first, last = response.headers["Content-Range"].split(" ")[1].split("/")[0].split("-")
    assert full[int(first):int(last) + 1] == response.body
    assert response.headers["Content-Range"].endswith(f"/{len(full)}")
    assert int(response.headers["Content-Length"]) == len(response.body)


class RecordingWrapper:
    """A server's ``wsgi.file_wrapper`` that remembers what it was given and iterates read()."""

    given: list = []

    def __init__(self, filelike, block_size=8192):
        RecordingWrapper.given.append(filelike)
        self.filelike = filelike

    def __iter__(self):
        return iter(lambda: self.filelike.read(8192), b"")

    def close(self):
        self.filelike.close()


class SendfileFromZeroWrapper(RecordingWrapper):
    """What uWSGI and gunicorn before 21 do with a file that has fileno(): send it from byte 0, whole."""

    def __iter__(self):
        if hasattr(self.filelike, "fileno"):
            fd = self.filelike.fileno()
            return iter([os.pread(fd, os.fstat(fd).st_size, 0)])
        return super().__iter__()


@pytest.mark.parametrize("server, sendfile", [
    ("gunicorn/27.0.1", True), ("gunicorn/21.0.0", True),
    ("gunicorn/20.1.0", False), ("uWSGI", False), (None, False),
])
def test_a_range_inside_one_large_span_goes_to_the_servers_file_wrapper(media, server, sendfile):
    """An audio-only MP4 is a new moov and one span: a range in that span is a region of the source file,
    with fileno() (sendfile) only for servers known to send from the file's position."""
    path = media("m4a_audio_only")
    app = FileApp(path, content_type="video/mp4")
    middleware = AudioOnlyMiddleware(app, block_size=4096)
    whole = call(middleware)[2]
    media_toolkit.assert_audio_identical(path, whole)
    RecordingWrapper.given = []
    environ = {"wsgi.file_wrapper": RecordingWrapper, **({"SERVER_SOFTWARE": server} if server else {})}
    status, _, part = call(middleware, HTTP_RANGE="bytes=-10000", **environ)
    assert status.startswith("206") and part == whole[-10000:]
    [region] = RecordingWrapper.given
    assert hasattr(region, "fileno") == sendfile
    assert region.name == str(path) and region.closed and app.closes == app.bodies
    with open(path, "rb") as source:  # the region starts where those bytes are in the source
        assert region.tell() == source.read().index(part) + len(part)
    if not sendfile:  # a server that would send the file from byte 0 still sends the right bytes
        environ["wsgi.file_wrapper"] = SendfileFromZeroWrapper
        assert call(middleware, HTTP_RANGE="bytes=-10000", **environ)[2] == whole[-10000:]
    # smaller than a block, or across a literal: read and joined as usual
    RecordingWrapper.given = []
    environ["wsgi.file_wrapper"] = RecordingWrapper
    assert call(middleware, HTTP_RANGE="bytes=-100", **environ)[2] == whole[-100:]
    assert call(middleware, HTTP_RANGE="bytes=0-", **environ)[2] == whole
    assert RecordingWrapper.given == [] and app.closes == app.bodies


class SendfileFromDescriptorWrapper(RecordingWrapper):
    """gunicorn 21+: ``sendfile`` from the descriptor's offset (``lseek``, not the Python file's position)."""

    count = 0  # the response's Content-Length, which gunicorn sends

    def __iter__(self):
        fd = self.filelike.fileno()
        return iter([os.pread(fd, self.count, os.lseek(fd, 0, os.SEEK_CUR))])


def test_a_sendfile_region_starts_at_the_descriptors_offset_when_the_app_read_the_file_first(media):
    """A buffered file the app read from (a type check) has its descriptor past the read-ahead: seeking
    inside the buffer does not move it, and gunicorn sends from the descriptor."""
    path = media("m4a_audio_only")
    size = path.stat().st_size

    def sniffing_app(environ, start_response):
        file = open(path, "rb")
        file.read(16)
        file.seek(0)
        start_response("200 OK", [("Content-Type", "video/mp4"), ("Content-Length", str(size))])
        return environ["wsgi.file_wrapper"](file)

    middleware = AudioOnlyMiddleware(sniffing_app, block_size=4096)
    whole = call(middleware)[2]
    for header, expected in (("bytes=-10000", whole[-10000:]), ("bytes=2000-30000", whole[2000:30001])):
        RecordingWrapper.given = []
        SendfileFromDescriptorWrapper.count = len(expected)
        environ = {"wsgi.file_wrapper": SendfileFromDescriptorWrapper, "SERVER_SOFTWARE": "gunicorn/27.0.1"}
        status, _, part = call(middleware, HTTP_RANGE=header, **environ)
        [region] = RecordingWrapper.given
        assert status.startswith("206") and hasattr(region, "fileno") and part == expected, header


def test_every_range_split_reassembles_the_body(media):
    for source in ("file", "generator", "range"):
        _, client = serve(media("mp4_faststart"), source)
        full = full_body(client)
        step = len(full) // 7 + 1
        parts = [client.get("/v.mp4?ali_audio_only=1", headers={"Range": f"bytes={i}-{i + step - 1}"}).body
                 for i in range(0, len(full), step)]
        assert b"".join(parts) == full


@pytest.mark.parametrize("source", ["file", "generator"])
@pytest.mark.parametrize("kind", ["mp4_faststart", "flv_aac"])
def test_a_suffix_longer_than_the_rendition_is_all_of_it(media, kind, source):
    """RFC 9110 14.1.2: ``bytes=-N`` with N past the length means the whole representation, as a 206."""
    path = media(kind)
    _, client = serve(path, source)
    full = client.get("/v?ali_audio_only=1").body
    for suffix in (len(full), len(full) + 1, 10**12):
        part = client.get("/v?ali_audio_only=1", headers={"Range": f"bytes=-{suffix}"}, status=206)
        assert part.body == full and part.headers["Content-Range"] == f"bytes 0-{len(full) - 1}/{len(full)}"


@pytest.mark.parametrize("source", ["file", "generator"])
@pytest.mark.parametrize("kind", ["mp4_faststart", "flv_aac", "mp4_fragmented"])
def test_a_range_on_head_is_ignored(media, kind, source):
    """RFC 9110 14.2: range handling is defined for GET only; HEAD answers as a GET without Range would."""
    _, client = serve(media(kind), source)
    plain = client.head("/v?ali_audio_only=1")
    ranged = client.head("/v?ali_audio_only=1", headers={"Range": "bytes=0-99"})
    assert ranged.status_int == plain.status_int == 200 and "Content-Range" not in ranged.headers
    assert ranged.headers.get("Content-Length") == plain.headers.get("Content-Length")


def test_the_videos_content_location_is_not_the_renditions(media):
    upstream = FileApp(media("mp4_faststart"))
    client = TestApp(AudioOnlyMiddleware(_with_header(upstream, "Content-Location", "/videos/v.mp4")))
    etag = client.get("/v.mp4?ali_audio_only=1").headers["ETag"]
    for headers, status in (({}, 200), ({"Range": "bytes=0-9"}, 206), ({"If-None-Match": etag}, 304)):
        response = client.get("/v.mp4?ali_audio_only=1", headers=headers, status=status)
        assert "Content-Location" not in response.headers


def _with_header(app, name, value):
    def wrapped(environ, start_response):
        return app(environ, lambda status, headers, exc_info=None: start_response(status, [*headers, (name, value)],
                                                                                    exc_info))
    return wrapped


def test_unsatisfiable_range_is_416(mp4_client):
    _, client = mp4_client
    length = len(full_body(client))
    response = client.get("/v.mp4?ali_audio_only=1", headers={"Range": f"bytes={length}-"}, status=416)
    assert response.headers["Content-Range"] == f"bytes */{length}"


def test_multiple_ranges_get_the_full_200(mp4_client):
    _, client = mp4_client
    response = client.get("/v.mp4?ali_audio_only=1", headers={"Range": "bytes=0-1,5-9"}, status=200)
    assert response.body == full_body(client)


def test_range_policies(media):
    path = media("mp4_faststart")
    _, ignore = serve(path, "file", range_policy="ignore")
    response = ignore.get("/v.mp4?ali_audio_only=1", headers={"Range": "bytes=0-9"}, status=200)
    assert response.headers["Accept-Ranges"] == "none"
    _, reject = serve(path, "file", range_policy="reject")
    reject.get("/v.mp4?ali_audio_only=1", headers={"Range": "bytes=0-9"}, status=416)
    reject.get("/v.mp4?ali_audio_only=1", status=200)
    with pytest.raises(ValueError):
        AudioOnlyMiddleware(lambda e, s: [], range_policy="sometimes")


def test_etag_is_derived_and_differs_from_the_source(mp4_client):
    upstream, client = mp4_client
    response = client.get("/v.mp4?ali_audio_only=1")
    etag = response.headers["ETag"]
    assert etag.startswith('"audio-') and etag != upstream.etag
    assert client.get("/v.mp4?ali_audio_only=1").headers["ETag"] == etag
    assert client.get("/v.mp4?ali_audio_only=1&audio_track=1").headers["ETag"] != etag
    assert response.headers["Last-Modified"] == client.get("/v.mp4").headers["Last-Modified"]
    upstream.etag = '"v2"'
    assert client.get("/v.mp4?ali_audio_only=1").headers["ETag"] != etag


def test_conditional_requests_get_304(mp4_client):
    upstream, client = mp4_client
    etag = client.get("/v.mp4?ali_audio_only=1").headers["ETag"]
    response = client.get("/v.mp4?ali_audio_only=1", headers={"If-None-Match": etag}, status=304)
    assert response.body == b"" and response.headers["ETag"] == etag
    client.get("/v.mp4?ali_audio_only=1", headers={"If-None-Match": upstream.etag}, status=200)
    last_modified = client.get("/v.mp4").headers["Last-Modified"]
    client.get("/v.mp4?ali_audio_only=1", headers={"If-Modified-Since": last_modified}, status=304)
    client.get("/v.mp4?ali_audio_only=1", headers={"If-Modified-Since": "Wed, 21 Oct 2020 07:28:00 GMT"},
               status=200)
    assert upstream.closes == upstream.bodies


def test_if_match_and_if_unmodified_since_get_412_in_rfc_9110_order(mp4_client):
    """RFC 9110 13.2.2: If-Match (strong), else If-Unmodified-Since, decide 412 before
    If-None-Match / If-Modified-Since decide 304; the app never sees them (they name the video)."""
    upstream, client = mp4_client
    full = client.get("/v.mp4?ali_audio_only=1")
    etag, modified = full.headers["ETag"], full.headers["Last-Modified"]
    before, after = "Sat, 01 Jan 2000 00:00:00 GMT", "Fri, 01 Jan 2100 00:00:00 GMT"
    cases = [
        ({"If-Match": '"nope"'}, 412),
        ({"If-Match": '"nope"', "Range": "bytes=100-"}, 412),
        ({"If-Match": f"W/{etag}"}, 412),  # strong comparison: a weak tag never matches
        ({"If-Match": etag}, 200),
        ({"If-Match": f'"x", {etag}'}, 200),
        ({"If-Match": "*"}, 200),
        ({"If-Match": etag, "If-Unmodified-Since": before}, 200),  # If-Match wins
        ({"If-Unmodified-Since": before}, 412),
        ({"If-Unmodified-Since": modified}, 200),
        ({"If-Unmodified-Since": after}, 200),
        ({"If-Modified-Since": before, "If-Match": '"nope"'}, 412),
        ({"If-None-Match": '"other"', "If-Match": '"nope"'}, 412),
        ({"If-None-Match": etag, "If-Match": etag}, 304),
        ({"If-None-Match": etag, "If-Unmodified-Since": after}, 304),
        ({"If-None-Match": f"W/{etag}"}, 304),  # weak comparison
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": '"other"', "If-Modified-Since": after}, 200),  # If-Modified-Since ignored
    ]
    for headers, status in cases:
        response = client.get("/v.mp4?ali_audio_only=1", headers=headers, status="*")
        assert response.status_int == status, headers
        if status == 200:
            assert response.body == full.body
        if status == 412:
            assert response.headers["Content-Type"].startswith("text/plain")
    assert not any("HTTP_IF_MATCH" in env or "HTTP_IF_UNMODIFIED_SINCE" in env for env in upstream.environs)
    assert upstream.closes == upstream.bodies


def test_preconditions_are_ignored_when_the_answer_would_be_an_error(media):
    """RFC 9110 13.2.1: no 304 or 412 for a rendition that does not exist (a track that is not there,
    a window past the end): the error it would get without them."""
    _, client = serve(media("mp4_faststart"), "file")
    for headers in ({"If-None-Match": "*"}, {"If-Match": '"x"'},
                    {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}):
        client.get("/v.mp4?ali_audio_only=1&audio_track=9", headers=headers, status=404)
        client.get("/v.mp4?ali_audio_only=1&start=1000", headers=headers, status=416)


@pytest.mark.parametrize("upstream", [
    StaticApp("200 OK", [("Content-Type", "video/mp4"), ("Content-Encoding", "gzip"), ("ETag", '"g1"')], b"\x1f\x8b.."),
    StaticApp("200 OK", [("Content-Type", "text/html"), ("ETag", '"h1"'),
                         ("Last-Modified", "Wed, 21 Oct 2026 07:28:00 GMT")], b"<html>"),
], ids=["gzip video", "html"])
def test_an_answer_passed_through_gets_the_conditionals_the_app_never_saw(upstream):
    """The conditional headers are taken off the app's request: for an answer we pass through, we evaluate
    them against the app's own validators."""
    middleware = AudioOnlyMiddleware(upstream)
    etag = dict(upstream.fixed_headers)["ETag"]
    assert call(middleware, HTTP_IF_MATCH='"other"')[0].startswith("412")
    status, headers, body = call(middleware, HTTP_IF_NONE_MATCH=etag)
    assert status.startswith("304") and body == b"" and dict(headers)["ETag"] == etag
    assert call(middleware, HTTP_IF_MATCH=etag)[::2] == ("200 OK", upstream.payload)
    assert upstream.closes == upstream.bodies == 3


def test_if_none_match_without_a_rendition_etag_is_never_a_304(media):
    """No validator to compare with: If-None-Match fails, and If-Modified-Since is ignored (RFC 9110 13.1.3)."""
    upstream = GeneratorApp(media("mp4_faststart"), etag=None, send_length=False)  # no ETag can be derived
    client = TestApp(AudioOnlyMiddleware(upstream))
    modified = client.get("/v.mp4?ali_audio_only=1").headers["Last-Modified"]
    client.get("/v.mp4?ali_audio_only=1", headers={"If-Modified-Since": modified}, status=304)
    client.get("/v.mp4?ali_audio_only=1", headers={"If-None-Match": '"x"', "If-Modified-Since": modified},
               status=200)


@pytest.mark.parametrize("headers", [{"Range": "bytes=0-1,5-6"}, {"Range": "bytes=0-1", "If-Range": '"stale"'},
                                     {"Range": "items=0-1"}])
def test_a_range_that_gets_the_whole_body_reads_a_stream_once(media, headers):
    """Only a Range answered with a 206 makes a streamed FLV walk its body first and call the app again."""
    upstream = GeneratorApp(media("flv_aac"), "video/x-flv")
    client = TestApp(AudioOnlyMiddleware(upstream))
    response = client.get("/v.flv?ali_audio_only=1", headers=headers, status=200)
    assert upstream.bodies == 1 and upstream.bytes_sent == media("flv_aac").stat().st_size
    media_toolkit.assert_audio_identical(media("flv_aac"), response.body)
    control = GeneratorApp(media("flv_aac"), "video/x-flv")
    TestApp(AudioOnlyMiddleware(control)).get("/v.flv?ali_audio_only=1", headers={"Range": "bytes=0-1"}, status=206)
    assert control.bodies == 2  # a 206: walked to its end, then answered from a second call


@pytest.mark.parametrize("kind", FLV_KINDS + ["mp4_faststart", "mp4_moov_end", "mp4_fragmented"])
def test_one_etag_one_rendition_whatever_the_source_kind(media, kind):
    """The same video served from a file, a stream or a Range-capable app: the same ETag, the same bytes
    (a resumed download with If-Range may join two of them)."""
    path = media(kind)
    answers = {}
    for source in ("file", "generator", "range"):
        _, client = serve(path, source)
        response = client.get("/v?ali_audio_only=1")
        answers[source] = (response.headers["ETag"], response.body)
    assert len(set(answers.values())) == 1, {source: len(body) for source, (_, body) in answers.items()}


def test_if_range(mp4_client):
    _, client = mp4_client
    full = client.get("/v.mp4?ali_audio_only=1")
    etag = full.headers["ETag"]
    fresh = client.get("/v.mp4?ali_audio_only=1", headers={"Range": "bytes=10-19", "If-Range": etag}, status=206)
    assert fresh.body == full.body[10:20]
    stale = client.get("/v.mp4?ali_audio_only=1", headers={"Range": "bytes=10-19", "If-Range": '"old"'}, status=200)
    assert stale.body == full.body
    by_date = client.get("/v.mp4?ali_audio_only=1", headers={"Range": "bytes=10-19",
                                                             "If-Range": full.headers["Last-Modified"]}, status=206)
    assert by_date.body == full.body[10:20]


def test_plan_cache_is_used_and_keyed_by_validators(media):
    path = media("mp4_faststart")
    upstream = FileApp(path, "video/mp4")
    middleware = AudioOnlyMiddleware(upstream)
    client = TestApp(middleware)
    first = client.get("/v.mp4?ali_audio_only=1").body
    assert middleware.cache.misses == 1 and len(middleware.cache) == 1
    assert client.get("/v.mp4?ali_audio_only=1", headers={"Range": "bytes=3-40"}).body == first[3:41]
    assert middleware.cache.hits == 1
    upstream.etag = '"changed"'
    client.get("/v.mp4?ali_audio_only=1")
    assert middleware.cache.misses == 2


def test_no_validators_no_cache_no_etag(media):
    upstream = GeneratorApp(media("mp4_faststart"), etag=None, last_modified=None)
    middleware = AudioOnlyMiddleware(upstream)
    response = TestApp(middleware).get("/v.mp4?ali_audio_only=1")
    assert "ETag" not in response.headers
    assert len(middleware.cache) == 0


# -- track selection --------------------------------------------------------------------------


@pytest.mark.parametrize("selector, kept", [("1", [0]), ("2", [1]), ("eng", [0]), ("fra", [1]), ("FRA", [1])])
def test_track_selection(media, selector, kept):
    path = media("mp4_two_audio")
    for source in ("file", "generator"):
        _, client = serve(path, source)
        response = client.get(f"/v.mp4?ali_audio_only=1&audio_track={selector}")
        assert media_toolkit.stream_types(response.body) == ["audio"]
        media_toolkit.assert_audio_identical(path, response.body, tracks=kept)


def test_fragmented_track_selection(media, tmp_path):
    path = media("mp4_two_audio")
    fragmented = tmp_path / "two_frag.mp4"
    import av

    with av.open(str(path)) as source, av.open(str(fragmented), "w", format="mp4", options={
            "movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    _, client = serve(fragmented, "file")
    response = client.get("/v.mp4?ali_audio_only=1&audio_track=2")
    media_toolkit.assert_audio_identical(fragmented, response.body, tracks=[1])


@pytest.mark.parametrize("selector, status", [("1", 200), ("2", 404), ("eng", 404)])
def test_an_flv_has_one_audio_track(media, selector, status):
    _, client = serve(media("flv_aac"), "file")
    response = client.get(f"/v.flv?ali_audio_only=1&audio_track={selector}", status="*")
    assert response.status_int == status
    if status == 200:
        media_toolkit.assert_audio_identical(media("flv_aac"), response.body)


@pytest.mark.parametrize("selector", ["3", "0", "deu"])
def test_unknown_track_is_404(media, selector):
    _, client = serve(media("mp4_two_audio"), "file")
    response = client.get(f"/v.mp4?ali_audio_only=1&audio_track={selector}", status=404)
    assert "track" in response.text


# -- random access: only the audio bytes are read -----------------------------------------------


def test_file_backed_source_reads_little_more_than_the_audio(video_heavy):
    opened = []

    def app(environ, start_response):
        counting = CountingFile(video_heavy)
        opened.append(counting)
        start_response("200 OK", [("Content-Type", "video/mp4"),
                                  ("Content-Length", str(video_heavy.stat().st_size))])
        return environ["wsgi.file_wrapper"](counting, 8192)

    response = TestApp(AudioOnlyMiddleware(app)).get("/v.mp4?ali_audio_only=1")
    media_toolkit.assert_audio_identical(video_heavy, response.body)
    read = opened[0].bytes_read
    size = video_heavy.stat().st_size
    assert read < 1.1 * len(response.body) + 4096, (read, len(response.body))
    assert read < size / 5, (read, size)


def test_range_capable_iterable_app_is_read_with_subrequests(video_heavy):
    upstream = RangeApp(video_heavy)
    response = TestApp(AudioOnlyMiddleware(upstream)).get("/v.mp4?ali_audio_only=1")
    media_toolkit.assert_audio_identical(video_heavy, response.body)
    assert upstream.range_requests > 0
    size = video_heavy.stat().st_size
    # the whole-file response is abandoned after its first blocks; sub-requests fetch the rest
    assert upstream.bytes_sent < size / 2, (upstream.bytes_sent, size)
    assert upstream.closes == upstream.bodies


def test_forward_only_moov_at_end_is_spooled(media):
    path = media("mp4_moov_end")
    upstream, client = serve(path, "generator")
    response = client.get("/v.mp4?ali_audio_only=1")
    assert int(response.headers["Content-Length"]) == len(response.body)
    media_toolkit.assert_audio_identical(path, response.body)


def test_sniffed_file_without_fileno_passes_through_intact(tmp_path):
    """A flagged octet-stream file that is not media: sniffing must not move its read position."""
    path = tmp_path / "notes.bin"
    path.write_bytes(b"plain bytes, not a container " * 100)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](CountingFile(path), 8192)

    assert TestApp(AudioOnlyMiddleware(app)).get("/n?ali_audio_only=1").body == path.read_bytes()


def test_warm_range_reads_only_the_bytes_of_the_range(video_heavy):
    """With the plan cached, a ranged request reads its slice (plus a 16-byte sniff), not the moov."""
    opened = []

    def app(environ, start_response):
        counting = CountingFile(video_heavy)
        opened.append(counting)
        start_response("200 OK", [("Content-Type", "video/mp4"), ("ETag", '"heavy"'),
                                  ("Content-Length", str(video_heavy.stat().st_size))])
        return environ["wsgi.file_wrapper"](counting, 8192)

    client = TestApp(AudioOnlyMiddleware(app))
    full = client.get("/v.mp4?ali_audio_only=1").body
    start = len(full) - 3000
    part = client.get("/v.mp4?ali_audio_only=1", headers={"Range": f"bytes={start}-"}, status=206)
    assert part.body == full[start:]
    assert opened[-1].bytes_read <= 3000 + 16


def test_download_name_of_an_mp4_rendition_becomes_m4a(media):
    path = media("mp4_faststart")

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "video/mp4"), ("Content-Length", str(path.stat().st_size)),
                                  ("Content-Disposition",
                                   "attachment; filename=\"Talk.MP4\"; filename*=UTF-8''T%C3%A4lk.mp4")])
        return [path.read_bytes()]

    client = TestApp(AudioOnlyMiddleware(app))
    disposition = client.get("/v?ali_audio_only=1").headers["Content-Disposition"]
    assert disposition == "attachment; filename=\"Talk.m4a\"; filename*=UTF-8''T%C3%A4lk.m4a"
    assert client.get("/v").headers["Content-Disposition"].endswith("lk.mp4")
