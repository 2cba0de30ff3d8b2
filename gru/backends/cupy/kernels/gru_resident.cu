// Register-resident GRU recurrence for small hidden sizes: one block per
// (sequence, direction) runs every time step with W_hh held in registers.
//
// Why: for small H a step is too little work to spread over the GPU; what
// costs is latency. The persistent kernel exchanges h between blocks through
// L2 and a grid barrier every step (microseconds). Here the whole layer of
// one sequence lives in one block: W_hh in registers (the fastest storage
// there is: shared memory could not feed it fast enough), h in shared memory,
// one __syncthreads() per step (two for reset-before). Sequences and
// directions are independent blocks, so a batch fills the multiprocessors
// with no grid-wide synchronisation and no cooperative launch.
//
// Work split (one block)
//   KS = 2^ks_log2 threads per hidden unit, each owning a chunk of KC
//   consecutive columns of that unit's three rows (r, z, n) of W_hh:
//   thread tid -> unit u = tid / KS, chunk c = tid % KS, columns
//   [c*KC, c*KC + KC). A step is 3*KC fused multiply-adds per thread, then a
//   shuffle reduction over the unit's KS lanes (KS divides 32, so they share
//   a warp); lane c == 0 applies the gate math and writes the unit's new h.
//   Threads past the last unit hold zero weights and only join the shuffles.
//
// Shared memory: h as KS chunks of KC values, each chunk padded by one 16-byte
// vector so that the KS chunks a warp reads at once fall in different banks;
// two such buffers (h_{t-1} and h_t alternate), plus one for r * h_{t-1}
// (reset-before). Columns past H are zero, so the last chunk needs no bounds.
//
// Variable lengths, time indices and layouts as in gru_persistent.cu:
//   gx     (T, B, D, 3H)  the input projections, without biases
//   gx_bias (D, 3H)       b_ih plus b_hr, b_hz (and b_hn for reset-before): added here as gx is
//                         read, so the host launches no pass over gx to add them
//   w_hh   (D, 3H, Hp)    rows zero-padded to Hp
//   b_hn   (D, H)         reset-after only
//   h0, h_n (D, B, H)
//   out    (T, B, D*H)    zero-filled by the host; written while s < lengths[b]
//   gates  (D, 3, T, B, H) r, z, n (zero-filled), written when has_gates
#include "gru_common.cuh"

