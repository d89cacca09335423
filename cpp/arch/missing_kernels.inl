// The missing-value kernels (pattern-grouped E-step and EM statistics, see
// gmmfast/missing.hpp and docs/missing.md), compiled once per instruction set like
// kernels.inl: arch_<isa>.cpp includes this file after kernels.inl, with GMMFAST_ISA_NS
// defined; cpp/missing.cpp dispatches to the variant chosen at run time. The complete
// rows go to this variant's em_stats / log_prob.
//
// The work of one call, for rows with missing entries:
//   once per call       the mixture in float64: P_k = U_k U_kᵀ (full, tied), log U_jj
//   once per pattern    per component (tied: once): L, C = P_MM⁻¹ = L⁻ᵀL⁻¹, log|L|, P_MO
//   once per row        per component: x̂_M = μ_M − C P_MO (x_O − μ_O) (m·o + m²), the
//                       quadratic form (D²/2), its statistics (D²/2)
//
// Patterns are processed in groups whose factors fit a bounded buffer; within a group
// the factors are computed in parallel over (pattern, component), then the rows in a
// static schedule (the rows each thread sees, and hence the rounding, depend on the
// thread count only), each thread summing into its own float64 accumulators, merged in
// thread order at the end. Every buffer is allocated before the parallel region: the
// per-row work allocates nothing.
#if !defined(GMMFAST_ISA_NS)
#error "define GMMFAST_ISA_NS before including missing_kernels.inl"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gmmfast/missing.hpp"
#include "gmmfast/runtime.hpp"
#include "isa.hpp"

namespace gmmfast {
namespace GMMFAST_ISA_NS {
namespace mdetail {


constexpr double kLog2Pi = 1.8378770664093453;  // log(2π)
using VD = detail::Simd<double>::V;                // this ISA's vector of doubles
constexpr int64_t kW = detail::Simd<double>::W;
// bounds of one group of patterns: its factors (doubles), and patterns × components for
// the per-thread sums of responsibilities per pattern
constexpr int64_t kGroupDoubles = int64_t(1) << 21;
constexpr int64_t kGroupResp = int64_t(1) << 18;
constexpr int64_t kRowTile = 64;  // rows between cancellation polls of the calling thread

inline bool poll(const Exec& exec) { return exec.cancel && exec.cancel->poll && exec.cancel->poll(exec.cancel->ctx); }

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline void note_bad(int64_t& first, int64_t row) {
    if (first < 0 || row < first) first = row;
}

/// The mixture in float64, prepared once per call.
template <class T>
struct Model {
    int64_t K = 0, D = 0, Kf = 0;  // Kf: distinct precisions (tied: 1)
    Covariance cov = Covariance::Full;
    bool dense = false;            // full or tied: a D × D precision per factor
    std::vector<double> logw, mu;  // K, K * D
    std::vector<double> U, P;      // dense: Kf * D * D (U upper triangular; P = U Uᵀ)
    int64_t Dp = 0;                // D rounded up to whole SIMD vectors
    std::vector<double> Up;        // dense: Kf * D * Dp, U with zeros below the diagonal and past D
    std::vector<double> logdetU;   // dense: Kf
    std::vector<double> u, logu;   // diag/spherical: K * D (spherical expanded)

