"""The CuPy backend's path rule and launch plans, on stand-in devices (no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest
from cupy_helpers import PlanDevice, plan

import gru
from gru.backends.cupy import _kernels, _plans
from gru.backends.cupy._plans import PATH_ENV_VAR, PersistentPlan, ResidentPlan, choose_path, plan_resident


@pytest.mark.parametrize(
    ("shape", "path", "on_chip"),
    [
        ((128, 128, 1, 1000), "persistent", True),
        ((1024, 1024, 1, 1500), "persistent", True),
        ((2816, 2816, 1, 375), "persistent", False),  # 95 MB of weights: part read from L2/HBM every step
        ((2048, 2048, 32, 375), _plans.LARGE_BATCH_PATH, None),
        ((512, 512, 256, 100), _plans.LARGE_BATCH_PATH, None),
    ],
)
def test_the_benchmark_shapes_take_the_documented_paths_on_an_h100(shape, path, on_chip):
    _, H, B, _ = shape
    p = plan(H=H, B=B) if B <= _plans.PERSISTENT_MAX_BATCH_ON_CHIP else None
    assert choose_path(B, p) == path
    if path == "persistent":
        assert isinstance(p, PersistentPlan)
        assert p.on_chip is on_chip
        assert p.blocks <= 132 and p.blocks * p.units >= H > (p.blocks - 1) * p.units
        assert p.shared_mem <= 232448


def test_plan_spreads_units_and_caches_what_fits():
    p = plan(H=1024, B=1)
    assert (p.blocks, p.units, p.cached_rows, p.rows) == (128, 8, 24, 24)
    assert p.shared_mem == (24 * 1024 + 1024 + 24) * 4
    bi = plan(H=1024, B=1, D=2)  # two directions share the multiprocessors
    assert bi.blocks == 64 and bi.units == 16
    big = plan(H=2816, B=1)
    assert big.units == 22 and big.cached_rows < big.rows
    assert big.shared_mem <= 232448 < big.shared_mem + 2816 * 4  # as many rows as fit
    assert p.l2_rows == 0  # everything on chip: nothing to keep in L2
    row_bytes = 2816 * 4
    kept = big.l2_rows * row_bytes * big.blocks  # over all blocks
    assert 0 < kept <= _plans.PERSISTENT_L2_FRACTION * (50 << 20) < kept + row_bytes * big.blocks
    assert big.cached_rows + big.l2_rows < big.rows  # the rest streams
    assert plan(H=2816, B=1, l2_fraction=0).l2_rows == 0
    assert plan(H=2816, B=1, l2_fraction=1e9).l2_rows == big.rows - big.cached_rows


def test_plan_says_why_when_the_persistent_kernel_cannot_run():
    assert "cooperative" in plan(PlanDevice(cooperative_launch=False), H=64, B=1)
    assert "shared memory" in plan(PlanDevice(smem_per_block=1024), H=4096, B=8)
    assert "resident" in plan(PlanDevice(blocks_per_sm=0), H=64, B=1)


def test_choose_path_rule_and_overrides():
    p = plan(H=64, B=4)
    assert choose_path(4, p) == "persistent"
    assert p.on_chip
    assert choose_path(_plans.PERSISTENT_MAX_BATCH_ON_CHIP, p) == "persistent"
    assert choose_path(_plans.PERSISTENT_MAX_BATCH_ON_CHIP + 1, p) == _plans.LARGE_BATCH_PATH
    # above PERSISTENT_MAX_BATCH, only while the batch's state is small (measured: H=1024, 32 sequences,
    # stepwise 2.50 ms against persistent 3.39; H=512 a tie; H=256 persistent 1.51 against 2.34)
    assert choose_path(32, plan(H=512, B=32)) == "persistent"
    assert choose_path(32, plan(H=256, B=32)) == "persistent"
    wide = plan(H=1024, B=32)
    assert wide.on_chip and choose_path(32, wide) == _plans.LARGE_BATCH_PATH
    assert choose_path(_plans.PERSISTENT_MAX_BATCH, wide) == "persistent"
    partly = plan(H=2816, B=4)
    assert not partly.on_chip
    assert choose_path(_plans.PERSISTENT_MAX_BATCH, partly) == "persistent"
    assert choose_path(_plans.PERSISTENT_MAX_BATCH + 1, partly) == _plans.LARGE_BATCH_PATH
    assert choose_path(4, "no cooperative launch") == _plans.LARGE_BATCH_PATH
    assert choose_path(4, "no cooperative launch", large_batch="stepwise") == "stepwise"
    assert choose_path(4, p, "stepwise") == "stepwise"
    assert choose_path(4, p, "fused") == "fused"
    assert choose_path(64, p, "persistent") == "persistent"
    with pytest.raises(gru.UnsupportedRequestError, match="persistent kernel cannot run: nope"):
        choose_path(4, "nope", "persistent")
    with pytest.raises(ValueError, match=PATH_ENV_VAR):
        choose_path(4, p, "fastest")


@pytest.mark.parametrize(
    ("H", "dtype", "chunk", "lanes", "threads"),
    [
        (1, "float32", 8, 1, 32),
        (64, "float32", 8, 8, 512),  # the small chunk while its 512 threads suffice
        (65, "float32", 64, 2, 160),
        (128, "float32", 64, 2, 256),  # the largest: 3*128*128 weights, 192 registers per thread
        (32, "float64", 4, 8, 256),
        (64, "float64", 32, 2, 128),
    ],
)
def test_resident_plan_spreads_each_unit_over_the_fewest_lanes(H, dtype, chunk, lanes, threads):
    p = plan_resident(hidden_size=H, dtype=dtype, reset_after=True, elements=1000)
    assert isinstance(p, ResidentPlan)
    assert (p.chunk, p.lanes_per_unit, p.threads) == (chunk, lanes, threads)
    assert chunk * lanes >= H > chunk * lanes // 2 or lanes == 1  # no lane without columns
    assert threads <= _kernels.resident_max_threads(dtype, chunk)
    width = 16 // np.dtype(dtype).itemsize
    assert p.shared_mem == 2 * lanes * (chunk + width) * np.dtype(dtype).itemsize
    before = plan_resident(hidden_size=H, dtype=dtype, reset_after=False, elements=1000)
    assert before.shared_mem == p.shared_mem * 3 // 2  # one more copy of h: r * h_{t-1}


def test_resident_plan_says_why_it_cannot_run():
    assert "registers" in plan_resident(hidden_size=129, dtype="float32", reset_after=True, elements=10)
    assert "registers" in plan_resident(hidden_size=65, dtype="float64", reset_after=True, elements=10)
    assert "32-bit" in plan_resident(hidden_size=8, dtype="float32", reset_after=True, elements=2**31)


def test_choose_path_prefers_the_resident_kernel_where_it_fits():
    r = plan_resident(hidden_size=64, dtype="float32", reset_after=True, elements=10)
    p = plan(H=64, B=4)
    assert choose_path(4, p, resident=r) == "resident"
    assert choose_path(4096, None, resident=r) == "resident"  # any batch: blocks are independent
    assert choose_path(4, p, resident="too big") == "persistent"
    assert choose_path(4, p, "stepwise", resident=r) == "stepwise"
    assert choose_path(4, p, "persistent", resident=r) == "persistent"
    with pytest.raises(gru.UnsupportedRequestError, match="resident kernel cannot run: too big"):
        choose_path(4, p, "resident", resident="too big")


def test_shared_memory_formula_matches_the_kernel_layout():
    """The kernel recomputes the same total and refuses (sync[1]) a launch with less; see the emulated check below."""
    itemsize = 8
    got = _plans.persistent_shared_memory(
        cached_rows=5, padded=6, tile=4, units=3, batch=7, reset_after=False, itemsize=itemsize
    )
    assert got == (5 * 6 + 4 * 6 + 36 + 3 * 7) * itemsize


@pytest.mark.parametrize(
    ("B", "H", "gate_rows", "expected"),
    [
        (256, 512, 3, 4),  # 24 tiles: 4 parts of 128 columns (8 would leave 64)
        (32, 2048, 3, 8),  # 48 tiles: 4 parts make 192, still short of 2 per multiprocessor
        (1024, 1024, 3, 2),  # 192 tiles: 2 parts make 384
        (2048, 2048, 3, 1),  # 768 tiles already
        (64, 256, 3, 2),  # 6 tiles, but 256 columns make only 2 parts of 128
        (64, 256, 1, 2),
        (8, 4096, 1, 8),  # 32 tiles: the most parts
        (8, 100, 3, 1),  # too few columns to split
        (8, 1000, 2, 4),  # 4 parts of 250 columns; 8 would leave 125
    ],
)
def test_stepwise_splits_fill_the_multiprocessors(B, H, gate_rows, expected):
    splits = _plans.stepwise_splits(batch=B, hidden_size=H, gate_rows=gate_rows, sm_count=132)
    assert splits == expected
    assert H % splits == 0 and (splits == 1 or H // splits >= _plans.STEPWISE_MIN_SPLIT_COLUMNS)


@pytest.mark.parametrize(("H", "columns", "threads"), [(1, 64, 32), (64, 64, 192), (65, 128, 224), (128, 128, 384)])
def test_row_per_thread_resident_plan(H, columns, threads):
    p = plan_resident(hidden_size=H, dtype="float32", reset_after=True, elements=10, layout="rows")
    assert p.layout == "rows" and p.kernel == _kernels.resident_rows_name(columns)
    assert (p.chunk, p.threads, p.lanes_per_unit) == (columns, threads, 1)
    assert p.threads >= 3 * H and p.shared_mem == (columns + 3 * H) * 4


@pytest.mark.parametrize(("H", "layout"), [(1, "rows"), (64, "rows"), (65, "chunked"), (128, "chunked")])
def test_auto_resident_layout_takes_rows_up_to_64_units(H, layout):
    p = plan_resident(hidden_size=H, dtype="float32", reset_after=True, elements=10, layout="auto")
    assert p == plan_resident(hidden_size=H, dtype="float32", reset_after=True, elements=10, layout=layout)
    assert p.layout == layout


@pytest.mark.parametrize("layout", ["rows", "auto"])
@pytest.mark.parametrize(
    ("H", "dtype", "reset_after"), [(129, "float32", True), (64, "float64", True), (64, "float32", False)]
)
def test_other_layouts_fall_back_to_the_chunked_layout(layout, H, dtype, reset_after):
    p = plan_resident(hidden_size=H, dtype=dtype, reset_after=reset_after, elements=10, layout=layout)
    default = plan_resident(hidden_size=H, dtype=dtype, reset_after=reset_after, elements=10)
    assert p == default and (not isinstance(p, ResidentPlan) or p.layout == "chunked")


def test_resident_layout_from_the_environment(monkeypatch):
    monkeypatch.delenv(_plans.RESIDENT_LAYOUT_ENV_VAR, raising=False)
    assert _plans.RESIDENT_LAYOUT == "auto"
    assert _plans.resident_layout_from_environment() == "auto"
    monkeypatch.setenv(_plans.RESIDENT_LAYOUT_ENV_VAR, "")  # empty: as if unset
    assert _plans.resident_layout_from_environment("chunked") == "chunked"
    assert _plans.resident_layout_from_environment("rows") == "rows"
    monkeypatch.setenv(_plans.RESIDENT_LAYOUT_ENV_VAR, "chunked")
    assert _plans.resident_layout_from_environment("rows") == "chunked"
    monkeypatch.setenv(_plans.RESIDENT_LAYOUT_ENV_VAR, "row")
    with pytest.raises(ValueError, match=r"GRU_CUPY_RESIDENT_LAYOUT: expected one of auto, chunked, rows .*got 'row'"):
        _plans.resident_layout_from_environment()


def test_plan_resident_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match=r"layout: expected one of auto, chunked, rows, got 'row'"):
        plan_resident(hidden_size=8, dtype="float32", reset_after=True, elements=10, layout="row")


@pytest.mark.parametrize("threads", [0, 16, 100, _kernels.PERSISTENT_MAX_THREADS + 32, 1024])
def test_a_persistent_plan_refuses_threads_past_the_kernels_launch_bound(threads):
    """A launch of more threads than __launch_bounds__ allows fails on the GPU; the plan says so first."""
    with pytest.raises(ValueError, match=rf"^threads: expected a multiple of 32 from 32 to 256 .*got {threads}$"):
        plan(H=128, B=1, threads=threads)


def test_a_persistent_plan_takes_any_whole_number_of_warps_up_to_the_bound():
    for threads in range(32, _kernels.PERSISTENT_MAX_THREADS + 1, 32):
        assert isinstance(plan(H=128, B=1, threads=threads), PersistentPlan)
