// Parameter checks shared by every backend, and the covariance-type sizes.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "gmmfast/log_prob.hpp"
#include "gmmfast/validate.hpp"

namespace gmmfast {

int64_t param_size(Covariance cov, int64_t K, int64_t D) {
    switch (cov) {
        case Covariance::Full: return K * D * D;
        case Covariance::Tied: return D * D;
        case Covariance::Diag: return K * D;
        case Covariance::Spherical: return K;
    }
    return 0;
}

template <class T>
std::string check_mixture(const Mixture<T>& mix) {
    const int64_t K = mix.K, D = mix.D;
    if (K < 1) return "the mixture needs at least one component";
    if (D < 1) return "the mixture needs at least one feature";
    bool any_finite_weight = false;
    for (int64_t k = 0; k < K; ++k) {
        const T w = mix.log_weights[k];
        if (std::isnan(w) || w == std::numeric_limits<T>::infinity())
            return "log_weights[" + std::to_string(k) + "] is " + (std::isnan(w) ? "NaN" : "+inf");
        if (std::isfinite(w)) any_finite_weight = true;
    }
    if (!any_finite_weight) return "every component has weight zero (all log_weights are -inf)";
    for (int64_t j = 0; j < K * D; ++j)
        if (!std::isfinite(mix.means[j]))
            return "means[" + std::to_string(j / D) + "] contains NaN or infinity";
    const T* U = mix.prec_chol;
    switch (mix.cov) {
        case Covariance::Full:
        case Covariance::Tied: {
            const int64_t n = (mix.cov == Covariance::Full) ? K : 1;
            for (int64_t k = 0; k < n; ++k) {
                const T* u = U + k * D * D;
                const std::string name = mix.cov == Covariance::Full
                                             ? "precisions_cholesky[" + std::to_string(k) + "]"
                                             : std::string("precisions_cholesky");
                for (int64_t l = 0; l < D; ++l)
                    for (int64_t j = 0; j < D; ++j) {
                        const T v = u[l * D + j];
                        if (!std::isfinite(v)) return name + " contains NaN or infinity";
                        if (j < l && v != T(0))
                            return name + " must be upper triangular (scikit-learn's precisions_cholesky_), but entry [" +
                                   std::to_string(l) + ", " + std::to_string(j) + "] is non-zero";
                        if (j == l && !(v > T(0)))
                            return name + " must have a positive diagonal (a positive-definite precision), but entry [" +
                                   std::to_string(l) + ", " + std::to_string(l) + "] is " + std::to_string(double(v));
                    }
            }
            break;
        }
        case Covariance::Diag:
        case Covariance::Spherical: {
            const int64_t n = param_size(mix.cov, K, D);
            for (int64_t j = 0; j < n; ++j)
                if (!std::isfinite(U[j]) || !(U[j] > T(0)))
                    return "precisions_cholesky must be finite and positive, but entry " +
                           std::to_string(j) + " is " + std::to_string(double(U[j]));
            break;
        }
    }
    return "";
}

template <class T>
int64_t first_nonfinite_row(const T* X, int64_t N, int64_t D, int n_threads) {
    int64_t first = N;  // "none"
    // Below ~64k values a second thread costs more to wake than it saves.
    const int nt = N * D < (int64_t(1) << 16) ? 1 : resolve_threads(n_threads);
#pragma omp parallel for schedule(static) num_threads(nt) reduction(min : first)
    for (int64_t i = 0; i < N; ++i) {
        // x - x is 0 for finite x and NaN for ±inf and NaN: vectorises without branches
        T acc = T(0);
        const T* row = X + i * D;
        for (int64_t d = 0; d < D; ++d) acc += row[d] - row[d];
        if (acc != T(0)) first = std::min(first, i);
    }
    return first == N ? -1 : first;
}

template std::string check_mixture<float>(const Mixture<float>&);
template std::string check_mixture<double>(const Mixture<double>&);
template int64_t first_nonfinite_row<float>(const float*, int64_t, int64_t, int);
template int64_t first_nonfinite_row<double>(const double*, int64_t, int64_t, int);

}  // namespace gmmfast
