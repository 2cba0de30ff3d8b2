"""Where each layer of a CuPy call runs: the kernels' launch plans and the path rule.

Pure arithmetic on the layer's shape and the device's numbers (multiprocessors,
shared memory, L2): the backend asks here which path a call takes and how its
kernel is laid out, and the tests check the rule without a GPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from gru._errors import UnsupportedRequestError
from gru.backends.cupy import _kernels

# ---------------------------------------------------------------------------------------------
# The path rule and the kernels' knobs, set from measurements on an H100 (gru bench-gpu
# --sweep and --crossover time every path and knob; benchmarks/RESULTS.md has the numbers).
# ---------------------------------------------------------------------------------------------

#: Batches up to this size run the persistent kernel; larger ones the large-batch path. Above it,
#: every weight is reused by many sequences per step, while the persistent kernel restages every
#: sequence's state in every block each step (measured: at H=1024 and 64 sequences the persistent
#: kernel took 6.0 ms per 100 steps, the stepwise path 4.3).
PERSISTENT_MAX_BATCH = 16
#: ... and up to this size when every recurrent weight stays on chip, while the batch's state
#: (sequences x hidden units, which every block restages each step) is at most
#: PERSISTENT_MAX_STATE_ON_CHIP. Measured at 32 sequences, 100 steps, since the stepwise path's
#: steps became GPU-bound: H=256 1.51 ms persistent against 2.34 stepwise, H=512 1.94 against
#: 1.98, H=1024 3.39 against 2.50 (benchmarks/RESULTS.md).
PERSISTENT_MAX_BATCH_ON_CHIP = 32
PERSISTENT_MAX_STATE_ON_CHIP = 32 * 512
#: The fewest hidden units one persistent block owns. Fewer units per block spreads W_hh over
#: more multiprocessors (less shared memory and work per block per step) but makes the per-step
#: grid barrier wait for more blocks (measured: 4 and 8 the same, 16 up to 17 % slower).
PERSISTENT_MIN_UNITS_PER_BLOCK = 8
#: Threads per persistent block (a multiple of 32, at most the kernel's launch bound; 128 measured
#: 6-36 % slower).
PERSISTENT_THREADS = 256
#: The share of L2 the persistent kernel may fill with the weight rows that do not fit on chip,
#: loaded with the evict_last policy so that they stay there from step to step (the others
#: stream through with evict_first).
PERSISTENT_L2_FRACTION = 0.6
#: The path "auto" takes above the persistent kernel's batches: "stepwise" or "fused". The fused
#: kernel lost to the stepwise path at every point of the crossover grid on an H100 (H=256 with
#: 256 sequences: 3.33 against 1.90 ms; benchmarks/RESULTS.md).
LARGE_BATCH_PATH = "stepwise"

#: The stepwise path splits a step's recurrent product along K into up to this many partial products
#: (a power of two) while it has fewer than STEPWISE_TILES_PER_SM output tiles per multiprocessor ...
STEPWISE_MAX_SPLITS = 8
#: (measured on an H100 at (2048, 2048, 32, 375): 4 parts, 192 tiles, 22.6 ms; 8 parts 20.5 ms)
STEPWISE_TILES_PER_SM = 2
#: ... keeping at least this many columns of K in each part,
STEPWISE_MIN_SPLIT_COLUMNS = 128
#: counting tiles of this many rows and columns (cuBLAS's tile for such products is its own choice).
GEMM_TILE = 128

#: How the resident path lays W_hh out: "chunked", three row chunks per thread (gru_resident in
#: kernels/gru_resident.cu, every layer it can run); "rows", a whole row per thread
#: (gru_resident_rows: float32 reset-after layers of up to 128 units, else chunked); "auto", rows
#: up to RESIDENT_ROWS_MAX_HIDDEN units and chunked above. GRU_CUPY_RESIDENT_LAYOUT overrides it.
RESIDENT_LAYOUT = "auto"
RESIDENT_LAYOUTS = ("auto", "chunked", "rows")
RESIDENT_LAYOUT_ENV_VAR = "GRU_CUPY_RESIDENT_LAYOUT"
#: Measured on an H100, 1000 steps (gru bench-gpu --resident; benchmarks/RESULTS.md): a row per
#: thread is faster up to 64 units (H=64, one sequence: 0.67 against 0.89 ms; 64 sequences: 1.00
#: against 1.08), the chunks at 128 (one sequence 0.90 against 1.03; 128 sequences 1.60 against
#: 1.99): there every thread of the row layout reloads all of h from shared memory each step.
RESIDENT_ROWS_MAX_HIDDEN = 64

#: Force a path: "resident", "persistent", "fused", "stepwise" or "auto" (the default).
PATH_ENV_VAR = "GRU_CUPY_PATH"
PATHS = ("auto", "resident", "persistent", "fused", "stepwise")
#: The resident kernel indexes with 32-bit integers: it takes layers whose gx has fewer elements.
RESIDENT_MAX_ELEMENTS = 2**31 - 1


@dataclass(frozen=True)
class PersistentPlan:
    """How one layer's persistent launch is laid out."""

    kernel: str  #: the template instance
    batch_tile: int  #: sequences per batch tile (BT)
    blocks: int  #: blocks per direction (each owns ``units`` hidden units)
    units: int
    cached_rows: int  #: rows of the block's 3·units rows of W_hh kept in shared memory
    rows: int  #: 3·units: the rest are read from global memory every step
    l2_rows: int  #: of those, how many per block load with L2's evict_last policy
    shared_mem: int  #: dynamic shared memory per block, bytes
    threads: int
    padded_hidden: int  #: H rounded up to the 16-byte vector width (row stride Hp)

    @property
    def on_chip(self) -> bool:
        """True when every recurrent weight of the layer stays in shared memory."""
        return self.cached_rows >= self.rows


