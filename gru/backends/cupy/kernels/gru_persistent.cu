// Persistent GRU recurrence: every time step of one layer (both directions)
// in a single cooperative launch.
//
// Why: at small batch a GRU step is a matrix-vector product with the 3H x H
// recurrent weights. Launching a kernel per step re-reads those weights from
// device memory every step and pays a launch each time. Here each block owns a
// slice of hidden units, copies its rows of W_hh into shared memory once, and
// keeps them there for all T steps (Persistent RNNs, Diamos et al. 2016; GRNN,
// Holmes et al. 2019). Blocks exchange the new hidden state through global
// memory (L2) and meet at one grid-wide barrier per step (two for reset-before,
// whose candidate needs the whole r * h vector).
//
// Work split
//   grid  = (1, nblocks, D): blockIdx.y is the unit slice, blockIdx.z the
//           direction (1 = reverse). The grid's x extent is 1 so that CuPy
//           refuses, instead of silently shrinking, a grid that cannot be
//           co-resident (a shrunk grid would leave units uncomputed).
//   block = any multiple of 32 threads up to GRU_PERSISTENT_MAX_THREADS.
//   Block k owns units [k*units, k*units + nu) and their 3*nu rows of W_hh,
//   in gate-major order (all r rows, then z, then n). The first cached_rows of
//   them live in shared memory; any others are read from global memory (L2)
//   each step: the fallback for layers whose weights do not fit on chip. Of
//   those, the next l2_rows load with an evict_last policy (the host budgets
//   them to fit in L2 together) and the rest with evict_first, so the budgeted
//   rows stay in L2 from step to step instead of cycling through it.
//
// Per step, per batch tile of BT sequences:
//   1. stage h_{t-1} of the tile (all H units) into shared memory;
//   2. each warp takes groups of RT rows and computes their dot products with
//      the BT staged vectors (lanes stride over 16-byte vectors, then a warp
//      reduction);
//   3. one thread per (unit, sequence) applies the fused gate math and writes
//      h_t to the exchange buffer, the output and, when asked, the gates.
//
// Variable lengths: at step s, sequence b is alive while s < lengths[b]; its
// time index is s forward and lengths[b] - 1 - s in reverse, so the reverse
// direction starts at each sequence's own last step. A finished sequence
// carries its state unchanged (so the final buffer holds h_n); its outputs and
// gates are never written (the host zero-fills them).
//
// Layouts (row-major)
//   gx     (T, B, D, 3H)  W_ih x_t + b_ih, with b_hr, b_hz (and b_hn for
//                         reset-before) already added
//   w_hh   (D, 3H, Hp)    rows zero-padded to Hp, a multiple of the vector width
//   b_hn   (D, H)         reset-after only: the bias inside r * (W_hn h + b_hn)
//   hbuf   (2, D, B, Hp)  ping-pong hidden state; [0] holds h0, pads are zero
//   rhbuf  (D, B, Hp)     reset-before only: r * h_{t-1}
//   out    (T, B, D*H)    the layer's output (zero-filled by the host)
//   gates  (D, 3, T, B, H) r, z, n (zero-filled), written when has_gates
//   sync   [2]            barrier counter and error word, zeroed by the host
#include "gru_common.cuh"

#ifndef GRU_PERSISTENT_MAX_THREADS
#define GRU_PERSISTENT_MAX_THREADS 256
#endif

