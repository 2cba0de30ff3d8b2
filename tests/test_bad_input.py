"""The bad-input catalogue: every malformed call raises ValueError or TypeError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import gru
from gru import _registry
from gru._validation import memory_bytes
from gru.train import Linear

I, H, T, B = 3, 4, 5, 2


@pytest.fixture
def layer():
    return gru.GRU(I, H, seed=0)


@pytest.fixture
def cell():
    return gru.GRUCell(I, H, seed=0)


def arr(*shape, dtype="float32"):
    return np.zeros(shape, dtype)


def raises(kind, argument):
    """pytest.raises for ``kind`` with a message that starts by naming ``argument``."""
    return pytest.raises(kind, match=rf"^{argument}(?!\w)")


# -- constructor ------------------------------------------------------------------------------

BAD_CONSTRUCTOR_ARGS = [
    ({"input_size": 0}, ValueError, "input_size"),
    ({"input_size": -3}, ValueError, "input_size"),
    ({"input_size": 3.0}, TypeError, "input_size"),
    ({"input_size": True}, TypeError, "input_size"),
    ({"input_size": "3"}, TypeError, "input_size"),
    ({"input_size": None}, TypeError, "input_size"),
    ({"hidden_size": 0}, ValueError, "hidden_size"),
    ({"hidden_size": -1}, ValueError, "hidden_size"),
    ({"hidden_size": 4.5}, TypeError, "hidden_size"),
    ({"hidden_size": False}, TypeError, "hidden_size"),
    ({"num_layers": 0}, ValueError, "num_layers"),
    ({"num_layers": 1.0}, TypeError, "num_layers"),
    ({"num_layers": True}, TypeError, "num_layers"),
    ({"dropout": -0.1}, ValueError, "dropout"),
    ({"dropout": 1.0000001}, ValueError, "dropout"),
    ({"dropout": float("nan")}, ValueError, "dropout"),
    ({"dropout": float("inf")}, ValueError, "dropout"),
    ({"dropout": "0.5"}, TypeError, "dropout"),
    ({"dropout": True}, TypeError, "dropout"),
    ({"dropout": None}, TypeError, "dropout"),
    ({"batch_first": "yes"}, TypeError, "batch_first"),
    ({"batch_first": 1}, TypeError, "batch_first"),
    ({"batch_first": None}, TypeError, "batch_first"),
    ({"bidirectional": "no"}, TypeError, "bidirectional"),
    ({"bias": "yes"}, TypeError, "bias"),
    ({"reset_after": None}, TypeError, "reset_after"),
    ({"seed": "x"}, TypeError, "seed"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"seed": True}, TypeError, "seed"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": np.int64(-7)}, ValueError, "seed"),
    ({"backend": 3}, TypeError, "backend"),
    ({"backend": gru.GRU}, TypeError, "backend"),
]

BAD_DTYPES = [
    "float16",
    np.float16,
    "float128" if hasattr(np, "float128") else "longdouble",
    int,
    "int32",
    np.int64,
    bool,
    object,
    complex,
    "complex64",
    str,
    "U8",
    "banana",
    None,  # np.dtype(None) is float64: must not silently differ from the float32 default
    3,
    [("a", "f4")],
]


def gru_kwargs(**override):
    kwargs = {"input_size": I, "hidden_size": H, "num_layers": 2}
    kwargs.update(override)
    return kwargs


@pytest.mark.parametrize(("override", "kind", "argument"), BAD_CONSTRUCTOR_ARGS, ids=repr)
def test_gru_constructor(override, kind, argument):
    with raises(kind, argument):
        gru.GRU(**gru_kwargs(**override))


@pytest.mark.parametrize(
    ("override", "kind", "argument"),
    [case for case in BAD_CONSTRUCTOR_ARGS if case[2] in {"input_size", "hidden_size", "bias", "reset_after", "seed"}],
    ids=repr,
)
def test_gru_cell_constructor(override, kind, argument):
    kwargs = {"input_size": I, "hidden_size": H}
    kwargs.update(override)
    with raises(kind, argument):
        gru.GRUCell(**kwargs)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=repr)
@pytest.mark.parametrize("cls", [gru.GRU, gru.GRUCell])
def test_unsupported_layer_dtype(cls, dtype):
    with raises(TypeError, "dtype") as info:
        cls(I, H, dtype=dtype)
    assert "float32" in str(info.value) and "float64" in str(info.value)


@pytest.mark.parametrize("dtype", ["float32", "float64", np.float32, np.dtype("float64"), "f4", "<f8"])
def test_supported_dtype_spellings(dtype):
    assert gru.GRU(I, H, dtype=dtype).dtype == np.dtype(dtype).name


@pytest.mark.parametrize("value", [np.int64(3), np.int32(3), np.uint8(3)])
def test_numpy_integers_are_accepted_as_sizes(value):
    layer = gru.GRU(value, value, num_layers=value)
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (3, 3, 3)
    assert type(layer.input_size) is int


# -- x ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "kind"),
    [
        (arr(I), ValueError),  # 1-D
        (arr(T, B, 1, I), ValueError),  # 4-D
        (np.float32(1.0), ValueError),  # 0-D
        (arr(T, B, I + 1), ValueError),  # feature-size mismatch
        (arr(T, I + 1), ValueError),  # unbatched feature-size mismatch
        (arr(T, B, I, dtype="float64"), TypeError),  # not the layer's dtype
        (arr(T, B, I, dtype="float16"), TypeError),
        (arr(T, B, I, dtype="int64"), TypeError),
        (arr(T, B, I, dtype="int8"), TypeError),
        (arr(T, B, I, dtype=bool), TypeError),
        (arr(T, B, I, dtype=complex), TypeError),
        (arr(T, B, I, dtype=object), TypeError),
        (np.full((T, B, I), "a"), TypeError),
        ([[[1, 2, 3]], [[1, 2]]], TypeError),  # ragged nested lists
        ([[[1, 2, 3]] * B] * T, TypeError),  # integer nested lists
        ([[[1.0, 2.0, 3.0]] * B] * T, TypeError),  # Python floats are float64, the layer is float32
        ("abc", TypeError),
        (None, TypeError),
        ({"x": 1}, TypeError),
    ],
    ids=lambda v: repr(getattr(v, "shape", v))[:40] + (f"-{v.dtype}" if hasattr(v, "dtype") else ""),
)
def test_bad_x(layer, x, kind):
    with raises(kind, "x"):
        layer(x)


@pytest.mark.parametrize(
    ("x", "said"),
    [
        (None, "got None"),
        (np.ma.masked_array(arr(T, B, I), mask=True), "masked array (its mask would be ignored)"),
        ([[[1.0, 2.0, 3.0]] * B] * T, "numpy.asarray(x, dtype='float32')"),  # a hint a list can follow
        ([[[1, 2, 3]], [[1, 2]]], "ragged list"),
    ],
    ids=["None", "masked", "float-list", "ragged"],
)
def test_bad_x_is_told_what_it_is(layer, x, said):
    with raises(TypeError, "x") as info:
        layer(x)
    assert said in str(info.value)


def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(np.shape(a), bool))


def _onnx_gru_call(**masked):
    """gru.onnx.gru on a small problem with the arrays ``masked`` names given as masked arrays."""
    from gru import onnx as gru_onnx

    args = {"X": arr(T, B, I), "W": arr(1, 3 * H, I), "R": arr(1, 3 * H, H), "B": arr(1, 6 * H)}
    args |= {"initial_h": arr(1, B, H), "sequence_lens": np.array([T, 1])}
    return lambda: gru_onnx.gru(**{k: _masked(v) if k in masked else v for k, v in args.items()})


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda layer: layer(arr(T, B, I), lengths=_masked([T, 1])), "lengths"),
        (lambda layer: layer(arr(T, B, I), _masked(arr(1, B, H))), "h0"),
        *[(lambda layer, k=k: _onnx_gru_call(**{k: True})(), k) for k in ("X", "W", "R", "B", "initial_h")],
        (lambda layer: _onnx_gru_call(sequence_lens=True)(), "sequence_lens"),
        (lambda layer: gru.interop.onnx_to_torch(_masked(arr(1, 3 * H, I)), arr(1, 3 * H, H)), "W"),
    ],
    ids=["lengths", "h0", "X", "W", "R", "B", "initial_h", "sequence_lens", "onnx_to_torch"],
)
def test_masked_arrays_are_refused_everywhere_an_array_goes_in(layer, call, argument):
    """Every conversion to a plain array would drop the mask and compute with the hidden values."""
    with pytest.raises(TypeError, match=rf"^{argument}: expected a plain array, got a masked array"):
        call(layer)


def test_a_list_of_python_floats_fits_a_float64_layer():
    layer = gru.GRU(I, H, dtype="float64", seed=0)
    values = np.random.default_rng(0).standard_normal((T, B, I))
    np.testing.assert_array_equal(layer(values.tolist())[0], layer(values)[0])


def test_lengths_past_64_bits_are_named_as_such(layer):
    with raises(TypeError, "lengths") as info:
        layer(arr(T, B, I), lengths=[T, 2**70])
    assert "integers that fit in 64 bits" in str(info.value)


def test_a_bad_gru_backend_variable_is_named(layer, monkeypatch):
    monkeypatch.setenv("GRU_BACKEND", "nope")
    with pytest.raises(gru.BackendNotFoundError, match=r"^GRU_BACKEND='nope' \(environment variable\): "):
        layer(arr(T, B, I))
    with pytest.raises(gru.BackendNotFoundError, match=r"^backend: no backend named 'nope'"):
        layer(arr(T, B, I), backend="nope")  # named by the caller: the argument is the cause


@pytest.mark.parametrize("batch_first", [False, True])
def test_feature_mismatch_with_batch_first(batch_first):
    layer = gru.GRU(I, H, batch_first=batch_first, seed=0)
    with raises(ValueError, "x") as info:
        layer(arr(B, T, I + 2))
    assert f"{I} features" in str(info.value)


def test_float64_layer_rejects_float32_x_and_says_how_to_fix():
    layer = gru.GRU(I, H, dtype="float64", seed=0)
    with raises(TypeError, "x") as info:
        layer(arr(T, B, I))
    assert "astype('float64')" in str(info.value)
    assert "build the layer with dtype='float32'" in str(info.value)


def test_a_float16_x_is_not_told_to_build_a_float16_layer():
    """The fix the message offers must be one that works: there are no float16 layers."""
    layer = gru.GRU(I, H, seed=0)
    with raises(TypeError, "x") as info:
        layer(arr(T, B, I, dtype="float16"))
    assert "astype('float32')" in str(info.value) and "build the layer" not in str(info.value)


# -- h0 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer_kwargs", "x_shape", "h0", "kind"),
    [
        ({}, (T, B, I), arr(1, B, H + 1), ValueError),
        ({}, (T, B, I), arr(2, B, H), ValueError),  # num_layers * num_directions wrong
        ({}, (T, B, I), arr(1, B + 1, H), ValueError),  # batch wrong
        ({}, (T, B, I), arr(B, H), ValueError),  # 2-D for batched x
        ({}, (T, B, I), arr(H), ValueError),
        ({}, (T, B, I), arr(1, H, B), ValueError),  # transposed
        ({"batch_first": True}, (B, T, I), arr(B, 1, H), ValueError),  # h0 is never batch-first
        ({"bidirectional": True}, (T, B, I), arr(1, B, H), ValueError),
        ({"num_layers": 2, "bidirectional": True}, (T, B, I), arr(2, B, H), ValueError),
        ({}, (T, I), arr(1, 1, H), ValueError),  # 3-D for unbatched x
        ({}, (T, I), arr(H), ValueError),
        ({}, (T, I), arr(1, H + 1), ValueError),
        ({}, (T, B, I), arr(1, B, H, dtype="float64"), TypeError),
        ({}, (T, B, I), arr(1, B, H, dtype="float16"), TypeError),
        ({}, (T, B, I), arr(1, B, H, dtype="int64"), TypeError),
        ({}, (T, B, I), np.full((1, B, H), "0"), TypeError),
        ({}, (T, B, I), "zeros", TypeError),
        ({}, (T, I), [[0.0] * H], TypeError),  # Python floats are float64
    ],
)
def test_bad_h0(layer_kwargs, x_shape, h0, kind):
    layer = gru.GRU(I, H, seed=0, **layer_kwargs)
    with raises(kind, "h0"):
        layer(arr(*x_shape), h0)


def test_h0_error_gives_expected_shape(layer):
    with raises(ValueError, "h0") as info:
        layer(arr(T, B, I), arr(1, B, H + 1))
    assert f"(1, {B}, {H})" in str(info.value) and f"(1, {B}, {H + 1})" in str(info.value)


# -- lengths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lengths", "kind"),
    [
        ([T], ValueError),  # wrong count
        ([T, T, T], ValueError),
        ([], ValueError),
        (T, ValueError),  # a scalar for a batch
        ([[T, T]], ValueError),  # nested
        ([[T], [T]], ValueError),
        ([-1, T], ValueError),  # negative
        ([T + 1, T], ValueError),  # longer than the sequence
        (np.array([2**63, 1], np.uint64), ValueError),
        ([2.0, 3.0], TypeError),  # floats, even integral ones
        (np.array([2.0, 3.0], np.float32), TypeError),
        ([True, False], TypeError),  # bools are not lengths
        (np.array([1, 0], bool), TypeError),
        (["3", "4"], TypeError),
        ([1, None], TypeError),
        ([[1], [2, 3]], TypeError),  # ragged
        ({1, 2}, TypeError),
        ([1 + 0j, 2], TypeError),
    ],
    ids=repr,
)
def test_bad_lengths(layer, lengths, kind):
    with raises(kind, "lengths"):
        layer(arr(T, B, I), lengths=lengths)


@pytest.mark.parametrize(
    ("lengths", "kind"), [([T, T], ValueError), (T + 1, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_lengths_unbatched(layer, lengths, kind):
    with raises(kind, "lengths"):
        layer(arr(T, I), lengths=lengths)


def test_lengths_error_gives_range(layer):
    with raises(ValueError, "lengths") as info:
        layer(arr(T, B, I), lengths=[T + 3, 1])
    assert f"[0, {T}]" in str(info.value) and str(T + 3) in str(info.value)


# -- call flags and backend -------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["return_gates", "train"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_call_flags(layer, flag, value):
    with raises(TypeError, flag):
        layer(arr(T, B, I), **{flag: value})


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_bad_cell_return_gates(cell, value):
    with raises(TypeError, "return_gates"):
        cell(arr(B, I), return_gates=value)


@pytest.mark.parametrize(("backend", "kind"), [("nosuch", ValueError), ("", ValueError), (3, TypeError)])
def test_bad_backend_argument(layer, cell, backend, kind):
    with raises(kind, "backend"):
        layer(arr(T, B, I), backend=backend)
    with raises(kind, "backend"):
        cell(arr(B, I), backend=backend)
    if isinstance(backend, str):
        with raises(gru.BackendNotFoundError, "backend"):
            gru.GRU(I, H, backend=backend)(arr(T, B, I))


def test_unknown_backend_error_lists_registered_names(layer):
    _registry.refresh()
    with raises(ValueError, "backend") as info:
        layer(arr(T, B, I), backend="nosuch")
    assert "numpy" in str(info.value)


# -- GRUCell ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "h0", "kind", "argument"),
    [
        (arr(B, I + 1), None, ValueError, "x"),
        (arr(I + 1), None, ValueError, "x"),
        (arr(1, B, I), None, ValueError, "x"),  # a sequence is not a step
        (np.float32(0), None, ValueError, "x"),
        (arr(B, I, dtype="float64"), None, TypeError, "x"),
        (arr(B, I, dtype="int32"), None, TypeError, "x"),
        ([[1, 2], [3]], None, TypeError, "x"),
        (arr(B, I), arr(B, H + 1), ValueError, "h0"),
        (arr(B, I), arr(B + 1, H), ValueError, "h0"),
        (arr(B, I), arr(H), ValueError, "h0"),  # 1-D for batched x
        (arr(B, I), arr(1, B, H), ValueError, "h0"),  # a GRU's h0 is not a cell's
        (arr(I), arr(1, H), ValueError, "h0"),  # 2-D for unbatched x
        (arr(I), arr(H + 1), ValueError, "h0"),
        (arr(B, I), arr(B, H, dtype="float64"), TypeError, "h0"),
        (arr(B, I), arr(B, H, dtype=bool), TypeError, "h0"),
    ],
    ids=lambda v: repr(getattr(v, "shape", v)),
)
def test_bad_cell_input(cell, x, h0, kind, argument):
    with raises(kind, argument):
        cell(x, h0)


# -- state dicts ------------------------------------------------------------------------------


def mutated(state, **changes):
    state = dict(state)
    for key, value in changes.items():
        if value is KeyError:
            del state[key]
        else:
            state[key] = value
    return state


def bad_state_dicts(good):
    """(description, bad state dict, expected exception, text the message must hold) for ``good``."""
    w = good["weight_ih_l0"]
    return [
        ("missing key", mutated(good, bias_hh_l1_reverse=KeyError), ValueError, "missing ['bias_hh_l1_reverse']"),
        ("extra key", mutated(good, weight_ih_l2=w), ValueError, "unexpected ['weight_ih_l2']"),
        ("non-string extra key", {**good, 3: w}, ValueError, "unexpected [3]"),
        ("cell keys", {"weight_ih": w, "weight_hh": w, "bias_ih": w, "bias_hh": w}, ValueError, "weight_ih_l0"),
        ("transposed", mutated(good, weight_ih_l0=w.T), ValueError, "['weight_ih_l0']"),
        ("short bias", mutated(good, bias_ih_l1=good["bias_ih_l1"][:-1]), ValueError, "['bias_ih_l1']"),
        ("flattened", mutated(good, weight_hh_l0=good["weight_hh_l0"].ravel()), ValueError, "['weight_hh_l0']"),
        ("layer-0 shape for layer 1", mutated(good, weight_ih_l1=w), ValueError, "['weight_ih_l1']"),
        ("object dtype", mutated(good, weight_hh_l1=good["weight_hh_l1"].astype(object)), TypeError, "weight_hh_l1"),
        ("complex", mutated(good, bias_hh_l0=good["bias_hh_l0"].astype(complex)), TypeError, "['bias_hh_l0']"),
        ("bool", mutated(good, bias_hh_l0=good["bias_hh_l0"] > 0), TypeError, "['bias_hh_l0']"),
        ("strings", mutated(good, bias_hh_l0=good["bias_hh_l0"].astype(str)), TypeError, "['bias_hh_l0']"),
        ("None value", mutated(good, bias_hh_l0=None), TypeError, "['bias_hh_l0']"),
        ("ragged list", mutated(good, bias_hh_l0=[[1.0], [1.0, 2.0]]), TypeError, "['bias_hh_l0']"),
        ("masked", mutated(good, bias_hh_l0=np.ma.masked_array(good["bias_hh_l0"])), TypeError, "masked array"),
        # float64 values past float32's range would be stored as infinities
        (
            "past float32",
            mutated(good, bias_ih_l1=np.full(3 * H, 1e300)),
            ValueError,
            "expected values within float32's range",
        ),
    ]


def test_bad_state_dicts_leave_parameters_unchanged():
    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, seed=0)
    good = layer.state_dict()
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype("float32")
    before, _ = layer(x)
    # the bad entry of most cases sorts after valid ones: a half-done load would show
    for description, state, kind, named in bad_state_dicts(good):
        with pytest.raises(kind, match=r"^state_dict") as info:
            layer.load_state_dict(state)
        assert named in str(info.value), description
        after = layer.state_dict()
        assert list(after) == list(good), description
        for key in good:
            np.testing.assert_array_equal(after[key], good[key], err_msg=description)
        np.testing.assert_array_equal(layer(x)[0], before, err_msg=description)


@pytest.mark.parametrize("state", [[("weight_ih", 1)], None, "weight_ih", 3, np.zeros(3)], ids=repr)
def test_state_dict_that_is_not_a_mapping(cell, state):
    with raises(TypeError, "state_dict"):
        cell.load_state_dict(state)


def test_state_dict_missing_and_unexpected_are_both_listed(cell):
    state = cell.state_dict()
    state["weight_ih_l0"] = state.pop("weight_ih")
    with raises(ValueError, "state_dict") as info:
        cell.load_state_dict(state)
    assert "missing ['weight_ih']" in str(info.value)
    assert "unexpected ['weight_ih_l0']" in str(info.value)


def test_state_dict_shape_error_names_the_key_and_shapes(cell):
    state = cell.state_dict()
    state["weight_hh"] = np.zeros((3 * H, H + 1), "float32")
    with raises(ValueError, r"state_dict\['weight_hh'\]") as info:
        cell.load_state_dict(state)
    assert f"({3 * H}, {H})" in str(info.value) and f"({3 * H}, {H + 1})" in str(info.value)


def test_bias_free_layer_rejects_biases():
    layer = gru.GRU(I, H, bias=False, seed=0)
    state = layer.state_dict() | {"bias_ih_l0": np.zeros(3 * H), "bias_hh_l0": np.zeros(3 * H)}
    with raises(ValueError, "state_dict") as info:
        layer.load_state_dict(state)
    assert "bias_ih_l0" in str(info.value)


# -- valid edge inputs that must not be rejected ----------------------------------------------


def test_empty_batch_with_empty_lengths(layer):
    """np.asarray([]) is float64: an empty batch's empty lengths list is still valid."""
    output, h_n = layer(arr(T, 0, I), lengths=[])
    assert output.shape == (T, 0, H) and h_n.shape == (1, 0, H)


