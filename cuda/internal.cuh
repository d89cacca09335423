// Internal definitions shared by the CUDA translation units: tile geometry, workspace
// layouts and chunking plans (host), and small device helpers.
//
// Tile geometry (every tile kernel):
//   256 threads = 16 x 16, tid = threadIdx.x, tx = tid % 16, ty = tid / 16.
//   A block works on a tile of kRows = 64 rows (samples) by kCols = 64 columns (features
//   or components). Each thread owns a 4 x 4 micro-tile of it: rows ty + 16 i and
//   columns tx + 16 j (i, j in 0..3). The strided ownership makes the 16 threads of a
//   half-warp read 16 consecutive shared-memory words (no bank conflicts) and the two
//   half-warps read a broadcast word.
//   The 16 threads sharing a ty are lanes 16 * (ty % 2) .. + 15 of one warp, so a
//   __shfl_xor_sync over offsets 8, 4, 2, 1 reduces over tx within that half-warp.
//   Inner dimensions (features of X, components) are staged through shared memory in
//   chunks of Inner<T>::value (16 for float, 8 for double, to keep every kernel's static
//   shared memory under 48 KiB).
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "gmmfast_cuda.hpp"

namespace gmmfast {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;  // threads per block (16 x 16)
constexpr int kSide = 16;      // threads per side of the 16 x 16 layout
constexpr int kMicro = 4;      // micro-tile: 4 x 4 per thread
constexpr int kRows = 64;      // rows of X per row tile  (= kSide * kMicro)
constexpr int kCols = 64;      // columns per column tile (= kSide * kMicro)
static_assert(kRows == kSide * kMicro && kCols == kSide * kMicro && kThreads == kSide * kSide,
              "tile geometry");

template <class T>
struct Inner {
    static constexpr int value = sizeof(T) == 4 ? 16 : 8;
};

// Chunking of the statistics pass (see StatsPlan). Fixed constants, so the chunk
// boundaries -- and with them the rounding -- never depend on the GPU. The two macros
// exist only so that the host emulation (cuda/emu) can force several row tiles per
// chunk / per grad_x block on small test problems; builds never set them.
#ifndef GMMFAST_CUDA_TARGET_BLOCKS
#define GMMFAST_CUDA_TARGET_BLOCKS 2048
#endif
#ifndef GMMFAST_CUDA_MAX_GRAD_BLOCKS
#define GMMFAST_CUDA_MAX_GRAD_BLOCKS 4096
#endif
constexpr int64_t kTargetBlocks = GMMFAST_CUDA_TARGET_BLOCKS;  // enough blocks for any current GPU
constexpr int64_t kPartialBudgetBytes = int64_t(64) << 20;     // all chunks' partial statistics
constexpr int64_t kGradScratchBudgetBytes = int64_t(64) << 20;  // grad_x (full/tied) Y scratch
constexpr int64_t kMaxGradBlocks = GMMFAST_CUDA_MAX_GRAD_BLOCKS;

// ---------------------------------------------------------------------------- host

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline bool is_dense(Covariance c) { return c == Covariance::Full || c == Covariance::Tied; }

/// Throws std::runtime_error when the last launch (or an earlier asynchronous error)
/// failed. cudaGetLastError does not synchronise.
void check_launch(const char* what);
/// cudaSetDevice(device), throwing on failure.
void set_device(int device);
/// Throws std::invalid_argument(what) when !ok.
void require(bool ok, const char* what);
/// N >= 0, D >= 1, K >= 1 and small enough that every int64 index product is safe.
void check_sizes(int64_t N, int64_t D, int64_t K);

/// Bump allocator over the caller's workspace; every section is 256-byte aligned. The
/// same code computes the size (base == nullptr) and the pointers, so they agree.
struct Layout {
    char* base = nullptr;
    std::size_t bytes = 0;
    template <class U>
    U* take(int64_t count) {
        const std::size_t off = bytes;
        const std::size_t n = std::size_t(count > 0 ? count : 0) * sizeof(U);
        bytes += (n + 255) / 256 * 256;
        return base ? reinterpret_cast<U*>(base + off) : nullptr;
    }
};

/// Size of the type-form s2 / precision Cholesky: full K*D*D, tied D*D, diag K*D, sph K.
__host__ __device__ inline int64_t param_count(Covariance cov, int64_t K, int64_t D) {
    switch (cov) {
        case Covariance::Full: return K * D * D;
        case Covariance::Tied: return D * D;
        case Covariance::Diag: return K * D;
        default: return K;
    }
}

/// How the statistics pass splits its work. Rows are cut into row tiles of kRows; the
/// row tiles into `nchunks` contiguous chunks of `tiles_per_chunk` tiles. One block
/// handles one chunk and (full) one component and one upper-triangular 64 x 64 tile of
/// S2, (tied) one S2 tile for all components, (diag/spherical) one group of 64
/// components. Each block writes its float64 sums into the chunk's private "slab" of the
/// workspace: [nk: K][s1: K*D][s2 partial: s2_count]; a reduction kernel then adds the
/// slabs in chunk order. Every value is a function of (cov, N, D, K) only.
struct StatsPlan {
    int64_t row_tiles = 0;        // ceil(N / kRows)
    int64_t tiles_per_chunk = 1;
    int64_t nchunks = 1;
    int64_t col_tiles = 1;        // ceil(D / kCols)
    int64_t out_tiles = 1;        // full/tied: col_tiles * (col_tiles + 1) / 2 upper S2 tiles
    int64_t groups = 1;           // diag/spherical: ceil(K / kCols)
    int64_t blocks_per_chunk = 1;
    int64_t s2_count = 0;         // doubles of the s2 partial per chunk
    int64_t slab = 0;             // doubles per chunk
    int64_t blocks = 0;           // grid size of the statistics kernel