namespace gru {

// Component e (a compile-time constant once unrolled) of a 16-byte vector.
__device__ __forceinline__ float component(const float4& v, int e) {
    return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
}
__device__ __forceinline__ double component(const double2& v, int e) { return e == 0 ? v.x : v.y; }

// Index of column k in the chunk-padded shared-memory layout of h.
template <typename T, int KC>
__device__ __forceinline__ int resident_slot(int k) {
    return (k / KC) * (KC + Vec<T>::width) + k % KC;
}

// The thread's partial dot products of its rows [g0, g0 + NG) with its chunk of hs.
// Two accumulators per row halve the dependent-FMA chain.
template <typename T, int KC, int NG>
__device__ __forceinline__ void resident_dots(const T (&w)[3][KC], int g0, const T* hs, int c, T (&acc)[3]) {
    typedef typename Vec<T>::type V;
    const int VW = Vec<T>::width;
    const V* hv = reinterpret_cast<const V*>(hs + c * (KC + VW));
    T even[NG], odd[NG];
#pragma unroll
    for (int g = 0; g < NG; ++g) even[g] = odd[g] = T(0);
#pragma unroll
    for (int i = 0; i < KC / VW; ++i) {
        const V h = hv[i];
#pragma unroll
        for (int e = 0; e < VW; ++e) {
#pragma unroll
            for (int g = 0; g < NG; ++g) {
                if ((i * VW + e) % 2 == 0) {
                    even[g] = madd(w[g0 + g][i * VW + e], component(h, e), even[g]);
                } else {
                    odd[g] = madd(w[g0 + g][i * VW + e], component(h, e), odd[g]);
                }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < NG; ++g) acc[g0 + g] = even[g] + odd[g];
}

// Sum over the KS lanes of a unit (aligned groups of KS consecutive lanes); all 32 lanes call it.
template <typename T>
__device__ __forceinline__ T unit_sum(T v, int ks) {
    for (int mask = ks >> 1; mask > 0; mask >>= 1) v += __shfl_xor_sync(0xffffffffu, v, mask);
    return v;
}

template <typename T, int KC, bool RESET_AFTER>
__device__ __forceinline__ void resident_body(const T* __restrict__ gx, const T* __restrict__ gx_bias,
                                              const T* __restrict__ w_hh,
                                              const T* __restrict__ b_hn, const int* __restrict__ lengths,
                                              const T* __restrict__ h0, T* __restrict__ h_n, T* __restrict__ out,
                                              T* __restrict__ gates, int has_gates, int seq_len, int B, int H, int Hp,
                                              int D, int ks_log2, unsigned char* smem_raw) {
    const int VW = Vec<T>::width;
    const int b = blockIdx.x;
    const int d = blockIdx.y;
    const bool reverse = d == 1;
    const int tid = threadIdx.x;
    const int KS = 1 << ks_log2;
    const int u = tid >> ks_log2;
    const int c = tid & (KS - 1);
    const bool owner = c == 0 && u < H;
    const int buffer = KS * (KC + VW);  // one chunk-padded copy of h

    T* h_s = reinterpret_cast<T*>(smem_raw);  // [2][buffer], then rh_s [buffer] for reset-before
    T* rh_s = h_s + 2 * buffer;
    const int copies = RESET_AFTER ? 2 : 3;
    for (int i = tid; i < copies * buffer; i += blockDim.x) h_s[i] = T(0);

    // This thread's weights: rows u, H + u, 2H + u of the direction, columns [c*KC, c*KC + KC).
    T w[3][KC];
    {
        const T* rows = w_hh + static_cast<long long>(d) * 3 * H * Hp;
#pragma unroll
        for (int g = 0; g < 3; ++g) {
#pragma unroll
            for (int i = 0; i < KC; ++i) {
                const int k = c * KC + i;
                w[g][i] = (u < H && k < H) ? __ldg(rows + static_cast<long long>(g * H + u) * Hp + k) : T(0);
            }
        }
    }
    const T bias_n = (RESET_AFTER && owner) ? b_hn[d * H + u] : T(0);
    const int len = lengths[b];
    const int slot = resident_slot<T, KC>(u);
    __syncthreads();  // the zero fill is done before h0 lands in it
    if (owner) h_s[slot] = h0[(d * B + b) * H + u];
    __syncthreads();

    // Offsets of this (sequence, unit) at time 0; a time step t adds t times the stride. 32-bit
    // arithmetic saves the registers that 64-bit offsets would take (the weights need them): the
    // host picks this kernel only when gx, the largest tensor, has fewer than 2^31 elements.
    const int gx_stride = B * D * 3 * H;
    const int out_stride = B * D * H;
    const int gate_stride = B * H;             // one time step within a gate
    const int gate_step = gate_stride * seq_len;  // from one gate to the next
    const int gx_at = (b * D + d) * 3 * H + u;
    const int out_at = b * D * H + d * H + u;
    const int gate_at = d * 3 * gate_step + b * H + u;
    T g_r = T(0), g_z = T(0), g_n = T(0);
    T x_bias_r = T(0), x_bias_z = T(0), x_bias_n = T(0);  // gx_bias of the unit
    if (owner) load_three(gx_bias + d * 3 * H + u, H, x_bias_r, x_bias_z, x_bias_n);
    if (owner && len > 0) {
        load_three(gx + (gx_at + time_index(0, len, reverse) * gx_stride), H, g_r, g_z, g_n);
    }

    // The next step's projections load after this step's dot products (so they hold no registers
    // during them) and arrive long before the next step's gate math needs them.
    int s = 0;
    auto load_next = [&]() {
        if (owner && s + 1 < len) {
            load_three(gx + (gx_at + time_index(s + 1, len, reverse) * gx_stride), H, g_r, g_z, g_n);
        }
    };
    for (; s < len; ++s) {
        const T* hcur = h_s + (s & 1) * buffer;
        T* hnext = h_s + ((s + 1) & 1) * buffer;
        const int t = time_index(s, len, reverse);
        const T pre_r = g_r, pre_z = g_z, pre_n = g_n;
        T acc[3];
        if (RESET_AFTER) {
            resident_dots<T, KC, 3>(w, 0, hcur, c, acc);
            load_next();
            const T a_r = unit_sum(acc[0], KS);
            const T a_z = unit_sum(acc[1], KS);
            const T a_n = unit_sum(acc[2], KS);
            if (owner) {
                const Gates<T> g = gates_after(pre_r + x_bias_r, a_r, pre_z + x_bias_z, a_z, pre_n + x_bias_n, a_n,
                                               bias_n, hcur[slot]);
                hnext[slot] = g.h;
                out[out_at + t * out_stride] = g.h;
                if (has_gates) {
                    gates[gate_at + t * gate_stride] = g.r;
                    gates[gate_at + t * gate_stride + gate_step] = g.z;
                    gates[gate_at + t * gate_stride + 2 * gate_step] = g.n;
                }
            }
            __syncthreads();
        } else {
            resident_dots<T, KC, 2>(w, 0, hcur, c, acc);
            load_next();
            const T a_r = unit_sum(acc[0], KS);
            const T a_z = unit_sum(acc[1], KS);
            T z = T(0);
            if (owner) {
                const T r = sigmoid((pre_r + x_bias_r) + a_r);
                z = sigmoid((pre_z + x_bias_z) + a_z);
                rh_s[slot] = r * hcur[slot];
                if (has_gates) {
                    gates[gate_at + t * gate_stride] = r;
                    gates[gate_at + t * gate_stride + gate_step] = z;
                }
            }
            __syncthreads();
            resident_dots<T, KC, 1>(w, 2, rh_s, c, acc);
            const T a_n = unit_sum(acc[2], KS);
            if (owner) {
                const T n = tanh_((pre_n + x_bias_n) + a_n);
                const T h = blend(n, z, hcur[slot]);
                hnext[slot] = h;
                out[out_at + t * out_stride] = h;
                if (has_gates) gates[gate_at + t * gate_stride + 2 * gate_step] = n;
            }
            __syncthreads();
        }
    }
    if (owner) h_n[(d * B + b) * H + u] = h_s[(len & 1) * buffer + slot];
}

}  // namespace gru

// The most threads per block for KC columns of T per thread: 512 (128 registers each) while the
// weights take at most 48 registers, else 256 (255 registers each, up to 192 for weights).
// backend.py's resident_max_threads says the same.
#define GRU_RESIDENT_MAX_THREADS(T, KC) (3 * (KC) * sizeof(T) / 4 > 48 ? 256 : 512)

// KC: columns per thread (a multiple of the vector width); RESET_AFTER: the variant.
// Launch bounds (threads, 1): one block per multiprocessor is all the kernel needs,
// and it lets ptxas give each thread the registers that hold 3*KC weights.
template <typename T, int KC, bool RESET_AFTER>
__global__ void __launch_bounds__(GRU_RESIDENT_MAX_THREADS(T, KC), 1)
    gru_resident(const T* __restrict__ gx, const T* __restrict__ gx_bias, const T* __restrict__ w_hh,
                 const T* __restrict__ b_hn,
                 const int* __restrict__ lengths, const T* __restrict__ h0, T* __restrict__ h_n, T* __restrict__ out,
                 T* __restrict__ gates, int has_gates, int seq_len, int B, int H, int Hp, int D, int ks_log2) {
    GRU_DYNAMIC_SMEM(smem_raw);
    gru::resident_body<T, KC, RESET_AFTER>(gx, gx_bias, w_hh, b_hn, lengths, h0, h_n, out, gates, has_gates, seq_len, B, H,
                                           Hp, D, ks_log2, smem_raw);
}

// ---------------------------------------------------------------------------------------------
// The row-per-thread layout (float, reset-after): thread j holds row j of the direction's W_hh,
// all HC columns (H padded), in registers; 3H threads, so at H = 128 a block has 12 warps where
// the layout above has 8, each thread 128 multiply-adds a step instead of 192, and no shuffles.
// A step: every thread's dot product into shared memory, a barrier, then threads 0..H-1 apply the
// gate math of their unit and update h in place (h[u] is read and written by thread u alone once
// the products are made), a barrier. Two barriers a step instead of one. Chosen by
// ResidentPlan.layout (see _plans.py): "auto" takes it up to 64 units, where an H100 ran it faster
// than the layout above (every thread reloads all of h each step, which costs at 128).
// ---------------------------------------------------------------------------------------------
namespace gru {

template <int HC>
__device__ __forceinline__ void resident_rows_body(const float* __restrict__ gx, const float* __restrict__ gx_bias,
                                                   const float* __restrict__ w_hh,
                                                   const float* __restrict__ b_hn, const int* __restrict__ lengths,
                                                   const float* __restrict__ h0, float* __restrict__ h_n,
                                                   float* __restrict__ out, float* __restrict__ gates, int has_gates,
                                                   int seq_len, int B, int H, int Hp, int D, unsigned char* smem_raw) {
    const int b = blockIdx.x;
    const int d = blockIdx.y;
    const bool reverse = d == 1;
    const int j = threadIdx.x;  // row j of W_hh: gate j / H, unit j % H
    const bool has_row = j < 3 * H;
    const bool owner = j < H;  // the gate math of unit j
    float* h_s = reinterpret_cast<float*>(smem_raw);  // [HC], zero past H
    float* a_s = h_s + HC;                            // [3H]: this step's W_hh h_{t-1}, per row

    float w[HC];
    {
        const float* row = w_hh + (static_cast<long long>(d) * 3 * H + (has_row ? j : 0)) * Hp;
#pragma unroll
        for (int k = 0; k < HC; ++k) w[k] = (has_row && k < H) ? __ldg(row + k) : 0.0f;
    }
    for (int k = j; k < HC; k += blockDim.x) h_s[k] = 0.0f;
    __syncthreads();  // the zero fill is done before h0 lands in it
    const int len = lengths[b];
    const float bias_n = owner ? b_hn[d * H + j] : 0.0f;
    if (owner) h_s[j] = h0[(d * B + b) * H + j];
    __syncthreads();

    const int gx_stride = B * D * 3 * H;
    const int out_stride = B * D * H;
    const int gate_stride = B * H;
    const int gate_step = gate_stride * seq_len;
    const int gx_at = (b * D + d) * 3 * H + j;
    const int out_at = b * D * H + d * H + j;
    const int gate_at = d * 3 * gate_step + b * H + j;
    float g_r = 0.0f, g_z = 0.0f, g_n = 0.0f;
    float x_bias_r = 0.0f, x_bias_z = 0.0f, x_bias_n = 0.0f;  // gx_bias of the unit
    if (owner) load_three(gx_bias + d * 3 * H + j, H, x_bias_r, x_bias_z, x_bias_n);
    auto load = [&](int s) {
        if (owner && s < len) {
            load_three(gx + (gx_at + time_index(s, len, reverse) * gx_stride), H, g_r, g_z, g_n);
        }
    };
    load(0);
    const float4* hv = reinterpret_cast<const float4*>(h_s);
    for (int s = 0; s < len; ++s) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // four chains: three warps per scheduler hide the rest
#pragma unroll
        for (int i = 0; i < HC / 4; ++i) {
            const float4 h = hv[i];
            acc[0] = fmaf(w[4 * i], h.x, acc[0]);
            acc[1] = fmaf(w[4 * i + 1], h.y, acc[1]);
            acc[2] = fmaf(w[4 * i + 2], h.z, acc[2]);
            acc[3] = fmaf(w[4 * i + 3], h.w, acc[3]);
        }
        if (has_row) a_s[j] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        __syncthreads();  // every product is made (and every read of h_{t-1} done)
        if (owner) {
            const int t = time_index(s, len, reverse);
            const float pre_r = g_r, pre_z = g_z, pre_n = g_n;
            load(s + 1);  // the next step's projections, long before they are needed
            const Gates<float> g = gates_after(pre_r + x_bias_r, a_s[j], pre_z + x_bias_z, a_s[H + j], pre_n + x_bias_n,
                                              a_s[2 * H + j], bias_n, h_s[j]);
            h_s[j] = g.h;
            out[out_at + t * out_stride] = g.h;
            if (has_gates) {
                gates[gate_at + t * gate_stride] = g.r;
                gates[gate_at + t * gate_stride + gate_step] = g.z;
                gates[gate_at + t * gate_stride + 2 * gate_step] = g.n;
            }
        }
        __syncthreads();  // h_t is whole before the next step's products read it
    }
    if (owner) h_n[(d * B + b) * H + j] = h_s[j];
}

}  // namespace gru

// HC: columns held per row (H rounded up to a multiple of 4, at most HC); 3H threads, at most 384.
template <int HC>
__global__ void __launch_bounds__(384, 1)
    gru_resident_rows(const float* __restrict__ gx, const float* __restrict__ gx_bias, const float* __restrict__ w_hh,
                      const float* __restrict__ b_hn,
                      const int* __restrict__ lengths, const float* __restrict__ h0, float* __restrict__ h_n,
                      float* __restrict__ out, float* __restrict__ gates, int has_gates, int seq_len, int B, int H,
                      int Hp, int D) {
    GRU_DYNAMIC_SMEM(smem_raw);
    gru::resident_rows_body<HC>(gx, gx_bias, w_hh, b_hn, lengths, h0, h_n, out, gates, has_gates, seq_len, B, H, Hp, D,
                                smem_raw);
}
