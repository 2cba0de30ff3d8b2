"""A stand-in for :class:`gru.backends.cupy._device.CupyDevice` that runs the real kernels on the CPU.

The ``.cu`` files are compiled with the host C++ compiler against ``emulator.h``
(a fiber-per-CUDA-thread emulation of blocks, warps, shared memory and the
grid barrier); arrays are NumPy arrays and cuBLAS is NumPy's matmul. The CuPy
backend then runs unchanged on top of it: its path rule, weight packing,
launch arguments and both kernels are checked on machines without a GPU.

Each launch also guards every array argument that shares memory with no
other: the kernel gets a copy framed by NaN-filled guard bytes, which must be
intact afterwards (an out-of-bounds write fails the launch; an out-of-bounds
read brings NaN into the results). And every explicit global load of a kernel
(``__ldg``, ``__ldcg``, the sources of asynchronous copies) must fall inside an
argument array, even where its value is never used.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from gru.backends.cupy import _kernels
from gru.backends.cupy._gemm import split_matmul_reference

HERE = Path(__file__).parent
GUARD = 64  # bytes on each side of a guarded argument
POISON = 0xFF  # NaN as float32 and float64


class EmulationUnavailableError(RuntimeError):
    """The host cannot build the emulation (no C++ compiler, not POSIX)."""


def build_library(build_dir: Path) -> ctypes.CDLL:
    """Compile the kernels for the emulation (cached by the sources' hash) and load them."""
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None or not sys.platform.startswith("linux"):
        raise EmulationUnavailableError("needs Linux and a C++17 compiler (g++, c++ or clang++)")
    table = "".join(f"    EMU_KERNEL({name}),\n" for f in _kernels.KERNEL_FILES for name in f.names)
    sources = [HERE / "emulator.h", HERE / "harness.cpp", *sorted(_kernels.KERNEL_DIR.iterdir())]
    digest = hashlib.sha256(table.encode() + b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    library = build_dir / f"libgru_emulation_{digest}.so"
    if not library.exists():
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / "emu_kernels.inc").write_text(table)
        command = [
            compiler,
            "-std=c++17",
            "-O1",
            "-U_FORTIFY_SOURCE",
            "-D_FORTIFY_SOURCE=0",  # glibc's fortified longjmp refuses a jump onto another fiber's stack
            "-shared",
            "-fPIC",
            "-Wall",
            "-Wno-unknown-pragmas",
            f"-I{build_dir}",
            f"-I{HERE}",
            f"-I{_kernels.KERNEL_DIR}",
            str(HERE / "harness.cpp"),
            "-o",
            str(library),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or done.stderr.strip():
            raise RuntimeError(f"building the emulation failed or warned:\n{done.stderr}")
    lib = ctypes.CDLL(str(library))
    lib.emu_launch.restype = ctypes.c_int
    lib.emu_launch.argtypes = [ctypes.c_char_p] + [ctypes.c_int] * 5 + [ctypes.c_void_p, ctypes.c_uint]
    lib.emu_has.restype = ctypes.c_int
    lib.emu_has.argtypes = [ctypes.c_char_p]
    lib.emu_set_readable.restype = None
    lib.emu_set_readable.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    return lib


class _PoisonedNumpy:
    """NumPy, except that ``empty`` and ``empty_like`` hand out NaN-filled memory.

    The backend allocates with ``empty`` what its kernels must write in full;
    NaN makes any element they miss fail the comparison with the oracle.
    """

    def __getattr__(self, name: str):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        out = np.empty(shape, dtype)
        out.fill(np.nan if out.dtype.kind == "f" else POISON)
        return out

    @classmethod
    def empty_like(cls, a, dtype=None):
        return cls.empty(np.shape(a), a.dtype if dtype is None else dtype)


class EmulatedDevice:
    """The :class:`~gru.backends.cupy._device.Device` interface on the CPU emulation.

    ``sm_count``, ``smem_per_block``, ``blocks_per_sm`` and ``l2_bytes`` shape the
    plans the backend makes, so tests can force many blocks, partial weight
    caching, rows kept in L2 or a grid that is too large to be co-resident.
    """

    def __init__(
        self,
        lib: ctypes.CDLL,
        *,
        sm_count: int = 8,
        smem_per_block: int = 48 * 1024,
        blocks_per_sm: int = 1,
        cooperative_launch: bool = True,
        l2_bytes: int = 50 * 2**20,
        seed: int = 0,
    ) -> None:
        self.lib = lib
        self.xp = _PoisonedNumpy()
        self.device_id = 0
        self.sm_count = sm_count
        self.smem_per_block = smem_per_block
        self.blocks_per_sm = blocks_per_sm
        self.cooperative_launch = cooperative_launch
        self.l2_bytes = l2_bytes
        self.seed = seed
        self.launches: list[tuple[str, tuple[int, ...], tuple[int, ...], int]] = []

    def asarray(self, a):
        return np.asarray(a)

    def to_host(self, a) -> np.ndarray:
        return np.array(a, copy=True)

    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    def prepare_split_matmul(self, a, b, out):
        return lambda: split_matmul_reference(np, a, b, out)

    def prepare(self, name, grid, block, args, *, shared_mem=0):
        (at,) = [i for i, a in enumerate(args) if a is _kernels.STEP]

        def launch(step: int) -> None:
            self.launch(name, grid, block, (*args[:at], np.int32(step), *args[at + 1 :]), shared_mem=shared_mem)

        return launch

    def max_active_blocks(self, name: str, threads: int, shared_mem: int) -> int:
        return self.blocks_per_sm if shared_mem <= self.smem_per_block else 0

    def launch(self, name, grid, block, args, *, shared_mem=0, cooperative=False) -> None:
        grid = tuple(grid) + (1,) * (3 - len(grid))
        if cooperative and grid[0] * grid[1] * grid[2] > self.blocks_per_sm * self.sm_count:
            raise RuntimeError(f"cooperative launch of {grid} blocks: more than can be co-resident")
        if shared_mem > self.smem_per_block:
            raise RuntimeError(f"{shared_mem} bytes of shared memory asked, the device has {self.smem_per_block}")
        if block[0] % 32:
            raise RuntimeError(f"the emulation runs whole warps: {block[0]} threads per block")
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        guarded = {}
        for a in arrays:
            if not a.flags.c_contiguous:
                raise RuntimeError(f"{name}: a kernel argument is not C-contiguous")
            if not any(b is not a and np.shares_memory(a, b) for b in arrays):
                frame = np.full(a.nbytes + 2 * GUARD, POISON, np.uint8)
                frame[GUARD : GUARD + a.nbytes] = a.reshape(-1).view(np.uint8)
                guarded[id(a)] = frame
        # where the kernel sees each array: inside its guard frame, or the array itself
        address = {id(a): guarded[id(a)].ctypes.data + GUARD if id(a) in guarded else a.ctypes.data for a in arrays}
        keep, params = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                value = ctypes.c_void_p(address[id(a)])
            elif isinstance(a, np.int32):
                value = ctypes.c_int32(int(a))
            else:
                raise TypeError(f"{name}: unexpected kernel argument type {type(a).__name__}")
            keep.append(value)
            params.append(ctypes.cast(ctypes.pointer(value), ctypes.c_void_p))
        packed = (ctypes.c_void_p * len(params))(*params)
        # every array argument, where the kernel sees it, is what its explicit global loads may read
        spans = {}
        for a in arrays:
            spans[address[id(a)]] = max(spans.get(address[id(a)], 0), a.nbytes)
        begins = (ctypes.c_void_p * max(1, len(spans)))(*spans.keys())
        sizes = (ctypes.c_longlong * max(1, len(spans)))(*spans.values())
        self.lib.emu_set_readable(begins, sizes, len(spans))
        self.seed += 1
        status = self.lib.emu_launch(name.encode(), grid[0], grid[1], grid[2], block[0], shared_mem, packed, self.seed)
        self.launches.append((name, grid, tuple(block), shared_mem))
        if status == 1:
            raise RuntimeError(f"the emulation has no kernel {name!r}")
        if status == 2:
            raise RuntimeError(f"{name}: deadlock (every thread waits at a barrier that cannot open)")
        if status == 3:
            raise RuntimeError(f"{name}: an asynchronous copy with an address not 16-byte aligned")
        if status == 5:
            raise RuntimeError(f"{name}: a global load outside every argument array")
        for a in arrays:
            frame = guarded.get(id(a))
            if frame is None:
                continue
            if not (np.all(frame[:GUARD] == POISON) and np.all(frame[GUARD + a.nbytes :] == POISON)):
                raise RuntimeError(f"{name}: a write outside an argument array of shape {a.shape}")
            a.reshape(-1).view(np.uint8)[...] = frame[GUARD : GUARD + a.nbytes]
