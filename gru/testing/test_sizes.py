"""Sizes at which backends change how they work: many units, many sequences, one sequence, thread counts.

The rest of the suite runs tiny layers, which a backend may treat as one
block. Compiled and GPU backends split larger ones: the hidden units between
threads, the batch into chunks, products into tiles. These cases are large
enough to cross such boundaries (units not a multiple of 16, batches from 8
to 40 with mixed lengths, a single long-hidden sequence) and small enough for
the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest

import gru
from gru.testing._support import (
    EACH_DTYPE,
    EACH_VARIANT,
    assert_close,
    assert_gradient_close,
    capabilities,
    lengths_if_supported,
    oracle_for,
    oracle_gradients_for,
    require,
    require_training,
    variant_of,
)

#: (I, H, B, T)
SIZES = [(5, 40, 9, 6), (7, 70, 17, 4), (4, 130, 1, 5), (6, 24, 40, 3), (9, 33, 2, 7)]


def _lengths(B: int, T: int, rng: np.random.Generator) -> list[int]:
    """Mixed lengths with a full and (from two sequences) an empty one, in no order."""
    lengths = rng.integers(1, T + 1, B)
    lengths[rng.integers(B)] = T
    if B > 1:
        lengths[(np.argmax(lengths) + 1) % B] = 0
    return [int(n) for n in lengths]


def _case(backend_name, size, dtype, reset_after, seed):
    I, H, B, T = size
    rng = np.random.default_rng(seed)
    layer = gru.GRU(I, H, bidirectional=True, reset_after=reset_after, dtype=dtype, backend=backend_name, seed=rng)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((2, B, H)).astype(dtype)
    lengths = lengths_if_supported(backend_name, _lengths(B, T, rng))
    return layer, x, h0, lengths, rng


@EACH_DTYPE
@EACH_VARIANT
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "I{}-H{}-B{}-T{}".format(*s))
def test_matches_oracle_at_larger_sizes(backend_name, dtype, reset_after, size):
    require(backend_name, dtype=dtype, reset_after=reset_after)
    layer, x, h0, lengths, _ = _case(backend_name, size, dtype, reset_after, seed=sum(size))
    with_gates = capabilities(backend_name).gates
    output, h_n, *gates = layer(x, h0, lengths, return_gates=with_gates, threads=2)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    assert_close(output, expected_output, dtype, "output")
    assert_close(h_n, expected_h_n, dtype, "h_n")
    if with_gates:
        for k, name in enumerate("rzn"):
            assert_close(getattr(gates[0], name), expected_gates[:, k], dtype, f"gate {name}")


@EACH_DTYPE
@EACH_VARIANT
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "I{}-H{}-B{}-T{}".format(*s))
def test_gradients_match_oracle_at_larger_sizes(backend_name, dtype, reset_after, size):
    require_training(backend_name)
    require(backend_name, dtype=dtype, reset_after=reset_after)
    layer, x, h0, lengths, rng = _case(backend_name, size, dtype, reset_after, seed=sum(size) + 1)
    T, B, H = x.shape[0], x.shape[1], h0.shape[2]
    d_output = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    d_h_n = rng.standard_normal((2, B, H)).astype(dtype)
    layer(x, h0, lengths, train=True, threads=2)
    grads = layer.backward(d_output, d_h_n)
    d_x, d_h0, d_params = oracle_gradients_for(layer, x, d_output, d_h_n, h0, lengths)
    assert_gradient_close(grads.input, d_x, dtype, "d input")
    assert_gradient_close(grads.h0, d_h0, dtype, "d h0")
    for name, value in d_params.items():
        assert_gradient_close(grads.params[name], value, dtype, f"d {name}")


@EACH_DTYPE
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_any_thread_count_gives_the_answer(backend_name, dtype, threads):
    """``threads=`` is a request a backend may follow or ignore; the answer is the oracle's either way."""
    require(backend_name, dtype=dtype)
    layer, x, h0, lengths, _ = _case(backend_name, (6, 48, 20, 5), dtype, variant_of(backend_name), seed=threads)
    output, h_n = layer(x, h0, lengths, threads=threads)
    expected_output, expected_h_n, _ = oracle_for(layer, x, h0, lengths)
    assert_close(output, expected_output, dtype, f"output, threads={threads}")
    assert_close(h_n, expected_h_n, dtype, f"h_n, threads={threads}")
