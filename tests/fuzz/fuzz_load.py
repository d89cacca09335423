"""Coverage-guided fuzzing of the model-file loader, gmmfast.load (atheris: libFuzzer
for Python; issue 8).

Property: for any bytes, ``gmmfast.load`` either returns a valid fitted model (finite
parameters that score data) or raises ModelFileError (ModelFileTooLarge included);
anything else (another exception, a crash, a hang, runaway memory) is a finding.

Run (the corpus directory collects the inputs that reach new code):

    python tests/fuzz/fuzz_load.py tests/fuzz/corpus -max_total_time=300 -rss_limit_mb=2048
    python tests/fuzz/fuzz_load.py -runs=5000 tests/fuzz/corpus     # bounded (CI: test_fuzz_load.py)
    python tests/fuzz/fuzz_load.py crash-<hash>                      # replay a finding

Mutations: the seed corpus holds valid model files of every covariance type; half of the
mutations rewrite one archive member (the metadata JSON text, or an array's .npy header
and data) and re-zip it with valid CRCs, so that the fuzzer reaches the checks behind
the zip layer; the other half are libFuzzer's byte-level mutations of the whole file
(zip parsing, truncation, corruption).
"""

from __future__ import annotations

import io
import os
import random
import sys
import tempfile
import zipfile

import atheris

with atheris.instrument_imports(include=["gmmfast.io", "zipfile", "json", "numpy.lib._format_impl",
                                         "numpy.lib._npyio_impl"]):
    import numpy as np

    import gmmfast
    from gmmfast.io import ModelFileError

_PATH = os.path.join(tempfile.mkdtemp(prefix="gmmfast-fuzz-"), "model.gmm")


def check_model(model):
    assert isinstance(model, gmmfast.GaussianMixture), type(model)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert np.all(np.isfinite(getattr(model, name))), name
    # at each component's mean its density is finite whatever the other components
    # (scoring far-away points such as 0 may legitimately overflow float32)
    assert np.all(np.isfinite(model.score_samples(model.means_)))


def TestOneInput(data: bytes) -> None:
    with open(_PATH, "wb") as fh:
        fh.write(data)
    try:
        model = gmmfast.load(_PATH)
    except ModelFileError:
        return
    check_model(model)


def _members(data: bytes):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return [(info.filename, z.read(info.filename)) for info in z.infolist()]
    except Exception:
        return None


def _zip(members) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, payload in members:
            z.writestr(name, payload)
    return out.getvalue()


def _mutate_metadata(payload: bytes, max_size: int) -> bytes:
    """The metadata .npy (a 0-d unicode string) with its JSON text mutated."""
    try:
        text = str(np.load(io.BytesIO(payload), allow_pickle=False))
    except Exception:
        return atheris.Mutate(payload, max_size)
    raw = atheris.Mutate(text.encode("utf-8", "surrogatepass"), max(len(text) * 2, 64))
    buf = io.BytesIO()
    np.save(buf, np.array(raw.decode("utf-8", "replace")))
    return buf.getvalue()


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    members = _members(data)
    if members and rng.random() < 0.5:
        i = rng.randrange(len(members))
        name, payload = members[i]
        if name == "metadata.npy" and rng.random() < 0.8:
            payload = _mutate_metadata(payload, max_size)
        else:
            payload = atheris.Mutate(payload, max(len(payload) * 2, 64))
        members[i] = (name, payload)
        if rng.random() < 0.05:  # drop or duplicate a member
            members.pop(rng.randrange(len(members))) if rng.random() < 0.5 else members.append(members[0])
        out = _zip(members)
        if len(out) <= max_size:
            return out
    return atheris.Mutate(data, max_size)


def main(argv=None):
    atheris.Setup(list(sys.argv if argv is None else argv), TestOneInput, custom_mutator=CustomMutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
