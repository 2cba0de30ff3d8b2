"""GPU benchmark: gru's CuPy backend against torch.nn.GRU on cuDNN, same GPU, same run, same weights.

    gru bench-gpu --json results/gpu.json [--repeats 10] [--budget 80]
    python benchmarks/gpu.py ...            (the same)

Needs CuPy, a CUDA GPU and PyTorch built with CUDA (see benchmarks/README.md).

For each shape (I, H, B, T), float32, one layer, one direction:

1. build ``torch.nn.GRU`` on the GPU and a ``gru.GRU`` with its ``state_dict``;
2. draw random inputs on the device (never zeros) and check the two outputs
   agree (relative L2 error and max abs difference against a float64 cuDNN run)
   before timing anything; a shape that disagrees is reported and not timed;
3. time each implementation with CUDA events after a warm-up, ``--repeats``
   times, and keep the median. cuDNN is timed twice: with TF32 off (the same
   float32 arithmetic as ours: the fair comparison) and with PyTorch's default
   TF32 setting (for information);
4. time every other path of our backend too (GRU_CUPY_PATH) that can run
   the layer, so the path rule can be tuned from the same run.

Results go to the JSON file after every shape (a run stopped by its time
budget still leaves what it measured) and a table is printed at the end.

``--sweep`` also times the persistent kernel over its layout knobs (units per
block, threads per block, share of L2) on every shape it can run, and
``--crossover`` every path over a grid of batch sizes, for tuning the path rule;
``--resident`` every layout of the resident kernel over a grid of sizes.
``--train`` times training instead (forward with ``train=True`` + backward,
against ``torch.nn.GRU``'s autograd on cuDNN, gradients checked first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gru._cli_checks import accept_negative_values, number_error, output_error
from gru.bench._cases import TRAIN_SHAPES  # --train: forward (train=True) + backward, as gru bench --train

#: (input_size, hidden_size, batch, seq_len): one shape per regime of the GPU paths
SHAPES = [
    (128, 128, 1, 1000),  # sync-latency
    (1024, 1024, 1, 1500),  # on-chip
    (2816, 2816, 1, 375),  # memory-bound
    (2048, 2048, 32, 375),  # balanced
    (512, 512, 256, 100),  # throughput
]
AGREE_RELATIVE = 1e-4  # float32 vs float64 reference, relative L2 error
PATH_NAMES = ("resident", "persistent", "fused", "stepwise")  # the CuPy backend's paths


def time_events(run, repeats: int, events, warmup: int = 0) -> list[float]:
    """Milliseconds of ``run()`` on the GPU, one pair of CUDA events per repeat, after ``warmup`` untimed runs."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start, end = events()
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start_end_ms(start, end))
    return times


def cupy_events():
    import cupy

    return cupy.cuda.Event(), cupy.cuda.Event()


def torch_events():
    import torch

    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


