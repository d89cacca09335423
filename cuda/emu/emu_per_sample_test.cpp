// Runs the per-sample mixture kernels of cuda/per_sample.cu in the host emulation
// (cuda_runtime.h here) and compares them with the C++ kernels of cpp/per_sample*.cpp:
// every form (isotropic, diag, full, correlated2d) x mode (joint, per_dim) x dtype x
// mapping (one thread / one warp per row) x mask (none / every third row masked, with
// NaN parameters) x responsibilities (saved / recomputed) x grad_y (wanted / not), on
// rows with special values (a far outlier, a NaN target, a row whose components all
// underflow, an invalid scale, a component of weight 0).
//
// Checks: values against the CPU within tolerances derived from the arithmetic (below);
// the same non-finite pattern as the CPU; masked rows exactly 0 in every output;
// bit-identical results with and without saved responsibilities (forward and backward)
// and on a rerun; every output entry written (outputs start as NaN garbage); the
// workspace of exactly per_sample_workspace_bytes, garbage-filled.
//
// Build and run: cuda/emu/run_per_sample_emulation.sh (ASan+UBSan, then
// ThreadSanitizer --quick). Exit status 0 when everything matches.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "gmmfast/per_sample.hpp"
#include "gmmfast_cuda.hpp"

using namespace gmmfast;
namespace gc = gmmfast::cuda;

