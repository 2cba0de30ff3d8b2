"""Saving and loading layers: safetensors (the default) and ``.npz``.

Neither format can run code when read: safetensors is a JSON header plus
raw little-endian arrays, and ``.npz`` files are read with
``allow_pickle=False``. A layer's configuration travels as JSON, in the
safetensors metadata (``"gru.config"``) or as the ``__gru_config__`` entry of
an ``.npz``; files without it (a PyTorch ``nn.GRU`` state dict saved with
``safetensors.torch.save_file``, an ``np.savez(**state_dict)``) are read too:
the architecture follows from the parameter names and shapes.

Every problem with a file's content raises ``ValueError`` naming the file;
a missing file raises ``FileNotFoundError``. Files are written to a temporary
file next to the target and moved into place with ``os.replace``, so a save
that fails leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

import numpy as np

CONFIG_KEY = "gru.config"
NPZ_CONFIG_KEY = "__gru_config__"
FORMAT_VERSION = 1
_GRU_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
_CELL_KEYS = ("input_size", "hidden_size", "bias")


def layer_config(layer: Any) -> dict[str, Any]:
    """The constructor arguments that rebuild ``layer`` (not its backend, which is machine-specific)."""
    from gru._layers import GRUCell

    kind = "GRUCell" if isinstance(layer, GRUCell) else "GRU"
    keys = _CELL_KEYS if kind == "GRUCell" else _GRU_KEYS
    config = {"class": kind, "format_version": FORMAT_VERSION}
    config.update({key: getattr(layer, key) for key in keys})
    config.update(reset_after=layer.reset_after, dtype=layer.dtype)
    return config


def _atomic_write(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def save(layer: Any, path: str | os.PathLike) -> None:
    """Write ``layer``'s parameters and configuration to ``path`` (``.npz``: NumPy's format; else safetensors)."""
    path = _check_path(path)
    config = json.dumps(layer_config(layer))
    tensors = layer.state_dict()
    if path.lower().endswith(".npz"):
        buffer = io.BytesIO()
        np.savez(buffer, **{NPZ_CONFIG_KEY: np.array(config)}, **tensors)
        data = buffer.getvalue()
    else:
        from safetensors.numpy import save as to_safetensors

        from gru import __version__

        data = to_safetensors(tensors, metadata={"format": "np", CONFIG_KEY: config, "gru.version": __version__})
    _atomic_write(path, data)


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path (str or os.PathLike), got {type(path).__name__}")
    return os.fspath(path)


# -- reading ------------------------------------------------------------------------------------


def _read_safetensors(data: bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if len(data) < 8:
        raise ValueError(f"{where}: not a safetensors or .npz file ({len(data)} bytes, too short for a header)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise ValueError(
            f"{where}: truncated or not a safetensors file (its header claims {size} bytes, the file has {len(data)})"
        )
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{where}: not a safetensors or .npz file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: corrupt safetensors header (expected a JSON object)")
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: corrupt safetensors metadata (expected a JSON object)")
    if any(isinstance(entry, dict) and entry.get("dtype") == "BF16" for entry in header.values()):
        return _read_bfloat16_safetensors(data, 8 + size, header, where), metadata
    from safetensors.numpy import load as from_safetensors

    try:
        tensors = from_safetensors(data)
    except Exception as exc:  # the Rust parser's SafetensorError and friends
        raise ValueError(f"{where}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None
    return tensors, metadata


_FLOATS = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def _read_bfloat16_safetensors(data: bytes, start: int, header: dict, where: str) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file that holds bfloat16 ones (PyTorch's), those widened to float32 exactly.

    NumPy has no bfloat16, so safetensors' NumPy reader refuses the file; a
    bfloat16 is the top half of a float32, which is how it is widened.
    """
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        kind = entry.get("dtype") if isinstance(entry, dict) else None
        if isinstance(kind, str) and kind not in _FLOATS:
            raise ValueError(f"{where}: {name} holds {kind} values; gru reads float64, float32, float16 and bfloat16")
        try:
            dtype, shape, (begin, end) = _FLOATS[kind], tuple(entry["shape"]), entry["data_offsets"]
            count = int(np.prod(shape, dtype=np.int64))
            if any(type(n) is not int or n < 0 for n in (*shape, begin, end)) or end - begin != count * dtype.itemsize:
                raise ValueError(f"{name}: its offsets do not hold {shape} values")
            if start + end > len(data):
                raise ValueError(f"{name}: past the end of the file")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None
        values = np.frombuffer(data, dtype, count, start + begin).reshape(shape)
        if kind == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = values.copy()
    return tensors


