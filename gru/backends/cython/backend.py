"""Cython CPU backend: the time loop runs in compiled code without the GIL.

See ``_kernels.pyx`` for the algorithm. This module prepares the canonical
request for it: thread count, sequence order, scratch memory, BLAS threads.

Threads: ``threads=`` on the call, else the ``GRU_NUM_THREADS`` environment
variable, else what OpenMP would use (``OMP_NUM_THREADS``, or a
``threadpoolctl`` limit in force). BLAS is kept to one thread while the
backend's own threads run, so the two never oversubscribe the cores.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref
from typing import Any

import numpy as np

from gru._arrays import aligned_copy, aligned_zeros, on_cache_line
from gru.backends._base import (
    BackwardResult,
    Capabilities,
    ForwardRequest,
    ForwardResult,
    LayerWeights,
    StackedBackend,
    fold_biases,
)

THREADS_ENV_VAR = "GRU_NUM_THREADS"
PANEL_TEAMS_KEPT = 4  # packings (team size, layout) of its recurrent weights a layer keeps (see _prepared)
MAX_THREADS = 2**31 - 1  # the kernel takes a C int (and uses at most one thread per 16 hidden units, see team_for)


# OpenBLAS cores whose gemm permits its small-matrix kernels (sgemm/dgemm_small_kernel_permit
# of the SkylakeX family: products of up to about a million multiply-adds, unpacked).
SMALL_KERNEL_CORES = frozenset({"skylakex", "cooperlake", "sapphirerapids"})


def blas_has_small_kernel() -> bool:
    """Whether the BLAS behind scipy's cython_blas runs small products without packing them.

    The kernels cut their products to that size only then (see _kernels.use_small_kernel);
    with any other BLAS or core the cuts would cost a packed GEMM each.
    """
    import scipy
    import scipy.linalg  # loads the BLAS that cython_blas calls
    import threadpoolctl

    blas = [info for info in threadpoolctl.threadpool_info() if info.get("user_api") == "blas"]
    # scipy's wheels bundle their own OpenBLAS next to the package (numpy's is another one)
    scipy_libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    own = [info for info in blas if os.path.dirname(info.get("filepath", "")) == scipy_libs] or blas
    return bool(own) and all(
        info.get("internal_api") == "openblas" and str(info.get("architecture", "")).lower() in SMALL_KERNEL_CORES
        for info in own
    )


def _ctypes_setter(address: int):
    """A Python function calling the C function ``int set(int threads)`` at ``address`` (see _find_blas_setters)."""
    return ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(address)


@functools.lru_cache(maxsize=64)
def _full_lengths(T: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """The order and lengths of B sequences of length T, made once (read-only: shared between calls)."""
    order, lengths = np.arange(B, dtype=np.int64), np.full(B, T, dtype=np.int64)
    order.flags.writeable = lengths.flags.writeable = False
    return order, lengths


def _find_blas_setters() -> tuple[list[int], list]:
    """Per loaded BLAS library, a way to set its thread count that returns the previous one.

    OpenBLAS's openblas_set_num_threads (what threadpoolctl calls) is ignored
    when called from any thread but the main one once the main thread has
    called it (OpenBLAS 0.3.30 and 0.3.31, pthreads builds): calls from other
    Python threads then ran their BLAS products multi-threaded, and OpenBLAS's
    busy-waiting worker took a core from them. Its openblas_set_num_threads_local
    (0.3.27 and later), in spite of its name, sets the process-wide count from
    any thread; it is used where it exists, called from the kernels (its
    address: the first list; past the kernels' slots, through ctypes). Other
    libraries get a Python function (the second list).
    """
    from threadpoolctl import ThreadpoolController

    addresses, setters = [], []
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        local = None
        if lib.internal_api == "openblas":
            local = getattr(lib.dynlib, "openblas_set_num_threads_local", None)
        if local is not None:
            addresses.append(ctypes.cast(local, ctypes.c_void_p).value)
        else:

            def swap(threads: int, lib=lib) -> int:
                previous = lib.get_num_threads()
                lib.set_num_threads(threads)
                return previous

            setters.append(swap)
    return addresses, setters


class _BlasHold:
    """BLAS held to one thread while any call of the Cython backend runs, whichever instance makes it.

    The BLAS libraries are found once (threadpoolctl) and then set through
    their own calls, a few microseconds instead of a fresh threadpoolctl scan
    per call (OpenBLAS's from compiled code: a ctypes call costs 5-10 us once a
    large kernel has evicted its code, and a call makes four). Thread counts
    are the process's, so there is one hold per process, reference-counted:
    with calls running concurrently (from several Python threads, through
    several backend instances), the first one in sets the limit and the last
    one out restores it. The libraries are the ones loaded at the first hold:
    a BLAS loaded later (MKL with a later import) is not held.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._found: tuple[list[int], list] | None = None  # _find_blas_setters's answer, the first time
        self._told: set = set()  # the kernel modules given the addresses (benchmarks/ab_kernels.py loads two)
        self._held: tuple = (None, (), [])  # the module that holds, the counts it found, the others' counts

    def hold(self, kernels: Any) -> None:
        """One more call of ``kernels`` (the compiled module that sets OpenBLAS's threads) runs."""
        with self._lock:
            if self._users == 0:
                if self._found is None:
                    addresses, setters = _find_blas_setters()
                    slots = kernels.blas_setter_slots()  # past them (never seen): through ctypes
                    self._found = addresses[:slots], setters + [_ctypes_setter(a) for a in addresses[slots:]]
                addresses, setters = self._found
                if kernels not in self._told:
                    kernels.use_blas_thread_setters(addresses)
                    self._told.add(kernels)
                saved, others = kernels.hold_blas_threads(1), []
                try:
                    for set_threads in setters:
                        others.append(set_threads(1))
                except BaseException:
                    self._undo(kernels, saved, others)  # those set so far get their counts back
                    raise
                self._held = (kernels, saved, others)
            self._users += 1

    def release(self) -> None:
        """A call that hold() counted has ended."""
        with self._lock:
            if self._users <= 0:
                raise RuntimeError("BLAS hold: released more often than held")
            self._users -= 1
            if self._users == 0:
                self._undo(*self._held)

    def _undo(self, kernels: Any, saved: tuple[int, ...], others: list[int]) -> None:
        """Give every library set its count back, the last set first; a setter that fails stops none of the
        others (its error comes after)."""
        error = None
        if others:
            setters = self._found[1][: len(others)]  # a hold that failed midway set a prefix of them
            for set_threads, threads in reversed(list(zip(setters, others, strict=True))):
                try:
                    set_threads(threads)
                except BaseException as exc:
                    error = error or exc
        kernels.restore_blas_threads(saved)
        if error is not None:
            raise error


_BLAS_HOLD = _BlasHold()


class CythonBackend(StackedBackend):
    """Compiled CPU backend; every feature, training included, float32 and float64."""

    capabilities = Capabilities(priority=100, training=True)
    fills_full_output = True  # every live step of every unit is written (run_rows)

    def __init__(self) -> None:
        self._kernels = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._prepared_weights: weakref.WeakKeyDictionary[LayerWeights, dict] = weakref.WeakKeyDictionary()

    def available(self) -> bool | str:
        try:
            from gru.backends.cython import _kernels
        except ImportError as exc:
            return f"the compiled extension is missing ({exc}); reinstall gru from source with a C compiler"
        self._kernels = _kernels
        _kernels.use_small_kernel(blas_has_small_kernel())
        return True

    def _base(self, weights: LayerWeights) -> dict:
        """The per-LayerWeights cache of what the kernels take, its base arrays made on first use."""
        prepared = self._prepared_weights.get(weights)
        if prepared is None:
            H = weights.w_hh.shape[1]
            prepared = self._prepared_weights[weights] = {
                # all read at every step: on cache lines (see aligned_copy)
                "w_ih_t": aligned_copy(weights.w_ih.T),
                "w_hh": on_cache_line(weights.w_hh),
                "bias": on_cache_line(fold_biases(weights.b_ih, weights.b_hh, with_b_hn=False)),  # b_hn: apart
                "b_hn": on_cache_line(weights.b_hh[2 * H :]),
                # a zero h0 then makes a zero first product, which the kernel skips (see run_rows)
                "w_hh_finite": bool(np.isfinite(weights.w_hh).all()),
            }
        return prepared

    def _w_hh_t(self, weights: LayerWeights) -> np.ndarray:
        """W_hh^T, made once per LayerWeights: the backward's products take its rows (see backward_rows)."""
        prepared = self._base(weights)
        if "w_hh_t" not in prepared:
            prepared["w_hh_t"] = aligned_copy(weights.w_hh.T)
        return prepared["w_hh_t"]

    def _prepared(self, weights: LayerWeights, team: int, w_rows: bool) -> tuple:
        """Weights as the kernel takes them, made once per LayerWeights (and team size and layout, for the panels).

        Transposed input weights (the input projection's layout but for a
        few rows, see _kernels.project_by_rows), W_hh and its per-thread panels packed for ``team``
        threads in the layout ``w_rows`` (see _kernels.pack_panels), and the biases folded:
        (b_ir + b_hr, b_iz + b_hz, b_in) and b_hn, which reset-after applies
        under the reset gate; and whether W_hh is finite (see _kernels.run_direction).
        """
        prepared = self._base(weights)
        by_team = prepared.setdefault("panels", {})
        key = (team, w_rows)
        panels = by_team.get(key)
        if panels is None:
            # packed before it is shared: pack_panels releases the GIL, and a call in another thread
            # must never find a half-packed array in the cache
            panels = aligned_zeros(prepared["w_hh"].shape, prepared["w_hh"].dtype)
            self._kernels.pack_panels(prepared["w_hh"], team, panels, w_rows)
            with self._lock:
                # the last four: a layer called in turn with one sequence and with batches (two layouts past
                # L2, see panel_rows), each with two thread counts, packs once for each (at H = 1024 a repack
                # copies 12 MB: 1.2 ms, a tenth of a 100-step call); at most four copies of W_hh are kept
                while len(by_team) >= PANEL_TEAMS_KEPT:
                    del by_team[next(iter(by_team))]
                by_team[key] = panels
        return prepared["w_ih_t"], prepared["w_hh"], prepared["bias"], prepared["b_hn"], panels, prepared["w_hh_finite"]

    def _scratch(self, dtype: np.dtype, *shapes: tuple[int, int]) -> list[np.ndarray]:
        """Scratch arrays of these shapes, from a buffer kept per calling thread.

        Reusing the memory spares every call the page faults of fresh
        allocations (milliseconds for large layers); one buffer per Python
        thread keeps concurrent calls apart.
        """
        local = self._local
        last = getattr(local, "last", None)  # a loop of equal calls (a cell stepped in Python) asks the same
        if last is not None and last[0] == (dtype, shapes):
            return last[1]
        need = sum(rows * cols for rows, cols in shapes)
        try:
            buffers = local.buffers
        except AttributeError:
            buffers = local.buffers = {}
        buffer = buffers.get(dtype)  # keyed by the dtype object: np.dtype(...).name costs microseconds
        if buffer is None or buffer.size < need:
            buffer = buffers[dtype] = aligned_zeros((need,), dtype)  # threads' slices on whole cache lines
        views, start = [], 0
        for rows, cols in shapes:
            views.append(buffer[start : start + rows * cols].reshape(rows, cols))
            start += rows * cols
        local.last = ((dtype, shapes), views)  # views of the buffer now kept, which a larger one replaces
        return views

    def thread_count(self, requested: int | None) -> int:
        """Resolve the number of threads for one call."""
        if requested is not None:
            return min(requested, MAX_THREADS)
        from_env = os.environ.get(THREADS_ENV_VAR)
        if from_env:
            try:
                count = int(from_env)
            except ValueError:
                count = 0
            if count < 1:
                raise ValueError(f"{THREADS_ENV_VAR}: expected a positive integer, got {from_env!r}")
            return min(count, MAX_THREADS)
        return self._kernels.max_threads()

    def _hold_blas_to_one_thread(self) -> None:
        """Hold BLAS to one thread while this call runs (undo: _release_blas); see _BlasHold."""
        _BLAS_HOLD.hold(self._kernels)

    def _release_blas(self) -> None:
        _BLAS_HOLD.release()

    def _with_blas_held(self, call, *args):
        """``call(*args)`` with BLAS held to one thread (a plain call: a context manager costs microseconds)."""
        self._hold_blas_to_one_thread()
        try:
            return call(*args)
        finally:
            self._release_blas()

    def forward(self, request: ForwardRequest) -> ForwardResult:
        if self._kernels is None:
            self.available()
        return self._with_blas_held(super().forward, request)

    def backward(self, request: ForwardRequest, result: ForwardResult, d_output: Any, d_h_n: Any) -> BackwardResult:
        return self._with_blas_held(super().backward, request, result, d_output, d_h_n)

    @staticmethod
    def _sequence_order(lengths: np.ndarray | None, T: int, B: int) -> tuple[np.ndarray, np.ndarray]:
        """Sequences by decreasing length, and those lengths: live sequences form a prefix."""
        if lengths is None:
            return _full_lengths(T, B)
        order = np.argsort(-lengths, kind="stable").astype(np.int64)
        return order, np.ascontiguousarray(lengths[order])

    def run_direction(
        self,
        x: Any,
        h0: Any,
        weights: LayerWeights,
        lengths: np.ndarray | None,
        *,
        reverse: bool,
        reset_after: bool,
        output: Any,
        h_n: Any,
        gates: Any | None,
        threads: int | None,
        hn: Any | None = None,
    ) -> None:
        T, B, _ = x.shape
        H = h0.shape[-1]
        h_n[...] = h0
        if T == 0 or B == 0:
            return
        order, sorted_lengths = self._sequence_order(lengths, T, B)
        team = self._kernels.team_size(self.thread_count(threads), H, B, x.itemsize)
        # a call split by sequence reads every unit's panel: that of a team of one
        panels_team = 1 if self._kernels.splits_sequences(B, H, x.itemsize, team) else team
        w_rows = self._kernels.panel_rows(B, H, x.itemsize, panels_team)
        w_ih_t, w_hh, bias, b_hn, panels, w_hh_finite = self._prepared(weights, panels_team, w_rows)
        # gx, gh and its column-major twin, r*h and two states, gate scratch; then room for packed
        # recurrent weights, should OpenMP give another team than asked for
        rows = self._kernels.workspace_rows(T, B, x.shape[2], H, x.itemsize, reverse, sorted_lengths[-1], team)
        workspace, own_panels = self._scratch(x.dtype, (rows, 3 * H), (3 * H, H))
        self._kernels.run_direction(
            x,
            w_ih_t,
            weights.w_ih,
            w_hh,
            bias,
            b_hn,
            sorted_lengths,
            order,
            reverse,
            reset_after,
            output,
            h_n,
            gates,
            hn,
            workspace,
            panels,
            panels_team,
            w_rows,
            own_panels,
            team,
            w_hh_finite,
        )

    def backward_direction(
        self,
        x: Any,
        h0: Any,
        weights: LayerWeights,
        lengths: np.ndarray | None,
        *,
        reverse: bool,
        reset_after: bool,
        output: Any,
        gates: Any,
        hn: Any | None,
        d_output: Any,
        d_h_n: Any,
        d_x: Any,
        d_h0: Any,
        grads: LayerWeights,
        threads: int | None = None,
    ) -> None:
        T, B, _ = x.shape
        H = h0.shape[-1]
        if T == 0 or B == 0:
            d_h0[...] = d_h_n
            return
        order, sorted_lengths = self._sequence_order(lengths, T, B)
        if lengths is not None and sorted_lengths[-1] < T:
            # d W_ih is one GEMM over every row, padding included (d_gx is 0 there): zero the
            # padding, so that what it holds (NaN, inf) does not come in as 0 * NaN
            x = np.where((np.arange(T)[:, None] < lengths)[:, :, None], x, 0)
        threads = self.thread_count(threads)
        team = self._kernels.team_size(threads, H, B, x.itemsize)  # what the kernel uses of ``threads``
        rows = self._kernels.backward_workspace_rows(T, B, x.shape[2], H, x.itemsize, team)
        (workspace,) = self._scratch(x.dtype, (rows, H))
        self._kernels.backward_direction(
            x,
            h0,
            weights.w_ih,
            weights.w_hh,
            self._w_hh_t(weights),
            sorted_lengths,
            order,
            reverse,
            reset_after,
            output,
            gates,
            hn,
            d_output,
            np.ascontiguousarray(d_h_n),
            d_x,
            d_h0,
            grads.w_ih,
            grads.w_hh,
            grads.b_ih,
            grads.b_hh,
            workspace,
            np.empty(12 * H * team),  # the bias gradients' sums, in double (6H per chunk of sequences)
            team,
        )
