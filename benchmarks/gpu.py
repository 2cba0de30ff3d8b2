"""``python benchmarks/gpu.py [options]``: the same as ``gru bench-gpu [options]`` (see benchmarks/README.md)."""

from __future__ import annotations

import sys

from gru.bench_gpu import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
