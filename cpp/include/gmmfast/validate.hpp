// Input checks that the bindings (and C++ callers) run before the kernels.
#pragma once

#include <cstdint>

#include "gmmfast/runtime.hpp"

namespace gmmfast {

/// The first row of X (size N * D) that holds a NaN or an infinity, or -1.
template <class T>
int64_t first_nonfinite_row(const T* X, int64_t N, int64_t D, int n_threads = 0);

}  // namespace gmmfast
