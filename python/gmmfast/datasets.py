"""Small data sets shipped with gmmfast (for examples, the demo and tests).

- :func:`load_old_faithful`: the Old Faithful geyser eruptions (R's ``faithful``), the
  classic two-cluster example for Gaussian mixtures.
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np

__all__ = ["load_old_faithful"]


def _read_csv(name: str):
    """A CSV file of gmmfast/data: '#' comment lines, one header line, numbers."""
    text = resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    names = [n.strip() for n in lines[0].split(",")]
    X = np.loadtxt(io.StringIO("\n".join(lines[1:])), delimiter=",", dtype=np.float64, ndmin=2)
    return X, names


def load_old_faithful():
    """The Old Faithful geyser data: 272 eruptions, eruption duration and waiting time.

    Waiting time between eruptions and the duration of the eruption for the Old Faithful
    geyser in Yellowstone National Park, Wyoming, USA: R's ``datasets::faithful``
    (Härdle, W. (1991) *Smoothing Techniques with Implementation in S*, Springer;
    public domain). The two columns form two well-separated clusters (short eruptions
    followed by short waits, long by long), the textbook example for a two-component
    Gaussian mixture.

    Returns
    -------
    X : ndarray of shape (272, 2), float64
        Column 0: eruption duration in minutes (1.6 to 5.1); column 1: waiting time to
        the next eruption in minutes (43 to 96).
    feature_names : list of str
        ``["eruptions", "waiting"]``.

    Example
    -------
    >>> from gmmfast.datasets import load_old_faithful
    >>> X, names = load_old_faithful()
    >>> X.shape, names
    ((272, 2), ['eruptions', 'waiting'])
    """
    return _read_csv("old_faithful.csv")
