"""Weight layouts of other libraries, converted at the edge.

The layers keep ONE layout, PyTorch's: gate blocks of H rows in the order
(r, z, n), ``w_ih`` (3H, I), ``w_hh`` (3H, H), ``b_ih`` and ``b_hh`` (3H,).
The functions here translate to and from the other common layouts with
NumPy alone (no PyTorch, Keras or onnx), apart from ``layer_to_torch``, which
builds a ``torch.nn`` module and so imports torch.

* ONNX ``GRU``: gate order (z, r, h); W [D, 3H, I], R [D, 3H, H],
  B [D, 6H] = [Wb, Rb].
* Keras ``GRU``: gate order (z, r, h); ``kernel`` (I, 3H),
  ``recurrent_kernel`` (H, 3H); ``bias`` (2, 3H) = [input, recurrent] with
  ``reset_after=True``, else (3H,), the input bias alone (no recurrent bias).

Going from (r, z, ·) to (z, r, ·) swaps the first two gate blocks; the swap is
its own inverse.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gru._arrays import refuse_masked, to_host, torch_values_on_host

__all__ = [
    "TorchWeights",
    "keras_to_torch",
    "onnx_to_torch",
    "torch_to_keras",
    "torch_to_onnx",
]


class TorchWeights(NamedTuple):
    """One direction of one layer in PyTorch's layout (gate order r, z, n)."""

    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray


