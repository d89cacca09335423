// grad_x: out[i, :] = -Σ_k w_ik Λ_k (x_i - μ_k), the data term of the autograd
// backward (cpp/include/gmmfast/grad.hpp), with w_ik = g_i p(k | x_i) (after the row
// pass of estep.cu) or w_ik = g_i resp_ik (given, any sign).
//
// Each output row depends only on its own input row, so determinism is automatic; the
// components are added in order k = 0, 1, ... (dense) or group by group (diag).
//
//   grad_dense_kernel (full, tied). A fixed grid of G blocks (G = min(row tiles, a cap
//   from the workspace budget)) strides over the 64-row tiles. Per tile and component k:
//     1. dense_sqnorm computes y_r = (x_r - μ_k)ᵀ U_k into the block's private scratch
//        Y (64 x D, global memory) and its squared norms (for the E-step weight);
//     2. threads 0..63: Ws[r] = w_rk;
//     3. (Λ_k (x_r - μ_k))_m = (U_k y_r)_m = Σ_{j >= m} U_k[m][j] y_rj: per 64-column
//        tile m0, a GEMM over j >= m0 staged through shared memory (Ys = y, Ut = Uᵀ
//        restricted to j >= m); then out[r][m] = (k == 0 ? 0 : out[r][m]) - Ws[r] · acc,
//        read and written by the thread that owns (r, m) for every k.
//   grad_diag_kernel (diag, spherical). One block per 64-row tile. Per group of 64
//   components: the weight tile Wt[r][c] in shared memory (diag_sqnorm_tile + row pass,
//   or given); then per 64-feature tile, thread (ty, tx) owns rows ty + 16 i and
//   features tx + 16 j: acc = Σ_c Wt[r][c] p_cd² (x_rd - μ_cd), over the group's
//   components staged Inner<T> at a time; out = (first group ? 0 : out) - acc.
//
// As on the CPU, a row with w = 0 still multiplies Λ(x - μ): a NaN row gives NaN
// gradients (NaN propagates, as torch users expect), a finite row with w = 0 gives 0.
#include "tiles.cuh"

