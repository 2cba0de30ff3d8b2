"""The run: agreement checks, then timed calls in interleaved rounds, with a progress bar."""

from __future__ import annotations

import datetime as _dt
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import gru
from gru._cli_checks import number_error
from gru.bench._cases import (
    DEFAULT_BUDGET_S,
    DEFAULT_REPEATS,
    DEFAULT_SHAPES,
    DEFAULT_WARMUP,
    PEERS,
    QUIESCE_S,
    ROUNDS,
    SCHEMA,
    TOLERANCES,
    TRAIN_TOLERANCES,
    Case,
    Gradients,
    Runner,
)
from gru.bench._machine import _LoadMeter, limit_threads, machine_info, measure_barrier, measure_gemm, usable_cpus
from gru.bench._peers import Implementation, resolve_implementations


# -- progress ------------------------------------------------------------------------------------------
class _LineProgress:
    """Fallback when tqdm is missing: one line per (case, implementation) on a terminal's stderr."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled and sys.stderr.isatty()

    def set_description(self, text: str) -> None:
        if self.enabled:
            print(f"[{100 * self.done // max(self.total, 1):3d}%] {text}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr, shown only on a terminal (logs stay clean); counts forward calls."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _LineProgress(total, enabled)
    return tqdm(
        total=total, unit="call", file=sys.stderr, leave=False, dynamic_ncols=True, disable=None if enabled else True
    )


# -- the run -------------------------------------------------------------------------------------------
def _agreement(out: Any, expected: np.ndarray, dtype: str) -> tuple[bool, float | None, str | None]:
    """Whether ``out`` matches the NumPy backend's output within the dtype's tolerance."""
    out = out.get() if hasattr(out, "get") else np.asarray(out)
    if out.shape != expected.shape:
        return False, None, f"output shape {out.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(out)):
        return False, None, "output has NaN or inf"
    diff = float(np.max(np.abs(out.astype(np.float64) - expected))) if out.size else 0.0
    rtol, atol = TOLERANCES.get(dtype, TOLERANCES["float32"])
    ok = bool(np.allclose(out, expected, rtol=rtol, atol=atol))
    return (
        ok,
        diff,
        None
        if ok
        else f"disagrees with the numpy backend: max |diff| {diff:.2e} > atol {atol:g} + rtol {rtol:g}·|ref|",
    )


def _gradient_agreement(out: Gradients, expected: Gradients, dtype: str) -> tuple[bool, float | None, str | None]:
    """Whether the output and every gradient match the float64 reference, each within rtol · max|ref| + atol.

    Gradients are sums over all T·B positions, so their scale varies from one
    tensor to the next: each is held to a tolerance relative to its own largest
    entry. The reported difference is the largest absolute one.
    """
    if not isinstance(out, dict) or set(out) != set(expected):
        got = sorted(out) if isinstance(out, dict) else type(out).__name__
        return False, None, f"returned {got}, expected the output and gradients {sorted(expected)}"
    rtol, atol = TRAIN_TOLERANCES.get(dtype, TRAIN_TOLERANCES["float32"])
    worst, bad = 0.0, []
    for key, ref in expected.items():
        value = np.asarray(out[key].get() if hasattr(out[key], "get") else out[key])
        if value.shape != ref.shape:
            return False, None, f"{key}: shape {value.shape}, expected {ref.shape}"
        if not np.all(np.isfinite(value)):
            return False, None, f"{key} has NaN or inf"
        diff = float(np.max(np.abs(value.astype(np.float64) - ref))) if ref.size else 0.0
        worst = max(worst, diff)
        allowed = rtol * (float(np.max(np.abs(ref))) if ref.size else 0.0) + atol
        if diff > allowed:
            bad.append(f"{key} max |diff| {diff:.2e} > {allowed:.2e}")
    if bad:
        return False, worst, "disagrees with the numpy backend's float64 gradients: " + "; ".join(bad)
    return True, worst, None


def _training_reference(state: dict[str, np.ndarray], case: Case, x: np.ndarray, d_output: np.ndarray) -> Gradients:
    """The NumPy backend's output and gradients in float64, from the same (rounded) weights and inputs."""
    layer = gru.GRU(case.input_size, case.hidden_size, dtype="float64", backend="numpy")
    layer.load_state_dict({k: v.astype(np.float64) for k, v in state.items()})
    output, _ = layer(x.astype(np.float64), train=True)
    grads = layer.backward(d_output.astype(np.float64))
    return {"output": np.asarray(output), "input": np.asarray(grads.input), **grads.params}


