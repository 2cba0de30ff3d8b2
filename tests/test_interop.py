"""Weights in and out of PyTorch modules, Keras weights and layers and ONNX models, against the real libraries."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import gru
from gru import interop

I, H, T, B = 3, 5, 6, 4


def normal(*shape, dtype="float32", seed=1, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def test_import_gru_imports_no_optional_library():
    """Neither import nor use pulls in torch, onnx or safetensors (backend="auto" may load plugins that do)."""
    code = (
        "import sys, numpy as np, gru; m = gru.GRU(2, 3, backend='numpy'); m(np.zeros((4, 1, 2), 'float32'));"
        "gru.onnx.gru(*[np.ones(s, 'float32') for s in ((2, 1, 2), (1, 9, 2), (1, 9, 3))], backend='numpy');"
        "gru.onnx.gru(*[np.ones(s, 'float32') for s in ((2, 1, 2), (1, 9, 2), (1, 9, 3))], clip=1.0);"
        "m.keras_weights(); gru.GRU.from_keras(*m.keras_weights()[0]);"
        "print(sorted(k for k in ('torch', 'onnx', 'onnxruntime', 'safetensors', 'keras') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- PyTorch --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "bias", "batch_first"),
    [(1, False, True, False), (2, True, True, True), (3, False, False, False), (2, True, False, True)],
)
def test_from_torch_reproduces_the_module(torch, num_layers, bidirectional, bias, batch_first):
    module = torch.nn.GRU(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    layer = gru.GRU.from_torch(module)
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (I, H, num_layers)
    assert (layer.bidirectional, layer.bias, layer.batch_first, layer.dtype) == (
        bidirectional,
        bias,
        batch_first,
        "float32",
    )
    D = 2 if bidirectional else 1
    x = normal(*((B, T, I) if batch_first else (T, B, I)))
    h0 = normal(num_layers * D, B, H, seed=2)
    with torch.no_grad():
        expected, expected_h = module(torch.from_numpy(x), torch.from_numpy(h0))
    output, h_n = layer(x, h0)
    np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h.numpy(), rtol=0, atol=1e-5)


def test_from_torch_keeps_float64_and_dropout(torch):
    module = torch.nn.GRU(I, H, num_layers=2, dropout=0.25).double()
    layer = gru.GRU.from_torch(module)
    assert layer.dtype == "float64" and layer.dropout == 0.25
    x = normal(T, B, I, dtype="float64")
    with torch.no_grad():
        expected, _ = module.eval()(torch.from_numpy(x))
    np.testing.assert_allclose(layer(x)[0], expected.numpy(), rtol=0, atol=1e-12)
    assert gru.GRU.from_torch(module, dtype="float32").dtype == "float32"


def test_from_torch_cell(torch):
    module = torch.nn.GRUCell(I, H)
    cell = gru.GRUCell.from_torch(module)
    x, h = normal(B, I), normal(B, H, seed=3)
    with torch.no_grad():
        expected = module(torch.from_numpy(x), torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(cell(x, h), expected, rtol=0, atol=1e-6)


def test_from_torch_rejects_other_modules(torch):
    with pytest.raises(TypeError, match=r"^module"):
        gru.GRU.from_torch(torch.nn.LSTM(I, H))
    with pytest.raises(TypeError, match=r"^module"):
        gru.GRU.from_torch(torch.nn.GRUCell(I, H))
    with pytest.raises(TypeError, match=r"^module"):
        gru.GRUCell.from_torch(torch.nn.LSTMCell(I, H))
    with pytest.raises(TypeError, match=r"^module"):
        gru.GRU.from_torch(torch.nn.Linear(I, H))
    with pytest.raises(TypeError, match=r"^module"):
        gru.GRU.from_torch({"weight_ih_l0": 1})


def test_from_torch_refuses_a_module_without_values(torch):
    with pytest.raises(ValueError, match=r"^module: .*'meta' device"):
        gru.GRU.from_torch(torch.nn.GRU(I, H, device="meta"))


def test_from_torch_loads_the_weights_a_parametrization_computes(torch):
    """weight_norm keeps (g, v) in the state dict; torch runs with g * v / |v|, and so must the layer."""
    module = torch.nn.GRU(I, H, num_layers=2, bidirectional=True)
    for name in ("weight_hh_l0", "weight_ih_l1_reverse"):
        module = torch.nn.utils.parametrizations.weight_norm(module, name=name)
    with torch.no_grad():
        module.parametrizations.weight_hh_l0.original0.mul_(1.7)  # the computed weight is no longer v
    layer = gru.GRU.from_torch(module)
    x = normal(T, B, I, seed=4)
    with torch.no_grad():
        expected, expected_h = module(torch.from_numpy(x))
        g, v = module.parametrizations.weight_hh_l0.original0, module.parametrizations.weight_hh_l0.original1
        manual = g * v / v.norm(dim=1, keepdim=True)  # weight_norm's definition, rows (dim=0) normalized
    output, h_n = layer(x)
    np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(layer.state_dict()["weight_hh_l0"], manual.numpy(), rtol=1e-6, atol=1e-7)
    cell = torch.nn.utils.parametrizations.orthogonal(torch.nn.GRUCell(H, H), name="weight_hh")
    x, h = normal(B, H, seed=5), normal(B, H, seed=6)
    with torch.no_grad():
        expected = cell(torch.from_numpy(x), torch.from_numpy(h)).numpy()
    np.testing.assert_allclose(gru.GRUCell.from_torch(cell)(x, h), expected, rtol=0, atol=1e-6)


def test_from_torch_names_hook_based_weight_norm(torch):
    """The old hooks keep a stale copy of the weight between forwards: refused, with how to remove them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
        module = torch.nn.utils.weight_norm(torch.nn.GRU(I, H), name="weight_hh_l0")
    with pytest.raises(ValueError, match=r"^module: .*weight_hh_l0_g.*remove_weight_norm"):
        gru.GRU.from_torch(module)
    cell = torch.nn.utils.spectral_norm(torch.nn.GRUCell(I, H), name="weight_hh")
    with pytest.raises(ValueError, match=r"^module: .*weight_hh_orig.*remove_spectral_norm"):
        gru.GRUCell.from_torch(cell)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_to_torch_round_trip(torch, bidirectional):
    layer = gru.GRU(I, H, num_layers=2, bidirectional=bidirectional, batch_first=True, seed=4)
    module = layer.to_torch()
    assert isinstance(module, torch.nn.GRU) and module.batch_first and not module.training
    x = normal(B, T, I)
    with torch.no_grad():
        expected, expected_h = module(torch.from_numpy(x))
    output, h_n = layer(x)
    np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h.numpy(), rtol=0, atol=1e-5)
    back = gru.GRU.from_torch(module)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[key], value)
    cell = gru.GRUCell(I, H, seed=1)
    torch_cell = cell.to_torch()
    with torch.no_grad():
        np.testing.assert_allclose(cell(x[:, 0]), torch_cell(torch.from_numpy(x[:, 0])).numpy(), atol=1e-6)


