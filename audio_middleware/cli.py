"""``audio-extract``: the audio of an MP4-family or FLV file, from the command line.

::

    audio-extract talk.mp4                  # -> talk.m4a (same container, audio only)
    audio-extract talk.mp4 --format mp3     # -> talk.mp3 (stream copy or transcode)
    audio-extract talk.mp4 --info --json    # the audio tracks, for scripts

It is a thin front end over the same engine as the middleware: the default
output is the middleware's audio-only rendition (one :func:`plan_source` plan
written to a file); ``--format aac``/``mp3`` write raw frames through
:mod:`audio_middleware.elementary`. Exit codes follow the error classes:
0 done, 2 usage (bad arguments, unreadable input, an output that exists, is
the input or is in a missing directory), 3 unsupported media or no audio,
4 malformed input or a safety limit hit, 5 the system failed to write the
output (disk full, read-only or forbidden directory, I/O error), 141 stdout
closed by its reader (``| head``, a player that quits), without a message.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import select
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TextIO, cast

from . import __version__
from .elementary import FORMATS, describe, sniff, write_audio
from .emit import iter_plan_bytes
from .errors import AudioExtractionError, NoAudioTrack
from .extract import Selection, plan_source
from .limits import Limits
from .sniff import Container
from .sources import FileSource

PROG = "audio-extract"
EXIT_OK, EXIT_USAGE, EXIT_UNSUPPORTED, EXIT_MALFORMED, EXIT_WRITE = 0, 2, 3, 4, 5
#: stdout closed by its reader: what a shell reports for a program killed by SIGPIPE (128 + 13).
EXIT_PIPE = 141
#: How write errors on ``-o -`` name the output.
STDOUT = "stdout"
#: What each error class is called in messages.
LABELS = {"NoAudioTrack": "no audio", "UnsupportedMedia": "unsupported", "TranscodeUnavailable": "unsupported",
          "NeedsTranscode": "unsupported", "MalformedMedia": "malformed input", "SourceTruncated": "malformed input",
          "LimitExceeded": "limit exceeded", "InvalidRequest": "invalid request"}
TRACK = re.compile(r"^(?:[1-9][0-9]{0,5}|[A-Za-z]{3})$")
#: File extensions that pick an output format when ``--format`` is left at auto.
EXTENSION_FORMATS = {".aac": "aac", ".adts": "aac", ".mp3": "mp3"}


class ProgressBar:
    """A one-line progress bar on a terminal stream.

    It stays silent for the first ``delay`` seconds so that short files print
    nothing, redraws at most every ``interval`` seconds, and always ends its
    line when it has drawn anything.
    """

    def __init__(self, stream: TextIO, label: str, *, delay: float = 0.5, interval: float = 0.1,
                 width: int = 30, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.label = label
        self.delay = delay
        self.interval = interval
        self.width = width
        self.clock = clock
        self.started = clock()
        self.drawn_at: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.started < self.delay:
            return
        if self.drawn_at is not None and now - self.drawn_at < self.interval:
            return
        self._draw(done, total)
        self.drawn_at = now

    def _draw(self, done: int, total: int) -> None:
        fraction = min(1.0, done / total) if total > 0 else 0.0
        filled = int(fraction * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:3.0f}% {done / 1e6:.1f}/{total / 1e6:.1f} MB")
        self.stream.flush()

    def finish(self, total: int) -> None:
        """The work is done: show 100% and end the line (if anything was drawn)."""
        if self.drawn_at is not None:
            self._draw(total, total)
            self.abort()

    def abort(self) -> None:
        """The work failed: end the line so that the error message starts on its own."""
        if self.drawn_at is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn_at = None


def _track(value: str) -> str:
    if not TRACK.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is neither a 1-based track number nor an ISO-639-2 code")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write the audio of an MP4-family (MP4, MOV, M4A, 3GP) or FLV file.",
        epilog="exit codes: 0 done, 2 usage, 3 unsupported media or no audio, 4 malformed input, "
               "5 cannot write the output, 141 stdout closed early")
    parser.add_argument("input", metavar="INPUT", help="the media file to read")
    parser.add_argument("-o", "--output", metavar="OUTPUT",
                        help="where to write (default: INPUT with .m4a, .flv, .aac or .mp3; '-' = stdout)")
    parser.add_argument("-f", "--format", choices=("auto", "aac", "mp3"), default="auto",
                        help="auto: the same container with only the audio (.m4a for MP4 family, .flv for FLV); "
                             "aac: raw AAC with ADTS headers; mp3: MP3 (stream copy when the audio is MP3, "
                             "else transcoded with PyAV)")
    parser.add_argument("-t", "--track", type=_track,
                        help="audio track: 1-based number among the audio tracks, or ISO-639-2 language (eng)")
    parser.add_argument("--info", action="store_true", help="list the audio tracks instead of extracting")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    parser.add_argument("-y", "--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--no-transcode", action="store_true",
                        help="fail (exit 3) rather than transcode when the audio is not already in --format")
    parser.add_argument("--no-progress", action="store_true", help="never draw the progress bar")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse: usage errors (2), --help and --version (0)
        return int(stop.code or 0)
    try:
        code = _handle(args)
        _flush_stdout()
        return code
    except BrokenPipeError:
        _detach_stdout()
        return EXIT_PIPE


def _flush_stdout() -> None:
    """Flush what print() left in stdout, so that a closed pipe shows here (exit 141), not in the
    interpreter's flush at exit (a traceback).

    Started with stdout closed (``>&-``: cron, daemons), Python sets sys.stdout
    to None: there is nothing to flush, and touching it would crash a run that
    succeeded.
    """
    if sys.stdout is not None:
        _flush(sys.stdout)


def _handle(args: argparse.Namespace) -> int:
    """Run the parsed command, turning each error class into a one-line message and its exit status.

    BrokenPipeError (stdout closed by its reader) is left to :func:`main`, which
    exits quietly: the reader is gone, nobody wants a message about it.
    """
    try:
        return _run(args)
    except _UsageError as error:
        _complain(args, EXIT_USAGE, "usage", str(error))
        return EXIT_USAGE
    except AudioExtractionError as error:
        code = error.exit_code if error.exit_code in (EXIT_USAGE, EXIT_UNSUPPORTED) else EXIT_MALFORMED
        _complain(args, code, LABELS.get(type(error).__name__, "error"), str(error))
        return code
    except _WriteError as error:
        if error.name == STDOUT:
            if isinstance(error.error, BrokenPipeError):
                raise error.error from None
            _detach_stdout()  # else the interpreter's flush at exit fails again, with a traceback
        _complain(args, EXIT_WRITE, "write error", str(error))
        return EXIT_WRITE
    except BrokenPipeError:
        raise
    except OSError as error:  # not on the output (that is a _WriteError): reading the input failed midway
        where = f"{error.filename!r}: " if error.filename else ""
        _complain(args, EXIT_WRITE, "i/o error", f"{where}{error.strerror or error}")
        return EXIT_WRITE
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted\n")
        return 130


class _UsageError(Exception):
    """Bad combination of arguments, unreadable input, or an output we refuse to write (exit 2)."""


class _WriteError(Exception):
    """The system failed to create or write OUTPUT (exit 5): disk full, read-only directory, EIO...

    Kept apart from OSError so that the message names the output (a failed
    ``write`` on a descriptor has no file name) and an input read error is
    not reported as a write error.
    """

    def __init__(self, name: str, error: OSError) -> None:
        super().__init__(f"{name}: {error.strerror or error}")
        self.name = name
        self.error = error


@contextlib.contextmanager
def _writing(name: str) -> Iterator[None]:
    """Report an OSError of the enclosed step on OUTPUT as a :class:`_WriteError` naming it."""
    try:
        yield
    except OSError as error:
        raise _WriteError(name, error) from error


class _Sink:
    """OUTPUT's stream, writing every byte of each block, remembering the first OSError it met.

    PyAV swallows an exception raised in its write callback and fails with
    "Error in PyAV callback", which the transcoder reports as malformed input;
    the remembered error lets the command report the real cause (a full disk,
    a closed pipe) instead. A raw stream (stdout under ``python -u`` or
    PYTHONUNBUFFERED) may write part of a block (a pipe whose reader left while
    it waited) and say so only in its return value, which the writers do not
    check: writing on raises the real error (EPIPE: exit 141) instead of
    ending in success with bytes lost.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        try:
            while view:
                view = view[self._write_some(view):]
        except OSError as error:
            self.error = self.error or error
            raise
        return len(data)

    def _write_some(self, view: memoryview) -> int:
        """Write part of ``view``; how many bytes were taken.

        On a non-blocking descriptor (O_NONBLOCK set by whoever opened the pipe)
        a full pipe is not an error: a raw stream returns None, a buffered one
        raises BlockingIOError saying how much it took. Wait until the reader
        makes room: retrying at once would spin at full CPU, and giving up
        would lose the output.
        """
        try:
            written = self._stream.write(view)  # type: ignore[arg-type]
        except BlockingIOError as error:
            _wait_writable(self._stream)
            return error.characters_written
        if written is None:
            _wait_writable(self._stream)
            return 0
        return written

    def flush(self) -> None:
        try:
            _flush(self._stream)
        except OSError as error:
            self.error = self.error or error
            raise


