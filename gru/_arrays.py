"""Arrays in, arrays out: the array protocols gru speaks.

Everything a backend sees is a NumPy array (host) or a CuPy array (CUDA).
This module turns what a user passes into one of those, sharing memory
where the source allows it, and turns results back into the user's type:

======================================  ===================================  ===========================
what comes in                           how it is read                       what comes back
======================================  ===================================  ===========================
``numpy.ndarray``                       as is                                NumPy
CuPy array, ``__cuda_array_interface__`` ``cupy.asarray`` (no copy)           CuPy
``torch.Tensor`` on the CPU             ``Tensor.numpy()`` (no copy)         ``torch.Tensor`` (no copy)
``torch.Tensor`` on CUDA                through CuPy (no copy)               ``torch.Tensor`` on CUDA
other objects with ``__dlpack__``       ``numpy.from_dlpack`` (no copy)      their namespace's
                                                                             ``from_dlpack`` when they
                                                                             have ``__array_namespace__``,
                                                                             else NumPy
lists, scalars, ``__array__`` objects   ``numpy.asarray``                    NumPy
======================================  ===================================  ===========================

Torch is never imported here: a tensor can only exist once its user has
imported torch, so ``sys.modules`` tells whether a value can be one.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

_DLPACK_CPU = 1
_DLPACK_CUDA = 2


CACHE_LINE = 64  # bytes


def aligned_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """NumPy zeros whose data starts on a cache-line boundary.

    Threads that write neighbouring slices of one row (the compiled kernels
    give each thread whole cache lines of hidden units) then never write the
    same line. Off by 16 bytes, the workspace and output of (128,128,1,200)
    made a 2-thread call 1.47x slower, (256,256,1,500) 1.09-1.26x.
    """
    return _on_a_line(np.zeros, shape, dtype)


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """aligned_zeros without the zeros, for a buffer its writer fills whole: the 13 MB output of
    (512,512,64,100) left uninitialized made 50 ms calls 0.4-0.5 ms faster (Zen 5, alternating calls)."""
    return _on_a_line(np.empty, shape, dtype)


def _on_a_line(make: Callable[..., np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = make(nbytes + CACHE_LINE, np.uint8)
    # the address in 0.2 us (raw.__array_interface__ builds a dict, .ctypes.data an object: 0.8-1 us)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(raw)) % CACHE_LINE
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def aligned_copy(array: Any, dtype: Any = None) -> np.ndarray:
    """A C-contiguous copy of ``array`` that starts on a cache line (see aligned_zeros), in ``dtype`` if given.

    For weights read at every step: 16 bytes past a line, every 64-byte row
    load of an AVX-512 kernel spans two lines. At (512,512,64,100), with
    W_hh's panels 32 or 48 bytes past a line, calls took 55-59 ms against
    50-51 when they started on one. A conversion is cast straight into the
    copy (unsafe casting, as ``astype``): no second array at any time.
    """
    out = aligned_zeros(array.shape, array.dtype if dtype is None else dtype)
    np.copyto(out, array, casting="unsafe")
    return out


def read_only(array: np.ndarray) -> np.ndarray:
    """A view of ``array`` that cannot be written: how layers show their parameters (changed by load_state_dict)."""
    view = array.view()
    view.flags.writeable = False
    return view


def on_cache_line(array: np.ndarray) -> np.ndarray:
    """``array`` itself if it is C-contiguous and starts on a cache line, else an aligned copy."""
    if array.flags.c_contiguous and array.__array_interface__["data"][0] % CACHE_LINE == 0:
        return array
    return aligned_copy(array)


def _torch_tensor_type() -> type | None:
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def is_torch_tensor(value: Any) -> bool:
    tensor = _torch_tensor_type()
    return tensor is not None and isinstance(value, tensor)


def _cupy(name: str) -> Any:
    try:
        import cupy
    except ImportError:
        raise TypeError(
            f"{name}: got an array in CUDA memory, which needs CuPy to read (pip install cupy-cuda12x), "
            "or move it to the host first"
        ) from None
    return cupy


def check_torch_input(value: Any, name: str) -> None:
    """Refuse a tensor gru cannot read (not on the CPU or a CUDA device) or should not (one that requires grad)."""
    device = value.device.type
    if device not in ("cpu", "cuda"):
        raise TypeError(f"{name}: expected a tensor on the CPU or a CUDA device, got one on {device!r}")
    if value.requires_grad and sys.modules["torch"].is_grad_enabled():
        # torch's own tensor.numpy() refuses it too: the results could carry no gradient back to it
        raise TypeError(
            f"{name}: expected a tensor that does not require grad, got one with requires_grad=True; gru is not "
            f"part of torch's autograd, so no gradient would reach it: pass {name}.detach() (gru's layers give "
            "gradients through their backward()), call under torch.no_grad(), or train in torch with GRU.to_torch()"
        )


def _from_torch(value: Any, name: str) -> Any:
    check_torch_input(value, name)
    tensor = value.detach()  # no autograd; shares memory
    if tensor.device.type == "cpu":
        tensor = tensor.resolve_conj().resolve_neg()  # no-ops unless a lazy view is pending
        try:
            return tensor.numpy()
        except TypeError as exc:  # e.g. bfloat16 has no NumPy dtype
            raise TypeError(f"{name}: torch dtype {tensor.dtype} has no NumPy equivalent ({exc})") from None
    return _cupy(name).asarray(tensor)


def refuse_masked(value: Any, name: str, hint: str = "pass the values you mean with .filled(value)") -> None:
    """Raise ``TypeError`` for a NumPy masked array: every conversion would drop its mask and keep the hidden values."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name}: expected a plain array, got a masked array (its mask would be ignored); {hint}")


