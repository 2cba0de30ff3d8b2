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
imported only when used, so this module imports with NumPy and gru alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

import gru
from gru._cli_checks import accept_negative_values, figure_path, number_error, output_error

__all__ = [
    "DEFAULT_SHAPES",
    "PEERS",
    "TRAIN_SHAPES",
    "Case",
    "Implementation",
    "add_arguments",
    "format_table",
    "machine_info",
    "main",
    "run",
    "run_from_args",
    "write_plot",
]

SCHEMA = "gru-bench/1"

#: (I, H, B, T): overhead-bound, cache-resident, small batch, bandwidth-bound, compute-bound.
DEFAULT_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (64, 128, 1, 200),
    (256, 256, 1, 500),
    (512, 512, 8, 30),
    (1024, 1024, 1, 100),
    (512, 512, 64, 100),
)
#: (I, H, B, T) of the training cases (forward + backward): mid-size batches, as in training.
TRAIN_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (64, 64, 32, 100),
    (256, 256, 32, 100),
    (512, 512, 64, 50),
    (128, 128, 64, 200),
)
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2
ROUNDS = 3  # the timed calls of a shape are split into this many rounds over the implementations
# Pause before each implementation's share of a round: OpenBLAS and OpenMP worker
# threads keep spinning for up to ~0.1 s after a call, and a spinning pool of the
# previous library steals cores from the next one (fatal for per-step barriers).
QUIESCE_S = 0.2
DEFAULT_BUDGET_S = 3.0  # timed seconds per (shape, implementation) before repeats are cut
BUSY_LOAD_CPUS = 0.25  # other processes' average CPU use above which the report warns
QUICK_REPEATS = 3
QUICK_WARMUP = 1
QUICK_MAX_STEPS = 20  # --quick keeps each shape's I, H, B (its regime) but runs few steps

#: tolerances of the agreement check against the NumPy backend, per dtype: (rtol, atol)
TOLERANCES = {"float32": (1e-4, 1e-4), "float64": (1e-9, 1e-9)}
#: training: every output and gradient of float64 reference ``ref`` must be within rtol · max|ref| + atol
TRAIN_TOLERANCES = {"float32": (1e-4, 1e-5), "float64": (1e-9, 1e-12)}

#: the peers, by the name used on the command line, in the order of the table's columns
PEERS = ("onnxruntime", "torch")
_PEER_ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch", "pytorch": "torch"}

# environment variables read by the thread pools of OpenMP, OpenBLAS, MKL and BLIS when they start
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")

Runner = Callable[[np.ndarray], Any]
#: what a training runner returns: "output", "input" (d loss / d x) and every parameter's gradient by state-dict key
Gradients = dict[str, np.ndarray]


# -- cases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark shape: a single-layer, unidirectional, reset-after GRU on (T, B, I) input."""

    input_size: int
    hidden_size: int
    batch: int
    steps: int

    @property
    def flops(self) -> int:
        """6·H·(I+H)·B·T: three gates, each an input and a recurrent product (multiply-add = 2)."""
        return 6 * self.hidden_size * (self.input_size + self.hidden_size) * self.batch * self.steps

    @property
    def label(self) -> str:
        return f"{self.input_size},{self.hidden_size},{self.batch},{self.steps}"

    def as_dict(self) -> dict[str, int]:
        return {"I": self.input_size, "H": self.hidden_size, "B": self.batch, "T": self.steps}


