// em_stats: the fused E-step and centred sufficient statistics, in two passes over X
// and nothing of size N * K, N * D or N * K * D in memory.
//
//   1. the row pass (estep.cu): per row i, rowmax_i and rowscale_i = g_i / Σ_k e^(L_ik -
//      rowmax_i) (0 for rows whose log-likelihood is not finite), and per 64-row tile the
//      partial sums of g log p, g and "has a non-finite row". [E-step only]
//   2. the statistics pass: each block recomputes the log-densities of ITS component(s)
//      for the rows of its chunk, r_ik = e^(L_ik - rowmax_i) · rowscale_i (or
//      resp_ik · g_i when responsibilities are given), and accumulates nk, s1, s2 in
//      float64 into its private part of the chunk's slab (StatsPlan in internal.cuh).
//   3. reduce_stats_kernel adds the slabs of all chunks in chunk order (one thread per
//      output entry) and writes s2 in its public form (full/tied mirrored from the upper
//      triangle, spherical summed over features); reduce_scalars_kernel adds the tile
//      partials of pass 1 with a fixed tree.
// No floating-point atomics anywhere: every float64 partial has exactly one writer, and
// all additions happen in an order fixed by (cov, N, D, K).
//
// Statistics kernels:
//
//   stats_dense_kernel (full, tied). Block = (upper S2 tile (ta, tb), component k,
//   chunk) for full, (tile, chunk) looping over all k for tied. Per 64-row tile of the
//   chunk: dense_sqnorm gives the log-densities of component k, threads 0..63 turn them
//   into responsibilities Rs[r]; then the 64 x 64 tile of Σ_r Rs[r] z_r z_rᵀ (rows
//   features a0 + .., columns b0 + ..) is a small GEMM through shared memory (Za = z,
//   Zb = r z, staged Inner<T> rows at a time), accumulated over the 64 rows in T (as the
//   CPU does over its tile; the CPU flushes its float32 sums every 64 rows too) and then
//   added to float64 registers. Blocks on the diagonal (ta == tb) also accumulate s1 of
//   their columns (threads with ty == 0, float64), the (0, 0) block nk (thread 0,
//   float64). With D > 64 every tile block recomputes the full E-step of its rows (the
//   cost of keeping all accumulators in registers; a tuning opportunity).
//
//   stats_diag_kernel (diag, spherical). Block = (group of 64 components, chunk). Per
//   64-row tile: diag_sqnorm_tile gives the 64 x 64 log-densities, turned into the
//   responsibility tile R[r][c] in shared memory; nk by threads 0..63 (one component
//   each, float64, rows in order); then per 64-feature tile, thread (ty, tx) owns
//   components ty + 16 i and features tx + 16 j: Σ_r R z and Σ_r R z² over the 64 rows
//   in T, added to the block's float64 slab entries in global memory (read-modify-write
//   by that same thread only: no race, no atomics).
//
// A row whose responsibility is exactly 0 adds exactly nothing (its x is not even read,
// as in the CPU's full/tied M-step), so non-finite rows -- rowscale 0 -- never turn the
// statistics into NaN. Given responsibilities of any sign are used as they are.
#include "tiles.cuh"

