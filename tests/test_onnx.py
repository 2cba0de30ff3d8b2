"""gru.onnx.gru: the ONNX GRU operator, against ONNX's own test cases, ONNX Runtime and a per-step oracle."""

from __future__ import annotations

import inspect
import itertools
import math

import numpy as np
import pytest

import gru
from gru.backends import Backend, Capabilities

T, B, I, H = 5, 4, 3, 4


def normal(*shape, scale=1.0, seed=0, dtype="float32"):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def onnx_inputs(D, *, seed=0, scale=0.5, dtype="float32"):
    return (
        normal(T, B, I, seed=seed, dtype=dtype),
        normal(D, 3 * H, I, scale=scale, seed=seed + 1, dtype=dtype),
        normal(D, 3 * H, H, scale=scale, seed=seed + 2, dtype=dtype),
        normal(D, 6 * H, scale=scale, seed=seed + 3, dtype=dtype),
        normal(D, B, H, seed=seed + 4, dtype=dtype),
    )


# -- an oracle written from the operator's documentation, in its own layout (z, r, h) ------------

ORACLE_FUNCTIONS = {
    "Relu": lambda v, a, b: max(v, 0.0),
    "Tanh": lambda v, a, b: math.tanh(v),
    "Sigmoid": lambda v, a, b: 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v)),
    "Affine": lambda v, a, b: a * v + b,
    "LeakyRelu": lambda v, a, b: v if v >= 0 else a * v,
    "ThresholdedRelu": lambda v, a, b: v if v >= a else 0.0,
    "ScaledTanh": lambda v, a, b: a * math.tanh(b * v),
    "HardSigmoid": lambda v, a, b: min(max(a * v + b, 0.0), 1.0),
    "Elu": lambda v, a, b: v if v >= 0 else a * (math.exp(v) - 1),
    "Softsign": lambda v, a, b: v / (1 + abs(v)),
    "Softplus": lambda v, a, b: math.log1p(math.exp(-abs(v))) + max(v, 0.0),
}
# which parameters each takes, with the defaults of the ONNX operators of the same name
ORACLE_DEFAULTS = {
    "Affine": (1.0, 0.0),
    "LeakyRelu": (0.01, None),
    "ThresholdedRelu": (1.0, None),
    "ScaledTanh": (1.0, 1.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, None),
}


def oracle_activations(names, alphas, betas):
    alphas, betas = list(alphas or []), list(betas or [])
    out = []
    for name in names:
        alpha, beta = ORACLE_DEFAULTS.get(name, (None, None))
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        out.append(lambda vec, fn=ORACLE_FUNCTIONS[name], a=alpha, b=beta: np.array([fn(float(e), a, b) for e in vec]))
    return out


def oracle_gru(X, W, R, Bias, lens, h0, *, direction, lbr, clip, names, alphas=None, betas=None):
    """Y [T, D, B, H] and Y_h [D, B, H] in float64, one sequence and one step at a time."""
    X, W, R, Bias, h0 = (np.asarray(a, np.float64) for a in (X, W, R, Bias, h0))
    T_, B_, _ = X.shape
    D = W.shape[0]
    H_ = R.shape[-1]
    lens = [T_] * B_ if lens is None else [int(n) for n in lens]
    functions = oracle_activations(names, alphas, betas)
    bound = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    Y = np.zeros((T_, D, B_, H_))
    Y_h = np.zeros((D, B_, H_))
    for d in range(D):
        f, g = functions[2 * d], functions[2 * d + 1]
        Wz, Wr, Wh = W[d, :H_], W[d, H_ : 2 * H_], W[d, 2 * H_ :]
        Rz, Rr, Rh = R[d, :H_], R[d, H_ : 2 * H_], R[d, 2 * H_ :]
        Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(Bias[d], 6)
        backwards = direction == "reverse" or d == 1
        for b in range(B_):
            h = h0[d, b].copy()
            steps = range(lens[b] - 1, -1, -1) if backwards else range(lens[b])
            for t in steps:
                x = X[t, b]
                z = f(bound(Wz @ x + Rz @ h + Wbz + Rbz))
                r = f(bound(Wr @ x + Rr @ h + Wbr + Rbr))
                if lbr:
                    n = g(bound(Wh @ x + r * (Rh @ h + Rbh) + Wbh))
                else:
                    n = g(bound(Wh @ x + Rh @ (r * h) + Rbh + Wbh))
                h = (1 - z) * n + z * h
                Y[t, d, b] = h
            Y_h[d, b] = h if lens[b] > 0 else 0.0  # ONNX Runtime: an empty sequence ends at zeros
    return Y, Y_h


