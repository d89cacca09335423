"""gmmfast.BayesianGaussianMixture against scikit-learn's, per iteration and end to end.

    python bench/bench_bayesian.py                       # full64 and diag64, 2 threads
    python bench/bench_bayesian.py --quick               # N/20, a smoke test
    python bench/bench_bayesian.py --json bench/results/bayesian-cpu-2core.json

The cases are the harness's (bench/cases.py: full64 is 100 000 x 32 with K=16, diag64 is
1 000 000 x 16 with K=32; the same data). Every measurement runs in a fresh child process
(bench/memprobe.py's method: the data loaded from a .npy file, a warm-up on a slice, the
kernel's peak-RSS counter reset, then the operation), so each reports its wall time and
the extra memory it needed:

- **fit**: ``fit(X)`` with the defaults (k-means init from random_state=0, tol=1e-3,
  max_iter=100), each library's own; the lower bounds and iteration counts are compared;
- **iteration**: from the fitted state of a (untimed) ``max_iter=1`` fit, ``warm_start``
  fits of m = ``--iterations`` and then 2m iterations with ``tol=0``; the difference of
  their times over m is one iteration (E-step, M-step, lower bound) without the fixed
  costs of a fit call.

Threads: ``--threads`` (default 2) for both: the thread variables are set before NumPy
is imported, threadpoolctl pins the BLAS/OpenMP pools, gmmfast gets ``n_threads``.
The JSON records the machine (CPU model, threads, ``uptime`` load before and after).
Ratios only: this script asserts nothing about time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="full64,diag64")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", type=int, default=5, help="m of the per-iteration measurement")
    p.add_argument("--quick", action="store_true", help="N divided by 20")
    p.add_argument("--json", default=None, metavar="PATH")
    return p.parse_args(argv)


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import warnings  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import machine  # noqa: E402
import memprobe  # noqa: E402

#: scikit-learn's BayesianGaussianMixture defaults, except the random_state
FIT_PARAMS = dict(random_state=0)


def _estimator(impl: str, case, n_threads: int, **kw):
    params = dict(n_components=case.n_components, covariance_type=case.covariance_type, **FIT_PARAMS, **kw)
    if impl == "gmmfast":
        from gmmfast import BayesianGaussianMixture

        return BayesianGaussianMixture(n_threads=n_threads, **params)
    from sklearn.mixture import BayesianGaussianMixture

    return BayesianGaussianMixture(**params)


def _summary(est) -> dict:
    lb = float(np.ravel(est.lower_bound_)[0])
    return {"n_iter": int(est.n_iter_), "converged": bool(est.converged_), "lower_bound": lb,
            "weights": np.sort(np.asarray(est.weights_, dtype=np.float64))[::-1].tolist()}


def child(job: dict, sender) -> None:
    """One measurement in a fresh process (see the module docstring)."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(job["threads"])
        X = np.load(job["data"])
        case = job["case"]
        impl, op, nt = job["impl"], job["op"], job["threads"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # warm-up on a slice: library start-up is not the operation's memory
            _estimator(impl, case, nt, max_iter=2).fit(X[: max(2000, 20 * case.n_components)])
            m = job["iterations"]
            if op == "iteration":
                est = _estimator(impl, case, nt, max_iter=1).fit(X)
                est.set_params(warm_start=True, max_iter=m, tol=0.0)
            else:
                est = _estimator(impl, case, nt)
            import gc

            gc.collect()
            baseline = memprobe._status_kb("VmRSS")
            exact = memprobe._reset_peak()
            t0 = time.perf_counter()
            est.fit(X)
            seconds = time.perf_counter() - t0
            report = {}
            if op == "iteration":
                # m more iterations, then 2m: the difference is m iterations without the
                # fixed costs of a fit call (the priors' pass, scikit-learn's final E-step)
                est.set_params(max_iter=2 * m)
                t0 = time.perf_counter()
                est.fit(X)
                report["seconds_per_iteration"] = (time.perf_counter() - t0 - seconds) / m
        peak = memprobe._status_kb("VmHWM") if exact else None
        report.update(seconds=seconds, peak_growth_mb=None if peak is None else (peak - baseline) / 1024.0,
                      **_summary(est))
        sender.send(report)
    except BaseException as exc:  # the parent must not hang
        sender.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        sender.close()


def measure(ctx, job: dict, timeout: float = 3600.0) -> dict:
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(job, sender), daemon=True)
    proc.start()
    sender.close()
    try:
        report = receiver.recv() if receiver.poll(timeout) else {"error": "timed out"}
    except EOFError:
        report = {"error": "child process died"}
    proc.join()
    return report


