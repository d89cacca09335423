// The hot loops of gmmfast, written once and compiled once per instruction set.
//
// arch_<isa>.cpp defines, then includes this file:
//   GMMFAST_ISA_NS   namespace of this variant (isa_baseline, isa_avx2, isa_avx512)
//   GMMFAST_VBYTES   SIMD register width in bytes (16, 32, 64)
//   GMMFAST_VREGS    number of SIMD registers (16 or 32), which sets the register blocking
//
// SIMD is written with GCC/Clang vector extensions, so one source gives SSE2, AVX2 and
// AVX-512 code (and NEON on Arm) without intrinsics.
//
// Data layout inside a row block ("tile") of Bp rows:
//   XT[d][i]  the tile transposed (D x Bp), zero-padded past the last row: the E-step
//             and the diagonal M-step vectorise over rows, so they run at full width for
//             any D and K;
//   L[k][i]   log-densities, then responsibilities (K x Bp): the only place where
//             responsibilities exist;
//   Z, WZ     the full-covariance M-step's buffers. AVX-512 (32 registers): transposed,
//             ZT[d][i] = x - c_k and WT[d][i] = r (x - c_k), whose symmetric update
//             vectorises over rows like the E-step (mstep_full_component); 16-register
//             ISAs: rows packed and centred at one component (Bp x Dp), whose
//             register-blocked rank-Bp update vectorises over d (syrk_upper_acc).
#if !defined(GMMFAST_ISA_NS) || !defined(GMMFAST_VBYTES) || !defined(GMMFAST_VREGS)
#error "define GMMFAST_ISA_NS, GMMFAST_VBYTES and GMMFAST_VREGS before including kernels.inl"
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "gmmfast/runtime.hpp"
#include "isa.hpp"

