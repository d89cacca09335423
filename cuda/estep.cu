// The row pass shared by all ops (per-row log-normaliser), the log_prob op, and host
// helpers.
//
// Kernels:
//   prepare_kernel         cst[k] = log π_k + Σ_j log U_k[j,j] - D/2 log 2π (T), one
//                          thread per component, float64 arithmetic as the CPU.
//   row_lse_dense_kernel   full/tied: one block per 64-row tile; loops over components
//                          k = 0..K-1 in order: dense_sqnorm -> L_rk = cst_k - sq/2,
//                          thread r (< 64) keeps the online log-sum-exp of row r.
//   row_lse_diag_kernel    diag/spherical: one block per 64-row tile; loops over groups
//                          of 64 components: diag_sqnorm_tile -> L tile in shared
//                          memory; 4 threads per row fold 16 components each, thread
//                          4r+0 merges the 4 partials in order into the row's state.
//   reduce_scalars_kernel  one block: fixed strided partial sums + fixed tree.
//   log_resp_kernel        out[i,k] = T(double(L_ik) - lse_i) in place.
//
// Outputs of the row pass per row i (when requested): L_ik, log p(x_i) (T and double),
// rowmax_i = max_k L_ik and rowscale_i = g_i / Σ_k exp(L_ik - rowmax_i) -- so that
// r_ik = exp(L_ik - rowmax_i) · rowscale_i = g_i p(k | x_i), exactly the CPU's form --
// with rowscale_i = 0 when log p(x_i) is not finite (the row then adds nothing to the
// statistics), and per-tile partials of Σ g log p, Σ g, "has a non-finite row".
#include "tiles.cuh"

