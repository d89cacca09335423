"""Mixture density network layers (gmmfast.nn.MDNHead, MDNRNN), the per-sample
GaussianMixture distribution, and the quick versions of the MDN examples."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import pytest

torch = pytest.importorskip("torch")

from gmmfast.distributions import GaussianMixture  # noqa: E402
from gmmfast.nn import MDNHead, MDNRNN  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
FORMS = [("diag", "joint"), ("isotropic", "joint"), ("full", "joint"), ("correlated2d", "joint"), ("diag", "per_dim")]
FORM_IDS = [f"{c}-{m}" for c, m in FORMS]
HEADS = {"eos": "bernoulli", "pen": ("categorical", 3)}


def targets(shape):
    g = torch.Generator().manual_seed(0)
    return {"eos": torch.randint(0, 2, shape, generator=g).float(), "pen": torch.randint(0, 3, shape, generator=g)}


# ------------------------------------------------------------------------------ MDNHead


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_head_shapes_and_gradients(covariance, mixture):
    torch.manual_seed(0)
    D, K = (2 if covariance == "correlated2d" else 3), 4
    head = MDNHead(8, D, K, covariance=covariance, mixture=mixture, extra_heads=HEADS)
    h = torch.randn(5, 7, 8)
    out = head(h)
    mix = out.mixture
    assert mix.batch_shape == (5, 7) and mix.event_shape == (D,)
    assert out.extras["eos"].shape == (5, 7) and out.extras["pen"].shape == (5, 7, 3)
    expected_scale = {
        ("diag", "joint"): (5, 7, K, D),
        ("isotropic", "joint"): (5, 7, K),
        ("full", "joint"): (5, 7, K, D, D),
        ("correlated2d", "joint"): (5, 7, K, 2),
        ("diag", "per_dim"): (5, 7, D, K),
    }[(covariance, mixture)]
    assert mix.scale.shape == expected_scale
    if covariance == "full":
        assert torch.equal(mix.scale, torch.tril(mix.scale))
    y = torch.randn(5, 7, D)
    mask = torch.rand(5, 7) > 0.2
    loss = head.nll(h, y, mask=mask, targets=targets((5, 7)))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert head.nll(h, y, mask=mask, targets=targets((5, 7)), reduction="none").shape == (5, 7)


def test_masked_steps_do_not_change_the_loss():
    torch.manual_seed(1)
    head = MDNHead(4, 2, 3, extra_heads={"eos": "bernoulli"})
    h, y = torch.randn(6, 4), torch.randn(6, 2)
    t = {"eos": torch.ones(6)}
    mask = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    y2 = y.clone()
    y2[~mask] = 1e6  # garbage in the padding
    a = head.nll(h, y, mask=mask, targets=t)
    b = head.nll(h, y2, mask=mask, targets=t)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, head.nll(h[mask], y[mask], targets={"eos": t["eos"][mask]}))


@pytest.mark.parametrize("activation", ["softplus", "exp", "elu+1"])
def test_sigma_floor_keeps_the_likelihood_finite(activation):
    head = MDNHead(3, 2, 2, covariance="correlated2d", sigma_activation=activation, min_sigma=1e-3)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.fill_(-1e4)  # every raw σ (and ρ) hugely negative
    out = head(torch.randn(10, 3))
    assert (out.mixture.scale >= 1e-3).all()
    assert (out.mixture.rho.abs() <= head.max_correlation).all()
    lp = out.mixture.log_prob(torch.randn(10, 2))
    assert torch.isfinite(lp).all()
    # the floor bounds the density: log p <= -log(2π σ1 σ2 sqrt(1-ρ²)) at most
    bound = -math.log(2 * math.pi * 1e-6 * math.sqrt(1 - head.max_correlation**2))
    assert (lp <= bound + 1e-3).all()


def test_head_argument_errors():
    with pytest.raises(ValueError, match="out_features must be 2"):
        MDNHead(4, 3, 2, covariance="correlated2d")
    with pytest.raises(ValueError, match="per_dim"):
        MDNHead(4, 2, 2, covariance="full", mixture="per_dim")
    with pytest.raises(ValueError, match="sigma_activation"):
        MDNHead(4, 2, 2, sigma_activation="relu")
    with pytest.raises(ValueError, match="min_sigma"):
        MDNHead(4, 2, 2, min_sigma=0.0)
    with pytest.raises(ValueError, match="extra head"):
        MDNHead(4, 2, 2, extra_heads={"pen": ("categorical", 1)})
    head = MDNHead(4, 2, 2, extra_heads={"eos": "bernoulli"})
    with pytest.raises(ValueError, match="missing"):
        head.nll(torch.randn(3, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="expected input of shape"):
        head(torch.randn(3, 5))


# ------------------------------------------------------------------------------ distribution


def test_temperature_and_bias_semantics():
    torch.manual_seed(2)
    logits, means = torch.randn(4, 3), torch.randn(4, 3, 2)
    scale, rho = torch.rand(4, 3, 2) + 0.5, torch.rand(4, 3) - 0.5
    gm = GaussianMixture(logits, means, scale, rho, covariance="correlated2d")
    t = gm.temper(temperature=0.5, bias=0.3)
    torch.testing.assert_close(t.logits, logits * 1.3 / 0.5)
    torch.testing.assert_close(t.scale, scale * math.exp(-0.3) * math.sqrt(0.5))
    assert torch.equal(t.rho, rho) and torch.equal(t.means, means)
    assert gm.temper() is gm
    with pytest.raises(ValueError, match="temperature"):
        gm.temper(0.0)
    with pytest.raises(ValueError, match="bias"):
        gm.temper(1.0, -1.0)
    # full covariance: the Cholesky factor scales by √τ
    L = torch.diag_embed(torch.rand(4, 3, 2) + 0.5)
    full = GaussianMixture(logits, means, L, covariance="full").temper(0.25)
    torch.testing.assert_close(full.scale, L * 0.5)
    # greedy: the most probable component's mean
    g = gm.greedy()
    torch.testing.assert_close(g, means[torch.arange(4), logits.argmax(-1)])
    # small temperature: samples concentrate on the dominant components' means
    s = gm.temper(1e-4).sample((200,))
    assert (s - g).abs().max() < 0.05


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_distribution_sampling_moments(covariance, mixture):
    torch.manual_seed(3)
    D = 2
    head = MDNHead(3, D, 3, covariance=covariance, mixture=mixture)
    mix = head(torch.randn(2, 3)).mixture
    s = mix.sample((40000,))
    assert s.shape == (40000, 2, D)
    torch.testing.assert_close(s.mean(0), mix.mean.detach(), atol=0.05, rtol=0.0)
    torch.testing.assert_close(s.var(0), mix.variance.detach(), atol=0.08, rtol=0.05)
    lp = mix.log_prob(s[:7])  # sample dimensions in front of the batch
    assert lp.shape == (7, 2) and torch.isfinite(lp).all()
    assert mix.expand((4, 2)).batch_shape == (4, 2)


def test_distribution_validates_its_arguments():
    with pytest.raises(ValueError):
        GaussianMixture(torch.zeros(3, 2), torch.zeros(3, 2, 2), -torch.ones(3, 2, 2), validate_args=True)
    with pytest.raises(ValueError, match="scale must have shape"):
        GaussianMixture(torch.zeros(3, 2), torch.zeros(3, 2, 2), torch.ones(3, 2))
    gm = GaussianMixture(torch.zeros(3, 2), torch.zeros(3, 2, 2), torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="event_shape|value must have shape"):
        gm.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="value must have shape"):
        GaussianMixture(torch.zeros(3, 2), torch.zeros(3, 2, 2), torch.ones(3, 2, 2), validate_args=False).log_prob(
            torch.zeros(3, 5)
        )


# ------------------------------------------------------------------------------ MDNRNN


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_forward_nll_and_gradients(cell):
    torch.manual_seed(4)
    rnn = MDNRNN(3, 16, 2, 4, cell=cell, num_layers=2, dropout=0.1, covariance="correlated2d",
                 extra_heads={"eos": "bernoulli"})
    x, y = torch.randn(5, 9, 3), torch.randn(5, 9, 2)
    out, state = rnn(x)
    assert out.mixture.batch_shape == (5, 9)
    mask = torch.arange(9).expand(5, 9) < torch.tensor([9, 7, 5, 3, 1]).unsqueeze(1)  # padded sequences
    loss = rnn.nll(x, y, mask=mask, targets={"eos": torch.zeros(5, 9)})
    loss.backward()
    for name, p in rnn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # time-major layout
    tm = MDNRNN(3, 8, 2, 2, batch_first=False)
    out, _ = tm(torch.randn(9, 5, 3))
    assert out.mixture.batch_shape == (9, 5)


def test_rnn_generate():
    torch.manual_seed(5)
    rnn = MDNRNN(3, 16, 2, 4, covariance="correlated2d", extra_heads={"eos": "bernoulli"})
    g = rnn.generate(torch.zeros(3, 3), steps=12, temperature=0.7, bias=0.5)
    assert g.outputs.shape == (3, 12, 2) and g.extras["eos"].shape == (3, 12)
    assert set(g.extras["eos"].unique().tolist()) <= {0.0, 1.0}
    # priming sequence + greedy decoding is deterministic
    prime = torch.randn(3, 5, 3)
    a = rnn.generate(prime, steps=6, greedy=True).outputs
    b = rnn.generate(prime, steps=6, greedy=True).outputs
    assert torch.equal(a, b)
    # the same seed gives the same samples
    torch.manual_seed(7)
    c = rnn.generate(prime, steps=6).outputs
    torch.manual_seed(7)
    assert torch.equal(c, rnn.generate(prime, steps=6).outputs)
    # a custom feedback for inputs that are not the outputs
    rnn2 = MDNRNN(4, 8, 1, 3, mixture="per_dim")
    calls = []

    def next_input(y, extras):
        calls.append(y.shape)
        return torch.cat([y, torch.ones(y.shape[0], 3)], -1)

    g2 = rnn2.generate(torch.zeros(2, 4), steps=4, next_input=next_input)
    assert g2.outputs.shape == (2, 4, 1) and len(calls) == 4
    with pytest.raises(ValueError, match="next_input"):
        rnn2.generate(torch.zeros(2, 4), steps=2)
    assert rnn.training  # generate restores the mode


def test_rnn_state_dict_round_trip(tmp_path):
    torch.manual_seed(6)
    kw = dict(covariance="full", extra_heads={"pen": ("categorical", 3)})
    a = MDNRNN(2, 8, 3, 3, **kw)
    path = tmp_path / "mdn.pt"
    torch.save(a.state_dict(), path)
    b = MDNRNN(2, 8, 3, 3, **kw)
    b.load_state_dict(torch.load(path))
    x = torch.randn(2, 4, 2)
    oa, _ = a(x)
    ob, _ = b(x)
    for u, v in zip((oa.mixture.logits, oa.mixture.means, oa.mixture.scale, oa.extras["pen"]),
                    (ob.mixture.logits, ob.mixture.means, ob.mixture.scale, ob.extras["pen"])):
        assert torch.equal(u, v)


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_pure_torch_fallback_equals_the_fused_op(covariance, mixture):
    """What runs on CUDA until the CUDA kernel exists (backend 'auto' there), forced here."""
    D = 2 if covariance == "correlated2d" else 3
    torch.manual_seed(8)
    fused = MDNRNN(2, 8, D, 3, covariance=covariance, mixture=mixture).double()
    fallback = MDNRNN(2, 8, D, 3, covariance=covariance, mixture=mixture, backend="torch").double()
    fallback.load_state_dict(fused.state_dict())
    x, y = torch.randn(3, 5, 2, dtype=torch.float64), torch.randn(3, 5, D, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.3
    la, lb = fused.nll(x, y, mask=mask), fallback.nll(x, y, mask=mask)
    torch.testing.assert_close(la, lb, rtol=1e-12, atol=1e-12)
    la.backward()
    lb.backward()
    for (n, p), q in zip(fused.named_parameters(), fallback.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=n)


# ------------------------------------------------------------------------------ training aids


def _clusters(n, D, seed, sep=4.0):
    """n rows of three well-separated Gaussian clusters in D dimensions (float64)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0] * D, [sep] * D, [-sep] + [sep / 2] * (D - 1)], dtype=torch.float64)
    scales = torch.tensor([0.3, 0.5, 0.4], dtype=torch.float64)
    k = torch.randint(0, 3, (n,), generator=g)
    return centres[k] + scales[k, None] * torch.randn(n, D, generator=g, dtype=torch.float64)