    explicit Model(const Mixture<T>& mix) : K(mix.K), D(mix.D), cov(mix.cov) {
        dense = cov == Covariance::Full || cov == Covariance::Tied;
        Kf = cov == Covariance::Tied ? 1 : K;
        logw.assign(mix.log_weights, mix.log_weights + K);
        mu.assign(mix.means, mix.means + K * D);
        if (dense) {
            U.assign(mix.prec_chol, mix.prec_chol + Kf * D * D);
            // U for the per-row product Uᵀ e in SIMD vectors: rows padded to Dp, zeros
            // below the diagonal (whatever the caller's array holds there) and past D
            Dp = (D + kW - 1) / kW * kW;
            Up.assign(static_cast<std::size_t>(Kf * D * Dp), 0.0);
            for (int64_t f = 0; f < Kf; ++f)
                for (int64_t l = 0; l < D; ++l)
                    for (int64_t j = l; j < D; ++j) Up[f * D * Dp + l * Dp + j] = U[f * D * D + l * D + j];
            P.assign(static_cast<std::size_t>(Kf * D * D), 0.0);
            logdetU.assign(static_cast<std::size_t>(Kf), 0.0);
            for (int64_t f = 0; f < Kf; ++f) {
                const double* Uf = U.data() + f * D * D;
                double* Pf = P.data() + f * D * D;
                for (int64_t l = 0; l < D; ++l) {
                    logdetU[f] += std::log(Uf[l * D + l]);
                    for (int64_t j = l; j < D; ++j) {  // P[l][j] = Σ_{c >= j} U[l][c] U[j][c]
                        double s = 0.0;
                        for (int64_t c = j; c < D; ++c) s += Uf[l * D + c] * Uf[j * D + c];
                        Pf[l * D + j] = Pf[j * D + l] = s;
                    }
                }
            }
        } else {
            u.resize(static_cast<std::size_t>(K * D));
            logu.resize(static_cast<std::size_t>(K * D));
            for (int64_t k = 0; k < K; ++k)
                for (int64_t d = 0; d < D; ++d) {
                    const double v = cov == Covariance::Diag ? double(mix.prec_chol[k * D + d]) : double(mix.prec_chol[k]);
                    u[k * D + d] = v;
                    logu[k * D + d] = std::log(v);
                }
        }
    }
};

/// One group of consecutive patterns [p0, p1) and their factors.
struct Group {
    int64_t p0 = 0, p1 = 0;
    std::vector<int64_t> perm;    // G * D: the missing coordinates, then the observed ones (each ascending)
    std::vector<int64_t> nmiss;   // G
    std::vector<int64_t> foff;    // G * Kf + 1: offsets of the factors in fac
    std::vector<double> fac;      // per (pattern, factor): C (m × m), P_MOᵀ (o × m), the log-constant
};

/// Doubles of the factors of one (pattern, factor) with m missing coordinates.
inline int64_t factor_size(bool dense, int64_t m, int64_t D) { return dense ? m * m + m * (D - m) + 1 : 1; }

/// Per-thread work space and sums (allocated before the parallel region).
struct ThreadState {
    std::vector<double> ld, post, E, dev, dob, y, em, L, Linv;  // K, K, K * D, D, D, D, D, D * D, D * D
    std::vector<double> nkp;                            // patterns of a group × K
    double ll = 0.0, wsum = 0.0;
    int64_t bad = -1;
    std::vector<double> nk, s1, s2;
    bool used = false;
};

template <class T>
class PatternKernel {
public:
    PatternKernel(const T* X, const Model<T>& mod, const MissingIndex& idx) : X_(X), mod_(mod), idx_(idx) {
        D_ = mod.D;
        K_ = mod.K;
        Kf_ = mod.Kf;
        // groups of patterns: factors within kGroupDoubles (at least one pattern) and
        // patterns × components within kGroupResp
        int64_t p = 0;
        max_group_ = 1;
        while (p < idx.n_patterns) {
            int64_t q = p, doubles = 0;
            while (q < idx.n_patterns) {
                const int64_t d = Kf_ * factor_size(mod.dense, missing_of(q), D_);
                if (q > p && (doubles + d > kGroupDoubles || (q - p + 1) * K_ > kGroupResp)) break;
                doubles += d;
                ++q;
            }
            bounds_.push_back({p, q});
            max_group_ = std::max(max_group_, q - p);
            p = q;
        }
    }

    int64_t max_group() const { return max_group_; }

    void init_thread(ThreadState& ts) const {
        ts.ld.assign(static_cast<std::size_t>(K_), 0.0);
        ts.post.assign(static_cast<std::size_t>(K_), 0.0);
        ts.E.assign(static_cast<std::size_t>(K_ * D_), 0.0);
        ts.dev.assign(static_cast<std::size_t>(D_), 0.0);
        ts.dob.assign(static_cast<std::size_t>(D_), 0.0);
        ts.y.assign(static_cast<std::size_t>(std::max(D_, mod_.Dp)), 0.0);
        ts.em.assign(static_cast<std::size_t>(D_), 0.0);
        if (mod_.dense) {
            ts.L.assign(static_cast<std::size_t>(D_ * D_), 0.0);
            ts.Linv.assign(static_cast<std::size_t>(D_ * D_), 0.0);
        }
        ts.nkp.assign(static_cast<std::size_t>(max_group_ * K_), 0.0);
    }

