"""Training: gradients through time, for every backend that declares training.

Each backend's gradients are checked against the oracle's hand-written
backpropagation (:func:`gru.testing.oracle.oracle_backward`), which is itself
checked against central finite differences of the oracle's forward pass.
The loss is L = sum(d_output * output) + sum(d_h_n * h_n), so d_output and
d_h_n are exactly the gradients fed to ``backward``.
"""

from __future__ import annotations

import numpy as np
import pytest

import gru
from gru.testing._support import (
    EACH_DIRECTION,
    EACH_DTYPE,
    EACH_VARIANT,
    assert_gradient_close,
    feature_matrix,
    full_or_mixed_lengths,
    oracle_gradients_for,
    require,
    require_training,
    to_numpy,
    variant_of,
)
from gru.testing.oracle import oracle_backward, oracle_forward

T, B, I, H = 5, 3, 3, 4
MIXED_LENGTHS = [T, 0, 2]


def _loss(params, x, h0, d_output, d_h_n, **config):
    output, h_n, _ = oracle_forward(x, params, h0=h0, **config)
    return float(np.sum(d_output * output) + np.sum(d_h_n * h_n))


@EACH_VARIANT
@EACH_DIRECTION
@full_or_mixed_lengths(MIXED_LENGTHS)
@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "dropout"])
def test_oracle_gradients_match_finite_differences(reset_after, bidirectional, lengths, dropout):
    """Backend-independent: the oracle's backpropagation against its own forward pass."""
    rng = np.random.default_rng(17)
    D, L = 1 + bidirectional, 2
    layer = gru.GRU(I, H, L, bidirectional=bidirectional, reset_after=reset_after, dtype="float64", seed=rng)
    params = layer.state_dict()
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((L * D, B, H))
    d_output = rng.standard_normal((T, B, D * H))
    d_h_n = rng.standard_normal((L * D, B, H))
    masks = [(rng.random((T, B, D * H)) < 0.6) / 0.6] if dropout else None
    config = dict(
        num_layers=L, bidirectional=bidirectional, reset_after=reset_after, lengths=lengths, dropout_masks=masks
    )
    d_x, d_h0, d_params = oracle_backward(x, params, d_output, d_h_n, h0=h0, **config)

    eps = 1e-6

    def numeric(array, index, rebuild):
        plus, minus = array.copy(), array.copy()
        plus[index] += eps
        minus[index] -= eps
        return (rebuild(plus) - rebuild(minus)) / (2 * eps)

    for index in np.ndindex(*x.shape):
        expected = numeric(x, index, lambda a: _loss(params, a, h0, d_output, d_h_n, **config))
        assert abs(d_x[index] - expected) < 1e-7, ("x", index)
    for index in np.ndindex(*h0.shape):
        expected = numeric(h0, index, lambda a: _loss(params, x, a, d_output, d_h_n, **config))
        assert abs(d_h0[index] - expected) < 1e-7, ("h0", index)
    for name, value in params.items():
        for index in list(np.ndindex(*value.shape))[::7]:  # every 7th entry of every parameter
            expected = numeric(
                value, index, lambda a, name=name: _loss({**params, name: a}, x, h0, d_output, d_h_n, **config)
            )
            assert abs(d_params[name][index] - expected) < 1e-7, (name, index)


@feature_matrix(MIXED_LENGTHS)
def test_gradients_match_oracle(
    backend_name, dtype, bias, bidirectional, num_layers, reset_after, lengths, with_h0, batch_first
):
    require_training(backend_name)
    require(backend_name, dtype=dtype, reset_after=reset_after, lengths=lengths is not None)
    rng = np.random.default_rng(hash((bias, bidirectional, num_layers, reset_after, with_h0, batch_first)) % 2**32)
    layer = gru.GRU(
        I,
        H,
        num_layers,
        bias=bias,
        batch_first=batch_first,
        bidirectional=bidirectional,
        reset_after=reset_after,
        dtype=dtype,
        backend=backend_name,
        seed=rng,
    )
    D = layer.num_directions
    x_tbi = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((num_layers * D, B, H)).astype(dtype) if with_h0 else None
    d_out_tbi = rng.standard_normal((T, B, D * H)).astype(dtype)
    d_h_n = rng.standard_normal((num_layers * D, B, H)).astype(dtype)

    def user(a):
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if batch_first else a

    layer(user(x_tbi), h0, lengths, train=True)
    grads = layer.backward(user(d_out_tbi), d_h_n)
    d_x, d_h0, d_params = oracle_gradients_for(layer, x_tbi, d_out_tbi, d_h_n, h0, lengths)

    assert_gradient_close(grads.input, user(d_x), dtype, "d input")
    assert_gradient_close(grads.h0, d_h0, dtype, "d h0")
    assert set(grads.params) == set(layer.state_dict())
    for name, value in d_params.items():
        assert_gradient_close(grads.params[name], value, dtype, f"d {name}")