namespace gmmfast {
namespace cuda {
namespace detail {
namespace {

template <class T>
struct GradArgs {
    const T* X = nullptr;
    int64_t N = 0, D = 0, K = 0;
    Covariance cov = Covariance::Full;
    const T* means = nullptr;
    const T* prec = nullptr;
    const T* cst = nullptr;       // E-step
    const T* rowmax = nullptr;    // E-step
    const T* rowscale = nullptr;  // E-step (holds g)
    const T* resp = nullptr;      // given
    const T* sample_weight = nullptr;  // given: g
    T* out = nullptr;             // N * D
    T* yscratch = nullptr;        // dense: gridDim.x * 64 * D
    int64_t row_tiles = 0;
};

/// Weight of row `row` (< N) for component k given the log-density L = cst_k - sq/2
/// (E-step), or the given resp.
template <class T>
__device__ __forceinline__ T row_weight(const GradArgs<T>& a, int64_t row, int64_t k, T half_sq) {
    if (a.resp == nullptr) {
        const T sc = a.rowscale[row];
        return sc != T(0) ? dexp(a.cst[k] - half_sq - a.rowmax[row]) * sc : T(0);
    }
    return a.resp[row * a.K + k] * (a.sample_weight ? a.sample_weight[row] : T(1));
}

template <class T>
__global__ void __launch_bounds__(kThreads) grad_dense_kernel(const GradArgs<T> a) {
    constexpr int LT = Inner<T>::value;
    __shared__ DenseEstepSmem<T> sm;
    __shared__ T Ys[LT][kRows + 1];  // Ys[jj][r] = y[r][j0 + jj]
    __shared__ T Ut[LT][kCols + 1];  // Ut[jj][mm] = U[m0 + mm][j0 + jj] for j >= m (else 0)
    __shared__ T Ws[kRows];          // weights of the tile's rows for component k
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    const bool tied = a.cov == Covariance::Tied;
    const int64_t D = a.D;
    T* Y = a.yscratch + int64_t(blockIdx.x) * kRows * D;  // this block's 64 x D scratch
    for (int64_t rt = blockIdx.x; rt < a.row_tiles; rt += gridDim.x) {
        const int64_t row0 = rt * kRows;
        for (int64_t k = 0; k < a.K; ++k) {
            const T* Uk = a.prec + (tied ? 0 : k * D * D);
            dense_sqnorm<T>(a.X, a.N, D, row0, a.means + k * D, Uk, sm, Y);  // ends with a barrier
            if (tid < kRows) {
                const int64_t row = row0 + tid;
                Ws[tid] = row < a.N ? row_weight(a, row, k, T(0.5) * sm.sq[tid]) : T(0);
            }
            __syncthreads();  // Ws complete; Y was made visible by dense_sqnorm's barrier
            for (int64_t m0 = 0; m0 < D; m0 += kCols) {
                T acc[kMicro][kMicro] = {};
                for (int64_t j0 = m0; j0 < D; j0 += LT) {  // j < m0 <= m contributes nothing
                    for (int e = tid; e < LT * kRows; e += kThreads) {
                        const int jj = e % LT, r = e / LT;
                        const int64_t j = j0 + jj;
                        Ys[jj][r] = j < D ? Y[int64_t(r) * D + j] : T(0);
                    }
                    for (int e = tid; e < LT * kCols; e += kThreads) {
                        const int jj = e % LT, mm = e / LT;
                        const int64_t j = j0 + jj, m = m0 + mm;
                        Ut[jj][mm] = (m < D && j < D && j >= m) ? Uk[m * D + j] : T(0);
                    }
                    __syncthreads();
#pragma unroll
                    for (int jj = 0; jj < LT; ++jj) {
                        T yv[kMicro], uv[kMicro];
#pragma unroll
                        for (int i = 0; i < kMicro; ++i) yv[i] = Ys[jj][ty + kSide * i];
#pragma unroll
                        for (int j = 0; j < kMicro; ++j) uv[j] = Ut[jj][tx + kSide * j];
#pragma unroll
                        for (int i = 0; i < kMicro; ++i)
#pragma unroll
                            for (int j = 0; j < kMicro; ++j) acc[i][j] = dfma(yv[i], uv[j], acc[i][j]);
                    }
                    __syncthreads();  // before Ys / Ut are restaged (and Y rewritten for the next k)
                }
#pragma unroll
                for (int i = 0; i < kMicro; ++i)
#pragma unroll
                    for (int j = 0; j < kMicro; ++j) {
                        const int r = ty + kSide * i;
                        const int64_t row = row0 + r, m = m0 + tx + kSide * j;
                        if (row < a.N && m < D) {
                            T* g = a.out + row * D + m;
                            const T prev = (k == 0) ? T(0) : *g;
                            *g = prev - Ws[r] * acc[i][j];
                        }
                    }
            }
            // The next component's dense_sqnorm rewrites Y and (after it) Ws only behind
            // its internal barriers, which every thread reaches after finishing here.
        }
    }
}

template <class T>
__global__ void __launch_bounds__(kThreads) grad_diag_kernel(const GradArgs<T> a) {
    constexpr int LT = Inner<T>::value;
    struct MStage {
        T M[LT][kCols + 1];   // M[cc][dd] = μ[c0 + cc0 + cc][d0 + dd]
        T P2[LT][kCols + 1];  // P2[cc][dd] = p[c0 + cc0 + cc][d0 + dd]²
    };
    union Scratch {  // E-step staging and gradient staging are never live together
        DiagEstepSmem<T> e;
        MStage m;
    };
    __shared__ Scratch u;
    __shared__ T Wt[kRows][kCols + 1];  // Wt[r][c] = w_{row0 + r, c0 + c}
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    const int64_t D = a.D, K = a.K;
    const int64_t row0 = int64_t(blockIdx.x) * kRows;
    const bool spherical = a.cov == Covariance::Spherical;
    for (int64_t c0 = 0; c0 < K; c0 += kCols) {
        if (a.resp == nullptr) {
            T acc[kMicro][kMicro];
            diag_sqnorm_tile<T>(a.X, a.N, D, row0, K, c0, a.means, a.prec, spherical, u.e, acc);
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int r = ty + kSide * i, c = tx + kSide * j;
                    const int64_t row = row0 + r, comp = c0 + c;
                    Wt[r][c] = (row < a.N && comp < K) ? row_weight(a, row, comp, T(0.5) * acc[i][j]) : T(0);
                }
        } else {
            for (int e = tid; e < kRows * kCols; e += kThreads) {
                const int r = e / kCols, c = e % kCols;
                const int64_t row = row0 + r, comp = c0 + c;
                Wt[r][c] = (row < a.N && comp < K) ? row_weight(a, row, comp, T(0)) : T(0);
            }
        }
        __syncthreads();  // Wt complete
        for (int64_t d0 = 0; d0 < D; d0 += kCols) {
            T xv[kMicro][kMicro];
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int64_t row = row0 + ty + kSide * i, f = d0 + tx + kSide * j;
                    xv[i][j] = (row < a.N && f < D) ? a.X[row * D + f] : T(0);
                }
            T acc[kMicro][kMicro] = {};
            for (int cc0 = 0; cc0 < kCols; cc0 += LT) {
                for (int e = tid; e < LT * kCols; e += kThreads) {
                    const int dd = e % kCols, cc = e / kCols;  // consecutive threads: consecutive features
                    const int64_t comp = c0 + cc0 + cc, f = d0 + dd;
                    const bool in = comp < K && f < D;
                    const T p = in ? (spherical ? a.prec[comp] : a.prec[comp * D + f]) : T(0);
                    u.m.M[cc][dd] = in ? a.means[comp * D + f] : T(0);
                    u.m.P2[cc][dd] = p * p;
                }
                __syncthreads();
#pragma unroll
                for (int cc = 0; cc < LT; ++cc) {
                    T wv[kMicro], mv[kMicro], pv[kMicro];
#pragma unroll
                    for (int i = 0; i < kMicro; ++i) wv[i] = Wt[ty + kSide * i][cc0 + cc];
#pragma unroll
                    for (int j = 0; j < kMicro; ++j) {
                        mv[j] = u.m.M[cc][tx + kSide * j];
                        pv[j] = u.m.P2[cc][tx + kSide * j];
                    }
#pragma unroll
                    for (int i = 0; i < kMicro; ++i)
#pragma unroll
                        for (int j = 0; j < kMicro; ++j)
                            acc[i][j] = dfma(wv[i], pv[j] * (xv[i][j] - mv[j]), acc[i][j]);
                }
                __syncthreads();  // before u.m is restaged (or u.e / Wt rewritten by the next group)
            }
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int64_t row = row0 + ty + kSide * i, f = d0 + tx + kSide * j;
                    if (row < a.N && f < D) {
                        T* g = a.out + row * D + f;
                        const T prev = (c0 == 0) ? T(0) : *g;
                        *g = prev - acc[i][j];
                    }
                }
        }
    }
}

/// Blocks of the dense kernel's grid: a fixed function of (N, D, dtype), capped so the
/// Y scratch (blocks * 64 * D values) stays within kGradScratchBudgetBytes.
template <class T>
int64_t grad_dense_blocks(int64_t N, int64_t D) {
    const int64_t row_tiles = ceil_div(N, kRows);
    int64_t cap = kGradScratchBudgetBytes / (kRows * D * int64_t(sizeof(T)));
    if (cap > kMaxGradBlocks) cap = kMaxGradBlocks;
    if (cap < 1) cap = 1;
    return row_tiles < cap ? row_tiles : cap;
}

template <class T>
void grad_x_t(cudaStream_t stream, Covariance cov, int64_t N, int64_t D, int64_t K, const T* X, const T* lw,
              const T* means, const T* prec, const T* sw, const T* resp, T* out, Layout& ws) {
    const bool estep = resp == nullptr;
    const int64_t row_tiles = ceil_div(N, kRows);
    const int64_t dense_blocks = is_dense(cov) ? grad_dense_blocks<T>(N, D) : 0;
    T* cst = estep ? ws.take<T>(K) : nullptr;
    T* rowmax = estep ? ws.take<T>(N) : nullptr;
    T* rowscale = estep ? ws.take<T>(N) : nullptr;
    T* yscratch = is_dense(cov) ? ws.take<T>(dense_blocks * kRows * D) : nullptr;
    if (!ws.base) return;  // size query
    if (N == 0) return;
    if (estep) {
        launch_prepare<T>(stream, cov, D, K, lw, prec, cst);
        RowLseArgs<T> r;
        r.X = X;
        r.N = N;
        r.D = D;
        r.K = K;
        r.cov = cov;
        r.means = means;
        r.prec = prec;
        r.cst = cst;
        r.sample_weight = sw;
        r.rowmax = rowmax;
        r.rowscale = rowscale;
        launch_row_lse<T>(stream, r);
    }
    GradArgs<T> a;
    a.X = X;
    a.N = N;
    a.D = D;
    a.K = K;
    a.cov = cov;
    a.means = means;
    a.prec = prec;
    a.cst = cst;
    a.rowmax = rowmax;
    a.rowscale = rowscale;
    a.resp = resp;
    a.sample_weight = sw;
    a.out = out;
    a.yscratch = yscratch;
    a.row_tiles = row_tiles;
    if (is_dense(cov)) {
        grad_dense_kernel<T><<<unsigned(dense_blocks), kThreads, 0, stream>>>(a);
        check_launch("grad_dense_kernel");
    } else {
        require(row_tiles <= int64_t(0x7fffffff), "too many rows for one launch");
        grad_diag_kernel<T><<<unsigned(row_tiles), kThreads, 0, stream>>>(a);
        check_launch("grad_diag_kernel");
    }
}

}  // namespace
}  // namespace detail

