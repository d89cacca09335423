// Device building blocks shared by the kernels: the E-step of one row tile.
//
//   dense_sqnorm      full/tied: ‖(x_r - μ)ᵀ U‖² for the 64 rows of a tile and ONE
//                     component (optionally keeping y_r = (x_r - μ)ᵀ U, for grad_x)
//   diag_sqnorm_tile  diag/spherical: Σ_d ((x_rd - μ_cd) p_cd)² for 64 rows x 64
//                     components
//
// Both centre directly, (x - μ) then the product, as the CPU kernels do: the expanded
// form x·p - μ·p cancels catastrophically in float32 far from the origin.
//
// Both must be called by all 256 threads of the block (they contain __syncthreads and
// full-warp shuffles) with block-uniform arguments, and both end with __syncthreads(),
// so their shared memory may be reused right after they return.
#pragma once

#include "internal.cuh"

namespace gmmfast {
namespace cuda {
namespace detail {

template <class T>
struct DenseEstepSmem {
    static constexpr int LT = Inner<T>::value;
    T Z[LT][kRows + 1];  // Z[l - l0][r] = x[row0 + r][l] - μ[l]  (+1: no bank conflicts on store)
    T U[LT][kCols];      // U[l - l0][j - j0] = U[l][j] for l <= j, else 0
    T sq[kRows];         // result: squared norms of the tile's rows
};

/// sm.sq[r] = ‖(x_{row0+r} - μ)ᵀ U‖² for r < 64 (rows >= N give 0) where U is D x D,
/// row-major, upper triangular (entries below the diagonal are not read). When Y is not
/// null, also Y[r * D + j] = ((x_{row0+r} - μ)ᵀ U)_j for r < 64, j < D (rows >= N: 0).
///
/// y = zᵀU is computed in column tiles j0 .. j0+63 as a small GEMM over the features
/// l < min(D, j0 + 64) (U[l][j] = 0 for l > j, so later l add nothing), staged through
/// shared memory LT features at a time. Each thread accumulates its 4 x 4 micro-tile
/// (rows ty+16i, columns j0+tx+16j) with explicit fma, then the squares of its 4
/// columns, then the half-warp sums over tx; the 16 partial sums of a row are added in a
/// fixed butterfly order, the column tiles in increasing j0: deterministic.
template <class T>
__device__ void dense_sqnorm(const T* __restrict__ X, int64_t N, int64_t D, int64_t row0,
                             const T* __restrict__ mu, const T* __restrict__ U,
                             DenseEstepSmem<T>& sm, T* Y) {
    constexpr int LT = Inner<T>::value;
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    T rowsq[kMicro] = {};
    for (int64_t j0 = 0; j0 < D; j0 += kCols) {
        T acc[kMicro][kMicro] = {};
        const int64_t lend = (D < j0 + kCols) ? D : j0 + kCols;
        for (int64_t l0 = 0; l0 < lend; l0 += LT) {
            // Z chunk: LT features x 64 rows; consecutive threads read consecutive
            // features of one row (coalesced along the row).
            for (int e = tid; e < LT * kRows; e += kThreads) {
                const int ll = e % LT, r = e / LT;
                const int64_t l = l0 + ll, row = row0 + r;
                T v = T(0);
                if (row < N && l < D) v = X[row * D + l] - mu[l];
                sm.Z[ll][r] = v;
            }
            // U chunk: LT rows of U x 64 columns, zero below the diagonal and past D.
            for (int e = tid; e < LT * kCols; e += kThreads) {
                const int jj = e % kCols, ll = e / kCols;
                const int64_t l = l0 + ll, j = j0 + jj;
                T v = T(0);
                if (l < D && j < D && l <= j) v = U[l * D + j];
                sm.U[ll][jj] = v;
            }
            __syncthreads();
#pragma unroll
            for (int ll = 0; ll < LT; ++ll) {
                T a[kMicro], b[kMicro];
#pragma unroll
                for (int i = 0; i < kMicro; ++i) a[i] = sm.Z[ll][ty + kSide * i];
#pragma unroll
                for (int j = 0; j < kMicro; ++j) b[j] = sm.U[ll][tx + kSide * j];
#pragma unroll
                for (int i = 0; i < kMicro; ++i)
#pragma unroll
                    for (int j = 0; j < kMicro; ++j) acc[i][j] = dfma(a[i], b[j], acc[i][j]);
            }
            __syncthreads();  // before the next chunk overwrites sm.Z / sm.U
        }
        if (Y != nullptr) {
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int64_t col = j0 + tx + kSide * j;
                    if (col < D) Y[int64_t(ty + kSide * i) * D + col] = acc[i][j];
                }
        }
        // Columns past D hold exact zeros (U was zero-padded), so they add nothing.
#pragma unroll
        for (int i = 0; i < kMicro; ++i) {
            T p = T(0);
#pragma unroll
            for (int j = 0; j < kMicro; ++j) p = dfma(acc[i][j], acc[i][j], p);
            // Sum over the 16 threads sharing ty (one half-warp); every lane of the warp
            // takes part (the loop bounds are block-uniform).
#pragma unroll
            for (int off = kSide / 2; off > 0; off /= 2) p += __shfl_xor_sync(0xffffffffu, p, off);
            rowsq[i] += p;
        }
    }
    if (tx == 0) {
#pragma unroll
        for (int i = 0; i < kMicro; ++i) sm.sq[ty + kSide * i] = rowsq[i];
    }
    __syncthreads();  // sm.sq (and Y, in global memory) visible to the whole block
}

template <class T>
struct DiagEstepSmem {
    static constexpr int LT = Inner<T>::value;
    T X[LT][kRows + 1];  // X[d - d0][r] = x[row0 + r][d]
    T M[LT][kCols + 1];  // M[d - d0][c] = μ[c0 + c][d]
    T P[LT][kCols + 1];  // P[d - d0][c] = p[c0 + c][d] (spherical: p[c0 + c])
};

/// acc[i][j] = Σ_d ((x[row0 + ty+16i][d] - μ[c0 + tx+16j][d]) · p[c0 + tx+16j][d])²
/// for the 64 rows x 64 components of the tile; out-of-range rows and components give
/// values that callers must ignore. P is K * D (diag) or K (spherical).
template <class T>
__device__ void diag_sqnorm_tile(const T* __restrict__ X, int64_t N, int64_t D, int64_t row0,
                                 int64_t K, int64_t c0, const T* __restrict__ means,
                                 const T* __restrict__ P, bool spherical, DiagEstepSmem<T>& sm,
                                 T (&acc)[kMicro][kMicro]) {
    constexpr int LT = Inner<T>::value;
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc[i][j] = T(0);
    for (int64_t d0 = 0; d0 < D; d0 += LT) {
        for (int e = tid; e < LT * kRows; e += kThreads) {
            const int dd = e % LT, r = e / LT;
            const int64_t d = d0 + dd, row = row0 + r;
            sm.X[dd][r] = (row < N && d < D) ? X[row * D + d] : T(0);
        }
        for (int e = tid; e < LT * kCols; e += kThreads) {
            const int dd = e % LT, c = e / LT;
            const int64_t d = d0 + dd, comp = c0 + c;
            const bool in = comp < K && d < D;
            sm.M[dd][c] = in ? means[comp * D + d] : T(0);
            sm.P[dd][c] = in ? (spherical ? P[comp] : P[comp * D + d]) : T(0);
        }
        __syncthreads();
#pragma unroll
        for (int dd = 0; dd < LT; ++dd) {
            T x[kMicro], m[kMicro], p[kMicro];
#pragma unroll
            for (int i = 0; i < kMicro; ++i) x[i] = sm.X[dd][ty + kSide * i];
#pragma unroll
            for (int j = 0; j < kMicro; ++j) {
                m[j] = sm.M[dd][tx + kSide * j];
                p[j] = sm.P[dd][tx + kSide * j];
            }
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const T z = (x[i] - m[j]) * p[j];
                    acc[i][j] = dfma(z, z, acc[i][j]);
                }
        }
        __syncthreads();
    }
}

}  // namespace detail
}  // namespace cuda
}  // namespace gmmfast
