"""The backend protocol: what a compute backend receives and must return.

A backend sees only canonical, validated data (see :class:`ForwardRequest`);
everything a user can get wrong is checked once, in :mod:`gru._validation`,
before a backend is called. A backend author therefore writes maths, not
argument checking.

Two ways to write a backend:

* subclass :class:`StackedBackend` and implement :meth:`StackedBackend.run_direction`
  (one layer, one direction): stacking, bidirectional concatenation and
  inter-layer dropout are done for you;
* subclass :class:`Backend` and implement :meth:`Backend.forward` for the whole
  stack when you want to fuse across layers or directions.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from gru._arrays import aligned_empty, aligned_zeros

__all__ = [
    "Backend",
    "BackwardResult",
    "Capabilities",
    "ForwardRequest",
    "ForwardResult",
    "LayerWeights",
    "StackedBackend",
    "fold_biases",
    "reverse_padded",
]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the registry consults it before dispatching.

    ``device`` is where the backend's arrays live ("cpu" for NumPy arrays,
    "cuda" for CuPy arrays); ``priority`` ranks backends for ``backend="auto"``
    (higher wins among those that can run a call). ``accepts_host_arrays``: a
    device backend that also takes NumPy inputs (copying them over and
    returning NumPy results) when it is named explicitly; ``backend="auto"``
    still only picks backends on the input's own device.
    """

    dtypes: frozenset[str] = frozenset({"float32", "float64"})
    reset_after: bool = True
    reset_before: bool = True
    lengths: bool = True
    gates: bool = True
    training: bool = False
    device: str = "cpu"
    priority: int = 0
    accepts_host_arrays: bool = False


@dataclass(frozen=True, eq=False)
class LayerWeights:
    """Parameters of one layer in one direction, in the canonical layout.

    PyTorch's layout: gate blocks of H rows in the order (r, z, n).
    ``w_ih`` is (3H, I_layer), ``w_hh`` is (3H, H), the biases are (3H,);
    a layer built with ``bias=False`` gets zero biases. Every array is
    C-contiguous, of the request's dtype, and must not be modified.
    Objects compare by identity, so a backend may cache packed weights keyed
    on them (the layer builds new ones whenever its parameters change).
    """

    w_ih: Any
    w_hh: Any
    b_ih: Any
    b_hh: Any


@dataclass(frozen=True, eq=False)
class ForwardRequest:
    """A validated forward call in canonical form.

    * ``x``: (T, B, I) time-major, C-contiguous, ``dtype``.
    * ``h0``: (num_layers * num_directions, B, H), C-contiguous.
    * ``weights``: one :class:`LayerWeights` per (layer, direction),
      index ``layer * num_directions + direction`` (direction 1 is reverse).
    * ``lengths``: ``None`` when every sequence has length T, else an int64
      NumPy array (B,) with 0 <= lengths[b] <= T.
    * ``dropout_masks``: ``None``, or one (T, B, D*H) array per layer boundary
      (``num_layers - 1`` of them), already scaled by 1 / (1 - p), to multiply
      into the output of every layer but the last.
    * ``training``: keep what :meth:`Backend.backward` needs in
      :attr:`ForwardResult.saved` (only sent to backends declaring training).

    ``x``, ``h0`` and ``lengths`` are the caller's own arrays when they came
    canonical (no copy is made): a backend reads them and never writes into
    them.
    """

    x: Any
    h0: Any
    weights: tuple[LayerWeights, ...]
    lengths: np.ndarray | None
    hidden_size: int
    num_layers: int
    num_directions: int
    reset_after: bool
    return_gates: bool
    dtype: str
    dropout_masks: tuple[Any, ...] | None = None
    threads: int | None = None
    training: bool = False

    @property
    def seq_len(self) -> int:
        return self.x.shape[0]

    @property
    def batch_size(self) -> int:
        return self.x.shape[1]


@dataclass
class ForwardResult:
    """What :meth:`Backend.forward` returns.

    * ``output``: (T, B, D*H), zeros at steps past a sequence's length;
    * ``h_n``: (num_layers * D, B, H), the state at each sequence's last valid step;
    * ``gates``: when requested, (num_layers * D, 3, T, B, H) holding r, z, n
      (zeros past a sequence's length), else ``None``.
    """

    output: Any
    h_n: Any
    gates: Any = None
    saved: Any = None  # training only: whatever the backend's backward needs, opaque to the API


@dataclass
class BackwardResult:
    """What :meth:`Backend.backward` returns, in the canonical layouts.

    * ``d_x``: (T, B, I), zeros at steps past a sequence's length;
    * ``d_h0``: (num_layers * D, B, H);
    * ``weights``: one :class:`LayerWeights` of gradients per (layer, direction),
      shaped like the weights (bias gradients too, even for ``bias=False``).
    """

    d_x: Any
    d_h0: Any
    weights: tuple[LayerWeights, ...]


