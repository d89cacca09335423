// Runs gmmfast's CUDA kernels in the host emulation (cuda_runtime.h here) and compares
// every op with the C++/OpenMP kernels of cpp/: log_prob (3 outputs), em_stats (E-step
// with and without sample weights, given signed responsibilities), grad_x (E-step and
// given), finalize (including a failing component), determinism, non-finite rows, N=0,
// for the four covariance types, float32 and float64, and edge shapes.
//
// Build and run: cuda/emu/run_emulation.sh (ASan+UBSan, then ThreadSanitizer --quick).
// Exit status 0 when everything matches.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "gmmfast/em_stats.hpp"
#include "gmmfast/finalize.hpp"
#include "gmmfast/grad.hpp"
#include "gmmfast/log_prob.hpp"
#include "gmmfast_cuda.hpp"

using namespace gmmfast;
namespace gc = gmmfast::cuda;

namespace {

int failures = 0;
int checks = 0;

const char* cov_name(Covariance c) {
    switch (c) {
        case Covariance::Full: return "full";
        case Covariance::Tied: return "tied";
        case Covariance::Diag: return "diag";
        default: return "spherical";
    }
}

int64_t pcount(Covariance cov, int64_t K, int64_t D) {
    switch (cov) {
        case Covariance::Full: return K * D * D;
        case Covariance::Tied: return D * D;
        case Covariance::Diag: return K * D;
        default: return K;
    }
}

/// |got - want| <= rtol * (scale + |want|) + atol for every entry, NaN only where NaN.
template <class A, class B>
void expect_close(const std::string& what, const A* got, const B* want, int64_t n, double rtol, double atol,
                  double scale = 0.0) {
    ++checks;
    double worst = 0.0;
    int64_t worst_i = -1;
    for (int64_t i = 0; i < n; ++i) {
        const double g = double(got[i]), w = double(want[i]);
        if (std::isnan(w) || std::isnan(g)) {
            if (std::isnan(w) != std::isnan(g)) {
                std::printf("FAIL %s: [%lld] got %.17g want %.17g\n", what.c_str(), (long long)i, g, w);
                ++failures;
                return;
            }
            continue;
        }
        if (std::isinf(w) || std::isinf(g)) {
            if (g != w) {
                std::printf("FAIL %s: [%lld] got %.17g want %.17g\n", what.c_str(), (long long)i, g, w);
                ++failures;
                return;
            }
            continue;
        }
        const double err = std::fabs(g - w) / (rtol * (scale + std::fabs(w)) + atol);
        if (err > worst) {
            worst = err;
            worst_i = i;
        }
    }
    if (worst > 1.0) {
        std::printf("FAIL %s: [%lld] got %.17g want %.17g (error %.3g x tolerance)\n", what.c_str(),
                    (long long)worst_i, double(got[worst_i]), double(want[worst_i]), worst);
        ++failures;
    }
}

void expect(bool ok, const std::string& what) {
    ++checks;
    if (!ok) {
        std::printf("FAIL %s\n", what.c_str());
        ++failures;
    }
}

template <class T>
double max_abs(const std::vector<T>& v) {
    double m = 0.0;
    for (const T& x : v)
        if (std::isfinite(double(x))) m = std::fmax(m, std::fabs(double(x)));
    return m;
}

template <class T>
struct Problem {
    Covariance cov;
    int64_t N, D, K;
    std::vector<T> X, lw, means, prec, sw, resp, centres;
};

template <class T>
Problem<T> make_problem(Covariance cov, int64_t N, int64_t D, int64_t K, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> unif(0.0, 1.0);
    Problem<T> p{cov, N, D, K, {}, {}, {}, {}, {}, {}, {}};
    std::vector<double> w(K);
    double wsum = 0.0;
    for (auto& v : w) wsum += (v = 0.5 + unif(rng));
    for (int64_t k = 0; k < K; ++k) p.lw.push_back(T(std::log(w[k] / wsum)));
    for (int64_t j = 0; j < K * D; ++j) p.means.push_back(T(3.0 * normal(rng) + 5.0));  // off the origin
    p.prec.assign(pcount(cov, K, D), T(0));
    if (cov == Covariance::Full || cov == Covariance::Tied) {
        const int64_t n = cov == Covariance::Full ? K : 1;
        for (int64_t k = 0; k < n; ++k)
            for (int64_t l = 0; l < D; ++l)
                for (int64_t j = l; j < D; ++j)
                    p.prec[k * D * D + l * D + j] = T(l == j ? 0.8 + 0.4 * unif(rng) : 0.3 * normal(rng) / std::sqrt(double(D)));
    } else {
        for (auto& v : p.prec) v = T(0.6 + unif(rng));
    }
    for (int64_t i = 0; i < N; ++i) {
        const int64_t k = int64_t(unif(rng) * double(K)) % K;
        for (int64_t d = 0; d < D; ++d) p.X.push_back(T(double(p.means[k * D + d]) + 1.2 * normal(rng)));
    }
    if (N > 3)  // an outlier far from every component: tiny but finite densities
        for (int64_t d = 0; d < D; ++d) p.X[2 * D + d] = T(double(p.X[2 * D + d]) + 25.0);
    for (int64_t i = 0; i < N; ++i) p.sw.push_back(T(0.25 + 1.5 * unif(rng)));
    if (N > 5) p.sw[4] = T(0);  // a zero weight
    for (int64_t j = 0; j < N * K; ++j) p.resp.push_back(T(normal(rng)));  // any sign (autograd backward)
    for (int64_t j = 0; j < K * D; ++j) p.centres.push_back(T(double(p.means[j]) + 0.1 * normal(rng)));
    return p;
}

template <class T>
Mixture<T> mixture_of(const Problem<T>& p) {
    Mixture<T> m;
    m.K = p.K;
    m.D = p.D;
    m.cov = p.cov;
    m.log_weights = p.lw.data();
    m.means = p.means.data();
    m.prec_chol = p.prec.data();
    return m;
}

gc::DType dtype_of(float) { return gc::DType::Float32; }
gc::DType dtype_of(double) { return gc::DType::Float64; }

struct GpuStats {
    double scalars[2] = {0, 0};
    std::vector<double> nk, s1, s2;
};

template <class T>
GpuStats gpu_em_stats(const Problem<T>& p, const std::type_identity_t<T>* sw, const std::type_identity_t<T>* resp, const std::vector<T>* X = nullptr) {
    GpuStats s;
    s.nk.assign(p.K, -7.0);
    s.s1.assign(p.K * p.D, -7.0);
    s.s2.assign(pcount(p.cov, p.K, p.D), -7.0);
    const std::size_t bytes = gc::em_stats_workspace_bytes(dtype_of(T()), p.cov, p.N, p.D, p.K, resp != nullptr);
    std::vector<double> ws(bytes / 8 + 2, std::nan(""));  // garbage-filled: kernels must not rely on zeros
    const T* x = X ? X->data() : p.X.data();
    gc::em_stats(0, nullptr, dtype_of(T()), p.cov, p.N, p.D, p.K, x, p.lw.data(), p.means.data(), p.prec.data(),
                 p.centres.data(), sw, resp, s.scalars, s.nk.data(), s.s1.data(), s.s2.data(), ws.data(), bytes);
    return s;
}

struct CpuStats {
    Stats st;
    RunInfo info;
    std::vector<double> nk, s1, s2;
};

template <class T>
CpuStats cpu_em_stats(const Problem<T>& p, const std::type_identity_t<T>* sw, const std::type_identity_t<T>* resp, const std::vector<T>* X = nullptr) {
    CpuStats c;
    c.nk.assign(p.K, 0.0);
    c.s1.assign(p.K * p.D, 0.0);
    c.s2.assign(pcount(p.cov, p.K, p.D), 0.0);
    c.st.nk = c.nk.data();
    c.st.s1 = c.s1.data();
    c.st.s2 = c.s2.data();
    Responsibilities<T> r;
    if (resp) {
        r.source = RespSource::Given;
        r.resp = resp;
    }
    Exec ex;
    ex.n_threads = 1;
    c.info = em_stats<T>(X ? X->data() : p.X.data(), p.N, mixture_of(p), r, p.centres.data(), sw, c.st, ex);
    return c;
}

template <class T>
void compare_stats(const std::string& tag, const GpuStats& g, const CpuStats& c, double rtol, bool wsum = true) {
    const double sn = max_abs(c.nk), s1 = max_abs(c.s1), s2 = max_abs(c.s2);
    expect_close(tag + " nk", g.nk.data(), c.nk.data(), int64_t(c.nk.size()), rtol, 1e-300, sn);
    expect_close(tag + " s1", g.s1.data(), c.s1.data(), int64_t(c.s1.size()), rtol, 1e-300, s1);
    expect_close(tag + " s2", g.s2.data(), c.s2.data(), int64_t(c.s2.size()), rtol, 1e-300, s2);
    if (wsum) expect_close(tag + " weight_sum", &g.scalars[1], &c.st.weight_sum, 1, rtol, 1e-300);
}

template <class T>
void run_case(Covariance cov, int64_t N, int64_t D, int64_t K, uint64_t seed, bool heavy) {
    const bool f32 = sizeof(T) == 4;
    // float32: both sides round every operation to float32, in different orders (tiles of
    // 64 rows here, up to 512 on the CPU); float64: only summation order differs.
    const double rtol = f32 ? 2e-4 : 1e-10;
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s %s N=%lld D=%lld K=%lld", cov_name(cov), f32 ? "f32" : "f64", (long long)N,
                  (long long)D, (long long)K);
    const std::string tag(buf);
    Problem<T> p = make_problem<T>(cov, N, D, K, seed);
    const Mixture<T> mix = mixture_of(p);
    Exec ex;
    ex.n_threads = 1;

