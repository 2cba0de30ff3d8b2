"""Property-based fuzzing: random configurations and inputs, every available backend, against the oracle.

Hypothesis draws a whole call: sizes (T from 0 to 12, B from 0 to 5 or from
16 to 40, input and hidden size from 1 to 64), 1-3 layers, directions, both variants, bias, batch_first or
unbatched input, per-sequence lengths (0 and T included), h0 or not, gates,
the input's memory layout, its scale, dropout (training), the thread count,
float32 or float64, and a seed for the data. Every available backend whose
capabilities cover the call runs it (forward; and backward where it declares
training) and must agree with the float64 oracle of ``gru.testing.oracle``:
float64 to 1e-10, float32 to 1e-4 (of the array's scale where that is above
1), absolute and relative, on this unit-scale data.

Profiles (``GRU_FUZZ_PROFILE``):

* ``ci`` (default, inside the normal ``pytest``): derandomised, so every run
  draws the same examples; ``GRU_FUZZ_EXAMPLES`` examples per test (default 200);
* ``long``: fresh random examples each run, ``GRU_FUZZ_EXAMPLES`` per test
  (default 2500); ``python scripts/fuzz.py --examples 5000`` runs it.

A failure prints a reproducer (through hypothesis's ``note``): a standalone
Python script that rebuilds the failing backend's layer, data and call from
the configuration and seed, runs the oracle and prints the largest
differences. It is the very code the test ran (the test executes the same
text), so it reproduces the failure exactly.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

import gru
from gru.testing.plugin import selected_backends

PROFILE = os.environ.get("GRU_FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"GRU_FUZZ_PROFILE: expected 'ci' or 'long', got {PROFILE!r}")
EXAMPLES = int(os.environ.get("GRU_FUZZ_EXAMPLES", 200 if PROFILE == "ci" else 2500))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=PROFILE == "ci",  # CI: the same examples on every run and machine
    deadline=None,
    database=None,  # nothing written to .hypothesis/; a failure is replayed from its printed reproducer
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


#: (forward, gradients) tolerance, relative and absolute; float32's absolute one is relative to the
#: array's largest value when above 1 (gradients summed over many steps grow). Over 5,000 examples
#: the worst error was ~1/100 of these for float32 and ~1/15,000 for float64.
TOLERANCE = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-4)}


@dataclass(frozen=True)
class Case:
    """One fuzzed call: everything needed to rebuild it."""

    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    reset_after: bool
    bias: bool
    batch_first: bool
    dtype: str
    seq_len: int
    batch: int | None  # None: unbatched input (T, I)
    lengths: tuple[int, ...] | int | None
    with_h0: bool
    return_gates: bool
    layout: str  # "c", "f" (Fortran order) or "strided" (a non-contiguous view)
    scale: float
    dropout: float
    threads: int | None
    seed: int


@st.composite
def cases(draw, training: bool) -> Case:
    T = draw(st.integers(0, 12))
    # None: unbatched, about 1 in 5; up to 5 sequences, or 16-40, where 2 threads split the sequences
    batch = None if draw(st.integers(0, 4)) == 0 else draw(st.one_of(st.integers(0, 5), st.integers(16, 40)))
    if batch is None:
        lengths = draw(st.one_of(st.none(), st.integers(0, T)))
    else:
        lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=batch, max_size=batch).map(tuple)))
    num_layers = draw(st.integers(1, 3))
    return Case(
        input_size=draw(st.one_of(st.integers(1, 8), st.integers(1, 64))),
        hidden_size=draw(st.one_of(st.integers(1, 8), st.integers(1, 64))),
        num_layers=num_layers,
        bidirectional=draw(st.booleans()),
        reset_after=draw(st.booleans()),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        seq_len=T,
        batch=batch,
        lengths=lengths,
        with_h0=draw(st.booleans()),
        return_gates=draw(st.booleans()) and not training,
        layout=draw(st.sampled_from(["c", "f", "strided"])),
        scale=draw(st.sampled_from([0.1, 1.0, 2.0])),
        dropout=draw(st.sampled_from([0.0, 0.3])) if training and num_layers > 1 else 0.0,
        threads=draw(st.sampled_from([None, 1, 2])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


# --- the call, as code: run by the tests and printed as the reproducer -----------------------------

_CALL = """\
import copy
import numpy as np
import gru
from gru.testing.oracle import oracle_backward, oracle_forward

