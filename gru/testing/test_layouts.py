"""Shapes and memory layouts: unbatched, empty, strided, Fortran-ordered, the cell."""

from __future__ import annotations

import numpy as np
import pytest

import gru
from gru.testing._support import (
    EACH_DIRECTION,
    EACH_DTYPE,
    EACH_VARIANT,
    assert_close,
    capabilities,
    lengths_if_supported,
    oracle_for,
    require,
    to_numpy,
    variant_of,
)
from gru.testing.oracle import oracle_step

I, H = 3, 4


@EACH_DTYPE
@EACH_DIRECTION
def test_unbatched_input(backend_name, dtype, bidirectional):
    require(backend_name, dtype=dtype)
    with_gates = capabilities(backend_name).gates
    rng = np.random.default_rng(5)
    layer = gru.GRU(
        I,
        H,
        2,
        bidirectional=bidirectional,
        reset_after=variant_of(backend_name),
        dtype=dtype,
        backend=backend_name,
        seed=rng,
    )
    LD = 2 * layer.num_directions
    x = rng.standard_normal((7, I)).astype(dtype)
    h0 = rng.standard_normal((LD, H)).astype(dtype)
    output, h_n, *gates = layer(x, h0, return_gates=with_gates)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x[:, None], h0[:, None])
    assert_close(output, expected_output[:, 0], dtype, "output")
    assert_close(h_n, expected_h_n[:, 0], dtype, "h_n")
    if with_gates:
        assert_close(gates[0].z, expected_gates[:, 1, :, 0], dtype, "gate z")


@EACH_DTYPE
def test_unbatched_with_a_length(backend_name, dtype):
    require(backend_name, dtype=dtype, lengths=True)
    rng = np.random.default_rng(6)
    layer = gru.GRU(
        I, H, bidirectional=True, reset_after=variant_of(backend_name), dtype=dtype, backend=backend_name, seed=rng
    )
    x = rng.standard_normal((7, I)).astype(dtype)
    output, h_n = layer(x, lengths=4)
    expected_output, expected_h_n, _ = oracle_for(layer, x[:, None], lengths=[4])
    assert_close(output, expected_output[:, 0], dtype, "output")
    assert_close(h_n, expected_h_n[:, 0], dtype, "h_n")


@EACH_DTYPE
@pytest.mark.parametrize("shape", [(0, 3), (5, 0), (0, 0)], ids=["T=0", "B=0", "T=B=0"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_sequences_and_batches(backend_name, dtype, shape, batch_first):
    require(backend_name, dtype=dtype)
    with_gates = capabilities(backend_name).gates
    T, B = shape
    layer = gru.GRU(
        I,
        H,
        2,
        bidirectional=True,
        batch_first=batch_first,
        reset_after=variant_of(backend_name),
        dtype=dtype,
        backend=backend_name,
        seed=0,
    )
    x = np.zeros((B, T, I) if batch_first else (T, B, I), dtype)
    h0 = np.random.default_rng(0).standard_normal((4, B, H)).astype(dtype)
    output, h_n, *gates = layer(x, h0, return_gates=with_gates)
    assert to_numpy(output).shape == ((B, T, 2 * H) if batch_first else (T, B, 2 * H))
    assert to_numpy(output).dtype == np.dtype(dtype)
    assert to_numpy(h_n).shape == (4, B, H)
    if with_gates:
        assert to_numpy(gates[0].r).shape == ((4, B, T, H) if batch_first else (4, T, B, H))
    if T == 0:
        np.testing.assert_array_equal(to_numpy(h_n), h0)  # no step: the state is untouched


@EACH_DTYPE
@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed"])
def test_memory_layout_does_not_change_the_answer(backend_name, dtype, layout):
    require(backend_name, dtype=dtype)
    rng = np.random.default_rng(7)
    layer = gru.GRU(
        I, H, bidirectional=True, reset_after=variant_of(backend_name), dtype=dtype, backend=backend_name, seed=rng
    )
    x = rng.standard_normal((6, 5, I)).astype(dtype)
    h0 = rng.standard_normal((2, 5, H)).astype(dtype)
    if layout == "fortran":
        x_other, h0_other = np.asfortranarray(x), np.asfortranarray(h0)
    elif layout == "strided":
        big = np.zeros((12, 10, 2 * I), dtype)
        big[::2, ::2, ::2] = x
        x_other, h0_other = big[::2, ::2, ::2], np.repeat(h0, 2, axis=2)[:, :, ::2]
    else:
        x_other, h0_other = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0), h0
    assert not x_other.flags.c_contiguous
    expected = layer(x, h0)
    actual = layer(x_other, h0_other)
    np.testing.assert_array_equal(to_numpy(actual[0]), to_numpy(expected[0]))
    np.testing.assert_array_equal(to_numpy(actual[1]), to_numpy(expected[1]))


@EACH_DTYPE
def test_repeated_calls_are_identical(backend_name, dtype):
    require(backend_name, dtype=dtype)
    rng = np.random.default_rng(8)
    layer = gru.GRU(
        I, H, 2, bidirectional=True, reset_after=variant_of(backend_name), dtype=dtype, backend=backend_name, seed=rng
    )
    x = rng.standard_normal((9, 3, I)).astype(dtype)
    lengths = lengths_if_supported(backend_name, [9, 2, 5])
    first = [to_numpy(a).copy() for a in layer(x, lengths=lengths)]
    second = [to_numpy(a) for a in layer(x, lengths=lengths)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@EACH_DTYPE
@EACH_VARIANT
@pytest.mark.parametrize("batched", [True, False])
def test_cell_matches_one_oracle_step(backend_name, dtype, reset_after, batched):
    require(backend_name, dtype=dtype, reset_after=reset_after)
    rng = np.random.default_rng(9)
    cell = gru.GRUCell(I, H, reset_after=reset_after, dtype=dtype, backend=backend_name, seed=rng)
    x = rng.standard_normal((3, I)).astype(dtype)
    h0 = rng.standard_normal((3, H)).astype(dtype)
    p = {k: v.astype(np.float64) for k, v in cell.state_dict().items()}
    steps = [
        oracle_step(
            x[b].astype(np.float64),
            h0[b].astype(np.float64),
            p["weight_ih"],
            p["weight_hh"],
            p["bias_ih"],
            p["bias_hh"],
            reset_after,
        )
        for b in range(3)
    ]
    expected = np.stack([s[0] for s in steps])
    if batched and capabilities(backend_name).gates:
        h1, gates = cell(x, h0, return_gates=True)
        assert_close(h1, expected, dtype, "h1")
        assert_close(gates.r, np.stack([s[1] for s in steps]), dtype, "gate r")
    elif batched:
        assert_close(cell(x, h0), expected, dtype, "h1")
    else:
        assert_close(cell(x[1], h0[1]), expected[1], dtype, "h1 unbatched")
