// Per-step GRU kernel for large batches: the step's recurrent product and its
// gate math in ONE launch.
//
// Why: at large batch a step's product, (B x H) @ (H x 3H), is a real matrix
// product, but a thin one: cuBLAS spreads its few output tiles over few
// multiprocessors (about 9 TFLOP/s in float32 for B=256, H=512 on an H100),
// and the product's result makes a round trip through device memory before a
// second kernel applies the gates. Here each block computes a tile of 8 units
// x 128 sequences for all of the step's gate rows, keeps the sums in
// registers, and applies the gate math to them directly.
//
// Work split (template parameters UG, SPL)
//   block = 128 threads, 4 warps, in UG unit groups of 4 units and 4 / UG
//   sequence groups of 32 * SPL sequences: warp w takes units (w % UG) * 4 ..
//   + 3 and sequences (w / UG) * 32 * SPL .. of the block's tile of
//   UNITS = 4 * UG units x SEQS = 32 * SPL * (4 / UG) sequences; lane l takes
//   SPL consecutive sequences of its warp's. A thread so holds G x 4 x SPL
//   sums: G gate rows (below) of 4 units for SPL sequences. The host picks
//   the tile from the batch: 8 x 128 (UG 2, SPL 2) for large batches,
//   16 x 64 and 16 x 32 (UG 4, SPL 2 or 1) for smaller ones, so that few
//   lanes sit idle.
//   grid = (ceil(H / UNITS), ceil(B / SEQS), D).
//   The product runs over H in tiles of KT columns (32 floats, 16 doubles)
//   staged in shared memory,
//   weights as w_s[k][row] and states as h_s[k][sequence], so that a warp
//   reads each k's weights as one broadcast vector per gate and its
//   sequences' states as one contiguous 256-byte line. The next tile is
//   loaded into registers while the current one is multiplied.
//
// G, the phase of the step:
//   3  reset-after: rows r, z, n on h_{t-1}; the whole step.
//   2  reset-before, first half: rows r, z on h_{t-1}; writes r * h_{t-1}
//      (rh) and z (zbuf) for the second half, and the r and z gates.
//   1  reset-before, second half: row n on rh; the candidate and h_t.
//
// Conventions as in gru_stepwise.cu: gx (T, B, D, 3H) with b_hr, b_hz (and
// b_hn for reset-before) added; w_hh (D, 3H, H); states (D, B, H); out
// (T, B, D*H) and gates (D, 3, T, B, H) written while s < lengths[b];
// finished sequences carry their state; rh and z are 0 for them.
#include "gru_common.cuh"

namespace gru {

static const int FUSED_THREADS = 128;  // 4 warps

// Columns per shared-memory tile: 32 floats or 16 doubles (the tile's registers while the next one loads).
template <typename T>
struct FusedKT {
    static const int value = 128 / sizeof(T);
};

// v[0..N) = p[0..N), N = 4 or 2, as 16-byte (or 8-byte) vector loads from shared memory.
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x;
    v[1] = q.y;
    v[2] = q.z;
    v[3] = q.w;
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
    const double2 a = *reinterpret_cast<const double2*>(p);
    const double2 b = *reinterpret_cast<const double2*>(p + 2);
    v[0] = a.x;
    v[1] = a.y;
    v[2] = b.x;
    v[3] = b.y;
}
__device__ __forceinline__ void load2(const float* p, float (&v)[2]) {
    const float2 q = *reinterpret_cast<const float2*>(p);
    v[0] = q.x;
    v[1] = q.y;
}
__device__ __forceinline__ void load2(const double* p, double (&v)[2]) {
    const double2 q = *reinterpret_cast<const double2*>(p);
    v[0] = q.x;
    v[1] = q.y;
}
template <typename T>
__device__ __forceinline__ void load2(const T* p, T (&v)[1]) {
    v[0] = *p;
}