@contextlib.contextmanager
def _environment(name: str, value: str):
    """The environment variable ``name`` is ``value`` inside the block, and what it was (or unset) after it."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def forced_path(path: str):
    """The CuPy backend takes ``path`` (GRU_CUPY_PATH) inside the block, what it took before after it."""
    from gru.backends.cupy import _plans

    return _environment(_plans.PATH_ENV_VAR, path)


def start_end_ms(start, end) -> float:
    if hasattr(start, "elapsed_time"):  # torch.cuda.Event
        return float(start.elapsed_time(end))
    import cupy

    return float(cupy.cuda.get_elapsed_time(start, end))


def environment() -> dict[str, Any]:
    import cupy
    import torch

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {
        "gpu": name,
        "multiprocessors": props.get("multiProcessorCount"),
        "cupy": cupy.__version__,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "driver": cupy.cuda.runtime.driverGetVersion(),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def _same_weights(I: int, H: int) -> tuple[Any, Any, Any]:
    """torch.nn.GRU on the GPU (seeded), its float64 twin and a float32 gru.GRU (cupy), with one set of weights."""
    import torch

    import gru

    torch.manual_seed(0)
    reference = torch.nn.GRU(I, H).cuda().float()
    reference64 = torch.nn.GRU(I, H).cuda().double()
    reference64.load_state_dict({k: v.double() for k, v in reference.state_dict().items()})
    layer = gru.GRU(I, H, dtype="float32", backend="cupy")
    layer.load_state_dict(reference.state_dict())
    return reference, reference64, layer


def bench_shape(shape, repeats: int, warmup: int) -> dict[str, Any]:
    import cupy
    import torch

    import gru
    from gru.backends.cupy import _plans

    I, H, B, T = shape
    row: dict[str, Any] = {"shape": {"I": I, "H": H, "B": B, "T": T}, "dtype": "float32"}
    row["recurrent_flops_per_step"] = 6 * H * H * B
    row["recurrent_weight_bytes"] = 12 * H * H
    reference, reference64, layer = _same_weights(I, H)
    reference.eval()
    reference64.eval()
    rng = cupy.random.default_rng(1)
    x = rng.standard_normal((T, B, I), dtype=cupy.float32)
    x_torch = torch.from_dlpack(x)

    # -- agreement, against a float64 cuDNN run of the same weights and inputs
    with torch.no_grad():
        expected = reference64(x_torch.double())[0]
        torch.backends.cudnn.allow_tf32 = False
        cudnn_out = reference(x_torch)[0]
    output, _ = layer(x)
    backend = gru.get_backend("cupy")
    row["path"] = backend.last_paths[0]
    expected_np = expected.cpu().numpy()
    norm = float(np.linalg.norm(expected_np))

    def agreement(out) -> dict[str, float]:
        diff = np.asarray(out, np.float64) - expected_np
        return {"relative_l2": float(np.linalg.norm(diff)) / norm, "max_abs": float(np.abs(diff).max())}

    row["agreement_gru"] = agreement(cupy.asnumpy(output))
    row["agreement_cudnn_fp32"] = agreement(cudnn_out.cpu().numpy())
    row["agrees"] = row["agreement_gru"]["relative_l2"] <= AGREE_RELATIVE
    if not row["agrees"]:
        return row

    plan = _plans.plan_persistent(
        backend._device(x), hidden_size=H, batch=B, directions=1, dtype="float32", reset_after=True
    )
    row["persistent_plan"] = plan.__dict__ if isinstance(plan, _plans.PersistentPlan) else plan

    def run_gru():
        layer(x)

    def run_cudnn():
        with torch.no_grad():
            reference(x_torch)

    timings: dict[str, list[float]] = {}
    timings["gru_" + row["path"]] = time_events(run_gru, repeats, cupy_events, warmup)
    for tf32, key in ((False, "cudnn_fp32"), (True, "cudnn_tf32")):
        torch.backends.cudnn.allow_tf32 = tf32
        timings[key] = time_events(run_cudnn, repeats, torch_events, warmup)
    torch.backends.cudnn.allow_tf32 = False

    # the other paths, for tuning the rule
    for other in PATH_NAMES:
        if other == row["path"]:
            continue
        try:
            with forced_path(other):
                out_other, _ = layer(x)
                row[f"agreement_gru_{other}"] = agreement(cupy.asnumpy(out_other))
                timings["gru_" + other] = time_events(run_gru, repeats, cupy_events, warmup)
        except Exception as exc:  # a kernel that does not fit this layer says why
            row[f"gru_{other}_error"] = f"{type(exc).__name__}: {exc}"
    # the resident kernel's other layouts of W_hh, where they can run
    for layout, timed in time_resident_layouts(layer, x, backend, repeats, warmup, agreement).items():
        if "error" in timed:
            row[f"gru_resident_{layout}_error"] = timed["error"]
            continue
        row[f"agreement_gru_resident_{layout}"] = timed["agreement"]
        timings[f"gru_resident_{layout}"] = timed["times_ms"]

    row["times_ms"] = timings
    row["median_ms"] = {k: statistics.median(v) for k, v in timings.items()}
    ours = row["median_ms"]["gru_" + row["path"]]
    row["speedup_vs_cudnn_fp32"] = row["median_ms"]["cudnn_fp32"] / ours
    row["speedup_vs_cudnn_tf32"] = row["median_ms"]["cudnn_tf32"] / ours
    return row


def train_shape(shape, repeats: int, warmup: int) -> dict[str, Any]:
    """Forward (train=True) + backward of the CuPy backend against torch.nn.GRU's autograd on cuDNN.

    The gradients (input and every parameter) are checked against a float64
    cuDNN autograd run of the same weights and inputs first; cuDNN is timed with
    TF32 off, the same float32 arithmetic as ours.
    """
    import cupy
    import torch

    import gru

    I, H, B, T = shape
    row: dict[str, Any] = {"shape": {"I": I, "H": H, "B": B, "T": T}, "dtype": "float32", "training": True}
    torch.backends.cudnn.allow_tf32 = False
    reference, reference64, layer = _same_weights(I, H)
    rng = cupy.random.default_rng(1)
    x = rng.standard_normal((T, B, I), dtype=cupy.float32)
    d_output = rng.standard_normal((T, B, H), dtype=cupy.float32)
    x_torch, d_torch = torch.from_dlpack(x), torch.from_dlpack(d_output)

    x64 = x_torch.double().requires_grad_()
    reference64(x64)[0].backward(d_torch.double())
    expected = {"input": x64.grad, **{name: p.grad for name, p in reference64.named_parameters()}}
    layer(x, train=True)
    grads = layer.backward(d_output)
    row["path"] = gru.get_backend("cupy").last_paths[0]
    ours = {"input": grads.input, **grads.params}
    errors = {}
    for name, want in expected.items():
        want_np = want.cpu().numpy()
        diff = cupy.asnumpy(ours[name]).astype(np.float64) - want_np
        errors[name] = float(np.linalg.norm(diff)) / max(float(np.linalg.norm(want_np)), 1e-300)
    row["gradient_relative_l2"] = errors
    row["agrees"] = max(errors.values()) <= AGREE_RELATIVE
    if not row["agrees"]:
        return row

    x_leaf = x_torch.clone().requires_grad_()

    def run_gru():
        layer(x, train=True)
        layer.backward(d_output)

    def run_cudnn():
        reference.zero_grad(set_to_none=True)
        x_leaf.grad = None
        reference(x_leaf)[0].backward(d_torch)

    timings = {"gru": time_events(run_gru, repeats, cupy_events, warmup)}
    timings["cudnn_fp32"] = time_events(run_cudnn, repeats, torch_events, warmup)
    row["times_ms"] = timings
    row["median_ms"] = {k: statistics.median(v) for k, v in timings.items()}
    row["speedup_vs_cudnn_fp32"] = row["median_ms"]["cudnn_fp32"] / row["median_ms"]["gru"]
    return row


def run_training(args: argparse.Namespace, report: dict[str, Any], start: float) -> int:
    """--train: every training shape within the budget, a table at the end; 0 when every shape agreed and ran."""
    for shape in TRAIN_SHAPES:
        if time.monotonic() - start > args.budget:
            report["skipped"].append({"shape": shape, "reason": f"time budget of {args.budget:.0f} s spent"})
            continue
        try:
            row = train_shape(shape, args.repeats, args.warmup)
        except Exception as exc:
            row = {"shape": dict(zip("IHBT", shape, strict=True)), "error": f"{type(exc).__name__}: {exc}"}
        report["results"].append(row)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    env = report["environment"]
    print(f"GPU: {env['gpu']}  cupy {env['cupy']}  torch {env['torch']}  cuDNN {env['cudnn']}")
    print(
        f"training (forward + backward), float32\n{'I,H,B,T':<22} {'path':<11} {'gru ms':>9} {'cudnn ms':>9} "
        f"{'x fp32':>7} worst rel.err"
    )
    speedups = []
    for row in report["results"]:
        s = row["shape"]
        label = f"{s['I']},{s['H']},{s['B']},{s['T']}"
        if "error" in row:
            print(f"{label:<22} ERROR {row['error'][:90]}")
        elif not row["agrees"]:
            print(f"{label:<22} DISAGREES with cuDNN float64 autograd: {row['gradient_relative_l2']}")
        else:
            m = row["median_ms"]
            speedups.append(row["speedup_vs_cudnn_fp32"])
            worst = max(row["gradient_relative_l2"].values())
            print(
                f"{label:<22} {row['path']:<11} {m['gru']:9.3f} {m['cudnn_fp32']:9.3f} "
                f"{row['speedup_vs_cudnn_fp32']:7.2f} {worst:.1e}"
            )
    if speedups:
        report["geomean_speedup_vs_cudnn_fp32"] = float(np.exp(np.mean(np.log(speedups))))
        print(f"geometric mean vs cuDNN (fp32): {report['geomean_speedup_vs_cudnn_fp32']:.2f}x over {len(speedups)}")
        args.json.write_text(json.dumps(report, indent=2, default=str))
    for skipped in report["skipped"]:
        print(f"skipped {skipped['shape']}: {skipped['reason']}")
    return 0 if all(r.get("agrees") and "error" not in r for r in report["results"]) else 1


#: the persistent kernel's knobs that --sweep tries, one change from the defaults at a time
SWEEP_KNOBS = (
    {"persistent_min_units": 4},
    {"persistent_min_units": 16},
    {"persistent_threads": 128},
    {"persistent_l2_fraction": 0.0},
    {"persistent_l2_fraction": 0.3},
    {"persistent_l2_fraction": 0.9},
)


def sweep_shape(shape, repeats: int, warmup: int) -> list[dict[str, Any]]:
    """Median times of the forced persistent path over its knobs, and of the per-step GEMM alone."""
    import cupy
    from cupyx.profiler import benchmark

    import gru
    from gru.backends.cupy import _plans

    I, H, B, T = shape
    layer = gru.GRU(I, H, dtype="float32", backend="cupy", seed=0)
    x = cupy.random.default_rng(1).standard_normal((T, B, I), dtype=cupy.float32)
    backend = gru.get_backend("cupy")
    rows = []
    # the stepwise path's recurrent product of one step, batched (as the backend calls it) and 2-D
    h = cupy.random.default_rng(2).standard_normal((1, B, H), dtype=cupy.float32)
    w = cupy.random.default_rng(3).standard_normal((1, H, 3 * H), dtype=cupy.float32)
    out = cupy.empty((1, B, 3 * H), cupy.float32)
    for label, run in (("gemm_batched", lambda: cupy.matmul(h, w, out=out)), ("gemm_2d", lambda: h[0] @ w[0])):
        timing = benchmark(run, n_repeat=200, n_warmup=10)
        rows.append(
            {
                "knobs": label,
                "gpu_us": float(np.median(timing.gpu_times[0])) * 1e6,
                "cpu_us": float(np.median(timing.cpu_times)) * 1e6,
            }
        )
    if B > 32:
        return rows
    with forced_path("persistent"):
        for knobs in SWEEP_KNOBS:
            saved = {k: getattr(backend, k) for k in knobs}
            for k, v in knobs.items():
                setattr(backend, k, v)
            row: dict[str, Any] = {"knobs": knobs}
            plan = _plans.plan_persistent(
                backend._device(x),
                hidden_size=H,
                batch=B,
                directions=1,
                dtype="float32",
                reset_after=True,
                threads=backend.persistent_threads,
                min_units=backend.persistent_min_units,
                l2_fraction=backend.persistent_l2_fraction,
            )
            try:
                if not isinstance(plan, _plans.PersistentPlan):
                    row["error"] = plan
                elif "persistent_l2_fraction" in knobs and plan.cached_rows >= plan.rows:
                    row["error"] = "all rows on chip: nothing to keep in L2"
                else:
                    row.update(blocks=plan.blocks, units=plan.units, cached=plan.cached_rows, l2_rows=plan.l2_rows)
                    row["median_ms"] = statistics.median(time_events(lambda: layer(x), repeats, cupy_events, warmup))
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                for k, v in saved.items():
                    setattr(backend, k, v)
            rows.append(row)
    return rows


def resident_layout(layout: str):
    """The CuPy backend's resident path takes ``layout`` (GRU_CUPY_RESIDENT_LAYOUT) inside the block."""
    from gru.backends.cupy import _plans

    return _environment(_plans.RESIDENT_LAYOUT_ENV_VAR, layout)