    // ---- log_prob, all three outputs
    // log_resp = L - lse is a difference of two numbers of magnitude |L| + |lse|, and that
    // is the scale of its rounding error (the far outlier row has L ~ -2000, log_resp ~ -5).
    std::vector<T> L(N * K), lse(N);
    log_prob<T>(p.X.data(), N, mix, LogProbOutput::Weighted, L.data(), ex);
    log_prob<T>(p.X.data(), N, mix, LogProbOutput::Sample, lse.data(), ex);
    const char* names[] = {"sample", "log_resp", "weighted"};
    for (LogProbOutput what : {LogProbOutput::Sample, LogProbOutput::LogResp, LogProbOutput::Weighted}) {
        const int64_t n = what == LogProbOutput::Sample ? N : N * K;
        std::vector<T> want(n), got(n, T(-7));
        log_prob<T>(p.X.data(), N, mix, what, want.data(), ex);
        std::vector<double> scale(n);
        for (int64_t j = 0; j < n; ++j)
            scale[j] = what == LogProbOutput::LogResp
                           ? std::fabs(double(L[j])) + std::fabs(double(lse[j / K])) - std::fabs(double(want[j]))
                           : 0.0;
        const std::size_t bytes = gc::log_prob_workspace_bytes(dtype_of(T()), cov, N, D, K, what);
        std::vector<double> ws(bytes / 8 + 2, std::nan(""));
        gc::log_prob(0, nullptr, dtype_of(T()), cov, N, D, K, p.X.data(), p.lw.data(), p.means.data(),
                     p.prec.data(), what, got.data(), ws.data(), bytes);
        // log-densities of magnitude |L|: the Mahalanobis sums carry ~ D eps |L| of rounding
        const double lp_tol = (f32 ? 1e-6 : 1e-14) * double(D + 10);
        for (int64_t j = 0; j < n; ++j) {  // entry-wise scale: |got - want| <= tol (1 + |want| + scale)
            const double sc = 1.0 + scale[j];
            const double g = double(got[j]), w = double(want[j]);
            if (std::isfinite(w) && std::fabs(g - w) > lp_tol * (sc + std::fabs(w))) {
                std::printf("FAIL %s log_prob %s: [%lld] got %.17g want %.17g\n", tag.c_str(), names[int(what)],
                            (long long)j, g, w);
                ++failures;
                break;
            }
        }
        expect_close(tag + " log_prob " + names[int(what)] + " (non-finite pattern)", got.data(), want.data(), n,
                     1.0, 1e300, 0.0);
    }

