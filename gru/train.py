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

import contextlib
import math
import numbers
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from gru._arrays import (
    aligned_copy,
    check_torch_input,
    is_torch_tensor,
    on_cache_line,
    read_only,
    to_host,
    torch_values_on_host,
)
from gru._layers import Seed, _make_rng
from gru._validation import (
    IncompatibleKeys,
    as_float_array,
    check_bool,
    check_call_memory,
    check_dtype,
    check_int,
    check_parameter_memory,
    check_probability,
    load_parameters,
)

__all__ = [
    "Adam",
    "Linear",
    "LinearGradients",
    "clip_grad_norm",
    "cross_entropy",
    "mse_loss",
]


class _HasState(Protocol):
    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> Any: ...


def _host_array(value: Any, name: str, kinds: str = "fiu", expected: str = "a real-valued array") -> np.ndarray:
    """``value`` as a NumPy array of one of the dtype ``kinds`` (real numbers by default), or a TypeError naming
    ``name`` and saying what was ``expected``.

    Torch tensors (the GRU gives them back for torch input) are read detached,
    on the host; strings, booleans, complex numbers and objects are refused
    rather than turned into numbers that were never meant.
    """
    try:
        array = to_host(torch_values_on_host(value), name)
    except (TypeError, ValueError, RuntimeError, BufferError) as exc:
        if str(exc).startswith(f"{name}:"):
            raise TypeError(str(exc)) from None
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} ({exc})") from None
    if array.dtype.kind not in kinds:
        raise TypeError(f"{name}: expected {expected}, got dtype {array.dtype}")
    return array


def _floating(value: Any, name: str) -> np.ndarray:
    """A floating-point array: a loss never picks a precision for the caller (an integer one would round to 0)."""
    array = _host_array(value, name)
    if array.dtype.kind != "f":
        raise TypeError(
            f"{name}: expected a floating-point array, got dtype {array.dtype}; convert with .astype('float64')"
        )
    return array


def _check_number(value: Any, name: str, *, low: float, strict: bool, finite: bool = True) -> float:
    """A real number (not a bool, string or array) above ``low``; finite unless ``finite`` is False."""
    expected = f"a {'finite ' if finite else ''}number {'>' if strict else '>='} {low:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {value!r:.80} ({type(value).__name__})")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range
        number = math.inf if value > 0 else -math.inf
    if not (number > low if strict else number >= low) or (finite and not math.isfinite(number)):
        raise ValueError(f"{name}: expected {expected}, got {value!r:.80}")
    return number


def _gradient_dicts(grads: Any) -> list[dict[Any, np.ndarray]]:
    """Every gradient as a NumPy array, all converted and checked before anyone uses one."""
    if isinstance(grads, (Mapping, str, bytes)) or not isinstance(grads, Sequence):
        hint = " (wrap one layer's gradients in a list: [grads.params])" if isinstance(grads, Mapping) else ""
        raise TypeError(
            f"grads: expected a list of gradient dictionaries, one per layer, got {type(grads).__name__}{hint}"
        )
    converted = []
    for i, d in enumerate(grads):
        if not isinstance(d, Mapping):
            raise TypeError(
                f"grads[{i}]: expected a dictionary of gradients keyed like state_dict(), got {type(d).__name__}"
            )
        converted.append({k: _host_array(g, f"grads[{i}][{k!r}]") for k, g in d.items()})
    return converted


class LinearGradients(NamedTuple):
    """What :meth:`Linear.backward` returns: d loss / d input and d loss / d parameter (keyed like ``state_dict()``)."""

    input: np.ndarray
    params: dict[str, np.ndarray]


