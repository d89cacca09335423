"""gmmfast.nn.FisherVectorPool and NetVLAD.

Oracles: an independent NumPy implementation of VLFeat's vl_fisher formulas (written
here, [N, K, D] broadcasting), scikit-image's ``skimage.feature.fisher_vector`` (same
blocks, variance block negated), a direct torch NetVLAD with [B, N, K, D] tensors, and
float64 gradcheck.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from scipy.special import logsumexp  # noqa: E402

from gmmfast.nn import FisherVectorPool, NetVLAD  # noqa: E402

F64 = torch.float64


def vlfeat_fisher(X, weights, means, variances, improved, include_weights=False):
    """VLFeat's Fisher vector of one descriptor set X [N, D] (float64 NumPy)."""
    X = np.asarray(X, np.float64)
    N, D = X.shape
    sigma = np.sqrt(variances)
    z = (X[:, None, :] - means[None]) / sigma[None]  # [N, K, D]
    log_gauss = -0.5 * np.sum(z * z, axis=2) - np.sum(np.log(sigma), axis=1) - 0.5 * D * np.log(2 * np.pi)
    log_joint = np.log(weights) + log_gauss
    q = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))  # [N, K]
    u = np.einsum("nk,nkd->kd", q, z) / (N * np.sqrt(weights)[:, None])
    v = np.einsum("nk,nkd->kd", q, z * z - 1.0) / (N * np.sqrt(2 * weights)[:, None])
    parts = [u.ravel(), v.ravel()]
    if include_weights:
        parts.insert(0, (q.sum(0) / N - weights) / np.sqrt(weights))
    fv = np.concatenate(parts)
    if improved:
        fv = np.sign(fv) * np.sqrt(np.abs(fv))
        fv = fv / np.linalg.norm(fv)
    return fv


def random_gmm(rng, K, D):
    w = rng.uniform(0.5, 1.5, K)
    return w / w.sum(), rng.normal(size=(K, D)), rng.uniform(0.3, 2.0, size=(K, D))


