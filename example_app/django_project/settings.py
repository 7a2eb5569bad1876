"""Minimal settings for the demo: no database, no sessions, no static files app.

``AUDIO_DEMO_MEDIA`` (environment) chooses the media folder, as for the Flask app.
"""

import os

from example_app.sample_media import media_dir

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "audio-middleware-demo-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "example_app.django_project.urls"
WSGI_APPLICATION = "example_app.django_project.wsgi.application"
DATABASES: dict = {}
USE_TZ = True

AUDIO_DEMO_MEDIA = media_dir()
