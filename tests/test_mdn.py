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
    assert out.stat().st_size > 10_000


def test_example_handwriting_quick(tmp_path, one_thread):
    mod = _load_example("mdn_handwriting")
    out = tmp_path / "handwriting.png"
    res = mod.run(iters=40, hidden=32, K=5, batch_size=16, n_train=200, quick=True, out=str(out), verbose=False)
    assert res["test_nll_after"] < res["test_nll_before"] - 0.5, res
    assert set(res["pen_lift_rate_samples"]) >= {"τ=0.1", "τ=1.0", "τ=1, bias=1"}
    assert out.stat().st_size > 10_000
