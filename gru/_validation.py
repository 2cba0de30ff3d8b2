"""Argument checking, done once for every backend.

Each function turns a user's argument into the canonical form of
:class:`gru.backends.ForwardRequest` or raises ``TypeError`` / ``ValueError``
with a message that names the argument, what was expected and what came.
"""

from __future__ import annotations

import functools
import numbers
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from gru._arrays import aligned_copy, as_array, is_torch_tensor, refuse_masked, to_host, torch_values_on_host

SUPPORTED_DTYPES = ("float32", "float64")


@functools.cache
def memory_bytes() -> int | None:
    """This machine's physical memory, where the OS tells (asked once: it does not change while we run)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_parameter_memory(sizes: str, count: int, nbytes: int, held: str = "") -> None:
    """Refuse, naming the sizes, a layer whose parameters (``nbytes`` in all) would pass this machine's memory.

    Checked before anything is drawn: a MemoryError from NumPy would name no
    argument, and a machine that swaps might crawl first.
    """
    memory = memory_bytes()
    if memory is not None and nbytes > memory:
        raise ValueError(
            f"{sizes}: the layer would hold {count:,} parameters{held} ({nbytes / 2**30:,.1f} GiB), "
            f"more than this machine's memory ({memory / 2**30:,.1f} GiB)"
        )


def check_call_memory(
    x: Any, elements: int, itemsize: int, what: str = "output, final state and gates", name: str = "x"
) -> None:
    """Refuse, naming x (or ``name``), a host call whose arrays (``elements`` values) would pass this machine's memory.

    NumPy would otherwise raise a MemoryError about some internal array; a device
    call is left to the device's own allocator, whose memory is not this one.
    """
    memory = memory_bytes()
    need = elements * itemsize
    if memory is not None and isinstance(x, np.ndarray) and need > memory:
        raise ValueError(
            f"{name}: expected a call whose arrays fit in memory, got shape {tuple(x.shape)}, whose {what} "
            f"would take {need / 2**30:,.1f} GiB (this machine has {memory / 2**30:,.1f} GiB)"
        )


def array_module(value: Any) -> Any:
    """The array module a value belongs to: CuPy for device arrays, else NumPy."""
    if hasattr(value, "__cuda_array_interface__"):
        import cupy

        return cupy
    return np


def check_dtype(dtype: Any, name: str = "dtype") -> str:
    if dtype is None:  # np.dtype(None) is float64, which would silently differ from the float32 default
        raise TypeError(f"{name}: expected one of {SUPPORTED_DTYPES}, got None")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(dtype, torch.dtype):  # torch.float32 and torch.float64 read as theirs
        dtype = str(dtype).removeprefix("torch.")
    try:
        canonical = np.dtype(dtype).name
    except TypeError:
        raise TypeError(f"{name}: expected one of {SUPPORTED_DTYPES}, got {dtype!r}") from None
    if canonical not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected one of {SUPPORTED_DTYPES}, got {canonical}")
    return canonical


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_backend_choice(backend: Any) -> Any:
    """A ``backend=`` argument: a registered name (checked when a call selects it), a Backend, or None."""
    from gru.backends._base import Backend

    if backend is not None and not isinstance(backend, (str, Backend)):
        raise TypeError(f"backend: expected a backend name, a Backend or None, got {backend!r}")
    return backend


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_probability(value: Any, name: str, *, one: bool = False) -> float:
    """A number in [0, 1), or [0, 1] with ``one``."""
    expected = f"a number in [0, 1{']' if one else ')'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {value!r}")
    if not (0.0 <= value <= 1.0 if one else 0.0 <= value < 1.0):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return float(value)


def as_float_array(value: Any, name: str, dtype: str) -> Any:
    """``value`` as a NumPy or CuPy array of the layer's ``dtype`` (no silent precision change).

    Anything that speaks an array protocol is read without a copy where it allows
    (torch tensors, DLPack, CUDA arrays: see :mod:`gru._arrays`).
    """
    if value is None:
        raise TypeError(f"{name}: expected an array of {dtype}, got None")
    refuse_masked(value, name, "pass lengths= for padded sequences, or .filled(value)")
    if isinstance(value, (list, tuple)):
        if type(value).__name__ == "PackedSequence":  # torch's: a tuple whose fields are not rows
            raise TypeError(
                f"{name}: expected a padded array, got a PackedSequence; pass the padded tensor and its lengths= "
                "(torch.nn.utils.rnn.pad_packed_sequence gives both)"
            )
        return _array_from_sequence(value, name, dtype)
    try:
        array = as_array(value, name)
    except (TypeError, ValueError) as exc:
        if str(exc).startswith(f"{name}:"):
            raise TypeError(str(exc)) from None
        raise TypeError(f"{name}: expected an array of {dtype}, got {type(value).__name__} ({exc})") from None
    if array.dtype == dtype:  # the common case first: comparing dtypes is ~25x cheaper than dtype.name
        return array
    if array.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating-point array of {dtype}, got dtype {array.dtype}")
    native = array.dtype.newbyteorder("=")
    if native != dtype:
        other = f" or build the layer with dtype='{native}'" if native.name in ("float32", "float64") else ""
        raise TypeError(
            f"{name}: expected dtype {dtype} (the layer's dtype), got {array.dtype}; "
            f"convert with .astype('{dtype}'){other}"
        )
    check_call_memory(array, array.size, array.itemsize, "copy in the native byte order", name)
    return array.astype(dtype)  # non-native byte order: the same values, in the order the kernels read


def _array_from_sequence(value: list | tuple, name: str, dtype: str) -> np.ndarray:
    """A list or tuple as NumPy reads it, when that is ``dtype``: Python floats are float64, never float32 silently."""
    kind = type(value).__name__
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise TypeError(f"{name}: expected a rectangular nest of numbers, got a ragged {kind} ({exc})") from None
    except RuntimeError as exc:  # e.g. torch tensors inside that require grad
        raise TypeError(f"{name}: expected a nest of numbers, got a {kind} NumPy cannot read ({exc})") from None
    if array.dtype != dtype:
        raise TypeError(
            f"{name}: expected {dtype} values, got a {kind} that NumPy reads as {array.dtype}; "
            f"convert with numpy.asarray({name}, dtype='{dtype}')"
        )
    return array


def canonical_input(x: Any, *, input_size: int, batch_first: bool, dtype: str) -> tuple[Any, bool]:
    """Return x as a contiguous (T, B, I) array and whether the call is batched."""
    x = as_float_array(x, "x", dtype)
    if x.ndim not in (2, 3):
        raise ValueError(f"x: expected a 3-D (seq, batch, feature) array or a 2-D unbatched one, got shape {x.shape}")
    if x.shape[-1] != input_size:
        raise ValueError(f"x: expected {input_size} features in the last axis (input_size), got shape {x.shape}")
    batched = x.ndim == 3
    if not batched:
        x = x[:, None, :]
    elif batch_first:
        x = x.transpose(1, 0, 2)
    xp = array_module(x)
    if not x.flags.c_contiguous:  # a broadcast view may describe more values than memory holds
        check_call_memory(x, x.size, x.itemsize, "contiguous copy")
    return xp.ascontiguousarray(x), batched


def canonical_h0(h0: Any, *, shape: tuple[int, int, int], batched: bool, dtype: str, xp: Any, name: str = "h0") -> Any:
    """Return h0 as a contiguous (L*D, B, H) array; zeros when ``h0`` is None. ``name``: as the caller passed it."""
    if h0 is None:
        return xp.zeros(shape, dtype)
    h0 = as_float_array(h0, name, dtype)
    expected = shape if batched else (shape[0], shape[2])
    if tuple(h0.shape) != expected:
        what = (
            "(num_layers * num_directions, batch, hidden_size)"
            if batched
            else "(num_layers * num_directions, hidden_size) for unbatched x"
        )
        raise ValueError(f"{name}: expected shape {expected} {what}, got {tuple(h0.shape)}")
    if not batched:
        h0 = h0[:, None, :]
    return array_module(h0).ascontiguousarray(h0)


def integer_lengths(value: Any, name: str, *, batch: int, seq_len: int, scalar: bool = False) -> np.ndarray:
    """``value`` as an int64 host array of ``batch`` lengths in [0, seq_len], or an error naming ``name``.

    Any array kind (torch and CUDA arrays are copied to the host); a masked
    array is refused (its mask would be dropped); an empty list is no lengths
    of an empty batch, not float64 values. With ``scalar``, a single 0-d value
    stands for one sequence (an unbatched call's length).
    """
    if hasattr(value, "__cuda_array_interface__") or is_torch_tensor(value):
        value = to_host(value, name)
    refuse_masked(value, name)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{name}: expected a sequence of {batch} integers, got {type(value).__name__} ({exc})"
        ) from None
    if scalar and array.ndim == 0:
        array = array.reshape(1)
    if array.size == 0 and array.dtype == np.float64:  # np.asarray([]) is float64: no value, no wrong type
        array = array.astype(np.int64)
    if array.dtype == object:  # integers past 64 bits, or values of mixed kinds
        raise TypeError(f"{name}: expected integers that fit in 64 bits, got {value!r:.80}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integers, got dtype {array.dtype} ({value!r:.80})")
    if array.shape != (batch,):
        raise ValueError(f"{name}: expected {batch} lengths (one per sequence), got shape {array.shape}")
    if batch and (array.min() < 0 or array.max() > seq_len):
        raise ValueError(
            f"{name}: expected values in [0, {seq_len}] (0 <= length <= seq_len), "
            f"got min {array.min()} and max {array.max()}"
        )
    return array.astype(np.int64)


def canonical_lengths(lengths: Any, *, batch: int, seq_len: int, batched: bool) -> np.ndarray | None:
    """Return lengths as an int64 host array, or None when every sequence is full."""
    if lengths is None:
        return None
    array = integer_lengths(lengths, "lengths", batch=batch, seq_len=seq_len, scalar=not batched)
    return None if bool(np.all(array == seq_len)) else array


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` returns, as in torch: the layer's keys the state dict lacked, and its keys the
    layer has not. Both are empty after a strict load."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def load_parameters(
    state_dict: Any, shapes: dict[str, tuple[int, ...]], dtype: str, current: dict[str, np.ndarray], strict: Any
) -> tuple[dict[str, np.ndarray], IncompatibleKeys]:
    """A layer's parameters after loading ``state_dict``, and the keys that did not match.

    Each value for one of ``shapes``' keys is checked and copied
    (canonical_parameter); with ``strict`` every key must match (ValueError
    naming the others), else keys the state dict lacks keep their ``current``
    value and keys the layer lacks are ignored, as in torch. Nothing is
    changed here: the caller swaps the result in, all or nothing.
    """
    strict = check_bool(strict, "strict")
    if not hasattr(state_dict, "keys"):
        raise TypeError(f"state_dict: expected a mapping of parameter names to arrays, got {type(state_dict).__name__}")
    missing = [k for k in shapes if k not in state_dict]
    unexpected = [k for k in state_dict.keys() if k not in shapes]
    if strict and (missing or unexpected):
        raise ValueError(
            f"state_dict: keys do not match the layer: missing {missing}, unexpected {unexpected} "
            "(strict=False loads those that match)"
        )
    loaded = {
        k: canonical_parameter(state_dict[k], k, shape, dtype) if k in state_dict else current[k]
        for k, shape in shapes.items()
    }
    return loaded, IncompatibleKeys(missing, unexpected)


def canonical_parameter(value: Any, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A state-dict entry as a fresh contiguous host array of ``shape`` and ``dtype``."""
    refuse_masked(value, f"state_dict[{name!r}]")
    try:
        array = to_host(torch_values_on_host(value), f"state_dict[{name!r}]")
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"state_dict[{name!r}]: expected an array of shape {shape}, got {type(value).__name__} ({exc})"
        ) from None
    if array.dtype.kind not in "fiu":
        raise TypeError(f"state_dict[{name!r}]: expected a real numeric array, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"state_dict[{name!r}]: expected shape {shape}, got {array.shape}")
    with np.errstate(over="ignore"):  # (checked just below)
        result = aligned_copy(array, dtype)  # on a cache line: the kernels read parameters row by row
    if array.dtype.kind == "f" and array.dtype.itemsize > result.dtype.itemsize:
        overflowed = int(np.count_nonzero(np.isinf(result) & np.isfinite(array)))
        if overflowed:  # narrowing would store infinities where the caller had numbers
            largest = float(np.max(np.abs(array[np.isfinite(array)])))
            raise ValueError(
                f"state_dict[{name!r}]: expected values within {dtype}'s range (±{float(np.finfo(dtype).max):.3g}), "
                f"got {overflowed} beyond it (largest magnitude {largest:.3g})"
            )
    return result


_DTYPES = {name: np.dtype(name) for name in ("float32", "float64")}  # np.dtype(str) per call costs microseconds


def _backend_bug(backend: Any, what: str) -> Exception:
    from gru._errors import BackendError

    return BackendError(f"backend {backend.name or type(backend).__name__!r} returned {what} (a bug in the backend)")


def _check_arrays(backend: Any, what: str, arrays: list[tuple[str, Any, tuple[int, ...]]], dtype: str) -> None:
    for name, array, shape in arrays:
        got_shape, got_dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
        if got_shape is None or got_dtype is None:  # not an array at all
            got = "None" if array is None else f"a {type(array).__name__}, not an array"
            raise _backend_bug(backend, f"a {what} whose {name} is {got}; expected a {shape} {dtype} array")
        if tuple(got_shape) != shape or got_dtype != dtype:
            raise _backend_bug(
                backend, f"a {what} whose {name} is {tuple(got_shape)} {got_dtype}; expected {shape} {dtype}"
            )


def check_forward_result(backend: Any, request: Any, result: Any) -> None:
    """A backend's forward result, its shapes and dtypes, before the caller sees it.

    A third-party backend that returns float64 for float32, or the wrong
    shape, would otherwise pass it on silently (the conformance suite finds
    it, where the author runs it).
    """
    T, B, LD, H = request.seq_len, request.batch_size, len(request.weights), request.hidden_size
    output, h_n, dtype = result.output, result.h_n, _DTYPES.get(request.dtype)
    if (  # the common case, in about a microsecond
        not request.return_gates
        and getattr(output, "dtype", None) == dtype
        and getattr(h_n, "dtype", None) == dtype
        and getattr(output, "shape", None) == (T, B, request.num_directions * H)
        and getattr(h_n, "shape", None) == (LD, B, H)
    ):
        return
    arrays = [("output", output, (T, B, request.num_directions * H)), ("h_n", h_n, (LD, B, H))]
    if request.return_gates:
        arrays.append(("gates", result.gates, (LD, 3, T, B, H)))
    _check_arrays(backend, "forward result", arrays, request.dtype)


def check_backward_result(backend: Any, request: Any, grads: Any) -> None:
    """A backend's gradients with respect to x, h0 and every weight set, their shapes and dtypes."""
    if len(grads.weights) != len(request.weights):
        raise _backend_bug(
            backend,
            f"a backward result with {len(grads.weights)} weight gradient sets; expected {len(request.weights)}",
        )
    arrays = [("d_x", grads.d_x, tuple(request.x.shape)), ("d_h0", grads.d_h0, tuple(request.h0.shape))]
    for index, (g, w) in enumerate(zip(grads.weights, request.weights, strict=True)):
        for part in ("w_ih", "w_hh", "b_ih", "b_hh"):
            arrays.append((f"{part} gradient of weight set {index}", getattr(g, part), tuple(getattr(w, part).shape)))
    _check_arrays(backend, "backward result", arrays, request.dtype)
