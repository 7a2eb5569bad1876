"""``python -m example_app``: generate the sample media and serve the Flask demo on 127.0.0.1:8000.

Runs gunicorn with ``example_app/gunicorn.conf.py`` when it is installed (not on
Windows), else Werkzeug's development server. ``PORT`` and ``HOST`` change the
address; ``--django`` serves the Django project instead of the Flask app.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
APPS = {"flask": "example_app.flask_app:app", "django": "example_app.django_project.wsgi:application"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__.splitlines()[0])
    parser.add_argument("--django", action="store_true", help="serve the Django project instead of the Flask app")
    parser.add_argument("--werkzeug", action="store_true", help="use Werkzeug's development server, not gunicorn")
    args = parser.parse_args(argv)

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from example_app.sample_media import ensure_media, media_dir

    print(f"Preparing the sample media in {media_dir()} ...", flush=True)
    ensure_media()
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    app_spec = APPS["django" if args.django else "flask"]
    print(f"\n  audio_middleware demo: http://{host}:{port}/   (Ctrl+C to stop)\n", flush=True)

    try:
        import gunicorn  # noqa: F401
    except ImportError:
        gunicorn_missing = True
    else:
        gunicorn_missing = False
    if args.werkzeug or gunicorn_missing or os.name == "nt":
        _run_werkzeug(app_spec, host, port)
        return
    os.chdir(ROOT)
    os.environ["HOST"], os.environ["PORT"] = host, str(port)
    command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "example_app" / "gunicorn.conf.py"), app_spec]
    os.execv(sys.executable, command)  # gunicorn takes over this process (Ctrl+C stops it)


def _run_werkzeug(app_spec: str, host: str, port: int) -> None:
    from importlib import import_module

    from werkzeug.serving import run_simple

    module, name = app_spec.split(":")
    run_simple(host, port, getattr(import_module(module), name), threaded=True)


if __name__ == "__main__":
    main()
