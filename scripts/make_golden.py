"""Regenerate the golden files of the conformance suite from PyTorch's nn.GRU.

    python scripts/make_golden.py        # needs torch; writes gru/testing/golden/*.npz

Each file holds float64 inputs, PyTorch-keyed parameters, lengths and the
output / h_n that ``torch.nn.GRU`` (through a PackedSequence when lengths
differ) computes. They check the suite's oracle against an outside
implementation. Files are plain .npz (no pickled objects).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "gru" / "testing" / "golden"

CASES = [
    # name, input_size, hidden_size, num_layers, bidirectional, bias, T, B, lengths, with_h0
    ("single_layer", 3, 5, 1, False, True, 7, 2, None, False),
    ("stacked_bidirectional", 4, 6, 2, True, True, 6, 3, None, True),
    ("no_bias", 2, 4, 1, False, False, 5, 2, None, True),
    ("packed_lengths", 3, 4, 2, True, True, 8, 4, [8, 3, 5, 1], True),
    ("three_layers_packed", 5, 3, 3, False, True, 9, 3, [2, 9, 6], False),
]


def make(name, I, H, L, bidirectional, bias, T, B, lengths, with_h0, seed):
    torch.manual_seed(seed)
    module = torch.nn.GRU(I, H, num_layers=L, bias=bias, bidirectional=bidirectional, dtype=torch.float64)
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(L * D, B, H, dtype=torch.float64) if with_h0 else torch.zeros(L * D, B, H, dtype=torch.float64)
    with torch.no_grad():
        if lengths is None:
            output, h_n = module(x, h0)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
            packed_out, h_n = module(packed, h0)
            output, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out, total_length=T)
    config = dict(input_size=I, hidden_size=H, num_layers=L, bidirectional=bidirectional, bias=bias)
    arrays = {f"param.{k}": v.numpy() for k, v in module.state_dict().items()}
    arrays.update(
        config=np.array(json.dumps(config)),
        x=x.numpy(),
        h0=h0.numpy(),
        lengths=np.array(lengths if lengths is not None else [T] * B, np.int64),
        output=output.numpy(),
        h_n=h_n.numpy(),
        torch_version=np.array(torch.__version__),
    )
    np.savez(OUT / f"{name}.npz", **arrays)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help writes nothing
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, case in enumerate(CASES):
        make(*case, seed=seed)
        print("wrote", OUT / f"{case[0]}.npz")


if __name__ == "__main__":
    main()
