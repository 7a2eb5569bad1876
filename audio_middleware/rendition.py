"""HTTP facts about the audio rendition: validators, conditional requests, ranges.

The audio rendition is a different representation of the resource, so it gets
its own ETag, derived from the source's validator and the extraction options.
All header parsing is werkzeug's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from werkzeug.datastructures import Headers, Range
from werkzeug.http import (
    parse_date,
    parse_etags,
    parse_if_range_header,
    parse_range_header,
    quote_etag,
    unquote_etag,
)

#: Bumped whenever the bytes we produce for the same input change.
OUTPUT_VERSION = "am2"


@dataclass(frozen=True)
class Validators:
    """The source's validator (for cache keys) and the rendition's own ETag."""

    source: str | None
    etag: str | None
    last_modified: str | None
    #: Whether ``last_modified`` is a strong validator (:func:`settled_date`), as If-Range needs.
    last_modified_strong: bool = False

    @property
    def strong(self) -> bool:
        return self.etag is not None and not self.etag.startswith("W/")


def validators_for(headers: Headers, variant: tuple) -> Validators:
    """Derive the rendition's validators from the upstream response headers.

    Without an ETag, ``Last-Modified`` and ``Content-Length`` stand for the file, but
    only once it has kept that date for a second (:func:`settled_date`): before that,
    a second change within the same second would keep both, so the rendition's ETag
    is weak and its plan is not cached (no ``source``), nor its bytes stored.
    """
    last_modified = headers.get("Last-Modified")
    etag_header = headers.get("ETag")
    length = headers.get("Content-Length")
    settled = last_modified is not None and settled_date(last_modified, headers.get("Date"))
    source: str | None
    if etag_header:
        value, weak = unquote_etag(etag_header)
        source = f"etag:{etag_header}"
    elif last_modified and length:
        value, weak = f"{last_modified}|{length}", not settled
        source = None if weak else f"lm:{last_modified}|{length}"
    else:
        return Validators(None, None, last_modified, settled)
    digest = hashlib.sha1(f"{OUTPUT_VERSION}|{value}|{variant!r}".encode()).hexdigest()[:20]
    return Validators(source, quote_etag(f"audio-{digest}", bool(weak)), last_modified, settled)


def settled_date(last_modified: str, date: str | None) -> bool:
    """Whether a ``Last-Modified`` is a strong validator (RFC 9110 8.8.2.2): it is at least one
    second older than the response's ``Date`` (the app's, else now). A date that does not
    parse, or lies in the future, is not."""
    modified = parse_date(last_modified)
    if modified is None:
        return False
    served = parse_date(date) or datetime.now(timezone.utc)
    return served - modified >= timedelta(seconds=1)


def precondition_failed(environ: dict, validators: Validators) -> bool:
    """True when If-Match or If-Unmodified-Since fail for the rendition: a 412 (RFC 9110 13.2.2, steps 1-2).

    If-Match compares strongly, so a weak rendition ETag never matches a listed one;
    If-Unmodified-Since counts only without If-Match, and only when the rendition
    has a modification date.
    """
    if_match = environ.get("HTTP_IF_MATCH")
    if if_match:
        etags = parse_etags(if_match)
        if etags.star_tag:
            return False  # the rendition exists
        return not (validators.strong and etags.contains(unquote_etag(validators.etag)[0]))  # type: ignore[arg-type]
    since = parse_date(environ.get("HTTP_IF_UNMODIFIED_SINCE"))
    modified = parse_date(validators.last_modified)
    return since is not None and modified is not None and modified > since


def not_modified(environ: dict, validators: Validators) -> bool:
    """True when If-None-Match, or without it If-Modified-Since, say the client's copy is current
    (RFC 9110 13.2.2, steps 3-4: a 304 for GET and HEAD).

    If-None-Match compares weakly; when it is sent, If-Modified-Since is ignored, even
    if the rendition has no ETag to compare with (RFC 9110 13.1.3).
    """
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match:
        etags = parse_etags(if_none_match)
        if etags.star_tag:
            return True  # the rendition exists
        return validators.etag is not None and etags.contains_weak(unquote_etag(validators.etag)[0])
    since = parse_date(environ.get("HTTP_IF_MODIFIED_SINCE"))
    modified = parse_date(validators.last_modified)
    return since is not None and modified is not None and modified <= since


def if_range_allows(environ: dict, validators: Validators) -> bool:
    """If-Range: serve the range only if the client's validator still matches (strongly)."""
    raw = environ.get("HTTP_IF_RANGE")
    if not raw:
        return True
    if_range = parse_if_range_header(raw)
    if if_range.etag is not None:
        # werkzeug also reads a bare token as an ETag; RFC 9110 13.1.5: neither an entity-tag nor a
        # date is a false condition, and a weak tag never matches
        if not raw.strip().startswith('"') or not validators.strong:
            return False
        return unquote_etag(validators.etag)[0] == if_range.etag
    if if_range.date is not None and validators.last_modified_strong:
        # RFC 9110 13.1.5: a date matches only a strong Last-Modified (one a second older than the answer)
        return parse_date(validators.last_modified) == if_range.date
    return False


