"""The little a user needs around a GRU to train it: a readout, two losses, Adam.

Deliberately not a framework. Every piece is explicit about its gradients:
a loss returns ``(value, d_prediction)``, a layer's ``backward`` returns the
gradients of its parameters keyed like its ``state_dict()``, and the optimiser
takes those dictionaries and writes new parameters back with
``load_state_dict``. Going through ``load_state_dict`` (rather than editing
arrays in place) is what keeps the layers' validated, read-only parameters and
any backend's cached copies of them (packed weights keyed on the parameter
objects) consistent.

A training step, with ``y, h_n = m(x, train=True)``::

    pred = readout(h_n[-1])
    loss, d_pred = mse_loss(pred, target)
    r_grads = readout.backward(d_pred)
    d_h_n = np.zeros_like(h_n)
    d_h_n[-1] = r_grads.input
    m_grads = m.backward(np.zeros_like(y), d_h_n)
    opt.step([m_grads.params, r_grads.params])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

__all__ = [
    "Adam",
    "Linear",
    "LinearGradients",
    "clip_grad_norm",
    "cross_entropy",
    "mse_loss",
]

Seed = int | np.random.Generator | None


class _HasState(Protocol):
    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None: ...


class LinearGradients(NamedTuple):
    """What :meth:`Linear.backward` returns: d loss / d input and d loss / d parameter (keyed like ``state_dict()``)."""

    input: np.ndarray
    params: dict[str, np.ndarray]


class Linear:
    """``y = x Wᵀ + b``: the readout that turns a GRU's state into a prediction.

    ``weight`` is (out_features, in_features) and ``bias`` (out_features,), as in
    ``torch.nn.Linear``, initialised U(−1/√in, 1/√in) from ``seed`` like the
    GRU's parameters. ``x`` may have any leading dimensions.

    Calling the layer remembers its input so that :meth:`backward` can form
    the weight gradient; like :class:`gru.GRU`, it differentiates the last call.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        dtype: str | np.dtype = "float32",
        seed: Seed = None,
    ) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features, out_features: expected positive sizes, got {in_features}, {out_features}")
        self.in_features, self.out_features, self.bias = int(in_features), int(out_features), bool(bias)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        self._params = {"weight": rng.uniform(-bound, bound, (out_features, in_features)).astype(self.dtype)}
        if self.bias:
            self._params["bias"] = rng.uniform(-bound, bound, out_features).astype(self.dtype)
        self._input: np.ndarray | None = None

    @property
    def weight(self) -> np.ndarray:
        """A read-only view: change parameters with :meth:`load_state_dict`, as for the GRU."""
        view = self._params["weight"].view()
        view.flags.writeable = False
        return view

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters: ``weight`` and (with bias) ``bias``."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace every parameter (same keys and shapes); nothing changes unless all are valid."""
        shapes = {k: v.shape for k, v in self._params.items()}
        if set(state_dict.keys()) != set(shapes):
            raise ValueError(f"state_dict: expected keys {sorted(shapes)}, got {sorted(state_dict.keys())}")
        loaded = {}
        for k, shape in shapes.items():
            value = np.asarray(state_dict[k])
            if value.shape != shape:
                raise ValueError(f"state_dict[{k!r}]: expected shape {shape}, got {value.shape}")
            loaded[k] = np.array(value, dtype=self.dtype)  # a copy: the caller's array may change later
        self._params = loaded

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected {self.dtype} (the layer's dtype), got {x.dtype}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., {self.in_features}), got {x.shape}")
        self._input = x
        y = x @ self._params["weight"].T
        return y + self._params["bias"] if self.bias else y

    def backward(self, d_output: Any) -> LinearGradients:
        """Gradients through the last call, given d loss / d output (same shape as the output)."""
        if self._input is None:
            raise RuntimeError("backward: call the layer first")
        x = self._input
        d_y = np.asarray(d_output, dtype=self.dtype)
        if d_y.shape != (*x.shape[:-1], self.out_features):
            raise ValueError(f"d_output: expected shape {(*x.shape[:-1], self.out_features)}, got {d_y.shape}")
        d_rows, x_rows = d_y.reshape(-1, self.out_features), x.reshape(-1, self.in_features)
        params = {"weight": d_rows.T @ x_rows}  # summed over every leading index: they all share the weights
        if self.bias:
            params["bias"] = d_rows.sum(axis=0)
        return LinearGradients(input=d_y @ self._params["weight"], params=params)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias}, dtype={str(self.dtype)!r})"


# -- losses ----------------------------------------------------------------------------------------
def mse_loss(pred: Any, target: Any) -> tuple[float, np.ndarray]:
    """Mean squared error over every element, and its gradient with respect to ``pred``.

    Returns ``(value, d_pred)``; ``d_pred`` has ``pred``'s shape and dtype, so
    it goes straight into the layer's ``backward``.
    """
    pred = np.asarray(pred)
    target = np.asarray(target, dtype=pred.dtype)
    if target.shape != pred.shape:  # no broadcasting: (B, 1) against (B,) would silently give (B, B)
        raise ValueError(f"target: expected pred's shape {pred.shape}, got {target.shape}")
    diff = pred - target
    n = max(diff.size, 1)
    return float(np.sum(np.square(diff, dtype=np.float64)) / n), (2.0 / n) * diff


