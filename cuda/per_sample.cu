// Per-sample mixtures (mixture density networks) on the device: the CUDA version of
// cpp/per_sample_kernels.inl (gmmfast/per_sample.hpp states the model and the formulas).
//
// Rows are independent (every row has its own mixture), so there is nothing to reduce
// across blocks: one GROUP of G lanes owns one row at a time, in a grid-stride loop.
//
//   G = 1   one thread per row: the thread does what one CPU thread does for a row, in
//           the same order (components k = 0..K-1, features d = 0..D-1).
//   G = 32  one warp per row: lane l owns components k = l, l + 32, ... (joint) or
//           features d = l, l + 32, ... (per_dim); each lane runs the CPU's per-component
//           (per-feature) arithmetic in the CPU's order, and the lanes' partial results
//           are combined by a fixed xor-shuffle butterfly.
//
//   Auto choice (lanes_per_row = 0): the warp when the row has at least kWarpMinUnits
//   (16) independent units -- K components (joint) or D features (per_dim) -- so that at
//   least half the lanes work; one thread per row below that (a warp would idle, and a
//   row's K * D parameters are few enough for one thread). The work per unit (D, D^2/2
//   for full) does not enter: it is the same whichever lane runs the unit. Both paths
//   are compiled for every form and can be forced (tests, tuning).
//
// Numerics, as the CPU: (y - μ)/σ and triangular solves computed directly (never the
// expanded square); log-sum-exp over components. The per-component log-densities are
// the CPU's expressions evaluated in the CPU's order; the log-sum-exp is online (running
// max and rescaled sum, lanes merged pairwise) where the CPU takes the max first, which
// changes the last bits only. Special values as the CPU: a NaN term makes the row NaN; no
// finite term gives -inf and responsibilities 0; a +inf term gives NaN. Masked rows get
// 0 (and zero gradients) without reading any parameter, so NaN padding cannot leak.
//
// The forward pass parks L_ik (log-density + logit) in the responsibilities' output and
// normalises it in place; the backward pass without saved responsibilities parks L_ik in
// grad_logits the same way (same lane, same entry: no synchronisation) and recomputes the
// responsibilities with the forward's arithmetic, so both variants give identical bits.
//
// Full covariances need two length-D vectors per component (u = L^{-1}(y - μ) and
// v = L^{-T}u): a caller-provided workspace, one slice per launched thread, element j of
// thread t at scratch[j * threads + t] (coalesced across a warp). The grid of the full
// form is capped (kScratchBudgetBytes) and loops over the rows; the other forms need no
// workspace. Nothing allocates, nothing synchronises; kernels go to the given stream.
#include "internal.cuh"