    StatsPlan(Covariance cov, int64_t N, int64_t D, int64_t K) {
        row_tiles = ceil_div(N, kRows);
        col_tiles = ceil_div(D, kCols);
        out_tiles = col_tiles * (col_tiles + 1) / 2;
        groups = ceil_div(K, kCols);
        switch (cov) {
            case Covariance::Full:
                blocks_per_chunk = out_tiles * K;
                s2_count = K * D * D;  // square per component; only tiles on/above the diagonal are written
                break;
            case Covariance::Tied:
                blocks_per_chunk = out_tiles;
                s2_count = D * D;
                break;
            default:
                blocks_per_chunk = groups;
                s2_count = K * D;  // spherical: per-feature sums, added up by the reduction
                break;
        }
        slab = K + K * D + s2_count;
        int64_t want = ceil_div(kTargetBlocks, blocks_per_chunk);
        const int64_t mem_cap = kPartialBudgetBytes / (slab * int64_t(sizeof(double)));
        if (want > mem_cap) want = mem_cap;
        if (want > row_tiles) want = row_tiles;
        if (want < 1) want = 1;
        tiles_per_chunk = row_tiles > 0 ? ceil_div(row_tiles, want) : 1;
        nchunks = row_tiles > 0 ? ceil_div(row_tiles, tiles_per_chunk) : 1;
        blocks = nchunks * blocks_per_chunk;
    }
};

/// Inputs and outputs of the row log-normaliser pass (one block per row tile, loop over
/// all components with an online log-sum-exp). Every output pointer is optional.
template <class T>
struct RowLseArgs {
    const T* X = nullptr;
    int64_t N = 0, D = 0, K = 0;
    Covariance cov = Covariance::Full;
    const T* means = nullptr;  // K * D
    const T* prec = nullptr;   // param_count(cov, K, D)
    const T* cst = nullptr;    // K: log π_k + log det U_k - D/2 log 2π (prepare kernel)
    const T* sample_weight = nullptr;  // N or nullptr (g = 1); read when rowscale != nullptr
    T* L_out = nullptr;        // N * K: log π_k + log N(x_i | k)
    T* sample_out = nullptr;   // N: log p(x_i) in T
    double* lse_out = nullptr; // N: log p(x_i) in float64
    T* rowmax = nullptr;       // N: max_k L_ik
    T* rowscale = nullptr;     // N: g_i / Σ_k exp(L_ik - max), 0 for non-finite rows
    double* ll_part = nullptr; // row_tiles: Σ_{finite rows} g log p
    double* w_part = nullptr;  // row_tiles: Σ g
    int* bad_part = nullptr;   // row_tiles: 1 when the tile has a non-finite row
};

template <class T>
void launch_prepare(cudaStream_t stream, Covariance cov, int64_t D, int64_t K, const T* log_weights,
                    const T* prec, T* cst);
template <class T>
void launch_row_lse(cudaStream_t stream, const RowLseArgs<T>& a);
/// out[0] = NaN if any bad_part, else Σ ll_part (0 when ll_part == nullptr);
/// out[1] = Σ w_part (or double(count) when w_part == nullptr). Fixed-order sums.
template <class T>
void launch_reduce_scalars(cudaStream_t stream, const double* ll_part, const T* w_part_T,
                           const double* w_part, const int* bad_part, int64_t count, double* out);

// -------------------------------------------------------------------------- device

#ifdef __CUDACC__

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dfma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double dfma(double a, double b, double c) { return fma(a, b, c); }

template <class T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() { return -CUDART_INF_F; }
template <>
__device__ __forceinline__ double neg_inf<double>() { return -CUDART_INF; }

/// Online log-sum-exp: (m, s) stands for s · e^m, with m the largest term seen (-inf
/// before any) and s >= 1 once a finite term was seen. Adds e^v.
///   v = -inf adds nothing (a component of weight 0); v = NaN makes s NaN (propagates);
///   v = +inf makes m = +inf (the row is then reported as non-finite).
template <class T>
__device__ __forceinline__ void lse_add(T& m, T& s, T v) {
    if (v > m) {
        s = s * dexp(m - v) + T(1);  // m = -inf: s * 0 + 1 (NaN s stays NaN)
        m = v;
    } else if (v != neg_inf<T>()) {
        s += dexp(v - m);
    }
}

/// Merges (m2, s2) into (m, s) (same representation as lse_add).
template <class T>
__device__ __forceinline__ void lse_merge(T& m, T& s, T m2, T s2) {
    if (m2 > m) {
        s = s * dexp(m - m2) + s2;
        m = m2;
    } else if (m2 != neg_inf<T>()) {
        s += s2 * dexp(m2 - m);
    } else {
        s += s2;  // no finite term in (m2, s2): s2 is 0, or NaN when a NaN was seen
    }
}

#endif  // __CUDACC__

}  // namespace detail
}  // namespace cuda
}  // namespace gmmfast
