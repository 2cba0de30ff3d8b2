"""Saving and loading layers: safetensors (the default) and ``.npz``.

Neither format can run code when read: safetensors is a JSON header plus
raw little-endian arrays, and ``.npz`` files are read with
``allow_pickle=False``. A layer's configuration travels as JSON, in the
safetensors metadata (``"gru.config"``) or as the ``__gru_config__`` entry of
an ``.npz``; files without it (a PyTorch ``nn.GRU`` state dict saved with
``safetensors.torch.save_file``, an ``np.savez(**state_dict)``) are read too:
the architecture follows from the parameter names and shapes.

Every problem with a file's content raises ``ValueError`` naming the file;
file-system problems (a missing file, a directory where a file should be)
raise the ``OSError`` subclass ``open()`` would, naming the caller's path;
a device, FIFO or socket is not written (``OSError``, EINVAL), and a symbolic
link is written through, staying a link (the file it points to is replaced,
so that file's folder must take a new file).
Files are written to a temporary file next to the target and moved into place
with ``os.replace``, so a save that fails leaves the previous file (or none),
never half of one.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np

CONFIG_KEY = "gru.config"
NPZ_CONFIG_KEY = "__gru_config__"
FORMAT_VERSION = 1
_GRU_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
_CELL_KEYS = ("input_size", "hidden_size", "bias")
_SHAPE_KEYS = ("input_size", "hidden_size", "num_layers", "bias", "bidirectional")  # decide the arrays' shapes
_LAYOUT_KEYS = ("num_layers", "bias", "bidirectional")  # decide the arrays' names
_GRU_NAME = re.compile(r"(weight|bias)_(ih|hh)_l(0|[1-9][0-9]{0,17})(_reverse)?")  # a bounded layer number for int()
_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_SHOWN = 8  # keys listed in a message; the rest are counted


def layer_config(layer: Any) -> dict[str, Any]:
    """The constructor arguments that rebuild ``layer`` (not its backend, which is machine-specific)."""
    from gru._layers import GRUCell

    kind = "GRUCell" if isinstance(layer, GRUCell) else "GRU"
    keys = _CELL_KEYS if kind == "GRUCell" else _GRU_KEYS
    config = {"class": kind, "format_version": FORMAT_VERSION}
    config.update({key: getattr(layer, key) for key in keys})
    config.update(reset_after=layer.reset_after, dtype=layer.dtype)
    return config


def _naming(exc: OSError, path: str) -> OSError:
    """``exc`` about ``path``: what ``open(path)`` would have said, not the temporary file it was about."""
    return exc if exc.errno is None else type(exc)(exc.errno, exc.strerror, path)


def names_a_directory(path: str) -> bool:
    """Whether ``path`` is a directory or ends in a separator (``out/``: one, whether or not it exists yet)."""
    return path.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)) or os.path.isdir(path)


_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file(path: str) -> str | None:
    """What ``path`` is (followed through symbolic links) when it exists and is neither a regular file nor a
    directory: a device, a FIFO, a socket. None otherwise.

    Saving refuses such a target: replacing it would destroy it (``/dev/null``
    made a regular file), and writing into it could block (a FIFO without a reader).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), None)