namespace gmmfast {
namespace cuda {

// ---------------------------------------------------------------------------- host

int device_count() noexcept {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();  // clear the error state: no driver / no device is not an error here
        return 0;
    }
    return n;
}

int runtime_version() noexcept {
    int v = 0;
    if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return v;
}

int driver_version() noexcept {
    int v = 0;
    if (cudaDriverGetVersion(&v) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return v;
}

namespace detail {

void check_launch(const char* what) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        throw std::runtime_error(std::string("gmmfast CUDA: ") + what + " failed: " + cudaGetErrorName(err) +
                                 ": " + cudaGetErrorString(err));
}

void set_device(int device) {
    const cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        throw std::runtime_error("gmmfast CUDA: cudaSetDevice(" + std::to_string(device) +
                                 ") failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
    }
}

void require(bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(std::string("gmmfast CUDA: ") + what);
}

// ------------------------------------------------------------------------ prepare

template <class T>
__global__ void prepare_kernel(Covariance cov, int64_t D, int64_t K, const T* __restrict__ log_weights,
                               const T* __restrict__ prec, T* __restrict__ cst) {
    const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (k >= K) return;
    constexpr double log2pi = 1.8378770664093454836;  // log(2π)
    double ld = 0.0;
    switch (cov) {
        case Covariance::Full:
            for (int64_t l = 0; l < D; ++l) ld += log(double(prec[k * D * D + l * D + l]));
            break;
        case Covariance::Tied:
            for (int64_t l = 0; l < D; ++l) ld += log(double(prec[l * D + l]));
            break;
        case Covariance::Diag:
            for (int64_t d = 0; d < D; ++d) ld += log(double(prec[k * D + d]));
            break;
        default:  // spherical: D equal terms, summed as the CPU does
            for (int64_t d = 0; d < D; ++d) ld += log(double(prec[k]));
            break;
    }
    cst[k] = T(double(log_weights[k]) + ld - 0.5 * double(D) * log2pi);
}

template <class T>
void launch_prepare(cudaStream_t stream, Covariance cov, int64_t D, int64_t K, const T* log_weights,
                    const T* prec, T* cst) {
    const int64_t blocks = ceil_div(K, kThreads);
    prepare_kernel<T><<<unsigned(blocks), kThreads, 0, stream>>>(cov, D, K, log_weights, prec, cst);
    check_launch("prepare_kernel");
}

// ------------------------------------------------------------------ row pass epilogue

/// Writes the per-row outputs of row r (< 64) of the tile from its state (m, s), and
/// its contributions to the tile partials into the shared arrays.
template <class T>
__device__ void row_epilogue(const RowLseArgs<T>& a, int64_t row0, int r, T m, T s, double* ll_row,
                             double* w_row, int* bad_row) {
    const int64_t row = row0 + r;
    double ll = 0.0, w = 0.0;
    int bad = 0;
    if (row < a.N) {
        const double lse = double(m) + log(double(s));
        if (a.sample_out) a.sample_out[row] = T(lse);
        if (a.lse_out) a.lse_out[row] = lse;
        if (a.rowscale) {
            const T g = a.sample_weight ? a.sample_weight[row] : T(1);
            bad = isfinite(lse) ? 0 : 1;
            a.rowmax[row] = m;
            a.rowscale[row] = bad ? T(0) : g / s;
            ll = bad ? 0.0 : double(g) * lse;
            w = double(g);
        }
    }
    ll_row[r] = ll;
    w_row[r] = w;
    bad_row[r] = bad;
}

/// Thread 0 adds the 64 rows' partials in row order and writes the tile's partials.
template <class T>
__device__ void tile_partials(const RowLseArgs<T>& a, const double* ll_row, const double* w_row,
                              const int* bad_row) {
    if (threadIdx.x == 0 && a.ll_part) {
        double ll = 0.0, w = 0.0;
        int bad = 0;
        for (int r = 0; r < kRows; ++r) {
            ll += ll_row[r];
            w += w_row[r];
            bad |= bad_row[r];
        }
        a.ll_part[blockIdx.x] = ll;
        a.w_part[blockIdx.x] = w;
        a.bad_part[blockIdx.x] = bad;
    }
}

// ------------------------------------------------------------------ row pass: dense

template <class T>
__global__ void __launch_bounds__(kThreads) row_lse_dense_kernel(const RowLseArgs<T> a) {
    __shared__ DenseEstepSmem<T> sm;
    __shared__ double ll_row[kRows], w_row[kRows];
    __shared__ int bad_row[kRows];
    const int tid = threadIdx.x;
    const int64_t row0 = int64_t(blockIdx.x) * kRows;
    const bool tied = a.cov == Covariance::Tied;
    T m = neg_inf<T>(), s = T(0);  // state of row `tid` (threads tid < 64)
    for (int64_t k = 0; k < a.K; ++k) {
        dense_sqnorm<T>(a.X, a.N, a.D, row0, a.means + k * a.D, a.prec + (tied ? 0 : k * a.D * a.D), sm,
                        nullptr);
        if (tid < kRows) {
            const int64_t row = row0 + tid;
            const T L = a.cst[k] - T(0.5) * sm.sq[tid];
            if (row < a.N) {
                if (a.L_out) a.L_out[row * a.K + k] = L;
                lse_add(m, s, L);
            }
        }
        __syncthreads();  // sm.sq is rewritten by the next component
    }
    if (tid < kRows) row_epilogue(a, row0, tid, m, s, ll_row, w_row, bad_row);
    __syncthreads();
    tile_partials(a, ll_row, w_row, bad_row);
}

// ------------------------------------------------------------------- row pass: diag

template <class T>
__global__ void __launch_bounds__(kThreads) row_lse_diag_kernel(const RowLseArgs<T> a) {
    constexpr int kParts = kThreads / kRows;     // 4 threads per row
    constexpr int kPerPart = kCols / kParts;     // 16 components each
    // Shared memory (float64: 45.7 KiB of the 48 KiB static limit): the E-step staging,
    // the per-part log-sum-exp states and the row partials are never live at the same
    // time, so they share storage; Lt lives throughout a group.
    struct PartState {
        T m[kRows][kParts];
        T s[kRows][kParts];
    };
    struct RowPartials {
        double ll[kRows];
        double w[kRows];
        int bad[kRows];
    };
    union Scratch {
        DiagEstepSmem<T> e;
        PartState p;
        RowPartials r;
    };
    __shared__ Scratch u;
    __shared__ T Lt[kRows][kCols + 1];  // L of the tile: Lt[r][c]
    const int tid = threadIdx.x, tx = tid % kSide, ty = tid / kSide;
    const int lr = tid / kParts, part = tid % kParts;  // log-sum-exp ownership: row lr, part
    const int64_t row0 = int64_t(blockIdx.x) * kRows;
    const bool spherical = a.cov == Covariance::Spherical;
    T m = neg_inf<T>(), s = T(0);  // state of row lr (threads with part == 0)
    for (int64_t c0 = 0; c0 < a.K; c0 += kCols) {
        T acc[kMicro][kMicro];
        diag_sqnorm_tile<T>(a.X, a.N, a.D, row0, a.K, c0, a.means, a.prec, spherical, u.e, acc);
#pragma unroll
        for (int i = 0; i < kMicro; ++i)
#pragma unroll
            for (int j = 0; j < kMicro; ++j) {
                const int r = ty + kSide * i, c = tx + kSide * j;
                const int64_t row = row0 + r, comp = c0 + c;
                T L = neg_inf<T>();  // components past K add nothing
                if (comp < a.K) {
                    L = a.cst[comp] - T(0.5) * acc[i][j];
                    if (a.L_out && row < a.N) a.L_out[row * a.K + comp] = L;
                }
                Lt[r][c] = L;
            }
        __syncthreads();  // Lt complete (u.e is no longer read: diag_sqnorm_tile ended with a barrier)
        {
            T pm = neg_inf<T>(), ps = T(0);
            for (int c = part * kPerPart; c < (part + 1) * kPerPart; ++c) lse_add(pm, ps, Lt[lr][c]);
            u.p.m[lr][part] = pm;
            u.p.s[lr][part] = ps;
        }
        __syncthreads();
        if (part == 0) {
            for (int q = 0; q < kParts; ++q) lse_merge(m, s, u.p.m[lr][q], u.p.s[lr][q]);
        }
        __syncthreads();  // Lt and u are rewritten by the next group
    }
    if (part == 0) row_epilogue(a, row0, lr, m, s, u.r.ll, u.r.w, u.r.bad);
    __syncthreads();
    tile_partials(a, u.r.ll, u.r.w, u.r.bad);
}

template <class T>
void launch_row_lse(cudaStream_t stream, const RowLseArgs<T>& a) {
    const int64_t tiles = ceil_div(a.N, kRows);
    if (tiles == 0) return;
    require(tiles <= int64_t(0x7fffffff), "too many rows for one launch");
    if (is_dense(a.cov)) {
        row_lse_dense_kernel<T><<<unsigned(tiles), kThreads, 0, stream>>>(a);
        check_launch("row_lse_dense_kernel");
    } else {
        row_lse_diag_kernel<T><<<unsigned(tiles), kThreads, 0, stream>>>(a);
        check_launch("row_lse_diag_kernel");
    }
}

// ------------------------------------------------------------------ scalar reduction

/// Thread t adds entries t, t + 256, ... in order; then a fixed binary tree. Weights
/// come either as float64 partials (w_part) or as the raw sample weights in T (w_part_T,
/// the given-resp path); neither: out[1] = count.
template <class T>
__global__ void __launch_bounds__(kThreads) reduce_scalars_kernel(const double* __restrict__ ll_part,
                                                                 const T* __restrict__ w_part_T,
                                                                 const double* __restrict__ w_part,
                                                                 const int* __restrict__ bad_part,
                                                                 int64_t count, double* __restrict__ out) {
    __shared__ double sll[kThreads], sw[kThreads];
    __shared__ int sbad[kThreads];
    const int tid = threadIdx.x;
    double ll = 0.0, w = 0.0;
    int bad = 0;
    for (int64_t p = tid; p < count; p += kThreads) {
        if (ll_part) ll += ll_part[p];
        if (w_part) w += w_part[p];
        if (w_part_T) w += double(w_part_T[p]);
        if (bad_part) bad |= bad_part[p];
    }
    sll[tid] = ll;
    sw[tid] = w;
    sbad[tid] = bad;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
        if (tid < half) {
            sll[tid] += sll[tid + half];
            sw[tid] += sw[tid + half];
            sbad[tid] |= sbad[tid + half];
        }
        __syncthreads();
    }
    if (tid == 0) {
        out[0] = sbad[0] ? CUDART_NAN : sll[0];
        out[1] = (w_part || w_part_T) ? sw[0] : double(count);
    }
}

template <class T>
void launch_reduce_scalars(cudaStream_t stream, const double* ll_part, const T* w_part_T,
                           const double* w_part, const int* bad_part, int64_t count, double* out) {
    reduce_scalars_kernel<T><<<1, kThreads, 0, stream>>>(ll_part, w_part_T, w_part, bad_part, count, out);
    check_launch("reduce_scalars_kernel");
}

// ---------------------------------------------------------------------- log_resp

template <class T>
__global__ void log_resp_kernel(T* __restrict__ out, const double* __restrict__ lse, int64_t N, int64_t K) {
    const int64_t total = N * K;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride)
        out[e] = T(double(out[e]) - lse[e / K]);
}

