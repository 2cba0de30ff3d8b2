"""The CuPy GPU backend: how it reports itself, how the registry hands it host arrays, and the GPU checks.

Without a GPU (CI) the backend reports itself unavailable with the reason (CuPy
missing, no device, driver error), and the registry dispatches NumPy input to a
backend that accepts host arrays when it is named. With a GPU
(``benchmarks/gpu_check.sh`` runs the ``test_gpu_`` tests there): CuPy arrays in
and out on every path against the oracle, the largest register-resident layers,
weights that do not fit on chip, and agreement with cuDNN. The path rule, the
kernel sources and the backend on a CPU emulation of the GPU have files of
their own beside this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cupy_helpers import GPU_REASON, assert_matches_oracle, needs_gpu

import gru
from gru.backends import Backend, Capabilities
from gru.backends.cupy import CupyBackend
from gru.backends.cupy._plans import PATH_ENV_VAR, RESIDENT_LAYOUT_ENV_VAR, RESIDENT_LAYOUTS
from gru.testing._support import EACH_DTYPE, EACH_VARIANT, oracle_for, oracle_gradients_for

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
    assert info.capabilities.training is True
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
    assert caps.training  # forward and backward (kernels/gru_backward.cu)
    assert caps.priority > gru.get_backend("numpy").capabilities.priority
    assert caps.dtypes == frozenset({"float32", "float64"})
    assert caps.reset_after and caps.reset_before and caps.lengths and caps.gates


# -- on a GPU ------------------------------------------------------------------------------------


@pytest.fixture
def cupy():
    import cupy

    return cupy


@needs_gpu
@pytest.mark.parametrize("path_name", ["resident", "persistent", "fused", "stepwise"])
@EACH_VARIANT
@EACH_DTYPE
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
@pytest.mark.parametrize("path_name", ["resident", "persistent", "stepwise"])
@EACH_VARIANT
def test_gpu_cupy_arrays_train(cupy, monkeypatch, path_name, reset_after):
    """Training on CuPy arrays: gradients come back as CuPy arrays, equal to the oracle's, for a layer and a cell."""
    monkeypatch.setenv(PATH_ENV_VAR, path_name)
    rng = np.random.default_rng(6)
    T, B, I, H = 9, 4, 12, 32
    layer = gru.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cupy", seed=rng)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((4, B, H))
    d_output, d_h_n = rng.standard_normal((T, B, 2 * H)), rng.standard_normal((4, B, H))
    lengths = [9, 3, 0, 6]
    layer(cupy.asarray(x), cupy.asarray(h0), lengths, train=True)
    grads = layer.backward(cupy.asarray(d_output), cupy.asarray(d_h_n))
    assert all(isinstance(a, cupy.ndarray) for a in (grads.input, grads.h0, *grads.params.values()))
    d_x, d_h0, d_params = oracle_gradients_for(layer, x, d_output, d_h_n, h0, lengths)
    np.testing.assert_allclose(grads.input.get(), d_x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(grads.h0.get(), d_h0, rtol=0, atol=1e-10)
    for name, value in d_params.items():
        np.testing.assert_allclose(grads.params[name].get(), value, rtol=0, atol=1e-10, err_msg=name)
    cell = gru.GRUCell(I, H, reset_after=reset_after, dtype="float64", backend="cupy", seed=rng)
    h1 = cell(cupy.asarray(x[0]), cupy.asarray(h0[0]), train=True)
    step = cell.backward(cupy.ones_like(h1))
    reference = gru.GRUCell(I, H, reset_after=reset_after, dtype="float64", backend="numpy")
    reference.load_state_dict(cell.state_dict())
    reference(x[0], h0[0], train=True)
    expected = reference.backward(np.ones((B, H)))
    np.testing.assert_allclose(step.input.get(), expected.input, rtol=0, atol=1e-12)
    np.testing.assert_allclose(step.h0.get(), expected.h0, rtol=0, atol=1e-12)


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
@EACH_VARIANT
def test_gpu_resident_kernel_at_its_largest_layers(monkeypatch, H, dtype, reset_after):
    """The instances that hold 192 registers of weights per thread, with lengths, both directions and gates."""
    monkeypatch.setenv(PATH_ENV_VAR, "resident")
    rng = np.random.default_rng(H)
    layer = gru.GRU(16, H, bidirectional=True, reset_after=reset_after, dtype=dtype, backend="cupy", seed=rng)
    x = rng.standard_normal((40, 6, 16)).astype(dtype)
    h0 = rng.standard_normal((2, 6, H)).astype(dtype)
    lengths = [40, 1, 0, 17, 39, 40]
    tol = 2e-5 if dtype == "float32" else 1e-12
    assert_matches_oracle(layer, x, h0, lengths, tol)
    assert gru.get_backend("cupy").last_paths == ("resident",)


@needs_gpu
@pytest.mark.parametrize("layout", RESIDENT_LAYOUTS)
@pytest.mark.parametrize("H", [37, 128])
def test_gpu_resident_layouts(monkeypatch, layout, H):
    """Each layout of W_hh (float32, reset-after), with lengths, both directions and gates."""
    monkeypatch.setenv(PATH_ENV_VAR, "resident")
    monkeypatch.setenv(RESIDENT_LAYOUT_ENV_VAR, layout)
    rng = np.random.default_rng(H)
    layer = gru.GRU(16, H, bidirectional=True, dtype="float32", backend="cupy", seed=rng)
    x = rng.standard_normal((40, 6, 16)).astype("float32")
    h0 = rng.standard_normal((2, 6, H)).astype("float32")
    assert_matches_oracle(layer, x, h0, [40, 1, 0, 17, 39, 40], 2e-5)
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


@needs_gpu
def test_gpu_readme_example_runs_as_written():
    """The README's CuPy example, as written there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### CuPy backend (NVIDIA GPUs)") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    namespace: dict = {}
    exec(compile(code, "README.md (### CuPy backend)", "exec"), namespace)
    assert isinstance(namespace["output"], np.ndarray) and namespace["output"].shape == (1000, 8, 128)


def test_the_host_time_script_checks_its_arguments_and_says_what_is_missing():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_host.py"

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)

    bad = run("--shape", "1,2")
    assert bad.returncode == 2 and "--shape: expected four integers I,H,B,T, got '1,2'" in bad.stderr
    bad = run("--calls", "0")
    assert bad.returncode == 2 and "--calls: expected a positive number of calls, got 0" in bad.stderr
    try:
        import cupy  # noqa: F401
    except ImportError:
        missing = run()
        assert missing.returncode == 2 and "needs CuPy" in missing.stderr


def test_the_gpu_benchmark_sets_the_backend_knobs_only_inside_its_blocks(monkeypatch):
    from gru import bench_gpu

    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    monkeypatch.setenv(RESIDENT_LAYOUT_ENV_VAR, "chunked")
    with bench_gpu.forced_path("resident"), bench_gpu.resident_layout("rows"):
        assert (os.environ[PATH_ENV_VAR], os.environ[RESIDENT_LAYOUT_ENV_VAR]) == ("resident", "rows")
    assert PATH_ENV_VAR not in os.environ  # unset before: unset after
    assert os.environ[RESIDENT_LAYOUT_ENV_VAR] == "chunked"  # set before: put back
    with pytest.raises(RuntimeError), bench_gpu.forced_path("fused"):
        raise RuntimeError("a path that fails")
    assert PATH_ENV_VAR not in os.environ
