"""Does the Cython backend run Python threads in parallel? A measurement of the GIL release.

    python scripts/thread_check.py [--threads-per-call 1] [--repeats 15] [--seq-len 200] [--hidden 256]

K Python threads each make one call (``threads=1``: one core per call, so
that only Python's threading can make them parallel) on the same layer,
started together; the wall time of the whole is compared with that of ONE
such call alone. A backend that holds the GIL takes K times as long (ratio
K); one that releases it takes about as long as one call when there are K
free cores (ratio 1), and K / cores with fewer. Reported for K = 2 and for
K = 8, for forward calls and for forward + backward (training) steps, on the
cython backend and, for comparison, on the numpy reference (whose Python
loop holds the GIL between its NumPy operations).

Figures are medians over ``--repeats`` rounds (each round times one call
alone, then the threaded runs, so that slow drifts in the machine's speed
cancel), after a warm-up, with the number of cores kept busy (the threads'
CPU time over the wall time). A control runs first: NumPy matrix products
with BLAS held to one thread (NumPy releases the GIL around them), which shows
what this machine gives when the GIL is not in the way. The figures only mean
something on an otherwise idle machine: the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np

import gru


def make_call(backend: str, train: bool, args: argparse.Namespace):
    layer = gru.GRU(args.input, args.hidden, backend=backend, seed=0)
    x = np.random.default_rng(0).standard_normal((args.seq_len, args.batch, args.input)).astype("float32")
    d_output = np.ones((args.seq_len, args.batch, args.hidden), "float32")

    def call():
        layer(x, threads=args.threads_per_call, train=train)
        if train:
            layer.backward(d_output)

    return call


def in_threads(call, k: int) -> tuple[float, float]:
    """k threads making one call each, released together: wall time, and CPU time of all of them over it."""
    ready = threading.Barrier(k + 1)
    done, cpu = [], []

    def target():
        ready.wait()
        start = time.thread_time()
        call()
        cpu.append(time.thread_time() - start)
        done.append(time.perf_counter())

    threads = [threading.Thread(target=target) for _ in range(k)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = max(done) - start
    return wall, sum(cpu) / wall


def measure(call, repeats: int) -> dict[str, float]:
    """Per round: one call alone, then 2 and 8 threads; ratios taken within a round (slow drifts cancel)."""
    for _ in range(3):
        call()  # warm-up: scratch memory, weights cache, BLAS threads
    rounds = []
    for _ in range(repeats):
        one, _ = in_threads(call, 1)
        row = {"one": one}
        for k in (2, 8):
            wall, busy = in_threads(call, k)
            row[f"ratio{k}"], row[f"busy{k}"] = wall / one, busy
        rounds.append(row)
    return {key: statistics.median(row[key] for row in rounds) for key in rounds[0]}


def report(label: str, m: dict[str, float], cores: int) -> None:
    cells = [
        f"{k} threads {m[f'ratio{k}']:4.2f}x one call's time, {m[f'busy{k}']:3.1f} cores busy "
        f"(serial {k}x, ideal {max(1.0, k / cores):.1f}x)"
        for k in (2, 8)
    ]
    print(f"  {label:34s} one call {m['one'] * 1e3:6.1f} ms; " + "; ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads-per-call", type=int, default=1)
    parser.add_argument("--backend", action="append", help="default: cython and numpy")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"gru thread check: Python {platform.python_version()}, {cores} cores, load average {load:.2f}; "
        f"T={args.seq_len} B={args.batch} I={args.input} H={args.hidden} float32, threads={args.threads_per_call} "
        f"per call; medians of {args.repeats} rounds"
    )
    if load > 0.5:
        print("  (the machine is busy: the figures below are disturbed)")
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((400, 400)).astype("float32")

    def matmuls():
        with threadpool_limits(1, user_api="blas"):
            for _ in range(10):
                a @ a

    report("control: NumPy matmul, BLAS 1 thread", measure(matmuls, args.repeats), cores)
    names = args.backend or [name for name in ("cython", "numpy") if gru.backend_available(name)]
    for name in names:
        for train in (False, True):
            what = "forward + backward" if train else "forward"
            report(f"{name} {what}", measure(make_call(name, train, args), args.repeats), cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
