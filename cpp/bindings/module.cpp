// gmmfast._core: NumPy bindings of the C++ kernels. This file only creates the module;
// each kernel family binds its functions in its own file of cpp/bindings/ (common.hpp
// states the contract they all keep and holds the helpers they share).
//
// checks=false (used by gmmfast.torch) skips the parameter value checks and the
// non-finite-row errors: NaN/inf then propagate to the outputs, as torch ops do.
#include <pybind11/pybind11.h>

#include "common.hpp"

PYBIND11_MODULE(_core, m) {
    using namespace gmmfast::bind;
    m.doc() = "gmmfast native kernels (C++/OpenMP). Use gmmfast.ops for the documented API.";
    m.attr("__version__") = GMMFAST_VERSION;
    // This order defines the functions in the order the single-file module did.
    register_estep(m);       // log_prob, em_stats, log_prob_grad_x
    register_finalize(m);    // finalize, precision_cholesky
    register_kmeans(m);      // kmeans_plusplus, kmeans_lloyd
    register_runtime(m);     // first_nonfinite_row, build_info, ISA, memory checks, fork state (issue 8)
    register_per_sample(m);  // per-sample mixtures (mixture density networks)
    register_missing(m);     // missing values: pattern index, em_stats and log_prob of rows with NaN
}