// Each thread's share of one tile: W_PER weights and H_PER states.
template <typename T, int G, int FUSED_UNITS, int FUSED_SEQS>
struct FusedTile {
    static const int FUSED_KT = FusedKT<T>::value;
    static const int W_PER = FUSED_KT * G * FUSED_UNITS / FUSED_THREADS;
    static const int H_PER = FUSED_KT * FUSED_SEQS / FUSED_THREADS;
    T w[W_PER];
    T h[H_PER];

    // Weights: consecutive threads take consecutive columns of a row (coalesced reads).
    // States: consecutive threads take consecutive sequences of a column (conflict-free
    // stores into h_s; the reads of one sequence's columns meet in L1).
    __device__ __forceinline__ void load(const T* w_dir, const T* hin_dir, int k0, int u0, int b0, int B, int H,
                                         int tid) {
#pragma unroll
        for (int i = 0; i < W_PER; ++i) {
            const int idx = tid + i * FUSED_THREADS;
            const int row = idx / FUSED_KT;  // gate-major: g * FUSED_UNITS + j
            const int k = k0 + idx % FUSED_KT;
            const int u = u0 + row % FUSED_UNITS;
            const int g = row / FUSED_UNITS;
            w[i] = (u < H && k < H) ? __ldg(w_dir + (static_cast<long long>(g) * H + u) * H + k) : T(0);
        }
#pragma unroll
        for (int i = 0; i < H_PER; ++i) {
            const int idx = tid + i * FUSED_THREADS;
            const int b = b0 + idx % FUSED_SEQS;
            const int k = k0 + idx / FUSED_SEQS;
            h[i] = (b < B && k < H) ? __ldg(hin_dir + static_cast<long long>(b) * H + k) : T(0);
        }
    }

    __device__ __forceinline__ void store(T* w_s, T* h_s, int tid) const {
#pragma unroll
        for (int i = 0; i < W_PER; ++i) {
            const int idx = tid + i * FUSED_THREADS;
            w_s[(idx % FUSED_KT) * G * FUSED_UNITS + idx / FUSED_KT] = w[i];
        }
#pragma unroll
        for (int i = 0; i < H_PER; ++i) {
            const int idx = tid + i * FUSED_THREADS;
            h_s[(idx / FUSED_SEQS) * FUSED_SEQS + idx % FUSED_SEQS] = h[i];
        }
    }
};

}  // namespace gru

