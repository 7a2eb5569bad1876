"""The middleware under a real gunicorn on 127.0.0.1, with ``requests`` as the client."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
import requests

from .conftest import media_toolkit
from .servers import run_gunicorn

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(media, video_heavy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    for kind in ("mp4_faststart", "mp4_moov_end", "flv_aac", "mp4_fragmented"):
        shutil.copy(media(kind), folder / media(kind).name)
    shutil.copy(video_heavy, folder / "heavy.mp4")
    remux_faststart(video_heavy, folder / "heavy_faststart.mp4")
    repeat_audio(media("m4a_audio_only"), folder / "long_audio_only.mp4", times=12)
    close_log = folder / "closes.log"
    close_log.touch()
    env = {"AM_MEDIA_DIR": str(folder), "AM_CLOSE_LOG": str(close_log)}
    with run_gunicorn("tests.server_apps:app", env=env, threads=4) as url:
        yield url, folder, close_log


def repeat_audio(source, target, times):
    """An audio-only MP4 (moov in front) holding the audio packets of ``source`` ``times`` times over."""
    import av

    with av.open(str(target), "w", format="mp4", options={"movflags": "faststart"}) as out:
        shift, stream = 0, None
        for _ in range(times):
            with av.open(str(source)) as inp:
                audio = inp.streams.audio[0]
                stream = stream or out.add_stream_from_template(audio)
                end = 0
                for packet in inp.demux(audio):
                    if packet.dts is None:
                        continue
                    end = max(end, packet.pts + packet.duration)
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = stream
                    out.mux(packet)
                shift += end


def remux_faststart(source, target):
    """Stream-copy ``source`` into an MP4 with moov in front."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w", format="mp4",
                                              options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)


