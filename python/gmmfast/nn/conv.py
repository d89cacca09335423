r"""Convolutions whose kernels are signed mixtures of 2-D Gaussians.

Kernel construction is the custom op ``gmmfast::mixture_kernel2d``: for every filter
(o, c) (output channel o, input channel c of its group)

.. math::

    W[o, c, y, x] = \sum_{k} A[o, c, k]\; g_k[o, j, y, x], \qquad
    g_k = \frac{e_k}{Z_k},\quad e_k = \exp(-\tfrac12 q_k),\quad
    q_k = a\,\delta_y^2 + 2b\,\delta_y\delta_x + c\,\delta_x^2

with δ = (y − μ_y, x − μ_x) the offset of the grid point from the component's mean, (a, b;
b, c) its precision matrix, j = c (own geometry) or j = 0 (geometry shared by the input
channels), and Z_k = Σ_{y,x} e_k (normalize=True: every Gaussian sums to one on the grid)
or 1. The forward accumulates over k and the backward recomputes g_k, so neither stores
anything of size [C_out, C_in, K, S, S].

Backward (G = ∂L/∂W). With H_k = Σ_{c ∈ j} G[o, c] A[o, c, k] (= ∂L/∂g_k) and
R_k = g_k (H_k − ⟨H_k, g_k⟩) (normalize=True; R_k = g_k H_k otherwise; = e_k ∂L/∂e_k):

    ∂L/∂A[o, c, k] = ⟨G[o, c], g_k[o, j]⟩
    ∂L/∂μ_y = Σ R_k (a δ_y + b δ_x)      ∂L/∂μ_x = Σ R_k (b δ_y + c δ_x)
    ∂L/∂a = −½ Σ R_k δ_y²    ∂L/∂b = −Σ R_k δ_y δ_x    ∂L/∂c = −½ Σ R_k δ_x²

(∂e/∂θ = −½ e ∂q/∂θ, and the normalisation's Jacobian turns ∂L/∂g into
(∂L/∂g − ⟨∂L/∂g, g⟩)/Z). The map from the layer's parameters (log-σ, log-Cholesky) to
(a, b, c) is a handful of [C_out, J, K] element-wise operations left to autograd.
"""

from __future__ import annotations

import math
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GaussianMixtureConv2d", "mixture_kernel2d"]

_COVARIANCES = ("isotropic", "diag", "full")


# ------------------------------------------------------------------------------ the op


def _grid(n: int, ref: Tensor) -> Tensor:
    """Grid offsets from the kernel centre: −(n−1)/2, …, (n−1)/2."""
    return torch.arange(n, dtype=ref.dtype, device=ref.device) - 0.5 * (n - 1)


def _component(means_k: Tensor, prec_k: Tensor, ys: Tensor, xs: Tensor, normalize: bool):
    """g_k [O, J, H, W] and the offsets δ_y [O, J, H, 1], δ_x [O, J, 1, W] of one component."""
    dy = ys.view(1, 1, -1, 1) - means_k[..., 0, None, None]
    dx = xs.view(1, 1, 1, -1) - means_k[..., 1, None, None]
    a = prec_k[..., 0, None, None]
    b = prec_k[..., 1, None, None]
    c = prec_k[..., 2, None, None]
    q = a * dy * dy + 2.0 * b * dy * dx + c * dx * dx
    if normalize:
        # shifting q by its minimum leaves g unchanged and keeps Z >= 1 (no underflow
        # to 0/0 for a narrow Gaussian between grid points)
        q = q - q.amin(dim=(-2, -1), keepdim=True)
        e = torch.exp(-0.5 * q)
        g = e / e.sum(dim=(-2, -1), keepdim=True)
    else:
        g = torch.exp(-0.5 * q)
    return g, dy, dx, a, b, c


@torch.library.custom_op("gmmfast::mixture_kernel2d", mutates_args=())
def _mixture_kernel2d_op(
    amplitude: Tensor, means: Tensor, precisions: Tensor, height: int, width: int, normalize: bool
) -> Tensor:
    """[O, I, K], [O, J, K, 2], [O, J, K, 3] (J = 1 or I) -> kernel [O, I, height, width]."""
    O, I, K = amplitude.shape
    ys, xs = _grid(height, amplitude), _grid(width, amplitude)
    out = amplitude.new_zeros((O, I, height, width))
    for k in range(K):
        g = _component(means[:, :, k], precisions[:, :, k], ys, xs, normalize)[0]
        out += amplitude[:, :, k, None, None] * g
    return out


