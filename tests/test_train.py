"""gru.train: the readout, the losses and Adam, each against numbers worked out independently."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import gru
from gru.train import Adam, Linear, clip_grad_norm, cross_entropy, mse_loss

EPS = 1e-6  # central differences in float64: truncation O(EPS²), rounding O(1e-16 / EPS)


def numerical_gradient(f, x: np.ndarray) -> np.ndarray:
    """d f / d x by central differences, one element at a time (x is changed and restored)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + EPS
        up = f()
        x[i] = saved - EPS
        down = f()
        x[i] = saved
        grad[i] = (up - down) / (2 * EPS)
    return grad


# -- losses -----------------------------------------------------------------------------------------


def test_mse_value_and_gradient():
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    value, d_pred = mse_loss(pred, target)
    assert value == pytest.approx(np.mean((pred - target) ** 2), rel=1e-14)
    assert d_pred.shape == pred.shape and d_pred.dtype == pred.dtype
    np.testing.assert_allclose(d_pred, numerical_gradient(lambda: mse_loss(pred, target)[0], pred), atol=1e-9)


def test_mse_keeps_float32():
    value, d_pred = mse_loss(np.ones(4, "float32"), np.zeros(4))
    assert value == pytest.approx(1.0) and d_pred.dtype == np.float32
    with pytest.raises(ValueError, match="target"):
        mse_loss(np.ones(4), np.ones(3))


def test_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 4))  # leading dimensions: every (2, 3) position is one sample
    labels = rng.integers(0, 4, (2, 3))
    value, d_logits = cross_entropy(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.mean(np.log(np.take_along_axis(probs, labels[..., None], -1)))
    assert value == pytest.approx(expected, rel=1e-13)
    assert d_logits.shape == logits.shape
    np.testing.assert_allclose(
        d_logits, numerical_gradient(lambda: cross_entropy(logits, labels)[0], logits), atol=1e-9
    )


def test_mse_with_a_mask_averages_the_selected_steps_only():
    """Per-step outputs of sequences of lengths 3 and 1 (T = 3): padding, NaN here, neither counts nor leaks."""
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    pred[1, 1:] = np.nan  # what a caller may keep in padding
    mask = np.arange(3) < np.array([3, 1])[:, None]  # (B, T)
    value, grad = mse_loss(pred, target, mask=mask)
    selected = [(0, 0), (0, 1), (0, 2), (1, 0)]
    diffs = np.array([pred[b, t] - target[b, t] for b, t in selected])  # 4 steps x 2 features
    assert value == pytest.approx(np.sum(diffs**2) / 8, rel=1e-12)
    expected = np.zeros_like(pred)
    for b, t in selected:
        expected[b, t] = 2 * (pred[b, t] - target[b, t]) / 8
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=0)


def test_infinite_padding_under_a_mask_warns_of_nothing():
    pred = np.array([[1.0, np.inf], [2.0, -np.inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = mse_loss(pred, np.zeros((2, 2)), mask=np.array([[True, False], [True, False]]))
        assert value == pytest.approx(2.5) and np.isfinite(grad).all()
        logits = np.array([[0.0, 1.0], [np.inf, np.inf]])
        value, grad = cross_entropy(logits, np.array([1, -100]), mask=np.array([True, False]))
        assert np.isfinite(value) and np.isfinite(grad).all()


def test_a_mask_that_selects_nothing_gives_zero_not_nan():
    value, grad = mse_loss(np.ones((2, 3)), np.zeros((2, 3)), mask=np.zeros(2, bool))
    assert value == 0.0 and not grad.any()
    value, grad = cross_entropy(np.ones((2, 3)), np.array([0, -100]), mask=np.zeros(2, bool))
    assert value == 0.0 and not grad.any()


def test_cross_entropy_with_a_mask_ignores_padded_labels():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 3, 4))
    labels = np.array([[1, 3, 0], [2, -100, -100]])  # -100: padding, as PyTorch's ignore_index
    mask = labels >= 0
    value, grad = cross_entropy(logits, labels, mask=mask)
    expected_value, expected_grad = 0.0, np.zeros_like(logits)
    for b, t in zip(*np.nonzero(mask), strict=True):
        p = np.exp(logits[b, t] - logits[b, t].max())
        p /= p.sum()
        expected_value -= np.log(p[labels[b, t]]) / 4
        expected_grad[b, t] = (p - np.eye(4)[labels[b, t]]) / 4
    assert value == pytest.approx(expected_value, rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(
    ("mask", "kind", "said"),
    [
        (np.ones((2, 3), np.int64), TypeError, "mask: expected booleans"),
        (np.ones((3, 2), bool), ValueError, "mask: expected shape (2, 3)"),
        ("yes", TypeError, "mask: expected"),
        (np.ma.masked_array(np.ones((2, 3), bool)), TypeError, "mask: expected a plain array, got a masked array"),
        (np.ones((2, 3, 4, 5), bool), ValueError, "mask: expected at most 3 axes (pred's leading ones), got 4"),
    ],
)
def test_bad_masks_are_named(mask, kind, said):
    with pytest.raises(kind, match=re.escape(said)):
        mse_loss(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), mask=mask)


def test_mse_of_float32_values_near_their_range_does_not_overflow():
    value, grad = mse_loss(np.float32([3e38]), np.float32([-3e38]))
    assert value == pytest.approx(3.6e77, rel=1e-6)  # (6e38)² in float64
    assert grad.dtype == np.float32 and np.isinf(grad[0])  # 1.2e39 is past float32: inf, as the dtype says


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-5000.0, 5000.0, 0.0]])
    value, d_logits = cross_entropy(logits, np.array([0, 2]))
    # the first sample is certain and right (loss 0), the second certain and wrong by 5000
    assert value == pytest.approx(5000.0 / 2)
    assert np.all(np.isfinite(d_logits))
    np.testing.assert_allclose(d_logits, [[0, 0, 0], [0, 0.5, -0.5]], atol=1e-12)


