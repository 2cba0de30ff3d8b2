"""What the CuPy tests share: the CPU emulation, a planner's stand-in device, the GPU check, the oracle check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import gru
from gru.backends.cupy import CupyBackend
from gru.backends.cupy._plans import plan_persistent
from gru.testing._support import oracle_for, to_numpy

EMULATION_DIR = Path(__file__).parent / "emulation"
EMULATED = "cupy-emulated"


def _load_emulation():
    spec = importlib.util.spec_from_file_location("gru_cupy_emulation", EMULATION_DIR / "emulated_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


emulation = _load_emulation()


def _gpu_reason() -> str | None:
    verdict = CupyBackend().available()
    return None if verdict is True else verdict


GPU_REASON = _gpu_reason()
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"no usable GPU: {GPU_REASON}")


def emulated_backend(lib, threads: int = 64, min_units: int | None = None, **device_options) -> CupyBackend:
    device = emulation.EmulatedDevice(lib, **device_options)
    backend = CupyBackend(device_factory=lambda: device)
    backend.persistent_threads = threads
    if min_units is not None:
        backend.persistent_min_units = min_units
    backend.device = device  # for the tests' inspection
    return backend


class PlanDevice:
    """Just the numbers the planner reads, like an H100 (132 SMs, 227 KiB per block, 50 MiB of L2) by default."""

    def __init__(
        self, sm_count=132, smem_per_block=232448, blocks_per_sm=1, cooperative_launch=True, l2_bytes=50 << 20
    ):
        self.sm_count, self.smem_per_block, self.l2_bytes = sm_count, smem_per_block, l2_bytes
        self.blocks_per_sm, self.cooperative_launch = blocks_per_sm, cooperative_launch

    def max_active_blocks(self, name, threads, shared_mem):
        return self.blocks_per_sm if shared_mem <= self.smem_per_block else 0


def plan(device=None, *, H, B, D=1, dtype="float32", reset_after=True, **kwargs):
    return plan_persistent(
        device or PlanDevice(), hidden_size=H, batch=B, directions=D, dtype=dtype, reset_after=reset_after, **kwargs
    )


def assert_matches_oracle(layer: gru.GRU, x, h0, lengths, tol: float) -> None:
    """Run ``layer`` with gates and check the output, h_n and every gate against the float64 oracle."""
    output, h_n, gates = layer(x, h0, lengths, return_gates=True)
    expected_output, expected_h_n, expected_gates = oracle_for(layer, x, h0, lengths)
    np.testing.assert_allclose(to_numpy(output), expected_output, rtol=0, atol=tol)
    np.testing.assert_allclose(to_numpy(h_n), expected_h_n, rtol=0, atol=tol)
    for g, name in enumerate("rzn"):
        np.testing.assert_allclose(to_numpy(getattr(gates, name)), expected_gates[:, g], rtol=0, atol=tol)


def assert_stacked_bidirectional_matches_oracle(
    backend, *, I: int, H: int, T: int, B: int, dtype: str, reset_after: bool, rng, lengths=None
) -> None:
    """A 2-layer bidirectional layer on ``backend`` with random x and h0 against the float64 oracle.

    ``lengths`` None: random lengths with the first sequence running all T
    steps. Drawn from ``rng`` in this order: the layer's weights, x, h0, lengths.
    """
    layer = gru.GRU(I, H, 2, bidirectional=True, reset_after=reset_after, dtype=dtype, backend=backend, seed=rng)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((4, B, H)).astype(dtype)
    if lengths is None:
        lengths = rng.integers(0, T + 1, B)
        lengths[0] = T
    assert_matches_oracle(layer, x, h0, lengths, 1e-5 if dtype == "float32" else 1e-12)
