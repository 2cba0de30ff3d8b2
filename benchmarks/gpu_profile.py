"""Run one GPU benchmark shape on one path a few times: a target for Nsight Compute.

    ncu --section WarpStateStats --section SourceCounters -k regex:gru_ -s SKIP -c 1 \\
        python benchmarks/gpu_profile.py 128,128,1,1000 --path resident

``--print-skip`` prints how many matching kernel launches one call makes (1 for
the resident and persistent paths, one per step for the others), to pass as
``-s`` so that the profiled launch comes from the second call, after NVRTC
compilation and warm-up. ``benchmarks/gpu_check.sh`` runs this for every
benchmark shape when ``GRU_GPU_PROFILE=1``.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", help="I,H,B,T")
    parser.add_argument("--path", default="auto", help="resident, persistent, fused, stepwise or auto")
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--print-skip", action="store_true", help="print the launches of one call and exit")
    args = parser.parse_args(argv)
    I, H, B, T = (int(v) for v in args.shape.split(","))
    if args.print_skip:
        print(1 if args.path in ("resident", "persistent") else T)
        return 0

    import cupy

    import gru
    from gru.backends.cupy import _plans

    os.environ[_plans.PATH_ENV_VAR] = args.path
    layer = gru.GRU(I, H, dtype="float32", backend="cupy", seed=0)
    x = cupy.random.default_rng(1).standard_normal((T, B, I), dtype=cupy.float32)
    for _ in range(args.calls):
        layer(x)
    cupy.cuda.Device().synchronize()
    print(f"{args.shape} on {gru.get_backend('cupy').last_paths}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
