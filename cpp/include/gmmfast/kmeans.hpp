// k-means for initialising EM: greedy k-means++ seeding and Lloyd iterations.
#pragma once

#include "gmmfast/mixture.hpp"

namespace gmmfast {

/// Greedy k-means++ (Arthur & Vassilvitskii, with scikit-learn's local trials): each new
/// centre is the best of `n_local_trials` candidates drawn with probability ∝ w·D².
///
/// @param X              size N * D
/// @param sample_weight  size N or nullptr
/// @param first          the first centre's row, drawn by the caller with probability ∝ w
/// @param uniforms       size (K - 1) * n_local_trials, values in [0, 1): candidate j of
///                       centre c is drawn at uniforms[(c - 1) * n_local_trials + j] times
///                       the current potential. The caller draws them (the Python layer
///                       from NumPy's RandomState, in scikit-learn's order), so the result
///                       depends only on the inputs, not on threads
/// @param centres        out, size K * D
/// @param indices        out, size K: the rows chosen as centres
/// @return Status::Interrupted when cancelled
template <class T>
Status kmeans_plusplus(const T* X, int64_t N, int64_t D, int64_t K, const T* sample_weight,
                       int64_t first, const double* uniforms, int n_local_trials, T* centres,
                       int64_t* indices, const Exec& exec = Exec{});

struct KMeansResult {
    Status status = Status::Ok;
    int n_iter = 0;
    bool converged = false;
    double inertia = 0.0;  ///< Σ_i w_i ‖x_i - c_{label_i}‖²
};

/// Lloyd's algorithm from the given centres (scikit-learn's semantics): stops when the
/// labels no longer change, or when Σ‖c_new - c_old‖² <= tol; empty clusters are moved
/// to the points farthest from their centres; labels are consistent with the returned
/// centres.
///
/// @param centres  in/out, size K * D
/// @param labels   out, size N
template <class T>
KMeansResult kmeans_lloyd(const T* X, int64_t N, int64_t D, int64_t K, const T* sample_weight,
                          T* centres, int64_t* labels, int max_iter, double tol,
                          const Exec& exec = Exec{});

}  // namespace gmmfast
