"""Where the host's time goes in one CuPy-backend call of a small layer (needs CuPy and a GPU).

    python benchmarks/gpu_host.py [--shape I,H,B,T] [--calls 300] [--profile]

At small sizes the host's time before the recurrence's launch is GPU time lost
(the GPU waits for it when each call is timed alone). This prints, for the
layer (float32, one layer, one direction, default (128,128,1,1000)):

* the host's time per call with calls queued back to back (no
  synchronisation), and the GPU's time per call once the queue drains;
* ``cupyx.profiler.benchmark`` host and GPU times of the pieces a call is
  made of: the projection GEMM (``cupy.matmul``), an elementwise bias add
  over gx, and the whole call;
* with ``--profile``, the functions the host spends the calls in (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="128,128,1,1000", help="I,H,B,T")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--profile", action="store_true", help="also print where the host's time goes (cProfile)")
    args = parser.parse_args(argv)
    try:
        I, H, B, T = (int(v) for v in args.shape.split(","))
    except ValueError:
        parser.error(f"--shape: expected four integers I,H,B,T, got {args.shape!r}")
    if args.calls < 1:
        parser.error(f"--calls: expected a positive number of calls, got {args.calls}")
    try:
        import cupy
        from cupyx.profiler import benchmark
    except ImportError as exc:
        print(f"gpu_host.py: needs CuPy ({exc})", file=sys.stderr)
        return 2

    import gru

    layer = gru.GRU(I, H, dtype="float32", backend="cupy", seed=0)
    x = cupy.random.default_rng(0).standard_normal((T, B, I), dtype=cupy.float32)
    for _ in range(20):
        layer(x)
    cupy.cuda.Device().synchronize()
    start = time.perf_counter()
    for _ in range(args.calls):
        layer(x)
    host = time.perf_counter() - start
    cupy.cuda.Device().synchronize()
    drained = time.perf_counter() - start
    print(f"{args.shape}: host {host / args.calls * 1e6:.1f} us per call (queued, no synchronisation);")
    print(f"  GPU {drained / args.calls * 1e6:.1f} us per call once the queue drains")

    rows = cupy.random.default_rng(1).standard_normal((T * B, I), dtype=cupy.float32)
    w = cupy.random.default_rng(2).standard_normal((I, 3 * H), dtype=cupy.float32)
    gx = cupy.matmul(rows, w)
    bias = cupy.random.default_rng(3).standard_normal(3 * H, dtype=cupy.float32) * 1e-30  # gx barely moves
    pieces = (
        ("projection (cupy.matmul)", lambda: cupy.matmul(rows, w)),
        ("gx += bias", lambda: gx.__iadd__(bias)),
        ("layer(x)", lambda: layer(x)),
    )
    for name, run in pieces:
        timing = benchmark(run, n_repeat=200, n_warmup=10)
        cpu = float(cupy.asnumpy(cupy.median(cupy.asarray(timing.cpu_times)))) * 1e6
        gpu = float(cupy.asnumpy(cupy.median(cupy.asarray(timing.gpu_times[0])))) * 1e6
        print(f"  {name:<26} host {cpu:8.1f} us   GPU {gpu:8.1f} us   (medians of 200)")

    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(args.calls):
            layer(x)
        cupy.cuda.Device().synchronize()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
