// gmmfast._cuda: Python bindings of the CUDA kernels (cuda/gmmfast_cuda.hpp).
//
// This module knows nothing about torch: device memory is passed as integer addresses
// (torch: Tensor.data_ptr()), streams as integer handles (torch:
// torch.cuda.current_stream(device).cuda_stream), dtypes as "float32" / "float64".
// gmmfast/torch/_cuda_backend.py allocates every output and the workspace with torch,
// so torch's caching allocator and CUDA graphs see all memory.
//
// API (N samples, D features, K components; all pointers device addresses, 0 = none):
//
//   device_count() -> int                      0 without a driver or device; never raises
//   runtime_version() -> int, driver_version() -> int
//
//   log_prob_workspace_bytes(dtype, covariance_type, N, D, K, output) -> int
//   log_prob(device, stream, dtype, covariance_type, N, D, K,
//            X, log_weights, means, precisions_cholesky, output, out,
//            workspace, workspace_bytes) -> None
//       output 'sample' -> out (N,), 'log_resp' / 'weighted' -> out (N, K); dtype.
//
//   em_stats_workspace_bytes(dtype, covariance_type, N, D, K, given_resp) -> int
//   em_stats(device, stream, dtype, covariance_type, N, D, K,
//            X, log_weights, means, precisions_cholesky, centres, sample_weight, resp,
//            scalars, nk, s1, s2, workspace, workspace_bytes) -> None
//       sample_weight (N,) or 0; resp (N, K) or 0 (then log_weights / means /
//       precisions_cholesky may be 0); centres (K, D) in dtype; outputs float64:
//       scalars (2,) = [log_likelihood, weight_sum], nk (K,), s1 (K, D),
//       s2 full (K, D, D) / tied (D, D) / diag (K, D) / spherical (K,).
//
//   grad_x_workspace_bytes(dtype, covariance_type, N, D, K, given_resp) -> int
//   grad_x(device, stream, dtype, covariance_type, N, D, K,
//          X, log_weights, means, precisions_cholesky, sample_weight, resp,
//          out, workspace, workspace_bytes) -> None            out (N, D) in dtype
//
//   finalize_workspace_bytes(covariance_type, K, D) -> int
//   finalize(device, stream, covariance_type, K, D, nk, s1, s2, centres,
//            reg_covar, nk_eps, weights, means, covariances, precisions_cholesky,
//            log_det, failed, workspace, workspace_bytes) -> None
//       all float64; failed: one int64 (-1 or the first ill-defined component).
//
//   per_sample_workspace_bytes(dtype, covariance, mixture, B, K, D, backward,
//                              lanes_per_row=0) -> int        (0 unless covariance 'full')
//   per_sample_log_prob(device, stream, dtype, covariance, mixture, B, K, D,
//                       y, logits, means, scale, rho, mask, out, resp,
//                       workspace, workspace_bytes, lanes_per_row=0) -> None
//   per_sample_log_prob_backward(device, stream, dtype, covariance, mixture, B, K, D,
//                       grad, resp, y, logits, means, scale, rho, mask,
//                       grad_y, grad_logits, grad_means, grad_scale, grad_rho,
//                       workspace, workspace_bytes, lanes_per_row=0) -> None
//       Per-sample mixtures (gmmfast/per_sample.hpp): covariance 'isotropic', 'diag',
//       'full' (scale_tril), 'correlated2d' (rho (B, K)); mixture 'joint' or 'per_dim'.
//       y (B, D); logits (B, K) / per_dim (B, D, K); means (B, K, D) / (B, D, K); scale
//       by covariance; mask B bytes (nonzero = keep) or 0; out (B,); resp like logits
//       or 0 (not stored / recomputed); grad_y (B, D) or 0; grad_rho only for
//       correlated2d. lanes_per_row: 0 automatic, 1 (thread per row), 32 (warp per row).
//
// Every op: cudaSetDevice(device), kernels enqueued on `stream` only, no allocation, no
// synchronisation; ValueError for bad arguments (sizes, null pointers, small workspace),
// RuntimeError when a launch fails. The GIL is released while the kernels are enqueued.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "gmmfast_cuda.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace {

namespace gc = gmmfast::cuda;
using gmmfast::Covariance;
using gmmfast::LogProbOutput;

gc::DType parse_dtype(const std::string& s) {
    if (s == "float32") return gc::DType::Float32;
    if (s == "float64") return gc::DType::Float64;
    throw py::value_error("dtype must be 'float32' or 'float64', got '" + s + "'");
}