def parse_shape(text: str) -> Case:
    """Parse ``I,H,B,T`` (argparse type)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected I,H,B,T as four positive integers, got {text!r}")
    return Case(*values)


# -- implementations -------------------------------------------------------------------------------
class Implementation:
    """Something to time: a backend of this package or a peer library.

    Subclass it to benchmark another implementation (``run(..., extra=[...])``);
    the tests use this hook to check that a wrong implementation is refused.
    """

    #: the name in the table and in ``--backends``
    name: str = ""
    #: "gru" for this package's backends, "peer" for the libraries we compare against
    kind: str = "gru"

    def version(self) -> str | None:
        return None

    def unavailable(self, dtype: str) -> str | None:
        """Why this cannot run here at ``dtype``, or None when it can."""
        return None

    def prepare(self, state: dict[str, np.ndarray], case: Case, dtype: str, threads: int) -> Runner:
        """Build the layer from the PyTorch-layout ``state`` (untimed); return ``f(x) -> output (T, B, H)``."""
        raise NotImplementedError

    def training_unavailable(self, dtype: str) -> str | None:
        """Why this cannot train here at ``dtype`` (``gru bench --train``), or None when it can."""
        if type(self).prepare_training is Implementation.prepare_training:
            return "no training runner (prepare_training)"
        return self.unavailable(dtype)

    def prepare_training(
        self, state: dict[str, np.ndarray], case: Case, dtype: str, threads: int, d_output: np.ndarray
    ) -> Callable[[np.ndarray], Gradients]:
        """Like :meth:`prepare`, for training: ``f(x)`` runs forward and backward with ``d_output`` (T, B, H).

        ``f(x)`` returns ``{"output": ..., "input": d loss / d x, **{key: d loss / d state[key]}}``.
        """
        raise NotImplementedError


class BackendImplementation(Implementation):
    """A backend of this package, called through the public ``gru.GRU`` API, as users call it."""

    kind = "gru"

    def __init__(self, backend: str, info: gru.BackendInfo | None = None) -> None:
        self.backend = backend
        self.info = info
        self.name = f"gru:{backend}" if backend in PEERS else backend

    def version(self) -> str | None:
        return f"gru {gru.__version__}"

    def unavailable(self, dtype: str) -> str | None:
        if self.info is None:
            return f"no backend named {self.backend!r} is registered"
        if not self.info.available:
            return self.info.reason or "unavailable"
        caps = self.info.capabilities
        if caps is not None and caps.device != "cpu":
            return f"runs on {caps.device}, this is a CPU benchmark"
        if caps is not None and dtype not in caps.dtypes:
            return f"does not support {dtype}"
        return None

    def prepare(self, state, case, dtype, threads):
        layer = gru.GRU(case.input_size, case.hidden_size, dtype=dtype, backend=self.backend)
        layer.load_state_dict(state)
        return lambda x: layer(x)[0]

    def training_unavailable(self, dtype: str) -> str | None:
        reason = self.unavailable(dtype)
        if reason is None and self.info is not None and not self.info.capabilities.training:
            reason = "does not declare training"
        return reason

    def prepare_training(self, state, case, dtype, threads, d_output):
        layer = gru.GRU(case.input_size, case.hidden_size, dtype=dtype, backend=self.backend)
        layer.load_state_dict(state)

        def step(x: np.ndarray) -> Gradients:
            output, _ = layer(x, train=True)
            grads = layer.backward(d_output)
            return {"output": output, "input": grads.input, **grads.params}

        return step


class TorchImplementation(Implementation):
    """``torch.nn.GRU`` on the CPU, inference only (``torch.inference_mode``)."""

    name = "torch"
    kind = "peer"

    def version(self) -> str | None:
        return _dist_version("torch")

    def unavailable(self, dtype: str) -> str | None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return f"not installed ({exc}): pip install torch"
        return None

    def prepare(self, state, case, dtype, threads):
        import torch

        torch.set_num_threads(threads)
        layer = torch.nn.GRU(case.input_size, case.hidden_size).to(getattr(torch, dtype))
        layer.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        layer.eval()

        def forward(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return layer(torch.from_numpy(x))[0].numpy()

        return forward

    def prepare_training(self, state, case, dtype, threads, d_output):
        """Autograd, as a training loop uses it: fresh leaf input, gradients reset to None, ``backward``."""
        import torch

        torch.set_num_threads(threads)
        layer = torch.nn.GRU(case.input_size, case.hidden_size).to(getattr(torch, dtype))
        layer.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        layer.train()
        d_out = torch.from_numpy(d_output)
        params = dict(layer.named_parameters())

        def step(x: np.ndarray) -> Gradients:
            for p in params.values():
                p.grad = None  # optimizer.zero_grad(set_to_none=True)
            x_t = torch.from_numpy(x).requires_grad_()
            output, _ = layer(x_t)
            output.backward(d_out)
            grads = {"output": output.detach().numpy(), "input": x_t.grad.numpy()}
            return grads | {k: p.grad.numpy() for k, p in params.items()}

        return step


class OnnxRuntimeImplementation(Implementation):
    """ONNX Runtime's ``GRU`` operator in a one-node model, on the CPU execution provider."""

    name = "onnxruntime"
    kind = "peer"

    def version(self) -> str | None:
        return _dist_version("onnxruntime")

    def unavailable(self, dtype: str) -> str | None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"not installed ({exc}): pip install onnx onnxruntime"
        if dtype != "float32":
            return "ONNX Runtime's CPU GRU kernel is float32 only"
        return None

    def training_unavailable(self, dtype: str) -> str | None:
        return "inference only (ONNX Runtime's GRU operator has no backward)"

    def prepare(self, state, case, dtype, threads):
        import onnxruntime as ort

        model = onnx_gru_model(state, case, dtype)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        T, B, H = case.steps, case.batch, case.hidden_size

        def forward(x: np.ndarray) -> np.ndarray:
            return session.run(["Y"], {"X": x})[0].reshape(T, B, H)  # Y is (T, num_directions=1, B, H)

        return forward


