"""The long fuzzing profile: many fresh random examples against the float64 oracle.

    python scripts/fuzz.py                      # 5,000 examples per test (forward; training)
    python scripts/fuzz.py --examples 20000     # more
    python scripts/fuzz.py --seed 1234          # a run that can be repeated exactly
    python scripts/fuzz.py -- --gru-backend X   # anything after -- goes to pytest

It runs ``tests/test_fuzz.py`` under pytest with ``GRU_FUZZ_PROFILE=long``:
each test draws ``--examples`` new configurations (not the CI profile's fixed
ones) and checks every available backend on each. Hypothesis prints its
statistics at the end; a failure prints a standalone reproducer. The exit
status is pytest's (0: every example passed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--examples", type=int, default=5000, help="examples per test (default 5000)")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: a fresh random run)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.examples < 1:
        parser.error("--examples: expected a positive number")
    env = {**os.environ, "GRU_FUZZ_PROFILE": "long", "GRU_FUZZ_EXAMPLES": str(args.examples)}
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(ROOT / "tests" / "test_fuzz.py"),
        "-p",
        "no:cacheprovider",
        "-q",
        "--hypothesis-show-statistics",
        *([f"--hypothesis-seed={args.seed}"] if args.seed is not None else []),
        *args.pytest_args,
    ]
    print(f"fuzzing: {args.examples} examples per test; {' '.join(command[1:])}", flush=True)
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