@dataclass(frozen=True)
class _Settings:
    dtype: str
    threads: int
    repeats: int
    warmup: int
    budget_s: float | None
    training: bool = False


def case_flops(case: Case, training: bool = False) -> int:
    """Floating-point operations of one call: the forward's, times 3 for forward + backward.

    The backward of each product costs two products of the same size (one for
    the gradient of its input, one for its weight's), hence 6 + 12 = 18·H·(I+H)·B·T.
    """
    return case.flops * (3 if training else 1)


def run(
    cases: Sequence[Case] = tuple(Case(*s) for s in DEFAULT_SHAPES),
    *,
    implementations: Sequence[Implementation] | None = None,
    extra: Sequence[Implementation] = (),
    dtype: str = "float32",
    threads: int | None = None,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    budget_s: float | None = DEFAULT_BUDGET_S,
    seed: int = 0,
    progress: bool = True,
    measure_machine_gemm: bool = True,
    training: bool = False,
) -> dict[str, Any]:
    """Run the benchmark and return the report (JSON-ready: plain dicts, lists, numbers).

    ``training=True`` times forward (``train=True``) + backward instead of
    inference, on the implementations that can train (see the module's doc).

    ``implementations`` defaults to :func:`resolve_implementations` (None); ``extra``
    are appended. Each case draws one set of weights (PyTorch layout) and one
    input, loads them into every implementation, checks its output against the
    NumPy backend's, makes ``warmup`` untimed calls, then ``repeats`` timed ones
    (fewer, but at least one per round, once they have taken ``budget_s``
    seconds), split into rounds over the implementations (see :func:`_run_case`).
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype: expected one of {sorted(TOLERANCES)}, got {dtype!r}")
    for problem in (
        number_error("repeats", repeats, 1),
        number_error("warmup", warmup, 0),
        None if budget_s is None else number_error("budget_s", budget_s, 0, "a number of seconds"),
    ):
        if problem:
            raise ValueError(problem)
    settings = _Settings(dtype, threads or usable_cpus(), repeats, warmup, budget_s, training)
    impls = list(resolve_implementations(None) if implementations is None else implementations) + list(extra)
    notes: list[str] = []
    skipped: dict[str, str] = {}
    for impl in impls:
        reason = impl.training_unavailable(dtype) if training else impl.unavailable(dtype)
        if reason:
            skipped[impl.name] = reason
            notes.append(f"{impl.name}: skipped, {reason}")
    if all(impl.name in skipped for impl in impls):  # an empty table would read as success
        raise ValueError("nothing can run: " + ("; ".join(notes) or "no implementation was selected"))

    tolerance = (TRAIN_TOLERANCES if training else TOLERANCES)[dtype]  # what the agreement check applies
    torch = sys.modules.get("torch")  # loaded by the availability check: restore its pool size afterwards
    torch_threads = torch.get_num_threads() if torch is not None else None
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {
            "dtype": dtype,
            "threads": settings.threads,
            "repeats": repeats,
            "warmup": warmup,
            "budget_s": budget_s,
            "seed": seed,
            "tolerance": dict(zip(("rtol", "atol"), tolerance, strict=True)),
            "layer": "1 layer, unidirectional, reset-after (linear_before_reset=1), bias, h0 = 0",
            "mode": "training" if training else "inference",
            "flops_formula": "18*H*(I+H)*B*T (forward 6, backward 12)" if training else "6*H*(I+H)*B*T",
            "timing": "time.perf_counter around one "
            + ("forward (train=True) + backward call, d output fixed" if training else "forward call")
            + "; median over repeats",
        },
        "implementations": [
            {"name": i.name, "kind": i.kind, "version": i.version(), "skipped": skipped.get(i.name)} for i in impls
        ],
        "peers": sorted(
            (i.name for i in impls if i.kind == "peer" and i.name not in skipped),
            key=lambda n: PEERS.index(n) if n in PEERS else len(PEERS),
        ),
        "notes": notes,
        "cases": [],
    }
    runnable = [i for i in impls if i.name not in skipped]
    bar = _progress(len(cases) * len(runnable) * _calls_per_implementation(settings), progress)
    rng = np.random.default_rng(seed)
    try:
        with limit_threads(settings.threads) as pools:
            report["thread_pools"] = [{k: p.get(k) for k in ("internal_api", "num_threads")} for p in pools]
            gemm = []
            if measure_machine_gemm:
                bar.set_description(f"machine {'s' if dtype == 'float32' else 'd'}gemm")
                gemm.append(measure_gemm(dtype))
            whole_run = _LoadMeter()
            for case in cases:
                barrier_ns = measure_barrier(settings.threads)
                meter = _LoadMeter()
                report["cases"].append(_run_case(case, runnable, rng, settings, bar))
                report["cases"][-1]["other_load_cpus"] = meter.other_cpus()
                report["cases"][-1]["barrier_ns"] = barrier_ns
            report["other_load_cpus"] = whole_run.other_cpus()
            if measure_machine_gemm:
                gemm.append(measure_gemm(dtype))
                # the machine's rate is the better of the two: load from elsewhere only ever lowers it
                report["gemm"] = dict(max(gemm, key=lambda g: g["gflops"]), all_gflops=[g["gflops"] for g in gemm])
    finally:
        bar.close()
        if torch is not None:
            torch.set_num_threads(torch_threads)
    _add_ratios(report)
    return report


def _calls_per_implementation(settings: _Settings) -> int:
    """Forward calls one implementation makes on one shape when nothing is cut: for the progress bar."""
    return 1 + settings.warmup + _rounds(settings.repeats) * min(settings.warmup, 1) + settings.repeats


def _rounds(repeats: int) -> int:
    return max(1, min(ROUNDS, repeats))


def _run_case(
    case: Case, impls: Sequence[Implementation], rng: np.random.Generator, settings: _Settings, bar: Any
) -> dict[str, Any]:
    """Check every implementation on one shape, then time those that agree, in interleaved rounds.

    Rounds spread a burst of load from elsewhere on a shared machine over all
    implementations instead of one; each implementation's share of a round
    starts with a pause that lets the previous library's worker threads stop
    spinning (:data:`QUIESCE_S`), then the warm-up calls, which re-wake its
    own threads and re-warm its caches.
    """
    dtype = settings.dtype
    planned = len(impls) * _calls_per_implementation(settings)
    flops = case_flops(case, settings.training)
    outcome: dict[str, Any] = {"shape": case.as_dict(), "label": case.label, "flops": flops, "results": []}
    try:
        reference = gru.GRU(case.input_size, case.hidden_size, dtype=dtype, backend="numpy", seed=rng)
        state = reference.state_dict()
        x = rng.standard_normal((case.steps, case.batch, case.input_size)).astype(dtype)
        if settings.training:
            d_output = rng.standard_normal((case.steps, case.batch, case.hidden_size)).astype(dtype)
            expected: Any = _training_reference(state, case, x, d_output)
        else:
            expected = np.asarray(reference(x)[0], dtype=np.float64)
    except MemoryError as exc:  # the shape's own arrays: every implementation fails it, the other shapes still run
        reason = f"MemoryError: {exc}" if str(exc) else "MemoryError: the shape does not fit in memory"
        outcome["results"] = [{"name": i.name, "kind": i.kind, "status": "error", "reason": reason} for i in impls]
        bar.update(planned)
        return outcome
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        bar.update(n)

    results = outcome["results"]
    timed: list[tuple[dict[str, Any], Runner, list[float]]] = []
    for impl in impls:
        bar.set_description(f"I,H,B,T={case.label} {impl.name} (check)")
        entry: dict[str, Any] = {"name": impl.name, "kind": impl.kind}
        results.append(entry)
        try:
            if settings.training:
                forward = impl.prepare_training(state, case, dtype, settings.threads, d_output)
                ok, diff, why = _gradient_agreement(forward(x), expected, dtype)
            else:
                forward = impl.prepare(state, case, dtype, settings.threads)
                ok, diff, why = _agreement(forward(x), expected, dtype)
            tick()
            if ok:
                for _ in range(settings.warmup):
                    forward(x)
                    tick()
        except Exception as exc:  # one broken implementation must not end the run
            entry.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            continue
        entry["max_abs_diff"] = diff
        if not ok:
            entry.update(status="mismatch", reason=why)
            continue
        timed.append((entry, forward, []))

    repeats, rounds = settings.repeats, _rounds(settings.repeats)
    with limit_threads(settings.threads):  # again: pools the implementations loaded since the run began
        for r in range(rounds):
            share = repeats // rounds + (r < repeats % rounds)
            # the budget so far: a round's share stops early once it is spent, after at least one call
            budget = None if settings.budget_s is None else settings.budget_s * (r + 1) / rounds
            # each round starts with a different implementation: whatever one leaves behind on
            # the machine (a busy memory system, a lower clock) falls on each of the others in turn
            shift = r % max(len(timed), 1)
            for entry, forward, times in timed[shift:] + timed[:shift]:
                if "status" in entry:  # it raised in an earlier round
                    continue
                bar.set_description(f"I,H,B,T={case.label} {entry['name']} (round {r + 1}/{rounds})")
                time.sleep(QUIESCE_S)
                try:
                    for _ in range(settings.warmup):
                        forward(x)
                    tick(min(settings.warmup, 1))
                    for k in range(share):
                        if k and budget is not None and sum(times) > budget:
                            break
                        start = time.perf_counter()
                        forward(x)
                        times.append(time.perf_counter() - start)
                        tick()
                except Exception as exc:  # as in its check: this implementation's error, not the run's end
                    entry.update(status="error", reason=f"{type(exc).__name__} while timed: {exc}")
    bar.update(max(planned - done, 0))  # calls the budget cut

    for entry, _, times in timed:
        if "status" in entry:
            continue
        median = statistics.median(times)
        entry.update(
            status="ok",
            repeats=len(times),
            times_s=times,
            median_s=median,
            min_s=min(times),
            spread=_spread(times),
            us_per_step=median / case.steps * 1e6,
            gflops=flops / median / 1e9,
        )
    return outcome


def _add_ratios(report: dict[str, Any]) -> None:
    """Speedup vs each peer (peer time / this time), GEMM fraction, and their geometric means."""
    peers = report["peers"]
    gemm = report.get("gemm", {}).get("gflops")
    logs: dict[str, dict[str, list[float]]] = {}
    for case in report["cases"]:
        timed = {r["name"]: r["median_s"] for r in case["results"] if r["status"] == "ok"}
        for r in case["results"]:
            if r["status"] != "ok":
                continue
            if gemm:
                r["gemm_fraction"] = r["gflops"] / gemm
            r["speedup"] = {p: timed[p] / r["median_s"] for p in peers if p in timed}
            for p, s in r["speedup"].items():
                logs.setdefault(r["name"], {}).setdefault(p, []).append(math.log(s))
    report["geomean_speedup"] = {
        name: {p: {"speedup": math.exp(sum(v) / len(v)), "cases": len(v)} for p, v in per_peer.items()}
        for name, per_peer in logs.items()
    }


def _spread(times: Sequence[float]) -> float:
    """Interquartile range over median: how noisy an implementation's timed calls were."""
    if len(times) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / median
