"""The CUDA sources of the CuPy backend and the template instances it uses.

The kernels live in real ``.cu`` files under ``kernels/`` (shipped as package
data) so that editors, ``nvcc`` and reviewers can read them. At run time each
file is compiled by NVRTC through ``cupy.RawModule`` with the C++ template
instances listed here as ``name_expressions``. Nothing in this module imports
CuPy: the test suite uses the same sources and names to compile the kernels
with ``nvcc`` (and for a CPU emulation) on machines without a GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

KERNEL_DIR = Path(__file__).parent / "kernels"

#: Sequences per batch tile the persistent kernel is instantiated for.
PERSISTENT_BATCH_TILES = (1, 2, 4, 8)
#: Most threads per block of the persistent kernel (its ``__launch_bounds__``, GRU_PERSISTENT_MAX_THREADS).
PERSISTENT_MAX_THREADS = 256
DTYPES = {"float32": "float", "float64": "double"}
#: Columns of W_hh per thread the register-resident kernel is instantiated for, per dtype: 3 rows of
#: that many values stay in each thread's registers (24 or 192 registers for float, 24 or 192 for double).
RESIDENT_CHUNKS = {"float32": (8, 64), "float64": (4, 32)}


#: Columns per row the row-per-thread resident kernel (float32, reset-after) is instantiated for.
RESIDENT_ROW_COLUMNS = (64, 128)


def resident_max_threads(dtype: str, chunk: int) -> int:
    """The register-resident kernel's thread bound for ``chunk`` columns per thread (its ``__launch_bounds__``).

    512 threads have 128 registers each: enough while the weights take at most 48. Above that
    the bound is 256 threads of up to 255 registers (192 of them weights).
    """
    weight_registers = 3 * chunk * (4 if dtype == "float32" else 8) // 4
    return 256 if weight_registers > 48 else 512


class _Step:
    """The type of :data:`STEP`."""

    def __repr__(self) -> str:
        return "STEP"


#: In the arguments of a prepared launch (``Device.prepare``), the int32 argument each call sets:
#: the time step of a per-step kernel.
STEP = _Step()

#: Options for NVRTC (CuPy adds the target architecture and ``-ftz=true``).
NVRTC_OPTIONS = ("--std=c++17",)


@dataclass(frozen=True)
class KernelFile:
    """One ``.cu`` file and the template instances compiled from it."""

    filename: str
    names: tuple[str, ...]

    @property
    def path(self) -> Path:
        return KERNEL_DIR / self.filename


def persistent_name(dtype: str, batch_tile: int, reset_after: bool) -> str:
    """The name expression of one persistent-kernel instance."""
    return f"gru_persistent<{DTYPES[dtype]}, {batch_tile}, {'true' if reset_after else 'false'}>"


def stepwise_name(kernel: str, dtype: str) -> str:
    """The name expression of one per-step kernel (``gru_step_after``, ``gru_backward_after``, ...)."""
    return f"{kernel}<{DTYPES[dtype]}>"


def resident_name(dtype: str, chunk: int, reset_after: bool) -> str:
    """The name expression of one register-resident kernel instance."""
    return f"gru_resident<{DTYPES[dtype]}, {chunk}, {'true' if reset_after else 'false'}>"


def resident_rows_name(columns: int) -> str:
    """The name expression of one row-per-thread resident kernel instance (float32, reset-after)."""
    return f"gru_resident_rows<{columns}>"


#: The fused kernel's tiles, (unit groups UG, sequences per lane SPL), largest first: a block of
#: 4 warps covers 4 * UG units x 32 * SPL * (4 / UG) sequences.
FUSED_TILES = ((2, 2), (4, 2), (4, 1))
FUSED_THREADS = 128


def fused_tile(batch: int) -> tuple[int, int]:
    """The fused kernel's tile for a batch: the smallest whose sequences cover it, else the largest."""
    for tile in reversed(FUSED_TILES):
        if fused_tile_shape(*tile)[1] >= batch:
            return tile
    return FUSED_TILES[0]


