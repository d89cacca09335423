"""The benchmark harness's own logic (bench/), cheap enough for CI: the flop counts of
the ceiling table against an independent count, the peers' skip logic, the FMA probe's
binding, and the peer and ceiling targets. Nothing here times anything or needs the
`bench` extra (no peer library is imported)."""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

import gmmfast
import gmmfast.ops as ops
from gmmfast import _core

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import ceiling  # noqa: E402
import peer_runs  # noqa: E402
import peers  # noqa: E402


# --------------------------------------------------------------------------------------
# flop counts: a scalar EM pass whose every + - * is counted, checked against em_stats


class Counter:
    n = 0


class F(float):
    """A float that counts the additions, subtractions and multiplications made with it."""

    def _op(self, other, fn):
        Counter.n += 1
        return F(fn(float(self), float(other)))

    def __add__(self, o):
        return self._op(o, lambda a, b: a + b)

    __radd__ = __add__

    def __sub__(self, o):
        return self._op(o, lambda a, b: a - b)

    def __rsub__(self, o):
        return self._op(o, lambda a, b: b - a)

    def __mul__(self, o):
        return self._op(o, lambda a, b: a * b)

    __rmul__ = __mul__


def _counted_em_stats(X, params, resp):
    """nk, s1, s2 of em_stats with the arithmetic the ceiling counts done on counting
    floats (the log-sum-exp, which it does not count, on plain ones). Returns
    (flops, nk, s1, s2)."""
    cov = params.covariance_type
    n, d = X.shape
    k = params.n_components
    U = params.precisions_cholesky
    Counter.n = 0
    # E-step: the quadratic forms
    for i in range(n):
        for c in range(k):
            z = [F(X[i, j]) - F(params.means[c, j]) for j in range(d)]
            if cov == "full":
                y = []
                for j in range(d):  # (x - μ)ᵀ U, U upper triangular: l <= j
                    acc = F(0.0)
                    for l in range(j + 1):
                        acc = acc + z[l] * F(U[c, l, j])
                    y.append(acc)
                sq = F(0.0)
                for j in range(d):
                    sq = sq + y[j] * y[j]
            else:
                p = U[c] if cov == "diag" else np.full(d, U[c])
                sq = F(0.0)
                for j in range(d):
                    t = z[j] * F(p[j])
                    sq = sq + t * t
            float(sq)
    # M-step
    nk = resp.sum(axis=0)
    s1 = np.zeros((k, d))
    s2 = np.zeros((k, d, d)) if cov == "full" else np.zeros((k, d))
    for c in range(k):
        if cov == "full":
            acc1 = [F(0.0)] * d
            acc2 = [[F(0.0)] * d for _ in range(d)]
            for i in range(n):
                r = F(resp[i, c])
                if float(r) == 0.0:
                    continue  # the kernel skips exact zeros
                z = [F(X[i, j]) - F(params.means[c, j]) for j in range(d)]
                w = [r * z[j] for j in range(d)]
                acc1 = [acc1[j] + w[j] for j in range(d)]
                for l in range(d):
                    for j in range(l, d):
                        acc2[l][j] = acc2[l][j] + z[l] * w[j]
            s1[c] = [float(v) for v in acc1]
            for l in range(d):
                for j in range(l, d):
                    s2[c, l, j] = s2[c, j, l] = float(acc2[l][j])
        else:
            for j in range(d):
                a1, a2 = F(0.0), F(0.0)
                for i in range(n):
                    z = F(X[i, j]) - F(params.means[c, j])
                    t = F(resp[i, c]) * z
                    a1 = a1 + t
                    a2 = a2 + t * z
                s1[c, j], s2[c, j] = float(a1), float(a2)
    if cov == "spherical":
        s2 = s2.sum(axis=1)
    return Counter.n, nk, s1, s2


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
def test_flop_count_matches_a_counted_em_pass(cov):
    rng = np.random.default_rng(3)
    n, d, k = 24, 3, 2
    X = rng.standard_normal((n, d)) + np.repeat([[0.0] * d, [40.0] * d], n // 2, axis=0)
    # two clusters 40 apart: k-means finds them, and each row's responsibility for the
    # other cluster underflows to exactly zero
    params = ops.initial_params(X, k, cov, init_params="kmeans", random_state=0)
    log_resp = ops.log_prob(X, np.log(params.weights), params.means,
                            params.precisions_cholesky, cov, output="log_resp")
    resp = np.exp(log_resp)
    flops, nk, s1, s2 = _counted_em_stats(X, params, resp)

    # the counted pass computes em_stats's statistics, centred at the means
    stats = ops.em_stats(X, np.log(params.weights), params.means,
                         params.precisions_cholesky, cov)
    np.testing.assert_allclose(nk, stats.nk, rtol=1e-10)
    np.testing.assert_allclose(s1, stats.s1, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(s2, stats.s2, rtol=1e-8, atol=1e-8)

    nnz = int(np.count_nonzero(resp))
    assert flops == ceiling.em_stats_flops(cov, n, d, k, nonzero_pairs=nnz)
    if cov == "full":
        assert nnz < n * k  # the data make some responsibilities exactly zero
        assert ceiling.nonzero_pairs(X, params, 1) == nnz


def test_flop_count_is_about_half_the_old_convention_for_full():
    # 4·N·K·D² (the convention) against what the kernel performs, D = 32, all pairs
    n, d, k = 1000, 32, 16
    ratio = ceiling.em_stats_flops("full", n, d, k) / (4.0 * n * k * d * d)
    assert 0.5 < ratio < 0.6


def test_flop_count_rejects_bad_arguments():
    with pytest.raises(ValueError, match="covariance_type"):
        ceiling.em_stats_flops("banana", 10, 2, 2)
    with pytest.raises(ValueError, match="nonzero_pairs"):
        ceiling.em_stats_flops("full", 10, 2, 2, nonzero_pairs=21)
    with pytest.raises(ValueError, match="n_samples"):
        ceiling.em_stats_flops("diag", 0, 2, 2)
    # tied: the closed form against its parts, D = 1 by hand
    assert ceiling.em_stats_flops("tied", 1, 1, 1) == 4 + 3 * 2 + 9


# --------------------------------------------------------------------------------------
# the FMA probe


def test_fma_peak_reports_the_dispatchers_isa():
    for dtype, scale in (("float64", 1), ("float32", 2)):
        out = _core.fma_peak(dtype, n_threads=1, iterations=20_000, repeat=1)
        assert out["gflops"] > 0 and math.isfinite(out["gflops"])
        assert out["isa"] == gmmfast.build_info()["isa"]
        assert out["threads"] == 1 and out["dtype"] == dtype
        lanes = {"avx512": 8, "avx2": 4}.get(out["isa"], 2)
        assert out["lanes"] == lanes * scale


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(dtype="float16"), "dtype"), (dict(iterations=0), "iterations"), (dict(repeat=0), "repeat")],
)
def test_fma_peak_names_a_bad_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _core.fma_peak(**{"n_threads": 1, "iterations": 10, **kwargs})


