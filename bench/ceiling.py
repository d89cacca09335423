"""This machine's own limits, measured in the benchmark's run, and the flops that
gmmfast's em_stats kernel really performs.

Two ceilings, both measured in the same process as the kernels they judge:

- GEMM: NumPy's matmul at the case's dtype (square, n=2000 float64 / 2500 float32,
  best of a few): what this machine's BLAS delivers on a dense, cache-blocked product;
- FMA peak: ``gmmfast._core.fma_peak``, independent vector FMA chains on registers at
  the vector width of the instruction set the kernel dispatcher chose (cpp/peak.cpp):
  what the FMA units can do at all. No kernel that must load its operands reaches it.

The flop count of em_stats (``em_stats_flops``) counts the arithmetic the kernel's
algorithm performs, a multiply-add as 2 flops, padding of its register blocks NOT
counted (cpp/arch/kernels.inl):

full, per row and component
    E-step: centring (D), the triangular product (x - μ)ᵀU (D(D+1)/2 multiply-adds),
    the squared norm (D multiply-adds): D(D+1) + 3D.
    M-step, only for the pairs with a non-zero responsibility (the kernel skips exact
    zeros): z = x - c (D), w = r z (D), s1 += w (D) and the upper triangle of
    z wᵀ (D(D+1)/2 multiply-adds): D(D+1) + 3D.
diag / spherical, per row and component
    E-step ((x - μ)·p, then a multiply-add: 4D) and M-step (z, r z, s1 +=, s2 += r z·z:
    5D) over every row: 9D.
tied
    per row: y = Uᵀ(x - c̄) (D + D(D+1)), the two rows of the rank-two update (3D) and
    the update of the upper triangle (2 · D(D+1)); per row and component: ‖y - m_k‖² (3D), s1 (3D), and the cross term
    e += r (c_top - c_k) (3D): 9D.

Not counted (small next to the above for the benchmark's shapes): the log-sum-exp (one
exp per row and component), the per-tile bookkeeping and the M-step's finalize.

The benchmark's older GFLOP/s column used a *convention* (full/tied 4·N·K·D²,
diag/spherical 8·N·K·D), which for full covariances counts about twice the
arithmetic the kernel performs; the ceiling table uses the count above.
"""

from __future__ import annotations

import time

import numpy as np


#: what ``em_stats_flops`` counts, for the JSON (a multiply-add = 2 flops; nnz = the
#: (row, component) pairs with a non-zero responsibility)
FLOP_FORMULAS = {
    "full": "N*K*(D*(D+1) + 3*D) + nnz*(D*(D+1) + 3*D)",
    "diag": "9*N*K*D",
    "spherical": "9*N*K*D",
    "tied": "N*(4*D + 3*D*(D+1)) + 9*N*K*D",
    "not counted": "log-sum-exp (one exp per row and component), tile bookkeeping, finalize",
}


def matmul_gflops(dtype: str, repeat: int = 5) -> dict:
    """This machine's NumPy matmul rate (square n x n, best of ``repeat`` after a warm-up)."""
    n = 2000 if dtype == "float64" else 2500
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"n": n, "seconds": best, "gflops": 2.0 * n**3 / best / 1e9}


def fma_peak(dtype: str, n_threads: int) -> dict:
    """gmmfast's native FMA-throughput probe, or a note when this build has none."""
    from gmmfast import _core

    if not hasattr(_core, "fma_peak"):
        return {"skipped": "this gmmfast build has no _core.fma_peak"}
    return dict(_core.fma_peak(dtype, n_threads))


def em_stats_flops(covariance_type: str, n_samples: int, n_features: int,
                   n_components: int, nonzero_pairs: int | None = None) -> float:
    """Flops one em_stats call performs (see the module docstring).

    ``nonzero_pairs``: (row, component) pairs with a non-zero responsibility, which the
    full-covariance M-step visits (default: all N·K).
    """
    n, d, k = int(n_samples), int(n_features), int(n_components)
    if min(n, d, k) < 1:
        raise ValueError(f"n_samples, n_features and n_components must be >= 1, got {n}, {d}, {k}")
    tri = d * (d + 1)  # a triangle of multiply-adds, 2 flops each
    if covariance_type == "full":
        nnz = n * k if nonzero_pairs is None else int(nonzero_pairs)
        if not 0 <= nnz <= n * k:
            raise ValueError(f"nonzero_pairs must lie in [0, n_samples * n_components], got {nnz}")
        return float(n * k * (tri + 3 * d) + nnz * (tri + 3 * d))
    if covariance_type in ("diag", "spherical"):
        return float(9 * n * k * d)
    if covariance_type == "tied":
        return float(n * (4 * d + 3 * tri) + 9 * n * k * d)
    raise ValueError(
        f"covariance_type must be 'full', 'tied', 'diag' or 'spherical', got {covariance_type!r}"
    )


def nonzero_pairs(X, init, n_threads: int) -> int:
    """(row, component) pairs whose responsibility is not exactly zero at ``init``
    (computed from gmmfast's own log-responsibilities in X's dtype)."""
    import gmmfast.ops as ops

    with np.errstate(divide="ignore"):
        log_w = np.log(init.weights)
    log_resp = ops.log_prob(X, log_w, init.means, init.precisions_cholesky,
                            init.covariance_type, output="log_resp", n_threads=n_threads)
    return int(np.count_nonzero(np.exp(log_resp)))


def kernel_ceiling(case, X, init, n_threads: int, repeat: int) -> dict:
    """em_stats alone (no finalize), timed best-of-``repeat``, as a fraction of the
    GEMM and FMA ceilings, with the flop count it performs.

    The ceilings are measured right before and right after em_stats, and the higher of
    the two kept: on a shared machine the load changes within a run, and a ceiling
    measured minutes earlier (or in a quieter moment) would flatter or sink the
    fraction. Keeping the higher one errs against gmmfast.
    """
    import gmmfast.ops as ops

    dtype = str(X.dtype)
    gemm_runs = [matmul_gflops(dtype, repeat=3)]
    peak_runs = [fma_peak(dtype, n_threads)]

    with np.errstate(divide="ignore"):
        log_w = np.log(init.weights).astype(X.dtype)
    means = init.means.astype(X.dtype)
    prec = init.precisions_cholesky.astype(X.dtype)

    def run():
        return ops.em_stats(X, log_w, means, prec, init.covariance_type, n_threads=n_threads)

    run()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    gemm_runs.append(matmul_gflops(dtype, repeat=3))
    peak_runs.append(fma_peak(dtype, n_threads))
    gemm = max(gemm_runs, key=lambda g: g["gflops"])
    peaks = [p for p in peak_runs if "gflops" in p]
    peak = max(peaks, key=lambda p: p["gflops"]) if peaks else peak_runs[0]
    nnz = nonzero_pairs(X, init, n_threads) if init.covariance_type == "full" else None
    flops = em_stats_flops(init.covariance_type, X.shape[0], X.shape[1], init.n_components, nnz)
    gflops = flops / best / 1e9
    out = {
        "em_stats_ms": best * 1e3,
        "flops": flops,
        "nonzero_pairs": nnz,
        "gflops": gflops,
        "gemm_gflops": gemm["gflops"],
        "gemm_fraction": gflops / gemm["gflops"],
        "gemm_runs_gflops": [g["gflops"] for g in gemm_runs],
        "fma_peak_runs_gflops": [p.get("gflops") for p in peak_runs],
    }
    if "gflops" in peak:
        out["fma_peak_gflops"] = peak["gflops"]
        out["fma_peak_fraction"] = gflops / peak["gflops"]
    return out
