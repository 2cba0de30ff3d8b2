"""``python benchmarks/floors.py [--bench RUN.json] [--shapes ...]``: the least time the Cython backend can take.

A forward call split by unit is, for each thread, an input projection (its units'
for every row, or from 512 rows a thread a block of rows for every unit) and then,
step by step, the products of h_{t-1} with its units' recurrent weights (from
the second step on where h0 = 0, as in ``gru bench``; see
``gru/backends/cython/_kernels.pyx``). This script times those BLAS calls
alone, exactly as thread 0 makes them, in one thread with BLAS held to one
thread, and adds them up: the shape's floor. It leaves out everything else
(the gate pass, the barrier, unpacking a column-major product) and the other
threads' pull on the shared caches, so the backend cannot run a shape faster
than its floor with this BLAS on this machine. The shared floor times the
whole team's projections, and each step's products, at once instead (every
thread on its own units, no barrier) and takes the slower of the two times
of each: where the threads stream their weights from a cache they share,
that is what the bandwidth they split leaves.

Given a ``gru bench --json`` run (``--bench``), it takes the shapes, threads
and dtype from it and also prints each implementation's time in that run
against the floor, and for each peer the most the backend could be faster
than it (peer time / floor), shape by shape and in geometric mean: a target
above that bound cannot be met with this BLAS (with the shared floor: nor
above that one, with these threads on this machine's shared caches). Calls
split by sequence (batches of small layers, see ``splits_by_sequence``) are
not covered.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from typing import Any

import numpy as np

import gru
from gru._arrays import aligned_copy
from gru.bench import DEFAULT_SHAPES, Case, parse_shape, usable_cpus

MEASUREMENTS = 5  # medians of this many timings of each product
SECONDS_PER_MEASUREMENT = 0.02


def _seconds_per_call(timed, *args) -> float:
    """The median over MEASUREMENTS of ``timed(*args, calls)`` (seconds per call), with enough calls to take ~20 ms."""
    once = max(timed(*args, 1), 1e-7)
    calls = max(1, int(SECONDS_PER_MEASUREMENT / once))
    return statistics.median(timed(*args, calls) for _ in range(MEASUREMENTS))


def floor(case: Case, threads: int, dtype: str = "float32", seed: int = 0) -> dict[str, Any]:
    """The floor of ``case`` (seconds) and its parts, or a ``skipped`` reason."""
    backend = gru.get_backend("cython")
    backend.available()  # loads the kernels and tells them whether BLAS has the small-matrix kernel
    kernels = backend._kernels
    I, H, B, T = case.input_size, case.hidden_size, case.batch, case.steps
    itemsize = np.dtype(dtype).itemsize
    # without OpenMP every call runs in one thread
    team = kernels.team_size(threads, H, B, itemsize) if kernels.has_openmp() else 1
    if kernels.splits_sequences(B, H, itemsize, team):
        return {"skipped": "split by sequence"}
    w_rows = bool(kernels.panel_rows(B, H, itemsize, team))
    per_step = bool(kernels.projects_step_by_step(T, B, I, H, itemsize, team))
    rng = np.random.default_rng(seed)
    # on cache lines, as the backend keeps its weights and buffers (misaligned panels cost up to 20 %)
    w_hh = aligned_copy(rng.standard_normal((3 * H, H)), dtype)
    w_ih_t = aligned_copy(rng.standard_normal((I, 3 * H)), dtype)
    w_ih = aligned_copy(w_ih_t.T, dtype)
    h = aligned_copy(rng.standard_normal((B, H)), dtype)
    x = aligned_copy(rng.standard_normal((B if per_step else T * B, I)), dtype)

    def held(function, *args):
        return backend._with_blas_held(function, *args)

    step = _seconds_per_call(held, kernels.step_seconds, w_hh, h, team, w_rows)
    shared_step = _seconds_per_call(held, functools.partial(kernels.step_seconds, together=True), w_hh, h, team, w_rows)
    projection = _seconds_per_call(held, kernels.projection_seconds, x, w_ih_t, w_ih, team, per_step)
    shared_projection = _seconds_per_call(
        held, functools.partial(kernels.projection_seconds, together=True), x, w_ih_t, w_ih, team, per_step
    )
    projection *= T if per_step else 1
    shared_projection *= T if per_step else 1
    return {
        "team": team,
        "layout": "W_hh rows" if w_rows else "W_hh^T",
        "projection": "per step" if per_step else "whole sequence",
        "projection_s": projection,
        "step_s": step,
        # the benchmark's calls start from h0 = 0, whose first product the kernels skip (see run_rows)
        "floor_s": projection + (T - 1) * step,
        "shared_projection_s": shared_projection,
        "shared_step_s": shared_step,
        "shared_floor_s": max(projection, shared_projection) + (T - 1) * max(step, shared_step),
    }


def bounds(floors: dict[str, dict[str, Any]], report: dict[str, Any], key: str = "floor_s") -> dict[str, Any]:
    """Per shape of a ``gru bench`` report: each implementation's time / the floor, and each peer's time / the floor.

    The second is the most the Cython backend can be faster than that peer on
    the shape; ``geomean`` holds both in geometric mean over the shapes with a
    floor. ``key`` picks the floor: ``floor_s`` or ``shared_floor_s``.
    """
    shapes: dict[str, dict[str, Any]] = {}
    for case in report["cases"]:
        entry = floors.get(case["label"], {})
        if key not in entry:
            continue
        times = {r["name"]: r["median_s"] for r in case["results"] if r.get("status") == "ok"}
        shapes[case["label"]] = {
            "times_s": times,
            "over_floor": {name: t / entry[key] for name, t in times.items()},
            "best_speedup": {
                r["name"]: times[r["name"]] / entry[key]
                for r in case["results"]
                if r.get("kind") == "peer" and r["name"] in times
            },
        }
    geomean: dict[str, dict[str, float]] = {}
    for ratio in ("over_floor", "best_speedup"):
        names = {name for s in shapes.values() for name in s[ratio]}
        geomean[ratio] = {}
        for name in sorted(names):
            values = [s[ratio][name] for s in shapes.values() if name in s[ratio]]
            geomean[ratio][name] = math.exp(sum(math.log(v) for v in values) / len(values))
    return {"shapes": shapes, "geomean": geomean}


def format_floors(
    floors: dict[str, dict[str, Any]], limits: dict[str, Any] | None, shared_limits: dict[str, Any] | None = None
) -> str:
    lines = [
        f"{'I,H,B,T':<18}{'team':>5}  {'panel':<9}  {'projection':<15}{'proj ms':>9}{'µs/step':>9}{'floor ms':>10}"
        f"{'shared proj ms':>16}{'shared µs/step':>16}{'shared floor ms':>17}"
    ]
    for label, f in floors.items():
        if "skipped" in f:
            lines.append(f"{label:<18}  {f['skipped']}: not covered")
            continue
        lines.append(
            f"{label:<18}{f['team']:>5}  {f['layout']:<9}  {f['projection']:<15}"
            f"{f['projection_s'] * 1e3:>9.3f}{f['step_s'] * 1e6:>9.2f}{f['floor_s'] * 1e3:>10.3f}"
            f"{f['shared_projection_s'] * 1e3:>16.3f}{f['shared_step_s'] * 1e6:>16.2f}"
            f"{f['shared_floor_s'] * 1e3:>17.3f}"
        )
    for name, found in (("floor", limits), ("shared floor", shared_limits)):
        if not found:
            continue
        lines += ["", f"against the run (time / {name}; for a peer, its time / our {name}: the most we can be faster):"]
        for label, s in found["shapes"].items():
            parts = [f"{who} {t * 1e3:.3f} ms = {s['over_floor'][who]:.2f}x" for who, t in s["times_s"].items()]
            lines.append(f"{label:<18}" + ";  ".join(parts))
        lines.append(
            f"geometric mean, time / {name}: "
            + ", ".join(f"{who} {v:.2f}x" for who, v in found["geomean"]["over_floor"].items())
        )
        lines.append(
            "geometric mean, most the Cython backend can be faster than: "
            + ", ".join(f"{who} {v:.2f}x" for who, v in found["geomean"]["best_speedup"].items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--bench", metavar="RUN.json", help="a `gru bench --json` run: its shapes, threads and dtype")
    parser.add_argument("--shapes", nargs="+", metavar="I,H,B,T", type=parse_shape, help="default: gru bench's")
    parser.add_argument("--threads", type=int, help="threads of the calls (default: the usable CPUs)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None)
    parser.add_argument("--json", metavar="FILE", help="write the floors (and the bounds, with --bench) to FILE")
    args = parser.parse_args(argv)
    if not gru.backend_available("cython"):
        parser.error("the cython backend is not available here: install gru from source first")
    if args.bench and (args.shapes or args.threads is not None or args.dtype):
        parser.error(
            "--bench takes the shapes, threads and dtype from the run: --shapes, --threads, --dtype go without it"
        )
    report = None
    if args.bench:
        try:
            with open(args.bench, encoding="utf-8") as f:
                report = json.load(f)
            shapes = [Case(*(c["shape"][k] for k in ("I", "H", "B", "T"))) for c in report["cases"]]
            threads, dtype = report["settings"]["threads"], report["settings"]["dtype"]
            mode = report["settings"].get("mode", "inference")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"--bench {args.bench}: expected the JSON of `gru bench --json`, could not read it ({exc})")
        if mode != "inference":
            parser.error(f"--bench {args.bench}: a {mode} run (--train); the floors are the forward's: run it without")
    else:
        shapes = args.shapes or [Case(*s) for s in DEFAULT_SHAPES]
        threads = usable_cpus() if args.threads is None else args.threads
        dtype = args.dtype or "float32"
    if threads < 1:
        parser.error(f"--threads: expected a positive integer, got {threads}")
    out = None
    if args.json:
        try:
            out = open(args.json, "w", encoding="utf-8")
        except OSError as exc:
            parser.error(f"--json {args.json}: cannot write it ({exc.strerror})")
    floors = {case.label: floor(case, threads, dtype) for case in shapes}
    limits = bounds(floors, report) if report else None
    shared_limits = bounds(floors, report, "shared_floor_s") if report else None
    team = f"{threads} thread{'s' if threads != 1 else ''}"
    print(
        f"floors: {team}, {dtype}; thread 0's BLAS calls alone, one thread (shared: the team's at once),"
        f" medians of {MEASUREMENTS}"
    )
    print(format_floors(floors, limits, shared_limits))
    if out is not None:
        with out:
            json.dump(
                {
                    "threads": threads,
                    "dtype": dtype,
                    "floors": floors,
                    "bounds": limits,
                    "shared_bounds": shared_limits,
                },
                out,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
