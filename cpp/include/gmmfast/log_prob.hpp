// log_prob: log-densities of samples under a Gaussian mixture.
#pragma once

#include <string>

#include "gmmfast/mixture.hpp"

namespace gmmfast {

/// What log_prob writes.
enum class LogProbOutput : int {
    Sample = 0,    ///< out size N:     log p(x_i) = logsumexp_k (log π_k + log N(x_i | k))
    LogResp = 1,   ///< out size N * K: log p(k | x_i)
    Weighted = 2,  ///< out size N * K: log π_k + log N(x_i | k)
};

/// @param X    size N * D
/// @param mix  the mixture (validated with check_mixture first)
/// @param out  size N (Sample) or N * K (LogResp, Weighted)
/// Rows are processed in cache-sized blocks in parallel; nothing of size N * K is
/// allocated unless the caller asks for it through `out`.
template <class T>
RunInfo log_prob(const T* X, int64_t N, const Mixture<T>& mix, LogProbOutput what, T* out,
                 const Exec& exec = Exec{});

/// Checks a mixture's parameters: finite means and log-weights (log-weights may be
/// -inf but not all of them), precision Cholesky factors with a finite, positive
/// diagonal and zeros below it. Returns "" when valid, else a message naming the
/// offending parameter (e.g. "precisions_cholesky[2] has a non-positive diagonal").
template <class T>
std::string check_mixture(const Mixture<T>& mix);

}  // namespace gmmfast
