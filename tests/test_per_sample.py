"""The fused per-sample mixture log-likelihood (gmmfast::per_sample_log_prob).

Oracles: torch.distributions (MixtureSameFamily with MultivariateNormal / Independent
(Normal), a sum of 1-D mixtures for per_dim) evaluated in float64 with autograd, and the
op's own plain-torch path (per_sample_log_prob_torch). float32 results are compared with
float64 results on the same float32 numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal  # noqa: E402

from gmmfast import _core  # noqa: E402
from gmmfast.torch import per_sample as ps  # noqa: E402
from gmmfast.torch.per_sample import (  # noqa: E402
    fused_available,
    per_sample_log_prob,
    per_sample_log_prob_op,
)

FORMS = [
    ("diag", "joint"),
    ("isotropic", "joint"),
    ("full", "joint"),
    ("correlated2d", "joint"),
    ("diag", "per_dim"),
]
FORM_IDS = [f"{c}-{m}" for c, m in FORMS]


def make_case(covariance, mixture, B=6, K=3, D=3, dtype=torch.float64, seed=0, offset=0.0, requires_grad=True):
    """Inputs (y, logits, means, scale, rho) with targets near the components."""
    g = torch.Generator().manual_seed(seed)
    if covariance == "correlated2d":
        D = 2
    y = torch.randn(B, D, generator=g, dtype=torch.float64) + offset
    if mixture == "per_dim":
        logits = torch.randn(B, D, K, generator=g, dtype=torch.float64)
        means = y.unsqueeze(-1) + torch.randn(B, D, K, generator=g, dtype=torch.float64)
        scale = torch.rand(B, D, K, generator=g, dtype=torch.float64) + 0.5
        rho = None
    else:
        logits = torch.randn(B, K, generator=g, dtype=torch.float64)
        means = y.unsqueeze(1) + torch.randn(B, K, D, generator=g, dtype=torch.float64)
        rho = None
        if covariance == "diag":
            scale = torch.rand(B, K, D, generator=g, dtype=torch.float64) + 0.5
        elif covariance == "isotropic":
            scale = torch.rand(B, K, generator=g, dtype=torch.float64) + 0.5
        elif covariance == "full":
            scale = 0.4 * torch.tril(torch.randn(B, K, D, D, generator=g, dtype=torch.float64), -1) + torch.diag_embed(
                torch.rand(B, K, D, generator=g, dtype=torch.float64) + 0.5
            )
        else:
            scale = torch.rand(B, K, 2, generator=g, dtype=torch.float64) + 0.5
            rho = torch.rand(B, K, generator=g, dtype=torch.float64) * 1.8 - 0.9
    ts = [t.to(dtype) if t is not None else None for t in (y, logits, means, scale, rho)]
    if requires_grad:
        for t in ts:
            if t is not None:
                t.requires_grad_(True)
    return ts


def torch_distributions_log_prob(y, logits, means, scale, rho, covariance, mixture):
    """The same model written with torch.distributions."""
    if mixture == "per_dim":
        mix = MixtureSameFamily(Categorical(logits=logits), Normal(means, scale))
        return mix.log_prob(y).sum(-1)
    if covariance == "diag":
        comp = Independent(Normal(means, scale), 1)
    elif covariance == "isotropic":
        comp = Independent(Normal(means, scale.unsqueeze(-1).expand_as(means)), 1)
    elif covariance == "full":
        comp = MultivariateNormal(means, scale_tril=scale)
    else:
        s1, s2 = scale[..., 0], scale[..., 1]
        zero = torch.zeros_like(s1)
        tril = torch.stack([torch.stack([s1, zero], -1), torch.stack([rho * s2, s2 * torch.sqrt(1 - rho**2)], -1)], -2)
        comp = MultivariateNormal(means, scale_tril=tril)
    return MixtureSameFamily(Categorical(logits=logits), comp).log_prob(y)


def inputs_of(case):
    return tuple(t for t in case if t is not None)


def fused(covariance, mixture, mask=None, backend="fused"):
    def f(y, logits, means, scale, rho=None):
        return per_sample_log_prob(
            y, logits, means, scale, rho, covariance=covariance, mixture=mixture, mask=mask, backend=backend
        )

    return f


def make_mask(kind, B):
    if kind is None:
        return None
    keep = torch.arange(B) % 3 != 1
    return keep if kind == "bool" else keep.to(torch.float64) * 0.5  # any nonzero keeps


# ------------------------------------------------------------------------------ correctness


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_matches_torch_distributions_float64(covariance, mixture):
    case = make_case(covariance, mixture, B=40, K=4, D=3, seed=1)
    inp = inputs_of(case)
    got = fused(covariance, mixture)(*inp)
    want = torch_distributions_log_prob(*case, covariance, mixture)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad(got.sum(), inp)
    g_want = torch.autograd.grad(want.sum(), inp)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("mask", [None, "bool", "float"])
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_gradcheck_float64(covariance, mixture, mask):
    case = make_case(covariance, mixture, B=5, K=3, D=3, seed=2)
    assert torch.autograd.gradcheck(fused(covariance, mixture, make_mask(mask, 5)), inputs_of(case))


@pytest.mark.parametrize(
    "covariance,mixture,mask", [f + (None,) for f in FORMS] + [("diag", "joint", "bool"), ("diag", "per_dim", "float")],
    ids=FORM_IDS + ["diag-joint-mask", "diag-per_dim-floatmask"],
)
def test_opcheck(covariance, mixture, mask):
    y, logits, means, scale, rho = make_case(covariance, mixture, B=5, K=3, D=3, seed=3)
    m = make_mask(mask, 5)
    torch.library.opcheck(per_sample_log_prob_op, (y, logits, means, scale, rho, m, covariance, mixture))


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_recomputed_responsibilities_give_identical_gradients(covariance, mixture):
    """save_responsibilities=False: the backward pass recomputes them (same code, same bits)."""
    case = make_case(covariance, mixture, B=20, K=4, D=3, seed=11)
    inp = inputs_of(case)
    mask = make_mask("bool", 20)
    a = fused(covariance, mixture, mask)(*inp)
    b = per_sample_log_prob(*case[:4], case[4], covariance=covariance, mixture=mixture, mask=mask,
                            save_responsibilities=False)
    assert torch.equal(a, b)
    for ga, gb in zip(torch.autograd.grad(a.sum(), inp), torch.autograd.grad(b.sum(), inp)):
        assert torch.equal(ga, gb)
    y, logits, means, scale, rho = case
    torch.library.opcheck(per_sample_log_prob_op, (y, logits, means, scale, rho, mask, covariance, mixture, False))


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_torch_fallback_matches_fused(covariance, mixture):
    case = make_case(covariance, mixture, B=30, K=4, D=3, seed=4)
    inp = inputs_of(case)
    mask = make_mask("bool", 30)
    a = fused(covariance, mixture, mask)(*inp)
    b = fused(covariance, mixture, mask, backend="torch")(*inp)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for ga, gb in zip(torch.autograd.grad(a.sum(), inp), torch.autograd.grad(b.sum(), inp)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_float32_far_from_origin(covariance, mixture):
    """Data at 1e4 with unit spread: (y - μ)/σ is computed directly, so float32 keeps its
    digits (the expanded y² - 2yμ + μ² would lose all of them)."""
    case32 = make_case(covariance, mixture, B=200, K=5, D=4, seed=5, offset=1e4, dtype=torch.float32)
    case64 = [None if t is None else t.detach().double().requires_grad_() for t in case32]
    lp32 = fused(covariance, mixture)(*inputs_of(case32))
    lp64 = fused(covariance, mixture)(*inputs_of(case64))
    assert lp32.dtype == torch.float32
    assert torch.isfinite(lp32).all()
    # per-sample log-likelihoods of magnitude ~5-20: float32 rounding is ~1e-5 relative
    torch.testing.assert_close(lp32.double(), lp64, rtol=2e-5, atol=2e-5)
    g32 = torch.autograd.grad(lp32.sum(), inputs_of(case32))
    g64 = torch.autograd.grad(lp64.sum(), inputs_of(case64))
    for a, b in zip(g32, g64):
        err = (a.double() - b).abs().max() / b.abs().max()
        assert err < 1e-4, float(err)
    # and float64 agrees with torch.distributions there
    want = torch_distributions_log_prob(*case64, covariance, mixture)
    torch.testing.assert_close(lp64, want, rtol=1e-10, atol=1e-9)


def test_extreme_scales_use_an_accurate_log():
    """σ over 60 decades (float64) and down to float32 subnormals: -log σ exactly."""
    sigma = torch.logspace(-30, 30, 61, dtype=torch.float64)
    B = sigma.shape[0]
    y = torch.zeros(B, 1, dtype=torch.float64)
    lp = per_sample_log_prob(y, torch.zeros(B, 1, dtype=torch.float64), torch.zeros(B, 1, 1, dtype=torch.float64),
                             sigma.reshape(B, 1), covariance="isotropic")
    want = -torch.log(sigma) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(lp, want, rtol=1e-15, atol=4e-15)
    s32 = torch.tensor([1e-40, 1e-38, 3e-30, 0.7, 1.0, 1.5, 1e20, 3e38], dtype=torch.float32)
    B = s32.shape[0]
    lp32 = per_sample_log_prob(torch.zeros(B, 1), torch.zeros(B, 1), torch.zeros(B, 1, 1), s32.reshape(B, 1),
                               covariance="isotropic")
    want32 = -torch.log(s32.double()) - 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(lp32.double(), want32, rtol=1e-6, atol=1e-6)


def test_mask_zeroes_padded_rows_even_when_their_parameters_are_nan():
    y, logits, means, scale, rho = make_case("diag", "joint", B=6, seed=6)
    mask = torch.tensor([True, False, True, False, True, True])
    with torch.no_grad():
        for t in (y, logits, means, scale):
            t[1] = float("nan")
        scale[3] = -1.0  # invalid, but masked
    for backend in ("fused", "torch"):
        lp = per_sample_log_prob(y, logits, means, scale, mask=mask, backend=backend)
        assert lp[1] == 0 and lp[3] == 0 and torch.isfinite(lp).all()
        grads = torch.autograd.grad(lp.sum(), (y, logits, means, scale))
        for g in grads:
            assert torch.isfinite(g).all()
            assert (g[1] == 0).all() and (g[3] == 0).all()
            assert (g[0] != 0).any()
    float_mask = mask.to(torch.float32)
    torch.testing.assert_close(
        per_sample_log_prob(y, logits, means, scale, mask=float_mask), per_sample_log_prob(y, logits, means, scale, mask=mask)
    )


def test_batch_dimensions_are_flattened_and_restored():
    y, logits, means, scale, _ = make_case("diag", "joint", B=12, seed=7, requires_grad=False)
    flat = per_sample_log_prob(y, logits, means, scale)
    shaped = per_sample_log_prob(y.reshape(3, 4, -1), logits.reshape(3, 4, -1), means.reshape(3, 4, 3, 3),
                                 scale.reshape(3, 4, 3, 3), mask=torch.ones(3, 4, dtype=torch.bool))
    assert shaped.shape == (3, 4)
    torch.testing.assert_close(shaped.reshape(-1), flat)
    empty = per_sample_log_prob(y[:0], logits[:0], means[:0], scale[:0])
    assert empty.shape == (0,)


def test_dtypes_are_promoted():
    y, logits, means, scale, _ = make_case("diag", "joint", seed=8, requires_grad=False)
    lp = per_sample_log_prob(y.float(), logits, means.float(), scale.float())
    assert lp.dtype == torch.float64
    lp16 = per_sample_log_prob(y.half(), logits.half(), means.half(), scale.half())
    assert lp16.dtype == torch.float32


def test_results_do_not_depend_on_the_thread_count_or_isa():
    y, logits, means, scale, _ = make_case("diag", "joint", B=3000, K=8, D=5, seed=9, requires_grad=False)
    a = [t.numpy() for t in (y, logits, means, scale)]
    one = _core.per_sample_log_prob(*a, n_threads=1)
    two = _core.per_sample_log_prob(*a, n_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    original = _core.active_isa()
    try:
        for isa in _core.compiled_isas():
            if not _core.set_isa(isa):
                continue
            lp, resp = _core.per_sample_log_prob(*a)
            np.testing.assert_allclose(lp, one[0], rtol=1e-13, atol=1e-13)
            g = _core.per_sample_log_prob_backward(np.ones(3000), resp, *a)
            g_ref = _core.per_sample_log_prob_backward(np.ones(3000), one[1], *a)
            for u, v in zip(g, g_ref):
                np.testing.assert_allclose(u, v, rtol=1e-11, atol=1e-12)
    finally:
        _core.set_isa(original)


def test_torch_compile_fullgraph():
    y, logits, means, scale, rho = make_case("correlated2d", "joint", B=8, seed=10)

    def loss(y, logits, means, scale, rho):
        return -per_sample_log_prob(y, logits, means, scale, rho, covariance="correlated2d", backend="fused").mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(y, logits, means, scale, rho)
    torch.testing.assert_close(got, loss(y, logits, means, scale, rho))
    got.backward()
    assert torch.isfinite(means.grad).all()


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(logits=torch.zeros(())), "logits must have shape"),
        (dict(logits=torch.zeros(6, 4)), r"means must have shape .* = \(6, 4\) \+ \(D,\)"),
        (dict(means=torch.zeros(6, 4, 3)), "means must have shape"),
        (dict(means=torch.zeros(6, 3, 2)), "scale must have shape"),
        (dict(scale=torch.zeros(6, 3)), "scale must have shape"),
        (dict(y=torch.zeros(5, 3)), "y must have shape"),
        (dict(rho=torch.zeros(6, 3)), "rho is only used"),
        (dict(mask=torch.ones(5, dtype=torch.bool)), "mask must have shape"),
        (dict(covariance="spherical"), "covariance must be one of"),
        (dict(mixture="independent"), "mixture must be one of"),
        (dict(mixture="per_dim"), r"means must have shape \(\.\.\., n_features, n_components\)"),
        (dict(backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(change, match):
    y, logits, means, scale, _ = make_case("diag", "joint", B=6, K=3, D=3, requires_grad=False)
    kw = dict(y=y, logits=logits, means=means, scale=scale, rho=None, covariance="diag", mixture="joint")
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        per_sample_log_prob(
            kw.pop("y"), kw.pop("logits"), kw.pop("means"), kw.pop("scale"), kw.pop("rho"), **kw
        )


def test_form_specific_errors():
    y, logits, means, scale, rho = make_case("correlated2d", "joint", requires_grad=False)
    with pytest.raises(ValueError, match="needs rho"):
        per_sample_log_prob(y, logits, means, scale, covariance="correlated2d")
    with pytest.raises(ValueError, match="n_features = 2"):
        per_sample_log_prob(torch.zeros(6, 3), logits, torch.zeros(6, 3, 3), torch.ones(6, 3, 2), rho,
                            covariance="correlated2d")
    with pytest.raises(ValueError, match="per_dim"):
        per_sample_log_prob(y, logits, means, scale, rho, covariance="correlated2d", mixture="per_dim")
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        per_sample_log_prob(y.numpy(), logits, means, scale, rho, covariance="correlated2d")


def test_core_binding_checks():
    y, logits, means, scale, _ = [None if t is None else t.numpy() for t in make_case("diag", "joint", requires_grad=False)]
    bad = y.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        _core.per_sample_log_prob(bad, logits, means, scale)
    lp, _ = _core.per_sample_log_prob(bad, logits, means, scale, checks=False)
    assert np.isnan(lp[2]) and np.isfinite(np.delete(lp, 2)).all()
    with pytest.raises(ValueError, match="out must have dtype float64"):
        _core.per_sample_log_prob(y, logits, means, scale, out=np.empty(6, np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        _core.per_sample_log_prob(y, logits, means, scale, out=np.empty(5))
    with pytest.raises(ValueError, match="covariance must be one of"):
        _core.per_sample_log_prob(y, logits, means, scale, covariance="tied")


def test_device_support():
    assert fused_available("cpu")
    assert not fused_available("meta")
    # CUDA: only with gmmfast._cuda's kernels and a device
    has_cuda = ps._cuda_module() is not None and torch.cuda.is_available()
    assert fused_available("cuda") == has_cuda


@pytest.mark.skipif(not torch.cuda.is_available() or ps._cuda_module() is not None,
                    reason="needs a CUDA device and a gmmfast built without its CUDA kernels")
def test_cuda_op_raises_and_auto_backend_falls_back():
    case = [None if t is None else t.detach().cuda().requires_grad_() for t in make_case("diag", "joint")]
    with pytest.raises(NotImplementedError, match="CUDA kernel of gmmfast::per_sample_log_prob is not built yet"):
        per_sample_log_prob(*case[:4], backend="fused")
    lp = per_sample_log_prob(*case[:4])
    cpu = per_sample_log_prob(*[t.detach().cpu() for t in case[:4]])
    torch.testing.assert_close(lp.cpu(), cpu)


def test_cuda_error_message_without_a_gpu(monkeypatch):
    """The op's device check, exercised without CUDA: a tensor claiming to be on CUDA."""

    class FakeCuda:
        device = torch.device("cuda")

    monkeypatch.setattr(ps, "_cuda_module", lambda: None)  # as in a build without CUDA
    with pytest.raises(NotImplementedError, match="not built yet"):
        ps._check_device(FakeCuda())
    monkeypatch.setattr(ps, "_cuda_module", lambda: object())  # built with CUDA: accepted
    ps._check_device(FakeCuda())

    class FakeOther:
        device = torch.device("meta")

    with pytest.raises(NotImplementedError, match="no kernel for device meta"):
        ps._check_device(FakeOther())