def _reference_mixture(y, K, covariance_type, mixture):
    """torch.distributions' mixture of scikit-learn's EM fit to y: the independent reference."""
    from sklearn.mixture import GaussianMixture as SkGM

    D = torch.distributions
    if mixture == "per_dim":
        parts = []
        for d in range(y.shape[1]):
            reg = 1e-6 * float(y[:, d].var(unbiased=False))  # init_from_targets' regularisation
            sk = SkGM(K, covariance_type="diag", random_state=0, tol=1e-8, max_iter=500, reg_covar=reg)
            sk.fit(y[:, d : d + 1].numpy())
            parts.append(D.MixtureSameFamily(D.Categorical(torch.tensor(sk.weights_)),
                                             D.Normal(torch.tensor(sk.means_[:, 0]), torch.tensor(sk.covariances_[:, 0]).sqrt())))
        return lambda v: sum(p.log_prob(v[..., d]) for d, p in enumerate(parts))
    reg = 1e-6 * float(y.var(0, unbiased=False).mean())
    sk = SkGM(K, covariance_type=covariance_type, random_state=0, tol=1e-8, max_iter=500, reg_covar=reg).fit(y.numpy())
    cov = torch.tensor(sk.covariances_)
    if covariance_type == "spherical":
        cov = cov[:, None, None] * torch.eye(y.shape[1], dtype=torch.float64)
    elif covariance_type == "diag":
        cov = torch.diag_embed(cov)
    comp = D.MultivariateNormal(torch.tensor(sk.means_), covariance_matrix=cov)
    return D.MixtureSameFamily(D.Categorical(torch.tensor(sk.weights_)), comp).log_prob