namespace gmmfast {
namespace GMMFAST_ISA_NS {
// Not an anonymous namespace: the entry points' lambdas capture these types, and the
// ISA namespace already keeps each variant's symbols apart.
namespace detail {

constexpr int kVBytes = GMMFAST_VBYTES;
constexpr bool kManyRegs = GMMFAST_VREGS >= 32;

template <class T>
struct Simd;
template <>
struct Simd<double> {
    typedef double V __attribute__((vector_size(kVBytes)));
    typedef int64_t I __attribute__((vector_size(kVBytes)));
    typedef uint64_t U __attribute__((vector_size(kVBytes)));
    static constexpr int W = kVBytes / 8;
};
template <>
struct Simd<float> {
    typedef float V __attribute__((vector_size(kVBytes)));
    typedef int32_t I __attribute__((vector_size(kVBytes)));
    typedef uint32_t U __attribute__((vector_size(kVBytes)));
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
/// Horizontal sum in a fixed lane order (results must not depend on the compiler's
/// choice of reduction tree).
template <class T>
inline T hsum(const Vec<T>& v) {
    T s = v[0];
    for (int i = 1; i < lanes<T>(); ++i) s += v[i];
    return s;
}

// ---------------------------------------------------------------------------------------
// e^x for log-sum-exp arguments (x <= 0 once the row maximum is subtracted).
// Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2, a Taylor polynomial for e^r
// (degree 13 in double, 7 in float: truncation error below half an ulp), and n added to
// the exponent bits. Results below the normal range are flushed to 0 (their share of a
// sum whose largest term is 1 is below the type's resolution); NaN propagates. Written
// by hand because libm's exp does not vectorise without -ffast-math, which we refuse.
template <class T>
struct ExpConst;
template <>
struct ExpConst<double> {
    static constexpr double shifter = 0x1.8p52, log2e = 1.4426950408889634;
    static constexpr double ln2hi = 6.93147180369123816490e-01, ln2lo = 1.90821492927058770002e-10;
    static constexpr double flush = -707.0;  // n >= -1020: 2^n · p stays normal
    static constexpr int mantissa = 52, degree = 13;
};
template <>
struct ExpConst<float> {
    static constexpr float shifter = 0x1.8p23f, log2e = 1.44269504088896341f;
    static constexpr float ln2hi = 0.693359375f, ln2lo = -2.12194440e-4f;
    static constexpr float flush = -86.0f;  // n >= -124
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
    // Unsigned lanes for the exponent arithmetic: lanes that the selects below discard
    // (x < flush, -inf) overflow it, which is undefined for signed integers (UBSan).
    using U = typename Simd<T>::U;
    const V shifter = vsplat<T>(C::shifter);
    const V t = x * C::log2e + shifter;  // n = round(x / ln2) sits in t's low mantissa bits
    const V n = t - shifter;
    V r = x - n * C::ln2hi;
    r = r - n * C::ln2lo;
    V p = vsplat<T>(T(kInvFactorial[C::degree]));
    for (int j = C::degree - 1; j >= 0; --j) p = p * r + T(kInvFactorial[j]);
    const U bits = (U)p + (((U)t - (U)shifter) << C::mantissa);
    V y = (V)bits;
    y = (x < vsplat<T>(C::flush)) ? vsplat<T>(T(0)) : y;
    y = (x != x) ? x : y;
    return y;
}

// ---------------------------------------------------------------------------------------
// Register blocking.
constexpr int kIV = 4;                   // row vectors per E-step block
constexpr int kJB = kManyRegs ? 4 : 2;   // columns of U per dense E-step block
constexpr int kLB = 4;                   // rows of S2 per dense M-step block
constexpr int kJV = kManyRegs ? 4 : 2;   // column vectors of S2 per dense M-step block
constexpr int64_t kTileBytes = 256 * 1024;  // tile working set: well inside L2
constexpr int64_t kMaxTileRows = 512;

inline int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

template <class T>
inline int64_t padded_cols(int64_t D) {
    return round_up(D, std::max<int64_t>(lanes<T>(), kLB));
}

/// Rows per tile: the tile buffers (XT, ZT, Z, WZ, L and, for tied, two float64 row
/// buffers) fit in kTileBytes, and the count is a multiple of the E-step row block.
template <class T>
int64_t tile_rows(int64_t D, int64_t K, bool tied) {
    const int64_t block = lanes<T>() * kIV;
    int64_t per_row = (2 * D + 2 * padded_cols<T>(D) + K + 4) * int64_t(sizeof(T));
    if (tied) per_row += 4 * padded_cols<double>(D) * int64_t(sizeof(double));
    int64_t rows = std::min(kMaxTileRows, kTileBytes / per_row);
    rows = rows / block * block;
    return std::max(rows, block);
}

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

inline bool poll(const Cancel* c) { return c && c->poll && c->poll(c->ctx); }

/// Runs body(tile, thread) over tiles on n_threads threads with a static schedule
/// (so the tile -> thread assignment, and hence the rounding, is a function of the
/// thread count only), polling for cancellation on the calling thread. Exceptions
/// thrown inside the parallel region are re-thrown on the caller.
template <class Init, class Body>
Status parallel_tiles(int64_t ntiles, int n_threads, const Cancel* cancel, Init&& init,
                      Body&& body) {
    std::atomic<bool> stop{false};
    std::atomic<bool> interrupted{false};
    std::exception_ptr error;
#pragma omp parallel num_threads(n_threads)
    {
        const int tid = thread_id();
        bool ready = true;
        try {
            init(tid);
        } catch (...) {
#pragma omp critical(gmmfast_error)
            if (!error) error = std::current_exception();
            stop.store(true);
            ready = false;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ntiles; ++t) {
            if (!ready || stop.load(std::memory_order_relaxed)) continue;
            if (tid == 0 && poll(cancel)) {
                interrupted.store(true);
                stop.store(true);
                continue;
            }
            try {
                body(t, tid);
            } catch (...) {
#pragma omp critical(gmmfast_error)
                if (!error) error = std::current_exception();
                stop.store(true);
            }
        }
    }
    if (error) std::rethrow_exception(error);
    return interrupted.load() ? Status::Interrupted : Status::Ok;
}

// ---------------------------------------------------------------------------------------
// Tile kernels.

/// XT[d][i] = X[i0 + i][d] for i < n, 0 for n <= i < Bp.
template <class T>
void load_transposed(const T* X, int64_t i0, int64_t n, int64_t D, int64_t Bp, T* XT) {
    for (int64_t i = 0; i < n; ++i) {
        const T* row = X + (i0 + i) * D;
        for (int64_t d = 0; d < D; ++d) XT[d * Bp + i] = row[d];
    }
    if (n < Bp)
        for (int64_t d = 0; d < D; ++d) std::fill(XT + d * Bp + n, XT + (d + 1) * Bp, T(0));
}

/// Diagonal (and spherical, with P expanded) E-step:
///   L[k][i] = cst[k] - ½ Σ_d ((XT[d][i] - μ_kd) · P_kd)²   for all Bp rows.
/// Centred directly: (x - μ) is exact for nearby floats, x·p - μ·p is not.
template <class T>
void estep_diag(const T* XT, int64_t Bp, int64_t D, int64_t K, const T* mu, const T* P,
                const T* cst, T* L, int64_t rows = -1) {
    // Bp is the stride of XT and L; `rows` (a multiple of W·kIV, default Bp) how many
    // leading rows to compute (k-means computes only the undecided rows of a tile).
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    const V half = vsplat<T>(T(0.5));
    const int64_t n_rows = rows < 0 ? Bp : rows;
    for (int64_t i0 = 0; i0 < n_rows; i0 += W * kIV) {
        for (int64_t k = 0; k < K; ++k) {
            const T* mk = mu + k * D;
            const T* pk = P + k * D;
            V acc[kIV] = {};
            for (int64_t d = 0; d < D; ++d) {
                const V m = vsplat<T>(mk[d]), p = vsplat<T>(pk[d]);
                const T* x = XT + d * Bp + i0;
                for (int v = 0; v < kIV; ++v) {
                    const V z = (vload(x + v * W) - m) * p;
                    acc[v] += z * z;
                }
            }
            const V c = vsplat<T>(cst[k]);
            for (int v = 0; v < kIV; ++v) vstore(L + k * Bp + i0 + v * W, c - half * acc[v]);
        }
    }
}

/// Full / tied E-step: L[k][i] = cst[k] - ½ ‖(x_i - μ_k)ᵀ U_k‖².
/// U is stored padded to Dj x Dj (zeros below the diagonal and past D), ustride = 0
/// for tied. Register-blocked over kJB columns of U and kIV vectors of rows, exploiting
/// the triangle: column block j0 only needs rows l < j0 + kJB of U, and row j0 + t of
/// that block only its columns j0 + t, ... (the zeros below the diagonal are skipped).
/// The squared norm is accumulated straight from the registers, so (x - μ)ᵀU is never
/// stored. The rows of one register block are centred into ZT (D x W·kIV, so it stays
/// in L1) before its column blocks.
template <class T>
void estep_dense(const T* XT, int64_t Bp, int64_t D, int64_t Dj, int64_t K, const T* mu,
                 const T* U, int64_t ustride, const T* cst, T* ZT, T* L) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    constexpr int64_t RB = W * kIV;  // rows per register block, ZT's stride
    const V half = vsplat<T>(T(0.5));
    for (int64_t k = 0; k < K; ++k) {
        const T* Uk = U + k * ustride;
        const T* mk = mu + k * D;
        for (int64_t i0 = 0; i0 < Bp; i0 += RB) {
            for (int64_t d = 0; d < D; ++d) {
                const V m = vsplat<T>(mk[d]);
                for (int v = 0; v < kIV; ++v)
                    vstore(ZT + d * RB + v * W, vload(XT + d * Bp + i0 + v * W) - m);
            }
            V sq[kIV] = {};
            for (int64_t j0 = 0; j0 < Dj; j0 += kJB) {
                V acc[kJB][kIV] = {};
                const int64_t lfull = std::min(D, j0);
                for (int64_t l = 0; l < lfull; ++l) {
                    V z[kIV];
                    for (int v = 0; v < kIV; ++v) z[v] = vload(ZT + l * RB + v * W);
                    const T* u = Uk + l * Dj + j0;
                    for (int jj = 0; jj < kJB; ++jj) {
                        const V uu = vsplat<T>(u[jj]);
                        for (int v = 0; v < kIV; ++v) acc[jj][v] += uu * z[v];
                    }
                }
#pragma GCC unroll 4
                for (int t = 0; t < kJB; ++t) {  // the diagonal block: U[j0+t][j0+jj], jj >= t
                    const int64_t l = j0 + t;
                    if (l >= D) break;
                    V z[kIV];
                    for (int v = 0; v < kIV; ++v) z[v] = vload(ZT + l * RB + v * W);
                    const T* u = Uk + l * Dj + j0;
#pragma GCC unroll 4
                    for (int jj = t; jj < kJB; ++jj) {
                        const V uu = vsplat<T>(u[jj]);
                        for (int v = 0; v < kIV; ++v) acc[jj][v] += uu * z[v];
                    }
                }
                for (int jj = 0; jj < kJB; ++jj)
                    for (int v = 0; v < kIV; ++v) sq[v] += acc[jj][v] * acc[jj][v];
            }
            const V c = vsplat<T>(cst[k]);
            for (int v = 0; v < kIV; ++v) vstore(L + k * Bp + i0 + v * W, c - half * sq[v]);
        }
    }
}

/// Tied E-step. With one U for every component, ‖Uᵀ(x - μ_k)‖² = ‖y - m_k‖² where
/// y = Uᵀ(x - c̄) is computed once per row and m_k = Uᵀ(μ_k - c̄) once per call (c̄ the
/// mean of the means): D²/2 + K·D operations per row instead of K·D²/2. In float64, so
/// that y - m_k, which cancels down to the component's spread, keeps the accuracy of
/// per-component centring even for float32 data and distant components.
///   ZT, YT: D x Bp float64 scratch;  M: K x D, m_k;  L[k][i] = cst[k] - ½‖y_i - m_k‖².
template <class T>
void estep_tied(const T* XT, int64_t Bp, int64_t D, int64_t Dj, int64_t K, const T* U,
                const double* cbar, const double* M, const T* cst, double* ZT, double* YT, T* L) {
    using V = Vec<double>;
    constexpr int W = lanes<double>();
    for (int64_t d = 0; d < D; ++d)
        for (int64_t i = 0; i < Bp; ++i) ZT[d * Bp + i] = double(XT[d * Bp + i]) - cbar[d];
    for (int64_t i0 = 0; i0 < Bp; i0 += W * kIV)
        for (int64_t j = 0; j < D; ++j) {  // y_j = Σ_{l <= j} U[l][j] z_l
            V acc[kIV] = {};
            for (int64_t l = 0; l <= j; ++l) {
                const V u = vsplat<double>(double(U[l * Dj + j]));
                for (int v = 0; v < kIV; ++v) acc[v] += u * vload(ZT + l * Bp + i0 + v * W);
            }
            for (int v = 0; v < kIV; ++v) vstore(YT + j * Bp + i0 + v * W, acc[v]);
        }
    for (int64_t i0 = 0; i0 < Bp; i0 += W * kIV)
        for (int64_t k = 0; k < K; ++k) {
            V acc[kIV] = {};
            for (int64_t j = 0; j < D; ++j) {
                const V m = vsplat<double>(M[k * D + j]);
                for (int v = 0; v < kIV; ++v) {
                    const V z = vload(YT + j * Bp + i0 + v * W) - m;
                    acc[v] += z * z;
                }
            }
            const double c = double(cst[k]);
            for (int v = 0; v < kIV; ++v)
                for (int q = 0; q < W; ++q) L[k * Bp + i0 + v * W + q] = T(c - 0.5 * acc[v][q]);
        }
}

/// Per row of the tile: m_i = max_k L[k][i] and s_i = Σ_k exp(L[k][i] - m_i); when
/// store_exp, L[k][i] is replaced by exp(L[k][i] - m_i). A NaN anywhere in a row, or a
/// row that is -inf throughout, makes s_i NaN, which the caller reports.
template <class T>
void row_logsumexp(T* L, int64_t Bp, int64_t K, T* m_out, T* s_out, bool store_exp) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    for (int64_t i = 0; i < Bp; i += W) {
        V m = vload(L + i);
        for (int64_t k = 1; k < K; ++k) {
            const V v = vload(L + k * Bp + i);
            m = (v > m) ? v : m;
        }
        V s = {};
        for (int64_t k = 0; k < K; ++k) {
            const V e = vexp_nonpos<T>(vload(L + k * Bp + i) - m);
            if (store_exp) vstore(L + k * Bp + i, e);
            s += e;
        }
        vstore(m_out + i, m);
        vstore(s_out + i, s);
    }
}

/// C[l][j] += Σ_{r0 <= r < r1} A[r][l] · B[r][j] for a kLB x (JVn vectors) block.
template <class T, int JVn>
inline void syrk_block(const T* A, const T* B, int64_t r0, int64_t r1, int64_t ld, int64_t l0,
                       int64_t jv0, double* C, int64_t ldc) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    V acc[kLB][JVn] = {};
    for (int64_t r = r0; r < r1; ++r) {
        const T* b = B + r * ld + jv0 * W;
        const T* a = A + r * ld + l0;
        V bv[JVn];
        for (int jv = 0; jv < JVn; ++jv) bv[jv] = vload(b + jv * W);
        for (int ll = 0; ll < kLB; ++ll) {
            const V av = vsplat<T>(a[ll]);
            for (int jv = 0; jv < JVn; ++jv) acc[ll][jv] += av * bv[jv];
        }
    }
    for (int ll = 0; ll < kLB; ++ll)
        for (int jv = 0; jv < JVn; ++jv) {
            double* c = C + (l0 + ll) * ldc + (jv0 + jv) * W;
            for (int q = 0; q < W; ++q) c[q] += double(acc[ll][jv][q]);
        }
}

/// Upper-triangle rank-`rows` update C += Aᵀ B (blocks on or above the diagonal; entries
/// below it inside diagonal blocks are computed too and ignored). A and B are row-major
/// with leading dimension ld = Dp (a multiple of the vector width and of kLB), C is
/// Dp x Dp float64. float32 partial sums are flushed to float64 every 64 rows, which
/// bounds their rounding error by ~64 ulp of the block sum.
template <class T>
void syrk_upper_acc(const T* A, const T* B, int64_t rows, int64_t Dp, double* C) {
    constexpr int W = lanes<T>();
    if (rows <= 0) return;
    const int64_t nv = Dp / W;
    const int64_t chunk = std::is_same<T, float>::value ? 64 : rows;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t r1 = std::min(rows, r0 + chunk);
        for (int64_t l0 = 0; l0 < Dp; l0 += kLB) {
            for (int64_t jv0 = l0 / W; jv0 < nv; jv0 += kJV) {
                switch (std::min<int64_t>(kJV, nv - jv0)) {
                    case 4: syrk_block<T, 4>(A, B, r0, r1, Dp, l0, jv0, C, Dp); break;
                    case 3: syrk_block<T, 3>(A, B, r0, r1, Dp, l0, jv0, C, Dp); break;
                    case 2: syrk_block<T, 2>(A, B, r0, r1, Dp, l0, jv0, C, Dp); break;
                    default: syrk_block<T, 1>(A, B, r0, r1, Dp, l0, jv0, C, Dp); break;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Full-covariance M-step on the transposed tile (many-register ISAs).
//
// S2 += Σ_i w_i z_iᵀ with z = x - c (masked to 0 where r = 0) and w = r z, vectorised
// over the tile's rows: a kSB x kSB block of S2 keeps one vector accumulator per entry
// (lane q sums rows q, q + W, ...), loading kSB rows of WT and kSB rows of ZT per row
// vector. Only the blocks on or above the diagonal are computed, and inside a diagonal
// block only the entries on or above it, so every multiply-add is useful (D a multiple
// of kSB). No packing: ZT and WT are written once per component from XT. At the end of
// the tile each block's kSB² accumulators are reduced by a shuffle tree to kSB² sums,
// which are added to a float64 block (float32 partial sums are thus flushed to float64
// once per tile: each lane sums Bp/W rows, then a pairwise tree over the lanes).
constexpr int kSB = 4;
constexpr int kSB2 = kSB * kSB;
constexpr bool kTransposedFull = kManyRegs;

/// Bit reversal of q over log2(W) bits: the lane order the shuffle tree leaves.
constexpr int bit_reverse(int q, int W) {
    int r = 0;
    for (int b = 1; b < W; b <<= 1) {
        r = (r << 1) | (q & 1);
        q >>= 1;
    }
    return r;
}
/// Lane i of fold_pair's two shuffles: segments of 2H lanes; the low H lanes of a
/// segment come from a, the high H from b; `hi` picks the segment's upper half.
constexpr int fold_index(int i, int W, int H, bool hi) {
    const int s = i / (2 * H), p = i % (2 * H);
    return (p < H ? s * 2 * H + p : W + s * 2 * H + (p - H)) + (hi ? H : 0);
}

/// Per segment of 2H lanes: [a.lo + a.hi, b.lo + b.hi] (lo, hi the segment's halves).
template <class T, int H, std::size_t... I>
inline Vec<T> fold_pair(const Vec<T>& a, const Vec<T>& b, std::index_sequence<I...>) {
    constexpr int W = lanes<T>();
#if defined(__clang__)
    return __builtin_shufflevector(a, b, fold_index(int(I), W, H, false)...) +
           __builtin_shufflevector(a, b, fold_index(int(I), W, H, true)...);
#else
    using M = typename Simd<T>::I;
    const M lo = {fold_index(int(I), W, H, false)...};
    const M hi = {fold_index(int(I), W, H, true)...};
    return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
#endif
}

/// Folds N vectors pairwise, level by level (H = W/2, W/4, ..., 1), into N / W vectors
/// whose lane q holds the lane sum of input vector g·W + bit_reverse(q).
template <class T, int H, int N>
inline void fold_levels(Vec<T>* v) {
#pragma GCC unroll 16
    for (int p = 0; p < N / 2; ++p)
        v[p] = fold_pair<T, H>(v[2 * p], v[2 * p + 1], std::make_index_sequence<lanes<T>()>{});
    if constexpr (H > 1) fold_levels<T, H / 2, N / 2>(v);
}

/// Where block entry e = a·kSB + b accumulates, so that the shuffle tree leaves the
/// sums in natural order: the tree's lane q holds input g·W + bit_reverse(q).
template <class T>
constexpr int acc_slot(int e) {
    constexpr int W = lanes<T>();
    return e / W * W + bit_reverse(e % W, W);
}

/// One kSB x kSB block of S2: rows l0.. of WT against rows j0.. of ZT over Bp rows;
/// out[a·kSB + b] += Σ_i WT[a][i] ZT[b][i].
template <class T, bool Diag>
inline void sym_block(const T* WT, const T* ZT, int64_t Bp, double* out) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    static_assert(kSB2 % W == 0, "the shuffle tree reduces groups of W vectors");
    V acc[kSB2];
#pragma GCC unroll 16
    for (int e = 0; e < kSB2; ++e) acc[e] = V{};
    for (int64_t i = 0; i < Bp; i += W) {
        V w[kSB], z[kSB];
#pragma GCC unroll 4
        for (int a = 0; a < kSB; ++a) w[a] = vload(WT + a * Bp + i);
#pragma GCC unroll 4
        for (int b = 0; b < kSB; ++b) z[b] = vload(ZT + b * Bp + i);
#pragma GCC unroll 4
        for (int a = 0; a < kSB; ++a)
#pragma GCC unroll 4
            for (int b = Diag ? a : 0; b < kSB; ++b) acc[acc_slot<T>(a * kSB + b)] += w[a] * z[b];
    }
    fold_levels<T, W / 2, kSB2>(acc);
#pragma GCC unroll 16
    for (int g = 0; g < kSB2 / W; ++g)
#pragma GCC unroll 16
        for (int q = 0; q < W; ++q) out[g * W + q] += double(acc[g][q]);
}

/// Number of kSB x kSB blocks on or above the diagonal for D features; the blocked S2
/// accumulator of a component holds them row by row, kSB² float64 each.
inline int64_t sym_blocks(int64_t D) {
    const int64_t nb = (D + kSB - 1) / kSB;
    return nb * (nb + 1) / 2;
}

/// s1 += Σ_i r_i (x_i - c) and the blocked upper triangle of Σ_i r_i (x_i - c)(x_i - c)ᵀ
/// for one component, from the transposed tile XT (D x Bp). ZT, WT: round_up(D, kSB) x Bp
/// scratch whose rows past D are zero.
template <class T>
void mstep_full_component(const T* XT, const T* Rk, int64_t Bp, int64_t D, const T* c,
                          T* ZT, T* WT, double* s1, double* C) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    const V zero = {};
    for (int64_t d = 0; d < D; ++d) {
        const V cv = vsplat<T>(c[d]);
        const T* x = XT + d * Bp;
        T* z = ZT + d * Bp;
        T* w = WT + d * Bp;
        V a1 = {};
        for (int64_t i = 0; i < Bp; i += W) {
            const V r = vload(Rk + i);
            // rows without weight contribute exact zeros, whatever x is (the old packing
            // skipped them: 0 · inf would be NaN)
            const V zi = (r == zero) ? zero : vload(x + i) - cv;
            const V wi = r * zi;
            vstore(z + i, zi);
            vstore(w + i, wi);
            a1 += wi;
        }
        s1[d] += double(hsum<T>(a1));
    }
    const int64_t nb = (D + kSB - 1) / kSB;
    double* out = C;
    for (int64_t lb = 0; lb < nb; ++lb) {
        const T* w = WT + lb * kSB * Bp;
        sym_block<T, true>(w, ZT + lb * kSB * Bp, Bp, out);
        out += kSB2;
        for (int64_t jb = lb + 1; jb < nb; ++jb, out += kSB2)
            sym_block<T, false>(w, ZT + jb * kSB * Bp, Bp, out);
    }
}

/// Diagonal statistics of one component from the transposed tile:
///   s1[d] += Σ_i r_i (x_id - c_d), and when s2 != nullptr, s2[d] += Σ_i r_i (x_id - c_d)².
/// Four features at a time for independent accumulator chains.
template <class T>
void mstep_diag_component(const T* XT, const T* Rk, int64_t Bp, int64_t D, const T* c,
                          double* s1, double* s2) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    int64_t d = 0;
    for (; d + 4 <= D; d += 4) {
        V a1[4] = {}, a2[4] = {};
        V cv[4];
        for (int j = 0; j < 4; ++j) cv[j] = vsplat<T>(c[d + j]);
        for (int64_t i = 0; i < Bp; i += W) {
            const V r = vload(Rk + i);
            for (int j = 0; j < 4; ++j) {
                const V z = vload(XT + (d + j) * Bp + i) - cv[j];
                const V t = r * z;
                a1[j] += t;
                a2[j] += t * z;
            }
        }
        for (int j = 0; j < 4; ++j) {
            s1[d + j] += double(hsum<T>(a1[j]));
            if (s2) s2[d + j] += double(hsum<T>(a2[j]));
        }
    }
    for (; d < D; ++d) {
        V a1 = {}, a2 = {};
        const V cv = vsplat<T>(c[d]);
        for (int64_t i = 0; i < Bp; i += W) {
            const V r = vload(Rk + i);
            const V z = vload(XT + d * Bp + i) - cv;
            const V t = r * z;
            a1 += t;
            a2 += t * z;
        }
        s1[d] += double(hsum<T>(a1));
        if (s2) s2[d] += double(hsum<T>(a2));
    }
}

// ---------------------------------------------------------------------------------------
// A mixture prepared for the tile kernels.

template <class T>
struct Prepared {
    int64_t K = 0, D = 0, Dj = 0, Bp = 0;
    Covariance cov = Covariance::Full;
    bool dense = false;
    std::vector<T> cst;   // log π_k + Σ log diag U_k - D/2 log 2π
    AlignedBuffer<T> U;   // dense: (K or 1) x Dj x Dj, upper triangle, zero padded
    std::vector<T> P;     // diag/spherical: K x D precision Cholesky (spherical expanded)
    std::vector<double> cbar, M;  // tied: mean of the means, m_k = Uᵀ(μ_k - c̄)  (estep_tied)
    const T* means = nullptr;

    void init(const Mixture<T>& mix, bool need_estep, bool tied_rows) {
        K = mix.K;
        D = mix.D;
        cov = mix.cov;
        dense = (cov == Covariance::Full || cov == Covariance::Tied);
        Dj = round_up(D, kJB);
        Bp = tile_rows<T>(D, K, tied_rows);
        means = mix.means;
        if (!need_estep) return;
        constexpr double log2pi = 1.8378770664093454836;  // log(2π)
        std::vector<double> logdet(K, 0.0);
        if (dense) {
            const int64_t nU = (cov == Covariance::Full) ? K : 1;
            U.resize(static_cast<std::size_t>(nU * Dj * Dj));
            for (int64_t k = 0; k < nU; ++k) {
                const T* src = mix.prec_chol + k * D * D;
                T* dst = U.data() + k * Dj * Dj;
                double ld = 0.0;
                for (int64_t l = 0; l < D; ++l) {
                    ld += std::log(double(src[l * D + l]));
                    for (int64_t j = l; j < D; ++j) dst[l * Dj + j] = src[l * D + j];
                }
                if (cov == Covariance::Full)
                    logdet[k] = ld;
                else
                    std::fill(logdet.begin(), logdet.end(), ld);
            }
        } else {
            P.resize(static_cast<std::size_t>(K * D));
            for (int64_t k = 0; k < K; ++k) {
                double ld = 0.0;
                for (int64_t d = 0; d < D; ++d) {
                    const T p = (cov == Covariance::Diag) ? mix.prec_chol[k * D + d] : mix.prec_chol[k];
                    P[k * D + d] = p;
                    ld += std::log(double(p));
                }
                logdet[k] = ld;
            }
        }
        cst.resize(K);
        for (int64_t k = 0; k < K; ++k)
            cst[k] = T(double(mix.log_weights[k]) + logdet[k] - 0.5 * double(D) * log2pi);
        if (cov == Covariance::Tied) {
            cbar.assign(static_cast<std::size_t>(D), 0.0);
            for (int64_t k = 0; k < K; ++k)
                for (int64_t d = 0; d < D; ++d) cbar[d] += double(mix.means[k * D + d]) / double(K);
            M.assign(static_cast<std::size_t>(K * D), 0.0);
            for (int64_t k = 0; k < K; ++k)
                for (int64_t j = 0; j < D; ++j) {
                    double v = 0.0;
                    for (int64_t l = 0; l <= j; ++l)
                        v += double(U[l * Dj + j]) * (double(mix.means[k * D + l]) - cbar[l]);
                    M[k * D + j] = v;
                }
        }
    }

    /// L = weighted log-densities of the tile (XT); ZT (T) and TD (2·D·Bp float64) are
    /// scratch of the dense paths.
    void weighted_log_prob(const T* XT, T* ZT, double* TD, T* L) const {
        if (cov == Covariance::Tied)
            estep_tied(XT, Bp, D, Dj, K, U.data(), cbar.data(), M.data(), cst.data(), TD, TD + D * Bp, L);
        else if (dense)
            estep_dense(XT, Bp, D, Dj, K, means, U.data(), Dj * Dj, cst.data(), ZT, L);
        else
            estep_diag(XT, Bp, D, K, means, P.data(), cst.data(), L);
    }
};

/// Per-thread scratch for one tile.
template <class T>
struct TileScratch {
    AlignedBuffer<T> XT, ZT, L, Z, WZ, m, s, g, YT, GT;
    AlignedBuffer<double> Zd, WZd, TD;
    std::vector<char> active;        // components with any responsibility in the tile
    std::vector<int64_t> bad_rows;   // rows of the tile with a non-finite log-likelihood

    void init(int64_t Bp, int64_t D, int64_t K, bool dense, bool full_mstep, bool tied_mstep,
              bool grad_x = false) {
        XT.resize(static_cast<std::size_t>(D * Bp));
        L.resize(static_cast<std::size_t>(K * Bp));
        m.resize(static_cast<std::size_t>(Bp));
        s.resize(static_cast<std::size_t>(Bp));
        g.resize(static_cast<std::size_t>(Bp));
        active.assign(static_cast<std::size_t>(K), 0);
        if (dense) {
            ZT.resize(static_cast<std::size_t>(D * Bp));
            TD.resize(static_cast<std::size_t>(2 * D * Bp));  // estep_tied's float64 tiles
        }
        if (full_mstep) {
            const int64_t Dp = padded_cols<T>(D);
            Z.resize(static_cast<std::size_t>(Bp * Dp));
            WZ.resize(static_cast<std::size_t>(Bp * Dp));
        }
        if (grad_x) {
            YT.resize(static_cast<std::size_t>(D * Bp));
            GT.resize(static_cast<std::size_t>(D * Bp));
        }
        if (tied_mstep) {
            const int64_t Dq = padded_cols<double>(D);
            Zd.resize(static_cast<std::size_t>(2 * Bp * Dq));
            WZd.resize(static_cast<std::size_t>(2 * Bp * Dq));
        }
    }
};

/// Row weights of a tile: g[i] = sample_weight[i0 + i] (1 without weights), 0 past n.
template <class T>
void tile_weights(const T* sample_weight, int64_t i0, int64_t n, int64_t Bp, T* g) {
    for (int64_t i = 0; i < n; ++i) g[i] = sample_weight ? sample_weight[i0 + i] : T(1);
    for (int64_t i = n; i < Bp; ++i) g[i] = T(0);
}

inline void note_bad(int64_t& bad, int64_t row) {
    if (bad < 0 || row < bad) bad = row;
}

/// Fills ws.L (K x Bp) with the tile's weights r_ik: g_i p(k | x_i) from the E-step,
/// or the given resp / labels times g_i; zero for padding rows and for rows whose
/// log-likelihood is not finite (reported through `bad`). ws.XT and ws.g must be loaded.
template <class T>
void tile_responsibilities(const Prepared<T>& prep, const Responsibilities<T>& resp, int64_t K,
                           int64_t Bp, int64_t i0, int64_t n, TileScratch<T>& ws, double& ll,
                           double& wsum, int64_t& bad) {
    T* L = ws.L.data();
    const T* g = ws.g.data();
    for (int64_t i = 0; i < n; ++i) wsum += double(g[i]);
    if (resp.source == RespSource::Given) {
        for (int64_t k = 0; k < K; ++k) {
            T* Lk = L + k * Bp;
            for (int64_t i = 0; i < n; ++i) Lk[i] = resp.resp[(i0 + i) * K + k] * g[i];
            std::fill(Lk + n, Lk + Bp, T(0));
        }
        return;
    }
    if (resp.source == RespSource::Labels) {
        std::fill(L, L + K * Bp, T(0));
        for (int64_t i = 0; i < n; ++i) L[resp.labels[i0 + i] * Bp + i] = g[i];
        return;
    }
    prep.weighted_log_prob(ws.XT.data(), ws.ZT.data(), ws.TD.data(), L);
    T* m = ws.m.data();
    T* s = ws.s.data();
    row_logsumexp(L, Bp, K, m, s, /*store_exp=*/true);
    ws.bad_rows.clear();
    // s becomes the per-row scale g_i / s_i.
    for (int64_t i = 0; i < Bp; ++i) {
        if (i >= n) {
            s[i] = T(0);
            continue;
        }
        const double lse = double(m[i]) + std::log(double(s[i]));
        if (std::isfinite(lse)) {
            ll += double(g[i]) * lse;
            s[i] = g[i] / s[i];
        } else {
            note_bad(bad, i0 + i);
            ws.bad_rows.push_back(i);
            s[i] = T(0);
        }
    }
    for (int64_t k = 0; k < K; ++k) {
        T* Lk = L + k * Bp;
        for (int64_t i = 0; i < Bp; i += lanes<T>()) vstore(Lk + i, vload(Lk + i) * vload(s + i));
    }
    // 0 · NaN is NaN: clear bad rows explicitly, their weights and their data (the
    // diagonal statistics sum r · (x - c) over every row of the tile, so a NaN or inf in
    // x would reach s1/s2 through a zero weight; the full and tied paths skip r = 0 rows)
    T* XT = ws.XT.data();
    for (int64_t i : ws.bad_rows) {
        for (int64_t k = 0; k < K; ++k) L[k * Bp + i] = T(0);
        for (int64_t d = 0; d < prep.D; ++d) XT[d * Bp + i] = T(0);
    }
    // Likewise the padding rows (x = 0) of the last tile: far from every component their
    // log-densities overflow to -inf and the log-sum-exp gives NaN, which the sums over
    // the whole tile would pick up (issue 8, found by fuzzing: float32 data at 1e3 with
    // spread 1e-30 gave nk = NaN).
    if (n < Bp)
        for (int64_t k = 0; k < K; ++k) std::fill(L + k * Bp + n, L + (k + 1) * Bp, T(0));
}

/// active[k] = whether component k has any non-zero weight in the tile (Σ|r| > 0);
/// adds Σ_i r_ik to nk when nk != nullptr.
template <class T>
void tile_active(const T* R, int64_t K, int64_t Bp, std::vector<char>& active, double* nk) {
    const Vec<T> zero = {};
    for (int64_t k = 0; k < K; ++k) {
        const T* Rk = R + k * Bp;
        Vec<T> sum = {}, mag = {};
        for (int64_t i = 0; i < Bp; i += lanes<T>()) {
            const Vec<T> r = vload(Rk + i);
            sum += r;
            mag += (r < zero) ? -r : r;
        }
        if (nk) nk[k] += double(hsum<T>(sum));
        active[k] = hsum<T>(mag) != T(0);
    }
}

/// GT (D x Bp, transposed) = -Σ_k r_ik Λ_k (x_i - μ_k) over the tile's active
/// components: ∂/∂x_i of Σ_k r_ik log N(x_i | k) with r held fixed, which is the
/// gradient of the log-likelihood w.r.t. the data when r = g · p(k | x).
/// Dense: Λ (x - μ) = U (Uᵀ (x - μ)), two triangular products vectorised over rows.
template <class T>
void tile_grad_x(const Prepared<T>& prep, const T* XT, const T* R, const std::vector<char>& active,
                 TileScratch<T>& ws) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    const int64_t D = prep.D, K = prep.K, Bp = prep.Bp, Dj = prep.Dj;
    T* G = ws.GT.data();
    std::fill(G, G + D * Bp, T(0));
    for (int64_t k = 0; k < K; ++k) {
        if (!active[k]) continue;
        const T* Rk = R + k * Bp;
        const T* mu = prep.means + k * D;
        if (prep.dense) {
            const T* U = prep.U.data() + (prep.cov == Covariance::Full ? k * Dj * Dj : 0);
            T* Z = ws.ZT.data();
            T* Y = ws.YT.data();
            for (int64_t d = 0; d < D; ++d) {
                const V m = vsplat<T>(mu[d]);
                for (int64_t i = 0; i < Bp; i += W) vstore(Z + d * Bp + i, vload(XT + d * Bp + i) - m);
            }
            for (int64_t j = 0; j < D; ++j)  // Y = Uᵀ Z: y_j = Σ_{l <= j} U[l][j] z_l
                for (int64_t i = 0; i < Bp; i += W) {
                    V a = {};
                    for (int64_t l = 0; l <= j; ++l) a += vsplat<T>(U[l * Dj + j]) * vload(Z + l * Bp + i);
                    vstore(Y + j * Bp + i, a);
                }
            for (int64_t m = 0; m < D; ++m)  // G -= r · U Y: (U y)_m = Σ_{j >= m} U[m][j] y_j
                for (int64_t i = 0; i < Bp; i += W) {
                    V a = {};
                    for (int64_t j = m; j < D; ++j) a += vsplat<T>(U[m * Dj + j]) * vload(Y + j * Bp + i);
                    vstore(G + m * Bp + i, vload(G + m * Bp + i) - vload(Rk + i) * a);
                }
        } else {
            const T* P = prep.P.data() + k * D;
            for (int64_t d = 0; d < D; ++d) {
                const V m = vsplat<T>(mu[d]), p2 = vsplat<T>(P[d] * P[d]);
                for (int64_t i = 0; i < Bp; i += W) {
                    const V z = vload(XT + d * Bp + i) - m;
                    vstore(G + d * Bp + i, vload(G + d * Bp + i) - vload(Rk + i) * (p2 * z));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// em_stats

/// A thread's running sums.
struct StatsAccum {
    double ll = 0.0, wsum = 0.0;
    int64_t bad = -1;
    std::vector<double> nk, s1, s2;
};

template <class T>
class StatsKernel {
public:
    StatsKernel(const Mixture<T>& mix, const Responsibilities<T>& resp, const T* centres,
                const T* sample_weight)
        : mix_(mix), resp_(resp), centres_(centres), sw_(sample_weight) {
        K_ = mix.K;
        D_ = mix.D;
        cov_ = mix.cov;
        prep_.init(mix, resp.source == RespSource::EStep, cov_ == Covariance::Tied);
        Bp_ = prep_.Bp;
        Dp_ = padded_cols<T>(D_);
        Dq_ = padded_cols<double>(D_);
    }

    int64_t tile_rows() const { return Bp_; }

    std::size_t s2_acc_size() const {
        switch (cov_) {
            case Covariance::Full: return static_cast<std::size_t>(K_ * Dp_ * Dp_);
            case Covariance::Tied: return static_cast<std::size_t>(Dq_ * Dq_ + K_ * K_);
            default: return static_cast<std::size_t>(K_ * D_);
        }
    }

    void init_thread(StatsAccum& acc, TileScratch<T>& ws) const {
        acc.nk.assign(K_, 0.0);
        acc.s1.assign(static_cast<std::size_t>(K_ * D_), 0.0);
        acc.s2.assign(s2_acc_size(), 0.0);
        ws.init(Bp_, D_, K_, prep_.dense && resp_.source == RespSource::EStep,
                cov_ == Covariance::Full, cov_ == Covariance::Tied);
    }

    void tile(const T* X, int64_t N, int64_t t, StatsAccum& acc, TileScratch<T>& ws) const {
        const int64_t i0 = t * Bp_;
        const int64_t n = std::min(Bp_, N - i0);
        load_transposed(X, i0, n, D_, Bp_, ws.XT.data());
        tile_weights(sw_, i0, n, Bp_, ws.g.data());
        tile_responsibilities(prep_, resp_, K_, Bp_, i0, n, ws, acc.ll, acc.wsum, acc.bad);
        T* R = ws.L.data();
        tile_active(R, K_, Bp_, ws.active, acc.nk.data());
        switch (cov_) {
            case Covariance::Full: tile_full(X, i0, n, acc, ws); break;
            case Covariance::Tied: tile_tied(X, i0, n, acc, ws); break;
            case Covariance::Diag:
            case Covariance::Spherical:
                for (int64_t k = 0; k < K_; ++k)
                    if (ws.active[k])
                        mstep_diag_component(ws.XT.data(), R + k * Bp_, Bp_, D_, centres_ + k * D_,
                                             acc.s1.data() + k * D_, acc.s2.data() + k * D_);
                break;
        }
    }

    /// Merges per-thread sums (in thread order) into out and puts s2 in its public form.
    void finish(std::vector<StatsAccum>& accs, const std::vector<char>& used, Stats& out,
                RunInfo& info) const {
        std::vector<double> s2acc(s2_acc_size(), 0.0);
        std::fill(out.nk, out.nk + K_, 0.0);
        std::fill(out.s1, out.s1 + K_ * D_, 0.0);
        out.log_likelihood = 0.0;
        out.weight_sum = 0.0;
        for (std::size_t th = 0; th < accs.size(); ++th) {
            if (!used[th]) continue;
            const StatsAccum& a = accs[th];
            out.log_likelihood += a.ll;
            out.weight_sum += a.wsum;
            if (a.bad >= 0) note_bad(info.first_bad_row, a.bad);
            for (int64_t k = 0; k < K_; ++k) out.nk[k] += a.nk[k];
            for (std::size_t j = 0; j < a.s1.size(); ++j) out.s1[j] += a.s1[j];
            for (std::size_t j = 0; j < s2acc.size(); ++j) s2acc[j] += a.s2[j];
        }
        switch (cov_) {
            case Covariance::Full:
                for (int64_t k = 0; k < K_; ++k) {
                    const double* src = s2acc.data() + k * Dp_ * Dp_;
                    double* dst = out.s2 + k * D_ * D_;
                    if (kTransposedFull) {  // blocks of mstep_full_component, row by row
                        const int64_t nb = (D_ + kSB - 1) / kSB;
                        for (int64_t lb = 0; lb < nb; ++lb)
                            for (int64_t jb = lb; jb < nb; ++jb, src += kSB2)
                                for (int a = 0; a < kSB; ++a)
                                    for (int b = 0; b < kSB; ++b) {
                                        const int64_t l = lb * kSB + a, j = jb * kSB + b;
                                        if (l <= j && j < D_)
                                            dst[l * D_ + j] = dst[j * D_ + l] = src[a * kSB + b];
                                    }
                    } else {
                        for (int64_t l = 0; l < D_; ++l)
                            for (int64_t j = l; j < D_; ++j)
                                dst[l * D_ + j] = dst[j * D_ + l] = src[l * Dp_ + j];
                    }
                }
                break;
            case Covariance::Tied: {
                // S2 = Σ_rows (ρ z zᵀ + z eᵀ + e zᵀ) + Σ_{a,k} M_ak (c_a - c_k)(c_a - c_k)ᵀ
                const double* M = s2acc.data() + Dq_ * Dq_;
                std::vector<double> diff(static_cast<std::size_t>(D_));
                for (int64_t l = 0; l < D_; ++l)
                    for (int64_t j = l; j < D_; ++j) out.s2[l * D_ + j] = s2acc[l * Dq_ + j];
                for (int64_t a = 0; a < K_; ++a)
                    for (int64_t k = 0; k < K_; ++k) {
                        const double m = M[a * K_ + k];
                        if (m == 0.0) continue;
                        for (int64_t d = 0; d < D_; ++d)
                            diff[d] = double(centres_[a * D_ + d]) - double(centres_[k * D_ + d]);
                        for (int64_t l = 0; l < D_; ++l)
                            for (int64_t j = l; j < D_; ++j) out.s2[l * D_ + j] += m * diff[l] * diff[j];
                    }
                for (int64_t l = 0; l < D_; ++l)
                    for (int64_t j = l + 1; j < D_; ++j) out.s2[j * D_ + l] = out.s2[l * D_ + j];
                break;
            }
            case Covariance::Diag:
                std::copy(s2acc.begin(), s2acc.end(), out.s2);
                break;
            case Covariance::Spherical:
                for (int64_t k = 0; k < K_; ++k) {
                    double v = 0.0;
                    for (int64_t d = 0; d < D_; ++d) v += s2acc[k * D_ + d];
                    out.s2[k] = v;
                }
                break;
        }
    }

private:
    /// Full covariance, many-register ISAs: mstep_full_component on the transposed tile
    /// (S2 accumulated in blocks, see finish()). Otherwise (16 registers do not hold its
    /// kSB² accumulators): per component, pack the rows with non-zero responsibility
    /// (exact zeros are common: responsibilities underflow for distant components),
    /// centre them at c_k and accumulate s1 and the upper triangle of s2.
    void tile_full(const T* X, int64_t i0, int64_t n, StatsAccum& acc, TileScratch<T>& ws) const {
        const T* R = ws.L.data();
        if (kTransposedFull) {
            for (int64_t k = 0; k < K_; ++k)
                if (ws.active[k])
                    mstep_full_component(ws.XT.data(), R + k * Bp_, Bp_, D_, centres_ + k * D_,
                                         ws.Z.data(), ws.WZ.data(), acc.s1.data() + k * D_,
                                         acc.s2.data() + k * Dp_ * Dp_);
            return;
        }
        T* Z = ws.Z.data();
        T* WZ = ws.WZ.data();
        for (int64_t k = 0; k < K_; ++k) {
            if (!ws.active[k]) continue;
            const T* Rk = R + k * Bp_;
            const T* ck = centres_ + k * D_;
            double* s1 = acc.s1.data() + k * D_;
            int64_t rows = 0;
            for (int64_t i = 0; i < n; ++i) {
                const T r = Rk[i];
                if (r == T(0)) continue;
                const T* x = X + (i0 + i) * D_;
                T* z = Z + rows * Dp_;
                T* wz = WZ + rows * Dp_;
                for (int64_t d = 0; d < D_; ++d) {
                    z[d] = x[d] - ck[d];
                    wz[d] = r * z[d];
                    s1[d] += double(wz[d]);
                }
                for (int64_t d = D_; d < Dp_; ++d) z[d] = wz[d] = T(0);
                ++rows;
            }
            syrk_upper_acc(Z, WZ, rows, Dp_, acc.s2.data() + k * Dp_ * Dp_);
        }
    }

    /// Tied covariance, centred per row at its dominant component k* = argmax_k r_ik.
    /// With z = x_i - c_k*, d_k = c_k* - c_k, e = Σ_k r_ik d_k and ρ = Σ_k r_ik:
    ///   Σ_k r_ik (x_i - c_k)(x_i - c_k)ᵀ = ρ z zᵀ + z eᵀ + e zᵀ + Σ_k r_ik d_k d_kᵀ.
    /// The first three terms are one rank-two update per row (instead of K rank-one
    /// updates); the last depends on the row only through r_i·, so it is accumulated as
    /// M[k*][k] += r_ik and expanded once, Σ_{a,k} M_ak (c_a - c_k)(c_a - c_k)ᵀ, in
    /// finish(). Every term is a difference of nearby quantities (z ~ the spread, e and
    /// d_k weighted by the responsibilities of other components), so the result is as
    /// accurate as per-component centring. The identity holds for weights of any sign
    /// (the autograd backward). float64: z and e mix data with float64 sums of centres.
    void tile_tied(const T* X, int64_t i0, int64_t n, StatsAccum& acc, TileScratch<T>& ws) const {
        const T* R = ws.L.data();
        for (int64_t k = 0; k < K_; ++k)
            if (ws.active[k])
                mstep_diag_component<T>(ws.XT.data(), R + k * Bp_, Bp_, D_, centres_ + k * D_,
                                        acc.s1.data() + k * D_, nullptr);
        double* A = ws.Zd.data();
        double* B = ws.WZd.data();
        double* M = acc.s2.data() + Dq_ * Dq_;  // K x K, after the D x D block
        int64_t rows = 0;
        for (int64_t i = 0; i < n; ++i) {
            int64_t top = -1;
            double best = 0.0, rho = 0.0;
            for (int64_t k = 0; k < K_; ++k) {
                const double r = double(R[k * Bp_ + i]);
                if (r == 0.0) continue;
                rho += r;
                if (top < 0 || r > best) {
                    best = r;
                    top = k;
                }
            }
            if (top < 0) continue;  // no weight on this row
            const T* ct = centres_ + top * D_;
            double* z = A + rows * Dq_;
            double* e = A + (rows + 1) * Dq_;
            std::fill(e, e + Dq_, 0.0);
            for (int64_t k = 0; k < K_; ++k) {
                const double r = double(R[k * Bp_ + i]);
                if (r == 0.0 || k == top) continue;
                M[top * K_ + k] += r;
                const T* ck = centres_ + k * D_;
                for (int64_t d = 0; d < D_; ++d) e[d] += r * (double(ct[d]) - double(ck[d]));
            }
            const T* x = X + (i0 + i) * D_;
            for (int64_t d = 0; d < D_; ++d) z[d] = double(x[d]) - double(ct[d]);
            std::fill(z + D_, z + Dq_, 0.0);
            double* zb = B + rows * Dq_;        // pairs with z: ρ z + e
            double* eb = B + (rows + 1) * Dq_;  // pairs with e: z
            for (int64_t d = 0; d < Dq_; ++d) {
                zb[d] = rho * z[d] + e[d];
                eb[d] = z[d];
            }
            rows += 2;
        }
        syrk_upper_acc<double>(A, B, rows, Dq_, acc.s2.data());
    }

    const Mixture<T>& mix_;
    const Responsibilities<T>& resp_;
    const T* centres_;
    const T* sw_;
    int64_t K_, D_, Bp_, Dp_, Dq_;
    Covariance cov_;
    Prepared<T> prep_;
};

// ---------------------------------------------------------------------------------------
// k-means helpers

/// L[k][i] = -½ Σ_d (XT[d][i] - c_kd)² for centres k0 .. k0+KB-1 and `n_rows` rows:
/// the values of estep_diag with unit precisions and zero constants, bit for bit (the
/// same differences and fused multiply-adds in the same order), but register-blocked
/// over KB centres so that each row vector is loaded once per KB centres and the
/// multiplication by the unit precision is gone: a subtraction and an FMA per term.
template <class T, int KB>
inline void sqdist_block(const T* XT, int64_t Bp, int64_t D, int64_t k0, const T* c, T* L,
                         int64_t n_rows) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    const V mhalf = vsplat<T>(T(-0.5));
    for (int64_t i0 = 0; i0 < n_rows; i0 += W * kIV) {
        V acc[KB][kIV] = {};
        for (int64_t d = 0; d < D; ++d) {
            const T* x = XT + d * Bp + i0;
            V xv[kIV];
            for (int v = 0; v < kIV; ++v) xv[v] = vload(x + v * W);
            for (int b = 0; b < KB; ++b) {
                const V m = vsplat<T>(c[(k0 + b) * D + d]);
                for (int v = 0; v < kIV; ++v) {
                    const V z = xv[v] - m;
                    acc[b][v] += z * z;
                }
            }
        }
        for (int b = 0; b < KB; ++b)
            for (int v = 0; v < kIV; ++v) vstore(L + (k0 + b) * Bp + i0 + v * W, mhalf * acc[b][v]);
    }
}

/// Squared distances of the tile's rows to `m` centres: L = -½ d² (as estep_diag with
/// unit precisions and zero constants computes it), then d2[j][i] = -2 L[j][i].
template <class T>
struct DistanceTile {
    static constexpr int kKB = kManyRegs ? 4 : 2;  // centres per register block
    int64_t D = 0, m = 0, Bp = 0;
    void init(int64_t D_, int64_t m_, int64_t Bp_) {
        D = D_;
        m = m_;
        Bp = Bp_;
    }
    void operator()(const T* XT, const T* centres, T* L, int64_t rows = -1) const {
        const int64_t n_rows = rows < 0 ? Bp : rows;
        int64_t k = 0;
        for (; k + kKB <= m; k += kKB) sqdist_block<T, kKB>(XT, Bp, D, k, centres, L, n_rows);
        for (; k < m; ++k) sqdist_block<T, 1>(XT, Bp, D, k, centres, L, n_rows);
    }
};

}  // namespace detail

using namespace detail;

// =======================================================================================
// Entry points

template <class T>
RunInfo log_prob(const T* X, int64_t N, const Mixture<T>& mix, LogProbOutput what, T* out,
                 const Exec& exec) {
    RunInfo info;
    const int64_t K = mix.K, D = mix.D;
    Prepared<T> prep;
    prep.init(mix, true, false);
    const int64_t Bp = prep.Bp;
    const int64_t ntiles = (N + Bp - 1) / Bp;
    const int nt = int(std::min<int64_t>(resolve_threads(exec.n_threads), std::max<int64_t>(ntiles, 1)));
    std::vector<TileScratch<T>> scratch(nt);
    std::vector<int64_t> bad(nt, -1);
    info.status = parallel_tiles(
        ntiles, nt, exec.cancel,
        [&](int tid) { scratch[tid].init(Bp, D, K, prep.dense, false, false); },
        [&](int64_t t, int tid) {
            TileScratch<T>& ws = scratch[tid];
            const int64_t i0 = t * Bp, n = std::min(Bp, N - i0);
            load_transposed(X, i0, n, D, Bp, ws.XT.data());
            T* L = ws.L.data();
            prep.weighted_log_prob(ws.XT.data(), ws.ZT.data(), ws.TD.data(), L);
            if (what == LogProbOutput::Weighted)
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t k = 0; k < K; ++k) out[(i0 + i) * K + k] = L[k * Bp + i];
            row_logsumexp(L, Bp, K, ws.m.data(), ws.s.data(), /*store_exp=*/false);
            for (int64_t i = 0; i < n; ++i) {
                const double lse = double(ws.m[i]) + std::log(double(ws.s[i]));
                if (!std::isfinite(lse)) note_bad(bad[tid], i0 + i);
                if (what == LogProbOutput::Sample) {
                    out[i0 + i] = T(lse);
                } else if (what == LogProbOutput::LogResp) {
                    for (int64_t k = 0; k < K; ++k)
                        out[(i0 + i) * K + k] = T(double(L[k * Bp + i]) - lse);
                }
            }
        });
    for (int64_t b : bad)
        if (b >= 0) note_bad(info.first_bad_row, b);
    return info;
}

template <class T>
RunInfo em_stats(const T* X, int64_t N, const Mixture<T>& mix, const Responsibilities<T>& resp,
                 const T* centres, const T* sample_weight, Stats& out, const Exec& exec) {
    RunInfo info;
    StatsKernel<T> kernel(mix, resp, centres, sample_weight);
    const int64_t Bp = kernel.tile_rows();
    const int64_t ntiles = (N + Bp - 1) / Bp;
    const int nt = int(std::min<int64_t>(resolve_threads(exec.n_threads), std::max<int64_t>(ntiles, 1)));
    std::vector<StatsAccum> accs(nt);
    std::vector<TileScratch<T>> scratch(nt);
    std::vector<char> used(nt, 0);
    info.status = parallel_tiles(
        ntiles, nt, exec.cancel,
        [&](int tid) {
            kernel.init_thread(accs[tid], scratch[tid]);
            used[tid] = 1;
        },
        [&](int64_t t, int tid) { kernel.tile(X, N, t, accs[tid], scratch[tid]); });
    kernel.finish(accs, used, out, info);
    return info;
}

template <class T>
RunInfo log_prob_grad_x(const T* X, int64_t N, const Mixture<T>& mix, const Responsibilities<T>& resp,
                        const T* sample_weight, T* grad, const Exec& exec) {
    RunInfo info;
    const int64_t K = mix.K, D = mix.D;
    Prepared<T> prep;
    prep.init(mix, true, false);
    const int64_t Bp = prep.Bp;
    const int64_t ntiles = (N + Bp - 1) / Bp;
    const int nt = int(std::min<int64_t>(resolve_threads(exec.n_threads), std::max<int64_t>(ntiles, 1)));
    std::vector<TileScratch<T>> scratch(nt);
    std::vector<int64_t> bad(nt, -1);
    info.status = parallel_tiles(
        ntiles, nt, exec.cancel,
        [&](int tid) { scratch[tid].init(Bp, D, K, prep.dense, false, false, /*grad_x=*/true); },
        [&](int64_t t, int tid) {
            TileScratch<T>& ws = scratch[tid];
            const int64_t i0 = t * Bp, n = std::min(Bp, N - i0);
            load_transposed(X, i0, n, D, Bp, ws.XT.data());
            tile_weights(sample_weight, i0, n, Bp, ws.g.data());
            double ll = 0.0, wsum = 0.0;
            tile_responsibilities(prep, resp, K, Bp, i0, n, ws, ll, wsum, bad[tid]);
            tile_active(ws.L.data(), K, Bp, ws.active, nullptr);
            tile_grad_x(prep, ws.XT.data(), ws.L.data(), ws.active, ws);
            for (int64_t i = 0; i < n; ++i)
                for (int64_t d = 0; d < D; ++d) grad[(i0 + i) * D + d] = ws.GT[d * Bp + i];
        });
    for (int64_t b : bad)
        if (b >= 0) note_bad(info.first_bad_row, b);
    return info;
}

template <class T>
Status kmeans_plusplus(const T* X, int64_t N, int64_t D, int64_t K, const T* sample_weight,
                       int64_t first, const double* uniforms, int n_local_trials, T* centres,
                       int64_t* indices, const Exec& exec) {
    const int64_t trials = std::max(1, n_local_trials);
    const int64_t Bp = tile_rows<T>(D, trials, false);
    const int64_t ntiles = (N + Bp - 1) / Bp;
    const int nt = int(std::min<int64_t>(resolve_threads(exec.n_threads), std::max<int64_t>(ntiles, 1)));
    auto w = [&](int64_t i) { return sample_weight ? double(sample_weight[i]) : 1.0; };

    AlignedBuffer<double> closest(static_cast<std::size_t>(N));  // squared distance to the nearest centre
    std::vector<double> tile_sum(static_cast<std::size_t>(ntiles));   // Σ_tile w·closest
    std::vector<double> tile_trial(static_cast<std::size_t>(ntiles * trials));
    // The candidates' squared distances are kept, so that the chosen one updates
    // `closest` without a second pass over X (unless that would take over 512 MB).
    const bool keep = double(N) * double(trials) * sizeof(T) <= 512.0 * (1 << 20);
    AlignedBuffer<T> trial_d2(keep ? static_cast<std::size_t>(N * trials) : 0);
    std::vector<TileScratch<T>> scratch(nt);
    std::vector<T> cand(static_cast<std::size_t>(trials * D));
    DistanceTile<T> dist_trials, dist_one;
    dist_trials.init(D, trials, Bp);
    dist_one.init(D, 1, Bp);
    auto init = [&](int tid) { scratch[tid].init(Bp, D, trials, false, false, false); };

    // Index i with cumsum(v)[i-1] < u <= cumsum(v)[i] (numpy's searchsorted 'left' on the
    // cumulative sum), using the per-tile sums so the order of additions is fixed.
    auto search = [&](double u, const std::vector<double>& tsum, auto value) -> int64_t {
        double c = 0.0;
        for (int64_t t = 0; t < ntiles; ++t) {
            if (c + tsum[t] >= u || t == ntiles - 1) {
                const int64_t i0 = t * Bp, i1 = std::min(N, i0 + Bp);
                for (int64_t i = i0; i < i1; ++i) {
                    c += value(i);
                    if (c >= u) return i;
                }
                return i1 - 1;
            }
            c += tsum[t];
        }
        return N - 1;
    };

    // The first centre was drawn by the caller (with probability ∝ w).
    auto set_centre = [&](int64_t c, int64_t idx) {
        indices[c] = idx;
        std::copy(X + idx * D, X + (idx + 1) * D, centres + c * D);
    };
    set_centre(0, first);
    // closest = d²(x, first centre), and the tile sums of w·closest
    Status st = parallel_tiles(ntiles, nt, exec.cancel, init, [&](int64_t t, int tid) {
        TileScratch<T>& ws = scratch[tid];
        const int64_t i0 = t * Bp, n = std::min(Bp, N - i0);
        load_transposed(X, i0, n, D, Bp, ws.XT.data());
        dist_one(ws.XT.data(), centres, ws.L.data());
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            closest[i0 + i] = -2.0 * double(ws.L[i]);
            sum += w(i0 + i) * closest[i0 + i];
        }
        tile_sum[t] = sum;
    });
    if (st == Status::Interrupted) return st;

    std::vector<int64_t> cand_idx(static_cast<std::size_t>(trials));
    for (int64_t c = 1; c < K; ++c) {
        double pot = 0.0;
        for (double v : tile_sum) pot += v;
        for (int64_t j = 0; j < trials; ++j) {
            const double u = uniforms[(c - 1) * trials + j] * pot;
            cand_idx[j] = search(u, tile_sum, [&](int64_t i) { return w(i) * closest[i]; });
            std::copy(X + cand_idx[j] * D, X + (cand_idx[j] + 1) * D, cand.data() + j * D);
        }
        // One pass: each candidate's potential Σ_i w_i min(closest_i, d²(x_i, candidate)).
        st = parallel_tiles(ntiles, nt, exec.cancel, init, [&](int64_t t, int tid) {
            TileScratch<T>& ws = scratch[tid];
            const int64_t i0 = t * Bp, n = std::min(Bp, N - i0);
            load_transposed(X, i0, n, D, Bp, ws.XT.data());
            dist_trials(ws.XT.data(), cand.data(), ws.L.data());
            for (int64_t j = 0; j < trials; ++j) {
                double sum = 0.0;
                for (int64_t i = 0; i < n; ++i) {
                    const double d2 = -2.0 * double(ws.L[j * Bp + i]);
                    if (keep) trial_d2[(i0 + i) * trials + j] = T(d2);
                    sum += w(i0 + i) * std::min(closest[i0 + i], d2);
                }
                tile_trial[t * trials + j] = sum;
            }
        });
        if (st == Status::Interrupted) return st;
        int64_t best = 0;
        double best_pot = std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < trials; ++j) {
            double p = 0.0;
            for (int64_t t = 0; t < ntiles; ++t) p += tile_trial[t * trials + j];
            if (p < best_pot) {
                best_pot = p;
                best = j;
            }
        }
        set_centre(c, cand_idx[best]);
        // closest = min(closest, d² to the chosen candidate): from the kept distances, or
        // (when they were too large to keep) one more pass over X
        st = parallel_tiles(ntiles, nt, exec.cancel, init, [&](int64_t t, int tid) {
            const int64_t i0 = t * Bp, n = std::min(Bp, N - i0);
            const T* d2row = nullptr;
            if (!keep) {
                TileScratch<T>& ws = scratch[tid];
                load_transposed(X, i0, n, D, Bp, ws.XT.data());
                dist_one(ws.XT.data(), centres + c * D, ws.L.data());
                d2row = ws.L.data();
            }
            double sum = 0.0;
            for (int64_t i = 0; i < n; ++i) {
                const double d2 = keep ? double(trial_d2[(i0 + i) * trials + best]) : -2.0 * double(d2row[i]);
                double& cl = closest[i0 + i];
                cl = std::min(cl, d2);
                sum += w(i0 + i) * cl;
            }
            tile_sum[t] = sum;
        });
        if (st == Status::Interrupted) return st;
    }
    return Status::Ok;
}

/// Squared Euclidean distance in the data's precision, summed in W lanes (a fixed
/// order; a serial sum is one long chain of dependent FMAs). The bounds' rounding
/// margin, (D + 8)·eps relative, covers any order of the D non-negative terms.
template <class T>
inline double sqdist(const T* x, const T* c, int64_t D) {
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    V acc = {};
    int64_t d = 0;
    for (; d + W <= D; d += W) {
        const V z = vload(x + d) - vload(c + d);
        acc += z * z;
    }
    T s = hsum<T>(acc);
    for (; d < D; ++d) {
        const T z = x[d] - c[d];
        s += z * z;
    }
    return double(s);
}

/// Lloyd's algorithm with Hamerly's bounds (Hamerly 2010): each point keeps an upper
/// bound on the distance to its centre and a lower bound on the distance to every
/// other centre; a point whose bounds already prove its label is not re-examined. The
/// labels, and so the centres, are those of plain Lloyd iterations (the bounds only
/// skip distance computations whose outcome is known), while after the first few
/// iterations most points are skipped. Bounds carry a rounding margin so that the
/// data's floating-point distances never violate them.
template <class T>
KMeansResult kmeans_lloyd(const T* X, int64_t N, int64_t D, int64_t K, const T* sample_weight,
                          T* centres, int64_t* labels, int max_iter, double tol,
                          const Exec& exec) {
    KMeansResult res;
    const int64_t Bp = tile_rows<T>(D, K, false);
    const int64_t ntiles = (N + Bp - 1) / Bp;
    const int nt = int(std::min<int64_t>(resolve_threads(exec.n_threads), std::max<int64_t>(ntiles, 1)));
    using V = Vec<T>;
    constexpr int W = lanes<T>();
    constexpr int kBlock = W * kIV;
    DistanceTile<T> dist;
    dist.init(D, K, Bp);
    auto w = [&](int64_t i) { return sample_weight ? double(sample_weight[i]) : 1.0; };
    // relative error of a distance computed in T: d² sums D non-negative rounded terms
    const double slack = (double(D) + 8.0) * double(std::numeric_limits<T>::epsilon());
    AlignedBuffer<double> upper(static_cast<std::size_t>(N)), lower(static_cast<std::size_t>(N));
    std::vector<double> half_sep(static_cast<std::size_t>(K)), shift(static_cast<std::size_t>(K));
    int64_t far = 0;     // the centre that moved most, and the largest move of the others
    double far2 = 0.0;
    std::vector<TileScratch<T>> scratch(nt);
    // Incremental centre sums: cluster k's members are summed as Σ w (x - a_k) around a
    // fixed anchor a_k (its initial centre; a relocated cluster's new point), so that an
    // iteration only touches the rows whose cluster changed instead of reading all of X
    // (after the first few iterations, few rows move). owner[i] is the cluster whose sums
    // hold row i; `members` counts each cluster's rows of positive weight, so that an
    // emptied cluster is recognised exactly whatever the rounding of its weight sum.
    struct Acc {
        std::vector<T> best, second, lab;  // assign_rows' per-row results
        std::vector<double> sums, counts;
        std::vector<int64_t> members;
        std::vector<int64_t> todo;
        int64_t changed = 0;
        double inertia = 0.0;
    };
    std::vector<Acc> acc(nt);
    std::vector<int64_t> owner(static_cast<std::size_t>(N), -1);
    std::vector<T> anchor(centres, centres + K * D);
    for (int64_t i = 0; i < N; ++i) labels[i] = -1;
    auto init_thread = [&](int tid) {
        scratch[tid].init(Bp, D, K, false, false, false);
        acc[tid].sums.assign(static_cast<std::size_t>(K * D), 0.0);
        acc[tid].counts.assign(static_cast<std::size_t>(K), 0.0);
        acc[tid].members.assign(static_cast<std::size_t>(K), 0);
        acc[tid].todo.reserve(static_cast<std::size_t>(Bp));
        for (auto* v : {&acc[tid].best, &acc[tid].second, &acc[tid].lab})
            v->assign(static_cast<std::size_t>(Bp), T(0));
        acc[tid].changed = 0;
        acc[tid].inertia = 0.0;
    };
    // moves row i's contribution from cluster `from` (-1: none) to `to` in (sums, counts,
    // members)
    auto move_row = [&](int64_t row, int64_t from, int64_t to, double* sums_, double* counts_,
                        int64_t* members_) {
        const double wi = w(row);
        const T* x = X + row * D;
        if (from >= 0) {
            const T* a = anchor.data() + from * D;
            double* s = sums_ + from * D;
            for (int64_t d = 0; d < D; ++d) s[d] -= wi * double(x[d] - a[d]);
            counts_[from] -= wi;
            if (wi > 0.0) --members_[from];
        }
        const T* a = anchor.data() + to * D;
        double* s = sums_ + to * D;
        for (int64_t d = 0; d < D; ++d) s[d] += wi * double(x[d] - a[d]);
        counts_[to] += wi;
        if (wi > 0.0) ++members_[to];
    };

    // Full distances for the listed rows of a tile (compacted into one transposed
    // block): nearest centre (lowest index on ties) and the bounds.
    auto assign_rows = [&](TileScratch<T>& ws, Acc& a, int64_t i0, const std::vector<int64_t>& rows) {
        const int64_t m = int64_t(rows.size());
        if (m == 0) return;
        const int64_t padded = round_up(m, kBlock);
        T* XT = ws.XT.data();
        for (int64_t j = 0; j < m; ++j) {
            const T* x = X + (i0 + rows[j]) * D;
            for (int64_t d = 0; d < D; ++d) XT[d * Bp + j] = x[d];
        }
        for (int64_t d = 0; d < D; ++d) std::fill(XT + d * Bp + m, XT + d * Bp + padded, T(0));
        dist(XT, centres, ws.L.data(), padded);
        const T* L = ws.L.data();
        // nearest (lowest index on ties) and second-nearest centre, W rows at a time
        // without branches: these scans cost as much as the distances when not vectorised.
        // The label is carried as a T (exact: K is far below 2^24, the L tile holds K·Bp)
        T* best = a.best.data();
        T* second = a.second.data();
        T* lab = a.lab.data();
        for (int64_t j0 = 0; j0 < padded; j0 += W) {
            V b = vload(L + j0), s2 = vsplat<T>(-std::numeric_limits<T>::infinity()), l = {};
            for (int64_t k = 1; k < K; ++k) {
                const V v = vload(L + k * Bp + j0);
                const auto gt = v > b;
                s2 = gt ? b : ((v > s2) ? v : s2);
                b = gt ? v : b;
                l = gt ? vsplat<T>(T(k)) : l;
            }
            vstore(best + j0, b);
            vstore(second + j0, s2);
            vstore(lab + j0, l);
        }
        for (int64_t j = 0; j < m; ++j) {
            const int64_t row = i0 + rows[j], k = int64_t(lab[j]);
            if (labels[row] != k) ++a.changed;
            labels[row] = k;
            upper[row] = std::sqrt(-2.0 * double(best[j])) * (1.0 + slack);
            lower[row] = K > 1 ? std::sqrt(std::max(-2.0 * double(second[j]), 0.0)) * (1.0 - slack)
                               : std::numeric_limits<double>::infinity();
        }
    };

    // One assignment pass (bounds first, full distances only where they do not decide),
    // then the changes of the anchored sums for the rows whose cluster changed.
    auto assign_pass = [&](bool use_bounds) {
        return parallel_tiles(ntiles, nt, exec.cancel, init_thread, [&](int64_t t, int tid) {
            TileScratch<T>& ws = scratch[tid];
            Acc& a = acc[tid];
            const int64_t i0 = t * Bp, n = std::min(Bp, N - i0);
            a.todo.clear();
            for (int64_t i = 0; i < n; ++i) {
                const int64_t row = i0 + i, lab = labels[row];
                if (!use_bounds || lab < 0) {
                    a.todo.push_back(i);
                    continue;
                }
                // the bounds follow the centres' last move (applied here, in parallel)
                upper[row] += shift[lab];
                lower[row] -= (lab == far) ? far2 : shift[far];
                const double m = std::max(half_sep[lab], lower[row]);
                if (upper[row] <= m) continue;
                upper[row] = std::sqrt(sqdist(X + row * D, centres + lab * D, D)) * (1.0 + slack);
                if (upper[row] > m) a.todo.push_back(i);
            }
            assign_rows(ws, a, i0, a.todo);
            for (int64_t i = 0; i < n; ++i) {
                const int64_t row = i0 + i, lab = labels[row];
                if (owner[row] == lab) continue;
                move_row(row, owner[row], lab, a.sums.data(), a.counts.data(), a.members.data());
                owner[row] = lab;
            }
        });
    };
    // Exact squared distance of every point to its centre (empty-cluster relocation and
    // the final inertia), optionally relabelling with full distances first.
    AlignedBuffer<T> mind;
    auto exact_pass = [&](bool relabel) {
        if (mind.size() == 0) mind.resize(static_cast<std::size_t>(N));
        return parallel_tiles(ntiles, nt, exec.cancel, init_thread, [&](int64_t t, int tid) {
            Acc& a = acc[tid];
            const int64_t i0 = t * Bp, n = std::min(Bp, N - i0);
            if (relabel) {
                a.todo.resize(static_cast<std::size_t>(n));
                std::iota(a.todo.begin(), a.todo.end(), int64_t(0));
                assign_rows(scratch[tid], a, i0, a.todo);
            }
            for (int64_t i = 0; i < n; ++i) {
                const int64_t row = i0 + i;
                const double d2 = sqdist(X + row * D, centres + labels[row] * D, D);
                mind[row] = T(d2);
                a.inertia += w(row) * d2;
            }
        });
    };
    auto update_separation = [&]() {
        for (int64_t j = 0; j < K; ++j) {
            double best = std::numeric_limits<double>::infinity();
            for (int64_t k = 0; k < K; ++k)
                if (k != j) best = std::min(best, sqdist(centres + j * D, centres + k * D, D));
            half_sep[j] = 0.5 * std::sqrt(best) * (1.0 - slack);
        }
    };

    bool strict = false;
    // the anchored sums of the current owners (persistent across iterations)
    std::vector<double> sums(static_cast<std::size_t>(K * D), 0.0), counts(static_cast<std::size_t>(K), 0.0);
    std::vector<int64_t> members(static_cast<std::size_t>(K), 0);
    std::vector<double> next(static_cast<std::size_t>(K * D));
    std::vector<T> old(static_cast<std::size_t>(K * D));
    update_separation();
    for (int it = 0; it < max_iter; ++it) {
        if (assign_pass(it > 0) == Status::Interrupted) {
            res.status = Status::Interrupted;
            return res;
        }
        int64_t changed = 0;
        for (const Acc& a : acc) {  // thread order: deterministic
            if (a.counts.empty()) continue;
            for (std::size_t j = 0; j < sums.size(); ++j) sums[j] += a.sums[j];
            for (int64_t k = 0; k < K; ++k) {
                counts[k] += a.counts[k];
                members[k] += a.members[k];
            }
            changed += a.changed;
        }
        for (int64_t k = 0; k < K; ++k)
            if (members[k] == 0) {  // no row of positive weight: exactly empty
                counts[k] = 0.0;
                std::fill(sums.begin() + k * D, sums.begin() + (k + 1) * D, 0.0);
            }
        // Empty clusters take the points farthest from their centres (scikit-learn's
        // relocation), largest distance first, ties by row; that needs exact distances.
        std::vector<int64_t> empty;
        for (int64_t k = 0; k < K; ++k)
            if (!(counts[k] > 0.0)) empty.push_back(k);
        for (int64_t k = 0; k < K; ++k)
            for (int64_t d = 0; d < D; ++d)
                next[k * D + d] = counts[k] > 0.0
                                      ? double(anchor[k * D + d]) + sums[k * D + d] / counts[k]
                                      : double(centres[k * D + d]);
        if (!empty.empty()) {
            if (exact_pass(false) == Status::Interrupted) {
                res.status = Status::Interrupted;
                return res;
            }
            std::vector<int64_t> order(static_cast<std::size_t>(N));
            std::iota(order.begin(), order.end(), int64_t(0));
            // Every point exactly on its centre (duplicate centres, fewer distinct points
            // than clusters): nothing to relocate; the empty clusters join the heaviest
            // one (the first of equal weight), as the reference does (issue 8: found by
            // fuzzing; they used to take row 0 whatever its cluster).
            bool all_on_centre = true;
            for (int64_t i = 0; i < N && all_on_centre; ++i) all_on_centre = !(mind[i] > T(0));
            const int64_t m = all_on_centre ? 0 : std::min<int64_t>(int64_t(empty.size()), N);
            if (all_on_centre) {
                const int64_t heavy = std::max_element(counts.begin(), counts.end()) - counts.begin();
                for (int64_t k : empty)
                    for (int64_t d = 0; d < D; ++d) next[k * D + d] = next[heavy * D + d];
            }
            std::partial_sort(order.begin(), order.begin() + m, order.end(),
                              [&](int64_t a, int64_t b) {
                                  return mind[a] > mind[b] || (mind[a] == mind[b] && a < b);
                              });
            for (int64_t e = 0; e < m; ++e) {
                const int64_t row = order[e], from = owner[row], to = empty[e];
                const double wi = w(row);
                const T* x = X + row * D;
                if (counts[from] - wi > 0.0) {
                    // the row moves to the empty cluster, re-anchored at the row itself
                    std::copy(x, x + D, anchor.begin() + to * D);
                    std::fill(sums.begin() + to * D, sums.begin() + (to + 1) * D, 0.0);
                    counts[to] = 0.0;
                    members[to] = 0;
                    move_row(row, from, to, sums.data(), counts.data(), members.data());
                    owner[row] = to;
                    for (int64_t d = 0; d < D; ++d)
                        next[from * D + d] = double(anchor[from * D + d]) + sums[from * D + d] / counts[from];
                }
                // (otherwise the row would empty its own cluster: it stays there, and the
                // empty cluster only takes its position)
                for (int64_t d = 0; d < D; ++d) next[to * D + d] = double(x[d]);
            }
        }
        std::copy(centres, centres + K * D, old.begin());
        double shift_total = 0.0;
        for (int64_t j = 0; j < K * D; ++j) {
            const double delta = next[j] - double(centres[j]);
            shift_total += delta * delta;
            centres[j] = T(next[j]);
        }
        res.n_iter = it + 1;
        if (changed == 0) {
            strict = true;
            break;
        }
        if (shift_total <= tol) break;
        // How far each centre moved (of the values the distances will use): the next
        // assignment pass moves every point's bounds by it.
        far = 0;
        for (int64_t k = 0; k < K; ++k) {
            shift[k] = std::sqrt(sqdist(centres + k * D, old.data() + k * D, D)) * (1.0 + slack);
            if (shift[k] > shift[far]) far = k;
        }
        far2 = 0.0;
        for (int64_t k = 0; k < K; ++k)
            if (k != far) far2 = std::max(far2, shift[k]);
        update_separation();
    }
    res.converged = strict || res.n_iter < max_iter;
    // Labels consistent with the final centres (and the inertia of those labels).
    if (exact_pass(!strict) == Status::Interrupted) {
        res.status = Status::Interrupted;
        return res;
    }
    res.inertia = 0.0;
    for (const Acc& a : acc) res.inertia += a.inertia;
    return res;
}

#define GMMFAST_INSTANTIATE(T)                                                                 \
    template RunInfo log_prob<T>(const T*, int64_t, const Mixture<T>&, LogProbOutput, T*,     \
                                 const Exec&);                                                 \
    template RunInfo em_stats<T>(const T*, int64_t, const Mixture<T>&,                         \
                                 const Responsibilities<T>&, const T*, const T*, Stats&,       \
                                 const Exec&);                                                 \
    template Status kmeans_plusplus<T>(const T*, int64_t, int64_t, int64_t, const T*,         \
                                       int64_t, const double*, int, T*, int64_t*, const Exec&); \
    template KMeansResult kmeans_lloyd<T>(const T*, int64_t, int64_t, int64_t, const T*, T*,   \
                                          int64_t*, int, double, const Exec&);                 \
    template RunInfo log_prob_grad_x<T>(const T*, int64_t, const Mixture<T>&,                  \
                                        const Responsibilities<T>&, const T*, T*, const Exec&);

GMMFAST_INSTANTIATE(float)
GMMFAST_INSTANTIATE(double)
#undef GMMFAST_INSTANTIATE

}  // namespace GMMFAST_ISA_NS
}  // namespace gmmfast
