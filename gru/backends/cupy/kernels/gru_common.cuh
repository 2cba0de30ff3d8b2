// Device helpers shared by the gru CUDA kernels.
//
// Compiled at run time by NVRTC (through cupy.RawModule), so nothing here may
// include a host or standard-library header: NVRTC has none. The Python side
// splices this file into each kernel source in place of its #include line, so
// CuPy's kernel cache key covers it.
//
// GRU_EMULATION is defined only by the test suite, which compiles the same
// kernels as plain C++ against a CPU emulation of the CUDA execution model;
// it then provides the few primitives below that differ.
#pragma once

#ifndef GRU_EMULATION
// Dynamic shared memory, 16-byte aligned for the vector loads.
#define GRU_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace gru {

// ---------------------------------------------------------------------------
// 16-byte vectors: one load moves 4 floats or 2 doubles.
// ---------------------------------------------------------------------------
template <typename T>
struct Vec;

template <>
struct Vec<float> {
    typedef float4 type;
    static const int width = 4;
};

template <>
struct Vec<double> {
    typedef double2 type;
    static const int width = 2;
};

__device__ __forceinline__ float dot_acc(float acc, const float4& w, const float4& h) {
    acc = fmaf(w.x, h.x, acc);
    acc = fmaf(w.y, h.y, acc);
    acc = fmaf(w.z, h.z, acc);
    return fmaf(w.w, h.w, acc);
}

__device__ __forceinline__ double dot_acc(double acc, const double2& w, const double2& h) {
    acc = fma(w.x, h.x, acc);
    return fma(w.y, h.y, acc);
}

__device__ __forceinline__ void set_zero(float4& v) { v.x = v.y = v.z = v.w = 0.0f; }
__device__ __forceinline__ void set_zero(double2& v) { v.x = v.y = 0.0; }

// ---------------------------------------------------------------------------
// Activations. float: from the hardware exponential (__expf: a multiply and
// one MUFU.EX2, relative error about |v| * 2^-22, so well inside the 1e-5
// that float32 results must keep from a float64 reference) and a correctly
// rounded reciprocal, instead of expf, tanhf and an IEEE division: the gate
// math sits on each step's critical path, and these are several times shorter.
// tanh(v) = 1 - 2 / (1 + e^(2v)) keeps the absolute error near 1e-7 and the
// limits exact (+-1 at +-inf, NaN in, NaN out). tanh.approx is NOT used: its
// error is about 5e-4. GRU_EXACT_ACTIVATIONS selects the libm functions.
// double: always the full-precision functions.
// ---------------------------------------------------------------------------
#ifdef GRU_EXACT_ACTIVATIONS
__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ float tanh_(float v) { return tanhf(v); }
#else
__device__ __forceinline__ float sigmoid(float v) { return __frcp_rn(1.0f + __expf(-v)); }
__device__ __forceinline__ float tanh_(float v) { return 1.0f - 2.0f * __frcp_rn(1.0f + __expf(2.0f * v)); }
#endif
__device__ __forceinline__ double sigmoid(double v) { return 1.0 / (1.0 + exp(-v)); }
__device__ __forceinline__ double tanh_(double v) { return tanh(v); }

// ---------------------------------------------------------------------------
// The gate equations, written once for every kernel. x_* is a gate's input
// part (x_t W_i^T plus the folded biases), h_* its recurrent part (W_h h_{t-1}).
// Reset-after's candidate takes r * (W_hn h_{t-1} + b_hn); reset-before's takes
// W_hn (r * h_{t-1}), which its kernels compute between the gates and blend.
// ---------------------------------------------------------------------------
template <typename T>
struct Gates {
    T r, z, n, h;
};

// h_t = (1 - z) n + z h_{t-1}, as n + z (h_{t-1} - n): one multiply-add fewer
template <typename T>
__device__ __forceinline__ T blend(T n, T z, T h_old) {
    return n + z * (h_old - n);
}

template <typename T>
__device__ __forceinline__ Gates<T> gates_after(T x_r, T h_r, T x_z, T h_z, T x_n, T h_n, T b_hn, T h_old) {
    Gates<T> g;
    g.r = sigmoid(x_r + h_r);
    g.z = sigmoid(x_z + h_z);
    g.n = tanh_(x_n + g.r * (h_n + b_hn));
    g.h = blend(g.n, g.z, h_old);
    return g;
}

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