def _read_npz(data: bytes, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tensors, metadata = {}, {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            for key in archive.files:
                value = archive[key]
                if key == NPZ_CONFIG_KEY:
                    if value.dtype.kind != "U" or value.ndim != 0:
                        raise ValueError(f"{NPZ_CONFIG_KEY} is not a string")
                    metadata[CONFIG_KEY] = str(value)
                else:
                    tensors[key] = value
    except Exception as exc:  # zipfile, zlib, NumPy's format reader: any failure means a bad file
        raise ValueError(f"{where}: corrupt, truncated or unreadable .npz file ({exc})") from None
    return tensors, metadata


def _select_prefix(tensors: dict[str, np.ndarray], prefix: str | None, where: str) -> dict[str, np.ndarray]:
    """Keep the entries under ``prefix`` (found when there is exactly one GRU in the file), without it."""
    if prefix is None:
        found = sorted(
            {key[: -len("weight_ih_l0")] for key in tensors if key.endswith("weight_ih_l0")}
            | {key[: -len("weight_ih")] for key in tensors if key.endswith("weight_ih")}
        )
        if len(found) > 1:
            raise ValueError(f"{where}: holds several GRUs (prefixes {found}); pass prefix= to choose one")
        prefix = found[0] if found else ""
    if not prefix:
        return tensors
    selected = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
    if not selected:
        raise ValueError(f"{where}: no entry starts with prefix {prefix!r}")
    return selected


def _check_array_count(config: dict[str, Any], count: int, where: str) -> None:
    """Refuse a configuration that needs more or fewer arrays than the file holds, before building its layer.

    A few bytes of metadata can ask for millions of layers, gigabytes to build
    before the arrays could be found missing. Values of the wrong type are
    left to the constructor's checks.
    """
    layers, bias = config.get("num_layers", 1), config.get("bias", True)
    directions = 2 if config.get("bidirectional", False) is True else 1
    sizes = (layers, config.get("input_size"), config.get("hidden_size"))
    if any(type(n) is not int or n < 1 for n in sizes) or not isinstance(bias, bool):
        return
    need = layers * directions * (4 if bias else 2)
    if need != count:
        raise ValueError(
            f"{where}: its configuration (num_layers={layers}, bidirectional={directions == 2}, bias={bias}) "
            f"needs {need:,} arrays; the file holds {count:,}"
        )


def load(
    path: str | os.PathLike,
    *,
    prefix: str | None = None,
    backend: Any = None,
    **overrides: Any,
) -> Any:
    """Read a layer saved with ``m.save(path)`` (safetensors or ``.npz``), or a PyTorch-keyed state dict file.

    Returns a :class:`~gru.GRU` or :class:`~gru.GRUCell`. ``prefix`` picks one
    GRU from a file that holds several (``"encoder.rnn."``); keyword arguments
    override the configuration (e.g. ``batch_first=True`` for a bare state
    dict). Nothing is unpickled; a corrupt, truncated or mismatched file raises
    ``ValueError``.
    """
    from gru import interop
    from gru._layers import GRU, GRUCell
    from gru.backends._base import Backend

    path = _check_path(path)
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix: expected a str (such as 'encoder.rnn.') or None, got {type(prefix).__name__}")
    if backend is not None and not isinstance(backend, (str, Backend)):
        raise TypeError(f"backend: expected a backend name, a Backend or None, got {backend!r}")
    where = f"path: {path!r}"
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] == b"PK\x03\x04":
        tensors, metadata = _read_npz(data, where)
    else:
        tensors, metadata = _read_safetensors(data, where)

    if CONFIG_KEY in metadata:
        try:
            config = json.loads(metadata[CONFIG_KEY])
        except ValueError:
            raise ValueError(f"{where}: its {CONFIG_KEY!r} metadata is not JSON") from None
        if not isinstance(config, dict) or config.get("class") not in ("GRU", "GRUCell"):
            raise ValueError(f"{where}: its {CONFIG_KEY!r} metadata describes no GRU or GRUCell: {config!r:.200}")
        version = config.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"{where}: written in format version {version!r}; this gru reads {FORMAT_VERSION}")
        if prefix is not None:
            tensors = _select_prefix(tensors, prefix, where)
    else:
        tensors = _select_prefix(tensors, prefix, where)
        try:
            config = interop.config_from_state_dict({k: tuple(v.shape) for k, v in tensors.items()})
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if any(value.dtype == np.float64 for value in tensors.values()):
            config["dtype"] = "float64"

    kind = config.pop("class")
    allowed = {*(_CELL_KEYS if kind == "GRUCell" else _GRU_KEYS), "reset_after", "dtype"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{where}: its configuration has unknown entries {unknown}")
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise TypeError(f"load: {bad} cannot be set for a {kind}; expected some of {sorted(allowed)}")
    config.update(overrides)
    _check_array_count(config, len(tensors), where)
    cls = GRUCell if kind == "GRUCell" else GRU
    try:
        layer = cls(**config, backend=backend, seed=0)
    except (TypeError, ValueError) as exc:
        if str(exc).split(":", 1)[0] in overrides:
            raise  # the caller's keyword argument is wrong, not the file
        raise ValueError(f"{where}: its configuration does not make a {kind}: {exc}") from None
    try:
        layer.load_state_dict(tensors)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: its arrays do not match the {kind} it describes: {exc}") from None
    return layer
