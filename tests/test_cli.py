"""The ``audio-extract`` command line: outputs checked with PyAV, exit codes, messages, progress bar.

Most tests call ``main(argv)`` in-process (fast); a few run ``python -m
audio_middleware`` in a subprocess to check the real entry point, stdout and
exit statuses.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from audio_middleware import cli, elementary
from audio_middleware.cli import ProgressBar, format_info, main

try:  # works whether or not tests/ is a package
    from tests import media
except ImportError:  # pragma: no cover
    import media


@pytest.fixture
def copy(media_dir, tmp_path):
    """A fresh copy of a media kind in this test's directory (outputs land beside it)."""

    def make(kind: str, name: str | None = None):
        source = media.make_media(kind, media_dir)
        return str(shutil.copy(source, tmp_path / (name or source.name)))

    return make


def run(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "audio_middleware", *argv], capture_output=True, cwd=cwd,
                          timeout=120)


def no_partials(directory) -> bool:
    return not [name for name in os.listdir(directory) if name.endswith(".part")]


# -- outputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, ext, fmt", [("mp4_faststart", ".m4a", None), ("mov", ".m4a", None),
                                            ("mp4_fragmented", ".m4a", None), ("flv_aac", ".audio.flv", "flv")])
def test_default_writes_the_audio_only_rendition(copy, kind, ext, fmt, capsys):
    source = copy(kind)
    assert main([source]) == 0
    output = os.path.splitext(source)[0] + ext
    media.assert_audio_identical(source, output, fmt=fmt)
    assert f"{output}:" in capsys.readouterr().err
    assert no_partials(os.path.dirname(source))


def test_m4a_input_does_not_overwrite_itself(copy):
    source = copy("m4a_audio_only")
    assert main([source]) == 0
    output = os.path.splitext(source)[0] + ".audio.m4a"
    media.assert_audio_identical(source, output)


def test_format_aac_writes_adts(copy):
    source = copy("mp4_moov_end")
    assert main([source, "--format", "aac"]) == 0
    output = os.path.splitext(source)[0] + ".aac"
    with open(output, "rb") as handle:
        assert handle.read() == media.remux_audio_only(source, fmt="adts")