@pytest.mark.parametrize(
    "lengths", [(T, 2), np.array([T, 2], np.int32), np.array([T, 2], np.uint8), [np.int64(T), 2]], ids=repr
)
def test_integer_lengths_of_any_kind(layer, lengths):
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")
    output, h_n = layer(x, lengths=lengths)
    np.testing.assert_array_equal(output[2:, 1], 0.0)  # past the second sequence's length
    expected, _ = layer(x[:2, 1:])
    np.testing.assert_allclose(h_n[0, 1], expected[-1, 0], rtol=0, atol=1e-6)


def test_an_unbatched_length_on_a_device_is_copied_before_it_is_read(monkeypatch):
    """A 0-d CUDA array (a stand-in here, no GPU) refuses NumPy's implicit conversion: it must reach the host first."""
    from gru import _validation

    class DeviceScalar:
        ndim = 0

        @property
        def __cuda_array_interface__(self):
            return {"shape": (), "typestr": "<i8", "data": (0, False), "version": 3}

        def __array__(self, *args, **kwargs):
            raise TypeError("Implicit conversion to a NumPy array is not allowed")

    monkeypatch.setattr(_validation, "to_host", lambda value, name: np.array(2))
    layer = gru.GRU(I, H, seed=0)
    x = np.random.default_rng(0).standard_normal((T, I)).astype("float32")
    output, _ = layer(x, lengths=DeviceScalar())
    np.testing.assert_array_equal(output[2:], 0.0)
    np.testing.assert_allclose(output[:2], layer(x[:2])[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("threads", "kind"), [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("4", TypeError)])
def test_bad_threads(layer, threads, kind):
    with raises(kind, "threads"):
        layer(arr(T, B, I), threads=threads)


@pytest.mark.parametrize("threads", [2**31, 2**40, 10**30])
def test_huge_thread_counts_are_capped_not_overflowed(layer, threads):
    """A valid (>= 1) request beyond a C int: the compiled backend caps it (it used to raise OverflowError)."""
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype("float32")
    output, _ = layer(x, threads=threads)
    np.testing.assert_array_equal(output, layer(x, threads=1)[0])
    # training too: the backward's scratch is sized by the threads it uses (it asked for TiBs)
    layer(x, train=True, threads=1)
    expected = layer.backward(np.ones_like(output))
    layer(x, train=True, threads=threads)
    np.testing.assert_allclose(layer.backward(np.ones_like(output)).input, expected.input, rtol=1e-5, atol=1e-6)


# -- sizes no machine can hold ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: gru.GRU(I, H, num_layers=10**20), "input_size, hidden_size, num_layers"),  # used to loop for ever
        (lambda: gru.GRU(I, 10**12), "input_size, hidden_size, num_layers"),
        (lambda: gru.GRU(10**15, H, bidirectional=True), "input_size, hidden_size, num_layers"),
        (lambda: gru.GRUCell(10**7, 10**6), "input_size, hidden_size"),
        # a few parameters in each of tens of millions of layers: their objects fill the memory
        (lambda: gru.GRU(1, 1, num_layers=memory_bytes() // 1024), "input_size, hidden_size, num_layers"),
        (lambda: Linear(10**6, 10**6), r"\(in_features, out_features\) = \(1000000, 1000000\)"),
        # drawn in float64 first: 12 bytes a float32 parameter while it is made
        (lambda: Linear(1, memory_bytes() // 11, bias=False), r"\(in_features, out_features\) = \(1, \d+\)"),
    ],
    ids=["num_layers", "hidden_size", "input_size", "cell", "tiny_layers", "linear", "linear_while_drawn"],
)
@pytest.mark.skipif(memory_bytes() is None, reason="this OS does not tell its memory size")
def test_layers_larger_than_the_memory_are_refused_at_once(make, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: the layer would hold [\d,]+ parameters") as info:
        make()
    assert "more than this machine's memory" in str(info.value)


@pytest.mark.parametrize(
    ("call", "what"),
    [
        (lambda: gru.GRU(I, H)(np.zeros((0, 2**40, I), "float32")), "output, final state and gates"),
        (lambda: gru.GRU(I, H)(np.broadcast_to(np.zeros(I, "float32"), (2**22, 2**22, I))), "contiguous copy"),
        (lambda: gru.GRUCell(I, H)(np.broadcast_to(np.zeros(I, "float32"), (2**40, I))), "output, final state"),
        (lambda: Linear(I, H)(np.broadcast_to(np.zeros(I, "float32"), (2**40, I))), "output and kept copy"),
        # the copy in native byte order is the first array made
        (lambda: gru.GRU(I, H)(np.broadcast_to(np.zeros(I, ">f4"), (2**22, 2**22, I))), "native byte order"),
        (lambda: Linear(I, H)(np.broadcast_to(np.zeros(I, ">f4"), (2**40, I))), "native byte order"),
    ],
    ids=["empty-but-huge-batch", "broadcast-view", "cell", "linear", "byte-order", "linear-byte-order"],
)
@pytest.mark.skipif(memory_bytes() is None, reason="this OS does not tell its memory size")
def test_calls_whose_arrays_would_pass_the_memory_are_refused_naming_x(call, what):
    """NumPy would raise a MemoryError about some internal array; the call says which argument asks for it."""
    with pytest.raises(ValueError, match=r"^x: expected a call whose arrays fit in memory, got shape") as info:
        call()
    assert what in str(info.value) and "GiB (this machine has" in str(info.value)


# -- backward ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer_kwargs", "x_shape", "d_output", "d_h_n", "kind", "argument"),
    [
        ({}, (T, B, I), arr(T, B, H + 1), None, ValueError, "d_output"),
        ({}, (T, B, I), arr(T, B + 1, H), None, ValueError, "d_output"),
        ({"batch_first": True}, (B, T, I), arr(T, B, H), None, ValueError, "d_output"),  # time-major for batch-first
        ({}, (T, I), arr(T, 1, H), None, ValueError, "d_output"),  # batched for unbatched
        ({}, (T, B, I), arr(T, B, H, dtype="float64"), None, TypeError, "d_output"),
        ({}, (T, B, I), arr(T, B, H, dtype="int32"), None, TypeError, "d_output"),
        ({}, (T, B, I), "ones", None, TypeError, "d_output"),
        ({}, (T, B, I), None, None, TypeError, "d_output"),
        ({}, (T, B, I), arr(T, B, H), arr(2, B, H), ValueError, "d_h_n"),
        ({}, (T, I), arr(T, H), arr(1, 1, H), ValueError, "d_h_n"),
        ({}, (T, B, I), arr(T, B, H), arr(1, B, H, dtype="float16"), TypeError, "d_h_n"),
    ],
)
def test_bad_backward_arguments(layer_kwargs, x_shape, d_output, d_h_n, kind, argument):
    layer = gru.GRU(I, H, seed=0, **layer_kwargs)
    layer(arr(*x_shape), train=True)
    with raises(kind, argument):
        layer.backward(d_output, d_h_n)


def test_backward_without_a_training_call_says_what_to_do():
    """Call-order misuse, not a bad value: RuntimeError (documented in GRU.backward)."""
    with pytest.raises(RuntimeError, match=r"^backward: no training call .* train=True"):
        gru.GRU(I, H, seed=0).backward(arr(T, B, H))


# -- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("replace", ["yes", 1, None])
def test_register_backend_replace_must_be_a_bool(replace):
    from gru.backends.numpy import NumpyBackend

    before = gru.get_backend("numpy")
    with raises(TypeError, "replace"):
        gru.register_backend("numpy", NumpyBackend(), replace=replace)
    assert gru.get_backend("numpy") is before


# -- files: gru.load, save, to_onnx -----------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.safetensors"
    gru.GRU(I, H, num_layers=2, seed=0).save(path)
    return path


@pytest.mark.parametrize(
    ("kwargs", "kind", "argument"),
    [
        ({"prefix": 3}, TypeError, "prefix"),
        ({"prefix": b"encoder."}, TypeError, "prefix"),
        ({"backend": 3}, TypeError, "backend"),
        ({"batch_first": "yes"}, TypeError, "batch_first"),  # the caller's keyword, not the file, is wrong
        ({"dtype": "int8"}, TypeError, "dtype"),
        ({"dropout": 2.0}, ValueError, "dropout"),
        ({"num_layers": 0}, ValueError, "num_layers"),
        ({"colour": "red"}, TypeError, "load"),
    ],
    ids=repr,
)
def test_bad_load_arguments_name_the_argument(saved, kwargs, kind, argument):
    with raises(kind, argument):
        gru.load(saved, **kwargs)


def save_file(tmp_path, name, tensors, config=None):
    from safetensors.numpy import save_file as write

    path = tmp_path / name
    write(tensors, str(path), metadata=None if config is None else {"gru.config": config})
    return path


def f32(*shape):
    return np.zeros(shape, "float32")


@pytest.mark.parametrize(
    ("name", "tensors", "config", "message"),
    [
        ("no-gru.safetensors", {"a": f32(3)}, None, "expected PyTorch GRU keys"),
        ("hidden-mismatch.safetensors", {"weight_ih_l0": f32(12, I), "weight_hh_l0": f32(12, 5)}, None, "do not match"),
        (
            "layer-gap.safetensors",
            {
                "weight_ih_l0": f32(12, I),
                "weight_hh_l0": f32(12, 4),
                "weight_ih_l2": f32(12, 4),
                "weight_hh_l2": f32(12, 4),
            },
            None,
            "",
        ),
        ("config-list.safetensors", {"weight_ih": f32(12, I), "weight_hh": f32(12, 4)}, "[1, 2]", "no GRU or GRUCell"),
        # the array that is wrong is the one named
        ("cell-1d-ih.safetensors", {"weight_ih": f32(12), "weight_hh": f32(12, 4)}, None, "weight_ih: expected a 2-D"),
        ("cell-1d-hh.safetensors", {"weight_ih": f32(12, I), "weight_hh": f32(12)}, None, "weight_hh: expected a 2-D"),
        (
            "cell-config-gru-keys.safetensors",
            {"weight_ih_l0": f32(12, I), "weight_hh_l0": f32(12, 4)},
            '{"class": "GRUCell", "input_size": 3, "hidden_size": 4, "bias": false}',
            "do not match",
        ),
        (
            "negative-size.safetensors",
            {"weight_ih_l0": f32(12, I), "weight_hh_l0": f32(12, 4)},
            '{"class": "GRU", "input_size": 3, "hidden_size": -4}',
            "does not make a GRU",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".safetensors") else "",
)
def test_files_that_describe_no_valid_layer(tmp_path, name, tensors, config, message):
    path = save_file(tmp_path, name, tensors, config)
    with pytest.raises(ValueError, match=r"^path: ") as info:
        gru.load(path)
    assert name in str(info.value) and message in str(info.value)


def test_npz_whose_configuration_is_not_a_string(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, __gru_config__=np.array([1, 2]), **gru.GRU(I, H, seed=0).state_dict())
    with pytest.raises(ValueError, match=r"^path: .*__gru_config__ is not a string"):
        gru.load(path)


def test_loading_a_directory_is_an_os_error(tmp_path):
    """File-system problems raise the usual OSError subclasses, as open() does (documented in gru._io)."""
    with pytest.raises(IsADirectoryError):
        gru.load(tmp_path)
    pytest.importorskip("onnx")
    with pytest.raises(IsADirectoryError):
        gru.GRU.from_onnx(tmp_path)


@pytest.mark.parametrize("where", ["a directory", "a missing directory"])
def test_failed_saves_leave_nothing_behind(tmp_path, where):
    target = tmp_path / "models"
    target.mkdir()
    (target / "keep.txt").write_text("untouched")
    path = target if where == "a directory" else tmp_path / "nothing" / "m.safetensors"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(OSError):
        gru.GRU(I, H, seed=0).save(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no temporary or half-written file
    assert (target / "keep.txt").read_text() == "untouched"


@pytest.mark.parametrize(
    ("call", "kind", "argument", "needs_onnx"),
    [
        (lambda m, p: m.save(bytes(str(p), "utf-8")), TypeError, "path", False),
        (lambda m, p: gru.load(bytes(str(p), "utf-8")), TypeError, "path", False),
        (lambda m, p: m.to_onnx(42), TypeError, "path", True),
        (lambda m, p: m.to_onnx(opset=13), ValueError, "opset", True),
        (lambda m, p: m.to_onnx(opset="17"), TypeError, "opset", True),
        (lambda m, p: m.to_onnx(initial_state="yes"), TypeError, "initial_state", True),
        (lambda m, p: m.to_onnx(lengths=1), TypeError, "lengths", True),
    ],
    ids=["save-bytes-path", "load-bytes-path", "to_onnx-path", "opset-low", "opset-str", "initial_state", "lengths"],
)
def test_bad_save_and_export_arguments(tmp_path, call, kind, argument, needs_onnx):
    if needs_onnx:
        pytest.importorskip("onnx")
    path = tmp_path / "m.safetensors"
    with raises(kind, argument):
        call(gru.GRU(I, H, seed=0), path)
    assert not path.exists()


# -- the ONNX importer: GRU.from_onnx ---------------------------------------------------------


def _external(tensor):
    """Mark a tensor's data as kept in a file outside the model's folder."""
    from onnx import TensorProto

    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../elsewhere.bin"


def onnx_model(
    *, W=None, R=None, Bias=None, inputs=("x", "W", "R"), attrs=None, before=(), extra=None, domain="", damage=None
):
    """One GRU node reading graph input x (through the nodes ``before``); weights are initializers.

    ``damage``, when given, is applied to W's initializer.
    """
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    W = rng.standard_normal((1, 3 * H, I)).astype("float32") if W is None else W
    R = rng.standard_normal((1, 3 * H, H)).astype("float32") if R is None else R
    constants = {"W": W, "R": R, "B": Bias, **(extra or {})}
    inits = [numpy_helper.from_array(value, name) for name, value in constants.items() if value is not None]
    if damage is not None:
        damage(inits[0])
    node = helper.make_node("GRU", list(inputs), ["Y", "Y_h"], domain=domain, **{"hidden_size": H, **(attrs or {})})
    graph = helper.make_graph(
        [*before, node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", I])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return onnx, helper.make_model(graph, opset_imports=opsets)


def node(op, inputs, outputs, **attrs):
    from onnx import helper

    return helper.make_node(op, inputs, outputs, **attrs)


BAD_ONNX = {
    "W-rank-2": (lambda: onnx_model(W=f32(3 * H, I)), "W of GRU node"),
    "W-directions": (lambda: onnx_model(W=f32(2, 3 * H, I)), "expected [1, 3*hidden_size"),
    "hidden_size-attribute": (lambda: onnx_model(W=f32(1, 15, I), R=f32(1, 15, 5)), "says hidden_size=4"),
    "B-length": (lambda: onnx_model(Bias=f32(1, 5 * H), inputs=("x", "W", "R", "B")), "B: expected shape"),
    "W-R-mismatch": (lambda: onnx_model(W=f32(1, 3 * H + 3, I)), "are inconsistent"),
    "no-R": (lambda: onnx_model(inputs=("x", "W")), "lacks its W or R"),
    "empty-R": (lambda: onnx_model(inputs=("x", "W", "")), "lacks its W or R"),
    "constant-lengths": (
        lambda: onnx_model(inputs=("x", "W", "R", "", "L"), extra={"L": np.array([T, T], np.int32)}),
        "sequence_lens of GRU node",
    ),
    "constant-h0": (
        lambda: onnx_model(inputs=("x", "W", "R", "", "", "h"), extra={"h": np.ones((1, B, H), "float32")}),
        "initial_h of GRU node",
    ),
    "input-is-a-constant": (lambda: onnx_model(inputs=("c", "W", "R"), extra={"c": f32(T, B, I)}), "a constant"),
    "input-through-Relu": (
        lambda: onnx_model(inputs=("r", "W", "R"), before=[node("Relu", ["x"], ["r"])]),
        "comes from Relu node",
    ),
    "bad-perm": (
        lambda: onnx_model(inputs=("t", "W", "R"), before=[node("Transpose", ["x"], ["t"], perm=[0, 0, 1])]),
        "has perm [0, 0, 1]",
    ),
    "features-moved": (
        lambda: onnx_model(inputs=("t", "W", "R"), before=[node("Transpose", ["x"], ["t"], perm=[2, 0, 1])]),
        "with its axes moved",
    ),
    "direction-unknown": (lambda: onnx_model(attrs={"direction": "sideways"}), "direction='sideways'"),
    "layout-2": (lambda: onnx_model(attrs={"layout": 2}), "layout=2"),
    "other-domain": (lambda: onnx_model(domain="com.example"), "com.example.GRU"),
    "integer-W": (lambda: onnx_model(W=np.ones((1, 3 * H, I), np.int32)), "has dtype int32"),
    "float-hidden_size": (lambda: onnx_model(attrs={"hidden_size": 4.0}), "hidden_size=4.0"),
    "float-layout": (lambda: onnx_model(attrs={"layout": 1.0}), "layout=1.0"),
    "unknown-data-type": (lambda: onnx_model(damage=lambda t: setattr(t, "data_type", 84)), "cannot be read"),
    "external-data": (lambda: onnx_model(damage=_external), "keeps its data in an external file"),
}


@pytest.mark.parametrize("case", sorted(BAD_ONNX))
def test_onnx_models_gru_cannot_read_are_refused_with_the_reason(case):
    make, message = BAD_ONNX[case]
    _, model = make()
    with pytest.raises(ValueError, match=r"^model: ") as info:
        gru.GRU.from_onnx(model)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("source", "kind", "argument"),
    [
        ("truncated", ValueError, "path_or_model"),
        ("text file", ValueError, "path_or_model"),
        (None, TypeError, "path_or_model"),
        ([1, 2], TypeError, "path_or_model"),
    ],
)
def test_onnx_sources_that_are_not_models(tmp_path, source, kind, argument):
    pytest.importorskip("onnx")
    if source == "truncated":
        source = gru.GRU(I, H, seed=0).to_onnx().SerializeToString()[:100]
    elif source == "text file":
        source = tmp_path / "model.onnx"
        source.write_text("not a model")
    with raises(kind, argument):
        gru.GRU.from_onnx(source)


@pytest.mark.parametrize(
    ("kwargs", "kind", "argument"), [({"dtype": "int8"}, TypeError, "dtype"), ({"backend": 3}, TypeError, "backend")]
)
def test_bad_from_onnx_arguments(kwargs, kind, argument):
    _, model = onnx_model()
    with raises(kind, argument):
        gru.GRU.from_onnx(model, **kwargs)


# -- the compiled kernels' entry points ---------------------------------------------------------
# The API never sends them inconsistent buffers (it validates everything first); called directly,
# they must refuse with a ValueError/TypeError, not read or write out of bounds.


def kernel_forward_args(T_=4, B_=3, I_=5, H_=16):
    rng = np.random.default_rng(0)
    w_ih_t = rng.standard_normal((I_, 3 * H_))
    w_hh = rng.standard_normal((3 * H_, H_))
    panels = np.zeros((3 * H_, H_))
    kernels().pack_panels(w_hh, 1, panels, True)
    return {
        "x": rng.standard_normal((T_, B_, I_)),
        "w_ih_t": w_ih_t,
        "w_ih": np.ascontiguousarray(w_ih_t.T),
        "w_hh": w_hh,
        "bias": np.zeros(3 * H_),
        "b_hn": np.zeros(H_),
        "lengths": np.array([T_, 2, 1], np.int64)[:B_],
        "order": np.arange(B_, dtype=np.int64),
        "reverse": False,
        "reset_after": True,
        "output": np.zeros((T_, B_, H_)),
        "h_n": np.zeros((B_, H_)),
        "gates": np.zeros((3, T_, B_, H_)),
        "hn": np.zeros((T_, B_, H_)),
        "workspace": np.zeros((kernels().workspace_rows(T_, B_, I_, H_, 8, False, 1, 1), 3 * H_)),
        "panels": panels,
        "panels_team": 1,
        "panels_w_rows": True,
        "own_panels": np.zeros((3 * H_, H_)),
        "threads": 1,
    }


def kernel_backward_args():
    f = kernel_forward_args()
    T_, B_, I_ = f["x"].shape
    H_ = f["h_n"].shape[1]
    kernels().run_direction(*f.values())
    return {
        "x": f["x"],
        "h0": np.zeros((B_, H_)),
        "w_ih": np.ascontiguousarray(f["w_ih_t"].T),
        "w_hh": f["w_hh"],
        "w_hh_t": np.ascontiguousarray(f["w_hh"].T),
        "lengths": f["lengths"],
        "order": f["order"],
        "reverse": False,
        "reset_after": True,
        "output": f["output"],
        "gates": f["gates"],
        "hn": f["hn"],
        "d_output": np.ones((T_, B_, H_)),
        "d_h_n": np.zeros((B_, H_)),
        "d_x": np.zeros((T_, B_, I_)),
        "d_h0": np.zeros((B_, H_)),
        "d_w_ih": np.zeros((3 * H_, I_)),
        "d_w_hh": np.zeros((3 * H_, H_)),
        "d_b_ih": np.zeros(3 * H_),
        "d_b_hh": np.zeros(3 * H_),
        "workspace": np.zeros((8 * T_ * B_ + 4 * B_, H_)),
        "bias_sums": np.zeros(12 * H_),
        "threads": 1,
    }


def kernels():
    try:
        gru.get_backend("cython")
    except gru.BackendError as exc:
        pytest.skip(f"cython backend unavailable: {exc}")
    from gru.backends.cython import _kernels

    return _kernels


KERNEL_FORWARD_CASES = {
    "workspace-short": ({"workspace": np.zeros((3, 48))}, ValueError, "workspace"),
    "panels-short": ({"panels": np.zeros((4, 16))}, ValueError, "panels"),
    "own_panels-short": ({"own_panels": np.zeros((4, 16))}, ValueError, "own_panels"),
    "lengths-increasing": ({"lengths": np.array([1, 2, 4], np.int64)}, ValueError, "lengths"),
    "lengths-past-T": ({"lengths": np.array([9, 2, 1], np.int64)}, ValueError, "lengths"),
    "lengths-negative": ({"lengths": np.array([4, 2, -1], np.int64)}, ValueError, "lengths"),
    "lengths-count": ({"lengths": np.array([4, 2], np.int64)}, ValueError, "lengths"),
    "order-repeats": ({"order": np.array([0, 0, 2], np.int64)}, ValueError, "order"),
    "order-out-of-range": ({"order": np.array([0, 1, 3], np.int64)}, ValueError, "order"),
    "output-shape": ({"output": np.zeros((4, 3, 15))}, ValueError, "output"),
    "output-strided": ({"output": np.zeros((4, 3, 32))[:, :, ::2]}, ValueError, "output"),
    "h_n-shape": ({"h_n": np.zeros((2, 16))}, ValueError, "h_n"),
    "gates-shape": ({"gates": np.zeros((3, 4, 3, 15))}, ValueError, "gates"),
    "hn-shape": ({"hn": np.zeros((3, 3, 16))}, ValueError, "hn"),
    "w_ih_t-shape": ({"w_ih_t": np.zeros((4, 48))}, ValueError, "w_ih_t"),
    "w_ih-shape": ({"w_ih": np.zeros((48, 4))}, ValueError, "w_ih:"),
    "w_hh-shape": ({"w_hh": np.zeros((47, 16))}, ValueError, "w_hh"),
    "bias-length": ({"bias": np.zeros(47)}, ValueError, "bias"),
    "b_hn-length": ({"b_hn": np.zeros(17)}, ValueError, "b_hn"),
    "w_hh-none": ({"w_hh": None}, TypeError, "Argument 'w_hh' must not be None"),
    "x-not-contiguous": ({"x": np.zeros((3, 4, 5)).transpose(1, 0, 2)}, ValueError, "ndarray is not C-contiguous"),
}


KERNEL_BACKWARD_CASES = {
    "workspace-short": ({"workspace": np.zeros((10, 16))}, ValueError, "workspace"),
    "bias_sums-short": ({"bias_sums": np.zeros(12 * 16 - 1)}, ValueError, "bias_sums"),
    "gates-none": ({"gates": None}, TypeError, "Argument 'gates'"),
    "hn-missing": ({"hn": None}, ValueError, "hn"),
    "d_output-shape": ({"d_output": np.ones((4, 3, 17))}, ValueError, "d_output"),
    "d_output-strided": ({"d_output": np.ones((4, 3, 32))[:, :, ::2]}, ValueError, "d_output"),
    "d_x-shape": ({"d_x": np.zeros((4, 3, 6))}, ValueError, "d_x"),
    "d_w_hh-shape": ({"d_w_hh": np.zeros((48, 17))}, ValueError, "d_w_hh"),
    "w_hh_t-shape": ({"w_hh_t": np.zeros((48, 16))}, ValueError, "w_hh_t"),
    "d_b_ih-length": ({"d_b_ih": np.zeros(3)}, ValueError, "d_b_ih"),
    "h0-shape": ({"h0": np.zeros((4, 16))}, ValueError, "h0"),
    "order-repeats": ({"order": np.array([1, 1, 2], np.int64)}, ValueError, "order"),
}


KERNEL_CASES = {
    f"{kernel}-{case}": (kernel, consistent_args, *spec)
    for kernel, consistent_args, cases in [
        ("run_direction", kernel_forward_args, KERNEL_FORWARD_CASES),
        ("backward_direction", kernel_backward_args, KERNEL_BACKWARD_CASES),
    ]
    for case, spec in cases.items()
}


@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_compiled_kernels_refuse_inconsistent_buffers(case):
    kernel, consistent_args, change, kind, name = KERNEL_CASES[case]
    call = getattr(kernels(), kernel)
    with pytest.raises(kind, match=rf"^{name}"):
        call(*(consistent_args() | change).values())
    call(*consistent_args().values())  # and the consistent call runs
