// gmmfast._core: statistics -> parameters (gmmfast/finalize.hpp): the M-step's
// finalize and the precision Cholesky factors of given covariances.
#include <cmath>
#include <string>
#include <vector>

#include "common.hpp"
#include "gmmfast/finalize.hpp"
#include "gmmfast/runtime.hpp"

namespace gmmfast::bind {
namespace {

using namespace pybind11::literals;

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

}  // namespace

void register_finalize(py::module_& m) {
    m.def("finalize", &py_finalize, "covariance_type"_a, "nk"_a, "s1"_a, "s2"_a, "centres"_a,
          "reg_covar"_a, "nk_eps"_a, "float32_message"_a = false, "return_failure"_a = false,
          "Statistics -> (weights, means, covariances, precisions_cholesky, log_det_cholesky), float64; "
          "with return_failure, the index of the first ill-defined component (or -1) is appended "
          "instead of raising.");
    m.def("precision_cholesky", &py_precision_cholesky, "covariances"_a, "covariance_type"_a,
          "float32_message"_a = false,
          "Covariances -> (precisions_cholesky, per-component log-det); spherical log-dets are per feature.");
}

}  // namespace gmmfast::bind