def test_cross_entropy_of_float32_logits_near_their_range_does_not_overflow():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning escapes either
        value, d_logits = cross_entropy(np.float32([[3e38, -3e38]]), np.array([1]))
    assert value == pytest.approx(6e38, rel=1e-6)  # the logits' gap, in float64
    assert d_logits.dtype == np.float32
    np.testing.assert_allclose(d_logits, [[1.0, -1.0]])


def test_a_zero_loss_is_positive_zero():
    value, _ = cross_entropy(np.array([[0.0, -1e6]]), np.array([0]))
    assert value == 0.0 and math.copysign(1.0, value) == 1.0


def test_mse_names_a_ragged_mask():
    with pytest.raises(TypeError, match=r"^mask: expected booleans"):
        mse_loss(np.zeros((2, 3)), np.zeros((2, 3)), mask=[[True, False], [True]])


def test_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="labels"):
        cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))


def test_losses_refuse_integer_predictions_and_read_targets_in_the_predictions_dtype():
    """An integer pred would round the gradient (and the target) to integers: refused, never a silent 0."""
    with pytest.raises(TypeError, match=r"^pred: expected a floating-point array, got dtype int"):
        mse_loss(np.array([1, 2]), np.array([1.5, 2.5]))
    with pytest.raises(TypeError, match=r"^pred: expected a floating-point array"):
        mse_loss([0, 0], [0.5, 0.5])
    with pytest.raises(TypeError, match=r"^logits: expected a floating-point array, got dtype int"):
        cross_entropy(np.array([[1, 2, 3]]), np.array([0]))
    with pytest.raises(TypeError, match=r"^target: expected a real-valued array, got dtype <U"):
        mse_loss(np.ones(2), np.array(["1", "2"]))
    with pytest.raises(TypeError, match=r"^target: expected a real-valued array, got dtype complex"):
        mse_loss(np.ones(1), np.array([1 + 1j]))  # casting would drop the imaginary part
    # by hand: diffs (-0.5, -0.5) → mean square 0.25, gradient 2 · diff / 2
    value, d_pred = mse_loss(np.array([1.0, 2.0]), np.array([1.5, 2.5]))
    assert value == 0.25
    np.testing.assert_array_equal(d_pred, [-0.5, -0.5])
    value, d_pred = mse_loss(np.array([0.5, 0.5]), np.array([0, 1]))  # integer targets are fine
    assert value == 0.25
    np.testing.assert_array_equal(d_pred, [0.5, -0.5])
    # by hand: softmax(1, 2, 3) = e^k / (e + e² + e³); the loss of class 0 is log(1 + e + e²)
    value, d_logits = cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([0]))
    total = math.e + math.e**2 + math.e**3
    assert value == pytest.approx(math.log(1 + math.e + math.e**2), rel=1e-14)
    np.testing.assert_allclose(d_logits, [[math.e / total - 1, math.e**2 / total, math.e**3 / total]], rtol=1e-14)


def test_cross_entropy_without_a_class_axis_says_so():
    with pytest.raises(ValueError, match=r"^logits: expected shape \(\.\.\., C\) with C >= 1 classes.*got \(\)"):
        cross_entropy(np.float64(1), np.int64(0))
    with pytest.raises(ValueError, match=r"^logits: expected shape .*got \(2, 0\)"):
        cross_entropy(np.zeros((2, 0)), np.array([0, 0]))


# -- Linear -----------------------------------------------------------------------------------------


def test_linear_forward_and_gradients_against_finite_differences():
    rng = np.random.default_rng(2)
    layer = Linear(4, 3, dtype="float64", seed=0)
    x = rng.standard_normal((2, 5, 4))
    w = rng.standard_normal((2, 5, 3))  # the loss sum(w * y) has d loss / d y = w

    def loss() -> float:
        return float(np.sum(w * layer(x)))

    sd = layer.state_dict()
    np.testing.assert_allclose(layer(x), x @ sd["weight"].T + sd["bias"], rtol=1e-14)
    layer(x)
    grads = layer.backward(w)
    np.testing.assert_allclose(grads.input, numerical_gradient(loss, x), atol=1e-8)
    for name in ("weight", "bias"):
        param = sd[name]

        def loss_at(name=name, param=param) -> float:
            layer.load_state_dict({**sd, name: param})
            return loss()

        np.testing.assert_allclose(grads.params[name], numerical_gradient(loss_at, param), atol=1e-8, err_msg=name)


def test_linear_without_bias_and_checks():
    layer = Linear(3, 2, bias=False, dtype="float64", seed=0)
    assert set(layer.state_dict()) == {"weight"}
    x = np.ones((4, 3))
    np.testing.assert_allclose(layer(x), x @ layer.weight.T)
    assert set(layer.backward(np.ones((4, 2))).params) == {"weight"}
    with pytest.raises(TypeError, match="float64"):
        layer(np.ones((4, 3), "float32"))
    with pytest.raises(ValueError, match="x"):
        layer(np.ones((4, 2)))
    with pytest.raises(ValueError, match="d_output"):
        layer.backward(np.ones((4, 3)))
    with pytest.raises(TypeError, match=r"^d_output: expected dtype float64 \(the layer's dtype\), got float32"):
        layer.backward(np.ones((4, 2), "float32"))
    with pytest.raises(TypeError, match=r"^d_output: expected a floating-point array of float64, got dtype <U"):
        layer.backward(np.full((4, 2), "1"))
    with pytest.raises(ValueError, match="state_dict"):
        layer.load_state_dict({"weight": np.ones((3, 2))})
    with pytest.raises(RuntimeError):
        Linear(3, 2).backward(np.ones(2))


