"""A fitted mixture's log-densities, labels and samples on any kind of array: NumPy (the native
kernels), Dask (lazily, block by block where the blocks are) and torch tensors (the
``gmmfast::`` ops, on the tensor's device).

scikit-learn computes in the promoted dtype of X and the parameters: float32 data
under a float64 model are scored in float64, here too. The estimator's predict, score
and friends call these with its fitted arrays.
"""

from __future__ import annotations

import numpy as np

from . import _missing, ops
from ._params import log_weights
from ._validation import as_tensor, check_n_features, is_dask_array, is_tensor, to_numpy, torch_dtype


class Mixture:
    """The fitted arrays (NumPy or tensors) and settings that scoring needs.

    ``log_weights`` (float64 NumPy), when given, are the per-component terms added to
    the Gaussian log-densities instead of log(weights): the Bayesian mixture's expected
    log-weights and log-density constants, as scikit-learn's BayesianGaussianMixture
    scores. ``missing``: NaN entries are missing values (a model with missing='em'),
    scored by the marginal over each row's observed entries; otherwise the input was
    checked finite and is not scanned again."""

    def __init__(self, weights, means, precisions_cholesky, covariance_type, n_threads=None, log_weights=None,
                 missing=False):
        self.weights = weights
        self.missing = missing
        self.log_weights = log_weights
        self.means = means
        self.precisions_cholesky = precisions_cholesky
        self.covariance_type = covariance_type
        self.n_threads = n_threads

    @property
    def n_components(self) -> int:
        return int(self.weights.shape[0])


def _log_weights(mix: Mixture, device):
    import torch

    if mix.log_weights is not None:
        return as_tensor(np.asarray(mix.log_weights, dtype=np.float64), device)
    return torch.log(as_tensor(mix.weights, device).double())


def log_prob(mix: Mixture, X, output):
    """``ops.log_prob`` of validated X (see :func:`check_input`), in X's kind of array
    and on its device: output 'sample' (N,), 'log_resp' or 'weighted' (N, K)."""
    if is_dask_array(X):
        dt = np.result_type(X.dtype, to_numpy(mix.means).dtype)
        if output == "sample":
            return X.map_blocks(
                lambda b: log_prob(mix, np.asarray(b), output), drop_axis=1, dtype=dt, meta=np.empty((0,), dt)
            )
        return X.map_blocks(
            lambda b: log_prob(mix, np.asarray(b), output),
            chunks=(X.chunks[0], (mix.n_components,)),
            dtype=dt,
            meta=np.empty((0, 0), dt),
        )
    if is_tensor(X):
        import torch

        from . import torch as gt

        dt = torch.promote_types(X.dtype, torch_dtype(mix.means))

        def param(a):
            return as_tensor(a, X.device).to(dt)

        return gt.log_prob(
            X.to(dt),
            # log in float64, then rounded: as the NumPy path does
            _log_weights(mix, X.device).to(dt),
            param(mix.means),
            param(mix.precisions_cholesky),
            mix.covariance_type,
            output,
        )
    X, mixture = _numpy_mixture(mix, X)
    if mix.missing and _missing.has_missing(X):
        # the marginal over each row's observed entries
        index = _missing.missing_index(X, n_threads=mix.n_threads, check_columns=False)
        return _missing.log_prob(X, index, *mixture, mix.covariance_type, output, n_threads=mix.n_threads)
    return ops.log_prob(X, *mixture, mix.covariance_type, output, n_threads=mix.n_threads)


def _numpy_mixture(mix: Mixture, X):
    """X and (log-weights, means, precision Cholesky factors) in their promoted dtype."""
    means = to_numpy(mix.means)
    dt = np.result_type(X.dtype, means.dtype)
    if dt != X.dtype:
        X = X.astype(dt)
    lw = log_weights(to_numpy(mix.weights)) if mix.log_weights is None else mix.log_weights
    return X, (lw.astype(dt), means.astype(dt), to_numpy(mix.precisions_cholesky).astype(dt))


def impute(mix: Mixture, X) -> np.ndarray:
    """X (NumPy) with each NaN replaced by its conditional expectation under ``mix``."""
    X, mixture = _numpy_mixture(mix, np.asarray(X))
    if not _missing.has_missing(X):
        return X.copy()
    index = _missing.missing_index(X, n_threads=mix.n_threads, check_columns=False)
    return _missing.impute(X, index, *mixture, mix.covariance_type, n_threads=mix.n_threads)


