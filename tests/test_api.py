"""Layer API behaviour outside the conformance suite: PyTorch parity, parameters, attributes, repr."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gru
from gru.testing._support import EACH_DTYPE
from gru.train import Linear

I, H, T, B = 5, 7, 6, 3


def normal(*shape, dtype="float32", seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- PyTorch parity ---------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_state_dict_layout_matches_torch_gru(torch, num_layers, bidirectional, bias):
    theirs = torch.nn.GRU(I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias).state_dict()
    ours = gru.GRU(I, H, num_layers=num_layers, bidirectional=bidirectional, bias=bias, seed=0).state_dict()
    assert list(ours) == list(theirs)  # same keys, same order
    for key, value in theirs.items():
        assert ours[key].shape == tuple(value.shape), key
        assert ours[key].dtype == np.float32, key


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_layout_matches_torch_gru_cell(torch, bias):
    theirs = torch.nn.GRUCell(I, H, bias=bias).state_dict()
    ours = gru.GRUCell(I, H, bias=bias, seed=0).state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == tuple(value.shape), key


def test_state_dict_layout_known_keys():
    """The layout spelled out, so it is checked even without torch."""
    ours = gru.GRU(I, H, num_layers=2, bidirectional=True, seed=0).state_dict()
    expected = []
    for layer, width in ((0, I), (1, 2 * H)):
        for suffix in ("", "_reverse"):
            expected += [
                (f"weight_ih_l{layer}{suffix}", (3 * H, width)),
                (f"weight_hh_l{layer}{suffix}", (3 * H, H)),
                (f"bias_ih_l{layer}{suffix}", (3 * H,)),
                (f"bias_hh_l{layer}{suffix}", (3 * H,)),
            ]
    assert [(k, v.shape) for k, v in ours.items()] == expected


@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "bias", "batch_first"),
    [
        (2, True, True, False),
        (2, True, True, True),
        (2, True, False, False),
        (1, False, True, True),
        (3, False, True, False),
    ],
)
def test_torch_weights_reproduce_torch_outputs(torch, num_layers, bidirectional, bias, batch_first):
    module = torch.nn.GRU(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    layer = gru.GRU(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    layer.load_state_dict(module.state_dict())  # tensors, directly
    D = 2 if bidirectional else 1
    x = normal(*((B, T, I) if batch_first else (T, B, I)))
    h0 = normal(num_layers * D, B, H, seed=2)
    with torch.no_grad():
        expected, expected_h = module(torch.from_numpy(x), torch.from_numpy(h0))
        expected_zero_h0, _ = module(torch.from_numpy(x))
    output, h_n = layer(x, h0)
    assert output.dtype == np.float32 and h_n.dtype == np.float32
    np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(layer(x)[0], expected_zero_h0.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_match_torch_packed_sequences(torch, batch_first):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    module = torch.nn.GRU(I, H, num_layers=2, bidirectional=True, batch_first=batch_first)
    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, batch_first=batch_first)
    layer.load_state_dict(module.state_dict())
    lengths = [T, 2, 4]
    x = normal(*((B, T, I) if batch_first else (T, B, I)))
    packed = pack_padded_sequence(torch.from_numpy(x), lengths, batch_first=batch_first, enforce_sorted=False)
    with torch.no_grad():
        packed_out, expected_h = module(packed)
    expected, _ = pad_packed_sequence(packed_out, batch_first=batch_first, total_length=T)
    output, h_n = layer(x, lengths=lengths)
    np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h.numpy(), rtol=0, atol=1e-5)


def test_torch_weights_in_float64(torch):
    module = torch.nn.GRU(I, H, num_layers=2, bidirectional=True).double()
    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, dtype="float64")
    layer.load_state_dict(module.state_dict())
    x = normal(T, B, I, dtype="float64")
    with torch.no_grad():
        expected, expected_h = module(torch.from_numpy(x))
    output, h_n = layer(x)
    np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, expected_h.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_torch_cell_weights_reproduce_torch_cell(torch, bias):
    module = torch.nn.GRUCell(I, H, bias=bias)
    cell = gru.GRUCell(I, H, bias=bias)
    cell.load_state_dict(module.state_dict())
    x, h0 = normal(B, I), normal(B, H, seed=2)
    with torch.no_grad():
        expected = module(torch.from_numpy(x), torch.from_numpy(h0)).numpy()
        expected_unbatched = module(torch.from_numpy(x[0]), torch.from_numpy(h0[0])).numpy()
    np.testing.assert_allclose(cell(x, h0), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cell(x[0], h0[0]), expected_unbatched, rtol=0, atol=1e-5)


def test_torch_tensors_with_grad_load(torch):
    module = torch.nn.GRUCell(I, H)
    state = dict(module.named_parameters())  # requires_grad=True tensors
    cell = gru.GRUCell(I, H)
    cell.load_state_dict(state)
    for key, value in state.items():
        np.testing.assert_array_equal(cell.state_dict()[key], value.detach().numpy())


# -- initialisation and seeds -----------------------------------------------------------------


@EACH_DTYPE
def test_parameters_are_uniform_in_plus_minus_one_over_sqrt_hidden(dtype):
    stats = pytest.importorskip("scipy.stats")
    hidden = 64
    bound = 1.0 / np.sqrt(hidden)  # 0.125
    layer = gru.GRU(32, hidden, num_layers=2, bidirectional=True, dtype=dtype, seed=123)
    for key, value in layer.state_dict().items():
        assert value.dtype == np.dtype(dtype), key
        assert np.abs(value).max() <= bound, key
    values = np.concatenate([v.ravel() for v in layer.state_dict().values()]).astype(np.float64)
    assert values.size > 60_000
    assert values.min() < -0.99 * bound and values.max() > 0.99 * bound  # the whole interval is used
    assert abs(values.mean()) < 0.01 * bound
    np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=0.02)  # a uniform's spread
    assert stats.kstest(values, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-4


def test_cell_parameters_bound():
    cell = gru.GRUCell(10, 400, seed=0)
    bound = 1.0 / np.sqrt(400)  # 0.05: a bound from the input size (1/sqrt(10)) would be far larger
    for key, value in cell.state_dict().items():
        assert np.abs(value).max() <= bound, key
        assert np.abs(value).max() > 0.9 * bound, key


@pytest.mark.parametrize("cls", [gru.GRU, gru.GRUCell])
def test_seeds(cls):
    def params(**kw):
        return cls(I, H, **kw).state_dict()

    same_a, same_b, other = params(seed=7), params(seed=7), params(seed=8)
    for key in same_a:
        np.testing.assert_array_equal(same_a[key], same_b[key])
        assert not np.array_equal(same_a[key], other[key]), key
    first = next(iter(same_a))
    assert not np.array_equal(params()[first], params()[first])  # no seed: fresh entropy


def test_numpy_generator_as_seed():
    a = gru.GRU(I, H, seed=np.random.default_rng(5)).state_dict()
    b = gru.GRU(I, H, seed=np.random.default_rng(5)).state_dict()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    shared = np.random.default_rng(5)
    first = gru.GRU(I, H, seed=shared).state_dict()
    second = gru.GRU(I, H, seed=shared).state_dict()  # the generator has moved on
    np.testing.assert_array_equal(first["weight_hh_l0"], a["weight_hh_l0"])
    assert not np.array_equal(first["weight_hh_l0"], second["weight_hh_l0"])


def test_generator_is_used_not_copied():
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state["state"]["state"]
    gru.GRUCell(I, H, seed=rng)
    assert rng.bit_generator.state["state"]["state"] != before


# -- state dict copies and read-only attributes ------------------------------------------------


def test_state_dict_returns_copies():
    layer = gru.GRU(I, H, num_layers=2, seed=0)
    x = normal(T, B, I)
    before, _ = layer(x)
    state = layer.state_dict()
    reference = {k: v.copy() for k, v in state.items()}
    for value in state.values():
        value[...] = 0.0
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, reference[key])
    np.testing.assert_array_equal(layer(x)[0], before)


def test_load_state_dict_copies_its_input():
    layer = gru.GRU(I, H, seed=0)
    source = gru.GRU(I, H, seed=1).state_dict()
    layer.load_state_dict(source)
    x = normal(T, B, I)
    before, _ = layer(x)
    source["weight_hh_l0"][...] = 0.0
    np.testing.assert_array_equal(layer(x)[0], before)
    assert layer.state_dict()["weight_hh_l0"].any()


def test_a_load_landing_while_a_call_makes_its_weights_is_not_lost(monkeypatch):
    """A load_state_dict in another thread, midway through a call's making of the backends' weights."""
    layer = gru.GRU(I, H, num_layers=3, seed=0, backend="numpy")
    new = gru.GRU(I, H, num_layers=3, seed=1).state_dict()
    real_keys = layer._weight_keys

    def keys_with_a_load_midway():
        keys = real_keys()
        yield keys[0]
        monkeypatch.setattr(layer, "_weight_keys", real_keys)  # only this once
        layer.load_state_dict(new)
        yield from keys[1:]

    monkeypatch.setattr(layer, "_weight_keys", keys_with_a_load_midway)
    x = normal(T, B, I)
    layer(x)  # this call may run with either set of weights
    fresh = gru.GRU(I, H, num_layers=3, backend="numpy")
    fresh.load_state_dict(new)
    np.testing.assert_array_equal(layer(x)[0], fresh(x)[0])  # every later one with the new set


@pytest.mark.parametrize(
    "make",
    [lambda: gru.GRU(3, 4, num_layers=2, seed=0), lambda: gru.GRUCell(3, 4, seed=0), lambda: Linear(3, 4, seed=0)],
    ids=["GRU", "GRUCell", "Linear"],
)
def test_load_state_dict_strict_and_its_result_as_in_torch(make):
    layer, other = make(), make()
    other.load_state_dict({k: v + 1 for k, v in other.state_dict().items()})
    before, theirs = layer.state_dict(), other.state_dict()
    keys = list(before)
    assert layer.load_state_dict(theirs) == ([], [])
    assert layer.load_state_dict(theirs) == gru.IncompatibleKeys(missing_keys=[], unexpected_keys=[])
    layer.load_state_dict(before)
    partial = {keys[0]: theirs[keys[0]], "extra": np.zeros(2)}
    with pytest.raises(ValueError, match=r"^state_dict: keys do not match the layer: missing .*'extra'.*strict=False"):
        layer.load_state_dict(partial)
    assert all(np.array_equal(layer.state_dict()[k], before[k]) for k in keys)  # a refused load changes nothing
    result = layer.load_state_dict(partial, strict=False)
    assert result.missing_keys == keys[1:] and result.unexpected_keys == ["extra"]
    after = layer.state_dict()
    np.testing.assert_array_equal(after[keys[0]], theirs[keys[0]])
    assert all(np.array_equal(after[k], before[k]) for k in keys[1:])
    with pytest.raises(ValueError, match=rf"^state_dict\['{keys[0]}'\]: expected shape"):  # matching keys: checked
        layer.load_state_dict({keys[0]: np.zeros(1)}, strict=False)
    with pytest.raises(TypeError, match=r"^strict: expected"):
        layer.load_state_dict(theirs, strict="no")


def test_load_state_dict_result_matches_torchs(torch):
    module, layer = torch.nn.GRU(3, 4), gru.GRU(3, 4)
    partial = {"weight_ih_l0": torch.zeros(12, 3), "bias_hh_l1": torch.zeros(12)}
    theirs = module.load_state_dict(partial, strict=False)
    ours = layer.load_state_dict(partial, strict=False)
    assert (ours.missing_keys, ours.unexpected_keys) == (theirs.missing_keys, theirs.unexpected_keys)


def test_load_state_dict_converts_dtype_and_changes_output():
    layer = gru.GRU(I, H, seed=0)
    x = normal(T, B, I)
    before, _ = layer(x)
    state = {k: v.astype("float64") for k, v in gru.GRU(I, H, seed=1).state_dict().items()}
    layer.load_state_dict(state)
    assert all(v.dtype == np.float32 for v in layer.state_dict().values())
    assert not np.allclose(layer(x)[0], before)  # the new parameters are used


def test_parameter_attributes_are_read_only_views():
    layer = gru.GRU(I, H, num_layers=2, seed=0)
    w = layer.weight_ih_l1
    np.testing.assert_array_equal(w, layer.state_dict()["weight_ih_l1"])
    assert w.shape == (3 * H, H)
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        layer.bias_hh_l0 += 1.0
    with pytest.raises(AttributeError, match="weight_ih_l0"):
        layer.weight_ih_l0 = np.zeros((3 * H, I), "float32")
    np.testing.assert_array_equal(layer.state_dict()["weight_ih_l1"], w)
    # the attribute follows load_state_dict
    new = gru.GRU(I, H, num_layers=2, seed=1).state_dict()
    layer.load_state_dict(new)
    np.testing.assert_array_equal(layer.weight_ih_l1, new["weight_ih_l1"])


def test_cell_parameter_attributes():
    cell = gru.GRUCell(I, H, bias=False, seed=0)
    assert cell.weight_hh.shape == (3 * H, H)
    with pytest.raises(AttributeError, match="bias_ih"):
        cell.bias_ih  # noqa: B018
    with pytest.raises(AttributeError, match="nonexistent"):
        cell.nonexistent  # noqa: B018
    with pytest.raises(AttributeError):
        cell.weight_hh = np.zeros((3 * H, H), "float32")


def test_ordinary_attributes_stay_assignable():
    layer = gru.GRU(I, H, seed=0)
    layer.backend = "numpy"
    assert layer.backend == "numpy"
    layer.note = "hello"
    assert layer.note == "hello"


# -- warnings, repr, dtype, backend override ---------------------------------------------------


def test_dropout_of_one_zeroes_the_inputs_of_the_upper_layers_as_torch_does(torch):
    module = torch.nn.GRU(3, 4, num_layers=2, dropout=1.0, dtype=torch.float64).train()
    layer = gru.GRU.from_torch(module)
    assert layer.dropout == 1.0
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    output, h_n = layer(x, train=True)
    expected, expected_h_n = module(torch.from_numpy(x))  # every dropped: no randomness left to differ
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, expected_h_n.detach().numpy(), rtol=1e-12, atol=1e-14)
    grads = layer.backward(np.ones_like(output))  # the output depends on x through nothing
    assert not np.any(grads.input) and np.all(np.isfinite(grads.params["weight_ih_l1"]))


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout > 0 has no effect with num_layers=1"):
        gru.GRU(I, H, dropout=0.5)


@pytest.mark.parametrize("kwargs", [{"num_layers": 2, "dropout": 0.5}, {"num_layers": 1, "dropout": 0.0}, {}])
def test_no_warning_otherwise(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gru.GRU(I, H, **kwargs)


def test_repr():
    assert repr(gru.GRU(I, H)) == f"GRU({I}, {H}, reset_after=True, dtype='float32')"
    text = repr(gru.GRU(I, H, num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True))
    assert text.startswith(f"GRU({I}, {H}, ")
    for part in ("num_layers=2", "bias=False", "batch_first=True", "dropout=0.25", "bidirectional=True"):
        assert part in text
    assert "float32" in repr(gru.GRU(I, H))
    assert "reset_after=False" in repr(gru.GRU(I, H, reset_after=False, dtype="float64"))
    assert "'float64'" in repr(gru.GRU(I, H, dtype="float64"))
    cell = repr(gru.GRUCell(I, H, bias=False, dtype="float64"))
    assert cell.startswith(f"GRUCell({I}, {H}") and "bias=False" in cell and "float64" in cell


def test_float64_layer_returns_float64():
    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, dtype="float64", seed=0)
    output, h_n, gates = layer(normal(T, B, I, dtype="float64"), return_gates=True)
    assert output.dtype == h_n.dtype == np.float64
    assert all(g.dtype == np.float64 for g in gates)
    assert output.shape == (T, B, 2 * H) and h_n.shape == (4, B, H)
    cell = gru.GRUCell(I, H, dtype=np.float64, seed=0)
    h1, cell_gates = cell(normal(B, I, dtype="float64"), return_gates=True)
    assert h1.dtype == np.float64 and cell_gates.n.dtype == np.float64


def test_float64_and_float32_agree_on_the_same_parameters():
    wide = gru.GRU(I, H, num_layers=2, dtype="float64", seed=0)
    narrow = gru.GRU(I, H, num_layers=2, seed=0)
    narrow.load_state_dict(wide.state_dict())
    x = normal(T, B, I, dtype="float64")
    np.testing.assert_allclose(narrow(x.astype("float32"))[0], wide(x)[0], rtol=0, atol=1e-5)


def test_call_backend_overrides_layers():
    x = normal(T, B, I)
    layer = gru.GRU(I, H, seed=0, backend="nosuch")
    with pytest.raises(gru.BackendNotFoundError):
        layer(x)
    output, _ = layer(x, backend="numpy")  # the call's choice wins
    reference, _ = gru.GRU(I, H, seed=0, backend="numpy")(x)
    np.testing.assert_array_equal(output, reference)
    with pytest.raises(gru.BackendNotFoundError, match="nosuch2"):
        gru.GRU(I, H, seed=0, backend="numpy")(x, backend="nosuch2")
    cell = gru.GRUCell(I, H, seed=0, backend="nosuch")
    assert cell(x[0], backend="numpy").shape == (B, H)


def test_gate_trace_is_a_named_tuple():
    layer = gru.GRU(I, H, num_layers=2, batch_first=True, seed=0)
    *_, trace = layer(normal(B, T, I), return_gates=True)
    assert isinstance(trace, gru.GateTrace)
    assert trace._fields == ("r", "z", "n")
    assert trace.r.shape == trace.z.shape == trace.n.shape == (2, B, T, H)
    assert (trace.r > 0).all() and (trace.r < 1).all()  # a sigmoid
    assert (np.abs(trace.n) < 1).all()  # a tanh
    np.testing.assert_array_equal(trace.n, trace[2])


def test_public_names():
    for name in gru.__all__:
        assert hasattr(gru, name), name
    assert issubclass(gru.BackendNotFoundError, ValueError)
    assert issubclass(gru.UnsupportedRequestError, ValueError)
    assert issubclass(gru.BackendUnavailableError, gru.BackendError)
    assert not issubclass(gru.BackendUnavailableError, ValueError)
    assert isinstance(gru.__version__, str)


def test_the_backend_protocol_is_importable_from_gru_backends():
    """Everything the protocol's own module exports, a backend author reaches through gru.backends."""
    import gru.backends
    from gru.backends import _base

    assert set(_base.__all__) <= set(gru.backends.__all__)
    for name in gru.backends.__all__:
        assert getattr(gru.backends, name) is getattr(_base, name), name


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy"])
@pytest.mark.parametrize("cls", ["GRU", "GRUCell"])
def test_layers_copy_and_pickle(how, cls):
    """Like torch modules: the same answers after; a registered backend instance stays that instance."""
    import copy
    import pickle

    backend = gru.get_backend("numpy")
    if cls == "GRU":
        layer = gru.GRU(3, 4, 2, bidirectional=True, seed=0, backend=backend)
    else:
        layer = gru.GRUCell(3, 4, seed=0, backend=backend)
    x = np.random.default_rng(1).standard_normal((5, 2, 3) if cls == "GRU" else (2, 3)).astype("float32")
    twin = {"pickle": lambda m: pickle.loads(pickle.dumps(m)), "deepcopy": copy.deepcopy, "copy": copy.copy}[how](layer)
    assert twin is not layer
    expected, got = layer(x), twin(x)
    if cls == "GRUCell":  # one array, not (output, h_n)
        expected, got = (expected,), (got,)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert {k: v.tolist() for k, v in twin.state_dict().items()} == {
        k: v.tolist() for k, v in layer.state_dict().items()
    }
    assert twin.backend == "numpy" and gru.get_backend(twin.backend) is backend