    // ---- em_stats: E-step, unweighted and weighted
    for (int weighted = 0; weighted < 2; ++weighted) {
        const T* sw = weighted ? p.sw.data() : nullptr;
        GpuStats g = gpu_em_stats(p, sw, nullptr);
        CpuStats c = cpu_em_stats(p, sw, nullptr);
        const std::string t = tag + (weighted ? " em_stats weighted" : " em_stats");
        compare_stats<T>(t, g, c, rtol);
        expect_close(t + " log_likelihood", &g.scalars[0], &c.st.log_likelihood, 1, f32 ? 2e-5 : 1e-11, 1e-300);
        // determinism: a second run is bit-identical
        GpuStats g2 = gpu_em_stats(p, sw, nullptr);
        expect(std::memcmp(g.scalars, g2.scalars, sizeof g.scalars) == 0 &&
                   std::memcmp(g.nk.data(), g2.nk.data(), g.nk.size() * 8) == 0 &&
                   std::memcmp(g.s1.data(), g2.s1.data(), g.s1.size() * 8) == 0 &&
                   std::memcmp(g.s2.data(), g2.s2.data(), g.s2.size() * 8) == 0,
               t + " deterministic");
    }
    // ---- em_stats: given signed responsibilities (the autograd backward), weighted
    {
        GpuStats g = gpu_em_stats(p, p.sw.data(), p.resp.data());
        CpuStats c = cpu_em_stats(p, p.sw.data(), p.resp.data());
        compare_stats<T>(tag + " em_stats given", g, c, rtol);
        expect(g.scalars[0] == 0.0, tag + " em_stats given: log_likelihood is 0");
        GpuStats g1 = gpu_em_stats(p, nullptr, p.resp.data());
        expect(g1.scalars[1] == double(N), tag + " em_stats given unweighted: weight_sum == N");
    }