def onnx_gru_model(state: dict[str, np.ndarray], case: Case, dtype: str = "float32") -> Any:
    """A one-node ONNX model computing the same GRU as ``state`` (PyTorch layout, gates r, z, n).

    ONNX orders the gate blocks z, r, h, so the first two H-row blocks swap;
    B is [Wb, Rb]; ``linear_before_reset=1`` is PyTorch's reset-after form.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, I = case.hidden_size, case.input_size
    zrh = np.r_[np.arange(H, 2 * H), np.arange(0, H), np.arange(2 * H, 3 * H)]
    W = state["weight_ih_l0"][zrh][None]  # (1, 3H, I)
    R = state["weight_hh_l0"][zrh][None]  # (1, 3H, H)
    Bias = np.concatenate([state["bias_ih_l0"][zrh], state["bias_hh_l0"][zrh]])[None]  # (1, 6H)
    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.DOUBLE
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], hidden_size=H, linear_before_reset=1)
    graph = helper.make_graph(
        [node],
        "gru_bench",
        [helper.make_tensor_value_info("X", elem, [case.steps, case.batch, I])],
        [helper.make_tensor_value_info("Y", elem, [case.steps, 1, case.batch, H])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(a.astype(dtype)), n)
            for a, n in ((W, "W"), (R, "R"), (Bias, "B"))
        ],
    )
    # an old IR version and opset so that any ONNX Runtime of recent years loads it
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _peer(name: str) -> Implementation:
    return TorchImplementation() if name == "torch" else OnnxRuntimeImplementation()


def resolve_implementations(names: Sequence[str] | None) -> list[Implementation]:
    """The implementations to run.

    ``None`` means every available CPU backend of the package with priority >= 0
    (negative priority marks slow reference or example backends) plus both peers.
    Names may be backends, ``torch``, ``onnxruntime`` (``ort``), or ``gru:NAME``
    for a backend whose name is also a peer's. Raises ValueError on unknown names.
    """
    infos = {info.name: info for info in gru.list_backends()}
    if names is None:
        chosen: list[Implementation] = [
            BackendImplementation(info.name, info)
            for info in infos.values()
            if info.available
            and info.capabilities is not None
            and info.capabilities.device == "cpu"
            and info.capabilities.priority >= 0
        ]
        return chosen + [_peer(p) for p in PEERS]
    known = ", ".join([*(f"gru:{n}" if n in PEERS else n for n in sorted(infos)), *PEERS])
    if not any(raw.strip() for raw in names):
        got = ",".join(names)
        raise ValueError(f"--backends: expected implementation names separated by commas (known: {known}), got {got!r}")
    chosen = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name.startswith("gru:"):
            name = name[4:]
            if name not in infos:
                raise ValueError(
                    f"--backends: no backend named {name!r} is registered (registered: {', '.join(sorted(infos))})"
                )
            impl: Implementation = BackendImplementation(name, infos[name])
        elif name.lower() in _PEER_ALIASES:
            impl = _peer(_PEER_ALIASES[name.lower()])
        elif name in infos:
            impl = BackendImplementation(name, infos[name])
        else:
            raise ValueError(f"--backends: unknown implementation {name!r} (known: {known})")
        if impl.name not in {c.name for c in chosen}:
            chosen.append(impl)
    return chosen


# -- threads and machine -----------------------------------------------------------------------------
def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_thread_environment(threads: int) -> None:
    """Set OMP/OpenBLAS/MKL/BLIS thread variables; only pools started after this call read them."""
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)


@contextmanager
def limit_threads(threads: int) -> Iterator[list[dict[str, Any]]]:
    """Cap every BLAS and OpenMP pool loaded now at ``threads`` (threadpoolctl), restoring afterwards.

    Yields what threadpoolctl saw (empty without threadpoolctl). Pools loaded
    later are not covered: call again after loading them.
    """
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        yield []
        return
    with threadpool_limits(limits=threads):
        yield threadpool_info()


#: Instruction-set extensions that decide which kernels BLAS libraries pick (/proc/cpuinfo's names).
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")


def _cpuinfo() -> dict[str, Any]:
    """From /proc/cpuinfo (Linux; empty elsewhere): model name, family and model numbers, the SIMD extensions
    the libraries choose kernels by, the per-core cache the kernel reports, physical cores."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    info: dict[str, Any] = {}
    cores: set[tuple[str, str]] = set()
    physical = core = None
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "cache size", "cpu family", "model") and key not in info:
            info[key] = value
        elif key == "flags" and "flags" not in info:
            present = set(value.split())
            info["flags"] = [flag for flag in SIMD_FLAGS if flag in present]
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key:  # blank line: end of one logical CPU
            if core is not None:
                cores.add((physical or "0", core))
            physical = core = None
    info["physical_cores"] = len(cores) or None
    return info


