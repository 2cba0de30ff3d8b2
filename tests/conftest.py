"""Fixtures shared by the project's tests."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import uuid
from importlib.metadata import EntryPoint

import pytest


@pytest.fixture(autouse=True)
def no_env_backend(monkeypatch):
    """Tests choose their backends themselves: a GRU_BACKEND set in the shell must not leak in."""
    monkeypatch.delenv("GRU_BACKEND", raising=False)


@pytest.fixture
def run_on_one_openmp_thread(tmp_path):
    """A function that runs Python ``code`` in a child process whose OpenMP starts one thread, whatever is asked
    for (OMP_THREAD_LIMIT=1), and returns its output lines once it has succeeded.

    The child runs from elsewhere: from a source checkout, ``-c`` would import
    the uncompiled tree, not the installed package.
    """

    def run(code: str) -> list[str]:
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    return run


@pytest.fixture(autouse=True)
def cython_teams_at_every_size():
    """The Cython kernels give every call the team it asks for (16 units a thread at least).

    Below a measured size a call would run on one thread (_kernels.team_for);
    the tests' layers are that small, and must still run the teams' code: the
    barriers, the panels, the weight-gradient parts. test_cython_backend.py
    checks the rule itself with its production values.
    """
    try:
        from gru.backends.cython import _kernels
    except ImportError:  # no compiled extension: nothing to set
        yield None
        return
    production = _kernels.unit_split_minimum()
    _kernels.use_unit_split_work(0)
    yield production
    _kernels.use_unit_split_work(production)


@pytest.fixture
def blas_at_two_threads():
    """Every BLAS library held at 2 threads around the test; yields their counts ([2, ...]).

    The Cython backend holds BLAS to one thread during a call and must give
    the caller's count back. Checked against a count of 1 a backend that never
    restores would pass, so the test needs a count it can tell from 1.
    """
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import gru

    if not gru.backend_available("cython"):
        pytest.skip("the cython backend is not available here")
    gru.get_backend("cython").available()  # loads scipy's BLAS, so that the limit reaches it
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        counts = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
        if not counts or min(counts) < 2:
            pytest.skip(f"BLAS cannot be set to 2 threads here (got {counts})")
        yield counts


@pytest.fixture
def torch():
    """PyTorch, seeded; the test is skipped where it is not installed (it is optional)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """``plugin(source, name=..., attr=...)``: a module in tmp_path and a ``gru.backends`` entry point naming it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def make(source: str, *, name: str = "broken", attr: str = "Plugin") -> EntryPoint:
        module = f"gru_test_plugin_{uuid.uuid4().hex}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        created.append(module)
        return EntryPoint(name=name, value=f"{module}:{attr}", group="gru.backends")

    yield make
    for module in created:
        sys.modules.pop(module, None)
