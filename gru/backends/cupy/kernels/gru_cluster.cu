// Cluster-resident GRU recurrence (sm_90, float32, reset-after) for small hidden sizes.
//
// Why: the register-resident kernel (gru_resident.cu) runs a whole sequence in
// one block, so each step's 3*H*H multiply-adds issue on one multiprocessor:
// at H = 128 that is 384 cycles of FMA issue a step before any latency. Here a
// cluster of C blocks (C multiprocessors of one GPC, launched together by the
// hardware) shares a sequence: block `rank` owns U = ceil(H / C) hidden units
// and their 3U rows of W_hh, in registers, so a step issues C times fewer
// multiply-adds per multiprocessor. Each block keeps all of h in its shared
// memory; the owner of a unit writes its new value into every block of the
// cluster (distributed shared memory) and one cluster barrier a step makes
// h_t whole everywhere. No global memory and no grid barrier in the loop.
//
// Work split (one block of the cluster)
//   row = tid / L (L = 4 lanes per row), gate row / U, local unit row % U:
//   W_hh row gate*H + rank*U + row % U. Lane `lane` holds the float4 columns
//   i*L + lane (i < HC/(4L)) of that row, so the L lanes of a row read
//   consecutive 16-byte vectors of h (no bank conflicts) and one step is
//   HC/L multiply-adds per thread in four chains, then two shuffles.
//   Threads 0..U-1 apply the gate math of their unit.
//
// Shared memory: h_{t-1} and h_t (two buffers of HC floats, zero past H,
// alternating), then the 3U row products of the step.
//
// Layouts as in gru_resident.cu:
//   gx     (T, B, D, 3H)  with b_hr, b_hz added (reset-after)
//   w_hh   (D, 3H, Hp)    rows zero-padded to Hp
//   b_hn   (D, H)
//   h0, h_n (D, B, H)
//   out    (T, B, D*H)    written while s < lengths[b]
//   gates  (D, 3, T, B, H) r, z, n, written when has_gates
// Grid (B*C, D), clusters of C consecutive blocks along x: cluster b runs sequence b.
#include "gru_common.cuh"

#if defined(GRU_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900)
#define GRU_CLUSTER_DIMS(c)
#else
#define GRU_CLUSTER_DIMS(c) __cluster_dims__(c, 1, 1)
#endif