def time_resident_layouts(layer, x, backend, repeats: int, warmup: int, agreement) -> dict[str, dict[str, Any]]:
    """The resident path in each layout of W_hh other than the one the backend takes for the layer, where that
    layout can run the layer: graded by ``agreement`` (of a NumPy output), then timed."""
    from gru._arrays import to_host
    from gru.backends.cupy import _plans

    T, B, _ = x.shape
    H = layer.hidden_size

    def plan(layout: str):
        return _plans.plan_resident(
            hidden_size=H,
            dtype=layer.dtype,
            reset_after=layer.reset_after,
            elements=T * B * layer.num_directions * 3 * H,
            layout=layout,
        )

    own = plan(_plans.resident_layout_from_environment(backend.resident_layout))
    results: dict[str, dict[str, Any]] = {}
    for layout in _plans.RESIDENT_LAYOUTS:
        other = plan(layout)
        if not isinstance(other, _plans.ResidentPlan) or other.layout != layout or other == own:
            continue
        try:
            with forced_path("resident"), resident_layout(layout):
                graded = agreement(to_host(layer(x)[0], "output"))
                times = time_events(lambda: layer(x), repeats, cupy_events, warmup)
        except Exception as exc:  # a layout that fails on this device says why, the others still run
            results[layout] = {"kernel": other.kernel, "error": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        results[layout] = {"kernel": other.kernel, "threads": other.threads, "agreement": graded, "times_ms": times}
    return results


#: (hidden size, batch sizes) of --crossover, 100 steps, input size = hidden size
CROSSOVER = (
    (256, (1, 4, 8, 16, 32, 64, 128, 256)),
    (512, (16, 32, 64, 128, 256)),
    (1024, (1, 4, 8, 16, 32, 64, 128, 256)),
)


def crossover(repeats: int, warmup: int) -> list[dict[str, Any]]:
    """Median ms of every path that can run, per (H, B): where the path rule should switch."""
    import cupy

    import gru

    rows = []
    for H, batches in CROSSOVER:
        layer = gru.GRU(H, H, dtype="float32", backend="cupy", seed=0)
        for B in batches:
            x = cupy.random.default_rng(B).standard_normal((100, B, H), dtype=cupy.float32)
            row: dict[str, Any] = {"H": H, "B": B, "T": 100, "median_ms": {}}
            for path in PATH_NAMES:
                try:
                    with forced_path(path):
                        times = time_events(lambda layer=layer, x=x: layer(x), repeats, cupy_events, warmup)
                    row["median_ms"][path] = statistics.median(times)
                except Exception as exc:
                    row[f"{path}_error"] = f"{type(exc).__name__}: {exc}"[:80]
            layer(x)
            row["auto"] = gru.get_backend("cupy").last_paths[0]
            rows.append(row)
            times = "  ".join(f"{k} {v:8.3f}" for k, v in row["median_ms"].items())
            print(f"crossover H={H:<5} B={B:<4} auto={row['auto']:<10} {times}", flush=True)
    return rows


#: (hidden size, batch sizes) of --resident, 1000 steps, input size = hidden size
RESIDENT_GRID = ((32, (1, 16)), (64, (1, 16, 64)), (128, (1, 4, 16, 32, 64, 128)))


def resident_grid(repeats: int, warmup: int) -> list[dict[str, Any]]:
    """Median ms of the resident path in every layout per (H, B), 1000 steps; at one sequence also 2000
    steps (the slope is the time of a step) and the host's time per call (CPU clock, no synchronisation)."""
    import cupy
    from cupyx.profiler import benchmark

    import gru
    from gru.backends.cupy import _plans

    rows = []
    for H, batches in RESIDENT_GRID:
        layer = gru.GRU(H, H, dtype="float32", backend="cupy", seed=0)
        for B in batches:
            for T in (1000, 2000) if B == 1 else (1000,):
                x = cupy.random.default_rng(B).standard_normal((T, B, H), dtype=cupy.float32)
                row: dict[str, Any] = {"H": H, "B": B, "T": T, "median_ms": {}}
                for layout in (name for name in _plans.RESIDENT_LAYOUTS if name != "auto"):  # each forced
                    try:
                        with forced_path("resident"), resident_layout(layout):
                            times = time_events(lambda layer=layer, x=x: layer(x), repeats, cupy_events, warmup)
                            row["median_ms"][layout] = statistics.median(times)
                            if B == 1 and T == 1000:
                                timing = benchmark(lambda layer=layer, x=x: layer(x), n_repeat=50, n_warmup=5)
                                row.setdefault("host_us", {})[layout] = float(np.median(timing.cpu_times)) * 1e6
                    except Exception as exc:
                        row[f"{layout}_error"] = f"{type(exc).__name__}: {exc}"[:120]
                rows.append(row)
                times_text = "  ".join(f"{k} {v:7.3f}" for k, v in row["median_ms"].items())
                print(f"resident H={H:<4} B={B:<4} T={T:<5} {times_text}", flush=True)
    # the rest of a call at the benchmark's first shape: the projection GEMM alone
    x = cupy.random.default_rng(0).standard_normal((1000, 1, 128), dtype=cupy.float32)
    w = cupy.random.default_rng(1).standard_normal((128, 384), dtype=cupy.float32)
    timing = benchmark(lambda: cupy.matmul(x.reshape(1000, 128), w), n_repeat=50, n_warmup=5)
    rows.append(
        {
            "projection_gemm_us": {
                "gpu": float(np.median(timing.gpu_times[0])) * 1e6,
                "host": float(np.median(timing.cpu_times)) * 1e6,
            }
        }
    )
    print(f"resident: projection GEMM (1000x128)@(128x384): {rows[-1]['projection_gemm_us']} us", flush=True)
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gru bench-gpu`` options (shared with ``benchmarks/gpu.py``)."""
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=80.0, help="seconds; shapes not started by then are skipped")
    parser.add_argument("--sweep", action="store_true", help="also time the persistent kernel over its knobs")
    parser.add_argument("--crossover", action="store_true", help="also time every path over a grid of batch sizes")
    parser.add_argument(
        "--resident", action="store_true", help="also time every layout of the resident kernel over a grid of sizes"
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="time training (forward with train=True + backward) against torch.nn.GRU autograd on cuDNN instead",
    )
    accept_negative_values(parser)


def main(argv: list[str] | None = None) -> int:
    """``gru bench-gpu`` / ``benchmarks/gpu.py``: 0 when every shape agreed and ran, 1 if not, 2 if it cannot run."""
    parser = argparse.ArgumentParser(prog="gru bench-gpu", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def train_alone_error(args: argparse.Namespace) -> str | None:
    """--train times training only: the forward's tuning runs do not go with it."""
    others = [flag for flag in ("sweep", "crossover", "resident") if getattr(args, flag)]
    if args.train and others:
        given = ", ".join(f"--{flag}" for flag in others)
        return f"--train: expected alone (it times training only), got it with {given}"
    return None


def run_from_args(args: argparse.Namespace) -> int:
    """Run what parsed ``args`` say (see :func:`main`); the arguments are checked before CuPy is needed."""
    import gru

    problem = (
        number_error("--repeats", args.repeats, 1)
        or number_error("--warmup", args.warmup, 0)
        or number_error("--budget", args.budget, 0, "a number of seconds", above=True)  # 0 would skip every shape
        or output_error(str(args.json), "--json")
        or train_alone_error(args)
    )
    if problem:
        print(f"gru bench-gpu: error: {problem}", file=sys.stderr)
        return 2
    try:
        gru.get_backend("cupy")
    except gru.BackendError as exc:
        print(f"gru bench-gpu: the cupy backend cannot run here: {exc}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError as exc:
        print(f"gru bench-gpu: PyTorch (the cuDNN peer) is not installed ({exc})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("gru bench-gpu: this PyTorch has no CUDA (the cuDNN peer needs it)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"environment": environment(), "results": [], "skipped": []}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if args.train:
        return run_training(args, report, start)
    for shape in SHAPES:
        if time.monotonic() - start > args.budget:
            report["skipped"].append({"shape": shape, "reason": f"time budget of {args.budget:.0f} s spent"})
            continue
        t0 = time.monotonic()
        try:
            row = bench_shape(shape, args.repeats, args.warmup)
        except Exception as exc:
            row = {"shape": dict(zip("IHBT", shape, strict=True)), "error": f"{type(exc).__name__}: {exc}"}
        row["wall_s"] = time.monotonic() - t0
        report["results"].append(row)
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"done {shape} in {row['wall_s']:.1f} s", file=sys.stderr, flush=True)

    env = report["environment"]
    print(f"GPU: {env['gpu']}  cupy {env['cupy']}  torch {env['torch']}  cuDNN {env['cudnn']}")
    print(
        f"{'I,H,B,T':<22} {'path':<11} {'gru ms':>9} {'cudnn ms':>9} {'x fp32':>7} {'tf32 ms':>9} {'x tf32':>7} rel.err"
    )
    for row in report["results"]:
        s = row["shape"]
        label = f"{s['I']},{s['H']},{s['B']},{s['T']}"
        if "error" in row:
            print(f"{label:<22} ERROR {row['error'][:90]}")
            continue
        if not row["agrees"]:
            print(f"{label:<22} DISAGREES with cuDNN float64: {row['agreement_gru']}")
            continue
        m = row["median_ms"]
        ours = m["gru_" + row["path"]]
        print(
            f"{label:<22} {row['path']:<11} {ours:9.3f} {m['cudnn_fp32']:9.3f} {row['speedup_vs_cudnn_fp32']:7.2f} "
            f"{m['cudnn_tf32']:9.3f} {row['speedup_vs_cudnn_tf32']:7.2f} {row['agreement_gru']['relative_l2']:.1e}"
        )
        paths = ", ".join(f"{k[4:]} {v:.3f} ms" for k, v in m.items() if k.startswith("gru_"))
        errors = "; ".join(
            f"{k[4:-6]}: {v[:60]}" for k, v in row.items() if k.startswith("gru_") and k.endswith("_error")
        )
        print(f"{'':<22} every path: {paths}" + (f"  ({errors})" if errors else ""))
    for skipped in report["skipped"]:
        print(f"skipped {skipped['shape']}: {skipped['reason']}")
    if args.sweep:
        report["sweep"] = []
        for shape in SHAPES:
            if time.monotonic() - start > 2 * args.budget:
                break
            try:
                rows = sweep_shape(shape, args.repeats, args.warmup)
            except Exception as exc:
                rows = [{"error": f"{type(exc).__name__}: {exc}"}]
            report["sweep"].append({"shape": shape, "rows": rows})
            args.json.write_text(json.dumps(report, indent=2, default=str))
            for row in rows:
                if "gpu_us" in row:
                    timing = f"GPU {row['gpu_us']:9.1f} us  CPU {row['cpu_us']:7.1f} us"
                else:
                    timing = f"{row['median_ms']:9.3f} ms" if "median_ms" in row else row.get("error", "")
                where = {k: row[k] for k in ("blocks", "units", "cached", "l2_rows") if k in row}
                print(f"sweep {shape!s:<24} {row.get('knobs')!s:<36} {where!s:<56} {timing}")
    if args.crossover:
        report["crossover"] = crossover(args.repeats, args.warmup)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    if args.resident:
        report["resident"] = resident_grid(args.repeats, args.warmup)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if all(r.get("agrees") and "error" not in r for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
