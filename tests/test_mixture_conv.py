"""gmmfast.nn.GaussianMixtureConv2d and the gmmfast::mixture_kernel2d custom op.

Oracles: a direct rasterisation with [O, I, K, kH, kW] tensors and dense 2 × 2 matrix
inverses (independent of the op), torch.autograd.gradcheck in float64,
torch.library.opcheck, and torch.nn.functional.conv2d with an ordinary weight.
"""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from gmmfast.nn import GaussianMixtureConv2d  # noqa: E402
from gmmfast.nn.conv import _mixture_kernel2d_op, mixture_kernel2d  # noqa: E402

F64 = torch.float64
COVS = ["isotropic", "diag", "full"]
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_op_inputs(O=2, I=3, J=3, K=4, dtype=F64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    amp = torch.randn(O, I, K, generator=g, dtype=dtype)
    mu = torch.rand(O, J, K, 2, generator=g, dtype=dtype) * 3 - 1.5
    a = 0.4 + torch.rand(O, J, K, generator=g, dtype=dtype)
    c = 0.4 + torch.rand(O, J, K, generator=g, dtype=dtype)
    b = 0.6 * torch.sqrt(a * c) * (2 * torch.rand(O, J, K, generator=g, dtype=dtype) - 1)
    prec = torch.stack((a, b, c), -1)
    return [t.to(device) for t in (amp, mu, prec)]


def direct_kernel(amp, mu, prec, kh, kw, normalize):
    """Σ_k A g_k with an explicit [O, I, K, kH, kW] tensor and the quadratic form from the
    dense precision matrix."""
    O, I, K = amp.shape
    ys = torch.arange(kh, dtype=amp.dtype) - (kh - 1) / 2
    xs = torch.arange(kw, dtype=amp.dtype) - (kw - 1) / 2
    P = torch.stack((torch.stack((prec[..., 0], prec[..., 1]), -1),
                     torch.stack((prec[..., 1], prec[..., 2]), -1)), -2)  # [O, J, K, 2, 2]
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1)  # [kh, kw, 2]
    delta = grid[None, None, None] - mu[:, :, :, None, None, :]  # [O, J, K, kh, kw, 2]
    q = torch.einsum("ojkhwa,ojkab,ojkhwb->ojkhw", delta, P, delta)
    g = torch.exp(-0.5 * q)
    if normalize:
        g = g / g.sum((-2, -1), keepdim=True)
    return (amp[..., None, None] * g.expand(O, I, K, kh, kw)).sum(2)


@pytest.mark.parametrize("J", [1, 3])
@pytest.mark.parametrize("normalize", [True, False])
def test_op_matches_direct_and_gradcheck(J, normalize):
    amp, mu, prec = random_op_inputs(J=J)
    got = mixture_kernel2d(amp, mu, prec, (4, 5), normalize)
    torch.testing.assert_close(got, direct_kernel(amp, mu, prec, 4, 5, normalize))
    small = random_op_inputs(O=2, I=2, J=min(J, 2), K=2, seed=1)
    small = tuple(t.requires_grad_() for t in small)
    assert torch.autograd.gradcheck(lambda a, m, p: mixture_kernel2d(a, m, p, (4, 5), normalize), small)
    # the analytic backward equals autograd through the direct formula
    inputs = tuple(t.clone().requires_grad_() for t in (amp, mu, prec))
    G = torch.randn(2, 3, 4, 5, dtype=F64)
    g1 = torch.autograd.grad((mixture_kernel2d(*inputs, (4, 5), normalize) * G).sum(), inputs)
    g2 = torch.autograd.grad((direct_kernel(*inputs, 4, 5, normalize) * G).sum(), inputs)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("normalize", [True, False])
def test_opcheck(normalize):
    amp, mu, prec = random_op_inputs(J=1)
    args = (amp.requires_grad_(), mu.requires_grad_(), prec.requires_grad_(), 3, 3, normalize)
    torch.library.opcheck(_mixture_kernel2d_op, args)