namespace gmmfast {
namespace cuda {
namespace detail {
namespace {

template <class T>
struct StatsArgs {
    const T* X = nullptr;
    int64_t N = 0, D = 0, K = 0;
    Covariance cov = Covariance::Full;
    const T* means = nullptr;     // E-step: K * D
    const T* prec = nullptr;      // E-step: param_count(cov, K, D)
    const T* cst = nullptr;       // E-step: K
    const T* rowmax = nullptr;    // E-step: N
    const T* rowscale = nullptr;  // E-step: N
    const T* resp = nullptr;      // given: N * K (then the E-step fields are unused)
    const T* sample_weight = nullptr;  // given: N or nullptr (the E-step folds g into rowscale)
    const T* centres = nullptr;   // K * D
    double* partial = nullptr;    // nchunks * slab
    int64_t row_tiles = 0, tiles_per_chunk = 1, col_tiles = 1, out_tiles = 1, groups = 1, slab = 0;
};

// ---------------------------------------------------------------------- full / tied

template <class T>
__global__ void __launch_bounds__(kThreads) stats_dense_kernel(const StatsArgs<T> a) {
    constexpr int LT = Inner<T>::value;
    __shared__ DenseEstepSmem<T> sm;
    __shared__ T Za[LT][kCols];  // Za[rr][cc] = x[row][a0 + cc] - c_k[a0 + cc]  (0 where r = 0)
    __shared__ T Zb[LT][kCols];  // Zb[rr][cc] = r · (x[row][b0 + cc] - c_k[b0 + cc])
    __shared__ T Rs[kRows];      // responsibilities of the tile's rows for component k
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    const bool tied = a.cov == Covariance::Tied;
    const int64_t D = a.D;

    // blockIdx.x -> (S2 tile t, component, chunk); the tile index is the fastest.
    int64_t bid = blockIdx.x;
    int64_t t = bid % a.out_tiles;
    bid /= a.out_tiles;
    int64_t k_begin, k_end, chunk;
    if (tied) {
        chunk = bid;
        k_begin = 0;
        k_end = a.K;
    } else {
        k_begin = bid % a.K;
        k_end = k_begin + 1;
        chunk = bid / a.K;
    }
    // t -> (ta, tb) with ta <= tb, enumerating the upper triangle row by row:
    // (0,0) (0,1) .. (0,n-1) (1,1) .. (n-1,n-1).
    int64_t ta = 0;
    while (t >= a.col_tiles - ta) {
        t -= a.col_tiles - ta;
        ++ta;
    }
    const int64_t tb = ta + t;
    const int64_t a0 = ta * kCols, b0 = tb * kCols;
    const bool diag_tile = ta == tb;
    const bool nk_block = ta == 0 && tb == 0;

    double* slab = a.partial + chunk * a.slab;
    double* p_nk = slab;
    double* p_s1 = slab + a.K;
    double* p_s2 = slab + a.K + a.K * D;
    const int64_t t_begin = chunk * a.tiles_per_chunk;
    const int64_t t_end = (t_begin + a.tiles_per_chunk < a.row_tiles) ? t_begin + a.tiles_per_chunk : a.row_tiles;

    double s2acc[kMicro][kMicro] = {};  // float64 sums of this thread's 4 x 4 entries
    for (int64_t k = k_begin; k < k_end; ++k) {
        const T* ck = a.centres + k * D;
        double nk = 0.0;              // thread 0 of the (0, 0) tile block
        double s1acc[kMicro] = {};    // threads ty == 0 of diagonal tile blocks: s1[b0 + tx + 16 j]
        for (int64_t rt = t_begin; rt < t_end; ++rt) {
            const int64_t row0 = rt * kRows;
            if (a.resp == nullptr) {
                dense_sqnorm<T>(a.X, a.N, D, row0, a.means + k * D, a.prec + (tied ? 0 : k * D * D), sm, nullptr);
                if (tid < kRows) {
                    const int64_t row = row0 + tid;
                    T r = T(0);
                    if (row < a.N) {
                        const T sc = a.rowscale[row];
                        if (sc != T(0)) r = dexp(a.cst[k] - T(0.5) * sm.sq[tid] - a.rowmax[row]) * sc;
                    }
                    Rs[tid] = r;
                }
            } else if (tid < kRows) {
                const int64_t row = row0 + tid;
                T r = T(0);
                if (row < a.N) r = a.resp[row * a.K + k] * (a.sample_weight ? a.sample_weight[row] : T(1));
                Rs[tid] = r;
            }
            __syncthreads();  // Rs complete
            if (nk_block && tid == 0)
                for (int r = 0; r < kRows; ++r) nk += double(Rs[r]);
            T acc[kMicro][kMicro] = {};
            for (int r0 = 0; r0 < kRows; r0 += LT) {
                // Stage LT rows x 64 features of z (columns a0..) and r·z (columns b0..);
                // consecutive threads take consecutive features of a row (coalesced).
                for (int e = tid; e < LT * kCols; e += kThreads) {
                    const int cc = e % kCols, rr = e / kCols;
                    const int64_t row = row0 + r0 + rr;
                    const T r = Rs[r0 + rr];
                    const int64_t fa = a0 + cc, fb = b0 + cc;
                    T za = T(0), zb = T(0);
                    if (row < a.N && r != T(0)) {
                        if (fa < D) za = a.X[row * D + fa] - ck[fa];
                        if (fb < D) zb = r * (a.X[row * D + fb] - ck[fb]);
                    }
                    Za[rr][cc] = za;
                    Zb[rr][cc] = zb;
                }
                __syncthreads();
#pragma unroll 4  // full unrolling pushes float to 255 registers (1 block per SM)
                for (int rr = 0; rr < LT; ++rr) {
                    T u[kMicro], v[kMicro];
#pragma unroll
                    for (int i = 0; i < kMicro; ++i) u[i] = Za[rr][ty + kSide * i];
#pragma unroll
                    for (int j = 0; j < kMicro; ++j) v[j] = Zb[rr][tx + kSide * j];
#pragma unroll
                    for (int i = 0; i < kMicro; ++i)
#pragma unroll
                        for (int j = 0; j < kMicro; ++j) acc[i][j] = dfma(u[i], v[j], acc[i][j]);
                }
                if (diag_tile && ty == 0) {
                    for (int rr = 0; rr < LT; ++rr)
#pragma unroll
                        for (int j = 0; j < kMicro; ++j) s1acc[j] += double(Zb[rr][tx + kSide * j]);
                }
                __syncthreads();  // before the next rows overwrite Za / Zb (and the next tile Rs)
            }
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) s2acc[i][j] += double(acc[i][j]);
        }
        if (nk_block && tid == 0) p_nk[k] = nk;
        if (diag_tile && ty == 0) {
#pragma unroll
            for (int j = 0; j < kMicro; ++j) {
                const int64_t f = b0 + tx + kSide * j;
                if (f < D) p_s1[k * D + f] = s1acc[j];
            }
        }
        if (!tied) {
            // Full: this component's tile. Entries below the diagonal of a diagonal tile
            // are written too; the reduction only reads l <= f.
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int64_t l = a0 + ty + kSide * i, f = b0 + tx + kSide * j;
                    if (l < D && f < D) p_s2[k * D * D + l * D + f] = s2acc[i][j];
                }
        }
    }
    if (tied) {
#pragma unroll
        for (int i = 0; i < kMicro; ++i)
#pragma unroll
            for (int j = 0; j < kMicro; ++j) {
                const int64_t l = a0 + ty + kSide * i, f = b0 + tx + kSide * j;
                if (l < D && f < D) p_s2[l * D + f] = s2acc[i][j];
            }
    }
}

// ------------------------------------------------------------------ diag / spherical

template <class T>
__global__ void __launch_bounds__(kThreads) stats_diag_kernel(const StatsArgs<T> a) {
    constexpr int LT = Inner<T>::value;
    union Scratch {  // the E-step staging and the M-step staging are never live together
        DiagEstepSmem<T> e;
        T Xd[LT][kCols + 1];  // Xd[rr][cc] = x[row0 + r0 + rr][d0 + cc] (0 for dropped rows)
    };
    __shared__ Scratch u;
    __shared__ T R[kRows][kCols];  // R[r][c] = r_{row0 + r, c0 + c}
    __shared__ int keep[kRows];    // the row takes part (in range, and rowscale / g != 0)
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    const int64_t D = a.D, K = a.K;
    const int64_t group = int64_t(blockIdx.x) % a.groups, chunk = int64_t(blockIdx.x) / a.groups;
    const int64_t c0 = group * kCols;
    const bool spherical = a.cov == Covariance::Spherical;

    double* slab = a.partial + chunk * a.slab;
    double* p_nk = slab;
    double* p_s1 = slab + K;
    double* p_s2 = slab + K + K * D;  // per (component, feature) for spherical too
    const int64_t t_begin = chunk * a.tiles_per_chunk;
    const int64_t t_end = (t_begin + a.tiles_per_chunk < a.row_tiles) ? t_begin + a.tiles_per_chunk : a.row_tiles;

    // This thread's slab entries: components c0 + ty + 16 i, features d0 + tx + 16 j for
    // every feature tile d0. Zeroed here and then only read-modify-written by this thread.
    for (int64_t d0 = 0; d0 < D; d0 += kCols)
#pragma unroll
        for (int i = 0; i < kMicro; ++i)
#pragma unroll
            for (int j = 0; j < kMicro; ++j) {
                const int64_t comp = c0 + ty + kSide * i, f = d0 + tx + kSide * j;
                if (comp < K && f < D) {
                    p_s1[comp * D + f] = 0.0;
                    p_s2[comp * D + f] = 0.0;
                }
            }

    double nk = 0.0;  // threads tid < 64: component c0 + tid
    for (int64_t rt = t_begin; rt < t_end; ++rt) {
        const int64_t row0 = rt * kRows;
        if (a.resp == nullptr) {
            T acc[kMicro][kMicro];
            diag_sqnorm_tile<T>(a.X, a.N, D, row0, K, c0, a.means, a.prec, spherical, u.e, acc);
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int r = ty + kSide * i, c = tx + kSide * j;
                    const int64_t row = row0 + r, comp = c0 + c;
                    T v = T(0);
                    if (row < a.N && comp < K) {
                        const T sc = a.rowscale[row];
                        if (sc != T(0)) v = dexp(a.cst[comp] - T(0.5) * acc[i][j] - a.rowmax[row]) * sc;
                    }
                    R[r][c] = v;
                }
            if (tid < kRows) {
                const int64_t row = row0 + tid;
                keep[tid] = (row < a.N && a.rowscale[row] != T(0)) ? 1 : 0;
            }
        } else {
            for (int e = tid; e < kRows * kCols; e += kThreads) {
                const int r = e / kCols, c = e % kCols;  // consecutive threads: consecutive components
                const int64_t row = row0 + r, comp = c0 + c;
                T v = T(0);
                if (row < a.N && comp < K)
                    v = a.resp[row * K + comp] * (a.sample_weight ? a.sample_weight[row] : T(1));
                R[r][c] = v;
            }
            if (tid < kRows) {
                const int64_t row = row0 + tid;
                keep[tid] = (row < a.N && (a.sample_weight == nullptr || a.sample_weight[row] != T(0))) ? 1 : 0;
            }
        }
        __syncthreads();  // R and keep complete
        if (tid < kRows)
            for (int r = 0; r < kRows; ++r) nk += double(R[r][tid]);
        for (int64_t d0 = 0; d0 < D; d0 += kCols) {
            T cen[kMicro][kMicro];
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int64_t comp = c0 + ty + kSide * i, f = d0 + tx + kSide * j;
                    cen[i][j] = (comp < K && f < D) ? a.centres[comp * D + f] : T(0);
                }
            T a1[kMicro][kMicro] = {}, a2[kMicro][kMicro] = {};
            for (int r0 = 0; r0 < kRows; r0 += LT) {
                for (int e = tid; e < LT * kCols; e += kThreads) {
                    const int cc = e % kCols, rr = e / kCols;
                    const int64_t row = row0 + r0 + rr, f = d0 + cc;
                    // Dropped rows (non-finite, zero weight, past N) are read as 0: their
                    // r is 0, and 0 · (0 - c) = 0 whatever x held.
                    u.Xd[rr][cc] = (row < a.N && f < D && keep[r0 + rr]) ? a.X[row * D + f] : T(0);
                }
                __syncthreads();
#pragma unroll
                for (int rr = 0; rr < LT; ++rr) {
                    T rv[kMicro], xv[kMicro];
#pragma unroll
                    for (int i = 0; i < kMicro; ++i) rv[i] = R[r0 + rr][ty + kSide * i];
#pragma unroll
                    for (int j = 0; j < kMicro; ++j) xv[j] = u.Xd[rr][tx + kSide * j];
#pragma unroll
                    for (int i = 0; i < kMicro; ++i)
#pragma unroll
                        for (int j = 0; j < kMicro; ++j) {
                            const T z = xv[j] - cen[i][j];
                            const T w = rv[i] * z;
                            a1[i][j] += w;
                            a2[i][j] = dfma(w, z, a2[i][j]);
                        }
                }
                __syncthreads();  // before the next rows overwrite u.Xd (and the next tile u.e, R, keep)
            }
#pragma unroll
            for (int i = 0; i < kMicro; ++i)
#pragma unroll
                for (int j = 0; j < kMicro; ++j) {
                    const int64_t comp = c0 + ty + kSide * i, f = d0 + tx + kSide * j;
                    if (comp < K && f < D) {
                        p_s1[comp * D + f] += double(a1[i][j]);
                        p_s2[comp * D + f] += double(a2[i][j]);
                    }
                }
        }
    }
    if (tid < kRows && c0 + tid < K) p_nk[c0 + tid] = nk;
}

