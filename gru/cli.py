"""The ``gru`` command: ``gru backends``, ``gru demo``, ``gru conformance NAME``, ``gru bench``, ``gru bench-gpu``."""

from __future__ import annotations

import argparse
import sys

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
    """Train a GRU on the adding problem and save a figure of its update gate (see gru.demo)."""
    from gru import demo

    return demo.run_from_args(args)


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
    from gru import demo as demo_module  # light: numpy and gru; tqdm and matplotlib load only when used

    demo = sub.add_parser(
        "demo",
        help="train a GRU on the adding problem (T=100) and plot where its update gate holds its state",
        description="Train a GRU on the adding problem (Hochreiter & Schmidhuber) until the test MSE is below "
        "0.01, print the result and save a figure: the loss curves and the update gate z_t over a test sequence.",
    )
    demo_module.add_arguments(demo)
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
    from gru import bench_gpu  # light: CuPy and PyTorch load only when a run starts

    gpu = sub.add_parser(
        "bench-gpu",
        help="time the CuPy backend against torch.nn.GRU on cuDNN (see benchmarks/README.md)",
        description=bench_gpu.__doc__.splitlines()[0],
    )
    bench_gpu.add_arguments(gpu)
    gpu.set_defaults(run=bench_gpu.run_from_args)
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []
    if "--" in argv:  # everything after it belongs to pytest (gru conformance NAME -- -x)
        split = argv.index("--")
        argv, pytest_args = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    if pytest_args and args.run is not _conformance:  # only pytest takes arguments after --
        parser.error(f"arguments after --: only 'gru conformance' takes them (for pytest), got {pytest_args}")
    args.pytest_args = pytest_args
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
