"""The bad-input catalogue: every malformed call raises ValueError or TypeError naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import gru
from gru import _registry

I, H, T, B = 3, 4, 5, 2


@pytest.fixture(autouse=True)
def no_env_backend(monkeypatch):
    monkeypatch.delenv("GRU_BACKEND", raising=False)


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
    ({"dropout": 1.0}, ValueError, "dropout"),
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


@pytest.mark.parametrize(("threads", "kind"), [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("4", TypeError)])
def test_bad_threads(layer, threads, kind):
    with raises(kind, "threads"):
        layer(arr(T, B, I), threads=threads)
