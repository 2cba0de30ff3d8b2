"""pytest plugin: register the CuPy backend on the CPU emulation as ``cupy-emulated``.

Runs the whole conformance suite through the CuPy backend's code and kernels
on a machine without a GPU (slow: every CUDA thread is a fiber)::

    PYTHONPATH=tests/cupy_backend/emulation pytest -p conformance_plugin --pyargs gru.testing \
        --gru-backend cupy-emulated

or the fuzz tests (random configurations against the oracle)::

    GRU_CUPY_PATH=fused GRU_FUZZ_PROFILE=long GRU_FUZZ_EXAMPLES=1000 \
        PYTHONPATH=tests/cupy_backend/emulation pytest -p conformance_plugin tests/test_fuzz.py \
        --gru-backend cupy-emulated -k forward

``GRU_CUPY_PATH=resident`` / ``persistent`` / ``fused`` / ``stepwise`` picks the
path (the default, auto, takes the resident kernel at the suite's small layers);
``GRU_CUPY_RESIDENT_LAYOUT=chunked`` / ``rows`` gives the resident path that
layout of W_hh wherever it applies (rows: float32, reset-after, H <= 128; the
default, auto, takes rows up to 64 units).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

NAME = "cupy-emulated"


@pytest.hookimpl(tryfirst=True)  # before gru's plugin checks the --gru-backend names
def pytest_configure(config: pytest.Config) -> None:
    from emulated_device import EmulatedDevice, build_library

    import gru
    from gru.backends.cupy import CupyBackend

    lib = build_library(Path(tempfile.gettempdir()) / "gru-cupy-emulation")
    backend = CupyBackend(device_factory=lambda: EmulatedDevice(lib))
    backend.persistent_threads = 64
    gru.register_backend(NAME, backend, replace=True)
