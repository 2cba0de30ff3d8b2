"""Row-major products as cuBLAS calls (_gemm.py), checked against cuBLAS's column-major definition in NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from gru.backends.cupy._device import pack_kernel_arguments
from gru.backends.cupy._gemm import gemm_calls, split_matmul_reference
from gru.backends.cupy._kernels import STEP


def column_major(flat: np.ndarray, offset: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """The (rows, cols) column-major matrix with leading dimension ``ld`` at ``offset`` of ``flat`` (a view)."""
    item = flat.itemsize
    assert offset + (cols - 1) * ld + rows <= flat.size, "the call reads or writes past its operand"
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=(rows, cols), strides=(item, ld * item))


def run_calls(calls, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """What cublas<t>gemmStridedBatched does with no transposes, alpha 1 and beta 0 (its documented semantics),
    with cuBLAS's first operand in ``b``'s memory and its second in ``a``'s."""
    first, second, result = b.reshape(-1), a.reshape(-1), out.reshape(-1)
    for call in calls:
        for i in range(call.batch):
            x = column_major(first, call.offset_b + i * call.stride_a, call.m, call.k, call.lda)
            y = column_major(second, call.offset_a + i * call.stride_b, call.k, call.n, call.ldb)
            column_major(result, call.offset_out + i * call.stride_c, call.m, call.n, call.ldc)[...] = x @ y


SHAPES = [
    ((1, 5, 8), (1, 8, 3)),
    ((2, 4, 8), (2, 8, 9)),
    ((2, 3, 8), (8, 5)),  # one b for both directions
    ((1, 1, 4), (1, 4, 1)),
    ((3, 2, 8), (3, 8, 1)),
]


@pytest.mark.parametrize(("a_shape", "b_shape"), SHAPES)
@pytest.mark.parametrize("splits", [1, 2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_calls_compute_the_partial_products(a_shape, b_shape, splits, dtype):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    calls = gemm_calls(a.shape, b.shape, splits)
    assert calls is not None
    out = np.full((splits, *a.shape[:2], b.shape[-1]), np.nan, dtype)
    run_calls(calls, a, b, out)
    K = a.shape[-1]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for s in range(splits):  # each part from its own columns of a and rows of b, by direct indexing
        cols = np.arange(s * K // splits, (s + 1) * K // splits)
        np.testing.assert_allclose(out[s], np.matmul(a[..., cols], np.take(b, cols, axis=-2)), rtol=rtol)
    np.testing.assert_allclose(out.sum(axis=0), np.matmul(a, b), rtol=rtol, atol=1e-12)
    assert len(calls) == (1 if splits == 1 else a.shape[0])


def test_the_reference_split_product_sums_to_the_product():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 8, 5))
    out = np.full((4, 2, 3, 5), np.nan)
    split_matmul_reference(np, a, b, out)
    np.testing.assert_allclose(out.sum(axis=0), a @ b, rtol=1e-12)
    np.testing.assert_allclose(out[1], a[..., 2:4] @ b[:, 2:4], rtol=1e-12)


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "splits"),
    [
        ((5, 7), (7, 3), 1),  # not batched: the fast path is for the time loop's (D, B, H) operands
        ((1, 5, 7), (1, 6, 3), 1),  # inner sizes differ
        ((2, 5, 7), (3, 7, 3), 1),  # batch sizes differ
        ((1, 0, 7), (1, 7, 3), 1),  # empty
        ((1, 5, 0), (0, 3), 1),
        ((1, 5, 6), (6, 3), 4),  # 4 splits do not divide K = 6
        ((1, 5, 6), (6, 3), 0),
        ((1, 2**16, 2**16), (2**16, 2), 1),  # a has more elements than 32-bit strides hold
        ((1, 5, 7, 1), (7, 3), 1),
    ],
)
def test_shapes_outside_the_fast_path_fall_back(a_shape, b_shape, splits):
    assert gemm_calls(a_shape, b_shape, splits) is None


class _DeviceArray:
    """Stands in for a CuPy array: only its address matters to the packing."""

    class _Pointer:
        def __init__(self, ptr: int) -> None:
            self.ptr = ptr

    def __init__(self, ptr: int) -> None:
        self.data = self._Pointer(ptr)


def test_kernel_arguments_pack_addresses_ints_and_one_step_slot():
    import ctypes

    values, step = pack_kernel_arguments((_DeviceArray(0x1000), np.int32(7), STEP, _DeviceArray(0x2040)))
    assert [type(v) for v in values] == [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]
    assert (values[0].value, values[1].value, values[3].value) == (0x1000, 7, 0x2040)
    assert values[2] is step
    step.value = 41  # what a prepared launch does before each launch
    assert values[2].value == 41


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((np.int32(1),), ValueError),  # no STEP
        ((STEP, STEP), ValueError),
        ((STEP, 3), TypeError),  # a Python int: the kernel's width would be a guess
        ((STEP, np.int64(3)), TypeError),
    ],
)
def test_kernel_arguments_refuse_what_a_kernel_cannot_take(args, error):
    with pytest.raises(error):
        pack_kernel_arguments(args)