@EACH_VARIANT
def test_gradients_match_finite_differences_of_the_oracle(backend_name, reset_after):
    """The backend's float64 gradients straight against numbers, not through the oracle's backward."""
    require_training(backend_name)
    require(backend_name, dtype="float64", reset_after=reset_after, lengths=True)
    rng = np.random.default_rng(23)
    layer = gru.GRU(
        I, H, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend=backend_name, seed=rng
    )
    params = layer.state_dict()
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((4, B, H))
    d_output = rng.standard_normal((T, B, 2 * H))
    d_h_n = rng.standard_normal((4, B, H))
    layer(x, h0, MIXED_LENGTHS, train=True)
    grads = layer.backward(d_output, d_h_n)
    config = dict(num_layers=2, bidirectional=True, reset_after=reset_after, lengths=MIXED_LENGTHS)
    eps = 1e-6
    for name, value in params.items():
        for index in list(np.ndindex(*value.shape))[::5]:
            plus, minus = value.copy(), value.copy()
            plus[index] += eps
            minus[index] -= eps
            expected = (
                _loss({**params, name: plus}, x, h0, d_output, d_h_n, **config)
                - _loss({**params, name: minus}, x, h0, d_output, d_h_n, **config)
            ) / (2 * eps)
            assert abs(to_numpy(grads.params[name])[index] - expected) < 1e-6, (name, index)


@EACH_DTYPE
def test_two_backward_calls_agree(backend_name, dtype):
    require_training(backend_name)
    require(backend_name, dtype=dtype, lengths=True)
    rng = np.random.default_rng(29)
    layer = gru.GRU(
        I, H, 2, bidirectional=True, reset_after=variant_of(backend_name), dtype=dtype, backend=backend_name, seed=rng
    )
    x = rng.standard_normal((T, B, I)).astype(dtype)
    d_output = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    first_forward = layer(x, lengths=MIXED_LENGTHS, train=True)
    first = layer.backward(d_output)
    again = layer.backward(d_output)  # the same training call, differentiated twice
    second_forward = layer(x, lengths=MIXED_LENGTHS, train=True)
    second = layer.backward(d_output)
    np.testing.assert_array_equal(to_numpy(first_forward[0]), to_numpy(second_forward[0]))
    for result in (again, second):
        np.testing.assert_array_equal(to_numpy(result.input), to_numpy(first.input))
        np.testing.assert_array_equal(to_numpy(result.h0), to_numpy(first.h0))
        for name in first.params:
            np.testing.assert_array_equal(to_numpy(result.params[name]), to_numpy(first.params[name]))


@EACH_DTYPE
@EACH_VARIANT
def test_gradients_with_dropout_use_the_forward_masks(backend_name, dtype, reset_after):
    require_training(backend_name)
    require(backend_name, dtype=dtype, reset_after=reset_after)
    p, L = 0.3, 3
    generator = np.random.default_rng(31)
    layer = gru.GRU(
        I,
        H,
        L,
        dropout=p,
        bidirectional=True,
        reset_after=reset_after,
        dtype=dtype,
        backend=backend_name,
        seed=generator,
    )
    twin = np.random.default_rng()
    twin.bit_generator.state = generator.bit_generator.state
    masks = [(twin.random((T, B, 2 * H)) < 1 - p) / (1 - p) for _ in range(L - 1)]
    rng = np.random.default_rng(37)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    d_output = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    layer(x, train=True)
    grads = layer.backward(d_output)
    d_x, _, d_params = oracle_gradients_for(
        layer, x.astype(np.float64), d_output.astype(np.float64), np.zeros((2 * L, B, H)), dropout_masks=masks
    )
    assert_gradient_close(grads.input, d_x, dtype, "d input")
    for name, value in d_params.items():
        assert_gradient_close(grads.params[name], value, dtype, f"d {name}")


@EACH_DTYPE
def test_unbatched_gradients(backend_name, dtype):
    require_training(backend_name)
    require(backend_name, dtype=dtype)
    rng = np.random.default_rng(41)
    layer = gru.GRU(
        I, H, bidirectional=True, reset_after=variant_of(backend_name), dtype=dtype, backend=backend_name, seed=rng
    )
    x = rng.standard_normal((T, I)).astype(dtype)
    h0 = rng.standard_normal((2, H)).astype(dtype)
    d_output = rng.standard_normal((T, 2 * H)).astype(dtype)
    d_h_n = rng.standard_normal((2, H)).astype(dtype)
    layer(x, h0, train=True)
    grads = layer.backward(d_output, d_h_n)
    d_x, d_h0, d_params = oracle_gradients_for(layer, x[:, None], d_output[:, None], d_h_n[:, None], h0[:, None])
    assert_gradient_close(grads.input, d_x[:, 0], dtype, "d input")
    assert_gradient_close(grads.h0, d_h0[:, 0], dtype, "d h0")
    assert_gradient_close(
        grads.params["weight_hh_l0_reverse"], d_params["weight_hh_l0_reverse"], dtype, "d W_hh reverse"
    )


@EACH_DTYPE
def test_gradients_ignore_d_output_past_each_length(backend_name, dtype):
    """Outputs past a sequence's length are constant zeros: no gradient flows from them."""
    require_training(backend_name)
    require(backend_name, dtype=dtype, lengths=True)
    rng = np.random.default_rng(43)
    layer = gru.GRU(
        I, H, bidirectional=True, reset_after=variant_of(backend_name), dtype=dtype, backend=backend_name, seed=rng
    )
    x = rng.standard_normal((T, B, I)).astype(dtype)
    d_output = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    noisy = d_output.copy()
    noisy[MIXED_LENGTHS[2] :, 2] += 100.0  # padded steps of the third sequence
    noisy[:, 1] += 100.0  # every step of the empty one
    layer(x, lengths=MIXED_LENGTHS, train=True)
    clean = layer.backward(d_output)
    dirty = layer.backward(noisy)
    # +100 leaking in anywhere would move the gradients by far more than rounding does
    atol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(to_numpy(dirty.input), to_numpy(clean.input), rtol=0, atol=atol)
    for name in clean.params:
        np.testing.assert_allclose(to_numpy(dirty.params[name]), to_numpy(clean.params[name]), rtol=0, atol=10 * atol)
