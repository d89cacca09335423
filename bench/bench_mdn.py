"""Mixture-density-network likelihood: gmmfast's fused per-sample op vs torch.distributions.

Times forward + backward of the mean negative log-likelihood of per-sample mixtures (what
an MDN's loss does every training step) and measures each implementation's peak memory,
in one run, on the same inputs and the same threads:

- gmmfast   ``gmmfast.torch.per_sample.per_sample_log_prob`` (backend "fused": the C++ op,
            closed-form backward from the saved B×K responsibilities);
- gmmfast-recompute  the same with ``save_responsibilities=False``: nothing is saved, the
            backward pass recomputes the responsibilities (least memory, one more
            forward pass of time);
- torch     ``torch.distributions.MixtureSameFamily`` with ``Independent(Normal)`` (diag)
            or ``MultivariateNormal(scale_tril)`` (correlated 2-D), autograd backward;
- torch-ref gmmfast's plain-torch fallback (the same formulas written with torch ops,
            autograd; what runs on devices without a fused kernel) — for reference.

Cases (float32, the dtype networks train in):

    diag  B=65536 K=32 D=16   diagonal components
    corr  B=65536 K=20 D=2    correlated 2-D components (σ1, σ2, ρ), Graves' pen model

Peak memory: each measurement runs in a fresh child process (forked from a forkserver
that has imported torch, so no allocator cache or thread pool of an earlier measurement is
counted); after a warm-up on a small slice the child resets the kernel's peak-RSS counter
(/proc/self/clear_refs) and reports VmHWM minus the RSS before forward + backward: the
extra memory the step needed, including the gradient tensors every implementation must
return (for the diag case these alone are 256 MB: 2 × B·K·D float32). The table also shows
the workspace: that peak minus the returned gradients, i.e. what the likelihood computation
itself holds (saved intermediates and temporaries). torch's CPU allocator returns large
blocks to the OS, so RSS tracks live tensors.

On a GPU (``--device cuda``) the same implementations run on CUDA tensors (gmmfast: the
CUDA kernels of cuda/per_sample.cu). Times are CUDA-event times of forward + backward
(after a warm-up step; the best and median of --repeat), peak memory is
``torch.cuda.max_memory_allocated`` during the step minus the memory allocated before it
(inputs), in one process: the caching allocator's statistics are exact per measurement.

Usage::

    python bench/bench_mdn.py                       # both cases, all cores
    python bench/bench_mdn.py --threads 1 --repeat 7 --json bench/results/mdn-cpu.json
    python bench/bench_mdn.py --quick               # B/16, smoke test
    python bench/bench_mdn.py --device cuda --json bench/results/mdn-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="diag,corr", help="comma-separated: diag, corr")
    p.add_argument("--threads", type=int, default=0, help="threads for every library (default: usable cores)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions per implementation (best is reported)")
    p.add_argument("--quick", action="store_true", help="B / 16: a smoke test")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--no-ref", action="store_true", help="skip gmmfast's plain-torch fallback column")
    p.add_argument("--json", metavar="PATH", help="write every number (and the machine) to PATH")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the tensors live (cuda: CUDA-event timings, torch.cuda peak memory)")
    return p.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    _n = ARGS.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(_n)

import gc  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import machine  # noqa: E402

import torch  # noqa: E402
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal  # noqa: E402

from gmmfast.torch.per_sample import per_sample_log_prob  # noqa: E402

CASES = {
    "diag": dict(B=65536, K=32, D=16, covariance="diag"),
    "corr": dict(B=65536, K=20, D=2, covariance="correlated2d"),
}
IMPLS = ("gmmfast", "gmmfast-recompute", "torch", "torch-ref")


# --------------------------------------------------------------------------------------
# inputs and implementations


def make_inputs(case: dict, B: int, seed: int = 0, device: str = "cpu") -> dict:
    """Parameters as an MDN would output them (leaf tensors that need gradients), on device
    (generated on the CPU, so every device gets the same numbers)."""
    g = torch.Generator().manual_seed(seed)
    K, D = case["K"], case["D"]
    y = torch.randn(B, D, generator=g) * 2.0
    logits = torch.randn(B, K, generator=g)
    means = torch.randn(B, K, D, generator=g) * 2.0
    if case["covariance"] == "diag":
        scale = torch.rand(B, K, D, generator=g) + 0.5
        rho = None
    else:
        scale = torch.rand(B, K, 2, generator=g) + 0.5
        rho = (torch.rand(B, K, generator=g) * 2.0 - 1.0) * 0.9
    inputs = dict(y=y, logits=logits, means=means, scale=scale, rho=rho)
    inputs = {k: (None if v is None else v.to(device)) for k, v in inputs.items()}
    for name in ("logits", "means", "scale", "rho"):
        if inputs[name] is not None:
            inputs[name].requires_grad_(True)
    return inputs


def loss_fn(impl: str, covariance: str):
    """inputs -> scalar mean negative log-likelihood."""
    if impl in ("gmmfast", "gmmfast-recompute", "torch-ref"):
        backend = "torch" if impl == "torch-ref" else "fused"
        save = impl != "gmmfast-recompute"

        def f(y, logits, means, scale, rho):
            lp = per_sample_log_prob(
                y, logits, means, scale, rho, covariance=covariance, backend=backend, save_responsibilities=save
            )
            return -lp.mean()

        return f

    def f(y, logits, means, scale, rho):
        if covariance == "diag":
            comp = Independent(Normal(means, scale, validate_args=False), 1, validate_args=False)
        else:
            s1, s2 = scale[..., 0], scale[..., 1]
            zero = torch.zeros_like(s1)
            tril = torch.stack(
                [torch.stack([s1, zero], -1), torch.stack([rho * s2, s2 * torch.sqrt((1 - rho) * (1 + rho))], -1)], -2
            )
            comp = MultivariateNormal(means, scale_tril=tril, validate_args=False)
        mix = MixtureSameFamily(Categorical(logits=logits, validate_args=False), comp, validate_args=False)
        return -mix.log_prob(y).mean()

    return f


def step(impl: str, covariance: str, inputs: dict):
    """One forward + backward; returns (loss, grads) and leaves no .grad behind."""
    params = [inputs[n] for n in ("logits", "means", "scale", "rho") if inputs[n] is not None]
    for p in params:
        p.grad = None
    loss = loss_fn(impl, covariance)(**inputs)
    loss.backward()
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None
    return loss.detach(), grads


# --------------------------------------------------------------------------------------
# peak memory in a child


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _child(job: dict, conn) -> None:
    try:
        torch.set_num_threads(job["threads"])
        case = CASES[job["case"]]
        inputs = make_inputs(case, job["B"])
        warm = {k: (None if v is None else v.detach()[:256].clone().requires_grad_(v.requires_grad)) for k, v in inputs.items()}
        step(job["impl"], case["covariance"], warm)  # library start-up is not the step's memory
        del warm
        gc.collect()
        base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS to the current RSS
        t0 = time.perf_counter()
        loss, grads = step(job["impl"], case["covariance"], inputs)
        # the gradients are still alive here, as in training before the optimiser step
        seconds = time.perf_counter() - t0
        peak = _status_kb("VmHWM")
        grads_mb = sum(g.numel() * g.element_size() for g in grads) / 2**20
        conn.send({
            "peak_mb": (peak - base) / 1024.0,
            "grads_mb": grads_mb,  # the gradient tensors every implementation must return
            "workspace_mb": (peak - base) / 1024.0 - grads_mb,
            "seconds": seconds,
            "loss": float(loss),
        })
    except BaseException as exc:  # report anything: the parent must not hang
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def measure_memory(ctx, job: dict, timeout: float = 900.0) -> dict:
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, send), daemon=True)
    proc.start()
    send.close()
    try:
        report = recv.recv() if recv.poll(timeout) else {"error": "timed out"}
    except EOFError:
        report = {"error": "child died"}
    proc.join()
    return report


def memory_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# GPU: CUDA events and the caching allocator's peak


def cuda_time(impl: str, covariance: str, inputs: dict) -> float:
    """Seconds of one forward + backward on the current stream, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step(impl, covariance, inputs)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def cuda_memory(impl: str, covariance: str, inputs: dict) -> dict:
    """Peak device memory of one step beyond what was allocated before it (the inputs),
    with the returned gradients alive, as in training before the optimiser step."""
    torch.cuda.synchronize()
    gc.collect()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    params = [inputs[n] for n in ("logits", "means", "scale", "rho") if inputs[n] is not None]
    loss = loss_fn(impl, covariance)(**inputs)
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grads_mb = sum(p.grad.numel() * p.grad.element_size() for p in params) / 2**20
    for p in params:
        p.grad = None
    del loss
    return {"peak_mb": peak / 2**20, "grads_mb": grads_mb, "workspace_mb": peak / 2**20 - grads_mb}


