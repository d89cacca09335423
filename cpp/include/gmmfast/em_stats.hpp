// em_stats: the fused E-step and sufficient statistics of EM, in one pass over X.
#pragma once

#include "gmmfast/mixture.hpp"

namespace gmmfast {

/// Where the responsibilities p(k | x_i) come from.
enum class RespSource : int {
    EStep = 0,   ///< computed from the mixture (the E-step); the usual case
    Given = 1,   ///< read from resp, size N * K (rows need not sum to one)
    Labels = 2,  ///< hard assignments, labels size N with values in [0, K)
};

template <class T>
struct Responsibilities {
    RespSource source = RespSource::EStep;
    const T* resp = nullptr;           ///< size N * K, when source == Given
    const int64_t* labels = nullptr;   ///< size N, when source == Labels
};

/// One pass over X: responsibilities (from `resp`) and the statistics of
/// gmmfast/mixture.hpp's Stats, centred at `centres`.
///
/// @param X              size N * D
/// @param mix            the mixture; for Given/Labels only K, D and cov are read
/// @param centres        size K * D, normally the current means. Centring at the
///                       current means keeps float32 accurate on data far from the
///                       origin: the uncentred Σ r x xᵀ - N μ μᵀ cancels catastrophically.
/// @param sample_weight  size N, or nullptr for unit weights; may be negative (the
///                       autograd backward passes upstream gradients here)
/// @param out            nk size K, s1 size K * D, s2 size param_size(cov, K, D);
///                       overwritten
///
/// Rows are processed in blocks whose responsibilities live in a cache-sized tile;
/// nothing of size N * K, N * D or N * K * D is allocated. Each thread accumulates in
/// float64 and partials are merged in thread order, so the same input and thread
/// count give bit-identical output. When the mixture gives a row a non-finite
/// log-likelihood the row is skipped and reported in RunInfo::first_bad_row.
template <class T>
RunInfo em_stats(const T* X, int64_t N, const Mixture<T>& mix, const Responsibilities<T>& resp,
                 const T* centres, const T* sample_weight, Stats& out,
                 const Exec& exec = Exec{});

}  // namespace gmmfast
