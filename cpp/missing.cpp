// Missing values: the index of rows grouped by missingness pattern. The pattern-grouped
// E-step and EM statistics (em_stats_missing, log_prob_missing) are compiled once per
// instruction set in arch/missing_kernels.inl and dispatched in dispatch.cpp (see
// gmmfast/missing.hpp for the algebra and docs/missing.md for the cost model).
#include "gmmfast/missing.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "gmmfast/runtime.hpp"

namespace gmmfast {

MissingIndex MissingIndexData::view() const {
    MissingIndex v;
    v.n_complete = int64_t(complete.size());
    v.complete = complete.data();
    v.n_incomplete = int64_t(rows.size());
    v.rows = rows.data();
    v.n_patterns = offsets.empty() ? 0 : int64_t(offsets.size()) - 1;
    v.offsets = offsets.data();
    v.observed = observed.data();
    return v;
}

template <class T>
MissingIndexData build_missing_index(const T* X, int64_t N, int64_t D, int n_threads) {
    MissingIndexData out;
    out.observed_per_column.assign(static_cast<std::size_t>(D), 0);
    // one pass: which rows are incomplete, the first ±inf and the first empty row
    std::vector<uint8_t> incomplete(static_cast<std::size_t>(N), 0);
    int64_t first_inf = N, first_empty = N;
    const int nt = N * D < (int64_t(1) << 16) ? 1 : resolve_threads(n_threads);
#pragma omp parallel for schedule(static) num_threads(nt) reduction(min : first_inf, first_empty)
    for (int64_t i = 0; i < N; ++i) {
        const T* x = X + i * D;
        int64_t n_missing = 0;
        bool inf = false;
        for (int64_t d = 0; d < D; ++d) {
            n_missing += std::isnan(x[d]) ? 1 : 0;
            inf |= std::isinf(x[d]);
        }
        incomplete[i] = n_missing > 0;
        if (inf) first_inf = std::min(first_inf, i);
        if (n_missing == D) first_empty = std::min(first_empty, i);
    }
    out.first_inf_row = first_inf == N ? -1 : first_inf;
    out.first_empty_row = first_empty == N ? -1 : first_empty;
    for (int64_t i = 0; i < N; ++i) {
        if (!incomplete[i]) {
            out.complete.push_back(i);
            for (int64_t d = 0; d < D; ++d) ++out.observed_per_column[d];
        }
    }
    std::vector<int64_t> inc;
    inc.reserve(static_cast<std::size_t>(N) - out.complete.size());
    for (int64_t i = 0; i < N; ++i)
        if (incomplete[i]) inc.push_back(i);
    // the observed-coordinate bytes of each incomplete row, then a stable sort by them
    const int64_t n = int64_t(inc.size());
    std::vector<uint8_t> bytes(static_cast<std::size_t>(n * D));
    for (int64_t j = 0; j < n; ++j) {
        const T* x = X + inc[j] * D;
        for (int64_t d = 0; d < D; ++d) {
            const uint8_t o = std::isnan(x[d]) ? 0 : 1;
            bytes[j * D + d] = o;
            out.observed_per_column[d] += o;
        }
    }
    std::vector<int64_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), int64_t(0));
    const std::size_t len = static_cast<std::size_t>(D);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return std::memcmp(&bytes[a * D], &bytes[b * D], len) < 0;
    });
    out.rows.resize(static_cast<std::size_t>(n));
    for (int64_t j = 0; j < n; ++j) {
        out.rows[j] = inc[order[j]];
        if (j == 0 || std::memcmp(&bytes[order[j] * D], &bytes[order[j - 1] * D], len) != 0) {
            out.offsets.push_back(j);
            out.observed.insert(out.observed.end(), &bytes[order[j] * D], &bytes[order[j] * D] + D);
        }
    }
    out.offsets.push_back(n);
    return out;
}

#define GMMFAST_INSTANTIATE_MISSING(T) \
    template MissingIndexData build_missing_index<T>(const T*, int64_t, int64_t, int);
GMMFAST_INSTANTIATE_MISSING(float)
GMMFAST_INSTANTIATE_MISSING(double)

}  // namespace gmmfast