def _flush(stream: IO) -> None:
    """``stream.flush()``, waiting while a non-blocking descriptor is full instead of failing (see _Sink)."""
    while True:
        try:
            stream.flush()
            return
        except BlockingIOError:
            _wait_writable(stream)


def _wait_writable(stream: IO) -> None:
    """Sleep until the descriptor of ``stream`` can take more bytes (or has failed: the next write says how).

    A stream without a descriptor cannot be waited for: pause briefly rather than spin.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        time.sleep(0.01)
        return
    if hasattr(select, "poll"):  # any descriptor number, unlike select()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll()
    else:  # pragma: no cover (Windows)
        select.select([], [fd], [])


def _detach_stdout() -> None:
    """Point stdout at the null device, so that the flush at exit cannot fail (and print) again.

    Python's documented way to exit after EPIPE; in-process callers whose
    sys.stdout has no descriptor (tests), and a stdout that was never open, are left alone.
    """
    if sys.stdout is None:
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)


def _say(text: str) -> None:
    """Write a message on stderr; started with stderr closed (``2>&-``), Python sets sys.stderr to
    None: the message goes nowhere (never into the output), and the exit status still tells."""
    if sys.stderr is not None:
        sys.stderr.write(text)


def _complain(args: argparse.Namespace, code: int, label: str, message: str) -> None:
    _say(f"{PROG}: {label}: {message}\n")
    if args.json:
        print(json.dumps({"error": {"exit_code": code, "kind": label, "message": message}}))


def _run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.input):
        raise _UsageError(f"cannot read {args.input!r}: no such file")
    try:
        handle = open(args.input, "rb")
    except OSError as error:
        raise _UsageError(f"cannot read {args.input!r}: {error.strerror}") from None
    with handle:
        container = sniff(FileSource(handle))
    if args.info:
        return _info(args)
    fmt = args.format
    if fmt == "auto" and args.output:
        fmt = EXTENSION_FORMATS.get(os.path.splitext(args.output)[1].lower(), "auto")
    if container is Container.FLV and args.track not in (None, "1"):
        raise NoAudioTrack(f"an FLV file has a single audio stream; there is no track {args.track!r}")
    output = args.output or default_output(args.input, container, fmt)
    _check_extension(container, fmt, output)
    if output == "-":
        return _to_stdout(args, fmt)
    descriptor = _descriptor(output)
    if descriptor is not None:
        return _to_descriptor(args, fmt, output, descriptor)
    _check_output(args, output)
    summary = _to_file(args, fmt, output)
    _report(args, summary)
    return EXIT_OK


def default_output(path: str, container: Container, fmt: str) -> str:
    """INPUT with the extension of the output format; never INPUT itself."""
    extension = FORMATS[fmt][2] if fmt in FORMATS else ".flv" if container is Container.FLV else ".m4a"
    stem = os.path.splitext(path)[0]
    candidate = stem + extension
    if os.path.abspath(candidate) == os.path.abspath(path):
        candidate = f"{stem}.audio{extension}"
    return candidate


#: Extensions that would lie about the container of an ``auto`` rendition.
MP4_EXTENSIONS = frozenset({".m4a", ".mp4", ".m4v", ".mov", ".3gp", ".3g2", ".m4b", ".f4v", ".f4a"})


def _check_extension(container: Container, fmt: str, output: str) -> None:
    if fmt != "auto" or output == "-":
        return
    extension = os.path.splitext(output)[1].lower()
    if (container is Container.FLV and extension in MP4_EXTENSIONS) or (
            container is Container.MP4 and extension == ".flv"):
        raise _UsageError(f"the audio-only rendition of this {container.value.upper()} file is "
                          f"{container.value.upper()}, not {extension} (use --format aac or mp3 for raw audio)")


def _check_output(args: argparse.Namespace, output: str) -> None:
    """Refuse outputs that cannot or must not be written, before any work (exit 2)."""
    if os.path.isdir(output):
        raise _UsageError(f"{output!r} is a directory")
    if output.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        # dirname(abspath('missing/')) is the parent, which exists: without this the rename fails late
        raise _UsageError(f"cannot write {output!r}: directory {output!r} does not exist")
    if os.path.exists(output):
        if os.path.samefile(output, args.input):
            raise _UsageError("OUTPUT is the input file")
        if not args.overwrite and _holds_data(output):
            raise _UsageError(f"{output!r} exists (use --overwrite to replace it)")
    target = _destination(output)
    if os.path.islink(target):
        raise _UsageError(f"cannot write {output!r}: {os.strerror(errno.ELOOP)}")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise _UsageError(f"cannot write {output!r}: directory {directory!r} does not exist")


def _destination(output: str) -> str:
    """Where the finished file is renamed to: OUTPUT, or the file it links to when OUTPUT is a symlink.

    Renaming over the link would replace the link itself by a regular file (as
    root, a system link such as one in /dev). ``cp`` and ffmpeg write through a
    link, so users expect the link to stay and its target to get the audio
    (created if the link dangles).
    """
    return os.path.realpath(output) if os.path.islink(output) else output


def _descriptor(output: str) -> int | None:
    """The number of the open descriptor that OUTPUT names, else None.

    ``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N`` (and
    links to them) are doors to a descriptor the caller set up (``> file``,
    ``3>&1``), not files to replace: a rename would replace the link (as root,
    /dev/stdout itself) and the audio would never reach the descriptor. Links
    are followed one at a time, since resolving them all (realpath) would go
    through the descriptor to whatever is behind it.
    """
    path = os.path.join(os.getcwd(), output)
    pattern = re.compile(rf"/(?:dev/fd|proc/(?:self|thread-self|{os.getpid()}(?:/task/[0-9]+)?)/fd)/([0-9]+)")
    for _ in range(40):  # Linux gives up after 40 links too
        parent, base = os.path.split(path)
        if base in ("", ".", ".."):
            return None
        parent = os.path.realpath(parent)  # /dev/fd -> /proc/self/fd -> /proc/PID/fd
        path = os.path.join(parent, base)
        match = pattern.fullmatch(path)
        if match:
            return int(match.group(1))
        try:
            path = os.path.join(parent, os.readlink(path))
        except OSError:  # not a link (or unreadable): an ordinary path
            return None
    return None


def _mode(path: str) -> int:
    """The file type and mode bits of ``path`` (following links), 0 when it cannot be examined."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _is_stream(output: str) -> bool:
    """Whether OUTPUT exists and is neither a regular file nor a directory (device, FIFO, socket).

    Those are written into in place: renaming a temporary file over them would
    replace the node itself (as root, /dev/null for the whole system) and the
    reader of a FIFO would never get the audio.
    """
    mode = _mode(output)
    return bool(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _holds_data(output: str) -> bool:
    """Whether writing OUTPUT destroys what it holds (a regular file, a block device): needs --overwrite.

    Writing into /dev/null, a FIFO or a socket destroys nothing.
    """
    mode = _mode(output)
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _progress(args: argparse.Namespace, label: str) -> ProgressBar | None:
    if args.quiet or args.no_progress or sys.stderr is None or not sys.stderr.isatty():
        return None
    return ProgressBar(sys.stderr, label)


def _extract(args: argparse.Namespace, fmt: str, out: IO[bytes], name: str, bar: ProgressBar | None) -> dict:
    """Write the audio to ``out``; any failure caused by a failed write becomes a :class:`_WriteError`."""
    sink = _Sink(out)
    try:
        return _write(args, fmt, cast(IO[bytes], sink), bar)
    except Exception as error:
        if sink.error is None:
            raise
        raise _WriteError(name, sink.error) from error


def _write(args: argparse.Namespace, fmt: str, out: IO[bytes], bar: ProgressBar | None) -> dict:
    limits = Limits()
    if fmt in FORMATS:
        return write_audio(args.input, out, fmt, track=args.track, limits=limits, progress=bar,
                           allow_transcode=not args.no_transcode)
    return write_rendition(args.input, out, track=args.track, limits=limits, progress=bar)


def _write_and_close(args: argparse.Namespace, fmt: str, out: IO[bytes], name: str,
                     bar: ProgressBar | None) -> dict:
    """Extract into ``out`` and close it: a full disk may show only when the last buffer is written.

    Flushed first with :func:`_flush`, which waits on a full non-blocking
    descriptor, where close() would fail and drop the rest.
    """
    try:
        summary = _extract(args, fmt, out, name, bar)
        with _writing(name):
            _flush(out)
            out.close()
    finally:
        if not out.closed:
            with contextlib.suppress(OSError):
                out.close()
    return summary


def _with_progress(args: argparse.Namespace, label: str, work: Callable[[ProgressBar | None], dict]) -> dict:
    """Run ``work`` with the progress bar (if any), whose line ends whatever happens."""
    bar = _progress(args, label)
    try:
        summary = work(bar)
    except BaseException:
        if bar is not None:
            bar.abort()
        raise
    if bar is not None:
        bar.finish(os.path.getsize(args.input))
    return summary


def _to_file(args: argparse.Namespace, fmt: str, output: str) -> dict:
    """Write OUTPUT: into it if it is a device or FIFO, else through a temporary file."""
    write = _into_stream if _is_stream(output) else _through_temporary
    summary = _with_progress(args, os.path.basename(output), lambda bar: write(args, fmt, output, bar))
    summary["output"] = output
    return summary


def _through_temporary(args: argparse.Namespace, fmt: str, output: str, bar: ProgressBar | None) -> dict:
    """Write through a temporary file beside OUTPUT, renamed into place only when complete.

    A failure (bad input, full disk) then never leaves a short OUTPUT, and the
    temporary file is removed.
    """
    name, target = repr(output), _destination(output)
    directory = os.path.dirname(os.path.abspath(target))
    with _writing(name):
        fd, partial = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".part", dir=directory)
    try:
        summary = _write_and_close(args, fmt, os.fdopen(fd, "wb"), name, bar)
        with _writing(name):
            os.chmod(partial, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
            os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return summary


def _into_stream(args: argparse.Namespace, fmt: str, output: str, bar: ProgressBar | None) -> dict:
    """Write straight into an existing device, FIFO or socket (``-o /dev/null``, a named pipe): see _is_stream."""
    name = repr(output)
    with _writing(name):
        fd = os.open(output, os.O_WRONLY)  # no O_CREAT: never a new regular file if the node vanished
    return _write_and_close(args, fmt, os.fdopen(fd, "wb"), name, bar)


def _to_stdout(args: argparse.Namespace, fmt: str, output: str = "-") -> int:
    """Write into stdout (``-o -``, ``-o /dev/stdout``) through sys.stdout, after what print() left in it.

    Started with stdout closed, sys.stdout is None and descriptor 1 may since
    have been reused for one of our own files: a write error, never a write.
    """
    if args.json:
        raise _UsageError(f"--json prints a summary on stdout; it cannot be combined with -o {output}")
    if sys.stdout is None:
        raise _WriteError(STDOUT, OSError(errno.EBADF, "not open (the command was started with stdout closed; "
                                                       "use -o FILE)"))
    _check_descriptor(args, _fileno(sys.stdout), STDOUT, sys.stdout.isatty())
    stdout = sys.stdout.buffer  # may be raw (python -u): _Sink completes short writes

    def write(bar: ProgressBar | None) -> dict:
        summary = _extract(args, fmt, stdout, STDOUT, bar)
        with _writing(STDOUT):
            _flush(stdout)
        return summary

    summary = _with_progress(args, STDOUT, write)
    summary["output"] = output
    _report(args, summary)
    return EXIT_OK


def _to_descriptor(args: argparse.Namespace, fmt: str, output: str, fd: int) -> int:
    """Write into the open descriptor ``fd`` that OUTPUT names (see _descriptor), as ``-o -`` does stdout.

    Nothing is created or replaced, so there is no --overwrite check; writing
    through a duplicate keeps the descriptor's offset and O_APPEND (``3>>log``),
    which opening the path again would lose.
    """
    if fd == 1:
        return _to_stdout(args, fmt, output)
    name = repr(output)
    out = _open_descriptor(fd, name)
    try:
        _check_descriptor(args, out.fileno(), {0: "stdin", 2: "stderr"}.get(fd, output), out.isatty())
    except BaseException:
        out.close()
        raise
    if fd == 2 and sys.stderr is not None:
        sys.stderr.flush()  # what we wrote on stderr before comes before the audio
    summary = _with_progress(args, os.path.basename(output),
                             lambda bar: _write_and_close(args, fmt, out, name, bar))
    summary["output"] = output
    if fd != 2 or args.json:  # the summary line on stderr would land in the audio
        _report(args, summary)
    return EXIT_OK


def _open_descriptor(fd: int, name: str) -> IO[bytes]:
    """A binary stream on a duplicate of ``fd``, so that closing it leaves ``fd`` open.

    Descriptor 0 or 2 the command was started without (its sys stream is None)
    may since have been reused for one of our own files: a write error.
    """
    standard = {0: "stdin", 2: "stderr"}.get(fd)
    if standard and getattr(sys, standard) is None:
        raise _WriteError(name, OSError(errno.EBADF, f"not open (the command was started with {standard} closed)"))
    with _writing(name):
        return os.fdopen(os.dup(fd), "wb")


def _fileno(stream: IO) -> int | None:
    """The descriptor of ``stream``, None if it has none (an in-memory stream)."""
    try:
        return stream.fileno()
    except (OSError, ValueError):
        return None


def _check_descriptor(args: argparse.Namespace, fd: int | None, what: str, terminal: bool) -> None:
    """Refuse (exit 2) an open descriptor that is a terminal (binary would garble it) or the input file
    (``1<>talk.mp4``: the audio would overwrite what is being read)."""
    if terminal:
        raise _UsageError(f"refusing to write binary audio to a terminal (redirect {what} or use -o FILE)")
    with contextlib.suppress(OSError):
        if fd is not None and os.path.samestat(os.fstat(fd), os.stat(args.input)):
            raise _UsageError("OUTPUT is the input file")


def write_rendition(path: str, out: IO[bytes], *, track: str | None = None, limits: Limits | None = None,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the middleware's audio-only rendition of the file at ``path`` (same container) to ``out``."""
    limits = limits or Limits()
    with open(path, "rb") as handle:
        source = FileSource(handle)
        container = sniff(source)
        plan = plan_source(container, source, limits, Selection(track=track))
        total = plan.length or 0
        written = 0
        for block in iter_plan_bytes(plan.pieces, source):
            out.write(block)
            written += len(block)
            if progress is not None:
                progress(written, total)
    info = plan.info
    duration = info.get("duration") or None
    if info.get("fragmented"):
        duration = _fragmented_duration(path, info, limits)
    return {"format": "flv" if container is Container.FLV else "m4a", "method": "copy",
            "content_type": plan.content_type, "size": written, "duration": duration,
            "tracks": len(info.get("tracks") or ())}


def _fragmented_duration(path: str, info: dict, limits: Limits) -> float | None:
    """The kept tracks' duration in a fragmented file: the moov's headers describe only its own samples (none
    with ``empty_moov``, the first second in a partially fragmented file), so the fragments are counted too."""
    kept = {track["track_id"] for track in info.get("tracks") or ()}
    with open(path, "rb") as handle:
        facts = describe(FileSource(handle), limits)
    return max((track["duration"] for track in facts["tracks"] if track["track_id"] in kept), default=0.0) or None


def _report(args: argparse.Namespace, summary: dict) -> None:
    summary = {"input": args.input, **summary}
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        duration = summary.get("duration")
        took = f", {duration:.2f} s" if duration else ""
        _say(f"{summary['output']}: {summary['format']} ({summary['method']}), {summary['size']} bytes{took}\n")


# -- --info --------------------------------------------------------------------------------------

COLUMNS = (("#", "index"), ("id", "track_id"), ("codec", "codec"), ("lang", "language"), ("duration", "duration"),
           ("samples", "samples"), ("rate", "sample_rate"), ("ch", "channels"))


def _info(args: argparse.Namespace) -> int:
    with open(args.input, "rb") as handle:
        facts = describe(FileSource(handle))
    tracks = facts["tracks"]
    if args.json:
        print(json.dumps({"input": args.input, **facts}))
    else:
        print(format_info(args.input, facts))
    if not tracks:
        _say(f"{PROG}: no audio: {args.input} has no audio track\n")
        return EXIT_UNSUPPORTED
    return EXIT_OK


def format_info(name: str, facts: dict) -> str:
    """The human-readable track table of ``--info``."""
    kind = facts["container"].upper()
    if facts.get("brand"):
        kind += f" (brand {facts['brand']}{', fragmented' if facts.get('fragmented') else ''})"
    count = len(facts["tracks"])
    lines = [f"{name}: {kind}, {count} audio track{'s' if count != 1 else ''}"]
    if not count:
        return lines[0]
    rows = [[title for title, _ in COLUMNS]]
    for track in facts["tracks"]:
        row = []
        for _, key in COLUMNS:
            value = track.get(key)
            row.append("-" if value is None else f"{value:.3f} s" if key == "duration" else str(value))
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    numeric = {"index", "track_id", "duration", "samples", "sample_rate", "channels"}
    for row in rows:
        cells = [cell.rjust(width) if key in numeric else cell.ljust(width)
                 for cell, width, (_, key) in zip(row, widths, COLUMNS, strict=True)]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


__all__ = ["ProgressBar", "build_parser", "default_output", "format_info", "main", "write_rendition"]