def main(args) -> dict:
    import multiprocessing as mp

    import gmmfast
    import sklearn

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "gmmfast", "sklearn.mixture", "cases", "memprobe", "bench_bayesian"])
    out = {
        "what": "gmmfast.BayesianGaussianMixture vs sklearn.mixture.BayesianGaussianMixture",
        "machine": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": machine.cpu_model(), "isa": machine.isa(), "logical_cores": os.cpu_count(), "threads": args.threads,
            "uptime_before": machine.uptime(), "gmmfast": gmmfast.__version__, "sklearn": sklearn.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
        },
        "settings": {"quick": args.quick, "iterations": args.iterations, "fit": {"random_state": 0,
                     "tol": 1e-3, "max_iter": 100, "init_params": "kmeans"}},
        "cases": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases.split(","):
            case = cases.CASES[name]
            if args.quick:
                case = case.scaled(cases.QUICK_FACTOR)
            X, _ = cases.make_data(case)
            path = os.path.join(tmp, f"{name}.npy")
            np.save(path, X)
            del X
            row = {"case": name, "shape": case.shape_label}
            for op in ("iteration", "fit"):
                for impl in ("gmmfast", "sklearn"):
                    job = dict(impl=impl, op=op, data=path, case=case, threads=args.threads,
                               iterations=args.iterations)
                    print(f"{name} {op} {impl} ...", file=sys.stderr, flush=True)
                    row[f"{op}_{impl}"] = measure(ctx, job)
                    print(f"  {row[f'{op}_{impl}']}", file=sys.stderr, flush=True)
            g, s = row["iteration_gmmfast"], row["iteration_sklearn"]
            if "error" not in g and "error" not in s:
                row["iteration_speedup"] = s["seconds_per_iteration"] / g["seconds_per_iteration"]
                row["iteration_memory_ratio"] = _ratio(s["peak_growth_mb"], g["peak_growth_mb"])
            g, s = row["fit_gmmfast"], row["fit_sklearn"]
            if "error" not in g and "error" not in s:
                row["fit_speedup"] = s["seconds"] / g["seconds"]
                row["fit_memory_ratio"] = _ratio(s["peak_growth_mb"], g["peak_growth_mb"])
                row["fit_lower_bound_rel_diff"] = abs(g["lower_bound"] - s["lower_bound"]) / abs(s["lower_bound"])
                row["fit_same_iterations"] = g["n_iter"] == s["n_iter"]
            out["cases"].append(row)
    out["machine"]["uptime_after"] = machine.uptime()
    return out


def _ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def table(result: dict) -> str:
    lines = [
        "| case | per iteration: sklearn / gmmfast (speed-up) | fit: sklearn / gmmfast (speed-up) | "
        "fit iterations | peak extra memory, fit: sklearn / gmmfast |",
        "|---|---|---|---|---|",
    ]
    for r in result["cases"]:
        ig, is_, fg, fs = r["iteration_gmmfast"], r["iteration_sklearn"], r["fit_gmmfast"], r["fit_sklearn"]
        if any("error" in x for x in (ig, is_, fg, fs)):
            lines.append(f"| {r['shape']} | error | error | | |")
            continue
        lines.append(
            f"| {r['shape']} | {is_['seconds_per_iteration'] * 1e3:.0f} ms / {ig['seconds_per_iteration'] * 1e3:.1f} ms "
            f"(**{r['iteration_speedup']:.1f}x**) | {fs['seconds']:.1f} s / {fg['seconds']:.2f} s "
            f"(**{r['fit_speedup']:.1f}x**) | {fs['n_iter']} / {fg['n_iter']} | "
            f"{fs['peak_growth_mb']:.0f} MB / {fg['peak_growth_mb']:.0f} MB |"
        )
    m = result["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['threads']} threads; {m['uptime_before']}")
    return "\n".join(lines)


if __name__ == "__main__":
    result = main(ARGS)
    print(table(result))
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(result, f, indent=2, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o))
        print(f"saved {ARGS.json}", file=sys.stderr)
