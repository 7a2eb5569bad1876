"""The WSGI glue: flagged request in, audio-only rendition out.

::

    from audio_middleware import AudioOnlyMiddleware
    app.wsgi_app = AudioOnlyMiddleware(app.wsgi_app)

No container parsing happens here: this module decides *whether* to transform
(flag, method, status, type, first bytes), chooses a source for the body,
asks :mod:`audio_middleware.extract` for a plan, and turns the plan into a
response (status, headers, Range, validators, body iterable).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Callable, Iterable
from functools import partial
from itertools import chain
from urllib.parse import parse_qsl, unquote_plus

from werkzeug.datastructures import ContentRange, Headers
from werkzeug.http import HTTP_STATUS_CODES, parse_content_range_header, parse_options_header, remove_entity_headers
from werkzeug.wsgi import FileWrapper

from .body import ClosingBody, FileRegion, close_quietly, sendfile_region, withhold_tail
from .cache import PlanCache
from .emit import DEFAULT_BLOCK, iter_plan_bytes
from .errors import (
    AudioExtractionError,
    InvalidRequest,
    LimitExceeded,
    MalformedMedia,
    NeedsRandomAccess,
    UnsupportedMedia,
    echo,
)
from .extract import Selection, plan_source
from .limits import GiB, Limits, MiB
from .plan import LazyPlan, Plan, Span, Spans
from .record import recording
from .rendition import (
    Validators,
    answer_range,
    not_modified,
    precondition_failed,
    range_honoured,
    validators_for,
)
from .renditions import Hit, RenditionStore
from .sniff import Container, by_content_type, by_signature
from .sources import (
    FileSource,
    RangeSource,
    SequentialSource,
    Source,
    positioned_reads,
    spool,
    stop_retaining,
)
from .upstream import CaptureFileWrapper, Upstream

log = logging.getLogger("audio_middleware")

RANGE_POLICIES = ("serve", "ignore", "reject")
#: Environ keys holding the raw request target (gunicorn, werkzeug, uWSGI, Apache), query included.
REQUEST_TARGETS = ("REQUEST_URI", "RAW_URI")
#: Video file name extensions in a Content-Disposition filename (or filename*), before its end or quote.
VIDEO_EXTENSION = re.compile(r"\.(?:mp4|mov|m4v|f4v)(?=[\"';\s]|$)", re.IGNORECASE)
#: Request headers never forwarded on the upstream call: the app must send the whole
#: file, uncompressed, and we evaluate conditionals against the audio rendition ourselves.
UPSTREAM_DROPPED = ("HTTP_RANGE", "HTTP_IF_RANGE", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_MATCH",
                    "HTTP_IF_UNMODIFIED_SINCE", "HTTP_ACCEPT_ENCODING")
#: Response headers with which an app leaves the body to the front server (nginx, Apache mod_xsendfile,
#: lighttpd): the body the middleware gets is empty, so there is nothing to extract from.
FRONT_SERVER_FILE = ("X-Accel-Redirect", "X-Sendfile", "X-Lighttpd-Send-File")
#: Response headers that describe the video bytes (or the hop) and never the audio rendition.
RESPONSE_DROPPED = ("Content-Length", "Content-Type", "ETag", "Content-Range", "Accept-Ranges", "Content-Location",
                    "Content-MD5", "Digest", "Content-Digest", "Repr-Digest", "Transfer-Encoding", "Connection",
                    "Keep-Alive")


class AudioOnlyMiddleware:
    """Serve the audio-only rendition of MP4/FLV responses when ``?ali_audio_only=1``.

    :param app: the WSGI application serving the videos.
    :param param: query parameter that flags a request (its value must be ``1``).
    :param range_policy: ``"serve"`` (206 for a single byte range on the rendition),
        ``"ignore"`` (always the full 200) or ``"reject"`` (416 when Range is sent).
    :param max_moov_size: largest MP4 movie header accepted, in bytes.
    :param spool_limit: largest body copied to a temporary file when random access is
        needed and the app neither serves a file nor honours Range.
    :param track_param: query parameter selecting one audio track (1-based index or
        ISO-639-2 language); ``None`` disables it.
    :param start_param, end_param: query parameters (seconds) that clip the rendition;
        ``None`` disables seeking.
    :param cache_entries, cache_bytes: bounds of the in-process plan cache (0 disables it).
    :param block_size: size of the blocks written to the server.
    :param range_subrequests: allow internal Range sub-requests to an app that advertises
        ``Accept-Ranges: bytes`` when random access is needed.
    :param limits: all parsing limits at once (overrides ``max_moov_size``/``spool_limit``).
    :param rendition_cache: a directory where complete renditions are kept after their first
        full download and served from then on with the server's ``wsgi.file_wrapper``
        (sendfile); ``None`` (the default) disables it. See :mod:`audio_middleware.renditions`.
    :param rendition_cache_bytes: bound of the total size of that directory's renditions.
    """

    def __init__(self, app: Callable, *, param: str = "ali_audio_only", range_policy: str = "serve",
                 max_moov_size: int = 64 * MiB, spool_limit: int = 2 * GiB, track_param: str | None = "audio_track",
                 start_param: str | None = "start", end_param: str | None = "end", cache_entries: int = 256,
                 cache_bytes: int = 64 * MiB, block_size: int = DEFAULT_BLOCK, range_subrequests: bool = True,
                 limits: Limits | None = None, rendition_cache: str | os.PathLike | None = None,
                 rendition_cache_bytes: int = GiB) -> None:
        if range_policy not in RANGE_POLICIES:
            raise ValueError(f"range_policy must be one of {RANGE_POLICIES}, not {range_policy!r}")
        self.app = app
        self.param = param
        self.range_policy = range_policy
        self.track_param = track_param
        self.start_param = start_param
        self.end_param = end_param
        self.block_size = block_size
        self.range_subrequests = range_subrequests
        self.limits = limits or Limits(max_moov_size=max_moov_size, spool_limit=spool_limit)
        self.cache = PlanCache(cache_entries, cache_bytes)
        self.renditions = None if rendition_cache is None else RenditionStore(rendition_cache, rendition_cache_bytes)
        self._own_params = {name for name in (param, track_param, start_param, end_param) if name}

    # -- entry point ---------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD") or not self._flagged(query):
            return self.app(environ, start_response)
        head = environ.get("REQUEST_METHOD") == "HEAD"
        try:
            selection = self._selection(query)
        except AudioExtractionError as error:
            return self._error(environ, start_response, error)
        upstream_environ = self._upstream_environ(environ)
        upstream = Upstream(self.app, upstream_environ)
        try:
            return self._respond(environ, upstream_environ, upstream, selection, head, start_response)
        except AudioExtractionError as error:
            close_quietly(upstream)
            return self._error(environ, start_response, error)
        except BaseException:
            close_quietly(upstream)
            raise

    def _flagged(self, query: list[tuple[str, str]]) -> bool:
        values = [value for name, value in query if name == self.param]
        return bool(values) and values[0] == "1"

    def _selection(self, query: list[tuple[str, str]]) -> Selection:
        """Track and time window from the query; bad values are a 400."""
        values = dict(reversed(query))  # first occurrence wins
        track = values.get(self.track_param) if self.track_param else None
        start = _seconds(values.get(self.start_param), self.start_param) if self.start_param else None
        end = _seconds(values.get(self.end_param), self.end_param) if self.end_param else None
        if start is not None and end is not None and start >= end:
            raise InvalidRequest(f"{self.start_param} ({start}) must be before {self.end_param} ({end})")
        if start == 0:
            start = None
        return Selection(track or None, start, end)

    def _upstream_environ(self, environ: dict) -> dict:
        """The environ the app sees: a plain GET for the whole file, our parameters removed."""
        upstream = {key: value for key, value in environ.items() if key not in UPSTREAM_DROPPED}
        upstream["REQUEST_METHOD"] = "GET"
        upstream["QUERY_STRING"] = query = _without_params(environ.get("QUERY_STRING", ""), self._own_params)
        for key in REQUEST_TARGETS:  # the raw request target some servers add says the same
            target = environ.get(key)
            if isinstance(target, str) and "?" in target:
                upstream[key] = target.partition("?")[0] + ("?" + query if query else "")
        upstream["wsgi.file_wrapper"] = CaptureFileWrapper
        upstream["audio_middleware.server_file_wrapper"] = environ.get("wsgi.file_wrapper")
        return upstream

    # -- deciding and planning -----------------------------------------------------------------

    def _respond(self, environ: dict, upstream_environ: dict, upstream: Upstream, selection: Selection, head: bool,
                 start_response: Callable, *, replanned: tuple | None = None) -> Iterable[bytes]:
        """Answer a flagged request from the app's response ``upstream``.

        ``replanned`` is set on the second call of the app that some plans need
        (see :meth:`_answer_again`): (cache key, plan made from the first body or None).
        """
        server_wrapper = environ.get("wsgi.file_wrapper")
        if upstream.status_code != 200 or _encoded(upstream.headers):
            return self._pass_through(environ, start_response, upstream, server_wrapper, None, head)
        mimetype = parse_options_header(upstream.headers.get("Content-Type", ""))[0]
        declared, worth_sniffing = by_content_type(mimetype)
        if declared is None and not worth_sniffing:
            return self._pass_through(environ, start_response, upstream, server_wrapper, None, head)
        handed_off = next((name for name in FRONT_SERVER_FILE if name in upstream.headers), None)
        if handed_off is not None:
            raise UnsupportedMedia(f"the app leaves the file to the front server ({handed_off}): the middleware "
                                   "never sees its bytes; serve the video from the app to extract its audio")

        source = self._initial_source(upstream)
        found = by_signature(source.read(0, 16))
        if found is None:
            if declared is not None:
                raise MalformedMedia(f"body served as {mimetype} is not a valid {declared.value.upper()} file")
            replay = None if source.random_access else source.replay()  # type: ignore[union-attr]
            return self._pass_through(environ, start_response, upstream, server_wrapper, replay, head)

        validators = validators_for(upstream.headers, (found.value, selection.key))
        base_headers = self._base_headers(upstream.headers, validators, found)

        stored_as = None
        if self.renditions is not None and validators.strong:
            stored_as = _store_tag(environ, upstream_environ, validators)
            hit = self.renditions.find(stored_as)
            if hit is not None:
                return self._send_stored(environ, start_response, upstream, source, hit, base_headers, validators,
                                         head)

        key = self._cache_key(environ, upstream_environ, validators, found, selection)
        planned = replanned[1] if replanned is not None and replanned[0] == key else None
        try:
            plan, source = self._plan(found, source, upstream, upstream_environ, selection, key, environ, planned)
        except _ReadTwice:
            plan = self._first_pass_plan(found, source, selection, key, replanned)
            if head:  # the length is known: no body to send, no second call needed
                return self._send(environ, start_response, upstream, source, plan, base_headers, validators, head)
            return self._answer_again(environ, upstream_environ, upstream, source, selection, head, start_response,
                                      (key, plan))
        try:
            if isinstance(plan, LazyPlan) and replanned is None and self._range_needs_whole_plan(
                    environ, key, source, head, validators):
                # A Range on a streamed rendition: walk the body to its end (spans skipped, not read), keep the
                # recorded plan, then answer from it over a second, identical call of the app.
                stop_retaining(source)  # planning is over: nothing of the body needs to stay in memory
                complete = self._record_to_end(plan, key)  # type: ignore[arg-type]
                return self._answer_again(environ, upstream_environ, upstream, source, selection, head,
                                          start_response, (key, complete))
            return self._send(environ, start_response, upstream, source, plan, base_headers, validators, head,
                              stored_as, key)
        except BaseException:
            source.close()  # a spooled copy is ours: an error answer (416...) must not leave it to the GC
            raise

    def _first_pass_plan(self, container: Container, source: Source, selection: Selection, key: tuple | None,
                         replanned: tuple | None) -> Plan:
        """Plan a moov-at-end body too large to spool from this pass, for a second call of the app to send.

        The media data is read past, not kept. Refused (a 502) without validators, which
        alone can tell that the second body is the same file, and when this already is
        the second call (the validators changed in between).
        """
        def refusal(why: str) -> LimitExceeded:
            return LimitExceeded(f"body needs random access and exceeds spool_limit ({self.limits.spool_limit} "
                                 f"bytes); {why}")

        if key is None:
            raise refusal("without validators it cannot be read twice")
        if replanned is not None:
            raise refusal("and its validators changed between two reads")
        try:
            plan = plan_source(container, source, self.limits, selection, skip_media=True)
        except NeedsRandomAccess as refused:
            raise refusal(str(refused)) from None
        self.cache.put(key, plan)  # type: ignore[arg-type]
        return plan  # type: ignore[return-value]

    def _range_needs_whole_plan(self, environ: dict, key: tuple | None, source: Source, head: bool,
                                validators: Validators) -> bool:
        """Whether a Range request met a lazy plan that can be completed first (see :meth:`_record_to_end`).

        Only for a Range that would be answered with a 206 (one byte range, If-Range
        matching; any other gets the whole 200 anyway), with a plan cache to keep the
        plan, and a known body length: a body that ends early is then always found
        while walking (the spans themselves are not read).
        """
        return (self.range_policy == "serve" and not head and key is not None and bool(self.cache.max_entries)
                and source.size is not None and range_honoured(environ, validators))

    def _record_to_end(self, plan: LazyPlan, key: tuple) -> Plan | None:
        """Consume ``plan`` without emitting it; cache and return the complete plan (None if too large)."""
        complete: list[Plan] = []
        for _ in recording(plan, self.cache.max_bytes, complete.append):
            pass
        if complete:
            self.cache.put(key, complete[0])
        return complete[0] if complete else None

    def _answer_again(self, environ: dict, upstream_environ: dict, upstream: Upstream, source: Source,
                      selection: Selection, head: bool, start_response: Callable,
                      replanned: tuple) -> Iterable[bytes]:
        """Close this answer of the app and answer from a second, identical call of it.

        The plan made from the first body is used if the second one has the same
        validators (otherwise the file changed in between, and it is planned anew).
        """
        close_quietly(upstream)
        source.close()
        again = Upstream(self.app, {**upstream_environ, "wsgi.input": io.BytesIO()})
        try:
            return self._respond(environ, upstream_environ, again, selection, head, start_response,
                                 replanned=replanned)
        except BaseException:
            close_quietly(again)
            raise

    def _initial_source(self, upstream: Upstream) -> Source:
        served = upstream.served_file
        if served is not None and positioned_reads(served.file):
            start = _tell(served.file)
            return FileSource(served.file, start=start, size=upstream.content_length)
        return SequentialSource(upstream.chunks(), upstream.content_length, retain=True)

    @staticmethod
    def _cache_key(environ: dict, upstream_environ: dict, validators: Validators, container: Container,
                   selection: Selection) -> tuple | None:
        """The plan cache's key: the resource (with its host: virtual hosts may serve different files at
        one path, with equal validators when a deploy stamps every file with one time), its validators
        and the selection (None: never cached)."""
        if validators.source is None:
            return None
        return (_origin(environ), environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""),
                upstream_environ["QUERY_STRING"], validators.source, container.value, selection.key)

    def _plan(self, container: Container, source: Source, upstream: Upstream, upstream_environ: dict,
              selection: Selection, key: tuple | None, environ: dict, planned: Plan | None = None
              ) -> tuple[Plan | LazyPlan, Source]:
        """The plan (``planned`` if given, else cached, else made) and the source to emit it from.

        Raises :class:`_ReadTwice` when random access is needed and neither Range
        sub-requests nor a spool (body larger than ``spool_limit``) can give it.
        """
        if planned is not None and (source.random_access or planned.forward_only):
            return planned, source
        if key is not None:
            cached = self.cache.get(key)
            if cached is not None and (source.random_access or cached.forward_only):
                return cached, source
        try:
            plan = plan_source(container, source, self.limits, selection)
        except NeedsRandomAccess as reason:
            log.debug("random access needed for %s: %s", environ.get("PATH_INFO"), reason)
            source = self._random_access(source, upstream, upstream_environ, reason)
            try:
                plan = plan_source(container, source, self.limits, selection)
            except BaseException:
                source.close()  # a spooled copy
                raise
        if key is not None and isinstance(plan, Plan):
            self.cache.put(key, plan)
        return plan, source

    def _random_access(self, source: Source, upstream: Upstream, upstream_environ: dict,
                       reason: NeedsRandomAccess) -> Source:
        """Replace a forward-only source: Range sub-requests if the app offers them, else spool.

        A body whose Content-Length exceeds ``spool_limit`` is not spooled: :class:`_ReadTwice`.
        """
        length = upstream.content_length
        ranges = upstream.headers.get("Accept-Ranges", "").lower()
        if self.range_subrequests and length and "bytes" in ranges:
            ranged = RangeSource(self._subrequest_fetcher(upstream_environ, length), length)
            try:
                ranged.read(0, 16)
            except _NotRangeCapable:
                pass
            else:
                return ranged
        if isinstance(source, SequentialSource) and source.position:
            # planning went past the start and let it go (the moov came first), then found it needs to go back
            raise UnsupportedMedia(f"{reason}: the body was read past its start, and the app neither serves a "
                                   "file nor honours Range")
        if length is not None and length > self.limits.spool_limit:
            raise _ReadTwice(str(reason))
        return spool(source, self.limits.spool_limit)  # type: ignore[arg-type]

    def _subrequest_fetcher(self, upstream_environ: dict, length: int) -> Callable[[int, int], bytes]:
        def fetch(start: int, stop: int) -> bytes:
            environ = dict(upstream_environ)
            environ["HTTP_RANGE"] = f"bytes={start}-{stop - 1}"
            environ["wsgi.input"] = io.BytesIO()
            environ["wsgi.file_wrapper"] = upstream_environ["audio_middleware.server_file_wrapper"] or \
                CaptureFileWrapper
            sub = Upstream(self.app, environ)
            try:
                answered = parse_content_range_header(sub.headers.get("Content-Range"))
                if sub.status_code != 206 or answered is None or answered.start != start or answered.length != length:
                    raise _NotRangeCapable(f"sub-request for bytes {start}-{stop - 1} got {sub.status}")
                data = b"".join(sub.chunks())
            finally:
                sub.close()
            return data[:stop - start]
        return fetch

    # -- answering -----------------------------------------------------------------------------

    def _base_headers(self, upstream_headers: Headers, validators: Validators, container: Container) -> Headers:
        headers = Headers(upstream_headers)
        for name in RESPONSE_DROPPED:
            headers.remove(name)
        if validators.etag:
            headers["ETag"] = validators.etag
        disposition = headers.get("Content-Disposition")
        if disposition and container is Container.MP4:
            # a saved audio rendition should not be named like the video: movie.mp4 -> movie.m4a
            headers["Content-Disposition"] = VIDEO_EXTENSION.sub(".m4a", disposition)
        return headers

    def _send(self, environ: dict, start_response: Callable, upstream: Upstream, source: Source,
              plan: Plan | LazyPlan, headers: Headers, validators: Validators, head: bool,
              stored_as: str | None = None, key: tuple | None = None) -> Iterable[bytes]:
        """Answer from the plan; ``stored_as``: the rendition store's tag (an answer with every byte is kept there).

        A lazy plan streamed to its end is recorded into the plan cache under ``key``
        (see :mod:`audio_middleware.record`): the next request gets a sized answer.
        """
        headers["Content-Type"] = plan.content_type
        status = "200 OK"
        if isinstance(plan, LazyPlan):
            stop_retaining(source)  # planning is over
            lazy = plan
            if key is not None and not head and self.cache.max_entries and source.size is not None:
                # Only with a Content-Length: without one, a body cut short at a tag or fragment
                # boundary ends like a complete one, and its short plan must not be kept.
                lazy = LazyPlan(recording(plan, self.cache.max_bytes, partial(self.cache.put, key)),
                                plan.content_type, plan.info)
            first = next(lazy.pieces, None)  # errors found before the first byte become HTTP errors
            answered = self._preconditions(environ, start_response, validators, headers, upstream, source, lazy.pieces)
            if answered is not None:
                return answered
            pieces = lazy.pieces if first is None else chain([first], lazy.pieces)
            if self.range_policy == "reject" and _ranged(environ):
                raise _Unsatisfiable(None)
            headers["Accept-Ranges"] = "none"
        else:
            answered = self._preconditions(environ, start_response, validators, headers, upstream, source)
            if answered is not None:
                return answered
            status, start, stop = self._sized(environ, headers, plan.length, validators)
            every_byte = stop - start == plan.length
            pieces = plan.pieces if status == "200 OK" else plan.slice(start, stop)
            stop_retaining(source)  # planning is over
        start_response(status, headers.to_wsgi_list())
        if head:
            close_quietly(upstream)
            source.close()
            return []
        if self.renditions is not None and stored_as is not None and isinstance(plan, Plan):
            if every_byte:
                # An answer with every byte (a 200, or the 206 of a player's first "bytes=0-") is copied
                # into the store while it streams; published only if it completes.
                fill = self.renditions.filler((stored_as, plan.length), plan.content_type)
                if fill is not None:
                    chunks = fill.tee(iter_plan_bytes(pieces, source, self.block_size))
                    return ClosingBody(chunks, source.close, upstream.close)
            else:
                self._fill_in_background((stored_as, plan.length), plan, source)
        region = _one_region(environ, pieces, source, self.block_size, source.close, upstream.close)
        if region is not None:  # a range inside one large span of a file: the server's sendfile
            return _file_wrapper(environ)(region, self.block_size)
        chunks = iter_plan_bytes(pieces, source, self.block_size)
        if isinstance(plan, LazyPlan):  # no Content-Length: an answer cut short must not look complete
            chunks = withhold_tail(chunks)
        return ClosingBody(chunks, source.close, upstream.close)

    def _fill_in_background(self, key: tuple[str, int], plan: Plan, source: Source) -> None:
        """A part of the rendition was asked for: store the whole one from a file-backed source, apart
        from this response (a forward-only body cannot be read again; a Range source would call the
        app outside any request)."""
        copy = source.independent_copy() if isinstance(source, FileSource) else None
        if copy is not None:
            self.renditions.fill_in_background(  # type: ignore[union-attr]
                key, plan.content_type, partial(iter_plan_bytes, plan.pieces, copy, self.block_size), copy.close)

    def _preconditions(self, environ: dict, start_response: Callable, validators: Validators, headers: Headers,
                       *resources: object) -> list[bytes] | None:
        """RFC 9110 13.2.2, evaluated once the answer is known to be a 2xx (a 404, 416 or 502 ignores
        them, 13.2.1): raise the 412, or send the 304 (closing ``resources``), or None to go on."""
        if precondition_failed(environ, validators):
            raise _PreconditionFailed()
        if not not_modified(environ, validators):
            return None
        for resource in resources:
            close_quietly(resource)
        headers = Headers(headers)
        remove_entity_headers(headers)
        start_response("304 Not Modified", headers.to_wsgi_list())
        return []

    def _pass_through(self, environ: dict, start_response: Callable, upstream: Upstream,
                      server_wrapper: Callable | None, body: Iterable[bytes] | None, head: bool) -> Iterable[bytes]:
        """The app's answer as it is; for a 200, the conditional headers it never saw (they were taken
        off its request) are evaluated against its own validators."""
        if upstream.status_code == 200:
            own = Validators(None, upstream.headers.get("ETag"), upstream.headers.get("Last-Modified"))
            answered = self._preconditions(environ, start_response, own, upstream.headers, upstream)
            if answered is not None:
                return answered
        return upstream.pass_through(start_response, server_wrapper, body, head=head)

    def _sized(self, environ: dict, headers: Headers, length: int, validators: Validators) -> tuple[str, int, int]:
        """Status and output bytes ``[start, stop)`` for a rendition of known ``length`` (Range applied).

        Sets Content-Length, Content-Range and Accept-Ranges; an unsatisfiable or rejected range raises.
        """
        status, start, stop = "200 OK", 0, length
        if self.range_policy != "ignore" and _ranged(environ):
            answer = answer_range(environ, length, validators)
            if self.range_policy == "reject" or not answer.satisfiable:
                raise _Unsatisfiable(length)
            if answer.partial:
                status, start, stop = "206 Partial Content", answer.start, answer.stop
                headers["Content-Range"] = ContentRange("bytes", start, stop, length).to_header()
        headers["Content-Length"] = str(stop - start)
        headers["Accept-Ranges"] = "bytes" if self.range_policy == "serve" else "none"
        return status, start, stop

    def _send_stored(self, environ: dict, start_response: Callable, upstream: Upstream, source: Source, hit: Hit,
                     headers: Headers, validators: Validators, head: bool) -> Iterable[bytes]:
        """Answer from the rendition store: no plan, no span reads, the same headers as a planned answer.

        The rendition, or the range of it, goes out through the server's own ``wsgi.file_wrapper``
        (sendfile under gunicorn). The upstream is closed at once: it gave the validators, and its
        body is not needed.
        """
        try:
            answered = self._preconditions(environ, start_response, validators, headers, upstream, source, hit.file)
            if answered is not None:
                return answered
            headers["Content-Type"] = hit.content_type
            status, start, stop = self._sized(environ, headers, hit.length, validators)
            start_response(status, headers.to_wsgi_list())
            if head:
                hit.file.close()
                body: Iterable[bytes] = []
            else:
                region = sendfile_region(environ, hit.file, start, stop - start, hit.file.close,
                                         whole=stop - start == hit.length)  # find() checked the file's size
                body = _file_wrapper(environ)(region, self.block_size)
        except BaseException:
            hit.file.close()
            raise
        # Nothing can fail after this point, so __call__ never closes the upstream a second time.
        close_quietly(upstream)
        source.close()
        return body

    def _error(self, environ: dict, start_response: Callable, error: AudioExtractionError) -> Iterable[bytes]:
        status = error.http_status
        log.log(logging.INFO if status < 500 else logging.WARNING, "audio-only %s%s: %s (%s)",
                environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""), error, type(error).__name__)
        body = f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}: {error}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   ("Cache-Control", "no-store")]
        if isinstance(error, _Unsatisfiable) and error.length is not None:
            headers.append(("Content-Range", f"bytes */{error.length}"))
        start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'Error')}", headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


class _NotRangeCapable(UnsupportedMedia):
    """The app advertised Accept-Ranges but did not answer a sub-request with the right 206."""


class _ReadTwice(Exception):
    """Internal: random access is needed but cannot be had; plan from a first pass, send from a second."""


class _PreconditionFailed(AudioExtractionError):
    http_status = 412

    def __init__(self) -> None:
        super().__init__("If-Match or If-Unmodified-Since failed")


class _Unsatisfiable(AudioExtractionError):
    http_status = 416

    def __init__(self, length: int | None) -> None:
        super().__init__("the requested range is not satisfiable for the audio rendition")
        self.length = length


def _ranged(environ: dict) -> bool:
    """A Range to act on: only GET defines range handling, a Range on HEAD is ignored (RFC 9110 14.2)."""
    return bool(environ.get("HTTP_RANGE")) and environ.get("REQUEST_METHOD", "GET") == "GET"


def _file_wrapper(environ: dict) -> Callable:
    """The server's ``wsgi.file_wrapper`` (sendfile under gunicorn), or werkzeug's plain one."""
    return environ.get("wsgi.file_wrapper") or FileWrapper


def _one_region(environ: dict, pieces: object, source: Source, at_least: int,
                *closers: Callable[[], object]) -> FileRegion | None:
    """The answer as one region of the source's file, when it is a single span of ``at_least`` bytes or more."""
    if not isinstance(pieces, tuple) or len(pieces) != 1 or not isinstance(source, FileSource):
        return None
    piece = pieces[0]
    if isinstance(piece, Spans) and len(piece) == 1:
        piece = Span(piece.offsets[0], piece.lengths[0])
    if not isinstance(piece, Span) or piece.length < at_least:
        return None
    located = source.located(piece.offset)
    return None if located is None else sendfile_region(environ, *located, piece.length, *closers)


def _seconds(raw: str | None, name: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of seconds, not {echo(raw)}") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{name} must be a non-negative number of seconds, not {echo(raw)}")
    return value


def _without_params(query: str, names: set[str]) -> str:
    """``query`` without the fields named ``names``, every other byte kept as the client sent it
    (re-encoding would change what an app reads raw or signs: ``%2f`` vs ``%2F``, ``;``, Latin-1)."""
    kept = [field for field in query.split("&") if unquote_plus(field.partition("=")[0]) not in names]
    return "&".join(kept)


def _encoded(headers: Headers) -> bool:
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    return encoding not in ("", "identity")


def _store_tag(environ: dict, upstream_environ: dict, validators: Validators) -> str:
    """The rendition store's tag: the strong ETag, scoped to the resource (an ETag is only unique per URL)."""
    path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
    return f"{validators.etag} {_origin(environ)}{path}?{upstream_environ['QUERY_STRING']}"


def _origin(environ: dict) -> str:
    """``scheme://host`` of the request (PEP 3333's URL reconstruction, host lower-cased)."""
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host.lower()}"


def _tell(fileobj: object) -> int:
    try:
        return int(fileobj.tell())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, TypeError):
        return 0

