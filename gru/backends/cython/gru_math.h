/* Element-wise helpers for the Cython backend's fused gate pass.
 *
 * gru_expf is branch-free so that the compiler can vectorise the gate loop
 * (libm's expf is a call per element): exp(x) = 2^n * exp(r), n = round(x / ln 2),
 * |r| <= ln(2) / 2, exp(r) by its Taylor series to degree 7 (relative error
 * below 1e-8, under float32's epsilon). Inputs are clamped to the range where
 * 2^n is a normal float; NaN passes through the clamps (comparisons with NaN
 * are false) and stays NaN.
 *
 * float64 has its own branch-free exp (gru_exp_parts, below): libm's exp and
 * tanh were calls per element, 18 ns a unit of the gate pass; this one is
 * accurate to a few units in the last place, far under float64's target (1e-12).
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
    /* round to nearest by adding and removing 1.5 * 2^23 (floorf would block vectorisation);
     * n is then also in the low bits of the sum, which give 2^n below without a float-to-int
     * conversion (undefined for NaN, as a shift of the negative int it gives would be) */
    const float k = x * 1.44269504088896341f + 12582912.0f;
    const float n = k - 12582912.0f;
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
    uint32_t bits;
    memcpy(&bits, &k, sizeof bits);
    bits = (bits - UINT32_C(0x4B400000) + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* 1 / (1 + e^-x): saturates cleanly to 0 or 1, no overflow. */
static inline float gru_sigmoidf(float x) { return 1.0f / (1.0f + gru_expf(-x)); }

/* tanh(x) = 1 - 2 / (1 + e^2x): absolute error ~1e-7, saturates to +-1. */
static inline float gru_tanhf(float x) { return 1.0f - 2.0f / (1.0f + gru_expf(2.0f * x)); }

/* x = n ln 2 + r with |r| <= ln(2) / 2: returns expm1(r) and sets *scale = 2^n, so that
 * exp(x) = scale * (1 + p) and expm1(x) = scale * p + (scale - 1), each with one more
 * rounding. x is clamped to [-708, 708], where 2^n is a normal double; NaN passes through
 * the clamps and comes out NaN. n is rounded by adding 1.5 * 2^52, which leaves it in the
 * low bits of the sum: those bits give 2^n without a float-to-int conversion (AVX2 has none
 * for doubles). expm1(r) is its Taylor series to degree 13: the rest is under 2e-17 of it. */
static inline double gru_exp_parts(double x, double *scale) {
    x = x > 708.0 ? 708.0 : x;
    x = x < -708.0 ? -708.0 : x;
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52 */
    const double k = x * 1.4426950408889634 + shifter;
    const double n = k - shifter;
    double r = x - n * 6.93147180369123816490e-01; /* ln 2's high part, n * it exact for |n| < 2^11 */
    r = r - n * 1.90821492927058770002e-10;        /* and its low part */
    uint64_t bits;
    memcpy(&bits, &k, sizeof bits);
    bits = (bits - UINT64_C(0x4338000000000000) + 1023) << 52;
    memcpy(scale, &bits, sizeof bits);
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    return p * r;
}

/* From e = exp(-|x|) <= 1: no overflow, and a relative error of a few ulps on both sides
 * (e is 0 past the clamp, where it is below 3.3e-308). */
static inline double gru_sigmoid(double x) {
    double scale;
    const double a = fabs(x);
    const double p = gru_exp_parts(-a, &scale);
    double e = scale * p + scale;
    e = a > 708.0 ? 0.0 : e;
    return x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/* tanh|x| = -t / (2 + t) with t = expm1(-2|x|) in (-1, 0]: no cancellation near 0, so tiny
 * arguments keep their relative accuracy; the sign comes back last (tanh(-0) = -0). */
static inline double gru_tanh(double x) {
    double scale;
    const double p = gru_exp_parts(-2.0 * fabs(x), &scale);
    const double t = scale * p + (scale - 1.0);
    return copysign(-t / (2.0 + t), x);
}

/* A build compiled without AVX2 (a portable one, GRU_NATIVE_ARCH=OFF: nothing past SSE2 at compile
 * time) would run the gate pass, the part of a step the backend computes itself, on SSE2 vectors:
 * 3.8x the time a unit of a native build (a C loop over 2,048 float32 units on an AVX-512 core:
 * 14.3 against 3.8 time-stamp ticks). With GCC 12 and later on glibc x86-64 it gets clones for
 * x86-64-v4 (AVX-512) and x86-64-v3 (AVX2, FMA) besides the baseline one; the loader picks one for
 * the CPU (an ifunc), and each row's pass is a call. CMakeLists.txt holds a portable build to
 * 256-bit vectors, as GCC's Intel AVX-512 tunings do: 512-bit gate loops slowed OpenBLAS's products
 * after them (see benchmarks/RESULTS.md). The AVX-512 clone ran that loop in 3.9 ticks a unit (as
 * the native build), the AVX2 one in 5.5 (as a -march=x86-64-v3 build). */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__GLIBC__) \
    && !defined(__AVX2__)
#define GRU_GATE_CLONES 1
#define GRU_GATE_PASS \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), unused)) static
#else
#define GRU_GATE_CLONES 0
#define GRU_GATE_PASS static inline
#endif

/* The instruction set the gate pass runs on: the clone the loader picked for this CPU, or the
 * build's own (`built`). */
static inline const char *gru_gate_pass_isa(const char *built) {
#if GRU_GATE_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "AVX-512";
    if (__builtin_cpu_supports("x86-64-v3")) return "AVX2+FMA";
#endif
    return built;
}

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

/* A barrier for the threads of one kernel call.
 *
 * OpenMP's own barrier costs about 0.25 us between two cores (measured on a
 * Zen 4 VM), while a step of a small layer is 1-3 us: this one, a shared
 * arrival count and a generation number, costs about 0.05 us. The last thread
 * to arrive resets the count and bumps the generation; its release store
 * publishes everything the team wrote before arriving. The others spin on the
 * generation for a while (the next step is usually microseconds away), then
 * sleep on it (a futex on Linux, sched_yield elsewhere), so that a team larger
 * than the free cores still makes progress instead of spinning against the
 * threads it waits for. Each thread passes the team size it was given
 * (omp_get_num_threads(), the same for all). Compilers without GCC's atomics
 * use OpenMP's barrier.
 */
#if defined(__GNUC__) && !defined(_WIN32)
#define GRU_SPIN_BARRIER 1
#include <sched.h>
#include <unistd.h>
#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#endif
#endif

/* about 0.5 ms of waiting (25 ns per pause on Zen 4) before a thread sleeps: waking a
 * sleeper costs tens of microseconds, more than most steps, so a team whose threads
 * slept would run at the pace of wake-ups */
#define GRU_BARRIER_SPINS 20000

typedef struct {
    int arrived;
    unsigned generation;
    int sleepers;
    int spins; /* pauses before sleeping: few when the team has more threads than CPUs */
    char pad[48];
} gru_team_barrier;

/* The L1 data cache of one core, in bytes (32 KB when the system does not say). */
static inline int gru_l1_data_bytes(void) {
#ifdef _SC_LEVEL1_DCACHE_SIZE
    long size = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    if (size >= 4096 && size <= (1L << 24)) return (int)size;
#endif
    return 32 * 1024;
}

/* The L2 cache of one core, in bytes (1 MB when the system does not say, or says
 * something no core has). */
static inline long gru_l2_bytes(void) {
#ifdef _SC_LEVEL2_CACHE_SIZE
    long size = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (size >= (1L << 16) && size <= (1L << 26)) return size;
#endif
    return 1L << 20;
}

/* CPUs this process may run on. */
static inline int gru_available_cpus(void) {
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
#ifdef _SC_NPROCESSORS_ONLN
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (online > 0) return (int)online;
#endif
    return 1;
}

static inline void gru_team_barrier_init(gru_team_barrier *b, int team) {
    b->arrived = 0;
    b->generation = 0;
    b->sleepers = 0;
    b->spins = team <= gru_available_cpus() ? GRU_BARRIER_SPINS : 20;
}

static inline void gru_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* The barrier in two halves, so that a thread can work between saying "my part is
 * written" and waiting for the others' (the forward overlaps that wait with the part
 * of the next product it can make from its own units). gru_team_arrive returns the
 * generation to pass to gru_team_await; a thread arrives and awaits the same number
 * of times as every other, in turn. Without GCC's atomics, arriving does nothing and
 * awaiting is OpenMP's barrier. */
