"""``python -m bench`` runs the benchmark (see :mod:`bench.run`; ``--help`` for options)."""

from .run import main

main()
