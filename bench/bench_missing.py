#!/usr/bin/env python
"""Time per EM iteration with missing values (GaussianMixture(missing='em')) beside
today's complete-data iteration.

    python bench/bench_missing.py                  # N=100 000, D=16, K=8, full and diag
    python bench/bench_missing.py --quick          # N/10
    python bench/bench_missing.py --json bench/results/missing-cpu-2core.json

One iteration is what the EM driver runs per pass over in-memory data: the source's
statistics (``ops.em_stats`` for complete data; ``_missing.em_stats`` over the rows
grouped by pattern otherwise) and ``ops.finalize``. Cases per covariance type:

- today's iteration on the complete data (the baseline; timed in alternation with each
  case, so that both see the same load);
- ``0%``: missing='em' on the same data (no NaN: the same call, shown for completeness);
- ``5% random`` / ``30% random``: each entry missing with that probability, so most
  incomplete rows have their own pattern (the worst case of the cost model);
- ``5% few patterns`` / ``30% few patterns``: that fraction of the rows miss one of 4
  fixed sets of 4 coordinates (4 patterns, like a table with a few optional blocks).

The pattern index is built once per fit; its time is reported apart. Best of
``--repeat`` timings after one warm-up: the best is shown (the median is in the JSON),
because on a shared machine the other processes only ever add time. One thread by
default: on an oversubscribed 2-core VM, timings of 2-thread OpenMP regions swing by
several times between identical calls. Prints a markdown table; ``--json`` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gmmfast import _missing, ops  # noqa: E402

import machine  # noqa: E402


def _data(rng, N, D, K):
    centres = rng.normal(scale=4.0, size=(K, D))
    X = centres[rng.integers(0, K, N)] + rng.normal(size=(N, D))
    return X


def _random_missing(rng, X, frac):
    Xm = X.copy()
    Xm[rng.random(X.shape) < frac] = np.nan
    Xm[np.all(np.isnan(Xm), axis=1), 0] = 0.0
    return Xm


def _few_patterns(rng, X, frac, n_patterns=4, width=4):
    Xm = X.copy()
    D = X.shape[1]
    rows = np.flatnonzero(rng.random(X.shape[0]) < frac)
    which = rng.integers(0, n_patterns, rows.size)
    for p in range(n_patterns):
        cols = (np.arange(width) + p * width) % D
        r = rows[which == p]
        Xm[np.ix_(r, cols)] = np.nan
    return Xm


def _paired_times(base_fn, fn, repeat):
    """Best and median of ``repeat`` timings of ``fn`` and of ``base_fn``, taken in
    alternation (after a warm-up of each) so that both see the same machine load."""
    base_fn()
    fn()
    base, times = [], []
    for _ in range(repeat):
        for f, out in ((base_fn, base), (fn, times)):
            t0 = time.perf_counter()
            f()
            out.append(time.perf_counter() - t0)
    return (float(np.min(base)), float(np.median(base))), (float(np.min(times)), float(np.median(times)))


def run(N, D, K, repeat, threads, cov_types):
    rng = np.random.default_rng(0)
    X = _data(rng, N, D, K)
    cases = {
        "0%": X,
        "5% random": _random_missing(rng, X, 0.05),
        "30% random": _random_missing(rng, X, 0.30),
        "5% few patterns": _few_patterns(rng, X, 0.05),
        "30% few patterns": _few_patterns(rng, X, 0.30),
    }
    rows = []
    for t in cov_types:
        p = ops.initial_params(X, K, t, random_state=0)
        lw, mu, U = np.log(p.weights), p.means, p.precisions_cholesky

        def today(X=X):
            ops.finalize(ops.em_stats(X, lw, mu, U, t, n_threads=threads), 1e-6)

        for name, Xm in cases.items():
            t0 = time.perf_counter()
            index = _missing.missing_index(Xm, n_threads=threads)
            index_s = time.perf_counter() - t0
            if index.n_incomplete == 0:
                def step(Xm=Xm):
                    ops.finalize(ops.em_stats(Xm, lw, mu, U, t, n_threads=threads), 1e-6)
            else:
                def step(Xm=Xm, index=index):
                    ops.finalize(_missing.em_stats(Xm, index, lw, mu, U, t, n_threads=threads), 1e-6)
            (b, b_med), (s, s_med) = _paired_times(today, step, repeat)
            rows.append(dict(covariance_type=t, case=name, missing_entries=float(np.isnan(Xm).mean()),
                             incomplete_rows=index.n_incomplete, patterns=index.n_patterns,
                             complete_s=b, complete_median_s=b_med, iteration_s=s, iteration_median_s=s_med,
                             vs_complete=s / b, index_s=index_s))
            print(f"{t:>9} {name:<18} {s * 1e3:8.1f} ms vs {b * 1e3:8.1f} ms ({s / b:4.2f}x)", file=sys.stderr)
    return rows


def table(rows, N, D, K):
    out = [f"N = {N}, D = {D}, K = {K}; one EM iteration (statistics + M-step), best of the repeats", "",
           "| covariance | missing entries | incomplete rows | patterns | today, complete data | missing='em' "
           "| ratio | index (once) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(
            f"| {r['covariance_type']} | {r['case']} ({100 * r['missing_entries']:.1f}%) | {r['incomplete_rows']} | "
            f"{r['patterns']} | {1e3 * r['complete_s']:.1f} ms | {1e3 * r['iteration_s']:.1f} ms | "
            f"{r['vs_complete']:.2f}x | {1e3 * r['index_s']:.1f} ms |"
        )
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N/10")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads (default 1)")
    ap.add_argument("--cov", default="full,diag", help="covariance types, comma-separated")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    N = args.n // 10 if args.quick else args.n
    started = machine.summary(args.threads)
    rows = run(N, args.d, args.k, args.repeat, args.threads, [c for c in args.cov.split(",") if c])
    print(table(rows, N, args.d, args.k))
    if args.json:
        doc = dict(
            benchmark="bench/bench_missing.py", N=N, D=args.d, K=args.k, repeat=args.repeat,
            machine={**started, "uptime_after": machine.uptime()}, rows=rows,
        )
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
