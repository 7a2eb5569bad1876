"""Index page and media files.

``FileResponse`` hands the open file to the server's ``wsgi.file_wrapper``; the
middleware captures it there and reads it with positioned reads (only the
audio bytes). Django's ``FileResponse`` sends no validators, so the
``condition`` decorator adds ``ETag`` and ``Last-Modified`` (the middleware
derives the audio rendition's ETag from them) and answers conditional
requests for the original file with 304.
"""

import datetime
import pathlib
import threading

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.views.decorators.http import condition, require_safe

from example_app.pages import index_html
from example_app.sample_media import FILES, content_type, ensure_media

STREAM_BLOCK = 32 * 1024
_lock = threading.Lock()
_ready: list[bool] = []


def _path(name: str) -> pathlib.Path:
    if name not in FILES:
        raise Http404("no such sample")
    if not _ready:
        with _lock:
            if not _ready:
                ensure_media(settings.AUDIO_DEMO_MEDIA)
                _ready.append(True)
    return pathlib.Path(settings.AUDIO_DEMO_MEDIA) / name


def _etag(request, name: str) -> str:
    stat = _path(name).stat()
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


def _last_modified(request, name: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(_path(name).stat().st_mtime, tz=datetime.timezone.utc)


@require_safe
def index(request):
    return HttpResponse(index_html("/media/", "Django", stream_prefix="/stream/"))


@require_safe
@condition(etag_func=_etag, last_modified_func=_last_modified)
def media(request, name: str):
    return FileResponse(_path(name).open("rb"), content_type=content_type(name))


@require_safe
def stream(request, name: str):
    """The same file as a forward-only stream with no Content-Length (think live or proxied)."""
    path = _path(name)

    def chunks():
        with path.open("rb") as file:
            while block := file.read(STREAM_BLOCK):
                yield block

    return StreamingHttpResponse(chunks(), content_type=content_type(name))
