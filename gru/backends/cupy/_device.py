"""What the CuPy backend needs from a GPU, behind one small interface.

:class:`CupyDevice` is the real thing: kernels compiled by NVRTC through
``cupy.RawModule`` (lazily, once per process and device), cuBLAS through
``cupy.matmul``, cooperative launches for the persistent kernel. The backend
only talks to this interface, so the test suite can substitute a CPU
emulation of the same kernels and check the whole backend without a GPU.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from gru.backends.cupy import _kernels


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

    # -- arrays ------------------------------------------------------------------------
    def asarray(self, a: Any) -> Any:
        return self.xp.asarray(a)

    def to_host(self, a: Any) -> np.ndarray:
        return self.xp.asnumpy(a)

    def matmul(self, a: Any, b: Any, out: Any | None = None) -> Any:
        return self.xp.matmul(a, b, out=out)

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

    def max_active_blocks(self, name: str, threads: int, shared_mem: int) -> int:
        function = self._function(name)
        self._allow_shared_memory(name, function, shared_mem)
        driver = self.xp.cuda.driver
        return int(driver.occupancyMaxActiveBlocksPerMultiprocessor(function.kernel.ptr, threads, shared_mem))