c = {config}
backend, training = {backend!r}, {training!r}
T, I, H, D, L = c["seq_len"], c["input_size"], c["hidden_size"], 1 + c["bidirectional"], c["num_layers"]
B, unbatched = (1 if c["batch"] is None else c["batch"]), c["batch"] is None
generator = np.random.default_rng(c["seed"])
layer = gru.GRU(
    I, H, L, bias=c["bias"], batch_first=c["batch_first"], dropout=c["dropout"],
    bidirectional=c["bidirectional"], reset_after=c["reset_after"], dtype=c["dtype"], backend=backend, seed=generator,
)
twin = copy.deepcopy(generator)  # the layer draws its dropout masks from generator next
rng = np.random.default_rng(c["seed"] + 1)
x_tbi = (c["scale"] * rng.standard_normal((T, B, I))).astype(c["dtype"])
h0 = rng.standard_normal((L * D, B, H)).astype(c["dtype"]) if c["with_h0"] else None
d_out_tbi = rng.standard_normal((T, B, D * H)).astype(c["dtype"])
d_h_n = rng.standard_normal((L * D, B, H)).astype(c["dtype"])


def user(a):  # a time-major (T, B, .) array as the layer takes it
    a = a[:, 0] if unbatched else (a.transpose(1, 0, 2) if c["batch_first"] else a)
    if c["layout"] == "f":
        return np.asfortranarray(a)
    if c["layout"] == "strided":
        return np.repeat(a, 2, axis=-1)[..., ::2]
    return np.ascontiguousarray(a)


def host(a):  # a result back to time-major (T, B, .) or (L*D, B, H)
    return np.asarray(a)[:, None] if unbatched else np.asarray(a)


x = user(x_tbi)
h0_user = None if h0 is None else (h0[:, 0] if unbatched else h0)
lengths = None if c["lengths"] is None else (c["lengths"] if unbatched else list(c["lengths"]))
result = layer(x, h0_user, lengths, return_gates=c["return_gates"], train=training, threads=c["threads"])
output, h_n = host(result[0]), host(result[1])
if c["batch_first"] and not unbatched:
    output = output.transpose(1, 0, 2)
gates = None
if c["return_gates"]:
    gates = np.stack([np.asarray(g) for g in result[2]], axis=1)  # (L*D, 3, T, B, H)
    gates = gates[:, :, :, None] if unbatched else (gates.transpose(0, 1, 3, 2, 4) if c["batch_first"] else gates)
masks = None
if training and c["dropout"] > 0:
    keep = 1 - c["dropout"]
    masks = [((twin.random((T, B, D * H)) < keep) / keep).astype(c["dtype"]) for _ in range(L - 1)]
oracle_lengths = None if c["lengths"] is None else ([c["lengths"]] if unbatched else list(c["lengths"]))
config = dict(
    num_layers=L, bidirectional=c["bidirectional"], reset_after=c["reset_after"], h0=h0,
    lengths=oracle_lengths, bias=c["bias"], dropout_masks=masks,
)
expected = dict(zip(["output", "h_n", "gates"], oracle_forward(x_tbi, layer.state_dict(), **config)))
got = dict(output=output, h_n=h_n, gates=gates)
if training:
    d_out = d_out_tbi[:, 0] if unbatched else (d_out_tbi.transpose(1, 0, 2) if c["batch_first"] else d_out_tbi)
    grads = layer.backward(d_out, d_h_n[:, 0] if unbatched else d_h_n)
    d_x = host(grads.input)
    got["d_x"] = d_x.transpose(1, 0, 2) if c["batch_first"] and not unbatched else d_x
    got["d_h0"] = host(grads.h0)
    got.update({{"d_" + k: np.asarray(v) for k, v in grads.params.items()}})
    d_x, d_h0, d_params = oracle_backward(x_tbi, layer.state_dict(), d_out_tbi, d_h_n, **config)
    expected.update(d_x=d_x, d_h0=d_h0, **{{"d_" + k: v for k, v in d_params.items()}})
"""

_REPORT = """
for name, value in got.items():
    if value is not None:
        print(f"{name:24} {value.dtype}  max |diff| {np.max(np.abs(value - expected[name]), initial=0):.3g}")
