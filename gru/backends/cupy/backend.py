"""The CuPy GPU backend: CUDA kernels that keep W_hh on chip for the recurrence, cuBLAS for the products.

Per layer (both directions together):

1. the input projection of all T·B rows as ONE GEMM (cuBLAS through
   ``cupy.matmul``): ``gx = x @ [W_ih_fwd; W_ih_rev]^T + bias``, with b_hr,
   b_hz (and b_hn for reset-before) folded into the bias; the resident
   path's kernels add the bias themselves as they read gx (one launch fewer);
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
   * **stepwise** (large batch): per step one cuBLAS GEMM (split along K into
     partial products where one product has too few tiles for the GPU; see
     ``_gemm.py``) and one gate kernel that adds the parts (two of each for
     reset-before), all prepared once per call. See ``kernels/gru_stepwise.cu``.
   * **fused** (when forced, or named by :data:`LARGE_BATCH_PATH`): per step
     ONE kernel that computes the step's recurrent product in tiles of units x
     sequences sized to the batch and applies the gate math to the sums in
     registers (two kernels for reset-before), from a ring of cp.async tile
     buffers. Measured slower than the stepwise path wherever it was timed on
     an H100. See ``kernels/gru_fused.cu``.

Training (``train=True``, then ``backward``): the forward runs the same
paths with the gate activations kept; the backward runs each layer's steps
from the last to the first, per step one gate-gradient kernel and one cuBLAS
product (two of each for reset-before), and the weight gradients as
whole-sequence GEMMs afterwards. See ``_backward.py``.

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

import os
import threading
import weakref
from typing import Any

import numpy as np

from gru.backends._base import (
    Backend,
    BackwardResult,
    Capabilities,
    ForwardRequest,
    ForwardResult,
    LayerWeights,
    fold_biases,
    zero_gradients,
)
from gru.backends.cupy._backward import TrainingTape, layer_backward
from gru.backends.cupy._paths import BIAS_IN_KERNEL, RUNS
from gru.backends.cupy._plans import (
    LARGE_BATCH_PATH,
    PATH_ENV_VAR,
    PERSISTENT_L2_FRACTION,
    PERSISTENT_MAX_BATCH,
    PERSISTENT_MAX_BATCH_ON_CHIP,
    PERSISTENT_MIN_UNITS_PER_BLOCK,
    PERSISTENT_THREADS,
    RESIDENT_LAYOUT,
    PersistentPlan,
    ResidentPlan,
    choose_path,
    plan_persistent,
    plan_resident,
    resident_layout_from_environment,
)

#: Set to 1 to check after each call that the persistent kernel found the shared memory it expected.
DEBUG_ENV_VAR = "GRU_CUPY_DEBUG"


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
        bias = [fold_biases(b_ih, b_hh, with_b_hn=not reset_after) for _, _, b_ih, b_hh in host]
        # gx = x @ w_ih_t + gx_bias: (T·B, I) @ (I, D·3H); the resident kernels add gx_bias themselves
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

    # the backward's products carry gate gradients back to h_{t-1}: d_gates @ W_hh (untransposed)
    def w_hh(self) -> Any:
        """(D, 3H, H): W_hh of each direction."""
        return self._get("w_hh", lambda: np.stack(self._host_w_hh))

    def w_hrz(self) -> Any:
        """(D, 2H, H): the r and z rows of W_hh (reset-before's backward)."""
        H = self.H
        return self._get("w_hrz", lambda: np.ascontiguousarray(np.stack([w[: 2 * H] for w in self._host_w_hh])))

    def w_hn(self) -> Any:
        """(D, H, H): the candidate rows of W_hh (reset-before's backward, for d(r * h))."""
        H = self.H
        return self._get("w_hn", lambda: np.ascontiguousarray(np.stack([w[2 * H :] for w in self._host_w_hh])))


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)


def _is_device_array(a: Any) -> bool:
    return hasattr(a, "__cuda_array_interface__")


