"""The ``gru`` command: ``gru backends``, ``gru demo``, ``gru conformance NAME``."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import gru


def _backends(args: argparse.Namespace) -> int:
    rows = gru.list_backends()
    print(f"{'backend':<12} {'available':<10} {'device':<7} {'priority':<9} details")
    for info in rows:
        caps = info.capabilities
        device = caps.device if caps else "-"
        priority = str(caps.priority) if caps else "-"
        details = info.origin if info.available else info.reason
        print(f"{info.name:<12} {'yes' if info.available else 'no':<10} {device:<7} {priority:<9} {details}")
        for note in info.notes:
            print(f"{'':<40} note: {note}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Run one GRU on every available backend and show that they agree."""
    rng = np.random.default_rng(args.seed)
    I, H, L, B, T = 16, 32, 2, 4, 50
    reference = gru.GRU(I, H, L, bidirectional=True, batch_first=True, dtype="float64", backend="numpy", seed=args.seed)
    x = rng.standard_normal((B, T, I))
    lengths = rng.integers(1, T + 1, B)
    expected, _ = reference(x, lengths=lengths)
    print(
        f"GRU(input_size={I}, hidden_size={H}, num_layers={L}, bidirectional) "
        f"on {B} sequences of up to {T} steps, lengths {list(lengths)}"
    )
    print(f"{'backend':<12} {'dtype':<8} {'max |diff| vs numpy float64':>28} {'time (ms)':>10}")
    for info in gru.list_backends():
        if not info.available:
            print(f"{info.name:<12} unavailable: {info.reason}")
            continue
        for dtype in sorted(info.capabilities.dtypes):
            layer = gru.GRU(I, H, L, bidirectional=True, batch_first=True, dtype=dtype, backend=info.name)
            layer.load_state_dict(reference.state_dict())
            start = time.perf_counter()
            output, _ = layer(x.astype(dtype), lengths=lengths)
            elapsed = (time.perf_counter() - start) * 1e3
            output = output.get() if hasattr(output, "get") else np.asarray(output)
            print(f"{info.name:<12} {dtype:<8} {np.max(np.abs(output - expected)):>28.2e} {elapsed:>10.2f}")
    return 0


def _conformance(args: argparse.Namespace) -> int:
    try:
        import pytest
    except ImportError:
        print("gru conformance needs pytest: pip install pytest", file=sys.stderr)
        return 2
    argv = ["--pyargs", "gru.testing", "-p", "no:cacheprovider", "-q"]
    for name in args.backend:
        argv += ["--gru-backend", name]
    return int(pytest.main(argv + args.pytest_args))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gru", description="GRU layers on pluggable backends")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backends", help="list the registered backends and whether they can run here").set_defaults(
        run=_backends
    )
    demo = sub.add_parser("demo", help="run a GRU on every available backend and show they agree")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    conformance = sub.add_parser("conformance", help="run the conformance suite on backends (pytest)")
    conformance.add_argument("backend", nargs="+", help="backend name(s)")
    conformance.epilog = "Arguments after -- go to pytest, e.g. gru conformance mine -- -x -k golden"
    conformance.set_defaults(run=_conformance)
    from gru import bench as bench_module  # light: its optional dependencies load only when a run needs them

    bench = sub.add_parser(
        "bench",
        help="time the CPU backends against torch.nn.GRU and ONNX Runtime (see benchmarks/README.md)",
        description="Time the package's CPU backends against torch.nn.GRU and ONNX Runtime's GRU.",
    )
    bench_module.add_arguments(bench)
    bench.set_defaults(run=bench_module.run_from_args)
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []
    if "--" in argv:  # everything after it belongs to pytest (gru conformance NAME -- -x)
        split = argv.index("--")
        argv, pytest_args = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    args.pytest_args = pytest_args
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
