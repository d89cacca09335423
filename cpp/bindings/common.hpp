// Helpers shared by the binding files of gmmfast._core (cpp/bindings/*.cpp): array
// conversion and shape checks, dtype dispatch, Ctrl-C polling, the memory estimates
// behind MemoryError (issue 8) and the non-finite-input errors.
//
// The contract every binding keeps: C-contiguous float32/float64 arrays are used without
// copying (other layouts are converted once), shapes and values are checked before any
// native work and a ValueError names the offending argument, the GIL is released while
// the kernels run, and KeyboardInterrupt is polled between row blocks.
//
// Templates and the small structs live here; the non-template functions are defined in
// common.cpp, so each binding file does not compile them again.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
// Every binding file sees the same type casters (std::vector, std::pair, ...): pybind11
// requires the STL casters to be included consistently in all the files of one module,
// or a container would be converted in one file and an opaque type in another.
#include <pybind11/stl.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "gmmfast/log_prob.hpp"
#include "gmmfast/mixture.hpp"
#include "gmmfast/validate.hpp"

// Set by CMake from the package version (scikit-build-core); used by __version__ and
// build_info().
#ifndef GMMFAST_VERSION
#define GMMFAST_VERSION "0+unknown"
#endif

namespace gmmfast::bind {

namespace py = pybind11;

/// The one array type the kernels read: C-contiguous T, converting anything else once.
template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// ------------------------------------------------------------------ shapes and arrays

/// "(2, 3)", "(4,)": shapes in error messages, written as NumPy writes them.
std::string shape_str(const std::vector<int64_t>& s);
std::vector<int64_t> shape_of(const py::array& a);
/// ValueError "<name> must have shape <meaning> = (..), got (..)" unless a has `shape`.
void expect_shape(const py::array& a, const std::vector<int64_t>& shape, const char* name,
                  const char* meaning);

/// Converts to a C-contiguous array of T (no copy when it already is one).
template <class T>
CArray<T> as_array(const py::handle& obj, const char* name) {
    if (obj.is_none()) throw py::value_error(std::string(name) + " must be an array, got None");
    py::array arr = py::array::ensure(obj);
    if (!arr) throw py::value_error(std::string(name) + " must be an array");
    const char kind = arr.dtype().kind();
    if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b')
        throw py::value_error(std::string(name) + " must be a real numeric array, got dtype " +
                              std::string(py::str(arr.dtype())));
    return CArray<T>::ensure(arr);
}

/// 'full', 'tied', 'diag', 'spherical'; ValueError otherwise.
Covariance parse_covariance(const std::string& s);
/// Shape of one covariance-shaped parameter (covariances, precisions_cholesky, s2):
/// full (K, D, D), tied (D, D), diag (K, D), spherical (K,).
std::vector<int64_t> param_shape(Covariance cov, int64_t K, int64_t D);
/// The same shape in words, for error messages.
const char* param_meaning(Covariance cov);

/// X as a 2-D, non-empty, C-contiguous array of T.
template <class T>
CArray<T> data_matrix(const py::array& X) {
    if (X.ndim() != 2)
        throw py::value_error("X must be a 2-D array of shape (n_samples, n_features), got " +
                              std::to_string(X.ndim()) + " dimension(s)");
    if (X.shape(0) < 1) throw py::value_error("X must have at least one sample, got shape " + shape_str(shape_of(X)));
    if (X.shape(1) < 1) throw py::value_error("X must have at least one feature, got shape " + shape_str(shape_of(X)));
    return CArray<T>::ensure(X);
}

/// sample_weight as T of shape (N,), finite; non-negative unless allow_negative.
template <class T>
CArray<T> optional_weights(const py::object& sw, int64_t N, bool allow_negative) {
    CArray<T> w = as_array<T>(sw, "sample_weight");
    expect_shape(w, {N}, "sample_weight", "(n_samples,)");
    const T* p = w.data();
    for (int64_t i = 0; i < N; ++i) {
        if (!std::isfinite(p[i]))
            throw py::value_error("sample_weight must be finite, but entry " + std::to_string(i) + " is " +
                                  std::to_string(double(p[i])));
        if (!allow_negative && p[i] < T(0))
            throw py::value_error("sample_weight must be non-negative, but entry " + std::to_string(i) + " is " +
                                  std::to_string(double(p[i])));
    }
    return w;
}

/// Runs f(T{}) for X's floating type. Dtypes are compared by value, not identity:
/// unpickled and memory-mapped arrays carry equal but distinct dtype objects, and a
/// non-native byte order is converted (once) by CArray<T>::ensure.
template <class F>
auto dispatch_dtype(const py::array& X, F&& f) {
    const py::dtype dt = X.dtype();
    if (dt.kind() == 'f' && dt.itemsize() == 4) return f(float{});
    if (dt.kind() == 'f' && dt.itemsize() == 8) return f(double{});
    throw py::value_error("X must be a float32 or float64 array, got dtype " + std::string(py::str(dt)));
}

// ------------------------------------------------------------------ mixtures

/// A mixture parsed from Python arrays (checked with check_mixture when check_values);
/// keeps the converted arrays alive. Used by the E-step and missing-value families.
template <class T>
struct PyMixture {
    CArray<T> log_weights, means, prec_chol;
    Mixture<T> view;

