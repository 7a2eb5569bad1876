"""Demo of ``audio_middleware``: a Flask app and a Django project serving a sample video.

Run it with ``python -m example_app`` (see ``example_app/__main__.py``).
"""