class CupyBackend(Backend):
    """GRUs on NVIDIA GPUs through CuPy: every forward feature and training, float32 and float64.

    ``device_factory`` exists for the test suite (a CPU emulation of the kernels);
    by default devices come from CuPy.
    """

    capabilities = Capabilities(device="cuda", priority=200, training=True, accepts_host_arrays=True)

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
        #: whether "auto" takes the register-resident kernel where it fits, and in which layout
        self.use_resident = True
        self.resident_layout = RESIDENT_LAYOUT  #: GRU_CUPY_RESIDENT_LAYOUT overrides it per call
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
        layout = resident_layout_from_environment(self.resident_layout)  # checked whichever path runs
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
        # training keeps the gate activations for the backward, and each layer's input and output
        gates = fill((L * D, 3, T, B, H), dtype) if request.return_gates or request.training else None
        inputs: list[Any] = []
        outputs: list[Any] = []
        paths: tuple[str, ...] = ()  # the path of each layer (all take the same)
        checks: list[Any] = []

        lengths_device = None
        if steps == 0 or B == 0:
            output = xp.zeros((T, B, D * H), dtype)
            h_n[...] = h0  # gates, if kept, have no elements here or came as zeros (see fill)
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
                    layout=layout,
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
            # the plan of the path that runs; the fused and stepwise paths need none
            launch_plan = {"resident": resident, "persistent": plan}.get(path)
            paths = (path,) * L
            run = RUNS[path]
            placeholder = self._placeholder(device, dtype)
            layer_input = x
            for layer in range(L):
                k = slice(layer * D, (layer + 1) * D)
                packed = self._packed_weights(device, request.weights[k], request.reset_after)
                gx = device.matmul(layer_input.reshape(T * B, layer_input.shape[-1]), packed.w_ih_t)
                if path not in BIAS_IN_KERNEL:
                    gx += packed.gx_bias  # once per layer, outside the time loop
                output = fill((T, B, D * H), dtype)
                layer_gates = gates[k] if gates is not None else None
                check = run(
                    device,
                    packed,
                    launch_plan,
                    gx=gx,
                    h0=h0[k],
                    lengths=lengths_device,
                    steps=steps,
                    output=output,
                    h_n=h_n[k],
                    gates=layer_gates,
                    reset_after=request.reset_after,
                    placeholder=placeholder,
                )
                if check is not None:
                    checks.append(check)
                if request.training:
                    inputs.append(layer_input)
                    outputs.append(output)
                if request.dropout_masks is not None and layer < L - 1:
                    mask = device.asarray(request.dropout_masks[layer])
                    if request.training:  # the backward reads the output before dropout
                        output = output * mask
                    else:
                        output *= mask
                layer_input = output
            output = layer_input
        self.last_paths = paths

        if checks and (debug or host_input):
            for sync in checks:
                needed = int(device.to_host(sync)[1])
                if needed:
                    raise RuntimeError(
                        f"gru cupy backend: the persistent kernel needed {needed} bytes of shared memory"
                    )
        saved = TrainingTape(inputs, outputs, gates, h0, lengths_device, steps, device) if request.training else None
        if not request.return_gates:
            gates = None
        if host_input:
            return ForwardResult(
                output=device.to_host(output),
                h_n=device.to_host(h_n),
                gates=None if gates is None else device.to_host(gates),
                saved=saved,
            )
        return ForwardResult(output=output, h_n=h_n, gates=gates, saved=saved)

    # -- backward ------------------------------------------------------------------------------
    def backward(self, request: ForwardRequest, result: ForwardResult, d_output: Any, d_h_n: Any) -> BackwardResult:
        device = result.saved.device  # the forward's, also for host input when another device is current now
        if self._device_factory is None:
            import cupy

            with cupy.cuda.Device(device.device_id):
                return self._backward(device, request, result.saved, d_output, d_h_n)
        return self._backward(device, request, result.saved, d_output, d_h_n)

    def _backward(
        self, device: Any, request: ForwardRequest, tape: TrainingTape, d_output: Any, d_h_n: Any
    ) -> BackwardResult:
        """The layers in reverse (see _backward.py); host inputs get host gradients, as the forward's results."""
        xp = device.xp
        host_input = not _is_device_array(request.x)
        B = request.batch_size
        D, L = request.num_directions, request.num_layers
        d_output = xp.ascontiguousarray(device.asarray(d_output))
        d_h_n = xp.ascontiguousarray(device.asarray(d_h_n))
        if tape.steps == 0 or B == 0:  # nothing ran: h_n was h0, and no weight took part
            d_x = xp.zeros(request.x.shape, request.x.dtype)
            d_h0 = d_h_n.copy()
            grads = zero_gradients(xp, request.weights)
        else:
            d_h0 = xp.empty_like(tape.h0)
            grads = [None] * (L * D)
            d_layer = d_output
            for layer in reversed(range(L)):
                k = slice(layer * D, (layer + 1) * D)
                d_x, d_h0[k], grads[k] = layer_backward(
                    device,
                    self._packed_weights(device, request.weights[k], request.reset_after),
                    x=tape.inputs[layer],
                    output=tape.outputs[layer],
                    gates=tape.gates[k],
                    h0=tape.h0[k],
                    lengths=tape.lengths,
                    host_lengths=request.lengths,
                    steps=tape.steps,
                    d_output=d_layer,
                    d_h_n=d_h_n[k],
                    reset_after=request.reset_after,
                )
                if layer > 0 and request.dropout_masks is not None:
                    d_x = d_x * device.asarray(request.dropout_masks[layer - 1])
                d_layer = d_x
        if host_input:
            to_host = device.to_host
            return BackwardResult(
                d_x=to_host(d_x),
                d_h0=to_host(d_h0),
                weights=tuple(LayerWeights(*(to_host(a) for a in (g.w_ih, g.w_hh, g.b_ih, g.b_hh))) for g in grads),
            )
        return BackwardResult(d_x=d_x, d_h0=d_h0, weights=tuple(grads))
