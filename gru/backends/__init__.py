"""Compute backends and the protocol they implement.

Backend authors import from here::

    from gru.backends import Backend, Capabilities, StackedBackend, ForwardRequest, ForwardResult

Built-in backends live in sub-packages of the same shape (``numpy/``, ...)
and are registered through the ``gru.backends`` entry-point group like any
third-party backend.
"""

from gru.backends._base import (
    Backend,
    BackwardResult,
    Capabilities,
    ForwardRequest,
    ForwardResult,
    LayerWeights,
    StackedBackend,
    fold_biases,
    reverse_padded,
)

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
