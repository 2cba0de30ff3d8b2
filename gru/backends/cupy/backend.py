"""The CuPy GPU backend: CUDA kernels that keep W_hh on chip for the recurrence, cuBLAS for the products.

Per layer (both directions together):

1. the input projection of all T·B rows as ONE GEMM (cuBLAS through
   ``cupy.matmul``): ``gx = x @ [W_ih_fwd; W_ih_rev]^T + bias``, with b_hr,
   b_hz (and b_hn for reset-before) folded into the bias;
2. the recurrence, on one of four paths chosen per call by :func:`choose_path`:

   * **resident** (small hidden sizes, any batch): one block per sequence and
     direction runs every step with W_hh in its registers and h in shared
     memory: no grid-wide synchronisation at all. See ``kernels/gru_resident.cu``.
   * **persistent** (small and medium batch): one cooperative launch runs every
     step. Each block owns a slice of hidden units and keeps its rows of W_hh
     in shared memory for all steps; blocks exchange h through L2 and meet at a
     grid-wide barrier once per step (twice for reset-before). Rows that do not
     fit on chip are read from global memory inside the same kernel.
     See ``kernels/gru_persistent.cu``.
   * **stepwise** (large batch): per step one cuBLAS GEMM (batched over the
     directions) and one gate kernel (two of each for reset-before).
     See ``kernels/gru_stepwise.cu``.
   * **fused** (when forced, or named by :data:`LARGE_BATCH_PATH`): per step
     ONE kernel that computes the step's recurrent product in tiles of units x
     sequences sized to the batch and applies the gate math to the sums in
     registers (two kernels for reset-before). Its current version (a ring of
     cp.async tile buffers) has not yet been timed on a GPU; the first version
     was slower than the stepwise path. See ``kernels/gru_fused.cu``.

Nothing in the time loop is an element-wise CuPy expression: every per-step
operation is a cuBLAS call or one of our kernels.

CuPy inputs stay on the device and results are CuPy arrays; NumPy inputs are
copied to the current device and results come back as NumPy arrays (the
capability ``accepts_host_arrays`` lets the registry dispatch them here when
the backend is named explicitly; ``backend="auto"`` keeps host inputs on CPU
backends).

CuPy is imported only in :meth:`CupyBackend.available` and at call time.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from gru._errors import UnsupportedRequestError
from gru.backends._base import Backend, Capabilities, ForwardRequest, ForwardResult, LayerWeights
from gru.backends.cupy import _kernels

# ---------------------------------------------------------------------------------------------
# The path rule and the kernels' knobs, set from measurements on an H100 (benchmarks/gpu.py
# --sweep and --crossover time every path and knob; benchmarks/RESULTS.md has the numbers).
# ---------------------------------------------------------------------------------------------

#: Batches up to this size run the persistent kernel; larger ones the large-batch path. Above it,
#: every weight is reused by many sequences per step, while the persistent kernel restages every
#: sequence's state in every block each step (measured: at H=1024 and 64 sequences the persistent
#: kernel took 6.0 ms per 100 steps, the stepwise path 4.3).
PERSISTENT_MAX_BATCH = 16
#: ... and up to this size when every recurrent weight stays on chip (H=1024, 32 sequences: 3.2 ms
#: persistent against 4.2 stepwise; H=2048, 32 sequences, partly from L2: 30.7 ms against 23.2).
PERSISTENT_MAX_BATCH_ON_CHIP = 32
#: The fewest hidden units one persistent block owns. Fewer units per block spreads W_hh over
#: more multiprocessors (less shared memory and work per block per step) but makes the per-step
#: grid barrier wait for more blocks.
PERSISTENT_MIN_UNITS_PER_BLOCK = 8
#: Threads per persistent block (a multiple of 32, at most the kernel's launch bound).
PERSISTENT_THREADS = 256
#: The share of L2 the persistent kernel may fill with the weight rows that do not fit on chip,
#: loaded with the evict_last policy so that they stay there from step to step (the others
#: stream through with evict_first).
PERSISTENT_L2_FRACTION = 0.6
#: Threads per block of the per-step gate kernels, and how many blocks per multiprocessor at most.
STEPWISE_THREADS = 256
STEPWISE_BLOCKS_PER_SM = 8

#: The path "auto" takes above the persistent kernel's batches: "stepwise" or "fused". The first
#: fused kernel lost to stepwise at H=1024 and at (H=512, 256 sequences): 7.6 against 6.0 ms; it
#: won only at H=256 up to 128 sequences (benchmarks/RESULTS.md). The current one is untimed.
LARGE_BATCH_PATH = "stepwise"

#: Force a path: "resident", "persistent", "fused", "stepwise" or "auto" (the default).
PATH_ENV_VAR = "GRU_CUPY_PATH"
#: Set to 1 to check after each call that the persistent kernel found the shared memory it expected.
DEBUG_ENV_VAR = "GRU_CUPY_DEBUG"
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

    @property
    def ks_log2(self) -> int:
        return self.lanes_per_unit.bit_length() - 1


def plan_resident(*, hidden_size: int, dtype: str, reset_after: bool, elements: int) -> ResidentPlan | str:
    """Lay out the register-resident kernel for one layer, or say why it cannot run.

    Each hidden unit gets the fewest power-of-two lanes whose chunks of
    ``chunk`` columns cover H; the smallest instantiated chunk that keeps the
    block within its thread bound wins (more lanes, shorter chains per thread).
    ``elements`` is the size of the layer's largest tensor (gx).
    """
    if elements > RESIDENT_MAX_ELEMENTS:
        return f"the layer's tensors have {elements} elements, more than its 32-bit indexing allows"
    H = hidden_size
    itemsize = np.dtype(dtype).itemsize
    width = 16 // itemsize
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
    ``max_batch_on_chip`` when the plan keeps every weight on chip; otherwise
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
    if isinstance(plan, PersistentPlan) and batch <= (max_batch_on_chip if plan.on_chip else max_batch):
        return "persistent"
    return large_batch


class _Packed:
    """One layer's weights (all directions) on the device, in the layouts the kernels read.

    Built once per :class:`LayerWeights` set and device, lazily per path.
    """

    def __init__(self, device: Any, weights: tuple[LayerWeights, ...], reset_after: bool) -> None:
        self.device = device
        self.H = weights[0].w_hh.shape[1]
        self.dtype = weights[0].w_hh.dtype
        host = [
            tuple(np.asarray(_host(a)) for a in (w.w_ih, w.w_hh, w.b_ih, w.b_hh)) for w in weights
        ]  # (w_ih, w_hh, b_ih, b_hh) per direction
        self._host_w_hh = [w_hh for _, w_hh, _, _ in host]
        H = self.H
        bias = []
        for _, _, b_ih, b_hh in host:
            folded = b_ih.copy()
            folded[: 2 * H] += b_hh[: 2 * H]
            if not reset_after:
                folded[2 * H :] += b_hh[2 * H :]
            bias.append(folded)
        # gx = x @ w_ih_t + gx_bias: (T·B, I) @ (I, D·3H)
        self.w_ih_t = device.asarray(np.ascontiguousarray(np.concatenate([w_ih for w_ih, _, _, _ in host]).T))
        self.gx_bias = device.asarray(np.concatenate(bias))
        self.b_hn = device.asarray(np.stack([b_hh[2 * H :] for _, _, _, b_hh in host]))
        self._lazy: dict[str, Any] = {}

    def _get(self, key: str, build) -> Any:
        value = self._lazy.get(key)
        if value is None:
            value = self._lazy[key] = self.device.asarray(build())
        return value

    def w_hh_padded(self, padded: int) -> Any:
        """(D, 3H, Hp), rows zero-padded: the persistent kernel's 16-byte row loads."""

        def build() -> np.ndarray:
            out = np.zeros((len(self._host_w_hh), 3 * self.H, padded), self.dtype)
            for d, w_hh in enumerate(self._host_w_hh):
                out[d, :, : self.H] = w_hh
            return out

        return self._get(f"w_hh_padded{padded}", build)

    def w_hh_t(self) -> Any:
        """(D, H, 3H): h (D, B, H) @ this gives every gate's recurrent product."""
        return self._get("w_hh_t", lambda: np.ascontiguousarray(np.stack([w.T for w in self._host_w_hh])))

    def w_rz_t(self) -> Any:
        """(D, H, 2H): the r and z rows only (reset-before's first product)."""
        H = self.H
        return self._get("w_rz_t", lambda: np.ascontiguousarray(np.stack([w[: 2 * H].T for w in self._host_w_hh])))

    def w_n_t(self) -> Any:
        """(D, H, H): the candidate rows only (reset-before's second product, on r * h)."""
        H = self.H
        return self._get("w_n_t", lambda: np.ascontiguousarray(np.stack([w[2 * H :].T for w in self._host_w_hh])))


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)


