"""What is timed: the package's backends and the peers (torch.nn.GRU, ONNX Runtime's GRU), behind one interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import gru
from gru.bench._cases import _PEER_ALIASES, PEERS, Case, Gradients, Runner
from gru.bench._machine import _dist_version


# -- implementations -------------------------------------------------------------------------------
class Implementation:
    """Something to time: a backend of this package or a peer library.

    Subclass it to benchmark another implementation (``run(..., extra=[...])``);
    the tests use this hook to check that a wrong implementation is refused.
    """

    #: the name in the table and in ``--backends``
    name: str = ""
    #: "gru" for this package's backends, "peer" for the libraries we compare against
    kind: str = "gru"

    def version(self) -> str | None:
        return None

    def unavailable(self, dtype: str) -> str | None:
        """Why this cannot run here at ``dtype``, or None when it can."""
        return None

    def prepare(self, state: dict[str, np.ndarray], case: Case, dtype: str, threads: int) -> Runner:
        """Build the layer from the PyTorch-layout ``state`` (untimed); return ``f(x) -> output (T, B, H)``."""
        raise NotImplementedError

    def training_unavailable(self, dtype: str) -> str | None:
        """Why this cannot train here at ``dtype`` (``gru bench --train``), or None when it can."""
        if type(self).prepare_training is Implementation.prepare_training:
            return "no training runner (prepare_training)"
        return self.unavailable(dtype)

    def prepare_training(
        self, state: dict[str, np.ndarray], case: Case, dtype: str, threads: int, d_output: np.ndarray
    ) -> Callable[[np.ndarray], Gradients]:
        """Like :meth:`prepare`, for training: ``f(x)`` runs forward and backward with ``d_output`` (T, B, H).

        ``f(x)`` returns ``{"output": ..., "input": d loss / d x, **{key: d loss / d state[key]}}``.
        """
        raise NotImplementedError


class BackendImplementation(Implementation):
    """A backend of this package, called through the public ``gru.GRU`` API, as users call it."""

    kind = "gru"

    def __init__(self, backend: str, info: gru.BackendInfo | None = None) -> None:
        self.backend = backend
        self.info = info
        self.name = f"gru:{backend}" if backend in PEERS else backend

    def version(self) -> str | None:
        return f"gru {gru.__version__}"

    def unavailable(self, dtype: str) -> str | None:
        if self.info is None:
            return f"no backend named {self.backend!r} is registered"
        if not self.info.available:
            return self.info.reason or "unavailable"
        caps = self.info.capabilities
        if caps is not None and caps.device != "cpu":
            return f"runs on {caps.device}, this is a CPU benchmark"
        if caps is not None and dtype not in caps.dtypes:
            return f"does not support {dtype}"
        return None

    def _layer(self, state, case, dtype) -> gru.GRU:
        layer = gru.GRU(case.input_size, case.hidden_size, dtype=dtype, backend=self.backend)
        layer.load_state_dict(state)
        return layer

    def prepare(self, state, case, dtype, threads):
        layer = self._layer(state, case, dtype)
        # threads passed on: the run's count, whatever GRU_NUM_THREADS says
        return lambda x: layer(x, threads=threads)[0]

    def training_unavailable(self, dtype: str) -> str | None:
        reason = self.unavailable(dtype)
        if reason is None and self.info is not None and not self.info.capabilities.training:
            reason = "does not declare training"
        return reason

    def prepare_training(self, state, case, dtype, threads, d_output):
        layer = self._layer(state, case, dtype)

        def step(x: np.ndarray) -> Gradients:
            output, _ = layer(x, train=True, threads=threads)
            grads = layer.backward(d_output)
            return {"output": output, "input": grads.input, **grads.params}

        return step


class TorchImplementation(Implementation):
    """``torch.nn.GRU`` on the CPU, inference only (``torch.inference_mode``)."""

    name = "torch"
    kind = "peer"

    def version(self) -> str | None:
        return _dist_version("torch")

    def unavailable(self, dtype: str) -> str | None:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return f"not installed ({exc}): pip install torch"
        return None

    @staticmethod
    def _module(state, case, dtype, threads) -> Any:
        """``torch.nn.GRU`` holding ``state``, torch held to ``threads``."""
        import torch

        torch.set_num_threads(threads)
        layer = torch.nn.GRU(case.input_size, case.hidden_size).to(getattr(torch, dtype))
        layer.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
        return layer

    def prepare(self, state, case, dtype, threads):
        import torch

        layer = self._module(state, case, dtype, threads)
        layer.eval()

        def forward(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return layer(torch.from_numpy(x))[0].numpy()

        return forward

    def prepare_training(self, state, case, dtype, threads, d_output):
        """Autograd, as a training loop uses it: fresh leaf input, gradients reset to None, ``backward``."""
        import torch

        layer = self._module(state, case, dtype, threads)
        layer.train()
        d_out = torch.from_numpy(d_output)
        params = dict(layer.named_parameters())

        def step(x: np.ndarray) -> Gradients:
            for p in params.values():
                p.grad = None  # optimizer.zero_grad(set_to_none=True)
            x_t = torch.from_numpy(x).requires_grad_()
            output, _ = layer(x_t)
            output.backward(d_out)
            grads = {"output": output.detach().numpy(), "input": x_t.grad.numpy()}
            return grads | {k: p.grad.numpy() for k, p in params.items()}

        return step


class OnnxRuntimeImplementation(Implementation):
    """ONNX Runtime's ``GRU`` operator in a one-node model, on the CPU execution provider."""

    name = "onnxruntime"
    kind = "peer"

    def version(self) -> str | None:
        return _dist_version("onnxruntime")

    def unavailable(self, dtype: str) -> str | None:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"not installed ({exc}): pip install onnx onnxruntime"
        if dtype != "float32":
            return "ONNX Runtime's CPU GRU kernel is float32 only"
        return None

    def training_unavailable(self, dtype: str) -> str | None:
        return "inference only (ONNX Runtime's GRU operator has no backward)"

    def prepare(self, state, case, dtype, threads):
        import onnxruntime as ort

        model = onnx_gru_model(state, case, dtype)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        T, B, H = case.steps, case.batch, case.hidden_size

        def forward(x: np.ndarray) -> np.ndarray:
            return session.run(["Y"], {"X": x})[0].reshape(T, B, H)  # Y is (T, num_directions=1, B, H)

        return forward