__device__ __forceinline__ float madd(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double madd(double a, double b, double c) { return fma(a, b, c); }

// Step s of a sequence of length len visits time index s forward, len - 1 - s in reverse,
// so the reverse direction starts at each sequence's own last step.
__device__ __forceinline__ int time_index(int s, int len, bool reverse) { return reverse ? len - 1 - s : s; }

// The three values of a unit at one time step (or its three folded biases): r's, z's and n's, H apart.
// The kernels add the biases in the gate math: an add right after the loads would stall the step on
// them (measured on an H100: 0.44 -> 0.82 us a step at H=32), where the loads alone are issued a
// step ahead and land in time.
template <typename T>
__device__ __forceinline__ void load_three(const T* g, int H, T& r, T& z, T& n) {
    r = __ldg(g);
    z = __ldg(g + H);
    n = __ldg(g + 2 * H);
}

// The per-step kernels run one thread per element in a grid-stride loop:
//   for (long long i = grid_first(); i < total; i += grid_stride())
__device__ __forceinline__ long long grid_first() {
    return blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride() { return static_cast<long long>(gridDim.x) * blockDim.x; }

// One thread's (direction, sequence, unit) of a per-step kernel (gru_stepwise.cu, gru_backward.cu), from its
// index i into (D, B, H): sequence b is alive at step s while s < lengths[b], and direction 1 visits
// t = lengths[b] - 1 - s.
struct StepIndex {
    int d, b, u, len, t;
    bool alive;
};

__device__ __forceinline__ StepIndex step_index(long long i, int s, int B, int H, const int* lengths) {
    StepIndex x;
    x.u = static_cast<int>(i % H);
    const long long db = i / H;
    x.b = static_cast<int>(db % B);
    x.d = static_cast<int>(db / B);
    x.len = lengths[x.b];
    x.alive = s < x.len;
    x.t = x.d == 1 ? x.len - 1 - s : s;
    return x;
}

__device__ __forceinline__ long long gx_index(const StepIndex& x, int B, int D, int H) {
    return ((static_cast<long long>(x.t) * B + x.b) * D + x.d) * 3LL * H + x.u;
}

__device__ __forceinline__ long long step_gate_index(const StepIndex& x, int g, int seq_len, int B, int H) {
    return ((static_cast<long long>(x.d * 3 + g) * seq_len + x.t) * B + x.b) * H + x.u;
}

// Sum over the 32 lanes of a warp; every lane gets the total. All 32 lanes must call it.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int mask = 16; mask > 0; mask >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, mask);
    }
    return v;
}

// ---------------------------------------------------------------------------
// Grid-wide barrier for a persistent kernel.
//
// The kernel is launched with cuLaunchCooperativeKernel, which guarantees that
// every block is resident at once (so spinning cannot deadlock), but the
// barrier itself is hand-rolled rather than cooperative_groups::grid_group::sync():
// that one makes CuPy compile with --device-c and link libcudadevrt, which needs
// a CUDA toolkit on the user's machine; this needs nothing beyond the driver.
//
// One monotonically increasing counter, zeroed by the host before the launch.
// Episode k of the barrier waits until the counter reaches k * nblocks; the
// comparison is wrap-safe. Thread 0 of each block arrives for its block after
// a __syncthreads(), with a fence that publishes the block's writes (release);
// its acquire load plus the closing __syncthreads() makes every other block's
// writes visible to the whole block.
// ---------------------------------------------------------------------------
#ifndef GRU_EMULATION
__device__ __forceinline__ unsigned int load_acquire(const unsigned int* p) {
    unsigned int v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void spin_pause() { __nanosleep(32); }
#endif

// ---------------------------------------------------------------------------
// Weight loads with an L2 eviction policy (sm_80 and newer; plain loads before).
// The persistent kernel reads the weight rows that do not fit on chip from
// global memory every step. When they exceed L2 they would evict each other
// in turn and every step would read them all from device memory; loading a
// budgeted share as evict_last and the rest as evict_first keeps that share in
// L2 across steps.
// ---------------------------------------------------------------------------
#ifndef GRU_EMULATION
__device__ __forceinline__ unsigned long long l2_policy(bool keep) {
    unsigned long long policy = 0;
#if __CUDA_ARCH__ >= 800
    if (keep) {
        asm("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
    } else {
        asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    }
#endif
    return policy;
}

__device__ __forceinline__ float4 load_with_policy(const float4* p, unsigned long long policy) {
#if __CUDA_ARCH__ >= 800
    float4 v;
    asm("ld.global.nc.L2::cache_hint.v4.f32 {%0, %1, %2, %3}, [%4], %5;"
        : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
        : "l"(p), "l"(policy));
    return v;
#else
    return __ldg(p);
#endif
}

__device__ __forceinline__ double2 load_with_policy(const double2* p, unsigned long long policy) {
#if __CUDA_ARCH__ >= 800
    double2 v;
    asm("ld.global.nc.L2::cache_hint.v2.f64 {%0, %1}, [%2], %3;" : "=d"(v.x), "=d"(v.y) : "l"(p), "l"(policy));
    return v;
#else
    return __ldg(p);
#endif
}
#endif

struct GridBarrier {
    unsigned int* counter;
    unsigned int target;
    unsigned int nblocks;

    __device__ __forceinline__ GridBarrier(unsigned int* counter_, unsigned int nblocks_)
        : counter(counter_), target(0u), nblocks(nblocks_) {}

    __device__ __forceinline__ void sync() {
        __syncthreads();
        target += nblocks;
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(counter, 1u);
            while (static_cast<int>(load_acquire(counter) - target) < 0) {
                spin_pause();
            }
            __threadfence();
        }
        __syncthreads();
    }
};

}  // namespace gru