# -- ONNX's own test cases ------------------------------------------------------------------------


def _onnx_cases():
    """(name, node, inputs, outputs) of every GRU case the installed onnx package generates."""
    try:
        import onnx.backend.test.case.node.gru as case_module
    except ImportError:
        return []
    captured = []

    def capture(node, inputs, outputs, name, **kwargs):
        captured.append(pytest.param(node, inputs, outputs, id=name))

    original = case_module.expect
    case_module.expect = capture
    state = np.random.get_state()
    try:
        np.random.seed(0)  # some cases draw weights from NumPy's global generator
        for name, function in inspect.getmembers(case_module.GRU, inspect.isfunction):
            if name.startswith("export"):
                function()
    finally:
        case_module.expect = original
        np.random.set_state(state)
    return captured


def run_node(node, inputs):
    """Run an ONNX GRU NodeProto's inputs through gru.onnx.gru; outputs by name."""
    import onnx

    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    given = dict(zip([n for n in node.input if n], inputs, strict=True))
    args = [given.get(node.input[i]) if i < len(node.input) and node.input[i] else None for i in range(6)]
    Y, Y_h = gru.onnx.gru(*args, **attributes)
    return {"Y": Y, "Y_h": Y_h}, dict(zip(node.output, ("Y", "Y_h"), strict=False))


ONNX_CASES = _onnx_cases()


@pytest.mark.skipif(not ONNX_CASES, reason="the onnx package is not installed")
@pytest.mark.parametrize(("node", "inputs", "outputs"), ONNX_CASES)
def test_onnx_generated_cases(node, inputs, outputs):
    results, which = run_node(node, inputs)
    present = [name for name in node.output if name]
    assert len(present) == len(outputs)
    for name, expected in zip(present, outputs, strict=True):
        got = results[which[name]]
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_onnx_generated_cases_cover_the_known_ones():
    onnx = pytest.importorskip("onnx")
    names = {p.id for p in ONNX_CASES}
    assert {"test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length", "test_gru_batchwise"} <= names
    assert onnx.__version__  # the list grows with onnx versions; all of them run above


# -- ONNX Runtime ---------------------------------------------------------------------------------


def run_ort(attributes, X, W, R, Bias=None, lens=None, h0=None):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    feeds = {"X": X, "W": W, "R": R, "B": Bias, "sequence_lens": lens, "initial_h": h0}
    names = [n if feeds[n] is not None else "" for n in feeds]
    while names[-1] == "":
        names.pop()
    node = helper.make_node("GRU", names, ["Y", "Y_h"], **attributes)
    kind = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else kind, feeds[n].shape)
        for n in names
        if n
    ]
    outputs = [helper.make_tensor_value_info(n, kind, None) for n in ("Y", "Y_h")]
    model = helper.make_model(
        helper.make_graph([node], "gru", inputs, outputs), opset_imports=[helper.make_opsetid("", 14)]
    )
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: feeds[n] for n in names if n})


@pytest.mark.parametrize(
    ("direction", "lbr", "with_lens", "clip", "with_h0"),
    [
        (direction, lbr, with_lens, clip, with_h0)
        for direction, lbr, with_lens, clip, with_h0 in itertools.product(
            ("forward", "reverse", "bidirectional"), (0, 1), (False, True), (None, 0.6), (False, True)
        )
        if not (clip is not None and not with_h0 and with_lens)  # keep the matrix short
    ],
)
def test_agrees_with_onnxruntime(direction, lbr, with_lens, clip, with_h0):
    D = 2 if direction == "bidirectional" else 1
    X, W, R, Bias, h0 = onnx_inputs(D, seed=lbr + 2 * with_lens)
    lens = np.array([T, 0, 2, 3], np.int32) if with_lens else None
    h0 = h0 if with_h0 else None
    attributes = {"hidden_size": H, "direction": direction, "linear_before_reset": lbr}
    if clip is not None:
        attributes["clip"] = clip
    Y_ort, Y_h_ort = run_ort(attributes, X, W, R, Bias, lens, h0)
    Y, Y_h = gru.onnx.gru(X, W, R, Bias, lens, h0, **attributes)
    assert Y.shape == (T, D, B, H) and Y_h.shape == (D, B, H) and Y.dtype == np.float32
    np.testing.assert_allclose(Y, Y_ort, rtol=0, atol=2e-6)
    np.testing.assert_allclose(Y_h, Y_h_ort, rtol=0, atol=2e-6)


