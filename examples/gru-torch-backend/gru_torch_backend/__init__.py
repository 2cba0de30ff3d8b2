"""An example third-party gru backend that runs the recurrence with PyTorch tensor operations.

Registered in ``pyproject.toml`` under the ``gru.backends`` entry-point group as
``torch``. Importing this package does not import torch; see :mod:`.backend`.
"""

from gru_torch_backend.backend import TorchBackend

__all__ = ["TorchBackend"]
