"""Files: m.save / gru.load in safetensors and .npz; corrupt, truncated and mismatched files; atomic writes."""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import pytest

import gru
from gru import _io

I, H, T, B = 3, 4, 5, 2

pytest.importorskip("safetensors")


def normal(*shape, dtype="float32", seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def assert_same_layer(a, b):
    assert repr(a) == repr(b)
    assert list(a.state_dict()) == list(b.state_dict())
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)


LAYERS = [
    lambda: gru.GRU(I, H, seed=0),
    lambda: gru.GRU(I, H, num_layers=2, bidirectional=True, batch_first=True, dropout=0.3, seed=1),
    lambda: gru.GRU(I, H, num_layers=3, bias=False, reset_after=False, dtype="float64", seed=2),
    lambda: gru.GRUCell(I, H, seed=3),
    lambda: gru.GRUCell(I, H, bias=False, reset_after=False, dtype="float64", seed=4),
]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("suffix", [".safetensors", ".npz", ""])
def test_round_trip(tmp_path, make, suffix):
    layer = make()
    path = tmp_path / f"layer{suffix}"
    layer.save(path)
    loaded = gru.load(path)
    assert type(loaded) is type(layer)
    assert_same_layer(layer, loaded)
    x = normal(T, B, I, dtype=layer.dtype) if isinstance(layer, gru.GRU) else normal(B, I, dtype=layer.dtype)
    np.testing.assert_array_equal(np.asarray(loaded(x)[0]), np.asarray(layer(x)[0]))


def test_safetensors_file_is_standard(tmp_path):
    """Other tools read it: safetensors' own reader sees the tensors and the JSON configuration."""
    from safetensors import safe_open

    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, seed=0)
    layer.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="numpy") as f:
        config = json.loads(f.metadata()["gru.config"])
        assert config["class"] == "GRU" and config["num_layers"] == 2 and config["bidirectional"] is True
        assert sorted(f.keys()) == sorted(layer.state_dict())
        np.testing.assert_array_equal(f.get_tensor("weight_hh_l1_reverse"), layer.weight_hh_l1_reverse)


def test_load_keyword_overrides_and_backend(tmp_path):
    gru.GRU(I, H, seed=0).save(tmp_path / "m.safetensors")
    layer = gru.load(tmp_path / "m.safetensors", batch_first=True, backend="numpy")
    assert layer.batch_first and layer.backend == "numpy"
    with pytest.raises(TypeError, match=r"^load"):
        gru.load(tmp_path / "m.safetensors", colour="red")


def test_plain_state_dicts(tmp_path):
    """A PyTorch state dict saved by other tools: the architecture follows from names and shapes."""
    from safetensors.numpy import save_file

    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, bias=False, seed=0)
    state = layer.state_dict()
    save_file(state, str(tmp_path / "plain.safetensors"))
    np.savez(tmp_path / "plain.npz", **state)
    for name in ("plain.safetensors", "plain.npz"):
        assert_same_layer(layer, gru.load(tmp_path / name))
    # a whole model's state dict: the GRU found by its prefix
    model = {f"encoder.rnn.{k}": v for k, v in state.items()} | {"head.weight": normal(2, 2 * H)}
    save_file(model, str(tmp_path / "model.safetensors"))
    assert_same_layer(layer, gru.load(tmp_path / "model.safetensors"))
    two = model | {f"decoder.rnn.{k}": v for k, v in state.items()}
    save_file(two, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match="several GRUs"):
        gru.load(tmp_path / "two.safetensors")
    assert_same_layer(layer, gru.load(tmp_path / "two.safetensors", prefix="decoder.rnn."))
    with pytest.raises(ValueError, match="prefix"):
        gru.load(tmp_path / "two.safetensors", prefix="nothing.")
    cell = gru.GRUCell(I, H, seed=0)
    np.savez(tmp_path / "cell.npz", **cell.state_dict())
    assert_same_layer(cell, gru.load(tmp_path / "cell.npz"))


def test_torch_saved_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    module = torch.nn.GRU(I, H, num_layers=2, batch_first=True)
    save_file(module.state_dict(), str(tmp_path / "torch.safetensors"))
    layer = gru.load(tmp_path / "torch.safetensors", batch_first=True)
    x = normal(B, T, I)
    with torch.no_grad():
        expected, _ = module(torch.from_numpy(x))
    np.testing.assert_allclose(layer(x)[0], expected.numpy(), atol=1e-5)


# -- bad files ------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "good.safetensors"
    gru.GRU(I, H, num_layers=2, bidirectional=True, seed=0).save(path)
    return path


