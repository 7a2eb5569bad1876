"""WSGI entry point: ``gunicorn example_app.django_project.wsgi:application``.

The two lines that matter::

    from audio_middleware import AudioOnlyMiddleware
    application = AudioOnlyMiddleware(get_wsgi_application())
"""

import os

from django.core.wsgi import get_wsgi_application

from audio_middleware import AudioOnlyMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_app.django_project.settings")

application = AudioOnlyMiddleware(get_wsgi_application())