def labels(mix: Mixture, X):
    """The most likely component of every row of validated X, in X's kind of array."""
    # argmax of the weighted log-densities, in row blocks so that memory stays
    # O(block · n_components) whatever n_samples
    block = max(1, (1 << 22) // max(mix.n_components, 1))
    if is_dask_array(X):  # lazily, block by block where the blocks are
        return X.map_blocks(
            lambda b: labels(mix, np.asarray(b)), drop_axis=1, dtype=np.int64, meta=np.empty((0,), np.int64)
        )
    if is_tensor(X):
        import torch

        return torch.cat(
            [
                torch.argmax(log_prob(mix, X[start : start + block], "weighted"), dim=1)
                for start in range(0, X.shape[0], block)
            ]
        )
    out = np.empty(X.shape[0], dtype=np.int64)
    for start in range(0, X.shape[0], block):
        w = log_prob(mix, X[start : start + block], "weighted")
        out[start : start + block] = np.argmax(w, axis=1)
    return out


def check_input(X, n_features):
    """A Dask array or a torch tensor to score, checked (shape, dtype; finite values on
    the tensor's device) and converted; None for anything else (NumPy input goes
    through the estimator's scikit-learn checks)."""
    if is_dask_array(X):
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got {X.ndim}D dask array instead.")
        check_n_features(X.shape[1], n_features)
        if not (X.dtype == np.float32 or X.dtype == np.float64):
            X = X.astype(np.float64)
        return X.rechunk({1: -1}) if X.numblocks[1] > 1 else X
    if not is_tensor(X):
        return None
    import torch

    if X.is_complex():
        raise ValueError("Complex data not supported")
    X = X.detach()
    if X.dtype not in (torch.float32, torch.float64):
        X = X.to(torch.float64)
    if X.dim() != 2:
        raise ValueError(f"Expected 2D tensor of shape (n_samples, n_features), got {X.dim()}D")
    if X.shape[0] < 1:
        raise ValueError(f"Found tensor with 0 sample(s) (shape={tuple(X.shape)}) while a minimum of 1 is required.")
    check_n_features(X.shape[1], n_features)
    if not bool(torch.isfinite(X).all()):
        raise ValueError("Input X contains NaN or infinity.")
    return X


def sample(mix: Mixture, covariances, n_samples: int, random_state):
    """``n_samples`` draws from the mixture and their components (scikit-learn's
    algorithm and random stream); tensors on the parameters' device when the mixture's
    arrays are tensors."""
    n_features = int(mix.means.shape[1])
    rng = random_state
    if isinstance(rng, np.random.Generator):
        rng = np.random.RandomState(int(rng.integers(2**31 - 1)))
    # scikit-learn's draws, number for number: the fitted arrays as they are (float32
    # stays float32, so np.sqrt rounds the same way) and the weights unnormalised;
    # only weights whose first K-1 sum past 1 (which NumPy rejects) are normalised
    weights, means, cov = (to_numpy(a) for a in (mix.weights, mix.means, covariances))
    pvals = weights
    if float(np.sum(pvals[:-1], dtype=np.float64)) > 1.0 + 1e-12:
        pvals = pvals.astype(np.float64) / np.sum(pvals, dtype=np.float64)
    counts = rng.multinomial(n_samples, pvals)
    if mix.covariance_type == "full":
        X = np.vstack([rng.multivariate_normal(m, c, int(s)) for m, c, s in zip(means, cov, counts)])
    elif mix.covariance_type == "tied":
        X = np.vstack([rng.multivariate_normal(m, cov, int(s)) for m, s in zip(means, counts)])
    else:
        X = np.vstack(
            [
                m + rng.standard_normal(size=(s, n_features)) * np.sqrt(c)
                for m, c, s in zip(means, cov, counts)
            ]
        )
    X = X.astype(np.float64, copy=False)
    y = np.concatenate([np.full(int(s), k, dtype=np.int64) for k, s in enumerate(counts)])
    if is_tensor(mix.means):  # fitted on tensors: tensors on the same device
        import torch

        device = mix.means.device
        return torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)
    return X, y
