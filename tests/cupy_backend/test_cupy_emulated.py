"""The whole CuPy backend on a CPU emulation of the CUDA execution model (``emulation/``).

Path rule, weight packing, launch arguments and every kernel run against the
float64 oracle: a covering subset of the conformance suite on every path, and
shapes chosen to stress each kernel's corner cases.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cupy_helpers import (
    assert_matches_oracle,
    assert_stacked_bidirectional_matches_oracle,
    emulated_backend,
    emulation,
    plan,
)

import gru
from gru.backends import ForwardResult
from gru.backends.cupy import _kernels, _paths, _plans
from gru.backends.cupy._plans import PATH_ENV_VAR, RESIDENT_LAYOUT_ENV_VAR, PersistentPlan, plan_resident
from gru.testing import test_forward, test_golden, test_gradients, test_layouts
from gru.testing._support import EACH_DTYPE, EACH_VARIANT, oracle_for


def test_the_emulation_has_every_kernel_the_backend_launches(emulator_library):
    for f in _kernels.KERNEL_FILES:
        for name in f.names:
            assert emulator_library.emu_has(name.encode()) == 1, name


# A covering subset of the conformance suite's parameter grid (the whole suite runs on the emulation
# with tests/cupy_backend/emulation/conformance_plugin.py; it takes minutes).
MATCHES_ORACLE_CASES = [
    # dtype, bias, bidirectional, num_layers, reset_after, lengths, with_h0, batch_first
    ("float32", True, False, 1, True, None, False, False),
    ("float64", False, True, 2, False, test_forward.MIXED_LENGTHS, True, True),
    ("float32", True, True, 3, False, test_forward.MIXED_LENGTHS, True, False),
    ("float64", True, False, 2, True, test_forward.MIXED_LENGTHS, False, True),
    ("float32", False, True, 1, True, test_forward.MIXED_LENGTHS, True, True),
    ("float64", True, True, 3, True, None, True, False),
    ("float32", True, False, 3, False, None, True, True),
    ("float64", False, False, 1, False, None, False, False),
]


@pytest.mark.parametrize("case", MATCHES_ORACLE_CASES)
def test_conformance_matches_oracle(emulated, case):
    test_forward.test_matches_oracle(emulated, *case)


@EACH_DTYPE
def test_conformance_other_forward_checks(emulated, dtype):
    for reset_after in (True, False):
        test_forward.test_without_gates_gives_the_same_answer(emulated, dtype, reset_after)
    test_forward.test_lengths_zero_keeps_h0_and_zero_output(emulated, dtype)


@EACH_DTYPE
def test_conformance_layouts(emulated, dtype):
    for bidirectional in (False, True):
        test_layouts.test_unbatched_input(emulated, dtype, bidirectional)
    test_layouts.test_unbatched_with_a_length(emulated, dtype)
    for shape in [(0, 3), (5, 0), (0, 0)]:
        test_layouts.test_empty_sequences_and_batches(emulated, dtype, shape, batch_first=True)
    for layout in ("fortran", "strided", "transposed"):
        test_layouts.test_memory_layout_does_not_change_the_answer(emulated, dtype, layout)
    test_layouts.test_repeated_calls_are_identical(emulated, dtype)
    for reset_after in (True, False):
        test_layouts.test_cell_matches_one_oracle_step(emulated, dtype, reset_after, batched=True)
    test_layouts.test_cell_matches_one_oracle_step(emulated, dtype, True, batched=False)


@EACH_DTYPE
def test_conformance_golden_pytorch_values(emulated, dtype):
    for golden in test_golden.GOLDEN:
        test_golden.test_backend_matches_pytorch(emulated, golden, dtype)


# Shapes that stress the kernels: many blocks, weight rows partly or wholly read from global memory,
# several batch tiles, dot products longer than one pass of a warp, tiny blocks.
STRESS_CASES = [
    # H, B, threads, min_units, shared memory per block, multiprocessors, L2 bytes
    pytest.param(5, 1, 32, 1, 48 * 1024, 8, 50 << 20, id="3-blocks-1-warp"),
    pytest.param(5, 3, 64, 2, 48 * 1024, 8, 50 << 20, id="tile-of-4"),
    pytest.param(37, 9, 64, 4, 2000, 16, 50 << 20, id="2-tiles-few-rows-cached"),
    pytest.param(37, 9, 64, 4, 2000, 16, 16000, id="2-tiles-some-rows-kept-in-L2"),
    pytest.param(130, 2, 64, 40, 48 * 1024, 4, 50 << 20, id="long-rows-partly-cached"),
    pytest.param(13, 5, 32, 1, 700, 32, 50 << 20, id="13-blocks-1-unit-each"),
]


@EACH_VARIANT
@pytest.mark.parametrize(("H", "B", "threads", "min_units", "smem", "sms", "l2"), STRESS_CASES)
def test_persistent_kernel_stress(emulator_library, monkeypatch, H, B, threads, min_units, smem, sms, l2, reset_after):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library, threads, min_units, smem_per_block=smem, sm_count=sms, l2_bytes=l2)
    rng = np.random.default_rng(H * 100 + B)
    assert_stacked_bidirectional_matches_oracle(
        backend, I=4, H=H, T=5, B=B, dtype="float32", reset_after=reset_after, rng=rng
    )
    assert backend.last_paths == ("persistent", "persistent")
    p = plan(backend.device, H=H, B=B, D=2, reset_after=reset_after, threads=threads, min_units=min_units)
    assert isinstance(p, PersistentPlan)
    if l2 < 1 << 20:  # the uncached rows split into ones kept in L2 and ones streamed
        assert 0 < p.l2_rows < p.rows - p.cached_rows
    launched = [launch for launch in backend.device.launches if launch[0].startswith("gru_persistent")]
    assert launched[-1] == (p.kernel, (1, p.blocks, 2), (threads,), p.shared_mem)


RESIDENT_STRESS_CASES = [
    # H, dtype: every chunk size, lanes from 1 to 32, a last chunk partly past H, H not a multiple of 32
    pytest.param(1, "float32", id="1-unit"),
    pytest.param(37, "float32", id="37-units-8-lanes"),
    pytest.param(64, "float32", id="64-units-512-threads"),
    pytest.param(100, "float32", id="100-units-chunk-64"),
    pytest.param(128, "float32", id="128-units-largest"),
    pytest.param(3, "float64", id="double-3-units"),
    pytest.param(33, "float64", id="double-33-units-chunk-32"),
    pytest.param(64, "float64", id="double-64-units"),
]


@EACH_VARIANT
@pytest.mark.parametrize(("H", "dtype"), RESIDENT_STRESS_CASES)
def test_resident_kernel_stress(emulator_library, monkeypatch, H, dtype, reset_after):
    """The chunked layout of W_hh (the only one for float64 and reset-before; "auto" takes rows for small
    float32 reset-after layers, so it is asked for here)."""
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)  # auto takes the resident kernel at these sizes
    monkeypatch.setenv(RESIDENT_LAYOUT_ENV_VAR, "chunked")
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(H * 10 + reset_after)
    T, B = 5, 3
    assert_stacked_bidirectional_matches_oracle(
        backend, I=4, H=H, T=T, B=B, dtype=dtype, reset_after=reset_after, rng=rng, lengths=np.array([T, 0, 2])
    )
    assert backend.last_paths == ("resident", "resident")
    p = plan_resident(hidden_size=H, dtype=dtype, reset_after=reset_after, elements=T * B * 2 * 3 * H)
    launched = [launch for launch in backend.device.launches if launch[0].startswith("gru_resident")]
    assert launched[-1] == (p.kernel, (B, 2, 1), (p.threads,), p.shared_mem)


@pytest.mark.parametrize(
    ("layout", "H"),
    [*(("rows", H) for H in (5, 37, 64, 100, 128)), ("auto", 48), ("auto", 100), ("chunked", 48)],
)
def test_resident_layouts_stress(emulator_library, monkeypatch, layout, H):
    """Each layout of W_hh (float32, reset-after) where the backend is told to take it ("auto": rows up to 64)."""
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    monkeypatch.setenv(RESIDENT_LAYOUT_ENV_VAR, layout)
    backend = emulated_backend(emulator_library)
    T, B = 5, 3
    assert_stacked_bidirectional_matches_oracle(
        backend, I=4, H=H, T=T, B=B, dtype="float32", reset_after=True, rng=np.random.default_rng(H),
        lengths=np.array([T, 0, 2]),
    )  # fmt: skip
    assert backend.last_paths == ("resident", "resident")
    p = plan_resident(hidden_size=H, dtype="float32", reset_after=True, elements=T * B * 2 * 3 * H, layout=layout)
    assert p.layout == ("rows" if layout == "rows" or (layout == "auto" and H <= 64) else "chunked")
    launched = [launch for launch in backend.device.launches if launch[0].startswith("gru_resident")]
    assert launched[-1] == (p.kernel, (B, 2, 1), (p.threads,), p.shared_mem)


@pytest.mark.parametrize("path", ["resident", "persistent", "auto"])
def test_a_bad_resident_layout_is_refused_whichever_path_runs(emulator_library, monkeypatch, path):
    monkeypatch.setenv(PATH_ENV_VAR, path)
    monkeypatch.setenv(RESIDENT_LAYOUT_ENV_VAR, "cluster4")
    layer = gru.GRU(4, 16, dtype="float32", backend=emulated_backend(emulator_library), seed=0)
    x = np.zeros((3, 2, 4), "float32")
    with pytest.raises(ValueError, match=r"GRU_CUPY_RESIDENT_LAYOUT: expected one of auto, chunked, rows .*'cluster4'"):
        layer(x)


@pytest.mark.parametrize("layout", ["rows", "auto"])
@pytest.mark.parametrize(("dtype", "reset_after"), [("float32", False), ("float64", True)])
def test_other_resident_layouts_are_only_for_float32_reset_after(
    emulator_library, monkeypatch, layout, dtype, reset_after
):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    monkeypatch.setenv(RESIDENT_LAYOUT_ENV_VAR, layout)
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(1)
    layer = gru.GRU(4, 16, reset_after=reset_after, dtype=dtype, backend=backend, seed=rng)
    x = rng.standard_normal((3, 2, 4)).astype(dtype)
    assert_matches_oracle(layer, x, np.zeros((1, 2, 16), dtype), None, 1e-5 if dtype == "float32" else 1e-12)
    launched = {launch[0] for launch in backend.device.launches}
    assert launched and all(name.startswith("gru_resident<") for name in launched)


def test_the_gpu_benchmark_times_the_other_resident_layout(emulator_library, monkeypatch):
    """gru bench-gpu's resident_chunked / resident_rows entry, on the emulation with a stand-in timer."""
    from gru import bench_gpu

    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    monkeypatch.delenv(RESIDENT_LAYOUT_ENV_VAR, raising=False)
    timed = []

    def one_run(run, repeats, events, warmup=0):
        run()
        timed.append(backend.last_paths)
        return [1.0]

    monkeypatch.setattr(bench_gpu, "time_events", one_run)
    backend = emulated_backend(emulator_library)
    x = np.random.default_rng(0).standard_normal((3, 1, 4)).astype("float32")
    for H, own, other in ((32, "rows", "chunked"), (100, "chunked", "rows")):
        layer = gru.GRU(4, H, dtype="float32", backend=backend, seed=0)
        expected = layer(x)[0]  # the layout "auto" takes
        assert (
            backend.device.launches[-1][0]
            == plan_resident(hidden_size=H, dtype="float32", reset_after=True, elements=10, layout=own).kernel
        )
        backend.device.launches.clear()
        timed.clear()
        results = bench_gpu.time_resident_layouts(
            layer, x, backend, 1, 0, agreement=lambda out, expected=expected: float(np.abs(out - expected).max())
        )
        kernel = plan_resident(hidden_size=H, dtype="float32", reset_after=True, elements=10, layout=other).kernel
        assert list(results) == [other] and results[other]["kernel"] == kernel
        assert results[other]["times_ms"] == [1.0] and results[other]["agreement"] < 1e-5
        # graded once, timed once, both on the other layout's kernel
        assert [launch[0] for launch in backend.device.launches] == [kernel, kernel]
        assert timed == [("resident",)]
        assert RESIDENT_LAYOUT_ENV_VAR not in os.environ  # put back
    wide = gru.GRU(4, 200, dtype="float32", backend=backend, seed=0)  # too wide for a row per thread
    assert bench_gpu.time_resident_layouts(wide, x, backend, 1, 0, agreement=lambda out: 0.0) == {}


