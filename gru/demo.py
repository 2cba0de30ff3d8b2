"""``gru demo``: a GRU learns the adding problem, and shows where its update gate holds its state.

The adding problem (Hochreiter & Schmidhuber, 1997) is the classic test of
memory over long spans: each sequence has T steps of two inputs, a value
drawn from U(0, 1) and a marker that is 1 at exactly two steps (one in each
half, as in Arjovsky et al., 2016) and 0 elsewhere; the target is the sum of
the two marked values. Guessing 1 every time scores an MSE of about 0.167, so
anything well below that must have carried the first marked value across
tens of steps to the end. A plain RNN's gradient vanishes over such spans;
the GRU's update gate z_t can stay near 1 (h_t ≈ h_{t-1}) and pass both the
value forward and the gradient back. The heat map of z_t over one test
sequence shows that.

tqdm (progress bar) and matplotlib (the figure) are optional and imported
only when used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import gru
from gru._cli_checks import accept_negative_values, figure_path, number_error
from gru.train import Adam, Linear, clip_grad_norm, mse_loss

__all__ = ["DemoResult", "add_arguments", "adding_problem", "run_from_args", "train_adding"]

BASELINE_MSE = 1 / 6  # predicting 1, the mean of the sum: Var(U1 + U2) = 2 · 1/12
DTYPE = "float32"
TEST_SIZE = 1000  # fixed sequences the test MSE is measured on


def adding_problem(rng: np.random.Generator, batch: int, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``batch`` sequences of the adding problem: x (B, T, 2), target (B, 1), marked positions (B, 2).

    The first marker falls in the first half, the second in the second half,
    so the first marked value must be held for at least one step and on
    average T/2 before the sum can be formed (T ≥ 2).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len: expected at least 2 steps, got {seq_len}")
    values = rng.random((batch, seq_len))
    half = seq_len // 2
    marks = np.stack([rng.integers(0, half, batch), rng.integers(half, seq_len, batch)], axis=1)
    markers = np.zeros((batch, seq_len))
    rows = np.arange(batch)[:, None]
    markers[rows, marks] = 1.0
    x = np.stack([values, markers], axis=-1).astype(DTYPE)
    target = values[rows, marks].sum(axis=1, keepdims=True).astype(DTYPE)
    return x, target, marks


@dataclass
class DemoResult:
    """What :func:`train_adding` did: enough to print the result and draw the figure."""

    backend: str
    steps: int = 0
    seconds: float = 0.0
    reached: bool = False
    test_mse: float = float("nan")
    train_loss: list[float] = field(default_factory=list)  # one per step
    test_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, test MSE)


def training_backend(choice: str) -> str:
    """The backend a training call with ``choice`` runs on: ``auto`` is the fastest CPU one declaring training.

    A named backend is checked here, so that a bad name fails before a run starts.
    """
    if choice != "auto":
        try:
            caps = gru.get_backend(choice).capabilities  # the registry's lookup, and its errors
        except gru.BackendNotFoundError as exc:  # its message names "backend:"; the caller names the flag
            raise gru.BackendNotFoundError(str(exc).removeprefix("backend: ")) from None
        if not caps.training or DTYPE not in caps.dtypes:
            raise gru.UnsupportedRequestError(f"backend {choice!r} does not declare training in {DTYPE}")
        return choice
    capable = [
        info
        for info in gru.list_backends()
        if info.available
        and info.capabilities is not None
        and info.capabilities.training
        and info.capabilities.device == "cpu"
        and DTYPE in info.capabilities.dtypes
    ]
    if not capable:
        raise gru.UnsupportedRequestError("no available CPU backend declares training")
    return max(capable, key=lambda info: info.capabilities.priority).name


def train_adding(
    *,
    seq_len: int = 100,
    hidden: int = 32,
    batch: int = 64,
    lr: float = 1e-2,
    clip: float = 1.0,
    max_steps: int = 3000,
    time_limit: float = 300.0,
    target: float = 0.01,
    eval_every: int = 25,
    test_size: int = TEST_SIZE,
    seed: int = 0,
    backend: str = "auto",
    threads: int | None = 1,
    progress: bool = True,
) -> tuple[DemoResult, gru.GRU, Linear, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Train GRU(2, hidden) + Linear(hidden, 1) on the adding problem with Adam and MSE.

    The readout reads the last state h_T. Every ``eval_every`` steps the test
    MSE over ``test_size`` fixed sequences is measured, and training stops as
    soon as it is below ``target`` (or after ``max_steps`` steps, or once
    ``time_limit`` seconds have passed). Gradients are clipped to a global
    norm of ``clip``: the rare step where a held state meets a large error
    would otherwise undo what was learned. ``threads`` goes to every layer
    call (None: the backend's default); see ``--threads``. Returns the result,
    the trained layers and the test set (x, target, marked positions).
    """
    name = training_backend(backend)
    rng = np.random.default_rng(seed)
    layer = gru.GRU(2, hidden, batch_first=True, dtype=DTYPE, backend=name, seed=rng)
    readout = Linear(hidden, 1, dtype=DTYPE, seed=rng)
    optimiser = Adam([layer, readout], lr=lr)
    test = adding_problem(np.random.default_rng([seed, 1]), test_size, seq_len)  # never seen in training
    result = DemoResult(backend=name)

    def test_mse() -> float:
        _, h_n = layer(test[0], threads=threads)
        return mse_loss(readout(h_n[-1]), test[1])[0]

    bar = _progress(max_steps, progress)
    start = time.perf_counter()
    try:
        for step in range(1, max_steps + 1):
            x, y, _ = adding_problem(rng, batch, seq_len)
            output, h_n = layer(x, train=True, threads=threads)
            loss, d_pred = mse_loss(readout(h_n[-1]), y)
            readout_grads = readout.backward(d_pred)
            d_h_n = np.zeros_like(h_n)
            d_h_n[-1] = readout_grads.input  # the loss sees only the last state
            layer_grads = layer.backward(np.zeros_like(output), d_h_n)
            grads, _ = clip_grad_norm([layer_grads.params, readout_grads.params], clip)
            optimiser.step(grads)
            result.train_loss.append(loss)
            result.steps = step
            bar.update(1)
            last = step == max_steps or time.perf_counter() - start > time_limit
            if step % eval_every == 0 or last:
                result.test_mse = test_mse()
                result.test_curve.append((step, result.test_mse))
                bar.set_postfix(loss=f"{loss:.4f}", test_mse=f"{result.test_mse:.4f}", refresh=False)
                if result.test_mse < target:
                    result.reached = True
                    break
            if last:
                break
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result, layer, readout, test


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr (shown on a terminal only); without tqdm, a line per evaluation."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _Lines(enabled)
    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, disable=None if enabled else True)