def cross_entropy(logits: Any, labels: Any) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``), and d / d logits.

    ``logits`` is (..., C), ``labels`` (...) with values in [0, C). The
    log-softmax subtracts each row's maximum first, so large logits neither
    overflow ``exp`` nor lose the small probabilities. The gradient is
    (softmax − one-hot) / N.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {logits.shape[:-1]} (logits' without the class axis), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels: expected integer class indices, got {labels.dtype}")
    classes = logits.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels: expected values in [0, {classes}), got {labels.min()}..{labels.max()}")
    rows = logits.reshape(-1, classes)
    flat = labels.reshape(-1)
    shifted = rows - rows.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    n = max(flat.size, 1)
    value = -float(np.sum(log_probs[np.arange(flat.size), flat], dtype=np.float64)) / n
    d_rows = np.exp(log_probs)
    d_rows[np.arange(flat.size), flat] -= 1.0
    return value, (d_rows / n).astype(logits.dtype, copy=False).reshape(logits.shape)


# -- optimisation ----------------------------------------------------------------------------------
def _scaled_norm(g: Any) -> float:
    """The L2 norm of ``g``, computed as peak * ||g / peak|| so that no square overflows."""
    g = np.asarray(g, np.float64)
    peak = float(np.max(np.abs(g))) if g.size else 0.0
    if peak == 0 or not math.isfinite(peak):
        return peak  # 0, inf or NaN, as the plain sum of squares would say
    return peak * math.sqrt(float(np.sum(np.square(g / peak))))


def clip_grad_norm(grads: Sequence[Mapping[str, Any]], max_norm: float) -> tuple[list[dict[str, Any]], float]:
    """Scale every gradient by one factor so that their joint L2 norm is at most ``max_norm``.

    Returns ``(clipped, norm)``: new dictionaries (the inputs are not changed)
    and the norm before clipping, worth logging. Clipping by the global norm
    keeps the update's direction, and stops the rare huge gradient of a
    recurrent net (an exploding product of Jacobians) from throwing the
    parameters far away in one step.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected a positive number, got {max_norm}")
    with np.errstate(over="ignore"):  # squares of entries beyond ~1e154 overflow: measured again below
        squares = sum(float(np.sum(np.square(g, dtype=np.float64))) for d in grads for g in d.values())
    if math.isinf(squares):  # each array's norm scaled by its largest entry, joined by hypot: no overflow
        norm = math.hypot(*(_scaled_norm(g) for d in grads for g in d.values()))
    else:
        norm = math.sqrt(squares)
    scale = min(1.0, max_norm / (norm + 1e-12))
    return [{k: g * scale if scale < 1.0 else g for k, g in d.items()} for d in grads], norm


class Adam:
    """Adam (Kingma & Ba, 2015) with bias correction, over whole layers.

    ``Adam([gru_layer, readout], lr=3e-3)`` then ``opt.step([gru_grads.params,
    readout_grads.params])`` after each backward: one gradient dictionary per
    layer, keyed like that layer's ``state_dict()``. Each step reads the
    parameters, updates

        m ← β₁ m + (1 − β₁) g,  v ← β₂ v + (1 − β₂) g²
        p ← p − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + ε)

    and writes them back with ``load_state_dict``, the one way the layers let
    their parameters change. The moments are kept in float64, so a float32
    layer's updates are not rounded twice.
    """

    def __init__(
        self,
        layers: Sequence[_HasState],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps: expected a non-negative number, got {eps}")
        self.layers = list(layers)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.steps = 0
        self._m: list[dict[str, np.ndarray]] = [{} for _ in self.layers]
        self._v: list[dict[str, np.ndarray]] = [{} for _ in self.layers]

    def step(self, grads: Sequence[Mapping[str, Any]]) -> None:
        """Apply one update; ``grads[k]`` holds the gradients of ``layers[k]``'s parameters, all of them."""
        if len(grads) != len(self.layers):
            raise ValueError(f"grads: expected one dictionary per layer ({len(self.layers)}), got {len(grads)}")
        current = [layer.state_dict() for layer in self.layers]
        for layer, g, params in zip(self.layers, grads, current, strict=True):  # check all before changing any
            if set(g.keys()) != set(params):
                raise ValueError(f"grads: expected keys {sorted(params)} for {layer!r}, got {sorted(g.keys())}")
            for name, p in params.items():
                if np.shape(g[name]) != p.shape:
                    raise ValueError(f"grads[{name!r}]: expected shape {p.shape}, got {np.shape(g[name])}")
        beta1, beta2 = self.betas
        self.steps += 1
        correction1, correction2 = 1.0 - beta1**self.steps, 1.0 - beta2**self.steps
        updated = []
        for g, params, m, v in zip(grads, current, self._m, self._v, strict=True):
            new = {}
            for name, p in params.items():
                grad = np.asarray(g[name], dtype=np.float64)
                m[name] = beta1 * m[name] + (1.0 - beta1) * grad if name in m else (1.0 - beta1) * grad
                v[name] = beta2 * v[name] + (1.0 - beta2) * grad**2 if name in v else (1.0 - beta2) * grad**2
                step = self.lr * (m[name] / correction1) / (np.sqrt(v[name] / correction2) + self.eps)
                new[name] = (p - step).astype(p.dtype)
            updated.append(new)
        for layer, new in zip(self.layers, updated, strict=True):
            layer.load_state_dict(new)
