"""Fixtures of the CuPy backend's tests: a fresh registry per test, the emulation, a path per test."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from cupy_helpers import EMULATED, emulated_backend, emulation

import gru
from gru import _registry
from gru.backends.cupy._plans import PATH_ENV_VAR


@pytest.fixture(autouse=True)
def fresh_registry():
    yield
    _registry.refresh()


@pytest.fixture(scope="module")
def emulator_library():
    try:
        return emulation.build_library(Path(tempfile.gettempdir()) / "gru-cupy-emulation")
    except emulation.EmulationUnavailableError as exc:
        pytest.skip(f"the CUDA emulation cannot be built here: {exc}")


@pytest.fixture(params=["resident", "persistent", "fused", "stepwise"])
def path(request, monkeypatch):
    monkeypatch.setenv(PATH_ENV_VAR, request.param)
    return request.param


@pytest.fixture
def emulated(emulator_library, path) -> str:
    gru.register_backend(EMULATED, emulated_backend(emulator_library), replace=True)
    return EMULATED
