// gmmfast._core: k-means (gmmfast/kmeans.hpp): k-means++ seeding and Lloyd iterations.
#include <algorithm>
#include <cmath>
#include <string>

#include "common.hpp"
#include "gmmfast/kmeans.hpp"

namespace gmmfast::bind {
namespace {

using namespace pybind11::literals;

/// sample_weight (size N) as k-means takes it: checked by optional_weights, and not all
/// zero (no centre could be drawn). Empty when sw is None.
template <class T>
CArray<T> kmeans_weights(const py::object& sw, int64_t N) {
    CArray<T> w;
    if (sw.is_none()) return w;
    w = optional_weights<T>(sw, N, false);
    double total = 0.0;
    for (int64_t i = 0; i < N; ++i) total += double(w.data()[i]);
    if (!(total > 0.0)) throw py::value_error("sample_weight must not sum to zero");
    return w;
}

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
        CArray<T> w = kmeans_weights<T>(sw, N);
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
        CArray<T> w = kmeans_weights<T>(sw, N);
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

}  // namespace

void register_kmeans(py::module_& m) {
    m.def("kmeans_plusplus", &py_kmeans_plusplus, "X"_a, "n_clusters"_a, "sample_weight"_a = py::none(),
          "first"_a, "uniforms"_a, "n_local_trials"_a = 1, "n_threads"_a = 0, "Greedy k-means++ seeding -> (centres, indices).");
    m.def("kmeans_lloyd", &py_kmeans_lloyd, "X"_a, "centres"_a, "sample_weight"_a = py::none(),
          "max_iter"_a = 300, "tol"_a = 0.0, "n_threads"_a = 0,
          "Lloyd iterations -> (centres, labels, inertia, n_iter, converged).");
}

}  // namespace gmmfast::bind