def _blas_small_kernel() -> bool | None:
    """Whether scipy's BLAS has the small-matrix kernel the cython backend cuts its products for (None: unknown)."""
    try:
        from gru.backends.cython.backend import blas_has_small_kernel

        return blas_has_small_kernel()
    except Exception:  # no scipy or threadpoolctl: the report says nothing about it
        return None


def machine_info() -> dict[str, Any]:
    """What to quote beside every number: CPU, cores, library versions, BLAS."""
    cpu = _cpuinfo()
    blas: list[dict[str, Any]] = []
    try:
        from threadpoolctl import threadpool_info

        blas = [
            {k: lib.get(k) for k in ("user_api", "internal_api", "version", "num_threads", "architecture")}
            for lib in threadpool_info()
        ]
    except ImportError:
        pass
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_family": cpu.get("cpu family"),  # with cpu_model: the microarchitecture (AMD family 26: Zen 5)
        "cpu_model": cpu.get("model"),
        "cpu_simd": cpu.get("flags"),
        "cpu_cache": cpu.get("cache size"),  # as the kernel reports it: per core, usually L2
        "blas_small_kernel": _blas_small_kernel(),
        # OpenBLAS picks its kernels for the CPU unless this names others (read when it loads)
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "logical_cpus": os.cpu_count(),
        "physical_cores": cpu.get("physical_cores"),
        "usable_cpus": usable_cpus(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "versions": {
            "gru": gru.__version__,
            "numpy": np.__version__,
            "scipy": _dist_version("scipy"),
            "torch": _dist_version("torch"),
            "onnxruntime": _dist_version("onnxruntime"),
            "onnx": _dist_version("onnx"),
            "threadpoolctl": _dist_version("threadpoolctl"),
        },
        "thread_pools_at_start": blas,
    }


def measure_gemm(dtype: str = "float32", n: int = 1024, repeats: int = 10) -> dict[str, Any]:
    """The machine's GEMM rate through NumPy (median of ``repeats``), the yardstick for GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "name": ("s" if dtype == "float32" else "d") + "gemm",
        "n": n,
        "median_s": median,
        "gflops": 2 * n**3 / median / 1e9,
    }


def _busy_cpu_seconds() -> float | None:
    """CPU seconds every CPU has spent busy (not idle or iowait; hypervisor steal counts as busy), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class _LoadMeter:
    """How many CPUs other processes kept busy since it started: the noise a shared machine adds."""

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._busy = _busy_cpu_seconds()
        self._own = sum(os.times()[:2])

    def other_cpus(self) -> float | None:
        busy, wall = _busy_cpu_seconds(), time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return None
        other = (busy - self._busy - (sum(os.times()[:2]) - self._own)) / wall
        # the two clocks are read at slightly different times: never more CPUs than the machine has
        return min(max(0.0, other), float(os.cpu_count() or 1))


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
                meter = _LoadMeter()
                report["cases"].append(_run_case(case, runnable, rng, settings, bar))
                report["cases"][-1]["other_load_cpus"] = meter.other_cpus()
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