// ---------------------------------------------------------------------- log_prob

template <class T>
void log_prob_t(cudaStream_t stream, Covariance cov, int64_t N, int64_t D, int64_t K, const T* X,
                const T* lw, const T* means, const T* prec, LogProbOutput what, T* out, Layout& ws) {
    T* cst = ws.take<T>(K);
    double* lse = (what == LogProbOutput::LogResp) ? ws.take<double>(N) : nullptr;
    if (!ws.base) return;  // size query
    launch_prepare<T>(stream, cov, D, K, lw, prec, cst);
    RowLseArgs<T> a;
    a.X = X;
    a.N = N;
    a.D = D;
    a.K = K;
    a.cov = cov;
    a.means = means;
    a.prec = prec;
    a.cst = cst;
    if (what == LogProbOutput::Sample) a.sample_out = out;
    else a.L_out = out;
    a.lse_out = lse;
    launch_row_lse<T>(stream, a);
    if (what == LogProbOutput::LogResp && N > 0) {
        const int64_t total = N * K;
        int64_t blocks = ceil_div(total, kThreads);
        if (blocks > 65535) blocks = 65535;  // grid-stride loop covers the rest
        log_resp_kernel<T><<<unsigned(blocks), kThreads, 0, stream>>>(out, lse, N, K);
        check_launch("log_resp_kernel");
    }
}

