"""Gunicorn settings for the demo (Flask by default, Django works the same way)::

    gunicorn -c example_app/gunicorn.conf.py                                        # Flask app
    gunicorn -c example_app/gunicorn.conf.py example_app.django_project.wsgi:application

Run from the repository root. Environment: ``PORT`` (default 8000), ``HOST``
(default 127.0.0.1), ``WEB_CONCURRENCY`` (worker processes, default 2),
``GUNICORN_THREADS`` (threads per worker, default 4), ``AUDIO_DEMO_MEDIA``
(media folder), ``AUDIO_DEMO_RENDITIONS`` (a rendition store directory, Flask app).
Command-line options override these settings.
"""

import os
import pathlib
import sys

# the repository root, so that "example_app" can be imported whatever the working directory
_ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

wsgi_app = "example_app.flask_app:app"
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
chdir = _ROOT

# gthread: a slow client (a paused <audio> element holding a connection) ties up a
# thread, not a whole process; browsers open several connections for one media element.
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = 5
graceful_timeout = 10
control_socket_disable = True  # gunicorn >= 25 (ignored by older versions): no control socket for a demo

accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s range="%({range}i)s" %(M)sms'


def on_starting(server):
    """Generate the sample media once, in the master, before any worker starts."""
    from example_app.sample_media import ensure_media

    for name, path in ensure_media().items():
        server.log.info("sample %s: %s", name, path)
