// The non-template helpers of common.hpp (shape checks, covariance parsing, execution
// settings, the memory estimates): compiled once for all the binding files.
#include "common.hpp"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "gmmfast/runtime.hpp"

namespace gmmfast::bind {

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

Exec make_exec(int n_threads, SignalPoll& sp) {
    if (n_threads < 0) throw py::value_error("n_threads must be >= 0 (0 = OpenMP's default), got " + std::to_string(n_threads));
    Exec e;
    e.n_threads = n_threads;
    e.cancel = &sp.cancel;
    return e;
}

void check_interrupt(Status st) {
    if (st == Status::Interrupted) throw py::error_already_set();
}

void check_rows(Status st, int64_t bad, const std::function<void(int64_t)>& raise) {
    check_interrupt(st);
    if (bad >= 0) raise(bad);
}

// --------------------------------------------------------- resource limits (issue 8)

std::atomic<int64_t> g_memory_limit{-1};

namespace {

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

}  // namespace

void MemoryEstimate::check(const std::string& advice) const {
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

double est_tile_rows(int64_t D, int64_t K, std::size_t item) {
    const double per_row = (2.0 * double(D) + 2.0 * double(D + 16) + double(K) + 4.0) * double(item);
    return std::max(8.0, std::min(512.0, std::floor(256.0 * 1024.0 / per_row)));
}

double est_threads(int n_threads, int64_t N, double rows) {
    return std::max(1.0, std::min(double(resolve_threads(n_threads, false)), std::ceil(double(N) / rows)));
}

double est_tile_scratch(int64_t D, int64_t K, std::size_t item, bool tied) {
    const double rows = std::max(64.0, est_tile_rows(D, K, item));
    double b = rows * (5.0 * double(D + 16) + double(K) + 8.0) * double(item);
    if (tied) b += rows * 6.0 * double(D + 8) * 8.0;
    return b;
}

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

}  // namespace gmmfast::bind
