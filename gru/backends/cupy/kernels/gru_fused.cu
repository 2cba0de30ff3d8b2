// Per-step GRU kernel for large batches: the step's recurrent product and its
// gate math in ONE launch.
//
// Why: at large batch a step's product, (B x H) @ (H x 3H), is a real matrix
// product, but a thin one: cuBLAS spreads its few output tiles over few
// multiprocessors (about 9 TFLOP/s in float32 for B=256, H=512 on an H100),
// and the product's result makes a round trip through device memory before a
// second kernel applies the gates. Here each block computes a tile of units x
// sequences for all of the step's gate rows, keeps the sums in registers, and
// applies the gate math to them directly.
//
// Work split (template parameters UG, SPL)
//   block = 128 threads, 4 warps, in UG unit groups of 4 units and 4 / UG
//   sequence groups of 32 * SPL sequences: warp w takes units (w % UG) * 4 ..
//   + 3 and sequences (w / UG) * 32 * SPL .. of the block's tile of
//   UNITS = 4 * UG units x SEQS = 32 * SPL * (4 / UG) sequences; lane l takes
//   sequences l, l + 32, ... of its warp's. A thread so holds G x 4 x SPL
//   sums: G gate rows (below) of 4 units for SPL sequences. The host picks
//   the tile from the batch: 8 x 128 (UG 2, SPL 2) for large batches,
//   16 x 64 and 16 x 32 (UG 4, SPL 2 or 1) for smaller ones, so that few
//   lanes sit idle.
//   grid = (ceil(H / UNITS), ceil(B / SEQS), D).
//
// The product runs over the Hp columns in tiles of KT (32 floats or 16
// doubles: 128 bytes) that a ring of `stages` (2 or 3, the host's choice by
// shared memory) buffers brings in with asynchronous copies (cp.async, sm_80
// and newer), stages - 1 tiles ahead of the one being multiplied, so that the
// copies' latency hides behind the products. A buffer holds the tile's weight rows and state rows as they lie
// in memory, each row padded by one 16-byte vector so that a warp's reads of
// 32 different rows fall in different banks; a warp reads its 4 units'
// weights as broadcast vectors and its sequences' states as one vector each.
//
// G, the phase of the step:
//   3  reset-after: rows r, z, n on h_{t-1}; the whole step.
//   2  reset-before, first half: rows r, z on h_{t-1}; writes r * h_{t-1}
//      (rh) and z (zbuf) for the second half, and the r and z gates.
//   1  reset-before, second half: row n on rh; the candidate and h_t.
//
// Layouts: gx (T, B, D, 3H) with b_hr, b_hz (and b_hn for reset-before)
// added; w_hh (D, 3H, Hp) rows zero-padded to Hp (a multiple of the vector
// width, so every row starts 16-byte aligned); the states hin, hcur, hnext, rh
// and zbuf (D, B, Hp), pads zero; out (T, B, D*H) and gates (D, 3, T, B, H)
// written while s < lengths[b]; finished sequences carry their state; rh and
// z are 0 for them.
#include "gru_common.cuh"

namespace gru {

static const int FUSED_THREADS = 128;  // 4 warps

// Columns per tile: 128 bytes of each row.
template <typename T>
struct FusedKT {
    static const int value = 128 / sizeof(T);
};

// Copy one 16-byte vector from global to shared memory without registers; a
// source of `bytes` < 16 (0 here: outside the matrix) zero-fills the rest.
// Before sm_80 (no cp.async) a plain load and store.
#ifndef GRU_EMULATION
__device__ __forceinline__ void copy_async16(void* dst, const void* src, int bytes) {
#if __CUDA_ARCH__ >= 800
    const unsigned int to = static_cast<unsigned int>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(src), "r"(bytes) : "memory");
#else
    float4 v;
    set_zero(v);
    if (bytes > 0) v = *reinterpret_cast<const float4*>(src);
    *reinterpret_cast<float4*>(dst) = v;
#endif
}
__device__ __forceinline__ void copy_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Wait until at most `pending` (0 or 1) committed groups are still in flight.
__device__ __forceinline__ void copy_async_wait(int pending) {
#if __CUDA_ARCH__ >= 800
    if (pending > 0) {
        asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    } else {
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    }
#endif
}
#endif

