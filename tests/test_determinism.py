"""Determinism: the same inputs give bit-identical results, call after call and process after process.

On every available CPU backend, both dtypes and both variants, a two-layer
bidirectional GRU with mixed lengths (0 and T included) runs inference
(with gates) and, where the backend declares training, a training forward
with dropout and the backward, on the first 6 sequences and on all 18. The
Cython backend runs at 1 and at 2 threads: at 2, H = 40 splits into two slices
of hidden units for 6 sequences, and 18 sequences split into chunks that the
threads claim as they come free (see splits_by_sequence); each comparison is
between runs at the same thread count, since a different split may round
differently.
Everything is hashed (SHA-256 of dtype, shape and bytes of every array).

* in one process: the same layer called repeatedly, and fresh layers built
  from the same seed (dropout masks included), give identical bytes;
* across processes: two fresh interpreters, started at once with different
  ``PYTHONHASHSEED`` values, print identical hashes.

GPU: the CuPy backend is not tested here (no GPU on this machine), and gru
makes no bit-for-bit claim for it: cuBLAS may pick different algorithms
between runs, devices and library versions. On a GPU machine,
``python tests/test_determinism.py cupy`` prints its hashes (NumPy in, NumPy
out); run it twice and compare by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gru
from gru.testing._support import EACH_DTYPE, EACH_VARIANT

I, H, T, B, L = 7, 40, 9, 18, 2
LENGTHS = [T, 4, 0, T, 1, 6, 2, T, 8, 3, T, 0, 5, 7, T, 1, 4, 6]
BATCHES = (6, B)  # at 2 threads: split by unit, then by sequence
SEED = 2024


def _thread_counts(backend: str) -> list[int | None]:
    return [1, 2] if backend == "cython" else [None]


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _data(dtype: str, D: int):
    rng = np.random.default_rng(SEED + 1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    d_output = rng.standard_normal((T, B, D * H)).astype(dtype)
    d_h_n = rng.standard_normal((L * D, B, H)).astype(dtype)
    return x, h0, d_output, d_h_n


def run_once(backend: str, dtype: str, reset_after: bool, threads: int | None, layer=None, dropout=0.25) -> dict:
    """Hashes of one inference call and (training backends) one training forward + backward."""
    if layer is None:
        layer = gru.GRU(
            I,
            H,
            L,
            bidirectional=True,
            dropout=dropout,
            reset_after=reset_after,
            dtype=dtype,
            backend=backend,
            seed=SEED,
        )
    hashes = {}
    for batch in BATCHES:
        x, h0, d_output, d_h_n = (a[:, :batch] for a in _data(dtype, layer.num_directions))
        lengths = LENGTHS[:batch]
        output, h_n, gates = layer(x, h0, lengths, return_gates=True, threads=threads)
        hashes[f"inference/{batch}"] = _digest(output, h_n, *gates)
        if gru.get_backend(backend).capabilities.training:
            output, h_n = layer(x, h0, lengths, train=True, threads=threads)
            grads = layer.backward(d_output, d_h_n)
            hashes[f"training/{batch}"] = _digest(
                output, h_n, grads.input, grads.h0, *(grads.params[k] for k in sorted(grads.params))
            )
    return hashes


def cpu_backends() -> list[str]:
    return [info.name for info in gru.list_backends() if info.available and info.capabilities.device == "cpu"]


def fingerprints(backends: list[str] | None = None) -> dict[str, str]:
    """Every configuration's hashes, keyed ``backend/dtype/variant/threads/what``."""
    result = {}
    for backend in backends if backends is not None else cpu_backends():
        for dtype in ("float32", "float64"):
            for reset_after in (True, False):
                for threads in _thread_counts(backend):
                    hashes = run_once(backend, dtype, reset_after, threads)
                    for what, digest in hashes.items():
                        key = f"{backend}/{dtype}/{'after' if reset_after else 'before'}/{threads}/{what}"
                        result[key] = digest
    return result


@pytest.mark.parametrize("backend", cpu_backends())
@EACH_DTYPE
@EACH_VARIANT
def test_repeated_calls_are_bit_identical(backend, dtype, reset_after):
    for threads in _thread_counts(backend):
        # the same layer, called again and again (no dropout: its masks advance the layer's generator)
        layer = gru.GRU(I, H, L, bidirectional=True, reset_after=reset_after, dtype=dtype, backend=backend, seed=SEED)
        first = run_once(backend, dtype, reset_after, threads, layer=layer)
        for _ in range(2):
            assert run_once(backend, dtype, reset_after, threads, layer=layer) == first, threads
        # fresh layers from the same seed: the same parameters, the same dropout masks, the same bytes
        fresh = run_once(backend, dtype, reset_after, threads)
        assert run_once(backend, dtype, reset_after, threads) == fresh, threads


def test_processes_agree():
    """Two fresh interpreters (different hash seeds), run side by side, give identical hashes."""
    backends = cpu_backends()
    runs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        runs.append(
            subprocess.Popen(
                [sys.executable, __file__, *backends],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for process in runs:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    first, second = results
    expected_keys = sum(
        len(_thread_counts(b)) * 4 * len(BATCHES) * (2 if gru.get_backend(b).capabilities.training else 1)
        for b in backends
    )
    assert len(first) == expected_keys, sorted(first)
    differ = sorted(k for k in first if first[k] != second.get(k))
    assert not differ and first.keys() == second.keys(), f"results differ between processes: {differ}"


if __name__ == "__main__":  # the child of test_processes_agree: print the hashes as JSON
    print(json.dumps(fingerprints(sys.argv[1:] or None), indent=1, sort_keys=True))
