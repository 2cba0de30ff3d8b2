"""Extreme numbers on every CPU backend, forward and backward.

What must hold:

* inputs and weights up to ±1e4 (pre-activations up to ~1e9): no overflow, no
  floating-point warning, no NaN, and the float64 oracle's answer (its
  sigmoid is math.exp in the stable form, so it is exact there);
* saturated gates (``clip``-like: z ≡ 1 holds the state bit-exactly, z ≡ 0
  with n ≡ 1 pins it to 1) give exact values, no NaN, and zero gradients
  through the saturated gates;
* denormals (1e-40 in float32, 1e-310 in float64) in inputs, weights and h0:
  no warning, the oracle's answer;
* NaN in an input (x at a valid step, or h0) makes exactly what the maths
  makes NaN: that sequence's outputs from that step on (back to step 0 for
  the reverse direction), its h_n and the gradients it touches; every other
  sequence is bit-identical to a run without the NaN;
* ±inf at a valid step saturates the gates it reaches (finite outputs, the
  oracle's answer); NaN or ±inf in the padding past a sequence's length
  changes nothing at all, forward or backward.

Every backend call runs with warnings as errors and NumPy's floating-point
errors (overflow, divide, invalid) raised, so a spurious warning fails.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest

import gru
from gru.testing._support import EACH_DTYPE, EACH_VARIANT, oracle_for, oracle_gradients_for

CPU_BACKENDS = [info.name for info in gru.list_backends() if info.available and info.capabilities.device == "cpu"]
DTYPES = ("float32", "float64")
TINY = {"float32": 1e-40, "float64": 1e-310}  # denormal in each precision
I, H, T, B, L = 5, 8, 7, 4, 2


def _training(backend: str) -> bool:
    return gru.get_backend(backend).capabilities.training


@contextlib.contextmanager
def strict():
    """Any warning is an error, and so is any NumPy overflow, division by zero or invalid operation."""
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        yield


def _layer(backend, dtype, *, reset_after=True, bidirectional=True, num_layers=L, seed=0, **kw):
    return gru.GRU(
        I,
        H,
        num_layers,
        bidirectional=bidirectional,
        reset_after=reset_after,
        dtype=dtype,
        backend=backend,
        seed=seed,
        **kw,
    )


def _set_params(layer, make):
    """Replace every parameter with ``make(name, shape)`` (cast to the layer's dtype)."""
    layer.load_state_dict({k: np.asarray(make(k, v.shape)).astype(layer.dtype) for k, v in layer.state_dict().items()})


def _run(layer, x, h0=None, lengths=None, d_output=None, d_h_n=None):
    """Forward (training mode where the backend has it) and backward, all under :func:`strict`.

    Returns a dict of float64 arrays: output, h_n, and, when training, d_x, d_h0 and d_<param>.
    """
    train = _training(layer.backend)
    with strict():
        output, h_n = layer(x, h0, lengths, train=train)
        result = {"output": np.asarray(output), "h_n": np.asarray(h_n)}
        if train:
            grads = layer.backward(d_output, d_h_n)
            result["d_x"] = np.asarray(grads.input)
            result["d_h0"] = np.asarray(grads.h0)
            result.update({f"d_{k}": np.asarray(v) for k, v in grads.params.items()})
    return result


def _oracle(layer, x, h0, lengths, d_output, d_h_n, *, backward=True):
    """The oracle's output, h_n and gradients (float64; its own warnings are not the backend's)."""
    with np.errstate(all="ignore"):
        output, h_n, _ = oracle_for(layer, x, h0, lengths)
        result = {"output": output, "h_n": h_n}
        if backward:
            d_x, d_h0, d_params = oracle_gradients_for(layer, x, d_output, d_h_n, h0, lengths)
            result.update(d_x=d_x, d_h0=d_h0, **{f"d_{k}": v for k, v in d_params.items()})
    return result


def _data(dtype, seed=1, x_scale=1.0):
    rng = np.random.default_rng(seed)
    x = (x_scale * rng.uniform(-1, 1, (T, B, I))).astype(dtype)
    h0 = rng.uniform(-1, 1, (2 * L, B, H)).astype(dtype)
    d_output = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    d_h_n = rng.standard_normal((2 * L, B, H)).astype(dtype)
    return x, h0, d_output, d_h_n


def _assert_matches_oracle(got, expected, dtype, atol, names=None):
    for name in names or got:
        assert got[name].dtype == np.dtype(dtype), name
        assert np.isfinite(got[name]).all(), f"{name}: NaN or inf where the maths has none"
        np.testing.assert_allclose(got[name], expected[name], rtol=atol, atol=atol, err_msg=name)


# --- large inputs and weights ---------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
@EACH_VARIANT
@pytest.mark.parametrize(("x_scale", "w_scale"), [(1e4, 1.0), (1.0, 1e4), (1e4, 1e4)], ids=["x", "w", "xw"])
def test_inputs_and_weights_up_to_1e4(backend, dtype, reset_after, x_scale, w_scale):
    """Pre-activations up to ~1e9 saturate the gates: finite, no warning, the oracle's answer."""
    layer = _layer(backend, dtype, reset_after=reset_after)
    rng = np.random.default_rng(2)
    _set_params(layer, lambda name, shape: w_scale * rng.uniform(-1, 1, shape))
    x, h0, d_output, d_h_n = _data(dtype, x_scale=x_scale)
    lengths = [T, 3, 0, T - 1]
    got = _run(layer, x, h0, lengths, d_output, d_h_n)
    expected = _oracle(layer, x, h0, lengths, d_output, d_h_n, backward="d_x" in got)
    # |h| stays within max(1, |h0|): h_t is a convex mix of tanh's value and h_{t-1}
    assert np.abs(got["output"]).max() <= 1.0
    atol = 1e-4 if dtype == "float32" else 1e-9
    _assert_matches_oracle(got, expected, dtype, atol)


# --- saturated gates ----------------------------------------------------------------------


def _saturate(layer, *, z_bias, n_bias=0.0):
    """Unit-scale weights, with the update gate's (and the candidate's) input bias at ±1e4."""

    def make(name, shape):
        value = np.random.default_rng(len(name)).uniform(-0.5, 0.5, shape)
        if name.startswith("bias_ih"):
            value[H : 2 * H] = z_bias
            value[2 * H :] = n_bias
        return value

    _set_params(layer, make)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
@EACH_VARIANT
def test_update_gate_saturated_at_one_holds_the_state_exactly(backend, dtype, reset_after):
    """z ≡ 1: h_t = 0·n_t + 1·h_{t-1} exactly, so every output is h0; no gradient reaches any weight."""
    layer = _layer(backend, dtype, reset_after=reset_after, bidirectional=False, num_layers=1)
    _saturate(layer, z_bias=1e4)
    x, h0, d_output, d_h_n = _data(dtype, x_scale=1e3)
    h0, d_output, d_h_n = h0[:1], d_output[..., :H], d_h_n[:1]
    lengths = [T, 3, 0, 1]
    got = _run(layer, x, h0, lengths, d_output, d_h_n)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(got["output"][:n, b], np.broadcast_to(h0[0, b], (n, H)))
        np.testing.assert_array_equal(got["output"][n:, b], 0)
    np.testing.assert_array_equal(got["h_n"], h0)
    if "d_x" in got:
        # d h0 = d h_n + the output gradients of every valid step; nothing else
        valid = (np.arange(T)[:, None] < np.array(lengths))[:, :, None]
        expected_d_h0 = d_h_n[0].astype(np.float64) + np.sum(np.where(valid, d_output, 0), axis=0, dtype=np.float64)
        np.testing.assert_allclose(got["d_h0"][0], expected_d_h0, rtol=1e-6 if dtype == "float32" else 1e-14)
        for name, value in got.items():
            if name.startswith("d_") and name != "d_h0":
                np.testing.assert_array_equal(value, 0, err_msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
@EACH_VARIANT
def test_update_gate_saturated_at_zero_pins_the_state_to_the_candidate(backend, dtype, reset_after):
    """z ≡ 0 and n ≡ 1 (b_in = 1e4): h_t = 1 exactly from the first step, in every layer and direction."""
    layer = _layer(backend, dtype, reset_after=reset_after)
    _saturate(layer, z_bias=-1e4, n_bias=1e4)
    x, h0, d_output, d_h_n = _data(dtype)
    lengths = [T, 3, 0, 1]
    got = _run(layer, x, h0, lengths, d_output, d_h_n)
    valid = (np.arange(T)[:, None] < np.array(lengths))[:, :, None]
    np.testing.assert_array_equal(got["output"], np.where(valid, 1.0, 0.0) * np.ones(2 * H))
    np.testing.assert_array_equal(got["h_n"][:, [0, 1, 3]], 1.0)
    np.testing.assert_array_equal(got["h_n"][:, 2], h0[:, 2])  # length 0: h_n = h0
    if "d_x" in got:
        for name, value in got.items():
            assert np.isfinite(value).all(), name
        # nothing reaches h0 of a sequence that took a step (z = 0 cuts h_{t-1} off), nor x, nor the weights.
        # "Nothing" within 1e-30: a float32 sigmoid may give σ(-1e4) = 6e-39 (a fast exp clamped to
        # stay normal) instead of 0, and so gradients of that size.
        np.testing.assert_allclose(got["d_h0"][:, [0, 1, 3]], 0, rtol=0, atol=1e-30)
        np.testing.assert_array_equal(got["d_h0"][:, 2], d_h_n[:, 2])
        for name, value in got.items():
            if name.startswith("d_") and name != "d_h0":
                np.testing.assert_allclose(value, 0, rtol=0, atol=1e-30, err_msg=name)


# --- denormals --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
@EACH_VARIANT
@pytest.mark.parametrize("where", ["inputs", "weights", "everything"])
def test_denormals(backend, dtype, reset_after, where):
    """Denormal inputs, h0 and/or weights: no warning, finite, the oracle's answer."""
    tiny = TINY[dtype]
    assert 0 < np.array(tiny, dtype) < np.finfo(dtype).smallest_normal  # really a denormal
    layer = _layer(backend, dtype, reset_after=reset_after)
    if where in ("weights", "everything"):
        rng = np.random.default_rng(3)
        _set_params(layer, lambda name, shape: tiny * rng.integers(-3, 4, shape))
    x, h0, d_output, d_h_n = _data(dtype)
    if where in ("inputs", "everything"):
        rng = np.random.default_rng(4)
        x = (tiny * rng.integers(-3, 4, x.shape)).astype(dtype)
        h0 = (tiny * rng.integers(-3, 4, h0.shape)).astype(dtype)
    lengths = [T, 2, 0, T]
    got = _run(layer, x, h0, lengths, d_output, d_h_n)
    expected = _oracle(layer, x, h0, lengths, d_output, d_h_n, backward="d_x" in got)
    atol = 1e-5 if dtype == "float32" else 1e-12
    _assert_matches_oracle(got, expected, dtype, atol)


# --- NaN and inf ------------------------------------------------------------------------------


def _clean_and_dirty(backend, dtype, spoil, *, bidirectional, num_layers, lengths, reset_after=True):
    """Run the same layer on clean data and on copies that ``spoil(x, h0, d_output)`` writes into."""
    layer = _layer(backend, dtype, reset_after=reset_after, bidirectional=bidirectional, num_layers=num_layers)
    D = 1 + bidirectional
    x, h0, d_output, d_h_n = _data(dtype)
    h0, d_output, d_h_n = h0[: num_layers * D], d_output[..., : D * H], d_h_n[: num_layers * D]
    clean = _run(layer, x, h0, lengths, d_output, d_h_n)
    dirty = x.copy(), h0.copy(), d_output.copy()
    spoil(*dirty)
    spoilt = _run(layer, *dirty[:2], lengths, dirty[2], d_h_n)
    return clean, spoilt


def _assert_other_sequences_untouched(clean, spoilt, b0):
    """Every array with a batch axis is bit-identical to the clean run outside sequence ``b0``."""
    others = [b for b in range(B) if b != b0]
    for name in ("output", "d_x"):  # batch on axis 1
        if name in clean:
            np.testing.assert_array_equal(spoilt[name][:, others], clean[name][:, others], err_msg=name)
    for name in ("h_n", "d_h0"):
        if name in clean:
            np.testing.assert_array_equal(spoilt[name][:, others], clean[name][:, others], err_msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
@EACH_VARIANT
def test_nan_in_x_propagates_forward_in_time_only(backend, dtype, reset_after):
    """One layer, forward direction: NaN at step t0 of sequence b0 makes its outputs t0..length-1 NaN."""
    b0, t0, lengths = 1, 2, [T, 5, 3, T]
    clean, spoilt = _clean_and_dirty(
        backend,
        dtype,
        lambda x, h0, d_output: x.__setitem__((t0, b0, 0), np.nan),
        bidirectional=False,
        num_layers=1,
        lengths=lengths,
        reset_after=reset_after,
    )
    out = spoilt["output"][:, b0]
    np.testing.assert_array_equal(out[:t0], clean["output"][:t0, b0])  # before the NaN: untouched
    assert np.isnan(out[t0 : lengths[b0]]).all()
    np.testing.assert_array_equal(out[lengths[b0] :], 0)  # padding stays zero
    assert np.isnan(spoilt["h_n"][:, b0]).all()
    _assert_other_sequences_untouched(clean, spoilt, b0)
    if "d_x" in spoilt:
        assert np.isnan(spoilt["d_x"][: lengths[b0], b0]).any()
        np.testing.assert_array_equal(spoilt["d_x"][lengths[b0] :, b0], 0)
        assert np.isnan(spoilt["d_weight_hh_l0"]).any()  # the sum over the batch has the NaN in it


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
def test_nan_in_x_reaches_both_ends_through_the_reverse_direction(backend, dtype):
    """Bidirectional: forward half NaN from t0 on, reverse half NaN up to t0; a second layer: all of it."""
    b0, t0, lengths = 2, 2, [T, 5, 5, 0]
    for num_layers in (1, 2):
        clean, spoilt = _clean_and_dirty(
            backend,
            dtype,
            lambda x, h0, d_output: x.__setitem__((t0, b0, 3), np.nan),
            bidirectional=True,
            num_layers=num_layers,
            lengths=lengths,
        )
        out = spoilt["output"][:, b0]
        n = lengths[b0]
        if num_layers == 1:
            np.testing.assert_array_equal(out[:t0, :H], clean["output"][:t0, b0, :H])
            assert np.isnan(out[t0:n, :H]).all()
            assert np.isnan(out[: t0 + 1, H:]).all()
            np.testing.assert_array_equal(out[t0 + 1 : n, H:], clean["output"][t0 + 1 : n, b0, H:])
        else:
            assert np.isnan(out[:n]).all()
        np.testing.assert_array_equal(out[n:], 0)
        assert np.isnan(spoilt["h_n"][-2:, b0]).all()
        _assert_other_sequences_untouched(clean, spoilt, b0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
def test_nan_in_h0_stays_in_its_sequence(backend, dtype):
    """NaN in h0 of sequence b0: its outputs are NaN, every other sequence's are not touched."""
    b0, lengths = 0, [T, 5, 3, T]
    clean, spoilt = _clean_and_dirty(
        backend,
        dtype,
        lambda x, h0, d_output: h0.__setitem__((0, b0, 1), np.nan),
        bidirectional=False,
        num_layers=2,
        lengths=lengths,
    )
    assert np.isnan(spoilt["output"][: lengths[b0], b0]).all()
    _assert_other_sequences_untouched(clean, spoilt, b0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
@EACH_VARIANT
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_values_past_the_length_change_nothing(backend, dtype, reset_after, bad):
    """Padding is not part of a sequence: NaN or inf there leaves every result bit-identical.

    In x and in d_output past each length, and in h0 of a length-0 sequence
    (which only passes through to h_n).
    """
    lengths = [T, 3, 0, 5]

    def spoil(x, h0, d_output):
        for b, n in enumerate(lengths):
            x[n:, b] = bad
            d_output[n:, b] = bad
        h0[:, 2] = bad

    clean, spoilt = _clean_and_dirty(
        backend, dtype, spoil, bidirectional=True, num_layers=2, lengths=lengths, reset_after=reset_after
    )
    for name, value in spoilt.items():
        if name == "h_n":
            np.testing.assert_array_equal(value[:, [0, 1, 3]], clean[name][:, [0, 1, 3]])
            np.testing.assert_array_equal(value[:, 2], np.full_like(value[:, 2], bad))  # length 0: h_n = h0
        else:
            np.testing.assert_array_equal(value, clean[name], err_msg=name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@EACH_DTYPE
@EACH_VARIANT
@pytest.mark.parametrize("bad", [np.inf, -np.inf], ids=["inf", "-inf"])
def test_infinite_input_saturates_the_gates(backend, dtype, reset_after, bad):
    """±inf in one feature of a valid step drives every gate it reaches to 0 or 1: outputs stay finite.

    The gradients match the oracle's, except d weight_ih: its column for that
    feature is d_pre · x = 0 · inf, NaN by IEEE (NumPy says "invalid value"),
    so neither its value nor that one warning is checked.
    """
    layer = _layer(backend, dtype, reset_after=reset_after, bidirectional=True, num_layers=1)
    x, h0, d_output, d_h_n = _data(dtype)
    h0, d_h_n = h0[:2], d_h_n[:2]
    x[3, 1, 2] = bad
    lengths = [T, 5, 0, T]
    train = _training(backend)
    with strict():
        output, h_n = layer(x, h0, lengths, train=train)
    got = {"output": np.asarray(output), "h_n": np.asarray(h_n)}
    if train:
        with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="ignore"):
            warnings.simplefilter("error")
            grads = layer.backward(d_output, d_h_n)
        got.update(d_x=grads.input, d_h0=grads.h0)
        got.update({f"d_{k}": v for k, v in grads.params.items() if not k.startswith("weight_ih")})
    expected = _oracle(layer, x, h0, lengths, d_output, d_h_n, backward=train)
    # float32 sigmoid(-inf) may be 6e-39 instead of 0 in a fast exp: tiny, absolute tolerance covers it
    _assert_matches_oracle(got, expected, dtype, 1e-4 if dtype == "float32" else 1e-10)


# --- gradient clipping on extreme gradients ----------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [(dtype, m) for dtype in DTYPES for m in (1e-30, 1.0, 1e30, 1e200) if m < float(np.finfo(dtype).max)],
    ids=lambda v: f"{v:g}" if isinstance(v, float) else v,
)
def test_clip_grad_norm_on_extreme_gradients(dtype, magnitude):
    """clip_grad_norm keeps the direction and brings the norm to max_norm, however large the gradients."""
    from gru.train import clip_grad_norm

    rng = np.random.default_rng(5)
    grads = [{"a": (magnitude * rng.standard_normal((3, 4))).astype(dtype)}, {"b": np.full(5, magnitude, dtype)}]
    exact = np.sqrt(sum(np.sum((g.astype(np.float64) / magnitude) ** 2) for d in grads for g in d.values()))
    with strict():
        clipped, norm = clip_grad_norm(grads, 1.0)
    assert np.isfinite(norm)
    np.testing.assert_allclose(norm / magnitude, exact, rtol=1e-12)
    for before, after in zip(grads, clipped, strict=True):
        for k in before:
            assert after[k].dtype == np.dtype(dtype)
            assert np.isfinite(after[k]).all()
            if norm > 1.0:  # scaled down by one factor, as torch's: max_norm / (norm + 1e-6); direction kept
                expected = before[k].astype(np.float64) / magnitude / (exact + 1e-6 / magnitude)
                np.testing.assert_allclose(after[k], expected, rtol=1e-5 if dtype == "float32" else 1e-12)
            else:
                np.testing.assert_array_equal(after[k], before[k])


# --- the gate activations over the whole range -------------------------------------------------

# pre-activations from tiny (where tanh must keep its relative accuracy) through the reduction's
# edges (|r| near ln(2) / 2), to past a branch-free exp's clamp (708) and infinity
_SPOT_VALUES = [
    0.0,
    1e-300,
    -1e-300,
    1e-200,
    1e-20,
    -1e-20,
    1e-8,
    -1e-8,
    1e-3,
    0.1,
    -0.1,
    0.3465,
    -0.3466,
    0.5,
    -0.5,
    1.0,
    -1.0,
    3.0,
    -3.0,
    10.0,
    -10.0,
    25.97,
    -25.97,
    36.0,
    -36.0,
    100.0,
    -100.0,
    354.0,
    -354.5,
    700.0,
    -700.0,
    707.9,
    -707.9,
    708.0,
    -708.0,
    708.5,
    -708.5,
    709.0,
    -709.0,
    745.0,
    -745.0,
    800.0,
    -800.0,
    1e10,
    -1e10,
    1e308,
    -1e308,
    math.inf,
    -math.inf,
    math.nan,
]


def _pre_activations() -> np.ndarray:
    rng = np.random.default_rng(11)
    magnitudes = 10.0 ** rng.uniform(-320, 3, 1500)
    nans = np.array([0x7FF8000000000ABC, 0xFFF8000000000000], dtype=np.uint64).view(np.float64)  # payload, -NaN
    return np.concatenate([_SPOT_VALUES, nans, rng.uniform(-40, 40, 1500), magnitudes * rng.choice([-1.0, 1.0], 1500)])


def _math_sigmoid(v: float) -> float:
    if math.isnan(v):
        return math.nan
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


UNITS = 37  # a gate pass over 37 units runs whole vectors and a remainder, with 4, 8 or 16 lanes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gate_activations_match_math_over_the_whole_range(backend, dtype):
    """r = z = sigmoid(v) and n = tanh(v), v each pre-activation: within 4 ulps of math's in float64.

    One input, 37 units, W_ih = 1, W_hh = 0, no bias, h0 = 0: every unit of
    each sequence's only step has pre-activation x in all three gates (one
    value per sequence: a product spreading one value over the units would
    turn another's inf into NaN), so the gate trace is the activations
    themselves, in whole vectors and a remainder. float64 must hold its
    relative accuracy for tiny arguments too, down to denormals (tanh(1e-300)
    = 1e-300); a sigmoid's value below 3.3e-308 (v < -708) may come out 0.
    float32 keeps its own, looser bound (an absolute 2e-7, as a fast exp's
    tanh gives, on top of 1e-6 relative).
    """
    with np.errstate(over="ignore"):  # 1e308 is inf in float32
        values = _pre_activations().astype(dtype)
    layer = gru.GRU(1, UNITS, bias=False, dtype=dtype, backend=backend, seed=0)
    _set_params(layer, lambda name, shape: np.ones(shape) if "ih" in name else np.zeros(shape))
    with strict():
        *_, trace = layer(values.reshape(1, -1, 1), return_gates=True)
    r, z, n = (np.asarray(g, dtype=np.float64).reshape(values.size, UNITS) for g in trace)
    exact = values.astype(np.float64)
    want_sigmoid = np.array([[_math_sigmoid(v)] for v in exact])  # the same for every unit
    want_tanh = np.array([[math.tanh(v)] for v in exact])
    if dtype == "float64":
        # relative everywhere for tanh (a denormal's last bit is its ulp); for a sigmoid, below 3.3e-308 (see
        # above), and the reference's, 0.5 (1 + tanh(v / 2)), is accurate to half an ulp of 1, not relatively,
        # for large negative v
        rtol, atol = 4 * np.finfo(np.float64).eps, np.finfo(np.float64).smallest_subnormal
        sigmoid_atol = np.finfo(np.float64).eps / 2 if backend == "numpy" else 3.4e-308
    else:
        rtol, atol, sigmoid_atol = 1e-6, 2e-7, 2e-7
    for name, got, want, tol in (
        ("r", r, want_sigmoid, sigmoid_atol),
        ("z", z, want_sigmoid, sigmoid_atol),
        ("n", n, want_tanh, atol),
    ):
        want = np.broadcast_to(want, got.shape)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=tol, equal_nan=True, err_msg=f"{name}, {dtype}")
