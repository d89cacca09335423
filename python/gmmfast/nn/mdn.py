"""Mixture density networks: an output head that predicts a Gaussian mixture per sample
(Bishop 1994), and a recurrent network with that head (the MDN-RNN of Graves 2013,
sketch-rnn and World Models).

The likelihood is gmmfast's fused per-sample op (:mod:`gmmfast.torch.per_sample`): raw
logits go straight into it (log-space mixture weights, log_softmax inside), and every σ is
floored (``min_sigma``), so the loss stays finite where a hand-written
softmax/log/exp chain overflows.

Example
-------
>>> import torch
>>> from gmmfast.nn import MDNHead
>>> head = MDNHead(in_features=16, out_features=2, num_components=5)
>>> h, y = torch.randn(32, 16), torch.randn(32, 2)
>>> loss = head.nll(h, y)              # mean negative log-likelihood
>>> loss.backward()
>>> head(h).mixture.sample().shape     # one draw per row
torch.Size([32, 2])

Training that finds every mode: start the head at the mixture of its training targets
(Bishop 1994) before creating the optimizer, ``head.init_from_targets(y_train)``; for a
recurrent network whose next step follows its input, ``MDNRNN(..., skip=True)`` and
``rnn.init_from_targets(y, x=x)``; during training, ``revive_dead_components`` restarts
components that no longer explain any target. The helpers live in ``_mdn_init.py``.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributions import GaussianMixture
from ..torch.per_sample import BACKENDS, COVARIANCES, MIXTURES

__all__ = ["MDNHead", "MDNRNN", "MDNOutput", "GeneratedSequence"]

SIGMA_ACTIVATIONS = ("softplus", "exp", "elu+1")
HeadSpec = Union[str, Tuple[str, int]]


class MDNOutput(NamedTuple):
    """What an MDN head predicts for a batch.

    mixture: the per-sample :class:`~gmmfast.distributions.GaussianMixture` (batch shape =
        the input's leading dimensions).
    extras: raw logits of the extra heads by name: Bernoulli heads (...,), categorical
        heads (..., n_classes).
    """

    mixture: GaussianMixture
    extras: Dict[str, Tensor]


class GeneratedSequence(NamedTuple):
    """MDNRNN.generate's result: outputs (B, steps, D) (time-major when batch_first=False),
    extras by name ((B, steps) for Bernoulli heads as 0/1 floats, (B, steps) int64 class
    indices for categorical heads), and the recurrent state after the last step."""

    outputs: Tensor
    extras: Dict[str, Tensor]
    state: object


def _parse_heads(extra_heads) -> Dict[str, Tuple[str, int]]:
    heads: Dict[str, Tuple[str, int]] = {}
    if extra_heads is None:
        return heads
    if not isinstance(extra_heads, Mapping):
        raise TypeError(
            "extra_heads must be a mapping name -> 'bernoulli' or ('categorical', n_classes), "
            f"got {type(extra_heads).__name__}"
        )
    for name, spec in extra_heads.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"extra head names must be identifiers, got {name!r}")
        if spec == "bernoulli" or spec == ("bernoulli", 1):
            heads[name] = ("bernoulli", 1)
        elif (
            isinstance(spec, (tuple, list))
            and len(spec) == 2
            and spec[0] == "categorical"
            and isinstance(spec[1], int)
            and spec[1] >= 2
        ):
            heads[name] = ("categorical", int(spec[1]))
        else:
            raise ValueError(
                f"extra head {name!r}: expected 'bernoulli' or ('categorical', n_classes >= 2), got {spec!r}"
            )
    return heads


class MDNHead(nn.Module):
    """A linear layer that outputs a per-sample Gaussian mixture over ``out_features``.

    Parameters
    ----------
    in_features, out_features : sizes of the input features and of the modelled target.
    num_components : K, the number of mixture components.
    covariance : "diag" (default), "isotropic", "full" (a Cholesky factor per component:
        its diagonal through ``sigma_activation``, the strictly lower part unconstrained) or
        "correlated2d" (out_features = 2: σ1, σ2 and ρ = max_correlation · tanh(·), the
        pen-offset model of Graves 2013).
    mixture : "joint" (one mixture of D-dimensional Gaussians) or "per_dim" (an
        independent 1-D mixture per output feature).
    sigma_activation : "softplus" (default), "exp" (its argument clamped at 30 against
        overflow) or "elu+1"; σ = activation(·) + min_sigma.
    min_sigma : the σ floor (> 0). It bounds every component density, so the likelihood
        cannot diverge on a collapsing component.
    max_correlation : |ρ| bound for "correlated2d" (keeps 1 - ρ² representable in float32).
    extra_heads : optional mapping name -> "bernoulli" (one logit, e.g. end of stroke) or
        ("categorical", n) (n logits, e.g. sketch-rnn's pen state). Their losses are
        added to the mixture's by :meth:`nll`.
    backend : the mixture's log_prob backend ("auto": the fused op where it has a kernel,
        plain torch elsewhere; see :class:`~gmmfast.distributions.GaussianMixture`).

    ``forward(h)`` takes (..., in_features) and returns an :class:`MDNOutput`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_components: int,
        covariance: str = "diag",
        mixture: str = "joint",
        sigma_activation: str = "softplus",
        min_sigma: float = 1e-3,
        max_correlation: float = 0.9999,
        extra_heads: Optional[Mapping[str, HeadSpec]] = None,
        backend: str = "auto",
    ):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features), ("num_components", num_components)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(map(repr, COVARIANCES))}, got {covariance!r}")
        if mixture not in MIXTURES:
            raise ValueError(f"mixture must be one of {', '.join(map(repr, MIXTURES))}, got {mixture!r}")
        if mixture == "per_dim" and covariance not in ("diag", "isotropic"):
            raise ValueError("mixture='per_dim' uses 1-D components: covariance must be 'diag' (or 'isotropic')")
        if covariance == "correlated2d" and out_features != 2:
            raise ValueError(f"covariance='correlated2d' models 2-D outputs: out_features must be 2, got {out_features}")
        if sigma_activation not in SIGMA_ACTIVATIONS:
            raise ValueError(
                f"sigma_activation must be one of {', '.join(map(repr, SIGMA_ACTIVATIONS))}, got {sigma_activation!r}"
            )
        if not (isinstance(min_sigma, (int, float)) and min_sigma > 0 and math.isfinite(min_sigma)):
            raise ValueError(f"min_sigma must be a finite number > 0, got {min_sigma!r}")
        if not (0.0 < max_correlation < 1.0):
            raise ValueError(f"max_correlation must lie in (0, 1), got {max_correlation!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        self.in_features, self.out_features, self.num_components = in_features, out_features, num_components
        self.covariance, self.mixture = covariance, mixture
        self.sigma_activation, self.min_sigma = sigma_activation, float(min_sigma)
        self.max_correlation = float(max_correlation)
        self.heads = _parse_heads(extra_heads)
        self.backend = backend
        K, D = num_components, out_features
        if mixture == "per_dim":
            self._sizes = [("logits", D * K), ("means", D * K), ("sigma", D * K)]
        else:
            sizes = [("logits", K), ("means", K * D)]
            if covariance == "isotropic":
                sizes.append(("sigma", K))
            elif covariance == "diag":
                sizes.append(("sigma", K * D))
            elif covariance == "full":
                sizes += [("sigma", K * D), ("offdiag", K * D * (D - 1) // 2)]
            else:
                sizes += [("sigma", 2 * K), ("rho", K)]
            self._sizes = sizes
        self._sizes += [(f"extra:{name}", n) for name, (_, n) in self.heads.items()]
        self.n_outputs = sum(n for _, n in self._sizes)
        self.proj = nn.Linear(in_features, self.n_outputs)
        # a fixed per-output factor on proj's outputs (ones unless init_from_targets sets it):
        # the means are learnt in units of the components' σ, so that an optimizer step of a
        # given size moves a mean by a fraction of σ whatever the targets' scale
        self.register_buffer("output_scale", torch.ones(self.n_outputs))
        self.register_load_state_dict_pre_hook(_default_output_scale)
        if covariance == "full" and D > 1:
            rows, cols = torch.tril_indices(D, D, offset=-1)
            self.register_buffer("_tril_flat", rows * D + cols, persistent=False)

    def extra_repr(self) -> str:
        heads = f", extra_heads={dict(self.heads)}" if self.heads else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_components={self.num_components}, covariance={self.covariance!r}, mixture={self.mixture!r}, "
            f"sigma_activation={self.sigma_activation!r}, min_sigma={self.min_sigma}{heads}"
        )

    def _sigma(self, raw: Tensor) -> Tensor:
        if self.sigma_activation == "softplus":
            s = F.softplus(raw)
        elif self.sigma_activation == "exp":
            s = torch.exp(raw.clamp(max=30.0))
        else:
            s = F.elu(raw) + 1.0
        return s + self.min_sigma

    def forward(self, h: Tensor) -> MDNOutput:
        if h.dim() < 1 or h.shape[-1] != self.in_features:
            raise ValueError(f"expected input of shape (..., {self.in_features}), got {tuple(h.shape)}")
        out = self.proj(h) * self.output_scale
        batch = tuple(h.shape[:-1])
        parts = dict(zip([n for n, _ in self._sizes], out.split([s for _, s in self._sizes], dim=-1)))
        K, D = self.num_components, self.out_features
        rho = None
        if self.mixture == "per_dim":
            logits = parts["logits"].reshape(batch + (D, K))
            means = parts["means"].reshape(batch + (D, K))
            scale = self._sigma(parts["sigma"]).reshape(batch + (D, K))
        else:
            logits = parts["logits"]
            means = parts["means"].reshape(batch + (K, D))
            if self.covariance == "isotropic":
                scale = self._sigma(parts["sigma"])
            elif self.covariance == "diag":
                scale = self._sigma(parts["sigma"]).reshape(batch + (K, D))
            elif self.covariance == "full":
                diag = self._sigma(parts["sigma"]).reshape(batch + (K, D))
                scale = torch.diag_embed(diag)
                if D > 1:  # the strictly lower triangle, unconstrained
                    off = parts["offdiag"].reshape(batch + (K, D * (D - 1) // 2))
                    flat = scale.reshape(batch + (K, D * D)).index_add(-1, self._tril_flat, off)
                    scale = flat.reshape(batch + (K, D, D))
            else:
                scale = self._sigma(parts["sigma"]).reshape(batch + (K, 2))
                rho = self.max_correlation * torch.tanh(parts["rho"])
        extras = {}
        for name, (kind, n) in self.heads.items():
            v = parts[f"extra:{name}"]
            extras[name] = v.squeeze(-1) if kind == "bernoulli" else v
        mix = GaussianMixture(
            logits, means, scale, rho, self.covariance, self.mixture, self.backend, validate_args=False
        )
        return MDNOutput(mix, extras)

    def loss(
        self,
        out: MDNOutput,
        y: Tensor,
        mask: Optional[Tensor] = None,
        targets: Optional[Mapping[str, Tensor]] = None,
        reduction: str = "mean",
    ) -> Tensor:
        """Negative log-likelihood of ``y`` (+ the extra heads' losses) under ``out``.

        mask: (...) bool/float, nonzero = keep (padded steps contribute 0).
        targets: a target per extra head: Bernoulli heads 0/1 (...), categorical heads class
            indices (...). Required when the head has extra heads.
        reduction: "mean" (over kept entries), "sum" or "none" (per entry, shape (...)).
        """
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        nll = -out.mixture.log_prob(y, mask=mask)
        if self.heads:
            targets = dict(targets or {})
            missing = [n for n in self.heads if n not in targets]
            if missing:
                raise ValueError(f"targets for the extra heads {missing} are missing (pass targets={{name: tensor}})")
            for name, (kind, n) in self.heads.items():
                logit, t = out.extras[name], targets[name]
                if tuple(t.shape) != tuple(nll.shape):
                    raise ValueError(f"targets[{name!r}] must have shape {tuple(nll.shape)}, got {tuple(t.shape)}")
                if kind == "bernoulli":
                    term = F.binary_cross_entropy_with_logits(logit, t.to(logit.dtype), reduction="none")
                else:
                    term = F.cross_entropy(logit.reshape(-1, n), t.reshape(-1).long(), reduction="none").reshape(t.shape)
                if mask is not None:
                    term = torch.where(mask != 0, term, torch.zeros_like(term))
                nll = nll + term
        if reduction == "none":
            return nll
        if reduction == "sum":
            return nll.sum()
        count = nll.numel() if mask is None else (mask != 0).sum().clamp_min(1)
        return nll.sum() / count

    def nll(self, h: Tensor, y: Tensor, mask: Optional[Tensor] = None, targets=None, reduction: str = "mean") -> Tensor:
        """``loss(self(h), y, mask, targets, reduction)``."""
        return self.loss(self(h), y, mask=mask, targets=targets, reduction=reduction)

    # ---------------------------------------------------------------- training aids
    def init_from_targets(
        self, y, h: Optional[Tensor] = None, mask=None, *, weight_scale: float = 0.1,
        max_samples: int = 100_000, random_state: int = 0, n_init: int = 1, refine: int = 3,
    ) -> dict:
        """Start the head at the mixture of its training targets (Bishop 1994).

        Fits :class:`gmmfast.GaussianMixture` (K components, the head's covariance form;
        one 1-D mixture per feature for ``mixture="per_dim"``) to the targets ``y``
        (..., out_features) (the rows that ``mask`` keeps; a seeded random subset of at
        most ``max_samples``) and sets the output layer so that every input predicts that
        mixture: the biases give its weights, means and σ (through ``sigma_activation``
        and ``min_sigma``), and the input-dependent weights are scaled by
        ``weight_scale`` (means: in units of the targets' standard deviation). Training
        then starts with a component on every mode of the data instead of K copies of a
        broad Gaussian near 0, where gradient descent tends to merge components or let
        them die. It helps most when the targets' modes are far apart relative to their
        spread, or far from 0 / of a scale far from 1.

        h: the head's input features for the same rows (optional). Then every
        component's mean follows the least-squares linear prediction of y from h, refitted
        ``refine`` times with each row's mode taken out (the modes are noise to least
        squares), and the mixture is fitted to the residuals. Use it when the targets
        follow the input (the next step of a walk, a residual around a trend): there the
        modes are those of the residuals, not of y. The start is as good as a linear
        function of h can predict y: for a recurrent network, use ``skip=True`` so that h
        contains the input itself.

        The extra heads keep their initialisation. Returns what was fitted (weights,
        means, σ, the number of rows used). Call it before creating the optimizer, or
        reset the optimizer's state afterwards.
        """
        from ._mdn_init import init_head

        return init_head(self, y, h=h, mask=mask, weight_scale=weight_scale, max_samples=max_samples,
                         random_state=random_state, n_init=n_init, refine=refine)

    def revive_dead_components(self, h: Tensor, y, mask=None, min_weight: float = 1e-3, optimizer=None) -> list:
        """Restart every component whose mean responsibility for (h, y) is below
        ``min_weight`` (a component that has died: gradient descent does not bring it back).

        The dead component splits the component that best explains the target the
        mixture explains worst: it copies its parent's weights, its mean moves onto that
        target, and the two share the parent's mixture weight, so the rest of the mixture
        is unchanged. EM's ``recovery="reseed"`` for a training loop: call it every few
        hundred steps on a batch. ``optimizer``: its per-parameter state (e.g. Adam's
        moments) for the rewritten outputs is zeroed. Returns the revived components
        (indices; (feature, index) pairs for ``mixture="per_dim"``).
        """
        from ._mdn_init import revive_dead

        return revive_dead(self, h, y, mask=mask, min_weight=min_weight, optimizer=optimizer)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self,
        out: MDNOutput,
        temperature: float = 1.0,
        bias: float = 0.0,
        greedy: bool = False,
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """One draw per entry of ``out``: (y (..., D), extras by name).

        temperature τ and bias b act on the mixture as in
        :meth:`GaussianMixture.temper` (logits·(1+b)/τ, σ·exp(-b)·√τ); the extra heads'
        logits are divided by τ (the bias is Graves' and concerns the mixture only).
        greedy: the most probable component's mean, and the most probable class / the
        Bernoulli's mode (logit > 0), with no randomness.
        """
        mix = out.mixture
        extras = {}
        if greedy:
            y = mix.greedy()
            for name, (kind, _) in self.heads.items():
                v = out.extras[name]
                extras[name] = (v > 0).to(y.dtype) if kind == "bernoulli" else v.argmax(-1)
            return y, extras
        y = mix.temper(temperature, bias).sample()
        for name, (kind, _) in self.heads.items():
            v = out.extras[name] / temperature
            if kind == "bernoulli":
                extras[name] = torch.bernoulli(torch.sigmoid(v)).to(y.dtype)
            else:
                extras[name] = torch.distributions.Categorical(logits=v).sample()
        return y, extras

    def feedback(self, y: Tensor, extras: Mapping[str, Tensor]) -> Tensor:
        """The default next input of a generating RNN: y, then every extra head's value
        (Bernoulli as 0/1, categorical one-hot), concatenated in head order."""
        parts = [y]
        for name, (kind, n) in self.heads.items():
            v = extras[name]
            parts.append(v.unsqueeze(-1).to(y.dtype) if kind == "bernoulli" else F.one_hot(v, n).to(y.dtype))
        return torch.cat(parts, dim=-1)

    @property
    def feedback_size(self) -> int:
        return self.out_features + sum(n for _, n in self.heads.values())


def _default_output_scale(module, state_dict, prefix, *args) -> None:
    """State dicts saved before ``output_scale`` existed load with the scale of ones."""
    key = prefix + "output_scale"
    if key not in state_dict and prefix + "proj.weight" in state_dict:
        state_dict[key] = torch.ones_like(module.output_scale)


class MDNRNN(nn.Module):
    """A recurrent network (LSTM or GRU) whose per-step output is a Gaussian mixture.

    Parameters
    ----------
    input_size, hidden_size : the RNN's input and hidden sizes.
    out_features, num_components : the modelled target's size D and the number K of
        mixture components.
    cell : "lstm" (default) or "gru".
    num_layers : stacked recurrent layers.
    dropout : dropout between the recurrent layers and on the last layer's output.
    batch_first : (B, T, features) tensors (default) or (T, B, features).
    skip : feed the input x to the head beside the recurrent features (the
        input-to-output skip connection of Graves 2013, §2): a target that is the input
        plus a multimodal step (a walk, a pen trajectory in absolute coordinates) is then
        a linear function of the head's input plus the mixture.
    covariance, mixture, sigma_activation, min_sigma, max_correlation, extra_heads,
    backend : the :class:`MDNHead`'s.

    ``forward(x, state=None)`` returns (:class:`MDNOutput` with batch shape (B, T), state).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        out_features: int,
        num_components: int,
        cell: str = "lstm",
        num_layers: int = 1,
        dropout: float = 0.0,
        covariance: str = "diag",
        mixture: str = "joint",
        sigma_activation: str = "softplus",
        min_sigma: float = 1e-3,
        max_correlation: float = 0.9999,
        extra_heads: Optional[Mapping[str, HeadSpec]] = None,
        batch_first: bool = True,
        backend: str = "auto",
        skip: bool = False,
    ):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {cell!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.cell, self.batch_first, self.skip = cell, batch_first, bool(skip)
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.rnn = rnn_cls(
            input_size, hidden_size, num_layers=num_layers, batch_first=batch_first,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = MDNHead(
            hidden_size + (input_size if skip else 0), out_features, num_components, covariance=covariance, mixture=mixture,
            sigma_activation=sigma_activation, min_sigma=min_sigma, max_correlation=max_correlation,
            extra_heads=extra_heads, backend=backend,
        )

    def forward(self, x: Tensor, state=None):
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            layout = "(batch, time, input_size)" if self.batch_first else "(time, batch, input_size)"
            raise ValueError(f"x must have shape {layout} with input_size = {self.input_size}, got {tuple(x.shape)}")
        h, state = self.rnn(x, state)
        h = self.dropout(h)
        return self.head(torch.cat([h, x], -1) if self.skip else h), state

    def nll(
        self,
        x: Tensor,
        y: Tensor,
        mask: Optional[Tensor] = None,
        targets: Optional[Mapping[str, Tensor]] = None,
        state=None,
        reduction: str = "mean",
    ) -> Tensor:
        """Negative log-likelihood of the targets y (B, T, D) given the inputs x (B, T, in)
        (time-major without batch_first); mask (B, T) marks the real steps of padded
        sequences. Mean per kept step by default (see :meth:`MDNHead.loss`)."""
        out, _ = self(x, state)
        return self.head.loss(out, y, mask=mask, targets=targets, reduction=reduction)

    @torch.no_grad()
    def features(self, x: Tensor, state=None) -> Tensor:
        """The head's inputs for x: the last recurrent layer's outputs (dropout off), then x
        itself with ``skip=True``."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (batch, time, input_size) with input_size = {self.input_size} "
                             f"(time-major without batch_first), got {tuple(x.shape)}")
        was_training = self.training
        self.eval()  # no dropout between the recurrent layers
        try:
            h = self.rnn(x, state)[0]
            return torch.cat([h, x], -1) if self.skip else h
        finally:
            self.train(was_training)

    def init_from_targets(self, y, x: Optional[Tensor] = None, mask=None, **kwargs) -> dict:
        """:meth:`MDNHead.init_from_targets` for the recurrent network: y (B, T, D).

        With the inputs x (B, T, input_size) the head's features at initialisation are
        computed and the components' means follow the least-squares linear prediction of
        y from them, with the mixture fitted to the residuals (the ``h=`` form): what a
        sequence whose next step depends on the past needs (for a walk, the modes are
        those of the steps, not of the positions). Without x: the unconditional mixture of
        y. Keywords: those of :meth:`MDNHead.init_from_targets`.
        """
        h = None if x is None else self.features(x)
        return self.head.init_from_targets(y, h=h, mask=mask, **kwargs)

    def revive_dead_components(self, x: Tensor, y, mask=None, min_weight: float = 1e-3, optimizer=None) -> list:
        """:meth:`MDNHead.revive_dead_components` on the features of x (B, T, input_size)."""
        return self.head.revive_dead_components(self.features(x), y, mask=mask, min_weight=min_weight,
                                                optimizer=optimizer)

    @torch.no_grad()
    def generate(
        self,
        x0: Tensor,
        steps: int,
        temperature: float = 1.0,
        bias: float = 0.0,
        greedy: bool = False,
        state=None,
        next_input: Optional[Callable[[Tensor, Dict[str, Tensor]], Tensor]] = None,
    ) -> GeneratedSequence:
        """Samples ``steps`` outputs autoregressively.

        x0: the first input (B, input_size), or a priming sequence (B, T0, input_size)
            ((T0, B, input_size) without batch_first) whose last step predicts the first
            output.
        temperature, bias, greedy: see :meth:`MDNHead.sample`.
        next_input(y, extras) -> (B, input_size): builds the next input from a step's
            draw; by default the draw itself (y then the extra heads' values,
            :meth:`MDNHead.feedback`), which needs input_size = that size.
        """
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if x0.dim() == 2:
            x = x0.unsqueeze(1 if self.batch_first else 0)
        elif x0.dim() == 3:
            x = x0
        else:
            raise ValueError(f"x0 must be (batch, input_size) or a priming sequence, got shape {tuple(x0.shape)}")
        if next_input is None and self.head.feedback_size != self.input_size:
            raise ValueError(
                f"the default feedback (y and the extra heads' values) has {self.head.feedback_size} features but "
                f"input_size = {self.input_size}: pass next_input(y, extras) to build the next input"
            )
        t_dim = 1 if self.batch_first else 0
        ys, extras_seq = [], {name: [] for name in self.head.heads}
        was_training = self.training
        self.eval()
        try:
            for _ in range(steps):
                out, state = self(x, state)
                last = x.shape[t_dim] - 1
                step_out = MDNOutput(
                    _select_step(out.mixture, t_dim, last),
                    {k: v.select(t_dim, last) for k, v in out.extras.items()},
                )
                y, extras = self.head.sample(step_out, temperature=temperature, bias=bias, greedy=greedy)
                ys.append(y)
                for k, v in extras.items():
                    extras_seq[k].append(v)
                nxt = self.head.feedback(y, extras) if next_input is None else next_input(y, extras)
                if nxt.shape != (y.shape[0], self.input_size):
                    raise ValueError(
                        f"next_input must return shape {(y.shape[0], self.input_size)}, got {tuple(nxt.shape)}"
                    )
                x = nxt.unsqueeze(t_dim).to(x.dtype)
        finally:
            self.train(was_training)
        outputs = torch.stack(ys, dim=t_dim)
        return GeneratedSequence(outputs, {k: torch.stack(v, dim=t_dim) for k, v in extras_seq.items()}, state)


def _select_step(mix: GaussianMixture, t_dim: int, index: int) -> GaussianMixture:
    p = [None if t is None else t.select(t_dim, index) for t in (mix.logits, mix.means, mix.scale, mix.rho)]
    return GaussianMixture(*p, mix.covariance, mix.mixture, mix.backend, validate_args=False)