// ---------------------------------------------------------------------- reduction

/// One thread per output entry: the sum over chunks p = 0, 1, ... in order of the
/// chunk slabs, written in the public form of the statistics.
__global__ void reduce_stats_kernel(Covariance cov, int64_t D, int64_t K, const double* __restrict__ partial,
                                    int64_t nchunks, int64_t slab, double* __restrict__ nk,
                                    double* __restrict__ s1, double* __restrict__ s2) {
    const int64_t n_s2 = param_count(cov, K, D);
    const int64_t total = K + K * D + n_s2;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t s2base = K + K * D;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
        double v = 0.0;
        if (e < K + K * D) {
            for (int64_t p = 0; p < nchunks; ++p) v += partial[p * slab + e];
            if (e < K) nk[e] = v;
            else s1[e - K] = v;
            continue;
        }
        const int64_t o = e - s2base;
        int64_t src = -1;  // slab offset of the entry, for full/tied/diag
        switch (cov) {
            case Covariance::Full: {
                const int64_t k = o / (D * D), rem = o % (D * D), l = rem / D, f = rem % D;
                const int64_t lo = l < f ? l : f, hi = l < f ? f : l;  // upper triangle holds the sums
                src = s2base + k * D * D + lo * D + hi;
                break;
            }
            case Covariance::Tied: {
                const int64_t l = o / D, f = o % D;
                const int64_t lo = l < f ? l : f, hi = l < f ? f : l;
                src = s2base + lo * D + hi;
                break;
            }
            case Covariance::Diag:
                src = s2base + o;
                break;
            default:  // spherical: trace = Σ_d of the per-feature sums (each summed over chunks)
                for (int64_t d = 0; d < D; ++d) {
                    double w = 0.0;
                    for (int64_t p = 0; p < nchunks; ++p) w += partial[p * slab + s2base + o * D + d];
                    v += w;
                }
                break;
        }
        if (src >= 0)
            for (int64_t p = 0; p < nchunks; ++p) v += partial[p * slab + src];
        s2[o] = v;
    }
}