# --------------------------------------------------------------------------------------
# peers: skipped with a note when missing, unsupported cases named


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(peers.PEERS["mlpack"], "module", "gmmfast_no_such_module_xyz")
    chosen, notes = peer_runs.select(["mlpack"])
    assert chosen == {}
    assert "not installed" in notes["mlpack"] and "pip install" in notes["mlpack"]
    assert "[bench]" in notes["mlpack"]


def test_an_unknown_peer_is_an_error_naming_it():
    with pytest.raises(ValueError, match="nosuchpeer"):
        peer_runs.select(["nosuchpeer"])
    import bench_em

    assert bench_em.parse_args(["--peers", "none"]).peers == []
    assert bench_em.parse_args([]).peers is None
    assert set(bench_em.PEER_NAMES) == set(peers.PEERS)
    with pytest.raises(SystemExit):
        bench_em.parse_args(["--peers", "nosuchpeer"])


def test_peers_name_what_they_cannot_run():
    assert "tied" in peers.PEERS["mlpack"].unsupported("tied", "float64")
    assert "spherical" in peers.PEERS["mlpack"].unsupported("spherical", "float64")
    assert "tied" in peers.PEERS["opencv"].unsupported("tied", "float64")
    assert "tied" in peers.PEERS["pomegranate"].unsupported("tied", "float32")
    assert peers.PEERS["torchgmm"].unsupported("tied", "float32") is None
    assert peers.PEERS["opencv"].unsupported("full", "float32") is None


