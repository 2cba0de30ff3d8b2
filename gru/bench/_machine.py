"""The machine beside every number: CPUs, threads, BLAS, the GEMM yardstick and other processes' load."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import numpy as np

import gru
from gru.bench._cases import _THREAD_ENV


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
def thread_environment(threads: int) -> Iterator[None]:
    """set_thread_environment for the duration: afterwards the variables and the thread counts of the pools
    loaded on entry are as they were, so that a run inside a longer process (a test, a notebook) leaves no trace.

    Torch, loaded while OMP_NUM_THREADS is set, sets the calling thread's OpenMP count from it, in the OpenMP
    runtime the Cython backend shares: without this, a later call of that backend took the run's thread count.
    """
    saved = {var: os.environ.get(var) for var in _THREAD_ENV}
    try:
        from threadpoolctl import threadpool_limits

        pools = threadpool_limits(limits=None)  # changes nothing: records the pools' counts to restore
    except ImportError:
        pools = None
    set_thread_environment(threads)
    try:
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        if pools is not None:
            pools.restore_original_limits()


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


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


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
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
        elif not key:  # blank line: end of one logical CPU
            if core is not None:
                cores.add((physical or "0", core))
            physical = core = None
    present = cpu_flags()
    if present:
        info["flags"] = [flag for flag in SIMD_FLAGS if flag in present]
    info["physical_cores"] = len(cores) or None
    return info


def _blas_small_kernel() -> bool | None:
    """Whether scipy's BLAS has the small-matrix kernel the cython backend cuts its products for (None: unknown)."""
    try:
        from gru.backends.cython.backend import blas_has_small_kernel

        return blas_has_small_kernel()
    except Exception:  # no scipy or threadpoolctl: the report says nothing about it
        return None


def _cython_kernels() -> dict[str, Any] | None:
    """How the cython backend's kernels were built: their vector instruction set, the one their gate pass runs on
    here, and OpenMP (None: not built)."""
    try:
        from gru.backends.cython import _kernels
    except ImportError:
        return None
    return {
        "vector_isa": _kernels.vector_isa(),
        "gate_pass_isa": _kernels.gate_pass_isa(),
        "openmp": _kernels.has_openmp(),
    }


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
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
        "cython_kernels": _cython_kernels(),
        # OpenBLAS picks its kernels for the CPU unless this names others (read when it loads)
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        # ... and takes this for its L2 size (kB) instead of asking the CPU
        "openblas_l2_size": os.environ.get("OPENBLAS_L2_SIZE"),
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


def measure_barrier(threads: int, rounds: int = 5000) -> float | None:
    """Nanoseconds ``threads`` threads take to pass one barrier of the Cython kernels (median of 3), or None.

    A layer split by unit pays it at every step. On a shared VM it swings from
    tens to hundreds of nanoseconds as the vCPUs are placed near or far apart
    on the host, and the multi-threaded timings of small layers swing with it:
    each shape's figure lets a reader tell the phase a run was in. None with
    one thread, without the compiled extension or its OpenMP, or when OpenMP
    starts fewer threads (a thread limit).
    """
    if threads < 2:
        return None
    try:
        from gru.backends.cython import _kernels
    except ImportError:
        return None
    if not _kernels.has_openmp():
        return None
    try:
        return statistics.median(_kernels.barrier_seconds(threads, rounds) for _ in range(3)) * 1e9
    except RuntimeError:  # OpenMP gave a smaller team
        return None


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
