"""``gru bench`` on the command line: arguments, checks made before a run, the entry point."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

from gru._cli_checks import accept_negative_values, figure_path, number_error, output_error
from gru.bench._cases import (
    DEFAULT_BUDGET_S,
    DEFAULT_REPEATS,
    DEFAULT_SHAPES,
    DEFAULT_WARMUP,
    QUICK_MAX_STEPS,
    QUICK_REPEATS,
    QUICK_WARMUP,
    ROUNDS,
    TOLERANCES,
    TRAIN_SHAPES,
    Case,
    parse_shape,
)
from gru.bench._machine import thread_environment, usable_cpus
from gru.bench._peers import resolve_implementations
from gru.bench._report import format_table, write_plot
from gru.bench._run import run


# -- command line -----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gru bench`` options (shared by ``gru bench`` and ``benchmarks/cpu.py``)."""
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        metavar="I,H,B,T",
        help="shapes to run (default: "
        + " ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES)
        + "; with --train: "
        + " ".join(",".join(map(str, s)) for s in TRAIN_SHAPES)
        + ")",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="time training: forward (train=True) + backward, on the backends that declare training, against "
        "torch.nn.GRU autograd; outputs and gradients are checked against the numpy backend's float64 ones first",
    )
    parser.add_argument("--dtype", choices=sorted(TOLERANCES), default="float32")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="threads for every implementation (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--backends",
        metavar="A,B",
        help="implementations to run: backend names, torch, onnxruntime (default: every available CPU backend "
        "with priority >= 0, and both peers when installed)",
    )
    parser.add_argument("--repeats", type=int, metavar="N", help=f"timed calls per case (default {DEFAULT_REPEATS})")
    parser.add_argument("--warmup", type=int, metavar="N", help=f"untimed calls first (default {DEFAULT_WARMUP})")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        metavar="SECONDS",
        help=f"timed seconds per implementation and shape after which the repeats are cut, to no fewer than "
        f"{ROUNDS} (default {DEFAULT_BUDGET_S:g}; 0 = never cut)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the report with every timing and the machine to FILE (missing folders are made)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a bar chart of the speedups (matplotlib; the suffix picks the format, none: .png is added; "
        "missing folders are made)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: {QUICK_REPEATS} repeats, {QUICK_WARMUP} warm-up, and the default shapes cut to "
        f"{QUICK_MAX_STEPS} steps (unless --shapes is given)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    accept_negative_values(parser)


def run_from_args(args: argparse.Namespace) -> int:
    """Run what parsed ``args`` say; 0 when all went well, 1 if one disagreed or raised, 2 on bad input.

    Every argument, output file included, is checked before anything is timed.
    """
    threads = args.threads if args.threads is not None else usable_cpus()
    training = getattr(args, "train", False)
    shapes = TRAIN_SHAPES if training else DEFAULT_SHAPES
    if args.shapes:
        cases = list(args.shapes)
    elif args.quick:  # each default shape keeps its regime (I, H, B) with fewer steps
        cases = [Case(i, h, b, min(t, QUICK_MAX_STEPS)) for i, h, b, t in shapes]
    else:
        cases = [Case(*s) for s in shapes]
    repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else DEFAULT_WARMUP)
    plot, plot_problem = figure_path(args.plot, "--plot") if args.plot else (None, None)
    problem = (
        number_error("--threads", threads, 1)
        or number_error("--repeats", repeats, 1)
        or number_error("--warmup", warmup, 0)
        or number_error("--budget", args.budget, 0, "a number of seconds")
        or number_error("--seed", args.seed, 0)
        or _memory_error(cases, args.dtype)
        or (output_error(args.json, "--json") if args.json else None)
        or plot_problem
    )
    if problem:
        return _fail(problem)
    try:
        with thread_environment(threads):  # before the first torch/onnxruntime/backend load picks up its pool size
            impls = resolve_implementations(args.backends.split(",") if args.backends is not None else None)
            report = run(
                cases,
                implementations=impls,
                dtype=args.dtype,
                threads=threads,
                repeats=repeats,
                warmup=warmup,
                budget_s=args.budget or None,
                seed=args.seed,
                progress=args.progress,
                training=training,
            )
    except ValueError as exc:
        message = str(exc)
        if message.startswith("nothing can run") and args.backends is not None:  # what the selection left
            message = f"--backends {args.backends}: {message}"
        return _fail(message)
    print(format_table(report))
    failed = any(r["status"] in ("mismatch", "error") for c in report["cases"] for r in c["results"])
    status = 1 if failed else 0
    if args.json:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=1)
            print(f"wrote {args.json}")
        except OSError as exc:  # it was writable before the run; the table above still holds the results
            status = _fail(f"--json: cannot write {args.json!r}: {exc}")
    if plot:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
            why = write_plot(report, plot)
            print(f"plot not written: {why}" if why else f"wrote {plot}")
        except OSError as exc:
            status = _fail(f"--plot: cannot write {plot!r}: {exc}")
    return status


def _fail(message: str) -> int:
    print(f"gru bench: error: {message}", file=sys.stderr)
    return 2


def _memory_error(cases: Sequence[Case], dtype: str) -> str | None:
    """A shape whose input, output and weights alone exceed the machine's memory, refused before it is drawn."""
    from gru._validation import memory_bytes

    memory = memory_bytes()
    if memory is None:  # unknown here: a MemoryError is then that shape's error
        return None
    for case in cases:
        I, H = case.input_size, case.hidden_size
        need = np.dtype(dtype).itemsize * (case.steps * case.batch * (I + H) + 3 * H * (I + H))
        if need > memory:
            return (
                f"--shapes: expected shapes that fit in memory, got {case.label}: its input, output and weights "
                f"alone take {need / 2**30:,.1f} GiB, this machine has {memory / 2**30:,.1f} GiB"
            )
    return None


def main(argv: list[str] | None = None) -> int:
    """``gru bench``, ``python -m gru.bench`` and ``benchmarks/cpu.py``."""
    parser = argparse.ArgumentParser(
        prog="gru bench",
        description="Time the package's CPU backends against torch.nn.GRU and ONNX Runtime's GRU.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