"""


def reproducer(case: Case, backend: str, training: bool) -> str:
    """A standalone script that rebuilds the call, runs the oracle and prints the largest differences."""
    return _CALL.format(config=asdict(case), backend=backend, training=training) + _REPORT


def run_case(case: Case, backend: str, training: bool) -> tuple[dict, dict]:
    """Run the call the reproducer describes; returns (got, expected), time-major float arrays."""
    namespace: dict = {}
    exec(
        compile(_CALL.format(config=asdict(case), backend=backend, training=training), "<fuzz case>", "exec"), namespace
    )
    return namespace["got"], namespace["expected"]


def supports(backend: str, case: Case, training: bool) -> bool:
    caps = gru.get_backend(backend).capabilities
    return (
        case.dtype in caps.dtypes
        and (caps.reset_after if case.reset_after else caps.reset_before)
        and (caps.lengths or case.lengths is None)
        and (caps.gates or not case.return_gates)
        and (caps.training or not training)
    )


def _events(case: Case) -> None:
    """Label the example for hypothesis's statistics (--hypothesis-show-statistics): what got covered."""
    event(f"largest size {'33-64' if max(case.input_size, case.hidden_size) > 32 else '1-32'}")
    event(f"{case.num_layers} layer(s), {'bi' if case.bidirectional else 'uni'}directional")
    event("T = 0" if case.seq_len == 0 else "T > 0")
    event("unbatched" if case.batch is None else ("B = 0" if case.batch == 0 else "B > 0"))
    lengths = () if case.lengths is None else np.atleast_1d(case.lengths)
    event("lengths with a 0 and a T" if 0 in lengths and case.seq_len in lengths else "other lengths")


def compare(case: Case, backend: str, got: dict, expected: dict) -> None:
    forward_tol, gradient_tol = TOLERANCE[case.dtype]
    for name, value in got.items():
        if value is None:
            continue
        want = expected[name]
        assert value.shape == want.shape, f"{backend}: {name} shape {value.shape}, expected {want.shape}"
        assert value.dtype == np.dtype(case.dtype), f"{backend}: {name} dtype {value.dtype}"
        tol = forward_tol if name in ("output", "h_n", "gates") else gradient_tol
        scale = 1.0 if case.dtype == "float64" else max(1.0, float(np.max(np.abs(want), initial=0)))
        np.testing.assert_allclose(
            value, want, rtol=tol, atol=tol * scale, err_msg=f"{backend}: {name} (the reproducer follows)"
        )


def check(case: Case, training: bool, backends: list[str]) -> None:
    _events(case)
    for backend in backends:
        if not supports(backend, case, training):
            continue
        event(f"ran on {backend}")
        try:
            compare(case, backend, *run_case(case, backend, training))
        except Exception:
            note(f"Reproducer ({backend} backend), a standalone script:\n\n{reproducer(case, backend, training)}")
            raise


@pytest.fixture(scope="module")
def backends(pytestconfig) -> list[str]:
    """The backends to fuzz: the ``--gru-backend`` ones, else every available one (as the conformance suite)."""
    return selected_backends(pytestconfig)


@FUZZ
@given(case=cases(training=False))
def test_forward_matches_oracle(backends, case):
    check(case, False, backends)


#: what the fuzzer found: the numpy backend's backward failed on empty input (T = 0 or B = 0)
_EMPTY_T = Case(3, 4, 2, True, True, True, False, "float64", 0, 2, None, True, False, "c", 1.0, 0.3, None, 1)
_EMPTY_B = Case(3, 4, 1, False, False, False, True, "float32", 5, 0, (), False, False, "c", 1.0, 0.0, None, 2)


@FUZZ
@given(case=cases(training=True))
@example(case=_EMPTY_T)
@example(case=_EMPTY_B)
def test_training_matches_oracle(backends, case):
    if not any(gru.get_backend(name).capabilities.training for name in backends):
        pytest.skip("no selected backend declares training")
    check(case, True, backends)


def test_reproducer_rebuilds_the_call(capsys):
    """The printed snippet is the code the fuzz tests run: executed on its own, it reproduces the results."""
    case = Case(3, 5, 2, True, False, True, True, "float32", 4, 3, (4, 0, 2), True, False, "strided", 1.0, 0.3, 2, 7)
    backend = "numpy"
    got, _ = run_case(case, backend, training=True)
    namespace: dict = {}
    exec(reproducer(case, backend, training=True), namespace)
    assert "max |diff|" in capsys.readouterr().out
    for name, value in got.items():
        np.testing.assert_array_equal(namespace["got"][name], value, err_msg=name)
