"""Runs the benchmark and returns every number as one JSON-able dict.

bench_em.py is the command line (it fixes thread counts before this module imports
NumPy); report.py turns the dict into markdown. Keeping measurement, presentation and
the CLI apart means a saved JSON can be re-rendered and the GPU benchmark can reuse
the measurement code.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import platform
import sys
import tempfile
import time

import numpy as np

import cases
import ceiling
import impls
import machine
import memprobe
import peer_runs

#: relative agreement required of every implementation's iteration with gmmfast's.
#: float64: the implementations differ only in summation order and in scikit-learn's
#: expanded forms (E[x²] − μ², XU − μU), ~1e-13 on this data; 1e-9 leaves room while
#: still catching any real error (a wrong formula is off by > 1e-4). float32:
#: scikit-learn and torch accumulate in float32 (gmmfast in float64), ~1e-5.
AGREEMENT_TOL = {"float64": 1e-9, "float32": 2e-4}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# machine


def machine_info(n_threads: int, thread_setup: dict, implementations: dict) -> dict:
    import gmmfast

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": machine.cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": n_threads,
        "thread_setup": thread_setup,
        # a busy machine makes every timing meaningless: record how busy it was
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            ("numpy" if name == "numpy-ref" else name): impl.version()
            for name, impl in implementations.items()
        },
        "gmmfast_build_info": gmmfast.build_info(),
        # the instruction set whose kernels ran (the dispatcher's choice on this CPU)
        "isa": gmmfast.build_info()["isa"],
        "uptime": machine.uptime(),
        "gmmfast_fit_api": impls.Gmmfast.fit_api(),
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gb"] = psutil.virtual_memory().total / 2**30
    except ImportError:
        pass
    try:
        import threadpoolctl

        info["versions"]["threadpoolctl"] = threadpoolctl.__version__
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------------------
# timing and checks


def best_of(fn, repeat: int):
    """(best seconds over ``repeat`` calls after one untimed warm-up, last result).

    The warm-up pays for thread-pool start-up and first-touch page faults, which are
    not what is being compared. The cyclic garbage collector is off while timing, as
    in timeit: none of the implementations makes reference cycles.
    """
    out = fn()
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
    finally:
        gc.enable()
    return best, out


def timed(fn, repeat: int = 1):
    """(every time of ``repeat`` calls, last result); no warm-up call (for complete
    fits, whose first run is timed like the others and is kept when fastest)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _rel(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def agreement(out: impls.IterationOutput, ref: impls.IterationOutput, dtype: str) -> dict:
    """How far an iteration's result is from gmmfast's, relative to the values' scale."""
    errors = {
        "lower_bound": abs(out.lower_bound - ref.lower_bound) / max(1.0, abs(ref.lower_bound)),
        "means": _rel(out.means, ref.means),
        "covariances": _rel(out.covariances, ref.covariances),
    }
    worst = max(errors.values())
    ok = bool(np.isfinite(worst) and worst <= AGREEMENT_TOL[dtype])
    return {"ok": ok, "max_rel_error": worst, "tolerance": AGREEMENT_TOL[dtype], **errors}


# --------------------------------------------------------------------------------------
# one case


def run_case(case: cases.Case, args, implementations: dict, matmul: dict, tmpdir: str,
             peers: dict | None = None) -> dict:
    """One case. ``peers``: the peers to run in the fixed-iteration comparison (None:
    none, not even gmmfast's row)."""
    n, d, k, cov_type = case.n_samples, case.n_features, case.n_components, case.covariance_type
    n_threads = args.threads
    log(f"== {case.name}: {case.shape_label}")
    started = time.perf_counter()
    X, centres = cases.make_data(case, args.seed)
    init = cases.starting_params(case, centres, args.seed)
    result = {
        "name": case.name,
        "label": case.shape_label,
        "case": dataclasses.asdict(case),
        "flops_per_iteration": case.flops_per_iteration,  # the convention, see cases.py
        "iteration": {},
        "fit": {},
    }

    # ---- one EM iteration, every implementation from the same parameters
    outputs = {}
    ref_gb = impls.reference_temp_bytes(n, d, k, case.dtype) / 1e9
    for name, impl in implementations.items():
        row = {}
        why = impl.unsupported(cov_type, case.dtype) if hasattr(impl, "unsupported") else None
        if name == "numpy-ref" and ref_gb > args.ref_memory_limit:
            row["skipped"] = f"memory: ~{ref_gb:.1f} GB of temporaries"
        elif why:
            row["skipped"] = why
        elif not getattr(impl, "has_iteration", True):
            row["skipped"] = "no one-iteration API: see the fixed-iteration table"
        else:
            try:
                seconds, outputs[name] = best_of(impl.iteration(X, init, n_threads), args.repeat)
            except Exception as exc:  # one broken library must not sink the others' numbers
                row["skipped"] = f"failed: {type(exc).__name__}: {exc}"
                result["iteration"][name] = row
                log(f"   iteration {name:10s} FAILED {exc!r}")
                continue
            gflops = case.flops_per_iteration / seconds / 1e9
            row.update(
                ms=seconds * 1e3,
                gflops=gflops,
                matmul_fraction=gflops / matmul[case.dtype]["gflops"],
            )
        result["iteration"][name] = row
        log(f"   iteration {name:10s} {_brief(row)}")
    gm_ms = result["iteration"]["gmmfast"].get("ms")
    for name, row in result["iteration"].items():
        if "ms" in row and gm_ms:
            row["gmmfast_speedup"] = row["ms"] / gm_ms
        if name != "gmmfast" and name in outputs and "gmmfast" in outputs:
            row["check"] = agreement(outputs[name], outputs["gmmfast"], case.dtype)
            if not row["check"]["ok"]:
                log(f"   WARNING: {name} disagrees with gmmfast: {row['check']}")

    # ---- em_stats against this machine's ceilings, with the flops it performs
    result["ceiling"] = ceiling.kernel_ceiling(case, X, init, n_threads, args.repeat)
    c = result["ceiling"]
    log(f"   em_stats {c['em_stats_ms']:.2f} ms, {c['gflops']:.1f} GFLOP/s performed = "
        f"{100 * c['gemm_fraction']:.0f}% of GEMM"
        + (f", {100 * c['fma_peak_fraction']:.0f}% of FMA peak" if "fma_peak_fraction" in c else ""))

    # ---- full fits
    fit_init = None
    if not args.no_fit:
        result["fit"], fit_init = _run_fits(case, X, args, implementations, result["iteration"])

    # ---- gmmfast and the peers: a fixed number of iterations
    result["fixed"] = {}
    if peers is not None:
        result["fixed"] = peer_runs.fixed_rows(case, X, init, args, peers, timed, log)

    # ---- peak memory, each measurement in a fresh process
    if not args.no_memory:
        path = os.path.join(tmpdir, f"{case.name}.npy")
        np.save(path, X)
        del X
        gc.collect()
        base = dict(
            data=path, init=init, n_components=k, covariance_type=cov_type, n_threads=n_threads
        )
        for name, row in result["iteration"].items():
            if "ms" in row:
                row["memory"] = _probe(dict(base, impl=name, op="iteration"))
                log(f"   iteration memory {name:10s} {_mb(row['memory'])}")
        for key, row in result["fit"].items():
            # the complete fits (the memory target) and torch's EM; the other
            # EM-only rows need what their library's fit needs, less k-means
            if "seconds" not in row or key not in ("gmmfast", "sklearn", "torch EM"):
                continue
            job = dict(base, impl=row["impl"], op=row["op"])
            if row["op"] == "em_from":
                job["init"] = fit_init
            row["memory"] = _probe(job)
            log(f"   fit memory {key:16s} {_mb(row['memory'])}")
        peer_runs.fixed_memory(result["fixed"], base, _probe, log)
        os.remove(path)
    result["elapsed_s"] = time.perf_counter() - started
    log(f"   ({result['elapsed_s']:.1f} s)")
    return result


def _run_fits(case, X, args, implementations, iteration):
    """Complete fits (own k-means start) and EM from gmmfast's k-means start.

    Returns (rows by name, that shared start)."""
    n_threads = args.threads
    k, cov_type = case.n_components, case.covariance_type
    fits = {}

    def record(key, impl_name, op, run):
        try:
            times, out = timed(run, args.fit_repeat)
        except Exception as exc:  # keep the other rows
            fits[key] = {"impl": impl_name, "op": op, "skipped": f"failed: {exc}"}
            log(f"   fit {key:16s} FAILED {exc!r}")
            return
        seconds = min(times)
        fits[key] = {
            "impl": impl_name,
            "op": op,
            "seconds": seconds,
            "seconds_all": times,
            "n_iter": out.n_iter,
            "lower_bound": out.lower_bound,
            "converged": out.converged,
        }
        log(f"   fit {key:16s} {seconds:8.2f} s  n_iter={out.n_iter:3d}  LL={out.lower_bound:.6f}")

    gm = implementations["gmmfast"]
    record("gmmfast", "gmmfast", "fit", lambda: gm.fit(X, k, cov_type, n_threads))
    fits["gmmfast"]["api"] = gm.fit_api()
    sk = implementations.get("sklearn")
    if sk is not None:
        record("sklearn", "sklearn", "fit", lambda: sk.fit(X, k, cov_type, n_threads))

    # The same start for the rest, so that their EM runs are directly comparable
    # (same iterations, same optimum); the k-means time is not part of these rows.
    init = impls.initial_params(X, k, cov_type, n_threads)
    record("gmmfast EM", "gmmfast", "em_from", lambda: gm.em_from(X, init, n_threads))
    gm_em = fits["gmmfast EM"]
    if sk is not None:
        record("sklearn EM", "sklearn", "em_from", lambda: sk.em_from(X, init, n_threads))
    if "torch" in implementations and not args.no_torch_fit:
        th = implementations["torch"]
        record("torch EM", "torch", "em_from", lambda: th.em_from(X, init, n_threads))
    ref_iter = iteration.get("numpy-ref", {})
    if "ms" in ref_iter and "n_iter" in gm_em:
        # same start and arithmetic as gmmfast's EM, so the same number of iterations
        estimate = gm_em["n_iter"] * ref_iter["ms"] / 1e3
        if estimate > args.ref_fit_budget:
            fits["numpy-ref EM"] = {
                "impl": "numpy-ref",
                "skipped": f"slow (~{estimate:.0f} s > --ref-fit-budget {args.ref_fit_budget:g})",
            }
            log(f"   fit numpy-ref EM skipped: ~{estimate:.0f} s")
        else:
            ref = implementations["numpy-ref"]
            record("numpy-ref EM", "numpy-ref", "em_from", lambda: ref.em_from(X, init, n_threads))
    elif "skipped" in iteration.get("numpy-ref", {}):
        fits["numpy-ref EM"] = {"impl": "numpy-ref", "skipped": iteration["numpy-ref"]["skipped"]}

    # speed-ups and log-likelihood differences against the rows with the same start
    for row in fits.values():
        if "seconds" not in row:
            continue
        own_start = row["op"] == "fit"
        gm_row = fits["gmmfast"] if own_start else gm_em
        if "seconds" in gm_row:
            row["gmmfast_speedup"] = row["seconds"] / gm_row["seconds"]
        sk_row = fits.get("sklearn" if own_start else "sklearn EM", {})
        if "lower_bound" in sk_row:
            row["ll_minus_sklearn"] = row["lower_bound"] - sk_row["lower_bound"]
    return fits, init


def _probe(job: dict) -> dict:
    report = memprobe.measure(job)
    if "error" in report:
        log(f"   memory probe failed for {job['impl']} {job['op']}: {report['error']}")
    return report


def _brief(row: dict) -> str:
    if "skipped" in row:
        return "skipped: " + row["skipped"]
    return f"{row['ms']:10.2f} ms  {row['gflops']:7.2f} GFLOP/s"


def _mb(report: dict) -> str:
    return report.get("error") or f"+{report['peak_growth_mb']:.1f} MB"


# --------------------------------------------------------------------------------------
# the em_stats memory-scaling row


def memory_scaling(args, implementations: dict, tmpdir: str) -> dict:
    """Peak memory of one iteration at two N: gmmfast's em_stats should not grow with N
    (it keeps responsibilities in a cache-sized tile), scikit-learn's iteration does
    (N × K responsibilities and N × D temporaries)."""
    divisor = 10 if args.quick else 1
    sizes = [n // divisor for n in cases.MEMORY_SCALING_N]
    out = {"sizes": sizes, **cases.MEMORY_SCALING, "rows": {}}
    ops_by_impl = {"gmmfast": "em_stats", "sklearn": "iteration", "torch": "iteration"}
    for n in sizes:
        case = cases.Case(f"memory{n}", dtype="float64", n_samples=n, **cases.MEMORY_SCALING)
        X, centres = cases.make_data(case, args.seed)
        init = cases.starting_params(case, centres, args.seed)
        path = os.path.join(tmpdir, f"{case.name}.npy")
        np.save(path, X)
        del X
        for name, op in ops_by_impl.items():
            if name not in implementations:
                continue
            report = _probe(
                dict(
                    impl=name, op=op, data=path, init=init, n_threads=args.threads,
                    n_components=case.n_components, covariance_type=case.covariance_type,
                )
            )
            out["rows"].setdefault(name, {"op": op, "by_n": {}})["by_n"][str(n)] = report
            log(f"   memory scaling N={n} {name:8s} {_mb(report)}")
        os.remove(path)
    return out


# --------------------------------------------------------------------------------------
# targets


def evaluate_targets(case_results: list) -> list:
    rows = []
    for res in case_results:
        case = cases.CASES[res["name"]]
        for target in cases.targets_for(case):
            rows.append(
                {"case": res["name"], "target": target.description, **_evaluate(target, res)}
            )
    return rows


def _evaluate(target: cases.Target, res: dict) -> dict:
    """PASS/FAIL of one target, with each condition's value marked ✓ or ✗."""

    def mark(ok: bool) -> str:
        return " ✓" if ok else " ✗"

    if target.kind == "iteration":
        gm, sk = res["iteration"]["gmmfast"], res["iteration"].get("sklearn", {})
        if "ms" not in sk or "ms" not in gm:
            return {"result": "n/a", "measured": "not measured"}
        speedup = sk["ms"] / gm["ms"]
        fast = speedup >= target.min_speedup
        agree = sk.get("check", {}).get("ok", False)
        measured = f"{speedup:.2f}x" + mark(fast) + ("" if agree else ", results disagree ✗")
        return {
            "result": "PASS" if fast and agree else "FAIL",
            "measured": measured,
            "speedup": speedup,
        }

    if target.kind == "peers":
        return _evaluate_peers(res)
    if target.kind == "ceiling":
        c = res.get("ceiling")
        if not c:
            return {"result": "n/a", "measured": "not measured"}
        ok = c["gemm_fraction"] >= target.min_speedup
        return {"result": "PASS" if ok else "FAIL", "fraction": c["gemm_fraction"],
                "measured": f"{100 * c['gemm_fraction']:.0f}% of GEMM" + mark(ok)}

    fits = res.get("fit", {})
    same_start = target.kind == "fit-same-start"
    gm = fits.get("gmmfast EM" if same_start else "gmmfast", {})
    sk = fits.get("sklearn EM" if same_start else "sklearn", {})
    if "seconds" not in gm or "seconds" not in sk:
        return {"result": "n/a", "measured": "fits not run"}
    speedup = sk["seconds"] / gm["seconds"]
    d_ll = gm["lower_bound"] - sk["lower_bound"]
    conditions = {
        f"{speedup:.2f}x": speedup >= target.min_speedup,
        f"ΔLL {d_ll:+.1e}": d_ll >= -cases.FIT_LL_ALLOWANCE,
    }
    out = {"speedup": speedup, "ll_difference": d_ll}
    if not same_start:
        gm_mem = gm.get("memory", {}).get("peak_growth_mb")
        sk_mem = sk.get("memory", {}).get("peak_growth_mb")
        out["memory_mb"] = [gm_mem, sk_mem]
        if gm_mem is not None and sk_mem is not None:
            conditions[f"mem {gm_mem:.1f} vs {sk_mem:.1f} MB"] = gm_mem < sk_mem
    passed = all(conditions.values())
    measured = ", ".join(text + mark(ok) for text, ok in conditions.items())
    if not same_start and out["memory_mb"].count(None):
        # a target cannot pass on a condition that was not measured
        measured += ", memory not measured"
        result = "FAIL" if not passed else "n/a"
    else:
        result = "PASS" if passed else "FAIL"
    return {"result": result, "measured": measured, **out}


def _evaluate_peers(res: dict) -> dict:
    """Every peer's time over gmmfast's, per iteration, in both tables where it ran
    (the one-iteration table and the fixed-iteration one); PASS when all are > 1."""
    from peers import PEERS

    ratios = {}
    for name, row in res.get("iteration", {}).items():
        if name in PEERS and "gmmfast_speedup" in row:
            ratios[f"{name} (1 it)"] = row["gmmfast_speedup"]
    for name, row in res.get("fixed", {}).items():
        if name in PEERS and "gmmfast_speedup_per_iteration" in row:
            ratios[f"{name} ({row['n_iter']} it)"] = row["gmmfast_speedup_per_iteration"]
    if not ratios:
        return {"result": "n/a", "measured": "no peer ran"}
    ok = all(r > 1.0 for r in ratios.values())
    measured = ", ".join(f"{k} {v:.2f}x" + (" ✓" if v > 1.0 else " ✗") for k, v in ratios.items())
    return {"result": "PASS" if ok else "FAIL", "measured": measured, "ratios": ratios}


# --------------------------------------------------------------------------------------
# entry point


def run(args) -> dict:
    implementations = impls.available_implementations()
    only = getattr(args, "only", None)
    if only:
        implementations = {name: impl for name, impl in implementations.items() if name in only}
    # import the optional libraries now so that their thread pools exist and get pinned
    for name in ("sklearn", "torch"):
        if name in implementations:
            implementations[name].version()
    peer_names = getattr(args, "peers", None)
    peers, peer_notes = (None, {}) if peer_names == [] else peer_runs.select(peer_names)
    for name, note in peer_notes.items():
        log(f"peer {name} skipped: {note}")
    if peers:
        for peer in peers.values():  # import them now, so that their pools get pinned
            peer.version()
        # the peers with a one-iteration API join the iteration table; the others get
        # a row there that points to the fixed-iteration table
        implementations = {**implementations, **peers}
    thread_setup = impls.limit_threads(args.threads)
    # the libraries' objects live until exit: keep the collector from walking them
    # (torch alone makes a full collection take ~0.2 s)
    gc.freeze()
    selected = [cases.CASES[name] for name in args.cases]
    if args.quick:
        selected = [c.scaled(cases.QUICK_FACTOR) for c in selected]

    info = machine_info(args.threads, thread_setup, implementations)
    load = f"{info['load_average'][0]:.2f}" if info["load_average"] else "?"
    log(f"machine: {info['cpu']}, {args.threads} threads, 1-min load {load}")
    matmul, peak = {}, {}
    for dtype in sorted({c.dtype for c in selected}):
        matmul[dtype] = ceiling.matmul_gflops(dtype, repeat=3 if args.quick else 5)
        peak[dtype] = ceiling.fma_peak(dtype, args.threads)
        log(f"NumPy matmul {dtype}: {matmul[dtype]['gflops']:.1f} GFLOP/s; FMA peak "
            f"({info['isa']}): {peak[dtype].get('gflops', float('nan')):.1f} GFLOP/s")

    if not args.no_memory:
        torch_based = ("torch", "pomegranate", "torchgmm")
        memprobe.start("sklearn" in implementations,
                       any(name in implementations for name in torch_based))
    with tempfile.TemporaryDirectory(prefix="gmmfast-bench-") as tmpdir:
        case_results = [
            run_case(case, args, implementations, matmul, tmpdir, peers)
            for case in selected
        ]
        scaling = None if args.no_memory else memory_scaling(args, implementations, tmpdir)

    info["uptime_end"] = machine.uptime()  # how busy the machine was at the end, too
    return {
        "settings": {
            "quick": args.quick,
            "repeat": args.repeat,
            "fit_repeat": args.fit_repeat,
            "threads": args.threads,
            "seed": args.seed,
            "cases": list(args.cases),
            "fits": not args.no_fit,
            "memory": not args.no_memory,
            "torch_fit": not args.no_torch_fit,
            "ref_fit_budget_s": args.ref_fit_budget,
            "ref_memory_limit_gb": args.ref_memory_limit,
            "tol": cases.TOL,
            "max_iter": cases.MAX_ITER,
            "reg_covar": cases.REG_COVAR,
            "flop_convention": "full/tied 4*N*K*D^2, diag/spherical 8*N*K*D per iteration",
            "agreement_tolerance": AGREEMENT_TOL,
            "peer_iters": getattr(args, "peer_iters", None),
            "peer_budget_s": getattr(args, "peer_budget", None),
            "peer_memory_iters": peer_runs.MEMORY_ITERS,
        },
        "machine": info,
        "matmul": matmul,
        "fma_peak": peak,
        "em_stats_flop_count": ceiling.FLOP_FORMULAS,
        "peers": {
            "run": list(peers or {}),
            "skipped": peer_notes,
            "start": {name: p.start for name, p in (peers or {}).items()},
            "per_iteration": {name: p.per_iteration for name, p in (peers or {}).items()},
        },
        "implementations": list(implementations),
        "cases": case_results,
        "em_stats_memory": scaling,
        "targets": evaluate_targets(case_results),
    }