@pytest.mark.parametrize("kind", ["mp4_mp3", "flv_mp3"])
def test_format_mp3_copies_mp3(copy, kind, capsys):
    source = copy(kind)
    assert main([source, "-f", "mp3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "copy" and summary["output"].endswith(".mp3")
    frames = [bytes(p[0]) for p in media.audio_packets(summary["output"], "mp3")[0]]
    assert frames == [bytes(p[0]) for p in media.audio_packets(source)[0]]


def test_output_extension_picks_the_format(copy, tmp_path):
    source = copy("flv_aac")
    target = tmp_path / "sub.aac"
    assert main([source, "-o", str(target), "-q"]) == 0
    assert target.read_bytes()[:2] == b"\xff\xf1"


def _audio_seconds(path) -> float:
    """PyAV's span of the audio: first packet's start to the last one's end."""
    stream = next(info for info in media.probe(path) if info.type == "audio")
    first, last = stream.packets[0], stream.packets[-1]
    return float((last[1] + last[3] - first[1]) * stream.time_base)


@pytest.mark.parametrize("movflags", ["frag_keyframe+empty_moov+default_base_moof", "frag_keyframe+default_base_moof"],
                         ids=["empty_moov", "partially_fragmented"])
def test_the_summary_of_a_fragmented_file_counts_its_fragments(movflags, tmp_path, capsys):
    """The moov's headers describe only its own samples (none, or the first second): the summary's
    duration was missing (empty_moov) or a third of the audio (partially fragmented)."""
    source = tmp_path / "fragmented.mp4"
    media._encode(media.KindInfo(".mp4", "mp4", media._V264, (media._A,), movflags, "fragmented"), source)
    assert main([str(source), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["duration"] == pytest.approx(_audio_seconds(source), abs=1e-3)
    assert _audio_seconds(summary["output"]) == pytest.approx(_audio_seconds(source), abs=1e-3)


def test_mp3_from_aac_is_transcoded(copy, capsys):
    if not elementary.transcoding_available("mp3"):
        pytest.skip("no MP3 encoder")
    source = copy("mp4_faststart")
    assert main([source, "-f", "mp3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "transcode" and summary["source_codec"] == "aac"
    assert summary["duration"] == pytest.approx(3.0, abs=0.1)
    assert media.audio_packets(summary["output"], "mp3")[0]


def test_transcode_unavailable_is_exit_3_with_a_hint(copy, monkeypatch, capsys):
    monkeypatch.setattr(elementary, "load_av", lambda: None)
    source = copy("mp4_faststart")
    assert main([source, "-f", "mp3"]) == 3
    err = capsys.readouterr().err
    assert "unsupported" in err and "pip install" in err
    assert not os.path.exists(os.path.splitext(source)[0] + ".mp3")


def test_no_transcode_flag(copy, capsys):
    assert main([copy("flv_aac"), "-f", "mp3", "--no-transcode"]) == 3
    assert "transcoding is disabled" in capsys.readouterr().err


@pytest.mark.parametrize("track", ["2", "fra"])
def test_track(copy, track, tmp_path):
    source = copy("mp4_two_audio")
    target = tmp_path / f"t{track}.m4a"
    assert main([source, "--track", track, "-o", str(target)]) == 0
    media.assert_audio_identical(source, target, tracks=[1])
    target_aac = tmp_path / f"t{track}.aac"
    assert main([source, "-t", track, "-o", str(target_aac)]) == 0
    frames = [bytes(p[0])[7:] for p in media.audio_packets(target_aac, "aac")[0]]
    assert frames == [bytes(p[0]) for p in media.audio_packets(source)[1]]


# -- --info ------------------------------------------------------------------------------------


def test_info_table(copy, capsys):
    assert main([copy("mp4_two_audio"), "--info"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "MP4 (brand isom), 2 audio tracks" in lines[0]
    assert lines[1].split() == ["#", "id", "codec", "lang", "duration", "samples", "rate", "ch"]
    assert lines[2].split() == ["1", "2", "aac", "eng", "3.023", "s", "131", "44100", "2"]
    assert lines[3].split()[:4] == ["2", "3", "aac", "fra"]


def test_info_json(copy, capsys):
    source = copy("flv_mp3")
    assert main([source, "--info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["input"] == source and facts["container"] == "flv"
    (track,) = facts["tracks"]
    assert track["codec"] == media.KINDS["flv_mp3"].audio_codecs[0].replace("libmp3lame", "mp3")
    assert track["samples"] > 50 and track["duration"] == pytest.approx(3.0, abs=0.1)


def test_info_without_audio_is_exit_3(copy, capsys):
    assert main([copy("mp4_video_only"), "--info", "--json"]) == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tracks"] == []
    assert "no audio" in captured.err


def test_format_info_handles_unknown_values():
    text = format_info("x.flv", {"container": "flv", "tracks": [
        {"index": 1, "track_id": None, "codec": "mp3", "language": "und", "duration": 1.5, "samples": 3,
         "sample_rate": 44100, "channels": 2}]})
    assert text.splitlines()[2].split()[:3] == ["1", "-", "mp3"]


# -- errors and exit codes ---------------------------------------------------------------------


def test_missing_input_is_usage(tmp_path, capsys):
    assert main([str(tmp_path / "nope.mp4")]) == 2
    assert "usage: cannot read" in capsys.readouterr().err


def test_not_media_is_unsupported(tmp_path, capsys):
    path = tmp_path / "notes.mp4"
    path.write_text("just text, no video here")
    assert main([str(path)]) == 3
    assert "unsupported: not an MP4-family" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["mp4_video_only", "flv_video_only"])
def test_no_audio_is_exit_3(copy, kind, capsys):
    source = copy(kind)
    assert main([source]) == 3
    assert "no audio" in capsys.readouterr().err
    assert no_partials(os.path.dirname(source))


def test_truncated_input_is_exit_4_and_leaves_nothing(copy, capsys):
    source = copy("mp4_faststart")
    with open(source, "r+b") as handle:
        handle.truncate(os.path.getsize(source) - 5000)
    for fmt in ("auto", "aac"):
        assert main([source, "-f", fmt]) == 4
        assert "malformed input" in capsys.readouterr().err
    directory = os.path.dirname(source)
    assert sorted(os.listdir(directory)) == [os.path.basename(source)]


def test_broken_moov_is_exit_4(copy, capsys):
    source = copy("mp4_faststart")
    data = bytearray(open(source, "rb").read())
    at = data.index(b"moov") - 4
    data[at:at + 4] = (10**8).to_bytes(4, "big")
    open(source, "wb").write(bytes(data))
    assert main([source, "--json"]) == 4
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["exit_code"] == 4 and error["kind"] == "malformed input"


def test_unknown_track_is_exit_3(copy, capsys):
    assert main([copy("mp4_two_audio"), "--track", "3"]) == 3
    assert main([copy("flv_aac"), "--track", "2"]) == 3


@pytest.mark.parametrize("argv", [["--track", "0"], ["--track", "english"], ["--format", "wav"], ["--bogus"]])
def test_bad_arguments_are_usage(copy, argv, capsys):
    assert main([copy("mp4_faststart"), *argv]) == 2
    assert "usage:" in capsys.readouterr().err


def test_existing_output_needs_overwrite(copy, tmp_path, capsys):
    source = copy("mp4_faststart")
    target = tmp_path / "out.m4a"
    target.write_bytes(b"keep me")
    assert main([source, "-o", str(target)]) == 2
    assert target.read_bytes() == b"keep me"
    assert "--overwrite" in capsys.readouterr().err
    assert main([source, "-o", str(target), "-y"]) == 0
    media.assert_audio_identical(source, target)


def test_output_extension_must_match_the_container(copy, tmp_path, capsys):
    assert main([copy("flv_aac"), "-o", str(tmp_path / "x.m4a")]) == 2
    assert main([copy("mp4_faststart"), "-o", str(tmp_path / "x.flv")]) == 2
    assert "use --format aac or mp3" in capsys.readouterr().err
    assert main([copy("flv_aac"), "-o", str(tmp_path / "x.m4a"), "-f", "aac"]) == 0  # raw ADTS, any name


def test_progress_line_ends_on_failure():
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(stream, "x", delay=0.0, clock=clock)
    bar(5, 10)
    bar.abort()
    assert stream.getvalue().endswith("\n") and "100%" not in stream.getvalue()


def test_output_may_not_be_the_input(copy):
    source = copy("mp4_faststart")
    before = open(source, "rb").read()
    assert main([source, "-o", source, "-y"]) == 2
    assert open(source, "rb").read() == before


def test_output_directory_must_exist(copy, tmp_path):
    assert main([copy("mp4_faststart"), "-o", str(tmp_path / "missing" / "x.m4a")]) == 2
    assert main([copy("mp4_faststart"), "-o", str(tmp_path)]) == 2


def test_help_and_version():
    assert main(["--version"]) == 0
    assert main(["--help"]) == 0


# -- progress ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_waits_throttles_and_ends_its_line():
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(stream, "x.m4a", delay=0.5, interval=0.1, width=10, clock=clock)
    bar(10, 100)
    assert stream.getvalue() == ""  # short jobs print nothing
    clock.now = 0.6
    bar(50, 100)
    assert stream.getvalue().endswith("x.m4a [#####-----]  50% 0.0/0.0 MB")
    clock.now = 0.65
    bar(60, 100)
    assert "60%" not in stream.getvalue()  # throttled
    bar.finish(100)
    assert stream.getvalue().endswith("100% 0.0/0.0 MB\n")


def test_quiet_progress_bar_prints_nothing():
    stream = io.StringIO()
    bar = ProgressBar(stream, "x", clock=FakeClock())
    bar(1, 2)
    bar.finish(2)
    assert stream.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(copy, monkeypatch):
    original = cli.ProgressBar.__init__

    def eager(self, stream, label, **kw):
        original(self, stream, label, delay=0.0, interval=0.0)

    monkeypatch.setattr(cli.ProgressBar, "__init__", eager)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([copy("mp4_faststart"), "-f", "aac"]) == 0
    assert "\r" in terminal.getvalue() and "100%" in terminal.getvalue()

    piped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", piped)
    assert main([copy("flv_aac"), "-f", "aac"]) == 0
    assert "\r" not in piped.getvalue()

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([copy("mov"), "--no-progress"]) == 0
    assert "\r" not in terminal.getvalue()


# -- the real entry point ----------------------------------------------------------------------


def test_python_m_audio_middleware(copy):
    source = copy("mp4_faststart")
    done = run(source, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    media.assert_audio_identical(source, summary["output"])
    assert done.stderr == b""  # not a terminal: no progress bar


@pytest.mark.parametrize("argv, code", [(["--track", "9"], 3), (["--format", "nope"], 2), ([], 0)])
def test_exit_statuses_in_a_subprocess(copy, argv, code):
    assert run(copy("flv_aac"), *argv).returncode == code


def test_subprocess_missing_and_malformed(tmp_path):
    assert run(str(tmp_path / "none.mp4")).returncode == 2
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isomiso2" + b"\x00\x00\x00\x10moov\x00\x00")
    done = run(str(bad))
    assert done.returncode == 4 and b"malformed input" in done.stderr


def test_stdout_output(copy, tmp_path):
    source = copy("flv_mp3")
    piped = run(source, "-o", "-")
    assert piped.returncode == 0
    assert main([source, "-o", str(tmp_path / "file.flv"), "-q"]) == 0
    assert piped.stdout == (tmp_path / "file.flv").read_bytes()
    assert run(source, "-o", "-", "--json").returncode == 2


def test_console_script_when_installed(copy):
    script = shutil.which("audio-extract") or shutil.which("audio-extract", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("console script not installed (setup.cfg entry point missing or package not reinstalled)")
    done = subprocess.run([script, copy("mp4_faststart"), "--info", "--json"], capture_output=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout)["tracks"]


# -- output errors and outputs that are not regular files ----------------------------------------


@pytest.fixture(autouse=True)
def never_replace_a_device(monkeypatch):
    """Fail a test, instead of replacing the node, if the CLI renames a file over an existing
    device, FIFO or symlink (as root, over the real /dev/null, /dev/full or /dev/stdout)."""
    replace = os.replace

    def guarded(src, dst, *args, **kwargs):
        if os.path.islink(dst) or (os.path.exists(dst) and not stat.S_ISREG(os.stat(dst).st_mode)):
            raise AssertionError(f"os.replace over the non-regular file {dst!r}")
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", guarded)


def temporaries_on_dev_full(monkeypatch) -> list[str]:
    """Make the CLI's temporary files write to /dev/full (a disk that is full, without root or a mount);
    returns the list of their paths, to check that they are removed."""
    mkstemp, made = tempfile.mkstemp, []

    def full(*args, **kwargs):
        fd, path = mkstemp(*args, **kwargs)
        made.append(path)
        device = os.open("/dev/full", os.O_WRONLY)
        os.dup2(device, fd)
        os.close(device)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", full)
    return made


def needs_mp3_encoder() -> None:
    if not elementary.transcoding_available("mp3"):
        pytest.skip("no MP3 encoder")


@pytest.mark.parametrize("kind, fmt", [("mp4_faststart", "auto"), ("flv_aac", "aac"), ("mp4_faststart", "mp3")])
def test_disk_full_is_a_write_error_and_leaves_nothing(copy, tmp_path, monkeypatch, capsys, kind, fmt):
    if fmt == "mp3":
        needs_mp3_encoder()  # a transcode: PyAV's callback swallowed the error, "malformed input", exit 4
    source = copy(kind)
    target = str(tmp_path / "out.bin")
    made = temporaries_on_dev_full(monkeypatch)
    assert main([source, "-f", fmt, "-o", target, "--json"]) == 5
    captured = capsys.readouterr()
    assert captured.err == f"audio-extract: write error: {target!r}: {os.strerror(errno.ENOSPC)}\n"
    assert json.loads(captured.out)["error"] == {"exit_code": 5, "kind": "write error",
                                                 "message": f"{target!r}: {os.strerror(errno.ENOSPC)}"}
    assert made and not any(os.path.exists(path) for path in made)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(source)]


def test_read_only_directory_is_a_write_error(copy, tmp_path, monkeypatch, capsys):
    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.path.join(dir, "x.part"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target = str(tmp_path / "out.m4a")
    assert main([copy("mp4_faststart"), "-o", target, "--json"]) == 5
    captured = capsys.readouterr()
    assert captured.err == f"audio-extract: write error: {target!r}: {os.strerror(errno.EROFS)}\n"
    assert json.loads(captured.out)["error"]["exit_code"] == 5


def test_input_read_error_midway_is_exit_5_and_leaves_nothing(copy, tmp_path, monkeypatch, capsys):
    source = copy("mp4_faststart")

    def failing(path, out, **kwargs):
        out.write(b"some audio")
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)

    monkeypatch.setattr(cli, "write_rendition", failing)
    assert main([source, "-o", str(tmp_path / "out.m4a")]) == 5
    assert capsys.readouterr().err == f"audio-extract: i/o error: {source!r}: {os.strerror(errno.EIO)}\n"
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(source)]


def test_output_ending_in_a_separator_names_a_missing_directory(copy, tmp_path, capsys):
    source = copy("mp4_faststart")
    target = str(tmp_path / "missing") + os.sep
    assert main([source, "-o", target]) == 2
    assert capsys.readouterr().err == (f"audio-extract: usage: cannot write {target!r}: "
                                       f"directory {target!r} does not exist\n")
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(source)]


@pytest.mark.parametrize("argv", [["-o", "-"], ["-f", "aac", "-o", "-"], ["-f", "mp3", "-o", "-"], ["--info"]])
def test_stdout_closed_by_its_reader_exits_141_quietly(copy, argv):
    if "mp3" in argv:
        needs_mp3_encoder()  # flv_aac to mp3 is a transcode
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: every write fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "audio_middleware", copy("flv_aac"), *argv], stdout=write,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, b"")


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="needs Linux pipe sizes")
def test_an_unbuffered_stdout_closed_mid_write_is_not_a_success(copy):
    """With PYTHONUNBUFFERED, stdout's write() may write part of a block when the reader leaves: that must end
    as 141 (the rest cannot be written), not 0 after silently dropping it."""
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 8192)  # two pages: the 49 KB write fills them, blocks, then returns part
    try:
        process = subprocess.Popen([sys.executable, "-m", "audio_middleware", copy("mp4_faststart"), "-o", "-"],
                                   stdout=write, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(write)
    assert len(os.read(read, 100)) == 100  # the writer then blocks inside its 47 KB write of the audio
    time.sleep(0.2)
    os.close(read)
    _, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr) == (141, b"")


def test_stdout_write_error_is_exit_5(copy):
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "audio_middleware", copy("flv_aac"), "-o", "-"], stdout=full,
                              stderr=subprocess.PIPE, timeout=120)
    assert done.returncode == 5
    assert done.stderr == f"audio-extract: write error: stdout: {os.strerror(errno.ENOSPC)}\n".encode()


@pytest.mark.parametrize("argv", [[], ["-y"], ["-f", "aac", "-y"]])
def test_dev_null_is_written_into_not_replaced(copy, capsys, argv):
    assert main([copy("mp4_faststart"), "-o", os.devnull, *argv]) == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert f"{os.devnull}:" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["auto", "mp3"])
def test_full_device_is_a_write_error(copy, capsys, fmt):
    if fmt == "mp3":
        needs_mp3_encoder()
    assert main([copy("mp4_faststart"), "-f", fmt, "-o", "/dev/full"]) == 5
    assert capsys.readouterr().err == f"audio-extract: write error: '/dev/full': {os.strerror(errno.ENOSPC)}\n"
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def read_fifo_in_a_thread(path: str, done: threading.Event) -> tuple[threading.Thread, list[bytes]]:
    """Collect the bytes written into the FIFO at ``path`` until ``done`` is set and the FIFO is drained.

    The FIFO is opened read-write (Linux: never blocks, never reads EOF), so the
    thread ends however the writer behaves, even if it replaced the FIFO by a file.
    """
    return drain_in_a_thread(os.open(path, os.O_RDWR), done)


def drain_in_a_thread(fd: int, done: threading.Event) -> tuple[threading.Thread, list[bytes]]:
    """Collect what can be read from ``fd`` until ``done`` is set and nothing is left; then close ``fd``."""
    chunks: list[bytes] = []

    def read() -> None:
        try:
            while True:
                if select.select([fd], [], [], 0.05)[0]:
                    chunks.append(os.read(fd, 1 << 16))
                elif done.is_set():
                    return
        finally:
            os.close(fd)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, chunks


@pytest.mark.parametrize("argv", [[], ["-y"]])
def test_fifo_is_written_into_not_replaced(copy, tmp_path, argv):
    source = copy("mp4_faststart")
    assert main([source, "-o", str(tmp_path / "reference.m4a"), "-q"]) == 0
    fifo = str(tmp_path / "fifo.m4a")
    os.mkfifo(fifo)
    done = threading.Event()
    thread, chunks = read_fifo_in_a_thread(fifo, done)
    try:
        code = main([source, "-o", fifo, "-q", *argv])
    finally:
        done.set()
        thread.join(10)
    assert code == 0
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert b"".join(chunks) == (tmp_path / "reference.m4a").read_bytes()


# -- stdout closed, outputs that name a descriptor or a symlink, non-blocking pipes ----------------

CLOSED_STDOUT = ("audio-extract: write error: stdout: not open (the command was started with stdout closed; "
                 "use -o FILE)\n")


def test_a_missing_stdout_is_never_touched(copy, tmp_path, monkeypatch, capsys):
    """Started with stdout closed (``>&-``), Python's sys.stdout is None: a file output still succeeds, and
    ``-o -`` (or a link to /proc/self/fd/1) is a write error, not a traceback."""
    source = copy("mp4_faststart")
    target = tmp_path / "out.m4a"
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", None)
        assert main([source, "-o", str(target), "--json"]) == 0
        assert main([source, "-o", "-"]) == 5
        assert main([source, "-o", str(link), "-y"]) == 5
    media.assert_audio_identical(source, target)
    assert capsys.readouterr().err.endswith(CLOSED_STDOUT * 2)
    assert link.is_symlink()


def test_started_with_stdout_closed(copy, tmp_path):
    source = copy("mp4_faststart")
    target = tmp_path / "out.m4a"
    closed = ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "audio_middleware", source]
    done = subprocess.run([*closed, "-o", str(target), "-q"], capture_output=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, b"")
    media.assert_audio_identical(source, target)
    done = subprocess.run([*closed, "-o", "-"], capture_output=True, timeout=120)
    assert (done.returncode, done.stderr) == (5, CLOSED_STDOUT.encode())