namespace {

int failures = 0;
int checks = 0;

void fail(const std::string& what) {
    if (failures < 60) std::printf("FAIL %s\n", what.c_str());
    ++failures;
}

void expect(bool ok, const std::string& what) {
    ++checks;
    if (!ok) fail(what);
}

struct Kind {
    ScaleForm form;
    MixtureMode mode;
    const char* name;
};

const Kind kKinds[] = {
    {ScaleForm::Isotropic, MixtureMode::Joint, "isotropic"},
    {ScaleForm::Diag, MixtureMode::Joint, "diag"},
    {ScaleForm::Full, MixtureMode::Joint, "full"},
    {ScaleForm::Correlated2D, MixtureMode::Joint, "correlated2d"},
    {ScaleForm::Diag, MixtureMode::PerDim, "per_dim"},
    {ScaleForm::Isotropic, MixtureMode::PerDim, "per_dim(isotropic)"},
};

int64_t scale_size(const Kind& k, int64_t K, int64_t D) {
    if (k.mode == MixtureMode::PerDim) return D * K;
    switch (k.form) {
        case ScaleForm::Isotropic: return K;
        case ScaleForm::Diag: return K * D;
        case ScaleForm::Full: return K * D * D;
        default: return 2 * K;
    }
}

template <class T>
struct Problem {
    Kind kind;
    int64_t B, K, D;
    std::vector<T> y, logits, means, scale, rho, grad;
    std::vector<uint8_t> mask;  // empty: no mask
    int64_t rsize() const { return kind.mode == MixtureMode::PerDim ? D * K : K; }
    PerSampleMixture<T> view() const {
        PerSampleMixture<T> m;
        m.B = B;
        m.K = K;
        m.D = D;
        m.form = kind.form;
        m.mode = kind.mode;
        m.logits = logits.data();
        m.means = means.data();
        m.scale = scale.data();
        m.rho = kind.form == ScaleForm::Correlated2D ? rho.data() : nullptr;
        m.mask = mask.empty() ? nullptr : mask.data();
        return m;
    }
};

template <class T>
Problem<T> make_problem(const Kind& kind, int64_t B, int64_t K, int64_t D, bool masked, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::uniform_real_distribution<double> unif(0.0, 1.0);
    const T nan = T(NAN);
    const bool per_dim = kind.mode == MixtureMode::PerDim;
    Problem<T> p{kind, B, K, D, {}, {}, {}, {}, {}, {}, {}};
    std::vector<double> y(B * D);
    for (auto& v : y) v = normal(rng) + 3.0;
    for (double v : y) p.y.push_back(T(v));
    p.logits.resize(B * p.rsize());
    for (auto& v : p.logits) v = T(normal(rng));
    p.means.resize(B * K * D);
    for (int64_t i = 0; i < B; ++i)
        for (int64_t k = 0; k < K; ++k)
            for (int64_t d = 0; d < D; ++d) {
                const int64_t j = per_dim ? (i * D + d) * K + k : (i * K + k) * D + d;
                p.means[j] = T(y[i * D + d] + normal(rng));
            }
    const int64_t ns = scale_size(kind, K, D);
    p.scale.resize(B * ns);
    if (kind.form == ScaleForm::Full && !per_dim) {
        for (int64_t i = 0; i < B * K; ++i)
            for (int64_t a = 0; a < D; ++a)
                for (int64_t b = 0; b < D; ++b) {
                    T& v = p.scale[(i * D + a) * D + b];
                    // entries above the diagonal are never read: NaN
                    v = a == b ? T(0.5 + unif(rng)) : a > b ? T(0.4 * normal(rng)) : nan;
                }
    } else {
        for (auto& v : p.scale) v = T(0.5 + unif(rng));
    }
    if (kind.form == ScaleForm::Correlated2D && !per_dim) {
        p.rho.resize(B * K);
        for (auto& v : p.rho) v = T(1.8 * unif(rng) - 0.9);
    }
    p.grad.resize(B);
    for (auto& v : p.grad) v = T(normal(rng));
    // special rows (each only when B is large enough to keep ordinary rows around them)
    const bool f32 = sizeof(T) == 4;
    if (B > 8) {
        if (per_dim) p.logits[1 * D * K + 0] = -INFINITY;
        else p.logits[1 * K + 0] = -INFINITY;                         // row 1: a component of weight 0
        p.y[2 * D + 0] += T(40);                                     // row 2: far outlier, tiny densities
        p.y[3 * D + (D - 1)] = nan;                                  // row 3: NaN target -> NaN
        p.y[4 * D + 0] = T(f32 ? 1e30 : 1e200);                      // row 4: every density underflows: -inf
        p.scale[5 * ns + ns - 1] = T(-1);                            // row 5: invalid scale -> NaN
        if (kind.form == ScaleForm::Correlated2D && !per_dim) p.rho[6 * K] = T(1);  // row 6: |ρ| = 1
    }
    if (masked) {
        p.mask.resize(B);
        for (int64_t i = 0; i < B; ++i) p.mask[i] = (i % 3 != 1) ? uint8_t(1 + i % 2) : uint8_t(0);
        for (int64_t i = 0; i < B; ++i) {
            if (p.mask[i]) continue;  // masked rows: every parameter NaN, must not leak
            for (int64_t d = 0; d < D; ++d) p.y[i * D + d] = nan;
            for (int64_t j = 0; j < p.rsize(); ++j) p.logits[i * p.rsize() + j] = nan;
            for (int64_t j = 0; j < K * D; ++j) p.means[i * K * D + j] = nan;
            for (int64_t j = 0; j < ns; ++j) p.scale[i * ns + j] = nan;
            if (!p.rho.empty())
                for (int64_t k = 0; k < K; ++k) p.rho[i * K + k] = nan;
            p.grad[i] = nan;
        }
    }
    return p;
}

gc::DType dtype_of(float) { return gc::DType::Float32; }
gc::DType dtype_of(double) { return gc::DType::Float64; }

bool same_bits(const void* a, const void* b, std::size_t n) { return n == 0 || std::memcmp(a, b, n) == 0; }

/// Entry-wise |got - want| <= tol * (scale_i + |want|) with scale_i the row's largest
/// finite |want| (rows of `stride` entries), NaN / inf exactly where the CPU has them.
template <class T>
void expect_close(const std::string& what, const std::vector<T>& got, const std::vector<T>& want, int64_t stride,
                  double tol, const std::vector<T>* row_scale = nullptr) {
    ++checks;
    if (got.size() != want.size()) return fail(what + ": sizes differ");
    const int64_t n = int64_t(want.size());
    double worst = 0.0;
    int64_t worst_j = -1;
    for (int64_t r0 = 0; r0 < n; r0 += stride) {
        double sc = 0.0;
        for (int64_t j = r0; j < r0 + stride; ++j)
            if (std::isfinite(double(want[j]))) sc = std::fmax(sc, std::fabs(double(want[j])));
        if (row_scale) {
            const double extra = double((*row_scale)[r0 / stride]);
            if (std::isfinite(extra)) sc = std::fmax(sc, 1.0 + std::fabs(extra));
        }
        for (int64_t j = r0; j < r0 + stride; ++j) {
            const double g = double(got[j]), w = double(want[j]);
            if (std::isnan(w) || std::isnan(g) || std::isinf(w) || std::isinf(g)) {
                if (!(std::isnan(w) && std::isnan(g)) && g != w) {
                    char buf[160];
                    std::snprintf(buf, sizeof buf, ": [%lld] got %.17g want %.17g (non-finite pattern)", (long long)j,
                                  g, w);
                    return fail(what + buf);
                }
                continue;
            }
            const double err = std::fabs(g - w) / (tol * (sc + std::fabs(w)) + 1e-300);
            if (err > worst) {
                worst = err;
                worst_j = j;
            }
        }
    }
    if (worst > 1.0) {
        char buf[200];
        std::snprintf(buf, sizeof buf, ": [%lld] got %.17g want %.17g (error %.3g x tolerance)", (long long)worst_j,
                      double(got[worst_j]), double(want[worst_j]), worst);
        fail(what + buf);
    }
}

template <class T>
void gpu_forward(const Problem<T>& p, int lanes, std::vector<T>& out, std::type_identity_t<std::vector<T>>* resp) {
    out.assign(p.B, T(NAN));
    if (resp) resp->assign(p.B * p.rsize(), T(NAN));
    const std::size_t bytes =
        gc::per_sample_workspace_bytes(dtype_of(T()), p.kind.form, p.kind.mode, p.B, p.K, p.D, false, lanes);
    std::vector<double> ws(bytes / 8, std::nan(""));
    gc::per_sample_log_prob(0, nullptr, dtype_of(T()), p.kind.form, p.kind.mode, p.B, p.K, p.D, p.y.data(),
                            p.logits.data(), p.means.data(), p.scale.data(), p.rho.empty() ? nullptr : p.rho.data(),
                            p.mask.empty() ? nullptr : p.mask.data(), out.data(), resp ? resp->data() : nullptr,
                            bytes ? ws.data() : nullptr, bytes, lanes);
}

template <class T>
struct Grads {
    std::vector<T> gy, gl, gm, gs, gr;
};

template <class T>
Grads<T> gpu_backward(const Problem<T>& p, int lanes, const std::type_identity_t<std::vector<T>>* resp, bool need_y) {
    Grads<T> g;
    const bool corr = p.kind.form == ScaleForm::Correlated2D && p.kind.mode == MixtureMode::Joint;
    if (need_y) g.gy.assign(p.B * p.D, T(NAN));
    g.gl.assign(p.logits.size(), T(NAN));
    g.gm.assign(p.means.size(), T(NAN));
    g.gs.assign(p.scale.size(), T(NAN));
    if (corr) g.gr.assign(p.rho.size(), T(NAN));
    const std::size_t bytes =
        gc::per_sample_workspace_bytes(dtype_of(T()), p.kind.form, p.kind.mode, p.B, p.K, p.D, true, lanes);
    std::vector<double> ws(bytes / 8, std::nan(""));
    gc::per_sample_log_prob_backward(0, nullptr, dtype_of(T()), p.kind.form, p.kind.mode, p.B, p.K, p.D,
                                     p.grad.data(), resp ? resp->data() : nullptr, p.y.data(), p.logits.data(),
                                     p.means.data(), p.scale.data(), p.rho.empty() ? nullptr : p.rho.data(),
                                     p.mask.empty() ? nullptr : p.mask.data(), need_y ? g.gy.data() : nullptr,
                                     g.gl.data(), g.gm.data(), g.gs.data(), corr ? g.gr.data() : nullptr,
                                     bytes ? ws.data() : nullptr, bytes, lanes);
    return g;
}

template <class T>
Grads<T> cpu_backward(const Problem<T>& p, const std::vector<T>& resp) {
    Grads<T> g;
    const bool corr = p.kind.form == ScaleForm::Correlated2D && p.kind.mode == MixtureMode::Joint;
    g.gy.assign(p.B * p.D, T(0));
    g.gl.assign(p.logits.size(), T(0));
    g.gm.assign(p.means.size(), T(0));
    g.gs.assign(p.scale.size(), T(0));
    if (corr) g.gr.assign(p.rho.size(), T(0));
    Exec ex;
    ex.n_threads = 1;
    per_sample_log_prob_backward<T>(p.grad.data(), resp.data(), p.y.data(), p.view(), g.gy.data(), g.gl.data(),
                                    g.gm.data(), g.gs.data(), corr ? g.gr.data() : nullptr, ex);
    return g;
}

template <class T>
bool grads_identical(const Grads<T>& a, const Grads<T>& b) {
    auto eq = [](const std::vector<T>& x, const std::vector<T>& y) {
        return x.size() == y.size() && same_bits(x.data(), y.data(), x.size() * sizeof(T));
    };
    return eq(a.gy, b.gy) && eq(a.gl, b.gl) && eq(a.gm, b.gm) && eq(a.gs, b.gs) && eq(a.gr, b.gr);
}

template <class T>
void run_case(const Kind& kind, int64_t B, int64_t K, int64_t D, bool masked, uint64_t seed) {
    const bool f32 = sizeof(T) == 4;
    const bool per_dim = kind.mode == MixtureMode::PerDim;
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s %s B=%lld K=%lld D=%lld%s", kind.name, f32 ? "f32" : "f64", (long long)B,
                  (long long)K, (long long)D, masked ? " masked" : "");
    const std::string tag(buf);
    Problem<T> p = make_problem<T>(kind, B, K, D, masked, seed);
    const int64_t rs = p.rsize();

