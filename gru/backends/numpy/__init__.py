"""The NumPy reference backend: the readable definition of the GRU."""

from gru.backends.numpy.backend import NumpyBackend

__all__ = ["NumpyBackend"]
