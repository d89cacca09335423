// The per-sample mixture kernels (gmmfast/per_sample.hpp), written once and compiled once
// per instruction set, like arch/kernels.inl: per_sample_<isa>.cpp defines
//   GMMFAST_ISA_NS   namespace of this variant (isa_baseline, isa_avx2, isa_avx512)
//   GMMFAST_VBYTES   SIMD register width in bytes (16, 32, 64)
// and includes this file.
//
// Every row of a per-sample mixture has its own parameters, so there is no reuse across
// rows to block for (unlike the shared-mixture kernels): the work is a stream over the
// parameters, and the kernels are organised to touch each parameter once per pass and to
// keep every intermediate in a per-thread row scratch (a few K * D values, in L1).
// Within a row the elementwise work (residuals, logarithms, gradients) is vectorised over
// the contiguous K * D parameters; the per-component reductions and the log-sum-exp over
// K follow. Rows are independent, so results do not depend on the thread count.
#if !defined(GMMFAST_ISA_NS) || !defined(GMMFAST_VBYTES)
#error "define GMMFAST_ISA_NS and GMMFAST_VBYTES before including per_sample_kernels.inl"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gmmfast/per_sample.hpp"
#include "gmmfast/runtime.hpp"

namespace gmmfast {
namespace GMMFAST_ISA_NS {
namespace ps_detail {

constexpr int kVBytes = GMMFAST_VBYTES;

template <class T>
struct Simd;
template <>
struct Simd<double> {
    typedef double V __attribute__((vector_size(kVBytes)));
    typedef int64_t I __attribute__((vector_size(kVBytes)));
    typedef int64_t S;
    static constexpr int W = kVBytes / 8;
};
template <>
struct Simd<float> {
    typedef float V __attribute__((vector_size(kVBytes)));
    typedef int32_t I __attribute__((vector_size(kVBytes)));
    typedef int32_t S;
    static constexpr int W = kVBytes / 4;
};

template <class T>
using Vec = typename Simd<T>::V;
template <class T>
constexpr int lanes() {
    return Simd<T>::W;
}

template <class T>
inline Vec<T> vload(const T* p) {
    Vec<T> v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
template <class T>
inline void vstore(T* p, const Vec<T>& v) {
    std::memcpy(p, &v, sizeof(v));
}
template <class T>
inline Vec<T> vsplat(T x) {
    return Vec<T>{} + x;
}
/// Horizontal sum in a fixed lane order.
template <class T>
inline T hsum(const Vec<T>& v) {
    T s = v[0];
    for (int i = 1; i < lanes<T>(); ++i) s += v[i];
    return s;
}

// ---------------------------------------------------------------------------------------
// e^x for x <= 0 (log-sum-exp arguments): the same algorithm and constants as
// vexp_nonpos in arch/kernels.inl (Cody-Waite reduction, Taylor polynomial, exponent
// bits; flushed to 0 below the normal range; NaN propagates).
template <class T>
struct ExpConst;
template <>
struct ExpConst<double> {
    static constexpr double shifter = 0x1.8p52, log2e = 1.4426950408889634;
    static constexpr double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    static constexpr double flush = -707.0;
    static constexpr int mantissa = 52, degree = 13;
};
template <>
struct ExpConst<float> {
    static constexpr float shifter = 0x1.8p23f, log2e = 1.44269504088896341f;
    static constexpr float ln2hi = 0.693359375f, ln2lo = -2.12194440e-4f;
    static constexpr float flush = -86.0f;
    static constexpr int mantissa = 23, degree = 7;
};
constexpr double kInvFactorial[14] = {1.0,
                                      1.0,
                                      1.0 / 2,
                                      1.0 / 6,
                                      1.0 / 24,
                                      1.0 / 120,
                                      1.0 / 720,
                                      1.0 / 5040,
                                      1.0 / 40320,
                                      1.0 / 362880,
                                      1.0 / 3628800,
                                      1.0 / 39916800,
                                      1.0 / 479001600,
                                      1.0 / 6227020800.0};

template <class T>
inline Vec<T> vexp_nonpos(Vec<T> x) {
    using C = ExpConst<T>;
    using V = Vec<T>;
    using I = typename Simd<T>::I;
    const V shifter = vsplat<T>(C::shifter);
    const V t = x * C::log2e + shifter;
    const V n = t - shifter;
    V r = x - n * C::ln2hi;
    r = r - n * C::ln2lo;
    V p = vsplat<T>(T(kInvFactorial[C::degree]));
    for (int j = C::degree - 1; j >= 0; --j) p = p * r + T(kInvFactorial[j]);
    const I bits = (I)p + (((I)t - (I)shifter) << C::mantissa);
    V y = (V)bits;
    y = (x < vsplat<T>(C::flush)) ? vsplat<T>(T(0)) : y;
    y = (x != x) ? x : y;
    return y;
}

// ---------------------------------------------------------------------------------------
// log x for the scale parameters (one per parameter: libm's log does not vectorise
// without -ffast-math). x = 2^e · m with m in [√½, √2), log m = 2 atanh(f) with
// f = (m - 1)/(m + 1), |f| <= 0.1716, by its odd series (11 terms in double, 5 in float:
// truncation below 1e-18 / 1e-9 relative), and e·ln 2 added in two parts (exact product).
// Subnormals are scaled into the normal range first; log 0 = -inf, log(x < 0) = NaN,
// log inf = inf, NaN propagates.
template <class T>
struct LogConst;
template <>
struct LogConst<double> {
    static constexpr double min_normal = 2.2250738585072014e-308, subnormal_scale = 0x1p54;
    static constexpr int64_t subnormal_shift = 54, bias = 1023, exp_mask = 0x7ff;
    static constexpr double int_shifter = 0x1.8p52;
    static constexpr int mantissa = 52, terms = 11;
};
template <>
struct LogConst<float> {
    static constexpr float min_normal = 1.17549435e-38f, subnormal_scale = 0x1p25f;
    static constexpr int32_t subnormal_shift = 25, bias = 127, exp_mask = 0xff;
    static constexpr float int_shifter = 0x1.8p23f;
    static constexpr int mantissa = 23, terms = 5;
};
constexpr double kInvOdd[11] = {1.0,      1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9, 1.0 / 11,
                                1.0 / 13, 1.0 / 15, 1.0 / 17, 1.0 / 19, 1.0 / 21};

template <class T>
inline Vec<T> vlog(Vec<T> x) {
    using C = LogConst<T>;
    using E = ExpConst<T>;
    using V = Vec<T>;
    using I = typename Simd<T>::I;
    using S = typename Simd<T>::S;
    const I sub = x < vsplat<T>(C::min_normal);
    const V xs = sub ? x * C::subnormal_scale : x;
    const I bits = (I)xs;
    I e = ((bits >> C::mantissa) & S(C::exp_mask)) - S(C::bias);
    e = sub ? e - S(C::subnormal_shift) : e;
    const I mant_mask = I{} + ((S(1) << C::mantissa) - 1);
    V m = (V)((bits & mant_mask) | (I{} + (S(C::bias) << C::mantissa)));  // in [1, 2)
    const I big = m > vsplat<T>(T(1.4142135623730951));
    m = big ? m * T(0.5) : m;
    e = e - big;  // big is -1 where true
    const V f = (m - T(1)) / (m + T(1));
    const V f2 = f * f;
    V p = vsplat<T>(T(kInvOdd[C::terms - 1]));
    for (int j = C::terms - 2; j >= 0; --j) p = p * f2 + T(kInvOdd[j]);
    // exact int -> float: add the exponent to the bits of 1.5·2^mantissa and subtract it
    const V shifter = vsplat<T>(C::int_shifter);
    const V ef = (V)(e + (I)shifter) - shifter;
    V r = ef * E::ln2hi + (T(2) * f * p + ef * E::ln2lo);
    const T inf = std::numeric_limits<T>::infinity();
    r = (x == vsplat<T>(T(0))) ? vsplat<T>(-inf) : r;
    r = (x < vsplat<T>(T(0))) ? vsplat<T>(std::numeric_limits<T>::quiet_NaN()) : r;
    r = (x == vsplat<T>(inf)) ? x : r;
    r = (x != x) ? x : r;
    return r;
}

// ---------------------------------------------------------------------------------------
// One loop body for the vector part and the scalar tail: body(tag, j) reads with ld(tag, p)
// and writes with st(tag, p, v); the special functions are overloaded on the value type.
struct VecTag {};
struct ScalarTag {};

template <class T>
inline Vec<T> ld(VecTag, const T* p) {
    return vload(p);
}
template <class T>
inline T ld(ScalarTag, const T* p) {
    return *p;
}
template <class T>
inline Vec<T> bc(VecTag, T x) {
    return vsplat<T>(x);
}
template <class T>
inline T bc(ScalarTag, T x) {
    return x;
}
template <class T>
inline void st(VecTag, T* p, const Vec<T>& v) {
    vstore(p, v);
}
template <class T>
inline void st(ScalarTag, T* p, T v) {
    *p = v;
}
inline Vec<float> lg(const Vec<float>& v) { return vlog<float>(v); }
inline Vec<double> lg(const Vec<double>& v) { return vlog<double>(v); }
inline float lg(float v) { return std::log(v); }
inline double lg(double v) { return std::log(v); }

template <class T, class F>
inline void vloop(int64_t n, F&& body) {
    constexpr int W = lanes<T>();
    int64_t j = 0;
    for (; j + W <= n; j += W) body(VecTag{}, j);
    for (; j < n; ++j) body(ScalarTag{}, j);
}

/// dst[k * D + d] = src[d] for k < K.
template <class T>
inline void tile_row(const T* src, int64_t D, int64_t K, T* dst) {
    for (int64_t k = 0; k < K; ++k) std::memcpy(dst + k * D, src, sizeof(T) * D);
}

/// dst[k * D + d] = src[k] for d < D.
template <class T>
inline void repeat_each(const T* src, int64_t K, int64_t D, T* dst) {
    for (int64_t k = 0; k < K; ++k) std::fill(dst + k * D, dst + (k + 1) * D, src[k]);
}

/// Σ_d t[k * D + d] for each k.
template <class T>
inline void segment_sums(const T* t, int64_t K, int64_t D, T* out) {
    for (int64_t k = 0; k < K; ++k) {
        const T* s = t + k * D;
        T acc = T(0);
        for (int64_t d = 0; d < D; ++d) acc += s[d];
        out[k] = acc;
    }
}

/// Log-sum-exp of a buffer padded with -inf to a multiple of the vector width. When e is
/// given, e[k] = exp(v[k] - max) (the unnormalised responsibilities) and *sum their sum.
template <class T>
inline T padded_lse(const T* v, int64_t Kp, T* e, T* sum) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    V mv = vload(v);
    for (int64_t k = W; k < Kp; k += W) {
        const V x = vload(v + k);
        mv = (x > mv) ? x : mv;
    }
    T m = mv[0];
    for (int i = 1; i < W; ++i) m = (mv[i] > m) ? mv[i] : m;
    // any NaN: the result is NaN (the comparisons above skip it)
    V nan_seen = {};
    for (int64_t k = 0; k < Kp; k += W) {
        const V x = vload(v + k);
        nan_seen = (x != x) ? x : nan_seen;
    }
    for (int i = 0; i < W; ++i)
        if (nan_seen[i] != nan_seen[i]) m = nan_seen[i];
    if (m == -std::numeric_limits<T>::infinity()) {  // no component has density > 0
        if (e) std::fill(e, e + Kp, T(0));
        if (sum) *sum = T(0);
        return m;
    }
    const V mm = vsplat<T>(m);
    V acc = {};
    for (int64_t k = 0; k < Kp; k += W) {
        const V x = vexp_nonpos<T>(vload(v + k) - mm);
        if (e) vstore(e + k, x);
        acc += x;
    }
    const T s = hsum<T>(acc);
    if (sum) *sum = s;
    return m + std::log(s);
}

/// Copies n values into a buffer padded with -inf to Kp.
template <class T>
inline void copy_padded(const T* src, int64_t n, int64_t Kp, T* dst) {
    std::memcpy(dst, src, sizeof(T) * n);
    std::fill(dst + n, dst + Kp, -std::numeric_limits<T>::infinity());
}

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline bool poll(const Cancel* c) { return c && c->poll && c->poll(c->ctx); }

/// Runs body(row0, row1, thread) over blocks of rows with a static schedule, polling for
/// cancellation on the calling thread; exceptions inside the region are re-thrown.
template <class Body>
Status parallel_rows(int64_t B, int64_t rows_per_block, const Exec& exec, Body&& body) {
    const int64_t nblocks = (B + rows_per_block - 1) / rows_per_block;
    const int nt = int(std::min<int64_t>(resolve_threads(exec.n_threads), std::max<int64_t>(nblocks, 1)));
    std::atomic<bool> stop{false};
    std::atomic<bool> interrupted{false};
    std::exception_ptr error;
#pragma omp parallel num_threads(nt)
    {
        const int tid = thread_id();
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < nblocks; ++blk) {
            if (stop.load(std::memory_order_relaxed)) continue;
            if (tid == 0 && poll(exec.cancel)) {
                interrupted.store(true);
                stop.store(true);
                continue;
            }
            try {
                body(blk * rows_per_block, std::min(B, (blk + 1) * rows_per_block), tid);
            } catch (...) {
#pragma omp critical(gmmfast_per_sample_error)
                if (!error) error = std::current_exception();
                stop.store(true);
            }
        }
    }
    if (error) std::rethrow_exception(error);
    return interrupted.load() ? Status::Interrupted : Status::Ok;
}

constexpr double kLog2Pi = 1.8378770664093454836;

/// Per-thread row scratch.
template <class T>
struct Scratch {
    std::vector<T> a, b, c, d;  // K * D (or 2K) elementwise buffers
    std::vector<T> L, e, lp;    // Kp: component log-densities, exponentials, padded logits
    std::vector<T> k1, k2;      // Kp: per-component values
    std::vector<T> r;           // D * K: recomputed responsibilities (backward without resp)
    void init(int64_t K, int64_t D) {
        r.assign(std::size_t(K * D), T(0));
        const int64_t n = K * std::max<int64_t>(D, 2);
        const int64_t Kp = round_up(K, lanes<T>());
        for (auto* v : {&a, &b, &c, &d}) v->assign(std::size_t(n), T(0));
        for (auto* v : {&L, &e, &lp, &k1, &k2}) v->assign(std::size_t(Kp), T(0));
    }
};

// ---------------------------------------------------------------------------------------
// Forward rows. Each fills L[0..K) with log N(y | component k) (without the logits), then
// finish() adds the log-softmax and reduces.

/// out = LSE_k(logits_k + L_k) - LSE_k(logits_k); resp_k = p(k | y).
template <class T>
inline T finish(const T* logits, int64_t K, Scratch<T>& ws, T* resp) {
    const int64_t Kp = round_up(K, lanes<T>());
    T* L = ws.L.data();
    for (int64_t k = 0; k < K; ++k) L[k] += logits[k];
    std::fill(L + K, L + Kp, -std::numeric_limits<T>::infinity());
    T s;
    const T lse = padded_lse(L, Kp, ws.e.data(), &s);
    copy_padded(logits, K, Kp, ws.lp.data());
    const T lse_logits = padded_lse<T>(ws.lp.data(), Kp, nullptr, nullptr);
    if (s > T(0)) {
        const T inv = T(1) / s;
        for (int64_t k = 0; k < K; ++k) resp[k] = ws.e[k] * inv;
    } else {
        for (int64_t k = 0; k < K; ++k) resp[k] = s == T(0) ? T(0) : s;  // 0, or NaN
    }
    return lse - lse_logits;
}

/// Diag: L_k = -½ Σ_d ((y_d - μ_kd)/σ_kd)² - Σ_d log σ_kd - D/2 log 2π.
template <class T>
inline void components_diag(const T* y, const T* mu, const T* sg, int64_t K, int64_t D, Scratch<T>& ws) {
    T* yt = ws.a.data();
    T* t = ws.b.data();
    tile_row(y, D, K, yt);
    vloop<T>(K * D, [&](auto tag, int64_t j) {
        const auto s = ld(tag, sg + j);
        const auto z = (ld(tag, yt + j) - ld(tag, mu + j)) / s;
        st(tag, t + j, z * z + T(2) * lg(s));
    });
    segment_sums(t, K, D, ws.L.data());
    const T cst = T(0.5 * double(D) * kLog2Pi);
    for (int64_t k = 0; k < K; ++k) ws.L[k] = T(-0.5) * ws.L[k] - cst;
}

/// Isotropic: L_k = -½ Σ_d ((y_d - μ_kd)/σ_k)² - D log σ_k - D/2 log 2π.
template <class T>
inline void components_isotropic(const T* y, const T* mu, const T* sg, int64_t K, int64_t D,
                                 Scratch<T>& ws) {
    T* yt = ws.a.data();
    T* st_ = ws.b.data();
    T* t = ws.c.data();
    tile_row(y, D, K, yt);
    repeat_each(sg, K, D, st_);
    vloop<T>(K * D, [&](auto tag, int64_t j) {
        const auto z = (ld(tag, yt + j) - ld(tag, mu + j)) / ld(tag, st_ + j);
        st(tag, t + j, z * z);
    });
    segment_sums(t, K, D, ws.L.data());
    T* ls = ws.k1.data();
    vloop<T>(K, [&](auto tag, int64_t k) { st(tag, ls + k, lg(ld(tag, sg + k))); });
    const T cst = T(0.5 * double(D) * kLog2Pi);
    for (int64_t k = 0; k < K; ++k) ws.L[k] = T(-0.5) * ws.L[k] - T(D) * ls[k] - cst;
}

/// Correlated 2-D: with z_j = (y_j - μ_kj)/σ_kj and s = 1 - ρ² (computed as (1-ρ)(1+ρ),
/// accurate near |ρ| = 1),
///   L_k = -(z1² + z2² - 2ρ z1 z2) / (2s) - log σ1 - log σ2 - ½ log s - log 2π.
template <class T>
inline void components_corr(const T* y, const T* mu, const T* sg, const T* rho, int64_t K, Scratch<T>& ws) {
    T* yt = ws.a.data();
    T* z = ws.b.data();
    T* ls = ws.c.data();
    tile_row(y, 2, K, yt);
    vloop<T>(2 * K, [&](auto tag, int64_t j) {
        const auto s = ld(tag, sg + j);
        st(tag, z + j, (ld(tag, yt + j) - ld(tag, mu + j)) / s);
        st(tag, ls + j, lg(s));
    });
    T* lso = ws.k1.data();
    vloop<T>(K, [&](auto tag, int64_t k) {
        const auto r = ld(tag, rho + k);
        st(tag, lso + k, lg((T(1) - r) * (T(1) + r)));
    });
    for (int64_t k = 0; k < K; ++k) {
        const T z1 = z[2 * k], z2 = z[2 * k + 1], r = rho[k];
        const T s = (T(1) - r) * (T(1) + r);
        const T q = (z1 * z1 + z2 * z2 - T(2) * r * z1 * z2) / s;
        ws.L[k] = T(-0.5) * q - ls[2 * k] - ls[2 * k + 1] - T(0.5) * lso[k] - T(kLog2Pi);
    }
}

/// u = L⁻¹ δ (forward substitution; L lower, row-major, entries above the diagonal unread).
template <class T>
inline void solve_lower(const T* Lk, const T* delta, int64_t D, T* u) {
    for (int64_t a = 0; a < D; ++a) {
        const T* row = Lk + a * D;
        T s = delta[a];
        for (int64_t b = 0; b < a; ++b) s -= row[b] * u[b];
        u[a] = s / row[a];
    }
}

/// v = L⁻ᵀ u (backward substitution with the transpose).
template <class T>
inline void solve_lower_transposed(const T* Lk, const T* u, int64_t D, T* v) {
    for (int64_t a = D - 1; a >= 0; --a) {
        T s = u[a];
        for (int64_t b = a + 1; b < D; ++b) s -= Lk[b * D + a] * v[b];
        v[a] = s / Lk[a * D + a];
    }
}

/// Full: L_k = -½ ‖L_k⁻¹ (y - μ_k)‖² - Σ_j log L_k,jj - D/2 log 2π.
template <class T>
inline void components_full(const T* y, const T* mu, const T* sc, int64_t K, int64_t D, Scratch<T>& ws) {
    T* diag = ws.a.data();
    T* ldiag = ws.b.data();
    T* delta = ws.c.data();
    T* u = ws.d.data();
    for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < D; ++j) diag[k * D + j] = sc[(k * D + j) * D + j];
    vloop<T>(K * D, [&](auto tag, int64_t j) { st(tag, ldiag + j, lg(ld(tag, diag + j))); });
    const T cst = T(0.5 * double(D) * kLog2Pi);
    for (int64_t k = 0; k < K; ++k) {
        const T* m = mu + k * D;
        for (int64_t j = 0; j < D; ++j) delta[j] = y[j] - m[j];
        solve_lower(sc + k * D * D, delta, D, u);
        T q = T(0), ld_ = T(0);
        for (int64_t j = 0; j < D; ++j) {
            q += u[j] * u[j];
            ld_ += ldiag[k * D + j];
        }
        ws.L[k] = T(-0.5) * q - ld_ - cst;
    }
}

/// Per-dimension 1-D mixture: L_k = -½ ((y - μ_k)/σ_k)² - log σ_k - ½ log 2π.
template <class T>
inline void components_1d(T y, const T* mu, const T* sg, int64_t K, Scratch<T>& ws) {
    T* L = ws.L.data();
    const T cst = T(0.5 * kLog2Pi);
    vloop<T>(K, [&](auto tag, int64_t k) {
        const auto s = ld(tag, sg + k);
        const auto z = (bc(tag, y) - ld(tag, mu + k)) / s;
        st(tag, L + k, T(-0.5) * (z * z) - lg(s) - cst);
    });
}

// ---------------------------------------------------------------------------------------
// Backward rows.

/// gl_k = g (r_k - softmax(logits)_k), w_k = g r_k into ws.k1.
template <class T>
inline void logit_grads(T g, const T* logits, const T* r, int64_t K, Scratch<T>& ws, T* gl) {
    const int64_t Kp = round_up(K, lanes<T>());
    copy_padded(logits, K, Kp, ws.lp.data());
    T s;
    padded_lse(ws.lp.data(), Kp, ws.e.data(), &s);
    const T inv = T(1) / s;
    T* w = ws.k1.data();
    for (int64_t k = 0; k < K; ++k) {
        w[k] = g * r[k];
        gl[k] = w[k] - g * (ws.e[k] * inv);
    }
}

template <class T>
inline void backward_diag(const T* y, const T* mu, const T* sg, int64_t K, int64_t D, Scratch<T>& ws,
                          T* gy, T* gm, T* gs) {
    T* yt = ws.a.data();
    T* wt = ws.b.data();
    tile_row(y, D, K, yt);
    repeat_each(ws.k1.data(), K, D, wt);
    vloop<T>(K * D, [&](auto tag, int64_t j) {
        const auto inv = T(1) / ld(tag, sg + j);
        const auto z = (ld(tag, yt + j) - ld(tag, mu + j)) * inv;
        const auto w = ld(tag, wt + j);
        st(tag, gm + j, w * z * inv);
        st(tag, gs + j, w * (z * z - T(1)) * inv);
    });
    if (gy) {
        std::fill(gy, gy + D, T(0));
        for (int64_t k = 0; k < K; ++k)
            for (int64_t d = 0; d < D; ++d) gy[d] -= gm[k * D + d];
    }
}

template <class T>
inline void backward_isotropic(const T* y, const T* mu, const T* sg, int64_t K, int64_t D, Scratch<T>& ws,
                               T* gy, T* gm, T* gs) {
    T* yt = ws.a.data();
    T* wt = ws.b.data();
    T* it = ws.c.data();
    T* zz = ws.d.data();
    T* inv = ws.k2.data();
    for (int64_t k = 0; k < K; ++k) inv[k] = T(1) / sg[k];
    tile_row(y, D, K, yt);
    repeat_each(ws.k1.data(), K, D, wt);
    repeat_each(inv, K, D, it);
    vloop<T>(K * D, [&](auto tag, int64_t j) {
        const auto iv = ld(tag, it + j);
        const auto z = (ld(tag, yt + j) - ld(tag, mu + j)) * iv;
        st(tag, gm + j, ld(tag, wt + j) * z * iv);
        st(tag, zz + j, z * z);
    });
    T* q = ws.e.data();  // free after logit_grads
    segment_sums(zz, K, D, q);
    for (int64_t k = 0; k < K; ++k) gs[k] = ws.k1[k] * (q[k] - T(D)) * inv[k];
    if (gy) {
        std::fill(gy, gy + D, T(0));
        for (int64_t k = 0; k < K; ++k)
            for (int64_t d = 0; d < D; ++d) gy[d] -= gm[k * D + d];
    }
}

/// Correlated 2-D, per component with a1 = (z1 - ρ z2)/s, a2 = (z2 - ρ z1)/s,
/// Q = (z1² + z2² - 2ρ z1 z2)/s:
///   ∂/∂μ_j = w a_j / σ_j,  ∂/∂σ_j = w (z_j a_j - 1)/σ_j,  ∂/∂ρ = w (ρ + z1 z2 - ρ Q)/s.
template <class T>
inline void backward_corr(const T* y, const T* mu, const T* sg, const T* rho, int64_t K, Scratch<T>& ws,
                          T* gy, T* gm, T* gs, T* gr) {
    const T* w = ws.k1.data();
    T gy1 = T(0), gy2 = T(0);
    for (int64_t k = 0; k < K; ++k) {
        const T i1 = T(1) / sg[2 * k], i2 = T(1) / sg[2 * k + 1], r = rho[k];
        const T z1 = (y[0] - mu[2 * k]) * i1, z2 = (y[1] - mu[2 * k + 1]) * i2;
        const T s = (T(1) - r) * (T(1) + r), is = T(1) / s;
        const T a1 = (z1 - r * z2) * is, a2 = (z2 - r * z1) * is;
        const T q = (z1 * z1 + z2 * z2 - T(2) * r * z1 * z2) * is;
        const T wk = w[k];
        const T g1 = wk * a1 * i1, g2 = wk * a2 * i2;
        gm[2 * k] = g1;
        gm[2 * k + 1] = g2;
        gs[2 * k] = wk * (z1 * a1 - T(1)) * i1;
        gs[2 * k + 1] = wk * (z2 * a2 - T(1)) * i2;
        gr[k] = wk * (r + z1 * z2 - r * q) * is;
        gy1 -= g1;
        gy2 -= g2;
    }
    if (gy) {
        gy[0] = gy1;
        gy[1] = gy2;
    }
}

template <class T>
inline void backward_full(const T* y, const T* mu, const T* sc, int64_t K, int64_t D, Scratch<T>& ws,
                          T* gy, T* gm, T* gL) {
    T* delta = ws.a.data();
    T* u = ws.b.data();
    T* v = ws.c.data();
    const T* w = ws.k1.data();
    if (gy) std::fill(gy, gy + D, T(0));
    for (int64_t k = 0; k < K; ++k) {
        const T* Lk = sc + k * D * D;
        const T* m = mu + k * D;
        for (int64_t j = 0; j < D; ++j) delta[j] = y[j] - m[j];
        solve_lower(Lk, delta, D, u);
        solve_lower_transposed(Lk, u, D, v);
        const T wk = w[k];
        T* g = gL + k * D * D;
        for (int64_t a = 0; a < D; ++a) {
            const T wv = wk * v[a];
            gm[k * D + a] = wv;
            if (gy) gy[a] -= wv;
            for (int64_t b = 0; b < a; ++b) g[a * D + b] = wv * u[b];
            g[a * D + a] = wv * u[a] - wk / Lk[a * D + a];
            for (int64_t b = a + 1; b < D; ++b) g[a * D + b] = T(0);
        }
    }
}

template <class T>
inline void backward_1d(T g, T y, const T* logits, const T* r, const T* mu, const T* sg, int64_t K,
                        Scratch<T>& ws, T* gy, T* gl, T* gm, T* gs) {
    logit_grads(g, logits, r, K, ws, gl);
    const T* w = ws.k1.data();
    vloop<T>(K, [&](auto tag, int64_t k) {
        const auto inv = T(1) / ld(tag, sg + k);
        const auto z = (bc(tag, y) - ld(tag, mu + k)) * inv;
        const auto wk = ld(tag, w + k);
        st(tag, gm + k, wk * z * inv);
        st(tag, gs + k, wk * (z * z - T(1)) * inv);
    });
    if (gy) {
        T acc = T(0);
        for (int64_t k = 0; k < K; ++k) acc -= gm[k];
        *gy = acc;
    }
}

inline int64_t rows_per_block(int64_t work_per_row) {
    // ~64 KiB of parameters per block: fine-grained enough for cancellation polling
    return std::max<int64_t>(1, std::min<int64_t>(1024, 16384 / std::max<int64_t>(work_per_row, 1)));
}

/// One row's log-likelihood; writes its responsibilities to ri (K, or D * K for PerDim).
template <class T>
inline T forward_row(const T* y, const PerSampleMixture<T>& mix, int64_t i, Scratch<T>& ws, T* ri) {
    const int64_t K = mix.K, D = mix.D;
    const int64_t ssize = per_sample_scale_size(mix.form, mix.mode, K, D);
    const T* yi = y + i * D;
    const T* mu = mix.means + i * K * D;
    const T* sc = mix.scale + i * ssize;
    if (mix.mode == MixtureMode::PerDim) {
        T lp = T(0);
        for (int64_t d = 0; d < D; ++d) {
            components_1d(yi[d], mu + d * K, sc + d * K, K, ws);
            lp += finish(mix.logits + (i * D + d) * K, K, ws, ri + d * K);
        }
        return lp;
    }
    switch (mix.form) {
        case ScaleForm::Isotropic: components_isotropic(yi, mu, sc, K, D, ws); break;
        case ScaleForm::Diag: components_diag(yi, mu, sc, K, D, ws); break;
        case ScaleForm::Full: components_full(yi, mu, sc, K, D, ws); break;
        case ScaleForm::Correlated2D: components_corr(yi, mu, sc, mix.rho + i * K, K, ws); break;
    }
    return finish(mix.logits + i * K, K, ws, ri);
}

}  // namespace ps_detail

