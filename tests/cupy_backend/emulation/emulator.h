// A CPU emulation of the CUDA execution model, for testing gru's kernels without a GPU.
//
// The kernel sources compile unchanged as C++ (GRU_EMULATION switches the few
// primitives gru_common.cuh cannot express portably). Every CUDA thread of a
// launch is a fiber with its own stack (started with ucontext, switched with
// _setjmp/_longjmp: swapcontext makes a system call per switch); all of them
// run on one OS thread and switch only where a CUDA thread could wait: __syncthreads(), a
// warp shuffle, a spinning grid barrier. That gives the semantics the kernels
// rely on (block barriers, warp-synchronous shuffles, all blocks co-resident
// for the grid barrier) and exposes missing ones: between two waits a fiber
// runs alone, and the scheduler visits fibers in a shuffled order, so a read
// of shared or global memory that no barrier orders after its write sees the
// old (poisoned) value in some order. Shared memory starts as 0xFF bytes (NaN).
// A launch in which every fiber waits and none can go on is reported as a
// deadlock (a barrier not reached by every thread that must).
//
// Asynchronous copies (cp.async) fill their destination with NaN when issued
// and land only when a wait retires their group, so a read before the wait or
// a buffer refilled while another thread still reads it shows up; a copy
// whose addresses are not 16-byte aligned fails the launch.
//
// Not emulated: the memory model's weaker orderings, L1 staleness, timing.
#pragma once

#include <math.h>
#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <utility>
#include <vector>

#define GRU_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};
struct float2 {
    float x, y;
};
struct float4 {
    float x, y, z, w;
};
struct double2 {
    double x, y;
};

namespace emu {

struct Barrier {
    int expected = 0;
    int arrived = 0;
    unsigned long generation = 0;
};

struct Block {
    std::vector<unsigned char> smem;
    Barrier barrier;
    std::vector<Barrier> warp_barriers;
    std::vector<unsigned char> exchange;  // 32 slots of 8 bytes per warp, for shuffles
};

struct AsyncCopy {
    void* dst;
    const void* src;
    int bytes;  // the rest of the 16 is zero-filled
};

struct Fiber {
    ucontext_t context;  // used once, to start the fiber on its own stack
    jmp_buf resume;      // every later switch: _setjmp/_longjmp, no signal-mask system call
    bool started = false;
    std::vector<char> stack;
    dim3 thread, block_index;
    Block* block = nullptr;
    bool done = false;
    const Barrier* waiting = nullptr;  // the barrier this fiber waits at, if any
    unsigned long wait_generation = 0;
    std::vector<AsyncCopy> open_copies;               // issued, not yet committed
    std::vector<std::vector<AsyncCopy>> copy_groups;  // committed, oldest first
};

struct Launch {
    dim3 grid, block;
    std::vector<Block> blocks;
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    jmp_buf scheduler_resume;
    Fiber* current = nullptr;
    unsigned long progress = 0;
    int fault = 0;  // the launch's status when a thread broke a rule (3: misaligned asynchronous copy,
                    // 5: an explicit global load outside every argument array)
    std::function<void()> body;
};

inline Launch* active = nullptr;

// The argument arrays of the next launch (set by the host before it): the explicit global loads
// (__ldg, __ldcg, load_with_policy, the sources of asynchronous copies) must fall inside one of
// them, so a load past an array fails the launch even where its value is never used.
struct Range {
    const unsigned char* begin;
    const unsigned char* end;
};
inline std::vector<Range> readable;

inline bool may_read(const void* p, size_t bytes) {
    if (readable.empty()) return true;  // nothing registered: not checked
    const auto* at = static_cast<const unsigned char*>(p);
    for (const Range& r : readable)
        if (at >= r.begin && at + bytes <= r.end) return true;
    return false;
}

// The value of an explicit global load of *p, or a zero value and fault 5 outside the arrays.
template <typename T>
inline T checked_load(const T* p) {
    if (!may_read(p, sizeof(T))) {
        active->fault = 5;
        return T{};
    }
    return *p;
}

inline void yield() {
    if (_setjmp(active->current->resume) == 0) _longjmp(active->scheduler_resume, 1);
}

inline void wait(Barrier& b) {
    const unsigned long generation = b.generation;
    ++active->progress;
    if (++b.arrived == b.expected) {
        b.arrived = 0;
        ++b.generation;
        return;
    }
    Fiber* f = active->current;
    f->waiting = &b;  // the scheduler skips f until the barrier opens
    f->wait_generation = generation;
    while (b.generation == generation) yield();
    f->waiting = nullptr;
    ++active->progress;
}

inline void fiber_main() {
    active->body();
    active->current->done = true;
    ++active->progress;
    _longjmp(active->scheduler_resume, 1);
}

// 0: finished; 2: deadlock; 3: misaligned asynchronous copy; 5: a load outside the arrays.
inline int run(dim3 grid, dim3 block, int smem_bytes, std::function<void()> body, unsigned int seed) {
    Launch launch;
    launch.grid = grid;
    launch.block = block;
    launch.body = std::move(body);
    const int threads = static_cast<int>(block.x * block.y * block.z);
    const int warps = (threads + 31) / 32;
    const int nblocks = static_cast<int>(grid.x * grid.y * grid.z);
    launch.blocks.resize(nblocks);
    for (Block& b : launch.blocks) {
        b.smem.assign(static_cast<size_t>(smem_bytes) + 16, 0xFF);
        b.barrier.expected = threads;
        b.warp_barriers.resize(warps);
        for (int w = 0; w < warps; ++w) b.warp_barriers[w].expected = std::min(32, threads - 32 * w);
        b.exchange.assign(static_cast<size_t>(warps) * 32 * 8, 0);
    }
    launch.fibers.resize(static_cast<size_t>(nblocks) * threads);
    Launch* previous = active;
    active = &launch;
    size_t i = 0;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                Block* b = &launch.blocks[(z * grid.y + y) * grid.x + x];
                for (int t = 0; t < threads; ++t, ++i) {
                    Fiber& f = launch.fibers[i];
                    f.block_index = dim3{x, y, z};
                    f.thread = dim3{static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                                    static_cast<unsigned>(t / (block.x * block.y))};
                    f.block = b;
                    f.stack.resize(128 * 1024);
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack.data();
                    f.context.uc_stack.ss_size = f.stack.size();
                    f.context.uc_link = nullptr;
                    makecontext(&f.context, fiber_main, 0);
                }
            }
    std::mt19937 rng(seed);
    std::vector<Fiber*> order;
    for (Fiber& f : launch.fibers) order.push_back(&f);
    int status = 0;
    int idle_rounds = 0;
    while (true) {
        order.erase(std::remove_if(order.begin(), order.end(), [](Fiber* f) { return f->done; }), order.end());
        if (order.empty()) break;
        std::shuffle(order.begin(), order.end(), rng);
        const unsigned long before = launch.progress;
        for (Fiber* f : order) {
            if (f->waiting != nullptr && f->waiting->generation == f->wait_generation) continue;
            launch.current = f;
            if (_setjmp(launch.scheduler_resume) == 0) {
                if (!f->started) {
                    f->started = true;
                    swapcontext(&launch.scheduler, &f->context);  // returns through scheduler_resume instead
                } else {
                    _longjmp(f->resume, 1);
                }
            }
        }
        idle_rounds = launch.progress == before ? idle_rounds + 1 : 0;
        if (idle_rounds >= 3) {  // every fiber waits and nothing changes: a deadlock
            status = 2;
            break;
        }
    }
    active = previous;
    return status != 0 ? status : launch.fault;
}

