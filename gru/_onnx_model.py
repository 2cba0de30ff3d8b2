"""ONNX models in and out: ``GRU.from_onnx`` and ``GRU.to_onnx``.

Import reads the graph's ``GRU`` nodes, whose weights must be constants
(initializers or ``Constant`` nodes), and checks that they form one stack:
each node's input is the previous node's ``Y``, reshaped to
(seq, batch, directions * hidden) by the ``Transpose``/``Squeeze``/``Reshape``
nodes exporters put between layers. To check that reshaping, each axis is
given a name (T, D, B, H) that the nodes move around; the stack is accepted
only when the names arrive where the next ``GRU`` reads them. Nodes after the
last ``GRU`` (a classifier head, say) are not part of the layer.

Export writes one ``GRU`` node per layer with that same reshaping between
layers, time-major inside (ONNX Runtime's CPU kernel runs only ``layout=0``),
a ``Transpose`` at each end for ``batch_first``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from gru._io import parameter_keys
from gru.interop import onnx_to_torch, torch_to_onnx

_PASS_THROUGH = ("Identity", "Dropout")
_RESHAPING = ("Transpose", "Squeeze", "Reshape", *_PASS_THROUGH)


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError("reading and writing ONNX models needs the onnx package: pip install onnx") from None
    return onnx


def _tensor_value(numpy_helper: Any, tensor: Any, what: str) -> np.ndarray:
    """A tensor's values, or a ValueError naming it: a damaged or hand-made model may hold anything there."""
    if tensor.data_location == tensor.EXTERNAL:  # would read a file the model names, wherever it is
        raise ValueError(
            f"model: {what} keeps its data in an external file; pass the model's path, and onnx reads that data "
            "from beside it"
        )
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises KeyError, ValueError, TypeError... for what it cannot decode
        raise ValueError(f"model: {what} cannot be read ({type(exc).__name__}: {exc})") from None


