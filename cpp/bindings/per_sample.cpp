// gmmfast._core: per-sample mixtures (mixture density networks: every row has its own
// mixture; gmmfast/per_sample.hpp), the forward pass and its backward pass.
#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"
#include "gmmfast/per_sample.hpp"

namespace gmmfast::bind {
namespace {

using namespace pybind11::literals;

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

}  // namespace

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

}  // namespace gmmfast::bind