# -- output ----------------------------------------------------------------------------------------
def _describe_machine(report: dict[str, Any]) -> str:
    m, s = report["machine"], report["settings"]
    cores = f"{m['logical_cpus']} logical CPUs"
    if m.get("physical_cores"):
        cores += f" / {m['physical_cores']} cores"
    threads = f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}"
    mode = ", training (forward + backward)" if s.get("mode") == "training" else ""
    return f"{m['cpu']} ({cores}), {threads}, {s['dtype']}{mode}"


def format_table(report: dict[str, Any]) -> str:
    """The terminal report: machine header, one row per (shape, implementation), geometric means."""
    m, s, peers = report["machine"], report["settings"], report["peers"]
    v = m["versions"]
    lines = [
        f"gru bench: {_describe_machine(report)}; median of up to {_count(s['repeats'], 'call')}"
        f" in {_count(_rounds(s['repeats']), 'interleaved round')}, after {_count(s['warmup'], 'warm-up call')}",
        "  "
        + " · ".join(f"{k} {v[k] or '-'}" for k in ("gru", "numpy", "scipy", "torch", "onnxruntime"))
        + f" · Python {m['python']}",
    ]
    pools: dict[str, list[int]] = {}
    for pool in report.get("thread_pools") or []:
        pools.setdefault(pool["internal_api"], []).append(pool["num_threads"])
    if pools:
        capped = [
            f"{api} {'/'.join(map(str, sorted(set(n))))}" + (f" ({len(n)} libraries)" if len(n) > 1 else "")
            for api, n in pools.items()
        ]
        lines.append("  threads of the pools loaded at start (threadpoolctl): " + ", ".join(capped))
    kernels = sorted(
        {
            f"{lib.get('internal_api')} {lib.get('version')}, {lib.get('architecture')} kernels"
            for lib in m.get("thread_pools_at_start") or []
            if lib.get("user_api") == "blas"
        }
    )
    if kernels:
        forced = m.get("openblas_coretype")
        lines.append(
            "  BLAS: "
            + "; ".join(kernels)
            + (f" (OPENBLAS_CORETYPE={forced} in the environment chose them)" if forced else "")
        )
    if m.get("blas_small_kernel") is not None:
        lines.append(
            "  scipy's BLAS runs small products unpacked (OpenBLAS, SkylakeX kernels): "
            + (
                "yes, the cython backend cuts its products for it"
                if m["blas_small_kernel"]
                else "no, the cython backend makes each product whole"
            )
        )
    gemm = report.get("gemm")
    if gemm:
        lines.append(
            f"  machine {gemm['name']}: {gemm['gflops']:.1f} GFLOP/s (NumPy {gemm['n']}x{gemm['n']} matmul, median;"
            f" the better of before and after: {', '.join(f'{g:.1f}' for g in gemm.get('all_gflops', []))})"
        )
    gemm_col = f"% {gemm['name']}" if gemm else "% gemm"
    header = ["I,H,B,T", "implementation", "median ms", "n", "spread", "µs/step", "GFLOP/s", gemm_col]
    header += [f"vs {p}" for p in peers] + ["max |diff|"]
    rows = []
    for case in report["cases"]:
        load = case.get("other_load_cpus")
        labels = [case["label"], f"  other load {load:.1f}" if load is not None else ""]
        if len(case["results"]) == 1 and load is not None:
            labels = [f"{case['label']} (other load {load:.1f})"]
        for k, r in enumerate(case["results"]):
            row = [labels[k] if k < len(labels) else "", r["name"]]
            if r["status"] == "ok":
                spread = r["spread"]
                row += [
                    f"{r['median_s'] * 1e3:.3f}",
                    str(len(r["times_s"])),
                    f"{100 * spread:.0f}%" if spread < 10 else ">999%",
                    f"{r['us_per_step']:.1f}",
                    f"{r['gflops']:.2f}",
                    f"{100 * r['gemm_fraction']:.1f}%" if "gemm_fraction" in r else "-",
                ]
                row += [f"{r['speedup'][p]:.2f}x" if p in r["speedup"] else "-" for p in peers]
                row.append(f"{r['max_abs_diff']:.1e}")
            else:
                row.append(f"{r['status'].upper()}: {r.get('reason', '')}")
            rows.append(row)
    lines += ["", *_render(header, rows, right_from=2)]
    if peers and report["geomean_speedup"]:
        lines += [
            "",
            f"geometric mean speedup (peer time / implementation time) over {_count(len(report['cases']), 'shape')}:",
        ]
        g_header = ["implementation"] + [f"vs {p}" for p in peers]
        g_rows = []
        for name, per_peer in report["geomean_speedup"].items():
            g_rows.append(
                [name]
                + [f"{per_peer[p]['speedup']:.2f}x ({per_peer[p]['cases']})" if p in per_peer else "-" for p in peers]
            )
        lines += _render(g_header, g_rows, right_from=1)
        lines.append("  (n) = shapes both ran; > 1 means faster than the peer")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    bad = [
        f"{c['label']} {r['name']}: {r['reason']}"
        for c in report["cases"]
        for r in c["results"]
        if r["status"] in ("mismatch", "error")
    ]
    for b in bad:
        lines.append(f"NOT TIMED: {b}")
    load = report.get("other_load_cpus")
    if load is not None:
        busiest = max(report["cases"], key=lambda c: c.get("other_load_cpus") or 0, default=None)
        lines.append(
            f"other load: other processes kept {load:.2f} CPUs busy on average during the run"
            + (f" ({busiest['other_load_cpus']:.2f} during {busiest['label']})" if busiest else "")
        )
        cpus = report["machine"]["usable_cpus"]
        if s["threads"] > cpus:
            lines.append(
                f"WARNING: {_count(s['threads'], 'thread')} on {_count(cpus, 'CPU')} this process may use: threads "
                "take turns on the CPUs, and every timing (the GEMM yardstick too) measures that; use --threads "
                f"{cpus} or fewer"
            )
        elif _too_busy(report):
            n = s["threads"]
            lines.append(
                f"WARNING: the machine was busy: {_count(n, 'thread')} did not have {_count(n, 'idle CPU')}, so"
                " timings (multi-threaded ones most) are inflated and ratios unreliable; rerun when it is idle,"
                " or with --threads no more than the idle CPUs"
            )
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ratio_between_decades(y: float, _position: int) -> str:
    """Label of a minor tick of the log-scaled speedup axis: 0.2x, 0.5x, 2x, 5x, ...; the others unlabelled."""
    if y <= 0:
        return ""
    leading = y / 10 ** math.floor(math.log10(y) + 1e-9)
    return f"{y:g}x" if round(leading, 6) in (2, 5) else ""