// ---------------------------------------------------------------------- host

template <class T>
void em_stats_t(cudaStream_t stream, Covariance cov, int64_t N, int64_t D, int64_t K, const T* X, const T* lw,
                const T* means, const T* prec, const T* centres, const T* sw, const T* resp, double* scalars,
                double* nk, double* s1, double* s2, Layout& ws) {
    const StatsPlan plan(cov, N, D, K);
    const bool estep = resp == nullptr;
    T* cst = estep ? ws.take<T>(K) : nullptr;
    T* rowmax = estep ? ws.take<T>(N) : nullptr;
    T* rowscale = estep ? ws.take<T>(N) : nullptr;
    double* ll_part = estep ? ws.take<double>(plan.row_tiles) : nullptr;
    double* w_part = estep ? ws.take<double>(plan.row_tiles) : nullptr;
    int* bad_part = estep ? ws.take<int>(plan.row_tiles) : nullptr;
    double* partial = ws.take<double>(plan.nchunks * plan.slab);
    if (!ws.base) return;  // size query

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
        r.ll_part = ll_part;
        r.w_part = w_part;
        r.bad_part = bad_part;
        launch_row_lse<T>(stream, r);
        launch_reduce_scalars<T>(stream, ll_part, nullptr, w_part, bad_part, plan.row_tiles, scalars);
    } else {
        // Given responsibilities: no log-likelihood (0); weight sum = Σ g (N without weights).
        launch_reduce_scalars<T>(stream, nullptr, sw, nullptr, nullptr, N, scalars);
    }

    StatsArgs<T> a;
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
    a.centres = centres;
    a.partial = partial;
    a.row_tiles = plan.row_tiles;
    a.tiles_per_chunk = plan.tiles_per_chunk;
    a.col_tiles = plan.col_tiles;
    a.out_tiles = plan.out_tiles;
    a.groups = plan.groups;
    a.slab = plan.slab;
    require(plan.blocks >= 1 && plan.blocks <= int64_t(0x7fffffff), "statistics grid out of range");
    if (is_dense(cov)) {
        stats_dense_kernel<T><<<unsigned(plan.blocks), kThreads, 0, stream>>>(a);
        check_launch("stats_dense_kernel");
    } else {
        stats_diag_kernel<T><<<unsigned(plan.blocks), kThreads, 0, stream>>>(a);
        check_launch("stats_diag_kernel");
    }
    const int64_t outputs = K + K * D + param_count(cov, K, D);
    int64_t blocks = ceil_div(outputs, kThreads);
    if (blocks > 65535) blocks = 65535;  // grid-stride loop covers the rest
    reduce_stats_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(cov, D, K, partial, plan.nchunks, plan.slab,
                                                                   nk, s1, s2);
    check_launch("reduce_stats_kernel");
}

}  // namespace
}  // namespace detail