class _Lines:
    def __init__(self, enabled: bool) -> None:
        self.enabled, self.n = enabled, 0

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, refresh: bool = True, **values: str) -> None:
        if self.enabled:
            print(f"step {self.n}: " + ", ".join(f"{k} {v}" for k, v in values.items()), file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def example_sequence(test: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
    """A test sequence worth drawing: both marked values visible (≥ 0.3), markers ≥ T/3 apart; else the first."""
    x, _, marks = test
    values = np.take_along_axis(x[:, :, 0], marks, axis=1)
    good = np.flatnonzero((values.min(axis=1) >= 0.3) & (marks[:, 1] - marks[:, 0] >= x.shape[1] // 3))
    return int(good[0]) if good.size else 0


def write_figure(
    path: str, result: DemoResult, layer: gru.GRU, test: tuple[np.ndarray, np.ndarray, np.ndarray], target: float
) -> str | None:
    """Loss curves, then one test sequence and the update gate z_t over it; None, or why nothing was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: pip install matplotlib"
    x, _, marks = test
    k = example_sequence(test)
    _, _, gates = layer(x[k : k + 1], return_gates=True)
    z = np.asarray(gates.z)[-1, 0].T  # (H, T): the last layer, that one test sequence
    order = np.argsort(z.mean(axis=1))[::-1]  # units that hold most on top
    T = x.shape[1]
    values, marked = x[k, :, 0], marks[k]

    fig, axes = plt.subplots(
        3, 1, figsize=(10, 8.5), gridspec_kw={"height_ratios": [2.2, 0.8, 2.4]}, constrained_layout=True
    )
    ax = axes[0]
    steps = np.arange(1, len(result.train_loss) + 1)
    ax.plot(steps, result.train_loss, color="0.6", linewidth=0.8, label="training batch MSE")
    if result.test_curve:
        ax.plot(*zip(*result.test_curve, strict=True), "o-", color="C0", markersize=3, label="test MSE")
    ax.axhline(BASELINE_MSE, color="C3", linestyle="--", linewidth=1, label="always predicting 1 (≈0.167)")
    ax.axhline(target, color="C2", linestyle=":", linewidth=1.2, label=f"target {target:g}")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(
        f"adding problem, T = {T}: GRU({layer.input_size}, {layer.hidden_size}) + linear readout, "
        f"backend {result.backend}; test MSE {result.test_mse:.4f} after {result.steps} steps ({result.seconds:.0f} s)",
        fontsize=10,
    )

    ax = axes[1]
    ax.bar(np.arange(T), values, width=0.8, color="0.75")
    ax.bar(marked, values[marked], width=0.8, color="C3")
    for t in marked:
        ax.annotate(
            f"{values[t]:.2f}", (t, values[t]), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8
        )
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("input value")
    ax.set_title(
        f"one test sequence: the marked values (red) sum to {values[marked].sum():.3f}", fontsize=10, loc="left"
    )
    ax.set_xticks([])

    ax = axes[2]
    image = ax.imshow(z[order], aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    H = z.shape[0]
    for t in marked:  # triangles on both edges, leaving the marked column itself visible
        ax.plot([t], [-0.5], linestyle="none", marker="v", markersize=9, color="red", clip_on=False)
        ax.plot([t], [H - 0.5], linestyle="none", marker="^", markersize=9, color="red", clip_on=False)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_xlabel("time step t (red triangles: the two marked steps)")
    ax.set_ylabel("hidden unit (sorted by mean z)")
    ax.set_title(
        "update gate z_t: near 1 the unit holds its state (h_t ≈ h_{t-1}), near 0 it rewrites it", fontsize=10, pad=12
    )
    fig.colorbar(image, ax=ax, label="z_t", pad=0.01)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gru demo`` options."""
    parser.add_argument(
        "--backend",
        help="backend to train on (default: $GRU_BACKEND, else auto: the fastest available one that declares training)",
    )
    parser.add_argument("--seq-len", type=int, default=100, metavar="T", help="sequence length (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data (default 0)")
    parser.add_argument(
        "--out",
        default="gru-demo.png",
        metavar="FILE.png",
        help="where to save the figure (default gru-demo.png; the suffix picks the format, none: .png; empty: none)",
    )
    parser.add_argument("--hidden", type=int, default=32, metavar="H", help="hidden units (default 32)")
    parser.add_argument("--batch", type=int, default=64, metavar="B", help="sequences per step (default 64)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate (default 0.01)")
    parser.add_argument("--steps", type=int, default=3000, metavar="N", help="at most this many steps (default 3000)")
    parser.add_argument(
        "--time-limit", type=float, default=300.0, metavar="SECONDS", help="stop training after this long (default 300)"
    )
    parser.add_argument(
        "--target", type=float, default=0.01, help="stop once the test MSE is below this (default 0.01)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="threads of the backend (default 1: 32 hidden units are too few to share; threads would wait for each "
        "other at every step, and on a busy machine for a descheduled one; 0: the backend's default)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    accept_negative_values(parser)


def _memory_error(seq_len: int, batch: int, hidden: int) -> str | None:
    """Why a training step of this size cannot fit this machine's memory, or None (checked before anything runs).

    A lower bound on what a step holds at once: the batch and the test set's
    inputs, and for each the layer's outputs, gate activations and W_hn h
    (5H values a step) that the backward reads, with the backward's own
    gradients of the same size; and the parameters four times (with their
    gradients and Adam's two moments).
    """
    from gru._validation import memory_bytes

    memory = memory_bytes()
    if memory is None:
        return None
    rows = seq_len * (batch + TEST_SIZE)
    parameters = 3 * hidden * (2 + hidden + 2) + hidden + 1  # GRU(2, hidden) and Linear(hidden, 1)
    need = (rows * (2 + 2 * 5 * hidden) + 4 * parameters) * np.dtype(DTYPE).itemsize
    if need <= memory:
        return None
    return (
        f"--seq-len {seq_len}, --batch {batch}, --hidden {hidden}: a training step would hold at least "
        f"{need / 2**30:,.1f} GiB, more than this machine's memory ({memory / 2**30:,.1f} GiB)"
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Train, print the result, save the figure; 0 when the target was reached, 1 when not, 2 on bad input.

    Every argument, the figure's file included, is checked before anything is printed or trained.
    """
    out, out_problem = figure_path(args.out, "--out") if args.out else (None, None)
    problem = (
        number_error("--threads", args.threads, 0)
        or number_error("--seq-len", args.seq_len, 2)
        or number_error("--hidden", args.hidden, 1)
        or number_error("--batch", args.batch, 1)
        or number_error("--steps", args.steps, 1)
        or number_error("--seed", args.seed, 0)
        or number_error("--lr", args.lr, 0, "a learning rate", above=True)
        or number_error("--time-limit", args.time_limit, 0, "a number of seconds", above=True)
        or number_error("--target", args.target, 0, "a test MSE", above=True)
        or _memory_error(args.seq_len, args.batch, args.hidden)
        or out_problem
    )
    flag, choice = ("--backend", args.backend) if args.backend else ("$GRU_BACKEND", os.environ.get("GRU_BACKEND"))
    try:
        backend = training_backend(choice or "auto")
    except gru.BackendError as exc:
        problem = problem or f"{flag if choice else '--backend'}: {exc}"
    if problem:
        print(f"gru demo: error: {problem}", file=sys.stderr)
        return 2
    print(
        f"adding problem: sequences of {args.seq_len} (value ~ U(0,1), marker) pairs with two marked steps; "
        f"predict the sum of the two marked values (always guessing 1: MSE {BASELINE_MSE:.3f})"
    )
    print(
        f"GRU(2, {args.hidden}) + Linear({args.hidden}, 1), {DTYPE}, backend {backend}; Adam lr {args.lr:g}, "
        f"batch {args.batch}, gradient norm clipped at 1, seed {args.seed}, {args.threads or 'default'} "
        f"thread{'s' if args.threads != 1 else ''}; target test MSE < {args.target:g}"
    )
    try:
        result, layer, readout, test = train_adding(
            seq_len=args.seq_len,
            hidden=args.hidden,
            batch=args.batch,
            lr=args.lr,
            max_steps=args.steps,
            time_limit=args.time_limit,
            target=args.target,
            seed=args.seed,
            backend=backend,
            threads=args.threads or None,
            progress=args.progress,
        )
    except (gru.BackendError, ValueError) as exc:
        print(f"gru demo: error: {exc}", file=sys.stderr)
        return 2
    seen = result.steps * args.batch
    verdict = "reached" if result.reached else "did NOT reach"
    print(
        f"{verdict} test MSE {result.test_mse:.4f} (target < {args.target:g}) after {result.steps} steps "
        f"({seen:,} training sequences) in {result.seconds:.1f} s on backend {result.backend}"
    )
    x, y, marks = test
    _, h_n = layer(x[:3], threads=args.threads or None)
    for k, pred in enumerate(readout(h_n[-1])[:, 0]):
        a, b = x[k, marks[k], 0]
        print(
            f"  test sequence {k}: marked at steps {marks[k][0]:>3} and {marks[k][1]:>3}: "
            f"{a:.3f} + {b:.3f} = {y[k, 0]:.3f}, predicted {pred:.3f}"
        )
    if out:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            why = write_figure(out, result, layer, test, args.target)
        except OSError as exc:  # checked before training, so something changed since: the result is printed above
            print(f"gru demo: error: --out: cannot write {out!r}: {exc}", file=sys.stderr)
            return 2
        print(f"figure not written: {why}" if why else f"wrote {out}")
    return 0 if result.reached else 1