    PyMixture(const py::handle& lw, const py::handle& mu, const py::handle& pc, Covariance cov,
              int64_t D, bool check_values) {
        log_weights = as_array<T>(lw, "log_weights");
        means = as_array<T>(mu, "means");
        prec_chol = as_array<T>(pc, "precisions_cholesky");
        if (log_weights.ndim() != 1 || log_weights.shape(0) < 1)
            throw py::value_error("log_weights must be a non-empty 1-D array of shape (n_components,), got shape " +
                                  shape_str(shape_of(log_weights)));
        const int64_t K = log_weights.shape(0);
        expect_shape(means, {K, D}, "means", "(n_components, n_features)");
        expect_shape(prec_chol, param_shape(cov, K, D), "precisions_cholesky", param_meaning(cov));
        view.K = K;
        view.D = D;
        view.cov = cov;
        view.log_weights = log_weights.data();
        view.means = means.data();
        view.prec_chol = prec_chol.data();
        if (check_values) {
            const std::string err = check_mixture(view);  // O(K·D²): cheap, keep the GIL
            if (!err.empty()) throw py::value_error(err);
        }
    }
};

// ------------------------------------------------------------------ Ctrl-C and threads

/// Polls Python's signal handlers (Ctrl-C) at most every 50 ms from the calling thread.
struct SignalPoll {
    std::chrono::steady_clock::time_point next = std::chrono::steady_clock::now();
    Cancel cancel;
    SignalPoll() {
        cancel.poll = &SignalPoll::poll;
        cancel.ctx = this;
    }
    static bool poll(void* ctx) {
        auto* self = static_cast<SignalPoll*>(ctx);
        const auto now = std::chrono::steady_clock::now();
        if (now < self->next) return false;
        self->next = now + std::chrono::milliseconds(50);
        py::gil_scoped_acquire gil;
        return PyErr_CheckSignals() != 0;
    }
};

/// The kernels' execution settings: n_threads (>= 0, 0 = OpenMP's default; ValueError
/// otherwise) and sp's Ctrl-C poll. sp must outlive the kernel call.
Exec make_exec(int n_threads, SignalPoll& sp);

/// Re-raises the KeyboardInterrupt the poll left set when a kernel was interrupted.
void check_interrupt(Status st);

/// check_interrupt, then raise(bad) for a bad row index (bad < 0: none).
void check_rows(Status st, int64_t bad, const std::function<void(int64_t)>& raise);

// --------------------------------------------------------- resource limits (issue 8)
// Before allocating, each call estimates the memory it will need (outputs, per-thread
// accumulators, parameters in kernel layout, row-block scratch) and raises MemoryError
// with the size and what to do when that exceeds the memory available, instead of being
// killed by the OOM killer half-way (Linux overcommits: a large allocation succeeds and
// the process dies when it touches the pages). Sizes are computed in double: products
// such as K·D² may not fit in int64.

// -1: measure (runtime.hpp available_memory); 0: never check; > 0: this many bytes are
// available (tests, and GMMFAST_MEMORY_LIMIT=<bytes> in the environment). Defined in
// common.cpp; set from Python by runtime.cpp (memory_limit).
extern std::atomic<int64_t> g_memory_limit;

struct MemoryEstimate {
    std::string op;
    double total = 0.0;
    std::vector<std::pair<std::string, double>> parts;

