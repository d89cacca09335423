// Public kernel entry points: forward to the instruction-set variant chosen at run time.
#include "arch/isa.hpp"
#include "gmmfast/missing.hpp"

namespace gmmfast {

#if defined(GMMFAST_HAVE_AVX512)
#define GMMFAST_CASE_AVX512(call) \
    case Isa::Avx512: return isa_avx512::call;
#else
#define GMMFAST_CASE_AVX512(call)
#endif
#if defined(GMMFAST_HAVE_AVX2)
#define GMMFAST_CASE_AVX2(call) \
    case Isa::Avx2: return isa_avx2::call;
#else
#define GMMFAST_CASE_AVX2(call)
#endif
#define GMMFAST_DISPATCH(call)           \
    switch (current_isa()) {             \
        GMMFAST_CASE_AVX512(call)        \
        GMMFAST_CASE_AVX2(call)          \
        default: return isa_baseline::call; \
    }

template <class T>
RunInfo log_prob(const T* X, int64_t N, const Mixture<T>& mix, LogProbOutput what, T* out,
                 const Exec& exec) {
    GMMFAST_DISPATCH(log_prob<T>(X, N, mix, what, out, exec))
}

template <class T>
RunInfo em_stats(const T* X, int64_t N, const Mixture<T>& mix, const Responsibilities<T>& resp,
                 const T* centres, const T* sample_weight, Stats& out, const Exec& exec) {
    GMMFAST_DISPATCH(em_stats<T>(X, N, mix, resp, centres, sample_weight, out, exec))
}

template <class T>
Status kmeans_plusplus(const T* X, int64_t N, int64_t D, int64_t K, const T* sample_weight,
                       int64_t first, const double* uniforms, int n_local_trials, T* centres,
                       int64_t* indices, const Exec& exec) {
    GMMFAST_DISPATCH(kmeans_plusplus<T>(X, N, D, K, sample_weight, first, uniforms, n_local_trials,
                                        centres, indices, exec))
}

template <class T>
KMeansResult kmeans_lloyd(const T* X, int64_t N, int64_t D, int64_t K, const T* sample_weight,
                          T* centres, int64_t* labels, int max_iter, double tol,
                          const Exec& exec) {
    GMMFAST_DISPATCH(kmeans_lloyd<T>(X, N, D, K, sample_weight, centres, labels, max_iter, tol,
                                     exec))
}

template <class T>
RunInfo log_prob_grad_x(const T* X, int64_t N, const Mixture<T>& mix, const Responsibilities<T>& resp,
                        const T* sample_weight, T* grad, const Exec& exec) {
    GMMFAST_DISPATCH(log_prob_grad_x<T>(X, N, mix, resp, sample_weight, grad, exec))
}

template <class T>
RunInfo em_stats_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& idx,
                         const T* centres, const T* sample_weight, Stats& out, const Exec& exec) {
    GMMFAST_DISPATCH(em_stats_missing<T>(X, N, mix, idx, centres, sample_weight, out, exec))
}

template <class T>
RunInfo log_prob_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& idx,
                         MissingOutput what, T* out, const Exec& exec) {
    GMMFAST_DISPATCH(log_prob_missing<T>(X, N, mix, idx, what, out, exec))
}

#define GMMFAST_INSTANTIATE(T)                                                                 \
    template RunInfo log_prob<T>(const T*, int64_t, const Mixture<T>&, LogProbOutput, T*,     \
                                 const Exec&);                                                 \
    template RunInfo em_stats<T>(const T*, int64_t, const Mixture<T>&,                         \
                                 const Responsibilities<T>&, const T*, const T*, Stats&,       \
                                 const Exec&);                                                 \
    template Status kmeans_plusplus<T>(const T*, int64_t, int64_t, int64_t, const T*,         \
                                       int64_t, const double*, int, T*, int64_t*, const Exec&); \
    template KMeansResult kmeans_lloyd<T>(const T*, int64_t, int64_t, int64_t, const T*, T*,   \
                                          int64_t*, int, double, const Exec&);                 \
    template RunInfo log_prob_grad_x<T>(const T*, int64_t, const Mixture<T>&,                  \
                                        const Responsibilities<T>&, const T*, T*, const Exec&); \
    template RunInfo em_stats_missing<T>(const T*, int64_t, const Mixture<T>&, const MissingIndex&, \
                                         const T*, const T*, Stats&, const Exec&);                  \
    template RunInfo log_prob_missing<T>(const T*, int64_t, const Mixture<T>&, const MissingIndex&, \
                                         MissingOutput, T*, const Exec&);
GMMFAST_INSTANTIATE(float)
GMMFAST_INSTANTIATE(double)

}  // namespace gmmfast
