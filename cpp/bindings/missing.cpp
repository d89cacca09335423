// gmmfast._core: the missing-value family (gmmfast/missing.hpp): the index of rows by
// missingness pattern, the EM statistics of rows with NaN entries, and their marginal
// log-densities and conditional expectations.
//
// The index is built once per data (missing_index) and passed back to each call as the
// tuple (complete, rows, offsets, observed); its values are checked against X's shape
// before any native work (an index that does not describe X cannot read out of bounds:
// a coordinate it calls observed that is NaN makes that row's log-likelihood NaN, an
// error).
#include <cmath>
#include <string>
#include <vector>

#include "common.hpp"
#include "gmmfast/missing.hpp"

namespace gmmfast::bind {
namespace {

using namespace pybind11::literals;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

template <class V>
py::array_t<V> to_numpy(const std::vector<V>& v, std::vector<int64_t> shape) {
    py::array_t<V> a(shape);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

py::tuple py_missing_index(const py::array& Xa, int n_threads) {
    return dispatch_dtype(Xa, [&](auto tag) -> py::tuple {
        using T = decltype(tag);
        CArray<T> X = data_matrix<T>(Xa);
        const int64_t N = X.shape(0), D = X.shape(1);
        {  // resource limits (issue 8)
            MemoryEstimate m("missing_index");
            m.add("row order and pattern bytes", double(N) * (3.0 * 8.0 + double(D) + 1.0));
            m.check("Pass the data in chunks (fit_chunks).");
        }
        MissingIndexData idx;
        {
            py::gil_scoped_release release;
            idx = build_missing_index(X.data(), N, D, n_threads);
        }
        const int64_t P = int64_t(idx.offsets.size()) - 1;
        U8Array observed({P, D});
        std::copy(idx.observed.begin(), idx.observed.end(), observed.mutable_data());
        return py::make_tuple(to_numpy(idx.complete, {int64_t(idx.complete.size())}),
                              to_numpy(idx.rows, {int64_t(idx.rows.size())}),
                              to_numpy(idx.offsets, {P + 1}), observed.attr("astype")("bool"),
                              to_numpy(idx.observed_per_column, {D}), idx.first_inf_row, idx.first_empty_row);
    });
}

/// The index arrays, checked against N rows and D features.
struct PyIndex {
    I64Array complete, rows, offsets;
    U8Array observed;
    MissingIndex view;

    PyIndex(const py::tuple& t, int64_t N, int64_t D) {
        if (t.size() != 4) throw py::value_error("index must be the tuple (complete, rows, offsets, observed)");
        complete = I64Array::ensure(t[0]);
        rows = I64Array::ensure(t[1]);
        offsets = I64Array::ensure(t[2]);
        observed = U8Array::ensure(t[3]);
        if (!complete || !rows || !offsets || !observed || complete.ndim() != 1 || rows.ndim() != 1 ||
            offsets.ndim() != 1 || offsets.shape(0) < 1 || observed.ndim() != 2)
            throw py::value_error("index: expected 1-D complete, rows, offsets and a 2-D observed array");
        const int64_t P = offsets.shape(0) - 1;
        expect_shape(observed, {P, D}, "index observed", "(n_patterns, n_features)");
        if (complete.shape(0) + rows.shape(0) != N)
            throw py::value_error("index: complete and incomplete rows do not add up to the rows of X");
        auto in_range = [&](const I64Array& a) {
            for (py::ssize_t j = 0; j < a.size(); ++j)
                if (a.data()[j] < 0 || a.data()[j] >= N) throw py::value_error("index: a row is out of range");
        };
        in_range(complete);
        in_range(rows);
        const int64_t* o = offsets.data();
        if (o[0] != 0 || o[P] != rows.shape(0)) throw py::value_error("index: offsets must run from 0 to len(rows)");
        for (int64_t p = 0; p < P; ++p)
            if (o[p + 1] < o[p]) throw py::value_error("index: offsets must not decrease");
        view.n_complete = complete.shape(0);
        view.complete = complete.data();
        view.n_incomplete = rows.shape(0);
        view.rows = rows.data();
        view.n_patterns = P;
        view.offsets = o;
        view.observed = observed.data();
    }
};

template <class T>
[[noreturn]] void raise_missing_row(int64_t row) {
    const std::string dtype = sizeof(T) == 4 ? "float32" : "float64";
    throw py::value_error("The log-likelihood of the observed entries of X row " + std::to_string(row) +
                          " is not finite under this mixture (an infinity in X, or " + dtype +
                          " arithmetic overflowed: values too far from every component). Scale the data" +
                          (sizeof(T) == 4 ? ", or pass float64 data." : "."));
}

/// Scratch of the pattern kernel besides the statistics: per-thread row vectors and a
/// group of factors.
double est_missing_scratch(Covariance cov, int64_t K, int64_t D, int n_threads, int64_t N) {
    const double nt = est_threads(n_threads, N, 64.0);
    const bool dense = cov == Covariance::Full || cov == Covariance::Tied;
    const double per_thread = (double(K) * (double(D) + 1.0) + 4.0 * double(D) + (dense ? 2.0 * double(D) * double(D) : 0.0)) * 8.0;
    return nt * per_thread + double(1 << 21) * 8.0 + (dense ? 2.0 * est_param_count(Covariance::Full, K, D) * 8.0 : 0.0);
}

template <class T>
py::tuple em_stats_missing_t(const py::array& Xa, const py::tuple& index, const py::handle& lw,
                             const py::handle& mu, const py::handle& pc, Covariance cov,
                             const py::object& centres_obj, const py::object& sw, int n_threads) {
    CArray<T> X = data_matrix<T>(Xa);
    const int64_t N = X.shape(0), D = X.shape(1);
    PyIndex idx(index, N, D);
    PyMixture<T> mix(lw, mu, pc, cov, D, true);
    const int64_t K = mix.view.K;
    CArray<T> centres = centres_obj.is_none() ? mix.means : as_array<T>(centres_obj, "centres");
    expect_shape(centres, {K, D}, "centres", "(n_components, n_features)");
    for (int64_t j = 0; j < K * D; ++j)
        if (!std::isfinite(centres.data()[j])) throw py::value_error("centres must be finite");
    CArray<T> weights;
    if (!sw.is_none()) weights = optional_weights<T>(sw, N, false);
    {  // resource limits (issue 8)
        MemoryEstimate m("em_stats_missing");
        const double nt = est_threads(n_threads, N, 64.0);
        const double acc = (double(K) * double(D) + double(K) + est_param_count(cov, K, D)) * 8.0;
        m.add("per-thread accumulators", nt * acc);
        m.add("gathered complete rows", double(1 << 24));
        m.add("pattern factors and row scratch", est_missing_scratch(cov, K, D, n_threads, N));
        m.check(kFewerComponents);
    }
    StatsOut out(cov, K, D);
    SignalPoll sp;
    Exec exec = make_exec(n_threads, sp);
    RunInfo info;
    {
        py::gil_scoped_release release;
        info = em_stats_missing<T>(X.data(), N, mix.view, idx.view, centres.data(),
                                   sw.is_none() ? nullptr : weights.data(), out.st, exec);
    }
    check_rows(info.status, info.first_bad_row, [&](int64_t r) { raise_missing_row<T>(r); });
    check_finite_stats<T>(out);
    return out.result();
}

template <class T>
py::array log_prob_missing_t(const py::array& Xa, const py::tuple& index, const py::handle& lw,
                             const py::handle& mu, const py::handle& pc, Covariance cov, MissingOutput what,
                             int n_threads) {
    CArray<T> X = data_matrix<T>(Xa);
    const int64_t N = X.shape(0), D = X.shape(1);
    PyIndex idx(index, N, D);
    PyMixture<T> mix(lw, mu, pc, cov, D, true);
    const int64_t K = mix.view.K;
    const int64_t width = what == MissingOutput::Sample ? 1 : what == MissingOutput::Impute ? D : K;
    {  // resource limits (issue 8)
        MemoryEstimate m("log_prob_missing");
        m.add("output", double(N) * double(width) * double(sizeof(T)));
        m.add("gathered complete rows", double(1 << 24) * 2.0);
        m.add("pattern factors and row scratch", est_missing_scratch(cov, K, D, n_threads, N));
        m.check("Pass fewer rows per call, or use fewer components.");
    }
    py::array_t<T> out = what == MissingOutput::Sample ? py::array_t<T>({N}) : py::array_t<T>({N, width});
    SignalPoll sp;
    Exec exec = make_exec(n_threads, sp);
    RunInfo info;
    {
        py::gil_scoped_release release;
        info = log_prob_missing<T>(X.data(), N, mix.view, idx.view, what, out.mutable_data(), exec);
    }
    check_rows(info.status, info.first_bad_row, [&](int64_t r) { raise_missing_row<T>(r); });
    return std::move(out);
}

py::tuple py_em_stats_missing(const py::array& X, const py::tuple& index, const py::object& lw,
                              const py::object& mu, const py::object& pc, const std::string& cov,
                              const py::object& centres, const py::object& sw, int n_threads) {
    const Covariance c = parse_covariance(cov);
    return dispatch_dtype(X, [&](auto tag) -> py::tuple {
        using T = decltype(tag);
        return em_stats_missing_t<T>(X, index, lw, mu, pc, c, centres, sw, n_threads);
    });
}

py::array py_log_prob_missing(const py::array& X, const py::tuple& index, const py::object& lw,
                              const py::object& mu, const py::object& pc, const std::string& cov,
                              const std::string& output, int n_threads) {
    const Covariance c = parse_covariance(cov);
    MissingOutput what;
    if (output == "sample") what = MissingOutput::Sample;
    else if (output == "log_resp") what = MissingOutput::LogResp;
    else if (output == "weighted") what = MissingOutput::Weighted;
    else if (output == "impute") what = MissingOutput::Impute;
    else throw py::value_error("output must be one of 'sample', 'log_resp', 'weighted', 'impute', got '" + output + "'");
    return dispatch_dtype(X, [&](auto tag) -> py::array {
        using T = decltype(tag);
        return log_prob_missing_t<T>(X, index, lw, mu, pc, c, what, n_threads);
    });
}

}  // namespace

void register_missing(py::module_& m) {
    m.def("missing_index", &py_missing_index, "X"_a, "n_threads"_a = 0,
          "Rows of X grouped by missingness pattern (NaN = missing): (complete rows, incomplete rows "
          "grouped by pattern, pattern offsets, observed (n_patterns, n_features), rows observing each "
          "feature, first row with an infinity or -1, first row with every entry missing or -1).");
    m.def("em_stats_missing", &py_em_stats_missing, "X"_a, "index"_a, "log_weights"_a, "means"_a,
          "precisions_cholesky"_a, "covariance_type"_a = "full", "centres"_a = py::none(),
          "sample_weight"_a = py::none(), "n_threads"_a = 0,
          "em_stats of X with NaN entries (missing at random): the E-step on each row's observed entries, "
          "the statistics with the conditional expectations and covariances of the missing ones. "
          "Returns (log_likelihood, weight_sum, nk, s1, s2).");
    m.def("log_prob_missing", &py_log_prob_missing, "X"_a, "index"_a, "log_weights"_a, "means"_a,
          "precisions_cholesky"_a, "covariance_type"_a = "full", "output"_a = "sample", "n_threads"_a = 0,
          "log_prob of X with NaN entries, marginal over each row's observed entries ('sample', 'log_resp', "
          "'weighted'), or X with each NaN replaced by its conditional expectation ('impute').");
}

}  // namespace gmmfast::bind