def test_added_reg_covar_and_opencv_layouts():
    full = np.stack([np.eye(2) * 2, np.eye(2)])
    np.testing.assert_allclose(peers._add_reg(full, "full", 0.5)[1], np.eye(2) * 1.5)
    np.testing.assert_allclose(peers._add_reg(np.ones((2, 3)), "diag", 0.5), 1.5)
    for cov, values in (("diag", np.array([[1.0, 2.0], [3.0, 4.0]])), ("spherical", np.array([1.0, 2.0]))):
        mats = peers._full_covariances(values, cov, 2, 2)
        assert mats.shape == (2, 2, 2)
        np.testing.assert_allclose(peers._from_full(mats, cov), values)


def test_final_log_likelihood_is_scored_alike_for_every_library():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 2))
    p = ops.initial_params(X, 2, "diag", init_params="random", random_state=0)
    out = peers.FixedOutput(1, p.weights, p.means, p.covariances)
    ll = peer_runs.mean_log_likelihood(X, "diag", out, 1)
    expected = ops.em_stats(X, np.log(p.weights), p.means, p.precisions_cholesky, "diag")
    assert ll == pytest.approx(expected.mean_log_likelihood, rel=1e-12)
    assert peer_runs.mean_log_likelihood(X, "diag", peers.FixedOutput(1, mean_log_likelihood=-3.5), 1) == -3.5


# --------------------------------------------------------------------------------------
# targets and tables on a synthetic result


def _result():
    return {
        "name": "full64", "label": "full fp64", "flops_per_iteration": 4e9,
        "iteration": {
            "gmmfast": {"ms": 10.0},
            "pomegranate": {"ms": 30.0, "gmmfast_speedup": 3.0},
            "mlpack": {"skipped": "no one-iteration API"},
        },
        "fixed": {
            "gmmfast": {"start": "same", "n_iter": 10, "seconds": 0.1, "seconds_per_iteration": 0.01,
                        "final_mean_ll": -5.0, "gmmfast_speedup_per_iteration": 1.0},
            "opencv": {"start": "same", "n_iter": 10, "seconds": 0.05, "seconds_per_iteration": 0.005,
                       "final_mean_ll": -5.0, "ll_minus_gmmfast": 0.0,
                       "gmmfast_speedup_per_iteration": 0.5},
            "mlpack": {"skipped": "mlpack has no tied covariance"},
        },
        "ceiling": {"em_stats_ms": 8.0, "flops": 2e9, "gflops": 250.0, "gemm_gflops": 400.0,
                    "gemm_fraction": 0.625, "fma_peak_gflops": 500.0, "fma_peak_fraction": 0.5},
    }


def test_peer_and_ceiling_targets():
    import cases
    import harness

    res = _result()
    targets = {t.kind: t for t in cases.targets_for(cases.CASES["full64"])}
    peer = harness._evaluate(targets["peers"], res)
    assert peer["result"] == "FAIL"  # opencv faster per iteration in this made-up run
    assert "opencv (10 it) 0.50x ✗" in peer["measured"]
    assert "pomegranate (1 it) 3.00x ✓" in peer["measured"]
    res["fixed"]["opencv"]["gmmfast_speedup_per_iteration"] = 2.0
    assert harness._evaluate(targets["peers"], res)["result"] == "PASS"
    ceil = harness._evaluate(targets["ceiling"], res)
    assert ceil["result"] == "FAIL" and "62% of GEMM" in ceil["measured"]
    assert "ceiling" not in {t.kind for t in cases.targets_for(cases.CASES["diag64"])}


def test_report_renders_the_peer_and_ceiling_tables():
    import report

    res = {"cases": [_result()]}
    fixed = "\n".join(report.fixed_table(res))
    assert "skipped (mlpack has no tied covariance)" in fixed
    assert "| opencv | same | 0.05 | 5 | 0.5× | -5.000000 | +0.0e+00 |" in fixed
    ceil = "\n".join(report.ceiling_table(res))
    assert "62%" in ceil and "50%" in ceil and "| 500 |" in ceil
