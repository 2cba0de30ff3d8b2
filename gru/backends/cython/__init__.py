"""The Cython CPU backend: compiled recurrence, BLAS GEMMs, OpenMP threads."""

from gru.backends.cython.backend import CythonBackend

__all__ = ["CythonBackend"]