template <class T>
RunInfo per_sample_log_prob(const T* y, const PerSampleMixture<T>& mix, T* out, T* resp, const Exec& exec) {
    using namespace ps_detail;
    const int64_t B = mix.B, K = mix.K, D = mix.D;
    const bool per_dim = mix.mode == MixtureMode::PerDim;
    const int64_t ssize = per_sample_scale_size(mix.form, mix.mode, K, D);
    const int64_t rsize = per_dim ? D * K : K;
    const int nt = resolve_threads(exec.n_threads);
    std::vector<Scratch<T>> scratch(std::size_t(std::max(nt, 1)));
    std::vector<int64_t> bad(std::size_t(std::max(nt, 1)), -1);
    RunInfo info;
    info.status = parallel_rows(B, rows_per_block(K * D + ssize), exec, [&](int64_t i0, int64_t i1, int tid) {
        Scratch<T>& ws = scratch[std::size_t(tid)];
        if (ws.L.empty()) ws.init(K, D);
        for (int64_t i = i0; i < i1; ++i) {
            T* ri = resp ? resp + i * rsize : ws.r.data();
            if (mix.mask && !mix.mask[i]) {
                out[i] = T(0);
                if (resp) std::fill(ri, ri + rsize, T(0));
                continue;
            }
            const T lp = forward_row(y, mix, i, ws, ri);
            out[i] = lp;
            if (!std::isfinite(lp) && bad[std::size_t(tid)] < 0) bad[std::size_t(tid)] = i;
        }
    });
    for (int64_t b : bad)
        if (b >= 0 && (info.first_bad_row < 0 || b < info.first_bad_row)) info.first_bad_row = b;
    return info;
}