def _too_busy(report: dict[str, Any]) -> bool:
    """Whether other processes left fewer idle CPUs than the threads asked for, overall or during one shape."""
    loads = [report.get("other_load_cpus")] + [c.get("other_load_cpus") for c in report["cases"]]
    peak = max((v for v in loads if v is not None), default=0.0)
    threads, cpus = report["settings"]["threads"], report["machine"]["usable_cpus"]
    # more threads than CPUs is warned about on its own: only the CPUs the threads can have count here
    return peak > BUSY_LOAD_CPUS and peak + min(threads, cpus) > cpus + BUSY_LOAD_CPUS


def _spread(times: Sequence[float]) -> float:
    """Interquartile range over median: how noisy an implementation's timed calls were."""
    if len(times) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / median


def _render(header: list[str], rows: list[list[str]], right_from: int) -> list[str]:
    """Align columns; a row shorter than the header ends in a free-text cell spanning the rest."""
    widths = [len(h) for h in header]
    for row in rows:
        if len(row) == len(header):
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def fmt(row: list[str]) -> str:
        cells = [
            (c.rjust(w) if k >= right_from else c.ljust(w)) if k < len(row) - 1 or len(row) == len(header) else c
            for k, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        return "  ".join(cells).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(r) for r in rows]
    return out


