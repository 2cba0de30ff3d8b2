"""The Cython backend's own concerns: threads, BLAS limits, sizes the conformance suite keeps small."""

from __future__ import annotations

import contextlib
import os
import subprocess

import numpy as np
import pytest

import gru
from gru.bench import _machine
from gru.testing._support import EACH_VARIANT, oracle_for

try:
    gru.get_backend("cython")
except gru.BackendError as exc:  # pragma: no cover - only without a compiler
    pytest.skip(f"cython backend unavailable: {exc}", allow_module_level=True)

from threadpoolctl import threadpool_info, threadpool_limits


def assert_training_matches_oracle(layer, x, rng, h0=None, lengths=None, threads=None, d_output=None, d_h_n=None):
    """A float64 training call of ``layer`` and every gradient against the oracle's.

    Outputs to 1e-12, gradients to 1e-10; ``d_output``/``d_h_n`` drawn from
    ``rng`` unless given.
    """
    from gru.testing._support import oracle_gradients_for

    output, h_n = layer(x, h0, lengths, threads=threads, train=True)
    expected_output, expected_h_n, _ = oracle_for(layer, x, h0, lengths)
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=1e-12)
    if d_output is None:
        d_output, d_h_n = rng.standard_normal(output.shape), rng.standard_normal(h_n.shape)
    grads = layer.backward(d_output, d_h_n)
    d_x, d_h0, d_params = oracle_gradients_for(layer, x, d_output, d_h_n, h0, lengths)
    np.testing.assert_allclose(grads.input, d_x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads.h0, d_h0, rtol=1e-10, atol=1e-10)
    for name, value in d_params.items():
        np.testing.assert_allclose(grads.params[name], value, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@EACH_VARIANT
@pytest.mark.parametrize("batch", [1, 5])
def test_thread_counts_split_hidden_units_correctly(threads, reset_after, batch):
    """H = 72 splits into several 16-unit slices (one partial): every split must match the oracle."""
    rng = np.random.default_rng(threads * 10 + batch)
    layer = gru.GRU(9, 72, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((11, batch, 9))
    lengths = rng.integers(0, 12, batch)
    h0 = rng.standard_normal((4, batch, 72))
    output, h_n, gates = layer(x, h0, lengths, threads=threads, return_gates=True)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gates.n, expected_gates[:, 2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("batch", [3, 70])
@EACH_VARIANT
def test_large_products_cut_into_small_blocks_stay_exact(batch, reset_after):
    """B * H * H above a million multiply-adds: the per-step products in column blocks, and at B = 70 in
    chunks of 8 rows (the last one of 6), forward and backward."""
    rng = np.random.default_rng(batch)
    layer = gru.GRU(8, 160, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    assert_training_matches_oracle(layer, rng.standard_normal((3, batch, 8)), rng, threads=2)


@pytest.mark.parametrize(
    ("I", "dtype", "threads"),
    [(300, "float64", 1), (1500, "float64", 1), (2800, "float64", 2)],
    ids=["chunked", "one-gemm", "one-gemm-2-threads"],
)
@EACH_VARIANT
def test_whole_sequence_projection_in_row_chunks_or_one_gemm_matches_the_oracle(I, dtype, threads, reset_after):
    """Input weights of a thread up to 2 MB: chunks of 8 rows (18 rows: 8, 8, 2); larger: one GEMM."""
    rng = np.random.default_rng(I + threads)
    layer = gru.GRU(I, 64, reset_after=reset_after, bidirectional=True, dtype=dtype, backend="cython", seed=rng)
    x = rng.standard_normal((9, 2, I)).astype(dtype)
    assert_training_matches_oracle(layer, x, rng, lengths=np.array([9, 5]), threads=threads)


@pytest.mark.parametrize(
    ("H", "B", "threads", "team"),
    [
        (32, 1, 2, 1),  # 1,536 multiply-adds a thread a step: one thread 0.074 ms, two 0.105
        (32, 4, 2, 1),  # 6,144
        (32, 8, 2, 2),  # 12,288
        (32, 16, 2, 2),  # 8 sequences a thread: split by sequence, no barrier per step
        (64, 1, 2, 1),  # 6,144
        (64, 2, 2, 2),
        (96, 1, 2, 2),
        (128, 1, 8, 5),  # 25 units and 9,600 multiply-adds a thread
        (512, 1, 8, 8),
        (16, 1, 8, 1),
    ],
)
def test_team_size_leaves_small_unit_splits_to_fewer_threads(cython_teams_at_every_size, H, B, threads, team):
    """Split by unit, a thread takes at least 8,192 multiply-adds of each step's product."""
    from gru.backends.cython import _kernels

    _kernels.use_unit_split_work(cython_teams_at_every_size)  # the production rule (the fixture restores)
    assert _kernels.unit_split_minimum() == 8192
    assert _kernels.team_size(threads, H, B, 4) == team
    _kernels.use_unit_split_work(0)  # every team asked for, at 16 units a thread at least
    assert _kernels.team_size(threads, H, B, 4) == max(1, min(threads, (H + 15) // 16))


def test_which_calls_split_their_sequences_between_threads(products_cut):
    """From 8 sequences per thread, while every thread can hold all of W_hh (2 MB; see splits_by_sequence)."""
    from gru.backends.cython import _kernels

    assert _kernels.splits_sequences(16, 128, 4, 2) and not _kernels.splits_sequences(15, 128, 4, 2)
    assert _kernels.splits_sequences(24, 128, 4, 3) and not _kernels.splits_sequences(23, 128, 4, 3)
    assert _kernels.splits_sequences(64, 418, 4, 2) and not _kernels.splits_sequences(64, 419, 4, 2)
    assert not _kernels.splits_sequences(64, 300, 8, 2)  # float64: 2.2 MB
    assert not _kernels.splits_sequences(64, 128, 4, 1)  # one thread
    assert not _kernels.splits_sequences(64, 16, 4, 2)  # a team of one: 16 units
    # 27 sequences in 4 chunks, each summing its own weight gradients: 3 sets of sums besides the gradients'
    assert _kernels.backward_workspace_rows(9, 27, 6, 48, 8, 2) == 8 * 9 * 27 + 4 * 27 + 3 * 3 * (6 + 48)
    with small_kernel(False):  # whole-sequence weight GEMMs instead, their rows split in two: one more set
        assert _kernels.splits_sequences(16, 128, 4, 2)
        assert _kernels.backward_workspace_rows(9, 27, 6, 48, 8, 2) == 8 * 9 * 27 + 4 * 27 + 1 * 3 * (6 + 48)


@pytest.mark.parametrize("threads", [2, 3])
@EACH_VARIANT
@pytest.mark.parametrize("full_length", [True, False], ids=["full-length", "lengths"])
def test_batches_split_by_sequence_match_the_oracle(threads, reset_after, full_length):
    """35 sequences in chunks (16, 16, 3 for two threads; 8, 8, 8, 8, 3 for three), claimed by the threads as
    they come free: output and every gradient, both directions, two layers; full-length batches project their
    inputs step by step."""
    from gru.backends.cython import _kernels

    T, B, I, H = 9, 35, 6, 48
    assert _kernels.splits_sequences(B, H, 8, threads)
    assert _kernels.projects_step_by_step(T, B, I, H, 8, threads) == _kernels.uses_small_kernel()
    rng = np.random.default_rng(threads + 10 * reset_after + 100 * full_length)
    layer = gru.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    lengths = None if full_length else np.concatenate([[0, T, 1], rng.integers(0, T + 1, B - 3)])
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((4, B, H))
    assert_training_matches_oracle(layer, x, rng, h0=h0, lengths=lengths, threads=threads)


@pytest.mark.parametrize("full_length", [True, False], ids=["full-length", "lengths"])
@pytest.mark.parametrize("threads", [2, 3])
@EACH_VARIANT
def test_batches_of_wide_layers_projected_step_by_step_match_the_oracle(
    threads, reset_after, full_length, products_cut
):
    """32 sequences past 2 MB of W_hh split the units and project each step's inputs (with varied lengths the
    forward direction only: the reverse one's rows of a step come from different times): output and every
    gradient."""
    from gru.backends.cython import _kernels

    T, B, I, H = 4, 32, 5, 300
    assert not _kernels.splits_sequences(B, H, 8, threads)
    assert not _kernels.projects_step_by_step(T, B, I, H, 8, threads)  # 1.2 MB (two threads), 0.8: past half a 1 MB L2
    with l2_of(3 << 20):
        assert _kernels.projects_step_by_step(T, B, I, H, 8, threads)
        rng = np.random.default_rng(7 + reset_after + 10 * threads + 100 * full_length)
        layer = gru.GRU(I, H, reset_after=reset_after, bidirectional=True, dtype="float64", backend="cython", seed=rng)
        x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((2, B, H))
        lengths = None if full_length else np.concatenate([[T, 0, 1], rng.integers(0, T + 1, B - 3)])
        assert_training_matches_oracle(layer, x, rng, h0=h0, lengths=lengths, threads=threads)


@EACH_VARIANT
def test_batches_of_wide_layers_split_by_unit_match_the_oracle(reset_after):
    """Past 2 MB of W_hh (H = 300, float64) even 17 sequences split the units: rows in chunks of 8."""
    from gru.backends.cython import _kernels

    assert not _kernels.splits_sequences(17, 300, 8, 2)
    rng = np.random.default_rng(3 + reset_after)
    layer = gru.GRU(5, 300, reset_after=reset_after, bidirectional=True, dtype="float64", backend="cython", seed=rng)
    lengths = np.concatenate([[3, 0], rng.integers(1, 4, 15)])
    assert_training_matches_oracle(layer, rng.standard_normal((3, 17, 5)), rng, lengths=lengths, threads=2)


@pytest.mark.parametrize(
    ("I", "H", "B", "T", "threads"),
    [
        (6, 40, 1, 5, 2),  # one sequence: transposed blocks, kept blocks of the own inputs
        (7, 300, 1, 4, 2),  # one sequence past the L2: W_hh's rows
        (5, 72, 5, 6, 3),  # a batch split by unit, a partial slice
        (6, 48, 35, 5, 2),  # split by sequence
        (5, 300, 32, 4, 2),  # wide: split by unit, inputs projected step by step
    ],
    ids=["one-sequence", "rows", "by-unit", "by-sequence", "per-step"],
)
@EACH_VARIANT
def test_a_zero_initial_state_skips_the_first_product_and_stays_exact(I, H, B, T, threads, reset_after):
    """h0 = 0 (none given) makes the first step's products zero, and the kernels skip them: output, gates and
    every gradient are still the oracle's, in both directions and with lengths. One nonzero entry of the
    forward direction's h0 (its last unit of the last sequence) makes that direction's product again, while
    the reverse one, still zero, skips it."""
    rng = np.random.default_rng(I + H + B + 10 * reset_after)
    layer = gru.GRU(I, H, reset_after=reset_after, bidirectional=True, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((T, B, I))
    lengths = np.concatenate([[T], rng.integers(0, T + 1, B - 1)])
    assert_training_matches_oracle(layer, x, rng, lengths=lengths, threads=threads)
    _, _, gates = layer(x, None, lengths, threads=threads, return_gates=True)
    np.testing.assert_allclose(gates.r, oracle_for(layer, x, None, lengths)[2][:, 0], rtol=0, atol=1e-12)
    h0 = np.zeros((2, B, H))
    h0[0, -1, -1] = 0.5
    assert_training_matches_oracle(layer, x, rng, h0=h0, lengths=lengths, threads=threads)


def outputs_from_h0_zero_with_one_bad_parameter(reset_after, dtype, seed, name, index, value):
    """A GRU(4, 40)'s output from h0 = 0 (3 steps, 2 sequences, two threads) with ``state[name][index] = value``,
    and the oracle's."""
    rng = np.random.default_rng(seed)
    layer = gru.GRU(4, 40, reset_after=reset_after, dtype=dtype, backend="cython", seed=rng)
    state = layer.state_dict()
    state[name][index] = value
    layer.load_state_dict(state)
    x = rng.standard_normal((3, 2, 4)).astype(dtype)
    output, _ = layer(x, threads=2)
    with np.errstate(invalid="ignore"):
        expected, _, _ = oracle_for(layer, x, None, None)
    return output, expected


@pytest.mark.parametrize("where", ["weight_ih_l0", "bias_ih_l0", "bias_hh_l0"])
@EACH_VARIANT
def test_a_zero_initial_state_with_a_nan_reset_gate_still_gives_nan(where, reset_after):
    """From h0 = 0 a NaN reset gate (a NaN input weight or bias of unit 5's r) must still make the candidate
    NaN: r ⊙ h0 (reset-before) and r * (W_hn h0 + b_hn) (reset-after) are NaN, whatever W_hh h0 is."""
    output, expected = outputs_from_h0_zero_with_one_bad_parameter(reset_after, "float64", 6, where, 5, np.nan)
    assert np.isnan(expected[0, :, 5]).all()  # (reset-before: every unit, through W_hn (r ⊙ h0))
    np.testing.assert_array_equal(np.isnan(output), np.isnan(expected))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
@EACH_VARIANT
def test_a_zero_initial_state_with_non_finite_recurrent_weights_still_gives_nan(bad, reset_after, dtype):
    """0 * inf is NaN: where W_hh is not finite the first product is made even from h0 = 0, and the output is
    NaN where the oracle's is (skipped, step 0 would come out finite and later steps need not be NaN)."""
    # the reset gate of unit 5, from unit 3
    output, expected = outputs_from_h0_zero_with_one_bad_parameter(reset_after, dtype, 5, "weight_hh_l0", (5, 3), bad)
    assert np.isnan(expected[0]).any()
    np.testing.assert_array_equal(np.isnan(output), np.isnan(expected))


@contextlib.contextmanager
def _kernels_switch(read: str, write: str, enabled: bool):
    """One of the kernels' module-wide switches set to ``enabled`` for the block, then put back."""
    from gru.backends.cython import _kernels

    before = getattr(_kernels, read)()
    getattr(_kernels, write)(enabled)
    try:
        yield
    finally:
        getattr(_kernels, write)(before)


def small_kernel(enabled: bool):
    """The kernels as with a BLAS with (True) or without (False) a small-matrix kernel, whatever this machine's is."""
    return _kernels_switch("uses_small_kernel", "use_small_kernel", enabled)


def row_padding(enabled: bool):
    """Steps' products over 4k + 3 rows padded to 4k + 4 (True, the default) or not (see _kernels.product_rows)."""
    return _kernels_switch("pads_product_rows", "use_row_padding", enabled)


def test_the_rule_for_padding_a_products_rows():
    """4k + 3 rows take one more, where the buffers have it and a row is 65,536 multiply-adds or more."""
    from gru.backends.cython import _kernels

    rows = _kernels.padded_product_rows
    assert [rows(m, 16, 256, 128, False) for m in range(1, 13)] == [1, 2, 4, 4, 5, 6, 8, 8, 9, 10, 12, 12]
    assert rows(7, 7, 256, 128, False) == 7  # no room for another row
    assert rows(7, 8, 256, 128, False) == 8
    assert rows(7, 8, 170, 128, False) == 7 and rows(7, 8, 171, 128, False) == 8  # 65,280 and 65,664 a row
    assert rows(7, 8, 256, 128, True) == 7  # a panel of W_hh's rows: column-major, no room
    with row_padding(False):
        assert rows(7, 8, 256, 128, False) == 7


@pytest.mark.parametrize(
    ("B", "lengths", "threads"),
    [
        (7, None, 2),  # split by unit: the row past the batch
        (8, [5, 5, 5, 5, 5, 5, 5, 2], 2),  # 7 live from step 2: the finished sequence's row
        (12, [5, 4, 5, 3, 5, 5, 1, 5, 2, 5, 4, 5], 1),  # one thread: 11 and 7 live on the way
        (31, None, 2),  # split by sequence (8 a chunk): the last chunk's 7, into the row past the batch
        (31, [5, 5, 4, 4, 3, 3, 2, 2] * 3 + [5, 4, 3, 2, 1, 1, 1], 2),  # and chunks' finished rows
    ],
    ids=["unit-split-past-the-batch", "finished-row", "one-thread", "by-sequence", "by-sequence-lengths"],
)
@EACH_VARIANT
@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_padded_products_match_the_oracle(padded, reset_after, B, lengths, threads):
    """Steps' products over 4k + 3 rows, padded and not: outputs and every gradient against the oracle.

    With the small kernel, whatever this machine's BLAS: without it a batch's panel is W_hh's rows, which
    are never padded (see _kernels.padding_room).
    """
    from gru.backends.cython import _kernels

    H = 256 if B < 16 else 160
    by_sequence = B >= 16
    team = _kernels.team_size(threads, H, B, 8)
    assert _kernels.splits_sequences(B, H, 8, team) is by_sequence
    rng = np.random.default_rng(B + H)
    layer = gru.GRU(8, H, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((5, B, 8))
    lengths = None if lengths is None else np.array(lengths)
    with small_kernel(True), row_padding(padded):
        panel_team, units = (1, H) if by_sequence else (team, H // team)
        assert _kernels.padded_product_rows(7, 8, H, units, _kernels.panel_rows(B, H, 8, panel_team)) == (
            8 if padded else 7
        )
        assert_training_matches_oracle(layer, x, rng, lengths=lengths, threads=threads)


@EACH_VARIANT
def test_a_nan_sequence_whose_row_pads_a_product_changes_no_other(reset_after):
    """The finished sequence whose row pads 7 live rows to 8 holds NaN: the 7 others match the oracle."""
    from gru.backends.cython import _kernels

    H, B = 256, 8
    with small_kernel(True):
        assert _kernels.padded_product_rows(7, 8, H, H // 2, _kernels.panel_rows(B, H, 8, 2)) == 8
    rng = np.random.default_rng(3)
    layer = gru.GRU(8, H, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((5, B, 8))
    x[0, 7] = np.nan  # the shortest sequence: the last row once sorted
    lengths = np.array([5, 5, 5, 5, 5, 5, 5, 2])
    with small_kernel(True):
        output, h_n = layer(x, None, lengths, threads=2)
    expected, expected_h_n, _ = oracle_for(layer, x, None, lengths)
    assert np.isnan(output[:2, 7]).all() and np.isnan(h_n[0, 7]).all()
    assert np.isfinite(output[:, :7]).all() and np.isfinite(h_n[0, :7]).all()
    np.testing.assert_allclose(output[:, :7], expected[:, :7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n[0, :7], expected_h_n[0, :7], rtol=0, atol=1e-12)


@pytest.fixture
def products_cut():
    """The kernels as with OpenBLAS's small-matrix kernel: products cut to its size (see _kernels.matmul_step)."""
    with small_kernel(True):
        yield


@pytest.mark.parametrize(
    ("I", "H", "T", "B"),
    [(8, 160, 3, 70), (6, 40, 7, 18), (300, 64, 9, 2), (40, 48, 5, 8)],
    ids=["large-products", "step-projection-and-weights-in-loop", "projection-in-chunks", "small-batch-steps"],
)
@EACH_VARIANT
@pytest.mark.parametrize("cut", [True, False], ids=["cut", "whole"])
def test_every_path_cut_for_the_small_kernel_also_runs_whole(cut, I, H, T, B, reset_after):
    """Shapes that take the small-kernel paths (row chunks, column blocks, step-by-step projection and weight
    gradients, chunked projection) match the oracle, with those paths on and off, whichever this machine's
    BLAS would pick."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(I + H)
    layer = gru.GRU(I, H, reset_after=reset_after, bidirectional=True, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((T, B, I))
    with small_kernel(cut):
        assert _kernels.uses_small_kernel() is cut
        if not cut:  # no step-by-step projection
            # gx, gh, r * h and two states, each of gh and the states' three with a row past the batch,
            # the products' column-major twin and the gate scratch of one thread
            assert _kernels.workspace_rows(T, B, I, H, 8, False, T, 1) == T * B + 3 * B + 2 + 2
        assert_training_matches_oracle(layer, x, rng, threads=2)


@pytest.mark.parametrize(
    ("libraries", "expected"),
    [
        ([("openblas", "SkylakeX", "scipy.libs")], True),
        ([("openblas", "SapphireRapids", "scipy.libs")], True),
        ([("openblas", "Haswell", "scipy.libs")], False),
        ([("openblas", "Zen", "scipy.libs")], False),
        ([("mkl", None, "lib")], False),
        ([], False),
        # scipy's own library decides when it is among several: numpy's may run other kernels
        ([("openblas", "Haswell", "numpy.libs"), ("openblas", "SkylakeX", "scipy.libs")], True),
        ([("openblas", "SkylakeX", "numpy.libs"), ("openblas", "Haswell", "scipy.libs")], False),
        # no library of scipy's own (a shared system BLAS): every one must qualify
        ([("openblas", "SkylakeX", "lib"), ("openblas", "Haswell", "lib64")], False),
        ([("openblas", "SkylakeX", "lib")], True),
    ],
)
def test_the_small_kernel_is_used_only_with_openblas_skylakex_kernels(monkeypatch, libraries, expected):
    import os

    import scipy
    import threadpoolctl

    from gru.backends.cython import backend

    site = os.path.dirname(os.path.dirname(scipy.__file__))
    infos = [
        {"user_api": "blas", "internal_api": api, "architecture": arch, "filepath": os.path.join(site, where, "lib.so")}
        for api, arch, where in libraries
    ]
    infos.append({"user_api": "openmp", "internal_api": "openmp", "filepath": "/x/libgomp.so"})
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: infos)
    assert backend.blas_has_small_kernel() is expected


def test_float32_with_many_units_stays_within_tolerance():
    rng = np.random.default_rng(3)
    layer = gru.GRU(64, 256, dtype="float32", backend="cython", seed=rng)
    x = rng.standard_normal((20, 4, 64)).astype("float32")
    output, _ = layer(x)
    expected, _, _ = oracle_for(layer, x)
    np.testing.assert_allclose(output, expected, rtol=0, atol=1e-5)


def test_thread_count_does_not_change_float64_results_beyond_rounding():
    rng = np.random.default_rng(4)
    layer = gru.GRU(16, 96, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((30, 2, 16))
    one = layer(x, threads=1)[0]
    for threads in (2, 4):
        np.testing.assert_allclose(layer(x, threads=threads)[0], one, rtol=0, atol=1e-13)


def blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_thread_limit_is_restored_after_a_call(blas_at_two_threads):
    layer = gru.GRU(8, 32, backend="cython", seed=0)
    x = np.zeros((4, 2, 8), "float32")
    layer(x)
    layer(x, train=True)
    layer.backward(np.ones((4, 2, 32), "float32"))
    assert blas_threads() == blas_at_two_threads


def test_holds_through_two_backend_instances_restore_blas_in_either_order(blas_at_two_threads):
    """Thread counts are the process's: holds by two instances (one made by hand, as register_backend does)
    overlap and end in either order, and BLAS stays at one thread until the last one ends."""
    from gru.backends.cython.backend import CythonBackend

    a, b = CythonBackend(), CythonBackend()
    a.available(), b.available()
    held = []  # released in the end whatever fails: a hold left over would skip the holds of later tests
    try:
        for first, last in ((a, b), (b, a)):
            for backend in (a, b):
                backend._hold_blas_to_one_thread()
                held.append(backend)
            assert blas_threads() == [1] * len(blas_at_two_threads)
            first._release_blas()
            held.remove(first)
            assert blas_threads() == [1] * len(blas_at_two_threads)  # the other call still runs
            last._release_blas()
            held.remove(last)
            assert blas_threads() == blas_at_two_threads
    finally:
        for backend in held:
            backend._release_blas()


class FakeKernels:
    """What the BLAS hold asks of a kernels module, recorded: one OpenBLAS at 4 threads."""

    def __init__(self):
        self.told, self.calls, self.threads = [], [], 4

    def blas_setter_slots(self):
        return 16

    def use_blas_thread_setters(self, addresses):
        self.told.append(list(addresses))

    def hold_blas_threads(self, threads):
        self.calls.append("hold")
        saved, self.threads = (self.threads,), threads
        return saved

    def restore_blas_threads(self, saved):
        self.calls.append("restore")
        (self.threads,) = saved


def a_library(threads):
    """A setter of a BLAS library the kernels do not set, at ``threads``; its count in ``setter.threads``."""

    def setter(count):
        previous, setter.threads = setter.threads, count
        return previous

    setter.threads = threads
    return setter


def test_the_blas_hold_restores_through_the_kernels_module_that_set_it(monkeypatch):
    """benchmarks/ab_kernels.py swaps two builds of the kernels between calls: each is given the addresses once,
    and the hold is undone by the one that made it, while a call through the other may still run."""
    from gru.backends.cython import backend as cython_backend

    monkeypatch.setattr(cython_backend, "_find_blas_setters", lambda: ([1234], []))
    hold, first, second = cython_backend._BlasHold(), FakeKernels(), FakeKernels()
    hold.hold(first)
    hold.hold(second)  # nested: counted, nothing set again
    assert first.threads == 1 and first.calls == ["hold"] and second.calls == []
    hold.release()
    assert first.threads == 1  # the other call still runs
    hold.release()
    assert first.threads == 4 and first.calls == ["hold", "restore"] and second.calls == []
    hold.hold(second)
    hold.release()
    hold.hold(first)
    hold.release()
    assert first.told == [[1234]] and second.told == [[1234]]  # each module told once
    assert second.calls == ["hold", "restore"] and second.threads == 4
    with pytest.raises(RuntimeError, match="released more often than held"):
        hold.release()


def test_a_failing_blas_setter_leaves_no_library_held(monkeypatch):
    """A setter that raises while the hold sets the counts: the error reaches the caller, and every library
    already set (OpenBLAS's through the kernels, another one before it) gets its count back. One that raises
    when its count is given back stops none of the others either."""
    from gru.backends.cython import backend as cython_backend

    def refuse(threads):
        raise RuntimeError("this BLAS cannot be set")

    other = a_library(3)
    monkeypatch.setattr(cython_backend, "_find_blas_setters", lambda: ([1234], [other, refuse]))
    hold, kernels = cython_backend._BlasHold(), FakeKernels()
    with pytest.raises(RuntimeError, match="cannot be set"):
        hold.hold(kernels)
    assert other.threads == 3 and kernels.threads == 4

    def refuse_to_go_back(threads):
        if threads != 1:
            raise RuntimeError("this BLAS cannot go back")
        return 5

    other, last = a_library(3), a_library(7)
    monkeypatch.setattr(cython_backend, "_find_blas_setters", lambda: ([1234], [other, refuse_to_go_back, last]))
    hold, kernels = cython_backend._BlasHold(), FakeKernels()
    hold.hold(kernels)
    assert (other.threads, last.threads, kernels.threads) == (1, 1, 1)
    with pytest.raises(RuntimeError, match="cannot go back"):
        hold.release()
    assert (other.threads, last.threads, kernels.threads) == (3, 7, 4)


def test_a_threadpoolctl_limit_is_the_calling_threads(monkeypatch):
    """OpenMP's limits are per thread: one set in a worker thread holds there, and nowhere else."""
    import threading

    monkeypatch.delenv("GRU_NUM_THREADS", raising=False)
    backend = gru.get_backend("cython")
    unlimited = backend.thread_count(None)
    if unlimited < 2:
        pytest.skip("one thread here either way: nothing to tell apart")
    seen = {}

    def limited():
        with threadpool_limits(limits=1, user_api="openmp"):
            seen["limited"] = backend.thread_count(None)
            layer = gru.GRU(4, 64, backend="cython", seed=0)
            seen["output"] = layer(np.ones((3, 1, 4), "float32"))[0]  # runs under the limit

    def free():
        seen["free"] = backend.thread_count(None)

    for target in (limited, free):
        worker = threading.Thread(target=target)
        worker.start()
        worker.join()
    assert seen["limited"] == 1
    assert seen["free"] == unlimited  # the other thread's limit does not reach this one
    assert seen["output"].shape == (3, 1, 64)


def test_threadpoolctl_limit_and_environment_variable_are_respected(monkeypatch):
    backend = gru.get_backend("cython")
    with threadpool_limits(limits=1, user_api="openmp"):
        assert backend.thread_count(None) == 1
    monkeypatch.setenv("GRU_NUM_THREADS", "3")
    assert backend.thread_count(None) == 3
    assert backend.thread_count(2) == 2  # the call's argument wins
    for bad in ("many", "0", "-3", "1.5"):
        monkeypatch.setenv("GRU_NUM_THREADS", bad)
        with pytest.raises(ValueError, match=f"^GRU_NUM_THREADS: expected a positive integer, got '{bad}'"):
            backend.thread_count(None)


def test_threads_argument_is_validated():
    layer = gru.GRU(4, 8, backend="cython", seed=0)
    x = np.zeros((2, 1, 4), "float32")
    with pytest.raises(ValueError, match="threads"):
        layer(x, threads=0)
    with pytest.raises(TypeError, match="threads"):
        layer(x, threads=1.5)


def test_read_only_inputs_are_accepted():
    layer = gru.GRU(4, 20, backend="cython", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype("float32")
    x.flags.writeable = False
    expected = gru.GRU(4, 20, backend="numpy", seed=0)(x)[0]
    np.testing.assert_allclose(layer(x)[0], expected, rtol=0, atol=1e-5)


def test_concurrent_calls_from_python_threads_match_serial_ones_and_restore_blas(blas_at_two_threads):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    layers = [gru.GRU(6, 48, 2, bidirectional=True, backend="cython", seed=k) for k in range(3)]
    inputs = [rng.standard_normal((25, 3, 6)).astype("float32") for _ in range(8)]
    serial = [layers[k % 3](x, lengths=[25, 9, 0])[0] for k, x in enumerate(inputs)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda kx: layers[kx[0] % 3](kx[1], lengths=[25, 9, 0])[0], enumerate(inputs)))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    assert blas_threads() == blas_at_two_threads


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@EACH_VARIANT
@pytest.mark.parametrize("batch", [1, 4])
def test_backward_with_several_threads_matches_the_oracle(threads, reset_after, batch):
    """H = 72: several unit slices (one partial) in the backward's per-step products and weight GEMMs."""
    rng = np.random.default_rng(threads * 100 + batch)
    layer = gru.GRU(7, 72, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((9, batch, 7))
    h0 = rng.standard_normal((4, batch, 72))
    lengths = rng.integers(0, 10, batch)
    d_output = rng.standard_normal((9, batch, 144))
    d_h_n = rng.standard_normal((4, batch, 72))
    assert_training_matches_oracle(layer, x, rng, h0, lengths, threads, d_output, d_h_n)


@pytest.mark.parametrize(
    ("I", "H", "T", "B", "threads"),
    [
        (7, 72, 2, 1, 5),  # 2 row parts of 2 gate blocks each, one thread idle
        (7, 72, 3, 1, 5),  # 3 row parts of 1 block, two threads idle
        (7, 72, 7, 2, 3),  # 3 parts of uneven row counts (5, 5, 4)
        (1024, 512, 2, 2, 4),  # the partial sums' cap: 2 parts, each of 2 gate blocks
    ],
    ids=["parts-2x2", "parts-3x1", "parts-uneven", "capped"],
)
@EACH_VARIANT
def test_weight_gradients_split_over_rows_and_gate_blocks_match_the_oracle(I, H, T, B, threads, reset_after):
    """The weight-gradient GEMMs split the T*B rows they sum over into parts whose partial sums are added."""
    rng = np.random.default_rng(I + T * B + threads)
    layer = gru.GRU(I, H, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    assert_training_matches_oracle(layer, rng.standard_normal((T, B, I)), rng, threads=threads)


def kernel_call(
    team_of_panels, panels_fill=None, threads=2, w_rows=True, T=6, h0=None, reset_after=True, w_hh_finite=False
):
    """One direct call of the forward kernel; the recurrent weights packed for ``team_of_panels`` threads
    (``panels_fill``: then overwritten with it), h0 random unless given."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(7)
    B, I, H = 3, 5, 48
    w_ih_t = rng.standard_normal((I, 3 * H))
    w_hh = rng.standard_normal((3 * H, H)) / 8
    panels = np.empty_like(w_hh)
    _kernels.pack_panels(w_hh, team_of_panels, panels, w_rows)
    if panels_fill is not None:
        panels[...] = panels_fill
    output, h_n = np.zeros((T, B, H)), rng.standard_normal((B, H))
    if h0 is not None:
        h_n[...] = h0
    workspace = np.zeros((_kernels.workspace_rows(T, B, I, H, 8, False, T, threads), 3 * H))
    _kernels.run_direction(
        rng.standard_normal((T, B, I)), w_ih_t, np.ascontiguousarray(w_ih_t.T), w_hh, rng.standard_normal(3 * H),
        rng.standard_normal(H), np.full(B, T, np.int64), np.arange(B, dtype=np.int64), False, reset_after, output,
        h_n, None, None, workspace, panels, team_of_panels, w_rows, np.zeros((3 * H, H)), threads, w_hh_finite,
    )  # fmt: skip
    return output, h_n


@pytest.mark.parametrize("w_rows", [True, False], ids=["rows", "transposed"])
def test_a_one_step_call_from_h0_zero_reads_no_recurrent_weights(w_rows):
    """Told W_hh is finite, a one-step reset-after call from h0 = 0 never reads its panels (NaN here): the output
    is finite. Told otherwise, or from an h0 with one nonzero value, it makes the product: NaN. Reset-before
    still makes its candidate's product over r ⊙ h0 (NaN where r is), so NaN there either way."""
    nan_panels = {"team_of_panels": 2, "panels_fill": np.nan, "w_rows": w_rows, "T": 1}
    one_value = np.zeros((3, 48))
    one_value[2, 47] = 0.5
    assert np.isfinite(kernel_call(**nan_panels, h0=0.0, w_hh_finite=True)[0]).all()
    assert np.isnan(kernel_call(**nan_panels, h0=0.0, w_hh_finite=False)[0]).all()
    assert np.isnan(kernel_call(**nan_panels, h0=one_value, w_hh_finite=True)[0]).all()
    assert np.isnan(kernel_call(**nan_panels, h0=0.0, w_hh_finite=True, reset_after=False)[0]).all()


@pytest.mark.parametrize("w_rows", [True, False], ids=["rows", "transposed"])
def test_a_team_other_than_the_one_the_weights_were_packed_for_packs_its_own(w_rows):
    """Panels packed for 3 threads are never read by a team of 2: it packs its own (here the given ones are NaN)."""
    expected = kernel_call(2, w_rows=w_rows)
    for got, want in zip(kernel_call(3, panels_fill=np.nan, w_rows=w_rows), expected, strict=True):
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("w_rows", [True, False], ids=["rows", "transposed"])
def test_each_thread_gets_its_units_rows_of_w_hh_in_three_column_blocks(w_rows):
    """A team of 2 at H = 48: units [0, 32) and [32, 48); each thread's rows of W_hh (r, z, n of its units) as
    the blocks of columns before its units, of its units and after them, each a contiguous matrix, or each
    transposed."""
    from gru.backends.cython import _kernels

    H = 48
    w_hh = np.random.default_rng(5).standard_normal((3 * H, H))
    panels = np.empty_like(w_hh)
    _kernels.pack_panels(w_hh, 2, panels, w_rows)
    flat = panels.ravel()
    for u0, nu in [(0, 32), (32, 16)]:
        rows = np.concatenate([w_hh[g * H + u0 : g * H + u0 + nu] for g in range(3)])  # (3 nu, H)
        start = 3 * H * u0
        for k0, k1 in [(0, u0), (u0, u0 + nu), (u0 + nu, H)]:
            block = flat[start + 3 * nu * k0 : start + 3 * nu * k1]
            if w_rows:
                np.testing.assert_array_equal(block.reshape(3 * nu, k1 - k0), rows[:, k0:k1])
            else:
                np.testing.assert_array_equal(block.reshape(k1 - k0, 3 * nu), rows[:, k0:k1].T)


def test_pack_panels_refuses_an_empty_team():
    from gru.backends.cython import _kernels

    with pytest.raises(ValueError, match="team: expected at least 1 thread, got 0"):
        _kernels.pack_panels(np.zeros((48, 16)), 0, np.zeros((48, 16)), True)


def test_recurrent_weights_are_packed_once_per_layer_and_team(monkeypatch):
    """Packing is per-layer work, not per-call work; new parameters or another team repack."""
    backend = gru.get_backend("cython")
    packed = []
    real_pack = backend._kernels.pack_panels

    def counting_pack(w_hh, team, panels, w_rows):
        packed.append(team)
        return real_pack(w_hh, team, panels, w_rows)

    monkeypatch.setattr(backend._kernels, "pack_panels", counting_pack)
    layer = gru.GRU(4, 96, num_layers=2, backend="cython", seed=0)  # teams of up to 6 (16 units a thread)
    x = np.random.default_rng(0).standard_normal((5, 2, 4)).astype("float32")
    first = layer(x, threads=2)[0]
    for _ in range(3):
        np.testing.assert_array_equal(layer(x, threads=2)[0], first)
    assert packed == [2, 2]  # one per layer
    np.testing.assert_allclose(layer(x, threads=1)[0], first, rtol=0, atol=1e-6)
    assert packed == [2, 2, 1, 1]
    for threads in (2, 1, 2):  # two team sizes in turn: both stay packed
        layer(x, threads=threads)
    assert packed == [2, 2, 1, 1]
    for threads in (3, 4, 1, 2, 3, 4):  # up to four stay packed (PANEL_TEAMS_KEPT)
        layer(x, threads=threads)
    assert packed == [2, 2, 1, 1, 3, 3, 4, 4]
    layer(x, threads=5)  # a fifth: packed, in place of the oldest
    layer(x, threads=1)
    assert packed == [2, 2, 1, 1, 3, 3, 4, 4, 5, 5]
    layer(x, threads=2)
    assert packed == [2, 2, 1, 1, 3, 3, 4, 4, 5, 5, 2, 2]
    layer.load_state_dict(layer.state_dict())
    layer(x, threads=1)
    assert packed == [2, 2, 1, 1, 3, 3, 4, 4, 5, 5, 2, 2, 1, 1]


def test_which_calls_read_panels_of_w_hh_rows():
    """Several sequences: rows (gemm('T', 'N')) unless the small-matrix kernel runs the transposed blocks. One
    sequence: rows past L2 (1 MB a thread's panel), and with the small kernel from 8 L1s (48 KB here); see
    panel_rows."""
    from gru.backends.cython import _kernels

    with small_kernel(False), l1_of(48 * 1024):
        assert _kernels.panel_rows(2, 64, 4, 2) and _kernels.panel_rows(40, 128, 4, 1)
        assert not _kernels.panel_rows(1, 256, 4, 2)  # 128 units a thread: 384 KB
        assert _kernels.panel_rows(1, 1024, 4, 2) and _kernels.panel_rows(1, 300, 8, 2)  # 6 MB, 1.15 MB
        assert not _kernels.panel_rows(1, 300, 4, 2)  # 576 KB
    with small_kernel(True), l1_of(48 * 1024):
        assert not _kernels.panel_rows(2, 64, 4, 2) and not _kernels.panel_rows(40, 1024, 4, 2)
        assert _kernels.panel_rows(1, 1024, 4, 2) and _kernels.panel_rows(1, 512, 4, 2)  # 1.5 MB
        assert _kernels.panel_rows(1, 384, 4, 2) and _kernels.panel_rows(1, 256, 4, 2)  # 884 KB, 384 KB: 8 L1s
        assert not _kernels.panel_rows(1, 240, 4, 2) and not _kernels.panel_rows(1, 128, 4, 2)  # 338 KB, 96 KB
        assert _kernels.panel_rows(1, 192, 8, 2) and not _kernels.panel_rows(1, 160, 8, 2)  # 432 KB, 300 KB
        assert _kernels.panel_rows(1, 182, 4, 1) and not _kernels.panel_rows(1, 181, 4, 1)  # past 8 L1s, not


@pytest.mark.parametrize("small", [False, True], ids=["packed-kernels", "small-kernel"])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
def test_one_sequence_past_l2_reads_rows_and_matches_the_oracle(reset_after, small):
    """One sequence at H = 300 in float64: 1.15 MB of panel a thread, two threads; rows read by gemv('T'), or
    with the small kernel by gemm('T', 'N') (parts of 160-480 rows and more than 32 inputs, see
    _kernels.matmul_w)."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(11)
    layer = gru.GRU(7, 300, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((4, 1, 7))
    with small_kernel(small):
        assert _kernels.panel_rows(1, 300, 8, 2)
        assert_training_matches_oracle(layer, x, rng, threads=2)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
def test_few_rows_with_large_input_weights_project_with_w_ih_rows(threads, reset_after):
    """float32, 2.15 MB of input weights a thread and 10 rows: the whole-sequence projection takes W_ih's rows
    as BLAS's second operand and unpacks the product (see _kernels.project_by_rows); both directions, with
    lengths, against the oracle; and not in float64, nor past 128 rows."""
    from gru.backends.cython import _kernels

    I = 1400 * threads
    rng = np.random.default_rng(13)
    layer = gru.GRU(I, 128, bidirectional=True, reset_after=reset_after, backend="cython", seed=rng)
    x = rng.standard_normal((5, 2, I)).astype("float32")
    assert _kernels.projects_with_w_ih_rows(5, 2, I, 128, 4, threads)
    assert _kernels.projects_with_w_ih_rows(64, 2, I, 128, 4, threads)  # 128 rows
    assert not _kernels.projects_with_w_ih_rows(5, 2, I, 128, 8, threads)
    assert not _kernels.projects_with_w_ih_rows(65, 2, I, 128, 4, threads)
    for lengths in (None, np.array([5, 3])):
        output, h_n, gates = layer(x, lengths=lengths, threads=threads, return_gates=True)
        expected_output, expected_h_n, expected_gates = oracle_for(layer, x.astype(np.float64), lengths=lengths)
        np.testing.assert_allclose(output, expected_output, rtol=0, atol=2e-5)
        np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=2e-5)
        for g, name in enumerate("rzn"):
            np.testing.assert_allclose(getattr(gates, name), expected_gates[:, g], rtol=0, atol=2e-5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("small", [False, True], ids=["packed-kernels", "small-kernel"])
def test_up_to_eight_rows_with_large_input_weights_project_without_packing(dtype, small):
    """At most 8 rows (T * B) past 2 MB of input weights a thread: with the small kernel the whole-sequence
    projection is one chunk of rows cut for it (project_step), not a packed GEMM nor W_ih's rows; 9 rows in
    float32 take W_ih's rows again. Both directions, lengths and two threads, against the oracle."""
    from gru.backends.cython import _kernels

    I, itemsize = 2800, np.dtype(dtype).itemsize  # 2.15 MB a thread in float32
    rng = np.random.default_rng(15)
    layer = gru.GRU(I, 128, bidirectional=True, dtype=dtype, backend="cython", seed=rng)
    x = rng.standard_normal((4, 2, I)).astype(dtype)
    atol = 2e-5 if dtype == "float32" else 1e-12
    with small_kernel(small):
        assert _kernels.projects_with_w_ih_rows(4, 2, I, 128, itemsize, 2) == (not small and dtype == "float32")
        assert _kernels.projects_with_w_ih_rows(9, 1, I, 128, itemsize, 2) == (dtype == "float32")
        for lengths in (None, np.array([1, 4])):
            output, h_n = layer(x, lengths=lengths, threads=2)
            expected_output, expected_h_n, _ = oracle_for(layer, x.astype(np.float64), lengths=lengths)
            np.testing.assert_allclose(output, expected_output, rtol=0, atol=atol)
            np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=atol)


def test_the_rule_for_padding_a_projections_rows():
    """Rounded up to OpenBLAS's row block (16 with the small kernel's SkylakeX kernels, else 8) where the rest
    needs two or more of its smaller blocks (8, 4, 2, 1)."""
    from gru.backends.cython import _kernels

    rows = _kernels.padded_projection_rows
    with small_kernel(True):
        assert [rows(r) for r in range(1, 18)] == [1, 2, 16, 4, 16, 16, 16, 8, 16, 16, 16, 16, 16, 16, 16, 16, 17]
        assert (rows(99), rows(100), rows(104), rows(120), rows(121)) == (112, 100, 104, 120, 128)
    with small_kernel(False):
        assert [rows(r) for r in range(1, 18)] == [1, 2, 8, 4, 8, 8, 8, 8, 9, 10, 16, 12, 16, 16, 16, 16, 17]
    with row_padding(False):
        assert rows(15) == 15


@pytest.mark.parametrize("small", [False, True], ids=["packed-kernels", "small-kernel"])
@pytest.mark.parametrize(("T", "B"), [(3, 1), (11, 1), (5, 3), (33, 3)], ids=["3", "11", "15", "99"])
def test_padded_projections_with_w_ih_rows_match_the_oracle(small, T, B):
    """T * B rows projected with W_ih's rows (2.15 MB a thread; 3 rows only without the small kernel, which
    takes up to 8 unpacked), padded with rows of zeros (to the next 16 with the small kernel's blocks, else
    the next 8) and not: both directions, lengths, two threads, against the oracle."""
    from gru.backends.cython import _kernels

    I = 2800
    rng = np.random.default_rng(T * B)
    layer = gru.GRU(I, 128, bidirectional=True, backend="cython", seed=rng)
    x = rng.standard_normal((T, B, I)).astype("float32")
    lengths = np.array([T] + [max(1, T - 2 * b) for b in range(1, B)])
    with small_kernel(small):
        assert _kernels.projects_with_w_ih_rows(T, B, I, 128, 4, 2) == (T * B > 8 or not small)
        assert _kernels.padded_projection_rows(T * B) > T * B  # padded where W_ih's rows project them
        for padded in (True, False):
            with row_padding(padded):
                for given in (None, lengths):
                    output, h_n = layer(x, lengths=given, threads=2)
                    want_output, want_h_n, _ = oracle_for(layer, x.astype(np.float64), lengths=given)
                    np.testing.assert_allclose(output, want_output, rtol=0, atol=2e-5)
                    np.testing.assert_allclose(h_n, want_h_n, rtol=0, atol=2e-5)


def _one_thread_child_matches_numpy(run, x_shape: tuple, layer_args: str, lengths: str, *, seed: int) -> None:
    """In a child whose OpenMP gives one thread (``run``: the run_on_one_openmp_thread fixture), a float32 Cython
    layer called with ``threads=2`` matches the float64 numpy backend's layer of the same weights, for each of
    ``lengths`` (a Python expression of the choices, which may draw from ``rng``)."""
    code = (
        "import numpy as np, gru\n"
        f"rng = np.random.default_rng({seed})\n"
        f"x = rng.standard_normal({x_shape!r}).astype('float32')\n"
        f"layer = gru.GRU({layer_args}, backend='cython', seed={seed})\n"
        f"reference = gru.GRU({layer_args}, backend='numpy', dtype='float64', seed={seed})\n"
        f"for given in {lengths}:\n"
        "    got = layer(x, lengths=given, threads=2)[0]\n"
        "    want = reference(x.astype('float64'), lengths=given)[0]\n"
        "    assert np.abs(got - want).max() < 2e-5, np.abs(got - want).max()\n"
        "print('ok')\n"
    )
    assert run(code) == ["ok"]


def test_a_smaller_team_than_planned_finds_room_for_a_projection_with_w_ih_rows(run_on_one_openmp_thread):
    """Planned for two threads, (5,2,2000,128) projects as before (1.5 MB of input weights a thread); on the one
    thread OpenMP gives (OMP_THREAD_LIMIT=1, in a child process), 3 MB, with W_ih's rows: the workspace has room
    for it, and the result matches the numpy backend's."""
    from gru.backends.cython import _kernels

    if not _kernels.has_openmp():
        pytest.skip("built without OpenMP: every call runs in one thread")
    assert not _kernels.projects_with_w_ih_rows(5, 2, 2000, 128, 4, 2)
    assert _kernels.projects_with_w_ih_rows(5, 2, 2000, 128, 4, 1)
    _one_thread_child_matches_numpy(run_on_one_openmp_thread, (5, 2, 2000), "2000, 128", "(None, [5, 2])", seed=14)


@pytest.mark.parametrize("reset_after", [True, False], ids=["reset-after", "reset-before"])
def test_one_sequence_within_l2_reads_rows_on_the_small_kernel(reset_after):
    """One sequence at H = 192 in float64, two threads: a 432 KB panel a thread, within the L2 but past 8 L1s,
    reads rows with the small kernel (see _kernels.panel_rows) and keeps none of them (kept_block_inputs 0);
    forward with lengths and training against the oracle."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(12)
    layer = gru.GRU(6, 192, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    with small_kernel(True), l1_of(48 * 1024):
        assert _kernels.panel_rows(1, 192, 8, 2) and _kernels.kept_block_inputs(1, 192, 8, 2) == 0
        assert_one_sequence_matches_oracle(layer, rng.standard_normal((1, 1, 192)), rng, threads=2)
        assert_training_matches_oracle(layer, rng.standard_normal((6, 1, 6)), rng, threads=2)


def assert_one_sequence_matches_oracle(layer, h0, rng, threads):
    """One sequence (input size 6) at T = 7 and at T = 8 with length 5: forward, gates and training, float64."""
    for T, length in [(7, 7), (8, 5)]:
        x = rng.standard_normal((T, 1, 6))
        lengths = np.array([length])
        output, h_n, gates = layer(x, h0, lengths, threads=threads, return_gates=True)
        expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
        np.testing.assert_allclose(output, expected_output, rtol=0, atol=1e-12)
        np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=1e-12)
        for g, name in enumerate("rzn"):
            np.testing.assert_allclose(getattr(gates, name), expected_gates[:, g], rtol=0, atol=1e-12)
        assert_training_matches_oracle(layer, x, rng, h0=h0, lengths=lengths, threads=threads)


@contextlib.contextmanager
def planned_cache(level: int, size: int):
    """The kernels planning for an L1 data cache (``level`` 1) or, for their panels, an L2 of ``size`` bytes
    (0: the machine's); then for the one planned for before (see _kernels.use_l1_bytes, use_l2_bytes)."""
    from gru.backends.cython import _kernels

    use = _kernels.use_l1_bytes if level == 1 else _kernels.use_l2_bytes
    before = _kernels.l1_data_bytes() if level == 1 else _kernels.l2_cache_bytes()
    use(size)
    try:
        yield
    finally:
        use(before)


def libc_sysconf(name: str) -> int:
    """The C library's sysconf value ``name`` (as ``getconf`` spells it), as the kernels read it; 0 where it
    has none. Python's os.sysconf knows only the names its build was compiled with: some lack the caches'."""
    try:
        return int(os.sysconf(f"SC_{name}"))
    except (ValueError, OSError):
        pass
    try:
        printed = subprocess.run(["getconf", name], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 0
    return int(printed) if printed.isdigit() else 0


def l1_of(size: int):
    return planned_cache(1, size)


def l2_of(size: int):
    return planned_cache(2, size)


@pytest.fixture(autouse=True)
def one_mb_l2():
    """The expectations here are written for a core with a 1 MB L2 (Zen 4 and 5, most server cores of Intel's):
    planned for, whatever this machine's is (see _kernels.panel_rows)."""
    with l2_of(1 << 20):
        yield


def test_the_l2_planned_for_is_the_machines():
    """sysconf's L2 when it says a plausible size (64 KB to 64 MB), else 1 MB."""
    from gru.backends.cython import _kernels

    reported = libc_sysconf("LEVEL2_CACHE_SIZE")
    expected = reported if 1 << 16 <= reported <= 1 << 26 else 1 << 20
    with l2_of(0):
        assert _kernels.l2_cache_bytes() == expected
    assert _kernels.l2_cache_bytes() == 1 << 20  # back to the fixture's


# x86-64 microarchitecture levels by /proc/cpuinfo's flags; each level holds the ones below it, and
# v3's clone needs v2 too (the psABI's lists, in Linux's names)
X86_64_V2 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}
X86_64_V3 = X86_64_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
X86_64_V4 = X86_64_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def test_the_gate_pass_runs_on_the_widest_vectors_the_build_and_the_cpu_allow():
    """gate_pass_isa against the CPU's x86-64 level read from /proc/cpuinfo: a build with clones names the
    clone for that level (the baseline's below v3), one without names what it was compiled for. This checks
    the level logic the loader's pick follows; which clone the ifunc runs is not visible from here (the
    installed module is stripped). A native build only checks the second case."""
    from gru.backends.cython import _kernels

    isa = _kernels.gate_pass_isa()
    assert isa in _kernels.VECTOR_ISAS
    if not _kernels.has_gate_pass_clones():
        assert isa == _kernels.vector_isa()
        return
    flags = _machine.cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo to read the CPU's level from")
    expected = "AVX-512" if X86_64_V4 <= flags else "AVX2+FMA" if X86_64_V3 <= flags else _kernels.vector_isa()
    assert isa == expected


def test_which_one_sequence_calls_keep_blocks_of_their_panel_in_l1():
    """One sequence whose panel (transposed blocks) takes 1.25-8 L1s: kept blocks of 3/4 of the L1, at most half
    of the thread's own inputs (see _kernels.kept_inputs)."""
    from gru.backends.cython import _kernels

    assert _kernels.l1_data_bytes() >= 4096
    with l1_of(48 * 1024):
        # H = 128, two threads: 64 units a thread, 768 B an input, a 96 KB panel; 36 KB / 768 B = 48 > 64 / 2
        assert _kernels.kept_block_inputs(1, 128, 4, 2) == 32
        assert _kernels.kept_block_inputs(1, 160, 4, 2) == 36864 // 960  # 80 units: a 150 KB panel
        assert _kernels.kept_block_inputs(1, 128, 4, 1) == 36864 // 1536  # one thread: 192 KB
        assert _kernels.kept_block_inputs(1, 128, 8, 2) == 36864 // 1536  # float64
        assert _kernels.kept_block_inputs(1, 96, 4, 2) == 0  # 54 KB: 1.1 L1s
        assert _kernels.kept_block_inputs(1, 300, 4, 2) == 0  # 160 units a thread: 576 KB, 11.7 L1s
        assert _kernels.kept_block_inputs(1, 1024, 4, 2) == 786432 // 2048  # 6 MB of rows: kept rows in L2
        assert _kernels.kept_block_inputs(2, 128, 4, 2) == 0  # two sequences
        assert _kernels.kept_block_inputs(1, 128, 4, 2, reset_after=False) == 0  # the candidate's product reads last
    with l1_of(32 * 1024):
        assert _kernels.kept_block_inputs(1, 96, 4, 2) == 24  # 54 KB: 1.7 L1s; 24 KB / 576 B = 42 > 48 / 2


@pytest.mark.parametrize(
    ("H", "l1", "threads", "keep"),
    [
        (40, 8192, 1, 6),  # 40 own inputs: K1, a middle of 28, K2
        (40, 8192, 2, 8),  # the first thread 32 own inputs (a middle of 16), the second 8 (no kept blocks)
        (40, 8192, 3, 8),  # 16 own inputs: two halves, no middle
        (40, 16384, 1, 12),
        (40, 16384, 2, 16),  # 32: halves
        (41, 4096, 3, 8),  # the last thread's 9 own inputs: K 4, a middle of 1 (odd: K at most 9 // 2)
        (21, 8000, 1, 10),  # 21 own inputs: K 10, a middle of 1
    ],
)
@EACH_VARIANT
def test_one_sequence_with_kept_blocks_matches_the_oracle(H, l1, threads, keep, reset_after):
    """float64 with a small L1 planned for: kept blocks with and without a middle one, odd numbers of own inputs,
    odd and even steps, both directions, a second layer, a shorter sequence; forward, gates and training.
    Reset-before keeps none, and runs the same shapes as a check."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(l1 + threads + H)
    layer = gru.GRU(6, H, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    h0 = rng.standard_normal((4, 1, H))
    with l1_of(l1):
        assert _kernels.kept_block_inputs(1, H, 8, threads, reset_after) == (keep if reset_after else 0)
        assert_one_sequence_matches_oracle(layer, h0, rng, threads)


def test_which_one_sequence_calls_keep_rows_of_a_panel_of_rows_in_l2():
    """Past the L2 (1 MB planned for): kept rows of at most 3/4 of the L2 (each row: the own inputs), at most
    half the rows of the first product (see _kernels.kept_inputs), however large the panel."""
    from gru.backends.cython import _kernels

    assert _kernels.l2_cache_bytes() == 1 << 20  # the module's fixture
    assert _kernels.kept_block_inputs(1, 512, 4, 2) == 384  # 256 own inputs: 1 KB a row, 768 rows
    assert _kernels.kept_block_inputs(1, 768, 4, 2) == 786432 // 1536  # 384 inputs, 1.5 KB a row: 3.4 MB
    assert _kernels.kept_block_inputs(1, 1024, 4, 2) == 786432 // 2048  # 512 inputs, 2 KB a row: 6 MB
    assert _kernels.kept_block_inputs(1, 4096, 4, 1) == 786432 // 16384  # 48 MB: 48 rows of 16 KB
    assert _kernels.kept_block_inputs(1, 512, 4, 2, reset_after=False) == 0


@pytest.mark.parametrize(
    ("H", "l2", "threads", "keep"),
    [
        (40, 16384, 2, 48),  # the first thread: 96 rows of 32 own inputs, R1 and R2 of 48, no middle
        (40, 8192, 2, 24),  # R of 24, a middle of 48
        (40, 16384, 1, 38),  # one thread: 120 rows of 40 inputs, R of 38, a middle of 44
        (41, 4096, 3, 24),  # the first thread: 48 rows of 16 (R 24, no middle); the last: 27 rows of 9 (R 13, 1)
        (40, 4096, 1, 9),  # a panel of 9.4 L2s: R of 9, a middle of 102
    ],
)
@pytest.mark.parametrize("small", [False, True], ids=["packed-kernels", "small-kernel"])
@EACH_VARIANT
def test_one_sequence_with_kept_rows_matches_the_oracle(H, l2, threads, keep, reset_after, small):
    """float64, panels of rows with a small L2 planned for: kept rows with and without a middle, odd counts, odd
    and even steps, both directions, a second layer, a shorter sequence; forward, gates and training.
    Reset-before keeps none, and runs the same shapes as a check. Parts of at least 32 inputs go by gemm('T',
    'N') with the small kernel, narrower ones by gemv('T') (see _kernels.matmul_w)."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(l2 + threads + H)
    layer = gru.GRU(6, H, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    h0 = rng.standard_normal((4, 1, H))
    with l2_of(l2), small_kernel(small):
        assert _kernels.panel_rows(1, H, 8, threads)
        assert _kernels.kept_block_inputs(1, H, 8, threads, reset_after) == (keep if reset_after else 0)
        assert_one_sequence_matches_oracle(layer, h0, rng, threads)


@EACH_VARIANT
def test_a_chunk_of_one_sequence_split_by_sequence_keeps_rows_and_matches_the_oracle(reset_after):
    """Without the small kernel a call split by sequence reads rows; 17 sequences on 2 threads end with a chunk of
    one, whose 55 KB panel is past a 16 KB L2 planned for: kept rows there, and a panel within it keeps none."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(17)
    layer = gru.GRU(5, 48, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((6, 17, 5))
    lengths = rng.integers(0, 7, 17)
    with small_kernel(False):
        assert _kernels.splits_sequences(17, 48, 8, 2) and _kernels.panel_rows(17, 48, 8, 1)
        assert _kernels.kept_block_inputs(1, 48, 8, 1, reset_after) == 0  # 55 KB within a 1 MB L2
        with l2_of(16384):
            assert _kernels.kept_block_inputs(1, 48, 8, 1, reset_after) == (32 if reset_after else 0)  # 12 KB / 384 B
            output, h_n = layer(x, None, lengths, threads=2)
            expected_output, expected_h_n, _ = oracle_for(layer, x, None, lengths)
            np.testing.assert_allclose(output, expected_output, rtol=0, atol=1e-12)
            np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=1e-12)
            assert_training_matches_oracle(layer, x, rng, lengths=lengths, threads=2)


def test_one_sequence_in_float32_with_kept_blocks_at_this_machines_l1():
    """H = 128 on two threads, the L1 the machine reports (or 48 KB where its panel would not qualify)."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(12)
    layer = gru.GRU(64, 128, dtype="float32", backend="cython", seed=rng)
    x = rng.standard_normal((41, 1, 64)).astype("float32")
    with l1_of(0 if _kernels.kept_block_inputs(1, 128, 4, 2) else 48 * 1024):
        assert _kernels.kept_block_inputs(1, 128, 4, 2) > 0
        output, h_n = layer(x, threads=2)
    expected, expected_h_n, _ = oracle_for(layer, x)
    np.testing.assert_allclose(output, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=1e-5)


def test_a_layer_called_with_two_layouts_and_two_thread_counts_in_turn_packs_each_once(products_cut):
    """One sequence past L2 reads rows, a batch the transposed blocks (see panel_rows): with threads 1 and 2
    that is four packings, all kept, so calls taking turns never repack."""
    from gru.backends.cython import _kernels

    I, H = 8, 512
    assert _kernels.panel_rows(1, H, 4, 1) and _kernels.panel_rows(1, H, 4, 2)
    assert not _kernels.panel_rows(4, H, 4, 1) and not _kernels.panel_rows(4, H, 4, 2)
    layer = gru.GRU(I, H, backend="cython", seed=0)
    backend = gru.get_backend("cython")
    rng = np.random.default_rng(0)
    calls = [(rng.standard_normal((2, B, I)).astype(np.float32), threads) for B in (1, 4) for threads in (1, 2)]
    for x, threads in calls:
        layer(x, threads=threads)
    (weights,) = [w for w in backend._prepared_weights if w.w_ih.shape == (3 * H, I) and w.w_hh.shape == (3 * H, H)]
    packed = dict(backend._prepared_weights[weights]["panels"])
    assert len(packed) == 4
    for x, threads in calls:
        layer(x, threads=threads)
    now = backend._prepared_weights[weights]["panels"]
    assert now.keys() == packed.keys() and all(now[key] is packed[key] for key in packed)  # none packed again


@pytest.mark.parametrize("B", [3, 40], ids=["split-by-unit", "split-by-sequence"])
def test_one_layer_called_with_the_small_kernel_on_and_off_packs_each_layout(B):
    """The panels' layout follows the small-kernel setting (see pack_panel): a layer packed under one and
    called under the other must not read the first layout as the second."""
    from gru.backends.cython import _kernels

    rng = np.random.default_rng(B)
    layer = gru.GRU(6, 48, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((5, B, 6))
    want = layer(x, backend="numpy")[0]
    assert _kernels.splits_sequences(B, 48, 8, 2) is (B == 40)
    for cut in (True, False, True, False):
        with small_kernel(cut):
            np.testing.assert_allclose(layer(x, threads=2)[0], want, rtol=0, atol=1e-12)


def test_which_batches_project_their_inputs_step_by_step(products_cut):
    """The two measured regimes (see _kernels.projects_per_step): rows of workspace tell which one ran."""
    from gru.backends.cython import _kernels

    def per_step(T, B, I, H, itemsize=4, reverse=False, shortest=None, team=1):
        rows = _kernels.workspace_rows(T, B, I, H, itemsize, reverse, T if shortest is None else shortest, team)
        padding = 2  # gh's row past the batch, and the states' (see product_rows)
        assert rows in (4 * B + 2 * team + padding, T * B + 3 * B + 2 * team + padding)
        return rows == 4 * B + 2 * team + padding

    MB = 1 << 20
    with l2_of(4 * MB):  # both weights' share of a thread (one for team=1) within half of it: 2 MB
        assert per_step(30, 32, 256, 256) and per_step(30, 32, 64, 256)  # B >= 32, I <= 256: 1.5 MB, 0.9 MB
        assert per_step(30, 32, 64, 96, itemsize=8)
        assert not per_step(30, 31, 256, 256) and not per_step(30, 8, 256, 256)  # too few sequences
        assert not per_step(100, 1, 64, 128)
        assert not per_step(30, 32, 256, 256, reverse=True, shortest=20)  # a step's rows from different times
        # split by sequence (16 and more sequences for 2 threads): a chunk's rows of x must be consecutive, and
        # each thread reads all of both weights
        assert per_step(30, 32, 256, 256, shortest=20) and not per_step(30, 32, 256, 256, shortest=20, team=2)
        assert per_step(30, 32, 256, 256, team=2)
    with l2_of(8 * MB):  # I > 256 on the small kernel's blocks: H = 512 split by unit, 3 MB a thread of two
        assert per_step(30, 32, 512, 512, team=2) and per_step(30, 64, 512, 512, shortest=20, team=2)
        assert not per_step(30, 32, 512, 512)  # one thread: 6 MB
        assert not per_step(30, 32, 2048, 128)  # 3.3 MB, but blocks of 64 too large for the small kernel
        assert not per_step(30, 32, 1024, 1024, team=2)  # 12 MB a thread
    with l2_of(2 * MB):  # past half of the L2, whole sequences
        assert not per_step(30, 32, 256, 256)  # 1.5 MB
        assert not per_step(30, 32, 256, 256, team=2)  # split by sequence: 1.5 MB each, not the 0.75 of a unit split
        assert per_step(30, 32, 64, 256) and not per_step(30, 32, 64, 256, itemsize=8)  # 0.9 MB, 1.8 MB
        assert not per_step(30, 64, 512, 512, team=2)
    with l2_of(8 * MB), small_kernel(False):  # both were measured with the small kernel: without it, whole sequences
        assert not per_step(30, 32, 256, 256) and not per_step(30, 32, 512, 512, team=2)


def test_which_projections_give_each_thread_a_block_of_rows():
    """Whole-sequence projections split by unit give each thread a block of rows for every unit from 512 rows a
    thread (see _kernels.projects_row_blocks); split by sequence always."""
    from gru.backends.cython import _kernels

    rows_blocks = _kernels.projects_in_row_blocks
    assert rows_blocks(100, 64, 512, 512, 4, 2) and rows_blocks(128, 8, 512, 512, 4, 2)  # 6,400 and 1,024 rows
    assert not rows_blocks(127, 8, 512, 512, 4, 2) and not rows_blocks(100, 1, 1024, 1024, 4, 2)
    assert rows_blocks(1536, 1, 512, 512, 4, 3) and not rows_blocks(1535, 1, 512, 512, 4, 3)
    assert rows_blocks(512, 1, 64, 64, 4, 1) and not rows_blocks(511, 1, 64, 64, 4, 1)
    assert rows_blocks(10, 20, 8, 64, 4, 2)  # split by sequence: 200 rows
    with small_kernel(True), l2_of(4 << 20):  # projected step by step: no whole-sequence projection
        assert _kernels.projects_step_by_step(100, 32, 256, 256, 4, 2) and not rows_blocks(100, 32, 256, 256, 4, 2)


@pytest.mark.parametrize("cut", [True, False], ids=["cut", "whole"])
@pytest.mark.parametrize("threads", [2, 3])
@EACH_VARIANT
def test_projections_in_blocks_of_rows_match_the_oracle(threads, reset_after, cut):
    """1,540 rows split by unit, projected in blocks of rows (every unit, one product) that the other threads'
    steps read: output and every gradient, both directions, varied lengths."""
    from gru.backends.cython import _kernels

    T, B, I, H = 140, 11, 6, 48
    rng = np.random.default_rng(threads + 10 * reset_after + 100 * cut)
    with small_kernel(cut):
        assert not _kernels.splits_sequences(B, H, 8, threads)
        assert _kernels.projects_in_row_blocks(T, B, I, H, 8, threads)
        layer = gru.GRU(I, H, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
        x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((2, B, H))
        lengths = np.concatenate([[T, 0, 1], rng.integers(0, T + 1, B - 3)])
        assert_training_matches_oracle(layer, x, rng, h0=h0, lengths=lengths, threads=threads)


@EACH_VARIANT
def test_projections_in_blocks_of_rows_with_a_thread_of_no_units_match_the_oracle(reset_after):
    """Five threads for 100 units take 32, 32, 32, 4 and none; the fifth still projects its block of the 2,600
    rows for every unit and passes every barrier: output and every gradient."""
    from gru.backends.cython import _kernels

    T, B, I, H = 260, 10, 4, 100
    assert _kernels.team_size(5, H, B, 8) == 5 and not _kernels.splits_sequences(B, H, 8, 5)
    assert _kernels.projects_in_row_blocks(T, B, I, H, 8, 5)
    rng = np.random.default_rng(31 + reset_after)
    layer = gru.GRU(I, H, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((1, B, H))
    lengths = np.concatenate([[T, 0], rng.integers(0, T + 1, B - 2)])
    assert_training_matches_oracle(layer, x, rng, h0=h0, lengths=lengths, threads=5)


def test_a_smaller_team_than_planned_projects_in_blocks_of_rows(run_on_one_openmp_thread):
    """Planned for two threads, 600 rows are projected unit by unit (under 512 a thread); on the one thread
    OpenMP gives (OMP_THREAD_LIMIT=1, in a child process), in one block of rows: the result matches the numpy
    backend's."""
    from gru.backends.cython import _kernels

    if not _kernels.has_openmp():
        pytest.skip("built without OpenMP: every call runs in one thread")
    assert not _kernels.projects_in_row_blocks(60, 10, 8, 64, 4, 2)
    assert _kernels.projects_in_row_blocks(60, 10, 8, 64, 4, 1)
    layer_args, lengths = "8, 64, bidirectional=True", "(None, rng.integers(0, 61, 10))"
    _one_thread_child_matches_numpy(run_on_one_openmp_thread, (60, 10, 8), layer_args, lengths, seed=15)


@pytest.mark.parametrize("threads", [1, 2])
def test_products_cut_in_column_blocks_and_parts_of_their_inputs_match_the_oracle(threads, products_cut):
    """(400,128,17,9) in float64. Two threads split the sequences: each one's block of the projection (77 or 76
    rows) runs in 8-row chunks (the last of fewer) through two column blocks of 192; one thread splits the units:
    three products of 128 columns. Each small product takes its 400 inputs in four parts (see
    _kernels.small_product), the backward's over 3H = 384 in three: output and every gradient, with lengths."""
    T, B, I, H = 9, 17, 400, 128
    rng = np.random.default_rng(40 + threads)
    layer = gru.GRU(I, H, bidirectional=True, dtype="float64", backend="cython", seed=rng)
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((2, B, H))
    lengths = np.concatenate([[T, 0, 1], rng.integers(0, T + 1, B - 3)])
    assert_training_matches_oracle(layer, x, rng, h0=h0, lengths=lengths, threads=threads)


@pytest.mark.parametrize("lengths", ["none", "all-T", "varied"])
@EACH_VARIANT
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("B", [40, 32])
def test_batches_that_project_inputs_step_by_step_match_the_oracle(lengths, reset_after, threads, B):
    """B >= 32 here projects each step's inputs on its own, but where a step's rows would come from different
    times (varied lengths: in reverse, and in both directions when three threads split the sequences) the
    whole sequence's first."""
    rng = np.random.default_rng(len(lengths) + threads + B)
    T, I, H = 7, 6, 40
    layer = gru.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((4, B, H))
    lens = {"none": None, "all-T": np.full(B, T), "varied": rng.integers(0, T + 1, B)}[lengths]
    assert_training_matches_oracle(layer, x, rng, h0, lens, threads)


def nan_filled_outputs(monkeypatch) -> list:
    """Outputs handed to the backend uninitialized come filled with NaN; returns the shapes handed out, in order."""
    import gru.backends._base as base
    from gru._arrays import aligned_empty

    handed = []

    def nan_filled(shape, dtype):
        array = aligned_empty(shape, dtype)
        array.fill(np.nan)
        handed.append(shape)
        return array

    monkeypatch.setattr(base, "aligned_empty", nan_filled)
    return handed


@pytest.mark.parametrize(
    ("B", "H", "threads"),
    [
        (1, 128, 2),  # one sequence, kept blocks in L1
        (1, 300, 2),  # one sequence, a panel of rows past L2
        (5, 72, 3),  # split by unit, a partial slice
        (17, 40, 2),  # split by sequence: chunks of 8, 8 and 1
        (40, 48, 2),  # the projection step by step
    ],
)
@pytest.mark.parametrize("small", [False, True], ids=["packed-kernels", "small-kernel"])
@EACH_VARIANT
def test_full_length_calls_write_every_element_of_an_uninitialized_output(
    monkeypatch, B, H, threads, reset_after, small
):
    """Without lengths the backend's output arrives uninitialized (fills_full_output): here NaN, which any element
    the kernels left unwritten would carry into the result. Both layers, both directions; forward and training."""
    handed = nan_filled_outputs(monkeypatch)
    rng = np.random.default_rng(B * H + threads)
    layer = gru.GRU(6, H, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend="cython", seed=rng)
    x = rng.standard_normal((7, B, 6))
    h0 = rng.standard_normal((4, B, H))
    expected_output, expected_h_n, _ = oracle_for(layer, x, h0, None)
    with small_kernel(small):
        output, h_n = layer(x, h0, threads=threads)
        assert handed == [(7, B, 2 * H)] * 2
        np.testing.assert_allclose(output, expected_output, rtol=0, atol=1e-12)
        np.testing.assert_allclose(h_n, expected_h_n, rtol=0, atol=1e-12)
        assert_training_matches_oracle(layer, x, rng, h0=h0, threads=threads)
        assert len(handed) == 4
        lengths = np.full(B, 7)  # full lengths are no lengths (canonical): uninitialized too
        np.testing.assert_allclose(layer(x, h0, lengths, threads=threads)[0], expected_output, rtol=0, atol=1e-12)
        assert len(handed) == 6
        lengths[0] = 4  # a shorter sequence: its steps past 4 are zeros
        output = layer(x, h0, lengths, threads=threads)[0]
        np.testing.assert_allclose(output, oracle_for(layer, x, h0, lengths)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("H", [128, 300])
def test_a_float32_full_length_output_arrives_uninitialized_and_comes_back_whole(monkeypatch, H):
    """float32 (sgemm, sgemv) with the small kernel: kept blocks at H = 128, at H = 300 a panel of rows past a
    256 KB L2, its one-row products by gemm('T', 'N')."""
    from gru.backends.cython import _kernels

    handed = nan_filled_outputs(monkeypatch)
    rng = np.random.default_rng(5)
    layer = gru.GRU(64, H, dtype="float32", backend="cython", seed=rng)
    x = rng.standard_normal((20, 1, 64)).astype("float32")
    with small_kernel(True), l2_of(256 * 1024):
        assert _kernels.panel_rows(1, H, 4, 2) == (H == 300)
        output, _ = layer(x, threads=2)
    expected_output, _, _ = oracle_for(layer, x, None, None)
    assert handed == [(20, 1, H)]
    assert np.isfinite(output).all()
    np.testing.assert_allclose(output, expected_output, rtol=0, atol=1e-5)