static inline unsigned gru_team_arrive(gru_team_barrier *b, int team) {
    if (team <= 1) return 0;
#ifdef GRU_SPIN_BARRIER
    const unsigned generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == team) {
        __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, generation + 1, __ATOMIC_SEQ_CST);
#ifdef __linux__
        /* sequentially consistent with the sleepers' count-then-check: either a
         * sleeper sees the new generation, or this sees the sleeper and wakes it */
        if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST) > 0)
            syscall(SYS_futex, &b->generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#endif
    }
    return generation;
#else
    (void)b;
    return 0;
#endif
}

static inline void gru_team_await(gru_team_barrier *b, int team, unsigned generation) {
    if (team <= 1) return;
#ifdef GRU_SPIN_BARRIER
    for (int spins = 0; spins < b->spins; spins++) {
        if (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) != generation) return;
        gru_cpu_relax();
    }
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation) {
#ifdef __linux__
        __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&b->generation, __ATOMIC_SEQ_CST) == generation)
            /* sleeps only while the generation is still the old one */
            syscall(SYS_futex, &b->generation, FUTEX_WAIT_PRIVATE, generation, NULL, NULL, 0);
        __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
#else
        sched_yield();
#endif
    }
#else
    (void)b;
    (void)generation;
#ifdef _OPENMP
#pragma omp barrier
#endif
#endif
}

static inline void gru_team_barrier_wait(gru_team_barrier *b, int team) {
    gru_team_await(b, team, gru_team_arrive(b, team));
}

/* Hands out work items 0, 1, 2, ... to a team, each to exactly one thread: a thread
 * that is slowed (a busy neighbour on its core) simply claims fewer of them. */
static inline int gru_team_claim(int *next) {
#ifdef GRU_SPIN_BARRIER
    return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
#else
    int claimed;
#ifdef _OPENMP
#pragma omp atomic capture
#endif
    claimed = (*next)++;
    return claimed;
#endif
}

/* OpenMP shims: the extension still builds, single-threaded, without OpenMP. */
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