    /// Runs row(ts, g, pl, i) for every incomplete row i (pl: its pattern within group g)
    /// and group_end(ts, g) on every thread after the rows of each group.
    template <class RowFn, class EndFn>
    Status run(int nt, const Exec& exec, std::vector<ThreadState>& threads, RowFn&& row, EndFn&& group_end) {
        std::atomic<bool> stop{false}, interrupted{false};
        Group g;
        // the largest group's buffers, allocated here (not in the parallel region)
        int64_t max_fac = 0;
        for (const auto& b : bounds_) {
            int64_t s = 0;
            for (int64_t p = b.first; p < b.second; ++p) s += Kf_ * factor_size(mod_.dense, missing_of(p), D_);
            max_fac = std::max(max_fac, s);
        }
        g.perm.resize(static_cast<std::size_t>(max_group_ * D_));
        g.nmiss.resize(static_cast<std::size_t>(max_group_));
        g.foff.resize(static_cast<std::size_t>(max_group_ * Kf_ + 1));
        g.fac.resize(static_cast<std::size_t>(max_fac));
#pragma omp parallel num_threads(nt)
        {
            const int tid = thread_id();
            ThreadState& ts = threads[tid];
            for (const auto& b : bounds_) {
#pragma omp single
                plan_group(g, b.first, b.second);
                // implicit barrier: the plan is visible to every thread
                const int64_t G = g.p1 - g.p0;
#pragma omp for schedule(dynamic, 16)
                for (int64_t j = 0; j < G * Kf_; ++j)
                    if (!stop.load(std::memory_order_relaxed)) factors(g, j / Kf_, j % Kf_, ts);
                const int64_t r0 = idx_.offsets[g.p0], r1 = idx_.offsets[g.p1];
                const int64_t ntiles = (r1 - r0 + kRowTile - 1) / kRowTile;
#pragma omp for schedule(static)
                for (int64_t t = 0; t < ntiles; ++t) {
                    if (stop.load(std::memory_order_relaxed)) continue;
                    if (tid == 0 && poll(exec)) {
                        interrupted.store(true);
                        stop.store(true);
                        continue;
                    }
                    ts.used = true;
                    const int64_t a = r0 + t * kRowTile, e = std::min(r1, a + kRowTile);
                    // the pattern of position a, then walk
                    int64_t p = int64_t(std::upper_bound(idx_.offsets + g.p0, idx_.offsets + g.p1 + 1, a) - idx_.offsets) - 1;
                    for (int64_t s = a; s < e; ++s) {
                        while (s >= idx_.offsets[p + 1]) ++p;
                        row(ts, g, p - g.p0, idx_.rows[s]);
                    }
                }
                group_end(ts, g);
#pragma omp barrier
            }
        }
        return interrupted.load() ? Status::Interrupted : Status::Ok;
    }

