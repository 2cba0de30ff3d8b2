"""Arrays in: NumPy, torch tensors, DLPack and __array__ objects, CuPy; without copies; results in the caller's type."""

from __future__ import annotations

import numpy as np
import pytest

import gru
from gru import _arrays
from gru.backends import Backend, Capabilities
from gru.testing._support import EACH_DTYPE
from gru.train import Linear

I, H, T, B = 3, 4, 5, 2


def normal(*shape, dtype="float32", seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class Recorder(Backend):
    """Keeps the requests it gets (to see whether x was copied) and computes with the NumPy backend."""

    capabilities = Capabilities()

    def __init__(self):
        from gru.backends.numpy import NumpyBackend

        self.requests = []
        self.inner = NumpyBackend()

    def forward(self, request):
        self.requests.append(request)
        return self.inner.forward(request)


# -- torch ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [False, True])
def test_torch_in_torch_out(torch, batch_first):
    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, batch_first=batch_first, seed=0)
    x = normal(*((B, T, I) if batch_first else (T, B, I)))
    h0 = normal(4, B, H, seed=2)
    expected, expected_h, gates = layer(x, h0, [T, 3], return_gates=True)
    output, h_n, tgates = layer(torch.from_numpy(x), torch.from_numpy(h0), torch.tensor([T, 3]), return_gates=True)
    assert isinstance(output, torch.Tensor) and isinstance(h_n, torch.Tensor)
    assert all(isinstance(g, torch.Tensor) for g in tgates)
    np.testing.assert_array_equal(output.numpy(), expected)
    np.testing.assert_array_equal(h_n.numpy(), expected_h)
    np.testing.assert_array_equal(tgates.z.numpy(), gates.z)
    unbatched, _ = layer(torch.from_numpy(x[0] if batch_first else x[:, 0]))
    assert isinstance(unbatched, torch.Tensor) and tuple(unbatched.shape) == (T, 2 * H)


def test_torch_input_is_not_copied(torch):
    recorder = Recorder()
    layer = gru.GRU(I, H, backend=recorder, seed=0)
    x = torch.from_numpy(normal(T, B, I))
    layer(x)
    assert np.shares_memory(recorder.requests[-1].x, x.numpy())
    # a tensor that requires grad is read, outside grad mode, through a detached view, still without a copy
    w = x.clone().requires_grad_(True)
    with torch.no_grad():
        output, _ = layer(w)
    assert not output.requires_grad
    assert np.shares_memory(recorder.requests[-1].x, w.detach().numpy())


def test_a_tensor_that_requires_grad_is_refused_in_grad_mode(torch):
    """Its results could carry no gradient back (gru is outside torch's autograd): torch's .numpy() refuses it too."""
    layer, cell = gru.GRU(I, H, seed=0), gru.GRUCell(I, H, seed=0)
    x = torch.from_numpy(normal(T, B, I)).requires_grad_(True)
    h0 = torch.zeros(1, B, H, requires_grad=True)
    calls = {
        "x": lambda: layer(x),
        "h0": lambda: layer(x.detach(), h0),
        "hx": lambda: layer(x.detach(), hx=h0),
        "cell x": lambda: cell(x[0]),
        "cell h0": lambda: cell(x[0].detach(), h0[0]),
        "X": lambda: gru.onnx.gru(x, *(torch.zeros(s) for s in [(1, 3 * H, I), (1, 3 * H, H)])),
    }
    for what, call in calls.items():
        name = what.split()[-1]  # named as the caller passed it
        with pytest.raises(TypeError, match=rf"{name}: expected a tensor that does not require grad") as info:
            call()
        assert f"pass {name}.detach()" in str(info.value), what
    output, _ = layer(x.detach(), h0.detach())
    assert isinstance(output, torch.Tensor)
    with torch.inference_mode():
        layer(x, h0)
    # values are welcome where gru copies them: a module's parameters load as they are
    module = torch.nn.GRU(I, H)
    assert all(p.requires_grad for p in module.parameters())
    gru.GRU.from_torch(module)
    layer.load_state_dict(dict(module.named_parameters()))