@_mixture_kernel2d_op.register_fake
def _(amplitude, means, precisions, height, width, normalize):
    O, I, _ = amplitude.shape
    return amplitude.new_empty((O, I, height, width))


@torch.library.custom_op("gmmfast::mixture_kernel2d_backward", mutates_args=())
def _mixture_kernel2d_backward_op(
    grad: Tensor, amplitude: Tensor, means: Tensor, precisions: Tensor, normalize: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (amplitude, means, precisions) of ⟨grad, kernel⟩ (module docstring)."""
    O, I, K = amplitude.shape
    J = means.shape[1]
    height, width = grad.shape[-2:]
    ys, xs = _grid(height, amplitude), _grid(width, amplitude)
    g_amp = torch.empty_like(amplitude)
    g_means = torch.empty_like(means)
    g_prec = torch.empty_like(precisions)
    grad = grad.to(amplitude.dtype)
    for k in range(K):
        g, dy, dx, a, b, c = _component(means[:, :, k], precisions[:, :, k], ys, xs, normalize)
        g_amp[:, :, k] = (grad * g).sum(dim=(-2, -1))
        Hk = grad * amplitude[:, :, k, None, None]
        if J != I:
            Hk = Hk.sum(dim=1, keepdim=True)
        R = g * Hk
        if normalize:
            R = R - g * R.sum(dim=(-2, -1), keepdim=True)
        g_means[:, :, k, 0] = (R * (a * dy + b * dx)).sum(dim=(-2, -1))
        g_means[:, :, k, 1] = (R * (b * dy + c * dx)).sum(dim=(-2, -1))
        g_prec[:, :, k, 0] = -0.5 * (R * dy * dy).sum(dim=(-2, -1))
        g_prec[:, :, k, 1] = -(R * dy * dx).sum(dim=(-2, -1))
        g_prec[:, :, k, 2] = -0.5 * (R * dx * dx).sum(dim=(-2, -1))
    return g_amp, g_means, g_prec


@_mixture_kernel2d_backward_op.register_fake
def _(grad, amplitude, means, precisions, normalize):
    return torch.empty_like(amplitude), torch.empty_like(means), torch.empty_like(precisions)


def _setup_context(ctx, inputs, output):
    amplitude, means, precisions, height, width, normalize = inputs
    ctx.normalize = normalize
    ctx.save_for_backward(amplitude, means, precisions)


def _backward(ctx, grad):
    amplitude, means, precisions = ctx.saved_tensors
    g_amp, g_means, g_prec = _mixture_kernel2d_backward_op(
        grad.contiguous(), amplitude, means, precisions, ctx.normalize
    )
    return g_amp, g_means, g_prec, None, None, None


torch.library.register_autograd("gmmfast::mixture_kernel2d", _backward, setup_context=_setup_context)


def mixture_kernel2d(amplitude: Tensor, means: Tensor, precisions: Tensor, kernel_size, normalize: bool = True) -> Tensor:
    """Rasterise signed Gaussian mixtures on a kernel grid (differentiable).

    Parameters
    ----------
    amplitude : Tensor [O, I, K]
        Signed weight of component k in filter (o, c).
    means : Tensor [O, J, K, 2]
        (row, column) offset of each component's mean from the kernel centre, in pixels;
        J = I (one geometry per filter) or J = 1 (shared by the input channels).
    precisions : Tensor [O, J, K, 3]
        (a, b, c) of the precision matrix [[a, b], [b, c]] in (row, column) order;
        must be positive definite.
    kernel_size : int or (int, int)
    normalize : bool
        Divide each Gaussian by its sum over the grid.

    Returns the kernel [O, I, kH, kW] in amplitude's dtype and device.
    """
    kh, kw = _pair(kernel_size)
    if amplitude.dim() != 3:
        raise ValueError(f"amplitude must be [O, I, K], got {tuple(amplitude.shape)}")
    O, I, K = amplitude.shape
    if means.dim() != 4 or means.shape[0] != O or means.shape[1] not in (1, I) or means.shape[2:] != (K, 2):
        raise ValueError(f"means must be [{O}, 1 or {I}, {K}, 2], got {tuple(means.shape)}")
    if tuple(precisions.shape) != tuple(means.shape[:3]) + (3,):
        raise ValueError(f"precisions must be {tuple(means.shape[:3]) + (3,)}, got {tuple(precisions.shape)}")
    dt = amplitude.dtype
    for name, t in (("means", means), ("precisions", precisions)):
        if t.device != amplitude.device:
            raise ValueError(f"{name} is on {t.device} but amplitude is on {amplitude.device}")
    return _mixture_kernel2d_op(
        amplitude.contiguous(), means.to(dt).contiguous(), precisions.to(dt).contiguous(), kh, kw, bool(normalize)
    )


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v):
        raise ValueError(f"kernel_size must be a positive int or a pair of them, got {v!r}")
    return v


# -------------------------------------------------------------------------- the layer


class GaussianMixtureConv2d(nn.Module):
    """2-D convolution whose every filter is a signed mixture of K Gaussians.

    Filter (o, c) is Σ_k A[o, c, k] · N_k rasterised on the kH × kW grid (offsets from the
    kernel centre, in pixels; normalised to sum 1 on the grid when ``normalize``), then
    the input goes through an ordinary ``F.conv2d``. The kernel is built by the
    ``gmmfast::mixture_kernel2d`` custom op (closed-form backward, no [C_out, C_in, K,
    kH, kW] intermediate), so parameters cost K·(1 + geometry) per filter instead of
    kH·kW.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias :
        As :class:`torch.nn.Conv2d` (padding_mode 'zeros').
    num_components : int
        K Gaussians per filter.
    covariance : {'isotropic', 'diag', 'full'}, default='isotropic'
        Shape of each Gaussian: one log-σ; log-σ per axis; or a 2 × 2 covariance
        through its log-Cholesky factor L = [[e^{l_y}, 0], [r, e^{l_x}]].
    share_geometry : bool, default=False
        Means and covariances shared by all input channels of an output channel (only
        the amplitudes differ per input channel).
    normalize : bool, default=True
        Normalise each Gaussian to sum one on the kernel grid (a component pinned on a
        grid point with σ at the floor then becomes a one-hot kernel entry of weight A).
    min_sigma : float, default=0.25
        σ floor: the covariance is Σ_θ + min_sigma² I (Σ_θ from the parameters), so no
        direction is narrower than min_sigma pixels and the gradient never vanishes at
        the floor (DCLS's Gaussian kernels add a floor to σ likewise).
    init_sigma : float, default=0.6
        Initial σ (≥ min_sigma).

    Positions are clamped to the kernel extent [−(k−1)/2, (k−1)/2] in the forward (as
    DCLS does); call :meth:`clamp_parameters_` after each optimiser step to pull the
    stored means back in (DCLS's ``clamp_parameters``), so none stays outside with a
    zero gradient.

    Attributes
    ----------
    amplitude : [C_out, C_in/groups, K];  means : [C_out, J, K, 2] (row, column);
    log_sigma : [C_out, J, K] (isotropic) / [C_out, J, K, 2] (diag);
    cholesky : [C_out, J, K, 3] (full: l_y, r, l_x); bias : [C_out]; J = 1 when
    share_geometry else C_in/groups.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, tuple[int, int]],
        num_components: int,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        covariance: str = "isotropic",
        share_geometry: bool = False,
        normalize: bool = True,
        min_sigma: float = 0.25,
        init_sigma: float = 0.6,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("num_components", num_components), ("groups", groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                             f"divisible by groups ({groups})")
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(map(repr, _COVARIANCES))}, got {covariance!r}")
        if not min_sigma > 0:
            raise ValueError(f"min_sigma must be > 0, got {min_sigma!r}")
        if not init_sigma >= min_sigma:
            raise ValueError(f"init_sigma ({init_sigma!r}) must be >= min_sigma ({min_sigma!r})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.num_components = num_components
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.covariance = covariance
        self.share_geometry = share_geometry
        self.normalize = normalize
        self.min_sigma = float(min_sigma)
        self.init_sigma = float(init_sigma)
        fk = dict(device=device, dtype=dtype)
        O, I, K = out_channels, in_channels // groups, num_components
        J = 1 if share_geometry else I
        self.amplitude = nn.Parameter(torch.empty(O, I, K, **fk))
        self.means = nn.Parameter(torch.empty(O, J, K, 2, **fk))
        if covariance == "isotropic":
            self.log_sigma = nn.Parameter(torch.empty(O, J, K, **fk))
        elif covariance == "diag":
            self.log_sigma = nn.Parameter(torch.empty(O, J, K, 2, **fk))
        else:
            self.cholesky = nn.Parameter(torch.empty(O, J, K, 3, **fk))
        self.bias = nn.Parameter(torch.empty(O, **fk)) if bias else None
        self.reset_parameters()

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"num_components={self.num_components}, stride={self.stride}, padding={self.padding}")
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        s += (f", covariance={self.covariance!r}, share_geometry={self.share_geometry}, "
              f"normalize={self.normalize}, min_sigma={self.min_sigma}, bias={self.bias is not None}")
        return s

    def _half_extent(self) -> Tensor:
        kh, kw = self.kernel_size
        return self.means.new_tensor([0.5 * (kh - 1), 0.5 * (kw - 1)])

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Means uniform over the kernel extent, σ = init_sigma, amplitudes normal and
        rescaled so the kernel's RMS matches torch.nn.Conv2d's default initialisation
        (uniform ±1/√fan_in, RMS 1/√(3·fan_in)); bias as Conv2d."""
        r = self._half_extent()
        self.means.uniform_(-1.0, 1.0).mul_(r)
        excess = max(self.init_sigma**2 - self.min_sigma**2, 1e-12)
        log_s = 0.5 * math.log(excess)
        if self.covariance == "full":
            self.cholesky.zero_()
            self.cholesky[..., 0] = log_s
            self.cholesky[..., 2] = log_s
        else:
            self.log_sigma.fill_(log_s)
        nn.init.normal_(self.amplitude)
        kh, kw = self.kernel_size
        fan_in = (self.in_channels // self.groups) * kh * kw
        rms = self.kernel().pow(2).mean().sqrt()
        if rms > 0:
            self.amplitude.mul_(1.0 / (math.sqrt(3.0 * fan_in) * rms))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            self.bias.uniform_(-bound, bound)

    @torch.no_grad()
    def clamp_parameters_(self) -> None:
        """Clamp the stored means into the kernel extent (call after optimizer.step())."""
        r = self._half_extent()
        self.means.copy_(torch.maximum(torch.minimum(self.means, r), -r))

    def clamped_means(self) -> Tensor:
        r = self._half_extent()
        return torch.maximum(torch.minimum(self.means, r), -r)

    def precisions(self) -> Tensor:
        """(a, b, c) of each component's precision matrix, [C_out, J, K, 3]."""
        s2 = self.min_sigma**2
        if self.covariance == "isotropic":
            p = 1.0 / (torch.exp(2.0 * self.log_sigma) + s2)
            return torch.stack((p, torch.zeros_like(p), p), dim=-1)
        if self.covariance == "diag":
            var = torch.exp(2.0 * self.log_sigma) + s2
            p = 1.0 / var
            return torch.stack((p[..., 0], torch.zeros_like(p[..., 0]), p[..., 1]), dim=-1)
        ly, r, lx = self.cholesky.unbind(-1)
        ey = torch.exp(ly)
        syy = ey * ey + s2
        syx = r * ey
        sxx = r * r + torch.exp(2.0 * lx) + s2
        det = syy * sxx - syx * syx
        return torch.stack((sxx / det, -syx / det, syy / det), dim=-1)

    def covariances(self) -> Tensor:
        """Each component's 2 × 2 covariance in (row, column) order, [C_out, J, K, 2, 2]."""
        a, b, c = self.precisions().unbind(-1)
        det = a * c - b * b
        return torch.stack((torch.stack((c, -b), -1), torch.stack((-b, a), -1)), -2) / det[..., None, None]

    def kernel(self) -> Tensor:
        """The rasterised kernel [C_out, C_in/groups, kH, kW]."""
        return mixture_kernel2d(self.amplitude, self.clamped_means(), self.precisions(),
                                self.kernel_size, self.normalize)

    @property
    def weight(self) -> Tensor:
        """Alias of :meth:`kernel` (the equivalent Conv2d weight)."""
        return self.kernel()

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), self.bias, self.stride, self.padding, self.dilation, self.groups)