@pytest.mark.parametrize("improved", [False, True])
@pytest.mark.parametrize("include_weights", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fisher_matches_vlfeat_formulas(improved, include_weights, dtype):
    rng = np.random.default_rng(0)
    B, N, K, D = 3, 40, 4, 5
    w, mu, var = random_gmm(rng, K, D)
    X = rng.normal(size=(B, N, D)) * 1.3 + 0.5
    pool = FisherVectorPool(D, K, improved=improved, include_weights=include_weights).to(dtype)
    pool.set_gmm_(w, mu, var)
    got = pool(torch.tensor(X, dtype=dtype)).double().numpy()
    assert got.shape == (B, pool.output_dim)
    want = np.stack([vlfeat_fisher(X[b], w, mu, var, improved, include_weights) for b in range(B)])
    tol = 1e-10 if dtype == F64 else 2e-4
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_fisher_far_from_origin_float32():
    """Features at an offset of 1e3: the shift by the mean of the means keeps float32 exact."""
    rng = np.random.default_rng(1)
    K, D = 3, 4
    w, mu, var = random_gmm(rng, K, D)
    mu = mu + 1000.0
    X = mu[rng.integers(K, size=60)] + rng.normal(size=(60, D)) * np.sqrt(var[0])
    pool = FisherVectorPool(D, K, improved=False)
    pool.set_gmm_(w, mu, var)
    got = pool(torch.tensor(X, dtype=torch.float32)).double().numpy()
    want = vlfeat_fisher(X.astype(np.float32), w.astype(np.float32), mu.astype(np.float32),
                         var.astype(np.float32), False)
    np.testing.assert_allclose(got, want, atol=5e-4 * np.abs(want).max())


@pytest.mark.parametrize("improved", [False, True])
def test_fisher_matches_scikit_image(improved):
    skimage_feature = pytest.importorskip("skimage.feature")
    from sklearn.mixture import GaussianMixture as SkGMM

    rng = np.random.default_rng(2)
    K, D, N = 5, 6, 80
    train = rng.normal(size=(500, D)) * rng.uniform(0.5, 2.0, D) + rng.normal(size=D)
    pool = FisherVectorPool(D, K, improved=improved, include_weights=True, dtype=F64)
    pool.fit_gmm_(train, random_state=0)
    # scikit-image needs a scikit-learn GaussianMixture: give it gmmfast's fitted parameters
    sk = SkGMM(n_components=K, covariance_type="diag")
    sk.weights_ = pool.weights().numpy().copy()
    sk.means_ = pool.means.numpy().copy()
    sk.covariances_ = np.exp(2 * pool.log_sigmas.numpy())
    sk.precisions_cholesky_ = 1.0 / np.sqrt(sk.covariances_)
    X = rng.normal(size=(N, D)) * 1.5
    want = skimage_feature.fisher_vector(X, sk, improved=improved)
    got = pool(torch.tensor(X)).numpy()
    # documented difference: scikit-image's variance block is the negative of VLFeat's
    KD = K * D
    got_sk = np.concatenate([got[:K], got[K:K + KD], -got[K + KD:]])
    np.testing.assert_allclose(got_sk, want, rtol=1e-9, atol=1e-12)


def test_fit_gmm_uses_gmmfast_em():
    import gmmfast

    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(-3, 1, size=(200, 2)), rng.normal(3, 0.5, size=(200, 2))])
    pool = FisherVectorPool(2, 2, dtype=F64).fit_gmm_(torch.tensor(X), random_state=0)
    assert isinstance(pool.gmm_, gmmfast.GaussianMixture)
    order = np.argsort(pool.means[:, 0].numpy())
    np.testing.assert_allclose(pool.means.numpy()[order], [[-3, -3], [3, 3]], atol=0.25)
    np.testing.assert_allclose(pool.weights().numpy(), [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(np.exp(pool.log_sigmas.numpy()[order]), [[1, 1], [0.5, 0.5]], rtol=0.2)
    np.testing.assert_allclose(pool.means.numpy(), pool.gmm_.means_)
    # [B, D, H, W] input and subsampling
    fm = torch.tensor(X.T.reshape(1, 2, 20, 20))
    pool2 = FisherVectorPool(2, 2).fit_gmm_(fm, max_samples=300, random_state=0)
    assert pool2.gmm_.n_features_in_ == 2


def test_feature_map_and_set_layouts_agree():
    torch.manual_seed(0)
    B, D, H, W, K = 2, 3, 4, 5, 3
    fmap = torch.randn(B, D, H, W, dtype=F64)
    sets = fmap.flatten(2).transpose(1, 2)  # [B, H*W, D]
    for mod in (FisherVectorPool(D, K, include_weights=True, dtype=F64), NetVLAD(D, K, dtype=F64)):
        a, b = mod(fmap), mod(sets)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(mod(sets[1]), b[1])  # one unbatched set


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("improved", [False, True])
def test_fisher_gradcheck(learnable, improved):
    torch.manual_seed(1)
    B, N, D, K = 2, 6, 3, 2
    pool = FisherVectorPool(D, K, improved=improved, include_weights=True, learnable=learnable, dtype=F64)
    with torch.no_grad():
        pool.means.copy_(torch.randn(K, D, dtype=F64))
        pool.log_sigmas.copy_(0.2 * torch.randn(K, D, dtype=F64))
        pool.weight_logits.copy_(0.3 * torch.randn(K, dtype=F64))
    X = torch.randn(B, N, D, dtype=F64, requires_grad=True)
    if learnable:
        params = (pool.means, pool.log_sigmas, pool.weight_logits)
        assert all(isinstance(p, torch.nn.Parameter) for p in params)

        def f(x, m, s, wl):
            return torch.func.functional_call(pool, {"means": m, "log_sigmas": s, "weight_logits": wl}, (x,))

        assert torch.autograd.gradcheck(f, (X,) + tuple(p.detach().clone().requires_grad_() for p in params))
    else:
        assert list(pool.parameters()) == []
        assert torch.autograd.gradcheck(pool, (X,))


def test_fisher_learnable_trains_and_state_dict():
    torch.manual_seed(2)
    pool = FisherVectorPool(3, 2, learnable=True)
    opt = torch.optim.SGD(pool.parameters(), lr=0.1)
    X = torch.randn(4, 10, 3)
    before = pool.means.detach().clone()
    loss = pool(X)[:, 0].sum()
    loss.backward()
    opt.step()
    assert not torch.equal(before, pool.means.detach())
    sd = pool.state_dict()
    assert set(sd) == {"means", "log_sigmas", "weight_logits"}
    other = FisherVectorPool(3, 2, learnable=True)
    other.load_state_dict(sd)
    torch.testing.assert_close(other(X), pool(X))
    frozen = FisherVectorPool(3, 2, learnable=False)
    frozen.load_state_dict(sd)  # buffers and parameters share names
    torch.testing.assert_close(frozen(X), pool(X))


def netvlad_direct(x, centroids, assign_means, prior_logits, alpha, intra=True):
    """NetVLAD with [B, N, K, D] tensors: softmax(w_kᵀx + b_k) with w_k = 2α m_k,
    b_k = log π_k − α‖m_k‖², residuals to the centroids, intra + L2 normalisation."""
    w = 2 * alpha * assign_means  # [K, D]
    b = torch.log_softmax(prior_logits, 0) - alpha * (assign_means**2).sum(1)
    a = torch.softmax(x @ w.T + b, dim=-1)  # [B, N, K]
    res = x[:, :, None, :] - centroids[None, None]  # [B, N, K, D]
    V = (a[..., None] * res).sum(1)
    if intra:
        V = V / V.norm(dim=2, keepdim=True)
    V = V.reshape(x.shape[0], -1)
    return V / V.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("decoupled", [False, True])
def test_netvlad_matches_direct(decoupled):
    torch.manual_seed(3)
    B, N, D, K = 2, 7, 4, 3
    net = NetVLAD(D, K, alpha=0.7, decoupled=decoupled, dtype=F64)
    with torch.no_grad():
        if decoupled:
            net.assign_means.add_(0.3 * torch.randn(K, D, dtype=F64))
            net.prior_logits.copy_(torch.randn(K, dtype=F64))
    x = torch.randn(B, N, D, dtype=F64)
    am = net.assign_means if decoupled else net.centroids
    want = netvlad_direct(x, net.centroids, am, net.prior_logits, net.log_alpha.exp())
    torch.testing.assert_close(net(x), want)
    # gradients agree with the direct version
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    g = torch.randn(B, K * D, dtype=F64)
    (net(x1) * g).sum().backward()
    (netvlad_direct(x2, net.centroids, am, net.prior_logits, net.log_alpha.exp()) * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    assert torch.autograd.gradcheck(net, (x.clone().requires_grad_(),))


def test_netvlad_fit_and_state_dict():
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(-4, 1, size=(150, 3)), rng.normal(4, 1, size=(150, 3))])
    net = NetVLAD(3, 2, dtype=F64).fit_gmm_(X)
    np.testing.assert_allclose(np.sort(net.centroids[:, 0].detach().numpy()), [-4, 4], atol=0.3)
    assert 0.3 < net.log_alpha.exp().item() < 0.7  # 1 / (2 σ²) with σ ≈ 1
    sd = net.state_dict()
    other = NetVLAD(3, 2, dtype=F64)
    other.load_state_dict(sd)
    x = torch.tensor(X[None, :20])
    torch.testing.assert_close(other(x), net(x))


def test_errors():
    pool = FisherVectorPool(3, 2)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        pool(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="B, N, 3"):
        pool(torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match="num_components"):
        FisherVectorPool(3, 0)
    with pytest.raises(ValueError, match="at least num_components"):
        pool.fit_gmm_(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="dimension 3"):
        pool.fit_gmm_(np.zeros((10, 4)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    import gmmfast

    if not gmmfast.cuda_available():
        pytest.skip("gmmfast was built without CUDA kernels")
    torch.manual_seed(5)
    x = torch.randn(3, 4, 5, 6, dtype=F64)
    for mod in (FisherVectorPool(4, 3, include_weights=True, learnable=True, dtype=F64),
                NetVLAD(4, 3, dtype=F64)):
        xc = x.clone().requires_grad_()
        xg = x.cuda().requires_grad_()
        a = mod(xc)
        b = mod.cuda()(xg)
        torch.testing.assert_close(b.cpu(), a)
        a.square().sum().backward()
        b.square().sum().backward()
        torch.testing.assert_close(xg.grad.cpu(), xc.grad)


def test_fisher_digits_demo_quick(tmp_path):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "cnn_fisher_digits.py"
    spec = importlib.util.spec_from_file_location("cnn_fisher_digits", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    rows = demo.main(["--quick", "--out", str(tmp_path), "--json", str(tmp_path / "results.json")])
    assert (tmp_path / "fisher_digits_gmm.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {k: v["per_seed"] for k, v in saved["results"]["accuracy"].items()} == rows
    fv = [v for k, v in rows.items() if k.startswith("Fisher vector")][0]
    assert np.mean(fv) > 0.8  # 10 classes: chance is 0.1
