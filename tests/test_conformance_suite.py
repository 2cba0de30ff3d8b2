"""The conformance suite itself: it fails wrong backends, whatever capabilities they declare.

Each case registers a backend from a ``conftest.py`` (what a backend author
without a package does) and runs ``pytest --pyargs gru.testing`` on it in a
subprocess. The backends wrap the NumPy reference and break one thing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

BACKENDS = """
import dataclasses

import numpy as np

import gru
from gru.backends import Capabilities, LayerWeights, StackedBackend
from gru.backends.numpy.backend import NumpyBackend

REFERENCE = NumpyBackend()
FEW = Capabilities(dtypes=frozenset({"float64"}), lengths=False, gates=False, priority=-1)


def swap_r_and_z(weights):
    def swap(a):
        H = a.shape[0] // 3
        return np.concatenate([a[H : 2 * H], a[:H], a[2 * H :]])

    return LayerWeights(*(swap(a) for a in (weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh)))


class Wrapped(StackedBackend):
    capabilities = FEW

    def available(self):
        return True

    def run_direction(self, x, h0, weights, lengths, **kwargs):
        REFERENCE.run_direction(x, h0, weights, lengths, **kwargs)


class SwapsGates(Wrapped):
    def run_direction(self, x, h0, weights, lengths, **kwargs):
        REFERENCE.run_direction(x, h0, swap_r_and_z(weights), lengths, **kwargs)


class WritesIntoH0(Wrapped):
    def run_direction(self, x, h0, weights, lengths, **kwargs):
        REFERENCE.run_direction(x, h0, weights, lengths, **kwargs)
        h0[...] = kwargs["h_n"]  # keeps its state where it came from


gru.register_backend("few", Wrapped())
gru.register_backend("swaps_gates", SwapsGates())
gru.register_backend("writes_into_h0", WritesIntoH0())
"""


def run_suite(tmp_path, backend: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(BACKENDS))
    env = {k: v for k, v in os.environ.items() if k != "GRU_BACKEND"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--pyargs", "gru.testing", "--gru-backend", backend, "-q", "-p",
         "no:cacheprovider", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def test_a_backend_declaring_few_capabilities_still_meets_most_of_the_suite(tmp_path):
    proc = run_suite(tmp_path, "few")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    passed = int(proc.stdout.rsplit(" passed", 1)[0].split()[-1])
    assert passed >= 100, proc.stdout[-500:]  # float64 without gates or lengths: every test that can run without them


@pytest.mark.parametrize(
    "backend, message",
    [("swaps_gates", "output"), ("writes_into_h0", "the backend wrote into its input h0")],
)
def test_the_suite_fails_a_wrong_backend_with_few_capabilities(tmp_path, backend, message):
    proc = run_suite(tmp_path, backend, "-x")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert message in proc.stdout, proc.stdout[-3000:]
    # the summary points at the input check only when it is what failed
    assert ("writes into arrays it must only read" in proc.stdout) == (backend == "writes_into_h0"), proc.stdout[-3000:]


def test_the_summary_points_at_the_input_check_among_many_failures(tmp_path):
    proc = run_suite(tmp_path, "writes_into_h0", "-k", "inputs_are_left_unchanged or test_cell")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = proc.stdout.split("gru conformance", 1)[-1]
    assert "test_inputs_are_left_unchanged failed" in summary, proc.stdout[-3000:]
