"""Row-major batched matrix products as cuBLAS ``gemmStridedBatched`` calls, whole or split along K.

Why: the stepwise path runs one recurrent product per time step, and
``cupy.matmul`` spends tens of microseconds of Python per call checking and
broadcasting its operands. The backend's operands are already canonical
(C-contiguous, one dtype, fixed shapes), so the call can go straight to cuBLAS.
And at small batch one product (B x H) @ (H x 3H) has too few output tiles to
occupy every multiprocessor: split into S products over consecutive chunks of
K, it has S times as many, and the gate kernel adds the S partial results.

cuBLAS is column-major. A row-major (M, K) array is, in the same memory, a
column-major (K, M) one, its transpose; so ``C = A @ B`` in row-major is
``C^T = B^T A^T`` in column-major, with no transposition flag and no copy:
cuBLAS's first operand is B (leading dimension N), its second A (leading
dimension K), and C has leading dimension N. A chunk of K is a block of B's rows
and of A's columns: an offset into each, with the same leading dimensions.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class GemmCall(NamedTuple):
    """One ``gemmStridedBatched`` call (no transposes): its integer arguments and where its operands start."""

    m: int
    n: int
    k: int
    lda: int  #: of cuBLAS's first operand, which is ``b``
    stride_a: int
    ldb: int  #: of cuBLAS's second operand, which is ``a``
    stride_b: int
    ldc: int
    stride_c: int
    batch: int
    offset_b: int = 0  #: elements into ``b`` where the call's first operand starts
    offset_a: int = 0  #: elements into ``a``
    offset_out: int = 0  #: elements into ``out``


_INT32_MAX = 2**31 - 1


def gemm_calls(a_shape: tuple[int, ...], b_shape: tuple[int, ...], splits: int = 1) -> list[GemmCall] | None:
    """The calls for C-contiguous ``a`` (D, M, K) @ ``b`` (D, K, N) or (K, N) into ``out`` (splits, D, M, N).

    ``out[s]`` receives the product over K's chunk ``s`` (columns ``s*K/S`` to
    ``(s+1)*K/S`` of ``a``, the same rows of ``b``); with one split that is the
    whole product. One call batched over D when whole, one per direction
    batched over the splits otherwise. None (the caller falls back to
    ``matmul``) for other ranks, mismatched shapes, empty products, a K that
    the splits do not divide, and sizes past cuBLAS's 32-bit arguments.
    """
    if len(a_shape) != 3 or len(b_shape) not in (2, 3) or splits < 1:
        return None
    D, M, K = a_shape
    if len(b_shape) == 3:
        if b_shape[0] != D:
            return None
        b_rows, N = b_shape[1:]
        b_step = b_rows * N  # from one direction's matrix to the next
    else:
        b_rows, N = b_shape
        b_step = 0  # one matrix for every direction
    if b_rows != K or min(D, M, K, N) == 0 or K % splits:
        return None
    if max(M, N, K, D * splits, M * K, K * N, D * M * N) > _INT32_MAX:
        return None
    shape = {"m": N, "n": M, "lda": N, "ldb": K, "ldc": N}
    if splits == 1:
        return [GemmCall(**shape, k=K, stride_a=b_step, stride_b=M * K, stride_c=M * N, batch=D)]
    chunk = K // splits
    return [
        GemmCall(
            **shape,
            k=chunk,
            stride_a=chunk * N,  # the next chunk: chunk rows further down b
            stride_b=chunk,  # ... and chunk columns further along a
            stride_c=D * M * N,
            batch=splits,
            offset_b=d * b_step,
            offset_a=d * M * K,
            offset_out=d * M * N,
        )
        for d in range(D)
    ]


def split_matmul_reference(xp: Any, a: Any, b: Any, out: Any) -> Any:
    """``out[s] = a[..., chunk s] @ b[..., chunk s, :]`` with the array module's matmul (any layout)."""
    splits = out.shape[0]
    chunk = a.shape[-1] // splits
    for s in range(splits):
        part = slice(s * chunk, (s + 1) * chunk)
        xp.matmul(a[..., part], b[..., part, :], out=out[s])
    return out
