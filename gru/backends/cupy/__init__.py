"""The CuPy GPU backend: CUDA kernels (``kernels/*.cu``) compiled at run time by NVRTC.

Importing this package never imports CuPy; :meth:`CupyBackend.available`
does, and says why the backend cannot run when CuPy or a GPU is missing.
"""

from gru.backends.cupy.backend import CupyBackend

__all__ = ["CupyBackend"]
