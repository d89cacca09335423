// Missing values (NaN entries, missing at random): the E-step on the observed
// coordinates of each row and the EM statistics with the conditional expectations of
// the missing ones (Ghahramani & Jordan 1994). See docs/missing.md for the algebra and
// the cost model.
//
// Rows are grouped by missingness pattern (which coordinates are observed). For a
// pattern with m missing coordinates (index set M) and o observed ones (O), and a
// component with precision P = U Uᵀ (U its precision Cholesky factor), the per-pattern
// factors are, in float64:
//   L        the lower Cholesky factor of P_MM                          m × m
//   C        P_MM⁻¹        (the conditional covariance of x_M given x_O)  m × m
//   log|L|   Σ_a log L_aa
// and per row the conditional mean x̂_M = μ_M − C P_MO (x_O − μ_O) (m·o + m²; forming
// C P_MO once per pattern would cost m²·o, more than the rows of most patterns save)
// and a row's marginal log-density over its observed coordinates is that of the row
// completed with its conditional mean x̂ (a quadratic form in U, as for complete rows),
// corrected by the conditional density at its mode:
//   log N(x_O | μ_O, Σ_OO) = −½ (D − m) log 2π − ½ ‖(x̂ − μ)ᵀ U‖² + Σ_j log U_jj − log|L|.
// The statistics of component k add, per row, r (x̂ − c) to s1 and r (x̂ − c)(x̂ − c)ᵀ to
// s2 (in the covariance type's form), and, per pattern, (Σ_rows r) C to the M × M block
// of s2. Diagonal and spherical precisions need no factorisation (P_MO = 0, C = diag(1/u²)).
// The statistics are those of gmmfast/mixture.hpp's Stats: gmmfast::finalize turns them
// into the parameters of the EM M-step unchanged.
#pragma once

#include <cstdint>
#include <vector>

#include "gmmfast/em_stats.hpp"
#include "gmmfast/log_prob.hpp"

namespace gmmfast {

/// Rows grouped by missingness pattern (borrowed by the kernels).
struct MissingIndex {
    int64_t n_complete = 0;
    const int64_t* complete = nullptr;  ///< rows with every coordinate observed, ascending
    int64_t n_incomplete = 0;
    const int64_t* rows = nullptr;      ///< the other rows, grouped by pattern (ascending within one)
    int64_t n_patterns = 0;
    const int64_t* offsets = nullptr;   ///< size n_patterns + 1: pattern p is rows[offsets[p] : offsets[p + 1]]
    const uint8_t* observed = nullptr;  ///< size n_patterns * D: 1 where the pattern observes the coordinate
};

/// The index of X (size N * D), NaN marking a missing entry, built by build_missing_index.
struct MissingIndexData {
    std::vector<int64_t> complete, rows, offsets;
    std::vector<uint8_t> observed;
    std::vector<int64_t> observed_per_column;  ///< size D: rows observing each coordinate
    int64_t first_inf_row = -1;    ///< the first row holding ±inf (an error for the caller), or -1
    int64_t first_empty_row = -1;  ///< the first row with every coordinate missing, or -1
    MissingIndex view() const;
};

/// Groups the rows of X by missingness pattern (patterns in the order of their bytes,
/// rows ascending within a pattern: the result depends on X only).
template <class T>
MissingIndexData build_missing_index(const T* X, int64_t N, int64_t D, int n_threads = 0);

/// em_stats (gmmfast/em_stats.hpp, with the E-step) of rows with missing entries:
/// complete rows go through gmmfast::em_stats itself (gathered in blocks), the others
/// through the pattern kernel. Rows whose marginal log-likelihood is not finite are
/// skipped and reported in first_bad_row (an index into X), as em_stats does.
template <class T>
RunInfo em_stats_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& index,
                         const T* centres, const T* sample_weight, Stats& out,
                         const Exec& exec = Exec{});

/// What log_prob_missing writes.
enum class MissingOutput : int {
    Sample = 0,    ///< out size N: log p(x_O)
    LogResp = 1,   ///< out size N * K: log p(k | x_O)
    Weighted = 2,  ///< out size N * K: log π_k + log N(x_O | k)
    Impute = 3,    ///< out size N * D: x with each missing entry replaced by E[x_M | x_O]
};

/// log_prob (gmmfast/log_prob.hpp) of rows with missing entries, marginal over the
/// observed coordinates; or their conditional expectations (Impute).
template <class T>
RunInfo log_prob_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& index,
                         MissingOutput what, T* out, const Exec& exec = Exec{});

}  // namespace gmmfast