def test_to_torch_refuses_reset_before(torch):
    with pytest.raises(ValueError, match=r"^reset_after"):
        gru.GRU(I, H, reset_after=False).to_torch()


def test_a_state_dict_of_meta_tensors_is_refused_naming_the_key_and_device(torch):
    layer = gru.GRU(I, H, seed=0)
    before = layer.state_dict()
    meta = {k: torch.empty(v.shape, device="meta") for k, v in before.items()}
    with pytest.raises(TypeError, match=r"^state_dict\['weight_ih_l0'\]: .*got one on 'meta'"):
        layer.load_state_dict(meta)
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_a_state_dict_on_another_torch_device_is_copied_to_the_host(torch):
    """Parameters are host copies anyway: a tensor on a device other than CUDA (Apple's 'mps', say) is read
    through .cpu(). None is here, so a tensor subclass stands in for one: it reports 'mps' until copied."""

    class OnMPS(torch.Tensor):
        __torch_function__ = torch._C._disabled_torch_function_impl

        @property
        def device(self):
            return torch.device("mps")

        def detach(self):
            return torch.Tensor.detach(self).as_subclass(OnMPS)

        def cpu(self):
            return self.as_subclass(torch.Tensor).clone()

    layer = gru.GRU(I, H, seed=0)
    expected = gru.GRU(I, H, seed=1).state_dict()
    layer.load_state_dict({k: torch.from_numpy(v.copy()).as_subclass(OnMPS) for k, v in expected.items()})
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, expected[k])


