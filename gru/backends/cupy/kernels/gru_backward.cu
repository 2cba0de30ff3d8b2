// Per-step kernels of the backward pass through time (training), both directions of a layer at once.
//
// Why: the backward of one GRU step is, per (direction, sequence, unit), a few element-wise operations
// on the step's saved gate activations, plus one matrix product that carries the gradient back to
// h_{t-1} (the step's gate gradients @ W_hh). The host runs the steps from the last to the first: per
// step ONE of these kernels and one cuBLAS product for reset-after; for reset-before, whose reset
// gate's gradient needs W_hn^T d_n first, two of each. The weight gradients are whole-sequence GEMMs
// over what the kernels write, made after the loop.
//
// Conventions as gru_stepwise.cu (StepIndex, one thread per (d, b, u), grid-stride): sequence b is
// alive at step s while s < lengths[b]; direction 1 visits t = lengths[b] - 1 - s. Arrays:
//   d_out    (T, B, D*H)   the loss's gradient with respect to the layer's output
//   d_h_n    (D, B, H)     ... with respect to its last states, added at each sequence's last step
//   gates    (D, 3, T, B, H) r, z, n of the forward
//   h_prev   (D, T, B, H)  the state each step started from
//   hn       (D, T, B, H)  reset-after: W_hn h_{t-1} + b_hn, the reset gate's other factor
//   carry    (D, B, H)     the part of d h_{t-1} that takes no product: dh * z (+ d(r*h) * r)
//   product  (D, B, H)     the other part, (the later step's recurrent-side gradients) @ W_hh, from cuBLAS
//   d_gx     (T, B, D, 3H) the gate pre-activations' gradients (d_r, d_z, d_n); only live (t, b) are
//                          written, the host zero-fills the rest
//   reset-after:  d_step    (D, B, 3H) (d_r, d_z, d_n * r): the next product's left operand
//   reset-before: d_n_step  (D, B, H)  d_n, for d(r*h) = d_n @ W_hn
//                 d_rh      (D, B, H)  that product, from cuBLAS
//                 d_rz_step (D, B, 2H) (d_r, d_z): the next product's left operand (with [W_hr; W_hz])
// A sequence not yet alive (steps past its length, visited first) gets zero operands and carry, so
// that its gradient starts at its own last step.
#include "gru_common.cuh"

namespace gru {

// d loss / d h_t of this step: what the later step carries back, the output's gradient, and at the
// sequence's last step the last state's.
template <typename T>
__device__ __forceinline__ T step_dh(const StepIndex& x, long long i, int s, const T* d_out, const T* d_h_n,
                                     const T* carry, const T* product, int B, int D, int H) {
    T dh = carry[i] + product[i] + d_out[(static_cast<long long>(x.t) * B + x.b) * D * H + x.d * H + x.u];
    if (s == x.len - 1) dh += d_h_n[i];
    return dh;
}

__device__ __forceinline__ long long state_index(const StepIndex& x, int seq_len, int B, int H) {
    return ((static_cast<long long>(x.d) * seq_len + x.t) * B + x.b) * H + x.u;
}

}  // namespace gru