GMM_TYPE = {"diag": "diag", "isotropic": "spherical", "full": "full", "correlated2d": "full"}


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_init_from_targets_starts_every_input_at_the_targets_mixture(covariance, mixture):
    """Before any training the head predicts, for every input, the mixture that EM fits to
    its targets. Reference: scikit-learn's EM (same initialisation and regularisation, run
    to tol 1e-8) turned into a torch.distributions mixture, in float64. Joint mixtures reach
    the same EM fixed point: log-densities agree to 1e-9 (measured 4e-13). The 1-D
    per-feature mixtures of these clusters overlap, EM crawls there and gmmfast stops at
    tol 1e-6: 1e-2 (measured 3e-3)."""
    D = 2 if covariance == "correlated2d" else 3
    y = _clusters(600, D, seed=1)
    torch.manual_seed(0)
    head = MDNHead(5, D, 3, covariance=covariance, mixture=mixture, extra_heads={"eos": "bernoulli"}).double()
    before = head(torch.randn(4, 5, dtype=torch.float64)).mixture.log_prob(y[:4])
    summary = head.init_from_targets(y, weight_scale=0.0)
    assert summary["rows"] == 600
    ref = _reference_mixture(y, 3, GMM_TYPE[covariance], mixture)
    yq = _clusters(200, D, seed=2)
    h = torch.randn(200, 5, dtype=torch.float64) * 3.0  # any input: weight_scale 0 removes the dependence
    got = head(h).mixture.log_prob(yq)
    torch.testing.assert_close(got, ref(yq), rtol=0.0, atol=1e-2 if mixture == "per_dim" else 1e-9)
    assert (got - ref(yq)).abs().max() < (before - ref(y[:4])).abs().max()  # it did move the head
    # small input-dependent weights: every input still predicts about that mixture
    torch.manual_seed(0)
    head2 = MDNHead(5, D, 3, covariance=covariance, mixture=mixture).double()
    head2.init_from_targets(y, weight_scale=0.1)
    nll_ref = float(-ref(yq).mean())
    with torch.no_grad():
        nll = float(-head2(h / 3.0).mixture.log_prob(yq).mean())
    assert abs(nll - nll_ref) < 0.1, (nll, nll_ref)
    # the extra head kept its initialisation and the output scale holds the means' unit
    assert head.output_scale[-1] == 1.0 and (head.output_scale > 0).all()


