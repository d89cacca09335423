// A measured ceiling for the benchmark (bench/ceiling.py): how many floating-point
// operations per second this CPU's fused multiply-add units deliver on `n_threads`
// threads, at the vector width of the instruction set the kernel dispatcher chose.
//
// The loop is a dozen independent chains a = a * m + c on registers: no loads, no
// stores, no dependency shorter than the FMA latency times the number of FMA pipes on
// current x86 cores (4 cycles x 2 pipes = 8 chains in flight; 12 leave room). It is an
// upper bound that no real kernel reaches (a kernel must also load its operands), not a
// GEMM. -ffp-contract=fast (CMakeLists.txt) turns a * m + c into one FMA instruction;
// there is no -ffast-math here either.
#include "gmmfast/peak.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "arch/isa.hpp"
#include "gmmfast/runtime.hpp"

namespace gmmfast {
namespace {

constexpr int kChains = 12;

// One function per instruction set and type. The vector type is declared inside the
// function so that it only exists where the target attribute allows its width. Returns
// a sum of the lanes so that the compiler cannot drop the loop.
#define GMMFAST_FMA_LOOP(NAME, ATTR, T, BYTES)                                         \
    __attribute__((noinline)) ATTR double NAME(int64_t iters) {                        \
        typedef T V __attribute__((vector_size(BYTES)));                               \
        constexpr int W = BYTES / int(sizeof(T));                                      \
        V a[kChains];                                                                  \
        for (int c = 0; c < kChains; ++c) a[c] = V{} + T(1 + c);                       \
        const V m = V{} + T(0.9999), add = V{} + T(1e-4);                              \
        for (int64_t it = 0; it < iters; ++it) {                                       \
            for (int c = 0; c < kChains; ++c) a[c] = a[c] * m + add;                   \
        }                                                                              \
        double s = 0.0;                                                                \
        for (int c = 0; c < kChains; ++c)                                              \
            for (int q = 0; q < W; ++q) s += double(a[c][q]);                          \
        return s;                                                                      \
    }

#if defined(GMMFAST_HAVE_AVX512)
GMMFAST_FMA_LOOP(fma_loop_d_avx512, __attribute__((target("avx512f,fma"))), double, 64)
GMMFAST_FMA_LOOP(fma_loop_f_avx512, __attribute__((target("avx512f,fma"))), float, 64)
#endif
#if defined(GMMFAST_HAVE_AVX2)
GMMFAST_FMA_LOOP(fma_loop_d_avx2, __attribute__((target("avx2,fma"))), double, 32)
GMMFAST_FMA_LOOP(fma_loop_f_avx2, __attribute__((target("avx2,fma"))), float, 32)
#endif
// Baseline x86-64 has no FMA: the "FMA" here is a multiply and an add (SSE2, 16 bytes),
// which is what the baseline kernels run too.
GMMFAST_FMA_LOOP(fma_loop_d_base, , double, 16)
GMMFAST_FMA_LOOP(fma_loop_f_base, , float, 16)

struct Loop {
    double (*fn)(int64_t);
    int lanes;
};

Loop pick(Isa isa, bool is_double) {
    switch (isa) {
#if defined(GMMFAST_HAVE_AVX512)
        case Isa::Avx512: return is_double ? Loop{fma_loop_d_avx512, 8} : Loop{fma_loop_f_avx512, 16};
#endif
#if defined(GMMFAST_HAVE_AVX2)
        case Isa::Avx2: return is_double ? Loop{fma_loop_d_avx2, 4} : Loop{fma_loop_f_avx2, 8};
#endif
        default: return is_double ? Loop{fma_loop_d_base, 2} : Loop{fma_loop_f_base, 4};
    }
}

}  // namespace

FmaPeak fma_peak(const std::string& dtype, int n_threads, int64_t iterations, int repeat) {
    if (dtype != "float32" && dtype != "float64")
        throw std::invalid_argument("fma_peak: dtype must be 'float32' or 'float64', got '" + dtype + "'");
    if (iterations < 1)
        throw std::invalid_argument("fma_peak: iterations must be >= 1, got " + std::to_string(iterations));
    if (repeat < 1) throw std::invalid_argument("fma_peak: repeat must be >= 1, got " + std::to_string(repeat));
    const int threads = resolve_threads(n_threads);
    const Loop loop = pick(current_isa(), dtype == "float64");
    double best = 0.0, sink = 0.0;
    for (int r = 0; r < repeat + 1; ++r) {  // the first run warms the clocks and the thread pool
        const auto t0 = std::chrono::steady_clock::now();
        double s = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : s)
        s += loop.fn(iterations);
        const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        sink += s;
        if (r > 0 && sec > 0.0) best = std::max(best, double(threads) * double(iterations) / sec);
    }
    FmaPeak out;
    out.isa = active_isa();
    out.threads = threads;
    out.lanes = loop.lanes;
    out.chains = kChains;
    out.iterations = iterations;
    // per loop iteration: kChains vector FMAs of `lanes` lanes, 2 flops each
    out.gflops = best * kChains * loop.lanes * 2.0 / 1e9;
    out.checksum = sink;
    return out;
}

}  // namespace gmmfast
