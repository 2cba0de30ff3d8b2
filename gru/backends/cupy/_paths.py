"""The recurrence of one layer on each path: the per-call buffers and the kernel launches.

Every function takes the device, the layer's packed weights, the path's plan
(None where the path needs none) and the layer's buffers, and runs all steps;
``gx`` holds the input projections with the folded biases added, except on the
resident path (:data:`BIAS_IN_KERNEL`), whose kernels add them as they read it;
``placeholder`` is a one-element array for unused pointer arguments. The
persistent path returns its kernel's sync/error words, the others None.
"""

from __future__ import annotations

import numpy as np

from gru.backends.cupy import _kernels
from gru.backends.cupy._plans import PersistentPlan, ResidentPlan, padded_hidden, stepwise_splits

#: The paths whose kernels add the folded input biases to gx themselves (one launch fewer per call).
BIAS_IN_KERNEL = frozenset({"resident"})

#: Threads per block of the per-step gate kernels, and how many blocks per multiprocessor at most.
STEPWISE_THREADS = 256
STEPWISE_BLOCKS_PER_SM = 8


def step_launch_shape(device, total: int) -> tuple[tuple[int], tuple[int]]:
    """(grid, block) of a per-step kernel with one thread per (direction, sequence, unit), grid-stride."""
    return (max(1, min(-(-total // STEPWISE_THREADS), device.sm_count * STEPWISE_BLOCKS_PER_SM)),), (STEPWISE_THREADS,)


def _state_pair(xp, h0, width: int):
    """Two (D, B, width) state buffers, h_{t-1} and h_t in turn: the first holds h0, the pads beyond H zeros."""
    hbuf = xp.zeros((2, *h0.shape[:2], width), h0.dtype)
    hbuf[0, :, :, : h0.shape[2]] = h0
    return hbuf


def _gates_args(gates, placeholder) -> tuple:
    """The kernels' gate-output pointer and its has-gates flag (a placeholder when the caller wants none)."""
    return (gates if gates is not None else placeholder, np.int32(gates is not None))


def run_resident(
    device, packed, plan: ResidentPlan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after, placeholder
):
    """One launch, one block per (sequence, direction), every step of each sequence in its block."""
    D, B, H = h0.shape
    T = output.shape[0]
    i32 = np.int32
    args = (
        gx,
        packed.gx_bias,  # the kernel adds it as it reads gx
        packed.w_hh_padded(plan.padded_hidden),
        packed.b_hn,
        lengths,
        h0,  # a leading-axis slice of the contiguous (L*D, B, H) state: contiguous
        h_n,
        output,
        *_gates_args(gates, placeholder),
        i32(T),
        i32(B),
        i32(H),
        i32(plan.padded_hidden),
        i32(D),
    )
    if plan.layout == "chunked":
        args += (i32(plan.ks_log2),)
    device.launch(plan.kernel, (B, D), (plan.threads,), args, shared_mem=plan.shared_mem)
    return None


def run_persistent(
    device, packed, plan: PersistentPlan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after, placeholder
):
    """One launch for every step of the layer; returns the kernel's sync/error words."""
    xp = device.xp
    D, B, H = h0.shape
    T = output.shape[0]
    Hp = plan.padded_hidden
    hbuf = _state_pair(xp, h0, Hp)
    rhbuf = xp.zeros((D, B, Hp), output.dtype) if not reset_after else placeholder
    sync = xp.zeros(2, np.uint32)
    gates_arg, has_gates = _gates_args(gates, placeholder)
    i32 = np.int32
    args = (
        gx,
        packed.w_hh_padded(Hp),
        packed.b_hn,
        lengths,
        hbuf,
        rhbuf,
        output,
        gates_arg,
        sync,
        has_gates,
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
    device.launch(plan.kernel, (1, plan.blocks, D), (plan.threads,), args, shared_mem=plan.shared_mem, cooperative=True)
    h_n[...] = hbuf[steps % 2, :, :, :H]
    return sync


def run_fused(device, packed, plan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after, placeholder):
    """Per step one fused product-and-gates kernel (two for reset-before); no GEMM call in the loop."""
    xp = device.xp
    D, B, H = h0.shape
    T = output.shape[0]
    dtype = output.dtype
    name = dtype.name
    Hp = padded_hidden(H, dtype.itemsize)  # rows 16-byte aligned for the kernel's asynchronous copies
    hbuf = _state_pair(xp, h0, Hp)
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
    gates_arg, has_gates = _gates_args(gates, placeholder)
    tail = (i32(T), i32(B), i32(H), i32(Hp), i32(D), i32(stages))
    step = _kernels.STEP

    def args(h_in, hcur, hnext, rh_arg, z_arg) -> tuple:
        """The kernel's arguments: the product reads h_in, the gates hcur; hnext receives h_t."""
        return (
            gx,
            w_hh,
            packed.b_hn,
            lengths,
            h_in,
            hcur,
            hnext,
            rh_arg,
            z_arg,
            output,
            gates_arg,
            has_gates,
            step,
            *tail,
        )

    # each step's launches are prepared once per state parity (h_{t-1} in hbuf[0] or hbuf[1])
    if reset_after:
        ((kernel, smem),) = kernels
        launches = [
            device.prepare(kernel, grid, block, args(hcur, hcur, hnext, placeholder, placeholder), shared_mem=smem)
            for hcur, hnext in (states, states[::-1])
        ]
        for s in range(steps):
            launches[s % 2](s)
    else:
        (kernel_rz, smem_rz), (kernel_n, smem_n) = kernels
        rh = xp.zeros((D, B, Hp), dtype)  # its pads stay zero: the second half's product reads them
        z = xp.empty((D, B, Hp), dtype)
        halves = [
            (
                device.prepare(kernel_rz, grid, block, args(hcur, hcur, hnext, rh, z), shared_mem=smem_rz),
                device.prepare(kernel_n, grid, block, args(rh, hcur, hnext, placeholder, z), shared_mem=smem_n),
            )
            for hcur, hnext in (states, states[::-1])
        ]
        for s in range(steps):
            first, second = halves[s % 2]
            first(s)
            second(s)
    h_n[...] = states[steps % 2][:, :, :H]
    return None


def run_stepwise(device, packed, plan, *, gx, h0, lengths, steps, output, h_n, gates, reset_after, placeholder):
    """Per step: cuBLAS for the recurrent product (split along K at small batch), one fused kernel for the gates.

    Reset-before takes two products and two kernels per step.
    """
    xp = device.xp
    D, B, H = h0.shape
    T = output.shape[0]
    dtype = output.dtype
    name = dtype.name
    hbuf = _state_pair(xp, h0, H)
    grid, block = step_launch_shape(device, D * B * H)
    i32 = np.int32
    gates_arg, has_gates = _gates_args(gates, placeholder)
    tail = (i32(T), i32(B), i32(H), i32(D))

    def splits(gate_rows: int) -> int:
        return stepwise_splits(batch=B, hidden_size=H, gate_rows=gate_rows, sm_count=device.sm_count)

    states = (hbuf[0], hbuf[1])
    common = (gates_arg, has_gates, _kernels.STEP, *tail)  # the arguments every gate kernel ends with
    # everything a step launches is prepared once per state parity (h_{t-1} in hbuf[0] or hbuf[1]):
    # a step then costs the GPU's time, not Python's
    if reset_after:
        w_hh_t = packed.w_hh_t()
        gh = xp.empty((splits(3), D, B, 3 * H), dtype)
        kernel = _kernels.stepwise_name("gru_step_after", name)
        plans = [
            (
                device.prepare_split_matmul(hcur, w_hh_t, gh),
                device.prepare(
                    kernel, grid, block, (gx, gh, packed.b_hn, lengths, hcur, hnext, output, *common, i32(len(gh)))
                ),
            )
            for hcur, hnext in (states, states[::-1])
        ]
        for s in range(steps):
            product, gate = plans[s % 2]
            product()
            gate(s)
    else:
        w_rz_t, w_n_t = packed.w_rz_t(), packed.w_n_t()
        gh_rz = xp.empty((splits(2), D, B, 2 * H), dtype)
        gh_n = xp.empty((splits(1), D, B, H), dtype)
        rh = xp.empty((D, B, H), dtype)
        z = xp.empty((D, B, H), dtype)
        kernel_rz = _kernels.stepwise_name("gru_step_before_rz", name)
        kernel_n = _kernels.stepwise_name("gru_step_before_n", name)
        product_n = device.prepare_split_matmul(rh, w_n_t, gh_n)
        plans = [
            (
                device.prepare_split_matmul(hcur, w_rz_t, gh_rz),
                device.prepare(kernel_rz, grid, block, (gx, gh_rz, lengths, hcur, rh, z, *common, i32(len(gh_rz)))),
                device.prepare(
                    kernel_n, grid, block, (gx, gh_n, lengths, hcur, z, hnext, output, *common, i32(len(gh_n)))
                ),
            )
            for hcur, hnext in (states, states[::-1])
        ]
        for s in range(steps):
            product_rz, gate_rz, gate_n = plans[s % 2]
            product_rz()
            gate_rz(s)
            product_n()
            gate_n(s)
    h_n[...] = hbuf[steps % 2]
    return None


#: The function that runs each path.
RUNS = {"resident": run_resident, "persistent": run_persistent, "fused": run_fused, "stepwise": run_stepwise}