// Queue the copies of tile `tile` (columns tile * KT ..) into buffer `buf`: the block's G * UNITS
// weight rows, then its SEQS state rows, each LD = KT + one vector long.
template <typename T, int G, int UNITS, int SEQS>
__device__ __forceinline__ void fused_fetch(T* buf, int tile, const T* w_dir, const T* hin_dir, int u0, int b0, int B,
                                            int H, int Hp, int tid) {
    typedef typename Vec<T>::type V;
    const int VW = Vec<T>::width;
    const int KT = FusedKT<T>::value;
    const int LD = KT + VW;
    const int per_row = KT / VW;
    const int k0 = tile * KT;
    for (int c = tid; c < (G * UNITS + SEQS) * per_row; c += FUSED_THREADS) {
        const int row = c / per_row;
        const int k = k0 + (c % per_row) * VW;
        const T* src = w_dir;  // any valid address when nothing is read
        bool inside = k < Hp;
        if (row < G * UNITS) {
            const int g = row / UNITS;
            const int u = u0 + row % UNITS;
            inside = inside && u < H;
            if (inside) src = w_dir + (static_cast<long long>(g) * H + u) * Hp + k;
        } else {
            const int b = b0 + row - G * UNITS;
            inside = inside && b < B;
            if (inside) src = hin_dir + static_cast<long long>(b) * Hp + k;
        }
        copy_async16(buf + row * LD + (k - k0), src, inside ? static_cast<int>(sizeof(V)) : 0);
    }
}

// acc[g][j][i] += the tile's part of row (g, unit j) . state of sequence i.
template <typename T, int G, int UNITS, int SEQS, int SPL>
__device__ __forceinline__ void fused_multiply(const T* buf, int unit_group, int seq_base, int lane,
                                               T (&acc)[G][4][SPL]) {
    typedef typename Vec<T>::type V;
    const int VW = Vec<T>::width;
    const int KT = FusedKT<T>::value;
    const int LD = KT + VW;
    const T* states = buf + G * UNITS * LD;
#pragma unroll 2
    for (int kv = 0; kv < KT; kv += VW) {
        V h[SPL];
#pragma unroll
        for (int i = 0; i < SPL; ++i) h[i] = *reinterpret_cast<const V*>(states + (seq_base + lane + 32 * i) * LD + kv);
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const V w = *reinterpret_cast<const V*>(buf + (g * UNITS + unit_group * 4 + j) * LD + kv);
#pragma unroll
                for (int i = 0; i < SPL; ++i) acc[g][j][i] = dot_acc(acc[g][j][i], w, h[i]);
            }
        }
    }
}

}  // namespace gru