def test_torch_state_dict_in_bfloat16_loads(torch):
    module = torch.nn.GRU(I, H).to(torch.bfloat16)
    layer = gru.GRU.from_torch(module)
    assert layer.dtype == "float32"
    np.testing.assert_array_equal(layer.weight_ih_l0, module.weight_ih_l0.detach().float().numpy())


# -- Keras (equations written from the Keras GRU documentation, no Keras needed) ------------------


def keras_gru_oracle(x, kernel, recurrent_kernel, bias, *, reset_after):
    """Keras GRU semantics, batch-major x (B, T, I); gate order z, r, h; returns all states (B, T, H)."""
    x = np.asarray(x, np.float64)
    Bn, Tn, _ = x.shape
    units = recurrent_kernel.shape[0]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    if bias is None:
        input_bias, recurrent_bias = np.zeros(3 * units), np.zeros(3 * units)
    elif reset_after:
        input_bias, recurrent_bias = bias[0], bias[1]
    else:
        input_bias, recurrent_bias = bias, np.zeros(3 * units)
    h = np.zeros((Bn, units))
    states = np.zeros((Bn, Tn, units))
    k_z, k_r, k_h = np.split(np.asarray(kernel, np.float64), 3, axis=1)
    u_z, u_r, u_h = np.split(np.asarray(recurrent_kernel, np.float64), 3, axis=1)
    bi_z, bi_r, bi_h = np.split(input_bias, 3)
    br_z, br_r, br_h = np.split(recurrent_bias, 3)
    for t in range(Tn):
        x_t = x[:, t]
        z = sigmoid(x_t @ k_z + bi_z + h @ u_z + br_z)
        r = sigmoid(x_t @ k_r + bi_r + h @ u_r + br_r)
        if reset_after:
            hh = np.tanh(x_t @ k_h + bi_h + r * (h @ u_h + br_h))
        else:
            hh = np.tanh(x_t @ k_h + bi_h + (r * h) @ u_h)
        h = z * h + (1 - z) * hh
        states[:, t] = h
    return states


def keras_weights(reset_after, use_bias=True, seed=0):
    kernel = normal(I, 3 * H, seed=seed, scale=0.5)
    recurrent = normal(H, 3 * H, seed=seed + 1, scale=0.5)
    if not use_bias:
        return kernel, recurrent, None
    return kernel, recurrent, normal(*((2, 3 * H) if reset_after else (3 * H,)), seed=seed + 2, scale=0.5)


