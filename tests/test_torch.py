"""gmmfast.torch: the gmmfast:: custom ops on CPU tensors.

References: torch.distributions (MixtureSameFamily over MultivariateNormal /
Independent(Normal)) evaluated in float64 and differentiated by autograd, the native
NumPy API gmmfast.ops, and torch.autograd.gradcheck's finite differences.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import gmmfast.ops as ops  # noqa: E402
import gmmfast.torch as gt  # noqa: E402
from gmmfast._types import EMStats  # noqa: E402

COV_TYPES = ["full", "tied", "diag", "spherical"]
OUTPUTS = ["sample", "log_resp", "weighted"]
F64 = torch.float64


def make_mixture(cov, K=3, D=4, dtype=F64, seed=0, requires_grad=False):
    """A random, well-conditioned mixture in scikit-learn's parameterisation."""
    g = torch.Generator().manual_seed(seed)
    log_weights = torch.log_softmax(torch.randn(K, generator=g, dtype=F64), 0)
    means = torch.randn(K, D, generator=g, dtype=F64)
    if cov in ("full", "tied"):
        shape = (K, D, D) if cov == "full" else (D, D)
        U = torch.triu(0.3 * torch.randn(*shape, generator=g, dtype=F64), 1)
        U = U + torch.diag_embed(0.8 + torch.rand(*shape[:-1], generator=g, dtype=F64))
    elif cov == "diag":
        U = 0.6 + torch.rand(K, D, generator=g, dtype=F64)
    else:
        U = 0.6 + torch.rand(K, generator=g, dtype=F64)
    out = [t.to(dtype) for t in (log_weights, means, U)]
    if requires_grad:
        out = [t.requires_grad_() for t in out]
    return out


def reference_distribution(log_weights, means, U, cov):
    """torch.distributions mixture with the same parameters (U = precision Cholesky)."""
    K, D = means.shape
    mix = torch.distributions.Categorical(logits=log_weights)
    if cov in ("full", "tied"):
        Uk = U if cov == "full" else U.expand(K, D, D)
        comp = torch.distributions.MultivariateNormal(means, precision_matrix=Uk @ Uk.transpose(-1, -2))
    else:
        p = U if cov == "diag" else U[:, None].expand(K, D)
        comp = torch.distributions.Independent(torch.distributions.Normal(means, 1.0 / p), 1)
    return torch.distributions.MixtureSameFamily(mix, comp), comp


