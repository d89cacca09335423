// gmmfast._core: NumPy bindings of the C++ kernels (the only pybind11 file).
//
// Every function accepts C-contiguous float32/float64 arrays without copying (other
// layouts are converted once), checks shapes and values before any native work and
// raises ValueError naming the offending argument, releases the GIL while the kernels
// run, and polls for KeyboardInterrupt between row blocks.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "gmmfast/em_stats.hpp"
#include "gmmfast/finalize.hpp"
#include "gmmfast/grad.hpp"
#include "gmmfast/kmeans.hpp"
#include "gmmfast/log_prob.hpp"
#include "gmmfast/runtime.hpp"
#include "gmmfast/validate.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

#ifndef GMMFAST_VERSION
#define GMMFAST_VERSION "0+unknown"
#endif

namespace gmmfast {
namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

std::string shape_str(const std::vector<int64_t>& s) {
    std::ostringstream o;
    o << "(";
    for (std::size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    if (s.size() == 1) o << ",";
    o << ")";
    return o.str();
}

std::vector<int64_t> shape_of(const py::array& a) {
    return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

void expect_shape(const py::array& a, const std::vector<int64_t>& shape, const char* name,
                  const char* meaning) {
    if (shape_of(a) != shape)
        throw py::value_error(std::string(name) + " must have shape " + meaning + " = " +
                              shape_str(shape) + ", got " + shape_str(shape_of(a)));
}

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

Covariance parse_covariance(const std::string& s) {
    if (s == "full") return Covariance::Full;
    if (s == "tied") return Covariance::Tied;
    if (s == "diag") return Covariance::Diag;
    if (s == "spherical") return Covariance::Spherical;
    throw py::value_error("covariance_type must be one of 'full', 'tied', 'diag', 'spherical', got '" + s + "'");
}

std::vector<int64_t> param_shape(Covariance cov, int64_t K, int64_t D) {
    switch (cov) {
        case Covariance::Full: return {K, D, D};
        case Covariance::Tied: return {D, D};
        case Covariance::Diag: return {K, D};
        default: return {K};
    }
}

const char* param_meaning(Covariance cov) {
    switch (cov) {
        case Covariance::Full: return "(n_components, n_features, n_features)";
        case Covariance::Tied: return "(n_features, n_features)";
        case Covariance::Diag: return "(n_components, n_features)";
        default: return "(n_components,)";
    }
}

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

/// A mixture parsed from Python arrays; keeps the converted arrays alive.
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

// --------------------------------------------------------- resource limits (issue 8)
// Before allocating, each call estimates the memory it will need (outputs, per-thread
// accumulators, parameters in kernel layout, row-block scratch) and raises MemoryError
// with the size and what to do when that exceeds the memory available, instead of being
// killed by the OOM killer half-way (Linux overcommits: a large allocation succeeds and
// the process dies when it touches the pages). Sizes are computed in double: products
// such as K·D² may not fit in int64.

// -1: measure (runtime.hpp available_memory); 0: never check; > 0: this many bytes are
// available (tests, and GMMFAST_MEMORY_LIMIT=<bytes> in the environment).
std::atomic<int64_t> g_memory_limit{-1};
// Smaller requests skip the check, which reads a few /proc and /sys files.
constexpr double kMemoryCheckFloor = 64.0 * 1024 * 1024;

std::string format_bytes(double b) {
    const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int u = 0;
    while (b >= 1024.0 && u < 6) {
        b /= 1024.0;
        ++u;
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.3g %s", b, units[u]);
    return buf;
}

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
    void check(const std::string& advice) const {
        const int64_t limit = g_memory_limit.load(std::memory_order_relaxed);
        if (limit == 0) return;
        double avail;
        if (limit > 0) {
            avail = double(limit);
        } else {
            if (total < kMemoryCheckFloor) return;
            const int64_t a = available_memory();
            // unknown: only refuse what no 64-bit machine could hold
            avail = a >= 0 ? double(a) : 9.0e18;
        }
        if (total <= avail) return;
        std::vector<std::pair<std::string, double>> sorted = parts;
        std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
        std::string detail;
        for (std::size_t i = 0; i < sorted.size() && i < 3; ++i) {
            if (sorted[i].second <= 0.0) break;
            detail += (i ? "; " : "") + sorted[i].first + ": " + format_bytes(sorted[i].second);
        }
        const std::string msg = "gmmfast." + op + " would need about " + format_bytes(total) + " of memory (" +
                                detail + "), but only " + format_bytes(avail) + " is available. " + advice;
        PyErr_SetString(PyExc_MemoryError, msg.c_str());
        throw py::error_already_set();
    }
};

/// Rows per tile as the kernels choose them (arch/kernels.inl tile_rows), on the small
/// side (the smallest row block), so that thread and tile counts are not underestimated.
double est_tile_rows(int64_t D, int64_t K, std::size_t item) {
    const double per_row = (2.0 * double(D) + 2.0 * double(D + 16) + double(K) + 4.0) * double(item);
    return std::max(8.0, std::min(512.0, std::floor(256.0 * 1024.0 / per_row)));
}

/// Threads a kernel over N rows will use (never more than its tiles).
double est_threads(int n_threads, int64_t N, double rows) {
    return std::max(1.0, std::min(double(resolve_threads(n_threads, false)), std::ceil(double(N) / rows)));
}

/// Per-thread row-block scratch of the E-step kernels (transposed tile, centred rows,
/// K x rows log-densities).
double est_tile_scratch(int64_t D, int64_t K, std::size_t item, bool tied) {
    const double rows = std::max(64.0, est_tile_rows(D, K, item));
    double b = rows * (5.0 * double(D + 16) + double(K) + 8.0) * double(item);
    if (tied) b += rows * 6.0 * double(D + 8) * 8.0;
    return b;
}

/// The mixture's parameters as the E-step kernels store them (padded U, or P).
double est_prepared(Covariance cov, int64_t K, int64_t D, std::size_t item) {
    const double Dj = double(D + 4);
    switch (cov) {
        case Covariance::Full: return double(K) * Dj * Dj * double(item);
        case Covariance::Tied: return Dj * Dj * double(item) + double(K) * double(D) * 8.0;
        default: return double(K) * double(D) * double(item);
    }
}

double est_param_count(Covariance cov, int64_t K, int64_t D) {
    switch (cov) {
        case Covariance::Full: return double(K) * double(D) * double(D);
        case Covariance::Tied: return double(D) * double(D);
        case Covariance::Diag: return double(K) * double(D);
        default: return double(K);
    }
}

/// Python access to the limits: tests and ops.py (estimates of NumPy-side buffers).
void register_resource_limits(py::module_& m) {
    if (const char* env = std::getenv("GMMFAST_MEMORY_LIMIT")) {
        char* end = nullptr;
        const long long v = std::strtoll(env, &end, 10);
        if (end != env && v >= 0) g_memory_limit.store(v);
    }
    m.def(
        "check_memory",
        [](const std::string& op, const std::vector<std::pair<std::string, double>>& parts, const std::string& advice) {
            MemoryEstimate e(op);
            for (const auto& p : parts) e.add(p.first, p.second);
            e.check(advice);
        },
        "op"_a, "parts"_a, "advice"_a,
        "Raises MemoryError (naming op, the total, its largest parts and advice) when the parts, "
        "[(what, bytes), ...], add up to more than the available memory.");
    m.def("available_memory", &available_memory,
          "Bytes this process can still allocate (MemAvailable and cgroup limit), -1 when unknown.");
    m.def(
        "memory_limit",
        [](const py::object& limit) {
            const int64_t before = g_memory_limit.load();
            if (!limit.is_none()) g_memory_limit.store(limit.cast<int64_t>());
            return before;
        },
        "limit"_a = py::none(),
        "Gets (and with an argument sets) the memory check: -1 measure, 0 off, > 0 bytes available. "
        "Returns the previous value.");
    m.def("single_threaded_after_fork", &single_threaded_after_fork,
          "True in a process forked after gmmfast had started OpenMP threads: kernels run on one thread.");
}

const char* kFewerComponents =
    "Use fewer components or features, a cheaper covariance_type ('diag' or 'spherical' "
    "instead of 'full'), or fewer threads (n_threads).";

Exec make_exec(int n_threads, SignalPoll& sp) {
    if (n_threads < 0) throw py::value_error("n_threads must be >= 0 (0 = OpenMP's default), got " + std::to_string(n_threads));
    Exec e;
    e.n_threads = n_threads;
    e.cancel = &sp.cancel;
    return e;
}

/// Raised for a row whose log-likelihood is not finite: names the cause.
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

void check_interrupt(Status st) {
    if (st == Status::Interrupted) throw py::error_already_set();
}

void check_rows(Status st, int64_t bad, const std::function<void(int64_t)>& raise) {
    check_interrupt(st);
    if (bad >= 0) raise(bad);
}

// ------------------------------------------------------------------------------- log_prob

template <class T>
py::array log_prob_t(const py::array& Xa, const py::handle& lw, const py::handle& mu,
                     const py::handle& pc, Covariance cov, LogProbOutput what, int n_threads,
                     bool checks) {
    CArray<T> X = data_matrix<T>(Xa);
    const int64_t N = X.shape(0), D = X.shape(1);
    PyMixture<T> mix(lw, mu, pc, cov, D, checks);
    const int64_t K = mix.view.K;
    {  // resource limits (issue 8)
        MemoryEstimate m("log_prob");
        const bool per_sample = what == LogProbOutput::Sample;
        m.add(per_sample ? "output (n_samples,)" : "output (n_samples, n_components)",
              double(N) * (per_sample ? 1.0 : double(K)) * double(sizeof(T)));
        m.add("parameters in kernel layout", est_prepared(cov, K, D, sizeof(T)));
        m.add("per-thread row blocks", est_threads(n_threads, N, est_tile_rows(D, K, sizeof(T))) *
                                           est_tile_scratch(D, K, sizeof(T), false));
        m.check("Pass fewer rows per call (GaussianMixture.predict works in row blocks), or use fewer components.");
    }
    py::array_t<T> out = what == LogProbOutput::Sample ? py::array_t<T>({N}) : py::array_t<T>({N, K});
    SignalPoll sp;
    Exec exec = make_exec(n_threads, sp);
    RunInfo info;
    {
        py::gil_scoped_release release;
        info = log_prob<T>(X.data(), N, mix.view, what, out.mutable_data(), exec);
    }
    check_rows(info.status, checks ? info.first_bad_row : -1, [&](int64_t r) { raise_bad_row(X.data(), D, r); });
    return std::move(out);
}

LogProbOutput parse_output(const std::string& s) {
    if (s == "sample") return LogProbOutput::Sample;
    if (s == "log_resp") return LogProbOutput::LogResp;
    if (s == "weighted") return LogProbOutput::Weighted;
    throw py::value_error("output must be one of 'sample', 'log_resp', 'weighted', got '" + s + "'");
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

py::array py_log_prob(const py::array& X, const py::handle& lw, const py::handle& mu,
                      const py::handle& pc, const std::string& cov, const std::string& output,
                      int n_threads, bool checks) {
    const Covariance c = parse_covariance(cov);
    const LogProbOutput what = parse_output(output);
    return dispatch_dtype(X, [&](auto tag) -> py::array {
        using T = decltype(tag);
        return log_prob_t<T>(X, lw, mu, pc, c, what, n_threads, checks);
    });
}

// ------------------------------------------------------------------------------- em_stats

template <class T>
void check_finite_X(const CArray<T>& X, int n_threads) {
    int64_t bad;
    {
        py::gil_scoped_release release;
        bad = first_nonfinite_row(X.data(), X.shape(0), X.shape(1), n_threads);
    }
    if (bad >= 0) raise_bad_row(X.data(), X.shape(1), bad);
}


/// resp must be finite; non-negative unless signed (the autograd backward passes
/// upstream gradients as weights).
template <class T>
void check_resp(const T* r, int64_t N, int64_t K, bool signed_resp) {
    for (int64_t j = 0; j < N * K; ++j)
        if (!std::isfinite(r[j]) || (!signed_resp && r[j] < T(0)))
            throw py::value_error(std::string("resp must be finite") + (signed_resp ? "" : " and non-negative") +
                                  ", but entry [" + std::to_string(j / K) + ", " + std::to_string(j % K) +
                                  "] is " + std::to_string(double(r[j])));
}

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

/// Finite inputs can still give non-finite statistics when the per-row products
/// r·(x - c)(x - c)ᵀ, formed in T, overflow (float32: |x - c| beyond ~1.8e19): a clear
/// error instead of returning inf/NaN statistics (issue 8).
template <class T>
void check_finite_stats(double ll, double wsum, std::initializer_list<const py::array_t<double>*> arrays) {
    bool finite = std::isfinite(ll) && std::isfinite(wsum);
    for (const auto* a : arrays)
        for (py::ssize_t j = 0; finite && j < a->size(); ++j) finite = std::isfinite(a->data()[j]);
    if (finite) return;
    const std::string dtype = sizeof(T) == 4 ? "float32" : "float64";
    throw py::value_error("The statistics of X are not finite: " + dtype +
                          " arithmetic overflowed (the squared deviations of X from the centres, or the sample "
                          "weights times them, exceed the largest " + dtype +
                          "). Scale the data" + (sizeof(T) == 4 ? ", or pass float64 data." : "."));
}

template <class T>
py::tuple em_stats_t(const py::array& Xa, const py::handle& lw, const py::handle& mu,
                     const py::handle& pc, Covariance cov, const py::object& centres_obj,
                     const py::object& sw, const py::object& resp_obj, const py::object& labels_obj,
                     int64_t n_components, int n_threads, bool signed_resp, bool checks) {
    CArray<T> X = data_matrix<T>(Xa);
    const int64_t N = X.shape(0), D = X.shape(1);
    Responsibilities<T> resp;
    CArray<T> resp_arr;
    py::array_t<int64_t, py::array::c_style | py::array::forcecast> labels_arr;
    if (!resp_obj.is_none() && !labels_obj.is_none())
        throw py::value_error("pass at most one of resp and labels");
    // Given responsibilities or labels replace the E-step: the mixture is then only a
    // shape (K from n_components or the centres).
    const bool estep = resp_obj.is_none() && labels_obj.is_none();
    std::unique_ptr<PyMixture<T>> mix;
    Mixture<T> shape_only;
    int64_t K;
    if (estep) {
        mix.reset(new PyMixture<T>(lw, mu, pc, cov, D, checks));
        K = mix->view.K;
    } else {
        K = n_components;
        if (K < 1) throw py::value_error("n_components must be >= 1 when resp or labels are given");
        shape_only.K = K;
        shape_only.D = D;
        shape_only.cov = cov;
    }
    const Mixture<T>& view = estep ? mix->view : shape_only;
    if (!resp_obj.is_none()) {
        resp_arr = as_array<T>(resp_obj, "resp");
        expect_shape(resp_arr, {N, K}, "resp", "(n_samples, n_components)");
        const T* r = resp_arr.data();
        check_resp(r, N, K, signed_resp);
        resp.source = RespSource::Given;
        resp.resp = r;
    } else if (!labels_obj.is_none()) {
        py::array la = py::array::ensure(labels_obj);
        if (!la || (la.dtype().kind() != 'i' && la.dtype().kind() != 'u'))
            throw py::value_error("labels must be an integer array");
        labels_arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(la);
        expect_shape(labels_arr, {N}, "labels", "(n_samples,)");
        const int64_t* l = labels_arr.data();
        for (int64_t i = 0; i < N; ++i)
            if (l[i] < 0 || l[i] >= K)
                throw py::value_error("labels must lie in [0, n_components) = [0, " + std::to_string(K) +
                                      "), but entry " + std::to_string(i) + " is " + std::to_string(l[i]));
        resp.source = RespSource::Labels;
        resp.labels = l;
    }
    CArray<T> centres;
    if (centres_obj.is_none()) {
        if (!estep) throw py::value_error("centres are required when resp or labels are given");
        centres = mix->means;
    } else {
        centres = as_array<T>(centres_obj, "centres");
        expect_shape(centres, {K, D}, "centres", "(n_components, n_features)");
        for (int64_t j = 0; j < K * D; ++j)
            if (!std::isfinite(centres.data()[j])) throw py::value_error("centres must be finite");
    }
    CArray<T> weights;
    if (!sw.is_none()) weights = optional_weights<T>(sw, N, true);
    // Without the E-step no log-likelihood exposes a non-finite row: check X directly.
    if (!estep && checks) check_finite_X(X, n_threads);

    {  // resource limits (issue 8)
        MemoryEstimate m("em_stats");
        const double rows = est_tile_rows(D, K, sizeof(T));
        const double nt = est_threads(n_threads, N, rows);
        const double Dp = double(D + 16), Dq = double(D + 8), KD = double(K) * double(D);
        double acc = (KD + double(K)) * 8.0;  // s1, nk
        switch (cov) {
            case Covariance::Full: acc += double(K) * Dp * Dp * 8.0; break;
            case Covariance::Tied: acc += (Dq * Dq + double(K) * double(K)) * 8.0; break;
            default: acc += KD * 8.0; break;
        }
        char threads[64];
        std::snprintf(threads, sizeof threads, "per-thread accumulators (%.0f threads)", nt);
        m.add(threads, nt * acc);
        m.add("merged statistics", acc + (est_param_count(cov, K, D) + KD) * 8.0);
        if (estep) m.add("parameters in kernel layout", est_prepared(cov, K, D, sizeof(T)));
        m.add("per-thread row blocks",
              nt * (est_tile_scratch(D, K, sizeof(T), cov == Covariance::Tied) +
                    (cov == Covariance::Full ? 2.0 * rows * Dp * double(sizeof(T)) : 0.0)));
        m.check(kFewerComponents);
    }
    py::array_t<double> nk({K}), s1({K, D});
    std::vector<int64_t> s2shape = param_shape(cov, K, D);
    py::array_t<double> s2(s2shape);
    Stats st;
    st.nk = nk.mutable_data();
    st.s1 = s1.mutable_data();
    st.s2 = s2.mutable_data();
    SignalPoll sp;
    Exec exec = make_exec(n_threads, sp);
    RunInfo info;
    {
        py::gil_scoped_release release;
        info = em_stats<T>(X.data(), N, view, resp, centres.data(), sw.is_none() ? nullptr : weights.data(), st,
                           exec);
    }
    // Unchecked (torch) calls: a row with a non-finite log-likelihood makes the total NaN,
    // so NaN propagates as in torch, instead of the row silently dropping out.
    if (!checks && info.first_bad_row >= 0 && estep) st.log_likelihood = std::numeric_limits<double>::quiet_NaN();
    check_rows(info.status, checks ? info.first_bad_row : -1, [&](int64_t r) { raise_bad_row(X.data(), D, r); });
    if (checks) check_finite_stats<T>(st.log_likelihood, st.weight_sum, {&nk, &s1, &s2});
    return py::make_tuple(st.log_likelihood, st.weight_sum, nk, s1, s2);
}

py::tuple py_em_stats(const py::array& X, const py::object& lw, const py::object& mu,
                      const py::object& pc, const std::string& cov, const py::object& centres,
                      const py::object& sw, const py::object& resp, const py::object& labels,
                      int64_t n_components, int n_threads, bool signed_resp, bool checks) {
    const Covariance c = parse_covariance(cov);
    return dispatch_dtype(X, [&](auto tag) -> py::tuple {
        using T = decltype(tag);
        return em_stats_t<T>(X, lw, mu, pc, c, centres, sw, resp, labels, n_components, n_threads, signed_resp, checks);
    });
}

// ------------------------------------------------------------------------ log_prob_grad_x

template <class T>
py::array log_prob_grad_x_t(const py::array& Xa, const py::handle& lw, const py::handle& mu,
                            const py::handle& pc, Covariance cov, const py::object& sw,
                            const py::object& resp_obj, int n_threads, bool checks) {
    CArray<T> X = data_matrix<T>(Xa);
    const int64_t N = X.shape(0), D = X.shape(1);
    PyMixture<T> mix(lw, mu, pc, cov, D, checks);
    const int64_t K = mix.view.K;
    Responsibilities<T> resp;
    CArray<T> resp_arr;
    if (!resp_obj.is_none()) {
        resp_arr = as_array<T>(resp_obj, "resp");
        expect_shape(resp_arr, {N, K}, "resp", "(n_samples, n_components)");
        check_resp(resp_arr.data(), N, K, true);
        resp.source = RespSource::Given;
        resp.resp = resp_arr.data();
    }
    CArray<T> weights;
    if (!sw.is_none()) weights = optional_weights<T>(sw, N, true);
    {  // resource limits (issue 8)
        MemoryEstimate m("log_prob_grad_x");
        m.add("output (n_samples, n_features)", double(N) * double(D) * double(sizeof(T)));
        m.add("parameters in kernel layout", est_prepared(cov, K, D, sizeof(T)));
        m.add("per-thread row blocks", est_threads(n_threads, N, est_tile_rows(D, K, sizeof(T))) *
                                           est_tile_scratch(D, K, sizeof(T), false) * 1.5);
        m.check("Pass fewer rows per call, or use fewer components.");
    }
    py::array_t<T> grad({N, D});
    SignalPoll sp;
    Exec exec = make_exec(n_threads, sp);
    RunInfo info;
    {
        py::gil_scoped_release release;
        info = log_prob_grad_x<T>(X.data(), N, mix.view, resp, sw.is_none() ? nullptr : weights.data(),
                                  grad.mutable_data(), exec);
    }
    check_rows(info.status, checks ? info.first_bad_row : -1, [&](int64_t r) { raise_bad_row(X.data(), D, r); });
    return std::move(grad);
}

py::array py_log_prob_grad_x(const py::array& X, const py::object& lw, const py::object& mu,
                             const py::object& pc, const std::string& cov, const py::object& sw,
                             const py::object& resp, int n_threads, bool checks) {
    const Covariance c = parse_covariance(cov);
    return dispatch_dtype(X, [&](auto tag) -> py::array {
        using T = decltype(tag);
        return log_prob_grad_x_t<T>(X, lw, mu, pc, c, sw, resp, n_threads, checks);
    });
}

// ------------------------------------------------------------------------------- finalize

const char* kIllDefined =
    "Fitting the mixture model failed because some components have "
    "ill-defined empirical covariance (for instance caused by singleton "
    "or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data.";
const char* kIllDefinedF32 =
    " The numerical accuracy can also be improved by passing float64"
    " data instead of float32.";

py::tuple py_finalize(const std::string& cov_s, const py::handle& nk_o, const py::handle& s1_o,
                      const py::handle& s2_o, const py::handle& centres_o, double reg_covar,
                      double nk_eps, bool float32_message, bool return_failure) {
    const Covariance cov = parse_covariance(cov_s);
    CArray<double> nk = as_array<double>(nk_o, "nk");
    if (nk.ndim() != 1 || nk.shape(0) < 1)
        throw py::value_error("nk must be a non-empty 1-D array, got shape " + shape_str(shape_of(nk)));
    const int64_t K = nk.shape(0);
    CArray<double> s1 = as_array<double>(s1_o, "s1");
    if (s1.ndim() != 2 || s1.shape(0) != K || s1.shape(1) < 1)
        throw py::value_error("s1 must have shape (n_components, n_features) with n_components = " +
                              std::to_string(K) + ", got " + shape_str(shape_of(s1)));
    const int64_t D = s1.shape(1);
    CArray<double> s2 = as_array<double>(s2_o, "s2");
    expect_shape(s2, param_shape(cov, K, D), "s2", param_meaning(cov));
    CArray<double> centres = as_array<double>(centres_o, "centres");
    expect_shape(centres, {K, D}, "centres", "(n_components, n_features)");
    if (!(reg_covar >= 0.0) || !std::isfinite(reg_covar))
        throw py::value_error("reg_covar must be a finite number >= 0, got " + std::to_string(reg_covar));
    if (!(nk_eps >= 0.0) || !std::isfinite(nk_eps))
        throw py::value_error("nk_eps must be a finite number >= 0");
    // With return_failure (the torch ops: no value checks, as on the GPU) non-finite
    // statistics are not an error: the outputs are computed regardless and `failed`
    // names the first component whose statistics are not finite (if the factorisations
    // did not already fail earlier). Without it, they are rejected.
    int64_t first_nonfinite = -1;
    for (int64_t k = 0; k < K && first_nonfinite < 0; ++k) {
        bool ok = std::isfinite(nk.data()[k]);
        for (int64_t d = 0; d < D; ++d)
            ok = ok && std::isfinite(s1.data()[k * D + d]) && std::isfinite(centres.data()[k * D + d]);
        const int64_t per = cov == Covariance::Tied ? 0 : s2.size() / K;
        for (int64_t j = 0; j < per; ++j) ok = ok && std::isfinite(s2.data()[k * per + j]);
        if (!ok) first_nonfinite = k;
    }
    if (cov == Covariance::Tied && first_nonfinite < 0)
        for (py::ssize_t j = 0; j < s2.size() && first_nonfinite < 0; ++j)
            if (!std::isfinite(s2.data()[j])) first_nonfinite = 0;
    if (first_nonfinite >= 0 && !return_failure) throw py::value_error("statistics must be finite");
    double total = 0.0;
    for (int64_t k = 0; k < K; ++k) total += nk.data()[k] + nk_eps;
    if (!(total > 0.0) && !(return_failure && first_nonfinite >= 0))
        throw py::value_error("the statistics carry no weight (sum of nk <= 0)");

    {  // resource limits (issue 8)
        MemoryEstimate m("finalize");
        const double P = est_param_count(cov, K, D);
        m.add("covariances and precision Cholesky factors", 2.0 * P * 8.0);
        m.add("weights and means", (3.0 * double(K) + 2.0 * double(K) * double(D)) * 8.0);
        m.add("per-thread Cholesky workspace", double(resolve_threads(0, false)) * double(D) * double(D) * 8.0);
        m.check(kFewerComponents);
    }
    std::vector<int64_t> pshape = param_shape(cov, K, D);
    py::array_t<double> weights({K}), means({K, D}), covariances(pshape), prec_chol(pshape), log_det({K});
    FinalizeOutput out;
    out.weights = weights.mutable_data();
    out.means = means.mutable_data();
    out.covariances = covariances.mutable_data();
    out.prec_chol = prec_chol.mutable_data();
    out.log_det_chol = log_det.mutable_data();
    int64_t failed;
    {
        py::gil_scoped_release release;
        failed = finalize(cov, K, D, nk.data(), s1.data(), s2.data(), centres.data(), reg_covar, nk_eps, out);
    }
    if (first_nonfinite >= 0 && (failed < 0 || first_nonfinite < failed)) failed = first_nonfinite;
    if (return_failure) return py::make_tuple(weights, means, covariances, prec_chol, log_det, failed);
    if (failed >= 0) throw py::value_error(std::string(kIllDefined) + (float32_message ? kIllDefinedF32 : ""));
    return py::make_tuple(weights, means, covariances, prec_chol, log_det);
}

py::tuple py_precision_cholesky(const py::handle& cov_o, const std::string& cov_s, bool float32_message) {
    const Covariance cov = parse_covariance(cov_s);
    CArray<double> c = as_array<double>(cov_o, "covariances");
    int64_t K, D;
    switch (cov) {
        case Covariance::Full:
            if (c.ndim() != 3 || c.shape(1) != c.shape(2) || c.shape(0) < 1 || c.shape(1) < 1)
                throw py::value_error("covariances must have shape (n_components, n_features, n_features), got " +
                                      shape_str(shape_of(c)));
            K = c.shape(0);
            D = c.shape(1);
            break;
        case Covariance::Tied:
            if (c.ndim() != 2 || c.shape(0) != c.shape(1) || c.shape(0) < 1)
                throw py::value_error("covariances must have shape (n_features, n_features), got " + shape_str(shape_of(c)));
            K = 1;
            D = c.shape(0);
            break;
        case Covariance::Diag:
            if (c.ndim() != 2 || c.shape(0) < 1 || c.shape(1) < 1)
                throw py::value_error("covariances must have shape (n_components, n_features), got " + shape_str(shape_of(c)));
            K = c.shape(0);
            D = c.shape(1);
            break;
        default:
            if (c.ndim() != 1 || c.shape(0) < 1)
                throw py::value_error("covariances must have shape (n_components,), got " + shape_str(shape_of(c)));
            K = c.shape(0);
            D = 1;
            break;
    }
    // The factorisation reads one triangle only: a NaN or inf in the other must not pass
    // unnoticed (issue 8; the reference rejects it with the same message).
    for (py::ssize_t j = 0; j < c.size(); ++j)
        if (!std::isfinite(c.data()[j]))
            throw py::value_error(std::string(kIllDefined) + (float32_message ? kIllDefinedF32 : ""));
    {  // resource limits (issue 8)
        MemoryEstimate m("precision_cholesky");
        m.add("precision Cholesky factors", double(c.size()) * 8.0 + double(K) * 8.0);
        m.add("per-thread Cholesky workspace", double(resolve_threads(0, false)) * double(D) * double(D) * 8.0);
        m.check(kFewerComponents);
    }
    std::vector<int64_t> pshape = shape_of(c);
    py::array_t<double> prec(pshape), log_det({K});
    int64_t failed;
    {
        py::gil_scoped_release release;
        failed = precision_cholesky_from_covariances(cov, K, D, c.data(), prec.mutable_data(), log_det.mutable_data());
    }
    if (failed >= 0) throw py::value_error(std::string(kIllDefined) + (float32_message ? kIllDefinedF32 : ""));
    // Spherical log-dets need D, which the caller supplies: return per-feature values.
    return py::make_tuple(prec, log_det);
}

// --------------------------------------------------------------------------------- kmeans

py::tuple py_kmeans_plusplus(const py::array& Xa, int64_t n_clusters, const py::object& sw,
                             int64_t first, const py::handle& uniforms_o, int n_local_trials,
                             int n_threads) {
    return dispatch_dtype(Xa, [&](auto tag) -> py::tuple {
        using T = decltype(tag);
        CArray<T> X = data_matrix<T>(Xa);
        const int64_t N = X.shape(0), D = X.shape(1);
        if (n_clusters < 1 || n_clusters > N)
            throw py::value_error("n_clusters must be in [1, n_samples] = [1, " + std::to_string(N) + "], got " +
                                  std::to_string(n_clusters));
        if (n_local_trials < 1) throw py::value_error("n_local_trials must be >= 1");
        if (first < 0 || first >= N)
            throw py::value_error("first must be a row index in [0, " + std::to_string(N) + "), got " +
                                  std::to_string(first));
        CArray<double> uniforms = as_array<double>(uniforms_o, "uniforms");
        const int64_t n_draws = (n_clusters - 1) * int64_t(n_local_trials);
        if (uniforms.ndim() != 1 || uniforms.shape(0) != n_draws)
            throw py::value_error("uniforms must have shape ((n_clusters - 1) * n_local_trials,) = (" +
                                  std::to_string(n_draws) + ",), got " + shape_str(shape_of(uniforms)));
        for (int64_t j = 0; j < n_draws; ++j)
            if (!(uniforms.data()[j] >= 0.0 && uniforms.data()[j] <= 1.0))
                throw py::value_error("uniforms must lie in [0, 1]");
        CArray<T> w;
        if (!sw.is_none()) {
            w = optional_weights<T>(sw, N, false);
            double total = 0.0;
            for (int64_t i = 0; i < N; ++i) total += double(w.data()[i]);
            if (!(total > 0.0)) throw py::value_error("sample_weight must not sum to zero");
        }
        check_finite_X(X, n_threads);
        {  // resource limits (issue 8)
            MemoryEstimate m("kmeans_plusplus");
            const double trials = double(n_local_trials), rows = est_tile_rows(D, n_local_trials, sizeof(T));
            m.add("distance to the nearest centre (n_samples,)", double(N) * 8.0);
            m.add("candidate distances (n_samples, n_local_trials)",
                  std::min(double(N) * trials * double(sizeof(T)), 512.0 * 1024 * 1024));
            m.add("output centres", double(n_clusters) * (double(D) * double(sizeof(T)) + 8.0));
            m.add("per-tile sums", std::ceil(double(N) / rows) * (trials + 2.0) * 8.0);
            m.add("per-thread row blocks", est_threads(n_threads, N, rows) *
                                               est_tile_scratch(D, n_local_trials, sizeof(T), false));
            m.check("Use fewer samples (a subsample is enough for seeding) or fewer clusters.");
        }
        py::array_t<T> centres({n_clusters, D});
        py::array_t<int64_t> indices({n_clusters});
        SignalPoll sp;
        Exec exec = make_exec(n_threads, sp);
        Status st;
        {
            py::gil_scoped_release release;
            st = kmeans_plusplus<T>(X.data(), N, D, n_clusters, sw.is_none() ? nullptr : w.data(), first,
                                    uniforms.data(), n_local_trials, centres.mutable_data(), indices.mutable_data(), exec);
        }
        check_interrupt(st);
        return py::make_tuple(centres, indices);
    });
}

py::tuple py_kmeans_lloyd(const py::array& Xa, const py::handle& centres_o, const py::object& sw,
                          int max_iter, double tol, int n_threads) {
    return dispatch_dtype(Xa, [&](auto tag) -> py::tuple {
        using T = decltype(tag);
        CArray<T> X = data_matrix<T>(Xa);
        const int64_t N = X.shape(0), D = X.shape(1);
        CArray<T> c_in = as_array<T>(centres_o, "centres");
        if (c_in.ndim() != 2 || c_in.shape(1) != D || c_in.shape(0) < 1)
            throw py::value_error("centres must have shape (n_clusters, n_features) with n_features = " +
                                  std::to_string(D) + ", got " + shape_str(shape_of(c_in)));
        const int64_t K = c_in.shape(0);
        if (K > N)
            throw py::value_error("n_samples=" + std::to_string(N) + " should be >= n_clusters=" + std::to_string(K) + ".");
        if (max_iter < 1) throw py::value_error("max_iter must be >= 1, got " + std::to_string(max_iter));
        if (!(tol >= 0.0)) throw py::value_error("tol must be >= 0");
        for (int64_t j = 0; j < K * D; ++j)
            if (!std::isfinite(c_in.data()[j])) throw py::value_error("centres must be finite");
        CArray<T> w;
        if (!sw.is_none()) {
            w = optional_weights<T>(sw, N, false);
            double total = 0.0;
            for (int64_t i = 0; i < N; ++i) total += double(w.data()[i]);
            if (!(total > 0.0)) throw py::value_error("sample_weight must not sum to zero");
        }
        check_finite_X(X, n_threads);
        {  // resource limits (issue 8)
            MemoryEstimate m("kmeans_lloyd");
            const double rows = est_tile_rows(D, K, sizeof(T)), nt = est_threads(n_threads, N, rows);
            m.add("labels, distance bounds and orders (n_samples,)", double(N) * (4.0 * 8.0 + double(sizeof(T))));
            m.add("per-thread cluster sums", nt * double(K) * (double(D) + 1.0) * 8.0);
            m.add("centres", double(K) * double(D) * (2.0 * 8.0 + 3.0 * double(sizeof(T))));
            m.add("per-thread row blocks", nt * est_tile_scratch(D, K, sizeof(T), false));
            m.check("Use fewer samples or fewer clusters.");
        }
        py::array_t<T> centres({K, D});
        std::copy(c_in.data(), c_in.data() + K * D, centres.mutable_data());
        py::array_t<int64_t> labels({N});
        SignalPoll sp;
        Exec exec = make_exec(n_threads, sp);
        KMeansResult res;
        {
            py::gil_scoped_release release;
            res = kmeans_lloyd<T>(X.data(), N, D, K, sw.is_none() ? nullptr : w.data(), centres.mutable_data(),
                                  labels.mutable_data(), max_iter, tol, exec);
        }
        check_interrupt(res.status);
        if (!std::isfinite(res.inertia))  // finite X, but squared distances overflowed T (issue 8)
            throw py::value_error(std::string("k-means distances overflowed ") + (sizeof(T) == 4 ? "float32" : "float64") +
                                  " (squared distances between samples exceed the largest value of the dtype). "
                                  "Scale the data" + (sizeof(T) == 4 ? ", or pass float64 data." : "."));
        return py::make_tuple(centres, labels, res.inertia, res.n_iter, res.converged);
    });
}

int64_t py_first_nonfinite_row(const py::array& Xa, int n_threads) {
    return dispatch_dtype(Xa, [&](auto tag) -> int64_t {
        using T = decltype(tag);
        CArray<T> X = data_matrix<T>(Xa);
        py::gil_scoped_release release;
        return first_nonfinite_row(X.data(), X.shape(0), X.shape(1), n_threads);
    });
}

py::dict py_build_info() {
    py::dict d;
    d["version"] = GMMFAST_VERSION;
    d["compiler"] = compiler_description();
    const int omp = openmp_version();
    d["openmp"] = omp ? py::object(py::int_(omp)) : py::object(py::none());
    d["max_threads"] = resolve_threads(0, /*will_run=*/false);
#ifdef GMMFAST_SANITIZED
    d["sanitized"] = true;  // ASan + UBSan build (CMake GMMFAST_SANITIZE)
#else
    d["sanitized"] = false;
#endif
    d["isa"] = active_isa();
    d["compiled_isas"] = compiled_isas();
#ifdef NDEBUG
    d["build_type"] = "release";
#else
    d["build_type"] = "debug";
#endif
    return d;
}

}  // namespace
}  // namespace gmmfast


// ------------------------------------------------------------------- per-sample mixtures
// (mixture density networks: every row has its own mixture; gmmfast/per_sample.hpp)

#include "gmmfast/per_sample.hpp"

namespace gmmfast {
namespace {

ScaleForm parse_scale_form(const std::string& s) {
    if (s == "isotropic") return ScaleForm::Isotropic;
    if (s == "diag") return ScaleForm::Diag;
    if (s == "full") return ScaleForm::Full;
    if (s == "correlated2d") return ScaleForm::Correlated2D;
    throw py::value_error("covariance must be one of 'isotropic', 'diag', 'full', 'correlated2d', got '" + s + "'");
}

MixtureMode parse_mixture_mode(const std::string& s) {
    if (s == "joint") return MixtureMode::Joint;
    if (s == "per_dim") return MixtureMode::PerDim;
    throw py::value_error("mixture must be 'joint' or 'per_dim', got '" + s + "'");
}

/// An output buffer: `given` (a C-contiguous, writeable array of exactly T and `shape`,
/// written in place: how gmmfast.torch hands over torch-allocated memory) or a new array.
template <class T>
py::array_t<T> output_buffer(const py::object& given, const std::vector<int64_t>& shape, const char* name) {
    if (given.is_none()) return py::array_t<T>(shape);
    if (!py::isinstance<py::array>(given)) throw py::value_error(std::string(name) + " must be a NumPy array or None");
    py::array a = py::reinterpret_borrow<py::array>(given);
    const py::dtype dt = a.dtype();
    if (dt.kind() != 'f' || dt.itemsize() != py::ssize_t(sizeof(T)))
        throw py::value_error(std::string(name) + " must have dtype " + (sizeof(T) == 4 ? "float32" : "float64") +
                              ", got " + std::string(py::str(dt)));
    if (!(a.flags() & py::array::c_style) || !a.writeable())
        throw py::value_error(std::string(name) + " must be a writeable C-contiguous array");
    if (shape_of(a) != shape)
        throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " + shape_str(shape_of(a)));
    return py::reinterpret_borrow<py::array_t<T>>(a);
}

/// The per-sample mixture's inputs, converted to T (no copy when they already are) and
/// checked against y's shape; keeps the arrays alive.
template <class T>
struct PyPerSample {
    CArray<T> y, logits, means, scale, rho;
    std::vector<uint8_t> mask;
    PerSampleMixture<T> view;
    int64_t rsize = 0;  // responsibilities per row

    PyPerSample(const py::array& ya, const py::handle& lg, const py::handle& mu, const py::handle& sc,
                const py::object& rho_o, const py::object& mask_o, ScaleForm form, MixtureMode mode) {
        if (ya.ndim() != 2 || ya.shape(1) < 1)
            throw py::value_error("y must be a 2-D array of shape (batch, n_features) with n_features >= 1, got " +
                                  shape_str(shape_of(ya)));
        y = CArray<T>::ensure(ya);
        const int64_t B = y.shape(0), D = y.shape(1);
        logits = as_array<T>(lg, "logits");
        const bool per_dim = mode == MixtureMode::PerDim;
        if (per_dim) {
            if (logits.ndim() != 3 || logits.shape(0) != B || logits.shape(1) != D || logits.shape(2) < 1)
                throw py::value_error("logits must have shape (batch, n_features, n_components) = (" + std::to_string(B) +
                                      ", " + std::to_string(D) + ", K) for mixture='per_dim', got " +
                                      shape_str(shape_of(logits)));
            if (form == ScaleForm::Full || form == ScaleForm::Correlated2D)
                throw py::value_error("mixture='per_dim' models each feature by a 1-D mixture: covariance must be "
                                      "'diag' or 'isotropic'");
        } else if (logits.ndim() != 2 || logits.shape(0) != B || logits.shape(1) < 1) {
            throw py::value_error("logits must have shape (batch, n_components) with batch = " + std::to_string(B) +
                                  ", got " + shape_str(shape_of(logits)));
        }
        const int64_t K = logits.shape(logits.ndim() - 1);
        means = as_array<T>(mu, "means");
        scale = as_array<T>(sc, "scale");
        if (per_dim) {
            expect_shape(means, {B, D, K}, "means", "(batch, n_features, n_components)");
            expect_shape(scale, {B, D, K}, "scale", "(batch, n_features, n_components)");
        } else {
            expect_shape(means, {B, K, D}, "means", "(batch, n_components, n_features)");
            switch (form) {
                case ScaleForm::Isotropic: expect_shape(scale, {B, K}, "scale", "(batch, n_components)"); break;
                case ScaleForm::Diag: expect_shape(scale, {B, K, D}, "scale", "(batch, n_components, n_features)"); break;
                case ScaleForm::Full:
                    expect_shape(scale, {B, K, D, D}, "scale", "(batch, n_components, n_features, n_features)");
                    break;
                case ScaleForm::Correlated2D:
                    if (D != 2)
                        throw py::value_error("covariance='correlated2d' needs n_features = 2, got " + std::to_string(D));
                    expect_shape(scale, {B, K, 2}, "scale", "(batch, n_components, 2)");
                    break;
            }
        }
        if (form == ScaleForm::Correlated2D && !per_dim) {
            if (rho_o.is_none()) throw py::value_error("covariance='correlated2d' needs rho of shape (batch, n_components)");
            rho = as_array<T>(rho_o, "rho");
            expect_shape(rho, {B, K}, "rho", "(batch, n_components)");
        } else if (!rho_o.is_none()) {
            throw py::value_error("rho is only used with covariance='correlated2d'; pass None");
        }
        if (!mask_o.is_none()) {
            py::array m = py::array::ensure(mask_o);
            if (!m) throw py::value_error("mask must be an array");
            expect_shape(m, {B}, "mask", "(batch,)");
            mask.resize(std::size_t(B));
            if (m.dtype().kind() == 'b') {
                auto mb = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(m);
                for (int64_t i = 0; i < B; ++i) mask[std::size_t(i)] = mb.data()[i] != 0;
            } else {
                CArray<double> md = as_array<double>(m, "mask");
                for (int64_t i = 0; i < B; ++i) mask[std::size_t(i)] = md.data()[i] != 0.0;
            }
        }
        view.B = B;
        view.K = K;
        view.D = D;
        view.form = form;
        view.mode = mode;
        view.logits = logits.data();
        view.means = means.data();
        view.scale = scale.data();
        view.rho = (form == ScaleForm::Correlated2D && !per_dim) ? rho.data() : nullptr;
        view.mask = mask.empty() ? nullptr : mask.data();
        rsize = per_dim ? D * K : K;
    }
    std::vector<int64_t> resp_shape() const {
        if (view.mode == MixtureMode::PerDim) return {view.B, view.D, view.K};
        return {view.B, view.K};
    }
};

template <class T>
py::tuple per_sample_log_prob_t(const py::array& y, const py::handle& lg, const py::handle& mu,
                                const py::handle& sc, const py::object& rho, const py::object& mask,
                                ScaleForm form, MixtureMode mode, const py::object& out_o,
                                const py::object& resp_o, bool store_resp, int n_threads, bool checks) {
    PyPerSample<T> p(y, lg, mu, sc, rho, mask, form, mode);
    py::array_t<T> out = output_buffer<T>(out_o, {p.view.B}, "out");
    std::vector<int64_t> rshape = p.resp_shape();
    if (!store_resp) rshape = {0};
    py::array_t<T> resp = output_buffer<T>(resp_o, rshape, "resp");
    SignalPoll sp;
    Exec exec = make_exec(n_threads, sp);
    RunInfo info;
    {
        py::gil_scoped_release release;
        info = per_sample_log_prob<T>(p.y.data(), p.view, out.mutable_data(),
                                      store_resp ? resp.mutable_data() : nullptr, exec);
    }
    check_interrupt(info.status);
    if (checks && info.first_bad_row >= 0) {
        const int64_t r = info.first_bad_row;
        throw py::value_error("the log-likelihood of row " + std::to_string(r) + " is " +
                              std::to_string(double(out.data()[r])) +
                              ": check that y, logits and means are finite, scale is positive" +
                              (form == ScaleForm::Correlated2D ? std::string(" and |rho| < 1") : std::string()) +
                              " (or pass float64)");
    }
    return py::make_tuple(out, resp);
}

py::tuple py_per_sample_log_prob(const py::array& y, const py::handle& lg, const py::handle& mu,
                                 const py::handle& sc, const py::object& rho, const py::object& mask,
                                 const std::string& covariance, const std::string& mixture,
                                 const py::object& out, const py::object& resp, bool store_resp, int n_threads,
                                 bool checks) {
    const ScaleForm form = parse_scale_form(covariance);
    const MixtureMode mode = parse_mixture_mode(mixture);
    return dispatch_dtype(y, [&](auto tag) -> py::tuple {
        using T = decltype(tag);
        return per_sample_log_prob_t<T>(y, lg, mu, sc, rho, mask, form, mode, out, resp, store_resp, n_threads,
                                        checks);
    });
}

template <class T>
py::tuple per_sample_log_prob_backward_t(const py::handle& grad_o, const py::handle& resp_o, const py::array& y,
                                         const py::handle& lg, const py::handle& mu, const py::handle& sc,
                                         const py::object& rho, const py::object& mask, ScaleForm form,
                                         MixtureMode mode, bool need_y, const py::dict& outs, int n_threads) {
    PyPerSample<T> p(y, lg, mu, sc, rho, mask, form, mode);
    const int64_t B = p.view.B;
    CArray<T> grad = as_array<T>(grad_o, "grad");
    expect_shape(grad, {B}, "grad", "(batch,)");
    CArray<T> resp;  // None: recomputed inside the backward pass
    if (!resp_o.is_none()) {
        resp = as_array<T>(resp_o, "resp");
        expect_shape(resp, p.resp_shape(), "resp",
                     mode == MixtureMode::PerDim ? "(batch, n_features, n_components)" : "(batch, n_components)");
    }
    auto given = [&](const char* key) -> py::object {
        return outs.contains(key) ? py::reinterpret_borrow<py::object>(outs[key]) : py::object(py::none());
    };
    const bool corr = form == ScaleForm::Correlated2D && mode == MixtureMode::Joint;
    py::array_t<T> gy = output_buffer<T>(given("grad_y"), need_y ? std::vector<int64_t>{B, p.view.D}
                                                                  : std::vector<int64_t>{0, p.view.D}, "grad_y");
    py::array_t<T> gl = output_buffer<T>(given("grad_logits"), shape_of(p.logits), "grad_logits");
    py::array_t<T> gm = output_buffer<T>(given("grad_means"), shape_of(p.means), "grad_means");
    py::array_t<T> gs = output_buffer<T>(given("grad_scale"), shape_of(p.scale), "grad_scale");
    py::array_t<T> gr = output_buffer<T>(given("grad_rho"), corr ? shape_of(p.rho) : std::vector<int64_t>{0},
                                         "grad_rho");
    SignalPoll sp;
    Exec exec = make_exec(n_threads, sp);
    Status st;
    {
        py::gil_scoped_release release;
        st = per_sample_log_prob_backward<T>(grad.data(), resp_o.is_none() ? nullptr : resp.data(), p.y.data(), p.view,
                                             need_y ? gy.mutable_data() : nullptr, gl.mutable_data(),
                                             gm.mutable_data(), gs.mutable_data(),
                                             corr ? gr.mutable_data() : nullptr, exec);
    }
    check_interrupt(st);
    return py::make_tuple(gy, gl, gm, gs, gr);
}

py::tuple py_per_sample_log_prob_backward(const py::handle& grad, const py::handle& resp, const py::array& y,
                                          const py::handle& lg, const py::handle& mu, const py::handle& sc,
                                          const py::object& rho, const py::object& mask,
                                          const std::string& covariance, const std::string& mixture, bool need_y,
                                          const py::object& outs, int n_threads) {
    const ScaleForm form = parse_scale_form(covariance);
    const MixtureMode mode = parse_mixture_mode(mixture);
    const py::dict d = outs.is_none() ? py::dict() : py::dict(outs);
    return dispatch_dtype(y, [&](auto tag) -> py::tuple {
        using T = decltype(tag);
        return per_sample_log_prob_backward_t<T>(grad, resp, y, lg, mu, sc, rho, mask, form, mode, need_y, d,
                                                 n_threads);
    });
}

void register_per_sample(py::module_& m) {
    m.def("per_sample_log_prob", &py_per_sample_log_prob, "y"_a, "logits"_a, "means"_a, "scale"_a,
          "rho"_a = py::none(), "mask"_a = py::none(), "covariance"_a = "diag", "mixture"_a = "joint",
          "out"_a = py::none(), "resp"_a = py::none(), "store_resp"_a = true, "n_threads"_a = 0, "checks"_a = true,
          "Log-likelihood of y under per-sample mixtures (raw logits; scale = σ, scale_tril or (σ1, σ2) with rho). "
          "Returns (log_prob (B,), resp (B, K) or (B, D, K) for mixture='per_dim'; (0,) unless store_resp). "
          "out/resp: optional preallocated outputs. checks=False returns NaN/-inf rows instead of raising.");
    m.def("per_sample_log_prob_backward", &py_per_sample_log_prob_backward, "grad"_a, "resp"_a, "y"_a, "logits"_a,
          "means"_a, "scale"_a, "rho"_a = py::none(), "mask"_a = py::none(), "covariance"_a = "diag",
          "mixture"_a = "joint", "need_y"_a = true, "out"_a = py::none(), "n_threads"_a = 0,
          "Gradients of Σ_i grad_i log p(y_i) from the forward pass's resp (None: recomputed): (grad_y, grad_logits, grad_means, "
          "grad_scale, grad_rho). grad_y is (0, D) unless need_y, grad_rho (0,) unless correlated2d. out: optional "
          "dict of preallocated outputs by those names.");
}

}  // namespace
}  // namespace gmmfast

PYBIND11_MODULE(_core, m) {
    using namespace gmmfast;
    // checks=false (used by gmmfast.torch) skips the parameter value checks and the
    // non-finite-row errors: NaN/inf then propagate to the outputs, as torch ops do.
    m.doc() = "gmmfast native kernels (C++/OpenMP). Use gmmfast.ops for the documented API.";
    m.attr("__version__") = GMMFAST_VERSION;
    m.def("log_prob", &py_log_prob, "X"_a, "log_weights"_a, "means"_a, "precisions_cholesky"_a,
          "covariance_type"_a = "full", "output"_a = "sample", "n_threads"_a = 0, "checks"_a = true,
          "Log-densities of X under a mixture: output 'sample' (N,), 'log_resp' or 'weighted' (N, K).");
    m.def("em_stats", &py_em_stats, "X"_a, "log_weights"_a, "means"_a, "precisions_cholesky"_a,
          "covariance_type"_a = "full", "centres"_a = py::none(), "sample_weight"_a = py::none(),
          "resp"_a = py::none(), "labels"_a = py::none(), "n_components"_a = 0, "n_threads"_a = 0,
          "signed_resp"_a = false, "checks"_a = true,
          "Fused E-step + centred sufficient statistics in one pass over X. Returns "
          "(log_likelihood, weight_sum, nk, s1, s2). signed_resp allows negative resp "
          "(autograd backward weights).");
    m.def("log_prob_grad_x", &py_log_prob_grad_x, "X"_a, "log_weights"_a, "means"_a,
          "precisions_cholesky"_a, "covariance_type"_a = "full", "sample_weight"_a = py::none(),
          "resp"_a = py::none(), "n_threads"_a = 0, "checks"_a = true,
          "-Σ_k w_ik Λ_k (x_i - μ_k) (N, D), with w = sample_weight · p(k|x) or the given resp (any sign).");
    m.def("finalize", &py_finalize, "covariance_type"_a, "nk"_a, "s1"_a, "s2"_a, "centres"_a,
          "reg_covar"_a, "nk_eps"_a, "float32_message"_a = false, "return_failure"_a = false,
          "Statistics -> (weights, means, covariances, precisions_cholesky, log_det_cholesky), float64; "
          "with return_failure, the index of the first ill-defined component (or -1) is appended "
          "instead of raising.");
    m.def("precision_cholesky", &py_precision_cholesky, "covariances"_a, "covariance_type"_a,
          "float32_message"_a = false,
          "Covariances -> (precisions_cholesky, per-component log-det); spherical log-dets are per feature.");
    m.def("kmeans_plusplus", &py_kmeans_plusplus, "X"_a, "n_clusters"_a, "sample_weight"_a = py::none(),
          "first"_a, "uniforms"_a, "n_local_trials"_a = 1, "n_threads"_a = 0, "Greedy k-means++ seeding -> (centres, indices).");
    m.def("kmeans_lloyd", &py_kmeans_lloyd, "X"_a, "centres"_a, "sample_weight"_a = py::none(),
          "max_iter"_a = 300, "tol"_a = 0.0, "n_threads"_a = 0,
          "Lloyd iterations -> (centres, labels, inertia, n_iter, converged).");
    m.def("first_nonfinite_row", &py_first_nonfinite_row, "X"_a, "n_threads"_a = 0);
    m.def("build_info", &py_build_info);
    m.def("active_isa", &active_isa);
    m.def("compiled_isas", &compiled_isas);
    m.def("set_isa", &set_isa, "name"_a,
          "Selects an instruction-set variant of the kernels; False when it is not available here.");
    register_resource_limits(m);  // memory checks, fork state (issue 8)
    register_per_sample(m);  // per-sample mixtures (mixture density networks)
}