ACTIVATION_PAIRS = [
    ("HardSigmoid", "Softsign"),
    ("LeakyRelu", "Elu"),
    ("Affine", "ScaledTanh"),
    ("ThresholdedRelu", "Softplus"),
    ("Sigmoid", "Relu"),
    ("Relu", "Tanh"),
    ("Softsign", "Affine"),
    ("Tanh", "HardSigmoid"),
]


@pytest.mark.parametrize("pair", ACTIVATION_PAIRS, ids="-".join)
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_activations_agree_with_onnxruntime(pair, direction):
    """ONNX Runtime runs every activation; parameters given explicitly (its Affine/ScaledTanh defaults are 0)."""
    D = 2 if direction == "bidirectional" else 1
    X, W, R, Bias, h0 = onnx_inputs(D, seed=7, scale=0.3)
    names = list(pair) * D
    alphas, betas = [0.7, 0.3, 0.9, 0.5], [0.2, 0.6, 0.4, 0.1]
    attributes = {
        "hidden_size": H,
        "direction": direction,
        "activations": names,
        "activation_alpha": alphas,
        "activation_beta": betas,
        "linear_before_reset": 1,
    }
    Y_ort, Y_h_ort = run_ort(attributes, X, W, R, Bias, np.array([T, 3, 1, 4], np.int32), h0)
    Y, Y_h = gru.onnx.gru(X, W, R, Bias, np.array([T, 3, 1, 4]), h0, **attributes)
    np.testing.assert_allclose(Y, Y_ort, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Y_h, Y_h_ort, rtol=1e-5, atol=1e-5)


# -- the per-step oracle: what ONNX Runtime cannot check ------------------------------------------

ALL_NAMES = list(ORACLE_FUNCTIONS)


