"""The GRU recurrence written with PyTorch tensor operations (gate order r, z, n).

Not ``torch.nn.GRU``: writing the step out lets this backend also run the
reset-before variant (``reset_after=False``), which ``nn.GRU`` does not offer.

torch is imported inside :meth:`TorchBackend.available` and at call time,
never when this module is imported, so that ``gru.list_backends()`` stays
cheap and a machine without torch sees the backend as unavailable instead
of failing to load it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from gru.backends import Capabilities, LayerWeights, StackedBackend

if TYPE_CHECKING:
    import torch


def _shared(torch_module, a: np.ndarray) -> torch.Tensor:
    """A tensor over ``a``'s memory (no copy), so results written to it land in the caller's buffer.

    Read-only inputs (weights, a user's read-only array) are only ever read here,
    so torch's "not writable" warning would be noise.
    """
    if a.flags.writeable:
        return torch_module.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch_module.from_numpy(a)


def _reversal_index(torch_module, T: int, B: int, lengths: np.ndarray | None) -> torch.Tensor:
    """(T, B) source step of each step when every sequence is reversed within its own length.

    Gathering with it turns the reverse direction into a forward one; the mapping
    is its own inverse, so gathering the results with it puts them back in place.
    """
    lens = torch_module.full((B,), T) if lengths is None else _shared(torch_module, lengths)
    steps = torch_module.arange(T)[:, None]
    return torch_module.where(steps < lens[None, :], lens[None, :] - 1 - steps, steps)


class TorchBackend(StackedBackend):
    """Every feature on the CPU through torch; priority -10 so "auto" keeps preferring the reference."""

    capabilities = Capabilities(
        dtypes=frozenset({"float32", "float64"}),
        reset_after=True,
        reset_before=True,
        lengths=True,
        gates=True,
        device="cpu",
        priority=-10,
    )

    def available(self) -> bool | str:
        """Torch is optional for this package: say why the backend cannot run rather than break the registry."""
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return f"PyTorch is not importable ({exc}); install it with `pip install torch`"
        return True

    def run_direction(
        self,
        x: np.ndarray,
        h0: np.ndarray,
        weights: LayerWeights,
        lengths: np.ndarray | None,
        *,
        reverse: bool,
        reset_after: bool,
        output: np.ndarray,
        h_n: np.ndarray,
        gates: np.ndarray | None,
        threads: int | None,
    ) -> None:
        import torch

        T, B, I = x.shape
        H = h0.shape[-1]
        w_ih, w_hh, b_ih, b_hh = (_shared(torch, a) for a in (weights.w_ih, weights.w_hh, weights.b_ih, weights.b_hh))
        inputs = _shared(torch, x)
        order = _reversal_index(torch, T, B, lengths) if reverse else None
        if order is not None:
            inputs = inputs.gather(0, order[:, :, None].expand(T, B, I))

        # W_i· x_t + b_i· for every step in one product, before the loop: (T, B, 3H).
        projected = torch.addmm(b_ih, inputs.reshape(T * B, I), w_ih.t()).view(T, B, 3 * H)
        # The r and z rows of W_hh share one product per step; the n rows differ between the variants.
        w_rz, w_n = w_hh[: 2 * H].t(), w_hh[2 * H :].t()
        b_rz, b_n = b_hh[: 2 * H], b_hh[2 * H :]
        # A sequence whose length is <= t has ended: its state stays, its output and gates are 0.
        alive = None if lengths is None else (torch.arange(T)[:, None] < _shared(torch, lengths)[None, :])

        states = torch.zeros((T, B, H), dtype=inputs.dtype)
        trace = None if gates is None else torch.zeros((3, T, B, H), dtype=inputs.dtype)
        h = _shared(torch, h0).clone()
        for t in range(T):
            rz = torch.sigmoid(projected[t, :, : 2 * H] + torch.addmm(b_rz, h, w_rz))
            r, z = rz[:, :H], rz[:, H:]
            if reset_after:
                n = torch.tanh(projected[t, :, 2 * H :] + r * torch.addmm(b_n, h, w_n))
            else:
                n = torch.tanh(projected[t, :, 2 * H :] + torch.addmm(b_n, r * h, w_n))
            h_new = (1.0 - z) * n + z * h
            if alive is None:
                h = h_new
                states[t] = h_new
            else:
                keep = alive[t, :, None]
                h = torch.where(keep, h_new, h)
                states[t] = torch.where(keep, h_new, 0.0)
            if trace is not None:
                for g, value in enumerate((r, z, n)):
                    trace[g, t] = value if alive is None else torch.where(alive[t, :, None], value, 0.0)

        if order is not None:
            states = states.gather(0, order[:, :, None].expand(T, B, H))
            if trace is not None:
                trace = trace.gather(1, order[None, :, :, None].expand(3, T, B, H))
        _shared(torch, output).copy_(states)
        _shared(torch, h_n).copy_(h)
        if gates is not None:
            _shared(torch, gates).copy_(trace)