def reference_outputs(X, log_weights, means, U, cov):
    mixture, comp = reference_distribution(log_weights, means, U, cov)
    weighted = comp.log_prob(X[:, None, :]) + log_weights
    sample = mixture.log_prob(X)
    return {"sample": sample, "weighted": weighted, "log_resp": weighted - sample[:, None]}


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_matches_torch_distributions(cov, output):
    # Both float64; differences come from summation order only: 1e-10 absolute on
    # log-densities of magnitude ~10.
    X = torch.randn(50, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    lw, mu, U = make_mixture(cov)
    got = gt.log_prob(X, lw, mu, U, cov, output)
    want = reference_outputs(X, lw, mu, U, cov)[output]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_float32_matches_float64_reference(cov):
    # float32 kernels vs the float64 reference on the same (float32-representable) inputs:
    # relative error ~ D·eps32 on a Mahalanobis term of a few units -> 1e-5 absolute.
    X = torch.randn(64, 4, generator=torch.Generator().manual_seed(2)).to(torch.float32)
    lw, mu, U = make_mixture(cov, dtype=torch.float32)
    got = gt.log_prob(X, lw, mu, U, cov, "sample")
    assert got.dtype == torch.float32
    want = reference_outputs(X.double(), lw.double(), mu.double(), U.double(), cov)["sample"]
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_gradcheck(cov, output):
    # float64 finite differences vs the analytic backward (em_stats + log_prob_grad_x)
    X = torch.randn(12, 3, dtype=F64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    lw, mu, U = make_mixture(cov, K=2, D=3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: gt.log_prob(*a, cov, output), (X, lw, mu, U))


@pytest.mark.parametrize("cov", COV_TYPES)
def test_gradients_match_torch_distributions(cov):
    # Autograd through torch.distributions is an independent derivation of the same
    # gradients (w.r.t. data, means, logits, and the precision factor).
    X0 = torch.randn(40, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    lw0, mu0, U0 = make_mixture(cov)
    G = torch.randn(40, dtype=F64, generator=torch.Generator().manual_seed(5))
    grads = []
    for impl in ("gmmfast", "torch"):
        X, logits, mu, U = (t.clone().requires_grad_() for t in (X0, lw0, mu0, U0))
        lw = torch.log_softmax(logits, 0)
        if impl == "gmmfast":
            ll = gt.log_prob(X, lw, mu, U, cov)
        else:
            ll = reference_distribution(lw, mu, torch.triu(U) if cov in ("full", "tied") else U, cov)[0].log_prob(X)
        (G * ll).sum().backward()
        grads.append([X.grad, logits.grad, mu.grad, U.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_opcheck(cov):
    X = torch.randn(9, 3, dtype=F64, generator=torch.Generator().manual_seed(6))
    lw, mu, U = make_mixture(cov, K=2, D=3)
    for output in OUTPUTS:
        torch.library.opcheck(torch.ops.gmmfast.log_prob.default, (X, lw, mu, U, cov, output))
    G = torch.randn(9, dtype=F64)
    torch.library.opcheck(
        torch.ops.gmmfast.log_prob_backward.default, (G, X, lw, mu, U, cov, True, True)
    )
    torch.library.opcheck(torch.ops.gmmfast.em_stats.default, (X, lw, mu, U, mu, None, cov))
    torch.library.opcheck(torch.ops.gmmfast.em_stats.default, (X, lw, mu, U, mu, G.abs(), cov))
    st = gt.em_stats(X, lw, mu, U, cov)
    torch.library.opcheck(
        torch.ops.gmmfast.finalize.default, (st.nk, st.s1, st.s2, st.centres, 1e-6, 1e-15, cov)
    )


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_em_stats_and_finalize_match_numpy_ops(cov, dtype):
    # The torch ops and the NumPy API call the same kernels: identical results.
    X = torch.randn(300, 4, generator=torch.Generator().manual_seed(7)).to(dtype)
    lw, mu, U = make_mixture(cov, dtype=dtype)
    w = torch.rand(300, generator=torch.Generator().manual_seed(8)).to(dtype)
    st = gt.em_stats(X, lw, mu, U, cov, sample_weight=w)
    ref = ops.em_stats(X.numpy(), lw.numpy(), mu.numpy(), U.numpy(), cov, sample_weight=w.numpy())
    assert st.log_likelihood.item() == ref.log_likelihood
    for a, b in ((st.nk, ref.nk), (st.s1, ref.s1), (st.s2, ref.s2)):
        np.testing.assert_array_equal(a.numpy(), b)
    params = gt.finalize(st, 1e-6, dtype)
    ref_params = ops.finalize(ref, 1e-6, X.numpy().dtype)
    assert params.failed.item() == -1
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_array_equal(getattr(params, name).numpy(), getattr(ref_params, name))


def test_finalize_reports_failure_without_raising():
    # A singular covariance (all points identical, no regularisation) is flagged.
    X = torch.ones(10, 2, dtype=F64)
    lw, mu, U = make_mixture("full", K=1, D=2)
    st = gt.em_stats(X, lw, mu, U, "full")
    assert gt.finalize(st, reg_covar=0.0).failed.item() == 0
    assert gt.finalize(st, reg_covar=1e-3).failed.item() == -1


@pytest.mark.parametrize("cov", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("where", ["nk", "s1", "s2"])
def test_finalize_of_non_finite_statistics_reports_instead_of_raising(cov, where):
    """The torch op checks no values (as on the GPU): statistics with a NaN give
    `failed` = the first component they touch (tied: the one covariance, 0) instead of
    an exception; the NumPy op still rejects them."""
    X = torch.randn(200, 3, dtype=F64) * 2.0
    lw, mu, U = make_mixture(cov, K=3, D=3)
    st = gt.em_stats(X, lw, mu, U, cov)
    bad = getattr(st, where).clone()
    if where == "s2" and cov == "tied":
        bad[1, 2] = float("nan")
    else:
        bad[1] = float("nan")
    res = gt.finalize(st._replace(**{where: bad}), reg_covar=1e-6)
    # tied: one shared covariance, which any non-finite statistic spoils: its index 0
    assert res.failed.item() == (0 if cov == "tied" else 1)
    assert gt.finalize(st, reg_covar=1e-6).failed.item() == -1
    with pytest.raises(ValueError, match="statistics must be finite"):
        arrays = {n: (bad if n == where else getattr(st, n)).numpy() for n in ("nk", "s1", "s2")}
        ops.finalize(EMStats(covariance_type=cov, centres=st.centres.numpy(), log_likelihood=0.0,
                             weight_sum=float(st.weight_sum), **arrays), reg_covar=1e-6)


def test_nan_propagates_like_torch():
    X = torch.randn(20, 3, dtype=F64)
    X[5, 1] = float("nan")
    lw, mu, U = make_mixture("diag", D=3)
    out = gt.log_prob(X, lw, mu, U, "diag")
    assert torch.isnan(out[5]) and torch.isfinite(torch.cat([out[:5], out[6:]])).all()
    assert torch.isnan(gt.em_stats(X, lw, mu, U, "diag").log_likelihood)


def test_lower_triangle_is_ignored_with_zero_gradient():
    X = torch.randn(10, 3, dtype=F64)
    lw, mu, U = make_mixture("full", K=2, D=3)
    noisy = (U + torch.tril(torch.randn(2, 3, 3, dtype=F64), -1)).requires_grad_()
    out = gt.log_prob(X, lw, mu, noisy, "full")
    torch.testing.assert_close(out, gt.log_prob(X, lw, mu, U, "full"))
    out.sum().backward()
    assert torch.all(torch.tril(noisy.grad, -1) == 0)


def test_torch_compile_fullgraph():
    # The fake implementations let dynamo/inductor trace through the ops without breaks.
    X = torch.randn(64, 3, dtype=F64)
    lw, mu, U = make_mixture("full", K=2, D=3, requires_grad=True)

    def loss(X, lw, mu, U):
        return -gt.log_prob(X, lw, mu, U, "full").mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager = loss(X, lw, mu, U)
    eager_grads = torch.autograd.grad(eager, (mu, U))
    got = compiled(X, lw, mu, U)
    got_grads = torch.autograd.grad(got, (mu, U))
    torch.testing.assert_close(got, eager)
    for a, b in zip(got_grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.update(X=a["X"].to(torch.float16)), "float32 or float64"),
        (lambda a: a.update(X=a["X"][0]), "2-D"),
        (lambda a: a.update(means=a["means"][:, :2]), "means must have shape"),
        (lambda a: a.update(U=a["U"][:1]), "precisions_cholesky must have shape"),
        (lambda a: a.update(cov="banana"), "covariance_type"),
        (lambda a: a.update(output="banana"), "output"),
    ],
)
def test_bad_arguments_raise(mutate, match):
    lw, mu, U = make_mixture("full", K=2, D=3)
    a = dict(X=torch.randn(5, 3, dtype=F64), lw=lw, means=mu, U=U, cov="full", output="sample")
    mutate(a)
    with pytest.raises(ValueError, match=match):
        gt.log_prob(a["X"], a["lw"], a["means"], a["U"], a["cov"], a["output"])


def test_import_gmmfast_without_torch():
    # torch is optional: `import gmmfast` works without it and gmmfast.torch explains.
    code = textwrap.dedent(
        """
        import sys

        class NoTorch:  # an environment without torch: `import torch` fails
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, NoTorch())
        import gmmfast, numpy as np
        gmmfast.GaussianMixture(2).fit(np.random.default_rng(0).normal(size=(50, 2)))
        try:
            import gmmfast.torch
        except ImportError as e:
            assert "pip install torch" in str(e)
            print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