def _why_no_speedup(report: dict[str, Any], names: list[str]) -> str:
    """The GFLOP/s panel's reason: no peer asked for, none could run, or nothing but the peer to compare."""
    if report["peers"]:
        return f"nothing to compare {', '.join(names)} with"
    if any(i["kind"] == "peer" for i in report["implementations"]):
        return "no peer could run here; see the notes"
    return "no peer selected"


def write_plot(report: dict[str, Any], path: str) -> str | None:
    """Grouped bars of speedup vs each peer per shape (log scale); returns None or why nothing was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "matplotlib is not installed: pip install matplotlib"
    peers, cases = report["peers"], report["cases"]
    labels = [f"I={c['shape']['I']} H={c['shape']['H']}\nB={c['shape']['B']} T={c['shape']['T']}" for c in cases]
    timed = {r["name"] for c in cases for r in c["results"] if r["status"] == "ok"}
    if not timed:
        return "nothing was timed"
    names = [i["name"] for i in report["implementations"] if i["name"] in timed]
    color = {name: plt.get_cmap("tab10")(k % 10) for k, name in enumerate(names)}  # the same in every panel
    panels: list[tuple[str, str | None]] = [
        (f"speedup vs {p} (= {p} time / time; > 1 is faster)", p) for p in peers if timed - {p}
    ]
    if not panels:
        panels = [(f"GFLOP/s ({_why_no_speedup(report, names)})", None)]
    fig_width = max(8, 1.9 * len(cases) + 3)
    fig, axes = plt.subplots(len(panels), 1, figsize=(fig_width, 4.2 * len(panels)), squeeze=False)
    for ax, (title, peer) in zip(axes[:, 0], panels, strict=True):
        shown = [n for n in names if n != peer]
        width = 0.8 / max(len(shown), 1)
        finite: list[float] = []
        for k, name in enumerate(shown):
            values = []
            for c in cases:
                r = next((r for r in c["results"] if r["name"] == name), None)
                if r is None or r["status"] != "ok" or (peer and peer not in r["speedup"]):
                    values.append(np.nan)
                else:
                    values.append(r["speedup"][peer] if peer else r["gflops"])
            finite += [v for v in values if np.isfinite(v)]
            is_peer = name in peers
            bars = ax.bar(
                np.arange(len(cases)) + (k - (len(shown) - 1) / 2) * width,
                values,
                width,
                label=name + (" (peer)" if is_peer else ""),
                color=color[name],
                hatch="//" if is_peer else None,
                edgecolor="white" if is_peer else None,
            )
            for bar, value in zip(bars, values, strict=True):
                if np.isfinite(value):
                    ax.annotate(
                        f"{value:.2f}x" if peer else f"{value:.1f}",
                        (bar.get_x() + bar.get_width() / 2, value),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
        ax.set_yscale("log")
        if peer:
            ax.axhline(1.0, color="black", linewidth=0.8)
            finite.append(1.0)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}x"))
            ax.yaxis.set_minor_formatter(FuncFormatter(_ratio_between_decades))
        if finite:
            ax.set_ylim(min(finite) / 1.5, max(finite) * 1.8)  # room for the labels above the bars
        ax.set_xticks(np.arange(len(cases)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", ncols=len(shown))
    v, s = report["machine"]["versions"], report["settings"]
    load = report.get("other_load_cpus")
    busy = f" · BUSY MACHINE: other processes used {load:.1f} CPUs" if _too_busy(report) else ""
    lines = [
        f"gru {v['gru']} CPU benchmark: {_describe_machine(report)}",
        f"numpy {v['numpy']} · torch {v['torch'] or '-'} · onnxruntime {v['onnxruntime'] or '-'} · "
        f"median of up to {_count(s['repeats'], 'call')}{busy}",
    ]
    # about 12 characters of 10-point text per inch: wrapped, the title stays inside the figure
    fig.suptitle("\n".join(textwrap.fill(line, int(fig_width * 12)) for line in lines), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


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
    set_thread_environment(threads)  # before the first torch/onnxruntime/backend load picks up its pool size
    try:
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
    from gru._layers import _memory_bytes

    memory = _memory_bytes()
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
    """``python -m gru.bench`` / ``benchmarks/cpu.py`` entry point."""
    parser = argparse.ArgumentParser(
        prog="gru bench",
        description="Time the package's CPU backends against torch.nn.GRU and ONNX Runtime's GRU.",
    )
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