def test_linear_bias_is_the_array_as_in_torch():
    """torch.nn.Linear's .bias is the parameter (None without): ``x @ W.T + b`` must mean the layer."""
    layer = Linear(3, 2, dtype="float64", seed=0)
    x = np.random.default_rng(1).standard_normal((4, 3))
    np.testing.assert_allclose(x @ layer.weight.T + layer.bias, layer(x), rtol=1e-15)
    np.testing.assert_array_equal(layer.bias, layer.state_dict()["bias"])
    assert not layer.bias.flags.writeable
    assert Linear(3, 2, bias=False).bias is None
    assert repr(layer) == "Linear(3, 2, bias=True, dtype='float64')"


def test_linear_takes_its_dtype_in_the_other_byte_order():
    layer = Linear(3, 2, seed=0)
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(layer(x.astype(">f4")), layer(x))
    np.testing.assert_array_equal(
        layer.backward(np.ones((4, 2), ">f4")).input, layer.backward(np.ones((4, 2), "f4")).input
    )
    with pytest.raises(TypeError, match=r"^x: expected dtype float32 \(the layer's dtype\), got >f8"):
        layer(x.astype(">f8"))


def test_adam_steps_from_several_threads_take_turns():
    import threading

    layer = Linear(2, 1, dtype="float64", seed=0)
    opt = Adam([layer], lr=1e-3)
    grads = [{"weight": np.ones((1, 2)), "bias": np.ones(1)}]
    threads = [threading.Thread(target=lambda: [opt.step(grads) for _ in range(300)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # the same gradient 1200 times: m and v stay at (1, 1) after bias correction, so every step moves lr exactly
    assert opt.steps == 1200
    reference = Linear(2, 1, dtype="float64", seed=0)
    np.testing.assert_allclose(layer.weight, reference.weight - 1200 * 1e-3 / (1 + 1e-8), rtol=1e-9)


def test_linear_refuses_a_tensor_that_requires_grad_as_the_gru_does(torch):
    layer = Linear(3, 2, seed=0)
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(TypeError, match=r"^x: expected a tensor that does not require grad"):
        layer(x)
    np.testing.assert_array_equal(layer(x.detach()), layer(x.detach().numpy()))


def test_linear_reads_a_cuda_tensor_on_the_host_without_cupy(torch, monkeypatch):
    """Linear runs on the host: a CUDA tensor is copied there by torch (a stand-in here: no GPU needed)."""

    class OnCuda(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", 0)

        def cpu(self):
            return self.as_subclass(torch.Tensor).clone()

    monkeypatch.setitem(__import__("sys").modules, "cupy", None)  # as where CuPy is not installed
    layer = Linear(3, 2, dtype="float64", seed=0)
    x = torch.ones(4, 3, dtype=torch.float64)
    np.testing.assert_array_equal(layer(x.as_subclass(OnCuda)), layer(x.numpy()))
    with pytest.raises(TypeError, match=r"^x: expected a tensor that does not require grad"):
        layer(x.clone().requires_grad_(True).as_subclass(OnCuda))


def test_an_adam_pickled_before_its_lock_still_steps():
    import pickle

    layer = Linear(2, 1, dtype="float64", seed=0)
    opt = Adam([layer])
    state = opt.__getstate__()
    del state["_stepping"]  # as pickled before steps took turns
    old = Adam.__new__(Adam)
    old.__setstate__(state)  # what unpickling such a file does
    old.step([{"weight": np.ones((1, 2)), "bias": np.ones(1)}])
    assert old.steps == 1
    assert pickle.loads(pickle.dumps(old)).steps == 1


def test_a_list_of_tensors_that_require_grad_is_named(torch):
    with pytest.raises(TypeError, match=r"^x: expected a nest of numbers, got a list NumPy cannot read"):
        Linear(3, 2, dtype="float64")([torch.ones(3, dtype=torch.float64, requires_grad=True)])


def test_a_linear_pickled_when_bias_was_its_flag_still_loads():
    import pickle

    layer = Linear(3, 2, seed=0)
    state = layer.__getstate__()
    state["bias"] = state.pop("_has_bias")  # the attribute's earlier name
    old = Linear.__new__(Linear)
    old.__setstate__(state)
    restored = pickle.loads(pickle.dumps(old))
    x = np.ones((1, 3), "float32")
    np.testing.assert_array_equal(restored(x), layer(x))
    assert repr(restored) == repr(layer) and restored.bias is not None


def test_a_step_from_inside_a_step_raises_instead_of_waiting_for_itself():
    class Stepping(Linear):
        def load_state_dict(self, state_dict, strict=True):
            opt.step(grads)  # e.g. a hook that steps the optimiser again

    layer = Stepping(2, 1, dtype="float64", seed=0)
    opt = Adam([layer])
    grads = [{"weight": np.ones((1, 2)), "bias": np.ones(1)}]
    with pytest.raises(RuntimeError, match=r"^step: called from inside a step"):
        opt.step(grads)
    assert opt.steps == 0
    ok = Linear(2, 1, dtype="float64", seed=0)
    opt.layers = [ok]  # the optimiser is usable again afterwards
    opt.step(grads)
    assert opt.steps == 1


def test_linear_differentiates_the_call_even_if_x_or_the_weights_changed_since():
    """The weight gradient is d_yᵀ x and the input gradient d_y W, with x and W as they were at the call."""
    rng = np.random.default_rng(3)
    layer = Linear(3, 2, dtype="float64", seed=0)
    weight_at_call = layer.state_dict()["weight"]
    x = rng.standard_normal((4, 3))
    x_at_call = x.copy()
    d_y = rng.standard_normal((4, 2))
    layer(x)
    x[...] = 0  # in place, as a caller reusing a buffer would
    layer.load_state_dict({"weight": np.zeros((2, 3)), "bias": np.zeros(2)})
    grads = layer.backward(d_y)
    np.testing.assert_allclose(grads.params["weight"], d_y.T @ x_at_call, rtol=1e-14)
    np.testing.assert_allclose(grads.input, d_y @ weight_at_call, rtol=1e-14)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((2.5, 1), {}, TypeError, r"^in_features: expected an integer >= 1, got 2\.5"),
        (("3", 1), {}, TypeError, r"^in_features: expected an integer >= 1, got '3'"),
        ((None, 1), {}, TypeError, r"^in_features: expected an integer >= 1, got None"),
        ((True, True), {}, TypeError, r"^in_features: expected an integer >= 1, got True"),
        ((2, 0), {}, ValueError, r"^out_features: expected an integer >= 1, got 0"),
        ((2, 1), {"bias": "yes"}, TypeError, r"^bias: expected True or False, got 'yes'"),
        ((2, 1), {"dtype": "foo"}, TypeError, r"^dtype: expected one of \('float32', 'float64'\), got 'foo'"),
        ((2, 1), {"dtype": None}, TypeError, r"^dtype: expected one of .*got None"),
        ((2, 1), {"seed": "x"}, TypeError, r"^seed: expected an int, a numpy\.random\.Generator or None, got 'x'"),
    ],
)
def test_linear_refuses_bad_arguments(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        Linear(*args, **kwargs)


def test_linear_load_state_dict_refuses_what_is_not_a_mapping_of_numbers():
    layer = Linear(2, 1, dtype="float64", seed=0)
    before = layer.state_dict()
    with pytest.raises(TypeError, match=r"^state_dict: expected a mapping of parameter names to arrays, got list"):
        layer.load_state_dict([1, 2])
    with pytest.raises(TypeError, match=r"^state_dict\['bias'\]: expected a real numeric array, got dtype <U"):
        layer.load_state_dict({"weight": np.ones((1, 2)), "bias": np.array(["0.5"])})
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# -- clipping and Adam -------------------------------------------------------------------------------


def test_clip_grad_norm_scales_all_gradients_together():
    grads = [{"a": np.array([3.0, 0.0])}, {"b": np.array([[0.0], [4.0]])}]  # global norm 5
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    factor = 1.0 / (5.0 + 1e-6)  # torch's: max_norm / (norm + 1e-6)
    np.testing.assert_allclose(clipped[0]["a"], [3 * factor, 0.0], rtol=1e-15)
    np.testing.assert_allclose(clipped[1]["b"], [[0.0], [4 * factor]], rtol=1e-15)
    np.testing.assert_array_equal(grads[0]["a"], [3.0, 0.0])  # the inputs are left alone
    same, _ = clip_grad_norm(grads, 10.0)
    np.testing.assert_array_equal(same[1]["b"], grads[1]["b"])


@pytest.mark.parametrize(
    ("max_norm", "error", "message"),
    [
        ("1", TypeError, r"^max_norm: expected a number > 0, got '1' \(str\)"),
        (None, TypeError, r"^max_norm: expected a number > 0, got None"),
        (np.array([1, 2]), TypeError, r"^max_norm: expected a number > 0, got array\(\[1, 2\]\) \(ndarray\)"),
        (True, TypeError, r"^max_norm: expected a number > 0, got True"),
        (0.0, ValueError, r"^max_norm: expected a number > 0, got 0\.0"),
        (math.nan, ValueError, r"^max_norm: expected a number > 0, got nan"),
    ],
)
def test_clip_grad_norm_refuses_a_bad_max_norm(max_norm, error, message):
    with pytest.raises(error, match=message):
        clip_grad_norm([{"a": np.ones(3)}], max_norm)


def test_clip_grad_norm_wants_a_list_of_dictionaries():
    params = {"a": np.ones(3)}
    with pytest.raises(TypeError, match=r"^grads: expected a list of gradient dictionaries.*got dict"):
        clip_grad_norm(params, 1.0)
    with pytest.raises(TypeError, match=r"^grads\[0\]: expected a dictionary of gradients.*got ndarray"):
        clip_grad_norm([np.ones(3)], 1.0)
    with pytest.raises(TypeError, match=r"^grads\[1\]\['b'\]: expected a real-valued array, got dtype <U"):
        clip_grad_norm([params, {"b": np.array(["x"])}], 1.0)
    _, norm = clip_grad_norm([params], math.inf)  # only measures
    assert norm == pytest.approx(math.sqrt(3), rel=1e-15)


def test_clip_grad_norm_gives_torch_gradients_back_as_torch(torch):
    """GRU.backward returns torch tensors for torch input: they are clipped and come back as tensors."""
    grads = [{"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[4.0]], dtype=torch.float64, requires_grad=True)}]
    clipped, norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(5.0)
    a, b = clipped[0]["a"], clipped[0]["b"]
    assert isinstance(a, torch.Tensor) and a.dtype == torch.float32
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float64
    np.testing.assert_allclose(a.numpy(), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(b.detach().numpy(), [[4.0 / (5.0 + 1e-6)]], rtol=1e-15)
    np.testing.assert_array_equal(grads[0]["a"].numpy(), [3.0, 0.0])  # the inputs are left alone
    same, _ = clip_grad_norm(grads, 10.0)
    assert same[0]["a"] is grads[0]["a"]


@pytest.mark.parametrize(
    "values",
    [[3.0, -4.0, 0.5], [1e-3, 2e-3, 0.0], [np.inf, 1e6, 2.0], [np.nan, 1e6, 2.0], [-np.inf, np.inf, 0.0]],
    ids=["clipped", "below", "inf", "nan", "infs"],
)
def test_clip_grad_norm_agrees_with_torch_also_for_a_nonfinite_norm(torch, values):
    """An inf norm scales by 0 (inf entries: NaN), a NaN norm makes every gradient NaN: never one left unclipped."""
    a, b = np.array(values[:2]), np.array([[values[2]]])
    clipped, norm = clip_grad_norm([{"a": a}, {"b": b}], 1.0)
    tensors = [torch.zeros(shape, dtype=torch.float64, requires_grad=True) for shape in [(2,), (1, 1)]]
    tensors[0].grad, tensors[1].grad = torch.from_numpy(a.copy()), torch.from_numpy(b.copy())
    expected_norm = float(torch.nn.utils.clip_grad_norm_(tensors, 1.0))
    assert norm == pytest.approx(expected_norm, rel=1e-12, nan_ok=True)
    np.testing.assert_allclose(clipped[0]["a"], tensors[0].grad.numpy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(clipped[1]["b"], tensors[1].grad.numpy(), rtol=1e-12, equal_nan=True)
    if not math.isfinite(norm):
        with pytest.raises(ValueError, match=r"^grads: expected gradients of finite norm, got a norm of (inf|nan)"):
            clip_grad_norm([{"a": a}, {"b": b}], 1.0, error_if_nonfinite=True)
    else:
        assert clip_grad_norm([{"a": a}], 1.0, error_if_nonfinite=True)[1] == pytest.approx(np.linalg.norm(a))
    with pytest.raises(TypeError, match=r"^error_if_nonfinite: expected"):
        clip_grad_norm([{"a": a}], 1.0, error_if_nonfinite="yes")


def test_clip_grad_norm_with_an_infinite_max_norm_only_measures():
    grads = [{"a": np.array([np.inf, 1.0])}]
    clipped, norm = clip_grad_norm(grads, math.inf)
    assert norm == math.inf and clipped[0]["a"] is grads[0]["a"]


def test_adam_two_steps_by_hand():
    """Adam's first two steps, worked out on paper for lr=0.1, betas (0.5, 0.75), eps=0.

    Step 1, g = 2:  m = 1, v = 1;         m̂ = 1/0.5 = 2,      v̂ = 1/0.25 = 4,        p -= 0.1 · 2/2 = 0.1.
    Step 2, g = -1: m = 0.5 - 0.5 = 0,  v = 0.75 + 0.25 = 1;  m̂ = 0,  p unchanged.
    For a second parameter, g = 1 then 3:
    Step 1: m = 0.5, v = 0.25; m̂ = 1, v̂ = 1, p -= 0.1.
    Step 2: m = 0.25 + 1.5 = 1.75, v = 0.1875 + 2.25 = 2.4375;
            m̂ = 1.75 / 0.75 = 7/3, v̂ = 2.4375 / 0.4375 = 39/7, p -= 0.1 · (7/3) / √(39/7).
    """
    layer = Linear(1, 1, dtype="float64", seed=0)
    layer.load_state_dict({"weight": np.array([[1.0]]), "bias": np.array([-1.0])})
    opt = Adam([layer], lr=0.1, betas=(0.5, 0.75), eps=0.0)
    opt.step([{"weight": np.array([[2.0]]), "bias": np.array([1.0])}])
    sd = layer.state_dict()
    assert sd["weight"][0, 0] == pytest.approx(0.9, abs=1e-15)
    assert sd["bias"][0] == pytest.approx(-1.1, abs=1e-15)
    opt.step([{"weight": np.array([[-1.0]]), "bias": np.array([3.0])}])
    sd = layer.state_dict()
    assert sd["weight"][0, 0] == pytest.approx(0.9, abs=1e-15)
    assert sd["bias"][0] == pytest.approx(-1.1 - 0.1 * (7 / 3) / np.sqrt(39 / 7), abs=1e-14)
    assert opt.steps == 2


def test_adam_updates_a_gru_through_load_state_dict_and_checks_everything_first():
    m = gru.GRU(2, 3, seed=0)
    readout = Linear(3, 1, seed=0)
    before = m.state_dict()
    opt = Adam([m, readout], lr=0.01)
    ones = [{k: np.ones_like(v) for k, v in layer.state_dict().items()} for layer in (m, readout)]
    bad = [ones[0], {"weight": ones[1]["weight"]}]  # the readout's bias gradient is missing
    with pytest.raises(ValueError, match="grads"):
        opt.step(bad)
    for k, v in m.state_dict().items():  # nothing changed, not even the first layer
        np.testing.assert_array_equal(v, before[k])
    assert opt.steps == 0
    opt.step(ones)
    for k, v in m.state_dict().items():  # the first step moves every parameter by lr against the gradient's sign
        assert v.dtype == np.float32
        np.testing.assert_allclose(v, before[k] - 0.01, atol=1e-6)
    with pytest.raises(ValueError, match="one dictionary per layer"):
        opt.step(ones[:1])


def test_adam_refuses_non_finite_gradients_and_says_which():
    m = gru.GRU(2, 3, seed=0)
    opt = Adam([m], lr=0.01)
    grads = {k: np.ones_like(v) for k, v in m.state_dict().items()}
    grads["weight_hh_l0"] = grads["weight_hh_l0"].copy()
    grads["weight_hh_l0"][0, :2] = [np.nan, np.inf]
    with pytest.raises(
        ValueError, match=r"^grads\[0\]\['weight_hh_l0'\]: expected finite values, got 2 NaN or infinite of 27;"
    ):
        opt.step([grads])
    assert opt.steps == 0


@pytest.mark.parametrize(
    ("dtype", "size"),
    [("float64", 1e200), ("float32", 1e200)],  # its square overflows float64: v would stay inf, the weight frozen
)
def test_adam_refuses_a_finite_gradient_whose_square_overflows(dtype, size):
    m = gru.GRU(2, 3, dtype=dtype, seed=0)
    before = m.state_dict()
    opt = Adam([m], lr=0.01)
    grads = {k: np.zeros(v.shape, np.float64) for k, v in before.items()}
    grads["bias_hh_l0"][4] = size
    with pytest.raises(ValueError, match=r"^grads\[0\]\['bias_hh_l0'\]: expected gradients whose squares"):
        opt.step([grads])
    assert opt.steps == 0
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    opt.step([{k: np.ones_like(v) for k, v in before.items()}])  # and the next batch goes on as a first step
    np.testing.assert_allclose(m.state_dict()["bias_hh_l0"], before["bias_hh_l0"] - 0.01, rtol=1e-5)


def test_adam_with_eps_0_leaves_a_parameter_with_no_gradient_where_it_is():
    """m̂ / √v̂ is 0 / 0 for a gradient that has been zero at every step: no gradient, no move (not NaN)."""
    m = gru.GRU(2, 3, seed=0)
    before = m.state_dict()
    opt = Adam([m], lr=0.01, eps=0.0)
    grads = {k: np.ones_like(v) for k, v in before.items()}
    grads["weight_hh_l0"] = np.zeros_like(before["weight_hh_l0"])
    for _ in range(2):
        opt.step([grads])
    after = m.state_dict()
    np.testing.assert_array_equal(after["weight_hh_l0"], before["weight_hh_l0"])
    np.testing.assert_allclose(after["bias_ih_l0"], before["bias_ih_l0"] - 0.02, rtol=1e-5)


def test_adam_refuses_an_update_that_leaves_the_parameters_dtype():
    """lr 1e39 on a float32 layer: every update is finite in float64 and past float32's range."""
    m = gru.GRU(2, 3, seed=0)
    before = m.state_dict()
    opt = Adam([m], lr=1e39)
    with pytest.raises(ValueError, match=r"^lr: expected a step that keeps the parameters finite, .*'weight_ih_l0'"):
        opt.step([{k: np.ones_like(v) for k, v in before.items()}])
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_adam_steps_a_layer_that_already_holds_an_infinite_parameter():
    """Only what the step would break is refused: an inf the caller loaded stays inf, the others move."""
    m = gru.GRU(2, 3, dtype="float64", seed=0)
    state = m.state_dict()
    state["bias_hh_l0"][0] = np.inf
    m.load_state_dict(state)
    opt = Adam([m], lr=0.01)
    opt.step([{k: np.full_like(v, 0.1) for k, v in state.items()}])
    after = m.state_dict()
    assert opt.steps == 1 and after["bias_hh_l0"][0] == np.inf
    np.testing.assert_allclose(after["bias_hh_l0"][1:], state["bias_hh_l0"][1:] - 0.01, rtol=1e-6)


class _Refusing:
    """A layer whose load_state_dict refuses any weight above 10, after the optimiser has computed it."""

    def __init__(self) -> None:
        self.weight = np.array([1.0])

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight.copy()}

    def load_state_dict(self, state_dict) -> None:
        if np.any(state_dict["weight"] > 10):
            raise ValueError("state_dict['weight']: expected values <= 10")
        self.weight = np.array(state_dict["weight"], dtype=np.float64)


def test_a_rejected_adam_step_changes_nothing():
    """Not the parameters, not the moments, not steps: the next good step is a first step (moves each by lr)."""
    first, second = Linear(2, 1, dtype="float64", seed=0), Linear(1, 1, dtype="float64", seed=1)
    before = [first.state_dict(), second.state_dict()]
    opt = Adam([first, second], lr=0.01)
    ones = {k: np.ones_like(v) for k, v in before[0].items()}
    bad_seconds = [
        {"weight": np.array([["x"]]), "bias": np.ones(1)},  # cannot be a number
        {"weight": [[1.0]], "bias": [[1.0, 2.0], [3.0]]},  # ragged
        {"weight": np.ones((1, 1)), "bias": np.ones(2)},  # wrong shape
        {"weight": np.array([[np.nan]]), "bias": np.ones(1)},  # NaN: the moments would stay NaN for good
        {"weight": np.ones((1, 1)), "bias": np.array([-np.inf])},
    ]
    for bad in bad_seconds:
        with pytest.raises((TypeError, ValueError), match=r"^grads\[1\]"):
            opt.step([ones, bad])
        assert opt.steps == 0
        for layer, state in zip((first, second), before, strict=True):
            for k, v in layer.state_dict().items():
                np.testing.assert_array_equal(v, state[k])
    # a first Adam step moves every parameter by lr against its gradient's sign (m̂ / √v̂ = sign g);
    # had the rejected steps counted, m̂ would mix their +1 with this -1 and move far less
    opt.step([{k: -v for k, v in ones.items()}, {k: np.ones_like(v) for k, v in before[1].items()}])
    assert opt.steps == 1
    for k, v in first.state_dict().items():
        np.testing.assert_allclose(v, before[0][k] + 0.01, rtol=1e-6)

    refusing = _Refusing()
    opt = Adam([first, refusing], lr=100.0)
    state = first.state_dict()
    with pytest.raises(ValueError, match="expected values <= 10"):
        opt.step([ones, {"weight": -np.ones(1)}])  # the second layer refuses 1 + 100: the first is put back
    assert opt.steps == 0
    for k, v in first.state_dict().items():
        np.testing.assert_array_equal(v, state[k])


def test_adam_steps_with_torch_gradients_as_with_numpy(torch):
    """GRU.backward returns torch tensors for torch input; Adam reads them (requires_grad too) like arrays."""
    rng = np.random.default_rng(4)
    layers = [Linear(3, 2, dtype="float64", seed=0), Linear(3, 2, dtype="float64", seed=0)]
    grads = {"weight": rng.standard_normal((2, 3)), "bias": rng.standard_normal(2)}
    opts = [Adam([layer], lr=0.1) for layer in layers]
    opts[0].step([grads])
    opts[1].step([{"weight": torch.tensor(grads["weight"], requires_grad=True), "bias": torch.tensor(grads["bias"])}])
    for k, v in layers[0].state_dict().items():
        np.testing.assert_array_equal(layers[1].state_dict()[k], v)


@pytest.mark.parametrize(
    ("layers", "kwargs", "error", "message"),
    [
        ("one", {"lr": "0.1"}, TypeError, r"^lr: expected a finite number > 0, got '0\.1' \(str\)"),
        ("one", {"lr": math.inf}, ValueError, r"^lr: expected a finite number > 0, got inf"),
        ("one", {"lr": 0}, ValueError, r"^lr: expected a finite number > 0, got 0"),
        ("one", {"eps": math.inf}, ValueError, r"^eps: expected a finite number >= 0, got inf"),
        ("one", {"eps": -1e-8}, ValueError, r"^eps: expected a finite number >= 0, got -1e-08"),
        ("one", {"betas": 0.9}, TypeError, r"^betas: expected two numbers in \[0, 1\), got 0\.9 \(float\)"),
        ("one", {"betas": (0.9, 0.99, 0.5)}, ValueError, r"^betas: expected two numbers in \[0, 1\), got 3"),
        ("one", {"betas": (0.9, 1.0)}, ValueError, r"^betas\[1\]: expected a number in \[0, 1\), got 1\.0"),
        ("one", {"betas": ("0.9", 0.99)}, TypeError, r"^betas\[0\]: expected a number in \[0, 1\), got '0\.9'"),
        ([3], {}, TypeError, r"^layers\[0\]: expected a layer with state_dict\(\) and load_state_dict\(\), got int"),
        ("bare", {}, TypeError, r"^layers: expected a list of layers, got Linear"),
        ([], {}, ValueError, r"^layers: expected at least one layer"),
        ("twice", {}, ValueError, r"^layers\[1\]: expected distinct layers, got layers\[0\] again"),
    ],
)
def test_adam_refuses_bad_arguments(layers, kwargs, error, message):
    layer = Linear(2, 1, seed=0)
    if isinstance(layers, str):  # built here: parameters are made before any layer exists
        layers = {"one": [layer], "bare": layer, "twice": [layer, layer]}[layers]
    with pytest.raises(error, match=message):
        Adam(layers, **kwargs)


# -- all together ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "cython"])
def test_changing_what_a_training_call_took_or_gave_does_not_change_its_gradients(backend):
    """x and h0 (uncopied when canonical), and the output and gates it returned, changed in place before backward."""
    if not gru.backend_available(backend):
        pytest.skip(f"{backend} is not available here")
    layer = gru.GRU(3, 4, num_layers=2, dtype="float64", backend=backend, seed=0)
    rng = np.random.default_rng(0)
    x, h0, target = rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 2, 4)), rng.standard_normal((5, 2, 4))
    y, _ = layer(x, h0, train=True)
    expected = layer.backward(2 * (y - target))

    y, h_n, gates = layer(x, h0, train=True, return_gates=True)
    y -= target  # an ordinary in-place residual
    h_n[...] = 0
    gates.z[...] = 0.5
    x[...] = 0
    h0[...] = 1
    got = layer.backward(2 * y)
    np.testing.assert_array_equal(got.input, expected.input)
    np.testing.assert_array_equal(got.h0, expected.h0)
    for name, value in expected.params.items():
        np.testing.assert_array_equal(got.params[name], value, err_msg=name)


def test_a_tiny_training_loop_reduces_the_loss():
    """Classify whether a sequence's sum is positive: GRU + Linear + cross-entropy + Adam, 60 steps."""
    rng = np.random.default_rng(0)
    m = gru.GRU(1, 8, batch_first=True, dtype="float64", backend="numpy", seed=0)
    readout = Linear(8, 2, dtype="float64", seed=1)
    opt = Adam([m, readout], lr=0.05)
    x = rng.standard_normal((64, 6, 1))
    labels = (x.sum(axis=(1, 2)) > 0).astype(int)
    losses = []
    for _ in range(60):
        output, _ = m(x, train=True)
        loss, d_logits = cross_entropy(readout(output[:, -1]), labels)
        r = readout.backward(d_logits)
        d_output = np.zeros_like(output)
        d_output[:, -1] = r.input
        g = m.backward(d_output)
        opt.step([g.params, r.params])
        losses.append(loss)
    assert losses[0] > 0.5
    assert losses[-1] < 0.5 * losses[0]


def test_the_readme_training_example_runs_and_learns():
    """The README's training example, as written there (keeps the documentation honest)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Training") :]
    code = section[
        section.index("```python") + len("```python") : section.index("```\n", section.index("```python") + 9)
    ]
    namespace: dict = {}
    exec(compile(code, "README.md (## Training)", "exec"), namespace)
    assert namespace["loss"] < 0.05 * np.mean(namespace["target"] ** 2)  # far better than predicting 0


# -- training a GRUCell step by step ------------------------------------------------------------------


def _cell_bptt(cell, x, h0, d_out):
    """Step the cell forward with train=True, then backward in reverse order: d x, d h0 and summed params."""
    h, states = h0, []
    for t in range(x.shape[0]):
        h = cell(x[t], h, train=True)
        states.append(h)
    carry, d_x, params = np.zeros_like(h0), np.zeros_like(x), {}
    for t in reversed(range(x.shape[0])):
        g = cell.backward(d_out[t] + carry)
        carry, d_x[t] = g.h0, g.input
        for k, v in g.params.items():
            params[k] = params.get(k, 0) + v
    return np.stack(states), d_x, carry, params


@pytest.mark.parametrize("backend", ["numpy", "cython"])
@pytest.mark.parametrize("reset_after", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_backpropagation_through_time_with_a_cell_matches_the_oracle(backend, reset_after, bias):
    from gru.testing.oracle import oracle_backward

    if not gru.backend_available(backend):
        pytest.skip(f"{backend} is not available")
    rng = np.random.default_rng(3)
    T, B, I, H = 5, 3, 4, 6
    cell = gru.GRUCell(I, H, bias, reset_after=reset_after, dtype="float64", backend=backend, seed=1)
    x, h0, d_out = rng.standard_normal((T, B, I)), rng.standard_normal((B, H)), rng.standard_normal((T, B, H))
    _, d_x, d_h0, params = _cell_bptt(cell, x, h0, d_out)
    layer_params = {f"{k}_l0": v for k, v in cell.state_dict().items()}
    exp_x, exp_h0, exp_params = oracle_backward(
        x, layer_params, d_out, np.zeros((1, B, H)), reset_after=reset_after, h0=h0[None], bias=bias
    )
    np.testing.assert_allclose(d_x, exp_x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_h0, exp_h0[0], rtol=1e-10, atol=1e-12)
    assert sorted(params) == sorted(k[:-3] for k in exp_params)
    for k, v in exp_params.items():
        np.testing.assert_allclose(params[k[:-3]], v, rtol=1e-10, atol=1e-12, err_msg=k)
    assert cell.pending_backward == 0


def test_a_cell_step_gradient_against_finite_differences():
    """One unbatched step: d (w · h1) / d x, d h0 and d weight_hh by central differences."""
    rng = np.random.default_rng(4)
    cell = gru.GRUCell(3, 4, dtype="float64", seed=2)
    x, h0, w = rng.standard_normal(3), rng.standard_normal(4), rng.standard_normal(4)
    cell(x, h0, train=True)
    g = cell.backward(w)
    np.testing.assert_allclose(g.input, numerical_gradient(lambda: float(w @ cell(x, h0)), x), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(g.h0, numerical_gradient(lambda: float(w @ cell(x, h0)), h0), rtol=1e-6, atol=1e-9)
    state = cell.state_dict()
    weight = state["weight_hh"]

    def loss() -> float:
        cell.load_state_dict({**state, "weight_hh": weight})
        return float(w @ cell(x, h0))

    np.testing.assert_allclose(g.params["weight_hh"], numerical_gradient(loss, weight), rtol=1e-6, atol=1e-9)


def test_cell_backward_takes_calls_newest_first_and_checks_its_argument():
    cell = gru.GRUCell(2, 3, dtype="float64", seed=0)
    with pytest.raises(RuntimeError, match="no training call left to differentiate"):
        cell.backward(np.ones((1, 3)))
    x_first, x_second = np.array([[1.0, -1.0]]), np.array([[3.0, 2.0]])
    cell(x_first, train=True)
    cell(x_second, train=True)
    assert cell.pending_backward == 2
    with pytest.raises(ValueError, match=r"^d_h1: expected the step's result shape \(1, 3\), got \(3,\)"):
        cell.backward(np.ones(3))
    assert cell.pending_backward == 2  # a refused gradient takes nothing off
    second, first = cell.backward(np.ones((1, 3))), cell.backward(np.ones((1, 3)))
    for x, got in ((x_second, second), (x_first, first)):  # each against that step's own finite differences
        numeric = numerical_gradient(lambda x=x: float(np.sum(cell(x))), x)
        np.testing.assert_allclose(got.input, numeric, rtol=1e-6, atol=1e-9)
    assert cell.pending_backward == 0


def test_changing_what_a_training_cell_call_returned_does_not_change_its_gradients():
    """The gates and state a train=True step returns are the caller's: backward keeps its own copies."""
    rng = np.random.default_rng(6)
    x, h0, d_h1 = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    results = []
    for change in (False, True):
        cell = gru.GRUCell(3, 4, dtype="float64", seed=0)
        h1, gates = cell(x, h0, train=True, return_gates=True)
        if change:
            h1[...], gates.r[...], gates.z[...], gates.n[...] = 9.0, 0.0, 0.0, 0.0
        results.append(cell.backward(d_h1))
    for name in ("input", "h0"):
        np.testing.assert_array_equal(getattr(results[1], name), getattr(results[0], name))
    for k, v in results[0].params.items():
        np.testing.assert_array_equal(results[1].params[k], v)


def test_a_cell_forgets_the_steps_of_a_sequence_given_up():
    cell = gru.GRUCell(2, 3, seed=0)
    x = np.ones((1, 2), "float32")
    h = cell(x, train=True)
    cell(x, h, train=True)
    assert cell.discard_pending() == 2 and cell.pending_backward == 0
    with pytest.raises(RuntimeError, match="no training call left"):
        cell.backward(np.ones((1, 3), "float32"))


def test_a_linear_readout_keeps_each_threads_last_call_apart():
    """Two training threads sharing a readout: each backward differentiates its own thread's call."""
    import threading

    readout = Linear(2, 1, dtype="float64", seed=0)
    readout(np.array([[1.0, 1.0]]))
    other = threading.Thread(target=lambda: readout(np.array([[5.0, 7.0]])))
    other.start()
    other.join()
    np.testing.assert_array_equal(readout.backward(np.ones((1, 1))).params["weight"], [[1.0, 1.0]])
