"""Conditional requests and ranges as a state table, checked against a reference model of RFC 9110.

The model (``rfc9110`` and its helpers) is written from the RFC, not from the
middleware: 13.1.1-13.1.5 (If-Match, If-None-Match, If-Modified-Since,
If-Unmodified-Since, If-Range), 13.2.2 (their order of evaluation), 14.1-14.3
(byte ranges, Range, Accept-Ranges), 8.8.3.2 (strong and weak comparison),
5.6.7 (the three HTTP-date formats), 9.3.2 (HEAD), 15.3.7 (206), 15.4.5 (304),
15.5.17 (416). Where the README documents a deliberate choice among what the RFC
allows (several ranges answered with the whole 200, ``range_policy``), the model
says so next to the README line it encodes.

Every answer path of the middleware is driven in process with werkzeug's test
``Client`` over a product of request header values; one test per path collects
every mismatch and reports them as one table:

- ``mp4-file``: an MP4 served by ``send_file`` (file-backed, planned; ETag + Last-Modified);
- ``mp4-weak``: the same with a weak source ETag (so a weak rendition ETag);
- ``flv-stream``: an FLV from a generator without Content-Length (streamed, chunked);
- ``flv-recorded``: an FLV from a generator with Content-Length, after one whole answer (recorded plan);
- ``mp4-store``: the MP4 answered from the rendition store, after one full download filled it;
- ``html-pass``: a flagged HTML page of the same app, passed through;
- ``mp4-ignore`` / ``mp4-reject``: the MP4 with ``range_policy="ignore"`` / ``"reject"``.

Written as a review, it found three disagreements the docs did not cover, each fixed
in ``rendition.py``: ``bytes=-0`` (a 416, not the whole 200), ``bytes=100-199,`` (one
range: empty list elements are ignored) and an If-Range holding the ETag without its
quotes (neither an entity-tag nor a date: false, so the whole 200).
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import pytest
from werkzeug.test import Client
from werkzeug.utils import send_file

from audio_middleware import AudioOnlyMiddleware

# -- the reference model: RFC 9110 -------------------------------------------------------------------------------

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAY, _MON = "|".join(_DAYS), "|".join(_MONTHS)
# 5.6.7: IMF-fixdate, and the obsolete rfc850-date and asctime-date that recipients MUST accept.
_IMF_FIXDATE = re.compile(rf"(?:{_DAY}), (\d\d) ({_MON}) (\d{{4}}) (\d\d):(\d\d):(\d\d) GMT")
_RFC850_DATE = re.compile(rf"(?:{'|'.join(_LONG_DAYS)}), (\d\d)-({_MON})-(\d\d) (\d\d):(\d\d):(\d\d) GMT")
_ASCTIME_DATE = re.compile(rf"(?:{_DAY}) ({_MON}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{{4}})")
# 8.8.3: entity-tag = [ weak ] opaque-tag; weak = %s"W/" (case-sensitive); etagc = %x21 / %x23-7E / obs-text.
_ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e\x80-\xff]*)"')
# 5.6.1: #rule lists: OWS around commas, empty elements allowed and ignored.
_LIST_MEMBER = re.compile(r'[ \t]*(?:(W/)?"([\x21\x23-\x7e\x80-\xff]*)")?[ \t]*(?:,|$)')

STAR = "*"


def http_date(value: str | None) -> datetime.datetime | None:
    """An HTTP-date (RFC 9110 5.6.7) as an aware datetime, or None when the value is not one."""
    if value is None:
        return None
    value = value.strip(" \t")
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hour, minute, second = match.groups()
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, two_digits, hour, minute, second = match.groups()
        # 5.6.7: a two-digit year more than 50 years in the future is the most recent past year with those digits.
        this_year = datetime.datetime.now(datetime.timezone.utc).year
        year = str(this_year - this_year % 100 + int(two_digits))
        if int(year) > this_year + 50:
            year = str(int(year) - 100)
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hour, minute, second, year = match.groups()
    else:
        return None
    try:
        return datetime.datetime(int(year), _MONTHS.index(month) + 1, int(day.strip()), int(hour), int(minute),
                                 int(second), tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def format_http_date(moment: datetime.datetime, style: str = "imf") -> str:
    day, long_day, month = _DAYS[moment.weekday()], _LONG_DAYS[moment.weekday()], _MONTHS[moment.month - 1]
    if style == "rfc850":
        return f"{long_day}, {moment.day:02d}-{month}-{moment.year % 100:02d} {moment:%H:%M:%S} GMT"
    if style == "asctime":
        return f"{day} {month} {moment.day:2d} {moment:%H:%M:%S} {moment.year}"
    return f"{day}, {moment.day:02d} {month} {moment.year} {moment:%H:%M:%S} GMT"


def entity_tag(value: str | None) -> tuple[bool, str] | None:
    """(weak, opaque) of one entity-tag (8.8.3), or None when the value is not exactly one."""
    match = _ENTITY_TAG.fullmatch(value.strip(" \t")) if value is not None else None
    return None if match is None else (bool(match.group(1)), match.group(2))


def entity_tags(value: str) -> str | list[tuple[bool, str]] | None:
    """``"*"``, or the list of (weak, opaque) of an If-Match / If-None-Match value; None if malformed."""
    text = value.strip(" \t")
    if text == STAR:
        return STAR
    tags: list[tuple[bool, str]] = []
    position = 0
    while position < len(text):
        match = _LIST_MEMBER.match(text, position)
        if match is None or match.end() == position:
            return None
        if match.group(2) is not None:
            tags.append((bool(match.group(1)), match.group(2)))
        position = match.end()
    return tags or None


def strong_match(a: tuple[bool, str], b: tuple[bool, str] | None) -> bool:
    """8.8.3.2: both not weak and their opaque-tags identical."""
    return b is not None and not a[0] and not b[0] and a[1] == b[1]


def weak_match(a: tuple[bool, str], b: tuple[bool, str] | None) -> bool:
    """8.8.3.2: opaque-tags identical, either or both may be weak."""
    return b is not None and a[1] == b[1]


@dataclass(frozen=True)
class Representation:
    """What the model needs to know of the selected representation and of the answer path."""

    etag: str | None  # ETag field of the full 200
    last_modified: str | None  # Last-Modified field of the full 200
    length: int  # bytes of the full 200's content
    ranges: bool  # the path serves byte ranges at all (documented per path, see PATHS)
    policy: str = "serve"  # range_policy


@dataclass(frozen=True)
class Expected:
    statuses: frozenset[int]
    why: str
    span: tuple[int, int] | None = None  # [first, last] byte positions of a 206

    def __str__(self) -> str:
        codes = "/".join(str(code) for code in sorted(self.statuses))
        span = f" bytes {self.span[0]}-{self.span[1]}" if self.span else ""
        return f"{codes}{span} ({self.why})"


def expect(why: str, *statuses: int, span: tuple[int, int] | None = None) -> Expected:
    return Expected(frozenset(statuses), why, span)


def rfc9110(rep: Representation, method: str, headers: dict[str, str]) -> Expected:
    """The answer RFC 9110 prescribes to a GET or HEAD of ``rep`` with these request ``headers``.

    13.2.2, in order: 1. If-Match, 2. else If-Unmodified-Since (412), 3. If-None-Match,
    4. else If-Modified-Since (304 for GET/HEAD), 5. If-Range, then Range (14.2:
    "The Range header field is evaluated after evaluating the precondition header
    fields ... and only if the result in absence of the Range header field would be
    a 200", so a 304 or 412 wins over a 206 or 416).
    """
    current = entity_tag(rep.etag)
    modified = http_date(rep.last_modified)  # 13.1.3/13.1.4: ignored when the resource has no modification date
    if "If-Match" in headers:
        # 13.1.1: "*" is true when a current representation exists; else true if any listed tag matches strongly.
        tags = entity_tags(headers["If-Match"])
        if not (tags == STAR or any(strong_match(tag, current) for tag in tags or [])):
            return expect("13.1.1 If-Match false", 412)
    elif "If-Unmodified-Since" in headers:
        # 13.1.4: ignored with If-Match, or when not a valid HTTP-date; false if modified after the date.
        since = http_date(headers["If-Unmodified-Since"])
        if since is not None and modified is not None and modified > since:
            return expect("13.1.4 If-Unmodified-Since false", 412)
    if "If-None-Match" in headers:
        # 13.1.2: "*" is false when a current representation exists; else false if any listed tag matches weakly.
        tags = entity_tags(headers["If-None-Match"])
        if tags == STAR or any(weak_match(tag, current) for tag in tags or []):
            return expect("13.1.2 If-None-Match false, GET/HEAD", 304)
    elif "If-Modified-Since" in headers:
        # 13.1.3: ignored with If-None-Match, or when not a valid HTTP-date; false if not modified since.
        since = http_date(headers["If-Modified-Since"])
        if since is not None and modified is not None and modified <= since:
            return expect("13.1.3 If-Modified-Since false", 304)
    if "Range" not in headers:
        return expect("no Range", 200)
    if method != "GET":
        return expect("14.2 Range defined for GET only", 200)
    if rep.policy == "ignore":
        # README, Options: range_policy "ignore": Range is ignored, full `200`
        return expect("range_policy ignore (README)", 200)
    if rep.policy == "reject":
        # README, Options: range_policy "reject": `416`; AudioOnlyMiddleware docstring: "416 when Range is sent"
        return expect("range_policy reject (README)", 416)
    if not rep.ranges:
        return expect("14.2 server MAY ignore Range (path without range support)", 200)
    if "If-Range" in headers and not if_range(headers["If-Range"], current, modified):
        return expect("13.1.5 If-Range false: Range ignored", 200)
    return byte_ranges(headers["Range"], rep.length)


def if_range(value: str, current: tuple[bool, str] | None, modified: datetime.datetime | None) -> bool:
    """13.1.5: an entity-tag is true if it strongly matches; an HTTP-date is true if it is a strong validator
    and exactly matches Last-Modified; otherwise (a malformed value included) false."""
    tag = entity_tag(value)
    if tag is not None:
        return strong_match(tag, current)
    date = http_date(value)
    if date is not None:
        return modified is not None and date == modified
    return False


_INT_RANGE = re.compile(r"(\d+)-(\d*)")
_SUFFIX_RANGE = re.compile(r"-(\d+)")


def byte_ranges(value: str, length: int) -> Expected:
    """14.1-14.2 for a server that supports byte ranges, with every precondition true."""
    unit, equals, range_set = value.partition("=")
    if equals and unit.lower() != "bytes":  # 14.1: range unit names are case-insensitive
        return expect("14.2 unknown range unit MUST be ignored", 200)
    specs = [spec.strip(" \t") for spec in range_set.split(",")]
    specs = [spec for spec in specs if spec]  # 5.6.1.2: empty list elements are ignored
    spans: list[tuple[int, int] | None] = []  # None: a valid but unsatisfiable range-spec
    for spec in specs:
        if match := _INT_RANGE.fullmatch(spec):
            first, last = int(match.group(1)), int(match.group(2)) if match.group(2) else None
            if last is not None and last < first:
                spans = []
                break  # 14.1.2: an int-range with last-pos < first-pos is invalid
            spans.append((first, length - 1 if last is None else min(last, length - 1)) if first < length else None)
        elif match := _SUFFIX_RANGE.fullmatch(spec):
            suffix = int(match.group(1))
            spans.append((max(0, length - suffix), length - 1) if suffix > 0 else None)
        else:
            spans = []
            break  # an other-range: undefined for bytes, so the ranges-specifier is invalid (14.1.1)
    if not equals or not spans:
        # 14.2: "invalid or unsatisfiable ... SHOULD send a 416", and a server "MAY ignore or reject" an invalid one
        return expect("14.2 invalid ranges-specifier: 416 or ignored", 416, 200)
    if len(spans) > 1:
        # README, Options: range_policy "serve": "a single byte range gets `206` (several ranges get the full `200`)"
        return expect("several ranges: whole 200 (README)", 200)
    if spans[0] is None:
        return expect("14.1.2 unsatisfiable", 416)
    return expect("14.2 satisfiable single range", 206, span=spans[0])


# -- the apps and the answer paths -------------------------------------------------------------------------------

LAST_MODIFIED = datetime.datetime(2021, 6, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
FLAG = "ali_audio_only=1"
#: 15.3.7 (206) and 15.4.5 (304): sent if the 200 to the same request would have had them.
CACHE_FIELDS = ("Cache-Control", "Content-Location", "Date", "ETag", "Expires", "Vary")


class Site:
    """One WSGI app: a file-backed MP4 (send_file), the same with a weak ETag, an FLV from a
    generator without (``/v.flv``) or with (``/sized.flv``) Content-Length, and an HTML page (send_file)."""

    def __init__(self, mp4, flv, html) -> None:
        self.mp4, self.flv, self.html = mp4, flv, html

    def __call__(self, environ: dict, start_response: Callable):
        path = environ["PATH_INFO"]
        if path in ("/v.flv", "/sized.flv"):
            data = self.flv.read_bytes()
            headers = [("Content-Type", "video/x-flv"), ("ETag", '"v-flv"'),
                       ("Last-Modified", format_http_date(LAST_MODIFIED)), ("Cache-Control", "max-age=60"),
                       ("Vary", "Origin")]
            if path == "/sized.flv":
                headers.append(("Content-Length", str(len(data))))
            start_response("200 OK", headers)
            return (data[i:i + 4093] for i in range(0, len(data), 4093))
        file, mimetype, etag = {"/v.mp4": (self.mp4, "video/mp4", '"v-mp4"'),
                                "/weak.mp4": (self.mp4, "video/mp4", 'W/"v-mp4"'),
                                "/page.html": (self.html, "text/html", '"v-html"')}[path]
        response = send_file(str(file), environ, mimetype=mimetype, conditional=True, etag=False, max_age=60)
        response.headers["ETag"] = etag
        response.headers["Vary"] = "Origin"
        response.headers.setdefault("Accept-Ranges", "bytes")  # werkzeug 3 sends it on every 200, 2.3 does not
        return response(environ, start_response)


@dataclass(frozen=True)
class PathSpec:
    url: str
    middleware: str  # key of the middleware in the fixture
    ranges: bool  # whether the path serves byte ranges (what the docs say for it)
    sized: bool  # whether a 200 has a Content-Length
    accept_ranges: str | None  # the Accept-Ranges of its 200
    policy: str = "serve"
    doc: str = ""


PATHS = {
    "mp4-file": PathSpec(f"/v.mp4?{FLAG}", "plain", True, True, "bytes",
                         doc="README Behaviour: flagged MP4: exact Content-Length, Accept-Ranges: bytes"),
    "mp4-weak": PathSpec(f"/weak.mp4?{FLAG}", "plain", True, True, "bytes",
                         doc="rendition ETag weak because the source's is (rendition.validators_for)"),
    # README Behaviour, flagged FLV: "from a forward-only body (a generator), the first answer is chunked with
    # `Accept-Ranges: none`", and the plan is kept only "when the app sends `Content-Length`": never here.
    "flv-stream": PathSpec(f"/v.flv?{FLAG}", "plain", False, False, "none",
                           doc="README Behaviour: generator FLV without Content-Length: chunked, Accept-Ranges: none"),
    # README Behaviour, flagged FLV: "once one has gone out whole its plan is kept (when the app sends
    # `Content-Length`...), so later answers have an exact `Content-Length` and Range too" (the reference GET).
    "flv-recorded": PathSpec(f"/sized.flv?{FLAG}", "plain", True, True, "bytes",
                             doc="README Behaviour: generator FLV with Content-Length, after one whole answer"),
    # README, Rendition cache: later requests "(full, `Range`, `HEAD`) are answered from the file"
    "mp4-store": PathSpec(f"/v.mp4?{FLAG}", "store", True, True, "bytes",
                          doc="README Rendition cache: hits answer full, Range and HEAD"),
    # README Behaviour: a flagged 200 that is not MP4/FLV: "the app's response, untouched; its If-Match/
    # If-None-Match/dates are evaluated against the app's own validators"; and "The app is always called with
    # `Range`, `If-Range` ... removed": so no range support, the app's own Accept-Ranges kept.
    "html-pass": PathSpec(f"/page.html?{FLAG}", "plain", False, True, "bytes",
                          doc="README Behaviour: non-media 200 passed through untouched, Range removed"),
    "mp4-ignore": PathSpec(f"/v.mp4?{FLAG}", "ignore", False, True, "none", "ignore",
                           doc="README Options: range_policy ignore"),
    "mp4-reject": PathSpec(f"/v.mp4?{FLAG}", "reject", False, True, "none", "reject",
                           doc="README Options: range_policy reject"),
}


# -- request header values ---------------------------------------------------------------------------------------

ETAG_TOKENS = ("strong", "weak", "other", "*")
DATE_TOKENS = ("before", "at", "bad")
IF_RANGE_TOKENS = ("-", "strong", "weak", "other", "unquoted", "date-at", "date-before", "date-after", "junk")
RANGE_TOKENS = ("-", "0-99", "100-", "0-", "-500", "-huge", "100-huge", "last", "at-end", "far", "-0", "99-10",
                "junk", "items", "Bytes", "multi", "multi-unsat", "comma")


def etag_value(token: str, rep: Representation) -> str:
    opaque = entity_tag(rep.etag)[1]  # type: ignore[index]
    return {"strong": f'"{opaque}"', "weak": f'W/"{opaque}"', "other": '"nope"', "*": "*",
            "list": f'"nope", "{opaque}"', "wlist": f'W/"nope" , W/"{opaque}",', "unquoted": opaque}[token]


def date_value(token: str, rep: Representation) -> str:
    modified = http_date(rep.last_modified)
    assert modified is not None
    second = datetime.timedelta(seconds=1)
    return {"before": format_http_date(modified - second), "at": format_http_date(modified),
            "after": format_http_date(modified + second), "at-rfc850": format_http_date(modified, "rfc850"),
            "at-asctime": format_http_date(modified, "asctime"), "bad": "yesterday"}[token]


def range_value(token: str, length: int) -> str:
    return {"0-99": "bytes=0-99", "100-": "bytes=100-", "0-": "bytes=0-", "-500": "bytes=-500",
            "-huge": "bytes=-100000000", "100-huge": "bytes=100-100000000", "last": f"bytes={length - 1}-",
            "at-end": f"bytes={length}-", "far": f"bytes={length + 100}-{length + 200}", "-0": "bytes=-0",
            "99-10": "bytes=99-10", "junk": "bytes=abc", "items": "items=0-99", "Bytes": "Bytes=0-99",
            "multi": "bytes=0-99,200-299", "multi-unsat": f"bytes={length}-,{length + 10}-",
            "comma": "bytes=100-199,"}[token]


def header_value(name: str, token: str, rep: Representation) -> str:
    if name in ("If-Match", "If-None-Match"):
        return etag_value(token, rep)
    if name in ("If-Modified-Since", "If-Unmodified-Since"):
        return date_value(token, rep)
    if name == "Range":
        return range_value(token, rep.length)
    if token.startswith("date-"):
        return date_value(token[5:], rep)
    return "junk" if token == "junk" else etag_value(token, rep)


@dataclass(frozen=True)
class Case:
    method: str
    tokens: tuple[tuple[str, str], ...]  # (header name, token), absent headers left out

    @property
    def token(self) -> dict[str, str]:
        return dict(self.tokens)

    def __str__(self) -> str:
        return " ".join([self.method, *(f"{name}={token}" for name, token in self.tokens)])

    def headers(self, rep: Representation) -> dict[str, str]:
        return {name: header_value(name, token, rep) for name, token in self.tokens}


def case(method: str, **tokens: str) -> Case:
    names = {"im": "If-Match", "ius": "If-Unmodified-Since", "inm": "If-None-Match", "ims": "If-Modified-Since",
             "ir": "If-Range", "range": "Range"}
    return Case(method, tuple((names[key], value) for key, value in tokens.items() if value != "-"))


def precondition_cases(etags: tuple[str, ...] = ETAG_TOKENS, dates: tuple[str, ...] = DATE_TOKENS) -> list[Case]:
    """13.2.2 order: the full product of the four precondition fields, GET and HEAD."""
    return [case(method, im=im, ius=ius, inm=inm, ims=ims)
            for method, im, ius, inm, ims in itertools.product(("GET", "HEAD"), ("-", *etags), ("-", *dates),
                                                              ("-", *etags), ("-", *dates))]


def format_cases() -> list[Case]:
    """Date formats and boundaries, and entity-tag lists (with empty members and OWS)."""
    dates = ("before", "at", "after", "at-rfc850", "at-asctime", "bad")
    cases = [case("GET", ius=token) for token in dates] + [case("GET", ims=token) for token in dates]
    cases += [case("GET", ir=f"date-{token}", range="0-99") for token in ("at-rfc850", "at-asctime")]
    for token in ("list", "wlist"):
        cases += [case("GET", im=token), case("GET", inm=token), case("HEAD", inm=token),
                  case("GET", ir=token, range="0-99")]
    return cases


def range_cases() -> list[Case]:
    """14.1-14.2 and 13.1.5: every Range value with every If-Range value, GET and HEAD."""
    return [case(method, ir=if_range_token, range=range_token)
            for method, if_range_token, range_token in itertools.product(("GET", "HEAD"), IF_RANGE_TOKENS,
                                                                         RANGE_TOKENS)]


def cross_cases() -> list[Case]:
    """Preconditions that decide 412/304 against ranges that would be a 206, a 416 or a whole 200."""
    return [case("GET", im=im, inm=inm, ims=ims, ir=ir, range=range_token)
            for im, inm, ims, ir, range_token in itertools.product(("-", "strong", "other"), ("-", "strong", "other"),
                                                                   ("-", "before", "at"), ("-", "strong", "other"),
                                                                   ("0-99", "at-end", "multi"))]


def joined(*groups: list[Case]) -> list[Case]:
    return list(dict.fromkeys(itertools.chain(*groups)))


#: The full product of the precondition values runs on the cheap paths (about 1 ms a request); the paths that
#: cost more per request (a walk of the whole FLV, a store hit) get a 3-value product of the same fields, the
#: policies (which only change range handling) the range cases alone. About 8 s for all of them.
CASES = joined(precondition_cases(), format_cases(), range_cases(), cross_cases())
REDUCED = joined(precondition_cases(("strong", "other"), ("before", "at")), format_cases(), range_cases(),
                 cross_cases())
CASES_BY_PATH = {"mp4-file": CASES, "mp4-weak": CASES, "html-pass": CASES, "flv-stream": REDUCED,
                 "mp4-store": REDUCED, "flv-recorded": joined(range_cases(), cross_cases()),
                 "mp4-ignore": range_cases(), "mp4-reject": range_cases()}
assert set(CASES_BY_PATH) == set(PATHS)


# -- running the matrix ------------------------------------------------------------------------------------------


class Fixture(NamedTuple):
    middlewares: dict[str, AudioOnlyMiddleware]
    clients: dict[str, Client]
    references: dict[str, object]  # path -> the full 200 of a GET without conditions


@pytest.fixture(scope="module")
def site(media, tmp_path_factory) -> Fixture:
    """The app, its middlewares, and each path's reference (the full 200 of a GET without conditions)."""
    folder = tmp_path_factory.mktemp("http_matrix")
    mp4 = shutil.copyfile(media("mp4_faststart"), folder / "v.mp4")
    flv = shutil.copyfile(media("flv_aac"), folder / "v.flv")
    html = folder / "page.html"
    html.write_bytes(b"<!doctype html><title>page</title><audio src='v.mp4?ali_audio_only=1'></audio>\n")
    stamp = LAST_MODIFIED.timestamp()
    for file in (mp4, flv, html):
        os.utime(file, (stamp, stamp))
    app = Site(mp4, flv, html)
    middlewares = {"plain": AudioOnlyMiddleware(app),
                   "store": AudioOnlyMiddleware(app, rendition_cache=tmp_path_factory.mktemp("store")),
                   "ignore": AudioOnlyMiddleware(app, range_policy="ignore"),
                   "reject": AudioOnlyMiddleware(app, range_policy="reject")}
    clients = {name: Client(middleware) for name, middleware in middlewares.items()}
    primed = clients["store"].get(PATHS["mp4-store"].url)  # the full download that fills the store
    primed.get_data()
    primed.close()
    assert primed.status_code == 200 and middlewares["store"].renditions.fills == 1
    references = {}
    for path, spec in PATHS.items():
        full = clients[spec.middleware].get(spec.url)
        full.get_data()
        full.close()
        assert full.status_code == 200, (path, full.status)
        references[path] = full
    assert middlewares["store"].renditions.hits == 1  # the reference of mp4-store was a hit
    # README, Rendition cache: a hit has "the same headers as a planned answer"
    assert references["mp4-store"].headers["ETag"] == references["mp4-file"].headers["ETag"]
    return Fixture(middlewares, clients, references)


def representation(path: str, reference) -> Representation:
    spec = PATHS[path]
    return Representation(reference.headers.get("ETag"), reference.headers.get("Last-Modified"),
                          len(reference.get_data()), spec.ranges, spec.policy)


def problems_of(path: str, reference, rep: Representation, case_: Case, response) -> tuple[Expected, list[str]]:
    """The model's answer, and every way ``response`` differs from it (empty: conforms)."""
    spec = PATHS[path]
    expected = rfc9110(rep, case_.method, case_.headers(rep))
    status, headers, body = response.status_code, response.headers, response.get_data()
    if status not in expected.statuses:
        return expected, [f"status {status}"]
    problems = []
    full = reference.get_data()
    if case_.method == "HEAD" and body:
        problems.append("9.3.2: HEAD answer with content")
    if status in (200, 206, 304) and headers.get("ETag") != rep.etag:
        problems.append(f"ETag {headers.get('ETag')!r}, not the 200's {rep.etag!r}")
    if status in (206, 304):  # 15.3.7, 15.4.5: the fields a 200 to the same request would have had
        missing = [name for name in CACHE_FIELDS if name in reference.headers and name not in headers]
        if missing:
            problems.append(f"{status} without {', '.join(missing)}")
    if status != 206 and status != 416 and "Content-Range" in headers:
        problems.append(f"Content-Range {headers['Content-Range']!r} on a {status}")
    length = headers.get("Content-Length")
    if status in (200, 206) and headers.get("Accept-Ranges") != spec.accept_ranges:
        problems.append(f"Accept-Ranges {headers.get('Accept-Ranges')!r}, documented {spec.accept_ranges!r}")
    if status == 200:
        if case_.method == "GET" and body != full:
            problems.append(f"200 content is not the full body ({len(body)} of {len(full)} bytes)")
        if spec.sized and length != str(len(full)):
            problems.append(f"Content-Length {length!r}, full length {len(full)}")
        if not spec.sized and length is not None:
            problems.append(f"Content-Length {length!r} on a documented chunked answer")
    elif status == 206:
        first, last = expected.span  # type: ignore[misc]
        if headers.get("Content-Range") != f"bytes {first}-{last}/{len(full)}":  # 14.4
            problems.append(f"Content-Range {headers.get('Content-Range')!r}, RFC: 'bytes {first}-{last}/{len(full)}'")
        if length != str(last - first + 1):
            problems.append(f"Content-Length {length!r}, RFC: {last - first + 1}")
        if body != full[first:last + 1]:
            problems.append(f"206 content ({len(body)} bytes) is not bytes {first}-{last} of the 200")
    elif status == 304:
        if body:
            problems.append("15.4.5: 304 with content")
        if length is not None and length != str(len(full)):  # 8.6
            problems.append(f"304 Content-Length {length!r}, not the 200's {len(full)}")
    elif status == 416 and headers.get("Content-Range") != f"bytes */{len(full)}":  # 15.5.17
        problems.append(f"416 Content-Range {headers.get('Content-Range')!r}, RFC: 'bytes */{len(full)}'")
    return expected, problems


def run_cases(site, path: str, cases: list[Case]) -> list[str]:
    """Send every case on ``path``; one table row per case that does not conform to the model."""
    spec = PATHS[path]
    reference = site.references[path]
    rep = representation(path, reference)
    client = site.clients[spec.middleware]
    store = site.middlewares[spec.middleware].renditions
    hits_before = store.hits if store is not None else 0
    rows = []
    for case_ in cases:
        response = client.open(spec.url, method=case_.method, headers=case_.headers(rep))
        expected, problems = problems_of(path, reference, rep, case_, response)
        response.close()
        if problems:
            rows.append(f"{str(case_):<78} | {response.status_code} | {'; '.join(problems)} | RFC: {expected}")
    if store is not None and store.hits - hits_before != len(cases):
        rows.append(f"rendition store: {store.hits - hits_before} hits for {len(cases)} requests")
    return rows


def table(path: str, rows: list[str], total: int) -> str:
    header = f"{'request (token per header; see header_value)':<78} | got | problem | RFC 9110 model"
    return f"{len(rows)} of {total} cases on {path} differ from the RFC 9110 model:\n" + "\n".join([header, *rows])


@pytest.mark.parametrize("path", list(PATHS))
def test_conditional_and_range_matrix(site, path):
    cases = CASES_BY_PATH[path]
    assert len(cases) > 300
    rows = run_cases(site, path, cases)
    assert not rows, table(path, rows, len(cases))


def test_the_model_itself():
    """The reference model on RFC 9110's own examples and edges, independent of the product."""
    rep = Representation('"xyzzy"', "Tue, 01 Jun 2021 12:00:00 GMT", 10000, True)
    assert http_date("Sun, 06 Nov 1994 08:49:37 GMT") == http_date("Sunday, 06-Nov-94 08:49:37 GMT") \
        == http_date("Sun Nov  6 08:49:37 1994") is not None
    assert http_date("Sun, 06 Nov 1994 08:49:37 UTC") is None
    assert entity_tags('"xyzzy", "r2d2xxxx", "c3piozzzz"') == [(False, "xyzzy"), (False, "r2d2xxxx"),
                                                                 (False, "c3piozzzz")]
    assert entity_tags("xyzzy") is None and entity_tags('w/"xyzzy"') is None
    statuses = {
        (("If-Match", 'W/"xyzzy"'),): {412}, (("If-None-Match", 'W/"xyzzy"'),): {304},
        (("If-Match", '"xyzzy"'), ("If-Unmodified-Since", "Mon, 31 May 2021 12:00:00 GMT")): {200},
        (("If-None-Match", '"x"'), ("If-Modified-Since", "Tue, 01 Jun 2021 12:00:00 GMT")): {200},
        (("Range", "bytes=0-499"),): {206}, (("Range", "bytes=-0"),): {416}, (("Range", "bytes=9500-"),): {206},
        (("Range", "bytes=10000-"),): {416}, (("Range", "bytes=5-1"),): {200, 416}, (("Range", "x=0-1"),): {200},
        (("Range", "bytes=0-1"), ("If-Range", 'W/"xyzzy"')): {200},
        (("Range", "bytes=0-1"), ("If-Range", "Tue, 01 Jun 2021 12:00:01 GMT")): {200},
        (("Range", "bytes=0-1"), ("If-Range", "Tue, 01 Jun 2021 12:00:00 GMT")): {206},
        (("Range", "bytes=10000-"), ("If-None-Match", "*")): {304},
    }
    for headers, wanted in statuses.items():
        assert rfc9110(rep, "GET", dict(headers)).statuses == wanted, headers
    assert rfc9110(rep, "GET", {"Range": "bytes=-500"}).span == (9500, 9999)
    assert rfc9110(rep, "GET", {"Range": "bytes=100-199,"}).span == (100, 199)
    assert rfc9110(rep, "HEAD", {"Range": "bytes=0-1"}).statuses == {200}
