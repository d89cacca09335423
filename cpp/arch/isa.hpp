// Internal: the kernel entry points compiled once per instruction set (see
// kernels.inl), and the buffers they share. Not part of the public headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "gmmfast/em_stats.hpp"
#include "gmmfast/grad.hpp"
#include "gmmfast/kmeans.hpp"
#include "gmmfast/log_prob.hpp"
#include "gmmfast/missing.hpp"

namespace gmmfast {

/// A 64-byte aligned, zero-initialised array; owns its memory.
template <class T>
class AlignedBuffer {
public:
    AlignedBuffer() = default;
    explicit AlignedBuffer(std::size_t n) { resize(n); }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    AlignedBuffer(AlignedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) { o.p_ = nullptr; o.n_ = 0; }
    ~AlignedBuffer() { std::free(p_); }

    void resize(std::size_t n) {
        std::free(p_);
        p_ = nullptr;
        n_ = n;
        if (n == 0) return;
        // Round the byte count up to the alignment, as aligned_alloc requires.
        std::size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
        p_ = static_cast<T*>(std::aligned_alloc(64, bytes));
        if (!p_) throw std::bad_alloc();
        for (std::size_t i = 0; i < n; ++i) p_[i] = T(0);
    }
    T* data() { return p_; }
    const T* data() const { return p_; }
    std::size_t size() const { return n_; }
    T& operator[](std::size_t i) { return p_[i]; }
    const T& operator[](std::size_t i) const { return p_[i]; }

private:
    T* p_ = nullptr;
    std::size_t n_ = 0;
};

#define GMMFAST_DECLARE_ISA(NS)                                                                \
    namespace NS {                                                                             \
    template <class T>                                                                         \
    RunInfo log_prob(const T* X, int64_t N, const Mixture<T>& mix, LogProbOutput what, T* out, \
                     const Exec& exec);                                                        \
    template <class T>                                                                         \
    RunInfo em_stats(const T* X, int64_t N, const Mixture<T>& mix,                             \
                     const Responsibilities<T>& resp, const T* centres,                        \
                     const T* sample_weight, Stats& out, const Exec& exec);                    \
    template <class T>                                                                         \
    Status kmeans_plusplus(const T* X, int64_t N, int64_t D, int64_t K,                        \
                           const T* sample_weight, int64_t first, const double* uniforms,      \
                           int n_local_trials, T* centres, int64_t* indices,                   \
                           const Exec& exec);                                                  \
    template <class T>                                                                         \
    KMeansResult kmeans_lloyd(const T* X, int64_t N, int64_t D, int64_t K,                     \
                              const T* sample_weight, T* centres, int64_t* labels,             \
                              int max_iter, double tol, const Exec& exec);                     \
    template <class T>                                                                         \
    RunInfo log_prob_grad_x(const T* X, int64_t N, const Mixture<T>& mix,                      \
                            const Responsibilities<T>& resp, const T* sample_weight, T* grad,  \
                            const Exec& exec);                                                 \
    template <class T>                                                                         \
    RunInfo em_stats_missing(const T* X, int64_t N, const Mixture<T>& mix,                     \
                             const MissingIndex& idx, const T* centres, const T* sample_weight,\
                             Stats& out, const Exec& exec);                                    \
    template <class T>                                                                         \
    RunInfo log_prob_missing(const T* X, int64_t N, const Mixture<T>& mix,                     \
                             const MissingIndex& idx, MissingOutput what, T* out,              \
                             const Exec& exec);                                                \
    }

GMMFAST_DECLARE_ISA(isa_baseline)
#if defined(GMMFAST_HAVE_AVX2)
GMMFAST_DECLARE_ISA(isa_avx2)
#endif
#if defined(GMMFAST_HAVE_AVX512)
GMMFAST_DECLARE_ISA(isa_avx512)
#endif

enum class Isa : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

/// The variant selected for this process (see runtime.hpp).
Isa current_isa();

}  // namespace gmmfast
