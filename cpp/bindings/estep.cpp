// gmmfast._core: the E-step family (gmmfast/log_prob.hpp, em_stats.hpp, grad.hpp):
// log-densities, the fused E-step + sufficient statistics, and the gradient in X.
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "gmmfast/em_stats.hpp"
#include "gmmfast/grad.hpp"
#include "gmmfast/log_prob.hpp"

namespace gmmfast::bind {
namespace {

using namespace pybind11::literals;

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
    StatsOut out(cov, K, D);
    Stats& st = out.st;
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
    if (checks) check_finite_stats<T>(out);
    return out.result();
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

}  // namespace

void register_estep(py::module_& m) {
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
}

}  // namespace gmmfast::bind
