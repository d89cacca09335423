#!/usr/bin/env python
"""Beyond one array in memory: mini-batch vs full-batch EM on data generated on the fly,
and a Dask cluster vs the in-memory fit.

    python bench/bench_scale.py                        # N = 10 000 000, the whole run
    python bench/bench_scale.py --quick                # N / 20, a smoke test
    python bench/bench_scale.py --threads 1 --json bench/results/scale-$(hostname).json

1. **Mini-batch vs full batch** (issue 7): N rows (default 10 000 000) of a K=8
   component, D=4, full-covariance mixture are generated chunk by chunk (chunk i from
   its own seed, ``default_rng([seed, i])``), never held in memory. Full-batch EM is
   ``GaussianMixture.fit_chunks`` over that generator (exact EM, one pass per
   iteration, k-means on a reservoir sample of 100 000 rows); mini-batch EM is
   ``GaussianMixture.fit_minibatch`` over the same generator (stepwise EM, batches of
   ``--batch`` rows, k-means on the first batch), for 1 and 2 epochs. The time of a fit
   includes generating the data it reads. Every model is then scored exactly on all N
   rows (one more generated pass, untimed): the table shows each one's mean
   log-likelihood and its difference from the full-batch model's. The full-batch row
   also gives the time at which its lower bound first came within 1e-2 of its final
   value.
2. **Dask**: a 2-worker ``dask.distributed.LocalCluster`` (processes, one thread each,
   loopback) vs the in-memory fit of the same array, from the same initial mixture;
   time per EM iteration and the bytes the workers send per iteration (measured:
   ``Worker.transfer_outgoing_bytes_total``; expected: the statistics of each block),
   against the bytes of the data.
3. **Out-of-core**: the same array fitted in memory, memory-mapped (``np.load(...,
   mmap_mode="r")``) and streamed with ``fit_chunks(row_chunks(...))``.

Prints markdown tables on stdout and progress on stderr; ``--json`` saves every number
with the machine's description and load. On a shared machine the timings are noisy:
the load average at the start and the end is recorded.
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
import warnings


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000_000, help="rows of the generated data (default 1e7)")
    p.add_argument("--chunk", type=int, default=100_000, help="rows per generated chunk (default 1e5)")
    p.add_argument("--batch", type=int, default=10_000, help="mini-batch size (default 1e4)")
    p.add_argument("--epochs", default="1,2", help="mini-batch epochs to run, comma-separated (default 1,2)")
    p.add_argument("--dask-n", type=int, default=2_000_000, help="rows of the Dask / out-of-core data (default 2e6)")
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: all usable cores)")
    p.add_argument("--quick", action="store_true", help="divide every N by 20")
    p.add_argument("--no-minibatch", action="store_true")
    p.add_argument("--no-dask", action="store_true")
    p.add_argument("--no-ooc", action="store_true", help="skip the out-of-core table")
    p.add_argument("--json", metavar="PATH", help="also write every number and machine info here")
    args = p.parse_args(argv)
    if args.quick:
        args.n //= 20
        args.dask_n //= 20
    return args


# ----------------------------------------------------------------------------- the data


class Mixture:
    """The generating mixture: K components in D dimensions, full covariances, unequal
    weights, neighbours that overlap (EM has work to do)."""

    def __init__(self, K=8, D=4, seed=12345):
        import numpy as np

        rng = np.random.default_rng(seed)
        self.K, self.D = K, D
        self.means = rng.normal(scale=2.5, size=(K, D))
        self.chol = np.array(
            [np.linalg.cholesky(np.cov(rng.normal(size=(D, 3 * D))) * rng.uniform(0.5, 1.5)) for _ in range(K)]
        )
        self.weights = rng.dirichlet(np.full(K, 3.0))

    def chunk(self, seed, i, n):
        """Chunk i: its own generator, so any chunk can be regenerated alone."""
        import numpy as np

        rng = np.random.default_rng([seed, i])
        z = rng.choice(self.K, size=n, p=self.weights)
        Z = rng.standard_normal((n, self.D))
        X = np.empty((n, self.D))
        for k in range(self.K):
            m = z == k
            X[m] = Z[m] @ self.chol[k].T + self.means[k]
        return X

    def chunks(self, n_total, chunk_rows, seed=777):
        """A zero-argument function returning a new generator of the chunks."""

        def gen():
            for i, start in enumerate(range(0, n_total, chunk_rows)):
                yield self.chunk(seed, i, min(chunk_rows, n_total - start))

        return gen


# ----------------------------------------------------------------------- 1. mini-batch


def bench_minibatch(args, threads):
    import numpy as np

    from gmmfast import GaussianMixture

    mix = Mixture()
    chunks = mix.chunks(args.n, args.chunk)
    K = mix.K
    log(f"[minibatch] N={args.n:,} D={mix.D} K={K}, chunks of {args.chunk:,} rows, generated on the fly")

    class Timed(GaussianMixture):
        """records (seconds since the start, lower bound) after every EM iteration"""

        def _on_iteration(self, n_iter, lower_bound, change):
            self._last_lb = lower_bound
            super()._on_iteration(n_iter, lower_bound, change)

        def _verbose_iter_end(self, n_iter, diff_ll, *a, **k):
            self.trace.append((time.perf_counter() - self.t0, self._last_lb))
            log(f"  full batch: iteration {n_iter}, lower bound {self._last_lb:.6f}, "
                f"{self.trace[-1][0]:.1f} s")

    # one initial mixture for every method (k-means on the first chunk), so that the
    # comparison is of the EM algorithms, not of two k-means runs' local optima
    t0 = time.perf_counter()
    first = next(iter(chunks()))
    g = GaussianMixture(K, max_iter=0, random_state=0, n_threads=threads).fit(first)
    t_init = time.perf_counter() - t0
    init = dict(weights_init=g.weights_ / g.weights_.sum(), means_init=g.means_, precisions_init=g.precisions_)
    del first
    rows = []
    models = {}
    full = Timed(K, random_state=0, n_threads=threads, **init)
    full.trace = []
    full.t0 = time.perf_counter()
    full.fit_chunks(chunks)
    t_full = time.perf_counter() - full.t0
    models["full batch (fit_chunks)"] = full
    rows.append(dict(method="full batch (fit_chunks)", seconds=t_full, iterations=full.n_iter_,
                     unit="iterations", converged=bool(full.converged_)))
    final = full.trace[-1][1]
    reach = next(t for t, lb in full.trace if abs(lb - final) < 1e-2)
    log(f"  full batch: {t_full:.1f} s, {full.n_iter_} iterations; within 1e-2 of its final "
        f"lower bound after {reach:.1f} s")
    for epochs in [int(e) for e in args.epochs.split(",") if e.strip()]:
        mb = GaussianMixture(K, random_state=0, n_threads=threads, **init)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_epochs reached: reported in the table
            mb.fit_minibatch(chunks, batch_size=args.batch, max_epochs=epochs)
        t = time.perf_counter() - t0
        name = f"mini-batch, {epochs} epoch{'s' if epochs > 1 else ''} (fit_minibatch)"
        log(f"  {name}: {t:.1f} s, {mb.n_batch_iter_} batches")
        models[name] = mb
        rows.append(dict(method=name, seconds=t, iterations=mb.n_iter_, unit="epoch" if mb.n_iter_ == 1 else "epochs",
                         batches=int(mb.n_batch_iter_), converged=bool(mb.converged_)))
    # exact mean log-likelihood of every model on all N rows (one more pass, untimed)
    log("  scoring every model on all rows...")
    totals = {name: 0.0 for name in models}
    n = 0
    for X in chunks():
        for name, m in models.items():
            totals[name] += float(m.score_samples(X).sum())
        n += X.shape[0]
    ref = totals["full batch (fit_chunks)"] / n
    for row in rows:
        row["mean_log_likelihood"] = totals[row["method"]] / n
        row["difference"] = row["mean_log_likelihood"] - ref
        # reaching the full-batch log-likelihood within 1e-2: not lower by 1e-2 or more
        row["within_1e-2"] = bool(row["difference"] > -1e-2)
        row["speedup"] = t_full / row["seconds"]
    return {"n": args.n, "d": mix.D, "k": K, "chunk": args.chunk, "batch": args.batch, "init_seconds": t_init,
            "full_batch_seconds_to_within_1e-2": reach, "full_batch_trace": full.trace, "rows": rows}


# ----------------------------------------------------------------------------- 2. Dask


def bench_dask(args, threads, X, init, mix, data_seed, block_rows):
    import dask.array as da
    from dask.distributed import Client, LocalCluster, wait

    import gmmfast.dask
    from gmmfast import GaussianMixture

    N, D = X.shape
    K = init["means_init"].shape[0]
    n_blocks = len(block_rows)
    log(f"[dask] N={N:,} D={D} K={K}: 2-worker LocalCluster vs in memory, {n_blocks} blocks")
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    client = Client(cluster)
    startup = time.perf_counter() - t0
    try:
        # the same rows as X, generated on the workers from the same seeds (nothing is
        # sent from the client), then kept there
        import dask

        t0 = time.perf_counter()
        parts = []
        for i, n in enumerate(block_rows):
            parts.append(da.from_delayed(dask.delayed(mix.chunk)(data_seed, i, n), shape=(n, D), dtype=X.dtype))
        Xd = da.concatenate(parts).persist()
        wait(Xd)
        scatter = time.perf_counter() - t0
        assert float(abs(Xd[-5:] - X[-5:]).max().compute()) == 0.0
        # the workers import gmmfast on their first task: warm them up untimed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            GaussianMixture(K, n_threads=1, max_iter=1, **init).fit(Xd[: 2 * K * 100])

        block_keys = {str(k) for k in Xd.__dask_keys__() for k in (k if isinstance(k, list) else [k])}

        def transfers():
            """(bytes, data blocks) the workers sent since the last call (Dask's sizes:
            gmmfast.dask registers the true size of EMStats)."""
            logs = client.run(lambda dask_worker: list(dask_worker.transfer_outgoing_log))
            client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())
            total = blocks = 0
            for entries in logs.values():
                for e in entries:
                    total += e.get("total", 0)
                    blocks += sum(1 for key in e.get("keys", {}) if str(key) in block_keys)
            return total, blocks

        rows = []
        ref_model = None
        methods = [("in memory (1 thread)", lambda: GaussianMixture(K, n_threads=1, **init).fit(X))]
        if threads != 1:
            methods.insert(0, (f"in memory ({threads or 'all'} threads)",
                               lambda: GaussianMixture(K, n_threads=threads, **init).fit(X)))
        methods.append(("Dask, 2 workers x 1 thread", lambda: GaussianMixture(K, n_threads=1, **init).fit(Xd)))
        for name, fit in methods:
            transfers()
            t0 = time.perf_counter()
            m = fit()
            t = time.perf_counter() - t0
            moved, blocks_moved = transfers()
            ref_model = ref_model or m
            dask_row = name.startswith("Dask")
            rows.append(dict(
                method=name, seconds=t, iterations=m.n_iter_,
                seconds_per_iteration=t / max(m.n_iter_, 1),
                lower_bound=m.lower_bound_, lower_bound_difference=m.lower_bound_ - ref_model.lower_bound_,
                bytes_sent_per_iteration=(moved / (m.n_iter_ + 1)) if dask_row else None,
                data_blocks_sent=blocks_moved if dask_row else None,
            ))
            log(f"  {name}: {t:.2f} s, {m.n_iter_} iterations")
        stats = gmmfast.dask.stats_nbytes(K, D, "full")
        return dict(n=N, d=D, k=K, blocks=n_blocks, cluster_startup_seconds=startup,
                    persist_seconds=scatter, data_bytes=int(X.nbytes),
                    statistics_bytes_per_block=stats, expected_bytes_per_iteration=stats * n_blocks,
                    rows=rows)
    finally:
        client.close()
        cluster.close()


# ----------------------------------------------------------------------- 3. out-of-core


def bench_ooc(args, threads, X, init):
    import numpy as np

    from gmmfast import GaussianMixture
    from gmmfast.streaming import row_chunks

    K = init["means_init"].shape[0]
    log(f"[out-of-core] N={X.shape[0]:,}: in memory vs memory-mapped vs streamed")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.npy")
        np.save(path, X)
        mm = np.load(path, mmap_mode="r")
        ref = None
        for name, fit in (
            ("in memory: fit(X)", lambda: GaussianMixture(K, n_threads=threads, **init).fit(X)),
            ("memory-mapped: fit(np.load(..., mmap_mode='r'))",
             lambda: GaussianMixture(K, n_threads=threads, **init).fit(mm)),
            ("streamed: fit_chunks(row_chunks(mm, 100 000))",
             lambda: GaussianMixture(K, n_threads=threads, **init).fit_chunks(row_chunks(mm, 100_000))),
        ):
            t0 = time.perf_counter()
            m = fit()
            t = time.perf_counter() - t0
            ref = ref or m
            rows.append(dict(method=name, seconds=t, iterations=m.n_iter_,
                             max_abs_mean_difference=float(np.abs(m.means_ - ref.means_).max()),
                             lower_bound=m.lower_bound_))
            log(f"  {name}: {t:.2f} s")
    return dict(n=X.shape[0], d=X.shape[1], k=K, rows=rows)


# ---------------------------------------------------------------------------- report


def fmt_s(s):
    return f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def report(res) -> str:
    out = []
    m = res["machine"]
    out.append(f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, threads={m['threads']}; "
               f"load average at start {m['load_average_start']}, at end {m.get('load_average_end')}"
               " (a shared machine: timings are noisy).")
    if "minibatch" in res:
        r = res["minibatch"]
        out.append("")
        out.append(f"### Mini-batch vs full-batch EM, N = {r['n']:,} rows generated on the fly "
                   f"(D={r['d']}, K={r['k']}, full covariances, chunks of {r['chunk']:,}, "
                   f"batches of {r['batch']:,})")
        out.append("")
        out.append("| method | fit time | iterations / epochs | mean log-likelihood (all N) | "
                   "vs full batch | within 1e-2 | speed-up |")
        out.append("|---|---|---|---|---|---|---|")
        for row in r["rows"]:
            its = f"{row['iterations']} {row['unit']}"
            if "batches" in row:
                its += f" ({row['batches']:,} batches)"
            out.append(f"| {row['method']} | {fmt_s(row['seconds'])} | {its} | "
                       f"{row['mean_log_likelihood']:.6f} | {row['difference']:+.2e} | "
                       f"{'yes' if row['within_1e-2'] else 'NO'} | {row['speedup']:.1f}x |")
        out.append("")
        out.append(f"Every method starts from the same mixture (k-means on the first chunk, "
                   f"{fmt_s(r['init_seconds'])}, not included). Full batch was within 1e-2 of its "
                   f"final lower bound after {fmt_s(r['full_batch_seconds_to_within_1e-2'])}. "
                   "'within 1e-2': the mean log-likelihood is not lower than full batch's by 1e-2 or more.")
    if "dask" in res:
        r = res["dask"]
        out.append("")
        out.append(f"### Dask: 2-worker LocalCluster vs in memory, N = {r['n']:,}, D={r['d']}, "
                   f"K={r['k']} (full), {r['blocks']} blocks, same initial mixture")
        out.append("")
        out.append("| method | fit time | iterations | per iteration | lower bound vs in memory | "
                   "bytes sent between processes per iteration | data blocks sent |")
        out.append("|---|---|---|---|---|---|---|")
        for row in r["rows"]:
            dask_row = row["bytes_sent_per_iteration"] is not None
            sent = f"{row['bytes_sent_per_iteration']:,.0f}" if dask_row else ""
            blocks = f"{row['data_blocks_sent']}" if dask_row else ""
            out.append(f"| {row['method']} | {fmt_s(row['seconds'])} | {row['iterations']} | "
                       f"{row['seconds_per_iteration'] * 1e3:.0f} ms | {row['lower_bound_difference']:+.1e} | "
                       f"{sent} | {blocks} |")
        out.append("")
        out.append(f"Statistics: {r['statistics_bytes_per_block']:,} bytes per block, "
                   f"{r['expected_bytes_per_iteration']:,} per iteration for {r['blocks']} blocks "
                   "(plus the mixture, sent to each worker); "
                   f"the data: {r['data_bytes']:,} bytes, generated on the workers and kept there "
                   f"(`persist`, {fmt_s(r['persist_seconds'])}; cluster start-up "
                   f"{fmt_s(r['cluster_startup_seconds'])}). Sizes are Dask's accounting of the "
                   "transfers between the worker processes (gmmfast registers the true size of its "
                   "statistics); the fit includes one checking pass.")
    if "ooc" in res:
        r = res["ooc"]
        out.append("")
        out.append(f"### Out-of-core, N = {r['n']:,}, D={r['d']}, K={r['k']}, same initial mixture")
        out.append("")
        out.append("| method | fit time | iterations | max abs difference of the means |")
        out.append("|---|---|---|---|")
        for row in r["rows"]:
            out.append(f"| {row['method']} | {fmt_s(row['seconds'])} | {row['iterations']} | "
                       f"{row['max_abs_mean_difference']:.1e} |")
    return "\n".join(out)


def machine(threads):
    import gmmfast

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads or "all",
        "load_average_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "gmmfast": gmmfast.__version__,
        "platform": platform.platform(),
    }


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np

    threads = args.threads
    res = {"machine": machine(threads), "args": vars(args)}
    if not args.no_minibatch:
        res["minibatch"] = bench_minibatch(args, threads)
    if not (args.no_dask and args.no_ooc):
        from gmmfast import GaussianMixture

        mix = Mixture(K=8, D=8, seed=4321)
        n_blocks, data_seed = 8, 99
        block_rows = [len(b) for b in np.array_split(np.arange(args.dask_n), n_blocks)]
        X = np.concatenate([mix.chunk(data_seed, i, n) for i, n in enumerate(block_rows)])
        g = GaussianMixture(8, max_iter=0, random_state=0, n_threads=threads).fit(X)
        w = g.weights_ / g.weights_.sum()
        init = dict(weights_init=w, means_init=g.means_, precisions_init=g.precisions_)
        if not args.no_dask:
            try:
                import dask.distributed  # noqa: F401
            except ImportError:
                log("[dask] skipped: dask.distributed is not installed")
            else:
                res["dask"] = bench_dask(args, threads, X, init, mix, data_seed, block_rows)
        if not args.no_ooc:
            res["ooc"] = bench_ooc(args, threads, X, init)
    res["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=float)
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
