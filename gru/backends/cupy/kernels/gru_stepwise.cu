// Per-step GRU gate kernels for the large-batch path.
//
// Why: at large batch the recurrent product of a step, (B x H) @ (H x 3H), is a
// real matrix product that cuBLAS runs near peak, and keeping W_hh on chip buys
// little because every weight is reused B times per step anyway. The host runs
// one (batched over directions) GEMM per step and then ONE of these kernels,
// which fuses every element-wise operation of the step: activations, the
// reset gate, the state update, length masking and the output/gate writes.
// Reset-before needs r * h_{t-1} before the candidate's product, so it takes
// two GEMMs and two kernels per step (gru_step_before_rz, gru_step_before_n).
//
// One thread per (direction, sequence, unit), grid-stride. Same conventions as
// gru_persistent.cu: gx (T, B, D, 3H) with the foldable biases added, sequence
// b alive while s < lengths[b], time index s forward and lengths[b] - 1 - s in
// reverse, finished sequences carry their state, outputs and gates past a
// length are left at the host's zeros.
//
//   gh     (S, D, B, 3H) reset-after: h_{t-1} @ W_hh^T (no bias)
//          (S, D, B, 2H) reset-before stage rz: h_{t-1} @ [W_hr; W_hz]^T
//          (S, D, B, H)  reset-before stage n: (r * h_{t-1}) @ W_hn^T
//          as S partial products over consecutive chunks of the H columns (split K: at
//          small batch one product has too few output tiles to fill the GPU, S of them
//          have S times as many); the kernels add the S parts
//   hcur, hnext, rh, zbuf  (D, B, H)
//   out    (T, B, D*H);  gates (D, 3, T, B, H)
#include "gru_common.cuh"

namespace gru {

// The recurrent product at p: the sum of its S partial products, `part` elements apart.
template <typename T>
__device__ __forceinline__ T split_sum(const T* p, int splits, long long part) {
    T v = p[0];
    for (int k = 1; k < splits; ++k) v += p[k * part];
    return v;
}

}  // namespace gru

template <typename T>
__global__ void gru_step_after(const T* __restrict__ gx, const T* __restrict__ gh, const T* __restrict__ b_hn,
                               const int* __restrict__ lengths, const T* __restrict__ hcur, T* __restrict__ hnext,
                               T* __restrict__ out, T* __restrict__ gates, int has_gates, int s, int seq_len, int B,
                               int H, int D, int splits) {
    const long long total = static_cast<long long>(D) * B * H;
    const long long part = 3 * total;  // one partial product of gh
    for (long long i = gru::grid_first(); i < total; i += gru::grid_stride()) {
        const gru::StepIndex x = gru::step_index(i, s, B, H, lengths);
        const T h_old = hcur[i];
        T h = h_old;
        if (x.alive) {
            const T* g = gx + gru::gx_index(x, B, D, H);
            const T* a = gh + (i / H) * 3 * H + x.u;  // row (d, b) of gh, unit u
            const gru::Gates<T> v =
                gru::gates_after(g[0], gru::split_sum(a, splits, part), g[H], gru::split_sum(a + H, splits, part),
                                 g[2 * H], gru::split_sum(a + 2 * H, splits, part), b_hn[x.d * H + x.u], h_old);
            h = v.h;
            out[(static_cast<long long>(x.t) * B + x.b) * D * H + x.d * H + x.u] = h;
            if (has_gates) {
                gates[gru::step_gate_index(x, 0, seq_len, B, H)] = v.r;
                gates[gru::step_gate_index(x, 1, seq_len, B, H)] = v.z;
                gates[gru::step_gate_index(x, 2, seq_len, B, H)] = v.n;
            }
        }
        hnext[i] = h;
    }
}

template <typename T>
__global__ void gru_step_before_rz(const T* __restrict__ gx, const T* __restrict__ gh, const int* __restrict__ lengths,
                                   const T* __restrict__ hcur, T* __restrict__ rh, T* __restrict__ zbuf,
                                   T* __restrict__ gates, int has_gates, int s, int seq_len, int B, int H, int D,
                                   int splits) {
    const long long total = static_cast<long long>(D) * B * H;
    const long long part = 2 * total;
    for (long long i = gru::grid_first(); i < total; i += gru::grid_stride()) {
        const gru::StepIndex x = gru::step_index(i, s, B, H, lengths);
        T r_h = T(0);
        T z = T(0);
        if (x.alive) {
            const T* g = gx + gru::gx_index(x, B, D, H);
            const T* a = gh + (i / H) * 2 * H + x.u;
            const T r = gru::sigmoid(g[0] + gru::split_sum(a, splits, part));
            z = gru::sigmoid(g[H] + gru::split_sum(a + H, splits, part));
            r_h = r * hcur[i];
            if (has_gates) {
                gates[gru::step_gate_index(x, 0, seq_len, B, H)] = r;
                gates[gru::step_gate_index(x, 1, seq_len, B, H)] = z;
            }
        }
        rh[i] = r_h;
        zbuf[i] = z;
    }
}

template <typename T>
__global__ void gru_step_before_n(const T* __restrict__ gx, const T* __restrict__ gh, const int* __restrict__ lengths,
                                  const T* __restrict__ hcur, const T* __restrict__ zbuf, T* __restrict__ hnext,
                                  T* __restrict__ out, T* __restrict__ gates, int has_gates, int s, int seq_len, int B,
                                  int H, int D, int splits) {
    const long long total = static_cast<long long>(D) * B * H;
    for (long long i = gru::grid_first(); i < total; i += gru::grid_stride()) {
        const gru::StepIndex x = gru::step_index(i, s, B, H, lengths);
        const T h_old = hcur[i];
        T h = h_old;
        if (x.alive) {
            const T n = gru::tanh_(gx[gru::gx_index(x, B, D, H) + 2 * H] + gru::split_sum(gh + i, splits, total));
            h = gru::blend(n, zbuf[i], h_old);
            out[(static_cast<long long>(x.t) * B + x.b) * D * H + x.d * H + x.u] = h;
            if (has_gates) gates[gru::step_gate_index(x, 2, seq_len, B, H)] = n;
        }
        hnext[i] = h;
    }
}
