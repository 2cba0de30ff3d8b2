"""Golden values from PyTorch's nn.GRU: they check the oracle and each backend against an outside implementation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gru
from gru.testing._support import assert_close, require, to_numpy
from gru.testing.oracle import oracle_forward

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.npz"))


def load(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        case = {k: data[k] for k in data.files}
    case["config"] = json.loads(str(case["config"]))
    case["params"] = {k.removeprefix("param."): v for k, v in case.items() if k.startswith("param.")}
    return case


def test_golden_files_are_present():
    assert len(GOLDEN) >= 5, "the golden files ship inside gru/testing/golden"


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_oracle_matches_pytorch(path):
    case = load(path)
    cfg = case["config"]
    output, h_n, _ = oracle_forward(
        case["x"],
        case["params"],
        num_layers=cfg["num_layers"],
        bidirectional=cfg["bidirectional"],
        reset_after=True,
        h0=case["h0"],
        lengths=case["lengths"],
        bias=cfg["bias"],
    )
    np.testing.assert_allclose(output, case["output"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, case["h_n"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_backend_matches_pytorch(backend_name, path, dtype):
    case = load(path)
    cfg = case["config"]
    full = bool(np.all(case["lengths"] == case["x"].shape[0]))
    require(backend_name, dtype=dtype, reset_after=True, lengths=not full)  # PyTorch's variant
    layer = gru.GRU(
        cfg["input_size"],
        cfg["hidden_size"],
        cfg["num_layers"],
        bias=cfg["bias"],
        bidirectional=cfg["bidirectional"],
        dtype=dtype,
        backend=backend_name,
    )
    layer.load_state_dict(case["params"])
    output, h_n = layer(case["x"].astype(dtype), case["h0"].astype(dtype), None if full else case["lengths"])
    if dtype == "float64":
        assert_close(output, case["output"], dtype, "output")
        assert_close(h_n, case["h_n"], dtype, "h_n")
    else:  # rounding the inputs and weights to float32 moves the answer by more than float32 arithmetic does
        np.testing.assert_allclose(to_numpy(output), case["output"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(to_numpy(h_n), case["h_n"], rtol=0, atol=1e-5)