    /// The log-densities ld[k] = log π_k + log N(x_O | k) of row i of pattern pl, the
    /// posteriors post[k] = p(k | x_O) and the completed deviations E[k] = x̂_k − μ_k.
    /// Returns log p(x_O) (NaN/−inf when not finite; post is then unspecified).
    double densities(const Group& g, int64_t pl, int64_t i, ThreadState& ts) const {
        const int64_t D = D_, m = g.nmiss[pl], o = D - m;
        const int64_t* mi = g.perm.data() + pl * D;
        const int64_t* oi = mi + m;
        const T* x = X_ + i * D;
        double* ld = ts.ld.data();
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t k = 0; k < K_; ++k) {
            double* e = ts.E.data() + k * D;
            const double* mu = mod_.mu.data() + k * D;
            if (mod_.logw[k] == -std::numeric_limits<double>::infinity()) {
                ld[k] = mod_.logw[k];
                std::fill(e, e + D, 0.0);
                continue;
            }
            const int64_t f = Kf_ == 1 ? 0 : k;
            const double* F = g.fac.data() + g.foff[pl * Kf_ + f];
            double q = 0.0;
            if (mod_.dense) {
                // contiguous multiply-adds (axpy) rather than dot products: they
                // vectorise without reassociating sums
                const double* C = F;
                const double* Bt = F + m * m;
                double* dob = ts.dob.data();
                double* v = ts.y.data();
                double* em = ts.em.data();
                for (int64_t b = 0; b < o; ++b) {
                    dob[b] = double(x[oi[b]]) - mu[oi[b]];
                    e[oi[b]] = dob[b];
                }
                // x̂_M − μ_M = −C v with v = P_MO (x_O − μ_O). Few missing coordinates
                // (m < a vector): one sum per a in a register; else axpys over a. Both
                // add the terms in the same order (b, c ascending): the same results.
                if (m < kW) {
                    for (int64_t a = 0; a < m; ++a) {
                        double s = 0.0;
                        for (int64_t b = 0; b < o; ++b) s += Bt[b * m + a] * dob[b];
                        v[a] = s;
                    }
                    for (int64_t a = 0; a < m; ++a) {
                        double s = 0.0;
                        for (int64_t c = 0; c < m; ++c) s -= C[c * m + a] * v[c];
                        em[a] = s;
                    }
                } else {
                    std::fill(v, v + m, 0.0);
                    for (int64_t b = 0; b < o; ++b) {
                        const double db = dob[b];
                        const double* Bb = Bt + b * m;
                        for (int64_t a = 0; a < m; ++a) v[a] += Bb[a] * db;
                    }
                    std::fill(em, em + m, 0.0);
                    for (int64_t c = 0; c < m; ++c) {
                        const double vc = v[c];
                        const double* Cc = C + c * m;  // C is symmetric: row c is column c
                        for (int64_t a = 0; a < m; ++a) em[a] -= Cc[a] * vc;
                    }
                }
                for (int64_t a = 0; a < m; ++a) e[mi[a]] = em[a];
                // y = Uᵀ e: y_j = Σ_{l <= j} e_l U[l][j] (l ascending), one vector of j
                // at a time held in a register over l (U's zeros below the diagonal add
                // exact zeros)
                const int64_t Dp = mod_.Dp;
                const double* U = mod_.Up.data() + f * D * Dp;
                double* y = ts.y.data();  // Dp
                for (int64_t jb = 0; jb < Dp; jb += kW) {
                    VD acc = {};
                    const int64_t lend = std::min(D, jb + kW);
                    for (int64_t l = 0; l < lend; ++l) {
                        VD u;
                        std::memcpy(&u, U + l * Dp + jb, sizeof u);
                        acc += e[l] * u;
                    }
                    std::memcpy(y + jb, &acc, sizeof acc);
                }
                for (int64_t j = 0; j < D; ++j) q += y[j] * y[j];
                ld[k] = mod_.logw[k] + F[m * m + m * o] - 0.5 * q;
            } else {
                const double* u = mod_.u.data() + k * D;
                for (int64_t b = 0; b < o; ++b) {
                    const int64_t d = oi[b];
                    e[d] = double(x[d]) - mu[d];
                    const double z = e[d] * u[d];
                    q += z * z;
                }
                for (int64_t a = 0; a < m; ++a) e[mi[a]] = 0.0;
                ld[k] = mod_.logw[k] + F[0] - 0.5 * q;
            }
            if (ld[k] > mx) mx = ld[k];
        }
        if (!std::isfinite(mx)) return std::isnan(mx) ? mx : -std::numeric_limits<double>::infinity();
        double s = 0.0;
        double* post = ts.post.data();
        for (int64_t k = 0; k < K_; ++k) s += (post[k] = std::exp(ld[k] - mx));
        const double inv = 1.0 / s;
        for (int64_t k = 0; k < K_; ++k) post[k] *= inv;
        return mx + std::log(s);
    }

    int64_t D() const { return D_; }
    int64_t K() const { return K_; }
    const Model<T>& model() const { return mod_; }

private:
    int64_t missing_of(int64_t p) const {
        int64_t m = 0;
        for (int64_t d = 0; d < D_; ++d) m += idx_.observed[p * D_ + d] ? 0 : 1;
        return m;
    }

    void plan_group(Group& g, int64_t p0, int64_t p1) const {
        g.p0 = p0;
        g.p1 = p1;
        int64_t off = 0;
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t pl = p - p0;
            const uint8_t* obs = idx_.observed + p * D_;
            int64_t* perm = g.perm.data() + pl * D_;
            int64_t m = 0;
            for (int64_t d = 0; d < D_; ++d)
                if (!obs[d]) perm[m++] = d;
            int64_t j = m;
            for (int64_t d = 0; d < D_; ++d)
                if (obs[d]) perm[j++] = d;
            g.nmiss[pl] = m;
            for (int64_t f = 0; f < Kf_; ++f) {
                g.foff[pl * Kf_ + f] = off;
                off += factor_size(mod_.dense, m, D_);
            }
        }
        g.foff[(p1 - p0) * Kf_] = off;
    }

