"""The forward pass over the full feature matrix, against the float64 oracle."""

from __future__ import annotations

import numpy as np

import gru
from gru.testing._support import (
    EACH_DTYPE,
    EACH_VARIANT,
    assert_close,
    capabilities,
    feature_matrix,
    lengths_if_supported,
    oracle_for,
    require,
    require_training,
    to_numpy,
    variant_of,
)

T, B, I, H = 6, 4, 3, 5
MIXED_LENGTHS = [T, 0, 3, 1]  # full, empty, partial, one step; unsorted


@feature_matrix(MIXED_LENGTHS)
def test_matches_oracle(
    backend_name, dtype, bias, bidirectional, num_layers, reset_after, lengths, with_h0, batch_first
):
    require(backend_name, dtype=dtype, reset_after=reset_after, lengths=lengths is not None)
    with_gates = capabilities(backend_name).gates
    seed = hash((bias, bidirectional, num_layers, reset_after, with_h0, batch_first)) % 2**32
    rng = np.random.default_rng(seed)
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

    x = np.ascontiguousarray(x_tbi.transpose(1, 0, 2)) if batch_first else x_tbi
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x_tbi, h0, lengths)  # before the backend runs
    output, h_n, *gates = layer(x, h0, lengths, return_gates=with_gates)

    if batch_first:
        expected_output = expected_output.transpose(1, 0, 2)
        expected_gates = expected_gates.transpose(0, 1, 3, 2, 4)
    # a direction and a layer at a time, so that a failure says which one is wrong
    directions = ["forward", "reverse"][:D]
    for d, direction in enumerate(directions):
        columns = slice(d * H, (d + 1) * H)
        assert_close(output[..., columns], expected_output[..., columns], dtype, f"output, {direction} direction")
    for index in range(num_layers * D):
        where = f"layer {index // D}, {directions[index % D]} direction"
        assert_close(h_n[index], expected_h_n[index], dtype, f"h_n, {where}")
        for g, name in enumerate("rzn" if with_gates else ""):
            assert_close(getattr(gates[0], name)[index], expected_gates[index, g], dtype, f"gate {name}, {where}")


@EACH_DTYPE
@EACH_VARIANT
def test_without_gates_gives_the_same_answer(backend_name, dtype, reset_after):
    require(backend_name, dtype=dtype, reset_after=reset_after)
    rng = np.random.default_rng(1)
    layer = gru.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype=dtype, backend=backend_name, seed=rng)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lengths = lengths_if_supported(backend_name, MIXED_LENGTHS)
    output, h_n = layer(x, lengths=lengths)
    expected_output, expected_h_n, _ = oracle_for(layer, x, lengths=lengths)
    assert_close(output, expected_output, dtype, "output")
    assert_close(h_n, expected_h_n, dtype, "h_n")


@EACH_DTYPE
def test_lengths_zero_keeps_h0_and_zero_output(backend_name, dtype):
    require(backend_name, dtype=dtype, lengths=True)
    rng = np.random.default_rng(2)
    layer = gru.GRU(
        I, H, 2, bidirectional=True, reset_after=variant_of(backend_name), dtype=dtype, backend=backend_name, seed=3
    )
    x = rng.standard_normal((T, 2, I)).astype(dtype)
    h0 = rng.standard_normal((4, 2, H)).astype(dtype)
    output, h_n = layer(x, h0, lengths=[0, 0])
    assert np.all(to_numpy(output) == 0), "output of length-0 sequences: expected zeros"
    np.testing.assert_array_equal(to_numpy(h_n), h0, err_msg="h_n of length-0 sequences: expected h0")


@EACH_DTYPE
@EACH_VARIANT
def test_dropout_in_training_uses_the_layers_generator(backend_name, dtype, reset_after):
    """train=True multiplies masks drawn from the layer's generator, in layer order, into the
    output of every layer but the last: ``gen.random((T, B, D*H)) < 1 - p``, scaled by 1 / (1 - p)."""
    require(backend_name, dtype=dtype, reset_after=reset_after)
    require_training(backend_name)  # train=True is a training call
    p, L = 0.4, 3
    generator = np.random.default_rng(11)
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
    x = np.random.default_rng(4).standard_normal((T, B, I)).astype(dtype)
    twin = np.random.default_rng()
    twin.bit_generator.state = generator.bit_generator.state
    masks = [((twin.random((T, B, 2 * H)) < 1 - p) / (1 - p)).astype(dtype) for _ in range(L - 1)]

    output, h_n = layer(x, train=True)
    expected_output, expected_h_n, _ = oracle_for(layer, x, dropout_masks=masks)
    assert_close(output, expected_output, dtype, "output with dropout")
    assert_close(h_n, expected_h_n, dtype, "h_n with dropout")

    inference_output, _ = layer(x)  # inference ignores dropout
    assert_close(inference_output, oracle_for(layer, x)[0], dtype, "output in inference")


@EACH_DTYPE
@EACH_VARIANT
def test_inputs_are_left_unchanged(backend_name, dtype, reset_after):
    """The caller's arrays reach a backend as they are (no copy when already canonical): it must only read them.

    Checked first and by itself, so that a backend writing into x, h0 or the
    weights fails here with that said, not as a wrong answer elsewhere. For
    training backends the backward's inputs too.
    """
    require(backend_name, dtype=dtype, reset_after=reset_after)
    rng = np.random.default_rng(12)
    layer = gru.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype=dtype, backend=backend_name, seed=rng)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((4, B, H)).astype(dtype)
    lengths = lengths_if_supported(backend_name, np.array(MIXED_LENGTHS))
    inputs = {"x": x, "h0": h0, **({"lengths": lengths} if lengths is not None else {})}
    weights = layer.state_dict()  # copies; the layer keeps its own
    before = {name: a.copy() for name, a in inputs.items()}

    training = capabilities(backend_name).training
    layer(x, h0, lengths, train=training)
    if training:
        d_output = rng.standard_normal((T, B, 2 * H)).astype(dtype)
        d_h_n = rng.standard_normal((4, B, H)).astype(dtype)
        inputs.update(d_output=d_output, d_h_n=d_h_n)
        before.update(d_output=d_output.copy(), d_h_n=d_h_n.copy())
        layer.backward(d_output, d_h_n)
    for name, a in inputs.items():
        assert np.array_equal(a, before[name], equal_nan=True), f"the backend wrote into its input {name}"
    for name, a in layer.state_dict().items():
        assert np.array_equal(a, weights[name]), f"the backend wrote into the layer's weight {name}"