@pytest.mark.parametrize("short", [False, True])
def test_the_emulation_fails_a_load_outside_the_arrays(emulator_library, short):
    """An explicit global load past an argument array fails the launch, even where its value would go unused:
    the row kernel with a gx_bias one element short (its last owner reads the last element)."""
    device = emulation.EmulatedDevice(emulator_library)
    T, B, D, H = 2, 1, 1, 8
    p = plan_resident(hidden_size=H, dtype="float32", reset_after=True, elements=10, layout="rows")
    rng = np.random.default_rng(0)

    def random(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    i32 = np.int32
    args = (
        random(T, B, D, 3 * H),
        random(D * 3 * H - short),  # gx_bias
        random(D, 3 * H, p.padded_hidden),
        random(D, H),
        np.full(B, T, np.int32),
        random(D, B, H),
        np.empty((D, B, H), np.float32),
        np.empty((T, B, D * H), np.float32),
        np.zeros(1, np.float32),
        *(i32(0), i32(T), i32(B), i32(H), i32(p.padded_hidden), i32(D)),
    )
    if short:
        with pytest.raises(RuntimeError, match="a global load outside every argument array"):
            device.launch(p.kernel, (B, D), (p.threads,), args, shared_mem=p.shared_mem)
    else:
        device.launch(p.kernel, (B, D), (p.threads,), args, shared_mem=p.shared_mem)
        assert np.isfinite(args[7]).all()


FUSED_STRESS_CASES = [
    # H, B, dtype: every tile, unit blocks and product tiles cut short, several sequence blocks
    pytest.param(5, 3, "float32", id="16x32-tile-one-short-unit-block"),
    pytest.param(37, 50, "float32", id="16x64-tile-2-product-tiles"),
    pytest.param(37, 130, "float32", id="8x128-tile-2-sequence-blocks"),
    pytest.param(40, 7, "float64", id="double-3-product-tiles"),
    pytest.param(9, 129, "float64", id="double-8x128-tile"),
]


def test_fused_tile_covers_the_batch_with_the_fewest_idle_lanes():
    assert [_kernels.fused_tile_shape(*_kernels.fused_tile(b)) for b in (1, 32, 33, 64, 65, 256)] == [
        (16, 32),
        (16, 32),
        (16, 64),
        (16, 64),
        (8, 128),
        (8, 128),
    ]
    for tile in _kernels.FUSED_TILES:  # every tile is whole warps: 4 units x 32 * SPL sequences each
        units, seqs = _kernels.fused_tile_shape(*tile)
        assert units * seqs == 4 * 32 * tile[1] * _kernels.FUSED_THREADS // 32


@EACH_VARIANT
@pytest.mark.parametrize(("H", "B", "dtype"), FUSED_STRESS_CASES)
def test_fused_kernel_stress(emulator_library, monkeypatch, H, B, dtype, reset_after):
    monkeypatch.setenv(PATH_ENV_VAR, "fused")
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(H * 1000 + B)
    assert_stacked_bidirectional_matches_oracle(
        backend, I=3, H=H, T=4, B=B, dtype=dtype, reset_after=reset_after, rng=rng
    )
    assert backend.last_paths == ("fused", "fused")
    launched = {launch[0] for launch in backend.device.launches}
    tile = _kernels.fused_tile(B)
    expected = {_kernels.fused_name(dtype, g, tile) for g in ((3,) if reset_after else (2, 1))}
    assert expected <= launched and not any(name.startswith("gru_step_") for name in launched - expected)


@EACH_VARIANT
@pytest.mark.parametrize(
    ("H", "B", "splits", "dtype"), [(8, 3, 2, "float64"), (12, 5, 4, "float32"), (16, 1, 8, "float64")]
)
def test_stepwise_split_products_add_up(emulator_library, monkeypatch, H, B, splits, dtype, reset_after):
    """The stepwise path with each step's recurrent product split along K: the gate kernels add the parts."""
    monkeypatch.setenv(PATH_ENV_VAR, "stepwise")
    asked = []

    def forced_splits(*, batch, hidden_size, gate_rows, sm_count):
        asked.append(gate_rows)
        return splits

    monkeypatch.setattr(_paths, "stepwise_splits", forced_splits)
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(H * 100 + B)
    assert_stacked_bidirectional_matches_oracle(
        backend, I=3, H=H, T=5, B=B, dtype=dtype, reset_after=reset_after, rng=rng
    )
    assert backend.last_paths == ("stepwise", "stepwise")
    assert sorted(set(asked)) == ([3] if reset_after else [1, 2])


def test_auto_takes_the_persistent_kernel_where_the_resident_one_does_not_fit(emulator_library, monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(2, 65, dtype="float64", backend=backend, seed=0)  # 65 double units: too many registers
    x = np.random.default_rng(7).standard_normal((3, 2, 2))
    output, _ = layer(x)
    np.testing.assert_allclose(output, oracle_for(layer, x)[0], rtol=0, atol=1e-12)
    assert backend.last_paths == ("persistent",)


def test_auto_path_follows_the_batch_rule(emulator_library, monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    backend = emulated_backend(emulator_library)
    backend.persistent_max_batch = backend.persistent_max_batch_on_chip = 3
    backend.use_resident = False
    layer = gru.GRU(3, 6, 2, dtype="float64", backend=backend, seed=0)
    rng = np.random.default_rng(1)
    for batch, path in ((3, "persistent"), (4, _plans.LARGE_BATCH_PATH)):
        x = rng.standard_normal((4, batch, 3))
        output, _ = layer(x)
        np.testing.assert_allclose(output, oracle_for(layer, x)[0], rtol=0, atol=1e-12)
        assert backend.last_paths == (path, path)


def test_auto_falls_back_to_stepwise_when_the_grid_cannot_be_resident(emulator_library, monkeypatch):
    monkeypatch.delenv(PATH_ENV_VAR, raising=False)
    backend = emulated_backend(emulator_library, blocks_per_sm=0)
    backend.use_resident = False
    layer = gru.GRU(3, 6, dtype="float64", backend=backend, seed=0)
    x = np.random.default_rng(2).standard_normal((4, 2, 3))
    output, _ = layer(x)
    np.testing.assert_allclose(output, oracle_for(layer, x)[0], rtol=0, atol=1e-12)
    assert backend.last_paths == (_plans.LARGE_BATCH_PATH,)


def test_forced_persistent_path_that_cannot_run_says_why(emulator_library, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library, cooperative_launch=False)
    with pytest.raises(gru.UnsupportedRequestError, match="cannot launch cooperative kernels"):
        gru.GRU(3, 6, dtype="float64", backend=backend, seed=0)(np.zeros((4, 2, 3)))


def test_persistent_kernel_refuses_too_little_shared_memory(emulator_library):
    """A launch whose layout would not fit returns from every block (no barrier left waiting) and reports the need."""
    device = emulation.EmulatedDevice(emulator_library)
    H, B, D, T = 8, 1, 1, 3
    p = plan(device, H=H, B=B, D=D, dtype="float32", threads=32, min_units=4)
    f32, i32 = np.float32, np.int32
    sync = np.zeros(2, np.uint32)
    out = np.zeros((T, B, D * H), f32)
    args = (
        np.ones((T, B, D, 3 * H), f32),
        np.ones((D, 3 * H, p.padded_hidden), f32),
        np.zeros((D, H), f32),
        np.full(B, T, np.int32),
        np.zeros((2, D, B, p.padded_hidden), f32),
        np.zeros(1, f32),
        out,
        np.zeros(1, f32),
        sync,
        *(i32(v) for v in (0, T, T, B, H, p.padded_hidden, D, p.units, p.cached_rows, 0, p.shared_mem - 4)),
    )
    device.launch(p.kernel, (1, p.blocks, D), (32,), args, shared_mem=p.shared_mem, cooperative=True)
    assert sync[1] == p.shared_mem
    assert not out.any()


def test_numpy_in_numpy_out_and_weights_packed_once(emulator_library, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 6, 2, bidirectional=True, dtype="float32", backend=backend, seed=0)
    x = np.random.default_rng(3).standard_normal((5, 2, 3)).astype("float32")
    first = layer(x)
    second = layer(x)
    assert all(type(a) is np.ndarray for a in (*first, *second))
    np.testing.assert_array_equal(first[0], second[0])
    assert sum(len(v) for v in backend._packed.values()) == 2  # one packing per layer, reused by the second call
    layer.load_state_dict(layer.state_dict())  # new parameters: new LayerWeights, new packing
    layer(x)
    assert sum(len(v) for v in backend._packed.values()) == 2  # the old ones went with their LayerWeights


def test_a_forward_runs_one_gemm_per_layer_and_nothing_per_step_but_kernels(emulator_library, monkeypatch):
    """Persistent path: one launch per layer for all T steps; stepwise: one GEMM and one kernel per step."""
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 6, 2, bidirectional=True, dtype="float64", backend=backend, seed=0)
    x = np.random.default_rng(4).standard_normal((7, 2, 3))
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend.device.launches.clear()
    layer(x)
    assert [launch[0] for launch in backend.device.launches] == [_kernels.persistent_name("float64", 2, True)] * 2
    monkeypatch.setenv(PATH_ENV_VAR, "stepwise")
    backend.device.launches.clear()
    layer(x)
    assert [launch[0] for launch in backend.device.launches] == [
        _kernels.stepwise_name("gru_step_after", "float64")
    ] * 14


def test_gates_buffer_not_requested_is_not_allocated(emulator_library, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, "persistent")
    backend = emulated_backend(emulator_library)
    result = backend.forward(
        _request(gru.GRU(3, 4, dtype="float32", seed=0), np.ones((2, 1, 3), "float32"), return_gates=False)
    )
    assert isinstance(result, ForwardResult) and result.gates is None


def _request(layer: gru.GRU, x: np.ndarray, return_gates: bool):
    from gru.backends import ForwardRequest

    return ForwardRequest(
        x=x,
        h0=np.zeros((layer.num_layers * layer.num_directions, x.shape[1], layer.hidden_size), layer.dtype),
        weights=layer._layer_weights(),
        lengths=None,
        hidden_size=layer.hidden_size,
        num_layers=layer.num_layers,
        num_directions=layer.num_directions,
        reset_after=layer.reset_after,
        return_gates=return_gates,
        dtype=layer.dtype,
    )


# Training: the backward's kernels and products on every path's training forward.
GRADIENT_CASES = [
    # dtype, bias, bidirectional, num_layers, reset_after, lengths, with_h0, batch_first
    ("float32", True, False, 1, True, None, False, False),
    ("float64", True, True, 2, True, test_gradients.MIXED_LENGTHS, True, True),
    ("float64", False, True, 2, False, test_gradients.MIXED_LENGTHS, True, False),
    ("float32", True, True, 3, False, None, False, True),
]


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_conformance_gradients_match_oracle(emulated, case):
    test_gradients.test_gradients_match_oracle(emulated, *case)


@EACH_DTYPE
def test_conformance_other_gradient_checks(emulated, dtype):
    test_gradients.test_two_backward_calls_agree(emulated, dtype)
    test_gradients.test_unbatched_gradients(emulated, dtype)
    test_gradients.test_gradients_ignore_d_output_past_each_length(emulated, dtype)
    for reset_after in (True, False):
        test_gradients.test_gradients_with_dropout_use_the_forward_masks(emulated, dtype, reset_after)


@EACH_VARIANT
def test_conformance_gradients_match_finite_differences(emulated, reset_after):
    test_gradients.test_gradients_match_finite_differences_of_the_oracle(emulated, reset_after)


@EACH_VARIANT
def test_a_backward_runs_per_step_one_kernel_per_half_and_nothing_else(emulator_library, monkeypatch, reset_after):
    """Both directions of a layer in one launch per step (two for reset-before); no other kernel in the loop."""
    monkeypatch.setenv(PATH_ENV_VAR, "stepwise")
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 6, 2, bidirectional=True, reset_after=reset_after, dtype="float64", backend=backend, seed=0)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 2, 3))
    layer(x, lengths=[7, 4], train=True)
    backend.device.launches.clear()
    layer.backward(rng.standard_normal((7, 2, 12)))
    kernels = ["gru_backward_after"] if reset_after else ["gru_backward_before_zn", "gru_backward_before_r"]
    per_step = [_kernels.stepwise_name(kernel, "float64") for kernel in kernels]
    assert [launch[0] for launch in backend.device.launches] == per_step * 7 * 2  # 7 steps, 2 layers


