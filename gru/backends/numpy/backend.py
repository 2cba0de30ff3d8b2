"""NumPy reference backend.

Written to be read next to the equations (gate order r, z, n)::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))    reset-after
    n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)    reset-before
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

The input projection of every step is one matrix product before the loop;
the loop then does the recurrent part. Sequences that have ended keep their
state; the reverse direction runs on each sequence reversed within its length.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gru.backends._base import Capabilities, LayerWeights, StackedBackend, reverse_padded


def sigmoid(v: np.ndarray) -> np.ndarray:
    """The logistic function, as 0.5 (1 + tanh(v / 2)): equal to 1 / (1 + e^-v), never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def gate_blocks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a weight matrix or bias into its r, z, n blocks of H rows."""
    return np.split(a, 3, axis=0)


class NumpyBackend(StackedBackend):
    """The reference implementation: every feature, both dtypes, training, no dependency beyond NumPy."""

    capabilities = Capabilities(priority=0, training=True)

    def run_direction(
        self,
        x: Any,
        h0: Any,
        weights: LayerWeights,
        lengths: np.ndarray | None,
        *,
        reverse: bool,
        reset_after: bool,
        output: Any,
        h_n: Any,
        gates: Any | None,
        threads: int | None = None,
        hn: Any | None = None,
    ) -> None:
        T, B, _ = x.shape
        if lengths is not None:  # padding is not part of a sequence: what it holds (NaN, inf) meets no weight
            x = np.where((np.arange(T)[:, None] < lengths)[:, :, None], x, 0)
        if reverse:
            x = reverse_padded(x, lengths)

        W_hr, W_hz, W_hn = gate_blocks(weights.w_hh)
        b_hr, b_hz, b_hn = gate_blocks(weights.b_hh)
        # W_i· x_t + b_i· for every step at once: (T, B, 3H), split into r, z, n parts.
        x_r, x_z, x_n = np.split(x @ weights.w_ih.T + weights.b_ih, 3, axis=-1)

        states = np.zeros_like(output)
        trace = np.zeros((4, *output.shape), output.dtype)  # r, z, n and W_hn h_{t-1} + b_hn
        # an empty sequence never steps: its h_n is its h0, which meets no weight either
        started = np.ones((B, 1), bool) if lengths is None else (lengths > 0)[:, None]
        h = np.where(started, h0, 0)
        for t in range(T):
            r = sigmoid(x_r[t] + h @ W_hr.T + b_hr)
            z = sigmoid(x_z[t] + h @ W_hz.T + b_hz)
            if reset_after:
                h_part = h @ W_hn.T + b_hn
                n = np.tanh(x_n[t] + r * h_part)
            else:
                h_part = 0.0
                n = np.tanh(x_n[t] + (r * h) @ W_hn.T + b_hn)
            h_new = (1.0 - z) * n + z * h

            # a sequence whose length is <= t has ended: its state stays, its output is 0
            alive = np.ones((B, 1), bool) if lengths is None else (t < lengths)[:, None]
            h = np.where(alive, h_new, h)
            states[t] = np.where(alive, h_new, 0.0)
            for g, value in enumerate((r, z, n, h_part)):
                trace[g, t] = np.where(alive, value, 0.0)

        def in_time_order(a, axis=0):
            return reverse_padded(a, lengths, axis=axis) if reverse else a

        output[...] = in_time_order(states)
        h_n[...] = np.where(started, h, h0)
        if gates is not None:
            gates[...] = in_time_order(trace[:3], axis=1)
        if hn is not None:
            hn[...] = in_time_order(trace[3])

    def backward_direction(
        self,
        x: Any,
        h0: Any,
        weights: LayerWeights,
        lengths: np.ndarray | None,
        *,
        reverse: bool,
        reset_after: bool,
        output: Any,
        gates: Any,
        hn: Any | None,
        d_output: Any,
        d_h_n: Any,
        d_x: Any,
        d_h0: Any,
        grads: LayerWeights,
        threads: int | None = None,
    ) -> None:
        T, B, _ = x.shape

        def in_step_order(a, axis=0):  # the order the forward pass took the steps in (its own inverse)
            return reverse_padded(a, lengths, axis=axis) if reverse else a

        x = in_step_order(x)
        states = in_step_order(output)
        r, z, n = in_step_order(gates, axis=1)
        h_part = in_step_order(hn) if reset_after else None
        d_states = in_step_order(d_output)
        alive = np.ones((T, B, 1), bool) if lengths is None else (np.arange(T)[:, None] < lengths)[:, :, None]
        # h_{t-1} of every step: h0, then the previous step's state (only read where alive)
        h_prev = np.concatenate([h0[None], states[:-1]], axis=0)[:T]  # [:T]: none at all when T = 0
        if lengths is not None:  # as in the forward: padding and an empty sequence's h0 meet no weight
            x, h_prev = np.where(alive, x, 0), np.where(alive, h_prev, 0)

        W_hn = gate_blocks(weights.w_hh)[2]
        W_hrz = weights.w_hh[: 2 * h0.shape[-1]]
        d_pre_x = np.zeros((T, B, 3 * h0.shape[-1]), x.dtype)  # d loss / d (W_i· x_t + b_i·)
        d_pre_h = np.zeros_like(d_pre_x)  # d loss / d (W_h· h_{t-1} + b_h·), (W_hn (r h) + b_hn) for reset-before
        d_h = d_h_n.copy()  # d loss / d h_t, carried backwards through time
        for t in reversed(range(T)):
            dh = d_h + np.where(alive[t], d_states[t], 0.0)
            # h_t = (1 - z) n + z h_{t-1}
            d_n = dh * (1.0 - z[t])
            d_z = dh * (h_prev[t] - n[t])
            d_n_pre = d_n * (1.0 - n[t] ** 2)  # through tanh
            d_z_pre = d_z * z[t] * (1.0 - z[t])  # through σ
            if reset_after:  # n = tanh(x_n + r * h_part)
                d_r = d_n_pre * h_part[t]
                d_h_part = d_n_pre * r[t]
                d_r_pre = d_r * r[t] * (1.0 - r[t])
                d_pre_h_t = np.concatenate([d_r_pre, d_z_pre, d_h_part], axis=-1)
                d_h_prev = dh * z[t] + d_pre_h_t @ weights.w_hh
            else:  # n = tanh(x_n + W_hn (r h) + b_hn)
                d_rh = d_n_pre @ W_hn
                d_r_pre = d_rh * h_prev[t] * r[t] * (1.0 - r[t])
                d_pre_h_t = np.concatenate([d_r_pre, d_z_pre, d_n_pre], axis=-1)
                d_h_prev = dh * z[t] + d_rh * r[t] + d_pre_h_t[:, : 2 * h0.shape[-1]] @ W_hrz
            d_pre_x[t] = np.where(alive[t], np.concatenate([d_r_pre, d_z_pre, d_n_pre], axis=-1), 0.0)
            d_pre_h[t] = np.where(alive[t], d_pre_h_t, 0.0)
            d_h = np.where(alive[t], d_h_prev, d_h)  # an ended sequence's state passed through unchanged

        d_h0[...] = d_h
        rows = T * B

        def flat(a):  # (T, B, n) -> (T*B, n): reshape's -1 cannot stand for n when T*B = 0
            return a.reshape(rows, a.shape[-1])

        d_x += in_step_order(d_pre_x @ weights.w_ih)
        grads.w_ih[...] = flat(d_pre_x).T @ flat(x)
        grads.b_ih[...] = flat(d_pre_x).sum(axis=0, dtype=np.float64)  # sums of many rows: in double
        # the recurrent products' inputs: h_{t-1}, and r ⊙ h_{t-1} for reset-before's candidate
        H = h0.shape[-1]
        grads.w_hh[: 2 * H] = flat(d_pre_h[..., : 2 * H]).T @ flat(h_prev)
        n_input = h_prev if reset_after else r * h_prev
        grads.w_hh[2 * H :] = flat(d_pre_h[..., 2 * H :]).T @ flat(n_input)
        grads.b_hh[...] = flat(d_pre_h).sum(axis=0, dtype=np.float64)