def test_no_component_sized_intermediates_saved():
    """Autograd keeps only the inputs of the op: nothing of size [O, I, K, kH, kW]."""
    O, I, K, S = 4, 5, 6, 5
    amp, mu, prec = random_op_inputs(O, I, I, K)
    amp.requires_grad_()
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mixture_kernel2d(amp, mu, prec, S, True)
    assert sizes and max(sizes) < O * I * K * S * S
    assert max(sizes) <= max(amp.numel(), mu.numel(), prec.numel())


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("share", [False, True])
def test_layer_gradcheck(cov, share):
    torch.manual_seed(0)
    m = GaussianMixtureConv2d(2, 3, 3, 2, padding=1, covariance=cov, share_geometry=share, dtype=F64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for _, p in m.named_parameters())
    x = torch.randn(1, 2, 4, 4, dtype=F64, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    # fast mode (a random projection of the Jacobian): the op's full gradcheck is above
    assert torch.autograd.gradcheck(f, (x,) + params, fast_mode=True)


def pinned_layer(weight, cov, normalize, min_sigma, groups=1, **conv_kwargs):
    """A mixture conv with one component on every grid point, σ at the floor and the
    amplitudes set to ``weight``."""
    O, Ig, kh, kw = weight.shape
    m = GaussianMixtureConv2d(Ig * groups, O, (kh, kw), kh * kw, groups=groups, covariance=cov,
                              normalize=normalize, min_sigma=min_sigma, dtype=weight.dtype, **conv_kwargs)
    ys = torch.arange(kh, dtype=weight.dtype) - (kh - 1) / 2
    xs = torch.arange(kw, dtype=weight.dtype) - (kw - 1) / 2
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        m.amplitude.copy_(weight.reshape(O, Ig, kh * kw))
        m.means.copy_(grid.expand_as(m.means))
        if cov == "full":
            m.cholesky.zero_()
            m.cholesky[..., 0] = -40.0
            m.cholesky[..., 2] = -40.0
        else:
            m.log_sigma.fill_(-40.0)  # σ² = e^-80 + min_sigma²: at the floor
    return m


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("normalize", [True, False])
def test_pinned_components_match_conv2d(cov, normalize):
    torch.manual_seed(1)
    groups = 2
    weight = torch.randn(6, 2, 3, 4, dtype=F64)  # O=6, in=4 with groups=2, non-square kernel
    bias = torch.randn(6, dtype=F64)
    x = torch.randn(2, 4, 9, 10, dtype=F64)
    m = pinned_layer(weight, cov, normalize, min_sigma=0.05, groups=groups, stride=2, padding=1)
    with torch.no_grad():
        m.bias.copy_(bias)
    torch.testing.assert_close(m.kernel(), weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m(x), F.conv2d(x, weight, bias, stride=2, padding=1, groups=groups))
    # at the default floor (σ = 0.25 px) a pinned component leaks e^-8 ≈ 3e-4 of its
    # weight to each 4-neighbour: the same conv up to that blur (and normalisation)
    m = pinned_layer(weight, cov, normalize, min_sigma=0.25, groups=groups)
    err = (m.kernel() - weight).abs().max() / weight.abs().max()
    assert err < 8 * math.exp(-8)


@pytest.mark.parametrize("cov", COVS)
def test_sigma_floor_and_covariance_parameterisation(cov):
    torch.manual_seed(2)
    m = GaussianMixtureConv2d(3, 2, 5, 4, covariance=cov, min_sigma=0.3, dtype=F64)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(3 * torch.randn_like(p))
    S = m.covariances()
    eig = torch.linalg.eigvalsh(S)
    assert eig.min() >= 0.3**2 * (1 - 1e-9)
    if cov == "full":
        ly, r, lx = m.cholesky.unbind(-1)
        L = torch.zeros(*ly.shape, 2, 2, dtype=F64)
        L[..., 0, 0], L[..., 1, 0], L[..., 1, 1] = ly.exp(), r, lx.exp()
        want = L @ L.transpose(-1, -2) + 0.09 * torch.eye(2, dtype=F64)
    elif cov == "diag":
        want = torch.diag_embed(torch.exp(2 * m.log_sigma) + 0.09)
    else:
        want = (torch.exp(2 * m.log_sigma) + 0.09)[..., None, None] * torch.eye(2, dtype=F64)
    torch.testing.assert_close(S, want)
    # the kernel uses exactly these covariances (via the direct rasterisation)
    P = torch.linalg.inv(want)
    prec = torch.stack((P[..., 0, 0], P[..., 0, 1], P[..., 1, 1]), -1)
    torch.testing.assert_close(m.kernel(), direct_kernel(m.amplitude, m.clamped_means(), prec, 5, 5, True))


def test_position_clamping():
    m = GaussianMixtureConv2d(1, 1, (3, 5), 2)
    with torch.no_grad():
        m.means.copy_(torch.tensor([[[[4.0, -7.0], [0.5, 0.2]]]]))
    assert torch.equal(m.clamped_means()[0, 0, 0], torch.tensor([1.0, -2.0]))
    # (the plain sum of a normalised kernel does not depend on the positions)
    (m.kernel() * torch.randn(1, 1, 3, 5)).sum().backward()
    assert torch.all(m.means.grad[0, 0, 0] == 0)  # outside: no gradient (DCLS)
    assert torch.any(m.means.grad[0, 0, 1] != 0)
    m.clamp_parameters_()
    assert torch.equal(m.means[0, 0, 0].detach(), torch.tensor([1.0, -2.0]))
    assert torch.equal(m.means[0, 0, 1].detach(), torch.tensor([0.5, 0.2]))


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("share", [False, True])
def test_state_dict_round_trip_and_shapes(cov, share):
    torch.manual_seed(3)
    m = GaussianMixtureConv2d(4, 6, 3, 3, padding=1, groups=2, covariance=cov, share_geometry=share)
    J = 1 if share else 2
    assert m.amplitude.shape == (6, 2, 3)
    assert m.means.shape == (6, J, 3, 2)
    other = GaussianMixtureConv2d(4, 6, 3, 3, padding=1, groups=2, covariance=cov, share_geometry=share)
    other.load_state_dict(m.state_dict())
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(other(x), m(x))
    assert m(x).shape == (2, 6, 7, 7)
    n_params = sum(p.numel() for p in m.parameters())
    geo = {"isotropic": 3, "diag": 4, "full": 5}[cov]
    assert n_params == 6 * 2 * 3 + 6 * J * 3 * geo + 6


def test_initialisation_scale_matches_conv2d():
    torch.manual_seed(4)
    m = GaussianMixtureConv2d(16, 32, 5, 4)
    conv = torch.nn.Conv2d(16, 32, 5)
    rms_mix = m.kernel().pow(2).mean().sqrt().item()
    rms_conv = conv.weight.pow(2).mean().sqrt().item()
    assert abs(rms_mix / rms_conv - 1) < 0.1
    assert m.means.abs().max() <= 2.0


@pytest.mark.parametrize("device", DEVICES)
def test_float32_and_device(device):
    torch.manual_seed(5)
    m = GaussianMixtureConv2d(3, 4, 3, 2, padding=1, covariance="full").to(device)
    x = torch.randn(2, 3, 6, 6, device=device)
    y = m(x)
    y.square().mean().backward()
    assert y.dtype == torch.float32 and y.device.type == device
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    ref = m.to(F64).cpu()
    torch.testing.assert_close(y.double().cpu(), ref(x.double().cpu()), rtol=1e-4, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixtureConv2d(1, 1, 3, 2, covariance="spherical")
    with pytest.raises(ValueError, match="divisible by groups"):
        GaussianMixtureConv2d(3, 4, 3, 2, groups=2)
    with pytest.raises(ValueError, match="init_sigma"):
        GaussianMixtureConv2d(1, 1, 3, 2, min_sigma=0.5, init_sigma=0.4)
    with pytest.raises(ValueError, match="kernel_size"):
        GaussianMixtureConv2d(1, 1, 0, 2)
    amp, mu, prec = random_op_inputs(J=3)
    with pytest.raises(ValueError, match="precisions must be"):
        mixture_kernel2d(amp, mu, prec[..., :2], 3)


def test_mixture_conv_digits_demo_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("cnn_mixture_conv_digits",
                                                  EXAMPLES / "cnn_mixture_conv_digits.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    results = demo.main(["--quick", "--out", str(tmp_path), "--json", str(tmp_path / "results.json")])
    assert (tmp_path / "mixture_conv_kernels.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {k: v["per_seed"] for k, v in saved["results"]["models"].items()} == results
    for name, accs in results.items():
        assert all(0.0 <= a <= 1.0 for a in accs), name
        assert np.mean(accs) > 0.3, name  # far above chance (10 %) even after the quick run