Covariance parse_covariance(const std::string& s) {
    if (s == "full") return Covariance::Full;
    if (s == "tied") return Covariance::Tied;
    if (s == "diag") return Covariance::Diag;
    if (s == "spherical") return Covariance::Spherical;
    throw py::value_error("covariance_type must be one of 'full', 'tied', 'diag', 'spherical', got '" + s + "'");
}

LogProbOutput parse_output(const std::string& s) {
    if (s == "sample") return LogProbOutput::Sample;
    if (s == "log_resp") return LogProbOutput::LogResp;
    if (s == "weighted") return LogProbOutput::Weighted;
    throw py::value_error("output must be one of 'sample', 'log_resp', 'weighted', got '" + s + "'");
}

template <class P>
P* ptr(std::uintptr_t address) {
    return reinterpret_cast<P*>(address);
}

cudaStream_t as_stream(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

std::size_t py_log_prob_workspace_bytes(const std::string& dtype, const std::string& cov, int64_t N, int64_t D,
                                        int64_t K, const std::string& output) {
    return gc::log_prob_workspace_bytes(parse_dtype(dtype), parse_covariance(cov), N, D, K, parse_output(output));
}

void py_log_prob(int device, std::uintptr_t stream, const std::string& dtype, const std::string& cov, int64_t N,
                 int64_t D, int64_t K, std::uintptr_t X, std::uintptr_t log_weights, std::uintptr_t means,
                 std::uintptr_t prec_chol, const std::string& output, std::uintptr_t out, std::uintptr_t workspace,
                 std::size_t workspace_bytes) {
    const gc::DType dt = parse_dtype(dtype);
    const Covariance c = parse_covariance(cov);
    const LogProbOutput what = parse_output(output);
    py::gil_scoped_release release;
    gc::log_prob(device, as_stream(stream), dt, c, N, D, K, ptr<const void>(X), ptr<const void>(log_weights),
                 ptr<const void>(means), ptr<const void>(prec_chol), what, ptr<void>(out), ptr<void>(workspace),
                 workspace_bytes);
}

std::size_t py_em_stats_workspace_bytes(const std::string& dtype, const std::string& cov, int64_t N, int64_t D,
                                        int64_t K, bool given_resp) {
    return gc::em_stats_workspace_bytes(parse_dtype(dtype), parse_covariance(cov), N, D, K, given_resp);
}

void py_em_stats(int device, std::uintptr_t stream, const std::string& dtype, const std::string& cov, int64_t N,
                 int64_t D, int64_t K, std::uintptr_t X, std::uintptr_t log_weights, std::uintptr_t means,
                 std::uintptr_t prec_chol, std::uintptr_t centres, std::uintptr_t sample_weight,
                 std::uintptr_t resp, std::uintptr_t scalars, std::uintptr_t nk, std::uintptr_t s1,
                 std::uintptr_t s2, std::uintptr_t workspace, std::size_t workspace_bytes) {
    const gc::DType dt = parse_dtype(dtype);
    const Covariance c = parse_covariance(cov);
    py::gil_scoped_release release;
    gc::em_stats(device, as_stream(stream), dt, c, N, D, K, ptr<const void>(X), ptr<const void>(log_weights),
                 ptr<const void>(means), ptr<const void>(prec_chol), ptr<const void>(centres),
                 ptr<const void>(sample_weight), ptr<const void>(resp), ptr<double>(scalars), ptr<double>(nk),
                 ptr<double>(s1), ptr<double>(s2), ptr<void>(workspace), workspace_bytes);
}

std::size_t py_grad_x_workspace_bytes(const std::string& dtype, const std::string& cov, int64_t N, int64_t D,
                                      int64_t K, bool given_resp) {
    return gc::grad_x_workspace_bytes(parse_dtype(dtype), parse_covariance(cov), N, D, K, given_resp);
}

void py_grad_x(int device, std::uintptr_t stream, const std::string& dtype, const std::string& cov, int64_t N,
               int64_t D, int64_t K, std::uintptr_t X, std::uintptr_t log_weights, std::uintptr_t means,
               std::uintptr_t prec_chol, std::uintptr_t sample_weight, std::uintptr_t resp, std::uintptr_t out,
               std::uintptr_t workspace, std::size_t workspace_bytes) {
    const gc::DType dt = parse_dtype(dtype);
    const Covariance c = parse_covariance(cov);
    py::gil_scoped_release release;
    gc::grad_x(device, as_stream(stream), dt, c, N, D, K, ptr<const void>(X), ptr<const void>(log_weights),
               ptr<const void>(means), ptr<const void>(prec_chol), ptr<const void>(sample_weight),
               ptr<const void>(resp), ptr<void>(out), ptr<void>(workspace), workspace_bytes);
}

std::size_t py_finalize_workspace_bytes(const std::string& cov, int64_t K, int64_t D) {
    return gc::finalize_workspace_bytes(parse_covariance(cov), K, D);
}

void py_finalize(int device, std::uintptr_t stream, const std::string& cov, int64_t K, int64_t D,
                 std::uintptr_t nk, std::uintptr_t s1, std::uintptr_t s2, std::uintptr_t centres, double reg_covar,
                 double nk_eps, std::uintptr_t weights, std::uintptr_t means, std::uintptr_t covariances,
                 std::uintptr_t prec_chol, std::uintptr_t log_det, std::uintptr_t failed, std::uintptr_t workspace,
                 std::size_t workspace_bytes) {
    const Covariance c = parse_covariance(cov);
    py::gil_scoped_release release;
    gc::finalize(device, as_stream(stream), c, K, D, ptr<const double>(nk), ptr<const double>(s1),
                 ptr<const double>(s2), ptr<const double>(centres), reg_covar, nk_eps, ptr<double>(weights),
                 ptr<double>(means), ptr<double>(covariances), ptr<double>(prec_chol), ptr<double>(log_det),
                 ptr<int64_t>(failed), ptr<void>(workspace), workspace_bytes);
}

gmmfast::ScaleForm parse_scale_form(const std::string& s) {
    if (s == "isotropic") return gmmfast::ScaleForm::Isotropic;
    if (s == "diag") return gmmfast::ScaleForm::Diag;
    if (s == "full") return gmmfast::ScaleForm::Full;
    if (s == "correlated2d") return gmmfast::ScaleForm::Correlated2D;
    throw py::value_error("covariance must be one of 'isotropic', 'diag', 'full', 'correlated2d', got '" + s + "'");
}

gmmfast::MixtureMode parse_mixture_mode(const std::string& s) {
    if (s == "joint") return gmmfast::MixtureMode::Joint;
    if (s == "per_dim") return gmmfast::MixtureMode::PerDim;
    throw py::value_error("mixture must be 'joint' or 'per_dim', got '" + s + "'");
}

std::size_t py_per_sample_workspace_bytes(const std::string& dtype, const std::string& covariance,
                                          const std::string& mixture, int64_t B, int64_t K, int64_t D,
                                          bool backward, int lanes_per_row) {
    return gc::per_sample_workspace_bytes(parse_dtype(dtype), parse_scale_form(covariance),
                                          parse_mixture_mode(mixture), B, K, D, backward, lanes_per_row);
}

void py_per_sample_log_prob(int device, std::uintptr_t stream, const std::string& dtype,
                            const std::string& covariance, const std::string& mixture, int64_t B, int64_t K,
                            int64_t D, std::uintptr_t y, std::uintptr_t logits, std::uintptr_t means,
                            std::uintptr_t scale, std::uintptr_t rho, std::uintptr_t mask, std::uintptr_t out,
                            std::uintptr_t resp, std::uintptr_t workspace, std::size_t workspace_bytes,
                            int lanes_per_row) {
    const gc::DType dt = parse_dtype(dtype);
    const gmmfast::ScaleForm form = parse_scale_form(covariance);
    const gmmfast::MixtureMode mode = parse_mixture_mode(mixture);
    py::gil_scoped_release release;
    gc::per_sample_log_prob(device, as_stream(stream), dt, form, mode, B, K, D, ptr<const void>(y),
                            ptr<const void>(logits), ptr<const void>(means), ptr<const void>(scale),
                            ptr<const void>(rho), ptr<const uint8_t>(mask), ptr<void>(out), ptr<void>(resp),
                            ptr<void>(workspace), workspace_bytes, lanes_per_row);
}

void py_per_sample_log_prob_backward(int device, std::uintptr_t stream, const std::string& dtype,
                                     const std::string& covariance, const std::string& mixture, int64_t B,
                                     int64_t K, int64_t D, std::uintptr_t grad, std::uintptr_t resp,
                                     std::uintptr_t y, std::uintptr_t logits, std::uintptr_t means,
                                     std::uintptr_t scale, std::uintptr_t rho, std::uintptr_t mask,
                                     std::uintptr_t grad_y, std::uintptr_t grad_logits, std::uintptr_t grad_means,
                                     std::uintptr_t grad_scale, std::uintptr_t grad_rho, std::uintptr_t workspace,
                                     std::size_t workspace_bytes, int lanes_per_row) {
    const gc::DType dt = parse_dtype(dtype);
    const gmmfast::ScaleForm form = parse_scale_form(covariance);
    const gmmfast::MixtureMode mode = parse_mixture_mode(mixture);
    py::gil_scoped_release release;
    gc::per_sample_log_prob_backward(device, as_stream(stream), dt, form, mode, B, K, D, ptr<const void>(grad),
                                     ptr<const void>(resp), ptr<const void>(y), ptr<const void>(logits),
                                     ptr<const void>(means), ptr<const void>(scale), ptr<const void>(rho),
                                     ptr<const uint8_t>(mask), ptr<void>(grad_y), ptr<void>(grad_logits),
                                     ptr<void>(grad_means), ptr<void>(grad_scale), ptr<void>(grad_rho),
                                     ptr<void>(workspace), workspace_bytes, lanes_per_row);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() =
        "gmmfast CUDA kernels on raw device pointers (use gmmfast.torch for the documented API). "
        "See cuda/bindings.cpp for the signatures.";
    m.def("device_count", &gc::device_count, "Number of CUDA devices; 0 without a driver or device (never raises).");
    m.def("runtime_version", &gc::runtime_version, "CUDA runtime version this module was built with.");
    m.def("driver_version", &gc::driver_version, "CUDA driver version (0 without a driver).");
    m.def("log_prob_workspace_bytes", &py_log_prob_workspace_bytes, "dtype"_a, "covariance_type"_a, "N"_a, "D"_a,
          "K"_a, "output"_a);
    m.def("log_prob", &py_log_prob, "device"_a, "stream"_a, "dtype"_a, "covariance_type"_a, "N"_a, "D"_a, "K"_a,
          "X"_a, "log_weights"_a, "means"_a, "precisions_cholesky"_a, "output"_a, "out"_a, "workspace"_a,
          "workspace_bytes"_a);
    m.def("em_stats_workspace_bytes", &py_em_stats_workspace_bytes, "dtype"_a, "covariance_type"_a, "N"_a, "D"_a,
          "K"_a, "given_resp"_a);
    m.def("em_stats", &py_em_stats, "device"_a, "stream"_a, "dtype"_a, "covariance_type"_a, "N"_a, "D"_a, "K"_a,
          "X"_a, "log_weights"_a, "means"_a, "precisions_cholesky"_a, "centres"_a, "sample_weight"_a, "resp"_a,
          "scalars"_a, "nk"_a, "s1"_a, "s2"_a, "workspace"_a, "workspace_bytes"_a);
    m.def("grad_x_workspace_bytes", &py_grad_x_workspace_bytes, "dtype"_a, "covariance_type"_a, "N"_a, "D"_a, "K"_a,
          "given_resp"_a);
    m.def("grad_x", &py_grad_x, "device"_a, "stream"_a, "dtype"_a, "covariance_type"_a, "N"_a, "D"_a, "K"_a, "X"_a,
          "log_weights"_a, "means"_a, "precisions_cholesky"_a, "sample_weight"_a, "resp"_a, "out"_a, "workspace"_a,
          "workspace_bytes"_a);
    m.def("finalize_workspace_bytes", &py_finalize_workspace_bytes, "covariance_type"_a, "K"_a, "D"_a);
    m.def("finalize", &py_finalize, "device"_a, "stream"_a, "covariance_type"_a, "K"_a, "D"_a, "nk"_a, "s1"_a,
          "s2"_a, "centres"_a, "reg_covar"_a, "nk_eps"_a, "weights"_a, "means"_a, "covariances"_a,
          "precisions_cholesky"_a, "log_det"_a, "failed"_a, "workspace"_a, "workspace_bytes"_a);
    m.def("per_sample_workspace_bytes", &py_per_sample_workspace_bytes, "dtype"_a, "covariance"_a, "mixture"_a,
          "B"_a, "K"_a, "D"_a, "backward"_a, "lanes_per_row"_a = 0);
    m.def("per_sample_log_prob", &py_per_sample_log_prob, "device"_a, "stream"_a, "dtype"_a, "covariance"_a,
          "mixture"_a, "B"_a, "K"_a, "D"_a, "y"_a, "logits"_a, "means"_a, "scale"_a, "rho"_a, "mask"_a, "out"_a,
          "resp"_a, "workspace"_a, "workspace_bytes"_a, "lanes_per_row"_a = 0);
    m.def("per_sample_log_prob_backward", &py_per_sample_log_prob_backward, "device"_a, "stream"_a, "dtype"_a,
          "covariance"_a, "mixture"_a, "B"_a, "K"_a, "D"_a, "grad"_a, "resp"_a, "y"_a, "logits"_a, "means"_a,
          "scale"_a, "rho"_a, "mask"_a, "grad_y"_a, "grad_logits"_a, "grad_means"_a, "grad_scale"_a, "grad_rho"_a,
          "workspace"_a, "workspace_bytes"_a, "lanes_per_row"_a = 0);
}
