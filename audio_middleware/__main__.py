"""``python -m audio_middleware``: the ``audio-extract`` command line (see :mod:`audio_middleware.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
