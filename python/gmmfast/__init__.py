"""gmmfast: fast, exact Gaussian mixture models.

- :class:`gmmfast.GaussianMixture`: scikit-learn's GaussianMixture, many times faster;
- :class:`gmmfast.BayesianGaussianMixture`: scikit-learn's variational Bayesian mixture
  on the same kernels; :func:`gmmfast.load` reads models written by ``save`` of either;
- :mod:`gmmfast.ops`: native primitives (log_prob, em_stats, finalize, em, k-means)
  for NumPy arrays;
- :mod:`gmmfast.reference`: the same operations in readable NumPy (the test oracle).
"""

from . import _core
from ._compat import ConvergenceWarning, NotFittedError
from ._types import EMResult, EMStats, MixtureParams
from .bayesian import BayesianGaussianMixture
from .io import ModelFileError
from .mixture import GaussianMixture, load
from .selection import ModelSelection, select_model

__version__ = _core.__version__

__all__ = [
    "GaussianMixture",
    "BayesianGaussianMixture",
    "select_model",
    "ModelSelection",
    "load",
    "ModelFileError",
    "ConvergenceWarning",
    "NotFittedError",
    "build_info",
    "cuda_available",
    "EMStats",
    "MixtureParams",
    "EMResult",
    "__version__",
]


def cuda_available() -> bool:
    """True when the CUDA kernels were compiled and a CUDA device can be used.

    Never raises: False when gmmfast was built without CUDA, no driver is installed or
    no device is present.
    """
    try:
        from . import _cuda  # noqa: F401
    except ImportError:
        return False
    try:
        return _cuda.device_count() > 0
    except Exception:
        return False


def build_info() -> dict:
    """How this gmmfast was built and what it runs on.

    Keys: version, compiler, openmp (the _OPENMP date or None), max_threads (the OpenMP
    default), isa (the SIMD variant in use; override with GMMFAST_ISA), compiled_isas,
    build_type, cuda_compiled, cuda_available.
    """
    info = dict(_core.build_info())
    try:
        from . import _cuda  # noqa: F401

        info["cuda_compiled"] = True
    except ImportError:
        info["cuda_compiled"] = False
    info["cuda_available"] = cuda_available()
    return info
