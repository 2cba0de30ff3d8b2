"""Benchmark cases, settings and the constants the run and the report share."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA = "gru-bench/1"

#: (I, H, B, T): overhead-bound, cache-resident, small batch, bandwidth-bound, compute-bound.
DEFAULT_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (64, 128, 1, 200),
    (256, 256, 1, 500),
    (512, 512, 8, 30),
    (1024, 1024, 1, 100),
    (512, 512, 64, 100),
)
#: (I, H, B, T) of the training cases (forward + backward): mid-size batches, as in training.
TRAIN_SHAPES: tuple[tuple[int, int, int, int], ...] = (
    (64, 64, 32, 100),
    (256, 256, 32, 100),
    (512, 512, 64, 50),
    (128, 128, 64, 200),
)
DEFAULT_REPEATS = 10
DEFAULT_WARMUP = 2
ROUNDS = 3  # the timed calls of a shape are split into this many rounds over the implementations
# Pause before each implementation's share of a round: OpenBLAS and OpenMP worker
# threads keep spinning for up to ~0.1 s after a call, and a spinning pool of the
# previous library steals cores from the next one (fatal for per-step barriers).
QUIESCE_S = 0.2
DEFAULT_BUDGET_S = 3.0  # timed seconds per (shape, implementation) before repeats are cut
BUSY_LOAD_CPUS = 0.25  # other processes' average CPU use above which the report warns
QUICK_REPEATS = 3
QUICK_WARMUP = 1
QUICK_MAX_STEPS = 20  # --quick keeps each shape's I, H, B (its regime) but runs few steps

#: tolerances of the agreement check against the NumPy backend, per dtype: (rtol, atol)
TOLERANCES = {"float32": (1e-4, 1e-4), "float64": (1e-9, 1e-9)}
#: training: every output and gradient of float64 reference ``ref`` must be within rtol · max|ref| + atol
TRAIN_TOLERANCES = {"float32": (1e-4, 1e-5), "float64": (1e-9, 1e-12)}

#: the peers, by the name used on the command line, in the order of the table's columns
PEERS = ("onnxruntime", "torch")
_PEER_ALIASES = {"ort": "onnxruntime", "onnxruntime": "onnxruntime", "torch": "torch", "pytorch": "torch"}

# environment variables read by the thread pools of OpenMP, OpenBLAS, MKL and BLIS when they start
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")

Runner = Callable[[np.ndarray], Any]
#: what a training runner returns: "output", "input" (d loss / d x) and every parameter's gradient by state-dict key
Gradients = dict[str, np.ndarray]


# -- cases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark shape: a single-layer, unidirectional, reset-after GRU on (T, B, I) input."""

    input_size: int
    hidden_size: int
    batch: int
    steps: int

    @property
    def flops(self) -> int:
        """6·H·(I+H)·B·T: three gates, each an input and a recurrent product (multiply-add = 2)."""
        return 6 * self.hidden_size * (self.input_size + self.hidden_size) * self.batch * self.steps

    @property
    def label(self) -> str:
        return f"{self.input_size},{self.hidden_size},{self.batch},{self.steps}"

    def as_dict(self) -> dict[str, int]:
        return {"I": self.input_size, "H": self.hidden_size, "B": self.batch, "T": self.steps}


def parse_shape(text: str) -> Case:
    """Parse ``I,H,B,T`` (argparse type)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected I,H,B,T as four positive integers, got {text!r}")
    return Case(*values)