def test_a_packed_sequence_is_refused_with_the_way_to_pass_it(torch):
    padded = torch.from_numpy(normal(T, B, I))
    packed = torch.nn.utils.rnn.pack_padded_sequence(padded, [T] * B)
    with pytest.raises(TypeError, match=r"^x: expected a padded array, got a PackedSequence; .*lengths="):
        gru.GRU(I, H)(packed)


def test_torch_strided_and_odd_tensors(torch):
    layer = gru.GRU(I, H, seed=0)
    base = normal(B, T, I)
    expected, _ = layer(np.ascontiguousarray(base.transpose(1, 0, 2)))
    got, _ = layer(torch.from_numpy(base).transpose(0, 1))  # a non-contiguous view
    np.testing.assert_array_equal(got.numpy(), expected)
    with pytest.raises(TypeError, match=r"^x"):
        layer(torch.zeros(T, B, I, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match=r"^x"):
        layer(torch.zeros(T, B, I, dtype=torch.float64))  # the layer is float32: no silent precision change
    with pytest.raises(TypeError, match=r"^x"):
        layer(torch.zeros(T, B, I, dtype=torch.int64))


def test_torch_cell_and_onnx_function(torch):
    cell = gru.GRUCell(I, H, seed=0)
    x = normal(B, I)
    h1 = cell(torch.from_numpy(x))
    assert isinstance(h1, torch.Tensor)
    np.testing.assert_array_equal(h1.numpy(), cell(x))
    X, W, R = normal(T, B, I), normal(1, 3 * H, I, seed=2), normal(1, 3 * H, H, seed=3)
    Y, Y_h = gru.onnx.gru(torch.from_numpy(X), torch.from_numpy(W), torch.from_numpy(R), direction="reverse")
    assert isinstance(Y, torch.Tensor) and isinstance(Y_h, torch.Tensor)
    np.testing.assert_array_equal(Y.numpy(), gru.onnx.gru(X, W, R, direction="reverse")[0])


def test_torch_results_are_independent_tensors(torch):
    layer = gru.GRU(I, H, seed=0)
    x = torch.from_numpy(normal(T, B, I))
    output, h_n = layer(x)
    before = x.clone()
    output += 1  # writable, and not the input's memory
    h_n += 1
    assert torch.equal(x, before)


# -- DLPack and __array__ ------------------------------------------------------------------------


class DLPackOnly:
    """An array that speaks only DLPack (no __array__, no buffer protocol)."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class Wrapped:
    """Results of an array library with a namespace: must come back as Wrapped."""

    def __init__(self, array):
        self.array = array


class Namespace:
    @staticmethod
    def from_dlpack(value):
        return Wrapped(np.from_dlpack(value))


class WithNamespace(DLPackOnly):
    def __array_namespace__(self, api_version=None):
        return Namespace


class ArrayLike:
    def __init__(self, array):
        self._array = array

    def __array__(self, dtype=None, copy=None):
        return self._array if dtype is None else self._array.astype(dtype)


def test_dlpack_objects_are_read_without_a_copy():
    recorder = Recorder()
    layer = gru.GRU(I, H, backend=recorder, seed=0)
    x = normal(T, B, I)
    output, _ = layer(DLPackOnly(x))
    assert np.shares_memory(recorder.requests[-1].x, x)
    assert isinstance(output, np.ndarray)  # no namespace to return to: NumPy
    np.testing.assert_array_equal(output, layer(x)[0])


def test_dlpack_objects_with_a_namespace_get_their_type_back():
    layer = gru.GRU(I, H, seed=0)
    x = normal(T, B, I)
    output, h_n = layer(WithNamespace(x))
    assert isinstance(output, Wrapped) and isinstance(h_n, Wrapped)
    np.testing.assert_array_equal(output.array, layer(x)[0])


def test_array_protocol_and_lists_give_numpy():
    layer = gru.GRU(I, H, dtype="float64", seed=0)
    x = normal(T, B, I, dtype="float64")
    output, _ = layer(ArrayLike(x))
    assert isinstance(output, np.ndarray)
    np.testing.assert_array_equal(output, layer(x)[0])
    np.testing.assert_array_equal(layer(x.tolist())[0], layer(x)[0])


def test_numpy_views_are_not_copied_when_contiguous():
    recorder = Recorder()
    layer = gru.GRU(I, H, backend=recorder, seed=0)
    big = normal(T + 2, B, I)
    layer(big[1:-1])  # a contiguous slice
    assert np.shares_memory(recorder.requests[-1].x, big)


@pytest.mark.parametrize("backend", ["numpy", "cython"])
@EACH_DTYPE
def test_arrays_in_non_native_byte_order_give_the_native_results(backend, dtype):
    """Big-endian x, h0 and gradients are read by value, on every CPU backend (the compiled one included)."""
    if backend not in {info.name for info in gru.list_backends() if info.available is True}:
        pytest.skip(f"{backend} unavailable")
    layer = gru.GRU(I, H, num_layers=2, dtype=dtype, backend=backend, seed=0)
    swapped = np.dtype(dtype).newbyteorder("S")
    x, h0 = normal(T, B, I, dtype=dtype), normal(2, B, H, dtype=dtype, seed=2)
    d_output, d_h_n = normal(T, B, H, dtype=dtype, seed=3), normal(2, B, H, dtype=dtype, seed=4)
    expected = layer(x, h0, train=True)
    expected_grads = layer.backward(d_output, d_h_n)
    got = layer(x.astype(swapped), h0.astype(swapped), train=True)
    got_grads = layer.backward(d_output.astype(swapped), d_h_n.astype(swapped))
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got_grads.input, expected_grads.input)
    np.testing.assert_array_equal(got_grads.h0, expected_grads.h0)
    cell = gru.GRUCell(I, H, dtype=dtype, backend=backend, seed=0)
    np.testing.assert_array_equal(cell(x[0].astype(swapped), h0[0].astype(swapped)), cell(x[0], h0[0]))


def test_wrong_dtypes_are_refused_whatever_their_byte_order():
    layer = gru.GRU(I, H, seed=0)
    with pytest.raises(TypeError, match=r"x: expected dtype float32 .*got >f8.*dtype='float64'"):
        layer(np.zeros((T, B, I), ">f8"))
    with pytest.raises(TypeError, match="x: expected a floating-point array of float32, got dtype >i4"):
        layer(np.zeros((T, B, I), ">i4"))


def test_as_array_helpers():
    x = normal(3)
    assert _arrays.as_array(x, "x") is x
    assert _arrays.returner(x)(x) is x
    assert _arrays.to_host([1.0, 2.0], "x").dtype == np.float64


# -- CuPy -----------------------------------------------------------------------------------------


def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        pytest.skip(f"no CUDA device: {exc}")
    layer = gru.GRU(I, H, seed=0)
    x = normal(T, B, I)
    try:
        output, _ = layer(cupy.asarray(x))
    except gru.UnsupportedRequestError as exc:
        pytest.skip(f"no CUDA backend: {exc}")
    assert isinstance(output, cupy.ndarray)
    np.testing.assert_allclose(output.get(), layer(x)[0], atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3,), (5, 7), (2, 3, 17), (0, 4)])
@pytest.mark.parametrize("zeroed", [True, False], ids=["aligned_zeros", "aligned_empty"])
def test_aligned_arrays_start_on_a_cache_line(dtype, shape, zeroed):
    from gru._arrays import CACHE_LINE, aligned_empty, aligned_zeros

    kept = []  # alive together: each allocation lands somewhere new
    for _ in range(8):
        a = (aligned_zeros if zeroed else aligned_empty)(shape, dtype)
        assert a.ctypes.data % CACHE_LINE == 0 or a.size == 0  # (an empty array holds no line)
        assert a.shape == shape and a.dtype == np.dtype(dtype) and a.flags.c_contiguous and a.flags.writeable
        assert not zeroed or not a.any()
        a[...] = 1  # all of it is the array's own memory
        kept.append(a)
    assert all(not np.shares_memory(a, b) for i, a in enumerate(kept) for b in kept[i + 1 :])


def test_aligned_copy_is_an_equal_array_on_a_cache_line():
    from gru._arrays import CACHE_LINE, aligned_copy

    base = np.arange(24, dtype=">f4").reshape(4, 6)
    for source in (base, base.T, base[:, ::2], base.astype("float64")):
        copy = aligned_copy(source)
        assert copy.ctypes.data % CACHE_LINE == 0 and copy.flags.c_contiguous
        assert copy.dtype == source.dtype and copy.shape == source.shape
        np.testing.assert_array_equal(copy, source)
        assert not np.shares_memory(copy, source)


def test_on_cache_line_copies_only_what_is_not():
    from gru._arrays import aligned_zeros, on_cache_line

    aligned = aligned_zeros((4, 6), "float32")
    assert on_cache_line(aligned) is aligned
    for other in (aligned.T, aligned.reshape(-1)[1:]):
        copy = on_cache_line(other)
        assert copy.ctypes.data % 64 == 0 and copy.flags.c_contiguous
        np.testing.assert_array_equal(copy, other)


@pytest.mark.parametrize(
    "make",
    [lambda: gru.GRU(5, 24, num_layers=2, bidirectional=True), lambda: gru.GRUCell(5, 24), lambda: Linear(24, 40)],
    ids=["GRU", "GRUCell", "Linear"],
)
def test_parameters_start_on_a_cache_line_whether_drawn_loaded_or_unpickled(make):
    """The kernels read every row of the weights at every step: a row load that spans two lines costs."""
    import copy
    import pickle

    for _ in range(8):  # fresh allocations land at different offsets
        layer = make()
        drawn = layer._params
        layer.load_state_dict({k: v.astype("float64") for k, v in layer.state_dict().items()})
        copies = [copy.deepcopy(layer)._params, pickle.loads(pickle.dumps(layer))._params]
        for params in (drawn, layer._params, *copies):
            assert all(value.ctypes.data % 64 == 0 for value in params.values())


def test_the_cython_backends_weights_and_panels_start_on_a_cache_line():
    if not gru.backend_available("cython"):
        pytest.skip("the cython backend is not built")
    backend = gru.get_backend("cython")
    for _ in range(8):  # H = 256: 768 KB panels, which the allocator maps 16 bytes past a page
        layer = gru.GRU(16, 256, backend="cython")
        layer(np.zeros((3, 2, 16), "float32"))
        weights = layer._layer_weights()[0]
        prepared = backend._base(weights)
        arrays = [prepared[k] for k in ("w_ih_t", "w_hh", "bias", "b_hn")]
        arrays += [backend._w_hh_t(weights), *prepared["panels"].values()]
        assert all(a.ctypes.data % 64 == 0 for a in arrays)


def test_a_forward_output_on_the_host_starts_on_a_cache_line():
    """The threads of the compiled kernels write neighbouring slices of each output row."""
    layer = gru.GRU(5, 32, backend="numpy", seed=0)
    for _ in range(4):
        output, _ = layer(np.zeros((3, 2, 5), "float32"))
        assert output.ctypes.data % 64 == 0


def test_a_meta_parameter_is_named_by_its_device_not_its_grad(torch):
    with torch.device("meta"):
        module = torch.nn.GRU(I, H)
    for call in (
        lambda: gru.GRU(I, H).load_state_dict(dict(module.named_parameters())),
        lambda: gru.GRU(I, H)(torch.zeros(T, B, I, device="meta", requires_grad=True)),
    ):
        with pytest.raises((TypeError, ValueError), match=r"got one on 'meta'"):
            call()