    /// The factors of pattern pl of the group for precision f.
    void factors(Group& g, int64_t pl, int64_t f, ThreadState& ts) const {
        const int64_t D = D_, m = g.nmiss[pl], o = D - m;
        const int64_t* mi = g.perm.data() + pl * D;
        const int64_t* oi = mi + m;
        double* F = g.fac.data() + g.foff[pl * Kf_ + f];
        if (!mod_.dense) {
            double c = -0.5 * double(o) * kLog2Pi;
            for (int64_t b = 0; b < o; ++b) c += mod_.logu[f * D + oi[b]];
            F[0] = c;
            return;
        }
        const double* P = mod_.P.data() + f * D * D;
        double* L = ts.L.data();      // m × m, stride m
        double* Li = ts.Linv.data();  // m × m, stride m
        double* C = F;
        double* Bt = F + m * m;  // P_MO transposed: Bt[b][a] = P[M_a][O_b]
        double logdetL = 0.0;
        bool ok = true;
        for (int64_t a = 0; a < m && ok; ++a) {  // Cholesky of P_MM
            double s = P[mi[a] * D + mi[a]];
            for (int64_t c = 0; c < a; ++c) s -= L[a * m + c] * L[a * m + c];
            if (!(s > 0.0) || !std::isfinite(s)) {
                ok = false;
                break;
            }
            const double laa = std::sqrt(s);
            L[a * m + a] = laa;
            logdetL += std::log(laa);
            for (int64_t b = a + 1; b < m; ++b) {
                double v = P[mi[b] * D + mi[a]];
                for (int64_t c = 0; c < a; ++c) v -= L[b * m + c] * L[a * m + c];
                L[b * m + a] = v / laa;
            }
        }
        if (!ok) {  // P_MM is not numerically positive definite: the rows report non-finite
            std::fill(F, F + factor_size(true, m, D), 0.0);
            F[m * m + m * o] = std::numeric_limits<double>::quiet_NaN();
            return;
        }
        for (int64_t b = 0; b < o; ++b)
            for (int64_t a = 0; a < m; ++a) Bt[b * m + a] = P[mi[a] * D + oi[b]];
        // C = P_MM⁻¹ = L⁻ᵀ L⁻¹, with L⁻¹ lower triangular by forward substitution
        for (int64_t c = 0; c < m; ++c)
            for (int64_t a = 0; a < m; ++a) {
                if (a < c) {
                    Li[a * m + c] = 0.0;
                    continue;
                }
                double v = a == c ? 1.0 : 0.0;
                for (int64_t b = c; b < a; ++b) v -= L[a * m + b] * Li[b * m + c];
                Li[a * m + c] = v / L[a * m + a];
            }
        for (int64_t a = 0; a < m; ++a)
            for (int64_t b = a; b < m; ++b) {
                double s = 0.0;
                for (int64_t c = b; c < m; ++c) s += Li[c * m + a] * Li[c * m + b];
                C[a * m + b] = C[b * m + a] = s;
            }
        F[m * m + m * o] = mod_.logdetU[f] - logdetL - 0.5 * double(o) * kLog2Pi;
    }

    const T* X_;
    const Model<T>& mod_;
    const MissingIndex& idx_;
    int64_t D_ = 0, K_ = 0, Kf_ = 0, max_group_ = 1;
    std::vector<std::pair<int64_t, int64_t>> bounds_;
};

/// The pattern kernel of one call with its threads' state (allocated here, before the
/// parallel region).
template <class T>
struct PatternRun {
    Model<T> mod;
    PatternKernel<T> kern;
    int nt;
    std::vector<ThreadState> threads;
    PatternRun(const T* X, const Mixture<T>& mix, const MissingIndex& idx, const Exec& exec);
};

int threads_for(const Exec& exec, int64_t rows) {
    const int64_t tiles = std::max<int64_t>(1, (rows + kRowTile - 1) / kRowTile);
    return int(std::min<int64_t>(resolve_threads(exec.n_threads), tiles));
}

template <class T>
PatternRun<T>::PatternRun(const T* X, const Mixture<T>& mix, const MissingIndex& idx, const Exec& exec)
    : mod(mix), kern(X, mod, idx), nt(threads_for(exec, idx.n_incomplete)), threads(static_cast<std::size_t>(nt)) {
    for (auto& ts : threads) kern.init_thread(ts);
}

/// Complete rows in blocks: fn(pointer to n contiguous rows, their first index in
/// `complete`, n). Runs of consecutive rows are passed in place; others are gathered.
template <class T, class Fn>
Status complete_blocks(const T* X, int64_t D, const MissingIndex& idx, const Exec& exec, std::vector<T>& buf, Fn&& fn) {
    const int64_t nc = idx.n_complete;
    const int64_t B = std::max<int64_t>(1024, (int64_t(1) << 24) / std::max<int64_t>(1, D * int64_t(sizeof(T))));
    for (int64_t b0 = 0; b0 < nc; b0 += B) {
        const int64_t n = std::min(B, nc - b0);
        const int64_t* rows = idx.complete + b0;
        if (rows[n - 1] - rows[0] == n - 1) {
            if (fn(X + rows[0] * D, b0, n) == Status::Interrupted) return Status::Interrupted;
            continue;
        }
        buf.resize(static_cast<std::size_t>(n * D));
        T* dst = buf.data();
        const int nt = n * D < (int64_t(1) << 16) ? 1 : resolve_threads(exec.n_threads);
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t j = 0; j < n; ++j) std::memcpy(dst + j * D, X + rows[j] * D, sizeof(T) * std::size_t(D));
        if (fn(buf.data(), b0, n) == Status::Interrupted) return Status::Interrupted;
    }
    return Status::Ok;
}