template void launch_prepare<float>(cudaStream_t, Covariance, int64_t, int64_t, const float*, const float*, float*);
template void launch_prepare<double>(cudaStream_t, Covariance, int64_t, int64_t, const double*, const double*,
                                     double*);
template void launch_row_lse<float>(cudaStream_t, const RowLseArgs<float>&);
template void launch_row_lse<double>(cudaStream_t, const RowLseArgs<double>&);
template void launch_reduce_scalars<float>(cudaStream_t, const double*, const float*, const double*, const int*,
                                           int64_t, double*);
template void launch_reduce_scalars<double>(cudaStream_t, const double*, const double*, const double*,
                                            const int*, int64_t, double*);

void check_sizes(int64_t N, int64_t D, int64_t K) {
    require(N >= 0, "N must be >= 0");
    require(D >= 1, "D must be >= 1");
    require(K >= 1, "K must be >= 1");
    // Products such as N * K, N * D, K * D * D are formed in int64; keep them far from overflow.
    require(N <= (int64_t(1) << 40) && D <= (int64_t(1) << 20) && K <= (int64_t(1) << 24) &&
                K * D * D <= (int64_t(1) << 50) && N * (D > K ? D : K) <= (int64_t(1) << 50),
            "sizes out of the supported range");
}

}  // namespace detail

using namespace detail;

std::size_t log_prob_workspace_bytes(DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
                                     LogProbOutput what) {
    check_sizes(N, D, K);
    Layout ws;
    if (dtype == DType::Float32)
        log_prob_t<float>(nullptr, cov, N, D, K, nullptr, nullptr, nullptr, nullptr, what, nullptr, ws);
    else
        log_prob_t<double>(nullptr, cov, N, D, K, nullptr, nullptr, nullptr, nullptr, what, nullptr, ws);
    return ws.bytes;
}

void log_prob(int device, cudaStream_t stream, DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
              const void* X, const void* log_weights, const void* means, const void* prec_chol,
              LogProbOutput what, void* out, void* workspace, std::size_t workspace_bytes) {
    check_sizes(N, D, K);
    require(workspace_bytes >= log_prob_workspace_bytes(dtype, cov, N, D, K, what), "workspace too small");
    require(workspace != nullptr && reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0,
            "workspace must be a 16-byte aligned device pointer");
    require(log_weights && means && prec_chol && (N == 0 || (X && out)), "null pointer argument");
    set_device(device);
    Layout ws;
    ws.base = static_cast<char*>(workspace);
    if (dtype == DType::Float32)
        log_prob_t<float>(stream, cov, N, D, K, static_cast<const float*>(X), static_cast<const float*>(log_weights),
                          static_cast<const float*>(means), static_cast<const float*>(prec_chol), what,
                          static_cast<float*>(out), ws);
    else
        log_prob_t<double>(stream, cov, N, D, K, static_cast<const double*>(X),
                           static_cast<const double*>(log_weights), static_cast<const double*>(means),
                           static_cast<const double*>(prec_chol), what, static_cast<double*>(out), ws);
}

}  // namespace cuda
}  // namespace gmmfast