def test_started_with_stderr_closed(copy, tmp_path):
    """``2>&-``: messages go nowhere (never into the output) and the exit status still tells."""
    source = copy("mp4_faststart")
    target = tmp_path / "out.m4a"
    closed = ["sh", "-c", 'exec "$@" 2>&-', "sh", sys.executable, "-m", "audio_middleware"]
    done = subprocess.run([*closed, source, "-o", str(target)], capture_output=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, b"")
    media.assert_audio_identical(source, target)
    done = subprocess.run([*closed, str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "x.m4a")],
                          capture_output=True, timeout=120)
    assert (done.returncode, done.stdout) == (2, b"")
    done = subprocess.run([*closed, source, "-o", "-"], capture_output=True, timeout=120)
    assert done.returncode == 0
    media.assert_audio_identical(source, done.stdout)


needs_proc_fd = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")


def descriptor_links(tmp_path):
    """Stand-ins in tmp_path for /dev/stdout, /dev/stderr and /dev/fd (the same links): the real ones must
    never be at risk, whatever the code under test does."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "stdout").symlink_to("/proc/self/fd/1")
    (dev / "stderr").symlink_to("/proc/self/fd/2")
    (dev / "fd").symlink_to("/proc/self/fd")
    return dev


@needs_proc_fd
def test_outputs_naming_a_descriptor_are_recognised(tmp_path):
    dev = descriptor_links(tmp_path)
    (tmp_path / "chain").symlink_to(dev / "stdout")
    named = {"/dev/stdout": 1, "/dev/stderr": 2, "/dev/fd/5": 5, "/proc/self/fd/7": 7,
             f"/proc/{os.getpid()}/fd/1": 1, "/proc/thread-self/fd/4": 4, str(dev / "stderr"): 2,
             str(dev / "fd" / "9"): 9, str(tmp_path / "chain"): 1, "/dev/null": None, "/proc/1/fd/1": None,
             str(tmp_path / "out.m4a"): None, "/dev/fd": None}
    assert {path: cli._descriptor(path) for path in named} == named


@needs_proc_fd
@pytest.mark.parametrize("argv", [[], ["-y"]])
@pytest.mark.parametrize("door", ["stdout", "stderr", "fd"])
def test_descriptor_outputs_are_written_into(copy, tmp_path, door, argv):
    """``-o /dev/stdout`` (``/dev/stderr``, ``/dev/fd/N``) with that descriptor on a file: the audio goes into
    the descriptor (appended here: its O_APPEND is kept), the link is never replaced, no --overwrite needed."""
    source = copy("mp4_faststart")
    reference = tmp_path / "reference.m4a"
    assert main([source, "-o", str(reference), "-q"]) == 0
    dev = descriptor_links(tmp_path)
    sink = tmp_path / "sink.m4a"
    sink.write_bytes(b"head")
    with open(sink, "ab") as out:
        output, streams = {"stdout": (dev / "stdout", {"stdout": out, "stderr": subprocess.PIPE}),
                           "stderr": (dev / "stderr", {"stdout": subprocess.PIPE, "stderr": out}),
                           "fd": (dev / "fd" / str(out.fileno()), {"capture_output": True,
                                                                   "pass_fds": [out.fileno()]})}[door]
        done = subprocess.run([sys.executable, "-m", "audio_middleware", source, "-o", str(output), *argv],
                              timeout=120, **streams)
    assert done.returncode == 0, done.stderr
    assert sink.read_bytes() == b"head" + reference.read_bytes()  # for stderr: without the summary line
    assert [os.readlink(dev / name) for name in ("stdout", "stderr", "fd")] == [
        "/proc/self/fd/1", "/proc/self/fd/2", "/proc/self/fd"]
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(source), "dev", "reference.m4a", "sink.m4a"])


@needs_proc_fd
@pytest.mark.parametrize("door, stream", [("-", "stdout"), ("stdout", "stdout"), ("stderr", "stderr")])
def test_descriptor_output_on_a_terminal_is_refused(copy, tmp_path, door, stream):
    dev = descriptor_links(tmp_path)
    output = door if door == "-" else str(dev / door)
    master, terminal = os.openpty()
    done = threading.Event()
    thread, chunks = drain_in_a_thread(master, done)  # so that a binary write into the terminal cannot block
    try:
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, stream: terminal}
        process = subprocess.run([sys.executable, "-m", "audio_middleware", copy("mp4_faststart"), "-o", output],
                                 timeout=120, **streams)
    finally:
        done.set()
        thread.join(10)
        os.close(terminal)
    message = (f"audio-extract: usage: refusing to write binary audio to a terminal (redirect {stream} or use "
               f"-o FILE)").encode()
    assert process.returncode == 2
    assert (process.stderr if stream == "stdout" else b"".join(chunks)).rstrip() == message
    if stream == "stdout":
        assert b"".join(chunks) == b""


def test_symlink_output_is_replaced_at_its_target(copy, tmp_path, capsys):
    """As with cp and ffmpeg, a symlink OUTPUT stays a link and its target gets the audio (the guard above
    fails the test if a file is renamed over the link)."""
    source = copy("mp4_faststart")
    real, link = tmp_path / "real.m4a", tmp_path / "link.m4a"
    link.symlink_to("real.m4a")  # dangling: the target is created
    assert main([source, "-o", str(link), "-q"]) == 0
    media.assert_audio_identical(source, real)
    real.write_bytes(b"keep me")
    assert main([source, "-o", str(link), "-q"]) == 2
    assert real.read_bytes() == b"keep me"
    assert main([source, "-o", str(link), "-q", "-y"]) == 0
    media.assert_audio_identical(source, real)
    assert os.readlink(link) == "real.m4a"
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "away.m4a").symlink_to("missing/x.m4a")
    capsys.readouterr()
    assert main([source, "-o", str(tmp_path / "loop"), "-f", "aac"]) == 2
    assert main([source, "-o", str(tmp_path / "away.m4a")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"audio-extract: usage: cannot write {str(tmp_path / 'loop')!r}: {os.strerror(errno.ELOOP)}",
        f"audio-extract: usage: cannot write {str(tmp_path / 'away.m4a')!r}: directory "
        f"{str(tmp_path / 'missing')!r} does not exist"]
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(source), "away.m4a", "link.m4a", "loop",
                                                   "real.m4a"])


class CountingFileIO(io.FileIO):
    """A raw stream that counts its write calls."""

    calls = 0

    def write(self, data):
        self.calls += 1
        return super().write(data)


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="needs Linux pipe sizes")
@pytest.mark.parametrize("buffered", [False, True])
def test_sink_waits_for_a_full_non_blocking_pipe(buffered):
    """A non-blocking pipe that is full: a raw write returns None, a buffered one raises BlockingIOError. The
    sink must wait for the reader (a few hundred writes at most), neither spin (one write per microsecond) nor
    fail."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    raw = CountingFileIO(write, "wb", closefd=False)
    stream = io.BufferedWriter(raw) if buffered else raw
    data, errors = os.urandom(1 << 18), []

    def produce() -> None:
        try:
            sink = cli._Sink(stream)
            sink.write(data)
            sink.flush()
        except BaseException as error:
            errors.append(error)
        finally:
            os.close(write)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    time.sleep(0.3)  # the reader is away
    received = b"".join(iter(lambda: os.read(read, 1 << 16), b""))
    os.close(read)
    thread.join(10)
    assert errors == [] and received == data
    assert raw.calls < 1000


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="needs Linux pipe sizes")
@pytest.mark.parametrize("unbuffered", [False, True])
def test_non_blocking_stdout_pipe_gets_every_byte(copy, tmp_path, unbuffered):
    source = copy("flv_aac")
    reference = tmp_path / "reference.flv"
    assert main([source, "-o", str(reference), "-q"]) == 0
    read, write = os.pipe()
    os.set_blocking(write, False)
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    env.update({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    try:
        process = subprocess.Popen([sys.executable, "-m", "audio_middleware", source, "-o", "-", "-q"],
                                   stdout=write, stderr=subprocess.PIPE, env=env)
    finally:
        os.close(write)
    time.sleep(0.5)  # the reader is away: the pipe fills
    received = b"".join(iter(lambda: os.read(read, 1 << 16), b""))
    os.close(read)
    _, stderr = process.communicate(timeout=120)
    assert (process.returncode, stderr) == (0, b"")
    assert received == reference.read_bytes()


@needs_proc_fd
@pytest.mark.parametrize("output", ["-", "stdout"])
def test_descriptor_output_on_the_input_is_refused(copy, tmp_path, output):
    """``-o - 1<>talk.mp4`` (or ``-o /dev/stdout``): the audio would overwrite the input while it is read."""
    source = copy("mp4_faststart")
    before = open(source, "rb").read()
    output = output if output == "-" else str(descriptor_links(tmp_path) / output)
    with open(source, "r+b") as same:
        done = subprocess.run([sys.executable, "-m", "audio_middleware", source, "-o", output], stdout=same,
                              stderr=subprocess.PIPE, timeout=120)
    assert (done.returncode, done.stderr) == (2, b"audio-extract: usage: OUTPUT is the input file\n")
    assert open(source, "rb").read() == before
