"""Backpropagation through time on the GPU: the CuPy backend's training.

A training forward (``train=True``) runs the usual paths with the gate
activations kept, and records per layer its input (after the previous layer's
dropout) and its output (before dropout): :class:`TrainingTape`. The backward
then runs the layers in reverse, both directions of a layer together:

1. the state each step started from, h_{t-1}, gathered from the layer's output
   and h0, and for reset-after W_hn h_{t-1} + b_hn (the reset gate's other
   factor) as one GEMM over every step;
2. the steps from the last to the first, each one gate-gradient kernel and one
   cuBLAS product that carries the gradient to h_{t-1} (reset-before: two of
   each, since its reset gate's gradient needs W_hn^T d_n first), prepared once
   per call (``kernels/gru_backward.cu``);
3. the weight gradients and the input's as whole-sequence GEMMs over the gate
   gradients the kernels wrote, the bias gradients as sums.

Nothing in the time loop is an element-wise CuPy expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gru.backends._base import LayerWeights
from gru.backends.cupy import _kernels
from gru.backends.cupy._paths import step_launch_shape


@dataclass
class TrainingTape:
    """What a training forward keeps on the device for the backward.

    Per layer its input (T, B, I_layer), after the previous layer's dropout,
    and its output (T, B, D*H), before dropout; the gate activations of every
    layer and direction (L*D, 3, T, B, H); h0 (L*D, B, H); the lengths as the
    kernels read them (B,) int32, and the steps the longest sequence runs; the
    device all of it is on, where the backward runs whichever is current then.
    """

    inputs: list[Any]
    outputs: list[Any]
    gates: Any
    h0: Any
    lengths: Any
    steps: int
    device: Any


def previous_states(xp: Any, output: Any, h0: Any, lengths: np.ndarray | None, reverse: bool) -> Any:
    """(T, B, H): the state each step of one direction started from, h_{t-1}, from its output and h0.

    Forward, step t starts from the output at t - 1 (h0 at t = 0); in reverse
    from the output at t + 1, and from h0 at each sequence's last step. Steps
    past a length get whatever is at hand (h0 for a sequence of length 0, which
    may hold anything): the weight gradients take only the steps that ran.
    """
    T = output.shape[0]
    states = xp.empty(output.shape, output.dtype)
    if reverse:
        states[:-1] = output[1:]
        states[T - 1] = h0
        if lengths is not None:
            shorter = np.flatnonzero((lengths > 0) & (lengths < T))
            if shorter.size:
                at = xp.asarray(shorter)
                states[xp.asarray(lengths[shorter] - 1), at] = h0[at]
    else:
        states[0] = h0
        states[1:] = output[:-1]
    return states


def layer_backward(
    device: Any,
    packed: Any,
    *,
    x: Any,
    output: Any,
    gates: Any,
    h0: Any,
    lengths: Any,
    host_lengths: np.ndarray | None,
    steps: int,
    d_output: Any,
    d_h_n: Any,
    reset_after: bool,
) -> tuple[Any, Any, list[LayerWeights]]:
    """One layer, both directions: d x (T, B, I), d h0 (D, B, H) and a LayerWeights of gradients per direction.

    ``x`` (T, B, I), ``output`` and ``d_output`` (T, B, D*H), ``gates``
    (D, 3, T, B, H), ``h0`` and ``d_h_n`` (D, B, H), all C-contiguous on the
    device; ``lengths`` the kernels' (B,) int32, ``host_lengths`` the same on the
    host (None: every sequence runs T steps).
    """
    xp = device.xp
    T, B, I = x.shape
    D, _, H = h0.shape
    dtype = x.dtype
    name = dtype.name
    i32 = np.int32
    prev = xp.stack(
        [previous_states(xp, output[:, :, d * H : (d + 1) * H], h0[d], host_lengths, d == 1) for d in range(D)]
    )
    d_gx = xp.zeros((T, B, D * 3 * H), dtype)
    carry = xp.zeros((D, B, H), dtype)
    product = xp.zeros((1, D, B, H), dtype)  # (splits, D, B, H) for prepare_split_matmul, one split
    grid, block = step_launch_shape(device, D * B * H)

    def step_kernel(kernel: str, *args: Any):
        """The per-step launch of one of gru_backward.cu's kernels, its arguments packed once."""
        tail = (_kernels.STEP, i32(T), i32(B), i32(H), i32(D))
        return device.prepare(_kernels.stepwise_name(kernel, name), grid, block, (*args, *tail))

    if reset_after:
        # W_hn h_{t-1} + b_hn of every step at once: (D, T*B, H) @ (D, H, H)
        hn = device.matmul(prev.reshape(D, T * B, H), packed.w_n_t()) + packed.b_hn[:, None, :]
        d_step = xp.zeros((D, B, 3 * H), dtype)
        kernel = step_kernel(
            "gru_backward_after", d_output, d_h_n, gates, prev, hn, lengths, carry, product, d_gx, d_step
        )
        carry_back = device.prepare_split_matmul(d_step, packed.w_hh(), product)
        for s in reversed(range(steps)):
            kernel(s)
            carry_back()
    else:
        d_n_step = xp.zeros((D, B, H), dtype)
        d_rh = xp.zeros((1, D, B, H), dtype)
        d_rz_step = xp.zeros((D, B, 2 * H), dtype)
        first = step_kernel(
            "gru_backward_before_zn", d_output, d_h_n, gates, prev, lengths, carry, product, d_gx, d_n_step, d_rz_step
        )
        through_w_hn = device.prepare_split_matmul(d_n_step, packed.w_hn(), d_rh)
        second = step_kernel("gru_backward_before_r", gates, prev, lengths, d_rh, carry, d_gx, d_rz_step)
        carry_back = device.prepare_split_matmul(d_rz_step, packed.w_hrz(), product)
        for s in reversed(range(steps)):
            first(s)
            through_w_hn()
            second(s)
            carry_back()
    d_h0 = carry + product[0]
    if host_lengths is not None and not host_lengths.all():  # a sequence of length 0 hands h0 on as h_n
        empty = xp.asarray(np.flatnonzero(host_lengths == 0))
        d_h0[:, empty] = d_h_n[:, empty]

    rows = d_gx.reshape(T * B, D * 3 * H)
    x_rows = x.reshape(T * B, I)
    live = None if host_lengths is None else xp.asarray((np.arange(T)[:, None] < host_lengths[None, :]).reshape(-1, 1))

    def steps_that_ran(a: Any) -> Any:
        """``a`` (T*B, n) with the rows of steps past a length zeroed.

        Padding may hold anything, inf and NaN too (in x, and in h0 as the
        state before a step that never ran), and 0 * inf is NaN: it must not
        reach a weight gradient.
        """
        return a if live is None else xp.where(live, a, xp.zeros((), dtype))

    d_w_ih = device.matmul(rows.T, steps_that_ran(x_rows))  # (D*3H, I)
    d_b_ih = _sum_rows(rows)
    d_x = device.matmul(rows, packed.w_ih_t.T).reshape(T, B, I)
    grads = []
    for d in range(D):
        d_gates = d_gx.reshape(T, B, D, 3 * H)[:, :, d].reshape(T * B, 3 * H)
        prev_rows = steps_that_ran(prev[d].reshape(T * B, H))
        r = gates[d, 0].reshape(T * B, H)
        if reset_after:  # the recurrent side of n is r * (W_hn h + b_hn): its gradient is d_n * r
            d_gates = d_gates.copy()
            d_gates[:, 2 * H :] *= r
            d_w_hh = device.matmul(d_gates.T, prev_rows)
        else:  # the candidate's product is W_hn (r * h_{t-1})
            d_w_hh = xp.empty((3 * H, H), dtype)
            d_w_hh[: 2 * H] = device.matmul(d_gates[:, : 2 * H].T, prev_rows)
            d_w_hh[2 * H :] = device.matmul(d_gates[:, 2 * H :].T, r * prev_rows)
        block_rows = slice(d * 3 * H, (d + 1) * 3 * H)
        grads.append(
            LayerWeights(w_ih=d_w_ih[block_rows], w_hh=d_w_hh, b_ih=d_b_ih[block_rows], b_hh=_sum_rows(d_gates))
        )
    return d_x, d_h0, grads


def _sum_rows(a: Any) -> Any:
    """The sum of ``a``'s rows, accumulated in float64 (a bias gradient sums T*B terms), in ``a``'s dtype."""
    return a.sum(axis=0, dtype=np.float64).astype(a.dtype)