class _Graph:
    """Constants and producers of a graph, to follow values back to where they come from."""

    def __init__(self, onnx: Any, graph: Any) -> None:
        from onnx import numpy_helper

        self.onnx = onnx
        self.constants: dict[str, np.ndarray] = {
            t.name: _tensor_value(numpy_helper, t, f"initializer {t.name!r}") for t in graph.initializer
        }
        self.inputs = {i.name for i in graph.input} - set(self.constants)
        self.producers: dict[str, Any] = {}
        for node in graph.node:
            for output in node.output:
                if output:
                    self.producers[output] = node
            if node.op_type == "Constant" and node.output:
                value = self._constant_node_value(node)
                if value is not None:
                    self.constants[node.output[0]] = value

    def _constant_node_value(self, node: Any) -> np.ndarray | None:
        from onnx import numpy_helper

        for attribute in node.attribute:
            if attribute.name == "value":
                return _tensor_value(numpy_helper, attribute.t, f"the value of {_describe(node)}")
            if attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
                return np.asarray(self.onnx.helper.get_attribute_value(attribute))
        return None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` when it is fixed: an initializer, a Constant, or Identity/Cast/Expand of one.

        For Expand only the value matters here as "all zeros or not", so the
        constant is returned un-expanded.
        """
        seen = 0
        while name not in self.constants and seen < 32:
            node = self.producers.get(name)
            if node is None or node.op_type not in ("Identity", "Cast", "Expand"):
                return None
            name, seen = node.input[0], seen + 1
        return self.constants.get(name)


def _attributes(onnx: Any, node: Any) -> dict[str, Any]:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def text(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        if isinstance(value, list):
            return [text(v) for v in value]
        return value

    return {k: text(v) for k, v in values.items()}


def _describe(node: Any) -> str:
    return f"{node.op_type} node {node.name or node.output[0]!r}"


def _read_node(graph: _Graph, node: Any) -> dict[str, Any]:
    """Check one GRU node and return its weights (PyTorch layout) and settings."""
    onnx = graph.onnx
    attrs = _attributes(onnx, node)
    where = _describe(node)
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ValueError(
            f"model: {where} has direction={direction!r}; ONNX defines 'forward', 'reverse' and 'bidirectional'"
        )
    for key in ("hidden_size", "layout", "linear_before_reset"):
        if key in attrs and (isinstance(attrs[key], bool) or not isinstance(attrs[key], int)):
            raise ValueError(f"model: {where} has {key}={attrs[key]!r}; ONNX defines it as an integer attribute")
    if attrs.get("layout", 0) not in (0, 1):
        raise ValueError(f"model: {where} has layout={attrs['layout']!r}; ONNX defines 0 (time-major) and 1")
    if attrs.get("linear_before_reset", 0) not in (0, 1):
        raise ValueError(
            f"model: {where} has linear_before_reset={attrs['linear_before_reset']!r}; expected 0 or 1 "
            "(ONNX defines those two)"
        )
    if direction == "reverse":
        raise ValueError(
            f"model: {where} has direction='reverse', which no gru.GRU layer computes; "
            "run it with gru.onnx.gru, or reverse the input and use a forward layer"
        )
    D = 2 if direction == "bidirectional" else 1
    if "clip" in attrs:
        raise ValueError(f"model: {where} sets clip={attrs['clip']}, which gru.GRU does not compute; use gru.onnx.gru")
    if "activations" in attrs:
        names = [a.lower() for a in attrs["activations"]]
        if names != ["sigmoid", "tanh"] * D:
            raise ValueError(
                f"model: {where} uses activations {attrs['activations']}; gru.GRU computes Sigmoid and Tanh only "
                "(gru.onnx.gru takes the others)"
            )
    inputs = list(node.input) + [""] * (6 - len(node.input))
    fixed = {}
    for index, label in ((1, "W"), (2, "R"), (3, "B")):
        name = inputs[index]
        if not name:
            continue
        value = graph.constant(name)
        if value is None or (graph.producers.get(name) is not None and graph.producers[name].op_type == "Expand"):
            raise ValueError(
                f"model: input {label} ({name!r}) of {where} is computed at run time; gru.GRU needs fixed weights "
                "(initializers or Constant nodes)"
            )
        if value.dtype.kind != "f":
            raise ValueError(
                f"model: input {label} ({name!r}) of {where} has dtype {value.dtype}; "
                "the GRU operator takes float16, float32 or float64"
            )
        fixed[label] = value
    if "W" not in fixed or "R" not in fixed:
        raise ValueError(f"model: {where} lacks its W or R input")
    if inputs[4] and graph.constant(inputs[4]) is not None:
        raise ValueError(
            f"model: sequence_lens of {where} is a constant; gru.GRU takes lengths when called (m(x, lengths=...))"
        )
    if inputs[5]:
        initial = graph.constant(inputs[5])
        if initial is not None and np.any(initial != 0):
            raise ValueError(
                f"model: initial_h of {where} is a non-zero constant; gru.GRU takes h0 when called (m(x, h0))"
            )
    W, R = fixed["W"], fixed["R"]
    if W.ndim != 3 or W.shape[0] != D:
        raise ValueError(f"model: W of {where} has shape {W.shape}, expected [{D}, 3*hidden_size, input_size]")
    H = R.shape[-1]
    if "hidden_size" in attrs and attrs["hidden_size"] != H:
        raise ValueError(f"model: {where} says hidden_size={attrs['hidden_size']} but R has shape {R.shape}")
    try:
        weights = onnx_to_torch(W, R, fixed.get("B"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model: weights of {where} are inconsistent: {exc}") from None
    return {
        "node": node,
        "D": D,
        "H": H,
        "input_size": W.shape[2],
        "layout": int(attrs.get("layout", 0)),
        "reset_after": int(attrs.get("linear_before_reset", 0)) != 0,
        "has_bias": "B" in fixed,
        "dtype": W.dtype,
        "weights": weights,
    }


def _path_back(graph: _Graph, name: str, stop: set[str], where: str) -> tuple[list[Any], str]:
    """The reshaping nodes between ``name`` and the first value in ``stop`` (or a graph input)."""
    path = []
    while name not in stop and name not in graph.inputs:
        node = graph.producers.get(name)
        if node is None or node.op_type not in _RESHAPING:
            what = "nothing (a constant?)" if node is None else _describe(node)
            raise ValueError(
                f"model: the input of {where} comes from {what}; gru.GRU reads a plain stack of GRU nodes "
                f"joined by {', '.join(_RESHAPING)} nodes"
            )
        path.append(node)
        name = node.input[0]
    return path[::-1], name


def _apply(graph: _Graph, path: list[Any], labels: list[str], sizes: dict[str, int]) -> list[str]:
    """Move axis names through the reshaping nodes; raise when an axis would be mixed up."""
    onnx = graph.onnx
    for node in path:
        attrs = _attributes(onnx, node)
        if node.op_type in _PASS_THROUGH:
            continue
        if node.op_type == "Transpose":
            perm = attrs.get("perm", list(range(len(labels)))[::-1])
            if sorted(perm) != list(range(len(labels))):
                raise ValueError(f"model: {_describe(node)} has perm {perm} for a {len(labels)}-D value")
            labels = [labels[p] for p in perm]
        elif node.op_type == "Squeeze":
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1]:
                axes = graph.constant(node.input[1])
            if axes is None:
                axes = [i for i, label in enumerate(labels) if sizes.get(label) == 1]
            axes = sorted(int(a) % len(labels) for a in np.atleast_1d(axes))
            for axis in axes:
                if sizes.get(labels[axis]) != 1:
                    raise ValueError(f"model: {_describe(node)} squeezes axis {labels[axis]}, which is not of size 1")
            labels = [label for i, label in enumerate(labels) if i not in axes]
        elif node.op_type == "Reshape":
            labels = _reshape(graph, node, labels, sizes, attrs)
    return labels


def _reshape(graph: _Graph, node: Any, labels: list[str], sizes: dict[str, int], attrs: dict) -> list[str]:
    """Accept a Reshape that merges the trailing (D, H) axes into one, keeping the two leading axes."""
    target = graph.constant(node.input[1]) if len(node.input) > 1 else None
    failure = ValueError(
        f"model: {_describe(node)} reshapes {labels} to {None if target is None else target.tolist()}; "
        "only merging the trailing (directions, hidden) axes is understood between GRU layers"
    )
    if target is None or target.ndim != 1 or len(target) != 3:
        raise failure
    kept = [label for label in labels if not (label == "D" and sizes["D"] == 1)]  # a size-1 axis moves nothing
    if kept[2:] not in (["D", "H"], ["H"]):
        raise failure
    leading = kept[:2]
    if int(target[2]) not in (-1, sizes["D"] * sizes["H"]):
        raise failure
    for i in range(2):
        value = int(target[i])
        if value == 0 and (attrs.get("allowzero", 0) or labels[i] != leading[i]):
            raise failure
        if value == -1 and int(target[2]) == -1:
            raise failure
        if value > 0:  # a fixed size, where T and B come with each input: which axis it takes cannot be checked
            raise failure
    return [*leading, "DH"]


def layer_from_onnx(cls: type, source: Any, *, dtype: str | None = None, backend: Any = None) -> Any:
    """Build a :class:`gru.GRU` from an ONNX model (a path, bytes or a ``ModelProto``)."""
    onnx = _import_onnx()
    if isinstance(source, (str, os.PathLike)):
        try:
            model = onnx.load(os.fspath(source))
        except OSError:
            raise
        except Exception as exc:  # protobuf decoding errors have no common base class
            raise ValueError(f"path_or_model: {os.fspath(source)!r} is not a readable ONNX model ({exc})") from None
    elif isinstance(source, (bytes, bytearray)):
        try:
            model = onnx.load_from_string(bytes(source))
        except Exception as exc:
            raise ValueError(f"path_or_model: the bytes are not an ONNX model ({exc})") from None
    elif isinstance(source, onnx.ModelProto):
        model = source
    else:
        raise TypeError(f"path_or_model: expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}")

    graph = _Graph(onnx, model.graph)
    nodes = [n for n in model.graph.node if n.op_type == "GRU" and n.domain in ("", "ai.onnx")]
    if not nodes:
        kinds = sorted(
            {n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in model.graph.node}
        )
        raise ValueError(f"model: no GRU node in the graph (its nodes: {', '.join(kinds) or 'none'})")
    layers = [_read_node(graph, node) for node in nodes]

    first = layers[0]
    D, H = first["D"], first["H"]
    for layer in layers[1:]:
        where = _describe(layer["node"])
        for key, what in (("D", "directions"), ("H", "hidden size"), ("reset_after", "linear_before_reset")):
            if layer[key] != first[key]:
                raise ValueError(
                    f"model: {where} differs from the first GRU node in {what} ({layer[key]} vs {first[key]}); "
                    "a gru.GRU stack has one setting for every layer"
                )
        if layer["input_size"] != D * H:
            raise ValueError(f"model: {where} takes {layer['input_size']} features, expected {D * H} from below")

    sizes = {"D": D, "H": H}
    # the first layer's input, back to a graph input; its axes are named x0, x1, I
    path, origin = _path_back(graph, first["node"].input[0], set(), _describe(first["node"]))
    if origin not in graph.inputs:
        raise ValueError(f"model: the input of {_describe(first['node'])} does not come from a graph input")
    labels = _apply(graph, path, ["x0", "x1", "I"], sizes)
    if sorted(labels[:2]) != ["x0", "x1"] or labels[2] != "I":
        raise ValueError(f"model: the graph input reaches {_describe(first['node'])} with its axes moved ({labels})")
    time_axis = labels[0] if first["layout"] == 0 else labels[1]
    batch_first = time_axis == "x1"

    for below, above in itertools.pairwise(layers):
        y = below["node"].output[0] if below["node"].output else ""
        where = _describe(above["node"])
        if not y:
            raise ValueError(f"model: {where} cannot read the output Y of {_describe(below['node'])}, which is unused")
        path, origin = _path_back(graph, above["node"].input[0], {y}, where)
        if origin != y:
            raise ValueError(f"model: the input of {where} does not come from {_describe(below['node'])}")
        start = ["T", "D", "B", "H"] if below["layout"] == 0 else ["B", "T", "D", "H"]
        labels = _apply(graph, path, start, sizes)
        labels = ["DH" if (label == "H" and D == 1) else label for label in labels]
        expected = ["T", "B", "DH"] if above["layout"] == 0 else ["B", "T", "DH"]
        if labels != expected:
            raise ValueError(
                f"model: {where} reads the output of {_describe(below['node'])} with axes {labels}, expected {expected}"
            )

    from gru import GRU

    if dtype is None:
        dtype = "float64" if first["dtype"] == np.float64 else "float32"
    has_bias = any(layer["has_bias"] for layer in layers)
    result = GRU(
        first["input_size"],
        H,
        num_layers=len(layers),
        bias=has_bias,
        batch_first=batch_first,
        bidirectional=D == 2,
        reset_after=first["reset_after"],
        dtype=dtype,
        backend=backend,
        seed=0,
    )
    state = {}
    for k, layer in enumerate(layers):
        for d, w in enumerate(layer["weights"]):
            for key, value in zip(parameter_keys(k, d == 1, has_bias), w, strict=True):
                if key is not None:
                    state[key] = value
    result.load_state_dict(state)
    return result


def layer_to_onnx(layer: Any, *, opset: int = 17, initial_state: bool = False, lengths: bool = False) -> Any:
    """An ONNX ``ModelProto`` computing ``layer``: inputs x (and h0, lengths), outputs output and h_n."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper, numpy_helper

    from gru import _validation as v

    opset = v.check_int(opset, "opset", 14)  # layout and today's GRU semantics since opset 14
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ValueError(f"opset: expected 14 to {newest} (the newest this onnx {onnx.__version__} knows), got {opset}")
    initial_state = v.check_bool(initial_state, "initial_state")
    lengths = v.check_bool(lengths, "lengths")
    elem = TensorProto.DOUBLE if layer.dtype == "float64" else TensorProto.FLOAT
    L, D, H = layer.num_layers, layer.num_directions, layer.hidden_size
    x_shape = ["batch", "seq", layer.input_size] if layer.batch_first else ["seq", "batch", layer.input_size]
    inputs = [helper.make_tensor_value_info("x", elem, x_shape)]
    out_shape = ["batch", "seq", D * H] if layer.batch_first else ["seq", "batch", D * H]
    outputs = [
        helper.make_tensor_value_info("output", elem, out_shape),
        helper.make_tensor_value_info("h_n", elem, [L * D, "batch", H]),
    ]
    nodes, initializers = [], []

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    current = "x"
    if layer.batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_time_major"], perm=[1, 0, 2]))
        current = "x_time_major"
    if initial_state:
        inputs.append(helper.make_tensor_value_info("h0", elem, [L * D, "batch", H]))
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["batch"]))
    merge_shape = const("merge_directions_shape", np.array([0, 0, -1], np.int64))
    weights = layer._layer_weights()
    h_parts = []
    for k in range(L):
        W, R, B = torch_to_onnx([(w.w_ih, w.w_hh, w.b_ih, w.b_hh) for w in weights[k * D : (k + 1) * D]])
        h0_name = ""
        if initial_state:
            h0_name = f"h0_l{k}"
            nodes.append(
                helper.make_node(
                    "Slice",
                    [
                        "h0",
                        const(f"h0_l{k}_start", np.array([k * D])),
                        const(f"h0_l{k}_end", np.array([(k + 1) * D])),
                        const(f"h0_l{k}_axes", np.array([0])),
                    ],
                    [h0_name],
                )
            )
        gru_inputs = [
            current,
            const(f"W_l{k}", W),
            const(f"R_l{k}", R),
            const(f"B_l{k}", B) if layer.bias else "",
            "lengths" if lengths else "",
            h0_name,
        ]
        while gru_inputs[-1] == "":
            gru_inputs.pop()
        nodes.append(
            helper.make_node(
                "GRU",
                gru_inputs,
                [f"Y_l{k}", f"Y_h_l{k}"],
                name=f"gru_l{k}",
                hidden_size=H,
                direction="bidirectional" if D == 2 else "forward",
                linear_before_reset=int(layer.reset_after),
            )
        )
        # [T, D, B, H] -> [T, B, D, H] -> [T, B, D*H], the next layer's input
        nodes.append(helper.make_node("Transpose", [f"Y_l{k}"], [f"Y_l{k}_tbdh"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Y_l{k}_tbdh", merge_shape], [f"out_l{k}"]))
        current = f"out_l{k}"
        h_parts.append(f"Y_h_l{k}")
    if layer.batch_first:
        nodes.append(helper.make_node("Transpose", [current], ["output"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [current], ["output"]))
    nodes.append(helper.make_node("Concat", h_parts, ["h_n"], axis=0))

    graph = helper.make_graph(nodes, "gru", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="gru")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    return model