def test_init_from_targets_with_features_fits_the_residuals_mixture():
    """y = trend(h) ± 1 + N(0, 0.05²): given h, the head starts at the linear trend plus the
    bimodal residual mixture. Least squares alone carries the ±1 noise into the trend
    (≈ 0.045 on a prediction from 2000 rows, about σ: ≈ 0.3 nats lost); with each row's
    mode taken out and the trend refitted (refine) only the N(0, 0.05²) noise is left
    (≈ 0.003): within 0.02 nats of the true conditional density."""
    g = torch.Generator().manual_seed(3)
    n = 2000
    h = torch.randn(n, 4, generator=g, dtype=torch.float64)
    a = torch.tensor([[2.0], [-1.0], [0.5], [0.0]], dtype=torch.float64)
    sign = torch.randint(0, 2, (n, 1), generator=g).double() * 2 - 1
    y = h @ a + sign + 0.05 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    D = torch.distributions

    def true_lp(hh, yy):
        r = (yy - hh @ a)[:, 0]
        return torch.logsumexp(torch.stack([D.Normal(m, 0.05).log_prob(r) for m in (1.0, -1.0)]), 0) - math.log(2)

    def gap(refine):
        head = MDNHead(4, 1, 2).double()
        head.init_from_targets(y, h=h, weight_scale=0.0, refine=refine)
        with torch.no_grad():
            return float(true_lp(h, y).mean() - head(h).mixture.log_prob(y).mean())

    assert abs(gap(3)) < 0.02, gap(3)
    assert gap(0) > 0.1  # plain least squares: the modes blur the trend
    # without h the head sees only the (broad, unimodal-looking) marginal of y: far worse
    plain = MDNHead(4, 1, 2).double()
    plain.init_from_targets(y, weight_scale=0.0)
    with torch.no_grad():
        assert float(true_lp(h, y).mean() - plain(h).mixture.log_prob(y).mean()) > 1.0


