"""Flask demo: serve the sample video; the middleware adds the audio-only rendition.

::

    gunicorn -c example_app/gunicorn.conf.py example_app.flask_app:app

The two lines that matter::

    from audio_middleware import AudioOnlyMiddleware
    app.wsgi_app = AudioOnlyMiddleware(app.wsgi_app)
"""

from __future__ import annotations

import os
import threading

from flask import Flask, Response, abort, send_file

from audio_middleware import AudioOnlyMiddleware
from example_app.pages import index_html
from example_app.sample_media import FILES, content_type, ensure_media, media_dir

STREAM_BLOCK = 32 * 1024
#: A directory for the middleware's rendition store (``rendition_cache``); unset: no store.
RENDITIONS_ENV = "AUDIO_DEMO_RENDITIONS"
_lock = threading.Lock()


def create_app(directory: str | os.PathLike | None = None) -> Flask:
    """The demo app; media come from ``directory`` (default ``$AUDIO_DEMO_MEDIA`` or ``example_app/media``)
    and are generated on the first request if missing."""
    app = Flask(__name__)
    app.config["MEDIA_DIR"] = media_dir(directory)
    ready: list[bool] = []

    def media_path(name: str):
        if not ready:
            with _lock:
                if not ready:
                    ensure_media(app.config["MEDIA_DIR"])
                    ready.append(True)
        return app.config["MEDIA_DIR"] / name

    @app.get("/")
    def index():
        return index_html("/media/", "Flask", stream_prefix="/stream/")

    @app.get("/media/<name>")
    def media(name: str):
        if name not in FILES:
            abort(404)
        # conditional=True: ETag, Last-Modified, 304 and Range (206) on the original file
        return send_file(media_path(name), mimetype=content_type(name), conditional=True)

    @app.get("/stream/<name>")
    def stream(name: str):
        """The same file as a forward-only stream with no Content-Length (think live or proxied)."""
        if name not in FILES:
            abort(404)
        path = media_path(name)

        def chunks():
            with open(path, "rb") as file:
                while block := file.read(STREAM_BLOCK):
                    yield block

        return Response(chunks(), mimetype=content_type(name))

    app.wsgi_app = AudioOnlyMiddleware(app.wsgi_app, rendition_cache=os.environ.get(RENDITIONS_ENV) or None)
    return app


app = create_app()