template <typename T>
__global__ void gru_backward_after(const T* __restrict__ d_out, const T* __restrict__ d_h_n,
                                   const T* __restrict__ gates, const T* __restrict__ h_prev,
                                   const T* __restrict__ hn, const int* __restrict__ lengths, T* __restrict__ carry,
                                   const T* __restrict__ product, T* __restrict__ d_gx, T* __restrict__ d_step, int s,
                                   int seq_len, int B, int H, int D) {
    const long long total = static_cast<long long>(D) * B * H;
    for (long long i = gru::grid_first(); i < total; i += gru::grid_stride()) {
        const gru::StepIndex x = gru::step_index(i, s, B, H, lengths);
        T* step = d_step + (i / H) * 3 * H + x.u;  // row (d, b) of d_step, unit u
        if (!x.alive) {
            step[0] = step[H] = step[2 * H] = T(0);
            carry[i] = T(0);
            continue;
        }
        const T dh = gru::step_dh(x, i, s, d_out, d_h_n, carry, product, B, D, H);
        const T r = gates[gru::step_gate_index(x, 0, seq_len, B, H)];
        const T z = gates[gru::step_gate_index(x, 1, seq_len, B, H)];
        const T n = gates[gru::step_gate_index(x, 2, seq_len, B, H)];
        const long long at = gru::state_index(x, seq_len, B, H);
        const T d_n = dh * (T(1) - z) * (T(1) - n * n);
        const T d_z = dh * (h_prev[at] - n) * z * (T(1) - z);
        const T d_r = d_n * hn[at] * r * (T(1) - r);
        T* g = d_gx + gru::gx_index(x, B, D, H);
        g[0] = d_r;
        g[H] = d_z;
        g[2 * H] = d_n;
        step[0] = d_r;
        step[H] = d_z;
        step[2 * H] = d_n * r;
        carry[i] = dh * z;
    }
}

// Reset-before, first half: everything but the reset gate, whose gradient needs d_n @ W_hn.
template <typename T>
__global__ void gru_backward_before_zn(const T* __restrict__ d_out, const T* __restrict__ d_h_n,
                                       const T* __restrict__ gates, const T* __restrict__ h_prev,
                                       const int* __restrict__ lengths, T* __restrict__ carry,
                                       const T* __restrict__ product, T* __restrict__ d_gx, T* __restrict__ d_n_step,
                                       T* __restrict__ d_rz_step, int s, int seq_len, int B, int H, int D) {
    const long long total = static_cast<long long>(D) * B * H;
    for (long long i = gru::grid_first(); i < total; i += gru::grid_stride()) {
        const gru::StepIndex x = gru::step_index(i, s, B, H, lengths);
        T* rz = d_rz_step + (i / H) * 2 * H + x.u;
        if (!x.alive) {
            d_n_step[i] = T(0);
            rz[H] = T(0);  // the reset gate's half is the second kernel's
            carry[i] = T(0);
            continue;
        }
        const T dh = gru::step_dh(x, i, s, d_out, d_h_n, carry, product, B, D, H);
        const T z = gates[gru::step_gate_index(x, 1, seq_len, B, H)];
        const T n = gates[gru::step_gate_index(x, 2, seq_len, B, H)];
        const T d_n = dh * (T(1) - z) * (T(1) - n * n);
        const T d_z = dh * (h_prev[gru::state_index(x, seq_len, B, H)] - n) * z * (T(1) - z);
        T* g = d_gx + gru::gx_index(x, B, D, H);
        g[H] = d_z;
        g[2 * H] = d_n;
        d_n_step[i] = d_n;
        rz[H] = d_z;
        carry[i] = dh * z;
    }
}

// Reset-before, second half, once d(r * h_{t-1}) = d_n @ W_hn is in d_rh.
template <typename T>
__global__ void gru_backward_before_r(const T* __restrict__ gates, const T* __restrict__ h_prev,
                                      const int* __restrict__ lengths, const T* __restrict__ d_rh,
                                      T* __restrict__ carry, T* __restrict__ d_gx, T* __restrict__ d_rz_step, int s,
                                      int seq_len, int B, int H, int D) {
    const long long total = static_cast<long long>(D) * B * H;
    for (long long i = gru::grid_first(); i < total; i += gru::grid_stride()) {
        const gru::StepIndex x = gru::step_index(i, s, B, H, lengths);
        T* rz = d_rz_step + (i / H) * 2 * H + x.u;
        if (!x.alive) {
            rz[0] = T(0);
            continue;
        }
        const T r = gates[gru::step_gate_index(x, 0, seq_len, B, H)];
        const T d_r_h = d_rh[i];
        const T d_r = d_r_h * h_prev[gru::state_index(x, seq_len, B, H)] * r * (T(1) - r);
        d_gx[gru::gx_index(x, B, D, H)] = d_r;
        rz[0] = d_r;
        carry[i] += d_r_h * r;
    }
}