def test_rnn_init_from_targets_with_skip_splits_a_bimodal_walk():
    """y[t+1] = y[t] ± 0.1 + N(0, 0.01²): MDNRNN(skip=True).init_from_targets(y, x=x)
    starts with two components on the two steps (within 0.3 nats of the optimum, vs
    ≈ 3.5 nats away for nn.Linear's initialisation)."""
    g = torch.Generator().manual_seed(4)
    steps = 0.1 * (torch.randint(0, 2, (8, 60), generator=g) * 2 - 1) + 0.01 * torch.randn(8, 60, generator=g)
    z = torch.cat([torch.zeros(8, 1), steps.cumsum(1)], 1).unsqueeze(-1)
    x, y = z[:, :-1], z[:, 1:]
    d = steps.double()
    N = torch.distributions.Normal
    optimum = float(-(torch.logsumexp(torch.stack([N(m, 0.01).log_prob(d) for m in (0.1, -0.1)]), 0) - math.log(2)).mean())
    torch.manual_seed(0)
    rnn = MDNRNN(1, 8, 1, 2, skip=True)
    with torch.no_grad():
        default_gap = float(rnn.nll(x, y)) - optimum
    rnn.init_from_targets(y, x=x)
    with torch.no_grad():
        out, _ = rnn(x)
        gap = float(rnn.head.loss(out, y)) - optimum
    assert gap < 0.3 < default_gap, (gap, default_gap)
    w, mu = out.mixture.mixture_weights, out.mixture.means[..., 0]
    assert (w.min(-1).values > 0.3).float().mean() > 0.95
    torch.testing.assert_close((mu[..., 0] - mu[..., 1]).abs(), torch.full_like(mu[..., 0], 0.2), atol=0.03, rtol=0)


@pytest.mark.parametrize("covariance,mixture", [("diag", "joint"), ("correlated2d", "joint"), ("diag", "per_dim")])
def test_a_dead_component_is_revived(covariance, mixture):
    """A component sent far from the data has no responsibility (no gradient brings it
    back). revive_dead_components restarts it on the worst-explained target, which
    recovers most of the lost likelihood at once, and zeroes the optimizer's moments of
    the rewritten outputs."""
    from gmmfast.nn._mdn_init import _output_index

    D = 2
    y = _clusters(600, D, seed=5).float()
    torch.manual_seed(0)
    head = MDNHead(3, D, 3, covariance=covariance, mixture=mixture)
    head.init_from_targets(y, weight_scale=0.0)
    h = torch.randn(600, 3)
    with torch.no_grad():
        fitted = float(head.nll(h, y))
        idx = _output_index(head, "means", 0, 0 if mixture == "per_dim" else None)
        head.proj.bias[idx] += 1e3
        dead = float(head.nll(h, y))
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    head.nll(h, y).backward()
    opt.step()
    revived = head.revive_dead_components(h, y, optimizer=opt)
    assert revived == ([0] if mixture == "joint" else [(0, 0)]), revived
    with torch.no_grad():
        now = float(head.nll(h, y))
        resp = head(h).mixture.log_prob(y)
    assert torch.isfinite(resp).all()
    assert now < dead - 0.5 * (dead - fitted), (fitted, dead, now)
    state = opt.state[head.proj.bias]
    for key in ("exp_avg", "exp_avg_sq"):
        assert (state[key][idx] == 0).all()
    # nothing left to revive: a second call changes nothing
    b = head.proj.bias.detach().clone()
    assert head.revive_dead_components(h, y) == []
    assert torch.equal(b, head.proj.bias)


