// Per-sample mixture entry points: forward to the instruction-set variant chosen at run
// time (the same choice as the shared-mixture kernels, see runtime.hpp).
#include "gmmfast/per_sample.hpp"

#include "arch/isa.hpp"

namespace gmmfast {

#define GMMFAST_DECLARE_PER_SAMPLE(NS)                                                           \
    namespace NS {                                                                               \
    template <class T>                                                                           \
    RunInfo per_sample_log_prob(const T* y, const PerSampleMixture<T>& mix, T* out, T* resp,     \
                                const Exec& exec);                                               \
    template <class T>                                                                           \
    Status per_sample_log_prob_backward(const T* grad, const T* resp, const T* y,                \
                                        const PerSampleMixture<T>& mix, T* grad_y,               \
                                        T* grad_logits, T* grad_means, T* grad_scale,            \
                                        T* grad_rho, const Exec& exec);                          \
    }
GMMFAST_DECLARE_PER_SAMPLE(isa_baseline)
#if defined(GMMFAST_HAVE_AVX2)
GMMFAST_DECLARE_PER_SAMPLE(isa_avx2)
#endif
#if defined(GMMFAST_HAVE_AVX512)
GMMFAST_DECLARE_PER_SAMPLE(isa_avx512)
#endif
#undef GMMFAST_DECLARE_PER_SAMPLE

#if defined(GMMFAST_HAVE_AVX512)
#define GMMFAST_PS_CASE_AVX512(call) \
    case Isa::Avx512: return isa_avx512::call;
#else
#define GMMFAST_PS_CASE_AVX512(call)
#endif
#if defined(GMMFAST_HAVE_AVX2)
#define GMMFAST_PS_CASE_AVX2(call) \
    case Isa::Avx2: return isa_avx2::call;
#else
#define GMMFAST_PS_CASE_AVX2(call)
#endif
#define GMMFAST_PS_DISPATCH(call)           \
    switch (current_isa()) {                \
        GMMFAST_PS_CASE_AVX512(call)        \
        GMMFAST_PS_CASE_AVX2(call)          \
        default: return isa_baseline::call; \
    }

int64_t per_sample_scale_size(ScaleForm form, MixtureMode mode, int64_t K, int64_t D) {
    if (mode == MixtureMode::PerDim) return D * K;
    switch (form) {
        case ScaleForm::Isotropic: return K;
        case ScaleForm::Diag: return K * D;
        case ScaleForm::Full: return K * D * D;
        default: return 2 * K;  // Correlated2D: (σ1, σ2) per component
    }
}

template <class T>
RunInfo per_sample_log_prob(const T* y, const PerSampleMixture<T>& mix, T* out, T* resp, const Exec& exec) {
    GMMFAST_PS_DISPATCH(per_sample_log_prob<T>(y, mix, out, resp, exec))
}

template <class T>
Status per_sample_log_prob_backward(const T* grad, const T* resp, const T* y, const PerSampleMixture<T>& mix,
                                    T* grad_y, T* grad_logits, T* grad_means, T* grad_scale, T* grad_rho,
                                    const Exec& exec) {
    GMMFAST_PS_DISPATCH(per_sample_log_prob_backward<T>(grad, resp, y, mix, grad_y, grad_logits, grad_means,
                                                        grad_scale, grad_rho, exec))
}

template RunInfo per_sample_log_prob<float>(const float*, const PerSampleMixture<float>&, float*, float*,
                                            const Exec&);
template RunInfo per_sample_log_prob<double>(const double*, const PerSampleMixture<double>&, double*, double*,
                                             const Exec&);
template Status per_sample_log_prob_backward<float>(const float*, const float*, const float*,
                                                    const PerSampleMixture<float>&, float*, float*, float*,
                                                    float*, float*, const Exec&);
template Status per_sample_log_prob_backward<double>(const double*, const double*, const double*,
                                                     const PerSampleMixture<double>&, double*, double*,
                                                     double*, double*, double*, const Exec&);

}  // namespace gmmfast
