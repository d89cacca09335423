"""Data-parallel fitting with torch.distributed: two processes on the gloo backend (CPU),
spawned here (rendezvous through a file store), each fitting its half of the rows as a torch
tensor; the statistics are all-reduced every iteration.

Reference: a single-process fit of the concatenated rows from the same initial mixture
(and, since the initialisation sample is then all the rows, from the same random_state)."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from gmmfast import GaussianMixture  # noqa: E402

SPLIT = 700  # rank 0 holds rows [0, SPLIT), rank 1 the rest


def blobs(n=1500, d=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(k, d)) + 30.0
    return centres[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def weights(n):
    return np.random.default_rng(1).integers(0, 3, size=n).astype(np.float64)


def fixed_init(X, k, covariance_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = GaussianMixture(k, covariance_type=covariance_type, max_iter=2, random_state=1).fit(X)
    w = g.weights_.astype(np.float64)
    return dict(weights_init=w / w.sum(), means_init=g.means_.astype(np.float64),
                precisions_init=g.precisions_.astype(np.float64))


# the fits each rank runs: name -> (estimator kwargs, dtype, weighted)
CASES = {
    "full-kmeans": (dict(random_state=0), torch.float64, False),
    "diag-random": (dict(covariance_type="diag", init_params="random", random_state=2), torch.float64, False),
    "tied-init-weights": (dict(covariance_type="tied", init="fixed"), torch.float64, True),
    "spherical-init-f32": (dict(covariance_type="spherical", init="fixed", tol=1e-4), torch.float32, False),
}


def estimator(kw, X):
    kw = dict(kw)
    if kw.pop("init", None) == "fixed":
        kw.update(fixed_init(X, 4, kw.get("covariance_type", "full")))
    return GaussianMixture(4, n_threads=1, **kw)


def _worker(rank, world, store, out):
    # a file store rendezvous: no port to pick, so no race with other processes' sockets
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        import gmmfast.torch.distributed as gtd

        X = blobs()
        w = weights(X.shape[0])
        rows = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
        results = {}
        for name, (kw, dtype, weighted) in CASES.items():
            Xl = torch.as_tensor(X[rows], dtype=dtype)
            sw = torch.as_tensor(w[rows]) if weighted else None
            gm = estimator(kw, X).fit(Xl, sample_weight=sw)
            results[name] = {a: getattr(gm, a).numpy() for a in ("weights_", "means_", "covariances_")}
            results[name].update(lower_bound=gm.lower_bound_, n_iter=gm.n_iter_)
        # the Bayesian mixture through the same data source: its priors' pass and every
        # iteration's statistics are all-reduced, the variational M-step runs on each rank
        from gmmfast import BayesianGaussianMixture

        b = BayesianGaussianMixture(n_components=4, random_state=0, n_threads=1).fit(
            torch.as_tensor(X[rows]), sample_weight=torch.as_tensor(w[rows]))
        results["bayesian"] = {a: np.asarray(getattr(b, a)) for a in ("weights_", "means_", "covariances_",
                                                                     "mean_prior_")}
        results["bayesian"].update(lower_bound=b.lower_bound_, n_iter=b.n_iter_)
        # use_group(None): each rank fits its own rows, as without a process group
        with gtd.use_group(None):
            local = GaussianMixture(4, random_state=0, n_threads=1).fit(torch.as_tensor(X[rows]))
        results["local"] = {"means_": local.means_.numpy(), "n_iter": local.n_iter_}
        # a NaN on rank 1 only: both ranks raise (nobody waits for the other)
        bad = X[rows].copy()
        if rank == 1:
            bad[5, 0] = np.nan
        try:
            GaussianMixture(4, n_threads=1).fit(torch.as_tensor(bad))
        except ValueError as exc:
            results["error"] = str(exc)
        # a checkpoint at a path only rank 0 writes (as on nodes without a shared file
        # system): interrupted on both ranks at iteration 5, then resumed together
        ck = os.path.join(out, f"fit-rank{rank}.ckpt")
        kwc = dict(n_components=4, random_state=0, tol=0.0, max_iter=12, n_threads=1)

        class Stop(GaussianMixture):
            def _on_iteration(self, n_iter, lower_bound, change):
                if n_iter == 5:
                    raise KeyboardInterrupt

        Xl = torch.as_tensor(X[rows])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = GaussianMixture(**kwc).fit(Xl)
            try:
                Stop(**kwc, checkpoint=ck, checkpoint_every=2).fit(Xl)
            except KeyboardInterrupt:
                pass
            written = os.path.exists(ck)
            resumed = GaussianMixture(**kwc, checkpoint=ck, checkpoint_every=2).fit(Xl)
        results["checkpoint"] = dict(
            written=written,
            left=os.path.exists(ck),
            same=all(np.array_equal(getattr(full, a).numpy(), getattr(resumed, a).numpy())
                     for a in ("weights_", "means_", "covariances_")),
            lower_bounds=(full.lower_bounds_, resumed.lower_bounds_),
        )
        # the up-front memory check fails on rank 1 only (1 KiB 'available' there): every
        # rank raises MemoryError before the initialisation, none waits for the other
        from gmmfast import _core

        before = _core.memory_limit(1024 if rank == 1 else None)
        try:
            GaussianMixture(50, n_threads=1).fit(torch.as_tensor(X[rows]))
        except MemoryError as exc:
            results["memory_error"] = str(exc)
        finally:
            _core.memory_limit(before)
        np.save(os.path.join(out, f"rank{rank}.npy"), results, allow_pickle=True)
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalisation: gloo's worker threads can still be tearing
    # down while CPython finalises, which aborts the process now and then ("terminate
    # called without an active exception", seen in 2 of ~8 full-suite runs; a known torch
    # problem, pytorch PR 179291). The results are saved and the group destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as mp

    out = str(tmp_path_factory.mktemp("ranks"))
    mp.spawn(_worker, args=(2, os.path.join(out, "store"), out), nprocs=2, join=True)
    return [np.load(os.path.join(out, f"rank{r}.npy"), allow_pickle=True).item() for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_one_process(ranks, name):
    kw, dtype, weighted = CASES[name]
    X = blobs()
    sw = torch.as_tensor(weights(X.shape[0])) if weighted else None
    ref = estimator(kw, X).fit(torch.as_tensor(X, dtype=dtype), sample_weight=sw)
    rtol = 1e-9 if dtype == torch.float64 else 2e-4
    r0, r1 = ranks
    for attr in ("weights_", "means_", "covariances_"):
        # every rank holds the same model (the same numbers: one all-reduce)
        np.testing.assert_array_equal(r0[name][attr], r1[name][attr])
        np.testing.assert_allclose(r0[name][attr], getattr(ref, attr).numpy(), rtol=rtol, atol=rtol)
        assert r0[name][attr].dtype == getattr(ref, attr).numpy().dtype
    assert r0[name]["n_iter"] == ref.n_iter_
    assert r0[name]["lower_bound"] == pytest.approx(ref.lower_bound_, rel=rtol)


def test_bayesian_mixture_two_ranks_match_one_process(ranks):
    from gmmfast import BayesianGaussianMixture

    X = blobs()
    ref = BayesianGaussianMixture(n_components=4, random_state=0, n_threads=1).fit(
        torch.as_tensor(X), sample_weight=torch.as_tensor(weights(X.shape[0])))
    r0, r1 = ranks
    for attr in ("weights_", "means_", "covariances_", "mean_prior_"):
        np.testing.assert_array_equal(r0["bayesian"][attr], r1["bayesian"][attr])
        np.testing.assert_allclose(r0["bayesian"][attr], np.asarray(getattr(ref, attr)), rtol=1e-9, atol=1e-9)
    assert r0["bayesian"]["n_iter"] == ref.n_iter_
    assert r0["bayesian"]["lower_bound"] == pytest.approx(ref.lower_bound_, rel=1e-9)


def test_use_group_none_and_collective_errors(ranks):
    X = blobs()
    for rank, rows in ((0, slice(0, SPLIT)), (1, slice(SPLIT, None))):
        ref = GaussianMixture(4, random_state=0, n_threads=1).fit(torch.as_tensor(X[rows]))
        np.testing.assert_allclose(ranks[rank]["local"]["means_"], ref.means_.numpy(), rtol=1e-12)
        assert ranks[rank]["local"]["n_iter"] == ref.n_iter_
    assert "NaN" in ranks[1]["error"]
    assert "rank 1 of the process group failed" in ranks[0]["error"] and "NaN" in ranks[0]["error"]


def test_memory_check_fails_on_every_rank(ranks):
    """A rank whose memory check fails makes every rank raise MemoryError (the ranks
    agree on the outcome of the check, which comes before any collective of the fit)."""
    assert ranks[1]["memory_error"].startswith("gmmfast.GaussianMixture.fit would need about")
    assert "1 KiB is available" in ranks[1]["memory_error"]
    assert ranks[0]["memory_error"] == "rank 1: " + ranks[1]["memory_error"]


def test_no_process_group_no_change():
    """Without torch.distributed initialised, a tensor fit is the plain one."""
    assert not dist.is_initialized()
    from gmmfast.torch.distributed import current_group as distributed_group

    assert distributed_group() is None


def test_checkpoint_written_by_rank_0_resumes_every_rank(ranks):
    """Only rank 0 writes the checkpoint (here at a path the other rank does not see);
    after an interruption every rank resumes from rank 0's state, and the resumed fit is
    the uninterrupted one on both ranks; the checkpoint is removed at the end."""
    r0, r1 = ranks
    assert r0["checkpoint"]["written"] and not r1["checkpoint"]["written"]
    for r in (r0, r1):
        assert r["checkpoint"]["same"] and not r["checkpoint"]["left"]
        full, resumed = r["checkpoint"]["lower_bounds"]
        assert full == resumed and len(full) == 12