def onnx_gru_model(state: dict[str, np.ndarray], case: Case, dtype: str = "float32") -> Any:
    """A one-node ONNX model computing the same GRU as ``state`` (PyTorch layout, gates r, z, n).

    The weights go through :func:`gru.interop.torch_to_onnx` (ONNX's gate order
    z, r, h; B = [Wb, Rb]); ``linear_before_reset=1`` is PyTorch's reset-after form.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gru._io import parameter_keys
    from gru.interop import torch_to_onnx

    H, I = case.hidden_size, case.input_size
    W, R, Bias = torch_to_onnx([tuple(state[key] for key in parameter_keys(0, False, bias=True))])
    elem = TensorProto.FLOAT if dtype == "float32" else TensorProto.DOUBLE
    node = helper.make_node("GRU", ["X", "W", "R", "B"], ["Y"], hidden_size=H, linear_before_reset=1)
    graph = helper.make_graph(
        [node],
        "gru_bench",
        [helper.make_tensor_value_info("X", elem, [case.steps, case.batch, I])],
        [helper.make_tensor_value_info("Y", elem, [case.steps, 1, case.batch, H])],
        initializer=[
            numpy_helper.from_array(np.ascontiguousarray(a.astype(dtype)), n)
            for a, n in ((W, "W"), (R, "R"), (Bias, "B"))
        ],
    )
    # an old IR version and opset so that any ONNX Runtime of recent years loads it
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _peer(name: str) -> Implementation:
    return TorchImplementation() if name == "torch" else OnnxRuntimeImplementation()


def resolve_implementations(names: Sequence[str] | None) -> list[Implementation]:
    """The implementations to run.

    ``None`` means every available CPU backend of the package with priority >= 0
    (negative priority marks slow reference or example backends) plus both peers.
    Names may be backends, ``torch``, ``onnxruntime`` (``ort``), or ``gru:NAME``
    for a backend whose name is also a peer's. Raises ValueError on unknown names.
    """
    infos = {info.name: info for info in gru.list_backends()}
    if names is None:
        chosen: list[Implementation] = [
            BackendImplementation(info.name, info)
            for info in infos.values()
            if info.available
            and info.capabilities is not None
            and info.capabilities.device == "cpu"
            and info.capabilities.priority >= 0
        ]
        return chosen + [_peer(p) for p in PEERS]
    known = ", ".join([*(f"gru:{n}" if n in PEERS else n for n in sorted(infos)), *PEERS])
    if not any(raw.strip() for raw in names):
        got = ",".join(names)
        raise ValueError(f"--backends: expected implementation names separated by commas (known: {known}), got {got!r}")
    chosen = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name.startswith("gru:"):
            name = name[4:]
            if name not in infos:
                raise ValueError(
                    f"--backends: no backend named {name!r} is registered (registered: {', '.join(sorted(infos))})"
                )
            impl: Implementation = BackendImplementation(name, infos[name])
        elif name.lower() in _PEER_ALIASES:
            impl = _peer(_PEER_ALIASES[name.lower()])
        elif name in infos:
            impl = BackendImplementation(name, infos[name])
        else:
            raise ValueError(f"--backends: unknown implementation {name!r} (known: {known})")
        if impl.name not in {c.name for c in chosen}:
            chosen.append(impl)
    return chosen