@pytest.mark.parametrize("path", ["resident", "stepwise"])
def test_non_finite_padding_reaches_no_gradient(emulator_library, monkeypatch, path):
    """What a caller keeps in padded steps (inf, NaN) must not reach d W_ih, d b or d x through 0 * inf."""
    monkeypatch.setenv(PATH_ENV_VAR, path)
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 4, bidirectional=True, dtype="float32", backend=backend, seed=0)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 3)).astype("float32")
    d_output = rng.standard_normal((5, 3, 8)).astype("float32")
    lengths = [5, 2, 0]
    layer(x, lengths=lengths, train=True)
    clean = layer.backward(d_output)
    dirty_x = x.copy()
    dirty_x[2:, 1] = np.inf
    dirty_x[:, 2] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):  # the emulation's NumPy projection of the padding
        layer(dirty_x, lengths=lengths, train=True)
    dirty = layer.backward(d_output)
    assert np.isfinite(dirty.input[:2, :2]).all() and (dirty.input[2:, 1] == 0).all() and (dirty.input[:, 2] == 0).all()
    for name in clean.params:
        np.testing.assert_array_equal(dirty.params[name], clean.params[name])


@pytest.mark.parametrize("path", ["resident", "stepwise"])
@EACH_VARIANT
def test_non_finite_h0_of_an_empty_sequence_reaches_no_weight(emulator_library, monkeypatch, path, reset_after):
    """A sequence of length 0 hands its h0 on as h_n, whatever it holds; no weight ever multiplies it."""
    monkeypatch.setenv(PATH_ENV_VAR, path)
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 4, bidirectional=True, reset_after=reset_after, dtype="float64", backend=backend, seed=0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 3, 3))
    h0 = rng.standard_normal((2, 3, 4))
    d_output, d_h_n = rng.standard_normal((4, 3, 8)), rng.standard_normal((2, 3, 4))
    lengths = [4, 0, 2]
    layer(x, h0, lengths, train=True)
    clean = layer.backward(d_output, d_h_n)
    h0[:, 1] = np.nan
    layer(x, h0, lengths, train=True)
    dirty = layer.backward(d_output, d_h_n)
    for name in clean.params:
        np.testing.assert_array_equal(dirty.params[name], clean.params[name], err_msg=name)
    np.testing.assert_array_equal(dirty.input, clean.input)
    np.testing.assert_array_equal(dirty.h0[:, 1], d_h_n[:, 1])


