"""Serve only the audio of MP4 and FLV videos from any WSGI app.

::

    from audio_middleware import AudioOnlyMiddleware
    app.wsgi_app = AudioOnlyMiddleware(app.wsgi_app)

Module map (imports go one way: top uses bottom)::

    middleware.py    WSGI glue: flag, status, type; picks a source, asks for a plan, answers
                     (Range, validators, HEAD, errors); uses upstream, rendition, cache,
                     renditions (on-disk store), body (close-once iterables), record
                     (lazy plans kept once streamed whole)
    cli.py, jobs/    the command line and the extract-audio job API
    elementary.py    raw AAC (ADTS) / MP3 output for the command line and jobs
    extract.py       the one planner entry point: container + source + Selection -> plan
    mp4/, flv/       container logic: bytes in, Plan out (no WSGI, no HTTP); mp4/moov_read.py
                     reads the moov without the sample tables of non-audio tracks
    sniff.py         which container a Content-Type / first bytes announce
    sources.py       the upstream body: file (pread), forward-only stream, Range sub-requests, spool
    plan.py, emit.py Literal / Span / Spans pieces; streaming a plan over a source
    errors.py, limits.py  the error hierarchy (with HTTP statuses and exit codes); safety limits
"""

from .errors import (
    AudioExtractionError,
    InvalidRequest,
    LimitExceeded,
    MalformedMedia,
    NoAudioTrack,
    RangeNotSatisfiable,
    SourceTruncated,
    UnsupportedMedia,
)
from .limits import Limits
from .middleware import AudioOnlyMiddleware

__version__ = "0.1.0"

__all__ = [
    "AudioExtractionError",
    "AudioOnlyMiddleware",
    "InvalidRequest",
    "LimitExceeded",
    "Limits",
    "MalformedMedia",
    "NoAudioTrack",
    "RangeNotSatisfiable",
    "SourceTruncated",
    "UnsupportedMedia",
    "__version__",
]
