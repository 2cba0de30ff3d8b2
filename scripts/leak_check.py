"""No leaks: resident memory stays flat over many calls on every CPU backend.

    python scripts/leak_check.py [--backend NAME ...] [--forward 10000] [--train 1000] [--limit 1.0]

Per backend: 10,000 forward calls, then 1,000 training steps (forward with
``train=True``, ``backward``, and a plain gradient step written back with
``load_state_dict``, so the backend's cached copies of the weights turn over
every step, as in a real training loop). The calls cycle through layers and
call options that take different paths: float32 and float64, reset-after and
reset-before, 1 and 2 layers, bidirectional, ``batch_first``, unbatched
input, ``lengths`` (including 0), ``h0``, ``return_gates``, dropout and
``GRUCell``.

Every configuration first runs a warm-up (buffers that are kept on purpose,
such as the Cython backend's per-thread scratch memory, reach their final
size), then the resident set size (RSS, from /proc/self/statm) is read before
and after the measured calls, after a garbage collection and glibc's
malloc_trim(0) (so that memory the allocator keeps for reuse after it was
freed does not count: a leak is memory still held). The check fails when
RSS grows by 1 % or more of its value after warm-up, or its trend (below)
reaches 64 bytes per call (1,000 training steps do not grow RSS by 1 % at
a leak of a few hundred bytes a step; the trend shows it); the figures are printed
either way, with the number of live Python objects (a leak of Python objects
shows there first), and the trend: the least-squares slope of RSS read the
same way at 11 points through the run, in bytes per call (a leak is a steady slope;
the allocator's own ups and downs are not).

``--inject-leak N`` makes every forward call of the checked backends keep N
bytes: a test of the check itself (N = 100 already fails it on 10,000 calls).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import sys
import time

import numpy as np

import gru

PAGE = os.sysconf("SC_PAGE_SIZE")

# (T, B, I, H) per backend: the NumPy reference runs smaller layers to keep the time reasonable
SHAPES = {"cython": (20, 8, 16, 64), "numpy": (10, 4, 8, 32)}
DEFAULT_SHAPE = SHAPES["numpy"]


def rss_bytes() -> int:
    """Resident set size now (Linux: /proc/self/statm; ``resource`` only knows the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _malloc_trim():
    """glibc's malloc_trim(0), or None: hands freed heap memory back to the OS."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


MALLOC_TRIM = _malloc_trim()


def settled_rss() -> int:
    """RSS after a garbage collection and, on glibc, malloc_trim(0): memory still held, not the allocator's cache."""
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
    return rss_bytes()


def forward_cases(backend: str, shape: tuple[int, int, int, int]):
    """Closures, each one forward call of a different kind."""
    T, B, I, H = shape
    rng = np.random.default_rng(0)

    def normal(*s, dtype="float32"):
        return rng.standard_normal(s).astype(dtype)

    stacked = gru.GRU(I, H, num_layers=2, bidirectional=True, backend=backend, seed=0)
    before64 = gru.GRU(I, H, reset_after=False, batch_first=True, dtype="float64", backend=backend, seed=1)
    cell = gru.GRUCell(I, H, backend=backend, seed=2)
    x = normal(T, B, I)
    x_bf64 = normal(B, T, I, dtype="float64")
    h0 = normal(4, B, H)
    lengths = np.linspace(0, T, B).astype(np.int64)  # 0 ... T
    x_one = normal(T, I)
    x_step, h_step = normal(B, I), normal(B, H)
    return [
        lambda: stacked(x),
        lambda: stacked(x, h0, lengths, return_gates=True),
        lambda: before64(x_bf64, lengths=lengths),
        lambda: stacked(x_one),
        lambda: cell(x_step, h_step),
        lambda: stacked(x[:0]),  # T = 0
    ]


def train_cases(backend: str, shape: tuple[int, int, int, int]):
    """Closures, each one training step (forward, backward, parameter update) of a different kind."""
    T, B, I, H = shape
    rng = np.random.default_rng(1)
    layers = [
        (gru.GRU(I, H, num_layers=2, bidirectional=True, dropout=0.25, backend=backend, seed=3), "float32", {}),
        (gru.GRU(I, H, reset_after=False, dtype="float64", backend=backend, seed=4), "float64", {}),
        (
            gru.GRU(I, H, batch_first=True, backend=backend, seed=5),
            "float32",
            {"lengths": np.linspace(0, T, B).astype(np.int64)},
        ),
    ]
    steps = []
    for layer, dtype, kwargs in layers:
        x = rng.standard_normal((B, T, I) if layer.batch_first else (T, B, I)).astype(dtype)

        def step(layer=layer, x=x, kwargs=kwargs):
            output, h_n = layer(x, train=True, **kwargs)
            grads = layer.backward(np.ones_like(output), np.ones_like(h_n))
            state = layer.state_dict()
            layer.load_state_dict({k: state[k] - 1e-6 * g for k, g in grads.params.items()})

        steps.append(step)
    return steps


def measure(cases, calls: int, warmup: int, samples: int = 11) -> dict[str, float]:
    for _ in range(warmup):
        for case in cases:
            case()
    objects_before = len(gc.get_objects())
    before = settled_rss()
    at, rss = [0], [before]  # RSS through the run, for the trend
    every = max(1, calls // (samples - 1))
    start = time.perf_counter()
    for done in range(1, calls + 1):
        cases[(done - 1) % len(cases)]()
        if done % every == 0 and done < calls:
            at.append(done)
            rss.append(settled_rss())
    elapsed = time.perf_counter() - start
    after = settled_rss()
    at.append(calls)
    rss.append(after)
    slope = float(np.polyfit(at, rss, 1)[0]) if calls > 1 else 0.0  # bytes per call, least squares
    return {
        "calls": calls,
        "before": before,
        "after": after,
        "growth": (after - before) / before * 100,
        "slope": slope,
        "objects": len(gc.get_objects()) - objects_before,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", help="backend to check (repeatable; default: every CPU backend)")
    parser.add_argument("--forward", type=int, default=10_000, help="forward calls per backend (default 10000)")
    parser.add_argument("--train", type=int, default=1_000, help="training steps per backend (default 1000)")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up rounds over every case (default 30)")
    parser.add_argument("--limit", type=float, default=1.0, help="largest RSS growth allowed, in %% (default 1)")
    parser.add_argument(
        "--trend-limit",
        type=float,
        default=64.0,
        metavar="BYTES",
        help="steepest RSS trend allowed, in bytes per call (default 64)",
    )
    parser.add_argument("--inject-leak", type=int, default=0, metavar="N", help="keep N bytes per forward call")
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/statm"):
        parser.error("reads the resident set size from /proc/self/statm (Linux)")

    names = args.backend or [name for name in ("numpy", "cython") if gru.backend_available(name)]
    print(f"gru leak check: Python {platform.python_version()}, NumPy {np.__version__}, {os.cpu_count()} CPUs")
    failed = False
    kept = []
    for name in names:
        if args.inject_leak:
            backend = gru.get_backend(name)
            forward = backend.forward

            def leaky(request, forward=forward):
                kept.append(bytearray(args.inject_leak))
                return forward(request)

            backend.forward = leaky
            print(f"(injected: every forward call of {name} keeps {args.inject_leak} bytes)")
        shape = SHAPES.get(name, DEFAULT_SHAPE)
        T, B, I, H = shape
        print(f"\n{name}: T={T} B={B} I={I} H={H} (2-layer bidirectional, reset-before float64, GRUCell, ...)")
        runs = [("forward", forward_cases(name, shape), args.forward)]
        if gru.get_backend(name).capabilities.training:
            runs.append(("forward+backward", train_cases(name, shape), args.train))
        for label, cases, calls in runs:
            r = measure(cases, calls, args.warmup)
            ok = r["growth"] < args.limit and r["slope"] < args.trend_limit
            failed |= not ok
            mib = 1 << 20
            print(
                f"  {label:17s} {r['calls']:6d} calls in {r['seconds']:6.1f} s: RSS {r['before'] / mib:6.1f} MiB "
                f"-> {r['after'] / mib:6.1f} MiB, growth {r['after'] - r['before']:+,d} bytes = {r['growth']:+.3f} % "
                f"(trend {r['slope']:+.1f} bytes/call); live Python objects {r['objects']:+d}  {'ok' if ok else 'FAIL'}"
            )
    bound = f"RSS growth under {args.limit} % and its trend under {args.trend_limit:g} bytes/call"
    print(f"\nFAIL: not every backend kept {bound}" if failed else f"\nok: {bound} on every backend")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