template <class T>
RunInfo em_stats_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& idx,
                         const T* centres, const T* sample_weight, Stats& out, const Exec& exec) {
    (void)N;
    RunInfo info;
    const int64_t K = mix.K, D = mix.D;
    const Covariance cov = mix.cov;
    const int64_t s2n = cov == Covariance::Full ? K * D * D
                        : cov == Covariance::Tied ? D * D
                        : cov == Covariance::Diag ? K * D
                                                  : K;
    out.log_likelihood = 0.0;
    out.weight_sum = 0.0;
    std::fill(out.nk, out.nk + K, 0.0);
    std::fill(out.s1, out.s1 + K * D, 0.0);
    std::fill(out.s2, out.s2 + s2n, 0.0);

    // complete rows: today's kernel, block by block
    {
        std::vector<T> buf, wbuf;
        std::vector<double> nk(static_cast<std::size_t>(K)), s1(static_cast<std::size_t>(K * D)),
            s2(static_cast<std::size_t>(s2n));
        Responsibilities<T> estep;
        info.status = complete_blocks(X, D, idx, exec, buf, [&](const T* Xb, int64_t b0, int64_t n) {
            const T* w = nullptr;
            if (sample_weight) {
                wbuf.resize(static_cast<std::size_t>(n));
                for (int64_t j = 0; j < n; ++j) wbuf[j] = sample_weight[idx.complete[b0 + j]];
                w = wbuf.data();
            }
            Stats part;
            part.nk = nk.data();
            part.s1 = s1.data();
            part.s2 = s2.data();
            const RunInfo r = GMMFAST_ISA_NS::em_stats<T>(Xb, n, mix, estep, centres, w, part, exec);
            if (r.first_bad_row >= 0) note_bad(info.first_bad_row, idx.complete[b0 + r.first_bad_row]);
            out.log_likelihood += part.log_likelihood;
            out.weight_sum += part.weight_sum;
            for (int64_t k = 0; k < K; ++k) out.nk[k] += nk[k];
            for (int64_t j = 0; j < K * D; ++j) out.s1[j] += s1[j];
            for (int64_t j = 0; j < s2n; ++j) out.s2[j] += s2[j];
            return r.status;
        });
    }
    if (info.status == Status::Interrupted || idx.n_incomplete == 0) return info;

    PatternRun<T> patterns(X, mix, idx, exec);
    const Model<T>& mod = patterns.mod;
    PatternKernel<T>& kern = patterns.kern;
    std::vector<ThreadState>& threads = patterns.threads;
    for (auto& ts : threads) {
        ts.nk.assign(static_cast<std::size_t>(K), 0.0);
        ts.s1.assign(static_cast<std::size_t>(K * D), 0.0);
        ts.s2.assign(static_cast<std::size_t>(s2n), 0.0);
    }
    auto row = [&](ThreadState& ts, const Group& g, int64_t pl, int64_t i) {
        const double lse = kern.densities(g, pl, i, ts);
        if (!std::isfinite(lse)) {
            note_bad(ts.bad, i);
            return;
        }
        const double w = sample_weight ? double(sample_weight[i]) : 1.0;
        ts.ll += w * lse;
        ts.wsum += w;
        const int64_t m = g.nmiss[pl];
        const int64_t* mi = g.perm.data() + pl * D;
        const int64_t* oi = mi + m;
        const T* x = X + i * D;
        double* dev = ts.dev.data();
        for (int64_t k = 0; k < K; ++k) {
            const double r = w * ts.post[k];
            if (r == 0.0) continue;
            const double* e = ts.E.data() + k * D;
            const double* mu = mod.mu.data() + k * D;
            for (int64_t b = 0; b < D - m; ++b) dev[oi[b]] = double(x[oi[b]]) - double(centres[k * D + oi[b]]);
            for (int64_t a = 0; a < m; ++a) dev[mi[a]] = (mu[mi[a]] - double(centres[k * D + mi[a]])) + e[mi[a]];
            ts.nk[k] += r;
            ts.nkp[pl * K + k] += r;
            double* s1 = ts.s1.data() + k * D;
            for (int64_t j = 0; j < D; ++j) s1[j] += r * dev[j];
            switch (cov) {
                case Covariance::Full:
                case Covariance::Tied: {
                    double* S = ts.s2.data() + (cov == Covariance::Full ? k * D * D : 0);
                    // whole rows (full-width vectors); only the upper triangle is read
                    // when the threads' sums are merged
                    for (int64_t l = 0; l < D; ++l) {
                        const double rl = r * dev[l];
                        for (int64_t j = 0; j < D; ++j) S[l * D + j] += rl * dev[j];
                    }
                    break;
                }
                case Covariance::Diag: {
                    double* S = ts.s2.data() + k * D;
                    for (int64_t j = 0; j < D; ++j) S[j] += r * dev[j] * dev[j];
                    break;
                }
                case Covariance::Spherical: {
                    double v = 0.0;
                    for (int64_t j = 0; j < D; ++j) v += dev[j] * dev[j];
                    ts.s2[k] += r * v;
                    break;
                }
            }
        }
    };
    // the conditional covariance of the missing coordinates, once per pattern and
    // component, weighted by the pattern's summed responsibilities of this thread
    auto group_end = [&](ThreadState& ts, const Group& g) {
        const int64_t G = g.p1 - g.p0;
        for (int64_t pl = 0; pl < G; ++pl) {
            const int64_t m = g.nmiss[pl];
            const int64_t* mi = g.perm.data() + pl * D;
            for (int64_t k = 0; k < K; ++k) {
                const double v = ts.nkp[pl * K + k];
                if (v == 0.0) continue;
                ts.nkp[pl * K + k] = 0.0;
                switch (cov) {
                    case Covariance::Full:
                    case Covariance::Tied: {
                        const int64_t f = cov == Covariance::Tied ? 0 : k;
                        const double* C = g.fac.data() + g.foff[pl * mod.Kf + f];
                        double* S = ts.s2.data() + (cov == Covariance::Full ? k * D * D : 0);
                        for (int64_t a = 0; a < m; ++a)
                            for (int64_t b = a; b < m; ++b) S[mi[a] * D + mi[b]] += v * C[a * m + b];
                        break;
                    }
                    case Covariance::Diag:
                        for (int64_t a = 0; a < m; ++a) {
                            const double u = mod.u[k * D + mi[a]];
                            ts.s2[k * D + mi[a]] += v / (u * u);
                        }
                        break;
                    case Covariance::Spherical: {
                        double t = 0.0;
                        for (int64_t a = 0; a < m; ++a) {
                            const double u = mod.u[k * D + mi[a]];
                            t += 1.0 / (u * u);
                        }
                        ts.s2[k] += v * t;
                        break;
                    }
                }
            }
        }
    };
    info.status = kern.run(patterns.nt, exec, threads, row, group_end);
    // merge in thread order; full and tied: the upper triangles, mirrored
    std::vector<double> upper(cov == Covariance::Full || cov == Covariance::Tied ? static_cast<std::size_t>(s2n) : 0);
    for (const auto& ts : threads) {
        if (!ts.used) continue;
        out.log_likelihood += ts.ll;
        out.weight_sum += ts.wsum;
        if (ts.bad >= 0) note_bad(info.first_bad_row, ts.bad);
        for (int64_t k = 0; k < K; ++k) out.nk[k] += ts.nk[k];
        for (int64_t j = 0; j < K * D; ++j) out.s1[j] += ts.s1[j];
        if (upper.empty())
            for (int64_t j = 0; j < s2n; ++j) out.s2[j] += ts.s2[j];
        else
            for (int64_t j = 0; j < s2n; ++j) upper[j] += ts.s2[j];
    }
    if (!upper.empty()) {
        const int64_t nmat = cov == Covariance::Full ? K : 1;
        for (int64_t k = 0; k < nmat; ++k)
            for (int64_t l = 0; l < D; ++l)
                for (int64_t j = l; j < D; ++j) {
                    const double v = upper[k * D * D + l * D + j];
                    out.s2[k * D * D + l * D + j] += v;
                    if (j != l) out.s2[k * D * D + j * D + l] += v;
                }
    }
    return info;
}