namespace gru {

// Rows per warp work item: RT weight vectors and BT state vectors loaded per
// RT*BT vector products.
static const int PERSISTENT_RT = 4;

__device__ __forceinline__ long long global_row(int j, int nu, int H, int u0) {
    const int gate = j / nu;
    return static_cast<long long>(gate) * H + u0 + (j - gate * nu);
}

// Copy BT state vectors (H values each, padded to Hp) into shared memory;
// sequences past the batch are zeros.
template <typename T, int BT>
__device__ __forceinline__ void stage_states(T* h_s, const T* src, int tile0, int nbt, int Hp, int tid,
                                             int nthreads) {
    typedef typename Vec<T>::type V;
    const int nvec = Hp / Vec<T>::width;
    V* dst = reinterpret_cast<V*>(h_s);
    const V* from = reinterpret_cast<const V*>(src) + static_cast<long long>(tile0) * nvec;
    for (int i = tid; i < BT * nvec; i += nthreads) {
        V v;
        if (i / nvec < nbt) {
            v = __ldcg(from + i);  // written by other blocks in this launch: L2, never a stale L1 line
        } else {
            set_zero(v);
        }
        dst[i] = v;
    }
}

// gh_s[j][b] = W_hh row j . h_s[b] for local rows j in [jb, je).
// FROM_GLOBAL: rows come from the direction's packed weights in global memory
// (the uncached part), else from the block's shared-memory copy.
template <typename T, int RT, int BT, bool FROM_GLOBAL>
__device__ __forceinline__ void matvec_rows(int jb, int je, int first_warp, const T* w_base, int u0, int nu, int H,
                                            int Hp, const T* h_s, T* gh_s, int warp, int nwarps, int lane,
                                            int keep_end) {
    typedef typename Vec<T>::type V;
    const int nvec = Hp / Vec<T>::width;
    const int ngroups = (je - jb + RT - 1) / RT;
    const V* hv = reinterpret_cast<const V*>(h_s);
    for (int grp = (warp - first_warp + nwarps) % nwarps; grp < ngroups; grp += nwarps) {
        const int j0 = jb + grp * RT;
        const V* w[RT];
        unsigned long long policy[RT];
#pragma unroll
        for (int r = 0; r < RT; ++r) {
            const int j = imin(j0 + r, je - 1);  // a short last group repeats its last row, result dropped
            const long long row = FROM_GLOBAL ? global_row(j, nu, H, u0) : static_cast<long long>(j);
            w[r] = reinterpret_cast<const V*>(w_base) + row * nvec;
            policy[r] = FROM_GLOBAL ? l2_policy(j < keep_end) : 0ull;
        }
        T acc[RT][BT];
#pragma unroll
        for (int r = 0; r < RT; ++r) {
#pragma unroll
            for (int b = 0; b < BT; ++b) acc[r][b] = T(0);
        }
        for (int kv = lane; kv < nvec; kv += 32) {
            V h[BT];
#pragma unroll
            for (int b = 0; b < BT; ++b) h[b] = hv[b * nvec + kv];
#pragma unroll
            for (int r = 0; r < RT; ++r) {
                const V wv = FROM_GLOBAL ? load_with_policy(w[r] + kv, policy[r]) : w[r][kv];
#pragma unroll
                for (int b = 0; b < BT; ++b) acc[r][b] = dot_acc(acc[r][b], wv, h[b]);
            }
        }
#pragma unroll
        for (int r = 0; r < RT; ++r) {
#pragma unroll
            for (int b = 0; b < BT; ++b) {
                const T v = warp_sum(acc[r][b]);
                if (lane == 0 && j0 + r < je) gh_s[(j0 + r) * BT + b] = v;
            }
        }
    }
}

// Rows [jb, je): the cached ones from shared memory, the rest from global memory
// (those before keep_end with L2's evict_last policy).
template <typename T, int RT, int BT>
__device__ __forceinline__ void matvec(int jb, int je, int cached, int keep_end, const T* w_s, const T* w_dir, int u0,
                                       int nu, int H, int Hp, const T* h_s, T* gh_s, int warp, int nwarps, int lane) {
    const int js = imin(je, cached);
    int smem_groups = 0;
    if (js > jb) {
        matvec_rows<T, RT, BT, false>(jb, js, 0, w_s, u0, nu, H, Hp, h_s, gh_s, warp, nwarps, lane, 0);
        smem_groups = (js - jb + RT - 1) / RT;
    }
    const int jg = imax(jb, cached);
    if (je > jg) {
        // start where the cached groups left off so the warps stay balanced
        matvec_rows<T, RT, BT, true>(jg, je, smem_groups % nwarps, w_dir, u0, nu, H, Hp, h_s, gh_s, warp, nwarps,
                                     lane, keep_end);
    }
}

// The three input-projection values of one (unit, sequence) at step s.
template <typename T>
struct GxTriple {
    T r, z, n;
};

template <typename T>
__device__ __forceinline__ GxTriple<T> load_gx(const T* gx, int t, int b, int u, int d, int B, int D, int H) {
    const T* g = gx + (static_cast<long long>(t) * B + b) * D * 3 * H + static_cast<long long>(d) * 3 * H + u;
    GxTriple<T> v;
    load_three(g, H, v.r, v.z, v.n);
    return v;
}

__device__ __forceinline__ long long gate_index(int d, int g, int t, int b, int u, int seq_len, int B, int H) {
    return ((static_cast<long long>(d * 3 + g) * seq_len + t) * B + b) * H + u;
}

template <typename T, int BT, bool RESET_AFTER>
__device__ __forceinline__ void persistent_body(const T* __restrict__ gx, const T* __restrict__ w_hh,
                                                const T* __restrict__ b_hn, const int* __restrict__ lengths, T* hbuf,
                                                T* rhbuf, T* out, T* gates, unsigned int* sync, int has_gates,
                                                int steps, int seq_len, int B, int H, int Hp, int D, int units,
                                                int cached_rows, int l2_rows, int smem_bytes,
                                                unsigned char* smem_raw) {
    const int RT = PERSISTENT_RT;
    const int VW = Vec<T>::width;
    const int d = blockIdx.z;
    const bool reverse = d == 1;
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int nwarps = nthreads >> 5;
    const int u0 = blockIdx.y * units;
    const int nu = imax(0, imin(units, H - u0));
    const int rows = 3 * nu;
    const int cached = imin(cached_rows, rows);
    const int keep_end = cached + l2_rows;

    // Shared memory: cached weight rows | BT staged states | gh per (row, tile sequence) | z (reset-before).
    // The layout depends only on kernel arguments, so every block takes the same branch below.
    const int gh_len = (3 * units * BT + VW - 1) / VW * VW;
    const long long need =
        (static_cast<long long>(cached_rows) * Hp + BT * Hp + gh_len + (RESET_AFTER ? 0 : units * B)) * sizeof(T);
    if (need > smem_bytes) {
        if (tid == 0 && blockIdx.y == 0 && blockIdx.z == 0) sync[1] = static_cast<unsigned int>(need);
        return;  // every block returns here: no barrier is left waiting
    }
    T* w_s = reinterpret_cast<T*>(smem_raw);
    T* h_s = w_s + static_cast<long long>(cached_rows) * Hp;
    T* gh_s = h_s + BT * Hp;
    T* z_s = gh_s + gh_len;

    const T* w_dir = w_hh + static_cast<long long>(d) * 3 * H * Hp;
    {
        typedef typename Vec<T>::type V;
        const int nvec = Hp / VW;
        V* dst = reinterpret_cast<V*>(w_s);
        const V* src = reinterpret_cast<const V*>(w_dir);
        for (int i = tid; i < cached * nvec; i += nthreads) {
            const int j = i / nvec;
            dst[i] = __ldg(src + global_row(j, nu, H, u0) * nvec + (i - j * nvec));
        }
    }

    GridBarrier barrier(sync, gridDim.y * gridDim.z);
    const long long half = static_cast<long long>(D) * B * Hp;
    const long long dir_offset = static_cast<long long>(d) * B * Hp;
    const int DH = D * H;

    // Prefetch: when one tile covers the batch and each thread owns at most one
    // (unit, sequence) pair, the input projection of the next step is loaded
    // before the barrier, so its latency hides behind the wait.
    const bool prefetch = B <= BT && nu * B <= nthreads;
    const int my_u = nu > 0 ? u0 + tid % nu : 0;
    const int my_b = nu > 0 ? tid / nu : B;
    const bool mine = prefetch && tid < nu * B;
    const int my_len = mine ? lengths[my_b] : 0;
    GxTriple<T> next;
    next.r = next.z = next.n = T(0);
    if (mine && 0 < my_len) next = load_gx(gx, time_index(0, my_len, reverse), my_b, my_u, d, B, D, H);

    for (int s = 0; s < steps; ++s) {
        const T* hcur = hbuf + (s & 1) * half + dir_offset;
        T* hnext = hbuf + ((s + 1) & 1) * half + dir_offset;
        const GxTriple<T> pre = next;

        if (RESET_AFTER) {
            for (int tile0 = 0; tile0 < B; tile0 += BT) {
                const int nbt = imin(BT, B - tile0);
                __syncthreads();  // the previous tile's readers of h_s and gh_s are done
                stage_states<T, BT>(h_s, hcur, tile0, nbt, Hp, tid, nthreads);
                __syncthreads();
                matvec<T, RT, BT>(0, rows, cached, keep_end, w_s, w_dir, u0, nu, H, Hp, h_s, gh_s, warp, nwarps, lane);
                __syncthreads();
                for (int p = tid; p < nu * nbt; p += nthreads) {
                    const int ul = p % nu;
                    const int bb = p / nu;
                    const int u = u0 + ul;
                    const int b = tile0 + bb;
                    const int len = lengths[b];
                    const T h_old = h_s[bb * Hp + u];
                    T h = h_old;
                    if (s < len) {
                        const int t = time_index(s, len, reverse);
                        const GxTriple<T> g = prefetch ? pre : load_gx(gx, t, b, u, d, B, D, H);
                        const Gates<T> v = gates_after(g.r, gh_s[ul * BT + bb], g.z, gh_s[(nu + ul) * BT + bb], g.n,
                                                       gh_s[(2 * nu + ul) * BT + bb], b_hn[d * H + u], h_old);
                        h = v.h;
                        out[(static_cast<long long>(t) * B + b) * DH + d * H + u] = h;
                        if (has_gates) {
                            gates[gate_index(d, 0, t, b, u, seq_len, B, H)] = v.r;
                            gates[gate_index(d, 1, t, b, u, seq_len, B, H)] = v.z;
                            gates[gate_index(d, 2, t, b, u, seq_len, B, H)] = v.n;
                        }
                    }
                    __stcg(hnext + static_cast<long long>(b) * Hp + u, h);
                }
            }
            if (mine && s + 1 < my_len) next = load_gx(gx, time_index(s + 1, my_len, reverse), my_b, my_u, d, B, D, H);
            barrier.sync();
        } else {
            // Stage 1: r and z from h_{t-1}; publish r * h_{t-1}.
            for (int tile0 = 0; tile0 < B; tile0 += BT) {
                const int nbt = imin(BT, B - tile0);
                __syncthreads();
                stage_states<T, BT>(h_s, hcur, tile0, nbt, Hp, tid, nthreads);
                __syncthreads();
                matvec<T, RT, BT>(0, 2 * nu, cached, keep_end, w_s, w_dir, u0, nu, H, Hp, h_s, gh_s, warp, nwarps, lane);
                __syncthreads();
                for (int p = tid; p < nu * nbt; p += nthreads) {
                    const int ul = p % nu;
                    const int bb = p / nu;
                    const int u = u0 + ul;
                    const int b = tile0 + bb;
                    const int len = lengths[b];
                    T rh = T(0);
                    T z = T(0);
                    if (s < len) {
                        const int t = time_index(s, len, reverse);
                        const GxTriple<T> g = prefetch ? pre : load_gx(gx, t, b, u, d, B, D, H);
                        const T r = sigmoid(g.r + gh_s[ul * BT + bb]);
                        z = sigmoid(g.z + gh_s[(nu + ul) * BT + bb]);
                        rh = r * h_s[bb * Hp + u];
                        if (has_gates) {
                            gates[gate_index(d, 0, t, b, u, seq_len, B, H)] = r;
                            gates[gate_index(d, 1, t, b, u, seq_len, B, H)] = z;
                        }
                    }
                    z_s[b * units + ul] = z;
                    __stcg(rhbuf + dir_offset + static_cast<long long>(b) * Hp + u, rh);
                }
            }
            barrier.sync();
            // Stage 2: the candidate from W_hn (r * h_{t-1}); the new state.
            for (int tile0 = 0; tile0 < B; tile0 += BT) {
                const int nbt = imin(BT, B - tile0);
                __syncthreads();
                stage_states<T, BT>(h_s, rhbuf + dir_offset, tile0, nbt, Hp, tid, nthreads);
                __syncthreads();
                matvec<T, RT, BT>(2 * nu, 3 * nu, cached, keep_end, w_s, w_dir, u0, nu, H, Hp, h_s, gh_s, warp, nwarps, lane);
                __syncthreads();
                for (int p = tid; p < nu * nbt; p += nthreads) {
                    const int ul = p % nu;
                    const int bb = p / nu;
                    const int u = u0 + ul;
                    const int b = tile0 + bb;
                    const int len = lengths[b];
                    const T h_old = __ldcg(hcur + static_cast<long long>(b) * Hp + u);
                    T h = h_old;
                    if (s < len) {
                        const int t = time_index(s, len, reverse);
                        const T gxn = prefetch ? pre.n : load_gx(gx, t, b, u, d, B, D, H).n;
                        const T z = z_s[b * units + ul];
                        const T n = tanh_(gxn + gh_s[(2 * nu + ul) * BT + bb]);
                        h = blend(n, z, h_old);
                        out[(static_cast<long long>(t) * B + b) * DH + d * H + u] = h;
                        if (has_gates) gates[gate_index(d, 2, t, b, u, seq_len, B, H)] = n;
                    }
                    __stcg(hnext + static_cast<long long>(b) * Hp + u, h);
                }
            }
            if (mine && s + 1 < my_len) next = load_gx(gx, time_index(s + 1, my_len, reverse), my_b, my_u, d, B, D, H);
            barrier.sync();
        }
    }
}

}  // namespace gru

// BT: sequences per batch tile (1, 2, 4 or 8); RESET_AFTER: the variant.
// Launch bounds (threads, 1): the grid never needs more than one block per
// multiprocessor, so ptxas may spend registers freely; with the thread bound
// alone it aims at a lower register count and spills to local memory.
template <typename T, int BT, bool RESET_AFTER>
__global__ void __launch_bounds__(GRU_PERSISTENT_MAX_THREADS, 1)
    gru_persistent(const T* __restrict__ gx, const T* __restrict__ w_hh, const T* __restrict__ b_hn,
                   const int* __restrict__ lengths, T* hbuf, T* rhbuf, T* out, T* gates, unsigned int* sync,
                   int has_gates, int steps, int seq_len, int B, int H, int Hp, int D, int units, int cached_rows,
                   int l2_rows, int smem_bytes) {
    GRU_DYNAMIC_SMEM(smem_raw);
    gru::persistent_body<T, BT, RESET_AFTER>(gx, w_hh, b_hn, lengths, hbuf, rhbuf, out, gates, sync, has_gates,
                                             steps, seq_len, B, H, Hp, D, units, cached_rows, l2_rows, smem_bytes,
                                             smem_raw);
}