    // CPU reference
    std::vector<T> cpu_out(B), cpu_resp(B * rs);
    Exec ex;
    ex.n_threads = 1;
    per_sample_log_prob<T>(p.y.data(), p.view(), cpu_out.data(), cpu_resp.data(), ex);
    const Grads<T> cpu_g = cpu_backward(p, cpu_resp);

    // Tolerances. The GPU evaluates the CPU's expressions in the CPU's order, except the
    // log-sum-exp (online vs max-first), exp/log (libm vs the CPU's polynomials, both
    // within ~1 ulp) and, for one warp per row, the order of the lane reductions. So:
    // a log-density is a D-term sum of magnitude |L| -> ~(D + 10) eps (1 + |L|); a
    // responsibility then errs by r |δL|, on the row's scale 1 + |log p|; gradients are
    // products of those with a few well-conditioned factors (|ρ| <= 0.9, diag(L) >= 0.5)
    // -> the same relative error times a small constant, on the row's largest entry.
    const double eps = f32 ? 1.1920929e-07 : 2.220446049250313e-16;
    const double lp_tol = 10.0 * double(D + 10) * eps;
    const double grad_tol = 100.0 * double(D + 10) * eps;

    for (int lanes : {1, 32}) {
        const std::string t = tag + (lanes == 1 ? " thread/row" : " warp/row");
        std::vector<T> out, resp, out_nr;
        gpu_forward(p, lanes, out, &resp);
        gpu_forward(p, lanes, out_nr, nullptr);
        // |log p| sums terms of magnitude |L|: the far row's L ~ -800 is its own scale
        std::vector<T> unit(B, T(1));
        expect_close(t + " log_prob", out, cpu_out, 1, lp_tol, &unit);
        expect_close(t + " resp", resp, cpu_resp, rs, lp_tol, &cpu_out);
        expect(same_bits(out.data(), out_nr.data(), B * sizeof(T)), t + " log_prob without resp: identical bits");
        if (lanes == 1) {
            std::vector<T> again;
            gpu_forward(p, lanes, again, nullptr);
            expect(same_bits(out.data(), again.data(), B * sizeof(T)), t + " rerun: identical bits");
        }
        // the special rows: the CPU's semantics, checked explicitly
        if (B > 8) {
            expect(std::isnan(double(out[3])) || (masked && !p.mask[3]), t + " NaN target -> NaN");
            expect(double(out[4]) == -INFINITY || (masked && !p.mask[4]), t + " underflowing row -> -inf");
            if (!masked || p.mask[4]) {
                bool zero = true;  // per_dim: only feature 0's mixture underflows
                for (int64_t j = 0; j < (per_dim ? K : rs); ++j) zero = zero && resp[4 * rs + j] == T(0);
                expect(zero, t + " underflowing row -> zero responsibilities");
            }
            expect(std::isnan(double(out[5])) || (masked && !p.mask[5]), t + " invalid scale -> NaN");
        }
        if (masked)
            for (int64_t i = 0; i < B; ++i) {
                if (p.mask[i]) continue;
                bool zero = out[i] == T(0);
                for (int64_t j = 0; j < rs; ++j) zero = zero && resp[i * rs + j] == T(0);
                if (!zero) {
                    fail(t + " masked row " + std::to_string(i) + " not zero");
                    break;
                }
            }

        // backward: saved (GPU's own), recomputed, CPU-saved; with and without grad_y
        const Grads<T> g_saved = gpu_backward(p, lanes, &resp, true);
        const Grads<T> g_recomp = gpu_backward(p, lanes, nullptr, true);
        const Grads<T> g_cpu_resp = gpu_backward(p, lanes, &cpu_resp, true);
        const Grads<T> g_no_y = gpu_backward(p, lanes, nullptr, false);
        expect(grads_identical(g_saved, g_recomp), t + " backward: recomputed == saved responsibilities (bits)");
        Grads<T> g_no_y_ref = g_recomp;
        g_no_y_ref.gy.clear();
        expect(grads_identical(g_no_y, g_no_y_ref), t + " backward without grad_y: identical bits");
        for (const Grads<T>* g : {&g_saved, &g_cpu_resp}) {
            const std::string u = t + (g == &g_saved ? " backward" : " backward (CPU resp)");
            expect_close(u + " grad_y", g->gy, cpu_g.gy, D, grad_tol, &cpu_out);
            expect_close(u + " grad_logits", g->gl, cpu_g.gl, rs, grad_tol, &cpu_out);
            expect_close(u + " grad_means", g->gm, cpu_g.gm, K * D, grad_tol, &cpu_out);
            expect_close(u + " grad_scale", g->gs, cpu_g.gs, scale_size(kind, K, D), grad_tol, &cpu_out);
            if (!g->gr.empty()) expect_close(u + " grad_rho", g->gr, cpu_g.gr, K, grad_tol, &cpu_out);
        }
        if (masked) {
            const int64_t ns = scale_size(kind, K, D);
            for (int64_t i = 0; i < B; ++i) {
                if (p.mask[i]) continue;
                bool zero = true;
                for (int64_t d = 0; d < D; ++d) zero = zero && g_saved.gy[i * D + d] == T(0);
                for (int64_t j = 0; j < rs; ++j) zero = zero && g_saved.gl[i * rs + j] == T(0);
                for (int64_t j = 0; j < K * D; ++j) zero = zero && g_saved.gm[i * K * D + j] == T(0);
                for (int64_t j = 0; j < ns; ++j) zero = zero && g_saved.gs[i * ns + j] == T(0);
                for (int64_t k = 0; k < int64_t(g_saved.gr.size() ? K : 0); ++k)
                    zero = zero && g_saved.gr[i * K + k] == T(0);
                if (!zero) {
                    fail(t + " masked row " + std::to_string(i) + " has nonzero gradients");
                    break;
                }
            }
        }
    }
}

