"""What the CuPy backend needs from a GPU, behind one small interface.

:class:`CupyDevice` is the real thing: kernels compiled by NVRTC through
``cupy.RawModule`` (lazily, once per process and device), cuBLAS through
``cupy.matmul`` (and straight through ``gemmStridedBatched`` for the products of
the time loop, prepared once per call), cooperative launches for the persistent
kernel. The backend only talks to this interface, so the test suite can
substitute a CPU emulation of the same kernels and check the whole backend
without a GPU.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from gru.backends.cupy import _kernels
from gru.backends.cupy._gemm import gemm_calls, split_matmul_reference


class Device(Protocol):
    """The operations the backend runs on a device."""

    xp: Any  #: the array module (cupy, or numpy for the emulation)
    device_id: int
    sm_count: int
    #: the most dynamic shared memory one block may have (after opting in)
    smem_per_block: int
    #: whether kernels can be launched cooperatively (all blocks co-resident)
    cooperative_launch: bool
    #: bytes of L2 cache
    l2_bytes: int

    def asarray(self, a: Any) -> Any:
        """``a`` on this device (a no-op for an array already there)."""

    def to_host(self, a: Any) -> np.ndarray:
        """A NumPy copy of a device array."""

    def matmul(self, a: Any, b: Any, out: Any | None = None) -> Any:
        """``a @ b`` (batched over leading axes), into ``out`` when given."""

    def prepare_split_matmul(self, a: Any, b: Any, out: Any) -> Callable[[], None]:
        """``a`` (D, M, K) @ ``b`` (D, K, N) as S = ``out.shape[0]`` partial products over chunks of K.

        ``out[s]`` (D, M, N) gets the product over columns ``s*K/S`` to
        ``(s+1)*K/S`` of ``a`` (the same rows of ``b``); they sum to ``a @ b``.
        S divides K. The call is worked out once and returned; each call of the
        result computes the products anew from the arrays' current contents.
        """

    def launch(
        self,
        name: str,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: tuple,
        *,
        shared_mem: int = 0,
        cooperative: bool = False,
    ) -> None:
        """Launch the kernel instance ``name`` (a name expression of :mod:`_kernels`)."""

    def prepare(
        self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, *, shared_mem: int = 0
    ) -> Callable[[int], None]:
        """``launch`` with its arguments packed once, for a kernel launched every step.

        ``args`` holds :data:`~gru.backends.cupy._kernels.STEP` once, where the
        kernel takes its int32 step number; calling the result with a step launches.
        """

    def max_active_blocks(self, name: str, threads: int, shared_mem: int) -> int:
        """How many blocks of ``name`` fit on one multiprocessor at once."""


_DEFAULT_DYNAMIC_SMEM = 48 * 1024
# cudaDeviceAttr values (driver_types.h), read through cupy.cuda.runtime.deviceGetAttribute,
# which every CuPy version has (Device.attributes' key names are not as stable)
_ATTR_MULTIPROCESSOR_COUNT = 16
_ATTR_L2_CACHE_SIZE = 38
_ATTR_COOPERATIVE_LAUNCH = 95
_ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97


class CupyDevice:
    """One CUDA device through CuPy. Create with the device current."""

    def __init__(self, cupy: Any) -> None:
        self.xp = cupy
        runtime = cupy.cuda.runtime
        self.device_id = runtime.getDevice()
        attribute = runtime.deviceGetAttribute
        self.sm_count = attribute(_ATTR_MULTIPROCESSOR_COUNT, self.device_id)
        self.smem_per_block = attribute(_ATTR_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, self.device_id)
        self.cooperative_launch = bool(attribute(_ATTR_COOPERATIVE_LAUNCH, self.device_id))
        self.l2_bytes = attribute(_ATTR_L2_CACHE_SIZE, self.device_id)
        name = runtime.getDeviceProperties(self.device_id).get("name", b"")
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self._lock = threading.Lock()
        self._functions: dict[str, Any] = {}
        self._smem_opt_in: dict[str, int] = {}
        from cupy_backends.cuda.api import driver
        from cupy_backends.cuda.libs import cublas

        self._cublas = cublas
        self._driver = driver
        #: alpha = 1 and beta = 0 in host memory, per dtype, and the dtype's strided-batched GEMM
        self._gemms = {
            np.dtype(np.float32): (np.ones(1, np.float32), np.zeros(1, np.float32), cublas.sgemmStridedBatched),
            np.dtype(np.float64): (np.ones(1, np.float64), np.zeros(1, np.float64), cublas.dgemmStridedBatched),
        }

    # -- arrays ------------------------------------------------------------------------
    def asarray(self, a: Any) -> Any:
        return self.xp.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a)

    def matmul(self, a: Any, b: Any, out: Any | None = None) -> Any:
        return self.xp.matmul(a, b, out=out)

    def prepare_split_matmul(self, a: Any, b: Any, out: Any) -> Callable[[], None]:
        gemm = self._gemm(a, b, out)
        return gemm if gemm is not None else lambda: split_matmul_reference(self.xp, a, b, out)

    def _gemm(self, a: Any, b: Any, out: Any) -> Callable[[], None] | None:
        """``prepare_split_matmul`` through cuBLAS; None where the operands are not canonical."""
        gemm = self._gemms.get(a.dtype)
        if not (
            gemm is not None
            and a.dtype == b.dtype == out.dtype
            and a.flags.c_contiguous
            and b.flags.c_contiguous
            and out.flags.c_contiguous
            and out.shape[1:] == (*a.shape[:2], b.shape[-1])
        ):
            return None
        calls = gemm_calls(a.shape, b.shape, out.shape[0])
        if calls is None:
            return None
        one, zero, strided_batched = gemm
        cublas = self._cublas
        item = a.dtype.itemsize
        no_transpose = cublas.CUBLAS_OP_N
        arguments = [
            (
                no_transpose,
                no_transpose,
                call.m,
                call.n,
                call.k,
                one.ctypes.data,
                b.data.ptr + call.offset_b * item,
                call.lda,
                call.stride_a,
                a.data.ptr + call.offset_a * item,
                call.ldb,
                call.stride_b,
                zero.ctypes.data,
                out.data.ptr + call.offset_out * item,
                call.ldc,
                call.stride_c,
                call.batch,
            )
            for call in calls
        ]
        stream = self.xp.cuda.get_current_stream().ptr
        host_scalars = cublas.CUBLAS_POINTER_MODE_HOST
        get_handle = self.xp.cuda.device.get_cublas_handle

        def run() -> None:
            # the handle is CuPy's, shared with its own calls: set its stream and mode every time
            handle = get_handle()
            cublas.setStream(handle, stream)
            cublas.setPointerMode(handle, host_scalars)
            for args in arguments:
                strided_batched(handle, *args)

        # the operands' memory must outlive the calls: the closure holds the arrays
        run.operands = (a, b, out)  # type: ignore[attr-defined]
        return run

    # -- kernels -----------------------------------------------------------------------
    def _function(self, name: str) -> Any:
        """The compiled kernel instance ``name``, compiled by NVRTC on first use and then cached.

        One module per template instance: NVRTC instantiates only the requested
        template, so a process compiles just the kernels it launches (seconds
        for all of them, a fraction of a second each). CuPy also caches the
        binaries on disk across processes.
        """
        function = self._functions.get(name)
        if function is not None:
            return function
        with self._lock:
            function = self._functions.get(name)
            if function is None:
                kernel_file = next((f for f in _kernels.KERNEL_FILES if name in f.names), None)
                if kernel_file is None:
                    raise KeyError(f"no CUDA kernel instance named {name!r}")
                module = self.xp.RawModule(
                    code=_kernels.source(kernel_file.filename),
                    options=_kernels.NVRTC_OPTIONS,
                    name_expressions=(name,),
                )
                function = module.get_function(name)
                self._functions[name] = function
        return function

    def _allow_shared_memory(self, name: str, function: Any, shared_mem: int) -> None:
        """Raise the kernel's dynamic shared-memory limit when it needs more than the default 48 KiB."""
        if shared_mem > self._smem_opt_in.get(name, _DEFAULT_DYNAMIC_SMEM):
            function.max_dynamic_shared_size_bytes = shared_mem
            self._smem_opt_in[name] = shared_mem

    def launch(
        self,
        name: str,
        grid: tuple[int, ...],
        block: tuple[int, ...],
        args: tuple,
        *,
        shared_mem: int = 0,
        cooperative: bool = False,
    ) -> None:
        function = self._function(name)
        self._allow_shared_memory(name, function, shared_mem)
        if cooperative:
            # RawKernel.kernel is the underlying cupy.cuda.Function, whose call takes
            # enable_cooperative_groups: a cuLaunchCooperativeKernel launch of code compiled
            # without CuPy's cooperative-groups options (the kernels bring their own barrier).
            function.kernel(grid, block, args, shared_mem=shared_mem, enable_cooperative_groups=True)
        else:
            function(grid, block, args, shared_mem=shared_mem)

    def prepare(
        self, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, *, shared_mem: int = 0
    ) -> Callable[[int], None]:
        function = self._function(name)
        self._allow_shared_memory(name, function, shared_mem)
        values, step = pack_kernel_arguments(args)
        params = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        grid3 = (*grid, 1, 1)[:3]
        block3 = (*block, 1, 1)[:3]
        pointer = function.kernel.ptr
        stream = self.xp.cuda.get_current_stream().ptr
        launch_kernel = self._driver.launchKernel

        def launch(s: int) -> None:
            step.value = s  # the driver copies the parameters at the launch
            launch_kernel(pointer, *grid3, *block3, shared_mem, stream, ctypes.addressof(params), 0)

        launch.keep = (values, params, args)  # type: ignore[attr-defined]
        return launch

    def max_active_blocks(self, name: str, threads: int, shared_mem: int) -> int:
        function = self._function(name)
        self._allow_shared_memory(name, function, shared_mem)
        driver = self.xp.cuda.driver
        return int(driver.occupancyMaxActiveBlocksPerMultiprocessor(function.kernel.ptr, threads, shared_mem))


def pack_kernel_arguments(args: tuple) -> tuple[list[Any], Any]:
    """The ctypes values of a kernel's arguments (device arrays by address, np.int32 as int32) and the STEP slot."""
    values: list[Any] = []
    step = None
    for a in args:
        if a is _kernels.STEP:
            if step is not None:
                raise ValueError("a prepared launch takes one STEP argument")
            step = ctypes.c_int32(0)
            values.append(step)
        elif isinstance(a, np.int32):
            values.append(ctypes.c_int32(int(a)))
        elif hasattr(a, "data") and hasattr(a.data, "ptr"):
            values.append(ctypes.c_void_p(a.data.ptr))
        else:
            raise TypeError(f"unexpected kernel argument type {type(a).__name__}")
    if step is None:
        raise ValueError("a prepared launch needs one STEP argument")
    return values, step
