"""The CuPy GPU backend: everything that can be checked without a GPU, and the GPU checks where there is one.

Without a GPU (CI):

* the backend reports itself unavailable, with the reason (CuPy missing, no device, driver error);
* every ``.cu`` file compiles with ``nvcc`` for sm_80 and sm_90 with no register spills, and with
  NVRTC exactly as CuPy compiles it (name expressions included) where the NVRTC library is installed;
* the whole backend (path rule, weight packing, launch arguments, both kernels) runs on a CPU
  emulation of the CUDA execution model (``tests/cupy_emulation``) against the float64 oracle, on the
  conformance suite's own tests and on shapes chosen to stress the kernels' corner cases;
* the registry dispatches NumPy input to a backend that accepts host arrays when it is named.

With a GPU (``benchmarks/gpu_check.sh`` runs this file there): CuPy arrays in and out, both paths
against the oracle, the fallback for weights that do not fit on chip, and agreement with cuDNN.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import gru
from gru import _registry
from gru.backends import Backend, Capabilities, ForwardResult
from gru.backends.cupy import CupyBackend, _kernels, _plans
from gru.backends.cupy._plans import (
    PATH_ENV_VAR,
    PersistentPlan,
    ResidentPlan,
    choose_path,
    plan_persistent,
    plan_resident,
)
from gru.testing import test_forward, test_golden, test_layouts
from gru.testing._support import oracle_for

EMULATION_DIR = Path(__file__).parent / "cupy_emulation"
ARCHES = ("sm_80", "sm_90")
EMULATED = "cupy-emulated"


def _load_emulation():
    spec = importlib.util.spec_from_file_location("gru_cupy_emulation", EMULATION_DIR / "emulated_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


emulation = _load_emulation()


def _gpu_reason() -> str | None:
    verdict = CupyBackend().available()
    return None if verdict is True else verdict


GPU_REASON = _gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"no usable GPU: {GPU_REASON}")


@pytest.fixture(autouse=True)
def fresh_registry():
    yield
    _registry.refresh()


# -- availability ----------------------------------------------------------------------------


class _FakeRuntime:
    def __init__(self, count=0, error=None):
        self.count, self.error = count, error

    def getDeviceCount(self):
        if self.error:
            raise self.error
        return self.count


def _fake_cupy(count=0, error=None, capability="90"):
    class Device:
        def __init__(self, index=0):
            self.compute_capability = capability

    cupy = type(sys)("cupy")
    cupy.cuda = type(sys)("cupy.cuda")
    cupy.cuda.runtime = _FakeRuntime(count, error)
    cupy.cuda.Device = Device
    return cupy


def test_unavailable_without_cupy_says_so_and_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    reason = CupyBackend().available()
    assert isinstance(reason, str)
    assert "CuPy is not installed" in reason
    assert "gru[cuda12]" in reason


@pytest.mark.parametrize(
    ("fake", "expected"),
    [
        (_fake_cupy(count=0), "CuPy sees no CUDA device"),
        (_fake_cupy(error=RuntimeError("cudaErrorInsufficientDriver")), "cudaErrorInsufficientDriver"),
        (_fake_cupy(count=1, capability="61"), "compute capability 6.x"),
    ],
    ids=["no-device", "driver-error", "too-old"],
)
def test_unavailable_reasons_without_a_usable_gpu(monkeypatch, fake, expected):
    monkeypatch.setitem(sys.modules, "cupy", fake)
    reason = CupyBackend().available()
    assert isinstance(reason, str) and expected in reason


def test_available_with_a_usable_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count=1, capability="90"))
    assert CupyBackend().available() is True


def test_on_this_machine_the_registry_reports_the_reason():
    """The real check, wherever the tests run: listed (once installed), and unavailable with a reason without a GPU."""
    rows = {info.name: info for info in gru.list_backends()}
    if "cupy" not in rows:
        pytest.skip("the cupy entry point is not installed yet (reinstall gru)")
    info = rows["cupy"]
    assert info.capabilities.device == "cuda"
    assert info.capabilities.training is False
    if GPU_REASON is None:
        assert info.available
    else:
        assert not info.available and info.reason == GPU_REASON
        with pytest.raises(gru.BackendUnavailableError, match="backend 'cupy' is unavailable"):
            gru.GRU(3, 4, backend="cupy")(np.zeros((2, 1, 3), "float32"))


def test_importing_the_backend_does_not_import_cupy():
    code = "import sys, gru.backends.cupy; print('cupy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# -- the registry: host arrays for device backends ---------------------------------------------


class HostFriendlyGpu(Backend):
    """A 'cuda' backend that computes on NumPy (stands in for one that copies host arrays over)."""

    def __init__(self, accepts_host_arrays: bool, priority: int = 1000):
        self.capabilities = Capabilities(device="cuda", priority=priority, accepts_host_arrays=accepts_host_arrays)
        self.calls = 0

    def forward(self, request):
        self.calls += 1
        return gru.get_backend("numpy").forward(request)


def test_named_device_backend_that_accepts_host_arrays_takes_numpy_input():
    gpu = gru.register_backend("gpu", HostFriendlyGpu(accepts_host_arrays=True))
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype("float32")
    layer = gru.GRU(3, 4, seed=0)
    expected, _ = layer(x, backend="numpy")
    output, _ = layer(x, backend="gpu")
    np.testing.assert_array_equal(output, expected)
    assert gpu.calls == 1


def test_auto_never_sends_host_input_to_a_device_backend():
    gpu = gru.register_backend("gpu", HostFriendlyGpu(accepts_host_arrays=True, priority=10**6))
    gru.GRU(3, 4, seed=0)(np.zeros((5, 2, 3), "float32"))
    assert gpu.calls == 0


def test_named_device_backend_without_the_flag_still_refuses_host_input():
    gru.register_backend("gpu", HostFriendlyGpu(accepts_host_arrays=False))
    with pytest.raises(gru.UnsupportedRequestError, match="runs on cuda but the input is on cpu"):
        gru.GRU(3, 4, seed=0, backend="gpu")(np.zeros((5, 2, 3), "float32"))


def test_the_cupy_backend_declares_what_it_does():
    caps = CupyBackend.capabilities
    assert caps.device == "cuda" and caps.accepts_host_arrays
    assert caps.training is False  # forward only, for now
    assert caps.priority > gru.get_backend("numpy").capabilities.priority
    assert caps.dtypes == frozenset({"float32", "float64"})
    assert caps.reset_after and caps.reset_before and caps.lengths and caps.gates


# -- the path rule ------------------------------------------------------------------------------


class PlanDevice:
    """Just the numbers the planner reads, like an H100 (132 SMs, 227 KiB per block, 50 MiB of L2) by default."""

    def __init__(
        self, sm_count=132, smem_per_block=232448, blocks_per_sm=1, cooperative_launch=True, l2_bytes=50 << 20
    ):
        self.sm_count, self.smem_per_block, self.l2_bytes = sm_count, smem_per_block, l2_bytes
        self.blocks_per_sm, self.cooperative_launch = blocks_per_sm, cooperative_launch

    def max_active_blocks(self, name, threads, shared_mem):
        return self.blocks_per_sm if shared_mem <= self.smem_per_block else 0


def plan(device=None, *, H, B, D=1, dtype="float32", reset_after=True, **kwargs):
    return plan_persistent(
        device or PlanDevice(), hidden_size=H, batch=B, directions=D, dtype=dtype, reset_after=reset_after, **kwargs
    )


@pytest.mark.parametrize(
    ("shape", "path", "on_chip"),
    [
        ((128, 128, 1, 1000), "persistent", True),
        ((1024, 1024, 1, 1500), "persistent", True),
        ((2816, 2816, 1, 375), "persistent", False),  # 95 MB of weights: part read from L2/HBM every step
        ((2048, 2048, 32, 375), _plans.LARGE_BATCH_PATH, None),
        ((512, 512, 256, 100), _plans.LARGE_BATCH_PATH, None),
    ],
)
def test_the_benchmark_shapes_take_the_documented_paths_on_an_h100(shape, path, on_chip):
    _, H, B, _ = shape
    p = plan(H=H, B=B) if B <= _plans.PERSISTENT_MAX_BATCH_ON_CHIP else None
    assert choose_path(B, p) == path
    if path == "persistent":
        assert isinstance(p, PersistentPlan)
        assert p.on_chip is on_chip
        assert p.blocks <= 132 and p.blocks * p.units >= H > (p.blocks - 1) * p.units
        assert p.shared_mem <= 232448


def test_plan_spreads_units_and_caches_what_fits():
    p = plan(H=1024, B=1)
    assert (p.blocks, p.units, p.cached_rows, p.rows) == (128, 8, 24, 24)
    assert p.shared_mem == (24 * 1024 + 1024 + 24) * 4
    bi = plan(H=1024, B=1, D=2)  # two directions share the multiprocessors
    assert bi.blocks == 64 and bi.units == 16
    big = plan(H=2816, B=1)
    assert big.units == 22 and big.cached_rows < big.rows
    assert big.shared_mem <= 232448 < big.shared_mem + 2816 * 4  # as many rows as fit
    assert p.l2_rows == 0  # everything on chip: nothing to keep in L2
    row_bytes = 2816 * 4
    kept = big.l2_rows * row_bytes * big.blocks  # over all blocks
    assert 0 < kept <= _plans.PERSISTENT_L2_FRACTION * (50 << 20) < kept + row_bytes * big.blocks
    assert big.cached_rows + big.l2_rows < big.rows  # the rest streams
    assert plan(H=2816, B=1, l2_fraction=0).l2_rows == 0
    assert plan(H=2816, B=1, l2_fraction=1e9).l2_rows == big.rows - big.cached_rows


def test_plan_says_why_when_the_persistent_kernel_cannot_run():
    assert "cooperative" in plan(PlanDevice(cooperative_launch=False), H=64, B=1)
    assert "shared memory" in plan(PlanDevice(smem_per_block=1024), H=4096, B=8)
    assert "resident" in plan(PlanDevice(blocks_per_sm=0), H=64, B=1)


def test_choose_path_rule_and_overrides():
    p = plan(H=64, B=4)
    assert choose_path(4, p) == "persistent"
    assert p.on_chip
    assert choose_path(_plans.PERSISTENT_MAX_BATCH_ON_CHIP, p) == "persistent"
    assert choose_path(_plans.PERSISTENT_MAX_BATCH_ON_CHIP + 1, p) == _plans.LARGE_BATCH_PATH
    partly = plan(H=2816, B=4)
    assert not partly.on_chip
    assert choose_path(_plans.PERSISTENT_MAX_BATCH, partly) == "persistent"
    assert choose_path(_plans.PERSISTENT_MAX_BATCH + 1, partly) == _plans.LARGE_BATCH_PATH
    assert choose_path(4, "no cooperative launch") == _plans.LARGE_BATCH_PATH
    assert choose_path(4, "no cooperative launch", large_batch="stepwise") == "stepwise"
    assert choose_path(4, p, "stepwise") == "stepwise"
    assert choose_path(4, p, "fused") == "fused"
    assert choose_path(64, p, "persistent") == "persistent"
    with pytest.raises(gru.UnsupportedRequestError, match="persistent kernel cannot run: nope"):
        choose_path(4, "nope", "persistent")
    with pytest.raises(ValueError, match=PATH_ENV_VAR):
        choose_path(4, p, "fastest")


@pytest.mark.parametrize(
    ("H", "dtype", "chunk", "lanes", "threads"),
    [
        (1, "float32", 8, 1, 32),
        (64, "float32", 8, 8, 512),  # the small chunk while its 512 threads suffice
        (65, "float32", 64, 2, 160),
        (128, "float32", 64, 2, 256),  # the largest: 3*128*128 weights, 192 registers per thread
        (32, "float64", 4, 8, 256),
        (64, "float64", 32, 2, 128),
    ],
)
def test_resident_plan_spreads_each_unit_over_the_fewest_lanes(H, dtype, chunk, lanes, threads):
    p = plan_resident(hidden_size=H, dtype=dtype, reset_after=True, elements=1000)
    assert isinstance(p, ResidentPlan)
    assert (p.chunk, p.lanes_per_unit, p.threads) == (chunk, lanes, threads)
    assert chunk * lanes >= H > chunk * lanes // 2 or lanes == 1  # no lane without columns
    assert threads <= _kernels.resident_max_threads(dtype, chunk)
    width = 16 // np.dtype(dtype).itemsize
    assert p.shared_mem == 2 * lanes * (chunk + width) * np.dtype(dtype).itemsize
    before = plan_resident(hidden_size=H, dtype=dtype, reset_after=False, elements=1000)
    assert before.shared_mem == p.shared_mem * 3 // 2  # one more copy of h: r * h_{t-1}


def test_resident_plan_says_why_it_cannot_run():
    assert "registers" in plan_resident(hidden_size=129, dtype="float32", reset_after=True, elements=10)
    assert "registers" in plan_resident(hidden_size=65, dtype="float64", reset_after=True, elements=10)
    assert "32-bit" in plan_resident(hidden_size=8, dtype="float32", reset_after=True, elements=2**31)


def test_choose_path_prefers_the_resident_kernel_where_it_fits():
    r = plan_resident(hidden_size=64, dtype="float32", reset_after=True, elements=10)
    p = plan(H=64, B=4)
    assert choose_path(4, p, resident=r) == "resident"
    assert choose_path(4096, None, resident=r) == "resident"  # any batch: blocks are independent
    assert choose_path(4, p, resident="too big") == "persistent"
    assert choose_path(4, p, "stepwise", resident=r) == "stepwise"
    assert choose_path(4, p, "persistent", resident=r) == "persistent"
    with pytest.raises(gru.UnsupportedRequestError, match="resident kernel cannot run: too big"):
        choose_path(4, p, "resident", resident="too big")


def test_shared_memory_formula_matches_the_kernel_layout():
    """The kernel recomputes the same total and refuses (sync[1]) a launch with less; see the emulated check below."""
    itemsize = 8
    got = _plans.persistent_shared_memory(
        cached_rows=5, padded=6, tile=4, units=3, batch=7, reset_after=False, itemsize=itemsize
    )
    assert got == (5 * 6 + 4 * 6 + 36 + 3 * 7) * itemsize


# -- the kernel sources -------------------------------------------------------------------------


def test_every_kernel_file_is_listed_and_self_contained():
    on_disk = {p.name for p in _kernels.KERNEL_DIR.glob("*.cu")}
    assert on_disk == {f.filename for f in _kernels.KERNEL_FILES}
    for f in _kernels.KERNEL_FILES:
        text = _kernels.source(f.filename)
        directives = [line for line in text.splitlines() if line.startswith(("#include", "#pragma once"))]
        assert directives == []  # NVRTC gets one self-contained source
        assert "namespace gru" in text  # the header was spliced in
        for name in f.names:
            assert name.split("<")[0] in text


def test_kernel_files_ship_inside_the_package():
    """scikit-build-core's wheel.packages = ["gru"] takes every file under gru/, .cu and .cuh included."""
    tomllib = pytest.importorskip("tomllib")

    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "gru" in config["tool"]["scikit-build"]["wheel"]["packages"]
    assert _kernels.KERNEL_DIR.is_relative_to(Path(gru.__file__).parent)
    assert config["project"]["entry-points"]["gru.backends"]["cupy"] == "gru.backends.cupy:CupyBackend"
    extras = config["project"]["optional-dependencies"]
    assert any(r.startswith("cupy-cuda12x") for r in extras["cuda12"])
    assert any(r.startswith("cupy-cuda13x") for r in extras["cuda13"])


