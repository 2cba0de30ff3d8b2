"""``python benchmarks/ab_kernels.py OLD.so NEW.so --shapes I,H,B,T ...``: two builds of the Cython kernels, A/B.

Decides whether a change to ``gru/backends/cython`` is faster. Both builds run
in one process and take turns call by call, so a slow phase of a shared
machine falls on both alike (between processes, or a table taken minutes
later, it does not). Each round flips which build goes first: the second of
two calls in a row is the faster one (7-12 % on this project's 2-core VM), and
a fixed order would credit that to one build.

Copy the built extension aside before a change (``python -c "import
gru.backends.cython._kernels as k; print(k.__file__)"`` says where it is),
rebuild, and pass the old copy and the new file: two files load as two
modules (one file given twice loads once, an A/A run of one build). Both
builds must take the arguments the installed ``backend.py`` passes.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import math
import statistics
import sys
import time
from types import ModuleType

import numpy as np

import gru
from gru.bench import Case, parse_shape


def load_build(path: str, tag: str) -> ModuleType:
    """The extension at ``path``, imported under a name of its own (the last part stays ``_kernels``)."""
    name = f"gru_ab_{tag}._kernels"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    if spec is None:
        raise ValueError(f"{path!r}: not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def compare(
    builds: dict[str, ModuleType],
    shapes: list[Case],
    *,
    seconds: float,
    window: float,
    threads: int,
    train: bool,
    reset_after: bool = True,
    dtype: str = "float32",
    out=sys.stdout,
) -> dict[str, dict[str, float]]:
    """Alternate the builds call by call for ``seconds``; print each window's medians; return the overall ones (ms)."""
    backend = gru.get_backend("cython")
    if backend._kernels is None:
        backend.available()  # imports the installed build
    installed = backend._kernels
    for module in builds.values():  # the BLAS the installed build detected decides for both
        module.use_small_kernel(installed.uses_small_kernel())
    rng = np.random.default_rng(0)
    cases = []
    for case in shapes:
        layer = gru.GRU(
            case.input_size, case.hidden_size, backend="cython", seed=0, reset_after=reset_after, dtype=dtype
        )
        x = rng.standard_normal((case.steps, case.batch, case.input_size), dtype=np.dtype(dtype))
        d_out = rng.standard_normal((case.steps, case.batch, case.hidden_size), dtype=np.dtype(dtype))
        cases.append((case.label, layer, x, d_out))
    times = {(label, tag): [] for label, *_ in cases for tag in builds}
    window_from = 0  # the current window's first round: its calls are times[key][window_from:]
    order = list(builds.items())
    start = window_start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            order.reverse()
            for label, layer, x, d_out in cases:
                for tag, module in order:
                    backend._kernels = module
                    t0 = time.perf_counter()
                    layer(x, threads=threads, train=train)
                    if train:
                        layer.backward(d_out)
                    times[(label, tag)].append(time.perf_counter() - t0)
            if time.perf_counter() - window_start >= window:
                _print_window(times, window_from, cases, builds, time.perf_counter() - start, out)
                window_from = len(next(iter(times.values())))  # every key has one call per round
                window_start = time.perf_counter()
    finally:
        backend._kernels = installed
    result = {}
    for label, *_ in cases:
        medians = {tag: statistics.median(times[(label, tag)]) * 1e3 for tag in builds}
        a, b = medians.values()
        print(
            f"{label}: median {' '.join(f'{t} {m:.3f} ms' for t, m in medians.items())}   B/A {b / a:.3f}"
            f"   ({len(times[(label, 'A')])} calls each)",
            file=out,
        )
        result[label] = medians
    return result


def _print_window(times, first, cases, builds, elapsed, out) -> None:
    """The medians of the calls from round ``first`` on."""
    parts = []
    for label, *_ in cases:
        medians = " ".join(f"{tag} {statistics.median(times[(label, tag)][first:]) * 1e3:8.3f}" for tag in builds)
        parts.append(f"{label} {medians}")
    print(f"t={elapsed:5.0f}s  " + "   ".join(parts), file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip("`"))
    parser.add_argument("build_a", metavar="OLD.so", help="the extension module to compare against (A)")
    parser.add_argument("build_b", metavar="NEW.so", help="the changed build (B)")
    parser.add_argument("--shapes", nargs="+", required=True, metavar="I,H,B,T", type=parse_shape)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to alternate (default 60)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per printed line (default 10)")
    parser.add_argument("--threads", type=int, default=2, help="threads of each call (default 2)")
    parser.add_argument("--train", action="store_true", help="time forward (train=True) + backward")
    parser.add_argument("--reset-before", action="store_true", help="the reset-before variant (default reset-after)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args(argv)
    if (
        not (math.isfinite(args.seconds) and math.isfinite(args.window))
        or min(args.seconds, args.window) <= 0
        or (args.threads < 1)
    ):
        parser.error(
            f"--seconds and --window must be > 0 and --threads >= 1, got {args.seconds}, {args.window}, {args.threads}"
        )
    if not gru.backend_available("cython"):
        parser.error("the cython backend is not available here: install gru from source first")
    builds = {}
    for tag, path in (("A", args.build_a), ("B", args.build_b)):
        try:
            builds[tag] = load_build(path, tag.lower())
        except (ImportError, OSError, ValueError) as exc:
            parser.error(f"{path}: expected a build of gru/backends/cython/_kernels, could not load it ({exc})")
    compare(
        builds,
        args.shapes,
        seconds=args.seconds,
        window=args.window,
        threads=args.threads,
        train=args.train,
        reset_after=not args.reset_before,
        dtype=args.dtype,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
