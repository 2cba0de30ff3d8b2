"""Fixtures shared by the project's tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def no_env_backend(monkeypatch):
    """Tests choose their backends themselves: a GRU_BACKEND set in the shell must not leak in."""
    monkeypatch.delenv("GRU_BACKEND", raising=False)


@pytest.fixture
def torch():
    """PyTorch, seeded; the test is skipped where it is not installed (it is optional)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch
