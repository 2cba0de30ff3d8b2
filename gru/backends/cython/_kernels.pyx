# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled GRU recurrence: one layer, one direction, the whole time loop without the GIL.

Work split: the threads are started once per call (an OpenMP parallel
region). Small batches split the hidden units: each thread owns a contiguous
slice of them and
* reads the recurrent weights of its units from a contiguous panel of its
  own, packed once per layer (so they stay in its cache across steps when
  they fit);
* computes the input projection of its units: for every step at once (per
  gate, all T*B rows; at most 8 rows cut for the small-matrix kernel, see
  projects_unpacked, and up to 128 in float32 with W_ih's rows as BLAS's
  second operand, see project_by_rows), or, from 512 rows a thread, a block
  of the rows for every unit, one product, after which the team waits for
  all of them (see projects_row_blocks), or, where projects_per_step says
  so, step by step while the rows are in cache;
* then, per step, the product of h_{t-1} with its panel for all three gates,
  the fused gate pass, and one barrier with the others (two for reset-before,
  whose candidate needs the whole r ⊙ h_{t-1}); the part of the product over
  its own units' h is made while it waits at the barrier (see run_rows);
  with one sequence (reset-after) and a panel of 1.25-8 L1s (below 8 with
  the small-matrix kernel, whose one sequence reads W_hh's rows from 8 L1s
  on, see panel_rows), that part comes in blocks that take turns, so that
  each step starts with one still in L1, and past the L2, in
  blocks of rows kept in L2 (see kept_inputs).
Batches of 8 sequences and more per thread split the sequences instead (see
splits_by_sequence): the threads claim chunks of them as they come free and
run each chunk through every step, for every unit, with no barrier.
Products are cut so that OpenBLAS runs them on its small-matrix kernel where
that is faster (see matmul_step), deep ones in parts of their inputs (see
small_product); elsewhere the step products take the
weights as BLAS's second operand, which OpenBLAS packs faster (see matmul_w
and panel_rows). BLAS is called single-threaded from each
thread: the caller limits BLAS threads so the two never oversubscribe the
cores. The backward (backward_direction) splits the work the same way.

Sequences are processed in order of decreasing length (``order``) so that the
live ones form a prefix: finished sequences cost nothing. From h0 = 0 (and a
finite W_hh) the first step's products are zero and not made.
"""

from time import perf_counter

from cython.parallel cimport parallel
from libc.limits cimport INT_MAX
from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv

ctypedef fused floating:
    float
    double

cdef extern from "gru_math.h" nogil:
    const char* gru_gate_pass_isa(const char* built)
    enum: GRU_GATE_CLONES
    ctypedef struct gru_team_barrier:
        int arrived
    void gru_team_barrier_init(gru_team_barrier* b, int team)
    void gru_team_barrier_wait(gru_team_barrier* b, int team)
    unsigned gru_team_arrive(gru_team_barrier* b, int team)
    void gru_team_await(gru_team_barrier* b, int team, unsigned generation)
    int gru_team_claim(int* next)
    int gru_max_threads()
    int gru_num_threads()
    int gru_has_openmp()
    int gru_l1_data_bytes()
    long gru_l2_bytes()
    void gru_gates_after_f(int n, int stride, int gh_stride, const float* gx, const float* gh, const float* bias,
                           const float* b_hn, const float* h_old, float* h_new, float* out,
                           float* r_out, float* z_out, float* n_out, float* hn_out)
    void gru_gates_after_d(int n, int stride, int gh_stride, const double* gx, const double* gh, const double* bias,
                           const double* b_hn, const double* h_old, double* h_new, double* out,
                           double* r_out, double* z_out, double* n_out, double* hn_out)
    void gru_reset_before_f(int n, const float* gx, const float* gh, const float* bias, const float* h_old,
                            float* r_out, float* rh)
    void gru_reset_before_d(int n, const double* gx, const double* gh, const double* bias, const double* h_old,
                            double* r_out, double* rh)
    void gru_gates_before_f(int n, int stride, int gh_stride, const float* gx, const float* gh, const float* bias,
                            const float* b_hn, const float* h_old, float* h_new, float* out,
                            float* z_out, float* n_out)
    void gru_gates_before_d(int n, int stride, int gh_stride, const double* gx, const double* gh, const double* bias,
                            const double* b_hn, const double* h_old, double* h_new, double* out,
                            double* z_out, double* n_out)
    void gru_backward_after_f(int n, int stride, const float* dh, const float* h_prev, const float* r,
                              const float* z, const float* c, const float* hn, float* d_x, float* d_h,
                              float* d_carry)
    void gru_backward_after_d(int n, int stride, const double* dh, const double* h_prev, const double* r,
                              const double* z, const double* c, const double* hn, double* d_x, double* d_h,
                              double* d_carry)
    void gru_backward_before_f(int n, int stride, const float* dh, const float* h_prev, const float* z,
                               const float* c, float* d_x, float* d_h, float* d_carry)
    void gru_backward_before_d(int n, int stride, const double* dh, const double* h_prev, const double* z,
                               const double* c, double* d_x, double* d_h, double* d_carry)
    void gru_backward_before_reset_f(int n, const float* d_rh, const float* h_prev, const float* r,
                                     float* d_x_r, float* d_h_r, float* d_carry)
    void gru_backward_before_reset_d(int n, const double* d_rh, const double* h_prev, const double* r,
                                     double* d_x_r, double* d_h_r, double* d_carry)


# Thread ids without cython.parallel.threadid(), whose use in a parallel
# block makes Cython add per-thread bookkeeping we do not need.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static inline int gru_thread_id(void) { return omp_get_thread_num(); }
    #else
    static inline int gru_thread_id(void) { return 0; }
    #endif
    """
    int gru_thread_id() nogil
    void __builtin_prefetch(const void*) nogil


def max_threads() -> int:
    """Threads OpenMP would use now (OMP_NUM_THREADS, threadpoolctl limits)."""
    return gru_max_threads()


def has_openmp() -> bool:
    return bool(gru_has_openmp())


cdef extern from *:
    """
    #if defined(__AVX512F__)
    #define GRU_VECTOR_ISA "AVX-512"
    #elif defined(__AVX2__) && defined(__FMA__)
    #define GRU_VECTOR_ISA "AVX2+FMA"
    #elif defined(__AVX__)
    #define GRU_VECTOR_ISA "AVX"
    #elif defined(__SSE2__) || defined(_M_X64)
    #define GRU_VECTOR_ISA "SSE2"
    #elif defined(__ARM_NEON) || defined(__aarch64__)
    #define GRU_VECTOR_ISA "NEON"
    #else
    #define GRU_VECTOR_ISA "none"
    #endif
    """
    const char* GRU_VECTOR_ISA

# The names vector_isa and gate_pass_isa can give, widest first (the macro above).
VECTOR_ISAS = ("AVX-512", "AVX2+FMA", "AVX", "SSE2", "NEON", "none")


def vector_isa() -> str:
    """The widest vector instruction set this build was compiled for.

    The build targets the building machine's CPU unless GRU_NATIVE_ARCH is
    off; a portable one is compiled for the baseline (SSE2 on x86-64), so a
    benchmark quotes it beside its numbers, with gate_pass_isa.
    """
    return GRU_VECTOR_ISA.decode()


def gate_pass_isa() -> str:
    """The vector instruction set the gate pass runs on, on this CPU.

    A native build's own (vector_isa). An x86-64 build compiled without AVX2
    (a portable one, GRU_NATIVE_ARCH=OFF) by GCC 12+ on glibc has the pass in
    clones for AVX-512, AVX2+FMA and the baseline, one picked for the CPU as
    the module loads (see gru_math.h). Without clones such a build runs it on
    the baseline's vectors: on an AVX-512 CPU its float32 calls at the
    benchmark's shapes took 1-18 % longer, float64 ones up to 61 %.
    """
    return gru_gate_pass_isa(GRU_VECTOR_ISA).decode()


def has_gate_pass_clones() -> bool:
    """Whether this build's gate pass comes in clones per instruction set (see gate_pass_isa)."""
    return GRU_GATE_CLONES != 0


# Whether the products are cut for a small-matrix kernel (see matmul_step). OpenBLAS runs
# products of up to about a million multiply-adds without packing only with its SkylakeX
# kernels (AVX-512); elsewhere (its Haswell kernels on AVX2, other BLAS) every cut would be
# one more packed GEMM, so there the products are made whole. Set by backend.py.
cdef bint small_kernel = True


def use_small_kernel(bint enabled):
    """Cut the products for BLAS's small-matrix kernel (True) or make each in one call (False)."""
    global small_kernel
    small_kernel = enabled


def uses_small_kernel() -> bool:
    return small_kernel


# A step's product over a number of rows 3 more than a multiple of 4 is made over one row
# more (see product_rows). Set by tests, to compare both ways with the oracle.
cdef bint pads_rows = True


def use_row_padding(bint enabled):
    """Whether a step's product over 4k + 3 rows is made over 4k + 4 (see product_rows)."""
    global pads_rows
    pads_rows = enabled


def pads_product_rows() -> bool:
    return pads_rows


cdef enum:
    PADDED_ROW_WORK = 65536  # multiply-adds a row of a thread's step product needs before padding pays


cdef inline Py_ssize_t padding_room(Py_ssize_t room, int H, int nu, bint w_rows) noexcept nogil:
    """``room`` for product_rows where a padded row pays, else 0 (no padding).

    It pays from about 65,536 multiply-adds a row of a thread's product (H x
    3 nu): Zen 5, two threads, padded and not alternating in blocks of calls:
    (256,256,3,100) 22 % faster, (256,256,11,100) 9 %, (384,384,7,50) 7 %,
    (512,512,7,30) 19 %, (1024,1024,3|7|11,20) 17-23 %; below, (128,128,3,100)
    6 % faster but (128,128,7,100) 2 % slower, (192,192,7,100) level,
    (64,64,3|7,200) 2-3 % slower. Never for a panel of W_hh's rows, whose
    column-major product has no room for another row.
    """
    if not pads_rows or w_rows or <Py_ssize_t>H * 3 * nu < PADDED_ROW_WORK:
        return 0
    return room


cdef inline Py_ssize_t product_rows(Py_ssize_t m, Py_ssize_t room) noexcept nogil:
    """Rows to make a step's product over: ``m``, or m + 1 where m is 3 more than a multiple of 4.

    OpenBLAS's kernels take a product's rows (with W_hh^T's panel: its
    second dimension) in fours, then a pair, then one: 4k + 3 rows cost about
    as much as 4k + 8 (Zen 5, SkylakeX kernels, a step of two threads at H =
    1024: 3 rows 142 us, 4 rows 80; 7 rows 191, 8 rows 137; 11 rows 277, 12
    rows 182; at H = 512, 7 rows 40.8 us, 8 rows 27.9). The extra row is one
    the buffers have (``room``, from padding_room: the rows from the first
    that the product may read and write), a finished sequence's or the zeroed
    row past the batch; its result is never read. Each output row depends on
    its own input row alone, so the others come out as they would without it
    (bit for bit in the float32 measurements above; a kernel for another row
    count may round a float64 value differently in its last bit).
    """
    if m % 4 == 3 and m < room:
        return m + 1
    return m


def padded_product_rows(Py_ssize_t m, Py_ssize_t room, int H, int nu, bint w_rows) -> int:
    """The rows run_rows makes a step's product over, for ``m`` live rows of a thread's ``nu`` units
    (product_rows, padding_room): for tests."""
    return product_rows(m, padding_room(room, H, nu, w_rows))


# --- BLAS threads ---------------------------------------------------------------------------
# The BLAS libraries' own "set my thread count, return the old one" functions, called from here:
# a ctypes call costs microseconds, and after a large kernel has evicted its code, 5-10 of them.
ctypedef int (*blas_thread_setter)(int) noexcept nogil
cdef enum:
    MAX_BLAS_LIBRARIES = 16
cdef blas_thread_setter blas_setters[MAX_BLAS_LIBRARIES]
cdef int blas_setter_count = 0


def blas_setter_slots() -> int:
    """How many setters use_blas_thread_setters takes (the rest stay with the caller)."""
    return MAX_BLAS_LIBRARIES


def use_blas_thread_setters(addresses) -> None:
    """Take the addresses of C functions ``int set(int threads)`` that set a BLAS's thread count and return the
    one before (OpenBLAS's openblas_set_num_threads_local), for hold_blas_threads."""
    global blas_setter_count
    cdef list found = [int(address) for address in addresses]
    cdef int i
    if len(found) > MAX_BLAS_LIBRARIES or any(address == 0 for address in found):
        raise ValueError(f"addresses: expected at most {MAX_BLAS_LIBRARIES} function addresses, none 0, got {found}")
    for i in range(len(found)):
        blas_setters[i] = <blas_thread_setter><size_t>found[i]
    blas_setter_count = len(found)


def hold_blas_threads(int threads) -> tuple:
    """Set every BLAS given to use_blas_thread_setters to ``threads``; return their counts before, for
    restore_blas_threads (the caller keeps them: holds of several callers may nest)."""
    cdef int i
    cdef list saved = []
    for i in range(blas_setter_count):
        saved.append(blas_setters[i](threads))
    return tuple(saved)


def restore_blas_threads(tuple saved not None) -> None:
    """Give every BLAS back the thread count hold_blas_threads returned, in the reverse order."""
    cdef int i
    if len(saved) != blas_setter_count:
        raise ValueError(f"saved: expected {blas_setter_count} thread counts, got {len(saved)}")
    for i in reversed(range(blas_setter_count)):
        blas_setters[i](<int>saved[i])


# --- argument checks ---------------------------------------------------------------------
# The loops below index without bounds checks. Their callers (backend.py, fed by the API's
# validation) pass consistent buffers; these checks make any other caller get a ValueError
# instead of memory corruption. They cost O(B), nothing next to the recurrence.

cdef tuple _as_tuple(const Py_ssize_t* values, int n):
    return tuple([values[i] for i in range(n)])


cdef int _expect_shape(str name, const Py_ssize_t* shape, int ndim, Py_ssize_t d0, Py_ssize_t d1=0,
                       Py_ssize_t d2=0, Py_ssize_t d3=0) except -1:
    cdef Py_ssize_t want[4]
    cdef int i
    want[0], want[1], want[2], want[3] = d0, d1, d2, d3
    for i in range(ndim):
        if shape[i] != want[i]:
            raise ValueError(f"{name}: expected shape {_as_tuple(want, ndim)}, got {_as_tuple(shape, ndim)}")
    return 0


cdef int _expect_strides(str name, const Py_ssize_t* shape, const Py_ssize_t* strides, int ndim,
                         Py_ssize_t itemsize) except -1:
    """Strides in whole elements, and unit stride in the last axis (the kernels read it as a row)."""
    cdef int i
    for i in range(ndim):
        if strides[i] % itemsize != 0 or (i == ndim - 1 and shape[i] > 1 and strides[i] != itemsize):
            raise ValueError(f"{name}: expected unit stride in the last axis and whole-element strides, "
                             f"got strides {_as_tuple(strides, ndim)} for itemsize {itemsize}")
    return 0


cdef int _expect_room(str name, Py_ssize_t have, Py_ssize_t need) except -1:
    if have < need:
        raise ValueError(f"{name}: expected room for at least {need} values, got {have}")
    return 0


cdef int _check_sizes(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H) except -1:
    """Sizes the kernels hold in C ints (and pass to BLAS, whose ints are 32-bit)."""
    if I < 1 or H < 1:
        raise ValueError(f"(I, H) = {(I, H)}: expected at least one input feature and one hidden unit")
    if T > INT_MAX or B > INT_MAX or I > INT_MAX or 3 * H > INT_MAX or T * B > INT_MAX:
        raise ValueError(f"(T, B, I, H) = {(T, B, I, H)}: too large for the compiled kernel (T * B, I and 3H "
                         f"must fit a 32-bit int); use the numpy backend")
    return 0


cdef int _check_order(const long long[::1] lengths, const long long[::1] order, Py_ssize_t T,
                      Py_ssize_t B) except -1:
    """lengths non-increasing in [0, T]; order a permutation of range(B)."""
    cdef Py_ssize_t i
    cdef long long at
    cdef unsigned char* seen
    if lengths.shape[0] != B or order.shape[0] != B:
        raise ValueError(f"lengths, order: expected {B} entries each, got {lengths.shape[0]} and {order.shape[0]}")
    seen = <unsigned char*>calloc(B + 1, 1)
    if seen == NULL:
        raise MemoryError()
    try:
        for i in range(B):
            if lengths[i] < 0 or lengths[i] > T or (i > 0 and lengths[i] > lengths[i - 1]):
                raise ValueError(f"lengths: expected non-increasing values in [0, {T}], got {lengths[i]} at {i}")
            at = order[i]
            if at < 0 or at >= B or seen[at]:
                raise ValueError(f"order: expected a permutation of range({B}), got {at} at {i}")
            seen[at] = 1
    finally:
        free(seen)
    return 0


cdef inline void gates_after(int n, int stride, int gh_stride, const floating* gx, const floating* gh,
                             const floating* bias, const floating* b_hn, const floating* h_old, floating* h_new,
                             floating* out, floating* r_out, floating* z_out, floating* n_out,
                             floating* hn_out) noexcept nogil:
    if floating is float:
        gru_gates_after_f(n, stride, gh_stride, gx, gh, bias, b_hn, h_old, h_new, out, r_out, z_out, n_out, hn_out)
    else:
        gru_gates_after_d(n, stride, gh_stride, gx, gh, bias, b_hn, h_old, h_new, out, r_out, z_out, n_out, hn_out)


cdef inline void reset_before(int n, const floating* gx, const floating* gh, const floating* bias,
                              const floating* h_old, floating* r_out, floating* rh) noexcept nogil:
    if floating is float:
        gru_reset_before_f(n, gx, gh, bias, h_old, r_out, rh)
    else:
        gru_reset_before_d(n, gx, gh, bias, h_old, r_out, rh)


cdef inline void gates_before(int n, int stride, int gh_stride, const floating* gx, const floating* gh,
                              const floating* bias, const floating* b_hn, const floating* h_old, floating* h_new,
                              floating* out, floating* z_out, floating* n_out) noexcept nogil:
    if floating is float:
        gru_gates_before_f(n, stride, gh_stride, gx, gh, bias, b_hn, h_old, h_new, out, z_out, n_out)
    else:
        gru_gates_before_d(n, stride, gh_stride, gx, gh, bias, b_hn, h_old, h_new, out, z_out, n_out)


cdef inline void backward_after(int n, int stride, const floating* dh, const floating* h_prev, const floating* r,
                                const floating* z, const floating* c, const floating* hn, floating* d_x,
                                floating* d_h, floating* d_carry) noexcept nogil:
    if floating is float:
        gru_backward_after_f(n, stride, dh, h_prev, r, z, c, hn, d_x, d_h, d_carry)
    else:
        gru_backward_after_d(n, stride, dh, h_prev, r, z, c, hn, d_x, d_h, d_carry)


cdef inline void backward_before(int n, int stride, const floating* dh, const floating* h_prev, const floating* z,
                                 const floating* c, floating* d_x, floating* d_h, floating* d_carry) noexcept nogil:
    if floating is float:
        gru_backward_before_f(n, stride, dh, h_prev, z, c, d_x, d_h, d_carry)
    else:
        gru_backward_before_d(n, stride, dh, h_prev, z, c, d_x, d_h, d_carry)


cdef inline void backward_before_reset(int n, const floating* d_rh, const floating* h_prev, const floating* r,
                                       floating* d_x_r, floating* d_h_r, floating* d_carry) noexcept nogil:
    if floating is float:
        gru_backward_before_reset_f(n, d_rh, h_prev, r, d_x_r, d_h_r, d_carry)
    else:
        gru_backward_before_reset_d(n, d_rh, h_prev, r, d_x_r, d_h_r, d_carry)


cdef inline void gemm(char transa, char transb, int m, int n, int k, const floating* a, int lda,
                      const floating* b, int ldb, floating beta, floating* c, int ldc) noexcept nogil:
    """BLAS gemm (column-major, alpha 1) of the fused type: the one place that picks sgemm or dgemm."""
    cdef floating one = 1
    if floating is float:
        sgemm(&transa, &transb, &m, &n, &k, &one, <float*>a, &lda, <float*>b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &m, &n, &k, &one, <double*>a, &lda, <double*>b, &ldb, &beta, c, &ldc)


cdef inline void gemv(char trans, int m, int n, const floating* a, int lda, const floating* x, floating beta,
                      floating* y, int incy) noexcept nogil:
    """BLAS gemv (column-major, alpha 1, x contiguous) of the fused type: sgemv or dgemv."""
    cdef floating one = 1
    cdef int one_i = 1
    if floating is float:
        sgemv(&trans, &m, &n, &one, <float*>a, &lda, <float*>x, &one_i, &beta, y, &incy)
    else:
        dgemv(&trans, &m, &n, &one, <double*>a, &lda, <double*>x, &one_i, &beta, y, &incy)


cdef inline void matmul(int m, int n, int k, const floating* a, int lda, const floating* wt, int ldw,
                        floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major C[m, n] = A[m, k] @ Wt[k, n] + beta C, through column-major BLAS.

    A row-major matrix is its transpose in column-major order, so this is
    C^T = Wt^T A^T: gemm('N', 'N') with the operands swapped (gemv when m == 1).
    Weights are kept transposed (Wt = W^T) so that both operands are 'N': the
    layout OpenBLAS's small-matrix kernel serves fastest (see matmul_w for
    the packing kernels).
    """
    if m <= 0 or n <= 0:
        return
    if m == 1:
        gemv(c'N', n, k, wt, ldw, a, beta, c, 1)
    else:
        gemm(c'N', c'N', n, m, k, wt, ldw, a, lda, beta, c, ldc)


cdef inline void matmul_w(int m, int n, int k, const floating* a, int lda, const floating* w, int ldw,
                          floating beta, floating* c, int ldc) noexcept nogil:
    """Column-major C[m, n] (C[i + j ldc]) = A[m, k] @ W[n, k]^T + beta C, A and W row-major.

    gemm('T', 'N'): the weights are BLAS's second operand, which OpenBLAS
    packs much faster than its first when the batch is small (8 x 512 by
    512 x 768: 80 against 162 us on Haswell kernels, 77 against 111 on
    SkylakeX ones; 64 rows: 419 against 494 and 229 against 269), and each
    unit's weights are one contiguous row.

    One row (into a contiguous C): gemm('T', 'N') with W as the first
    operand where OpenBLAS's small-matrix kernel takes it (up to
    SMALL_TN_OUTPUTS outputs, at least SMALL_TN_INPUTS inputs), else gemv('T').
    The small kernel reads a panel just past the L2 faster than gemv (Zen 5,
    one thread, 768 x 512: 36,900 against 41,400 cycles); in the backend, both
    builds alternating call by call: two threads 6 % faster at (512,512,1,100),
    2 % at (640|768,...,1,100); one thread 6 % at (320,320,1,100), 5 % at
    (384,...), 8 % at (512,...). Past its 1,200 outputs gemv stays: cut in
    two 768-row products, 1536 x 512 from L3 gained nothing (both at the L3's
    rate).
    """
    if m <= 0 or n <= 0:
        return
    if m > 1:
        gemm(c'T', c'N', m, n, k, a, lda, w, ldw, beta, c, ldc)
    elif (ldc == 1 and small_kernel and n <= SMALL_TN_OUTPUTS and k >= SMALL_TN_INPUTS
            and <long long>n * k <= SMALL_PRODUCT):
        gemm(c'T', c'N', n, 1, k, w, ldw, a, k, beta, c, n)
    else:
        gemv(c'T', k, n, w, ldw, a, beta, c, ldc)


cdef inline void whole_product(bint w_rows, int m, int n, int k, const floating* a, int lda, const floating* w,
                               int ldw, floating beta, floating* c, int ldc) noexcept nogil:
    """matmul_w with ``w_rows`` (W's rows, column-major C), else matmul (W^T, row-major C): one BLAS call."""
    if w_rows:
        matmul_w(m, n, k, a, lda, w, ldw, beta, c, ldc)
    else:
        matmul(m, n, k, a, lda, w, ldw, beta, c, ldc)


# OpenBLAS multiplies products of up to about a million multiply-adds with
# kernels that skip its packing step; at small batch that is ~3x faster per
# step than one large call, so the per-step products are cut to that size
# (when a block of 16 units is small enough to qualify).
cdef enum:
    SMALL_PRODUCT = 1000000
    # gemm('T', 'N') takes the small kernel only for C of at most 1,200 values and
    # at least 32 inputs (SkylakeX, float and double alike: past either it packs,
    # 7x slower for one row); see matmul_w
    SMALL_TN_OUTPUTS = 1200
    SMALL_TN_INPUTS = 32
    # Batches from 32 sequences project their inputs step by step while a thread's share of
    # both weight matrices takes at most half its L2 (see projects_per_step), if they have up
    # to 256 inputs (Zen 4: 10-17 % faster for I = 64-256 at B = 32-64) or their step
    # products run (in chunks of 8 rows, see matmul_step) in blocks of 64 units on OpenBLAS's
    # small-matrix kernel. On Zen 5 (AVX-512 kernels, two threads, both builds alternating
    # call by call) the whole-sequence GEMM won below 32 sequences: 5-7 % at B = 8
    # (I = H = 128-512), 3-6 % at B = 12-24 (I = H = 256-512), level elsewhere at B = 16.
    STEP_PROJECTION_BATCH = 32
    STEP_PROJECTION_INPUTS = 256
    # Products of many rows run in chunks of 8 rows on the small kernel while the
    # weights they take are at most 2 MB (two Zen 4 cores at once, each on its own:
    # 64 x 512 by 512 x 768, a step of the forward, in 442 us against 553 as one
    # product; 64 x 1536 by 1536 x 256, one of the backward, in 470 against 581; the
    # whole-sequence projection 6,400 x 512 by 512 x 768 in 51 ms against 55). With
    # 3 MB and more of them, the projection in chunks was slower than one GEMM, but for
    # one chunk (see projects_unpacked).
    ROW_CHUNK = 8
    SMALL_KERNEL_WEIGHT_BYTES = 2 * 1024 * 1024
    # the most bytes of each row of A one small-kernel product takes (see small_product)
    SMALL_DEPTH_BYTES = 1024
    # A whole-sequence projection past SMALL_KERNEL_WEIGHT_BYTES of at most this many rows (and,
    # with the small kernel, more than ROW_CHUNK) takes W_ih's rows as BLAS's second operand (see
    # project_by_rows)
    ROWS_PROJECTION_ROWS = 128
    # a whole-sequence projection split by unit gives each thread a block of rows from this many
    # rows a thread (see projects_row_blocks)
    ROW_BLOCK_ROWS = 512
    # see team_for
    UNIT_SPLIT_WORK = 8192
    # see weights_in_loop
    WEIGHTS_IN_LOOP_BATCH = 16
    WEIGHT_ROWS_IN_LOOP_BYTES = 1024 * 1024
    # The backward's weight-gradient GEMMs split the T*B rows they sum over between
    # threads while the partial sums of the parts past the first take at most this
    # many values (16 MB in float32); see weight_parts.
    PARTIAL_SUM_VALUES = 4 * 1024 * 1024


# One sequence's panels between KEPT_MIN_L1S and KEPT_MAX_L1S times the L1 keep a block of
# at most KEPT_L1_PART of it in L1 from step to step; panels of rows past the L2, rows of at
# most KEPT_L2_PART of it in L2 (see kept_inputs).
cdef int l1_bytes = gru_l1_data_bytes()
cdef Py_ssize_t l2_bytes = gru_l2_bytes()  # the L2 the panels plan for (see panel_rows, use_l2_bytes)
cdef double KEPT_L1_PART = 0.75
cdef double KEPT_MIN_L1S = 1.25
cdef double KEPT_MAX_L1S = 8
cdef double KEPT_L2_PART = 0.75
# with the small kernel, one sequence's panels from this many L1s on read rows (see panel_rows)
cdef int ROWS_FROM_L1S = 8


cdef inline int small_block(int m, int n, int k) noexcept nogil:
    """Width of the column blocks that keep an m x k by k x n product on the small kernel (n: no cut).

    As many blocks as that takes, of even width: a narrow last block runs
    slowly (Zen 4, 8 x 512 by 512 x 768: 55 us as 4 x 192 against 60 as
    3 x 240 + 48). Blocks narrower than 16 are not worth it: then no cut.
    """
    cdef long long per_unit = <long long>m * k
    cdef int block, count
    if per_unit * n <= SMALL_PRODUCT or per_unit * 16 > SMALL_PRODUCT:
        return n
    block = <int>(SMALL_PRODUCT // per_unit) // 16 * 16
    count = (n + block - 1) // block
    return ((n + count - 1) // count + 15) // 16 * 16


cdef inline void small_product(bint w_rows, int m, int n, int k, const floating* a, int lda, const floating* w,
                               int ldw, floating beta, floating* c, int ldc) noexcept nogil:
    """whole_product for the small-matrix kernel: deep products in parts of their inputs, added up.

    The kernel keeps A's rows in L1 while it streams W's columns past them;
    rows of more than SMALL_DEPTH_BYTES crowd them out. So a product of
    several rows that the kernel takes (at most SMALL_PRODUCT multiply-adds)
    goes in parts of at most that many bytes of a row: equal widths rounded
    up to 16 values, the last shorter. The carry product's 8 x 1536 by
    1536 x 64 in a loop, alone, in float32: 111-129 GFLOP/s, against 196-198
    for the same over 768 or 512 inputs. In the backend (Xeon, 48 KB of L1,
    two threads, both ways taking turns call by call) with parts of 256
    floats: training steps of (1024,1024,16,20) 28 % faster, (512,512,64,50)
    12 %, (512,512,8,50) 8 %; of 128 doubles: 23 % and 7 %, forward
    (1024,1024,8,50) 13 %. Float32 forward: level on the default shapes,
    5 % faster at (1024,1024,8,50) and (1024,1024,32,20) with parts of 384.
    Parts of 512 or 192 floats were as fast at (512,512,64,50), 192 2 %
    faster at (1024,1024,16,20). W's rows (``w_rows``) reach here with one
    row only (see panel_rows): never split.
    """
    cdef int depth = SMALL_DEPTH_BYTES // sizeof(floating)
    cdef int parts, width, k0
    if w_rows or m <= 1 or k <= depth or <long long>m * n * k > SMALL_PRODUCT:
        whole_product(w_rows, m, n, k, a, lda, w, ldw, beta, c, ldc)
        return
    parts = (k + depth - 1) // depth
    width = ((k + parts - 1) // parts + 15) // 16 * 16
    k0 = 0
    while k0 < k:
        matmul(m, n, min(width, k - k0), a + k0, lda, w + <Py_ssize_t>k0 * ldw, ldw, beta if k0 == 0 else 1, c, ldc)
        k0 += width


cdef inline void matmul_blocks(bint w_rows, int m, int n, int k, const floating* a, int lda, const floating* w,
                               int ldw, floating beta, floating* c, int ldc) noexcept nogil:
    """matmul (or, w_rows, matmul_w) as column blocks that each stay a small product."""
    cdef int block = small_block(m, n, k) if m > 1 else n
    cdef int start = 0
    cdef Py_ssize_t w_at, c_at  # where the block's first column starts in w and in c
    while start < n:
        w_at = <Py_ssize_t>start * ldw if w_rows else start
        c_at = <Py_ssize_t>start * ldc if w_rows else start
        small_product(w_rows, m, min(block, n - start), k, a, lda, w + w_at, ldw, beta, c + c_at, ldc)
        start += block


cdef inline void cut_product(bint w_rows, Py_ssize_t m, int n, int k, const floating* a, int lda, const floating* w,
                             int ldw, floating beta, floating* c, int ldc) noexcept nogil:
    """matmul (or, w_rows, matmul_w), cut into products OpenBLAS runs on its small-matrix kernel.

    A product past the small kernel's size goes in chunks of ROW_CHUNK rows
    while the weights take at most SMALL_KERNEL_WEIGHT_BYTES (and a chunk's
    column blocks of 64 still qualify): column block by column block (as
    matmul_blocks cuts a chunk), every chunk of rows through each, so a
    block's weights are read from memory once, not once per chunk, where all
    of them do not fit the L2.
    """
    cdef Py_ssize_t r0
    cdef int block, start, width
    if not small_kernel:
        whole_product(w_rows, <int>m, n, k, a, lda, w, ldw, beta, c, ldc)
        return
    if (m <= ROW_CHUNK or m * k * n <= SMALL_PRODUCT or <Py_ssize_t>k * n * sizeof(floating) > SMALL_KERNEL_WEIGHT_BYTES
            or ROW_CHUNK * k * 64 > SMALL_PRODUCT):
        matmul_blocks(w_rows, <int>m, n, k, a, lda, w, ldw, beta, c, ldc)
        return
    block = small_block(ROW_CHUNK, n, k)
    start = 0
    while start < n:
        width = min(block, n - start)
        r0 = 0
        while r0 < m:
            small_product(w_rows, <int>min(<Py_ssize_t>ROW_CHUNK, m - r0), width, k, a + r0 * lda, lda,
                          w + (<Py_ssize_t>start * ldw if w_rows else start), ldw, beta,
                          c + (<Py_ssize_t>start * ldc + r0 if w_rows else r0 * ldc + start), ldc)
            r0 += ROW_CHUNK
        start += block


cdef inline void matmul_step(Py_ssize_t m, int n, int k, const floating* a, int lda, const floating* wt, int ldw,
                             floating beta, floating* c, int ldc) noexcept nogil:
    """C = A Wt + beta C like matmul, cut for the small-matrix kernel (cut_product)."""
    cut_product(False, m, n, k, a, lda, wt, ldw, beta, c, ldc)


cdef inline void panel_product(Py_ssize_t m, int n, int k, const floating* a, int lda, const floating* w, int ldw,
                               floating beta, floating* c, int ldc) noexcept nogil:
    """Column-major C = A W^T + beta C like matmul_w, cut for the small-matrix kernel (cut_product)."""
    cut_product(True, m, n, k, a, lda, w, ldw, beta, c, ldc)


cdef inline int widest_slice(int H, int team) noexcept nogil:
    """The most hidden units a thread of a team of ``team`` gets (the first thread's): whole cache lines of 16."""
    return min(((H + team - 1) // team + 15) // 16 * 16, H)


cdef inline int unit_slice(int H, int team, int tid, int* u0) noexcept nogil:
    """Thread ``tid``'s hidden units in a team of ``team``: [u0, u0 + count)."""
    cdef int unit_chunk = widest_slice(H, team)
    u0[0] = min(tid * unit_chunk, H)
    return min(u0[0] + unit_chunk, H) - u0[0]


cdef void pack_panel(int H, int u0, int nu, const floating* w_hh, floating* panel, bint w_rows) noexcept nogil:
    """One thread's recurrent weights: the rows of W_hh of its units' r, z and n (3 nu of them), in three blocks.

    The blocks hold the columns [0, u0), [u0, u0 + nu) and [u0 + nu, H) of
    those rows, the one of columns [k0, k1) at panel + 3 nu k0, so that each
    part of a step's product (see panel_part) reads one contiguous block and
    one product covers all three gates. Each block is (3 nu, width) with
    ``w_rows`` (see matmul_w), else transposed, (width, 3 nu) (see matmul):
    panel_rows says which.
    """
    cdef int c, b, k
    cdef int k0[3]
    cdef int width[3]
    cdef floating* block
    cdef const floating* row
    k0[0], k0[1], k0[2] = 0, u0, u0 + nu
    width[0], width[1], width[2] = u0, nu, H - u0 - nu
    for c in range(3 * nu):  # row c: gate c // nu, unit u0 + c % nu
        row = w_hh + (<Py_ssize_t>(c // nu) * H + u0 + c % nu) * H
        for b in range(3):
            block = panel + <Py_ssize_t>3 * nu * k0[b]
            if w_rows:
                memcpy(block + <Py_ssize_t>c * width[b], row + k0[b], width[b] * sizeof(floating))
            else:
                for k in range(width[b]):
                    block[<Py_ssize_t>k * 3 * nu + c] = row[k0[b] + k]


cdef inline bint splits_by_sequence(Py_ssize_t B, Py_ssize_t H, Py_ssize_t itemsize, int team) noexcept nogil:
    """Whether a team splits the batch's sequences between its threads rather than the hidden units.

    Split by sequence, each thread runs chunks of sequences through every step
    on its own, with all the weights: no barrier per step and no state passed
    between cores. Split by unit, every step waits for the slowest thread: on a
    shared 2-core VM, in the phases when its cores pass data slowly, a
    (128,128,64,200) training step went from 51 to 82 ms (one thread's time)
    while split by sequence it stayed at 51; outside them the two were equal.
    Needs a chunk of ROW_CHUNK sequences for every thread, and all of W_hh
    small enough for the row chunks of matmul_step: each thread reads all of
    it, not its units' share (at H = 512, 3 MB, (512,512,64,100) ran 5-15 %
    slower split by sequence).
    """
    return team > 1 and B >= <Py_ssize_t>ROW_CHUNK * team and 3 * H * H * itemsize <= SMALL_KERNEL_WEIGHT_BYTES


cdef inline int sequence_chunk(Py_ssize_t B, int team) noexcept nogil:
    """Sequences per chunk when split by sequence: about two chunks per thread, in whole ROW_CHUNKs.

    Chunks are claimed as threads come free, so a thread slowed by a
    neighbour takes fewer of them.
    """
    cdef Py_ssize_t per_chunk = (B + 2 * team - 1) // (2 * team)
    return <int>((per_chunk + ROW_CHUNK - 1) // ROW_CHUNK * ROW_CHUNK)


cdef inline Py_ssize_t claim_chunk(int* next_chunk, int chunk) noexcept nogil:
    """The first sequence of the next unclaimed chunk (B or more when none is left).

    In Py_ssize_t: a claim past the last chunk times the chunk size can pass INT_MAX.
    """
    return <Py_ssize_t>gru_team_claim(next_chunk) * chunk


cdef inline bint projects_per_step(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize,
                                   bint reverse, long long shortest, bint by_sequence, int team) noexcept nogil:
    """Whether a batch projects its inputs step by step, one small product each, while the rows are in cache.

    Projecting the whole sequence first writes T*B*3H values to memory and
    reads them back. Not when sequences of different lengths run in reverse
    (their rows of one step belong to different times) or split by sequence
    (a chunk's rows of x are then not consecutive).

    Step by step, every step reads the thread's share of both W_ih and W_hh
    (all of both, split by sequence); the whole sequence's GEMM leaves the
    steps W_hh's share alone. So only while both shares together take at most
    half the core's L2 (l2_bytes): past it, every step streams weights from
    L3, and a mesh L3 gives a core far less than its small-kernel products
    take. Xeon with 2 MB of L2 (two threads, both ways taking turns call by
    call in one process): the whole sequence's GEMM won at (512,512,32,50)
    by 15 %, (384,384,64,100) 16 %, (512,512,64,100) 7 %, (256,256,64,100)
    7 %, (256,512,64,100) 2 %, (512,512,128,50) 2 %; within half the L2,
    within 3.4 % either way ((64,128,64,200), (32,256,64,100),
    (64,256,32,100), (128,128,32,200)). Zen 4 and 5, whose L3 is near, had
    found the steps 1.5-6 % faster from 32 sequences up to 8 MB of weights,
    and 10-17 % for I = 64-256 (Zen 4); on their 1 MB L2 this rule keeps
    (128,128,32,200), Zen 5's 6 %, and gives up its 1.5-2 % at
    (512,512,64,100) and (256,256,64,100), and, not measured there again,
    part of Zen 4's gain at I = 64-256 where the weights pass 512 KB a thread.
    """
    cdef Py_ssize_t units = H if by_sequence else widest_slice(<int>H, max(team, 1))
    if (shortest != T and (reverse or by_sequence)) or not small_kernel:  # both regimes were measured with it
        return False
    if B < STEP_PROJECTION_BATCH or 2 * (I + H) * 3 * units * itemsize > l2_bytes:
        return False
    return I <= STEP_PROJECTION_INPUTS or min(B, <Py_ssize_t>ROW_CHUNK) * I * 64 <= SMALL_PRODUCT


def workspace_rows(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize, bint reverse,
                   long long shortest, int team) -> int:
    """Rows of 3H values run_direction's ``workspace`` needs; ``shortest`` is the least of the lengths."""
    cdef bint by_sequence = splits_by_sequence(B, H, itemsize, team)
    cdef bint per_step = projects_per_step(T, B, I, H, itemsize, reverse, shortest, by_sequence, team)
    cdef Py_ssize_t projected = projection_room(T * B, I, H, itemsize, per_step, by_sequence)
    # gh and the three rows of H (r * h and two states) have a row past the batch (see product_rows)
    return (B if per_step else T * B) + 3 * B + 2 + 2 * max(team, 1) + (projected + 3 * H - 1) // (3 * H)


def projects_with_w_ih_rows(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize,
                            int team) -> bool:
    """Whether the first thread of a forward call of T steps of B full-length sequences projects its inputs
    with W_ih's rows as BLAS's second operand (project_by_rows)."""
    if splits_by_sequence(B, H, itemsize, team) or projects_step_by_step(T, B, I, H, itemsize, team):
        return False
    return projects_by_rows(T * B, I, widest_slice(<int>H, team), itemsize)


def projects_step_by_step(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize,
                          int team) -> bool:
    """Whether a forward call of T steps of B full-length sequences projects its inputs step by step."""
    return projects_per_step(T, B, I, H, itemsize, False, T, splits_by_sequence(B, H, itemsize, team), team)


def projects_in_row_blocks(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize,
                           int team) -> bool:
    """Whether a forward call of T steps of B full-length sequences projects the whole sequence first, each
    thread a block of its rows for every unit (projects_row_blocks)."""
    if projects_step_by_step(T, B, I, H, itemsize, team):
        return False
    return projects_row_blocks(T * B, splits_by_sequence(B, H, itemsize, team), team)


# the least share of a team split by unit (see team_for); 0: every team a caller asks for
cdef Py_ssize_t unit_split_work = UNIT_SPLIT_WORK


def use_unit_split_work(Py_ssize_t work):
    """Set the least share of a step's product, in multiply-adds, a thread of a team split by unit takes.

    0 gives every call the team it asks for (16 units a thread at least): the
    test suite runs the teams' code at its small sizes that way.
    """
    global unit_split_work
    unit_split_work = work


def unit_split_minimum() -> int:
    return unit_split_work


def team_size(int threads, Py_ssize_t H, Py_ssize_t B, Py_ssize_t itemsize) -> int:
    """Threads a call of the kernels uses when asked for ``threads`` (see team_for)."""
    return team_for(threads, H, B, itemsize)


cdef inline int team_for(int threads, Py_ssize_t H, Py_ssize_t B, Py_ssize_t itemsize) noexcept nogil:
    """Threads a call uses when asked for ``threads``: at least 16 hidden units each, and, split by unit,
    at least UNIT_SPLIT_WORK multiply-adds of each step's product each (use_unit_split_work changes it).

    Split by unit, a team meets at a barrier every step and passes h between
    cores; below that share the barrier costs more than the second thread
    saves. Measured on the 2-core Zen 4 VM, T = 200, I = H, one thread against
    two in one process, alternating: at H = 32 with one sequence (1,536
    multiply-adds a thread) 0.074 / 0.105 ms forward, 0.206 / 0.272 training;
    with 4 (6,144) 0.175 / 0.225 forward; at H = 64 with one (6,144) 0.200 /
    0.207 and 0.595 / 0.613. From about 12,000 a thread two were as fast or
    faster: H = 32 with 8 sequences 0.335 / 0.294 forward, H = 48 with 4
    1.131 / 1.034 training, H = 96 with one 0.332 / 0.356.
    """
    cdef int team = max(1, min(threads, <int>((H + 15) // 16)))
    while team > 1 and not splits_by_sequence(B, H, itemsize, team) and (H // team) * 3 * H * B < unit_split_work:
        team -= 1
    return team


def splits_sequences(Py_ssize_t B, Py_ssize_t H, Py_ssize_t itemsize, int threads) -> bool:
    """Whether a call asking for ``threads`` splits its sequences between them, not its units (splits_by_sequence)."""
    return splits_by_sequence(B, H, itemsize, team_for(threads, H, B, itemsize))


def panel_rows(Py_ssize_t B, Py_ssize_t H, Py_ssize_t itemsize, int team) -> bool:
    """The layout of the panels a call of B sequences reads, with a team of ``team`` (see pack_panel).

    Several sequences: W_hh's rows (products by gemm('T', 'N'), see matmul_w)
    unless BLAS has the small-matrix kernel, which runs gemm('N', 'N') on the
    transposed blocks far faster (SkylakeX kernels, 8 x 512 by 512 x 192: 7
    against 18 us). One sequence: the transposed blocks (gemv 'N') while a
    thread's panel fits its core's L2 (l2_cache_bytes: sysconf's, 1 MB on the
    machines below), rows (gemv 'T', or with the small kernel gemm('T', 'N')
    where it takes them, see matmul_w) past it, with either
    kernel family. On Haswell kernels the transposed blocks took 0.270 against
    0.305 ms at (64,128,1,200), 2.84 against 3.04 at (256,256,1,500); rows took
    1.01-1.06x less time at (1024,1024,1,100) and 1.03-1.12x at (512,512,1,100),
    every buffer on a cache line. On SkylakeX kernels (Zen 5, two threads, both
    layouts alternating call by call): rows 1.05-1.09x faster at
    (512,512,1,100), (768,768,1,100) and (1024,1024,1,100); the transposed
    blocks 1.05-1.31x faster at (384,384,1,100) (a 884 KB panel),
    (256,256,1,500) and (64,128,1,200), against gemv('T') on rows. Since one
    row from rows runs on the small kernel (gemm('T', 'N'), see matmul_w),
    a panel of at least ROWS_FROM_L1S L1s reads rows with it there too (Zen
    5, both layouts taking turns in blocks of calls, medians): two threads
    3 % faster at (256,256,1,500) (8 L1s), 8 % at (320,320,1,200), 2.5 % at
    (384,384,1,100), 2-3 % for reset-before at H = 320-384, 7 % at
    (128,192,1,200) in float64, level on one thread (H = 192-256); below, the
    kept blocks in L1 (see kept_inputs) win: level at 7 L1s (H = 240), 2 %
    slower at 6 (H = 224), 5 % at 3 (H = 160).
    """
    cdef int nu
    cdef Py_ssize_t panel
    if B == 1:
        nu = widest_slice(<int>H, team)
        panel = <Py_ssize_t>3 * nu * H * itemsize
        # within the L2 only where a part's rows fit the small kernel (else gemv('T'), slower there)
        return panel > l2_bytes or (small_kernel and panel >= ROWS_FROM_L1S * l1_bytes and 3 * nu <= SMALL_TN_OUTPUTS)
    return not small_kernel


def kept_block_inputs(Py_ssize_t B, Py_ssize_t H, Py_ssize_t itemsize, int team, bint reset_after=True) -> int:
    """How many inputs (rows, for a panel of rows) each kept block of the first thread spans in a call split by
    unit (see kept_inputs)."""
    return kept_inputs(B, <int>H, widest_slice(<int>H, team), itemsize, panel_rows(B, H, itemsize, team),
                       reset_after)


def l2_cache_bytes() -> int:
    """The L2 size the panels plan for (see panel_rows): the core's, from sysconf (1 MB when it does not say)."""
    return l2_bytes


def use_l2_bytes(Py_ssize_t size) -> None:
    """Plan the panels for an L2 of ``size`` bytes (tests: small layers then read rows and keep rows; 0: the
    machine's)."""
    global l2_bytes
    l2_bytes = size if size > 0 else gru_l2_bytes()


def l1_data_bytes() -> int:
    """The L1 data cache size the kernels plan for (see kept_inputs)."""
    return l1_bytes


def use_l1_bytes(int size) -> None:
    """Plan for an L1 of ``size`` bytes (tests: small layers then take the kept-block path; 0: the machine's)."""
    global l1_bytes
    l1_bytes = size if size > 0 else gru_l1_data_bytes()


cdef void pack_team_panels(int H, int team, const floating* w_hh, floating* panels, bint w_rows) noexcept nogil:
    """Every thread's panel (pack_panel) for a team of ``team``, thread j's at panels + 3 H u0_j."""
    cdef int tid, u0, nu
    for tid in range(team):
        nu = unit_slice(H, team, tid, &u0)
        if nu > 0:
            pack_panel(H, u0, nu, w_hh, panels + <Py_ssize_t>3 * H * u0, w_rows)


def pack_panels(const floating[:, ::1] w_hh not None, int team, floating[:, ::1] panels not None, bint w_rows):
    """Every thread's packed recurrent weights for a team of ``team``, side by side, in the layout ``w_rows``.

    ``w_hh`` is W_hh (3H, H); ``panels`` (3H, H) receives thread j's block
    at offset 3 H u0_j. run_direction takes the result, so a layer's weights
    are packed once, not on every call.
    """
    cdef int H = w_hh.shape[1]
    _expect_shape("w_hh", w_hh.shape, 2, 3 * H, H)
    _expect_shape("panels", panels.shape, 2, 3 * H, H)
    if team < 1:
        raise ValueError(f"team: expected at least 1 thread, got {team}")
    with nogil:
        pack_team_panels(H, team, &w_hh[0, 0], &panels[0, 0], w_rows)


cdef inline void project_step(Py_ssize_t rows, int I, int H, int u0, int nu, const floating* x,
                              const floating* w_ih_t, floating* gx) noexcept nogil:
    """gx = x W_ih^T for ``rows`` rows, the units [u0, u0 + nu) of each gate, cut for the small kernel.

    The biases come in the gate pass. As it is for the rows of one step
    (projects_per_step); project_inputs for any number of them.
    """
    cdef int g
    cdef int G = 3 * H
    for g in range(3):
        matmul_step(rows, nu, I, x, I, w_ih_t + g * H + u0, G, 0, gx + g * H + u0, G)


cdef inline bint projects_unpacked(Py_ssize_t rows, Py_ssize_t I, int nu, Py_ssize_t itemsize) noexcept nogil:
    """Whether project_inputs cuts a projection of ``rows`` rows for ``nu`` units for the small kernel.

    While the units' input weights are small (in chunks of rows, see
    cut_product), and at any size for at most ROW_CHUNK rows: one chunk
    reads the weights once, where one GEMM packs all of them first (Zen 5,
    two threads at once, each 3 x 512 units: 2 rows of 1024 inputs 0.096
    against 0.265 ms in float32, 0.37 against 0.67 in float64; 8 rows 0.25
    against 0.34 and 0.71 against 0.83; 3 x 384 units of 768 inputs, 4-8
    rows: 0.06 against 0.15-0.23 ms).
    """
    return (I * 3 * nu * itemsize <= SMALL_KERNEL_WEIGHT_BYTES
            or (small_kernel and rows <= ROW_CHUNK))


cdef void project_inputs(Py_ssize_t rows, int I, int H, int u0, int nu, const floating* x, const floating* w_ih_t,
                         floating* gx) noexcept nogil:
    """project_step for any number of rows where projects_unpacked says so, else one GEMM per gate."""
    cdef int g
    cdef int G = 3 * H
    if projects_unpacked(rows, I, nu, sizeof(floating)):
        project_step(rows, I, H, u0, nu, x, w_ih_t, gx)
        return
    for g in range(3):
        matmul(<int>rows, nu, I, x, I, w_ih_t + g * H + u0, G, 0, gx + g * H + u0, G)


cdef inline bint projects_row_blocks(Py_ssize_t rows, bint by_sequence, int team) noexcept nogil:
    """Whether a whole-sequence projection of ``rows`` rows gives each thread a block of rows for every unit
    (project_row_block; the team waits for all of them), not its own units for every row (project_sequence).

    Split by sequence always: each thread runs every unit. Split by unit from
    ROW_BLOCK_ROWS rows a thread: every unit is one product of 3H columns,
    which BLAS runs faster than a thread's units, three products of ``nu``
    columns (or their small-kernel cuts). Xeon with 2 MB of L2, two threads,
    both ways taking turns call by call: (512,512,64,100) 10 % faster,
    (512,512,32,50) 9 %, (512,512,16,100) 5 %, (512,512,4,400) 5 %,
    (128,128,4,1000) 4 %, (512,512,2,1000) 3 %, (768,768,16,100) 2 %,
    (1024,1024,64,50) 1 %, level at (1024,1024,32,50), (256,256,8,500) and
    (256,512,16,100). Below it each thread reads all of W_ih for few rows:
    (1024,1024,8,100) 2 % slower, (1024,1024,4,100) 6 %, (1024,1024,1,100)
    18 %; (512,512,8,100) 3.5 % faster, (512,512,8,50) level.
    """
    return by_sequence or rows >= <Py_ssize_t>ROW_BLOCK_ROWS * team


cdef void project_row_block(Py_ssize_t rows, int I, int H, int team, int tid, const floating* x,
                            const floating* w_ih_t, floating* gx) noexcept nogil:
    """Thread ``tid``'s block of the ``rows`` rows of a whole-sequence projection, every unit in one product
    (cut for the small kernel where projects_unpacked says so; see projects_row_blocks)."""
    cdef int G = 3 * H
    cdef Py_ssize_t per_thread = (rows + team - 1) // team
    cdef Py_ssize_t r0 = min(tid * per_thread, rows)
    cdef Py_ssize_t count = min(r0 + per_thread, rows) - r0
    if count <= 0:
        return
    if projects_unpacked(count, I, H, sizeof(floating)):
        matmul_step(count, G, I, x + r0 * I, I, w_ih_t, G, 0, gx + r0 * G, G)
    else:
        matmul(<int>count, G, I, x + r0 * I, I, w_ih_t, G, 0, gx + r0 * G, G)


cdef inline bint projects_by_rows(Py_ssize_t rows, Py_ssize_t I, int nu, Py_ssize_t itemsize) noexcept nogil:
    """Whether a whole-sequence projection of ``rows`` rows for ``nu`` units goes by project_by_rows.

    In float32 only: in float64 it ran slower (two threads, (1024,1024,1,2)
    30 %, (1024,1024,1,16) 7 %, (1024,1024,1,100) 4 %).
    """
    return (itemsize == sizeof(float) and 2 <= rows <= ROWS_PROJECTION_ROWS
            and not projects_unpacked(rows, I, nu, itemsize))


cdef void project_by_rows(Py_ssize_t rows, Py_ssize_t padded, int I, int H, int u0, int nu, const floating* x,
                          const floating* w_ih, floating* t, floating* gx) noexcept nogil:
    """project_inputs with W_ih's rows (``w_ih``, (3H, I)) as BLAS's second operand: gemm('T', 'N') into ``t``
    (``padded`` x ``nu``, column-major), then its first ``rows`` rows unpacked into gx, gate by gate.

    ``padded`` (see projection_rows) rows of ``x`` are multiplied: past ``rows``, zeros.

    OpenBLAS packs its second operand far faster than its first, and each call
    packs a thread's 3 nu x I input weights again. For few rows that packing is
    most of the product (sgemm, one thread, 2 x 1024 by 1024 x 1536: 0.25
    against 0.39 ms; 100 rows: 1.43 against 1.58). In the backend (Zen 5, two
    threads, both ways taking turns in blocks of calls, medians): (1024,1024,1,T)
    23 % faster at T = 2, 7 % at T = 4 and 16, 1.4 % at 100, 0.5 % at 128, but
    1.3 % slower at 200 (and (1024,1024,2,100) 1.5 %): from a few hundred
    rows the first operand's rate wins back more than packing and unpacking
    cost. (768,768,1,100) 1.4 % faster, (1024,512,1,100) 2.4 %; on Haswell
    kernels (1024,1024,1,16) 9 %, (1024,1024,1,100) 1.7 %; one thread 7 % at
    (1024,1024,1,16), level at 100.
    """
    cdef int g
    for g in range(3):
        matmul_w(<int>padded, nu, I, x, I, w_ih + <Py_ssize_t>(g * H + u0) * I, I, 0, t, <int>padded)
        unpack_rows(0, <int>rows, nu, t, <int>padded, gx + g * H + u0, 3 * H)


cdef inline Py_ssize_t projection_rows(Py_ssize_t rows) noexcept nogil:
    """Rows project_by_rows multiplies for ``rows``: rows, or the next multiple of OpenBLAS's row block.

    OpenBLAS's sgemm takes the first operand's rows in blocks of 16 with its
    SkylakeX kernels (8 with its Haswell ones), then a block of 8, 4, 2 and 1
    for the rest: a rest that needs two or more of those costs more than a
    whole block (one thread, 3 x 512 units of 1024 inputs, SkylakeX kernels:
    10 rows 0.46 ms, 15 rows 0.71, 16 rows 0.33; 99 rows 1.69, 112 rows 1.62;
    Haswell kernels: 7 rows 0.57 against 0.32 for 8). Such a count is
    rounded up to the block, the extra rows zeros.
    """
    cdef Py_ssize_t block = 16 if small_kernel else 8
    cdef Py_ssize_t rest = rows % block
    if not pads_rows or (rest & (rest - 1)) == 0:  # none, or one block of 8, 4, 2 or 1
        return rows
    return rows - rest + block


def padded_projection_rows(Py_ssize_t rows) -> int:
    """projection_rows(rows): for tests."""
    return projection_rows(rows)


cdef inline floating* padded_inputs(floating* t, Py_ssize_t padded, Py_ssize_t H) noexcept nogil:
    """Where project_by_rows's zero-padded copy of x starts: after its ``padded`` x H product, on a cache line."""
    return <floating*>((<uintptr_t>(t + padded * H) + 63) & ~(<uintptr_t>63))


cdef inline Py_ssize_t projection_room(Py_ssize_t rows, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize,
                                       bint per_step, bint by_sequence) noexcept nogil:
    """Values of workspace a whole-sequence projection of ``rows`` rows needs for project_by_rows (0: none).

    Any thread of a call split by unit may take that path (it decides by its
    own units, at most H), so the room is for every unit, and a cache line to
    start on; then, for a padded projection (projection_rows), the copy of x
    with its rows of zeros, on a cache line too. Calls split by sequence, or
    projecting step by step, never do.
    """
    cdef Py_ssize_t padded = projection_rows(rows)
    if per_step or by_sequence or not projects_by_rows(rows, I, <int>H, itemsize):
        return 0
    return padded * H + 16 + (padded * I + 16 if padded > rows else 0)


cdef void fill_padded_inputs(Py_ssize_t rows, int I, int H, const floating* x, floating* t) noexcept nogil:
    """Copy x's ``rows`` rows, and rows of zeros up to projection_rows(rows), where project_sequence reads them."""
    cdef Py_ssize_t padded = projection_rows(rows)
    cdef floating* copy
    if padded == rows:
        return
    copy = padded_inputs(t, padded, H)
    memcpy(copy, x, <size_t>(rows * I) * sizeof(floating))
    memset(copy + rows * I, 0, <size_t>((padded - rows) * I) * sizeof(floating))


cdef void project_sequence(Py_ssize_t rows, int I, int H, int u0, int nu, const floating* x, const floating* w_ih_t,
                           const floating* w_ih, floating* t, floating* gx) noexcept nogil:
    """A thread's whole-sequence projection of its units: project_by_rows when it applies, else project_inputs.

    ``t`` is room for ``padded`` x H values shared by the team (padded =
    projection_rows(rows)): the thread's part starts at ``t + padded * u0`` (on
    a cache line where t is: u0 is a multiple of 16); where padded > rows, the
    rows of x and padded - rows rows of zeros follow (padded_inputs), written
    before the team starts (fill_padded_inputs).
    """
    cdef Py_ssize_t padded
    if projects_by_rows(rows, I, nu, sizeof(floating)):
        padded = projection_rows(rows)
        project_by_rows(rows, padded, I, H, u0, nu, padded_inputs(t, padded, H) if padded > rows else x, w_ih,
                        t + padded * u0, gx)
    else:
        project_inputs(rows, I, H, u0, nu, x, w_ih_t, gx)


cdef inline void panel_part(Py_ssize_t m, int n, int row0, int k0, int k1, int H, int nu, const floating* a,
                            const floating* panel, bint w_rows, floating beta, floating* c, int ldc) noexcept nogil:
    """C = A[:, k0:k1] W[row0:row0 + n, k0:k1]^T + beta C: one part of a step's product.

    ``a`` holds rows of H values; ``panel`` is a thread's, laid out by
    pack_panel, whose block of columns [k0, k1) is one contiguous matrix.
    C is column-major with ``w_rows`` (see matmul_w), else row-major (rows
    ldc apart). An empty part with beta 1 leaves C as it is.
    """
    cdef int width = k1 - k0
    cdef const floating* block = panel + <Py_ssize_t>3 * nu * k0
    if width <= 0:
        return
    if w_rows:
        panel_product(m, n, width, a + k0, H, block + <Py_ssize_t>row0 * width, width, beta, c, ldc)
    else:
        matmul_step(m, n, width, a + k0, H, block + row0, 3 * nu, beta, c, ldc)


cdef inline void product_rest(Py_ssize_t m, int n, int row0, int H, int u0, int nu, const floating* a,
                              const floating* panel, bint w_rows, floating* c, int ldc) noexcept nogil:
    """C += the product over the inputs of the units other than [u0, u0 + nu): those other threads write.

    The part over the thread's own units' inputs comes first, before waiting
    for the others' (see run_rows).
    """
    panel_part(m, n, row0, 0, u0, H, nu, a, panel, w_rows, 1, c, ldc)
    panel_part(m, n, row0, u0 + nu, H, H, nu, a, panel, w_rows, 1, c, ldc)


cdef inline int kept_inputs(Py_ssize_t rows, int H, int nu, Py_ssize_t itemsize, bint w_rows,
                            bint reset_after) noexcept nogil:
    """How many of a thread's own inputs (rows, for a panel of rows) each of its two kept blocks spans (0: none).

    One sequence's panel of 1.25-8 times the core's L1 is read from L2 at
    every step, none of it still in L1 from the step before. Its own inputs'
    columns then come in three blocks: K1, the middle and K2, each K at most
    KEPT_L1_PART of the L1 and half the own inputs (then the middle is empty,
    or one input when their number is odd). At even steps K1 and the middle
    come before the barrier and K2 last, after the others' inputs; at odd
    steps K2 (still in L1) and the middle come first and K1 last. So each step
    starts with the block the step before ended with, and the part before the
    barrier still fills its wait. Not for reset-before, which reads the
    candidate's columns of the panel after the kept block: there the same
    order ran 4 % faster at H = 128, 2 % slower at 112 and (256,256,1,500),
    1 % at 160 (two threads). Zen 5 (48 KB L1, SkylakeX sgemv), reset-after,
    both builds alternating call by call, T = 200: two threads 13 % faster at
    H = 112, 10 % at 128, 9 % at 144, 6 % at 160, 5 % at 192, 2 % at
    (256,256,1,500); one thread 10 % at H = 72, 9 % at 96, 6 % at 128, 3 % at
    (32,160,1,100). Just over the L1 (H = 96 on two threads, 1.1 L1s) it lost
    4 % in a slow phase of the machine: the plain order already finds part of
    the panel in L1. A chunk of one sequence in a call split by sequence takes
    it too. With the small-matrix kernel, panels from ROWS_FROM_L1S (8) L1s on
    are W_hh's rows (see panel_rows), so there the blocks stop just below 8.

    A panel of W_hh's rows (past the L2, or from 8 L1s with the small kernel;
    see panel_rows) cannot be read in
    pieces of its inputs (gemv 'T' over part of each row was 12-28 % slower),
    so there the product over the own inputs comes in three blocks of rows
    (outputs), R1, the middle and R2, each R at most KEPT_L2_PART of the L2,
    taking turns the same way; the others' part adds into R2 (R1) before its
    own part does, so those rows start at zero. A/B, two threads:
    (512,512,1,100) 4 % faster, (640,640,1,100) 3 %, (768,768,1,100) 2 %;
    one thread: (384,384,1,100) 5 %, (512,512,1,100) 2 %. Past 4 L2s too
    (Zen 5, both ways taking turns in blocks of calls in one process):
    (896,896,1,100) 7 %, (1024,1024,1,20) 6 %, (1024,1024,1,100) 4-10 %,
    (1280,1280,1,50) 3.6 %, (1536,1536,1,30) 2.9 %; float64 (768,...) 5.6 %,
    (1024,...) 1.2 %; one thread (768|1024,...) 1.7 %. (A microbenchmark of
    the products alone had found no gain at (1024,1024,1,100), and 4 L2s
    had been the limit.)
    """
    cdef Py_ssize_t per_input = <Py_ssize_t>3 * nu * itemsize
    if not reset_after or rows != 1 or nu < 2:
        return 0
    if w_rows:  # rows of the panel kept in L2 (per row, the own inputs: nu values)
        # rows are read past the L2, from 8 L1s with the small kernel (one sequence, see panel_rows), or
        # without it (a chunk of one sequence in a call split by sequence): only a panel past the L2 gains
        # (keeping rows of one within it in L1 changed nothing: 1.000-1.006x at H = 256-384)
        if per_input * H <= l2_bytes:
            return 0
        return <int>max(1, min(3 * nu // 2, <Py_ssize_t>(l2_bytes * KEPT_L2_PART) // (nu * itemsize)))
    if per_input * H <= KEPT_MIN_L1S * l1_bytes or per_input * H > KEPT_MAX_L1S * l1_bytes:
        return 0
    return <int>max(1, min(nu // 2, <Py_ssize_t>(l1_bytes * KEPT_L1_PART) // per_input))


cdef inline void unpack_rows(int i0, int i1, int n, const floating* t, int ldt, floating* rows, int G,
                             bint add=False) noexcept nogil:
    """rows[i, :n] = (or, ``add``, +=) the column-major product t's row i, for i in [i0, i1): row-major again.

    In tiles of 16 columns: the 16 columns a tile reads stay in L1 from row
    to row, and each row's 16 values are written together (column by column,
    the writes, G apart, fell into two sets of L1 at H = 512: 16 % of a call).
    """
    cdef int i, c, c0, c1
    if t == rows:  # one sequence: the two layouts are the same
        return
    for c0 in range(0, n, 16):
        c1 = min(c0 + 16, n)
        for i in range(i0, i1):
            if add:
                for c in range(c0, c1):
                    rows[<Py_ssize_t>i * G + c] += t[<Py_ssize_t>c * ldt + i]
            else:
                for c in range(c0, c1):
                    rows[<Py_ssize_t>i * G + c] = t[<Py_ssize_t>c * ldt + i]


cdef inline int own_part(int s, int T, int B, int I, int H, int i0, int i1, int live, int u0, int nu, int first,
                         int keep, const floating* x, const floating* w_ih_t, const floating* panel, bint w_rows,
                         const long long* lengths, bint reverse, bint per_step, floating* gx, const floating* h_prev,
                         floating* product, int ldp, Py_ssize_t room, bint zero_state=False) noexcept nogil:
    """Step s's work that needs no other thread; returns the sequences live at s (the end of [i0, live)).

    The input projection of its rows (per_step), and the first product (the
    ``first`` rows of the panel) over this thread's own part of h_{t-1},
    into ``product`` (from row i0, see panel_part): product_rest adds the
    others' once they are written. With ``keep`` (see kept_inputs), one of the
    kept blocks is left for kept_block to make after the others'. A
    ``zero_state`` (h_{t-1} = 0, see run_rows) has no product to make. ``room``:
    see product_rows (0: none).
    """
    cdef int G = 3 * H
    cdef int t
    while live > i0 and lengths[live - 1] <= s:
        live -= 1
    if nu == 0:
        return live
    if per_step:  # every sequence is at the same t
        t = T - 1 - s if reverse else s
        project_step(i1 - i0, I, H, u0, nu, x + (<Py_ssize_t>t * B + i0) * I, w_ih_t, gx + <Py_ssize_t>i0 * G)
    if zero_state:
        return live
    own_inputs_part(s, product_rows(live - i0, room), first, H, u0, nu, keep, h_prev + <Py_ssize_t>i0 * H,
                    panel, w_rows, product, ldp)
    return live


cdef inline void own_inputs_part(int s, Py_ssize_t m, int n, int H, int u0, int nu, int keep, const floating* a,
                                 const floating* panel, bint w_rows, floating* c, int ldc) noexcept nogil:
    """C = step s's product over the thread's own inputs (see panel_part), less the kept block it ends with.

    A panel of rows keeps rows (then C's kept rows are zeroed, for the others' part to add to).
    """
    cdef int j
    if keep == 0:
        panel_part(m, n, 0, u0, u0 + nu, H, nu, a, panel, w_rows, 0, c, ldc)
    elif w_rows:  # one row: column j of C at c[j * ldc]
        if s % 2 == 0:  # R1, then the middle
            panel_part(m, n - keep, 0, u0, u0 + nu, H, nu, a, panel, True, 0, c, ldc)
            for j in range(n - keep, n):
                c[<Py_ssize_t>j * ldc] = 0
        else:  # R2, then the middle
            panel_part(m, keep, n - keep, u0, u0 + nu, H, nu, a, panel, True, 0, c + <Py_ssize_t>(n - keep) * ldc, ldc)
            panel_part(m, n - 2 * keep, keep, u0, u0 + nu, H, nu, a, panel, True, 0, c + <Py_ssize_t>keep * ldc, ldc)
            for j in range(keep):
                c[<Py_ssize_t>j * ldc] = 0
    elif s % 2 == 0:  # K1, then the middle
        panel_part(m, n, 0, u0, u0 + nu - keep, H, nu, a, panel, w_rows, 0, c, ldc)
    else:  # K2, then the middle
        panel_part(m, n, 0, u0 + nu - keep, u0 + nu, H, nu, a, panel, w_rows, 0, c, ldc)
        panel_part(m, n, 0, u0 + keep, u0 + nu - keep, H, nu, a, panel, w_rows, 1, c, ldc)


cdef inline void kept_block(int s, int n, int H, int u0, int nu, int keep, const floating* a, const floating* panel,
                            bint w_rows, floating* c, int ldc) noexcept nogil:
    """c += step s's last part of one sequence's product: K2 (R2) at even steps, K1 (R1) at odd ones (see
    kept_inputs). One row, the only case kept_inputs keeps blocks for.
    """
    cdef int k0 = u0 + nu - keep if s % 2 == 0 else u0
    cdef int j0 = n - keep if s % 2 == 0 else 0
    if w_rows:
        panel_part(1, keep, j0, u0, u0 + nu, H, nu, a, panel, True, 1, c + <Py_ssize_t>j0 * ldc, ldc)
    else:
        panel_part(1, n, 0, k0, k0 + keep, H, nu, a, panel, False, 1, c, 0)


cdef void run_rows(
    int T, int B, int I, int H, int i0, int i1, int u0, int nu, int team,
    const floating* x, const floating* w_ih_t, const floating* panel, bint w_rows,
    const floating* bias, const floating* b_hn,
    const long long* lengths, const long long* order,
    bint reverse, bint reset_after, bint per_step,
    floating* gx, floating* gh, floating* ght, floating* rh, floating* h_a, floating* h_b, floating* scratch,
    gru_team_barrier* barrier, floating* out, Py_ssize_t out_t, Py_ssize_t out_b,
    floating* h_n, floating* gates, floating* hn_keep, bint zero_h0,
) noexcept nogil:
    """The time loop of the sequences [i0, i1) (sorted order) for the units [u0, u0 + nu).

    ``panel`` holds those units' recurrent weights as pack_panel lays them out
    (W_hh itself for every unit). ``team`` threads pass its barriers: 1 when
    the sequences are this thread's alone. The products go to gh's rows,
    which the gate pass reads, or, from a panel of W_hh's rows (``w_rows``),
    to ``ght``, column-major (see matmul_w), and from there to gh (with one
    sequence the two layouts are the same: gh directly).

    A step's products are made in two parts: over the inputs this thread's
    own units give (its part of h_{t-1}, or of r ⊙ h_{t-1}), then over the
    others'. The first needs nobody, so a thread makes it between arriving
    at the barrier and awaiting the others: the wait, a few hundred
    nanoseconds when the two cores sit far apart on the machine, overlaps
    with work. With one sequence (reset-after) and a panel of 1.25-8 L1s,
    a block of the own inputs comes last instead, after the others'; past
    the L2, a block of rows of the own part (see kept_inputs).

    With one sequence, the lines of h_{t-1} are prefetched together as soon
    as the others have written theirs: the product would read them one after
    another, each a trip to the core that wrote it, hundreds of nanoseconds
    in the VM's slow phases (there 2-4 % faster at H = 96-128, two threads,
    the two ways taking turns in blocks of calls; in the fast ones level).

    ``zero_h0``: h0 is all zeros and W_hh finite, so the first step's
    products over h0 are exactly zero: gh is zeroed instead of reading the
    panel (a whole step's weights: one step in T saved, the most of a short
    call). Reset-before still makes its candidate's product over r ⊙ h0,
    which is NaN where r is (a NaN input or bias).
    """
    cdef int G = 3 * H
    cdef int P = 3 * nu  # the panel's columns: r, z, n of the units
    cdef int first = P if reset_after else 2 * nu  # reset-before makes the candidate's product later
    cdef Py_ssize_t plane = <Py_ssize_t>T * B * H  # one gate's block in ``gates``
    cdef int s, i, t, seq
    cdef int live = i1
    cdef int steps = <int>lengths[i0]
    cdef unsigned generation = 0
    cdef floating* h_prev = h_a
    cdef floating* h_next = h_b
    cdef floating* swap
    cdef floating* gx_row
    cdef floating* gh_row
    cdef floating* r_out
    cdef floating* z_out
    cdef floating* n_out
    # gh rows are laid out per unit slice: [r | z | n] of its units; the products go there directly, or,
    # from a panel of W_hh's rows, column-major to ght (see panel_part), with one sequence the same as gh.
    # In ght, the rows [i0, i1) have a block of their own, of this thread's columns: threads running other
    # rows or units never write the same cache lines (row i of column c at product_mine[c * ldp + i])
    cdef floating* gh_mine = gh + 3 * u0
    cdef bint into_gh = not w_rows or B == 1
    cdef int ldp = (i1 - i0) if w_rows else G
    cdef floating* product_mine = (gh_mine if into_gh else
                                   ght + <Py_ssize_t>i0 * G + <Py_ssize_t>3 * u0 * (i1 - i0) - i0)
    cdef Py_ssize_t row_step = 1 if w_rows else G  # from one row of the product to the next
    cdef Py_ssize_t col_step = 1 if into_gh else ldp  # and from one column to the next
    cdef int keep = kept_inputs(i1 - i0, H, nu, sizeof(floating), w_rows, reset_after)
    # rows a product may take past the live ones (product_rows): this call's own, and the zeroed row past
    # the batch after the last; never another chunk's, which another thread writes
    cdef Py_ssize_t room = padding_room((i1 + 1 if i1 == B else i1) - i0, H, nu, w_rows)
    cdef Py_ssize_t m  # the rows of a step's product

    for s in range(steps):
        if s == 0:  # h0 was written before the team started
            live = own_part(0, T, B, I, H, i0, i1, live, u0, nu, first, keep, x, w_ih_t, panel, w_rows, lengths,
                            reverse, per_step, gx, h_prev, product_mine + i0 * row_step, ldp, room, zero_h0)
        else:
            gru_team_await(barrier, team, generation)  # every thread's part of h_{t-1} is written
            if live - i0 == 1:  # h_{t-1}'s lines all asked for at once, before the product reads them
                i = i0 * H
                while i < live * H:
                    __builtin_prefetch(h_prev + i)
                    i += 64 // sizeof(floating)  # a cache line
        if nu > 0 and s == 0 and zero_h0:
            for i in range(i0, live):
                memset(gh_mine + <Py_ssize_t>i * G, 0, P * sizeof(floating))
        elif nu > 0:
            m = product_rows(live - i0, room)
            product_rest(m, first, 0, H, u0, nu, h_prev + <Py_ssize_t>i0 * H, panel, w_rows,
                         product_mine + i0 * row_step, ldp)
            if keep:
                kept_block(s, first, H, u0, nu, keep, h_prev + <Py_ssize_t>i0 * H, panel, w_rows,
                           product_mine + i0 * row_step, ldp)
            unpack_rows(i0, live, first, product_mine, ldp, gh_mine, G)
        if not reset_after:
            if nu > 0:
                for i in range(i0, live):
                    t = <int>(lengths[i] - 1 - s) if reverse else s
                    gx_row = gx + (order[i] if per_step else <Py_ssize_t>t * B + order[i]) * G + u0
                    r_out = gates + (<Py_ssize_t>t * B + order[i]) * H + u0 if gates != NULL else scratch + u0
                    reset_before(nu, gx_row, gh_mine + i * G, bias + u0, h_prev + i * H + u0, r_out, rh + i * H + u0)
            generation = gru_team_arrive(barrier, team)  # this thread's part of r ⊙ h_{t-1} is written
            m = product_rows(live - i0, room)
            if nu > 0:  # also from h0 = 0: r ⊙ h0 is NaN where r is
                panel_part(m, nu, 2 * nu, u0, u0 + nu, H, nu, rh + <Py_ssize_t>i0 * H, panel, w_rows, 0,
                           product_mine + 2 * nu * col_step + i0 * row_step, ldp)
            gru_team_await(barrier, team, generation)
            if nu > 0:
                product_rest(m, nu, 2 * nu, H, u0, nu, rh + <Py_ssize_t>i0 * H, panel, w_rows,
                             product_mine + 2 * nu * col_step + i0 * row_step, ldp)
                unpack_rows(i0, live, nu, product_mine + 2 * nu * col_step, ldp, gh_mine + 2 * nu, G)
        if nu > 0:
            for i in range(i0, live):
                seq = <int>order[i]
                t = <int>(lengths[i] - 1 - s) if reverse else s
                gx_row = gx + (seq if per_step else <Py_ssize_t>t * B + seq) * G + u0
                gh_row = gh_mine + i * G
                if gates != NULL:
                    r_out = gates + (<Py_ssize_t>t * B + seq) * H + u0
                else:
                    r_out = scratch + u0
                z_out = r_out + plane if gates != NULL else scratch + H + u0
                n_out = z_out + plane if gates != NULL else scratch + 2 * H + u0
                if reset_after:
                    gates_after(nu, H, nu, gx_row, gh_row, bias + u0, b_hn + u0, h_prev + i * H + u0,
                                h_next + i * H + u0, out + t * out_t + seq * out_b + u0, r_out, z_out, n_out,
                                hn_keep + (<Py_ssize_t>t * B + seq) * H + u0 if hn_keep != NULL else scratch + 3 * H + u0)
                else:
                    gates_before(nu, H, nu, gx_row, gh_row, bias + u0, b_hn + u0, h_prev + i * H + u0,
                                 h_next + i * H + u0, out + t * out_t + seq * out_b + u0, z_out, n_out)
                if lengths[i] == s + 1:  # this sequence ends here: its final state
                    memcpy(h_n + seq * H + u0, h_next + i * H + u0, nu * sizeof(floating))
        generation = gru_team_arrive(barrier, team)  # this thread's part of h_t is written
        swap = h_prev
        h_prev = h_next
        h_next = swap
        if s + 1 < steps:  # the next step's own part, while the others finish theirs
            live = own_part(s + 1, T, B, I, H, i0, i1, live, u0, nu, first, keep, x, w_ih_t, panel, w_rows,
                            lengths, reverse, per_step, gx, h_prev, product_mine + i0 * row_step, ldp, room)


cdef void thread_body(
    int T, int B, int I, int H, bint by_sequence, int* next_chunk,
    const floating* x, const floating* w_ih_t, const floating* w_ih, const floating* w_hh, const floating* whole,
    bint w_rows, const floating* bias, const floating* b_hn,
    const long long* lengths, const long long* order,
    bint reverse, bint reset_after, bint per_step,
    floating* gx, floating* gh, floating* ght, floating* rh, floating* h_a, floating* h_b, floating* scratch,
    floating* projected, const floating* packed, int packed_team, floating* own_panels, gru_team_barrier* barrier,
    floating* out, Py_ssize_t out_t, Py_ssize_t out_b,
    floating* h_n, floating* gates, floating* hn_keep, bint zero_h0,
) noexcept nogil:
    """Everything one thread does; every thread passes the same barriers.

    ``whole`` (split by sequence) is the panel of a team of one: every unit's.
    """
    cdef int team = gru_num_threads()  # the team OpenMP really gave us
    cdef int tid = gru_thread_id()
    cdef int G = 3 * H
    cdef Py_ssize_t M = <Py_ssize_t>T * B
    cdef int u0, nu, chunk
    cdef Py_ssize_t c0  # a chunk's first sequence
    cdef const floating* panel

    if by_sequence:
        if not per_step:  # the whole sequence's input projection first, a block of its rows per thread
            project_row_block(M, I, H, team, tid, x, w_ih_t, gx)
            gru_team_barrier_wait(barrier, team)
        # then chunks of sequences, each through every step, with every unit
        chunk = sequence_chunk(B, team)
        c0 = claim_chunk(next_chunk, chunk)
        while c0 < B:
            run_rows(T, B, I, H, c0, min(c0 + chunk, B), 0, H, 1, x, w_ih_t, whole, w_rows, bias, b_hn, lengths, order,
                     reverse, reset_after, per_step, gx, gh, ght, rh, h_a, h_b, scratch + 4 * H * tid, barrier,
                     out, out_t, out_b, h_n, gates, hn_keep, zero_h0)
            c0 = claim_chunk(next_chunk, chunk)
        return

    # Split by unit: this thread's recurrent weights, (3 nu, H) (see pack_panel), packed once
    # per layer for the team we expected; a team of another size packs its own here. Only
    # this thread reads it, so it stays in its core's cache when it fits.
    nu = unit_slice(H, team, tid, &u0)
    panel = packed + <Py_ssize_t>H * 3 * u0
    if nu > 0:
        if team != packed_team:
            pack_panel(H, u0, nu, w_hh, own_panels + <Py_ssize_t>H * 3 * u0, w_rows)
            panel = own_panels + <Py_ssize_t>H * 3 * u0
    if not per_step and projects_row_blocks(M, False, team):  # a block of rows, every unit, then the others'
        project_row_block(M, I, H, team, tid, x, w_ih_t, gx)
        gru_team_barrier_wait(barrier, team)
    elif nu > 0 and not per_step:  # the input projection of this thread's units, every step at once
        project_sequence(M, I, H, u0, nu, x, w_ih_t, w_ih, projected, gx)
    run_rows(T, B, I, H, 0, B, u0, nu, team, x, w_ih_t, panel, w_rows, bias, b_hn, lengths, order, reverse, reset_after,
             per_step, gx, gh, ght, rh, h_a, h_b, scratch, barrier, out, out_t, out_b, h_n, gates, hn_keep, zero_h0)


def run_direction(
    const floating[:, :, ::1] x not None,
    const floating[:, ::1] w_ih_t not None,
    const floating[:, ::1] w_ih not None,
    const floating[:, ::1] w_hh not None,
    const floating[::1] bias not None,
    const floating[::1] b_hn not None,
    const long long[::1] lengths not None,
    const long long[::1] order not None,
    bint reverse,
    bint reset_after,
    floating[:, :, :] output not None,
    floating[:, ::1] h_n not None,
    floating[:, :, :, ::1] gates,
    floating[:, :, ::1] hn,
    floating[:, ::1] workspace not None,
    const floating[:, ::1] panels not None,
    int panels_team,
    bint panels_w_rows,
    floating[:, ::1] own_panels not None,
    int threads,
    bint w_hh_finite=False,
):
    """Run one layer in one direction; see the module docstring.

    ``w_ih_t`` (I, 3H) is the transposed input weights, ``w_ih`` (3H, I) the
    same as they come (see project_by_rows), ``w_hh`` (3H, H) W_hh;
    ``bias`` is (b_ir + b_hr, b_iz + b_hz, b_in) and ``b_hn`` the rest.
    ``lengths`` is sorted in decreasing order and ``order[i]`` is the batch
    index of the i-th longest sequence; ``h_n`` arrives holding h0 and
    ``output``/``gates`` arrive filled with zeros; ``hn`` (training, reset-after)
    receives W_hn h_{t-1} + b_hn. ``workspace`` is scratch of
    (workspace_rows(...), 3H), laid out below. ``panels`` holds the recurrent weights as
    pack_panels packed them for a team of ``panels_team`` threads (1 for a
    call that splits its sequences), in the layout ``panels_w_rows`` (see
    panel_rows); if OpenMP gives another team, the threads pack theirs into
    ``own_panels`` (3H, H). ``w_hh_finite``: W_hh holds no inf or NaN, so
    a zero h0 gives a zero first product W_hh h0, which is then not made
    (else 0 * inf must come out NaN; see run_rows).
    Inconsistent shapes raise ValueError.
    """
    _check_sizes(x.shape[0], x.shape[1], x.shape[2], w_hh.shape[1])
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[1]
    cdef int G = 3 * H
    cdef int i, u
    _expect_shape("w_ih_t", w_ih_t.shape, 2, I, G)
    _expect_shape("w_hh", w_hh.shape, 2, G, H)
    _expect_shape("bias", bias.shape, 1, G)
    _expect_shape("b_hn", b_hn.shape, 1, H)
    _check_order(lengths, order, T, B)
    _expect_shape("output", output.shape, 3, T, B, H)
    _expect_strides("output", output.shape, output.strides, 3, sizeof(floating))
    _expect_shape("h_n", h_n.shape, 2, B, H)
    if gates is not None:
        _expect_shape("gates", gates.shape, 4, 3, T, B, H)
    if hn is not None:
        _expect_shape("hn", hn.shape, 3, T, B, H)
    threads = team_for(threads, H, B, sizeof(floating))
    cdef bint by_sequence = splits_by_sequence(B, H, sizeof(floating), threads)
    cdef bint per_step = B > 0 and projects_per_step(T, B, I, H, sizeof(floating), reverse, lengths[B - 1],
                                                     by_sequence, threads)
    cdef Py_ssize_t gx_rows = B if per_step else <Py_ssize_t>T * B
    cdef Py_ssize_t projected_room = projection_room(<Py_ssize_t>T * B, I, H, sizeof(floating), per_step, by_sequence)
    _expect_room("workspace", workspace.shape[0] * workspace.shape[1],
                 (gx_rows + 3 * B + 2) * G + 4 * H * threads + projected_room)
    _expect_shape("w_ih", w_ih.shape, 2, G, I)
    _expect_shape("panels", panels.shape, 2, G, H)
    _expect_shape("own_panels", own_panels.shape, 2, G, H)
    if T == 0 or B == 0:
        return
    cdef int next_chunk = 0  # split by sequence: the next chunk to claim
    cdef gru_team_barrier barrier
    gru_team_barrier_init(&barrier, threads)

    # gh, rh, h_a and h_b have a row past the batch, which a product may take (see product_rows)
    cdef floating* gx = &workspace[0, 0]
    cdef floating* gh = gx + gx_rows * G
    cdef floating* rh = gh + <Py_ssize_t>(B + 1) * G
    cdef floating* h_a = rh + <Py_ssize_t>(B + 1) * H
    cdef floating* h_b = h_a + <Py_ssize_t>(B + 1) * H
    cdef floating* scratch = h_b + <Py_ssize_t>(B + 1) * H  # gate values nobody asked for (4H per thread)
    cdef floating* ght = scratch + <Py_ssize_t>4 * H * threads  # the products, column-major (see run_rows)
    # then room for project_by_rows (projection_room), on a cache line
    cdef floating* projected = <floating*>((<uintptr_t>(ght + <Py_ssize_t>B * G) + 63) & ~(<uintptr_t>63))
    cdef floating* gates_ptr = NULL
    cdef floating* hn_ptr = NULL
    if hn is not None:
        hn_ptr = &hn[0, 0, 0]
    if gates is not None:
        gates_ptr = &gates[0, 0, 0, 0]
    cdef floating* out = &output[0, 0, 0]
    cdef Py_ssize_t out_t = output.strides[0] // sizeof(floating)
    cdef Py_ssize_t out_b = output.strides[1] // sizeof(floating)
    cdef const floating* whole = &panels[0, 0]
    cdef bint zero_h0 = w_hh_finite

    with nogil:
        if by_sequence and panels_team != 1:
            pack_panel(H, 0, H, &w_hh[0, 0], &own_panels[0, 0], panels_w_rows)
            whole = &own_panels[0, 0]
        for i in range(B):  # the state, in order of decreasing length
            for u in range(H):
                h_a[i * H + u] = h_n[order[i], u]
                if h_a[i * H + u] != 0:  # (NaN too)
                    zero_h0 = False
        for u in range(H):  # the row past the batch, which only padded products read (see product_rows)
            h_a[<Py_ssize_t>B * H + u] = 0
            h_b[<Py_ssize_t>B * H + u] = 0
            rh[<Py_ssize_t>B * H + u] = 0
        if projected_room > 0:  # x with rows of zeros, for a padded projection (see projection_rows)
            fill_padded_inputs(<Py_ssize_t>T * B, I, H, &x[0, 0, 0], projected)
        with parallel(num_threads=threads):
            thread_body(T, B, I, H, by_sequence, &next_chunk, &x[0, 0, 0], &w_ih_t[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                        whole, panels_w_rows, &bias[0],
                        &b_hn[0], &lengths[0], &order[0], reverse, reset_after, per_step, gx, gh, ght, rh, h_a, h_b,
                        scratch, projected,
                        &panels[0, 0], panels_team, &own_panels[0, 0], &barrier,
                        out, out_t, out_b, &h_n[0, 0], gates_ptr, hn_ptr, zero_h0)


# --- the products alone (benchmarks/floors.py) ------------------------------------------
# The least time a forward split by unit can take with this BLAS: the products
# thread 0 makes, timed alone in one thread, as the forward makes them (or the
# whole team's at once, see part_seconds). The caller holds BLAS to one thread.

cdef void* calloc_on_line(size_t count, size_t size, void** raw) noexcept nogil:
    """``count * size`` zeroed bytes that start on a cache line, as the backend's buffers do (see
    gru._arrays.aligned_zeros); ``free(raw[0])`` releases them. NULL when out of memory."""
    raw[0] = calloc(count * size + 64, 1)
    if raw[0] == NULL:
        return NULL
    return <void*>((<uintptr_t>raw[0] + 63) & ~(<uintptr_t>63))


cdef void thread_part(bint projection, Py_ssize_t rows, int I, int H, int team, int tid, const floating* a,
                      const floating* w, const floating* w_ih, floating* projected, bint flag, floating* out,
                      Py_ssize_t out_apart, Py_ssize_t calls) noexcept nogil:
    """Thread ``tid``'s part of a forward, ``calls`` times, as the kernels make it.

    ``projection``: its input projection of the ``rows`` rows of ``a`` (x) with
    ``w`` (W_ih^T) and ``w_ih`` (W_ih), whole (its block of rows for every
    unit where projects_row_blocks says so, else its units' for every row,
    project_sequence, with ``projected`` its room) or, ``flag``, as a step's
    (project_step), into ``out`` (gx, shared). Else: a step's recurrent
    products of its units for the ``rows`` rows of ``a`` (h) with its panel in
    ``w`` (every thread's, as pack_panels lays them out, in the layout
    ``flag``), in the parts and order run_rows makes them in for reset-after
    (call c as step c; the benchmark's layer), into its own product
    ``out_apart`` values past ``out``.
    """
    cdef int u0, nu, keep
    cdef Py_ssize_t c, m
    cdef const floating* panel
    cdef floating* product
    cdef int ldp = <int>rows if flag else 3 * H  # as in run_rows
    nu = unit_slice(H, team, tid, &u0)
    if projection and not flag and projects_row_blocks(rows, False, team):
        for c in range(calls):
            project_row_block(rows, I, H, team, tid, a, w, out)
        return
    if nu == 0:
        return
    if projection:
        for c in range(calls):
            if flag:
                project_step(rows, I, H, u0, nu, a, w, out)
            else:
                project_sequence(rows, I, H, u0, nu, a, w, w_ih, projected, out)
        return
    panel = w + <Py_ssize_t>3 * H * u0
    product = out + tid * out_apart
    keep = kept_inputs(rows, H, nu, sizeof(floating), flag, True)
    m = product_rows(rows, padding_room(rows + 1, H, nu, flag))  # a and out have a row past the rows
    for c in range(calls):
        own_inputs_part(<int>c, m, 3 * nu, H, u0, nu, keep, a, panel, flag, product, ldp)
        product_rest(m, 3 * nu, 0, H, u0, nu, a, panel, flag, product, ldp)
        if keep:
            kept_block(<int>c, 3 * nu, H, u0, nu, keep, a, panel, flag, product, ldp)


cdef double part_seconds(bint projection, bint together, Py_ssize_t rows, int I, int H, int team,
                         const floating* a, const floating* w, const floating* w_ih, floating* projected, bint flag,
                         floating* out, Py_ssize_t out_apart, Py_ssize_t calls) except -1:
    """Seconds per call of thread_part: thread 0's alone, in the calling thread, or, ``together``, the
    whole team's at once (wall time). One call untimed first: the first writes fault ``out``'s pages in."""
    cdef int given = team  # written through a pointer: a variable assigned in a parallel block is private
    cdef int* given_at = &given
    cdef Py_ssize_t n
    cdef double start = 0
    for n in (1, calls):
        if n == calls:
            start = perf_counter()
        with nogil:
            if together:
                with parallel(num_threads=team):
                    thread_part(projection, rows, I, H, team, gru_thread_id(), a, w, w_ih, projected, flag, out,
                                out_apart, n)
                    if gru_thread_id() == 0:
                        given_at[0] = gru_num_threads()
            else:
                thread_part(projection, rows, I, H, team, 0, a, w, w_ih, projected, flag, out, out_apart, n)
        if given != team:
            raise RuntimeError(f"team: OpenMP gave {given} threads, not {team}")
    return (perf_counter() - start) / calls


def barrier_seconds(int team, Py_ssize_t rounds) -> float:
    """Seconds a team of ``team`` threads takes to pass one of the kernels' barriers, the mean of ``rounds``.

    What a forward split by unit pays at every step on top of its work. On a
    shared VM it is the first thing a slow phase shows (two vCPUs placed far
    apart pass a cache line in hundreds of nanoseconds instead of tens). The
    threads meet as the team OpenMP really starts; a smaller one (a thread
    limit, a build without OpenMP) raises RuntimeError.
    """
    if team < 1 or rounds < 1:
        raise ValueError(f"team and rounds: expected at least 1 each, got {team} and {rounds}")
    cdef gru_team_barrier barrier
    cdef int given = team  # written through a pointer: a variable assigned in a parallel block is private
    cdef int* given_at = &given
    cdef Py_ssize_t n, r
    cdef double start = 0
    for n in (min(rounds, 1000), rounds):  # an untimed pass first: the threads start and spin up
        gru_team_barrier_init(&barrier, team)
        if n == rounds:
            start = perf_counter()
        with nogil, parallel(num_threads=team):
            for r in range(n):
                gru_team_barrier_wait(&barrier, gru_num_threads())
            if gru_thread_id() == 0:
                given_at[0] = gru_num_threads()
        if given != team:
            raise RuntimeError(f"team: OpenMP gave {given} threads, not {team}")
    return (perf_counter() - start) / rounds


def step_seconds(const floating[:, ::1] w_hh not None, const floating[:, ::1] h not None, int team, bint w_rows,
                 Py_ssize_t calls, bint together=False) -> float:
    """Seconds per step of the recurrent products of a team of ``team``, for the B rows of ``h`` (B, H).

    Each thread's panel packed in the layout ``w_rows`` (see panel_rows), its
    products made in the parts run_rows makes them in for reset-after; the gate pass, the
    barrier and the unpacking of a column-major product are not counted.
    Thread 0's products alone, in the calling thread; or, ``together``, every
    thread's at once, each on its own panel and product, with no barrier
    between steps (wall time): the shared caches' and memory's bandwidth then
    divides between them as in a forward call.
    """
    cdef int H = w_hh.shape[1]
    cdef int B = h.shape[0]
    _expect_shape("w_hh", w_hh.shape, 2, 3 * H, H)
    _expect_shape("h", h.shape, 2, B, H)
    if team < 1 or calls < 1 or B < 1:
        raise ValueError(f"team, calls and rows: expected at least 1 each, got {team}, {calls} and {B}")
    cdef int runners = team if together else 1
    # h and each product with a zeroed row past the B, as run_direction's buffers (see product_rows)
    cdef Py_ssize_t product_size = (<Py_ssize_t>(B + 1) * 3 * H + 15) // 16 * 16 + 16  # each on a line, apart
    cdef void* panel_memory = NULL
    cdef void* product_memory = NULL
    cdef void* h_memory = NULL
    cdef floating* panels = <floating*>calloc_on_line(<size_t>3 * H * H, sizeof(floating), &panel_memory)
    cdef floating* products = <floating*>calloc_on_line(<size_t>(runners * product_size), sizeof(floating),
                                                        &product_memory)
    cdef floating* rows = <floating*>calloc_on_line(<size_t>(B + 1) * H, sizeof(floating), &h_memory)
    try:
        if panels == NULL or products == NULL or rows == NULL:
            raise MemoryError()
        memcpy(rows, &h[0, 0], <size_t>B * H * sizeof(floating))
        pack_team_panels(H, team, &w_hh[0, 0], panels, w_rows)  # every thread's, also when thread 0 runs alone
        return part_seconds(False, together, B, 0, H, team, rows, panels, NULL, NULL, w_rows, products,
                            product_size, calls)
    finally:
        free(panel_memory)
        free(product_memory)
        free(h_memory)


def projection_seconds(const floating[:, ::1] x not None, const floating[:, ::1] w_ih_t not None,
                       const floating[:, ::1] w_ih not None, int team, bint per_step, Py_ssize_t calls,
                       bint together=False) -> float:
    """Seconds per call of thread 0's input projection of the rows of ``x`` (rows, I) in a team of ``team``.

    ``w_ih_t`` is (I, 3H), ``w_ih`` (3H, I). As thread_body makes it for every
    row at once (project_row_block or project_sequence), or, ``per_step``, as
    own_part makes it for one step's rows. ``together``: every thread's projection at once (wall
    time), as in a forward call.
    """
    cdef Py_ssize_t rows = x.shape[0]
    cdef int I = x.shape[1]
    cdef int H = w_ih_t.shape[1] // 3
    _expect_shape("w_ih_t", w_ih_t.shape, 2, I, 3 * H)
    _expect_shape("w_ih", w_ih.shape, 2, 3 * H, I)
    if team < 1 or calls < 1 or rows < 1 or H < 1:
        raise ValueError(f"team, calls, rows and H: expected at least 1 each, got {team}, {calls}, {rows} and {H}")
    cdef void* gx_memory = NULL
    cdef void* projected_memory = NULL
    cdef floating* gx = <floating*>calloc_on_line(<size_t>rows * 3 * H, sizeof(floating), &gx_memory)
    # as run_direction's: room for project_by_rows, with a padded projection's copy of x (see projection_room)
    cdef Py_ssize_t room = projection_room(rows, I, H, sizeof(floating), per_step, False)
    cdef floating* projected = <floating*>calloc_on_line(<size_t>room, sizeof(floating), &projected_memory)
    try:
        if gx == NULL or projected == NULL:
            raise MemoryError()
        if room > 0:
            fill_padded_inputs(rows, I, H, &x[0, 0], projected)
        return part_seconds(True, together, rows, I, H, team, &x[0, 0], &w_ih_t[0, 0], &w_ih[0, 0], projected,
                            per_step, gx, 0, calls)
    finally:
        free(gx_memory)
        free(projected_memory)


# --- backward --------------------------------------------------------------------------

cdef inline void matmul_tn(int m, int n, int k, const floating* a, int lda, const floating* b, int ldb,
                           floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major C[m, n] = A[k, m]^T @ B[k, n] + beta C: the weight gradients, summed over k rows.

    In column-major terms C^T = B^T A: gemm('N', 'T') with the operands swapped.
    """
    if m <= 0 or n <= 0:
        return
    gemm(c'N', c'T', n, m, k, b, ldb, a, lda, beta, c, ldc)


cdef inline void clear_step_row(Py_ssize_t row, int H, int u0, int nu, bint reset_after,
                                floating* d_gh, floating* h_prevs, floating* rh) noexcept nogil:
    """Zero this thread's columns of one step-ordered row (a sequence that is not live)."""
    cdef int g
    for g in range(3):
        memset(d_gh + row * 3 * H + g * H + u0, 0, nu * sizeof(floating))
    memset(h_prevs + row * H + u0, 0, nu * sizeof(floating))
    if not reset_after:
        memset(rh + row * H + u0, 0, nu * sizeof(floating))


cdef inline void accumulate(int n, const floating* src, double* sums) noexcept nogil:
    """sums += src, in double: a float running sum over thousands of rows loses digits."""
    cdef int j
    for j in range(n):
        sums[j] += src[j]


cdef inline int weight_parts(int team, Py_ssize_t M, int G, int I, int H) noexcept nogil:
    """Into how many parts the weight-gradient GEMMs split the M = T*B rows they sum over.

    Each part's threads sum their rows for a block of the gate rows; the parts
    are added up afterwards. Splitting the summed rows beats splitting the gate
    rows: on Zen 4 with OpenBLAS, one thread sums 384x128 over 6,400 rows at 78
    GFLOP/s, against 64 for 192x128 over 12,800, and 768x256 over 1,600 at 95
    against 79 for 384x256 over 3,200. Every part past the first needs its own
    G*(I+H) partial sums, so parts are capped to keep those within PARTIAL_SUM_VALUES;
    no part is left empty.
    """
    cdef Py_ssize_t per_part = <Py_ssize_t>G * (I + H)
    cdef Py_ssize_t parts = min(<Py_ssize_t>team, 1 + PARTIAL_SUM_VALUES // per_part, M)
    cdef Py_ssize_t rows = (M + parts - 1) // parts
    return <int>((M + rows - 1) // rows)


def backward_workspace_rows(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize,
                            int threads) -> int:
    """Rows of H values backward_direction's ``workspace`` needs for a call asking for ``threads``."""
    cdef int team = team_for(threads, H, B, itemsize)
    cdef int parts = weight_parts(team, T * B, <int>(3 * H), <int>I, <int>H) if T * B > 0 else 1
    if splits_by_sequence(B, H, itemsize, team) and chunks_sum_weights(T, I, H, itemsize, T):
        parts = max(parts, chunk_count(B, team))  # one set of sums per chunk
    return 8 * T * B + 4 * B + (parts - 1) * 3 * (I + H)


cdef inline int chunk_count(Py_ssize_t B, int team) noexcept nogil:
    cdef int chunk = sequence_chunk(B, team)
    return <int>((B + chunk - 1) // chunk)


cdef inline bint chunks_sum_weights(Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, Py_ssize_t itemsize,
                                    long long shortest) noexcept nogil:
    """Split by sequence: whether each chunk sums its own dW_ih and dW_hh, and makes its rows of d_x, step by step.

    As weights_in_loop does for a thread's units, while a chunk's rows are in
    cache; the chunks' sums are added up in chunk order at the end. When every
    sequence runs all T steps, and a chunk's weight gradients fit L2 with W_ih.
    """
    return small_kernel and shortest == T and 3 * H * (I + H) * itemsize <= WEIGHT_ROWS_IN_LOOP_BYTES


cdef inline bint weights_in_loop(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H, int unit_chunk,
                                 Py_ssize_t itemsize, long long shortest) noexcept nogil:
    """Whether the weight gradients are summed step by step rather than by whole-sequence GEMMs.

    Step by step, each thread adds its units' rows of dW_ih and dW_hh while the
    step's rows are in cache, on OpenBLAS's small kernel (one Zen 4 core: 64 x
    128 over 64 rows at 98 GFLOP/s, against about 70 for the whole-sequence
    GEMM at 192 x 128 over 12,800 rows). Only when every sequence runs all T
    steps (a step's rows are then consecutive rows of x and of d_gx), from 16
    sequences (at 8, 256 units, it was 6 % slower), with the products in column
    blocks of 64 that fit the small kernel, and the thread's rows of dW in its L2.
    """
    return (small_kernel and shortest == T and B >= WEIGHTS_IN_LOOP_BATCH and unit_chunk * B * 64 <= SMALL_PRODUCT
            and 3 * unit_chunk * (I + H) * itemsize <= WEIGHT_ROWS_IN_LOOP_BYTES)


cdef inline void matmul_tn_step(int m, int n, int k, const floating* a, int lda, const floating* b, int ldb,
                                floating* c, int ldc) noexcept nogil:
    """C += A^T B like matmul_tn, as column blocks that each stay a small product (see small_block)."""
    cdef int block = small_block(m, n, k) if small_kernel else n
    cdef int start = 0
    while start < n:
        matmul_tn(m, min(block, n - start), k, a, lda, b + start, ldb, 1, c + start, ldc)
        start += block


cdef inline void add_parts(Py_ssize_t start, Py_ssize_t stop, floating* total, const floating* parts,
                           Py_ssize_t part_stride, int count) noexcept nogil:
    """total[start:stop] += the same slice of ``count`` partial sums spaced ``part_stride`` apart."""
    cdef Py_ssize_t e
    cdef int p
    for p in range(count):
        for e in range(start, stop):
            total[e] += parts[p * part_stride + e]


cdef inline void carry_product(bint w_rows, int i0, int live, int nu, int k, int H, const floating* d_gh_rows,
                               const floating* w_t, const floating* w, floating* temp, int ldt, floating* dest,
                               bint add) noexcept nogil:
    """dest's rows [i0, live) (row i at dest + i * H) = (or, ``add``, +=) d_gh's rows times k rows of W_hh.

    ``d_gh_rows`` is row i0's first gate gradient (rows 3H apart); ``w_t`` and
    ``w`` are where the k rows start in W_hh^T's rows of the units and in
    W_hh's columns of the units. With ``w_rows`` the product takes W_hh^T's rows
    as BLAS's second operand into the column-major ``temp`` (see matmul_w) and is
    unpacked from there; else it runs on the small-matrix kernel straight into dest.
    """
    if w_rows:
        matmul_w(live - i0, nu, k, d_gh_rows, 3 * H, w_t, 3 * H, 0, temp + i0, ldt)
        unpack_rows(i0, live, nu, temp, ldt, dest, H, add)
    else:
        matmul_step(live - i0, nu, k, d_gh_rows, 3 * H, w, H, 1 if add else 0, dest + <Py_ssize_t>i0 * H, H)


cdef void backward_rows(
    int T, int B, int I, int H, int i0, int i1, int u0, int nu, int team, bint in_loop,
    const floating* x, const floating* h0, const floating* w_hh, const floating* w_hh_t,
    const long long* lengths, const long long* order,
    bint reverse, bint reset_after,
    const floating* out, Py_ssize_t out_t, Py_ssize_t out_b,
    const floating* d_out, Py_ssize_t d_out_t, Py_ssize_t d_out_b,
    const floating* gates, const floating* hn,
    floating* d_gx, floating* d_gh, floating* h_prevs, floating* rh, floating* d_carry, floating* d_rh,
    floating* dh, floating* d_w_ih, floating* d_w_hh, const floating* w_ih, floating* d_x, double* sums,
    floating* d_temp, gru_team_barrier* barrier,
) noexcept nogil:
    """Backpropagation through time of the sequences [i0, i1) (sorted order) for the units [u0, u0 + nu).

    Per step s (last first), for the live sequences: the gate pre-activation
    gradients of the units, into d_gx (rows t*B + seq, for the input side) and
    d_gh (rows s*B + i, for the recurrent side), with h_{t-1} (and r ⊙ h_{t-1})
    stored in the same rows for the weight gradients; then, after a barrier,
    the units' columns of d loss / d h_{t-1} = dh z + d_gh W_hh. The bias
    gradients are summed into ``sums`` as the rows are made (in double, while
    they are in cache), and, with ``in_loop``, the units' rows of the weight
    gradients too (every sequence then runs all T steps), and d_x's rows unless
    ``d_x`` is NULL. ``team`` threads pass its barriers: 1 when the sequences
    are this thread's alone.

    Past the small-matrix kernel, the products with W_hh take W_hh^T's rows
    (``w_hh_t``) as BLAS's second operand, as the forward's do (see
    matmul_w), into ``d_temp``, column-major (the rows [i0, i1) have a block
    of their own there), and from there to their rows.
    """
    cdef int u1 = u0 + nu
    cdef bint w_rows = not small_kernel and i1 - i0 > 1
    cdef int ldt = i1 - i0
    cdef floating* temp_mine = d_temp + <Py_ssize_t>i0 * H + <Py_ssize_t>u0 * (i1 - i0) - i0
    cdef int G = 3 * H
    cdef Py_ssize_t plane = <Py_ssize_t>T * B * H
    cdef Py_ssize_t step_row, gate_at
    cdef int g, s, i, u, t, t_prev, seq
    cdef int live = i0
    cdef int steps = <int>lengths[i0]
    cdef const floating* hp_src
    cdef floating* hp

    # Rows that no step writes must read as zeros in the GEMMs after the loop: the steps
    # of ended sequences (and all of them past the longest one). Only those are cleared.
    if nu > 0:
        for i in range(i0, i1):
            for t in range(<int>lengths[i], T):
                for g in range(3):
                    memset(d_gx + (<Py_ssize_t>t * B + order[i]) * G + g * H + u0, 0, nu * sizeof(floating))
        for s in range(steps, T):
            for i in range(i0, i1):
                clear_step_row(<Py_ssize_t>s * B + i, H, u0, nu, reset_after, d_gh, h_prevs, rh)
    gru_team_barrier_wait(barrier, team)

    for s in range(steps - 1, -1, -1):
        while live < i1 and lengths[live] > s:
            live += 1
        if nu > 0:
            for i in range(live, i1):
                clear_step_row(<Py_ssize_t>s * B + i, H, u0, nu, reset_after, d_gh, h_prevs, rh)
            for i in range(i0, live):
                seq = <int>order[i]
                t = <int>(lengths[i] - 1 - s) if reverse else s
                step_row = <Py_ssize_t>s * B + i
                hp = h_prevs + step_row * H
                if s == 0:
                    hp_src = h0 + seq * H
                else:
                    t_prev = t + 1 if reverse else t - 1
                    hp_src = out + t_prev * out_t + seq * out_b
                memcpy(hp + u0, hp_src + u0, nu * sizeof(floating))
                for u in range(u0, u1):  # d loss / d h_t: carried from step t + 1, plus the output's own
                    dh[i * H + u] = d_carry[i * H + u] + d_out[t * d_out_t + seq * d_out_b + u]
                gate_at = (<Py_ssize_t>t * B + seq) * H + u0
                if reset_after:
                    backward_after(nu, H, dh + i * H + u0, hp + u0, gates + gate_at, gates + plane + gate_at,
                                   gates + 2 * plane + gate_at, hn + gate_at, d_gx + (<Py_ssize_t>t * B + seq) * G + u0,
                                   d_gh + step_row * G + u0, d_carry + i * H + u0)
                else:
                    backward_before(nu, H, dh + i * H + u0, hp + u0, gates + plane + gate_at,
                                    gates + 2 * plane + gate_at, d_gx + (<Py_ssize_t>t * B + seq) * G + u0,
                                    d_gh + step_row * G + u0, d_carry + i * H + u0)
                    for u in range(u0, u1):
                        rh[step_row * H + u] = gates[gate_at - u0 + u] * hp[u]
        gru_team_barrier_wait(barrier, team)  # every unit's d_gh of this step is written
        if not reset_after:
            if nu > 0:
                # d loss / d (r ⊙ h_{t-1}) = d_n_pre W_hn, the units' columns
                carry_product(w_rows, i0, live, nu, H, H, d_gh + (<Py_ssize_t>s * B + i0) * G + 2 * H,
                              w_hh_t + <Py_ssize_t>u0 * G + 2 * H, w_hh + <Py_ssize_t>2 * H * H + u0,
                              temp_mine, ldt, d_rh + u0, False)
                for i in range(i0, live):
                    seq = <int>order[i]
                    t = <int>(lengths[i] - 1 - s) if reverse else s
                    step_row = <Py_ssize_t>s * B + i
                    gate_at = (<Py_ssize_t>t * B + seq) * H + u0
                    backward_before_reset(nu, d_rh + i * H + u0, h_prevs + step_row * H + u0, gates + gate_at,
                                          d_gx + (<Py_ssize_t>t * B + seq) * G + u0, d_gh + step_row * G + u0,
                                          d_carry + i * H + u0)
            gru_team_barrier_wait(barrier, team)  # the r blocks too
        if nu > 0:
            for i in range(i0, live):  # this step's gate gradients of the units are final
                t = <int>(lengths[i] - 1 - s) if reverse else s
                for g in range(3):
                    accumulate(nu, d_gx + (<Py_ssize_t>t * B + order[i]) * G + g * H + u0, sums + g * nu)
                    accumulate(nu, d_gh + (<Py_ssize_t>s * B + i) * G + g * H + u0, sums + (3 + g) * nu)
            # d loss / d h_{t-1} += d_gh W_hh (W_hh's r and z rows only for reset-before: its n
            # rows met r ⊙ h, handled above), the units' columns
            carry_product(w_rows, i0, live, nu, G if reset_after else 2 * H, H,
                          d_gh + (<Py_ssize_t>s * B + i0) * G, w_hh_t + <Py_ssize_t>u0 * G, w_hh + u0,
                          temp_mine, ldt, d_carry + u0, True)
            if in_loop:  # this step's share of the units' rows of dW_ih and dW_hh (every row is live)
                t = T - 1 - s if reverse else s
                for g in range(3):
                    matmul_tn_step(nu, I, i1 - i0, d_gx + (<Py_ssize_t>t * B + i0) * G + g * H + u0, G,
                                   x + (<Py_ssize_t>t * B + i0) * I, I, d_w_ih + <Py_ssize_t>(g * H + u0) * I, I)
                    matmul_tn_step(nu, H, i1 - i0, d_gh + (<Py_ssize_t>s * B + i0) * G + g * H + u0, G,
                                   (rh if g == 2 and not reset_after else h_prevs) + (<Py_ssize_t>s * B + i0) * H, H,
                                   d_w_hh + <Py_ssize_t>(g * H + u0) * H, H)
                if d_x != NULL:  # d_x += d_gx W_ih, these rows
                    matmul_step(i1 - i0, I, G, d_gx + (<Py_ssize_t>t * B + i0) * G, G, w_ih, I, 1,
                                d_x + (<Py_ssize_t>t * B + i0) * I, I)
        # no barrier: the next step reads only these columns of d_carry, and other rows of d_gh


cdef void backward_thread_body(
    int T, int B, int I, int H, bint by_sequence, int* next_chunk,
    const floating* x, const floating* h0, const floating* w_ih, const floating* w_hh, const floating* w_hh_t,
    const long long* lengths, const long long* order,
    bint reverse, bint reset_after,
    const floating* out, Py_ssize_t out_t, Py_ssize_t out_b,
    const floating* d_out, Py_ssize_t d_out_t, Py_ssize_t d_out_b,
    const floating* gates, const floating* hn,
    floating* d_gx, floating* d_gh, floating* h_prevs, floating* rh, floating* d_carry, floating* d_rh,
    floating* dh, floating* d_x, floating* d_w_ih, floating* d_w_hh, floating* d_b_ih, floating* d_b_hh,
    floating* partials, double* bias_sums, floating* d_temp, gru_team_barrier* barrier,
) noexcept nogil:
    """Backpropagation through time, one thread's share: its hidden units, or its chunks of sequences.

    The team splits the work as the forward does (see splits_by_sequence);
    backward_rows runs the steps. Split by sequence, each chunk's bias
    gradients are summed into 6H doubles of its own, added up at the end in
    chunk order (the same sums whichever thread ran which chunk). After the
    loop, unless summed step by step (see weights_in_loop and
    chunks_sum_weights), the weight gradients as whole-sequence GEMMs (see
    weight_parts for how the team splits them) and a block of d_x's rows.
    """
    cdef int team = gru_num_threads()
    cdef int tid = gru_thread_id()
    cdef int u0
    cdef int nu = unit_slice(H, team, tid, &u0)
    cdef int G = 3 * H
    cdef Py_ssize_t M = <Py_ssize_t>T * B
    cdef int g, u, c, chunk
    cdef Py_ssize_t c0
    cdef double total
    cdef Py_ssize_t rows_per_thread, r0, r1
    cdef Py_ssize_t part_values = <Py_ssize_t>G * (I + H)  # one set of weight-gradient sums
    cdef floating* into_ih
    cdef floating* into_hh
    # the same answer in every thread (from the widest slice): all of them skip the GEMMs, or none
    cdef bint chunks_in_loop = by_sequence and chunks_sum_weights(T, I, H, sizeof(floating), lengths[B - 1])
    cdef bint in_loop = chunks_in_loop or (not by_sequence and weights_in_loop(
        T, B, I, H, widest_slice(H, team), sizeof(floating), lengths[B - 1]))
    # d b_ih (r, z, n), then d b_hh: of this thread's units, or of all units for a chunk's sequences
    cdef double* sums = bias_sums + 6 * u0
    chunk = sequence_chunk(B, team)

    if by_sequence:
        c0 = claim_chunk(next_chunk, chunk)
        while c0 < B:
            c = <int>(c0 // chunk)
            sums = bias_sums + 6 * H * c
            memset(sums, 0, 6 * H * sizeof(double))
            # the chunk's weight-gradient sums: the first chunk's in place, the others' added at the end
            into_ih = d_w_ih if c == 0 else partials + (c - 1) * part_values
            into_hh = d_w_hh if c == 0 else into_ih + <Py_ssize_t>G * I
            if chunks_in_loop:
                memset(into_ih, 0, <Py_ssize_t>G * I * sizeof(floating))
                memset(into_hh, 0, <Py_ssize_t>G * H * sizeof(floating))
            backward_rows(T, B, I, H, c0, min(c0 + chunk, B), 0, H, 1, chunks_in_loop, x, h0, w_hh, w_hh_t, lengths,
                          order, reverse, reset_after, out, out_t, out_b, d_out, d_out_t, d_out_b, gates, hn, d_gx,
                          d_gh, h_prevs, rh, d_carry, d_rh, dh, into_ih, into_hh, w_ih, d_x, sums, d_temp, barrier)
            c0 = claim_chunk(next_chunk, chunk)
    else:
        if nu > 0:
            memset(sums, 0, 6 * nu * sizeof(double))
            if in_loop:  # this thread's rows of the weight gradients, summed into from here on
                for g in range(3):
                    memset(d_w_ih + <Py_ssize_t>(g * H + u0) * I, 0, <Py_ssize_t>nu * I * sizeof(floating))
                    memset(d_w_hh + <Py_ssize_t>(g * H + u0) * H, 0, <Py_ssize_t>nu * H * sizeof(floating))
        backward_rows(T, B, I, H, 0, B, u0, nu, team, in_loop, x, h0, w_hh, w_hh_t, lengths, order, reverse,
                      reset_after, out, out_t, out_b, d_out, d_out_t, d_out_b, gates, hn, d_gx, d_gh, h_prevs, rh,
                      d_carry, d_rh, dh, d_w_ih, d_w_hh, w_ih, NULL, sums, d_temp, barrier)

    gru_team_barrier_wait(barrier, team)
    # Weight gradients over every step at once: dW_ih = d_gx^T x and dW_hh = d_gh^T h_{t-1}, one
    # GEMM per operand. The team is `parts` groups of `blocks` threads: a group sums its share
    # of the M rows, each of its threads a block of the 3H gate rows. Group 0 writes the
    # gradients, the others partial sums, which are added after the barrier below. (Chunks that
    # summed their own weight gradients in the loop are added the same way, one part each.)
    cdef int parts = chunk_count(B, team) if chunks_in_loop else weight_parts(team, M, G, I, H)
    cdef int blocks = max(1, team // parts)
    cdef int part = tid // blocks
    cdef Py_ssize_t part_rows = (M + parts - 1) // parts
    cdef Py_ssize_t k0 = min(part * part_rows, M)
    cdef int k = <int>(min(k0 + part_rows, M) - k0)
    into_ih = d_w_ih if part == 0 else partials + (part - 1) * part_values
    into_hh = d_w_hh if part == 0 else into_ih + <Py_ssize_t>G * I
    cdef int gate_rows = ((G + blocks - 1) // blocks + 15) // 16 * 16
    cdef int g0 = min((tid % blocks) * gate_rows, G)
    cdef int g1 = min(g0 + gate_rows, G)
    cdef int split = max(g0, min(g1, 2 * H))  # reset-before's n rows take r ⊙ h_{t-1}, not h_{t-1}
    if part < parts and g1 > g0 and not in_loop:
        matmul_tn(g1 - g0, I, k, d_gx + k0 * G + g0, G, x + k0 * I, I, 0, into_ih + <Py_ssize_t>g0 * I, I)
        if reset_after:
            matmul_tn(g1 - g0, H, k, d_gh + k0 * G + g0, G, h_prevs + k0 * H, H, 0, into_hh + <Py_ssize_t>g0 * H, H)
        else:
            matmul_tn(split - g0, H, k, d_gh + k0 * G + g0, G, h_prevs + k0 * H, H, 0,
                      into_hh + <Py_ssize_t>g0 * H, H)
            matmul_tn(g1 - split, H, k, d_gh + k0 * G + split, G, rh + k0 * H, H, 0,
                      into_hh + <Py_ssize_t>split * H, H)
    for g in range(6):  # the bias gradients of this thread's units
        for u in range(nu):
            if by_sequence:
                total = 0
                for c in range((B + chunk - 1) // chunk):
                    total += bias_sums[6 * H * c + g * H + u0 + u]
            else:
                total = sums[g * nu + u]
            (d_b_ih if g < 3 else d_b_hh)[g % 3 * H + u0 + u] = <floating>total
    # d_x += d_gx W_ih, this thread's rows of it
    rows_per_thread = (M + team - 1) // team
    r0 = min(<Py_ssize_t>tid * rows_per_thread, M)
    r1 = min(r0 + rows_per_thread, M)
    if r1 > r0 and not chunks_in_loop:  # one GEMM: d_gx streams from memory (chunked: 2-4 % slower, T*B = 12,800)
        matmul(<int>(r1 - r0), I, G, d_gx + r0 * G, G, w_ih, I, 1, d_x + r0 * I, I)
    if parts > 1 and (chunks_in_loop or not in_loop):
        gru_team_barrier_wait(barrier, team)  # every partial sum is written
        rows_per_thread = (part_values + team - 1) // team  # this thread's slice of the G*(I+H) sums
        r0 = min(<Py_ssize_t>tid * rows_per_thread, part_values)
        r1 = min(r0 + rows_per_thread, part_values)
        k0 = <Py_ssize_t>G * I  # where d_w_hh's values start in a partial sum
        add_parts(min(r0, k0), min(r1, k0), d_w_ih, partials, part_values, parts - 1)
        add_parts(max(r0, k0) - k0, max(r1, k0) - k0, d_w_hh, partials + k0, part_values, parts - 1)


def backward_direction(
    const floating[:, :, ::1] x not None,
    const floating[:, ::1] h0 not None,
    const floating[:, ::1] w_ih not None,
    const floating[:, ::1] w_hh not None,
    const floating[:, ::1] w_hh_t not None,
    const long long[::1] lengths not None,
    const long long[::1] order not None,
    bint reverse,
    bint reset_after,
    const floating[:, :, :] output not None,
    const floating[:, :, :, ::1] gates not None,
    const floating[:, :, ::1] hn,
    const floating[:, :, :] d_output not None,
    const floating[:, ::1] d_h_n not None,
    floating[:, :, ::1] d_x not None,
    floating[:, ::1] d_h0 not None,
    floating[:, ::1] d_w_ih not None,
    floating[:, ::1] d_w_hh not None,
    floating[::1] d_b_ih not None,
    floating[::1] d_b_hh not None,
    floating[:, ::1] workspace not None,
    double[::1] bias_sums not None,
    int threads,
):
    """Backpropagate one layer in one direction; see backward_thread_body.

    Takes the forward's inputs and outputs (``output`` (T, B, H) and ``gates``
    (3, T, B, H) in time order; ``hn`` (T, B, H) for reset-after, else None),
    the gradients of the loss with respect to ``output`` and the last state,
    and the same ``lengths``/``order`` as the forward. Adds into ``d_x``;
    writes ``d_h0`` and the weight gradients. ``workspace`` is scratch of
    (backward_workspace_rows(...), H): d_gx and d_gh (3H each per row), h_{t-1}
    and r ⊙ h_{t-1} per row, four (B, H) blocks, then the weight gradients'
    partial sums; ``bias_sums`` is scratch of 12H doubles per thread.
    ``w_hh_t`` is W_hh^T (H, 3H), for the products past the small-matrix
    kernel (see backward_rows).
    Inconsistent shapes raise ValueError.
    """
    _check_sizes(x.shape[0], x.shape[1], x.shape[2], w_hh.shape[1])
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = w_hh.shape[1]
    cdef int G = 3 * H
    cdef int i, u
    _expect_shape("h0", h0.shape, 2, B, H)
    _expect_shape("w_ih", w_ih.shape, 2, G, I)
    _expect_shape("w_hh", w_hh.shape, 2, G, H)
    _expect_shape("w_hh_t", w_hh_t.shape, 2, H, G)
    _check_order(lengths, order, T, B)
    _expect_shape("output", output.shape, 3, T, B, H)
    _expect_strides("output", output.shape, output.strides, 3, sizeof(floating))
    _expect_shape("gates", gates.shape, 4, 3, T, B, H)
    if hn is not None:
        _expect_shape("hn", hn.shape, 3, T, B, H)
    elif reset_after:
        raise ValueError("hn: reset-after needs the forward's W_hn h_{t-1} + b_hn, got None")
    _expect_shape("d_output", d_output.shape, 3, T, B, H)
    _expect_strides("d_output", d_output.shape, d_output.strides, 3, sizeof(floating))
    _expect_shape("d_h_n", d_h_n.shape, 2, B, H)
    _expect_shape("d_x", d_x.shape, 3, T, B, I)
    _expect_shape("d_h0", d_h0.shape, 2, B, H)
    _expect_shape("d_w_ih", d_w_ih.shape, 2, G, I)
    _expect_shape("d_w_hh", d_w_hh.shape, 2, G, H)
    _expect_shape("d_b_ih", d_b_ih.shape, 1, G)
    _expect_shape("d_b_hh", d_b_hh.shape, 1, G)
    _expect_room("workspace", workspace.shape[0] * workspace.shape[1],
                 backward_workspace_rows(T, B, I, H, sizeof(floating), threads) * <Py_ssize_t>H)
    threads = team_for(threads, H, B, sizeof(floating))
    _expect_room("bias_sums", bias_sums.shape[0], 12 * <Py_ssize_t>H * threads)  # 6H per chunk
    if T == 0 or B == 0:
        return
    cdef bint by_sequence = splits_by_sequence(B, H, sizeof(floating), threads)
    cdef int next_chunk = 0
    cdef gru_team_barrier barrier
    gru_team_barrier_init(&barrier, threads)
    cdef Py_ssize_t M = <Py_ssize_t>T * B
    cdef floating* d_gx = &workspace[0, 0]
    cdef floating* d_gh = d_gx + M * 3 * H
    cdef floating* h_prevs = d_gh + M * 3 * H
    cdef floating* rh = h_prevs + M * H
    cdef floating* d_carry = rh + M * H
    cdef floating* d_rh = d_carry + <Py_ssize_t>B * H
    cdef floating* dh = d_rh + <Py_ssize_t>B * H
    cdef floating* d_temp = dh + <Py_ssize_t>B * H  # the products with W_hh^T, column-major (see backward_rows)
    cdef floating* partials = d_temp + <Py_ssize_t>B * H
    cdef const floating* hn_ptr = NULL
    if hn is not None:
        hn_ptr = &hn[0, 0, 0]
    cdef Py_ssize_t out_t = output.strides[0] // sizeof(floating)
    cdef Py_ssize_t out_b = output.strides[1] // sizeof(floating)
    cdef Py_ssize_t d_out_t = d_output.strides[0] // sizeof(floating)
    cdef Py_ssize_t d_out_b = d_output.strides[1] // sizeof(floating)

    with nogil:
        for i in range(B):  # the carried gradient starts as d loss / d h_n, in sorted order
            for u in range(H):
                d_carry[i * H + u] = d_h_n[order[i], u]
        with parallel(num_threads=threads):
            backward_thread_body(T, B, I, H, by_sequence, &next_chunk, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                                 &w_hh_t[0, 0], &lengths[0], &order[0], reverse, reset_after,
                                 &output[0, 0, 0], out_t, out_b, &d_output[0, 0, 0], d_out_t, d_out_b,
                                 &gates[0, 0, 0, 0], hn_ptr, d_gx, d_gh, h_prevs, rh, d_carry, d_rh, dh,
                                 &d_x[0, 0, 0], &d_w_ih[0, 0], &d_w_hh[0, 0], &d_b_ih[0], &d_b_hh[0], partials,
                                 &bias_sums[0], d_temp, &barrier)
        for i in range(B):
            for u in range(H):
                d_h0[order[i], u] = d_carry[i * H + u]

