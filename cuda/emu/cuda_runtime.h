// A minimal HOST EMULATION of the parts of the CUDA runtime that gmmfast's kernels use,
// so that the unmodified kernel source (cuda/*.cu, rewritten only at launch sites by
// make_emu.py) runs on a CPU under AddressSanitizer / UBSan / ThreadSanitizer.
//
// Model: a launch runs the grid's blocks one after another; the threads of a block are
// real OS threads (std::thread), so __syncthreads() is a real barrier and a missing one
// shows up as a data race under ThreadSanitizer. __shared__ becomes `static` (one copy,
// shared by the block's threads; blocks run sequentially, separated by a barrier).
// Warp shuffles exchange values through a per-warp buffer between two warp barriers.
// Device memory is host memory. Nothing here is used by the real (nvcc) build.
#pragma once

#include <pthread.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#ifndef __CUDACC__
#define __CUDACC__ 1
#endif
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::exp;
using std::fma;
using std::isfinite;
using std::log;
using std::sqrt;
// expf / fmaf come from <math.h> in the global namespace.
#include <math.h>

struct uint3 {
    unsigned x = 0, y = 0, z = 0;
};
using dim3 = uint3;
inline thread_local uint3 threadIdx, blockIdx, blockDim, gridDim;

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };
inline thread_local cudaError_t emu_last_error = cudaSuccess;
inline cudaError_t cudaGetLastError() {
    const cudaError_t e = emu_last_error;
    emu_last_error = cudaSuccess;
    return e;
}
inline const char* cudaGetErrorName(cudaError_t e) { return e ? "cudaErrorInvalidConfiguration" : "cudaSuccess"; }
inline const char* cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) {
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
    *v = 0;
    return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
    *v = 0;
    return cudaSuccess;
}

namespace emu {

struct Barrier {
    pthread_barrier_t b;
    explicit Barrier(unsigned n) { pthread_barrier_init(&b, nullptr, n); }
    ~Barrier() { pthread_barrier_destroy(&b); }
    Barrier(const Barrier&) = delete;
    Barrier& operator=(const Barrier&) = delete;
    void wait() { pthread_barrier_wait(&b); }
};

inline thread_local Barrier* block_barrier = nullptr;
inline thread_local Barrier* warp_barrier = nullptr;
inline thread_local double* warp_buffer = nullptr;

/// Counters for the test driver.
inline std::size_t launches = 0;

template <class F>
void launch(unsigned grid, unsigned block, std::size_t smem, cudaStream_t, F&& body) {
    ++launches;
    if (grid == 0 || block == 0 || block > 1024 || smem != 0) {
        // a real launch would fail with cudaErrorInvalidConfiguration
        emu_last_error = cudaErrorInvalidConfiguration;
        std::fprintf(stderr, "emu: invalid launch configuration grid=%u block=%u smem=%zu\n", grid, block, smem);
        return;
    }
    Barrier bb(block);
    const unsigned nwarps = (block + 31) / 32;
    std::vector<std::unique_ptr<Barrier>> wb;
    for (unsigned w = 0; w < nwarps; ++w) {
        const unsigned lanes = (w + 1) * 32 <= block ? 32 : block - w * 32;
        wb.emplace_back(new Barrier(lanes));
    }
    std::vector<double> buffer(std::size_t(nwarps) * 32, 0.0);
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx.x = t;
            blockDim.x = block;
            gridDim.x = grid;
            block_barrier = &bb;
            warp_barrier = wb[t / 32].get();
            warp_buffer = buffer.data() + (t / 32) * 32;
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx.x = b;
                body();
                bb.wait();  // the next block reuses the `static` shared memory
            }
        });
    }
    for (auto& th : threads) th.join();
}

}  // namespace emu

inline void __syncthreads() { emu::block_barrier->wait(); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int offset) {
    if (mask != 0xffffffffu) std::abort();  // the kernels only use full-warp shuffles
    const unsigned lane = threadIdx.x % 32;
    emu::warp_buffer[lane] = double(v);  // exact for float and double
    emu::warp_barrier->wait();
    const T r = T(emu::warp_buffer[lane ^ unsigned(offset)]);
    emu::warp_barrier->wait();  // everyone has read before the next shuffle writes
    return r;
}