def closes(close_log, label, expected, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = close_log.read_text().splitlines().count(label)
        if count >= expected:
            return count
        time.sleep(0.05)
    return close_log.read_text().splitlines().count(label)


@pytest.mark.parametrize("mode", ["file", "stream"])
@pytest.mark.parametrize("name", ["mp4_faststart.mp4", "mp4_moov_end.mp4"])
def test_mp4_has_exact_content_length(server, mode, name):
    url, folder, _ = server
    response = requests.get(f"{url}/{mode}/{name}?ali_audio_only=1", timeout=30)
    assert response.status_code == 200
    assert "chunked" not in response.headers.get("Transfer-Encoding", "")
    assert int(response.headers["Content-Length"]) == len(response.content)
    media_toolkit.assert_audio_identical(folder / name, response.content)


@pytest.mark.parametrize("name", ["flv_aac.flv", "mp4_fragmented.mp4"])
def test_forward_only_streams_are_chunked_then_recorded(server, name):
    """A lazy plan streams chunked once; streamed to its end it is recorded, and the next answers are sized."""
    url, folder, _ = server
    target = f"{url}/stream/{name}?ali_audio_only=1&test={uuid.uuid4().hex}"  # a fresh cache key
    response = requests.get(target, timeout=30)
    assert response.status_code == 200
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.headers and response.headers["Accept-Ranges"] == "none"
    media_toolkit.assert_audio_identical(folder / name, response.content)

    again = requests.get(target, timeout=30)
    assert "Transfer-Encoding" not in again.headers and again.headers["Accept-Ranges"] == "bytes"
    assert int(again.headers["Content-Length"]) == len(again.content) and again.content == response.content
    middle = len(again.content) // 2
    part = requests.get(target, headers={"Range": f"bytes={middle}-{middle + 999}"}, timeout=30)
    assert part.status_code == 206 and part.content == response.content[middle:middle + 1000]
    tail = requests.get(target, headers={"Range": "bytes=-700"}, timeout=30)
    assert tail.status_code == 206 and tail.content == response.content[-700:]
    cached = requests.get(target, headers={"If-None-Match": again.headers["ETag"]}, timeout=30)
    assert cached.status_code == 304


@pytest.mark.parametrize("name", ["flv_aac.flv", "mp4_fragmented.mp4"])
def test_a_first_range_on_a_stream_is_answered_206(server, name):
    """What Safari sends first (``bytes=0-1``) to a stream-backed rendition that was never downloaded."""
    url, folder, _ = server
    target = f"{url}/stream/{name}?ali_audio_only=1&test={uuid.uuid4().hex}"
    probe = requests.get(target, headers={"Range": "bytes=0-1"}, timeout=30)
    assert probe.status_code == 206 and len(probe.content) == 2
    length = int(probe.headers["Content-Range"].rpartition("/")[2])
    whole = requests.get(target, timeout=30)
    assert int(whole.headers["Content-Length"]) == length == len(whole.content)
    assert whole.content[:2] == probe.content
    media_toolkit.assert_audio_identical(folder / name, whole.content)


def test_moov_at_end_from_a_stream_is_read_twice_when_not_spooled(server):
    """``spool_limit=0``: the first request reads the body twice (two upstream closes), the next ones once."""
    url, folder, close_log = server
    target = f"{url}/twice/mp4_moov_end.mp4?ali_audio_only=1&test={uuid.uuid4().hex}"
    first = requests.get(target, timeout=30)
    assert first.status_code == 200 and int(first.headers["Content-Length"]) == len(first.content)
    media_toolkit.assert_audio_identical(folder / "mp4_moov_end.mp4", first.content)
    assert closes(close_log, "twice mp4_moov_end.mp4", 2) == 2
    part = requests.get(target, headers={"Range": "bytes=-1000"}, timeout=30)
    assert part.status_code == 206 and part.content == first.content[-1000:]
    assert closes(close_log, "twice mp4_moov_end.mp4", 3) == 3  # the plan is cached: one read


def test_file_backed_flv_has_length_and_ranges(server):
    url, folder, _ = server
    full = requests.get(f"{url}/file/flv_aac.flv?ali_audio_only=1", timeout=30)
    assert int(full.headers["Content-Length"]) == len(full.content)
    media_toolkit.assert_audio_identical(folder / "flv_aac.flv", full.content)
    part = requests.get(f"{url}/file/flv_aac.flv?ali_audio_only=1", headers={"Range": "bytes=100-999"}, timeout=30)
    assert part.status_code == 206 and part.content == full.content[100:1000]


def test_range_and_head_over_http(server):
    url, _, _ = server
    full = requests.get(f"{url}/file/mp4_moov_end.mp4?ali_audio_only=1", timeout=30)
    part = requests.get(f"{url}/file/mp4_moov_end.mp4?ali_audio_only=1", headers={"Range": "bytes=-1000"}, timeout=30)
    assert part.status_code == 206 and part.content == full.content[-1000:]
    head = requests.head(f"{url}/file/mp4_moov_end.mp4?ali_audio_only=1", timeout=30)
    assert head.headers["Content-Length"] == full.headers["Content-Length"] and not head.content


def test_a_range_inside_one_large_span_is_sent_from_the_file(server):
    """An MP4 without video is a new moov and one span: a range in it goes out with gunicorn's sendfile,
    from the position the middleware gives the file."""
    url, folder, _ = server
    target = f"{url}/file/long_audio_only.mp4?ali_audio_only=1"
    full = requests.get(target, timeout=30)
    media_toolkit.assert_audio_identical(folder / "long_audio_only.mp4", full.content)
    size = 200 * 1024  # more than a block (128 KiB), inside the audio data
    assert len(full.content) > size + 10_000
    for header, expected in ((f"bytes=-{size}", slice(-size, None)),
                             (f"bytes={len(full.content) - size - 5000}-{len(full.content) - 5001}",
                              slice(-size - 5000, -5000))):
        part = requests.get(target, headers={"Range": header}, timeout=30)
        assert part.status_code == 206 and part.content == full.content[expected], header
        assert int(part.headers["Content-Length"]) == size


def test_unflagged_is_the_file(server):
    url, folder, _ = server
    for mode in ("file", "stream"):
        response = requests.get(f"{url}/{mode}/mp4_faststart.mp4", timeout=30)
        assert response.content == (folder / "mp4_faststart.mp4").read_bytes()


def test_truncated_source_is_an_incomplete_response(server):
    url, _, close_log = server
    response = requests.get(f"{url}/truncated/heavy_faststart.mp4?ali_audio_only=1", stream=True, timeout=30)
    assert response.status_code == 200  # the body had started when the source ran short
    with pytest.raises(requests.exceptions.RequestException):
        # requests raises while reading a body shorter than its Content-Length
        received = b"".join(response.iter_content(65536))
        pytest.fail(f"a short body passed as complete: {len(received)} of {response.headers['Content-Length']}")
    assert closes(close_log, "truncated heavy_faststart.mp4", 1) == 1


def test_truncation_found_before_the_body_is_an_error_status(server):
    url, _, close_log = server
    response = requests.get(f"{url}/truncated/heavy.mp4?ali_audio_only=1", timeout=30)
    assert response.status_code == 502 and "Content-Length" in response.text
    assert closes(close_log, "truncated heavy.mp4", 1) == 1


def test_client_disconnect_closes_upstream_once(server):
    url, _, close_log = server
    label = "slow heavy.mp4"
    before = close_log.read_text().splitlines().count(label)
    # unflagged: the whole 2 MB video trickles out slowly; flagged: the audio comes after slow skipping
    for query in ("", "?ali_audio_only=1"):
        response = requests.get(f"{url}/slow/heavy.mp4{query}", stream=True, timeout=30)
        next(response.iter_content(1024))
        response.close()  # the client goes away mid-stream
    assert closes(close_log, label, before + 2) == before + 2
    time.sleep(0.5)
    assert close_log.read_text().splitlines().count(label) == before + 2  # exactly once each
