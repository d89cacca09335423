"""The peers' part of a case: a fixed number of EM iterations for gmmfast and every peer
(time, time per iteration, final mean log-likelihood, peak memory), and the choice of
peers. harness.py calls it; peers.py holds the libraries behind one interface.
"""

from __future__ import annotations

import numpy as np

import gmmfast.ops as ops

import impls
import peers as peer_lib


def select(names) -> tuple:
    """(peers to run by name, notes for the ones skipped), for ``--peers``.

    ``names``: None (every known peer) or a list of names (may be empty). A peer that
    cannot be imported is skipped with its note, never an error.
    """
    wanted = list(peer_lib.PEERS) if names is None else list(names)
    unknown = [n for n in wanted if n not in peer_lib.PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(peer_lib.PEERS)}")
    chosen, notes = {}, {}
    for name in wanted:
        peer = peer_lib.PEERS[name]
        why = peer.missing()
        if why is None:
            chosen[name] = peer
        else:
            notes[name] = why
    return chosen, notes


def mean_log_likelihood(X64: np.ndarray, covariance_type: str, out: peer_lib.FixedOutput,
                        n_threads: int) -> float:
    """The final mean log-likelihood of a run's parameters, computed the same way for
    every implementation (gmmfast's E-step in float64); a peer that does not expose its
    parameters (mlpack) reports its own."""
    if out.means is None:
        return float(out.mean_log_likelihood)
    prec, _ = ops.precision_cholesky(out.covariances, covariance_type,
                                     n_features=out.means.shape[1])
    with np.errstate(divide="ignore"):
        log_w = np.log(np.asarray(out.weights, dtype=np.float64))
    stats = ops.em_stats(X64, log_w, out.means, prec, covariance_type, n_threads=n_threads)
    return float(stats.mean_log_likelihood)


def fixed_rows(case, X, init, args, chosen: dict, timed, log) -> dict:
    """gmmfast and every chosen peer: ``args.peer_iters`` EM iterations from ``init``
    (where the peer takes it), convergence checks off. ``timed(fn, repeat)`` is the
    harness's timer (every time, last result)."""
    n_iter, n_threads = args.peer_iters, args.threads
    X64 = np.asarray(X, dtype=np.float64)
    runners = {"gmmfast": impls.IMPLEMENTATIONS["gmmfast"], **chosen}
    rows = {}
    for name, impl in runners.items():
        start = getattr(impl, "start", "same")
        row = {"start": start, "n_iter": n_iter}
        why = impl.unsupported(case.covariance_type, case.dtype) if name != "gmmfast" else None
        if why:
            rows[name] = {"skipped": why}
            log(f"   fixed {name:12s} skipped: {why}")
            continue
        try:
            # one iteration first: mlpack's baseline, everyone's cost estimate
            one, _ = timed(lambda: impl.em_fixed(X, init, 1, n_threads), 1)
            m, repeat = n_iter, args.fit_repeat
            if name != "gmmfast" and one[0] * n_iter * repeat > args.peer_budget:
                repeat = 1
                if one[0] * n_iter > args.peer_budget:
                    m = max(2, int(args.peer_budget // one[0]))
                    row["reduced"] = (f"{m} iterations instead of {n_iter}: a 1-iteration run "
                                      f"took {one[0]:.1f} s (--peer-budget {args.peer_budget:g} s)")
            row["n_iter"] = m
            times, out = timed(lambda: impl.em_fixed(X, init, m, n_threads), repeat)
            row.update(seconds=min(times), seconds_all=times)
            if getattr(impl, "per_iteration", "") == "difference":
                # the same seed, hence the same k-means, with one EM iteration
                if repeat > 1:
                    more, _ = timed(lambda: impl.em_fixed(X, init, 1, n_threads), repeat - 1)
                    one += more
                row["seconds_one_iteration_run"] = min(one)
                per = (row["seconds"] - min(one)) / (m - 1)
                row["per_iteration_method"] = (
                    f"(time of {m} iterations - time of 1) / {m - 1}, same k-means")
                if per <= 0:  # the machine's noise exceeded the EM time: no estimate
                    row["per_iteration_method"] += ": not measurable in this run (<= 0)"
                    per = None
            else:
                per = row["seconds"] / m
                row["per_iteration_method"] = f"time of {m} iterations / {m}"
            row["seconds_per_iteration"] = per
            row["final_mean_ll"] = mean_log_likelihood(X64, case.covariance_type, out, n_threads)
            row["iterations_run"] = out.n_iter
        except Exception as exc:  # one broken library must not sink the others' numbers
            rows[name] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
            log(f"   fixed {name:12s} FAILED {exc!r}")
            continue
        rows[name] = row
        per_text = "       n/a" if per is None else f"{1e3 * per:10.2f}"
        log(f"   fixed {name:12s} {row['seconds']:8.3f} s {per_text} ms/it  "
            f"LL={row['final_mean_ll']:.6f}")
    gm = rows.get("gmmfast", {})
    for name, row in rows.items():
        if "seconds" in row and "seconds" in gm:
            row["gmmfast_speedup"] = row["seconds"] / gm["seconds"]
            if row["seconds_per_iteration"] is not None:
                row["gmmfast_speedup_per_iteration"] = (
                    row["seconds_per_iteration"] / gm["seconds_per_iteration"])
            if row["n_iter"] == gm["n_iter"]:  # comparable only after as many iterations
                row["ll_minus_gmmfast"] = row["final_mean_ll"] - gm["final_mean_ll"]
    return rows


#: iterations of the memory probe's run: EM holds nothing from one iteration to the
#: next that grows, so the peak of two iterations is the peak of any number (and the
#: slow peers' probes stay short)
MEMORY_ITERS = 2


def fixed_memory(rows: dict, base: dict, probe, log) -> None:
    """Peak extra memory of a MEMORY_ITERS-iteration run of each row, each in a fresh
    process."""
    for name, row in rows.items():
        if "seconds" not in row:
            continue
        row["memory_n_iter"] = MEMORY_ITERS
        row["memory"] = probe(dict(base, impl=name, op="em_fixed", n_iter=MEMORY_ITERS))
        mem = row["memory"]
        log(f"   fixed memory {name:12s} "
            + (mem.get("error") or f"+{mem['peak_growth_mb']:.1f} MB"))
