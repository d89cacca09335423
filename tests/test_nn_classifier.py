"""gmmfast.nn.GaussianMixtureClassifier and LGMLoss (L-GM, Wan et al. 2018).

Oracles: the logits, likelihood term and densities computed directly in torch with
[N, K, D] differences and dense precision matrices (independent of gmmfast's op), their
autograd gradients, float64 gradcheck, and scikit-learn's LinearDiscriminantAnalysis /
QuadraticDiscriminantAnalysis / GaussianNB for the closed-form (GDA) fit.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from gmmfast.nn import GaussianMixtureClassifier, LGMLoss  # noqa: E402

F64 = torch.float64
COVS = ["identity", "diag", "shared_diag", "shared_full"]
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def perturbed_head(cov, M, D=4, C=3, dtype=F64, seed=0):
    torch.manual_seed(seed)
    h = GaussianMixtureClassifier(D, C, cov, M, learn_prior=True).to(dtype)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return h


def dense_precision(h):
    """Λ_k [K, D, D] built from the raw parameters (not via the head's helpers)."""
    K, D = h.num_components, h.in_features
    dt = h.means.dtype
    if h.covariance == "identity":
        return torch.eye(D, dtype=dt).expand(K, D, D)
    if h.covariance == "diag":
        return torch.diag_embed(torch.exp(2 * h.log_precision))
    if h.covariance == "shared_diag":
        return torch.diag(torch.exp(2 * h.log_precision)).expand(K, D, D)
    P = h.precision_factor
    U = torch.triu(P, 1) + torch.diag(torch.exp(torch.diagonal(P)))
    return (U @ U.T).expand(K, D, D)


def direct(h, X, y, alpha):
    """(margin logits, plain logits, own-class NLL) with [N, K, D] tensors."""
    N = X.shape[0]
    C, M = h.num_classes, h.components_per_class
    Lam = dense_precision(h)
    diff = X[:, None, :] - h.means[None]
    d = 0.5 * torch.einsum("nkd,kde,nke->nk", diff, Lam, diff)
    half_logdet = 0.5 * torch.logdet(Lam)
    lw = torch.log_softmax(h.prior_logits, 0)
    own = F.one_hot(y, C).to(X.dtype).repeat_interleave(M, 1)
    margin = torch.logsumexp((lw + half_logdet - d * (1 + alpha * own)).view(N, C, M), -1)
    plain = torch.logsumexp((lw + half_logdet - d).view(N, C, M), -1)
    within = torch.log_softmax(h.prior_logits.view(C, M), 1).reshape(-1)
    lik = (within + half_logdet - d).view(N, C, M)[torch.arange(N), y]
    return margin, plain, -torch.logsumexp(lik, -1), d, half_logdet


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_logits_and_likelihood_match_direct(cov, M, dtype):
    h = perturbed_head(cov, M, dtype=dtype)
    X = torch.randn(9, 4, dtype=dtype)
    y = torch.randint(0, 3, (9,))
    got = h.lgm_outputs(X, y, alpha=0.7)
    want = direct(h, X, y, 0.7)[:3]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == F64 else dict(rtol=1e-4, atol=1e-4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)
    torch.testing.assert_close(h(X), want[1], **tol)
    assert torch.equal(h.predict(X), want[1].argmax(1))
    # the paper's logits with M = 1: −d_k (1 + α[k = y]) + ½ log|Λ_k| + log π_k
    if M == 1:
        _, _, _, d, hl = direct(h, X, y, 0.7)
        paper = -d * (1 + 0.7 * F.one_hot(y, 3).to(dtype)) + hl + torch.log_softmax(h.prior_logits, 0)
        torch.testing.assert_close(got[0], paper, **tol)
        torch.testing.assert_close(got[2], d[torch.arange(9), y] - hl[y], **tol)


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("M", [1, 2])
def test_log_density_matches_distributions(cov, M):
    h = perturbed_head(cov, M)
    X = torch.randn(8, 4, dtype=F64)
    Lam = dense_precision(h)
    comp = torch.distributions.MultivariateNormal(h.means, precision_matrix=Lam)
    log_n = comp.log_prob(X[:, None, :])  # [N, K]
    lw = torch.log_softmax(h.prior_logits, 0)
    torch.testing.assert_close(h.log_density(X), torch.logsumexp(lw + log_n, 1))
    within = torch.log_softmax(h.prior_logits.view(3, M), 1).reshape(-1)
    per_class = torch.logsumexp((within + log_n).view(8, 3, M), -1)
    torch.testing.assert_close(h.log_density(X, per_class=True), per_class)
    # logits are log p(x, c) + D/2 log 2π
    prior_c = torch.logsumexp(lw.view(3, M), 1)
    torch.testing.assert_close(h(X), per_class + prior_c + 2 * math.log(2 * math.pi))


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("M", [1, 2])
def test_gradients_match_direct(cov, M):
    h = perturbed_head(cov, M)
    X = torch.randn(10, 4, dtype=F64, requires_grad=True)
    y = torch.randint(0, 3, (10,))
    loss_fn = LGMLoss(alpha=0.5, lam=0.3)
    loss = loss_fn(h, X, y)
    params = [p for p in h.parameters()]
    got = torch.autograd.grad(loss, [X] + params)
    margin, _, nll = direct(h, X, y, 0.5)[:3]
    ref = F.cross_entropy(margin, y) + 0.3 * nll.mean()
    torch.testing.assert_close(loss, ref)
    want = torch.autograd.grad(ref, [X] + params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


class _LGMOutputs(torch.nn.Module):
    """forward = head.lgm_outputs, so torch.func.functional_call can swap the parameters."""

    def __init__(self, head, alpha):
        super().__init__()
        self.head, self.alpha = head, alpha

    def forward(self, x, y):
        return self.head.lgm_outputs(x, y, self.alpha)


@pytest.mark.parametrize("cov", ["diag", "shared_full"])
def test_gradcheck(cov):
    h = perturbed_head(cov, 2, D=3, C=2)
    wrapper = _LGMOutputs(h, 0.3)
    names = [n for n, _ in wrapper.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in wrapper.named_parameters())
    X = torch.randn(5, 3, dtype=F64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1])

    def f(x, *ps):
        return torch.func.functional_call(wrapper, dict(zip(names, ps)), (x, y))

    assert torch.autograd.gradcheck(f, (X,) + params)


def test_loss_warmup_schedule_and_state():
    h = perturbed_head("identity", 1)
    X = torch.randn(6, 4, dtype=F64)
    y = torch.randint(0, 3, (6,))
    fn = LGMLoss(alpha=1.0, lam=0.5, warmup_steps=4)
    ce = F.cross_entropy(h(X), y)
    # step 0: α = λ = 0 → plain cross-entropy
    torch.testing.assert_close(fn(h, X, y), ce)
    assert fn.step == 1
    fn(h, X, y)
    # step 2: α = 0.5, λ = 0.25
    margin, _, nll = direct(h, X, y, 0.5)[:3]
    torch.testing.assert_close(fn(h, X, y), F.cross_entropy(margin, y) + 0.25 * nll.mean())
    assert fn.step == 3
    for _ in range(5):
        fn(h, X, y)
    assert fn.current_alpha() == 1.0 and fn.current_lam() == 0.5
    # the step counter survives a state_dict round trip; eval mode uses the full values
    other = LGMLoss(alpha=1.0, lam=0.5, warmup_steps=4)
    other.load_state_dict(fn.state_dict())
    assert other.step == fn.step == 8
    fresh = LGMLoss(alpha=1.0, lam=0.5, warmup_steps=4).eval()
    margin, plain, nll = direct(h, X, y, 1.0)[:3]
    loss, logits = fresh(h, X, y, return_logits=True)
    torch.testing.assert_close(loss, F.cross_entropy(margin, y) + 0.5 * nll.mean())
    torch.testing.assert_close(logits, plain)
    assert fresh.step == 0


def test_margin_increases_loss_and_likelihood_pulls_to_means():
    torch.manual_seed(0)
    h = GaussianMixtureClassifier(2, 3)
    X = torch.randn(30, 2)
    y = torch.randint(0, 3, (30,))
    assert LGMLoss(0.0, 0.0)(h, X, y) < LGMLoss(1.0, 0.0)(h, X, y)
    # the likelihood term's gradient moves features towards their class mean
    Xr = X.clone().requires_grad_()
    _, _, nll = h.lgm_outputs(Xr, y)
    nll.sum().backward()
    torch.testing.assert_close(Xr.grad, X - h.means[y].detach())


@pytest.mark.parametrize("cov", COVS)
def test_state_dict_round_trip(cov):
    h = perturbed_head(cov, 2)
    other = GaussianMixtureClassifier(4, 3, cov, 2, learn_prior=True).double()
    other.load_state_dict(h.state_dict())
    X = torch.randn(5, 4, dtype=F64)
    torch.testing.assert_close(other(X), h(X))
    torch.testing.assert_close(other.log_density(X), h.log_density(X))


def blobs(rng, C=3, D=4, n=(60, 80, 100)):
    A = rng.normal(size=(D, D))
    X, y = [], []
    for c in range(C):
        scale = rng.uniform(0.5, 2.0, D)
        X.append(rng.normal(size=(n[c], D)) * scale @ (A if c == 0 else np.eye(D)) + 3 * rng.normal(size=D))
        y.append(np.full(n[c], c))
    return np.concatenate(X), np.concatenate(y)


def test_gda_shared_full_matches_lda():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rng = np.random.default_rng(0)
    X, y = blobs(rng)
    lda = LinearDiscriminantAnalysis(solver="lsqr", store_covariance=True).fit(X, y)
    h = GaussianMixtureClassifier(4, 3, "shared_full").double().fit_gda_(torch.tensor(X), torch.tensor(y),
                                                                        reg_covar=0.0)
    np.testing.assert_allclose(h.means.detach().numpy(), lda.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h.covariances()[0].detach().numpy(), lda.covariance_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(h.log_weights().detach().numpy(), np.log(lda.priors_), rtol=1e-12)
    Xt = rng.normal(size=(300, 4)) * 4
    pred = h.predict(torch.tensor(Xt)).numpy()
    np.testing.assert_array_equal(pred, lda.predict(Xt))
    np.testing.assert_allclose(torch.softmax(h(torch.tensor(Xt)), 1).detach().numpy(), lda.predict_proba(Xt),
                               rtol=1e-6, atol=1e-9)


def test_gda_diag_matches_qda_and_gaussian_nb():
    from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
    from sklearn.naive_bayes import GaussianNB

    rng = np.random.default_rng(1)
    X, y = blobs(rng)
    counts = np.bincount(y)
    qda = QuadraticDiscriminantAnalysis(store_covariance=True).fit(X, y)
    h = GaussianMixtureClassifier(4, 3, "diag").double().fit_gda_(X, y, reg_covar=0.0)
    np.testing.assert_allclose(h.means.detach().numpy(), qda.means_, rtol=1e-10, atol=1e-12)
    for c in range(3):
        ours = np.exp(-2 * h.log_precision[c].detach().numpy())
        np.testing.assert_allclose(ours, np.var(X[y == c], axis=0), rtol=1e-10)  # maximum likelihood
        # QDA's covariance_ is the biased (ML) estimate in recent scikit-learn, the unbiased
        # one (n − 1) in older releases
        ratio = ours / np.diag(qda.covariance_[c])
        n = counts[c]
        assert np.allclose(ratio, 1, rtol=1e-9) or np.allclose(ratio, (n - 1) / n, rtol=1e-9), ratio
    nb = GaussianNB(var_smoothing=1e-12).fit(X, y)
    np.testing.assert_allclose(np.exp(-2 * h.log_precision.detach().numpy()), nb.var_, rtol=1e-8)
    Xt = rng.normal(size=(300, 4)) * 4
    np.testing.assert_array_equal(h.predict(torch.tensor(Xt)).numpy(), nb.predict(Xt))
    np.testing.assert_allclose(torch.softmax(h(torch.tensor(Xt)), 1).detach().numpy(), nb.predict_proba(Xt),
                               rtol=1e-6, atol=1e-9)


def test_gda_shared_diag_and_identity():
    rng = np.random.default_rng(2)
    X, y = blobs(rng)
    mus = np.stack([X[y == c].mean(0) for c in range(3)])
    pooled = sum(((X[y == c] - mus[c]) ** 2).sum(0) for c in range(3)) / len(X)
    h = GaussianMixtureClassifier(4, 3, "shared_diag").double().fit_gda_(X, y, reg_covar=1e-6)
    np.testing.assert_allclose(np.exp(-2 * h.log_precision.detach().numpy()), pooled + 1e-6, rtol=1e-10)
    hi = GaussianMixtureClassifier(4, 3, "identity").fit_gda_(X, y, set_prior=False)
    np.testing.assert_allclose(hi.means.detach().numpy(), mus, rtol=1e-6)
    np.testing.assert_array_equal(hi.prior_logits.numpy(), 0.0)


@pytest.mark.parametrize("cov", COVS)
def test_gda_mixture_per_class(cov):
    """Each class is two well-separated blobs: M = 2 components per class fit them."""
    rng = np.random.default_rng(3)
    centres = np.array([[[-6, 0], [6, 0]], [[0, -6], [0, 6]]], dtype=float)
    X = np.concatenate([centres[c, m] + rng.normal(size=(100, 2)) for c in range(2) for m in range(2)])
    y = np.repeat([0, 0, 1, 1], 100)
    h = GaussianMixtureClassifier(2, 2, cov, components_per_class=2).double().fit_gda_(X, y)
    got = h.means.detach().numpy().reshape(2, 2, 2)
    for c in range(2):
        order = np.argsort(got[c].sum(1))
        np.testing.assert_allclose(got[c][order], centres[c], atol=0.4)
    np.testing.assert_allclose(h.log_weights().exp().detach().numpy(), 0.25, atol=0.03)
    assert (h.predict(torch.tensor(X)).numpy() == y).mean() > 0.99
    if cov != "identity":
        var = np.diagonal(h.covariances().detach().numpy(), axis1=1, axis2=2)
        np.testing.assert_allclose(var, 1.0, atol=0.35)


def test_errors():
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixtureClassifier(2, 3, "full")
    with pytest.raises(ValueError, match="num_classes"):
        GaussianMixtureClassifier(2, 1)
    h = GaussianMixtureClassifier(2, 3)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        h(torch.randn(4, 3))
    with pytest.raises(ValueError, match="labels must have 4"):
        h.lgm_outputs(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class 2 has 0 samples"):
        h.fit_gda_(np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        h.fit_gda_(np.zeros((4, 2)), np.array([0, 1, 5, 1]))
    with pytest.raises(ValueError, match="alpha"):
        LGMLoss(alpha=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cov", COVS)
def test_cuda_matches_cpu(cov):
    import gmmfast

    if not gmmfast.cuda_available():
        pytest.skip("gmmfast was built without CUDA kernels")
    h = perturbed_head(cov, 2)
    X = torch.randn(20, 4, dtype=F64)
    y = torch.randint(0, 3, (20,))
    loss_cpu = LGMLoss(0.5, 0.2)(h, X, y)
    grads_cpu = torch.autograd.grad(loss_cpu, list(h.parameters()))
    hg = h.cuda()
    loss_gpu = LGMLoss(0.5, 0.2)(hg, X.cuda(), y.cuda())
    grads_gpu = torch.autograd.grad(loss_gpu, list(hg.parameters()))
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu)
    for a, b in zip(grads_cpu, grads_gpu):
        torch.testing.assert_close(b.cpu(), a)


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lgm_digits_demo_quick(tmp_path):
    demo = _load_example("cnn_lgm_digits")
    results = demo.main(["--quick", "--out", str(tmp_path), "--json", str(tmp_path / "results.json")])
    assert (tmp_path / "lgm_digits_features2d.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert saved["results"]["dims"]["64"]["lgm"]["per_seed"] == results[("lgm", 64)]
    for key, accs in results.items():
        assert all(0.0 <= a <= 1.0 for a in accs), key
    # even the quick run learns: far above chance (10 %)
    assert np.mean(results[("lgm", 64)]) > 0.5