def swap_rz(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Swap the first two of three gate blocks along ``axis`` (r, z, n <-> z, r, n); a new array."""
    first, second, third = np.split(a, 3, axis=axis)
    return np.ascontiguousarray(np.concatenate([second, first, third], axis=axis))


def _host(value: Any, name: str, ndim: int | None) -> np.ndarray:
    refuse_masked(value, name)
    try:
        array = to_host(torch_values_on_host(value), name)  # values: a parameter that requires grad is welcome
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a real array, got {type(value).__name__} ({exc})") from None
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {array.dtype}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {array.shape}")
    return array


# -- ONNX ---------------------------------------------------------------------------------------


def onnx_to_torch(W: Any, R: Any, B: Any = None) -> list[TorchWeights]:
    """ONNX ``GRU`` weights (z, r, h) as one :class:`TorchWeights` per direction.

    ``B=None`` gives zero biases, as ONNX says.
    """
    W = _host(W, "W", 3)
    R = _host(R, "R", 3)
    D, three_h, _ = W.shape
    if three_h % 3:
        raise ValueError(f"W: expected shape [num_directions, 3*hidden_size, input_size], got {W.shape}")
    H = three_h // 3
    if R.shape != (D, 3 * H, H):
        raise ValueError(f"R: expected shape {(D, 3 * H, H)} to match W {W.shape}, got {R.shape}")
    if B is None:
        B = np.zeros((D, 6 * H), W.dtype)
    B = _host(B, "B", 2)
    if B.shape != (D, 6 * H):
        raise ValueError(f"B: expected shape {(D, 6 * H)} to match W {W.shape}, got {B.shape}")
    return [
        TorchWeights(swap_rz(W[d]), swap_rz(R[d]), swap_rz(B[d, : 3 * H]), swap_rz(B[d, 3 * H :])) for d in range(D)
    ]


def torch_to_onnx(directions: list[TorchWeights] | list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's directions in PyTorch's layout as ONNX ``(W, R, B)``."""
    arrays = [[_host(a, f"directions[{i}][{j}]", None) for j, a in enumerate(d)] for i, d in enumerate(directions)]
    W = np.stack([swap_rz(d[0]) for d in arrays])
    R = np.stack([swap_rz(d[1]) for d in arrays])
    B = np.stack([np.concatenate([swap_rz(d[2]), swap_rz(d[3])]) for d in arrays])
    return W, R, B


# -- Keras --------------------------------------------------------------------------------------


def keras_to_torch(kernel: Any, recurrent_kernel: Any, bias: Any = None, *, reset_after: bool = True) -> TorchWeights:
    """A Keras ``GRU``'s weights (z, r, h) in PyTorch's layout (r, z, n).

    With ``reset_after=False`` Keras has one bias, added to the input
    projection; the recurrent bias is then zero. ``bias=None`` (``use_bias=False``)
    gives zero biases.
    """
    kernel = _host(kernel, "kernel", 2)
    recurrent_kernel = _host(recurrent_kernel, "recurrent_kernel", 2)
    # units from recurrent_kernel, the one array whose shape fixes it; kernel's first axis is free
    H = recurrent_kernel.shape[0]
    if recurrent_kernel.shape[1] != 3 * H:
        hint = ", which looks transposed" if recurrent_kernel.shape[0] == 3 * recurrent_kernel.shape[1] else ""
        raise ValueError(f"recurrent_kernel: expected shape (units, 3*units), got {recurrent_kernel.shape}{hint}")
    if kernel.shape[1] != 3 * H:
        hint = ", which looks transposed" if kernel.shape[0] == 3 * H else ""
        raise ValueError(
            f"kernel: expected shape (input_size, 3*units) = (input_size, {3 * H}), units={H} from "
            f"recurrent_kernel {recurrent_kernel.shape}; got {kernel.shape}{hint}"
        )
    zeros = np.zeros(3 * H, kernel.dtype)
    if bias is None:
        b_ih, b_hh = zeros, zeros
    elif reset_after:
        bias = _host(bias, "bias", None)
        if bias.shape != (2, 3 * H):
            hint = (
                "; a (3*units,) bias is Keras's reset_after=False layout: pass reset_after=False"
                if bias.shape == (3 * H,)
                else ""
            )
            raise ValueError(
                f"bias: expected shape {(2, 3 * H)} (input and recurrent bias) with reset_after=True, "
                f"got {bias.shape}{hint}"
            )
        b_ih, b_hh = bias[0], bias[1]
    else:
        bias = _host(bias, "bias", None)
        if bias.shape != (3 * H,):
            hint = (
                "; a (2, 3*units) bias is Keras's reset_after=True layout: pass reset_after=True"
                if bias.shape == (2, 3 * H)
                else ""
            )
            raise ValueError(f"bias: expected shape {(3 * H,)} with reset_after=False, got {bias.shape}{hint}")
        b_ih, b_hh = bias, zeros
    return TorchWeights(swap_rz(kernel.T, 0), swap_rz(recurrent_kernel.T, 0), swap_rz(b_ih), swap_rz(b_hh))


def torch_to_keras(weights: TorchWeights | tuple, *, reset_after: bool = True, bias: bool = True) -> list[np.ndarray]:
    """One direction in PyTorch's layout as Keras ``[kernel, recurrent_kernel, bias]``.

    With ``reset_after=False`` the two biases fold into Keras's single one
    (b_ih + b_hh: in the reset-before candidate both are added outside the
    reset gate, so the function is the same). ``bias=False`` leaves the bias out.
    """
    if not isinstance(weights, (tuple, list)) or len(weights) != 4:
        got = f"{len(weights)} items" if isinstance(weights, (tuple, list)) else type(weights).__name__
        raise TypeError(f"weights: expected (w_ih, w_hh, b_ih, b_hh) in PyTorch's layout, got {got}")
    w_ih, w_hh = _host(weights[0], "weights.w_ih", 2), _host(weights[1], "weights.w_hh", 2)
    b_ih, b_hh = _host(weights[2], "weights.b_ih", 1), _host(weights[3], "weights.b_hh", 1)
    H = w_hh.shape[1]
    for name, array, shape in (("w_ih", w_ih, (3 * H, w_ih.shape[1])), ("w_hh", w_hh, (3 * H, H)),
                               ("b_ih", b_ih, (3 * H,)), ("b_hh", b_hh, (3 * H,))):  # fmt: skip
        if array.shape != shape:
            raise ValueError(f"weights.{name}: expected shape {shape} (hidden size {H} from w_hh), got {array.shape}")
    out = [np.ascontiguousarray(swap_rz(w_ih).T), np.ascontiguousarray(swap_rz(w_hh).T)]
    if bias:
        out.append(np.stack([swap_rz(b_ih), swap_rz(b_hh)]) if reset_after else swap_rz(b_ih + b_hh))
    return out


# -- building layers ----------------------------------------------------------------------------


def _torch_dtype_name(tensor: Any) -> str:
    return "float64" if str(getattr(tensor, "dtype", "")) == "torch.float64" else "float32"


def layer_from_torch(cls: type, module: Any, *, dtype: str | None = None, backend: Any = None) -> Any:
    """Build a :class:`gru.GRU` / :class:`gru.GRUCell` equal to a ``torch.nn`` GRU module."""
    from gru._layers import GRU, GRUCell

    kind = type(module).__name__
    is_cell = cls is GRUCell
    wanted = "torch.nn.GRUCell" if is_cell else "torch.nn.GRU"
    if not (hasattr(module, "state_dict") and hasattr(module, "hidden_size") and hasattr(module, "input_size")):
        raise TypeError(f"module: expected a {wanted}, got {kind}")
    if is_cell != (not hasattr(module, "num_layers")) or getattr(module, "mode", "GRU") != "GRU":
        raise TypeError(f"module: expected a {wanted}, got {kind}")
    weight_ih = getattr(module, "weight_ih" if is_cell else "weight_ih_l0", None)
    if weight_ih is None or tuple(weight_ih.shape)[:1] != (3 * module.hidden_size,):
        raise TypeError(f"module: expected a {wanted} (3 gate blocks), got {kind}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"module: proj_size={module.proj_size} has no GRU equivalent")
    state = dict(module.state_dict())
    # torch.nn.utils.parametrize (weight_norm, orthogonal, ...): the state dict holds the parametrization's
    # inputs; the attribute computes the weight torch runs with, so that one is loaded
    for name in getattr(module, "parametrizations", None) or ():
        for key in [k for k in state if k.startswith(f"parametrizations.{name}.")]:
            del state[key]
        state[name] = getattr(module, name).detach()
    first = next(iter(state.values()), None)
    if getattr(getattr(first, "device", None), "type", None) == "meta":
        raise ValueError(f"module: its parameters are on PyTorch's 'meta' device, which holds no values; got {kind}")
    dtype = dtype if dtype is not None else _torch_dtype_name(first)
    if is_cell:
        layer = GRUCell(module.input_size, module.hidden_size, bias=module.bias, dtype=dtype, backend=backend, seed=0)
    else:
        layer = GRU(
            module.input_size,
            module.hidden_size,
            num_layers=module.num_layers,
            bias=module.bias,
            batch_first=module.batch_first,
            dropout=float(module.dropout) if module.num_layers > 1 else 0.0,
            bidirectional=module.bidirectional,
            dtype=dtype,
            backend=backend,
            seed=0,
        )
    expected = layer._parameter_shapes()
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        renamed = [k for k in unexpected if k.endswith(("_orig", "_g", "_v", "_u"))]
        hint = (
            "; hook-based torch.nn.utils.weight_norm / spectral_norm rename the weights: remove them first "
            "(torch.nn.utils.remove_weight_norm(module, name) or remove_spectral_norm), or use "
            "torch.nn.utils.parametrizations.weight_norm, whose computed weights load as they are"
            if renamed
            else ""
        )
        raise ValueError(
            f"module: its state_dict keys are not those of a {wanted}: missing {missing}, unexpected {unexpected}{hint}"
        )
    layer.load_state_dict(state)
    return layer


def layer_to_torch(layer: Any) -> Any:
    """A ``torch.nn.GRU`` / ``torch.nn.GRUCell`` holding ``layer``'s parameters (imports torch)."""
    import torch

    from gru._layers import GRUCell

    if not layer.reset_after:
        raise ValueError(
            "reset_after: PyTorch implements only reset-after (reset gate applied to the recurrent product); "
            "this layer is reset-before (reset_after=False), which torch.nn cannot represent"
        )
    dtype = torch.float64 if layer.dtype == "float64" else torch.float32
    if isinstance(layer, GRUCell):
        module = torch.nn.GRUCell(layer.input_size, layer.hidden_size, bias=layer.bias, dtype=dtype)
    else:
        module = torch.nn.GRU(
            layer.input_size,
            layer.hidden_size,
            num_layers=layer.num_layers,
            bias=layer.bias,
            batch_first=layer.batch_first,
            dropout=layer.dropout,
            bidirectional=layer.bidirectional,
            dtype=dtype,
        )
    module.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    return module.eval()


def _is_keras_layer(obj: Any) -> bool:
    return hasattr(obj, "get_config") and hasattr(obj, "get_weights")


def _keras_activation_name(value: Any) -> str:
    if isinstance(value, dict):  # a serialized activation object; its config a dict, or the name itself
        config = value.get("config")
        if isinstance(config, dict):
            value = config.get("name", value.get("class_name"))
        else:
            value = config or value.get("class_name")
    return str(getattr(value, "__name__", value))


def layer_from_keras(
    cls: type,
    kernel: Any,
    recurrent_kernel: Any = None,
    bias: Any = None,
    *,
    reset_after: bool | None = None,
    batch_first: bool = True,
    dtype: str | None = None,
    backend: Any = None,
) -> Any:
    """Build a one-layer :class:`gru.GRU` from a Keras GRU (the layer object or its weights)."""
    if _is_keras_layer(kernel) and recurrent_kernel is None:
        config = kernel.get_config()
        weights = kernel.get_weights()
        name = type(kernel).__name__
        if "units" not in config or "recurrent_activation" not in config:
            raise TypeError(f"kernel: expected a keras.layers.GRU (or its weights), got {name}")
        for key, expected in (("activation", "tanh"), ("recurrent_activation", "sigmoid")):
            got = _keras_activation_name(config.get(key, expected))
            if got != expected:
                raise ValueError(
                    f"{key}: gru.GRU computes the Keras default {expected!r}, the Keras layer uses {got!r}; "
                    "gru.onnx.gru takes other activations"
                )
        if config.get("go_backwards", False):
            raise ValueError(
                "go_backwards: a Keras GRU with go_backwards=True runs the sequence backwards only, "
                "which gru.GRU has no layer for; reverse the input (x[:, ::-1]) and build it without"
            )
        layer_reset_after = bool(config.get("reset_after", True))
        if reset_after is not None and reset_after != layer_reset_after:
            raise ValueError(f"reset_after: got {reset_after} but the Keras layer has reset_after={layer_reset_after}")
        reset_after = layer_reset_after
        use_bias = bool(config.get("use_bias", True))
        if len(weights) != (3 if use_bias else 2):
            raise ValueError(
                f"kernel: the Keras layer holds {len(weights)} weight arrays, expected "
                f"{3 if use_bias else 2} (is it built?)"
            )
        kernel, recurrent_kernel = weights[0], weights[1]
        bias = weights[2] if use_bias else None
    elif recurrent_kernel is None:
        raise TypeError(
            f"recurrent_kernel: expected the Keras recurrent_kernel (units, 3*units) with kernel, got None "
            f"(kernel is a {type(kernel).__name__}, not a Keras layer)"
        )
    reset_after = True if reset_after is None else reset_after
    from gru import _validation as v

    reset_after = v.check_bool(reset_after, "reset_after")
    weights = keras_to_torch(kernel, recurrent_kernel, bias, reset_after=reset_after)
    if dtype is None:
        dtype = "float64" if np.asarray(weights.w_ih).dtype == np.float64 else "float32"
    I, H = weights.w_ih.shape[1], weights.w_hh.shape[1]
    layer = cls(
        I, H, bias=bias is not None, batch_first=batch_first, reset_after=reset_after, dtype=dtype, backend=backend
    )
    state = {"weight_ih_l0": weights.w_ih, "weight_hh_l0": weights.w_hh}
    if bias is not None:
        state.update(bias_ih_l0=weights.b_ih, bias_hh_l0=weights.b_hh)
    layer.load_state_dict(state)
    return layer


def layer_keras_weights(layer: Any) -> list[list[np.ndarray]]:
    """``[kernel, recurrent_kernel, bias]`` for each (layer, direction), for Keras ``set_weights``."""
    out = []
    for w in layer._layer_weights():
        out.append(torch_to_keras((w.w_ih, w.w_hh, w.b_ih, w.b_hh), reset_after=layer.reset_after, bias=layer.bias))
    return out


# -- plain state dicts --------------------------------------------------------------------------


def config_from_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The architecture a PyTorch-keyed state dict describes: class, sizes, layers, directions, bias.

    ``batch_first`` and ``reset_after`` are not in the weights; they keep the
    layer defaults unless the caller says otherwise.
    """
    if "weight_ih" in shapes and "weight_hh" in shapes:
        w_hh = shapes["weight_hh"]
        for name, what in (("weight_ih", "(3*hidden_size, input_size)"), ("weight_hh", "(3*hidden_size, hidden_size)")):
            if len(shapes[name]) != 2:
                raise ValueError(f"{name}: expected a 2-D {what} array, got shape {shapes[name]}")
        return {
            "class": "GRUCell",
            "input_size": shapes["weight_ih"][1],
            "hidden_size": w_hh[1],
            "bias": "bias_ih" in shapes,
        }
    if "weight_ih_l0" not in shapes or "weight_hh_l0" not in shapes:
        raise ValueError(
            "state dict: expected PyTorch GRU keys (weight_ih_l0, weight_hh_l0, ... or weight_ih, weight_hh "
            f"for a cell), got {sorted(shapes)[:8]}"
        )
    num_layers = 0
    while f"weight_ih_l{num_layers}" in shapes:
        num_layers += 1
    w_ih, w_hh = shapes["weight_ih_l0"], shapes["weight_hh_l0"]
    if len(w_ih) != 2 or len(w_hh) != 2:
        raise ValueError(f"weight_ih_l0: expected 2-D weights, got shapes {w_ih} and {w_hh}")
    return {
        "class": "GRU",
        "input_size": w_ih[1],
        "hidden_size": w_hh[1],
        "num_layers": num_layers,
        "bias": "bias_ih_l0" in shapes,
        "bidirectional": "weight_ih_l0_reverse" in shapes,
    }
