"""Run the job API alone, or import a file into its store.

::

    python -m audio_middleware.jobs --data-dir DIR --token TOKEN:PROJECT_ID --port 8080
    python -m audio_middleware.jobs import --data-dir DIR --project PROJECT_ID FILE

Serving uses werkzeug's threaded development server (fine for a small
deployment or tests; behind a real WSGI server, use :func:`create_app`).
Importing copies the file into the store and prints its ``asset_id``, like
``POST /v1.0/{project_id}/asset`` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from ..elementary import sniff
from ..errors import AudioExtractionError
from ..sniff import Container
from ..sources import FileSource
from . import create_app
from .store import Store, check_name, check_project

CONTENT_TYPES = {Container.MP4: "video/mp4", Container.FLV: "video/x-flv"}


def _token(value: str) -> tuple[str, str]:
    token, _, project = value.rpartition(":")
    if not token or not project:
        raise argparse.ArgumentTypeError("expected TOKEN:PROJECT_ID")
    try:
        check_project(project)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return token, project


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audio_middleware.jobs",
                                     description="Serve the extract-audio job API (or: ... import --help).")
    parser.add_argument("--data-dir", required=True, help="directory holding the SQLite database and the files")
    parser.add_argument("--token", type=_token, action="append", default=[], metavar="TOKEN:PROJECT_ID",
                        help="an accepted X-Auth-Token and its project (repeatable)")
    parser.add_argument("--token-file", help="file with one TOKEN:PROJECT_ID per line (keeps tokens out of ps)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=2, help="extraction threads (default 2)")
    parser.add_argument("--callback-url", action="append", default=[], help="POST completion events here")
    parser.add_argument("--callback-secret", default=os.environ.get("AUDIO_JOBS_CALLBACK_SECRET"),
                        help="HMAC key for callbacks (default: $AUDIO_JOBS_CALLBACK_SECRET, "
                             "else DATA_DIR/callback.key)")
    parser.add_argument("--base-url", help="public URL of this service, for download URLs in callbacks")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def import_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m audio_middleware.jobs import",
                                     description="Copy a media file into the store; print its asset_id.")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--project", required=True, help="project the asset belongs to")
    parser.add_argument("--name", help="asset name (default: the file name)")
    parser.add_argument("file", help="MP4-family or FLV file")
    return parser


def _import(argv: Sequence[str]) -> int:
    args = import_parser().parse_args(argv)
    try:
        check_project(args.project)
        check_name(args.name or os.path.basename(args.file))
        with open(args.file, "rb") as handle:
            container = sniff(FileSource(handle))
    except (OSError, ValueError) as error:
        sys.stderr.write(f"import: {error}\n")
        return 2
    except AudioExtractionError as error:
        sys.stderr.write(f"import: {args.file}: {error}\n")
        return 3
    asset = Store(args.data_dir).import_file(args.project, args.file, CONTENT_TYPES[container], args.name)
    print(json.dumps(asset))
    return 0


def _tokens(args: argparse.Namespace) -> dict[str, str]:
    pairs = list(args.token)
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as handle:
            pairs += [_token(line.strip()) for line in handle if line.strip() and not line.startswith("#")]
    return dict(pairs)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the server like Ctrl-C does, so that ``app.close()`` requeues running tasks."""
    raise KeyboardInterrupt


def _serve(argv: Sequence[str]) -> int:
    parser = serve_parser()
    args = parser.parse_args(argv)
    try:
        tokens = _tokens(args)
    except (OSError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))
    if not tokens:
        parser.error("give at least one --token TOKEN:PROJECT_ID (or --token-file)")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s")
    from werkzeug.serving import run_simple

    app = create_app(args.data_dir, tokens, callback_urls=args.callback_url, workers=args.workers,
                     callback_secret=args.callback_secret, base_url=args.base_url)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["import"]:
        return _import(argv[1:])
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    try:
        return _serve(argv)
    except RuntimeError as error:  # a setup the server cannot run with (a missing extra, a bad key file)
        sys.stderr.write(f"audio_middleware.jobs: {error}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