    // ---- grad_x: E-step with weights, and given
    for (int given = 0; given < 2; ++given) {
        const T* resp = given ? p.resp.data() : nullptr;
        Responsibilities<T> r;
        if (given) {
            r.source = RespSource::Given;
            r.resp = resp;
        }
        std::vector<T> want(N * D), got(N * D, T(-7));
        log_prob_grad_x<T>(p.X.data(), N, mix, r, p.sw.data(), want.data(), ex);
        const std::size_t bytes = gc::grad_x_workspace_bytes(dtype_of(T()), cov, N, D, K, given);
        std::vector<double> ws(bytes / 8 + 2, std::nan(""));
        gc::grad_x(0, nullptr, dtype_of(T()), cov, N, D, K, p.X.data(), p.lw.data(), p.means.data(), p.prec.data(),
                   p.sw.data(), resp, got.data(), ws.data(), bytes);
        expect_close(tag + (given ? " grad_x given" : " grad_x"), got.data(), want.data(), N * D, f32 ? 5e-4 : 1e-10,
                     1e-300, max_abs(want));
    }

    // ---- finalize from the CPU's float64 statistics
    {
        CpuStats c = cpu_em_stats(p, nullptr, nullptr);
        std::vector<double> cen(p.centres.begin(), p.centres.end());
        const int64_t pc = pcount(cov, K, D);
        const double eps = 10.0 * (f32 ? 1.1920929e-07 : 2.220446049250313e-16);
        for (double reg : {1e-6, 0.0}) {
            std::vector<double> w(K), m(K * D), cv(pc), u(pc), ld(K);
            FinalizeOutput out{w.data(), m.data(), cv.data(), u.data(), ld.data()};
            const int64_t want_failed = gmmfast::finalize(cov, K, D, c.nk.data(), c.s1.data(), c.s2.data(),
                                                          cen.data(), reg, eps, out);
            std::vector<double> gw(K), gm(K * D), gcv(pc), gu(pc), gld(K);
            int64_t failed = -7;
            const std::size_t bytes = gc::finalize_workspace_bytes(cov, K, D);
            std::vector<double> ws(bytes / 8 + 2, std::nan(""));
            gc::finalize(0, nullptr, cov, K, D, c.nk.data(), c.s1.data(), c.s2.data(), cen.data(), reg, eps,
                         gw.data(), gm.data(), gcv.data(), gu.data(), gld.data(), &failed, ws.data(), bytes);
            const std::string t = tag + " finalize reg=" + std::to_string(reg);
            expect(failed == want_failed, t + " failed flag " + std::to_string(failed) + " vs " +
                                              std::to_string(want_failed));
            if (want_failed < 0 && failed < 0) {
                expect_close(t + " weights", gw.data(), w.data(), K, 1e-13, 1e-300);
                expect_close(t + " means", gm.data(), m.data(), K * D, 1e-13, 1e-300, max_abs(m));
                expect_close(t + " covariances", gcv.data(), cv.data(), pc, 1e-12, 1e-300, max_abs(cv));
                expect_close(t + " prec_chol", gu.data(), u.data(), pc, 1e-10, 1e-300, max_abs(u));
                expect_close(t + " log_det", gld.data(), ld.data(), K, 1e-12, 1e-300, 1.0);
            }
        }
        // A singular covariance: one component's statistics collapsed onto its centre.
        if (D >= 2) {
            std::vector<double> nk = c.nk, s1 = c.s1, s2 = c.s2;
            const int64_t bad = K - 1;
            for (int64_t d = 0; d < D; ++d) s1[bad * D + d] = 0.0;
            if (cov == Covariance::Full) {
                for (int64_t e = 0; e < D * D; ++e) s2[bad * D * D + e] = 0.0;
            } else if (cov == Covariance::Tied) {
                for (auto& v : s2) v = 0.0;
                for (auto& v : s1) v = 0.0;
            } else if (cov == Covariance::Diag) {
                for (int64_t d = 0; d < D; ++d) s2[bad * D + d] = 0.0;
            } else {
                s2[bad] = 0.0;
            }
            std::vector<double> w(K), m(K * D), cv(pc), u(pc), ld(K);
            FinalizeOutput out{w.data(), m.data(), cv.data(), u.data(), ld.data()};
            const int64_t want_failed =
                gmmfast::finalize(cov, K, D, nk.data(), s1.data(), s2.data(), cen.data(), 0.0, 0.0, out);
            int64_t failed = -7;
            const std::size_t bytes = gc::finalize_workspace_bytes(cov, K, D);
            std::vector<double> ws(bytes / 8 + 2, std::nan(""));
            gc::finalize(0, nullptr, cov, K, D, nk.data(), s1.data(), s2.data(), cen.data(), 0.0, 0.0, w.data(),
                         m.data(), cv.data(), u.data(), ld.data(), &failed, ws.data(), bytes);
            expect(failed == want_failed && failed >= 0,
                   tag + " finalize singular: failed " + std::to_string(failed) + " vs " + std::to_string(want_failed));
        }
    }