class Linear:
    """``y = x Wᵀ + b``: the readout that turns a GRU's state into a prediction.

    ``weight`` is (out_features, in_features) and ``bias`` (out_features,), as in
    ``torch.nn.Linear``, initialised U(−1/√in, 1/√in) from ``seed`` like the
    GRU's parameters. ``x`` may have any leading dimensions.

    Calling the layer remembers a copy of its input (and the weight it used)
    so that :meth:`backward` can form the gradients; like :class:`gru.GRU`, it
    differentiates the last call, whatever the caller did to ``x`` since. As
    for the GRU, ``x`` and ``d_output`` must have the layer's dtype: no
    precision changes silently.
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
        self.in_features = check_int(in_features, "in_features", 1)
        self.out_features = check_int(out_features, "out_features", 1)
        self._has_bias = check_bool(bias, "bias")
        self.dtype = np.dtype(check_dtype(dtype))
        count = self.out_features * (self.in_features + self._has_bias)
        # drawn in float64, then cast: both copies exist for a moment
        check_parameter_memory(
            f"(in_features, out_features) = {(self.in_features, self.out_features)}",
            count,
            count * (8 + self.dtype.itemsize),
        )
        rng = _make_rng(seed)
        bound = 1.0 / math.sqrt(self.in_features)
        shape = (self.out_features, self.in_features)
        self._params = {"weight": aligned_copy(rng.uniform(-bound, bound, shape), self.dtype)}
        if self._has_bias:
            self._params["bias"] = aligned_copy(rng.uniform(-bound, bound, self.out_features), self.dtype)
        # per thread, as the GRU's: the last call's input (a copy) and weight
        self._tapes = threading.local()

    @property
    def weight(self) -> np.ndarray:
        """A read-only view: change parameters with :meth:`load_state_dict`, as for the GRU."""
        return read_only(self._params["weight"])

    @property
    def bias(self) -> np.ndarray | None:
        """A read-only view of the bias, or None for a layer built with ``bias=False`` (as ``torch.nn.Linear``)."""
        return read_only(self._params["bias"]) if self._has_bias else None

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters: ``weight`` and (with bias) ``bias``."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Replace the parameters (same keys and shapes); nothing changes unless all are valid. ``strict`` and
        the result as for :meth:`gru.GRU.load_state_dict`."""
        shapes = {k: v.shape for k, v in self._params.items()}
        # copies, as for the GRU: the caller's arrays may change later
        loaded, mismatched = load_parameters(state_dict, shapes, self.dtype.name, self._params, strict)
        self._params = loaded
        return mismatched

    def __call__(self, x: Any) -> np.ndarray:
        x = self._host_input(x, "x")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., {self.in_features}), got {x.shape}")
        rows = x.size // self.in_features
        check_call_memory(x, rows * self.out_features + x.size, x.itemsize, what="output and kept copy")
        weight = self._params["weight"]  # never changed in place: load_state_dict swaps in new arrays
        y = x @ weight.T
        if self._has_bias:
            y = y + self._params["bias"]
        self._tapes.tape = (x.copy(), weight)  # a copy: the caller may change x in place before backward
        return y

    def _host_input(self, value: Any, name: str) -> np.ndarray:
        """``value`` read as the GRU reads its input (the layer's dtype, no silent precision change; a tensor that
        requires grad refused), then on the host."""
        if is_torch_tensor(value):  # read on the host: a CUDA tensor needs no CuPy here
            check_torch_input(value, name)
            value = value.detach().cpu()
        array = as_float_array(value, name, self.dtype.name)
        return array if isinstance(array, np.ndarray) else array.get()  # a device array: its values, here

    def backward(self, d_output: Any) -> LinearGradients:
        """Gradients through this thread's last call, given d loss / d output (same shape as the output)."""
        tape = getattr(self._tapes, "tape", None)
        if tape is None:
            raise RuntimeError("backward: call the layer first (in this thread)")
        x, weight = tape
        d_y = self._host_input(d_output, "d_output")
        if d_y.shape != (*x.shape[:-1], self.out_features):
            raise ValueError(f"d_output: expected shape {(*x.shape[:-1], self.out_features)}, got {d_y.shape}")
        d_rows, x_rows = d_y.reshape(-1, self.out_features), x.reshape(-1, self.in_features)
        params = {"weight": d_rows.T @ x_rows}  # summed over every leading index: they all share the weights
        if self._has_bias:
            params["bias"] = d_rows.sum(axis=0)
        return LinearGradients(input=d_y @ weight, params=params)

    def __getstate__(self) -> dict[str, Any]:
        """What pickle and copy keep: the parameters, not the calls backward() would differentiate (per thread)."""
        state = self.__dict__.copy()
        state["_tapes"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "bias" in state:  # pickled before bias became the array: it was the flag
            state = {**state, "_has_bias": state["bias"]}
            del state["bias"]
        self.__dict__.update(state, _tapes=threading.local())
        self._params = {k: on_cache_line(v) for k, v in self._params.items()}  # as the GRU's (see aligned_copy)

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self._has_bias}, dtype={str(self.dtype)!r})"


