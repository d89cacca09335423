"""Other libraries' Gaussian mixtures ("peers"), timed beside gmmfast by the CPU harness.

Each peer is an optional dependency (the ``bench`` extra in pyproject.toml); a peer that
is not installed is skipped with a note, never an error. Every peer offers:

- ``unsupported(covariance_type, dtype)``: None, or why the case cannot run on it;
- ``em_fixed(X, init, n_iter, n_threads)`` -> :class:`FixedOutput`: ``n_iter`` EM
  iterations (E-step + M-step) with convergence checks switched off, from ``init``
  where the peer accepts starting parameters (``start`` says what it accepts);
- ``iteration(X, init, n_threads)`` -> a zero-argument callable running ONE EM
  iteration from ``init`` (the harness's per-iteration interface, impls.py), only for
  peers whose public API exposes one step (``has_iteration``).

What each peer can and cannot do here (see bench/README.md, "Peers"):

- mlpack (``mlpack.gmm_train``): full and diagonal covariances, float64 only (float32
  input is converted). Its trainer always starts from its own k-means (the binding
  passes useExistingModel=false even with ``input_model``), so it cannot take our
  starting parameters; its per-iteration time is the difference between runs of
  ``n_iter + 1`` and 1 EM iterations with the same seed (the same k-means).
- OpenCV (``cv2.ml.EM``, opencv-python-headless < 5: OpenCV 5 moved ``ml`` out of the
  main package): full ("generic"), diagonal and spherical; computes in float64 whatever
  the input; takes means, covariances and weights (``trainE``). No step API: its
  iteration time is the fixed-count run divided by the count.
- pomegranate 1.x (``GeneralMixtureModel`` of ``Normal``): full, diag and spherical
  ("sphere"), float32 and float64; takes every starting parameter, and
  ``summarize`` + ``from_summaries`` is one EM iteration. It adds no ``reg_covar``.
- torchgmm (``torchgmm.bayes.GaussianMixture``): all four covariance types; its
  estimator takes only initial means (weights and covariances come from an extra
  epoch of hard assignments to them) and trains through PyTorch Lightning. Its
  Lightning module's training step + epoch end is one EM iteration, which is timed
  from our exact starting parameters.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from cases import REG_COVAR


@dataclass
class FixedOutput:
    """A peer's parameters after a fixed number of EM iterations (float64, the
    scikit-learn shapes of the covariance type), or its own mean log-likelihood when
    the peer does not expose its parameters."""

    n_iter: int
    weights: Optional[np.ndarray] = None
    means: Optional[np.ndarray] = None
    covariances: Optional[np.ndarray] = None
    mean_log_likelihood: Optional[float] = None  # only when the parameters are not exposed


def _iteration_output(lower_bound, means, covariances):
    # impls.py imports this module lazily; the import stays inside the function so that
    # `import peers` never needs impls' imports (gmmfast) twice over
    from impls import IterationOutput

    return IterationOutput(float(lower_bound), np.asarray(means, np.float64),
                           np.asarray(covariances, np.float64))


def _add_reg(covariances: np.ndarray, covariance_type: str, reg: float) -> np.ndarray:
    """covariances + reg on the diagonal, for peers that add no reg_covar (so that their
    result compares with gmmfast's, which adds scikit-learn's 1e-6)."""
    c = np.array(covariances, dtype=np.float64)
    if covariance_type == "full":
        c[:, np.arange(c.shape[1]), np.arange(c.shape[1])] += reg
    elif covariance_type == "tied":
        c[np.arange(c.shape[0]), np.arange(c.shape[0])] += reg
    else:
        c += reg
    return c


class Peer:
    name = ""
    module = ""  # what to import
    pip = ""  # what to install
    covariance_types: dict = {}  # ours -> the peer's name for it
    dtypes = ("float32", "float64")
    has_iteration = False
    adds_reg_covar = True
    #: how the starting parameters reach the peer (the README and the JSON say it)
    start = "same"
    #: "end to end / n" or "difference" (see mlpack)
    per_iteration = "end to end / n"

    def missing(self) -> Optional[str]:
        """None when the peer can be imported, else the note the harness prints."""
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or a broken binary (OSError, ...)
            return (f"not installed ({type(exc).__name__}: {exc}); "
                    f"pip install '{self.pip}' or pip install '.[bench]'")
        return None

    def available(self) -> bool:
        return self.missing() is None

    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        dist = self.pip.split("<")[0].split(">")[0].split("=")[0]
        try:
            return version(dist)
        except PackageNotFoundError:
            return getattr(importlib.import_module(self.module), "__version__", "?")

    def unsupported(self, covariance_type: str, dtype: str) -> Optional[str]:
        if covariance_type not in self.covariance_types:
            return f"{self.name} has no {covariance_type} covariance"
        if dtype not in self.dtypes:
            return f"{self.name} has no {dtype} EM"
        return None


# --------------------------------------------------------------------------------------
# mlpack


class Mlpack(Peer):
    name = "mlpack"
    module = "mlpack"
    pip = "mlpack"
    covariance_types = {"full": "full", "diag": "diagonal"}
    start = "own k-means (cannot take starting parameters)"
    per_iteration = "difference"
    # float32 input runs too, converted to float64 by the binding; the case is then a
    # float64 EM on the same numbers, which the report says
    dtypes = ("float32", "float64")
    adds_reg_covar = False

    def em_fixed(self, X, init, n_iter, n_threads):
        import mlpack

        out = mlpack.gmm_train(
            input_=np.asarray(X, dtype=np.float64),
            gaussians=int(init.n_components),
            max_iterations=int(n_iter) + 1,  # mlpack counts its initial E-step as one
            tolerance=-1.0,  # |change| > -1 always: no convergence stop
            diagonal_covariance=init.covariance_type == "diag",
            seed=1,
            trials=1,
        )
        model = out["output_model"]
        p = mlpack.gmm_probability(input_=np.asarray(X, dtype=np.float64), input_model=model)
        with np.errstate(divide="ignore"):
            ll = float(np.mean(np.log(np.asarray(p["output"], dtype=np.float64))))
        return FixedOutput(n_iter, mean_log_likelihood=ll)


# --------------------------------------------------------------------------------------
# OpenCV


class OpenCV(Peer):
    name = "opencv"
    module = "cv2.ml"
    pip = "opencv-python-headless<5"
    covariance_types = {"full": "EM_COV_MAT_GENERIC", "diag": "EM_COV_MAT_DIAGONAL",
                        "spherical": "EM_COV_MAT_SPHERICAL"}
    adds_reg_covar = False

    def em_fixed(self, X, init, n_iter, n_threads):
        import cv2

        cv2.setNumThreads(int(n_threads))
        em = cv2.ml.EM_create()
        em.setClustersNumber(int(init.n_components))
        em.setCovarianceMatrixType(getattr(cv2.ml, self.covariance_types[init.covariance_type]))
        # COUNT = c runs c E-steps and c - 1 M-steps (checked against gmmfast's EM)
        em.setTermCriteria((cv2.TERM_CRITERIA_COUNT, int(n_iter) + 1, 0.0))
        k, d = init.n_components, init.means.shape[1]
        covs = np.ascontiguousarray(_full_covariances(init.covariances, init.covariance_type, k, d))
        # cv2.Mat keeps the (K, D, D) array three-dimensional (a bare ndarray would be
        # read as K x D with D channels): trainE wants a vector of D x D matrices
        em.trainE(np.asarray(X), init.means, cv2.Mat(covs), init.weights.reshape(1, -1))
        covs = np.asarray(em.getCovs(), dtype=np.float64)
        return FixedOutput(
            n_iter,
            weights=np.asarray(em.getWeights(), dtype=np.float64).ravel(),
            means=np.asarray(em.getMeans(), dtype=np.float64),
            covariances=_from_full(covs, init.covariance_type),
        )


def _full_covariances(cov, covariance_type, k, d):
    if covariance_type == "full":
        return np.asarray(cov, dtype=np.float64)
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in np.asarray(cov, dtype=np.float64)])
    if covariance_type == "spherical":
        return np.stack([np.eye(d) * c for c in np.asarray(cov, dtype=np.float64)])
    raise ValueError(f"covariance_type {covariance_type!r} has no per-component matrices")


def _from_full(covs, covariance_type):
    if covariance_type == "full":
        return covs
    diag = np.diagonal(covs, axis1=1, axis2=2)
    return diag.copy() if covariance_type == "diag" else diag.mean(axis=1)


# --------------------------------------------------------------------------------------
# pomegranate


class Pomegranate(Peer):
    name = "pomegranate"
    module = "pomegranate.gmm"
    pip = "pomegranate>=1,<2"
    covariance_types = {"full": "full", "diag": "diag", "spherical": "sphere"}
    has_iteration = True
    adds_reg_covar = False

    def _model(self, X, init, max_iter):
        import torch
        from pomegranate.distributions import Normal
        from pomegranate.gmm import GeneralMixtureModel

        dt = torch.float64 if X.dtype == np.float64 else torch.float32
        kind = self.covariance_types[init.covariance_type]
        d = init.means.shape[1]
        dists = []
        for k in range(init.n_components):
            cov = init.covariances[k]
            if kind == "sphere":  # pomegranate wants one variance per feature here
                cov = np.full(d, cov)
            dists.append(Normal(means=torch.tensor(init.means[k], dtype=dt),
                                covs=torch.tensor(cov, dtype=dt), covariance_type=kind))
        return GeneralMixtureModel(dists, priors=torch.tensor(init.weights, dtype=dt),
                                   max_iter=int(max_iter), tol=-np.inf)

    def _params(self, gm, covariance_type):
        means = np.array([d.means.detach().double().numpy() for d in gm.distributions])
        covs = [d.covs.detach().double().numpy() for d in gm.distributions]
        covs = np.array([np.mean(c) for c in covs]) if covariance_type == "spherical" else np.array(covs)
        return gm.priors.detach().double().numpy(), means, covs

    def iteration(self, X, init, n_threads):
        import torch

        torch.set_num_threads(int(n_threads))
        Xt = torch.from_numpy(np.asarray(X))
        cov_type = init.covariance_type

        start = self._model(X, init, 1)

        def run():
            gm = copy.deepcopy(start)  # from_summaries updates the parameters in place
            log_p = gm.summarize(Xt)
            gm.from_summaries()
            _, means, covs = self._params(gm, cov_type)
            # pomegranate adds no reg_covar: add gmmfast's to compare like with like
            return _iteration_output(float(log_p) / X.shape[0], means,
                                     _add_reg(covs, cov_type, REG_COVAR))

        return run

    def em_fixed(self, X, init, n_iter, n_threads):
        import torch

        torch.set_num_threads(int(n_threads))
        gm = self._model(X, init, n_iter)
        gm.fit(torch.from_numpy(np.asarray(X)))  # tol=-inf: exactly n_iter iterations
        w, means, covs = self._params(gm, init.covariance_type)
        return FixedOutput(n_iter, weights=w, means=means, covariances=covs)


# --------------------------------------------------------------------------------------
# torchgmm


class TorchGMM(Peer):
    name = "torchgmm"
    module = "torchgmm.bayes"
    pip = "torchgmm"
    covariance_types = {"full": "full", "tied": "tied", "diag": "diag", "spherical": "spherical"}
    has_iteration = True
    start = "means only (weights and covariances from one epoch of hard assignments)"

    def iteration(self, X, init, n_threads):
        """One pass of torchgmm's training loop without the Lightning Trainer around it:
        the module's training step on the whole data (one batch, as its estimator does
        when batch_size is None) and its epoch end (the M-step)."""
        import torch
        from torchgmm.bayes.gmm.lightning_module import GaussianMixtureLightningModule
        from torchgmm.bayes.gmm.model import GaussianMixtureModel, GaussianMixtureModelConfig

        torch.set_num_threads(int(n_threads))
        Xt = torch.from_numpy(np.asarray(X))
        k, d = init.n_components, init.means.shape[1]
        config = GaussianMixtureModelConfig(k, d, init.covariance_type)
        as_t = dict(dtype=Xt.dtype)

        model = GaussianMixtureModel(config).to(**as_t)
        module = GaussianMixtureLightningModule(
            model, convergence_tolerance=0.0, covariance_regularization=REG_COVAR
        ).to(**as_t)  # what Lightning's precision=64 does to the module
        start = [torch.as_tensor(a, **as_t) for a in
                 (init.weights, init.means, init.precisions_cholesky)]

        def run():
            with torch.no_grad():  # back to the start: the epoch end updates in place
                for buf, value in zip((model.component_probs, model.means,
                                       model.precisions_cholesky), start):
                    buf.copy_(value)
            module.metric_nll.reset()
            with warnings.catch_warnings():
                # self.log() without a Trainer: a warning, the NLL metric still updates
                warnings.simplefilter("ignore")
                module.on_train_epoch_start()
                module.nonparametric_training_step(Xt, 0)
                lower_bound = -float(module.metric_nll.compute())
                module.nonparametric_training_epoch_end()
            return _iteration_output(lower_bound, model.means.detach().numpy(),
                                     model.covariances.detach().numpy())

        return run

    def em_fixed(self, X, init, n_iter, n_threads):
        import logging

        import torch
        from torchgmm.bayes import GaussianMixture

        torch.set_num_threads(int(n_threads))
        Xt = torch.from_numpy(np.asarray(X))
        gm = GaussianMixture(
            int(init.n_components),
            covariance_type=init.covariance_type,
            init_means=torch.as_tensor(init.means, dtype=Xt.dtype),
            convergence_tolerance=0.0,  # no early stopping: exactly max_epochs iterations
            covariance_regularization=REG_COVAR,
            trainer_params=dict(
                max_epochs=int(n_iter), accelerator="cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=False,
                precision=64 if Xt.dtype == torch.float64 else 32,
            ),
        )
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(Xt)
        m = gm.model_
        return FixedOutput(
            int(gm.num_iter_),
            weights=m.component_probs.detach().double().numpy(),
            means=m.means.detach().double().numpy(),
            covariances=m.covariances.detach().double().numpy(),
        )


PEERS = {p.name: p for p in (Mlpack(), OpenCV(), Pomegranate(), TorchGMM())}