def test_training_aids_reject_bad_input():
    head = MDNHead(4, 2, 2)
    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., 2\)"):
        head.init_from_targets(torch.randn(10, 3))
    bad = torch.randn(10, 2)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="y contains NaN"):
        head.init_from_targets(bad)
    with pytest.raises(ValueError, match="h must have shape"):
        head.init_from_targets(torch.randn(10, 2), h=torch.randn(10, 5))
    with pytest.raises(ValueError, match="mask must have"):
        head.init_from_targets(torch.randn(10, 2), mask=torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="weight_scale"):
        head.init_from_targets(torch.randn(10, 2), weight_scale=-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        head.init_from_targets(torch.randn(1, 2))
    with pytest.raises(TypeError, match="y must"):
        head.init_from_targets("not numbers")
    with pytest.raises(ValueError, match="min_weight"):
        head.revive_dead_components(torch.randn(5, 4), torch.randn(5, 2), min_weight=0.0)
    with pytest.raises(ValueError, match="h must have shape"):
        head.revive_dead_components(torch.randn(5, 3), torch.randn(5, 2))
    rnn = MDNRNN(1, 4, 1, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        rnn.init_from_targets(torch.randn(2, 5, 1), x=torch.randn(2, 5, 3))


def test_output_scale_is_saved_and_old_state_dicts_load():
    torch.manual_seed(9)
    a = MDNHead(3, 2, 2)
    a.init_from_targets(_clusters(100, 2, seed=6).float())
    assert not torch.equal(a.output_scale, torch.ones_like(a.output_scale))
    b = MDNHead(3, 2, 2)
    b.load_state_dict(a.state_dict())
    h = torch.randn(4, 3)
    assert torch.equal(a(h).mixture.means, b(h).mixture.means)
    legacy = {k: v for k, v in MDNHead(3, 2, 2).state_dict().items() if k != "output_scale"}
    b.load_state_dict(legacy)  # saved before output_scale existed
    assert torch.equal(b.output_scale, torch.ones_like(b.output_scale))


# ------------------------------------------------------------------------------ examples


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_example_bishop_quick(tmp_path, one_thread):
    mod = _load_example("mdn_bishop")
    out = tmp_path / "bishop.png"
    res = mod.run(steps=300, n_test=2000, out=str(out), verbose=False)
    # the multi-valued inverse needs the mixture: K=3 beats K=1 by > 0.5 nats/point
    assert res["gap_nats"] > 0.5, res
    assert out.stat().st_size > 10_000


def test_example_forecast_quick(tmp_path, one_thread):
    pytest.importorskip("statsmodels")
    mod = _load_example("mdn_forecast")
    out = tmp_path / "forecast.png"
    res = mod.run(steps=40, seeds=1, out=str(out), verbose=False, n_paths=20)
    for name in ("MDN-RNN (K=3)", "Gaussian RNN (K=1)"):
        r = res[name]
        assert math.isfinite(r["test_nll_per_step"]) and r["test_nll_per_step"] < 2.0, r
        assert 0.0 <= r["coverage_90"] <= 1.0
    ar = res[mod.AR_NAME]
    assert 1 <= ar["p"] <= 15 and math.isfinite(ar["test_nll_per_step"]), ar
    assert out.stat().st_size > 10_000


def test_example_geyser_quick(tmp_path, one_thread):
    mod = _load_example("mdn_geyser")
    out = tmp_path / "geyser.png"
    res = mod.run(steps=40, seeds=1, out=str(out), verbose=False)
    for name in ("MDN-RNN (K=2)", "Gaussian RNN (K=1)", mod.AR_NAME, "unconditional mixture (K=2)"):
        assert math.isfinite(res[name]["test_nll_per_step"]), (name, res[name])
    # the next eruption is bimodal: the mixture beats the linear AR even after 40 steps
    assert res["mdn_gain_over_ar"] > 0.2, res
    assert out.stat().st_size > 10_000


def test_example_handwriting_quick(tmp_path, one_thread):
    mod = _load_example("mdn_handwriting")
    out = tmp_path / "handwriting.png"
    res = mod.run(iters=40, hidden=32, K=5, batch_size=16, n_train=200, quick=True, out=str(out), verbose=False)
    assert res["test_nll_after"] < res["test_nll_before"] - 0.5, res
    for base in (res["single_gaussian_rnn"]["test_nll"], res["linear_ar"]["test_nll"]):
        assert math.isfinite(base), res
    assert set(res["pen_lift_rate_samples"]) >= {"τ=0.1", "τ=1.0", "τ=1, bias=1"}
    assert out.stat().st_size > 10_000