def _refuse_non_file_target(path: str) -> None:
    """Raise what ``open(path, "wb")`` would where ``path`` cannot be written: a directory, a missing folder,
    a read-only file.

    Checked before the temporary file is made, so the error names the caller's
    path rather than the temporary file (``os.replace`` would name both).
    """
    if not path:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.stat(os.path.join(directory, ""))  # the trailing separator makes a file there NotADirectoryError
    except OSError as exc:
        raise _naming(exc, path) from None
    if names_a_directory(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    kind = special_file(path)
    if kind is not None:
        raise OSError(errno.EINVAL, f"expected a regular file (or a new one) to write, got {kind}", path)
    # os.replace would swap a file its owner made read-only; open() refuses to write it
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def _make_temporary(directory: str, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file in ``directory``, open for writing, with the mode ``open()`` gives new files (0o666 less the umask).

    Unlike ``tempfile.mkstemp`` (0o600, then a chmod that needs the umask, which
    can only be read by setting it process-wide), the kernel applies the umask.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        name = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:
            continue


def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: a temporary file beside it, then ``os.replace``.

    A symbolic link stays a link: the file it points to is the one replaced.
    """
    _refuse_non_file_target(path)
    target = os.path.realpath(path) if os.path.islink(path) else path
    directory = os.path.dirname(os.path.abspath(target))
    try:
        fd, temporary = _make_temporary(directory, f".{os.path.basename(target)}.", ".tmp")
    except OSError as exc:  # e.g. a folder we may not write to
        raise _naming(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:  # a file saved over keeps its permissions (a private one stays private)
            os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass  # a new file: the mode open() would give it, made by _make_temporary
        os.replace(temporary, target)
    except BaseException as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename in (temporary, target):
            raise _naming(exc, path) from None
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
            if any(type(n) is not int or n < 0 for n in (*shape, begin, end)):
                raise ValueError(f"{name}: expected whole numbers >= 0 for its shape and offsets")
            count = math.prod(shape)  # exact: NumPy's int64 product wraps around for absurd shapes
            if end - begin != count * dtype.itemsize:
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
            others = [name for name in archive.zip.namelist() if not name.endswith(".npy")]
            if others:  # NumPy would hand their raw bytes out as if they were arrays
                raise _NotAnNpzError(others)
            for key in archive.files:
                value = archive[key]
                if key == NPZ_CONFIG_KEY:
                    if value.dtype.kind != "U" or value.ndim != 0:
                        raise ValueError(f"{NPZ_CONFIG_KEY} is not a string")
                    metadata[CONFIG_KEY] = str(value)
                else:
                    tensors[key] = value
    except _NotAnNpzError as exc:
        shown = ", ".join(repr(name) for name in exc.names[:3]) + (", ..." if len(exc.names) > 3 else "")
        torch_hint = (
            " (a torch.save file? load it with torch.load and pass the state dict)"
            if any(name.endswith("data.pkl") for name in exc.names)
            else ""
        )
        raise ValueError(
            f"{where}: a zip archive, but not an .npz of arrays: {shown} are not .npy members{torch_hint}"
        ) from None
    except Exception as exc:  # zipfile, zlib, NumPy's format reader: any failure means a bad file
        raise ValueError(f"{where}: corrupt, truncated or unreadable .npz file ({exc})") from None
    return tensors, metadata


class _NotAnNpzError(Exception):
    """A zip archive with members that are not .npy arrays."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.names = names


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


def _layout_from_names(names: Collection[str]) -> dict[str, Any] | None:
    """The class, layers, directions and bias that PyTorch parameter names describe (None: no such names).

    Read from every name, not only layer 0's, so a file that lacks one array is
    told it lacks that array, rather than that it is a smaller GRU with arrays
    to spare.
    """
    found = [match for match in map(_GRU_NAME.fullmatch, names) if match]
    if found:
        return {
            "class": "GRU",
            "num_layers": 1 + max(int(match[3]) for match in found),
            "bias": any(match[1] == "bias" for match in found),
            "bidirectional": any(match[4] for match in found),
        }
    if any(name in _CELL_NAMES for name in names):
        return {"class": "GRUCell", "bias": "bias_ih" in names or "bias_hh" in names}
    return None


def parameter_keys(layer: int | None, reverse: bool, bias: bool) -> tuple[str, str, str | None, str | None]:
    """PyTorch's state-dict names of one weight set, (w_ih, w_hh, b_ih, b_hh); None for the biases without bias.

    ``layer`` None names a GRUCell's (no ``_l{k}`` suffix).
    """
    tag = "" if layer is None else f"_l{layer}" + ("_reverse" if reverse else "")
    return (f"weight_ih{tag}", f"weight_hh{tag}", f"bias_ih{tag}" if bias else None, f"bias_hh{tag}" if bias else None)


def _parameter_names(kind: str, layers: int, directions: int, bias: bool) -> Iterator[str]:
    """The layer's keys in parameter order, made one at a time (``layers`` may be huge)."""
    blocks = [(None, False)] if kind == "GRUCell" else ((k, d == 1) for k in range(layers) for d in range(directions))
    for layer, reverse in blocks:
        yield from (name for name in parameter_keys(layer, reverse, bias) if name is not None)


def _is_parameter(kind: str, name: str, layers: int, directions: int, bias: bool) -> bool:
    if kind == "GRUCell":
        return name in _CELL_NAMES[: 4 if bias else 2]
    match = _GRU_NAME.fullmatch(name)
    return (
        bool(match) and int(match[3]) < layers and (bias or match[1] == "weight") and (directions == 2 or not match[4])
    )


def _listing(shown: list[str], total: int) -> str:
    return f"{sorted(shown)}" + (f" and {total - len(shown):,} more" if total > len(shown) else "")


def _key_mismatch(kind: str, config: dict[str, Any], names: Collection[str]) -> str | None:
    """What keeps ``names`` from being the keys of the layer ``config`` describes: counts, missing and unexpected keys.

    None when they match, or when the configuration's values are of the wrong
    type (left to the constructor's checks). Counted, not enumerated: a few
    bytes of metadata can ask for millions of layers.
    """
    layers = 1 if kind == "GRUCell" else config.get("num_layers", 1)
    bias = config.get("bias", True)
    bidirectional = False if kind == "GRUCell" else config.get("bidirectional", False)
    sizes = (layers, config.get("input_size"), config.get("hidden_size"))
    if any(type(n) is not int or n < 1 for n in sizes) or not isinstance(bias, bool):
        return None
    directions = 2 if bidirectional is True else 1
    need = layers * directions * (4 if bias else 2)
    unexpected = sorted(name for name in names if not _is_parameter(kind, name, layers, directions, bias))
    missing_count = need - (len(names) - len(unexpected))
    if not unexpected and not missing_count:
        return None
    missing = itertools.islice(
        (name for name in _parameter_names(kind, layers, directions, bias) if name not in names), _SHOWN
    )
    listed = [f"missing {_listing(list(missing), missing_count)}"] if missing_count else []
    listed += [f"unexpected {_listing(unexpected[:_SHOWN], len(unexpected))}"] if unexpected else []
    layout = (
        f"bias={bias}" if kind == "GRUCell" else f"num_layers={layers}, bidirectional={directions == 2}, bias={bias}"
    )
    return f"({layout}) needs {need:,} arrays; the file holds {len(names):,}: {', '.join(listed)}"


def _override_error(
    kind: str, changed: list[str], overrides: dict[str, Any], saved: dict[str, Any], path: str, detail: str
) -> ValueError:
    """The caller's keyword arguments, not the file, are what fails: name them, and what the file holds."""
    asked = repr(overrides[changed[0]]) if len(changed) == 1 else repr(tuple(overrides[key] for key in changed))
    holds = ", ".join(f"{key}={saved.get(key)!r}" for key in changed)
    verb = "does" if len(changed) == 1 else "do"
    return ValueError(
        f"{', '.join(changed)}: {asked} {verb} not fit {path!r}, which holds a {kind} with {holds}: {detail}"
    )


def _same(a: Any, b: Any) -> bool:
    """Whether an override equals the file's value (of the same type: no array comparisons)."""
    return type(a) is type(b) and a == b


def _shape_mismatch(layer: Any, tensors: dict[str, np.ndarray]) -> tuple[str, tuple, tuple] | None:
    """The first array whose shape is not the layer's: its key, its shape and the layer's (None: all fit)."""
    for key, shape in layer._parameter_shapes().items():
        if tuple(np.shape(tensors[key])) != shape:
            return key, tuple(np.shape(tensors[key])), shape
    return None


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
    from gru._validation import check_backend_choice

    path = _check_path(path)
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix: expected a str (such as 'encoder.rnn.') or None, got {type(prefix).__name__}")
    check_backend_choice(backend)
    where = f"path: {path!r}"
    with open(path, "rb") as handle:
        data = handle.read()
    # a zip file starts with a local file header; an empty one (np.savez() of nothing) with its end record
    npz = data[:4] in (b"PK\x03\x04", b"PK\x05\x06")
    tensors, metadata = _read_npz(data, where) if npz else _read_safetensors(data, where)

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
        described = "its configuration describes"
    else:
        if not tensors:
            form = ".npz" if npz else "safetensors"
            raise ValueError(
                f"{where}: holds no arrays (an empty {form} file); expected a GRU's or GRUCell's parameters"
            )
        tensors = _select_prefix(tensors, prefix, where)
        layout = _layout_from_names(tensors)
        try:
            config = interop.config_from_state_dict({k: tuple(v.shape) for k, v in tensors.items()})
        except ValueError as exc:
            # names that lack the arrays which size the layer: say which are missing
            mismatch = layout and _key_mismatch(layout["class"], {**layout, "input_size": 1, "hidden_size": 1}, tensors)
            if mismatch:
                raise ValueError(
                    f"{where}: its arrays do not match the {layout['class']} its keys describe {mismatch}"
                ) from None
            raise ValueError(f"{where}: {exc}") from None
        if layout is not None and layout["class"] == config["class"]:
            config.update((key, value) for key, value in layout.items() if key in config)
        if any(value.dtype == np.float64 for value in tensors.values()):
            config["dtype"] = "float64"
        described = "its keys describe"

    kind = config.pop("class")
    allowed = {*(_CELL_KEYS if kind == "GRUCell" else _GRU_KEYS), "reset_after", "dtype"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"{where}: its configuration has unknown entries {unknown}")
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise TypeError(f"load: {bad} cannot be set for a {kind}; expected some of {sorted(allowed)}")
    saved = dict(config)
    changed = [key for key in _SHAPE_KEYS if key in overrides and not _same(overrides[key], saved.get(key))]
    config.update(overrides)
    mismatch = _key_mismatch(kind, config, tensors)
    if mismatch:
        if any(key in _LAYOUT_KEYS for key in changed):
            layout_changed = [key for key in changed if key in _LAYOUT_KEYS]
            raise _override_error(kind, layout_changed, overrides, saved, path, f"a {kind} {mismatch}")
        raise ValueError(f"{where}: its arrays do not match the {kind} {described} {mismatch}")
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
        wrong = _shape_mismatch(layer, tensors) if changed else None
        if wrong:
            asked = ", ".join(f"{key}={overrides[key]!r}" for key in changed)
            detail = f"its {wrong[0]} has shape {wrong[1]}; with {asked} it would need {wrong[2]}"
            raise _override_error(kind, changed, overrides, saved, path, detail) from None
        raise ValueError(f"{where}: its arrays do not match the {kind} it describes: {exc}") from None
    return layer