    explicit MemoryEstimate(std::string name) : op(std::move(name)) {}
    void add(const std::string& what, double bytes) {
        total += bytes;
        parts.emplace_back(what, bytes);
    }
    /// Raises MemoryError (naming the size, the largest parts and `advice`) when the
    /// estimate exceeds the available memory.
    void check(const std::string& advice) const;
};

/// Rows per tile as the kernels choose them (arch/kernels.inl tile_rows), on the small
/// side (the smallest row block), so that thread and tile counts are not underestimated.
/// item: sizeof(T).
double est_tile_rows(int64_t D, int64_t K, std::size_t item);

/// Threads a kernel over N rows will use (never more than its tiles).
double est_threads(int n_threads, int64_t N, double rows);

/// Per-thread row-block scratch of the E-step kernels (transposed tile, centred rows,
/// K x rows log-densities).
double est_tile_scratch(int64_t D, int64_t K, std::size_t item, bool tied);

/// The mixture's parameters as the E-step kernels store them (padded U, or P).
double est_prepared(Covariance cov, int64_t K, int64_t D, std::size_t item);

/// Entries of one covariance-shaped parameter (the product of param_shape).
double est_param_count(Covariance cov, int64_t K, int64_t D);

/// The advice of the MemoryError of the calls whose size grows with K and D.
inline constexpr const char* kFewerComponents =
    "Use fewer components or features, a cheaper covariance_type ('diag' or 'spherical' "
    "instead of 'full'), or fewer threads (n_threads).";

// ------------------------------------------------------------------ non-finite input

/// Raised for a row whose log-likelihood is not finite: names the cause. X: (N, D).
template <class T>
[[noreturn]] void raise_bad_row(const T* X, int64_t D, int64_t row) {
    bool nan = false, inf = false;
    for (int64_t d = 0; d < D; ++d) {
        nan |= std::isnan(X[row * D + d]);
        inf |= std::isinf(X[row * D + d]);
    }
    const std::string dtype = sizeof(T) == 4 ? "float32" : "float64";
    if (nan) throw py::value_error("Input X contains NaN (first at row " + std::to_string(row) + ").");
    if (inf)
        throw py::value_error("Input X contains infinity or a value too large for dtype('" + dtype +
                              "') (first at row " + std::to_string(row) + ").");
    throw py::value_error("The log-likelihood of X row " + std::to_string(row) +
                          " is not finite under this mixture: " + dtype +
                          " arithmetic overflowed (values too far from every component). "
                          "Scale the data, or pass float64 data.");
}

/// ValueError for the first row of X (N, D) holding a NaN or inf; scans without the GIL.
template <class T>
void check_finite_X(const CArray<T>& X, int n_threads) {
    int64_t bad;
    {
        py::gil_scoped_release release;
        bad = first_nonfinite_row(X.data(), X.shape(0), X.shape(1), n_threads);
    }
    if (bad >= 0) raise_bad_row(X.data(), X.shape(1), bad);
}

// ------------------------------------------------------------------ statistics outputs

/// The output arrays of a statistics kernel, nk (K,), s1 (K, D) and s2 (param_shape),
/// and the Stats view of them that the kernel fills.
struct StatsOut {
    py::array_t<double> nk, s1, s2;
    Stats st;
    StatsOut(Covariance cov, int64_t K, int64_t D) : nk({K}), s1({K, D}), s2(param_shape(cov, K, D)) {
        st.nk = nk.mutable_data();
        st.s1 = s1.mutable_data();
        st.s2 = s2.mutable_data();
    }
    /// (log_likelihood, weight_sum, nk, s1, s2), as em_stats returns them.
    py::tuple result() const { return py::make_tuple(st.log_likelihood, st.weight_sum, nk, s1, s2); }
};

/// Finite inputs can still give non-finite statistics when the per-row products
/// r·(x - c)(x - c)ᵀ, formed in T, overflow (float32: |x - c| beyond ~1.8e19): a clear
/// error instead of returning inf/NaN statistics (issue 8).
template <class T>
void check_finite_stats(const StatsOut& out) {
    bool finite = std::isfinite(out.st.log_likelihood) && std::isfinite(out.st.weight_sum);
    for (const auto* a : {&out.nk, &out.s1, &out.s2})
        for (py::ssize_t j = 0; finite && j < a->size(); ++j) finite = std::isfinite(a->data()[j]);
    if (finite) return;
    const std::string dtype = sizeof(T) == 4 ? "float32" : "float64";
    throw py::value_error("The statistics of X are not finite: " + dtype +
                          " arithmetic overflowed (the squared deviations of X from the centres, or the sample "
                          "weights times them, exceed the largest " + dtype +
                          "). Scale the data" + (sizeof(T) == 4 ? ", or pass float64 data." : "."));
}

// ------------------------------------------------------------------ the families
// Each binding file defines the functions of one kernel family on m; module.cpp calls
// them in the order that keeps _core's attributes as they were.

void register_estep(py::module_& m);       // estep.cpp: log_prob, em_stats, log_prob_grad_x
void register_finalize(py::module_& m);    // finalize.cpp: finalize, precision_cholesky
void register_kmeans(py::module_& m);      // kmeans.cpp: kmeans_plusplus, kmeans_lloyd
void register_runtime(py::module_& m);     // runtime.cpp: first_nonfinite_row, build_info, ISA selection,
                                           //   memory checks, fork state
void register_per_sample(py::module_& m);  // per_sample.cpp: per-sample mixtures (mixture density networks)
void register_missing(py::module_& m);     // missing.cpp: rows with NaN entries (missing at random)

}  // namespace gmmfast::bind