def test_a_copy_has_its_own_training_calls():
    """backward() differentiates this layer's own last training call, never a copy's."""
    import copy

    layer = gru.GRU(3, 4, seed=0)
    twin = copy.copy(layer)
    x = np.zeros((5, 2, 3), "float32")
    twin(x, train=True)
    with pytest.raises(RuntimeError, match="no training call"):
        layer.backward(np.ones((5, 2, 4), "float32"))
    layer(x, train=True)
    twin.backward(np.ones((5, 2, 4), "float32"))  # its own call is still there


@pytest.mark.parametrize("with_b_hn", [False, True])
def test_fold_biases_sums_what_each_gate_adds_once(with_b_hn):
    from gru.backends import fold_biases

    H = 3
    b_ih, b_hh = np.arange(3 * H, dtype="float64"), 100.0 * np.arange(1, 3 * H + 1)
    r, z, n = (slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H))
    expected = np.concatenate([b_ih[r] + b_hh[r], b_ih[z] + b_hh[z], b_ih[n] + (b_hh[n] if with_b_hn else 0)])
    before = b_ih.copy(), b_hh.copy()
    np.testing.assert_array_equal(fold_biases(b_ih, b_hh, with_b_hn=with_b_hn), expected)
    np.testing.assert_array_equal(b_ih, before[0])  # a new array: the weights are left as they are
    np.testing.assert_array_equal(b_hh, before[1])


