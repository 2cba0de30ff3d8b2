"""The public layers, :class:`GRU` and :class:`GRUCell`.

They own the parameters (in PyTorch's layout and state-dict keys), check
every argument, build a canonical :class:`~gru.backends.ForwardRequest` and
hand it to the backend the registry selects.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any, NamedTuple

import numpy as np

from gru import _arrays, _io
from gru import _validation as v
from gru._errors import BackendError
from gru._registry import select_backend
from gru._validation import IncompatibleKeys
from gru.backends._base import Backend, ForwardRequest, LayerWeights

Seed = int | np.random.Generator | None
BackendChoice = str | Backend | None


class Gradients(NamedTuple):
    """What :meth:`GRU.backward` and :meth:`GRUCell.backward` return: d loss / d input, d loss / d h0,
    and d loss / d parameter for every parameter, keyed like ``state_dict()``."""

    input: Any
    h0: Any
    params: dict[str, Any]


class _Tape(NamedTuple):
    """A training call's request and result, kept for :meth:`GRU.backward`."""

    backend: Backend
    request: ForwardRequest
    result: Any
    batched: bool
    give_back: Any


class GateTrace(NamedTuple):
    """Gate activations of every step: r (reset), z (update), n (candidate).

    For :class:`GRU` each is (num_layers * num_directions, T, B, H), or
    (num_layers * num_directions, B, T, H) with ``batch_first``, or
    (num_layers * num_directions, T, H) for unbatched input; entries past a
    sequence's length are zero. Index ``layer * num_directions + direction``
    as in ``h_n``. For :class:`GRUCell` each is (B, H) or (H,).
    """

    r: Any
    z: Any
    n: Any


_BYTES_PER_BLOCK = 2048  # a (layer, direction)'s arrays, keys and weight objects beyond its parameters


def _from_backend(backend: Backend, call: Any, *args: Any) -> Any:
    """``call(*args)``; an error raised inside a backend keeps its type and gains a note naming the backend.

    A third-party backend's IndexError would otherwise reach the user with no
    word of whose code raised it. Our own errors (BackendError and its kin)
    already name the backend.
    """
    try:
        return call(*args)
    except BackendError:
        raise
    except Exception as exc:
        if hasattr(exc, "add_note"):  # Python 3.11+
            exc.add_note(f"(raised inside backend {backend.name or type(backend).__name__!r})")
        raise


def _initial_state(h0: Any, hx: Any) -> tuple[Any, str]:
    """The initial state, passed as ``h0`` or by PyTorch's name ``hx`` (one of them), and that name (for errors)."""
    if hx is None:
        return h0, "h0"
    if h0 is not None:
        raise TypeError("hx: expected the initial state as h0 or as hx (PyTorch's name), got both")
    return hx, "hx"


