"""The backend registry: discovery through entry points, lazy loading, selection.

Backends are registered in the ``gru.backends`` entry-point group, the
built-in ones exactly like third-party ones. Discovery reads only the
entry-point metadata; a backend's module is imported the first time the
backend is asked for, and its heavy dependencies only in its ``available()``.
Every load runs in its own ``try`` so a broken plugin is reported, never fatal.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from gru._errors import BackendError, BackendNotFoundError, BackendUnavailableError, UnsupportedRequestError
from gru.backends._base import Backend, Capabilities, ForwardRequest

ENTRY_POINT_GROUP = "gru.backends"
ENV_VAR = "GRU_BACKEND"
BUILTIN_DISTRIBUTION = "gru"

__all__ = [
    "BackendInfo",
    "backend_available",
    "get_backend",
    "list_backends",
    "refresh",
    "register_backend",
    "select_backend",
]


@dataclass(frozen=True)
class BackendInfo:
    """One row of :func:`list_backends`."""

    name: str
    available: bool
    reason: str | None
    capabilities: Capabilities | None
    origin: str
    notes: tuple[str, ...] = ()


@dataclass
class _Entry:
    name: str
    origin: str
    entry_point: EntryPoint | None = None
    backend: Backend | None = None
    load_error: str | None = None
    availability: bool | str | None = None  # cached result of backend.available()
    notes: list[str] = field(default_factory=list)


_lock = threading.RLock()
_entries: dict[str, _Entry] | None = None


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"entry point {ep.value!r} of {where}"


def _discover(eps: list[EntryPoint] | None = None) -> dict[str, _Entry]:
    """Build the table from entry points; built-in ones win a name clash."""
    if eps is None:
        eps = list(entry_points(group=ENTRY_POINT_GROUP))

    def is_builtin(ep: EntryPoint) -> bool:
        dist = getattr(ep, "dist", None)
        return dist is not None and dist.name == BUILTIN_DISTRIBUTION

    table: dict[str, _Entry] = {}
    for ep in sorted(eps, key=lambda e: not is_builtin(e)):  # stable: built-ins first
        if ep.name in table:
            note = f"also registered by {_describe(ep)}, which is ignored"
            table[ep.name].notes.append(note)
            warnings.warn(f"gru backend {ep.name!r} is registered twice: {note}", RuntimeWarning, stacklevel=3)
            continue
        table[ep.name] = _Entry(name=ep.name, origin=_describe(ep), entry_point=ep)
    return table


def _table() -> dict[str, _Entry]:
    global _entries
    with _lock:
        if _entries is None:
            _entries = _discover()
        return _entries


def refresh(entry_points_override: list[EntryPoint] | None = None) -> None:
    """Forget what was discovered and loaded; rediscover (tests pass their own entry points)."""
    global _entries
    with _lock:
        _entries = _discover(entry_points_override)


def _as_backend(obj: object, where: str) -> Backend:
    if isinstance(obj, type) and issubclass(obj, Backend):
        obj = obj()
    if not isinstance(obj, Backend):
        raise TypeError(f"{where} gave {obj!r}, which is not a gru.backends.Backend (subclass or instance)")
    capabilities = obj.capabilities  # selection relies on them: check what it reads
    if (
        not isinstance(capabilities, Capabilities)
        or not isinstance(capabilities.device, str)
        or not isinstance(capabilities.priority, (int, float))
        or isinstance(capabilities.priority, bool)
    ):
        raise TypeError(
            f"{where} gave a backend whose capabilities are {capabilities!r}, not a gru.backends.Capabilities "
            "with a str device and a numeric priority"
        )
    return obj


def _load(entry: _Entry) -> Backend | None:
    """Import the backend once; remember why it failed if it does."""
    with _lock:
        if entry.backend is None and entry.load_error is None:
            try:
                backend = _as_backend(entry.entry_point.load(), entry.origin)
                backend.name = entry.name  # may raise too (a read-only name): then it is not loaded
                entry.backend = backend
            except (Exception, SystemExit) as exc:  # a broken plugin must never break gru (nor exit)
                entry.load_error = f"failed to load ({type(exc).__name__}: {exc})"
        return entry.backend


def _availability(entry: _Entry) -> bool | str:
    backend = _load(entry)
    if backend is None:
        return entry.load_error
    if entry.availability is None:
        try:
            result = backend.available()
        except (Exception, SystemExit) as exc:
            result = f"availability check raised {type(exc).__name__}: {exc}"
        if result is not True and not (isinstance(result, str) and result):
            result = f"available() returned {result!r} instead of True or a reason"
        entry.availability = result
    return entry.availability


def list_backends() -> list[BackendInfo]:
    """Every registered backend, with whether it can run here and why not."""
    rows = []
    for entry in list(_table().values()):
        availability = _availability(entry)
        rows.append(
            BackendInfo(
                name=entry.name,
                available=availability is True,
                reason=None if availability is True else availability,
                capabilities=entry.backend.capabilities if entry.backend is not None else None,
                origin=entry.origin,
                notes=tuple(entry.notes),
            )
        )
    return rows


def register_backend(name: str, backend: Backend | type[Backend], *, replace: bool = False) -> Backend:
    """Register ``backend`` under ``name`` at run time (entry points are the usual way)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a non-empty string other than 'auto', got {name!r} ({type(name).__name__})")
    if not name or name == "auto":
        raise ValueError(f"name: expected a non-empty string other than 'auto', got {name!r}")
    if not isinstance(replace, bool):
        raise TypeError(f"replace: expected True or False, got {replace!r}")
    instance = _as_backend(backend, "register_backend(backend=...)")
    with _lock:
        table = _table()
        if name in table and not replace:
            raise ValueError(
                f"name: a backend named {name!r} is already registered ({table[name].origin}); pass replace=True"
            )
        instance.name = name
        table[name] = _Entry(name=name, origin="register_backend()", backend=instance)
    return instance


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``, loaded; raises if it cannot run here."""
    if not isinstance(name, str):
        raise TypeError(f"backend: expected a backend name (str), got {type(name).__name__}")
    table = _table()
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        if name == "auto":  # a choice a layer makes per call, not a backend one can hold
            raise BackendNotFoundError(
                f"backend: 'auto' is not a backend but the choice a layer makes per call; "
                f"get_backend takes a registered name ({known})"
            )
        raise BackendNotFoundError(f"backend: no backend named {name!r} is registered (registered: {known}; or 'auto')")
    entry = table[name]
    availability = _availability(entry)
    if availability is not True:
        raise BackendUnavailableError(f"backend {name!r} is unavailable: {availability}")
    return entry.backend


def backend_available(name: str) -> bool:
    """Whether the backend registered as ``name`` can run here; loads that plugin only, not every one."""
    try:
        get_backend(name)
    except BackendError:
        return False
    return True


def _verdict(backend: Backend, request: ForwardRequest) -> bool | str:
    """``backend.supports(request)``: True, or why not; a check that raises or answers nonsense is a no."""
    try:
        verdict = backend.supports(request)
    except (Exception, SystemExit) as exc:  # a broken capability check means "cannot run this call", never a crash
        return f"its capability check supports() raised {type(exc).__name__}: {exc}"
    if verdict is True or (isinstance(verdict, str) and verdict):
        return verdict
    return f"supports() returned {verdict!r} instead of True or a reason"


def _device_of(request: ForwardRequest) -> str:
    return "cuda" if hasattr(request.x, "__cuda_array_interface__") else "cpu"


def select_backend(choice: str | Backend | None, request: ForwardRequest) -> Backend:
    """Resolve a layer's or call's ``backend=`` argument for ``request``.

    ``None`` means the ``GRU_BACKEND`` environment variable, else "auto";
    "auto" picks the highest-priority available backend on the input's device
    that supports the request.
    """
    from_env = choice is None  # a name reached below from here came from GRU_BACKEND
    if choice is None:
        choice = os.environ.get(ENV_VAR) or "auto"
    if isinstance(choice, Backend):
        backend = choice
    elif choice == "auto":
        return _auto(request)
    else:
        try:
            backend = get_backend(choice)
        except (BackendNotFoundError, BackendUnavailableError) as exc:
            if not from_env:
                raise
            # the caller passed no backend: say where the name came from
            raise type(exc)(f"{ENV_VAR}={choice!r} (environment variable): {exc}") from None
    device = _device_of(request)
    caps = backend.capabilities
    host_input_accepted = device == "cpu" and caps.accepts_host_arrays  # named explicitly: the user's intent
    if caps.device != device and not host_input_accepted:
        raise UnsupportedRequestError(
            f"backend {backend.name or backend!r} runs on {backend.capabilities.device} but the input is on {device}"
        )
    verdict = _verdict(backend, request)
    if verdict is not True:
        raise UnsupportedRequestError(f"backend {backend.name or backend!r} cannot run this call: {verdict}")
    return backend


def _auto(request: ForwardRequest) -> Backend:
    """The highest-priority backend that can run ``request``, asked in priority order.

    Capabilities are known once a plugin is imported, so a backend for another
    device, or below the one that wins, is never asked ``available()``: that
    check may import a heavy library (torch, CuPy) the call does not need.
    Ties keep registration order.
    """
    device = _device_of(request)
    reasons = []
    loaded = []
    for entry in list(_table().values()):
        if _load(entry) is None:
            reasons.append(f"{entry.name}: {entry.load_error}")
        else:
            loaded.append(entry)
    for entry in sorted(loaded, key=lambda e: -e.backend.capabilities.priority):
        backend = entry.backend
        if backend.capabilities.device != device:
            reasons.append(f"{entry.name}: runs on {backend.capabilities.device}, the input is on {device}")
            continue
        availability = _availability(entry)
        if availability is not True:
            reasons.append(f"{entry.name}: {availability}")
            continue
        verdict = _verdict(backend, request)
        if verdict is not True:
            reasons.append(f"{entry.name}: {verdict}")
            continue
        return backend
    raise UnsupportedRequestError("backend='auto': no available backend can run this call (" + "; ".join(reasons) + ")")