def test_the_initial_state_may_be_passed_by_pytorchs_name_hx():
    rng = np.random.default_rng(5)
    layer, cell = gru.GRU(3, 4, num_layers=2, seed=0), gru.GRUCell(3, 4, seed=0)
    x, h = rng.standard_normal((5, 2, 3)).astype("float32"), rng.standard_normal((2, 2, 4)).astype("float32")
    for got, expected in zip(layer(x, hx=h), layer(x, h), strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(cell(x[0], hx=h[0]), cell(x[0], h[0]))
    with pytest.raises(TypeError, match=r"^hx: expected the initial state as h0 or as hx .*got both"):
        layer(x, h, hx=h)
    with pytest.raises(TypeError, match=r"^hx: .*got both"):
        cell(x[0], h0=h[0], hx=h[0])
    # errors name the state as it was passed
    for call in (lambda: layer(x, hx=h[:1]), lambda: cell(x[0], hx=h[0, :1])):
        with pytest.raises(ValueError, match=r"^hx: expected shape"):
            call()
    with pytest.raises(TypeError, match=r"^hx: expected dtype float32"):
        layer(x, hx=h.astype("float64"))


def test_torch_dtypes_name_the_layers_dtype(torch):
    """A torch user writes dtype=torch.float64: it means what 'float64' means."""
    assert gru.GRU(3, 4, dtype=torch.float64).dtype == "float64"
    assert gru.GRUCell(3, 4, dtype=torch.double).dtype == "float64"
    assert Linear(3, 4, dtype=torch.float32).dtype == np.float32
    for unsupported in (torch.float16, torch.bfloat16, torch.int64):
        with pytest.raises(TypeError, match=r"^dtype: expected one of \('float32', 'float64'\), got"):
            gru.GRU(3, 4, dtype=unsupported)