template <class T>
Status per_sample_log_prob_backward(const T* grad, const T* resp, const T* y, const PerSampleMixture<T>& mix,
                                    T* grad_y, T* grad_logits, T* grad_means, T* grad_scale, T* grad_rho,
                                    const Exec& exec) {
    using namespace ps_detail;
    const int64_t B = mix.B, K = mix.K, D = mix.D;
    const bool per_dim = mix.mode == MixtureMode::PerDim;
    const bool corr = mix.form == ScaleForm::Correlated2D;
    const int64_t ssize = per_sample_scale_size(mix.form, mix.mode, K, D);
    const int64_t rsize = per_dim ? D * K : K;
    const int nt = resolve_threads(exec.n_threads);
    std::vector<Scratch<T>> scratch(std::size_t(std::max(nt, 1)));
    return parallel_rows(B, rows_per_block(2 * (K * D + ssize)), exec, [&](int64_t i0, int64_t i1, int tid) {
        Scratch<T>& ws = scratch[std::size_t(tid)];
        if (ws.L.empty()) ws.init(K, D);
        for (int64_t i = i0; i < i1; ++i) {
            T* gy = grad_y ? grad_y + i * D : nullptr;
            T* gl = grad_logits + i * rsize;
            T* gm = grad_means + i * K * D;
            T* gs = grad_scale + i * ssize;
            T* gr = corr ? grad_rho + i * K : nullptr;
            if (mix.mask && !mix.mask[i]) {
                if (gy) std::fill(gy, gy + D, T(0));
                std::fill(gl, gl + rsize, T(0));
                std::fill(gm, gm + K * D, T(0));
                std::fill(gs, gs + ssize, T(0));
                if (gr) std::fill(gr, gr + K, T(0));
                continue;
            }
            const T g = grad[i];
            const T* yi = y + i * D;
            const T* ri = resp ? resp + i * rsize : ws.r.data();
            if (!resp) forward_row(y, mix, i, ws, ws.r.data());  // recompute instead of saving
            const T* mu = mix.means + i * K * D;
            const T* sc = mix.scale + i * ssize;
            if (per_dim) {
                for (int64_t d = 0; d < D; ++d)
                    backward_1d(g, yi[d], mix.logits + (i * D + d) * K, ri + d * K, mu + d * K, sc + d * K, K, ws,
                                gy ? gy + d : nullptr, gl + d * K, gm + d * K, gs + d * K);
                continue;
            }
            logit_grads(g, mix.logits + i * K, ri, K, ws, gl);
            switch (mix.form) {
                case ScaleForm::Isotropic: backward_isotropic(yi, mu, sc, K, D, ws, gy, gm, gs); break;
                case ScaleForm::Diag: backward_diag(yi, mu, sc, K, D, ws, gy, gm, gs); break;
                case ScaleForm::Full: backward_full(yi, mu, sc, K, D, ws, gy, gm, gs); break;
                case ScaleForm::Correlated2D: backward_corr(yi, mu, sc, mix.rho + i * K, K, ws, gy, gm, gs, gr); break;
            }
        }
    });
}

#define GMMFAST_PER_SAMPLE_INSTANTIATE(T)                                                          \
    template RunInfo per_sample_log_prob<T>(const T*, const PerSampleMixture<T>&, T*, T*,          \
                                            const Exec&);                                          \
    template Status per_sample_log_prob_backward<T>(const T*, const T*, const T*,                  \
                                                    const PerSampleMixture<T>&, T*, T*, T*, T*, T*, \
                                                    const Exec&);
GMMFAST_PER_SAMPLE_INSTANTIATE(float)
GMMFAST_PER_SAMPLE_INSTANTIATE(double)
#undef GMMFAST_PER_SAMPLE_INSTANTIATE

}  // namespace GMMFAST_ISA_NS
}  // namespace gmmfast