# -- losses ----------------------------------------------------------------------------------------
def _mask(mask: Any, shape: tuple[int, ...], what: str, *, leading: bool = False) -> np.ndarray | None:
    """``mask`` as booleans of ``shape`` (``what``'s), or None for no mask.

    ``leading``: of any number of ``shape``'s leading axes, the mask's own
    number of axes saying how many.
    """
    if mask is None:
        return None
    expected = "booleans (True where an element counts, e.g. np.arange(T) < lengths[:, None])"
    array = _host_array(mask, "mask", kinds="b", expected=expected)
    if leading:
        if array.ndim > len(shape):
            raise ValueError(f"mask: expected at most {len(shape)} axes ({what}'s leading ones), got {array.ndim}")
        shape, what = shape[: array.ndim], f"{what}'s first {array.ndim} axes"
    if array.shape != shape:
        raise ValueError(f"mask: expected shape {shape} ({what}), got {array.shape}")
    return array


def mse_loss(pred: Any, target: Any, *, mask: Any = None) -> tuple[float, np.ndarray]:
    """Mean squared error over every element (or those ``mask`` selects), and its gradient with respect to ``pred``.

    Returns ``(value, d_pred)``; ``d_pred`` is a NumPy array of ``pred``'s
    shape and dtype, so it goes straight into the layer's ``backward``. Like
    the layers, the loss never picks a precision: ``pred`` must be
    floating-point (TypeError otherwise; an integer ``pred`` would round the
    gradient to 0); ``target`` may be any real numbers. The difference and the
    value are computed in float64, so float32 values near their range's end
    do not overflow the loss.

    ``mask``, booleans shaped like the leading axes of ``pred`` (e.g. (B, T)
    for a per-step (B, T, F) output of sequences of several lengths), keeps
    the elements that count: the mean is over those, the others get a zero
    gradient whatever they hold (padding may be NaN or inf). No element selected:
    0 and a zero gradient.
    """
    pred = _floating(pred, "pred")
    target = _host_array(target, "target")
    if target.shape != pred.shape:  # no broadcasting: (B, 1) against (B,) would silently give (B, B)
        raise ValueError(f"target: expected pred's shape {pred.shape}, got {target.shape}")
    keep = _mask(mask, pred.shape, "pred", leading=True)
    with np.errstate(invalid="ignore", over="ignore"):  # inf or NaN padding: dropped just below
        diff = pred.astype(np.float64) - target.astype(np.float64)
    if keep is None:
        n = max(diff.size, 1)
    else:
        keep = keep.reshape(keep.shape + (1,) * (pred.ndim - keep.ndim))
        diff = np.where(keep, diff, 0.0)
        n = max(int(np.count_nonzero(keep)) * (pred.size // max(keep.size, 1)), 1)
    with np.errstate(over="ignore"):  # past the dtype's range the value (or gradient) is inf, as it should be
        d_pred = ((2.0 / n) * diff).astype(pred.dtype)
        value = float(np.sum(np.square(diff)) / n)
    return value, np.asarray(d_pred)


def cross_entropy(logits: Any, labels: Any, *, mask: Any = None) -> tuple[float, np.ndarray]:
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``), and d / d logits.

    ``logits`` is (..., C), ``labels`` (...) with values in [0, C). The
    log-softmax subtracts each row's maximum first, so large logits neither
    overflow ``exp`` nor lose the small probabilities; it runs in float64, so
    float32 logits near their range's end do not overflow the loss either. The gradient is
    (softmax − one-hot) / N, a NumPy array of ``logits``' dtype; ``logits``
    must be floating-point (TypeError otherwise), as for :func:`mse_loss`.
    ``mask`` (booleans shaped like ``labels``) keeps the positions that count,
    as for :func:`mse_loss`; the labels elsewhere are not read (padding such
    as -100 is fine there).
    """
    logits = _floating(logits, "logits")
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape (..., C) with C >= 1 classes in the last axis, got {logits.shape}")
    labels = _host_array(labels, "labels")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {logits.shape[:-1]} (logits' without the class axis), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels: expected integer class indices, got {labels.dtype}")
    keep = _mask(mask, labels.shape, "labels'")
    classes = logits.shape[-1]
    counted = labels if keep is None else labels[keep]
    if counted.size and (counted.min() < 0 or counted.max() >= classes):
        raise ValueError(f"labels: expected values in [0, {classes}), got {counted.min()}..{counted.max()}")
    rows = logits.reshape(-1, classes).astype(np.float64)  # as mse_loss: float32 logits near 3e38 do not overflow
    flat = labels.reshape(-1) if keep is None else np.where(keep, labels, 0).reshape(-1)  # padding: any class
    with np.errstate(invalid="ignore", over="ignore") if keep is not None else contextlib.nullcontext():
        shifted = rows - rows.max(axis=-1, keepdims=True)  # padding rows may hold inf: dropped below
        log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    picked = log_probs[np.arange(flat.size), flat]
    d_rows = np.exp(log_probs)
    d_rows[np.arange(flat.size), flat] -= 1.0
    if keep is not None:
        weights = keep.reshape(-1)
        picked, d_rows = np.where(weights, picked, 0), np.where(weights[:, None], d_rows, 0)
    n = max(flat.size if keep is None else int(np.count_nonzero(keep)), 1)
    value = 0.0 - float(np.sum(picked)) / n  # (a zero loss is 0.0, not -0.0)
    return value, (d_rows / n).astype(logits.dtype, copy=False).reshape(logits.shape)


# -- optimisation ----------------------------------------------------------------------------------
def _scaled_norm(g: Any) -> float:
    """The L2 norm of ``g``, computed as peak * ||g / peak|| so that no square overflows."""
    g = np.asarray(g, np.float64)
    peak = float(np.max(np.abs(g))) if g.size else 0.0
    if peak == 0 or not math.isfinite(peak):
        return peak  # 0, inf or NaN, as the plain sum of squares would say
    return peak * math.sqrt(float(np.sum(np.square(g / peak))))


def clip_grad_norm(
    grads: Sequence[Mapping[str, Any]], max_norm: float, *, error_if_nonfinite: bool = False
) -> tuple[list[dict[str, Any]], float]:
    """Scale every gradient by one factor so that their joint L2 norm is at most ``max_norm``.

    ``grads`` is a list with one dictionary per layer (``[g.params,
    r.params]``). Returns ``(clipped, norm)``: new dictionaries (the inputs
    are not changed) and the norm before clipping, worth logging. Each
    gradient comes back in the kind it came: a torch tensor as a torch tensor
    of its dtype and device (``GRU.backward`` returns those for torch input),
    anything else as a NumPy array; one that needs no scaling is the very
    object given (or its NumPy form). ``max_norm=math.inf`` only measures.
    Clipping by the global norm keeps the update's direction, and stops the
    rare huge gradient of a recurrent net (an exploding product of Jacobians)
    from throwing the parameters far away in one step.

    As ``torch.nn.utils.clip_grad_norm_``: the factor is
    ``min(1, max_norm / (norm + 1e-6))``, so an infinite norm scales the
    gradients by 0 (their infinite entries become NaN) and a NaN norm makes
    them all NaN; :class:`Adam` then refuses the step.
    ``error_if_nonfinite=True`` raises ``ValueError`` instead. Unlike torch's,
    ``max_norm=math.inf`` only measures, whatever the norm.
    """
    max_norm = _check_number(max_norm, "max_norm", low=0.0, strict=True, finite=False)
    error_if_nonfinite = check_bool(error_if_nonfinite, "error_if_nonfinite")
    arrays = _gradient_dicts(grads)
    with np.errstate(over="ignore"):  # squares of entries beyond ~1e154 overflow: measured again below
        squares = sum(float(np.sum(np.square(g, dtype=np.float64))) for d in arrays for g in d.values())
    if math.isinf(squares):  # each array's norm scaled by its largest entry, joined by hypot: no overflow
        norm = math.hypot(*(_scaled_norm(g) for d in arrays for g in d.values()))
    else:
        norm = math.sqrt(squares)
    if error_if_nonfinite and not math.isfinite(norm):
        raise ValueError(
            f"grads: expected gradients of finite norm, got a norm of {norm}; nothing can be clipped "
            "(skip the batch, or pass error_if_nonfinite=False to scale them anyway)"
        )
    if math.isinf(max_norm):  # only measures
        scale = 1.0
    else:  # (min() would drop a NaN: it must reach the gradients, as in torch)
        scale = math.nan if math.isnan(norm) else min(1.0, max_norm / (norm + 1e-6))
    clipped = []
    for given, converted in zip(grads, arrays, strict=True):
        out = {}
        for k, g in given.items():
            if scale == 1.0:
                out[k] = g if is_torch_tensor(g) else converted[k]
            elif is_torch_tensor(g):  # torch's own arithmetic keeps its dtype and device
                out[k] = g.detach() * scale
            else:
                with np.errstate(invalid="ignore"):  # inf * 0: NaN, on purpose (see above)
                    out[k] = converted[k] * scale
        clipped.append(out)
    return clipped, norm


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
    layer's updates are not rounded twice. Gradients may be NumPy arrays or
    torch tensors; a NaN or infinite one is refused (it would make the
    parameters and moments NaN for good), and so is a finite one whose square
    is not (the parameter would freeze), or a step that would take a finite
    parameter past its dtype's range (``lr`` too large). A
    step that raises changes nothing (parameters, moments, ``steps``), so a
    training loop may catch the error and go on with the next batch.
    """

    def __init__(
        self,
        layers: Sequence[_HasState],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if isinstance(layers, (Mapping, str, bytes)) or not isinstance(layers, Sequence):
            raise TypeError(f"layers: expected a list of layers, got {type(layers).__name__}")
        if not layers:
            raise ValueError("layers: expected at least one layer, got an empty list")
        seen: dict[int, int] = {}
        for i, layer in enumerate(layers):
            if not (callable(getattr(layer, "state_dict", None)) and callable(getattr(layer, "load_state_dict", None))):
                raise TypeError(
                    f"layers[{i}]: expected a layer with state_dict() and load_state_dict(), got {type(layer).__name__}"
                )
            if id(layer) in seen:  # it would be stepped twice, the second write undoing the first
                raise ValueError(f"layers[{i}]: expected distinct layers, got layers[{seen[id(layer)]}] again")
            seen[id(layer)] = i
        self.lr = _check_number(lr, "lr", low=0.0, strict=True)
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence):
            raise TypeError(f"betas: expected two numbers in [0, 1), got {betas!r} ({type(betas).__name__})")
        if len(betas) != 2:
            raise ValueError(f"betas: expected two numbers in [0, 1), got {len(betas)}: {tuple(betas)}")
        self.betas = (check_probability(betas[0], "betas[0]"), check_probability(betas[1], "betas[1]"))
        self.eps = _check_number(eps, "eps", low=0.0, strict=False)
        self.layers = list(layers)
        self.steps = 0
        self._m: list[dict[str, np.ndarray]] = [{} for _ in self.layers]
        self._v: list[dict[str, np.ndarray]] = [{} for _ in self.layers]
        # steps from several threads (one optimiser over shared layers) take turns: each reads the
        # parameters and moments another one writes, and concurrent steps would lose updates
        self._lock = threading.Lock()
        self._stepping: int | None = None  # the thread inside step(), if any

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_stepping"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _stepping=None)  # (pickles from before the lock too)

    def step(self, grads: Sequence[Mapping[str, Any]]) -> None:
        """Apply one update; ``grads[k]`` holds the gradients of ``layers[k]``'s parameters, all of them.

        Every gradient is converted and checked, and every new value computed,
        before anything changes: a bad gradient for the last layer must not
        leave the first one (or the moments) a step ahead. Steps from several
        threads take turns; a step taken from inside a step (a layer whose
        ``load_state_dict`` steps this optimiser) raises ``RuntimeError``.
        """
        if self._stepping == threading.get_ident():  # it would wait for itself for ever
            raise RuntimeError("step: called from inside a step of the same optimiser (in a load_state_dict?)")
        with self._lock:
            self._stepping = threading.get_ident()
            try:
                self._step(grads)
            finally:
                self._stepping = None

    def _step(self, grads: Sequence[Mapping[str, Any]]) -> None:
        arrays = _gradient_dicts(grads)
        if len(arrays) != len(self.layers):
            raise ValueError(f"grads: expected one dictionary per layer ({len(self.layers)}), got {len(arrays)}")
        current = [layer.state_dict() for layer in self.layers]
        for i, (layer, g, params) in enumerate(zip(self.layers, arrays, current, strict=True)):
            if set(g) != set(params):
                raise ValueError(f"grads[{i}]: expected keys {sorted(params)} for {layer!r}, got {sorted(g, key=str)}")
            for name, p in params.items():
                if g[name].shape != p.shape:
                    raise ValueError(f"grads[{i}][{name!r}]: expected shape {p.shape}, got {g[name].shape}")
                bad = g[name].size - int(np.count_nonzero(np.isfinite(g[name])))
                if bad:  # it would turn the parameters and both moments into NaN for good
                    raise ValueError(
                        f"grads[{i}][{name!r}]: expected finite values, got {bad} NaN or infinite of "
                        f"{g[name].size}; nothing was changed (skip the batch, or lower lr)"
                    )
        beta1, beta2 = self.betas
        steps = self.steps + 1
        correction1, correction2 = 1.0 - beta1**steps, 1.0 - beta2**steps
        updated, moments = [], []
        for i, (g, params, m, v) in enumerate(zip(arrays, current, self._m, self._v, strict=True)):
            new, new_m, new_v = {}, {}, {}
            for name, p in params.items():
                grad = g[name].astype(np.float64)
                with np.errstate(over="ignore", invalid="ignore"):  # checked below, with the argument named
                    new_m[name] = beta1 * m[name] + (1.0 - beta1) * grad if name in m else (1.0 - beta1) * grad
                    new_v[name] = beta2 * v[name] + (1.0 - beta2) * grad**2 if name in v else (1.0 - beta2) * grad**2
                    scale = np.sqrt(new_v[name] / correction2) + self.eps
                    # with eps = 0, a gradient zero at every step so far gives 0 / 0: no gradient, no move
                    step = self.lr * np.divide(
                        new_m[name] / correction1, scale, out=np.zeros_like(scale), where=scale > 0
                    )
                    new[name] = (p - step).astype(p.dtype)
                if not np.isfinite(new_v[name]).all():  # a finite gradient too large to square: v would stay inf
                    raise ValueError(
                        f"grads[{i}][{name!r}]: expected gradients whose squares stay finite, got magnitudes up to "
                        f"{float(np.max(np.abs(grad))):.3g}; nothing was changed (skip the batch or clip the gradients)"
                    )
                if (np.isfinite(p) & ~np.isfinite(new[name])).any():  # a finite parameter pushed past its dtype
                    raise ValueError(
                        f"lr: expected a step that keeps the parameters finite, got one that takes {name!r} of "
                        f"layers[{i}] past {p.dtype}'s range (lr={self.lr:g}); nothing was changed (lower lr)"
                    )
            updated.append(new)
            moments.append((new_m, new_v))
        loaded = []
        try:
            for layer, new in zip(self.layers, updated, strict=True):
                layer.load_state_dict(new)
                loaded.append(layer)
        except BaseException:  # a layer refused its new parameters: put back those already written
            for layer, old in zip(loaded, current, strict=False):
                layer.load_state_dict(old)
            raise
        self._m = [m for m, _ in moments]
        self._v = [v for _, v in moments]
        self.steps = steps