template <typename... A, size_t... I>
void call_kernel(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(params[I])...);
}

template <typename... A>
std::function<void()> bind(void (*kernel)(A...), void** params) {
    return [kernel, params] { call_kernel(kernel, params, std::index_sequence_for<A...>{}); };
}

}  // namespace emu

#define threadIdx (emu::active->current->thread)
#define blockIdx (emu::active->current->block_index)
#define blockDim (emu::active->block)
#define gridDim (emu::active->grid)
#define GRU_DYNAMIC_SMEM(name) unsigned char* name = emu::active->current->block->smem.data()

inline void __syncthreads() { emu::wait(emu::active->current->block->barrier); }
inline void __threadfence() { ++emu::active->progress; }

inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    ++emu::active->progress;
    const unsigned int old = *p;
    *p = old + v;
    return old;
}

template <typename T>
inline T __shfl_xor_sync(unsigned int, T value, int lane_mask, int = 32) {
    emu::Fiber* f = emu::active->current;
    const int t = static_cast<int>(f->thread.x);
    const int warp = t / 32, lane = t % 32;
    T* slots = reinterpret_cast<T*>(f->block->exchange.data() + static_cast<size_t>(warp) * 32 * 8);
    slots[lane] = value;
    emu::wait(f->block->warp_barriers[warp]);
    const T other = slots[lane ^ lane_mask];
    emu::wait(f->block->warp_barriers[warp]);
    return other;
}

// The float intrinsics of the activations, at their nominal results.
inline float __expf(float v) { return expf(v); }
inline float __frcp_rn(float v) { return 1.0f / v; }

template <typename T>
inline T __ldg(const T* p) {
    return emu::checked_load(p);
}
template <typename T>
inline T __ldcg(const T* p) {
    return emu::checked_load(p);
}
template <typename T>
inline void __stcg(T* p, T v) {
    *p = v;
}

namespace gru {
inline unsigned int load_acquire(const unsigned int* p) { return *p; }
inline void spin_pause() { emu::yield(); }
// Asynchronous copies: poisoned at issue, landed by the wait that retires their group.
inline void copy_async16(void* dst, const void* src, int bytes) {
    if (reinterpret_cast<std::uintptr_t>(dst) % 16 != 0 || reinterpret_cast<std::uintptr_t>(src) % 16 != 0) {
        emu::active->fault = 3;
        return;
    }
    if (bytes > 0 && !emu::may_read(src, static_cast<size_t>(bytes))) {
        emu::active->fault = 5;
        return;
    }
    std::memset(dst, 0xFF, 16);
    emu::active->current->open_copies.push_back(emu::AsyncCopy{dst, src, bytes});
}
inline void copy_async_commit() {
    emu::Fiber* f = emu::active->current;
    f->copy_groups.push_back(std::move(f->open_copies));
    f->open_copies.clear();
}
inline void copy_async_wait(int pending) {
    emu::Fiber* f = emu::active->current;
    while (static_cast<int>(f->copy_groups.size()) > pending) {
        for (const emu::AsyncCopy& c : f->copy_groups.front()) {
            std::memset(c.dst, 0, 16);
            if (c.bytes > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
        }
        f->copy_groups.erase(f->copy_groups.begin());
    }
}
// L2 eviction policies have no meaning here: plain loads.
inline unsigned long long l2_policy(bool) { return 0; }
template <typename T>
inline T load_with_policy(const T* p, unsigned long long) {
    return emu::checked_load(p);
}
}  // namespace gru
