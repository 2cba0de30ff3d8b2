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

import numpy as np

from gru.backends._base import Capabilities, LayerWeights, StackedBackend, reverse_padded


def sigmoid(v: np.ndarray) -> np.ndarray:
    """The logistic function, as 0.5 (1 + tanh(v / 2)): equal to 1 / (1 + e^-v), never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def gate_blocks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a weight matrix or bias into its r, z, n blocks of H rows."""
    return np.split(a, 3, axis=0)


class NumpyBackend(StackedBackend):
    """The reference implementation: every feature, both dtypes, no dependency beyond NumPy."""

    capabilities = Capabilities(priority=0)

    def run_direction(
        self, x, h0, weights: LayerWeights, lengths, *, reverse, reset_after, output, h_n, gates, threads
    ):
        T, B, _ = x.shape
        if reverse:
            x = reverse_padded(x, lengths)

        W_hr, W_hz, W_hn = gate_blocks(weights.w_hh)
        b_hr, b_hz, b_hn = gate_blocks(weights.b_hh)
        # W_i· x_t + b_i· for every step at once: (T, B, 3H), split into r, z, n parts.
        x_r, x_z, x_n = np.split(x @ weights.w_ih.T + weights.b_ih, 3, axis=-1)

        states = np.zeros_like(output)
        trace = None if gates is None else np.zeros_like(gates)
        h = h0.copy()
        for t in range(T):
            r = sigmoid(x_r[t] + h @ W_hr.T + b_hr)
            z = sigmoid(x_z[t] + h @ W_hz.T + b_hz)
            if reset_after:
                n = np.tanh(x_n[t] + r * (h @ W_hn.T + b_hn))
            else:
                n = np.tanh(x_n[t] + (r * h) @ W_hn.T + b_hn)
            h_new = (1.0 - z) * n + z * h

            # a sequence whose length is <= t has ended: its state stays, its output is 0
            alive = np.ones((B, 1), bool) if lengths is None else (t < lengths)[:, None]
            h = np.where(alive, h_new, h)
            states[t] = np.where(alive, h_new, 0.0)
            if trace is not None:
                for g, value in enumerate((r, z, n)):
                    trace[g, t] = np.where(alive, value, 0.0)

        output[...] = reverse_padded(states, lengths) if reverse else states
        h_n[...] = h
        if trace is not None:
            gates[...] = reverse_padded(trace, lengths, axis=1) if reverse else trace
