"""Peak memory of one operation, measured in a fresh child process.

Why a child: a process's peak RSS only ever grows, and allocator caches of an earlier
measurement would hide (or inflate) the next one. Each measurement therefore runs in
its own process, which

1. loads the case's data from a .npy file written by the parent (``np.load`` makes
   no temporaries, so RSS after loading is the data plus the libraries);
2. runs the same operation once on a small slice, so that thread pools, BLAS buffers
   and lazily-initialised library state are not counted as the operation's memory;
3. records RSS, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, Linux
   >= 4.0) and runs the operation;
4. reports peak RSS (VmHWM) minus that baseline: the extra memory the operation needed.

Where clear_refs is not available, a thread samples RSS every millisecond instead
(psutil), which can miss short spikes; the method used is reported.

Children are forked from a multiprocessing "forkserver" that has imported the
libraries once, so a measurement costs milliseconds of start-up, not seconds of
imports; the forkserver itself never computes (no thread pool is running when it
forks).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import threading
import time

_CTX = None


def start(with_sklearn: bool, with_torch: bool) -> None:
    """Start the forkserver with the libraries the measurements need preloaded."""
    global _CTX
    if _CTX is not None:
        return
    preload = ["numpy", "gmmfast.ops", "gmmfast.reference", "cases", "impls", "memprobe"]
    if with_sklearn:
        preload.append("sklearn.mixture")
    if with_torch:
        preload += ["torch", "torch_em"]
    try:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(preload)
    except ValueError:  # no forkserver on this platform: spawn re-imports each time
        _CTX = mp.get_context("spawn")


def measure(job: dict, timeout: float = 3600.0) -> dict:
    """Run ``job`` in a fresh child; returns its report, or {"error": ...}.

    job keys: impl (name in impls.IMPLEMENTATIONS or peers.PEERS), op ("iteration",
    "em_stats", "fit", "em_from", "em_fixed" with n_iter), data (path of a .npy
    file), init (MixtureParams, for
    iteration/em_stats/em_from), n_components, covariance_type, n_threads.
    """
    if _CTX is None:
        raise RuntimeError("call memprobe.start() first")
    receiver, sender = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=_child_main, args=(job, sender), daemon=True)
    proc.start()
    sender.close()
    try:
        if receiver.poll(timeout):
            report = receiver.recv()
        else:
            proc.kill()
            report = {"error": f"timed out after {timeout:.0f} s"}
    except EOFError:  # the child died without reporting, e.g. killed for memory
        report = {"error": "child process died"}
    proc.join()
    if "error" in report and proc.exitcode not in (0, None):
        report["error"] += f" (exit code {proc.exitcode})"
    return report


# --------------------------------------------------------------------------------------
# child side


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS to the current RSS
        return True
    except OSError:
        return False


class _RssSampler(threading.Thread):
    """Fallback peak tracker: polls RSS (may miss spikes shorter than the period)."""

    def __init__(self, period: float = 1e-3):
        super().__init__(daemon=True)
        import psutil

        self._proc = psutil.Process()
        self._period = period
        self._stop_event = threading.Event()
        self.peak = self._proc.memory_info().rss

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._period)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self._proc.memory_info().rss)


def _operation(job, X):
    """A zero-argument callable running the job's operation on X."""
    import impls

    impl = impls.lookup(job["impl"])
    op, n_threads = job["op"], job["n_threads"]
    max_iter = job.get("max_iter", impls.MAX_ITER)
    if op == "em_fixed":  # the warm-up passes max_iter=2
        return lambda: impl.em_fixed(X, job["init"], min(job["n_iter"], max_iter), n_threads)
    if op == "iteration":
        return impl.iteration(X, job["init"], n_threads)
    if op == "em_stats":
        return impl.em_stats_only(X, job["init"], n_threads)
    if op == "fit":
        return lambda: impl.fit(
            X, job["n_components"], job["covariance_type"], n_threads, max_iter=max_iter
        )
    if op == "em_from":
        return lambda: impl.em_from(X, job["init"], n_threads, max_iter=max_iter)
    raise ValueError(f"unknown op {op!r}")


def _child_main(job: dict, sender) -> None:
    try:
        sender.send(_child_measure(job))
    except BaseException as exc:  # report anything, the parent must not hang
        sender.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        sender.close()


def _child_measure(job: dict) -> dict:
    # Objects inherited from the forkserver are not garbage; leaving them to the
    # collector would make every collection walk (and copy-on-write) all of them.
    gc.freeze()
    import numpy as np

    import impls

    if job["impl"] in ("torch", "pomegranate", "torchgmm"):
        import torch  # noqa: F401  (so that limit_threads sets torch's pool too)
    impls.limit_threads(job["n_threads"])
    X = np.load(job["data"])

    # warm-up on a slice: library start-up costs are not the operation's memory
    n_warm = min(X.shape[0], max(2000, 4 * job.get("n_components", 1)))
    warm_up = "ok"
    try:
        _operation(dict(job, max_iter=2), X[:n_warm])()
    except Exception as exc:  # e.g. a peer that fails on the small slice: measure anyway
        warm_up = (f"failed ({type(exc).__name__}: {exc}): the peak includes the "
                   "library's first-call costs")

    operation = _operation(job, X)
    gc.collect()
    baseline_kb = _status_kb("VmRSS")
    exact = _reset_peak()
    sampler = None if exact else _RssSampler()
    if sampler is not None:
        sampler.start()
    t0 = time.perf_counter()
    operation()
    seconds = time.perf_counter() - t0
    if exact:
        peak_kb = _status_kb("VmHWM")
        method = "VmHWM after clear_refs"
    else:
        peak_kb = sampler.stop() // 1024
        method = "RSS sampled every 1 ms"
    return {
        "peak_growth_mb": (peak_kb - baseline_kb) / 1024.0,
        "baseline_rss_mb": baseline_kb / 1024.0,
        "data_mb": X.nbytes / 2**20,
        "seconds": seconds,
        "method": method,
        "warm_up": warm_up,
    }