def write(path, data):
    path.write_bytes(data)
    return path


def test_truncated_files_raise_value_error(tmp_path, saved):
    data = saved.read_bytes()
    cuts = sorted({0, 1, 7, 8, 9, 50, len(data) // 2, len(data) - 1, *range(0, len(data), max(1, len(data) // 40))})
    for cut in cuts:
        with pytest.raises(ValueError, match=r"^path: "):
            gru.load(write(tmp_path / "cut.safetensors", data[:cut]))
    npz = tmp_path / "good.npz"
    gru.GRU(I, H, seed=0).save(npz)
    data = npz.read_bytes()
    for cut in range(4, len(data), max(1, len(data) // 40)):
        with pytest.raises(ValueError, match=r"^path: "):
            gru.load(write(tmp_path / "cut.npz", data[:cut]))


def test_corrupt_files_raise_value_error(tmp_path, saved):
    data = bytearray(saved.read_bytes())
    size = int.from_bytes(data[:8], "little")
    cases = {
        "random": os.urandom(300),
        "zeros": bytes(300),
        "huge header length": (2**62).to_bytes(8, "little") + b"{}",
        "header not JSON": size.to_bytes(8, "little") + b"x" * size + bytes(data[8 + size :]),
        "header a list": (2).to_bytes(8, "little") + b"[]",
        "text": b"hello, this is not a weights file" * 10,
    }
    header = json.loads(data[8 : 8 + size])
    first = next(k for k in header if k != "__metadata__")
    bad_offsets = dict(header)
    bad_offsets[first] = dict(header[first], data_offsets=[0, 10**9])
    cases["offsets past the end"] = _with_header(data, bad_offsets)
    bad_dtype = dict(header)
    bad_dtype[first] = dict(header[first], dtype="Q99")
    cases["unknown dtype"] = _with_header(data, bad_dtype)
    for content in cases.values():
        with pytest.raises(ValueError, match=r"^path: "):
            gru.load(write(tmp_path / "bad.safetensors", bytes(content)))


def _with_header(data, header):
    size = int.from_bytes(data[:8], "little")
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + bytes(data[8 + size :])


def _metadata_file(tmp_path, config, tensors):
    from safetensors.numpy import save_file

    path = tmp_path / "meta.safetensors"
    metadata = {"gru.config": config if isinstance(config, str) else json.dumps(config)}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, t: ("{not json", t), "not JSON"),
        (lambda c, t: (dict(c, **{"class": "LSTM"}), t), "no GRU"),
        (lambda c, t: (dict(c, hidden_size=H + 1), t), "do not match"),  # shapes disagree with the config
        (lambda c, t: (dict(c, num_layers=3), t), "needs 12 arrays; the file holds 4"),
        (lambda c, t: (dict(c, num_layers=10**9), t), "needs 4,000,000,000 arrays"),  # at once, not after GBs
        (lambda c, t: (dict(c, hidden_size="four"), t), "configuration"),
        (lambda c, t: (dict(c, colour="red"), t), "unknown entries"),
        (lambda c, t: (dict(c, format_version=99), t), "format version"),
        (lambda c, t: (c, {k: v for k, v in t.items() if k != "bias_hh_l0"}), "the file holds 3"),
        (lambda c, t: (c, t | {"extra": np.zeros(3, "float32")}), "the file holds 5"),
        (lambda c, t: (c, {"extra" if k == "bias_hh_l0" else k: v for k, v in t.items()}), "do not match"),
        (lambda c, t: (c, t | {"bias_hh_l0": np.zeros(3 * H, bool)}), "do not match"),
    ],
)
def test_mismatched_files_raise_value_error(tmp_path, change, message):
    layer = gru.GRU(I, H, seed=0)
    config, tensors = change(_io.layer_config(layer), layer.state_dict())
    with pytest.raises(ValueError, match=rf"^path: .*{message}"):
        gru.load(_metadata_file(tmp_path, config, tensors))


class Trap:
    """Unpickling this would flip ``triggered``: loading must never get that far."""

    triggered = False

    def __reduce__(self):
        return (_trip, ())


def _trip():
    Trap.triggered = True
    return 0


def test_a_zip_that_is_not_an_npz_of_arrays_is_refused(tmp_path):
    """NumPy hands a zip's other members out as raw bytes; they must not reach the layer as arrays."""
    import zipfile

    path = tmp_path / "m.npz"
    gru.GRU(I, H).save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("README.txt", "not an array")
    with pytest.raises(ValueError, match=r"^path: .*not an \.npz of arrays: 'README\.txt' are not \.npy members$"):
        gru.load(path)


def test_a_torch_save_file_is_refused_with_a_hint(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save(torch.nn.GRU(I, H).state_dict(), path)
    with pytest.raises(ValueError, match=r"^path: .*not an \.npz of arrays: .*data\.pkl.*a torch\.save file\?"):
        gru.load(path)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    state = gru.GRU(I, H, seed=0).state_dict()
    path = tmp_path / "pickled.npz"
    np.savez(path, **(state | {"bias_hh_l0": np.array([Trap()], dtype=object)}))
    with pytest.raises(ValueError, match=r"^path: "):
        gru.load(path)
    assert not Trap.triggered


def test_missing_file_and_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        gru.load(tmp_path / "nothing.safetensors")
    with pytest.raises(TypeError, match=r"^path"):
        gru.load(42)
    with pytest.raises(TypeError, match=r"^path"):
        gru.GRU(I, H).save(None)


# -- atomic writes --------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "m.safetensors"
    old = gru.GRU(I, H, seed=0)
    old.save(path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, failing, fail)
    with pytest.raises(OSError, match="disk full"):
        gru.GRU(I, H, seed=1).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary file left behind
    assert_same_layer(old, gru.load(path))


def test_saved_files_get_a_normal_mode(tmp_path):
    path = tmp_path / "m.safetensors"
    gru.GRU(I, H).save(path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_saving_over_a_file_keeps_its_permissions(tmp_path, mode):
    """A private file saved over must not become readable by everyone."""
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")
    path.chmod(mode)
    gru.GRU(I, H).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert gru.load(path).hidden_size == H


def test_bfloat16_safetensors_from_torch_load_widened_exactly(tmp_path):
    """PyTorch saves bfloat16 models; NumPy has no bfloat16. Each value widens to float32 exactly."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    state = {k: v.bfloat16() for k, v in torch.nn.GRU(I, H, num_layers=2).state_dict().items()}
    state["weight_hh_l1"][0, :3] = torch.tensor([float("inf"), -0.0, 1e-40])  # specials and a denormal survive
    save_file(state, str(tmp_path / "bf16.safetensors"))
    layer = gru.load(tmp_path / "bf16.safetensors")
    assert layer.dtype == "float32" and layer.num_layers == 2
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, state[key].float().numpy(), err_msg=key)


def test_bfloat16_safetensors_with_bad_entries_raise_value_error(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    state = {k: v.bfloat16() for k, v in torch.nn.GRU(I, H).state_dict().items()}
    save_file({**state, "steps": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "ints.safetensors"))
    with pytest.raises(ValueError, match=r"^path: .*steps holds I64 values"):
        gru.load(tmp_path / "ints.safetensors")
    save_file(state, str(tmp_path / "cut.safetensors"))
    data = (tmp_path / "cut.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-2])
    with pytest.raises(ValueError, match=r"^path: .*corrupt or truncated"):
        gru.load(tmp_path / "cut.safetensors")


def test_a_bfloat16_entry_whose_shape_overflows_64_bits_is_corrupt(tmp_path):
    """2**40 x 2**40 values: an int64 product wraps to 0, which matched the empty offsets [0, 0]."""
    header = {"weight_ih_l0": {"dtype": "BF16", "shape": [2**40, 2**40], "data_offsets": [0, 0]}}
    text = json.dumps(header).encode()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text)
    with pytest.raises(ValueError, match=r"^path: .*corrupt or truncated.*offsets do not hold"):
        gru.load(path)


# -- saving where no file can be: the error open() would give, naming the caller's path --------------


def _open_error(path):
    """The oracle: what open(path, "wb") raises (it creates nothing for these paths)."""
    with pytest.raises(OSError) as info:
        open(path, "wb")
    return info.value


def _listing(folder):
    return sorted(os.listdir(folder.parent)), sorted(str(p) for p in folder.rglob("*"))


@pytest.mark.parametrize("target", [".", "d1", "d1/", "d1//", "missing/m.safetensors", "file/m.safetensors", "file/"])
@pytest.mark.parametrize("writer", ["save", "to_onnx"])
def test_saving_to_a_directory_raises_what_open_raises(tmp_path, monkeypatch, target, writer):
    if writer == "to_onnx":
        pytest.importorskip("onnx")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d1").mkdir()
    (tmp_path / "file").write_text("a file, not a folder")
    expected = _open_error(target)
    before = _listing(tmp_path)
    with pytest.raises(OSError) as info:
        getattr(gru.GRU(I, H, seed=0), writer)(target)
    assert type(info.value) is type(expected)
    assert str(info.value) == str(expected)  # e.g. "[Errno 21] Is a directory: 'd1'"
    assert info.value.filename == target and ".tmp" not in str(info.value)
    assert _listing(tmp_path) == before  # no temporary file was made, here or in the folder above
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_saving_into_a_directory_gives_is_a_directory_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d1").mkdir()
    for target in (".", "d1", "d1/"):
        with pytest.raises(IsADirectoryError, match=rf"Is a directory: '{target}'$"):
            gru.GRU(I, H).save(target)


def test_saving_over_a_read_only_file_is_refused_as_open_refuses_it(tmp_path, monkeypatch):
    """os.replace would swap a file whose owner made it read-only; open(path, "wb") raises PermissionError."""
    path = tmp_path / "kept.safetensors"
    path.write_bytes(b"keep me")
    path.chmod(0o444)
    if os.access(path, os.W_OK):  # root writes anything: then say what open() says, whatever it is
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (str(p) == str(path) and mode == os.W_OK))
    with pytest.raises(PermissionError, match=rf"Permission denied: '{re.escape(str(path))}'$"):
        gru.GRU(I, H).save(path)
    assert path.read_bytes() == b"keep me"


def test_a_folder_that_refuses_the_temporary_file_names_the_callers_path(tmp_path, monkeypatch):
    """Where the temporary file cannot be made (a folder we may not write to), the error names the path given."""
    path = str(tmp_path / "m.safetensors")

    def refuse(directory, prefix, suffix):
        raise PermissionError(13, "Permission denied", os.path.join(directory, f"{prefix}abc{suffix}"))

    monkeypatch.setattr(_io, "_make_temporary", refuse)
    with pytest.raises(PermissionError, match=r"Permission denied") as info:
        gru.GRU(I, H).save(path)
    assert info.value.filename == path and ".tmp" not in str(info.value)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("writer", ["save", "to_onnx"])
def test_a_fifo_is_refused_and_left_a_fifo(tmp_path, writer):
    """os.replace would turn a FIFO (or a device: /dev/null) into a regular file; writing into one could block."""
    if writer == "to_onnx":
        pytest.importorskip("onnx")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match=r"expected a regular file \(or a new one\) to write, got a FIFO") as info:
        getattr(gru.GRU(I, H), writer)(fifo)
    assert info.value.filename == str(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["pipe"]  # no temporary file left beside it


def test_a_device_is_refused_and_left_a_device():
    if not os.path.exists(os.devnull) or not stat.S_ISCHR(os.stat(os.devnull).st_mode):
        pytest.skip(f"{os.devnull} is not a character device here")
    with pytest.raises(OSError, match="got a character device"):
        gru.GRU(I, H).save(os.devnull)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_link_loop_is_named_as_the_caller_gave_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("b", "a")
    os.symlink("a", "b")
    with pytest.raises(OSError) as info:
        gru.GRU(I, H).save("a")
    assert info.value.filename == "a", info.value
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


@pytest.mark.parametrize("dangling", [False, True])
def test_saving_through_a_symbolic_link_keeps_the_link(tmp_path, dangling):
    target, link = tmp_path / "real.safetensors", tmp_path / "link.safetensors"
    if not dangling:
        gru.GRU(I, H, seed=0).save(target)
    link.symlink_to(target.name)  # relative, as links usually are
    layer = gru.GRU(I, H + 1, seed=1)
    layer.save(link)
    assert link.is_symlink() and os.readlink(link) == target.name
    assert_same_layer(gru.load(target), layer)
    assert sorted(os.listdir(tmp_path)) == ["link.safetensors", "real.safetensors"]


# -- an empty .npz is an .npz ----------------------------------------------------------------------


def test_empty_npz_is_read_as_an_npz_without_arrays(tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path)
    assert path.read_bytes()[:4] == b"PK\x05\x06"  # a zip's end record, no local file header
    with pytest.raises(ValueError, match=r"^path: .*e\.npz.*holds no arrays \(an empty \.npz file\)") as info:
        gru.load(path)
    assert "safetensors" not in str(info.value) and "truncated" not in str(info.value)
    path.write_bytes(path.read_bytes()[:10])  # an end record cut short is still a bad .npz
    with pytest.raises(ValueError, match=r"^path: .*\.npz file"):
        gru.load(path)


# -- a wrong keyword argument is the caller's fault, not the file's -----------------------------------


@pytest.mark.parametrize("bare", [False, True], ids=["with-configuration", "bare-state-dict"])
def test_overrides_that_do_not_fit_the_arrays_name_the_argument(tmp_path, bare):
    from safetensors.numpy import save_file

    layer = gru.GRU(I, H, num_layers=2, seed=0)
    path = tmp_path / "m.safetensors"
    if bare:
        save_file(layer.state_dict(), str(path))
    else:
        layer.save(path)
    with pytest.raises(ValueError, match=r"^hidden_size: 5 does not fit") as info:
        gru.load(path, hidden_size=H + 1)
    message = str(info.value)
    assert f"hidden_size={H}" in message  # what the file holds
    assert f"weight_ih_l0 has shape {(3 * H, I)}" in message and f"{(3 * (H + 1), I)}" in message
    assert "do not match" not in message
    with pytest.raises(ValueError, match=rf"^input_size, hidden_size: \(7, 5\) do not fit .*input_size={I}"):
        gru.load(path, input_size=7, hidden_size=H + 1)
    with pytest.raises(ValueError, match=r"^bias: False does not fit .*bias=True.*unexpected \['bias_hh_l0'"):
        gru.load(path, bias=False)
    with pytest.raises(ValueError, match=r"^num_layers: 3 does not fit .*missing \['bias_hh_l2', 'bias_ih_l2'"):
        gru.load(path, num_layers=3)
    assert_same_layer(layer, gru.load(path, hidden_size=H, num_layers=2))  # the file's own values still load


# -- missing and unexpected keys are named -----------------------------------------------------------


def _expected_keys(layer, kept):
    """The oracle: set differences of the layer's own keys and the file's."""
    return sorted(set(layer.state_dict()) - set(kept)), sorted(set(kept) - set(layer.state_dict()))


@pytest.mark.parametrize(
    "change",
    [
        lambda s: {k: v for k, v in s.items() if k != "bias_ih_l1"},
        lambda s: {k: v for k, v in s.items() if not k.endswith("_l1")},  # a whole middle layer
        lambda s: {k: v for k, v in s.items() if not k.endswith("_l0")},  # the first layer
        lambda s: {k: v for k, v in s.items() if k != "weight_ih_l2"},  # the last layer's sizing array
        lambda s: {("renamed" if k == "weight_hh_l1" else k): v for k, v in s.items()},
        lambda s: s | {"head.weight": np.zeros(2, "float32")},
    ],
    ids=["bias_ih_l1", "layer-1", "layer-0", "weight_ih_l2", "renamed", "extra"],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_bare_state_dict_names_missing_and_unexpected_keys(tmp_path, change, suffix):
    from safetensors.numpy import save_file

    layer = gru.GRU(I, H, num_layers=3, seed=0)
    state = change(layer.state_dict())
    path = tmp_path / f"bare{suffix}"
    if suffix == ".npz":
        np.savez(path, **state)
    else:
        save_file(state, str(path))
    missing, unexpected = _expected_keys(layer, state)
    with pytest.raises(ValueError, match=r"^path: .*bare") as info:
        gru.load(path)
    message = str(info.value)
    assert (f"missing {missing}" in message) == bool(missing)
    assert (f"unexpected {unexpected}" in message) == bool(unexpected)
    assert f"needs 12 arrays; the file holds {len(state)}" in message


def test_bare_cell_state_dict_names_missing_keys(tmp_path):
    from safetensors.numpy import save_file

    state = gru.GRUCell(I, H, seed=0).state_dict()
    for key in state:
        save_file({k: v for k, v in state.items() if k != key}, str(tmp_path / "cell.safetensors"))
        with pytest.raises(ValueError, match=rf"^path: .*GRUCell.*missing \['{key}'\]$"):
            gru.load(tmp_path / "cell.safetensors")


def test_saved_configuration_names_missing_keys_and_caps_long_lists(tmp_path):
    layer = gru.GRU(I, H, num_layers=2, seed=0)
    tensors = {k: v for k, v in layer.state_dict().items() if k != "bias_hh_l1"}
    tensors |= {f"junk{i:02}": np.zeros(1, "float32") for i in range(20)}
    path = _metadata_file(tmp_path, _io.layer_config(layer), tensors)
    with pytest.raises(ValueError, match=r"^path: .*its configuration") as info:
        gru.load(path)
    shown = [f"junk{i:02}" for i in range(8)]
    assert str(info.value).endswith(f"missing ['bias_hh_l1'], unexpected {shown} and 12 more")
