"""``python benchmarks/cpu.py [options]``: the same as ``gru bench [options]`` (see benchmarks/README.md).

Run as a script, it can set the thread variables (OMP_NUM_THREADS and the
BLAS ones) from ``--threads`` before NumPy starts its BLAS pool, which
``gru bench`` cannot: its NumPy is loaded before the options are read.
"""

from __future__ import annotations

import os
import sys


def _threads_from_argv(argv: list[str]) -> str | None:
    """The value of ``--threads N`` / ``--threads=N``, read before any import that starts a thread pool."""
    for k, arg in enumerate(argv):
        if arg == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__":
    threads = _threads_from_argv(sys.argv[1:])
    if threads and threads.isdigit() and int(threads) > 0:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
            os.environ[var] = threads

    from gru.bench import main

    sys.exit(main(sys.argv[1:]))
