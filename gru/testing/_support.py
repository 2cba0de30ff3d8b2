"""Helpers shared by the conformance tests."""

from __future__ import annotations

import numpy as np
import pytest

import gru
from gru.testing.oracle import oracle_forward

#: float32 results within this absolute distance of the float64 oracle on unit-scale data
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
DTYPES = ("float32", "float64")


# The API's options as pytest parameters, for the conformance tests' matrices (the same ids everywhere).
EACH_DTYPE = pytest.mark.parametrize("dtype", DTYPES)
EACH_VARIANT = pytest.mark.parametrize("reset_after", [True, False], ids=["after", "before"])
EACH_DIRECTION = pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])


def full_or_mixed_lengths(mixed: list[int]):
    """``lengths``: None (every sequence full-length), then ``mixed``."""
    return pytest.mark.parametrize("lengths", [None, mixed], ids=["full", "lengths"])


def feature_matrix(mixed_lengths: list[int]):
    """Parametrize a test over every combination of the layer's options.

    dtype, bias, bidirectional, num_layers (1-3), reset_after, lengths (None
    or ``mixed_lengths``), with_h0 and batch_first: 384 cases.
    """
    marks = [
        EACH_DTYPE,
        pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"]),
        EACH_DIRECTION,
        pytest.mark.parametrize("num_layers", [1, 2, 3]),
        EACH_VARIANT,
        full_or_mixed_lengths(mixed_lengths),
        pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"]),
        pytest.mark.parametrize("batch_first", [False, True], ids=["tbi", "bti"]),
    ]

    def parametrize(test):
        for mark in reversed(marks):  # as decorators written in this order apply
            test = mark(test)
        return test

    return parametrize


def require(
    backend_name: str,
    *,
    dtype: str = "float64",
    reset_after: bool | None = None,
    lengths: bool = False,
    gates: bool = False,
):
    """Skip the test when the backend declares it does not support what it needs.

    Ask only for what the test cannot run without: a test that can leave out
    gates or lengths checks them where declared (see ``capabilities``), and one
    that works with either candidate variant (``reset_after=None``) builds its
    layers with ``variant_of(backend_name)``, so a backend declaring less still
    meets the rest of the suite.
    """
    caps = capabilities(backend_name)
    if dtype not in caps.dtypes:
        pytest.skip(f"{backend_name} does not support {dtype}")
    if reset_after is False and not caps.reset_before:
        pytest.skip(f"{backend_name} does not support reset_after=False")
    if reset_after is True and not caps.reset_after:
        pytest.skip(f"{backend_name} does not support reset_after=True")
    if lengths and not caps.lengths:
        pytest.skip(f"{backend_name} does not support variable lengths")
    if gates and not caps.gates:
        pytest.skip(f"{backend_name} does not support return_gates")


def variant_of(backend_name: str) -> bool:
    """``reset_after`` for a test that works with either variant: True (PyTorch's) where declared, else False."""
    return capabilities(backend_name).reset_after


def capabilities(backend_name: str) -> gru.backends.Capabilities:
    """What the backend declares: a test that can run without a feature checks it only where declared."""
    return gru.get_backend(backend_name).capabilities


def lengths_if_supported(backend_name: str, lengths):
    """``lengths`` where the backend declares variable lengths, else None (every sequence full)."""
    return lengths if capabilities(backend_name).lengths else None


def to_numpy(a) -> np.ndarray:
    """Host copy of a backend's result (NumPy or CuPy)."""
    return a.get() if hasattr(a, "__cuda_array_interface__") else np.asarray(a)


def assert_close(actual, expected, dtype: str, what: str) -> None:
    actual = to_numpy(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {dtype}"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE[dtype], err_msg=what)


def _layer_config(layer: gru.GRU, h0, lengths, dropout_masks) -> dict:
    """The oracle's keyword arguments that describe ``layer`` and the call."""
    return {
        "num_layers": layer.num_layers,
        "bidirectional": layer.bidirectional,
        "reset_after": layer.reset_after,
        "bias": layer.bias,
        "h0": h0,
        "lengths": lengths,
        "dropout_masks": dropout_masks,
    }


def oracle_for(layer: gru.GRU, x_tbi: np.ndarray, h0=None, lengths=None, dropout_masks=None):
    """The oracle's answer for ``layer`` on time-major input."""
    return oracle_forward(x_tbi, layer.state_dict(), **_layer_config(layer, h0, lengths, dropout_masks))


#: gradients: float64 against the oracle's analytic ones; float32 (sums over many products) looser
GRADIENT_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}


def require_training(backend_name: str) -> None:
    if not gru.get_backend(backend_name).capabilities.training:
        pytest.skip(f"{backend_name} does not declare training")


def oracle_gradients_for(layer: gru.GRU, x_tbi, d_output, d_h_n, h0=None, lengths=None, dropout_masks=None):
    """The oracle's gradients for ``layer`` on time-major data."""
    from gru.testing.oracle import oracle_backward

    return oracle_backward(
        x_tbi, layer.state_dict(), d_output, d_h_n, **_layer_config(layer, h0, lengths, dropout_masks)
    )


def assert_gradient_close(actual, expected, dtype: str, what: str) -> None:
    actual = to_numpy(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    tol = GRADIENT_TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)
