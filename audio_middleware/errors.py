"""One small hierarchy for everything that can go wrong while extracting audio.

The middleware maps each class to an HTTP status (``http_status``) so that a
failure found before the first body byte becomes a short plain-text error; the
command line maps them to exit codes. Nothing outside this hierarchy should
escape the container parsers, whatever bytes they are fed.
"""

from __future__ import annotations


def echo(value: str, limit: int = 40) -> str:
    """A request value quoted for an error reason, cut short: reasons stay one short line."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


class AudioExtractionError(Exception):
    """Base class: the source could not be turned into an audio rendition."""

    http_status = 502
    exit_code = 4


class NoAudioTrack(AudioExtractionError):
    """The media is fine but holds no audio track (or not the one asked for)."""

    http_status = 404
    exit_code = 3


class UnsupportedMedia(AudioExtractionError):
    """Valid media of a kind or layout this package does not handle."""

    http_status = 501
    exit_code = 3


class MalformedMedia(AudioExtractionError):
    """The bytes claim to be MP4/FLV but break the format's rules."""

    http_status = 502
    exit_code = 4


class LimitExceeded(AudioExtractionError):
    """A configured safety limit (moov size, table entries, spool size...) was hit."""

    http_status = 502
    exit_code = 4


class SourceTruncated(MalformedMedia):
    """The source ended before a byte range the plan needs.

    Raised while streaming it aborts the response, so that a client never sees
    a well-formed but short file.
    """


class NeedsRandomAccess(Exception):
    """Internal signal: the planner needs to read backwards (e.g. moov after mdat).

    Not an :class:`AudioExtractionError`: the middleware answers it by giving the
    planner a random-access source (Range sub-requests or a spooled copy).
    """


class InvalidRequest(AudioExtractionError):
    """The request's own parameters are wrong (a negative start, an unknown option value)."""

    http_status = 400
    exit_code = 2


class RangeNotSatisfiable(AudioExtractionError):
    """The requested window or range lies outside the media."""

    http_status = 416
    exit_code = 3
