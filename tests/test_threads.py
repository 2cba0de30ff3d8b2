"""Threads: concurrent forward and backward calls agree bit for bit with serial ones; the Cython
backend runs without the GIL (scripts/thread_check.py measures the resulting parallel speed-up)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import gru

THREADS = 8
ROUNDS = 3
T, B, I, H = 12, 3, 5, 24


BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not gru.backend_available(name), reason=f"{name} unavailable"))
            for name in ("numpy", "cython")]  # fmt: skip


@pytest.fixture(autouse=True)
def fast_switching(monkeypatch):
    """Switch threads every 10 µs instead of 5 ms, so that Python code interleaves as much as it can."""
    monkeypatch.delenv("GRU_BACKEND", raising=False)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(interval)


def inputs(k: int, layer: gru.GRU):
    """Thread k's own call: input, h0, lengths (0 and T included) and output gradients."""
    rng = np.random.default_rng(100 + k)
    D = layer.num_directions
    x_shape = (B, T, I) if layer.batch_first else (T, B, I)
    x = rng.standard_normal(x_shape).astype(layer.dtype)
    h0 = rng.standard_normal((layer.num_layers * D, B, H)).astype(layer.dtype)
    lengths = np.array([T, k % (T + 1), 1 + k % T])
    out_shape = (B, T, D * H) if layer.batch_first else (T, B, D * H)
    d_output = rng.standard_normal(out_shape).astype(layer.dtype)
    d_h_n = rng.standard_normal(h0.shape).astype(layer.dtype)
    return x, h0, lengths, d_output, d_h_n


def work(layer: gru.GRU, k: int) -> list[np.ndarray]:
    """What one thread does: inference, a training call, its backward (on this thread's own tape)."""
    x, h0, lengths, d_output, d_h_n = inputs(k, layer)
    y, h_n, gates = layer(x, h0, lengths, return_gates=True)
    y_train, h_train = layer(x, h0, lengths, train=True)
    grads = layer.backward(d_output, d_h_n)
    return [y, h_n, *gates, y_train, h_train, grads.input, grads.h0, *grads.params.values()]