def _available_impls(args, device: str) -> list:
    impls = [i for i in IMPLS if not (args.no_ref and i == "torch-ref")]
    if device == "cpu":
        return impls
    from gmmfast.torch.per_sample import fused_available

    if not fused_available(device):
        print("gmmfast's CUDA kernels are not available (gmmfast._cuda missing): timing torch only",
              file=sys.stderr)
        impls = [i for i in impls if not i.startswith("gmmfast")]
    return impls


def run(args) -> dict:
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    device = getattr(args, "device", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    impls = _available_impls(args, device)
    result = {
        "machine": {
            "cpu": machine.cpu_model(),
            "isa": machine.isa(),
            "threads": threads,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "platform": platform.platform(),
            "torch": torch.__version__,
            "gmmfast_isa": __import__("gmmfast").build_info().get("isa"),
            "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        },
        "cases": {},
    }
    ctx = None
    if not args.no_memory and device == "cpu":
        if memory_supported():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["torch", "gmmfast.torch.per_sample"])
        else:
            print("peak memory: /proc/self/clear_refs is not writable here; skipped", file=sys.stderr)
    for name in args.cases.split(","):
        case = CASES[name]
        B = case["B"] // 16 if args.quick else case["B"]
        inputs = make_inputs(case, B, device=device)
        print(f"[{name}] B={B} K={case['K']} D={case['D']} covariance={case['covariance']} device={device}",
              file=sys.stderr, flush=True)
        # agreement: the same loss and gradients
        ref_loss, ref_grads = step("torch", case["covariance"], inputs)
        agree = {}
        for impl in impls:
            loss, grads = step(impl, case["covariance"], inputs)
            rel = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(grads, ref_grads))
            agree[impl] = {"loss_abs_diff": abs(float(loss - ref_loss)), "grad_max_rel_diff": rel}
        # timings, interleaved so that machine noise hits every implementation alike
        times = {impl: [] for impl in impls}
        for _ in range(args.repeat):
            for impl in impls:
                if device == "cuda":
                    times[impl].append(cuda_time(impl, case["covariance"], inputs))
                    continue
                t0 = time.perf_counter()
                step(impl, case["covariance"], inputs)
                times[impl].append(time.perf_counter() - t0)
        res = {"B": B, "K": case["K"], "D": case["D"], "covariance": case["covariance"], "impls": {}}
        for impl in impls:
            ts = sorted(times[impl])
            res["impls"][impl] = {"best_s": ts[0], "median_s": ts[len(ts) // 2], "times_s": times[impl], **agree[impl]}
        if device == "cuda" and not args.no_memory:
            for impl in impls:
                res["impls"][impl]["memory"] = cuda_memory(impl, case["covariance"], inputs)
        del inputs
        gc.collect()
        if ctx is not None:
            for impl in impls:
                rep = measure_memory(ctx, {"impl": impl, "case": name, "B": B, "threads": threads})
                res["impls"][impl]["memory"] = rep
                if "error" in rep:
                    print(f"  memory {impl}: {rep['error']}", file=sys.stderr)
        result["cases"][name] = res
    return result


def report(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"CPU: {m['cpu']}, {m['threads']} thread(s), torch {m['torch']}, gmmfast ISA {m['gmmfast_isa']}, "
        f"load average at start {m['load_average'][0]:.1f}" if m.get("load_average") else "",
        "",
        "| case | B | K | D | implementation | fwd+bwd best (s) | median (s) | speed-up vs torch | peak memory (MB) "
        "| peak vs torch | workspace (MB) | workspace vs torch | max grad rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    if m.get("gpu"):
        lines.insert(1, f"GPU: {m['gpu']} (CUDA-event times; peak = torch.cuda.max_memory_allocated beyond the inputs)")
    for name, res in result["cases"].items():
        t_ref = res["impls"]["torch"]["best_s"]
        ref_mem = res["impls"]["torch"].get("memory", {})
        for impl, r in res["impls"].items():
            cells = []
            for key in ("peak_mb", "workspace_mb"):
                mem, mem_ref = r.get("memory", {}).get(key), ref_mem.get(key)
                cells.append(f"{mem:.0f}" if mem is not None else "–")
                cells.append(f"{mem / mem_ref:.3f}" if (mem is not None and mem_ref) else "–")
            lines.append(
                f"| {name} | {res['B']} | {res['K']} | {res['D']} | {impl} | {r['best_s']:.3f} | {r['median_s']:.3f} "
                f"| {t_ref / r['best_s']:.1f}× | {' | '.join(cells)} | {r['grad_max_rel_diff']:.1e} |"
            )
    return "\n".join(lines)


def main() -> int:
    result = run(ARGS)
    print(report(result))
    if ARGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(ARGS.json)), exist_ok=True)
        with open(ARGS.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {ARGS.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