namespace gmmfast {
namespace cuda {
namespace per_sample_detail {

using detail::ceil_div;
using detail::check_launch;
using detail::require;
using detail::set_device;

// The emulation (cuda/emu) lowers the caps to force several rows per group on small
// problems, and the block size (its threads are OS threads); builds never set these.
#ifndef GMMFAST_PS_MAX_BLOCKS
#define GMMFAST_PS_MAX_BLOCKS (int64_t(1) << 20)
#endif
#ifndef GMMFAST_PS_SCRATCH_MIN_THREADS
#define GMMFAST_PS_SCRATCH_MIN_THREADS (int64_t(1) << 13)
#endif

#ifndef GMMFAST_PS_BLOCK_THREADS
#define GMMFAST_PS_BLOCK_THREADS 256
#endif

constexpr int kBlockThreads = GMMFAST_PS_BLOCK_THREADS;
constexpr int kWarpLanes = 32;
constexpr int64_t kWarpMinUnits = 16;
constexpr int64_t kMaxBlocks = GMMFAST_PS_MAX_BLOCKS;
constexpr int64_t kScratchBudgetBytes = int64_t(32) << 20;  // full form: u, v per thread
constexpr int64_t kScratchMinThreads = GMMFAST_PS_SCRATCH_MIN_THREADS;
constexpr int64_t kScratchMaxThreads = int64_t(1) << 17;
static_assert(kBlockThreads % 32 == 0 && kBlockThreads <= 1024, "whole warps per block");
constexpr double kLog2Pi = 1.8378770664093454836;

/// The kernel variants: the four joint forms and the per-feature 1-D mixture.
enum class Kind : int { Isotropic = 0, Diag = 1, Full = 2, Corr = 3, PerDim = 4 };

Kind kind_of(ScaleForm form, MixtureMode mode) {
    if (mode == MixtureMode::PerDim) return Kind::PerDim;
    switch (form) {
        case ScaleForm::Isotropic: return Kind::Isotropic;
        case ScaleForm::Diag: return Kind::Diag;
        case ScaleForm::Full: return Kind::Full;
        default: return Kind::Corr;
    }
}

/// Scale parameters per row (gmmfast::per_sample_scale_size).
__host__ __device__ inline int64_t scale_count(Kind kind, int64_t K, int64_t D) {
    switch (kind) {
        case Kind::Isotropic: return K;
        case Kind::Diag: return K * D;
        case Kind::Full: return K * D * D;
        case Kind::Corr: return 2 * K;
        default: return D * K;
    }
}

/// Launch geometry and workspace of one call: a function of the arguments only.
struct Plan {
    int lanes = 1;                    // G: lanes per row
    int64_t blocks = 0;               // grid size (0: nothing to launch)
    int64_t threads = 0;              // blocks * kBlockThreads
    int64_t scratch_per_thread = 0;   // elements of T (full form: D forward, 2D backward)
    std::size_t bytes = 0;            // workspace
};

Plan make_plan(DType dtype, Kind kind, int64_t B, int64_t K, int64_t D, bool backward, int lanes_per_row) {
    require(lanes_per_row == 0 || lanes_per_row == 1 || lanes_per_row == kWarpLanes,
            "lanes_per_row must be 0 (automatic), 1 or 32");
    Plan p;
    const int64_t units = kind == Kind::PerDim ? D : K;
    p.lanes = lanes_per_row != 0 ? lanes_per_row : (units >= kWarpMinUnits ? kWarpLanes : 1);
    int64_t cap = kMaxBlocks;
    const int64_t size = dtype == DType::Float32 ? 4 : 8;
    if (kind == Kind::Full) {
        p.scratch_per_thread = backward ? 2 * D : D;
        int64_t max_threads = kScratchBudgetBytes / (p.scratch_per_thread * size);
        if (max_threads > kScratchMaxThreads) max_threads = kScratchMaxThreads;
        if (max_threads < kScratchMinThreads) max_threads = kScratchMinThreads;
        const int64_t c = max_threads / kBlockThreads;
        if (c < cap) cap = c;
        if (cap < 1) cap = 1;
    }
    const int64_t want = ceil_div(B * p.lanes, kBlockThreads);
    p.blocks = want < cap ? want : cap;
    p.threads = p.blocks * kBlockThreads;
    p.bytes = std::size_t(p.scratch_per_thread * p.threads * size);
    return p;
}

void check_arguments(Kind kind, ScaleForm form, int64_t B, int64_t K, int64_t D) {
    require(B >= 0, "B must be >= 0");
    require(K >= 1, "K must be >= 1");
    require(D >= 1, "D must be >= 1");
    require(kind != Kind::PerDim || form == ScaleForm::Isotropic || form == ScaleForm::Diag,
            "mixture='per_dim' needs covariance 'diag' or 'isotropic'");
    require(kind != Kind::Corr || D == 2, "covariance='correlated2d' needs D = 2");
    // every index is an int64 product of these; keep the largest, B * K * D * D, far from overflow
    require(B <= (int64_t(1) << 40) && K <= (int64_t(1) << 24) && D <= (int64_t(1) << 20), "sizes out of range");
    const int64_t per_row = scale_count(kind, K, D) + K * D + K + D;
    require(per_row <= (int64_t(1) << 44) && (B == 0 || per_row <= ((int64_t(1) << 60) / B)),
            "sizes out of range");
}

// -------------------------------------------------------------------------- device

/// Arguments of both kernels (by value). Forward: out, resp. Backward: grad .. gr.
template <class T>
struct Args {
    int64_t B = 0, K = 0, D = 0;
    const T* y = nullptr;        // B * D
    const T* logits = nullptr;   // B * K (per_dim B * D * K)
    const T* means = nullptr;    // B * K * D (per_dim B * D * K)
    const T* scale = nullptr;    // B * scale_count
    const T* rho = nullptr;      // B * K (correlated 2-D)
    const uint8_t* mask = nullptr;  // B or nullptr
    T* out = nullptr;            // B
    T* resp = nullptr;           // like logits, or nullptr
    const T* grad = nullptr;     // B
    const T* resp_in = nullptr;  // like logits, or nullptr (recompute)
    T* gy = nullptr;             // B * D or nullptr
    T* gl = nullptr;             // like logits
    T* gm = nullptr;             // like means
    T* gs = nullptr;             // like scale
    T* gr = nullptr;             // like rho (correlated 2-D)
    T* scratch = nullptr;        // full: threads * scratch_per_thread
};

__device__ __forceinline__ float dlog(float x) { return logf(x); }
__device__ __forceinline__ double dlog(double x) { return log(x); }

template <class T>
__device__ __forceinline__ T pos_inf() {
    return -detail::neg_inf<T>();
}

/// (m, s) after the last term: a +inf term makes the log-sum-exp NaN, as on the CPU
/// (whose sum then contains e^{inf - inf}); the online form would give +inf.
template <class T>
__device__ __forceinline__ void settle(T m, T& s) {
    if (m == pos_inf<T>()) s = T(CUDART_NAN);
}

/// p(k | y) from L_k and the settled (m, s), inv = 1 / s: the CPU's finish().
template <class T>
__device__ __forceinline__ T resp_of(T L, T m, T s, T inv) {
    if (s > T(0)) return detail::dexp(L - m) * inv;
    return s == T(0) ? T(0) : s;  // no component with density > 0: 0; NaN stays NaN
}

/// Sum over the G lanes of a group; every lane gets the same bits (IEEE + commutes).
template <int G, class T>
__device__ __forceinline__ T group_sum(T v) {
    if constexpr (G > 1) {
#pragma unroll
        for (int o = G / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;
}

/// Merges the online log-sum-exp states (m, s) of the G lanes. At each butterfly step
/// both partners merge (lower lane's state) with (upper lane's state), so they compute the
/// same bits and every lane ends with the same state.
template <int G, class T>
__device__ __forceinline__ void group_lse(T& m, T& s, int lane) {
    if constexpr (G > 1) {
#pragma unroll
        for (int o = G / 2; o > 0; o /= 2) {
            const T m2 = __shfl_xor_sync(0xffffffffu, m, o);
            const T s2 = __shfl_xor_sync(0xffffffffu, s, o);
            if (lane & o) {
                const T mu = m, su = s;
                m = m2;
                s = s2;
                detail::lse_merge(m, s, mu, su);
            } else {
                detail::lse_merge(m, s, m2, s2);
            }
        }
    }
}

/// log N(y_i | component k) without the logit, for the joint forms: the CPU's
/// components_<form>() for one component. u: this thread's scratch (full form only),
/// element j at u[j * stride].
template <class T, Kind F>
__device__ __forceinline__ T component_log_density(const Args<T>& a, int64_t i, int64_t k, T* u, int64_t stride) {
    const int64_t K = a.K, D = a.D;
    const T* y = a.y + i * D;
    const T* mu = a.means + (i * K + k) * D;
    if constexpr (F == Kind::Diag) {
        const T* sg = a.scale + (i * K + k) * D;
        T acc = T(0);
        for (int64_t d = 0; d < D; ++d) {
            const T s = sg[d];
            const T z = (y[d] - mu[d]) / s;
            acc += z * z + T(2) * dlog(s);
        }
        return T(-0.5) * acc - T(0.5 * double(D) * kLog2Pi);
    } else if constexpr (F == Kind::Isotropic) {
        const T s = a.scale[i * K + k];
        T acc = T(0);
        for (int64_t d = 0; d < D; ++d) {
            const T z = (y[d] - mu[d]) / s;
            acc += z * z;
        }
        return T(-0.5) * acc - T(D) * dlog(s) - T(0.5 * double(D) * kLog2Pi);
    } else if constexpr (F == Kind::Corr) {
        const T* sg = a.scale + (i * K + k) * 2;
        const T r = a.rho[i * K + k];
        const T z1 = (y[0] - mu[0]) / sg[0], z2 = (y[1] - mu[1]) / sg[1];
        const T s = (T(1) - r) * (T(1) + r);  // 1 - ρ², accurate near |ρ| = 1
        const T q = (z1 * z1 + z2 * z2 - T(2) * r * z1 * z2) / s;
        return T(-0.5) * q - dlog(sg[0]) - dlog(sg[1]) - T(0.5) * dlog(s) - T(kLog2Pi);
    } else {  // Full: -½‖L⁻¹(y - μ)‖² - Σ log L_jj - D/2 log 2π, forward substitution
        const T* Lk = a.scale + (i * K + k) * D * D;
        T q = T(0), ld = T(0);
        for (int64_t r = 0; r < D; ++r) {
            const T* row = Lk + r * D;
            T s = y[r] - mu[r];
            for (int64_t b = 0; b < r; ++b) s -= row[b] * u[b * stride];
            const T ur = s / row[r];
            u[r * stride] = ur;
            q += ur * ur;
            ld += dlog(row[r]);
        }
        return T(-0.5) * q - ld - T(0.5 * double(D) * kLog2Pi);
    }
}

/// log N(y | μ, σ²) in 1-D (per_dim).
template <class T>
__device__ __forceinline__ T log_density_1d(T y, T mu, T s) {
    const T z = (y - mu) / s;
    return T(-0.5) * (z * z) - dlog(s) - T(0.5 * kLog2Pi);
}

/// Gradients of w · log N(y_i | component k) into gm, gs (, gr) and nothing else: the
/// CPU's backward_<form>() for one component.
template <class T, Kind F>
__device__ __forceinline__ void component_grads(const Args<T>& a, int64_t i, int64_t k, T w, T* gm, T* gs, T* gr,
                                                T* u, int64_t stride) {
    const int64_t K = a.K, D = a.D;
    const T* y = a.y + i * D;
    const T* mu = a.means + (i * K + k) * D;
    if constexpr (F == Kind::Diag) {
        const T* sg = a.scale + (i * K + k) * D;
        for (int64_t d = 0; d < D; ++d) {
            const T inv = T(1) / sg[d];
            const T z = (y[d] - mu[d]) * inv;
            gm[k * D + d] = w * z * inv;
            gs[k * D + d] = w * (z * z - T(1)) * inv;
        }
    } else if constexpr (F == Kind::Isotropic) {
        const T inv = T(1) / a.scale[i * K + k];
        T q = T(0);
        for (int64_t d = 0; d < D; ++d) {
            const T z = (y[d] - mu[d]) * inv;
            gm[k * D + d] = w * z * inv;
            q += z * z;
        }
        gs[k] = w * (q - T(D)) * inv;
    } else if constexpr (F == Kind::Corr) {
        // a1 = (z1 - ρ z2)/s, a2 = (z2 - ρ z1)/s, Q = (z1² + z2² - 2ρ z1 z2)/s:
        // ∂μ_j = w a_j/σ_j, ∂σ_j = w (z_j a_j - 1)/σ_j, ∂ρ = w (ρ + z1 z2 - ρQ)/s
        const T* sg = a.scale + (i * K + k) * 2;
        const T i1 = T(1) / sg[0], i2 = T(1) / sg[1], r = a.rho[i * K + k];
        const T z1 = (y[0] - mu[0]) * i1, z2 = (y[1] - mu[1]) * i2;
        const T s = (T(1) - r) * (T(1) + r), is = T(1) / s;
        const T a1 = (z1 - r * z2) * is, a2 = (z2 - r * z1) * is;
        const T q = (z1 * z1 + z2 * z2 - T(2) * r * z1 * z2) * is;
        gm[2 * k] = w * a1 * i1;
        gm[2 * k + 1] = w * a2 * i2;
        gs[2 * k] = w * (z1 * a1 - T(1)) * i1;
        gs[2 * k + 1] = w * (z2 * a2 - T(1)) * i2;
        gr[k] = w * (r + z1 * z2 - r * q) * is;
    } else {  // Full: u = L⁻¹(y - μ), v = L⁻ᵀu; ∂μ = w v, ∂L = w tril(v uᵀ) - w diag(1/L_jj)
        const T* Lk = a.scale + (i * K + k) * D * D;
        T* v = u + D * stride;
        for (int64_t r = 0; r < D; ++r) {
            const T* row = Lk + r * D;
            T s = y[r] - mu[r];
            for (int64_t b = 0; b < r; ++b) s -= row[b] * u[b * stride];
            u[r * stride] = s / row[r];
        }
        for (int64_t r = D - 1; r >= 0; --r) {
            T s = u[r * stride];
            for (int64_t b = r + 1; b < D; ++b) s -= Lk[b * D + r] * v[b * stride];
            v[r * stride] = s / Lk[r * D + r];
        }
        T* g = gs + k * D * D;
        for (int64_t r = 0; r < D; ++r) {
            const T wv = w * v[r * stride];
            gm[k * D + r] = wv;
            for (int64_t b = 0; b < r; ++b) g[r * D + b] = wv * u[b * stride];
            g[r * D + r] = wv * u[r * stride] - w / Lk[r * D + r];
            for (int64_t b = r + 1; b < D; ++b) g[r * D + b] = T(0);
        }
    }
}

// ------------------------------------------------------------------- forward rows

template <class T, Kind F, int G>
__device__ void forward_joint_row(const Args<T>& a, int64_t i, int lane, T* u, int64_t stride) {
    const int64_t K = a.K;
    T* r = a.resp ? a.resp + i * K : nullptr;
    if (a.mask && !a.mask[i]) {
        if (lane == 0) a.out[i] = T(0);
        if (r)
            for (int64_t k = lane; k < K; k += G) r[k] = T(0);
        return;
    }
    const T* lg = a.logits + i * K;
    T m = detail::neg_inf<T>(), s = T(0), ml = detail::neg_inf<T>(), sl = T(0);
    for (int64_t k = lane; k < K; k += G) {
        const T l = lg[k];
        const T L = component_log_density<T, F>(a, i, k, u, stride) + l;
        if (r) r[k] = L;  // parked until the normaliser is known
        detail::lse_add(m, s, L);
        detail::lse_add(ml, sl, l);
    }
    group_lse<G>(m, s, lane);
    group_lse<G>(ml, sl, lane);
    settle(m, s);
    settle(ml, sl);
    if (r) {
        const T inv = T(1) / s;
        for (int64_t k = lane; k < K; k += G) r[k] = resp_of(r[k], m, s, inv);
    }
    if (lane == 0) a.out[i] = (m + dlog(s)) - (ml + dlog(sl));
}

template <class T, int G>
__device__ void forward_per_dim_row(const Args<T>& a, int64_t i, int lane) {
    const int64_t K = a.K, D = a.D;
    T* r = a.resp ? a.resp + i * D * K : nullptr;
    if (a.mask && !a.mask[i]) {
        if (lane == 0) a.out[i] = T(0);
        if (r)
            for (int64_t j = lane; j < D * K; j += G) r[j] = T(0);
        return;
    }
    T acc = T(0);
    for (int64_t d = lane; d < D; d += G) {
        const int64_t base = (i * D + d) * K;
        const T yd = a.y[i * D + d];
        const T* lg = a.logits + base;
        T* rd = r ? r + d * K : nullptr;
        T m = detail::neg_inf<T>(), s = T(0), ml = detail::neg_inf<T>(), sl = T(0);
        for (int64_t k = 0; k < K; ++k) {
            const T l = lg[k];
            const T L = log_density_1d(yd, a.means[base + k], a.scale[base + k]) + l;
            if (rd) rd[k] = L;
            detail::lse_add(m, s, L);
            detail::lse_add(ml, sl, l);
        }
        settle(m, s);
        settle(ml, sl);
        if (rd) {
            const T inv = T(1) / s;
            for (int64_t k = 0; k < K; ++k) rd[k] = resp_of(rd[k], m, s, inv);
        }
        acc += (m + dlog(s)) - (ml + dlog(sl));
    }
    acc = group_sum<G>(acc);
    if (lane == 0) a.out[i] = acc;
}

// ------------------------------------------------------------------ backward rows

template <class T, Kind F, int G>
__device__ void backward_joint_row(const Args<T>& a, int64_t i, int lane, T* u, int64_t stride) {
    const int64_t K = a.K, D = a.D, ns = scale_count(F, K, D);
    T* gy = a.gy ? a.gy + i * D : nullptr;
    T* gl = a.gl + i * K;
    T* gm = a.gm + i * K * D;
    T* gs = a.gs + i * ns;
    T* gr = F == Kind::Corr ? a.gr + i * K : nullptr;
    if (a.mask && !a.mask[i]) {
        if (gy)
            for (int64_t d = lane; d < D; d += G) gy[d] = T(0);
        for (int64_t k = lane; k < K; k += G) gl[k] = T(0);
        for (int64_t j = lane; j < K * D; j += G) gm[j] = T(0);
        for (int64_t j = lane; j < ns; j += G) gs[j] = T(0);
        if (gr)
            for (int64_t k = lane; k < K; k += G) gr[k] = T(0);
        return;
    }
    const T g = a.grad[i];
    const T* lg = a.logits + i * K;
    // the softmax of the logits: e^{l_k - ml} / sl
    T ml = detail::neg_inf<T>(), sl = T(0);
    for (int64_t k = lane; k < K; k += G) detail::lse_add(ml, sl, lg[k]);
    group_lse<G>(ml, sl, lane);
    settle(ml, sl);
    const T inv_sl = T(1) / sl;
    // the responsibilities: saved, or recomputed as the forward pass does (L_k parked in gl)
    const T* rin = a.resp_in ? a.resp_in + i * K : nullptr;
    T m = T(0), s = T(0), inv = T(0);
    if (!rin) {
        m = detail::neg_inf<T>();
        for (int64_t k = lane; k < K; k += G) {
            const T L = component_log_density<T, F>(a, i, k, u, stride) + lg[k];
            gl[k] = L;
            detail::lse_add(m, s, L);
        }
        group_lse<G>(m, s, lane);
        settle(m, s);
        inv = T(1) / s;
    }
    for (int64_t k = lane; k < K; k += G) {
        const T rk = rin ? rin[k] : resp_of(gl[k], m, s, inv);
        const T w = g * rk;
        gl[k] = w - g * (detail::dexp(lg[k] - ml) * inv_sl);
        component_grads<T, F>(a, i, k, w, gm, gs, gr, u, stride);
    }
    if (gy) {
        // ∂y = -Σ_k ∂μ_k, summed over k in order within a lane (the CPU's order for G = 1),
        // reading back this lane's own ∂μ entries
        for (int64_t d = 0; d < D; ++d) {
            T p = T(0);
            for (int64_t k = lane; k < K; k += G) p += gm[k * D + d];
            p = group_sum<G>(p);
            if (lane == 0) gy[d] = -p;
        }
    }
}

template <class T, int G>
__device__ void backward_per_dim_row(const Args<T>& a, int64_t i, int lane) {
    const int64_t K = a.K, D = a.D;
    T* gy = a.gy ? a.gy + i * D : nullptr;
    if (a.mask && !a.mask[i]) {
        if (gy)
            for (int64_t d = lane; d < D; d += G) gy[d] = T(0);
        for (int64_t j = lane; j < D * K; j += G) {
            a.gl[i * D * K + j] = T(0);
            a.gm[i * D * K + j] = T(0);
            a.gs[i * D * K + j] = T(0);
        }
        return;
    }
    const T g = a.grad[i];
    for (int64_t d = lane; d < D; d += G) {
        const int64_t base = (i * D + d) * K;
        const T yd = a.y[i * D + d];
        const T* lg = a.logits + base;
        const T* mu = a.means + base;
        const T* sg = a.scale + base;
        T* gl = a.gl + base;
        T* gm = a.gm + base;
        T* gs = a.gs + base;
        T ml = detail::neg_inf<T>(), sl = T(0);
        for (int64_t k = 0; k < K; ++k) detail::lse_add(ml, sl, lg[k]);
        settle(ml, sl);
        const T inv_sl = T(1) / sl;
        const T* rin = a.resp_in ? a.resp_in + base : nullptr;
        T m = T(0), s = T(0), inv = T(0);
        if (!rin) {
            m = detail::neg_inf<T>();
            for (int64_t k = 0; k < K; ++k) {
                const T L = log_density_1d(yd, mu[k], sg[k]) + lg[k];
                gl[k] = L;
                detail::lse_add(m, s, L);
            }
            settle(m, s);
            inv = T(1) / s;
        }
        T acc = T(0);
        for (int64_t k = 0; k < K; ++k) {
            const T rk = rin ? rin[k] : resp_of(gl[k], m, s, inv);
            const T w = g * rk;
            gl[k] = w - g * (detail::dexp(lg[k] - ml) * inv_sl);
            const T iv = T(1) / sg[k];
            const T z = (yd - mu[k]) * iv;
            const T gmk = w * z * iv;
            gm[k] = gmk;
            gs[k] = w * (z * z - T(1)) * iv;
            acc -= gmk;
        }
        if (gy) gy[d] = acc;
    }
}

// ------------------------------------------------------------------------- kernels

/// Group g = t / G of the grid owns rows g, g + groups, ...; the loop bounds are the same
/// for every lane of a group, so the shuffles are reached by all 32 lanes of a warp.
template <class T, Kind F, int G>
__global__ void __launch_bounds__(kBlockThreads) per_sample_forward_kernel(const Args<T> a) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t threads = int64_t(gridDim.x) * blockDim.x;
    const int lane = int(threadIdx.x % unsigned(G));
    T* u = a.scratch ? a.scratch + t : nullptr;
    for (int64_t i = t / G; i < a.B; i += threads / G) {
        if constexpr (F == Kind::PerDim) forward_per_dim_row<T, G>(a, i, lane);
        else forward_joint_row<T, F, G>(a, i, lane, u, threads);
    }
}

template <class T, Kind F, int G>
__global__ void __launch_bounds__(kBlockThreads) per_sample_backward_kernel(const Args<T> a) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t threads = int64_t(gridDim.x) * blockDim.x;
    const int lane = int(threadIdx.x % unsigned(G));
    T* u = a.scratch ? a.scratch + t : nullptr;
    for (int64_t i = t / G; i < a.B; i += threads / G) {
        if constexpr (F == Kind::PerDim) backward_per_dim_row<T, G>(a, i, lane);
        else backward_joint_row<T, F, G>(a, i, lane, u, threads);
    }
}

template <class T, Kind F, int G>
void launch(cudaStream_t stream, const Args<T>& a, const Plan& p, bool backward) {
    if (backward) {
        per_sample_backward_kernel<T, F, G><<<unsigned(p.blocks), kBlockThreads, 0, stream>>>(a);
        check_launch("per_sample_backward_kernel");
    } else {
        per_sample_forward_kernel<T, F, G><<<unsigned(p.blocks), kBlockThreads, 0, stream>>>(a);
        check_launch("per_sample_forward_kernel");
    }
}

template <class T, int G>
void launch_kind(cudaStream_t stream, Kind kind, const Args<T>& a, const Plan& p, bool backward) {
    switch (kind) {
        case Kind::Isotropic: launch<T, Kind::Isotropic, G>(stream, a, p, backward); break;
        case Kind::Diag: launch<T, Kind::Diag, G>(stream, a, p, backward); break;
        case Kind::Full: launch<T, Kind::Full, G>(stream, a, p, backward); break;
        case Kind::Corr: launch<T, Kind::Corr, G>(stream, a, p, backward); break;
        case Kind::PerDim: launch<T, Kind::PerDim, G>(stream, a, p, backward); break;
    }
}

template <class T>
void run(cudaStream_t stream, Kind kind, Args<T> a, const Plan& p, bool backward, void* workspace) {
    if (p.blocks == 0) return;
    a.scratch = p.scratch_per_thread > 0 ? static_cast<T*>(workspace) : nullptr;
    if (p.lanes == 1) launch_kind<T, 1>(stream, kind, a, p, backward);
    else launch_kind<T, kWarpLanes>(stream, kind, a, p, backward);
}

/// Fills the pointers common to both passes.
template <class T>
Args<T> make_args(int64_t B, int64_t K, int64_t D, const void* y, const void* logits, const void* means,
                  const void* scale, const void* rho, const uint8_t* mask) {
    Args<T> a;
    a.B = B;
    a.K = K;
    a.D = D;
    a.y = static_cast<const T*>(y);
    a.logits = static_cast<const T*>(logits);
    a.means = static_cast<const T*>(means);
    a.scale = static_cast<const T*>(scale);
    a.rho = static_cast<const T*>(rho);
    a.mask = mask;
    return a;
}

void check_workspace(const Plan& p, const void* workspace, std::size_t workspace_bytes) {
    if (p.bytes == 0) return;
    require(workspace_bytes >= p.bytes, "workspace too small");
    require(workspace != nullptr && reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0,
            "workspace must be a 16-byte aligned device pointer");
}

}  // namespace per_sample_detail

using namespace per_sample_detail;

std::size_t per_sample_workspace_bytes(DType dtype, ScaleForm form, MixtureMode mode, int64_t B, int64_t K,
                                       int64_t D, bool backward, int lanes_per_row) {
    const Kind kind = kind_of(form, mode);
    check_arguments(kind, form, B, K, D);
    return make_plan(dtype, kind, B, K, D, backward, lanes_per_row).bytes;
}

void per_sample_log_prob(int device, cudaStream_t stream, DType dtype, ScaleForm form, MixtureMode mode,
                         int64_t B, int64_t K, int64_t D, const void* y, const void* logits, const void* means,
                         const void* scale, const void* rho, const uint8_t* mask, void* out, void* resp,
                         void* workspace, std::size_t workspace_bytes, int lanes_per_row) {
    const Kind kind = kind_of(form, mode);
    check_arguments(kind, form, B, K, D);
    const Plan p = make_plan(dtype, kind, B, K, D, false, lanes_per_row);
    require(B == 0 || (y && logits && means && scale && out), "null pointer argument");
    require(B == 0 || kind != Kind::Corr || rho, "covariance='correlated2d' needs rho");
    check_workspace(p, workspace, workspace_bytes);
    set_device(device);
    if (dtype == DType::Float32) {
        Args<float> a = make_args<float>(B, K, D, y, logits, means, scale, rho, mask);
        a.out = static_cast<float*>(out);
        a.resp = static_cast<float*>(resp);
        run<float>(stream, kind, a, p, false, workspace);
    } else {
        Args<double> a = make_args<double>(B, K, D, y, logits, means, scale, rho, mask);
        a.out = static_cast<double*>(out);
        a.resp = static_cast<double*>(resp);
        run<double>(stream, kind, a, p, false, workspace);
    }
}

void per_sample_log_prob_backward(int device, cudaStream_t stream, DType dtype, ScaleForm form, MixtureMode mode,
                                  int64_t B, int64_t K, int64_t D, const void* grad, const void* resp,
                                  const void* y, const void* logits, const void* means, const void* scale,
                                  const void* rho, const uint8_t* mask, void* grad_y, void* grad_logits,
                                  void* grad_means, void* grad_scale, void* grad_rho, void* workspace,
                                  std::size_t workspace_bytes, int lanes_per_row) {
    const Kind kind = kind_of(form, mode);
    check_arguments(kind, form, B, K, D);
    const Plan p = make_plan(dtype, kind, B, K, D, true, lanes_per_row);
    require(B == 0 || (grad && y && logits && means && scale && grad_logits && grad_means && grad_scale),
            "null pointer argument");
    require(B == 0 || kind != Kind::Corr || (rho && grad_rho), "covariance='correlated2d' needs rho and grad_rho");
    check_workspace(p, workspace, workspace_bytes);
    set_device(device);
    auto fill = [&](auto tag) {
        using T = decltype(tag);
        Args<T> a = make_args<T>(B, K, D, y, logits, means, scale, rho, mask);
        a.grad = static_cast<const T*>(grad);
        a.resp_in = static_cast<const T*>(resp);
        a.gy = static_cast<T*>(grad_y);
        a.gl = static_cast<T*>(grad_logits);
        a.gm = static_cast<T*>(grad_means);
        a.gs = static_cast<T*>(grad_scale);
        a.gr = kind == Kind::Corr ? static_cast<T*>(grad_rho) : nullptr;
        run<T>(stream, kind, a, p, true, workspace);
    };
    if (dtype == DType::Float32) fill(float{});
    else fill(double{});
}

}  // namespace cuda
}  // namespace gmmfast