@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_from_keras_weights_matches_keras_equations(reset_after, use_bias):
    kernel, recurrent, bias = keras_weights(reset_after, use_bias)
    layer = gru.GRU.from_keras(kernel, recurrent, bias, reset_after=reset_after)
    assert layer.batch_first and layer.reset_after == reset_after and layer.bias == use_bias
    x = normal(B, T, I, seed=9)
    output, h_n = layer(x)
    expected = keras_gru_oracle(x, kernel, recurrent, bias, reset_after=reset_after)
    np.testing.assert_allclose(output, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n[0], expected[:, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_weights_round_trip(reset_after):
    layer = gru.GRU(I, H, reset_after=reset_after, batch_first=True, seed=5)
    (weights,) = layer.keras_weights()
    assert weights[0].shape == (I, 3 * H) and weights[1].shape == (H, 3 * H)
    assert weights[2].shape == ((2, 3 * H) if reset_after else (3 * H,))
    x = normal(B, T, I, seed=2)
    expected = keras_gru_oracle(x, *weights, reset_after=reset_after)
    np.testing.assert_allclose(layer(x)[0], expected, rtol=0, atol=1e-5)
    back = gru.GRU.from_keras(*weights, reset_after=reset_after)
    np.testing.assert_allclose(back(x)[0], layer(x)[0], rtol=0, atol=1e-6)
    stacked = gru.GRU(I, H, num_layers=2, bidirectional=True, seed=0).keras_weights()
    assert [w[0].shape for w in stacked] == [(I, 3 * H)] * 2 + [(2 * H, 3 * H)] * 2


class FakeKerasGRU:
    """What ``from_keras`` reads from a Keras layer: ``get_config`` and ``get_weights``."""

    def __init__(self, weights, **config):
        self._weights = [w for w in weights if w is not None]
        self._config = {
            "units": H,
            "activation": "tanh",
            "recurrent_activation": "sigmoid",
            "use_bias": True,
            "reset_after": True,
            "go_backwards": False,
            **config,
        }

    def get_config(self):
        return dict(self._config)

    def get_weights(self):
        return list(self._weights)


@pytest.mark.parametrize("reset_after", [True, False])
def test_from_keras_layer_object(reset_after):
    weights = keras_weights(reset_after)
    layer = gru.GRU.from_keras(FakeKerasGRU(weights, reset_after=reset_after))
    x = normal(B, T, I, seed=3)
    np.testing.assert_allclose(layer(x)[0], keras_gru_oracle(x, *weights, reset_after=reset_after), atol=1e-5)
    no_bias = gru.GRU.from_keras(FakeKerasGRU(keras_weights(True, False), use_bias=False))
    assert not no_bias.bias


@pytest.mark.parametrize(
    ("config", "argument"),
    [
        ({"activation": "relu"}, "activation"),
        ({"recurrent_activation": "hard_sigmoid"}, "recurrent_activation"),
        ({"go_backwards": True}, "go_backwards"),
    ],
)
def test_from_keras_layer_object_refuses_what_gru_does_not_compute(config, argument):
    with pytest.raises(ValueError, match=f"^{argument}"):
        gru.GRU.from_keras(FakeKerasGRU(keras_weights(True), **config))


@pytest.mark.parametrize(
    "activation",
    ["tanh", {"class_name": "function", "config": "tanh"}, {"class_name": "Activation", "config": {"name": "tanh"}}],
    ids=["name", "config-name", "config-dict"],
)
def test_from_keras_reads_each_form_of_an_activation(activation):
    layer = gru.GRU.from_keras(FakeKerasGRU(keras_weights(True), activation=activation))
    assert layer.hidden_size == H


@pytest.mark.parametrize(
    ("weights", "kind", "message"),
    [
        ((1, 2, 3, 4), ValueError, "weights.w_ih: expected a 2-D array, got shape ()"),
        (("a", 2, 3, 4), TypeError, "weights.w_ih: expected a real numeric array"),
        ((normal(3 * H, I), normal(3 * H, H)), TypeError, "weights: expected (w_ih, w_hh, b_ih, b_hh)"),
        ((normal(3 * H, I), normal(3 * H, H), normal(3 * H), normal(3 * H + 1)), ValueError, "weights.b_hh"),
        ((normal(3 * H + 3, I), normal(3 * H, H), normal(3 * H), normal(3 * H)), ValueError, "weights.w_ih"),
    ],
)
def test_torch_to_keras_bad_weights(weights, kind, message):
    with pytest.raises(kind, match=f"^{re.escape(message)}"):
        gru.interop.torch_to_keras(weights)


@pytest.mark.parametrize(
    ("args", "kwargs", "kind", "argument"),
    [
        ((normal(I, 3 * H + 1), normal(H, 3 * H)), {}, ValueError, "kernel"),
        ((normal(I, 3 * H), normal(H + 1, 3 * H)), {}, ValueError, "recurrent_kernel"),
        ((normal(I, 3 * H), normal(H, 3 * H), normal(3 * H)), {}, ValueError, "bias"),  # reset_after needs (2, 3H)
        ((normal(I, 3 * H), normal(H, 3 * H), normal(2, 3 * H)), {"reset_after": False}, ValueError, "bias"),
        ((normal(I, 3 * H),), {}, TypeError, "recurrent_kernel"),
        ((normal(I, 3 * H), "abc"), {}, TypeError, "recurrent_kernel"),
        ((normal(I, 3 * H), normal(H, 3 * H)), {"reset_after": "yes"}, TypeError, "reset_after"),
    ],
)
def test_from_keras_bad_weights(args, kwargs, kind, argument):
    with pytest.raises(kind, match=f"^{argument}(?!\\w)"):
        gru.GRU.from_keras(*args, **kwargs)


def test_from_keras_names_a_transposed_kernel_with_units_from_recurrent_kernel():
    """units comes from recurrent_kernel (units, 3*units); kernel's first axis is the free one."""
    kernel, recurrent, bias = keras_weights(True)
    message = (
        f"kernel: expected shape (input_size, 3*units) = (input_size, {3 * H}), units={H} from "
        f"recurrent_kernel {(H, 3 * H)}; got {(3 * H, I)}, which looks transposed"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        gru.GRU.from_keras(kernel.T, recurrent, bias)
    with pytest.raises(ValueError, match=rf"^recurrent_kernel: .*got \({3 * H}, {H}\), which looks transposed"):
        gru.GRU.from_keras(kernel, recurrent.T, bias)


@pytest.mark.parametrize(
    ("reset_after", "shape", "hint"),
    [(True, (3 * H,), "pass reset_after=False"), (False, (2, 3 * H), "pass reset_after=True")],
)
def test_from_keras_bias_of_the_other_variant_says_which(reset_after, shape, hint):
    kernel, recurrent, _ = keras_weights(True)
    with pytest.raises(ValueError, match=rf"^bias: .*got {re.escape(str(shape))}; .*{hint}"):
        gru.GRU.from_keras(kernel, recurrent, normal(*shape), reset_after=reset_after)
    with pytest.raises(ValueError, match=r"^bias: expected shape") as info:
        gru.GRU.from_keras(kernel, recurrent, normal(3, 3 * H), reset_after=reset_after)
    assert "pass reset_after" not in str(info.value)  # no hint where neither variant fits


@pytest.mark.parametrize("reset_after", [True, False])
def test_against_keras_itself(reset_after):
    keras = pytest.importorskip("keras")
    keras_layer = keras.layers.GRU(H, reset_after=reset_after, return_sequences=True)
    x = normal(B, T, I, seed=6)
    expected = np.asarray(keras_layer(x))
    layer = gru.GRU.from_keras(keras_layer)
    np.testing.assert_allclose(layer(x)[0], expected, rtol=0, atol=1e-5)
    # and back: our weights into a fresh Keras layer
    ours = gru.GRU(I, H, reset_after=reset_after, batch_first=True, seed=2)
    other = keras.layers.GRU(H, reset_after=reset_after, return_sequences=True)
    other.build((None, None, I))
    other.set_weights(ours.keras_weights()[0])
    np.testing.assert_allclose(np.asarray(other(x)), ours(x)[0], rtol=0, atol=1e-5)


# -- ONNX weights ---------------------------------------------------------------------------------


def test_onnx_weight_conversion_round_trip():
    W, R, Bias = normal(2, 3 * H, I), normal(2, 3 * H, H, seed=2), normal(2, 6 * H, seed=3)
    directions = interop.onnx_to_torch(W, R, Bias)
    # gate blocks: ONNX (z, r, h) -> PyTorch (r, z, n)
    np.testing.assert_array_equal(directions[1].w_ih[:H], W[1, H : 2 * H])
    np.testing.assert_array_equal(directions[1].w_ih[H : 2 * H], W[1, :H])
    np.testing.assert_array_equal(directions[0].b_hh[2 * H :], Bias[0, 5 * H :])
    back = interop.torch_to_onnx(directions)
    for a, b in zip(back, (W, R, Bias), strict=True):
        np.testing.assert_array_equal(a, b)


def ort_session(model_bytes):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first", "reset_after"),
    [(2, True, False, False), (2, True, True, True), (1, False, True, False), (3, False, False, True)],
)
def test_to_onnx_runs_in_onnxruntime(tmp_path, num_layers, bidirectional, batch_first, reset_after):
    pytest.importorskip("onnx")
    layer = gru.GRU(
        I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
        reset_after=reset_after, seed=3,
    )  # fmt: skip
    path = tmp_path / "model.onnx"
    layer.to_onnx(path)
    x = normal(*((B, T, I) if batch_first else (T, B, I)), seed=4)
    output, h_n = ort_session(path.read_bytes()).run(None, {"x": x})
    expected, expected_h = layer(x)
    np.testing.assert_allclose(output, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(h_n, expected_h, rtol=0, atol=2e-6)
    # with h0 and lengths as inputs
    D = layer.num_directions
    h0 = normal(num_layers * D, B, H, seed=5)
    lengths = np.array([T, 2, 5, 1], np.int32)
    session = ort_session(layer.to_onnx(initial_state=True, lengths=True).SerializeToString())
    output, h_n = session.run(None, {"x": x, "h0": h0, "lengths": lengths})
    expected, expected_h = layer(x, h0, lengths)
    np.testing.assert_allclose(output, expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(h_n, expected_h, rtol=0, atol=2e-6)
    # and back
    again = gru.GRU.from_onnx(path)
    assert repr(again) == repr(layer)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key], value)


def test_to_onnx_names_an_opset_onnx_does_not_know():
    onnx = pytest.importorskip("onnx")
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ValueError, match=rf"^opset: expected 14 to {newest} .*got {newest + 1}$"):
        gru.GRU(I, H).to_onnx(opset=newest + 1)


def test_to_onnx_without_bias_and_float64(tmp_path):
    onnx = pytest.importorskip("onnx")
    layer = gru.GRU(I, H, num_layers=2, bias=False, seed=1)
    x = normal(T, B, I)
    (output, _) = ort_session(layer.to_onnx().SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(output, layer(x)[0], atol=2e-6)
    again = gru.GRU.from_onnx(layer.to_onnx())
    assert not again.bias
    model = gru.GRU(I, H, dtype="float64", seed=1).to_onnx(tmp_path / "f64.onnx")  # ORT's CPU GRU has no float64
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert gru.GRU.from_onnx(tmp_path / "f64.onnx").dtype == "float64"


def torch_export(torch, module, x):
    """ONNX bytes from PyTorch's TorchScript exporter (skips when this torch cannot export)."""
    pytest.importorskip("onnx")
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (torch.from_numpy(x),), buffer, dynamo=False, input_names=["x"], output_names=["y", "h"],
                dynamic_axes={"x": {0: "a", 1: "b"}},
            )  # fmt: skip
    except Exception as exc:  # the exporter's own dependencies or deprecation
        pytest.skip(f"torch.onnx.export failed here: {exc}")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first"),
    [(1, False, False), (2, False, True), (2, True, True), (3, True, False)],
)
def test_from_onnx_reads_pytorch_exports(torch, num_layers, bidirectional, batch_first):
    module = torch.nn.GRU(I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first).eval()
    x = normal(*((B, T, I) if batch_first else (T, B, I)), seed=7)
    model = torch_export(torch, module, x)
    layer = gru.GRU.from_onnx(model)
    assert (layer.num_layers, layer.bidirectional, layer.batch_first) == (num_layers, bidirectional, batch_first)
    output, h_n = layer(x)
    with torch.no_grad():
        expected, expected_h = module(torch.from_numpy(x))
    np.testing.assert_allclose(output, expected.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, expected_h.numpy(), rtol=0, atol=1e-5)
    ort_output, ort_h = ort_session(model).run(None, {"x": x})
    np.testing.assert_allclose(output, ort_output, rtol=0, atol=2e-6)
    np.testing.assert_allclose(h_n, ort_h, rtol=0, atol=2e-6)