@pytest.mark.parametrize(
    ("shape", "lengths"),
    [((6, 3), [4, 1, 0]), ((0, 3), None), ((5, 0), None), ((5, 3), [0, 0, 0])],
    ids=["longest-below-T", "T=0", "B=0", "all-empty"],
)
def test_training_edge_shapes_match_the_reference(emulator_library, shape, lengths):
    """Against the NumPy backend: sequences all shorter than T, and calls where no step runs."""
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(10)
    T, B = shape
    x = rng.standard_normal((T, B, 3))
    h0 = rng.standard_normal((4, B, 4))
    d_output, d_h_n = rng.standard_normal((T, B, 8)), rng.standard_normal((4, B, 4))
    results = []
    for choice in (backend, "numpy"):
        layer = gru.GRU(3, 4, 2, bidirectional=True, dtype="float64", backend=choice, seed=2)
        layer(x, h0, lengths, train=True)
        results.append(layer.backward(d_output, d_h_n))
    ours, reference = results
    np.testing.assert_allclose(ours.input, reference.input, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.h0, reference.h0, rtol=1e-12, atol=1e-12)
    for name, value in reference.params.items():
        np.testing.assert_allclose(ours.params[name], value, rtol=1e-12, atol=1e-12, err_msg=name)


def test_numpy_in_numpy_gradients_out(emulator_library):
    backend = emulated_backend(emulator_library)
    layer = gru.GRU(3, 4, 2, dtype="float32", backend=backend, seed=0)
    x = np.random.default_rng(7).standard_normal((4, 2, 3)).astype("float32")
    output, _ = layer(x, train=True)
    grads = layer.backward(np.ones_like(output))
    assert all(type(a) is np.ndarray for a in (grads.input, grads.h0, *grads.params.values()))


def test_a_cell_trains_step_by_step_as_on_the_reference(emulator_library):
    """GRUCell: train=True per step, backward per step in reverse, the gradients the NumPy backend gives."""
    backend = emulated_backend(emulator_library)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 2, 3))
    d_loss = rng.standard_normal((4, 2, 5))
    results = []
    for choice in (backend, "numpy"):
        cell = gru.GRUCell(3, 5, reset_after=False, dtype="float64", backend=choice, seed=1)
        h = np.zeros((2, 5))
        for t in range(4):
            h = cell(x[t], h, train=True)
        d_h, d_x, sums = np.zeros((2, 5)), [], {}
        for t in reversed(range(4)):
            g = cell.backward(d_loss[t] + d_h)
            d_h = g.h0
            d_x.append(g.input)
            sums = {k: sums.get(k, 0) + v for k, v in g.params.items()}
        results.append((d_h, d_x, sums))
    (d_h, d_x, sums), (ref_h, ref_x, ref_sums) = results
    np.testing.assert_allclose(d_h, ref_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.array(d_x), np.array(ref_x), rtol=1e-12, atol=1e-12)
    for name, value in ref_sums.items():
        np.testing.assert_allclose(sums[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
