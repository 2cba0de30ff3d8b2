"""CPU benchmark: the package's backends against PyTorch's and ONNX Runtime's GRU.

``gru bench`` (or ``python benchmarks/cpu.py``) times every available CPU
backend of the package and, when installed, two peers (``torch.nn.GRU`` and
ONNX Runtime's ``GRU`` operator) on the same inputs and weights, in the same
run. Every implementation's output is checked against the NumPy backend's
before it is timed; one that disagrees is reported and never timed, because a
fast wrong answer is not a result.

``gru bench --train`` times training instead: one forward pass in training
mode plus the backward pass (d input and every parameter's gradient, for a
fixed d output), for the backends that declare training, against
``torch.nn.GRU`` with autograd. Output and gradients are checked against the
NumPy backend's float64 gradients before timing.

Why the rules below: machines are shared and noisy, so
we compare implementations within one run and report medians and ratios, and
quote the machine beside every number.

torch, onnxruntime, onnx, tqdm, matplotlib and threadpoolctl are optional and
imported only when used, so this package imports with NumPy and gru alone.

Its modules, in the order a run goes through them: ``_cases`` (shapes and
settings), ``_peers`` (what is timed), ``_machine`` (CPUs, threads, BLAS, the
GEMM yardstick, other load), ``_run`` (agreement, then timing), ``_report``
(table and plot) and ``_cli`` (``gru bench``).
"""

from __future__ import annotations

from gru.bench._cases import (
    DEFAULT_BUDGET_S,
    DEFAULT_REPEATS,
    DEFAULT_SHAPES,
    DEFAULT_WARMUP,
    PEERS,
    QUICK_REPEATS,
    QUICK_WARMUP,
    SCHEMA,
    TOLERANCES,
    TRAIN_SHAPES,
    TRAIN_TOLERANCES,
    Case,
    parse_shape,
)
from gru.bench._cli import add_arguments, main, run_from_args
from gru.bench._machine import (
    SIMD_FLAGS,
    machine_info,
    measure_gemm,
    set_thread_environment,
    thread_environment,
    usable_cpus,
)
from gru.bench._peers import (
    BackendImplementation,
    Implementation,
    OnnxRuntimeImplementation,
    TorchImplementation,
    onnx_gru_model,
    resolve_implementations,
)
from gru.bench._report import format_table, write_plot
from gru.bench._run import case_flops, run

__all__ = [
    "DEFAULT_BUDGET_S",
    "DEFAULT_REPEATS",
    "DEFAULT_SHAPES",
    "DEFAULT_WARMUP",
    "PEERS",
    "QUICK_REPEATS",
    "QUICK_WARMUP",
    "SCHEMA",
    "SIMD_FLAGS",
    "TOLERANCES",
    "TRAIN_SHAPES",
    "TRAIN_TOLERANCES",
    "BackendImplementation",
    "Case",
    "Implementation",
    "OnnxRuntimeImplementation",
    "TorchImplementation",
    "add_arguments",
    "case_flops",
    "format_table",
    "machine_info",
    "main",
    "measure_gemm",
    "onnx_gru_model",
    "parse_shape",
    "resolve_implementations",
    "run",
    "run_from_args",
    "set_thread_environment",
    "thread_environment",
    "usable_cpus",
    "write_plot",
]