using namespace detail;

std::size_t grad_x_workspace_bytes(DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
                                   bool given_resp) {
    check_sizes(N, D, K);
    Layout ws;
    const void* resp = given_resp ? reinterpret_cast<const void*>(&ws) : nullptr;  // only its null-ness matters
    if (dtype == DType::Float32)
        grad_x_t<float>(nullptr, cov, N, D, K, nullptr, nullptr, nullptr, nullptr, nullptr,
                        static_cast<const float*>(resp), nullptr, ws);
    else
        grad_x_t<double>(nullptr, cov, N, D, K, nullptr, nullptr, nullptr, nullptr, nullptr,
                         static_cast<const double*>(resp), nullptr, ws);
    return ws.bytes;
}

void grad_x(int device, cudaStream_t stream, DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
            const void* X, const void* log_weights, const void* means, const void* prec_chol,
            const void* sample_weight, const void* resp, void* out, void* workspace, std::size_t workspace_bytes) {
    check_sizes(N, D, K);
    require(workspace_bytes >= grad_x_workspace_bytes(dtype, cov, N, D, K, resp != nullptr), "workspace too small");
    require(workspace != nullptr && reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0,
            "workspace must be a 16-byte aligned device pointer");
    require(means && prec_chol && (N == 0 || (X && out)), "null pointer argument");
    require(resp != nullptr || log_weights, "log_weights is required without resp");
    set_device(device);
    Layout ws;
    ws.base = static_cast<char*>(workspace);
    if (dtype == DType::Float32)
        grad_x_t<float>(stream, cov, N, D, K, static_cast<const float*>(X), static_cast<const float*>(log_weights),
                        static_cast<const float*>(means), static_cast<const float*>(prec_chol),
                        static_cast<const float*>(sample_weight), static_cast<const float*>(resp),
                        static_cast<float*>(out), ws);
    else
        grad_x_t<double>(stream, cov, N, D, K, static_cast<const double*>(X),
                         static_cast<const double*>(log_weights), static_cast<const double*>(means),
                         static_cast<const double*>(prec_chol), static_cast<const double*>(sample_weight),
                         static_cast<const double*>(resp), static_cast<double*>(out), ws);
}

}  // namespace cuda
}  // namespace gmmfast
