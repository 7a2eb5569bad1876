"""The job API the way docs/jobs.md tells a ``gunicorn --preload`` deployment to build it.

Built in the gunicorn master (``--preload``) with ``start=False``: no thread runs
in the master; each forked worker starts its extraction threads on its first
request. ``tests/test_jobs_server.py`` serves it with two workers.
"""

from __future__ import annotations

import os

from audio_middleware.jobs import create_app

application = create_app(os.environ["AM_JOBS_DIR"], {os.environ["AM_JOBS_TOKEN"]: os.environ["AM_JOBS_PROJECT"]},
                         workers=1, poll=0.1, start=False)