def _make_rng(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed: expected an int, a numpy.random.Generator or None, got {seed!r}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    return np.random.default_rng(seed)


class _Recurrent:
    """Parameters, state dict and dispatch shared by GRU and GRUCell."""

    def __init__(self, input_size, hidden_size, bias, reset_after, dtype, backend, seed):
        self.input_size = v.check_int(input_size, "input_size", 1)
        self.hidden_size = v.check_int(hidden_size, "hidden_size", 1)
        self.bias = v.check_bool(bias, "bias")
        self.reset_after = v.check_bool(reset_after, "reset_after")
        self.dtype = v.check_dtype(dtype)
        self.backend = v.check_backend_choice(backend)
        self._rng = _make_rng(seed)
        count, blocks, sizes = self._parameter_count()
        # each (layer, direction) also costs Python objects: ~1.6 KB measured at H = 1, so a
        # million tiny layers take gigabytes whatever their parameters
        nbytes = count * np.dtype(self.dtype).itemsize + blocks * _BYTES_PER_BLOCK
        # fail now, not after filling the memory (or looping for ever)
        v.check_parameter_memory(sizes, count, nbytes, held=f" in {blocks:,} weight sets")
        self._tapes = threading.local()  # the last training call of each thread, for backward()
        self._params: dict[str, np.ndarray] = {}
        # (the _params dict they were made from, the LayerWeights): see _layer_weights
        self._weights: tuple[dict[str, np.ndarray], tuple[LayerWeights, ...]] | None = None
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, shape in self._parameter_shapes().items():
            self._params[name] = _arrays.aligned_copy(self._rng.uniform(-bound, bound, shape), self.dtype)

    # -- parameters -----------------------------------------------------------------
    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        raise NotImplementedError

    def _parameter_count(self) -> tuple[int, int, str]:
        """How many parameters the layer holds and in how many (layer, direction) weight sets (computed, not
        enumerated), and the arguments that decide it."""
        raise NotImplementedError

    def _weight_keys(self) -> list[tuple[str, str, str | None, str | None]]:
        """(w_ih, w_hh, b_ih, b_hh) key names per (layer, direction), in request order."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters under PyTorch's keys (``weight_ih_l0``, ...)."""
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Replace the parameters; keys, shapes and gate order (r, z, n) as in PyTorch.

        Nothing changes unless every entry is valid. As torch's: with
        ``strict=False`` the parameters the state dict lacks are kept and its
        other keys ignored; returns the keys that did not match.
        """
        loaded, mismatched = v.load_parameters(state_dict, self._parameter_shapes(), self.dtype, self._params, strict)
        self._params = loaded  # one swap: a call running meanwhile keeps the whole old set or takes the new
        return mismatched

    def _gradients(self, tape: _Tape, d_output: Any, d_h_n: Any) -> tuple[Any, Any, dict[str, Any]]:
        """The backend's backward through ``tape`` for canonical (T, B, D·H) ``d_output`` and (L·D, B, H) ``d_h_n``.

        Returns d x (T, B, I), d h0 (L·D, B, H) and the parameters' gradients
        keyed like :meth:`state_dict`, those in the caller's array type.
        """
        xp = v.array_module(tape.request.x)
        grads = _from_backend(
            tape.backend,
            tape.backend.backward,
            tape.request,
            tape.result,
            xp.ascontiguousarray(d_output),
            xp.ascontiguousarray(d_h_n),
        )
        v.check_backward_result(tape.backend, tape.request, grads)
        params = {}
        for names, layer_grads in zip(self._weight_keys(), grads.weights, strict=True):
            values = (layer_grads.w_ih, layer_grads.w_hh, layer_grads.b_ih, layer_grads.b_hh)
            for name, value in zip(names, values, strict=True):
                if name is not None:  # no bias parameters without bias
                    params[name] = tape.give_back(value)
        return grads.d_x, grads.d_h0, params

    # -- other libraries and files (converters live in gru.interop, gru._onnx_model, gru._io) ------
    @classmethod
    def from_torch(cls, module: Any, *, dtype: str | None = None, backend: BackendChoice = None) -> Any:
        """The layer equal to a ``torch.nn.GRU`` (``GRUCell`` for a ``torch.nn.GRUCell``).

        Sizes, layers, directions, bias, ``batch_first`` and dropout come from the
        module; ``dtype`` defaults to float64 for a float64 module, else float32.
        Torch itself is not imported: the module is only read.
        """
        from gru import interop

        return interop.layer_from_torch(cls, module, dtype=dtype, backend=backend)

    def to_torch(self) -> Any:
        """A ``torch.nn.GRU`` (or ``GRUCell``) with this layer's parameters, in eval mode; imports torch."""
        from gru import interop

        return interop.layer_to_torch(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write parameters and configuration to ``path``, atomically: safetensors, or NumPy's ``.npz``.

        Read it back with :func:`gru.load`.
        """
        _io.save(self, path)

    def __getstate__(self) -> dict[str, Any]:
        """What pickle and copy keep: not the training calls (per thread) nor the weights as backends took them.

        A backend passed as an instance that is registered goes by its name, so
        that a copy or an unpickled layer uses the registered one, never a copy of it.
        """
        state = dict(self.__dict__)
        state["_tapes"] = None
        state["_weights"] = None
        backend = state["backend"]
        if isinstance(backend, Backend) and backend.name:
            from gru._registry import get_backend

            try:
                if get_backend(backend.name) is backend:
                    state["backend"] = backend.name
            except BackendError:  # no longer registered or runnable here: keep the instance
                pass
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _tapes=threading.local())
        # unpickled arrays start where the allocator puts them: back on cache lines (see aligned_copy)
        self._params = {k: _arrays.on_cache_line(v) for k, v in self._params.items()}

    def __getattr__(self, name: str) -> np.ndarray:
        params = self.__dict__.get("_params", {})
        if name in params:
            return _arrays.read_only(params[name])  # change parameters through load_state_dict
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # assigning would only shadow the parameter: the layer would go on computing with the old one
        if name in self.__dict__.get("_params", {}):
            raise AttributeError(f"{name}: parameters are read-only; change them with load_state_dict")
        super().__setattr__(name, value)

    def _layer_weights(self) -> tuple[LayerWeights, ...]:
        """The parameters as the backends take them, made once per set of parameters.

        Kept with the dict they were made from and used only while that dict is
        still the layer's: a load_state_dict in another thread while they are
        being made cannot leave the layer computing with the old weights.
        """
        params, cached = self._params, self._weights
        if cached is not None and cached[0] is params:
            return cached[1]
        zeros = np.zeros(3 * self.hidden_size, self.dtype)
        weights = tuple(
            LayerWeights(
                w_ih=params[w_ih],
                w_hh=params[w_hh],
                b_ih=params[b_ih] if b_ih else zeros,
                b_hh=params[b_hh] if b_hh else zeros,
            )
            for w_ih, w_hh, b_ih, b_hh in self._weight_keys()
        )
        self._weights = (params, weights)
        return weights


class GRU(_Recurrent):
    """A multi-layer GRU, shaped like ``torch.nn.GRU``.

    ``m(x, h0=None, lengths=None)`` returns ``(output, h_n)``:

    * x: (T, B, input_size), (B, T, input_size) with ``batch_first``, or (T, input_size);
    * h0, h_n: (num_layers * num_directions, B, hidden_size) whatever ``batch_first`` says;
    * output: (T, B, num_directions * hidden_size) (B first with ``batch_first``);
    * lengths: one int per sequence (PackedSequence semantics without packing).

    ``reset_after=True`` (default) applies the reset gate to the recurrent
    product, as the source article and PyTorch do; ``reset_after=False``
    applies it to h_{t-1} before the product (ONNX's default).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        reset_after: bool = True,
        dtype: str | np.dtype = "float32",
        backend: BackendChoice = None,
        seed: Seed = None,
    ) -> None:
        self.num_layers = v.check_int(num_layers, "num_layers", 1)
        self.batch_first = v.check_bool(batch_first, "batch_first")
        self.dropout = v.check_probability(dropout, "dropout", one=True)  # 1 zeroes the layers' inputs, as torch
        self.bidirectional = v.check_bool(bidirectional, "bidirectional")
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout > 0 has no effect with num_layers=1: it applies between layers", UserWarning, stacklevel=2
            )
        super().__init__(input_size, hidden_size, bias, reset_after, dtype, backend, seed)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _weight_keys(self):
        return [
            _io.parameter_keys(layer, direction == 1, self.bias)
            for layer in range(self.num_layers)
            for direction in range(self.num_directions)
        ]

    def _parameter_count(self):
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        per_direction = 3 * H * self.input_size + 3 * H * H + (L - 1) * (3 * H * D * H + 3 * H * H)
        count = D * per_direction + (L * D * 6 * H if self.bias else 0)
        return count, L * D, "input_size, hidden_size, num_layers"

    def _parameter_shapes(self):
        H = self.hidden_size
        shapes = {}
        for index, (w_ih, w_hh, b_ih, b_hh) in enumerate(self._weight_keys()):
            layer_input = self.input_size if index < self.num_directions else self.num_directions * H
            shapes[w_ih] = (3 * H, layer_input)
            shapes[w_hh] = (3 * H, H)
            if self.bias:
                shapes[b_ih] = (3 * H,)
                shapes[b_hh] = (3 * H,)
        return shapes

    @classmethod
    def from_keras(
        cls,
        kernel: Any,
        recurrent_kernel: Any = None,
        bias: Any = None,
        *,
        reset_after: bool | None = None,
        batch_first: bool = True,
        dtype: str | None = None,
        backend: BackendChoice = None,
    ) -> GRU:
        """A one-layer GRU from a Keras ``GRU``: its weights, or the Keras layer itself.

        ``kernel`` (I, 3H), ``recurrent_kernel`` (H, 3H), ``bias`` (2, 3H) with
        ``reset_after=True`` (Keras's default) or (3H,) without, None for
        ``use_bias=False``; gate order z, r, h. Keras is not needed. Keras
        models are batch-major, hence ``batch_first=True`` by default.
        """
        from gru import interop

        return interop.layer_from_keras(
            cls,
            kernel,
            recurrent_kernel,
            bias,
            reset_after=reset_after,
            batch_first=batch_first,
            dtype=dtype,
            backend=backend,
        )

    def keras_weights(self) -> list[list[np.ndarray]]:
        """``[kernel, recurrent_kernel, bias]`` per (layer, direction), ready for Keras ``set_weights``.

        Index ``layer * num_directions + direction``. For ``reset_after=False``
        the two biases are folded into Keras's single one (same function).
        """
        from gru import interop

        return interop.layer_keras_weights(self)

    @classmethod
    def from_onnx(cls, path_or_model: Any, *, dtype: str | None = None, backend: BackendChoice = None) -> GRU:
        """The GRU stack of an ONNX model (path, bytes or ``onnx.ModelProto``); needs the onnx package.

        Each ``GRU`` node becomes a layer; their weights must be constants.
        Nodes after the last ``GRU`` are not part of the layer.
        """
        from gru import _onnx_model

        return _onnx_model.layer_from_onnx(cls, path_or_model, dtype=dtype, backend=backend)

    def to_onnx(
        self,
        path: str | os.PathLike | None = None,
        *,
        opset: int = 17,
        initial_state: bool = False,
        lengths: bool = False,
    ) -> Any:
        """This layer as an ONNX model (returned, and written to ``path`` when given); needs onnx.

        Inputs ``x`` (and ``h0`` with ``initial_state=True``, int32 ``lengths``
        with ``lengths=True``); outputs ``output`` and ``h_n``, shaped as this
        layer's. ONNX Runtime gives a length-0 sequence ``h_n = 0`` where this
        layer gives ``h0``.
        """
        from gru import _onnx_model

        model = _onnx_model.layer_to_onnx(self, opset=opset, initial_state=initial_state, lengths=lengths)
        if path is not None:
            _io._atomic_write(_io._check_path(path), model.SerializeToString())
        return model

    def __call__(
        self,
        x: Any,
        h0: Any = None,
        lengths: Any = None,
        *,
        return_gates: bool = False,
        train: bool = False,
        backend: BackendChoice = None,
        threads: int | None = None,
        hx: Any = None,
    ) -> tuple[Any, Any] | tuple[Any, Any, GateTrace]:
        """Run the layer; with ``return_gates=True`` also return a :class:`GateTrace`.

        ``train=True`` runs in training mode: it keeps what :meth:`backward`
        needs (the gate activations; inference keeps nothing), on a backend
        that declares training, and applies dropout between layers: masks are
        drawn from the layer's generator (``seed``), one per layer boundary in
        layer order, as ``gen.random((T, B, D*H)) < 1 - dropout``, scaled by
        1 / (1 - dropout) (0 when dropout is 1). What a training call returns, and the x and h0 it
        took, are the caller's to change: backward() keeps copies.
        ``threads`` caps the threads of backends that use them (None: the
        backend's default). ``hx`` is PyTorch's name for ``h0``, taken too.
        """
        h0, h0_name = _initial_state(h0, hx)
        give_back = _arrays.returner(x)  # results come back as x's array type (torch in, torch out)
        return_gates = v.check_bool(return_gates, "return_gates")
        train = v.check_bool(train, "train")
        threads = None if threads is None else v.check_int(threads, "threads", 1)
        x, batched = v.canonical_input(x, input_size=self.input_size, batch_first=self.batch_first, dtype=self.dtype)
        xp = v.array_module(x)
        T, B = x.shape[0], x.shape[1]
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        # what the call must hand back (output, h_n, the gates when asked for): a lower bound, never a guess
        gates = 3 * LD * T * B * H if return_gates or train else 0
        v.check_call_memory(x, T * B * self.num_directions * H + LD * B * H + gates, x.itemsize)
        h0 = v.canonical_h0(h0, shape=(LD, B, H), batched=batched, dtype=self.dtype, xp=xp, name=h0_name)
        lengths = v.canonical_lengths(lengths, batch=B, seq_len=T, batched=batched)
        if train:  # backward() reads them later: the caller's arrays (canonical ones come uncopied) may change by then
            x, h0 = x.copy(), h0.copy()
            lengths = None if lengths is None else lengths.copy()

        request = ForwardRequest(
            x=x,
            h0=h0,
            weights=self._layer_weights(),
            lengths=lengths,
            hidden_size=H,
            num_layers=self.num_layers,
            num_directions=self.num_directions,
            reset_after=self.reset_after,
            return_gates=return_gates,
            dtype=self.dtype,
            dropout_masks=self._dropout_masks(T, B) if train else None,
            threads=threads,
            training=train,
        )
        chosen = select_backend(backend if backend is not None else self.backend, request)
        result = _from_backend(chosen, chosen.forward, request)
        v.check_forward_result(chosen, request, result)
        if train:  # what backward() needs, kept per calling thread
            self._tapes.tape = _Tape(chosen, request, result, batched, give_back)

        output, h_n = result.output, result.h_n
        if train:  # and what it returns: the caller may change it in place (y -= target) before backward()
            output, h_n = output.copy(), h_n.copy()
        if not batched:
            output, h_n = output[:, 0], h_n[:, 0]
        elif self.batch_first:
            output = output.transpose(1, 0, 2)
        if not return_gates:
            return give_back(output), give_back(h_n)
        gates = result.gates.copy() if train else result.gates  # (LD, 3, T, B, H)
        if not batched:
            gates = gates[:, :, :, 0]
        elif self.batch_first:
            gates = gates.transpose(0, 1, 3, 2, 4)
        return give_back(output), give_back(h_n), GateTrace(*(give_back(gates[:, g]) for g in range(3)))

    def backward(self, d_output: Any, d_h_n: Any = None) -> Gradients:
        """Gradients through this thread's last ``train=True`` call.

        ``d_output`` and ``d_h_n`` are the gradients of your loss with respect
        to that call's ``output`` and ``h_n``, in the same shapes (``d_h_n``
        None: the loss does not use ``h_n``). Returns the gradients with
        respect to the input, the initial state and every parameter (keyed like
        :meth:`state_dict`). Calling it again on the same call is allowed.
        """
        tape = getattr(self._tapes, "tape", None)
        if tape is None:
            raise RuntimeError(
                "backward: no training call to differentiate in this thread; call the layer with train=True"
            )
        request = tape.request
        T, B = request.seq_len, request.batch_size
        LD, H = request.num_layers * request.num_directions, request.hidden_size
        out_shape = (T, B, request.num_directions * H)
        if not tape.batched:
            user_out, user_hn = (T, out_shape[2]), (LD, H)
        else:
            user_out, user_hn = ((B, T, out_shape[2]) if self.batch_first else out_shape), (LD, B, H)
        xp = v.array_module(request.x)
        d_output = v.as_float_array(d_output, "d_output", self.dtype)
        if tuple(d_output.shape) != user_out:
            raise ValueError(f"d_output: expected the output's shape {user_out}, got {tuple(d_output.shape)}")
        if not tape.batched:
            d_output = d_output[:, None]
        elif self.batch_first:
            d_output = d_output.transpose(1, 0, 2)
        if d_h_n is None:
            d_h_n = xp.zeros((LD, B, H), self.dtype)
        else:
            d_h_n = v.as_float_array(d_h_n, "d_h_n", self.dtype)
            if tuple(d_h_n.shape) != user_hn:
                raise ValueError(f"d_h_n: expected h_n's shape {user_hn}, got {tuple(d_h_n.shape)}")
            d_h_n = d_h_n.reshape(LD, B, H)
        d_x, d_h0, params = self._gradients(tape, d_output, d_h_n)
        if not tape.batched:
            d_x, d_h0 = d_x[:, 0], d_h0[:, 0]
        elif self.batch_first:
            d_x = d_x.transpose(1, 0, 2)
        return Gradients(input=tape.give_back(d_x), h0=tape.give_back(d_h0), params=params)

    def _dropout_masks(self, T: int, B: int) -> tuple[np.ndarray, ...] | None:
        if self.dropout == 0 or self.num_layers == 1:
            return None
        keep = 1.0 - self.dropout
        shape = (T, B, self.num_directions * self.hidden_size)
        # dropout=1 keeps nothing: zero masks (the draws still advance the generator as any other rate does)
        scale = 1.0 / keep if keep > 0 else 0.0
        return tuple(((self._rng.random(shape) < keep) * scale).astype(self.dtype) for _ in range(self.num_layers - 1))

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={getattr(self, name)!r}"
            for name, default in (
                ("num_layers", 1),
                ("bias", True),
                ("batch_first", False),
                ("dropout", 0.0),
                ("bidirectional", False),
            )
            if getattr(self, name) != default
        )
        return (
            f"GRU({self.input_size}, {self.hidden_size}{extra}, reset_after={self.reset_after}, dtype={self.dtype!r})"
        )


