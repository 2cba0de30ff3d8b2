"""Exception types raised by gru.

Every error a user can trigger by passing something wrong derives from the
builtin ``ValueError`` or ``TypeError`` so that generic handlers keep working;
backend problems have their own hierarchy so callers can tell "you asked for
something impossible" from "this machine cannot do it".
"""

from __future__ import annotations


class BackendError(RuntimeError):
    """Base class of every registry / backend problem."""


class BackendNotFoundError(BackendError, ValueError):
    """No backend of that name is registered (a bad argument, hence ValueError)."""


class BackendUnavailableError(BackendError):
    """The backend is registered but cannot run here (missing dependency, no GPU, import error)."""


class UnsupportedRequestError(BackendError, ValueError):
    """The backend is available but does not implement what the call asks for."""