def one_gru_model(**attributes):
    """A model with one GRU node whose weights are initializers; attributes override."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    W, R = normal(1, 3 * H, I), normal(1, 3 * H, H, seed=2)
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R")]
    node = helper.make_node("GRU", ["x", "W", "R"], ["Y", "Y_h"], hidden_size=H, **attributes)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["t", "b", I])],
        [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    return onnx, helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"direction": "reverse"}, "reverse"),
        ({"clip": 1.0}, "clip"),
        ({"activations": ["HardSigmoid", "Tanh"]}, "activations"),
        ({"linear_before_reset": 2}, "linear_before_reset=2; expected 0 or 1"),
        ({"linear_before_reset": -1}, "linear_before_reset=-1; expected 0 or 1"),
    ],
)
def test_from_onnx_refuses_what_a_layer_cannot_compute(attributes, message):
    _, model = one_gru_model(**attributes)
    with pytest.raises(ValueError, match=f"^model: .*{message}"):
        gru.GRU.from_onnx(model)


def test_from_onnx_reads_a_layout_1_node():
    """Against ONNX Runtime running the same weights in layout 0 (its CPU kernel has no layout 1)."""
    ort = pytest.importorskip("onnxruntime")
    _, model = one_gru_model(layout=1)
    layer = gru.GRU.from_onnx(model)
    assert layer.batch_first
    x = normal(B, T, I)
    _, time_major = one_gru_model()
    session = ort.InferenceSession(time_major.SerializeToString(), providers=["CPUExecutionProvider"])
    (Y_h,) = session.run(["Y_h"], {"x": np.ascontiguousarray(x.transpose(1, 0, 2))})
    np.testing.assert_allclose(layer(x)[1], Y_h, atol=1e-6)


def test_from_onnx_errors():
    onnx, model = one_gru_model()
    from onnx import helper

    with pytest.raises(TypeError, match=r"^path_or_model"):
        gru.GRU.from_onnx(42)
    with pytest.raises(ValueError, match=r"^path_or_model"):
        gru.GRU.from_onnx(b"not a model")
    with pytest.raises(FileNotFoundError):
        gru.GRU.from_onnx("/nonexistent/model.onnx")
    # no GRU node
    empty = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"^model: no GRU node"):
        gru.GRU.from_onnx(empty)
    # weights from a graph input
    runtime = onnx.ModelProto()
    runtime.CopyFrom(model)
    del runtime.graph.initializer[0]
    runtime.graph.input.append(helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [1, 3 * H, I]))
    with pytest.raises(ValueError, match="computed at run time"):
        gru.GRU.from_onnx(runtime)


def test_from_onnx_refuses_a_reshape_that_mixes_directions():
    """Reshaping [T, 2, B, H] to [T, B, 2H] without the Transpose interleaves directions and batch."""
    pytest.importorskip("onnx")
    model = gru.GRU(I, H, num_layers=2, bidirectional=True, seed=0).to_onnx()
    nodes = list(model.graph.node)
    transpose = next(n for n in nodes if n.op_type == "Transpose" and n.input[0] == "Y_l0")
    reshape = next(n for n in nodes if n.op_type == "Reshape" and n.input[0] == transpose.output[0])
    reshape.input[0] = "Y_l0"
    model.graph.node.remove(transpose)
    with pytest.raises(ValueError, match=r"^model: .*Reshape"):
        gru.GRU.from_onnx(model)


@pytest.mark.parametrize("target", [[5, 3, H], [3, 5, -1], [0, 3, -1]], ids=str)
def test_from_onnx_refuses_a_reshape_with_fixed_leading_sizes(target):
    """T and B come with each input: a fixed size in their place cannot be checked, and may swap them."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    model = gru.GRU(I, H, num_layers=2, seed=0).to_onnx()
    shapes = [t for t in model.graph.initializer if any(n.op_type == "Reshape" and n.input[1] == t.name
                                                        for n in model.graph.node)]  # fmt: skip
    assert shapes, "the export has a Reshape between its layers"
    for tensor in shapes:
        tensor.CopyFrom(numpy_helper.from_array(np.array(target, np.int64), tensor.name))
    onnx.checker.check_model(model)
    with pytest.raises(ValueError, match=r"^model: .*Reshape"):
        gru.GRU.from_onnx(model)


def test_from_onnx_refuses_gru_nodes_that_are_not_a_stack():
    pytest.importorskip("onnx")
    model = gru.GRU(I, H, num_layers=2, seed=0).to_onnx()
    second = next(n for n in model.graph.node if n.op_type == "GRU" and n.name == "gru_l1")
    second.input[0] = "x"  # both layers read the graph input: two GRUs side by side
    with pytest.raises(ValueError, match=r"^model: "):
        gru.GRU.from_onnx(model)