class GRUCell(_Recurrent):
    """One GRU step, shaped like ``torch.nn.GRUCell``: ``h1 = cell(x, h0)``.

    x is (B, input_size) or (input_size,); h0 (B, hidden_size) or (hidden_size,),
    zeros when omitted. State-dict keys: weight_ih, weight_hh, bias_ih, bias_hh.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        reset_after: bool = True,
        dtype: str | np.dtype = "float32",
        backend: BackendChoice = None,
        seed: Seed = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias, reset_after, dtype, backend, seed)

    def _weight_keys(self):
        return [_io.parameter_keys(None, False, self.bias)]

    def _parameter_count(self):
        H = self.hidden_size
        return 3 * H * self.input_size + 3 * H * H + (6 * H if self.bias else 0), 1, "input_size, hidden_size"

    def _parameter_shapes(self):
        H = self.hidden_size
        shapes = {"weight_ih": (3 * H, self.input_size), "weight_hh": (3 * H, H)}
        if self.bias:
            shapes.update(bias_ih=(3 * H,), bias_hh=(3 * H,))
        return shapes

    def __call__(
        self,
        x: Any,
        h0: Any = None,
        *,
        return_gates: bool = False,
        train: bool = False,
        backend: BackendChoice = None,
        hx: Any = None,
    ) -> Any | tuple[Any, GateTrace]:
        """One step; with ``return_gates=True`` returns ``(h1, GateTrace)``. ``hx``: PyTorch's name for ``h0``.

        ``train=True`` keeps what :meth:`backward` needs, on a backend that
        declares training: each such call adds one entry to this thread's
        tape, and each :meth:`backward` takes the newest one off it, so that
        stepping a sequence forward and then backward in reverse order
        backpropagates through time.
        """
        h0, h0_name = _initial_state(h0, hx)
        give_back = _arrays.returner(x)
        return_gates = v.check_bool(return_gates, "return_gates")
        train = v.check_bool(train, "train")
        x = v.as_float_array(x, "x", self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x: expected shape (batch, {self.input_size}) or ({self.input_size},), got {tuple(x.shape)}"
            )
        batched = x.ndim == 2
        xp = v.array_module(x)
        B, H = (x.shape[0] if batched else 1), self.hidden_size
        v.check_call_memory(x, B * H * (4 if return_gates or train else 1), x.itemsize)  # h1 (and its gates)
        steps = xp.ascontiguousarray(x[None] if batched else x[None, None])  # (1, B, I)
        if h0 is not None:
            h0 = v.as_float_array(h0, h0_name, self.dtype)
            expected = (B, H) if batched else (H,)
            if tuple(h0.shape) != expected:
                raise ValueError(f"{h0_name}: expected shape {expected}, got {tuple(h0.shape)}")
            h0 = xp.ascontiguousarray(h0.reshape(1, B, H))
        else:
            h0 = xp.zeros((1, B, H), self.dtype)
        if train:  # backward() reads them later: the caller's arrays may change by then
            steps, h0 = steps.copy(), h0.copy()
        request = ForwardRequest(
            x=steps,
            h0=h0,
            weights=self._layer_weights(),
            lengths=None,
            hidden_size=H,
            num_layers=1,
            num_directions=1,
            reset_after=self.reset_after,
            return_gates=return_gates,
            dtype=self.dtype,
            training=train,
        )
        chosen = select_backend(backend if backend is not None else self.backend, request)
        result = _from_backend(chosen, chosen.forward, request)
        v.check_forward_result(chosen, request, result)
        h1 = result.h_n[0] if batched else result.h_n[0, 0]
        if train:
            self._tape_stack().append(_Tape(chosen, request, result, batched, give_back))
            h1 = h1.copy()  # the caller may change it in place before backward()
        if not return_gates:
            return give_back(h1)
        gates = result.gates.copy() if train else result.gates  # the tape's own: backward() reads them
        gates = gates[0, :, 0] if batched else gates[0, :, 0, 0]
        return give_back(h1), GateTrace(*(give_back(g) for g in gates))

    def _tape_stack(self) -> list[_Tape]:
        stack = getattr(self._tapes, "stack", None)
        if stack is None:
            stack = self._tapes.stack = []
        return stack

    @property
    def pending_backward(self) -> int:
        """This thread's ``train=True`` calls that :meth:`backward` has not taken yet."""
        return len(self._tape_stack())

    def discard_pending(self) -> int:
        """Forget this thread's ``train=True`` calls not yet differentiated (a batch given up); returns how many.

        Each keeps its step's inputs and gate activations until
        :meth:`backward` takes it: a loop that abandons a sequence part-way
        calls this before the next one.
        """
        stack = self._tape_stack()
        count = len(stack)
        stack.clear()
        return count

    def backward(self, d_h1: Any) -> Gradients:
        """Gradients through this thread's newest ``train=True`` call not yet differentiated, which it takes off.

        ``d_h1`` is d loss / d h1, shaped like that call's result. Returns d
        loss / d x, d loss / d h0 and the parameters' gradients (keyed like
        :meth:`state_dict`). Through time: step forward with ``train=True``,
        then call this once per step in reverse order, adding each step's
        ``h0`` gradient into the ``d_h1`` of the step before and summing the
        ``params``.
        """
        stack = self._tape_stack()
        if not stack:
            raise RuntimeError(
                "backward: no training call left to differentiate in this thread; call the cell with train=True"
            )
        tape = stack[-1]
        B, H = tape.request.batch_size, self.hidden_size
        expected = (B, H) if tape.batched else (H,)
        d_h1 = v.as_float_array(d_h1, "d_h1", self.dtype)
        if tuple(d_h1.shape) != expected:
            raise ValueError(f"d_h1: expected the step's result shape {expected}, got {tuple(d_h1.shape)}")
        xp = v.array_module(tape.request.x)
        d_x, d_h0, params = self._gradients(tape, xp.zeros((1, B, H), self.dtype), d_h1.reshape(1, B, H))
        stack.pop()  # only once the gradients are made: a refused d_h1 leaves the tape as it was
        d_x, d_h0 = (d_x[0], d_h0[0]) if tape.batched else (d_x[0, 0], d_h0[0, 0])
        return Gradients(input=tape.give_back(d_x), h0=tape.give_back(d_h0), params=params)

    def __repr__(self) -> str:
        return (
            f"GRUCell({self.input_size}, {self.hidden_size}, bias={self.bias}, "
            f"reset_after={self.reset_after}, dtype={self.dtype!r})"
        )