    // ---- non-finite rows: NaN in log_prob; statistics without the row, log-likelihood NaN
    if (N >= 3 && heavy) {
        std::vector<T> X = p.X;
        X[1 * D + (D - 1)] = T(NAN);
        std::vector<T> out(N, T(0));
        const std::size_t bytes = gc::log_prob_workspace_bytes(dtype_of(T()), cov, N, D, K, LogProbOutput::Sample);
        std::vector<double> ws(bytes / 8 + 2, std::nan(""));
        gc::log_prob(0, nullptr, dtype_of(T()), cov, N, D, K, X.data(), p.lw.data(), p.means.data(), p.prec.data(),
                     LogProbOutput::Sample, out.data(), ws.data(), bytes);
        expect(std::isnan(double(out[1])) && std::isfinite(double(out[0])), tag + " NaN row -> NaN log_prob");
        GpuStats g = gpu_em_stats(p, nullptr, nullptr, &X);
        CpuStats c = cpu_em_stats(p, nullptr, nullptr, &X);
        expect(c.info.first_bad_row == 1, tag + " CPU reports the NaN row");
        expect(std::isnan(g.scalars[0]), tag + " NaN row -> NaN log_likelihood");
        // The row adds nothing: compare with the CPU on the other rows. (The CPU's own
        // diag/spherical/tied M-step multiplies r = 0 by NaN there, so it cannot serve.)
        Problem<T> q = p;
        q.X.erase(q.X.begin() + D, q.X.begin() + 2 * D);
        q.N = N - 1;
        CpuStats c1 = cpu_em_stats(q, nullptr, nullptr);
        compare_stats<T>(tag + " NaN row em_stats", g, c1, rtol, false);
        expect(g.scalars[1] == double(N), tag + " NaN row: weight_sum counts the row");
    }
}