template <class T>
RunInfo log_prob_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& idx,
                         MissingOutput what, T* out, const Exec& exec) {
    (void)N;
    RunInfo info;
    const int64_t K = mix.K, D = mix.D;
    const int64_t width = what == MissingOutput::Sample ? 1 : what == MissingOutput::Impute ? D : K;
    // complete rows
    if (what == MissingOutput::Impute) {
        for (int64_t j = 0; j < idx.n_complete; ++j)
            std::copy(X + idx.complete[j] * D, X + (idx.complete[j] + 1) * D, out + idx.complete[j] * D);
    } else {
        std::vector<T> buf, res;
        const LogProbOutput kind = what == MissingOutput::Sample    ? LogProbOutput::Sample
                                   : what == MissingOutput::LogResp ? LogProbOutput::LogResp
                                                                    : LogProbOutput::Weighted;
        info.status = complete_blocks(X, D, idx, exec, buf, [&](const T* Xb, int64_t b0, int64_t n) {
            res.resize(static_cast<std::size_t>(n * width));
            const RunInfo r = GMMFAST_ISA_NS::log_prob<T>(Xb, n, mix, kind, res.data(), exec);
            if (r.first_bad_row >= 0) note_bad(info.first_bad_row, idx.complete[b0 + r.first_bad_row]);
            for (int64_t j = 0; j < n; ++j)
                std::copy(res.data() + j * width, res.data() + (j + 1) * width, out + idx.complete[b0 + j] * width);
            return r.status;
        });
    }
    if (info.status == Status::Interrupted || idx.n_incomplete == 0) return info;
    PatternRun<T> patterns(X, mix, idx, exec);
    auto row = [&](ThreadState& ts, const Group& g, int64_t pl, int64_t i) {
        const double lse = patterns.kern.densities(g, pl, i, ts);
        if (!std::isfinite(lse)) note_bad(ts.bad, i);
        T* o = out + i * width;
        switch (what) {
            case MissingOutput::Sample: o[0] = T(lse); break;
            case MissingOutput::LogResp:
                for (int64_t k = 0; k < K; ++k) o[k] = T(ts.ld[k] - lse);
                break;
            case MissingOutput::Weighted:
                for (int64_t k = 0; k < K; ++k) o[k] = T(ts.ld[k]);
                break;
            case MissingOutput::Impute: {
                const int64_t m = g.nmiss[pl];
                const int64_t* mi = g.perm.data() + pl * D;
                const T* x = X + i * D;
                for (int64_t b = m; b < D; ++b) o[mi[b]] = x[mi[b]];
                for (int64_t a = 0; a < m; ++a) {
                    double v = 0.0;
                    for (int64_t k = 0; k < K; ++k)
                        if (ts.post[k] != 0.0) v += ts.post[k] * (patterns.mod.mu[k * D + mi[a]] + ts.E[k * D + mi[a]]);
                    o[mi[a]] = T(v);
                }
                break;
            }
        }
    };
    info.status = patterns.kern.run(patterns.nt, exec, patterns.threads, row, [](ThreadState&, const Group&) {});
    for (const auto& ts : patterns.threads)
        if (ts.bad >= 0) note_bad(info.first_bad_row, ts.bad);
    return info;
}

}  // namespace mdetail

template <class T>
RunInfo em_stats_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& idx,
                         const T* centres, const T* sample_weight, Stats& out, const Exec& exec) {
    return mdetail::em_stats_missing<T>(X, N, mix, idx, centres, sample_weight, out, exec);
}

template <class T>
RunInfo log_prob_missing(const T* X, int64_t N, const Mixture<T>& mix, const MissingIndex& idx,
                         MissingOutput what, T* out, const Exec& exec) {
    return mdetail::log_prob_missing<T>(X, N, mix, idx, what, out, exec);
}

#define GMMFAST_INSTANTIATE_MISSING(T)                                                               \
    template RunInfo em_stats_missing<T>(const T*, int64_t, const Mixture<T>&, const MissingIndex&, \
                                         const T*, const T*, Stats&, const Exec&);                  \
    template RunInfo log_prob_missing<T>(const T*, int64_t, const Mixture<T>&, const MissingIndex&, \
                                         MissingOutput, T*, const Exec&);
GMMFAST_INSTANTIATE_MISSING(float)
GMMFAST_INSTANTIATE_MISSING(double)
#undef GMMFAST_INSTANTIATE_MISSING

}  // namespace GMMFAST_ISA_NS
}  // namespace gmmfast