template <typename T, int G, int UG, int SPL>
__global__ void __launch_bounds__(gru::FUSED_THREADS, 1)
    gru_step_fused(const T* __restrict__ gx, const T* __restrict__ w_hh, const T* __restrict__ b_hn,
                   const int* __restrict__ lengths, const T* __restrict__ hin, const T* __restrict__ hcur,
                   T* __restrict__ hnext, T* __restrict__ rh, T* __restrict__ zbuf, T* __restrict__ out,
                   T* __restrict__ gates, int has_gates, int s, int seq_len, int B, int H, int D) {
    using namespace gru;
    const int FUSED_KT = FusedKT<T>::value;
    const int FUSED_UNITS = 4 * UG;
    const int SEQS_PER_WARP = 32 * SPL;
    const int FUSED_SEQS = SEQS_PER_WARP * (4 / UG);
    GRU_DYNAMIC_SMEM(smem_raw);
    T* w_s = reinterpret_cast<T*>(smem_raw);           // [FUSED_KT][G * FUSED_UNITS]
    T* h_s = w_s + FUSED_KT * G * FUSED_UNITS;         // [FUSED_KT][FUSED_SEQS]
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int unit_group = warp % UG;  // units unit_group * 4 .. + 3 of the block
    const int seq_group = warp / UG;   // sequences seq_group * SEQS_PER_WARP .. of the block
    const int d = blockIdx.z;
    const int u0 = blockIdx.x * FUSED_UNITS;
    const int b0 = blockIdx.y * FUSED_SEQS;
    const T* w_dir = w_hh + static_cast<long long>(d) * 3 * H * H + (G == 1 ? 2LL * H * H : 0LL);
    const T* hin_dir = hin + static_cast<long long>(d) * B * H;

    T acc[G][4][SPL];
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int i = 0; i < SPL; ++i) acc[g][j][i] = T(0);
        }
    }

    FusedTile<T, G, 4 * UG, 32 * SPL * (4 / UG)> tile;
    tile.load(w_dir, hin_dir, 0, u0, b0, B, H, tid);
    tile.store(w_s, h_s, tid);
    __syncthreads();
    for (int k0 = 0; k0 < H; k0 += FUSED_KT) {
        const bool more = k0 + FUSED_KT < H;
        if (more) tile.load(w_dir, hin_dir, k0 + FUSED_KT, u0, b0, B, H, tid);  // in flight during the products
#pragma unroll 4
        for (int k = 0; k < FUSED_KT; ++k) {
            T hv[SPL];
            load2(h_s + k * FUSED_SEQS + seq_group * SEQS_PER_WARP + SPL * lane, hv);
#pragma unroll
            for (int g = 0; g < G; ++g) {
                T wv[4];
                load4(w_s + k * G * FUSED_UNITS + g * FUSED_UNITS + unit_group * 4, wv);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
#pragma unroll
                    for (int i = 0; i < SPL; ++i) acc[g][j][i] = madd(wv[j], hv[i], acc[g][j][i]);
                }
            }
        }
        __syncthreads();  // every thread is done with this tile
        if (more) {
            tile.store(w_s, h_s, tid);
            __syncthreads();
        }
    }

    // Gate math on the sums in registers.
    const long long gate_step = static_cast<long long>(seq_len) * B * H;
#pragma unroll
    for (int i = 0; i < SPL; ++i) {
        const int b = b0 + seq_group * SEQS_PER_WARP + SPL * lane + i;
        if (b >= B) continue;
        const int len = lengths[b];
        const bool alive = s < len;
        const int t = time_index(s, len, d == 1);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int u = u0 + unit_group * 4 + j;
            if (u >= H) continue;
            const long long state = (static_cast<long long>(d) * B + b) * H + u;
            const T* g3 = gx + ((static_cast<long long>(t) * B + b) * D + d) * 3 * H + u;
            const long long at = ((static_cast<long long>(d * 3) * seq_len + t) * B + b) * H + u;
            const long long out_at = (static_cast<long long>(t) * B + b) * D * H + static_cast<long long>(d) * H + u;
            if (G == 3) {
                const T h_old = hcur[state];
                T h = h_old;
                if (alive) {
                    const T r = sigmoid(g3[0] + acc[0][j][i]);
                    const T z = sigmoid(g3[H] + acc[1 % G][j][i]);
                    const T n = tanh_(g3[2 * H] + r * (acc[2 % G][j][i] + b_hn[d * H + u]));
                    h = n + z * (h_old - n);
                    out[out_at] = h;
                    if (has_gates) {
                        gates[at] = r;
                        gates[at + gate_step] = z;
                        gates[at + 2 * gate_step] = n;
                    }
                }
                hnext[state] = h;
            } else if (G == 2) {
                T r_h = T(0), z = T(0);
                if (alive) {
                    const T r = sigmoid(g3[0] + acc[0][j][i]);
                    z = sigmoid(g3[H] + acc[1 % G][j][i]);
                    r_h = r * hcur[state];
                    if (has_gates) {
                        gates[at] = r;
                        gates[at + gate_step] = z;
                    }
                }
                rh[state] = r_h;
                zbuf[state] = z;
            } else {
                const T h_old = hcur[state];
                T h = h_old;
                if (alive) {
                    const T n = tanh_(g3[2 * H] + acc[0][j][i]);
                    h = n + zbuf[state] * (h_old - n);
                    out[out_at] = h;
                    if (has_gates) gates[at + 2 * gate_step] = n;
                }
                hnext[state] = h;
            }
        }
    }
}
