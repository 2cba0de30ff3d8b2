/* Element-wise helpers for the Cython backend's fused gate pass.
 *
 * gru_expf is branch-free so that the compiler can vectorise the gate loop
 * (libm's expf is a call per element): exp(x) = 2^n * exp(r), n = round(x / ln 2),
 * |r| <= ln(2) / 2, exp(r) by its Taylor series to degree 7 (relative error
 * below 1e-8, under float32's epsilon). Inputs are clamped to the range where
 * 2^n is a normal float; NaN passes through the clamps (comparisons with NaN
 * are false) and stays NaN.
 *
 * float64 uses libm: its accuracy target (1e-12) is what matters there.
 */
#ifndef GRU_MATH_H
#define GRU_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static inline float gru_expf(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    /* round to nearest by adding and removing 1.5 * 2^23 (floorf would block vectorisation) */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;   /* ln 2 split in two so that n * ln2_hi is exact */
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* 1 / (1 + e^-x): saturates cleanly to 0 or 1, no overflow. */
static inline float gru_sigmoidf(float x) { return 1.0f / (1.0f + gru_expf(-x)); }

/* tanh(x) = 1 - 2 / (1 + e^2x): absolute error ~1e-7, saturates to +-1. */
static inline float gru_tanhf(float x) { return 1.0f - 2.0f / (1.0f + gru_expf(2.0f * x)); }

static inline double gru_sigmoid(double x) {
    /* the branch keeps exp's argument <= 0: no overflow either way */
    if (x >= 0.0) return 1.0 / (1.0 + exp(-x));
    const double e = exp(x);
    return e / (1.0 + e);
}

static inline double gru_tanh(double x) { return tanh(x); }

/* The gate pass, once per precision. */
#define GRU_NAME(name) name##_f
#define REAL float
#define SIGMOID gru_sigmoidf
#define TANH gru_tanhf
#include "gru_gates_impl.h"
#undef GRU_NAME
#undef REAL
#undef SIGMOID
#undef TANH

#define GRU_NAME(name) name##_d
#define REAL double
#define SIGMOID gru_sigmoid
#define TANH gru_tanh
#include "gru_gates_impl.h"
#undef GRU_NAME
#undef REAL
#undef SIGMOID
#undef TANH

/* OpenMP shims: the extension still builds, single-threaded, without OpenMP. */
static inline void gru_barrier(void) {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

static inline int gru_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int gru_num_threads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static inline int gru_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#endif