def _is_device_array(a: Any) -> bool:
    return hasattr(a, "__cuda_array_interface__")


class CupyBackend(Backend):
    """GRU forward on NVIDIA GPUs through CuPy: every feature, float32 and float64.

    ``device_factory`` exists for the test suite (a CPU emulation of the kernels);
    by default devices come from CuPy.
    """

    capabilities = Capabilities(device="cuda", priority=200, training=False, accepts_host_arrays=True)

    def __init__(self, device_factory: Any | None = None) -> None:
        self._device_factory = device_factory
        self._devices: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._packed: weakref.WeakKeyDictionary[LayerWeights, dict[tuple, _Packed]] = weakref.WeakKeyDictionary()
        #: the path rule's knobs, per instance so that tests and benchmarks can change them
        self.persistent_max_batch = PERSISTENT_MAX_BATCH
        self.persistent_max_batch_on_chip = PERSISTENT_MAX_BATCH_ON_CHIP
        self.persistent_min_units = PERSISTENT_MIN_UNITS_PER_BLOCK
        self.persistent_threads = PERSISTENT_THREADS
        self.persistent_l2_fraction = PERSISTENT_L2_FRACTION
        #: whether "auto" takes the register-resident kernel where it fits
        self.use_resident = True
        self.large_batch_path = LARGE_BATCH_PATH
        self.last_paths: tuple[str, ...] = ()  #: the path each layer of the last call took
        self._constants: dict[tuple, Any] = {}  #: small device arrays reused by every call

    # -- availability --------------------------------------------------------------------
    def available(self) -> bool | str:
        if self._device_factory is not None:
            return True
        try:
            import cupy
        except ImportError as exc:
            return (
                f"CuPy is not installed ({exc}); "
                "install gru with the cuda12 or cuda13 extra, e.g. pip install 'gru[cuda12]'"
            )
        except Exception as exc:  # a broken CUDA install can fail at import
            return f"CuPy failed to import ({type(exc).__name__}: {exc})"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            return f"the CUDA driver reported an error ({type(exc).__name__}: {exc})"
        if count == 0:
            return "CuPy sees no CUDA device"
        try:
            major = int(cupy.cuda.Device(0).compute_capability) // 10
        except Exception as exc:
            return f"cannot query the CUDA device ({type(exc).__name__}: {exc})"
        if major < 7:
            return f"the CUDA device has compute capability {major}.x; the kernels need 7.0 or newer"
        return True

    # -- devices and weights -----------------------------------------------------------------
    def _device(self, x: Any) -> Any:
        if self._device_factory is not None:
            key = 0
        else:
            import cupy

            key = x.device.id if _is_device_array(x) else cupy.cuda.Device().id
        device = self._devices.get(key)
        if device is None:
            with self._lock:
                device = self._devices.get(key)
                if device is None:
                    if self._device_factory is not None:
                        device = self._device_factory()
                    else:
                        import cupy

                        from gru.backends.cupy._device import CupyDevice

                        with cupy.cuda.Device(key):
                            device = CupyDevice(cupy)
                    self._devices[key] = device
        return device

    def _packed_weights(self, device: Any, weights: tuple[LayerWeights, ...], reset_after: bool) -> _Packed:
        """The layer's device-side weights, cached on the (immutable) LayerWeights objects."""
        key = (device.device_id, tuple(id(w) for w in weights), reset_after)
        with self._lock:
            per_layer = self._packed.setdefault(weights[0], {})
            packed = per_layer.get(key)
        if packed is None:
            packed = _Packed(device, weights, reset_after)
            with self._lock:
                per_layer[key] = packed
        return packed

    def _full_lengths(self, device: Any, batch: int, seq_len: int) -> Any:
        """``batch`` lengths of ``seq_len`` on the device, made there once (no host copy per call)."""
        key = (device.device_id, batch, seq_len)
        lengths = self._constants.get(key)
        if lengths is None:
            if len(self._constants) >= 64:
                self._constants.clear()
            lengths = self._constants[key] = device.xp.full(batch, seq_len, np.int32)
        return lengths

    def _placeholder(self, device: Any, dtype: Any) -> Any:
        """A one-element array for a kernel's unused pointer argument (the gates when not asked for)."""
        key = (device.device_id, np.dtype(dtype).name)
        placeholder = self._constants.get(key)
        if placeholder is None:
            placeholder = self._constants[key] = device.xp.zeros(1, dtype)
        return placeholder

    # -- forward -------------------------------------------------------------------------------
    def forward(self, request: ForwardRequest) -> ForwardResult:
        device = self._device(request.x)
        if self._device_factory is None:
            import cupy

            with cupy.cuda.Device(device.device_id):
                return self._forward(device, request)
        return self._forward(device, request)

    def _forward(self, device: Any, request: ForwardRequest) -> ForwardResult:
        xp = device.xp
        host_input = not _is_device_array(request.x)
        forced = os.environ.get(PATH_ENV_VAR, "auto") or "auto"
        debug = os.environ.get(DEBUG_ENV_VAR, "") not in ("", "0")

        T, B = request.seq_len, request.batch_size
        H, D, L = request.hidden_size, request.num_directions, request.num_layers
        dtype = request.dtype
        x = device.asarray(request.x)
        h0 = device.asarray(request.h0)
        h_n = xp.empty_like(h0)
        lengths = request.lengths
        steps = T if lengths is None else int(lengths.max(initial=0))
        # outputs and gates past a sequence's length stay zero; when every sequence runs all T
        # steps the kernels write every element, and the zero fill (a launch) is skipped
        fill = xp.empty if lengths is None or bool((lengths == T).all()) else xp.zeros
        gates = fill((L * D, 3, T, B, H), dtype) if request.return_gates else None
        paths: list[str] = []
        checks: list[Any] = []

        if steps == 0 or B == 0:
            output = xp.zeros((T, B, D * H), dtype)
            h_n[...] = h0
        else:
            lengths_device = (
                self._full_lengths(device, B, T) if lengths is None else device.asarray(lengths.astype(np.int32))
            )
            plan: PersistentPlan | str | None = None
            resident: ResidentPlan | str | None = None
            if forced == "resident" or (forced == "auto" and self.use_resident):
                resident = plan_resident(
                    hidden_size=H,
                    dtype=dtype,
                    reset_after=request.reset_after,
                    elements=T * B * D * 3 * H,
                )
            if forced == "persistent" or (
                forced == "auto"
                and B <= max(self.persistent_max_batch, self.persistent_max_batch_on_chip)
                and not isinstance(resident, ResidentPlan)
            ):
                plan = plan_persistent(
                    device,
                    hidden_size=H,
                    batch=B,
                    directions=D,
                    dtype=dtype,
                    reset_after=request.reset_after,
                    threads=self.persistent_threads,
                    min_units=self.persistent_min_units,
                    l2_fraction=self.persistent_l2_fraction,
                )
            path = choose_path(
                B,
                plan,
                forced,
                self.persistent_max_batch,
                resident,
                self.large_batch_path,
                self.persistent_max_batch_on_chip,
            )
            if path == "resident":
                plan = resident
            layer_input = x
            for layer in range(L):
                k = slice(layer * D, (layer + 1) * D)
                packed = self._packed_weights(device, request.weights[k], request.reset_after)
                gx = device.matmul(layer_input.reshape(T * B, layer_input.shape[-1]), packed.w_ih_t)
                gx += packed.gx_bias  # once per layer, outside the time loop
                output = fill((T, B, D * H), dtype)
                paths.append(path)
                layer_gates = gates[k] if gates is not None else None
                run = {
                    "resident": self._run_resident,
                    "persistent": self._run_persistent,
                    "fused": self._run_fused,
                    "stepwise": self._run_stepwise,
                }[path]
                check = run(
                    device,
                    packed,
                    plan,
                    gx=gx,
                    h0=h0[k],
                    lengths=lengths_device,
                    steps=steps,
                    output=output,
                    h_n=h_n[k],
                    gates=layer_gates,
                    reset_after=request.reset_after,
                )
                if check is not None:
                    checks.append(check)
                if request.dropout_masks is not None and layer < L - 1:
                    output *= device.asarray(request.dropout_masks[layer])
                layer_input = output
            output = layer_input
        self.last_paths = tuple(paths)

        if checks and (debug or host_input):
            for sync in checks:
                needed = int(device.to_host(sync)[1])
                if needed:
                    raise RuntimeError(
                        f"gru cupy backend: the persistent kernel needed {needed} bytes of shared memory"
                    )
        if host_input:
            return ForwardResult(
                output=device.to_host(output),
                h_n=device.to_host(h_n),
                gates=None if gates is None else device.to_host(gates),
            )
        return ForwardResult(output=output, h_n=h_n, gates=gates)

    def _run_resident(
        self, device, packed: _Packed, plan: ResidentPlan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after
    ):
        """One launch, one block per (sequence, direction), every step of each sequence in its block."""
        D, B, H = h0.shape
        T = output.shape[0]
        i32 = np.int32
        args = (
            gx,
            packed.w_hh_padded(plan.padded_hidden),
            packed.b_hn,
            lengths,
            h0,  # a leading-axis slice of the contiguous (L*D, B, H) state: contiguous
            h_n,
            output,
            gates if gates is not None else self._placeholder(device, output.dtype),
            i32(gates is not None),
            i32(T),
            i32(B),
            i32(H),
            i32(plan.padded_hidden),
            i32(D),
            i32(plan.ks_log2),
        )
        device.launch(plan.kernel, (B, D), (plan.threads,), args, shared_mem=plan.shared_mem)
        return None

    def _run_persistent(
        self, device, packed: _Packed, plan: PersistentPlan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after
    ):
        """One launch for every step of the layer; returns the kernel's sync/error words."""
        xp = device.xp
        D, B, H = h0.shape
        T = output.shape[0]
        Hp = plan.padded_hidden
        dtype = output.dtype
        hbuf = xp.zeros((2, D, B, Hp), dtype)
        hbuf[0, :, :, :H] = h0
        rhbuf = xp.zeros((D, B, Hp), dtype) if not reset_after else self._placeholder(device, dtype)
        sync = xp.zeros(2, np.uint32)
        i32 = np.int32
        args = (
            gx,
            packed.w_hh_padded(Hp),
            packed.b_hn,
            lengths,
            hbuf,
            rhbuf,
            output,
            gates if gates is not None else self._placeholder(device, dtype),
            sync,
            i32(gates is not None),
            i32(steps),
            i32(T),
            i32(B),
            i32(H),
            i32(Hp),
            i32(D),
            i32(plan.units),
            i32(plan.cached_rows),
            i32(plan.l2_rows),
            i32(plan.shared_mem),
        )
        device.launch(
            plan.kernel, (1, plan.blocks, D), (plan.threads,), args, shared_mem=plan.shared_mem, cooperative=True
        )
        h_n[...] = hbuf[steps % 2, :, :, :H]
        return sync

    def _run_fused(self, device, packed: _Packed, plan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after):
        """Per step one fused product-and-gates kernel (two for reset-before); no GEMM call in the loop."""
        xp = device.xp
        D, B, H = h0.shape
        T = output.shape[0]
        dtype = output.dtype
        name = dtype.name
        Hp = padded_hidden(H, dtype.itemsize)  # rows 16-byte aligned for the kernel's asynchronous copies
        hbuf = xp.zeros((2, D, B, Hp), dtype)
        hbuf[0, :, :, :H] = h0
        states = (hbuf[0], hbuf[1])
        w_hh = packed.w_hh_padded(Hp)
        tile = _kernels.fused_tile(B)
        units, seqs = _kernels.fused_tile_shape(*tile)
        grid = (-(-H // units), -(-B // seqs), D)
        block = (_kernels.FUSED_THREADS,)
        phases = (3,) if reset_after else (2, 1)
        # three ring buffers where they fit in shared memory (copies two tiles ahead), else two
        stages = 3 if _kernels.fused_shared_memory(name, phases[0], tile, 3) <= device.smem_per_block else 2
        kernels = [
            (_kernels.fused_name(name, g, tile), _kernels.fused_shared_memory(name, g, tile, stages)) for g in phases
        ]
        i32 = np.int32
        unused = self._placeholder(device, dtype)
        gates_arg = gates if gates is not None else unused
        tail = (i32(T), i32(B), i32(H), i32(Hp), i32(D), i32(stages))
        has_gates = i32(gates is not None)
        if reset_after:
            ((kernel, smem),) = kernels
            for s in range(steps):
                hcur, hnext = states[s % 2], states[(s + 1) % 2]
                args = (gx, w_hh, packed.b_hn, lengths, hcur, hcur, hnext, unused, unused, output, gates_arg)
                device.launch(kernel, grid, block, (*args, has_gates, i32(s), *tail), shared_mem=smem)
        else:
            (kernel_rz, smem_rz), (kernel_n, smem_n) = kernels
            rh = xp.zeros((D, B, Hp), dtype)  # its pads stay zero: the second half's product reads them
            z = xp.empty((D, B, Hp), dtype)
            for s in range(steps):
                hcur, hnext = states[s % 2], states[(s + 1) % 2]
                args = (gx, w_hh, packed.b_hn, lengths, hcur, hcur, hnext, rh, z, output, gates_arg)
                device.launch(kernel_rz, grid, block, (*args, has_gates, i32(s), *tail), shared_mem=smem_rz)
                args = (gx, w_hh, packed.b_hn, lengths, rh, hcur, hnext, rh, z, output, gates_arg)
                device.launch(kernel_n, grid, block, (*args, has_gates, i32(s), *tail), shared_mem=smem_n)
        h_n[...] = states[steps % 2][:, :, :H]
        return None

    def _run_stepwise(self, device, packed: _Packed, plan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after):
        """Per step: cuBLAS for the recurrent product, one fused kernel for the gates (two each for reset-before)."""
        xp = device.xp
        D, B, H = h0.shape
        T = output.shape[0]
        dtype = output.dtype
        name = output.dtype.name
        hbuf = xp.empty((2, D, B, H), dtype)
        hbuf[0] = h0
        total = D * B * H
        grid = (max(1, min(-(-total // STEPWISE_THREADS), device.sm_count * STEPWISE_BLOCKS_PER_SM)),)
        block = (STEPWISE_THREADS,)
        i32 = np.int32
        gates_arg = gates if gates is not None else self._placeholder(device, dtype)
        has_gates = i32(gates is not None)
        tail = (i32(T), i32(B), i32(H), i32(D))
        if reset_after:
            w_hh_t = packed.w_hh_t()
            gh = xp.empty((D, B, 3 * H), dtype)
            kernel = _kernels.stepwise_name("gru_step_after", name)
            for s in range(steps):
                hcur, hnext = hbuf[s % 2], hbuf[(s + 1) % 2]
                device.matmul(hcur, w_hh_t, out=gh)
                device.launch(
                    kernel,
                    grid,
                    block,
                    (gx, gh, packed.b_hn, lengths, hcur, hnext, output, gates_arg, has_gates, i32(s), *tail),
                )
        else:
            w_rz_t, w_n_t = packed.w_rz_t(), packed.w_n_t()
            gh_rz = xp.empty((D, B, 2 * H), dtype)
            gh_n = xp.empty((D, B, H), dtype)
            rh = xp.empty((D, B, H), dtype)
            z = xp.empty((D, B, H), dtype)
            kernel_rz = _kernels.stepwise_name("gru_step_before_rz", name)
            kernel_n = _kernels.stepwise_name("gru_step_before_n", name)
            for s in range(steps):
                hcur, hnext = hbuf[s % 2], hbuf[(s + 1) % 2]
                device.matmul(hcur, w_rz_t, out=gh_rz)
                device.launch(
                    kernel_rz, grid, block, (gx, gh_rz, lengths, hcur, rh, z, gates_arg, has_gates, i32(s), *tail)
                )
                device.matmul(rh, w_n_t, out=gh_n)
                device.launch(
                    kernel_n,
                    grid,
                    block,
                    (gx, gh_n, lengths, hcur, z, hnext, output, gates_arg, has_gates, i32(s), *tail),
                )
        h_n[...] = hbuf[steps % 2]
        return None