@dataclass(frozen=True)
class RangeAnswer:
    """What to do with a Range header: full body (None), a slice, or 416."""

    start: int = 0
    stop: int = 0
    satisfiable: bool = True
    partial: bool = False


def answer_range(environ: dict, length: int, validators: Validators) -> RangeAnswer:
    """Decide 200 / 206 / 416 for a single byte range on a body of ``length`` bytes.

    Several ranges, other units, a malformed header or a stale If-Range get the
    full body (RFC 9110 allows ignoring Range).
    """
    pair = _honoured_range(environ, validators)
    if pair is None:
        return RangeAnswer()
    if pair == NO_BYTES:
        return RangeAnswer(satisfiable=False)
    start, stop = pair
    if start < 0 and stop is None and length:
        # a suffix longer than the body is the whole body (RFC 9110 14.1.2), not a 416
        return RangeAnswer(max(0, length + start), length, partial=True)
    found = Range("bytes", [pair]).range_for_length(length)
    if found is None:
        return RangeAnswer(satisfiable=False)
    return RangeAnswer(found[0], found[1], partial=True)


def range_honoured(environ: dict, validators: Validators) -> bool:
    """Whether the request's Range gets a 206 or a 416 (not the whole body), before the length is known."""
    return _honoured_range(environ, validators) is not None


def _honoured_range(environ: dict, validators: Validators) -> tuple[int, int | None] | None:
    """The request's byte range, as werkzeug's ``(start, stop)`` pair, when it is one range and
    If-Range allows it; :data:`NO_BYTES` for ``bytes=-0``; else None (the whole body)."""
    header = environ.get("HTTP_RANGE")
    if not header or not if_range_allows(environ, validators):
        return None
    header = _without_empty_elements(header)
    if _EMPTY_SUFFIX.fullmatch(header):
        # RFC 9110 14.1.1: valid, and never satisfiable; werkzeug 3 rejects it, and werkzeug 2.3
        # reads it as "0-" (the whole body), so it is decided before either parses it
        return NO_BYTES
    parsed = parse_range_header(header)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None
    return parsed.ranges[0]


#: ``bytes=-0``: a suffix of no bytes (with the case and spaces werkzeug accepts around a range).
_EMPTY_SUFFIX = re.compile(r"(?i)\s*bytes\s*=\s*-0+\s*")
#: The range of ``bytes=-0``, which no length satisfies (a 416).
NO_BYTES = (0, 0)


def _without_empty_elements(header: str) -> str:
    """The Range header without empty list elements, which RFC 9110 5.6.1.2 says a recipient
    must accept and ignore (``bytes=0-99,``) while werkzeug rejects the header."""
    units, equals, specs = header.partition("=")
    if not equals or "," not in specs:
        return header
    return units + equals + ",".join(spec for spec in specs.split(",") if spec.strip())
