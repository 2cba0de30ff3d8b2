"""The conformance suite every backend runs against itself.

Run it on a backend by name::

    pytest --pyargs gru.testing --gru-backend NAME
    gru conformance NAME

Without ``--gru-backend`` it runs on every available backend. Its oracle
(:mod:`gru.testing.oracle`) is a plain float64 implementation written from
the equations, itself checked against golden values produced by PyTorch.
"""

from gru.testing.oracle import oracle_backward, oracle_forward

__all__ = ["oracle_backward", "oracle_forward"]