template <typename T, int G, int UG, int SPL>
__global__ void __launch_bounds__(gru::FUSED_THREADS, 1)
    gru_step_fused(const T* __restrict__ gx, const T* __restrict__ w_hh, const T* __restrict__ b_hn,
                   const int* __restrict__ lengths, const T* __restrict__ hin, const T* __restrict__ hcur,
                   T* __restrict__ hnext, T* __restrict__ rh, T* __restrict__ zbuf, T* __restrict__ out,
                   T* __restrict__ gates, int has_gates, int s, int seq_len, int B, int H, int Hp, int D,
                   int stages) {
    using namespace gru;
    const int UNITS = 4 * UG;
    const int SEQS_PER_WARP = 32 * SPL;
    const int SEQS = SEQS_PER_WARP * (4 / UG);
    const int LD = FusedKT<T>::value + Vec<T>::width;
    const int BUFFER = (G * UNITS + SEQS) * LD;  // elements per ring buffer
    GRU_DYNAMIC_SMEM(smem_raw);
    T* ring = reinterpret_cast<T*>(smem_raw);
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int unit_group = warp % UG;                   // units unit_group * 4 .. + 3 of the block
    const int seq_base = (warp / UG) * SEQS_PER_WARP;  // the warp's first sequence in the block
    const int d = blockIdx.z;
    const int u0 = blockIdx.x * UNITS;
    const int b0 = blockIdx.y * SEQS;
    const T* w_dir = w_hh + static_cast<long long>(d) * 3 * H * Hp + (G == 1 ? 2LL * H * Hp : 0LL);
    const T* hin_dir = hin + static_cast<long long>(d) * B * Hp;

    T acc[G][4][SPL];
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
            for (int i = 0; i < SPL; ++i) acc[g][j][i] = T(0);
        }
    }

    const int tiles = (Hp + FusedKT<T>::value - 1) / FusedKT<T>::value;
    const int ahead = stages > 2 ? 2 : 1;  // tiles in flight beyond the one being multiplied
    const int ring_size = ahead + 1;
    for (int t = 0; t < ahead; ++t) {
        if (t < tiles) fused_fetch<T, G, UNITS, SEQS>(ring + t * BUFFER, t, w_dir, hin_dir, u0, b0, B, H, Hp, tid);
        copy_async_commit();  // possibly empty: one group per tile keeps the count simple
    }
    for (int t = 0; t < tiles; ++t) {
        copy_async_wait(ahead - 1);  // tile t has landed (for this thread's copies)
        __syncthreads();             // ... for every thread's, and everyone is done with tile t - 1's buffer
        if (t + ahead < tiles) {
            fused_fetch<T, G, UNITS, SEQS>(ring + ((t + ahead) % ring_size) * BUFFER, t + ahead, w_dir, hin_dir, u0,
                                           b0, B, H, Hp, tid);
        }
        copy_async_commit();
        fused_multiply<T, G, UNITS, SEQS, SPL>(ring + (t % ring_size) * BUFFER, unit_group, seq_base, lane, acc);
    }

    // Gate math on the sums in registers.
    const long long gate_step = static_cast<long long>(seq_len) * B * H;
#pragma unroll
    for (int i = 0; i < SPL; ++i) {
        const int b = b0 + seq_base + lane + 32 * i;
        if (b >= B) continue;
        const int len = lengths[b];
        const bool alive = s < len;
        const int t = time_index(s, len, d == 1);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int u = u0 + unit_group * 4 + j;
            if (u >= H) continue;
            const long long state = (static_cast<long long>(d) * B + b) * Hp + u;
            if (!alive) {  // a finished sequence: its state carries over, its r * h and z are 0
                if (G == 2) {
                    rh[state] = T(0);
                    zbuf[state] = T(0);
                } else {
                    hnext[state] = hcur[state];
                }
                continue;
            }
            const T* g3 = gx + ((static_cast<long long>(t) * B + b) * D + d) * 3 * H + u;
            const long long at = ((static_cast<long long>(d * 3) * seq_len + t) * B + b) * H + u;
            const long long out_at = (static_cast<long long>(t) * B + b) * D * H + static_cast<long long>(d) * H + u;
            if (G == 3) {
                const Gates<T> v = gates_after(g3[0], acc[0][j][i], g3[H], acc[1 % G][j][i], g3[2 * H],
                                               acc[2 % G][j][i], b_hn[d * H + u], hcur[state]);
                hnext[state] = v.h;
                out[out_at] = v.h;
                if (has_gates) {
                    gates[at] = v.r;
                    gates[at + gate_step] = v.z;
                    gates[at + 2 * gate_step] = v.n;
                }
            } else if (G == 2) {
                const T r = sigmoid(g3[0] + acc[0][j][i]);
                const T z = sigmoid(g3[H] + acc[1 % G][j][i]);
                rh[state] = r * hcur[state];
                zbuf[state] = z;
                if (has_gates) {
                    gates[at] = r;
                    gates[at + gate_step] = z;
                }
            } else {
                const T n = tanh_(g3[2 * H] + acc[0][j][i]);
                const T h = blend(n, zbuf[state], hcur[state]);
                hnext[state] = h;
                out[out_at] = h;
                if (has_gates) gates[at + 2 * gate_step] = n;
            }
        }
    }
}