@pytest.mark.parametrize("f", ALL_NAMES)
@pytest.mark.parametrize("defaults", [True, False], ids=["default-params", "given-params"])
def test_every_activation_against_oracle(f, defaults):
    g = ALL_NAMES[(ALL_NAMES.index(f) + 3) % len(ALL_NAMES)]
    X, W, R, Bias, h0 = onnx_inputs(2, seed=11, scale=0.3, dtype="float64")
    names = [f, g, g, f]
    alphas = None if defaults else [0.8, 0.35, 1.2, 0.25]
    betas = None if defaults else [0.3, 0.7, 0.2]
    lens = np.array([T, 2, 0, 4])
    kwargs = {"direction": "bidirectional", "activations": names, "activation_alpha": alphas, "activation_beta": betas}
    for lbr, clip in ((0, None), (1, 0.9)):
        Y, Y_h = gru.onnx.gru(X, W, R, Bias, lens, h0, linear_before_reset=lbr, clip=clip, **kwargs)
        Y_o, Y_h_o = oracle_gru(
            X, W, R, Bias, lens, h0, direction="bidirectional", lbr=lbr, clip=clip, names=names, alphas=alphas,
            betas=betas,
        )  # fmt: skip
        assert Y.dtype == np.float64
        np.testing.assert_allclose(Y, Y_o, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(Y_h, Y_h_o, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("standard", [True, False], ids=["backend-path", "reference-path"])
def test_layout_1_is_layout_0_transposed(direction, standard):
    D = 2 if direction == "bidirectional" else 1
    X, W, R, Bias, h0 = onnx_inputs(D, seed=3)
    lens = np.array([T, 1, 0, 3], np.int32)
    kwargs = {"direction": direction, "clip": None if standard else 5.0}
    Y0, Y_h0 = gru.onnx.gru(X, W, R, Bias, lens, h0, layout=0, **kwargs)
    Y1, Y_h1 = gru.onnx.gru(X.transpose(1, 0, 2), W, R, Bias, lens, h0.transpose(1, 0, 2), layout=1, **kwargs)
    assert Y1.shape == (B, T, D, H) and Y_h1.shape == (B, D, H)
    np.testing.assert_allclose(Y1, Y0.transpose(2, 0, 1, 3), rtol=0, atol=1e-6)
    np.testing.assert_allclose(Y_h1, Y_h0.transpose(1, 0, 2), rtol=0, atol=1e-6)
    names = ["Sigmoid", "Tanh"] * D
    Y_o, Y_h_o = oracle_gru(X, W, R, Bias, lens, h0, direction=direction, lbr=0, clip=kwargs["clip"], names=names)
    np.testing.assert_allclose(Y0, Y_o, rtol=0, atol=2e-6)
    np.testing.assert_allclose(Y_h0, Y_h_o, rtol=0, atol=2e-6)


def test_float16_and_float64():
    X, W, R, Bias, h0 = onnx_inputs(1, seed=5, dtype="float64")
    Y64, Y_h64 = gru.onnx.gru(X, W, R, Bias, None, h0)
    Y_o, Y_h_o = oracle_gru(X, W, R, Bias, None, h0, direction="forward", lbr=0, clip=None, names=["Sigmoid", "Tanh"])
    np.testing.assert_allclose(Y64, Y_o, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Y_h64, Y_h_o, rtol=0, atol=1e-12)
    half = [a.astype("float16") for a in (X, W, R, Bias, h0)]
    Y16, Y_h16 = gru.onnx.gru(half[0], half[1], half[2], half[3], None, half[4])
    assert Y16.dtype == np.float16 and Y_h16.dtype == np.float16
    np.testing.assert_allclose(Y16, Y_o, rtol=0, atol=1e-2)


class SpyBackend(Backend):
    """Records the calls it gets; computes with the NumPy reference backend."""

    capabilities = Capabilities(priority=1000)

    def __init__(self):
        from gru.backends.numpy import NumpyBackend

        self.calls = []
        self.inner = NumpyBackend()

    def forward(self, request):
        self.calls.append(request)
        return self.inner.forward(request)


def test_default_activations_run_on_a_backend_and_others_fall_back():
    spy = SpyBackend()
    X, W, R, Bias, h0 = onnx_inputs(2, seed=9)
    expected = gru.onnx.gru(X, W, R, Bias, None, h0, direction="bidirectional", backend="numpy")
    got = gru.onnx.gru(X, W, R, Bias, None, h0, direction="bidirectional", backend=spy)
    assert len(spy.calls) == 1 and spy.calls[0].num_directions == 2
    np.testing.assert_array_equal(got[0], expected[0])
    # explicit defaults are still the defaults
    gru.onnx.gru(X, W, R, Bias, direction="bidirectional", activations=["sigmoid", "TANH"] * 2, backend=spy)
    assert len(spy.calls) == 2
    # clip or other activations: the reference computes them, without error
    gru.onnx.gru(X, W, R, Bias, direction="bidirectional", clip=1.0, backend=spy)
    gru.onnx.gru(X, W, R, Bias, direction="bidirectional", activations=["HardSigmoid", "Tanh"] * 2, backend=spy)
    assert len(spy.calls) == 2


def test_auto_backend_path_matches_reference_path():
    X, W, R, Bias, h0 = onnx_inputs(2, seed=12)
    lens = np.array([T, 2, 0, 1])
    for direction, lbr in itertools.product(("forward", "reverse", "bidirectional"), (0, 1)):
        D = 2 if direction == "bidirectional" else 1
        args = (X, W[:D], R[:D], Bias[:D], lens, h0[:D])
        fast = gru.onnx.gru(*args, direction=direction, linear_before_reset=lbr)
        slow = gru.onnx.gru(*args, direction=direction, linear_before_reset=lbr, clip=1e6)  # clip: reference path
        np.testing.assert_allclose(fast[0], slow[0], rtol=0, atol=2e-6)
        np.testing.assert_allclose(fast[1], slow[1], rtol=0, atol=2e-6)


def test_missing_bias_and_state_are_zeros():
    X, W, R, Bias, h0 = onnx_inputs(1, seed=4)
    a = gru.onnx.gru(X, W, R)
    b = gru.onnx.gru(X, W, R, np.zeros_like(Bias), None, np.zeros_like(h0))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# -- bad input ------------------------------------------------------------------------------------


def bad(kind, argument):
    return pytest.raises(kind, match=rf"^{argument}(?!\w)")


@pytest.mark.parametrize(
    ("change", "kind", "argument"),
    [
        ({"X": normal(T, I)}, ValueError, "X"),
        ({"X": np.zeros((T, B, I), int)}, TypeError, "X"),
        ({"W": normal(1, 3 * H, I + 1)}, ValueError, "W"),
        ({"W": normal(2, 3 * H, I)}, ValueError, "W"),
        ({"W": normal(1, 3 * H, I, dtype="float64")}, TypeError, "W"),
        ({"R": normal(1, 3 * H, H + 1)}, ValueError, "W"),  # H comes from R, so W no longer fits
        ({"B": normal(1, 3 * H)}, ValueError, "B"),
        ({"sequence_lens": np.array([1, 2])}, ValueError, "sequence_lens"),
        ({"sequence_lens": np.array([1, 2, 3, T + 1])}, ValueError, "sequence_lens"),
        ({"sequence_lens": np.array([1, 2, 3, -1])}, ValueError, "sequence_lens"),
        ({"sequence_lens": np.array([1.0, 2, 3, 4])}, TypeError, "sequence_lens"),
        ({"initial_h": normal(1, B + 1, H)}, ValueError, "initial_h"),
        ({"hidden_size": H + 1}, ValueError, "hidden_size"),
        ({"direction": "backward"}, ValueError, "direction"),
        ({"layout": 2}, ValueError, "layout"),
        ({"layout": 1.0}, TypeError, "layout"),
        ({"hidden_size": str(H)}, TypeError, "hidden_size"),
        ({"R": normal(1, 0, 0), "W": normal(1, 0, I), "B": None, "initial_h": None}, ValueError, "R"),
        ({"X": normal(T, B, 0), "W": normal(1, 3 * H, 0)}, ValueError, "X"),
        ({"linear_before_reset": 0.5}, TypeError, "linear_before_reset"),
        ({"linear_before_reset": 2}, ValueError, "linear_before_reset: expected 0 or 1, got 2"),
        ({"linear_before_reset": -1}, ValueError, "linear_before_reset: expected 0 or 1, got -1"),
        ({"clip": -1.0}, ValueError, "clip"),
        ({"clip": float("nan")}, ValueError, "clip"),
        ({"activations": ["Sigmoid"]}, ValueError, "activations"),
        ({"activations": ["Sigmoid", "Swish"]}, ValueError, "activations"),
        ({"activations": "Sigmoid"}, TypeError, "activations"),
        ({"activation_alpha": ["a"]}, TypeError, "activation_alpha"),
        ({"activation_alpha": "12"}, TypeError, "activation_alpha"),  # not the list [1.0, 2.0]
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_arguments_are_named(change, kind, argument):
    X, W, R, Bias, h0 = onnx_inputs(1)
    args = {"X": X, "W": W, "R": R, "B": Bias, "sequence_lens": None, "initial_h": h0}
    args.update(change)
    with bad(kind, argument):
        gru.onnx.gru(**args)


def test_an_empty_batch_takes_empty_sequence_lens():
    """np.asarray([]) is float64; with no sequence there is no length to be of the wrong type (as for layers)."""
    X, W, R, Bias, _ = onnx_inputs(1)
    Y, Y_h = gru.onnx.gru(X[:, :0], W, R, Bias, sequence_lens=[])
    assert Y.shape == (T, 1, 0, H) and Y_h.shape == (1, 0, H)


def test_onnx_attribute_values_as_bytes_work():
    """Attributes read from a NodeProto arrive as bytes."""
    X, W, R, Bias, _ = onnx_inputs(2)
    a = gru.onnx.gru(X, W, R, Bias, direction=b"bidirectional", activations=[b"Sigmoid", b"Tanh"] * 2)
    b = gru.onnx.gru(X, W, R, Bias, direction="bidirectional")
    np.testing.assert_array_equal(a[0], b[0])


def test_torch_parameters_are_taken_as_weights(torch):
    """W, R and B are copied: a parameter that requires grad is a value; X that requires grad is refused."""
    rng = np.random.default_rng(0)
    W, R, B = (rng.standard_normal(s).astype("float32") for s in [(1, 12, 3), (1, 12, 4), (1, 24)])
    x = rng.standard_normal((5, 2, 3)).astype("float32")
    params = [torch.nn.Parameter(torch.from_numpy(a)) for a in (W, R, B)]
    for got, expected in zip(gru.onnx.gru(x, *params), gru.onnx.gru(x, W, R, B), strict=True):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(TypeError, match=r"X: expected a tensor that does not require grad"):
        gru.onnx.gru(torch.from_numpy(x).requires_grad_(True), W, R, B)
