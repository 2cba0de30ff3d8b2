"""A deliberately plain float64 GRU, written straight from the equations.

It shares no code with any backend: it walks each sequence on its own, step
by step, over only that sequence's valid steps, with matrix-vector products
on PyTorch-keyed parameters. Slow and obvious on purpose.
"""

from __future__ import annotations

import math

import numpy as np


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return np.array([1.0 / (1.0 + math.exp(-a)) if a >= 0 else math.exp(a) / (1.0 + math.exp(a)) for a in v])


def oracle_step(x_t, h, W_ih, W_hh, b_ih, b_hh, reset_after):
    """One step for one sequence: returns (h_t, r_t, z_t, n_t), all float64 vectors."""
    H = h.shape[0]
    W_ir, W_iz, W_in = W_ih[:H], W_ih[H : 2 * H], W_ih[2 * H :]
    W_hr, W_hz, W_hn = W_hh[:H], W_hh[H : 2 * H], W_hh[2 * H :]
    b_ir, b_iz, b_in = b_ih[:H], b_ih[H : 2 * H], b_ih[2 * H :]
    b_hr, b_hz, b_hn = b_hh[:H], b_hh[H : 2 * H], b_hh[2 * H :]
    r = _sigmoid(W_ir @ x_t + b_ir + W_hr @ h + b_hr)
    z = _sigmoid(W_iz @ x_t + b_iz + W_hz @ h + b_hz)
    if reset_after:
        n = np.tanh(W_in @ x_t + b_in + r * (W_hn @ h + b_hn))
    else:
        n = np.tanh(W_in @ x_t + b_in + W_hn @ (r * h) + b_hn)
    return (1.0 - z) * n + z * h, r, z, n


def oracle_forward(
    x,
    params,
    *,
    num_layers=1,
    bidirectional=False,
    reset_after=True,
    h0=None,
    lengths=None,
    bias=True,
    dropout_masks=None,
):
    """Run a GRU on time-major ``x`` (T, B, I) with a PyTorch-keyed ``params`` dict.

    ``dropout_masks``: one (T, B, D*H) array per layer boundary, multiplied
    into the output of every layer but the last.

    Returns ``(output (T, B, D*H), h_n (L*D, B, H), gates (L*D, 3, T, B, H))``
    in float64, zeros past each sequence's length.
    """
    x = np.asarray(x, np.float64)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = np.asarray(params["weight_hh_l0"]).shape[1]
    if h0 is None:
        h0 = np.zeros((num_layers * D, B, H))
    h0 = np.asarray(h0, np.float64)
    lengths = [T] * B if lengths is None else [int(n) for n in lengths]

    output = np.zeros((T, B, D * H))
    h_n = np.zeros((num_layers * D, B, H))
    gates = np.zeros((num_layers * D, 3, T, B, H))
    for b in range(B):
        steps = lengths[b]
        layer_input = x[:steps, b, :]  # only this sequence's valid steps
        for layer in range(num_layers):
            layer_output = np.zeros((steps, D * H))
            for d in range(D):
                k = layer * D + d
                tag = f"l{layer}" + ("_reverse" if d == 1 else "")
                W_ih = np.asarray(params[f"weight_ih_{tag}"], np.float64)
                W_hh = np.asarray(params[f"weight_hh_{tag}"], np.float64)
                b_ih = np.asarray(params[f"bias_ih_{tag}"], np.float64) if bias else np.zeros(3 * H)
                b_hh = np.asarray(params[f"bias_hh_{tag}"], np.float64) if bias else np.zeros(3 * H)
                h = h0[k, b].copy()
                order = range(steps) if d == 0 else reversed(range(steps))
                for t in order:
                    h, r, z, n = oracle_step(layer_input[t], h, W_ih, W_hh, b_ih, b_hh, reset_after)
                    layer_output[t, d * H : (d + 1) * H] = h
                    gates[k, :, t, b] = r, z, n
                h_n[k, b] = h
            if dropout_masks is not None and layer < num_layers - 1:
                layer_output = layer_output * np.asarray(dropout_masks[layer], np.float64)[:steps, b]
            layer_input = layer_output
        output[:steps, b] = layer_input
    return output, h_n, gates