@dataclass(frozen=True)
class ResidentPlan:
    """How one layer's register-resident launch is laid out (one block per sequence and direction)."""

    kernel: str  #: the template instance
    chunk: int  #: columns of W_hh per thread (KC)
    lanes_per_unit: int  #: threads per hidden unit (KS, a power of two up to 32)
    threads: int
    shared_mem: int  #: dynamic shared memory per block, bytes
    padded_hidden: int  #: the row stride of the padded W_hh the kernel reads
    layout: str = "chunked"  #: "chunked" or "rows" (see RESIDENT_LAYOUT)

    @property
    def ks_log2(self) -> int:
        return self.lanes_per_unit.bit_length() - 1


def plan_resident(
    *, hidden_size: int, dtype: str, reset_after: bool, elements: int, layout: str = "chunked"
) -> ResidentPlan | str:
    """Lay out the register-resident kernel for one layer, or say why it cannot run.

    Each hidden unit gets the fewest power-of-two lanes whose chunks of
    ``chunk`` columns cover H; the smallest instantiated chunk that keeps the
    block within its thread bound wins (more lanes, shorter chains per thread).
    ``layout`` "rows" (see :data:`RESIDENT_LAYOUT`; "auto" picks by H) applies
    to float32 reset-after layers of up to 128 units; others keep the chunks.
    ``elements`` is the size of the layer's largest tensor (gx).
    """
    if elements > RESIDENT_MAX_ELEMENTS:
        return f"the layer's tensors have {elements} elements, more than its 32-bit indexing allows"
    H = hidden_size
    itemsize = np.dtype(dtype).itemsize
    width = 16 // itemsize
    if layout not in RESIDENT_LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(RESIDENT_LAYOUTS)}, got {layout!r}")
    if layout == "auto":
        layout = "rows" if H <= RESIDENT_ROWS_MAX_HIDDEN else "chunked"
    if layout == "rows" and dtype == "float32" and reset_after:
        columns = next((c for c in _kernels.RESIDENT_ROW_COLUMNS if c >= H), None)
        if columns is not None:
            return ResidentPlan(
                kernel=_kernels.resident_rows_name(columns),
                chunk=columns,
                lanes_per_unit=1,
                threads=-(-3 * H // 32) * 32,
                shared_mem=(columns + 3 * H) * itemsize,  # h, then every row's product
                padded_hidden=padded_hidden(H, itemsize),
                layout="rows",
            )
    for chunk in _kernels.RESIDENT_CHUNKS[dtype]:
        lanes = 1 << max(0, math.ceil(H / chunk) - 1).bit_length()
        threads = -(-H * lanes // 32) * 32
        if lanes <= 32 and threads <= _kernels.resident_max_threads(dtype, chunk):
            buffer = lanes * (chunk + width)
            return ResidentPlan(
                kernel=_kernels.resident_name(dtype, chunk, reset_after),
                chunk=chunk,
                lanes_per_unit=lanes,
                threads=threads,
                shared_mem=(2 if reset_after else 3) * buffer * itemsize,
                padded_hidden=padded_hidden(H, itemsize),
            )
    return f"the recurrent weights of {H} units do not fit in one block's registers for {dtype}"


def resident_layout_from_environment(default: str = RESIDENT_LAYOUT) -> str:
    """The resident layout GRU_CUPY_RESIDENT_LAYOUT names (``default`` when unset or empty)."""
    value = os.environ.get(RESIDENT_LAYOUT_ENV_VAR, "") or default
    if value not in RESIDENT_LAYOUTS:
        raise ValueError(
            f"{RESIDENT_LAYOUT_ENV_VAR}: expected one of {', '.join(RESIDENT_LAYOUTS)} (or unset), got {value!r}"
        )
    return value


def stepwise_splits(*, batch: int, hidden_size: int, gate_rows: int, sm_count: int) -> int:
    """How many partial products (split K) the stepwise path computes one step's recurrent product as.

    The product (batch x H) @ (H x gate_rows*H) has about
    ``ceil(batch/128) * ceil(gate_rows*H/128)`` output tiles; at small batch that
    leaves most multiprocessors idle, and each doubling of the splits doubles the
    tiles (the gate kernel then adds the parts).
    """
    tiles = -(-batch // GEMM_TILE) * -(-gate_rows * hidden_size // GEMM_TILE)
    splits = 1
    while (
        splits < STEPWISE_MAX_SPLITS
        and tiles * splits < STEPWISE_TILES_PER_SM * sm_count
        and hidden_size % (2 * splits) == 0
        and hidden_size // (2 * splits) >= STEPWISE_MIN_SPLIT_COLUMNS
    ):
        splits *= 2
    return splits


def padded_hidden(hidden_size: int, itemsize: int) -> int:
    """H rounded up to a whole number of 16-byte vectors."""
    width = 16 // itemsize
    return -(-hidden_size // width) * width


def batch_tile(batch: int) -> int:
    """The smallest instantiated batch tile that holds ``batch`` sequences (capped at the largest)."""
    for tile in _kernels.PERSISTENT_BATCH_TILES:
        if tile >= batch:
            return tile
    return _kernels.PERSISTENT_BATCH_TILES[-1]


def persistent_shared_memory(
    *, cached_rows: int, padded: int, tile: int, units: int, batch: int, reset_after: bool, itemsize: int
) -> int:
    """Bytes of dynamic shared memory per block; mirrors the layout in ``gru_persistent.cu``."""
    width = 16 // itemsize
    gh = -(-3 * units * tile // width) * width
    z = 0 if reset_after else units * batch
    return (cached_rows * padded + tile * padded + gh + z) * itemsize


def plan_persistent(
    device: Any,
    *,
    hidden_size: int,
    batch: int,
    directions: int,
    dtype: str,
    reset_after: bool,
    threads: int = PERSISTENT_THREADS,
    min_units: int = PERSISTENT_MIN_UNITS_PER_BLOCK,
    l2_fraction: float = PERSISTENT_L2_FRACTION,
) -> PersistentPlan | str:
    """Lay out the persistent kernel for one layer, or say why it cannot run.

    Blocks: at most one per multiprocessor per direction (each wants its own
    shared memory), and no more than owning ``min_units`` units each needs.
    Each block caches as many of its 3·units weight rows as fit next to its
    state tile; the rest come from global memory every step, and as many of
    those as fit in ``l2_fraction`` of L2 (over all blocks) are marked to stay there.
    """
    if threads % 32 or not 32 <= threads <= _kernels.PERSISTENT_MAX_THREADS:  # whole warps, within launch bounds
        raise ValueError(
            f"threads: expected a multiple of 32 from 32 to {_kernels.PERSISTENT_MAX_THREADS} "
            f"(the persistent kernel's launch bound), got {threads}"
        )
    if not device.cooperative_launch:
        return "the device cannot launch cooperative kernels"
    H, D = hidden_size, directions
    itemsize = np.dtype(dtype).itemsize
    padded = padded_hidden(H, itemsize)
    tile = batch_tile(batch)
    blocks = max(1, min(math.ceil(H / max(1, min_units)), device.sm_count // D))
    units = math.ceil(H / blocks)
    blocks = math.ceil(H / units)
    rows = 3 * units
    fixed = persistent_shared_memory(
        cached_rows=0, padded=padded, tile=tile, units=units, batch=batch, reset_after=reset_after, itemsize=itemsize
    )
    if fixed > device.smem_per_block:
        return (
            f"one batch tile of state needs {fixed} bytes of shared memory, "
            f"more than the {device.smem_per_block} a block may have"
        )
    cached = min(rows, (device.smem_per_block - fixed) // (padded * itemsize))
    shared_mem = fixed + cached * padded * itemsize
    l2_rows = min(rows - cached, int(l2_fraction * device.l2_bytes) // (padded * itemsize * blocks * D))
    kernel = _kernels.persistent_name(dtype, tile, reset_after)
    per_sm = device.max_active_blocks(kernel, threads, shared_mem)
    if per_sm * device.sm_count < blocks * D:
        return f"{blocks * D} blocks cannot all be resident at once ({per_sm} per multiprocessor fit)"
    return PersistentPlan(
        kernel=kernel,
        batch_tile=tile,
        blocks=blocks,
        units=units,
        cached_rows=cached,
        rows=rows,
        l2_rows=l2_rows,
        shared_mem=shared_mem,
        threads=threads,
        padded_hidden=padded,
    )


def choose_path(
    batch: int,
    plan: PersistentPlan | str | None,
    forced: str = "auto",
    max_batch: int = PERSISTENT_MAX_BATCH,
    resident: ResidentPlan | str | None = None,
    large_batch: str = LARGE_BATCH_PATH,
    max_batch_on_chip: int = PERSISTENT_MAX_BATCH_ON_CHIP,
) -> str:
    """The path of a call: 'resident', 'persistent', 'fused' or 'stepwise'.

    Auto: the register-resident kernel whenever it fits (``resident`` is a
    plan); else the persistent kernel when a co-resident plan exists and the
    batch is at most ``max_batch`` (:data:`PERSISTENT_MAX_BATCH`), or at most
    ``max_batch_on_chip`` when the plan keeps every weight on chip and the
    batch's state has at most :data:`PERSISTENT_MAX_STATE_ON_CHIP` elements; otherwise
    ``large_batch`` (:data:`LARGE_BATCH_PATH`). ``plan`` may be None when the
    batch alone rules the persistent kernel out (no plan is made then: making
    one compiles it), and ``resident`` None when the caller does not consider
    that kernel.
    """
    if forced not in PATHS:
        raise ValueError(f"{PATH_ENV_VAR}: expected one of {PATHS}, got {forced!r}")
    if forced in ("fused", "stepwise"):
        return forced
    if forced == "resident":
        if not isinstance(resident, ResidentPlan):
            raise UnsupportedRequestError(f"{PATH_ENV_VAR}=resident, but the resident kernel cannot run: {resident}")
        return "resident"
    if forced == "persistent":
        if not isinstance(plan, PersistentPlan):
            raise UnsupportedRequestError(f"{PATH_ENV_VAR}=persistent, but the persistent kernel cannot run: {plan}")
        return "persistent"
    if isinstance(resident, ResidentPlan):
        return "resident"
    if isinstance(plan, PersistentPlan):
        on_chip = plan.on_chip and batch * plan.padded_hidden <= PERSISTENT_MAX_STATE_ON_CHIP
        if batch <= max_batch or (on_chip and batch <= max_batch_on_chip):
            return "persistent"
    return large_batch