namespace gru {

template <int C, int HC>
__device__ __forceinline__ void cluster_body(const float* __restrict__ gx, const float* __restrict__ w_hh,
                                             const float* __restrict__ b_hn, const int* __restrict__ lengths,
                                             const float* __restrict__ h0, float* __restrict__ h_n,
                                             float* __restrict__ out, float* __restrict__ gates, int has_gates,
                                             int seq_len, int B, int H, int Hp, int D, unsigned char* smem_raw) {
    constexpr int L = 4;           // lanes per row
    constexpr int Q = HC / 4 / L;  // float4 columns per lane
    const int rank = cluster_rank<C>();
    const int b = blockIdx.x / C;
    const int d = blockIdx.y;
    const bool reverse = d == 1;
    const int U = (H + C - 1) / C;  // units per block; the last blocks may own fewer (or none)
    const int u0 = rank * U;
    const int units = imax(0, imin(U, H - u0));
    const int tid = threadIdx.x;
    const int row = tid / L;
    const int lane = tid % L;
    const int local = row % U;
    const bool has_row = row < 3 * U && local < units;
    const bool owner = tid < units;  // the gate math of unit u0 + tid

    float* h_s = reinterpret_cast<float*>(smem_raw);  // [2][HC]
    float* a_s = h_s + 2 * HC;                        // [3U]

    float w[4 * Q];
    {
        const float* w_row = w_hh + (static_cast<long long>(d) * 3 * H + (has_row ? (row / U) * H + u0 + local : 0)) * Hp;
#pragma unroll
        for (int i = 0; i < Q; ++i) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int k = 4 * (i * L + lane) + e;
                w[4 * i + e] = (has_row && k < H) ? __ldg(w_row + k) : 0.0f;
            }
        }
    }
    for (int k = tid; k < 2 * HC; k += blockDim.x) h_s[k] = (k < H) ? h0[(d * B + b) * H + k] : 0.0f;
    const int len = lengths[b];
    const float bias_n = owner ? b_hn[d * H + u0 + tid] : 0.0f;

    const int gx_stride = B * D * 3 * H;
    const int out_stride = B * D * H;
    const int gate_stride = B * H;
    const int gate_step = gate_stride * seq_len;
    const int unit = u0 + tid;
    const int gx_at = (b * D + d) * 3 * H + unit;
    const int out_at = b * D * H + d * H + unit;
    const int gate_at = d * 3 * gate_step + b * H + unit;
    float g_r = 0.0f, g_z = 0.0f, g_n = 0.0f;
    auto load = [&](int s) {
        if (owner && s < len) {
            const float* g = gx + (gx_at + time_index(s, len, reverse) * gx_stride);
            g_r = __ldg(g);
            g_z = __ldg(g + H);
            g_n = __ldg(g + 2 * H);
        }
    };
    load(0);
    // every block of the cluster runs (its shared memory may be written) and holds h0
    cluster_sync<C>();

    for (int s = 0; s < len; ++s) {
        const float* hcur = h_s + (s & 1) * HC;
        float* hnext = h_s + ((s + 1) & 1) * HC;
        const float4* hv = reinterpret_cast<const float4*>(hcur);
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < Q; ++i) {
            const float4 h = hv[i * L + lane];
            acc[0] = fmaf(w[4 * i], h.x, acc[0]);
            acc[1] = fmaf(w[4 * i + 1], h.y, acc[1]);
            acc[2] = fmaf(w[4 * i + 2], h.z, acc[2]);
            acc[3] = fmaf(w[4 * i + 3], h.w, acc[3]);
        }
        float sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (lane == 0 && row < 3 * U) a_s[row] = sum;
        __syncthreads();  // every row's product is in a_s
        if (owner) {
            const int t = time_index(s, len, reverse);
            const float pre_r = g_r, pre_z = g_z, pre_n = g_n;
            load(s + 1);  // the next step's projections, long before they are needed
            const Gates<float> g =
                gates_after(pre_r, a_s[tid], pre_z, a_s[U + tid], pre_n, a_s[2 * U + tid], bias_n, hcur[unit]);
#pragma unroll
            for (int q = 0; q < C; ++q) cluster_store<C>(hnext + unit, q, g.h);
            out[out_at + t * out_stride] = g.h;
            if (has_gates) {
                gates[gate_at + t * gate_stride] = g.r;
                gates[gate_at + t * gate_stride + gate_step] = g.z;
                gates[gate_at + t * gate_stride + 2 * gate_step] = g.n;
            }
        }
        // h_t is whole in every block; every read of h_{t-1} and of a_s is done
        cluster_sync<C>();
    }
    if (owner) h_n[(d * B + b) * H + unit] = h_s[(len & 1) * HC + unit];
}

}  // namespace gru

// C: blocks per cluster (one sequence and direction); HC: columns of W_hh held (H <= HC,
// a multiple of 16). 3 * ceil(H / C) rows of 4 lanes: at most 768 threads (C = 2, H = 128).
template <int C, int HC>
__global__ void GRU_CLUSTER_DIMS(C) __launch_bounds__(768, 1)
    gru_resident_cluster(const float* __restrict__ gx, const float* __restrict__ w_hh, const float* __restrict__ b_hn,
                         const int* __restrict__ lengths, const float* __restrict__ h0, float* __restrict__ h_n,
                         float* __restrict__ out, float* __restrict__ gates, int has_gates, int seq_len, int B, int H,
                         int Hp, int D) {
    GRU_DYNAMIC_SMEM(smem_raw);
    gru::cluster_body<C, HC>(gx, w_hh, b_hn, lengths, h0, h_n, out, gates, has_gates, seq_len, B, H, Hp, D, smem_raw);
}