def oracle_backward(
    x,
    params,
    d_output,
    d_h_n,
    *,
    num_layers=1,
    bidirectional=False,
    reset_after=True,
    h0=None,
    lengths=None,
    bias=True,
    dropout_masks=None,
):
    """Gradients of loss = sum(d_output * output) + sum(d_h_n * h_n), by hand.

    Backpropagation through time written out per sequence and per step, in
    float64, from the same equations as :func:`oracle_forward`. Returns
    ``(d_x (T, B, I), d_h0 (L*D, B, H), d_params)`` with ``d_params`` keyed
    like ``params`` (bias keys only when ``bias``).
    """
    x = np.asarray(x, np.float64)
    d_output = np.asarray(d_output, np.float64)
    d_h_n = np.asarray(d_h_n, np.float64)
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    H = np.asarray(params["weight_hh_l0"]).shape[1]
    h0 = np.zeros((num_layers * D, B, H)) if h0 is None else np.asarray(h0, np.float64)
    lengths = [T] * B if lengths is None else [int(n) for n in lengths]
    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    d_params = {k: np.zeros_like(v) for k, v in P.items()}
    d_x = np.zeros_like(x)
    d_h0 = np.zeros_like(h0)

    def weights(tag):
        b_ih = P[f"bias_ih_{tag}"] if bias else np.zeros(3 * H)
        b_hh = P[f"bias_hh_{tag}"] if bias else np.zeros(3 * H)
        return P[f"weight_ih_{tag}"], P[f"weight_hh_{tag}"], b_ih, b_hh

    for b in range(B):
        steps = lengths[b]
        # forward, remembering every step of every layer and direction
        layer_inputs, records = [], {}
        layer_input = x[:steps, b, :]
        for layer in range(num_layers):
            layer_inputs.append(layer_input)
            layer_output = np.zeros((steps, D * H))
            for d in range(D):
                tag = f"l{layer}" + ("_reverse" if d == 1 else "")
                W_ih, W_hh, b_ih, b_hh = weights(tag)
                h = h0[layer * D + d, b].copy()
                order = list(range(steps)) if d == 0 else list(reversed(range(steps)))
                record = []
                for t in order:
                    h_new, r, z, n = oracle_step(layer_input[t], h, W_ih, W_hh, b_ih, b_hh, reset_after)
                    hn = W_hh[2 * H :] @ h + b_hh[2 * H :]
                    record.append((t, h, r, z, n, hn))
                    h = h_new
                    layer_output[t, d * H : (d + 1) * H] = h
                records[layer, d] = record
            if dropout_masks is not None and layer < num_layers - 1:
                layer_output = layer_output * np.asarray(dropout_masks[layer], np.float64)[:steps, b]
            layer_input = layer_output

        # backward, top layer first
        d_layer_output = d_output[:steps, b, :].copy()
        for layer in reversed(range(num_layers)):
            d_input = np.zeros_like(layer_inputs[layer])
            for d in range(D):
                k = layer * D + d
                tag = f"l{layer}" + ("_reverse" if d == 1 else "")
                W_ih, W_hh, _, _ = weights(tag)
                dh = d_h_n[k, b].copy()
                for t, h_prev, r, z, n, hn in reversed(records[layer, d]):
                    dh = dh + d_layer_output[t, d * H : (d + 1) * H]
                    d_n_pre = dh * (1 - z) * (1 - n**2)
                    d_z_pre = dh * (h_prev - n) * z * (1 - z)
                    if reset_after:
                        d_r_pre = d_n_pre * hn * r * (1 - r)
                        d_hh_pre = np.concatenate([d_r_pre, d_z_pre, d_n_pre * r])
                        dh_prev = dh * z + W_hh.T @ d_hh_pre
                        d_params[f"weight_hh_{tag}"] += np.outer(d_hh_pre, h_prev)
                    else:
                        d_rh = W_hh[2 * H :].T @ d_n_pre
                        d_r_pre = d_rh * h_prev * r * (1 - r)
                        d_hh_pre = np.concatenate([d_r_pre, d_z_pre, d_n_pre])
                        dh_prev = dh * z + d_rh * r + W_hh[: 2 * H].T @ d_hh_pre[: 2 * H]
                        d_params[f"weight_hh_{tag}"][: 2 * H] += np.outer(d_hh_pre[: 2 * H], h_prev)
                        d_params[f"weight_hh_{tag}"][2 * H :] += np.outer(d_n_pre, r * h_prev)
                    d_ih_pre = np.concatenate([d_r_pre, d_z_pre, d_n_pre])
                    d_params[f"weight_ih_{tag}"] += np.outer(d_ih_pre, layer_inputs[layer][t])
                    if bias:
                        d_params[f"bias_ih_{tag}"] += d_ih_pre
                        d_params[f"bias_hh_{tag}"] += d_hh_pre
                    d_input[t] += W_ih.T @ d_ih_pre
                    dh = dh_prev
                d_h0[k, b] = dh
            if layer > 0 and dropout_masks is not None:
                d_input = d_input * np.asarray(dropout_masks[layer - 1], np.float64)[:steps, b]
            d_layer_output = d_input
        d_x[:steps, b] = d_layer_output
    return d_x, d_h0, d_params