def run_concurrently(jobs):
    """Run every job in its own thread, started together; return their results in order."""
    results = [None] * len(jobs)
    errors = []
    start = threading.Barrier(len(jobs))

    def target(i):
        try:
            start.wait()
            results[i] = [jobs[i]() for _ in range(ROUNDS)]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def assert_bit_identical(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)  # exact: not a tolerance


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_threads_on_one_shared_layer_match_serial_runs(backend):
    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, backend=backend, seed=0)
    expected = [work(layer, k) for k in range(THREADS)]
    results = run_concurrently([lambda k=k: work(layer, k) for k in range(THREADS)])
    for k in range(THREADS):
        for got in results[k]:
            assert_bit_identical(got, expected[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_calls_on_a_fresh_shared_layer_match_serial_runs(backend):
    """Eight threads make a new layer's first calls together: whatever a backend prepares on first use
    (the Cython backend packs its weights) must be complete before any other call can see it."""
    hidden, trials = 256, 40  # a pack long enough to be caught half-done, and enough tries to catch it
    xs = [np.random.default_rng(k).standard_normal((3, 2, I)).astype("float32") for k in range(THREADS)]
    reference = gru.GRU(I, hidden, backend=backend, seed=0)
    expected = [reference(x)[0] for x in xs]
    for _ in range(trials):
        layer = gru.GRU(I, hidden, backend=backend, seed=0)  # nothing prepared yet
        results = run_concurrently([lambda x=x, layer=layer: layer(x)[0] for x in xs])
        for k in range(THREADS):
            np.testing.assert_array_equal(results[k][0], expected[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_threads_on_separate_layers_match_serial_runs(backend):
    layers = [
        gru.GRU(
            I,
            H,
            num_layers=1 + k % 2,
            bidirectional=k % 3 == 0,
            batch_first=k % 2 == 1,
            reset_after=k % 4 < 2,
            dtype="float64" if k % 2 else "float32",
            backend=backend,
            seed=k,
        )
        for k in range(THREADS)
    ]
    expected = [work(layers[k], k) for k in range(THREADS)]
    results = run_concurrently([lambda k=k: work(layers[k], k) for k in range(THREADS)])
    for k in range(THREADS):
        for got in results[k]:
            assert_bit_identical(got, expected[k])


def test_both_backends_at_once_on_one_layer():
    """numpy and cython calls interleaved on one layer: each agrees with its own serial run."""
    if not (gru.backend_available("numpy") and gru.backend_available("cython")):
        pytest.skip("needs the numpy and cython backends")
    layer = gru.GRU(I, H, num_layers=2, bidirectional=True, seed=3)

    def job(k):
        x, h0, lengths, d_output, d_h_n = inputs(k, layer)
        backend = "cython" if k % 2 else "numpy"
        y, h_n = layer(x, h0, lengths, train=True, backend=backend)
        grads = layer.backward(d_output, d_h_n)
        return [y, h_n, grads.input, grads.h0, *grads.params.values()]

    expected = [job(k) for k in range(THREADS)]
    results = run_concurrently([lambda k=k: job(k) for k in range(THREADS)])
    for k in range(THREADS):
        for got in results[k]:
            assert_bit_identical(got, expected[k])


def test_backward_differentiates_this_threads_own_call():
    """Each thread's backward uses its own last train=True call, whatever the other threads did since."""
    layer = gru.GRU(I, H, seed=4, backend="numpy" if not gru.backend_available("cython") else "cython")
    x, h0, lengths, d_output, d_h_n = inputs(0, layer)
    layer(x, h0, lengths, train=True)
    expected = layer.backward(d_output, d_h_n)
    other = threading.Thread(target=lambda: layer(*inputs(1, layer)[:3], train=True))
    other.start()
    other.join()
    again = layer.backward(d_output, d_h_n)
    np.testing.assert_array_equal(again.input, expected.input)
    errors = []

    def backward_in_a_fresh_thread():
        try:
            layer.backward(d_output)
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=backward_in_a_fresh_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "no training call" in str(errors[0])  # no tape in that thread


# -- the GIL -------------------------------------------------------------------------------------


class Watched:
    """Stands in for the Cython backend's kernel module: each kernel call's progress buffer is
    zeroed, then published (with the call's number) while the call is in flight, so that another
    thread can look at it meanwhile."""

    def __init__(self, kernels, buffer_of):
        self._kernels = kernels
        self._buffer_of = buffer_of
        self.in_flight = None  # (call number, buffer)
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._kernels, name)

    def _call(self, name, args):
        buffer = self._buffer_of(name, args)
        if buffer is not None:
            buffer[...] = 0
            self.calls += 1
            self.in_flight = (self.calls, buffer)
        try:
            return getattr(self._kernels, name)(*args)
        finally:
            self.in_flight = None

    def run_direction(self, *args):
        return self._call("run_direction", args)

    def backward_direction(self, *args):
        return self._call("backward_direction", args)


def progress_buffer(name, args):
    """(T, B, k) views whose time steps the kernel fills one after the other, first to last.

    Forward: its ``output`` (argument 10). Backward: the start of its workspace (argument 20),
    where the reverse time loop writes the gate gradients of step t to rows t * B ... (B of 3H
    values each), last step first.
    """
    x = args[0]
    steps, batch = x.shape[0], x.shape[1]
    if name == "run_direction":
        return args[10]
    hidden = args[3].shape[1]
    workspace = args[20].reshape(-1)
    return workspace[: steps * batch * 3 * hidden].reshape(steps, batch, 3 * hidden)[::-1]


def seen_mid_call(watched, stop, sightings):
    """Poll the buffer of the call in flight; count the times it is half written (some steps done, not
    the last) while that same call stays in flight: a state that exists only while the kernel runs,
    so this thread ran during the call."""
    while not stop.is_set():
        in_flight = watched.in_flight
        if in_flight is None:
            continue
        _, buffer = in_flight
        if np.any(buffer[0]) and not np.any(buffer[-1]) and watched.in_flight is in_flight:
            sightings.append(1)


@pytest.mark.skipif(not gru.backend_available("cython"), reason="cython backend unavailable")
@pytest.mark.parametrize("train", [False, True], ids=["forward", "backward"])
def test_cython_kernels_release_the_gil(monkeypatch, train):
    """Another Python thread runs while a Cython kernel is in flight.

    No timing is asserted: the other thread must see a state that only exists inside the
    kernel call (its output half written). If the kernel held the GIL, no Python thread could
    run between its first and its last step, and that state would never be seen.
    """
    backend = gru.get_backend("cython")
    watched_kernel = "backward_direction" if train else "run_direction"
    watched = Watched(
        backend._kernels, lambda name, args: progress_buffer(name, args) if name == watched_kernel else None
    )
    monkeypatch.setattr(backend, "_kernels", watched)
    layer = gru.GRU(8, 64, backend="cython", seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 1, 8)).astype("float32")
    h0 = rng.standard_normal((1, 1, 64)).astype("float32")
    stop, sightings = threading.Event(), []
    observer = threading.Thread(target=seen_mid_call, args=(watched, stop, sightings))
    observer.start()
    try:
        for _ in range(50):  # each call gives the observer thousands of chances; one sighting suffices
            y, _ = layer(x, h0, threads=1, train=train)
            if train:
                layer.backward(np.ones_like(y))
            if sightings:
                break
    finally:
        stop.set()
        observer.join()
    assert sightings, "no other Python thread ran while the kernel was in flight: it holds the GIL"


@pytest.mark.skipif(not gru.backend_available("cython"), reason="cython backend unavailable")
def test_blas_is_held_to_one_thread_inside_calls_from_any_thread(monkeypatch, blas_at_two_threads):
    """Inside every kernel call BLAS runs single-threaded, whichever Python thread makes the call.

    With OpenBLAS 0.3.30/0.3.31, openblas_set_num_threads from a thread other than the main one is
    ignored once the main thread has called it: calls from other threads used to run their BLAS
    products on two threads, whose busy-waiting worker serialised concurrent calls.
    """
    from threadpoolctl import ThreadpoolController

    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    backend = gru.get_backend("cython")
    seen = []

    class Recording:
        def __getattr__(self, name):
            return getattr(kernels, name)

        def run_direction(self, *args):
            seen.append([lib.get_num_threads() for lib in libs])
            return kernels.run_direction(*args)

    kernels = backend._kernels
    layer = gru.GRU(I, H, backend="cython", seed=0)
    x = inputs(0, layer)[0]
    layer(x)  # the main thread sets and restores the limit first
    before = [lib.get_num_threads() for lib in libs]
    assert sorted(before) == sorted(blas_at_two_threads)  # restored by that first call already
    monkeypatch.setattr(backend, "_kernels", Recording())
    layer(x)
    run_concurrently([lambda: layer(x) for _ in range(THREADS)])
    assert len(seen) == 1 + THREADS * ROUNDS
    assert all(counts == [1] * len(libs) for counts in seen), seen
    assert [lib.get_num_threads() for lib in libs] == before  # restored
