"""The ONNX ``GRU`` operator as a function: ``Y, Y_h = gru.onnx.gru(X, W, R, ...)``.

Same inputs, attributes and outputs as the operator (latest opset), so a
graph's GRU node can be run, or checked, without an ONNX runtime. The
``onnx`` package is not needed. With the operator's notation (gate order
z, r, h; f the gate activation, g the candidate's)::

    z_t = f(clip(X_t W_z^T + H_{t-1} R_z^T + Wb_z + Rb_z))
    r_t = f(clip(X_t W_r^T + H_{t-1} R_r^T + Wb_r + Rb_r))
    h_t = g(clip(X_t W_h^T + (r_t ⊙ H_{t-1}) R_h^T + Rb_h + Wb_h))      linear_before_reset = 0
    h_t = g(clip(X_t W_h^T + r_t ⊙ (H_{t-1} R_h^T + Rb_h) + Wb_h))      linear_before_reset != 0
    H_t = (1 - z_t) ⊙ h_t + z_t ⊙ H_{t-1}

where ``clip`` bounds to [-clip, clip] when ``clip`` is given.

How it runs: with the default activations (Sigmoid, Tanh) and no ``clip``
the call is the library's GRU, so it goes to the fastest backend that can
run it (``backend=`` picks one, as for the layers). Anything else (other
activations, ``clip``) runs on the NumPy reference below, without error.

Where the specification is silent, ONNX Runtime's behaviour is followed:
``sequence_lens`` gives zeros in ``Y`` past each sequence's length, ``Y_h``
is the state at its last valid step, the reverse direction starts at each
sequence's own last valid step, and a sequence of length 0 has ``Y_h = 0``
(not ``initial_h``). Activation parameters are consumed in order by the
activations that take them; defaults are those of the ONNX operators of the
same name (LeakyRelu alpha 0.01, ThresholdedRelu alpha 1, HardSigmoid
alpha 0.2 beta 0.5, Elu alpha 1) and, for Affine and ScaledTanh, which no
longer have an operator, the identity (alpha 1, beta 0) and tanh (alpha 1,
beta 1). ONNX Runtime uses 0 for a missing Affine or ScaledTanh parameter:
pass them explicitly when results must agree.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gru._arrays import as_array, refuse_masked, returner, to_host, torch_values_on_host
from gru._errors import UnsupportedRequestError
from gru._validation import array_module, integer_lengths
from gru.backends._base import ForwardRequest, LayerWeights, reverse_padded
from gru.interop import onnx_to_torch

__all__ = ["ACTIVATIONS", "gru"]

DIRECTIONS = ("forward", "reverse", "bidirectional")


def _sigmoid(x, alpha, beta):
    with np.errstate(over="ignore"):  # exp overflow gives 1 / inf = 0, the right limit
        return 1.0 / (1.0 + np.exp(-x))


def _elu(x, alpha, beta):
    return np.where(x >= 0, x, alpha * np.expm1(np.minimum(x, 0)))


#: name (lower case) -> (function(x, alpha, beta), default alpha, default beta); a None default
#: means the function takes no such parameter and consumes none.
ACTIVATIONS: dict[str, tuple[Callable[..., np.ndarray], float | None, float | None]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (_sigmoid, None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x >= a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (_elu, 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}

_Activation = Callable[[np.ndarray], np.ndarray]


def _resolve_activations(activations, alphas, betas, num_directions) -> tuple[list[_Activation], bool]:
    """Callables for (f, g) of each direction, and whether they are the defaults (Sigmoid, Tanh)."""
    count = 2 * num_directions
    if activations is None:
        names = ["sigmoid", "tanh"] * num_directions
    else:
        if isinstance(activations, (str, bytes)) or not isinstance(activations, Sequence):
            raise TypeError(f"activations: expected a list of {count} activation names, got {activations!r}")
        names = []
        for item in activations:
            name = item.decode() if isinstance(item, bytes) else item
            if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
                known = "Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, "
                raise ValueError(f"activations: expected names among {known}Softsign, Softplus; got {item!r}")
            names.append(name.lower())
        if len(names) != count:
            raise ValueError(
                f"activations: expected {count} names (f, g per direction) for {num_directions} direction(s), "
                f"got {len(names)}"
            )
    alpha_list = _float_list(alphas, "activation_alpha")
    beta_list = _float_list(betas, "activation_beta")
    functions = []
    for name in names:
        function, alpha, beta = ACTIVATIONS[name]
        if alpha is not None and alpha_list:
            alpha = alpha_list.pop(0)
        if beta is not None and beta_list:
            beta = beta_list.pop(0)
        functions.append(lambda x, _fn=function, _a=alpha, _b=beta: _fn(x, _a, _b))
    standard = names == ["sigmoid", "tanh"] * num_directions
    return functions, standard


def _float_list(values, name) -> list[float]:
    if values is None:
        return []
    if isinstance(values, numbers.Real):
        values = [values]
    if isinstance(values, (str, bytes)):  # would be read character by character
        raise TypeError(f"{name}: expected a list of floats, got {values!r}")
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a list of floats, got {values!r}") from None


def _float_input(value, name, ndim, dtype=None, *, weights=False):
    """A float array of ``ndim`` axes (of ``dtype`` if given); ``weights`` are values, copied anyway, so a torch
    parameter that requires grad is read as it is (inputs that do are refused: see gru._arrays)."""
    refuse_masked(value, name)
    if weights:
        value = torch_values_on_host(value)
    try:
        array = as_array(value, name)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a {ndim}-D float array, got {type(value).__name__} ({exc})") from None
    if array.dtype.name not in ("float16", "float32", "float64"):
        raise TypeError(f"{name}: expected float16, float32 or float64, got dtype {array.dtype}")
    if dtype is not None and array.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of X), got {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(array.shape)}")
    return array


def gru(
    X: Any,
    W: Any,
    R: Any,
    B: Any = None,
    sequence_lens: Any = None,
    initial_h: Any = None,
    *,
    hidden_size: int | None = None,
    direction: str = "forward",
    linear_before_reset: int = 0,
    layout: int = 0,
    clip: float | None = None,
    activations: Sequence[str] | None = None,
    activation_alpha: Sequence[float] | None = None,
    activation_beta: Sequence[float] | None = None,
    backend: Any = None,
) -> tuple[Any, Any]:
    """Run the ONNX ``GRU`` operator; returns ``(Y, Y_h)``.

    * X: [seq_length, batch_size, input_size] (``layout=0``) or [batch, seq, input] (``layout=1``);
    * W [D, 3H, I], R [D, 3H, H], B [D, 6H] (optional, zeros), gate order z, r, h;
    * sequence_lens: [batch] integers (optional: every sequence is full);
    * initial_h: [D, batch, H] (``layout=0``) or [batch, D, H] (``layout=1``), zeros when omitted;
    * Y: [seq, D, batch, H] (``layout=0``) or [batch, seq, D, H]; Y_h: like initial_h.

    D is 2 for ``direction="bidirectional"``, else 1. Arrays come back as the
    type of X (NumPy, CuPy, torch tensors, ...; see the README). float16
    inputs are computed in float32 and returned in float16.
    """
    give_back = returner(X)
    X = _float_input(X, "X", 3)
    dtype = X.dtype
    W = _float_input(W, "W", 3, dtype, weights=True)
    R = _float_input(R, "R", 3, dtype, weights=True)
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    D = 2 if direction == "bidirectional" else 1
    if isinstance(layout, bool) or not isinstance(layout, numbers.Integral):
        raise TypeError(f"layout: expected an int (0 or 1), got {layout!r}")
    if layout not in (0, 1):
        raise ValueError(f"layout: expected 0 or 1, got {layout!r}")
    if isinstance(linear_before_reset, bool) or not isinstance(linear_before_reset, numbers.Integral):
        raise TypeError(f"linear_before_reset: expected an int (0 or 1), got {linear_before_reset!r}")
    if linear_before_reset not in (0, 1):  # the operator defines these two; anything else is a typo, not 1
        raise ValueError(f"linear_before_reset: expected 0 or 1, got {linear_before_reset!r}")
    if clip is not None:
        if isinstance(clip, bool) or not isinstance(clip, numbers.Real):
            raise TypeError(f"clip: expected a non-negative number or None, got {clip!r}")
        if not clip >= 0:
            raise ValueError(f"clip: expected a non-negative number or None, got {clip!r}")
    T, batch, I = (X.shape[1], X.shape[0], X.shape[2]) if layout else X.shape
    H = R.shape[-1]
    if hidden_size is not None and (isinstance(hidden_size, bool) or not isinstance(hidden_size, numbers.Integral)):
        raise TypeError(f"hidden_size: expected an int or None, got {hidden_size!r} ({type(hidden_size).__name__})")
    if hidden_size is not None and hidden_size != H:
        raise ValueError(f"hidden_size: got {hidden_size} but R has hidden size {H} (shape {tuple(R.shape)})")
    if H == 0:
        raise ValueError(f"R: expected at least one hidden unit (shape [num_directions, 3*H, H]), got {R.shape}")
    if I == 0:
        raise ValueError(f"X: expected at least one input feature, got shape {tuple(X.shape)}")
    if W.shape != (D, 3 * H, I):
        raise ValueError(
            f"W: expected shape {(D, 3 * H, I)} = [num_directions, 3*hidden_size, input_size] "
            f"for direction={direction!r}, got {tuple(W.shape)}"
        )
    if R.shape != (D, 3 * H, H):
        raise ValueError(
            f"R: expected shape {(D, 3 * H, H)} = [num_directions, 3*hidden_size, hidden_size], got {tuple(R.shape)}"
        )
    if B is not None:
        B = _float_input(B, "B", 2, dtype, weights=True)
        if B.shape != (D, 6 * H):
            raise ValueError(f"B: expected shape {(D, 6 * H)} = [num_directions, 6*hidden_size], got {tuple(B.shape)}")
    lengths = _sequence_lens(sequence_lens, batch, T)
    if initial_h is not None:
        initial_h = _float_input(initial_h, "initial_h", 3, dtype)
        expected = (batch, D, H) if layout else (D, batch, H)
        if initial_h.shape != expected:
            raise ValueError(f"initial_h: expected shape {expected} for layout={layout}, got {tuple(initial_h.shape)}")
    functions, standard = _resolve_activations(activations, activation_alpha, activation_beta, D)

    xp = array_module(X)
    compute = "float32" if dtype == np.float16 else dtype.name
    x = xp.ascontiguousarray((X.transpose(1, 0, 2) if layout else X).astype(compute, copy=False))  # (T, B, I)
    if initial_h is None:
        h0 = xp.zeros((D, batch, H), compute)
    else:
        h0 = (initial_h.transpose(1, 0, 2) if layout else initial_h).astype(compute, copy=False)
        h0 = xp.ascontiguousarray(xp.asarray(h0))  # on X's device
    weights = onnx_to_torch(
        to_host(W, "W").astype(compute),
        to_host(R, "R").astype(compute),
        None if B is None else to_host(B, "B").astype(compute),
    )

    result = None
    if standard and clip is None:
        result = _run_backend(x, h0, weights, lengths, direction, bool(linear_before_reset), compute, backend)
    if result is None:
        reset_after = bool(linear_before_reset)
        host_x, host_h0 = to_host(x, "X"), to_host(h0, "initial_h")
        y, h_n = _reference(host_x, host_h0, weights, lengths, direction, reset_after, functions, clip)
        y, h_n = xp.asarray(y), xp.asarray(h_n)
    else:
        y, h_n = result
    if lengths is not None and bool((lengths == 0).any()):
        h_n[:, xp.asarray(lengths == 0)] = 0  # ONNX Runtime: an empty sequence's Y_h is 0

    Y = y.reshape(T, batch, D, H).transpose(0, 2, 1, 3)  # [T, D, B, H]
    Y_h = h_n
    if layout:
        Y, Y_h = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2)
    Y, Y_h = xp.ascontiguousarray(Y).astype(dtype, copy=False), xp.ascontiguousarray(Y_h).astype(dtype, copy=False)
    return give_back(Y), give_back(Y_h)


def _sequence_lens(sequence_lens, batch, T):
    return None if sequence_lens is None else integer_lengths(sequence_lens, "sequence_lens", batch=batch, seq_len=T)


def _run_backend(x, h0, weights, lengths, direction, reset_after, dtype, backend):
    """The default-activation case on a library backend; None when none takes it and none was named."""
    from gru._registry import select_backend

    xp = array_module(x)
    T = x.shape[0]
    full = None if lengths is None or bool((lengths == T).all()) else lengths
    reverse_only = direction == "reverse"
    if reverse_only:
        x = xp.ascontiguousarray(reverse_padded(x, full, xp=xp))
    request = ForwardRequest(
        x=x,
        h0=h0,
        weights=tuple(LayerWeights(*w) for w in weights),
        lengths=full,
        hidden_size=h0.shape[-1],
        num_layers=1,
        num_directions=h0.shape[0],
        reset_after=reset_after,
        return_gates=False,
        dtype=dtype,
    )
    try:
        chosen = select_backend(backend, request)
    except UnsupportedRequestError:
        if backend is not None:
            raise
        return None
    result = chosen.forward(request)
    y, h_n = result.output, result.h_n
    if reverse_only:
        y = reverse_padded(y, full, xp=xp)
    return y, h_n


def _reference(x, h0, weights, lengths, direction, linear_before_reset, functions, clip):
    """A direct NumPy transcription of the operator's equations, any activations and clip.

    ``x`` (T, B, I); ``weights`` in PyTorch's layout per direction. Returns
    y (T, B, D*H) and h_n (D, B, H).
    """
    T, batch, _ = x.shape
    D, H = h0.shape[0], h0.shape[-1]
    bound = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    y = np.zeros((T, batch, D * H), x.dtype)
    h_n = np.empty_like(h0)
    for d in range(D):
        reverse = direction == "reverse" or d == 1
        f, g = functions[2 * d], functions[2 * d + 1]
        w_ih, w_hh, b_ih, b_hh = weights[d]
        # PyTorch blocks (r, z, n) are the operator's (r, z, h)
        W_r, W_z, W_h = np.split(w_ih, 3)
        R_r, R_z, R_h = np.split(w_hh, 3)
        Wb_r, Wb_z, Wb_h = np.split(b_ih, 3)
        Rb_r, Rb_z, Rb_h = np.split(b_hh, 3)
        steps = reverse_padded(x, lengths) if reverse else x
        out = np.zeros((T, batch, H), x.dtype)
        h = h0[d].copy()
        for t in range(T):
            x_t = steps[t]
            z = f(bound(x_t @ W_z.T + h @ R_z.T + Wb_z + Rb_z))
            r = f(bound(x_t @ W_r.T + h @ R_r.T + Wb_r + Rb_r))
            if linear_before_reset:
                candidate = g(bound(x_t @ W_h.T + r * (h @ R_h.T + Rb_h) + Wb_h))
            else:
                candidate = g(bound(x_t @ W_h.T + (r * h) @ R_h.T + Rb_h + Wb_h))
            h_new = (1 - z) * candidate + z * h
            alive = np.ones((batch, 1), bool) if lengths is None else (t < lengths)[:, None]
            h = np.where(alive, h_new, h).astype(x.dtype, copy=False)
            out[t] = np.where(alive, h_new, 0)
        y[:, :, d * H : (d + 1) * H] = reverse_padded(out, lengths) if reverse else out
        h_n[d] = h
    return y, h_n