# -- compiling with nvcc and NVRTC ---------------------------------------------------------------

PTXAS_ENTRY = re.compile(
    r"Compiling entry function '(?P<name>\S+)' for '(?P<arch>sm_\d+)'.*?"
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads.*?"
    r"Used (?P<registers>\d+) registers",
    re.S,
)


def ptxas_report(log: str) -> list[dict]:
    """One row per kernel: name, arch, registers, stack frame and spill bytes (from --ptxas-options=-v)."""
    return [{k: (int(v) if v.isdigit() else v) for k, v in m.groupdict().items()} for m in PTXAS_ENTRY.finditer(log)]


def instantiation_unit(kernel_file: _kernels.KernelFile) -> str:
    """The .cu file plus the address of every template instance the backend launches, so nvcc compiles them all."""
    refs = "".join(f"    (void*)&{name},\n" for name in kernel_file.names)
    return f'#include "{kernel_file.filename}"\nvoid* gru_instances[] = {{\n{refs}}};\n'


def nvcc_compile(kernel_file: _kernels.KernelFile, arch: str, workdir: Path) -> tuple[int, str]:
    source = workdir / f"{kernel_file.path.stem}_{arch}.cu"
    source.write_text(instantiation_unit(kernel_file))
    command = [
        "nvcc",
        "-std=c++17",
        f"-arch={arch}",
        "--ptxas-options=-v",
        f"-I{_kernels.KERNEL_DIR}",
        "-c",
        str(source),
        "-o",
        str(source.with_suffix(".o")),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def find_nvrtc() -> str | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel, CUDA_HOME/CUDA_PATH or the loader's path."""
    candidates = []
    for entry in sys.path:
        for sub in ("cu13", "cu12", "cuda_nvrtc"):
            candidates += glob.glob(os.path.join(entry, "nvidia", sub, "lib", "libnvrtc.so*"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates += glob.glob(os.path.join(os.environ[var], "lib64", "libnvrtc.so*"))
    candidates += glob.glob("/usr/local/cuda/lib64/libnvrtc.so*")
    candidates = [c for c in candidates if "builtins" not in c and "alt" not in os.path.basename(c)]
    if candidates:
        return sorted(candidates)[0]
    return ctypes.util.find_library("nvrtc")


def nvrtc_compile(library: str, kernel_file: _kernels.KernelFile, arch: str) -> tuple[int, str, dict[str, str]]:
    """Compile the runtime source exactly as CuPy does (name expressions), for ``arch``, with ptxas's report."""
    nvrtc = ctypes.CDLL(library)
    program = ctypes.c_void_p()
    status = nvrtc.nvrtcCreateProgram(
        ctypes.byref(program),
        _kernels.source(kernel_file.filename).encode(),
        kernel_file.filename.encode(),
        0,
        None,
        None,
    )
    assert status == 0, f"nvrtcCreateProgram: {status}"
    try:
        for name in kernel_file.names:
            assert nvrtc.nvrtcAddNameExpression(program, name.encode()) == 0
        options = [*_kernels.NVRTC_OPTIONS, f"--gpu-architecture={arch}", "-ftz=true", "--ptxas-options=-v"]
        encoded = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = nvrtc.nvrtcCompileProgram(program, len(options), encoded)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        lowered = {}
        if status == 0:
            for name in kernel_file.names:
                mangled = ctypes.c_char_p()
                if nvrtc.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(mangled)) == 0:
                    lowered[name] = mangled.value.decode()
        return status, log.value.decode(errors="replace"), lowered
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every (file, arch) through nvcc and, where present, NVRTC, concurrently (the test stays well under a minute)."""
    workdir = tmp_path_factory.mktemp("nvcc")
    nvrtc = find_nvrtc()
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for f in _kernels.KERNEL_FILES:
            for arch in ARCHES:
                if shutil.which("nvcc"):
                    jobs["nvcc", f.filename, arch] = pool.submit(nvcc_compile, f, arch, workdir)
                if nvrtc:
                    jobs["nvrtc", f.filename, arch] = pool.submit(nvrtc_compile, nvrtc, f, arch)
        return {key: job.result() for key, job in jobs.items()}


def _check_ptxas(log: str, kernel_file: _kernels.KernelFile, arch: str) -> None:
    report = ptxas_report(log)
    assert len(report) == len(kernel_file.names), f"ptxas reported {len(report)} kernels:\n{log}"
    for row in report:
        assert row["arch"] == arch
        assert row["stores"] == 0 and row["loads"] == 0, f"register spills in {row['name']} for {arch}: {row}"
        assert row["stack"] == 0, f"local memory (stack frame) in {row['name']} for {arch}: {row}"
        assert row["registers"] <= 255


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("kernel_file", _kernels.KERNEL_FILES, ids=lambda f: f.filename)
def test_nvcc_compiles_without_errors_warnings_or_spills(compiled, kernel_file, arch):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed")
    status, log = compiled["nvcc", kernel_file.filename, arch]
    assert status == 0, log
    assert "warning" not in log.lower(), log
    _check_ptxas(log, kernel_file, arch)


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("kernel_file", _kernels.KERNEL_FILES, ids=lambda f: f.filename)
def test_nvrtc_compiles_the_runtime_source_as_cupy_does(compiled, kernel_file, arch):
    if find_nvrtc() is None:
        pytest.skip("no NVRTC library (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)")
    status, log, lowered = compiled["nvrtc", kernel_file.filename, arch]
    assert status == 0, log
    assert "warning" not in log.lower(), log
    assert set(lowered) == set(kernel_file.names), "every name expression must resolve to a kernel"
    _check_ptxas(log, kernel_file, arch)


# -- the backend on the CPU emulation -------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator_library():
    try:
        return emulation.build_library(Path(tempfile.gettempdir()) / "gru-cupy-emulation")
    except emulation.EmulationUnavailableError as exc:
        pytest.skip(f"the CUDA emulation cannot be built here: {exc}")


@pytest.fixture(params=["resident", "persistent", "fused", "stepwise"])
def path(request, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, request.param)
    return request.param


def emulated_backend(lib, threads: int = 64, min_units: int | None = None, **device_options) -> CupyBackend:
    device = emulation.EmulatedDevice(lib, **device_options)
    backend = CupyBackend(device_factory=lambda: device)
    backend.persistent_threads = threads
    if min_units is not None:
        backend.persistent_min_units = min_units
    backend.device = device  # for the tests' inspection
    return backend


@pytest.fixture
def emulated(emulator_library, path) -> str:
    gru.register_backend(EMULATED, emulated_backend(emulator_library), replace=True)
    return EMULATED


def test_the_emulation_has_every_kernel_the_backend_launches(emulator_library):
    for f in _kernels.KERNEL_FILES:
        for name in f.names:
            assert emulator_library.emu_has(name.encode()) == 1, name


# A covering subset of the conformance suite's parameter grid (the whole suite runs on the emulation
# with tests/cupy_emulation/conformance_plugin.py; it takes minutes).
MATCHES_ORACLE_CASES = [
    # dtype, bias, bidirectional, num_layers, reset_after, lengths, with_h0, batch_first
    ("float32", True, False, 1, True, None, False, False),
    ("float64", False, True, 2, False, test_forward.MIXED_LENGTHS, True, True),
    ("float32", True, True, 3, False, test_forward.MIXED_LENGTHS, True, False),
    ("float64", True, False, 2, True, test_forward.MIXED_LENGTHS, False, True),
    ("float32", False, True, 1, True, test_forward.MIXED_LENGTHS, True, True),
    ("float64", True, True, 3, True, None, True, False),
    ("float32", True, False, 3, False, None, True, True),
    ("float64", False, False, 1, False, None, False, False),
]


@pytest.mark.parametrize("case", MATCHES_ORACLE_CASES)
def test_conformance_matches_oracle(emulated, case):
    test_forward.test_matches_oracle(emulated, *case)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conformance_other_forward_checks(emulated, dtype):
    for reset_after in (True, False):
        test_forward.test_without_gates_gives_the_same_answer(emulated, dtype, reset_after)
    test_forward.test_lengths_zero_keeps_h0_and_zero_output(emulated, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conformance_layouts(emulated, dtype):
    for bidirectional in (False, True):
        test_layouts.test_unbatched_input(emulated, dtype, bidirectional)
    test_layouts.test_unbatched_with_a_length(emulated, dtype)
    for shape in [(0, 3), (5, 0), (0, 0)]:
        test_layouts.test_empty_sequences_and_batches(emulated, dtype, shape, batch_first=True)
    for layout in ("fortran", "strided", "transposed"):
        test_layouts.test_memory_layout_does_not_change_the_answer(emulated, dtype, layout)
    test_layouts.test_repeated_calls_are_identical(emulated, dtype)
    for reset_after in (True, False):
        test_layouts.test_cell_matches_one_oracle_step(emulated, dtype, reset_after, batched=True)
    test_layouts.test_cell_matches_one_oracle_step(emulated, dtype, True, batched=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conformance_golden_pytorch_values(emulated, dtype):
    for golden in test_golden.GOLDEN:
        test_golden.test_backend_matches_pytorch(emulated, golden, dtype)


# Shapes that stress the kernels: many blocks, weight rows partly or wholly read from global memory,
# several batch tiles, dot products longer than one pass of a warp, tiny blocks.
STRESS_CASES = [
    # H, B, threads, min_units, shared memory per block, multiprocessors, L2 bytes
    pytest.param(5, 1, 32, 1, 48 * 1024, 8, 50 << 20, id="3-blocks-1-warp"),
    pytest.param(5, 3, 64, 2, 48 * 1024, 8, 50 << 20, id="tile-of-4"),
    pytest.param(37, 9, 64, 4, 2000, 16, 50 << 20, id="2-tiles-few-rows-cached"),
    pytest.param(37, 9, 64, 4, 2000, 16, 16000, id="2-tiles-some-rows-kept-in-L2"),
    pytest.param(130, 2, 64, 40, 48 * 1024, 4, 50 << 20, id="long-rows-partly-cached"),
    pytest.param(13, 5, 32, 1, 700, 32, 50 << 20, id="13-blocks-1-unit-each"),
]


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize(("H", "B", "threads", "min_units", "smem", "sms", "l2"), STRESS_CASES)
def test_persistent_kernel_stress(emulator_library, monkeypatch, H, B, threads, min_units, smem, sms, l2, reset_after):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library, threads, min_units, smem_per_block=smem, sm_count=sms, l2_bytes=l2)
    rng = np.random.default_rng(H * 100 + B)
    T = 5
    layer = gru.GRU(4, H, 2, bidirectional=True, reset_after=reset_after, dtype="float32", backend=backend, seed=rng)
    x = rng.standard_normal((T, B, 4)).astype("float32")
    h0 = rng.standard_normal((4, B, H)).astype("float32")
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    output, h_n, gates = layer(x, h0, lengths, return_gates=True)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=1e-5)
    for g, name in enumerate("rzn"):
        np.testing.assert_allclose(getattr(gates, name), expected_gates[:, g], rtol=0, atol=1e-5)
    assert backend.last_paths == ("persistent", "persistent")
    p = plan(backend.device, H=H, B=B, D=2, reset_after=reset_after, threads=threads, min_units=min_units)
    assert isinstance(p, PersistentPlan)
    if l2 < 1 << 20:  # the uncached rows split into ones kept in L2 and ones streamed
        assert 0 < p.l2_rows < p.rows - p.cached_rows
    launched = [launch for launch in backend.device.launches if launch[0].startswith("gru_persistent")]
    assert launched[-1] == (p.kernel, (1, p.blocks, 2), (threads,), p.shared_mem)


RESIDENT_STRESS_CASES = [
    # H, dtype: every chunk size, lanes from 1 to 32, a last chunk partly past H, H not a multiple of 32
    pytest.param(1, "float32", id="1-unit"),
    pytest.param(37, "float32", id="37-units-8-lanes"),
    pytest.param(64, "float32", id="64-units-512-threads"),
    pytest.param(100, "float32", id="100-units-chunk-64"),
    pytest.param(128, "float32", id="128-units-largest"),
    pytest.param(3, "float64", id="double-3-units"),
    pytest.param(33, "float64", id="double-33-units-chunk-32"),
    pytest.param(64, "float64", id="double-64-units"),
]


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize(("H", "dtype"), RESIDENT_STRESS_CASES)
def test_resident_kernel_stress(emulator_library, monkeypatch, H, dtype, reset_after):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)  # auto takes the resident kernel at these sizes
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(H * 10 + reset_after)
    T, B = 5, 3
    layer = gru.GRU(4, H, 2, bidirectional=True, reset_after=reset_after, dtype=dtype, backend=backend, seed=rng)
    x = rng.standard_normal((T, B, 4)).astype(dtype)
    h0 = rng.standard_normal((4, B, H)).astype(dtype)
    lengths = np.array([T, 0, 2])
    output, h_n, gates = layer(x, h0, lengths, return_gates=True)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=tol)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=tol)
    for g, name in enumerate("rzn"):
        np.testing.assert_allclose(getattr(gates, name), expected_gates[:, g], rtol=0, atol=tol)
    assert backend.last_paths == ("resident", "resident")
    p = plan_resident(hidden_size=H, dtype=dtype, reset_after=reset_after, elements=T * B * 2 * 3 * H)
    launched = [launch for launch in backend.device.launches if launch[0].startswith("gru_resident")]
    assert launched[-1] == (p.kernel, (B, 2, 1), (p.threads,), p.shared_mem)


FUSED_STRESS_CASES = [
    # H, B, dtype: every tile, unit blocks and product tiles cut short, several sequence blocks
    pytest.param(5, 3, "float32", id="16x32-tile-one-short-unit-block"),
    pytest.param(37, 50, "float32", id="16x64-tile-2-product-tiles"),
    pytest.param(37, 130, "float32", id="8x128-tile-2-sequence-blocks"),
    pytest.param(40, 7, "float64", id="double-3-product-tiles"),
    pytest.param(9, 129, "float64", id="double-8x128-tile"),
]


def test_fused_tile_covers_the_batch_with_the_fewest_idle_lanes():
    assert [_kernels.fused_tile_shape(*_kernels.fused_tile(b)) for b in (1, 32, 33, 64, 65, 256)] == [
        (16, 32),
        (16, 32),
        (16, 64),
        (16, 64),
        (8, 128),
        (8, 128),
    ]
    for tile in _kernels.FUSED_TILES:  # every tile is whole warps: 4 units x 32 * SPL sequences each
        units, seqs = _kernels.fused_tile_shape(*tile)
        assert units * seqs == 4 * 32 * tile[1] * _kernels.FUSED_THREADS // 32


@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize(("H", "B", "dtype"), FUSED_STRESS_CASES)
def test_fused_kernel_stress(emulator_library, monkeypatch, H, B, dtype, reset_after):
    monkeypatch.setenv(PATH_ENV_VAR, "fused")
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(H * 1000 + B)
    T = 4
    layer = gru.GRU(3, H, 2, bidirectional=True, reset_after=reset_after, dtype=dtype, backend=backend, seed=rng)
    x = rng.standard_normal((T, B, 3)).astype(dtype)
    h0 = rng.standard_normal((4, B, H)).astype(dtype)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    output, h_n, gates = layer(x, h0, lengths, return_gates=True)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=tol)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=tol)
    for g, name in enumerate("rzn"):
        np.testing.assert_allclose(getattr(gates, name), expected_gates[:, g], rtol=0, atol=tol)
    assert backend.last_paths == ("fused", "fused")
    launched = {launch[0] for launch in backend.device.launches}
    tile = _kernels.fused_tile(B)
    expected = {_kernels.fused_name(dtype, g, tile) for g in ((3,) if reset_after else (2, 1))}
    assert expected <= launched and not any(name.startswith("gru_step_") for name in launched - expected)


def test_auto_takes_the_persistent_kernel_where_the_resident_one_does_not_fit(emulator_library, monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(2, 65, dtype="float64", backend=backend, seed=0)  # 65 double units: too many registers
    x = np.random.default_rng(7).standard_normal((3, 2, 2))
    output, _ = layer(x)
    np.testing.assert_allclose(output, oracle_for(layer, x)[0], rtol=0, atol=1e-12)
    assert backend.last_paths == ("persistent",)


def test_auto_path_follows_the_batch_rule(emulator_library, monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    backend = emulated_backend(emulator_library)
    backend.persistent_max_batch = backend.persistent_max_batch_on_chip = 3
    backend.use_resident = False
    layer = gru.GRU(3, 6, 2, dtype="float64", backend=backend, seed=0)
    rng = np.random.default_rng(1)
    for batch, path in ((3, "persistent"), (4, _plans.LARGE_BATCH_PATH)):
        x = rng.standard_normal((4, batch, 3))
        output, _ = layer(x)
        np.testing.assert_allclose(output, oracle_for(layer, x)[0], rtol=0, atol=1e-12)
        assert backend.last_paths == (path, path)


def test_auto_falls_back_to_stepwise_when_the_grid_cannot_be_resident(emulator_library, monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    backend = emulated_backend(emulator_library, blocks_per_sm=0)
    backend.use_resident = False
    layer = gru.GRU(3, 6, dtype="float64", backend=backend, seed=0)
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    output, _ = layer(x)
    np.testing.assert_allclose(output, oracle_for(layer, x)[0], rtol=0, atol=1e-12)
    assert backend.last_paths == (_plans.LARGE_BATCH_PATH,)


def test_forced_persistent_path_that_cannot_run_says_why(emulator_library, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library, cooperative_launch=False)
    with pytest.raises(gru.UnsupportedRequestError, match="cannot launch cooperative kernels"):
        gru.GRU(3, 6, dtype="float64", backend=backend, seed=0)(np.zeros((4, 2, 3)))


def test_persistent_kernel_refuses_too_little_shared_memory(emulator_library):
    """A launch whose layout would not fit returns from every block (no barrier left waiting) and reports the need."""
    device = emulation.EmulatedDevice(emulator_library)
    H, B, D, T = 8, 1, 1, 3
    p = plan(device, H=H, B=B, D=D, dtype="float32", threads=32, min_units=4)
    f32, i32 = np.float32, np.int32
    sync = np.zeros(2, np.uint32)
    out = np.zeros((T, B, D * H), f32)
    args = (
        np.ones((T, B, D, 3 * H), f32),
        np.ones((D, 3 * H, p.padded_hidden), f32),
        np.zeros((D, H), f32),
        np.full(B, T, np.int32),
        np.zeros((2, D, B, p.padded_hidden), f32),
        np.zeros(1, f32),
        out,
        np.zeros(1, f32),
        sync,
        *(i32(v) for v in (0, T, T, B, H, p.padded_hidden, D, p.units, p.cached_rows, 0, p.shared_mem - 4)),
    )
    device.launch(p.kernel, (1, p.blocks, D), (32,), args, shared_mem=p.shared_mem, cooperative=True)
    assert sync[1] == p.shared_mem
    assert not out.any()


def test_numpy_in_numpy_out_and_weights_packed_once(emulator_library, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 6, 2, bidirectional=True, dtype="float32", backend=backend, seed=0)
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype("float32")
    first = layer(x)
    second = layer(x)
    assert all(type(a) is np.ndarray for a in (*first, *second))
    np.testing.assert_array_equal(first[0], second[0])
    assert sum(len(v) for v in backend._packed.values()) == 2  # one packing per layer, reused by the second call
    layer.load_state_dict(layer.state_dict())  # new parameters: new LayerWeights, new packing
    layer(x)
    assert sum(len(v) for v in backend._packed.values()) == 2  # the old ones went with their LayerWeights


def test_a_forward_runs_one_gemm_per_layer_and_nothing_per_step_but_kernels(emulator_library, monkeypatch):
    """Persistent path: one launch per layer for all T steps; stepwise: one GEMM and one kernel per step."""
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 6, 2, bidirectional=True, dtype="float64", backend=backend, seed=0)
    x = np.random.default_rng(4).standard_normal((7, 2, 3))
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend.device.launches.clear()
    layer(x)
    assert [launch[0] for launch in backend.device.launches] == [_kernels.persistent_name("float64", 2, True)] * 2
    monkeypatch.setenv(PATH_ENV_VAR, "stepwise")
    backend.device.launches.clear()
    layer(x)
    assert [launch[0] for launch in backend.device.launches] == [
        _kernels.stepwise_name("gru_step_after", "float64")
    ] * 14


def test_gates_buffer_not_requested_is_not_allocated(emulator_library, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library)
    result = backend.forward(
        _request(gru.GRU(3, 4, dtype="float32", seed=0), np.ones((2, 1, 3), "float32"), return_gates=False)
    )
    assert isinstance(result, ForwardResult) and result.gates is None


def _request(layer: gru.GRU, x: np.ndarray, return_gates: bool):
    from gru.backends import ForwardRequest

    return ForwardRequest(
        x=x,
        h0=np.zeros((layer.num_layers * layer.num_directions, x.shape[1], layer.hidden_size), layer.dtype),
        weights=layer._layer_weights(),
        lengths=None,
        hidden_size=layer.hidden_size,
        num_layers=layer.num_layers,
        num_directions=layer.num_directions,
        reset_after=layer.reset_after,
        return_gates=return_gates,
        dtype=layer.dtype,
    )


# -- on a GPU ------------------------------------------------------------------------------------


@pytest.fixture
def cupy():
    import cupy

    return cupy


@needs_gpu
@pytest.mark.parametrize("path_name", ["resident", "persistent", "fused", "stepwise"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_cupy_arrays_in_and_out(cupy, monkeypatch, path_name, reset_after, dtype):
    monkeypatch.setenv(PATH_ENV_VAR, path_name)
    rng = np.random.default_rng(5)
    T, B, I, H = 12, 5, 24, 64
    layer = gru.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype=dtype, backend="cupy", seed=rng)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((4, B, H)).astype(dtype)
    lengths = [12, 1, 7, 0, 12]
    output, h_n, gates = layer(cupy.asarray(x), cupy.asarray(h0), lengths, return_gates=True)
    assert all(isinstance(a, cupy.ndarray) for a in (output, h_n, gates.r))
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(output.get(), expected_output, rtol=0, atol=tol)
    np.testing.assert_allclose(h_n.get(), expected_h_n, rtol=0, atol=tol)
    np.testing.assert_allclose(gates.n.get(), expected_gates[:, 2], rtol=0, atol=tol)
    assert gru.get_backend("cupy").last_paths == (path_name, path_name)


@needs_gpu
@pytest.mark.parametrize("H", [1024, 1536])
def test_gpu_persistent_kernel_on_chip_and_fallback_rows(monkeypatch, H):
    """H=1024 keeps every weight in shared memory; 1536 (float64, one direction per SM) reads part from L2."""
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    dtype = "float32" if H == 1024 else "float64"
    rng = np.random.default_rng(H)
    layer = gru.GRU(64, H, bidirectional=True, dtype=dtype, backend="cupy", seed=rng)
    x = rng.standard_normal((20, 3, 64)).astype(dtype)
    output, h_n = layer(x)
    expected_output, expected_h_n, _ = oracle_for(layer, x)
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=tol)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=tol)


@needs_gpu
@pytest.mark.parametrize(("H", "dtype"), [(128, "float32"), (64, "float64")])
@pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
def test_gpu_resident_kernel_at_its_largest_layers(monkeypatch, H, dtype, reset_after):
    """The instances that hold 192 registers of weights per thread, with lengths, both directions and gates."""
    monkeypatch.setenv(PATH_ENV_VAR, "resident")
    rng = np.random.default_rng(H)
    layer = gru.GRU(16, H, bidirectional=True, reset_after=reset_after, dtype=dtype, backend="cupy", seed=rng)
    x = rng.standard_normal((40, 6, 16)).astype(dtype)
    h0 = rng.standard_normal((2, 6, H)).astype(dtype)
    lengths = [40, 1, 0, 17, 39, 40]
    output, h_n, gates = layer(x, h0, lengths, return_gates=True)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=tol)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=tol)
    for g, name in enumerate("rzn"):
        np.testing.assert_allclose(getattr(gates, name), expected_gates[:, g], rtol=0, atol=tol)
    assert gru.get_backend("cupy").last_paths == ("resident",)


@needs_gpu
def test_gpu_agrees_with_cudnn():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    rng = np.random.default_rng(6)
    reference = torch.nn.GRU(32, 128, 2, bidirectional=True).cuda().double()
    layer = gru.GRU(32, 128, 2, bidirectional=True, dtype="float64", backend="cupy")
    layer.load_state_dict({k: v.cpu().numpy() for k, v in reference.state_dict().items()})
    x = rng.standard_normal((30, 4, 32))
    with torch.no_grad():
        expected, expected_h_n = reference(torch.from_numpy(x).cuda())
    output, h_n = layer(x)
    np.testing.assert_allclose(output, expected.cpu().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(h_n, expected_h_n.cpu().numpy(), rtol=0, atol=1e-10)
