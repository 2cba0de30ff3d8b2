/* The fused gate pass for one sequence and a contiguous run of n hidden units,
 * written once for REAL = float and REAL = double (included twice by
 * gru_math.h with REAL, SFX, SIGMOID and TANH defined).
 *
 * Gate blocks are (r, z, n): gx, gh and bias point at the r-entry of the
 * first unit, and the z and n entries follow `stride` values apart in gx and
 * bias, `gh_stride` apart in gh. So gx[u], gx[stride + u], gx[2 * stride + u]
 * are unit u's r, z, n input parts (x W_i^T without bias). The biases come
 * folded: bias = (b_ir + b_hr, b_iz + b_hz, b_in), and b_hn on its own, since
 * reset-after puts it under the reset gate. `restrict` lets the compiler
 * vectorise.
 * GRU_GATE_PASS (gru_math.h) makes each function inline, or, in a portable
 * build, one clone per instruction set, picked when the module loads.
 * The gate activations are always stored (to r_out, z_out, n_out: scratch
 * when the caller does not want them) so that each loop is one straight
 * body the compiler vectorises.
 */

/* reset-after: n = tanh(x_n + b_in + r * (W_hn h + b_hn)); h_t goes to h_new and out */
GRU_GATE_PASS void GRU_NAME(gru_gates_after)(
    int n, int stride, int gh_stride, const REAL *restrict gx, const REAL *restrict gh,
    const REAL *restrict bias, const REAL *restrict b_hn,
    const REAL *restrict h_old, REAL *restrict h_new, REAL *restrict out,
    REAL *restrict r_out, REAL *restrict z_out, REAL *restrict n_out, REAL *restrict hn_out) {
    for (int u = 0; u < n; u++) {
        const REAL r = SIGMOID(gx[u] + gh[u] + bias[u]);
        const REAL z = SIGMOID(gx[stride + u] + gh[gh_stride + u] + bias[stride + u]);
        const REAL hn = gh[2 * gh_stride + u] + b_hn[u];
        const REAL c = TANH(gx[2 * stride + u] + bias[2 * stride + u] + r * hn);
        const REAL h = (1 - z) * c + z * h_old[u];
        h_new[u] = h;
        out[u] = h;
        r_out[u] = r;
        z_out[u] = z;
        n_out[u] = c;
        hn_out[u] = hn; /* training keeps it: the reset gate's other factor */
    }
}

/* reset-before, first half: r = sigmoid(x_r + W_hr h + b_ir + b_hr) to r_out,
 * and r * h_{t-1} to rh for the candidate's product */
GRU_GATE_PASS void GRU_NAME(gru_reset_before)(
    int n, const REAL *restrict gx, const REAL *restrict gh, const REAL *restrict bias,
    const REAL *restrict h_old, REAL *restrict r_out, REAL *restrict rh) {
    for (int u = 0; u < n; u++) {
        const REAL r = SIGMOID(gx[u] + gh[u] + bias[u]);
        r_out[u] = r;
        rh[u] = r * h_old[u];
    }
}

/* reset-before, second half, once W_hn (r * h) is in gh's n block:
 * n = tanh(x_n + b_in + W_hn (r * h) + b_hn) */
GRU_GATE_PASS void GRU_NAME(gru_gates_before)(
    int n, int stride, int gh_stride, const REAL *restrict gx, const REAL *restrict gh,
    const REAL *restrict bias, const REAL *restrict b_hn,
    const REAL *restrict h_old, REAL *restrict h_new, REAL *restrict out,
    REAL *restrict z_out, REAL *restrict n_out) {
    for (int u = 0; u < n; u++) {
        const REAL z = SIGMOID(gx[stride + u] + gh[gh_stride + u] + bias[stride + u]);
        const REAL c = TANH(gx[2 * stride + u] + bias[2 * stride + u] + gh[2 * gh_stride + u] + b_hn[u]);
        const REAL h = (1 - z) * c + z * h_old[u];
        h_new[u] = h;
        out[u] = h;
        z_out[u] = z;
        n_out[u] = c;
    }
}

/* Backward, reset-after, one sequence and n units of one step. dh is d loss /
 * d h_t (the carried gradient plus the output's). Writes the gradients of the
 * gate pre-activations: d_x (input side: r, z, n blocks `stride` apart) and
 * d_h (recurrent side: r, z and hn), and d_carry = dh * z, the direct part of
 * d loss / d h_{t-1}. */
GRU_GATE_PASS void GRU_NAME(gru_backward_after)(
    int n, int stride, const REAL *restrict dh, const REAL *restrict h_prev,
    const REAL *restrict r, const REAL *restrict z, const REAL *restrict c, const REAL *restrict hn,
    REAL *restrict d_x, REAL *restrict d_h, REAL *restrict d_carry) {
    for (int u = 0; u < n; u++) {
        const REAL d_n_pre = dh[u] * (1 - z[u]) * (1 - c[u] * c[u]);
        const REAL d_z_pre = dh[u] * (h_prev[u] - c[u]) * z[u] * (1 - z[u]);
        const REAL d_r_pre = d_n_pre * hn[u] * r[u] * (1 - r[u]);
        d_x[u] = d_r_pre;
        d_x[stride + u] = d_z_pre;
        d_x[2 * stride + u] = d_n_pre;
        d_h[u] = d_r_pre;
        d_h[stride + u] = d_z_pre;
        d_h[2 * stride + u] = d_n_pre * r[u];
        d_carry[u] = dh[u] * z[u];
    }
}

/* Backward, reset-before, first half: everything but the reset gate, whose
 * gradient needs W_hn^T d_n_pre over all units. d_h's n block is d_n_pre. */
GRU_GATE_PASS void GRU_NAME(gru_backward_before)(
    int n, int stride, const REAL *restrict dh, const REAL *restrict h_prev,
    const REAL *restrict z, const REAL *restrict c,
    REAL *restrict d_x, REAL *restrict d_h, REAL *restrict d_carry) {
    for (int u = 0; u < n; u++) {
        const REAL d_n_pre = dh[u] * (1 - z[u]) * (1 - c[u] * c[u]);
        const REAL d_z_pre = dh[u] * (h_prev[u] - c[u]) * z[u] * (1 - z[u]);
        d_x[stride + u] = d_z_pre;
        d_x[2 * stride + u] = d_n_pre;
        d_h[stride + u] = d_z_pre;
        d_h[2 * stride + u] = d_n_pre;
        d_carry[u] = dh[u] * z[u];
    }
}

/* Backward, reset-before, second half: d_rh = d loss / d (r * h_{t-1}). */
GRU_GATE_PASS void GRU_NAME(gru_backward_before_reset)(
    int n, const REAL *restrict d_rh, const REAL *restrict h_prev, const REAL *restrict r,
    REAL *restrict d_x_r, REAL *restrict d_h_r, REAL *restrict d_carry) {
    for (int u = 0; u < n; u++) {
        const REAL d_r_pre = d_rh[u] * h_prev[u] * r[u] * (1 - r[u]);
        d_x_r[u] = d_r_pre;
        d_h_r[u] = d_r_pre;
        d_carry[u] += d_rh[u] * r[u];
    }
}