template <class T>
void run_empty(const Kind& kind) {
    // B = 0: nothing launched, no error, nothing written.
    std::vector<T> none;
    gc::per_sample_log_prob(0, nullptr, dtype_of(T()), kind.form, kind.mode, 0, 3, 2, nullptr, nullptr, nullptr,
                            nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0, 0);
    gc::per_sample_log_prob_backward(0, nullptr, dtype_of(T()), kind.form, kind.mode, 0, 3, 2, nullptr, nullptr,
                                     nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                     nullptr, nullptr, nullptr, 0, 0);
    expect(gc::per_sample_workspace_bytes(dtype_of(T()), kind.form, kind.mode, 0, 3, 2, true, 0) == 0,
           std::string(kind.name) + " B=0: no workspace");
}

void run_argument_errors() {
    auto throws = [](auto&& f) {
        try {
            f();
        } catch (const std::invalid_argument&) {
            return true;
        }
        return false;
    };
    auto bytes = [](gc::DType dt, ScaleForm form, MixtureMode mode, int64_t K, int64_t D, int lanes) {
        return gc::per_sample_workspace_bytes(dt, form, mode, 4, K, D, false, lanes);
    };
    const auto F32 = gc::DType::Float32;
    expect(throws([&] { bytes(F32, ScaleForm::Diag, MixtureMode::Joint, 2, 2, 7); }), "lanes_per_row = 7 rejected");
    expect(throws([&] { bytes(F32, ScaleForm::Full, MixtureMode::PerDim, 2, 2, 0); }), "per_dim + full rejected");
    expect(throws([&] { bytes(F32, ScaleForm::Correlated2D, MixtureMode::Joint, 2, 3, 0); }),
           "correlated2d with D = 3 rejected");
    expect(throws([&] { bytes(gc::DType::Float64, ScaleForm::Diag, MixtureMode::Joint, 0, 2, 0); }), "K = 0 rejected");
    float x[64] = {};
    expect(throws([&] {
               gc::per_sample_log_prob(0, nullptr, gc::DType::Float32, ScaleForm::Diag, MixtureMode::Joint, 2, 2, 2, x,
                                       x, nullptr, x, nullptr, nullptr, x, nullptr, nullptr, 0, 0);
           }),
           "null means rejected");
    const std::size_t need =
        gc::per_sample_workspace_bytes(gc::DType::Float32, ScaleForm::Full, MixtureMode::Joint, 2, 2, 2, false, 0);
    expect(need > 0, "full needs a workspace");
    expect(throws([&] {
               gc::per_sample_log_prob(0, nullptr, gc::DType::Float32, ScaleForm::Full, MixtureMode::Joint, 2, 2, 2, x,
                                       x, x, x, nullptr, nullptr, x, nullptr, x, need - 1, 0);
           }),
           "small workspace rejected");
}

}  // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    struct Shape {
        int64_t B, K, D;
    };
    // K >= 16 / per_dim D >= 16 takes the warp path automatically; both paths run on all.
    std::vector<Shape> shapes;
    if (quick) {
        shapes = {{11, 3, 2}, {20, 33, 3}};
    } else {
        shapes = {
            {1, 1, 1},     // the smallest problem
            {11, 3, 4},    // few components: idle lanes in the warp path
            {40, 17, 3},   // K > 16: one partial second round of lanes
            {37, 33, 2},   // K > 32: two rounds per lane, second partial
            {12, 2, 35},   // D > 32: per_dim lanes loop twice
            {600, 4, 2},   // more rows than the capped grid's threads (see the script)
        };
    }
    uint64_t seed = 1;
    for (const Shape& s : shapes)
        for (const Kind& kind : kKinds) {
            const int64_t D = kind.form == ScaleForm::Correlated2D && kind.mode == MixtureMode::Joint ? 2 : s.D;
            // per_dim(isotropic) runs per_dim's kernel: once is enough
            if (kind.mode == MixtureMode::PerDim && kind.form == ScaleForm::Isotropic && s.B != 40) continue;
            for (int masked = 0; masked < 2; ++masked) {
                if (s.B < 3 && masked) continue;
                run_case<double>(kind, s.B, s.K, D, masked != 0, seed);
                run_case<float>(kind, s.B, s.K, D, masked != 0, seed);
                ++seed;
            }
            std::printf("done %s B=%lld K=%lld D=%lld (%d checks, %d failures)\n", kind.name, (long long)s.B,
                        (long long)s.K, (long long)D, checks, failures);
            std::fflush(stdout);
        }
    for (const Kind& kind : kKinds) {
        run_empty<float>(kind);
        run_empty<double>(kind);
    }
    run_argument_errors();
    std::printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