template <class T>
void run_empty(Covariance cov) {
    // N = 0: zero statistics, nothing launched on the rows, no error.
    Problem<T> p = make_problem<T>(cov, 0, 3, 2, 1);
    GpuStats g = gpu_em_stats(p, nullptr, nullptr);
    bool zero = g.scalars[0] == 0.0 && g.scalars[1] == 0.0;
    for (double v : g.nk) zero = zero && v == 0.0;
    for (double v : g.s1) zero = zero && v == 0.0;
    for (double v : g.s2) zero = zero && v == 0.0;
    expect(zero, std::string("N=0 em_stats zeros ") + cov_name(cov));
}

}  // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    struct Shape {
        int64_t N, D, K;
        bool heavy;
    };
    std::vector<Shape> shapes;
    if (quick) {
        // ThreadSanitizer: few rows (it is slow), every code path: partial row tiles, D > 64
        // (several column / S2 tiles, grad_x column tiles), K > 64 (component groups).
        shapes = {{65, 2, 3, true}, {66, 70, 2, true}, {67, 3, 70, true}};
    } else {
        shapes = {
            {1, 1, 1, false}, {1, 3, 2, false}, {65, 2, 3, true}, {200, 5, 4, true},
            {130, 70, 3, true},   // D > 64: several column tiles, upper-triangular S2 tiles
            {150, 3, 70, true},   // K > 64: several component groups, a partial last group
            {300, 1, 1, true},
            {64 * 3 + 7, 65, 2, false},  // D just past a column tile
            {64 * 9 + 1, 3, 5, false},   // several row tiles per chunk (see run_emulation.sh)
        };
    }
    uint64_t seed = 1;
    for (const Shape& s : shapes)
        for (Covariance cov : {Covariance::Full, Covariance::Tied, Covariance::Diag, Covariance::Spherical}) {
            if (quick && s.K > 64 && cov == Covariance::Full) continue;  // the same code as K <= 64, slowly
            run_case<double>(cov, s.N, s.D, s.K, seed, s.heavy);
            run_case<float>(cov, s.N, s.D, s.K, seed, s.heavy);
            ++seed;
            std::printf("done %s N=%lld D=%lld K=%lld (%d checks, %d failures)\n", cov_name(cov), (long long)s.N,
                        (long long)s.D, (long long)s.K, checks, failures);
            std::fflush(stdout);
        }
    for (Covariance cov : {Covariance::Full, Covariance::Tied, Covariance::Diag, Covariance::Spherical}) {
        run_empty<float>(cov);
        run_empty<double>(cov);
    }
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