using namespace detail;

std::size_t em_stats_workspace_bytes(DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
                                     bool given_resp) {
    check_sizes(N, D, K);
    Layout ws;
    // Only the null-ness of resp matters for the size query.
    const void* resp = given_resp ? reinterpret_cast<const void*>(&ws) : nullptr;
    if (dtype == DType::Float32)
        em_stats_t<float>(nullptr, cov, N, D, K, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                          static_cast<const float*>(resp), nullptr, nullptr, nullptr, nullptr, ws);
    else
        em_stats_t<double>(nullptr, cov, N, D, K, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                           static_cast<const double*>(resp), nullptr, nullptr, nullptr, nullptr, ws);
    return ws.bytes;
}

void em_stats(int device, cudaStream_t stream, DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
              const void* X, const void* log_weights, const void* means, const void* prec_chol,
              const void* centres, const void* sample_weight, const void* resp, double* scalars, double* nk,
              double* s1, double* s2, void* workspace, std::size_t workspace_bytes) {
    check_sizes(N, D, K);
    require(workspace_bytes >= em_stats_workspace_bytes(dtype, cov, N, D, K, resp != nullptr),
            "workspace too small");
    require(workspace != nullptr && reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0,
            "workspace must be a 16-byte aligned device pointer");
    require(centres && scalars && nk && s1 && s2, "null pointer argument");
    require(N == 0 || X, "null pointer argument (X)");
    require(resp != nullptr || (log_weights && means && prec_chol),
            "log_weights, means and precisions_cholesky are required without resp");
    set_device(device);
    Layout ws;
    ws.base = static_cast<char*>(workspace);
    if (dtype == DType::Float32)
        em_stats_t<float>(stream, cov, N, D, K, static_cast<const float*>(X), static_cast<const float*>(log_weights),
                          static_cast<const float*>(means), static_cast<const float*>(prec_chol),
                          static_cast<const float*>(centres), static_cast<const float*>(sample_weight),
                          static_cast<const float*>(resp), scalars, nk, s1, s2, ws);
    else
        em_stats_t<double>(stream, cov, N, D, K, static_cast<const double*>(X),
                           static_cast<const double*>(log_weights), static_cast<const double*>(means),
                           static_cast<const double*>(prec_chol), static_cast<const double*>(centres),
                           static_cast<const double*>(sample_weight), static_cast<const double*>(resp), scalars,
                           nk, s1, s2, ws);
}

}  // namespace cuda
}  // namespace gmmfast
