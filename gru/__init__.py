"""gru: GRU layers with one API and pluggable compute backends.

>>> import gru
>>> m = gru.GRU(8, 16, num_layers=2, bidirectional=True, seed=0)
>>> y, h_n = m(x)                       # doctest: +SKIP
"""

from gru import onnx
from gru._errors import BackendError, BackendNotFoundError, BackendUnavailableError, UnsupportedRequestError
from gru._io import load
from gru._layers import GRU, GateTrace, Gradients, GRUCell, IncompatibleKeys
from gru._registry import BackendInfo, backend_available, get_backend, list_backends, register_backend

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "BackendError",
    "BackendInfo",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "GRUCell",
    "GateTrace",
    "Gradients",
    "IncompatibleKeys",
    "UnsupportedRequestError",
    "backend_available",
    "get_backend",
    "list_backends",
    "load",
    "onnx",
    "register_backend",
]
