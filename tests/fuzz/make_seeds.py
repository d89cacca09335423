"""Writes the seed corpus of fuzz_load.py: small valid model files of every covariance
type, float64 and float32, one with feature names (tests/fuzz/seeds/*.gmm).

    python tests/fuzz/make_seeds.py
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from gmmfast import GaussianMixture

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def main():
    os.makedirs(HERE, exist_ok=True)
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(size=(40, 2)), rng.normal(size=(40, 2)) + 4.0]
    for t in ("full", "tied", "diag", "spherical"):
        for dtype in (np.float64, np.float32):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = GaussianMixture(2, covariance_type=t, random_state=0, max_iter=20).fit(X.astype(dtype))
            gm.save(os.path.join(HERE, f"{t}-{np.dtype(dtype).name}.gmm"))
    try:
        import pandas as pd
    except ImportError:
        return
    gm = GaussianMixture(1, random_state=0).fit(pd.DataFrame(X, columns=["height", "weight"]))
    gm.save(os.path.join(HERE, "full-feature-names.gmm"))


if __name__ == "__main__":
    main()