def as_array(value: Any, name: str) -> Any:
    """``value`` as a NumPy or CuPy array, sharing its memory where the protocol allows.

    Raises ``TypeError`` or ``ValueError`` (from NumPy) for what is not an array
    (a masked array included: see refuse_masked); callers add the context.
    Dtype and shape are not checked here.
    """
    if isinstance(value, np.ndarray):
        refuse_masked(value, name)
        return value
    if is_torch_tensor(value):
        return _from_torch(value, name)
    if hasattr(value, "__cuda_array_interface__"):
        return _cupy(name).asarray(value)
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        device = value.__dlpack_device__()[0]
        if device == _DLPACK_CUDA:
            return _cupy(name).from_dlpack(value)
        if device == _DLPACK_CPU:
            try:
                return np.from_dlpack(value)
            except (BufferError, TypeError, RuntimeError):
                pass  # e.g. a dtype DLPack cannot describe: let __array__ try
    return np.asarray(value)


def torch_values_on_host(value: Any) -> Any:
    """A torch tensor's values on the host, bfloat16 (which NumPy lacks) widened exactly to float32; else ``value``.

    For values gru copies into its own precision anyway (parameters,
    gradients); an input keeps the caller's dtype, so ``as_array`` refuses
    bfloat16 rather than widen it.
    """
    if not is_torch_tensor(value) or value.device.type == "meta":
        return value  # a meta tensor has no data to copy: as_array names its device
    tensor = value.detach().cpu()
    return tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor


def to_host(value: Any, name: str) -> np.ndarray:
    """``value`` as a NumPy array on the host (copies device memory)."""
    array = as_array(value, name)
    if not isinstance(array, np.ndarray):
        array = array.get()
    return array


def returner(value: Any) -> Callable[[Any], Any]:
    """A function that gives a result (NumPy or CuPy) back in the type of ``value``.

    Results are fresh arrays, so handing their memory to another library is safe.
    """
    if isinstance(value, np.ndarray) or value is None:
        return _same
    if is_torch_tensor(value):
        return _to_torch
    namespace = getattr(value, "__array_namespace__", None)
    if namespace is not None and hasattr(value, "__dlpack__"):
        try:
            xp = namespace()
        except Exception:
            return _same
        if getattr(xp, "__name__", "") in ("numpy", "cupy"):
            return _same
        from_dlpack = getattr(xp, "from_dlpack", None)
        if from_dlpack is not None:
            return lambda result: from_dlpack(_contiguous_if_reversed(result))
    return _same


def _same(result: Any) -> Any:
    return result


def _contiguous_if_reversed(result: Any) -> Any:
    """A copy when some stride is negative: DLPack and torch.from_numpy refuse those."""
    if any(stride < 0 for stride in result.strides):
        return result.copy()
    return result


def _to_torch(result: Any) -> Any:
    torch = sys.modules["torch"]
    result = _contiguous_if_reversed(result)
    if isinstance(result, np.ndarray):
        if not result.flags.writeable:
            result = result.copy()
        return torch.from_numpy(result)
    return torch.from_dlpack(result)
