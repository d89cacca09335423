"""Files the ``gmmfast`` command reads and writes, and its user-error type.

Holds :class:`CLIError` (a user error: one line on stderr, exit status 1) and
``_one_line`` (how an exception becomes that line); reading a data matrix from a .npy
or delimited text file (``load_data``, with the delimiter and header guessing and the
'line N, column J' location of a malformed line); per-sample weight files; writing
label/probability arrays; and opening model files (``_load_model``, its metadata, the
feature-count check). It is the lowest of the ``gmmfast._cli_*`` modules: it imports none
of them, nor :mod:`gmmfast.cli`, which re-exports its public names.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional

import numpy as np


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 1."""


def _one_line(exc) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ------------------------------------------------------------------------- data files


def _split(line: str, delimiter: Optional[str]) -> list:
    return line.split(delimiter) if delimiter is not None else line.split()


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _guess_delimiter(line: str) -> Optional[str]:
    for d in (",", "\t", ";"):
        if d in line:
            return None if d == "\t" else d  # tabs: any whitespace
    return None


def load_data(path, *, delimiter: Optional[str] = None, skip_header: Optional[int] = None,
              what: str = "data", mmap: bool = False, missing: bool = False):
    """Read a data matrix from a .npy file or a delimited text file (CSV, TSV, spaces).

    With ``mmap`` a .npy file is memory-mapped (read-only), not read: the checks read it
    block by block, so a file larger than memory can be fitted.

    Text files: lines starting with '#' are comments; the delimiter is guessed from the
    first line (',' then tab then ';', else whitespace) unless given; a first line that
    is not numeric is taken as a header of column names unless ``skip_header`` (a number
    of lines to skip) is given.

    With ``missing`` (``--missing em``), empty cells of a text file and NaN entries are
    missing values (NaN); an infinity is still an error.

    Returns ``(X, names)``: a 2-D array (a single column for 1-D input) and the header's
    column names (None without a header). Raises CLIError with a one-line message.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory, expected a {what} file")
    ext = os.path.splitext(path)[1].lower()
    names = None
    if ext == ".npy":
        try:
            X = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError) as exc:
            raise CLIError(f"{path}: not a readable .npy array ({_one_line(exc)})") from exc
    elif ext == ".npz":
        raise CLIError(
            f"{path}: is an .npz archive; {what} must be a .npy array or a CSV/text file"
        )
    else:
        X, names = _load_text(path, delimiter, skip_header, missing)
    if X.dtype.kind not in "fiub":
        raise CLIError(f"{path}: {what} must be numeric, got an array of dtype {X.dtype}")
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2:
        raise CLIError(
            f"{path}: {what} must be a 2-D array (samples x features), got shape {X.shape}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CLIError(f"{path}: no {what} (shape {X.shape})")
    if X.dtype.kind == "f":
        from . import _core

        native = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        # block by block: a memory-mapped file that needs converting is never copied whole
        block = max(1, (1 << 22) // max(1, X.shape[1])) if isinstance(X, np.memmap) else X.shape[0]
        for start in range(0, X.shape[0], block):
            part = np.ascontiguousarray(X[start : start + block], dtype=native)
            if missing:
                bad = np.flatnonzero(np.isinf(part).any(axis=1))
                if bad.size:
                    raise CLIError(f"{path}: data row {start + bad[0] + 1} contains infinity")
                continue
            row = _core.first_nonfinite_row(part)
            if row >= 0:
                raise CLIError(
                    f"{path}: data row {start + row + 1} contains NaN or infinity "
                    "(missing values: pass --missing em to fit them by EM, or remove them)"
                )
    return X, names


def _cell(field: str) -> float:
    """A text cell as a number; an empty one is a missing value (NaN)."""
    field = field.strip().strip("\"'")
    return float(field) if field else np.nan


def _load_text(path, delimiter, skip_header, missing=False):
    first, first_index = None, 0
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for first_index, line in enumerate(fh):
                if line.strip() and not line.lstrip().startswith("#"):
                    first = line.strip()
                    break
    except OSError as exc:
        raise CLIError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if first is None:
        raise CLIError(f"{path}: no data (the file is empty or only comments)")
    if "\x00" in first:
        raise CLIError(f"{path}: looks like a binary file; data must be .npy or text (CSV)")
    if delimiter is None:
        delimiter = _guess_delimiter(first)
    names = None
    if skip_header is None:
        fields = _split(first, delimiter)
        skiprows = first_index
        if not all(_is_number(f) for f in fields):
            names = [f.strip().strip("\"'") for f in fields]
            skiprows = first_index + 1
    else:
        skiprows = skip_header
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": checked below
            X = np.loadtxt(
                path, delimiter=delimiter, skiprows=skiprows, comments="#", ndmin=2,
                dtype=np.float64, encoding="utf-8", **({"converters": _cell} if missing else {}),
            )
    except ValueError as exc:
        where = _locate_bad_line(path, delimiter, skiprows) or _one_line(exc)
        raise CLIError(f"{path}: {where}") from exc
    except UnicodeDecodeError as exc:
        raise CLIError(f"{path}: not a UTF-8 text file; data must be .npy or text (CSV)") from exc
    if X.size == 0:
        raise CLIError(f"{path}: no data rows")
    if names is not None and len(names) != X.shape[1]:
        names = None
    return X, names


def _locate_bad_line(path, delimiter, skiprows) -> Optional[str]:
    """'line N: ...' for the first malformed line (only run when parsing failed)."""
    n_cols = None
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno <= skiprows:
                continue
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            fields = [f.strip() for f in _split(text, delimiter)]
            for j, f in enumerate(fields, start=1):
                if not _is_number(f):
                    shown = f if f else "an empty field"
                    return f"line {lineno}, column {j}: {shown!r} is not a number" if f else (
                        f"line {lineno}, column {j}: {shown} (a missing value: pass --missing em "
                        "to fit such data by EM)"
                    )
            if n_cols is None:
                n_cols = len(fields)
            elif len(fields) != n_cols:
                return f"line {lineno} has {len(fields)} columns, the lines before it have {n_cols}"
    return None


def _load_weights(path, n_samples, args) -> np.ndarray:
    w, _ = load_data(path, delimiter=args.delimiter, what="weights")
    if w.shape[1] != 1:
        raise CLIError(f"{path}: weights must be a single column, got {w.shape[1]} columns")
    w = w[:, 0]
    if w.shape[0] != n_samples:
        raise CLIError(f"{path}: {w.shape[0]} weights for {n_samples} samples")
    return w


def _write_array(path, arr, fmt):
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            np.save(path, arr)
        else:
            delimiter = {".csv": ",", ".tsv": "\t"}.get(ext, " ")
            np.savetxt(path, arr, fmt=fmt, delimiter=delimiter)
    except OSError as exc:
        raise CLIError(f"{path}: cannot write ({exc.strerror or exc})") from exc


# --------------------------------------------------------------------------- model files


def _load_model(path):
    from .mixture import load as load_model

    path = os.fspath(path)
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory, expected a model file (.npz)")
    return load_model(path)


def _model_metadata(path) -> dict:
    """The JSON metadata of a model file (already validated by load_model)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive["metadata"]))
    except Exception:  # informative only
        return {}


def _check_features(model, X, data_path, model_path):
    D = int(model.n_features_in_)
    if X.shape[1] != D:
        raise CLIError(
            f"{data_path}: has {X.shape[1]} feature column(s), but the model {model_path} "
            f"was fitted on {D}"
        )