def fused_tile_shape(unit_groups: int, seqs_per_lane: int) -> tuple[int, int]:
    """(units, sequences) of one block of the fused kernel."""
    return 4 * unit_groups, 32 * seqs_per_lane * (4 // unit_groups)


def fused_name(dtype: str, gate_rows: int, tile: tuple[int, int] = FUSED_TILES[0]) -> str:
    """The name expression of one fused per-step kernel (3: reset-after; 2, 1: reset-before's halves)."""
    return f"gru_step_fused<{DTYPES[dtype]}, {gate_rows}, {tile[0]}, {tile[1]}>"


def fused_shared_memory(dtype: str, gate_rows: int, tile: tuple[int, int], stages: int) -> int:
    """Bytes of dynamic shared memory per block of the fused kernel: ``stages`` ring buffers.

    Each holds one 128-byte column tile of the block's weight rows and state
    rows, every row padded by one 16-byte vector (gru_fused.cu).
    """
    units, seqs = fused_tile_shape(*tile)
    return stages * (gate_rows * units + seqs) * (128 + 16)


STEPWISE_KERNELS = ("gru_step_after", "gru_step_before_rz", "gru_step_before_n")
#: The backward's per-step kernels (named like the stepwise ones: ``stepwise_name``).
BACKWARD_KERNELS = ("gru_backward_after", "gru_backward_before_zn", "gru_backward_before_r")

PERSISTENT = KernelFile(
    "gru_persistent.cu",
    tuple(
        persistent_name(dtype, tile, reset_after)
        for dtype in DTYPES
        for tile in PERSISTENT_BATCH_TILES
        for reset_after in (True, False)
    ),
)
STEPWISE = KernelFile(
    "gru_stepwise.cu",
    tuple(stepwise_name(kernel, dtype) for dtype in DTYPES for kernel in STEPWISE_KERNELS),
)
RESIDENT = KernelFile(
    "gru_resident.cu",
    tuple(
        resident_name(dtype, chunk, reset_after)
        for dtype in DTYPES
        for chunk in RESIDENT_CHUNKS[dtype]
        for reset_after in (True, False)
    )
    + tuple(resident_rows_name(columns) for columns in RESIDENT_ROW_COLUMNS),
)
FUSED = KernelFile(
    "gru_fused.cu",
    tuple(fused_name(dtype, g, tile) for dtype in DTYPES for g in (3, 2, 1) for tile in FUSED_TILES),
)
BACKWARD = KernelFile(
    "gru_backward.cu",
    tuple(stepwise_name(kernel, dtype) for dtype in DTYPES for kernel in BACKWARD_KERNELS),
)
KERNEL_FILES = (PERSISTENT, STEPWISE, RESIDENT, FUSED, BACKWARD)

_INCLUDE = re.compile(r'^#include\s+"([^"]+)"\s*$', re.MULTILINE)


@cache
def source(filename: str) -> str:
    """The file's text with its local ``#include "..."`` lines replaced by the header's text.

    Inlining keeps one self-contained source per module, so CuPy's compile
    cache key changes whenever any part of it does.
    """
    text = (KERNEL_DIR / filename).read_text()

    def splice(match: re.Match[str]) -> str:
        header = (KERNEL_DIR / match.group(1)).read_text().replace("#pragma once\n", "")
        return f"// ---- begin {match.group(1)} ----\n{header}\n// ---- end {match.group(1)} ----"

    return _INCLUDE.sub(splice, text)


def instantiation_unit(kernel_file: KernelFile) -> str:
    """A translation unit for ``nvcc``: the .cu file plus the address of every template instance the backend
    launches, so that an offline compile builds exactly those (CuPy asks NVRTC for them by name instead)."""
    refs = "".join(f"    (void*)&{name},\n" for name in kernel_file.names)
    return f'#include "{kernel_file.filename}"\nvoid* gru_instances[] = {{\n{refs}}};\n'