class Backend(abc.ABC):
    """Base class of every backend.

    Subclasses set :attr:`capabilities`, may override :meth:`available`
    (cheap, import heavy dependencies here and not at module import) and must
    implement :meth:`forward`.
    """

    #: set by the registry to the name the backend was registered under
    name: str = ""
    capabilities: Capabilities = Capabilities()

    def available(self) -> bool | str:
        """True when the backend can run on this machine, else a reason."""
        return True

    def supports(self, request: ForwardRequest) -> bool | str:
        """True when this backend can run ``request``, else a reason."""
        caps = self.capabilities
        if request.dtype not in caps.dtypes:
            return f"dtype {request.dtype} is not one of {sorted(caps.dtypes)}"
        if request.reset_after and not caps.reset_after:
            return "reset_after=True is not supported"
        if not request.reset_after and not caps.reset_before:
            return "reset_after=False (reset-before) is not supported"
        if request.lengths is not None and not caps.lengths:
            return "variable lengths are not supported"
        if request.return_gates and not caps.gates:
            return "return_gates=True is not supported"
        if request.training and not caps.training:
            return "training (train=True, backward) is not supported"
        return True

    @abc.abstractmethod
    def forward(self, request: ForwardRequest) -> ForwardResult:
        """Run the whole stack of layers on ``request``."""

    def backward(self, request: ForwardRequest, result: ForwardResult, d_output: Any, d_h_n: Any) -> BackwardResult:
        """Gradients of a loss through a training-mode forward.

        ``request``/``result`` are that forward's; ``d_output`` (T, B, D*H) and
        ``d_h_n`` (L*D, B, H) are the loss's gradients with respect to its
        outputs (the API passes zeros where the loss does not depend on one).
        Backends that declare ``training`` implement this.
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement training")

    def __repr__(self) -> str:
        return f"<gru backend {self.name or type(self).__name__!r}>"


@dataclass
class StackedTape:
    """What :class:`StackedBackend` keeps from a training forward for its backward.

    Per layer, its input (after the previous layer's dropout) and its output
    (before dropout); per (layer, direction), the gate activations r, z, n and,
    for reset-after, hn = W_hn h_{t-1} + b_hn (the reset gate's other factor).
    """

    inputs: list[Any]
    outputs: list[Any]
    gates: Any  # (L*D, 3, T, B, H)
    hn: Any  # (L*D, T, B, H) or None


class StackedBackend(Backend):
    """A backend that only implements one layer in one direction.

    :meth:`forward` runs the layers in order, the directions of a layer on
    the same input, concatenates them and applies dropout masks between layers;
    :meth:`backward` does the same in reverse. ``xp`` is the array module the
    backend's arrays belong to.
    """

    xp: Any = np
    #: True when run_direction writes every element of ``output`` for sequences that run all T
    #: steps: a NumPy backend's calls without ``lengths`` then get ``output`` uninitialized.
    fills_full_output: bool = False

    @abc.abstractmethod
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
        threads: int | None,
        hn: Any | None = None,
    ) -> None:
        """Run one direction of one layer, writing into the given buffers.

        ``x`` is (T, B, I_layer); ``h0`` is (B, H). Write the hidden state of
        every step into ``output`` (T, B, H; a strided view, arriving filled
        with zeros: leave steps past a sequence's length at zero; without
        ``lengths`` uninitialized where ``fills_full_output``), the last
        valid state into ``h_n`` (B, H) and, when ``gates`` is not None, the
        gate activations into it (3, T, B, H, zeros). ``reverse`` runs each
        sequence from its own last valid step back to step 0; ``output``,
        ``gates`` and ``hn`` still take each step at its own time index t
        (the input's order), whatever the direction. ``threads`` is the call's
        thread request (None: the backend's default); a backend that does not
        thread ignores it. Training calls (only made to backends that declare
        training) also pass ``hn``: None, or for reset-after a (T, B, H)
        buffer for W_hn h_{t-1} + b_hn of every step.

        The registry makes one instance of a backend and every layer and
        Python thread shares it: calls may run at the same time, so keep
        per-call scratch local (or per thread), never on ``self`` unguarded.
        """

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
        threads: int | None,
    ) -> None:
        """Backpropagate through one direction of one layer (training backends).

        Takes what :meth:`run_direction` took and wrote (``output`` (T, B, H),
        ``gates`` (3, T, B, H), ``hn``) and the gradients of the loss with
        respect to ``output`` (``d_output``; entries past a sequence's length
        are ignored) and to the last state (``d_h_n``, (B, H)). Adds the input
        gradient into ``d_x`` (T, B, I_layer; the other direction adds too),
        writes ``d_h0`` (B, H) and the weight gradients into ``grads`` (arrays
        shaped like the weights, arriving zero-filled).
        """
        raise NotImplementedError(f"backend {self.name!r} does not implement training")

    def forward(self, request: ForwardRequest) -> ForwardResult:
        xp = self.xp
        zeros = aligned_zeros if xp is np else xp.zeros  # see aligned_zeros
        # each direction writes every step of its half (see fills_full_output)
        fresh = aligned_empty if xp is np and self.fills_full_output and request.lengths is None else zeros
        T, B = request.seq_len, request.batch_size
        H, D, L = request.hidden_size, request.num_directions, request.num_layers
        dtype = request.dtype
        h_n = xp.empty_like(request.h0)
        keep_gates = request.return_gates or request.training
        gates = zeros((L * D, 3, T, B, H), dtype) if keep_gates else None
        hn = zeros((L * D, T, B, H), dtype) if request.training and request.reset_after else None
        inputs, outputs = [], []
        layer_input = request.x
        for layer in range(L):
            output = fresh((T, B, D * H), dtype)
            for direction in range(D):
                k = layer * D + direction
                self.run_direction(
                    layer_input,
                    request.h0[k],
                    request.weights[k],
                    request.lengths,
                    reverse=direction == 1,
                    reset_after=request.reset_after,
                    output=output[:, :, direction * H : (direction + 1) * H],
                    h_n=h_n[k],
                    gates=None if gates is None else gates[k],
                    threads=request.threads,
                    **({"hn": None if hn is None else hn[k]} if request.training else {}),
                )
            inputs.append(layer_input)
            outputs.append(output)
            if request.dropout_masks is not None and layer < L - 1:
                output = output * request.dropout_masks[layer]
            layer_input = output
        saved = StackedTape(inputs, outputs, gates, hn) if request.training else None
        return ForwardResult(output=layer_input, h_n=h_n, gates=gates if request.return_gates else None, saved=saved)

    def backward(self, request: ForwardRequest, result: ForwardResult, d_output: Any, d_h_n: Any) -> BackwardResult:
        xp = self.xp
        tape: StackedTape = result.saved
        H, D, L = request.hidden_size, request.num_directions, request.num_layers
        d_h0 = xp.zeros_like(request.h0)
        grads = zero_gradients(xp, request.weights)
        d_layer_output = d_output
        for layer in reversed(range(L)):
            layer_input = tape.inputs[layer]
            d_input = xp.zeros_like(layer_input)
            for direction in range(D):
                k = layer * D + direction
                columns = slice(direction * H, (direction + 1) * H)
                self.backward_direction(
                    layer_input,
                    request.h0[k],
                    request.weights[k],
                    request.lengths,
                    reverse=direction == 1,
                    reset_after=request.reset_after,
                    output=tape.outputs[layer][:, :, columns],
                    gates=tape.gates[k],
                    hn=None if tape.hn is None else tape.hn[k],
                    d_output=d_layer_output[:, :, columns],
                    d_h_n=d_h_n[k],
                    d_x=d_input,
                    d_h0=d_h0[k],
                    grads=grads[k],
                    threads=request.threads,
                )
            if layer > 0 and request.dropout_masks is not None:
                d_input = d_input * request.dropout_masks[layer - 1]
            d_layer_output = d_input
        return BackwardResult(d_x=d_layer_output, d_h0=d_h0, weights=tuple(grads))


def zero_gradients(xp: Any, weights: tuple[LayerWeights, ...]) -> list[LayerWeights]:
    """A LayerWeights of zeros shaped like each weight set, in the array module ``xp`` (gradients to add into)."""
    return [LayerWeights(*(xp.zeros(a.shape, a.dtype) for a in (w.w_ih, w.w_hh, w.b_ih, w.b_hh))) for w in weights]


def reverse_padded(a: Any, lengths: np.ndarray | None, axis: int = 0, xp: Any = np) -> Any:
    """Reverse each sequence of ``a`` in time within its own length.

    ``a`` has time on ``axis`` and batch on ``axis + 1``. Step s of sequence b
    becomes step ``lengths[b] - 1 - s``; steps past the length stay where they
    are. The mapping is its own inverse, so the same call undoes it. This lets
    a backend run the reverse direction as a forward one.
    """
    if lengths is None:
        return xp.flip(a, axis=axis)
    T, B = a.shape[axis], a.shape[axis + 1]
    steps = xp.arange(T)[:, None]
    lens = xp.asarray(lengths)[None, :]
    index = xp.where(steps < lens, lens - 1 - steps, steps)  # (T, B)
    shape = [1] * a.ndim
    shape[axis], shape[axis + 1] = T, B
    return xp.take_along_axis(a, index.reshape(shape), axis=axis)


def fold_biases(b_ih: np.ndarray, b_hh: np.ndarray, *, with_b_hn: bool) -> np.ndarray:
    """The biases a kernel adds once to each gate's input part: (b_ir + b_hr, b_iz + b_hz, b_in [+ b_hn]).

    The r and z gates always take both biases as one sum. ``b_hn`` joins the
    candidate's sum only for reset-before (``with_b_hn=True``): reset-after
    multiplies W_hn h + b_hn by r, so a backend keeps ``b_hh[2H:]`` apart there.
    A new host array; the inputs are left as they are.
    """
    H = b_hh.shape[0] // 3
    folded = np.array(b_ih, copy=True)
    stop = 3 * H if with_b_hn else 2 * H
    folded[:stop] += b_hh[:stop]
    return folded
